//! weft ↔ weft over userspace IPIP (the kernel here has no ipip module, so weft's raw
//! socket is the only IPIP on the machine): three nodes, every pod reaches every other,
//! 100 MB over TCP arrives intact, and the wire format is IPv4 protocol 4 between the
//! nodes' PublicIPs.

mod dataplane_support;

use std::time::Duration;

use dataplane_support::{netconf, ping_once, tcp_transfer, wait_ping, Cluster};
use weft_tests::{require_root, wait_until};

const IPIP: &str = r#"{"Type":"ipip"}"#;

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn three_weft_nodes_over_ipip() {
    if !require_root("three_weft_nodes_over_ipip") {
        return;
    }
    let cluster = Cluster::weft(3, &netconf(IPIP)).unwrap();
    cluster
        .wait_all_pods_reach_each_other(Duration::from_secs(10))
        .unwrap();
    let routes = cluster.nodes[0]
        .ns
        .ip(&["route", "show", "proto", "87"])
        .unwrap();
    assert!(routes.contains("10.244.2.0/24 dev weft.ipip"), "{routes}");

    let (a, b) = (&cluster.nodes[1], &cluster.nodes[0]);
    let (sent, received, length) = tcp_transfer(a.pod(), b.pod(), b.pod_ip(), 100 << 20).unwrap();
    assert_eq!(length, 100 << 20);
    assert_eq!(sent, received, "payload hash differs");
}

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn ipip_on_the_wire_is_protocol_4_between_public_ips() {
    if !require_root("ipip_on_the_wire_is_protocol_4_between_public_ips") {
        return;
    }
    let cluster = Cluster::weft(2, &netconf(IPIP)).unwrap();
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    wait_ping(a.pod(), b.pod_ip(), Duration::from_secs(10)).unwrap();

    // Capture on node 1's port of the underlay bridge.
    let mut tcpdump = cluster
        .underlay
        .start_capture(&["-i", "n1", "-nn", "-l", "-c", "4", "ip proto 4"])
        .unwrap();

    wait_until(
        "tcpdump to see 4 IPIP packets",
        Duration::from_secs(20),
        || {
            ping_once(a.pod(), b.pod_ip());
            tcpdump.is_done()
        },
    )
    .unwrap();
    let text = tcpdump.finish();
    let request = format!(
        "IP {} > {}: IP {} > {}: ICMP echo request",
        a.public_ip(),
        b.public_ip(),
        a.pod_ip(),
        b.pod_ip()
    );
    let reply = format!(
        "IP {} > {}: IP {} > {}: ICMP echo reply",
        b.public_ip(),
        a.public_ip(),
        b.pod_ip(),
        a.pod_ip()
    );
    assert!(text.contains(&request), "no {request:?} in:\n{text}");
    assert!(text.contains(&reply), "no {reply:?} in:\n{text}");
}

/// IPIP receive spreads over the workers: of the raw sockets `io::ipip_sockets` opens,
/// each keeps only its share of the inner flows, so every packet is queued on exactly
/// one of them, every packet of one flow on the same one (ICMP echoes too, whose third
/// word changes with each sequence number), different flows on different ones, and a
/// packet too short for the inner headers on the first.
#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn ipip_receive_is_shared_among_the_sockets_by_inner_flow() {
    if !require_root("ipip_receive_is_shared_among_the_sockets_by_inner_flow") {
        return;
    }
    let ns =
        weft_tests::netns::Netns::new(&format!("{}-ipipsh", weft_tests::run_prefix())).unwrap();
    ns.ip(&["link", "set", "lo", "up"]).unwrap();
    let landed = weft_tests::netns::spawn_in(ns.name(), || {
        use std::os::fd::AsRawFd;
        let sockets = weft_daemon::dataplane::io::ipip_sockets(4)?;
        // SAFETY: plain socket(2) call; the descriptor is owned below.
        let sender = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_IPIP) };
        anyhow::ensure!(
            sender >= 0,
            "raw socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: `sender` was just opened and is owned by nothing else.
        let sender =
            unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(sender) };
        let inner = |proto: u8, third_word: [u8; 4], src: u8| {
            let mut p = vec![0u8; 40];
            p[0] = 0x45;
            p[2..4].copy_from_slice(&40u16.to_be_bytes());
            p[8] = 64;
            p[9] = proto;
            p[12..16].copy_from_slice(&[10, 244, src, 2]);
            p[16..20].copy_from_slice(&[10, 244, 9, 2]);
            p[20..24].copy_from_slice(&third_word);
            p
        };
        // (label, inner packet): 32 TCP flows, 8 echoes of one ICMP flow, one runt.
        let mut packets: Vec<(String, Vec<u8>)> = (0..32u16)
            .map(|port| {
                (
                    format!("tcp{port}"),
                    inner(6, [0x9c, 0x40, (port >> 8) as u8, port as u8], 1),
                )
            })
            .collect();
        packets.extend((0..8u8).map(|seq| ("icmp".to_owned(), inner(1, [8, 0, 0x12, seq], 3))));
        packets.push(("runt".to_owned(), vec![0x45, 0, 0, 8, 0, 0, 0, 0]));
        // SAFETY: all-zero is a valid sockaddr_in.
        let mut to: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        to.sin_family = libc::AF_INET as libc::sa_family_t;
        to.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
        for (_, packet) in &packets {
            // SAFETY: `packet` and `to` are live for the call.
            let rc = unsafe {
                libc::sendto(
                    sender.as_raw_fd(),
                    packet.as_ptr().cast(),
                    packet.len(),
                    0,
                    (&to as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            };
            anyhow::ensure!(rc >= 0, "sendto: {}", std::io::Error::last_os_error());
        }
        // Which socket each packet landed on, identified by its bytes.
        let mut landed: Vec<(String, usize)> = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while landed.len() < packets.len() && std::time::Instant::now() < deadline {
            for (index, socket) in sockets.iter().enumerate() {
                let mut buf = [0u8; 256];
                // SAFETY: `buf` is live and writable for its length.
                let n = unsafe {
                    libc::recv(
                        socket.as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        libc::MSG_DONTWAIT,
                    )
                };
                if n > 20 {
                    let got = &buf[20..n as usize];
                    if let Some((label, _)) = packets.iter().find(|(_, p)| p.as_slice() == got) {
                        landed.push((label.clone(), index));
                    }
                }
            }
        }
        Ok(landed)
    })
    .join()
    .unwrap()
    .unwrap();
    assert_eq!(
        landed.len(),
        32 + 8 + 1,
        "each packet on exactly one socket: {landed:?}"
    );
    let on = |label: &str| -> std::collections::BTreeSet<usize> {
        landed
            .iter()
            .filter(|(l, _)| l == label)
            .map(|(_, i)| *i)
            .collect()
    };
    assert_eq!(on("icmp").len(), 1, "one ICMP flow, one socket: {landed:?}");
    assert_eq!(on("runt"), [0].into(), "{landed:?}");
    let tcp_sockets: std::collections::BTreeSet<usize> = landed
        .iter()
        .filter(|(l, _)| l.starts_with("tcp"))
        .map(|(_, i)| *i)
        .collect();
    assert!(tcp_sockets.len() >= 3, "32 flows over {tcp_sockets:?} only");
}
