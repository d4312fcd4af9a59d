//! flannel's `subnet.env` (read by the CNI plugin, written by weftd).
//!
//! INTERFACE: `SubnetEnv::parse(&str)`, `SubnetEnv::render()`, `SubnetEnv::read(path)`,
//! `SubnetEnv::write_atomic(path)` (temp file + rename).

use ipnet::Ipv4Net;

/// ```text
/// FLANNEL_NETWORK=10.244.0.0/16
/// FLANNEL_SUBNET=10.244.1.1/24
/// FLANNEL_MTU=1450
/// FLANNEL_IPMASQ=false
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetEnv {
    pub network: Ipv4Net,
    /// The node's subnet with the gateway (`.1`) as its address, e.g. 10.244.1.1/24.
    pub subnet: Ipv4Net,
    pub mtu: u32,
    pub ipmasq: bool,
}
