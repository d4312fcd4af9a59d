//! Issue 10 — weftd's `/metrics`, `/readyz`, `/v1/status` and JSON logs on a real lab:
//! the metrics page is well-formed Prometheus/OpenMetrics text whose counters move with
//! pod traffic and with garbage sent to the VXLAN port; `/readyz` fails once etcd has
//! been gone longer than the grace period and recovers with it. Needs root.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, UdpSocket};
use std::time::Duration;

use weft_tests::lab::{Lab, LabSpec, HEALTHZ_ADDR};
use weft_tests::netns::Netns;
use weft_tests::{bin_path, require_root, wait_for};

/// The samples of an exposition page, keyed `name{labels}`. Panics (failing the test)
/// unless every line is a comment or `name{labels} value`, every family announced by
/// `# TYPE` and `# HELP` before its samples, and the page ends with `# EOF`.
fn parse_exposition(page: &str) -> HashMap<String, f64> {
    let mut typed = HashSet::new();
    let mut helped = HashSet::new();
    let mut samples = HashMap::new();
    assert!(page.ends_with("# EOF\n"), "no # EOF terminator:\n{page}");
    for line in page.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut words = rest.split(' ');
            let family = words.next().unwrap().to_owned();
            let kind = words.next().unwrap_or("");
            assert!(
                [
                    "counter",
                    "gauge",
                    "info",
                    "histogram",
                    "summary",
                    "unknown"
                ]
                .contains(&kind),
                "bad TYPE line {line:?}"
            );
            typed.insert(family);
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            helped.insert(rest.split(' ').next().unwrap().to_owned());
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("sample without a value: {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("value is not a number: {line:?}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                && !name.starts_with(|c: char| c.is_ascii_digit()),
            "bad metric name in {line:?}"
        );
        if name_end < series.len() {
            let labels = series[name_end..]
                .strip_prefix('{')
                .and_then(|l| l.strip_suffix('}'))
                .unwrap_or_else(|| panic!("unbalanced labels in {line:?}"));
            for pair in labels.split(',') {
                let (key, quoted) = pair
                    .split_once('=')
                    .unwrap_or_else(|| panic!("label without '=' in {line:?}"));
                assert!(
                    !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                    "bad label name in {line:?}"
                );
                assert!(
                    quoted.len() >= 2 && quoted.starts_with('"') && quoted.ends_with('"'),
                    "unquoted label value in {line:?}"
                );
            }
        }
        let family = name.strip_suffix("_total").unwrap_or(name);
        assert!(typed.contains(family), "no # TYPE before {line:?}");
        assert!(helped.contains(family), "no # HELP before {line:?}");
        assert!(
            samples.insert(series.to_owned(), value).is_none(),
            "duplicate series {series}"
        );
    }
    samples
}

fn metrics(ns: &Netns) -> HashMap<String, f64> {
    let (code, page) = ns.http_get(HEALTHZ_ADDR, "/metrics").expect("GET /metrics");
    assert_eq!(code, 200, "{page}");
    parse_exposition(&page)
}

fn value(samples: &HashMap<String, f64>, series: &str) -> f64 {
    *samples
        .get(series)
        .unwrap_or_else(|| panic!("{series} missing; have {:?}", samples.keys()))
}

/// Sends one UDP datagram from inside `ns`.
fn send_udp(ns: &Netns, to: Ipv4Addr, port: u16, payload: Vec<u8>) {
    ns.in_thread(move || {
        let socket = UdpSocket::bind("0.0.0.0:0")?;
        socket.send_to(&payload, (to, port))?;
        Ok(())
    })
    .expect("send a UDP datagram");
}

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn metrics_parse_and_count_traffic_and_bad_packets_json_logs() {
    if !require_root("metrics_parse_and_count_traffic_and_bad_packets_json_logs") {
        return;
    }
    let mut lab = Lab::start(LabSpec {
        weftd_args: vec!["--log-format".into(), "json".into()],
        ..LabSpec::weft(2)
    })
    .unwrap();
    let b = lab.add_pod(2, "b").unwrap();
    lab.add_pod(1, "a").unwrap();
    let n1 = lab.node_ns(1).unwrap();
    let n1_ip = lab.node(1).unwrap().ip;

    // Readiness includes the data plane: both nodes' peers have routes by now.
    let before = wait_for("weft_peers 1 on node 1", Duration::from_secs(20), || {
        let m = metrics(&n1);
        (value(&m, "weft_peers") == 1.0).then_some(m)
    })
    .unwrap();
    for series in [
        "weft_packets_total{direction=\"tx\"}",
        "weft_packets_total{direction=\"rx\"}",
        "weft_bytes_total{direction=\"tx\"}",
        "weft_bytes_total{direction=\"rx\"}",
        "weft_drops_total{reason=\"rx_unknown_source\"}",
        "weft_drops_total{reason=\"tx_no_peer\"}",
        "weft_encap_errors_total",
        "weft_decap_errors_total",
        "weft_route_reconcile_fixes_total",
        "weft_etcd_watch_restarts_total",
        "weft_lease_renewals_total",
    ] {
        value(&before, series);
    }
    assert_eq!(value(&before, "weft_lease_held"), 1.0);
    assert_eq!(value(&before, "weft_ready"), 1.0);
    assert_eq!(value(&before, "weft_dataplane_up"), 1.0);
    assert_eq!(value(&before, "weft_etcd_reachable"), 1.0);
    assert_eq!(
        value(
            &before,
            "weft_build_info{version=\"0.1.0\",backend=\"vxlan\"}"
        ),
        1.0
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let expiry = value(&before, "weft_lease_expiry_timestamp_seconds");
    assert!(
        expiry > now && expiry <= now + 86_400.0 + 60.0,
        "lease expiry {expiry} vs now {now}"
    );

    // Pod traffic moves the per-direction counters of node 1.
    lab.exec("a", &["ping", "-c5", "-i0.2", "-w10", "-q", &b.to_string()])
        .expect("pod a pings pod b");
    let tx = "weft_packets_total{direction=\"tx\"}";
    let rx = "weft_packets_total{direction=\"rx\"}";
    let after = wait_for(
        "5 echo requests and replies counted",
        Duration::from_secs(10),
        || {
            let m = metrics(&n1);
            (value(&m, tx) >= value(&before, tx) + 5.0 && value(&m, rx) >= value(&before, rx) + 5.0)
                .then_some(m)
        },
    )
    .unwrap();
    // ... and node 2's per-peer counters (summed per batch by the workers).
    let n2_subnet = lab.node_subnet(2).unwrap().0;
    let peer = |direction: &str| {
        format!(
            "weft_peer_packets_total{{peer=\"{n2_subnet}\",public_ip=\"192.0.2.2\",direction=\"{direction}\"}}"
        )
    };
    wait_for("per-peer counters", Duration::from_secs(10), || {
        let m = metrics(&n1);
        (value(&m, &peer("tx")) >= 5.0 && value(&m, &peer("rx")) >= 5.0).then_some(())
    })
    .unwrap();
    let tx_bytes = "weft_bytes_total{direction=\"tx\"}";
    assert!(
        value(&after, tx_bytes) >= value(&before, tx_bytes) + 5.0 * 84.0,
        "5 echo requests of 84 bytes"
    );

    // Garbage to the VXLAN port: from the underlay namespace (no lease has its address)
    // and from node 2 (a lease's PublicIP, but not VXLAN for our VNI).
    let unknown = "weft_drops_total{reason=\"rx_unknown_source\"}";
    let wrong_vni = "weft_drops_total{reason=\"rx_wrong_vni\"}";
    send_udp(&lab.underlay(), n1_ip, 8472, b"not vxlan at all".to_vec());
    send_udp(&lab.node_ns(2).unwrap(), n1_ip, 8472, vec![b'x'; 100]);
    let dropped = wait_for("both bad packets counted", Duration::from_secs(10), || {
        let m = metrics(&n1);
        (value(&m, unknown) >= value(&after, unknown) + 1.0
            && value(&m, wrong_vni) >= value(&after, wrong_vni) + 1.0)
            .then_some(m)
    })
    .unwrap();
    assert!(
        value(&dropped, "weft_decap_errors_total")
            >= value(&after, "weft_decap_errors_total") + 1.0
    );

    // /v1/status (through weftctl) shows the devices and the active offload path.
    let out = n1
        .command(bin_path("weftctl").to_str().unwrap())
        .args(["status", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["ready"], true, "{status}");
    assert_eq!(status["devices"]["device"], "weft.1", "{status}");
    assert_eq!(status["devices"]["bridge"], "cni0", "{status}");
    assert_eq!(status["devices"]["offloads"]["tun_tso4"], true, "{status}");
    assert!(status["dataplane"]["tx_packets"].as_u64().unwrap() >= 5);
    let human = n1
        .command(bin_path("weftctl").to_str().unwrap())
        .arg("status")
        .output()
        .unwrap();
    let human = String::from_utf8_lossy(&human.stdout);
    assert!(
        human.contains("devices: weft.1 (vxlan VNI 1), bridge cni0") && human.contains("offload:"),
        "{human}"
    );

    // --log-format json: every line weftd wrote is a JSON record with level and message.
    let log = std::fs::read_to_string(lab.node(1).unwrap().weftd_log()).unwrap();
    let records: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect();
    assert!(!records.is_empty());
    assert!(records
        .iter()
        .all(|r| r["level"].is_string() && r["fields"]["message"].is_string()));
    assert!(
        records
            .iter()
            .any(|r| r["fields"]["message"] == "data plane up"),
        "{log}"
    );
}

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn readyz_fails_when_etcd_is_gone_past_the_grace_and_recovers() {
    if !require_root("readyz_fails_when_etcd_is_gone_past_the_grace_and_recovers") {
        return;
    }
    let mut lab = Lab::start(LabSpec {
        weftd_args: vec!["--etcd-grace-secs".into(), "1".into()],
        ..LabSpec::weft(1)
    })
    .unwrap();
    let n1 = lab.node_ns(1).unwrap();
    assert_eq!(n1.http_get(HEALTHZ_ADDR, "/readyz").unwrap().0, 200);

    lab.etcd_mut().stop();
    let reason = wait_for("/readyz to fail", Duration::from_secs(30), || {
        match n1.http_get(HEALTHZ_ADDR, "/readyz") {
            Ok((503, body)) => Some(body),
            _ => None,
        }
    })
    .unwrap();
    assert!(reason.contains("etcd unreachable"), "{reason}");
    // Liveness is unaffected; the metrics say the same.
    assert_eq!(n1.http_get(HEALTHZ_ADDR, "/healthz").unwrap().0, 200);
    let m = metrics(&n1);
    assert_eq!(value(&m, "weft_ready"), 0.0);
    assert_eq!(value(&m, "weft_etcd_reachable"), 0.0);
    assert_eq!(value(&m, "weft_lease_held"), 1.0, "the lease is kept");

    lab.etcd_mut().restart().unwrap();
    wait_for("/readyz to recover", Duration::from_secs(60), || {
        matches!(n1.http_get(HEALTHZ_ADDR, "/readyz"), Ok((200, _))).then_some(())
    })
    .unwrap();
    // A request that was in flight across the outage may still report a failure once.
    let m = wait_for("weft_etcd_reachable 1", Duration::from_secs(30), || {
        let m = metrics(&n1);
        (value(&m, "weft_etcd_reachable") == 1.0).then_some(m)
    })
    .unwrap();
    assert!(value(&m, "weft_etcd_watch_restarts_total") >= 1.0);
}
