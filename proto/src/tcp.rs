//! Enough of TCP (RFC 9293) to segment and coalesce: ports, sequence and
//! acknowledgement numbers, flags, data offset, window, checksum. Options are carried
//! as opaque bytes.

use core::net::Ipv4Addr;

use crate::checksum;
use crate::error::{need, Layer, WireError};
use crate::ipv4::protocol;

mod field {
    pub type Field = core::ops::Range<usize>;
    pub const SRC_PORT: Field = 0..2;
    pub const DST_PORT: Field = 2..4;
    pub const SEQ_NUM: Field = 4..8;
    pub const ACK_NUM: Field = 8..12;
    pub const DATA_OFFSET: usize = 12;
    pub const FLAGS: usize = 13;
    pub const WINDOW: Field = 14..16;
    pub const CHECKSUM: Field = 16..18;
    pub const URGENT: Field = 18..20;
}

/// Offset of the checksum field within the TCP header (for `csum_offset`).
pub const CHECKSUM_OFFSET: usize = field::CHECKSUM.start;
/// Length of a TCP header without options.
pub const HEADER_LEN: usize = field::URGENT.end;
/// Largest TCP header (data offset 15).
pub const MAX_HEADER_LEN: usize = 60;

/// TCP flag bits (the low byte of the flags field).
pub mod flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub const ECE: u8 = 0x40;
    pub const CWR: u8 = 0x80;
}

/// A view of a TCP segment (header + payload; the payload ends with the buffer, so
/// pass exactly the IP payload).
#[derive(Debug, Clone)]
pub struct TcpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TcpPacket<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        TcpPacket { buffer }
    }

    /// Checks that the fixed header fits and the data offset is sane and in bounds.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let b = buffer.as_ref();
        need(Layer::Tcp, HEADER_LEN, b.len())?;
        let header_len = usize::from(b[field::DATA_OFFSET] >> 4) * 4;
        if header_len < HEADER_LEN {
            return Err(WireError::HeaderLenTooShort {
                layer: Layer::Tcp,
                header_len,
                min: HEADER_LEN,
            });
        }
        if header_len > b.len() {
            return Err(WireError::HeaderLenTooLong {
                layer: Layer::Tcp,
                header_len,
                what: "segment length",
                len: b.len(),
            });
        }
        Ok(TcpPacket { buffer })
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn read_u16(&self, f: field::Field) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[f.start], b[f.start + 1]])
    }

    fn read_u32(&self, f: field::Field) -> u32 {
        let b = self.buffer.as_ref();
        u32::from_be_bytes([b[f.start], b[f.start + 1], b[f.start + 2], b[f.start + 3]])
    }

    pub fn src_port(&self) -> u16 {
        self.read_u16(field::SRC_PORT)
    }

    pub fn dst_port(&self) -> u16 {
        self.read_u16(field::DST_PORT)
    }

    pub fn seq_number(&self) -> u32 {
        self.read_u32(field::SEQ_NUM)
    }

    pub fn ack_number(&self) -> u32 {
        self.read_u32(field::ACK_NUM)
    }

    /// Header length in bytes (data offset × 4).
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::DATA_OFFSET] >> 4) * 4
    }

    /// The flag byte (see [`flags`]).
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    pub fn window(&self) -> u16 {
        self.read_u16(field::WINDOW)
    }

    pub fn checksum(&self) -> u16 {
        self.read_u16(field::CHECKSUM)
    }

    pub fn urgent(&self) -> u16 {
        self.read_u16(field::URGENT)
    }

    pub fn header(&self) -> &[u8] {
        &self.buffer.as_ref()[..self.header_len()]
    }

    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.header_len()]
    }

    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }

    /// The checksum the field should hold, whatever it holds now.
    pub fn compute_checksum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> u16 {
        let b = self.buffer.as_ref();
        let len = u16::try_from(b.len()).unwrap_or(u16::MAX);
        checksum::pseudo_header(src, dst, protocol::TCP, len)
            .add_slice(&b[..field::CHECKSUM.start])
            .add_slice(&b[field::CHECKSUM.end..])
            .checksum()
    }

    /// True when the checksum over the whole buffer and the pseudo-header is correct.
    pub fn verify_checksum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        checksum::verify_transport(src, dst, protocol::TCP, self.buffer.as_ref())
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TcpPacket<T> {
    fn write_u16(&mut self, f: field::Field, value: u16) {
        self.buffer.as_mut()[f].copy_from_slice(&value.to_be_bytes());
    }

    fn write_u32(&mut self, f: field::Field, value: u32) {
        self.buffer.as_mut()[f].copy_from_slice(&value.to_be_bytes());
    }

    pub fn set_src_port(&mut self, port: u16) {
        self.write_u16(field::SRC_PORT, port);
    }

    pub fn set_dst_port(&mut self, port: u16) {
        self.write_u16(field::DST_PORT, port);
    }

    pub fn set_seq_number(&mut self, seq: u32) {
        self.write_u32(field::SEQ_NUM, seq);
    }

    pub fn set_ack_number(&mut self, ack: u32) {
        self.write_u32(field::ACK_NUM, ack);
    }

    /// Sets the data offset from a header length in bytes (multiple of 4, 20..=60);
    /// the reserved bits are cleared.
    pub fn set_header_len(&mut self, header_len: usize) {
        self.buffer.as_mut()[field::DATA_OFFSET] = ((header_len / 4) as u8 & 0x0f) << 4;
    }

    pub fn set_flags(&mut self, flags: u8) {
        self.buffer.as_mut()[field::FLAGS] = flags;
    }

    pub fn set_window(&mut self, window: u16) {
        self.write_u16(field::WINDOW, window);
    }

    pub fn set_checksum(&mut self, checksum: u16) {
        self.write_u16(field::CHECKSUM, checksum);
    }

    pub fn set_urgent(&mut self, urgent: u16) {
        self.write_u16(field::URGENT, urgent);
    }

    /// Computes the checksum over the whole buffer (header + payload).
    pub fn fill_checksum(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        self.set_checksum(0);
        let sum = checksum::transport_checksum(src, dst, protocol::TCP, self.buffer.as_ref());
        self.set_checksum(sum);
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        let start = self.header_len();
        &mut self.buffer.as_mut()[start..]
    }
}

/// The fields of a TCP header without options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpRepr {
    pub src_port: u16,
    pub dst_port: u16,
    pub seq_number: u32,
    pub ack_number: u32,
    pub flags: u8,
    pub window: u16,
    pub urgent: u16,
    pub payload_len: usize,
}

impl TcpRepr {
    /// Parses and verifies the checksum. Options are skipped.
    pub fn parse<T: AsRef<[u8]>>(
        packet: &TcpPacket<T>,
        src: Ipv4Addr,
        dst: Ipv4Addr,
    ) -> Result<Self, WireError> {
        let packet = TcpPacket::new_checked(packet.buffer.as_ref())?;
        if !packet.verify_checksum(src, dst) {
            return Err(WireError::Checksum {
                layer: Layer::Tcp,
                found: packet.checksum(),
                expected: packet.compute_checksum(src, dst),
            });
        }
        Ok(TcpRepr {
            src_port: packet.src_port(),
            dst_port: packet.dst_port(),
            seq_number: packet.seq_number(),
            ack_number: packet.ack_number(),
            flags: packet.flags(),
            window: packet.window(),
            urgent: packet.urgent(),
            payload_len: packet.payload().len(),
        })
    }

    pub const fn header_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes a 20-byte header and the checksum; the payload must already be in place
    /// and the buffer must end with it.
    ///
    /// # Panics
    /// If the buffer is shorter than [`HEADER_LEN`].
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut TcpPacket<T>,
        src: Ipv4Addr,
        dst: Ipv4Addr,
    ) {
        packet.set_src_port(self.src_port);
        packet.set_dst_port(self.dst_port);
        packet.set_seq_number(self.seq_number);
        packet.set_ack_number(self.ack_number);
        packet.set_header_len(HEADER_LEN);
        packet.set_flags(self.flags);
        packet.set_window(self.window);
        packet.set_urgent(self.urgent);
        packet.fill_checksum(src, dst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emit_matches_etherparse() {
        let (src, dst) = (Ipv4Addr::new(10, 244, 1, 2), Ipv4Addr::new(10, 244, 2, 2));
        let mut buf = [0u8; HEADER_LEN + 5];
        buf[HEADER_LEN..].copy_from_slice(b"abcde");
        let repr = TcpRepr {
            src_port: 5201,
            dst_port: 40000,
            seq_number: 0xdead_beef,
            ack_number: 7,
            flags: flags::ACK | flags::PSH,
            window: 512,
            urgent: 0,
            payload_len: 5,
        };
        repr.emit(&mut TcpPacket::new_unchecked(&mut buf[..]), src, dst);
        let theirs = etherparse::TcpHeaderSlice::from_slice(&buf)
            .unwrap()
            .to_header();
        let ip = etherparse::Ipv4Header::new(
            25,
            64,
            etherparse::IpNumber::TCP,
            src.octets(),
            dst.octets(),
        )
        .unwrap();
        assert_eq!(
            theirs.calc_checksum_ipv4(&ip, b"abcde").unwrap(),
            theirs.checksum
        );
        assert_eq!(theirs.sequence_number, 0xdead_beef);
        assert!(theirs.psh && theirs.ack && !theirs.fin);
        assert_eq!(
            TcpRepr::parse(&TcpPacket::new_unchecked(&buf[..]), src, dst),
            Ok(repr)
        );
    }

    #[test]
    fn data_offset_beyond_segment_is_named() {
        let mut buf = [0u8; 24];
        buf[12] = 6 << 4;
        assert_eq!(TcpPacket::new_checked(&buf[..]).unwrap().payload().len(), 0);
        buf[12] = 7 << 4;
        assert_eq!(
            TcpPacket::new_checked(&buf[..]).unwrap_err().to_string(),
            "TCP: header length 28 exceeds segment length 24"
        );
    }
}
