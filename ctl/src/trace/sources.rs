//! What the walk reads besides the kernel: subnet.env, the leases in etcd, the CNI
//! cache. The daemon's etcd types stay here: the hops see a [`Lease`].

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use ipnet::Ipv4Net;
use weft_daemon::subnet::{EtcdOptions, Registry};

/// A subnet lease as the walk needs it.
#[derive(Debug, Clone)]
pub(super) struct Lease {
    pub(super) subnet: Ipv4Net,
    pub(super) public_ip: Ipv4Addr,
    /// flannel's `BackendType` (`vxlan`, `ipip`, ...).
    pub(super) backend_type: String,
    /// VNI and VtepMAC of a lease with vxlan backend data.
    pub(super) vxlan: Option<VxlanData>,
}

/// A vxlan lease's backend data.
#[derive(Debug, Clone)]
pub(super) struct VxlanData {
    pub(super) vni: u32,
    /// As the lease's MAC type prints it.
    pub(super) vtep_mac: String,
}

/// `(cluster network, masquerade expected)` from subnet.env, when readable.
pub(super) fn read_subnet_env(path: &Path) -> (Option<Ipv4Net>, Option<bool>) {
    let Ok(text) = std::fs::read_to_string(path) else {
        return (None, None);
    };
    let mut network = None;
    let mut masq = None;
    for line in text.lines() {
        match line.split_once('=') {
            Some(("FLANNEL_NETWORK", v)) => network = v.trim().parse().ok(),
            Some(("FLANNEL_IPMASQ", v)) => masq = Some(v.trim() == "true"),
            _ => {}
        }
    }
    (network, masq)
}

/// Leases and the cluster network from etcd.
pub(super) async fn read_etcd(opts: &EtcdOptions) -> anyhow::Result<(Vec<Lease>, Option<Ipv4Net>)> {
    let registry =
        tokio::time::timeout(std::time::Duration::from_secs(10), Registry::connect(opts))
            .await
            .context("connecting to etcd timed out")??;
    let (stored, _) = registry.list_subnets().await?;
    let network = match registry.get_config().await? {
        Some(json) => weft_config::NetConf::parse(&json).ok().map(|c| c.network),
        None => None,
    };
    let leases = stored
        .into_iter()
        .map(|lease| Lease {
            subnet: lease.subnet,
            public_ip: lease.attrs.public_ip,
            vxlan: lease.attrs.vxlan_data().ok().map(|data| VxlanData {
                vni: data.vni,
                vtep_mac: data.vtep_mac.to_string(),
            }),
            backend_type: lease.attrs.backend_type,
        })
        .collect();
    Ok((leases, network))
}

/// The namespace a container ID names, from the CNI cache (`results/<net>-<id>-<if>`,
/// whose result lists the container side's `sandbox`).
pub(super) fn netns_of_container(id: &str, dirs: &[PathBuf]) -> anyhow::Result<Option<PathBuf>> {
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir.join("results")) else {
            continue;
        };
        for entry in entries.filter_map(|e| e.ok()) {
            let Ok(text) = std::fs::read_to_string(entry.path()) else {
                continue;
            };
            let Ok(cached) = serde_json::from_str::<serde_json::Value>(&text) else {
                continue;
            };
            let Some(container) = cached["containerId"].as_str() else {
                continue;
            };
            // ctr prefixes the ID with its namespace (`default-<id>`).
            if container != id && !container.ends_with(&format!("-{id}")) {
                continue;
            }
            let if_name = cached["ifName"].as_str().unwrap_or("eth0");
            let sandbox = cached["result"]["interfaces"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|i| i["name"] == if_name && i["sandbox"].is_string())
                .and_then(|i| i["sandbox"].as_str());
            let Some(sandbox) = sandbox else {
                anyhow::bail!(
                    "container {id}: the CNI cache entry {} names no sandbox",
                    entry.path().display()
                );
            };
            let path = PathBuf::from(sandbox);
            anyhow::ensure!(
                path.exists(),
                "container {id}: its network namespace {sandbox} (from {}) is gone",
                entry.path().display()
            );
            return Ok(Some(path));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnet_env_gives_network_and_masq() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("subnet.env");
        std::fs::write(
            &path,
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
        )
        .unwrap();
        let (network, masq) = read_subnet_env(&path);
        assert_eq!(network, Some("10.244.0.0/16".parse().unwrap()));
        assert_eq!(masq, Some(true));
        assert_eq!(read_subnet_env(&dir.path().join("none")), (None, None));
    }

    #[test]
    fn container_ids_are_found_in_the_cni_cache() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("results")).unwrap();
        let entry = serde_json::json!({
            "kind": "cniCacheV1", "containerId": "default-web1", "ifName": "eth0",
            "result": {"interfaces": [
                {"name": "cni0"},
                {"name": "eth0", "sandbox": "/proc/self/ns/net"}]}
        });
        std::fs::write(
            dir.path().join("results/weft-default-web1-eth0"),
            entry.to_string(),
        )
        .unwrap();
        let dirs = vec![dir.path().to_owned()];
        assert_eq!(
            netns_of_container("web1", &dirs).unwrap(),
            Some(PathBuf::from("/proc/self/ns/net"))
        );
        assert_eq!(netns_of_container("web2", &dirs).unwrap(), None);
        let gone = serde_json::json!({
            "containerId": "default-old", "ifName": "eth0",
            "result": {"interfaces": [{"name": "eth0", "sandbox": "/proc/999999999/ns/net"}]}
        });
        std::fs::write(
            dir.path().join("results/weft-default-old-eth0"),
            gone.to_string(),
        )
        .unwrap();
        let e = netns_of_container("old", &dirs).unwrap_err().to_string();
        assert!(
            e.contains("/proc/999999999/ns/net") && e.contains("gone"),
            "{e}"
        );
    }
}
