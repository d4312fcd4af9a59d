//! The data plane end to end with real weftd processes (leases in a real etcd), on the
//! shared `weft_tests::lab::Lab`: VXLAN and IPIP clusters of three weftd nodes, and a
//! mixed cluster with a kernel-flannel node on both VXLAN ports. The in-process tests
//! (`dataplane_vxlan.rs` & co.) cover the same paths with exact control over leases and
//! access to the drop counters; these show the assembled daemon does the same.

mod dataplane_support;

use std::time::Duration;

use dataplane_support::tcp_transfer;
use weft_tests::lab::{Backend, Lab, LabSpec, HEALTHZ_ADDR};
use weft_tests::{require_root, wait_until};

/// Adds one fast pod per node, waits until every pod reaches every other, and moves
/// `bytes` over TCP from the first pod to the last; returns the lab.
fn all_pods_reach_each_other(spec: LabSpec, bytes: usize) -> Lab {
    let nodes = spec.nodes;
    let mut lab = Lab::start(spec).unwrap();
    let pods: Vec<(String, std::net::Ipv4Addr)> = (1..=nodes)
        .map(|n| {
            let name = format!("p{n}");
            let ip = lab.add_pod(n, &name).unwrap();
            (name, ip)
        })
        .collect();
    for (from, _) in &pods {
        for (to, ip) in &pods {
            if from != to {
                wait_until(
                    &format!("{from} to reach {to} ({ip})"),
                    Duration::from_secs(20),
                    || lab.ping(from, *ip),
                )
                .unwrap();
            }
        }
    }
    let (first, last) = (&pods[0], &pods[nodes - 1]);
    let (sent, received, length) = tcp_transfer(
        &lab.netns_of(&first.0).unwrap(),
        &lab.netns_of(&last.0).unwrap(),
        last.1,
        bytes,
    )
    .unwrap();
    assert_eq!(length, bytes);
    assert_eq!(sent, received, "payload hash differs");
    lab
}

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn weftd_vxlan_three_nodes() {
    if !require_root("weftd_vxlan_three_nodes") {
        return;
    }
    let lab = all_pods_reach_each_other(LabSpec::weft(3), 100 << 20);
    let routes = lab
        .exec("n1", &["ip", "route", "show", "proto", "87"])
        .unwrap();
    assert_eq!(routes.matches("dev weft.1").count(), 2, "{routes}");
}

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn weftd_ipip_three_nodes() {
    if !require_root("weftd_ipip_three_nodes") {
        return;
    }
    let spec = LabSpec {
        backend: Backend::Ipip,
        ..LabSpec::weft(3)
    };
    let lab = all_pods_reach_each_other(spec, 100 << 20);
    let routes = lab
        .exec("n1", &["ip", "route", "show", "proto", "87"])
        .unwrap();
    assert_eq!(routes.matches("dev weft.ipip").count(), 2, "{routes}");
}

/// IPIP encapsulated by the kernel (`dataplane::tap_encap`): weftd says it is on, and a
/// bulk transfer crosses the underlay as IPIP packets longer than its MTU (whole GSO
/// super-packets, still protocol 4 between the PublicIPs, TTL 64 as from the kernel's
/// ipip) while the bytes arrive intact and no send fails.
#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn weftd_ipip_bulk_crosses_the_underlay_whole() {
    if !require_root("weftd_ipip_bulk_crosses_the_underlay_whole") {
        return;
    }
    let spec = LabSpec {
        backend: Backend::Ipip,
        ..LabSpec::weft(2)
    };
    let mut lab = Lab::start(spec).unwrap();
    let a = lab.add_pod(1, "p1").unwrap();
    let b = lab.add_pod(2, "p2").unwrap();
    wait_until("p1 to reach p2", Duration::from_secs(20), || {
        lab.ping("p1", b)
    })
    .unwrap();
    let n1 = lab.node_ns(1).unwrap();
    let (code, status) = n1.http_get(HEALTHZ_ADDR, "/v1/status").unwrap();
    assert_eq!(code, 200, "{status}");
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(
        status["devices"]["offloads"]["kernel_encap"], true,
        "weftd did not bring up the kernel encapsulation: {status}"
    );

    let tcpdump = lab
        .node_ns(2)
        .unwrap()
        .start_capture(&[
            "-i",
            "eth0",
            "-nn",
            "-v",
            "-l",
            "-c",
            "3",
            "ip proto 4 and src 192.0.2.1 and greater 3000",
        ])
        .unwrap();
    let (sent, received, length) = tcp_transfer(
        &lab.netns_of("p1").unwrap(),
        &lab.netns_of("p2").unwrap(),
        b,
        32 << 20,
    )
    .unwrap();
    assert_eq!((length, sent), (32 << 20, received), "payload damaged");
    let (code, metrics) = n1.http_get(HEALTHZ_ADDR, "/metrics").unwrap();
    assert_eq!(code, 200, "{metrics}");
    let send_errors = metrics
        .lines()
        .find(|l| l.starts_with("weft_drops_total{reason=\"tx_send_error\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<u64>().ok());
    assert_eq!(send_errors, Some(0), "{metrics}");
    let text = tcpdump
        .wait_done(
            "tcpdump to see 3 IPIP super-packets",
            Duration::from_secs(10),
        )
        .unwrap();
    assert!(
        text.contains("ttl 64") && text.contains("proto IPIP (4)"),
        "{text}"
    );
    assert!(text.contains("192.0.2.1 > 192.0.2.2: IP ("), "{text}");
    assert!(
        text.contains(&format!("{a}.")) && text.contains(&format!("{b}.")),
        "{text}"
    );
}

fn weftd_and_kernel_flannel(port: u16) {
    let spec = LabSpec {
        nodes: 2,
        kernel_nodes: 1,
        port,
        ..LabSpec::default()
    };
    let lab = all_pods_reach_each_other(spec, 20 << 20);
    // And back: kernel-flannel pod → weft pod.
    let weft_pod = lab.pod_ip("p1").unwrap();
    let (sent, received, length) = tcp_transfer(
        &lab.netns_of("p2").unwrap(),
        &lab.netns_of("p1").unwrap(),
        weft_pod,
        20 << 20,
    )
    .unwrap();
    assert_eq!(length, 20 << 20);
    assert_eq!(sent, received);
}

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn weftd_and_kernel_flannel_on_8472() {
    if !require_root("weftd_and_kernel_flannel_on_8472") {
        return;
    }
    weftd_and_kernel_flannel(8472);
}

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn weftd_and_kernel_flannel_on_4789() {
    if !require_root("weftd_and_kernel_flannel_on_4789") {
        return;
    }
    weftd_and_kernel_flannel(4789);
}
