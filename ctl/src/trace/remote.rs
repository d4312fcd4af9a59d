//! The hops towards another node, one function each: the overlay device, the lease of
//! the destination's subnet, for a kernel vxlan device its neighbour and fdb entries,
//! the underlay, and (when a namespace on this machine holds the node's PublicIP) the
//! remote node, its bridge and the destination pod.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use weft_netlink::inspect::{self, LinkView, NsView, Query, VxlanParams};

use super::hops::{destination_pod, Context, NodeRoute, PodEnd, Remote};
use super::sources::Lease;
use super::walk::{closest, describe_link, is_running, list, Found, Step, Walk};

/// VXLAN encapsulation overhead on the underlay (outer IPv4 + UDP + VXLAN + Ethernet).
const VXLAN_OVERHEAD: u32 = 50;
/// IPIP encapsulation overhead (outer IPv4).
const IPIP_OVERHEAD: u32 = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OverlayKind {
    WeftTun,
    KernelVxlan(VxlanParams),
    /// A plain route (DirectRouting) or no overlay at all.
    None,
}

impl OverlayKind {
    /// What the device a route leaves through says about the overlay.
    pub(super) fn of(out: &LinkView) -> OverlayKind {
        match out.kind.as_deref() {
            Some("tun") if out.name.starts_with("weft.") => OverlayKind::WeftTun,
            Some("vxlan") => OverlayKind::KernelVxlan(out.vxlan.unwrap_or_default()),
            _ => OverlayKind::None,
        }
    }
}

/// From this node's route to the destination's node and pod.
pub(super) async fn walk_remote(
    walk: &mut Walk,
    cx: &Context<'_>,
    pod: &PodEnd,
    route: &NodeRoute,
    remote: Remote,
) -> Step<()> {
    let Remote {
        overlay,
        direct,
        lease,
        leases,
    } = remote;
    let leases = match leases {
        Ok(leases) => leases,
        Err(e) => return walk.broken("lease", format!("cannot read the leases from etcd: {e:#}")),
    };
    if !direct {
        overlay_hop(walk, pod, &route.out, overlay)?;
    }
    let lease = lease_hop(walk, cx, &route.out, overlay, lease, &leases)?;
    if let OverlayKind::KernelVxlan(_) = overlay {
        let vtep_mac = neighbour_hop(walk, cx, route, &lease)?;
        fdb_hop(walk, cx, &route.out, &lease, &vtep_mac)?;
    }
    underlay_hop(walk, &route.out, &lease, direct)?;
    let Some((remote, remote_view)) = remote_node_hop(walk, cx, lease.public_ip, direct)? else {
        return Ok(());
    };
    let Some(remote_bridge) = remote_bridge_hop(walk, cx, &remote, &remote_view)? else {
        return Ok(());
    };
    destination_pod(
        walk,
        cx.to,
        &remote_view,
        &remote_bridge,
        &format!("netns {}", remote.name),
    )
}

/// The overlay device: up, with a carrier (for weft's TUN: weftd has it open), and an
/// MTU the pod's fits in.
pub(super) fn overlay_hop(
    walk: &mut Walk,
    pod: &PodEnd,
    out: &LinkView,
    overlay: OverlayKind,
) -> Step<()> {
    let pod_if = &pod.link;
    let detail = match overlay {
        OverlayKind::WeftTun => format!("{}: weft's userspace TUN", describe_link(out)),
        OverlayKind::KernelVxlan(p) => format!(
            "{}: kernel vxlan VNI {} local {} dstport {}",
            describe_link(out),
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
                if overlay == OverlayKind::WeftTun {
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
    Ok(())
}

/// The lease of the destination's subnet: present, matching this node's overlay, and
/// (for weft's TUN) known to the local weftd as a peer.
pub(super) fn lease_hop(
    walk: &mut Walk,
    cx: &Context<'_>,
    out: &LinkView,
    overlay: OverlayKind,
    lease: Option<Lease>,
    leases: &[Lease],
) -> Step<Lease> {
    let to = cx.to;
    let Some(lease) = lease else {
        return walk.broken(
            "lease",
            format!(
                "no lease in etcd covers {to} ({} leases under {}/subnets)",
                leases.len(),
                cx.opts.etcd.prefix
            ),
        );
    };
    let public_ip = lease.public_ip;
    let vxlan = lease.vxlan.as_ref();
    let mut lease_text = format!(
        "{}: PublicIP {public_ip}, backend {}",
        lease.subnet, lease.backend_type
    );
    if let Some(data) = vxlan {
        lease_text += &format!(" VNI {} VtepMAC {}", data.vni, data.vtep_mac);
    }
    if let OverlayKind::KernelVxlan(VxlanParams { vni: Some(vni), .. }) = overlay {
        if vxlan.is_some_and(|d| d.vni != vni) || lease.backend_type != "vxlan" {
            return walk.broken(
                "lease",
                format!("{lease_text}: does not match this node's vxlan VNI {vni}"),
            );
        }
    }
    if overlay == OverlayKind::WeftTun {
        let ours = out.name.trim_start_matches("weft.");
        let theirs = match vxlan {
            Some(d) if lease.backend_type == "vxlan" => d.vni.to_string(),
            _ => lease.backend_type.clone(),
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
        match &cx.opts.weftd_status {
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
    Ok(lease)
}

/// A kernel vxlan device's neighbour entry for the route's gateway: the lease's
/// VtepMAC. Returns that MAC (lower case) for the fdb hop.
pub(super) fn neighbour_hop(
    walk: &mut Walk,
    cx: &Context<'_>,
    route: &NodeRoute,
    lease: &Lease,
) -> Step<String> {
    let out = &route.out;
    let Some(vtep_mac) = lease.vxlan.as_ref().map(|d| d.vtep_mac.to_lowercase()) else {
        return walk.broken("lease", "the lease has no VtepMAC".to_owned());
    };
    let Some(gateway) = route.route.gateway else {
        return walk.broken(
            "neighbour",
            format!(
                "the route via {} has no gateway (flanneld routes via <subnet>.0 onlink), \
                 so no neighbour entry can apply",
                out.name
            ),
        );
    };
    let neighbour = cx
        .node
        .neighbours
        .iter()
        .find(|n| n.ifindex == out.index && n.ip == Some(gateway));
    match neighbour.and_then(|n| n.mac.clone().map(|m| (n, m))) {
        None => walk.broken(
            "neighbour",
            format!(
                "no neighbour entry for {gateway} on {} (flanneld adds {gateway} \
                 lladdr {vtep_mac} permanent)",
                out.name
            ),
        ),
        Some((_, mac)) if mac != vtep_mac => walk.broken(
            "neighbour",
            format!(
                "{gateway} on {} resolves to {mac} but the lease's VtepMAC is {vtep_mac}",
                out.name
            ),
        ),
        Some((n, mac)) => {
            walk.ok(
                "neighbour",
                format!(
                    "{gateway} lladdr {mac} on {}{}",
                    out.name,
                    if n.permanent { " permanent" } else { "" }
                ),
            );
            Ok(vtep_mac)
        }
    }
}

/// A kernel vxlan device's fdb entry for the VtepMAC: it sends to the lease's PublicIP.
pub(super) fn fdb_hop(
    walk: &mut Walk,
    cx: &Context<'_>,
    out: &LinkView,
    lease: &Lease,
    vtep_mac: &str,
) -> Step<()> {
    let public_ip = lease.public_ip;
    let fdb = cx
        .node
        .fdb
        .iter()
        .find(|f| f.ifindex == out.index && f.mac.as_deref() == Some(vtep_mac));
    match fdb {
        None => walk.broken(
            "fdb",
            format!(
                "no fdb entry for {vtep_mac} on {} (flanneld adds {vtep_mac} dst \
                 {public_ip} self permanent)",
                out.name
            ),
        ),
        Some(f) if f.ip != Some(public_ip) => walk.broken(
            "fdb",
            format!(
                "fdb entry {vtep_mac} on {} sends to {} but the lease's PublicIP is \
                 {public_ip}",
                out.name,
                f.ip.map_or("nowhere".into(), |i| i.to_string())
            ),
        ),
        Some(f) => {
            walk.ok(
                "fdb",
                format!(
                    "{vtep_mac} dst {public_ip} on {}{}{}",
                    out.name,
                    if f.self_entry { " self" } else { "" },
                    if f.permanent { " permanent" } else { "" }
                ),
            );
            Ok(())
        }
    }
}

/// The underlay: a route to the node's PublicIP through a running device whose MTU
/// takes the overlay's packets with their encapsulation.
pub(super) fn underlay_hop(
    walk: &mut Walk,
    out: &LinkView,
    lease: &Lease,
    direct: bool,
) -> Step<()> {
    let public_ip = lease.public_ip;
    let underlay_view = match inspect::inspect(
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
    let overhead = match lease.backend_type.as_str() {
        "ipip" => IPIP_OVERHEAD,
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
    Ok(())
}

/// The remote node, when a namespace on this machine holds its PublicIP and a bridge
/// on the destination's subnet (as in weft-lab): running its overlay. `None` (a
/// skipped hop) when the node is another machine.
pub(super) fn remote_node_hop(
    walk: &mut Walk,
    cx: &Context<'_>,
    public_ip: Ipv4Addr,
    direct: bool,
) -> Step<Option<(Found, NsView)>> {
    let to = cx.to;
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
        return Ok(None);
    };
    let remote_view = match inspect::inspect(
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
    Ok(Some((remote, remote_view)))
}

/// The remote node's route to the destination: its pod bridge, up. `None` when the
/// destination is the remote node's own address (the walk ends there).
pub(super) fn remote_bridge_hop(
    walk: &mut Walk,
    cx: &Context<'_>,
    remote: &Found,
    remote_view: &NsView,
) -> Step<Option<LinkView>> {
    let to = cx.to;
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
        return Ok(None);
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
    Ok(Some(remote_bridge))
}
