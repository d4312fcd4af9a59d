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
//!
//! Every path is built on an [`UnderlayMode`]: the lab's underlay is shaped before any
//! weftd starts (so weftd probes the underlay it runs on); `veth`, with no underlay,
//! gets the mode's offloads on its two ends. The mixed paths are one weftd node (1)
//! and one kernel-flannel node (2), the client on the first-named side.

use std::net::Ipv4Addr;

use anyhow::Context as _;
use weft_tests::lab::underlay::{Underlay, UnderlayMode};
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
    /// The underlay's XDP programs, detached when this drops (before the namespaces).
    _underlay: Underlay,
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
    /// Builds `path`'s topology on `underlay` with namespaces named `<prefix>-...`.
    pub fn build(path: Path, underlay: UnderlayMode, prefix: &str) -> anyhow::Result<PathLab> {
        let weft = |backend, env: &[(&str, &str)]| LabSpec {
            backend,
            weftd_env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..LabSpec::weft(2)
        };
        // Node 1 runs weftd, node 2 is the kernel-flannel node.
        let mixed = LabSpec {
            kernel_nodes: 1,
            ..LabSpec::weft(2)
        };
        match path {
            Path::Veth => veth(prefix, underlay),
            Path::HostGw => host_gw(prefix, underlay),
            Path::KernelVxlan => lab(prefix, underlay, LabSpec::kernel(2), 1),
            Path::WeftVxlan => lab(prefix, underlay, weft(Backend::Vxlan, &[]), 1),
            Path::WeftIpip => lab(prefix, underlay, weft(Backend::Ipip, &[]), 1),
            Path::KernelToWeft => lab(prefix, underlay, mixed, 2),
            Path::WeftToKernel => lab(prefix, underlay, mixed, 1),
            Path::WeftVxlanTc => lab(
                prefix,
                underlay,
                weft(Backend::Vxlan, &[("WEFTD_TC_ATTACH", "tc")]),
                1,
            ),
            Path::WeftVxlanUserspace => lab(
                prefix,
                underlay,
                weft(
                    Backend::Vxlan,
                    &[("WEFTD_TC_ATTACH", "off"), ("WEFTD_KERNEL_ENCAP", "false")],
                ),
                1,
            ),
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

    /// Frames the underlay's XDP programs redirected past the bridge so far (`None` on
    /// underlays that do not redirect, or without an underlay).
    pub fn redirected(&self) -> anyhow::Result<Option<u64>> {
        self._underlay.redirected()
    }

    /// A line about how the path runs, e.g. which offloads weftd has on.
    pub fn about(&self) -> Option<&str> {
        self.about.as_deref()
    }
}

/// Two pod namespaces joined directly by one veth pair.
fn veth(prefix: &str, mode: UnderlayMode) -> anyhow::Result<PathLab> {
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
    let underlay = mode.apply_pair(&p1, &p2)?;
    Ok(PathLab {
        src: p1,
        dst: p2,
        dst_ip: pod_ip(2),
        about: None,
        _underlay: underlay,
        _rest: Rest::Own {
            _nodes: Vec::new(),
            _underlay: None,
        },
    })
}

/// A two-node [`Lab`] on `mode` with one pod per node; the client's pod is on node
/// `client` (1 or 2), the server's on the other.
fn lab(prefix: &str, mode: UnderlayMode, spec: LabSpec, client: usize) -> anyhow::Result<PathLab> {
    let (mut lab, underlay) = Lab::start_on(
        LabSpec {
            prefix: Some(prefix.to_string()),
            ..spec
        },
        mode,
    )?;
    lab.add_pod(1, "pa").context("pod on node 1")?;
    lab.add_pod(2, "pb").context("pod on node 2")?;
    let (src, dst) = if client == 1 {
        ("pa", "pb")
    } else {
        ("pb", "pa")
    };
    let about = lab.weft_nodes().first().map(|&n| weftd_about(&lab, n));
    Ok(PathLab {
        src: lab.pod_ns(src)?,
        dst: lab.pod_ns(dst)?,
        dst_ip: lab.pod_ip(dst)?,
        about,
        _underlay: underlay,
        _rest: Rest::Lab {
            _lab: Box::new(lab),
        },
    })
}

/// What weftd on node `n` says it runs with, from its `/v1/status`: the transmit path
/// (and why), any attach mode it reports, and the offloads that are on; so a result can
/// be read against the data path that really produced it.
fn weftd_about(lab: &Lab, n: usize) -> String {
    let url = format!("http://{HEALTHZ_ADDR}/v1/status");
    // `timeout` rather than wget's `-T`: busybox 1.35's wget crashes on `-T` with `-O -`.
    let status = lab
        .exec(
            &format!("n{n}"),
            &["timeout", "3", "busybox", "wget", "-q", "-O", "-", &url],
        )
        .map_err(|e| format!("{e:#}"))
        .and_then(|body| {
            serde_json::from_str::<serde_json::Value>(&body).map_err(|e| e.to_string())
        });
    match status {
        Ok(status) => describe_devices(status.get("devices")),
        Err(e) => format!("weftd /v1/status unavailable: {e}"),
    }
}

/// `weftd: transmit_path kernel_encap, tc_attach tcx, offloads tun_csum tun_tso4` from
/// `/v1/status`'s `devices`.
fn describe_devices(devices: Option<&serde_json::Value>) -> String {
    let Some(devices) = devices.and_then(|d| d.as_object()) else {
        return "weftd /v1/status has no devices".to_string();
    };
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Bool(_) | serde_json::Value::Number(_) => Some(v.to_string()),
        _ => None,
    };
    let mut parts = Vec::new();
    if let Some(path) = devices.get("transmit_path").and_then(text) {
        match devices.get("transmit_path_reason").and_then(text) {
            Some(reason) if !reason.is_empty() => {
                parts.push(format!("transmit_path {path} ({reason})"))
            }
            _ => parts.push(format!("transmit_path {path}")),
        }
    }
    // Whatever weftd reports about how its tc program is attached (`tc_attach`, ...).
    for (key, value) in devices {
        if key.contains("attach") {
            // `null`: no tc program attached (the userspace path).
            let value = if value.is_null() {
                Some("none".to_string())
            } else {
                text(value)
            };
            if let Some(value) = value {
                parts.push(format!("{key} {value}"));
            }
        }
    }
    if let Some(offloads) = devices.get("offloads").and_then(|o| o.as_object()) {
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
        parts.push(format!("offloads {on}"));
    }
    format!("weftd: {}", parts.join(", "))
}

/// The Lab's shape without etcd or daemons: underlay bridge, two nodes, a pod behind
/// each node's `cni0`, and each node routing the other's pod subnet via the other's
/// underlay address (flannel's host-gw).
fn host_gw(prefix: &str, mode: UnderlayMode) -> anyhow::Result<PathLab> {
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

    let node_refs: Vec<&Netns> = nodes.iter().collect();
    // No tunnel here: the redirect passes host-gw's plain IP frames on to the bridge.
    let underlay_shaping = mode.apply_nodes(&underlay, &node_refs, 8472)?;
    let dst = pods.pop().context("two pods")?;
    let src = pods.pop().context("two pods")?;
    Ok(PathLab {
        src,
        dst,
        dst_ip: pod_ip(2),
        about: None,
        _underlay: underlay_shaping,
        _rest: Rest::Own {
            _nodes: nodes,
            _underlay: Some(underlay),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn about_says_what_weftd_reports() {
        let devices = serde_json::json!({
            "transmit_path": "userspace",
            "transmit_path_reason": "--kernel-encap=false",
            "tc_attach": null,
            "offloads": {"tun_csum": true, "tun_tso4": true, "udp_segment": true, "kernel_encap": false},
        });
        assert_eq!(
            describe_devices(Some(&devices)),
            "weftd: transmit_path userspace (--kernel-encap=false), tc_attach none, offloads tun_csum tun_tso4 udp_segment"
        );
        assert_eq!(
            describe_devices(Some(
                &serde_json::json!({"transmit_path": "kernel_encap", "offloads": {}})
            )),
            "weftd: transmit_path kernel_encap, offloads none"
        );
        assert_eq!(describe_devices(None), "weftd /v1/status has no devices");
    }
}
