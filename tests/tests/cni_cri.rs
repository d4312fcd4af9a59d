//! The `weft` CNI plugin on the path Kubernetes takes: each lab node runs its own real
//! containerd 1.6 with the CRI plugin (in the node's network namespace), and pods are
//! pod sandboxes made over the CRI gRPC API as the kubelet makes them
//! (`RunPodSandbox`, `PodSandboxStatus`, `StopPodSandbox`, `RemovePodSandbox`), so
//! containerd calls the CNI chain (weft, portmap, bandwidth) with Kubernetes' arguments
//! and runtime config. Real etcd, real weftd, real kernel; nothing is pulled (the pause
//! image is built from busybox-static).

use std::collections::HashSet;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use weft_tests::lab::cri::{CriClient, HostPort, SandboxSpec};
use weft_tests::lab::{Lab, LabSpec};

/// The `weft` plugin's IPAM records of node `n`: (address, file contents).
fn ipam_records(lab: &Lab, n: usize) -> Vec<(Ipv4Addr, String)> {
    let dir = lab.node(n).unwrap().dir.join("cni-ipam").join("weft");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let ip = e.file_name().to_str()?.parse::<Ipv4Addr>().ok()?;
            Some((ip, std::fs::read_to_string(e.path()).ok()?))
        })
        .collect()
}

/// Host-side veths of the `weft` plugin (`wf…`) in node `n`.
fn host_veths(lab: &Lab, n: usize) -> Vec<String> {
    lab.node_ns(n)
        .unwrap()
        .ip(&["-o", "link", "show", "type", "veth"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .filter(|n| n.starts_with("wf"))
        .collect()
}

/// Network namespaces pinned under `dir` (the CRI pins each sandbox's under its state
/// dir): nsfs mounts in this process's mount table.
fn netns_pins_under(dir: &Path) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(" - nsfs "))
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| Path::new(p).starts_with(dir))
        .map(str::to_owned)
        .collect()
}

/// The root namespace's link names and routes, to show the lab leaves them alone.
fn root_network() -> (Vec<String>, String) {
    let out = std::process::Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .expect("ip link");
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_owned())
        .collect();
    names.sort();
    let routes = std::process::Command::new("ip")
        .args(["route", "show", "table", "all"])
        .output()
        .expect("ip route");
    (names, String::from_utf8_lossy(&routes.stdout).into_owned())
}

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn cri_pod_args_are_recorded_and_stop_runs_del_and_frees_the_ip() {
    if !weft_tests::require_root("cri_pod_args_are_recorded_and_stop_runs_del_and_frees_the_ip") {
        return;
    }
    let mut lab = Lab::start(LabSpec::weft(1)).unwrap();
    let spec = SandboxSpec {
        namespace: "team-a".into(),
        uid: "0b7c4a1e-5a0e-4c39-9d57-6f0e5a1d2c3b".into(),
        ..SandboxSpec::default()
    };
    let ip = lab.cri_pod(1, "web", &spec).unwrap();
    let (subnet, _) = lab.node_subnet(1).unwrap();
    assert!(subnet.contains(&ip), "{ip} is not in the node's {subnet}");
    let sandbox = lab.pod("web").unwrap().sandbox.clone().unwrap();

    // The record of that address names the sandbox (host-local's first line), the
    // interface, and the pod as containerd's CRI passed it in CNI_ARGS.
    let records = ipam_records(&lab, 1);
    let (_, record) = records
        .iter()
        .find(|(a, _)| *a == ip)
        .unwrap_or_else(|| panic!("no IPAM record for {ip}: {records:?}"));
    let lines: Vec<&str> = record.split("\r\n").collect();
    assert_eq!(
        lines,
        vec![
            sandbox.as_str(),
            "eth0",
            "K8S_POD_NAMESPACE=team-a;K8S_POD_NAME=web;K8S_POD_UID=0b7c4a1e-5a0e-4c39-9d57-6f0e5a1d2c3b"
        ],
        "IPAM record of {ip}"
    );
    // The sandbox is a working pod: it reaches its gateway on cni0.
    let gw = Ipv4Addr::from(u32::from(subnet.network()) + 1);
    assert!(lab.ping("web", gw), "pod web cannot ping its gateway {gw}");
    assert_eq!(host_veths(&lab, 1).len(), 1);

    // StopPodSandbox: containerd runs CNI DEL through the chain; the address is free
    // and the host veth gone, before RemovePodSandbox.
    lab.cri_stop_pod("web").unwrap();
    assert!(
        ipam_records(&lab, 1).iter().all(|(a, _)| *a != ip),
        "{ip} still allocated after StopPodSandbox: {:?}",
        ipam_records(&lab, 1)
    );
    assert_eq!(host_veths(&lab, 1), Vec::<String>::new());
    let status = lab.cri(1).unwrap().status(&sandbox).unwrap();
    assert!(!status.ready, "sandbox still ready after stop: {status:?}");
    lab.cri_remove_pod("web").unwrap();
    assert!(lab.cri(1).unwrap().list(lab.prefix()).unwrap().is_empty());

    // The freed address is handed out again (to the next pod, once the pool rotates
    // back; here: a second pod gets an address and a record of its own).
    let ip2 = lab.cri_pod(1, "web2", &SandboxSpec::default()).unwrap();
    let records = ipam_records(&lab, 1);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].0, ip2);
    assert!(records[0]
        .1
        .contains("K8S_POD_NAMESPACE=default;K8S_POD_NAME=web2;K8S_POD_UID="));
}

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn a_host_port_is_reachable_from_another_nodes_pod() {
    if !weft_tests::require_root("a_host_port_is_reachable_from_another_nodes_pod") {
        return;
    }
    // With --ip-masq, as the DaemonSet (and kube-flannel's) runs weftd: the client
    // pod's packets to node 1's address leave the cluster network and are masqueraded,
    // so the server's un-DNATed reply goes back over the underlay to node 2.
    let mut lab = Lab::start(LabSpec {
        weftd_args: vec!["--ip-masq".into()],
        ..LabSpec::weft(2)
    })
    .unwrap();
    let spec = SandboxSpec {
        host_ports: vec![HostPort {
            udp: false,
            container_port: 8080,
            host_port: 18080,
        }],
        ..SandboxSpec::default()
    };
    lab.cri_pod(1, "server", &spec).unwrap();
    lab.add_pod(2, "client").unwrap();
    let node1 = lab.node(1).unwrap().ip;

    // A server in the sandbox's namespace answering one connection with a token.
    let token = format!("hello from {} via hostPort", lab.prefix());
    let (bound_tx, bound_rx) = std::sync::mpsc::channel();
    let server_ns = lab.pod("server").unwrap().netns.clone();
    let reply = token.clone();
    let server = weft_tests::netns::spawn_in(&server_ns, move || {
        let listener = TcpListener::bind(("0.0.0.0", 8080))?;
        listener.set_nonblocking(false)?;
        bound_tx.send(()).ok();
        let (mut conn, from) = listener.accept()?;
        conn.write_all(reply.as_bytes())?;
        Ok(from)
    });
    bound_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("server in the sandbox did not bind 8080");

    // From a pod on node 2 to node 1's address and the host port.
    let client_ns = lab.pod("client").unwrap().netns.clone();
    let target = SocketAddr::from((node1, 18080));
    let got = weft_tests::netns::spawn_in(&client_ns, move || {
        let mut conn = TcpStream::connect_timeout(&target, Duration::from_secs(5))
            .with_context(|| format!("connecting to {target}"))?;
        conn.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut got = String::new();
        conn.read_to_string(&mut got)?;
        Ok(got)
    })
    .join()
    .unwrap()
    .unwrap();
    assert_eq!(got, token);
    let from = server.join().unwrap().unwrap();
    assert_ne!(
        from.ip(),
        std::net::IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        "server saw no peer"
    );
}

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn a_bandwidth_annotation_limits_an_iperf3_stream() {
    if !weft_tests::require_root("a_bandwidth_annotation_limits_an_iperf3_stream") {
        return;
    }
    const LIMIT_BITS: f64 = 20e6;
    let mut lab = Lab::start(LabSpec::weft(1)).unwrap();
    let spec = SandboxSpec {
        annotations: vec![
            ("kubernetes.io/ingress-bandwidth".into(), "20M".into()),
            ("kubernetes.io/egress-bandwidth".into(), "20M".into()),
        ],
        ..SandboxSpec::default()
    };
    let ip = lab.cri_pod(1, "slow", &spec).unwrap();
    // The reference bandwidth plugin, chained after weft, shaped the host veth (the
    // pod's ingress) and an ifb device (its egress) with token bucket filters.
    let qdiscs = lab.exec("n1", &["tc", "qdisc", "show"]).unwrap();
    let tbf: Vec<&str> = qdiscs.lines().filter(|l| l.contains("tbf")).collect();
    assert_eq!(
        tbf.len(),
        2,
        "expected two tbf qdiscs (veth and ifb):\n{qdiscs}"
    );
    assert!(tbf.iter().all(|l| l.contains("rate 20Mbit")), "{qdiscs}");

    let server = lab
        .pod_ns("slow")
        .unwrap()
        .spawn({
            let mut cmd = lab.pod_ns("slow").unwrap().command("iperf3");
            cmd.args(["-s", "-1", "-J"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
            cmd
        })
        .unwrap();
    weft_tests::wait_until(
        "iperf3 listening in the pod",
        Duration::from_secs(10),
        || {
            lab.exec("slow", &["ss", "-ltn"])
                .is_ok_and(|s| s.contains(":5201 "))
        },
    )
    .unwrap();
    // From the node into the pod. containerd 1.6 asks for a burst of 2^32-1 bits
    // (512 MB) with the rate, so the stream first runs at full speed until the bucket
    // is empty; the receiver's per-second intervals after that show the limit.
    let out = lab
        .exec(
            "n1",
            &[
                "timeout",
                "40",
                "iperf3",
                "-c",
                &ip.to_string(),
                "-t",
                "8",
                "-i",
                "1",
                "-J",
                "--get-server-output",
            ],
        )
        .unwrap();
    drop(server);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let intervals: Vec<(f64, f64)> = report["server_output_json"]["intervals"]
        .as_array()
        .unwrap_or_else(|| panic!("no server intervals in iperf3's report: {out}"))
        .iter()
        .filter_map(|i| Some((i["sum"]["bytes"].as_f64()?, i["sum"]["seconds"].as_f64()?)))
        .collect();
    let rates: Vec<f64> = intervals.iter().map(|(b, s)| b * 8.0 / s).collect();
    let drained = rates
        .iter()
        .position(|r| *r < 2.0 * LIMIT_BITS)
        .unwrap_or_else(|| panic!("the token bucket never emptied in 8 s: {rates:?} bit/s"));
    let steady = &intervals[drained + 1..];
    assert!(
        steady.len() >= 3,
        "fewer than 3 s at the limit after the burst: {rates:?} bit/s"
    );
    let (bytes, seconds) = steady
        .iter()
        .fold((0.0, 0.0), |(b, s), (ib, is)| (b + ib, s + is));
    let ratio = bytes * 8.0 / seconds / LIMIT_BITS;
    eprintln!("bandwidth: {ratio:.3} of the 20 Mbit/s limit over {seconds:.1} s ({rates:?} bit/s)");
    assert!(
        (0.8..=1.2).contains(&ratio),
        "rate {ratio:.3} × the limit is not within 20% (intervals {rates:?} bit/s)"
    );
}

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn twenty_sandboxes_made_and_removed_in_parallel_leak_nothing() {
    if !weft_tests::require_root("twenty_sandboxes_made_and_removed_in_parallel_leak_nothing") {
        return;
    }
    const PODS: usize = 20;
    let root_before = root_network();
    let mut lab = Lab::start(LabSpec::weft(1)).unwrap();
    let sock = lab.ensure_node_containerd(1).unwrap();
    let (subnet, _) = lab.node_subnet(1).unwrap();
    let containerd_dir = lab.node(1).unwrap().dir.join("containerd");
    assert!(ipam_records(&lab, 1).is_empty());

    // Twenty kubelet-like workers at once, each with its own connection: run the
    // sandbox, read its address, stop it, remove it.
    let prefix = lab.prefix().to_owned();
    let workers: Vec<_> = (0..PODS)
        .map(|i| {
            let (sock, prefix) = (sock.clone(), prefix.clone());
            std::thread::spawn(move || -> anyhow::Result<Ipv4Addr> {
                let mut cri = CriClient::connect(&sock)?;
                let name = format!("par{i}");
                let id = cri.run_pod_sandbox(&prefix, &name, &SandboxSpec::default())?;
                let status = cri.status(&id)?;
                let ip = status
                    .ip
                    .with_context(|| format!("{name}: no address: {status:?}"))?;
                anyhow::ensure!(status.ready, "{name} not ready: {status:?}");
                cri.stop(&id)?;
                cri.remove(&id)?;
                Ok(ip)
            })
        })
        .collect();
    let ips: Vec<Ipv4Addr> = workers
        .into_iter()
        .map(|w| w.join().unwrap().unwrap())
        .collect();
    let distinct: HashSet<Ipv4Addr> = ips.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        PODS,
        "an address was handed out twice: {ips:?}"
    );
    assert!(
        ips.iter().all(|ip| subnet.contains(ip)),
        "{ips:?} vs {subnet}"
    );

    // Nothing left: no address, no veth, no pinned netns, no sandbox.
    assert_eq!(ipam_records(&lab, 1), Vec::new(), "leaked addresses");
    assert_eq!(host_veths(&lab, 1), Vec::<String>::new(), "leaked veths");
    assert_eq!(
        netns_pins_under(&containerd_dir),
        Vec::<String>::new(),
        "leaked netns"
    );
    assert!(lab.cri(1).unwrap().list(&prefix).unwrap().is_empty());
    let lab_dir = lab.dir().to_path_buf();
    drop(lab);
    // The lab's teardown leaves no mount behind, and the root namespace's links and
    // routes were never touched.
    let left: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&*lab_dir.to_string_lossy()))
        .map(str::to_owned)
        .collect();
    assert_eq!(
        left,
        Vec::<String>::new(),
        "mounts left under {}",
        lab_dir.display()
    );
    assert_eq!(root_network(), root_before, "the root namespace changed");
}

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn teardown_after_containerd_was_killed_leaves_nothing() {
    if !weft_tests::require_root("teardown_after_containerd_was_killed_leaves_nothing") {
        return;
    }
    let mut lab = Lab::start(LabSpec::weft(1)).unwrap();
    lab.cri_pod(1, "kept", &SandboxSpec::default()).unwrap();
    // A sandbox the lab never recorded (as if its owner died mid-RunPodSandbox).
    let sock = lab.node(1).unwrap().cri_socket.clone().unwrap();
    let mut cri = CriClient::connect(&sock).unwrap();
    let stray = cri
        .run_pod_sandbox(lab.prefix(), "stray", &SandboxSpec::default())
        .unwrap();
    let stray_pid = cri.status(&stray).unwrap().pid.unwrap();
    drop(cri);
    let prefix = lab.prefix().to_owned();
    let lab_dir = lab.dir().to_path_buf();
    let state = weft_tests::lab::state::LabState::load(&prefix).unwrap();
    let containerd = state
        .processes
        .iter()
        .find(|p| p.what == "containerd n1")
        .expect("containerd n1 recorded")
        .proc;
    // kill -9: no CRI answers the teardown, no CNI DEL runs.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(containerd.pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    weft_tests::wait_until("containerd to die", Duration::from_secs(10), || {
        !containerd.is_alive()
    })
    .unwrap();
    drop(lab);

    assert!(
        weft_tests::proc::ProcId::of(stray_pid).is_none_or(|p| !p.is_alive()),
        "the unrecorded sandbox's pause (PID {stray_pid}) survived the teardown"
    );
    let needle = lab_dir.to_string_lossy().into_owned();
    let left: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&needle))
        })
        .collect();
    assert_eq!(left, Vec::<u32>::new(), "processes of the lab left");
    let mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&needle))
        .map(str::to_owned)
        .collect();
    assert_eq!(mounts, Vec::<String>::new(), "mounts left");
    let cgroup = format!("weft-lab-{prefix}");
    for root in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        assert!(
            !root.path().join(&cgroup).exists(),
            "cgroup {} left",
            root.path().join(&cgroup).display()
        );
    }
    let netns: Vec<String> = weft_tests::netns::list()
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with(&format!("{prefix}-")))
        .collect();
    assert_eq!(netns, Vec::<String>::new(), "namespaces left");
    assert!(!lab_dir.exists(), "{} left", lab_dir.display());
    // runc's state of the sandboxes was in the lab's directory, not the host's.
    let host_runc: Vec<String> = std::fs::read_dir("/run/containerd/runc/k8s.io")
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    std::fs::read_to_string(e.path().join("state.json"))
                        .is_ok_and(|s| s.contains(&needle))
                })
                .map(|e| e.path().display().to_string())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        host_runc,
        Vec::<String>::new(),
        "runc state left on the host"
    );
}
