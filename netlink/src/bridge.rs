//! `ensure_bridge`: the node's pod bridge (`cni0`) with the gateway address, shared by
//! weftd and the `weft` CNI plugin so both build exactly the same device.
//!
//! Idempotent: read the current state, change only what differs. Safe to run
//! concurrently from several processes (parallel CNI ADDs, weftd at start): a lost race
//! to create the bridge or add the address ("already exists") counts as success.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use rtnetlink::{LinkBridge, LinkUnspec};

use crate::{first_host, netlink_errno, request_error, Error, Netlink, Result};

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

impl Netlink {
    /// Make sure bridge `name` exists, has `mtu`, is up and carries exactly `gateway`
    /// (e.g. 10.244.1.1/24) as its IPv4 address. Stale IPv4 addresses (an earlier
    /// subnet) are replaced; a correct bridge is left untouched.
    pub async fn ensure_bridge(
        &self,
        name: &str,
        gateway: Ipv4Net,
        mtu: u32,
    ) -> Result<BridgeState> {
        let on_bridge = |what: &str| format!("{what} on bridge {name}");
        let mut created = false;
        let link = match self.link(name).await? {
            Some(link) => link,
            None => {
                // A fixed MAC keeps the bridge from taking over the lowest port MAC,
                // which changes whenever pods come and go and breaks the pods' ARP
                // caches.
                let message = LinkBridge::new(name)
                    .mtu(mtu)
                    .address(bridge_mac(gateway.addr()).to_vec())
                    .build();
                match self.handle.link().add(message).execute().await {
                    Ok(()) => created = true,
                    // Another ADD (or weftd) created it between our lookup and our
                    // create.
                    Err(e) if netlink_errno(&e) == Some(libc::EEXIST) => {}
                    Err(e) => return Err(request_error(on_bridge("create"))(e)),
                }
                self.link(name).await?.ok_or_else(|| Error::Vanished {
                    what: format!("bridge {name}"),
                })?
            }
        };
        if link.kind.as_deref() != Some("bridge") {
            return Err(Error::NotABridge {
                bridge: name.to_string(),
                kind: link
                    .kind
                    .unwrap_or_else(|| "device of unknown kind".to_string()),
            });
        }
        let index = link.index;
        let mac = link.mac.map(|mac| mac.to_vec()).unwrap_or_default();

        let mtu_changed = link.mtu != mtu;
        let brought_up = !link.up;
        if mtu_changed || brought_up {
            let message = LinkUnspec::new_with_index(index).mtu(mtu).up().build();
            self.handle
                .link()
                .set(message)
                .execute()
                .await
                .map_err(request_error(on_bridge("set mtu/up")))?;
        }

        let (removed_addresses, has_gateway) = self.remove_other_addresses(index, gateway).await?;
        let added_address = !has_gateway && self.add_address(index, gateway).await?;

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
        Ipv4Net::new(first_host(subnet), subnet.prefix_len()).unwrap_or(subnet)
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
