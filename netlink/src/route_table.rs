//! The main routing table over netlink: reading weft's routes and everybody else's,
//! applying the changes [`plan`] decides, one reconcile pass.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::{StreamExt as _, TryStreamExt as _};
use ipnet::{IpNet, Ipv4Net};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::RouteMessageBuilder;

use crate::route::{plan, Change, Conflict, ForeignRoute, Plan, Route, WEFT_ROUTE_PROTOCOL};
use crate::{netlink_errno, request_error, Error, Netlink, Result, GONE};

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

/// Which families a read covers: weftd routes IPv4 only, so IPv6 is read only when an
/// IPv6 route is wanted (and the table's IPv6 routes are not dumped every 2 s for
/// nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Families {
    Ipv4,
    Both,
}

impl Netlink {
    /// The IPv4 routes of the main table that weft installed (tagged with
    /// [`WEFT_ROUTE_PROTOCOL`]).
    pub async fn weft_routes(&self) -> Result<Vec<Route>> {
        Ok(self.main_routes().await?.0)
    }

    /// The IPv4 routes of the main table: weft's (unicast, tagged with
    /// [`WEFT_ROUTE_PROTOCOL`]) and everybody else's (any type: a blackhole or
    /// unreachable route holds its prefix as much as a unicast one).
    pub async fn main_routes(&self) -> Result<(Vec<Route>, Vec<ForeignRoute>)> {
        self.main_routes_of(Families::Ipv4).await
    }

    async fn main_routes_of(&self, families: Families) -> Result<(Vec<Route>, Vec<ForeignRoute>)> {
        let mut messages = self
            .route_dump(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .await?;
        if families == Families::Both {
            messages.extend(
                self.route_dump(RouteMessageBuilder::<Ipv6Addr>::new().build())
                    .await?,
            );
        }
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

    async fn route_dump(&self, query: RouteMessage) -> Result<Vec<RouteMessage>> {
        self.handle
            .route()
            .get(query)
            .execute()
            .try_collect()
            .await
            .map_err(request_error("listing routes"))
    }

    /// Every IPv4 route of the namespace (all tables): (destination, gateway, output
    /// interface), `0.0.0.0/0` for the default route.
    pub async fn ipv4_routes(&self) -> Result<Vec<(Ipv4Net, Option<Ipv4Addr>, Option<u32>)>> {
        let messages = self
            .route_dump(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .await?;
        Ok(messages
            .iter()
            .filter_map(|message| {
                let (dst, gateway, oif) = route_parts(message);
                let dst = match dst {
                    Ok(IpNet::V4(dst)) => dst,
                    Ok(IpNet::V6(_)) => return None,
                    Err(_) => Ipv4Net::default(),
                };
                let gateway = match gateway {
                    Some(IpAddr::V4(gateway)) => Some(gateway),
                    _ => None,
                };
                Some((dst, gateway, oif))
            })
            .collect())
    }

    /// Adds `dst via gateway dev oif` (an ordinary route, as `ip route add` makes it);
    /// success when that route is already there.
    pub async fn add_route(&self, dst: Ipv4Net, gateway: Ipv4Addr, oif: u32) -> Result<()> {
        let message = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst.network(), dst.prefix_len())
            .gateway(gateway)
            .output_interface(oif)
            .build();
        match self.handle.route().add(message).execute().await {
            Ok(()) => Ok(()),
            Err(e) if netlink_errno(&e) == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(request_error(format!("adding route {dst} via {gateway}"))(
                e,
            )),
        }
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
                    .add(route_message(route)?)
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
                match self.append_route(route_message(new)?).await {
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
    async fn append_route(
        &self,
        message: RouteMessage,
    ) -> std::result::Result<(), rtnetlink::Error> {
        use rtnetlink::packet_core::{
            NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REQUEST,
        };
        use rtnetlink::packet_route::RouteNetlinkMessage;
        let mut request = NetlinkMessage::from(RouteNetlinkMessage::NewRoute(message));
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
            .del(route_message(route)?)
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
        let families = if desired.iter().any(|r| r.dst.addr().is_ipv6()) {
            Families::Both
        } else {
            Families::Ipv4
        };
        let (actual, foreign) = self.main_routes_of(families).await?;
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

/// `10.244.5.0/24 dev 7` / `10.244.5.0/24 via 192.0.2.5 dev 2`, for messages.
pub fn describe(route: &Route) -> String {
    match route.gateway {
        Some(gateway) => format!("{} via {gateway} dev {}", route.dst, route.oif),
        None => format!("{} dev {}", route.dst, route.oif),
    }
}

/// Destination (an error for a prefix length too long for the family), gateway and
/// output interface of a route message; no destination attribute means the family's
/// unspecified address, the default route.
pub fn route_parts(
    message: &RouteMessage,
) -> (
    std::result::Result<IpNet, ipnet::PrefixLenError>,
    Option<IpAddr>,
    Option<u32>,
) {
    let mut dst = match message.header.address_family {
        AddressFamily::Inet6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    };
    let mut gateway = None;
    let mut oif = None;
    for attribute in &message.attributes {
        match attribute {
            RouteAttribute::Destination(address) => dst = ip_of(address).unwrap_or(dst),
            RouteAttribute::Gateway(address) => gateway = ip_of(address).or(gateway),
            RouteAttribute::Oif(index) => oif = Some(*index),
            _ => {}
        }
    }
    (
        IpNet::new(dst, message.header.destination_prefix_length),
        gateway,
        oif,
    )
}

fn ip_of(address: &RouteAddress) -> Option<IpAddr> {
    match address {
        RouteAddress::Inet(a) => Some(IpAddr::V4(*a)),
        RouteAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    }
}

fn route_of(message: &RouteMessage) -> Option<Route> {
    let (dst, gateway, oif) = route_parts(message);
    Some(Route {
        dst: dst.ok()?,
        gateway,
        oif: oif?,
    })
}

/// The request for weft's route `route`, in the destination's family.
fn route_message(route: &Route) -> Result<RouteMessage> {
    let protocol = RouteProtocol::Other(WEFT_ROUTE_PROTOCOL);
    let mixed = || Error::InvalidRoute {
        route: describe(route),
        reason: "the gateway is not of the destination's address family",
    };
    let scope = match route.gateway {
        Some(_) => RouteScope::Universe,
        None => RouteScope::Link,
    };
    Ok(match route.dst {
        IpNet::V4(dst) => {
            let mut builder = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(dst.network(), dst.prefix_len())
                .output_interface(route.oif)
                .protocol(protocol);
            builder = match route.gateway {
                Some(IpAddr::V4(gateway)) => builder.gateway(gateway),
                Some(IpAddr::V6(_)) => return Err(mixed()),
                None => builder,
            };
            builder.scope(scope).build()
        }
        IpNet::V6(dst) => {
            let mut builder = RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(dst.network(), dst.prefix_len())
                .output_interface(route.oif)
                .protocol(protocol);
            builder = match route.gateway {
                Some(IpAddr::V6(gateway)) => builder.gateway(gateway),
                Some(IpAddr::V4(_)) => return Err(mixed()),
                None => builder,
            };
            builder.scope(scope).build()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(dst: &str, gateway: Option<&str>) -> Route {
        Route {
            dst: dst.parse().unwrap(),
            gateway: gateway.map(|g| g.parse().unwrap()),
            oif: 7,
        }
    }

    #[test]
    fn a_route_message_reads_back_as_the_route() {
        for r in [
            route("10.244.5.0/24", None),
            route("10.244.5.0/24", Some("192.0.2.5")),
            route("fd00:10:244:5::/64", None),
            route("fd00:10:244:5::/64", Some("2001:db8::5")),
        ] {
            let message = route_message(&r).unwrap();
            assert_eq!(route_of(&message), Some(r), "{}", describe(&r));
            assert_eq!(u8::from(message.header.protocol), WEFT_ROUTE_PROTOCOL);
            let scope = if r.gateway.is_some() {
                RouteScope::Universe
            } else {
                RouteScope::Link
            };
            assert_eq!(message.header.scope, scope);
        }
    }

    #[test]
    fn a_gateway_of_the_other_family_is_refused_by_name() {
        let e = route_message(&route("10.244.5.0/24", Some("2001:db8::5")))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("10.244.5.0/24 via 2001:db8::5") && e.contains("address family"),
            "{e}"
        );
        assert!(route_message(&route("fd00::/64", Some("192.0.2.5"))).is_err());
    }

    #[test]
    fn no_destination_is_the_default_route_of_the_family() {
        let v4 = RouteMessageBuilder::<Ipv4Addr>::new().build();
        assert_eq!(route_parts(&v4).0, Ok("0.0.0.0/0".parse().unwrap()));
        let v6 = RouteMessageBuilder::<Ipv6Addr>::new().build();
        assert_eq!(route_parts(&v6).0, Ok("::/0".parse().unwrap()));
    }
}
