//! The real `weftd` and `weftctl` binaries in a network namespace: weftd started before
//! etcd keeps retrying and reports not ready, proceeds once etcd and the network config
//! appear, and after a restart keeps its subnet and VTEP MAC. Needs root.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use weft_tests::etcd::Etcd;
use weft_tests::netns::{Child, Netns};
use weft_tests::{bin_path, require_root, run_prefix, wait_for};

const PREFIX: &str = "/coreos.com/network";
const ETCD_IP: &str = "192.0.2.254";
const NODE_IP: &str = "192.0.2.1";

/// A namespace with an underlay veth pair: `ul0` (the node, 192.0.2.1) and `ul1`
/// (where etcd will listen, 192.0.2.254).
fn node_namespace() -> Netns {
    let ns = Netns::new(&format!("{}-sw", run_prefix())).expect("netns");
    ns.ip(&["link", "add", "ul0", "type", "veth", "peer", "name", "ul1"])
        .unwrap();
    ns.ip(&["addr", "add", &format!("{NODE_IP}/24"), "dev", "ul0"])
        .unwrap();
    ns.ip(&["addr", "add", &format!("{ETCD_IP}/24"), "dev", "ul1"])
        .unwrap();
    ns.ip(&["link", "set", "ul0", "up"]).unwrap();
    ns.ip(&["link", "set", "ul1", "up"]).unwrap();
    ns
}

fn spawn_weftd(ns: &Netns, dir: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("weftd.log"))
        .unwrap();
    let mut cmd = ns.command(bin_path("weftd").to_str().unwrap());
    cmd.args([
        "--iface",
        "ul0",
        "--etcd-endpoints",
        &format!("http://{ETCD_IP}:2379"),
        "--subnet-file",
        dir.join("subnet.env").to_str().unwrap(),
        "--state-dir",
        dir.join("state").to_str().unwrap(),
        "--healthz-addr",
        "127.0.0.1:9842",
        "--log-level",
        "info",
    ])
    .stdout(log.try_clone().unwrap())
    .stderr(log);
    ns.spawn(cmd).expect("spawn weftd")
}

/// weftd's `/v1/status`, through `weftctl status --json` in the namespace.
fn status(ns: &Netns) -> Option<serde_json::Value> {
    let out = ns
        .command(bin_path("weftctl").to_str().unwrap())
        .args(["status", "--json"])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

fn log_of(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("weftd.log")).unwrap_or_default()
}

fn sigterm_and_wait(child: &mut Child, dir: &Path) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.pid() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = wait_for(
        "weftd to exit after SIGTERM",
        Duration::from_secs(10),
        || child.try_status(),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", log_of(dir)));
    assert!(
        status.success(),
        "weftd exit status {status}\n{}",
        log_of(dir)
    );
}

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn weftd_waits_for_etcd_then_keeps_subnet_and_mac_across_restart() {
    if !require_root("weftd_waits_for_etcd_then_keeps_subnet_and_mac_across_restart") {
        return;
    }
    let ns = node_namespace();
    let dir = tempfile::tempdir().unwrap();
    let mut weftd = spawn_weftd(&ns, dir.path());

    // No etcd yet: weftd stays up, serves its endpoints and says why it is not ready.
    let waiting = wait_for(
        "weftd to report waiting for etcd",
        Duration::from_secs(20),
        || {
            let s = status(&ns)?;
            (s["lease"]["state"] == "waiting_for_etcd").then_some(s)
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", log_of(dir.path())));
    assert_eq!(waiting["ready"], false);
    assert!(
        waiting["not_ready_reason"]
            .as_str()
            .unwrap()
            .contains("etcd"),
        "{waiting}"
    );
    let readyz = Command::new("ip")
        .args(["netns", "exec", ns.name()])
        .arg(bin_path("weftctl"))
        .args(["status"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&readyz.stdout).contains("ready:   false"));
    assert!(
        weftd.is_running(),
        "weftd must keep retrying\n{}",
        log_of(dir.path())
    );

    // etcd appears, then the config: weftd proceeds on its own.
    let etcd = Etcd::start_in(&ns, ETCD_IP).expect("etcd");
    etcd.put(
        &format!("{PREFIX}/config"),
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":1}}"#,
    )
    .unwrap();
    let ready = wait_for("weftd to become ready", Duration::from_secs(30), || {
        let s = status(&ns)?;
        (s["ready"] == true).then_some(s)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", log_of(dir.path())));
    let subnet = ready["lease"]["subnet"].as_str().unwrap().to_owned();
    assert_eq!(ready["lease"]["public_ip"], NODE_IP);
    assert_eq!(ready["etcd"]["state"], "reachable");

    // subnet.env in flannel's format, the record in etcd with our MAC.
    let env = weft_config::SubnetEnv::read(dir.path().join("subnet.env")).unwrap();
    assert_eq!(env.subnet_network().to_string(), subnet);
    assert_eq!(env.mtu, 1450);
    let node_json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("state/node.json")).unwrap())
            .unwrap();
    let mac = node_json["vtep_mac"].as_str().unwrap().to_owned();
    let key = format!("{PREFIX}/subnets/{}", subnet.replace('/', "-"));
    let record = etcd.get(&key).unwrap().expect("lease in etcd");
    assert!(
        record.contains(&format!("\"VtepMAC\":\"{mac}\"")),
        "{record}"
    );

    // `weftctl leases` lists it with a TTL.
    let leases = ns
        .run(
            bin_path("weftctl").to_str().unwrap(),
            &["leases", "--etcd-endpoints", &etcd.endpoint(), "--json"],
        )
        .unwrap();
    let leases: serde_json::Value = serde_json::from_str(&leases).unwrap();
    let row = &leases[0];
    assert_eq!(row["subnet"], subnet.as_str());
    assert_eq!(row["public_ip"], NODE_IP);
    assert_eq!(row["vtep_mac"], mac.as_str());
    assert!(row["expires_in_secs"].as_i64().unwrap() > 86_000);

    // Restart: same subnet, same MAC.
    sigterm_and_wait(&mut weftd, dir.path());
    let mut weftd = spawn_weftd(&ns, dir.path());
    let again = wait_for(
        "restarted weftd to become ready",
        Duration::from_secs(30),
        || {
            let s = status(&ns)?;
            (s["ready"] == true).then_some(s)
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", log_of(dir.path())));
    assert_eq!(again["lease"]["subnet"], subnet.as_str());
    let record = etcd.get(&key).unwrap().expect("lease in etcd");
    assert!(
        record.contains(&format!("\"VtepMAC\":\"{mac}\"")),
        "{record}"
    );
    assert_eq!(
        etcd.get_prefix(&format!("{PREFIX}/subnets/"))
            .unwrap()
            .len(),
        1,
        "a restart must not leave a second lease behind"
    );
    sigterm_and_wait(&mut weftd, dir.path());
}
