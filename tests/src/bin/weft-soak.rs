//! `weft-soak`: a long run of a two-node weft lab under steady disturbance, to find
//! leaks and resets that short tests cannot (issue 17, point 11). `scripts/soak.sh`
//! runs it; it is not part of CI or `scripts/test.sh`.
//!
//! For `--minutes` (default 10):
//! * one TCP connection from pod `a` (node 1) to pod `b` (node 2) carries a paced
//!   stream (`--rate`, default 1 MiB/s) whose bytes the receiver checks; the connection
//!   must never fail and data must keep arriving (no silence over `--max-stall`);
//! * fake peer leases appear and disappear in etcd a few times a second (`--churn`),
//!   drawn from a fixed pool of subnets and addresses nobody holds, so every weftd
//!   adds and removes routes and peers all the time;
//! * weftd on node 2 is stopped (SIGTERM) and started again every `--restart-every`
//!   seconds, while node 1's weftd runs throughout.
//!
//! At the end it prints, for both weftds, resident memory and open descriptors at the
//! start and the end, and the restarts, churn operations, bytes moved and longest stall.
//! It fails (exit 1) when the flow failed or stalled too long, or when node 1's RSS or
//! descriptor count ended more than 10% above its value after the warm-up (`--warmup`,
//! default 60 s). The warm-up excludes what a healthy daemon allocates once and keeps:
//! the allocator's per-thread arenas and the buffers of the workers that first carry
//! traffic, the peer table and route set at their steady size under churn, the etcd
//! client's and HTTP server's buffers after the first watch events and scrapes, and the
//! state after the first restart of its peer (its lease re-announced). What grows after
//! that grows with time, which is what a leak does.
//!
//! A lab left behind by an interrupted run is removed by `weft-lab down --prefix P`
//! (`soak.sh` does it on exit, whatever the cause).

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use weft_tests::etcd::Etcd;
use weft_tests::lab::kernel::{lease_key, FlannelLease};
use weft_tests::lab::{Lab, LabSpec, ETCD_PREFIX};
use weft_tests::netns::spawn_in;
use weft_tests::PseudoRandom;

#[derive(Debug, Parser)]
#[command(
    name = "weft-soak",
    about = "A long weft lab run under churn and restarts"
)]
struct Args {
    /// How long the soak runs, in minutes.
    #[arg(long, default_value_t = 10)]
    minutes: u64,
    /// The lab's name prefix (1-8 lowercase letters/digits); random if not given.
    #[arg(long)]
    prefix: Option<String>,
    /// Bytes per second of the TCP stream.
    #[arg(long, default_value_t = 1 << 20)]
    rate: u64,
    /// Lease churn: fake lease operations (put or delete) per second.
    #[arg(long, default_value_t = 4)]
    churn: u64,
    /// Seconds between restarts of node 2's weftd.
    #[arg(long, default_value_t = 60)]
    restart_every: u64,
    /// Seconds after which node 1's RSS and descriptors are taken as the baseline.
    #[arg(long, default_value_t = 60)]
    warmup: u64,
    /// The longest silence of the stream, in seconds, that is not a failure.
    #[arg(long, default_value_t = 30)]
    max_stall: u64,
    /// Extra weftd flags (repeatable), e.g. `--weftd-arg=--kernel-encap=false`.
    #[arg(long = "weftd-arg", allow_hyphen_values = true)]
    weftd_args: Vec<String>,
}

/// The long-running node and the restarted one.
const STEADY: usize = 1;
const RESTARTED: usize = 2;
/// The stream's port in pod `b`.
const PORT: u16 = 5400;
/// Bytes per write: a multiple of 8, so that the receiver can regenerate the stream
/// word by word (see [`PseudoRandom::fill`]).
const CHUNK: usize = 16 * 1024;
/// Fake peers: at most this many at once, from a pool of this many (subnet, address).
const FAKE_LIVE: usize = 8;
const FAKE_POOL: u8 = 32;
/// Growth of node 1's RSS or descriptors over its post-warm-up value that fails the run.
const GROWTH_LIMIT: f64 = 0.10;

fn main() -> ExitCode {
    let args = Args::parse();
    match soak(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("weft-soak: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Resident memory (KiB) and open descriptors of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Footprint {
    rss_kib: u64,
    fds: u64,
}

impl Footprint {
    fn of(pid: u32) -> anyhow::Result<Footprint> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("reading /proc/{pid}/status"))?;
        let rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no VmRSS in /proc/{pid}/status"))?;
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .with_context(|| format!("listing /proc/{pid}/fd"))?
            .count() as u64;
        Ok(Footprint { rss_kib, fds })
    }
}

impl std::fmt::Display for Footprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RSS {} KiB, {} fds", self.rss_kib, self.fds)
    }
}

/// What the stream's receiver saw, updated as it goes.
#[derive(Debug, Default)]
struct FlowProgress {
    received: AtomicU64,
    /// Longest silence between two reads with data so far, in ms.
    longest_stall_ms: AtomicU64,
    /// When the last data arrived, in ms since the soak began.
    last_data_ms: AtomicU64,
}

/// The stream: a paced sender in pod `a`, a checking receiver in pod `b`.
struct Flow {
    progress: Arc<FlowProgress>,
    stop: Arc<AtomicBool>,
    sender: JoinHandle<anyhow::Result<u64>>,
    receiver: JoinHandle<anyhow::Result<u64>>,
}

impl Flow {
    fn start(lab: &Lab, to: Ipv4Addr, rate: u64, epoch: Instant) -> anyhow::Result<Flow> {
        let progress = Arc::new(FlowProgress::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let receiver = {
            let progress = progress.clone();
            spawn_in(&lab.pod("b")?.netns, move || {
                let listener = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, PORT));
                let _ = bound_tx.send(listener.as_ref().map(|_| ()).map_err(|e| e.to_string()));
                let (stream, _) = listener?.accept()?;
                receive(stream, &progress, epoch)
            })
        };
        bound_rx
            .recv_timeout(Duration::from_secs(10))
            .context("the receiver did not start")?
            .map_err(|e| anyhow::anyhow!("the receiver cannot listen on {PORT}: {e}"))?;
        let sender = {
            let stop = stop.clone();
            spawn_in(&lab.pod("a")?.netns, move || {
                let stream = TcpStream::connect_timeout(
                    &SocketAddr::V4(SocketAddrV4::new(to, PORT)),
                    Duration::from_secs(5),
                )?;
                send(stream, rate, &stop)
            })
        };
        Ok(Flow {
            progress,
            stop,
            sender,
            receiver,
        })
    }

    /// Ends the stream; `Ok((sent, received))` when both ends finished without error.
    fn finish(self) -> anyhow::Result<(u64, u64)> {
        self.stop.store(true, Ordering::Relaxed);
        let sent = join(self.sender, "the sender")?;
        let received = join(self.receiver, "the receiver")?;
        Ok((sent, received))
    }
}

fn join<T>(handle: JoinHandle<anyhow::Result<T>>, what: &str) -> anyhow::Result<T> {
    handle
        .join()
        .map_err(|_| anyhow::anyhow!("{what} panicked"))?
        .with_context(|| what.to_owned())
}

/// A socket operation that makes no progress for this long fails the stream (TCP
/// keeps retrying on its own for far longer; a stall this long is a failure anyway).
const SOCKET_TIMEOUT: Duration = Duration::from_secs(120);

fn send(mut stream: TcpStream, rate: u64, stop: &AtomicBool) -> anyhow::Result<u64> {
    stream.set_write_timeout(Some(SOCKET_TIMEOUT))?;
    let mut data = PseudoRandom::default();
    let mut chunk = vec![0u8; CHUNK];
    let start = Instant::now();
    let mut sent = 0u64;
    while !stop.load(Ordering::Relaxed) {
        data.fill(&mut chunk);
        stream
            .write_all(&chunk)
            .with_context(|| format!("writing after {sent} bytes"))?;
        sent += CHUNK as u64;
        // Pacing (rate limiting, not synchronisation).
        let due = Duration::from_secs_f64(sent as f64 / rate as f64);
        if let Some(ahead) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(ahead);
        }
    }
    stream.shutdown(std::net::Shutdown::Write)?;
    // The receiver closes once it has read everything.
    stream.set_read_timeout(Some(SOCKET_TIMEOUT))?;
    let mut rest = [0u8; 1];
    let n = stream
        .read(&mut rest)
        .context("waiting for the receiver to close")?;
    anyhow::ensure!(n == 0, "the receiver sent data");
    Ok(sent)
}

fn receive(mut stream: TcpStream, progress: &FlowProgress, epoch: Instant) -> anyhow::Result<u64> {
    stream.set_read_timeout(Some(SOCKET_TIMEOUT))?;
    let mut buf = vec![0u8; 64 * 1024];
    // The expected stream, generated in whole words as the sender did.
    let mut expected = PseudoRandom::default();
    let mut want = vec![0u8; CHUNK];
    let mut want_at = CHUNK; // consumed bytes of `want`
    let mut received = 0u64;
    let mut last: Option<Instant> = None;
    loop {
        let n = stream
            .read(&mut buf)
            .with_context(|| format!("reading after {received} bytes"))?;
        if n == 0 {
            return Ok(received);
        }
        let now = Instant::now();
        if let Some(last) = last {
            let stall = (now - last).as_millis() as u64;
            progress
                .longest_stall_ms
                .fetch_max(stall, Ordering::Relaxed);
        }
        last = Some(now);
        let mut got = &buf[..n];
        while !got.is_empty() {
            if want_at == CHUNK {
                expected.fill(&mut want);
                want_at = 0;
            }
            let take = got.len().min(CHUNK - want_at);
            anyhow::ensure!(
                got[..take] == want[want_at..want_at + take],
                "the stream's bytes differ from what was sent, within bytes {}..{}",
                received,
                received + take as u64
            );
            want_at += take;
            received += take as u64;
            got = &got[take..];
        }
        progress.received.store(received, Ordering::Relaxed);
        progress
            .last_data_ms
            .store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// Fake peer leases coming and going in etcd: `put` a free one or `del` a live one,
/// `per_second` times a second, until `stop`. Returns the operations done.
fn churn(
    etcd: Etcd,
    held: Vec<u8>,
    per_second: u64,
    stop: Arc<AtomicBool>,
) -> JoinHandle<anyhow::Result<u64>> {
    std::thread::spawn(move || {
        // Subnets 10.244.200.0/24 and up that no node holds, at addresses nobody holds.
        let pool: Vec<(ipnet::Ipv4Net, Ipv4Addr)> = (0..FAKE_POOL)
            .map(|i| 200 + i)
            .filter(|octet| !held.contains(octet))
            .map(|octet| {
                let subnet =
                    ipnet::Ipv4Net::new(Ipv4Addr::new(10, 244, octet, 0), 24).expect("a /24");
                (subnet, Ipv4Addr::new(192, 0, 2, octet - 100))
            })
            .collect();
        let mut live: Vec<usize> = Vec::new();
        let mut operations = 0u64;
        let mut next = 0usize;
        let period = Duration::from_secs_f64(1.0 / per_second.max(1) as f64);
        let start = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            // Grow to FAKE_LIVE, then alternate: remove the oldest, add the next.
            if live.len() < FAKE_LIVE && (live.is_empty() || operations.is_multiple_of(2)) {
                next = (next + 1) % pool.len();
                if !live.contains(&next) {
                    let (subnet, ip) = pool[next];
                    let mac = format!("02:5e:00:00:00:{:02x}", subnet.network().octets()[2]);
                    etcd.put(
                        &lease_key(ETCD_PREFIX, subnet),
                        &FlannelLease::vxlan_value(ip, 1, &mac),
                    )?;
                    live.push(next);
                }
            } else {
                let oldest = live.remove(0);
                etcd.etcdctl(&["del", &lease_key(ETCD_PREFIX, pool[oldest].0)])?;
            }
            operations += 1;
            // Pacing, not synchronisation.
            let due = period * operations as u32;
            if let Some(ahead) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(ahead);
            }
        }
        for index in live {
            etcd.etcdctl(&["del", &lease_key(ETCD_PREFIX, pool[index].0)])?;
            operations += 1;
        }
        Ok(operations)
    })
}

fn footprint(lab: &Lab, n: usize) -> anyhow::Result<Footprint> {
    let pid = lab
        .weftd_pid(n)
        .with_context(|| format!("weftd on node {n} is not running"))?
        .pid;
    Footprint::of(pid)
}

fn soak(args: &Args) -> anyhow::Result<bool> {
    anyhow::ensure!(args.minutes > 0, "--minutes must be at least 1");
    anyhow::ensure!(
        args.warmup < args.minutes * 60,
        "--warmup ({} s) must end before the soak does ({} min)",
        args.warmup,
        args.minutes
    );
    anyhow::ensure!(args.rate > 0, "--rate must be positive");
    let duration = Duration::from_secs(args.minutes * 60);
    let mut lab = Lab::start(LabSpec {
        prefix: args.prefix.clone(),
        weftd_args: args.weftd_args.clone(),
        ..LabSpec::weft(2)
    })?;
    println!(
        "lab {} up: weftd on node {STEADY} runs throughout, node {RESTARTED}'s restarts every {} s",
        lab.prefix(),
        args.restart_every
    );
    lab.add_pod(STEADY, "a")?;
    let b = lab.add_pod(RESTARTED, "b")?;
    weft_tests::wait_until("pod a to reach pod b", Duration::from_secs(20), || {
        lab.ping("a", b)
    })?;

    let epoch = Instant::now();
    let steady_start = footprint(&lab, STEADY)?;
    let restarted_start = footprint(&lab, RESTARTED)?;
    let flow = Flow::start(&lab, b, args.rate, epoch)?;
    let stop_churn = Arc::new(AtomicBool::new(false));
    let held: Vec<u8> = [STEADY, RESTARTED]
        .iter()
        .map(|n| Ok(lab.node_subnet(*n)?.0.network().octets()[2]))
        .collect::<anyhow::Result<_>>()?;
    let info = lab.state().clone();
    let churner = churn(
        Etcd::existing(
            &info.underlay_ns,
            &weft_tests::lab::ETCD_IP.to_string(),
            2379,
            &info.dir.join("etcd"),
        ),
        held,
        args.churn,
        stop_churn.clone(),
    );

    let failures: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut restarts = 0u64;
    let mut steady_warm: Option<Footprint> = None;
    let mut next_restart = Duration::from_secs(args.restart_every);
    let mut next_report = Duration::from_secs(60);
    let tick = Duration::from_millis(500);
    while epoch.elapsed() < duration {
        // The loop's tick: restarts and reports are due at whole times.
        std::thread::sleep(tick);
        let now = epoch.elapsed();
        if steady_warm.is_none() && now >= Duration::from_secs(args.warmup) {
            let warm = footprint(&lab, STEADY)?;
            println!(
                "[{:>4}s] after the warm-up, node {STEADY}: {warm}",
                now.as_secs()
            );
            steady_warm = Some(warm);
        }
        if now >= next_restart && now + Duration::from_secs(5) < duration {
            next_restart += Duration::from_secs(args.restart_every);
            let began = Instant::now();
            let old_pid = lab.weftd_pid(RESTARTED).map_or(0, |p| p.pid);
            lab.stop_weftd(RESTARTED)?;
            lab.start_weftd(RESTARTED)?;
            lab.wait_weftd_ready(RESTARTED)?;
            restarts += 1;
            println!(
                "[{:>4}s] weftd on node {RESTARTED} restarted (#{restarts}, pid {old_pid} -> {}, ready after {:.1} s)",
                now.as_secs(),
                lab.weftd_pid(RESTARTED).map_or(0, |p| p.pid),
                began.elapsed().as_secs_f64()
            );
        }
        let stall_now = now.as_millis().saturating_sub(u128::from(
            flow.progress.last_data_ms.load(Ordering::Relaxed),
        ));
        if stall_now > u128::from(args.max_stall) * 1000 {
            failures.lock().expect("lock").push(format!(
                "the stream stalled for {:.1} s (limit {} s)",
                stall_now as f64 / 1000.0,
                args.max_stall
            ));
            break;
        }
        if flow.sender.is_finished() || flow.receiver.is_finished() {
            failures
                .lock()
                .expect("lock")
                .push("the stream ended early".to_owned());
            break;
        }
        if now >= next_report {
            next_report += Duration::from_secs(60);
            println!(
                "[{:>4}s] {} MiB received, longest stall {:.2} s; node {STEADY}: {}; node {RESTARTED}: {}",
                now.as_secs(),
                flow.progress.received.load(Ordering::Relaxed) >> 20,
                flow.progress.longest_stall_ms.load(Ordering::Relaxed) as f64 / 1000.0,
                footprint(&lab, STEADY)?,
                footprint(&lab, RESTARTED)?,
            );
        }
    }

    let steady_end = footprint(&lab, STEADY)?;
    let restarted_end = footprint(&lab, RESTARTED)?;
    stop_churn.store(true, Ordering::Relaxed);
    let churn_ops = match join(churner, "the lease churn") {
        Ok(n) => n,
        Err(error) => {
            failures.lock().expect("lock").push(format!("{error:#}"));
            0
        }
    };
    let longest_stall = flow.progress.longest_stall_ms.load(Ordering::Relaxed);
    let (sent, received) = match flow.finish() {
        Ok(counts) => counts,
        Err(error) => {
            failures
                .lock()
                .expect("lock")
                .push(format!("the TCP stream failed: {error:#}"));
            (0, 0)
        }
    };
    if sent != received {
        failures
            .lock()
            .expect("lock")
            .push(format!("{sent} bytes sent but {received} received"));
    }
    let steady_pid_ok = lab.weftd_pid(STEADY).is_some();

    println!("== soak of {} min on lab {}", args.minutes, lab.prefix());
    println!(
        "node {STEADY} (long-running): start {steady_start}; after warm-up {}; end {steady_end}",
        steady_warm.map_or("-".to_owned(), |w| w.to_string())
    );
    println!(
        "node {RESTARTED} (restarted {restarts}x): first process at start {restarted_start}; last process at end {restarted_end}"
    );
    println!(
        "stream: {sent} bytes sent, {received} received ({:.1} MiB), longest stall {:.2} s",
        received as f64 / f64::from(1u32 << 20),
        longest_stall as f64 / 1000.0
    );
    println!(
        "lease churn: {churn_ops} operations ({} per second)",
        args.churn
    );

    let mut failures = failures.lock().expect("lock").clone();
    if !steady_pid_ok {
        failures.push(format!("weftd on node {STEADY} died"));
    }
    if let Some(warm) = steady_warm {
        for (what, from, to) in [
            ("RSS (KiB)", warm.rss_kib, steady_end.rss_kib),
            ("open descriptors", warm.fds, steady_end.fds),
        ] {
            if to as f64 > from as f64 * (1.0 + GROWTH_LIMIT) {
                failures.push(format!(
                    "node {STEADY}'s {what} grew from {from} after the warm-up to {to} (limit +{:.0}%)",
                    GROWTH_LIMIT * 100.0
                ));
            }
        }
    }
    let ok = failures.is_empty();
    for failure in &failures {
        println!("FAIL: {failure}");
    }
    println!("{}", if ok { "soak passed" } else { "soak FAILED" });
    lab.down()?;
    Ok(ok)
}
