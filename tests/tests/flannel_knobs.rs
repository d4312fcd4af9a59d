//! flanneld's knobs on the real weftd, etcd and kernel (issue 20, points 5 and 6):
//! `--iface-regex` and `--iface-can-reach` choosing between two underlay interfaces,
//! `FLANNELD_*` variables taking effect below `WEFTD_*`, `SubnetMin`/`SubnetMax`
//! bounding the lease, `Backend.MTU` in subnet.env and on the TUN device,
//! `--subnet-lease-renew-margin` seen as the etcd lease's TTL running down to the
//! margin before it is renewed, and `weftctl leases` needing no flags on a node (and
//! saying in one short line when etcd is down). Needs root.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use weft_tests::etcd::Etcd;
use weft_tests::netns::{Child, Netns};
use weft_tests::{bin_path, require_root, run_prefix, wait_for};

const ETCD_IP: &str = "192.0.2.254";
const UL0_IP: &str = "192.0.2.1";
const UL1_IP: &str = "198.51.100.1";
const VXLAN: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":1}}"#;

/// A node namespace with two underlays: `ul0` (192.0.2.1/24, etcd's side at
/// 192.0.2.254) and `ul1` (198.51.100.1/24), no default route, etcd running.
struct Node {
    // Drop order: etcd before its namespace.
    etcd: Etcd,
    ns: Netns,
    dir: tempfile::TempDir,
}

fn node(tag: &str) -> Node {
    let ns = Netns::new(&format!("{}-{tag}", run_prefix())).expect("netns");
    for (dev, peer, ip, peer_ip) in [
        ("ul0", "ul0p", UL0_IP, Some(ETCD_IP)),
        ("ul1", "ul1p", UL1_IP, None),
    ] {
        ns.ip(&["link", "add", dev, "type", "veth", "peer", "name", peer])
            .unwrap();
        ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", dev])
            .unwrap();
        if let Some(peer_ip) = peer_ip {
            ns.ip(&["addr", "add", &format!("{peer_ip}/24"), "dev", peer])
                .unwrap();
        }
        ns.ip(&["link", "set", dev, "up"]).unwrap();
        ns.ip(&["link", "set", peer, "up"]).unwrap();
    }
    let etcd = Etcd::start_in(&ns, ETCD_IP).expect("etcd");
    let dir = tempfile::Builder::new()
        .prefix("weft-flannel-knobs-")
        .tempdir()
        .unwrap();
    Node { etcd, ns, dir }
}

/// One weftd run: its directory (subnet.env, state, log) and the process.
struct Weftd {
    child: Child,
    dir: PathBuf,
}

impl Weftd {
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("weftd.log")).unwrap_or_default()
    }

    fn subnet_env(&self) -> PathBuf {
        self.dir.join("subnet.env")
    }

    fn stop(mut self) {
        self.child.terminate(Duration::from_secs(10));
    }
}

impl Node {
    /// Starts weftd with `args` and `env` (nothing else: no etcd or interface flags
    /// unless the caller gives them), `--cleanup-on-exit` so runs do not inherit.
    fn weftd(&self, run: &str, args: &[&str], env: &[(&str, &str)]) -> Weftd {
        let dir = self.dir.path().join(run);
        std::fs::create_dir_all(&dir).unwrap();
        let log = std::fs::File::create(dir.join("weftd.log")).unwrap();
        let mut cmd = self.ns.command(bin_path("weftd").to_str().unwrap());
        if !env.iter().any(|(k, _)| k.ends_with("_SUBNET_FILE")) {
            cmd.arg("--subnet-file").arg(dir.join("subnet.env"));
        }
        cmd.arg("--state-dir")
            .arg(dir.join("state"))
            .args(["--cleanup-on-exit", "--tc-attach=off"])
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(env.iter().copied())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        Weftd {
            child: self.ns.spawn(cmd).expect("spawn weftd"),
            dir,
        }
    }

    fn status(&self) -> Option<serde_json::Value> {
        let (code, body) = self.ns.http_get("127.0.0.1:9842", "/v1/status").ok()?;
        (code == 200).then(|| serde_json::from_str(&body).ok())?
    }

    /// Waits for weftd to hold a lease; its `/v1/status`.
    fn held(&self, weftd: &Weftd) -> serde_json::Value {
        wait_for("weftd to hold a lease", Duration::from_secs(30), || {
            self.status().filter(|s| s["lease"]["state"] == "held")
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", weftd.log()))
    }

    fn ready(&self, weftd: &Weftd) -> serde_json::Value {
        wait_for("weftd to be ready", Duration::from_secs(30), || {
            self.status().filter(|s| s["ready"] == true)
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", weftd.log()))
    }

    /// `weftctl <args>` in the node: (exit code, stdout, stderr).
    fn weftctl(&self, args: &[&str]) -> (i32, String, String) {
        let out = self
            .ns
            .command(bin_path("weftctl").to_str().unwrap())
            .args(args)
            .env_remove("WEFTD_ETCD_ENDPOINTS")
            .env_remove("WEFTD_ETCD_PREFIX")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

fn etcd_flag() -> String {
    format!("--etcd-endpoints=http://{ETCD_IP}:2379")
}

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn regex_can_reach_and_flanneld_env_choose_the_underlay_as_flanneld_does() {
    if !require_root("regex_can_reach_and_flanneld_env_choose_the_underlay_as_flanneld_does") {
        return;
    }
    let node = node("fk-if");
    node.etcd.put("/coreos.com/network/config", VXLAN).unwrap();
    // A route that sends part of ul1's network out of ul0: --iface-can-reach follows
    // the kernel's route, not the look of the address.
    node.ns
        .ip(&["route", "add", "198.51.100.128/25", "dev", "ul0"])
        .unwrap();
    // And a part no interface reaches.
    node.ns
        .ip(&["route", "add", "unreachable", "198.51.100.64/26"])
        .unwrap();
    let etcd = etcd_flag();
    let cases: [(&str, Vec<&str>, &str); 5] = [
        // An address match on the second underlay.
        ("regex-addr", vec!["--iface-regex=^198\\.51\\."], UL1_IP),
        // --iface names first; one that does not exist is skipped, then the regexes
        // in order, a name match when no address matches.
        (
            "iface-then-regex",
            vec![
                "--iface=nosuch0",
                "--iface-regex=^nomatch$",
                "--iface-regex=^ul1$",
            ],
            UL1_IP,
        ),
        (
            "iface-first",
            vec!["--iface=nosuch0", "--iface=ul1", "--iface-regex=^ul0$"],
            UL1_IP,
        ),
        (
            "can-reach-ul1",
            vec!["--iface-can-reach=198.51.100.20"],
            UL1_IP,
        ),
        (
            "can-reach-by-route",
            vec!["--iface-can-reach=198.51.100.200"],
            UL0_IP,
        ),
    ];
    for (run, args, public_ip) in cases {
        let mut all = vec![etcd.as_str()];
        all.extend(args.iter().copied());
        let weftd = node.weftd(run, &all, &[]);
        let status = node.held(&weftd);
        assert_eq!(
            status["lease"]["public_ip"],
            public_ip,
            "{run}: {args:?}\n{}",
            weftd.log()
        );
        println!("{run}: {args:?} -> PublicIP {public_ip}");
        weftd.stop();
    }

    // Nothing matches: weftd fails at once, one line naming every attempt.
    let mut weftd = node.weftd(
        "no-match",
        &[
            &etcd,
            "--iface-regex=^wlan",
            "--iface-can-reach=198.51.100.70",
            "--iface=nosuch0",
        ],
        &[],
    );
    wait_for("weftd to give up", Duration::from_secs(20), || {
        weftd.child.try_status()
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", weftd.log()));
    let log = weftd.log();
    let last = log.trim_end().lines().last().unwrap_or_default().to_owned();
    assert!(
        last.starts_with("weftd: no underlay interface found: --iface nosuch0")
            && last.contains("--iface-regex ^wlan")
            && last.contains("--iface-can-reach 198.51.100.70 (")
            && last.contains("ul1 [198.51.100.1]"),
        "{log}"
    );
    println!("nothing matches: {last}");

    // flanneld's environment: FLANNELD_ETCD_ENDPOINTS/PREFIX/SUBNET_FILE/IFACE take
    // effect; WEFTD_IFACE wins over FLANNELD_IFACE; one notice names them.
    node.etcd.put("/flannel-env/network/config", VXLAN).unwrap();
    let subnet_file = node.dir.path().join("flannel-env.subnet.env");
    let endpoints = format!("http://{ETCD_IP}:2379");
    let env = [
        ("FLANNELD_ETCD_ENDPOINTS", endpoints.as_str()),
        ("FLANNELD_ETCD_PREFIX", "/flannel-env/network"),
        ("FLANNELD_SUBNET_FILE", subnet_file.to_str().unwrap()),
        ("FLANNELD_IFACE", "ul1"),
        ("WEFTD_IFACE", "ul0"),
        ("FLANNELD_IPTABLES_RESYNC", "5"),
    ];
    let weftd = node.weftd("flanneld-env", &[], &env);
    let status = node.held(&weftd);
    assert_eq!(status["lease"]["public_ip"], UL0_IP, "WEFTD_IFACE wins");
    let subnet = status["lease"]["subnet"]
        .as_str()
        .unwrap()
        .replace('/', "-");
    let record = node
        .etcd
        .get(&format!("/flannel-env/network/subnets/{subnet}"))
        .unwrap();
    assert!(
        record.is_some_and(|r| r.contains(UL0_IP)),
        "the lease is under FLANNELD_ETCD_PREFIX"
    );
    wait_for(
        "subnet.env at FLANNELD_SUBNET_FILE",
        Duration::from_secs(10),
        || weft_config::SubnetEnv::read(&subnet_file).ok(),
    )
    .unwrap();
    assert_eq!(status["etcd"]["prefix"], "/flannel-env/network");
    let log = weftd.log();
    let notice: Vec<&str> = log.lines().filter(|l| l.contains("FLANNELD_")).collect();
    assert_eq!(notice.len(), 1, "one notice:\n{log}");
    for part in [
        "using flanneld's FLANNELD_ETCD_ENDPOINTS",
        "overridden by a flag or WEFTD_ variable: FLANNELD_IFACE",
        "ignored: FLANNELD_IPTABLES_RESYNC",
    ] {
        assert!(notice[0].contains(part), "{part}: {}", notice[0]);
    }
    weftd.stop();
}

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn subnet_min_max_bound_the_lease_and_backend_mtu_sets_the_overlay_mtu() {
    if !require_root("subnet_min_max_bound_the_lease_and_backend_mtu_sets_the_overlay_mtu") {
        return;
    }
    let node = node("fk-net");
    node.etcd
        .put(
            "/coreos.com/network/config",
            r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.200.0","SubnetMax":"10.244.201.0",
                "Backend":{"Type":"vxlan","VNI":1,"MTU":1400}}"#,
        )
        .unwrap();
    // Another node holds SubnetMin: only 10.244.201.0 is left in range.
    node.etcd
        .put(
            "/coreos.com/network/subnets/10.244.200.0-24",
            r#"{"PublicIP":"192.0.2.99","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:99"}}"#,
        )
        .unwrap();
    let etcd = etcd_flag();
    let weftd = node.weftd("bounded", &[&etcd, "--iface=ul0"], &[]);
    let status = node.ready(&weftd);
    assert_eq!(status["lease"]["subnet"], "10.244.201.0/24", "{status}");
    let env = weft_config::SubnetEnv::read(weftd.subnet_env()).unwrap();
    assert_eq!(env.mtu, 1350, "Backend.MTU 1400 minus VXLAN's 50");
    let tun = node.ns.ip(&["-o", "link", "show", "weft.1"]).unwrap();
    assert!(tun.contains("mtu 1350 "), "{tun}");
    weftd.stop();

    // Both subnets in range taken: the next node is told the range is exhausted.
    node.etcd
        .put(
            "/coreos.com/network/subnets/10.244.201.0-24",
            r#"{"PublicIP":"192.0.2.98","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:98"}}"#,
        )
        .unwrap();
    let mut weftd = node.weftd("exhausted", &[&etcd, "--iface=ul1"], &[]);
    wait_for("weftd to give up", Duration::from_secs(20), || {
        weftd.child.try_status()
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", weftd.log()));
    let log = weftd.log();
    let last = log.trim_end().lines().last().unwrap_or_default();
    assert!(
        last.starts_with("weftd:")
            && last.contains("SubnetMin 10.244.200.0 and SubnetMax 10.244.201.0"),
        "{log}"
    );

    // A Backend.MTU beyond the underlay interface's MTU is refused, naming both.
    node.etcd
        .put(
            "/too-big/network/config",
            r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","MTU":1600}}"#,
        )
        .unwrap();
    let mut weftd = node.weftd(
        "mtu-too-big",
        &[&etcd, "--iface=ul0", "--etcd-prefix=/too-big/network"],
        &[],
    );
    wait_for("weftd to refuse the MTU", Duration::from_secs(20), || {
        weftd.child.try_status()
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", weftd.log()));
    let log = weftd.log();
    let last = log.trim_end().lines().last().unwrap_or_default();
    assert!(
        last.contains("Backend.MTU 1600") && last.contains("MTU 1500") && last.contains("ul0"),
        "{log}"
    );
}

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn the_renew_margin_lets_the_lease_run_down_to_it_before_renewing() {
    if !require_root("the_renew_margin_lets_the_lease_run_down_to_it_before_renewing") {
        return;
    }
    let node = node("fk-renew");
    node.etcd.put("/coreos.com/network/config", VXLAN).unwrap();
    // A 90 s lease renewed 1 minute before expiry: it runs down to 60 s, then back to
    // 90. (With flannel's default margin of 60 minutes, longer than this lease, it
    // would be renewed at every 10 s probe and never fall below 80 s.)
    let etcd = etcd_flag();
    let weftd = node.weftd(
        "renew",
        &[
            &etcd,
            "--iface=ul0",
            "--lease-ttl-secs=90",
            "--subnet-lease-renew-margin=1",
        ],
        &[],
    );
    node.held(&weftd);
    let mut lowest = i64::MAX;
    let lowest = wait_for(
        "the lease to run down to the margin and be renewed",
        Duration::from_secs(75),
        || {
            // weftctl needs no flags: it asks the node's weftd where etcd is.
            let (code, out, _) = node.weftctl(&["leases", "--json"]);
            let rows: serde_json::Value = serde_json::from_str(&out).ok().filter(|_| code == 0)?;
            let ttl = rows[0]["expires_in_secs"].as_i64()?;
            if ttl > lowest.saturating_add(15) {
                return Some(lowest);
            }
            lowest = lowest.min(ttl);
            None
        },
    )
    .unwrap_or_else(|e| panic!("{e} (lowest TTL seen {lowest})\n{}", weftd.log()));
    assert!(
        (55..=65).contains(&lowest),
        "renewed with {lowest} s left; the margin is 60 s\n{}",
        weftd.log()
    );
    let status = node.status().unwrap();
    assert!(
        status["counters"]["lease_renewals"].as_u64().unwrap() >= 1,
        "{status}"
    );
    println!("lease renewed with {lowest} s of 90 left (margin 60 s)");
    weftd.stop();
}

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn weftctl_needs_no_flags_on_a_node_and_a_dead_etcd_is_one_short_line() {
    if !require_root("weftctl_needs_no_flags_on_a_node_and_a_dead_etcd_is_one_short_line") {
        return;
    }
    let mut node = node("fk-ctl");
    node.etcd.put("/weft-test/network/config", VXLAN).unwrap();
    let etcd = etcd_flag();
    let weftd = node.weftd(
        "ctl",
        &[&etcd, "--etcd-prefix=/weft-test/network", "--iface=ul0"],
        &[],
    );
    let status = node.held(&weftd);
    assert_eq!(
        status["etcd"]["endpoints"],
        serde_json::json!([format!("http://{ETCD_IP}:2379")])
    );
    let subnet = status["lease"]["subnet"].as_str().unwrap();

    // No flags: the endpoints and the prefix are weftd's (neither is the default).
    let (code, out, err) = node.weftctl(&["leases", "--verbose"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(subnet) && out.contains(UL0_IP), "{out}");
    assert!(
        err.contains(&format!(
            "--etcd-endpoints http://{ETCD_IP}:2379 (from weftd at 127.0.0.1:9842)"
        )) && err.contains("--etcd-prefix /weft-test/network (from weftd"),
        "{err}"
    );
    println!("weftctl leases --verbose, no etcd flags:\n{err}{out}");
    // An explicit flag still wins: the default prefix has no leases.
    let (code, out, err) = node.weftctl(&["leases", "--json", "--etcd-prefix=/coreos.com/network"]);
    assert_eq!((code, out.trim()), (0, "[]"), "{err}");

    // etcd stopped: one line, under 200 characters, naming the endpoint.
    node.etcd.stop();
    let (code, out, err) = node.weftctl(&["leases"]);
    assert_eq!(code, 1, "{out}{err}");
    let line = err.trim_end();
    assert_eq!(line.lines().count(), 1, "{err}");
    assert!(line.len() < 200, "{} chars: {line}", line.len());
    assert!(
        line.starts_with("weftctl: etcd at http://192.0.2.254:2379")
            && line.to_lowercase().contains("connection refused"),
        "{line}"
    );
    println!("weftctl with etcd stopped ({} chars): {line}", line.len());
    // weftd's own view of it is as short.
    let reason = wait_for("weftd to see etcd gone", Duration::from_secs(30), || {
        let s = node.status()?;
        s["etcd"]["error"].as_str().map(str::to_owned)
    })
    .unwrap();
    assert!(reason.len() < 200 && !reason.contains("tonic"), "{reason}");
    weftd.stop();
}

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn weftds_fatal_etcd_error_is_one_line_naming_the_cause_once() {
    if !require_root("weftds_fatal_etcd_error_is_one_line_naming_the_cause_once") {
        return;
    }
    let node = node("fk-auth");
    node.etcd.put("/coreos.com/network/config", VXLAN).unwrap();
    node.etcd
        .etcdctl(&["user", "add", "root", "--new-user-password=right-password"])
        .unwrap();
    node.etcd.etcdctl(&["auth", "enable"]).unwrap();
    let etcd = etcd_flag();
    let mut weftd = node.weftd(
        "auth",
        &[
            &etcd,
            "--iface=ul0",
            "--etcd-username=root",
            "--etcd-password=wrong-password",
        ],
        &[],
    );
    wait_for("weftd to give up", Duration::from_secs(30), || {
        weftd.child.try_status()
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", weftd.log()));
    let log = weftd.log();
    let errors: Vec<&str> = log.lines().filter(|l| l.starts_with("weftd:")).collect();
    assert_eq!(errors.len(), 1, "{log}");
    let line = errors[0];
    assert!(line.len() < 200, "{} chars: {line}", line.len());
    assert!(
        line.contains("192.0.2.254:2379") && line.contains("authentication failed"),
        "{line}"
    );
    assert_eq!(
        line.matches("authentication failed").count(),
        1,
        "said once: {line}"
    );
    println!("weftd, wrong etcd password ({} chars): {line}", line.len());
}
