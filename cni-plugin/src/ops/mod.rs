//! The CNI operations. Each reads what it needs, changes only what differs, and on
//! failure of ADD undoes what it did (veth, address) so nothing is left behind.
//!
//! `add.rs` attaches a pod, `check.rs` compares an attachment with what ADD reported,
//! `gc.rs` removes attachments no longer in use; DEL and STATUS are here.

mod add;
mod check;
mod gc;

use std::fs::File;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;
use sha2::{Digest, Sha256};
use weft_config::cni::CniNetConf;
use weft_config::subnet_env::SubnetEnvError;
use weft_config::SubnetEnv;
use weft_netlink::Netlink;

pub use add::add;
pub use check::check;
pub use gc::gc;

use crate::delegate;
use crate::error::{code, CniError};
use crate::ipam::Store;

/// Prefix of host-side veth names.
pub const HOST_VETH_PREFIX: &str = "wf";

/// The CNI_* environment of one invocation, validated for the command.
#[derive(Debug, Clone)]
pub struct CniEnv {
    pub container_id: String,
    /// None when empty/absent (allowed for DEL).
    pub netns: Option<PathBuf>,
    pub ifname: String,
    pub cni_path: String,
    /// ADD: the Kubernetes pod named in `CNI_ARGS`, kept in the IPAM record.
    pub pod: Option<crate::k8s::PodRef>,
}

/// Everything one operation works with.
#[derive(Debug)]
pub struct Invocation<'a> {
    pub env: CniEnv,
    pub conf: CniNetConf,
    /// The config bytes as received, passed unchanged to a delegated IPAM plugin.
    pub stdin: &'a [u8],
}

/// The node's pod network as subnet.env (or the config's overrides) describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeNet {
    /// Gateway address with the subnet's prefix, e.g. 10.244.1.1/24 (cni0's address).
    pub gateway: Ipv4Net,
    pub network: Ipv4Net,
    pub mtu: u32,
}

/// The stable host-side veth name of an attachment: `wf` + 12 hex digits of
/// SHA-256(containerID, ifname) — 14 characters, within IFNAMSIZ.
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    let mut h = Sha256::new();
    h.update(container_id.as_bytes());
    h.update([0u8]);
    h.update(ifname.as_bytes());
    let digest = h.finalize();
    format!("{HOST_VETH_PREFIX}{}", &hex::encode(digest)[..12])
}

/// Read the node network: subnet.env, with the config's overrides on top.
pub fn node_net(conf: &CniNetConf) -> Result<NodeNet, CniError> {
    let env = match SubnetEnv::read(&conf.subnet_file) {
        Ok(env) => Some(env),
        Err(SubnetEnvError::Read { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound && conf.subnet.is_some() =>
        {
            None
        }
        Err(SubnetEnvError::Read { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            return Err(CniError::new(
                code::TRY_AGAIN_LATER,
                format!(
                    "{} does not exist yet: this node has no pod subnet until weftd (or flanneld) has leased one and written it; try again later",
                    conf.subnet_file.display()
                ),
            ))
        }
        Err(e) => {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                format!("subnetFile: {e}"),
            ))
        }
    };
    // Both prefixes come from parsed networks (≤ 32), so Ipv4Net::new cannot fail.
    let gateway = match (conf.subnet, &env) {
        (Some(subnet), _) => {
            let net = subnet.trunc();
            let gw = Ipv4Addr::from(u32::from(net.network()).saturating_add(1));
            Ipv4Net::new(gw, net.prefix_len()).unwrap_or(net)
        }
        (None, Some(env)) => {
            Ipv4Net::new(env.gateway(), env.subnet.prefix_len()).unwrap_or(env.subnet)
        }
        (None, None) => {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                "no pod subnet: neither subnet.env nor the config's \"subnet\" gives one",
            ))
        }
    };
    let network = conf
        .network
        .or(env.as_ref().map(|e| e.network))
        .unwrap_or_else(|| gateway.trunc());
    let mtu = conf.mtu.or(env.as_ref().map(|e| e.mtu)).unwrap_or(1500);
    Ok(NodeNet {
        gateway,
        network,
        mtu,
    })
}

// ---------------------------------------------------------------------------- DEL

/// Release the attachment's address (built-in store or delegated plugin).
pub(crate) fn release(inv: &Invocation<'_>) -> Result<(), CniError> {
    match inv.conf.ipam_type() {
        None => {
            if let Some(store) = Store::open_existing(&inv.conf.data_dir, &inv.conf.name)? {
                store.release(&inv.env.container_id, &inv.env.ifname)?;
            }
            Ok(())
        }
        Some(plugin) => delegate::exec(&inv.env.cni_path, plugin, "DEL", inv.stdin).map(drop),
    }
}

pub async fn del(inv: &Invocation<'_>) -> Result<(), CniError> {
    let host = Netlink::connect()?;
    // Deleting the host end removes the pod end too, so DEL needs neither the pod
    // namespace nor subnet.env: it works after the namespace is gone.
    let host_name = host_veth_name(&inv.env.container_id, &inv.env.ifname);
    let deleted = host.delete_link_named(&host_name).await?;
    if !deleted {
        // No host end (renamed, or a crash between creating and naming it): a veth
        // still named CNI_IFNAME in a pod namespace that still exists is ours to remove.
        if let Some(ns) = inv.env.netns.as_ref().and_then(|p| File::open(p).ok()) {
            if let Ok(pod) = Netlink::connect_in(&ns) {
                if let Ok(Some(link)) = pod.link(&inv.env.ifname).await {
                    if link.kind.as_deref() == Some("veth") {
                        let _ = pod.delete_link(link.index).await;
                    }
                }
            }
        }
    }
    release(inv)
}

// ------------------------------------------------------------------------- STATUS

pub fn status(inv: &Invocation<'_>) -> Result<(), CniError> {
    node_net(&inv.conf).map_err(|e| {
        CniError::new(
            code::NOT_AVAILABLE,
            format!("weft is not ready on this node: {}", e.msg),
        )
    })?;
    if let Some(plugin) = inv.conf.ipam_type() {
        // An IPAM plugin from before CNI 1.1 has no STATUS; being runnable is all it
        // can tell.
        if delegate::supports(&inv.env.cni_path, plugin, "1.1.0")? {
            delegate::exec(&inv.env.cni_path, plugin, "STATUS", inv.stdin)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_veth_names_are_stable_short_and_distinct() {
        let a = host_veth_name("abc", "eth0");
        assert_eq!(a, host_veth_name("abc", "eth0"));
        assert!(a.len() <= 15 && a.starts_with("wf"));
        assert_ne!(a, host_veth_name("abc", "eth1"));
        assert_ne!(a, host_veth_name("abd", "eth0"));
    }
}
