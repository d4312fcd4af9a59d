//! Property tests: every decoder returns an error (never panics) on arbitrary bytes,
//! and encode → decode round-trips for every format.

use std::net::Ipv4Addr;

use proptest::prelude::*;
use weft_proto::arp::{ArpPacket, ArpRepr};
use weft_proto::ethernet::{EthernetFrame, EthernetRepr, MacAddr};
use weft_proto::ipv4::{Ipv4Packet, Ipv4Repr, OuterIpv4};
use weft_proto::tcp::{TcpPacket, TcpRepr};
use weft_proto::udp::{UdpChecksum, UdpPacket, UdpRepr};
use weft_proto::vnet::{GsoType, VirtioNetHdr, VirtioNetRepr};
use weft_proto::vxlan::{VxlanPacket, VxlanRepr};
use weft_proto::{
    flow, gso, ipip, offload, vxlan, IpipFrame, VxlanEncap, VxlanFrame, VXLAN_HEADROOM,
};

fn mac() -> impl Strategy<Value = MacAddr> {
    any::<[u8; 6]>().prop_map(MacAddr)
}

fn ip() -> impl Strategy<Value = Ipv4Addr> {
    any::<[u8; 4]>().prop_map(Ipv4Addr::from)
}

/// A valid IPv4 packet (option-less header, correct checksum) with arbitrary payload.
fn inner_packet() -> impl Strategy<Value = Vec<u8>> {
    (
        ip(),
        ip(),
        any::<u8>(),
        any::<u8>(),
        any::<u16>(),
        proptest::collection::vec(any::<u8>(), 0..1500),
    )
        .prop_map(|(src, dst, protocol, tos, ident, payload)| {
            let mut p = vec![0u8; 20 + payload.len()];
            p[20..].copy_from_slice(&payload);
            Ipv4Repr {
                src_addr: src,
                dst_addr: dst,
                protocol,
                payload_len: payload.len(),
                ttl: 64,
                tos,
                ident,
                dont_frag: true,
                more_frags: false,
                frag_offset: 0,
            }
            .emit(&mut Ipv4Packet::new_unchecked(&mut p[..]));
            p
        })
}

fn outer() -> impl Strategy<Value = OuterIpv4> {
    (
        ip(),
        ip(),
        any::<u8>(),
        any::<u8>(),
        any::<u16>(),
        any::<bool>(),
    )
        .prop_map(
            |(src_addr, dst_addr, ttl, tos, ident, dont_frag)| OuterIpv4 {
                src_addr,
                dst_addr,
                ttl,
                tos,
                ident,
                dont_frag,
            },
        )
}

fn gso_type() -> impl Strategy<Value = GsoType> {
    prop_oneof![
        Just(GsoType::None),
        Just(GsoType::TcpV4),
        Just(GsoType::Udp),
        Just(GsoType::TcpV6),
        Just(GsoType::UdpL4)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200), a in ip(), b in ip()) {
        if let Ok(f) = EthernetFrame::new_checked(&bytes[..]) {
            let _ = (f.src_addr(), f.dst_addr(), f.ethertype(), f.payload().len());
            let _ = EthernetRepr::parse(&f);
        }
        if let Ok(p) = ArpPacket::new_checked(&bytes[..]) {
            let _ = (p.operation(), p.sender_mac(), p.sender_ip(), p.target_mac(), p.target_ip());
        }
        let _ = ArpRepr::parse(&ArpPacket::new_unchecked(&bytes[..]));
        if let Ok(p) = Ipv4Packet::new_checked(&bytes[..]) {
            let _ = (p.payload().len(), p.options().len(), p.verify_checksum(), p.frag_offset(), p.src_addr());
            let _ = Ipv4Repr::parse(&p);
        }
        let _ = Ipv4Repr::parse(&Ipv4Packet::new_unchecked(&bytes[..]));
        if let Ok(p) = UdpPacket::new_checked(&bytes[..]) {
            let _ = (p.payload().len(), p.verify_checksum(a, b), p.compute_checksum(a, b));
        }
        let _ = UdpRepr::parse(&UdpPacket::new_unchecked(&bytes[..]), a, b);
        if let Ok(p) = TcpPacket::new_checked(&bytes[..]) {
            let _ = (p.payload().len(), p.options().len(), p.flags(), p.verify_checksum(a, b));
        }
        let _ = TcpRepr::parse(&TcpPacket::new_unchecked(&bytes[..]), a, b);
        if let Ok(p) = VxlanPacket::new_checked(&bytes[..]) {
            let _ = (p.vni(), p.payload().len());
        }
        let _ = VxlanRepr::parse(&VxlanPacket::new_unchecked(&bytes[..]));
        let _ = VirtioNetRepr::parse(&VirtioNetHdr::new_unchecked(&bytes[..]));
        if let Ok(d) = vxlan::decap(&bytes) {
            prop_assert!(d.inner_ip.end <= bytes.len());
        }
        if let Ok(d) = vxlan::decap_frame(&bytes) {
            prop_assert!(d.vxlan.inner_ip.end <= bytes.len());
        }
        if let Ok(d) = ipip::decap(&bytes) {
            prop_assert!(d.inner.end <= bytes.len());
        }
        if let Ok(d) = ipip::decap_frame(&bytes) {
            prop_assert!(d.ipip.inner.end <= bytes.len());
        }
        let port = flow::flow_src_port(&bytes, 32768, 61000);
        prop_assert!((32768..61000).contains(&port));
        if let Ok(p) = Ipv4Packet::new_checked(&bytes[..]) {
            if let Ok(d) = ipip::decap_checked(&p) {
                prop_assert!(d.inner.end <= bytes.len());
                prop_assert_eq!(Ok(d), ipip::decap(&bytes));
            }
        }
        if let Some(key) = gso::FlowKey::of_tcp(&bytes) {
            prop_assert_eq!(key.src, Ipv4Packet::new_unchecked(&bytes[..]).src_addr());
        }
        let mut copy = bytes.clone();
        let header = offload::receive_header(&mut copy, usize::from(a.octets()[0]) * 8);
        prop_assert!(usize::from(header.hdr_len) <= copy.len());
        if let Some((start, offset)) = offload::partial_checksum(&bytes) {
            prop_assert!(usize::from(start) + usize::from(offset) + 2 <= bytes.len());
        }
    }

    /// Outer headers in front of a packet move its vnet offsets by their length, and
    /// only where there are offsets.
    #[test]
    fn vnet_with_prefix_moves_offsets(flags in 0u8..8, gso_type in gso_type(), hdr_len in any::<u16>(),
                                      gso_size in any::<u16>(), csum_start in any::<u16>(),
                                      csum_offset in any::<u16>(), prefix in any::<u16>()) {
        let repr = VirtioNetRepr { flags, gso_type, gso_ecn: false, hdr_len, gso_size, csum_start, csum_offset };
        let moved = repr.with_prefix(prefix);
        let mut buf = [0u8; weft_proto::vnet::HEADER_LEN];
        moved.emit(&mut VirtioNetHdr::new_unchecked(&mut buf[..]));
        prop_assert_eq!(VirtioNetRepr::parse(&VirtioNetHdr::new_unchecked(&buf[..])), Ok(moved));
        prop_assert_eq!((moved.flags, moved.gso_type, moved.gso_size, moved.csum_offset),
                        (flags, gso_type, gso_size, csum_offset));
        if gso_type != GsoType::None || repr.needs_csum() {
            prop_assert_eq!(moved.hdr_len, hdr_len.saturating_add(prefix));
            prop_assert_eq!(moved.csum_start, csum_start.saturating_add(prefix));
        } else {
            prop_assert_eq!(moved, repr);
        }
    }

    /// Arbitrary bytes behind a plausible prefix reach the deeper checks.
    #[test]
    fn decap_never_panics_behind_valid_prefix(tail in proptest::collection::vec(any::<u8>(), 0..100), vni in 0u32..=0xff_ffff) {
        let mut datagram = vec![0u8; 22];
        VxlanRepr { vni }.emit(&mut VxlanPacket::new_unchecked(&mut datagram[..8]));
        datagram[20..22].copy_from_slice(&0x0800u16.to_be_bytes());
        datagram.extend_from_slice(&tail);
        if let Ok(d) = vxlan::decap(&datagram) {
            prop_assert_eq!(d.vni, vni);
            prop_assert!(d.inner_ip.end <= datagram.len());
        }
        let mut packet = vec![0x45u8, 0, 0, 0, 0, 0, 0, 0, 64, 4, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8];
        let len = u16::try_from(20 + tail.len()).unwrap();
        packet[2..4].copy_from_slice(&len.to_be_bytes());
        packet.extend_from_slice(&tail);
        if let Ok(d) = ipip::decap(&packet) {
            prop_assert!(d.inner.end <= packet.len());
        }
    }

    #[test]
    fn ethernet_round_trip(src in mac(), dst in mac(), ethertype in any::<u16>()) {
        let repr = EthernetRepr { src_addr: src, dst_addr: dst, ethertype };
        let mut buf = [0u8; 14];
        repr.emit(&mut EthernetFrame::new_unchecked(&mut buf[..]));
        prop_assert_eq!(EthernetRepr::parse(&EthernetFrame::new_checked(&buf[..]).unwrap()), Ok(repr));
    }

    #[test]
    fn arp_round_trip(operation in any::<u16>(), sm in mac(), si in ip(), tm in mac(), ti in ip()) {
        let repr = ArpRepr { operation, sender_mac: sm, sender_ip: si, target_mac: tm, target_ip: ti };
        let mut buf = [0u8; 28];
        repr.emit(&mut ArpPacket::new_unchecked(&mut buf[..]));
        prop_assert_eq!(ArpRepr::parse(&ArpPacket::new_unchecked(&buf[..])), Ok(repr));
    }

    #[test]
    fn ipv4_round_trip(src in ip(), dst in ip(), protocol in any::<u8>(), payload_len in 0usize..200, ttl in any::<u8>(),
                       tos in any::<u8>(), ident in any::<u16>(), dont_frag in any::<bool>(), more_frags in any::<bool>(),
                       frag_units in 0u16..0x2000) {
        let repr = Ipv4Repr { src_addr: src, dst_addr: dst, protocol, payload_len, ttl, tos, ident, dont_frag, more_frags,
                              frag_offset: frag_units << 3 };
        let mut buf = vec![0u8; 20 + payload_len];
        repr.emit(&mut Ipv4Packet::new_unchecked(&mut buf[..]));
        prop_assert_eq!(Ipv4Repr::parse(&Ipv4Packet::new_checked(&buf[..]).unwrap()), Ok(repr));
        let theirs = etherparse::Ipv4HeaderSlice::from_slice(&buf).unwrap().to_header();
        prop_assert_eq!(theirs.header_checksum, theirs.calc_header_checksum());
    }

    #[test]
    fn udp_round_trip(src in ip(), dst in ip(), sp in any::<u16>(), dp in any::<u16>(),
                      payload in proptest::collection::vec(any::<u8>(), 0..300), compute in any::<bool>()) {
        let repr = UdpRepr { src_port: sp, dst_port: dp, payload_len: payload.len() };
        let mut buf = vec![0u8; 8 + payload.len()];
        buf[8..].copy_from_slice(&payload);
        let mode = if compute { UdpChecksum::Compute } else { UdpChecksum::None };
        repr.emit(&mut UdpPacket::new_unchecked(&mut buf[..]), src, dst, mode);
        prop_assert_eq!(UdpRepr::parse(&UdpPacket::new_checked(&buf[..]).unwrap(), src, dst), Ok(repr));
        let view = UdpPacket::new_unchecked(&buf[..]);
        prop_assert_eq!(view.payload(), &payload[..]);
        if compute {
            prop_assert_ne!(UdpPacket::new_unchecked(&buf[..]).checksum(), 0);
        }
    }

    #[test]
    fn tcp_round_trip(src in ip(), dst in ip(), sp in any::<u16>(), dp in any::<u16>(), seq in any::<u32>(), ack in any::<u32>(),
                      flags in any::<u8>(), window in any::<u16>(), urgent in any::<u16>(),
                      payload in proptest::collection::vec(any::<u8>(), 0..300)) {
        let repr = TcpRepr { src_port: sp, dst_port: dp, seq_number: seq, ack_number: ack, flags, window, urgent,
                             payload_len: payload.len() };
        let mut buf = vec![0u8; 20 + payload.len()];
        buf[20..].copy_from_slice(&payload);
        repr.emit(&mut TcpPacket::new_unchecked(&mut buf[..]), src, dst);
        prop_assert_eq!(TcpRepr::parse(&TcpPacket::new_checked(&buf[..]).unwrap(), src, dst), Ok(repr));
    }

    #[test]
    fn vxlan_header_round_trip(vni in 0u32..=0xff_ffff) {
        let mut buf = [0xffu8; 8];
        VxlanRepr { vni }.emit(&mut VxlanPacket::new_unchecked(&mut buf[..]));
        prop_assert_eq!(buf[0], 0x08);
        prop_assert_eq!([buf[1], buf[2], buf[3], buf[7]], [0, 0, 0, 0]);
        prop_assert_eq!(VxlanRepr::parse(&VxlanPacket::new_checked(&buf[..]).unwrap()), Ok(VxlanRepr { vni }));
    }

    #[test]
    fn vnet_round_trip(flags in 0u8..8, gso_type in gso_type(), gso_ecn in any::<bool>(), hdr_len in any::<u16>(),
                       gso_size in any::<u16>(), csum_start in any::<u16>(), csum_offset in any::<u16>()) {
        let repr = VirtioNetRepr { flags, gso_type, gso_ecn, hdr_len, gso_size, csum_start, csum_offset };
        let mut buf = [0u8; 10];
        repr.emit(&mut VirtioNetHdr::new_unchecked(&mut buf[..]));
        prop_assert_eq!(VirtioNetRepr::parse(&VirtioNetHdr::new_checked(&buf[..]).unwrap()), Ok(repr));
    }

    #[test]
    fn vxlan_encap_decap_round_trip(inner in inner_packet(), vni in 0u32..=0xff_ffff, src_mac in mac(), dst_mac in mac(),
                                    outer in outer(), src_port in any::<u16>(), compute in any::<bool>()) {
        let mut buf = vec![0u8; VXLAN_HEADROOM + inner.len()];
        buf[VXLAN_HEADROOM..].copy_from_slice(&inner);
        let encap = VxlanEncap { vni, src_mac, dst_mac };
        let payload = vxlan::encap_payload(&mut buf, VXLAN_HEADROOM, inner.len(), &encap).unwrap();
        let d = vxlan::decap(&buf[payload.clone()]).unwrap();
        prop_assert_eq!((d.vni, d.inner_src_mac, d.inner_dst_mac), (vni, src_mac, dst_mac));
        prop_assert_eq!(&buf[payload.clone()][d.inner_ip.clone()], &inner[..]);

        let frame = VxlanFrame {
            encap, outer_src_mac: dst_mac, outer_dst_mac: src_mac, outer, src_port, dst_port: 8472,
            udp_checksum: if compute { UdpChecksum::Compute } else { UdpChecksum::None },
        };
        let range = vxlan::encap_frame(&mut buf, VXLAN_HEADROOM, inner.len(), &frame).unwrap();
        prop_assert_eq!(range.clone(), 0..buf.len());
        let d = vxlan::decap_frame(&buf).unwrap();
        prop_assert_eq!((d.outer_src, d.outer_dst, d.outer_ident, d.src_port), (outer.src_addr, outer.dst_addr, outer.ident, src_port));
        prop_assert_eq!(d.outer_dont_frag, outer.dont_frag);
        prop_assert_eq!(&buf[d.vxlan.inner_ip], &inner[..]);
    }

    #[test]
    fn ipip_encap_decap_round_trip(inner in inner_packet(), outer in outer(), src_mac in mac(), dst_mac in mac()) {
        let mut buf = vec![0u8; VXLAN_HEADROOM + inner.len()];
        buf[VXLAN_HEADROOM..].copy_from_slice(&inner);
        let packet = ipip::encap_header(&mut buf, VXLAN_HEADROOM, inner.len(), &outer).unwrap();
        let d = ipip::decap(&buf[packet.clone()]).unwrap();
        prop_assert_eq!((d.outer_src, d.outer_dst), (outer.src_addr, outer.dst_addr));
        prop_assert_eq!(&buf[packet][d.inner], &inner[..]);

        let frame = IpipFrame { outer_src_mac: src_mac, outer_dst_mac: dst_mac, outer };
        let range = ipip::encap_frame(&mut buf, VXLAN_HEADROOM, inner.len(), &frame).unwrap();
        let d = ipip::decap_frame(&buf[range.clone()]).unwrap();
        prop_assert_eq!((d.outer_src_mac, d.outer_dst_mac, d.outer_ident), (src_mac, dst_mac, outer.ident));
        prop_assert_eq!(&buf[range][d.ipip.inner], &inner[..]);
    }
}
