//! What survives a restart, in `--state-dir`:
//!
//! * `node.json`: this node's identity, the VTEP MAC (random once, then stable), and the
//!   last lease, so a restart keeps both (flannel #1155: a new MAC per restart left
//!   peers with stale neighbour entries). A corrupt file is an error: replacing it would
//!   change the MAC.
//! * `last-known.json` ([`LastKnown`]): the net-conf, the lease and the peers as last
//!   seen from etcd, so a node restarted while etcd is away can bring its data plane up
//!   without it. Written by [`LastKnownWriter`] at most once per debounce period; a file
//!   that is stale, foreign or garbled is ignored (logged), never fatal
//!   ([`LastKnown::restorable`] holds the rules).

use std::collections::BTreeMap;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use ipnet::Ipv4Net;
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};
use weft_config::NetConf;
use weft_proto::lease::MacAddr;

use crate::lease::{Peer, PeerBackend, PeerEvent};

/// File name inside `--state-dir`.
pub const STATE_FILE: &str = "node.json";
/// The last known net-conf, lease and peers, inside `--state-dir`.
pub const LAST_KNOWN_FILE: &str = "last-known.json";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read node state {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "node state {path} is not valid ({source}); move it away to start with a new identity"
    )]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot write node state {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What survives a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    pub vtep_mac: MacAddr,
    #[serde(default)]
    pub last_lease: Option<LastLease>,
}

/// The lease this node held when it last wrote its state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastLease {
    pub network: Ipv4Net,
    pub subnet: Ipv4Net,
    pub public_ip: Ipv4Addr,
}

impl NodeState {
    /// A fresh identity: a random, locally administered, unicast MAC.
    pub fn new_random<R: Rng + ?Sized>(rng: &mut R) -> Self {
        let mut mac: [u8; 6] = rng.random();
        mac[0] = (mac[0] & 0xfe) | 0x02;
        NodeState {
            vtep_mac: MacAddr(mac),
            last_lease: None,
        }
    }

    /// Loads the state from `dir`, or creates (and persists) a new identity when there is
    /// none yet. A corrupt file is an error, never silently replaced: replacing it would
    /// change the node's MAC behind the operator's back.
    pub fn load_or_create(dir: &Path) -> Result<NodeState, StateError> {
        let path = dir.join(STATE_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| StateError::Parse {
                path: path.clone(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let state = NodeState::new_random(&mut rand::rng());
                state.save(dir)?;
                tracing::info!(path = %path.display(), vtep_mac = %state.vtep_mac, "created new node identity");
                Ok(state)
            }
            Err(source) => Err(StateError::Read { path, source }),
        }
    }

    /// Writes the state atomically (temp file in the same directory, fsync, rename).
    pub fn save(&self, dir: &Path) -> Result<(), StateError> {
        // Serializing addresses and a MAC cannot fail.
        let json = serde_json::to_vec_pretty(self).unwrap_or_default();
        write_atomic(dir, STATE_FILE, &json)
    }
}

/// Writes `dir/name` atomically: a temp file in the same directory, fsync, rename.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), StateError> {
    let path = dir.join(name);
    let write_err = |source| StateError::Write {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(write_err)?;
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.write_all(b"\n")?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(write_err)
}

/// `last-known.json`: what this node last knew from etcd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastKnown {
    /// The net-conf exactly as stored in etcd; parsed again, with the same rules, on load.
    pub netconf: String,
    pub public_ip: Ipv4Addr,
    pub subnet: Ipv4Net,
    /// The etcd lease the subnet key hangs on; 0 for a reservation.
    pub lease_id: i64,
    /// The lease's expiry as last known (Unix seconds), at most a quarter of its TTL
    /// behind the real one ([`expiry_worth_saving`]); none for a reservation.
    pub expires_unix: Option<u64>,
    /// When this was written (Unix seconds): the peers are as of then.
    pub written_unix: u64,
    pub peers: Vec<SavedPeer>,
}

/// A peer in `last-known.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedPeer {
    pub subnet: Ipv4Net,
    pub public_ip: Ipv4Addr,
    pub backend: SavedBackend,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SavedBackend {
    Vxlan { vni: u32, vtep_mac: MacAddr },
    Ipip,
    HostGw,
    Other { name: String },
}

impl From<&Peer> for SavedPeer {
    fn from(peer: &Peer) -> Self {
        let backend = match &peer.backend {
            PeerBackend::Vxlan { vni, vtep_mac } => SavedBackend::Vxlan {
                vni: *vni,
                vtep_mac: MacAddr(*vtep_mac),
            },
            PeerBackend::Ipip => SavedBackend::Ipip,
            PeerBackend::HostGw => SavedBackend::HostGw,
            PeerBackend::Other(name) => SavedBackend::Other { name: name.clone() },
        };
        SavedPeer {
            subnet: peer.subnet,
            public_ip: peer.public_ip,
            backend,
        }
    }
}

impl From<&SavedPeer> for Peer {
    fn from(saved: &SavedPeer) -> Self {
        let backend = match &saved.backend {
            SavedBackend::Vxlan { vni, vtep_mac } => PeerBackend::Vxlan {
                vni: *vni,
                vtep_mac: vtep_mac.0,
            },
            SavedBackend::Ipip => PeerBackend::Ipip,
            SavedBackend::HostGw => PeerBackend::HostGw,
            SavedBackend::Other { name } => PeerBackend::Other(name.clone()),
        };
        Peer {
            subnet: saved.subnet,
            public_ip: saved.public_ip,
            backend,
        }
    }
}

/// Why `last-known.json` cannot be used for a start without etcd.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unusable {
    #[error("it is not valid JSON of the expected shape: {0}")]
    Garbled(String),
    #[error("it was written for PublicIP {saved}, but this node's PublicIP is {now} now")]
    OtherPublicIp { saved: Ipv4Addr, now: Ipv4Addr },
    #[error("its net-conf is not valid: {0}")]
    BadNetConf(String),
    #[error(
        "its subnet {subnet} does not fit its network {network} (SubnetLen, SubnetMin..SubnetMax)"
    )]
    OtherNetwork { subnet: Ipv4Net, network: Ipv4Net },
    #[error("its subnet {saved} is not the last lease in {STATE_FILE} ({last})")]
    NotTheLastLease { saved: Ipv4Net, last: String },
    #[error("its lease expired at {} (as last known)", crate::subnet::status::rfc3339_utc(*expired_unix))]
    Expired { expired_unix: u64 },
}

/// A [`LastKnown`] that passed the checks: what a start without etcd runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    pub netconf: NetConf,
    pub netconf_json: String,
    pub subnet: Ipv4Net,
    pub lease_id: i64,
    pub expires_unix: Option<u64>,
    pub peers_as_of_unix: u64,
    /// Every saved peer except this node's own subnet.
    pub peers: Vec<Peer>,
}

impl LastKnown {
    /// Reads `dir/last-known.json`: `Ok(None)` when there is none, `Err` when it cannot
    /// be read or parsed (the caller logs it and goes on without it).
    pub fn load(dir: &Path) -> Result<Option<LastKnown>, (PathBuf, Unusable)> {
        let path = dir.join(LAST_KNOWN_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| (path, Unusable::Garbled(e.to_string()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err((path, Unusable::Garbled(format!("cannot read it: {e}")))),
        }
    }

    /// Writes `dir/last-known.json` atomically (compact: it may list thousands of peers).
    pub fn save(&self, dir: &Path) -> Result<(), StateError> {
        // Plain strings, numbers and addresses always serialize.
        let json = serde_json::to_vec(self).unwrap_or_default();
        write_atomic(dir, LAST_KNOWN_FILE, &json)
    }

    /// Removes `dir/last-known.json` (absent is fine).
    pub fn remove(dir: &Path) -> Result<(), StateError> {
        let path = dir.join(LAST_KNOWN_FILE);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StateError::Write { path, source }),
        }
    }

    /// Whether this state may bring the data plane up without etcd, for a node whose
    /// underlay has `public_ip` now, whose `node.json` names `last_lease`, at `now_unix`.
    /// It must be this node's (same PublicIP), consistent (a valid net-conf the subnet
    /// fits; the same subnet as `node.json`'s last lease), and its lease not known to
    /// have expired (an expired lease may have gone to another node since).
    pub fn restorable(
        self,
        public_ip: Ipv4Addr,
        last_lease: Option<&LastLease>,
        now_unix: u64,
    ) -> Result<Restored, Unusable> {
        if self.public_ip != public_ip {
            return Err(Unusable::OtherPublicIp {
                saved: self.public_ip,
                now: public_ip,
            });
        }
        let netconf =
            NetConf::parse(&self.netconf).map_err(|e| Unusable::BadNetConf(e.to_string()))?;
        if !crate::subnet::choose::is_compatible(&netconf, self.subnet) {
            return Err(Unusable::OtherNetwork {
                subnet: self.subnet,
                network: netconf.network,
            });
        }
        let last = last_lease.map(|l| l.subnet);
        if last != Some(self.subnet) {
            return Err(Unusable::NotTheLastLease {
                saved: self.subnet,
                last: last.map_or_else(|| "none".to_owned(), |s| s.to_string()),
            });
        }
        if let Some(expires) = self.expires_unix {
            if expires <= now_unix {
                return Err(Unusable::Expired {
                    expired_unix: expires,
                });
            }
        }
        let peers = self
            .peers
            .iter()
            .filter(|p| p.subnet != self.subnet)
            .map(Peer::from)
            .collect();
        Ok(Restored {
            netconf,
            netconf_json: self.netconf,
            subnet: self.subnet,
            lease_id: self.lease_id,
            expires_unix: self.expires_unix,
            peers_as_of_unix: self.written_unix,
            peers,
        })
    }
}

/// Whether a new lease expiry is worth a write of `last-known.json`: when it switches
/// between a lease and a reservation, or the saved one has fallen behind by more than a
/// quarter of the time left (every ~6 h with flannel's 24 h TTL, not every keep-alive).
/// The saved expiry is thus always a little early, never late.
pub fn expiry_worth_saving(saved: Option<u64>, new: Option<u64>, now_unix: u64) -> bool {
    match (saved, new) {
        (None, None) => false,
        (Some(saved), Some(new)) => {
            new > saved && (new - saved).saturating_mul(4) > new.saturating_sub(now_unix)
        }
        _ => true,
    }
}

/// Seconds since the Unix epoch, now.
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Keeps [`LastKnown`] up to date in `--state-dir`: the lease (from the lease keeper's
/// state) and the peers (every [`PeerEvent`] the data plane gets passes through
/// [`LastKnownWriter::apply`]). Changes only mark the state dirty; a task writes it at
/// most once per debounce period, so a burst of peer events (a re-list of 5,000 peers)
/// is one write, and writes once more on shutdown.
#[derive(Debug, Clone)]
pub struct LastKnownWriter {
    shared: Arc<WriterShared>,
}

#[derive(Debug)]
struct WriterShared {
    dir: PathBuf,
    pending: Mutex<Pending>,
    wake: Notify,
}

#[derive(Debug, Default)]
struct Pending {
    netconf: Option<String>,
    public_ip: Option<Ipv4Addr>,
    /// subnet, lease id, expiry.
    lease: Option<(Ipv4Net, i64, Option<u64>)>,
    peers: BTreeMap<Ipv4Net, Peer>,
    dirty: bool,
    /// The file must go (the subnet is not ours any more).
    remove: bool,
}

impl LastKnownWriter {
    /// Starts the writing task for `dir`; it ends (after a last write of what is
    /// pending) when `stop` turns true. Await the handle to know that write is done.
    pub fn spawn(
        dir: PathBuf,
        debounce: Duration,
        stop: watch::Receiver<bool>,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let shared = Arc::new(WriterShared {
            dir,
            pending: Mutex::default(),
            wake: Notify::new(),
        });
        let task = tokio::spawn(write_loop(shared.clone(), debounce, stop));
        (LastKnownWriter { shared }, task)
    }

    fn pending(&self) -> MutexGuard<'_, Pending> {
        // Plain data: a panic elsewhere cannot leave it half-updated in a harmful way.
        self.shared
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn changed(&self, mut pending: MutexGuard<'_, Pending>) {
        pending.dirty = true;
        drop(pending);
        self.shared.wake.notify_one();
    }

    /// Starts from a restored state, as it is on disk (nothing to write).
    pub fn seed(&self, restored: &Restored, public_ip: Ipv4Addr) {
        let mut pending = self.pending();
        pending.netconf = Some(restored.netconf_json.clone());
        pending.public_ip = Some(public_ip);
        pending.lease = Some((restored.subnet, restored.lease_id, restored.expires_unix));
        pending.peers = restored
            .peers
            .iter()
            .map(|p| (p.subnet, p.clone()))
            .collect();
    }

    /// The net-conf (as stored in etcd) and PublicIP the lease belongs to.
    pub fn set_netconf(&self, netconf_json: String, public_ip: Ipv4Addr) {
        let mut pending = self.pending();
        if pending.netconf.as_ref() == Some(&netconf_json) && pending.public_ip == Some(public_ip) {
            return;
        }
        pending.netconf = Some(netconf_json);
        pending.public_ip = Some(public_ip);
        self.changed(pending);
    }

    /// The lease as the keeper holds it now; written when it differs enough from the
    /// saved one ([`expiry_worth_saving`]).
    pub fn set_lease(&self, subnet: Ipv4Net, lease_id: i64, expires_unix: Option<u64>) {
        let mut pending = self.pending();
        let worth = match pending.lease {
            Some((saved_subnet, saved_id, saved_expiry)) => {
                saved_subnet != subnet
                    || saved_id != lease_id
                    || expiry_worth_saving(saved_expiry, expires_unix, now_unix())
            }
            None => true,
        };
        if !worth {
            return;
        }
        pending.lease = Some((subnet, lease_id, expires_unix));
        pending.remove = false;
        self.changed(pending);
    }

    /// The subnet is not this node's any more: no start without etcd from it.
    pub fn forget(&self) {
        let mut pending = self.pending();
        if pending.lease.take().is_some() {
            pending.remove = true;
            self.changed(pending);
        }
    }

    /// Applies one peer event (the same the data plane gets); marks the state dirty only
    /// when the peer set changed.
    pub fn apply(&self, event: &PeerEvent) {
        let mut pending = self.pending();
        let changed = apply_peer_event(&mut pending.peers, event);
        if changed {
            self.changed(pending);
        }
    }

    /// The state as it would be written now (`None` without a lease).
    fn snapshot(pending: &Pending) -> Option<LastKnown> {
        let (subnet, lease_id, expires_unix) = pending.lease?;
        Some(LastKnown {
            netconf: pending.netconf.clone()?,
            public_ip: pending.public_ip?,
            subnet,
            lease_id,
            expires_unix,
            written_unix: now_unix(),
            peers: pending.peers.values().map(SavedPeer::from).collect(),
        })
    }
}

/// Applies `event` to `peers`; true when the set changed.
pub fn apply_peer_event(peers: &mut BTreeMap<Ipv4Net, Peer>, event: &PeerEvent) -> bool {
    match event {
        PeerEvent::Upsert(peer) => peers.insert(peer.subnet, peer.clone()).as_ref() != Some(peer),
        PeerEvent::Removed(subnet) => peers.remove(subnet).is_some(),
        PeerEvent::Snapshot(all) => {
            let new: BTreeMap<Ipv4Net, Peer> = all.iter().map(|p| (p.subnet, p.clone())).collect();
            if *peers == new {
                return false;
            }
            *peers = new;
            true
        }
    }
}

async fn write_loop(
    shared: Arc<WriterShared>,
    debounce: Duration,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let stopping = tokio::select! {
            () = shared.wake.notified() => {
                // Let the rest of a burst arrive; it goes into the same write.
                tokio::select! {
                    () = tokio::time::sleep(debounce) => false,
                    () = stopped(&mut stop) => true,
                }
            }
            () = stopped(&mut stop) => true,
        };
        flush(&shared).await;
        if stopping {
            return;
        }
    }
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

async fn flush(shared: &Arc<WriterShared>) {
    enum Job {
        Write(LastKnown),
        Remove,
    }
    let job = {
        let mut pending = shared.pending.lock().unwrap_or_else(|e| e.into_inner());
        if !std::mem::take(&mut pending.dirty) {
            return;
        }
        if std::mem::take(&mut pending.remove) && pending.lease.is_none() {
            Job::Remove
        } else {
            match LastKnownWriter::snapshot(&pending) {
                Some(state) => Job::Write(state),
                None => return,
            }
        }
    };
    let dir = shared.dir.clone();
    let result = tokio::task::spawn_blocking(move || match job {
        Job::Write(state) => state.save(&dir),
        Job::Remove => LastKnown::remove(&dir),
    })
    .await;
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot update the last known state"),
        Err(e) => tracing::warn!(error = %e, "writing the last known state failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_survives_reload() {
        let dir = tempfile::tempdir().unwrap();
        let first = NodeState::load_or_create(dir.path()).unwrap();
        assert_eq!(
            first.vtep_mac.0[0] & 0x03,
            0x02,
            "locally administered unicast"
        );
        let mut with_lease = first.clone();
        with_lease.last_lease = Some(LastLease {
            network: "10.244.0.0/16".parse().unwrap(),
            subnet: "10.244.9.0/24".parse().unwrap(),
            public_ip: Ipv4Addr::new(192, 0, 2, 9),
        });
        with_lease.save(dir.path()).unwrap();
        let again = NodeState::load_or_create(dir.path()).unwrap();
        assert_eq!(again, with_lease);
    }

    #[test]
    fn corrupt_state_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(STATE_FILE), b"{").unwrap();
        let err = NodeState::load_or_create(dir.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains(STATE_FILE), "{err}");
    }

    const NETCONF: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;
    const NOW: u64 = 1_796_359_207;

    fn peer(third: u8) -> Peer {
        Peer {
            subnet: Ipv4Net::new(Ipv4Addr::new(10, 244, third, 0), 24).unwrap(),
            public_ip: Ipv4Addr::new(192, 0, 2, third),
            backend: PeerBackend::Vxlan {
                vni: 1,
                vtep_mac: [2, 0, 0, 0, 0, third],
            },
        }
    }

    fn saved() -> LastKnown {
        let mut peers: Vec<SavedPeer> = [2, 3].map(|t| SavedPeer::from(&peer(t))).to_vec();
        peers.push(SavedPeer::from(&Peer {
            subnet: "10.244.4.0/24".parse().unwrap(),
            public_ip: Ipv4Addr::new(192, 0, 2, 4),
            backend: PeerBackend::Ipip,
        }));
        peers.push(SavedPeer::from(&Peer {
            subnet: "10.244.5.0/24".parse().unwrap(),
            public_ip: Ipv4Addr::new(192, 0, 2, 5),
            backend: PeerBackend::HostGw,
        }));
        peers.push(SavedPeer::from(&Peer {
            subnet: "10.244.6.0/24".parse().unwrap(),
            public_ip: Ipv4Addr::new(192, 0, 2, 6),
            backend: PeerBackend::Other("udp".into()),
        }));
        LastKnown {
            netconf: NETCONF.into(),
            public_ip: Ipv4Addr::new(192, 0, 2, 1),
            subnet: "10.244.1.0/24".parse().unwrap(),
            lease_id: 0x1234,
            expires_unix: Some(NOW + 3600),
            written_unix: NOW - 60,
            peers,
        }
    }

    fn last_lease(subnet: &str) -> LastLease {
        LastLease {
            network: "10.244.0.0/16".parse().unwrap(),
            subnet: subnet.parse().unwrap(),
            public_ip: Ipv4Addr::new(192, 0, 2, 1),
        }
    }

    #[test]
    fn last_known_round_trips_and_restores_its_peers() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(LastKnown::load(dir.path()), Ok(None));
        let state = saved();
        state.save(dir.path()).unwrap();
        let loaded = LastKnown::load(dir.path()).unwrap().unwrap();
        assert_eq!(loaded, state);
        let restored = loaded
            .restorable(
                Ipv4Addr::new(192, 0, 2, 1),
                Some(&last_lease("10.244.1.0/24")),
                NOW,
            )
            .unwrap();
        assert_eq!(restored.subnet, state.subnet);
        assert_eq!(restored.lease_id, 0x1234);
        assert_eq!(restored.peers_as_of_unix, NOW - 60);
        assert_eq!(restored.netconf, NetConf::parse(NETCONF).unwrap());
        assert_eq!(restored.peers.len(), 5);
        assert_eq!(restored.peers[0], peer(2));
        assert_eq!(restored.peers[2].backend, PeerBackend::Ipip);
        assert_eq!(restored.peers[3].backend, PeerBackend::HostGw);
        assert_eq!(restored.peers[4].backend, PeerBackend::Other("udp".into()));
        LastKnown::remove(dir.path()).unwrap();
        LastKnown::remove(dir.path()).unwrap();
        assert_eq!(LastKnown::load(dir.path()), Ok(None));
    }

    #[test]
    fn stale_or_foreign_state_is_refused_with_the_reason() {
        let ip = Ipv4Addr::new(192, 0, 2, 1);
        let last = last_lease("10.244.1.0/24");
        let check = |state: LastKnown, last: Option<&LastLease>, now| {
            state.restorable(ip, last, now).unwrap_err().to_string()
        };

        let mut foreign = saved();
        foreign.public_ip = Ipv4Addr::new(192, 0, 2, 2);
        let err = check(foreign, Some(&last), NOW);
        assert!(
            err.contains("192.0.2.2") && err.contains("192.0.2.1"),
            "{err}"
        );

        let mut other_network = saved();
        other_network.netconf = r#"{"Network":"10.50.0.0/16"}"#.into();
        let err = check(other_network, Some(&last), NOW);
        assert!(
            err.contains("10.244.1.0/24") && err.contains("10.50.0.0/16"),
            "{err}"
        );

        let mut bad_netconf = saved();
        bad_netconf.netconf = r#"{"Network":"nope"}"#.into();
        assert!(check(bad_netconf, Some(&last), NOW).contains("net-conf"));

        let err = check(saved(), Some(&last_lease("10.244.9.0/24")), NOW);
        assert!(
            err.contains("10.244.9.0/24") && err.contains(STATE_FILE),
            "{err}"
        );
        assert!(check(saved(), None, NOW).contains("none"));

        let err = check(saved(), Some(&last), NOW + 3600);
        assert!(err.contains("expired"), "{err}");
        // A reservation never expires.
        let mut reservation = saved();
        reservation.lease_id = 0;
        reservation.expires_unix = None;
        assert!(reservation.restorable(ip, Some(&last), u64::MAX).is_ok());
    }

    #[test]
    fn garbage_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(LAST_KNOWN_FILE), b"\x00garbage").unwrap();
        let (path, why) = LastKnown::load(dir.path()).unwrap_err();
        assert!(path.ends_with(LAST_KNOWN_FILE));
        assert!(matches!(why, Unusable::Garbled(_)), "{why}");
        std::fs::write(dir.path().join(LAST_KNOWN_FILE), br#"{"netconf":1}"#).unwrap();
        assert!(LastKnown::load(dir.path()).is_err());
    }

    #[test]
    fn expiry_is_rewritten_only_when_it_lags_a_quarter_of_the_time_left() {
        let day = 24 * 3600;
        // A keep-alive 10 s later: not worth a write.
        assert!(!expiry_worth_saving(
            Some(NOW + day),
            Some(NOW + day + 10),
            NOW + 10
        ));
        // Six hours and a bit later: the saved one lags more than a quarter.
        let later = NOW + 6 * 3600 + 60;
        assert!(expiry_worth_saving(
            Some(NOW + day),
            Some(later + day),
            later
        ));
        // An expiry moving backwards is never written (the saved one stays early).
        assert!(!expiry_worth_saving(Some(NOW + day), Some(NOW + 10), NOW));
        assert!(expiry_worth_saving(None, Some(NOW + day), NOW));
        assert!(expiry_worth_saving(Some(NOW + day), None, NOW));
        assert!(!expiry_worth_saving(None, None, NOW));
    }

    #[test]
    fn peer_events_change_the_set_only_when_it_changes() {
        let mut peers = BTreeMap::new();
        assert!(apply_peer_event(&mut peers, &PeerEvent::Upsert(peer(2))));
        assert!(!apply_peer_event(&mut peers, &PeerEvent::Upsert(peer(2))));
        let snapshot = PeerEvent::Snapshot(vec![peer(2), peer(3)]);
        assert!(apply_peer_event(&mut peers, &snapshot));
        assert!(!apply_peer_event(&mut peers, &snapshot));
        assert!(apply_peer_event(
            &mut peers,
            &PeerEvent::Removed(peer(3).subnet)
        ));
        assert!(!apply_peer_event(
            &mut peers,
            &PeerEvent::Removed(peer(3).subnet)
        ));
        assert_eq!(peers.len(), 1);
    }

    #[tokio::test]
    async fn a_burst_of_5000_peer_events_is_one_write() {
        let dir = tempfile::tempdir().unwrap();
        let (stop_tx, stop) = watch::channel(false);
        let (writer, task) =
            LastKnownWriter::spawn(dir.path().to_owned(), Duration::from_millis(200), stop);
        writer.set_netconf(NETCONF.into(), Ipv4Addr::new(192, 0, 2, 1));
        writer.set_lease("10.244.1.0/24".parse().unwrap(), 7, Some(NOW));
        let file = dir.path().join(LAST_KNOWN_FILE);
        let mut writes = 0;
        let mut last_modified = None;
        let start = std::time::Instant::now();
        for i in 0..5000u32 {
            let subnet = Ipv4Net::new(Ipv4Addr::from(0x0a00_0000 | (i << 8)), 24).unwrap();
            writer.apply(&PeerEvent::Upsert(Peer {
                subnet,
                public_ip: Ipv4Addr::from(0xc000_0200 + i),
                backend: PeerBackend::Ipip,
            }));
            if i % 500 == 0 {
                tokio::task::yield_now().await;
                let modified = std::fs::metadata(&file).and_then(|m| m.modified()).ok();
                if modified != last_modified {
                    writes += u32::from(modified.is_some());
                    last_modified = modified;
                }
            }
        }
        let burst = start.elapsed();
        // The debounce ends and one write lands.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let state = loop {
            if let Ok(Some(state)) = LastKnown::load(dir.path()) {
                if state.peers.len() == 5000 {
                    break state;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no write of all 5000 peers"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(state.lease_id, 7);
        if burst < Duration::from_millis(200) {
            assert_eq!(writes, 0, "nothing written during the burst ({burst:?})");
        }
        // Stop writes what is pending: a removal after a conflict.
        writer.forget();
        stop_tx.send(true).unwrap();
        task.await.unwrap();
        assert!(!file.exists(), "removed on stop, before the task ended");
    }
}
