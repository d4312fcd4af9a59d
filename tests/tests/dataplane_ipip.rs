//! weft ↔ weft over userspace IPIP (the kernel here has no ipip module, so weft's raw
//! socket is the only IPIP on the machine): three nodes, every pod reaches every other,
//! 100 MB over TCP arrives intact, and the wire format is IPv4 protocol 4 between the
//! nodes' PublicIPs.

mod dataplane_support;

use std::time::Duration;

use dataplane_support::{netconf, ping_once, tcp_transfer, wait_ping, Cluster};
use weft_tests::{require_root, wait_until};

const IPIP: &str = r#"{"Type":"ipip"}"#;

#[test]
fn three_weft_nodes_over_ipip() {
    if !require_root("three_weft_nodes_over_ipip") {
        return;
    }
    let cluster = Cluster::weft(3, &netconf(IPIP)).unwrap();
    cluster
        .wait_all_pods_reach_each_other(Duration::from_secs(10))
        .unwrap();
    let routes = cluster.nodes[0]
        .ns
        .ip(&["route", "show", "proto", "87"])
        .unwrap();
    assert!(routes.contains("10.244.2.0/24 dev weft.ipip"), "{routes}");

    let (a, b) = (&cluster.nodes[1], &cluster.nodes[0]);
    let (sent, received, length) = tcp_transfer(a.pod(), b.pod(), b.pod_ip(), 100 << 20).unwrap();
    assert_eq!(length, 100 << 20);
    assert_eq!(sent, received, "payload hash differs");
}

#[test]
fn ipip_on_the_wire_is_protocol_4_between_public_ips() {
    if !require_root("ipip_on_the_wire_is_protocol_4_between_public_ips") {
        return;
    }
    let cluster = Cluster::weft(2, &netconf(IPIP)).unwrap();
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    wait_ping(a.pod(), b.pod_ip(), Duration::from_secs(10)).unwrap();

    // Capture on node 1's port of the underlay bridge.
    let mut tcpdump = cluster
        .underlay
        .start_capture(&["-i", "n1", "-nn", "-l", "-c", "4", "ip proto 4"])
        .unwrap();

    wait_until(
        "tcpdump to see 4 IPIP packets",
        Duration::from_secs(20),
        || {
            ping_once(a.pod(), b.pod_ip());
            tcpdump.is_done()
        },
    )
    .unwrap();
    let text = tcpdump.finish();
    let request = format!(
        "IP {} > {}: IP {} > {}: ICMP echo request",
        a.public_ip(),
        b.public_ip(),
        a.pod_ip(),
        b.pod_ip()
    );
    let reply = format!(
        "IP {} > {}: IP {} > {}: ICMP echo reply",
        b.public_ip(),
        a.public_ip(),
        b.pod_ip(),
        a.pod_ip()
    );
    assert!(text.contains(&request), "no {request:?} in:\n{text}");
    assert!(text.contains(&reply), "no {reply:?} in:\n{text}");
}
