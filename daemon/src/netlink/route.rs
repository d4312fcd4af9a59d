//! Routes weft owns, and the reconcile step as a pure function.
//!
//! weft tags every route it installs with its own routing protocol number
//! ([`WEFT_ROUTE_PROTOCOL`], shown by `ip route` as `proto 87`). That tag is how the
//! reconciler tells its routes from everybody else's, and how a restarted weftd finds
//! the routes its predecessor left: no state file needed.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// `rtm_protocol` of every route weft installs (87 = 'W'; unused by iproute2's table).
pub const WEFT_ROUTE_PROTOCOL: u8 = 87;

/// One IPv4 route in the main table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Route {
    /// Destination prefix (a peer's subnet).
    pub dst: Ipv4Net,
    /// Next hop: `None` for a device route (`scope link`, through the TUN device),
    /// `Some(PublicIP)` for DirectRouting.
    pub gateway: Option<Ipv4Addr>,
    /// Output interface index.
    pub oif: u32,
}

/// One step that turns the actual routes into the desired ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Change {
    /// No route to this destination yet.
    Add(Route),
    /// A route to this destination exists but differs (gateway or device).
    Replace(Route),
    /// A route weft installed whose peer is gone.
    Delete(Route),
}

/// What to do so that the kernel's weft routes (`actual`) equal `desired`.
///
/// Routes are keyed by destination: at most one weft route per prefix. Deletions come
/// first so that a destination moving between devices never briefly has two routes,
/// then additions and replacements, each group ordered by destination (deterministic
/// output makes the log and the tests readable). When `desired` holds two routes for
/// one destination, the last one wins.
pub fn plan(desired: &[Route], actual: &[Route]) -> Vec<Change> {
    let desired: BTreeMap<Ipv4Net, Route> = desired.iter().map(|r| (r.dst, *r)).collect();
    let mut actual_by_dst: BTreeMap<Ipv4Net, Vec<Route>> = BTreeMap::new();
    for route in actual {
        actual_by_dst.entry(route.dst).or_default().push(*route);
    }

    let mut deletes = Vec::new();
    let mut upserts = Vec::new();
    for (dst, existing) in &actual_by_dst {
        match desired.get(dst) {
            None => deletes.extend(existing.iter().map(|r| Change::Delete(*r))),
            Some(want) => {
                // Duplicates (e.g. same prefix on two devices after a backend change):
                // keep the one that matches, drop the rest.
                let mut kept = false;
                for route in existing {
                    if route == want && !kept {
                        kept = true;
                    } else if existing.len() > 1 {
                        deletes.push(Change::Delete(*route));
                    }
                }
                if !kept {
                    if existing.len() > 1 {
                        upserts.push(Change::Add(*want));
                    } else {
                        upserts.push(Change::Replace(*want));
                    }
                }
            }
        }
    }
    for (dst, want) in &desired {
        if !actual_by_dst.contains_key(dst) {
            upserts.push(Change::Add(*want));
        }
    }
    upserts.sort();
    deletes.extend(upserts);
    deletes
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

    #[test]
    fn nothing_to_do_when_equal() {
        let routes = [
            dev("10.244.1.0/24", 5),
            via("10.244.2.0/24", "192.0.2.2", 2),
        ];
        assert!(plan(&routes, &routes).is_empty());
        let reversed = [routes[1], routes[0]];
        assert!(plan(&routes, &reversed).is_empty());
    }

    #[test]
    fn adds_missing_routes() {
        let desired = [dev("10.244.1.0/24", 5), dev("10.244.2.0/24", 5)];
        let actual = [dev("10.244.1.0/24", 5)];
        assert_eq!(
            plan(&desired, &actual),
            vec![Change::Add(dev("10.244.2.0/24", 5))]
        );
    }

    #[test]
    fn deletes_routes_of_gone_peers_first() {
        let desired = [dev("10.244.3.0/24", 5)];
        let actual = [dev("10.244.1.0/24", 5)];
        assert_eq!(
            plan(&desired, &actual),
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
            plan(&desired, &actual),
            vec![Change::Replace(via("10.244.1.0/24", "192.0.2.1", 2))]
        );
        // A device index change (TUN recreated) is a change too.
        assert_eq!(
            plan(&[dev("10.244.1.0/24", 9)], &[dev("10.244.1.0/24", 5)]),
            vec![Change::Replace(dev("10.244.1.0/24", 9))]
        );
    }

    #[test]
    fn duplicate_actual_routes_are_cleaned_up() {
        let want = dev("10.244.1.0/24", 5);
        let stale = dev("10.244.1.0/24", 7);
        assert_eq!(plan(&[want], &[stale, want]), vec![Change::Delete(stale)]);
        let other = via("10.244.1.0/24", "192.0.2.9", 2);
        assert_eq!(
            plan(&[want], &[stale, other]),
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
            plan(&[], &actual),
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
        for change in plan(&desired, &kernel) {
            match change {
                Change::Add(r) => kernel.push(r),
                Change::Replace(r) => {
                    kernel.retain(|k| k.dst != r.dst);
                    kernel.push(r);
                }
                Change::Delete(r) => kernel.retain(|k| *k != r),
            }
        }
        assert!(plan(&desired, &kernel).is_empty(), "{kernel:?}");
        let mut sorted = kernel.clone();
        sorted.sort();
        let mut want = desired.to_vec();
        want.sort();
        assert_eq!(sorted, want);
    }
}
