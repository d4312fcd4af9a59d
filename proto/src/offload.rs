//! The virtio-net header for a decapsulated inner packet on its way into TUN: what
//! the kernel must still do to it (finish a partial checksum, segment a super-packet).
//!
//! Normally nothing: the header is all zero. But a peer whose kernel encapsulated a
//! locally generated TCP/UDP packet (the kernel vxlan device) may send it with the
//! transport checksum still *partial*: over veth the checksum offload is never
//! completed, so the field holds only the pseudo-header sum. The kernel's vxlan
//! receiver keeps that state as skb metadata; a userspace receiver only sees bytes, so
//! [`partial_checksum`] recognises it (the field equals the pseudo-header sum and the
//! full checksum does not verify) and the header hands the packet to the kernel with
//! `NEEDS_CSUM` pointing at the field, so it is finished exactly as the kernel would
//! have. A complete checksum is left alone, and a corrupt one is left for the
//! receiving stack to reject.
//!
//! Over veth, a peer kernel's vxlan device also hands whole GSO super-packets (up to
//! 64 KB of TCP, one VXLAN header) to a UDP socket: the segmentation it deferred never
//! happens on that path. Such an inner packet, longer than the overlay MTU, goes to TUN
//! as what it is, a GSO packet (`gso_size` = MTU minus the packet's headers) with its
//! checksum made partial, and the kernel segments it only if it must.

use core::net::Ipv4Addr;

use crate::checksum;
use crate::ipv4::{protocol, Ipv4Packet};
use crate::tcp::{self, TcpPacket};
use crate::udp::{self, UdpPacket};
use crate::vnet::{flags, GsoType, VirtioNetRepr};

/// The virtio-net header to write in front of the received inner IPv4 packet `inner`
/// (exactly its total length) for a TUN device whose MTU is `mtu`. A super-packet's
/// transport checksum is rewritten in place to its partial (pseudo-header) value.
#[inline]
pub fn receive_header(inner: &mut [u8], mtu: usize) -> VirtioNetRepr {
    if inner.len() > mtu {
        super_packet(inner, mtu).unwrap_or_default()
    } else {
        match partial_checksum(inner) {
            Some((csum_start, csum_offset)) => VirtioNetRepr {
                flags: flags::NEEDS_CSUM,
                csum_start,
                csum_offset,
                ..VirtioNetRepr::default()
            },
            None => VirtioNetRepr::default(),
        }
    }
}

/// The GSO header for a TCP/UDP super-packet longer than `mtu`, its transport checksum
/// rewritten to the partial value; `None` (nothing to offload) for anything else.
fn super_packet(inner: &mut [u8], mtu: usize) -> Option<VirtioNetRepr> {
    let ip = Ipv4Packet::new_checked(&*inner).ok()?;
    if ip.is_fragment() {
        return None;
    }
    let (ip_header_len, total_len) = (ip.header_len(), usize::from(ip.total_len()));
    let (src, dst, proto) = (ip.src_addr(), ip.dst_addr(), ip.protocol());
    let segment = ip.payload();
    // The kernel needs the whole transport header to repeat it in every segment.
    let (gso_type, transport_header_len, csum_offset) = match proto {
        protocol::TCP => (
            GsoType::TcpV4,
            TcpPacket::new_checked(segment).ok()?.header_len(),
            tcp::CHECKSUM_OFFSET,
        ),
        // The UDP length field is not checked: the kernel rewrites it per segment.
        protocol::UDP if segment.len() >= udp::HEADER_LEN => {
            (GsoType::UdpL4, udp::HEADER_LEN, udp::CHECKSUM_OFFSET)
        }
        _ => return None,
    };
    let headers_len = ip_header_len + transport_header_len;
    if mtu <= headers_len {
        return None;
    }
    let segment_len = u16::try_from(segment.len()).ok()?;
    let partial = checksum::pseudo_header_partial(src, dst, proto, segment_len);
    let segment = &mut inner[ip_header_len..total_len];
    match gso_type {
        GsoType::TcpV4 => TcpPacket::new_unchecked(segment).set_checksum(partial),
        _ => UdpPacket::new_unchecked(segment).set_checksum(partial),
    }
    Some(VirtioNetRepr {
        flags: flags::NEEDS_CSUM,
        gso_type,
        gso_ecn: false,
        hdr_len: u16::try_from(headers_len).ok()?,
        gso_size: u16::try_from(mtu - headers_len).ok()?,
        csum_start: ip_header_len as u16,
        csum_offset: csum_offset as u16,
    })
}

/// `Some((csum_start, csum_offset))` when `inner` (a well-formed IPv4 packet) is TCP or
/// UDP with a partial checksum: the field holds the pseudo-header sum and the full
/// checksum does not verify. See the module documentation.
#[inline]
pub fn partial_checksum(inner: &[u8]) -> Option<(u16, u16)> {
    let ip = Ipv4Packet::new_checked(inner).ok()?;
    if ip.is_fragment() {
        return None;
    }
    let (src, dst, proto) = (ip.src_addr(), ip.dst_addr(), ip.protocol());
    let segment = ip.payload();
    let (field, csum_offset) = match proto {
        protocol::TCP if segment.len() >= tcp::CHECKSUM_OFFSET + 2 => (
            TcpPacket::new_unchecked(segment).checksum(),
            tcp::CHECKSUM_OFFSET,
        ),
        protocol::UDP if segment.len() >= udp::HEADER_LEN => {
            let field = UdpPacket::new_unchecked(segment).checksum();
            if field == 0 {
                return None; // UDP without a checksum
            }
            (field, udp::CHECKSUM_OFFSET)
        }
        _ => return None,
    };
    let len = u16::try_from(segment.len()).ok()?;
    if field != checksum::pseudo_header_partial(src, dst, proto, len) {
        return None;
    }
    if checksum::verify_transport(src, dst, proto, segment) {
        return None;
    }
    Some((ip.header_len() as u16, csum_offset as u16))
}

/// What the checksum field of a received inner TCP segment holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpChecksum {
    /// The full checksum: it verifies.
    Complete,
    /// The pseudo-header sum: the sender left the checksum to offload (tx checksum
    /// offload over veth or virtio, no TSO), and a UDP socket hands the bytes over
    /// unfinished. Deliver with `NEEDS_CSUM` and the kernel finishes it.
    Partial,
    /// Neither: the segment was corrupted (on a path that did not check an outer
    /// checksum: VXLAN with UDP checksum 0, IPIP) or sent broken. The receiving TCP
    /// would drop it; weft drops it first and counts it.
    Bad,
}

/// Judges the checksum of the TCP segment `segment` (header and payload, exactly the
/// IPv4 payload) from `src` to `dst`. The partial sum is tried first: it costs a few
/// additions where verifying costs a pass over the bytes, and a complete checksum that
/// happens to equal it is still right once the kernel recomputes it from the bytes.
#[inline]
pub fn tcp_checksum(src: Ipv4Addr, dst: Ipv4Addr, segment: &[u8]) -> TcpChecksum {
    let Ok(len) = u16::try_from(segment.len()) else {
        return TcpChecksum::Bad;
    };
    if segment.len() < tcp::CHECKSUM_OFFSET + 2 {
        return TcpChecksum::Bad;
    }
    let field = TcpPacket::new_unchecked(segment).checksum();
    if field == checksum::pseudo_header_partial(src, dst, protocol::TCP, len) {
        TcpChecksum::Partial
    } else if checksum::verify_transport(src, dst, protocol::TCP, segment) {
        TcpChecksum::Complete
    } else {
        TcpChecksum::Bad
    }
}

#[cfg(test)]
mod tests {
    use core::net::Ipv4Addr;

    use super::*;
    use crate::ipv4::Ipv4Repr;

    const SRC: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 5);
    const DST: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 7);

    fn ipv4(protocol: u8, payload_len: usize) -> Vec<u8> {
        let mut p = vec![0u8; 20 + payload_len];
        Ipv4Repr {
            src_addr: SRC,
            dst_addr: DST,
            protocol,
            payload_len,
            ttl: 64,
            tos: 0,
            ident: 1,
            dont_frag: true,
            more_frags: false,
            frag_offset: 0,
        }
        .emit(&mut Ipv4Packet::new_unchecked(&mut p[..]));
        p
    }

    fn tcp(payload: &[u8]) -> Vec<u8> {
        let mut p = ipv4(protocol::TCP, 20 + payload.len());
        TcpPacket::new_unchecked(&mut p[20..]).set_header_len(20);
        p[40..].copy_from_slice(payload);
        p
    }

    fn checksum_field(p: &[u8]) -> u16 {
        TcpPacket::new_unchecked(&p[20..]).checksum()
    }

    #[test]
    fn partial_checksums_are_handed_to_the_kernel_to_finish() {
        let mut packet = tcp(b"hello, partial world");
        let partial = checksum::pseudo_header_partial(SRC, DST, protocol::TCP, 40);
        TcpPacket::new_unchecked(&mut packet[20..]).set_checksum(partial);
        assert_eq!(partial_checksum(&packet), Some((20, 16)));
        let header = receive_header(&mut packet, 1450);
        assert!(header.needs_csum());
        assert_eq!((header.csum_start, header.csum_offset), (20, 16));
        assert_eq!(header.gso_type, GsoType::None);

        // A complete checksum is left alone.
        TcpPacket::new_unchecked(&mut packet[20..]).fill_checksum(SRC, DST);
        assert_eq!(partial_checksum(&packet), None);
        assert_eq!(receive_header(&mut packet, 1450), VirtioNetRepr::default());
        // So is a corrupt one, and ICMP, and UDP without a checksum.
        packet[36] ^= 0xff;
        assert_eq!(partial_checksum(&packet), None);
        assert_eq!(partial_checksum(&ipv4(protocol::ICMP, 8)), None);
        assert_eq!(partial_checksum(&ipv4(protocol::UDP, 8)), None);
    }

    #[test]
    fn tcp_checksums_are_complete_partial_or_bad() {
        let mut packet = tcp(b"judged by its checksum");
        let len = packet.len() as u16 - 20;
        TcpPacket::new_unchecked(&mut packet[20..]).fill_checksum(SRC, DST);
        assert_eq!(tcp_checksum(SRC, DST, &packet[20..]), TcpChecksum::Complete);
        let partial = checksum::pseudo_header_partial(SRC, DST, protocol::TCP, len);
        TcpPacket::new_unchecked(&mut packet[20..]).set_checksum(partial);
        assert_eq!(tcp_checksum(SRC, DST, &packet[20..]), TcpChecksum::Partial);
        // The partial sum of another length, or one bit off the full checksum: bad.
        let other = checksum::pseudo_header_partial(SRC, DST, protocol::TCP, len + 1);
        TcpPacket::new_unchecked(&mut packet[20..]).set_checksum(other);
        assert_eq!(tcp_checksum(SRC, DST, &packet[20..]), TcpChecksum::Bad);
        TcpPacket::new_unchecked(&mut packet[20..]).fill_checksum(SRC, DST);
        packet[45] ^= 0x10;
        assert_eq!(tcp_checksum(SRC, DST, &packet[20..]), TcpChecksum::Bad);
        assert_eq!(tcp_checksum(SRC, DST, &packet[20..30]), TcpChecksum::Bad);
    }

    #[test]
    fn super_packets_become_gso_writes() {
        let mut packet = tcp(&[7u8; 3000]);
        let header = receive_header(&mut packet, 1450);
        assert!(header.needs_csum());
        assert_eq!(header.gso_type, GsoType::TcpV4);
        assert_eq!(header.hdr_len, 40);
        assert_eq!(header.gso_size, 1410);
        assert_eq!((header.csum_start, header.csum_offset), (20, 16));
        let partial = checksum::pseudo_header_partial(SRC, DST, protocol::TCP, 3020);
        assert_eq!(checksum_field(&packet), partial);

        let mut udp = ipv4(protocol::UDP, 3000);
        let header = receive_header(&mut udp, 1450);
        assert_eq!(header.gso_type, GsoType::UdpL4);
        assert_eq!((header.hdr_len, header.gso_size), (28, 1422));
        assert_eq!((header.csum_start, header.csum_offset), (20, 6));

        // Not TCP/UDP, or a fragment: nothing to offload.
        let mut icmp = ipv4(protocol::ICMP, 3000);
        assert_eq!(receive_header(&mut icmp, 1450), VirtioNetRepr::default());
        let mut fragment = tcp(&[7u8; 3000]);
        Ipv4Packet::new_unchecked(&mut fragment[..]).set_frag(false, true, 0);
        assert_eq!(
            receive_header(&mut fragment, 1450),
            VirtioNetRepr::default()
        );
    }
}
