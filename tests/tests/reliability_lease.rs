//! Issue 9, item 3 — an operator revokes a node's etcd lease (`etcdctl lease revoke`).
//!
//! * Free subnet: weftd notices at once (its watch sees the key go), re-acquires the
//!   same subnet on a new lease, says so in its log, and pod traffic works throughout.
//! * Taken subnet: weftd is frozen (SIGSTOP — the deterministic way to have someone
//!   else write the key between the revoke and weftd's re-acquisition), the lease is
//!   revoked and the key written with another node's PublicIP, weftd is resumed. It
//!   reports the conflict (not ready, naming the holder), stops routing the subnet (its
//!   data plane and VXLAN socket go away) without deleting anything, and when the key is
//!   freed takes the subnet back and routes again.

mod reliability_support;

use std::net::Ipv4Addr;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use reliability_support::{
    counter, ifindex, log_text, pods_a_to_b, readyz, require_binaries, status,
};
use weft_tests::lab::kernel::{lease_key, FlannelLease};
use weft_tests::lab::{Lab, LabSpec, ETCD_PREFIX};
use weft_tests::{require_root, wait_for, wait_until};

/// Short TTL (keep-alives every 2 s), so that the keeper's periodic checks come quickly.
fn lab() -> Lab {
    require_binaries(&["weftd"]);
    Lab::start(LabSpec {
        weftd_args: vec!["--lease-ttl-secs".into(), "6".into()],
        ..LabSpec::weft(2)
    })
    .unwrap()
}

/// (key, etcd lease ID, PublicIP) of the lease of `subnet` in etcd.
fn stored(lab: &Lab, key: &str) -> Option<(i64, Ipv4Addr)> {
    let out = lab.etcd().etcdctl(&["get", key, "-w", "json"]).ok()?;
    let v: serde_json::Value = serde_json::from_str(&out).ok()?;
    let kv = v["kvs"].get(0)?;
    let lease = kv["lease"].as_i64().unwrap_or(0);
    let value = base64_decode(kv["value"].as_str()?)?;
    let lease_record = FlannelLease::parse(key, &value).ok()?;
    Some((lease, lease_record.public_ip))
}

/// etcdctl's JSON output encodes values in base64 (no extra dependency for this).
fn base64_decode(text: &str) -> Option<String> {
    let mut bits = 0u32;
    let mut nbits = 0;
    let mut out = Vec::new();
    for c in text.bytes().filter(|c| *c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        bits = (bits << 6) | u32::from(v);
        nbits += 6;
        if nbits >= 8 {
            nbits -= 8;
            out.push((bits >> nbits) as u8);
        }
    }
    String::from_utf8(out).ok()
}

/// Whether something in node `n`'s namespace listens on UDP `port`.
fn udp_bound(lab: &Lab, n: usize, port: u16) -> bool {
    let suffix = format!(":{port:04X}");
    lab.exec(&format!("n{n}"), &["cat", "/proc/net/udp"])
        .unwrap_or_default()
        .lines()
        .skip(1)
        .any(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|a| a.ends_with(&suffix))
        })
}

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn revoked_lease_is_reacquired_as_the_same_subnet_while_traffic_flows() {
    if !require_root("revoked_lease_is_reacquired_as_the_same_subnet_while_traffic_flows") {
        return;
    }
    let mut lab = lab();
    let (a, b) = pods_a_to_b(&mut lab);
    let (subnet, _) = lab.node_subnet(1).unwrap();
    let key = lease_key(ETCD_PREFIX, subnet);
    let (old_lease, ip) = stored(&lab, &key).expect("node 1's lease in etcd");
    assert_eq!(ip, lab.node(1).unwrap().ip);
    assert_ne!(old_lease, 0);

    lab.etcd()
        .etcdctl(&["lease", "revoke", &format!("{old_lease:x}")])
        .unwrap();
    let new_lease = wait_for(
        "the same subnet to be re-acquired",
        Duration::from_secs(15),
        || match stored(&lab, &key) {
            Some((lease, ip)) if lease != old_lease && ip == Ipv4Addr::new(192, 0, 2, 1) => {
                Some(lease)
            }
            _ => None,
        },
    )
    .unwrap();
    assert_ne!(new_lease, 0, "re-acquired as a lease, not as a reservation");
    let s = wait_for(
        "readiness after re-acquisition",
        Duration::from_secs(10),
        || {
            let s = status(&lab, 1).ok()?;
            (s["ready"] == true && counter(&s, "lease_reacquisitions") >= 1).then_some(s)
        },
    )
    .unwrap();
    assert!(counter(&s, "lease_losses") >= 1, "{s}");
    assert_eq!(s["lease"]["subnet"], subnet.to_string());
    let log = log_text(&lab, 1);
    assert!(
        log.contains("lease was lost; re-acquired the same subnet"),
        "weftd says clearly what happened:\n{log}"
    );
    assert_eq!(
        lab.node_subnet(1).unwrap().0,
        subnet,
        "subnet.env unchanged"
    );
    // The peer saw the key go and come back: traffic works both ways.
    wait_until(
        "pod b to reach pod a again",
        Duration::from_secs(15),
        || lab.ping("b", a),
    )
    .unwrap();
    assert!(lab.ping("a", b));
    println!("revoke: lease {old_lease:x} revoked; {subnet} re-acquired on lease {new_lease:x}");
}

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn subnet_taken_after_a_revoke_stops_routing_until_it_is_free_again() {
    if !require_root("subnet_taken_after_a_revoke_stops_routing_until_it_is_free_again") {
        return;
    }
    let mut lab = lab();
    let (a, b) = pods_a_to_b(&mut lab);
    let port = lab.state().port;
    assert!(udp_bound(&lab, 1, port), "weftd listens on {port}");
    let (subnet, _) = lab.node_subnet(1).unwrap();
    let key = lease_key(ETCD_PREFIX, subnet);
    let (old_lease, _) = stored(&lab, &key).expect("node 1's lease in etcd");
    let node_ns = lab.node_ns(1).unwrap();
    let tun_index = ifindex(&node_ns, "weft.1").expect("TUN device");

    // Frozen, weftd cannot re-acquire before the other node writes the key.
    let pid = Pid::from_raw(lab.weftd_pid(1).expect("weftd runs").pid as i32);
    kill(pid, Signal::SIGSTOP).unwrap();
    let intruder = Ipv4Addr::new(192, 0, 2, 77);
    let taken = (|| -> anyhow::Result<()> {
        lab.etcd()
            .etcdctl(&["lease", "revoke", &format!("{old_lease:x}")])?;
        let other_lease = lab.etcd().lease_grant(600)?;
        lab.etcd().put_with_lease(
            &key,
            &FlannelLease::vxlan_value(intruder, 1, "02:00:00:00:00:77"),
            &other_lease,
        )
    })();
    kill(pid, Signal::SIGCONT).unwrap();
    taken.unwrap();

    let (code, body) = wait_for(
        "the conflict to be reported",
        Duration::from_secs(15),
        || readyz(&lab, 1).ok().filter(|(code, _)| *code == 503),
    )
    .unwrap();
    assert!(
        body.contains("192.0.2.77"),
        "/readyz names the holder: {code} {body}"
    );
    wait_until("the data plane to stop", Duration::from_secs(15), || {
        !udp_bound(&lab, 1, port)
    })
    .unwrap();
    // The workers close their sockets before the data plane's teardown (TUN, TAP and
    // its tc link) ends and weftd says why: wait for the words, not just the socket.
    if let Err(e) = wait_until(
        "weftd to say it stopped routing",
        Duration::from_secs(15),
        || log_text(&lab, 1).contains("stopped routing this node's subnet"),
    ) {
        panic!("{e:#}; weftd's log:\n{}", log_text(&lab, 1));
    }
    assert_eq!(
        stored(&lab, &key).map(|(_, ip)| ip),
        Some(intruder),
        "weftd does not fight over the key"
    );
    // Nothing is deleted: subnet.env, cni0, the TUN device stay for the way back.
    assert_eq!(lab.node_subnet(1).unwrap().0, subnet);
    assert_eq!(ifindex(&node_ns, "weft.1"), Some(tun_index));
    assert!(ifindex(&node_ns, "cni0").is_some());
    assert!(!lab.ping("a", b), "node 1 no longer routes pod a's traffic");

    // The other node gives the subnet up: weftd takes it back and routes again.
    lab.etcd().etcdctl(&["del", &key]).unwrap();
    wait_for(
        "the subnet to be taken back",
        Duration::from_secs(20),
        || {
            let (_, ip) = stored(&lab, &key)?;
            (ip == lab.node(1).ok()?.ip && readyz(&lab, 1).ok()?.0 == 200).then_some(())
        },
    )
    .unwrap();
    wait_until(
        "the data plane to run again",
        Duration::from_secs(15),
        || udp_bound(&lab, 1, port),
    )
    .unwrap();
    assert!(log_text(&lab, 1).contains("subnet is ours again; restarting the data plane"));
    assert_eq!(
        ifindex(&node_ns, "weft.1"),
        Some(tun_index),
        "same TUN device"
    );
    wait_until(
        "pod a to reach pod b again",
        Duration::from_secs(15),
        || lab.ping("a", b),
    )
    .unwrap();
    wait_until(
        "pod b to reach pod a again",
        Duration::from_secs(15),
        || lab.ping("b", a),
    )
    .unwrap();
}
