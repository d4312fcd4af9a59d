//! Per-packet policy of the hot path as pure functions (no I/O): what a received packet
//! must satisfy to be delivered ([`accept_vxlan`], [`accept_ipip`]) and the outer
//! headers each backend puts in front of an inner packet ([`write_vxlan_outer`],
//! [`write_ipip_outer`]). Every header is read and written through `weft_proto`'s views
//! and builders; this module decides, it knows no byte offsets.
//!
//! Buffer layout on transmit: a packet is read from TUN into `buf[HEADROOM - 10..]`, so
//! the 10-byte virtio-net header ends exactly where the inner IPv4 packet starts, at
//! `HEADROOM`. The outer headers are then written into the bytes before `HEADROOM`
//! (over the consumed vnet header): the payload is never copied. For a UDP socket that
//! is VXLAN's 8-byte header and the 14-byte inner Ethernet header (the kernel adds outer
//! IPv4/UDP); for the encapsulating TAP the whole frame, with a new vnet header in
//! front of it.
//!
//! On receive, the inner IPv4 packet sits 22 bytes (VXLAN) or one outer IPv4 header
//! (IPIP) into the datagram; the 10 bytes before it are overwritten with a vnet header
//! and the TUN write starts there — again no copy.

use std::net::Ipv4Addr;
use std::ops::Range;

use ipnet::Ipv4Net;
use weft_proto::error::{EncapError, WireError};
use weft_proto::ipv4::{self, Ipv4Packet, OuterIpv4};
use weft_proto::udp::UdpChecksum;
use weft_proto::vxlan::{self, VxlanEncap, VxlanFrame, VxlanPacket};
use weft_proto::{flow, ipip, vnet, IpipFrame};

use super::peers::PeerTable;
use super::tap_encap::{FRAME_DST_MAC, FRAME_SRC_MAC, OUTER_TTL};
use crate::lease::MacAddr;
use crate::metrics::DropReason;

/// Bytes reserved in front of the inner packet in every transmit buffer: room for the
/// largest thing written there, a frame for the encapsulating TAP (vnet header +
/// Ethernet + VXLAN's outer headers: 74, see `transmit::TapQueue`), 16-byte aligned.
pub const HEADROOM: usize = 80;
const _: () = assert!(HEADROOM >= vnet::HEADER_LEN + vxlan::HEADROOM);
const _: () = assert!(vxlan::HEADROOM >= ipip::HEADROOM);
/// What VXLAN puts in front of an inner packet sent on a UDP socket: the VXLAN header
/// (8) and the inner Ethernet header (14).
pub const VXLAN_OVERHEAD: usize = vxlan::PAYLOAD_HEADROOM;

/// Ports the outer UDP source port is chosen from, by inner flow: the kernel vxlan
/// device's default (the local ephemeral range).
const VXLAN_SRC_PORTS: (u16, u16) = (flow::EPHEMERAL_PORT_MIN, flow::EPHEMERAL_PORT_MAX);

/// The outer IPv4 header of a frame written whole to the encapsulating TAP: the kernel
/// adds nothing but segmentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TapOuter {
    /// Our PublicIP.
    pub src: Ipv4Addr,
    /// The peer's PublicIP.
    pub dst: Ipv4Addr,
    /// The outer IPv4 ID (of the first wire packet, for a super-packet).
    pub ident: u16,
}

impl TapOuter {
    fn ipv4(&self, dont_frag: bool) -> OuterIpv4 {
        OuterIpv4 {
            src_addr: self.src,
            dst_addr: self.dst,
            ttl: OUTER_TTL,
            tos: 0,
            ident: self.ident,
            dont_frag,
        }
    }
}

/// Writes VXLAN's headers in front of the inner packet at `buf[inner]` and returns the
/// range to send: with `tap`, the whole frame (outer Ethernet, IPv4 without fragment
/// protection as the kernel's vxlan device sends it, UDP from the flow's source port to
/// `dst_port` without checksum, VXLAN, inner Ethernet); without, the UDP payload for a
/// socket (VXLAN + inner Ethernet), the kernel adding outer IPv4 and UDP.
#[inline]
pub fn write_vxlan_outer(
    buf: &mut [u8],
    inner: Range<usize>,
    vni: u32,
    dst_port: u16,
    local_mac: &MacAddr,
    peer_mac: &MacAddr,
    tap: Option<&TapOuter>,
) -> Result<Range<usize>, EncapError> {
    let encap = VxlanEncap {
        vni,
        src_mac: weft_proto::MacAddr(*local_mac),
        dst_mac: weft_proto::MacAddr(*peer_mac),
    };
    let Some(tap) = tap else {
        return vxlan::encap_payload(buf, inner.start, inner.len(), &encap);
    };
    let src_port = flow::flow_src_port(
        buf.get(inner.clone()).unwrap_or_default(),
        VXLAN_SRC_PORTS.0,
        VXLAN_SRC_PORTS.1,
    );
    let frame = VxlanFrame {
        encap,
        outer_src_mac: weft_proto::MacAddr(FRAME_SRC_MAC),
        outer_dst_mac: weft_proto::MacAddr(FRAME_DST_MAC),
        // As the kernel's vxlan device: fragments allowed on the way.
        outer: tap.ipv4(false),
        src_port,
        dst_port,
        udp_checksum: UdpChecksum::None,
    };
    vxlan::encap_frame(buf, inner.start, inner.len(), &frame)
}

/// Writes IPIP's headers in front of the inner packet at `buf[inner]` and returns the
/// range to send: with `tap`, the whole frame (outer Ethernet, IPv4 protocol 4 without
/// `DF`, see `backend::allow_fragmentation`); without, the inner packet itself, since a
/// raw IPIP socket adds the outer header.
#[inline]
pub fn write_ipip_outer(
    buf: &mut [u8],
    inner: Range<usize>,
    tap: Option<&TapOuter>,
) -> Result<Range<usize>, EncapError> {
    let Some(tap) = tap else {
        return match buf.get(inner.clone()) {
            Some(_) => Ok(inner),
            None => Err(EncapError::OutOfBuffer {
                start: inner.start,
                end: inner.end,
                len: buf.len(),
            }),
        };
    };
    let frame = IpipFrame {
        outer_src_mac: weft_proto::MacAddr(FRAME_SRC_MAC),
        outer_dst_mac: weft_proto::MacAddr(FRAME_DST_MAC),
        // Fragments allowed on the way, as VXLAN: a smaller path MTU must not blackhole.
        outer: tap.ipv4(false),
    };
    ipip::encap_frame(buf, inner.start, inner.len(), &frame)
}

/// The decision for one received encapsulated packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// Offset of the inner IPv4 packet in the received buffer.
    pub offset: usize,
    /// Its length.
    pub len: usize,
}

/// Validates one VXLAN datagram (UDP payload) from `outer_src`: only from a current
/// lease's PublicIP, with our VNI, an inner destination in our subnet and an inner
/// source in the sender's subnet.
#[inline]
pub fn accept_vxlan(
    datagram: &[u8],
    outer_src: Ipv4Addr,
    vni: u32,
    own_subnet: &Ipv4Net,
    peers: &PeerTable,
) -> Result<Accepted, DropReason> {
    let sender_subnet = peers
        .subnet_of_public_ip(outer_src)
        .ok_or(DropReason::RxUnknownSource)?;
    if datagram.len() < VXLAN_OVERHEAD + ipv4::HEADER_LEN {
        return Err(DropReason::RxMalformed);
    }
    let decap = match vxlan::decap(datagram) {
        Ok(decap) if decap.vni == vni => decap,
        Ok(_) | Err(WireError::VxlanNoVniFlag { .. }) => return Err(DropReason::RxWrongVni),
        // Another VNI's packet is not ours, whatever it carries (the length was
        // checked above, so the header is there).
        Err(_) if VxlanPacket::new_unchecked(datagram).vni() != vni => {
            return Err(DropReason::RxWrongVni)
        }
        Err(_) => return Err(DropReason::RxMalformed),
    };
    accept_inner(
        decap.inner_ip,
        decap.inner_src,
        decap.inner_dst,
        own_subnet,
        &sender_subnet,
    )
}

/// Validates one IPIP packet as a raw socket returns it (outer IPv4 header included).
#[inline]
pub fn accept_ipip(
    packet: &[u8],
    own_subnet: &Ipv4Net,
    peers: &PeerTable,
) -> Result<Accepted, DropReason> {
    if packet.len() < ipv4::HEADER_LEN * 2 {
        return Err(DropReason::RxMalformed);
    }
    let outer = Ipv4Packet::new_checked(packet).map_err(|_| DropReason::RxMalformed)?;
    let sender_subnet = peers
        .subnet_of_public_ip(outer.src_addr())
        .ok_or(DropReason::RxUnknownSource)?;
    let decap = ipip::decap_checked(&outer).map_err(|_| DropReason::RxMalformed)?;
    accept_inner(
        decap.inner,
        decap.inner_src,
        decap.inner_dst,
        own_subnet,
        &sender_subnet,
    )
}

#[inline]
fn accept_inner(
    inner: Range<usize>,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    own_subnet: &Ipv4Net,
    sender_subnet: &Ipv4Net,
) -> Result<Accepted, DropReason> {
    if !own_subnet.contains(&dst) {
        return Err(DropReason::RxDstNotLocal);
    }
    if !sender_subnet.contains(&src) {
        return Err(DropReason::RxSpoofedSource);
    }
    Ok(Accepted {
        offset: inner.start,
        len: inner.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::peers::Encap;
    use crate::lease::{Peer, PeerBackend};
    use weft_proto::ethernet::{ethertype, EthernetFrame};
    use weft_proto::ipv4::{protocol, Ipv4Repr};

    const OWN_MAC: MacAddr = [2, 0, 0, 0, 0, 1];
    const PEER_MAC: MacAddr = [2, 0, 0, 0, 0, 2];

    fn own_subnet() -> Ipv4Net {
        "10.244.1.0/24".parse().unwrap()
    }

    fn table(encap: Encap, backend: PeerBackend) -> PeerTable {
        let peer = Peer {
            subnet: "10.244.2.0/24".parse().unwrap(),
            public_ip: "192.0.2.2".parse().unwrap(),
            backend,
        };
        PeerTable::build(24, &encap, [(&peer, true)])
    }

    fn vxlan_table() -> PeerTable {
        table(
            Encap::Vxlan {
                vni: 1,
                port: 8472,
                local_mac: OWN_MAC,
            },
            PeerBackend::Vxlan {
                vni: 1,
                vtep_mac: PEER_MAC,
            },
        )
    }

    fn ipv4(src: [u8; 4], dst: [u8; 4], payload_len: usize) -> Vec<u8> {
        let mut p = vec![0u8; ipv4::HEADER_LEN + payload_len];
        Ipv4Repr {
            src_addr: src.into(),
            dst_addr: dst.into(),
            protocol: protocol::ICMP,
            payload_len,
            ttl: 64,
            tos: 0,
            ident: 1,
            dont_frag: false,
            more_frags: false,
            frag_offset: 0,
        }
        .emit(&mut Ipv4Packet::new_unchecked(&mut p[..]));
        p
    }

    /// The inner packet's IPv4 header in a VXLAN datagram, to spoil.
    fn inner_ipv4(datagram: &mut [u8]) -> Ipv4Packet<&mut [u8]> {
        Ipv4Packet::new_unchecked(&mut datagram[VXLAN_OVERHEAD..])
    }

    fn vxlan(vni: u32, inner: &[u8]) -> Vec<u8> {
        let mut d = vec![0u8; VXLAN_OVERHEAD];
        d.extend_from_slice(inner);
        let range = write_vxlan_outer(
            &mut d,
            VXLAN_OVERHEAD..VXLAN_OVERHEAD + inner.len(),
            vni,
            8472,
            &PEER_MAC,
            &OWN_MAC,
            None,
        )
        .unwrap();
        assert_eq!(range, 0..d.len());
        d
    }

    const PEER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

    #[test]
    fn vxlan_headers_for_a_socket_are_vxlan_and_inner_ethernet() {
        let inner = ipv4([10, 244, 1, 2], [10, 244, 2, 2], 8);
        let mut buf = vec![0u8; HEADROOM];
        buf.extend_from_slice(&inner);
        let range = write_vxlan_outer(
            &mut buf,
            HEADROOM..HEADROOM + inner.len(),
            0x123456,
            8472,
            &OWN_MAC,
            &PEER_MAC,
            None,
        )
        .unwrap();
        assert_eq!(range, HEADROOM - VXLAN_OVERHEAD..buf.len());
        let decap = vxlan::decap(&buf[range.clone()]).unwrap();
        assert_eq!(decap.vni, 0x123456);
        assert_eq!(decap.inner_src_mac.0, OWN_MAC);
        assert_eq!(decap.inner_dst_mac.0, PEER_MAC);
        assert_eq!(&buf[range][decap.inner_ip], &inner[..]);
    }

    fn tap_outer() -> TapOuter {
        TapOuter {
            src: Ipv4Addr::new(192, 0, 2, 1),
            dst: PEER,
            ident: 0x4242,
        }
    }

    #[test]
    fn vxlan_frames_for_the_tap_are_what_the_kernel_vxlan_device_sends() {
        let inner = ipv4([10, 244, 1, 2], [10, 244, 2, 2], 8);
        let mut buf = vec![0u8; HEADROOM];
        buf.extend_from_slice(&inner);
        let range = write_vxlan_outer(
            &mut buf,
            HEADROOM..HEADROOM + inner.len(),
            1,
            4789,
            &OWN_MAC,
            &PEER_MAC,
            Some(&tap_outer()),
        )
        .unwrap();
        let frame = vxlan::decap_frame(&buf[range]).unwrap();
        assert_eq!(frame.outer_src, Ipv4Addr::new(192, 0, 2, 1));
        assert_eq!(frame.outer_dst, PEER);
        assert_eq!(frame.outer_ident, 0x4242);
        assert_eq!(frame.outer_ttl, OUTER_TTL);
        assert!(!frame.outer_dont_frag);
        assert_eq!(frame.dst_port, 4789);
        assert_eq!(frame.udp_checksum, 0);
        assert_eq!(
            frame.src_port,
            flow::flow_src_port(&inner, VXLAN_SRC_PORTS.0, VXLAN_SRC_PORTS.1)
        );
        assert_eq!(frame.vxlan.vni, 1);
        assert_eq!(frame.vxlan.inner_src_mac.0, OWN_MAC);
        assert_eq!(frame.vxlan.inner_dst_mac.0, PEER_MAC);
    }

    #[test]
    fn ipip_needs_nothing_for_the_socket_and_a_whole_frame_for_the_tap() {
        let inner = ipv4([10, 244, 1, 2], [10, 244, 2, 2], 8);
        let mut buf = vec![0u8; HEADROOM];
        buf.extend_from_slice(&inner);
        let inner_range = HEADROOM..HEADROOM + inner.len();
        assert_eq!(
            write_ipip_outer(&mut buf, inner_range.clone(), None),
            Ok(inner_range.clone())
        );
        let past_the_end = HEADROOM..buf.len() + 1;
        assert!(write_ipip_outer(&mut buf, past_the_end, None).is_err());
        let range = write_ipip_outer(&mut buf, inner_range, Some(&tap_outer())).unwrap();
        let frame = ipip::decap_frame(&buf[range.clone()]).unwrap();
        assert_eq!(frame.ipip.outer_src, Ipv4Addr::new(192, 0, 2, 1));
        assert_eq!(frame.ipip.outer_dst, PEER);
        assert_eq!(frame.outer_ident, 0x4242);
        // No DF: a narrower path fragments rather than drops (dataplane_pmtu).
        assert!(!frame.outer_dont_frag);
        assert_eq!(&buf[range][frame.ipip.inner], &inner[..]);
    }

    #[test]
    fn accepts_valid_vxlan_and_trims_padding() {
        let mut datagram = vxlan(1, &ipv4([10, 244, 2, 5], [10, 244, 1, 7], 8));
        datagram.extend_from_slice(&[0; 6]); // Ethernet padding
        let accepted = accept_vxlan(&datagram, PEER, 1, &own_subnet(), &vxlan_table()).unwrap();
        assert_eq!(
            accepted,
            Accepted {
                offset: 22,
                len: 28
            }
        );
    }

    #[test]
    fn vxlan_drop_reasons() {
        let good = ipv4([10, 244, 2, 5], [10, 244, 1, 7], 8);
        let t = vxlan_table();
        let own = own_subnet();
        let stranger = Ipv4Addr::new(192, 0, 2, 99);
        assert_eq!(
            accept_vxlan(&vxlan(1, &good), stranger, 1, &own, &t),
            Err(DropReason::RxUnknownSource)
        );
        assert_eq!(
            accept_vxlan(&vxlan(2, &good), PEER, 1, &own, &t),
            Err(DropReason::RxWrongVni)
        );
        let spoofed = ipv4([10, 244, 3, 5], [10, 244, 1, 7], 8);
        assert_eq!(
            accept_vxlan(&vxlan(1, &spoofed), PEER, 1, &own, &t),
            Err(DropReason::RxSpoofedSource)
        );
        let elsewhere = ipv4([10, 244, 2, 5], [10, 244, 9, 7], 8);
        assert_eq!(
            accept_vxlan(&vxlan(1, &elsewhere), PEER, 1, &own, &t),
            Err(DropReason::RxDstNotLocal)
        );
        let truncated = &vxlan(1, &good)[..30];
        assert_eq!(
            accept_vxlan(truncated, PEER, 1, &own, &t),
            Err(DropReason::RxMalformed)
        );
        let mut no_i_flag = vxlan(1, &good);
        VxlanPacket::new_unchecked(&mut no_i_flag[..]).set_flags(0);
        assert_eq!(
            accept_vxlan(&no_i_flag, PEER, 1, &own, &t),
            Err(DropReason::RxWrongVni)
        );
        let mut arp = vxlan(1, &good);
        EthernetFrame::new_unchecked(&mut arp[vxlan::HEADER_LEN..]).set_ethertype(ethertype::ARP);
        assert_eq!(
            accept_vxlan(&arp, PEER, 1, &own, &t),
            Err(DropReason::RxMalformed)
        );
        let mut lying_length = vxlan(1, &good);
        inner_ipv4(&mut lying_length).set_total_len(2000);
        assert_eq!(
            accept_vxlan(&lying_length, PEER, 1, &own, &t),
            Err(DropReason::RxMalformed)
        );
    }

    #[test]
    fn ipip_accepts_and_drops() {
        let t = table(Encap::Ipip, PeerBackend::Ipip);
        let own = own_subnet();
        let inner = ipv4([10, 244, 2, 5], [10, 244, 1, 7], 8);
        let mut outer = ipv4([192, 0, 2, 2], [192, 0, 2, 1], inner.len());
        Ipv4Packet::new_unchecked(&mut outer[..]).set_protocol(protocol::IPIP);
        outer[ipv4::HEADER_LEN..].copy_from_slice(&inner);
        assert_eq!(
            accept_ipip(&outer, &own, &t),
            Ok(Accepted {
                offset: 20,
                len: 28
            })
        );
        let mut stranger = outer.clone();
        Ipv4Packet::new_unchecked(&mut stranger[..]).set_src_addr(Ipv4Addr::new(192, 0, 2, 50));
        assert_eq!(
            accept_ipip(&stranger, &own, &t),
            Err(DropReason::RxUnknownSource)
        );
        let mut spoofed = outer.clone();
        Ipv4Packet::new_unchecked(&mut spoofed[ipv4::HEADER_LEN..])
            .set_src_addr(Ipv4Addr::new(10, 244, 7, 1));
        assert_eq!(
            accept_ipip(&spoofed, &own, &t),
            Err(DropReason::RxSpoofedSource)
        );
        assert_eq!(
            accept_ipip(&outer[..30], &own, &t),
            Err(DropReason::RxMalformed)
        );
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let t = vxlan_table();
            let _ = accept_vxlan(&bytes, PEER, 1, &own_subnet(), &t);
            let _ = accept_ipip(&bytes, &own_subnet(), &t);
        }
    }
}
