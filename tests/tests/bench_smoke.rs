//! weft-bench end to end, kept short: one real path measured, one path that cannot be
//! built, and the outputs docs/bench.md promises (table, results.json, results.svg).

use std::process::Command;

use weft_tests::{bin_path, require_root};

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn bench_measures_what_works_reports_what_fails_and_exits_non_zero() {
    if !require_root("bench_measures_what_works_reports_what_fails_and_exits_non_zero") {
        return;
    }
    let bench = bin_path("weft-bench");
    assert!(
        bench.is_file(),
        "{} missing: run `cargo build --workspace --bins` first",
        bench.display()
    );
    let out_dir = tempfile::tempdir().unwrap();
    // No weftd where the lab looks for it: the weft-vxlan path fails at setup, while
    // veth (no daemon) is measured.
    let output = Command::new(&bench)
        .args([
            "--seconds",
            "1",
            "--paths",
            "veth,weft-vxlan",
            "--tests",
            "tcp-1,rtt",
            "--rounds",
            "2",
        ])
        .arg("--out-dir")
        .arg(out_dir.path())
        .env("WEFT_BIN_DIR", out_dir.path().join("no-binaries-here"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(1),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );

    // A progress line per run (the round trips last, the paths taking turns), then the
    // table with the failure named.
    for line in [
        "[1/4] veth tcp-1 ... ",
        "[2/4] weft-vxlan tcp-1 ... skipped",
        "[3/4] weft-vxlan rtt ... skipped",
        "[4/4] veth rtt ... ",
    ] {
        assert!(stdout.contains(line), "no {line:?} in:\n{stdout}");
    }
    assert!(stdout.contains("FAILED weft-vxlan"), "{stdout}");

    let json = std::fs::read_to_string(out_dir.path().join("results.json")).unwrap();
    let results: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(results["seconds"], 1);
    assert_eq!(results["rounds"], 2);
    assert!(results["started"].as_str().unwrap().ends_with('Z'));
    assert!(results["cpus"].as_u64().unwrap() >= 1);
    let runs = results["runs"].as_array().unwrap();
    let find = |path: &str, test: &str| {
        runs.iter()
            .find(|r| r["path"] == path && r["test"] == test)
            .unwrap_or_else(|| panic!("no {path} {test} in {json}"))
    };
    for (test, unit) in [("tcp-1", "Gbit/s"), ("cpu", "CPU-s/GB"), ("rtt", "µs")] {
        let run = find("veth", test);
        assert_eq!(run["unit"], unit);
        let value = run["value"].as_f64().unwrap_or_else(|| panic!("{run}"));
        assert!(value > 0.0, "{run}");
        assert!(run.get("error").is_none(), "{run}");
        // Two rounds: the value is their median, between the two samples.
        assert_eq!(run["underlay"], "whole", "{run}");
        let samples: Vec<f64> = run["samples"]
            .as_array()
            .unwrap_or_else(|| panic!("no samples: {run}"))
            .iter()
            .map(|s| s.as_f64().unwrap())
            .collect();
        assert_eq!(samples.len(), 2, "{run}");
        let (min, max) = (run["min"].as_f64().unwrap(), run["max"].as_f64().unwrap());
        assert_eq!(min, samples[0].min(samples[1]), "{run}");
        assert_eq!(max, samples[0].max(samples[1]), "{run}");
        assert!(min <= value && value <= max, "{run}");
        let failed = find("weft-vxlan", test);
        assert!(failed.get("value").is_none(), "{failed}");
        assert!(
            failed["error"].as_str().unwrap().contains("weftd"),
            "the error should name what is missing: {failed}"
        );
    }
    assert_eq!(runs.len(), 6);

    let svg = std::fs::read_to_string(out_dir.path().join("results.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches(r#"class="bar""#).count(), 3, "{svg}");
    assert_eq!(svg.matches(r#"class="failed""#).count(), 3, "{svg}");
}
