use super::*;
use crate::netlink::{Change, Conflict};

#[test]
fn every_reason_has_its_own_counter() {
    let metrics = Metrics::default();
    for (n, reason) in DropReason::ALL.iter().enumerate() {
        for _ in 0..=n {
            metrics.drop_packet(*reason);
        }
    }
    for (n, reason) in DropReason::ALL.iter().enumerate() {
        assert_eq!(metrics.drops(*reason), n as u64 + 1, "{}", reason.name());
    }
    let snapshot = metrics.snapshot();
    assert_eq!(snapshot.drops[0], ("rx_unknown_source", 1));
}

#[test]
fn tally_sums_per_peer_and_flushes_on_change() {
    let metrics = Metrics::default();
    let a: Ipv4Net = "10.244.2.0/24".parse().unwrap();
    let b: Ipv4Net = "10.244.3.0/24".parse().unwrap();
    let ip = |last| Ipv4Addr::new(192, 0, 2, last);
    let mut tally = PeerTally::new(Direction::Tx);
    tally.count(&metrics, a, ip(2), 1, 100);
    tally.count(&metrics, a, ip(2), 2, 200);
    tally.count(&metrics, b, ip(3), 1, 50);
    let before_flush = metrics.peer_traffic();
    assert_eq!(
        (before_flush[0].tx_packets, before_flush[0].tx_bytes),
        (3, 300)
    );
    assert_eq!(before_flush[1].tx_packets, 0, "b is still summed locally");
    tally.flush(&metrics);
    tally.count(&metrics, a, ip(2), 1, 10);
    tally.flush(&metrics);
    let after = metrics.peer_traffic();
    assert_eq!((after[0].tx_packets, after[0].tx_bytes), (4, 310));
    assert_eq!((after[1].tx_packets, after[1].rx_packets), (1, 0));
    // A subnet that moved to another node is another peer.
    let mut rx = PeerTally::new(Direction::Rx);
    rx.count(&metrics, a, ip(9), 1, 1);
    rx.flush(&metrics);
    assert_eq!(metrics.peer_traffic().len(), 3);
}

#[test]
fn reasons_are_indexed_in_order() {
    for (n, reason) in DropReason::ALL.iter().enumerate() {
        assert_eq!(*reason as usize, n);
    }
    for (n, what) in Repair::ALL.iter().enumerate() {
        assert_eq!(*what as usize, n);
    }
    for (n, kind) in SendErrorReport::ALL.iter().enumerate() {
        assert_eq!(*kind as usize, n);
    }
}

fn key(subnet: &str, last: u8) -> PeerKey {
    (subnet.parse().unwrap(), Ipv4Addr::new(198, 51, 100, last))
}

#[test]
fn retain_peers_drops_gone_peers_series_and_tallies_forget_them() {
    let metrics = Metrics::default();
    let (a, b) = (key("10.244.2.0/24", 2), key("10.244.3.0/24", 3));
    let mut tally = PeerTally::new(Direction::Tx);
    tally.count(&metrics, a.0, a.1, 1, 10);
    tally.count(&metrics, b.0, b.1, 1, 10);
    tally.flush(&metrics);
    assert_eq!(metrics.peer_traffic().len(), 2);
    assert_eq!(tally.known.len(), 2);

    metrics.retain_peers([a]);
    let left: Vec<_> = metrics
        .peer_traffic()
        .iter()
        .map(|t| (t.subnet, t.public_ip))
        .collect();
    assert_eq!(left, [a], "b's series is gone");
    // The tally still holds b's counters until its next flush (once per batch).
    assert_eq!(tally.known.len(), 2);
    tally.flush(&metrics);
    assert!(tally.known.is_empty(), "the cache is forgotten");
    // a's counters survive: the tally finds the same ones again.
    tally.count(&metrics, a.0, a.1, 1, 10);
    tally.flush(&metrics);
    assert_eq!(metrics.peer_traffic()[0].tx_packets, 2);
    // An unchanged set changes nothing (no needless cache loss).
    let generation = metrics.peer_generation.load(Ordering::Relaxed);
    metrics.retain_peers([a]);
    assert_eq!(metrics.peer_generation.load(Ordering::Relaxed), generation);
}

#[test]
fn a_worker_late_for_a_gone_peer_cannot_bring_its_series_back() {
    let metrics = Metrics::default();
    let (a, gone) = (key("10.244.2.0/24", 2), key("10.244.3.0/24", 3));
    metrics.retain_peers([a]);
    // A worker still on the previous table counts the gone peer.
    let mut tally = PeerTally::new(Direction::Rx);
    tally.count(&metrics, gone.0, gone.1, 5, 500);
    tally.flush(&metrics);
    assert!(metrics.peer_traffic().is_empty());
    // When it comes back it is current again, and counted from zero.
    metrics.retain_peers([a, gone]);
    tally.flush(&metrics);
    tally.count(&metrics, gone.0, gone.1, 1, 100);
    tally.flush(&metrics);
    let traffic = metrics.peer_traffic();
    assert_eq!(traffic.len(), 1);
    assert_eq!((traffic[0].rx_packets, traffic[0].rx_bytes), (1, 100));
}

#[test]
fn churn_leaves_no_peer_state_behind() {
    let metrics = Metrics::default();
    let mut tallies: Vec<PeerTally> = (0..4).map(|_| PeerTally::new(Direction::Tx)).collect();
    for round in 0..5u32 {
        let peers: Vec<PeerKey> = (0..1000u32)
            .map(|n| {
                let subnet = Ipv4Net::new(Ipv4Addr::from(0x0af4_0000 + n * 16), 28).unwrap();
                (
                    subnet,
                    Ipv4Addr::from(0xc633_6400 + round * 50 + n % 50 + 1),
                )
            })
            .collect();
        metrics.retain_peers(peers.iter().copied());
        for (n, peer) in peers.iter().enumerate() {
            let tally = &mut tallies[n % 4];
            tally.count(&metrics, peer.0, peer.1, 1, 64);
            tally.flush(&metrics);
        }
        assert_eq!(metrics.peer_traffic().len(), 1000);
        metrics.retain_peers([]);
        for tally in &mut tallies {
            tally.flush(&metrics);
            assert!(tally.known.is_empty());
        }
        assert!(metrics.peer_traffic().is_empty(), "round {round}");
    }
    assert!(
        lock(&metrics.peers).stats.capacity() < 1000,
        "memory given back"
    );
}

mod routes {
    use super::*;
    use crate::netlink::{ForeignRoute, Route, RouteFailure};

    fn conflict(dst: &str, known: bool) -> Conflict {
        let dst: Ipv4Net = dst.parse().unwrap();
        Conflict {
            wanted: Route {
                dst,
                gateway: None,
                oif: 7,
            },
            foreign: known.then_some(ForeignRoute {
                dst,
                protocol: 4,
                gateway: Some(Ipv4Addr::new(192, 0, 2, 9)),
                oif: Some(2),
            }),
        }
    }

    fn pass(conflicts: &[Conflict], failures: &[Change]) -> RoutePass {
        RoutePass {
            applied: Vec::new(),
            conflicts: conflicts.to_vec(),
            failures: failures
                .iter()
                .map(|change| RouteFailure {
                    change: *change,
                    error: "Network is down (os error 100)".into(),
                })
                .collect(),
        }
    }

    #[test]
    fn a_conflict_is_news_once_while_it_lasts() {
        let metrics = Metrics::default();
        let c = conflict("10.244.5.0/24", true);
        for _ in 0..3 {
            metrics.record_route_pass(&pass(&[c], &[]));
        }
        assert_eq!(metrics.route_conflicts.load(Ordering::Relaxed), 1);
        let views = metrics.route_conflicts();
        assert_eq!(views.len(), 1);
        assert_eq!(views[0].prefix.to_string(), "10.244.5.0/24");
        assert_eq!(views[0].protocol.as_deref(), Some("static"));
        assert_eq!(views[0].wanted, "10.244.5.0/24 dev 7");
        // Gone, then back: a new conflict.
        metrics.record_route_pass(&pass(&[], &[]));
        assert!(metrics.route_conflicts().is_empty());
        metrics.record_route_pass(&pass(&[c], &[]));
        assert_eq!(metrics.route_conflicts.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_conflict_first_seen_as_eexist_keeps_the_table_s_description() {
        let mut health = RouteHealth::default();
        let news = health.update(&pass(&[conflict("10.244.5.0/24", false)], &[]));
        assert_eq!(news.new_conflicts.len(), 1);
        let news = health.update(&pass(&[conflict("10.244.5.0/24", true)], &[]));
        assert!(news.new_conflicts.is_empty());
        // An EEXIST for a known conflict does not forget who holds the prefix.
        health.update(&pass(&[conflict("10.244.5.0/24", false)], &[]));
        assert!(health.conflicts.values().all(|c| c.foreign.is_some()));
    }

    #[test]
    fn failures_are_all_counted_and_news_once() {
        let metrics = Metrics::default();
        let add = Change::Add(conflict("10.244.6.0/24", true).wanted);
        let other = Change::Delete(conflict("10.244.7.0/24", true).wanted);
        let mut health = RouteHealth::default();
        assert_eq!(
            health.update(&pass(&[], &[add, other])).new_failures.len(),
            2
        );
        let news = health.update(&pass(&[], &[add]));
        assert!(news.new_failures.is_empty());
        assert_eq!(news.failures, 1);
        for _ in 0..2 {
            metrics.record_route_pass(&pass(&[], &[add, other]));
        }
        assert_eq!(metrics.route_failures.load(Ordering::Relaxed), 4);
        let failing = metrics.route_failures();
        assert_eq!(failing[0].change, "add 10.244.6.0/24 dev 7");
        assert_eq!(failing[1].change, "delete 10.244.7.0/24 dev 7");
        let json = serde_json::to_value(metrics.snapshot()).unwrap();
        assert_eq!(json["route_failures_total"], 4);
        assert_eq!(json["route_failures"][0]["prefix"], "10.244.6.0/24");
    }
}
