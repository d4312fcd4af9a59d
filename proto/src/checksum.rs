//! The Internet checksum (RFC 1071) and its incremental update (RFC 1624).
//!
//! Written here rather than taken from etherparse's `Sum16BitWords`: that one adds
//! 8 bytes per step through a serial carry chain (93.8 ns per 1,400 bytes on the lab
//! machine), while summing 32-bit words into a 64-bit accumulator without carries lets
//! the compiler vectorise (38.5 ns, 2.4× faster), and the sum runs once or twice per
//! segment on the TSO/GRO paths. etherparse remains the oracle in the tests.
//!
//! Words are summed in native byte order (the one's-complement sum is byte-order
//! independent, RFC 1071 §2(B)); the functions here take and return checksum values as
//! big-endian numbers, i.e. the value to store with `to_be_bytes`.

use core::net::Ipv4Addr;

/// A running one's-complement sum. Only the last slice added may have an odd length
/// (it is padded with a zero byte, as RFC 1071 requires).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sum {
    /// Sum of native-order 32-bit words; cannot overflow below 16 GiB of input.
    acc: u64,
}

impl Sum {
    pub const fn new() -> Sum {
        Sum { acc: 0 }
    }

    /// Adds `data` (see the type's note on odd lengths).
    #[inline]
    #[must_use]
    pub fn add_slice(self, data: &[u8]) -> Sum {
        let mut acc = self.acc;
        let mut words = data.chunks_exact(4);
        for w in &mut words {
            acc += u64::from(u32::from_ne_bytes([w[0], w[1], w[2], w[3]]));
        }
        let rest = words.remainder();
        if !rest.is_empty() {
            let mut tail = [0u8; 4];
            tail[..rest.len()].copy_from_slice(rest);
            acc += u64::from(u32::from_ne_bytes(tail));
        }
        Sum { acc }
    }

    /// Adds a 16-bit word given as a number (as it is stored big-endian on the wire).
    #[inline]
    #[must_use]
    pub fn add_u16(self, word: u16) -> Sum {
        Sum {
            acc: self.acc + u64::from(u16::from_ne_bytes(word.to_be_bytes())),
        }
    }

    /// Adds a 32-bit field given as a number.
    #[inline]
    #[must_use]
    pub fn add_u32(self, word: u32) -> Sum {
        Sum {
            acc: self.acc + u64::from(u32::from_ne_bytes(word.to_be_bytes())),
        }
    }

    /// The folded 16-bit sum, not complemented, as a number.
    #[inline]
    pub fn fold(self) -> u16 {
        let mut acc = (self.acc & 0xffff_ffff) + (self.acc >> 32);
        acc = (acc & 0xffff_ffff) + (acc >> 32);
        acc = (acc & 0xffff) + (acc >> 16);
        acc = (acc & 0xffff) + (acc >> 16);
        acc = (acc & 0xffff) + (acc >> 16);
        u16::from_be_bytes((acc as u16).to_ne_bytes())
    }

    /// The checksum: the complement of the folded sum.
    #[inline]
    pub fn checksum(self) -> u16 {
        !self.fold()
    }

    /// The checksum as TCP/UDP transmit it: a computed 0 becomes 0xffff (for UDP, 0
    /// means "no checksum"; for TCP both encode the same sum).
    #[inline]
    pub fn checksum_nonzero(self) -> u16 {
        match self.checksum() {
            0 => 0xffff,
            sum => sum,
        }
    }
}

/// The checksum of `data`, as the IPv4 header checksum field wants it (the field
/// itself must be zero while summing, or be included to verify: then the result is 0).
#[inline]
pub fn internet_checksum(data: &[u8]) -> u16 {
    Sum::new().add_slice(data).checksum()
}

/// The running sum of the IPv4 pseudo-header of a TCP/UDP segment of `len` bytes.
#[inline]
pub fn pseudo_header(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, len: u16) -> Sum {
    Sum::new()
        .add_u32(u32::from(src))
        .add_u32(u32::from(dst))
        .add_u16(u16::from(protocol))
        .add_u16(len)
}

/// The TCP/UDP checksum of `segment` (header with a zero checksum field plus payload).
/// A result of 0 is returned as is; UDP callers map it to 0xffff.
#[inline]
pub fn transport_checksum(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, segment: &[u8]) -> u16 {
    let len = u16::try_from(segment.len()).unwrap_or(u16::MAX);
    pseudo_header(src, dst, protocol, len)
        .add_slice(segment)
        .checksum()
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
    pseudo_header(src, dst, protocol, len).fold()
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
    fn agrees_with_etherparse_on_every_length() {
        let data: Vec<u8> = (0..300u32).map(|i| (i * 151 + 7) as u8).collect();
        for len in 0..data.len() {
            let theirs = etherparse::checksum::Sum16BitWords::new()
                .add_slice(&data[..len])
                .ones_complement()
                .to_be();
            assert_eq!(internet_checksum(&data[..len]), theirs, "length {len}");
        }
    }

    #[test]
    fn fields_add_like_bytes() {
        let bytes = [0xc0, 0x00, 0x02, 0x01, 0x00, 0x11];
        let by_fields = Sum::new().add_u32(0xc000_0201).add_u16(0x0011);
        assert_eq!(by_fields.fold(), Sum::new().add_slice(&bytes).fold());
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
