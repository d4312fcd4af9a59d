//! ARP for Ethernet/IPv4 (RFC 826). weft's overlay is layer 3 (TUN) and flannel
//! programs permanent neighbours, so ARP only shows up when inspecting bridges and
//! kernel vxlan devices (tests, `weftctl trace`).

use core::net::Ipv4Addr;

use crate::error::{need, Layer, WireError};
use crate::ethernet::{ethertype, MacAddr};

mod field {
    pub type Field = core::ops::Range<usize>;
    pub const HTYPE: Field = 0..2;
    pub const PTYPE: Field = 2..4;
    pub const HLEN: usize = 4;
    pub const PLEN: usize = 5;
    pub const OPER: Field = 6..8;
    pub const SHA: Field = 8..14;
    pub const SPA: Field = 14..18;
    pub const THA: Field = 18..24;
    pub const TPA: Field = 24..28;
}

/// Length of an Ethernet/IPv4 ARP packet.
pub const PACKET_LEN: usize = field::TPA.end;

/// ARP hardware type for Ethernet.
pub const HARDWARE_ETHERNET: u16 = 1;

/// ARP operations.
pub mod operation {
    pub const REQUEST: u16 = 1;
    pub const REPLY: u16 = 2;
}

/// A view of an Ethernet/IPv4 ARP packet.
#[derive(Debug, Clone)]
pub struct ArpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

fn read_u16(b: &[u8], f: core::ops::Range<usize>) -> u16 {
    u16::from_be_bytes([b[f.start], b[f.start + 1]])
}

fn read_ipv4(b: &[u8], f: core::ops::Range<usize>) -> Ipv4Addr {
    Ipv4Addr::new(b[f.start], b[f.start + 1], b[f.start + 2], b[f.start + 3])
}

impl<T: AsRef<[u8]>> ArpPacket<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        ArpPacket { buffer }
    }

    /// Checks the length and that the packet is Ethernet/IPv4 ARP.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let b = buffer.as_ref();
        need(Layer::Arp, PACKET_LEN, b.len())?;
        let packet = ArpPacket { buffer };
        let (hardware, protocol) = (packet.hardware_type(), packet.protocol_type());
        let (hardware_len, protocol_len) = (packet.hardware_len(), packet.protocol_len());
        if hardware != HARDWARE_ETHERNET
            || protocol != ethertype::IPV4
            || hardware_len != 6
            || protocol_len != 4
        {
            return Err(WireError::ArpFormat {
                hardware,
                protocol,
                hardware_len,
                protocol_len,
            });
        }
        Ok(packet)
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn hardware_type(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::HTYPE)
    }

    pub fn protocol_type(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::PTYPE)
    }

    pub fn hardware_len(&self) -> u8 {
        self.buffer.as_ref()[field::HLEN]
    }

    pub fn protocol_len(&self) -> u8 {
        self.buffer.as_ref()[field::PLEN]
    }

    pub fn operation(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::OPER)
    }

    pub fn sender_mac(&self) -> MacAddr {
        MacAddr::from_bytes(&self.buffer.as_ref()[field::SHA])
    }

    pub fn sender_ip(&self) -> Ipv4Addr {
        read_ipv4(self.buffer.as_ref(), field::SPA)
    }

    pub fn target_mac(&self) -> MacAddr {
        MacAddr::from_bytes(&self.buffer.as_ref()[field::THA])
    }

    pub fn target_ip(&self) -> Ipv4Addr {
        read_ipv4(self.buffer.as_ref(), field::TPA)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> ArpPacket<T> {
    /// Writes the fixed Ethernet/IPv4 format fields.
    pub fn set_ethernet_ipv4_format(&mut self) {
        let b = self.buffer.as_mut();
        b[field::HTYPE].copy_from_slice(&HARDWARE_ETHERNET.to_be_bytes());
        b[field::PTYPE].copy_from_slice(&ethertype::IPV4.to_be_bytes());
        b[field::HLEN] = 6;
        b[field::PLEN] = 4;
    }

    pub fn set_operation(&mut self, op: u16) {
        self.buffer.as_mut()[field::OPER].copy_from_slice(&op.to_be_bytes());
    }

    pub fn set_sender_mac(&mut self, mac: MacAddr) {
        self.buffer.as_mut()[field::SHA].copy_from_slice(&mac.0);
    }

    pub fn set_sender_ip(&mut self, ip: Ipv4Addr) {
        self.buffer.as_mut()[field::SPA].copy_from_slice(&ip.octets());
    }

    pub fn set_target_mac(&mut self, mac: MacAddr) {
        self.buffer.as_mut()[field::THA].copy_from_slice(&mac.0);
    }

    pub fn set_target_ip(&mut self, ip: Ipv4Addr) {
        self.buffer.as_mut()[field::TPA].copy_from_slice(&ip.octets());
    }
}

/// The fields of an Ethernet/IPv4 ARP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpRepr {
    pub operation: u16,
    pub sender_mac: MacAddr,
    pub sender_ip: Ipv4Addr,
    pub target_mac: MacAddr,
    pub target_ip: Ipv4Addr,
}

impl ArpRepr {
    pub fn parse<T: AsRef<[u8]>>(packet: &ArpPacket<T>) -> Result<Self, WireError> {
        let packet = ArpPacket::new_checked(packet.buffer.as_ref())?;
        Ok(ArpRepr {
            operation: packet.operation(),
            sender_mac: packet.sender_mac(),
            sender_ip: packet.sender_ip(),
            target_mac: packet.target_mac(),
            target_ip: packet.target_ip(),
        })
    }

    pub const fn buffer_len(&self) -> usize {
        PACKET_LEN
    }

    /// # Panics
    /// If the packet's buffer is shorter than [`PACKET_LEN`].
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut ArpPacket<T>) {
        packet.set_ethernet_ipv4_format();
        packet.set_operation(self.operation);
        packet.set_sender_mac(self.sender_mac);
        packet.set_sender_ip(self.sender_ip);
        packet.set_target_mac(self.target_mac);
        packet.set_target_ip(self.target_ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_etherparse() {
        let repr = ArpRepr {
            operation: operation::REPLY,
            sender_mac: MacAddr([2, 0, 0, 0, 0, 1]),
            sender_ip: Ipv4Addr::new(10, 244, 1, 0),
            target_mac: MacAddr([2, 0, 0, 0, 0, 2]),
            target_ip: Ipv4Addr::new(10, 244, 2, 0),
        };
        let mut buf = [0u8; PACKET_LEN];
        repr.emit(&mut ArpPacket::new_unchecked(&mut buf[..]));
        let theirs = etherparse::ArpPacketSlice::from_slice(&buf).unwrap();
        assert_eq!(theirs.operation(), etherparse::ArpOperation::REPLY);
        assert_eq!(theirs.sender_hw_addr(), &repr.sender_mac.0);
        assert_eq!(theirs.target_protocol_addr(), &repr.target_ip.octets());
    }

    #[test]
    fn non_ethernet_ipv4_is_rejected_by_name() {
        let mut buf = [0u8; PACKET_LEN];
        buf[0..2].copy_from_slice(&6u16.to_be_bytes());
        let err = ArpPacket::new_checked(&buf[..]).unwrap_err();
        assert!(err.to_string().contains("hardware type 6"), "{err}");
    }
}
