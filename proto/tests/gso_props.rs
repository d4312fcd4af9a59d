//! Property tests for segmentation and coalescing: segment → coalesce returns the
//! original super-packet, and every segment's checksums verify.

use std::net::Ipv4Addr;

use proptest::prelude::*;
use weft_proto::checksum;
use weft_proto::gso::{self, CoalesceReject, TcpCoalescer};
use weft_proto::ipv4::{protocol, Ipv4Packet, Ipv4Repr};
use weft_proto::tcp::{flags, TcpPacket};
use weft_proto::udp::UdpPacket;
use weft_proto::vnet::{self, GsoType, VirtioNetHdr, VirtioNetRepr};
use weft_proto::{offload, vxlan, MacAddr, VxlanEncap};

const HEADROOM: usize = weft_proto::VXLAN_PAYLOAD_HEADROOM;

#[derive(Debug, Clone)]
struct Super {
    packet: Vec<u8>,
    vnet: VirtioNetRepr,
}

/// A TCP super-packet as TUN hands it over with TSO: valid IP header, TCP checksum
/// field holding the pseudo-header sum (NEEDS_CSUM).
fn tcp_super() -> impl Strategy<Value = Super> {
    (
        any::<[u8; 4]>(),
        any::<[u8; 4]>(),
        any::<(u16, u16, u32, u32, u16, u16, u8, u8)>(),
        prop::sample::subsequence(vec![flags::PSH, flags::FIN, flags::CWR, flags::ECE], 0..=4),
        (0usize..=10).prop_map(|words| words * 4),
        any::<bool>(),
        (0usize..12_000, 64u16..=1460),
    )
        .prop_flat_map(
            |(
                src,
                dst,
                (sp, dp, seq, ack, window, ident, tos, ttl),
                extra_flags,
                opt_len,
                df,
                (len, gso),
            )| {
                (
                    proptest::collection::vec(any::<u8>(), opt_len + len),
                    Just((src, dst, sp, dp, seq, ack, window, ident, tos, ttl)),
                    Just(extra_flags),
                    Just(opt_len),
                    Just(df),
                    Just(gso),
                )
            },
        )
        .prop_map(
            |(
                bytes,
                (src, dst, sp, dp, seq, ack, window, ident, tos, ttl),
                extra_flags,
                opt_len,
                df,
                gso,
            )| {
                let (src, dst) = (Ipv4Addr::from(src), Ipv4Addr::from(dst));
                let tcp_header_len = 20 + opt_len;
                let mut p = vec![0u8; 20 + tcp_header_len];
                p.extend_from_slice(&bytes[opt_len..]);
                p[40..40 + opt_len].copy_from_slice(&bytes[..opt_len]);
                let tcp_len = p.len() - 20;
                Ipv4Repr {
                    src_addr: src,
                    dst_addr: dst,
                    protocol: protocol::TCP,
                    payload_len: tcp_len,
                    ttl,
                    tos,
                    ident,
                    dont_frag: df,
                    more_frags: false,
                    frag_offset: 0,
                }
                .emit(&mut Ipv4Packet::new_unchecked(&mut p[..]));
                let f = extra_flags.iter().fold(flags::ACK, |a, b| a | b);
                let mut tcp = TcpPacket::new_unchecked(&mut p[20..]);
                tcp.set_src_port(sp);
                tcp.set_dst_port(dp);
                tcp.set_seq_number(seq);
                tcp.set_ack_number(ack);
                tcp.set_header_len(tcp_header_len);
                tcp.set_flags(f);
                tcp.set_window(window);
                tcp.set_checksum(checksum::pseudo_header_partial(
                    src,
                    dst,
                    protocol::TCP,
                    tcp_len as u16,
                ));
                let vnet = VirtioNetRepr {
                    flags: vnet::flags::NEEDS_CSUM,
                    gso_type: GsoType::TcpV4,
                    gso_ecn: f & flags::CWR != 0,
                    hdr_len: (20 + tcp_header_len) as u16,
                    gso_size: gso,
                    csum_start: 20,
                    csum_offset: 16,
                };
                Super { packet: p, vnet }
            },
        )
}

fn segment_all(s: &Super) -> (Vec<u8>, gso::Segmented) {
    let mut out = vec![0u8; 80_000 + s.packet.len() / 8 * 2];
    let layout = gso::segment(&s.packet, &s.vnet, &mut out, HEADROOM).unwrap();
    (out, layout)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn tcp_segments_are_valid(s in tcp_super()) {
        let (out, layout) = segment_all(&s);
        let orig_ip = Ipv4Packet::new_unchecked(&s.packet[..]);
        let orig_tcp = TcpPacket::new_unchecked(&s.packet[20..]);
        let gso = usize::from(s.vnet.gso_size);
        let payload_len = orig_tcp.payload().len();
        prop_assert_eq!(layout.count, payload_len.div_ceil(gso).max(1));
        let mut payload = Vec::new();
        for i in 0..layout.count {
            let seg = &out[layout.segment(i)];
            let ip = Ipv4Packet::new_checked(seg).unwrap();
            prop_assert_eq!(usize::from(ip.total_len()), seg.len());
            prop_assert!(ip.verify_checksum());
            prop_assert_eq!(ip.ident(), orig_ip.ident().wrapping_add(i as u16));
            let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
            prop_assert!(tcp.verify_checksum(ip.src_addr(), ip.dst_addr()), "segment {} TCP checksum", i);
            prop_assert_eq!(tcp.seq_number(), orig_tcp.seq_number().wrapping_add((i * gso) as u32));
            prop_assert!(tcp.payload().len() <= gso);
            let last = i + 1 == layout.count;
            let mut want = orig_tcp.flags();
            if !last { want &= !(flags::FIN | flags::PSH); }
            if i != 0 { want &= !flags::CWR; }
            prop_assert_eq!(tcp.flags(), want);
            prop_assert_eq!(tcp.options(), orig_tcp.options());
            payload.extend_from_slice(tcp.payload());
        }
        prop_assert_eq!(&payload[..], orig_tcp.payload());
        // Segments with their headroom form one contiguous, equally strided buffer.
        prop_assert_eq!(layout.stride, HEADROOM + usize::from(s.vnet.hdr_len) + gso);
        prop_assert_eq!(layout.total().end, layout.segment(layout.count - 1).end);
    }

    #[test]
    fn segment_then_coalesce_is_identity(s in tcp_super()) {
        let (out, layout) = segment_all(&s);
        let mut expected = s.packet.clone();
        let mut coalesced = vec![0u8; 70_000];
        let first = &out[layout.segment(0)];
        if TcpPacket::new_unchecked(&s.packet[20..]).payload().is_empty() {
            prop_assert_eq!(TcpCoalescer::start(&mut coalesced, first, true).unwrap_err(), CoalesceReject::NotTcp);
            gso::complete_checksum(&mut expected, &s.vnet).unwrap();
            prop_assert_eq!(first, &expected[..]);
            return Ok(());
        }
        let mut c = TcpCoalescer::start(&mut coalesced, first, true).unwrap();
        for i in 1..layout.count {
            prop_assert_eq!(c.try_append(&mut coalesced, &out[layout.segment(i)]), Ok(()), "segment {}", i);
        }
        prop_assert_eq!(c.segments(), layout.count);
        let range = c.finish(&mut coalesced);
        let written = &coalesced[range];
        let hdr = VirtioNetRepr::parse(&VirtioNetHdr::new_checked(written).unwrap()).unwrap();
        let packet = &written[vnet::HEADER_LEN..];
        if layout.count == 1 {
            prop_assert_eq!(hdr, VirtioNetRepr::default());
            gso::complete_checksum(&mut expected, &s.vnet).unwrap();
        } else {
            prop_assert_eq!(hdr, s.vnet);
        }
        prop_assert_eq!(packet, &expected[..]);
    }

    #[test]
    fn coalescer_refuses_reordered_or_corrupt_segments(s in tcp_super(), pick in any::<prop::sample::Index>()) {
        let (mut out, layout) = segment_all(&s);
        prop_assume!(layout.count >= 3);
        let mut coalesced = vec![0u8; 70_000];
        let mut c = TcpCoalescer::start(&mut coalesced, &out[layout.segment(0)], true).unwrap();
        prop_assert_eq!(c.try_append(&mut coalesced, &out[layout.segment(2)]), Err(CoalesceReject::OutOfOrder));
        // Flip a payload bit of segment 1: its TCP checksum no longer verifies.
        let seg = layout.segment(1);
        let at = seg.end - 1 - pick.index(gso_payload_len(&s));
        out[at] ^= 0x10;
        prop_assert_eq!(c.try_append(&mut coalesced, &out[seg]), Err(CoalesceReject::BadChecksum));
    }

    /// Segments whose TCP checksum the sender left to offload (tx checksum offload, no
    /// TSO: the field holds each segment's pseudo-header sum) coalesce exactly as
    /// complete ones; a lone one is handed on with NEEDS_CSUM, and finishing it as the
    /// kernel does gives the complete segment. A field that is neither is refused.
    #[test]
    fn partial_segments_coalesce_and_bad_ones_are_refused(s in tcp_super(), bump in 1u16..) {
        prop_assume!(!TcpPacket::new_unchecked(&s.packet[20..]).payload().is_empty());
        let (mut out, layout) = segment_all(&s);
        let complete: Vec<Vec<u8>> = (0..layout.count).map(|i| out[layout.segment(i)].to_vec()).collect();
        for i in 0..layout.count {
            let seg = &mut out[layout.segment(i)];
            let ip = Ipv4Packet::new_unchecked(&seg[..]);
            let (src, dst, ihl) = (ip.src_addr(), ip.dst_addr(), ip.header_len());
            let len = (seg.len() - ihl) as u16;
            let partial = checksum::pseudo_header_partial(src, dst, protocol::TCP, len);
            TcpPacket::new_unchecked(&mut seg[ihl..]).set_checksum(partial);
        }
        let mut coalesced = vec![0u8; 70_000];
        let mut c = TcpCoalescer::start(&mut coalesced, &out[layout.segment(0)], true).unwrap();
        for i in 1..layout.count {
            prop_assert_eq!(c.try_append(&mut coalesced, &out[layout.segment(i)]), Ok(()), "segment {}", i);
        }
        let range = c.finish(&mut coalesced);
        let hdr = VirtioNetRepr::parse(&VirtioNetHdr::new_checked(&coalesced[range.clone()]).unwrap()).unwrap();
        prop_assert!(hdr.needs_csum());
        let mut packet = coalesced[range][vnet::HEADER_LEN..].to_vec();
        if layout.count == 1 {
            gso::complete_checksum(&mut packet, &hdr).unwrap();
            prop_assert_eq!(&packet, &complete[0]);
        } else {
            prop_assert_eq!(hdr, s.vnet);
            let mut expected = s.packet.clone();
            gso::complete_checksum(&mut expected, &s.vnet).unwrap();
            gso::complete_checksum(&mut packet, &hdr).unwrap();
            prop_assert_eq!(packet, expected);
        }
        // A checksum field that is neither the partial sum nor the full checksum.
        let first = layout.segment(0);
        let ihl = Ipv4Packet::new_unchecked(&out[first.clone()]).header_len();
        let field = first.start + ihl + 16;
        let value = u16::from_be_bytes([out[field], out[field + 1]]).wrapping_add(bump);
        prop_assume!(value != u16::from_be_bytes([complete[0][ihl + 16], complete[0][ihl + 17]]));
        out[field..field + 2].copy_from_slice(&value.to_be_bytes());
        prop_assert_eq!(
            TcpCoalescer::start(&mut coalesced, &out[first], true).unwrap_err(),
            CoalesceReject::BadChecksum
        );
    }

    #[test]
    fn udp_l4_segments_are_valid(payload in proptest::collection::vec(any::<u8>(), 0..8000), gso in 8u16..1472, ident in any::<u16>()) {
        let (src, dst) = (Ipv4Addr::new(10, 244, 1, 2), Ipv4Addr::new(10, 244, 2, 2));
        let mut p = vec![0u8; 28 + payload.len()];
        p[28..].copy_from_slice(&payload);
        Ipv4Repr { src_addr: src, dst_addr: dst, protocol: protocol::UDP, payload_len: 8 + payload.len(), ttl: 64, tos: 0,
                   ident, dont_frag: true, more_frags: false, frag_offset: 0 }
            .emit(&mut Ipv4Packet::new_unchecked(&mut p[..]));
        let mut udp = UdpPacket::new_unchecked(&mut p[20..]);
        udp.set_src_port(1234);
        udp.set_dst_port(5678);
        udp.set_len((8 + payload.len()) as u16);
        let vnet = VirtioNetRepr { flags: vnet::flags::NEEDS_CSUM, gso_type: GsoType::UdpL4, gso_ecn: false, hdr_len: 28,
                                   gso_size: gso, csum_start: 20, csum_offset: 6 };
        let mut out = vec![0u8; 200_000];
        let layout = gso::segment(&p, &vnet, &mut out, HEADROOM).unwrap();
        let mut joined = Vec::new();
        for i in 0..layout.count {
            let ip = Ipv4Packet::new_checked(&out[layout.segment(i)]).unwrap();
            prop_assert!(ip.verify_checksum());
            let udp = UdpPacket::new_checked(ip.payload()).unwrap();
            prop_assert_ne!(udp.checksum(), 0);
            prop_assert!(udp.verify_checksum(src, dst));
            prop_assert!(udp.payload().len() <= usize::from(gso));
            joined.extend_from_slice(udp.payload());
        }
        prop_assert_eq!(joined, payload);
    }

    #[test]
    fn segment_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300), gso in any::<u16>(), tcp in any::<bool>()) {
        let vnet = VirtioNetRepr { gso_type: if tcp { GsoType::TcpV4 } else { GsoType::UdpL4 }, gso_size: gso,
                                   ..VirtioNetRepr::default() };
        let mut out = vec![0u8; 4096];
        let _ = gso::segment(&bytes, &vnet, &mut out, HEADROOM);
        let mut coalesced = vec![0u8; 4096];
        if let Ok(mut c) = TcpCoalescer::start(&mut coalesced, &bytes, false) {
            let _ = c.try_append(&mut coalesced, &bytes);
            let r = c.finish(&mut coalesced);
            prop_assert!(r.end <= coalesced.len());
        }
        let mut copy = bytes.clone();
        let _ = gso::complete_checksum(&mut copy, &VirtioNetRepr { flags: 1, csum_start: gso, csum_offset: 16, ..VirtioNetRepr::default() });
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 100, ..ProptestConfig::default() })]

    /// The whole offload path: TSO super-packet → segments with VXLAN headroom →
    /// encapsulated in place → one contiguous UDP_SEGMENT buffer → split as UDP_GRO
    /// delivers it → decapsulated → coalesced → the original super-packet.
    #[test]
    fn tso_vxlan_udp_gso_gro_round_trip(s in tcp_super()) {
        let (mut out, layout) = segment_all(&s);
        let encap = VxlanEncap { vni: 1, src_mac: MacAddr([2, 0, 0, 0, 1, 0]), dst_mac: MacAddr([2, 0, 0, 0, 2, 0]) };
        for i in 0..layout.count {
            let seg = layout.segment(i);
            let datagram = vxlan::encap_payload(&mut out, seg.start, seg.len(), &encap).unwrap();
            prop_assert_eq!(datagram.start, i * layout.stride);
        }
        let udp_gso_buffer = &out[layout.total()];
        let mut coalesced = vec![0u8; 70_000];
        let mut coalescer: Option<TcpCoalescer> = None;
        let mut datagrams = 0;
        for datagram in gso::gro_datagrams(udp_gso_buffer, layout.stride as u16) {
            datagrams += 1;
            let d = vxlan::decap(datagram).unwrap();
            let inner = &datagram[d.inner_ip];
            match coalescer.as_mut() {
                None => match TcpCoalescer::start(&mut coalesced, inner, true) {
                    Ok(c) => coalescer = Some(c),
                    Err(reject) => prop_assert_eq!(reject, CoalesceReject::NotTcp), // no payload
                },
                Some(c) => prop_assert_eq!(c.try_append(&mut coalesced, inner), Ok(())),
            }
        }
        prop_assert_eq!(datagrams, layout.count);
        if let Some(c) = coalescer {
            let range = c.finish(&mut coalesced);
            let mut expected = s.packet.clone();
            if layout.count == 1 {
                gso::complete_checksum(&mut expected, &s.vnet).unwrap();
            }
            prop_assert_eq!(&coalesced[range][vnet::HEADER_LEN..], &expected[..]);
        }
    }
}

/// The super-packet `s` with a complete TCP checksum, as a peer kernel's GSO sends it
/// whole over veth (or after `complete_checksum` on a lone packet).
fn completed(s: &Super) -> Vec<u8> {
    let mut packet = s.packet.clone();
    gso::complete_checksum(&mut packet, &s.vnet).unwrap();
    packet
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 100, ..ProptestConfig::default() })]

    /// A received packet that fits the MTU with a partial checksum (a kernel peer's
    /// checksum offload): the header asks the kernel to finish it, and finishing it as
    /// the kernel does gives back the packet with its complete checksum.
    #[test]
    fn receive_header_hands_partial_checksums_back_complete(s in tcp_super()) {
        let complete = completed(&s);
        let mut received = s.packet.clone();
        let mtu = received.len();
        let header = offload::receive_header(&mut received, mtu);
        prop_assert_eq!(&received, &s.packet, "a packet within the MTU is not rewritten");
        prop_assert_eq!(header.gso_type, GsoType::None);
        let partial = s.packet != complete;
        prop_assert_eq!(header.needs_csum(), partial);
        if partial {
            prop_assert_eq!((header.csum_start, header.csum_offset), (s.vnet.csum_start, s.vnet.csum_offset));
            gso::complete_checksum(&mut received, &header).unwrap();
        }
        prop_assert_eq!(received, complete.clone());
        // A complete checksum needs nothing.
        let mut whole = complete.clone();
        let mtu = whole.len();
        prop_assert_eq!(offload::receive_header(&mut whole, mtu), VirtioNetRepr::default());
    }

    /// A received super-packet longer than the MTU (a peer kernel's GSO packet that
    /// crossed veth whole): its header lets the kernel cut it into segments that fit
    /// the MTU, checksums valid, payload intact.
    #[test]
    fn receive_header_makes_super_packets_segmentable(s in tcp_super(), mtu in 576usize..=1500) {
        let mut received = completed(&s);
        prop_assume!(received.len() > mtu);
        let header = offload::receive_header(&mut received, mtu);
        let headers_len = usize::from(s.vnet.hdr_len);
        prop_assert_eq!(header.gso_type, GsoType::TcpV4);
        prop_assert_eq!(usize::from(header.hdr_len), headers_len);
        prop_assert_eq!(usize::from(header.gso_size), mtu - headers_len);
        let mut out = vec![0u8; 2 * received.len() + 80_000];
        let layout = gso::segment(&received, &header, &mut out, 0).unwrap();
        let mut payload = Vec::new();
        for i in 0..layout.count {
            let seg = &out[layout.segment(i)];
            prop_assert!(seg.len() <= mtu);
            let ip = Ipv4Packet::new_checked(seg).unwrap();
            prop_assert!(ip.verify_checksum());
            let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
            prop_assert!(tcp.verify_checksum(ip.src_addr(), ip.dst_addr()));
            payload.extend_from_slice(tcp.payload());
        }
        prop_assert_eq!(&payload[..], &s.packet[headers_len..]);
    }

    /// The flow key is the emitted addresses and ports.
    #[test]
    fn flow_keys_are_what_was_emitted(s in tcp_super()) {
        let key = gso::FlowKey::of_tcp(&s.packet).unwrap();
        let ip = Ipv4Packet::new_unchecked(&s.packet[..]);
        let tcp = TcpPacket::new_unchecked(ip.payload());
        prop_assert_eq!(key, gso::FlowKey { src: ip.src_addr(), dst: ip.dst_addr(),
                                            src_port: tcp.src_port(), dst_port: tcp.dst_port() });
    }
}

fn gso_payload_len(s: &Super) -> usize {
    usize::from(s.vnet.gso_size)
}

#[test]
fn gro_buffer_splits_into_datagrams() {
    let buf = [7u8; 3000];
    let sizes: Vec<usize> = gso::gro_datagrams(&buf, 1400).map(<[u8]>::len).collect();
    assert_eq!(sizes, [1400, 1400, 200]);
    assert_eq!(gso::gro_datagrams(&buf, 0).count(), 1);
}

#[test]
fn segment_errors_are_named() {
    let vnet = VirtioNetRepr {
        gso_type: GsoType::TcpV4,
        gso_size: 1400,
        ..VirtioNetRepr::default()
    };
    let mut out = [0u8; 100];
    let mut udp = [0u8; 40];
    Ipv4Repr {
        src_addr: Ipv4Addr::LOCALHOST,
        dst_addr: Ipv4Addr::LOCALHOST,
        protocol: protocol::UDP,
        payload_len: 20,
        ttl: 1,
        tos: 0,
        ident: 0,
        dont_frag: false,
        more_frags: false,
        frag_offset: 0,
    }
    .emit(&mut Ipv4Packet::new_unchecked(&mut udp[..]));
    assert_eq!(
        gso::segment(&udp, &vnet, &mut out, 0)
            .unwrap_err()
            .to_string(),
        "TCP: header length 0 is below the minimum 20"
    );
    udp[20 + 12] = 5 << 4;
    assert_eq!(
        gso::segment(&udp, &vnet, &mut out, 0)
            .unwrap_err()
            .to_string(),
        "GSO type TcpV4 but the IPv4 protocol is 17"
    );
    let none = VirtioNetRepr::default();
    assert_eq!(
        gso::segment(&udp, &none, &mut out, 0)
            .unwrap_err()
            .to_string(),
        "GSO type None is not segmented here (only TCPv4 and UDP_L4)"
    );
}
