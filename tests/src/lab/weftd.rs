//! The lab's weftd nodes: start, stop, kill and readiness of each node's weftd.

use std::time::Duration;

use anyhow::Context as _;

use super::*;

impl Lab {
    /// Starts weftd in node `n`'s namespace (logs appended to `<node dir>/weftd.log`).
    pub fn start_weftd(&mut self, n: usize) -> anyhow::Result<()> {
        let node = self.node(n)?.clone();
        anyhow::ensure!(
            node.kind == NodeKind::Weftd,
            "node {n} is a kernel-flannel node, not a weftd node"
        );
        if let Some(c) = self.weftd.get_mut(&n) {
            anyhow::ensure!(!c.is_running(), "weftd on node {n} is already running");
        }
        std::fs::create_dir_all(node.state_dir())?;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.weftd_log())
            .with_context(|| format!("opening {}", node.weftd_log().display()))?;
        let weftd = crate::bin_path("weftd");
        anyhow::ensure!(
            weftd.is_file(),
            "{} does not exist; build it with `cargo build -p weft-daemon --bins`",
            weftd.display()
        );
        let ns = Netns::existing(&node.netns);
        let mut cmd = ns.command(&weftd.to_string_lossy());
        cmd.arg("--etcd-endpoints")
            .arg(&self.info.etcd_endpoint)
            .arg("--iface")
            .arg("eth0")
            .arg("--subnet-file")
            .arg(node.subnet_file())
            .arg("--state-dir")
            .arg(node.state_dir())
            .arg("--healthz-addr")
            .arg(HEALTHZ_ADDR)
            .args(&self.info.weftd_args)
            .envs(self.info.weftd_env.iter().map(|(k, v)| (k, v)))
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = Child::spawn(cmd)?;
        self.state.processes.push(RecordedProcess {
            what: format!("weftd n{n}"),
            proc: child.proc_id(),
        });
        self.weftd.insert(n, child);
        self.save()
    }

    /// SIGKILLs weftd on node `n` (a crash: nothing is cleaned up by weftd).
    pub fn kill9_weftd(&mut self, n: usize) -> anyhow::Result<()> {
        let what = format!("weftd n{n}");
        if let Some(mut c) = self.weftd.remove(&n) {
            c.kill();
        }
        for p in self.state.processes.iter().filter(|p| p.what == what) {
            p.proc.kill();
        }
        self.state.processes.retain(|p| p.what != what);
        self.save()
    }

    /// Stops weftd on node `n` gracefully (SIGTERM, SIGKILL after 10 s) and returns once
    /// it is gone, also when this lab was attached to (`weft-lab weftd stop`) and the
    /// daemon is not our child.
    pub fn stop_weftd(&mut self, n: usize) -> anyhow::Result<()> {
        const GRACE: Duration = Duration::from_secs(10);
        if let Some(mut c) = self.weftd.remove(&n) {
            c.terminate(GRACE);
        }
        let what = format!("weftd n{n}");
        for p in self.state.processes.iter().filter(|p| p.what == what) {
            p.proc.terminate(GRACE);
        }
        self.kill9_weftd(n)
    }

    /// PID of weftd on node `n`, if running.
    pub fn weftd_pid(&self, n: usize) -> Option<ProcId> {
        let what = format!("weftd n{n}");
        self.state
            .processes
            .iter()
            .find(|p| p.what == what && p.proc.is_alive())
            .map(|p| p.proc)
    }

    /// Whether weftd on node `n` is up: running, `/readyz` answers 200, its subnet.env
    /// exists and etcd holds a lease with its PublicIP.
    pub fn weftd_ready(&mut self, n: usize) -> anyhow::Result<bool> {
        let node = self.node(n)?.clone();
        if let Some(c) = self.weftd.get_mut(&n) {
            if let Some(status) = c.try_status() {
                anyhow::bail!(
                    "weftd on node {n} exited ({status}); last lines of {}:\n{}",
                    node.weftd_log().display(),
                    crate::etcd::tail(&node.weftd_log(), 15)
                );
            }
        } else if self.weftd_pid(n).is_none() {
            anyhow::bail!("weftd on node {n} is not running");
        }
        let ns = Netns::existing(&node.netns);
        let readyz = matches!(ns.http_get(HEALTHZ_ADDR, "/readyz"), Ok((200, _)));
        if !readyz || !node.subnet_file().exists() {
            return Ok(false);
        }
        Ok(self
            .leases()
            .map(|ls| ls.iter().any(|l| l.public_ip == node.ip))
            .unwrap_or(false))
    }

    /// Waits (up to the spec's ready timeout) for [`Lab::weftd_ready`], then
    /// reprograms the kernel-flannel nodes ([`Lab::sync_kernel_nodes`]).
    pub fn wait_weftd_ready(&mut self, n: usize) -> anyhow::Result<()> {
        let timeout = Duration::from_millis(self.info.ready_timeout_ms);
        let log = self.node(n)?.weftd_log();
        let mut failure = None;
        let waited = crate::wait_for(
            &format!("weftd on node {n} to become ready"),
            timeout,
            || match self.weftd_ready(n) {
                Ok(true) => Some(()),
                Ok(false) => None,
                Err(e) => {
                    failure = Some(e);
                    Some(())
                }
            },
        );
        if let Some(e) = failure {
            return Err(e);
        }
        waited.map_err(|e| {
            anyhow::anyhow!(
                "{e}; last lines of {}:\n{}",
                log.display(),
                crate::etcd::tail(&log, 15)
            )
        })?;
        // Its lease may be new: kernel-flannel nodes learn leases from etcd like flanneld.
        self.sync_kernel_nodes()
    }
}
