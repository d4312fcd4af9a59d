//! Shared by the `cni_*` tests: a "node" namespace with its own subnet.env, IPAM data
//! dir and CNI_PATH (the built `weft` plus links to the reference plugins, in a temp
//! dir, so /opt/cni/bin is never written), and a runner that drives a plugin binary
//! through the CNI environment variables and stdin, inside the node namespace.
#![allow(dead_code)]

use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::Context as _;
use serde_json::{json, Value};
use weft_tests::netns::Netns;

pub const VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The `weft` binary under test; built by `cargo build` (scripts/test.sh does it).
pub fn weft_bin() -> PathBuf {
    let path = weft_tests::bin_path("weft");
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build -p weft-cni` first",
        path.display()
    );
    path
}

/// A node namespace with what the plugin needs.
pub struct CniNode {
    pub prefix: String,
    pub ns: Netns,
    pub dir: tempfile::TempDir,
    pub subnet_file: PathBuf,
    pub data_dir: PathBuf,
    pub cni_path: PathBuf,
    pub network: String,
}

/// One plugin invocation's environment.
#[derive(Debug, Clone)]
pub struct Call<'a> {
    pub command: &'a str,
    pub container_id: &'a str,
    pub netns: &'a str,
    pub ifname: &'a str,
}

/// What a plugin run produced.
#[derive(Debug)]
pub struct Outcome {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
    pub json: Option<Value>,
}

impl Outcome {
    /// The result JSON of a successful run, or a panic naming what went wrong.
    pub fn ok(&self, what: &str) -> Value {
        assert!(
            self.success,
            "{what} failed: stdout={} stderr={}",
            self.stdout, self.stderr
        );
        self.json.clone().unwrap_or(Value::Null)
    }

    /// The spec error object of a failed run; asserts the shape and the code.
    pub fn err(&self, what: &str, code: u64) -> Value {
        assert!(!self.success, "{what} should have failed: {}", self.stdout);
        let v = self
            .json
            .clone()
            .unwrap_or_else(|| panic!("{what}: stdout is not JSON: {:?}", self.stdout));
        assert!(v["cniVersion"].is_string(), "{what}: no cniVersion in {v}");
        assert!(
            v["msg"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: no msg in {v}"
        );
        assert_eq!(v["code"].as_u64(), Some(code), "{what}: {v}");
        v
    }
}

impl CniNode {
    /// `tag` makes the names of this test unique within the run (≤ 4 chars).
    pub fn new(tag: &str, subnet_env: &str) -> anyhow::Result<CniNode> {
        let prefix = format!("{}{tag}", weft_tests::run_prefix());
        let ns = Netns::new(&format!("{prefix}-node"))?;
        let dir = tempfile::Builder::new().prefix("weft-cni-").tempdir()?;
        let subnet_file = dir.path().join("subnet.env");
        std::fs::write(&subnet_file, subnet_env)?;
        let data_dir = dir.path().join("ipam");
        let cni_path = dir.path().join("bin");
        std::fs::create_dir_all(&cni_path)?;
        std::os::unix::fs::symlink(weft_bin(), cni_path.join("weft"))?;
        for entry in std::fs::read_dir("/opt/cni/bin").context("reading /opt/cni/bin")? {
            let entry = entry?;
            let target = std::fs::canonicalize(entry.path())?;
            let link = cni_path.join(entry.file_name());
            if !link.exists() {
                std::os::unix::fs::symlink(target, link)?;
            }
        }
        Ok(CniNode {
            network: format!("{prefix}-net"),
            prefix,
            ns,
            dir,
            subnet_file,
            data_dir,
            cni_path,
        })
    }

    /// A node with FLANNEL_SUBNET 10.244.1.1/24, MTU 1450.
    pub fn standard(tag: &str) -> anyhow::Result<CniNode> {
        Self::new(tag, &subnet_env("10.244.1.1/24", 1450))
    }

    /// A pod namespace `<prefix>-<name>`.
    pub fn pod(&self, name: &str) -> anyhow::Result<Netns> {
        Netns::new(&format!("{}-{name}", self.prefix))
    }

    /// The `weft` network config for `version`, with `extra` fields merged in.
    pub fn conf(&self, version: &str, extra: Value) -> Value {
        let mut conf = json!({
            "cniVersion": version,
            "name": self.network,
            "type": "weft",
            "subnetFile": self.subnet_file,
            "bridge": "cni0",
            "dataDir": self.data_dir,
        });
        if let (Some(c), Value::Object(extra)) = (conf.as_object_mut(), extra) {
            c.extend(extra);
        }
        conf
    }

    /// Run `plugin` (a name in this node's CNI_PATH) inside the node namespace.
    pub fn invoke(&self, plugin: &str, call: &Call<'_>, stdin: &[u8]) -> anyhow::Result<Outcome> {
        let child = self.spawn(plugin, call, stdin, &[])?;
        let out = child.wait_with_output()?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        Ok(Outcome {
            success: out.status.success(),
            json: serde_json::from_str(stdout.trim()).ok(),
            stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// `weft` with a config value.
    pub fn weft(&self, call: &Call<'_>, conf: &Value) -> Outcome {
        self.invoke("weft", call, conf.to_string().as_bytes())
            .expect("running weft")
    }

    /// Start `plugin` (without waiting): stdin written and closed, stdout/stderr piped.
    pub fn spawn(
        &self,
        plugin: &str,
        call: &Call<'_>,
        stdin: &[u8],
        extra_env: &[(&str, &str)],
    ) -> anyhow::Result<std::process::Child> {
        let node_ns = File::open(format!("/run/netns/{}", self.ns.name()))?;
        let mut cmd = Command::new(self.cni_path.join(plugin));
        cmd.env("CNI_COMMAND", call.command)
            .env("CNI_CONTAINERID", call.container_id)
            .env("CNI_NETNS", call.netns)
            .env("CNI_IFNAME", call.ifname)
            .env("CNI_PATH", &self.cni_path)
            .envs(extra_env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: the closure runs in the forked child before exec and only calls
        // setns(2), which is async-signal-safe; `node_ns` stays open until after spawn.
        unsafe {
            cmd.pre_exec(move || {
                nix::sched::setns(node_ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from)
            });
        }
        let mut child = cmd.spawn().with_context(|| format!("spawning {plugin}"))?;
        if let Some(mut input) = child.stdin.take() {
            input.write_all(stdin)?;
        }
        Ok(child)
    }

    /// Allocation files (`<ip>`) in this node's built-in IPAM store.
    pub fn allocations(&self) -> Vec<String> {
        list_ips(&self.data_dir.join(&self.network))
    }

    /// Names of the host-side veths (`wf…`) in the node namespace.
    pub fn host_veths(&self) -> Vec<String> {
        let out = self
            .ns
            .ip(&["-o", "link", "show", "type", "veth"])
            .unwrap_or_default();
        out.lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .filter(|n| n.starts_with("wf"))
            .collect()
    }
}

/// IP-named files in a host-local-layout directory.
pub fn list_ips(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.parse::<std::net::Ipv4Addr>().is_ok())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

pub fn subnet_env(subnet: &str, mtu: u32) -> String {
    format!("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET={subnet}\nFLANNEL_MTU={mtu}\nFLANNEL_IPMASQ=false\n")
}

pub fn netns_path(ns: &Netns) -> String {
    format!("/run/netns/{}", ns.name())
}

/// `conf` with `prevResult` set.
pub fn with_prev(conf: &Value, prev: &Value) -> Value {
    let mut c = conf.clone();
    c["prevResult"] = prev.clone();
    c
}

/// The pod's IPv4 address on `ifname` ("10.244.1.2/24"), if any.
pub fn pod_addr(pod: &Netns, ifname: &str) -> Option<String> {
    let out = pod.ip(&["-j", "-4", "addr", "show", "dev", ifname]).ok()?;
    let v: Value = serde_json::from_str(&out).ok()?;
    let a = &v[0]["addr_info"][0];
    Some(format!(
        "{}/{}",
        a["local"].as_str()?,
        a["prefixlen"].as_u64()?
    ))
}
