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

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use ipnet::{IpNet, Ipv4Net};
use rand::Rng;
use serde::{Deserialize, Serialize};
use weft_config::NetConf;
use weft_proto::lease::MacAddr;

use crate::lease::{PeerBackend, PeerLease};

mod writer;
pub use writer::{apply_peer_event, LastKnownWriter};

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
    pub subnet: IpNet,
    pub public_ip: IpAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_ipv6: Option<Ipv6Addr>,
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

impl From<&PeerLease> for SavedPeer {
    fn from(peer: &PeerLease) -> Self {
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
            public_ipv6: peer.public_ipv6,
            backend,
        }
    }
}

impl From<&SavedPeer> for PeerLease {
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
        PeerLease {
            subnet: saved.subnet,
            public_ip: saved.public_ip,
            public_ipv6: saved.public_ipv6,
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
    pub peers: Vec<PeerLease>,
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
            .filter(|p| p.subnet != IpNet::V4(self.subnet))
            .map(PeerLease::from)
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

#[cfg(test)]
mod tests;
