//! The narrow interface between the control plane (`subnet`, which talks to the subnet
//! store) and the data plane (`dataplane`, which owns devices, routes and sockets).
//! Neither side sees the other's internals: the subnet manager produces a
//! [`LocalLease`] and a stream of [`LeaseEvent`]s about [`PeerLease`]s, whose addresses
//! may be of either family; at the boundary they become the data plane's [`PeerEvent`]s
//! about IPv4 [`Peer`]s ([`PeerEvent::from_lease_event`]), a peer the data plane cannot
//! carry being refused with a log line rather than a panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net};
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
/// backend's encapsulation overhead (the net-conf's rule, [`NetConf::overlay_mtu`]).
/// weftd computes it once, puts it in [`LocalLease::mtu`] and in subnet.env.
pub fn overlay_mtu(underlay_iface_mtu: u32, netconf: &NetConf) -> u32 {
    netconf.overlay_mtu(underlay_iface_mtu)
}

/// The net-conf's `Backend.MTU` does not fit the underlay interface.
#[derive(Debug, thiserror::Error)]
#[error(
    "the net-conf's Backend.MTU {configured} is larger than the MTU {iface_mtu} of the underlay \
     interface {iface}: encapsulated packets would not fit on it; set Backend.MTU to at most \
     {iface_mtu} or leave it out (then {iface}'s MTU is used)"
)]
pub struct MtuTooLarge {
    pub configured: u32,
    pub iface: String,
    pub iface_mtu: u32,
}

/// [`overlay_mtu`], refusing a `Backend.MTU` larger than the underlay interface's MTU
/// (the outer packets would be cut into fragments, or dropped, on every full-sized
/// packet; a smaller one is what the setting is for: a narrower path beyond the link).
pub fn checked_overlay_mtu(
    underlay_iface: &str,
    underlay_iface_mtu: u32,
    netconf: &NetConf,
) -> Result<u32, MtuTooLarge> {
    match netconf.underlay_mtu {
        Some(configured) if configured > underlay_iface_mtu => Err(MtuTooLarge {
            configured,
            iface: underlay_iface.to_owned(),
            iface_mtu: underlay_iface_mtu,
        }),
        _ => Ok(overlay_mtu(underlay_iface_mtu, netconf)),
    }
}

/// How a peer wants to be reached, from its lease's `BackendType`/`BackendData`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerBackend {
    Vxlan {
        vni: u32,
        vtep_mac: MacAddr,
    },
    Ipip,
    /// flannel's `host-gw`: no BackendData, reached by a plain route via its PublicIP.
    HostGw,
    /// A backend weft does not speak (e.g. flannel's `udp`, `wireguard`); kept so it can
    /// be reported, never routed.
    Other(String),
}

/// Another node of the cluster as its lease says, in either address family: what the
/// control plane keeps, reports and saves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerLease {
    pub subnet: IpNet,
    pub public_ip: IpAddr,
    /// flannel's `PublicIPv6`, kept as the record has it.
    pub public_ipv6: Option<Ipv6Addr>,
    pub backend: PeerBackend,
}

/// What the control plane knows changed among the peers. Events are applied in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseEvent {
    /// A peer appeared or its lease changed (same subnet key).
    Upsert(PeerLease),
    /// The lease of this subnet is gone.
    Removed(IpNet),
    /// The complete current set of peers (after the initial list, and after every
    /// re-list following a watch disconnect or compaction). Peers not in it are gone.
    Snapshot(Vec<PeerLease>),
}

/// Another node of the cluster, as the data plane (IPv4 for now) routes to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub subnet: Ipv4Net,
    pub public_ip: Ipv4Addr,
    pub backend: PeerBackend,
}

/// What the data plane is told about its peers. Events are applied in order.
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

/// A lease record could not be turned into a [`Peer`].
#[derive(Debug, thiserror::Error)]
#[error("lease of {subnet}: {source}")]
pub struct PeerRecordError {
    pub subnet: IpNet,
    #[source]
    pub source: weft_proto::lease::LeaseError,
}

impl PeerLease {
    /// The peer described by a lease record (flannel's schema) for `subnet`.
    pub fn from_record(
        subnet: impl Into<IpNet>,
        attrs: &weft_proto::lease::LeaseAttrs,
    ) -> Result<PeerLease, PeerRecordError> {
        let subnet = subnet.into();
        let backend = match attrs.backend_type.as_str() {
            "vxlan" => {
                let data = attrs
                    .vxlan_data()
                    .map_err(|source| PeerRecordError { subnet, source })?;
                PeerBackend::Vxlan {
                    vni: data.vni,
                    vtep_mac: data.vtep_mac.0,
                }
            }
            "ipip" => PeerBackend::Ipip,
            "host-gw" => PeerBackend::HostGw,
            other => PeerBackend::Other(other.to_owned()),
        };
        Ok(PeerLease {
            subnet,
            public_ip: IpAddr::V4(attrs.public_ip),
            public_ipv6: attrs.public_ipv6,
            backend,
        })
    }
}

/// A peer the data plane cannot carry yet: its subnet or PublicIP is not IPv4.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "peer {subnet} with PublicIP {public_ip} is not IPv4; the data plane carries IPv4 only, \
     so this peer is not routed"
)]
pub struct NotIpv4 {
    pub subnet: IpNet,
    pub public_ip: IpAddr,
}

impl TryFrom<&PeerLease> for Peer {
    type Error = NotIpv4;

    fn try_from(lease: &PeerLease) -> Result<Peer, NotIpv4> {
        match (lease.subnet, lease.public_ip) {
            (IpNet::V4(subnet), IpAddr::V4(public_ip)) => Ok(Peer {
                subnet,
                public_ip,
                backend: lease.backend.clone(),
            }),
            (subnet, public_ip) => Err(NotIpv4 { subnet, public_ip }),
        }
    }
}

impl From<&Peer> for PeerLease {
    fn from(peer: &Peer) -> Self {
        PeerLease {
            subnet: IpNet::V4(peer.subnet),
            public_ip: IpAddr::V4(peer.public_ip),
            public_ipv6: None,
            backend: peer.backend.clone(),
        }
    }
}

impl Peer {
    /// The IPv4 peer described by a lease record for `subnet`.
    pub fn from_record(
        subnet: Ipv4Net,
        attrs: &weft_proto::lease::LeaseAttrs,
    ) -> Result<Peer, PeerRecordError> {
        let lease = PeerLease::from_record(subnet, attrs)?;
        Ok(Peer {
            subnet,
            public_ip: attrs.public_ip,
            backend: lease.backend,
        })
    }
}

impl PeerEvent {
    /// The data plane's view of a control-plane event: peers that are not IPv4 are
    /// left out, each with a warning (`None` when nothing is left to tell).
    pub fn from_lease_event(event: &LeaseEvent) -> Option<PeerEvent> {
        let ipv4 = |lease: &PeerLease| match Peer::try_from(lease) {
            Ok(peer) => Some(peer),
            Err(refused) => {
                tracing::warn!(subnet = %refused.subnet, public_ip = %refused.public_ip, "{refused}");
                None
            }
        };
        match event {
            LeaseEvent::Upsert(lease) => ipv4(lease).map(PeerEvent::Upsert),
            LeaseEvent::Removed(IpNet::V4(subnet)) => Some(PeerEvent::Removed(*subnet)),
            // Never handed over, so nothing to remove.
            LeaseEvent::Removed(IpNet::V6(_)) => None,
            LeaseEvent::Snapshot(all) => {
                Some(PeerEvent::Snapshot(all.iter().filter_map(ipv4).collect()))
            }
        }
    }
}

impl LocalLease {
    /// This node's lease record, exactly as flanneld with the same backend writes it.
    pub fn record(&self) -> weft_proto::lease::LeaseAttrs {
        lease_record(&self.netconf.backend, self.public_ip, self.vtep_mac)
    }
}

/// The lease record of a node with `backend`, `public_ip` and `vtep_mac`.
pub fn lease_record(
    backend: &weft_config::Backend,
    public_ip: Ipv4Addr,
    vtep_mac: MacAddr,
) -> weft_proto::lease::LeaseAttrs {
    use weft_proto::lease::LeaseAttrs;
    match backend {
        weft_config::Backend::Vxlan { vni, .. } => {
            LeaseAttrs::vxlan(public_ip, *vni, weft_proto::lease::MacAddr(vtep_mac))
        }
        weft_config::Backend::Ipip { .. } => LeaseAttrs::ipip(public_ip),
        // flannel's host-gw writes no BackendData, like ipip.
        weft_config::Backend::HostGw => LeaseAttrs {
            backend_type: "host-gw".to_owned(),
            ..LeaseAttrs::ipip(public_ip)
        },
    }
}

#[cfg(test)]
mod tests {
    use weft_proto::lease::LeaseAttrs;

    use super::*;

    #[test]
    fn flannel_vxlan_record_becomes_vxlan_peer() {
        let json = br#"{"PublicIP":"192.0.2.7","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"f6:3e:1a:9b:0c:d2"}}"#;
        let attrs = LeaseAttrs::from_json(json).unwrap();
        let subnet: Ipv4Net = "10.244.7.0/24".parse().unwrap();
        let peer = Peer::from_record(subnet, &attrs).unwrap();
        assert_eq!(
            peer,
            Peer {
                subnet,
                public_ip: Ipv4Addr::new(192, 0, 2, 7),
                backend: PeerBackend::Vxlan {
                    vni: 1,
                    vtep_mac: [0xf6, 0x3e, 0x1a, 0x9b, 0x0c, 0xd2]
                },
            }
        );
    }

    #[test]
    fn other_backends_are_kept_but_marked() {
        let attrs =
            LeaseAttrs::from_json(br#"{"PublicIP":"192.0.2.8","BackendType":"udp"}"#).unwrap();
        let peer = Peer::from_record("10.244.8.0/24".parse().unwrap(), &attrs).unwrap();
        assert_eq!(peer.backend, PeerBackend::Other("udp".into()));
        let attrs = LeaseAttrs::ipip(Ipv4Addr::new(192, 0, 2, 9));
        let peer = Peer::from_record("10.244.9.0/24".parse().unwrap(), &attrs).unwrap();
        assert_eq!(peer.backend, PeerBackend::Ipip);
    }

    /// flannel's host-gw writes `{"PublicIP":..,"BackendType":"host-gw"}` (BackendData
    /// omitted; `null` from older versions means the same).
    #[test]
    fn host_gw_records_as_flannel_writes_them() {
        let subnet: Ipv4Net = "10.244.8.0/24".parse().unwrap();
        for json in [
            &br#"{"PublicIP":"192.0.2.8","BackendType":"host-gw"}"#[..],
            br#"{"PublicIP":"192.0.2.8","PublicIPv6":null,"BackendType":"host-gw","BackendData":null}"#,
        ] {
            let attrs = LeaseAttrs::from_json(json).unwrap();
            let peer = Peer::from_record(subnet, &attrs).unwrap();
            assert_eq!(peer.backend, PeerBackend::HostGw);
            assert_eq!(peer.public_ip, Ipv4Addr::new(192, 0, 2, 8));
        }
        let ours = lease_record(
            &weft_config::Backend::HostGw,
            Ipv4Addr::new(192, 0, 2, 8),
            [2; 6],
        );
        assert_eq!(
            ours.to_json(),
            r#"{"PublicIP":"192.0.2.8","PublicIPv6":null,"BackendType":"host-gw"}"#
        );
        assert_eq!(
            Peer::from_record(subnet, &ours).unwrap().backend,
            PeerBackend::HostGw
        );
    }

    #[test]
    fn vxlan_record_without_mac_is_an_error_naming_the_subnet() {
        let attrs = LeaseAttrs::from_json(
            br#"{"PublicIP":"192.0.2.8","BackendType":"vxlan","BackendData":{"VNI":1}}"#,
        )
        .unwrap();
        let err = Peer::from_record("10.244.8.0/24".parse().unwrap(), &attrs).unwrap_err();
        assert!(err.to_string().contains("10.244.8.0/24"), "{err}");
    }

    #[test]
    fn public_ipv6_is_kept_and_a_v6_peer_is_refused_at_the_data_plane_boundary() {
        let json = br#"{"PublicIP":"192.0.2.7","PublicIPv6":"2001:db8::7","BackendType":"ipip"}"#;
        let attrs = LeaseAttrs::from_json(json).unwrap();
        let subnet: Ipv4Net = "10.244.7.0/24".parse().unwrap();
        let lease = PeerLease::from_record(subnet, &attrs).unwrap();
        assert_eq!(lease.public_ipv6, Some("2001:db8::7".parse().unwrap()));
        assert_eq!(lease.subnet, IpNet::V4(subnet));
        let peer = Peer::try_from(&lease).unwrap();
        assert_eq!(peer.public_ip, Ipv4Addr::new(192, 0, 2, 7));
        assert_eq!(
            PeerEvent::from_lease_event(&LeaseEvent::Upsert(lease.clone())),
            Some(PeerEvent::Upsert(peer.clone()))
        );

        let v6 = PeerLease {
            subnet: "fd00:1::/64".parse().unwrap(),
            public_ip: "2001:db8::8".parse().unwrap(),
            public_ipv6: None,
            backend: PeerBackend::Ipip,
        };
        let refused = Peer::try_from(&v6).unwrap_err();
        assert!(refused.to_string().contains("fd00:1::/64"), "{refused}");
        assert_eq!(
            PeerEvent::from_lease_event(&LeaseEvent::Upsert(v6.clone())),
            None
        );
        assert_eq!(
            PeerEvent::from_lease_event(&LeaseEvent::Removed(v6.subnet)),
            None
        );
        assert_eq!(
            PeerEvent::from_lease_event(&LeaseEvent::Snapshot(vec![v6, lease])),
            Some(PeerEvent::Snapshot(vec![peer])),
            "the IPv4 peers of a snapshot still get through"
        );
    }

    #[test]
    fn a_backend_mtu_beyond_the_underlay_is_refused_naming_both() {
        let netconf =
            NetConf::parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","MTU":1400}}"#)
                .unwrap();
        assert_eq!(checked_overlay_mtu("ul0", 1500, &netconf).unwrap(), 1350);
        assert_eq!(checked_overlay_mtu("ul0", 1400, &netconf).unwrap(), 1350);
        let err = checked_overlay_mtu("ul0", 1300, &netconf)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("Backend.MTU 1400") && err.contains("MTU 1300") && err.contains("ul0"),
            "{err}"
        );
    }

    #[test]
    fn overlay_mtu_subtracts_backend_overhead() {
        let vxlan = NetConf::parse(r#"{"Network":"10.244.0.0/16"}"#).unwrap();
        assert_eq!(overlay_mtu(1500, &vxlan), 1450);
        let ipip =
            NetConf::parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"ipip"}}"#).unwrap();
        assert_eq!(overlay_mtu(1500, &ipip), 1480);
        let host_gw =
            NetConf::parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}"#).unwrap();
        assert_eq!(overlay_mtu(1500, &host_gw), 1500);
    }
}
