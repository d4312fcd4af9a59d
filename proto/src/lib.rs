//! weft's wire formats: views and builders over caller-provided buffers, no I/O and
//! no allocation per packet.
//!
//! # Shape (smoltcp's `wire` pattern)
//!
//! Each format has a *view* `XPacket<T: AsRef<[u8]>>` whose `new_checked` validates
//! lengths once so that every accessor afterwards is infallible, `set_*` methods when
//! `T: AsMut<[u8]>`, byte offsets in a private `mod field`, and an owned `XRepr` with
//! `parse` and `emit`. Decoders return [`WireError`], never panic.
//!
//! # What comes from etherparse, what is written here, and why
//!
//! * **etherparse**: in tests, its `*Slice` parsers, header types and checksum code
//!   are the independent oracle our views, builders and checksums are checked against
//!   (field by field and checksum by checksum, ARP included). Its
//!   `Sum16BitWords` was the first checksum backend; [`checksum`] now sums 32-bit words
//!   into a 64-bit accumulator, which vectorises (2.4× faster on 1,400 bytes), because
//!   segmentation and coalescing sum every payload byte.
//! * **by hand**: the views and builders themselves. etherparse's slices are
//!   read-only (no in-place `set_*`), and its writers emit whole headers through
//!   `io::Write`/`Vec`, not into headroom in front of a payload that is already in
//!   place, which is the one thing the data plane needs (encapsulation must not copy the
//!   payload). etherparse also has no VXLAN, no IPIP encapsulation, no virtio-net
//!   header, no partial (pseudo-header) or incremental (RFC 1624) checksums and no TCP
//!   segmentation/coalescing; those are [`vxlan`], [`ipip`], [`vnet`], [`checksum`]
//!   and [`gso`].
//!
//! # The data plane's entry points
//!
//! What weftd's workers call per packet (and `weft-bench`'s `encap` bench measures):
//!
//! * transmit: [`vnet::VirtioNetRepr::parse`] of the TUN read, [`ipv4::Ipv4Packet`]
//!   for the inner destination, [`flow`] for the sending socket and the outer UDP
//!   source port; [`vxlan::encap_payload`] (a UDP socket adds outer IPv4/UDP) or
//!   [`vxlan::encap_frame`] / [`ipip::encap_frame`] (whole frames for the
//!   encapsulating TAP, with [`vnet::VirtioNetRepr::with_prefix`] in front);
//!   [`gso::segment`] / [`gso::complete_checksum`] where the kernel cannot take a
//!   super-packet;
//! * receive: [`vxlan::decap`] / [`ipip::decap_checked`], then [`gso::FlowKey`] and
//!   [`gso::TcpCoalescer`] to rebuild super-packets, or [`offload::receive_header`]
//!   for a packet written to TUN alone.

pub mod arp;
pub mod checksum;
pub mod error;
pub mod ethernet;
pub mod flow;
pub mod gso;
pub mod ipip;
pub mod ipv4;
pub mod lease;
pub mod offload;
pub mod tap_offload;
pub mod tcp;
pub mod udp;
pub mod udp_gro;
pub mod vnet;
pub mod vxlan;

pub use error::{EncapError, Layer, WireError};
pub use ethernet::MacAddr;
pub use flow::flow_src_port;
pub use ipip::{IpipDecap, IpipFrame};
pub use ipv4::OuterIpv4;
pub use vxlan::{VxlanDecap, VxlanEncap, VxlanFrame};

/// Headroom to leave before an inner IPv4 packet so that either backend can build a
/// complete frame in place: [`vxlan::HEADROOM`] (64) ≥ [`ipip::HEADROOM`] (34).
pub const VXLAN_HEADROOM: usize = vxlan::HEADROOM;
/// Bytes [`vxlan::encap_payload`] prepends (VXLAN header + inner Ethernet = 22).
pub const VXLAN_PAYLOAD_HEADROOM: usize = vxlan::PAYLOAD_HEADROOM;
/// Headroom for a complete IPIP frame (outer Ethernet + IPv4 = 34).
pub const IPIP_HEADROOM: usize = ipip::HEADROOM;
