//! Per-packet decisions of the hot path as pure functions over buffers (no I/O), so
//! every accept/drop rule is unit-tested with byte arrays.
//!
//! Buffer layout on transmit: a packet is read from TUN into `buf[HEADROOM - 10..]`, so
//! the 10-byte `virtio_net_hdr` ends exactly where the inner IPv4 packet starts, at
//! `HEADROOM`. VXLAN then writes its 8-byte header and the 14-byte inner Ethernet header
//! into the 22 bytes before `HEADROOM` (over the consumed vnet header): the payload is
//! never copied. The kernel's UDP socket adds the outer IPv4/UDP headers.
//!
//! On receive, the inner IPv4 packet sits 22 bytes (VXLAN) or one outer IPv4 header
//! (IPIP) into the datagram; the 10 bytes before it are overwritten with a zero vnet
//! header and the TUN write starts there — again no copy.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use weft_proto::checksum;

use super::peers::PeerTable;
use crate::lease::MacAddr;
use crate::metrics::DropReason;

/// Bytes reserved in front of the inner packet in every transmit buffer: room for the
/// largest thing written there, a frame for the encapsulating TAP (vnet header +
/// Ethernet + VXLAN's outer headers: 74, see `transmit::TapQueue`), 16-byte aligned.
pub const HEADROOM: usize = 80;
const _: () = assert!(HEADROOM >= weft_proto::ipip::HEADROOM && HEADROOM >= VXLAN_OVERHEAD);
/// VXLAN header (8) + inner Ethernet header (14).
pub const VXLAN_OVERHEAD: usize = VXLAN_HEADER_LEN + ETHERNET_HEADER_LEN;
pub const VXLAN_HEADER_LEN: usize = 8;
pub const ETHERNET_HEADER_LEN: usize = 14;
const IPV4_MIN_HEADER_LEN: usize = 20;
const ETHERTYPE_IPV4: [u8; 2] = [0x08, 0x00];
/// The VXLAN "I" flag: the VNI field is valid (RFC 7348 §5).
const VXLAN_FLAG_VNI: u8 = 0x08;
/// IPv4 protocol number of IP-in-IP.
pub const IPPROTO_IPIP: u8 = 4;

/// Source and destination of a well-formed inner IPv4 packet, plus its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InnerIpv4 {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// Total length from the header (bytes beyond it are link padding).
    pub len: usize,
}

/// Checks the minimum an IPv4 header must satisfy before we forward it: version 4, a
/// header length of at least 20 bytes, and a total length that fits the buffer.
#[inline]
pub fn parse_inner_ipv4(packet: &[u8]) -> Option<InnerIpv4> {
    if packet.len() < IPV4_MIN_HEADER_LEN || packet[0] >> 4 != 4 {
        return None;
    }
    let header_len = usize::from(packet[0] & 0x0f) * 4;
    let total_len = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
    if header_len < IPV4_MIN_HEADER_LEN || total_len < header_len || total_len > packet.len() {
        return None;
    }
    Some(InnerIpv4 {
        src: Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]),
        dst: Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]),
        len: total_len,
    })
}

/// The `virtio_net_hdr` (flags, gso_type, hdr_len, gso_size, csum_start, csum_offset;
/// native byte order) to put in front of a received inner packet written to TUN.
///
/// Normally all zero. But a peer whose kernel encapsulated a locally generated TCP/UDP
/// packet (the kernel vxlan device; later weft with checksum offload) may send it with
/// the transport checksum still *partial*: over veth the checksum offload is never
/// completed, so the field holds only the pseudo-header sum. The kernel vxlan receiver
/// keeps that state as skb metadata; we only see bytes, so we recognise it (the field
/// equals the pseudo-header sum and the full checksum does not verify) and hand the
/// packet to the kernel with `NEEDS_CSUM` pointing at the field, so it is finished
/// exactly as the kernel would have. A complete checksum is left alone, and a corrupt one
/// is left for the receiving stack to reject.
///
/// Over veth, a peer kernel's vxlan device also hands whole GSO super-packets (up to
/// 64 KB of TCP, one VXLAN header) to our UDP socket: the segmentation it deferred never
/// happens on that path. Such an inner packet, longer than the overlay MTU, is written
/// to TUN as what it is, a GSO packet (`gso_size` = MTU minus the packet's headers) with
/// its checksum made partial, and the kernel segments it only if it must.
#[inline]
pub fn rx_vnet_header(inner: &mut [u8], mtu: usize) -> [u8; super::tun::VNET_HDR_LEN] {
    let mut header = [0u8; super::tun::VNET_HDR_LEN];
    let csum = if inner.len() > mtu {
        super_packet(inner, mtu, &mut header)
    } else {
        partial_checksum(inner)
    };
    if let Some((csum_start, csum_offset)) = csum {
        header[0] = super::tun::VNET_F_NEEDS_CSUM;
        header[6..8].copy_from_slice(&csum_start.to_ne_bytes());
        header[8..10].copy_from_slice(&csum_offset.to_ne_bytes());
    }
    header
}

/// Fills the GSO fields of `header` for a TCP/UDP super-packet, rewrites its transport
/// checksum to the partial (pseudo-header) value, and returns where the checksum is.
fn super_packet(
    inner: &mut [u8],
    mtu: usize,
    header: &mut [u8; super::tun::VNET_HDR_LEN],
) -> Option<(u16, u16)> {
    let ip_header_len = usize::from(inner.first()? & 0x0f) * 4;
    if inner.len() < ip_header_len + 8 || u16::from_be_bytes([inner[6], inner[7]]) & 0x3fff != 0 {
        return None;
    }
    let protocol = inner[9];
    let (gso_type, transport_header_len, field_offset) = match protocol {
        6 => {
            let data_offset = usize::from(inner.get(ip_header_len + 12)? >> 4) * 4;
            (super::tun::VNET_GSO_TCPV4, data_offset, 16)
        }
        17 => (super::tun::VNET_GSO_UDP_L4, 8, 6),
        _ => return None,
    };
    let headers_len = ip_header_len + transport_header_len;
    if transport_header_len < 8 || inner.len() < headers_len || mtu <= headers_len {
        return None;
    }
    let src = Ipv4Addr::new(inner[12], inner[13], inner[14], inner[15]);
    let dst = Ipv4Addr::new(inner[16], inner[17], inner[18], inner[19]);
    let segment_len = u16::try_from(inner.len() - ip_header_len).ok()?;
    let partial = checksum::pseudo_header_partial(src, dst, protocol, segment_len);
    let field = ip_header_len + field_offset;
    inner[field..field + 2].copy_from_slice(&partial.to_be_bytes());
    header[1] = gso_type;
    header[2..4].copy_from_slice(&(headers_len as u16).to_ne_bytes());
    header[4..6].copy_from_slice(&((mtu - headers_len) as u16).to_ne_bytes());
    Some((ip_header_len as u16, field_offset as u16))
}

/// `Some((csum_start, csum_offset))` when `inner` (a well-formed IPv4 packet of exactly
/// its total length) is TCP/UDP with a partial checksum; see [`rx_vnet_header`].
pub fn partial_checksum(inner: &[u8]) -> Option<(u16, u16)> {
    if inner.len() < IPV4_MIN_HEADER_LEN {
        return None;
    }
    let header_len = usize::from(inner[0] & 0x0f) * 4;
    let fragmented = u16::from_be_bytes([inner[6], inner[7]]) & 0x3fff != 0;
    let protocol = inner[9];
    let field_offset: usize = match protocol {
        6 => 16,
        17 => 6,
        _ => return None,
    };
    let segment = inner.get(header_len..)?;
    if fragmented || segment.len() < field_offset + 2 {
        return None;
    }
    let field = u16::from_be_bytes([segment[field_offset], segment[field_offset + 1]]);
    if protocol == 17 && field == 0 {
        return None; // UDP without checksum
    }
    let src = Ipv4Addr::new(inner[12], inner[13], inner[14], inner[15]);
    let dst = Ipv4Addr::new(inner[16], inner[17], inner[18], inner[19]);
    let len = u16::try_from(segment.len()).ok()?;
    if field != checksum::pseudo_header_partial(src, dst, protocol, len) {
        return None;
    }
    if checksum::verify_transport(src, dst, protocol, segment) {
        return None;
    }
    Some((header_len as u16, field_offset as u16))
}

/// Writes the VXLAN header and inner Ethernet header into `headers`, the 22 bytes
/// immediately before the inner IPv4 packet.
#[inline]
pub fn write_vxlan_headers(
    headers: &mut [u8; VXLAN_OVERHEAD],
    vni: u32,
    src_mac: &MacAddr,
    dst_mac: &MacAddr,
) {
    let vni = vni.to_be_bytes();
    headers[..VXLAN_HEADER_LEN].copy_from_slice(&[
        VXLAN_FLAG_VNI,
        0,
        0,
        0,
        vni[1],
        vni[2],
        vni[3],
        0,
    ]);
    let ethernet = &mut headers[VXLAN_HEADER_LEN..];
    ethernet[0..6].copy_from_slice(dst_mac);
    ethernet[6..12].copy_from_slice(src_mac);
    ethernet[12..14].copy_from_slice(&ETHERTYPE_IPV4);
}

/// The decision for one received encapsulated packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// Offset of the inner IPv4 packet in the received buffer.
    pub offset: usize,
    /// Its length.
    pub len: usize,
}

/// Validates one VXLAN datagram (UDP payload) from `outer_src` (contract §4: only from
/// a current lease's PublicIP, with our VNI, an inner destination in our subnet and an
/// inner source in the sender's subnet).
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
    if datagram.len() < VXLAN_OVERHEAD + IPV4_MIN_HEADER_LEN {
        return Err(DropReason::RxMalformed);
    }
    let vni_bytes = vni.to_be_bytes();
    if datagram[0] & VXLAN_FLAG_VNI == 0 || datagram[4..7] != vni_bytes[1..4] {
        return Err(DropReason::RxWrongVni);
    }
    if datagram[VXLAN_HEADER_LEN + 12..VXLAN_OVERHEAD] != ETHERTYPE_IPV4 {
        return Err(DropReason::RxMalformed);
    }
    accept_inner(datagram, VXLAN_OVERHEAD, own_subnet, &sender_subnet)
}

/// Validates one IPIP packet as a raw socket returns it (outer IPv4 header included).
#[inline]
pub fn accept_ipip(
    packet: &[u8],
    own_subnet: &Ipv4Net,
    peers: &PeerTable,
) -> Result<Accepted, DropReason> {
    if packet.len() < IPV4_MIN_HEADER_LEN * 2 || packet[0] >> 4 != 4 {
        return Err(DropReason::RxMalformed);
    }
    let outer_src = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
    let sender_subnet = peers
        .subnet_of_public_ip(outer_src)
        .ok_or(DropReason::RxUnknownSource)?;
    if packet[9] != IPPROTO_IPIP {
        return Err(DropReason::RxMalformed);
    }
    let outer_header_len = usize::from(packet[0] & 0x0f) * 4;
    if outer_header_len < IPV4_MIN_HEADER_LEN {
        return Err(DropReason::RxMalformed);
    }
    accept_inner(packet, outer_header_len, own_subnet, &sender_subnet)
}

#[inline]
fn accept_inner(
    buffer: &[u8],
    offset: usize,
    own_subnet: &Ipv4Net,
    sender_subnet: &Ipv4Net,
) -> Result<Accepted, DropReason> {
    let inner = buffer
        .get(offset..)
        .and_then(parse_inner_ipv4)
        .ok_or(DropReason::RxMalformed)?;
    if !own_subnet.contains(&inner.dst) {
        return Err(DropReason::RxDstNotLocal);
    }
    if !sender_subnet.contains(&inner.src) {
        return Err(DropReason::RxSpoofedSource);
    }
    Ok(Accepted {
        offset,
        len: inner.len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::peers::Encap;
    use crate::lease::{Peer, PeerBackend};

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
        let total = 20 + payload_len;
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[8] = 64;
        p[9] = 1;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        p
    }

    fn vxlan(vni: u32, inner: &[u8]) -> Vec<u8> {
        let mut headers = [0u8; VXLAN_OVERHEAD];
        write_vxlan_headers(&mut headers, vni, &PEER_MAC, &OWN_MAC);
        let mut d = headers.to_vec();
        d.extend_from_slice(inner);
        d
    }

    const PEER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

    #[test]
    fn vxlan_headers_match_rfc7348_and_the_kernel() {
        let mut headers = [0u8; VXLAN_OVERHEAD];
        write_vxlan_headers(&mut headers, 0x123456, &OWN_MAC, &PEER_MAC);
        assert_eq!(&headers[..8], &[0x08, 0, 0, 0, 0x12, 0x34, 0x56, 0]);
        assert_eq!(&headers[8..14], &PEER_MAC);
        assert_eq!(&headers[14..20], &OWN_MAC);
        assert_eq!(&headers[20..22], &[0x08, 0x00]);
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
        no_i_flag[0] = 0;
        assert_eq!(
            accept_vxlan(&no_i_flag, PEER, 1, &own, &t),
            Err(DropReason::RxWrongVni)
        );
        let mut arp = vxlan(1, &good);
        arp[20..22].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(
            accept_vxlan(&arp, PEER, 1, &own, &t),
            Err(DropReason::RxMalformed)
        );
        let mut lying_length = vxlan(1, &good);
        lying_length[22 + 2..22 + 4].copy_from_slice(&2000u16.to_be_bytes());
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
        outer[9] = IPPROTO_IPIP;
        outer[20..].copy_from_slice(&inner);
        assert_eq!(
            accept_ipip(&outer, &own, &t),
            Ok(Accepted {
                offset: 20,
                len: 28
            })
        );
        let mut stranger = outer.clone();
        stranger[12..16].copy_from_slice(&[192, 0, 2, 50]);
        assert_eq!(
            accept_ipip(&stranger, &own, &t),
            Err(DropReason::RxUnknownSource)
        );
        let mut spoofed = outer.clone();
        spoofed[20 + 12..20 + 16].copy_from_slice(&[10, 244, 7, 1]);
        assert_eq!(
            accept_ipip(&spoofed, &own, &t),
            Err(DropReason::RxSpoofedSource)
        );
        assert_eq!(
            accept_ipip(&outer[..30], &own, &t),
            Err(DropReason::RxMalformed)
        );
    }

    fn tcp(payload: &[u8]) -> Vec<u8> {
        let mut p = ipv4([10, 244, 2, 5], [10, 244, 1, 7], 20 + payload.len());
        p[9] = 6;
        p[20 + 12] = 0x50; // data offset 5
        p[40..].copy_from_slice(payload);
        p
    }

    #[test]
    fn partial_checksums_are_handed_to_the_kernel_to_finish() {
        let src = Ipv4Addr::new(10, 244, 2, 5);
        let dst = Ipv4Addr::new(10, 244, 1, 7);
        let mut packet = tcp(b"hello, partial world");
        let partial = checksum::pseudo_header_partial(src, dst, 6, 40);
        packet[36..38].copy_from_slice(&partial.to_be_bytes());
        assert_eq!(partial_checksum(&packet), Some((20, 16)));
        let header = rx_vnet_header(&mut packet, 1450);
        assert_eq!(header[0], super::super::tun::VNET_F_NEEDS_CSUM);
        assert_eq!(u16::from_ne_bytes([header[6], header[7]]), 20);
        assert_eq!(u16::from_ne_bytes([header[8], header[9]]), 16);

        // A complete checksum is left alone.
        packet[36..38].fill(0);
        let full = checksum::transport_checksum(src, dst, 6, &packet[20..]);
        packet[36..38].copy_from_slice(&full.to_be_bytes());
        assert_eq!(partial_checksum(&packet), None);
        assert_eq!(rx_vnet_header(&mut packet, 1450), [0; 10]);
        // So is a corrupt one, and ICMP.
        packet[36] ^= 0xff;
        assert_eq!(partial_checksum(&packet), None);
        assert_eq!(partial_checksum(&ipv4([1, 1, 1, 1], [2, 2, 2, 2], 8)), None);
    }

    #[test]
    fn super_packets_become_gso_writes() {
        let mut packet = tcp(&[7u8; 3000]);
        let header = rx_vnet_header(&mut packet, 1450);
        assert_eq!(header[0], super::super::tun::VNET_F_NEEDS_CSUM);
        assert_eq!(header[1], super::super::tun::VNET_GSO_TCPV4);
        assert_eq!(u16::from_ne_bytes([header[2], header[3]]), 40, "hdr_len");
        assert_eq!(u16::from_ne_bytes([header[4], header[5]]), 1410, "gso_size");
        let partial = checksum::pseudo_header_partial(
            Ipv4Addr::new(10, 244, 2, 5),
            Ipv4Addr::new(10, 244, 1, 7),
            6,
            3020,
        );
        assert_eq!(&packet[36..38], &partial.to_be_bytes());
        // Not TCP/UDP: nothing to offload.
        let mut icmp = ipv4([1, 1, 1, 1], [2, 2, 2, 2], 3000);
        assert_eq!(rx_vnet_header(&mut icmp, 1450), [0; 10]);
    }

    #[test]
    fn inner_parse_rejects_garbage() {
        assert!(parse_inner_ipv4(&[]).is_none());
        assert!(parse_inner_ipv4(&[0x60; 40]).is_none()); // IPv6
        let mut short_ihl = ipv4([1, 1, 1, 1], [2, 2, 2, 2], 0);
        short_ihl[0] = 0x44;
        assert!(parse_inner_ipv4(&short_ihl).is_none());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let t = vxlan_table();
            let _ = accept_vxlan(&bytes, PEER, 1, &own_subnet(), &t);
            let _ = accept_ipip(&bytes, &own_subnet(), &t);
            let _ = parse_inner_ipv4(&bytes);
        }
    }
}
