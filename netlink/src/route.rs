//! Routes weft owns, and the reconcile step as a pure function.
//!
//! weft tags every route it installs with its own routing protocol number
//! ([`WEFT_ROUTE_PROTOCOL`], shown by `ip route` as `proto 87`). That tag is how the
//! reconciler tells its routes from everybody else's, and how a restarted weftd finds
//! the routes its predecessor left: no state file needed.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

/// `rtm_protocol` of every route weft installs (87 = 'W'; unused by iproute2's table).
pub const WEFT_ROUTE_PROTOCOL: u8 = 87;

/// One route in the main table. Its address family is the destination's (weftd installs
/// IPv4 routes only, for now); the gateway, when there is one, is of the same family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Route {
    /// Destination prefix (a peer's subnet).
    pub dst: IpNet,
    /// Next hop: `None` for a device route (`scope link`, through the TUN device),
    /// `Some(PublicIP)` for DirectRouting.
    pub gateway: Option<IpAddr>,
    /// Output interface index.
    pub oif: u32,
}

/// A route in the main table that weft did not install (another `rtm_protocol`): an
/// admin's `ip route add` (`proto boot`/`static`), a routing daemon's, the kernel's own
/// for a local address. weft never changes or deletes one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ForeignRoute {
    pub dst: IpNet,
    /// Its `rtm_protocol` (see [`protocol_name`]).
    pub protocol: u8,
    pub gateway: Option<IpAddr>,
    /// Output interface index (none for multipath, blackhole, unreachable routes).
    pub oif: Option<u32>,
}

/// iproute2's name of a routing protocol number (`/etc/iproute2/rt_protos`), or the
/// number itself.
pub fn protocol_name(protocol: u8) -> String {
    match protocol {
        1 => "redirect".into(),
        2 => "kernel".into(),
        3 => "boot".into(),
        4 => "static".into(),
        8 => "gated".into(),
        9 => "ra".into(),
        11 => "zebra".into(),
        12 => "bird".into(),
        16 => "dhcp".into(),
        42 => "babel".into(),
        186 => "bgp".into(),
        187 => "isis".into(),
        188 => "ospf".into(),
        n => n.to_string(),
    }
}

/// A destination weft wants a route to but another route holds: weft leaves it alone
/// (and tries again at every reconcile, so its route goes in once the other is gone).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Conflict {
    /// The route weft would install.
    pub wanted: Route,
    /// The route in the way; `None` when it appeared between reading the table and
    /// writing it, known only from the kernel's `EEXIST` to a create-exclusive add.
    pub foreign: Option<ForeignRoute>,
}

/// One step that turns the actual routes into the desired ones. Every step touches only
/// routes weft installed (its deletes name [`WEFT_ROUTE_PROTOCOL`], which the kernel
/// matches), and creates only where nothing else is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Change {
    /// No route to this destination yet: create it, exclusively (the kernel refuses
    /// with `EEXIST` if any route to the prefix appeared since the table was read).
    Add(Route),
    /// weft's route to this destination differs (gateway or device): the new one is
    /// appended behind it, then the old one deleted, so the destination is never
    /// without a route and no route but weft's own is replaced.
    Replace { old: Route, new: Route },
    /// A route weft installed whose peer is gone (or a stale duplicate).
    Delete(Route),
}

impl Change {
    /// The destination the change is about.
    pub fn dst(&self) -> IpNet {
        match self {
            Change::Add(route) | Change::Delete(route) => route.dst,
            Change::Replace { new, .. } => new.dst,
        }
    }
}

/// The changes of one reconcile pass, and the destinations left to other routes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub changes: Vec<Change>,
    /// Desired destinations held by a foreign route, by destination.
    pub conflicts: Vec<Conflict>,
}

/// What to do so that weft's routes in the kernel (`actual`) equal `desired`, without
/// touching `foreign` routes (everything else in the main table).
///
/// Routes are keyed by destination: at most one weft route per prefix. A desired
/// destination that a foreign route holds is a [`Conflict`]: weft adds or replaces
/// nothing there (a weft route already there that is right is left as it is; the
/// kernel's order of routes decides which one is used). Deletions come first so that
/// a destination moving between devices never briefly has two routes, then additions
/// and replacements, each group ordered by destination (deterministic output makes the
/// log and the tests readable). When `desired` holds two routes for one destination,
/// the last one wins.
pub fn plan(desired: &[Route], actual: &[Route], foreign: &[ForeignRoute]) -> Plan {
    let desired: BTreeMap<IpNet, Route> = desired.iter().map(|r| (r.dst, *r)).collect();
    let mut actual_by_dst: BTreeMap<IpNet, Vec<Route>> = BTreeMap::new();
    for route in actual {
        actual_by_dst.entry(route.dst).or_default().push(*route);
    }
    // The first foreign route per destination (the one to name in a conflict).
    let mut foreign_by_dst: BTreeMap<IpNet, ForeignRoute> = BTreeMap::new();
    for route in foreign {
        foreign_by_dst.entry(route.dst).or_insert(*route);
    }

    let mut deletes = Vec::new();
    let mut upserts = Vec::new();
    let mut conflicts = Vec::new();
    for (dst, existing) in &actual_by_dst {
        let Some(want) = desired.get(dst) else {
            deletes.extend(existing.iter().map(|r| Change::Delete(*r)));
            continue;
        };
        let held = foreign_by_dst.get(dst);
        // Duplicates (e.g. same prefix on two devices after a backend change): keep the
        // one that matches, drop the rest.
        let mut kept = false;
        for route in existing {
            if route == want && !kept {
                kept = true;
            } else if existing.len() > 1 || held.is_some() {
                deletes.push(Change::Delete(*route));
            }
        }
        if let Some(foreign) = held {
            conflicts.push(Conflict {
                wanted: *want,
                foreign: Some(*foreign),
            });
        } else if !kept {
            match existing.as_slice() {
                [old] => upserts.push(Change::Replace {
                    old: *old,
                    new: *want,
                }),
                _ => upserts.push(Change::Add(*want)),
            }
        }
    }
    for (dst, want) in &desired {
        if actual_by_dst.contains_key(dst) {
            continue;
        }
        match foreign_by_dst.get(dst) {
            Some(foreign) => conflicts.push(Conflict {
                wanted: *want,
                foreign: Some(*foreign),
            }),
            None => upserts.push(Change::Add(*want)),
        }
    }
    upserts.sort();
    deletes.extend(upserts);
    conflicts.sort();
    Plan {
        changes: deletes,
        conflicts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(dst: &str, oif: u32) -> Route {
        Route {
            dst: dst.parse().unwrap(),
            gateway: None,
            oif,
        }
    }

    fn via(dst: &str, gw: &str, oif: u32) -> Route {
        Route {
            dst: dst.parse().unwrap(),
            gateway: Some(gw.parse().unwrap()),
            oif,
        }
    }

    /// An admin's `ip route add <dst> via <gw> proto static`.
    fn static_via(dst: &str, gw: &str) -> ForeignRoute {
        ForeignRoute {
            dst: dst.parse().unwrap(),
            protocol: 4,
            gateway: Some(gw.parse().unwrap()),
            oif: Some(2),
        }
    }

    /// The changes when no foreign route is in the way.
    fn changes(desired: &[Route], actual: &[Route]) -> Vec<Change> {
        let plan = plan(desired, actual, &[]);
        assert!(plan.conflicts.is_empty());
        plan.changes
    }

    #[test]
    fn nothing_to_do_when_equal() {
        let routes = [
            dev("10.244.1.0/24", 5),
            via("10.244.2.0/24", "192.0.2.2", 2),
        ];
        assert!(plan(&routes, &routes, &[]).changes.is_empty());
        let reversed = [routes[1], routes[0]];
        assert!(plan(&routes, &reversed, &[]).changes.is_empty());
    }

    #[test]
    fn adds_missing_routes() {
        let desired = [dev("10.244.1.0/24", 5), dev("10.244.2.0/24", 5)];
        let actual = [dev("10.244.1.0/24", 5)];
        assert_eq!(
            changes(&desired, &actual),
            vec![Change::Add(dev("10.244.2.0/24", 5))]
        );
    }

    #[test]
    fn deletes_routes_of_gone_peers_first() {
        let desired = [dev("10.244.3.0/24", 5)];
        let actual = [dev("10.244.1.0/24", 5)];
        assert_eq!(
            changes(&desired, &actual),
            vec![
                Change::Delete(dev("10.244.1.0/24", 5)),
                Change::Add(dev("10.244.3.0/24", 5)),
            ]
        );
    }

    #[test]
    fn replaces_a_route_that_changed() {
        // Peer switched to DirectRouting: same destination, now via its PublicIP.
        let desired = [via("10.244.1.0/24", "192.0.2.1", 2)];
        let actual = [dev("10.244.1.0/24", 5)];
        assert_eq!(
            changes(&desired, &actual),
            vec![Change::Replace {
                old: dev("10.244.1.0/24", 5),
                new: via("10.244.1.0/24", "192.0.2.1", 2)
            }]
        );
        // A device index change (TUN recreated) is a change too.
        assert_eq!(
            changes(&[dev("10.244.1.0/24", 9)], &[dev("10.244.1.0/24", 5)]),
            vec![Change::Replace {
                old: dev("10.244.1.0/24", 5),
                new: dev("10.244.1.0/24", 9)
            }]
        );
    }

    #[test]
    fn duplicate_actual_routes_are_cleaned_up() {
        let want = dev("10.244.1.0/24", 5);
        let stale = dev("10.244.1.0/24", 7);
        assert_eq!(
            changes(&[want], &[stale, want]),
            vec![Change::Delete(stale)]
        );
        let other = via("10.244.1.0/24", "192.0.2.9", 2);
        assert_eq!(
            changes(&[want], &[stale, other]),
            vec![
                Change::Delete(stale),
                Change::Delete(other),
                Change::Add(want)
            ]
        );
    }

    #[test]
    fn empty_desired_removes_everything() {
        let actual = [dev("10.244.1.0/24", 5), dev("10.244.2.0/24", 5)];
        assert_eq!(
            changes(&[], &actual),
            vec![Change::Delete(actual[0]), Change::Delete(actual[1])]
        );
    }

    #[test]
    fn applying_the_plan_reaches_the_desired_state() {
        // Model the kernel as a set keyed by destination, apply, and re-plan: no-op.
        let desired = [
            dev("10.244.1.0/24", 5),
            via("10.244.2.0/24", "192.0.2.2", 2),
            dev("10.244.4.0/24", 5),
        ];
        let mut kernel = vec![
            dev("10.244.2.0/24", 5),
            dev("10.244.3.0/24", 5),
            dev("10.244.4.0/24", 5),
            dev("10.244.4.0/24", 6),
        ];
        for change in changes(&desired, &kernel) {
            match change {
                Change::Add(r) => kernel.push(r),
                Change::Replace { old, new } => {
                    kernel.push(new);
                    kernel.retain(|k| *k != old);
                }
                Change::Delete(r) => kernel.retain(|k| *k != r),
            }
        }
        assert!(changes(&desired, &kernel).is_empty(), "{kernel:?}");
        let mut sorted = kernel.clone();
        sorted.sort();
        let mut want = desired.to_vec();
        want.sort();
        assert_eq!(sorted, want);
    }

    #[test]
    fn a_foreign_route_is_a_conflict_not_an_add() {
        let desired = [dev("10.244.1.0/24", 5), dev("10.244.2.0/24", 5)];
        let admin = static_via("10.244.2.0/24", "192.0.2.9");
        // A foreign route to another prefix (covering or not) is no conflict.
        let unrelated = static_via("10.244.0.0/16", "192.0.2.9");
        let plan = plan(&desired, &[], &[admin, unrelated]);
        assert_eq!(plan.changes, vec![Change::Add(dev("10.244.1.0/24", 5))]);
        assert_eq!(
            plan.conflicts,
            vec![Conflict {
                wanted: dev("10.244.2.0/24", 5),
                foreign: Some(admin)
            }]
        );
    }

    #[test]
    fn a_foreign_route_is_never_replaced_or_deleted() {
        let admin = static_via("10.244.2.0/24", "192.0.2.9");
        let want = dev("10.244.2.0/24", 5);
        // weft's stale route there (another device) goes; no replacement goes in.
        let stale = dev("10.244.2.0/24", 7);
        let plan_ = plan(&[want], &[stale], &[admin]);
        assert_eq!(plan_.changes, vec![Change::Delete(stale)]);
        assert_eq!(plan_.conflicts.len(), 1);
        // weft's route that is right stays where the kernel put it (beside the other,
        // at another metric): neither is touched.
        let plan_ = plan(&[want], &[want], &[admin]);
        assert!(plan_.changes.is_empty(), "{plan_:?}");
        assert_eq!(plan_.conflicts.len(), 1);
        // A peer that is gone: weft's own route goes, the foreign one stays.
        let plan_ = plan(&[], &[want], &[admin]);
        assert_eq!(plan_.changes, vec![Change::Delete(want)]);
        assert!(plan_.conflicts.is_empty());
        // Nothing weft plans ever names a foreign route.
        for change in &plan(&[want], &[stale, want], &[admin]).changes {
            let touched = match change {
                Change::Add(r) | Change::Delete(r) => *r,
                Change::Replace { new, .. } => *new,
            };
            assert_ne!(touched.gateway, admin.gateway);
        }
    }

    #[test]
    fn once_the_foreign_route_is_gone_weft_adds_its_own() {
        let want = dev("10.244.2.0/24", 5);
        let admin = static_via("10.244.2.0/24", "192.0.2.9");
        assert!(plan(&[want], &[], &[admin]).changes.is_empty());
        let after = plan(&[want], &[], &[]);
        assert_eq!(after.changes, vec![Change::Add(want)]);
        assert!(after.conflicts.is_empty());
    }

    #[test]
    fn conflicts_are_sorted_and_one_per_destination() {
        let desired = [dev("10.244.3.0/24", 5), dev("10.244.2.0/24", 5)];
        let foreign = [
            static_via("10.244.3.0/24", "192.0.2.9"),
            static_via("10.244.2.0/24", "192.0.2.9"),
            // Two foreign routes to one prefix (different metrics): one conflict,
            // naming the first.
            static_via("10.244.2.0/24", "192.0.2.8"),
        ];
        let plan = plan(&desired, &[], &foreign);
        assert_eq!(
            plan.conflicts
                .iter()
                .map(|c| (c.wanted.dst.to_string(), c.foreign.unwrap().gateway))
                .collect::<Vec<_>>(),
            [
                (
                    "10.244.2.0/24".to_owned(),
                    Some("192.0.2.9".parse().unwrap())
                ),
                (
                    "10.244.3.0/24".to_owned(),
                    Some("192.0.2.9".parse().unwrap())
                )
            ]
        );
    }

    #[test]
    fn an_ipv6_route_is_planned_like_any_other() {
        // Beside the IPv4 routes, keyed by its own prefix: added, replaced, deleted.
        let v6 = dev("fd00:10:244:2::/64", 5);
        let v6_via = via("fd00:10:244:2::/64", "2001:db8::2", 2);
        let v4 = dev("10.244.2.0/24", 5);
        assert_eq!(
            changes(&[v4, v6], &[v4]),
            vec![Change::Add(v6)],
            "an IPv6 destination is added"
        );
        assert_eq!(
            changes(&[v4, v6_via], &[v4, v6]),
            vec![Change::Replace {
                old: v6,
                new: v6_via
            }]
        );
        assert_eq!(changes(&[v4], &[v4, v6]), vec![Change::Delete(v6)]);
        assert!(changes(&[v6, v4], &[v4, v6]).is_empty());
        // An IPv4 and an IPv6 prefix never hold each other's place, even when their
        // bits look alike (::a.b.c.d).
        let mapped = dev("::10.244.2.0/120", 5);
        assert_eq!(changes(&[v4, mapped], &[v4]), vec![Change::Add(mapped)]);
        // IPv4 sorts before IPv6, deletions before additions.
        assert_eq!(
            changes(&[v6, v4], &[dev("10.244.9.0/24", 5)]),
            vec![
                Change::Delete(dev("10.244.9.0/24", 5)),
                Change::Add(v4),
                Change::Add(v6)
            ]
        );
        assert_eq!(Change::Add(v6).dst().to_string(), "fd00:10:244:2::/64");
    }

    #[test]
    fn a_foreign_ipv6_route_is_a_conflict() {
        let want = dev("fd00:10:244:3::/64", 5);
        let admin = static_via("fd00:10:244:3::/64", "2001:db8::9");
        let plan_ = plan(&[want], &[], &[admin]);
        assert!(plan_.changes.is_empty());
        assert_eq!(
            plan_.conflicts,
            vec![Conflict {
                wanted: want,
                foreign: Some(admin)
            }]
        );
        // A foreign IPv4 route does not hold an IPv6 destination.
        let v4_admin = static_via("10.244.3.0/24", "192.0.2.9");
        assert_eq!(
            plan(&[want], &[], &[v4_admin]).changes,
            vec![Change::Add(want)]
        );
    }

    #[test]
    fn protocol_names_follow_iproute2() {
        assert_eq!(protocol_name(3), "boot");
        assert_eq!(protocol_name(4), "static");
        assert_eq!(protocol_name(2), "kernel");
        assert_eq!(protocol_name(200), "200");
    }
}
