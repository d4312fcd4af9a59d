//! Pure subnet allocation decisions (no I/O): which subnets a net-conf allows, whether a
//! subnet is compatible with it, and which free subnet to try next.

use ipnet::Ipv4Net;
use rand::Rng;
use std::collections::BTreeSet;
use weft_config::NetConf;

/// How many of the lowest free subnets a random choice is made among (flannel's 100):
/// random so that nodes starting together rarely collide, among the lowest so the
/// network fills from the bottom.
pub const CHOICE_WINDOW: usize = 100;

/// Number of subnets between SubnetMin and SubnetMax inclusive.
pub fn capacity(netconf: &NetConf) -> u64 {
    netconf.subnet_count()
}

/// True when `subnet` may be leased under `netconf`: right prefix length, a network
/// address, inside the network and between SubnetMin and SubnetMax (flannel's
/// `isSubnetConfigCompat`).
pub fn is_compatible(netconf: &NetConf, subnet: Ipv4Net) -> bool {
    netconf.network.contains(&subnet) && netconf.is_leasable(subnet)
}

/// Picks the subnet to try: `preferred` when it is compatible and free, otherwise one at
/// random among the first [`CHOICE_WINDOW`] free subnets from SubnetMin upward. `None`
/// means the range is exhausted. A taken subnet of any length excludes every subnet it
/// overlaps.
pub fn choose_subnet<R: Rng + ?Sized>(
    netconf: &NetConf,
    taken: &BTreeSet<Ipv4Net>,
    preferred: Option<Ipv4Net>,
    rng: &mut R,
) -> Option<Ipv4Net> {
    let is_free = |candidate: &Ipv4Net| !taken.iter().any(|t| overlaps(t, candidate));
    if let Some(preferred) = preferred {
        if is_compatible(netconf, preferred) && is_free(&preferred) {
            return Some(preferred);
        }
    }
    let free: Vec<Ipv4Net> = netconf
        .subnets()
        .filter(is_free)
        .take(CHOICE_WINDOW)
        .collect();
    if free.is_empty() {
        return None;
    }
    Some(free[rng.random_range(0..free.len())])
}

fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use std::net::Ipv4Addr;

    use super::*;

    fn netconf(min: &str, max: &str) -> NetConf {
        let json = format!(
            r#"{{"Network":"10.244.0.0/16","SubnetLen":24,"SubnetMin":"{min}","SubnetMax":"{max}"}}"#
        );
        NetConf::parse(&json).unwrap()
    }

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn capacity_counts_inclusive_range() {
        assert_eq!(capacity(&netconf("10.244.1.0", "10.244.255.0")), 255);
        assert_eq!(capacity(&netconf("10.244.5.0", "10.244.5.0")), 1);
    }

    #[test]
    fn prefers_free_compatible_previous_subnet() {
        let conf = netconf("10.244.1.0", "10.244.255.0");
        let mut rng = StdRng::seed_from_u64(1);
        let got = choose_subnet(
            &conf,
            &BTreeSet::new(),
            Some(net("10.244.77.0/24")),
            &mut rng,
        );
        assert_eq!(got, Some(net("10.244.77.0/24")));
    }

    #[test]
    fn ignores_preferred_when_taken_or_incompatible() {
        let conf = netconf("10.244.1.0", "10.244.3.0");
        let taken: BTreeSet<_> = [net("10.244.1.0/24")].into();
        let mut rng = StdRng::seed_from_u64(2);
        for preferred in [
            "10.244.1.0/24", // taken
            "10.244.9.0/24", // above SubnetMax
            "10.244.0.0/24", // below SubnetMin
            "10.244.2.0/25", // wrong length
            "10.245.2.0/24", // outside the network
        ] {
            let got = choose_subnet(&conf, &taken, Some(net(preferred)), &mut rng).unwrap();
            assert!(
                got == net("10.244.2.0/24") || got == net("10.244.3.0/24"),
                "{preferred} -> {got}"
            );
        }
    }

    #[test]
    fn never_returns_a_taken_or_overlapping_subnet() {
        let conf = netconf("10.244.1.0", "10.244.4.0");
        // A /23 taken by some other tool overlaps 10.244.2.0/24 and 10.244.3.0/24.
        let taken: BTreeSet<_> = [net("10.244.1.0/24"), net("10.244.2.0/23")].into();
        for seed in 0..50 {
            let mut rng = StdRng::seed_from_u64(seed);
            assert_eq!(
                choose_subnet(&conf, &taken, None, &mut rng),
                Some(net("10.244.4.0/24"))
            );
        }
    }

    #[test]
    fn exhausted_range_gives_none() {
        let conf = netconf("10.244.1.0", "10.244.2.0");
        let taken: BTreeSet<_> = [net("10.244.1.0/24"), net("10.244.2.0/24")].into();
        let mut rng = StdRng::seed_from_u64(3);
        assert_eq!(choose_subnet(&conf, &taken, None, &mut rng), None);
    }

    #[test]
    fn chooses_among_the_lowest_free_subnets_and_spreads() {
        let conf = netconf("10.244.1.0", "10.244.255.0");
        let mut rng = StdRng::seed_from_u64(4);
        let mut seen = BTreeSet::new();
        for _ in 0..200 {
            let got = choose_subnet(&conf, &BTreeSet::new(), None, &mut rng).unwrap();
            // The window is the 100 lowest: 10.244.1.0 .. 10.244.100.0.
            assert!(got.network() <= "10.244.100.0".parse::<Ipv4Addr>().unwrap());
            assert!(is_compatible(&conf, got));
            seen.insert(got);
        }
        assert!(
            seen.len() > 50,
            "random choice should spread: {}",
            seen.len()
        );
    }

    proptest::proptest! {
        #[test]
        fn choice_is_always_free_and_compatible(
            taken_octets in proptest::collection::btree_set(0u8..=255, 0..256),
            seed in proptest::num::u64::ANY,
        ) {
            let conf = netconf("10.244.1.0", "10.244.255.0");
            let taken: BTreeSet<Ipv4Net> = taken_octets
                .iter()
                .map(|o| Ipv4Net::new(Ipv4Addr::new(10, 244, *o, 0), 24).unwrap())
                .collect();
            let mut rng = StdRng::seed_from_u64(seed);
            match choose_subnet(&conf, &taken, None, &mut rng) {
                Some(got) => {
                    proptest::prop_assert!(is_compatible(&conf, got));
                    proptest::prop_assert!(!taken.contains(&got));
                }
                None => proptest::prop_assert!((1..=255).all(|o| taken_octets.contains(&o))),
            }
        }
    }
}
