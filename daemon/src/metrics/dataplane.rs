//! What a running data plane set up (devices, offload path), for `/readyz` and
//! `/v1/status`.

/// The devices and offload path of a running data plane, for `/readyz` (which checks
/// that the devices are really there) and `/v1/status`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DataplaneInfo {
    /// The TUN device (`weft.<VNI>` or `weft.ipip`).
    pub device: String,
    /// The pod bridge (`cni0`).
    pub bridge: String,
    /// `vxlan` or `ipip`.
    pub backend: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vni: Option<u32>,
    pub offloads: ActiveOffloads,
    /// How packets leave: `kernel_encap` (TAP + tc program) or `userspace`.
    pub transmit_path: &'static str,
    /// Why the userspace path is taken when it is: `--tc-attach=off`, what the
    /// host lacks, or the run-time failure the workers fell back from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transmit_path_reason: Option<String>,
    /// How the kernel path's tc program is attached: `tcx`, `tc` (clsact + cls_bpf), or
    /// `None` (null) without a TAP.
    pub tc_attach: Option<&'static str>,
}

impl ActiveOffloads {
    /// Whether `UDP_GRO` is on for `socket` (asked of the kernel, so a kernel that
    /// refused it shows as off).
    pub fn udp_gro_enabled(socket: std::os::fd::BorrowedFd<'_>) -> bool {
        use std::os::fd::AsRawFd as _;
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: valid fd; value and len are live and len is value's size.
        let rc = unsafe {
            libc::getsockopt(
                socket.as_raw_fd(),
                libc::SOL_UDP,
                libc::UDP_GRO,
                (&mut value as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        rc == 0 && value != 0
    }
}

/// Which offload path the data plane runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ActiveOffloads {
    /// TUN hands over partial checksums (`TUN_F_CSUM`).
    pub tun_csum: bool,
    /// TUN hands over TCPv4 super-packets (`TUN_F_TSO4`), segmented in userspace.
    pub tun_tso4: bool,
    /// Segments leave in one `UDP_SEGMENT` send per 64 KB (VXLAN only).
    pub udp_segment: bool,
    /// The VXLAN socket receives datagram trains (`UDP_GRO`), coalesced into GSO TUN
    /// writes.
    pub udp_gro: bool,
    /// The kernel adds the outer headers (TAP + tc program): super-packets cross the
    /// underlay as one VXLAN or IP-in-IP GSO packet per 64 KB (`dataplane::tap_encap`).
    pub kernel_encap: bool,
    /// VXLAN through the TAP is written as UDP-tunnel GSO with outer UDP checksums
    /// (Linux ≥ 6.17; else `bpf_skb_adjust_room`, outer checksum 0).
    pub udp_tunnel_csum: bool,
    /// Small packets (≤ 256 bytes inner) take a worker of their own both ways, steered
    /// by size on TUN and on the VXLAN sockets (`dataplane::express`).
    pub express_lane: bool,
}
