//! The outer UDP source port for a tunnelled flow, chosen like Linux's
//! `udp_flow_src_port()`: a hash of the inner flow (addresses, protocol and, for
//! unfragmented TCP/UDP/SCTP, ports), obfuscated with `hash ^= hash << 16` and scaled
//! into `[min, max)`. All packets of one inner flow get one source port, so the
//! underlay's ECMP and the receiver's RSS/`SO_REUSEPORT` keep a flow on one path and
//! one core, and different flows spread out.
//!
//! The kernel keys its flow hash with a per-boot random secret, so the exact port it
//! picks cannot (and need not) be reproduced; receivers ignore the source port.

use crate::error::Layer;
use crate::ipv4;

/// Linux's default `ip_local_port_range` is 32768..=60999; as a half-open range
/// `[EPHEMERAL_PORT_MIN, EPHEMERAL_PORT_MAX)`.
pub const EPHEMERAL_PORT_MIN: u16 = 32768;
/// See [`EPHEMERAL_PORT_MIN`].
pub const EPHEMERAL_PORT_MAX: u16 = 61000;

const JHASH_INITVAL: u32 = 0xdead_beef;
/// Fixed key: weft needs stability per flow, not secrecy.
const FLOW_SEED: u32 = 0x5745_4654;

/// Bob Jenkins' lookup3 final mix, as the kernel's `jhash_3words`.
const fn jhash_3words(a: u32, b: u32, c: u32, initval: u32) -> u32 {
    let init = initval.wrapping_add(JHASH_INITVAL).wrapping_add(3 << 2);
    let (mut a, mut b, mut c) = (
        a.wrapping_add(init),
        b.wrapping_add(init),
        c.wrapping_add(init),
    );
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(14));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(11));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(25));
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(16));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(4));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(14));
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(24));
    c
}

/// The hash of the inner IPv4 packet's flow; 0 when it is not a valid IPv4 packet.
#[inline]
pub fn flow_hash(inner_ip_packet: &[u8]) -> u32 {
    let Ok((header_len, total_len)) = ipv4::check_header(inner_ip_packet, Layer::InnerIpv4) else {
        return 0;
    };
    let b = inner_ip_packet;
    let src = u32::from_be_bytes([b[12], b[13], b[14], b[15]]);
    let dst = u32::from_be_bytes([b[16], b[17], b[18], b[19]]);
    let proto = b[9];
    let fragment = u16::from_be_bytes([b[6], b[7]]) & 0x3fff != 0;
    let has_ports = matches!(proto, ipv4::protocol::TCP | ipv4::protocol::UDP | 132 | 136);
    let ports = if has_ports && !fragment && total_len >= header_len + 4 {
        u32::from_be_bytes([
            b[header_len],
            b[header_len + 1],
            b[header_len + 2],
            b[header_len + 3],
        ])
    } else {
        0
    };
    jhash_3words(src, dst, ports, FLOW_SEED ^ u32::from(proto))
}

/// The UDP source port in `[min, max)` for the inner IPv4 packet's flow, computed as
/// the kernel's `udp_flow_src_port`. Returns `min` if `min >= max`; a packet that is
/// not valid IPv4 hashes as 0 (one fixed port).
#[inline]
pub fn flow_src_port(inner_ip_packet: &[u8], min: u16, max: u16) -> u16 {
    if min >= max {
        return min;
    }
    let mut hash = flow_hash(inner_ip_packet);
    hash ^= hash << 16;
    let span = u64::from(max - min);
    // (hash * span) >> 32 < span <= u16::MAX, so the cast is exact.
    min + ((u64::from(hash) * span) >> 32) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    fn udp_packet(src_port: u16, dst_port: u16) -> [u8; 28] {
        let mut p = [0u8; 28];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&28u16.to_be_bytes());
        p[9] = ipv4::protocol::UDP;
        p[12..16].copy_from_slice(&[10, 244, 1, 2]);
        p[16..20].copy_from_slice(&[10, 244, 2, 2]);
        p[20..22].copy_from_slice(&src_port.to_be_bytes());
        p[22..24].copy_from_slice(&dst_port.to_be_bytes());
        p
    }

    #[test]
    fn same_flow_same_port_in_range() {
        let a = flow_src_port(
            &udp_packet(1000, 53),
            EPHEMERAL_PORT_MIN,
            EPHEMERAL_PORT_MAX,
        );
        let mut other_payload = udp_packet(1000, 53);
        other_payload[27] = 9;
        assert_eq!(
            a,
            flow_src_port(&other_payload, EPHEMERAL_PORT_MIN, EPHEMERAL_PORT_MAX)
        );
        assert!((EPHEMERAL_PORT_MIN..EPHEMERAL_PORT_MAX).contains(&a));
    }

    #[test]
    fn flows_spread_over_the_range() {
        let mut ports: Vec<u16> = (0..1000u16)
            .map(|p| {
                flow_src_port(
                    &udp_packet(10000 + p, 5201),
                    EPHEMERAL_PORT_MIN,
                    EPHEMERAL_PORT_MAX,
                )
            })
            .collect();
        assert!(ports
            .iter()
            .all(|p| (EPHEMERAL_PORT_MIN..EPHEMERAL_PORT_MAX).contains(p)));
        ports.sort_unstable();
        ports.dedup();
        assert!(
            ports.len() > 900,
            "only {} distinct ports for 1000 flows",
            ports.len()
        );
    }

    #[test]
    fn degenerate_inputs() {
        assert_eq!(flow_src_port(&[], 100, 100), 100);
        assert_eq!(flow_src_port(&[1, 2, 3], 100, 200), 100);
    }
}
