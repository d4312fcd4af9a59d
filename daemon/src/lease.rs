//! The narrow interface between the control plane (`subnet`, which talks to etcd) and
//! the data plane (`dataplane`, which owns devices, routes and sockets). Neither side
//! sees the other's internals: the subnet manager produces a [`LocalLease`] and a stream
//! of [`PeerEvent`]s; the data plane consumes them.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use weft_config::NetConf;

/// A 48-bit MAC address (the VXLAN VTEP MAC).
pub type MacAddr = [u8; 6];

/// This node's lease, as acquired from etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalLease {
    /// The cluster network configuration the lease was taken from.
    pub netconf: NetConf,
    /// This node's subnet, e.g. 10.244.1.0/24.
    pub subnet: Ipv4Net,
    /// The address peers send encapsulated traffic to.
    pub public_ip: Ipv4Addr,
    /// This node's VTEP MAC (persisted in `--state-dir`, stable across restarts).
    pub vtep_mac: MacAddr,
    /// The underlay interface `public_ip` belongs to (from `--iface` or the default route).
    pub underlay_iface: String,
    /// The overlay MTU: underlay MTU minus the backend's overhead ([`overlay_mtu`]). The
    /// same value is written as `FLANNEL_MTU` to subnet.env; use it for the TUN and cni0.
    pub mtu: u32,
}

/// The MTU of the overlay (TUN, cni0, pods): the underlay interface's MTU minus the
/// backend's encapsulation overhead. The single place this is computed.
pub fn overlay_mtu(underlay_mtu: u32, backend: &weft_config::Backend) -> u32 {
    underlay_mtu.saturating_sub(backend.overhead())
}

/// How a peer wants to be reached, from its lease's `BackendType`/`BackendData`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerBackend {
    Vxlan { vni: u32, vtep_mac: MacAddr },
    Ipip,
    /// A backend weft does not speak (e.g. flannel's `udp`, `host-gw`); kept so it can be
    /// reported, never routed through the overlay.
    Other(String),
}

/// Another node of the cluster, from its lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub subnet: Ipv4Net,
    pub public_ip: Ipv4Addr,
    pub backend: PeerBackend,
}

/// What the subnet manager tells the data plane. Events are applied in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerEvent {
    /// A peer appeared or its lease changed (same subnet key).
    Upsert(Peer),
    /// The lease of this subnet is gone.
    Removed(Ipv4Net),
    /// The complete current set of peers (after the initial list, and after every
    /// re-list following a watch disconnect or compaction). Peers not in it are gone.
    Snapshot(Vec<Peer>),
}
