//! Built-in IPAM in host-local's on-disk layout, so operators' tools and habits carry
//! over: `<dataDir>/<network>/<ip>` holds `<containerID>\r\n<ifname>` (and, for a
//! Kubernetes pod, a third line `K8S_POD_NAMESPACE=..;K8S_POD_NAME=..;K8S_POD_UID=..`
//! from `CNI_ARGS`; host-local's two lines come first, unchanged),
//! `last_reserved_ip.0` the last address handed out, and `lock` is flock()ed around
//! every change so concurrent plugin runs never hand out one address twice.
//!
//! Allocation rotates like host-local: the search starts after the last reserved
//! address and wraps, so a just-released address is not reused at once.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::net::Ipv4Addr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use nix::fcntl::{Flock, FlockArg};

use crate::error::{code, CniError};
use crate::k8s::PodRef;

const LAST_RESERVED: &str = "last_reserved_ip.0";
const LOCK: &str = "lock";
/// host-local's separator between container ID and ifname.
const LINE_BREAK: &str = "\r\n";

/// One allocation as stored on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    pub ip: Ipv4Addr,
    pub container_id: String,
    pub ifname: String,
    /// The Kubernetes pod, when the runtime named one in `CNI_ARGS`.
    pub pod: Option<PodRef>,
}

/// The addresses pods may get: the subnet's hosts minus the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
}

impl Pool {
    fn first(&self) -> u32 {
        u32::from(self.subnet.network()).saturating_add(1)
    }
    fn last(&self) -> u32 {
        u32::from(self.subnet.broadcast()).saturating_sub(1)
    }
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let n = u32::from(ip);
        (self.first()..=self.last()).contains(&n) && ip != self.gateway
    }
    /// Candidates in host-local's order: after `last`, wrapping around.
    fn candidates(&self, last: Option<Ipv4Addr>) -> impl Iterator<Item = Ipv4Addr> + '_ {
        let (first, last_host) = (self.first(), self.last());
        // A /31 or /32 has no host addresses besides network and broadcast.
        let size = if last_host >= first {
            last_host - first + 1
        } else {
            0
        };
        let start = match last {
            Some(ip) if (first..=last_host).contains(&u32::from(ip)) => u32::from(ip) - first + 1,
            _ => 0,
        };
        (0..size)
            .map(move |i| Ipv4Addr::from(first + (start + i) % size))
            .filter(move |ip| *ip != self.gateway)
    }
}

/// The store of one network, locked for as long as it lives.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    _lock: Flock<File>,
}

impl Store {
    /// Open (creating if needed) `<data_dir>/<network>` and take its lock.
    pub fn open(data_dir: &Path, network: &str) -> Result<Store, CniError> {
        let dir = data_dir.join(network);
        fs::create_dir_all(&dir)
            .map_err(|e| CniError::io(format!("creating IPAM dir {}", dir.display()), e))?;
        Self::lock(dir)
    }

    /// Like `open`, but `None` when the network has no store (nothing was allocated).
    pub fn open_existing(data_dir: &Path, network: &str) -> Result<Option<Store>, CniError> {
        let dir = data_dir.join(network);
        if !dir.is_dir() {
            return Ok(None);
        }
        Self::lock(dir).map(Some)
    }

    fn lock(dir: PathBuf) -> Result<Store, CniError> {
        let lock_path = dir.join(LOCK);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| CniError::io(format!("opening {}", lock_path.display()), e))?;
        let lock = Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| {
            CniError::io(
                format!("locking {}", lock_path.display()),
                std::io::Error::from(errno),
            )
        })?;
        Ok(Store { dir, _lock: lock })
    }

    /// Every allocation in the store.
    pub fn allocations(&self) -> Result<Vec<Allocation>, CniError> {
        let entries = fs::read_dir(&self.dir)
            .map_err(|e| CniError::io(format!("listing {}", self.dir.display()), e))?;
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(ip) = name.to_str().and_then(|n| n.parse::<Ipv4Addr>().ok()) else {
                continue;
            };
            let text = match fs::read_to_string(entry.path()) {
                Ok(t) => t,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(CniError::io(
                        format!("reading {}", entry.path().display()),
                        e,
                    ))
                }
            };
            let mut lines = text.trim().lines();
            let container_id = lines.next().unwrap_or("").trim().to_string();
            let ifname = lines.next().unwrap_or("").trim().to_string();
            let pod = lines.next().and_then(PodRef::from_record_line);
            out.push(Allocation {
                ip,
                container_id,
                ifname,
                pod,
            });
        }
        Ok(out)
    }

    /// The address already held by this attachment, if any.
    pub fn find(&self, container_id: &str, ifname: &str) -> Result<Option<Ipv4Addr>, CniError> {
        Ok(self
            .allocations()?
            .into_iter()
            .find(|a| a.container_id == container_id && a.ifname == ifname)
            .map(|a| a.ip))
    }

    /// Reserve an address for (container_id, ifname) of `pod`. An attachment that
    /// already holds one (e.g. an ADD retried after a crash) gets the same address back.
    pub fn allocate(
        &self,
        pool: &Pool,
        container_id: &str,
        ifname: &str,
        pod: Option<&PodRef>,
    ) -> Result<Ipv4Addr, CniError> {
        if let Some(ip) = self.find(container_id, ifname)? {
            if pool.contains(ip) {
                return Ok(ip);
            }
        }
        let last = fs::read_to_string(self.dir.join(LAST_RESERVED))
            .ok()
            .and_then(|t| t.trim().parse::<Ipv4Addr>().ok());
        for ip in pool.candidates(last) {
            let path = self.dir.join(ip.to_string());
            let file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(&path);
            let mut file = match file {
                Ok(f) => f,
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(CniError::io(format!("creating {}", path.display()), e)),
            };
            let mut content = format!("{container_id}{LINE_BREAK}{ifname}");
            if let Some(pod) = pod {
                content.push_str(LINE_BREAK);
                content.push_str(&pod.record_line());
            }
            if let Err(e) = file.write_all(content.as_bytes()) {
                let _ = fs::remove_file(&path);
                return Err(CniError::io(format!("writing {}", path.display()), e));
            }
            let last_path = self.dir.join(LAST_RESERVED);
            fs::write(&last_path, ip.to_string())
                .map_err(|e| CniError::io(format!("writing {}", last_path.display()), e))?;
            return Ok(ip);
        }
        Err(CniError::new(
            code::POOL_EXHAUSTED,
            format!(
                "no free address left in {} (every one is allocated in {})",
                pool.subnet,
                self.dir.display()
            ),
        ))
    }

    /// Release whatever (container_id, ifname) holds; returns the released addresses.
    pub fn release(&self, container_id: &str, ifname: &str) -> Result<Vec<Ipv4Addr>, CniError> {
        // host-local's old layout stored the container ID alone.
        self.release_where(|a| {
            a.container_id == container_id && (a.ifname == ifname || a.ifname.is_empty())
        })
        .map(|v| v.into_iter().map(|a| a.ip).collect())
    }

    /// Release every allocation whose attachment is not in `valid`.
    pub fn retain_only(
        &self,
        valid: &HashSet<(String, String)>,
    ) -> Result<Vec<Allocation>, CniError> {
        self.release_where(|a| !valid.contains(&(a.container_id.clone(), a.ifname.clone())))
    }

    fn release_where(
        &self,
        pred: impl Fn(&Allocation) -> bool,
    ) -> Result<Vec<Allocation>, CniError> {
        let mut released = Vec::new();
        for a in self.allocations()? {
            if !pred(&a) {
                continue;
            }
            let path = self.dir.join(a.ip.to_string());
            match fs::remove_file(&path) {
                Ok(()) => released.push(a),
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(CniError::io(format!("removing {}", path.display()), e)),
            }
        }
        Ok(released)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> Pool {
        Pool {
            subnet: "10.244.7.0/29".parse().unwrap(),
            gateway: "10.244.7.1".parse().unwrap(),
        }
    }

    #[test]
    fn never_hands_out_network_gateway_or_broadcast_and_rotates() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "n").unwrap();
        let mut got = Vec::new();
        for i in 0..5 {
            got.push(
                store
                    .allocate(&pool(), &format!("c{i}"), "eth0", None)
                    .unwrap(),
            );
        }
        let want: Vec<Ipv4Addr> = (2..=6).map(|h| Ipv4Addr::new(10, 244, 7, h)).collect();
        assert_eq!(got, want);
        let err = store.allocate(&pool(), "c9", "eth0", None).unwrap_err();
        assert_eq!(err.code, code::POOL_EXHAUSTED);

        // Release .3; the next allocation wraps around to it (the only free one).
        assert_eq!(
            store.release("c1", "eth0").unwrap(),
            vec![Ipv4Addr::new(10, 244, 7, 3)]
        );
        assert_eq!(
            store.allocate(&pool(), "c9", "eth0", None).unwrap(),
            Ipv4Addr::new(10, 244, 7, 3)
        );
        // Same attachment again: same address.
        assert_eq!(
            store.allocate(&pool(), "c9", "eth0", None).unwrap(),
            Ipv4Addr::new(10, 244, 7, 3)
        );
    }

    #[test]
    fn tiny_subnets_have_no_addresses_to_hand_out() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "n").unwrap();
        for (subnet, gateway) in [
            ("10.244.7.0/32", "10.244.7.0"),
            ("10.244.7.0/31", "10.244.7.1"),
        ] {
            let pool = Pool {
                subnet: subnet.parse().unwrap(),
                gateway: gateway.parse().unwrap(),
            };
            let err = store.allocate(&pool, "c", "eth0", None).unwrap_err();
            assert_eq!(err.code, code::POOL_EXHAUSTED, "{subnet}");
        }
    }

    #[test]
    fn rotation_skips_a_just_released_address() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "n").unwrap();
        let a = store.allocate(&pool(), "a", "eth0", None).unwrap();
        store.release("a", "eth0").unwrap();
        let b = store.allocate(&pool(), "b", "eth0", None).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn files_use_host_local_layout_and_gc_keeps_valid() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "n").unwrap();
        let ip = store.allocate(&pool(), "keep", "eth0", None).unwrap();
        store.allocate(&pool(), "drop", "eth0", None).unwrap();
        let text = fs::read_to_string(dir.path().join("n").join(ip.to_string())).unwrap();
        assert_eq!(text, "keep\r\neth0");
        let valid: HashSet<_> = [("keep".to_string(), "eth0".to_string())].into();
        let released = store.retain_only(&valid).unwrap();
        assert_eq!(released.len(), 1);
        assert_eq!(released[0].container_id, "drop");
        assert_eq!(store.allocations().unwrap().len(), 1);
    }

    #[test]
    fn a_pods_record_names_it_after_host_locals_two_lines() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "n").unwrap();
        let pod = PodRef {
            namespace: "default".into(),
            name: "web".into(),
            uid: Some("5f6d940b-1bd0-4cd9-ae64-0f5b27b21473".into()),
        };
        let ip = store
            .allocate(&pool(), "sandbox1", "eth0", Some(&pod))
            .unwrap();
        let text = fs::read_to_string(dir.path().join("n").join(ip.to_string())).unwrap();
        assert_eq!(
            text,
            "sandbox1\r\neth0\r\nK8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_UID=5f6d940b-1bd0-4cd9-ae64-0f5b27b21473"
        );
        let all = store.allocations().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].pod.as_ref(), Some(&pod));
        assert_eq!(store.find("sandbox1", "eth0").unwrap(), Some(ip));
        assert_eq!(store.release("sandbox1", "eth0").unwrap(), vec![ip]);
    }
}
