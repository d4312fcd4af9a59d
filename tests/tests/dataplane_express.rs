//! The express lane (`--express-lane`, on by default): small packets, both ways, are
//! carried by a worker of their own ("weft-express"), steered by size by the TUN
//! device's steering program and the VXLAN sockets' reuseport program; bulk, with its
//! pure ACKs, stays on the other workers ("weft-q<N>"). The data planes run in this test process, so
//! their worker threads are this process's threads: which of them did the work is
//! read from each thread's CPU time (`/proc/self/task/*/schedstat`). One test
//! function, so no other test's workers run in this process meanwhile.
//!
//! The latency this buys is measured in `dataplane_latency.rs`.

mod dataplane_support;

use std::time::Duration;

use dataplane_support::{netconf, tcp_transfer, wait_ping, Cluster};
use weft_tests::require_root;

const VXLAN: &str = r#"{"Type":"vxlan","VNI":1}"#;
const PINGS: &str = "2000";

/// CPU time (ns) of this process's express and bulk worker threads.
#[derive(Debug, Clone, Copy)]
struct WorkerCpu {
    express: u64,
    bulk: u64,
}

fn worker_cpu() -> WorkerCpu {
    let mut cpu = WorkerCpu {
        express: 0,
        bulk: 0,
    };
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let path = task.path();
        let (Ok(name), Ok(stat)) = (
            std::fs::read_to_string(path.join("comm")),
            std::fs::read_to_string(path.join("schedstat")),
        ) else {
            continue; // the thread ended meanwhile
        };
        let ns: u64 = stat
            .split_whitespace()
            .next()
            .and_then(|field| field.parse().ok())
            .unwrap_or(0);
        match name.trim() {
            "weft-express" => cpu.express += ns,
            name if name.starts_with("weft-q") => cpu.bulk += ns,
            _ => {}
        }
    }
    cpu
}

fn since(before: WorkerCpu) -> WorkerCpu {
    let now = worker_cpu();
    WorkerCpu {
        express: now.express.saturating_sub(before.express),
        bulk: now.bulk.saturating_sub(before.bulk),
    }
}

/// A ping flood between the two pods; returns the workers' CPU time meanwhile.
fn ping_flood(cluster: &Cluster) -> WorkerCpu {
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    let before = worker_cpu();
    let out = a
        .pod()
        .run(
            "ping",
            &["-q", "-f", "-c", PINGS, "-w", "20", &b.pod_ip().to_string()],
        )
        .unwrap();
    assert!(
        out.contains(&format!("{PINGS} received")),
        "ping flood lost packets: {out}"
    );
    since(before)
}

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn small_packets_take_the_express_worker_and_bulk_the_others() {
    if !require_root("small_packets_take_the_express_worker_and_bulk_the_others") {
        return;
    }

    // Lane on (the default).
    let cluster = Cluster::weft(2, &netconf(VXLAN)).unwrap();
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    wait_ping(a.pod(), b.pod_ip(), Duration::from_secs(10)).unwrap();
    for node in [a, b] {
        let offloads = node.metrics().dataplane().unwrap().offloads;
        assert!(offloads.express_lane, "{offloads:?}");
    }
    let flood = ping_flood(&cluster);
    eprintln!("lane on, ping flood: {flood:?}");
    assert!(
        flood.express > 0,
        "the express workers did nothing: {flood:?}"
    );
    assert!(
        flood.bulk * 10 < flood.express,
        "small packets woke the bulk workers: {flood:?}"
    );

    // Bulk data, and its pure ACKs with it, stay on the other workers, intact.
    let before = worker_cpu();
    let (sent, received, len) = tcp_transfer(a.pod(), b.pod(), b.pod_ip(), 32 << 20).unwrap();
    let bulk = since(before);
    eprintln!("lane on, 32 MB transfer: {bulk:?}");
    assert_eq!((sent, len), (received, 32 << 20));
    assert!(
        bulk.express * 10 < bulk.bulk,
        "bulk data or its ACKs took the express worker: {bulk:?}"
    );
    drop(cluster);

    // Lane off: no express worker, and small packets take the workers like the rest.
    let cluster = Cluster::weft_with(2, &netconf(VXLAN), |settings| {
        settings.express_lane = false;
    })
    .unwrap();
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    wait_ping(a.pod(), b.pod_ip(), Duration::from_secs(10)).unwrap();
    for node in [a, b] {
        let offloads = node.metrics().dataplane().unwrap().offloads;
        assert!(!offloads.express_lane, "{offloads:?}");
    }
    let flood = ping_flood(&cluster);
    eprintln!("lane off, ping flood: {flood:?}");
    assert_eq!(flood.express, 0, "an express worker runs: {flood:?}");
    assert!(flood.bulk > 0, "{flood:?}");
    let (sent, received, len) = tcp_transfer(a.pod(), b.pod(), b.pod_ip(), 8 << 20).unwrap();
    assert_eq!((sent, len), (received, 8 << 20));
}
