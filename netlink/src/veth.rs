//! veth pairs across namespaces, bridge ports, and waiting for a link's carrier: what
//! the CNI plugin does to attach a pod.

use std::os::fd::{AsRawFd as _, BorrowedFd};
use std::time::{Duration, Instant};

use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth};
use rtnetlink::{LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVeth};

use crate::{request_error, Link, Netlink, Result};

impl Netlink {
    /// Creates veth `name` in this namespace with its peer `peer_name` placed straight
    /// into the namespace `peer_ns`, both with MTU `mtu`: one request, and this end
    /// never appears in the peer's namespace. `EEXIST` ([`crate::Error::errno`]) when a
    /// device with one of the names exists.
    pub async fn add_veth_pair(
        &self,
        name: &str,
        peer_name: &str,
        peer_ns: BorrowedFd<'_>,
        mtu: u32,
    ) -> Result<()> {
        let peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(peer_name.to_string())
            .mtu(mtu)
            .setns_by_fd(peer_ns.as_raw_fd())
            .build();
        let veth = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(name.to_string())
            .mtu(mtu)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .build();
        self.handle
            .link()
            .add(veth)
            .execute()
            .await
            .map_err(request_error(format!("creating veth {name}/{peer_name}")))
    }

    /// Sets link `index` up.
    pub async fn set_up(&self, index: u32) -> Result<()> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(request_error(format!("setting link {index} up")))
    }

    /// Makes link `index` a port of bridge `bridge_index` and sets it up.
    pub async fn attach_to_bridge(&self, index: u32, bridge_index: u32) -> Result<()> {
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(index)
                    .controller(bridge_index)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(request_error(format!(
                "attaching link {index} to bridge {bridge_index}"
            )))
    }

    /// Turns hairpin mode on for bridge port `index` (a pod reaching itself through a
    /// service address).
    pub async fn set_hairpin(&self, index: u32) -> Result<()> {
        self.handle
            .link()
            .set_port(LinkBridgePort::new(index).hairpin(true).build())
            .execute()
            .await
            .map_err(request_error(format!("hairpin mode on link {index}")))
    }

    /// Waits until link `index` is administratively up and has carrier; `Ok(None)` when
    /// it is not by `deadline` (or is gone).
    pub async fn wait_running(&self, index: u32, deadline: Duration) -> Result<Option<Link>> {
        let until = Instant::now() + deadline;
        loop {
            if let Some(link) = self.link_by_index(index).await? {
                if link.up && link.lower_up {
                    return Ok(Some(link));
                }
            }
            if Instant::now() >= until {
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}
