//! GRO for UDP datagrams on their way into TUN: consecutive equal-sized datagrams of one
//! flow become one `GSO_UDP_L4` super-packet, so the kernel takes a whole train in one
//! `write` and carries it through the host's forwarding path as one skb, segmenting it
//! only at the socket that receives it (`udp_rcv_segment`). Small-datagram flows then
//! cost one TUN write per train instead of one per datagram: the same trade the kernel
//! makes with `UDP_GRO` on a NIC, and what wireguard-go does for its TUN since 2023.
//!
//! The rules follow Linux's `udp_gro_receive_segment` (plain GRO, not fraglist): same
//! addresses, ports, TOS, TTL and DF; every datagram as long as the first, except a
//! shorter last one that ends the train; IP IDs consecutive unless DF is set (the
//! kernel's segmentation numbers the datagrams it cuts `id, id + 1, ...`; for DF
//! datagrams the ID carries no meaning, RFC 6864); at most [`MAX_SEGMENTS`] datagrams
//! and 64 KB. A datagram whose IPv4 header or non-zero UDP checksum is wrong is never
//! merged: the super-packet's checksum is recomputed by the kernel, which would hide
//! the corruption.

use core::ops::Range;

use crate::checksum;
use crate::gso::{self, CoalesceReject};
use crate::ipv4::{self, protocol};
use crate::udp;
use crate::vnet::{self, GsoType, VirtioNetHdr, VirtioNetRepr};

/// Most datagrams in one super-packet (the kernel's `UDP_GRO_CNT_MAX`).
pub const MAX_SEGMENTS: usize = 64;

use crate::gso::PACKET_START;

pub use crate::gso::FlowKey;

/// The flow of an unfragmented IPv4/UDP datagram whose header lies within its total
/// length; `None` for anything else (which is then never coalesced). A UDP flow's key
/// can equal a TCP flow's: callers key their open super-packets by protocol as well.
#[inline]
pub fn flow_of(packet: &[u8]) -> Option<FlowKey> {
    let ip = ipv4::Ipv4Packet::new_checked(packet).ok()?;
    if ip.protocol() != protocol::UDP || ip.is_fragment() {
        return None;
    }
    let udp = udp::UdpPacket::new_checked(ip.payload()).ok()?;
    Some(FlowKey {
        src: ip.src_addr(),
        dst: ip.dst_addr(),
        src_port: udp.src_port(),
        dst_port: udp.dst_port(),
    })
}

/// Checks a datagram for coalescing; returns its IPv4 header length.
fn candidate(datagram: &[u8], verify: bool) -> Result<usize, CoalesceReject> {
    let ip_len = gso::whole_ipv4_of(datagram, protocol::UDP).ok_or(CoalesceReject::NotUdp)?;
    let ip = ipv4::Ipv4Packet::new_unchecked(datagram);
    let udp =
        udp::UdpPacket::new_checked(&datagram[ip_len..]).map_err(|_| CoalesceReject::NotUdp)?;
    // A UDP length short of the IP payload (trailing bytes) is legal but not something
    // segmentation could reproduce; an empty payload has nothing to merge.
    if usize::from(udp.len()) != datagram.len() - ip_len || udp.payload().is_empty() {
        return Err(CoalesceReject::NotUdp);
    }
    if !ip.verify_checksum() || (verify && !udp.verify_checksum(ip.src_addr(), ip.dst_addr())) {
        return Err(CoalesceReject::BadChecksum);
    }
    Ok(ip_len)
}

/// A UDP super-packet being built in a caller buffer `out`: the virtio-net header at
/// `out[..10]`, the packet from `out[10..]`. Use the same `out` for every call.
#[derive(Debug, Clone)]
pub struct UdpCoalescer {
    /// Packet bytes so far at `out[vnet::HEADER_LEN..]`.
    len: usize,
    ip_header_len: usize,
    gso_size: usize,
    /// The IP ID the next datagram must carry (when DF is clear).
    next_ident: u16,
    segments: usize,
    closed: bool,
    verify: bool,
}

impl UdpCoalescer {
    /// Starts a super-packet with `datagram` (a whole IPv4/UDP packet), copying it to
    /// `out[10..]`. With `verify_udp_checksum`, every datagram's non-zero UDP checksum
    /// is checked (needed unless the transport already guaranteed integrity).
    pub fn start(
        out: &mut [u8],
        datagram: &[u8],
        verify_udp_checksum: bool,
    ) -> Result<Self, CoalesceReject> {
        let ip_header_len = candidate(datagram, verify_udp_checksum)?;
        if PACKET_START + datagram.len() > out.len() {
            return Err(CoalesceReject::Full);
        }
        out[PACKET_START..PACKET_START + datagram.len()].copy_from_slice(datagram);
        let ident = ipv4::Ipv4Packet::new_unchecked(datagram).ident();
        Ok(UdpCoalescer {
            len: datagram.len(),
            ip_header_len,
            gso_size: datagram.len() - ip_header_len - udp::HEADER_LEN,
            next_ident: ident.wrapping_add(1),
            segments: 1,
            closed: false,
            verify: verify_udp_checksum,
        })
    }

    /// Number of datagrams in the super-packet.
    pub fn segments(&self) -> usize {
        self.segments
    }

    /// Appends `datagram` if it continues the super-packet in `out`.
    pub fn try_append(&mut self, out: &mut [u8], datagram: &[u8]) -> Result<(), CoalesceReject> {
        if self.closed {
            return Err(CoalesceReject::Full);
        }
        let ip_len = candidate(datagram, self.verify)?;
        let first = &out[PACKET_START..PACKET_START + self.ip_header_len + udp::HEADER_LEN];
        if ip_len != self.ip_header_len
            || datagram[12..20] != first[12..20]
            || datagram[ip_len..ip_len + 4] != first[ip_len..ip_len + 4]
        {
            return Err(CoalesceReject::OtherFlow);
        }
        // Version/IHL, TOS, flags (DF), TTL, protocol and options; not total length, ID,
        // fragment offset (zero: unfragmented) or checksum.
        let dont_frag = datagram[6] & 0x40 != 0;
        let same_ip = datagram[..2] == first[..2]
            && datagram[6] == first[6]
            && datagram[8..10] == first[8..10]
            && datagram[20..ip_len] == first[20..ip_len];
        let ident = u16::from_be_bytes([datagram[4], datagram[5]]);
        if !same_ip || (!dont_frag && ident != self.next_ident) {
            return Err(CoalesceReject::HeaderMismatch);
        }
        let payload = &datagram[ip_len + udp::HEADER_LEN..];
        self.len = gso::append_payload(out, self.len, self.gso_size, payload).inspect_err(|e| {
            self.closed |= *e == CoalesceReject::Full;
        })?;
        self.segments += 1;
        self.next_ident = ident.wrapping_add(1);
        // Only the last datagram may be short.
        self.closed = payload.len() < self.gso_size || self.segments == MAX_SEGMENTS;
        Ok(())
    }

    /// Finalises the super-packet in `out` and returns the range to write to TUN
    /// (virtio-net header + packet). A single datagram is passed on unchanged with an
    /// empty virtio-net header; several become one `GSO_UDP_L4` packet: IP total
    /// length and checksum, UDP length covering the whole train, and the UDP checksum
    /// field holding the pseudo-header sum (`NEEDS_CSUM`), from which the kernel's
    /// `__udp_gso_segment` derives each datagram's.
    pub fn finish(&self, out: &mut [u8]) -> Range<usize> {
        let end = PACKET_START + self.len;
        let (head, packet) = out[..end].split_at_mut(PACKET_START);
        if self.segments == 1 {
            VirtioNetRepr::default().emit(&mut VirtioNetHdr::new_unchecked(head));
            return 0..end;
        }
        let ip_len = self.ip_header_len;
        let mut ip = ipv4::Ipv4Packet::new_unchecked(&mut packet[..ip_len]);
        ip.set_total_len(self.len as u16);
        ip.fill_checksum();
        let src = ip.src_addr();
        let dst = ip.dst_addr();
        let udp_len = (self.len - ip_len) as u16;
        let mut udp = udp::UdpPacket::new_unchecked(&mut packet[ip_len..]);
        udp.set_len(udp_len);
        udp.set_checksum(checksum::pseudo_header_partial(
            src,
            dst,
            protocol::UDP,
            udp_len,
        ));
        VirtioNetRepr {
            flags: vnet::flags::NEEDS_CSUM,
            gso_type: GsoType::UdpL4,
            gso_ecn: false,
            hdr_len: (ip_len + udp::HEADER_LEN) as u16,
            gso_size: self.gso_size as u16,
            csum_start: ip_len as u16,
            csum_offset: udp::CHECKSUM_OFFSET as u16,
        }
        .emit(&mut VirtioNetHdr::new_unchecked(head));
        0..end
    }
}

#[cfg(test)]
mod tests {
    use core::net::Ipv4Addr;

    use super::*;
    use crate::gso;

    const SRC: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
    const DST: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 2);

    /// An IPv4/UDP datagram with `payload` filled with `fill`, complete checksums.
    fn datagram(ident: u16, payload: usize, fill: u8, dont_frag: bool) -> Vec<u8> {
        let mut p = vec![fill; 20 + udp::HEADER_LEN + payload];
        ipv4::Ipv4Repr {
            src_addr: SRC,
            dst_addr: DST,
            protocol: protocol::UDP,
            payload_len: udp::HEADER_LEN + payload,
            ttl: 63,
            tos: 0,
            ident,
            dont_frag,
            more_frags: false,
            frag_offset: 0,
        }
        .emit(&mut ipv4::Ipv4Packet::new_unchecked(&mut p[..]));
        let mut u = udp::UdpPacket::new_unchecked(&mut p[20..]);
        u.set_src_port(40000);
        u.set_dst_port(5201);
        u.set_len((udp::HEADER_LEN + payload) as u16);
        u.fill_checksum(SRC, DST);
        p
    }

    fn out() -> Vec<u8> {
        vec![0u8; vnet::HEADER_LEN + 65_535]
    }

    #[test]
    fn a_train_becomes_one_udp_gso_packet_that_segments_back_into_the_datagrams() {
        let mut buf = out();
        let train: Vec<Vec<u8>> = (0..5)
            .map(|i| datagram(100 + i, if i == 4 { 30 } else { 64 }, i as u8, false))
            .collect();
        let mut c = UdpCoalescer::start(&mut buf, &train[0], true).unwrap();
        for d in &train[1..] {
            c.try_append(&mut buf, d).unwrap();
        }
        assert_eq!(c.segments(), 5);
        // The short last datagram closed the train.
        assert_eq!(
            c.try_append(&mut buf, &datagram(105, 64, 9, false)),
            Err(CoalesceReject::Full)
        );
        let range = c.finish(&mut buf);
        let vnet =
            VirtioNetRepr::parse(&VirtioNetHdr::new_unchecked(&buf[..vnet::HEADER_LEN])).unwrap();
        assert_eq!(vnet.gso_type, GsoType::UdpL4);
        assert_eq!(vnet.gso_size, 64);
        assert!(vnet.needs_csum());
        // What the kernel does with it: the same datagrams, checksums complete.
        let packet = &buf[vnet::HEADER_LEN..range.end];
        let mut segs = vec![0u8; 8 * 1024];
        let layout = gso::segment(packet, &vnet, &mut segs, 0).unwrap();
        assert_eq!(layout.count, 5);
        for (i, d) in train.iter().enumerate() {
            assert_eq!(&segs[layout.segment(i)], &d[..], "datagram {i}");
        }
    }

    #[test]
    fn one_datagram_passes_unchanged() {
        let mut buf = out();
        let d = datagram(7, 64, 1, true);
        let c = UdpCoalescer::start(&mut buf, &d, true).unwrap();
        let range = c.finish(&mut buf);
        assert_eq!(&buf[range.clone()][..vnet::HEADER_LEN], &[0u8; 10]);
        assert_eq!(&buf[range][vnet::HEADER_LEN..], &d[..]);
    }

    #[test]
    fn what_segmentation_could_not_reproduce_is_refused() {
        let mut buf = out();
        let first = datagram(10, 64, 0, false);
        let mut c = UdpCoalescer::start(&mut buf, &first, true).unwrap();
        // A gap in the IDs of non-DF datagrams.
        assert_eq!(
            c.try_append(&mut buf, &datagram(12, 64, 0, false)),
            Err(CoalesceReject::HeaderMismatch)
        );
        // Larger than the first.
        assert_eq!(
            c.try_append(&mut buf, &datagram(11, 65, 0, false)),
            Err(CoalesceReject::SizeMismatch)
        );
        // Another TTL.
        let mut ttl = datagram(11, 64, 0, false);
        let mut ip = ipv4::Ipv4Packet::new_unchecked(&mut ttl[..]);
        ip.set_ttl(1);
        ip.fill_checksum();
        assert_eq!(
            c.try_append(&mut buf, &ttl),
            Err(CoalesceReject::HeaderMismatch)
        );
        // Another port.
        let mut port = datagram(11, 64, 0, false);
        let mut u = udp::UdpPacket::new_unchecked(&mut port[20..]);
        u.set_dst_port(1);
        u.fill_checksum(SRC, DST);
        assert_eq!(
            c.try_append(&mut buf, &port),
            Err(CoalesceReject::OtherFlow)
        );
        // A corrupt payload under a non-zero checksum.
        let mut corrupt = datagram(11, 64, 0, false);
        corrupt[40] ^= 0xff;
        assert_eq!(
            c.try_append(&mut buf, &corrupt),
            Err(CoalesceReject::BadChecksum)
        );
        // None of that broke the train.
        c.try_append(&mut buf, &datagram(11, 64, 0, false)).unwrap();
        assert_eq!(c.segments(), 2);
        // TCP is not UDP.
        let mut tcp = datagram(1, 64, 0, false);
        ipv4::Ipv4Packet::new_unchecked(&mut tcp[..]).set_protocol(protocol::TCP);
        assert!(UdpCoalescer::start(&mut buf, &tcp, true).is_err());
        assert_eq!(flow_of(&tcp), None);
    }

    #[test]
    fn dont_fragment_datagrams_merge_whatever_their_ids_and_zero_checksums_are_fine() {
        let mut buf = out();
        let mut c = UdpCoalescer::start(&mut buf, &datagram(500, 64, 0, true), true).unwrap();
        let mut no_checksum = datagram(3, 64, 0, true);
        udp::UdpPacket::new_unchecked(&mut no_checksum[20..]).set_checksum(0);
        c.try_append(&mut buf, &no_checksum).unwrap();
        c.try_append(&mut buf, &datagram(9, 64, 0, true)).unwrap();
        assert_eq!(c.segments(), 3);
    }

    #[test]
    fn a_train_stops_at_the_kernels_segment_limit() {
        let mut buf = out();
        let mut c = UdpCoalescer::start(&mut buf, &datagram(0, 16, 0, false), true).unwrap();
        for i in 1..MAX_SEGMENTS {
            c.try_append(&mut buf, &datagram(i as u16, 16, 0, false))
                .unwrap();
        }
        assert_eq!(
            c.try_append(&mut buf, &datagram(MAX_SEGMENTS as u16, 16, 0, false)),
            Err(CoalesceReject::Full)
        );
        assert_eq!(
            flow_of(&datagram(0, 16, 0, false)),
            Some(FlowKey {
                src: SRC,
                dst: DST,
                src_port: 40000,
                dst_port: 5201
            })
        );
    }
}
