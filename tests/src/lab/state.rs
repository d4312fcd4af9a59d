//! The record of a running lab (`/run/weft-lab/<prefix>.json`), enough for `weft-lab
//! down` to remove everything even after `kill -9` of weft-lab and its daemons.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::proc::ProcId;

/// Where lab records live.
pub const STATE_DIR: &str = "/run/weft-lab";

/// `/run/weft-lab/<prefix>.json`.
pub fn state_file(prefix: &str) -> PathBuf {
    Path::new(STATE_DIR).join(format!("{prefix}.json"))
}

/// Everything a lab created outside its own process.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LabState {
    pub prefix: String,
    /// The lab's working directory (logs, data dirs, subnet.env files, rootfs).
    pub dir: PathBuf,
    /// Named network namespaces, in creation order.
    pub namespaces: Vec<String>,
    /// Processes the lab started (etcd, containerd, weftd, ...), with what they are.
    pub processes: Vec<RecordedProcess>,
    /// `/etc/netns/<ns>` directories the lab created.
    pub etc_netns: Vec<PathBuf>,
    /// Other directories to remove.
    pub dirs: Vec<PathBuf>,
    /// containerd sockets the lab's containerd listens on: shims carry it as an
    /// argument, which is how `down` finds them after a crash.
    pub containerd_sockets: Vec<PathBuf>,
    /// The lab's description, for `weft-lab status` and re-attaching to a detached lab.
    #[serde(default)]
    pub info: Option<super::LabInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecordedProcess {
    pub what: String,
    pub proc: ProcId,
}

impl LabState {
    /// Writes the record atomically (temp file + rename).
    pub fn save(&self) -> anyhow::Result<()> {
        std::fs::create_dir_all(STATE_DIR).with_context(|| format!("creating {STATE_DIR}"))?;
        let path = state_file(&self.prefix);
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))?;
        Ok(())
    }

    pub fn load(prefix: &str) -> anyhow::Result<LabState> {
        let path = state_file(prefix);
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
    }

    /// Prefixes of all recorded labs.
    pub fn list() -> Vec<String> {
        let Ok(dir) = std::fs::read_dir(STATE_DIR) else {
            return Vec::new();
        };
        let mut prefixes: Vec<String> = dir
            .filter_map(|e| {
                let name = e.ok()?.file_name().into_string().ok()?;
                name.strip_suffix(".json").map(str::to_owned)
            })
            .collect();
        prefixes.sort();
        prefixes
    }

    /// Asks the lab's containerd (if it still answers) to kill and delete the lab's
    /// containers, so that shims, runc state and shim sockets go away cleanly; then
    /// removes cgroups runc may have left behind after a `kill -9`.
    fn remove_containers(&self) {
        let Some(info) = &self.info else {
            return;
        };
        let ids: Vec<&str> = info
            .pods
            .iter()
            .filter_map(|p| p.container.as_deref())
            .collect();
        if ids.is_empty() {
            return;
        }
        if let Some(sock) = &info.containerd_socket {
            let ctr = |args: &[&str]| {
                crate::run_cmd(
                    std::process::Command::new("timeout")
                        .args(["10", "ctr", "-a"])
                        .arg(sock)
                        .args(args),
                )
            };
            if sock.exists() && ctr(&["version"]).is_ok() {
                for id in &ids {
                    let _ = ctr(&["task", "kill", "-s", "SIGKILL", id]);
                    let _ = ctr(&["task", "delete", "-f", id]);
                    let _ = ctr(&["container", "delete", id]);
                }
            }
        }
        for p in &self.processes {
            if p.what.starts_with("pod ") {
                p.proc.kill();
            }
        }
        // Sockets of shims that were killed rather than told to exit: containerd 1.6
        // names them /run/containerd/s/sha256(<address>/<namespace>/<id>).
        if let Some(sock) = &info.containerd_socket {
            for id in &ids {
                let _ = std::fs::remove_file(super::containerd::shim_socket(sock, "default", id));
            }
        }
        // runc's cgroups (`/default/<id>` under each v1 hierarchy, or v2's root).
        let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
            return;
        };
        let mut roots: Vec<PathBuf> = hierarchies.filter_map(|e| Some(e.ok()?.path())).collect();
        roots.push(PathBuf::from("/sys/fs/cgroup"));
        for root in roots {
            for id in &ids {
                let _ = std::fs::remove_dir(root.join("default").join(id));
            }
        }
    }

    /// Removes everything recorded, in reverse order of creation, then the record.
    /// Best effort: every step is tried; the errors are returned together.
    pub fn teardown(&self) -> anyhow::Result<()> {
        let mut errors = Vec::new();
        self.remove_containers();
        if let Some(info) = &self.info {
            super::cri::remove_sandboxes(info);
        }
        // Processes first (they hold namespaces and files open), newest first.
        for p in self.processes.iter().rev() {
            p.proc.kill();
        }
        // containerd shims (and the containers' processes under them) were started by
        // our containerd; they carry its socket path as an argument.
        for sock in &self.containerd_sockets {
            for pid in crate::proc::pids_with_arg(&sock.to_string_lossy()) {
                if let Some(p) = ProcId::of(pid) {
                    p.kill();
                }
            }
        }
        if let Some(info) = &self.info {
            super::cri::remove_leftovers(info);
        }
        for ns in self.namespaces.iter().rev() {
            if let Err(e) = crate::netns::delete(ns) {
                errors.push(format!("netns {ns}: {e:#}"));
            }
        }
        for dir in self
            .etc_netns
            .iter()
            .chain(self.dirs.iter())
            .chain([&self.dir])
        {
            if dir.as_os_str().is_empty() {
                continue;
            }
            match std::fs::remove_dir_all(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => errors.push(format!("{}: {e}", dir.display())),
            }
        }
        if errors.is_empty() {
            let _ = std::fs::remove_file(state_file(&self.prefix));
            Ok(())
        } else {
            anyhow::bail!(
                "lab {} not fully removed: {}",
                self.prefix,
                errors.join("; ")
            )
        }
    }
}
