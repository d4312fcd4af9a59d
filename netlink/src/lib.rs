//! weft's netlink layer: every request weft makes to the kernel's routing netlink, for
//! weftd, the `weft` CNI plugin and `weftctl trace`. It knows nothing of leases, etcd or
//! CNI: callers pass plain values and get plain values back.
//!
//! ```text
//! lib.rs          Netlink (a socket in one namespace), Error; links and addresses
//! route.rs        Route, ForeignRoute, Change and the reconcile `plan` (pure)
//! route_table.rs  the main table: read weft's and foreign routes, apply changes
//! bridge.rs       ensure_bridge: cni0 as weftd and the CNI plugin both build it
//! veth.rs         veth pairs across namespaces, bridge ports, waiting for carrier
//! netns.rs        a netlink socket inside another network namespace
//! tc.rs           clsact + a direct-action cls_bpf filter (eBPF on kernels without tcx)
//! inspect.rs      read-only views of a namespace (links, routes, neighbours, fdb)
//! ```
//!
//! Every `ensure_*` reads the current state first and changes only what differs, so it
//! can run at start, after a restart and on every reconcile without disturbing a host
//! that is already right; "already exists with the right value" (`EEXIST`) is success,
//! and so is deleting what is already gone. All operations act on the network namespace
//! the [`Netlink`] socket was opened in.

pub mod bridge;
pub mod inspect;
pub mod netns;
pub mod route;
mod route_table;
pub mod tc;
mod veth;

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{IntoRawFd as _, OwnedFd};
use std::os::unix::io::FromRawFd as _;

use futures::TryStreamExt as _;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::sys::TokioSocket;
use rtnetlink::LinkUnspec;

pub use bridge::{bridge_mac, gateway_of, BridgeState};
pub use route::{
    plan, protocol_name, Change, Conflict, ForeignRoute, Plan, Route, WEFT_ROUTE_PROTOCOL,
};
pub use route_table::{describe, route_parts, Applied, RouteFailure, RoutePass};
pub use tc::{BpfFilter, IngressBpf};

/// `ENOENT`/`ESRCH` from the kernel: the object to delete is already gone.
const GONE: [i32; 2] = [libc::ENOENT, libc::ESRCH];

/// Everything that can go wrong in this crate; each variant names what was being done.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("opening a netlink socket: {0}")]
    Connect(#[source] std::io::Error),
    #[error("no network interface named {0:?} in this network namespace")]
    NoSuchLink(String),
    #[error("netlink: {what}: {source}")]
    Request {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("device {bridge} exists but is a {kind}, not a bridge; delete it or choose another bridge name")]
    NotABridge { bridge: String, kind: String },
    #[error("{what} vanished while it was being configured")]
    Vanished { what: String },
    #[error("{what}: {source}")]
    Netns {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("link {index} has an {kind} qdisc where a clsact one is needed; delete it (tc qdisc del dev DEVICE ingress) or use another attachment")]
    QdiscInTheWay { index: u32, kind: String },
    #[error("route {route}: {reason}")]
    InvalidRoute { route: String, reason: &'static str },
}

impl Error {
    /// The kernel's errno (positive) when the kernel refused a request.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Request { source, .. } => netlink_errno(source),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

fn request_error(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> Error {
    let what = what.into();
    move |source| Error::Request { what, source }
}

/// The errno inside a netlink error reply (positive), if it is one.
fn netlink_errno(err: &rtnetlink::Error) -> Option<i32> {
    match err {
        rtnetlink::Error::NetlinkError(msg) => msg.code.map(|c| -c.get()),
        _ => None,
    }
}

/// A network interface as far as weft cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// Carrier (`IFF_LOWER_UP`).
    pub lower_up: bool,
    /// The hardware address (none on TUN and other L3 devices).
    pub mac: Option<[u8; 6]>,
    /// `bridge`, `veth`, `tun`, ... as `ip -d link` names it (`None` for physical
    /// devices and `lo`).
    pub kind: Option<String>,
    /// Index of the bridge this link is a port of.
    pub master: Option<u32>,
    /// Transmit errors and drops as the kernel counts them for the device.
    pub tx_errors: u64,
    pub tx_dropped: u64,
}

impl Link {
    fn from_message(message: &LinkMessage) -> Link {
        let mut link = Link {
            index: message.header.index,
            name: String::new(),
            mtu: 0,
            up: message.header.flags.contains(LinkFlags::Up),
            lower_up: message.header.flags.contains(LinkFlags::LowerUp),
            mac: None,
            kind: None,
            master: None,
            tx_errors: 0,
            tx_dropped: 0,
        };
        for attribute in &message.attributes {
            match attribute {
                LinkAttribute::IfName(name) => link.name.clone_from(name),
                LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
                LinkAttribute::Address(bytes) => link.mac = bytes.as_slice().try_into().ok(),
                LinkAttribute::Controller(master) => link.master = Some(*master),
                LinkAttribute::LinkInfo(infos) => {
                    link.kind = infos.iter().find_map(|info| match info {
                        LinkInfo::Kind(kind) => Some(kind_name(kind)),
                        _ => None,
                    });
                }
                LinkAttribute::Stats64(stats) => {
                    link.tx_errors = stats.tx_errors;
                    link.tx_dropped = stats.tx_dropped;
                }
                _ => {}
            }
        }
        link
    }

    /// The MAC as `0a:58:0a:f4:01:01`, or `""` for a device without one.
    pub fn mac_string(&self) -> String {
        self.mac.map(|mac| mac_string(&mac)).unwrap_or_default()
    }
}

/// Six bytes as `0a:58:0a:f4:01:01`.
pub fn mac_string(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
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

/// A route-netlink connection in one network namespace.
#[derive(Debug, Clone)]
pub struct Netlink {
    handle: rtnetlink::Handle,
}

impl Netlink {
    /// Opens a socket in the current network namespace and spawns its I/O task on the
    /// current tokio runtime.
    pub fn connect() -> Result<Netlink> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(Error::Connect)?;
        tokio::spawn(connection);
        Ok(Netlink { handle })
    }

    /// Takes over a NETLINK_ROUTE socket (e.g. one [`netns::socket_in`] opened in another
    /// namespace, where it stays for life) and spawns its I/O task on the current tokio
    /// runtime.
    pub fn from_socket(fd: OwnedFd) -> Netlink {
        let raw = fd.into_raw_fd();
        // SAFETY: `raw` comes from `into_raw_fd` of an OwnedFd we own, so it is an open
        // socket that nothing else will close; TokioSocket takes over its ownership.
        let socket = unsafe { TokioSocket::from_raw_fd(raw) };
        let (connection, handle, _) = rtnetlink::from_socket(socket);
        tokio::spawn(connection);
        Netlink { handle }
    }

    /// The link called `name`, or `None`.
    pub async fn link(&self, name: &str) -> Result<Option<Link>> {
        Ok(self
            .link_message(name)
            .await?
            .as_ref()
            .map(Link::from_message))
    }

    /// The link with index `index`, or `None`.
    pub async fn link_by_index(&self, index: u32) -> Result<Option<Link>> {
        let mut links = self.handle.link().get().match_index(index).execute();
        match links.try_next().await {
            Ok(link) => Ok(link.as_ref().map(Link::from_message)),
            Err(e) if netlink_errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(request_error(format!("looking up link {index}"))(e)),
        }
    }

    /// Every link of the namespace.
    pub async fn links(&self) -> Result<Vec<Link>> {
        let messages: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(request_error("listing links"))?;
        Ok(messages.iter().map(Link::from_message).collect())
    }

    async fn link_message(&self, name: &str) -> Result<Option<LinkMessage>> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match links.try_next().await {
            Ok(link) => Ok(link),
            Err(e) if netlink_errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(request_error(format!("looking up link {name}"))(e)),
        }
    }

    /// The link called `name`; an error naming it when missing.
    pub async fn require_link(&self, name: &str) -> Result<Link> {
        self.link(name)
            .await?
            .ok_or_else(|| Error::NoSuchLink(name.to_owned()))
    }

    /// Sets `name` up with MTU `mtu` (when given); no request when it already is.
    pub async fn ensure_link_up(&self, name: &str, mtu: Option<u32>) -> Result<Link> {
        let link = self.require_link(name).await?;
        let mtu_wrong = mtu.is_some_and(|m| m != link.mtu);
        if link.up && !mtu_wrong {
            return Ok(link);
        }
        let mut message = LinkUnspec::new_with_index(link.index).up();
        if let Some(mtu) = mtu {
            message = message.mtu(mtu);
        }
        self.handle
            .link()
            .set(message.build())
            .execute()
            .await
            .map_err(request_error(format!("setting {name} up (mtu {mtu:?})")))?;
        self.require_link(name).await
    }

    /// Deletes the link with index `index`; success when it is already gone.
    pub async fn delete_link(&self, index: u32) -> Result<()> {
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(()),
            Err(e) if netlink_errno(&e) == Some(libc::ENODEV) => Ok(()),
            Err(e) => Err(request_error(format!("deleting link {index}"))(e)),
        }
    }

    /// Deletes the link called `name`; `false` when there was none (or it went away
    /// meanwhile).
    pub async fn delete_link_named(&self, name: &str) -> Result<bool> {
        let Some(link) = self.link_message(name).await? else {
            return Ok(false);
        };
        match self.handle.link().del(link.header.index).execute().await {
            Ok(()) => Ok(true),
            Err(e) if netlink_errno(&e) == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(request_error(format!("deleting link {name}"))(e)),
        }
    }

    /// The IPv4 addresses on link `index`.
    pub async fn addresses(&self, index: u32) -> Result<Vec<Ipv4Net>> {
        Ok(self
            .address_messages(index)
            .await?
            .into_iter()
            .map(|(address, _)| address)
            .collect())
    }

    /// IPv4 addresses (with prefix) configured on the link with this index.
    async fn address_messages(&self, index: u32) -> Result<Vec<(Ipv4Net, AddressMessage)>> {
        let mut out = Vec::new();
        let mut messages = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        while let Some(message) = messages
            .try_next()
            .await
            .map_err(request_error(format!("listing addresses of link {index}")))?
        {
            if message.header.family != AddressFamily::Inet || message.header.index != index {
                continue;
            }
            if let Some(net) = address_of(&message) {
                out.push((net, message));
            }
        }
        Ok(out)
    }

    /// Adds `address` to link `index`: `true` when added, `false` when it was already
    /// there (someone else added it meanwhile).
    pub async fn add_address(&self, index: u32, address: Ipv4Net) -> Result<bool> {
        match self
            .handle
            .address()
            .add(index, IpAddr::V4(address.addr()), address.prefix_len())
            .execute()
            .await
        {
            Ok(()) => Ok(true),
            Err(e) if netlink_errno(&e) == Some(libc::EEXIST) => Ok(false),
            Err(e) => Err(request_error(format!("adding {address} to link {index}"))(
                e,
            )),
        }
    }

    /// Removes the addresses of link `index` other than `keep` (stale ones from an
    /// earlier lease, flannel #1850); returns what it removed. Whether `keep` is
    /// there is the second value.
    async fn remove_other_addresses(
        &self,
        index: u32,
        keep: Ipv4Net,
    ) -> Result<(Vec<Ipv4Net>, bool)> {
        let mut removed = Vec::new();
        let mut present = false;
        for (existing, message) in self.address_messages(index).await? {
            if existing == keep {
                present = true;
                continue;
            }
            tracing::info!(link = index, %existing, wanted = %keep, "removing stale address");
            match self.handle.address().del(message).execute().await {
                Ok(()) => removed.push(existing),
                Err(e) if netlink_errno(&e) == Some(libc::EADDRNOTAVAIL) => {}
                Err(e) => {
                    return Err(request_error(format!(
                        "removing stale address {existing} from link {index}"
                    ))(e))
                }
            }
        }
        Ok((removed, present))
    }

    /// Makes `address` the only IPv4 address of link `index`: adds it if missing and
    /// removes any other IPv4 address (a stale one from an earlier lease, flannel #1850).
    pub async fn ensure_address(&self, index: u32, address: Ipv4Net) -> Result<()> {
        let (_, present) = self.remove_other_addresses(index, address).await?;
        if present {
            return Ok(());
        }
        self.add_address(index, address).await.map(drop)
    }
}

/// The IPv4 address of an address message, with its prefix length.
fn address_of(message: &AddressMessage) -> Option<Ipv4Net> {
    // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer address on
    // point-to-point links and equal to IFA_LOCAL elsewhere.
    let mut local = None;
    let mut address = None;
    for attribute in &message.attributes {
        match attribute {
            AddressAttribute::Local(IpAddr::V4(a)) => local = Some(*a),
            AddressAttribute::Address(IpAddr::V4(a)) => address = Some(*a),
            _ => {}
        }
    }
    Ipv4Net::new(local.or(address)?, message.header.prefix_len).ok()
}

/// The first address after the network address: 10.244.1.0/24 → 10.244.1.1.
fn first_host(net: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.network()).wrapping_add(1))
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroI32;

    use rtnetlink::packet_core::ErrorMessage;

    use super::*;

    #[test]
    fn a_link_message_reads_as_a_link() {
        let mut message = LinkMessage::default();
        message.header.index = 7;
        message.header.flags = LinkFlags::Up | LinkFlags::LowerUp;
        message.attributes = vec![
            LinkAttribute::IfName("wf0123456789ab".into()),
            LinkAttribute::Mtu(1450),
            LinkAttribute::Address(vec![0x0a, 0x58, 10, 244, 1, 1]),
            LinkAttribute::Controller(3),
            LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Veth)]),
        ];
        let link = Link::from_message(&message);
        assert_eq!(
            link,
            Link {
                index: 7,
                name: "wf0123456789ab".into(),
                mtu: 1450,
                up: true,
                lower_up: true,
                mac: Some([0x0a, 0x58, 10, 244, 1, 1]),
                kind: Some("veth".into()),
                master: Some(3),
                tx_errors: 0,
                tx_dropped: 0,
            }
        );
        assert_eq!(link.mac_string(), "0a:58:0a:f4:01:01");

        // A TUN device: no hardware address, down, no carrier, a port of nothing.
        let mut message = LinkMessage::default();
        message.attributes = vec![
            LinkAttribute::IfName("weft.1".into()),
            LinkAttribute::Address(Vec::new()),
        ];
        let link = Link::from_message(&message);
        assert_eq!(
            (link.up, link.lower_up, link.mac, link.master),
            (false, false, None, None)
        );
        assert_eq!(link.mac_string(), "");
    }

    #[test]
    fn the_kernels_errno_is_kept_for_callers() {
        let mut reply = ErrorMessage::default();
        reply.code = NonZeroI32::new(-libc::EEXIST);
        let error = request_error("creating veth eth0/wf0")(rtnetlink::Error::NetlinkError(reply));
        assert_eq!(error.errno(), Some(libc::EEXIST));
        assert!(
            error
                .to_string()
                .starts_with("netlink: creating veth eth0/wf0: "),
            "{error}"
        );
        assert_eq!(Error::NoSuchLink("cni0".into()).errno(), None);
    }
}
