//! Small UDP datagrams, the per-packet path: a weft sender puts a flow's equal-sized
//! datagrams into `UDP_SEGMENT` trains and a weft receiver writes them to TUN as one
//! `GSO_UDP_L4` super-packet. Whatever is merged or cut on the way, every datagram must
//! arrive once, intact and in order — weft to weft, and to and from a node whose
//! overlay is the kernel's vxlan (which receives the trains segmented and sends
//! datagrams that weft may merge).

mod dataplane_support;

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use dataplane_support::{netconf, wait_ping, Cluster};
use weft_tests::netns::{spawn_in, Netns};
use weft_tests::require_root;

const VXLAN: &str = r#"{"Type":"vxlan","VNI":1,"Port":8472}"#;
/// Bursts sent back to back, each waited for before the next (so no socket buffer
/// overflows and any loss is the data plane's).
const BURSTS: u32 = 60;
const BURST: u32 = 64;
/// Payload bytes per datagram (iperf3's `-l 64`); every 7th burst ends in a shorter
/// datagram, the case that ends a train.
const PAYLOAD: usize = 64;

/// The payload of datagram `seq`: its number, then bytes derived from it.
fn payload(seq: u32, len: usize) -> Vec<u8> {
    let mut p = vec![0u8; len];
    p[..4].copy_from_slice(&seq.to_be_bytes());
    for (i, b) in p[4..].iter_mut().enumerate() {
        *b = (seq as usize * 31 + i * 7) as u8;
    }
    p
}

fn datagram_len(seq: u32) -> usize {
    let burst = seq / BURST;
    if burst % 7 == 3 && seq % BURST == BURST - 1 {
        PAYLOAD - 20
    } else {
        PAYLOAD
    }
}

/// Sends the bursts from `from` to `to_ip` and checks on the receiving side that every
/// datagram arrived exactly once, intact and in order.
fn udp_bursts_arrive_intact(from: &Netns, to: &Netns, to_ip: Ipv4Addr) -> anyhow::Result<()> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (progress_tx, progress_rx) = std::sync::mpsc::channel::<u32>();
    let receiver = spawn_in(to.name(), move || -> anyhow::Result<u32> {
        let socket = UdpSocket::bind(SocketAddrV4::new(to_ip, 0))?;
        // Room for several bursts, whatever the default buffer.
        nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::RcvBuf, &(1 << 20))?;
        socket.set_read_timeout(Some(Duration::from_secs(5)))?;
        ready_tx.send(socket.local_addr()?.port())?;
        let mut buf = [0u8; 2048];
        let mut next = 0u32;
        while next < BURSTS * BURST {
            let len = socket
                .recv(&mut buf)
                .with_context(|| format!("waiting for datagram {next}"))?;
            let got = &buf[..len];
            anyhow::ensure!(len >= 4, "a {len}-byte datagram (expected {next})");
            let seq = u32::from_be_bytes(got[..4].try_into().expect("4 bytes"));
            anyhow::ensure!(
                seq == next,
                "datagram {seq} arrived where {next} was due (lost or reordered)"
            );
            anyhow::ensure!(
                got == payload(seq, datagram_len(seq)).as_slice(),
                "datagram {seq} arrived with other bytes ({len} bytes)"
            );
            next += 1;
            if next.is_multiple_of(BURST) {
                progress_tx.send(next).ok();
            }
        }
        Ok(next)
    });
    let port = ready_rx
        .recv_timeout(Duration::from_secs(10))
        .context("receiver did not start")?;
    let sender = spawn_in(from.name(), move || -> anyhow::Result<()> {
        let socket = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))?;
        socket.connect(SocketAddrV4::new(to_ip, port))?;
        for burst in 0..BURSTS {
            for seq in burst * BURST..(burst + 1) * BURST {
                socket.send(&payload(seq, datagram_len(seq)))?;
            }
            // The receiver reports each complete burst; without that within a deadline
            // something was lost (the receiver names what).
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match progress_rx.recv_timeout(left) {
                    Ok(done) if done >= (burst + 1) * BURST => break,
                    Ok(_) => continue,
                    Err(_) => anyhow::bail!("burst {burst} not received within 10 s"),
                }
            }
        }
        Ok(())
    });
    let sent = sender.join().expect("sender thread");
    let received = receiver.join().expect("receiver thread");
    // The receiver's error says what went wrong; the sender's only that it waited.
    let received = received?;
    sent?;
    anyhow::ensure!(received == BURSTS * BURST);
    Ok(())
}

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn small_udp_datagrams_arrive_once_intact_and_in_order_between_weft_nodes() {
    if !require_root("small_udp_datagrams_arrive_once_intact_and_in_order_between_weft_nodes") {
        return;
    }
    let cluster = Cluster::weft(2, &netconf(VXLAN)).unwrap();
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    wait_ping(a.pod(), b.pod_ip(), Duration::from_secs(10)).unwrap();
    udp_bursts_arrive_intact(a.pod(), b.pod(), b.pod_ip()).unwrap();
    udp_bursts_arrive_intact(b.pod(), a.pod(), a.pod_ip()).unwrap();
    let (tx, rx) = (a.metrics().snapshot(), b.metrics().snapshot());
    eprintln!(
        "sender: {} packets in {} sends; receiver: {} packets in {} TUN writes",
        tx.tx_packets, tx.tx_syscalls, rx.rx_packets, rx.tun_writes
    );
    // Each datagram counted once on each side, whatever it travelled in.
    let expected = u64::from(BURSTS * BURST);
    assert!(tx.tx_packets >= expected, "{tx:?}");
    assert!(rx.rx_packets >= expected, "{rx:?}");
    let rx_drops: u64 = rx
        .drops
        .iter()
        .filter(|(reason, _)| reason.starts_with("rx_"))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(rx_drops, 0, "{rx:?}");
}

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn small_udp_datagrams_arrive_once_intact_and_in_order_to_and_from_kernel_vxlan() {
    if !require_root("small_udp_datagrams_arrive_once_intact_and_in_order_to_and_from_kernel_vxlan")
    {
        return;
    }
    let conf = netconf(VXLAN);
    let (cluster, weft, kernel) = Cluster::weft_and_kernel(&conf).unwrap();
    let (w, k) = (&cluster.nodes[weft], &cluster.nodes[kernel]);
    wait_ping(w.pod(), k.pod_ip(), Duration::from_secs(10)).unwrap();
    udp_bursts_arrive_intact(w.pod(), k.pod(), k.pod_ip()).unwrap();
    udp_bursts_arrive_intact(k.pod(), w.pod(), w.pod_ip()).unwrap();
    let counters = w.metrics().snapshot();
    let rx_drops: u64 = counters
        .drops
        .iter()
        .filter(|(reason, _)| reason.starts_with("rx_"))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(rx_drops, 0, "{counters:?}");
}
