//! Data-plane counters: plain atomics bumped on the hot path (relaxed ordering, no lock),
//! read only by whoever exports them (`/metrics`, `/v1/status`, tests).
//!
//! One counter per drop reason, so an operator can tell "a peer is misconfigured" from
//! "someone is spraying packets at the VXLAN port" without a capture.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use ipnet::Ipv4Net;

use crate::netlink::{describe, protocol_name, Change, Conflict, RoutePass};

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
    /// longer than a send may wait (`pacer::SendPacer`).
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
    /// Destinations weft wants a route to that another route held, each counted once
    /// when it starts (not at every reconcile while it lasts).
    pub route_conflicts: AtomicU64,
    /// Route changes the kernel refused (each attempt; the pass goes on).
    pub route_failures: AtomicU64,
    /// The conflicts and failing changes of the last route pass, for `/v1/status`.
    routes: Mutex<RouteHealth>,
    /// The underlay device's transmit errors and drops as the kernel reports them,
    /// sampled at every route reconcile. A packet the kernel drops after weft handed it
    /// over (the underlay link down, a full queue) is counted here, not in `drops`;
    /// with kernel encapsulation that is every failure after the tc program.
    pub underlay_tx_errors: AtomicU64,
    pub underlay_tx_dropped: AtomicU64,
    drops: [AtomicU64; DropReason::ALL.len()],
    send_error_reports: [AtomicU64; SendErrorReport::ALL.len()],
    repairs: [AtomicU64; Repair::ALL.len()],
    /// Peers refused a route, each counted once when its lease is first refused.
    peers_refused: [AtomicU64; RefusalReason::ALL.len()],
    /// The subnets of the peers refused now, for `/readyz` (which waits for no route
    /// to them).
    refused_peers: Mutex<Vec<Ipv4Net>>,
    /// What the data plane set up, published whenever it is (re)built (see
    /// [`Metrics::set_up`]).
    dataplane: Mutex<Option<DataplaneInfo>>,
    /// True between [`Metrics::set_up`] and [`Metrics::set_down`].
    up: AtomicBool,
    /// Per-peer traffic, one entry per current peer (subnet, PublicIP) that carried
    /// traffic. The lock is taken by a worker only the first time it meets a peer (see
    /// [`PeerTally`]), by the data plane's control task when the peer set changes
    /// ([`Metrics::retain_peers`]) and by the exporter, never per packet.
    peers: Mutex<PeerRegistry>,
    /// Bumped by [`Metrics::retain_peers`] whenever the peer set changes; a
    /// [`PeerTally`] that sees it move forgets the peers it cached (checked once per
    /// flush, one relaxed load).
    peer_generation: AtomicU64,
}

/// A peer's identity in the per-peer series: its subnet and PublicIP.
pub type PeerKey = (Ipv4Net, Ipv4Addr);

#[derive(Debug, Default)]
struct PeerRegistry {
    stats: HashMap<PeerKey, Arc<PeerStats>>,
    /// The data plane's current peers; `None` until it first says (then any peer may
    /// be registered). Counters of a peer outside it are handed out but not
    /// registered, so a worker that still meets a peer which just left (it loaded the
    /// previous table) cannot bring its series back.
    current: Option<HashSet<PeerKey>>,
}

/// The route conflicts and failures as of the last pass, by destination.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RouteHealth {
    conflicts: BTreeMap<Ipv4Net, Conflict>,
    failing: BTreeMap<Ipv4Net, RouteFailureView>,
}

/// What changed between two route passes: what to count and log once.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RouteNews {
    /// Conflicts that were not there at the last pass.
    pub new_conflicts: Vec<Conflict>,
    /// Destinations no longer in conflict (the other route went, or the peer did).
    pub resolved_conflicts: Vec<Ipv4Net>,
    /// Failing changes whose destination did not fail at the last pass.
    pub new_failures: Vec<RouteFailureView>,
    /// Failures in this pass (new or not).
    pub failures: usize,
}

impl RouteHealth {
    /// Takes in one pass (pure): the conflicts and failures are those of `pass`; the
    /// answer says which are news.
    pub fn update(&mut self, pass: &RoutePass) -> RouteNews {
        let mut news = RouteNews {
            failures: pass.failures.len(),
            ..RouteNews::default()
        };
        let mut conflicts = BTreeMap::new();
        for conflict in &pass.conflicts {
            let dst = conflict.wanted.dst;
            if !self.conflicts.contains_key(&dst) && !conflicts.contains_key(&dst) {
                news.new_conflicts.push(*conflict);
            }
            // Keep what the table said over an `EEXIST` that named nobody.
            match (conflicts.get(&dst), self.conflicts.get(&dst)) {
                (
                    Some(Conflict {
                        foreign: Some(_), ..
                    }),
                    _,
                ) => {}
                (_, Some(known)) if conflict.foreign.is_none() => {
                    conflicts.insert(dst, *known);
                }
                _ => {
                    conflicts.insert(dst, *conflict);
                }
            }
        }
        news.resolved_conflicts = self
            .conflicts
            .keys()
            .filter(|dst| !conflicts.contains_key(dst))
            .copied()
            .collect();
        let mut failing = BTreeMap::new();
        for failure in &pass.failures {
            let view = RouteFailureView::new(&failure.change, &failure.error);
            if !self.failing.contains_key(&view.prefix) {
                news.new_failures.push(view.clone());
            }
            failing.insert(view.prefix, view);
        }
        self.conflicts = conflicts;
        self.failing = failing;
        news
    }
}

/// A destination held by another route, as `/v1/status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RouteConflictView {
    pub prefix: Ipv4Net,
    /// The route weft would install (`10.244.5.0/24 dev 7`).
    pub wanted: String,
    /// The other route's protocol (`static`, `boot`, `kernel`, a number); `null` when it
    /// appeared while weft was adding its own.
    pub protocol: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oif: Option<u32>,
}

impl From<&Conflict> for RouteConflictView {
    fn from(conflict: &Conflict) -> Self {
        RouteConflictView {
            prefix: conflict.wanted.dst,
            wanted: describe(&conflict.wanted),
            protocol: conflict.foreign.map(|f| protocol_name(f.protocol)),
            gateway: conflict.foreign.and_then(|f| f.gateway),
            oif: conflict.foreign.and_then(|f| f.oif),
        }
    }
}

/// A route change the kernel refused at the last pass, as `/v1/status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RouteFailureView {
    pub prefix: Ipv4Net,
    /// `add 10.244.5.0/24 dev 7`, `replace ...`, `delete ...`.
    pub change: String,
    pub error: String,
}

impl RouteFailureView {
    fn new(change: &Change, error: &str) -> Self {
        let change_text = match change {
            Change::Add(route) => format!("add {}", describe(route)),
            Change::Replace { old, new } => {
                format!("replace {} with {}", describe(old), describe(new))
            }
            Change::Delete(route) => format!("delete {}", describe(route)),
        };
        RouteFailureView {
            prefix: change.dst(),
            change: change_text,
            error: error.to_owned(),
        }
    }
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
    known: HashMap<PeerKey, Arc<PeerStats>>,
    /// The [`Metrics`] peer generation `known` was filled in.
    generation: u64,
    current: Option<Arc<PeerStats>>,
    packets: u64,
    bytes: u64,
}

impl PeerTally {
    pub fn new(direction: Direction) -> PeerTally {
        PeerTally {
            direction,
            known: HashMap::new(),
            generation: 0,
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
            self.flush(metrics);
            let stats = self
                .known
                .entry((subnet, public_ip))
                .or_insert_with(|| metrics.peer_stats(subnet, public_ip));
            self.current = Some(stats.clone());
        }
        self.packets += packets;
        self.bytes += bytes;
    }

    /// Adds what was summed to the current peer's counters (call at the end of every
    /// batch). When the peer set changed since the cache was filled, forgets the cached
    /// peers, so counters of gone peers are freed and the next packet to a peer finds
    /// its current counters.
    #[inline]
    pub fn flush(&mut self, metrics: &Metrics) {
        if self.packets != 0 || self.bytes != 0 {
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
        let generation = metrics.peer_generation.load(Ordering::Acquire);
        if generation != self.generation {
            self.forget(generation);
        }
    }

    /// Drops the cache (outside the per-packet path: once per peer-set change).
    #[cold]
    fn forget(&mut self, generation: u64) {
        // A new map, not `clear()`: the old one's memory goes back too.
        self.known = HashMap::new();
        self.current = None;
        self.generation = generation;
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
    /// How packets leave: `kernel_encap` (TAP + tc program) or `userspace`.
    pub transmit_path: &'static str,
    /// Why the userspace path is taken when it is: `--kernel-encap=false`, what the
    /// host lacks, or the run-time failure the workers fell back from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transmit_path_reason: Option<String>,
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
    /// Counts one peer refused a route.
    pub fn count_refused_peer(&self, reason: RefusalReason) {
        self.peers_refused[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn refused_peers_total(&self, reason: RefusalReason) -> u64 {
        self.peers_refused[reason as usize].load(Ordering::Relaxed)
    }

    /// The subnets of the peers refused a route now.
    pub fn set_refused_peers(&self, subnets: Vec<Ipv4Net>) {
        *lock(&self.refused_peers) = subnets;
    }

    pub fn refused_peers(&self) -> Vec<Ipv4Net> {
        lock(&self.refused_peers).clone()
    }

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
    /// and workers are in place, again after each rebuild).
    pub fn set_up(&self, info: DataplaneInfo) {
        *self.dataplane.lock().unwrap_or_else(|e| e.into_inner()) = Some(info);
        self.up.store(true, Ordering::Release);
    }

    /// Marks the data plane down (shutting down).
    pub fn set_down(&self) {
        self.up.store(false, Ordering::Release);
    }

    /// What the data plane set up, while it is up.
    pub fn dataplane(&self) -> Option<DataplaneInfo> {
        if self.up.load(Ordering::Acquire) {
            self.dataplane
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
        } else {
            None
        }
    }

    /// The counters of peer `(subnet, public_ip)`, created on first use. A peer that is
    /// not current (see [`Metrics::retain_peers`]) gets counters nobody exports.
    pub fn peer_stats(&self, subnet: Ipv4Net, public_ip: Ipv4Addr) -> Arc<PeerStats> {
        let key = (subnet, public_ip);
        let mut peers = lock(&self.peers);
        if let Some(stats) = peers.stats.get(&key) {
            return stats.clone();
        }
        let stats = Arc::new(PeerStats {
            subnet,
            public_ip,
            tx: AlignedFlow::default(),
            rx: AlignedFlow::default(),
        });
        let current = peers.current.as_ref().is_none_or(|c| c.contains(&key));
        if current {
            peers.stats.insert(key, stats.clone());
        }
        stats
    }

    /// Makes `current` the set of peers whose series exist: the counters of every other
    /// peer are dropped (a node whose lease went takes its series with it), and the
    /// workers' caches are invalidated. The data plane calls it after applying peer
    /// events, before it publishes the new peer table.
    pub fn retain_peers(&self, current: impl IntoIterator<Item = PeerKey>) {
        let current: HashSet<PeerKey> = current.into_iter().collect();
        let mut peers = lock(&self.peers);
        if peers.current.as_ref() == Some(&current) {
            return;
        }
        peers.stats.retain(|key, _| current.contains(key));
        // Give memory back after a large set shrank (the map never shrinks itself).
        if peers.stats.capacity() > 64 && peers.stats.len() < peers.stats.capacity() / 4 {
            peers.stats.shrink_to_fit();
        }
        peers.current = Some(current);
        drop(peers);
        self.peer_generation.fetch_add(1, Ordering::Release);
    }

    /// Takes in one route reconcile pass: counts new conflicts and every failure, keeps
    /// both for `/v1/status`, and logs what is new (a conflict once when it starts and
    /// once when it ends, a failing change once until it stops failing).
    pub fn record_route_pass(&self, pass: &RoutePass) {
        let news = lock(&self.routes).update(pass);
        self.route_conflicts
            .fetch_add(news.new_conflicts.len() as u64, Ordering::Relaxed);
        self.route_failures
            .fetch_add(news.failures as u64, Ordering::Relaxed);
        for conflict in &news.new_conflicts {
            let view = RouteConflictView::from(conflict);
            tracing::warn!(
                prefix = %view.prefix,
                wanted = %view.wanted,
                other_protocol = view.protocol.as_deref().unwrap_or("unknown"),
                other_gateway = ?view.gateway,
                other_oif = ?view.oif,
                "another route holds a peer's subnet; leaving it alone (weft's route goes in once it is gone)"
            );
        }
        for prefix in &news.resolved_conflicts {
            tracing::info!(%prefix, "route conflict over");
        }
        for failure in &news.new_failures {
            tracing::warn!(
                prefix = %failure.prefix, change = %failure.change, error = %failure.error,
                "route change failed; retrying at every reconcile"
            );
        }
    }

    /// Destinations another route holds, as of the last route pass.
    pub fn route_conflicts(&self) -> Vec<RouteConflictView> {
        lock(&self.routes)
            .conflicts
            .values()
            .map(RouteConflictView::from)
            .collect()
    }

    /// Route changes that failed at the last route pass.
    pub fn route_failures(&self) -> Vec<RouteFailureView> {
        lock(&self.routes).failing.values().cloned().collect()
    }

    /// Every current peer's traffic, by subnet.
    pub fn peer_traffic(&self) -> Vec<PeerTraffic> {
        let peers = lock(&self.peers);
        let mut out: Vec<PeerTraffic> = peers
            .stats
            .values()
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
            route_conflicts_total: self.route_conflicts.load(Ordering::Relaxed),
            route_failures_total: self.route_failures.load(Ordering::Relaxed),
            route_conflicts: self.route_conflicts(),
            route_failures: self.route_failures(),
            underlay_tx_errors: self.underlay_tx_errors.load(Ordering::Relaxed),
            underlay_tx_dropped: self.underlay_tx_dropped.load(Ordering::Relaxed),
            drops: DropReason::ALL.map(|reason| (reason.name(), self.drops(reason))),
            repairs: Repair::ALL.map(|what| (what.name(), self.repairs(what))),
            peers_refused: RefusalReason::ALL
                .map(|reason| (reason.name(), self.refused_peers_total(reason))),
            send_error_reports: SendErrorReport::ALL
                .map(|kind| (kind.name(), self.send_error_reports(kind))),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
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
    pub route_conflicts_total: u64,
    pub route_failures_total: u64,
    /// Destinations another route holds now (weft left them alone).
    pub route_conflicts: Vec<RouteConflictView>,
    /// Route changes the kernel refused at the last pass.
    pub route_failures: Vec<RouteFailureView>,
    pub underlay_tx_errors: u64,
    pub underlay_tx_dropped: u64,
    /// `(reason, count)` for every [`DropReason`], in [`DropReason::ALL`] order.
    pub drops: [(&'static str, u64); DropReason::ALL.len()],
    /// `(what, count)` for every [`Repair`], in [`Repair::ALL`] order.
    pub repairs: [(&'static str, u64); Repair::ALL.len()],
    /// `(reason, count)` for every [`RefusalReason`], in [`RefusalReason::ALL`] order.
    pub peers_refused: [(&'static str, u64); RefusalReason::ALL.len()],
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
        tally.flush(&metrics);
        tally.count(&metrics, a, ip(2), 1, 10);
        tally.flush(&metrics);
        let after = metrics.peer_traffic();
        assert_eq!((after[0].tx_packets, after[0].tx_bytes), (4, 310));
        assert_eq!((after[1].tx_packets, after[1].rx_packets), (1, 0));
        // A subnet that moved to another node is another peer.
        let mut rx = PeerTally::new(Direction::Rx);
        rx.count(&metrics, a, ip(9), 1, 1);
        rx.flush(&metrics);
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

    fn key(subnet: &str, last: u8) -> PeerKey {
        (subnet.parse().unwrap(), Ipv4Addr::new(198, 51, 100, last))
    }

    #[test]
    fn retain_peers_drops_gone_peers_series_and_tallies_forget_them() {
        let metrics = Metrics::default();
        let (a, b) = (key("10.244.2.0/24", 2), key("10.244.3.0/24", 3));
        let mut tally = PeerTally::new(Direction::Tx);
        tally.count(&metrics, a.0, a.1, 1, 10);
        tally.count(&metrics, b.0, b.1, 1, 10);
        tally.flush(&metrics);
        assert_eq!(metrics.peer_traffic().len(), 2);
        assert_eq!(tally.known.len(), 2);

        metrics.retain_peers([a]);
        let left: Vec<_> = metrics
            .peer_traffic()
            .iter()
            .map(|t| (t.subnet, t.public_ip))
            .collect();
        assert_eq!(left, [a], "b's series is gone");
        // The tally still holds b's counters until its next flush (once per batch).
        assert_eq!(tally.known.len(), 2);
        tally.flush(&metrics);
        assert!(tally.known.is_empty(), "the cache is forgotten");
        // a's counters survive: the tally finds the same ones again.
        tally.count(&metrics, a.0, a.1, 1, 10);
        tally.flush(&metrics);
        assert_eq!(metrics.peer_traffic()[0].tx_packets, 2);
        // An unchanged set changes nothing (no needless cache loss).
        let generation = metrics.peer_generation.load(Ordering::Relaxed);
        metrics.retain_peers([a]);
        assert_eq!(metrics.peer_generation.load(Ordering::Relaxed), generation);
    }

    #[test]
    fn a_worker_late_for_a_gone_peer_cannot_bring_its_series_back() {
        let metrics = Metrics::default();
        let (a, gone) = (key("10.244.2.0/24", 2), key("10.244.3.0/24", 3));
        metrics.retain_peers([a]);
        // A worker still on the previous table counts the gone peer.
        let mut tally = PeerTally::new(Direction::Rx);
        tally.count(&metrics, gone.0, gone.1, 5, 500);
        tally.flush(&metrics);
        assert!(metrics.peer_traffic().is_empty());
        // When it comes back it is current again, and counted from zero.
        metrics.retain_peers([a, gone]);
        tally.flush(&metrics);
        tally.count(&metrics, gone.0, gone.1, 1, 100);
        tally.flush(&metrics);
        let traffic = metrics.peer_traffic();
        assert_eq!(traffic.len(), 1);
        assert_eq!((traffic[0].rx_packets, traffic[0].rx_bytes), (1, 100));
    }

    #[test]
    fn churn_leaves_no_peer_state_behind() {
        let metrics = Metrics::default();
        let mut tallies: Vec<PeerTally> = (0..4).map(|_| PeerTally::new(Direction::Tx)).collect();
        for round in 0..5u32 {
            let peers: Vec<PeerKey> = (0..1000u32)
                .map(|n| {
                    let subnet = Ipv4Net::new(Ipv4Addr::from(0x0af4_0000 + n * 16), 28).unwrap();
                    (
                        subnet,
                        Ipv4Addr::from(0xc633_6400 + round * 50 + n % 50 + 1),
                    )
                })
                .collect();
            metrics.retain_peers(peers.iter().copied());
            for (n, peer) in peers.iter().enumerate() {
                let tally = &mut tallies[n % 4];
                tally.count(&metrics, peer.0, peer.1, 1, 64);
                tally.flush(&metrics);
            }
            assert_eq!(metrics.peer_traffic().len(), 1000);
            metrics.retain_peers([]);
            for tally in &mut tallies {
                tally.flush(&metrics);
                assert!(tally.known.is_empty());
            }
            assert!(metrics.peer_traffic().is_empty(), "round {round}");
        }
        assert!(
            lock(&metrics.peers).stats.capacity() < 1000,
            "memory given back"
        );
    }

    mod routes {
        use super::*;
        use crate::netlink::{ForeignRoute, Route, RouteFailure};

        fn conflict(dst: &str, known: bool) -> Conflict {
            let dst: Ipv4Net = dst.parse().unwrap();
            Conflict {
                wanted: Route {
                    dst,
                    gateway: None,
                    oif: 7,
                },
                foreign: known.then_some(ForeignRoute {
                    dst,
                    protocol: 4,
                    gateway: Some(Ipv4Addr::new(192, 0, 2, 9)),
                    oif: Some(2),
                }),
            }
        }

        fn pass(conflicts: &[Conflict], failures: &[Change]) -> RoutePass {
            RoutePass {
                applied: Vec::new(),
                conflicts: conflicts.to_vec(),
                failures: failures
                    .iter()
                    .map(|change| RouteFailure {
                        change: *change,
                        error: "Network is down (os error 100)".into(),
                    })
                    .collect(),
            }
        }

        #[test]
        fn a_conflict_is_news_once_while_it_lasts() {
            let metrics = Metrics::default();
            let c = conflict("10.244.5.0/24", true);
            for _ in 0..3 {
                metrics.record_route_pass(&pass(&[c], &[]));
            }
            assert_eq!(metrics.route_conflicts.load(Ordering::Relaxed), 1);
            let views = metrics.route_conflicts();
            assert_eq!(views.len(), 1);
            assert_eq!(views[0].prefix.to_string(), "10.244.5.0/24");
            assert_eq!(views[0].protocol.as_deref(), Some("static"));
            assert_eq!(views[0].wanted, "10.244.5.0/24 dev 7");
            // Gone, then back: a new conflict.
            metrics.record_route_pass(&pass(&[], &[]));
            assert!(metrics.route_conflicts().is_empty());
            metrics.record_route_pass(&pass(&[c], &[]));
            assert_eq!(metrics.route_conflicts.load(Ordering::Relaxed), 2);
        }

        #[test]
        fn a_conflict_first_seen_as_eexist_keeps_the_table_s_description() {
            let mut health = RouteHealth::default();
            let news = health.update(&pass(&[conflict("10.244.5.0/24", false)], &[]));
            assert_eq!(news.new_conflicts.len(), 1);
            let news = health.update(&pass(&[conflict("10.244.5.0/24", true)], &[]));
            assert!(news.new_conflicts.is_empty());
            // An EEXIST for a known conflict does not forget who holds the prefix.
            health.update(&pass(&[conflict("10.244.5.0/24", false)], &[]));
            assert!(health.conflicts.values().all(|c| c.foreign.is_some()));
        }

        #[test]
        fn failures_are_all_counted_and_news_once() {
            let metrics = Metrics::default();
            let add = Change::Add(conflict("10.244.6.0/24", true).wanted);
            let other = Change::Delete(conflict("10.244.7.0/24", true).wanted);
            let mut health = RouteHealth::default();
            assert_eq!(
                health.update(&pass(&[], &[add, other])).new_failures.len(),
                2
            );
            let news = health.update(&pass(&[], &[add]));
            assert!(news.new_failures.is_empty());
            assert_eq!(news.failures, 1);
            for _ in 0..2 {
                metrics.record_route_pass(&pass(&[], &[add, other]));
            }
            assert_eq!(metrics.route_failures.load(Ordering::Relaxed), 4);
            let failing = metrics.route_failures();
            assert_eq!(failing[0].change, "add 10.244.6.0/24 dev 7");
            assert_eq!(failing[1].change, "delete 10.244.7.0/24 dev 7");
            let json = serde_json::to_value(metrics.snapshot()).unwrap();
            assert_eq!(json["route_failures_total"], 4);
            assert_eq!(json["route_failures"][0]["prefix"], "10.244.6.0/24");
        }
    }
}
