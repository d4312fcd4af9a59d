//! Data-plane counters: plain atomics bumped on the hot path (relaxed ordering, no lock),
//! read only by whoever exports them (`/metrics`, `/v1/status`, tests).
//!
//! One counter per drop reason, so an operator can tell "a peer is misconfigured" from
//! "someone is spraying packets at the VXLAN port" without a capture.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use ipnet::Ipv4Net;

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
    /// A packet read from TUN whose destination is in no peer's subnet.
    TxNoPeer,
    /// A packet read from TUN that is not a well-formed IPv4 packet.
    TxMalformed,
    /// The underlay send failed (no route, the peer unreachable, ...).
    TxSendError,
    /// A packet too big for the underlay that could not be segmented.
    TxTooBig,
    /// The sending socket's buffer or the underlay device's queue stayed full for
    /// longer than a send may wait (`worker::SendPacer`).
    TxSocketFull,
}

impl DropReason {
    /// Every reason, for exporters that list them all (including the zero ones).
    pub const ALL: [DropReason; 11] = [
        DropReason::RxUnknownSource,
        DropReason::RxWrongVni,
        DropReason::RxMalformed,
        DropReason::RxDstNotLocal,
        DropReason::RxSpoofedSource,
        DropReason::RxTunWrite,
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

/// All data-plane counters of one node. Shared as `Arc<Metrics>`.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Inner packets read from TUN and sent to a peer (bytes: inner IPv4 length).
    pub tx: Flow,
    /// Inner packets received from a peer and written to TUN (bytes: inner IPv4 length).
    pub rx: Flow,
    /// Underlay send syscalls (`sendmmsg`/`sendmsg`), to see batching at work.
    pub tx_syscalls: AtomicU64,
    /// Underlay receive syscalls (`recvmmsg`).
    pub rx_syscalls: AtomicU64,
    /// Sends that found the socket's buffer or the device's queue full (`EAGAIN`,
    /// `ENOBUFS`) and waited for room before retrying (whether or not room came).
    pub tx_full_waits: AtomicU64,
    /// Times a data-plane worker slept in `poll` and was woken by a packet: on a
    /// virtual machine each costs tens of µs of latency (see `--busy-poll`).
    pub worker_wakeups: AtomicU64,
    /// Waits for the reply to a request a worker woke up to send (see
    /// `dataplane::reply_wait`) that a packet ended, and that ran out first.
    pub reply_waits_answered: AtomicU64,
    pub reply_waits_expired: AtomicU64,
    /// Time workers spent polling for packets instead of sleeping, in ns: what they
    /// spend for latency (each polling round yields the CPU to whoever needs it).
    pub worker_polling_ns: AtomicU64,
    /// Route changes the periodic reconcile had to make (a route deleted or altered by
    /// someone else and put back); changes caused by peer events are not counted.
    pub route_reconcile_fixes: AtomicU64,
    /// The underlay device's transmit errors and drops as the kernel reports them,
    /// sampled at every route reconcile. A packet the kernel drops after weft handed it
    /// over (the underlay link down, a full queue) is counted here, not in `drops`;
    /// with kernel encapsulation that is every failure after the tc program.
    pub underlay_tx_errors: AtomicU64,
    pub underlay_tx_dropped: AtomicU64,
    drops: [AtomicU64; DropReason::ALL.len()],
    send_error_reports: [AtomicU64; SendErrorReport::ALL.len()],
    repairs: [AtomicU64; Repair::ALL.len()],
    /// What the data plane set up, published once it is up (see [`Metrics::set_up`]).
    dataplane: OnceLock<DataplaneInfo>,
    /// True between [`Metrics::set_up`] and [`Metrics::set_down`].
    up: AtomicBool,
    /// Per-peer traffic, one entry per (subnet, PublicIP) ever seen. The lock is taken
    /// by a worker only the first time it meets a peer (see [`PeerTally`]) and by the
    /// exporter, never per packet.
    peers: Mutex<Vec<Arc<PeerStats>>>,
}

/// Traffic with one peer. The two directions are written by different threads, so
/// each sits on its own cache line.
#[derive(Debug)]
pub struct PeerStats {
    pub subnet: Ipv4Net,
    pub public_ip: Ipv4Addr,
    pub tx: AlignedFlow,
    pub rx: AlignedFlow,
}

/// A [`Flow`] alone on its cache line(s).
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct AlignedFlow(pub Flow);

/// Which direction a [`PeerTally`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Tx,
    Rx,
}

/// A worker's per-peer counting: packets are summed locally while consecutive packets
/// go to (or come from) the same peer and added to that peer's atomics when the peer
/// changes or the batch ends — no lock and usually no atomic per packet. Each thread
/// caches the peers it met, so the registry lock is taken once per new peer.
#[derive(Debug)]
pub struct PeerTally {
    direction: Direction,
    known: HashMap<(Ipv4Net, Ipv4Addr), Arc<PeerStats>>,
    current: Option<Arc<PeerStats>>,
    packets: u64,
    bytes: u64,
}

impl PeerTally {
    pub fn new(direction: Direction) -> PeerTally {
        PeerTally {
            direction,
            known: HashMap::new(),
            current: None,
            packets: 0,
            bytes: 0,
        }
    }

    /// Counts `packets` packets of `bytes` bytes with the peer `(subnet, public_ip)`.
    #[inline]
    pub fn count(
        &mut self,
        metrics: &Metrics,
        subnet: Ipv4Net,
        public_ip: Ipv4Addr,
        packets: u64,
        bytes: u64,
    ) {
        let same = self
            .current
            .as_ref()
            .is_some_and(|c| c.subnet == subnet && c.public_ip == public_ip);
        if !same {
            self.flush();
            let stats = self
                .known
                .entry((subnet, public_ip))
                .or_insert_with(|| metrics.peer_stats(subnet, public_ip));
            self.current = Some(stats.clone());
        }
        self.packets += packets;
        self.bytes += bytes;
    }

    /// Adds what was summed to the current peer's counters.
    #[inline]
    pub fn flush(&mut self) {
        if self.packets == 0 && self.bytes == 0 {
            return;
        }
        if let Some(stats) = &self.current {
            let flow = match self.direction {
                Direction::Tx => &stats.tx.0,
                Direction::Rx => &stats.rx.0,
            };
            flow.add(self.packets, self.bytes);
        }
        self.packets = 0;
        self.bytes = 0;
    }
}

/// Plain values of one peer's [`PeerStats`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PeerTraffic {
    pub subnet: Ipv4Net,
    pub public_ip: Ipv4Addr,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
}

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
}

impl Metrics {
    /// Counts one dropped packet.
    #[inline]
    pub fn drop_packet(&self, reason: DropReason) {
        self.drops[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one report read from a sending socket's error queue.
    pub fn count_send_error_report(&self, kind: SendErrorReport) {
        self.send_error_reports[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Reports of `kind` read so far.
    pub fn send_error_reports(&self, kind: SendErrorReport) -> u64 {
        self.send_error_reports[kind as usize].load(Ordering::Relaxed)
    }

    /// Counts one repair of `what`.
    pub fn count_repair(&self, what: Repair) {
        self.repairs[what as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Repairs of `what` so far.
    pub fn repairs(&self, what: Repair) -> u64 {
        self.repairs[what as usize].load(Ordering::Relaxed)
    }

    /// Packets dropped so far for `reason`.
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize].load(Ordering::Relaxed)
    }

    /// Publishes what the data plane set up and marks it up (call when devices, sockets
    /// and workers are in place).
    pub fn set_up(&self, info: DataplaneInfo) {
        // Set once per process: a data plane runs once per weftd.
        let _ = self.dataplane.set(info);
        self.up.store(true, Ordering::Release);
    }

    /// Marks the data plane down (shutting down).
    pub fn set_down(&self) {
        self.up.store(false, Ordering::Release);
    }

    /// What the data plane set up, while it is up.
    pub fn dataplane(&self) -> Option<&DataplaneInfo> {
        if self.up.load(Ordering::Acquire) {
            self.dataplane.get()
        } else {
            None
        }
    }

    /// The counters of peer `(subnet, public_ip)`, created on first use.
    pub fn peer_stats(&self, subnet: Ipv4Net, public_ip: Ipv4Addr) -> Arc<PeerStats> {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(stats) = peers
            .iter()
            .find(|p| p.subnet == subnet && p.public_ip == public_ip)
        {
            return stats.clone();
        }
        let stats = Arc::new(PeerStats {
            subnet,
            public_ip,
            tx: AlignedFlow::default(),
            rx: AlignedFlow::default(),
        });
        peers.push(stats.clone());
        stats
    }

    /// Every peer's traffic so far, by subnet.
    pub fn peer_traffic(&self) -> Vec<PeerTraffic> {
        let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<PeerTraffic> = peers
            .iter()
            .map(|p| PeerTraffic {
                subnet: p.subnet,
                public_ip: p.public_ip,
                tx_packets: p.tx.0.packets.load(Ordering::Relaxed),
                tx_bytes: p.tx.0.bytes.load(Ordering::Relaxed),
                rx_packets: p.rx.0.packets.load(Ordering::Relaxed),
                rx_bytes: p.rx.0.bytes.load(Ordering::Relaxed),
            })
            .collect();
        out.sort_by_key(|p| (p.subnet, p.public_ip));
        out
    }

    /// A consistent-enough copy for exporting (each counter read once).
    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            tx_packets: self.tx.packets.load(Ordering::Relaxed),
            tx_bytes: self.tx.bytes.load(Ordering::Relaxed),
            rx_packets: self.rx.packets.load(Ordering::Relaxed),
            rx_bytes: self.rx.bytes.load(Ordering::Relaxed),
            tx_syscalls: self.tx_syscalls.load(Ordering::Relaxed),
            rx_syscalls: self.rx_syscalls.load(Ordering::Relaxed),
            tx_full_waits: self.tx_full_waits.load(Ordering::Relaxed),
            worker_wakeups: self.worker_wakeups.load(Ordering::Relaxed),
            reply_waits_answered: self.reply_waits_answered.load(Ordering::Relaxed),
            reply_waits_expired: self.reply_waits_expired.load(Ordering::Relaxed),
            worker_polling_ns: self.worker_polling_ns.load(Ordering::Relaxed),
            route_reconcile_fixes: self.route_reconcile_fixes.load(Ordering::Relaxed),
            underlay_tx_errors: self.underlay_tx_errors.load(Ordering::Relaxed),
            underlay_tx_dropped: self.underlay_tx_dropped.load(Ordering::Relaxed),
            drops: DropReason::ALL.map(|reason| (reason.name(), self.drops(reason))),
            repairs: Repair::ALL.map(|what| (what.name(), self.repairs(what))),
            send_error_reports: SendErrorReport::ALL
                .map(|kind| (kind.name(), self.send_error_reports(kind))),
        }
    }
}

/// Plain values of [`Metrics`], serializable for `/v1/status`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MetricsSnapshot {
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_syscalls: u64,
    pub rx_syscalls: u64,
    pub tx_full_waits: u64,
    pub worker_wakeups: u64,
    pub reply_waits_answered: u64,
    pub reply_waits_expired: u64,
    pub worker_polling_ns: u64,
    pub route_reconcile_fixes: u64,
    pub underlay_tx_errors: u64,
    pub underlay_tx_dropped: u64,
    /// `(reason, count)` for every [`DropReason`], in [`DropReason::ALL`] order.
    pub drops: [(&'static str, u64); DropReason::ALL.len()],
    /// `(what, count)` for every [`Repair`], in [`Repair::ALL`] order.
    pub repairs: [(&'static str, u64); Repair::ALL.len()],
    /// `(kind, count)` for every [`SendErrorReport`], in [`SendErrorReport::ALL`] order.
    pub send_error_reports: [(&'static str, u64); SendErrorReport::ALL.len()],
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_its_own_counter() {
        let metrics = Metrics::default();
        for (n, reason) in DropReason::ALL.iter().enumerate() {
            for _ in 0..=n {
                metrics.drop_packet(*reason);
            }
        }
        for (n, reason) in DropReason::ALL.iter().enumerate() {
            assert_eq!(metrics.drops(*reason), n as u64 + 1, "{}", reason.name());
        }
        let snapshot = metrics.snapshot();
        assert_eq!(snapshot.drops[0], ("rx_unknown_source", 1));
    }

    #[test]
    fn tally_sums_per_peer_and_flushes_on_change() {
        let metrics = Metrics::default();
        let a: Ipv4Net = "10.244.2.0/24".parse().unwrap();
        let b: Ipv4Net = "10.244.3.0/24".parse().unwrap();
        let ip = |last| Ipv4Addr::new(192, 0, 2, last);
        let mut tally = PeerTally::new(Direction::Tx);
        tally.count(&metrics, a, ip(2), 1, 100);
        tally.count(&metrics, a, ip(2), 2, 200);
        tally.count(&metrics, b, ip(3), 1, 50);
        let before_flush = metrics.peer_traffic();
        assert_eq!(
            (before_flush[0].tx_packets, before_flush[0].tx_bytes),
            (3, 300)
        );
        assert_eq!(before_flush[1].tx_packets, 0, "b is still summed locally");
        tally.flush();
        tally.count(&metrics, a, ip(2), 1, 10);
        tally.flush();
        let after = metrics.peer_traffic();
        assert_eq!((after[0].tx_packets, after[0].tx_bytes), (4, 310));
        assert_eq!((after[1].tx_packets, after[1].rx_packets), (1, 0));
        // A subnet that moved to another node is another peer.
        let mut rx = PeerTally::new(Direction::Rx);
        rx.count(&metrics, a, ip(9), 1, 1);
        rx.flush();
        assert_eq!(metrics.peer_traffic().len(), 3);
    }

    #[test]
    fn reasons_are_indexed_in_order() {
        for (n, reason) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, n);
        }
        for (n, what) in Repair::ALL.iter().enumerate() {
            assert_eq!(*what as usize, n);
        }
        for (n, kind) in SendErrorReport::ALL.iter().enumerate() {
            assert_eq!(*kind as usize, n);
        }
    }
}
