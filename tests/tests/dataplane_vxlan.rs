//! weft ↔ weft over userspace VXLAN: pods on three nodes reach each other; a 100 MB TCP
//! transfer arrives intact; leases coming and going add and remove routes; routes
//! deleted behind weft's back come back.

mod dataplane_support;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use dataplane_support::{
    concurrent_transfers, netconf, ping_once, tcp_transfer, wait_ping, Cluster,
};
use weft_daemon::lease::PeerEvent;
use weft_tests::netns::{spawn_in, spawn_udp_echo};
use weft_tests::{require_root, wait_until};

const VXLAN: &str = r#"{"Type":"vxlan","VNI":1,"Port":8472}"#;

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn three_weft_nodes_all_pods_reach_each_other_and_tcp_is_intact() {
    if !require_root("three_weft_nodes_all_pods_reach_each_other_and_tcp_is_intact") {
        return;
    }
    let cluster = Cluster::weft(3, &netconf(VXLAN)).unwrap();
    cluster
        .wait_all_pods_reach_each_other(Duration::from_secs(10))
        .unwrap();
    // Routes are device routes through weft.1, tagged as weft's.
    let routes = cluster.nodes[0]
        .ns
        .ip(&["route", "show", "proto", "87"])
        .unwrap();
    assert!(routes.contains("10.244.2.0/24 dev weft.1"), "{routes}");
    assert!(routes.contains("10.244.3.0/24 dev weft.1"), "{routes}");

    let (a, b) = (&cluster.nodes[0], &cluster.nodes[2]);
    let (sent, received, length) = tcp_transfer(a.pod(), b.pod(), b.pod_ip(), 100 << 20).unwrap();
    assert_eq!(length, 100 << 20);
    assert_eq!(sent, received, "payload hash differs");
    eprintln!("sender: {:?}", a.metrics().snapshot());
    eprintln!("receiver: {:?}", b.metrics().snapshot());
    assert!(a.metrics().snapshot().tx_packets > 10_000);
    assert!(b.metrics().snapshot().rx_packets > 10_000);
}

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn lease_arrival_and_removal_drive_routes_and_reconcile_restores_them() {
    if !require_root("lease_arrival_and_removal_drive_routes_and_reconcile_restores_them") {
        return;
    }
    let conf = netconf(VXLAN);
    let mut cluster = Cluster::weft(2, &conf).unwrap();
    wait_ping(
        cluster.nodes[0].pod(),
        cluster.nodes[1].pod_ip(),
        Duration::from_secs(10),
    )
    .unwrap();

    // A new node joins: the existing nodes learn of it with one event.
    let i = cluster.add_node(3, &conf).unwrap();
    cluster.nodes[i].start().unwrap();
    let prefix = cluster.prefix.clone();
    cluster.nodes[i].add_pod(&prefix).unwrap();
    let peers: Vec<_> = cluster.nodes.iter().map(|n| n.as_peer()).collect();
    cluster.nodes[i].send(PeerEvent::Snapshot(peers)).unwrap();
    let newcomer = cluster.nodes[i].as_peer();
    let announced = Instant::now();
    for node in &cluster.nodes[..2] {
        node.send(PeerEvent::Upsert(newcomer.clone())).unwrap();
    }
    let target = cluster.nodes[i].pod_ip();
    // The route follows the event within milliseconds when the machine is idle; the
    // deadline leaves room for a loaded CI machine (a lost first ping costs its 1 s
    // timeout), and the time taken is printed.
    wait_until("new node's pod reachable", Duration::from_secs(5), || {
        ping_once(cluster.nodes[0].pod(), target)
    })
    .unwrap();
    let took = announced.elapsed();
    eprintln!("new node reachable {took:?} after its lease event");

    // Someone deletes weft's route: the periodic reconcile puts it back.
    let node1 = &cluster.nodes[0].ns;
    node1.ip(&["route", "del", "10.244.3.0/24"]).unwrap();
    wait_until("deleted route restored", Duration::from_secs(10), || {
        node1
            .ip(&["route", "show", "10.244.3.0/24"])
            .is_ok_and(|r| r.contains("dev weft.1"))
    })
    .unwrap();

    // The lease goes away: the route goes with it.
    cluster.nodes[0]
        .send(PeerEvent::Removed(newcomer.subnet))
        .unwrap();
    wait_until(
        "route of removed lease gone",
        Duration::from_secs(5),
        || {
            node1
                .ip(&["route", "show", "10.244.3.0/24"])
                .is_ok_and(|r| r.trim().is_empty())
        },
    )
    .unwrap();
    assert!(!ping_once(cluster.nodes[0].pod(), target));
}

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn restart_keeps_device_and_routes_and_resumes() {
    if !require_root("restart_keeps_device_and_routes_and_resumes") {
        return;
    }
    let mut cluster = Cluster::weft(2, &netconf(VXLAN)).unwrap();
    let target = cluster.nodes[1].pod_ip();
    wait_ping(cluster.nodes[0].pod(), target, Duration::from_secs(10)).unwrap();

    let running = cluster.nodes[0].running.take().unwrap();
    running.stop().unwrap();
    let node1 = &cluster.nodes[0].ns;
    let routes = node1.ip(&["route", "show", "proto", "87"]).unwrap();
    assert!(
        routes.contains("10.244.2.0/24 dev weft.1"),
        "routes stay: {routes}"
    );
    assert!(
        node1.ip(&["link", "show", "weft.1"]).is_ok(),
        "device stays"
    );

    cluster.nodes[0].start().unwrap();
    cluster.announce_all().unwrap();
    wait_ping(cluster.nodes[0].pod(), target, Duration::from_secs(10)).unwrap();
}

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn cleanup_on_exit_removes_device_and_routes() {
    if !require_root("cleanup_on_exit_removes_device_and_routes") {
        return;
    }
    let mut cluster = Cluster::weft_with(2, &netconf(VXLAN), |settings| {
        settings.cleanup_on_exit = true;
    })
    .unwrap();
    wait_ping(
        cluster.nodes[0].pod(),
        cluster.nodes[1].pod_ip(),
        Duration::from_secs(10),
    )
    .unwrap();
    let running = cluster.nodes[0].running.take().unwrap();
    running.stop().unwrap();
    let node1 = &cluster.nodes[0].ns;
    assert!(
        node1.ip(&["link", "show", "weft.1"]).is_err(),
        "device removed"
    );
    let routes = node1.ip(&["route", "show", "proto", "87"]).unwrap();
    assert!(routes.trim().is_empty(), "routes removed: {routes}");
}

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn concurrent_tcp_streams_arrive_intact() {
    if !require_root("concurrent_tcp_streams_arrive_intact") {
        return;
    }
    // Interleaved flows exercise the receive side's per-flow coalescing.
    let cluster = Cluster::weft(2, &netconf(VXLAN)).unwrap();
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    wait_ping(a.pod(), b.pod_ip(), Duration::from_secs(10)).unwrap();
    concurrent_transfers(a, b, 4, 2, 16 << 20);
}

/// `--busy-poll`: a worker that keeps polling is not woken for each request of a
/// request/response exchange, which is where a sleeping worker's latency comes from;
/// with weftd's own short windows, every ping 10 ms apart wakes one.
#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn busy_polling_workers_are_not_woken_for_each_ping() {
    if !require_root("busy_polling_workers_are_not_woken_for_each_ping") {
        return;
    }
    let wakeups_during_pings = |busy_poll: Duration| {
        let cluster = Cluster::weft_with(2, &netconf(VXLAN), |settings| {
            settings.busy_poll = busy_poll;
        })
        .unwrap();
        let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
        wait_ping(a.pod(), b.pod_ip(), Duration::from_secs(10)).unwrap();
        let before = a.metrics().snapshot().worker_wakeups;
        let ip = b.pod_ip().to_string();
        a.pod()
            .run(
                "ping",
                &["-n", "-q", "-c", "20", "-i", "0.01", "-W", "1", &ip],
            )
            .unwrap();
        a.metrics().snapshot().worker_wakeups - before
    };
    let default_windows = wakeups_during_pings(Duration::ZERO);
    let busy = wakeups_during_pings(Duration::from_secs(1));
    assert!(
        default_windows >= 15,
        "{default_windows} wake-ups for 20 pings"
    );
    assert!(busy <= 3, "{busy} wake-ups for 20 pings while busy polling");
}

/// A server that answers later than a worker's longest reply wait (here after 1 ms):
/// each node's worker wakes for a lone packet (the request on the client's node, the
/// answer on the server's) and would poll for a reply that comes too late. The wait
/// halves with each one that runs out, so a few run out and then the workers sleep;
/// a fixed wait would run out on every exchange, on both nodes.
#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn replies_slower_than_the_reply_wait_stop_the_waiting() {
    if !require_root("replies_slower_than_the_reply_wait_stop_the_waiting") {
        return;
    }
    const EXCHANGES: usize = 100;
    // Longer than `reply_wait::MAX_WAIT` (250 µs) by far, as a busy server or a
    // distant node would be.
    const SERVER_DELAY: Duration = Duration::from_millis(1);
    let cluster = Cluster::weft(2, &netconf(VXLAN)).unwrap();
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    wait_ping(a.pod(), b.pod_ip(), Duration::from_secs(10)).unwrap();

    let server = spawn_udp_echo(b.pod().name(), 9000, EXCHANGES, SERVER_DELAY).unwrap();
    let before = (a.metrics().snapshot(), b.metrics().snapshot());
    let server_ip = b.pod_ip();
    let answered = spawn_in(a.pod().name(), move || {
        let socket = UdpSocket::bind("0.0.0.0:0")?;
        socket.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut buf = [0u8; 64];
        for n in 0..EXCHANGES {
            let request = (n as u32).to_be_bytes();
            socket.send_to(&request, (server_ip, 9000))?;
            let len = socket
                .recv(&mut buf)
                .map_err(|e| anyhow::anyhow!("exchange {n}: no answer: {e}"))?;
            anyhow::ensure!(buf[..len] == request, "exchange {n}: wrong answer");
            // The client's think time, so that its node's worker is asleep when the
            // next request comes, as between a real client's requests.
            std::thread::sleep(SERVER_DELAY);
        }
        Ok(EXCHANGES)
    })
    .join()
    .expect("client thread")
    .unwrap();
    server.join().expect("server thread").unwrap();
    let after = (a.metrics().snapshot(), b.metrics().snapshot());

    assert_eq!(answered, EXCHANGES);
    for (node, before, after) in [
        ("client", &before.0, &after.0),
        ("server", &before.1, &after.1),
    ] {
        let expired = after.reply_waits_expired - before.reply_waits_expired;
        let answered = after.reply_waits_answered - before.reply_waits_answered;
        let polled = Duration::from_nanos(after.worker_polling_ns - before.worker_polling_ns);
        eprintln!("{node}'s node: {expired} waits expired, {answered} answered, polled {polled:?}");
        // Each worker's wait runs out at 250, 125, 62.5 and 31.25 µs at most, then is
        // gone (fewer if the pings before had shortened it); the node has up to 4
        // workers, though one flow meets one or two.
        assert!(
            (1..=16).contains(&expired),
            "{node}'s node: {expired} reply waits expired over {EXCHANGES} late answers"
        );
        assert_eq!(answered, 0, "{node}'s node: a 1 ms answer caught by a wait");
    }
}
