//! Where the outer headers are added: by the kernel (a TAP plus a tc program,
//! `dataplane::tap_encap`, the default) or in userspace (`--kernel-encap=false`, and the
//! fallback where the program cannot load). Both must carry the same bytes, and a node
//! of one kind must talk to a node of the other, in both directions and on both
//! backends, while each node reports which path it took.

mod dataplane_support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use dataplane_support::{concurrent_transfers, netconf, ping_once, wait_ping, Cluster};
use weft_bpf as bpf;
use weft_tests::require_root;

const VXLAN: &str = r#"{"Type":"vxlan","VNI":1}"#;
const IPIP: &str = r#"{"Type":"ipip"}"#;

/// Node 1 lets the kernel encapsulate, node 2 does it in userspace; streams both ways
/// (several at once, so the receive side coalesces interleaved flows) arrive intact.
///
/// Node 1's underlay device is told it cannot segment anything, as a NIC without
/// tunnel offloads, so the kernel's software GSO must cut node 1's super-packets by the
/// encapsulation the program declared (veth would otherwise carry them whole, and a
/// wrongly marked packet would never be cut): the capture then sees only full-sized
/// packets of at most the underlay MTU, and the bytes still arrive intact.
fn mixed_nodes_interoperate(backend: &str, outer_protocol: &str) {
    let cluster = Cluster::weft_with_each(2, &netconf(backend), |n, settings| {
        settings.kernel_encap = n == 1;
    })
    .unwrap();
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    let offloads = |i: usize| cluster.nodes[i].metrics().dataplane().unwrap().offloads;
    assert!(offloads(0).kernel_encap, "node 1: {:?}", offloads(0));
    assert!(!offloads(1).kernel_encap, "node 2: {:?}", offloads(1));
    a.ns.run(
        "ethtool",
        &[
            "-K",
            "eth0",
            "tso",
            "off",
            "gso",
            "off",
            "tx-udp_tnl-segmentation",
            "off",
            "tx-udp_tnl-csum-segmentation",
            "off",
            "tx-ipxip4-segmentation",
            "off",
        ],
    )
    .unwrap();
    wait_ping(a.pod(), b.pod_ip(), Duration::from_secs(10)).unwrap();
    wait_ping(b.pod(), a.pod_ip(), Duration::from_secs(10)).unwrap();
    let filter = format!(
        "{outer_protocol} and src host {} and greater 1400",
        a.public_ip()
    );
    let capture = cluster
        .underlay
        .start_capture(&["-i", "n1", "-nn", "-v", "-l", "-c", "50", &filter])
        .unwrap();
    concurrent_transfers(a, b, 3, 3, 16 << 20);
    let text = capture
        .wait_done("50 full-sized packets from node 1", Duration::from_secs(10))
        .unwrap();
    // `-v` prints the outer IPv4 header first: "(tos 0x0, ttl 64, …, length N)".
    let lengths: Vec<usize> = text
        .lines()
        .filter_map(|line| line.split(", length ").nth(1))
        .filter_map(|rest| rest.split(')').next()?.parse().ok())
        .collect();
    assert!(lengths.len() >= 50, "{text}");
    assert!(
        lengths.iter().all(|&l| l <= 1500),
        "longer than the MTU: {lengths:?}\n{text}"
    );
    assert!(
        lengths.iter().filter(|&&l| l == 1500).count() >= 40,
        "{lengths:?}"
    );
}

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn vxlan_kernel_and_userspace_encapsulation_interoperate() {
    if !require_root("vxlan_kernel_and_userspace_encapsulation_interoperate") {
        return;
    }
    mixed_nodes_interoperate(VXLAN, "udp port 8472");
}

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn ipip_kernel_and_userspace_encapsulation_interoperate() {
    if !require_root("ipip_kernel_and_userspace_encapsulation_interoperate") {
        return;
    }
    mixed_nodes_interoperate(IPIP, "ip proto 4");
}

/// What weftd logs when the kernel refuses the program must say which program and why
/// (the verifier's words), not just "permission denied" or "invalid argument".
#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn a_refused_program_is_named_with_the_verifiers_reason() {
    if !require_root("a_refused_program_is_named_with_the_verifiers_reason") {
        return;
    }
    // Returns r0 without ever setting it.
    let error = bpf::load_sched_cls("weft_test_bad", &[bpf::exit()]).unwrap_err();
    let text = error.to_string();
    assert!(text.contains("weft_test_bad"), "{text}");
    assert!(text.contains("verifier:") && text.contains("R0"), "{text}");
}

/// A packet the kernel drops after weft handed it on (here: the underlay switch port is
/// down) never reaches weft's own drop counters, so weft reports the underlay device's
/// transmit counters too; and traffic resumes once the port is back.
#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn packets_the_underlay_drops_show_in_weft_metrics() {
    if !require_root("packets_the_underlay_drops_show_in_weft_metrics") {
        return;
    }
    let cluster = Cluster::weft(2, &netconf(VXLAN)).unwrap();
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    assert!(a.metrics().dataplane().unwrap().offloads.kernel_encap);
    wait_ping(a.pod(), b.pod_ip(), Duration::from_secs(10)).unwrap();
    let dropped = || a.metrics().underlay_tx_dropped.load(Ordering::Relaxed);
    let before = dropped();
    // Node 1's eth0 is a veth whose other end, `n1`, sits on the underlay's bridge.
    cluster
        .underlay
        .run("ip", &["link", "set", "n1", "down"])
        .unwrap();
    const LOST: u64 = 3;
    for _ in 0..LOST {
        assert!(
            !ping_once(a.pod(), b.pod_ip()),
            "switch port down, yet a reply"
        );
    }
    weft_tests::wait_until(
        "the underlay's transmit drops in weft's metrics",
        Duration::from_secs(10),
        || dropped() >= before + LOST,
    )
    .unwrap();
    cluster
        .underlay
        .run("ip", &["link", "set", "n1", "up"])
        .unwrap();
    wait_ping(a.pod(), b.pod_ip(), Duration::from_secs(10)).unwrap();
}
