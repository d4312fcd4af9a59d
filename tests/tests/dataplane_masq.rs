//! `--ip-masq`: a pod reaching a host outside the cluster network is seen with the
//! node's address; pod ↔ pod traffic keeps pod addresses; weft's nftables table stays
//! after a clean shutdown (so pods keep NAT while weftd restarts) and is gone, with the
//! forward rules, only after one with `--cleanup-on-exit`.

mod dataplane_support;

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::time::Duration;

use dataplane_support::{in_netns, netconf, wait_ping, Cluster};
use weft_tests::link::{End, Veth};
use weft_tests::netns::Netns;
use weft_tests::{require_root, wait_until};

/// Accepts one TCP connection on `ip` in namespace `ns` while `connect_from` connects to
/// it; returns the source address the listener saw.
fn seen_source(ns: &Netns, ip: Ipv4Addr, connect_from: &Netns) -> Ipv4Addr {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let listener = in_netns(ns.name(), move || {
        let listener = TcpListener::bind(SocketAddrV4::new(ip, 0))?;
        ready_tx.send(listener.local_addr()?.port())?;
        let (_, peer) = listener.accept()?;
        match peer.ip() {
            std::net::IpAddr::V4(v4) => Ok(v4),
            other => anyhow::bail!("unexpected peer {other}"),
        }
    });
    let port = ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    in_netns(connect_from.name(), move || {
        TcpStream::connect_timeout(&SocketAddrV4::new(ip, port).into(), Duration::from_secs(10))?;
        Ok(())
    })
    .join()
    .unwrap()
    .unwrap();
    listener.join().unwrap().unwrap()
}

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn pods_are_masqueraded_leaving_the_cluster_network_only() {
    if !require_root("pods_are_masqueraded_leaving_the_cluster_network_only") {
        return;
    }
    let netconf = netconf(r#"{"Type":"vxlan","VNI":1,"Port":8472}"#);
    let mut cluster = Cluster::new().unwrap();
    for n in [1, 2] {
        let i = cluster.add_node(n, &netconf).unwrap();
        let node = &mut cluster.nodes[i];
        node.settings.ip_masq = true;
        // Node 2 stops with --cleanup-on-exit, on a host whose FORWARD policy is DROP
        // (so it has forward rules to remove as well).
        if n == 2 {
            node.settings.cleanup_on_exit = true;
            node.ns
                .run("iptables-nft", &["-w", "-P", "FORWARD", "DROP"])
                .unwrap();
        }
        node.start().unwrap();
        let prefix = cluster.prefix.clone();
        cluster.nodes[i].add_pod(&prefix).unwrap();
    }
    cluster.announce_all().unwrap();
    // The rules follow the devices start() waits for.
    wait_until("the masquerade table", Duration::from_secs(10), || {
        cluster.nodes[0]
            .ns
            .run("nft", &["list", "table", "ip", "weft"])
            .is_ok_and(|table| table.contains("masquerade"))
    })
    .unwrap();

    // An "external" host on the underlay that is not a node.
    let external = Netns::new(&format!("{}-ext", cluster.prefix)).unwrap();
    let external_ip = Ipv4Addr::new(192, 0, 2, 200);
    let _link = Veth::create(
        End::with_addr(&external, "eth0", "192.0.2.200/24"),
        End::new(&cluster.underlay, "ext"),
        None,
    )
    .unwrap();
    cluster
        .underlay
        .ip(&["link", "set", "ext", "master", "br0"])
        .unwrap();

    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    wait_ping(a.pod(), external_ip, Duration::from_secs(10)).unwrap();
    assert_eq!(seen_source(&external, external_ip, a.pod()), a.public_ip());

    wait_ping(a.pod(), b.pod_ip(), Duration::from_secs(10)).unwrap();
    assert_eq!(seen_source(b.pod(), b.pod_ip(), a.pod()), a.pod_ip());

    // A clean shutdown keeps the table: pods keep their NAT until weftd is back.
    let running = cluster.nodes[0].running.take().unwrap();
    running.stop().unwrap();
    let after = cluster.nodes[0]
        .ns
        .run("nft", &["list", "table", "ip", "weft"])
        .unwrap();
    assert!(after.contains("masquerade"), "{after}");
    // A data plane started without --ip-masq removes what an earlier one left.
    cluster.nodes[0].settings.ip_masq = false;
    cluster.nodes[0].start().unwrap();
    // start() returns once the devices exist, and they were kept: wait for the rules.
    let n1 = Netns::existing(cluster.nodes[0].ns.name());
    wait_until("the leftover table to go", Duration::from_secs(10), || {
        n1.run("nft", &["list", "tables"])
            .is_ok_and(|tables| !tables.contains("weft"))
    })
    .unwrap();

    // --cleanup-on-exit removes the table and the forward rules, and only them.
    let n2 = Netns::existing(cluster.nodes[1].ns.name());
    let forward = n2.run("iptables-nft", &["-w", "-S"]).unwrap();
    assert!(forward.contains("-j WEFT-FWD"), "{forward}");
    let running = cluster.nodes[1].running.take().unwrap();
    running.stop().unwrap();
    let after = n2.run("nft", &["list", "tables"]).unwrap();
    assert!(!after.contains("weft"), "{after}");
    let forward = n2.run("iptables-nft", &["-w", "-S"]).unwrap();
    assert!(!forward.contains("WEFT-FWD"), "{forward}");
    assert!(forward.contains("-P FORWARD DROP"), "{forward}");

    // Forward rules left by a stop without --cleanup-on-exit go when a data plane starts
    // with --forward-rules=false.
    cluster.nodes[1].settings.cleanup_on_exit = false;
    cluster.nodes[1].start().unwrap();
    let rules = || n2.run("iptables-nft", &["-w", "-S"]).unwrap_or_default();
    wait_until("the forward rules", Duration::from_secs(10), || {
        rules().contains("-j WEFT-FWD")
    })
    .unwrap();
    cluster.nodes[1].running.take().unwrap().stop().unwrap();
    assert!(rules().contains("-j WEFT-FWD"), "{}", rules());
    cluster.nodes[1].settings.forward_rules = false;
    cluster.nodes[1].start().unwrap();
    wait_until(
        "the leftover forward rules to go",
        Duration::from_secs(10),
        || !rules().contains("WEFT-FWD"),
    )
    .unwrap();
}
