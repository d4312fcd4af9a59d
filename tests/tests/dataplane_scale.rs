//! A thousand peers: a burst of lease events is applied as one (one table swap, one
//! reconcile), every peer gets its route, and removing them all removes every route.

mod dataplane_support;

use std::net::Ipv4Addr;
use std::time::Duration;

use dataplane_support::{netconf, Cluster};
use ipnet::Ipv4Net;
use weft_daemon::lease::{Peer, PeerBackend, PeerEvent};
use weft_tests::{require_root, wait_until};

const PEERS: u32 = 1000;

fn route_count(cluster: &Cluster) -> usize {
    cluster.nodes[0]
        .ns
        .ip(&["route", "show", "proto", "87"])
        .map(|routes| routes.lines().count())
        .unwrap_or(0)
}

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn a_thousand_peers_get_routes_and_lose_them() {
    if !require_root("a_thousand_peers_get_routes_and_lose_them") {
        return;
    }
    // /26 subnets: 1024 of them fit in the lab's 10.244.0.0/16.
    let conf = netconf(r#"{"Type":"vxlan","VNI":1,"Port":8472}"#);
    let conf = weft_config::NetConf {
        subnet_len: 26,
        ..conf
    };
    let mut cluster = Cluster::new().unwrap();
    let i = cluster.add_node(1, &conf).unwrap();
    cluster.nodes[i].lease.subnet = "10.244.0.0/26".parse().unwrap();
    cluster.nodes[i].start().unwrap();
    let peers: Vec<Peer> = (1..=PEERS)
        .map(|n| Peer {
            subnet: Ipv4Net::new(
                Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 0, 0)) + n * 64),
                26,
            )
            .unwrap(),
            // Peers on another underlay: always tunnelled.
            public_ip: Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 51, 100, 0)) + n % 250 + 1),
            backend: PeerBackend::Vxlan {
                vni: 1,
                vtep_mac: [2, 0, 0, 0, (n >> 8) as u8, n as u8],
            },
        })
        .collect();
    for peer in &peers {
        cluster.nodes[i]
            .send(PeerEvent::Upsert(peer.clone()))
            .unwrap();
    }
    wait_until("a route per peer", Duration::from_secs(30), || {
        route_count(&cluster) == PEERS as usize
    })
    .unwrap();
    for peer in &peers {
        cluster.nodes[i]
            .send(PeerEvent::Removed(peer.subnet))
            .unwrap();
    }
    wait_until("all routes gone", Duration::from_secs(30), || {
        route_count(&cluster) == 0
    })
    .unwrap();
}
