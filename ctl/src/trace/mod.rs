//! `weftctl trace`: walks the path a packet from a pod takes to a destination IP, hop by
//! hop, with the kernel's (and etcd's) evidence for each, and names the first hop where
//! the path breaks.
//!
//! ```text
//! pod (eth0, iflink) → host-veth → bridge (cni0) → route (RTM_GETROUTE in the node)
//!   → overlay (weft.N TUN | kernel flannel.N) → lease (etcd: PublicIP, VtepMAC)
//!   → [kernel vxlan: neighbour → fdb] → underlay (route to the PublicIP, MTU)
//!   → remote-node → remote-bridge → destination-pod        (remote side: when a local
//!                                                            namespace holds the PublicIP)
//! ```
//!
//! A destination in this node's own subnet goes `route → destination-pod` on this node; a
//! destination outside the cluster network goes `route → masquerade → egress`.
//!
//! It runs in the source node's network namespace and reads other namespaces (the pod's,
//! and in a lab the remote node's) from short-lived threads that enter them.

mod hops;
mod remote;
mod sources;
#[cfg(test)]
mod tests;
mod walk;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Serialize;
use weft_daemon::subnet::EtcdOptions;
use weft_netlink::inspect::{self, NsView, Query};

use sources::netns_of_container;
use walk::{find_pod, Walk};

/// What to trace, and where to look things up.
#[derive(Debug, Clone)]
pub struct TraceOptions {
    /// A pod IP, a namespace (name under `/run/netns` or a path) or a container ID.
    pub from: String,
    pub to: Ipv4Addr,
    pub etcd: EtcdOptions,
    /// CNI cache directories (`<dir>/results/*`) searched for a container ID.
    pub cni_cache_dirs: Vec<PathBuf>,
    /// This node's subnet.env (cluster network, whether masquerading is on).
    pub subnet_file: PathBuf,
    /// Whether masquerading is expected; `None`: as subnet.env says.
    pub ip_masq: Option<bool>,
    /// The local weftd's `/v1/status`, when it answered: a weft overlay's peer must be
    /// in its peer list.
    pub weftd_status: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HopStatus {
    Ok,
    Broken,
    /// Not inspectable from here (e.g. the remote node is another machine).
    Skipped,
}

/// One hop of the path and the evidence for it.
#[derive(Debug, Clone, Serialize)]
pub struct Hop {
    pub hop: &'static str,
    pub status: HopStatus,
    pub detail: String,
}

/// Where the path broke.
#[derive(Debug, Clone, Serialize)]
pub struct Break {
    pub hop: &'static str,
    pub reason: String,
}

/// The result of a trace (`--json` prints it as is).
#[derive(Debug, Clone, Serialize)]
pub struct TraceReport {
    pub from: String,
    pub source_netns: Option<String>,
    pub source_ip: Option<Ipv4Addr>,
    pub to: Ipv4Addr,
    /// True when no hop broke.
    pub complete: bool,
    pub broken: Option<Break>,
    pub hops: Vec<Hop>,
}

/// Runs the trace. `Err` only when the trace cannot start (the source cannot be found,
/// this namespace cannot be read); a broken path is a report with `complete: false`.
pub async fn trace(opts: &TraceOptions) -> anyhow::Result<TraceReport> {
    let own_ns = inspect::own_namespace_name();
    let mut walk = Walk::new(
        TraceReport {
            from: opts.from.clone(),
            source_netns: None,
            source_ip: None,
            to: opts.to,
            complete: false,
            broken: None,
            hops: Vec::new(),
        },
        own_ns,
    );
    let node_path = PathBuf::from("/proc/self/ns/net");
    let node = inspect::inspect(
        &node_path,
        Query {
            route_to: vec![opts.to],
            neighbours: true,
        },
    )
    .context("reading this node's network namespace")?;

    // The source pod's namespace.
    let (pod_label, pod_path) = resolve_source(&mut walk, opts, &node)?;
    walk.report.source_netns = Some(pod_label.clone());
    let _ = hops::walk_path(&mut walk, opts, &node, &pod_label, &pod_path).await;
    walk.report.complete = walk.report.broken.is_none();
    Ok(walk.report)
}

fn resolve_source(
    walk: &mut Walk,
    opts: &TraceOptions,
    node: &NsView,
) -> anyhow::Result<(String, PathBuf)> {
    let from = opts.from.as_str();
    if let Ok(ip) = from.parse::<Ipv4Addr>() {
        let found = find_pod(walk, ip, node).with_context(|| {
            format!(
                "--from {ip}: no network namespace under /run/netns holds {ip} on a veth \
                 whose peer is on a bridge in this namespace (run weftctl in the pod's node; \
                 for unnamed namespaces pass a container ID or /proc/PID/ns/net)"
            )
        })?;
        return Ok((found.name, found.path));
    }
    if from.starts_with('/') {
        let path = PathBuf::from(from);
        anyhow::ensure!(path.exists(), "--from {from}: no such namespace file");
        return Ok((from.to_owned(), path));
    }
    let named = Path::new("/run/netns").join(from);
    if !from.contains('/') && named.exists() {
        return Ok((from.to_owned(), named));
    }
    if let Some(path) = netns_of_container(from, &opts.cni_cache_dirs)? {
        return Ok((format!("{from} ({})", path.display()), path));
    }
    anyhow::bail!(
        "--from {from}: neither a pod IP, a namespace in /run/netns, nor a container ID in \
         the CNI cache ({})",
        opts.cni_cache_dirs
            .iter()
            .map(|d| d.join("results").display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}
