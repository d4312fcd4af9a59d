//! UDP (RFC 768) with the IPv4 pseudo-header checksum. A zero checksum means "none"
//! on IPv4 and is accepted; it is what the kernel's vxlan device sends by default.

use core::net::Ipv4Addr;

use crate::checksum;
use crate::error::{need, Layer, WireError};
use crate::ipv4::protocol;

mod field {
    pub type Field = core::ops::Range<usize>;
    pub const SRC_PORT: Field = 0..2;
    pub const DST_PORT: Field = 2..4;
    pub const LENGTH: Field = 4..6;
    pub const CHECKSUM: Field = 6..8;
}

/// Length of a UDP header.
pub const HEADER_LEN: usize = field::CHECKSUM.end;
/// Where the checksum lies in the header (a virtio-net header's `csum_offset`).
pub const CHECKSUM_OFFSET: usize = field::CHECKSUM.start;

/// A view of a UDP datagram (header + payload).
#[derive(Debug, Clone)]
pub struct UdpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> UdpPacket<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        UdpPacket { buffer }
    }

    /// Checks that the header fits and that the length field covers the header and
    /// lies within the buffer.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let b = buffer.as_ref();
        need(Layer::Udp, HEADER_LEN, b.len())?;
        let len = usize::from(u16::from_be_bytes([b[4], b[5]]));
        if len < HEADER_LEN {
            return Err(WireError::HeaderLenTooLong {
                layer: Layer::Udp,
                header_len: HEADER_LEN,
                what: "length field",
                len,
            });
        }
        if len > b.len() {
            return Err(WireError::TotalLenExceedsBuffer {
                layer: Layer::Udp,
                total_len: len,
                available: b.len(),
            });
        }
        Ok(UdpPacket { buffer })
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn read_u16(&self, f: field::Field) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[f.start], b[f.start + 1]])
    }

    pub fn src_port(&self) -> u16 {
        self.read_u16(field::SRC_PORT)
    }

    pub fn dst_port(&self) -> u16 {
        self.read_u16(field::DST_PORT)
    }

    /// The length field: header plus payload.
    pub fn len(&self) -> u16 {
        self.read_u16(field::LENGTH)
    }

    pub fn is_empty(&self) -> bool {
        usize::from(self.len()) <= HEADER_LEN
    }

    pub fn checksum(&self) -> u16 {
        self.read_u16(field::CHECKSUM)
    }

    /// The payload, bounded by the length field.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..usize::from(self.len())]
    }

    /// The checksum the field should hold (never 0), whatever it holds now.
    pub fn compute_checksum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> u16 {
        let b = self.buffer.as_ref();
        checksum::pseudo_header(src, dst, protocol::UDP, self.len())
            .add_slice(&b[..field::CHECKSUM.start])
            .add_slice(self.payload())
            .checksum_nonzero()
    }

    /// True when the checksum is zero ("none", allowed on IPv4) or correct.
    pub fn verify_checksum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        self.checksum() == 0
            || checksum::verify_transport(
                src,
                dst,
                protocol::UDP,
                &self.buffer.as_ref()[..usize::from(self.len())],
            )
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> UdpPacket<T> {
    fn write_u16(&mut self, f: field::Field, value: u16) {
        self.buffer.as_mut()[f].copy_from_slice(&value.to_be_bytes());
    }

    pub fn set_src_port(&mut self, port: u16) {
        self.write_u16(field::SRC_PORT, port);
    }

    pub fn set_dst_port(&mut self, port: u16) {
        self.write_u16(field::DST_PORT, port);
    }

    pub fn set_len(&mut self, len: u16) {
        self.write_u16(field::LENGTH, len);
    }

    pub fn set_checksum(&mut self, checksum: u16) {
        self.write_u16(field::CHECKSUM, checksum);
    }

    /// Computes the checksum over header and payload (per the length field); a
    /// computed 0 is sent as 0xffff, since 0 means "no checksum".
    pub fn fill_checksum(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        self.set_checksum(0);
        let len = usize::from(self.len());
        let sum =
            checksum::transport_checksum(src, dst, protocol::UDP, &self.buffer.as_ref()[..len]);
        self.set_checksum(if sum == 0 { 0xffff } else { sum });
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        let len = usize::from(self.len());
        &mut self.buffer.as_mut()[HEADER_LEN..len]
    }
}

/// Whether [`UdpRepr::emit`] computes a checksum or sends zero ("none").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpChecksum {
    None,
    Compute,
}

/// The fields of a UDP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpRepr {
    pub src_port: u16,
    pub dst_port: u16,
    pub payload_len: usize,
}

impl UdpRepr {
    /// Parses and verifies the checksum (a zero checksum is accepted).
    pub fn parse<T: AsRef<[u8]>>(
        packet: &UdpPacket<T>,
        src: Ipv4Addr,
        dst: Ipv4Addr,
    ) -> Result<Self, WireError> {
        let packet = UdpPacket::new_checked(packet.buffer.as_ref())?;
        if !packet.verify_checksum(src, dst) {
            return Err(WireError::Checksum {
                layer: Layer::Udp,
                found: packet.checksum(),
                expected: packet.compute_checksum(src, dst),
            });
        }
        Ok(UdpRepr {
            src_port: packet.src_port(),
            dst_port: packet.dst_port(),
            payload_len: usize::from(packet.len()) - HEADER_LEN,
        })
    }

    pub const fn header_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header; with [`UdpChecksum::Compute`] the payload must already be
    /// in place after the header.
    ///
    /// # Panics
    /// If the buffer is shorter than the header (or than header + payload when the
    /// checksum is computed).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut UdpPacket<T>,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        checksum: UdpChecksum,
    ) {
        packet.set_src_port(self.src_port);
        packet.set_dst_port(self.dst_port);
        packet.set_len(u16::try_from(HEADER_LEN + self.payload_len).unwrap_or(u16::MAX));
        match checksum {
            UdpChecksum::None => packet.set_checksum(0),
            UdpChecksum::Compute => packet.fill_checksum(src, dst),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    const DST: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

    #[test]
    fn checksum_matches_etherparse() {
        let payload = b"hello, weft";
        let mut buf = [0u8; HEADER_LEN + 11];
        buf[HEADER_LEN..].copy_from_slice(payload);
        let repr = UdpRepr {
            src_port: 40000,
            dst_port: 8472,
            payload_len: payload.len(),
        };
        repr.emit(
            &mut UdpPacket::new_unchecked(&mut buf[..]),
            SRC,
            DST,
            UdpChecksum::Compute,
        );
        let theirs = etherparse::UdpHeader::with_ipv4_checksum(
            40000,
            8472,
            &etherparse::Ipv4Header::new(
                0,
                64,
                etherparse::IpNumber::UDP,
                SRC.octets(),
                DST.octets(),
            )
            .unwrap(),
            payload,
        )
        .unwrap();
        assert_eq!(
            UdpPacket::new_checked(&buf[..]).unwrap().checksum(),
            theirs.checksum
        );
        assert_eq!(
            UdpRepr::parse(&UdpPacket::new_unchecked(&buf[..]), SRC, DST),
            Ok(repr)
        );
    }

    #[test]
    fn zero_checksum_is_accepted_and_wrong_one_is_not() {
        let mut buf = [0u8; 12];
        let repr = UdpRepr {
            src_port: 1,
            dst_port: 2,
            payload_len: 4,
        };
        repr.emit(
            &mut UdpPacket::new_unchecked(&mut buf[..]),
            SRC,
            DST,
            UdpChecksum::None,
        );
        assert_eq!(
            UdpRepr::parse(&UdpPacket::new_unchecked(&buf[..]), SRC, DST),
            Ok(repr)
        );
        repr.emit(
            &mut UdpPacket::new_unchecked(&mut buf[..]),
            SRC,
            DST,
            UdpChecksum::Compute,
        );
        let good = UdpPacket::new_unchecked(&buf[..]).checksum();
        buf[11] ^= 0x40;
        let err = UdpRepr::parse(&UdpPacket::new_unchecked(&buf[..]), SRC, DST).unwrap_err();
        assert!(
            matches!(
                err,
                WireError::Checksum {
                    layer: Layer::Udp,
                    ..
                }
            ),
            "{err}"
        );
        buf[11] ^= 0x40;
        assert_eq!(UdpPacket::new_unchecked(&buf[..]).checksum(), good);
    }

    #[test]
    fn length_field_is_checked() {
        let mut buf = [0u8; 8];
        buf[4..6].copy_from_slice(&9u16.to_be_bytes());
        assert_eq!(
            UdpPacket::new_checked(&buf[..]).unwrap_err().to_string(),
            "UDP: total length 9 exceeds buffer 8"
        );
        buf[4..6].copy_from_slice(&7u16.to_be_bytes());
        assert_eq!(
            UdpPacket::new_checked(&buf[..]).unwrap_err().to_string(),
            "UDP: header length 8 exceeds length field 7"
        );
    }
}
