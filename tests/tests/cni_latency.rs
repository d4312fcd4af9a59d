//! ADD latency of `weft` vs the reference `bridge` + `host-local` for the same network
//! (same subnet, gateway, MTU, default route), median of 100 each. A measurement, not
//! a test: it asserts nothing about speed and is ignored by default.
//!
//! ```text
//! cargo build --release -p weft-cni
//! WEFT_BIN_DIR=target/release cargo test --release -p weft-tests --test cni_latency -- --ignored --nocapture
//! ```

mod cni_support;

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cni_support::*;
use serde_json::json;
use weft_tests::netns::Netns;

const RUNS: usize = 100;

/// Run one plugin command from a thread inside the node's namespace; its wall time.
fn run_in_node(
    node: &CniNode,
    plugin: &str,
    command: &str,
    id: &str,
    netns: &str,
    conf: &str,
) -> Duration {
    let node_ns = std::fs::File::open(format!("/run/netns/{}", node.ns.name())).unwrap();
    let program = node.cni_path.join(plugin);
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                nix::sched::setns(&node_ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                let start = Instant::now();
                let mut child = Command::new(&program)
                    .env("CNI_COMMAND", command)
                    .env("CNI_CONTAINERID", id)
                    .env("CNI_NETNS", netns)
                    .env("CNI_IFNAME", "eth0")
                    .env("CNI_PATH", &node.cni_path)
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap();
                child
                    .stdin
                    .take()
                    .unwrap()
                    .write_all(conf.as_bytes())
                    .unwrap();
                let out = child.wait_with_output().unwrap();
                let elapsed = start.elapsed();
                assert!(
                    out.status.success(),
                    "{plugin} {command}: {}",
                    String::from_utf8_lossy(&out.stdout)
                );
                elapsed
            })
            .join()
            .unwrap()
    })
}

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

    // The plugins are started from a thread that has entered the node's namespace (a
    // child inherits it), so std spawns them with posix_spawn; a pre_exec hook would
    // force a fork of this large test process, which costs more than the plugins.
    let nodes = [
        (&weft_node, "weft", &weft_conf),
        (&ref_node, "bridge", &ref_conf),
    ];
    let mut samples = [Vec::new(), Vec::new()];
    // Batches of 25 pods (a /24 holds them all, and DEL frees them for the next batch);
    // the two plugins alternate so that machine noise hits both alike.
    for batch in 0..RUNS / 25 {
        let pods: Vec<[Netns; 2]> = (0..25)
            .map(|i| nodes.map(|(node, _, _)| node.pod(&format!("{batch}-{i}")).unwrap()))
            .collect();
        for command in ["ADD", "DEL"] {
            for (i, pair) in pods.iter().enumerate() {
                let id = format!("lat-{batch}-{i}");
                for (k, ((node, plugin, conf), pod)) in nodes.iter().zip(pair).enumerate() {
                    let elapsed = run_in_node(node, plugin, command, &id, &netns_path(pod), conf);
                    if command == "ADD" {
                        samples[k].push(elapsed);
                    }
                }
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
