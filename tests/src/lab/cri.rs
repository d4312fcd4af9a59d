//! Pods the way the kubelet makes them: through containerd's CRI plugin.
//!
//! On a real node containerd and the kubelet live in the host's network namespace and
//! containerd itself calls the CNI plugins. The lab reproduces that with **one
//! containerd per node**, started inside the node's network namespace (`nsenter --net`,
//! so it keeps the host's mounts and cgroups that runc needs), with a private root,
//! state, socket and CNI directories under `<labdir>/nN/containerd`:
//!
//! * `[plugins."io.containerd.grpc.v1.cri".cni] bin_dir` = `<labdir>/cni-bin` (links to
//!   the reference plugins and the workspace's `weft`), `conf_dir` = the node's own
//!   `net.d`, so no bind mounts are needed and nothing is installed on the host;
//! * `sandbox_image` = [`PAUSE_IMAGE`], built here from busybox-static and imported
//!   with `ctr images import` (nothing is pulled);
//! * pod cgroups under `/weft-lab-<prefix>`, the sandboxes' netns pinned under the
//!   node's containerd state dir (`netns_mounts_under_state_dir`), not in `/run/netns`,
//!   the CRI's streaming server on the node's 127.0.0.1.
//!
//! The teardown ([`remove_sandboxes`], then [`remove_leftovers`]) stops and removes the
//! lab's sandboxes through the CRI while containerd runs (so CNI DEL runs), and after a
//! crash kills what is left in the lab's cgroups and unmounts what is left under the
//! lab's directory.
//!
//! [`CriClient`] speaks the CRI v1 gRPC API (the `k8s-cri` crate, tonic) over the
//! node's socket as the kubelet does: `RunPodSandbox` with metadata, port mappings and
//! annotations, `PodSandboxStatus`, `StopPodSandbox`, `RemovePodSandbox`. Only sandboxes
//! are made (no app containers): tests run their tools in the sandbox's namespace.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use k8s_cri::v1 as api;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use tonic::transport::{Channel, Endpoint, Uri};

use super::{CniKind, NodeInfo};

/// The sandbox image every lab containerd uses; [`ensure_pause_image`] builds it.
pub const PAUSE_IMAGE: &str = "weft.lab/pause:1";
/// containerd's namespace for everything the CRI plugin makes.
pub const CRI_NAMESPACE: &str = "k8s.io";
/// The label every lab sandbox carries, with the lab's prefix as its value: the
/// teardown finds a lab's sandboxes by it, even those whose creation it never saw end.
pub const LAB_LABEL: &str = "weft-lab.prefix";

/// Files of one node's containerd.
#[derive(Debug, Clone)]
pub struct NodePaths {
    pub dir: PathBuf,
}

impl NodePaths {
    pub fn new(node: &NodeInfo) -> NodePaths {
        NodePaths {
            dir: node.dir.join("containerd"),
        }
    }
    pub fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }
    pub fn config(&self) -> PathBuf {
        self.dir.join("config.toml")
    }
    pub fn log(&self) -> PathBuf {
        self.dir.join("containerd.log")
    }
    /// The CRI plugin's CNI `conf_dir`.
    pub fn cni_conf_dir(&self) -> PathBuf {
        self.dir.join("net.d")
    }

    /// containerd 1.6 config with the CRI plugin: private directories, the node's CNI
    /// directories, the local pause image, pod cgroups under `cgroup_parent`.
    pub fn config_toml(&self, cni_bin: &Path) -> String {
        let d = self.dir.display();
        let base = super::containerd::private_config(&self.dir, &self.socket(), true);
        format!(
            r#"{base}
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  disable_apparmor = true
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{bin}"
    conf_dir = "{conf}"
    max_conf_num = 1

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      # runc's state of each sandbox here, not in the shared /run/containerd/runc.
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "{d}/runc"
"#,
            bin = cni_bin.display(),
            conf = self.cni_conf_dir().display(),
        )
    }
}

/// The cgroup parent of a lab's pods (cgroupfs path).
pub fn cgroup_parent(prefix: &str) -> String {
    format!("/weft-lab-{prefix}")
}

/// The node's conflist for CRI pods: the main plugin, the reference `portmap` (host
/// ports from the pod's port mappings) and `bandwidth` (the pod's
/// `kubernetes.io/{ingress,egress}-bandwidth` annotations), chained as Kubernetes
/// deployments chain them.
pub fn conflist(kind: CniKind, node: &NodeInfo, subnet: ipnet::Ipv4Net, mtu: u32) -> String {
    let mut list: serde_json::Value =
        serde_json::from_str(&super::containerd::conflist(kind, node, subnet, mtu))
            .expect("the lab's own conflist is JSON");
    if let Some(plugins) = list.get_mut("plugins").and_then(|p| p.as_array_mut()) {
        plugins.push(serde_json::json!({"type": "bandwidth", "capabilities": {"bandwidth": true}}));
    }
    list.to_string()
}

/// `<lab_dir>/pause.tar`: a docker-archive image (`ctr images import` reads it) whose
/// one layer is busybox-static, entrypoint `busybox sleep` for ever. A pod sandbox only
/// has to hold its namespaces open, which is all Kubernetes' pause does.
pub fn ensure_pause_image(lab_dir: &Path) -> anyhow::Result<PathBuf> {
    let tarball = lab_dir.join("pause.tar");
    if tarball.is_file() {
        return Ok(tarball);
    }
    let work = lab_dir.join("pause-image");
    let rootfs = work.join("rootfs");
    for d in ["bin", "proc", "sys", "dev", "etc"] {
        std::fs::create_dir_all(rootfs.join(d))?;
    }
    let busybox = ["/usr/bin/busybox", "/bin/busybox"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .context("busybox not found (install busybox-static)")?;
    std::fs::copy(busybox, rootfs.join("bin/busybox"))
        .with_context(|| format!("copying {}", busybox.display()))?;
    crate::run_cmd(
        std::process::Command::new("tar")
            .args([
                "--numeric-owner",
                "--owner=0",
                "--group=0",
                "--mtime=@0",
                "-C",
            ])
            .arg(&rootfs)
            .arg("-cf")
            .arg(work.join("layer.tar"))
            .arg("."),
    )
    .context("packing the pause image's layer")?;
    let layer = std::fs::read(work.join("layer.tar"))?;
    let diff_id = hex::encode(sha2::Sha256::digest(&layer));
    let config = serde_json::json!({
        "architecture": go_arch(),
        "os": "linux",
        "config": {"Entrypoint": ["/bin/busybox", "sleep", "2147483647"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{diff_id}")]},
    });
    std::fs::write(work.join("config.json"), config.to_string())?;
    let manifest = serde_json::json!([{
        "Config": "config.json",
        "RepoTags": [PAUSE_IMAGE],
        "Layers": ["layer.tar"],
    }]);
    std::fs::write(work.join("manifest.json"), manifest.to_string())?;
    let partial = lab_dir.join("pause.tar.partial");
    crate::run_cmd(
        std::process::Command::new("tar")
            .arg("-C")
            .arg(&work)
            .arg("-cf")
            .arg(&partial)
            .args(["manifest.json", "config.json", "layer.tar"]),
    )
    .context("packing the pause image")?;
    std::fs::rename(&partial, &tarball)?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(tarball)
}

/// The OCI architecture name of this machine.
fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// A host port of a pod (`hostPort` in a pod spec).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostPort {
    pub udp: bool,
    pub container_port: u16,
    pub host_port: u16,
}

/// What the kubelet puts in a `RunPodSandbox` that matters to the network.
#[derive(Debug, Clone, Default)]
pub struct SandboxSpec {
    /// Kubernetes namespace (`default` when empty).
    pub namespace: String,
    /// Pod UID (a fresh one when empty).
    pub uid: String,
    pub host_ports: Vec<HostPort>,
    /// Pod annotations, e.g. `kubernetes.io/ingress-bandwidth: 20M`.
    pub annotations: Vec<(String, String)>,
}

/// What `PodSandboxStatus` (verbose) tells about a sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxStatus {
    pub ready: bool,
    pub ip: Option<Ipv4Addr>,
    /// The pause process.
    pub pid: Option<u32>,
    /// The sandbox's network namespace, e.g. `/var/run/netns/cni-<uuid>`.
    pub netns_path: Option<PathBuf>,
}

/// A lab sandbox as `ListPodSandbox` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedSandbox {
    pub id: String,
    pub name: String,
    pub ready: bool,
}

/// A blocking CRI v1 client over one containerd socket (its own small tokio runtime, so
/// the lab's synchronous code and the tests can call it anywhere).
#[derive(Debug)]
pub struct CriClient {
    runtime: tokio::runtime::Runtime,
    client: RuntimeServiceClient<Channel>,
    socket: PathBuf,
}

/// How long one CRI call may take (RunPodSandbox runs the CNI ADD chain).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

impl CriClient {
    pub fn connect(socket: &Path) -> anyhow::Result<CriClient> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting a tokio runtime for the CRI client")?;
        let path = socket.to_path_buf();
        let channel = runtime
            .block_on(async {
                // The URI is required by tonic and ignored by the connector.
                Endpoint::try_from("http://[::]:50051")?
                    .timeout(CALL_TIMEOUT)
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let path = path.clone();
                        async move {
                            let stream = tokio::net::UnixStream::connect(path).await?;
                            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                        }
                    }))
                    .await
            })
            .with_context(|| format!("connecting to the CRI at {}", socket.display()))?;
        Ok(CriClient {
            runtime,
            client: RuntimeServiceClient::new(channel),
            socket: socket.to_path_buf(),
        })
    }

    fn call<T>(
        &mut self,
        what: &str,
        f: impl AsyncFnOnce(&mut RuntimeServiceClient<Channel>) -> Result<T, tonic::Status>,
    ) -> anyhow::Result<T> {
        let client = &mut self.client;
        self.runtime.block_on(f(client)).map_err(|s| {
            anyhow::anyhow!(
                "CRI {what} at {}: {} ({:?})",
                self.socket.display(),
                s.message(),
                s.code()
            )
        })
    }

    /// Whether the runtime reports `NetworkReady` (its CNI config loaded).
    pub fn network_ready(&mut self) -> anyhow::Result<bool> {
        let resp = self.call("Status", async |c| {
            c.status(api::StatusRequest { verbose: false }).await
        })?;
        let status = resp.into_inner().status.unwrap_or_default();
        Ok(status
            .conditions
            .iter()
            .any(|c| c.r#type == "NetworkReady" && c.status))
    }

    /// `RunPodSandbox` for pod `name` of lab `prefix`; returns the sandbox ID.
    pub fn run_pod_sandbox(
        &mut self,
        prefix: &str,
        name: &str,
        spec: &SandboxSpec,
    ) -> anyhow::Result<String> {
        let namespace = if spec.namespace.is_empty() {
            "default".to_owned()
        } else {
            spec.namespace.clone()
        };
        let uid = if spec.uid.is_empty() {
            fresh_uid()
        } else {
            spec.uid.clone()
        };
        let config = api::PodSandboxConfig {
            metadata: Some(api::PodSandboxMetadata {
                name: name.to_owned(),
                uid,
                namespace,
                attempt: 0,
            }),
            hostname: name.to_owned(),
            port_mappings: spec
                .host_ports
                .iter()
                .map(|p| api::PortMapping {
                    protocol: if p.udp {
                        api::Protocol::Udp
                    } else {
                        api::Protocol::Tcp
                    } as i32,
                    container_port: i32::from(p.container_port),
                    host_port: i32::from(p.host_port),
                    host_ip: String::new(),
                })
                .collect(),
            labels: HashMap::from([(LAB_LABEL.to_owned(), prefix.to_owned())]),
            annotations: spec.annotations.iter().cloned().collect(),
            linux: Some(api::LinuxPodSandboxConfig {
                cgroup_parent: cgroup_parent(prefix),
                ..Default::default()
            }),
            ..Default::default()
        };
        let resp = self.call("RunPodSandbox", async |c| {
            c.run_pod_sandbox(api::RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: String::new(),
            })
            .await
        })?;
        Ok(resp.into_inner().pod_sandbox_id)
    }

    /// `PodSandboxStatus` with `verbose` (the pause PID and netns path are in its info).
    pub fn status(&mut self, id: &str) -> anyhow::Result<SandboxStatus> {
        let id = id.to_owned();
        let resp = self
            .call("PodSandboxStatus", async |c| {
                c.pod_sandbox_status(api::PodSandboxStatusRequest {
                    pod_sandbox_id: id,
                    verbose: true,
                })
                .await
            })?
            .into_inner();
        let status = resp.status.unwrap_or_default();
        let ip = status
            .network
            .as_ref()
            .and_then(|n| n.ip.parse::<Ipv4Addr>().ok());
        let (pid, netns_path) = resp
            .info
            .get("info")
            .map_or((None, None), |info| parse_verbose_info(info));
        Ok(SandboxStatus {
            ready: status.state == api::PodSandboxState::SandboxReady as i32,
            ip,
            pid,
            netns_path,
        })
    }

    /// `StopPodSandbox`: containerd kills the pause process and runs CNI DEL.
    pub fn stop(&mut self, id: &str) -> anyhow::Result<()> {
        let id = id.to_owned();
        self.call("StopPodSandbox", async |c| {
            c.stop_pod_sandbox(api::StopPodSandboxRequest { pod_sandbox_id: id })
                .await
        })
        .map(drop)
    }

    /// `RemovePodSandbox` (after a stop).
    pub fn remove(&mut self, id: &str) -> anyhow::Result<()> {
        let id = id.to_owned();
        self.call("RemovePodSandbox", async |c| {
            c.remove_pod_sandbox(api::RemovePodSandboxRequest { pod_sandbox_id: id })
                .await
        })
        .map(drop)
    }

    /// The sandboxes of lab `prefix` (by [`LAB_LABEL`]).
    pub fn list(&mut self, prefix: &str) -> anyhow::Result<Vec<ListedSandbox>> {
        let filter = api::PodSandboxFilter {
            label_selector: HashMap::from([(LAB_LABEL.to_owned(), prefix.to_owned())]),
            ..Default::default()
        };
        let resp = self.call("ListPodSandbox", async |c| {
            c.list_pod_sandbox(api::ListPodSandboxRequest {
                filter: Some(filter),
            })
            .await
        })?;
        Ok(resp
            .into_inner()
            .items
            .into_iter()
            .map(|s| ListedSandbox {
                name: s.metadata.map(|m| m.name).unwrap_or_default(),
                ready: s.state == api::PodSandboxState::SandboxReady as i32,
                id: s.id,
            })
            .collect())
    }
}

/// Stops and removes every sandbox of the lab through each node's CRI (containerd
/// runs CNI DEL for each), while the containerds still run. Best effort.
pub(super) fn remove_sandboxes(info: &super::LabInfo) {
    for node in &info.nodes {
        let Some(sock) = node.cri_socket.as_deref().filter(|s| s.exists()) else {
            continue;
        };
        let Ok(mut cri) = CriClient::connect(sock) else {
            continue;
        };
        for sandbox in cri.list(&info.prefix).unwrap_or_default() {
            let _ = cri.stop(&sandbox.id);
            let _ = cri.remove(&sandbox.id);
        }
    }
}

/// What the lab's containerds leave behind when they or their owner were killed:
/// processes in the lab's pod cgroups (pause), the cgroups, mounts under the lab's
/// directory (sandbox root filesystems, netns pins), shim sockets, and libcni's result
/// cache entries (`/var/lib/cni/results`, which containerd's CNI library writes).
pub(super) fn remove_leftovers(info: &super::LabInfo) {
    let mut sandboxes: Vec<(PathBuf, String)> = Vec::new();
    for node in &info.nodes {
        let Some(sock) = &node.cri_socket else {
            continue;
        };
        let tasks = NodePaths::new(node)
            .dir
            .join("state/io.containerd.runtime.v2.task")
            .join(CRI_NAMESPACE);
        if let Ok(dir) = std::fs::read_dir(&tasks) {
            sandboxes.extend(
                dir.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .map(|id| (sock.clone(), id)),
            );
        }
    }
    let cgroup_parent = cgroup_parent(&info.prefix);
    for root in cgroup_roots() {
        let parent = root.join(cgroup_parent.trim_start_matches('/'));
        let Ok(children) = std::fs::read_dir(&parent) else {
            continue;
        };
        for child in children
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
        {
            kill_cgroup(&child.path());
            let _ = std::fs::remove_dir(child.path());
        }
        let _ = std::fs::remove_dir(&parent);
    }
    unmount_under(&info.dir);
    for (sock, id) in &sandboxes {
        let _ = std::fs::remove_file(super::containerd::shim_socket(sock, CRI_NAMESPACE, id));
        if let Ok(results) = std::fs::read_dir("/var/lib/cni/results") {
            for entry in results.filter_map(|e| e.ok()) {
                if entry.file_name().to_string_lossy().contains(id.as_str()) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
    }
}

/// Every cgroup hierarchy's root: each v1 controller's and the v2 one.
fn cgroup_roots() -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
        .map(|d| d.filter_map(|e| Some(e.ok()?.path())).collect())
        .unwrap_or_default();
    roots.push(PathBuf::from("/sys/fs/cgroup"));
    roots
}

/// SIGKILLs every process in a cgroup (and waits for each to go).
fn kill_cgroup(cgroup: &Path) {
    let Ok(procs) = std::fs::read_to_string(cgroup.join("cgroup.procs")) else {
        return;
    };
    for pid in procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
        if let Some(p) = crate::proc::ProcId::of(pid) {
            p.kill();
        }
    }
}

/// Lazily unmounts every mount at or below `dir`, deepest first.
fn unmount_under(dir: &Path) {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mount_path)
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    points.dedup();
    for p in points {
        let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// `/proc/self/mountinfo` escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mount_path(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 4 <= bytes.len()
            && bytes[i + 1..i + 4].iter().all(u8::is_ascii_digit)
        {
            let octal = std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap_or("0");
            out.push(u8::from_str_radix(octal, 8).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    use std::os::unix::ffi::OsStringExt as _;
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// A random RFC 4122 version-4 UID, as the API server gives a pod.
pub fn fresh_uid() -> String {
    let b: [u8; 16] = rand::random();
    let h = hex::encode(b);
    format!(
        "{}-{}-4{}-{:x}{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        (b[8] & 0x3) | 0x8,
        &h[17..20],
        &h[20..32]
    )
}

/// The pause PID and network namespace path from the CRI's verbose sandbox info (JSON:
/// `{"pid": N, "runtimeSpec": {"linux": {"namespaces": [{"type": "network", "path":
/// ...}]}}}` in containerd 1.6).
pub fn parse_verbose_info(info: &str) -> (Option<u32>, Option<PathBuf>) {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(info) else {
        return (None, None);
    };
    let pid = v
        .get("pid")
        .and_then(serde_json::Value::as_u64)
        .and_then(|p| u32::try_from(p).ok())
        .filter(|p| *p > 0);
    let netns = v
        .pointer("/runtimeSpec/linux/namespaces")
        .and_then(serde_json::Value::as_array)
        .and_then(|nss| {
            nss.iter().find_map(|ns| {
                (ns.get("type")?.as_str()? == "network")
                    .then(|| ns.get("path")?.as_str())
                    .flatten()
                    .filter(|p| !p.is_empty())
                    .map(PathBuf::from)
            })
        });
    (pid, netns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbose_info_gives_pid_and_netns() {
        let info = r#"{"pid": 4242, "processStatus": "running", "runtimeSpec": {"linux": {"namespaces": [{"type": "pid"}, {"type": "network", "path": "/var/run/netns/cni-1234"}]}}}"#;
        assert_eq!(
            parse_verbose_info(info),
            (Some(4242), Some(PathBuf::from("/var/run/netns/cni-1234")))
        );
        assert_eq!(parse_verbose_info(r#"{"pid": 0}"#), (None, None));
        assert_eq!(parse_verbose_info("not json"), (None, None));
    }

    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(
            unescape_mount_path("/tmp/a\\040b/c\\134d"),
            PathBuf::from("/tmp/a b/c\\d")
        );
        assert_eq!(unescape_mount_path("/x\\04"), PathBuf::from("/x\\04"));
    }

    #[test]
    fn the_cri_conflist_chains_portmap_and_bandwidth_with_their_capabilities() {
        let node = NodeInfo {
            index: 1,
            name: "n1".into(),
            netns: "x-n1".into(),
            ip: Ipv4Addr::new(192, 0, 2, 1),
            kind: super::super::NodeKind::Weftd,
            dir: PathBuf::from("/tmp/weft-lab-x/n1"),
            subnet: None,
            vtep_mac: None,
            etcd_lease: None,
            cri_socket: None,
        };
        let list: serde_json::Value = serde_json::from_str(&conflist(
            CniKind::Weft,
            &node,
            "10.244.1.0/24".parse().unwrap(),
            1450,
        ))
        .unwrap();
        let plugins = list["plugins"].as_array().unwrap();
        let types: Vec<&str> = plugins.iter().filter_map(|p| p["type"].as_str()).collect();
        assert_eq!(types, ["weft", "portmap", "bandwidth"]);
        assert_eq!(plugins[1]["capabilities"]["portMappings"], true);
        assert_eq!(plugins[2]["capabilities"]["bandwidth"], true);
        assert_eq!(plugins[0]["subnetFile"], "/tmp/weft-lab-x/n1/subnet.env");
    }

    #[test]
    fn the_containerd_config_points_the_cri_at_the_nodes_directories() {
        let paths = NodePaths {
            dir: PathBuf::from("/tmp/weft-lab-x/n1/containerd"),
        };
        let toml = paths.config_toml(Path::new("/tmp/weft-lab-x/cni-bin"));
        for want in [
            r#"sandbox_image = "weft.lab/pause:1""#,
            r#"bin_dir = "/tmp/weft-lab-x/cni-bin""#,
            r#"conf_dir = "/tmp/weft-lab-x/n1/containerd/net.d""#,
            "max_conf_num = 1",
            "netns_mounts_under_state_dir = true",
            r#"Root = "/tmp/weft-lab-x/n1/containerd/runc""#,
            r#"address = "/tmp/weft-lab-x/n1/containerd/containerd.sock""#,
        ] {
            assert!(toml.contains(want), "{want} missing from:\n{toml}");
        }
        assert!(!toml.contains("disabled_plugins = [\"io.containerd.grpc.v1.cri\""));
    }

    #[test]
    fn uids_look_like_kubernetes_uids() {
        let a = fresh_uid();
        assert_eq!(a.len(), 36, "{a}");
        assert_eq!(a.matches('-').count(), 4, "{a}");
        assert_eq!(&a[14..15], "4", "{a}");
        assert_ne!(a, fresh_uid());
    }
}
