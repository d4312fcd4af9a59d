//! A real etcd (Debian's `etcd-server`, `/usr/bin/etcd`) for tests and the lab.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;

use crate::netns::{Child, Netns};
use crate::proc::ProcId;
use crate::run_cmd;

/// How long etcd may take to answer its health check after start.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A real etcd on its own ports and data dir, killed by PID on Drop.
///
/// * [`Etcd::start`]: on loopback in the current namespace, on free ports (client and
///   peer, so parallel instances never collide on 2379/2380), temp data dir.
/// * [`Etcd::start_in`]: inside a namespace at `ip`, ports 2379/2380 (the namespace is
///   private), also listening on the namespace's 127.0.0.1:2379.
#[derive(Debug)]
pub struct Etcd {
    netns: Option<String>,
    host: String,
    client_port: u16,
    peer_port: u16,
    dir: PathBuf,
    tempdir: Option<tempfile::TempDir>,
    child: Option<Child>,
}

impl Etcd {
    /// etcd on 127.0.0.1 (current namespace), free ports, temp dir.
    pub fn start() -> anyhow::Result<Etcd> {
        let mut last_err = None;
        // A free port found by binding port 0 can be taken by someone else before etcd
        // binds it; retry with new ports in that (rare) case.
        for _ in 0..3 {
            let (client_port, peer_port) = (free_port()?, free_port()?);
            let tempdir = tempfile::Builder::new().prefix("weft-etcd-").tempdir()?;
            let mut etcd = Etcd {
                netns: None,
                host: "127.0.0.1".into(),
                client_port,
                peer_port,
                dir: tempdir.path().to_path_buf(),
                tempdir: Some(tempdir),
                child: None,
            };
            match etcd.spawn_and_wait() {
                Ok(()) => return Ok(etcd),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("etcd did not start")))
    }

    /// etcd inside `ns`, listening on `ip:2379` (and the namespace's loopback), temp dir.
    pub fn start_in(ns: &Netns, ip: &str) -> anyhow::Result<Etcd> {
        let tempdir = tempfile::Builder::new().prefix("weft-etcd-").tempdir()?;
        let dir = tempdir.path().to_path_buf();
        Etcd::start_in_dir_inner(ns, ip, dir, Some(tempdir))
    }

    /// Like [`Etcd::start_in`] with data and log in `dir` (created; not removed on Drop —
    /// the caller owns it).
    pub fn start_in_dir(ns: &Netns, ip: &str, dir: &Path) -> anyhow::Result<Etcd> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        Etcd::start_in_dir_inner(ns, ip, dir.to_path_buf(), None)
    }

    fn start_in_dir_inner(
        ns: &Netns,
        ip: &str,
        dir: PathBuf,
        tempdir: Option<tempfile::TempDir>,
    ) -> anyhow::Result<Etcd> {
        let ip: std::net::Ipv4Addr = ip
            .parse()
            .with_context(|| format!("etcd address {ip:?} is not an IPv4 address"))?;
        let mut etcd = Etcd {
            netns: Some(ns.name().to_owned()),
            host: ip.to_string(),
            client_port: 2379,
            peer_port: 2380,
            dir,
            tempdir,
            child: None,
        };
        etcd.spawn_and_wait()?;
        Ok(etcd)
    }

    /// A handle on an etcd started by someone else (e.g. a detached lab), inside `ns`
    /// at `ip:port`. Dropping it kills nothing.
    pub fn existing(ns: &str, ip: &str, port: u16, dir: &Path) -> Etcd {
        Etcd {
            netns: Some(ns.to_owned()),
            host: ip.to_owned(),
            client_port: port,
            peer_port: port + 1,
            dir: dir.to_path_buf(),
            tempdir: None,
            child: None,
        }
    }

    /// Forgets the process without killing it (the lab's record still names it).
    pub fn forget(&mut self) {
        if let Some(c) = self.child.take() {
            c.detach();
        }
    }

    /// `http://HOST:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}:{}", self.host, self.client_port)
    }

    /// The namespace etcd runs in, if not the current one.
    pub fn netns(&self) -> Option<&str> {
        self.netns.as_deref()
    }

    /// Directory holding `data/` and `etcd.log`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("etcd.log")
    }

    /// PID and start time while running.
    pub fn proc_id(&self) -> Option<ProcId> {
        self.child.as_ref().map(Child::proc_id)
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(Child::is_running)
    }

    /// Stops etcd (SIGTERM, then SIGKILL after 5 s); the data dir stays.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.terminate(Duration::from_secs(5));
        }
    }

    /// Kills etcd without a chance to flush (crash test); the data dir stays.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill();
        }
    }

    /// Starts etcd again on the same ports and data dir and waits until it is healthy.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.spawn_and_wait()
    }

    /// Lets etcd and its data dir outlive this guard (for `weft-lab up`).
    pub fn detach(mut self) -> Option<ProcId> {
        if let Some(t) = self.tempdir.take() {
            let _ = t.keep();
        }
        self.child.take().map(Child::detach)
    }

    /// `etcdctl --endpoints <endpoint> <args>` with `ETCDCTL_API=3`, run in etcd's
    /// namespace; `Err` with etcdctl's stderr if it fails.
    pub fn etcdctl(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = match &self.netns {
            Some(ns) => Netns::existing(ns).command("etcdctl"),
            None => Command::new("etcdctl"),
        };
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoint()))
            .arg("--dial-timeout=2s")
            .arg("--command-timeout=5s")
            .args(args);
        run_cmd(&mut cmd)
    }

    /// `put key value`.
    pub fn put(&self, key: &str, value: &str) -> anyhow::Result<()> {
        self.etcdctl(&["put", key, value]).map(|_| ())
    }

    /// The value at `key`, if any.
    pub fn get(&self, key: &str) -> anyhow::Result<Option<String>> {
        Ok(self
            .get_prefix_exact(key, false)?
            .into_iter()
            .next()
            .map(|(_, v)| v))
    }

    /// All `(key, value)` pairs under `prefix` (values must be single-line, as flannel's
    /// JSON records are).
    pub fn get_prefix(&self, prefix: &str) -> anyhow::Result<Vec<(String, String)>> {
        self.get_prefix_exact(prefix, true)
    }

    fn get_prefix_exact(&self, key: &str, prefix: bool) -> anyhow::Result<Vec<(String, String)>> {
        let mut args = vec!["get", key];
        if prefix {
            args.push("--prefix");
        }
        let out = self.etcdctl(&args)?;
        let mut lines = out.lines();
        let mut pairs = Vec::new();
        while let (Some(k), Some(v)) = (lines.next(), lines.next()) {
            pairs.push((k.to_owned(), v.to_owned()));
        }
        Ok(pairs)
    }

    /// `lease grant <ttl>`; returns the lease ID (hex, as etcdctl prints it).
    pub fn lease_grant(&self, ttl_secs: u64) -> anyhow::Result<String> {
        let out = self.etcdctl(&["lease", "grant", &ttl_secs.to_string()])?;
        // "lease 694d7d8f0cbe5e0a granted with TTL(86400s)"
        out.split_whitespace()
            .nth(1)
            .map(str::to_owned)
            .ok_or_else(|| anyhow::anyhow!("unexpected `etcdctl lease grant` output: {out:?}"))
    }

    /// `put --lease=<lease> key value`.
    pub fn put_with_lease(&self, key: &str, value: &str, lease: &str) -> anyhow::Result<()> {
        self.etcdctl(&["put", &format!("--lease={lease}"), key, value])
            .map(|_| ())
    }

    fn command(&self) -> Command {
        let host = &self.host;
        let client = format!("http://{host}:{}", self.client_port);
        let peer = format!("http://{host}:{}", self.peer_port);
        let mut listen_client = client.clone();
        if host != "127.0.0.1" {
            listen_client.push_str(&format!(",http://127.0.0.1:{}", self.client_port));
        }
        let mut cmd = match &self.netns {
            Some(ns) => Netns::existing(ns).command("etcd"),
            None => Command::new("etcd"),
        };
        cmd.arg("--name=default")
            .arg(format!("--data-dir={}", self.dir.join("data").display()))
            .arg(format!("--listen-client-urls={listen_client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=default={peer}"))
            .arg("--logger=zap")
            .arg("--log-outputs=stderr");
        cmd
    }

    fn spawn_and_wait(&mut self) -> anyhow::Result<()> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .with_context(|| format!("opening {}", self.log_path().display()))?;
        let mut cmd = self.command();
        cmd.stdout(log.try_clone()?).stderr(log);
        self.child = Some(Child::spawn(cmd).context("starting etcd (is etcd-server installed?)")?);
        let result = crate::wait_for("etcd to become healthy", READY_TIMEOUT, || {
            if !self.is_running() {
                return Some(Err(anyhow::anyhow!(
                    "etcd exited during start-up; last lines of {}:\n{}",
                    self.log_path().display(),
                    tail(&self.log_path(), 10)
                )));
            }
            self.etcdctl(&["endpoint", "health"]).ok().map(|_| Ok(()))
        })
        .and_then(|r| r);
        if result.is_err() {
            self.kill();
        }
        result
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TCP port that was free on 127.0.0.1 a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// The last `n` lines of a (log) file, for error messages.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
