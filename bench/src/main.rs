//! `weft-bench`: weft vs the kernel's vxlan vs no encapsulation, side by side, in one
//! run on one machine (docs/bench.md).
//!
//! For each underlay mode, and in it for each path, it builds the two-node lab on that
//! underlay, checks the pods reach each other and runs every test; the round trips come
//! at the end of each mode, its labs still up, and the labs are torn down before the
//! next mode. A path that cannot be built is recorded as failed for all its tests and
//! the run goes on; the exit status is non-zero if anything failed.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use clap::Parser;

mod iperf;
mod measure;
mod results;
mod svg;
mod topology;

use measure::Pair;
use results::{Path, Results, Run, Test};
use topology::PathLab;
use weft_tests::lab::underlay::UnderlayMode;

/// Benchmarks pod-to-pod traffic over veth, host-gw, the kernel's vxlan and weft.
#[derive(Debug, Parser)]
#[command(name = "weft-bench", version)]
struct Cli {
    /// Duration of each iperf3 test (and of the ping series), in seconds.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=300))]
    seconds: u64,
    /// Paths to measure (comma-separated), in this order; `weft-vxlan-tc` and
    /// `weft-vxlan-userspace` only when named.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = Path::DEFAULT)]
    paths: Vec<Path>,
    /// Underlay modes (comma-separated), each path measured on each, in this order.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = UnderlayMode::ALL)]
    underlay: Vec<UnderlayMode>,
    /// Tests to run (comma-separated); `tcp-1` also yields `cpu`.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = Measurement::ALL)]
    tests: Vec<Measurement>,
    /// Rounds of every test; each figure is their median, with the range beside it.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    rounds: u32,
    /// Where results.json, results.md and results.svg are written.
    #[arg(long, default_value = "target/bench")]
    out_dir: PathBuf,
}

/// One timed run; `tcp-1` also measures the CPU spent, which gives the `cpu` result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Measurement {
    #[value(name = "tcp-1")]
    Tcp1,
    #[value(name = "tcp-4")]
    Tcp4,
    #[value(name = "tcp-1-rev")]
    Tcp1Rev,
    #[value(name = "udp64")]
    Udp64,
    #[value(name = "rtt")]
    Rtt,
}

impl Measurement {
    const ALL: [Measurement; 5] = [
        Measurement::Tcp1,
        Measurement::Tcp4,
        Measurement::Tcp1Rev,
        Measurement::Udp64,
        Measurement::Rtt,
    ];

    /// The results this run produces.
    fn tests(self) -> &'static [Test] {
        match self {
            Measurement::Tcp1 => &[Test::Tcp1, Test::Cpu],
            Measurement::Tcp4 => &[Test::Tcp4],
            Measurement::Tcp1Rev => &[Test::Tcp1Rev],
            Measurement::Udp64 => &[Test::Udp64],
            Measurement::Rtt => &[Test::Rtt],
        }
    }

    fn name(self) -> &'static str {
        self.tests()[0].name()
    }
}

/// How long a freshly built path may take until the pods reach each other (weftd has
/// to lease, learn its peer and program routes).
const REACHABLE_TIMEOUT: Duration = Duration::from_secs(30);

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(results) if results.any_failed() => {
            eprintln!("weft-bench: some runs failed (see the table)");
            ExitCode::from(1)
        }
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft-bench: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// `items` without repeats, first occurrence kept (`--paths veth,veth` measures once).
fn dedup<T: PartialEq + Copy>(items: &[T]) -> Vec<T> {
    let mut out: Vec<T> = Vec::with_capacity(items.len());
    for &item in items {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}

fn run(cli: &Cli) -> anyhow::Result<Results> {
    let paths = dedup(&cli.paths);
    let tests = dedup(&cli.tests);
    let modes = dedup(&cli.underlay);
    anyhow::ensure!(
        weft_tests::is_root(),
        "must run as root (it creates network namespaces)"
    );
    for tool in ["iperf3", "ping", "ss", "ip", "bridge", "ethtool"] {
        which(tool).with_context(|| format!("{tool} not found in PATH; run scripts/setup.sh"))?;
    }
    std::fs::create_dir_all(&cli.out_dir)
        .with_context(|| format!("creating {}", cli.out_dir.display()))?;

    let clock = std::time::Instant::now();
    let mut results = Results {
        started: results::rfc3339_utc(SystemTime::now()),
        seconds: cli.seconds,
        rounds: cli.rounds,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into()),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        weftd_env: weftd_env(),
        runs: Vec::new(),
    };
    let mut progress = Progress {
        done: 0,
        total: modes.len() * paths.len() * tests.len(),
    };
    let names: Vec<&str> = modes.iter().map(|m| m.name()).collect();
    println!(
        "weft-bench: {} underlays ({}) × {} paths × {} tests, {} s each, median of {} round(s)",
        modes.len(),
        names.join(", "),
        paths.len(),
        tests.len(),
        cli.seconds,
        cli.rounds
    );
    for &mode in &modes {
        measure_mode(cli, mode, &paths, &tests, &mut progress, &mut results);
    }

    results.runs.sort_by_key(|r| {
        let mode = UnderlayMode::ALL
            .iter()
            .position(|m| m.name() == r.underlay);
        let path = Path::ALL.iter().position(|p| p.name() == r.path);
        let test = Test::ALL.iter().position(|t| t.name() == r.test);
        (mode, path, test)
    });
    let json_path = cli.out_dir.join("results.json");
    let json = serde_json::to_string_pretty(&results)?;
    std::fs::write(&json_path, json + "\n")
        .with_context(|| format!("writing {}", json_path.display()))?;
    let table = results.table();
    let md_path = cli.out_dir.join("results.md");
    std::fs::write(
        &md_path,
        format!("weft-bench {}\n\n{table}", results.describe()),
    )
    .with_context(|| format!("writing {}", md_path.display()))?;
    let svg_path = cli.out_dir.join("results.svg");
    std::fs::write(&svg_path, svg::render(&results))
        .with_context(|| format!("writing {}", svg_path.display()))?;

    println!();
    println!("weft-bench {}", results.describe());
    println!();
    print!("{table}");
    println!(
        "wrote {}, {} and {} ({} s in all)",
        json_path.display(),
        md_path.display(),
        svg_path.display(),
        clock.elapsed().as_secs()
    );
    Ok(results)
}

/// The `[done/total]` count of the progress lines.
struct Progress {
    done: usize,
    total: usize,
}

impl Progress {
    fn next(&mut self, mode: UnderlayMode, path: Path, test: &str) -> String {
        self.done += 1;
        format!(
            "[{}/{}] {} {} {test} ... ",
            self.done,
            self.total,
            mode.name(),
            path.name()
        )
    }
}

/// Every path and test on one underlay `mode`; the results go to `results`.
fn measure_mode(
    cli: &Cli,
    mode: UnderlayMode,
    paths: &[Path],
    tests: &[Measurement],
    progress: &mut Progress,
    results: &mut Results,
) {
    // Labs kept up for the round trip, measured at the end of the mode.
    let mut kept: Vec<(Path, PathLab)> = Vec::new();
    for &path in paths {
        let prefix = weft_tests::run_prefix();
        print!(
            "== {} {}: building the lab ({prefix}-*) ... ",
            mode.name(),
            path.name()
        );
        flush();
        let lab = PathLab::build(path, mode, &prefix).and_then(|lab| {
            let pair = pair_of(&lab);
            weft_tests::wait_until("the pods to reach each other", REACHABLE_TIMEOUT, || {
                measure::reachable(pair)
            })?;
            Ok(lab)
        });
        let lab = match lab {
            Ok(lab) => {
                match lab.about() {
                    Some(about) => println!("ready; {about}"),
                    None => println!("ready"),
                }
                lab
            }
            Err(e) => {
                let error = format!("lab setup: {e:#}");
                println!("FAILED: {error}");
                for &m in tests {
                    println!("{}skipped", progress.next(mode, path, m.name()));
                    for &test in m.tests() {
                        results
                            .runs
                            .push(Run::failed(path, test, error.clone()).on(mode));
                    }
                }
                continue;
            }
        };
        let stamp = |run: Run| Run {
            about: lab.about().map(String::from),
            ..run.on(mode)
        };
        let first = results.runs.len();
        for &m in tests.iter().filter(|&&m| m != Measurement::Rtt) {
            print!("{}", progress.next(mode, path, m.name()));
            flush();
            let runs = measure_rounds(pair_of(&lab), path, m, cli.seconds, cli.rounds);
            let shown: Vec<String> = runs.iter().map(progress_text).collect();
            println!("{}", shown.join(", "));
            results.runs.extend(runs.into_iter().map(stamp));
        }
        match lab.redirected() {
            Ok(Some(frames)) => {
                println!(
                    "   {} {}: {frames} frames redirected by XDP past the underlay bridge",
                    mode.name(),
                    path.name()
                );
                for run in &mut results.runs[first..] {
                    run.xdp_redirected = Some(frames);
                }
            }
            Ok(None) => {}
            Err(e) => println!(
                "   {} {}: XDP counters unreadable: {e:#}",
                mode.name(),
                path.name()
            ),
        }
        if tests.contains(&Measurement::Rtt) {
            kept.push((path, lab));
        }
    }

    // The round trip last, every path's lab still up, the paths taking turns: this VM's
    // latency drifts over minutes, which paths measured minutes apart would compare.
    if kept.is_empty() {
        return;
    }
    println!(
        "== {} rtt: {} pings per path, the paths taking turns of {}",
        mode.name(),
        rtt_count(cli.seconds),
        measure::RTT_TURN
    );
    let pairs: Vec<Pair<'_>> = kept.iter().map(|(_, lab)| pair_of(lab)).collect();
    // Per path: every round's median, or the first round's error.
    let mut rounds: Vec<anyhow::Result<Vec<f64>>> = kept.iter().map(|_| Ok(vec![])).collect();
    for round in 1..=cli.rounds {
        let medians = measure::rtt_medians_interleaved(&pairs, rtt_count(cli.seconds));
        for (samples, median) in rounds.iter_mut().zip(medians) {
            if let Ok(values) = samples {
                match median {
                    Ok(us) => values.push(us),
                    Err(e) => *samples = Err(e.context(format!("round {round}"))),
                }
            }
        }
    }
    for ((path, lab), samples) in kept.iter().zip(rounds) {
        let line = progress.next(mode, *path, Test::Rtt.name());
        let run = match samples {
            Ok(samples) => Run::from_samples(*path, Test::Rtt, samples),
            Err(e) => Run::failed(*path, Test::Rtt, format!("{e:#}")),
        };
        println!("{line}{}", progress_text(&run));
        results.runs.push(Run {
            about: lab.about().map(String::from),
            ..run.on(mode)
        });
    }
}

/// A run's result on its progress line: `12.4 Gbit/s`, `12.4 Gbit/s (9.80–13.1)` for
/// several rounds, or `FAILED: why`.
fn progress_text(run: &Run) -> String {
    match (&run.value, &run.error) {
        (Some(v), _) => match (run.min, run.max) {
            (Some(min), Some(max)) => format!(
                "{} {} ({}–{})",
                results::format_value(*v),
                run.unit,
                results::format_value(min),
                results::format_value(max)
            ),
            _ => format!("{} {}", results::format_value(*v), run.unit),
        },
        (None, Some(e)) => format!("FAILED: {e}"),
        (None, None) => "no value".into(),
    }
}

/// The `WEFTD_*` variables of our environment (docs/weftd.md: every flag is also
/// `WEFTD_<NAME>`), which every weftd of the lab inherits.
fn weftd_env() -> Vec<String> {
    let mut vars: Vec<String> = std::env::vars()
        .filter(|(name, _)| name.starts_with("WEFTD_"))
        .map(|(name, value)| format!("{name}={value}"))
        .collect();
    vars.sort();
    vars
}

/// Pings per path for a test of `seconds`: 100 a second, 10 ms apart.
fn rtt_count(seconds: u64) -> u32 {
    u32::try_from(seconds * 100).unwrap_or(u32::MAX).min(3_000)
}

fn pair_of(lab: &PathLab) -> Pair<'_> {
    Pair {
        src: lab.src(),
        dst: lab.dst(),
        dst_ip: lab.dst_ip(),
    }
}

/// Runs one measurement `rounds` times; every test it stands for gets the median of
/// its rounds, or the error of the first round that failed.
fn measure_rounds(
    pair: Pair<'_>,
    path: Path,
    m: Measurement,
    seconds: u64,
    rounds: u32,
) -> Vec<Run> {
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); m.tests().len()];
    for round in 1..=rounds {
        let runs = measure_one(pair, path, m, seconds);
        if let Some(failed) = runs.iter().find(|r| r.error.is_some()) {
            let error = failed.error.clone().unwrap_or_default();
            let error = if rounds > 1 {
                format!("round {round}: {error}")
            } else {
                error
            };
            return m
                .tests()
                .iter()
                .map(|&test| Run::failed(path, test, error.clone()))
                .collect();
        }
        for (values, run) in samples.iter_mut().zip(runs) {
            values.extend(run.value);
        }
    }
    m.tests()
        .iter()
        .zip(samples)
        .map(|(&test, values)| Run::from_samples(path, test, values))
        .collect()
}

/// Runs one measurement; every test it stands for gets a value or an error.
fn measure_one(pair: Pair<'_>, path: Path, m: Measurement, seconds: u64) -> Vec<Run> {
    let values: anyhow::Result<Vec<f64>> = (|| {
        Ok(match m {
            Measurement::Tcp1 => {
                let run = measure::iperf(pair, seconds, &[])?;
                let gbits = run.report.tcp_gbits()?;
                let gigabytes = run.report.received()?.bytes as f64 / 1e9;
                vec![gbits, run.cpu_seconds / gigabytes]
            }
            Measurement::Tcp4 => {
                vec![measure::iperf(pair, seconds, &["-P", "4"])?
                    .report
                    .tcp_gbits()?]
            }
            Measurement::Tcp1Rev => {
                vec![measure::iperf(pair, seconds, &["-R"])?.report.tcp_gbits()?]
            }
            Measurement::Udp64 => {
                let args = ["-u", "-l", "64", "-b", "0"];
                vec![measure::iperf(pair, seconds, &args)?
                    .report
                    .udp_kpps_delivered()?]
            }
            Measurement::Rtt => {
                let mut medians = measure::rtt_medians_interleaved(&[pair], rtt_count(seconds));
                vec![medians.pop().context("no rtt measured")??]
            }
        })
    })();
    match values {
        Ok(values) => m
            .tests()
            .iter()
            .zip(values)
            .map(|(&test, value)| Run::ok(path, test, value))
            .collect(),
        Err(e) => m
            .tests()
            .iter()
            .map(|&test| Run::failed(path, test, format!("{e:#}")))
            .collect(),
    }
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| PathBuf::from(dir).join(tool))
        .find(|p| p.is_file())
}

fn flush() {
    let _ = std::io::stdout().flush();
}
