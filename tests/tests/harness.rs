//! The harness itself: guards clean up on Drop even when a test panics; etcd starts,
//! stops and restarts on its data dir; veth/bridge helpers connect namespaces.

use std::time::Duration;

use weft_tests::etcd::Etcd;
use weft_tests::link::{self, Bridge, End, Veth};
use weft_tests::netns::{self, Netns};
use weft_tests::{require_root, run_prefix, wait_for};

fn ns_exists(name: &str) -> bool {
    netns::list().unwrap().iter().any(|n| n == name)
}

#[test]
fn prefixes_are_short_and_distinct() {
    let a = run_prefix();
    let b = run_prefix();
    assert_ne!(a, b);
    assert!(a.len() <= 6, "{a}");
    assert!(a.chars().all(|c| c.is_ascii_alphanumeric()), "{a}");
}

#[test]
fn wait_for_returns_value_or_times_out() {
    let mut n = 0;
    let v = wait_for("counter to reach 3", Duration::from_secs(5), || {
        n += 1;
        (n >= 3).then_some(n)
    })
    .unwrap();
    assert_eq!(v, 3);
    let err = wait_for::<()>("never", Duration::from_millis(50), || None).unwrap_err();
    assert!(err.to_string().contains("never"), "{err}");
}

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn guards_clean_up_when_a_test_panics() {
    if !require_root("guards_clean_up_when_a_test_panics") {
        return;
    }
    let prefix = run_prefix();
    let ns_a = format!("{prefix}-a");
    let ns_b = format!("{prefix}-b");
    let mut child_pid = 0;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let a = Netns::new(&ns_a).unwrap();
        let b = Netns::new(&ns_b).unwrap();
        let _veth = Veth::create(
            End::with_addr(&a, "va", "192.0.2.1/24"),
            End::with_addr(&b, "vb", "192.0.2.2/24"),
            None,
        )
        .unwrap();
        let mut sleep = a.command("sleep");
        sleep.arg("600");
        let child = a.spawn(sleep).unwrap();
        child_pid = child.pid();
        assert!(ns_exists(&ns_a) && ns_exists(&ns_b));
        assert!(std::path::Path::new(&format!("/proc/{child_pid}")).exists());
        a.run("ping", &["-c1", "-W2", "192.0.2.2"]).unwrap();
        panic!("deliberate panic with guards alive");
    }));
    assert!(result.is_err(), "the closure must have panicked");
    assert!(!ns_exists(&ns_a), "{ns_a} left behind");
    assert!(!ns_exists(&ns_b), "{ns_b} left behind");
    assert_ne!(child_pid, 0);
    // Killed and reaped by the guard: the PID is gone (or recycled by someone else,
    // which a 600 s sleep in our namespace would not be).
    let cmdline = std::fs::read(format!("/proc/{child_pid}/cmdline")).unwrap_or_default();
    assert!(
        !String::from_utf8_lossy(&cmdline).contains("600"),
        "child {child_pid} still running"
    );
}

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn bridge_joins_three_namespaces() {
    if !require_root("bridge_joins_three_namespaces") {
        return;
    }
    let prefix = run_prefix();
    let hub = Netns::new(&format!("{prefix}-hub")).unwrap();
    let br = Bridge::create(&hub, "br0", None).unwrap();
    let mut spokes = Vec::new();
    for i in 1..=3 {
        let ns = Netns::new(&format!("{prefix}-s{i}")).unwrap();
        let addr = format!("192.0.2.{i}/24");
        let host_if = format!("v{i}");
        let veth = Veth::create(
            End::new(&hub, &host_if),
            End::with_addr(&ns, "eth0", &addr),
            Some(1500),
        )
        .unwrap();
        br.attach(&host_if).unwrap();
        spokes.push((ns, veth));
    }
    spokes[0]
        .0
        .run("ping", &["-c1", "-W2", "192.0.2.3"])
        .unwrap();
    assert!(link::mac_of(&spokes[1].0, "eth0").unwrap().contains(':'));
    // No route out of the lab: an address outside it is unreachable.
    assert!(spokes[0]
        .0
        .run("ping", &["-c1", "-W1", "198.18.0.1"])
        .is_err());
}

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn etcd_start_stop_restart_keeps_data() {
    if !require_root("etcd_start_stop_restart_keeps_data") {
        return;
    }
    let mut etcd = Etcd::start().unwrap();
    let pid = etcd.proc_id().unwrap();
    etcd.put("/weft-test/k", "v1").unwrap();
    assert_eq!(etcd.get("/weft-test/k").unwrap().as_deref(), Some("v1"));
    etcd.stop();
    assert!(!pid.is_alive());
    assert!(
        etcd.etcdctl(&["get", "/weft-test/k"]).is_err(),
        "stopped etcd answered"
    );
    etcd.restart().unwrap();
    assert_eq!(etcd.get("/weft-test/k").unwrap().as_deref(), Some("v1"));
    let lease = etcd.lease_grant(60).unwrap();
    etcd.put_with_lease("/weft-test/l", "x", &lease).unwrap();
    assert_eq!(etcd.get_prefix("/weft-test/").unwrap().len(), 2);
    let pid = etcd.proc_id().unwrap();
    let dir = etcd.dir().to_path_buf();
    drop(etcd);
    assert!(!pid.is_alive(), "etcd survived Drop");
    assert!(!dir.exists(), "temp dir {} left behind", dir.display());
}

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn two_etcds_side_by_side_and_one_in_a_namespace() {
    if !require_root("two_etcds_side_by_side_and_one_in_a_namespace") {
        return;
    }
    let a = Etcd::start().unwrap();
    let b = Etcd::start().unwrap();
    assert_ne!(a.endpoint(), b.endpoint());
    a.put("/k", "a").unwrap();
    assert_eq!(b.get("/k").unwrap(), None);

    let prefix = run_prefix();
    let ul = Netns::new(&format!("{prefix}-ul")).unwrap();
    let node = Netns::new(&format!("{prefix}-n1")).unwrap();
    let _veth = Veth::create(
        End::with_addr(&ul, "ul1", "192.0.2.254/24"),
        End::with_addr(&node, "eth0", "192.0.2.1/24"),
        None,
    )
    .unwrap();
    let etcd = Etcd::start_in(&ul, "192.0.2.254").unwrap();
    assert_eq!(etcd.endpoint(), "http://192.0.2.254:2379");
    etcd.put("/k", "in-ns").unwrap();
    // Reachable from the other namespace over the veth.
    let out = node
        .run(
            "env",
            &[
                "ETCDCTL_API=3",
                "etcdctl",
                "--endpoints=http://192.0.2.254:2379",
                "get",
                "/k",
            ],
        )
        .unwrap();
    assert!(out.contains("in-ns"), "{out}");
}
