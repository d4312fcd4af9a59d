//! IPv4 headers (RFC 791): view, representation, checksum, fragment fields, and the
//! ECN rule for tunnel encapsulation (RFC 6040).

use core::net::Ipv4Addr;

use crate::checksum;
use crate::error::{need, Layer, WireError};

/// IP protocol numbers weft handles.
pub mod protocol {
    pub const ICMP: u8 = 1;
    /// IP-in-IP (RFC 2003), flannel's `ipip` backend.
    pub const IPIP: u8 = 4;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
}

mod field {
    pub type Field = core::ops::Range<usize>;
    pub const VER_IHL: usize = 0;
    pub const DSCP_ECN: usize = 1;
    pub const LENGTH: Field = 2..4;
    pub const IDENT: Field = 4..6;
    pub const FLG_OFF: Field = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Field = 10..12;
    pub const SRC_ADDR: Field = 12..16;
    pub const DST_ADDR: Field = 16..20;
}

/// Length of an IPv4 header without options.
pub const HEADER_LEN: usize = field::DST_ADDR.end;
/// Largest IPv4 header (IHL 15).
pub const MAX_HEADER_LEN: usize = 60;

const FLAG_DF: u16 = 0x4000;
const FLAG_MF: u16 = 0x2000;
const OFFSET_MASK: u16 = 0x1fff;
/// The two ECN bits of the TOS byte.
pub const ECN_MASK: u8 = 0x03;
const ECN_CE: u8 = 0x03;
const ECN_ECT0: u8 = 0x02;

/// Checks the header of the IPv4 packet at the start of `b` and returns
/// `(header_len, total_len)`; `total_len <= b.len()` (trailing bytes, e.g. Ethernet
/// padding, are allowed and not part of the packet).
#[inline]
pub fn check_header(b: &[u8], layer: Layer) -> Result<(usize, usize), WireError> {
    need(layer, HEADER_LEN, b.len())?;
    let version = b[field::VER_IHL] >> 4;
    if version != 4 {
        return Err(WireError::Version { layer, version });
    }
    let header_len = usize::from(b[field::VER_IHL] & 0x0f) * 4;
    if header_len < HEADER_LEN {
        return Err(WireError::HeaderLenTooShort {
            layer,
            header_len,
            min: HEADER_LEN,
        });
    }
    let total_len = usize::from(u16::from_be_bytes([
        b[field::LENGTH.start],
        b[field::LENGTH.start + 1],
    ]));
    if header_len > total_len {
        return Err(WireError::HeaderLenTooLong {
            layer,
            header_len,
            what: "total length",
            len: total_len,
        });
    }
    if total_len > b.len() {
        return Err(WireError::TotalLenExceedsBuffer {
            layer,
            total_len,
            available: b.len(),
        });
    }
    Ok((header_len, total_len))
}

/// The outer TOS for a tunnel packet: `outer_tos`'s DSCP with the inner packet's ECN
/// bits copied out, a CE mark becoming ECT(0) (RFC 6040 "normal mode"; what Linux's
/// `INET_ECN_encapsulate` does for vxlan and ipip).
pub const fn ecn_encapsulate(outer_tos: u8, inner_tos: u8) -> u8 {
    let inner_ecn = inner_tos & ECN_MASK;
    let ecn = if inner_ecn == ECN_CE {
        ECN_ECT0
    } else {
        inner_ecn
    };
    (outer_tos & !ECN_MASK) | ecn
}

/// The outer IPv4 header of a tunnel packet (VXLAN or IPIP), for the full-frame
/// builders and IP_HDRINCL senders. The outer TOS gets the inner packet's ECN bits
/// via [`ecn_encapsulate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OuterIpv4 {
    pub src_addr: Ipv4Addr,
    pub dst_addr: Ipv4Addr,
    pub ttl: u8,
    /// DSCP (ECN bits are taken from the inner packet).
    pub tos: u8,
    pub ident: u16,
    pub dont_frag: bool,
}

impl OuterIpv4 {
    /// Writes a 20-byte header at the start of `header` for a payload of
    /// `payload_len` bytes carrying `protocol`, with a correct checksum.
    #[inline]
    pub(crate) fn emit(&self, header: &mut [u8], protocol: u8, payload_len: usize, inner_tos: u8) {
        Ipv4Repr {
            src_addr: self.src_addr,
            dst_addr: self.dst_addr,
            protocol,
            payload_len,
            ttl: self.ttl,
            tos: ecn_encapsulate(self.tos, inner_tos),
            ident: self.ident,
            dont_frag: self.dont_frag,
            more_frags: false,
            frag_offset: 0,
        }
        .emit(&mut Ipv4Packet::new_unchecked(header));
    }
}

/// A view of an IPv4 packet.
#[derive(Debug, Clone)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// Wraps `buffer` without checking it. Accessors panic on a buffer shorter than the
    /// fields they read; use [`Ipv4Packet::new_checked`] on untrusted input.
    pub const fn new_unchecked(buffer: T) -> Self {
        Ipv4Packet { buffer }
    }

    /// Checks version, header length and total length, so that every accessor
    /// (including [`Ipv4Packet::payload`]) is infallible afterwards.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        check_header(buffer.as_ref(), Layer::Ipv4)?;
        Ok(Ipv4Packet { buffer })
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn read_u16(&self, f: field::Field) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[f.start], b[f.start + 1]])
    }

    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }

    /// Header length in bytes (IHL × 4).
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::VER_IHL] & 0x0f) * 4
    }

    /// The whole TOS byte (DSCP << 2 | ECN).
    pub fn tos(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_ECN]
    }

    pub fn dscp(&self) -> u8 {
        self.tos() >> 2
    }

    pub fn ecn(&self) -> u8 {
        self.tos() & ECN_MASK
    }

    pub fn total_len(&self) -> u16 {
        self.read_u16(field::LENGTH)
    }

    pub fn ident(&self) -> u16 {
        self.read_u16(field::IDENT)
    }

    pub fn dont_frag(&self) -> bool {
        self.read_u16(field::FLG_OFF) & FLAG_DF != 0
    }

    pub fn more_frags(&self) -> bool {
        self.read_u16(field::FLG_OFF) & FLAG_MF != 0
    }

    /// Fragment offset in bytes.
    pub fn frag_offset(&self) -> u16 {
        (self.read_u16(field::FLG_OFF) & OFFSET_MASK) << 3
    }

    /// True for any fragment (first, middle or last) of a fragmented datagram.
    pub fn is_fragment(&self) -> bool {
        self.read_u16(field::FLG_OFF) & (FLAG_MF | OFFSET_MASK) != 0
    }

    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    pub fn protocol(&self) -> u8 {
        self.buffer.as_ref()[field::PROTOCOL]
    }

    pub fn checksum(&self) -> u16 {
        self.read_u16(field::CHECKSUM)
    }

    pub fn src_addr(&self) -> Ipv4Addr {
        let b = &self.buffer.as_ref()[field::SRC_ADDR];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }

    pub fn dst_addr(&self) -> Ipv4Addr {
        let b = &self.buffer.as_ref()[field::DST_ADDR];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }

    /// The header bytes, options included.
    pub fn header(&self) -> &[u8] {
        &self.buffer.as_ref()[..self.header_len()]
    }

    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.header_len()]
    }

    /// The header checksum the field should hold, whatever it holds now.
    pub fn compute_checksum(&self) -> u16 {
        let h = self.header();
        checksum::Sum::new()
            .add_slice(&h[..field::CHECKSUM.start])
            .add_slice(&h[field::CHECKSUM.end..])
            .checksum()
    }

    /// True when the header checksum is correct.
    pub fn verify_checksum(&self) -> bool {
        checksum::internet_checksum(self.header()) == 0
    }

    /// The payload, bounded by the total length (not by the buffer).
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..usize::from(self.total_len())]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    fn write_u16(&mut self, f: field::Field, value: u16) {
        self.buffer.as_mut()[f].copy_from_slice(&value.to_be_bytes());
    }

    /// Sets version 4 and the header length in bytes (a multiple of 4, 20..=60).
    pub fn set_version_and_header_len(&mut self, header_len: usize) {
        self.buffer.as_mut()[field::VER_IHL] = 0x40 | ((header_len / 4) as u8 & 0x0f);
    }

    pub fn set_tos(&mut self, tos: u8) {
        self.buffer.as_mut()[field::DSCP_ECN] = tos;
    }

    pub fn set_total_len(&mut self, len: u16) {
        self.write_u16(field::LENGTH, len);
    }

    pub fn set_ident(&mut self, ident: u16) {
        self.write_u16(field::IDENT, ident);
    }

    /// Sets DF, MF and the fragment offset (in bytes, a multiple of 8).
    pub fn set_frag(&mut self, dont_frag: bool, more_frags: bool, offset: u16) {
        let mut v = (offset >> 3) & OFFSET_MASK;
        if dont_frag {
            v |= FLAG_DF;
        }
        if more_frags {
            v |= FLAG_MF;
        }
        self.write_u16(field::FLG_OFF, v);
    }

    pub fn set_ttl(&mut self, ttl: u8) {
        self.buffer.as_mut()[field::TTL] = ttl;
    }

    pub fn set_protocol(&mut self, protocol: u8) {
        self.buffer.as_mut()[field::PROTOCOL] = protocol;
    }

    pub fn set_checksum(&mut self, checksum: u16) {
        self.write_u16(field::CHECKSUM, checksum);
    }

    pub fn set_src_addr(&mut self, addr: Ipv4Addr) {
        self.buffer.as_mut()[field::SRC_ADDR].copy_from_slice(&addr.octets());
    }

    pub fn set_dst_addr(&mut self, addr: Ipv4Addr) {
        self.buffer.as_mut()[field::DST_ADDR].copy_from_slice(&addr.octets());
    }

    /// Recomputes the header checksum over the header (options included).
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let len = self.header_len();
        let sum = checksum::internet_checksum(&self.buffer.as_ref()[..len]);
        self.set_checksum(sum);
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        let range = self.header_len()..usize::from(self.total_len());
        &mut self.buffer.as_mut()[range]
    }
}

/// The fields of an IPv4 header without options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Repr {
    pub src_addr: Ipv4Addr,
    pub dst_addr: Ipv4Addr,
    pub protocol: u8,
    /// Payload length in bytes (total length − header length).
    pub payload_len: usize,
    pub ttl: u8,
    pub tos: u8,
    pub ident: u16,
    pub dont_frag: bool,
    pub more_frags: bool,
    /// In bytes; a multiple of 8.
    pub frag_offset: u16,
}

impl Ipv4Repr {
    /// Parses and verifies the header checksum. Options are skipped (not kept).
    pub fn parse<T: AsRef<[u8]>>(packet: &Ipv4Packet<T>) -> Result<Self, WireError> {
        let (header_len, total_len) = check_header(packet.buffer.as_ref(), Layer::Ipv4)?;
        if !packet.verify_checksum() {
            return Err(WireError::Checksum {
                layer: Layer::Ipv4,
                found: packet.checksum(),
                expected: packet.compute_checksum(),
            });
        }
        Ok(Ipv4Repr {
            src_addr: packet.src_addr(),
            dst_addr: packet.dst_addr(),
            protocol: packet.protocol(),
            payload_len: total_len - header_len,
            ttl: packet.ttl(),
            tos: packet.tos(),
            ident: packet.ident(),
            dont_frag: packet.dont_frag(),
            more_frags: packet.more_frags(),
            frag_offset: packet.frag_offset(),
        })
    }

    pub const fn header_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes a 20-byte header with a correct checksum. The total length is
    /// `20 + payload_len`, saturated at 65535.
    ///
    /// # Panics
    /// If the packet's buffer is shorter than [`HEADER_LEN`].
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Ipv4Packet<T>) {
        packet.set_version_and_header_len(HEADER_LEN);
        packet.set_tos(self.tos);
        packet.set_total_len(u16::try_from(HEADER_LEN + self.payload_len).unwrap_or(u16::MAX));
        packet.set_ident(self.ident);
        packet.set_frag(self.dont_frag, self.more_frags, self.frag_offset);
        packet.set_ttl(self.ttl);
        packet.set_protocol(self.protocol);
        packet.set_src_addr(self.src_addr);
        packet.set_dst_addr(self.dst_addr);
        packet.fill_checksum();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Ipv4Repr {
        Ipv4Repr {
            src_addr: Ipv4Addr::new(10, 244, 1, 2),
            dst_addr: Ipv4Addr::new(10, 244, 2, 3),
            protocol: protocol::UDP,
            payload_len: 12,
            ttl: 63,
            tos: 0xb8,
            ident: 0x1234,
            dont_frag: true,
            more_frags: false,
            frag_offset: 0,
        }
    }

    #[test]
    fn emit_matches_etherparse() {
        let mut buf = [0u8; 32];
        sample().emit(&mut Ipv4Packet::new_unchecked(&mut buf[..]));
        let theirs = etherparse::Ipv4HeaderSlice::from_slice(&buf).unwrap();
        assert_eq!(
            theirs.header_checksum(),
            theirs.to_header().calc_header_checksum()
        );
        assert_eq!(theirs.identification(), 0x1234);
        assert!(theirs.dont_fragment());
        assert_eq!(theirs.total_len(), 32);
        assert_eq!(theirs.ttl(), 63);
        assert_eq!(theirs.destination_addr(), Ipv4Addr::new(10, 244, 2, 3));
    }

    #[test]
    fn total_length_beyond_buffer_is_named() {
        let mut buf = [0u8; 1400];
        Ipv4Repr {
            payload_len: 1480,
            ..sample()
        }
        .emit(&mut Ipv4Packet::new_unchecked(&mut buf[..]));
        let err = check_header(&buf, Layer::InnerIpv4).unwrap_err();
        assert_eq!(
            err.to_string(),
            "inner IPv4: total length 1500 exceeds buffer 1400"
        );
    }

    #[test]
    fn bad_checksum_is_rejected() {
        let mut buf = [0u8; 32];
        sample().emit(&mut Ipv4Packet::new_unchecked(&mut buf[..]));
        let good = Ipv4Packet::new_checked(&buf[..]).unwrap().checksum();
        buf[8] = 1; // TTL changed behind the checksum's back
        let err = Ipv4Repr::parse(&Ipv4Packet::new_checked(&buf[..]).unwrap()).unwrap_err();
        assert!(
            matches!(err, WireError::Checksum { found, .. } if found == good),
            "{err}"
        );
        assert!(err
            .to_string()
            .starts_with("IPv4: header checksum mismatch"));
    }

    #[test]
    fn fragment_fields() {
        let mut buf = [0u8; 20];
        let mut p = Ipv4Packet::new_unchecked(&mut buf[..]);
        p.set_frag(false, true, 1480);
        assert!(p.more_frags() && !p.dont_frag() && p.is_fragment());
        assert_eq!(p.frag_offset(), 1480);
    }

    #[test]
    fn ecn_rule() {
        assert_eq!(ecn_encapsulate(0, 0b01), 0b01);
        assert_eq!(ecn_encapsulate(0, 0b10), 0b10);
        assert_eq!(ecn_encapsulate(0xb8, 0b11), 0xb8 | 0b10);
        assert_eq!(ecn_encapsulate(0xbb, 0), 0xb8);
    }
}
