//! weft's test harness: network namespaces, veth pairs, bridges and a real etcd, each a
//! guard removed on Drop (also when a test panics), with a per-run name prefix so two
//! runs never collide; and [`lab::Lab`], the multi-node test cluster that the e2e tests,
//! `weft-lab` and `weft-bench` share.
//!
//! Everything here shells out to iproute2 (`ip`, `bridge`), `etcd`/`etcdctl` and
//! containerd's `ctr`: the harness must not depend on the code it tests.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub mod etcd;
pub mod lab;
pub mod link;
pub mod netns;
pub mod proc;

/// Whether this process runs as root (the e2e tests need it for namespaces).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The first line of every test that needs root (network namespaces, devices, etcd
/// in a lab). Such tests are also marked
/// `#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]`,
/// so a plain `cargo test` reports them as ignored, never as passed; run anyway without
/// root (`--include-ignored`), this fails the test, naming why. Returns `true` (the
/// `if !require_root(..) { return; }` at the call sites reads as the guard it is).
pub fn require_root(test: &str) -> bool {
    assert!(
        is_root(),
        "{test} needs root (network namespaces); run it as root, e.g. ./scripts/test.sh"
    );
    true
}

/// A `/v1/status` counter list — `[["name", count], ...]`, as `dataplane.drops`,
/// `dataplane.repairs` and `dataplane.send_error_reports` are — by name (empty when
/// absent, e.g. while the data plane is down).
pub fn named_counts(list: &serde_json::Value) -> std::collections::BTreeMap<String, u64> {
    list.as_array()
        .map(|pairs| {
            pairs
                .iter()
                .filter_map(|p| Some((p[0].as_str()?.to_owned(), p[1].as_u64()?)))
                .collect()
        })
        .unwrap_or_default()
}

/// Prefixes handed out by this process, so parallel tests in one binary never share one.
static USED_PREFIXES: Mutex<Option<HashSet<String>>> = Mutex::new(None);

/// A short unique per-run prefix, e.g. `wt3f9a` (6 characters, so that `<prefix>-<name>`
/// stays within the kernel's 15-character interface names for short names).
///
/// Unique within this process, and not in use by any existing namespace or recorded lab.
pub fn run_prefix() -> String {
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut used = USED_PREFIXES.lock().unwrap_or_else(|e| e.into_inner());
    let used = used.get_or_insert_with(HashSet::new);
    let existing = netns::list().unwrap_or_default();
    loop {
        let mut n = rand::random::<u64>() ^ u64::from(std::process::id()).rotate_left(20);
        let mut prefix = String::from("wt");
        for _ in 0..4 {
            prefix.push(char::from(ALPHABET[(n % 36) as usize]));
            n /= 36;
        }
        let taken = used.contains(&prefix)
            || existing.iter().any(|ns| ns.starts_with(&prefix))
            || lab::state::state_file(&prefix).exists();
        if !taken {
            used.insert(prefix.clone());
            return prefix;
        }
    }
}

/// Polls `f` until it returns `Some`, or fails once `timeout` has passed. The pause
/// between polls grows from 5 ms to 100 ms; it is a polling interval, not a wait.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(value) = f() {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// [`wait_for`] with a boolean condition.
pub fn wait_until(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    wait_for(what, timeout, || f().then_some(()))
}

/// Test traffic that is incompressible and the same on every run: an xorshift64
/// stream from a fixed seed. Filling consecutive buffers continues the stream.
#[derive(Debug, Clone)]
pub struct PseudoRandom {
    state: u64,
}

impl Default for PseudoRandom {
    fn default() -> Self {
        PseudoRandom {
            state: 0x9e37_79b9_7f4a_7c15,
        }
    }
}

impl PseudoRandom {
    /// Fills `buf` with the next bytes of the stream (one state step per 8 bytes; a
    /// shorter last word takes the low bytes of its step).
    pub fn fill(&mut self, buf: &mut [u8]) {
        for word in buf.chunks_mut(8) {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            word.copy_from_slice(&self.state.to_le_bytes()[..word.len()]);
        }
    }
}

/// The workspace root (the directory holding the top-level Cargo.toml).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Path of a workspace binary built by `cargo build` (`weftd`, `weftctl`, `weft`,
/// `weft-lab`, `weft-bench`).
///
/// Order: `$WEFT_BIN_DIR/<name>`; the directory of the running executable (a test binary
/// in `target/<profile>/deps` looks in `target/<profile>`), so a release `weft-lab` uses
/// release daemons; otherwise the newer of `target/debug/<name>` and
/// `target/release/<name>` (`$CARGO_TARGET_DIR` honoured). The path is returned even
/// when the file does not exist, so that the error naming it comes from the spawn.
pub fn bin_path(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("WEFT_BIN_DIR") {
        return PathBuf::from(dir).join(name);
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(mut dir) = exe.parent().map(Path::to_path_buf) {
            if dir.file_name().is_some_and(|n| n == "deps") {
                dir.pop();
            }
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let debug = target.join("debug").join(name);
    let release = target.join("release").join(name);
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    match (modified(&debug), modified(&release)) {
        (Some(d), Some(r)) if r > d => release,
        (None, Some(_)) => release,
        _ => debug,
    }
}

/// Runs a command to completion; `Err` names the command and carries its stderr.
pub(crate) fn run_cmd(cmd: &mut std::process::Command) -> anyhow::Result<String> {
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run {cmd:?}: {e}"))?;
    if !out.status.success() {
        anyhow::bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip <args>` in the current (root) namespace — only ever for `netns` management.
pub(crate) fn ip(args: &[&str]) -> anyhow::Result<String> {
    run_cmd(std::process::Command::new("ip").args(args))
}
