//! Mixed cluster: a weft node and a node whose overlay is the kernel's vxlan device
//! programmed exactly as flanneld programs it (flannel.<VNI>, `.0/32`, onlink route,
//! permanent neighbour, fdb). Ping and TCP both ways, on ports 8472 and 4789.

mod dataplane_support;

use std::time::Duration;

use dataplane_support::{netconf, tcp_transfer, wait_ping, Cluster};
use weft_tests::require_root;

fn weft_and_kernel_interoperate(port: u16) {
    let conf = netconf(&format!(r#"{{"Type":"vxlan","VNI":1,"Port":{port}}}"#));
    let (cluster, weft, kernel) = Cluster::weft_and_kernel(&conf).unwrap();

    let (w, k) = (&cluster.nodes[weft], &cluster.nodes[kernel]);
    wait_ping(w.pod(), k.pod_ip(), Duration::from_secs(10)).unwrap();
    wait_ping(k.pod(), w.pod_ip(), Duration::from_secs(10)).unwrap();
    // Host-originated traffic uses the VTEP's `.0` address on both kinds of node.
    wait_ping(&k.ns, w.pod_ip(), Duration::from_secs(10)).unwrap();
    wait_ping(&w.ns, k.pod_ip(), Duration::from_secs(10)).unwrap();

    for (from, to) in [(w, k), (k, w)] {
        let (sent, received, length) =
            tcp_transfer(from.pod(), to.pod(), to.pod_ip(), 20 << 20).unwrap();
        assert_eq!(length, 20 << 20);
        assert_eq!(
            sent, received,
            "payload hash differs ({} → {})",
            from.n, to.n
        );
    }
    let counters = w.metrics().snapshot();
    // Both directions went through weft (bytes, not packets: a kernel peer's GSO
    // super-packets arrive whole).
    assert!(
        counters.rx_bytes >= 20 << 20 && counters.tx_bytes >= 20 << 20,
        "{counters:?}"
    );
    let rx_drops: u64 = counters
        .drops
        .iter()
        .filter(|(reason, _)| reason.starts_with("rx_"))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(
        rx_drops, 0,
        "kernel vxlan's packets all accepted: {counters:?}"
    );
}

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn weft_and_kernel_vxlan_interoperate_on_8472() {
    if !require_root("weft_and_kernel_vxlan_interoperate_on_8472") {
        return;
    }
    weft_and_kernel_interoperate(8472);
}

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn weft_and_kernel_vxlan_interoperate_on_4789() {
    if !require_root("weft_and_kernel_vxlan_interoperate_on_4789") {
        return;
    }
    weft_and_kernel_interoperate(4789);
}
