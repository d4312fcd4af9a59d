//! weft ↔ weft over userspace IPIP (the kernel here has no ipip module, so weft's raw
//! socket is the only IPIP on the machine): three nodes, every pod reaches every other,
//! 100 MB over TCP arrives intact, and the wire format is IPv4 protocol 4 between the
//! nodes' PublicIPs.

mod dataplane_support;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
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
    let mut command = cluster.underlay.command("tcpdump");
    command
        .args(["-i", "n1", "-nn", "-l", "-c", "4", "ip proto 4"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut tcpdump = command.spawn().unwrap();
    let mut stderr = BufReader::new(tcpdump.stderr.take().unwrap());
    // tcpdump says "listening on ..." once its capture is open.
    let mut seen = String::new();
    while !seen.contains("listening on") {
        let mut line = String::new();
        if stderr.read_line(&mut line).unwrap() == 0 {
            panic!("tcpdump exited before capturing: {seen}");
        }
        seen.push_str(&line);
    }

    wait_until(
        "tcpdump to see 4 IPIP packets",
        Duration::from_secs(20),
        || {
            ping_once(a.pod(), b.pod_ip());
            tcpdump.try_wait().unwrap().is_some()
        },
    )
    .unwrap();
    let output = tcpdump.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
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
