//! Transmit through the kernel's own encapsulation: a TAP device plus a tc program, so
//! a 64 KB TCP super-packet from TUN leaves as **one** VXLAN or IP-in-IP GSO packet,
//! with no segmentation in userspace and without the kernel's `vxlan`/`ipip` devices.
//!
//! Segmenting in userspace costs a copy of every byte and, for IPIP, one skb per
//! 1,480-byte segment: no socket or virtio-net header can ask for an IP-in-IP GSO
//! packet (`SKB_GSO_IPXIP4`), and a TCPv4 GSO packet inside an outer IPv4 header is
//! refused by `ipip_gso_segment` (weft-bench, IPIP over a raw socket: 2 Gbit/s,
//! 7.5 CPU-s/GB). One kernel interface does mark a packet as encapsulated:
//! `bpf_skb_adjust_room` with `BPF_F_ADJ_ROOM_ENCAP_*` (what Cilium's and Katran's
//! encapsulators use). So:
//!
//! ```text
//! worker: [vnet header: TCPv4 GSO][Ethernet][outer headers, complete][inner ≤ 64 KB]
//!   → one write() into the worker's queue of TAP `weft.encap`
//!   → tcx ingress program:
//!       copy the outer headers (20 bytes IPIP, 50 VXLAN) to the stack,
//!       adjust_room(−len) then adjust_room(+len, ENCAP_L3_IPV4 [| L4_UDP | L2_ETH])
//!       (the second call is what marks the packet: inner header offsets, GSO type),
//!       store the headers back, bpf_redirect_neigh(underlay)
//!   → the underlay device sends it whole (veth, bridges); a NIC or software GSO cuts
//!     it into 1,500-byte packets, headers copied and fixed, only where it must
//! ```
//!
//! Every header byte is written by userspace with the same code as before
//! (`weft_proto::{ipip, vxlan}::encap_frame`, the format tested against etherparse and
//! the kernel); the program only declares them, so it knows nothing of peers, ports or
//! VNIs and needs no map. `bpf_redirect_neigh` resolves the next hop in the kernel's
//! FIB and neighbour table, as the kernel's own tunnels do; no netfilter hook sees the
//! packet, no `ip_forward` is needed and no sysctl is changed.
//!
//! VXLAN on Linux ≥ 6.17 skips `adjust_room` altogether: the TAP takes UDP-tunnel GSO
//! in its vnet header (`TUN_F_UDP_TUNNEL_GSO_CSUM`, the 24-byte
//! `virtio_net_hdr_v1_hash_tunnel`), so the worker's write itself says "TCP super-packet
//! inside UDP inside IPv4, outer UDP checksum wanted" (`SKB_GSO_UDP_TUNNEL_CSUM`) and the
//! program only redirects. The difference is on the wire: `adjust_room` has no flag for
//! the `_CSUM` GSO type, so its segments leave with UDP checksum 0, and a receiver's UDP
//! GRO refuses to merge those (`udp_gro_receive_segment`: "requires non zero csum");
//! segments of a `_CSUM` packet each get a complete checksum (software GSO or NIC), so a
//! receiving weft on a real NIC gets 64 KB GRO trains. VXLAN's checksum stays optional
//! for receivers: kernel peers with `udpcsum` off take either. Kernels without it refuse
//! the offload bits; weftd then says so once and uses `adjust_room` as before. The
//! environment variable `WEFT_TAP_TUNNEL_OFFLOAD=off` forces that fallback (tests,
//! comparisons). IPIP has no UDP header and always takes `adjust_room`.
//!
//! Attachment (`--tc-attach`): a tcx link (kernel ≥ 6.6), or on older kernels a clsact
//! qdisc with a direct-action cls_bpf filter, made over netlink.
//! Lifetime: the TAP is not persistent and the program hangs on a tcx link held by
//! weftd or on a filter of the TAP itself, so both vanish with the process, killed or
//! not; a restart builds them afresh.
//! Needs: CAP_BPF (or CAP_SYS_ADMIN) and CAP_NET_ADMIN; kernel ≥ 5.10 (tc) or 6.6
//! (tcx). Without them weftd says why, once, and segments in userspace as before.

use std::os::fd::OwnedFd;

use anyhow::Context as _;

use super::peers::Encap;
use super::tun::Tun;
use weft_bpf::{self as bpf, helper, Insn, R0, R1, R10, R2, R3, R4, R5, R6};
use weft_config::TcAttach;
use weft_netlink::Netlink;

/// The TAP device's name.
pub const DEVICE: &str = "weft.encap";
/// The program's name (as `bpftool prog` shows it).
const PROGRAM: &str = "weft_encap";

/// Outer TTL: what the kernel's tunnels and flannel send.
pub const OUTER_TTL: u8 = 64;
/// Locally administered unicast addresses for the TAP frames' Ethernet header, which
/// `bpf_redirect_neigh` replaces with the underlay's (it refuses multicast).
pub const FRAME_SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const FRAME_DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// The outer headers the program declares, after the frame's Ethernet header (the
/// backend's, see `backend::Tunnel::tap_outer_len`).
pub fn outer_len(encap: &Encap) -> usize {
    encap.tap_outer_len()
}

/// `bpf_skb_adjust_room` flags for `encap` (the backend's, see
/// `backend::Tunnel::tap_adjust_room_flags`).
fn encap_flags(encap: &Encap) -> u64 {
    encap.tap_adjust_room_flags()
}

/// The kernel's `BPF_F_ADJ_ROOM_*` flags a backend composes its own from.
pub mod adjust_room {
    /// Keep the segment size: the overlay MTU already leaves room for the headers.
    pub const FIXED_GSO: u64 = 1 << 0;
    pub const ENCAP_L3_IPV4: u64 = 1 << 1;
    pub const ENCAP_L4_UDP: u64 = 1 << 4;
    pub const ENCAP_L2_ETH: u64 = 1 << 6;
    /// `BPF_F_ADJ_ROOM_ENCAP_L2(len)`: the inner Ethernet header's length.
    pub const fn encap_l2(len: u64) -> u64 {
        (len & 0xff) << 56
    }
}

/// Set to `off` to keep VXLAN on the `adjust_room` program even where the TAP takes
/// UDP-tunnel GSO (see the module documentation).
pub const TUNNEL_OFFLOAD_ENV: &str = "WEFT_TAP_TUNNEL_OFFLOAD";

/// The encapsulator, up: one TAP queue per worker; the program stays attached as long
/// as its attachment does (see [`Attachment`]).
#[derive(Debug)]
pub struct TapEncap {
    tap: Tun,
    /// Writes carry the 24-byte tunnel vnet header and the program only redirects.
    udp_tunnel_offload: bool,
    /// The TAP's ifindex when it was set up (a re-created device has another).
    index: u32,
    _program: OwnedFd,
    attachment: Attachment,
}

/// How the program hangs on the TAP's ingress.
#[derive(Debug)]
enum Attachment {
    /// A tcx link (kernel 6.6+): attached exactly while this descriptor is open.
    Tcx(OwnedFd),
    /// A clsact qdisc with a direct-action cls_bpf filter (any kernel with
    /// `bpf_redirect_neigh`, 5.10+): the filter holds the program, and both go with the
    /// TAP, which is not persistent, so with weftd's last descriptor of it.
    Tc { program_id: u32 },
}

/// The cls_bpf filter's priority and handle on the TAP (the only filter there).
const TC_PRIORITY: u16 = 1;
const TC_HANDLE: u32 = 1;

impl TapEncap {
    /// The TAP's ifindex.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// How the program is attached: `tcx` or `tc`.
    pub fn attach_kind(&self) -> &'static str {
        match self.attachment {
            Attachment::Tcx(_) => "tcx",
            Attachment::Tc { .. } => "tc",
        }
    }

    /// Whether the program is still attached to the TAP: someone may have detached the
    /// tcx link (`bpftool link detach`), deleted the filter or the clsact qdisc (`tc
    /// filter del dev weft.encap ingress`, `tc qdisc del dev weft.encap clsact`), or the
    /// device under it.
    pub async fn attached(&self, netlink: &Netlink) -> bool {
        match &self.attachment {
            Attachment::Tcx(link) => {
                bpf::tcx_link_ifindex(link).is_ok_and(|ifindex| ifindex == self.index)
            }
            Attachment::Tc { program_id } => netlink
                .ingress_bpf_filters(self.index)
                .await
                .is_ok_and(|filters| {
                    filters.iter().any(|f| {
                        f.program_id == Some(*program_id)
                            && f.direct_action
                            && (f.priority, f.handle) == (TC_PRIORITY, TC_HANDLE)
                    })
                }),
        }
    }

    /// Whether writes describe VXLAN as UDP-tunnel GSO (24-byte vnet header,
    /// `weft_proto::tap_offload::tap_offload_header`) rather than leave it to the program.
    pub fn udp_tunnel_offload(&self) -> bool {
        self.udp_tunnel_offload
    }

    /// Queue `n`'s descriptor, for worker `n`.
    pub fn queue(&self, n: usize) -> std::io::Result<OwnedFd> {
        self.tap.clone_queue(n % self.tap.queue_count())
    }
}

/// Creates the TAP with `queues` queues, loads the program for `encap` → the underlay
/// device `underlay_index`, and attaches it as `mode` says (`auto`: tcx, else tc).
/// `Err` says what this host lacks.
pub async fn setup(
    netlink: &Netlink,
    encap: &Encap,
    underlay_index: u32,
    underlay_mtu: u32,
    queues: usize,
    mode: TcAttach,
) -> anyhow::Result<TapEncap> {
    let tap = Tun::open_tap(DEVICE, queues).with_context(|| format!("creating TAP {DEVICE}"))?;
    // Before it comes up: no IPv6 addresses, router solicitations or DAD on a device
    // that only ever carries our own frames inwards (the file is our namespace's).
    let _ = std::fs::write(
        format!("/proc/sys/net/ipv6/conf/{DEVICE}/disable_ipv6"),
        "1",
    );
    // The MTU bounds what the program may grow a non-GSO frame to (Ethernet + the
    // underlay's MTU): exactly a full-sized packet.
    let link = netlink.ensure_link_up(DEVICE, Some(underlay_mtu)).await?;
    let udp_tunnel_offload = matches!(encap, Encap::Vxlan { .. }) && try_udp_tunnel_offload(&tap);
    let instructions = if udp_tunnel_offload {
        redirect_program(underlay_index)
    } else {
        program(outer_len(encap), encap_flags(encap), underlay_index)
    };
    let program = bpf::load_sched_cls(PROGRAM, &instructions)?;
    check_helpers_accept(&program, outer_len(encap))?;
    let attachment = attach(netlink, &program, link.index, mode).await?;
    Ok(TapEncap {
        tap,
        udp_tunnel_offload,
        index: link.index,
        _program: program,
        attachment,
    })
}

/// Turns on UDP-tunnel GSO on the TAP unless [`TUNNEL_OFFLOAD_ENV`] says `off`; says
/// which transmit path VXLAN takes, once per setup.
fn try_udp_tunnel_offload(tap: &Tun) -> bool {
    if std::env::var(TUNNEL_OFFLOAD_ENV).is_ok_and(|value| value == "off") {
        tracing::info!(
            "{TUNNEL_OFFLOAD_ENV}=off: VXLAN through {DEVICE} uses bpf_skb_adjust_room \
             (outer UDP checksum 0)"
        );
        return false;
    }
    match tap.enable_udp_tunnel_offload() {
        Ok(()) => {
            tracing::info!(
                "VXLAN through {DEVICE}: UDP-tunnel GSO with outer UDP checksums (tun offload)"
            );
            true
        }
        Err(error) => {
            tracing::info!(
                %error,
                "this kernel's TAP has no UDP-tunnel GSO (Linux 6.17+): VXLAN through \
                 {DEVICE} uses bpf_skb_adjust_room, outer UDP checksum 0, so receivers' \
                 UDP GRO does not merge it"
            );
            false
        }
    }
}

/// `TC_ACT_REDIRECT`: what the program returns when every helper accepted its part.
const TC_ACT_REDIRECT: u32 = 7;

/// Runs the program once on a dummy frame: the verifier does not check helper flags,
/// so a kernel that lacks one (`BPF_F_ADJ_ROOM_ENCAP_L2_ETH` before 5.13) would load and
/// attach the program and then drop every packet. `Err` names the refusal; a kernel
/// without test runs passes (it cannot tell).
fn check_helpers_accept(program: &OwnedFd, outer_len: usize) -> anyhow::Result<()> {
    const INNER_LEN: usize = 40;
    let eth = weft_proto::ethernet::HEADER_LEN;
    let mut frame = vec![0u8; eth + outer_len + INNER_LEN];
    frame[..6].copy_from_slice(&FRAME_DST_MAC);
    frame[6..12].copy_from_slice(&FRAME_SRC_MAC);
    frame[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    // IPv4 version and header length where each IPv4 header starts; the rest may be
    // zero: the program copies the outer headers without reading them.
    frame[eth] = 0x45;
    frame[eth + outer_len] = 0x45;
    match bpf::test_run(program, &frame) {
        Ok(TC_ACT_REDIRECT) => Ok(()),
        Ok(verdict) => anyhow::bail!(
            "the kernel refuses a helper call of {PROGRAM} (a test run returned {verdict}, not \
             TC_ACT_REDIRECT: bpf_skb_adjust_room's encapsulation flags need kernel 5.2, \
             VXLAN's ENCAP_L2_ETH 5.13)"
        ),
        Err(error) => {
            tracing::debug!(%error, "no BPF_PROG_TEST_RUN here; the program is attached untested");
            Ok(())
        }
    }
}

/// The program for a TAP whose writes already describe their encapsulation (UDP-tunnel
/// GSO in the vnet header): `return bpf_redirect_neigh(underlay)`.
pub fn redirect_program(underlay_index: u32) -> Vec<Insn> {
    vec![
        bpf::mov_imm(R1, underlay_index as i32),
        bpf::mov_imm(R2, 0),
        bpf::mov_imm(R3, 0),
        bpf::mov_imm(R4, 0),
        bpf::call(helper::REDIRECT_NEIGH),
        bpf::exit(),
    ]
}

/// Attaches `program` to `index`'s ingress: tcx, tc, or (`auto`) tcx and else tc.
async fn attach(
    netlink: &Netlink,
    program: &OwnedFd,
    index: u32,
    mode: TcAttach,
) -> anyhow::Result<Attachment> {
    let tcx = || bpf::attach_tcx_ingress(PROGRAM, program, index).map(Attachment::Tcx);
    match mode {
        TcAttach::Tcx => Ok(tcx().context("--tc-attach=tcx (needs kernel 6.6+)")?),
        TcAttach::Tc => attach_tc(netlink, program, index)
            .await
            .context("--tc-attach=tc (clsact + cls_bpf)"),
        TcAttach::Auto => match tcx() {
            Ok(attachment) => Ok(attachment),
            Err(tcx_error) => {
                tracing::info!(error = %tcx_error, "no tcx here (kernel before 6.6?); attaching through clsact + cls_bpf");
                attach_tc(netlink, program, index).await.with_context(|| {
                    format!("tcx failed ({tcx_error}), and so did clsact + cls_bpf")
                })
            }
        },
        TcAttach::Off => anyhow::bail!("--tc-attach=off asks for no program"),
    }
}

async fn attach_tc(netlink: &Netlink, program: &OwnedFd, index: u32) -> anyhow::Result<Attachment> {
    use std::os::fd::AsFd as _;
    let program_id = bpf::program_id(program).context("reading the program's id")?;
    netlink.ensure_clsact(index).await?;
    netlink
        .ensure_ingress_bpf(
            index,
            &weft_netlink::IngressBpf {
                program_fd: program.as_fd(),
                program_id,
                name: PROGRAM,
                priority: TC_PRIORITY,
                handle: TC_HANDLE,
            },
        )
        .await?;
    Ok(Attachment::Tc { program_id })
}

/// `BPF_ADJ_ROOM_MAC`: make or take room right after the Ethernet header.
const ADJ_ROOM_MAC: i32 = 1;
const ADJ_ROOM_FIXED_GSO: i32 = 1;
const TC_ACT_SHOT: i32 = 2;
const ETH_HEADER_LEN: i32 = weft_proto::ethernet::HEADER_LEN as i32;
/// Stack space for the outer headers (the largest, VXLAN's 50 bytes, rounded up to the
/// stack's 8-byte slots).
const STACK_HEADERS: i16 = -(weft_proto::vxlan::OVERHEAD.next_multiple_of(8) as i16);
const _: () = assert!(STACK_HEADERS == -56);

/// The tc program, in full:
///
/// ```text
/// stack = frame[14 .. 14 + len]                       (bpf_skb_load_bytes)
/// take len bytes after the Ethernet header            (bpf_skb_adjust_room −len)
/// make them again, marked as `flags` encapsulation    (bpf_skb_adjust_room +len)
/// frame[14 .. 14 + len] = stack                       (bpf_skb_store_bytes)
/// return bpf_redirect_neigh(underlay)                 (TC_ACT_REDIRECT; SHOT if no route)
/// any helper failing → TC_ACT_SHOT
/// ```
pub fn program(len: usize, flags: u64, underlay_index: u32) -> Vec<Insn> {
    assert!(len as i16 <= -STACK_HEADERS, "{len} bytes of headers");
    let len = len as i32;
    let mut p = vec![bpf::mov_reg(R6, R1)];
    let mut to_drop = Vec::new();
    let mut check = |p: &mut Vec<Insn>| {
        to_drop.push(p.len());
        p.push(bpf::jne_imm(R0, 0, 0));
    };
    p.extend([
        bpf::mov_imm(R2, ETH_HEADER_LEN),
        bpf::mov_reg(R3, R10),
        bpf::add_imm(R3, i32::from(STACK_HEADERS)),
        bpf::mov_imm(R4, len),
        bpf::call(helper::SKB_LOAD_BYTES),
    ]);
    check(&mut p);
    p.extend([
        bpf::mov_reg(R1, R6),
        bpf::mov_imm(R2, -len),
        bpf::mov_imm(R3, ADJ_ROOM_MAC),
        bpf::mov_imm(R4, ADJ_ROOM_FIXED_GSO),
        bpf::mov_imm(R5, 0),
        bpf::call(helper::SKB_ADJUST_ROOM),
    ]);
    check(&mut p);
    p.extend([
        bpf::mov_reg(R1, R6),
        bpf::mov_imm(R2, len),
        bpf::mov_imm(R3, ADJ_ROOM_MAC),
    ]);
    p.extend(bpf::mov_imm64(R4, flags));
    p.extend([bpf::mov_imm(R5, 0), bpf::call(helper::SKB_ADJUST_ROOM)]);
    check(&mut p);
    p.extend([
        bpf::mov_reg(R1, R6),
        bpf::mov_imm(R2, ETH_HEADER_LEN),
        bpf::mov_reg(R3, R10),
        bpf::add_imm(R3, i32::from(STACK_HEADERS)),
        bpf::mov_imm(R4, len),
        bpf::mov_imm(R5, 0),
        bpf::call(helper::SKB_STORE_BYTES),
    ]);
    check(&mut p);
    p.extend([
        bpf::mov_imm(R1, underlay_index as i32),
        bpf::mov_imm(R2, 0),
        bpf::mov_imm(R3, 0),
        bpf::mov_imm(R4, 0),
        bpf::call(helper::REDIRECT_NEIGH),
        bpf::exit(),
    ]);
    let drop = p.len();
    p.extend([bpf::mov_imm(R0, TC_ACT_SHOT), bpf::exit()]);
    for at in to_drop {
        p[at] = bpf::jne_imm(R0, 0, (drop - at - 1) as i16);
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    const VXLAN: Encap = Encap::Vxlan {
        vni: 1,
        port: 8472,
        local_mac: [2, 0, 0, 0, 0, 9],
    };

    #[test]
    fn device_name_fits_ifnamsiz() {
        assert!(DEVICE.len() < libc::IFNAMSIZ);
    }

    #[test]
    fn every_check_jumps_to_the_drop() {
        for encap in [Encap::Ipip, VXLAN] {
            let p = program(outer_len(&encap), encap_flags(&encap), 7);
            let drop = p.len() - 2;
            assert_eq!(p[drop], bpf::mov_imm(R0, TC_ACT_SHOT));
            let jumps = (0..drop)
                .filter(|&i| p[i] == bpf::jne_imm(R0, 0, (drop - i - 1) as i16))
                .count();
            assert_eq!(jumps, 4, "one after each helper but the last");
        }
    }

    #[test]
    fn flags_are_the_kernel_encodings() {
        // BPF_F_ADJ_ROOM_FIXED_GSO | ENCAP_L3_IPV4
        assert_eq!(encap_flags(&Encap::Ipip), 0x3);
        // … | ENCAP_L4_UDP | ENCAP_L2_ETH | ENCAP_L2(14)
        assert_eq!(encap_flags(&VXLAN), 0x0e00_0000_0000_0053);
        assert_eq!(outer_len(&Encap::Ipip), 20);
        assert_eq!(outer_len(&VXLAN), 50);
    }
}
