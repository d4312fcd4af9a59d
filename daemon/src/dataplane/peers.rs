//! The peer table the hot path reads: rebuilt by the control task on every event and
//! published with one atomic pointer swap ([`arc_swap::ArcSwap`]); workers load it once
//! per batch, so the per-packet path takes no lock and sees a consistent table.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::lease::{MacAddr, Peer, PeerBackend};

/// How this node encapsulates: its backend's tunnel.
pub use crate::backend::Tunnel as Encap;

/// What the transmit path needs to reach one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerEntry {
    pub subnet: Ipv4Net,
    pub public_ip: Ipv4Addr,
    /// The peer's VTEP MAC (VXLAN only; zero for IPIP).
    pub vtep_mac: MacAddr,
    /// Underlay destination, ready for `sendmmsg` (port 0 for IPIP).
    pub sockaddr: libc::sockaddr_in,
}

/// A snapshot of the overlay peers, indexed for the two hot-path lookups.
#[derive(Debug, Clone)]
pub struct PeerTable {
    /// All leases of the cluster have this prefix length (flannel's `SubnetLen`), so a
    /// destination's subnet is found with one mask and one hash lookup.
    subnet_len: u8,
    /// Transmit: peer subnet (network address) → how to reach it. Holds only peers
    /// reached through the tunnel (not DirectRouting ones, not other backends).
    by_subnet: HashMap<u32, PeerEntry>,
    /// Receive: PublicIP → that lease's subnet; every overlay peer whose encapsulated
    /// packets we accept.
    by_public_ip: HashMap<u32, Ipv4Net>,
}

impl PeerTable {
    pub fn empty(subnet_len: u8) -> PeerTable {
        PeerTable {
            subnet_len,
            by_subnet: HashMap::new(),
            by_public_ip: HashMap::new(),
        }
    }

    /// Builds the table from the current peers: those whose backend matches ours are
    /// accepted on receive; of those, the ones in `tunnelled` are sent to.
    pub fn build<'a>(
        subnet_len: u8,
        encap: &Encap,
        peers: impl IntoIterator<Item = (&'a Peer, bool)>,
    ) -> PeerTable {
        let mut table = PeerTable::empty(subnet_len);
        for (peer, tunnelled) in peers {
            let Some(vtep_mac) = compatible(encap, &peer.backend) else {
                continue;
            };
            table
                .by_public_ip
                .insert(u32::from(peer.public_ip), peer.subnet);
            if !tunnelled {
                continue;
            }
            let port = encap.peer_port();
            table.by_subnet.insert(
                u32::from(peer.subnet.network()),
                PeerEntry {
                    subnet: peer.subnet,
                    public_ip: peer.public_ip,
                    vtep_mac,
                    sockaddr: sockaddr_in(peer.public_ip, port),
                },
            );
        }
        table
    }

    /// The peer whose subnet holds `dst`.
    #[inline]
    pub fn route(&self, dst: Ipv4Addr) -> Option<&PeerEntry> {
        let mask = prefix_mask(self.subnet_len);
        let entry = self.by_subnet.get(&(u32::from(dst) & mask))?;
        entry.subnet.contains(&dst).then_some(entry)
    }

    /// The subnet of the lease whose PublicIP is `source`.
    #[inline]
    pub fn subnet_of_public_ip(&self, source: Ipv4Addr) -> Option<Ipv4Net> {
        self.by_public_ip.get(&u32::from(source)).copied()
    }

    /// Number of peers we send to.
    pub fn len(&self) -> usize {
        self.by_subnet.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_subnet.is_empty()
    }
}

/// `Some(peer VTEP MAC)` when the peer speaks our encapsulation (same VNI for VXLAN).
pub fn compatible(encap: &Encap, backend: &PeerBackend) -> Option<MacAddr> {
    encap.peer_mac(backend)
}

fn prefix_mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len.min(32)))
    }
}

/// A `sockaddr_in` for `ip:port`.
pub fn sockaddr_in(ip: Ipv4Addr, port: u16) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vxlan_peer(subnet: &str, ip: &str, vni: u32) -> Peer {
        Peer {
            subnet: subnet.parse().unwrap(),
            public_ip: ip.parse().unwrap(),
            backend: PeerBackend::Vxlan {
                vni,
                vtep_mac: [2, 0, 0, 0, 0, 9],
            },
        }
    }

    const VXLAN: Encap = Encap::Vxlan {
        vni: 1,
        port: 8472,
        local_mac: [2, 0, 0, 0, 0, 1],
    };

    #[test]
    fn routes_by_destination_subnet() {
        let a = vxlan_peer("10.244.2.0/24", "192.0.2.2", 1);
        let b = vxlan_peer("10.244.3.0/24", "192.0.2.3", 1);
        let table = PeerTable::build(24, &VXLAN, [(&a, true), (&b, true)]);
        let entry = table.route("10.244.3.77".parse().unwrap()).unwrap();
        assert_eq!(entry.public_ip, "192.0.2.3".parse::<Ipv4Addr>().unwrap());
        assert_eq!(u16::from_be(entry.sockaddr.sin_port), 8472);
        assert!(table.route("10.244.4.1".parse().unwrap()).is_none());
        assert_eq!(
            table.subnet_of_public_ip("192.0.2.2".parse().unwrap()),
            Some("10.244.2.0/24".parse().unwrap())
        );
    }

    #[test]
    fn incompatible_peers_are_neither_sent_to_nor_accepted() {
        let other_vni = vxlan_peer("10.244.2.0/24", "192.0.2.2", 7);
        let ipip = Peer {
            backend: PeerBackend::Ipip,
            ..vxlan_peer("10.244.3.0/24", "192.0.2.3", 1)
        };
        let table = PeerTable::build(24, &VXLAN, [(&other_vni, true), (&ipip, true)]);
        assert!(table.is_empty());
        assert!(table
            .subnet_of_public_ip("192.0.2.2".parse().unwrap())
            .is_none());
    }

    #[test]
    fn direct_routed_peers_are_accepted_but_not_sent_to() {
        let a = vxlan_peer("10.244.2.0/24", "192.0.2.2", 1);
        let table = PeerTable::build(24, &VXLAN, [(&a, false)]);
        assert!(table.route("10.244.2.5".parse().unwrap()).is_none());
        assert!(table
            .subnet_of_public_ip("192.0.2.2".parse().unwrap())
            .is_some());
    }
}
