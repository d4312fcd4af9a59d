//! The control plane's state as the health endpoint sees it: lease state, peers, etcd
//! reachability and counters. Written by the manager and the watcher, read by `/readyz`
//! and `/v1/status`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::store::{EtcdHealth, Reachability};
use crate::lease::{PeerBackend, PeerLease};

/// Event counters of the control plane (monotonic).
#[derive(Debug, Default)]
pub struct Counters {
    /// Create-if-absent transactions that lost a race for a subnet and were retried.
    pub race_retries: AtomicU64,
    /// Watch streams that ended (disconnect, compaction) and were re-listed.
    pub watch_restarts: AtomicU64,
    /// Successful lease keep-alives.
    pub lease_renewals: AtomicU64,
    /// Leases found lost (expired, revoked, deleted).
    pub lease_losses: AtomicU64,
    /// Lost leases re-acquired (the same subnet).
    pub lease_reacquisitions: AtomicU64,
    /// Peer events handed to the data plane.
    pub peer_events: AtomicU64,
}

impl Counters {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Where the node's lease stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum LeaseState {
    Starting,
    /// etcd did not answer yet.
    WaitingForEtcd {
        error: String,
    },
    /// etcd answers but the net-conf key does not exist.
    WaitingForConfig {
        key: String,
    },
    Held {
        subnet: Ipv4Net,
        public_ip: Ipv4Addr,
        /// A reservation (key without TTL): it never expires.
        reservation: bool,
        lease_id: i64,
        /// Wall-clock expiry as of the last keep-alive (Unix seconds); none for a
        /// reservation.
        expires_unix: Option<u64>,
    },
    /// The lease was lost and could not be re-acquired yet (etcd unreachable); the
    /// data plane keeps routing meanwhile.
    Lost {
        subnet: Ipv4Net,
        reason: String,
    },
    /// Someone else holds this node's subnet now.
    Conflict {
        subnet: Ipv4Net,
        holder: Ipv4Addr,
    },
}

/// A peer as `/v1/status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerView {
    pub subnet: IpNet,
    pub public_ip: IpAddr,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_ipv6: Option<Ipv6Addr>,
    pub backend: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vni: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vtep_mac: Option<String>,
}

impl From<&PeerLease> for PeerView {
    fn from(peer: &PeerLease) -> Self {
        let (backend, vni, vtep_mac) = match &peer.backend {
            PeerBackend::Vxlan { vni, vtep_mac } => (
                "vxlan".to_owned(),
                Some(*vni),
                Some(weft_proto::lease::MacAddr(*vtep_mac).to_string()),
            ),
            PeerBackend::Ipip => ("ipip".to_owned(), None, None),
            PeerBackend::HostGw => ("host-gw".to_owned(), None, None),
            PeerBackend::Other(name) => (name.clone(), None, None),
        };
        PeerView {
            subnet: peer.subnet,
            public_ip: peer.public_ip,
            public_ipv6: peer.public_ipv6,
            backend,
            vni,
            vtep_mac,
        }
    }
}

/// The data plane runs from `--state-dir/last-known.json` because etcd did not answer
/// when weftd started: the subnet and the peers are as last known, not as etcd says now.
/// Cleared once etcd answers and the lease is confirmed (or replaced).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Degraded {
    /// Why, in words (for `/readyz` and operators).
    pub reason: String,
    /// The file the state came from.
    pub state_file: String,
    pub subnet: Ipv4Net,
    /// When the saved peer set was written (Unix seconds, and RFC 3339 UTC).
    pub peers_as_of_unix: u64,
    pub peers_as_of: String,
    /// The lease's expiry as last known (none for a reservation).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_expires_unix: Option<u64>,
    /// Since when (Unix seconds).
    pub since_unix: u64,
}

impl Degraded {
    /// Running from `state_file` (subnet, lease expiry, peers as of a time) since now.
    pub fn from_saved_state(
        state_file: &std::path::Path,
        subnet: Ipv4Net,
        lease_expires_unix: Option<u64>,
        peers_as_of_unix: u64,
    ) -> Self {
        Degraded {
            reason: "etcd unreachable: the data plane runs from the last known state".into(),
            state_file: state_file.display().to_string(),
            subnet,
            peers_as_of_unix,
            peers_as_of: rfc3339_utc(peers_as_of_unix),
            lease_expires_unix,
            since_unix: ControlStatus::unix_secs(SystemTime::now()),
        }
    }
}

/// `unix` seconds as RFC 3339 in UTC, e.g. `2026-12-06T04:40:07Z` (civil date from
/// days since the epoch, after Howard Hinnant's `civil_from_days`).
pub fn rfc3339_utc(unix: u64) -> String {
    let days = unix / 86_400;
    let secs = unix % 86_400;
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// How this weftd reaches etcd, in `/v1/status`, so that `weftctl` on the node needs no
/// flags: endpoints, prefix, the TLS files' paths and the user name — never a password
/// nor a file's contents.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EtcdClientView {
    pub endpoints: Vec<String>,
    pub prefix: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cafile: Option<std::path::PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certfile: Option<std::path::PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyfile: Option<std::path::PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
}

impl EtcdClientView {
    pub fn from_settings(settings: &weft_config::Settings) -> Self {
        EtcdClientView {
            endpoints: settings.etcd_endpoints.clone(),
            prefix: settings.etcd_prefix.clone(),
            cafile: settings.etcd_cafile.clone(),
            certfile: settings.etcd_certfile.clone(),
            keyfile: settings.etcd_keyfile.clone(),
            username: settings.etcd_username.clone(),
        }
    }
}

/// Shared control-plane status.
#[derive(Debug)]
pub struct ControlStatus {
    /// A watch channel rather than a mutex: the node stops and restarts its data plane
    /// when another node takes its subnet and when it gets it back.
    lease: watch::Sender<Option<LeaseState>>,
    peers: Mutex<Vec<PeerView>>,
    etcd: Mutex<Option<Arc<Reachability>>>,
    etcd_grace: Duration,
    degraded: Mutex<Option<Degraded>>,
    etcd_client: Mutex<Option<EtcdClientView>>,
    pub counters: Counters,
}

impl Default for ControlStatus {
    fn default() -> Self {
        ControlStatus {
            lease: watch::channel(None).0,
            peers: Mutex::default(),
            etcd: Mutex::default(),
            etcd_grace: ETCD_GRACE,
            degraded: Mutex::default(),
            etcd_client: Mutex::default(),
            counters: Counters::default(),
        }
    }
}

/// What `/readyz` decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    NotReady(String),
}

/// etcd may be away this long before a node with a lease stops reporting ready (its
/// data plane keeps working meanwhile; readiness tells the operator something is off).
pub const ETCD_GRACE: Duration = Duration::from_secs(10);

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain data: a panic elsewhere cannot leave it half-updated in a harmful way.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl ControlStatus {
    pub fn new() -> Arc<Self> {
        Arc::new(ControlStatus::default())
    }

    /// With a grace period other than [`ETCD_GRACE`] (tests scale time with it).
    pub fn with_etcd_grace(grace: Duration) -> Arc<Self> {
        Arc::new(ControlStatus {
            etcd_grace: grace,
            ..ControlStatus::default()
        })
    }

    pub fn set_etcd_client(&self, view: EtcdClientView) {
        *lock(&self.etcd_client) = Some(view);
    }

    pub fn etcd_client(&self) -> Option<EtcdClientView> {
        lock(&self.etcd_client).clone()
    }

    pub fn set_lease(&self, state: LeaseState) {
        // Works without receivers; wakes them only on a change.
        self.lease.send_if_modified(|current| {
            if current.as_ref() == Some(&state) {
                return false;
            }
            *current = Some(state);
            true
        });
    }

    pub fn lease(&self) -> LeaseState {
        self.lease.borrow().clone().unwrap_or(LeaseState::Starting)
    }

    /// Follows the lease state (`None` until the first one is set).
    pub fn subscribe_lease(&self) -> watch::Receiver<Option<LeaseState>> {
        self.lease.subscribe()
    }

    pub fn set_peers<'a>(&self, peers: impl Iterator<Item = &'a PeerLease>) {
        *lock(&self.peers) = peers.map(PeerView::from).collect();
    }

    pub fn peers(&self) -> Vec<PeerView> {
        lock(&self.peers).clone()
    }

    /// Running from the last known state (`Some`), or not (any more).
    pub fn set_degraded(&self, degraded: Option<Degraded>) {
        *lock(&self.degraded) = degraded;
    }

    pub fn degraded(&self) -> Option<Degraded> {
        lock(&self.degraded).clone()
    }

    pub fn set_etcd(&self, reachability: Arc<Reachability>) {
        *lock(&self.etcd) = Some(reachability);
    }

    pub fn etcd(&self) -> EtcdHealth {
        lock(&self.etcd)
            .as_ref()
            .map(|r| r.health())
            .unwrap_or(EtcdHealth::Unknown)
    }

    /// Ready when a lease is held and etcd answers (or has been away less than the
    /// grace period, [`ETCD_GRACE`] by default). Not ready while the data plane runs
    /// from the last known state (the node forwards, but cannot follow the cluster).
    pub fn readiness(&self) -> Readiness {
        if let Some(degraded) = self.degraded() {
            return Readiness::NotReady(format!(
                "degraded: etcd unreachable since start; the data plane runs from {} \
                 (subnet {}, peers as of {})",
                degraded.state_file, degraded.subnet, degraded.peers_as_of
            ));
        }
        match self.lease() {
            LeaseState::Held { .. } => {}
            LeaseState::Starting => return Readiness::NotReady("starting".into()),
            LeaseState::WaitingForEtcd { error } => {
                return Readiness::NotReady(format!("waiting for etcd: {error}"))
            }
            LeaseState::WaitingForConfig { key } => {
                return Readiness::NotReady(format!("waiting for the network config at {key}"))
            }
            LeaseState::Lost { subnet, reason } => {
                return Readiness::NotReady(format!("lease of {subnet} lost: {reason}"))
            }
            LeaseState::Conflict { subnet, holder } => {
                return Readiness::NotReady(format!("subnet {subnet} is now leased by {holder}"))
            }
        }
        match self.etcd() {
            EtcdHealth::Unreachable { for_, error } if for_ > self.etcd_grace => {
                Readiness::NotReady(format!("etcd unreachable for {}s: {error}", for_.as_secs()))
            }
            _ => Readiness::Ready,
        }
    }

    /// Seconds since the Unix epoch of `at`.
    pub fn unix_secs(at: SystemTime) -> u64 {
        at.duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_of_known_instants() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_utc(1_796_359_207), "2026-12-04T04:40:07Z");
    }

    #[test]
    fn degraded_is_not_ready_and_names_the_file_and_time() {
        let status = ControlStatus::new();
        status.set_lease(LeaseState::Held {
            subnet: "10.244.1.0/24".parse().unwrap(),
            public_ip: Ipv4Addr::new(192, 0, 2, 1),
            reservation: false,
            lease_id: 7,
            expires_unix: None,
        });
        status.set_degraded(Some(Degraded::from_saved_state(
            std::path::Path::new("/var/lib/weft/last-known.json"),
            "10.244.1.0/24".parse().unwrap(),
            None,
            0,
        )));
        let Readiness::NotReady(reason) = status.readiness() else {
            panic!("degraded must not be ready");
        };
        assert!(reason.contains("last-known.json"), "{reason}");
        assert!(reason.contains("1970-01-01T00:00:00Z"), "{reason}");
        status.set_degraded(None);
        assert_eq!(status.readiness(), Readiness::Ready);
    }

    #[test]
    fn ready_only_with_a_held_lease() {
        let status = ControlStatus::new();
        assert!(matches!(status.readiness(), Readiness::NotReady(_)));
        status.set_lease(LeaseState::WaitingForConfig {
            key: "/coreos.com/network/config".into(),
        });
        let Readiness::NotReady(reason) = status.readiness() else {
            panic!("must not be ready without a lease");
        };
        assert!(reason.contains("/coreos.com/network/config"), "{reason}");
        status.set_lease(LeaseState::Held {
            subnet: "10.244.1.0/24".parse().unwrap(),
            public_ip: Ipv4Addr::new(192, 0, 2, 1),
            reservation: false,
            lease_id: 7,
            expires_unix: None,
        });
        assert_eq!(status.readiness(), Readiness::Ready);
    }
}
