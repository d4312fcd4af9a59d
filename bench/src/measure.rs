//! The measurements: iperf3 between the two pods (server in the destination pod, client
//! in the source pod, every process bounded in time), ping for the round trip, and the
//! whole machine's CPU time from `/proc/stat`.

use std::io::Read as _;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context as _;
use weft_tests::netns::Netns;

use crate::iperf::Report;

/// iperf3's port inside the destination pod (a private namespace: no one else uses it).
const IPERF_PORT: &str = "5201";
/// How long iperf3 may take to connect, and on top of its duration to finish.
const CONNECT_TIMEOUT_MS: &str = "3000";
const GRACE: Duration = Duration::from_secs(15);

/// Where traffic goes: the client runs in `src`, the server in `dst` at `dst_ip`.
#[derive(Debug, Clone, Copy)]
pub struct Pair<'a> {
    pub src: &'a Netns,
    pub dst: &'a Netns,
    pub dst_ip: Ipv4Addr,
}

/// What an iperf3 run moved and what the machine spent moving it.
#[derive(Debug)]
pub struct IperfRun {
    pub report: Report,
    /// Whole-machine busy CPU time while the client ran.
    pub cpu_seconds: f64,
}

/// Runs one iperf3 test of `seconds` with `extra` client arguments (`-P 4`, `-R`,
/// `-u -l 64 -b 0`, ...).
pub fn iperf(pair: Pair<'_>, seconds: u64, extra: &[&str]) -> anyhow::Result<IperfRun> {
    let ip = pair.dst_ip.to_string();

    // A one-off server (`-1`): it exits after this test; the guard kills it if not.
    let mut server_cmd = pair.dst.command("iperf3");
    server_cmd
        .args(["-s", "-1", "-B", &ip, "-p", IPERF_PORT])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut server = pair
        .dst
        .spawn(server_cmd)
        .context("starting iperf3 server")?;
    weft_tests::wait_until("iperf3 server to listen", Duration::from_secs(5), || {
        !server.is_running() || listening(pair.dst, IPERF_PORT)
    })?;
    anyhow::ensure!(
        server.is_running(),
        "iperf3 server in {} exited at start ({:?})",
        pair.dst.name(),
        server.try_status()
    );

    let mut client = pair.src.command("iperf3");
    client
        .args(["-c", &ip, "-p", IPERF_PORT, "-J"])
        .args(["-t", &seconds.to_string()])
        .args(["--connect-timeout", CONNECT_TIMEOUT_MS])
        .args(extra);
    let before = CpuTimes::read()?;
    let output = run_bounded(client, Duration::from_secs(seconds) + GRACE)?;
    let after = CpuTimes::read()?;

    let stdout = String::from_utf8_lossy(&output.stdout);
    let report = Report::parse(&stdout).with_context(|| {
        let stderr = String::from_utf8_lossy(&output.stderr);
        format!("iperf3 client ({}): {}", output.status, stderr.trim())
    })?;
    Ok(IperfRun {
        report,
        cpu_seconds: after.busy_seconds_since(&before),
    })
}

/// Whether something in `ns` listens on TCP `port`.
fn listening(ns: &Netns, port: &str) -> bool {
    ns.run("ss", &["-Hltn", &format!("sport = :{port}")])
        .map(|out| !out.trim().is_empty())
        .unwrap_or(false)
}

/// Runs `cmd` to completion, killing it if it is still running after `limit`.
fn run_bounded(mut cmd: Command, limit: Duration) -> anyhow::Result<std::process::Output> {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {what}"))?;
    // Readers drain the pipes so the child never blocks on a full one.
    let mut stdout = child.stdout.take().context("stdout pipe")?;
    let mut stderr = child.stderr.take().context("stderr pipe")?;
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let finished = weft_tests::wait_for(&format!("{what} to finish"), limit, || {
        child.try_wait().ok().flatten()
    });
    let status = match finished {
        Ok(status) => status,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
    };
    Ok(std::process::Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    })
}

/// Pings per turn when several paths take turns (half a second at 10 ms apart).
pub const RTT_TURN: u32 = 50;

/// The median ICMP echo round trip in µs of each pair, over `count` pings 10 ms apart,
/// the pairs taking turns of [`RTT_TURN`] pings. This VM's latency drifts over minutes
/// (the kernel's own rtt read 53, 64, 77 and 97 µs in one lab within minutes): paths
/// measured one after the other would compare that drift, paths measured in turns see
/// the same machine. A pair whose ping fails drops out with its error.
pub fn rtt_medians_interleaved(pairs: &[Pair<'_>], count: u32) -> Vec<anyhow::Result<f64>> {
    let mut samples: Vec<anyhow::Result<Vec<f64>>> = pairs.iter().map(|_| Ok(Vec::new())).collect();
    let mut left = count;
    while left > 0 {
        let turn = left.min(RTT_TURN);
        left -= turn;
        for (pair, samples) in pairs.iter().zip(samples.iter_mut()) {
            if let Ok(times) = samples {
                match ping_times_us(*pair, turn) {
                    Ok(more) => times.extend(more),
                    Err(e) => *samples = Err(e),
                }
            }
        }
    }
    samples
        .into_iter()
        .map(|samples| {
            let mut samples = samples?;
            anyhow::ensure!(
                samples.len() * 2 >= count as usize,
                "only {} of {count} pings answered",
                samples.len()
            );
            median(&mut samples).context("no ping answered")
        })
        .collect()
}

/// The round trips in µs of `count` pings 10 ms apart (the unanswered ones left out).
fn ping_times_us(pair: Pair<'_>, count: u32) -> anyhow::Result<Vec<f64>> {
    let mut cmd = pair.src.command("ping");
    let deadline = count / 100 + 5;
    cmd.args(["-n", "-i", "0.01", "-W", "1"])
        .args(["-c", &count.to_string(), "-w", &deadline.to_string()])
        .arg(pair.dst_ip.to_string());
    let output = run_bounded(cmd, Duration::from_secs(u64::from(deadline) + 5))?;
    let times = parse_ping_times_us(&String::from_utf8_lossy(&output.stdout));
    // ping exits 1 when replies were missing (counted by the caller), 2 on an error.
    anyhow::ensure!(
        !times.is_empty() || output.status.code() == Some(1),
        "ping failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(times)
}

/// The `time=0.055 ms` of each reply line of `ping -n`, in µs.
pub fn parse_ping_times_us(output: &str) -> Vec<f64> {
    output
        .lines()
        .filter_map(|line| {
            let rest = line.split_once(" time=")?.1;
            let (number, unit) = rest.trim().split_once(' ')?;
            let number: f64 = number.parse().ok()?;
            match unit.trim() {
                "ms" => Some(number * 1e3),
                "us" | "µs" => Some(number),
                "s" => Some(number * 1e6),
                _ => None,
            }
        })
        .collect()
}

pub fn median(samples: &mut [f64]) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_by(f64::total_cmp);
    let mid = samples.len() / 2;
    Some(if samples.len() % 2 == 1 {
        samples[mid]
    } else {
        (samples[mid - 1] + samples[mid]) / 2.0
    })
}

/// Whether `dst_ip` answers a ping from `src` within a second.
pub fn reachable(pair: Pair<'_>) -> bool {
    pair.src
        .run(
            "ping",
            &["-n", "-c", "1", "-W", "1", &pair.dst_ip.to_string()],
        )
        .is_ok()
}

/// The machine's aggregate CPU counters (the `cpu` line of `/proc/stat`), in ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTimes {
    /// user + nice + system + irq + softirq + steal (guest time is inside user).
    pub busy_ticks: u64,
}

impl CpuTimes {
    pub fn read() -> anyhow::Result<CpuTimes> {
        let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        CpuTimes::parse(&stat)
    }

    pub fn parse(stat: &str) -> anyhow::Result<CpuTimes> {
        let line = stat
            .lines()
            .find(|l| l.starts_with("cpu "))
            .context("/proc/stat has no aggregate `cpu` line")?;
        let fields: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(|f| f.parse::<u64>())
            .collect::<Result<_, _>>()
            .with_context(|| format!("/proc/stat: bad number in {line:?}"))?;
        anyhow::ensure!(
            fields.len() >= 8,
            "/proc/stat: expected at least 8 counters in {line:?}"
        );
        // user nice system idle iowait irq softirq steal ...
        let busy_ticks = fields[0] + fields[1] + fields[2] + fields[5] + fields[6] + fields[7];
        Ok(CpuTimes { busy_ticks })
    }

    pub fn busy_seconds_since(&self, earlier: &CpuTimes) -> f64 {
        self.busy_ticks.saturating_sub(earlier.busy_ticks) as f64 / clock_ticks_per_second()
    }
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a configuration value; it has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0 // USER_HZ on every Linux architecture we run on
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_times_are_read_in_microseconds() {
        let out = "PING 10.244.2.2 (10.244.2.2) 56(84) bytes of data.\n\
                   64 bytes from 10.244.2.2: icmp_seq=1 ttl=62 time=0.055 ms\n\
                   64 bytes from 10.244.2.2: icmp_seq=2 ttl=62 time=1.20 ms\n\
                   From 10.244.1.1 icmp_seq=3 Destination Host Unreachable\n\
                   \n--- 10.244.2.2 ping statistics ---\n\
                   3 packets transmitted, 2 received, 33% packet loss, time 20ms\n\
                   rtt min/avg/max/mdev = 0.055/0.627/1.200/0.572 ms\n";
        let times = parse_ping_times_us(out);
        assert_eq!(times.len(), 2);
        assert!((times[0] - 55.0).abs() < 1e-9 && (times[1] - 1200.0).abs() < 1e-9);
    }

    #[test]
    fn median_of_odd_and_even_samples() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&mut []), None);
    }

    #[test]
    fn proc_stat_busy_time_excludes_idle_and_iowait() {
        let stat = "cpu  100 5 50 1000 30 7 8 2 0 0\ncpu0 50 2 25 500 15 3 4 1 0 0\n";
        assert_eq!(
            CpuTimes::parse(stat).unwrap().busy_ticks,
            100 + 5 + 50 + 7 + 8 + 2
        );
        assert!(CpuTimes::parse("cpu0 1 2 3\n").is_err());
        assert!(CpuTimes::parse("cpu  1 x 3 4 5 6 7 8\n").is_err());
    }

    #[test]
    fn this_machine_has_readable_cpu_counters() {
        let before = CpuTimes::read().unwrap();
        let after = CpuTimes::read().unwrap();
        assert!(after.busy_ticks >= before.busy_ticks);
    }
}
