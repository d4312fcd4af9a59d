//! IP-in-IP (RFC 2003, IPv4 protocol 4), flannel's `ipip` backend format.
//!
//! weftd sends on a raw `IPPROTO_IPIP` socket: the kernel adds the outer IPv4 header,
//! so the inner packet read from TUN is sent as is (no encapsulation work at all). On
//! receive the raw socket delivers the outer IPv4 header followed by the inner packet:
//! [`decap`] validates both and returns where the inner packet lies. [`encap_header`]
//! (for `IP_HDRINCL` senders) and [`encap_frame`] (for packet sockets and tests) write
//! the outer headers into the headroom in place.

use core::net::Ipv4Addr;
use core::ops::Range;

use crate::error::{check_geometry, EncapError, Layer, WireError};
use crate::ethernet::{self, ethertype, EthernetFrame, EthernetRepr, MacAddr};
use crate::ipv4::{self, protocol, Ipv4Packet, OuterIpv4};

/// Bytes [`encap_frame`] writes before the inner packet (outer Ethernet + IPv4).
pub const HEADROOM: usize = ethernet::HEADER_LEN + ipv4::HEADER_LEN;
/// What IPIP adds to an inner packet on the underlay's IP MTU (flannel: MTU 1480).
pub const OVERHEAD: usize = ipv4::HEADER_LEN;

/// [`check_geometry`] for IPIP, which also needs the outer IPv4 total length to fit.
#[inline]
fn check_ipip_geometry(
    buf_len: usize,
    inner_start: usize,
    inner_len: usize,
    headroom: usize,
) -> Result<usize, EncapError> {
    let end = check_geometry(buf_len, inner_start, inner_len, headroom)?;
    if inner_len + ipv4::HEADER_LEN > usize::from(u16::MAX) {
        return Err(EncapError::TooLong {
            len: inner_len + ipv4::HEADER_LEN,
        });
    }
    Ok(end)
}

/// Writes a 20-byte outer IPv4 header (protocol 4) before the inner packet at
/// `buf[inner_start..inner_start + inner_len]`; returns the range of the outer packet.
#[inline]
pub fn encap_header(
    buf: &mut [u8],
    inner_start: usize,
    inner_len: usize,
    outer: &OuterIpv4,
) -> Result<Range<usize>, EncapError> {
    let end = check_ipip_geometry(buf.len(), inner_start, inner_len, ipv4::HEADER_LEN)?;
    let start = inner_start - ipv4::HEADER_LEN;
    let inner_tos = if inner_len > 1 {
        buf[inner_start + 1]
    } else {
        0
    };
    outer.emit(
        &mut buf[start..inner_start],
        protocol::IPIP,
        inner_len,
        inner_tos,
    );
    Ok(start..end)
}

/// Outer headers of a complete IPIP frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpipFrame {
    pub outer_src_mac: MacAddr,
    pub outer_dst_mac: MacAddr,
    pub outer: OuterIpv4,
}

/// Writes outer Ethernet + IPv4 into the [`HEADROOM`] bytes before the inner packet;
/// returns the range of the frame.
#[inline]
pub fn encap_frame(
    buf: &mut [u8],
    inner_start: usize,
    inner_len: usize,
    frame: &IpipFrame,
) -> Result<Range<usize>, EncapError> {
    check_ipip_geometry(buf.len(), inner_start, inner_len, HEADROOM)?;
    let packet = encap_header(buf, inner_start, inner_len, &frame.outer)?;
    let eth_start = packet.start - ethernet::HEADER_LEN;
    EthernetRepr {
        src_addr: frame.outer_src_mac,
        dst_addr: frame.outer_dst_mac,
        ethertype: ethertype::IPV4,
    }
    .emit(&mut EthernetFrame::new_unchecked(
        &mut buf[eth_start..packet.start],
    ));
    Ok(eth_start..packet.end)
}

/// A decapsulated IPIP packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpipDecap {
    pub outer_src: Ipv4Addr,
    pub outer_dst: Ipv4Addr,
    pub inner_src: Ipv4Addr,
    pub inner_dst: Ipv4Addr,
    /// Where the inner IPv4 packet lies in the input, bounded by its total length.
    pub inner: Range<usize>,
}

/// Decodes what a raw `IPPROTO_IPIP` socket delivers: outer IPv4 header (protocol 4,
/// not a fragment) + inner IPv4 packet (sane header, total length within the outer
/// payload). The outer checksum is not re-verified: the kernel checked it before
/// delivering; [`decap_frame`] verifies it.
#[inline]
pub fn decap(packet: &[u8]) -> Result<IpipDecap, WireError> {
    let (header_len, total_len) = ipv4::check_header(packet, Layer::OuterIpv4)?;
    let outer = Ipv4Packet::new_unchecked(&packet[..total_len]);
    decap_checked_outer(&outer, header_len)
}

/// [`decap`] for an outer packet already checked by [`Ipv4Packet::new_checked`] (a
/// receiver that looked at the outer source first): the outer header is not checked
/// again.
#[inline]
pub fn decap_checked(outer: &Ipv4Packet<&[u8]>) -> Result<IpipDecap, WireError> {
    decap_checked_outer(outer, outer.header_len())
}

#[inline]
fn decap_checked_outer(
    outer: &Ipv4Packet<&[u8]>,
    header_len: usize,
) -> Result<IpipDecap, WireError> {
    crate::vxlan::check_outer_protocol(outer, protocol::IPIP)?;
    let (_, inner_len) = ipv4::check_header(outer.payload(), Layer::InnerIpv4)?;
    let inner = Ipv4Packet::new_unchecked(outer.payload());
    Ok(IpipDecap {
        outer_src: outer.src_addr(),
        outer_dst: outer.dst_addr(),
        inner_src: inner.src_addr(),
        inner_dst: inner.dst_addr(),
        inner: header_len..header_len + inner_len,
    })
}

/// A decapsulated complete IPIP frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpipFrameDecap {
    pub outer_src_mac: MacAddr,
    pub outer_dst_mac: MacAddr,
    pub outer_ident: u16,
    pub outer_ttl: u8,
    pub outer_tos: u8,
    pub outer_dont_frag: bool,
    /// `inner` is relative to the frame.
    pub ipip: IpipDecap,
}

/// Decodes a complete frame: outer Ethernet (IPv4), outer IPv4 (checksum verified),
/// then as [`decap`].
pub fn decap_frame(frame: &[u8]) -> Result<IpipFrameDecap, WireError> {
    let (eth, outer) = crate::vxlan::outer_ethernet_ipv4(frame, protocol::IPIP)?;
    let mut ipip = decap_checked_outer(&outer, outer.header_len())?;
    ipip.inner = ipip.inner.start + ethernet::HEADER_LEN..ipip.inner.end + ethernet::HEADER_LEN;
    Ok(IpipFrameDecap {
        outer_src_mac: eth.src_addr(),
        outer_dst_mac: eth.dst_addr(),
        outer_ident: outer.ident(),
        outer_ttl: outer.ttl(),
        outer_tos: outer.tos(),
        outer_dont_frag: outer.dont_frag(),
        ipip,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const INNER: [u8; 28] = [
        0x45, 0, 0, 28, 0, 1, 0x40, 0, 64, 1, 0, 0, 10, 244, 1, 2, 10, 244, 2, 2, 8, 0, 0, 0, 0, 1,
        0, 1,
    ];

    fn frame() -> IpipFrame {
        IpipFrame {
            outer_src_mac: MacAddr([2, 0, 0, 0, 0, 1]),
            outer_dst_mac: MacAddr([2, 0, 0, 0, 0, 2]),
            outer: OuterIpv4 {
                src_addr: Ipv4Addr::new(192, 0, 2, 1),
                dst_addr: Ipv4Addr::new(192, 0, 2, 2),
                ttl: 64,
                tos: 0,
                ident: 7,
                dont_frag: true,
            },
        }
    }

    #[test]
    fn frame_round_trip_and_etherparse_agrees() {
        let mut buf = [0u8; HEADROOM + 28];
        buf[HEADROOM..].copy_from_slice(&INNER);
        let range = encap_frame(&mut buf, HEADROOM, 28, &frame()).unwrap();
        assert_eq!(range, 0..buf.len());
        let theirs = etherparse::SlicedPacket::from_ethernet(&buf).unwrap();
        let Some(etherparse::NetSlice::Ipv4(ip)) = theirs.net else {
            panic!("no IPv4")
        };
        assert_eq!(ip.header().protocol(), etherparse::IpNumber::IPV4);
        assert!(ip.header().dont_fragment());
        let h = ip.header().to_header();
        assert_eq!(h.header_checksum, h.calc_header_checksum());

        let d = decap_frame(&buf).unwrap();
        assert_eq!(&buf[d.ipip.inner.clone()], &INNER);
        assert_eq!(d.ipip.outer_src, Ipv4Addr::new(192, 0, 2, 1));
        let raw = decap(&buf[ethernet::HEADER_LEN..]).unwrap();
        assert_eq!(raw.inner, 20..48);
        assert_eq!(raw.inner_dst, Ipv4Addr::new(10, 244, 2, 2));
    }

    #[test]
    fn decap_errors_name_the_problem() {
        let mut buf = [0u8; ipv4::HEADER_LEN + 28];
        buf[ipv4::HEADER_LEN..].copy_from_slice(&INNER);
        encap_header(&mut buf, ipv4::HEADER_LEN, 28, &frame().outer).unwrap();
        assert!(decap(&buf).is_ok());
        let mut bad = buf;
        bad[9] = 17;
        assert_eq!(
            decap(&bad).unwrap_err().to_string(),
            "outer IPv4: IP protocol 17, expected 4"
        );
        let mut bad = buf;
        bad[6] = 0x20; // MF
        assert_eq!(
            decap(&bad).unwrap_err().to_string(),
            "outer IPv4: fragment (offset 0 bytes, more fragments: true) not supported"
        );
        let mut bad = buf;
        bad[20] = 0x65;
        assert_eq!(
            decap(&bad).unwrap_err().to_string(),
            "inner IPv4: version 6 is not 4"
        );
        let mut bad = buf;
        bad[20] = 0x44;
        assert_eq!(
            decap(&bad).unwrap_err().to_string(),
            "inner IPv4: header length 16 is below the minimum 20"
        );
        assert_eq!(
            decap(&buf[..30]).unwrap_err().to_string(),
            "outer IPv4: total length 48 exceeds buffer 30"
        );
    }
}
