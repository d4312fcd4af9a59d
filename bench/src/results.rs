//! What a benchmark run produced: the paths and tests, the results document
//! (`target/bench/results.json`, docs/bench.md) and the table printed on stdout.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use weft_tests::lab::underlay::UnderlayMode;

/// A way for a packet to get from one pod to the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Path {
    /// Two namespaces joined directly by a veth pair: the physical limit.
    Veth,
    /// pod → cni0 → route via the peer's underlay address → cni0 → pod.
    HostGw,
    /// The kernel's vxlan device programmed like flanneld.
    KernelVxlan,
    /// weftd, userspace VXLAN.
    WeftVxlan,
    /// weftd, userspace IPIP.
    WeftIpip,
    /// A kernel-flannel node's pod to a weftd node's pod (VXLAN).
    KernelToWeft,
    /// A weftd node's pod to a kernel-flannel node's pod (VXLAN).
    WeftToKernel,
    /// weftd, VXLAN, its tc program attached through `clsact` + `cls_bpf`
    /// (`WEFTD_TC_ATTACH=tc`).
    WeftVxlanTc,
    /// weftd, VXLAN, userspace UDP GSO only (`WEFTD_TC_ATTACH=off`,
    /// `WEFTD_KERNEL_ENCAP=false`).
    WeftVxlanUserspace,
}

impl Path {
    /// Every path, in the order of the table.
    pub const ALL: [Path; 9] = [
        Path::Veth,
        Path::HostGw,
        Path::KernelVxlan,
        Path::WeftVxlan,
        Path::WeftIpip,
        Path::KernelToWeft,
        Path::WeftToKernel,
        Path::WeftVxlanTc,
        Path::WeftVxlanUserspace,
    ];

    /// What a run measures unless told otherwise (the attach variants are asked for
    /// by name).
    pub const DEFAULT: [Path; 7] = [
        Path::Veth,
        Path::HostGw,
        Path::KernelVxlan,
        Path::WeftVxlan,
        Path::WeftIpip,
        Path::KernelToWeft,
        Path::WeftToKernel,
    ];

    /// The name used in the table, the JSON and the chart.
    pub fn name(self) -> &'static str {
        match self {
            Path::Veth => "veth",
            Path::HostGw => "host-gw",
            Path::KernelVxlan => "kernel-vxlan",
            Path::WeftVxlan => "weft-vxlan",
            Path::WeftIpip => "weft-ipip",
            Path::KernelToWeft => "kernel-to-weft",
            Path::WeftToKernel => "weft-to-kernel",
            Path::WeftVxlanTc => "weft-vxlan-tc",
            Path::WeftVxlanUserspace => "weft-vxlan-userspace",
        }
    }

    /// Paths with weft on at least one end are the ones compared against the kernel
    /// anchor.
    pub fn is_weft(self) -> bool {
        !matches!(self, Path::Veth | Path::HostGw | Path::KernelVxlan)
    }
}

/// The anchor every weft path is compared with.
pub const ANCHOR: Path = Path::KernelVxlan;

/// One measured quantity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Test {
    Tcp1,
    Tcp4,
    Tcp1Rev,
    Udp64,
    Rtt,
    /// Derived from the `tcp-1` run: whole-machine CPU time per GB moved.
    Cpu,
}

impl Test {
    pub const ALL: [Test; 6] = [
        Test::Tcp1,
        Test::Tcp4,
        Test::Tcp1Rev,
        Test::Udp64,
        Test::Rtt,
        Test::Cpu,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Test::Tcp1 => "tcp-1",
            Test::Tcp4 => "tcp-4",
            Test::Tcp1Rev => "tcp-1-rev",
            Test::Udp64 => "udp64",
            Test::Rtt => "rtt",
            Test::Cpu => "cpu",
        }
    }

    pub fn unit(self) -> &'static str {
        match self {
            Test::Tcp1 | Test::Tcp4 | Test::Tcp1Rev => "Gbit/s",
            Test::Udp64 => "kpps",
            Test::Rtt => "µs",
            Test::Cpu => "CPU-s/GB",
        }
    }

    pub fn higher_is_better(self) -> bool {
        !matches!(self, Test::Rtt | Test::Cpu)
    }

    /// A one-line description for the chart.
    pub fn describe(self) -> &'static str {
        match self {
            Test::Tcp1 => "TCP, one stream",
            Test::Tcp4 => "TCP, four streams",
            Test::Tcp1Rev => "TCP, one stream, reverse",
            Test::Udp64 => "64-byte UDP delivered",
            Test::Rtt => "round trip, median",
            Test::Cpu => "CPU time per GB (tcp-1)",
        }
    }
}

/// The underlay the labs' nodes are joined by, when a results file does not say:
/// `whole`, a veth pair as it is (files written before the modes existed).
pub const UNDERLAY_WHOLE: &str = "whole";

/// One (path, test) result: a value, or the reason there is none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    pub path: String,
    pub test: String,
    /// The median of the rounds' samples.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    pub unit: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Every round's value, in the order measured (absent with one round).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub samples: Vec<f64>,
    /// The smallest and largest sample (absent with one round).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// How the underlay carried the packets ([`UnderlayMode`]'s name).
    #[serde(default = "whole")]
    pub underlay: String,
    /// What the lab ran on, when there is something to say (weftd's transmit path and
    /// offloads, from its `/v1/status`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub about: Option<String>,
    /// On the `nic` underlays: frames the underlay's XDP programs redirected past the
    /// bridge while the lab was measured, up to the end of its throughput tests (the
    /// proof that the tunnel traffic took the NIC-like path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xdp_redirected: Option<u64>,
}

fn whole() -> String {
    UNDERLAY_WHOLE.into()
}

/// The median of `samples` (the mean of the middle two for an even count); `None` when
/// there are none.
pub fn median(samples: &[f64]) -> Option<f64> {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

impl Run {
    /// A result with neither value nor error yet, on the whole underlay.
    fn empty(path: Path, test: Test) -> Run {
        Run {
            path: path.name().into(),
            test: test.name().into(),
            value: None,
            unit: test.unit().into(),
            error: None,
            samples: Vec::new(),
            min: None,
            max: None,
            underlay: whole(),
            about: None,
            xdp_redirected: None,
        }
    }

    /// This run, measured on `underlay`.
    pub fn on(self, underlay: UnderlayMode) -> Run {
        Run {
            underlay: underlay.name().into(),
            ..self
        }
    }

    pub fn ok(path: Path, test: Test, value: f64) -> Run {
        Run {
            value: Some(value),
            ..Run::empty(path, test)
        }
    }

    /// The result of several rounds: their median, with the samples and their range
    /// when there is more than one.
    pub fn from_samples(path: Path, test: Test, samples: Vec<f64>) -> Run {
        let Some(value) = median(&samples) else {
            return Run::failed(path, test, "no round measured");
        };
        let mut run = Run::ok(path, test, value);
        if samples.len() > 1 {
            run.min = samples.iter().copied().reduce(f64::min);
            run.max = samples.iter().copied().reduce(f64::max);
            run.samples = samples;
        }
        run
    }

    pub fn failed(path: Path, test: Test, error: impl Into<String>) -> Run {
        Run {
            error: Some(error.into()),
            ..Run::empty(path, test)
        }
    }
}

fn one_round() -> u32 {
    1
}

/// The whole document written to `target/bench/results.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Results {
    /// RFC 3339, UTC, seconds precision.
    pub started: String,
    /// Duration of each iperf3 test.
    pub seconds: u64,
    /// Rounds of every test; each value is their median.
    #[serde(default = "one_round")]
    pub rounds: u32,
    /// `uname -r`.
    pub kernel: String,
    pub cpus: usize,
    /// `WEFTD_*` settings the weftd under test inherited (e.g. `WEFTD_BUSY_POLL=20ms`):
    /// a run with them is not a run with the defaults, and says so.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub weftd_env: Vec<String>,
    pub runs: Vec<Run>,
}

fn rounds_text(rounds: u32) -> String {
    match rounds {
        1 => "1 round".into(),
        n => format!("{n} rounds"),
    }
}

impl Results {
    /// The run's one-line description: when, how long, where, and any weftd settings.
    pub fn describe(&self) -> String {
        let mut line = format!(
            "{} · {} s per test · median of {} · kernel {} · {} CPUs",
            self.started,
            self.seconds,
            rounds_text(self.rounds),
            self.kernel,
            self.cpus
        );
        if !self.weftd_env.is_empty() {
            let _ = write!(line, " · weftd with {}", self.weftd_env.join(" "));
        }
        line
    }

    pub fn value(&self, path: Path, test: Test, underlay: UnderlayMode) -> Option<f64> {
        self.find(path, test, underlay).and_then(|r| r.value)
    }

    pub fn find(&self, path: Path, test: Test, underlay: UnderlayMode) -> Option<&Run> {
        self.runs.iter().find(|r| {
            r.path == path.name() && r.test == test.name() && r.underlay == underlay.name()
        })
    }

    /// `path`'s value divided by the anchor's on the same underlay, both from this run.
    pub fn ratio_to_anchor(&self, path: Path, test: Test, underlay: UnderlayMode) -> Option<f64> {
        let value = self.value(path, test, underlay)?;
        let anchor = self.value(ANCHOR, test, underlay)?;
        (anchor > 0.0).then(|| value / anchor)
    }

    /// Underlay modes that appear in the runs, in the canonical order.
    pub fn underlays(&self) -> Vec<UnderlayMode> {
        UnderlayMode::ALL
            .into_iter()
            .filter(|m| self.runs.iter().any(|r| r.underlay == m.name()))
            .collect()
    }

    /// The lab descriptions (`about`) of the runs, one line per (underlay, path) that
    /// has one.
    pub fn abouts(&self) -> Vec<(String, String, String)> {
        let mut seen: Vec<(String, String, String)> = Vec::new();
        for run in &self.runs {
            if let Some(about) = &run.about {
                let key = (run.underlay.clone(), run.path.clone(), about.clone());
                if !seen.contains(&key) {
                    seen.push(key);
                }
            }
        }
        seen
    }

    pub fn any_failed(&self) -> bool {
        self.runs.iter().any(|r| r.error.is_some())
    }

    /// Paths that appear in the runs, in the canonical order.
    pub fn paths(&self) -> Vec<Path> {
        Path::ALL
            .into_iter()
            .filter(|p| self.runs.iter().any(|r| r.path == p.name()))
            .collect()
    }

    /// Tests that appear in the runs, in the canonical order.
    pub fn tests(&self) -> Vec<Test> {
        Test::ALL
            .into_iter()
            .filter(|t| self.runs.iter().any(|r| r.test == t.name()))
            .collect()
    }

    /// The table printed at the end and written to `results.md`, in Markdown: one row
    /// per (path, test), one column per underlay mode, each cell the median, each weft
    /// path's ratio to the anchor on the same underlay, and the rounds' range; then the
    /// labs' descriptions and one line per distinct failure.
    pub fn table(&self) -> String {
        let underlays = self.underlays();
        let mut rows: Vec<Vec<String>> = Vec::new();
        let mut header = vec!["path".to_string(), "test".to_string(), "unit".to_string()];
        header.extend(underlays.iter().map(|m| m.name().to_string()));
        rows.push(header);
        for path in self.paths() {
            for test in self.tests() {
                let mut row = vec![
                    path.name().to_string(),
                    test.name().to_string(),
                    test.unit().to_string(),
                ];
                let mut any = false;
                for &underlay in &underlays {
                    let cell = match self.find(path, test, underlay) {
                        Some(run) => {
                            any = true;
                            self.cell(path, test, underlay, run)
                        }
                        None => "-".to_string(),
                    };
                    row.push(cell);
                }
                if any {
                    rows.push(row);
                }
            }
        }

        let columns = rows[0].len();
        let widths: Vec<usize> = (0..columns)
            .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
            .collect();
        let mut out = String::new();
        for (i, row) in rows.iter().enumerate() {
            out.push('|');
            for (c, cell) in row.iter().enumerate() {
                let pad = " ".repeat(widths[c] - cell.chars().count());
                if c < 3 {
                    let _ = write!(out, " {cell}{pad} |");
                } else {
                    let _ = write!(out, " {pad}{cell} |");
                }
            }
            out.push('\n');
            if i == 0 {
                out.push('|');
                for (c, width) in widths.iter().enumerate() {
                    let dashes = "-".repeat((*width).max(3));
                    if c < 3 {
                        let _ = write!(out, " {dashes} |");
                    } else {
                        let _ = write!(out, " {}: |", &dashes[1..]);
                    }
                }
                out.push('\n');
            }
        }
        let _ = writeln!(
            out,
            "\n(×) = weft path ÷ {} on the same underlay in this run; for rtt and cpu lower is better; a–b = the rounds' range.",
            ANCHOR.name()
        );
        for (underlay, path, about) in self.abouts() {
            let _ = writeln!(out, "{underlay} {path}: {about}");
        }
        let mut reported: Vec<(&str, &str, &str)> = Vec::new();
        for run in &self.runs {
            if let Some(error) = &run.error {
                let key = (run.underlay.as_str(), run.path.as_str(), error.as_str());
                if !reported.contains(&key) {
                    reported.push(key);
                    let _ = writeln!(
                        out,
                        "FAILED {} {} {}: {error}",
                        run.underlay, run.path, run.test
                    );
                }
            }
        }
        out
    }

    /// One cell: `6.00 (0.50×) 5.80–6.20`, `failed`.
    fn cell(&self, path: Path, test: Test, underlay: UnderlayMode, run: &Run) -> String {
        let Some(value) = run.value else {
            return "failed".to_string();
        };
        let mut cell = format_value(value);
        if path.is_weft() {
            if let Some(ratio) = self.ratio_to_anchor(path, test, underlay) {
                let _ = write!(cell, " ({ratio:.2}×)");
            }
        }
        if let (Some(min), Some(max)) = (run.min, run.max) {
            let _ = write!(cell, " {}–{}", format_value(min), format_value(max));
        }
        cell
    }
}

/// Three significant digits are plenty for numbers that move between runs.
pub fn format_value(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// `SystemTime` → RFC 3339 UTC with seconds precision (`2026-11-23T18:00:00Z`).
pub fn rfc3339_utc(time: std::time::SystemTime) -> String {
    let secs = time
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A small but complete results document: every path and test on two underlays
    /// (`nic` at half the speed of `whole`), one failed path.
    pub(crate) fn sample() -> Results {
        let mut runs = Vec::new();
        for (underlay, speed) in [(UnderlayMode::Whole, 1.0), (UnderlayMode::Nic, 0.5)] {
            for path in Path::ALL {
                for test in Test::ALL {
                    if path == Path::WeftIpip {
                        runs.push(
                            Run::failed(path, test, "weftd not ready: timed out").on(underlay),
                        );
                        continue;
                    }
                    let base = match test {
                        Test::Tcp1 | Test::Tcp1Rev => 12.0,
                        Test::Tcp4 => 14.0,
                        Test::Udp64 => 150.0,
                        Test::Rtt => 120.0,
                        Test::Cpu => 1.5,
                    };
                    let factor = match path {
                        Path::Veth => 1.5,
                        Path::HostGw => 1.1,
                        Path::KernelVxlan => 1.0,
                        _ => 0.5,
                    };
                    runs.push(Run::ok(path, test, base * factor * speed).on(underlay));
                }
            }
        }
        Results {
            started: "2026-11-23T18:00:00Z".into(),
            seconds: 10,
            rounds: 1,
            kernel: "6.18.0".into(),
            cpus: 2,
            weftd_env: Vec::new(),
            runs,
        }
    }

    #[test]
    fn json_has_the_documented_shape() {
        let results = sample();
        let json: serde_json::Value = serde_json::to_value(&results).unwrap();
        let top: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        assert_eq!(top.len(), 6, "{top:?}");
        assert_eq!(json["rounds"], 1);
        assert_eq!(json["started"], "2026-11-23T18:00:00Z");
        assert_eq!(json["seconds"], 10);
        assert_eq!(json["kernel"], "6.18.0");
        assert_eq!(json["cpus"], 2);
        let runs = json["runs"].as_array().unwrap();
        assert_eq!(runs.len(), 2 * Path::ALL.len() * Test::ALL.len());
        assert_eq!(runs.last().unwrap()["underlay"], "nic");
        let first = &runs[0];
        assert_eq!(
            first,
            &serde_json::json!({"path":"veth","test":"tcp-1","value":18.0,"unit":"Gbit/s","underlay":"whole"})
        );
        let failed = runs
            .iter()
            .find(|r| r["path"] == "weft-ipip")
            .unwrap()
            .as_object()
            .unwrap();
        assert!(!failed.contains_key("value"));
        assert_eq!(failed["error"], "weftd not ready: timed out");
        // Round trip.
        let back: Results = serde_json::from_value(json).unwrap();
        assert_eq!(back, results);
    }

    #[test]
    fn table_shows_each_underlay_side_by_side_with_ratios_to_the_kernel_on_it() {
        let mut results = sample();
        results.runs.push(Run {
            about: Some("weftd: transmit path kernel_encap".into()),
            ..Run::from_samples(Path::WeftVxlan, Test::Rtt, vec![50.0, 70.0, 60.0])
                .on(UnderlayMode::Partial)
        });
        let table = results.table();
        let header = table.lines().next().unwrap();
        let columns: Vec<&str> = header.split('|').map(str::trim).collect();
        assert_eq!(
            columns,
            ["", "path", "test", "unit", "whole", "nic", "partial", ""],
            "{table}"
        );
        assert!(
            table.lines().nth(1).unwrap().starts_with("| ---"),
            "{table}"
        );
        let row = |path: &str, test: &str| {
            table
                .lines()
                .find(|l| {
                    let cells: Vec<&str> = l.split('|').map(str::trim).collect();
                    cells.get(1) == Some(&path) && cells.get(2) == Some(&test)
                })
                .unwrap_or_else(|| panic!("no {path} {test} row in\n{table}"))
                .split('|')
                .map(str::trim)
                .map(String::from)
                .collect::<Vec<_>>()
        };
        // Ratios are within an underlay: weft at half the kernel on both.
        let tcp1 = row("weft-vxlan", "tcp-1");
        assert_eq!(tcp1[4], "6.00 (0.50×)", "{table}");
        assert_eq!(tcp1[5], "3.00 (0.50×)", "{table}");
        assert_eq!(tcp1[6], "-", "{table}");
        assert_eq!(row("kernel-to-weft", "tcp-1")[5], "3.00 (0.50×)", "{table}");
        assert_eq!(row("kernel-vxlan", "tcp-1")[5], "6.00", "{table}");
        assert_eq!(row("weft-ipip", "udp64")[4], "failed", "{table}");
        // The range of several rounds, and no ratio without the anchor on that underlay.
        assert_eq!(row("weft-vxlan", "rtt")[6], "60.0 50.0–70.0", "{table}");
        assert!(
            table.contains("partial weft-vxlan: weftd: transmit path kernel_encap"),
            "{table}"
        );
        assert!(
            table.contains("FAILED whole weft-ipip tcp-1: weftd not ready: timed out"),
            "{table}"
        );
        // A failure shared by every test of a path is reported once per underlay.
        assert_eq!(table.matches("FAILED").count(), 2, "{table}");
    }

    #[test]
    fn rfc3339_dates() {
        use std::time::{Duration, UNIX_EPOCH};
        assert_eq!(rfc3339_utc(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        // 2026-11-23T18:37:32Z is the fixture's iperf3 timestamp (timesecs 1795459052).
        let t = UNIX_EPOCH + Duration::from_secs(1_795_459_052);
        assert_eq!(rfc3339_utc(t), "2026-11-23T18:37:32Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339_utc(leap), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn a_run_with_weftd_settings_says_so_in_its_description_and_json() {
        let mut results = sample();
        assert!(!results.describe().contains("weftd with"));
        assert!(!serde_json::to_string(&results)
            .unwrap()
            .contains("weftd_env"));
        results.weftd_env = vec!["WEFTD_BUSY_POLL=20ms".into()];
        assert!(results
            .describe()
            .ends_with("2 CPUs · weftd with WEFTD_BUSY_POLL=20ms"));
        assert!(results.describe().contains("· median of 1 round ·"));
        let json = serde_json::to_string(&results).unwrap();
        assert!(
            json.contains(r#""weftd_env":["WEFTD_BUSY_POLL=20ms"]"#),
            "{json}"
        );
    }

    #[test]
    fn several_rounds_give_the_median_with_samples_and_range() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[9.0, 1.0, 5.0]), Some(5.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));

        let run = Run::from_samples(Path::WeftVxlan, Test::Tcp1, vec![12.0, 7.0, 9.5]);
        assert_eq!(run.value, Some(9.5));
        assert_eq!((run.min, run.max), (Some(7.0), Some(12.0)));
        let json = serde_json::to_value(&run).unwrap();
        assert_eq!(json["samples"], serde_json::json!([12.0, 7.0, 9.5]));
        assert_eq!(json["underlay"], "whole");

        let single =
            serde_json::to_value(Run::from_samples(Path::Veth, Test::Rtt, vec![30.0])).unwrap();
        assert_eq!(
            single,
            serde_json::json!({"path":"veth","test":"rtt","value":30.0,"unit":"µs","underlay":"whole"})
        );
        // A results.json written before rounds existed still loads, as one round on the
        // whole underlay.
        let old: Results = serde_json::from_str(
            r#"{"started":"2026-11-30T08:02:53Z","seconds":5,"kernel":"6.18.44","cpus":2,
                "runs":[{"path":"veth","test":"tcp-1","value":21.6,"unit":"Gbit/s"}]}"#,
        )
        .unwrap();
        assert_eq!(old.rounds, 1);
        assert_eq!(old.runs[0].underlay, "whole");
    }
}
