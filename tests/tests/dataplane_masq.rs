//! `--ip-masq`: a pod reaching a host outside the cluster network is seen with the
//! node's address; pod ↔ pod traffic keeps pod addresses; weft's nftables table is gone
//! after a clean shutdown.

mod dataplane_support;

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::time::Duration;

use dataplane_support::{in_netns, netconf, wait_ping, Cluster};
use weft_tests::link::{End, Veth};
use weft_tests::netns::Netns;
use weft_tests::require_root;

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
    let mut cluster = Cluster::weft_with(
        2,
        &netconf(r#"{"Type":"vxlan","VNI":1,"Port":8472}"#),
        |settings| settings.ip_masq = true,
    )
    .unwrap();
    let table = cluster.nodes[0]
        .ns
        .run("nft", &["list", "table", "ip", "weft"])
        .unwrap();
    assert!(table.contains("masquerade"), "{table}");

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

    // Clean shutdown removes the table.
    let running = cluster.nodes[0].running.take().unwrap();
    running.stop().unwrap();
    let after = cluster.nodes[0].ns.run("nft", &["list", "tables"]).unwrap();
    assert!(!after.contains("weft"), "{after}");
}
