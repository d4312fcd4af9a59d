//! This node's identity in `--state-dir/node.json`: the VTEP MAC (random once, then
//! stable) and the last lease, so a restart keeps both (flannel #1155: a new MAC per
//! restart left peers with stale neighbour entries).

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use rand::Rng;
use serde::{Deserialize, Serialize};
use weft_proto::lease::MacAddr;

/// File name inside `--state-dir`.
pub const STATE_FILE: &str = "node.json";

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
        let path = dir.join(STATE_FILE);
        let write_err = |source| StateError::Write {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(write_err)?;
        let tmp = dir.join(format!(".{STATE_FILE}.tmp.{}", std::process::id()));
        let result = (|| {
            let mut file = std::fs::File::create(&tmp)?;
            // Serializing addresses and a MAC cannot fail.
            let json = serde_json::to_vec_pretty(self).unwrap_or_default();
            file.write_all(&json)?;
            file.write_all(b"\n")?;
            file.sync_all()?;
            std::fs::rename(&tmp, &path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map_err(write_err)
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
}
