//! The CNI operations. Each reads what it needs, changes only what differs, and on
//! failure of ADD undoes what it did (veth, address) so nothing is left behind.

use std::collections::HashSet;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use ipnet::{IpNet, Ipv4Net};
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkMessage,
};
use rtnetlink::packet_route::route::RouteMessage;
use rtnetlink::{
    Handle, LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder,
};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use weft_config::cni::CniNetConf;
use weft_config::subnet_env::SubnetEnvError;
use weft_config::SubnetEnv;
use weft_daemon::netlink::bridge::{
    ensure_bridge, ipv4_addresses, link_by_name, link_kind, link_mtu, netlink_errno,
};

use crate::delegate;
use crate::error::{code, CniError};
use crate::ipam::{Pool, Store};
use crate::netns::{connect, connect_here, current_netns, netlink_socket_in, open_netns};
use crate::result::CniResult;

/// How long ADD waits for the host end of the veth to be really up (carrier on).
const LINK_UP_DEADLINE: Duration = Duration::from_secs(5);
/// Prefix of host-side veth names.
pub const HOST_VETH_PREFIX: &str = "wf";

/// The CNI_* environment of one invocation, validated for the command.
#[derive(Debug, Clone)]
pub struct CniEnv {
    pub container_id: String,
    /// None when empty/absent (allowed for DEL).
    pub netns: Option<PathBuf>,
    pub ifname: String,
    pub cni_path: String,
}

/// Everything one operation works with.
#[derive(Debug)]
pub struct Invocation<'a> {
    pub env: CniEnv,
    pub conf: CniNetConf,
    /// The config bytes as received, passed unchanged to a delegated IPAM plugin.
    pub stdin: &'a [u8],
}

/// The node's pod network as subnet.env (or the config's overrides) describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeNet {
    /// Gateway address with the subnet's prefix, e.g. 10.244.1.1/24 (cni0's address).
    pub gateway: Ipv4Net,
    pub network: Ipv4Net,
    pub mtu: u32,
}

/// The stable host-side veth name of an attachment: `wf` + 12 hex digits of
/// SHA-256(containerID, ifname) — 14 characters, within IFNAMSIZ.
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    let mut h = Sha256::new();
    h.update(container_id.as_bytes());
    h.update([0u8]);
    h.update(ifname.as_bytes());
    let digest = h.finalize();
    format!("{HOST_VETH_PREFIX}{}", &hex::encode(digest)[..12])
}

/// Read the node network: subnet.env, with the config's overrides on top.
pub fn node_net(conf: &CniNetConf) -> Result<NodeNet, CniError> {
    let env = match SubnetEnv::read(&conf.subnet_file) {
        Ok(env) => Some(env),
        Err(SubnetEnvError::Read { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound && conf.subnet.is_some() =>
        {
            None
        }
        Err(SubnetEnvError::Read { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            return Err(CniError::new(
                code::TRY_AGAIN_LATER,
                format!(
                    "{} does not exist yet: this node has no pod subnet until weftd (or flanneld) has leased one and written it; try again later",
                    conf.subnet_file.display()
                ),
            ))
        }
        Err(e) => {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                format!("subnetFile: {e}"),
            ))
        }
    };
    // Both prefixes come from parsed networks (≤ 32), so Ipv4Net::new cannot fail.
    let gateway = match (conf.subnet, &env) {
        (Some(subnet), _) => {
            let net = subnet.trunc();
            let gw = Ipv4Addr::from(u32::from(net.network()).saturating_add(1));
            Ipv4Net::new(gw, net.prefix_len()).unwrap_or(net)
        }
        (None, Some(env)) => {
            Ipv4Net::new(env.gateway(), env.subnet.prefix_len()).unwrap_or(env.subnet)
        }
        (None, None) => {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                "no pod subnet: neither subnet.env nor the config's \"subnet\" gives one",
            ))
        }
    };
    let network = conf
        .network
        .or(env.as_ref().map(|e| e.network))
        .unwrap_or_else(|| gateway.trunc());
    let mtu = conf.mtu.or(env.as_ref().map(|e| e.mtu)).unwrap_or(1500);
    Ok(NodeNet {
        gateway,
        network,
        mtu,
    })
}

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

fn mac_string(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn link_mac(link: &LinkMessage) -> String {
    link.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Address(mac) => Some(mac_string(mac)),
            _ => None,
        })
        .unwrap_or_default()
}

fn link_controller(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Controller(c) => Some(*c),
        _ => None,
    })
}

async fn delete_link_named(handle: &Handle, name: &str) -> Result<bool, CniError> {
    let Some(link) = link_by_name(handle, name)
        .await
        .map_err(|e| CniError::netlink(format!("looking up {name}"), e))?
    else {
        return Ok(false);
    };
    match handle.link().del(link.header.index).execute().await {
        Ok(()) => Ok(true),
        Err(e) if netlink_errno(&e) == Some(libc::ENODEV) => Ok(false),
        Err(e) => Err(CniError::netlink(format!("deleting {name}"), e)),
    }
}

// ---------------------------------------------------------------------------- ADD

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
    let host = connect_here()?;
    let bridge = ensure_bridge(&host, &conf.bridge, node.gateway, node.mtu)
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
            let _ = delete_link_named(&host, &host_name).await;
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
            let ip = store.allocate(&pool, &inv.env.container_id, &inv.env.ifname)?;
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
    host: &Handle,
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
    delete_link_named(host, host_name).await?;
    let pod = connect(netlink_socket_in(pod_ns)?)?;
    if link_by_name(&pod, ifname)
        .await
        .map_err(|e| CniError::netlink(format!("looking up {ifname} in the pod"), e))?
        .is_some()
    {
        return Err(CniError::new(
            code::INTERFACE_EXISTS,
            format!("interface {ifname} (CNI_IFNAME) already exists in the pod network namespace"),
        ));
    }

    // Created inside the pod namespace with the peer placed straight into the host
    // namespace: one request, and the pod end never appears on the host.
    let peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name(host_name.to_string())
        .mtu(mtu)
        .setns_by_fd(host_ns.as_raw_fd())
        .build();
    let veth = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
        .name(ifname.to_string())
        .mtu(mtu)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .build();
    pod.link().add(veth).execute().await.map_err(|e| {
        if netlink_errno(&e) == Some(libc::EEXIST) {
            CniError::new(
                code::INTERFACE_EXISTS,
                format!("creating veth {ifname}/{host_name}: a device with one of these names already exists"),
            )
        } else {
            CniError::netlink(format!("creating veth {ifname}/{host_name}"), e)
        }
    })?;

    fault_point("after-veth");

    let host_side = async {
        let link = link_by_name(host, host_name)
            .await
            .map_err(|e| CniError::netlink(format!("looking up {host_name}"), e))?
            .ok_or_else(|| {
                CniError::new(code::NETLINK, format!("host veth {host_name} vanished"))
            })?;
        let index = link.header.index;
        host.link()
            .set(
                LinkUnspec::new_with_index(index)
                    .controller(bridge_index)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(|e| CniError::netlink(format!("attaching {host_name} to the bridge"), e))?;
        if hairpin {
            host.link()
                .set_port(LinkBridgePort::new(index).hairpin(true).build())
                .execute()
                .await
                .map_err(|e| CniError::netlink(format!("hairpin mode on {host_name}"), e))?;
        }
        Ok::<_, CniError>((index, link_mac(&link)))
    };
    let pod_side = async {
        let link = link_by_name(&pod, ifname)
            .await
            .map_err(|e| CniError::netlink(format!("looking up {ifname} in the pod"), e))?
            .ok_or_else(|| {
                CniError::new(code::NETLINK, format!("pod interface {ifname} vanished"))
            })?;
        let index = link.header.index;
        pod.link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|e| CniError::netlink(format!("setting {ifname} up"), e))?;
        pod.address()
            .add(
                index,
                IpAddr::V4(addressing.address.addr()),
                addressing.address.prefix_len(),
            )
            .execute()
            .await
            .map_err(|e| {
                CniError::netlink(format!("adding {} to {ifname}", addressing.address), e)
            })?;
        for (dst, gw) in &addressing.routes {
            let route = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(dst.network(), dst.prefix_len())
                .gateway(*gw)
                .output_interface(index)
                .build();
            match pod.route().add(route).execute().await {
                Ok(()) => {}
                Err(e) if netlink_errno(&e) == Some(libc::EEXIST) => {}
                Err(e) => {
                    return Err(CniError::netlink(
                        format!("adding route {dst} via {gw} in the pod"),
                        e,
                    ))
                }
            }
        }
        Ok::<_, CniError>(link_mac(&link))
    };
    let (host_out, pod_out) = tokio::join!(host_side, pod_side);
    let (host_index, host_mac) = host_out?;
    let pod_mac = pod_out?;
    wait_link_up(host, host_index, host_name).await?;
    Ok((host_mac, pod_mac))
}

/// Wait until the link is administratively up and has carrier, with a deadline.
async fn wait_link_up(handle: &Handle, index: u32, name: &str) -> Result<(), CniError> {
    let deadline = Instant::now() + LINK_UP_DEADLINE;
    loop {
        let link = handle
            .link()
            .get()
            .match_index(index)
            .execute()
            .try_next()
            .await
            .map_err(|e| CniError::netlink(format!("reading {name}"), e))?;
        if let Some(link) = link {
            if link
                .header
                .flags
                .contains(LinkFlags::Up | LinkFlags::LowerUp)
            {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            return Err(CniError::new(
                code::NETLINK,
                format!(
                    "host veth {name} did not come up within {}s",
                    LINK_UP_DEADLINE.as_secs()
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

// ---------------------------------------------------------------------------- DEL

/// Release the attachment's address (built-in store or delegated plugin).
fn release(inv: &Invocation<'_>) -> Result<(), CniError> {
    match inv.conf.ipam_type() {
        None => {
            if let Some(store) = Store::open_existing(&inv.conf.data_dir, &inv.conf.name)? {
                store.release(&inv.env.container_id, &inv.env.ifname)?;
            }
            Ok(())
        }
        Some(plugin) => delegate::exec(&inv.env.cni_path, plugin, "DEL", inv.stdin).map(drop),
    }
}

pub async fn del(inv: &Invocation<'_>) -> Result<(), CniError> {
    let host = connect_here()?;
    // Deleting the host end removes the pod end too, so DEL needs neither the pod
    // namespace nor subnet.env: it works after the namespace is gone.
    let host_name = host_veth_name(&inv.env.container_id, &inv.env.ifname);
    let deleted = delete_link_named(&host, &host_name).await?;
    if !deleted {
        // No host end (renamed, or a crash between creating and naming it): a veth
        // still named CNI_IFNAME in a pod namespace that still exists is ours to remove.
        if let Some(ns) = inv.env.netns.as_ref().and_then(|p| File::open(p).ok()) {
            if let Ok(pod) = netlink_socket_in(&ns).and_then(connect) {
                if let Ok(Some(link)) = link_by_name(&pod, &inv.env.ifname).await {
                    if link_kind(&link).as_deref() == Some("veth") {
                        let _ = pod.link().del(link.header.index).execute().await;
                    }
                }
            }
        }
    }
    release(inv)
}

// -------------------------------------------------------------------------- CHECK

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
    let host = connect_here()?;
    let bridge = link_by_name(&host, &conf.bridge)
        .await
        .map_err(|e| CniError::netlink("looking up the bridge", e))?;
    let host_name = host_veth_name(&env.container_id, &env.ifname);
    let host_link = link_by_name(&host, &host_name)
        .await
        .map_err(|e| CniError::netlink(format!("looking up {host_name}"), e))?;
    match (&bridge, &host_link) {
        (None, _) => diffs.push(format!("bridge {} does not exist", conf.bridge)),
        (Some(b), _) if !b.header.flags.contains(LinkFlags::Up) => {
            diffs.push(format!("bridge {} is down", conf.bridge))
        }
        _ => {}
    }
    match &host_link {
        None => diffs.push(format!("host veth {host_name} does not exist")),
        Some(link) => {
            if let Some(b) = &bridge {
                if link_controller(link) != Some(b.header.index) {
                    diffs.push(format!(
                        "host veth {host_name} is not a port of {}",
                        conf.bridge
                    ));
                }
            }
            if !link.header.flags.contains(LinkFlags::Up) {
                diffs.push(format!("host veth {host_name} is down"));
            }
            if link_mtu(link) != Some(node.mtu) {
                diffs.push(format!(
                    "host veth {host_name} has MTU {:?}, expected {}",
                    link_mtu(link),
                    node.mtu
                ));
            }
        }
    }

    // Pod side.
    let pod = connect(netlink_socket_in(&pod_ns)?)?;
    match link_by_name(&pod, &env.ifname)
        .await
        .map_err(|e| CniError::netlink(format!("looking up {} in the pod", env.ifname), e))?
    {
        None => diffs.push(format!(
            "interface {} does not exist in the pod",
            env.ifname
        )),
        Some(link) => {
            let index = link.header.index;
            if !link.header.flags.contains(LinkFlags::Up) {
                diffs.push(format!("pod interface {} is down", env.ifname));
            }
            if link_mtu(&link) != Some(node.mtu) {
                diffs.push(format!(
                    "pod interface {} has MTU {:?}, expected {}",
                    env.ifname,
                    link_mtu(&link),
                    node.mtu
                ));
            }
            let have: Vec<Ipv4Net> = ipv4_addresses(&pod, index)
                .await
                .map_err(|e| CniError::netlink("listing pod addresses", e))?
                .into_iter()
                .map(|(n, _)| n)
                .collect();
            for ip in &expected_ips {
                if !have.contains(ip) {
                    diffs.push(format!("pod interface {} lacks address {ip}", env.ifname));
                }
            }
            let routes = ipv4_routes(&pod).await?;
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

/// IPv4 routes of the main table: (dst, gateway, output interface).
async fn ipv4_routes(
    handle: &Handle,
) -> Result<Vec<(Ipv4Net, Option<Ipv4Addr>, Option<u32>)>, CniError> {
    let filter = RouteMessageBuilder::<Ipv4Addr>::new().build();
    let mut stream = handle.route().get(filter).execute();
    let mut out = Vec::new();
    while let Some(msg) = stream
        .try_next()
        .await
        .map_err(|e| CniError::netlink("listing pod routes", e))?
    {
        out.push(route_parts(&msg));
    }
    Ok(out)
}

fn route_parts(msg: &RouteMessage) -> (Ipv4Net, Option<Ipv4Addr>, Option<u32>) {
    let (dst, gw, oif) = weft_daemon::netlink::route_parts(msg);
    (dst.unwrap_or(default_route()), gw, oif)
}

// ----------------------------------------------------------------------------- GC

pub async fn gc(inv: &Invocation<'_>) -> Result<(), CniError> {
    let conf = &inv.conf;
    let valid: HashSet<(String, String)> = conf
        .valid_attachments
        .clone()
        .ok_or_else(|| {
            CniError::new(
                code::INVALID_CONFIG,
                "GC needs cni.dev/valid-attachments (the attachments still in use)",
            )
        })?
        .into_iter()
        .collect();
    let host = connect_here()?;
    match conf.ipam_type() {
        None => {
            let Some(store) = Store::open_existing(&conf.data_dir, &conf.name)? else {
                return Ok(());
            };
            // Every veth of ours has an allocation (ADD allocates first, DEL deletes the
            // veth first), so the stale allocations name exactly the stale veths.
            let stale = store.retain_only(&valid)?;
            for a in stale {
                delete_link_named(&host, &host_veth_name(&a.container_id, &a.ifname)).await?;
            }
            Ok(())
        }
        Some(plugin) => {
            // Without our own store, stale veths are found on the bridge by name.
            let expected: HashSet<String> = valid
                .iter()
                .map(|(id, ifname)| host_veth_name(id, ifname))
                .collect();
            if let Some(bridge) = link_by_name(&host, &conf.bridge)
                .await
                .map_err(|e| CniError::netlink("looking up the bridge", e))?
            {
                let mut links = host.link().get().execute();
                let mut stale = Vec::new();
                while let Some(link) = links
                    .try_next()
                    .await
                    .map_err(|e| CniError::netlink("listing links", e))?
                {
                    let name = link.attributes.iter().find_map(|a| match a {
                        LinkAttribute::IfName(n) => Some(n.clone()),
                        _ => None,
                    });
                    if let Some(name) = name {
                        if name.starts_with(HOST_VETH_PREFIX)
                            && link_controller(&link) == Some(bridge.header.index)
                            && !expected.contains(&name)
                        {
                            stale.push(name);
                        }
                    }
                }
                for name in stale {
                    delete_link_named(&host, &name).await?;
                }
            }
            if delegate::supports(&inv.env.cni_path, plugin, "1.1.0")? {
                delegate::exec(&inv.env.cni_path, plugin, "GC", inv.stdin)?;
            }
            Ok(())
        }
    }
}

// ------------------------------------------------------------------------- STATUS

pub fn status(inv: &Invocation<'_>) -> Result<(), CniError> {
    node_net(&inv.conf).map_err(|e| {
        CniError::new(
            code::NOT_AVAILABLE,
            format!("weft is not ready on this node: {}", e.msg),
        )
    })?;
    if let Some(plugin) = inv.conf.ipam_type() {
        // An IPAM plugin from before CNI 1.1 has no STATUS; being runnable is all it
        // can tell.
        if delegate::supports(&inv.env.cni_path, plugin, "1.1.0")? {
            delegate::exec(&inv.env.cni_path, plugin, "STATUS", inv.stdin)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_veth_names_are_stable_short_and_distinct() {
        let a = host_veth_name("abc", "eth0");
        assert_eq!(a, host_veth_name("abc", "eth0"));
        assert!(a.len() <= 15 && a.starts_with("wf"));
        assert_ne!(a, host_veth_name("abc", "eth1"));
        assert_ne!(a, host_veth_name("abd", "eth0"));
    }
}
