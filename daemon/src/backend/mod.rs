//! A backend is one module: how this node reaches its peers.
//!
//! [`Backend`] is the seam the rest of the daemon asks instead of matching on the
//! net-conf's backend or on a peer's lease: its overhead, whether it has a tunnel, and
//! how a peer's lease becomes a peer it can reach (or why it refuses it). The net-conf's
//! `weft_config::Backend` stays the parsed form; the daemon builds a [`NodeBackend`]
//! from it once ([`NodeBackend::new`]) and dispatches statically. One module per
//! backend: [`vxlan`], [`ipip`] (both encapsulate, through a [`Tunnel`]) and [`host_gw`]
//! (no tunnel: plain routes via the peers' PublicIPs).
//!
//! A new backend is a new module implementing [`Backend`], a variant of
//! [`NodeBackend`], and, if it encapsulates, a variant of [`Tunnel`].

pub mod host_gw;
pub mod ipip;
pub mod vxlan;

use std::net::Ipv4Addr;
use std::ops::Range;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use ipnet::Ipv4Net;
use weft_proto::error::EncapError;

use crate::dataplane::packet::{
    accept_ipip, accept_vxlan, write_ipip_outer, write_vxlan_outer, Accepted, TapOuter,
};
use crate::dataplane::peers::PeerTable;
use crate::lease::{MacAddr, Peer, PeerBackend};
use crate::metrics::{DropReason, RefusalReason};
use weft_netlink::Route;

/// What a backend decides. Pure: no I/O, so every rule is unit-tested with plain data.
pub trait Backend {
    /// The `BackendType` flannel writes into this backend's leases.
    fn type_name(&self) -> &'static str;

    /// Bytes of outer headers in front of every packet (0: not encapsulated); the
    /// overlay MTU is the underlay's minus this (see `NetConf::overlay_mtu`).
    fn overhead(&self) -> u32;

    /// The tunnel the data plane's devices, sockets and workers carry, or `None` for a
    /// backend that only routes (host-gw: no device, no sockets, no workers).
    fn tunnel(&self) -> Option<Tunnel>;

    /// How `peer` is reached, given the IPv4 subnets of the underlay interface
    /// (`on_link`), or why it is not.
    fn reach(&self, peer: &Peer, on_link: &[Ipv4Net]) -> Result<Reach, Refusal>;
}

/// How a peer is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Encapsulated to its PublicIP: a route to its subnet through the tunnel device.
    Tunnel,
    /// A plain route to its subnet `via` its PublicIP on the underlay (host-gw, and
    /// DirectRouting for a peer on the same L2 subnet).
    Direct,
}

/// The devices a peer's route can leave through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteDevices {
    /// The tunnel device's ifindex (unused by a backend without one).
    pub tunnel: u32,
    pub underlay: u32,
}

impl Reach {
    /// The route `peer` needs.
    pub fn route(self, peer: &Peer, devices: RouteDevices) -> Route {
        match self {
            Reach::Tunnel => Route {
                dst: peer.subnet.into(),
                gateway: None,
                oif: devices.tunnel,
            },
            Reach::Direct => Route {
                dst: peer.subnet.into(),
                gateway: Some(peer.public_ip.into()),
                oif: devices.underlay,
            },
        }
    }
}

/// Why a peer's lease gets no route (logged once per peer, counted by reason).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "peer {subnet} is not routed: its PublicIP {public_ip} is not on the underlay \
         interface's subnet ({on_link}), so it is not a directly connected node, which \
         {backend} needs (every node on one L2 network)"
    )]
    NotOnLink {
        subnet: Ipv4Net,
        public_ip: Ipv4Addr,
        /// The underlay interface's subnets, comma-separated (`none` when it has none).
        on_link: String,
        backend: &'static str,
    },
    #[error(
        "peer {subnet} (PublicIP {public_ip}) is not routed: its lease is {theirs}, this \
         network is {ours}; every node of a network must run the same backend"
    )]
    BackendMismatch {
        subnet: Ipv4Net,
        public_ip: Ipv4Addr,
        theirs: String,
        ours: String,
    },
}

impl Refusal {
    /// The refused peer's subnet.
    pub fn subnet(&self) -> Ipv4Net {
        match self {
            Refusal::NotOnLink { subnet, .. } | Refusal::BackendMismatch { subnet, .. } => *subnet,
        }
    }

    /// The counter's `reason`.
    pub fn reason(&self) -> RefusalReason {
        match self {
            Refusal::NotOnLink { .. } => RefusalReason::NotOnLink,
            Refusal::BackendMismatch { .. } => RefusalReason::BackendMismatch,
        }
    }

    /// A refusal of `peer`, whose lease is of another backend than `ours`.
    pub fn mismatch(peer: &Peer, ours: String) -> Refusal {
        Refusal::BackendMismatch {
            subnet: peer.subnet,
            public_ip: peer.public_ip,
            theirs: describe(&peer.backend),
            ours,
        }
    }

    /// A refusal of `peer`, whose PublicIP is in none of `on_link`.
    pub fn not_on_link(peer: &Peer, on_link: &[Ipv4Net], backend: &'static str) -> Refusal {
        let on_link = if on_link.is_empty() {
            "none".to_owned()
        } else {
            on_link
                .iter()
                .map(Ipv4Net::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        Refusal::NotOnLink {
            subnet: peer.subnet,
            public_ip: peer.public_ip,
            on_link,
            backend,
        }
    }
}

/// Whether `ip` is in one of the underlay's subnets (so the kernel takes it as an
/// on-link gateway).
pub fn is_on_link(ip: Ipv4Addr, on_link: &[Ipv4Net]) -> bool {
    on_link.iter().any(|net| net.contains(&ip))
}

/// A peer's backend as its lease says, for messages: `vxlan (VNI 7)`, `ipip`, `udp`.
fn describe(backend: &PeerBackend) -> String {
    match backend {
        PeerBackend::Vxlan { vni, .. } => format!("vxlan (VNI {vni})"),
        PeerBackend::Ipip => "ipip".to_owned(),
        PeerBackend::HostGw => "host-gw".to_owned(),
        PeerBackend::Other(name) => name.clone(),
    }
}

/// The backend this node runs, built once from the net-conf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeBackend {
    Vxlan(vxlan::Vxlan),
    Ipip(ipip::Ipip),
    HostGw(host_gw::HostGw),
}

impl NodeBackend {
    /// The backend of net-conf `config` for a node whose VTEP MAC is `vtep_mac`.
    pub fn new(config: &weft_config::Backend, vtep_mac: MacAddr) -> NodeBackend {
        match *config {
            weft_config::Backend::Vxlan {
                vni,
                port,
                direct_routing,
            } => NodeBackend::Vxlan(vxlan::Vxlan {
                vni,
                port,
                local_mac: vtep_mac,
                direct_routing,
            }),
            weft_config::Backend::Ipip { direct_routing } => {
                NodeBackend::Ipip(ipip::Ipip { direct_routing })
            }
            weft_config::Backend::HostGw => NodeBackend::HostGw(host_gw::HostGw),
        }
    }

    fn inner(&self) -> &dyn Backend {
        match self {
            NodeBackend::Vxlan(backend) => backend,
            NodeBackend::Ipip(backend) => backend,
            NodeBackend::HostGw(backend) => backend,
        }
    }
}

impl Backend for NodeBackend {
    fn type_name(&self) -> &'static str {
        self.inner().type_name()
    }
    fn overhead(&self) -> u32 {
        self.inner().overhead()
    }
    fn tunnel(&self) -> Option<Tunnel> {
        self.inner().tunnel()
    }
    fn reach(&self, peer: &Peer, on_link: &[Ipv4Net]) -> Result<Reach, Refusal> {
        self.inner().reach(peer, on_link)
    }
}

/// The encapsulation of a tunnelling backend, as the data plane's devices, sockets and
/// workers need it (`Copy`: each worker holds one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tunnel {
    Vxlan {
        vni: u32,
        port: u16,
        local_mac: MacAddr,
    },
    Ipip,
}

impl Tunnel {
    /// The TUN device's name: `weft.<VNI>` or `weft.ipip`.
    pub fn device_name(&self) -> String {
        match self {
            Tunnel::Vxlan { vni, .. } => vxlan::device_name(*vni),
            Tunnel::Ipip => ipip::DEVICE.to_owned(),
        }
    }

    /// The VNI, for a VXLAN tunnel.
    pub fn vni(&self) -> Option<u32> {
        match self {
            Tunnel::Vxlan { vni, .. } => Some(*vni),
            Tunnel::Ipip => None,
        }
    }

    /// Whether packets travel in UDP datagrams (so UDP GSO and GRO apply).
    pub fn is_udp(&self) -> bool {
        matches!(self, Tunnel::Vxlan { .. })
    }

    /// The underlay destination port of a peer (0 for a raw IP protocol).
    pub fn peer_port(&self) -> u16 {
        match self {
            Tunnel::Vxlan { port, .. } => *port,
            Tunnel::Ipip => 0,
        }
    }

    /// `Some(peer VTEP MAC)` when a peer with this lease speaks our encapsulation
    /// (VXLAN: the same VNI; IPIP has no MAC, zero).
    pub fn peer_mac(&self, peer: &PeerBackend) -> Option<MacAddr> {
        match (self, peer) {
            (
                Tunnel::Vxlan { vni, .. },
                PeerBackend::Vxlan {
                    vni: theirs,
                    vtep_mac,
                },
            ) if vni == theirs => Some(*vtep_mac),
            (Tunnel::Ipip, PeerBackend::Ipip) => Some([0; 6]),
            _ => None,
        }
    }

    /// Whether TCP super-packets from TUN are worth taking when the kernel has no UDP
    /// GSO: IPIP segments them into one `sendmmsg` batch either way; VXLAN would send
    /// them in one GSO send only with it.
    pub fn wants_tso_without_udp_gso(&self) -> bool {
        matches!(self, Tunnel::Ipip)
    }

    /// The receiving sockets, one per worker queue (bound to no device, so they outlive
    /// plane rebuilds and a re-created underlay device).
    pub fn open_receivers(&self, queues: usize) -> anyhow::Result<Vec<Arc<OwnedFd>>> {
        match self {
            Tunnel::Vxlan { port, .. } => vxlan::open_receivers(*port, queues),
            Tunnel::Ipip => ipip::open_receivers(queues),
        }
    }

    /// The express lane's socket, if wanted (VXLAN only: see [`vxlan::open_express`];
    /// IPIP's raw sockets have no reuseport group). Opened right after
    /// [`Tunnel::open_receivers`].
    pub fn open_express(&self, queues: usize, express: bool) -> anyhow::Result<Vec<Arc<OwnedFd>>> {
        match self {
            Tunnel::Vxlan { port, .. } => vxlan::open_express(*port, queues, express),
            Tunnel::Ipip => Ok(Vec::new()),
        }
    }

    /// The sending sockets the workers share, each sending without `DF` (see
    /// [`allow_fragmentation`]).
    pub fn open_senders(&self) -> anyhow::Result<Vec<OwnedFd>> {
        let senders = match self {
            Tunnel::Vxlan { .. } => vxlan::open_senders(),
            Tunnel::Ipip => ipip::open_senders(),
        }?;
        for socket in &senders {
            allow_fragmentation(socket).map_err(|e| {
                anyhow::anyhow!("IP_MTU_DISCOVER=IP_PMTUDISC_DONT on a sending socket: {e}")
            })?;
        }
        Ok(senders)
    }

    // The hot path's per-backend steps: each delegates to the code that does it.

    /// Receive: whether `datagram` (from outer source `source`) is this tunnel's packet
    /// for a pod here from a current peer, and where its inner packet is; else the
    /// drop reason (`dataplane::packet`'s rules).
    #[inline]
    pub fn accept(
        &self,
        datagram: &[u8],
        source: Ipv4Addr,
        own_subnet: &Ipv4Net,
        peers: &PeerTable,
    ) -> Result<Accepted, DropReason> {
        match self {
            Tunnel::Vxlan { vni, .. } => accept_vxlan(datagram, source, *vni, own_subnet, peers),
            Tunnel::Ipip => accept_ipip(datagram, own_subnet, peers),
        }
    }

    /// Transmit: this tunnel's headers in front of the inner packet at `buf[inner]`,
    /// addressed to a peer whose VTEP MAC is `peer_mac` (VXLAN); the range to send.
    /// With `tap`, the whole frame the kernel sends as is (`dataplane::tap_encap`);
    /// without, what a socket sends (the kernel adds outer IPv4, and UDP for VXLAN).
    /// The headers are written by `dataplane::packet`.
    #[inline]
    pub fn write_outer(
        &self,
        buf: &mut [u8],
        inner: Range<usize>,
        peer_mac: &MacAddr,
        tap: Option<&TapOuter>,
    ) -> Result<Range<usize>, EncapError> {
        match self {
            Tunnel::Vxlan {
                vni,
                port,
                local_mac,
            } => write_vxlan_outer(buf, inner, *vni, *port, local_mac, peer_mac, tap),
            Tunnel::Ipip => write_ipip_outer(buf, inner, tap),
        }
    }

    /// The outer headers the TAP's tc program declares, after the frame's Ethernet
    /// header (`dataplane::tap_encap`).
    pub fn tap_outer_len(&self) -> usize {
        match self {
            Tunnel::Vxlan { .. } => weft_proto::vxlan::OVERHEAD,
            Tunnel::Ipip => weft_proto::ipip::OVERHEAD,
        }
    }

    /// The TAP's tc program's `bpf_skb_adjust_room` flags (`BPF_F_ADJ_ROOM_*`): what
    /// the kernel is told the outer headers are.
    pub fn tap_adjust_room_flags(&self) -> u64 {
        match self {
            Tunnel::Vxlan { .. } => vxlan::TAP_ADJUST_ROOM_FLAGS,
            Tunnel::Ipip => ipip::TAP_ADJUST_ROOM_FLAGS,
        }
    }
}

/// The peers reached through the tunnel or directly (with whether through the tunnel),
/// the routes they need, and the refused ones: a pure function of the peers, the
/// backend and the underlay's subnets.
#[derive(Debug, Default)]
pub struct Plan<'a> {
    pub routes: Vec<Route>,
    /// Each reachable peer, `true` when it is reached through the tunnel.
    pub reachable: Vec<(&'a Peer, bool)>,
    pub refused: Vec<Refusal>,
}

/// What `backend` does with `peers` (this node's own subnet `own` excluded).
pub fn plan<'a>(
    backend: &impl Backend,
    own: Ipv4Net,
    peers: impl IntoIterator<Item = &'a Peer>,
    on_link: &[Ipv4Net],
    devices: RouteDevices,
) -> Plan<'a> {
    let mut plan = Plan::default();
    for peer in peers {
        if peer.subnet == own {
            continue;
        }
        match backend.reach(peer, on_link) {
            Ok(reach) => {
                plan.routes.push(reach.route(peer, devices));
                plan.reachable.push((peer, reach == Reach::Tunnel));
            }
            Err(refusal) => plan.refused.push(refusal),
        }
    }
    plan
}

/// DirectRouting's rule for a tunnelling backend: a peer on one of the underlay's
/// subnets gets a plain route, any other the tunnel (flannel's vxlan and ipip).
/// Outer packets leave without `DF` (`IP_PMTUDISC_DONT`; the TAP path's headers say the
/// same, `dataplane::packet`), so a router on a path narrower than the underlay's MTU
/// fragments them and the peer's kernel reassembles them, instead of dropping them and
/// answering with an ICMP "fragmentation needed" that nothing relays to the pod (a
/// blackhole). The kernel's vxlan device does the same by default. Without it, a UDP
/// socket (default `IP_PMTUDISC_WANT`) learns the smaller path MTU from that ICMP and
/// then refuses every `UDP_SEGMENT` send whose segments exceed it (`EINVAL`).
fn allow_fragmentation(socket: &OwnedFd) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let value: libc::c_int = libc::IP_PMTUDISC_DONT;
    // SAFETY: a valid socket; `value` is a live c_int and the length is its size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn tunnel_or_direct(direct_routing: bool, peer: &Peer, on_link: &[Ipv4Net]) -> Reach {
    if direct_routing && is_on_link(peer.public_ip, on_link) {
        Reach::Direct
    } else {
        Reach::Tunnel
    }
}

#[cfg(test)]
mod tests;
