//! Micro-benchmarks of the per-packet work weftd's workers do, calling exactly what
//! they call: `weft_daemon::dataplane::packet` (a backend's outer headers and receive
//! acceptance) around `weft_proto`'s views (virtio-net header, inner IPv4, flow hash,
//! flow key, receive offload header). 64-byte and 1,400-byte inner IPv4/UDP packets,
//! in place over one reused buffer, as the workers do. One iteration = one packet, so
//! criterion's time per iteration is ns per packet.
//!
//! * `transmit/vxlan-tap`, `transmit/ipip-tap`: the default path (the kernel
//!   encapsulates): vnet header parsed, inner destination read, peer looked up, the
//!   whole outer frame written, the vnet header moved in front of it.
//! * `transmit/vxlan-socket`: the userspace fallback: the sending socket picked by
//!   flow hash, VXLAN + inner Ethernet written (the kernel adds IPv4/UDP).
//! * `receive/vxlan`, `receive/ipip`: a datagram accepted (sender, VNI, inner
//!   addresses), its flow key looked up, its vnet header for TUN written in front.
//! * `gso-64KB/*`: TSO segmentation and GRO-style coalescing of one super-packet.

use std::hint::black_box;
use std::net::Ipv4Addr;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use weft_daemon::dataplane::packet::{
    accept_ipip, accept_vxlan, write_ipip_outer, write_vxlan_outer, TapOuter, HEADROOM,
    VXLAN_OVERHEAD,
};
use weft_daemon::dataplane::peers::{Encap, PeerTable};
use weft_daemon::lease::{MacAddr as VtepMac, Peer, PeerBackend};
use weft_proto::gso::{self, FlowKey, TcpCoalescer};
use weft_proto::ipv4::{protocol, Ipv4Packet, Ipv4Repr, OuterIpv4};
use weft_proto::tcp::{flags, TcpPacket};
use weft_proto::vnet::{self, GsoType, VirtioNetHdr, VirtioNetRepr};
use weft_proto::{flow, ipip, offload};

const SIZES: [usize; 2] = [64, 1400];
const VNI: u32 = 1;
const PORT: u16 = 8472;
const OWN_MAC: VtepMac = [0x02, 0, 0x0a, 0xf4, 1, 0];
const PEER_MAC: VtepMac = [0x02, 0, 0x0a, 0xf4, 2, 0];
const PEER_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
/// The overlay MTU the receive path compares against.
const MTU: usize = 1450;

/// The inner IPv4 header of every benchmark packet: pod 10.244.1.2 to pod 10.244.2.2.
fn pod_to_pod(protocol: u8, payload_len: usize) -> Ipv4Repr {
    Ipv4Repr {
        src_addr: Ipv4Addr::new(10, 244, 1, 2),
        dst_addr: Ipv4Addr::new(10, 244, 2, 2),
        protocol,
        payload_len,
        ttl: 64,
        tos: 0,
        ident: 1,
        dont_frag: true,
        more_frags: false,
        frag_offset: 0,
    }
}

/// A transmit slot as a TUN read leaves it: a zero vnet header at
/// `HEADROOM - vnet::HEADER_LEN`, an inner IPv4/UDP packet of `len` bytes at `HEADROOM`.
fn tun_read(len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; HEADROOM + len];
    let inner = &mut buf[HEADROOM..];
    pod_to_pod(protocol::UDP, len - 20).emit(&mut Ipv4Packet::new_unchecked(&mut inner[..]));
    let mut udp = weft_proto::udp::UdpPacket::new_unchecked(&mut inner[20..]);
    udp.set_src_port(40000);
    udp.set_dst_port(5201);
    udp.set_len((len - 20) as u16);
    buf
}

/// The peer table with one peer, 10.244.2.0/24 at 192.0.2.2, for `encap`.
fn table(encap: &Encap) -> PeerTable {
    let backend = match encap {
        Encap::Vxlan { .. } => PeerBackend::Vxlan {
            vni: VNI,
            vtep_mac: PEER_MAC,
        },
        Encap::Ipip => PeerBackend::Ipip,
    };
    let peer = Peer {
        subnet: "10.244.2.0/24".parse().expect("subnet"),
        public_ip: PEER_IP,
        backend,
    };
    PeerTable::build(24, encap, [(&peer, true)])
}

const VXLAN: Encap = Encap::Vxlan {
    vni: VNI,
    port: PORT,
    local_mac: OWN_MAC,
};

/// What a worker's transmit half does to one packet read from TUN, up to the write.
/// Returns the range to write (the vnet header included for the TAP).
fn transmit(buf: &mut [u8], read: usize, encap: &Encap, peers: &PeerTable, tap: bool) -> usize {
    let (vnet_bytes, packet) =
        buf[HEADROOM - vnet::HEADER_LEN..][..read].split_at(read.min(vnet::HEADER_LEN));
    let vnet = VirtioNetRepr::parse(&VirtioNetHdr::new_unchecked(vnet_bytes)).expect("vnet");
    let ip = Ipv4Packet::new_checked(packet).expect("inner IPv4");
    let (dst, inner_len) = (ip.dst_addr(), usize::from(ip.total_len()));
    let peer = peers.route(dst).expect("peer");
    let inner = HEADROOM..HEADROOM + inner_len;
    let outer = TapOuter {
        src: Ipv4Addr::new(192, 0, 2, 1),
        dst: peer.public_ip,
        ident: 7,
    };
    let tap = tap.then_some(&outer);
    let mut sender = 0;
    let frame = match encap {
        Encap::Vxlan {
            vni,
            port,
            local_mac,
        } => {
            if tap.is_none() {
                sender = flow::flow_hash(&buf[inner.clone()]) as usize % 8;
            }
            write_vxlan_outer(buf, inner, *vni, *port, local_mac, &peer.vtep_mac, tap)
        }
        Encap::Ipip => write_ipip_outer(buf, inner, tap),
    }
    .expect("outer headers fit");
    if tap.is_none() {
        return frame.len() + sender;
    }
    if matches!(encap, Encap::Vxlan { .. }) {
        // The default on Linux ≥ 6.17: UDP-tunnel GSO, outer UDP checksum set here.
        let frame_range = frame.clone();
        let header = weft_proto::tap_offload::tap_offload_header(&mut buf[frame_range], &vnet)
            .expect("tunnel header");
        let start = frame.start - vnet::TUNNEL_HEADER_LEN;
        header.emit(&mut buf[start..frame.start]);
        return frame.end - start;
    }
    let start = frame.start - vnet::HEADER_LEN;
    vnet.with_prefix((HEADROOM - frame.start) as u16)
        .emit(&mut VirtioNetHdr::new_unchecked(
            &mut buf[start..frame.start],
        ));
    frame.end - start
}

/// What a worker's receive half does to one datagram before the TUN write of a packet
/// that is not coalesced: accept, flow key, vnet header in front.
fn receive(datagram: &mut [u8], encap: &Encap, peers: &PeerTable) -> usize {
    let own: ipnet::Ipv4Net = "10.244.2.0/24".parse().expect("subnet");
    let accepted = match encap {
        Encap::Vxlan { vni, .. } => accept_vxlan(datagram, PEER_IP, *vni, &own, peers),
        Encap::Ipip => accept_ipip(datagram, &own, peers),
    }
    .expect("accepted");
    let (offset, len) = (accepted.offset, accepted.len);
    if FlowKey::of_tcp(&datagram[offset..offset + len]).is_some() {
        unreachable!("the bench's packets are UDP: not coalesced");
    }
    let vnet = offload::receive_header(&mut datagram[offset..offset + len], MTU);
    let start = offset - vnet::HEADER_LEN;
    vnet.emit(&mut VirtioNetHdr::new_unchecked(
        &mut datagram[start..offset],
    ));
    offset + len - start
}

fn bench_transmit(c: &mut Criterion) {
    let mut group = c.benchmark_group("transmit");
    group.throughput(Throughput::Elements(1));
    let vxlan_peers = table(&VXLAN);
    let ipip_peers = table(&Encap::Ipip);
    for len in SIZES {
        let read = vnet::HEADER_LEN + len;
        for (name, encap, peers, tap) in [
            ("vxlan-tap", &VXLAN, &vxlan_peers, true),
            ("vxlan-socket", &VXLAN, &vxlan_peers, false),
            ("ipip-tap", &Encap::Ipip, &ipip_peers, true),
        ] {
            let mut buf = tun_read(len);
            group.bench_with_input(BenchmarkId::new(name, len), &len, |b, _| {
                b.iter(|| {
                    // Each TUN read writes a fresh vnet header; the previous round's outer
                    // headers overlap where it sits.
                    buf[HEADROOM - vnet::HEADER_LEN..HEADROOM].fill(0);
                    black_box(transmit(black_box(&mut buf), read, encap, peers, tap))
                })
            });
        }
    }
    group.finish();
}

fn bench_receive(c: &mut Criterion) {
    let mut group = c.benchmark_group("receive");
    group.throughput(Throughput::Elements(1));
    // The receiver's table: the sender 192.0.2.2 holds 10.244.1.0/24 (the pods'
    // source), and we are 10.244.2.0/24.
    let sender = |backend| Peer {
        subnet: "10.244.1.0/24".parse().expect("subnet"),
        public_ip: PEER_IP,
        backend,
    };
    let vxlan_peers = PeerTable::build(
        24,
        &VXLAN,
        [(
            &sender(PeerBackend::Vxlan {
                vni: VNI,
                vtep_mac: PEER_MAC,
            }),
            true,
        )],
    );
    let ipip_peers = PeerTable::build(24, &Encap::Ipip, [(&sender(PeerBackend::Ipip), true)]);
    for len in SIZES {
        let mut slot = tun_read(len);
        let range = write_vxlan_outer(
            &mut slot,
            HEADROOM..HEADROOM + len,
            VNI,
            PORT,
            &PEER_MAC,
            &OWN_MAC,
            None,
        )
        .expect("VXLAN headers");
        let received = slot[range].to_vec();
        assert_eq!(received.len(), VXLAN_OVERHEAD + len);
        // Each round's vnet header lands on the headers in front of the inner packet,
        // so they are put back as the next recvmmsg would deliver them.
        let mut datagram = received.clone();
        let headers = received.len() - len;
        group.bench_with_input(BenchmarkId::new("vxlan", len), &len, |b, _| {
            b.iter(|| {
                datagram[..headers].copy_from_slice(&received[..headers]);
                black_box(receive(black_box(&mut datagram), &VXLAN, &vxlan_peers))
            })
        });

        let mut slot = tun_read(len);
        let outer = OuterIpv4 {
            src_addr: PEER_IP,
            dst_addr: Ipv4Addr::new(192, 0, 2, 1),
            ttl: 64,
            tos: 0,
            ident: 0,
            dont_frag: true,
        };
        let range = ipip::encap_header(&mut slot, HEADROOM, len, &outer).expect("IPIP header");
        let received = slot[range].to_vec();
        let mut packet = received.clone();
        let headers = received.len() - len;
        group.bench_with_input(BenchmarkId::new("ipip", len), &len, |b, _| {
            b.iter(|| {
                packet[..headers].copy_from_slice(&received[..headers]);
                black_box(receive(black_box(&mut packet), &Encap::Ipip, &ipip_peers))
            })
        });
    }
    group.finish();
}

/// A 64 KB IPv4/TCP super-packet as TUN delivers it with TSO (partial checksum).
fn super_packet(payload_len: usize, gso_size: u16) -> (Vec<u8>, VirtioNetRepr) {
    let mut p = vec![0u8; 40 + payload_len];
    for (i, b) in p[40..].iter_mut().enumerate() {
        *b = i as u8;
    }
    pod_to_pod(protocol::TCP, 20 + payload_len).emit(&mut Ipv4Packet::new_unchecked(&mut p[..]));
    let mut tcp = TcpPacket::new_unchecked(&mut p[20..]);
    tcp.set_src_port(40000);
    tcp.set_dst_port(5201);
    tcp.set_seq_number(1);
    tcp.set_ack_number(1);
    tcp.set_header_len(20);
    tcp.set_flags(flags::ACK | flags::PSH);
    tcp.set_window(512);
    let vnet = VirtioNetRepr {
        flags: vnet::flags::NEEDS_CSUM,
        gso_type: GsoType::TcpV4,
        gso_ecn: false,
        hdr_len: 40,
        gso_size,
        csum_start: 20,
        csum_offset: 16,
    };
    (p, vnet)
}

/// TSO segmentation and GRO-style coalescing of one 64 KB super-packet (46 segments
/// of 1,398 bytes: VXLAN's 1450-byte inner MTU minus 52 bytes of IP/TCP headers).
fn bench_gso(c: &mut Criterion) {
    const GSO_SIZE: u16 = 1398;
    let (packet, vnet_hdr) = super_packet(46 * usize::from(GSO_SIZE), GSO_SIZE);
    let mut out = vec![0u8; 80_000];
    let mut group = c.benchmark_group("gso-64KB");
    group.throughput(Throughput::Bytes(packet.len() as u64));
    group.bench_function("tso-segment", |b| {
        b.iter(|| gso::segment(black_box(&packet), &vnet_hdr, black_box(&mut out), 22).unwrap())
    });
    let layout = gso::segment(&packet, &vnet_hdr, &mut out, 22).unwrap();
    let mut coalesced = vec![0u8; 70_000];
    for verify in [true, false] {
        let name = if verify {
            "coalesce-verify"
        } else {
            "coalesce-trusting"
        };
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut c =
                    TcpCoalescer::start(&mut coalesced, &out[layout.segment(0)], verify).unwrap();
                for i in 1..layout.count {
                    c.try_append(&mut coalesced, &out[layout.segment(i)])
                        .unwrap();
                }
                black_box(c.finish(&mut coalesced))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_transmit, bench_receive, bench_gso);
criterion_main!(benches);
