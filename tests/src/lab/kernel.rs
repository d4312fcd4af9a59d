//! "kernel-flannel" nodes: the node's overlay is the Linux kernel's vxlan device,
//! programmed exactly the way flanneld's vxlan backend programs it
//! (flannel `pkg/backend/vxlan`), and its lease is in flannel's etcd schema.
//!
//! * `flannel.<VNI>`: `vxlan id VNI local <PublicIP> dev eth0 dstport <port> nolearning`,
//!   MTU = underlay MTU - 50, address `<subnet>.0/32`;
//! * per remote lease: route `<subnet>/24 via <subnet>.0 dev flannel.1 onlink`, a
//!   permanent neighbour `<subnet>.0 → VtepMAC`, and an fdb entry
//!   `VtepMAC → PublicIP` (flannel's `NeighSet` with `NTF_SELF`, i.e. `bridge fdb replace`).

use std::collections::HashSet;
use std::net::Ipv4Addr;

use anyhow::Context as _;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::netns::Netns;

/// One lease of flannel's schema (`<prefix>/subnets/10.244.1.0-24`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlannelLease {
    pub subnet: Ipv4Net,
    pub public_ip: Ipv4Addr,
    pub backend_type: String,
    /// `BackendData.VtepMAC` (vxlan only).
    pub vtep_mac: Option<String>,
}

impl FlannelLease {
    /// Parses a key (`<prefix>/subnets/10.244.1.0-24`) and its JSON value.
    pub fn parse(key: &str, value: &str) -> anyhow::Result<FlannelLease> {
        let last = key.rsplit('/').next().unwrap_or(key);
        let subnet: Ipv4Net = last.replacen('-', "/", 1).parse().with_context(|| {
            format!("lease key {key:?} does not end in a subnet like 10.244.1.0-24")
        })?;
        let v: serde_json::Value = serde_json::from_str(value)
            .with_context(|| format!("lease {key}: value is not JSON: {value:?}"))?;
        let public_ip = v
            .get("PublicIP")
            .and_then(|p| p.as_str())
            .ok_or_else(|| anyhow::anyhow!("lease {key}: no PublicIP in {value}"))?
            .parse()
            .with_context(|| format!("lease {key}: bad PublicIP"))?;
        let backend_type = v
            .get("BackendType")
            .and_then(|t| t.as_str())
            .unwrap_or("")
            .to_owned();
        let vtep_mac = v
            .pointer("/BackendData/VtepMAC")
            .and_then(|m| m.as_str())
            .map(str::to_owned);
        Ok(FlannelLease {
            subnet,
            public_ip,
            backend_type,
            vtep_mac,
        })
    }

    /// The JSON value flanneld writes for a vxlan lease.
    pub fn vxlan_value(public_ip: Ipv4Addr, vni: u32, vtep_mac: &str) -> String {
        serde_json::json!({
            "PublicIP": public_ip.to_string(),
            "PublicIPv6": null,
            "BackendType": "vxlan",
            "BackendData": {"VNI": vni, "VtepMAC": vtep_mac},
        })
        .to_string()
    }
}

/// The key of a subnet's lease: `<prefix>/subnets/10.244.1.0-24`.
pub fn lease_key(etcd_prefix: &str, subnet: Ipv4Net) -> String {
    format!(
        "{etcd_prefix}/subnets/{}-{}",
        subnet.network(),
        subnet.prefix_len()
    )
}

pub fn vxlan_dev(vni: u32) -> String {
    format!("flannel.{vni}")
}

/// Creates the node's vxlan device and `cni0` the way flanneld (+ the bridge CNI plugin
/// for cni0) leave a node. Returns the VtepMAC.
pub fn setup_node(
    ns: &Netns,
    public_ip: Ipv4Addr,
    subnet: Ipv4Net,
    vni: u32,
    port: u16,
    mtu: u32,
) -> anyhow::Result<String> {
    let dev = vxlan_dev(vni);
    ns.ip(&[
        "link",
        "add",
        &dev,
        "type",
        "vxlan",
        "id",
        &vni.to_string(),
        "local",
        &public_ip.to_string(),
        "dev",
        "eth0",
        "dstport",
        &port.to_string(),
        "nolearning",
    ])
    .context("creating the kernel vxlan device")?;
    ns.ip(&["link", "set", &dev, "mtu", &mtu.to_string()])?;
    ns.ip(&[
        "addr",
        "add",
        &format!("{}/32", subnet.network()),
        "dev",
        &dev,
    ])?;
    ns.ip(&["link", "set", &dev, "up"])?;
    ns.ip(&["link", "add", "cni0", "type", "bridge"])?;
    ns.ip(&["link", "set", "cni0", "mtu", &mtu.to_string()])?;
    ns.ip(&["addr", "add", &gateway_cidr(subnet), "dev", "cni0"])?;
    ns.ip(&["link", "set", "cni0", "up"])?;
    ns.run("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
    crate::link::mac_of(ns, &dev)
}

/// `10.244.X.1/24` for `10.244.X.0/24`.
pub fn gateway_cidr(subnet: Ipv4Net) -> String {
    format!(
        "{}/{}",
        Ipv4Addr::from(u32::from(subnet.network()) + 1),
        subnet.prefix_len()
    )
}

/// Programs routes, neighbours and fdb entries for every remote vxlan lease and removes
/// the ones of leases that are gone. Idempotent.
pub fn sync_node(
    ns: &Netns,
    own_subnet: Ipv4Net,
    vni: u32,
    leases: &[FlannelLease],
) -> anyhow::Result<()> {
    let dev = vxlan_dev(vni);
    let remote: Vec<(&FlannelLease, &str)> = leases
        .iter()
        .filter(|l| l.subnet != own_subnet && l.backend_type == "vxlan")
        .filter_map(|l| l.vtep_mac.as_deref().map(|m| (l, m)))
        .collect();

    // Remove what belongs to leases that no longer exist (or changed).
    let want_routes: HashSet<String> = remote.iter().map(|(l, _)| l.subnet.to_string()).collect();
    for route in json_list(ns.ip(&["-j", "route", "show", "dev", &dev])?)? {
        if let Some(dst) = route.get("dst").and_then(|d| d.as_str()) {
            if dst.contains('/') && !want_routes.contains(dst) {
                ns.ip(&["route", "del", dst, "dev", &dev])?;
            }
        }
    }
    let want_neigh: HashSet<String> = remote
        .iter()
        .map(|(l, m)| format!("{} {}", l.subnet.network(), m.to_lowercase()))
        .collect();
    for n in json_list(ns.ip(&["-j", "neigh", "show", "dev", &dev])?)? {
        let (Some(dst), Some(mac)) = (
            n.get("dst").and_then(|d| d.as_str()),
            n.get("lladdr").and_then(|d| d.as_str()),
        ) else {
            continue;
        };
        if !want_neigh.contains(&format!("{dst} {}", mac.to_lowercase())) {
            ns.ip(&["neigh", "del", dst, "dev", &dev])?;
        }
    }
    let want_fdb: HashSet<String> = remote
        .iter()
        .map(|(l, m)| format!("{} {}", m.to_lowercase(), l.public_ip))
        .collect();
    let fdb = bridge(ns, &["-j", "fdb", "show", "dev", &dev])?;
    for e in json_list(fdb)? {
        let (Some(mac), Some(dst)) = (
            e.get("mac").and_then(|d| d.as_str()),
            e.get("dst").and_then(|d| d.as_str()),
        ) else {
            continue;
        };
        if !want_fdb.contains(&format!("{} {dst}", mac.to_lowercase())) {
            bridge(ns, &["fdb", "del", mac, "dev", &dev, "dst", dst, "self"])?;
        }
    }

    for (lease, mac) in remote {
        let gw = lease.subnet.network().to_string();
        ns.ip(&[
            "route",
            "replace",
            &lease.subnet.to_string(),
            "via",
            &gw,
            "dev",
            &dev,
            "onlink",
        ])?;
        ns.ip(&[
            "neigh",
            "replace",
            &gw,
            "lladdr",
            mac,
            "dev",
            &dev,
            "nud",
            "permanent",
        ])?;
        bridge(
            ns,
            &[
                "fdb",
                "replace",
                mac,
                "dev",
                &dev,
                "dst",
                &lease.public_ip.to_string(),
                "self",
                "permanent",
            ],
        )?;
    }
    Ok(())
}

fn bridge(ns: &Netns, args: &[&str]) -> anyhow::Result<String> {
    crate::run_cmd(
        std::process::Command::new("bridge")
            .arg("-n")
            .arg(ns.name())
            .args(args),
    )
}

fn json_list(out: String) -> anyhow::Result<Vec<serde_json::Value>> {
    if out.trim().is_empty() {
        return Ok(Vec::new());
    }
    let v: serde_json::Value =
        serde_json::from_str(&out).with_context(|| format!("parsing iproute2 JSON {out:?}"))?;
    Ok(v.as_array().cloned().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_flannels_lease_record() {
        let value = FlannelLease::vxlan_value(Ipv4Addr::new(192, 0, 2, 3), 1, "02:aa:bb:cc:dd:ee");
        let l = FlannelLease::parse("/coreos.com/network/subnets/10.244.7.0-24", &value).unwrap();
        assert_eq!(l.subnet, "10.244.7.0/24".parse::<Ipv4Net>().unwrap());
        assert_eq!(l.public_ip, Ipv4Addr::new(192, 0, 2, 3));
        assert_eq!(l.backend_type, "vxlan");
        assert_eq!(l.vtep_mac.as_deref(), Some("02:aa:bb:cc:dd:ee"));
        assert!(value.contains("\"PublicIPv6\":null"), "{value}");
        assert_eq!(
            lease_key("/coreos.com/network", l.subnet),
            "/coreos.com/network/subnets/10.244.7.0-24"
        );
    }

    #[test]
    fn rejects_bad_lease_records() {
        assert!(FlannelLease::parse("/p/subnets/garbage", "{}").is_err());
        assert!(FlannelLease::parse("/p/subnets/10.244.1.0-24", "not json").is_err());
        assert!(FlannelLease::parse("/p/subnets/10.244.1.0-24", "{}").is_err());
    }
}
