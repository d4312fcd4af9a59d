//! VXLAN frames for a TAP with Linux's UDP-tunnel offloads (6.17): the extended
//! virtio-net header ([`TunnelVnetRepr`]) that tells the kernel a written frame is a
//! TCP (or UDP) super-packet inside VXLAN with an outer UDP checksum to complete per
//! segment (`SKB_GSO_UDP_TUNNEL_CSUM`), and the outer checksum field it needs.

use crate::checksum;
use crate::ethernet;
use crate::ipv4::{self, protocol, Ipv4Packet};
use crate::udp;
use crate::vnet::{self, GsoType, TunnelVnetRepr, VirtioNetRepr};
use crate::vxlan;

/// Why a frame cannot go to a UDP-tunnel-offload TAP ([`tap_offload_header`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TapOffloadError {
    #[error("a {len}-byte frame is shorter than VXLAN's headers")]
    Short { len: usize },
    #[error("frame of {len} bytes: its UDP length does not fit 16 bits")]
    TooLong { len: usize },
    #[error("GSO type {0:?} cannot be segmented inside a UDP tunnel")]
    GsoType(GsoType),
    #[error("a GSO packet without a partial checksum (NEEDS_CSUM)")]
    NoPartialChecksum,
    #[error("the partial checksum at {start} + {offset} lies outside the inner packet")]
    ChecksumOutOfBounds { start: u16, offset: u16 },
}

/// Where the outer UDP header starts in a frame [`vxlan::encap_frame`] wrote.
pub const FRAME_OUTER_UDP: usize = ethernet::HEADER_LEN + ipv4::HEADER_LEN;
/// Where the inner IPv4 packet starts in a frame [`vxlan::encap_frame`] wrote.
pub const FRAME_INNER_IP: usize = vxlan::HEADROOM;

/// For a TAP with Linux's UDP-tunnel offloads (`TUN_F_UDP_TUNNEL_GSO[_CSUM]`, 6.17):
/// the `virtio_net_hdr_v1_hash_tunnel` to write in front of `frame` (as
/// [`vxlan::encap_frame`] wrote it, outer UDP checksum 0), whose inner packet came from TUN
/// with `inner`, and the outer UDP checksum field set so that every packet on the wire
/// carries a correct, non-zero one (what a receiver's UDP GRO needs):
///
/// * a super-packet (TCPv4 or UDP_L4 GSO) becomes a UDP-tunnel GSO packet with
///   `UDP_TUNNEL_CSUM`: the outer field holds the pseudo-header sum and segmentation
///   completes it per segment (`__skb_udp_tunnel_segment`), a NIC or software alike;
/// * a packet whose inner checksum is partial keeps `NEEDS_CSUM` on the inner
///   checksum, and the outer checksum is computed here from the headers alone, as the
///   kernel's local checksum offload does (`lco_csum`): once the inner checksum is
///   complete, the inner transport bytes sum to the complement of the pseudo-header
///   sum its field holds now;
/// * any other packet gets `NEEDS_CSUM` on the outer UDP checksum.
pub fn tap_offload_header(
    frame: &mut [u8],
    inner: &VirtioNetRepr,
) -> Result<TunnelVnetRepr, TapOffloadError> {
    let len = frame.len();
    if len < FRAME_INNER_IP {
        return Err(TapOffloadError::Short { len });
    }
    let udp_len =
        u16::try_from(len - FRAME_OUTER_UDP).map_err(|_| TapOffloadError::TooLong { len })?;
    let (src, dst) = {
        let ip = Ipv4Packet::new_unchecked(&frame[ethernet::HEADER_LEN..]);
        (ip.src_addr(), ip.dst_addr())
    };
    let pseudo = checksum::pseudo_header(src, dst, protocol::UDP, udp_len);
    let check_field = FRAME_OUTER_UDP + udp::CHECKSUM_OFFSET;
    frame[check_field..check_field + 2].fill(0);
    let prefix = FRAME_INNER_IP as u16;
    let inner_field = || -> Result<usize, TapOffloadError> {
        let field = FRAME_INNER_IP + usize::from(inner.csum_start) + usize::from(inner.csum_offset);
        if field + 2 > len || inner.csum_start < ipv4::HEADER_LEN as u16 {
            return Err(TapOffloadError::ChecksumOutOfBounds {
                start: inner.csum_start,
                offset: inner.csum_offset,
            });
        }
        Ok(field)
    };
    let (check, header) = match inner.gso_type {
        GsoType::TcpV4 | GsoType::UdpL4 => {
            if !inner.needs_csum() {
                return Err(TapOffloadError::NoPartialChecksum);
            }
            inner_field()?;
            (
                pseudo.fold(),
                TunnelVnetRepr {
                    vnet: inner.with_prefix(prefix),
                    extra_flags: vnet::flags::UDP_TUNNEL_CSUM,
                    extra_gso_type: vnet::GSO_UDP_TUNNEL_IPV4,
                    outer_th_offset: FRAME_OUTER_UDP as u16,
                    inner_nh_offset: prefix,
                },
            )
        }
        GsoType::None if inner.needs_csum() => {
            let field = inner_field()?;
            let start = FRAME_INNER_IP + usize::from(inner.csum_start);
            let partial = u16::from_be_bytes([frame[field], frame[field + 1]]);
            let sum = pseudo
                .add_slice(&frame[FRAME_OUTER_UDP..start])
                .add_u16(!partial);
            (
                sum.checksum_nonzero(),
                TunnelVnetRepr {
                    vnet: inner.with_prefix(prefix),
                    ..TunnelVnetRepr::default()
                },
            )
        }
        GsoType::None => (
            pseudo.fold(),
            TunnelVnetRepr {
                vnet: VirtioNetRepr {
                    flags: vnet::flags::NEEDS_CSUM,
                    csum_start: FRAME_OUTER_UDP as u16,
                    csum_offset: udp::CHECKSUM_OFFSET as u16,
                    ..VirtioNetRepr::default()
                },
                ..TunnelVnetRepr::default()
            },
        ),
        other => return Err(TapOffloadError::GsoType(other)),
    };
    frame[check_field..check_field + 2].copy_from_slice(&check.to_be_bytes());
    Ok(header)
}

#[cfg(test)]
mod tests {
    use core::net::Ipv4Addr;

    use super::*;
    use crate::ethernet::MacAddr;
    use crate::ipv4::OuterIpv4;
    use crate::udp::UdpChecksum;
    use crate::vxlan::{encap_frame, VxlanEncap, VxlanFrame, DEFAULT_PORT, HEADROOM};

    fn frame() -> VxlanFrame {
        VxlanFrame {
            encap: VxlanEncap {
                vni: 1,
                src_mac: MacAddr([0x02, 0, 0, 0, 1, 0]),
                dst_mac: MacAddr([0x02, 0, 0, 0, 2, 0]),
            },
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

    /// A frame around an inner TCP packet of `payload` bytes whose checksum is left
    /// partial (as TUN hands it with NEEDS_CSUM), and that header.
    fn tcp_frame(payload: usize) -> (Vec<u8>, VirtioNetRepr) {
        let inner_len = 40 + payload;
        let mut buf = vec![0u8; HEADROOM + inner_len];
        let (src, dst) = (Ipv4Addr::new(10, 244, 1, 2), Ipv4Addr::new(10, 244, 2, 2));
        ipv4::Ipv4Repr {
            src_addr: src,
            dst_addr: dst,
            protocol: protocol::TCP,
            payload_len: 20 + payload,
            ttl: 64,
            tos: 0,
            ident: 7,
            dont_frag: true,
            more_frags: false,
            frag_offset: 0,
        }
        .emit(&mut Ipv4Packet::new_unchecked(&mut buf[HEADROOM..]));
        let mut tcp = crate::tcp::TcpPacket::new_unchecked(&mut buf[HEADROOM + 20..]);
        tcp.set_header_len(20);
        tcp.set_src_port(40000);
        tcp.set_dst_port(5201);
        for (i, b) in buf[HEADROOM + 40..].iter_mut().enumerate() {
            *b = (i * 7 + 3) as u8;
        }
        let partial =
            checksum::pseudo_header_partial(src, dst, protocol::TCP, (20 + payload) as u16);
        buf[HEADROOM + 36..HEADROOM + 38].copy_from_slice(&partial.to_be_bytes());
        let mut frame = frame();
        frame.udp_checksum = UdpChecksum::None;
        let range = encap_frame(&mut buf, HEADROOM, inner_len, &frame).unwrap();
        assert_eq!(range, 0..buf.len());
        let vnet = VirtioNetRepr {
            flags: vnet::flags::NEEDS_CSUM,
            csum_start: 20,
            csum_offset: 16,
            ..VirtioNetRepr::default()
        };
        (buf, vnet)
    }

    fn outer_udp_verifies(frame: &[u8]) -> bool {
        let udp = &frame[FRAME_OUTER_UDP..];
        udp[6..8] != [0, 0]
            && checksum::verify_transport(
                Ipv4Addr::new(192, 0, 2, 1),
                Ipv4Addr::new(192, 0, 2, 2),
                protocol::UDP,
                udp,
            )
    }

    #[test]
    fn tap_offload_super_packets_become_udp_tunnel_gso_with_checksum() {
        let (mut frame, mut inner) = tcp_frame(4000);
        inner.gso_type = GsoType::TcpV4;
        inner.gso_size = 1398;
        inner.hdr_len = 40;
        let header = tap_offload_header(&mut frame, &inner).unwrap();
        let mut raw = [0xffu8; vnet::TUNNEL_HEADER_LEN];
        header.emit(&mut raw);
        // flags NEEDS_CSUM | UDP_TUNNEL_CSUM; TCPV4 | UDP_TUNNEL_IPV4; offsets from the
        // frame's first byte; hash and num_buffers zero; outer_th 34, inner_nh 64.
        assert_eq!(raw[0], 1 | 8);
        assert_eq!(raw[1], 1 | 0x20);
        assert_eq!(u16::from_le_bytes([raw[2], raw[3]]), 104);
        assert_eq!(u16::from_le_bytes([raw[4], raw[5]]), 1398);
        assert_eq!(u16::from_le_bytes([raw[6], raw[7]]), 84);
        assert_eq!(u16::from_le_bytes([raw[8], raw[9]]), 16);
        assert_eq!(raw[10..20], [0; 10]);
        assert_eq!(u16::from_le_bytes([raw[20], raw[21]]), 34);
        assert_eq!(u16::from_le_bytes([raw[22], raw[23]]), 64);
        // The outer field holds the pseudo-header sum segmentation starts from.
        let udp_len = (frame.len() - 34) as u16;
        let want = checksum::pseudo_header_partial(
            Ipv4Addr::new(192, 0, 2, 1),
            Ipv4Addr::new(192, 0, 2, 2),
            protocol::UDP,
            udp_len,
        );
        assert_eq!(u16::from_be_bytes([frame[40], frame[41]]), want);
        // Without a partial inner checksum there is nothing for segmentation to redo.
        inner.flags = 0;
        assert_eq!(
            tap_offload_header(&mut frame, &inner),
            Err(TapOffloadError::NoPartialChecksum)
        );
    }

    #[test]
    fn tap_offload_outer_checksum_from_headers_is_right_once_inner_is_complete() {
        for payload in [0, 1, 33, 1400] {
            let (mut frame, inner) = tcp_frame(payload);
            let header = tap_offload_header(&mut frame, &inner).unwrap();
            assert_eq!(header.vnet, inner.with_prefix(64));
            assert_eq!((header.extra_flags, header.extra_gso_type), (0, 0));
            // What the kernel or NIC does with NEEDS_CSUM on the inner checksum:
            crate::gso::complete_checksum(&mut frame[64..], &inner).unwrap();
            assert!(outer_udp_verifies(&frame), "payload {payload}");
        }
    }

    #[test]
    fn tap_offload_complete_packets_leave_the_outer_checksum_to_offload() {
        let (mut frame, inner) = tcp_frame(100);
        crate::gso::complete_checksum(&mut frame[64..], &inner).unwrap();
        let header = tap_offload_header(&mut frame, &VirtioNetRepr::default()).unwrap();
        assert!(header.vnet.needs_csum());
        assert_eq!((header.vnet.csum_start, header.vnet.csum_offset), (34, 6));
        crate::gso::complete_checksum(&mut frame, &header.vnet).unwrap();
        assert!(outer_udp_verifies(&frame));
    }

    #[test]
    fn tap_offload_refuses_what_it_cannot_describe() {
        let (mut frame, mut inner) = tcp_frame(10);
        inner.csum_start = 200;
        assert!(matches!(
            tap_offload_header(&mut frame, &inner),
            Err(TapOffloadError::ChecksumOutOfBounds { .. })
        ));
        assert_eq!(
            tap_offload_header(&mut frame[..60], &VirtioNetRepr::default()),
            Err(TapOffloadError::Short { len: 60 })
        );
    }
}
