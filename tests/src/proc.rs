//! Processes by PID: identity (PID + start time, so a recycled PID is never killed),
//! kill-and-reap, and lookup by command line of processes the lab started.

use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

/// A process identified across the lifetime of its PID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcId {
    pub pid: u32,
    /// Field 22 of `/proc/<pid>/stat` (clock ticks since boot).
    pub start_time: u64,
}

impl ProcId {
    /// Identity of a live process; `None` when it no longer exists.
    pub fn of(pid: u32) -> Option<ProcId> {
        start_time(pid).map(|start_time| ProcId { pid, start_time })
    }

    /// Whether this very process still exists (not a recycled PID) with a thread that
    /// has not exited. A killed multi-threaded process shows its leader as a zombie
    /// while other threads are still closing files (a TUN device, a listening socket);
    /// it is alive until the last of them is gone.
    pub fn is_alive(&self) -> bool {
        start_time(self.pid) == Some(self.start_time) && has_live_thread(self.pid)
    }

    /// SIGTERM if it is still this process; waits up to `grace` for it to exit, then
    /// SIGKILLs it ([`ProcId::kill`]).
    pub fn terminate(&self, grace: Duration) {
        self.signal_and_wait(Signal::SIGTERM, grace);
        self.kill();
    }

    /// SIGKILL if it is still this process; waits (bounded) until it is gone. Zombies of
    /// processes that are not our children are reaped by their parent or by init.
    pub fn kill(&self) {
        self.signal_and_wait(Signal::SIGKILL, Duration::from_secs(5));
    }

    fn signal_and_wait(&self, signal: Signal, timeout: Duration) {
        if !self.is_alive() {
            return;
        }
        let Ok(raw) = i32::try_from(self.pid) else {
            return;
        };
        let _ = kill(Pid::from_raw(raw), signal);
        let _ = crate::wait_until(&format!("process to exit after {signal}"), timeout, || {
            !self.is_alive()
        });
    }
}

/// Start time of `pid` from `/proc/<pid>/stat`, or `None` if it does not exist.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    // `rest` starts at field 3 (state); start time is field 22.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// User + system CPU time `pid` has used, all its threads together (fields 14 and 15 of
/// `/proc/<pid>/stat`), or `None` if it does not exist.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat[stat.rfind(')')? + 2..].split_whitespace();
    // `fields` starts at field 3: utime and stime are its 12th and 13th.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks_per_second = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).ok()?;
    Some(Duration::from_nanos(
        (utime + stime).saturating_mul(1_000_000_000) / ticks_per_second.max(1),
    ))
}

/// Whether any thread of `pid` is neither a zombie nor dead.
fn has_live_thread(pid: u32) -> bool {
    threads(pid)
        .iter()
        .any(|(_, state)| *state != 'Z' && *state != 'X')
}

/// `(name, state)` of each thread of `pid` (`comm` and the state letter of
/// `/proc/<pid>/task/<tid>/stat`: `R`, `S`, `Z`...); empty if `pid` does not exist.
pub fn threads(pid: u32) -> Vec<(String, char)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| {
            let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
            let (open, close) = (stat.find('(')?, stat.rfind(')')?);
            let state = stat.get(close + 2..)?.chars().next()?;
            Some((stat.get(open + 1..close)?.to_owned(), state))
        })
        .collect()
}

/// PIDs of live processes whose command line contains `needle` as one argument (exact
/// match), e.g. the private containerd socket path a shim was given. Used to find
/// processes our own daemons started (containerd shims) so they are killed by PID.
pub fn pids_with_arg(needle: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let own = std::process::id();
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != own)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| c.split(|&b| b == 0).any(|arg| arg == needle.as_bytes()))
                .unwrap_or(false)
        })
        .collect()
}
