//! CHECK: the attachment is still what ADD reported (bridge, host veth, pod interface,
//! addresses, routes, the address held by IPAM); every difference is named.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde_json::Value;
use weft_netlink::Netlink;

use super::{host_veth_name, node_net, Invocation};
use crate::delegate;
use crate::error::{code, CniError};
use crate::ipam::Store;
use crate::netns::open_netns;
use crate::result::CniResult;

pub async fn check(inv: &Invocation<'_>) -> Result<(), CniError> {
    let conf = &inv.conf;
    let env = &inv.env;
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            "CHECK needs the prevResult of the ADD",
        )
    })?;
    let prev = CniResult::from_value(prev, "prevResult")?;
    let netns_path = env
        .netns
        .clone()
        .ok_or_else(|| CniError::new(code::INVALID_ENV, "CNI_NETNS is required for CHECK"))?;
    let pod_ns = open_netns(&netns_path)?;
    let node = node_net(conf)?;
    let mut diffs: Vec<String> = Vec::new();

    // What ADD reported for this attachment.
    let pod_iface_index = prev.interfaces.iter().position(|i| {
        i.get("name").and_then(Value::as_str) == Some(env.ifname.as_str())
            && i.get("sandbox").and_then(Value::as_str).is_some()
    });
    let expected_ips: Vec<Ipv4Net> = prev
        .ips
        .iter()
        .filter(|ip| {
            pod_iface_index.is_none()
                || ip.get("interface").and_then(Value::as_u64) == pod_iface_index.map(|i| i as u64)
        })
        .filter_map(|ip| ip.get("address")?.as_str()?.parse::<Ipv4Net>().ok())
        .collect();
    if pod_iface_index.is_none() {
        diffs.push(format!(
            "prevResult has no interface {} with a sandbox",
            env.ifname
        ));
    }
    if expected_ips.is_empty() {
        diffs.push(format!("prevResult has no IPv4 address for {}", env.ifname));
    }
    let gateway = node.gateway.addr();
    let expected_routes: Vec<(Ipv4Net, Ipv4Addr)> = prev
        .routes
        .iter()
        .filter_map(|r| {
            let dst = r.get("dst")?.as_str()?.parse::<Ipv4Net>().ok()?;
            let gw = r
                .get("gw")
                .and_then(Value::as_str)
                .and_then(|g| g.parse().ok())
                .unwrap_or(gateway);
            Some((dst.trunc(), gw))
        })
        .collect();

    // Host side.
    let host = Netlink::connect()?;
    let bridge = host.link(&conf.bridge).await?;
    let host_name = host_veth_name(&env.container_id, &env.ifname);
    let host_link = host.link(&host_name).await?;
    match (&bridge, &host_link) {
        (None, _) => diffs.push(format!("bridge {} does not exist", conf.bridge)),
        (Some(b), _) if !b.up => diffs.push(format!("bridge {} is down", conf.bridge)),
        _ => {}
    }
    match &host_link {
        None => diffs.push(format!("host veth {host_name} does not exist")),
        Some(link) => {
            if let Some(b) = &bridge {
                if link.master != Some(b.index) {
                    diffs.push(format!(
                        "host veth {host_name} is not a port of {}",
                        conf.bridge
                    ));
                }
            }
            if !link.up {
                diffs.push(format!("host veth {host_name} is down"));
            }
            if link.mtu != node.mtu {
                diffs.push(format!(
                    "host veth {host_name} has MTU {}, expected {}",
                    link.mtu, node.mtu
                ));
            }
        }
    }

    // Pod side.
    let pod = Netlink::connect_in(&pod_ns)?;
    match pod.link(&env.ifname).await? {
        None => diffs.push(format!(
            "interface {} does not exist in the pod",
            env.ifname
        )),
        Some(link) => {
            if !link.up {
                diffs.push(format!("pod interface {} is down", env.ifname));
            }
            if link.mtu != node.mtu {
                diffs.push(format!(
                    "pod interface {} has MTU {}, expected {}",
                    env.ifname, link.mtu, node.mtu
                ));
            }
            let have: Vec<Ipv4Net> = pod
                .addresses(link.index)
                .await
                .map_err(|e| CniError::netlink("listing pod addresses", e))?;
            for ip in &expected_ips {
                if !have.contains(ip) {
                    diffs.push(format!("pod interface {} lacks address {ip}", env.ifname));
                }
            }
            let routes = pod
                .ipv4_routes()
                .await
                .map_err(|e| CniError::netlink("listing pod routes", e))?;
            for (dst, gw) in &expected_routes {
                // Routes of a result belong to the pod, not to one interface: another
                // attachment may already carry the same route.
                let present = routes.iter().any(|(d, g, _)| d == dst && *g == Some(*gw));
                if !present {
                    diffs.push(format!("pod route {dst} via {gw} is missing"));
                }
            }
        }
    }

    // Addressing.
    match conf.ipam_type() {
        None => {
            let store = Store::open_existing(&conf.data_dir, &conf.name)?;
            let held = match &store {
                Some(s) => s.find(&env.container_id, &env.ifname)?,
                None => None,
            };
            for ip in &expected_ips {
                if held != Some(ip.addr()) {
                    diffs.push(format!(
                        "IPAM store {} does not hold {} for this container",
                        conf.data_dir.join(&conf.name).display(),
                        ip.addr()
                    ));
                }
            }
        }
        Some(plugin) => {
            if let Err(e) = delegate::exec(&env.cni_path, plugin, "CHECK", inv.stdin) {
                diffs.push(e.msg);
            }
        }
    }

    if diffs.is_empty() {
        Ok(())
    } else {
        Err(CniError::new(
            code::CHECK_MISMATCH,
            format!(
                "CHECK found {} difference(s): {}",
                diffs.len(),
                diffs.join("; ")
            ),
        )
        .with_details(diffs.join("\n")))
    }
}
