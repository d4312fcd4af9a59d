//! Data-plane counters: plain atomics bumped on the hot path (relaxed ordering, no lock),
//! read only by whoever exports them (`/metrics`, `/v1/status`, tests).
//!
//! One counter per drop reason, so an operator can tell "a peer is misconfigured" from
//! "someone is spraying packets at the VXLAN port" without a capture.

mod dataplane;
mod peers;
mod reasons;
mod routes;

pub use dataplane::{ActiveOffloads, DataplaneInfo};
use peers::PeerRegistry;
pub use peers::{AlignedFlow, Direction, PeerKey, PeerStats, PeerTally, PeerTraffic};
pub use reasons::{DropReason, Flow, RefusalReason, Repair, SendErrorReport};
pub use routes::{RouteConflictView, RouteFailureView, RouteHealth, RouteNews};

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use ipnet::Ipv4Net;

use weft_netlink::RoutePass;

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
    /// Writes to TUN (received packets per write shows coalescing at work).
    pub tun_writes: AtomicU64,
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
            tun_writes: self.tun_writes.load(Ordering::Relaxed),
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
    pub tun_writes: u64,
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
mod tests;
