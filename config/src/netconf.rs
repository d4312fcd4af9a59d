//! flannel's net-conf JSON, as stored at `<prefix>/config`.
//!
//! INTERFACE (shared with the daemon; keep these names): `NetConf::parse(&str)`,
//! the public fields below, `Backend`.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// A validated cluster network configuration (flannel's defaults applied).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConf {
    /// `Network`: the cluster network, e.g. 10.244.0.0/16.
    pub network: Ipv4Net,
    /// `SubnetLen`: prefix length of each node's subnet (default 24, or network+4 when the
    /// network is /24 or smaller... per flannel's rules).
    pub subnet_len: u8,
    /// `SubnetMin`: first subnet that may be leased (default: the second subnet).
    pub subnet_min: Ipv4Addr,
    /// `SubnetMax`: last subnet that may be leased (default: the last subnet).
    pub subnet_max: Ipv4Addr,
    /// `Backend`; missing means VXLAN with flannel's defaults.
    pub backend: Backend,
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
}

impl Backend {
    /// The `BackendType` string flannel writes into leases: `vxlan` or `ipip`.
    pub fn type_name(&self) -> &'static str {
        match self {
            Backend::Vxlan { .. } => "vxlan",
            Backend::Ipip { .. } => "ipip",
        }
    }

    /// Bytes of encapsulation overhead: 50 for VXLAN, 20 for IPIP.
    pub fn overhead(&self) -> u32 {
        match self {
            Backend::Vxlan { .. } => 50,
            Backend::Ipip { .. } => 20,
        }
    }
}
