//! The lab's pods: plain veth pods (the fast path of e2e tests) and pods created by
//! containerd through the CNI plugin, and the lab's containerd itself.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;

use super::*;

impl Lab {
    /// A pod without containerd (the fast path of e2e tests): namespace
    /// `<prefix>-<name>`, a veth into node `n`'s `cni0`, the next free address of the
    /// node's subnet, default route via `.1`, MTU from the node's subnet.env.
    pub fn add_pod(&mut self, n: usize, name: &str) -> anyhow::Result<Ipv4Addr> {
        self.check_new_pod(name)?;
        let node = self.node(n)?.clone();
        let timeout = Duration::from_millis(self.info.ready_timeout_ms);
        let (subnet, mtu) = crate::wait_for(
            &format!("{} of node {n}", node.subnet_file().display()),
            timeout,
            || self.node_subnet(n).ok(),
        )?;
        let node_ns = Netns::existing(&node.netns);
        crate::wait_until(&format!("cni0 in node {n}"), timeout, || {
            link::exists(&node_ns, "cni0")
        })?;
        // Addresses taken by pods we know of and by the CNI plugins' IPAM (host-local's
        // layout: one file per address); ours is reserved there too, so a later `ctr`
        // pod on this node does not get it.
        let ipam_dir = node.dir.join("cni-ipam").join("weft");
        let mut used: Vec<Ipv4Addr> = self
            .info
            .pods
            .iter()
            .filter(|p| p.node == n)
            .map(|p| p.ip)
            .collect();
        if let Ok(entries) = std::fs::read_dir(&ipam_dir) {
            used.extend(
                entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<Ipv4Addr>().ok()),
            );
        }
        let ip = subnet
            .hosts()
            .skip(1) // .1 is the gateway on cni0
            .find(|ip| !used.contains(ip))
            .with_context(|| format!("no free address left in {subnet}"))?;
        std::fs::create_dir_all(&ipam_dir)?;
        std::fs::write(
            ipam_dir.join(ip.to_string()),
            format!("{}-{name}\neth0", self.info.prefix),
        )?;
        let host_if = self.next_host_if();
        let pod_ns_name = format!("{}-{name}", self.info.prefix);
        self.state.namespaces.push(pod_ns_name.clone());
        self.save()?;
        let pod_ns = Netns::new(&pod_ns_name)?.detach();
        let pod_ns = Netns::existing(&pod_ns);
        Veth::create(
            End::new(&node_ns, &host_if),
            End::with_addr(&pod_ns, "eth0", &format!("{ip}/{}", subnet.prefix_len())),
            Some(mtu),
        )?
        .detach();
        link::Bridge::existing(&node_ns, "cni0").attach(&host_if)?;
        let gw = Ipv4Addr::from(u32::from(subnet.network()) + 1);
        pod_ns.ip(&["route", "add", "default", "via", &gw.to_string()])?;
        self.info.pods.push(PodInfo {
            name: name.to_owned(),
            netns: pod_ns_name,
            node: n,
            ip,
            host_if: Some(host_if),
            container: None,
            sandbox: None,
        });
        self.save()?;
        Ok(ip)
    }

    /// A pod created the way a runtime creates one: `ctr run --cni` (inside node `n`'s
    /// namespace) against the lab's containerd, with the `weft` CNI plugin (or the
    /// reference bridge, per [`LabSpec::cni`]) and a busybox root filesystem. The pod's
    /// namespace is then named `<prefix>-<name>` (`ip netns attach`) so that
    /// [`Lab::exec`] and [`Lab::ping`] work as for [`Lab::add_pod`].
    pub fn ctr_pod(&mut self, n: usize, name: &str) -> anyhow::Result<Ipv4Addr> {
        self.check_new_pod(name)?;
        let node = self.node(n)?.clone();
        let timeout = Duration::from_millis(self.info.ready_timeout_ms);
        let (subnet, mtu) = crate::wait_for(
            &format!("{} of node {n}", node.subnet_file().display()),
            timeout,
            || self.node_subnet(n).ok(),
        )?;
        let sock = self.ensure_containerd()?;
        let paths = containerd::Paths::new(&self.info.dir);
        let rootfs = containerd::ensure_rootfs(&self.info.dir)?;
        let weft_plugin = crate::bin_path("weft");
        anyhow::ensure!(
            self.info.cni != CniKind::Weft || weft_plugin.is_file(),
            "{} does not exist; build it with `cargo build -p weft-cni --bins`",
            weft_plugin.display()
        );
        let cni_bin = containerd::ensure_cni_bin(&self.info.dir, &weft_plugin)?;
        // Mount points for `ip netns exec`'s and our bind mounts (empty directories).
        for d in ["/etc/cni", "/var/lib/cni"] {
            std::fs::create_dir_all(d).with_context(|| format!("creating {d}"))?;
        }
        let etc = PathBuf::from(format!("/etc/netns/{}", node.netns));
        if !self.state.etc_netns.contains(&etc) {
            self.state.etc_netns.push(etc.clone());
            self.save()?;
        }
        let net_d = etc.join("cni/net.d");
        std::fs::create_dir_all(&net_d).with_context(|| format!("creating {}", net_d.display()))?;
        std::fs::write(
            net_d.join("10-weft.conflist"),
            containerd::conflist(self.info.cni, &node, subnet, mtu),
        )?;
        let var_lib_cni = node.dir.join("var-lib-cni");
        std::fs::create_dir_all(&var_lib_cni)?;

        let id = format!("{}-{name}", self.info.prefix);
        self.state.namespaces.push(id.clone());
        self.info.pods.push(PodInfo {
            name: name.to_owned(),
            netns: id.clone(),
            node: n,
            ip: Ipv4Addr::UNSPECIFIED,
            host_if: None,
            container: Some(id.clone()),
            sandbox: None,
        });
        self.save()?;
        let script = r#"mount --bind "$1" /opt/cni/bin && mount --bind "$2" /var/lib/cni && exec ctr -a "$3" run -d --null-io --cni --runc-root "$4" --cgroup "" --rootfs "$5" "$6" /bin/sleep 2000000000"#;
        let mut cmd = Netns::existing(&node.netns).command("sh");
        cmd.args(["-c", script, "sh"])
            .arg(&cni_bin)
            .arg(&var_lib_cni)
            .arg(&sock)
            .arg(paths.runc_root())
            .arg(&rootfs)
            .arg(&id);
        crate::run_cmd(&mut cmd)
            .with_context(|| format!("ctr run --cni of pod {name} on node {n}"))?;
        let pid = crate::wait_for(&format!("task {id} to run"), timeout, || {
            containerd::task_pid(&self.ctr(&["task", "ls"]).ok()?, &id)
        })?;
        let proc =
            ProcId::of(pid).with_context(|| format!("task {id} (PID {pid}) exited at once"))?;
        self.state.processes.push(RecordedProcess {
            what: format!("pod {name}"),
            proc,
        });
        self.save()?;
        crate::ip(&["netns", "attach", &id, &pid.to_string()])?;
        let pod_ns = Netns::existing(&id);
        let addrs = pod_ns.ip(&["-j", "-4", "addr", "show", "dev", "eth0"])?;
        let ip = first_ipv4(&addrs).with_context(|| {
            format!("pod {name}: no IPv4 address on eth0 after CNI ADD: {addrs}")
        })?;
        if let Some(p) = self.info.pods.iter_mut().find(|p| p.name == name) {
            p.ip = ip;
        }
        self.save()?;
        Ok(ip)
    }

    /// `ctr -a <lab socket> <args>` (containerd must be running).
    pub fn ctr(&self, args: &[&str]) -> anyhow::Result<String> {
        let sock = self
            .info
            .containerd_socket
            .as_ref()
            .context("the lab's containerd is not running")?;
        crate::run_cmd(
            std::process::Command::new("ctr")
                .arg("-a")
                .arg(sock)
                .args(args),
        )
    }

    /// Starts the lab's containerd (in the underlay namespace) unless it runs; returns
    /// its socket.
    pub fn ensure_containerd(&mut self) -> anyhow::Result<PathBuf> {
        let paths = containerd::Paths::new(&self.info.dir);
        let sock = paths.socket();
        if self.info.containerd_socket.is_some() && self.ctr(&["version"]).is_ok() {
            return Ok(sock);
        }
        std::fs::create_dir_all(&paths.dir)?;
        std::fs::write(paths.config(), paths.config_toml())?;
        self.info.containerd_socket = Some(sock.clone());
        self.save()?;
        let child = self.spawn_containerd(
            "containerd",
            &self.info.underlay_ns.clone(),
            &paths.config(),
            &paths.log(),
            &sock,
        )?;
        self.containerd = Some(child);
        Ok(sock)
    }

    /// Starts a containerd with `config` in network namespace `netns` (logging to
    /// `log`), records its process for `weft-lab down`, and waits until it answers on
    /// `socket`; if it exits first, the error carries its log's last lines. `what`
    /// names it in messages and the record.
    pub(super) fn spawn_containerd(
        &mut self,
        what: &str,
        netns: &str,
        config: &Path,
        log_path: &Path,
        socket: &Path,
    ) -> anyhow::Result<Child> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        // `nsenter --net` rather than `ip netns exec`: the latter remounts /sys for the
        // namespace, which hides the cgroup mounts runc needs. In a node's namespace,
        // as containerd runs in the host's on a real node, the CNI plugins it runs see
        // the node's links.
        let mut cmd = std::process::Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{netns}"))
            .arg("containerd")
            .arg("--config")
            .arg(config)
            .stdout(log.try_clone()?)
            .stderr(log);
        let mut child = Child::spawn(cmd).with_context(|| format!("starting {what}"))?;
        self.state.processes.push(RecordedProcess {
            what: what.to_owned(),
            proc: child.proc_id(),
        });
        self.save()?;
        let timeout = Duration::from_millis(self.info.ready_timeout_ms);
        let mut exited = None;
        let ready = crate::wait_until(&format!("{what} to answer"), timeout, || {
            if let Some(s) = child.try_status() {
                exited = Some(s);
                return true;
            }
            crate::run_cmd(
                std::process::Command::new("ctr")
                    .arg("-a")
                    .arg(socket)
                    .arg("version"),
            )
            .is_ok()
        });
        if let Some(status) = exited {
            anyhow::bail!(
                "{what} exited ({status}); last lines of {}:\n{}",
                log_path.display(),
                crate::etcd::tail(log_path, 15)
            );
        }
        ready?;
        Ok(child)
    }

    pub(super) fn check_new_pod(&self, name: &str) -> anyhow::Result<()> {
        anyhow::ensure!(
            !name.is_empty()
                && name.len() <= 20
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !name.starts_with('-'),
            "pod name {name:?}: 1 to 20 lowercase letters, digits or '-'"
        );
        anyhow::ensure!(
            !self.info.pods.iter().any(|p| p.name == name),
            "lab {} already has a pod {name:?}",
            self.info.prefix
        );
        anyhow::ensure!(
            !(name == "ul" || self.info.nodes.iter().any(|n| n.name == name)),
            "pod name {name:?} is taken by a node or the underlay"
        );
        Ok(())
    }

    fn next_host_if(&self) -> String {
        let n = self
            .info
            .pods
            .iter()
            .filter_map(|p| {
                p.host_if
                    .as_deref()?
                    .strip_prefix("vp")?
                    .parse::<u32>()
                    .ok()
            })
            .max()
            .unwrap_or(0);
        format!("vp{}", n + 1)
    }
}
