//! weft-bench end to end, kept short: one real path measured, one path that cannot be
//! built, and the outputs docs/bench.md promises (table, results.json, results.md,
//! results.svg); the `nic` and `partial` underlays measured on a few paths; and each
//! underlay mode checked on the wire to be what it claims.

use std::process::Command;
use std::time::Duration;

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
            "--underlay",
            "whole",
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
        "[1/4] whole veth tcp-1 ... ",
        "[2/4] whole weft-vxlan tcp-1 ... skipped",
        "[3/4] whole weft-vxlan rtt ... skipped",
        "[4/4] whole veth rtt ... ",
    ] {
        assert!(stdout.contains(line), "no {line:?} in:\n{stdout}");
    }
    assert!(stdout.contains("FAILED whole weft-vxlan"), "{stdout}");

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

/// The `nic` and `partial` underlays, so they cannot rot: every path measured on both,
/// every figure present and positive, each run on the underlay it says, weftd's transmit
/// path named, and on `nic` the tunnel frames of every path (VXLAN and IPIP) redirected
/// by the underlay's XDP programs.
#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn bench_measures_the_nic_and_partial_underlays() {
    if !require_root("bench_measures_the_nic_and_partial_underlays") {
        return;
    }
    let bench = bin_path("weft-bench");
    assert!(
        bench.is_file(),
        "{} missing: run `cargo build --workspace --bins` first",
        bench.display()
    );
    let out_dir = tempfile::tempdir().unwrap();
    let paths = ["kernel-vxlan", "weft-vxlan", "weft-ipip", "kernel-to-weft"];
    let output = Command::new(&bench)
        .args(["--seconds", "1", "--rounds", "1", "--tests", "tcp-1,rtt"])
        .args(["--underlay", "nic,partial", "--paths", &paths.join(",")])
        .arg("--out-dir")
        .arg(out_dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );

    let json = std::fs::read_to_string(out_dir.path().join("results.json")).unwrap();
    let results: serde_json::Value = serde_json::from_str(&json).unwrap();
    let runs = results["runs"].as_array().unwrap();
    // 2 underlays × 4 paths × (tcp-1, cpu, rtt).
    assert_eq!(runs.len(), 2 * paths.len() * 3, "{json}");
    for underlay in ["nic", "partial"] {
        for path in paths {
            for test in ["tcp-1", "cpu", "rtt"] {
                let run = runs
                    .iter()
                    .find(|r| r["path"] == path && r["test"] == test && r["underlay"] == underlay)
                    .unwrap_or_else(|| panic!("no {underlay} {path} {test} in {json}"));
                let value = run["value"].as_f64().unwrap_or_else(|| panic!("{run}"));
                assert!(value > 0.0, "{run}");
                if path != "kernel-vxlan" {
                    let about = run["about"].as_str().unwrap_or_else(|| panic!("{run}"));
                    assert!(about.contains("transmit_path"), "{run}");
                }
                if test == "tcp-1" {
                    let redirected = run.get("xdp_redirected").and_then(|n| n.as_u64());
                    if underlay == "nic" {
                        // One second of TCP at even 0.1 Gbit/s is over 8,000 frames.
                        assert!(redirected.is_some_and(|n| n >= 1_000), "{run}");
                    } else {
                        assert_eq!(redirected, None, "{run}");
                    }
                }
            }
        }
    }
    // The Markdown table: the underlays side by side, one column each.
    let table = std::fs::read_to_string(out_dir.path().join("results.md")).unwrap();
    let header: Vec<&str> = table
        .lines()
        .find(|l| l.starts_with("| path "))
        .unwrap_or_else(|| panic!("no header in {table}"))
        .split('|')
        .map(str::trim)
        .collect();
    assert_eq!(
        header,
        ["", "path", "test", "unit", "nic", "partial", ""],
        "{table}"
    );
    let svg = std::fs::read_to_string(out_dir.path().join("results.svg")).unwrap();
    assert_eq!(svg.matches(r#"class="bar""#).count(), runs.len(), "{svg}");
}

/// What one bulk transfer over a shaped underlay looked like on the wire.
#[derive(Debug)]
struct Observed {
    /// Ethernet frame lengths of the tunnel frames node 1 sent (its `eth0`, egress).
    sent_frames: Vec<u64>,
    /// Tunnel frames node 1's underlay port redirected by XDP, and frames that went out
    /// of node 2's port by redirect (its `xdp_xmit`).
    redirected: u64,
    redirected_out_to_node2: u64,
    /// Packets the bridge forwarded to node 2's port (bridged, not redirected).
    bridged_to_node2: u64,
    /// Packets node 2's `eth0` received (before GRO), and skbs its `flannel.1` received
    /// (after GRO).
    node2_eth0_rx: u64,
    node2_vxlan_rx: u64,
    /// node 2's `eth0` GRO setting.
    node2_gro: String,
}

/// A two-node kernel-flannel lab on `mode`'s underlay, 20 MB from the pod on node 1 to
/// the pod on node 2, and what the wire and the counters saw.
fn transfer_over(mode: weft_tests::lab::underlay::UnderlayMode) -> Observed {
    use weft_tests::lab::underlay::{driver_stats, features, link_counters};
    use weft_tests::lab::{Lab, LabSpec};

    let (mut lab, underlay) = Lab::start_on(LabSpec::kernel(2), mode).unwrap();
    assert_eq!(underlay.mode(), mode);
    lab.add_pod(1, "pa").unwrap();
    let server_ip = lab.add_pod(2, "pb").unwrap().to_string();
    let (ul, n1, n2) = (
        lab.underlay(),
        lab.node_ns(1).unwrap(),
        lab.node_ns(2).unwrap(),
    );
    assert!(
        lab.ping("pa", server_ip.parse().unwrap()),
        "{mode}: no ping"
    );

    // A veth's driver counters, summed over its queues.
    let counter = |port: &str, suffix: &str| {
        driver_stats(&ul, port)
            .unwrap()
            .iter()
            .filter(|(name, _)| name.ends_with(suffix))
            .map(|(_, n)| n)
            .sum::<u64>()
    };
    let redirects = || (counter("n1", "_xdp_redirect"), counter("n2", "_xdp_xmit"));
    let before = (
        redirects(),
        link_counters(&ul, "n2").unwrap(),
        link_counters(&n2, "eth0").unwrap(),
        link_counters(&n2, "flannel.1").unwrap(),
    );
    // A pcap file (each record keeps the frame's length on the wire), written per packet.
    let pcap_dir = tempfile::tempdir().unwrap();
    let pcap = pcap_dir.path().join("sent.pcap");
    let capture = n1
        .start_capture(&[
            "--immediate-mode",
            "-U",
            "-i",
            "eth0",
            "-Q",
            "out",
            "-s",
            "64",
            "-w",
            pcap.to_str().unwrap(),
            "udp port 8472",
        ])
        .unwrap();

    let pb = lab.netns_of("pb").unwrap();
    let mut command = pb.command("iperf3");
    command
        .args(["-s", "-1", "-p", "5201"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut server = pb.spawn(command).unwrap();
    weft_tests::wait_until("iperf3 server to listen", Duration::from_secs(5), || {
        !server.is_running()
            || pb
                .run("ss", &["-Hltn", "sport = :5201"])
                .is_ok_and(|out| !out.trim().is_empty())
    })
    .unwrap();
    lab.exec(
        "pa",
        &[
            "iperf3",
            "-c",
            &server_ip,
            "-p",
            "5201",
            "-n",
            "20M",
            "--connect-timeout",
            "3000",
        ],
    )
    .unwrap_or_else(|e| panic!("{mode}: the transfer failed: {e:#}"));
    weft_tests::wait_until("iperf3 server to exit", Duration::from_secs(10), || {
        !server.is_running()
    })
    .unwrap();

    let after = (
        redirects(),
        link_counters(&ul, "n2").unwrap(),
        link_counters(&n2, "eth0").unwrap(),
        link_counters(&n2, "flannel.1").unwrap(),
    );
    let _ = capture.finish();
    let sent_frames = pcap_frame_lengths(&std::fs::read(&pcap).unwrap());
    Observed {
        sent_frames,
        redirected: after.0 .0 - before.0 .0,
        redirected_out_to_node2: after.0 .1 - before.0 .1,
        // A veth's transmit counters include the frames redirected out through it.
        bridged_to_node2: (after.1.tx_packets - before.1.tx_packets) - (after.0 .1 - before.0 .1),
        node2_eth0_rx: after.2.rx_packets - before.2.rx_packets,
        node2_vxlan_rx: after.3.rx_packets - before.3.rx_packets,
        node2_gro: features(&n2, "eth0").unwrap()["generic-receive-offload"].clone(),
    }
}

/// The original length of every frame in a pcap file (`tcpdump -w`); a record cut short
/// by the end of the file (tcpdump killed mid-write) is left out.
fn pcap_frame_lengths(pcap: &[u8]) -> Vec<u64> {
    const GLOBAL_HEADER: usize = 24;
    const RECORD_HEADER: usize = 16;
    assert!(
        pcap.len() >= GLOBAL_HEADER,
        "not a pcap file ({} bytes)",
        pcap.len()
    );
    let magic = u32::from_ne_bytes(pcap[..4].try_into().unwrap());
    let swapped = match magic {
        0xa1b2_c3d4 | 0xa1b2_3c4d => false,
        0xd4c3_b2a1 | 0x4d3c_b2a1 => true,
        other => panic!("not a pcap file (magic {other:#x})"),
    };
    let word = |at: usize| {
        let w = u32::from_ne_bytes(pcap[at..at + 4].try_into().unwrap());
        if swapped {
            w.swap_bytes()
        } else {
            w
        }
    };
    let mut lengths = Vec::new();
    let mut at = GLOBAL_HEADER;
    while at + RECORD_HEADER <= pcap.len() {
        let captured = word(at + 8) as usize;
        let original = word(at + 12);
        if at + RECORD_HEADER + captured > pcap.len() {
            break;
        }
        lengths.push(u64::from(original));
        at += RECORD_HEADER + captured;
    }
    lengths
}

/// The underlay modes the bench measures are what docs/bench.md says they are: MTU
/// frames on `nic`, `nic-nogro` and `partial` and super-packets on `whole`; tunnel
/// frames redirected by XDP past the bridge on the `nic` modes and bridged on the
/// others; GRO merging on `nic` and not on `nic-nogro`.
#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn underlay_modes_are_what_they_claim() {
    use weft_tests::lab::underlay::UnderlayMode;
    if !require_root("underlay_modes_are_what_they_claim") {
        return;
    }
    // 20 MiB in segments of at most 1,398 bytes is over 15,000 frames, of which iperf3
    // may leave the last in flight when it ends; super-packets make it a few hundred.
    const FRAMES: u64 = 10_000;
    const LARGEST_ON_THE_WIRE: u64 = 1_500 + 14;
    for mode in UnderlayMode::ALL {
        let seen = transfer_over(mode);
        let largest = seen.sent_frames.iter().copied().max().unwrap_or(0);
        let summary = format!(
            "{mode}: largest frame sent {largest} of {} captured; redirected {} (out to node 2 {}), bridged to node 2 {}, node 2 eth0 rx {}, flannel.1 rx {}, gro {}",
            seen.sent_frames.len(),
            seen.redirected,
            seen.redirected_out_to_node2,
            seen.bridged_to_node2,
            seen.node2_eth0_rx,
            seen.node2_vxlan_rx,
            seen.node2_gro
        );
        assert!(!seen.sent_frames.is_empty(), "{summary}");
        if mode == UnderlayMode::Whole {
            assert!(
                largest > LARGEST_ON_THE_WIRE,
                "super-packets cross whole: {summary}"
            );
        } else {
            assert!(largest <= LARGEST_ON_THE_WIRE, "MTU frames only: {summary}");
            assert!(seen.node2_eth0_rx >= FRAMES, "{summary}");
        }
        if mode.redirects() {
            // The tunnel frames went past the bridge: what it forwarded to node 2 is a
            // few ARPs, not the transfer.
            assert!(seen.redirected >= FRAMES, "{summary}");
            assert!(seen.redirected_out_to_node2 >= FRAMES, "{summary}");
            assert!(seen.bridged_to_node2 < 100, "{summary}");
        } else {
            assert_eq!(
                seen.redirected + seen.redirected_out_to_node2,
                0,
                "{summary}"
            );
            assert!(
                seen.bridged_to_node2 + 100 >= seen.node2_eth0_rx,
                "everything node 2 got was bridged: {summary}"
            );
        }
        match mode {
            UnderlayMode::Nic => {
                assert_eq!(seen.node2_gro, "on", "{summary}");
                // GRO merged the fresh skbs: far fewer reach the vxlan device.
                assert!(seen.node2_vxlan_rx * 4 < seen.node2_eth0_rx, "{summary}");
            }
            UnderlayMode::NicNogro => {
                assert_eq!(seen.node2_gro, "off", "{summary}");
                assert!(
                    seen.node2_vxlan_rx * 10 >= seen.node2_eth0_rx * 9,
                    "{summary}"
                );
            }
            _ => {}
        }
        eprintln!("{summary}");
    }
}
