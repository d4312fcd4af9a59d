//! Issue 10 — `weftctl trace` on a mixed lab (two weftd nodes, one kernel-flannel node):
//! a healthy path lists every hop and exits 0, from a pod named by container ID, by
//! namespace or by IP; a path the test breaks (route deleted on a weft node or a kernel
//! node, fdb entry deleted on the kernel node, cni0 down, pod MTU above the overlay's)
//! exits 1 and names exactly that hop; once repaired, the trace is complete again.
//! Needs root.

use std::process::Output;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use weft_tests::lab::{Lab, LabSpec, HEALTHZ_ADDR};
use weft_tests::{bin_path, require_root, wait_for};

const REMOTE_HOPS: [&str; 10] = [
    "pod",
    "host-veth",
    "bridge",
    "route",
    "overlay",
    "lease",
    "underlay",
    "remote-node",
    "remote-bridge",
    "destination-pod",
];
const KERNEL_HOPS: [&str; 12] = [
    "pod",
    "host-veth",
    "bridge",
    "route",
    "overlay",
    "lease",
    "neighbour",
    "fdb",
    "underlay",
    "remote-node",
    "remote-bridge",
    "destination-pod",
];

/// `weftctl trace --json` run in node `n`'s namespace.
fn trace_output(lab: &Lab, n: usize, from: &str, to: &str, extra: &[&str]) -> Output {
    let node = lab.node(n).unwrap();
    lab.node_ns(n)
        .unwrap()
        .command(bin_path("weftctl").to_str().unwrap())
        .args(["trace", "--from", from, "--to", to, "--etcd-endpoints"])
        .arg(lab.etcd_endpoint())
        .arg("--subnet-file")
        .arg(node.subnet_file())
        .args(extra)
        .output()
        .expect("run weftctl trace")
}

/// The JSON report and the exit code.
fn trace(lab: &Lab, n: usize, from: &str, to: &str) -> (serde_json::Value, i32) {
    let out = trace_output(lab, n, from, to, &["--json"]);
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "weftctl trace --json printed no JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (report, out.status.code().unwrap_or(-1))
}

fn hops(report: &serde_json::Value) -> Vec<(String, String)> {
    report["hops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["hop"].as_str().unwrap().to_owned(),
                h["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Exit 0 and every one of `expected` hops, in order, ok.
fn assert_complete(report: &serde_json::Value, code: i32, expected: &[&str]) {
    let got = hops(report);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["complete"], true, "{report:#}");
    assert_eq!(
        got.iter().map(|(h, _)| h.as_str()).collect::<Vec<_>>(),
        expected,
        "{report:#}"
    );
    assert!(got.iter().all(|(_, s)| s == "ok"), "{report:#}");
}

/// Exit 1, the hops before `hop` ok, `hop` broken and last, and its reason mentions
/// `why`.
fn assert_broken_at(report: &serde_json::Value, code: i32, hop: &str, why: &str) {
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["complete"], false, "{report:#}");
    assert_eq!(report["broken"]["hop"], hop, "{report:#}");
    let reason = report["broken"]["reason"].as_str().unwrap();
    assert!(reason.contains(why), "reason {reason:?} lacks {why:?}");
    let got = hops(report);
    let (last, before) = got.split_last().unwrap();
    assert_eq!(last, &(hop.to_owned(), "broken".to_owned()), "{report:#}");
    assert!(before.iter().all(|(_, s)| s == "ok"), "{report:#}");
}

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn trace_lists_every_hop_and_names_the_broken_one() {
    if !require_root("trace_lists_every_hop_and_names_the_broken_one") {
        return;
    }
    let mut lab = Lab::start(LabSpec {
        kernel_nodes: 1,
        ..LabSpec::weft(3)
    })
    .unwrap();
    let a = lab.ctr_pod(1, "a").unwrap();
    let b = lab.add_pod(2, "b").unwrap();
    let c = lab.add_pod(3, "c").unwrap();
    let a2 = lab.add_pod(1, "a2").unwrap().to_string();
    let a_ns = lab.pod("a").unwrap().netns.clone();
    let (a, b, c) = (a.to_string(), b.to_string(), c.to_string());
    let b_subnet = lab.node_subnet(2).unwrap().0.to_string();
    let a_subnet = lab.node_subnet(1).unwrap().0.to_string();
    let n1 = lab.node_ns(1).unwrap();
    let n3 = lab.node_ns(3).unwrap();
    assert!(lab.ping("a", b.parse().unwrap()) && lab.ping("c", a.parse().unwrap()));

    // --- healthy paths ------------------------------------------------------------
    // From a container ID (ctr's CNI cache of node 1), weft → weft.
    let cache = lab.node(1).unwrap().dir.join("var-lib-cni");
    let container = format!("default-{a_ns}");
    let out = trace_output(
        &lab,
        1,
        &container,
        &b,
        &["--json", "--cni-cache-dir", cache.to_str().unwrap()],
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_complete(&report, out.status.code().unwrap(), &REMOTE_HOPS);
    assert_eq!(report["source_ip"], a.as_str());
    let lease_detail = report["hops"][5]["detail"].as_str().unwrap();
    assert!(
        lease_detail.contains("the local weftd has this peer"),
        "{lease_detail}"
    );
    // From the pod's IP, kernel-flannel → weft: the neighbour and fdb entries too.
    let (report, code) = trace(&lab, 3, &c, &a);
    assert_complete(&report, code, &KERNEL_HOPS);
    // From the pod's namespace, weft → kernel-flannel, as text.
    let out = trace_output(&lab, 1, &a_ns, &c, &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("flannel.1") && text.contains("path complete (10 hops)"),
        "{text}"
    );
    // Within one node: straight to the pod behind the same bridge.
    let (report, code) = trace(&lab, 1, &a, &a2);
    assert_complete(
        &report,
        code,
        &["pod", "host-veth", "bridge", "route", "destination-pod"],
    );

    // --- a weft node's route deleted (weftd paused so it cannot put it back) --------
    let pid = lab.weftd_pid(1).expect("weftd on node 1").pid as i32;
    kill(Pid::from_raw(pid), Signal::SIGSTOP).unwrap();
    n1.ip(&["route", "del", &b_subnet]).unwrap();
    let (report, code) = trace(&lab, 1, &a, &b);
    // A less specific route (like a node's default route) must not hide the missing one.
    n1.ip(&["route", "add", "10.244.0.0/16", "via", "192.0.2.254"])
        .unwrap();
    let (covered, covered_code) = trace(&lab, 1, &a, &b);
    n1.ip(&["route", "del", "10.244.0.0/16"]).unwrap();
    kill(Pid::from_raw(pid), Signal::SIGCONT).unwrap();
    assert_broken_at(&report, code, "route", "no route to");
    assert_broken_at(&covered, covered_code, "route", "not the overlay");
    // weftd's reconcile puts it back, and counts the fix.
    wait_for("the route to come back", Duration::from_secs(20), || {
        (trace(&lab, 1, &a, &b).1 == 0).then_some(())
    })
    .unwrap();
    let (_, page) = n1.http_get(HEALTHZ_ADDR, "/metrics").unwrap();
    let fixes: f64 = page
        .lines()
        .find_map(|l| l.strip_prefix("weft_route_reconcile_fixes_total "))
        .expect("weft_route_reconcile_fixes_total")
        .parse()
        .unwrap();
    assert!(fixes >= 1.0, "{page}");

    // --- the kernel node's route deleted -------------------------------------------
    n3.ip(&["route", "del", &a_subnet]).unwrap();
    let (report, code) = trace(&lab, 3, &c, &a);
    assert_broken_at(&report, code, "route", "no route to");
    lab.sync_kernel_nodes().unwrap();
    let (report, code) = trace(&lab, 3, &c, &a);
    assert_complete(&report, code, &KERNEL_HOPS);

    // --- the kernel node's fdb entry for node 1's VTEP deleted ----------------------
    let vtep_mac = lab
        .leases()
        .unwrap()
        .into_iter()
        .find(|l| l.public_ip == lab.node(1).unwrap().ip)
        .and_then(|l| l.vtep_mac)
        .expect("node 1's VtepMAC")
        .to_lowercase();
    n3.run(
        "bridge",
        &["fdb", "del", &vtep_mac, "dev", "flannel.1", "self"],
    )
    .unwrap();
    let (report, code) = trace(&lab, 3, &c, &a);
    assert_broken_at(&report, code, "fdb", &vtep_mac);
    lab.sync_kernel_nodes().unwrap();
    let (report, code) = trace(&lab, 3, &c, &a);
    assert_complete(&report, code, &KERNEL_HOPS);

    // --- cni0 down on node 1 (readiness says so too) --------------------------------
    n1.ip(&["link", "set", "cni0", "down"]).unwrap();
    let (report, code) = trace(&lab, 1, &a, &b);
    let readyz = n1.http_get(HEALTHZ_ADDR, "/readyz").unwrap();
    n1.ip(&["link", "set", "cni0", "up"]).unwrap();
    assert_broken_at(&report, code, "bridge", "cni0 is down");
    assert_eq!(readyz.0, 503, "{readyz:?}");
    assert!(readyz.1.contains("cni0"), "{readyz:?}");
    wait_for(
        "the path through cni0 again",
        Duration::from_secs(10),
        || (trace(&lab, 1, &a, &b).1 == 0).then_some(()),
    )
    .unwrap();

    // --- the pod's MTU above the overlay's ------------------------------------------
    lab.exec("a", &["ip", "link", "set", "eth0", "mtu", "1500"])
        .unwrap();
    let (report, code) = trace(&lab, 1, &a, &b);
    lab.exec("a", &["ip", "link", "set", "eth0", "mtu", "1450"])
        .unwrap();
    assert_broken_at(&report, code, "overlay", "MTU mismatch");

    // --- outside the cluster network: masquerading --------------------------------
    // A lab-only destination beyond the underlay bridge (nothing routes further).
    let outside = "198.51.100.7";
    n1.ip(&["route", "add", "198.51.100.0/24", "via", "192.0.2.254"])
        .unwrap();
    // subnet.env says FLANNEL_IPMASQ=false: not expected, so not checked.
    let (report, code) = trace(&lab, 1, &a, outside);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(
        hops(&report),
        [
            ("pod", "ok"),
            ("host-veth", "ok"),
            ("bridge", "ok"),
            ("route", "ok"),
            ("masquerade", "skipped"),
            ("egress", "ok")
        ]
        .map(|(h, s)| (h.to_owned(), s.to_owned())),
        "{report:#}"
    );
    // Expected (--ip-masq) but weftd runs without it: that hop breaks.
    let out = trace_output(&lab, 1, &a, outside, &["--json", "--ip-masq"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_broken_at(
        &report,
        out.status.code().unwrap(),
        "masquerade",
        "no masquerade rule",
    );
    // With weft's rules in place the hop is ok.
    let network = lab.state().network;
    let subnet = lab.node_subnet(1).unwrap().0;
    let rules = weft_daemon::masq::ruleset(network, subnet);
    n1.sh(&format!("nft -f - <<'EOF'\n{rules}EOF\n")).unwrap();
    let out = trace_output(&lab, 1, &a, outside, &["--json", "--ip-masq"]);
    n1.sh(&format!(
        "nft -f - <<'EOF'\n{}EOF\n",
        weft_daemon::masq::removal()
    ))
    .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{report:#}");
    assert_eq!(hops(&report)[4], ("masquerade".into(), "ok".into()));
    n1.ip(&["route", "del", "198.51.100.0/24"]).unwrap();

    // --- a source that does not exist -----------------------------------------------
    let out = trace_output(&lab, 1, "no-such-pod", &b, &[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--from no-such-pod"), "{stderr}");
}
