//! The lab itself: kernel-flannel nodes carry pod traffic; two labs side by side do not
//! collide; `weft-lab down` cleans up after `kill -9`.

use std::time::Duration;

use weft_tests::lab::{CniKind, Lab, LabSpec, NodeKind};
use weft_tests::netns;
use weft_tests::require_root;

fn namespaces_with(prefix: &str) -> Vec<String> {
    netns::list()
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with(&format!("{prefix}-")))
        .collect()
}

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn two_kernel_flannel_nodes_carry_pod_traffic() {
    if !require_root("two_kernel_flannel_nodes_carry_pod_traffic") {
        return;
    }
    let mut lab = Lab::start(LabSpec::kernel(2)).unwrap();
    let prefix = lab.prefix().to_owned();
    assert_eq!(lab.kernel_nodes(), vec![1, 2]);
    assert!(lab
        .state()
        .nodes
        .iter()
        .all(|n| n.kind == NodeKind::KernelFlannel));
    let leases = lab.wait_leases(2, Duration::from_secs(5)).unwrap();
    assert_eq!(leases.len(), 2);
    assert!(leases
        .iter()
        .all(|l| l.backend_type == "vxlan" && l.vtep_mac.is_some()));

    let a = lab.add_pod(1, "a").unwrap();
    let b = lab.add_pod(2, "b").unwrap();
    assert_ne!(a, b);
    assert!(lab.ping("a", b), "pod a ({a}) cannot reach pod b ({b})");
    assert!(lab.ping("b", a), "pod b ({b}) cannot reach pod a ({a})");
    // The route is flanneld's: via the peer's .0 on flannel.1, onlink.
    let routes = lab.exec("n1", &["ip", "route"]).unwrap();
    let peer = lab.node(2).unwrap().subnet.unwrap();
    assert!(
        routes.contains(&format!(
            "{peer} via {} dev flannel.1 onlink",
            peer.network()
        )),
        "{routes}"
    );
    // No route out of the lab from a pod.
    assert!(!lab.ping("a", "198.18.0.1".parse().unwrap()));

    drop(lab);
    assert!(
        namespaces_with(&prefix).is_empty(),
        "namespaces left: {:?}",
        namespaces_with(&prefix)
    );
    assert!(!weft_tests::lab::state::state_file(&prefix).exists());
}

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn containerd_pods_with_the_reference_bridge_reach_each_other() {
    if !require_root("containerd_pods_with_the_reference_bridge_reach_each_other") {
        return;
    }
    let mut lab = Lab::start(LabSpec {
        cni: CniKind::Bridge,
        ..LabSpec::kernel(2)
    })
    .unwrap();
    let prefix = lab.prefix().to_owned();
    let a = lab.ctr_pod(1, "ca").unwrap();
    let b = lab.ctr_pod(2, "cb").unwrap();
    let fast = lab.add_pod(2, "fb").unwrap();
    assert!(lab.node(1).unwrap().subnet.unwrap().contains(&a), "{a}");
    assert!(
        lab.ping("ca", b),
        "ctr pod ca ({a}) cannot reach ctr pod cb ({b})"
    );
    assert!(
        lab.ping("ca", fast),
        "ctr pod ca cannot reach fast-path pod fb ({fast})"
    );
    // The pod really is the container: its namespace is the task's.
    let task_pid = lab.ctr(&["task", "ls"]).unwrap();
    assert!(task_pid.contains(&format!("{prefix}-ca")), "{task_pid}");
    // Nothing of the lab in the host's CNI config dir.
    assert!(!std::path::Path::new("/etc/cni/net.d/10-weft.conflist").exists());
    let sock = lab.state().containerd_socket.clone().unwrap();
    drop(lab);
    assert!(
        namespaces_with(&prefix).is_empty(),
        "{:?}",
        namespaces_with(&prefix)
    );
    assert!(
        weft_tests::proc::pids_with_arg(&sock.to_string_lossy()).is_empty(),
        "shims left"
    );
    assert!(!std::path::Path::new(&format!("/etc/netns/{prefix}-n1")).exists());
}

/// `weft-lab <args>`; panics with its stderr if it fails.
fn weft_lab(args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weft-lab"))
        .args(args)
        .output()
        .expect("running weft-lab");
    assert!(
        out.status.success(),
        "weft-lab {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn lab_info(prefix: &str) -> serde_json::Value {
    serde_json::from_str(&weft_lab(&["status", "--prefix", prefix, "--json"])).unwrap()
}

fn pod_ip(info: &serde_json::Value, pod: &str) -> String {
    info["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == pod)
        .unwrap()["ip"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Removes a lab of the binary even when the test fails half-way.
struct DownOnDrop(String);
impl Drop for DownOnDrop {
    fn drop(&mut self) {
        let _ = std::process::Command::new(env!("CARGO_BIN_EXE_weft-lab"))
            .args(["down", "--prefix", &self.0])
            .output();
    }
}

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn two_weft_lab_ups_side_by_side_do_not_collide() {
    if !require_root("two_weft_lab_ups_side_by_side_do_not_collide") {
        return;
    }
    let prefixes = [weft_tests::run_prefix(), weft_tests::run_prefix()];
    let _guards: Vec<DownOnDrop> = prefixes.iter().map(|p| DownOnDrop(p.clone())).collect();
    // Both come up at the same time, with the same addresses inside.
    std::thread::scope(|s| {
        for p in &prefixes {
            s.spawn(move || {
                weft_lab(&["up", "--nodes", "2", "--kernel-nodes", "1", "--prefix", p]);
                weft_lab(&["pod", "add", "--fast", "--prefix", p, "n1", "a"]);
                weft_lab(&["pod", "add", "--fast", "--prefix", p, "n2", "b"]);
            });
        }
    });
    for p in &prefixes {
        let info = lab_info(p);
        assert_eq!(info["prefix"], p.as_str());
        let b = pod_ip(&info, "b");
        // weft node -> kernel-flannel node, inside each lab.
        weft_lab(&[
            "exec", "--prefix", p, "a", "--", "ping", "-c1", "-w5", "-q", &b,
        ]);
        let leases = weft_lab(&[
            "exec",
            "--prefix",
            p,
            "ul",
            "--",
            "env",
            "ETCDCTL_API=3",
            "etcdctl",
            "get",
            "--prefix",
            "--keys-only",
            "/coreos.com/network/subnets/",
        ]);
        assert_eq!(
            leases.lines().filter(|l| !l.is_empty()).count(),
            2,
            "{p}: {leases}"
        );
        assert_eq!(namespaces_with(p).len(), 5, "{p}: {:?}", namespaces_with(p));
        // ul, n1, n2, a, b
    }
    // One lab going down leaves the other intact.
    weft_lab(&["down", "--prefix", &prefixes[0]]);
    assert!(namespaces_with(&prefixes[0]).is_empty());
    let info = lab_info(&prefixes[1]);
    weft_lab(&[
        "exec",
        "--prefix",
        &prefixes[1],
        "a",
        "--",
        "ping",
        "-c1",
        "-w5",
        "-q",
        &pod_ip(&info, "b"),
    ]);
}

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn weft_lab_down_after_kill9_of_everything_cleans_up() {
    if !require_root("weft_lab_down_after_kill9_of_everything_cleans_up") {
        return;
    }
    let prefix = weft_tests::run_prefix();
    let _guard = DownOnDrop(prefix.clone());
    weft_lab(&[
        "up",
        "--nodes",
        "2",
        "--kernel-nodes",
        "1",
        "--prefix",
        &prefix,
        "--cni",
        "bridge",
    ]);
    weft_lab(&["pod", "add", "--prefix", &prefix, "n1", "c1"]);
    weft_lab(&["pod", "add", "--prefix", &prefix, "n2", "c2"]);
    weft_lab(&["pod", "add", "--fast", "--prefix", &prefix, "n2", "f2"]);

    let state = weft_tests::lab::state::LabState::load(&prefix).unwrap();
    let whats: Vec<&str> = state.processes.iter().map(|p| p.what.as_str()).collect();
    for expected in ["etcd", "weftd n1", "containerd", "pod c1", "pod c2"] {
        assert!(
            whats.contains(&expected),
            "{expected} not recorded: {whats:?}"
        );
    }
    let sock = state.containerd_sockets[0].to_string_lossy().into_owned();
    let shims = weft_tests::proc::pids_with_arg(&sock);
    assert!(!shims.is_empty(), "no containerd shims found");
    let shim_sockets: Vec<std::path::PathBuf> = ["c1", "c2"]
        .iter()
        .map(|pod| {
            weft_tests::lab::containerd::shim_socket(
                &state.containerd_sockets[0],
                "default",
                &format!("{prefix}-{pod}"),
            )
        })
        .collect();
    assert!(shim_sockets.iter().all(|s| s.exists()), "{shim_sockets:?}");
    // A crash of everything: weft-lab is long gone (up returned); kill -9 each daemon.
    for p in &state.processes {
        let pid = nix::unistd::Pid::from_raw(p.proc.pid as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    }
    weft_lab(&["down", "--prefix", &prefix]);

    assert!(
        namespaces_with(&prefix).is_empty(),
        "{:?}",
        namespaces_with(&prefix)
    );
    for p in &state.processes {
        assert!(
            !p.proc.is_alive(),
            "{} (pid {}) still alive",
            p.what,
            p.proc.pid
        );
    }
    let left = weft_tests::proc::pids_with_arg(&sock);
    assert!(left.is_empty(), "shims {left:?} (of {shims:?}) still alive");
    assert!(!state.dir.exists(), "{} left", state.dir.display());
    for s in &shim_sockets {
        assert!(!s.exists(), "{} left", s.display());
    }
    for etc in &state.etc_netns {
        assert!(!etc.exists(), "{} left", etc.display());
    }
    assert!(!weft_tests::lab::state::state_file(&prefix).exists());
}

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn weftd_crash_and_restart_through_the_lab() {
    if !require_root("weftd_crash_and_restart_through_the_lab") {
        return;
    }
    if !weft_tests::bin_path("weftd").is_file() {
        panic!(
            "{} missing: cargo build --workspace --bins",
            weft_tests::bin_path("weftd").display()
        );
    }
    let mut lab = Lab::start(LabSpec {
        kernel_nodes: 1,
        ..LabSpec::weft(2)
    })
    .unwrap();
    assert_eq!(lab.weft_nodes(), vec![1]);
    let a = lab.add_pod(1, "a").unwrap();
    let k = lab.add_pod(2, "k").unwrap();
    assert!(lab.ping("a", k), "weft pod {a} -> kernel-flannel pod {k}");
    let before = lab.weftd_pid(1).unwrap();
    lab.kill9_weftd(1).unwrap();
    assert!(!before.is_alive());
    assert!(lab.weftd_pid(1).is_none());
    assert!(!lab.weftd_ready(1).unwrap_or(false));
    lab.start_weftd(1).unwrap();
    lab.wait_weftd_ready(1).unwrap();
    let after = lab.weftd_pid(1).unwrap();
    assert_ne!(before, after);
    assert!(
        lab.ping("a", k),
        "after restart: weft pod {a} -> kernel-flannel pod {k}"
    );
    assert!(
        lab.ping("k", a),
        "after restart: kernel-flannel pod {k} -> weft pod {a}"
    );
}

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn a_panicking_test_leaves_no_lab_behind() {
    if !require_root("a_panicking_test_leaves_no_lab_behind") {
        return;
    }
    let mut seen = None;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut lab = Lab::start(LabSpec {
            cni: CniKind::Bridge,
            ..LabSpec::kernel(1)
        })
        .unwrap();
        lab.ctr_pod(1, "c").unwrap();
        lab.add_pod(1, "f").unwrap();
        let state = weft_tests::lab::state::LabState::load(lab.prefix()).unwrap();
        seen = Some(state);
        panic!("deliberate panic with a lab running");
    }));
    assert!(result.is_err());
    let state = seen.expect("the lab came up");
    assert!(
        namespaces_with(&state.prefix).is_empty(),
        "{:?}",
        namespaces_with(&state.prefix)
    );
    for p in &state.processes {
        assert!(
            !p.proc.is_alive(),
            "{} (pid {}) survived",
            p.what,
            p.proc.pid
        );
    }
    assert!(!state.dir.exists());
    assert!(state.etc_netns.iter().all(|d| !d.exists()));
    assert!(!weft_tests::lab::state::state_file(&state.prefix).exists());
}

/// `weft-lab weftd stop` from another process than `up` stops the daemon gracefully and
/// returns only once it is gone: a `start` right after it finds the health port free.
#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn weft_lab_weftd_stop_then_start_right_away() {
    if !require_root("weft_lab_weftd_stop_then_start_right_away") {
        return;
    }
    let prefix = weft_tests::run_prefix();
    let _guard = DownOnDrop(prefix.clone());
    weft_lab(&["up", "--nodes", "2", "--prefix", &prefix]);
    weft_lab(&["pod", "add", "--fast", "--prefix", &prefix, "n1", "a"]);
    weft_lab(&["pod", "add", "--fast", "--prefix", &prefix, "n2", "b"]);
    let info = lab_info(&prefix);
    let b = pod_ip(&info, "b");
    let log = weft_tests::lab::state::LabState::load(&prefix)
        .unwrap()
        .dir
        .join("n1/weftd.log");
    let ping = || {
        weft_lab(&[
            "exec", "--prefix", &prefix, "a", "--", "ping", "-c1", "-w5", "-q", &b,
        ])
    };
    ping();
    for round in 0..2 {
        weft_lab(&["weftd", "--prefix", &prefix, "stop", "n1"]);
        let text = std::fs::read_to_string(&log).unwrap();
        assert_eq!(
            text.matches("signal=SIGTERM").count(),
            round + 1,
            "stop {round} was not a SIGTERM that weftd handled:\n{text}"
        );
        weft_lab(&["weftd", "--prefix", &prefix, "start", "n1"]);
        ping();
    }
    // After a crash too.
    weft_lab(&["weftd", "--prefix", &prefix, "kill9", "n1"]);
    weft_lab(&["weftd", "--prefix", &prefix, "start", "n1"]);
    ping();
}
