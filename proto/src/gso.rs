//! Segmentation and coalescing of TCP (and UDP) super-packets, the userspace halves
//! of TSO and GRO, as pure functions over caller buffers.
//!
//! * Transmit: a TUN device with `IFF_VNET_HDR` and `TUNSETOFFLOAD(TSO4)` hands weftd
//!   up to 64 KB IPv4/TCP *super-packets* plus a [`VirtioNetRepr`] (`gso_size`, partial
//!   checksum). [`segment`] cuts one into MTU-sized packets the way the kernel's
//!   `tcp_gso_segment` would: headers copied, IP total length and ID (+1 per segment),
//!   TCP sequence numbers, FIN/PSH only on the last segment, CWR only on the first,
//!   and both checksums complete. Segments are laid out at a fixed stride with
//!   headroom before each, so that after writing the 22 VXLAN bytes into each headroom
//!   the datagrams are contiguous and equally sized: one `sendmsg` with `UDP_SEGMENT`
//!   = stride sends them all.
//! * Receive: [`TcpCoalescer`] appends consecutive in-order segments of one flow into
//!   one super-packet (the rules of Linux's `tcp_gro_receive`, as wireguard-go's
//!   `tcpPacketsCanCoalesce` follows them) and writes the virtio-net header that lets
//!   TUN accept it as a GSO packet with a partial checksum.
//! * [`complete_checksum`] finishes a `NEEDS_CSUM` packet that is not segmented;
//!   [`gro_datagrams`] splits a `UDP_GRO` receive buffer into its datagrams.

use core::net::Ipv4Addr;
use core::ops::Range;

use crate::checksum;
use crate::error::{Layer, WireError};
use crate::ipv4::{self, protocol};
use crate::offload::{self, TcpChecksum};
use crate::tcp::{self, flags};
use crate::udp;
use crate::vnet::{self, GsoType, VirtioNetHdr, VirtioNetRepr};

/// Why a super-packet cannot be segmented or a checksum completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GsoError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("GSO type {0:?} is not segmented here (only TCPv4 and UDP_L4)")]
    UnsupportedGsoType(GsoType),
    #[error("GSO type {gso_type:?} but the IPv4 protocol is {protocol}")]
    ProtocolMismatch { gso_type: GsoType, protocol: u8 },
    #[error("gso_size is 0")]
    ZeroGsoSize,
    #[error("segment of {len} bytes exceeds the IPv4 maximum of 65535")]
    SegmentTooLong { len: usize },
    #[error("output buffer of {have} bytes is too small for the segments: need {need}")]
    OutputTooSmall { need: usize, have: usize },
    #[error("checksum field at {start} + {offset} lies outside the {len}-byte packet")]
    ChecksumOutOfBounds { start: u16, offset: u16, len: usize },
}

/// Where [`segment`] put the segments: segment `i`'s packet is at
/// `out[i * stride + headroom ..][.. len_i]`, where every segment but the last is
/// `segment_len` bytes long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segmented {
    pub count: usize,
    pub headroom: usize,
    /// Distance between the starts of consecutive segments (headroom included).
    pub stride: usize,
    /// Length of every segment but the last (headers + `gso_size`).
    pub segment_len: usize,
    pub last_len: usize,
}

impl Segmented {
    /// The range of segment `i`'s packet in the output buffer (headroom excluded).
    pub fn segment(&self, i: usize) -> Range<usize> {
        let start = i * self.stride + self.headroom;
        let len = if i + 1 == self.count {
            self.last_len
        } else {
            self.segment_len
        };
        start..start + len
    }

    /// The range covering all segments with their headroom: after encapsulating each
    /// one into its headroom this is one contiguous `UDP_SEGMENT` buffer.
    pub fn total(&self) -> Range<usize> {
        0..(self.count - 1) * self.stride + self.headroom + self.last_len
    }
}

/// The transport header length and protocol of a GSO super-packet.
fn transport_header_len(
    packet: &[u8],
    ip_header_len: usize,
    gso_type: GsoType,
) -> Result<usize, GsoError> {
    let l4 = &packet[ip_header_len..];
    let (want, len) = match gso_type {
        GsoType::TcpV4 => (protocol::TCP, tcp::TcpPacket::new_checked(l4)?.header_len()),
        GsoType::UdpL4 => {
            crate::error::need(Layer::Udp, udp::HEADER_LEN, l4.len())?;
            (protocol::UDP, udp::HEADER_LEN)
        }
        other => return Err(GsoError::UnsupportedGsoType(other)),
    };
    if packet[9] != want {
        return Err(GsoError::ProtocolMismatch {
            gso_type,
            protocol: packet[9],
        });
    }
    Ok(len)
}

/// Splits the IPv4 TCP (`GsoType::TcpV4`) or UDP (`GsoType::UdpL4`) super-packet
/// `packet` (as read from TUN after the virtio-net header) into segments of at most
/// `vnet.gso_size` payload bytes, written into `out` with `headroom` free bytes
/// before each (see [`Segmented`]). All checksums of the segments are complete,
/// whatever the super-packet's checksum field held.
pub fn segment(
    packet: &[u8],
    vnet: &VirtioNetRepr,
    out: &mut [u8],
    headroom: usize,
) -> Result<Segmented, GsoError> {
    let (ip_len, total_len) = ipv4::check_header(packet, Layer::Ipv4)?;
    let packet = &packet[..total_len];
    let l4_header_len = transport_header_len(packet, ip_len, vnet.gso_type)?;
    let gso_size = usize::from(vnet.gso_size);
    if gso_size == 0 {
        return Err(GsoError::ZeroGsoSize);
    }
    let hdr_len = ip_len + l4_header_len;
    let payload = &packet[hdr_len..];
    let count = payload.len().div_ceil(gso_size).max(1);
    let segment_len = hdr_len + gso_size;
    if segment_len > usize::from(u16::MAX) {
        return Err(GsoError::SegmentTooLong { len: segment_len });
    }
    let stride = headroom + segment_len;
    let last_len = hdr_len + (payload.len() - (count - 1) * gso_size);
    let layout = Segmented {
        count,
        headroom,
        stride,
        segment_len,
        last_len,
    };
    let need = layout.total().end;
    if need > out.len() {
        return Err(GsoError::OutputTooSmall {
            need,
            have: out.len(),
        });
    }

    let ident = u16::from_be_bytes([packet[4], packet[5]]);
    let src = ipv4::Ipv4Packet::new_unchecked(packet).src_addr();
    let dst = ipv4::Ipv4Packet::new_unchecked(packet).dst_addr();
    let first_seq = if vnet.gso_type == GsoType::TcpV4 {
        tcp::TcpPacket::new_unchecked(&packet[ip_len..]).seq_number()
    } else {
        0
    };
    for (i, chunk) in payload
        .chunks(gso_size)
        .chain(payload.is_empty().then_some(&[][..]))
        .enumerate()
    {
        let range = layout.segment(i);
        let seg = &mut out[range];
        seg[..hdr_len].copy_from_slice(&packet[..hdr_len]);
        seg[hdr_len..].copy_from_slice(chunk);
        let seg_len = seg.len();

        let mut ip = ipv4::Ipv4Packet::new_unchecked(&mut seg[..ip_len]);
        ip.set_total_len(seg_len as u16);
        ip.set_ident(ident.wrapping_add(i as u16));
        ip.fill_checksum();

        let l4 = &mut seg[ip_len..];
        if vnet.gso_type == GsoType::TcpV4 {
            let mut tcp = tcp::TcpPacket::new_unchecked(l4);
            tcp.set_seq_number(first_seq.wrapping_add((i * gso_size) as u32));
            let mut f = tcp.flags();
            if i + 1 != count {
                f &= !(flags::FIN | flags::PSH);
            }
            if i != 0 {
                f &= !flags::CWR;
            }
            tcp.set_flags(f);
            tcp.fill_checksum(src, dst);
        } else {
            let mut udp = udp::UdpPacket::new_unchecked(l4);
            udp.set_len((seg_len - ip_len) as u16);
            udp.fill_checksum(src, dst);
        }
    }
    Ok(layout)
}

/// Completes the partial checksum of a `NEEDS_CSUM` packet in place: sums
/// `packet[csum_start..]` (its field holding the pseudo-header sum) and stores the
/// complement at `csum_start + csum_offset`. Does nothing without `NEEDS_CSUM`.
#[inline]
pub fn complete_checksum(packet: &mut [u8], vnet: &VirtioNetRepr) -> Result<(), GsoError> {
    if !vnet.needs_csum() {
        return Ok(());
    }
    let start = usize::from(vnet.csum_start);
    let field = start + usize::from(vnet.csum_offset);
    if field + 2 > packet.len() {
        return Err(GsoError::ChecksumOutOfBounds {
            start: vnet.csum_start,
            offset: vnet.csum_offset,
            len: packet.len(),
        });
    }
    let sum = checksum::internet_checksum(&packet[start..]);
    // UDP transmits a computed 0 as 0xffff; for TCP both encode the same sum.
    let sum = if sum == 0 && packet.get(9) == Some(&protocol::UDP) {
        0xffff
    } else {
        sum
    };
    packet[field..field + 2].copy_from_slice(&sum.to_be_bytes());
    Ok(())
}

/// The datagrams of a `UDP_GRO` receive buffer: `gso_size`-byte chunks, the last one
/// possibly shorter. A `gso_size` of 0 (no `UDP_GRO` control message) means one
/// datagram.
pub fn gro_datagrams(buf: &[u8], gso_size: u16) -> core::slice::Chunks<'_, u8> {
    let size = if gso_size == 0 {
        buf.len().max(1)
    } else {
        usize::from(gso_size)
    };
    buf.chunks(size)
}

/// A TCP flow's identity (addresses and ports): the receive side keeps one
/// super-packet open per key and closes a flow's super-packet before anything else of
/// that flow is written, so no segment overtakes another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub src_port: u16,
    pub dst_port: u16,
}

impl FlowKey {
    /// The flow of an unfragmented IPv4/TCP packet whose ports lie within its total
    /// length; `None` for anything else (which is then never coalesced).
    #[inline]
    pub fn of_tcp(packet: &[u8]) -> Option<FlowKey> {
        let ip = ipv4::Ipv4Packet::new_checked(packet).ok()?;
        if ip.protocol() != protocol::TCP || ip.is_fragment() {
            return None;
        }
        let ports = ip.payload();
        if ports.len() < PORTS_LEN {
            return None;
        }
        let tcp = tcp::TcpPacket::new_unchecked(ports);
        Some(FlowKey {
            src: ip.src_addr(),
            dst: ip.dst_addr(),
            src_port: tcp.src_port(),
            dst_port: tcp.dst_port(),
        })
    }
}

/// Bytes of a TCP header that hold the two ports.
const PORTS_LEN: usize = 4;

/// Why a segment was not (or not further) coalesced. The caller then finishes the
/// current super-packet and starts a new one with this segment (or writes it alone).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CoalesceReject {
    /// Not an unfragmented IPv4/TCP packet with payload and sane headers.
    NotTcp,
    /// Not an unfragmented IPv4/UDP datagram with payload whose UDP length is its IP
    /// payload's (`udp_gro`).
    NotUdp,
    /// IPv4 header or TCP checksum wrong (the TCP checksum neither complete nor the
    /// partial sum a sender leaves to offload): never hide a corrupt segment in a GSO
    /// packet whose checksum the kernel will recompute.
    BadChecksum,
    /// SYN, RST or URG, or no ACK: such segments are passed on alone.
    Flags,
    /// Other addresses or ports.
    OtherFlow,
    /// Same flow, but IP header fields, TCP ACK, window, flags or options differ.
    HeaderMismatch,
    /// The sequence number is not the next one expected.
    OutOfOrder,
    /// Payload larger than the first segment's, or the previous one was short.
    SizeMismatch,
    /// The super-packet is complete (FIN/PSH seen, or 64 KB / the buffer reached).
    Full,
}

/// A TCP super-packet being built in a caller buffer `out`: the virtio-net header at
/// `out[..10]`, the packet from `out[10..]`. Use the same `out` for every call.
#[derive(Debug, Clone)]
pub struct TcpCoalescer {
    /// Packet bytes so far at `out[vnet::HEADER_LEN..]`.
    len: usize,
    ip_header_len: usize,
    hdr_len: usize,
    gso_size: usize,
    next_seq: u32,
    segments: usize,
    /// PSH/FIN of the last appended segment.
    tail_flags: u8,
    closed: bool,
    verify: bool,
    /// The first segment's TCP checksum is partial (see [`offload::TcpChecksum`]).
    first_partial: bool,
}

pub(crate) const PACKET_START: usize = vnet::HEADER_LEN;
const MAX_PACKET: usize = u16::MAX as usize;

/// The IPv4 header length of `packet` if it is one whole, unfragmented IPv4 packet
/// (total length = buffer length) carrying `transport`: what coalescing may consider.
pub(crate) fn whole_ipv4_of(packet: &[u8], transport: u8) -> Option<usize> {
    let (ip_len, total_len) = ipv4::check_header(packet, Layer::Ipv4).ok()?;
    let ip = ipv4::Ipv4Packet::new_unchecked(packet);
    (total_len == packet.len() && ip.protocol() == transport && !ip.is_fragment()).then_some(ip_len)
}

/// Appends `payload` behind the `len` packet bytes of a super-packet in `out` and
/// returns the new length: refused as `SizeMismatch` when larger than the first
/// segment's `gso_size`, as `Full` (the caller closes) when it would pass 64 KB or the
/// buffer.
pub(crate) fn append_payload(
    out: &mut [u8],
    len: usize,
    gso_size: usize,
    payload: &[u8],
) -> Result<usize, CoalesceReject> {
    if payload.len() > gso_size {
        return Err(CoalesceReject::SizeMismatch);
    }
    let end = PACKET_START + len + payload.len();
    if len + payload.len() > MAX_PACKET || end > out.len() {
        return Err(CoalesceReject::Full);
    }
    out[PACKET_START + len..end].copy_from_slice(payload);
    Ok(len + payload.len())
}

/// Checks a segment for coalescing; returns (ip header len, tcp header len, whether its
/// TCP checksum is the partial sum a sender left to offload).
fn candidate(segment: &[u8], verify: bool) -> Result<(usize, usize, bool), CoalesceReject> {
    let ip_len = whole_ipv4_of(segment, protocol::TCP).ok_or(CoalesceReject::NotTcp)?;
    let ip = ipv4::Ipv4Packet::new_unchecked(segment);
    let tcp =
        tcp::TcpPacket::new_checked(&segment[ip_len..]).map_err(|_| CoalesceReject::NotTcp)?;
    if tcp.payload().is_empty() {
        return Err(CoalesceReject::NotTcp);
    }
    let f = tcp.flags();
    if f & flags::ACK == 0 || f & (flags::SYN | flags::RST | flags::URG) != 0 {
        return Err(CoalesceReject::Flags);
    }
    if !ip.verify_checksum() {
        return Err(CoalesceReject::BadChecksum);
    }
    // Verified only on request; a segment not verified counts as complete.
    let partial = if verify {
        match offload::tcp_checksum(ip.src_addr(), ip.dst_addr(), &segment[ip_len..]) {
            TcpChecksum::Complete => false,
            TcpChecksum::Partial => true,
            TcpChecksum::Bad => return Err(CoalesceReject::BadChecksum),
        }
    } else {
        false
    };
    Ok((ip_len, tcp.header_len(), partial))
}

impl TcpCoalescer {
    /// Starts a super-packet with `segment` (a whole IPv4/TCP packet), copying it to
    /// `out[10..]`. With `verify_tcp_checksum`, every segment's TCP checksum is checked
    /// (needed unless the transport already guaranteed integrity).
    pub fn start(
        out: &mut [u8],
        segment: &[u8],
        verify_tcp_checksum: bool,
    ) -> Result<Self, CoalesceReject> {
        let (ip_header_len, tcp_header_len, partial) = candidate(segment, verify_tcp_checksum)?;
        if PACKET_START + segment.len() > out.len() {
            return Err(CoalesceReject::Full);
        }
        out[PACKET_START..PACKET_START + segment.len()].copy_from_slice(segment);
        let hdr_len = ip_header_len + tcp_header_len;
        let tcp = tcp::TcpPacket::new_unchecked(&segment[ip_header_len..]);
        let gso_size = segment.len() - hdr_len;
        Ok(TcpCoalescer {
            len: segment.len(),
            ip_header_len,
            hdr_len,
            gso_size,
            next_seq: tcp.seq_number().wrapping_add(gso_size as u32),
            segments: 1,
            tail_flags: 0,
            closed: tcp.flags() & (flags::PSH | flags::FIN) != 0,
            verify: verify_tcp_checksum,
            first_partial: partial,
        })
    }

    /// Number of segments in the super-packet.
    pub fn segments(&self) -> usize {
        self.segments
    }

    /// Whether nothing more can be appended (PSH or FIN seen, a short segment, or
    /// full): the receiver should write it out now rather than hold it, as Linux's GRO
    /// flushes at PSH.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Appends `segment` if it continues the super-packet in `out` (same flow and
    /// headers, next sequence number, not larger than the first segment).
    pub fn try_append(&mut self, out: &mut [u8], segment: &[u8]) -> Result<(), CoalesceReject> {
        if self.closed {
            return Err(CoalesceReject::Full);
        }
        let (ip_len, tcp_len, _) = candidate(segment, self.verify)?;
        let first = &out[PACKET_START..PACKET_START + self.hdr_len];
        // Same addresses and ports.
        if segment[12..20] != first[12..20]
            || ip_len != self.ip_header_len
            || segment[ip_len..ip_len + 4] != first[ip_len..ip_len + 4]
        {
            return Err(CoalesceReject::OtherFlow);
        }
        let f = segment[ip_len + 13];
        let first_flags = first[ip_len + 13];
        let same_ip = segment[..2] == first[..2]
            && segment[6..10] == first[6..10]
            && segment[20..ip_len] == first[20..ip_len];
        let same_tcp = ip_len + tcp_len == self.hdr_len
            && segment[ip_len + 8..ip_len + 13] == first[ip_len + 8..ip_len + 13] // ACK, data offset
            && segment[ip_len + 14..ip_len + 16] == first[ip_len + 14..ip_len + 16] // window
            && segment[ip_len + tcp::HEADER_LEN..self.hdr_len] == first[ip_len + tcp::HEADER_LEN..self.hdr_len]
            && f & flags::CWR == 0
            && (f ^ first_flags) & !(flags::CWR | flags::FIN | flags::PSH) == 0;
        if !same_ip || !same_tcp {
            return Err(CoalesceReject::HeaderMismatch);
        }
        let seq = u32::from_be_bytes([
            segment[ip_len + 4],
            segment[ip_len + 5],
            segment[ip_len + 6],
            segment[ip_len + 7],
        ]);
        if seq != self.next_seq {
            return Err(CoalesceReject::OutOfOrder);
        }
        let payload = &segment[self.hdr_len..];
        self.len = append_payload(out, self.len, self.gso_size, payload).inspect_err(|e| {
            self.closed |= *e == CoalesceReject::Full;
        })?;
        self.segments += 1;
        self.next_seq = seq.wrapping_add(payload.len() as u32);
        self.tail_flags = f & (flags::PSH | flags::FIN);
        // Only the last segment may be short; PSH/FIN end the super-packet (Linux GRO
        // flushes on both).
        self.closed = payload.len() < self.gso_size || self.tail_flags != 0;
        Ok(())
    }

    /// Finalises the super-packet in `out` and returns the range to write to TUN
    /// (virtio-net header + packet). A single segment is passed on unchanged with an
    /// empty virtio-net header; several become one GSO packet: IP total length and
    /// checksum updated, PSH/FIN of the last segment set, the TCP checksum field holding
    /// the pseudo-header sum (`NEEDS_CSUM`).
    pub fn finish(&self, out: &mut [u8]) -> Range<usize> {
        let end = PACKET_START + self.len;
        let (head, packet) = out[..end].split_at_mut(PACKET_START);
        if self.segments == 1 {
            // As received; a partial checksum is left for the kernel to finish.
            let vnet = if self.first_partial {
                VirtioNetRepr {
                    flags: vnet::flags::NEEDS_CSUM,
                    csum_start: self.ip_header_len as u16,
                    csum_offset: tcp::CHECKSUM_OFFSET as u16,
                    ..VirtioNetRepr::default()
                }
            } else {
                VirtioNetRepr::default()
            };
            vnet.emit(&mut VirtioNetHdr::new_unchecked(head));
            return 0..end;
        }
        let ip_len = self.ip_header_len;
        let mut ip = ipv4::Ipv4Packet::new_unchecked(&mut packet[..ip_len]);
        ip.set_total_len(self.len as u16);
        ip.fill_checksum();
        let src = ip.src_addr();
        let dst = ip.dst_addr();
        let mut tcp = tcp::TcpPacket::new_unchecked(&mut packet[ip_len..]);
        let f = tcp.flags() | self.tail_flags;
        tcp.set_flags(f);
        let tcp_len = (self.len - ip_len) as u16;
        tcp.set_checksum(checksum::pseudo_header_partial(
            src,
            dst,
            protocol::TCP,
            tcp_len,
        ));
        VirtioNetRepr {
            flags: vnet::flags::NEEDS_CSUM,
            gso_type: GsoType::TcpV4,
            gso_ecn: f & flags::CWR != 0,
            hdr_len: self.hdr_len as u16,
            gso_size: self.gso_size as u16,
            csum_start: ip_len as u16,
            csum_offset: tcp::CHECKSUM_OFFSET as u16,
        }
        .emit(&mut VirtioNetHdr::new_unchecked(head));
        0..end
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp_packet(src_port: u16) -> [u8; 40] {
        let mut p = [0u8; 40];
        ipv4::Ipv4Repr {
            src_addr: Ipv4Addr::new(10, 244, 1, 2),
            dst_addr: Ipv4Addr::new(10, 244, 2, 2),
            protocol: protocol::TCP,
            payload_len: 20,
            ttl: 64,
            tos: 0,
            ident: 1,
            dont_frag: true,
            more_frags: false,
            frag_offset: 0,
        }
        .emit(&mut ipv4::Ipv4Packet::new_unchecked(&mut p[..]));
        let mut tcp = tcp::TcpPacket::new_unchecked(&mut p[20..]);
        tcp.set_src_port(src_port);
        tcp.set_dst_port(5201);
        p
    }

    /// A segment with payload, ACK and `flags`, sequence number `seq`, checksum filled.
    fn data_segment(seq: u32, flags_set: u8, payload: usize) -> Vec<u8> {
        let mut p = vec![0u8; 40 + payload];
        ipv4::Ipv4Repr {
            src_addr: Ipv4Addr::new(10, 244, 1, 2),
            dst_addr: Ipv4Addr::new(10, 244, 2, 2),
            protocol: protocol::TCP,
            payload_len: 20 + payload,
            ttl: 64,
            tos: 0,
            ident: 1,
            dont_frag: true,
            more_frags: false,
            frag_offset: 0,
        }
        .emit(&mut ipv4::Ipv4Packet::new_unchecked(&mut p[..]));
        let mut tcp = tcp::TcpPacket::new_unchecked(&mut p[20..]);
        tcp.set_src_port(40000);
        tcp.set_dst_port(5201);
        tcp.set_header_len(20);
        tcp.set_seq_number(seq);
        tcp.set_flags(flags::ACK | flags_set);
        tcp.fill_checksum(Ipv4Addr::new(10, 244, 1, 2), Ipv4Addr::new(10, 244, 2, 2));
        p
    }

    #[test]
    fn psh_closes_the_super_packet_for_the_receiver_to_write_at_once() {
        let mut out = vec![0u8; 70_000];
        // A lone request: PSH on the first segment.
        let c = TcpCoalescer::start(&mut out, &data_segment(1, flags::PSH, 64), true).unwrap();
        assert!(c.is_closed());
        // A bulk train: open until the segment that carries PSH.
        let mut c = TcpCoalescer::start(&mut out, &data_segment(1, 0, 1000), true).unwrap();
        assert!(!c.is_closed());
        c.try_append(&mut out, &data_segment(1001, 0, 1000))
            .unwrap();
        assert!(!c.is_closed());
        c.try_append(&mut out, &data_segment(2001, flags::PSH, 1000))
            .unwrap();
        assert!(c.is_closed());
        // A short segment ends it too.
        let mut c = TcpCoalescer::start(&mut out, &data_segment(1, 0, 1000), true).unwrap();
        c.try_append(&mut out, &data_segment(1001, 0, 10)).unwrap();
        assert!(c.is_closed());
    }

    #[test]
    fn tcp_flow_keys_are_addresses_and_ports() {
        let a = tcp_packet(40000);
        let b = tcp_packet(40001);
        let key = FlowKey::of_tcp(&a).unwrap();
        assert_eq!(key.src, Ipv4Addr::new(10, 244, 1, 2));
        assert_eq!(key.dst, Ipv4Addr::new(10, 244, 2, 2));
        assert_eq!((key.src_port, key.dst_port), (40000, 5201));
        assert_ne!(FlowKey::of_tcp(&a), FlowKey::of_tcp(&b));
        let mut udp = a;
        ipv4::Ipv4Packet::new_unchecked(&mut udp[..]).set_protocol(protocol::UDP);
        assert_eq!(FlowKey::of_tcp(&udp), None);
        let mut fragment = a;
        ipv4::Ipv4Packet::new_unchecked(&mut fragment[..]).set_frag(false, true, 0);
        assert_eq!(FlowKey::of_tcp(&fragment), None);
        // Ports beyond the total length (or the buffer) are not read.
        let mut short = a;
        ipv4::Ipv4Packet::new_unchecked(&mut short[..]).set_total_len(22);
        assert_eq!(FlowKey::of_tcp(&short), None);
        assert_eq!(FlowKey::of_tcp(&a[..22]), None);
        assert_eq!(FlowKey::of_tcp(&[]), None);
    }
}
