//! ADD latency of `weft` vs the reference `bridge` + `host-local` for the same network
//! (same subnet, gateway, MTU, default route), median of 100 each. A measurement, not
//! a test: it asserts nothing about speed and is ignored by default.
//!
//! ```text
//! cargo build --release -p weft-cni
//! WEFT_BIN_DIR=target/release cargo test --release -p weft-tests --test cni_latency -- --ignored --nocapture
//! ```

mod cni_support;

use std::time::{Duration, Instant};

use cni_support::*;
use serde_json::json;

const RUNS: usize = 100;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
#[ignore = "measurement; run with --ignored --nocapture"]
fn add_latency_weft_vs_bridge_host_local() {
    if !weft_tests::require_root("add_latency_weft_vs_bridge_host_local") {
        return;
    }
    // One node namespace per plugin, so each has its own cni0 and nothing is shared.
    let weft_node = CniNode::standard("lw").unwrap();
    let ref_node = CniNode::standard("lr").unwrap();
    let weft_conf = weft_node.conf("1.0.0", json!({})).to_string();
    let ref_conf = json!({
        "cniVersion": "1.0.0", "name": ref_node.network, "type": "bridge",
        "bridge": "cni0", "isGateway": true, "ipMasq": false, "mtu": 1450,
        "ipam": {"type": "host-local", "dataDir": ref_node.data_dir,
            "ranges": [[{"subnet": "10.244.1.0/24", "gateway": "10.244.1.1"}]],
            "routes": [{"dst": "0.0.0.0/0"}]},
    })
    .to_string();

    let mut samples = [Vec::new(), Vec::new()];
    // Batches of 25 pods (a /24 holds them all, and DEL frees them for the next batch);
    // the two plugins alternate so that machine noise hits both alike.
    for batch in 0..RUNS / 25 {
        let mut pods = Vec::new();
        for i in 0..25 {
            let w = weft_node.pod(&format!("{batch}-{i}")).unwrap();
            let r = ref_node.pod(&format!("{batch}-{i}")).unwrap();
            pods.push((w, r));
        }
        for (i, (w, r)) in pods.iter().enumerate() {
            let id = format!("lat-{batch}-{i}");
            for (k, (node, plugin, conf, pod)) in [
                (&weft_node, "weft", &weft_conf, w),
                (&ref_node, "bridge", &ref_conf, r),
            ]
            .into_iter()
            .enumerate()
            {
                let path = netns_path(pod);
                let call = Call {
                    command: "ADD",
                    container_id: &id,
                    netns: &path,
                    ifname: "eth0",
                };
                let start = Instant::now();
                let out = node.invoke(plugin, &call, conf.as_bytes()).unwrap();
                samples[k].push(start.elapsed());
                out.ok(&format!("{plugin} ADD"));
            }
        }
        for (i, (w, r)) in pods.iter().enumerate() {
            let id = format!("lat-{batch}-{i}");
            for (node, plugin, conf, pod) in [
                (&weft_node, "weft", &weft_conf, w),
                (&ref_node, "bridge", &ref_conf, r),
            ] {
                let path = netns_path(pod);
                let call = Call {
                    command: "DEL",
                    container_id: &id,
                    netns: &path,
                    ifname: "eth0",
                };
                node.invoke(plugin, &call, conf.as_bytes())
                    .unwrap()
                    .ok(&format!("{plugin} DEL"));
            }
        }
    }
    let [weft, reference] = samples.map(median);
    println!("weft binary: {}", weft_bin().display());
    println!("ADD latency, median of {RUNS}:");
    println!(
        "  weft                  {:>8.2} ms",
        weft.as_secs_f64() * 1e3
    );
    println!(
        "  bridge + host-local   {:>8.2} ms",
        reference.as_secs_f64() * 1e3
    );
    println!(
        "  ratio weft/reference  {:>8.2}",
        weft.as_secs_f64() / reference.as_secs_f64()
    );
}
