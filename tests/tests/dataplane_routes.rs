//! Issue 17, point 5 — routes that respect foreign ones, on a real weftd (leases in a
//! real etcd, routes in the node's namespace):
//!
//! * a route to a peer's subnet that weft did not install (an admin's `ip route add ...
//!   proto static` before the peer appeared, or `ip route replace ... proto boot` over
//!   weft's own) is left alone, counted once as a conflict in `/metrics` and listed in
//!   `/v1/status`; once it is deleted, weft's route goes in at the next reconcile;
//! * one route change the kernel refuses (a DirectRouting peer's, via the underlay
//!   while the underlay device is down: `ENETDOWN`) does not stop the rest of the pass
//!   (a tunnelled peer's route still goes in), and is counted and listed. (The TUN
//!   device cannot serve here: weftd sets it up again within a reconcile.)

use std::time::Duration;

use weft_tests::lab::{Lab, LabSpec, ETCD_PREFIX, HEALTHZ_ADDR};
use weft_tests::netns::Netns;
use weft_tests::{require_root, wait_for, wait_until};

/// Long enough for a few route reconciles (every 2 s) on a busy machine.
const RECONCILE_WAIT: Duration = Duration::from_secs(15);

/// A peer lease (a reservation: no etcd lease) in flannel's schema.
fn put_peer(lab: &Lab, subnet: &str, public_ip: &str, mac_last: u8) {
    let key = format!("{ETCD_PREFIX}/subnets/{}", subnet.replace('/', "-"));
    let value = format!(
        r#"{{"PublicIP":"{public_ip}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"02:00:00:00:00:{mac_last:02x}"}}}}"#
    );
    lab.etcd().put(&key, &value).unwrap();
}

fn metric(ns: &Netns, name: &str) -> f64 {
    *ns.metrics()
        .get(name)
        .unwrap_or_else(|| panic!("{name} missing from /metrics"))
}

fn status(ns: &Netns) -> serde_json::Value {
    let (code, body) = ns.http_get(HEALTHZ_ADDR, "/v1/status").unwrap();
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn conflict_prefixes(status: &serde_json::Value) -> Vec<String> {
    status["dataplane"]["route_conflicts"]
        .as_array()
        .unwrap_or_else(|| panic!("no dataplane.route_conflicts in {status}"))
        .iter()
        .map(|c| c["prefix"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn a_foreign_route_to_a_peer_subnet_is_left_alone_counted_and_yielded_when_gone() {
    if !require_root("a_foreign_route_to_a_peer_subnet_is_left_alone_counted_and_yielded_when_gone")
    {
        return;
    }
    let mut lab = Lab::start(LabSpec::weft(1)).unwrap();
    lab.wait_weftd_ready(1).unwrap();
    let n1 = lab.node_ns(1).unwrap();
    let (a, b) = ("10.244.200.0/24", "10.244.201.0/24");

    // An admin's route to A, before any node holds A.
    n1.ip(&["route", "add", a, "via", "192.0.2.254", "proto", "static"])
        .unwrap();
    put_peer(&lab, a, "198.51.100.20", 0x20);
    put_peer(&lab, b, "198.51.100.21", 0x21);
    wait_until("weft's route to B", RECONCILE_WAIT, || {
        n1.routes_to(b).iter().any(|r| r.contains("proto 87"))
    })
    .unwrap();
    wait_until("the conflict over A counted", RECONCILE_WAIT, || {
        metric(&n1, "weft_route_conflicts_total") >= 1.0
    })
    .unwrap();
    assert_eq!(
        n1.routes_to(a),
        ["10.244.200.0/24 via 192.0.2.254 dev eth0 proto static"],
        "the admin's route is untouched and weft added none beside it"
    );
    assert_eq!(metric(&n1, "weft_routes_conflicting"), 1.0);
    let report = status(&n1);
    assert_eq!(conflict_prefixes(&report), [a], "{report}");
    let conflict = &report["dataplane"]["route_conflicts"][0];
    assert_eq!(conflict["protocol"], "static", "{report}");
    assert_eq!(conflict["gateway"], "192.0.2.254", "{report}");
    assert_eq!(
        report["ready"], true,
        "a conflict is reported, not a data plane out of place: {report}"
    );

    // Someone replaces weft's own route to B (`ip route replace` overwrites whatever
    // holds the prefix): from now on B is theirs too, and stays theirs.
    n1.ip(&["route", "replace", b, "via", "192.0.2.254", "proto", "boot"])
        .unwrap();
    wait_until("the conflict over B counted", RECONCILE_WAIT, || {
        metric(&n1, "weft_routes_conflicting") == 2.0
    })
    .unwrap();
    assert_eq!(
        n1.routes_to(b),
        // `proto boot` is what iproute2 leaves unsaid.
        ["10.244.201.0/24 via 192.0.2.254 dev eth0"],
        "the reconcile that saw it left it alone"
    );

    // A's foreign route goes: weft's comes at the next reconcile.
    n1.ip(&["route", "del", a, "proto", "static"]).unwrap();
    wait_until("weft's route to A", RECONCILE_WAIT, || {
        n1.routes_to(a) == ["10.244.200.0/24 dev weft.1 proto 87 scope link"]
    })
    .unwrap();
    wait_until("one conflict left", RECONCILE_WAIT, || {
        conflict_prefixes(&status(&n1)) == [b]
    })
    .unwrap();
    n1.ip(&["route", "del", b, "proto", "boot"]).unwrap();
    wait_until("weft's route to B again", RECONCILE_WAIT, || {
        n1.routes_to(b) == ["10.244.201.0/24 dev weft.1 proto 87 scope link"]
    })
    .unwrap();
    wait_until("no conflict left", RECONCILE_WAIT, || {
        conflict_prefixes(&status(&n1)).is_empty()
    })
    .unwrap();
    let m = n1.metrics();
    assert_eq!(m["weft_routes_conflicting"], 0.0);
    assert_eq!(
        m["weft_route_conflicts_total"], 2.0,
        "each conflict counted once, not at every reconcile it lasted"
    );
    let log = std::fs::read_to_string(lab.node(1).unwrap().weftd_log()).unwrap();
    assert_eq!(
        log.matches("another route holds a peer's subnet").count(),
        2,
        "each conflict logged once:\n{log}"
    );
}

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn one_refused_route_change_does_not_stop_the_others() {
    if !require_root("one_refused_route_change_does_not_stop_the_others") {
        return;
    }
    let mut lab = Lab::start(LabSpec {
        netconf: Some(
            r#"{"Network":"10.244.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan","VNI":1,"Port":8472,"DirectRouting":true}}"#
                .into(),
        ),
        ..LabSpec::weft(1)
    })
    .unwrap();
    lab.wait_weftd_ready(1).unwrap();
    let n1 = lab.node_ns(1).unwrap();
    // DirectRouting peer A (same underlay subnet: via its PublicIP on eth0) sorts before
    // tunnelled peer B (another underlay: through weft.1), so A's change is tried first.
    let (a, b) = ("10.244.200.0/24", "10.244.201.0/24");
    put_peer(&lab, a, "192.0.2.77", 0x20);
    put_peer(&lab, b, "198.51.100.20", 0x21);
    let a_route = ["10.244.200.0/24 via 192.0.2.77 dev eth0 proto 87"];
    let b_route = ["10.244.201.0/24 dev weft.1 proto 87 scope link"];
    wait_until("both routes", RECONCILE_WAIT, || {
        n1.routes_to(a) == a_route && n1.routes_to(b) == b_route
    })
    .unwrap();

    // The underlay down takes A's route with it, and the kernel refuses it back
    // (ENETDOWN) while it stays down; B's route, deleted too, must still come back.
    n1.sh("printf 'link set eth0 down\\nroute del 10.244.201.0/24\\n' | ip -batch -")
        .unwrap();
    wait_until("B's route, after A's failed", RECONCILE_WAIT, || {
        n1.routes_to(b) == b_route
    })
    .unwrap();
    assert!(n1.routes_to(a).is_empty());
    let failing = wait_for("A's failure in /v1/status", RECONCILE_WAIT, || {
        let report = status(&n1);
        let failures = report["dataplane"]["route_failures"].as_array()?.clone();
        (!failures.is_empty()).then_some(failures)
    })
    .unwrap();
    assert_eq!(failing.len(), 1, "{failing:?}");
    assert_eq!(failing[0]["prefix"], a, "{failing:?}");
    assert!(
        failing[0]["change"]
            .as_str()
            .unwrap()
            .starts_with("add 10.244.200.0/24 via 192.0.2.77"),
        "{failing:?}"
    );
    assert!(metric(&n1, "weft_route_failures_total") >= 1.0);

    // Once the kernel accepts it, the next reconcile adds it and the failure is over.
    n1.ip(&["link", "set", "eth0", "up"]).unwrap();
    wait_until("A's route", RECONCILE_WAIT, || n1.routes_to(a) == a_route).unwrap();
    wait_until("no failing change left", RECONCILE_WAIT, || {
        status(&n1)["dataplane"]["route_failures"]
            .as_array()
            .is_some_and(|f| f.is_empty())
    })
    .unwrap();
    let log = std::fs::read_to_string(lab.node(1).unwrap().weftd_log()).unwrap();
    assert_eq!(
        log.matches("route change failed").count(),
        1,
        "a failing change is logged once while it keeps failing:\n{log}"
    );
}
