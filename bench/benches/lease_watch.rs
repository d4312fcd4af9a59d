//! Control-plane benchmark: how long until a watcher has seen 1,000 new leases.
//!
//! A real etcd (the test harness's, on loopback), one weftd peer watcher
//! (`watch_peers`, as weftd runs it), and 1,000 subnet leases created concurrently
//! with weftd's create-if-absent transaction. Printed per round: from the first write
//! until the watcher has delivered all 1,000 `LeaseEvent`s, and how far the watcher
//! trailed the last acknowledged write. Target: under 1 s.
//!
//! `cargo bench -p weft-bench --bench lease_watch` (needs `etcd` on PATH).

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use tokio::sync::{mpsc, watch};
use weft_daemon::lease::LeaseEvent;
use weft_daemon::subnet::{watch_peers, ControlStatus, EtcdOptions, Registry};
use weft_proto::lease::{LeaseAttrs, MacAddr};
use weft_tests::etcd::Etcd;

const LEASES: u32 = 1_000;
const ROUNDS: u32 = 3;
const PREFIX: &str = "/coreos.com/network";

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing: either way run.
    let etcd = Etcd::start()?;
    etcd.put(
        &format!("{PREFIX}/config"),
        r#"{"Network":"10.0.0.0/8","SubnetLen":24,"Backend":{"Type":"vxlan"}}"#,
    )?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let results = runtime.block_on(rounds(&etcd.endpoint()))?;
    let mut totals: Vec<Duration> = results.iter().map(|r| r.0).collect();
    totals.sort();
    println!(
        "lease_watch: median {:.1} ms until the watcher saw {LEASES} new leases (target < 1000 ms)",
        ms(totals[totals.len() / 2])
    );
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn rounds(endpoint: &str) -> anyhow::Result<Vec<(Duration, Duration)>> {
    let opts = EtcdOptions {
        endpoints: vec![endpoint.to_owned()],
        prefix: PREFIX.into(),
        ..EtcdOptions::default()
    };
    let writer = Registry::connect(&opts).await?;
    let mut results = Vec::new();
    for round in 0..ROUNDS {
        let watcher_registry = Registry::connect(&opts).await?;
        let (events_tx, mut events) = mpsc::channel(8192);
        let (stop_tx, stop) = watch::channel(false);
        let task = tokio::spawn(watch_peers(
            watcher_registry,
            None,
            events_tx,
            None,
            ControlStatus::new(),
            stop,
        ));
        // The initial snapshot: the watcher is listening from here on.
        let Some(LeaseEvent::Snapshot(before)) = events.recv().await else {
            anyhow::bail!("watcher did not start with a snapshot");
        };

        let start = Instant::now();
        let mut writes = tokio::task::JoinSet::new();
        for i in 0..LEASES {
            let writer = writer.clone();
            let n = round * LEASES + i + 1;
            writes.spawn(async move {
                let subnet = Ipv4Net::new(Ipv4Addr::new(10, (n >> 8) as u8, n as u8, 0), 24)?;
                let mac = MacAddr([0x02, 0, 0, (n >> 16) as u8, (n >> 8) as u8, n as u8]);
                let attrs = LeaseAttrs::vxlan(Ipv4Addr::from(0xc000_0000 | n), 1, mac);
                writer.create_subnet(subnet, &attrs, 0).await?;
                anyhow::Ok(())
            });
        }
        let seen_task = tokio::spawn(async move {
            let mut seen = 0;
            while seen < LEASES {
                match events.recv().await {
                    Some(LeaseEvent::Upsert(_)) => seen += 1,
                    Some(LeaseEvent::Snapshot(all)) => {
                        seen = all.len().saturating_sub(before.len()) as u32;
                    }
                    Some(LeaseEvent::Removed(_)) => {}
                    None => break,
                }
            }
            (Instant::now(), seen)
        });
        while let Some(result) = writes.join_next().await {
            result??;
        }
        let written = Instant::now();
        let (seen_at, seen) = seen_task.await?;
        anyhow::ensure!(seen == LEASES, "watcher saw only {seen} of {LEASES} leases");
        let total = seen_at - start;
        let lag = seen_at.saturating_duration_since(written);
        println!(
            "round {}: watcher saw {LEASES} new leases {:.1} ms after the first write \
             (writes acknowledged after {:.1} ms; watcher {:.1} ms behind the last one)",
            round + 1,
            ms(total),
            ms(written - start),
            ms(lag)
        );
        results.push((total, lag));
        let _ = stop_tx.send(true);
        task.await?;
    }
    Ok(results)
}
