//! The lab's CRI pods: each node's own containerd (started on first use) and pods made
//! through its CRI plugin as the kubelet makes them (see [`super::cri`]).

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;

use super::cri::{CriClient, NodePaths, SandboxSpec, CRI_NAMESPACE};
use super::*;

impl Lab {
    /// Starts node `n`'s containerd with its CRI plugin unless it already answers, and
    /// returns its socket. Its CNI `conf_dir` gets the node's conflist (main plugin,
    /// portmap, bandwidth) and the pause image is imported before this returns, with
    /// the CRI reporting `NetworkReady`.
    pub fn ensure_node_containerd(&mut self, n: usize) -> anyhow::Result<PathBuf> {
        let node = self.node(n)?.clone();
        let paths = NodePaths::new(&node);
        let sock = paths.socket();
        if self.node_containerd.contains_key(&n) || node.cri_socket.is_some() {
            if let Ok(true) = CriClient::connect(&sock).and_then(|mut c| c.network_ready()) {
                return Ok(sock);
            }
        }
        let timeout = Duration::from_millis(self.info.ready_timeout_ms);
        let (subnet, mtu) = crate::wait_for(
            &format!("{} of node {n}", node.subnet_file().display()),
            timeout,
            || self.node_subnet(n).ok(),
        )?;
        let weft_plugin = crate::bin_path("weft");
        anyhow::ensure!(
            self.info.cni != CniKind::Weft || weft_plugin.is_file(),
            "{} does not exist; build it with `cargo build -p weft-cni --bins`",
            weft_plugin.display()
        );
        let cni_bin = containerd::ensure_cni_bin(&self.info.dir, &weft_plugin)?;
        let image = cri::ensure_pause_image(&self.info.dir)?;
        std::fs::create_dir_all(paths.cni_conf_dir())
            .with_context(|| format!("creating {}", paths.cni_conf_dir().display()))?;
        std::fs::write(
            paths.cni_conf_dir().join("10-weft.conflist"),
            cri::conflist(self.info.cni, &node, subnet, mtu),
        )?;
        std::fs::write(paths.config(), paths.config_toml(&cni_bin))?;
        self.info.nodes[n - 1].cri_socket = Some(sock.clone());
        if !self.state.containerd_sockets.contains(&sock) {
            self.state.containerd_sockets.push(sock.clone());
        }
        self.save()?;
        let child = self.spawn_containerd(
            &format!("containerd n{n}"),
            &node.netns,
            &paths.config(),
            &paths.log(),
            &sock,
        )?;
        self.node_containerd.insert(n, child);
        let image = image.to_string_lossy();
        crate::run_cmd(
            std::process::Command::new("ctr")
                .arg("-a")
                .arg(&sock)
                .args(["-n", CRI_NAMESPACE, "images", "import", &image]),
        )
        .with_context(|| format!("importing the pause image into containerd of n{n}"))?;
        crate::wait_until(
            &format!("the CRI of n{n} to report NetworkReady"),
            timeout,
            || {
                CriClient::connect(&sock)
                    .and_then(|mut c| c.network_ready())
                    .unwrap_or(false)
            },
        )
        .with_context(|| format!("see {}", paths.log().display()))?;
        Ok(sock)
    }

    /// A CRI client for node `n`'s containerd (which must be running).
    pub fn cri(&self, n: usize) -> anyhow::Result<CriClient> {
        let sock = self
            .node(n)?
            .cri_socket
            .clone()
            .with_context(|| format!("node {n} has no containerd (make a CRI pod first)"))?;
        CriClient::connect(&sock)
    }

    /// A pod made the way the kubelet makes one: `RunPodSandbox` on node `n`'s
    /// containerd (started if needed), whose CRI plugin runs the CNI chain; then
    /// `PodSandboxStatus` for its address. The sandbox's namespace is also named
    /// `<prefix>-<name>` (`ip netns attach`) so [`Lab::exec`] and [`Lab::ping`] work as
    /// for other pods.
    pub fn cri_pod(
        &mut self,
        n: usize,
        name: &str,
        spec: &SandboxSpec,
    ) -> anyhow::Result<Ipv4Addr> {
        self.check_new_pod(name)?;
        self.ensure_node_containerd(n)?;
        let mut cri = self.cri(n)?;
        let alias = format!("{}-{name}", self.info.prefix);
        self.state.namespaces.push(alias.clone());
        self.info.pods.push(PodInfo {
            name: name.to_owned(),
            netns: alias.clone(),
            node: n,
            ip: Ipv4Addr::UNSPECIFIED,
            host_if: None,
            container: None,
            sandbox: None,
        });
        self.save()?;
        let id = match cri.run_pod_sandbox(&self.info.prefix, name, spec) {
            Ok(id) => id,
            Err(e) => {
                // Nothing was made (containerd undoes a failed sandbox): forget the pod.
                self.info.pods.retain(|p| p.name != name);
                self.state.namespaces.retain(|ns| *ns != alias);
                self.save()?;
                return Err(e.context(format!("pod {name} on node {n}")));
            }
        };
        self.pod_mut(name)?.sandbox = Some(id.clone());
        self.save()?;
        let status = cri.status(&id)?;
        let pid = status
            .pid
            .with_context(|| format!("pod {name}: the CRI reports no pause PID: {status:?}"))?;
        let ip = status.ip.with_context(|| {
            format!("pod {name}: the CRI reports no IPv4 address after CNI ADD: {status:?}")
        })?;
        let proc = ProcId::of(pid)
            .with_context(|| format!("pod {name}: pause (PID {pid}) exited at once"))?;
        self.state.processes.push(RecordedProcess {
            what: format!("pod {name}"),
            proc,
        });
        crate::ip(&["netns", "attach", &alias, &pid.to_string()])?;
        self.pod_mut(name)?.ip = ip;
        self.save()?;
        Ok(ip)
    }

    /// `StopPodSandbox` of a CRI pod (containerd runs CNI DEL and kills the pause
    /// process); the pod's `<prefix>-<name>` alias goes too. The pod stays recorded
    /// (without an address) until [`Lab::cri_remove_pod`].
    pub fn cri_stop_pod(&mut self, name: &str) -> anyhow::Result<()> {
        let pod = self.pod(name)?.clone();
        let id = pod
            .sandbox
            .clone()
            .with_context(|| format!("pod {name} was not made through the CRI"))?;
        self.cri(pod.node)?.stop(&id)?;
        crate::netns::delete(&pod.netns)?;
        self.state.namespaces.retain(|n| *n != pod.netns);
        let what = format!("pod {name}");
        self.state.processes.retain(|p| p.what != what);
        self.pod_mut(name)?.ip = Ipv4Addr::UNSPECIFIED;
        self.save()
    }

    /// `StopPodSandbox` (if not stopped) and `RemovePodSandbox`; the pod is forgotten.
    pub fn cri_remove_pod(&mut self, name: &str) -> anyhow::Result<()> {
        let pod = self.pod(name)?.clone();
        let id = pod
            .sandbox
            .clone()
            .with_context(|| format!("pod {name} was not made through the CRI"))?;
        if pod.ip != Ipv4Addr::UNSPECIFIED {
            self.cri_stop_pod(name)?;
        }
        self.cri(pod.node)?.remove(&id)?;
        self.info.pods.retain(|p| p.name != name);
        self.save()
    }

    fn pod_mut(&mut self, name: &str) -> anyhow::Result<&mut PodInfo> {
        let prefix = self.info.prefix.clone();
        self.info
            .pods
            .iter_mut()
            .find(|p| p.name == name)
            .with_context(|| format!("no pod {name:?} in lab {prefix}"))
    }
}
