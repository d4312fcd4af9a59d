//! The walk, one function per hop, on this node's side: the source pod, its host veth,
//! the bridge, this node's route; and where the walk ends on a node: the destination
//! pod, or masquerading and egress for a destination outside the cluster. The hops
//! towards another node are in `remote.rs`.

use std::net::Ipv4Addr;
use std::path::Path;

use ipnet::Ipv4Net;
use weft_netlink::inspect::{self, LinkView, NsView, Query, RouteLookup};

use super::remote::{self, OverlayKind};
use super::sources::{read_etcd, read_subnet_env, Lease};
use super::walk::{describe_link, find_pod, list, paired, Step, Walk};
use super::TraceOptions;

/// What every hop may look at.
pub(super) struct Context<'a> {
    pub(super) opts: &'a TraceOptions,
    /// This node's namespace, with the route to the destination and its neighbours.
    pub(super) node: &'a NsView,
    pub(super) to: Ipv4Addr,
}

/// The source pod's end: its interface, address and route to the destination.
pub(super) struct PodEnd {
    pub(super) link: LinkView,
    pub(super) addr: Ipv4Net,
    pub(super) route: RouteLookup,
}

/// This node's route to the destination and the device it leaves through.
pub(super) struct NodeRoute {
    pub(super) route: RouteLookup,
    pub(super) out: LinkView,
    /// `route get <to>: ... dev <out>`, as the route hop shows it.
    pub(super) text: String,
}

/// Where the path goes after this node's route.
pub(super) enum Onward {
    /// The destination is this node's own address: the walk ends.
    Arrived,
    /// This node's subnet: the destination pod behind the bridge.
    Local,
    /// Outside the cluster network.
    Egress { env_masq: Option<bool> },
    /// Another node's subnet.
    Remote(Remote),
}

/// A destination in another node's subnet, as the route hop found it.
pub(super) struct Remote {
    pub(super) overlay: OverlayKind,
    /// A plain route straight to the node's PublicIP (flannel's DirectRouting).
    pub(super) direct: bool,
    /// The lease covering the destination.
    pub(super) lease: Option<Lease>,
    /// Every lease, or why they could not be read.
    pub(super) leases: anyhow::Result<Vec<Lease>>,
}

pub(super) async fn walk_path(
    walk: &mut Walk,
    opts: &TraceOptions,
    node: &NsView,
    pod_label: &str,
    pod_path: &Path,
) -> Step<()> {
    let cx = Context {
        opts,
        node,
        to: opts.to,
    };
    let pod = pod(walk, &cx, pod_label, pod_path)?;
    let (host_veth, bridge) = host_veth(walk, &cx, &pod)?;
    let own_subnet = bridge_hop(walk, &pod, &host_veth, &bridge)?;
    let route = node_route(walk, &cx)?;
    match route_hop(walk, &cx, &bridge, own_subnet, &route).await? {
        Onward::Arrived => Ok(()),
        Onward::Local => destination_pod(walk, cx.to, node, &bridge, "this node"),
        Onward::Egress { env_masq } => egress(walk, opts, env_masq, &route.out, &route.route),
        Onward::Remote(remote) => remote::walk_remote(walk, &cx, &pod, &route, remote).await,
    }
}

/// The source pod: its route to the destination, the interface it names, up.
pub(super) fn pod(
    walk: &mut Walk,
    cx: &Context<'_>,
    pod_label: &str,
    pod_path: &Path,
) -> Step<PodEnd> {
    let to = cx.to;
    let pod = match inspect::inspect(
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
            // An interface set down takes its routes with it: name it, not just the
            // missing route.
            let down: Vec<String> = pod
                .links
                .iter()
                .filter(|l| l.kind.as_deref() == Some("veth") && !l.up)
                .map(|l| format!("{} is down and its routes went with it", describe_link(l)))
                .collect();
            let why = if down.is_empty() {
                String::new()
            } else {
                format!(" ({})", down.join("; "))
            };
            return walk.broken(
                "pod",
                format!("netns {pod_label}: no route to {to} in the pod: {e}{why}"),
            );
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
    if !pod_if.up {
        return walk.broken(
            "pod",
            format!(
                "netns {pod_label}: {} is set down inside the pod",
                describe_link(&pod_if)
            ),
        );
    }
    // Up without a carrier: a veth has one only while its peer is up too, so the cause
    // is on the host side; the host-veth hop names it (found by this iflink).
    let via = pod_route
        .gateway
        .map(|g| format!("via {g} "))
        .unwrap_or_default();
    let carrier_note = if pod_if.lower_up {
        ""
    } else {
        " (no carrier: its host end is checked next)"
    };
    walk.ok(
        "pod",
        format!(
            "netns {pod_label}: {} {pod_addr}, iflink {}; route to {to} {via}dev {}{carrier_note}",
            describe_link(&pod_if),
            pod_if.peer_index.map_or("-".to_owned(), |i| i.to_string()),
            pod_if.name
        ),
    );
    Ok(PodEnd {
        link: pod_if,
        addr: pod_addr,
        route: pod_route,
    })
}

/// The pod's veth peer in this namespace (the link whose ifindex is the pod's eth0's
/// iflink), up and a port of the pod's bridge (the one holding the pod's gateway,
/// else `cni0`); returns it and that bridge.
pub(super) fn host_veth(
    walk: &mut Walk,
    cx: &Context<'_>,
    pod: &PodEnd,
) -> Step<(LinkView, LinkView)> {
    let node = cx.node;
    let pod_if = &pod.link;
    let iflink = pod_if.peer_index.map_or("-".into(), |i| i.to_string());
    let Some(host_veth) = paired(pod_if, node).cloned() else {
        let carrier = if pod_if.lower_up {
            String::new()
        } else {
            " and has no carrier".to_owned()
        };
        return walk.broken(
            "host-veth",
            format!(
                "the pod's {}{carrier} peers with ifindex {iflink}, which is not its veth \
                 peer in this namespace (the host end was deleted or moved; or run weftctl \
                 trace in the namespace of the pod's node)",
                pod_if.name,
            ),
        );
    };
    if !host_veth.up {
        return walk.broken(
            "host-veth",
            format!(
                "host veth {} (ifindex {iflink}, the iflink of the pod's {}) is down, so the \
                 pod's {} has no carrier: `ip link set {} up`",
                describe_link(&host_veth),
                pod_if.name,
                pod_if.name,
                host_veth.name
            ),
        );
    }
    if !pod_if.lower_up {
        return walk.broken(
            "host-veth",
            format!(
                "the pod's {} has no carrier although its host veth {} is up",
                describe_link(pod_if),
                describe_link(&host_veth)
            ),
        );
    }
    let expected = pod_bridge(node, pod);
    let expected_name = expected.map_or(DEFAULT_BRIDGE, |b| b.name.as_str());
    let Some(bridge) = host_veth.master.and_then(|m| node.link(m)).cloned() else {
        return walk.broken(
            "host-veth",
            format!(
                "host veth {} is not attached to {expected_name} (it has no master): the \
                 pod's frames reach no bridge",
                describe_link(&host_veth)
            ),
        );
    };
    if let Some(expected) = expected.filter(|e| e.index != bridge.index) {
        return walk.broken(
            "host-veth",
            format!(
                "host veth {} is attached to {}, not {}{}",
                describe_link(&host_veth),
                bridge.name,
                expected.name,
                pod.route
                    .gateway
                    .map(|g| format!(" (which holds the pod's gateway {g})"))
                    .unwrap_or_default()
            ),
        );
    }
    walk.ok(
        "host-veth",
        format!(
            "{} ifindex {}, master {}",
            describe_link(&host_veth),
            host_veth.index,
            bridge.name
        ),
    );
    Ok((host_veth, bridge))
}

/// The bridge name weft's CNI config defaults to.
const DEFAULT_BRIDGE: &str = "cni0";

/// The bridge the pod belongs on: the one holding its gateway, else one named `cni0`.
fn pod_bridge<'n>(node: &'n NsView, pod: &PodEnd) -> Option<&'n LinkView> {
    let is_bridge = |l: &&LinkView| l.kind.as_deref() == Some("bridge");
    pod.route
        .gateway
        .and_then(|g| node.holder_of(g))
        .map(|(l, _)| l)
        .filter(is_bridge)
        .or_else(|| node.link_named(DEFAULT_BRIDGE).filter(is_bridge))
}

/// The bridge: a bridge, up, holding the pod's gateway; returns this node's subnet
/// (the bridge's network holding the pod's address).
pub(super) fn bridge_hop(
    walk: &mut Walk,
    pod: &PodEnd,
    host_veth: &LinkView,
    bridge: &LinkView,
) -> Step<Option<Ipv4Net>> {
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
                describe_link(bridge)
            ),
        );
    }
    let own_subnet = bridge
        .addresses
        .iter()
        .find(|a| a.contains(&pod.addr.addr()))
        .map(|a| a.trunc());
    if let Some(gateway) = pod.route.gateway {
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
        format!("{} {}", describe_link(bridge), list(&bridge.addresses)),
    );
    Ok(own_subnet)
}

/// This node's route to the destination (`ip route get`), and its device.
pub(super) fn node_route(walk: &mut Walk, cx: &Context<'_>) -> Step<NodeRoute> {
    let (node, to) = (cx.node, cx.to);
    let route = match node.route(to) {
        Ok(r) => r.clone(),
        Err(e) => {
            // A device set down loses its routes: an overlay device that is down is the
            // cause, not the route.
            let down: Vec<String> = node
                .links
                .iter()
                .filter(|l| !l.up && OverlayKind::of(l) != OverlayKind::None)
                .map(|l| {
                    format!(
                        "; the overlay device {} is down and the kernel removed its routes",
                        describe_link(l)
                    )
                })
                .collect();
            return walk.broken(
                "route",
                format!(
                    "no route to {to} in this node: {e} (route get {to}){}",
                    down.concat()
                ),
            );
        }
    };
    let Some(out) = route.oif.and_then(|i| node.link(i)).cloned() else {
        return walk.broken("route", format!("the route to {to} names no device"));
    };
    let text = format!(
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
    Ok(NodeRoute { route, out, text })
}

/// The route hop: whether this node's route takes the destination where it belongs
/// (this node's bridge, the overlay or DirectRouting, or out of the cluster).
pub(super) async fn route_hop(
    walk: &mut Walk,
    cx: &Context<'_>,
    bridge: &LinkView,
    own_subnet: Option<Ipv4Net>,
    route: &NodeRoute,
) -> Step<Onward> {
    let to = cx.to;
    let route_text = &route.text;
    let out = &route.out;
    if route.route.kind == "local" {
        walk.ok(
            "route",
            format!("{route_text}: {to} is this node's own address"),
        );
        return Ok(Onward::Arrived);
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
        return Ok(Onward::Local);
    }

    let (env_network, env_masq) = read_subnet_env(&cx.opts.subnet_file);
    let etcd = read_etcd(&cx.opts.etcd).await;
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
        return Ok(Onward::Egress { env_masq });
    }

    let overlay = OverlayKind::of(out);
    let leases = etcd.map(|(leases, _)| leases);
    let lease = leases
        .as_ref()
        .ok()
        .and_then(|all| all.iter().find(|l| l.subnet.contains(&to)).cloned());
    // Without an overlay device the only right route is flannel's DirectRouting: straight
    // to the destination node's PublicIP. Anything else (a default route, say) means the
    // route for the destination's subnet is missing.
    let direct = matches!(overlay, OverlayKind::None)
        && route.route.gateway.is_some()
        && lease
            .as_ref()
            .is_some_and(|l| Some(l.public_ip) == route.route.gateway);
    if matches!(overlay, OverlayKind::None) && !direct {
        let nor_direct = lease
            .as_ref()
            .map(|l| format!(" nor straight to its node {}", l.public_ip))
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
            route_text.clone()
        },
    );
    Ok(Onward::Remote(Remote {
        overlay,
        direct,
        lease,
        leases,
    }))
}

/// The last hop: the pod namespace holding `to` behind `bridge` of `host_view`.
pub(super) fn destination_pod(
    walk: &mut Walk,
    to: Ipv4Addr,
    host_view: &NsView,
    bridge: &LinkView,
    host_label: &str,
) -> Step<()> {
    let Some(pod) = find_pod(walk, to, host_view) else {
        let reason = format!(
            "no pod namespace holds {to} on a veth attached to {} of {host_label}: the \
             destination pod does not exist (or was deleted)",
            bridge.name
        );
        return walk.broken("destination-pod", reason);
    };
    let Some((link, net)) = pod.view.holder_of(to).map(|(l, n)| (l.clone(), n)) else {
        return walk.broken(
            "destination-pod",
            format!("{to} vanished from {}", pod.name),
        );
    };
    let host = paired(&link, host_view).cloned().unwrap_or_default();
    if host.master != Some(bridge.index) {
        let on = match host.master.and_then(|m| host_view.link(m)) {
            Some(other) => format!("is attached to {}, not {}", other.name, bridge.name),
            None => format!("is attached to no bridge (not to {})", bridge.name),
        };
        return walk.broken(
            "destination-pod",
            format!(
                "netns {} holds {to}, but its host veth {} {on}",
                pod.name,
                describe_link(&host)
            ),
        );
    }
    if !host.up {
        return walk.broken(
            "destination-pod",
            format!(
                "netns {} holds {to}, but its host veth {} (ifindex {}, the iflink of its {}) \
                 is down, so its {} has no carrier",
                pod.name,
                describe_link(&host),
                host.index,
                link.name,
                link.name
            ),
        );
    }
    if !(link.up && link.lower_up) {
        return walk.broken(
            "destination-pod",
            format!(
                "netns {}: {} holding {to} is down (its host veth {} is up)",
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
pub(super) fn egress(
    walk: &mut Walk,
    opts: &TraceOptions,
    env_masq: Option<bool>,
    out: &LinkView,
    route: &RouteLookup,
) -> Step<()> {
    let expected = opts.ip_masq.or(env_masq).unwrap_or(false);
    if expected {
        let rules = std::process::Command::new("nft")
            .args(["list", "table", "ip", weft_daemon::masq::TABLE])
            .output();
        let has_masq = matches!(&rules, Ok(o) if o.status.success()
            && String::from_utf8_lossy(&o.stdout).contains("masquerade"));
        if !has_masq {
            return walk.broken(
                "masquerade",
                format!(
                    "masquerading is expected (--ip-masq / FLANNEL_IPMASQ=true) but nftables \
                     table ip {} has no masquerade rule: replies from outside cannot return",
                    weft_daemon::masq::TABLE
                ),
            );
        }
        walk.ok(
            "masquerade",
            format!(
                "nftables table ip {} masquerades pod traffic leaving the cluster",
                weft_daemon::masq::TABLE
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
