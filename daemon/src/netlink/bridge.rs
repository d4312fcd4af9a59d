//! `ensure_bridge`: the node's pod bridge (`cni0`) with the gateway address, shared by
//! weftd and the `weft` CNI plugin so both build exactly the same device.
//!
//! Idempotent (STYLE §4): read the current state, change only what differs. Safe to run
//! concurrently from several processes (parallel CNI ADDs, weftd at start): a lost race
//! to create the bridge or add the address ("already exists") counts as success.

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::address::AddressMessage;
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, LinkBridge, LinkUnspec};

/// Errors of the bridge operations; each names the device and what failed.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error("netlink: {what} on bridge {bridge}: {source}")]
    Netlink {
        bridge: String,
        what: &'static str,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("device {bridge} exists but is a {kind}, not a bridge; delete it or choose another bridge name")]
    NotABridge { bridge: String, kind: String },
    #[error("bridge {bridge} vanished while it was being configured")]
    Vanished { bridge: String },
}

/// What `ensure_bridge` found and did, for logs and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeState {
    pub index: u32,
    /// The bridge's MAC address.
    pub mac: Vec<u8>,
    pub created: bool,
    pub mtu_changed: bool,
    pub brought_up: bool,
    /// Stale IPv4 addresses removed (e.g. from an earlier subnet lease).
    pub removed_addresses: Vec<Ipv4Net>,
    pub added_address: bool,
}

/// The errno inside a netlink error reply (positive), if it is one.
pub fn netlink_errno(err: &rtnetlink::Error) -> Option<i32> {
    match err {
        rtnetlink::Error::NetlinkError(msg) => msg.code.map(|c| -c.get()),
        _ => None,
    }
}

/// Look a link up by name; `Ok(None)` when it does not exist.
pub async fn link_by_name(
    handle: &Handle,
    name: &str,
) -> Result<Option<LinkMessage>, rtnetlink::Error> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(link) => Ok(link),
        Err(e) if netlink_errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The `kind` of a link (`bridge`, `veth`, …) from its IFLA_LINKINFO, if any.
pub fn link_kind(link: &LinkMessage) -> Option<String> {
    link.attributes.iter().find_map(|attr| match attr {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|info| match info {
            LinkInfo::Kind(kind) => Some(kind_name(kind)),
            _ => None,
        }),
        _ => None,
    })
}

/// A link kind as `ip -d link` names it (`bridge`, `veth`, `vxlan`, …).
pub fn kind_name(kind: &InfoKind) -> String {
    match kind {
        InfoKind::Bridge => "bridge".into(),
        InfoKind::Veth => "veth".into(),
        InfoKind::Tun => "tun".into(),
        InfoKind::Vxlan => "vxlan".into(),
        InfoKind::Dummy => "dummy".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// The MTU attribute of a link.
pub fn link_mtu(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|attr| match attr {
        LinkAttribute::Mtu(mtu) => Some(*mtu),
        _ => None,
    })
}

/// IPv4 addresses (with prefix) configured on the link with this index.
pub async fn ipv4_addresses(
    handle: &Handle,
    index: u32,
) -> Result<Vec<(Ipv4Net, AddressMessage)>, rtnetlink::Error> {
    let mut out = Vec::new();
    let mut addrs = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute();
    while let Some(msg) = addrs.try_next().await? {
        if msg.header.family != AddressFamily::Inet || msg.header.index != index {
            continue;
        }
        if let Some(net) = super::address_of(&msg) {
            out.push((net, msg));
        }
    }
    Ok(out)
}

/// Make sure bridge `name` exists, has `mtu`, is up and carries exactly `gateway`
/// (e.g. 10.244.1.1/24) as its IPv4 address. Stale IPv4 addresses (an earlier subnet)
/// are replaced; a correct bridge is left untouched.
pub async fn ensure_bridge(
    handle: &Handle,
    name: &str,
    gateway: Ipv4Net,
    mtu: u32,
) -> Result<BridgeState, BridgeError> {
    let nl = |what: &'static str| {
        let bridge = name.to_string();
        move |source| BridgeError::Netlink {
            bridge,
            what,
            source,
        }
    };

    let mut created = false;
    let link = match link_by_name(handle, name).await.map_err(nl("get link"))? {
        Some(link) => link,
        None => {
            // A fixed MAC keeps the bridge from taking over the lowest port MAC, which
            // changes whenever pods come and go and breaks the pods' ARP caches.
            let msg = LinkBridge::new(name)
                .mtu(mtu)
                .address(bridge_mac(gateway.addr()).to_vec())
                .build();
            match handle.link().add(msg).execute().await {
                Ok(()) => created = true,
                // Another ADD (or weftd) created it between our lookup and our create.
                Err(e) if netlink_errno(&e) == Some(libc::EEXIST) => {}
                Err(e) => return Err(nl("create")(e)),
            }
            link_by_name(handle, name)
                .await
                .map_err(nl("get link"))?
                .ok_or_else(|| BridgeError::Vanished {
                    bridge: name.to_string(),
                })?
        }
    };
    match link_kind(&link) {
        Some(kind) if kind == "bridge" => {}
        other => {
            return Err(BridgeError::NotABridge {
                bridge: name.to_string(),
                kind: other.unwrap_or_else(|| "device of unknown kind".to_string()),
            })
        }
    }
    let index = link.header.index;
    let mac = link
        .attributes
        .iter()
        .find_map(|attr| match attr {
            LinkAttribute::Address(mac) => Some(mac.clone()),
            _ => None,
        })
        .unwrap_or_default();

    let mtu_changed = link_mtu(&link) != Some(mtu);
    let brought_up = !link.header.flags.contains(LinkFlags::Up);
    if mtu_changed || brought_up {
        let msg = LinkUnspec::new_with_index(index).mtu(mtu).up().build();
        handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(nl("set mtu/up"))?;
    }

    let mut removed_addresses = Vec::new();
    let mut has_gateway = false;
    for (net, msg) in ipv4_addresses(handle, index)
        .await
        .map_err(nl("list addresses"))?
    {
        if net == gateway {
            has_gateway = true;
            continue;
        }
        match handle.address().del(msg).execute().await {
            Ok(()) => removed_addresses.push(net),
            Err(e) if netlink_errno(&e) == Some(libc::EADDRNOTAVAIL) => {}
            Err(e) => return Err(nl("remove stale address")(e)),
        }
    }
    let mut added_address = false;
    if !has_gateway {
        match handle
            .address()
            .add(index, IpAddr::V4(gateway.addr()), gateway.prefix_len())
            .execute()
            .await
        {
            Ok(()) => added_address = true,
            Err(e) if netlink_errno(&e) == Some(libc::EEXIST) => {}
            Err(e) => return Err(nl("add gateway address")(e)),
        }
    }

    Ok(BridgeState {
        index,
        mac,
        created,
        mtu_changed: mtu_changed && !created,
        brought_up: brought_up && !created,
        removed_addresses,
        added_address,
    })
}

/// The bridge MAC for a gateway address: locally administered `0a:58` + the IPv4
/// address (the scheme OVN-Kubernetes uses), stable across restarts and nodes-unique.
pub fn bridge_mac(gateway: Ipv4Addr) -> [u8; 6] {
    let o = gateway.octets();
    [0x0a, 0x58, o[0], o[1], o[2], o[3]]
}

/// The gateway address this bridge would carry for a pod subnet given as in
/// subnet.env's `FLANNEL_SUBNET` (already `.1/24`) — kept for callers that hold a
/// network address instead: 10.244.1.0/24 → 10.244.1.1/24.
pub fn gateway_of(subnet: Ipv4Net) -> Ipv4Net {
    if subnet.addr() == subnet.network() {
        let gw = Ipv4Addr::from(u32::from(subnet.network()).wrapping_add(1));
        Ipv4Net::new(gw, subnet.prefix_len()).unwrap_or(subnet)
    } else {
        subnet
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_of_network_is_dot_one() {
        let net: Ipv4Net = "10.244.1.0/24".parse().unwrap();
        assert_eq!(gateway_of(net), "10.244.1.1/24".parse::<Ipv4Net>().unwrap());
        let gw: Ipv4Net = "10.244.1.1/24".parse().unwrap();
        assert_eq!(gateway_of(gw), gw);
    }
}
