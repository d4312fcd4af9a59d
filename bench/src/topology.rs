//! The two-node lab each path is measured on: an underlay namespace with a bridge, two
//! node namespaces on it at 192.0.2.1 and 192.0.2.2, each with a `cni0` bridge and one
//! pod namespace behind it; only how a packet crosses from node to node differs.
//!
//! `kernel-vxlan` and the weft paths are [`weft_tests::lab::Lab`]s (kernel-flannel nodes,
//! or weftd nodes with the backend under test), so the anchor and weft share every hop
//! but the overlay. `veth` and `host-gw` have no overlay and need no etcd: they are
//! built here with the harness's namespace and link guards, in the Lab's shape.
//! Everything lives in namespaces named with a per-run prefix and is removed when the
//! [`PathLab`] drops.

use std::net::Ipv4Addr;

use anyhow::Context as _;
use weft_tests::lab::{Backend, Lab, LabSpec, HEALTHZ_ADDR};
use weft_tests::link::{Bridge, End, Veth};
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

/// A built path: two pods that can reach each other, and everything that must stay up
/// while they do.
pub struct PathLab {
    src: Netns,
    dst: Netns,
    dst_ip: Ipv4Addr,
    /// What the path runs on, when there is something to say (weftd's offloads).
    about: Option<String>,
    /// What must outlive the pods (fields drop in declaration order).
    _rest: Rest,
}

/// The nodes and underlay behind the pods.
enum Rest {
    /// Namespaces built here, deleted on drop (nodes before the underlay).
    Own {
        _nodes: Vec<Netns>,
        _underlay: Option<Netns>,
    },
    /// A lab: dropping it kills its daemons and deletes all its namespaces.
    Lab { _lab: Box<Lab> },
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
            Path::HostGw => host_gw(prefix),
            Path::KernelVxlan => lab(prefix, LabSpec::kernel(2)),
            Path::WeftVxlan => lab(prefix, weft_spec(Backend::Vxlan)),
            Path::WeftIpip => lab(prefix, weft_spec(Backend::Ipip)),
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

    /// A line about how the path runs, e.g. which offloads weftd has on.
    pub fn about(&self) -> Option<&str> {
        self.about.as_deref()
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
        about: None,
        _rest: Rest::Own {
            _nodes: Vec::new(),
            _underlay: None,
        },
    })
}

fn weft_spec(backend: Backend) -> LabSpec {
    LabSpec {
        backend,
        ..LabSpec::weft(2)
    }
}

/// A two-node [`Lab`] with one pod per node; the client's pod is on node 1.
fn lab(prefix: &str, spec: LabSpec) -> anyhow::Result<PathLab> {
    let mut lab = Lab::start(LabSpec {
        prefix: Some(prefix.to_string()),
        ..spec
    })?;
    lab.add_pod(1, "pa").context("pod on node 1")?;
    let dst_ip = lab.add_pod(2, "pb").context("pod on node 2")?;
    let about = if lab.weft_nodes().is_empty() {
        None
    } else {
        Some(weftd_offloads(&lab))
    };
    Ok(PathLab {
        src: lab.pod_ns("pa")?,
        dst: lab.pod_ns("pb")?,
        dst_ip,
        about,
        _rest: Rest::Lab {
            _lab: Box::new(lab),
        },
    })
}

/// Which offloads weftd on node 1 runs with, from its `/v1/status` (`devices.offloads`),
/// so a result can be read against the data path that produced it.
fn weftd_offloads(lab: &Lab) -> String {
    let url = format!("http://{HEALTHZ_ADDR}/v1/status");
    // `timeout` rather than wget's `-T`: busybox 1.35's wget crashes on `-T` with `-O -`.
    let status = lab
        .exec(
            "n1",
            &["timeout", "3", "busybox", "wget", "-q", "-O", "-", &url],
        )
        .map_err(|e| format!("{e:#}"))
        .and_then(|body| {
            serde_json::from_str::<serde_json::Value>(&body).map_err(|e| e.to_string())
        });
    match status {
        Ok(status) => match status
            .pointer("/devices/offloads")
            .and_then(|o| o.as_object())
        {
            Some(offloads) => {
                let on: Vec<&str> = offloads
                    .iter()
                    .filter(|(_, v)| v.as_bool() == Some(true))
                    .map(|(k, _)| k.as_str())
                    .collect();
                let on = if on.is_empty() {
                    "none".to_string()
                } else {
                    on.join(" ")
                };
                format!("weftd offloads: {on}")
            }
            None => "weftd /v1/status has no devices.offloads".to_string(),
        },
        Err(e) => format!("weftd /v1/status unavailable: {e}"),
    }
}

/// The Lab's shape without etcd or daemons: underlay bridge, two nodes, a pod behind
/// each node's `cni0`, and each node routing the other's pod subnet via the other's
/// underlay address (flannel's host-gw).
fn host_gw(prefix: &str) -> anyhow::Result<PathLab> {
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
            None,
        )?
        .detach();
        cni0.attach("vethpod")?;
        cni0.detach();
        pod.ip(&["route", "add", "default", "via", &gateway])?;
        nodes.push(node);
        pods.push(pod);
    }
    underlay_bridge.detach();

    for (i, j) in [(1u8, 2u8), (2, 1)] {
        nodes[usize::from(i - 1)].ip(&[
            "route",
            "add",
            &format!("10.244.{j}.0/24"),
            "via",
            &underlay_ip(j),
        ])?;
    }

    let dst = pods.pop().context("two pods")?;
    let src = pods.pop().context("two pods")?;
    Ok(PathLab {
        src,
        dst,
        dst_ip: pod_ip(2),
        about: None,
        _rest: Rest::Own {
            _nodes: nodes,
            _underlay: Some(underlay),
        },
    })
}
