//! Idempotent netlink operations (links, addresses, routes, bridges, veths).
//!
//! Every `ensure_*` reads the current state first and changes only what differs, so it
//! can run at start, after a restart and on every reconcile without disturbing a host
//! that is already right; "already exists with the right value" is success.
//! All operations act on the network namespace the [`Netlink`] socket was opened in.

pub mod bridge;
pub mod route;

use std::net::{IpAddr, Ipv4Addr};

use futures::{StreamExt as _, TryStreamExt};
use ipnet::Ipv4Net;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::{LinkUnspec, RouteMessageBuilder};

use bridge::{ipv4_addresses, link_by_name, netlink_errno};
pub use route::{
    plan, protocol_name, Change, Conflict, ForeignRoute, Plan, Route, WEFT_ROUTE_PROTOCOL,
};

/// `ENOENT`/`ESRCH` from the kernel: the object to delete is already gone.
const GONE: [i32; 2] = [libc::ENOENT, libc::ESRCH];

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
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
}

type Result<T> = std::result::Result<T, NetlinkError>;

fn request_error(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    let what = what.into();
    move |source| NetlinkError::Request { what, source }
}

/// A network interface as far as weft cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    pub up: bool,
    /// The hardware address (none on TUN and other L3 devices).
    pub mac: Option<[u8; 6]>,
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
            mac: None,
            tx_errors: 0,
            tx_dropped: 0,
        };
        for attribute in &message.attributes {
            match attribute {
                LinkAttribute::IfName(name) => link.name.clone_from(name),
                LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
                LinkAttribute::Address(bytes) => link.mac = bytes.as_slice().try_into().ok(),
                LinkAttribute::Stats64(stats) => {
                    link.tx_errors = stats.tx_errors;
                    link.tx_dropped = stats.tx_dropped;
                }
                _ => {}
            }
        }
        link
    }
}

/// A route-netlink connection in the current network namespace.
#[derive(Debug, Clone)]
pub struct Netlink {
    handle: rtnetlink::Handle,
}

impl Netlink {
    /// Opens the socket and spawns its I/O task on the current tokio runtime.
    pub fn connect() -> Result<Netlink> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Connect)?;
        tokio::spawn(connection);
        Ok(Netlink { handle })
    }

    /// The underlying rtnetlink handle (for [`bridge::ensure_bridge`]).
    pub fn handle(&self) -> &rtnetlink::Handle {
        &self.handle
    }

    /// The link called `name`, or `None`.
    pub async fn link(&self, name: &str) -> Result<Option<Link>> {
        match link_by_name(&self.handle, name).await {
            Ok(link) => Ok(link.as_ref().map(Link::from_message)),
            Err(e) => Err(request_error(format!("looking up link {name}"))(e)),
        }
    }

    /// The link called `name`; an error naming it when missing.
    pub async fn require_link(&self, name: &str) -> Result<Link> {
        self.link(name)
            .await?
            .ok_or_else(|| NetlinkError::NoSuchLink(name.to_owned()))
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

    /// The IPv4 addresses on link `index`.
    pub async fn addresses(&self, index: u32) -> Result<Vec<Ipv4Net>> {
        Ok(self
            .address_messages(index)
            .await?
            .into_iter()
            .map(|(address, _)| address)
            .collect())
    }

    async fn address_messages(&self, index: u32) -> Result<Vec<(Ipv4Net, AddressMessage)>> {
        ipv4_addresses(&self.handle, index)
            .await
            .map_err(request_error(format!("listing addresses of link {index}")))
    }

    /// Makes `address` the only IPv4 address of link `index`: adds it if missing and
    /// removes any other IPv4 address (a stale one from an earlier lease, flannel #1850).
    pub async fn ensure_address(&self, index: u32, address: Ipv4Net) -> Result<()> {
        let mut present = false;
        for (existing, message) in self.address_messages(index).await? {
            if existing == address {
                present = true;
                continue;
            }
            tracing::info!(link = index, %existing, wanted = %address, "removing stale address");
            match self.handle.address().del(message).execute().await {
                Ok(()) => {}
                Err(e) if netlink_errno(&e) == Some(libc::EADDRNOTAVAIL) => {}
                Err(e) => {
                    return Err(request_error(format!(
                        "removing stale address {existing} from link {index}"
                    ))(e))
                }
            }
        }
        if present {
            return Ok(());
        }
        match self
            .handle
            .address()
            .add(index, IpAddr::V4(address.addr()), address.prefix_len())
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if netlink_errno(&e) == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(request_error(format!("adding {address} to link {index}"))(
                e,
            )),
        }
    }

    /// The IPv4 routes of the main table that weft installed (tagged with
    /// [`WEFT_ROUTE_PROTOCOL`]).
    pub async fn weft_routes(&self) -> Result<Vec<Route>> {
        Ok(self.main_routes().await?.0)
    }

    /// The IPv4 routes of the main table: weft's (unicast, tagged with
    /// [`WEFT_ROUTE_PROTOCOL`]) and everybody else's (any type: a blackhole or
    /// unreachable route holds its prefix as much as a unicast one).
    pub async fn main_routes(&self) -> Result<(Vec<Route>, Vec<ForeignRoute>)> {
        let query = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let messages: Vec<RouteMessage> = self
            .handle
            .route()
            .get(query)
            .execute()
            .try_collect()
            .await
            .map_err(request_error("listing routes"))?;
        let mut weft = Vec::new();
        let mut foreign = Vec::new();
        for message in &messages {
            if message.header.table != RouteHeader::RT_TABLE_MAIN {
                continue;
            }
            let protocol = u8::from(message.header.protocol);
            if protocol == WEFT_ROUTE_PROTOCOL {
                if message.header.kind == RouteType::Unicast {
                    weft.extend(route_of(message));
                }
            } else if let (Ok(dst), gateway, oif) = route_parts(message) {
                foreign.push(ForeignRoute {
                    dst,
                    protocol,
                    gateway,
                    oif,
                });
            }
        }
        Ok((weft, foreign))
    }

    /// Applies one reconcile step; `Ok(Applied::Taken)` when an add found the prefix
    /// taken by a route that appeared since the table was read. Deleting a route that
    /// is already gone counts as done.
    pub async fn apply(&self, change: &Change) -> Result<Applied> {
        match change {
            Change::Add(route) => {
                // Create-exclusive (rtnetlink's default flags: CREATE | EXCL): the
                // kernel refuses if any route to the prefix exists at this metric, so a
                // route someone added since we looked is never overwritten.
                match self
                    .handle
                    .route()
                    .add(route_message(route))
                    .execute()
                    .await
                {
                    Ok(()) => Ok(Applied::Done),
                    Err(e) if netlink_errno(&e) == Some(libc::EEXIST) => Ok(Applied::Taken),
                    Err(e) => Err(request_error(format!("adding route {}", describe(route)))(
                        e,
                    )),
                }
            }
            Change::Replace { old, new } => {
                // NLM_F_REPLACE would replace the first route to the prefix, whoever
                // installed it. Appending puts the new route behind whatever is there
                // (the old one keeps carrying traffic), and deleting the old one by
                // weft's protocol number removes exactly that one.
                match self.append_route(new).await {
                    Ok(()) => {}
                    // An identical route (same protocol, gateway and device) exists.
                    Err(e) if netlink_errno(&e) == Some(libc::EEXIST) => {}
                    Err(e) => {
                        return Err(request_error(format!(
                            "adding route {} (replacing {})",
                            describe(new),
                            describe(old)
                        ))(e))
                    }
                }
                self.delete_route(old).await.map(|()| Applied::Done)
            }
            Change::Delete(route) => self.delete_route(route).await.map(|()| Applied::Done),
        }
    }

    /// `NLM_F_CREATE | NLM_F_APPEND`: a route behind those to the same prefix.
    async fn append_route(&self, route: &Route) -> std::result::Result<(), rtnetlink::Error> {
        use rtnetlink::packet_core::{
            NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REQUEST,
        };
        use rtnetlink::packet_route::RouteNetlinkMessage;
        let mut request = NetlinkMessage::from(RouteNetlinkMessage::NewRoute(route_message(route)));
        request.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND;
        let mut handle = self.handle.clone();
        let mut responses = handle.request(request)?;
        while let Some(message) = responses.next().await {
            if let NetlinkPayload::Error(error) = message.payload {
                return Err(rtnetlink::Error::NetlinkError(error));
            }
        }
        Ok(())
    }

    /// Deletes weft's route `route`: the request names weft's protocol number, which the
    /// kernel matches, so a foreign route to the same prefix is never the one deleted.
    async fn delete_route(&self, route: &Route) -> Result<()> {
        match self
            .handle
            .route()
            .del(route_message(route))
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if netlink_errno(&e).is_some_and(|n| GONE.contains(&n)) => Ok(()),
            Err(e) => Err(request_error(format!("deleting route {}", describe(route)))(e)),
        }
    }

    /// Plans and applies every change that makes weft's routes equal `desired`, leaving
    /// foreign routes alone. One change failing does not stop the others: every change
    /// is tried, and the failures are returned with the rest. Only reading the table
    /// is an error.
    pub async fn reconcile_routes(&self, desired: &[Route]) -> Result<RoutePass> {
        let (actual, foreign) = self.main_routes().await?;
        let Plan { changes, conflicts } = plan(desired, &actual, &foreign);
        let mut pass = RoutePass {
            conflicts,
            ..RoutePass::default()
        };
        for change in changes {
            match self.apply(&change).await {
                Ok(Applied::Done) => pass.applied.push(change),
                Ok(Applied::Taken) => pass.conflicts.push(Conflict {
                    wanted: match change {
                        Change::Add(route) | Change::Delete(route) => route,
                        Change::Replace { new, .. } => new,
                    },
                    foreign: None,
                }),
                Err(error) => pass.failures.push(RouteFailure {
                    change,
                    error: error.to_string(),
                }),
            }
        }
        Ok(pass)
    }
}

/// What [`Netlink::apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Done,
    /// A create-exclusive add found the prefix taken (`EEXIST`): a conflict.
    Taken,
}

/// A change the kernel refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteFailure {
    pub change: Change,
    pub error: String,
}

/// The outcome of one route reconcile pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutePass {
    /// Changes made.
    pub applied: Vec<Change>,
    /// Destinations held by another route (found when reading, or by `EEXIST`).
    pub conflicts: Vec<Conflict>,
    /// Changes the kernel refused; the pass went on with the rest.
    pub failures: Vec<RouteFailure>,
}

/// `10.244.5.0/24 dev 7` / `10.244.5.0/24 via 192.0.2.5 dev 2`, for messages.
pub fn describe(route: &Route) -> String {
    match route.gateway {
        Some(gateway) => format!("{} via {gateway} dev {}", route.dst, route.oif),
        None => format!("{} dev {}", route.dst, route.oif),
    }
}

/// The IPv4 address of an address message, with its prefix length.
pub(crate) fn address_of(message: &AddressMessage) -> Option<Ipv4Net> {
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

/// Destination (an error for a prefix length over 32), gateway and output interface of
/// an IPv4 route message; no destination attribute means `0.0.0.0`, the default route.
pub fn route_parts(
    message: &RouteMessage,
) -> (
    std::result::Result<Ipv4Net, ipnet::PrefixLenError>,
    Option<Ipv4Addr>,
    Option<u32>,
) {
    let mut dst = Ipv4Addr::UNSPECIFIED;
    let mut gateway = None;
    let mut oif = None;
    for attribute in &message.attributes {
        match attribute {
            RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = *a,
            RouteAttribute::Gateway(RouteAddress::Inet(a)) => gateway = Some(*a),
            RouteAttribute::Oif(index) => oif = Some(*index),
            _ => {}
        }
    }
    (
        Ipv4Net::new(dst, message.header.destination_prefix_length),
        gateway,
        oif,
    )
}

fn route_of(message: &RouteMessage) -> Option<Route> {
    let (dst, gateway, oif) = route_parts(message);
    Some(Route {
        dst: dst.ok()?,
        gateway,
        oif: oif?,
    })
}

fn route_message(route: &Route) -> RouteMessage {
    let mut builder = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(route.dst.network(), route.dst.prefix_len())
        .output_interface(route.oif)
        .protocol(RouteProtocol::Other(WEFT_ROUTE_PROTOCOL));
    builder = match route.gateway {
        Some(gateway) => builder.gateway(gateway).scope(RouteScope::Universe),
        None => builder.scope(RouteScope::Link),
    };
    builder.build()
}
