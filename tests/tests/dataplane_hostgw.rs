//! flannel's `host-gw` backend on real weftd nodes (leases in a real etcd, routes in the
//! nodes' namespaces, pods behind cni0):
//!
//! * two host-gw nodes on one underlay: their pods reach each other (ping both ways, a
//!   TCP transfer arrives intact), each peer subnet is routed `via` the peer's PublicIP
//!   on `eth0` (`proto 87`), no `weft.*` device, UDP socket or worker thread exists,
//!   subnet.env's MTU is the underlay's, and the leases are flannel's host-gw records;
//! * a node whose PublicIP is not on the others' underlay subnet (198.51.100.0/24 behind
//!   a router, while they are on 192.0.2.0/24), and a peer of another backend: each gets
//!   no route, weftd says why once in its log and counts it in
//!   `weft_peers_refused_total` (on both sides of the router), and the on-link peers
//!   keep working.

mod dataplane_support;

use std::time::Duration;

use dataplane_support::tcp_transfer;
use weft_tests::lab::{Lab, LabSpec, ETCD_PREFIX, UNDERLAY_MTU};
use weft_tests::netns::Netns;
use weft_tests::{require_root, wait_until};

const HOST_GW: &str = r#"{"Network":"10.244.0.0/16","SubnetLen":24,"Backend":{"Type":"host-gw"}}"#;

/// Long enough for a few route reconciles (every 2 s) on a busy machine.
const RECONCILE_WAIT: Duration = Duration::from_secs(15);

fn host_gw_lab(nodes: usize) -> Lab {
    Lab::start(LabSpec {
        netconf: Some(HOST_GW.to_owned()),
        ..LabSpec::weft(nodes)
    })
    .unwrap()
}

fn refused(ns: &Netns, reason: &str) -> f64 {
    let name = format!("weft_peers_refused_total{{reason=\"{reason}\"}}");
    *ns.metrics()
        .get(&name)
        .unwrap_or_else(|| panic!("{name} missing from /metrics"))
}

/// A peer lease (a reservation: no etcd lease) with a raw flannel record.
fn put_lease(lab: &Lab, subnet: &str, record: &str) {
    let key = format!("{ETCD_PREFIX}/subnets/{}", subnet.replace('/', "-"));
    lab.etcd().put(&key, record).unwrap();
}

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn two_host_gw_nodes_route_pods_via_each_others_public_ip() {
    if !require_root("two_host_gw_nodes_route_pods_via_each_others_public_ip") {
        return;
    }
    let mut lab = host_gw_lab(2);
    let a = lab.add_pod(1, "a").unwrap();
    let b = lab.add_pod(2, "b").unwrap();
    wait_until("pod a to reach pod b", RECONCILE_WAIT, || lab.ping("a", b)).unwrap();
    wait_until("pod b to reach pod a", RECONCILE_WAIT, || lab.ping("b", a)).unwrap();
    let (sent, received, length) = tcp_transfer(
        &lab.pod_ns("a").unwrap(),
        &lab.pod_ns("b").unwrap(),
        b,
        20 << 20,
    )
    .unwrap();
    assert_eq!(length, 20 << 20);
    assert_eq!(sent, received, "payload hash differs");

    for (n, peer) in [(1, 2), (2, 1)] {
        let ns = lab.node_ns(n).unwrap();
        let (peer_subnet, _) = lab.node_subnet(peer).unwrap();
        let peer_ip = lab.node(peer).unwrap().ip;
        // The only weft route: the peer's subnet via its PublicIP on the underlay.
        let weft_routes = ns.ip(&["route", "show", "proto", "87"]).unwrap();
        assert_eq!(
            weft_routes.trim(),
            format!("{peer_subnet} via {peer_ip} dev eth0"),
            "node {n}"
        );
        let links = ns.ip(&["-o", "link", "show"]).unwrap();
        assert!(
            !links.contains("weft."),
            "node {n}: host-gw creates no tunnel device or TAP:\n{links}"
        );
        let udp = ns.run("ss", &["-H", "-uan"]).unwrap();
        assert!(!udp.contains(":8472"), "node {n}: no VXLAN socket:\n{udp}");
        let pid = lab.weftd_pid(n).expect("weftd runs").pid;
        let threads = weft_tests::proc::threads(pid);
        assert!(
            !threads.iter().any(|(name, _)| name.starts_with("weft-q")),
            "node {n}: no data-plane workers: {threads:?}"
        );
        // No encapsulation: the pods get the underlay's MTU.
        let (_, mtu) = lab.node_subnet(n).unwrap();
        assert_eq!(mtu, UNDERLAY_MTU, "node {n}: FLANNEL_MTU");
        let env = std::fs::read_to_string(lab.node(n).unwrap().subnet_file()).unwrap();
        assert!(env.contains("FLANNEL_MTU=1500\n"), "node {n}: {env}");
    }

    // Leases as flanneld's host-gw writes them: no BackendData.
    let leases = lab.leases().unwrap();
    assert_eq!(leases.len(), 2, "{leases:?}");
    for lease in &leases {
        assert_eq!(lease.backend_type, "host-gw", "{lease:?}");
        let key = format!(
            "{ETCD_PREFIX}/subnets/{}",
            lease.subnet.to_string().replace('/', "-")
        );
        let raw = lab.etcd().get(&key).unwrap().unwrap();
        assert!(!raw.contains("BackendData"), "{raw}");
    }
}

/// Node 3 is moved to 198.51.100.3/24 before its weftd starts; the underlay namespace
/// routes between the two subnets (it holds 192.0.2.254 and 198.51.100.254 on its
/// bridge, and etcd), so node 3 reaches etcd but is no directly connected node of
/// nodes 1 and 2, nor they of it.
#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn a_peer_off_the_underlay_subnet_is_refused_logged_once_and_counted() {
    if !require_root("a_peer_off_the_underlay_subnet_is_refused_logged_once_and_counted") {
        return;
    }
    let mut lab = Lab::start(LabSpec {
        netconf: Some(HOST_GW.to_owned()),
        start_weftd: false,
        ..LabSpec::weft(3)
    })
    .unwrap();
    let router = lab.underlay();
    router
        .ip(&["addr", "add", "198.51.100.254/24", "dev", "br0"])
        .unwrap();
    router
        .run("sysctl", &["-qw", "net.ipv4.ip_forward=1"])
        .unwrap();
    let n3 = lab.node_ns(3).unwrap();
    n3.ip(&["addr", "flush", "dev", "eth0"]).unwrap();
    n3.ip(&["addr", "add", "198.51.100.3/24", "dev", "eth0"])
        .unwrap();
    n3.ip(&["route", "add", "default", "via", "198.51.100.254"])
        .unwrap();
    for n in 1..=3 {
        lab.start_weftd(n).unwrap();
    }
    lab.wait_weftd_ready(1).unwrap();
    lab.wait_weftd_ready(2).unwrap();
    // Node 3's lease names its new PublicIP (the lab knows it as 192.0.2.3).
    let leases = lab.wait_leases(3, Duration::from_secs(30)).unwrap();
    let far = leases
        .iter()
        .find(|l| l.public_ip.to_string() == "198.51.100.3")
        .unwrap_or_else(|| panic!("no lease of node 3 in {leases:?}"))
        .subnet
        .to_string();
    // And a vxlan node in this host-gw network.
    let other = "10.244.201.0/24";
    put_lease(
        &lab,
        other,
        r#"{"PublicIP":"192.0.2.21","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:21"}}"#,
    );

    let n1 = lab.node_ns(1).unwrap();
    wait_until("node 1 to count both refusals", RECONCILE_WAIT, || {
        refused(&n1, "not_on_link") >= 1.0 && refused(&n1, "backend_mismatch") >= 1.0
    })
    .unwrap();
    let log_path = lab.node(1).unwrap().weftd_log();
    let log = std::fs::read_to_string(&log_path).unwrap();
    let not_on_link = format!(
        "peer {far} is not routed: its PublicIP 198.51.100.3 is not on the underlay \
         interface's subnet (192.0.2.0/24), so it is not a directly connected node"
    );
    assert!(log.contains(&not_on_link), "no {not_on_link:?} in:\n{log}");
    let mismatch = "peer 10.244.201.0/24 (PublicIP 192.0.2.21) is not routed: its lease is \
                    vxlan (VNI 1), this network is host-gw";
    assert!(log.contains(mismatch), "no {mismatch:?} in:\n{log}");
    assert!(n1.routes_to(&far).is_empty(), "{:?}", n1.routes_to(&far));
    assert!(n1.routes_to(other).is_empty(), "{:?}", n1.routes_to(other));

    // Node 3 refuses nodes 1 and 2 the same way, naming its own subnet.
    let (n1_subnet, _) = lab.node_subnet(1).unwrap();
    let n3_ns = lab.node_ns(3).unwrap();
    wait_until("node 3 to refuse nodes 1 and 2", RECONCILE_WAIT, || {
        refused(&n3_ns, "not_on_link") >= 2.0
    })
    .unwrap();
    let n3_log = std::fs::read_to_string(lab.node(3).unwrap().weftd_log()).unwrap();
    let from_n3 = format!(
        "peer {n1_subnet} is not routed: its PublicIP 192.0.2.1 is not on the underlay \
         interface's subnet (198.51.100.0/24)"
    );
    assert!(n3_log.contains(&from_n3), "no {from_n3:?} in:\n{n3_log}");
    let n3_routes = n3_ns.ip(&["route", "show", "proto", "87"]).unwrap();
    assert!(
        n3_routes.trim().is_empty(),
        "node 3 routes nothing: {n3_routes}"
    );

    // The on-link peers still work, and node 1 is ready: /readyz waits for no route to
    // a refused peer.
    let a = lab.add_pod(1, "a").unwrap();
    let b = lab.add_pod(2, "b").unwrap();
    wait_until("pod a to reach pod b", RECONCILE_WAIT, || lab.ping("a", b)).unwrap();
    wait_until("pod b to reach pod a", RECONCILE_WAIT, || lab.ping("b", a)).unwrap();
    assert!(lab.weftd_ready(1).unwrap(), "node 1 is not ready");

    // Reconciles plan again every 2 s; a refusal is news only once. Make one reconcile
    // observable (it puts back a deleted route) and count again after it.
    let (n2_subnet, _) = lab.node_subnet(2).unwrap();
    let n2_subnet = n2_subnet.to_string();
    n1.ip(&["route", "del", &n2_subnet, "proto", "87"]).unwrap();
    wait_until(
        "the reconcile to put the route back",
        RECONCILE_WAIT,
        || !n1.routes_to(&n2_subnet).is_empty(),
    )
    .unwrap();
    assert_eq!(refused(&n1, "not_on_link"), 1.0);
    assert_eq!(refused(&n1, "backend_mismatch"), 1.0);
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert_eq!(log.matches(&not_on_link).count(), 1, "logged once:\n{log}");
    assert_eq!(log.matches(mismatch).count(), 1, "logged once:\n{log}");
    assert!(n1.routes_to(&far).is_empty(), "{:?}", n1.routes_to(&far));
}
