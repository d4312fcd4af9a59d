//! `struct virtio_net_hdr` (10 bytes), which a TUN device opened with `IFF_VNET_HDR`
//! puts before every packet it reads and expects before every packet written: it
//! describes GSO super-packets (`gso_type`, `gso_size`, `hdr_len`) and partial
//! checksums (`NEEDS_CSUM`, `csum_start`, `csum_offset`).
//!
//! Fields are little-endian: TUN uses the host's byte order unless told otherwise, so
//! on big-endian hosts the daemon must set `TUNSETVNETLE`.

use crate::error::{need, Layer, WireError};

mod field {
    pub type Field = core::ops::Range<usize>;
    pub const FLAGS: usize = 0;
    pub const GSO_TYPE: usize = 1;
    pub const HDR_LEN: Field = 2..4;
    pub const GSO_SIZE: Field = 4..6;
    pub const CSUM_START: Field = 6..8;
    pub const CSUM_OFFSET: Field = 8..10;
}

/// Length of `struct virtio_net_hdr` (without `num_buffers`).
pub const HEADER_LEN: usize = field::CSUM_OFFSET.end;

/// `flags` bits.
pub mod flags {
    /// The checksum at `csum_start + csum_offset` holds only the pseudo-header sum;
    /// whoever consumes the packet completes it.
    pub const NEEDS_CSUM: u8 = 1;
    /// The checksum was verified.
    pub const DATA_VALID: u8 = 2;
    pub const RSC_INFO: u8 = 4;
    /// The outer UDP header of a UDP-tunnel GSO packet carries a checksum that every
    /// segment gets, completed (`VIRTIO_NET_HDR_F_UDP_TUNNEL_CSUM`, Linux 6.17).
    pub const UDP_TUNNEL_CSUM: u8 = 8;
    /// What a TUN read may carry (weft never enables tunnel offloads on its TUN).
    pub(crate) const ALL: u8 = NEEDS_CSUM | DATA_VALID | RSC_INFO;
}

/// `gso_type` bit: the GSO packet is inside a UDP tunnel over IPv4
/// (`VIRTIO_NET_HDR_GSO_UDP_TUNNEL_IPV4`, Linux 6.17), the inner type in the low bits.
pub const GSO_UDP_TUNNEL_IPV4: u8 = 0x20;

/// Length of `struct virtio_net_hdr_v1_hash_tunnel`: the 12-byte `virtio_net_hdr_v1`
/// (the 10 bytes above + `num_buffers`), the 8-byte hash report, then
/// `outer_th_offset` and `inner_nh_offset`. A TAP whose `TUNSETVNETHDRSZ` is at least
/// this and that has the UDP-tunnel offloads on (`TUNSETOFFLOAD`) reads the tunnel
/// fields of every write.
pub const TUNNEL_HEADER_LEN: usize = 24;

/// A `virtio_net_hdr_v1_hash_tunnel`: the plain header plus where the outer transport
/// header and the inner network header start (offsets from the frame's first byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TunnelVnetRepr {
    pub vnet: VirtioNetRepr,
    /// Extra `flags` bits ([`flags::UDP_TUNNEL_CSUM`]).
    pub extra_flags: u8,
    /// Extra `gso_type` bits ([`GSO_UDP_TUNNEL_IPV4`]).
    pub extra_gso_type: u8,
    pub outer_th_offset: u16,
    pub inner_nh_offset: u16,
}

impl TunnelVnetRepr {
    /// Writes the header into `out[..TUNNEL_HEADER_LEN]`, hash fields and
    /// `num_buffers` zero.
    ///
    /// # Panics
    /// If `out` is shorter than [`TUNNEL_HEADER_LEN`].
    #[inline]
    pub fn emit(&self, out: &mut [u8]) {
        let out = &mut out[..TUNNEL_HEADER_LEN];
        out.fill(0);
        let mut hdr = VirtioNetHdr::new_unchecked(&mut out[..HEADER_LEN]);
        self.vnet.emit(&mut hdr);
        out[field::FLAGS] |= self.extra_flags;
        out[field::GSO_TYPE] |= self.extra_gso_type;
        out[20..22].copy_from_slice(&self.outer_th_offset.to_le_bytes());
        out[22..24].copy_from_slice(&self.inner_nh_offset.to_le_bytes());
    }
}

/// `gso_type` values (without the ECN bit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum GsoType {
    #[default]
    None,
    TcpV4,
    Udp,
    TcpV6,
    UdpL4,
}

impl GsoType {
    pub const fn to_raw(self) -> u8 {
        match self {
            GsoType::None => 0,
            GsoType::TcpV4 => 1,
            GsoType::Udp => 3,
            GsoType::TcpV6 => 4,
            GsoType::UdpL4 => 5,
        }
    }

    pub const fn from_raw(raw: u8) -> Option<GsoType> {
        Some(match raw {
            0 => GsoType::None,
            1 => GsoType::TcpV4,
            3 => GsoType::Udp,
            4 => GsoType::TcpV6,
            5 => GsoType::UdpL4,
            _ => return None,
        })
    }
}

/// The ECN bit of `gso_type`: the TCP super-packet had CWR set (segments after the
/// first must not).
pub const GSO_ECN: u8 = 0x80;

/// A view of a virtio-net header (and the packet after it).
#[derive(Debug, Clone)]
pub struct VirtioNetHdr<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> VirtioNetHdr<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        VirtioNetHdr { buffer }
    }

    /// Checks the length, that only known flags are set and that `gso_type` is known.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let b = buffer.as_ref();
        need(Layer::VirtioNet, HEADER_LEN, b.len())?;
        if b[field::FLAGS] & !flags::ALL != 0 {
            return Err(WireError::Unsupported {
                layer: Layer::VirtioNet,
                field: "flags",
                value: u32::from(b[field::FLAGS]),
            });
        }
        if GsoType::from_raw(b[field::GSO_TYPE] & !GSO_ECN).is_none() {
            return Err(WireError::Unsupported {
                layer: Layer::VirtioNet,
                field: "gso_type",
                value: u32::from(b[field::GSO_TYPE]),
            });
        }
        Ok(VirtioNetHdr { buffer })
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn read_u16(&self, f: field::Field) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_le_bytes([b[f.start], b[f.start + 1]])
    }

    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// The raw `gso_type` byte (ECN bit included).
    pub fn gso_type_raw(&self) -> u8 {
        self.buffer.as_ref()[field::GSO_TYPE]
    }

    /// `gso_type` without the ECN bit; `None` for unknown values.
    pub fn gso_type(&self) -> Option<GsoType> {
        GsoType::from_raw(self.gso_type_raw() & !GSO_ECN)
    }

    pub fn hdr_len(&self) -> u16 {
        self.read_u16(field::HDR_LEN)
    }

    pub fn gso_size(&self) -> u16 {
        self.read_u16(field::GSO_SIZE)
    }

    pub fn csum_start(&self) -> u16 {
        self.read_u16(field::CSUM_START)
    }

    pub fn csum_offset(&self) -> u16 {
        self.read_u16(field::CSUM_OFFSET)
    }

    /// The packet after the header.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> VirtioNetHdr<T> {
    fn write_u16(&mut self, f: field::Field, value: u16) {
        self.buffer.as_mut()[f].copy_from_slice(&value.to_le_bytes());
    }

    pub fn set_flags(&mut self, flags: u8) {
        self.buffer.as_mut()[field::FLAGS] = flags;
    }

    pub fn set_gso_type_raw(&mut self, gso_type: u8) {
        self.buffer.as_mut()[field::GSO_TYPE] = gso_type;
    }

    pub fn set_hdr_len(&mut self, v: u16) {
        self.write_u16(field::HDR_LEN, v);
    }

    pub fn set_gso_size(&mut self, v: u16) {
        self.write_u16(field::GSO_SIZE, v);
    }

    pub fn set_csum_start(&mut self, v: u16) {
        self.write_u16(field::CSUM_START, v);
    }

    pub fn set_csum_offset(&mut self, v: u16) {
        self.write_u16(field::CSUM_OFFSET, v);
    }
}

/// The fields of a virtio-net header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VirtioNetRepr {
    pub flags: u8,
    pub gso_type: GsoType,
    /// The ECN bit of `gso_type`.
    pub gso_ecn: bool,
    /// Bytes of headers (IP + TCP/UDP) repeated in front of each segment.
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VirtioNetRepr {
    #[inline]
    pub fn parse<T: AsRef<[u8]>>(hdr: &VirtioNetHdr<T>) -> Result<Self, WireError> {
        let hdr = VirtioNetHdr::new_checked(hdr.buffer.as_ref())?;
        Ok(VirtioNetRepr {
            flags: hdr.flags(),
            gso_type: hdr.gso_type().unwrap_or_default(),
            gso_ecn: hdr.gso_type_raw() & GSO_ECN != 0,
            hdr_len: hdr.hdr_len(),
            gso_size: hdr.gso_size(),
            csum_start: hdr.csum_start(),
            csum_offset: hdr.csum_offset(),
        })
    }

    #[inline]
    pub fn needs_csum(&self) -> bool {
        self.flags & flags::NEEDS_CSUM != 0
    }

    /// How many packets of at most `gso_size` payload bytes the `packet_len`-byte packet
    /// behind this header stands for: 1 unless it is a GSO super-packet with a segment
    /// size, else its payload (after `hdr_len`) divided into segments, rounded up.
    #[inline]
    pub fn segments(&self, packet_len: usize) -> usize {
        if self.gso_type == GsoType::None || self.gso_size == 0 {
            return 1;
        }
        let payload = packet_len.saturating_sub(usize::from(self.hdr_len));
        payload.div_ceil(usize::from(self.gso_size)).max(1)
    }

    pub const fn header_len(&self) -> usize {
        HEADER_LEN
    }

    /// The header for the same packet once `prefix` bytes of headers (a tunnel's outer
    /// headers) are put in front of it: the GSO header length and the checksum start,
    /// both counted from the start of the packet, move by `prefix`. A header without
    /// GSO or a partial checksum has no offsets to move.
    #[inline]
    pub fn with_prefix(&self, prefix: u16) -> VirtioNetRepr {
        let mut moved = *self;
        if moved.gso_type != GsoType::None || moved.needs_csum() {
            moved.hdr_len = moved.hdr_len.saturating_add(prefix);
            moved.csum_start = moved.csum_start.saturating_add(prefix);
        }
        moved
    }

    /// # Panics
    /// If the buffer is shorter than [`HEADER_LEN`].
    #[inline]
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, hdr: &mut VirtioNetHdr<T>) {
        hdr.set_flags(self.flags);
        hdr.set_gso_type_raw(self.gso_type.to_raw() | if self.gso_ecn { GSO_ECN } else { 0 });
        hdr.set_hdr_len(self.hdr_len);
        hdr.set_gso_size(self.gso_size);
        hdr.set_csum_start(self.csum_start);
        hdr.set_csum_offset(self.csum_offset);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_super_packet_stands_for_its_segments() {
        let tso = |gso_size| VirtioNetRepr {
            gso_type: GsoType::TcpV4,
            hdr_len: 52,
            gso_size,
            ..VirtioNetRepr::default()
        };
        assert_eq!(VirtioNetRepr::default().segments(1400), 1);
        assert_eq!(tso(1398).segments(52 + 3 * 1398), 3);
        assert_eq!(tso(1398).segments(52 + 3 * 1398 + 1), 4);
        assert_eq!(tso(1398).segments(40), 1);
        assert_eq!(tso(0).segments(9000), 1);
    }

    #[test]
    fn layout_is_little_endian_linux_struct() {
        let repr = VirtioNetRepr {
            flags: flags::NEEDS_CSUM,
            gso_type: GsoType::TcpV4,
            gso_ecn: false,
            hdr_len: 52,
            gso_size: 1448,
            csum_start: 20,
            csum_offset: 16,
        };
        let mut buf = [0u8; HEADER_LEN];
        repr.emit(&mut VirtioNetHdr::new_unchecked(&mut buf[..]));
        assert_eq!(buf, [1, 1, 52, 0, 0xa8, 0x05, 20, 0, 16, 0]);
        assert_eq!(
            VirtioNetRepr::parse(&VirtioNetHdr::new_unchecked(&buf[..])),
            Ok(repr)
        );
    }

    #[test]
    fn unknown_gso_type_is_named() {
        let buf = [0u8, 2, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            VirtioNetHdr::new_checked(&buf[..]).unwrap_err().to_string(),
            "virtio-net header: unsupported gso_type 2"
        );
    }
}
