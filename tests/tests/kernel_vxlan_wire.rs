//! `weft_proto`'s VXLAN frame builder against the Linux kernel's vxlan device.
//!
//! Namespace A gets a kernel vxlan device programmed the way flanneld programs
//! `flannel.1` (VNI 1, port 8472, `nolearning`, a `.0/32` address, an onlink route, a
//! permanent neighbour and an fdb entry), with an underlay veth 192.0.2.1/24 to
//! namespace B (192.0.2.2/24). A UDP datagram sent from A into the overlay is captured
//! in B with an AF_PACKET socket; `weft_proto` must decode the kernel's frame, and
//! must build the same bytes for the same inner packet: exactly the same when given
//! the two values the kernel picks per packet (UDP source port, IP ID), and the same
//! apart from those fields (and the IP checksum over them) when it picks them itself.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::socket::{
    recv, setsockopt, socket, sockopt, AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType,
};
use nix::sys::time::TimeVal;
use weft_proto::ipv4::OuterIpv4;
use weft_proto::udp::UdpChecksum;
use weft_proto::vxlan::{self, VxlanEncap, VxlanFrame};
use weft_proto::{flow, MacAddr, VXLAN_HEADROOM};
use weft_tests::link::{self, End, Veth};
use weft_tests::netns::{self, Netns};
use weft_tests::{require_root, run_prefix};

const VTEP_A: &str = "02:00:0a:f4:01:00";
const VTEP_B: &str = "02:00:0a:f4:02:00";
const INNER_DST: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 5);
const MESSAGE: &str = "weft-proto kernel wire test";

/// An AF_PACKET socket receiving every frame in namespace `ns` (opened on a thread
/// that entered the namespace; the socket stays bound to it).
fn packet_socket_in(ns: &str) -> anyhow::Result<OwnedFd> {
    netns::spawn_in(ns, move || -> anyhow::Result<OwnedFd> {
        let fd = socket(
            AddressFamily::Packet,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::EthAll,
        )
        .context("AF_PACKET socket")?;
        setsockopt(&fd, sockopt::ReceiveTimeout, &TimeVal::new(0, 200_000))
            .context("SO_RCVTIMEO")?;
        Ok(fd)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("namespace thread panicked"))?
}

/// Receives frames until one is a VXLAN datagram to port 8472, or the deadline.
fn capture_vxlan_frame(fd: &OwnedFd, deadline: Duration) -> anyhow::Result<Vec<u8>> {
    let until = Instant::now() + deadline;
    let mut buf = vec![0u8; 65536];
    while Instant::now() < until {
        let n = match recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
            Ok(n) => n,
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e).context("recv on AF_PACKET socket"),
        };
        let frame = &buf[..n];
        // IPv4, no options, UDP, destination port 8472.
        let is_vxlan = n > 42
            && frame[12..14] == [0x08, 0x00]
            && frame[14] == 0x45
            && frame[23] == 17
            && frame[36..38] == vxlan::DEFAULT_PORT.to_be_bytes();
        if is_vxlan {
            return Ok(frame.to_vec());
        }
    }
    anyhow::bail!("no VXLAN frame arrived in namespace B within {deadline:?}")
}

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn proto_builds_the_kernels_vxlan_frame() {
    if !require_root("proto_builds_the_kernels_vxlan_frame") {
        return;
    }
    let prefix = run_prefix();
    let a = Netns::new(&format!("{prefix}-a")).unwrap();
    let b = Netns::new(&format!("{prefix}-b")).unwrap();
    let _underlay = Veth::create(
        End::with_addr(&a, "ula", "192.0.2.1/24"),
        End::with_addr(&b, "ulb", "192.0.2.2/24"),
        None,
    )
    .unwrap();
    a.sh(&format!(
        "ip link add vx1 address {VTEP_A} type vxlan id 1 local 192.0.2.1 dev ula dstport 8472 nolearning && \
         ip addr add 10.244.1.0/32 dev vx1 && ip link set vx1 up && \
         ip route add 10.244.2.0/24 via 10.244.2.0 dev vx1 onlink && \
         ip neigh replace 10.244.2.0 lladdr {VTEP_B} dev vx1 nud permanent && \
         bridge fdb append {VTEP_B} dev vx1 dst 192.0.2.2"
    ))
    .unwrap();
    let capture = packet_socket_in(b.name()).unwrap();

    a.run(
        "bash",
        &[
            "-c",
            &format!("printf %s '{MESSAGE}' > /dev/udp/{INNER_DST}/5000"),
        ],
    )
    .unwrap();
    let mut kernel = capture_vxlan_frame(&capture, Duration::from_secs(10)).unwrap();

    // The device checksums its UDP datagrams (`udpcsum`, the default, which flanneld
    // keeps). Checksums can still be left to the "NIC": the inner datagram leaves the
    // socket CHECKSUM_PARTIAL (only the pseudo-header sum in its field), and the outer
    // checksum is then computed by local checksum offload as if the inner one were
    // complete. veth passes such frames on unfinished, so finish them as a NIC would
    // (inner first, it is covered by the outer one), with an independent RFC 1071 sum,
    // to get the bytes a physical wire would carry.
    let details = a.ip(&["-d", "link", "show", "vx1"]).unwrap();
    assert!(details.contains(" udpcsum "), "{details}");
    let inner_was_partial = complete_partial_udp_checksum(&mut kernel, INNER_IP);
    let outer_was_partial = complete_partial_udp_checksum(&mut kernel, OUTER_IP);
    eprintln!(
        "checksums left partial for offload: inner {inner_was_partial}, outer {outer_was_partial}"
    );

    // proto decodes the kernel's frame.
    let decoded = vxlan::decap_frame(&kernel).unwrap();
    let vtep_a: MacAddr = VTEP_A.parse().unwrap();
    let vtep_b: MacAddr = VTEP_B.parse().unwrap();
    let ula: MacAddr = link::mac_of(&a, "ula").unwrap().parse().unwrap();
    let ulb: MacAddr = link::mac_of(&b, "ulb").unwrap().parse().unwrap();
    assert_eq!(decoded.vxlan.vni, 1);
    assert_eq!(
        (decoded.vxlan.inner_src_mac, decoded.vxlan.inner_dst_mac),
        (vtep_a, vtep_b)
    );
    assert_eq!((decoded.outer_src_mac, decoded.outer_dst_mac), (ula, ulb));
    assert_eq!(
        (decoded.outer_src, decoded.outer_dst),
        (Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(192, 0, 2, 2))
    );
    assert_eq!(
        (decoded.vxlan.inner_src, decoded.vxlan.inner_dst),
        (Ipv4Addr::new(10, 244, 1, 0), INNER_DST)
    );
    assert_eq!(decoded.dst_port, 8472);
    assert_ne!(decoded.udp_checksum, 0, "udpcsum is on");
    assert!(
        (flow::EPHEMERAL_PORT_MIN..flow::EPHEMERAL_PORT_MAX).contains(&decoded.src_port),
        "kernel source port {} outside the ephemeral range",
        decoded.src_port
    );
    let inner = &kernel[decoded.vxlan.inner_ip.clone()];
    assert!(
        inner.ends_with(MESSAGE.as_bytes()),
        "captured the wrong datagram"
    );

    // proto builds the same frame around the same inner packet.
    let build = |src_port: u16, ident: u16| {
        let mut buf = vec![0u8; VXLAN_HEADROOM + inner.len()];
        buf[VXLAN_HEADROOM..].copy_from_slice(inner);
        let frame = VxlanFrame {
            encap: VxlanEncap {
                vni: 1,
                src_mac: vtep_a,
                dst_mac: vtep_b,
            },
            outer_src_mac: ula,
            outer_dst_mac: ulb,
            // What an unconfigured vxlan device uses: TTL 64, TOS 0 (ECN inherited),
            // DF clear, UDP checksum on.
            outer: OuterIpv4 {
                src_addr: Ipv4Addr::new(192, 0, 2, 1),
                dst_addr: Ipv4Addr::new(192, 0, 2, 2),
                ttl: 64,
                tos: 0,
                ident,
                dont_frag: false,
            },
            src_port,
            dst_port: vxlan::DEFAULT_PORT,
            udp_checksum: UdpChecksum::Compute,
        };
        let range = vxlan::encap_frame(&mut buf, VXLAN_HEADROOM, inner.len(), &frame).unwrap();
        assert_eq!(range, 0..buf.len());
        buf
    };

    let exact = build(decoded.src_port, decoded.outer_ident);
    assert_eq!(
        hex(&exact),
        hex(&kernel),
        "proto's frame (top) differs from the kernel's (bottom)"
    );

    // With proto's own choices, only the per-packet fields differ.
    let own = build(
        flow::flow_src_port(inner, flow::EPHEMERAL_PORT_MIN, flow::EPHEMERAL_PORT_MAX),
        0,
    );
    let masked = |frame: &[u8]| {
        let mut f = frame.to_vec();
        for r in [IP_ID, IP_CHECKSUM, UDP_SRC_PORT, UDP_CHECKSUM] {
            f[r].fill(0);
        }
        hex(&f)
    };
    assert_eq!(masked(&own), masked(&kernel));
    assert_eq!(vxlan::decap_frame(&own).unwrap().vxlan, decoded.vxlan);
}

/// Offsets in the frame: outer IPv4 header, inner IPv4 header.
const OUTER_IP: usize = 14;
const INNER_IP: usize = 14 + 20 + 8 + 8 + 14;
const IP_ID: std::ops::Range<usize> = 18..20;
const IP_CHECKSUM: std::ops::Range<usize> = 24..26;
const UDP_SRC_PORT: std::ops::Range<usize> = 34..36;
const UDP_CHECKSUM: std::ops::Range<usize> = 40..42;

/// RFC 1071 one's-complement sum of `data` (big-endian words, odd byte zero-padded),
/// folded, not complemented. Written here independently of `weft_proto`.
fn ones_sum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// If the IPv4/UDP packet at `frame[ip..]` carries only the folded pseudo-header sum
/// in its UDP checksum field (left for checksum offload), replaces it with the full
/// checksum and returns true.
fn complete_partial_udp_checksum(frame: &mut [u8], ip: usize) -> bool {
    let udp = ip + usize::from(frame[ip] & 0x0f) * 4;
    if frame[ip + 9] != 17 {
        return false;
    }
    let udp_len = usize::from(u16::from_be_bytes([frame[udp + 4], frame[udp + 5]]));
    let mut sum_input = Vec::new();
    sum_input.extend_from_slice(&frame[ip + 12..ip + 20]);
    sum_input.extend_from_slice(&[0, 17]);
    sum_input.extend_from_slice(&frame[udp + 4..udp + 6]);
    let field = u16::from_be_bytes([frame[udp + 6], frame[udp + 7]]);
    if field != ones_sum(&sum_input) {
        return false;
    }
    frame[udp + 6..udp + 8].fill(0);
    sum_input.extend_from_slice(&frame[udp..udp + udp_len]);
    let full = match !ones_sum(&sum_input) {
        0 => 0xffff,
        sum => sum,
    };
    frame[udp + 6..udp + 8].copy_from_slice(&full.to_be_bytes());
    true
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .chunks(16)
        .map(|line| {
            line.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}
