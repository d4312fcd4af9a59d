//! flannel's net-conf JSON, as stored at `<prefix>/config`.
//!
//! INTERFACE (shared with the daemon; keep these names): `NetConf::parse(&str)`,
//! the public fields below, `Backend`.
//!
//! The rules are flannel's (`pkg/subnet/config.go`, `CheckNetworkConfig`, and the
//! backends' own option structs), so a config that works for flanneld works for weftd
//! and means the same thing:
//!
//! * keys match case-insensitively, an exact match winning (Go's `encoding/json`), and
//!   `null` means "absent";
//! * `Network` is required; host bits are cleared (`10.244.1.0/16` is `10.244.0.0/16`);
//! * `SubnetLen` absent or 0: 24 if the network is /22 or larger, else prefix + 2; a
//!   network smaller than /28 is rejected. Given: at most 30 and at least prefix + 2
//!   (the network must hold at least four subnets);
//! * `SubnetMin` absent or `0.0.0.0`: the second subnet (the first would put a node's
//!   gateway on the network address); `SubnetMax` absent or `0.0.0.0`: the last subnet.
//!   Given: inside `Network` and on a `SubnetLen` boundary;
//! * VXLAN: `VNI` default 1, `Port` absent or 0 means 8472 (the kernel's default that
//!   flanneld relies on);
//! * `host-gw` has no options: routes to each peer's subnet via its PublicIP, no
//!   encapsulation, so the overlay MTU is the underlay's.
//!
//! Where weft deliberately differs, the error says so: a missing `Backend` means
//! `vxlan` (flannel's historical default `udp` is not supported), weft is IPv4-only,
//! only `vxlan`, `ipip` and `host-gw` are supported, VXLAN `GBP` is not supported, `SubnetMin` must
//! not be after `SubnetMax`, and unknown keys are rejected instead of silently ignored
//! (a typo such as `SubnetLem` would otherwise change the whole cluster's layout).

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde_json::{Map, Value};

/// The VXLAN UDP port when `Backend.Port` is absent or 0 (the Linux kernel's default,
/// which flanneld uses).
pub const DEFAULT_VXLAN_PORT: u16 = 8472;
/// The VXLAN network identifier when `Backend.VNI` is absent.
pub const DEFAULT_VNI: u32 = 1;
/// The largest VNI: the field is 24 bits wide.
pub const MAX_VNI: u32 = (1 << 24) - 1;
/// The smallest MTU an IPv4 link may have (RFC 791).
const MIN_IPV4_MTU: u32 = 68;

/// A validated cluster network configuration (flannel's defaults applied).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConf {
    /// `Network`: the cluster network, e.g. 10.244.0.0/16 (host bits cleared).
    pub network: Ipv4Net,
    /// `SubnetLen`: prefix length of each node's subnet (default 24, or network + 2 when
    /// the network is smaller than /22, per flannel's rules).
    pub subnet_len: u8,
    /// `SubnetMin`: first subnet that may be leased (default: the second subnet).
    pub subnet_min: Ipv4Addr,
    /// `SubnetMax`: last subnet that may be leased (default: the last subnet).
    pub subnet_max: Ipv4Addr,
    /// `Backend`; missing means VXLAN with flannel's defaults.
    pub backend: Backend,
    /// `Backend.MTU` (VXLAN only): the underlay MTU to assume instead of the underlay
    /// interface's MTU; the overlay MTU is this minus [`Backend::overhead`].
    pub underlay_mtu: Option<u32>,
}

/// The overlay backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// `{"Type":"vxlan","VNI":1,"Port":8472,"DirectRouting":false}`
    Vxlan {
        vni: u32,
        port: u16,
        direct_routing: bool,
    },
    /// `{"Type":"ipip","DirectRouting":false}`
    Ipip { direct_routing: bool },
    /// `{"Type":"host-gw"}`: plain routes via the peers' PublicIPs on one L2 network.
    HostGw,
}

impl Default for Backend {
    /// What a net-conf without `Backend` means to weft: VXLAN, VNI 1, port 8472.
    fn default() -> Self {
        Backend::Vxlan {
            vni: DEFAULT_VNI,
            port: DEFAULT_VXLAN_PORT,
            direct_routing: false,
        }
    }
}

impl Backend {
    /// The `BackendType` string flannel writes into leases: `vxlan`, `ipip`, `host-gw`.
    pub fn type_name(&self) -> &'static str {
        match self {
            Backend::Vxlan { .. } => "vxlan",
            Backend::Ipip { .. } => "ipip",
            Backend::HostGw => "host-gw",
        }
    }

    /// Bytes of encapsulation overhead: 50 for VXLAN, 20 for IPIP, none for host-gw.
    pub fn overhead(&self) -> u32 {
        match self {
            Backend::Vxlan { .. } => 50,
            Backend::Ipip { .. } => 20,
            Backend::HostGw => 0,
        }
    }

    /// `DirectRouting`: route directly (no encapsulation) to peers on the same L2 subnet.
    /// host-gw routes every peer directly; it has no tunnel to fall back to.
    pub fn direct_routing(&self) -> bool {
        match self {
            Backend::Vxlan { direct_routing, .. } | Backend::Ipip { direct_routing } => {
                *direct_routing
            }
            Backend::HostGw => true,
        }
    }
}

/// Why a net-conf was rejected. Every message starts with `net-conf:` and names the
/// field, the value and what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetConfError {
    #[error("net-conf: invalid JSON at line {line} column {column}: {message}")]
    Syntax {
        line: usize,
        column: usize,
        message: String,
    },
    #[error(
        "net-conf: expected a JSON object such as {{\"Network\": \"10.244.0.0/16\"}}, got {found}"
    )]
    NotAnObject { found: String },
    #[error("net-conf: unknown field \"{field}\"{location}; known fields{scope}: {known}")]
    UnknownField {
        /// The key as written, with its parent, e.g. `Backend.VNl`.
        field: String,
        /// ` at line L column C`, when the key could be located in the text.
        location: String,
        /// ` of a vxlan Backend` etc.
        scope: &'static str,
        known: String,
    },
    #[error("net-conf: {field} must be {expected}, got {found}")]
    WrongType {
        field: &'static str,
        expected: &'static str,
        found: String,
    },
    #[error("net-conf: Network is missing; it is the one required field, e.g. {{\"Network\": \"10.244.0.0/16\"}}")]
    MissingNetwork,
    #[error("net-conf: {field} {value} {problem}")]
    InvalidValue {
        field: &'static str,
        /// The value as JSON (strings quoted).
        value: String,
        problem: String,
    },
    #[error("net-conf: Backend.Type is missing; set \"Type\" to \"vxlan\", \"ipip\" or \"host-gw\" (or remove Backend for vxlan)")]
    MissingBackendType,
    #[error("net-conf: Backend.Type \"{backend_type}\" is not supported by weft; supported are \"vxlan\" (the default when Backend is absent), \"ipip\" and \"host-gw\"{hint}")]
    UnsupportedBackend {
        backend_type: String,
        hint: &'static str,
    },
}

const TOP_LEVEL_FIELDS: &[&str] = &[
    "Network",
    "SubnetLen",
    "SubnetMin",
    "SubnetMax",
    "Backend",
    "EnableIPv4",
    "EnableIPv6",
    "EnableNFTables",
    "IPv6Network",
    "IPv6SubnetLen",
    "IPv6SubnetMin",
    "IPv6SubnetMax",
];

/// flannel's VXLAN options. `Learning` (kernel FDB learning) has no counterpart in a
/// userspace data plane and is accepted without effect; `MacPrefix` and `Name` are
/// Windows-only in flannel and likewise ignored.
const VXLAN_FIELDS: &[&str] = &[
    "Type",
    "VNI",
    "Port",
    "GBP",
    "Learning",
    "DirectRouting",
    "MTU",
    "MacPrefix",
    "Name",
];

const IPIP_FIELDS: &[&str] = &["Type", "DirectRouting"];

/// flannel's host-gw backend has no options.
const HOST_GW_FIELDS: &[&str] = &["Type"];

impl NetConf {
    /// Parses and validates flannel's net-conf JSON, applying flannel's defaults.
    pub fn parse(json: &str) -> Result<NetConf, NetConfError> {
        let root: Value = serde_json::from_str(json).map_err(|e| NetConfError::Syntax {
            line: e.line(),
            column: e.column(),
            message: strip_position(&e.to_string()),
        })?;
        let Value::Object(map) = &root else {
            return Err(NetConfError::NotAnObject {
                found: describe(&root),
            });
        };
        let top = Object {
            map,
            text: json,
            parent: "",
        };
        top.reject_unknown(TOP_LEVEL_FIELDS, "")?;

        if let Some(false) = top.bool("EnableIPv4", "EnableIPv4")? {
            return Err(invalid(
                "EnableIPv4",
                "false",
                "is not supported: weft provides IPv4 pod networking only; remove EnableIPv4 or set it to true",
            ));
        }
        if let Some(true) = top.bool("EnableIPv6", "EnableIPv6")? {
            return Err(invalid(
                "EnableIPv6",
                "true",
                "is not supported: weft is IPv4-only; remove EnableIPv6 or set it to false",
            ));
        }
        // Accepted for compatibility; they mean nothing while EnableIPv6 is off, and
        // weft's masquerading does not depend on flannel's iptables/nftables choice.
        top.bool("EnableNFTables", "EnableNFTables")?;
        top.string("IPv6Network", "IPv6Network")?;
        top.integer("IPv6SubnetLen", "IPv6SubnetLen")?;
        top.string("IPv6SubnetMin", "IPv6SubnetMin")?;
        top.string("IPv6SubnetMax", "IPv6SubnetMax")?;

        let network = parse_network(top.string("Network", "Network")?)?;
        let subnet_len = subnet_len(network, top.integer("SubnetLen", "SubnetLen")?)?;
        let size = subnet_size(subnet_len);
        let first = u32::from(network.network());
        let subnet_min = match top.ipv4("SubnetMin", "SubnetMin")? {
            Some(addr) => check_bound("SubnetMin", addr, network, subnet_len)?,
            None => Ipv4Addr::from(first + size),
        };
        let subnet_max = match top.ipv4("SubnetMax", "SubnetMax")? {
            Some(addr) => check_bound("SubnetMax", addr, network, subnet_len)?,
            None => Ipv4Addr::from(u32::from(network.broadcast()) - (size - 1)),
        };
        if subnet_min > subnet_max {
            return Err(invalid(
                "SubnetMin",
                &quote(&subnet_min.to_string()),
                &format!(
                    "is after SubnetMax \"{subnet_max}\": no subnet could ever be leased; \
                     SubnetMin must be at most SubnetMax"
                ),
            ));
        }

        let (backend, underlay_mtu) = parse_backend(&top)?;
        Ok(NetConf {
            network,
            subnet_len,
            subnet_min,
            subnet_max,
            backend,
            underlay_mtu,
        })
    }

    /// A net-conf for `network` with flannel's defaults and the given backend, e.g. for
    /// tests: `NetConf::with_defaults("10.244.0.0/16".parse()?, Backend::default())`.
    pub fn with_defaults(network: Ipv4Net, backend: Backend) -> Result<NetConf, NetConfError> {
        let mut conf = NetConf::parse(&format!("{{\"Network\":\"{network}\"}}"))?;
        conf.backend = backend;
        Ok(conf)
    }

    /// The net-conf as flannel's JSON (flannel's field names, every default spelled
    /// out), e.g. to write to `<prefix>/config`. `NetConf::parse(&c.to_json()) == Ok(c)`.
    pub fn to_json(&self) -> String {
        let mut backend = Map::new();
        backend.insert("Type".into(), self.backend.type_name().into());
        match &self.backend {
            Backend::Vxlan {
                vni,
                port,
                direct_routing,
            } => {
                backend.insert("VNI".into(), (*vni).into());
                backend.insert("Port".into(), (*port).into());
                backend.insert("DirectRouting".into(), (*direct_routing).into());
                if let Some(mtu) = self.underlay_mtu {
                    backend.insert("MTU".into(), mtu.into());
                }
            }
            Backend::Ipip { direct_routing } => {
                backend.insert("DirectRouting".into(), (*direct_routing).into());
            }
            Backend::HostGw => {}
        }
        let mut root = Map::new();
        root.insert("Network".into(), self.network.to_string().into());
        root.insert("SubnetLen".into(), self.subnet_len.into());
        root.insert("SubnetMin".into(), self.subnet_min.to_string().into());
        root.insert("SubnetMax".into(), self.subnet_max.to_string().into());
        root.insert("Backend".into(), Value::Object(backend));
        Value::Object(root).to_string()
    }

    /// Number of addresses in one node subnet (256 for a /24).
    pub fn subnet_size(&self) -> u32 {
        subnet_size(self.subnet_len.min(32))
    }

    /// How many subnets lie between `SubnetMin` and `SubnetMax`, both included.
    pub fn subnet_count(&self) -> u64 {
        let (min, max) = (u32::from(self.subnet_min), u32::from(self.subnet_max));
        if min > max || self.subnet_len > 32 {
            return 0;
        }
        u64::from(max - min) / u64::from(self.subnet_size()) + 1
    }

    /// Every leasable subnet, from `SubnetMin` to `SubnetMax` in address order.
    pub fn subnets(&self) -> impl Iterator<Item = Ipv4Net> + '_ {
        let step = self.subnet_size();
        let min = u32::from(self.subnet_min);
        (0..self.subnet_count()).filter_map(move |i| {
            // `i < subnet_count` keeps `min + i * step` within SubnetMax, so no overflow.
            let addr = min + (i as u32) * step;
            Ipv4Net::new(Ipv4Addr::from(addr), self.subnet_len).ok()
        })
    }

    /// Whether `subnet` may be leased under this config: the right prefix length, on a
    /// boundary, and between `SubnetMin` and `SubnetMax`. Use it to vet a previous
    /// lease or a `subnet.env` before reusing it.
    pub fn is_leasable(&self, subnet: Ipv4Net) -> bool {
        subnet.prefix_len() == self.subnet_len
            && subnet.addr() == subnet.network()
            && (self.subnet_min..=self.subnet_max).contains(&subnet.addr())
    }

    /// The overlay MTU (TUN, cni0, pods) for an underlay interface MTU: `Backend.MTU`
    /// overrides the interface's MTU, then the backend's overhead is subtracted.
    pub fn overlay_mtu(&self, underlay_iface_mtu: u32) -> u32 {
        self.underlay_mtu
            .unwrap_or(underlay_iface_mtu)
            .saturating_sub(self.backend.overhead())
    }
}

fn subnet_size(subnet_len: u8) -> u32 {
    // A /0 would need 2^32; no validated config has one (SubnetLen >= 3).
    1u32.checked_shl(32 - u32::from(subnet_len))
        .unwrap_or(u32::MAX)
}

fn invalid(field: &'static str, value: &str, problem: &str) -> NetConfError {
    NetConfError::InvalidValue {
        field,
        value: value.to_owned(),
        problem: problem.to_owned(),
    }
}

fn quote(s: &str) -> String {
    Value::String(s.to_owned()).to_string()
}

fn parse_network(value: Option<&str>) -> Result<Ipv4Net, NetConfError> {
    let Some(text) = value else {
        return Err(NetConfError::MissingNetwork);
    };
    let bad = |problem: &str| invalid("Network", &quote(text), problem);
    let network: Ipv4Net =
        match text.parse() {
            Ok(net) => net,
            Err(_) if text.parse::<ipnet::Ipv6Net>().is_ok() => return Err(bad(
                "is an IPv6 network: weft is IPv4-only; use an IPv4 CIDR such as \"10.244.0.0/16\"",
            )),
            Err(_) if text.parse::<Ipv4Addr>().is_ok() => {
                return Err(bad(
                    "has no prefix length: write it in CIDR notation, e.g. \"10.244.0.0/16\"",
                ))
            }
            Err(_) => {
                return Err(bad(
                    "is not an IPv4 network in CIDR notation such as \"10.244.0.0/16\"",
                ))
            }
        };
    if network.prefix_len() == 0 {
        return Err(bad(
            "covers every IPv4 address; use a private range such as \"10.244.0.0/16\"",
        ));
    }
    // flannel (Go's net.ParseCIDR) clears host bits silently; a cluster's config must
    // mean the same to both daemons.
    Ok(network.trunc())
}

fn subnet_len(network: Ipv4Net, given: Option<i128>) -> Result<u8, NetConfError> {
    let prefix = network.prefix_len();
    match given {
        None | Some(0) => {
            if prefix > 28 {
                Err(invalid(
                    "Network",
                    &quote(&network.to_string()),
                    "is too small: the smallest usable network is a /28 \
                     (four subnets of four addresses each)",
                ))
            } else if prefix <= 22 {
                Ok(24)
            } else {
                Ok(prefix + 2)
            }
        }
        Some(len) => {
            let min = i128::from(prefix) + 2;
            let allowed = if min > 30 {
                format!("no SubnetLen fits Network {network}: it is smaller than a /28")
            } else {
                format!("allowed for Network {network}: {min} to 30")
            };
            if len > 30 {
                Err(invalid(
                    "SubnetLen",
                    &len.to_string(),
                    &format!(
                        "must be at most 30: each subnet needs room for a gateway and at \
                         least one pod ({allowed})"
                    ),
                ))
            } else if len < min {
                Err(invalid(
                    "SubnetLen",
                    &len.to_string(),
                    &format!(
                        "must be at least {min}, the Network prefix /{prefix} + 2: the \
                         network must hold at least four subnets, as flannel requires \
                         ({allowed})"
                    ),
                ))
            } else {
                Ok(len as u8)
            }
        }
    }
}

fn check_bound(
    field: &'static str,
    addr: Ipv4Addr,
    network: Ipv4Net,
    subnet_len: u8,
) -> Result<Ipv4Addr, NetConfError> {
    let value = quote(&addr.to_string());
    if !network.contains(&addr) {
        return Err(invalid(
            field,
            &value,
            &format!("is outside Network {network}: it must be a subnet address inside it"),
        ));
    }
    let aligned = Ipv4Net::new(addr, subnet_len)
        .expect("subnet_len was validated to be at most 30")
        .network();
    if aligned != addr {
        return Err(invalid(
            field,
            &value,
            &format!(
                "is not on a SubnetLen boundary (/{subnet_len}): use a subnet's first \
                 address, e.g. \"{aligned}\""
            ),
        ));
    }
    Ok(addr)
}

fn parse_backend(top: &Object<'_>) -> Result<(Backend, Option<u32>), NetConfError> {
    let Some(value) = top.get("Backend") else {
        return Ok((Backend::default(), None));
    };
    let Value::Object(map) = value else {
        return Err(NetConfError::WrongType {
            field: "Backend",
            expected: "an object such as {\"Type\": \"vxlan\"}",
            found: describe(value),
        });
    };
    let backend = Object {
        map,
        text: top.text,
        parent: "Backend.",
    };
    let Some(backend_type) = backend.string("Type", "Backend.Type")? else {
        return Err(NetConfError::MissingBackendType);
    };
    match backend_type {
        "vxlan" => {
            backend.reject_unknown(VXLAN_FIELDS, " of a vxlan Backend")?;
            let vni = match backend.integer("VNI", "Backend.VNI")? {
                None => DEFAULT_VNI,
                Some(v) if (0..=i128::from(MAX_VNI)).contains(&v) => v as u32,
                Some(v) => {
                    return Err(invalid(
                        "Backend.VNI",
                        &v.to_string(),
                        &format!("is out of range: a VNI is 24 bits, from 0 to {MAX_VNI}"),
                    ))
                }
            };
            let port = match backend.integer("Port", "Backend.Port")? {
                None | Some(0) => DEFAULT_VXLAN_PORT,
                Some(p) if (1..=65535).contains(&p) => p as u16,
                Some(p) => {
                    return Err(invalid(
                        "Backend.Port",
                        &p.to_string(),
                        "is not a UDP port: use 1 to 65535 (absent or 0 means 8472; \
                         4789 is the IANA port)",
                    ))
                }
            };
            if let Some(true) = backend.bool("GBP", "Backend.GBP")? {
                return Err(invalid(
                    "Backend.GBP",
                    "true",
                    "is not supported by weft (VXLAN Group Based Policy); remove it or set it to false",
                ));
            }
            backend.bool("Learning", "Backend.Learning")?;
            backend.string("MacPrefix", "Backend.MacPrefix")?;
            backend.string("Name", "Backend.Name")?;
            let direct_routing = backend
                .bool("DirectRouting", "Backend.DirectRouting")?
                .unwrap_or(false);
            let overhead = Backend::default().overhead();
            let underlay_mtu = match backend.integer("MTU", "Backend.MTU")? {
                // flannel: 0 means "use the interface's MTU", like absent.
                None | Some(0) => None,
                Some(m) if (i128::from(MIN_IPV4_MTU + overhead)..=65535).contains(&m) => {
                    Some(m as u32)
                }
                Some(m) => {
                    return Err(invalid(
                        "Backend.MTU",
                        &m.to_string(),
                        &format!(
                            "is out of range: the underlay MTU must be between {} (68 for \
                             pods + {overhead} bytes of VXLAN) and 65535",
                            MIN_IPV4_MTU + overhead
                        ),
                    ))
                }
            };
            Ok((
                Backend::Vxlan {
                    vni,
                    port,
                    direct_routing,
                },
                underlay_mtu,
            ))
        }
        "ipip" => {
            backend.reject_unknown(IPIP_FIELDS, " of an ipip Backend")?;
            let direct_routing = backend
                .bool("DirectRouting", "Backend.DirectRouting")?
                .unwrap_or(false);
            Ok((Backend::Ipip { direct_routing }, None))
        }
        "host-gw" => {
            backend.reject_unknown(HOST_GW_FIELDS, " of a host-gw Backend")?;
            Ok((Backend::HostGw, None))
        }
        other => Err(NetConfError::UnsupportedBackend {
            backend_type: other.to_owned(),
            hint: unsupported_hint(other),
        }),
    }
}

fn unsupported_hint(backend_type: &str) -> &'static str {
    match backend_type {
        "udp" => "; \"udp\" is flannel's historical default and its slowest backend: use \"vxlan\"",
        "host_gw" | "hostgw" | "hostGw" => "; flannel's name for it is \"host-gw\"",
        "VXLAN" | "Vxlan" | "IPIP" | "Ipip" | "HOST-GW" | "Host-Gw" => {
            "; the type is case-sensitive: write it in lower case"
        }
        "" => "; Type is empty",
        _ => "",
    }
}

/// A JSON object being read, with Go's key matching and field-naming errors.
struct Object<'a> {
    map: &'a Map<String, Value>,
    /// The whole document, to locate keys for error messages.
    text: &'a str,
    /// `""` at the top level, `"Backend."` inside the backend.
    parent: &'static str,
}

impl<'a> Object<'a> {
    /// The value of `name`: an exact key match first, else a case-insensitive one (as
    /// Go's `encoding/json` does); `null` counts as absent, as in Go.
    fn get(&self, name: &str) -> Option<&'a Value> {
        let value = self.map.get(name).or_else(|| {
            self.map
                .iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(name))
                .map(|(_, value)| value)
        })?;
        (!value.is_null()).then_some(value)
    }

    fn reject_unknown(&self, known: &[&str], scope: &'static str) -> Result<(), NetConfError> {
        for key in self.map.keys() {
            if !known.iter().any(|k| k.eq_ignore_ascii_case(key)) {
                let location = locate_key(self.text, key)
                    .map(|(line, column)| format!(" at line {line} column {column}"))
                    .unwrap_or_default();
                return Err(NetConfError::UnknownField {
                    field: format!("{}{key}", self.parent),
                    location,
                    scope,
                    known: known.join(", "),
                });
            }
        }
        Ok(())
    }

    fn string(&self, name: &str, field: &'static str) -> Result<Option<&'a str>, NetConfError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(NetConfError::WrongType {
                field,
                expected: "a string",
                found: describe(other),
            }),
        }
    }

    fn bool(&self, name: &str, field: &'static str) -> Result<Option<bool>, NetConfError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(NetConfError::WrongType {
                field,
                expected: "true or false",
                found: describe(other),
            }),
        }
    }

    /// A whole number of any size (range checks are the caller's, with its own message).
    fn integer(&self, name: &str, field: &'static str) -> Result<Option<i128>, NetConfError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) if n.is_i64() || n.is_u64() => {
                Ok(n.as_i64().map(i128::from).or(n.as_u64().map(i128::from)))
            }
            Some(other) => Err(NetConfError::WrongType {
                field,
                expected: "a whole number",
                found: describe(other),
            }),
        }
    }

    /// An IPv4 address; `"0.0.0.0"` means absent, as in flannel.
    fn ipv4(&self, name: &str, field: &'static str) -> Result<Option<Ipv4Addr>, NetConfError> {
        let Some(text) = self.string(name, field)? else {
            return Ok(None);
        };
        match text.parse::<Ipv4Addr>() {
            Ok(addr) if addr.is_unspecified() => Ok(None),
            Ok(addr) => Ok(Some(addr)),
            Err(_) => Err(invalid(
                field,
                &quote(text),
                "is not an IPv4 address such as \"10.244.1.0\"",
            )),
        }
    }
}

/// A short description of a JSON value for "got ..." in messages.
fn describe(value: &Value) -> String {
    let kind = match value {
        Value::Null => return "null".into(),
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    let mut text = value.to_string();
    if text.chars().count() > 40 {
        text = text.chars().take(37).collect::<String>() + "...";
    }
    let mut out = String::new();
    let _ = write!(out, "{text} ({kind})");
    out
}

/// serde_json appends " at line L column C"; our message carries them separately.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

/// 1-based line and column of the first `"key"` that is followed by a colon.
fn locate_key(text: &str, key: &str) -> Option<(usize, usize)> {
    let needle = format!("\"{key}\"");
    let mut from = 0;
    while let Some(found) = text[from..].find(&needle) {
        let start = from + found;
        let after = &text[start + needle.len()..];
        if after.trim_start().starts_with(':') {
            let before = &text[..start];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            return Some((line, column));
        }
        from = start + needle.len();
    }
    None
}
