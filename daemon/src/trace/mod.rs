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

pub mod kernel;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use ipnet::Ipv4Net;
use serde::Serialize;

use crate::subnet::registry::StoredLease;
use crate::subnet::{EtcdOptions, Registry};
use kernel::{LinkView, NsView, Query};

/// VXLAN encapsulation overhead on the underlay (outer IPv4 + UDP + VXLAN + Ethernet).
const VXLAN_OVERHEAD: u32 = 50;
/// IPIP encapsulation overhead (outer IPv4).
const IPIP_OVERHEAD: u32 = 20;

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

/// Unwinds the walk at the first broken hop (already recorded).
#[derive(Debug)]
struct Stop;

type Step<T> = Result<T, Stop>;

/// A namespace found by scanning `/run/netns`.
#[derive(Debug, Clone)]
struct Found {
    name: String,
    path: PathBuf,
    view: NsView,
}

struct Walk {
    report: TraceReport,
    own_ns: Option<String>,
    /// Every named namespace, read once when first needed.
    scanned: Option<Vec<Found>>,
}

impl Walk {
    fn ok(&mut self, hop: &'static str, detail: impl Into<String>) {
        self.report.hops.push(Hop {
            hop,
            status: HopStatus::Ok,
            detail: detail.into(),
        });
    }

    fn skipped(&mut self, hop: &'static str, detail: impl Into<String>) {
        self.report.hops.push(Hop {
            hop,
            status: HopStatus::Skipped,
            detail: detail.into(),
        });
    }

    fn broken<T>(&mut self, hop: &'static str, reason: impl Into<String>) -> Step<T> {
        let reason = reason.into();
        self.report.hops.push(Hop {
            hop,
            status: HopStatus::Broken,
            detail: reason.clone(),
        });
        self.report.broken = Some(Break { hop, reason });
        Err(Stop)
    }

    /// Every named namespace but our own, read once.
    fn namespaces(&mut self) -> &[Found] {
        if self.scanned.is_none() {
            let own = self.own_ns.clone();
            let found = kernel::named_namespaces()
                .into_iter()
                .filter(|(name, _)| Some(name) != own.as_ref())
                .filter_map(|(name, path)| {
                    // A namespace may vanish while we scan: skip it.
                    let view = kernel::inspect(&path, Query::default()).ok()?;
                    Some(Found { name, path, view })
                })
                .collect();
            self.scanned = Some(found);
        }
        self.scanned.as_deref().unwrap_or_default()
    }
}

/// The candidate sharing most of `own`'s name: in a lab, `<prefix>-n1` and
/// `<prefix>-n2`, so other clusters on the same machine lose ties.
fn closest<'a>(own: &str, candidates: Vec<&'a Found>) -> Option<&'a Found> {
    candidates.into_iter().max_by_key(|f| {
        f.name
            .chars()
            .zip(own.chars())
            .take_while(|(a, b)| a == b)
            .count()
    })
}

/// Whether `pod_link` (in its namespace) and `host_view`'s link at its peer index are
/// the two ends of one veth pair.
fn paired<'h>(pod_link: &LinkView, host_view: &'h NsView) -> Option<&'h LinkView> {
    let host = host_view.link(pod_link.peer_index?)?;
    (host.kind.as_deref() == Some("veth") && host.peer_index == Some(pod_link.index))
        .then_some(host)
}

/// A pod namespace holding `ip` on a veth whose peer is a port of a bridge in
/// `host_view`.
fn find_pod(walk: &mut Walk, ip: Ipv4Addr, host_view: &NsView) -> Option<Found> {
    let own = walk.own_ns.clone().unwrap_or_default();
    let candidates: Vec<&Found> = walk
        .namespaces()
        .iter()
        .filter(|f| {
            f.view
                .holder_of(ip)
                .and_then(|(link, _)| paired(link, host_view))
                .is_some_and(|host| host.master.is_some())
        })
        .collect();
    closest(&own, candidates).cloned()
}

fn describe_link(link: &LinkView) -> String {
    let state = match (link.up, link.lower_up) {
        (true, true) => "up",
        (true, false) => "up, no carrier",
        (false, _) => "DOWN",
    };
    format!("{} [{state}, mtu {}]", link.name, link.mtu)
}

/// `(cluster network, masquerade expected)` from subnet.env, when readable.
fn read_subnet_env(path: &Path) -> (Option<Ipv4Net>, Option<bool>) {
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
async fn read_etcd(opts: &EtcdOptions) -> anyhow::Result<(Vec<StoredLease>, Option<Ipv4Net>)> {
    let registry =
        tokio::time::timeout(std::time::Duration::from_secs(10), Registry::connect(opts))
            .await
            .context("connecting to etcd timed out")??;
    let (leases, _) = registry.list_subnets().await?;
    let network = match registry.get_config().await? {
        Some(json) => weft_config::NetConf::parse(&json).ok().map(|c| c.network),
        None => None,
    };
    Ok((leases, network))
}

/// The namespace a container ID names, from the CNI cache (`results/<net>-<id>-<if>`,
/// whose result lists the container side's `sandbox`).
fn netns_of_container(id: &str, dirs: &[PathBuf]) -> anyhow::Result<Option<PathBuf>> {
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

/// Runs the trace. `Err` only when the trace cannot start (the source cannot be found,
/// this namespace cannot be read); a broken path is a report with `complete: false`.
pub async fn trace(opts: &TraceOptions) -> anyhow::Result<TraceReport> {
    let own_ns = kernel::own_namespace_name();
    let mut walk = Walk {
        report: TraceReport {
            from: opts.from.clone(),
            source_netns: None,
            source_ip: None,
            to: opts.to,
            complete: false,
            broken: None,
            hops: Vec::new(),
        },
        own_ns,
        scanned: None,
    };
    let node_path = PathBuf::from("/proc/self/ns/net");
    let node = kernel::inspect(
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
    let _ = walk_path(&mut walk, opts, &node, &pod_label, &pod_path).await;
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

async fn walk_path(
    walk: &mut Walk,
    opts: &TraceOptions,
    node: &NsView,
    pod_label: &str,
    pod_path: &Path,
) -> Step<()> {
    let to = opts.to;

    // --- pod --------------------------------------------------------------------------
    let pod = match kernel::inspect(
        pod_path,
        Query {
            route_to: vec![to],
            neighbours: false,
        },
    ) {
        Ok(view) => view,
        Err(e) => return walk.broken("pod", format!("cannot read {pod_label}: {e:#}")),
    };
    let pod_route = match pod.route(to) {
        Ok(r) => r.clone(),
        Err(e) => {
            return walk.broken(
                "pod",
                format!("netns {pod_label}: no route to {to} in the pod: {e}"),
            )
        }
    };
    let Some(pod_if) = pod_route.oif.and_then(|i| pod.link(i)).cloned() else {
        return walk.broken(
            "pod",
            format!("netns {pod_label}: the route to {to} names no interface"),
        );
    };
    let Some(pod_addr) = pod_if.addresses.first().copied() else {
        return walk.broken(
            "pod",
            format!("netns {pod_label}: {} has no IPv4 address", pod_if.name),
        );
    };
    walk.report.source_ip = Some(pod_addr.addr());
    if !(pod_if.up && pod_if.lower_up) {
        return walk.broken(
            "pod",
            format!("netns {pod_label}: {} is down", describe_link(&pod_if)),
        );
    }
    let via = pod_route
        .gateway
        .map(|g| format!("via {g} "))
        .unwrap_or_default();
    walk.ok(
        "pod",
        format!(
            "netns {pod_label}: {} {pod_addr}, iflink {}; route to {to} {via}dev {}",
            describe_link(&pod_if),
            pod_if.peer_index.map_or("-".to_owned(), |i| i.to_string()),
            pod_if.name
        ),
    );

    // --- host-veth --------------------------------------------------------------------
    let Some(host_veth) = paired(&pod_if, node).cloned() else {
        return walk.broken(
            "host-veth",
            format!(
                "the pod's {} peers with ifindex {}, which is not its veth peer in this \
                 namespace (run weftctl trace in the namespace of the pod's node)",
                pod_if.name,
                pod_if.peer_index.map_or("-".into(), |i| i.to_string())
            ),
        );
    };
    if !host_veth.up {
        return walk.broken(
            "host-veth",
            format!("{} is down", describe_link(&host_veth)),
        );
    }
    let Some(bridge) = host_veth.master.and_then(|m| node.link(m)).cloned() else {
        return walk.broken(
            "host-veth",
            format!("{} is not attached to a bridge", describe_link(&host_veth)),
        );
    };
    walk.ok(
        "host-veth",
        format!(
            "{} ifindex {}, master {}",
            describe_link(&host_veth),
            host_veth.index,
            bridge.name
        ),
    );

    // --- bridge -----------------------------------------------------------------------
    if bridge.kind.as_deref() != Some("bridge") {
        return walk.broken(
            "bridge",
            format!(
                "{}'s master {} is not a bridge",
                host_veth.name, bridge.name
            ),
        );
    }
    if !bridge.up {
        return walk.broken(
            "bridge",
            format!(
                "bridge {} is down: pods behind it reach nothing ({})",
                bridge.name,
                describe_link(&bridge)
            ),
        );
    }
    let own_subnet = bridge
        .addresses
        .iter()
        .find(|a| a.contains(&pod_addr.addr()))
        .map(|a| a.trunc());
    if let Some(gateway) = pod_route.gateway {
        if !bridge.addresses.iter().any(|a| a.addr() == gateway) {
            return walk.broken(
                "bridge",
                format!(
                    "the pod's gateway {gateway} is not an address of {} ({})",
                    bridge.name,
                    list(&bridge.addresses)
                ),
            );
        }
    }
    walk.ok(
        "bridge",
        format!("{} {}", describe_link(&bridge), list(&bridge.addresses)),
    );

    // --- route ------------------------------------------------------------------------
    let route = match node.route(to) {
        Ok(r) => r.clone(),
        Err(e) => {
            return walk.broken(
                "route",
                format!("no route to {to} in this node: {e} (route get {to})"),
            )
        }
    };
    let Some(out) = route.oif.and_then(|i| node.link(i)).cloned() else {
        return walk.broken("route", format!("the route to {to} names no device"));
    };
    let route_text = format!(
        "route get {to}: {}{}dev {}{}",
        if route.kind == "unicast" {
            String::new()
        } else {
            format!("{} ", route.kind)
        },
        route
            .gateway
            .map(|g| format!("via {g} "))
            .unwrap_or_default(),
        out.name,
        route
            .prefsrc
            .map(|s| format!(" src {s}"))
            .unwrap_or_default()
    );
    if route.kind == "local" {
        walk.ok(
            "route",
            format!("{route_text}: {to} is this node's own address"),
        );
        return Ok(());
    }
    if own_subnet.is_some_and(|s| s.contains(&to)) {
        if out.index != bridge.index {
            return walk.broken(
                "route",
                format!(
                    "{to} is in this node's subnet but the {route_text} (expected dev {})",
                    bridge.name
                ),
            );
        }
        walk.ok("route", format!("{route_text} (this node's subnet)"));
        return destination_pod(walk, to, node, &bridge, "this node");
    }

    let (env_network, env_masq) = read_subnet_env(&opts.subnet_file);
    let etcd = read_etcd(&opts.etcd).await;
    let network = match &etcd {
        Ok((_, Some(network))) => Some(*network),
        _ => env_network,
    };
    let in_cluster = network.is_none_or(|n| n.contains(&to));
    if !in_cluster {
        walk.ok(
            "route",
            format!("{route_text} (outside the cluster network)"),
        );
        return egress(walk, opts, env_masq, &out, &route);
    }

    // --- overlay ----------------------------------------------------------------------
    let overlay_kind = match out.kind.as_deref() {
        Some("tun") if out.name.starts_with("weft.") => OverlayKind::WeftTun,
        Some("vxlan") => OverlayKind::KernelVxlan(out.vxlan.unwrap_or_default()),
        _ => OverlayKind::None,
    };
    let leases = etcd.map(|(leases, _)| leases);
    let lease = leases
        .as_ref()
        .ok()
        .and_then(|all| all.iter().find(|l| l.subnet.contains(&to)).cloned());
    // Without an overlay device the only right route is flannel's DirectRouting: straight
    // to the destination node's PublicIP. Anything else (a default route, say) means the
    // route for the destination's subnet is missing.
    let direct = matches!(overlay_kind, OverlayKind::None)
        && route.gateway.is_some()
        && lease
            .as_ref()
            .is_some_and(|l| Some(l.attrs.public_ip) == route.gateway);
    if matches!(overlay_kind, OverlayKind::None) && !direct {
        let nor_direct = lease
            .as_ref()
            .map(|l| format!(" nor straight to its node {}", l.attrs.public_ip))
            .unwrap_or_default();
        return walk.broken(
            "route",
            format!(
                "{route_text}: {to} is in the cluster network but the route leaves through \
                 {}, not the overlay{nor_direct}; the route for its subnet is missing",
                out.name
            ),
        );
    }
    walk.ok(
        "route",
        if direct {
            format!("{route_text} (DirectRouting to the node's PublicIP)")
        } else {
            route_text
        },
    );
    let leases = match leases {
        Ok(leases) => leases,
        Err(e) => return walk.broken("lease", format!("cannot read the leases from etcd: {e:#}")),
    };
    if !direct {
        let detail = match overlay_kind {
            OverlayKind::WeftTun => format!("{}: weft's userspace TUN", describe_link(&out)),
            OverlayKind::KernelVxlan(p) => format!(
                "{}: kernel vxlan VNI {} local {} dstport {}",
                describe_link(&out),
                p.vni.map_or("-".into(), |v| v.to_string()),
                p.local.map_or("-".into(), |v| v.to_string()),
                p.port.map_or("-".into(), |v| v.to_string())
            ),
            OverlayKind::None => unreachable!("direct routes skip the overlay"),
        };
        if !out.up {
            return walk.broken("overlay", format!("{detail}: the device is down"));
        }
        if !out.lower_up {
            return walk.broken(
                "overlay",
                format!(
                    "{detail}: no carrier{}",
                    if overlay_kind == OverlayKind::WeftTun {
                        " (no weftd has the TUN device open: is weftd running?)"
                    } else {
                        ""
                    }
                ),
            );
        }
        if pod_if.mtu > out.mtu {
            return walk.broken(
                "overlay",
                format!(
                    "MTU mismatch: the pod's {} has MTU {} but {} has MTU {}; packets above {} \
                     bytes are dropped (set the pod MTU from subnet.env)",
                    pod_if.name, pod_if.mtu, out.name, out.mtu, out.mtu
                ),
            );
        }
        walk.ok("overlay", format!("{detail}; pod MTU {} fits", pod_if.mtu));
    }

    // --- lease ------------------------------------------------------------------------
    let Some(lease) = lease else {
        return walk.broken(
            "lease",
            format!(
                "no lease in etcd covers {to} ({} leases under {}/subnets)",
                leases.len(),
                opts.etcd.prefix
            ),
        );
    };
    let public_ip = lease.attrs.public_ip;
    let vxlan = lease.attrs.vxlan_data().ok();
    let mut lease_text = format!(
        "{}: PublicIP {public_ip}, backend {}",
        lease.subnet, lease.attrs.backend_type
    );
    if let Some(data) = &vxlan {
        lease_text += &format!(" VNI {} VtepMAC {}", data.vni, data.vtep_mac);
    }
    if let OverlayKind::KernelVxlan(kernel::VxlanParams { vni: Some(vni), .. }) = overlay_kind {
        if vxlan.as_ref().is_some_and(|d| d.vni != vni) || lease.attrs.backend_type != "vxlan" {
            return walk.broken(
                "lease",
                format!("{lease_text}: does not match this node's vxlan VNI {vni}"),
            );
        }
    }
    if overlay_kind == OverlayKind::WeftTun {
        let ours = out.name.trim_start_matches("weft.");
        let theirs = match &vxlan {
            Some(d) if lease.attrs.backend_type == "vxlan" => d.vni.to_string(),
            _ => lease.attrs.backend_type.clone(),
        };
        if ours != theirs {
            return walk.broken(
                "lease",
                format!(
                    "{lease_text}: this node's overlay is {} but the destination node's \
                     backend is {}",
                    out.name, theirs
                ),
            );
        }
    }
    if overlay_kind == OverlayKind::WeftTun {
        match &opts.weftd_status {
            Some(status) => {
                let peers = status["peers"].as_array().map(Vec::as_slice).unwrap_or(&[]);
                let subnet = lease.subnet.to_string();
                let known = peers.iter().any(|p| {
                    p["subnet"] == subnet.as_str()
                        && p["public_ip"] == public_ip.to_string().as_str()
                });
                if !known {
                    return walk.broken(
                        "lease",
                        format!(
                            "{lease_text}: the local weftd has no such peer (its /v1/status \
                             lists {} peers): it has not seen this lease",
                            peers.len()
                        ),
                    );
                }
                lease_text += "; the local weftd has this peer";
            }
            None => lease_text += "; the local weftd's status was not reachable",
        }
    }
    walk.ok("lease", lease_text);

    // --- neighbour + fdb (kernel vxlan) -----------------------------------------------
    if let OverlayKind::KernelVxlan(_) = overlay_kind {
        let Some(vtep_mac) = vxlan
            .as_ref()
            .map(|d| d.vtep_mac.to_string().to_lowercase())
        else {
            return walk.broken("lease", "the lease has no VtepMAC".to_owned());
        };
        let Some(gateway) = route.gateway else {
            return walk.broken(
                "neighbour",
                format!(
                    "the route via {} has no gateway (flanneld routes via <subnet>.0 onlink), \
                     so no neighbour entry can apply",
                    out.name
                ),
            );
        };
        let neighbour = node
            .neighbours
            .iter()
            .find(|n| n.ifindex == out.index && n.ip == Some(gateway));
        match neighbour.and_then(|n| n.mac.clone().map(|m| (n, m))) {
            None => {
                return walk.broken(
                    "neighbour",
                    format!(
                        "no neighbour entry for {gateway} on {} (flanneld adds {gateway} \
                         lladdr {vtep_mac} permanent)",
                        out.name
                    ),
                )
            }
            Some((_, mac)) if mac != vtep_mac => {
                return walk.broken(
                    "neighbour",
                    format!(
                        "{gateway} on {} resolves to {mac} but the lease's VtepMAC is {vtep_mac}",
                        out.name
                    ),
                )
            }
            Some((n, mac)) => walk.ok(
                "neighbour",
                format!(
                    "{gateway} lladdr {mac} on {}{}",
                    out.name,
                    if n.permanent { " permanent" } else { "" }
                ),
            ),
        }
        let fdb = node
            .fdb
            .iter()
            .find(|f| f.ifindex == out.index && f.mac.as_deref() == Some(vtep_mac.as_str()));
        match fdb {
            None => {
                return walk.broken(
                    "fdb",
                    format!(
                        "no fdb entry for {vtep_mac} on {} (flanneld adds {vtep_mac} dst \
                         {public_ip} self permanent)",
                        out.name
                    ),
                )
            }
            Some(f) if f.ip != Some(public_ip) => {
                return walk.broken(
                    "fdb",
                    format!(
                        "fdb entry {vtep_mac} on {} sends to {} but the lease's PublicIP is \
                         {public_ip}",
                        out.name,
                        f.ip.map_or("nowhere".into(), |i| i.to_string())
                    ),
                )
            }
            Some(f) => walk.ok(
                "fdb",
                format!(
                    "{vtep_mac} dst {public_ip} on {}{}{}",
                    out.name,
                    if f.self_entry { " self" } else { "" },
                    if f.permanent { " permanent" } else { "" }
                ),
            ),
        }
    }

    // --- underlay ---------------------------------------------------------------------
    let underlay_view = match kernel::inspect(
        &PathBuf::from("/proc/self/ns/net"),
        Query {
            route_to: vec![public_ip],
            neighbours: false,
        },
    ) {
        Ok(v) => v,
        Err(e) => return walk.broken("underlay", format!("{e:#}")),
    };
    let under_route = match underlay_view.route(public_ip) {
        Ok(r) => r.clone(),
        Err(e) => {
            return walk.broken(
                "underlay",
                format!("no route to the destination node's PublicIP {public_ip}: {e}"),
            )
        }
    };
    let Some(under) = under_route.oif.and_then(|i| underlay_view.link(i)).cloned() else {
        return walk.broken(
            "underlay",
            format!("the route to {public_ip} names no device"),
        );
    };
    if !(under.up && under.lower_up) {
        return walk.broken(
            "underlay",
            format!(
                "{} carries the route to {public_ip} but is down",
                describe_link(&under)
            ),
        );
    }
    let overhead = match (&overlay_kind, lease.attrs.backend_type.as_str()) {
        (_, "ipip") => IPIP_OVERHEAD,
        _ => VXLAN_OVERHEAD,
    };
    if !direct && out.mtu + overhead > under.mtu {
        return walk.broken(
            "underlay",
            format!(
                "MTU mismatch: {} MTU {} + {overhead} bytes of encapsulation > {} MTU {}",
                out.name, out.mtu, under.name, under.mtu
            ),
        );
    }
    walk.ok(
        "underlay",
        format!(
            "route get {public_ip}: {}dev {}{}; {}",
            under_route
                .gateway
                .map(|g| format!("via {g} "))
                .unwrap_or_default(),
            under.name,
            under_route
                .prefsrc
                .map(|s| format!(" src {s}"))
                .unwrap_or_default(),
            describe_link(&under)
        ),
    );

    // --- remote side (when a namespace here holds the PublicIP) -----------------------
    let own = walk.own_ns.clone().unwrap_or_default();
    let candidates: Vec<&Found> = walk
        .namespaces()
        .iter()
        .filter(|f| f.view.holder_of(public_ip).is_some())
        .filter(|f| {
            f.view.links.iter().any(|l| {
                l.kind.as_deref() == Some("bridge") && l.addresses.iter().any(|a| a.contains(&to))
            })
        })
        .collect();
    let Some(remote) = closest(&own, candidates).cloned() else {
        walk.skipped(
            "remote-node",
            format!(
                "{public_ip}: no network namespace on this machine holds it; the remote side \
                 is not inspected"
            ),
        );
        return Ok(());
    };
    let remote_view = match kernel::inspect(
        &remote.path,
        Query {
            route_to: vec![to],
            neighbours: false,
        },
    ) {
        Ok(v) => v,
        Err(e) => return walk.broken("remote-node", format!("netns {}: {e:#}", remote.name)),
    };
    let remote_overlay = remote_view.links.iter().find(|l| {
        (l.kind.as_deref() == Some("tun") && l.name.starts_with("weft."))
            || l.kind.as_deref() == Some("vxlan")
    });
    let holder = remote_view
        .holder_of(public_ip)
        .map(|(l, _)| l.name.clone())
        .unwrap_or_default();
    match remote_overlay {
        None if !direct => {
            return walk.broken(
                "remote-node",
                format!(
                    "netns {} holds {public_ip} on {holder} but has no overlay device \
                     (weft.N or flannel.N)",
                    remote.name
                ),
            )
        }
        Some(o) if !direct && !is_running(o) => {
            return walk.broken(
                "remote-node",
                format!(
                    "netns {}: overlay {} is not running",
                    remote.name,
                    describe_link(o)
                ),
            )
        }
        o => walk.ok(
            "remote-node",
            format!(
                "netns {} holds {public_ip} on {holder}{}",
                remote.name,
                o.map(|o| format!("; overlay {}", describe_link(o)))
                    .unwrap_or_default()
            ),
        ),
    }
    let remote_route = match remote_view.route(to) {
        Ok(r) => r.clone(),
        Err(e) => {
            return walk.broken(
                "remote-bridge",
                format!("netns {}: no route to {to}: {e}", remote.name),
            )
        }
    };
    let Some(remote_bridge) = remote_route.oif.and_then(|i| remote_view.link(i)).cloned() else {
        return walk.broken(
            "remote-bridge",
            format!("netns {}: the route to {to} names no device", remote.name),
        );
    };
    if remote_route.kind == "local" {
        walk.ok(
            "remote-bridge",
            format!("{to} is an address of netns {} itself", remote.name),
        );
        return Ok(());
    }
    if remote_bridge.kind.as_deref() != Some("bridge") {
        return walk.broken(
            "remote-bridge",
            format!(
                "netns {}: the route to {to} leaves through {}, not a pod bridge",
                remote.name, remote_bridge.name
            ),
        );
    }
    if !remote_bridge.up {
        return walk.broken(
            "remote-bridge",
            format!(
                "netns {}: bridge {} is down",
                remote.name,
                describe_link(&remote_bridge)
            ),
        );
    }
    walk.ok(
        "remote-bridge",
        format!(
            "netns {}: {} {}",
            remote.name,
            describe_link(&remote_bridge),
            list(&remote_bridge.addresses)
        ),
    );
    destination_pod(
        walk,
        to,
        &remote_view,
        &remote_bridge,
        &format!("netns {}", remote.name),
    )
}

/// The last hop: the pod namespace holding `to` behind `bridge` of `host_view`.
fn destination_pod(
    walk: &mut Walk,
    to: Ipv4Addr,
    host_view: &NsView,
    bridge: &LinkView,
    host_label: &str,
) -> Step<()> {
    let Some(pod) = find_pod(walk, to, host_view) else {
        return walk.broken(
            "destination-pod",
            format!(
                "no pod namespace holds {to} on a veth attached to {} of {host_label}",
                bridge.name
            ),
        );
    };
    let Some((link, net)) = pod.view.holder_of(to).map(|(l, n)| (l.clone(), n)) else {
        return walk.broken(
            "destination-pod",
            format!("{to} vanished from {}", pod.name),
        );
    };
    let host = paired(&link, host_view).cloned().unwrap_or_default();
    if host.master != Some(bridge.index) {
        return walk.broken(
            "destination-pod",
            format!(
                "netns {} holds {to}, but its host veth {} is not on {}",
                pod.name, host.name, bridge.name
            ),
        );
    }
    if !(link.up && link.lower_up && host.up) {
        return walk.broken(
            "destination-pod",
            format!(
                "netns {}: {} / host side {} is down",
                pod.name,
                describe_link(&link),
                describe_link(&host)
            ),
        );
    }
    walk.ok(
        "destination-pod",
        format!(
            "netns {}: {} {net}, host veth {} on {}",
            pod.name,
            describe_link(&link),
            host.name,
            bridge.name
        ),
    );
    Ok(())
}

/// A destination outside the cluster network: masquerading (when expected) and the
/// device the packet leaves through.
fn egress(
    walk: &mut Walk,
    opts: &TraceOptions,
    env_masq: Option<bool>,
    out: &LinkView,
    route: &kernel::RouteLookup,
) -> Step<()> {
    let expected = opts.ip_masq.or(env_masq).unwrap_or(false);
    if expected {
        let rules = std::process::Command::new("nft")
            .args(["list", "table", "ip", crate::masq::TABLE])
            .output();
        let has_masq = matches!(&rules, Ok(o) if o.status.success()
            && String::from_utf8_lossy(&o.stdout).contains("masquerade"));
        if !has_masq {
            return walk.broken(
                "masquerade",
                format!(
                    "masquerading is expected (--ip-masq / FLANNEL_IPMASQ=true) but nftables \
                     table ip {} has no masquerade rule: replies from outside cannot return",
                    crate::masq::TABLE
                ),
            );
        }
        walk.ok(
            "masquerade",
            format!(
                "nftables table ip {} masquerades pod traffic leaving the cluster",
                crate::masq::TABLE
            ),
        );
    } else {
        walk.skipped(
            "masquerade",
            "not expected (FLANNEL_IPMASQ is not true and no --ip-masq)".to_owned(),
        );
    }
    if !(out.up && out.lower_up) {
        return walk.broken("egress", format!("{} is down", describe_link(out)));
    }
    walk.ok(
        "egress",
        format!(
            "leaves through {}{}",
            describe_link(out),
            route
                .gateway
                .map(|g| format!(" via {g}"))
                .unwrap_or_default()
        ),
    );
    Ok(())
}

/// Up with a carrier.
fn is_running(link: &LinkView) -> bool {
    link.up && link.lower_up
}

fn list(nets: &[Ipv4Net]) -> String {
    nets.iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OverlayKind {
    WeftTun,
    KernelVxlan(kernel::VxlanParams),
    /// A plain route (DirectRouting) or no overlay at all.
    None,
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
