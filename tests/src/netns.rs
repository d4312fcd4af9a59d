//! Named network namespaces (`ip netns`) and the long-running children started in them.

use std::fmt;
use std::process::{Command, Stdio};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context as _;

use crate::proc::ProcId;
use crate::run_cmd;

/// Names of all named network namespaces (`/run/netns`).
pub fn list() -> anyhow::Result<Vec<String>> {
    match std::fs::read_dir("/run/netns") {
        Ok(dir) => Ok(dir
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).context("reading /run/netns"),
    }
}

/// Deletes a named namespace if it exists (idempotent).
pub fn delete(name: &str) -> anyhow::Result<()> {
    if !list()?.iter().any(|n| n == name) {
        return Ok(());
    }
    crate::ip(&["netns", "delete", name]).map(|_| ())
}

/// Runs `f` on a new thread that has entered the named network namespace `ns` (only
/// that thread switches; sockets it opens belong to the namespace) and returns the
/// thread's handle; [`Netns::in_thread`] is the same, joined.
pub fn spawn_in<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> JoinHandle<anyhow::Result<T>> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("entering {path}"))?;
        f()
    })
}

/// A UDP echo server on `0.0.0.0:port` in namespace `ns` that answers `exchanges`
/// datagrams, each `delay` after it came (the server's work: a late answer on purpose),
/// then ends. Returns once the socket is bound, so nothing sent after this is lost.
pub fn spawn_udp_echo(
    ns: &str,
    port: u16,
    exchanges: usize,
    delay: Duration,
) -> anyhow::Result<JoinHandle<anyhow::Result<()>>> {
    let (bound_tx, bound_rx) = std::sync::mpsc::channel();
    let server = spawn_in(ns, move || {
        let socket = std::net::UdpSocket::bind(("0.0.0.0", port))?;
        socket.set_read_timeout(Some(Duration::from_secs(10)))?;
        bound_tx.send(()).ok();
        let mut buf = [0u8; 64];
        for _ in 0..exchanges {
            let (len, from) = socket.recv_from(&mut buf)?;
            if !delay.is_zero() {
                std::thread::sleep(delay);
            }
            socket.send_to(&buf[..len], from)?;
        }
        Ok(())
    });
    if bound_rx.recv_timeout(Duration::from_secs(10)).is_err() {
        // The thread ended before binding (its error says why), or still has not bound.
        if server.is_finished() {
            if let Ok(Err(e)) = server.join() {
                return Err(e.context(format!("UDP echo server in {ns}")));
            }
        }
        anyhow::bail!("UDP echo server in {ns} did not bind port {port}");
    }
    Ok(server)
}

/// A network namespace `ip netns add <name>`; deleted on Drop. Dropping kills nothing:
/// children are owned by their [`Child`] guards.
#[derive(Debug)]
pub struct Netns {
    name: String,
    /// Whether Drop deletes the namespace (false after [`Netns::detach`]).
    owned: bool,
}

impl Netns {
    /// Creates the namespace and brings its loopback up. Fails if it already exists.
    pub fn new(name: &str) -> anyhow::Result<Netns> {
        anyhow::ensure!(
            !name.is_empty() && !name.contains('/') && name.len() <= 64,
            "invalid namespace name {name:?}"
        );
        crate::ip(&["netns", "add", name]).with_context(|| format!("creating netns {name}"))?;
        let ns = Netns {
            name: name.to_owned(),
            owned: true,
        };
        ns.run("ip", &["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A handle on an existing namespace that Drop does not delete.
    pub fn existing(name: &str) -> Netns {
        Netns {
            name: name.to_owned(),
            owned: false,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Keeps the namespace after Drop (for `weft-lab up`, which records it instead).
    pub fn detach(mut self) -> String {
        self.owned = false;
        std::mem::take(&mut self.name)
    }

    /// A [`Command`] prepared to run `program` inside the namespace (`ip netns exec`,
    /// which also bind-mounts `/etc/netns/<name>/*` over `/etc`).
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Starts `tcpdump args` inside the namespace, stdout piped, and returns once its
    /// capture is open (it says "listening on ..." on stderr), so nothing sent after
    /// this returns is missed. The capture is killed if dropped before it ends.
    pub fn start_capture(&self, args: &[&str]) -> anyhow::Result<Capture> {
        use std::io::{BufRead as _, BufReader};
        let mut tcpdump = self
            .command("tcpdump")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting tcpdump")?;
        let mut stderr = BufReader::new(tcpdump.stderr.take().context("tcpdump stderr")?);
        let mut seen = String::new();
        while !seen.contains("listening on") {
            let mut line = String::new();
            if stderr.read_line(&mut line)? == 0 {
                let _ = tcpdump.kill();
                let _ = tcpdump.wait();
                anyhow::bail!("tcpdump exited before capturing: {seen}");
            }
            seen.push_str(&line);
        }
        Ok(Capture {
            tcpdump: Some(tcpdump),
        })
    }

    /// Runs `program args` inside the namespace; `Err` with its stderr if it fails.
    pub fn run(&self, program: &str, args: &[&str]) -> anyhow::Result<String> {
        run_cmd(self.command(program).args(args))
    }

    /// Runs a shell script inside the namespace (`sh -c`).
    pub fn sh(&self, script: &str) -> anyhow::Result<String> {
        self.run("sh", &["-c", script])
    }

    /// `ip <args>` inside the namespace (`ip -n`, no fork of `ip netns exec`).
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        run_cmd(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// Runs `f` on a new thread that has entered this namespace (only that thread
    /// switches; sockets it opens belong to the namespace), and returns its result.
    pub fn in_thread<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        spawn_in(&self.name, f)
            .join()
            .map_err(|_| anyhow::anyhow!("thread in netns {} panicked", self.name))?
    }

    /// `ip route show exact <prefix>`: one trimmed line per route to exactly that prefix
    /// (none when the command fails).
    pub fn routes_to(&self, prefix: &str) -> Vec<String> {
        self.ip(&["route", "show", "exact", prefix])
            .unwrap_or_default()
            .lines()
            .map(|line| line.trim().to_owned())
            .collect()
    }

    /// Every sample of the local weftd's `/metrics`, keyed by name with labels (e.g.
    /// `weft_peers_refused_total{reason="not_on_link"}`). Panics unless it answers 200.
    pub fn metrics(&self) -> std::collections::HashMap<String, f64> {
        let (code, page) = self
            .http_get(crate::lab::HEALTHZ_ADDR, "/metrics")
            .expect("GET /metrics");
        assert_eq!(code, 200, "{page}");
        page.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                Some((name.to_owned(), value.parse().ok()?))
            })
            .collect()
    }

    /// `GET http://<addr><path>` from inside the namespace (HTTP/1.0, 2 s timeouts);
    /// returns the status code and the body.
    pub fn http_get(&self, addr: &str, path: &str) -> anyhow::Result<(u16, String)> {
        use std::io::{Read as _, Write as _};
        let addr: std::net::SocketAddr = addr
            .parse()
            .with_context(|| format!("{addr:?} is not IP:port"))?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
        let response = self.in_thread(move || {
            let timeout = Duration::from_secs(2);
            let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)?;
            s.set_read_timeout(Some(timeout))?;
            s.set_write_timeout(Some(timeout))?;
            s.write_all(request.as_bytes())?;
            let mut response = String::new();
            s.read_to_string(&mut response)?;
            Ok(response)
        })?;
        let status = response
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .with_context(|| format!("not an HTTP response: {response:?}"))?;
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Ok((status, body))
    }

    /// Spawns a long-running child (typically from [`Netns::command`]); it is killed by
    /// PID when the returned guard drops. stdin is closed; stdout/stderr are left as the
    /// caller configured them.
    pub fn spawn(&self, cmd: Command) -> anyhow::Result<Child> {
        Child::spawn(cmd)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if self.owned {
            if let Err(e) = delete(&self.name) {
                eprintln!("weft-tests: cannot delete netns {}: {e:#}", self.name);
            }
        }
    }
}

/// A child process killed (SIGKILL) and reaped when dropped.
pub struct Child {
    child: Option<std::process::Child>,
    id: ProcId,
    what: String,
}

impl fmt::Debug for Child {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Child")
            .field("pid", &self.id.pid)
            .field("what", &self.what)
            .finish()
    }
}

impl Child {
    /// Spawns `cmd` in its own process group (a Ctrl-C meant for the test runner or
    /// `weft-lab` does not reach it; it dies when its guard drops or `down` kills it).
    pub fn spawn(mut cmd: Command) -> anyhow::Result<Child> {
        use std::os::unix::process::CommandExt as _;
        let what = format!("{cmd:?}");
        cmd.stdin(Stdio::null()).process_group(0);
        let child = cmd.spawn().with_context(|| format!("spawning {what}"))?;
        let pid = child.id();
        let id = ProcId::of(pid).unwrap_or(ProcId { pid, start_time: 0 });
        Ok(Child {
            child: Some(child),
            id,
            what,
        })
    }

    pub fn pid(&self) -> u32 {
        self.id.pid
    }

    /// PID and start time, for recording in a lab's state file.
    pub fn proc_id(&self) -> ProcId {
        self.id
    }

    /// Whether the child is still running (reaps it if it has exited).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The exit status if it has exited.
    pub fn try_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGKILL and reap (idempotent).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, wait up to `grace` for it to exit, then SIGKILL. Reaps it.
    pub fn terminate(&mut self, grace: Duration) {
        if let Some(c) = self.child.as_mut() {
            if let Ok(pid) = i32::try_from(c.id()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            let _ = crate::wait_until("child to exit after SIGTERM", grace, || {
                matches!(c.try_wait(), Ok(Some(_)))
            });
        }
        self.kill();
    }

    /// Lets the child outlive the guard (for `weft-lab up`, which records its PID).
    pub fn detach(mut self) -> ProcId {
        self.child = None;
        self.id
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A running tcpdump (see [`Netns::start_capture`]); killed on drop unless finished.
#[derive(Debug)]
pub struct Capture {
    tcpdump: Option<std::process::Child>,
}

impl Capture {
    /// Whether tcpdump has exited (e.g. after its `-c` count).
    pub fn is_done(&mut self) -> bool {
        self.tcpdump
            .as_mut()
            .is_none_or(|child| child.try_wait().ok().flatten().is_some())
    }

    /// What tcpdump printed once it has exited by itself (its `-c` count reached)
    /// within `timeout`; otherwise an error naming `what` with what it had printed.
    pub fn wait_done(mut self, what: &str, timeout: std::time::Duration) -> anyhow::Result<String> {
        let done = crate::wait_until(what, timeout, || self.is_done());
        let text = self.finish();
        match done {
            Ok(()) => Ok(text),
            Err(e) => Err(anyhow::anyhow!("{e:#}; captured:\n{text}")),
        }
    }

    /// What tcpdump printed, after stopping it if it still runs.
    pub fn finish(mut self) -> String {
        let Some(mut child) = self.tcpdump.take() else {
            return String::new();
        };
        if !matches!(child.try_wait(), Ok(Some(_))) {
            let _ = child.kill();
        }
        match child.wait_with_output() {
            Ok(output) => String::from_utf8_lossy(&output.stdout).into_owned(),
            Err(e) => format!("(tcpdump output unavailable: {e})"),
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Some(mut child) = self.tcpdump.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
