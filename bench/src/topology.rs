//! The two-node lab each path is measured on: an underlay namespace with a bridge, two
//! node namespaces on it at 192.0.2.1 and 192.0.2.2, each with a `cni0` bridge and one
//! pod namespace behind it; only how a packet crosses from node to node differs.
//!
//! `veth`, `host-gw` and `kernel-vxlan` are built here with the harness's namespace and
//! link guards (pure iproute2, no daemon); the weft paths come from
//! [`weft_tests::lab::Lab`] with weftd nodes. Everything lives in namespaces named with
//! a per-run prefix and is removed when the [`PathLab`] drops.

use std::net::Ipv4Addr;

use anyhow::Context as _;
use weft_tests::link::{mac_of, Bridge, End, Veth};
use weft_tests::netns::Netns;

use crate::results::Path;

/// Node `i` (1-based) has underlay address 192.0.2.i and pod subnet 10.244.i.0/24; its
/// pod is 10.244.i.2.
fn underlay_ip(node: u8) -> String {
    format!("192.0.2.{node}")
}

fn pod_ip(node: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, node, 2)
}

/// flanneld's VXLAN defaults: VNI 1, device `flannel.1`, port 8472, MTU 1500 − 50.
const VXLAN_DEV: &str = "flannel.1";
const VXLAN_MTU: u32 = 1450;

/// A built path: two pods that can reach each other, and everything that must stay up
/// while they do.
pub struct PathLab {
    src: Netns,
    dst: Netns,
    dst_ip: Ipv4Addr,
    /// Dropped after the pods; namespaces go last (fields drop in declaration order).
    _nodes: Vec<Netns>,
    _underlay: Option<Netns>,
}

impl std::fmt::Debug for PathLab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PathLab")
            .field("src", &self.src.name())
            .field("dst", &self.dst.name())
            .field("dst_ip", &self.dst_ip)
            .finish_non_exhaustive()
    }
}

impl PathLab {
    /// Builds `path`'s topology with namespaces named `<prefix>-...`.
    pub fn build(path: Path, prefix: &str) -> anyhow::Result<PathLab> {
        match path {
            Path::Veth => veth(prefix),
            Path::HostGw => two_nodes(prefix, Overlay::HostGw),
            Path::KernelVxlan => two_nodes(prefix, Overlay::KernelVxlan),
            Path::WeftVxlan | Path::WeftIpip => {
                anyhow::bail!("weft paths need weft_tests::lab::Lab, which is not there yet")
            }
        }
    }

    /// The pod the client runs in.
    pub fn src(&self) -> &Netns {
        &self.src
    }

    /// The pod the server runs in.
    pub fn dst(&self) -> &Netns {
        &self.dst
    }

    pub fn dst_ip(&self) -> Ipv4Addr {
        self.dst_ip
    }
}

/// Two pod namespaces joined directly by one veth pair.
fn veth(prefix: &str) -> anyhow::Result<PathLab> {
    let p1 = Netns::new(&format!("{prefix}-p1"))?;
    let p2 = Netns::new(&format!("{prefix}-p2"))?;
    let (a, b) = (format!("{}/16", pod_ip(1)), format!("{}/16", pod_ip(2)));
    Veth::create(
        End::with_addr(&p1, "eth0", &a),
        End::with_addr(&p2, "eth0", &b),
        None,
    )
    .context("veth between the pods")?
    .detach();
    Ok(PathLab {
        src: p1,
        dst: p2,
        dst_ip: pod_ip(2),
        _nodes: Vec::new(),
        _underlay: None,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Overlay {
    HostGw,
    KernelVxlan,
}

/// Underlay bridge, two nodes, a pod behind each node's `cni0`, and `overlay` between
/// the nodes.
fn two_nodes(prefix: &str, overlay: Overlay) -> anyhow::Result<PathLab> {
    let pod_mtu = match overlay {
        Overlay::HostGw => None,
        Overlay::KernelVxlan => Some(VXLAN_MTU),
    };
    let underlay = Netns::new(&format!("{prefix}-ul"))?;
    let underlay_bridge = Bridge::create(&underlay, "br0", None)?;
    let mut nodes = Vec::new();
    let mut pods = Vec::new();
    for i in 1..=2u8 {
        let node = Netns::new(&format!("{prefix}-n{i}"))?;
        let uplink = format!("n{i}");
        let node_addr = format!("{}/24", underlay_ip(i));
        Veth::create(
            End::new(&underlay, &uplink),
            End::with_addr(&node, "eth0", &node_addr),
            None,
        )?
        .detach();
        underlay_bridge.attach(&uplink)?;
        node.run("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;

        let gateway = format!("10.244.{i}.1");
        let cni0 = Bridge::create(&node, "cni0", Some(&format!("{gateway}/24")))?;
        let pod = Netns::new(&format!("{prefix}-p{i}"))?;
        let pod_addr = format!("{}/24", pod_ip(i));
        Veth::create(
            End::new(&node, "vethpod"),
            End::with_addr(&pod, "eth0", &pod_addr),
            pod_mtu,
        )?
        .detach();
        cni0.attach("vethpod")?;
        cni0.detach();
        pod.ip(&["route", "add", "default", "via", &gateway])?;
        nodes.push(node);
        pods.push(pod);
    }
    underlay_bridge.detach();

    match overlay {
        Overlay::HostGw => {
            for (i, j) in [(1u8, 2u8), (2, 1)] {
                nodes[usize::from(i - 1)].ip(&[
                    "route",
                    "add",
                    &format!("10.244.{j}.0/24"),
                    "via",
                    &underlay_ip(j),
                ])?;
            }
        }
        Overlay::KernelVxlan => flannel_vxlan(&nodes).context("kernel vxlan like flanneld")?,
    }

    let dst = pods.pop().context("two pods")?;
    let src = pods.pop().context("two pods")?;
    Ok(PathLab {
        src,
        dst,
        dst_ip: pod_ip(2),
        _nodes: nodes,
        _underlay: Some(underlay),
    })
}

/// Programs each node's overlay the way flanneld's vxlan backend does: a `flannel.1`
/// device without learning, the node's `.0/32` on it, and for each peer a permanent
/// neighbour, an fdb entry to the peer's underlay address and an onlink route.
fn flannel_vxlan(nodes: &[Netns]) -> anyhow::Result<()> {
    let mut macs = Vec::new();
    for (index, node) in nodes.iter().enumerate() {
        let i = u8::try_from(index + 1)?;
        node.ip(&[
            "link",
            "add",
            VXLAN_DEV,
            "type",
            "vxlan",
            "id",
            "1",
            "local",
            &underlay_ip(i),
            "dev",
            "eth0",
            "dstport",
            "8472",
            "nolearning",
        ])?;
        node.ip(&[
            "link",
            "set",
            VXLAN_DEV,
            "mtu",
            &VXLAN_MTU.to_string(),
            "up",
        ])?;
        node.ip(&["addr", "add", &format!("10.244.{i}.0/32"), "dev", VXLAN_DEV])?;
        macs.push(mac_of(node, VXLAN_DEV)?);
    }
    for (index, node) in nodes.iter().enumerate() {
        for (peer_index, peer_mac) in macs.iter().enumerate() {
            if peer_index == index {
                continue;
            }
            let j = u8::try_from(peer_index + 1)?;
            let peer_vtep = format!("10.244.{j}.0");
            node.ip(&[
                "neigh",
                "replace",
                &peer_vtep,
                "lladdr",
                peer_mac,
                "dev",
                VXLAN_DEV,
                "nud",
                "permanent",
            ])?;
            node.run(
                "bridge",
                &[
                    "fdb",
                    "append",
                    peer_mac,
                    "dev",
                    VXLAN_DEV,
                    "dst",
                    &underlay_ip(j),
                ],
            )?;
            node.ip(&[
                "route",
                "add",
                &format!("10.244.{j}.0/24"),
                "via",
                &peer_vtep,
                "dev",
                VXLAN_DEV,
                "onlink",
            ])?;
        }
    }
    Ok(())
}
