//! What request/response traffic costs weftd in CPU: a UDP client in one pod, a server
//! in the other that answers after `--delay-us`, one request at a time with
//! `--think-us` between them, over a two-node weft-vxlan lab. Prints the median round
//! trip and weftd's CPU time per exchange (both nodes' daemons together), the figure
//! the adaptive reply wait (`daemon/src/dataplane/reply_wait.rs`) is about.
//!
//! ```text
//! cargo run --release -p weft-bench --example reply_wait_cpu -- --delay-us 1000
//! WEFT_BIN_DIR=/path/to/other/build ... # the same against another weftd
//! ```

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use weft_tests::lab::{Lab, LabSpec};
use weft_tests::netns::{spawn_in, spawn_udp_echo};

#[derive(Parser)]
struct Args {
    /// How long the server takes to answer, µs (0: at once).
    #[arg(long, default_value_t = 1000)]
    delay_us: u64,
    /// How long the client waits after an answer before the next request, µs.
    #[arg(long, default_value_t = 1000)]
    think_us: u64,
    #[arg(long, default_value_t = 2000)]
    exchanges: usize,
}

const PORT: u16 = 9000;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut lab = Lab::start(LabSpec {
        prefix: Some(format!("rw{}", std::process::id() % 100_000)),
        ..LabSpec::weft(2)
    })?;
    lab.add_pod(1, "pa")?;
    let server_ip = lab.add_pod(2, "pb")?;
    let daemons: Vec<u32> = (1..=2)
        .map(|n| lab.weftd_pid(n).map(|p| p.pid).context("weftd not running"))
        .collect::<anyhow::Result<_>>()?;

    let delay = Duration::from_micros(args.delay_us);
    let exchanges = args.exchanges;
    let server = spawn_udp_echo(&lab.pod("pb")?.netns, PORT, exchanges, delay)?;

    let cpu_before = cpu_seconds(&daemons)?;
    let think = Duration::from_micros(args.think_us);
    let started = Instant::now();
    let mut round_trips = spawn_in(&lab.pod("pa")?.netns.clone(), move || {
        let socket = UdpSocket::bind("0.0.0.0:0")?;
        socket.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut buf = [0u8; 64];
        let mut round_trips = Vec::with_capacity(exchanges);
        for n in 0..exchanges {
            let request = (n as u64).to_be_bytes();
            let sent = Instant::now();
            socket.send_to(&request, (server_ip, PORT))?;
            let len = socket
                .recv(&mut buf)
                .with_context(|| format!("no answer to request {n}"))?;
            round_trips.push(sent.elapsed());
            anyhow::ensure!(buf[..len] == request, "wrong answer to request {n}");
            std::thread::sleep(think);
        }
        Ok(round_trips)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("client panicked"))??;
    let wall = started.elapsed();
    let cpu = cpu_seconds(&daemons)? - cpu_before;
    server
        .join()
        .map_err(|_| anyhow::anyhow!("server panicked"))??;

    round_trips.sort();
    let median = round_trips[round_trips.len() / 2];
    println!(
        "{exchanges} exchanges, server delay {} µs, think {} µs: median rtt {} µs; \
         weftd CPU {:.3} s = {:.0} µs per exchange ({:.1}% of a CPU over {:.2} s)",
        args.delay_us,
        args.think_us,
        median.as_micros(),
        cpu,
        cpu * 1e6 / exchanges as f64,
        cpu * 100.0 / wall.as_secs_f64(),
        wall.as_secs_f64(),
    );
    Ok(())
}

/// User + system CPU time of the processes, all their threads, in seconds.
fn cpu_seconds(pids: &[u32]) -> anyhow::Result<f64> {
    pids.iter()
        .map(|&pid| {
            weft_tests::proc::cpu_time(pid)
                .map(|t| t.as_secs_f64())
                .with_context(|| format!("no process {pid}"))
        })
        .sum()
}
