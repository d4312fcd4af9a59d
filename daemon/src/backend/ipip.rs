//! flannel's `ipip` backend: the inner IPv4 packet behind an outer IPv4 header
//! (protocol 4) to each peer's PublicIP; DirectRouting sends to peers on the same
//! underlay subnet unencapsulated.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use anyhow::Context as _;
use ipnet::Ipv4Net;

use super::{tunnel_or_direct, Backend, Reach, Refusal, Tunnel};
use crate::dataplane::io;
use crate::dataplane::tap_encap::adjust_room;
use crate::lease::{Peer, PeerBackend};

/// The TUN device's name (flannel's is `flannel.ipip`).
pub const DEVICE: &str = "weft.ipip";

/// A node's IPIP backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipip {
    pub direct_routing: bool,
}

impl Backend for Ipip {
    fn type_name(&self) -> &'static str {
        "ipip"
    }

    fn overhead(&self) -> u32 {
        weft_proto::ipip::OVERHEAD as u32
    }

    fn tunnel(&self) -> Option<Tunnel> {
        Some(Tunnel::Ipip)
    }

    fn reach(&self, peer: &Peer, on_link: &[Ipv4Net]) -> Result<Reach, Refusal> {
        match peer.backend {
            PeerBackend::Ipip => Ok(tunnel_or_direct(self.direct_routing, peer, on_link)),
            _ => Err(Refusal::mismatch(peer, "ipip".to_owned())),
        }
    }
}

/// Raw IPIP sockets, one per worker, each filtering for its share of the inner flows
/// (every raw socket sees every packet; see `io::ipip_sockets`).
pub(super) fn open_receivers(queues: usize) -> anyhow::Result<Vec<Arc<OwnedFd>>> {
    Ok(io::ipip_sockets(queues)
        .context("opening the raw IPIP sockets")?
        .into_iter()
        .map(Arc::new)
        .collect())
}

/// One raw socket of its own for sending, not a receiving one (see
/// `io::ipip_send_socket`).
pub(super) fn open_senders() -> anyhow::Result<Vec<OwnedFd>> {
    Ok(vec![
        io::ipip_send_socket().context("opening the IPIP sending socket")?
    ])
}

/// The TAP program's `bpf_skb_adjust_room` flags: an outer IPv4 header, segment size
/// kept.
pub(super) const TAP_ADJUST_ROOM_FLAGS: u64 = adjust_room::FIXED_GSO | adjust_room::ENCAP_L3_IPV4;
