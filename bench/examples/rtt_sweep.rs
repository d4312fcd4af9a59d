//! The round trip against how long the machine idles between pings: a kernel-vxlan and
//! a weft-vxlan lab side by side, pinged in turn at each interval. The bench's `rtt`
//! pings every 10 ms; on a VM that halts its idle vCPUs, everything runs slower after
//! 10 ms idle than after 1, and weft has more to run (docs/performance-notes.md, "Latency").
//!
//! ```text
//! cargo run --release -p weft-bench --example rtt_sweep -- --count 600
//! ```

use std::net::Ipv4Addr;

use anyhow::Context as _;
use clap::Parser;
use weft_tests::lab::{Lab, LabSpec};

#[derive(Parser)]
struct Args {
    /// Pings per interval and path.
    #[arg(long, default_value_t = 600)]
    count: u32,
    /// Intervals between pings, in ms.
    #[arg(long, value_delimiter = ',', default_value = "10,2,1,0.5")]
    intervals_ms: Vec<f64>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let run = std::process::id() % 10_000;
    let kernel = two_pods(LabSpec {
        prefix: Some(format!("sk{run}")),
        ..LabSpec::kernel(2)
    })?;
    let weft = two_pods(LabSpec {
        prefix: Some(format!("sw{run}")),
        ..LabSpec::weft(2)
    })?;
    println!(
        "interval  kernel-vxlan  weft-vxlan  gap  (median µs of {} pings)",
        args.count
    );
    for interval in &args.intervals_ms {
        // Kernel, weft, kernel: the kernel's own figure drifts within minutes.
        let k1 = median_rtt_us(&kernel, *interval, args.count)?;
        let w = median_rtt_us(&weft, *interval, args.count)?;
        let k2 = median_rtt_us(&kernel, *interval, args.count)?;
        let k = (k1 + k2) / 2.0;
        println!(
            "{interval:>6} ms  {k:>6.0} ({k1:.0}, {k2:.0})  {w:>6.0}  {:+.0}",
            w - k
        );
    }
    Ok(())
}

/// A two-node lab with a pod on each node.
fn two_pods(spec: LabSpec) -> anyhow::Result<(Lab, Ipv4Addr)> {
    let mut lab = Lab::start(spec)?;
    lab.add_pod(1, "pa").context("pod on node 1")?;
    let dst = lab.add_pod(2, "pb").context("pod on node 2")?;
    Ok((lab, dst))
}

fn median_rtt_us(
    (lab, dst): &(Lab, Ipv4Addr),
    interval_ms: f64,
    count: u32,
) -> anyhow::Result<f64> {
    let interval = format!("{}", interval_ms / 1000.0);
    let deadline = ((f64::from(count) * interval_ms / 1000.0) as u64 + 5).to_string();
    let out = lab.exec(
        "pa",
        &[
            "ping",
            "-n",
            "-i",
            &interval,
            "-W",
            "1",
            "-c",
            &count.to_string(),
            "-w",
            &deadline,
            &dst.to_string(),
        ],
    )?;
    let mut times: Vec<f64> = out
        .lines()
        .filter_map(|line| line.split_once(" time=")?.1.split_once(' ')?.0.parse().ok())
        .map(|ms: f64| ms * 1000.0)
        .collect();
    anyhow::ensure!(
        times.len() * 2 >= count as usize,
        "only {} of {count} pings answered",
        times.len()
    );
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}
