//! Micro-benchmarks of the per-packet work in `weft_proto`: VXLAN and IPIP
//! encapsulate + decapsulate of 64-byte and 1,400-byte inner IPv4 packets, in place
//! over one reused buffer (as the data plane does). One iteration = one packet, so
//! criterion's time per iteration is ns per packet.

use std::hint::black_box;
use std::net::Ipv4Addr;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use weft_proto::gso::{self, TcpCoalescer};
use weft_proto::ipv4::{protocol, Ipv4Packet, Ipv4Repr, OuterIpv4};
use weft_proto::tcp::{flags, TcpPacket};
use weft_proto::udp::UdpChecksum;
use weft_proto::vnet::{self, GsoType, VirtioNetRepr};
use weft_proto::{flow, ipip, vxlan, MacAddr, VxlanEncap, VxlanFrame, VXLAN_HEADROOM};

const SIZES: [usize; 2] = [64, 1400];

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

/// A buffer with a valid inner IPv4/UDP packet of `len` bytes at `VXLAN_HEADROOM`.
fn buffer(len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; VXLAN_HEADROOM + len];
    let inner = &mut buf[VXLAN_HEADROOM..];
    inner[20..22].copy_from_slice(&40000u16.to_be_bytes());
    inner[22..24].copy_from_slice(&5201u16.to_be_bytes());
    pod_to_pod(protocol::UDP, len - 20).emit(&mut Ipv4Packet::new_unchecked(inner));
    buf
}

const ENCAP: VxlanEncap = VxlanEncap {
    vni: 1,
    src_mac: MacAddr([0x02, 0, 0x0a, 0xf4, 1, 0]),
    dst_mac: MacAddr([0x02, 0, 0x0a, 0xf4, 2, 0]),
};

const OUTER: OuterIpv4 = OuterIpv4 {
    src_addr: Ipv4Addr::new(192, 0, 2, 1),
    dst_addr: Ipv4Addr::new(192, 0, 2, 2),
    ttl: 64,
    tos: 0,
    ident: 0,
    dont_frag: false,
};

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("encap+decap");
    for len in SIZES {
        group.throughput(Throughput::Elements(1));

        // The daemon's VXLAN path: UDP-socket payload (VXLAN + inner Ethernet) and the
        // outer UDP source port from the inner flow.
        let mut buf = buffer(len);
        group.bench_with_input(BenchmarkId::new("vxlan", len), &len, |b, &len| {
            b.iter(|| {
                let port = flow::flow_src_port(
                    &buf[VXLAN_HEADROOM..],
                    flow::EPHEMERAL_PORT_MIN,
                    flow::EPHEMERAL_PORT_MAX,
                );
                let range =
                    vxlan::encap_payload(black_box(&mut buf), VXLAN_HEADROOM, len, &ENCAP).unwrap();
                let decap = vxlan::decap(black_box(&buf[range])).unwrap();
                black_box((port, decap))
            })
        });

        // The complete frame as the kernel puts it on the wire (outer Ethernet, IPv4
        // and UDP headers, UDP checksum over the whole datagram), and its full check.
        let mut buf = buffer(len);
        let frame = VxlanFrame {
            encap: ENCAP,
            outer_src_mac: MacAddr([2, 0xaa, 0, 0, 0, 1]),
            outer_dst_mac: MacAddr([2, 0xaa, 0, 0, 0, 2]),
            outer: OUTER,
            src_port: 40000,
            dst_port: vxlan::DEFAULT_PORT,
            udp_checksum: UdpChecksum::Compute,
        };
        group.bench_with_input(
            BenchmarkId::new("vxlan-frame-udpcsum", len),
            &len,
            |b, &len| {
                b.iter(|| {
                    let range =
                        vxlan::encap_frame(black_box(&mut buf), VXLAN_HEADROOM, len, &frame)
                            .unwrap();
                    black_box(vxlan::decap_frame(black_box(&buf[range])).unwrap())
                })
            },
        );

        // IPIP: the outer IPv4 header in place (what an IP_HDRINCL sender writes; a
        // plain raw socket needs no work at all on send) and the raw-socket decap.
        let mut buf = buffer(len);
        group.bench_with_input(BenchmarkId::new("ipip", len), &len, |b, &len| {
            b.iter(|| {
                let range =
                    ipip::encap_header(black_box(&mut buf), VXLAN_HEADROOM, len, &OUTER).unwrap();
                black_box(ipip::decap(black_box(&buf[range])).unwrap())
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

criterion_group!(benches, bench, bench_gso);
criterion_main!(benches);
