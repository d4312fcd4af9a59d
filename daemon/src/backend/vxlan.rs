//! flannel's `vxlan` backend: Ethernet frames in UDP (port 8472 by default) to each
//! peer's PublicIP, addressed to its VTEP MAC; DirectRouting sends to peers on the same
//! underlay subnet unencapsulated.

use std::os::fd::{AsFd as _, OwnedFd};
use std::sync::Arc;

use anyhow::Context as _;
use ipnet::Ipv4Net;

use super::{tunnel_or_direct, Backend, Reach, Refusal, Tunnel};
use crate::dataplane::tap_encap::adjust_room;
use crate::dataplane::{express, io};
use crate::lease::{MacAddr, Peer, PeerBackend};

/// Sending sockets, each with its own ephemeral source port; flows are spread over them
/// (see `worker::pick_sender`), since one GSO send has one source port.
pub const FLOW_SOCKETS: usize = 8;

/// A node's VXLAN backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vxlan {
    pub vni: u32,
    pub port: u16,
    /// This node's VTEP MAC (the inner frames' source).
    pub local_mac: MacAddr,
    pub direct_routing: bool,
}

impl Backend for Vxlan {
    fn type_name(&self) -> &'static str {
        "vxlan"
    }

    fn overhead(&self) -> u32 {
        weft_proto::vxlan::OVERHEAD as u32
    }

    fn tunnel(&self) -> Option<Tunnel> {
        Some(Tunnel::Vxlan {
            vni: self.vni,
            port: self.port,
            local_mac: self.local_mac,
        })
    }

    /// A vxlan lease with our VNI; flannel ignores every other lease too.
    fn reach(&self, peer: &Peer, on_link: &[Ipv4Net]) -> Result<Reach, Refusal> {
        match peer.backend {
            PeerBackend::Vxlan { vni, .. } if vni == self.vni => {
                Ok(tunnel_or_direct(self.direct_routing, peer, on_link))
            }
            _ => Err(Refusal::mismatch(peer, format!("vxlan (VNI {})", self.vni))),
        }
    }
}

/// The TUN device of VNI `vni`: `weft.<VNI>` (flannel's is `flannel.<VNI>`).
pub fn device_name(vni: u32) -> String {
    format!("weft.{vni}")
}

/// UDP sockets sharing `port` with SO_REUSEPORT, one per worker, so the kernel spreads
/// the peers' flows (distinct outer source ports) over the workers.
pub(super) fn open_receivers(port: u16, queues: usize) -> anyhow::Result<Vec<Arc<OwnedFd>>> {
    (0..queues)
        .map(|_| io::vxlan_socket(port).map(Arc::new))
        .collect::<Result<_, _>>()
        .with_context(|| format!("binding UDP 0.0.0.0:{port} for VXLAN"))
}

/// The express lane's socket (see `dataplane::express`), or none without `express`:
/// one more member of the reuseport group, opened after [`open_receivers`]' (a group's
/// sockets are indexed in the order they joined), with the group's steering program.
/// None either when the kernel refuses the program (the socket is closed again, and
/// the group spreads by its own hash as before).
pub(super) fn open_express(
    port: u16,
    queues: usize,
    express: bool,
) -> anyhow::Result<Vec<Arc<OwnedFd>>> {
    if !express {
        return Ok(Vec::new());
    }
    let socket = io::vxlan_socket(port)
        .with_context(|| format!("binding UDP 0.0.0.0:{port} for VXLAN's express lane"))?;
    let program = express::reuseport_steering(queues as u32);
    if let Err(error) = io::attach_reuseport_program(socket.as_fd(), &program) {
        tracing::warn!(%error, "no express lane for small packets: the kernel refused the reuseport program");
        return Ok(Vec::new());
    }
    Ok(vec![Arc::new(socket)])
}

/// [`FLOW_SOCKETS`] sending sockets on ephemeral ports.
pub(super) fn open_senders() -> anyhow::Result<Vec<OwnedFd>> {
    (0..FLOW_SOCKETS)
        .map(|_| io::vxlan_send_socket())
        .collect::<Result<_, _>>()
        .context("opening the VXLAN sending sockets")
}

/// The TAP program's `bpf_skb_adjust_room` flags: outer IPv4 + UDP + an inner Ethernet
/// header, segment size kept.
pub(super) const TAP_ADJUST_ROOM_FLAGS: u64 = adjust_room::FIXED_GSO
    | adjust_room::ENCAP_L3_IPV4
    | adjust_room::ENCAP_L4_UDP
    | adjust_room::ENCAP_L2_ETH
    | adjust_room::encap_l2(weft_proto::ethernet::HEADER_LEN as u64);
