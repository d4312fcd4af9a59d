//! Per-peer traffic series: the registry of peers and the workers' lock-free tallies.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use ipnet::Ipv4Net;

use super::{Flow, Metrics};

/// A peer's identity in the per-peer series: its subnet and PublicIP.
pub type PeerKey = (Ipv4Net, Ipv4Addr);

#[derive(Debug, Default)]
pub(super) struct PeerRegistry {
    pub(super) stats: HashMap<PeerKey, Arc<PeerStats>>,
    /// The data plane's current peers; `None` until it first says (then any peer may
    /// be registered). Counters of a peer outside it are handed out but not
    /// registered, so a worker that still meets a peer which just left (it loaded the
    /// previous table) cannot bring its series back.
    pub(super) current: Option<HashSet<PeerKey>>,
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
    pub(super) known: HashMap<PeerKey, Arc<PeerStats>>,
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
