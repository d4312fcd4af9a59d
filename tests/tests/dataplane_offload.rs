//! Outer UDP checksums on weft's default VXLAN transmit path (TAP + tc program): on a
//! kernel whose TAP takes UDP-tunnel GSO (Linux ≥ 6.17) the worker writes VXLAN
//! super-packets as `SKB_GSO_UDP_TUNNEL_CSUM`, so every segment on the wire carries a
//! correct, non-zero UDP checksum (what a receiver's UDP GRO needs to merge them);
//! `WEFT_TAP_TUNNEL_OFFLOAD=off` keeps the `bpf_skb_adjust_room` fallback, whose
//! segments carry checksum 0. Both deliver the bytes intact.
//!
//! The capture's sender is made NIC-like (MTU frames, checksums completed by the
//! sender) with [`UnderlayMode::set_node_offloads`], without the lab's XDP redirect
//! (whose frames a capture on the bridge port would not see). Then, on the lab's `nic`
//! underlay ([`UnderlayMode::Nic`]: frames rebuilt as fresh skbs before the receiver's
//! GRO), the receiving node's UDP socket gets GRO-merged trains: far fewer datagrams
//! (`Udp: InDatagrams`) than frames on its `eth0`; with the fallback's checksum 0, one
//! datagram per frame.
//!
//! One test function only: the fallback is chosen through the environment, which all
//! in-process data planes of this test binary share.

mod dataplane_support;

use std::net::Ipv4Addr;
use std::time::Duration;

use dataplane_support::{concurrent_transfers, netconf, wait_ping, Cluster, Node};
use weft_proto::checksum;
use weft_proto::ipv4::protocol;
use weft_tests::lab::underlay::{link_counters, UnderlayMode};
use weft_tests::netns::Netns;
use weft_tests::require_root;

const VXLAN: &str = r#"{"Type":"vxlan","VNI":1}"#;
/// `weft_daemon::dataplane::tap_encap::TUNNEL_OFFLOAD_ENV`.
const TUNNEL_OFFLOAD_ENV: &str = "WEFT_TAP_TUNNEL_OFFLOAD";
const PACKETS: usize = 30;

/// The IPv4 packets of a pcap file (Ethernet link type, as tcpdump writes it).
fn pcap_ipv4_packets(file: &[u8]) -> Vec<Vec<u8>> {
    assert!(file.len() >= 24, "no pcap header");
    assert_eq!(
        &file[..4],
        &0xa1b2_c3d4u32.to_le_bytes(),
        "not a little-endian pcap"
    );
    let mut packets = Vec::new();
    let mut at = 24;
    while at + 16 <= file.len() {
        let captured = u32::from_le_bytes(file[at + 8..at + 12].try_into().unwrap()) as usize;
        let frame = &file[at + 16..at + 16 + captured];
        packets.push(frame[14..].to_vec());
        at += 16 + captured;
    }
    packets
}

/// The outer UDP checksum field of a captured VXLAN packet, and whether it verifies;
/// also checks that the inner TCP checksum is complete.
fn outer_checksum(packet: &[u8]) -> (u16, bool) {
    let ihl = usize::from(packet[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
    assert_eq!(packet.len(), total, "capture cut the packet short");
    let src = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
    let dst = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
    let udp = &packet[ihl..total];
    let field = u16::from_be_bytes([udp[6], udp[7]]);
    let verifies = checksum::verify_transport(src, dst, protocol::UDP, udp);
    // VXLAN (8) + inner Ethernet (14), then the inner IPv4/TCP segment.
    let inner = &udp[8 + 8 + 14..];
    let inner_ihl = usize::from(inner[0] & 0x0f) * 4;
    let inner_src = Ipv4Addr::new(inner[12], inner[13], inner[14], inner[15]);
    let inner_dst = Ipv4Addr::new(inner[16], inner[17], inner[18], inner[19]);
    assert_eq!(inner[9], protocol::TCP);
    assert!(
        checksum::verify_transport(inner_src, inner_dst, protocol::TCP, &inner[inner_ihl..]),
        "inner TCP checksum incomplete"
    );
    (field, verifies)
}

/// Streams node 1 → node 2 while capturing node 1's full-sized VXLAN packets on the
/// underlay bridge; returns their outer UDP checksum fields and whether each verifies.
fn capture_outer_checksums(cluster: &Cluster, a: &Node, b: &Node) -> Vec<(u16, bool)> {
    // NIC-like: MTU frames, checksums completed by the sender, so a capture on the
    // underlay sees the wire's bytes.
    UnderlayMode::Nic.set_node_offloads(&a.ns).unwrap();
    wait_ping(a.pod(), b.pod_ip(), Duration::from_secs(10)).unwrap();
    let filter = format!(
        "udp port 8472 and src host {} and greater 1400",
        a.public_ip()
    );
    let count = PACKETS.to_string();
    // To a file: tcpdump blocks once a pipe is full, and full packets in hex fill it.
    let file = std::env::temp_dir().join(format!("{}-vxlan.pcap", a.ns.name()));
    let path = file.to_str().unwrap();
    let capture = cluster
        .underlay
        .start_capture(&[
            "-i", "n1", "-nn", "-s", "0", "-c", &count, "-w", path, &filter,
        ])
        .unwrap();
    concurrent_transfers(a, b, 2, 0, 8 << 20);
    capture
        .wait_done(
            "full-sized VXLAN packets from node 1",
            Duration::from_secs(10),
        )
        .unwrap();
    let bytes = std::fs::read(&file).unwrap();
    let _ = std::fs::remove_file(&file);
    let packets = pcap_ipv4_packets(&bytes);
    assert_eq!(packets.len(), PACKETS);
    packets.iter().map(|p| outer_checksum(p)).collect()
}

/// `Udp: InDatagrams` of the namespace `ns` (datagrams handed to UDP sockets; a GRO
/// train counts once).
fn udp_in_datagrams(ns: &Netns) -> u64 {
    let snmp = ns.run("cat", &["/proc/net/snmp"]).unwrap();
    let mut udp = snmp.lines().filter(|line| line.starts_with("Udp: "));
    let (names, values) = (udp.next().unwrap(), udp.next().unwrap());
    let at = names
        .split_whitespace()
        .position(|name| name == "InDatagrams")
        .unwrap();
    values.split_whitespace().nth(at).unwrap().parse().unwrap()
}

/// On the `nic` underlay, streams node 1 → node 2 and returns node 2's underlay frames
/// received per datagram its sockets got (1 without GRO merges).
fn frames_per_datagram(cluster: &Cluster, a: &Node, b: &Node) -> f64 {
    let underlay = UnderlayMode::Nic
        .apply_nodes(&cluster.underlay, &[&a.ns, &b.ns], 8472)
        .unwrap();
    wait_ping(a.pod(), b.pod_ip(), Duration::from_secs(10)).unwrap();
    let (frames, datagrams) = (
        link_counters(&b.ns, "eth0").unwrap(),
        udp_in_datagrams(&b.ns),
    );
    concurrent_transfers(a, b, 1, 0, 16 << 20);
    let frames = link_counters(&b.ns, "eth0").unwrap().rx_packets - frames.rx_packets;
    let datagrams = udp_in_datagrams(&b.ns) - datagrams;
    let redirected = underlay.redirected().unwrap().unwrap_or(0);
    assert!(
        redirected >= frames / 2,
        "XDP redirected {redirected} of {frames} frames"
    );
    eprintln!("nic underlay: {frames} frames, {datagrams} datagrams at node 2");
    frames as f64 / datagrams.max(1) as f64
}

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn default_vxlan_path_sends_correct_outer_udp_checksums() {
    if !require_root("default_vxlan_path_sends_correct_outer_udp_checksums") {
        return;
    }
    std::env::remove_var(TUNNEL_OFFLOAD_ENV);
    let cluster = Cluster::weft(2, &netconf(VXLAN)).unwrap();
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    let offloads = a.metrics().dataplane().unwrap().offloads;
    assert!(offloads.kernel_encap, "{offloads:?}");
    if !offloads.udp_tunnel_csum {
        eprintln!(
            "SKIPPED default_vxlan_path_sends_correct_outer_udp_checksums: this kernel's \
             TAP has no UDP-tunnel GSO (Linux 6.17+)"
        );
        return;
    }
    let checksums = capture_outer_checksums(&cluster, a, b);
    for (field, verifies) in &checksums {
        assert!(*field != 0 && *verifies, "{checksums:x?}");
    }
    // And the other way, whole super-packets over veth, both nodes on this path.
    concurrent_transfers(a, b, 0, 2, 8 << 20);
    let merged = frames_per_datagram(&cluster, a, b);
    assert!(
        merged >= 4.0,
        "{merged:.1} frames per datagram: GRO did not merge"
    );
    drop(cluster);

    // The fallback: adjust_room, outer checksum 0 (valid for VXLAN over IPv4).
    std::env::set_var(TUNNEL_OFFLOAD_ENV, "off");
    let fallback = Cluster::weft(2, &netconf(VXLAN));
    std::env::remove_var(TUNNEL_OFFLOAD_ENV);
    let cluster = fallback.unwrap();
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    let offloads = a.metrics().dataplane().unwrap().offloads;
    assert!(
        offloads.kernel_encap && !offloads.udp_tunnel_csum,
        "{offloads:?}"
    );
    let checksums = capture_outer_checksums(&cluster, a, b);
    assert!(
        checksums.iter().all(|&(field, _)| field == 0),
        "{checksums:x?}"
    );
    // Checksum 0: no UDP GRO, a datagram per frame.
    let merged = frames_per_datagram(&cluster, a, b);
    assert!(
        merged < 1.5,
        "{merged:.1} frames per datagram with outer checksum 0"
    );
}
