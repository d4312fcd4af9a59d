//! The `weft` CNI plugin under pressure (issue 6, issue 9 item 6): 50 concurrent ADDs
//! and DELs on one node, and the plugin SIGKILLed in the middle of ADD followed by GC.

mod cni_support;

use std::collections::HashSet;
use std::time::Duration;

use cni_support::*;
use serde_json::{json, Value};

const PODS: usize = 50;

#[test]
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

#[test]
fn killed_mid_add_then_gc_leaks_nothing() {
    if !weft_tests::require_root("killed_mid_add_then_gc_leaks_nothing") {
        return;
    }
    let node = CniNode::standard("ki").unwrap();
    let conf = node.conf("1.1.0", json!({}));
    let conf_bytes = conf.to_string();
    let pods: Vec<_> = (0..8).map(|i| node.pod(&format!("{i}")).unwrap()).collect();
    let paths: Vec<String> = pods.iter().map(netns_path).collect();
    let add = |i: usize, id: &'static str| {
        let call = Call {
            command: "ADD",
            container_id: id,
            netns: &paths[i],
            ifname: "eth0",
        };
        node.weft(&call, &conf).ok(&format!("ADD {id}"))
    };

    // Three healthy pods.
    let live = ["live-0", "live-1", "live-2"];
    let mut live_ips: Vec<String> = live
        .iter()
        .enumerate()
        .map(|(i, id)| {
            add(i, id)["ips"][0]["address"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();

    // SIGKILL the plugin at each crash point of ADD (it stops itself there first, so
    // the kill lands at a known place rather than at a timer's whim).
    let crashes = [
        ("crash-ipam", "after-ipam", 3),
        ("crash-veth", "after-veth", 4),
    ];
    for (id, point, pod) in crashes {
        let call = Call {
            command: "ADD",
            container_id: id,
            netns: &paths[pod],
            ifname: "eth0",
        };
        let mut child = node
            .spawn(
                "weft",
                &call,
                conf_bytes.as_bytes(),
                &[("WEFT_CNI_STOP_AT", point)],
            )
            .unwrap();
        let pid = child.id();
        weft_tests::wait_until(
            &format!("weft ADD to stop {point}"),
            Duration::from_secs(10),
            || proc_state(pid) == Some('T'),
        )
        .unwrap();
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert!(!status.success());
    }
    // The crashes left their reservations (and one veth) behind, as a crash does.
    assert_eq!(node.allocations().len(), 5, "{:?}", node.allocations());
    assert_eq!(node.host_veths().len(), 4, "{:?}", node.host_veths());

    // The runtime garbage-collects with the attachments it knows.
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!(live
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
    assert_eq!(node.allocations().len(), 3, "{:?}", node.allocations());
    assert_eq!(node.host_veths().len(), 3, "{:?}", node.host_veths());
    assert!(
        !weft_tests::link::exists(&pods[4], "eth0"),
        "the crashed pod's veth survived GC"
    );
    let mut remaining = node.allocations();
    remaining.sort();
    let mut want: Vec<String> = live_ips
        .iter()
        .map(|a| a.split('/').next().unwrap().to_string())
        .collect();
    want.sort();
    assert_eq!(remaining, want);

    // New pods (reusing the crashed pods' namespaces) get addresses nobody holds.
    for (i, id) in [(3, "new-3"), (4, "new-4"), (5, "new-5")] {
        live_ips.push(
            add(i, id)["ips"][0]["address"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let distinct: HashSet<_> = live_ips.iter().collect();
    assert_eq!(distinct.len(), live_ips.len(), "duplicate IP: {live_ips:?}");
    assert_eq!(node.allocations().len(), 6);

    // A retried ADD after a crash (the runtime retries the same attachment) succeeds
    // and reuses the reservation instead of taking a second address.
    let call = Call {
        command: "ADD",
        container_id: "retry",
        netns: &paths[6],
        ifname: "eth0",
    };
    let mut child = node
        .spawn(
            "weft",
            &call,
            conf_bytes.as_bytes(),
            &[("WEFT_CNI_STOP_AT", "after-veth")],
        )
        .unwrap();
    let pid = child.id();
    weft_tests::wait_until("weft ADD to stop", Duration::from_secs(10), || {
        proc_state(pid) == Some('T')
    })
    .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let reserved = node.allocations().len();
    let retried = node.weft(&call, &conf).ok("retried ADD");
    assert_eq!(
        node.allocations().len(),
        reserved,
        "the retry took a second address"
    );
    assert!(pod_addr(&pods[6], "eth0").is_some());
    assert!(!live_ips.contains(&retried["ips"][0]["address"].as_str().unwrap().to_string()));

    // DEL after the pod's namespace is gone.
    let mut pods = pods;
    let gone = pods.remove(0);
    drop(gone);
    let del = Call {
        command: "DEL",
        container_id: "live-0",
        netns: &paths[0],
        ifname: "eth0",
    };
    node.weft(&del, &conf).ok("DEL after the netns is gone");
    node.weft(
        &Call {
            container_id: "retry",
            netns: &paths[6],
            ..del.clone()
        },
        &conf,
    )
    .ok("DEL retry");
    assert_eq!(node.allocations().len(), 5);
    assert_eq!(node.host_veths().len(), 5);
}
