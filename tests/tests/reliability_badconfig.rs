//! Issue 9, item 7 — bad configuration, end to end: a table of broken inputs given to
//! the real binaries. weftd runs in a namespace of its own (underlay `eth0`, etcd there);
//! the `weft` CNI plugin is called like a runtime calls it. Each case must end with a
//! non-zero exit and one clear error naming what to fix, never a panic or a backtrace
//! (`RUST_BACKTRACE=1` is set to make sure none is printed).
//!
//! * weftd: exactly one line starts with `weftd:` (or, for a command-line error, clap's
//!   `error:`), it is the last line, it names the culprit; log lines before it are fine.
//! * weft: the CNI error object on stdout (`code`, `msg` naming the culprit), nothing on
//!   stderr.
//!
//! Flag and TOML syntax rules are tested in depth in `config/tests`; this table is about
//! what only the running binaries see: the network config in etcd, a missing interface,
//! TLS files, the health port, unwritable paths, a corrupt state file.

mod reliability_support;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reliability_support::{require_binaries, spawn_in};
use weft_tests::etcd::Etcd;
use weft_tests::netns::Netns;
use weft_tests::{require_root, run_prefix};

const NODE_IP: &str = "192.0.2.1";
const PREFIX: &str = "/coreos.com/network";
const GOOD_NETCONF: &str =
    r#"{"Network":"10.244.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan","VNI":1}}"#;
/// A weftd that neither fails nor gets ready by then is waiting instead of failing.
const EXIT_TIMEOUT: Duration = Duration::from_secs(20);

/// One broken input to weftd.
struct WeftdCase {
    what: &'static str,
    /// Flags after the test's own (later flags win).
    args: Vec<String>,
    env: Vec<(&'static str, String)>,
    /// Net-conf to put in etcd first (the good one otherwise).
    netconf: Option<&'static str>,
    /// Words the error line must contain.
    mentions: Vec<String>,
}

fn case(what: &'static str, args: &[&str], mentions: &[&str]) -> WeftdCase {
    WeftdCase {
        what,
        args: args.iter().map(|s| s.to_string()).collect(),
        env: Vec::new(),
        netconf: None,
        mentions: mentions.iter().map(|s| s.to_string()).collect(),
    }
}

/// The node: a namespace with an `eth0` at [`NODE_IP`] and etcd on it.
struct Node {
    // Drop order: etcd before its namespace.
    etcd: Etcd,
    ns: Netns,
    dir: tempfile::TempDir,
}

fn node() -> Node {
    let ns = Netns::new(&format!("{}-bc", run_prefix())).unwrap();
    // A veth pair inside the namespace (the dummy driver may be missing).
    ns.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p",
    ])
    .unwrap();
    ns.ip(&["link", "set", "eth0p", "up"]).unwrap();
    ns.ip(&["addr", "add", &format!("{NODE_IP}/24"), "dev", "eth0"])
        .unwrap();
    ns.ip(&["link", "set", "eth0", "up"]).unwrap();
    let etcd = Etcd::start_in(&ns, NODE_IP).unwrap();
    let dir = tempfile::Builder::new()
        .prefix("weft-badconfig-")
        .tempdir()
        .unwrap();
    Node { etcd, ns, dir }
}

impl Node {
    fn file(&self, name: &str, content: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        path
    }

    /// Runs weftd with the case's input until it exits; (exit code, stderr).
    fn run_weftd(&self, n: usize, case: &WeftdCase) -> (Option<i32>, String) {
        let run_dir = self.dir.path().join(format!("run{n}"));
        std::fs::create_dir_all(&run_dir).unwrap();
        let mut cmd = self.ns.command(&weftd().to_string_lossy());
        let endpoint = self.etcd.endpoint();
        let subnet_file = run_dir.join("subnet.env");
        let state_dir = run_dir.join("state");
        let base = [
            ("--etcd-endpoints", endpoint.as_str()),
            ("--iface", "eth0"),
            ("--subnet-file", &*subnet_file.to_string_lossy()),
            ("--state-dir", &*state_dir.to_string_lossy()),
            ("--healthz-addr", "127.0.0.1:9842"),
        ]
        .map(|(flag, value)| (flag, value.to_owned()));
        // The case's flags replace the test's own (weftd refuses a flag given twice).
        for (flag, value) in &base {
            let overridden = case
                .args
                .iter()
                .any(|a| a == flag || a.starts_with(&format!("{flag}=")));
            if !overridden {
                cmd.arg(flag).arg(value);
            }
        }
        cmd.args(&case.args)
            .env("RUST_BACKTRACE", "1")
            .envs(case.env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(run_dir.join("stderr")).unwrap());
        let mut child = cmd.spawn().unwrap();
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if started.elapsed() > EXIT_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            // Polling a child's exit (no other way to wait with a deadline).
            std::thread::sleep(Duration::from_millis(20));
        };
        let stderr = std::fs::read_to_string(run_dir.join("stderr")).unwrap_or_default();
        (status.map(|s| s.code().unwrap_or(-1)), stderr)
    }
}

fn weftd() -> PathBuf {
    weft_tests::bin_path("weftd")
}

/// The one error line of weftd's stderr, checked for shape; panics with the whole
/// stderr otherwise.
fn error_line<'a>(what: &str, stderr: &'a str) -> &'a str {
    assert!(
        !stderr.contains("panicked") && !stderr.contains("stack backtrace"),
        "{what}: a panic or backtrace:\n{stderr}"
    );
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("weftd:") || l.starts_with("error:"))
        .collect();
    assert_eq!(
        errors.len(),
        1,
        "{what}: one error line expected:\n{stderr}"
    );
    let line = errors[0];
    let parts: Vec<&str> = line.split(": ").collect();
    assert!(
        parts.windows(2).all(|w| w[0] != w[1]),
        "{what}: the error repeats itself: {line:?}"
    );
    if line.starts_with("weftd:") {
        assert_eq!(
            stderr.trim_end().lines().last(),
            Some(line),
            "{what}: the error is the last line:\n{stderr}"
        );
    }
    line
}

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn broken_inputs_to_weftd_and_weft_fail_with_one_clear_line() {
    if !require_root("broken_inputs_to_weftd_and_weft_fail_with_one_clear_line") {
        return;
    }
    require_binaries(&["weftd", "weft"]);
    let node = node();
    let missing_ca = node.dir.path().join("missing-ca.pem");
    let missing = missing_ca.to_string_lossy().into_owned();
    let bad_toml = node.file("bad.toml", "ip-masq = true\niface = \n");
    let unknown_key = node.file("unknown.toml", "ip-masquerade = true\n");
    let wrong_type = node.file("type.toml", "ip-masq = \"sometimes\"\n");
    let corrupt_state = node.dir.path().join("corrupt-state");
    std::fs::create_dir_all(&corrupt_state).unwrap();
    std::fs::write(corrupt_state.join("node.json"), "{\"vtep_mac\": 42").unwrap();
    let a_file = node.file("not-a-dir", "");
    let https = format!("--etcd-endpoints=https://{NODE_IP}:2379");

    let mut cases = vec![
        case("unknown interface", &["--iface", "nosuch0"], &["nosuch0"]),
        case(
            "missing etcd CA file",
            &[&https, "--etcd-cafile", &missing],
            &["--etcd-cafile", "missing-ca.pem"],
        ),
        case(
            "missing etcd client certificate",
            &[
                &https,
                "--etcd-certfile",
                &missing,
                "--etcd-keyfile",
                &missing,
            ],
            &["--etcd-certfile", "missing-ca.pem"],
        ),
        case(
            "TOML syntax error",
            &["--config", &bad_toml.to_string_lossy()],
            &["bad.toml", "line 2"],
        ),
        case(
            "TOML unknown key",
            &["--config", &unknown_key.to_string_lossy()],
            &["unknown.toml", "ip-masquerade"],
        ),
        case(
            "TOML wrong type",
            &["--config", &wrong_type.to_string_lossy()],
            &["type.toml", "ip-masq"],
        ),
        case(
            "config file missing",
            &["--config", "/nonexistent/weftd.toml"],
            &["/nonexistent/weftd.toml"],
        ),
        case("unknown flag", &["--ip-masquerade"], &["--ip-masquerade"]),
        case("bad boolean", &["--ip-masq=maybe"], &["maybe"]),
        case(
            "corrupt state file",
            &["--state-dir", &corrupt_state.to_string_lossy()],
            &["node.json"],
        ),
        case(
            "state dir is a file",
            &["--state-dir", &a_file.to_string_lossy()],
            &["not-a-dir"],
        ),
        case(
            "subnet file in a directory that cannot exist",
            &[
                "--subnet-file",
                &format!("{}/subnet.env", a_file.to_string_lossy()),
            ],
            &["not-a-dir/subnet.env", "is not a directory"],
        ),
    ];
    cases.push(WeftdCase {
        env: vec![("WEFTD_HEALTHZ_ADDR", "localhost".into())],
        ..case("bad environment variable", &[], &["WEFTD_HEALTHZ_ADDR"])
    });
    for (what, netconf, mentions) in [
        (
            "net-conf not JSON",
            "Network: 10.244.0.0/16",
            &["/coreos.com/network/config"][..],
        ),
        (
            "net-conf unknown backend",
            r#"{"Network":"10.244.0.0/16","Backend":{"Type":"udp"}}"#,
            &["/coreos.com/network/config", "udp"],
        ),
        (
            "net-conf bad network",
            r#"{"Network":"10.244.0.0/33"}"#,
            &["/coreos.com/network/config", "10.244.0.0/33"],
        ),
        (
            "net-conf SubnetLen shorter than the network",
            r#"{"Network":"10.244.0.0/16","SubnetLen":8}"#,
            &["/coreos.com/network/config", "SubnetLen"],
        ),
        (
            "net-conf VXLAN port out of range",
            r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","Port":70000}}"#,
            &["/coreos.com/network/config", "Port"],
        ),
    ] {
        cases.push(WeftdCase {
            netconf: Some(netconf),
            ..case(what, &[], mentions)
        });
    }

    // The health port is taken by someone else.
    let (hold_tx, hold_rx) = std::sync::mpsc::channel::<()>();
    let (bound_tx, bound_rx) = std::sync::mpsc::channel();
    let holder = spawn_in(node.ns.name(), move || {
        let listener = std::net::TcpListener::bind("127.0.0.1:9842")?;
        bound_tx.send(()).ok();
        let _ = hold_rx.recv();
        drop(listener);
        Ok(())
    });
    bound_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    let taken = case(
        "health port taken",
        &[],
        &["--healthz-addr", "127.0.0.1:9842"],
    );
    let (code, stderr) = node.run_weftd(99, &taken);
    drop(hold_tx);
    reliability_support::join(holder, "port holder").unwrap();
    check_weftd(&taken, code, &stderr);

    for (n, c) in cases.iter().enumerate() {
        node.etcd
            .put(
                &format!("{PREFIX}/config"),
                c.netconf.unwrap_or(GOOD_NETCONF),
            )
            .unwrap();
        let (code, stderr) = node.run_weftd(n, c);
        check_weftd(c, code, &stderr);
    }

    // The CNI plugin.
    let pod = Netns::new(&format!("{}-bp", run_prefix())).unwrap();
    let good_env = node.file(
        "subnet.env",
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
    );
    let garbage_env = node.file("garbage.env", "FLANNEL_SUBNET=banana\n");
    let bad_mtu_env = node.file(
        "mtu.env",
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=-5\n",
    );
    let dir_env = node.dir.path().join("dir.env");
    std::fs::create_dir_all(&dir_env).unwrap();
    let conf = |extra: serde_json::Value| {
        let mut c = serde_json::json!({
            "cniVersion": "1.0.0", "name": "weft", "type": "weft",
            "subnetFile": good_env, "dataDir": node.dir.path().join("ipam"),
        });
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c.to_string()
    };
    let cni_cases: Vec<(&str, String, Vec<String>)> = vec![
        ("config not JSON", "{\"cniVersion\": ".into(), vec![]),
        (
            "subnet.env is a directory",
            conf(serde_json::json!({"subnetFile": dir_env})),
            vec!["dir.env".into()],
        ),
        (
            "subnet.env garbage",
            conf(serde_json::json!({"subnetFile": garbage_env})),
            vec!["garbage.env".into()],
        ),
        (
            "subnet.env with a negative MTU",
            conf(serde_json::json!({"subnetFile": bad_mtu_env})),
            vec!["mtu.env".into(), "FLANNEL_MTU".into()],
        ),
        (
            "mtu of the wrong type",
            conf(serde_json::json!({"mtu": "jumbo"})),
            vec!["mtu".into()],
        ),
        (
            "unsupported cniVersion",
            conf(serde_json::json!({"cniVersion": "0.1.0"})),
            vec!["0.1.0".into()],
        ),
    ];
    for (what, stdin, mentions) in &cni_cases {
        check_cni(&node.ns, &pod, what, stdin, mentions);
    }
    println!(
        "bad config: {} weftd cases and {} weft CNI cases failed cleanly",
        cases.len() + 1,
        cni_cases.len()
    );
}

fn check_weftd(case: &WeftdCase, code: Option<i32>, stderr: &str) {
    let what = case.what;
    let Some(code) = code else {
        panic!("{what}: weftd did not exit within {EXIT_TIMEOUT:?}:\n{stderr}");
    };
    assert_ne!(code, 0, "{what}: weftd must fail:\n{stderr}");
    let line = error_line(what, stderr);
    for word in &case.mentions {
        assert!(
            line.contains(word.as_str()),
            "{what}: {line:?} does not name {word:?}"
        );
    }
    println!("weftd, {what}: exit {code}: {line}");
}

fn check_cni(node_ns: &Netns, pod: &Netns, what: &str, stdin: &str, mentions: &[String]) {
    let mut cmd: Command = node_ns.command(&weft_tests::bin_path("weft").to_string_lossy());
    cmd.env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", "badconfig")
        .env("CNI_NETNS", Path::new("/run/netns").join(pod.name()))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/opt/cni/bin")
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "weft, {what}: must fail: {stdout}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "weft, {what}: a panic:\n{stderr}"
    );
    let error: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!("weft, {what}: stdout is not one CNI error object ({e}): {stdout}")
    });
    let msg = error["msg"].as_str().unwrap_or_default();
    assert!(
        error["code"].as_u64().is_some() && !msg.is_empty(),
        "weft, {what}: {error}"
    );
    assert!(!msg.contains('\n'), "weft, {what}: one line: {msg:?}");
    for word in mentions {
        let details = error["details"].as_str().unwrap_or_default();
        assert!(
            msg.contains(word.as_str()) || details.contains(word.as_str()),
            "weft, {what}: {error} does not name {word:?}"
        );
    }
    println!(
        "weft, {what}: exit {}, code {}: {msg}",
        out.status.code().unwrap_or(-1),
        error["code"]
    );
}
