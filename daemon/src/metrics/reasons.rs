//! What the data plane counts packets by: flows, drop reasons, send-error reports and
//! reconcile repairs.

use std::sync::atomic::{AtomicU64, Ordering};

/// Packets and bytes moved in one direction.
#[derive(Debug, Default)]
pub struct Flow {
    pub packets: AtomicU64,
    pub bytes: AtomicU64,
}

impl Flow {
    /// Adds `packets` packets totalling `bytes` bytes.
    #[inline]
    pub fn add(&self, packets: u64, bytes: u64) {
        self.packets.fetch_add(packets, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// Why a packet was not forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Encapsulated packet from an address that is not the PublicIP of a current lease.
    RxUnknownSource,
    /// VXLAN header with a VNI other than ours (or without the I flag).
    RxWrongVni,
    /// Too short, not IPv4, bad header length: not something a peer would send.
    RxMalformed,
    /// Inner destination outside this node's subnet.
    RxDstNotLocal,
    /// Inner source outside the sending peer's subnet (spoofing or a misconfigured peer).
    RxSpoofedSource,
    /// Writing the decapsulated packet to the TUN device failed.
    RxTunWrite,
    /// An inner TCP segment whose checksum is neither complete nor the partial
    /// (pseudo-header) sum a sender leaves to offload: corrupted on the way or by the
    /// sender (`weft_proto::offload::tcp_checksum`). The kernel would drop it too.
    RxBadChecksum,
    /// A packet read from TUN whose destination is in no peer's subnet.
    TxNoPeer,
    /// A packet read from TUN that is not a well-formed IPv4 packet.
    TxMalformed,
    /// The underlay send failed (no route, the peer unreachable, ...).
    TxSendError,
    /// A packet too big for the underlay that could not be segmented.
    TxTooBig,
    /// The sending socket's buffer or the underlay device's queue stayed full for
    /// longer than a send may wait (`pacer::SendPacer`).
    TxSocketFull,
}

impl DropReason {
    /// Every reason, for exporters that list them all (including the zero ones).
    pub const ALL: [DropReason; 12] = [
        DropReason::RxUnknownSource,
        DropReason::RxWrongVni,
        DropReason::RxMalformed,
        DropReason::RxDstNotLocal,
        DropReason::RxSpoofedSource,
        DropReason::RxTunWrite,
        DropReason::RxBadChecksum,
        DropReason::TxNoPeer,
        DropReason::TxMalformed,
        DropReason::TxSendError,
        DropReason::TxTooBig,
        DropReason::TxSocketFull,
    ];

    /// Stable snake_case name, used as the `reason` label.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::RxUnknownSource => "rx_unknown_source",
            DropReason::RxWrongVni => "rx_wrong_vni",
            DropReason::RxMalformed => "rx_malformed",
            DropReason::RxDstNotLocal => "rx_dst_not_local",
            DropReason::RxSpoofedSource => "rx_spoofed_source",
            DropReason::RxTunWrite => "rx_tun_write",
            DropReason::RxBadChecksum => "rx_bad_checksum",
            DropReason::TxNoPeer => "tx_no_peer",
            DropReason::TxMalformed => "tx_malformed",
            DropReason::TxSendError => "tx_send_error",
            DropReason::TxTooBig => "tx_too_big",
            DropReason::TxSocketFull => "tx_socket_full",
        }
    }
}

/// What the kernel reported about a packet weft sent (one `IP_RECVERR` message from a
/// sending socket's error queue, `dataplane::io::drain_error_queue`), reduced to what an operator can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SendErrorReport {
    /// ICMP network unreachable (from a router, or the local stack: no route).
    NetUnreachable,
    /// ICMP host unreachable: typically the peer's address did not answer ARP.
    HostUnreachable,
    /// ICMP port unreachable: nothing listens on the peer's VXLAN port (weftd down).
    PortUnreachable,
    /// ICMP fragmentation needed: the underlay path's MTU is smaller than the packet.
    FragNeeded,
    /// Any other ICMP error (time exceeded, administratively prohibited, ...).
    OtherIcmp,
    /// An error the local stack raised itself (e.g. `EMSGSIZE`).
    Local,
}

impl SendErrorReport {
    /// Every kind, for exporters that list them all.
    pub const ALL: [SendErrorReport; 6] = [
        SendErrorReport::NetUnreachable,
        SendErrorReport::HostUnreachable,
        SendErrorReport::PortUnreachable,
        SendErrorReport::FragNeeded,
        SendErrorReport::OtherIcmp,
        SendErrorReport::Local,
    ];

    /// Stable snake_case name, used as the `kind` label.
    pub fn name(self) -> &'static str {
        match self {
            SendErrorReport::NetUnreachable => "net_unreachable",
            SendErrorReport::HostUnreachable => "host_unreachable",
            SendErrorReport::PortUnreachable => "port_unreachable",
            SendErrorReport::FragNeeded => "frag_needed",
            SendErrorReport::OtherIcmp => "other_icmp",
            SendErrorReport::Local => "local",
        }
    }
}

/// What the periodic reconcile found missing or altered and put back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Repair {
    /// The TUN device (`weft.<VNI>`/`weft.ipip`) was gone or down: re-created.
    Tun,
    /// The encapsulating TAP (`weft.encap`) was gone or down: re-created.
    Tap,
    /// The tc program on the TAP was detached: attached again.
    TcProgram,
    /// `cni0` was gone, or lost its address or MTU.
    Bridge,
    /// The masquerade table (`--ip-masq`) was gone or altered.
    Masquerade,
    /// The FORWARD accept rules (`--forward-rules`) were gone or altered.
    ForwardRules,
    /// The underlay device was re-created (new ifindex): program and sockets follow it.
    Underlay,
}

impl Repair {
    /// Every kind, for exporters that list them all (including the zero ones).
    pub const ALL: [Repair; 7] = [
        Repair::Tun,
        Repair::Tap,
        Repair::TcProgram,
        Repair::Bridge,
        Repair::Masquerade,
        Repair::ForwardRules,
        Repair::Underlay,
    ];

    /// Stable snake_case name, used as the `what` label.
    pub fn name(self) -> &'static str {
        match self {
            Repair::Tun => "tun",
            Repair::Tap => "tap",
            Repair::TcProgram => "tc_program",
            Repair::Bridge => "bridge",
            Repair::Masquerade => "masquerade",
            Repair::ForwardRules => "forward_rules",
            Repair::Underlay => "underlay",
        }
    }
}

/// Why a peer's lease gets no route (see `backend::Refusal`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefusalReason {
    /// host-gw: the peer's PublicIP is on none of the underlay interface's subnets.
    NotOnLink,
    /// The peer's lease is of another backend (or VXLAN VNI) than this network's.
    BackendMismatch,
}

impl RefusalReason {
    pub const ALL: [RefusalReason; 2] = [RefusalReason::NotOnLink, RefusalReason::BackendMismatch];

    /// Stable snake_case name, used as the `reason` label.
    pub fn name(self) -> &'static str {
        match self {
            RefusalReason::NotOnLink => "not_on_link",
            RefusalReason::BackendMismatch => "backend_mismatch",
        }
    }
}
