//! The Internet checksum (RFC 1071) and its incremental update (RFC 1624).
//!
//! Summation is etherparse's [`Sum16BitWords`]: it adds 8 bytes per step in native
//! byte order (the one's-complement sum is byte-order independent) and allocates
//! nothing. The functions here return checksum values as big-endian numbers, i.e. the
//! value to store with `to_be_bytes`.

use core::net::Ipv4Addr;

pub use etherparse::checksum::Sum16BitWords;

/// Converts etherparse's native-order folded complement to the field's numeric value.
#[inline]
fn to_field(sum: &Sum16BitWords) -> u16 {
    sum.ones_complement().to_be()
}

/// The checksum of `data`, as the IPv4 header checksum field wants it (the field
/// itself must be zero while summing, or be included to verify: then the result is 0).
#[inline]
pub fn internet_checksum(data: &[u8]) -> u16 {
    to_field(&Sum16BitWords::new().add_slice(data))
}

/// The running sum of the IPv4 pseudo-header of a TCP/UDP segment of `len` bytes.
#[inline]
pub fn pseudo_header(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, len: u16) -> Sum16BitWords {
    let mut sum = Sum16BitWords::new();
    let len = len.to_be_bytes();
    sum.add_4bytes(src.octets())
        .add_4bytes(dst.octets())
        .add_4bytes([0, protocol, len[0], len[1]])
}

/// The TCP/UDP checksum of `segment` (header with a zero checksum field plus payload).
/// A result of 0 is returned as is; UDP callers map it to 0xffff.
#[inline]
pub fn transport_checksum(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, segment: &[u8]) -> u16 {
    let len = u16::try_from(segment.len()).unwrap_or(u16::MAX);
    to_field(&pseudo_header(src, dst, protocol, len).add_slice(segment))
}

/// True when `segment`, checksum field included, sums to zero with its pseudo-header.
#[inline]
pub fn verify_transport(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, segment: &[u8]) -> bool {
    transport_checksum(src, dst, protocol, segment) == 0
}

/// The partial checksum that a `VIRTIO_NET_HDR_F_NEEDS_CSUM` packet carries in its
/// TCP/UDP checksum field: the folded pseudo-header sum, *not* complemented. The
/// receiver (kernel or NIC) adds the segment bytes from `csum_start` and complements.
#[inline]
pub fn pseudo_header_partial(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, len: u16) -> u16 {
    !to_field(&pseudo_header(src, dst, protocol, len))
}

/// Adds `b` to the one's-complement 16-bit sum `a`.
#[inline]
fn ones_add(a: u16, b: u16) -> u16 {
    let (sum, carry) = a.overflowing_add(b);
    sum + u16::from(carry)
}

/// RFC 1624 eqn. 3: the new checksum after a 16-bit word covered by `checksum`
/// changed from `old` to `new`, without re-summing the data.
#[inline]
pub fn update16(checksum: u16, old: u16, new: u16) -> u16 {
    !ones_add(ones_add(!checksum, !old), new)
}

/// [`update16`] for a 32-bit field (e.g. a TCP sequence number).
#[inline]
pub fn update32(checksum: u16, old: u32, new: u32) -> u16 {
    let c = update16(checksum, (old >> 16) as u16, (new >> 16) as u16);
    update16(c, old as u16, new as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: the words 0001 f203 f4f5 f6f7 sum to ddf2, checksum 220d.
        assert_eq!(
            internet_checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            0x220d
        );
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(internet_checksum(&[0x12]), internet_checksum(&[0x12, 0x00]));
    }

    #[test]
    fn incremental_update_matches_recompute() {
        let mut data = [
            0x45u8, 0, 0, 40, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        let before = internet_checksum(&data);
        data[4..6].copy_from_slice(&0xbeefu16.to_be_bytes());
        assert_eq!(update16(before, 0x1234, 0xbeef), internet_checksum(&data));
    }

    #[test]
    fn incremental_update32_matches_recompute() {
        let mut data = [1u8, 2, 3, 4, 5, 6, 7, 8, 9, 10];
        let before = internet_checksum(&data);
        data[2..6].copy_from_slice(&0xdead_beefu32.to_be_bytes());
        assert_eq!(
            update32(before, 0x0304_0506, 0xdead_beef),
            internet_checksum(&data)
        );
    }
}
