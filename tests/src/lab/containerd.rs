//! Pods through a real containerd and `ctr run --cni`, the way a runtime drives the
//! `weft` CNI plugin on a real node.
//!
//! **One containerd per lab, shared by all nodes** (checked with containerd 1.6 and the
//! reference plugins). containerd itself never touches the network: with `ctr run --cni`
//! it is the `ctr` *client* that calls the CNI plugins, in the namespace `ctr` runs in.
//! So the lab runs `ctr` inside the node's namespace, and each node gets its own view of
//! the host through the private mount namespace that `ip netns exec` creates:
//!
//! * `/etc/cni/net.d` ← `/etc/netns/<node-ns>/cni/net.d/` (`ip netns exec` bind-mounts
//!   `/etc/netns/<ns>/*` over `/etc`): the node's conflist, pointing at its subnet.env;
//! * `/opt/cni/bin` ← `<labdir>/cni-bin` (links to the reference plugins and to the
//!   workspace's `weft` binary), so nothing is installed on the host;
//! * `/var/lib/cni` ← `<labdir>/nN/var-lib-cni` (libcni's result cache), so nothing of
//!   the lab is written to the host's CNI state.
//!
//! containerd gets its own root, state, socket and runc root under `<labdir>/containerd`,
//! and runs in the lab's underlay namespace. Container IDs are `<prefix>-<pod>`.
//!
//! CRI pods (the kubelet's path, where containerd itself calls CNI) use one containerd
//! per node instead, see [`super::cri`].

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use super::{CniKind, NodeInfo};

/// Files of the lab's containerd.
#[derive(Debug, Clone)]
pub struct Paths {
    pub dir: PathBuf,
}

impl Paths {
    pub fn new(lab_dir: &Path) -> Paths {
        Paths {
            dir: lab_dir.join("containerd"),
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
    pub fn runc_root(&self) -> PathBuf {
        self.dir.join("runc")
    }

    /// containerd 1.6 config: private root/state/sockets, no CRI (kubelet is not here).
    pub fn config_toml(&self) -> String {
        private_config(&self.dir, &self.socket(), false)
    }
}

/// The part of a lab containerd's config every lab containerd shares: root, state,
/// sockets and opt under `dir`, the snapshotters this host lacks off, and the CRI plugin
/// on only where `cri` (the per-node containerds of `lab::cri`, which append its
/// section).
pub fn private_config(dir: &Path, socket: &Path, cri: bool) -> String {
    let d = dir.display();
    let sock = socket.display();
    let cri_off = if cri {
        ""
    } else {
        "\"io.containerd.grpc.v1.cri\", "
    };
    format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = [{cri_off}"io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]

[grpc]
  address = "{sock}"

[ttrpc]
  address = "{sock}.ttrpc"

[debug]
  address = "{d}/debug.sock"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
"#
    )
}

/// A busybox root filesystem (`/usr/bin/busybox` of busybox-static, with its applets
/// linked in `/bin`) at `<lab_dir>/rootfs`; created once.
pub fn ensure_rootfs(lab_dir: &Path) -> anyhow::Result<PathBuf> {
    let rootfs = lab_dir.join("rootfs");
    let bin = rootfs.join("bin");
    if bin.join("sh").exists() {
        return Ok(rootfs);
    }
    let busybox = ["/usr/bin/busybox", "/bin/busybox"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .context("busybox not found (install busybox-static)")?;
    for d in ["bin", "proc", "sys", "dev", "etc", "tmp", "root", "run"] {
        std::fs::create_dir_all(rootfs.join(d))?;
    }
    std::fs::copy(busybox, bin.join("busybox"))
        .with_context(|| format!("copying {}", busybox.display()))?;
    let list = crate::run_cmd(std::process::Command::new(busybox).arg("--list"))?;
    for applet in list
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "busybox")
    {
        let link = bin.join(applet);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", &link)
                .with_context(|| format!("linking {}", link.display()))?;
        }
    }
    std::fs::write(rootfs.join("etc/hosts"), "127.0.0.1 localhost\n")?;
    std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    Ok(rootfs)
}

/// `<lab_dir>/cni-bin`: links to every plugin in `/opt/cni/bin` (resolved, because
/// `/opt/cni/bin` itself gets covered by this directory) and to the `weft` binary.
pub fn ensure_cni_bin(lab_dir: &Path, weft_plugin: &Path) -> anyhow::Result<PathBuf> {
    let dir = lab_dir.join("cni-bin");
    std::fs::create_dir_all(&dir)?;
    for entry in std::fs::read_dir("/opt/cni/bin").context("reading /opt/cni/bin")? {
        let entry = entry?;
        let link = dir.join(entry.file_name());
        if link.exists() || link.symlink_metadata().is_ok() {
            continue;
        }
        let target = std::fs::canonicalize(entry.path())?;
        std::os::unix::fs::symlink(&target, &link)?;
    }
    let link = dir.join("weft");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(weft_plugin, &link)?;
    Ok(dir)
}

/// The node's conflist (CNI 1.0.0, what containerd 1.6's CNI library speaks).
pub fn conflist(kind: CniKind, node: &NodeInfo, subnet: ipnet::Ipv4Net, mtu: u32) -> String {
    let data_dir = node.dir.join("cni-ipam");
    let plugin = match kind {
        CniKind::Weft => serde_json::json!({
            "type": "weft",
            "subnetFile": node.subnet_file(),
            "bridge": "cni0",
            "dataDir": data_dir,
        }),
        CniKind::Bridge => {
            let gw = std::net::Ipv4Addr::from(u32::from(subnet.network()) + 1);
            serde_json::json!({
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": true,
                "ipMasq": false,
                "mtu": mtu,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": subnet.to_string(), "gateway": gw.to_string()}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": data_dir,
                },
            })
        }
    };
    // Chained like the documented example conflist: the reference portmap after the
    // main plugin (it must pass the result through and run its DEL too).
    let portmap = serde_json::json!({"type": "portmap", "capabilities": {"portMappings": true}});
    serde_json::json!({"cniVersion": "1.0.0", "name": "weft", "plugins": [plugin, portmap]})
        .to_string()
}

/// Where containerd 1.6 puts the socket of the shim of container `id`:
/// `/run/containerd/s/<hex sha256 of "<address>/<namespace>/<id>">`.
pub fn shim_socket(containerd_address: &Path, namespace: &str, id: &str) -> PathBuf {
    use sha2::Digest as _;
    let key = containerd_address.join(namespace).join(id);
    let digest = sha2::Sha256::digest(key.as_os_str().as_encoded_bytes());
    Path::new("/run/containerd/s").join(hex::encode(digest))
}

/// The PID of task `id` from `ctr task ls` output (`TASK PID STATUS`).
pub fn task_pid(ctr_task_ls: &str, id: &str) -> Option<u32> {
    ctr_task_ls.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        (f.next()? == id).then(|| f.next()?.parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_pid_is_found_in_ctr_output() {
        let out =
            "TASK       PID     STATUS\nwtab-p1    4242    RUNNING\nwtab-p10   4343    RUNNING\n";
        assert_eq!(task_pid(out, "wtab-p1"), Some(4242));
        assert_eq!(task_pid(out, "wtab-p10"), Some(4343));
        assert_eq!(task_pid(out, "wtab-p2"), None);
    }
}
