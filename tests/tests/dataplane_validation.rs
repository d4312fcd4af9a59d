//! Receive validation: encapsulated packets from a non-leased source, with a wrong VNI,
//! or with a spoofed inner source are dropped and counted by reason, while traffic from
//! valid peers keeps flowing.

mod dataplane_support;

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::Duration;

use dataplane_support::{in_netns, netconf, wait_ping, Cluster};
use weft_daemon::metrics::DropReason;
use weft_proto::vxlan::{self, VxlanEncap, PAYLOAD_HEADROOM};
use weft_proto::MacAddr;
use weft_tests::link::{End, Veth};
use weft_tests::netns::Netns;
use weft_tests::{require_root, wait_until};

/// A VXLAN datagram carrying an ICMP echo request `src → dst`.
fn vxlan_datagram(vni: u32, src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let mut datagram = vec![0u8; PAYLOAD_HEADROOM];
    let mut ip = [0u8; 28];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&28u16.to_be_bytes());
    ip[8] = 64;
    ip[9] = 1;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    ip[20] = 8; // echo request
    datagram.extend_from_slice(&ip);
    let encap = VxlanEncap {
        vni,
        src_mac: MacAddr([2, 0, 0, 0, 0, 0x99]),
        dst_mac: MacAddr([0x02, 0x77, 0, 0, 0, 1]),
    };
    vxlan::encap_payload(&mut datagram, PAYLOAD_HEADROOM, ip.len(), &encap).unwrap();
    datagram
}

/// Sends `count` copies of `datagram` from namespace `ns` to `to`.
fn send_from(ns: &Netns, to: SocketAddrV4, datagram: Vec<u8>, count: usize) {
    in_netns(ns.name(), move || {
        let socket = UdpSocket::bind("0.0.0.0:0")?;
        for _ in 0..count {
            socket.send_to(&datagram, to)?;
        }
        Ok(())
    })
    .join()
    .unwrap()
    .unwrap();
}

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn invalid_encapsulated_packets_are_dropped_and_counted() {
    if !require_root("invalid_encapsulated_packets_are_dropped_and_counted") {
        return;
    }
    let cluster = Cluster::weft(2, &netconf(r#"{"Type":"vxlan","VNI":1,"Port":8472}"#)).unwrap();
    let (victim, peer) = (&cluster.nodes[0], &cluster.nodes[1]);
    wait_ping(peer.pod(), victim.pod_ip(), Duration::from_secs(10)).unwrap();
    let target = SocketAddrV4::new(victim.public_ip(), 8472);
    let counters = victim.metrics();
    let before: Vec<u64> = DropReason::ALL.iter().map(|r| counters.drops(*r)).collect();

    // A host on the underlay that holds no lease.
    let stranger = Netns::new(&format!("{}-x", cluster.prefix)).unwrap();
    let _link = Veth::create(
        End::with_addr(&stranger, "eth0", "192.0.2.50/24"),
        End::new(&cluster.underlay, "x50"),
        None,
    )
    .unwrap();
    cluster
        .underlay
        .ip(&["link", "set", "x50", "master", "br0"])
        .unwrap();
    let valid_inner = vxlan_datagram(1, peer.pod_ip(), victim.pod_ip());
    send_from(&stranger, target, valid_inner.clone(), 5);

    // The leased peer, but the wrong VNI; then a spoofed inner source.
    send_from(
        &peer.ns,
        target,
        vxlan_datagram(2, peer.pod_ip(), victim.pod_ip()),
        6,
    );
    let spoofed = Ipv4Addr::new(10, 244, 9, 9);
    send_from(
        &peer.ns,
        target,
        vxlan_datagram(1, spoofed, victim.pod_ip()),
        7,
    );
    // Inner destination not on this node.
    let elsewhere = Ipv4Addr::new(10, 244, 2, 77);
    send_from(
        &peer.ns,
        target,
        vxlan_datagram(1, peer.pod_ip(), elsewhere),
        8,
    );

    let expect = [
        (DropReason::RxUnknownSource, 5),
        (DropReason::RxWrongVni, 6),
        (DropReason::RxSpoofedSource, 7),
        (DropReason::RxDstNotLocal, 8),
    ];
    for (reason, count) in expect {
        let index = DropReason::ALL.iter().position(|r| *r == reason).unwrap();
        wait_until(
            &format!("{} drops counted", reason.name()),
            Duration::from_secs(5),
            || counters.drops(reason) >= before[index] + count,
        )
        .unwrap();
        assert_eq!(
            counters.drops(reason),
            before[index] + count,
            "{}",
            reason.name()
        );
    }
    // Valid peers are not affected.
    wait_ping(peer.pod(), victim.pod_ip(), Duration::from_secs(5)).unwrap();
    wait_ping(victim.pod(), peer.pod_ip(), Duration::from_secs(5)).unwrap();
}
