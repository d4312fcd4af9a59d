//! VXLAN (RFC 7348) encapsulation and decapsulation over caller buffers.
//!
//! weftd sends VXLAN on a UDP socket, so the kernel adds the outer IPv4 and UDP
//! headers and the datagram payload is `VXLAN header (8) | inner Ethernet (14) | inner
//! IPv4`. [`encap_payload`] writes those 22 bytes into the headroom in front of an
//! inner packet read from TUN and returns the range to send; nothing is copied or
//! allocated. [`encap_frame`] additionally writes outer Ethernet, IPv4 and UDP (the
//! bytes a kernel vxlan device puts on the wire), for raw sockets and tests.
//!
//! Buffer layout, with the inner packet read at `buf[HEADROOM..]`:
//!
//! ```text
//! 0        14       34    42      50          64
//! | outer  | outer  | UDP | VXLAN | inner     | inner IPv4 packet ...
//! | Eth    | IPv4   |     |       | Ethernet  |
//!                         |<----- encap_payload(): sent on the UDP socket ----->|
//! |<------------------------- encap_frame(): the whole frame ------------------>|
//! ```

use core::net::Ipv4Addr;
use core::ops::Range;

use crate::error::{check_geometry, need, EncapError, Layer, WireError};
use crate::ethernet::{self, ethertype, EthernetFrame, EthernetRepr, MacAddr};
use crate::ipv4::{self, protocol, Ipv4Packet, OuterIpv4};
use crate::udp::{self, UdpChecksum, UdpPacket, UdpRepr};

mod field {
    pub type Field = core::ops::Range<usize>;
    pub const FLAGS: usize = 0;
    pub const RESERVED1: Field = 1..4;
    pub const VNI: Field = 4..7;
    pub const RESERVED2: usize = 7;
}

/// Length of the VXLAN header.
pub const HEADER_LEN: usize = 8;
/// Flannel's (and the Linux vxlan driver's) default UDP port; IANA's is 4789.
pub const DEFAULT_PORT: u16 = 8472;
/// IANA-assigned VXLAN port.
pub const IANA_PORT: u16 = 4789;
/// Largest VNI (24 bits).
pub const MAX_VNI: u32 = 0x00ff_ffff;
/// The "I" flag: the VNI is valid. The only flag RFC 7348 defines.
pub const FLAG_I: u8 = 0x08;

/// Bytes [`encap_payload`] writes before the inner IPv4 packet: VXLAN header + inner
/// Ethernet header.
pub const PAYLOAD_HEADROOM: usize = HEADER_LEN + ethernet::HEADER_LEN;
/// Bytes [`encap_frame`] writes before the inner IPv4 packet: outer Ethernet, IPv4,
/// UDP, VXLAN and inner Ethernet (14 + 20 + 8 + 8 + 14). Reading TUN packets at
/// `buf[HEADROOM..]` leaves room for either builder.
pub const HEADROOM: usize =
    ethernet::HEADER_LEN + ipv4::HEADER_LEN + udp::HEADER_LEN + PAYLOAD_HEADROOM;
/// What VXLAN adds to an inner IPv4 packet on the underlay's IP MTU
/// (20 + 8 + 8 + 14 = 50: flannel's MTU 1450 on a 1500 underlay).
pub const OVERHEAD: usize = ipv4::HEADER_LEN + udp::HEADER_LEN + PAYLOAD_HEADROOM;
/// Largest UDP payload in one IPv4 datagram.
const MAX_UDP_PAYLOAD: usize = 65535 - ipv4::HEADER_LEN - udp::HEADER_LEN;

/// A view of a VXLAN header and what follows it.
#[derive(Debug, Clone)]
pub struct VxlanPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> VxlanPacket<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        VxlanPacket { buffer }
    }

    /// Checks the length and the I flag. Reserved bits are ignored, as RFC 7348
    /// requires of receivers.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let b = buffer.as_ref();
        need(Layer::Vxlan, HEADER_LEN, b.len())?;
        if b[field::FLAGS] & FLAG_I == 0 {
            return Err(WireError::VxlanNoVniFlag {
                flags: b[field::FLAGS],
            });
        }
        Ok(VxlanPacket { buffer })
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// The 24-bit VXLAN network identifier.
    pub fn vni(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::VNI];
        u32::from_be_bytes([0, b[0], b[1], b[2]])
    }

    /// The inner Ethernet frame.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> VxlanPacket<T> {
    pub fn set_flags(&mut self, flags: u8) {
        self.buffer.as_mut()[field::FLAGS] = flags;
    }

    /// Sets the VNI (the low 24 bits of `vni`).
    pub fn set_vni(&mut self, vni: u32) {
        let b = vni.to_be_bytes();
        self.buffer.as_mut()[field::VNI].copy_from_slice(&b[1..]);
    }

    /// Zeroes both reserved fields, as senders must.
    pub fn clear_reserved(&mut self) {
        let b = self.buffer.as_mut();
        b[field::RESERVED1].fill(0);
        b[field::RESERVED2] = 0;
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[HEADER_LEN..]
    }
}

/// The fields of a VXLAN header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanRepr {
    /// 24 bits; [`VxlanRepr::emit`] writes the low 24.
    pub vni: u32,
}

impl VxlanRepr {
    pub fn parse<T: AsRef<[u8]>>(packet: &VxlanPacket<T>) -> Result<Self, WireError> {
        let packet = VxlanPacket::new_checked(packet.buffer.as_ref())?;
        Ok(VxlanRepr { vni: packet.vni() })
    }

    pub const fn header_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the I flag, the VNI and zero reserved fields.
    ///
    /// # Panics
    /// If the buffer is shorter than [`HEADER_LEN`].
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut VxlanPacket<T>) {
        packet.clear_reserved();
        packet.set_flags(FLAG_I);
        packet.set_vni(self.vni);
    }
}

/// What [`encap_payload`] needs: the VNI and the inner Ethernet addresses (own
/// VtepMAC as source, the peer's VtepMAC from its lease as destination).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanEncap {
    pub vni: u32,
    pub src_mac: MacAddr,
    pub dst_mac: MacAddr,
}

/// Writes the VXLAN header and the inner Ethernet header into the
/// [`PAYLOAD_HEADROOM`] bytes before the inner IPv4 packet at
/// `buf[inner_start..inner_start + inner_len]`, and returns the range of `buf` that
/// is the UDP datagram payload to send. The inner packet is neither read nor copied.
#[inline]
pub fn encap_payload(
    buf: &mut [u8],
    inner_start: usize,
    inner_len: usize,
    encap: &VxlanEncap,
) -> Result<Range<usize>, EncapError> {
    let end = check_geometry(buf.len(), inner_start, inner_len, PAYLOAD_HEADROOM)?;
    let start = inner_start - PAYLOAD_HEADROOM;
    if end - start > MAX_UDP_PAYLOAD {
        return Err(EncapError::TooLong { len: end - start });
    }
    VxlanRepr { vni: encap.vni }.emit(&mut VxlanPacket::new_unchecked(
        &mut buf[start..start + HEADER_LEN],
    ));
    EthernetRepr {
        src_addr: encap.src_mac,
        dst_addr: encap.dst_mac,
        ethertype: ethertype::IPV4,
    }
    .emit(&mut EthernetFrame::new_unchecked(
        &mut buf[start + HEADER_LEN..inner_start],
    ));
    Ok(start..end)
}

/// Everything [`encap_frame`] writes: the VXLAN payload plus the outer headers a
/// kernel vxlan device would add.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanFrame {
    pub encap: VxlanEncap,
    pub outer_src_mac: MacAddr,
    pub outer_dst_mac: MacAddr,
    pub outer: OuterIpv4,
    /// Usually [`crate::flow::flow_src_port`] of the inner packet.
    pub src_port: u16,
    pub dst_port: u16,
    /// The kernel's vxlan device sends no UDP checksum on IPv4 by default.
    pub udp_checksum: UdpChecksum,
}

/// Writes the complete Ethernet frame (outer Ethernet + IPv4 + UDP + VXLAN + inner
/// Ethernet) into the [`HEADROOM`] bytes before the inner IPv4 packet and returns the
/// range of `buf` holding the frame.
#[inline]
pub fn encap_frame(
    buf: &mut [u8],
    inner_start: usize,
    inner_len: usize,
    frame: &VxlanFrame,
) -> Result<Range<usize>, EncapError> {
    check_geometry(buf.len(), inner_start, inner_len, HEADROOM)?;
    let payload = encap_payload(buf, inner_start, inner_len, &frame.encap)?;
    let udp_start = payload.start - udp::HEADER_LEN;
    let ip_start = udp_start - ipv4::HEADER_LEN;
    let eth_start = ip_start - ethernet::HEADER_LEN;
    let inner_tos = if inner_len > 1 {
        buf[inner_start + 1]
    } else {
        0
    };

    let udp_len = payload.end - udp_start;
    let (head, datagram) = buf[..payload.end].split_at_mut(udp_start);
    UdpRepr {
        src_port: frame.src_port,
        dst_port: frame.dst_port,
        payload_len: udp_len - udp::HEADER_LEN,
    }
    .emit(
        &mut UdpPacket::new_unchecked(datagram),
        frame.outer.src_addr,
        frame.outer.dst_addr,
        frame.udp_checksum,
    );
    frame
        .outer
        .emit(&mut head[ip_start..], protocol::UDP, udp_len, inner_tos);
    EthernetRepr {
        src_addr: frame.outer_src_mac,
        dst_addr: frame.outer_dst_mac,
        ethertype: ethertype::IPV4,
    }
    .emit(&mut EthernetFrame::new_unchecked(
        &mut head[eth_start..ip_start],
    ));
    Ok(eth_start..payload.end)
}

/// A decapsulated VXLAN datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanDecap {
    pub vni: u32,
    pub inner_src_mac: MacAddr,
    pub inner_dst_mac: MacAddr,
    /// Inner IPv4 source and destination (for the "inner source inside the sender's
    /// lease" check).
    pub inner_src: Ipv4Addr,
    pub inner_dst: Ipv4Addr,
    /// Where the inner IPv4 packet lies in the input, bounded by its total length.
    pub inner_ip: Range<usize>,
}

/// Decodes a VXLAN UDP payload: checks the I flag, that the inner frame carries IPv4
/// and that the inner IPv4 header is sane (version, header length, total length within
/// the datagram). The inner header checksum is left to the kernel, which verifies it
/// when the packet is written to TUN.
#[inline]
pub fn decap(datagram: &[u8]) -> Result<VxlanDecap, WireError> {
    let vxlan = VxlanPacket::new_checked(datagram)?;
    let inner = EthernetFrame::new_checked(vxlan.payload())
        .map_err(|e| e.in_layer(Layer::InnerEthernet))?;
    if inner.ethertype() != ethertype::IPV4 {
        return Err(WireError::EtherType {
            layer: Layer::InnerEthernet,
            found: inner.ethertype(),
            expected: ethertype::IPV4,
        });
    }
    let (_, total_len) = ipv4::check_header(inner.payload(), Layer::InnerIpv4)?;
    let ip = Ipv4Packet::new_unchecked(inner.payload());
    Ok(VxlanDecap {
        vni: vxlan.vni(),
        inner_src_mac: inner.src_addr(),
        inner_dst_mac: inner.dst_addr(),
        inner_src: ip.src_addr(),
        inner_dst: ip.dst_addr(),
        inner_ip: PAYLOAD_HEADROOM..PAYLOAD_HEADROOM + total_len,
    })
}

/// A decapsulated complete VXLAN frame (as captured on the underlay).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanFrameDecap {
    pub outer_src_mac: MacAddr,
    pub outer_dst_mac: MacAddr,
    pub outer_src: Ipv4Addr,
    pub outer_dst: Ipv4Addr,
    pub outer_ident: u16,
    pub outer_ttl: u8,
    pub outer_tos: u8,
    pub outer_dont_frag: bool,
    pub src_port: u16,
    pub dst_port: u16,
    pub udp_checksum: u16,
    /// `inner_ip` is relative to the frame.
    pub vxlan: VxlanDecap,
}

/// Decodes a complete frame: outer Ethernet (IPv4), outer IPv4 (checksum verified, no
/// fragments), UDP (checksum verified unless zero), then [`decap`].
pub fn decap_frame(frame: &[u8]) -> Result<VxlanFrameDecap, WireError> {
    let (eth, ip) = outer_ethernet_ipv4(frame, protocol::UDP)?;
    let udp = UdpPacket::new_checked(ip.payload()).map_err(|e| e.in_layer(Layer::OuterUdp))?;
    if !udp.verify_checksum(ip.src_addr(), ip.dst_addr()) {
        return Err(WireError::Checksum {
            layer: Layer::OuterUdp,
            found: udp.checksum(),
            expected: udp.compute_checksum(ip.src_addr(), ip.dst_addr()),
        });
    }
    let mut vxlan = decap(udp.payload())?;
    let offset = ethernet::HEADER_LEN + ip.header_len() + udp::HEADER_LEN;
    vxlan.inner_ip = vxlan.inner_ip.start + offset..vxlan.inner_ip.end + offset;
    Ok(VxlanFrameDecap {
        outer_src_mac: eth.src_addr(),
        outer_dst_mac: eth.dst_addr(),
        outer_src: ip.src_addr(),
        outer_dst: ip.dst_addr(),
        outer_ident: ip.ident(),
        outer_ttl: ip.ttl(),
        outer_tos: ip.tos(),
        outer_dont_frag: ip.dont_frag(),
        src_port: udp.src_port(),
        dst_port: udp.dst_port(),
        udp_checksum: udp.checksum(),
        vxlan,
    })
}

/// A captured frame's outer Ethernet header and its checked outer IPv4 packet.
pub(crate) type OuterHeaders<'a> = (EthernetFrame<&'a [u8]>, Ipv4Packet<&'a [u8]>);

/// Decodes a captured frame's outer Ethernet header (must carry IPv4) and checks its
/// outer IPv4 header fully (checksum, `expected_protocol`, no fragment): the common
/// start of [`decap_frame`] and `ipip::decap_frame`.
pub(crate) fn outer_ethernet_ipv4(
    frame: &[u8],
    expected_protocol: u8,
) -> Result<OuterHeaders<'_>, WireError> {
    let eth = EthernetFrame::new_checked(frame).map_err(|e| e.in_layer(Layer::OuterEthernet))?;
    if eth.ethertype() != ethertype::IPV4 {
        return Err(WireError::EtherType {
            layer: Layer::OuterEthernet,
            found: eth.ethertype(),
            expected: ethertype::IPV4,
        });
    }
    let payload = &frame[ethernet::HEADER_LEN..];
    let (_, total_len) = ipv4::check_header(payload, Layer::OuterIpv4)?;
    let ip = Ipv4Packet::new_unchecked(&payload[..total_len]);
    if !ip.verify_checksum() {
        return Err(WireError::Checksum {
            layer: Layer::OuterIpv4,
            found: ip.checksum(),
            expected: ip.compute_checksum(),
        });
    }
    check_outer_protocol(&ip, expected_protocol)?;
    Ok((eth, ip))
}

/// The outer IPv4 packet carries `expected_protocol` and is not a fragment.
#[inline]
pub(crate) fn check_outer_protocol(
    ip: &Ipv4Packet<&[u8]>,
    expected_protocol: u8,
) -> Result<(), WireError> {
    if ip.protocol() != expected_protocol {
        return Err(WireError::Protocol {
            layer: Layer::OuterIpv4,
            found: ip.protocol(),
            expected: expected_protocol,
        });
    }
    if ip.is_fragment() {
        return Err(WireError::Fragment {
            layer: Layer::OuterIpv4,
            offset: usize::from(ip.frag_offset()),
            more: ip.more_frags(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const INNER: [u8; 28] = [
        0x45, 0, 0, 28, 0, 1, 0x40, 0, 64, 17, 0, 0, 10, 244, 1, 2, 10, 244, 2, 2, 0x9c, 0x40, 0,
        53, 0, 8, 0, 0,
    ];

    fn encap() -> VxlanEncap {
        VxlanEncap {
            vni: 1,
            src_mac: MacAddr([0x02, 0, 0, 0, 1, 0]),
            dst_mac: MacAddr([0x02, 0, 0, 0, 2, 0]),
        }
    }

    fn frame() -> VxlanFrame {
        VxlanFrame {
            encap: encap(),
            outer_src_mac: MacAddr([0x02, 0xaa, 0, 0, 0, 1]),
            outer_dst_mac: MacAddr([0x02, 0xaa, 0, 0, 0, 2]),
            outer: OuterIpv4 {
                src_addr: Ipv4Addr::new(192, 0, 2, 1),
                dst_addr: Ipv4Addr::new(192, 0, 2, 2),
                ttl: 64,
                tos: 0,
                ident: 0x4242,
                dont_frag: false,
            },
            src_port: 40000,
            dst_port: DEFAULT_PORT,
            udp_checksum: UdpChecksum::Compute,
        }
    }

    fn buffer_with_inner() -> [u8; HEADROOM + 28] {
        let mut buf = [0u8; HEADROOM + 28];
        buf[HEADROOM..].copy_from_slice(&INNER);
        buf
    }

    #[test]
    fn payload_round_trip_without_touching_inner() {
        let mut buf = buffer_with_inner();
        let range = encap_payload(&mut buf, HEADROOM, INNER.len(), &encap()).unwrap();
        assert_eq!(range, HEADROOM - PAYLOAD_HEADROOM..HEADROOM + INNER.len());
        let datagram = &buf[range];
        assert_eq!(&datagram[..8], &[0x08, 0, 0, 0, 0, 0, 1, 0]);
        let d = decap(datagram).unwrap();
        assert_eq!(d.vni, 1);
        assert_eq!(d.inner_src_mac, encap().src_mac);
        assert_eq!(d.inner_dst_mac, encap().dst_mac);
        assert_eq!(d.inner_src, Ipv4Addr::new(10, 244, 1, 2));
        assert_eq!(&datagram[d.inner_ip], &INNER);
    }

    #[test]
    fn frame_is_what_etherparse_reads() {
        let mut buf = buffer_with_inner();
        let range = encap_frame(&mut buf, HEADROOM, INNER.len(), &frame()).unwrap();
        assert_eq!(range, 0..buf.len());
        let theirs = etherparse::SlicedPacket::from_ethernet(&buf).unwrap();
        let Some(etherparse::NetSlice::Ipv4(ip)) = theirs.net else {
            panic!("no IPv4")
        };
        let h = ip.header().to_header();
        assert_eq!(h.header_checksum, h.calc_header_checksum());
        assert_eq!(h.identification, 0x4242);
        assert_eq!(usize::from(h.total_len), buf.len() - 14);
        let Some(etherparse::TransportSlice::Udp(udp)) = theirs.transport else {
            panic!("no UDP")
        };
        assert_eq!(udp.destination_port(), 8472);
        let uh = udp.to_header();
        assert_eq!(
            uh.calc_checksum_ipv4(&h, udp.payload()).unwrap(),
            uh.checksum
        );
        let inner = etherparse::SlicedPacket::from_ethernet(&udp.payload()[8..]).unwrap();
        assert!(matches!(
            inner.transport,
            Some(etherparse::TransportSlice::Udp(_))
        ));

        let d = decap_frame(&buf).unwrap();
        assert_eq!(d.outer_ident, 0x4242);
        assert_eq!(d.src_port, 40000);
        assert_eq!(&buf[d.vxlan.inner_ip], &INNER);
    }

    #[test]
    fn outer_tos_takes_inner_ecn() {
        let mut buf = buffer_with_inner();
        buf[HEADROOM + 1] = 0x03; // inner CE
        encap_frame(&mut buf, HEADROOM, INNER.len(), &frame()).unwrap();
        assert_eq!(decap_frame(&buf).unwrap().outer_tos, 0x02);
    }

    #[test]
    fn headroom_and_bounds_errors() {
        let mut buf = buffer_with_inner();
        assert_eq!(
            encap_payload(&mut buf, 21, 28, &encap())
                .unwrap_err()
                .to_string(),
            "encapsulation needs 22 bytes of headroom before the inner packet, have 21"
        );
        assert_eq!(
            encap_frame(&mut buf, 50, 28, &frame()).unwrap_err(),
            EncapError::Headroom { need: 64, have: 50 }
        );
        assert_eq!(
            encap_payload(&mut buf, HEADROOM, 29, &encap()).unwrap_err(),
            EncapError::OutOfBuffer {
                start: 64,
                end: 93,
                len: 92
            }
        );
        assert!(encap_payload(&mut buf, usize::MAX, 2, &encap()).is_err());
    }

    #[test]
    fn decap_errors_name_the_problem() {
        let mut buf = buffer_with_inner();
        let range = encap_payload(&mut buf, HEADROOM, INNER.len(), &encap()).unwrap();
        let mut datagram = buf[range].to_vec();

        datagram[0] = 0x00;
        assert_eq!(
            decap(&datagram).unwrap_err().to_string(),
            "VXLAN header: I flag not set (flags 0x00)"
        );
        datagram[0] = 0xff; // reserved flag bits are ignored, as RFC 7348 requires
        datagram[1] = 0xff;
        datagram[7] = 0xff;
        assert_eq!(decap(&datagram).unwrap().vni, 1);

        datagram[20..22].copy_from_slice(&0x0806u16.to_be_bytes());
        assert_eq!(
            decap(&datagram).unwrap_err().to_string(),
            "inner Ethernet: EtherType 0x0806, expected 0x0800"
        );
        datagram[20..22].copy_from_slice(&0x0800u16.to_be_bytes());

        datagram[22 + 2..22 + 4].copy_from_slice(&1500u16.to_be_bytes());
        assert_eq!(
            decap(&datagram).unwrap_err().to_string(),
            "inner IPv4: total length 1500 exceeds buffer 28"
        );
        assert_eq!(
            decap(&datagram[..10]).unwrap_err().to_string(),
            "inner Ethernet: truncated: need 14 bytes, have 2"
        );
        assert_eq!(
            decap(&[8, 0, 0]).unwrap_err().to_string(),
            "VXLAN header: truncated: need 8 bytes, have 3"
        );
    }

    #[test]
    fn decap_trims_padding_after_inner_packet() {
        let mut buf = [0u8; HEADROOM + 28 + 10];
        buf[HEADROOM..HEADROOM + 28].copy_from_slice(&INNER);
        let range = encap_payload(&mut buf, HEADROOM, 38, &encap()).unwrap();
        assert_eq!(
            decap(&buf[range]).unwrap().inner_ip,
            PAYLOAD_HEADROOM..PAYLOAD_HEADROOM + 28
        );
    }

    #[test]
    fn decap_frame_checks_outer_checksums() {
        let mut buf = buffer_with_inner();
        encap_frame(&mut buf, HEADROOM, INNER.len(), &frame()).unwrap();
        let mut bad = buf;
        bad[14 + 8] = 1; // outer TTL
        let err = decap_frame(&bad).unwrap_err();
        assert!(
            matches!(
                err,
                WireError::Checksum {
                    layer: Layer::OuterIpv4,
                    ..
                }
            ),
            "{err}"
        );
        let mut bad = buf;
        bad[buf.len() - 1] ^= 1; // inner payload byte covered by the UDP checksum
        let err = decap_frame(&bad).unwrap_err();
        assert!(
            matches!(
                err,
                WireError::Checksum {
                    layer: Layer::OuterUdp,
                    ..
                }
            ),
            "{err}"
        );
    }
}
