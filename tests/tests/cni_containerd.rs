//! The `weft` CNI plugin under a real runtime: containerd (its own root, state and
//! socket in the lab's temp dir) running busybox containers with `ctr run --cni`, with a
//! conflist that is the shipped `deploy/cni/10-weft.conflist` (1.0.0 + `cniVersions` 1.1.0;
//! weft, then the reference `portmap`). Removing the containers
//! through ctr (which runs CNI DEL through the chain) must leave no IP and no veth.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use weft_tests::lab::{containerd, CniKind, Lab, LabSpec};
use weft_tests::netns::Netns;

/// Allocation files (`<ip>`) in a host-local-layout directory tree (any network name).
fn allocations(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(networks) = std::fs::read_dir(dir) else {
        return out;
    };
    for net in networks.flatten() {
        if let Ok(files) = std::fs::read_dir(net.path()) {
            out.extend(
                files
                    .flatten()
                    .filter_map(|f| f.file_name().into_string().ok())
                    .filter(|n| n.parse::<Ipv4Addr>().is_ok()),
            );
        }
    }
    out
}

/// Host-side veths of the `weft` plugin (`wf…`) in node `n`.
fn host_veths(lab: &Lab, n: usize) -> Vec<String> {
    let ns = lab.node_ns(n).unwrap();
    ns.ip(&["-o", "link", "show", "type", "veth"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .filter(|n| n.starts_with("wf"))
        .collect()
}

/// `/etc/netns/<node-ns>` made by this test (for the node's conflist); removed on Drop.
struct EtcNetns(std::path::PathBuf);

impl Drop for EtcNetns {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A container run the way `ctr run --rm --cni` runs one: ctr stays in the foreground,
/// sets the network up with CNI ADD, and when the task exits runs CNI DEL through the
/// conflist and deletes the container. (containerd 1.6's ctr runs DEL only on this
/// path, not for `run -d` containers.)
struct Pod {
    id: String,
    pid: u32,
    ip: Ipv4Addr,
    ctr: weft_tests::netns::Child,
}

/// Write node `n`'s conflist: the shipped `deploy/cni/10-weft.conflist` (weft, then the
/// reference portmap; `cniVersion` 1.0.0 with `cniVersions` offering 1.1.0, which
/// containerd 1.6's libcni does not know and must ignore), with the weft entry's
/// subnet.env and IPAM store pointed at the lab node's.
fn prepare_node(lab: &Lab, n: usize) -> anyhow::Result<EtcNetns> {
    let node = lab.node(n)?;
    let (subnet, mtu) = lab.node_subnet(n)?;
    let etc = std::path::PathBuf::from(format!("/etc/netns/{}", node.netns));
    let net_d = etc.join("cni/net.d");
    std::fs::create_dir_all(&net_d)?;
    let guard = EtcNetns(etc);
    // The lab's own weft entry says where this node's files are.
    let lab_list: serde_json::Value =
        serde_json::from_str(&containerd::conflist(CniKind::Weft, node, subnet, mtu))?;
    let shipped = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/cni/10-weft.conflist"
    );
    let mut parsed: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(shipped).with_context(|| format!("reading {shipped}"))?,
    )
    .with_context(|| format!("parsing {shipped}"))?;
    anyhow::ensure!(
        parsed["cniVersions"]
            .as_array()
            .is_some_and(|v| v.contains(&serde_json::json!("1.1.0"))),
        "{shipped} offers no 1.1.0"
    );
    for key in ["subnetFile", "dataDir"] {
        parsed["plugins"][0][key] = lab_list["plugins"][0][key].clone();
    }
    let types: Vec<&str> = parsed["plugins"]
        .as_array()
        .context("conflist plugins")?
        .iter()
        .filter_map(|p| p["type"].as_str())
        .collect();
    anyhow::ensure!(types == ["weft", "portmap"], "conflist chains {types:?}");
    let conflist = parsed.to_string();
    std::fs::write(net_d.join("10-weft.conflist"), conflist)?;
    for d in ["/etc/cni", "/var/lib/cni"] {
        std::fs::create_dir_all(d)?;
    }
    std::fs::create_dir_all(node.dir.join("var-lib-cni"))?;
    Ok(guard)
}

fn run_pod(lab: &mut Lab, n: usize, name: &str) -> anyhow::Result<Pod> {
    let sock = lab.ensure_containerd()?;
    let rootfs = containerd::ensure_rootfs(lab.dir())?;
    let cni_bin = containerd::ensure_cni_bin(lab.dir(), &weft_tests::bin_path("weft"))?;
    let node = lab.node(n)?.clone();
    let id = format!("{}-{name}", lab.prefix());
    let script = r#"mount --bind "$1" /opt/cni/bin && mount --bind "$2" /var/lib/cni && exec ctr -a "$3" run --rm --null-io --cni --runc-root "$4" --cgroup "" --rootfs "$5" "$6" /bin/sleep 2000000000"#;
    let mut cmd = Netns::existing(&node.netns).command("sh");
    cmd.args(["-c", script, "sh"])
        .arg(&cni_bin)
        .arg(node.dir.join("var-lib-cni"))
        .arg(&sock)
        .arg(containerd::Paths::new(lab.dir()).runc_root())
        .arg(&rootfs)
        .arg(&id);
    let mut ctr = Netns::existing(&node.netns).spawn(cmd)?;
    let pid = weft_tests::wait_for(
        &format!("task {id} to run"),
        Duration::from_secs(30),
        || {
            if ctr.try_status().is_some() {
                return Some(None);
            }
            // The task is listed as CREATED while ctr runs CNI ADD; RUNNING comes after.
            let tasks = lab.ctr(&["task", "ls"]).ok()?;
            let running = tasks
                .lines()
                .any(|l| l.split_whitespace().next() == Some(id.as_str()) && l.contains("RUNNING"));
            running.then(|| containerd::task_pid(&tasks, &id).map(Some))?
        },
    )?
    .with_context(|| format!("ctr run of {id} exited early"))?;
    let out = std::process::Command::new("nsenter")
        .args([
            "-t",
            &pid.to_string(),
            "-n",
            "ip",
            "-j",
            "-4",
            "addr",
            "show",
            "dev",
            "eth0",
        ])
        .output()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("no eth0 in {id}: {}", String::from_utf8_lossy(&out.stderr)))?;
    let ip: Ipv4Addr = v[0]["addr_info"][0]["local"]
        .as_str()
        .context("no IPv4 on eth0")?
        .parse()?;
    Ok(Pod { id, pid, ip, ctr })
}

/// `ping` from inside the container (busybox's ping, via `ctr task exec`).
fn ping(lab: &Lab, from: &Pod, to: Ipv4Addr) -> bool {
    let exec_id = format!("ping{}", to.octets()[3]);
    lab.ctr(&[
        "task",
        "exec",
        "--exec-id",
        &exec_id,
        &from.id,
        "/bin/ping",
        "-c1",
        "-w3",
        &to.to_string(),
    ])
    .is_ok()
}

/// Stop the container: ctr (still in the foreground) runs CNI DEL and deletes it.
fn remove_pod(lab: &Lab, mut pod: Pod) -> anyhow::Result<()> {
    lab.ctr(&["task", "kill", "-s", "SIGKILL", &pod.id])?;
    let status = weft_tests::wait_for(
        &format!("ctr run of {} to finish", pod.id),
        Duration::from_secs(30),
        || pod.ctr.try_status(),
    )?;
    let _ = status;
    anyhow::ensure!(
        !std::path::Path::new(&format!("/proc/{}", pod.pid)).exists(),
        "task of {} still running",
        pod.id
    );
    let containers = lab.ctr(&["container", "ls", "-q"])?;
    anyhow::ensure!(
        !containers.lines().any(|l| l.trim() == pod.id),
        "container {} was not deleted",
        pod.id
    );
    Ok(())
}

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn containerd_single_node_with_test_written_subnet_env() {
    if !weft_tests::require_root("containerd_single_node_with_test_written_subnet_env") {
        return;
    }
    let mut lab = Lab::start(LabSpec {
        start_weftd: false,
        ..LabSpec::weft(1)
    })
    .unwrap();
    let node = lab.node(1).unwrap().clone();
    std::fs::write(
        node.subnet_file(),
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.42.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
    )
    .unwrap();
    let _etc = prepare_node(&lab, 1).unwrap();
    let a = run_pod(&mut lab, 1, "ca").unwrap();
    let b = run_pod(&mut lab, 1, "cb").unwrap();
    assert_ne!(a.ip, b.ip);
    for ip in [a.ip, b.ip] {
        assert_eq!(ip.octets()[..3], [10, 244, 42], "{ip}");
    }
    assert!(
        ping(&lab, &a, b.ip),
        "container ca cannot reach cb ({})",
        b.ip
    );
    assert!(
        ping(&lab, &b, a.ip),
        "container cb cannot reach ca ({})",
        a.ip
    );
    let ipam_dir = node.dir.join("cni-ipam");
    assert_eq!(allocations(&ipam_dir).len(), 2);
    assert_eq!(host_veths(&lab, 1).len(), 2);

    remove_pod(&lab, a).unwrap();
    remove_pod(&lab, b).unwrap();
    assert!(
        allocations(&ipam_dir).is_empty(),
        "{:?}",
        allocations(&ipam_dir)
    );
    assert!(host_veths(&lab, 1).is_empty(), "{:?}", host_veths(&lab, 1));
}

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn containerd_pods_on_two_weftd_nodes_ping_across() {
    if !weft_tests::require_root("containerd_pods_on_two_weftd_nodes_ping_across") {
        return;
    }
    let mut lab = Lab::start(LabSpec::weft(2)).unwrap();
    let _etc1 = prepare_node(&lab, 1).unwrap();
    let _etc2 = prepare_node(&lab, 2).unwrap();
    let p1 = run_pod(&mut lab, 1, "x1").unwrap();
    let p2 = run_pod(&mut lab, 2, "x2").unwrap();
    let (s1, _) = lab.node_subnet(1).unwrap();
    let (s2, _) = lab.node_subnet(2).unwrap();
    assert_ne!(s1, s2);
    assert!(
        s1.contains(&p1.ip) && s2.contains(&p2.ip),
        "{} in {s1}, {} in {s2}",
        p1.ip,
        p2.ip
    );
    assert!(
        ping(&lab, &p1, p2.ip),
        "x1 cannot reach x2 ({}) across nodes",
        p2.ip
    );
    assert!(
        ping(&lab, &p2, p1.ip),
        "x2 cannot reach x1 ({}) across nodes",
        p1.ip
    );
    // containerd 1.6's libcni ran the shipped list at its cniVersion 1.0.0 (it does not
    // know cniVersions): the result it cached says so.
    let cache = lab.node(1).unwrap().dir.join("var-lib-cni/results");
    let cached: Vec<serde_json::Value> = std::fs::read_dir(&cache)
        .unwrap_or_else(|e| panic!("{}: {e}", cache.display()))
        .flatten()
        .filter_map(|f| serde_json::from_slice(&std::fs::read(f.path()).ok()?).ok())
        .collect();
    assert!(
        !cached.is_empty(),
        "no cached result in {}",
        cache.display()
    );
    for c in &cached {
        assert_eq!(c["result"]["cniVersion"], "1.0.0", "{c}");
    }

    remove_pod(&lab, p1).unwrap();
    remove_pod(&lab, p2).unwrap();
    for n in [1, 2] {
        let dir = lab.node(n).unwrap().dir.join("cni-ipam");
        assert!(
            allocations(&dir).is_empty(),
            "node {n}: {:?}",
            allocations(&dir)
        );
        assert!(
            host_veths(&lab, n).is_empty(),
            "node {n}: {:?}",
            host_veths(&lab, n)
        );
    }
}
