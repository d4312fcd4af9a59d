//! Issue 17, point 10 — a weftd restarted while etcd is down. weftd keeps the net-conf,
//! its lease and the peers in `--state-dir/last-known.json`; started without etcd it
//! brings the data plane up from that file, says so (`/readyz` 503 "degraded",
//! `/v1/status` `degraded` with the peers' time), and once etcd answers keeps its
//! subnet and etcd lease as they are, takes etcd's peers and does not restart the data
//! plane. Also: both nodes restarted; etcd black-holed rather than refusing (weftd
//! waits 0.5 s, then starts from its state); a subnet taken while the node was down
//! (the restored data plane is restarted with etcd's new lease); a garbled or foreign
//! file, ignored with a log line naming it while weftd waits for etcd as before.

mod reliability_support;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use reliability_support::{lease_of, log_text, readyz, require_binaries, status, view};
use weft_tests::lab::kernel::{lease_key, FlannelLease};
use weft_tests::lab::{Lab, LabSpec, ETCD_PREFIX};
use weft_tests::{require_root, wait_for, wait_until};

/// From the spawn of weftd to pods reaching each other across the nodes.
const REACH_DEADLINE: Duration = Duration::from_secs(2);

fn last_known_path(lab: &Lab, n: usize) -> PathBuf {
    lab.node(n).unwrap().state_dir().join("last-known.json")
}

fn last_known(lab: &Lab, n: usize) -> Option<serde_json::Value> {
    serde_json::from_slice(&std::fs::read(last_known_path(lab, n)).ok()?).ok()
}

/// Waits until node `n`'s `last-known.json` lists `peer` among its peers.
fn wait_last_known_lists(lab: &Lab, n: usize, peer: ipnet::Ipv4Net) -> serde_json::Value {
    let peer = peer.to_string();
    wait_for(
        &format!("node {n}'s last-known.json to list peer {peer}"),
        Duration::from_secs(15),
        || {
            let saved = last_known(lab, n)?;
            saved["peers"]
                .as_array()?
                .iter()
                .any(|p| p["subnet"] == peer.as_str())
                .then_some(saved)
        },
    )
    .unwrap()
}

/// The etcd lease ID attached to `key`.
fn lease_id(lab: &Lab, key: &str) -> Option<i64> {
    let out = lab.etcd().etcdctl(&["get", key, "-w", "json"]).ok()?;
    let v: serde_json::Value = serde_json::from_str(&out).ok()?;
    v["kvs"].get(0)?["lease"].as_i64()
}

/// One ping from `from` to `to` that must be answered within `deadline` of its start
/// (a probe every 100 ms until then).
fn ping_within(lab: &Lab, from: &str, to: Ipv4Addr, deadline: Duration) -> bool {
    let secs = deadline.as_secs_f64().ceil().max(1.0).to_string();
    lab.exec(
        from,
        &["ping", "-c1", "-w", &secs, "-i0.1", "-q", &to.to_string()],
    )
    .is_ok()
}

/// Times "data plane up" appears in `log` after byte `from`.
fn dataplane_starts(log: &str, from: usize) -> usize {
    log.get(from..)
        .unwrap_or("")
        .matches("weft_daemon::dataplane: data plane up")
        .count()
}

/// Starts weftd on node `n` and asserts that pods `a` (on node 1) and `b` (on node 2)
/// reach each other within [`REACH_DEADLINE`] of the spawn. Returns the time it took.
fn start_and_reach(lab: &mut Lab, n: usize, a: Ipv4Addr, b: Ipv4Addr) -> Duration {
    let spawned = Instant::now();
    lab.start_weftd(n).unwrap();
    let a_to_b = ping_within(lab, "a", b, REACH_DEADLINE);
    let reached = spawned.elapsed();
    assert!(
        a_to_b && reached <= REACH_DEADLINE + Duration::from_millis(200),
        "node {n}: pod a did not reach pod b within {REACH_DEADLINE:?} of the start of \
         weftd without etcd ({reached:?}); log:\n{}",
        reliability_support::log_tail(lab, n, 20)
    );
    assert!(
        ping_within(lab, "b", a, Duration::from_secs(1)),
        "node {n}: pod b does not reach pod a"
    );
    reached
}

/// Asserts node `n` reports degraded: `/readyz` 503 naming it and the peers' time,
/// `/v1/status` with `degraded` (subnet, peers as of the saved file) and the peer.
fn assert_degraded(lab: &Lab, n: usize, subnet: ipnet::Ipv4Net, peer: ipnet::Ipv4Net, as_of: u64) {
    let (code, body) = readyz(lab, n).unwrap();
    assert_eq!(code, 503, "node {n}: /readyz while degraded: {body}");
    assert!(
        body.contains("degraded")
            && body.contains("peers as of")
            && body.contains("last-known.json"),
        "node {n}: /readyz names the degraded state: {body}"
    );
    let s = status(lab, n).unwrap();
    assert_eq!(s["ready"], false, "{s}");
    assert_eq!(s["degraded"]["subnet"], subnet.to_string(), "{s}");
    assert_eq!(s["degraded"]["peers_as_of_unix"], as_of, "{s}");
    assert!(
        s["degraded"]["peers_as_of"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{s}"
    );
    assert_eq!(s["etcd"]["state"], "unreachable", "{s}");
    assert!(
        s["peers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["subnet"] == peer.to_string().as_str()),
        "node {n}: the saved peer is in /v1/status: {s}"
    );
}

/// A two-node weft lab with pod `a` on node 1 and pod `b` on node 2 that reach each
/// other, and their addresses.
fn two_nodes_whose_pods_reach_each_other() -> (Lab, Ipv4Addr, Ipv4Addr) {
    let mut lab = Lab::start(LabSpec::weft(2)).unwrap();
    let a = lab.add_pod(1, "a").unwrap();
    let b = lab.add_pod(2, "b").unwrap();
    wait_until(
        "pods a and b to reach each other",
        Duration::from_secs(15),
        || lab.ping("a", b) && lab.ping("b", a),
    )
    .unwrap();
    (lab, a, b)
}

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn weftd_restarted_while_etcd_is_down_forwards_from_its_last_known_state_and_reconciles() {
    if !require_root(
        "weftd_restarted_while_etcd_is_down_forwards_from_its_last_known_state_and_reconciles",
    ) {
        return;
    }
    require_binaries(&["weftd"]);
    let (mut lab, a, b) = two_nodes_whose_pods_reach_each_other();
    let (subnet1, _) = lease_of(&lab, 1).unwrap();
    let (subnet2, _) = lease_of(&lab, 2).unwrap();
    let key1 = lease_key(ETCD_PREFIX, subnet1);
    let id_before = lease_id(&lab, &key1).unwrap();
    let saved = wait_last_known_lists(&lab, 1, subnet2);
    assert_eq!(saved["subnet"], subnet1.to_string());
    assert_eq!(saved["lease_id"], id_before, "the saved lease is etcd's");
    let as_of = saved["written_unix"].as_u64().unwrap();
    let view_before = view(&lab, 1);

    lab.etcd_mut().stop();

    // kill -9: the data plane dies with the process; without etcd it comes back from
    // the saved state.
    lab.kill9_weftd(1).unwrap();
    assert!(
        !ping_within(&lab, "a", b, Duration::from_secs(1)),
        "with weftd dead, node 1's pods must be cut off (else this test proves nothing)"
    );
    let log_from = log_text(&lab, 1).len();
    let after_kill = start_and_reach(&mut lab, 1, a, b);
    assert_degraded(&lab, 1, subnet1, subnet2, as_of);
    assert_eq!(
        view(&lab, 1),
        view_before,
        "same devices, routes and subnet.env"
    );

    // SIGTERM, then start: the same.
    lab.stop_weftd(1).unwrap();
    let log_from_term = log_text(&lab, 1).len();
    let after_term = start_and_reach(&mut lab, 1, a, b);
    assert_degraded(&lab, 1, subnet1, subnet2, as_of);
    assert_eq!(
        last_known(&lab, 1).unwrap()["written_unix"],
        as_of,
        "running from the saved state does not rewrite it as fresh"
    );
    assert!(
        log_text(&lab, 1)[log_from..].contains("from the last known state"),
        "the log says where the data plane came from"
    );

    // etcd returns: the same lease is kept, etcd's peers taken, the data plane stays.
    lab.etcd_mut().restart().unwrap();
    let s = wait_for(
        "node 1 to reconcile with etcd",
        Duration::from_secs(20),
        || {
            let s = status(&lab, 1).ok()?;
            (readyz(&lab, 1).ok()?.0 == 200 && s.get("degraded").is_none()).then_some(s)
        },
    )
    .unwrap();
    assert_eq!(s["lease"]["state"], "held", "{s}");
    assert_eq!(
        s["lease"]["subnet"],
        subnet1.to_string(),
        "same subnet: {s}"
    );
    assert_eq!(s["lease"]["lease_id"], id_before, "same etcd lease: {s}");
    assert_eq!(
        lease_id(&lab, &key1),
        Some(id_before),
        "the lease in etcd is unchanged"
    );
    assert_eq!(lease_of(&lab, 1).unwrap().0, subnet1);
    let log = log_text(&lab, 1);
    assert_eq!(
        dataplane_starts(&log, log_from_term),
        1,
        "reconciling with etcd did not restart the data plane; log:\n{}",
        &log[log_from_term..]
    );
    assert!(dataplane_starts(&log, log_from) >= 2);
    assert!(lab.ping("a", b) && lab.ping("b", a));
    assert_eq!(view(&lab, 1), view_before);
    println!(
        "restart without etcd: pods reached each other {:.0} ms after the spawn of weftd \
         (kill -9), {:.0} ms (SIGTERM); reconciled with etcd: same subnet {subnet1}, same \
         etcd lease {id_before:x}, one data-plane start",
        after_kill.as_secs_f64() * 1e3,
        after_term.as_secs_f64() * 1e3,
    );
}

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn both_nodes_restarted_while_etcd_is_down_still_reach_each_other() {
    if !require_root("both_nodes_restarted_while_etcd_is_down_still_reach_each_other") {
        return;
    }
    require_binaries(&["weftd"]);
    let (mut lab, a, b) = two_nodes_whose_pods_reach_each_other();
    let (subnet1, _) = lease_of(&lab, 1).unwrap();
    let (subnet2, _) = lease_of(&lab, 2).unwrap();
    wait_last_known_lists(&lab, 1, subnet2);
    wait_last_known_lists(&lab, 2, subnet1);

    // A peer that appears right before a SIGTERM is in the file after it: the pending
    // write is not lost to the debounce.
    let newcomer: ipnet::Ipv4Net = "10.244.250.0/24".parse().unwrap();
    let lease = lab.etcd().lease_grant(600).unwrap();
    lab.etcd()
        .put_with_lease(
            &lease_key(ETCD_PREFIX, newcomer),
            &FlannelLease::vxlan_value(Ipv4Addr::new(192, 0, 2, 99), 1, "02:00:00:00:00:99"),
            &lease,
        )
        .unwrap();
    let node1 = lab.node_ns(1).unwrap();
    wait_until(
        "node 1 to route the newcomer",
        Duration::from_secs(10),
        || {
            reliability_support::routes_via(&node1, "weft.1")
                .iter()
                .any(|r| r.starts_with("10.244.250.0/24 "))
        },
    )
    .unwrap();
    lab.stop_weftd(1).unwrap();
    let saved = last_known(&lab, 1).unwrap();
    assert!(
        saved["peers"].to_string().contains("10.244.250.0/24"),
        "written on SIGTERM: {saved}"
    );
    lab.start_weftd(1).unwrap();
    lab.wait_weftd_ready(1).unwrap();

    lab.etcd_mut().stop();
    lab.kill9_weftd(1).unwrap();
    lab.kill9_weftd(2).unwrap();
    lab.start_weftd(1).unwrap();
    start_and_reach(&mut lab, 2, a, b);
    for (n, own, peer) in [(1, subnet1, subnet2), (2, subnet2, subnet1)] {
        let s = status(&lab, n).unwrap();
        assert_eq!(s["degraded"]["subnet"], own.to_string(), "node {n}: {s}");
        assert!(
            s["peers"].to_string().contains(&peer.to_string()),
            "node {n}: {s}"
        );
    }

    lab.etcd_mut().restart().unwrap();
    for n in [1, 2] {
        lab.wait_weftd_ready(n).unwrap();
    }
    assert_eq!(lease_of(&lab, 1).unwrap().0, subnet1);
    assert_eq!(lease_of(&lab, 2).unwrap().0, subnet2);
    assert!(lab.ping("a", b) && lab.ping("b", a));
}

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn garbled_or_foreign_last_known_state_is_ignored_and_weftd_waits_for_etcd() {
    if !require_root("garbled_or_foreign_last_known_state_is_ignored_and_weftd_waits_for_etcd") {
        return;
    }
    require_binaries(&["weftd"]);
    let (mut lab, a, b) = two_nodes_whose_pods_reach_each_other();
    let (subnet1, _) = lease_of(&lab, 1).unwrap();
    let (subnet2, _) = lease_of(&lab, 2).unwrap();
    wait_last_known_lists(&lab, 2, subnet1);
    lab.etcd_mut().stop();
    let path = last_known_path(&lab, 1);

    let cases: [(&str, Vec<u8>, String); 2] = [
        (
            "garbled",
            b"{\"netconf\": 42, garbage".to_vec(),
            "it is not valid JSON".into(),
        ),
        (
            "foreign (node 2's)",
            std::fs::read(last_known_path(&lab, 2)).unwrap(),
            format!(
                "it was written for PublicIP {}, but this node's PublicIP is {} now",
                lab.node(2).unwrap().ip,
                lab.node(1).unwrap().ip
            ),
        ),
    ];
    for (what, content, reason) in cases {
        lab.stop_weftd(1).unwrap();
        std::fs::write(&path, &content).unwrap();
        let log_from = log_text(&lab, 1).len();
        lab.start_weftd(1).unwrap();
        let expected = format!("ignoring the last known state {}: {reason}", path.display());
        wait_until(
            &format!("weftd to log that it ignores the {what} state"),
            Duration::from_secs(10),
            || log_text(&lab, 1)[log_from..].contains(&expected),
        )
        .unwrap_or_else(|e| panic!("{e}; log:\n{}", &log_text(&lab, 1)[log_from..]));
        // The old way: waiting for etcd, no data plane, pods cut off.
        let s = wait_for(
            "node 1 to report that it waits for etcd",
            Duration::from_secs(10),
            || {
                let s = status(&lab, 1).ok()?;
                (s["lease"]["state"] == "waiting_for_etcd").then_some(s)
            },
        )
        .unwrap();
        assert!(s.get("degraded").is_none(), "{what}: {s}");
        assert!(s.get("devices").is_none(), "{what}: no data plane: {s}");
        assert!(
            !ping_within(&lab, "a", b, Duration::from_secs(1)),
            "{what}: no data plane from an unusable state"
        );
        assert!(lab.weftd_pid(1).is_some(), "{what}: not fatal");
    }

    // etcd returns: the node comes up the usual way and writes a good state again.
    lab.etcd_mut().restart().unwrap();
    lab.wait_weftd_ready(1).unwrap();
    assert_eq!(lease_of(&lab, 1).unwrap().0, subnet1);
    let saved = wait_last_known_lists(&lab, 1, subnet2);
    assert_eq!(saved["public_ip"], lab.node(1).unwrap().ip.to_string());
    assert_eq!(saved["subnet"], subnet1.to_string());
    assert!(lab.ping("a", b) && lab.ping("b", a));
}

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn subnet_taken_while_the_node_was_down_restarts_the_restored_data_plane_with_etcds_lease() {
    if !require_root(
        "subnet_taken_while_the_node_was_down_restarts_the_restored_data_plane_with_etcds_lease",
    ) {
        return;
    }
    require_binaries(&["weftd"]);
    let (mut lab, _, b) = two_nodes_whose_pods_reach_each_other();
    let (subnet1, _) = lease_of(&lab, 1).unwrap();
    let (subnet2, _) = lease_of(&lab, 2).unwrap();
    wait_last_known_lists(&lab, 1, subnet2);

    // While node 1 is down, another node takes its subnet.
    lab.kill9_weftd(1).unwrap();
    let key1 = lease_key(ETCD_PREFIX, subnet1);
    lab.etcd().etcdctl(&["del", &key1]).unwrap();
    let other = lab.etcd().lease_grant(600).unwrap();
    lab.etcd()
        .put_with_lease(
            &key1,
            &FlannelLease::vxlan_value(Ipv4Addr::new(192, 0, 2, 99), 1, "02:00:00:00:00:99"),
            &other,
        )
        .unwrap();
    lab.etcd_mut().stop();
    let log_from = log_text(&lab, 1).len();
    lab.start_weftd(1).unwrap();
    let s = wait_for("node 1 to run degraded", Duration::from_secs(10), || {
        status(&lab, 1).ok().filter(|s| s.get("degraded").is_some())
    })
    .unwrap();
    assert_eq!(s["degraded"]["subnet"], subnet1.to_string(), "{s}");

    // etcd says the subnet is not ours: the data plane restarts with etcd's new lease.
    lab.etcd_mut().restart().unwrap();
    lab.wait_weftd_ready(1).unwrap();
    let (new_subnet, _) = lease_of(&lab, 1).unwrap();
    assert_ne!(new_subnet, subnet1, "the taken subnet is not fought over");
    assert_eq!(
        lab.node_subnet(1).unwrap().0,
        new_subnet,
        "subnet.env follows"
    );
    let s = status(&lab, 1).unwrap();
    assert!(s.get("degraded").is_none(), "{s}");
    assert_eq!(s["lease"]["subnet"], new_subnet.to_string(), "{s}");
    let log = log_text(&lab, 1);
    assert_eq!(
        dataplane_starts(&log, log_from),
        2,
        "the restored data plane was restarted once, with the new lease; log:\n{}",
        &log[log_from..]
    );
    let saved = wait_for(
        "last-known.json to hold the new lease",
        Duration::from_secs(10),
        || last_known(&lab, 1).filter(|s| s["subnet"] == new_subnet.to_string().as_str()),
    )
    .unwrap();
    assert!(saved["peers"].to_string().contains(&subnet2.to_string()));
    // A pod started now, in the new subnet, reaches node 2's pod.
    let c = lab.add_pod(1, "c").unwrap();
    assert!(new_subnet.contains(&c), "{c} in {new_subnet}");
    wait_until("pod c to reach pod b", Duration::from_secs(15), || {
        lab.ping("c", b) && lab.ping("b", c)
    })
    .unwrap();
}

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn etcd_that_does_not_answer_at_all_is_waited_for_only_briefly() {
    if !require_root("etcd_that_does_not_answer_at_all_is_waited_for_only_briefly") {
        return;
    }
    require_binaries(&["weftd"]);
    let (mut lab, a, b) = two_nodes_whose_pods_reach_each_other();
    let (subnet1, _) = lease_of(&lab, 1).unwrap();
    let (subnet2, _) = lease_of(&lab, 2).unwrap();
    wait_last_known_lists(&lab, 1, subnet2);

    // etcd runs, but node 1's packets to it vanish (no refusal to react to): weftd
    // gives etcd a moment, then starts from its state.
    lab.kill9_weftd(1).unwrap();
    let n1 = lab.node_ns(1).unwrap();
    n1.sh(
        "nft -f - <<'EOF'\ntable ip weft_test_blackhole {\n  chain out {\n    type filter hook output priority 0;\n    ip daddr 192.0.2.254 tcp dport 2379 drop\n  }\n}\nEOF\n",
    )
    .unwrap();
    let reached = start_and_reach(&mut lab, 1, a, b);
    let s = status(&lab, 1).unwrap();
    assert_eq!(s["degraded"]["subnet"], subnet1.to_string(), "{s}");
    println!(
        "etcd black-holed: pods reached each other {:.0} ms after the spawn of weftd",
        reached.as_secs_f64() * 1e3
    );

    n1.run("nft", &["delete", "table", "ip", "weft_test_blackhole"])
        .unwrap();
    wait_until(
        "node 1 to reconcile once etcd answers",
        Duration::from_secs(40),
        || {
            status(&lab, 1).is_ok_and(|s| s.get("degraded").is_none())
                && readyz(&lab, 1).is_ok_and(|(code, _)| code == 200)
        },
    )
    .unwrap();
    assert_eq!(lease_of(&lab, 1).unwrap().0, subnet1);
    assert!(lab.ping("a", b) && lab.ping("b", a));
}
