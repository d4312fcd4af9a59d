//! ADD: the address (built-in IPAM or the delegated plugin), then the veth pair, the
//! bridge port, the pod's address and routes. A failed ADD undoes what it did.

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsFd as _;
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net};
use serde_json::{json, Map, Value};
use weft_config::cni::CniNetConf;
use weft_netlink::{mac_string, Netlink};

use super::{host_veth_name, node_net, release, Invocation, NodeNet};
use crate::delegate;
use crate::error::{code, CniError};
use crate::ipam::{Pool, Store};
use crate::netns::{current_netns, open_netns};
use crate::result::CniResult;

/// How long ADD waits for the host end of the veth to be really up (carrier on).
const LINK_UP_DEADLINE: Duration = Duration::from_secs(5);

/// The addressing of one attachment (from built-in IPAM or the delegated plugin).
#[derive(Debug, Clone)]
struct Addressing {
    address: Ipv4Net,
    gateway: Ipv4Addr,
    routes: Vec<(Ipv4Net, Ipv4Addr)>,
    dns: Option<Value>,
}

fn default_route() -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::UNSPECIFIED, 0).expect("0 is a valid prefix")
}

/// Crash-test hook: with `WEFT_CNI_STOP_AT=<point>` the plugin stops itself (SIGSTOP)
/// at that point of ADD, so a test can SIGKILL it at a known place instead of racing a
/// timer. Points: `after-ipam` (address reserved, no veth yet), `after-veth` (veth
/// created, not configured).
fn fault_point(point: &str) {
    if std::env::var_os("WEFT_CNI_STOP_AT").is_some_and(|p| p == point) {
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGSTOP);
    }
}

pub async fn add(inv: &Invocation<'_>) -> Result<CniResult, CniError> {
    let conf = &inv.conf;
    let env = &inv.env;
    let netns_path = env
        .netns
        .clone()
        .ok_or_else(|| CniError::new(code::INVALID_ENV, "CNI_NETNS is required for ADD"))?;
    // Everything that can be refused is checked before anything is changed.
    let mut result = match &conf.prev_result {
        Some(prev) => CniResult::from_value(prev, "prevResult")?,
        None => CniResult::default(),
    };
    let pod_ns = open_netns(&netns_path)?;
    let host_ns = current_netns()?;
    let node = node_net(conf)?;
    let host = Netlink::connect()?;
    let bridge = host
        .ensure_bridge(&conf.bridge, node.gateway, node.mtu)
        .await
        .map_err(|e| CniError::netlink("preparing the pod bridge", e))?;

    let addressing = allocate(inv, &node)?;
    fault_point("after-ipam");
    let host_name = host_veth_name(&env.container_id, &env.ifname);
    let attached = attach(
        &host,
        &host_ns,
        &pod_ns,
        bridge.index,
        &host_name,
        &env.ifname,
        node.mtu,
        conf.hairpin_mode,
        &addressing,
    )
    .await;
    let (host_mac, pod_mac) = match attached {
        Ok(macs) => macs,
        Err(e) => {
            // Leave nothing behind: the host end takes the pod end with it.
            let _ = host.delete_link_named(&host_name).await;
            let _ = release(inv);
            return Err(e);
        }
    };

    let mut ours = CniResult::default();
    ours.interfaces.push(obj(
        json!({"name": conf.bridge, "mac": mac_string(&bridge.mac)}),
    ));
    ours.interfaces
        .push(obj(json!({"name": host_name, "mac": host_mac})));
    ours.interfaces.push(obj(json!({
        "name": env.ifname, "mac": pod_mac, "sandbox": netns_path.display().to_string(),
        "mtu": node.mtu,
    })));
    ours.ips.push(obj(json!({
        "address": addressing.address.to_string(),
        "gateway": addressing.gateway.to_string(),
        "interface": 2,
    })));
    for (dst, gw) in &addressing.routes {
        ours.routes
            .push(obj(json!({"dst": dst.to_string(), "gw": gw.to_string()})));
    }
    ours.dns = addressing.dns.clone();

    result.append(ours);
    Ok(result)
}

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn allocate(inv: &Invocation<'_>, node: &NodeNet) -> Result<Addressing, CniError> {
    let conf = &inv.conf;
    match conf.ipam_type() {
        None => {
            let pool = Pool {
                subnet: node.gateway.trunc(),
                gateway: node.gateway.addr(),
            };
            let store = Store::open(&conf.data_dir, &conf.name)?;
            let ip = store.allocate(
                &pool,
                &inv.env.container_id,
                &inv.env.ifname,
                inv.env.pod.as_ref(),
            )?;
            let dst = if conf.is_default_gateway {
                default_route()
            } else {
                node.network
            };
            Ok(Addressing {
                address: Ipv4Net::new(ip, node.gateway.prefix_len()).expect("valid prefix"),
                gateway: node.gateway.addr(),
                routes: vec![(dst, node.gateway.addr())],
                dns: conf.dns.clone(),
            })
        }
        Some(plugin) => {
            let out =
                delegate::exec(&inv.env.cni_path, plugin, "ADD", inv.stdin)?.ok_or_else(|| {
                    CniError::new(
                        code::IPAM_PLUGIN,
                        format!("IPAM plugin {plugin} printed no result"),
                    )
                })?;
            match addressing_from_ipam(&out, node, conf) {
                Ok(a) => Ok(a),
                Err(e) => {
                    let _ = delegate::exec(&inv.env.cni_path, plugin, "DEL", inv.stdin);
                    Err(e)
                }
            }
        }
    }
}

fn addressing_from_ipam(
    out: &Value,
    node: &NodeNet,
    conf: &CniNetConf,
) -> Result<Addressing, CniError> {
    let plugin = conf.ipam_type().unwrap_or("ipam");
    let result = CniResult::from_value(out, &format!("result of IPAM plugin {plugin}"))?;
    let mut v4 = None;
    for ip in &result.ips {
        match ip
            .get("address")
            .and_then(Value::as_str)
            .map(str::parse::<IpNet>)
        {
            Some(Ok(IpNet::V4(net))) if v4.is_none() => {
                let gw = ip
                    .get("gateway")
                    .and_then(Value::as_str)
                    .and_then(|g| g.parse::<Ipv4Addr>().ok())
                    .unwrap_or(node.gateway.addr());
                v4 = Some((net, gw));
            }
            Some(Ok(IpNet::V4(_))) => {
                return Err(CniError::new(
                    code::UNSUPPORTED_FIELD,
                    format!(
                        "IPAM plugin {plugin} returned several IPv4 addresses; weft attaches one"
                    ),
                ))
            }
            _ => {
                return Err(CniError::new(
                    code::UNSUPPORTED_FIELD,
                    format!("IPAM plugin {plugin} returned {ip:?}; weft is IPv4-only"),
                ))
            }
        }
    }
    let (address, gateway) = v4.ok_or_else(|| {
        CniError::new(
            code::IPAM_PLUGIN,
            format!("IPAM plugin {plugin} returned no IPv4 address"),
        )
    })?;
    let mut routes = Vec::new();
    for r in &result.routes {
        let dst = r
            .get("dst")
            .and_then(Value::as_str)
            .and_then(|d| d.parse::<Ipv4Net>().ok())
            .ok_or_else(|| {
                CniError::new(
                    code::UNSUPPORTED_FIELD,
                    format!("IPAM route {r:?} is not an IPv4 route"),
                )
            })?;
        let gw = r
            .get("gw")
            .and_then(Value::as_str)
            .and_then(|g| g.parse::<Ipv4Addr>().ok())
            .unwrap_or(gateway);
        routes.push((dst.trunc(), gw));
    }
    if conf.is_default_gateway && !routes.iter().any(|(d, _)| d.prefix_len() == 0) {
        routes.push((default_route(), gateway));
    }
    Ok(Addressing {
        address,
        gateway,
        routes,
        dns: conf.dns.clone().or(result.dns),
    })
}

/// Create and configure the veth pair; returns (host MAC, pod MAC).
#[allow(clippy::too_many_arguments)]
async fn attach(
    host: &Netlink,
    host_ns: &File,
    pod_ns: &File,
    bridge_index: u32,
    host_name: &str,
    ifname: &str,
    mtu: u32,
    hairpin: bool,
    addressing: &Addressing,
) -> Result<(String, String), CniError> {
    // A host end left by an earlier, interrupted attempt of this same attachment.
    host.delete_link_named(host_name).await?;
    let pod = Netlink::connect_in(pod_ns)?;
    if pod.link(ifname).await?.is_some() {
        return Err(CniError::new(
            code::INTERFACE_EXISTS,
            format!("interface {ifname} (CNI_IFNAME) already exists in the pod network namespace"),
        ));
    }

    // Created inside the pod namespace with the peer placed straight into the host
    // namespace: one request, and the pod end never appears on the host.
    pod.add_veth_pair(ifname, host_name, host_ns.as_fd(), mtu)
        .await
        .map_err(|e| {
            if e.errno() == Some(libc::EEXIST) {
                CniError::new(
                    code::INTERFACE_EXISTS,
                    format!("creating veth {ifname}/{host_name}: a device with one of these names already exists"),
                )
            } else {
                CniError::from(e)
            }
        })?;

    fault_point("after-veth");

    let host_side = async {
        let link = host.link(host_name).await?.ok_or_else(|| {
            CniError::new(code::NETLINK, format!("host veth {host_name} vanished"))
        })?;
        host.attach_to_bridge(link.index, bridge_index)
            .await
            .map_err(|e| CniError::netlink(format!("attaching {host_name} to the bridge"), e))?;
        if hairpin {
            host.set_hairpin(link.index)
                .await
                .map_err(|e| CniError::netlink(format!("hairpin mode on {host_name}"), e))?;
        }
        Ok::<_, CniError>((link.index, link.mac_string()))
    };
    let pod_side = async {
        let link = pod.link(ifname).await?.ok_or_else(|| {
            CniError::new(code::NETLINK, format!("pod interface {ifname} vanished"))
        })?;
        let index = link.index;
        pod.set_up(index)
            .await
            .map_err(|e| CniError::netlink(format!("setting {ifname} up"), e))?;
        pod.add_address(index, addressing.address)
            .await
            .map_err(|e| {
                CniError::netlink(format!("adding {} to {ifname}", addressing.address), e)
            })?;
        for (dst, gw) in &addressing.routes {
            pod.add_route(*dst, *gw, index).await.map_err(|e| {
                CniError::netlink(format!("adding route {dst} via {gw} in the pod"), e)
            })?;
        }
        Ok::<_, CniError>(link.mac_string())
    };
    let (host_out, pod_out) = tokio::join!(host_side, pod_side);
    let (host_index, host_mac) = host_out?;
    let pod_mac = pod_out?;
    if host
        .wait_running(host_index, LINK_UP_DEADLINE)
        .await
        .map_err(|e| CniError::netlink(format!("reading {host_name}"), e))?
        .is_none()
    {
        return Err(CniError::new(
            code::NETLINK,
            format!(
                "host veth {host_name} did not come up within {}s",
                LINK_UP_DEADLINE.as_secs()
            ),
        ));
    }
    Ok((host_mac, pod_mac))
}
