//! The `weft` CNI plugin under pressure (issue 6, issue 9 item 6): 50 concurrent ADDs
//! and DELs on one node, and the plugin SIGKILLed in the middle of ADD followed by GC.

mod cni_support;

use std::collections::HashSet;
use std::time::Duration;

use cni_support::*;
use serde_json::{json, Value};

const PODS: usize = 50;

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn fifty_parallel_adds_then_dels() {
    if !weft_tests::require_root("fifty_parallel_adds_then_dels") {
        return;
    }
    let node = CniNode::standard("pa").unwrap();
    let conf = node.conf("1.0.0", json!({})).to_string();
    let pods: Vec<_> = (0..PODS)
        .map(|i| node.pod(&format!("{i}")).unwrap())
        .collect();
    let paths: Vec<String> = pods.iter().map(netns_path).collect();
    let ids: Vec<String> = (0..PODS).map(|i| format!("par-{i}")).collect();

    let run_all = |command: &str| -> Vec<std::process::Output> {
        let children: Vec<_> = (0..PODS)
            .map(|i| {
                let call = Call {
                    command,
                    container_id: &ids[i],
                    netns: &paths[i],
                    ifname: "eth0",
                };
                node.spawn("weft", &call, conf.as_bytes(), &[]).unwrap()
            })
            .collect();
        children
            .into_iter()
            .map(|c| c.wait_with_output().unwrap())
            .collect()
    };

    let outputs = run_all("ADD");
    let mut ips = HashSet::new();
    for (i, out) in outputs.iter().enumerate() {
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "ADD {i} failed: {stdout}");
        let v: Value = serde_json::from_str(&stdout).unwrap();
        let addr = v["ips"][0]["address"].as_str().unwrap().to_string();
        assert_eq!(pod_addr(&pods[i], "eth0").as_deref(), Some(addr.as_str()));
        ips.insert(addr);
    }
    assert_eq!(ips.len(), PODS, "duplicate addresses among {ips:?}");
    assert_eq!(node.allocations().len(), PODS);
    assert_eq!(node.host_veths().len(), PODS);

    for (i, out) in run_all("DEL").iter().enumerate() {
        assert!(
            out.status.success(),
            "DEL {i} failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    assert!(node.allocations().is_empty(), "{:?}", node.allocations());
    assert!(node.host_veths().is_empty(), "{:?}", node.host_veths());
}

/// The state letter of a process (`/proc/PID/stat` field 3): R, S, T (stopped), …
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

/// Stop-then-kill: start ADD with a crash point, wait until it stopped there, SIGKILL.
fn crash_add(node: &CniNode, call: &Call<'_>, conf: &[u8], point: &str) {
    let mut child = node
        .spawn("weft", call, conf, &[("WEFT_CNI_STOP_AT", point)])
        .unwrap();
    let pid = child.id();
    weft_tests::wait_until(
        &format!("weft ADD to stop {point}"),
        Duration::from_secs(10),
        || proc_state(pid) == Some('T'),
    )
    .unwrap();
    child.kill().unwrap();
    assert!(!child.wait().unwrap().success());
}

fn address_of(result: &Value) -> String {
    result["ips"][0]["address"].as_str().unwrap().to_string()
}

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn killed_mid_add_then_gc_leaks_nothing() {
    if !weft_tests::require_root("killed_mid_add_then_gc_leaks_nothing") {
        return;
    }
    const BURST: usize = 50;
    let node = CniNode::standard("ki").unwrap();
    let conf = node.conf("1.1.0", json!({}));
    let conf_bytes = conf.to_string();
    // Pods 0..BURST: the burst; then 2 crashes, 3 new pods, 1 retried crash.
    let pods: Vec<_> = (0..BURST + 6)
        .map(|i| node.pod(&format!("{i}")).unwrap())
        .collect();
    let paths: Vec<String> = pods.iter().map(netns_path).collect();
    let ids: Vec<String> = (0..BURST + 6).map(|i| format!("pod-{i}")).collect();
    let call = |i: usize| Call {
        command: "ADD",
        container_id: &ids[i],
        netns: &paths[i],
        ifname: "eth0",
    };

    // 50 concurrent ADDs in flight while the plugin is SIGKILLed in the middle of two
    // other ADDs (it stops itself at the crash point first, so the kill lands at a
    // known place rather than at a timer's whim).
    let burst: Vec<_> = (0..BURST)
        .map(|i| {
            node.spawn("weft", &call(i), conf_bytes.as_bytes(), &[])
                .unwrap()
        })
        .collect();
    crash_add(&node, &call(BURST), conf_bytes.as_bytes(), "after-ipam");
    crash_add(&node, &call(BURST + 1), conf_bytes.as_bytes(), "after-veth");
    let mut live_ips = Vec::new();
    for (i, child) in burst.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "burst ADD {i}: {stdout}");
        live_ips.push(address_of(&serde_json::from_str(&stdout).unwrap()));
    }
    // The crashes left their reservations (and one veth) behind, as a crash does.
    assert_eq!(
        node.allocations().len(),
        BURST + 2,
        "{:?}",
        node.allocations()
    );
    assert_eq!(node.host_veths().len(), BURST + 1);

    // The runtime garbage-collects with the attachments it knows.
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!(ids[..BURST]
        .iter()
        .map(|id| json!({"containerID": id, "ifname": "eth0"}))
        .collect::<Vec<_>>());
    let none = Call {
        command: "GC",
        container_id: "",
        netns: "",
        ifname: "",
    };
    node.weft(&none, &gc).ok("GC");
    assert_eq!(node.host_veths().len(), BURST, "{:?}", node.host_veths());
    assert!(
        !weft_tests::link::exists(&pods[BURST + 1], "eth0"),
        "the crashed pod's veth survived GC"
    );
    let mut want: Vec<String> = live_ips
        .iter()
        .map(|a| a.split('/').next().unwrap().to_string())
        .collect();
    want.sort();
    assert_eq!(
        node.allocations(),
        want,
        "GC must keep exactly the live pods' addresses"
    );

    // New pods (two of them in the crashed pods' namespaces) get addresses nobody holds.
    for i in BURST..BURST + 3 {
        live_ips.push(address_of(&node.weft(&call(i), &conf).ok("ADD after GC")));
    }
    let distinct: HashSet<_> = live_ips.iter().collect();
    assert_eq!(distinct.len(), live_ips.len(), "duplicate IP: {live_ips:?}");
    assert_eq!(node.allocations().len(), BURST + 3);

    // A retried ADD after a crash (the runtime retries the same attachment) succeeds
    // and reuses the reservation instead of taking a second address.
    let retry = call(BURST + 3);
    crash_add(&node, &retry, conf_bytes.as_bytes(), "after-veth");
    let reserved = node.allocations().len();
    let retried = node.weft(&retry, &conf).ok("retried ADD");
    assert_eq!(
        node.allocations().len(),
        reserved,
        "the retry took a second address"
    );
    assert!(pod_addr(&pods[BURST + 3], "eth0").is_some());
    assert!(!live_ips.contains(&address_of(&retried)));

    // DEL after the pod's namespace is gone.
    let mut pods = pods;
    drop(pods.remove(0));
    node.weft(
        &Call {
            command: "DEL",
            ..call(0)
        },
        &conf,
    )
    .ok("DEL after the netns is gone");
    node.weft(
        &Call {
            command: "DEL",
            ..retry
        },
        &conf,
    )
    .ok("DEL retry");
    assert_eq!(node.allocations().len(), BURST + 2);
    assert_eq!(node.host_veths().len(), BURST + 2);
}
