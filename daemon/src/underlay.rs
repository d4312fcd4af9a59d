//! The underlay: which interface carries encapsulated traffic, the address peers send
//! to, and its MTU. Everything is read in the network namespace weftd runs in
//! (`/proc/self/net/route`, `getifaddrs`, `SIOCGIFMTU` on a socket of this namespace —
//! not `/sys`, which may belong to another namespace).

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;

#[derive(Debug, thiserror::Error)]
pub enum UnderlayError {
    #[error("no default route in this network namespace to pick the underlay interface from; pass --iface <name or IPv4 address>, --iface-regex or --iface-can-reach")]
    NoDefaultRoute,
    #[error("cannot read the routing table {path}: {source}")]
    Routes {
        path: &'static str,
        source: std::io::Error,
    },
    #[error("cannot list network interfaces: {0}")]
    Interfaces(#[source] nix::Error),
    #[error("no underlay interface found: {tried}; interfaces here: {available}")]
    NoMatch { tried: String, available: String },
    #[error("interface {0} has no IPv4 address; give it one or pass --public-ip")]
    NoIpv4(String),
    #[error("cannot read the MTU of interface {iface}: {source}")]
    Mtu {
        iface: String,
        source: std::io::Error,
    },
}

/// The resolved underlay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Underlay {
    pub iface: String,
    pub public_ip: Ipv4Addr,
    pub mtu: u32,
    /// Which setting chose the interface, for the start-up log
    /// (`--iface-regex ^ul matched address 192.0.2.1`).
    pub chosen_by: String,
}

const ROUTE_TABLE: &str = "/proc/self/net/route";

/// How the underlay interface is chosen: weftd's settings, tried in flanneld's order.
#[derive(Debug, Clone, Copy, Default)]
pub struct Choice<'a> {
    /// Names or IPv4 addresses, in order (`--iface`).
    pub iface: &'a [String],
    /// Patterns tried after `iface`, in order (`--iface-regex`).
    pub iface_regex: &'a [String],
    /// Tried last: the interface of the route to this address (`--iface-can-reach`).
    pub can_reach: Option<Ipv4Addr>,
    pub public_ip: Option<Ipv4Addr>,
}

impl<'a> Choice<'a> {
    pub fn from_settings(settings: &'a weft_config::Settings) -> Self {
        Choice {
            iface: &settings.iface,
            iface_regex: &settings.iface_regex,
            can_reach: settings.iface_can_reach,
            public_ip: settings.public_ip,
        }
    }

    fn is_default_route(&self) -> bool {
        self.iface.is_empty() && self.iface_regex.is_empty() && self.can_reach.is_none()
    }
}

/// An interface of this namespace with its IPv4 addresses, in the kernel's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub addrs: Vec<Ipv4Addr>,
}

/// The kernel's route to an address: the interface and the preferred source address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTo {
    pub iface: String,
    pub src: Option<Ipv4Addr>,
}

/// The interface chosen, with the address that chose it (an `--iface` IP, a matching
/// address, the route's source), which becomes the PublicIP unless one is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Picked {
    pub iface: String,
    pub addr: Option<Ipv4Addr>,
    pub chosen_by: String,
}

/// Picks the underlay interface as flanneld does (pure: the interfaces, the default
/// route's interface and the kernel's route lookup are inputs): each `--iface` in order
/// (a name that exists, or the interface holding an address); then each
/// `--iface-regex` in order (the first interface with a matching IPv4 address, else the
/// first whose name matches); then `--iface-can-reach` (`ip route get`). None of them
/// given: the default route's interface. Given but none found: an error naming what
/// was tried and what exists — never a silent fall back to the default route.
pub fn pick(
    choice: &Choice<'_>,
    interfaces: &[Interface],
    default_route: impl FnOnce() -> Result<String, UnderlayError>,
    route_to: impl FnOnce(Ipv4Addr) -> Result<RouteTo, String>,
) -> Result<Picked, UnderlayError> {
    if choice.is_default_route() {
        return Ok(Picked {
            iface: default_route()?,
            addr: None,
            chosen_by: "the default route".to_owned(),
        });
    }
    let mut tried = Vec::new();
    for spec in choice.iface {
        let found = match spec.parse::<Ipv4Addr>() {
            Ok(ip) => interfaces
                .iter()
                .find(|i| i.addrs.contains(&ip))
                .map(|i| (i.name.clone(), Some(ip))),
            Err(_) => interfaces
                .iter()
                .find(|i| i.name == *spec)
                .map(|i| (i.name.clone(), None)),
        };
        match found {
            Some((iface, addr)) => {
                return Ok(Picked {
                    iface,
                    addr,
                    chosen_by: format!("--iface {spec}"),
                })
            }
            None => tried.push(format!("--iface {spec} (no such interface or address)")),
        }
    }
    for pattern in choice.iface_regex {
        let regex = match regex::Regex::new(pattern) {
            Ok(regex) => regex,
            Err(e) => {
                tried.push(format!("--iface-regex {pattern} (invalid: {e})"));
                continue;
            }
        };
        let by_addr = interfaces.iter().find_map(|i| {
            let addr = i.addrs.iter().find(|a| regex.is_match(&a.to_string()))?;
            Some((i, *addr))
        });
        if let Some((iface, addr)) = by_addr {
            return Ok(Picked {
                iface: iface.name.clone(),
                addr: Some(addr),
                chosen_by: format!("--iface-regex {pattern} (address {addr})"),
            });
        }
        if let Some(iface) = interfaces.iter().find(|i| regex.is_match(&i.name)) {
            return Ok(Picked {
                iface: iface.name.clone(),
                addr: None,
                chosen_by: format!("--iface-regex {pattern} (name)"),
            });
        }
        tried.push(format!(
            "--iface-regex {pattern} (matches no address or name)"
        ));
    }
    if let Some(target) = choice.can_reach {
        match route_to(target) {
            Ok(route) => {
                return Ok(Picked {
                    iface: route.iface,
                    addr: route.src,
                    chosen_by: format!("--iface-can-reach {target}"),
                })
            }
            Err(why) => tried.push(format!("--iface-can-reach {target} ({why})")),
        }
    }
    let available = interfaces
        .iter()
        .map(|i| {
            let addrs: Vec<String> = i.addrs.iter().map(Ipv4Addr::to_string).collect();
            format!("{} [{}]", i.name, addrs.join(" "))
        })
        .collect::<Vec<_>>()
        .join(", ");
    Err(UnderlayError::NoMatch {
        tried: tried.join(", "),
        available,
    })
}

/// Resolves the underlay interface ([`pick`] against this namespace), the PublicIP (as
/// given, else the address that chose the interface, else its first IPv4 address) and
/// the interface's MTU.
pub fn resolve(choice: &Choice<'_>) -> Result<Underlay, UnderlayError> {
    let interfaces = interfaces()?;
    let picked = pick(
        choice,
        &interfaces,
        || {
            let table =
                std::fs::read_to_string(ROUTE_TABLE).map_err(|source| UnderlayError::Routes {
                    path: ROUTE_TABLE,
                    source,
                })?;
            default_route_iface(&table).ok_or(UnderlayError::NoDefaultRoute)
        },
        route_to,
    )?;
    let public_ip = match choice.public_ip.or(picked.addr) {
        Some(ip) => ip,
        None => interfaces
            .iter()
            .find(|i| i.name == picked.iface)
            .and_then(|i| i.addrs.first().copied())
            .ok_or_else(|| UnderlayError::NoIpv4(picked.iface.clone()))?,
    };
    let mtu = iface_mtu(&picked.iface).map_err(|source| UnderlayError::Mtu {
        iface: picked.iface.clone(),
        source,
    })?;
    Ok(Underlay {
        iface: picked.iface,
        public_ip,
        mtu,
        chosen_by: picked.chosen_by,
    })
}

/// `ip route get <target>` in this namespace, over netlink.
fn route_to(target: Ipv4Addr) -> Result<RouteTo, String> {
    let view = weft_netlink::inspect::inspect(
        std::path::Path::new("/proc/self/ns/net"),
        weft_netlink::inspect::Query {
            route_to: vec![target],
            neighbours: false,
        },
    )
    .map_err(|e| e.to_string())?;
    let route = view.route(target)?;
    if route.kind != "unicast" {
        return Err(format!(
            "the route to it is {}, not through an interface",
            route.kind
        ));
    }
    let oif = route.oif.ok_or("the kernel's route names no interface")?;
    let link = view
        .link(oif)
        .ok_or_else(|| format!("the route's interface index {oif} is not listed"))?;
    Ok(RouteTo {
        iface: link.name.clone(),
        src: route.prefsrc,
    })
}

/// The interface of the default IPv4 route (lowest metric) in `/proc/net/route`'s
/// format: `Iface Destination Gateway Flags RefCnt Use Metric Mask ...`, hex fields.
pub fn default_route_iface(table: &str) -> Option<String> {
    const RTF_UP: u32 = 0x1;
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [iface, dest, _gw, flags, _refcnt, _use, metric, mask, ..] = fields[..] else {
                return None;
            };
            let flags = u32::from_str_radix(flags, 16).ok()?;
            let metric: u32 = metric.parse().ok()?;
            (dest == "00000000" && mask == "00000000" && flags & RTF_UP != 0)
                .then(|| (metric, iface.to_owned()))
        })
        .min()
        .map(|(_, iface)| iface)
}

/// Every interface of this namespace with its IPv4 addresses, in the kernel's order
/// (`getifaddrs` lists each interface's link entry, so one without IPv4 is there too).
fn interfaces() -> Result<Vec<Interface>, UnderlayError> {
    let mut list: Vec<Interface> = Vec::new();
    for ifa in nix::ifaddrs::getifaddrs().map_err(UnderlayError::Interfaces)? {
        let index = match list.iter().position(|i| i.name == ifa.interface_name) {
            Some(index) => index,
            None => {
                list.push(Interface {
                    name: ifa.interface_name.clone(),
                    addrs: Vec::new(),
                });
                list.len() - 1
            }
        };
        if let Some(sin) = ifa.address.as_ref().and_then(|a| a.as_sockaddr_in()) {
            list[index].addrs.push(sin.ip());
        }
    }
    Ok(list)
}

/// The MTU of `iface`, via `SIOCGIFMTU` on a socket of the current namespace.
pub fn iface_mtu(iface: &str) -> std::io::Result<u32> {
    let name = iface.as_bytes();
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "interface name must be 1 to 15 bytes",
        ));
    }
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
    let mut ifr_name = [0 as libc::c_char; libc::IFNAMSIZ];
    for (dst, src) in ifr_name.iter_mut().zip(name) {
        *dst = *src as libc::c_char;
    }
    let mut request = libc::ifreq {
        ifr_name,
        ifr_ifru: libc::__c_anonymous_ifr_ifru { ifru_mtu: 0 },
    };
    // SAFETY: `request` is a valid, initialised `ifreq` with a NUL-terminated name that
    // lives for the whole call; SIOCGIFMTU writes only `ifru_mtu` inside it.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFMTU, &mut request) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: after a successful SIOCGIFMTU the kernel has set the `ifru_mtu` member of
    // the union, and it was initialised to 0 before in any case.
    let mtu = unsafe { request.ifr_ifru.ifru_mtu };
    u32::try_from(mtu).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("negative MTU {mtu}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_default_route_with_lowest_metric() {
        let table =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                     eth1\t00000000\t0102A8C0\t0003\t0\t0\t200\t00000000\t0\t0\t0\n\
                     eth0\t00000000\t0100000A\t0003\t0\t0\t100\t00000000\t0\t0\t0\n\
                     eth0\t0000000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        assert_eq!(default_route_iface(table).as_deref(), Some("eth0"));
    }

    #[test]
    fn no_default_route_gives_none() {
        let table = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\n\
                     eth0\t0000000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\n";
        assert_eq!(default_route_iface(table), None);
    }

    #[test]
    fn loopback_mtu_is_readable() {
        assert!(iface_mtu("lo").unwrap() >= 1500);
        assert!(iface_mtu("no-such-if0").is_err());
        assert!(iface_mtu("").is_err());
    }

    #[test]
    fn iface_given_as_loopback_address_resolves_to_lo() {
        let spec = ["127.0.0.1".to_owned()];
        let choice = Choice {
            iface: &spec,
            ..Choice::default()
        };
        let underlay = resolve(&choice).unwrap();
        assert_eq!(underlay.iface, "lo");
        assert_eq!(underlay.public_ip, Ipv4Addr::LOCALHOST);
        let spec = ["no-such-if0".to_owned()];
        let choice = Choice {
            iface: &spec,
            ..Choice::default()
        };
        let err = resolve(&choice).unwrap_err().to_string();
        assert!(err.contains("no-such-if0"), "{err}");
    }

    fn lab_interfaces() -> Vec<Interface> {
        let iface = |name: &str, addrs: &[&str]| Interface {
            name: name.to_owned(),
            addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
        };
        vec![
            iface("lo", &["127.0.0.1"]),
            iface("eth0", &["10.0.0.5"]),
            iface("ul0", &["192.0.2.1"]),
            iface("ul1", &["198.51.100.1", "198.51.100.9"]),
            iface("bare0", &[]),
        ]
    }

    fn pick_with(choice: Choice<'_>) -> Result<Picked, UnderlayError> {
        pick(
            &choice,
            &lab_interfaces(),
            || Ok("eth0".to_owned()),
            |target| match target.octets() {
                [198, 51, 100, _] => Ok(RouteTo {
                    iface: "ul1".to_owned(),
                    src: Some(Ipv4Addr::new(198, 51, 100, 9)),
                }),
                _ => Err("Network is unreachable (os error 101)".to_owned()),
            },
        )
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn nothing_given_means_the_default_route() {
        let picked = pick_with(Choice::default()).unwrap();
        assert_eq!((picked.iface.as_str(), picked.addr), ("eth0", None));
    }

    #[test]
    fn ifaces_are_tried_in_order_before_regexes() {
        let iface = strings(&["nope0", "198.51.100.9", "ul0"]);
        let regex = strings(&["^ul0$"]);
        let picked = pick_with(Choice {
            iface: &iface,
            iface_regex: &regex,
            ..Choice::default()
        })
        .unwrap();
        assert_eq!(picked.iface, "ul1");
        assert_eq!(picked.addr, Some(Ipv4Addr::new(198, 51, 100, 9)));
    }

    #[test]
    fn a_regex_matches_addresses_first_then_names() {
        let regex = strings(&["^198\\.51\\.", "^ul"]);
        let picked = pick_with(Choice {
            iface_regex: &regex,
            ..Choice::default()
        })
        .unwrap();
        assert_eq!(picked.iface, "ul1");
        assert_eq!(picked.addr, Some(Ipv4Addr::new(198, 51, 100, 1)));
        // No address matches: the first matching name, whose first address follows.
        let regex = strings(&["^nomatch", "^ul"]);
        let picked = pick_with(Choice {
            iface_regex: &regex,
            ..Choice::default()
        })
        .unwrap();
        assert_eq!((picked.iface.as_str(), picked.addr), ("ul0", None));
        assert!(picked.chosen_by.contains("^ul"), "{}", picked.chosen_by);
    }

    #[test]
    fn can_reach_takes_the_routes_interface_and_source() {
        let regex = strings(&["^nomatch"]);
        let picked = pick_with(Choice {
            iface_regex: &regex,
            can_reach: Some(Ipv4Addr::new(198, 51, 100, 254)),
            ..Choice::default()
        })
        .unwrap();
        assert_eq!(picked.iface, "ul1");
        assert_eq!(picked.addr, Some(Ipv4Addr::new(198, 51, 100, 9)));
    }

    #[test]
    fn nothing_found_names_every_attempt_and_what_exists() {
        let iface = strings(&["nope0"]);
        let regex = strings(&["^wlan"]);
        let err = pick_with(Choice {
            iface: &iface,
            iface_regex: &regex,
            can_reach: Some(Ipv4Addr::new(203, 0, 113, 1)),
            ..Choice::default()
        })
        .unwrap_err()
        .to_string();
        for part in [
            "--iface nope0",
            "--iface-regex ^wlan",
            "--iface-can-reach 203.0.113.1 (Network is unreachable",
            "ul1 [198.51.100.1 198.51.100.9]",
            "bare0 []",
        ] {
            assert!(err.contains(part), "{part}: {err}");
        }
        assert!(
            !err.contains("eth0 (default"),
            "never the default route: {err}"
        );
    }
}
