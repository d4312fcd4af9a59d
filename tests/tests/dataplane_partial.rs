//! Inner checksums left partial by the sender (issue 19's `partial` underlay: MTU
//! frames, TSO/GSO off on the node's underlay device but transmit checksum offload on,
//! plain bridging over veth): the inner TCP checksum reaches weft's UDP socket as the
//! pseudo-header sum, never finished. weft must deliver such segments intact (coalesced,
//! handed to TUN with NEEDS_CSUM) and drop none of them as corrupt.
//!
//! The underlay is the lab's [`UnderlayMode::Partial`].

mod dataplane_support;

use std::time::Duration;

use dataplane_support::{netconf, tcp_transfer, wait_ping, Cluster, Node};
use weft_daemon::metrics::DropReason;
use weft_tests::lab::underlay::UnderlayMode;
use weft_tests::require_root;

const VXLAN: &str = r#"{"Type":"vxlan","VNI":1}"#;
const BYTES: usize = 6 << 20;

/// `BYTES` from `from`'s pod to `to`'s arrive intact (same SHA-256, same length).
fn transfer_intact(from: &Node, to: &Node) {
    let (sent, received, length) = tcp_transfer(from.pod(), to.pod(), to.pod_ip(), BYTES).unwrap();
    assert_eq!(length, BYTES, "{} → {}", from.n, to.n);
    assert_eq!(
        sent, received,
        "payload hash differs ({} → {})",
        from.n, to.n
    );
}

fn assert_no_checksum_drops(node: &Node) {
    let metrics = node.metrics();
    assert_eq!(
        metrics.drops(DropReason::RxBadChecksum),
        0,
        "node {}",
        node.n
    );
    assert!(
        metrics.snapshot().rx_bytes >= BYTES as u64,
        "node {}",
        node.n
    );
}

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn partial_checksums_from_a_kernel_node_arrive_intact() {
    if !require_root("partial_checksums_from_a_kernel_node_arrive_intact") {
        return;
    }
    let conf = netconf(VXLAN);
    let (cluster, weft, kernel) = Cluster::weft_and_kernel(&conf).unwrap();
    let (w, k) = (&cluster.nodes[weft], &cluster.nodes[kernel]);
    let _underlay = UnderlayMode::Partial
        .apply_nodes(&cluster.underlay, &[&w.ns, &k.ns], 8472)
        .unwrap();
    wait_ping(k.pod(), w.pod_ip(), Duration::from_secs(10)).unwrap();
    transfer_intact(k, w);
    assert_no_checksum_drops(w);
}

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn partial_checksums_between_weft_nodes_arrive_intact() {
    if !require_root("partial_checksums_between_weft_nodes_arrive_intact") {
        return;
    }
    let cluster = Cluster::weft(2, &netconf(VXLAN)).unwrap();
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    let _underlay = UnderlayMode::Partial
        .apply_nodes(&cluster.underlay, &[&a.ns, &b.ns], 8472)
        .unwrap();
    wait_ping(a.pod(), b.pod_ip(), Duration::from_secs(10)).unwrap();
    transfer_intact(a, b);
    transfer_intact(b, a);
    assert_no_checksum_drops(a);
    assert_no_checksum_drops(b);
}
