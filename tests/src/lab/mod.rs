//! The lab: a multi-node weft (or mixed weft + kernel-flannel) cluster in network
//! namespaces on one machine, with a real etcd and, for `ctr` pods, a real containerd;
//! for CRI pods, each node runs a containerd of its own ([`cri`]).
//!
//! ```text
//!   <prefix>-ul   underlay: bridge br0 192.0.2.254/24, etcd on :2379, containerd
//!     ├─ n1 ──veth── <prefix>-n1  eth0 192.0.2.1/24   weftd (or kernel vxlan), cni0 10.244.X.1/24,
//!     │                                                 containerd with CRI (once a CRI pod is made)
//!     │                 └─ vpN ──veth── <prefix>-<pod>  eth0 10.244.X.N/24, default via .1
//!     └─ n2 ──veth── <prefix>-n2  eth0 192.0.2.2/24   ...
//! ```
//!
//! Nothing is added to the root namespace and no lab namespace has a route out of the
//! lab. Every namespace, process and directory is recorded in
//! `/run/weft-lab/<prefix>.json` *before* it is created, so [`teardown_prefix`] (and
//! `weft-lab down`) removes a lab completely even after `kill -9` of its owner.
//!
//! Nodes `1..=nodes-kernel_nodes` run weftd; the last `kernel_nodes` are kernel-flannel
//! nodes (their overlay is the kernel's vxlan device programmed like flanneld, see
//! [`kernel`]).

pub mod containerd;
pub mod cri;
mod cri_pods;
pub mod kernel;
mod nodes;
mod pods;
pub mod state;
pub mod underlay;
mod weftd;

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::etcd::Etcd;
use crate::link::{self, End, Veth};
use crate::netns::{Child, Netns};
use crate::proc::ProcId;
use kernel::FlannelLease;
use state::{LabState, RecordedProcess};

/// flannel's default etcd prefix; each lab has its own etcd, so it is used as is.
pub const ETCD_PREFIX: &str = "/coreos.com/network";
/// Address of etcd (and of the underlay bridge) in the underlay namespace.
pub const ETCD_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 254);
/// weftd's health/metrics address inside each node namespace.
pub const HEALTHZ_ADDR: &str = "127.0.0.1:9842";
/// MTU of the underlay links.
pub const UNDERLAY_MTU: u32 = 1500;
/// Overlay MTU of kernel-flannel nodes and the pod MTU when subnet.env has none.
pub const OVERLAY_MTU: u32 = 1450;

/// The overlay backend of the lab's net-conf.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Vxlan,
    Ipip,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Vxlan => "vxlan",
            Backend::Ipip => "ipip",
        }
    }
}

/// Which CNI network `ctr` pods get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum CniKind {
    /// The `weft` plugin (reads the node's subnet.env).
    Weft,
    /// The reference `bridge` + `host-local` plugins (a baseline independent of weft).
    Bridge,
}

/// What kind of overlay a node runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeKind {
    Weftd,
    KernelFlannel,
}

/// How to build a lab.
#[derive(Debug, Clone)]
pub struct LabSpec {
    /// Total number of nodes (1..=200).
    pub nodes: usize,
    /// How many of them (the last ones) are kernel-flannel nodes (vxlan only).
    pub kernel_nodes: usize,
    pub backend: Backend,
    /// VXLAN UDP port (8472 or 4789).
    pub port: u16,
    pub vni: u32,
    /// Name prefix; a fresh [`crate::run_prefix`] when `None`.
    pub prefix: Option<String>,
    /// The cluster network of the generated net-conf.
    pub network: Ipv4Net,
    /// Replaces the generated net-conf JSON entirely.
    pub netconf: Option<String>,
    /// Start weftd on the weft nodes during [`Lab::start`] (else call
    /// [`Lab::start_weftd`] yourself, e.g. after [`Lab::put_netconf`]).
    pub start_weftd: bool,
    /// Extra weftd flags, appended after the lab's own.
    pub weftd_args: Vec<String>,
    /// Extra environment for weftd (e.g. `RUST_LOG`).
    pub weftd_env: Vec<(String, String)>,
    /// CNI network of `ctr` pods.
    pub cni: CniKind,
    /// How long to wait for a daemon to become ready.
    pub ready_timeout: Duration,
}

impl Default for LabSpec {
    fn default() -> LabSpec {
        LabSpec {
            nodes: 2,
            kernel_nodes: 0,
            backend: Backend::Vxlan,
            port: 8472,
            vni: 1,
            prefix: None,
            network: Ipv4Net::new(Ipv4Addr::new(10, 244, 0, 0), 16).expect("valid literal"),
            netconf: None,
            start_weftd: true,
            weftd_args: Vec::new(),
            weftd_env: Vec::new(),
            cni: CniKind::Weft,
            ready_timeout: Duration::from_secs(30),
        }
    }
}

impl LabSpec {
    /// `nodes` weftd nodes, vxlan on 8472.
    pub fn weft(nodes: usize) -> LabSpec {
        LabSpec {
            nodes,
            ..LabSpec::default()
        }
    }

    /// `nodes` kernel-flannel nodes (no weftd at all).
    pub fn kernel(nodes: usize) -> LabSpec {
        LabSpec {
            nodes,
            kernel_nodes: nodes,
            ..LabSpec::default()
        }
    }

    /// The net-conf JSON the lab writes to `<prefix>/config`.
    pub fn netconf_json(&self) -> String {
        if let Some(n) = &self.netconf {
            return n.clone();
        }
        let backend = match self.backend {
            Backend::Vxlan => {
                serde_json::json!({"Type": "vxlan", "VNI": self.vni, "Port": self.port})
            }
            Backend::Ipip => serde_json::json!({"Type": "ipip"}),
        };
        serde_json::json!({"Network": self.network.to_string(), "SubnetLen": 24, "Backend": backend})
            .to_string()
    }

    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            (1..=200).contains(&self.nodes),
            "nodes = {}: a lab has 1 to 200 nodes",
            self.nodes
        );
        anyhow::ensure!(
            self.kernel_nodes <= self.nodes,
            "kernel_nodes = {} is more than nodes = {}",
            self.kernel_nodes,
            self.nodes
        );
        anyhow::ensure!(
            self.kernel_nodes == 0 || self.backend == Backend::Vxlan,
            "kernel-flannel nodes need the vxlan backend (backend is {})",
            self.backend.as_str()
        );
        anyhow::ensure!(
            self.port == 8472 || self.port == 4789,
            "port = {}: the lab's VXLAN port is 8472 or 4789",
            self.port
        );
        anyhow::ensure!(
            self.network.prefix_len() <= 22,
            "network {} leaves no room for /24 node subnets",
            self.network
        );
        if let Some(p) = &self.prefix {
            check_prefix(p)?;
        }
        Ok(())
    }
}

/// A prefix must keep `<prefix>-<name>` short and be safe in paths and names.
pub fn check_prefix(prefix: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=8).contains(&prefix.len())
            && prefix
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()),
        "prefix {prefix:?}: 1 to 8 lowercase letters or digits"
    );
    Ok(())
}

/// A node of a lab, as recorded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeInfo {
    /// 1-based.
    pub index: usize,
    /// `n1`, `n2`, ...
    pub name: String,
    /// `<prefix>-n1`
    pub netns: String,
    /// Underlay address (the node's PublicIP), `192.0.2.<index>`.
    pub ip: Ipv4Addr,
    pub kind: NodeKind,
    /// `<labdir>/n1`: subnet.env, state dir, weftd.log.
    pub dir: PathBuf,
    /// kernel-flannel nodes: the leased subnet, VtepMAC and etcd lease ID.
    pub subnet: Option<Ipv4Net>,
    pub vtep_mac: Option<String>,
    pub etcd_lease: Option<String>,
    /// The socket of the node's own containerd (CRI pods), once started.
    #[serde(default)]
    pub cri_socket: Option<PathBuf>,
}

impl NodeInfo {
    pub fn subnet_file(&self) -> PathBuf {
        self.dir.join("subnet.env")
    }
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }
    pub fn weftd_log(&self) -> PathBuf {
        self.dir.join("weftd.log")
    }
}

/// A pod of a lab, as recorded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodInfo {
    pub name: String,
    /// `<prefix>-<name>`
    pub netns: String,
    /// 1-based node index.
    pub node: usize,
    pub ip: Ipv4Addr,
    /// Host-side veth in the node namespace (fast-path pods).
    pub host_if: Option<String>,
    /// containerd container ID (`ctr` pods).
    pub container: Option<String>,
    /// CRI pod sandbox ID (pods made through the node's containerd CRI plugin).
    #[serde(default)]
    pub sandbox: Option<String>,
}

/// The description of a lab (part of its state record).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabInfo {
    pub prefix: String,
    pub dir: PathBuf,
    pub backend: Backend,
    pub port: u16,
    pub vni: u32,
    pub network: Ipv4Net,
    pub cni: CniKind,
    pub underlay_ns: String,
    pub etcd_endpoint: String,
    pub nodes: Vec<NodeInfo>,
    pub pods: Vec<PodInfo>,
    /// The lab's containerd socket, once started.
    pub containerd_socket: Option<PathBuf>,
    pub weftd_args: Vec<String>,
    pub weftd_env: Vec<(String, String)>,
    pub ready_timeout_ms: u64,
}

/// A running lab. Dropping it tears everything down (unless [`Lab::detach`]ed or
/// obtained with [`Lab::attach`]).
#[derive(Debug)]
pub struct Lab {
    state: LabState,
    info: LabInfo,
    /// Whether Drop tears the lab down.
    owned: bool,
    etcd: Etcd,
    weftd: HashMap<usize, Child>,
    containerd: Option<Child>,
    /// Each node's own containerd (CRI pods), by node index.
    node_containerd: HashMap<usize, Child>,
}

impl Lab {
    /// Builds the lab of `spec` and waits until every weftd node is ready and every
    /// kernel-flannel node is programmed with every lease.
    pub fn start(spec: LabSpec) -> anyhow::Result<Lab> {
        spec.validate()?;
        if !crate::is_root() {
            anyhow::bail!("the lab needs root (network namespaces)");
        }
        let prefix = match &spec.prefix {
            Some(p) => p.clone(),
            None => crate::run_prefix(),
        };
        anyhow::ensure!(
            !state::state_file(&prefix).exists(),
            "a lab with prefix {prefix} is already recorded in {}; remove it with `weft-lab down --prefix {prefix}`",
            state::state_file(&prefix).display()
        );
        let dir = std::env::temp_dir().join(format!("weft-lab-{prefix}"));
        let underlay_ns = format!("{prefix}-ul");
        let mut st = LabState {
            prefix: prefix.clone(),
            dir: dir.clone(),
            ..LabState::default()
        };
        st.namespaces.push(underlay_ns.clone());
        st.save()?;
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;

        let nodes: Vec<NodeInfo> = (1..=spec.nodes)
            .map(|index| NodeInfo {
                index,
                name: format!("n{index}"),
                netns: format!("{prefix}-n{index}"),
                ip: Ipv4Addr::new(192, 0, 2, index as u8),
                kind: if index > spec.nodes - spec.kernel_nodes {
                    NodeKind::KernelFlannel
                } else {
                    NodeKind::Weftd
                },
                dir: dir.join(format!("n{index}")),
                subnet: None,
                vtep_mac: None,
                etcd_lease: None,
                cri_socket: None,
            })
            .collect();
        st.namespaces.extend(nodes.iter().map(|n| n.netns.clone()));
        st.save()?;

        // Until the Lab exists (whose Drop tears down), undo by hand on failure.
        let etcd = match Lab::start_underlay(&underlay_ns, &dir) {
            Ok(etcd) => etcd,
            Err(e) => {
                let _ = st.teardown();
                return Err(e);
            }
        };
        st.processes.push(RecordedProcess {
            what: "etcd".into(),
            proc: etcd.proc_id().context("etcd has no PID")?,
        });
        // From here on, a failure drops the partial lab, which tears it down.

        let info = LabInfo {
            prefix: prefix.clone(),
            dir: dir.clone(),
            backend: spec.backend,
            port: spec.port,
            vni: spec.vni,
            network: spec.network,
            cni: spec.cni,
            underlay_ns,
            etcd_endpoint: etcd.endpoint(),
            nodes,
            pods: Vec::new(),
            containerd_socket: None,
            weftd_args: spec.weftd_args.clone(),
            weftd_env: spec.weftd_env.clone(),
            ready_timeout_ms: spec.ready_timeout.as_millis() as u64,
        };
        let mut lab = Lab {
            state: st,
            info,
            owned: true,
            etcd,
            weftd: HashMap::new(),
            containerd: None,
            node_containerd: HashMap::new(),
        };
        lab.save()?;

        for i in 0..lab.info.nodes.len() {
            lab.create_node(i)?;
        }
        lab.put_netconf(&spec.netconf_json())?;
        // Kernel leases first, so weftd nodes started next see them as taken.
        for i in 0..lab.info.nodes.len() {
            if lab.info.nodes[i].kind == NodeKind::KernelFlannel {
                lab.setup_kernel_node(i)?;
            }
        }
        if spec.start_weftd {
            let weft: Vec<usize> = lab.weft_nodes();
            for &n in &weft {
                lab.start_weftd(n)?;
            }
            for &n in &weft {
                lab.wait_weftd_ready(n)?;
            }
        }
        lab.sync_kernel_nodes()?;
        Ok(lab)
    }

    /// The underlay namespace with its bridge, and etcd in it.
    fn start_underlay(underlay_ns: &str, dir: &Path) -> anyhow::Result<Etcd> {
        let ul = Netns::new(underlay_ns)?.detach();
        let ul = Netns::existing(&ul);
        link::Bridge::create(&ul, "br0", Some(&format!("{ETCD_IP}/24")))?.detach();
        ul.ip(&["link", "set", "br0", "mtu", &UNDERLAY_MTU.to_string()])?;
        Etcd::start_in_dir(&ul, &ETCD_IP.to_string(), &dir.join("etcd"))
    }

    /// A handle on a lab recorded by another process (e.g. `weft-lab up`). Dropping it
    /// leaves the lab running; [`Lab::down`] removes it.
    pub fn attach(prefix: &str) -> anyhow::Result<Lab> {
        let state = LabState::load(prefix)?;
        let info = state.info.clone().with_context(|| {
            format!(
                "lab {prefix} was not fully created; `weft-lab down --prefix {prefix}` removes it"
            )
        })?;
        let etcd = Etcd::existing(
            &info.underlay_ns,
            &ETCD_IP.to_string(),
            2379,
            &info.dir.join("etcd"),
        );
        Ok(Lab {
            state,
            info,
            owned: false,
            etcd,
            weftd: HashMap::new(),
            containerd: None,
            node_containerd: HashMap::new(),
        })
    }

    /// Leaves everything running and recorded (for `weft-lab up`); returns the record.
    pub fn detach(mut self) -> anyhow::Result<LabState> {
        self.save()?;
        self.owned = false;
        Ok(self.state.clone())
    }

    /// Tears the lab down now, reporting what could not be removed.
    pub fn down(mut self) -> anyhow::Result<()> {
        self.owned = false;
        let result = self.state.teardown();
        self.kill_children();
        result
    }

    pub fn prefix(&self) -> &str {
        &self.info.prefix
    }

    /// The lab's description (nodes, pods, addresses, paths).
    pub fn state(&self) -> &LabInfo {
        &self.info
    }

    /// The lab's working directory (logs, data).
    pub fn dir(&self) -> &Path {
        &self.info.dir
    }

    pub fn etcd(&self) -> &Etcd {
        &self.etcd
    }

    /// The lab's etcd, to stop and restart it (outage tests).
    pub fn etcd_mut(&mut self) -> &mut Etcd {
        &mut self.etcd
    }

    /// etcd's endpoint as seen from the nodes: `http://192.0.2.254:2379`.
    pub fn etcd_endpoint(&self) -> &str {
        &self.info.etcd_endpoint
    }

    pub fn underlay(&self) -> Netns {
        Netns::existing(&self.info.underlay_ns)
    }

    /// Node `n` (1-based).
    pub fn node(&self, n: usize) -> anyhow::Result<&NodeInfo> {
        self.info.nodes.get(n.wrapping_sub(1)).with_context(|| {
            format!(
                "no node {n} in lab {} (nodes are 1..={})",
                self.info.prefix,
                self.info.nodes.len()
            )
        })
    }

    /// The namespace of node `n`.
    pub fn node_ns(&self, n: usize) -> anyhow::Result<Netns> {
        Ok(Netns::existing(&self.node(n)?.netns))
    }

    /// Indexes of the weftd nodes.
    pub fn weft_nodes(&self) -> Vec<usize> {
        self.info
            .nodes
            .iter()
            .filter(|n| n.kind == NodeKind::Weftd)
            .map(|n| n.index)
            .collect()
    }

    /// Indexes of the kernel-flannel nodes.
    pub fn kernel_nodes(&self) -> Vec<usize> {
        self.info
            .nodes
            .iter()
            .filter(|n| n.kind == NodeKind::KernelFlannel)
            .map(|n| n.index)
            .collect()
    }

    pub fn pod(&self, name: &str) -> anyhow::Result<&PodInfo> {
        self.info
            .pods
            .iter()
            .find(|p| p.name == name)
            .with_context(|| format!("no pod {name:?} in lab {}", self.info.prefix))
    }

    pub fn pod_ns(&self, name: &str) -> anyhow::Result<Netns> {
        Ok(Netns::existing(&self.pod(name)?.netns))
    }

    pub fn pod_ip(&self, name: &str) -> anyhow::Result<Ipv4Addr> {
        Ok(self.pod(name)?.ip)
    }

    /// The namespace of a pod (`name`), a node (`n1` or `1`) or the underlay (`ul`), or
    /// any namespace of this lab by its full name.
    pub fn netns_of(&self, target: &str) -> anyhow::Result<Netns> {
        if let Ok(p) = self.pod(target) {
            return Ok(Netns::existing(&p.netns));
        }
        if let Some(n) = self
            .info
            .nodes
            .iter()
            .find(|n| n.name == target || n.netns == target || n.index.to_string() == target)
        {
            return Ok(Netns::existing(&n.netns));
        }
        if target == "ul" || target == self.info.underlay_ns {
            return Ok(self.underlay());
        }
        if self.state.namespaces.iter().any(|n| n == target) {
            return Ok(Netns::existing(target));
        }
        anyhow::bail!(
            "{target:?} is neither a pod, a node (n1..n{}) nor `ul` of lab {}",
            self.info.nodes.len(),
            self.info.prefix
        )
    }

    /// Runs `cmd` in the namespace of a pod or node (see [`Lab::netns_of`]); `Err` with
    /// stderr when it fails.
    pub fn exec(&self, target: &str, cmd: &[&str]) -> anyhow::Result<String> {
        let (program, args) = cmd.split_first().context("exec: empty command")?;
        self.netns_of(target)?.run(program, args)
    }

    /// Whether `from` (a pod or node) gets an ICMP echo reply from `to` within 3 s.
    pub fn ping(&self, from: &str, to: Ipv4Addr) -> bool {
        self.exec(
            from,
            &["ping", "-c1", "-w3", "-i0.2", "-q", &to.to_string()],
        )
        .is_ok()
    }

    /// Writes the net-conf to `<prefix>/config`.
    pub fn put_netconf(&self, json: &str) -> anyhow::Result<()> {
        self.etcd.put(&format!("{ETCD_PREFIX}/config"), json)
    }

    /// All leases in etcd (flannel's schema).
    pub fn leases(&self) -> anyhow::Result<Vec<FlannelLease>> {
        self.etcd
            .get_prefix(&format!("{ETCD_PREFIX}/subnets/"))?
            .iter()
            .map(|(k, v)| FlannelLease::parse(k, v))
            .collect()
    }

    /// Waits until etcd holds at least `n` leases.
    pub fn wait_leases(&self, n: usize, timeout: Duration) -> anyhow::Result<Vec<FlannelLease>> {
        crate::wait_for(&format!("{n} leases in etcd"), timeout, || {
            self.leases().ok().filter(|l| l.len() >= n)
        })
    }

    /// The node's subnet and pod MTU: from its subnet.env (weftd writes it; the lab
    /// writes it for kernel-flannel nodes).
    pub fn node_subnet(&self, n: usize) -> anyhow::Result<(Ipv4Net, u32)> {
        let node = self.node(n)?;
        let path = node.subnet_file();
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("node {n}: reading {}", path.display()))?;
        parse_subnet_env(&text).with_context(|| format!("node {n}: {}", path.display()))
    }

    // ---- bookkeeping -------------------------------------------------------------

    fn save(&mut self) -> anyhow::Result<()> {
        self.state.info = Some(self.info.clone());
        if let Some(s) = &self.info.containerd_socket {
            if !self.state.containerd_sockets.contains(s) {
                self.state.containerd_sockets.push(s.clone());
            }
        }
        self.state.save()
    }

    fn kill_children(&mut self) {
        for (_, mut c) in self.weftd.drain() {
            c.kill();
        }
        if let Some(mut c) = self.containerd.take() {
            c.kill();
        }
        for (_, mut c) in self.node_containerd.drain() {
            c.kill();
        }
        self.etcd.kill();
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.owned {
            // Teardown first: it asks containerd to remove the containers while it still
            // runs; then the guards reap what teardown killed.
            if let Err(e) = self.state.teardown() {
                eprintln!("weft lab: {e:#}");
            }
            self.kill_children();
        } else {
            // Attached or detached: the daemons stay; only forget our handles.
            for (_, c) in self.weftd.drain() {
                c.detach();
            }
            if let Some(c) = self.containerd.take() {
                c.detach();
            }
            for (_, c) in self.node_containerd.drain() {
                c.detach();
            }
            self.etcd.forget();
        }
    }
}

/// Removes the lab recorded under `prefix` (processes, namespaces, directories).
pub fn teardown_prefix(prefix: &str) -> anyhow::Result<()> {
    LabState::load(prefix)?.teardown()
}

/// The first IPv4 address in `ip -j addr` output.
fn first_ipv4(ip_json: &str) -> Option<Ipv4Addr> {
    let v: serde_json::Value = serde_json::from_str(ip_json).ok()?;
    v.as_array()?.iter().find_map(|l| {
        l.get("addr_info")?
            .as_array()?
            .iter()
            .find_map(|a| a.get("local")?.as_str()?.parse().ok())
    })
}

/// `(subnet, mtu)` from flannel's subnet.env (`FLANNEL_SUBNET=10.244.1.1/24`, ...).
pub fn parse_subnet_env(text: &str) -> anyhow::Result<(Ipv4Net, u32)> {
    let mut subnet = None;
    let mut mtu = OVERLAY_MTU;
    for line in text.lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        match k.trim() {
            "FLANNEL_SUBNET" => {
                let net: Ipv4Net = v
                    .trim()
                    .parse()
                    .with_context(|| format!("FLANNEL_SUBNET={v:?} is not a CIDR"))?;
                subnet = Some(net.trunc());
            }
            "FLANNEL_MTU" => {
                mtu = v
                    .trim()
                    .parse()
                    .with_context(|| format!("FLANNEL_MTU={v:?} is not a number"))?;
            }
            _ => {}
        }
    }
    Ok((subnet.context("no FLANNEL_SUBNET")?, mtu))
}

#[cfg(test)]
mod tests;
