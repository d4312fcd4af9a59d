//! Least privilege (issue 9, item 9): the real weftd, run as an unprivileged user with
//! only the capabilities `deploy/systemd/weftd.service` grants (CAP_NET_ADMIN,
//! CAP_NET_RAW and CAP_BPF, read from the unit file), becomes ready, lets the kernel add
//! the outer headers, carries pod traffic between two nodes whose FORWARD policy is DROP
//! (through the forward rules it adds) and installs its masquerade rules, which a clean
//! stop leaves in place; without CAP_NET_ADMIN it stops with one clear error line (not a
//! panic). The `ipip` backend without CAP_NET_RAW fails the same way, and with it works
//! as UID 0 limited to CAP_NET_ADMIN + CAP_NET_RAW, encapsulating in userspace for want
//! of CAP_BPF.
//!
//! How weftd is started, inside a lab node's namespace (`ip netns exec`, which gives the
//! command a private mount namespace):
//!
//! * as the unit runs it ([`Identity::Unit`]): `/dev/net/tun` is replaced, in that
//!   private mount namespace only, by a node of mode 0666 — what udev's default rule
//!   gives it on a normal host (here it may be 0600; the host's node is not touched) —
//!   and `setpriv` switches to UID/GID 65534 with the bounding, inheritable and ambient
//!   sets exactly the capabilities under test, like `User=`,
//!   `CapabilityBoundingSet=` and `AmbientCapabilities=`;
//! * as the DaemonSet runs it ([`Identity::Container`]): UID 0, every capability but
//!   the ones under test dropped from all sets.

use std::os::unix::fs::chown;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::Context as _;
use weft_tests::lab::{Backend, Lab, LabSpec, HEALTHZ_ADDR};
use weft_tests::netns::{Child, Netns};

/// The unprivileged user weftd runs as (`nobody`; no passwd entry is needed).
const UID: u32 = 65534;
const CAP_NET_ADMIN_BIT: u64 = 1 << 12;
const CAP_NET_RAW_BIT: u64 = 1 << 13;
const CAP_BPF_BIT: u64 = 1 << 39;
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// `sh -c LAUNCHER launcher <identity> <dev dir> <caps> <program> <args>...`: with
/// identity `unit`, mounts a 0666 TUN node over /dev/net/tun (private mount namespace)
/// and switches to UID/GID 65534; then runs the program with exactly the capabilities
/// in <caps> (setpriv syntax, e.g. `+net_admin,+net_raw`, or empty for none).
const LAUNCHER: &str = r#"set -eu
identity="$1"; dev="$2"; caps="$3"; shift 3
user=""
if [ "$identity" = unit ]; then
  mount -t tmpfs -o mode=0755,size=64k weft-dev "$dev"
  mknod -m 0666 "$dev/tun" c 10 200
  mount --bind "$dev/tun" /dev/net/tun
  user="--reuid=65534 --regid=65534 --clear-groups"
fi
exec setpriv $user \
  --bounding-set="-all${caps:+,$caps}" \
  --inh-caps="-all${caps:+,$caps}" \
  --ambient-caps="-all${caps:+,$caps}" \
  -- "$@"
"#;

/// Who weftd runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Identity {
    /// UID 65534, like the systemd unit's dedicated user.
    Unit,
    /// UID 0 with every other capability dropped, like the DaemonSet's container.
    Container,
}

/// The capabilities the shipped unit grants, in setpriv's spelling (`net_admin`).
fn unit_capabilities() -> Vec<String> {
    let path = weft_tests::workspace_root().join("deploy/systemd/weftd.service");
    let unit = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let line = unit
        .lines()
        .find_map(|l| l.trim().strip_prefix("CapabilityBoundingSet="))
        .expect("the unit sets CapabilityBoundingSet=");
    line.split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_lowercase())
        .collect()
}

/// weftd started in node `n` with the given capabilities (`["net_admin", "net_raw"]`).
struct LimitedWeftd {
    child: Child,
    log: PathBuf,
    node_ns: Netns,
}

impl LimitedWeftd {
    fn start(
        lab: &Lab,
        n: usize,
        identity: Identity,
        caps: &[&str],
        extra_args: &[&str],
    ) -> anyhow::Result<Self> {
        let node = lab.node(n)?.clone();
        let weftd = weft_tests::bin_path("weftd");
        anyhow::ensure!(
            weftd.is_file(),
            "{} does not exist; build it with `cargo build -p weft-daemon --bins`",
            weftd.display()
        );
        // weftd's directories belong to its user, as StateDirectory=/RuntimeDirectory=
        // arrange under systemd (and hostPath directories are root's for the
        // container): the node dir (subnet.env is replaced atomically in it) and the
        // state dir. Without CAP_DAC_OVERRIDE even UID 0 needs this.
        let owner = match identity {
            Identity::Unit => UID,
            Identity::Container => 0,
        };
        let state = node.state_dir();
        std::fs::create_dir_all(&state)?;
        for dir in [&node.dir, &state] {
            chown(dir, Some(owner), Some(owner))
                .with_context(|| format!("chown {}", dir.display()))?;
        }
        let dev = node.dir.join("dev");
        std::fs::create_dir_all(&dev)?;
        let log = node.weftd_log();
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        let caps = caps
            .iter()
            .map(|c| format!("+{c}"))
            .collect::<Vec<_>>()
            .join(",");
        let node_ns = Netns::existing(&node.netns);
        let mut cmd = node_ns.command("sh");
        cmd.arg("-c")
            .arg(LAUNCHER)
            .arg("weft-launcher")
            .arg(match identity {
                Identity::Unit => "unit",
                Identity::Container => "container",
            })
            .arg(&dev)
            .arg(&caps)
            .arg(&weftd)
            .args(["--etcd-endpoints", lab.etcd_endpoint()])
            .args(["--iface", "eth0"])
            .arg("--subnet-file")
            .arg(node.subnet_file())
            .arg("--state-dir")
            .arg(&state)
            .args(["--healthz-addr", HEALTHZ_ADDR])
            .args(extra_args)
            .stdout(out.try_clone()?)
            .stderr(out);
        let child = Child::spawn(cmd)?;
        Ok(LimitedWeftd {
            child,
            log,
            node_ns,
        })
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `/readyz` answers 200; fails early, with the log, if weftd exits.
    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let mut exited = None;
        let mut last_answer = String::from("none");
        let ready = weft_tests::wait_until("weftd's /readyz to answer 200", READY_TIMEOUT, || {
            if let Some(status) = self.child.try_status() {
                exited = Some(status);
                return true;
            }
            match self.node_ns.http_get(HEALTHZ_ADDR, "/readyz") {
                Ok((200, _)) => true,
                Ok((code, body)) => {
                    last_answer = format!("{code} {}", body.trim());
                    false
                }
                Err(e) => {
                    last_answer = format!("{e:#}");
                    false
                }
            }
        });
        if let Some(status) = exited {
            anyhow::bail!("weftd exited ({status}):\n{}", self.log_text());
        }
        ready.map_err(|e| {
            anyhow::anyhow!(
                "{e} (last answer: {last_answer}); weftd's log:\n{}",
                self.log_text()
            )
        })
    }

    /// Waits for weftd to exit on its own (it is expected to fail).
    fn wait_exit(&mut self) -> anyhow::Result<ExitStatus> {
        weft_tests::wait_for("weftd to exit", READY_TIMEOUT, || self.child.try_status())
            .map_err(|e| anyhow::anyhow!("{e}; weftd's log:\n{}", self.log_text()))
    }

    /// SIGTERM and wait for a clean exit.
    fn stop(&mut self) -> anyhow::Result<ExitStatus> {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.pid())?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        self.wait_exit()
    }

    /// `Uid`, `CapEff`, `CapBnd` and `CapAmb` of the running process (the launcher
    /// `exec`s, so the child's PID is weftd's by now).
    fn credentials(&self) -> anyhow::Result<(u32, u64, u64, u64)> {
        let pid = self.child.pid();
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))?;
        anyhow::ensure!(comm.trim() == "weftd", "PID {pid} is {comm:?}, not weftd");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let field = |name: &str| -> anyhow::Result<&str> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
                .with_context(|| format!("no {name} in /proc/{pid}/status"))
        };
        let caps =
            |name: &str| -> anyhow::Result<u64> { Ok(u64::from_str_radix(field(name)?, 16)?) };
        let uid: u32 = field("Uid:")?
            .split_whitespace()
            .next()
            .context("empty Uid")?
            .parse()?;
        Ok((uid, caps("CapEff:")?, caps("CapBnd:")?, caps("CapAmb:")?))
    }
}

/// The last line weftd printed: its one-line error when it fails.
fn last_line(log: &str) -> &str {
    log.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
}

fn assert_clean_failure(what: &str, status: ExitStatus, log: &str, mentions: &[&str]) {
    assert!(
        !log.contains("panicked") && !log.contains("RUST_BACKTRACE"),
        "{what}: weftd panicked instead of failing cleanly:\n{log}"
    );
    assert_eq!(
        status.code(),
        Some(1),
        "{what}: expected exit status 1 (an error, not a panic or a signal), got {status}:\n{log}"
    );
    let line = last_line(log);
    eprintln!("{what}: {line}");
    assert!(
        line.starts_with("weftd: "),
        "{what}: last line is not weftd's error: {line:?}"
    );
    for m in mentions {
        assert!(
            line.contains(m),
            "{what}: error {line:?} does not mention {m:?}"
        );
    }
}

/// `devices.offloads.kernel_encap` of node `n`'s `/v1/status`, once its data plane is up.
fn kernel_encap(lab: &Lab, n: usize) -> Option<bool> {
    let ns = lab.node_ns(n).ok()?;
    let mut state = None;
    let _ = weft_tests::wait_until("the data plane in /v1/status", READY_TIMEOUT, || {
        state = ns
            .http_get(HEALTHZ_ADDR, "/v1/status")
            .ok()
            .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok())
            .and_then(|status| status["devices"]["offloads"]["kernel_encap"].as_bool());
        state.is_some()
    });
    state
}

fn nft_table_exists(ns: &Netns) -> bool {
    ns.run("nft", &["list", "table", "ip", "weft"]).is_ok()
}

fn tools_present() -> bool {
    ["setpriv", "mknod", "nft"].iter().all(|tool| {
        Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

fn lab(nodes: usize, backend: Backend) -> Lab {
    Lab::start(LabSpec {
        nodes,
        backend,
        start_weftd: false,
        ready_timeout: READY_TIMEOUT,
        ..LabSpec::default()
    })
    .expect("lab")
}

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn weftd_runs_unprivileged_with_only_the_units_capabilities() {
    if !weft_tests::require_root("weftd_runs_unprivileged_with_only_the_units_capabilities") {
        return;
    }
    assert!(
        tools_present(),
        "setpriv, mknod and nft are needed (scripts/setup.sh)"
    );
    let granted = unit_capabilities();
    assert_eq!(
        granted,
        ["net_admin", "net_raw", "bpf"],
        "what the unit grants"
    );
    let granted: Vec<&str> = granted.iter().map(String::as_str).collect();
    let mut lab = lab(3, Backend::Vxlan);

    // Nodes 1 and 2: the unit's user and capabilities, masquerading on, on hosts whose
    // FORWARD policy is DROP (the forward rules are added by the unprivileged weftd).
    for n in [1, 2] {
        lab.node_ns(n)
            .unwrap()
            .run("iptables-nft", &["-w", "-P", "FORWARD", "DROP"])
            .unwrap();
    }
    let mut n1 = LimitedWeftd::start(&lab, 1, Identity::Unit, &granted, &["--ip-masq"]).unwrap();
    let mut n2 = LimitedWeftd::start(&lab, 2, Identity::Unit, &granted, &["--ip-masq"]).unwrap();
    n1.wait_ready().unwrap();
    n2.wait_ready().unwrap();

    let (uid, eff, bnd, amb) = n1.credentials().unwrap();
    let bits = CAP_NET_ADMIN_BIT | CAP_NET_RAW_BIT | CAP_BPF_BIT;
    assert_eq!(uid, UID, "weftd must not run as root here");
    assert_eq!(eff, bits, "effective capabilities {eff:#x}");
    assert_eq!(bnd, bits, "bounding set {bnd:#x}");
    assert_eq!(amb, bits, "ambient set {amb:#x} (what nft inherits)");

    // CAP_BPF is what lets the kernel add the outer headers.
    assert_eq!(
        kernel_encap(&lab, 1),
        Some(true),
        "kernel encapsulation with the unit's capabilities\n{}",
        n1.log_text()
    );

    // Everything weftd is for works: subnet.env, masquerade and forward rules, pod
    // traffic.
    let (subnet, _) = lab.node_subnet(1).unwrap();
    let env_owner = std::os::unix::fs::MetadataExt::uid(
        &std::fs::metadata(lab.node(1).unwrap().subnet_file()).unwrap(),
    );
    assert_eq!(
        env_owner, UID,
        "subnet.env written by the unprivileged weftd"
    );
    assert_eq!(subnet.prefix_len(), 24, "{subnet}");
    // weftd installs the rules as its data plane comes up, not necessarily before
    // /readyz turns 200.
    let node1 = lab.node_ns(1).unwrap();
    let masq = weft_tests::wait_until("weft's masquerade table", READY_TIMEOUT, || {
        nft_table_exists(&node1)
    });
    assert!(
        masq.is_ok(),
        "masquerade table (nft run by weftd): {masq:?}\n{}",
        n1.log_text()
    );
    lab.add_pod(1, "p1").unwrap();
    let p2 = lab.add_pod(2, "p2").unwrap();
    let pinged = weft_tests::wait_until("p1 to reach p2 across nodes", READY_TIMEOUT, || {
        lab.ping("p1", p2)
    });
    assert!(
        pinged.is_ok(),
        "pod traffic with only two capabilities: {pinged:?}\nn1:\n{}",
        n1.log_text()
    );

    // A clean stop works unprivileged too (and leaves the masquerade table in place
    // for the next start).
    let status = n1.stop().unwrap();
    assert!(
        status.success(),
        "weftd's exit on SIGTERM: {status}\n{}",
        n1.log_text()
    );
    assert!(
        nft_table_exists(&lab.node_ns(1).unwrap()),
        "masquerade table removed by a stop without --cleanup-on-exit"
    );
    n2.stop().unwrap();

    // Node 3, never set up: without CAP_NET_ADMIN weftd cannot create its devices and
    // says so in one line.
    let mut n3 =
        LimitedWeftd::start(&lab, 3, Identity::Unit, &["net_raw"], &["--ip-masq"]).unwrap();
    let status = n3.wait_exit().unwrap();
    assert_clean_failure(
        "without CAP_NET_ADMIN",
        status,
        &n3.log_text(),
        &["not permitted"],
    );
    let ns3 = lab.node_ns(3).unwrap();
    assert!(!nft_table_exists(&ns3));
    for device in ["cni0", "weft.1"] {
        assert!(
            !weft_tests::link::exists(&ns3, device),
            "{device} created without CAP_NET_ADMIN"
        );
    }
}

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn ipip_backend_needs_net_raw() {
    if !weft_tests::require_root("ipip_backend_needs_net_raw") {
        return;
    }
    assert!(
        tools_present(),
        "setpriv, mknod and nft are needed (scripts/setup.sh)"
    );
    let lab = lab(1, Backend::Ipip);

    let mut without_raw =
        LimitedWeftd::start(&lab, 1, Identity::Unit, &["net_admin"], &[]).unwrap();
    let status = without_raw.wait_exit().unwrap();
    assert_clean_failure(
        "ipip without CAP_NET_RAW",
        status,
        &without_raw.log_text(),
        &["not permitted"],
    );

    // With CAP_NET_RAW added it works — here as the DaemonSet runs it: UID 0, but with
    // no capability except the two (so no CAP_DAC_OVERRIDE, no CAP_SYS_ADMIN).
    let mut with_raw =
        LimitedWeftd::start(&lab, 1, Identity::Container, &["net_admin", "net_raw"], &[]).unwrap();
    with_raw.wait_ready().unwrap();
    let (uid, eff, bnd, _) = with_raw.credentials().unwrap();
    let bits = CAP_NET_ADMIN_BIT | CAP_NET_RAW_BIT;
    assert_eq!(
        (uid, eff, bnd),
        (0, bits, bits),
        "capabilities {eff:#x} / {bnd:#x}"
    );
    // Without CAP_BPF the kernel encapsulation is off, said once, and the rest works.
    assert_eq!(
        kernel_encap(&lab, 1),
        Some(false),
        "{}",
        with_raw.log_text()
    );
    assert!(
        with_raw
            .log_text()
            .contains("kernel encapsulation unavailable"),
        "{}",
        with_raw.log_text()
    );
    assert!(
        with_raw.stop().unwrap().success(),
        "{}",
        with_raw.log_text()
    );
}
