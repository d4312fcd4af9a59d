//! flannel's `host-gw` backend: no encapsulation at all. Each peer's subnet is routed
//! `via` its PublicIP on the underlay interface, so the underlay must be one L2 network
//! (the kernel forwards to the peer's MAC). No tunnel device, no sockets, no workers;
//! the overlay MTU is the underlay's.
//!
//! flannel installs the route and lets the kernel refuse a gateway that is not on link;
//! weft refuses such a peer itself, with a message naming the peer, its PublicIP and
//! the underlay's subnets, and counts it. A lease of another backend is refused too
//! (flannel ignores it with a warning).

use ipnet::Ipv4Net;

use super::{is_on_link, Backend, Reach, Refusal, Tunnel};
use crate::lease::{Peer, PeerBackend};

/// The `BackendType` of host-gw leases.
pub const TYPE: &str = "host-gw";

/// A node's host-gw backend (it has no options).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostGw;

impl Backend for HostGw {
    fn type_name(&self) -> &'static str {
        TYPE
    }

    fn overhead(&self) -> u32 {
        0
    }

    fn tunnel(&self) -> Option<Tunnel> {
        None
    }

    fn reach(&self, peer: &Peer, on_link: &[Ipv4Net]) -> Result<Reach, Refusal> {
        match peer.backend {
            PeerBackend::HostGw if is_on_link(peer.public_ip, on_link) => Ok(Reach::Direct),
            PeerBackend::HostGw => Err(Refusal::not_on_link(peer, on_link, TYPE)),
            _ => Err(Refusal::mismatch(peer, TYPE.to_owned())),
        }
    }
}
