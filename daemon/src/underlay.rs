//! The underlay: which interface carries encapsulated traffic, the address peers send
//! to, and its MTU. Everything is read in the network namespace weftd runs in
//! (`/proc/self/net/route`, `getifaddrs`, `SIOCGIFMTU` on a socket of this namespace —
//! not `/sys`, which may belong to another namespace).

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;

#[derive(Debug, thiserror::Error)]
pub enum UnderlayError {
    #[error("no default route in this network namespace to pick the underlay interface from; pass --iface <name or IPv4 address>")]
    NoDefaultRoute,
    #[error("cannot read the routing table {path}: {source}")]
    Routes {
        path: &'static str,
        source: std::io::Error,
    },
    #[error("cannot list network interfaces: {0}")]
    Interfaces(#[source] nix::Error),
    #[error("--iface {0}: no such interface in this network namespace")]
    NoSuchIface(String),
    #[error("--iface {0}: no interface in this network namespace has that address")]
    NoIfaceWithIp(Ipv4Addr),
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
}

const ROUTE_TABLE: &str = "/proc/self/net/route";

/// Resolves `--iface` (name, IPv4 address, or `None` for the default route's
/// interface) and `--public-ip` (`None` for the interface's first IPv4 address).
pub fn resolve(
    iface: Option<&str>,
    public_ip: Option<Ipv4Addr>,
) -> Result<Underlay, UnderlayError> {
    let addrs = ipv4_addresses()?;
    let iface = match iface {
        Some(spec) => match spec.parse::<Ipv4Addr>() {
            Ok(ip) => addrs
                .iter()
                .find(|(_, a)| *a == ip)
                .map(|(name, _)| name.clone())
                .ok_or(UnderlayError::NoIfaceWithIp(ip))?,
            Err(_) => {
                if !interface_exists(spec)? {
                    return Err(UnderlayError::NoSuchIface(spec.to_owned()));
                }
                spec.to_owned()
            }
        },
        None => {
            let table =
                std::fs::read_to_string(ROUTE_TABLE).map_err(|source| UnderlayError::Routes {
                    path: ROUTE_TABLE,
                    source,
                })?;
            default_route_iface(&table).ok_or(UnderlayError::NoDefaultRoute)?
        }
    };
    let public_ip = match public_ip {
        Some(ip) => ip,
        None => addrs
            .iter()
            .find(|(name, _)| *name == iface)
            .map(|(_, ip)| *ip)
            .ok_or_else(|| UnderlayError::NoIpv4(iface.clone()))?,
    };
    let mtu = iface_mtu(&iface).map_err(|source| UnderlayError::Mtu {
        iface: iface.clone(),
        source,
    })?;
    Ok(Underlay {
        iface,
        public_ip,
        mtu,
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

/// Every (interface, IPv4 address) pair, in the kernel's order.
fn ipv4_addresses() -> Result<Vec<(String, Ipv4Addr)>, UnderlayError> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(UnderlayError::Interfaces)?;
    Ok(addrs
        .filter_map(|ifa| {
            let sin = ifa.address.as_ref()?.as_sockaddr_in()?;
            Some((ifa.interface_name.clone(), sin.ip()))
        })
        .collect())
}

fn interface_exists(name: &str) -> Result<bool, UnderlayError> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(UnderlayError::Interfaces)?;
    Ok(addrs.into_iter().any(|ifa| ifa.interface_name == name))
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
        let underlay = resolve(Some("127.0.0.1"), None).unwrap();
        assert_eq!(underlay.iface, "lo");
        assert_eq!(underlay.public_ip, Ipv4Addr::LOCALHOST);
        let err = resolve(Some("no-such-if0"), None).unwrap_err().to_string();
        assert!(err.contains("no-such-if0"), "{err}");
    }
}
