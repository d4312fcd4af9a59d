//! The hops as functions of plain views: a node and a pod wired as weft wires them, then
//! one thing broken at a time, and the walk must name that hop.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use weft_netlink::inspect::{LinkView, NeighbourView, NsView, RouteLookup, VxlanParams};

use super::hops::{self, Context, NodeRoute, PodEnd};
use super::remote::{self, OverlayKind};
use super::sources::{Lease, VxlanData};
use super::walk::Walk;
use super::{HopStatus, TraceOptions, TraceReport};

const TO: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 7);

fn link(index: u32, name: &str, kind: Option<&str>, mtu: u32) -> LinkView {
    LinkView {
        index,
        name: name.into(),
        kind: kind.map(Into::into),
        up: true,
        lower_up: true,
        mtu,
        ..LinkView::default()
    }
}

/// This node: eth0 (underlay), cni0 with 10.244.1.1/24, the pod's host veth on it,
/// weft's TUN weft.1.
fn node() -> NsView {
    let mut cni0 = link(3, "cni0", Some("bridge"), 1450);
    cni0.addresses = vec!["10.244.1.1/24".parse().unwrap()];
    let mut veth = link(5, "wf0123456789ab", Some("veth"), 1450);
    veth.master = Some(3);
    veth.peer_index = Some(2);
    NsView {
        links: vec![
            link(2, "eth0", None, 1500),
            cni0,
            veth,
            link(6, "weft.1", Some("tun"), 1450),
        ],
        ..NsView::default()
    }
}

/// The pod's eth0 (ifindex 2 in its namespace, peer 5), 10.244.1.5/24, routing via
/// the bridge's address.
fn pod() -> PodEnd {
    let mut eth0 = link(2, "eth0", Some("veth"), 1450);
    eth0.peer_index = Some(5);
    PodEnd {
        link: eth0,
        addr: "10.244.1.5/24".parse().unwrap(),
        route: RouteLookup {
            oif: Some(2),
            gateway: Some(Ipv4Addr::new(10, 244, 1, 1)),
            prefsrc: None,
            kind: "unicast".into(),
        },
    }
}

fn opts() -> TraceOptions {
    TraceOptions {
        from: "10.244.1.5".into(),
        to: TO,
        etcd: Default::default(),
        cni_cache_dirs: Vec::new(),
        subnet_file: PathBuf::from("/nonexistent/subnet.env"),
        ip_masq: None,
        weftd_status: None,
    }
}

fn walk() -> Walk {
    Walk::new(
        TraceReport {
            from: "10.244.1.5".into(),
            source_netns: None,
            source_ip: None,
            to: TO,
            complete: false,
            broken: None,
            hops: Vec::new(),
        },
        None,
    )
}

/// The hop and reason the walk broke at.
fn broken_at(walk: &Walk) -> (&'static str, String) {
    let b = walk.report.broken.as_ref().expect("the walk broke");
    (b.hop, b.reason.clone())
}

fn vxlan_lease(vni: u32, mac: &str, public_ip: [u8; 4]) -> Lease {
    Lease {
        subnet: "10.244.2.0/24".parse().unwrap(),
        public_ip: public_ip.into(),
        backend_type: "vxlan".into(),
        vxlan: Some(VxlanData {
            vni,
            vtep_mac: mac.into(),
        }),
    }
}

#[test]
fn a_wired_pod_passes_host_veth_and_bridge() {
    let (node, pod, opts) = (node(), pod(), opts());
    let cx = Context {
        opts: &opts,
        node: &node,
        to: TO,
    };
    let mut walk = walk();
    let (veth, bridge) = hops::host_veth(&mut walk, &cx, &pod).unwrap();
    assert_eq!((veth.index, bridge.name.as_str()), (5, "cni0"));
    let own = hops::bridge_hop(&mut walk, &pod, &veth, &bridge).unwrap();
    assert_eq!(own, Some("10.244.1.0/24".parse().unwrap()));
    let hops: Vec<_> = walk.report.hops.iter().map(|h| (h.hop, h.status)).collect();
    assert_eq!(
        hops,
        [("host-veth", HopStatus::Ok), ("bridge", HopStatus::Ok)]
    );
    assert_eq!(
        walk.report.hops[0].detail,
        "wf0123456789ab [up, mtu 1450] ifindex 5, master cni0"
    );
}

#[test]
fn a_veth_peer_that_is_not_the_pods_breaks_at_host_veth() {
    let (node, mut pod, opts) = (node(), pod(), opts());
    pod.link.peer_index = Some(6); // weft.1: not a veth
    let cx = Context {
        opts: &opts,
        node: &node,
        to: TO,
    };
    let mut walk = walk();
    assert!(hops::host_veth(&mut walk, &cx, &pod).is_err());
    let (hop, reason) = broken_at(&walk);
    assert_eq!(hop, "host-veth");
    assert!(reason.contains("peers with ifindex 6"), "{reason}");
}

/// The host-veth hop's verdict on `node` after `change`, for the pod of [`pod`] whose
/// eth0 has a carrier only when its host end is up (as a veth has).
fn host_veth_verdict(change: impl FnOnce(&mut NsView)) -> (&'static str, String) {
    let (mut node, mut pod, opts) = (node(), pod(), opts());
    change(&mut node);
    pod.link.lower_up = node.link(5).is_some_and(|l| l.up);
    let cx = Context {
        opts: &opts,
        node: &node,
        to: TO,
    };
    let mut walk = walk();
    assert!(hops::host_veth(&mut walk, &cx, &pod).is_err());
    broken_at(&walk)
}

#[test]
fn a_pod_without_carrier_names_its_host_veth_found_by_iflink() {
    let (hop, reason) = host_veth_verdict(|node| {
        node.links.iter_mut().find(|l| l.index == 5).unwrap().up = false;
    });
    assert_eq!(hop, "host-veth");
    assert!(
        reason.contains("host veth wf0123456789ab [DOWN, mtu 1450] (ifindex 5, the iflink of the pod's eth0) is down"),
        "{reason}"
    );
}

#[test]
fn a_host_veth_off_cni0_breaks_at_host_veth_naming_both_bridges() {
    let (hop, reason) = host_veth_verdict(|node| {
        node.links.iter_mut().find(|l| l.index == 5).unwrap().master = None;
    });
    assert_eq!(hop, "host-veth");
    assert!(reason.contains("is not attached to cni0"), "{reason}");

    let (hop, reason) = host_veth_verdict(|node| {
        node.links.push(link(9, "docker0", Some("bridge"), 1500));
        node.links.iter_mut().find(|l| l.index == 5).unwrap().master = Some(9);
    });
    assert_eq!(hop, "host-veth");
    assert!(
        reason.contains(
            "is attached to docker0, not cni0 (which holds the pod's gateway 10.244.1.1)"
        ),
        "{reason}"
    );
}

#[test]
fn a_bridge_down_or_without_the_gateway_breaks_at_bridge() {
    let (node, mut pod) = (node(), pod());
    let veth = node.link(5).unwrap().clone();
    let mut bridge = node.link(3).unwrap().clone();
    bridge.up = false;
    let mut walk_ = walk();
    assert!(hops::bridge_hop(&mut walk_, &pod, &veth, &bridge).is_err());
    let (hop, reason) = broken_at(&walk_);
    assert_eq!(hop, "bridge");
    assert!(reason.contains("bridge cni0 is down"), "{reason}");

    bridge.up = true;
    pod.route.gateway = Some(Ipv4Addr::new(10, 244, 1, 254));
    let mut walk_ = walk();
    assert!(hops::bridge_hop(&mut walk_, &pod, &veth, &bridge).is_err());
    let (hop, reason) = broken_at(&walk_);
    assert_eq!(hop, "bridge");
    assert!(
        reason.contains("gateway 10.244.1.254 is not an address of cni0 (10.244.1.1/24)"),
        "{reason}"
    );
}

#[tokio::test]
async fn a_local_destination_routed_off_the_bridge_breaks_at_route() {
    let mut node = node();
    let to = Ipv4Addr::new(10, 244, 1, 9);
    node.routes.insert(
        to,
        Ok(RouteLookup {
            oif: Some(6),
            gateway: None,
            prefsrc: None,
            kind: "unicast".into(),
        }),
    );
    let opts = opts();
    let cx = Context {
        opts: &opts,
        node: &node,
        to,
    };
    let bridge = node.link(3).unwrap().clone();
    let mut walk = walk();
    let route = hops::node_route(&mut walk, &cx).unwrap();
    assert_eq!(route.text, "route get 10.244.1.9: dev weft.1");
    let own = Some("10.244.1.0/24".parse().unwrap());
    assert!(hops::route_hop(&mut walk, &cx, &bridge, own, &route)
        .await
        .is_err());
    let (hop, reason) = broken_at(&walk);
    assert_eq!(hop, "route");
    assert!(
        reason.contains("is in this node's subnet") && reason.contains("expected dev cni0"),
        "{reason}"
    );
}

#[test]
fn no_route_at_all_breaks_at_route() {
    let (node, opts) = (node(), opts());
    let cx = Context {
        opts: &opts,
        node: &node,
        to: TO,
    };
    let mut walk = walk();
    assert!(hops::node_route(&mut walk, &cx).is_err());
    assert_eq!(broken_at(&walk).0, "route");
}

#[test]
fn a_pod_mtu_above_the_overlays_breaks_at_overlay() {
    let (node, mut pod) = (node(), pod());
    let tun = node.link(6).unwrap().clone();
    let mut walk_ = walk();
    remote::overlay_hop(&mut walk_, &pod, &tun, OverlayKind::WeftTun).unwrap();
    assert_eq!(
        walk_.report.hops[0].detail,
        "weft.1 [up, mtu 1450]: weft's userspace TUN; pod MTU 1450 fits"
    );

    pod.link.mtu = 1500;
    let mut walk_ = walk();
    assert!(remote::overlay_hop(&mut walk_, &pod, &tun, OverlayKind::WeftTun).is_err());
    let (hop, reason) = broken_at(&walk_);
    assert_eq!(hop, "overlay");
    assert!(reason.starts_with("MTU mismatch"), "{reason}");

    let mut stopped = tun.clone();
    stopped.lower_up = false;
    let mut walk_ = walk();
    assert!(remote::overlay_hop(&mut walk_, &pod, &stopped, OverlayKind::WeftTun).is_err());
    assert!(broken_at(&walk_).1.contains("is weftd running?"));
}

#[test]
fn a_lease_of_another_vni_or_backend_breaks_at_lease() {
    let (node, opts) = (node(), opts());
    let cx = Context {
        opts: &opts,
        node: &node,
        to: TO,
    };
    let flannel = link(7, "flannel.1", Some("vxlan"), 1450);
    let kernel_vni_1 = OverlayKind::KernelVxlan(VxlanParams {
        vni: Some(1),
        ..VxlanParams::default()
    });
    let lease = vxlan_lease(2, "0A:58:0A:F4:02:00", [192, 0, 2, 2]);
    let mut walk_ = walk();
    let leases = [lease.clone()];
    assert!(remote::lease_hop(
        &mut walk_,
        &cx,
        &flannel,
        kernel_vni_1,
        Some(lease.clone()),
        &leases
    )
    .is_err());
    let (hop, reason) = broken_at(&walk_);
    assert_eq!(hop, "lease");
    assert!(
        reason.ends_with("does not match this node's vxlan VNI 1"),
        "{reason}"
    );

    // weft.1 is VNI 1; a lease of VNI 2 is another overlay.
    let tun = node.link(6).unwrap().clone();
    let mut walk_ = walk();
    assert!(remote::lease_hop(
        &mut walk_,
        &cx,
        &tun,
        OverlayKind::WeftTun,
        Some(lease),
        &leases
    )
    .is_err());
    assert!(broken_at(&walk_).1.contains("backend is 2"));

    // No lease at all.
    let mut walk_ = walk();
    assert!(remote::lease_hop(&mut walk_, &cx, &tun, OverlayKind::WeftTun, None, &[]).is_err());
    assert!(broken_at(&walk_)
        .1
        .starts_with("no lease in etcd covers 10.244.2.7"));
}

#[test]
fn kernel_vxlan_needs_the_neighbour_and_the_fdb_entry_of_the_lease() {
    let mut node = node();
    let flannel = link(7, "flannel.1", Some("vxlan"), 1450);
    let gateway = Ipv4Addr::new(10, 244, 2, 0);
    node.neighbours.push(NeighbourView {
        ifindex: 7,
        ip: Some(gateway),
        mac: Some("0a:58:0a:f4:02:00".into()),
        permanent: true,
        self_entry: false,
    });
    node.fdb.push(NeighbourView {
        ifindex: 7,
        ip: Some(Ipv4Addr::new(192, 0, 2, 9)),
        mac: Some("0a:58:0a:f4:02:00".into()),
        permanent: true,
        self_entry: true,
    });
    let opts = opts();
    let cx = Context {
        opts: &opts,
        node: &node,
        to: TO,
    };
    let route = NodeRoute {
        route: RouteLookup {
            oif: Some(7),
            gateway: Some(gateway),
            prefsrc: None,
            kind: "unicast".into(),
        },
        out: flannel.clone(),
        text: String::new(),
    };
    // The lease prints its MAC in upper case; the kernel's entries are lower case.
    let lease = vxlan_lease(1, "0A:58:0A:F4:02:00", [192, 0, 2, 2]);
    let mut walk_ = walk();
    let mac = remote::neighbour_hop(&mut walk_, &cx, &route, &lease).unwrap();
    assert_eq!(mac, "0a:58:0a:f4:02:00");
    assert_eq!(
        walk_.report.hops[0].detail,
        "10.244.2.0 lladdr 0a:58:0a:f4:02:00 on flannel.1 permanent"
    );
    assert!(remote::fdb_hop(&mut walk_, &cx, &flannel, &lease, &mac).is_err());
    let (hop, reason) = broken_at(&walk_);
    assert_eq!(hop, "fdb");
    assert!(
        reason.contains("sends to 192.0.2.9 but the lease's PublicIP is 192.0.2.2"),
        "{reason}"
    );

    let other_mac = vxlan_lease(1, "0a:58:0a:f4:02:01", [192, 0, 2, 2]);
    let mut walk_ = walk();
    assert!(remote::neighbour_hop(&mut walk_, &cx, &route, &other_mac).is_err());
    assert!(broken_at(&walk_)
        .1
        .contains("but the lease's VtepMAC is 0a:58:0a:f4:02:01"));
}
