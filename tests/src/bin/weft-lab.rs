//! `weft-lab`: a weft test cluster in network namespaces on this machine.
//!
//! ```text
//! weft-lab up --nodes 3 --kernel-nodes 1     # etcd, 2 weftd nodes, 1 kernel-flannel node
//! weft-lab pod add n1 web                    # a pod via containerd + the weft CNI plugin
//! weft-lab pod add --cri n2 api --host-port 8080:80   # RunPodSandbox on n2's containerd
//! weft-lab exec web -- ping -c1 10.244.2.2
//! weft-lab status
//! weft-lab down                              # the last lab; --prefix P or --all
//! ```
//!
//! `up` returns with the lab running (daemons detached) and recorded in
//! `/run/weft-lab/<prefix>.json`; every other command finds the lab there, so `down`
//! works even after `weft-lab` or its daemons were killed.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use weft_tests::lab::cri::{HostPort, SandboxSpec};
use weft_tests::lab::state::{LabState, STATE_DIR};
use weft_tests::lab::{self, Backend, CniKind, Lab, LabSpec, NodeKind};

#[derive(Debug, Parser)]
#[command(
    name = "weft-lab",
    version,
    about = "A weft test cluster in network namespaces"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build a lab and leave it running.
    Up {
        /// Number of nodes.
        #[arg(long, default_value_t = 2)]
        nodes: usize,
        #[arg(long, value_enum, default_value_t = Backend::Vxlan)]
        backend: Backend,
        /// How many of the nodes (the last ones) are kernel-flannel nodes.
        #[arg(long, default_value_t = 0)]
        kernel_nodes: usize,
        /// VXLAN UDP port.
        #[arg(long, default_value_t = 8472)]
        port: u16,
        /// Name prefix (1-8 lowercase letters/digits); random if not given.
        #[arg(long)]
        prefix: Option<String>,
        /// CNI network of containerd pods.
        #[arg(long, value_enum, default_value_t = CniKind::Weft)]
        cni: CniKind,
        /// Seconds to wait for each daemon to become ready.
        #[arg(long, default_value_t = 60)]
        ready_timeout: u64,
        /// Print the lab's description as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a lab's nodes, pods and daemons.
    Status {
        #[arg(long)]
        prefix: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Pods.
    Pod {
        #[command(subcommand)]
        command: PodCommand,
    },
    /// Run a command in a pod's or node's namespace (`n1`, `ul` for the underlay).
    Exec {
        #[arg(long)]
        prefix: Option<String>,
        /// Pod name, node (`n1`) or `ul`.
        target: String,
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Reprogram the kernel-flannel nodes for the current leases in etcd.
    Sync {
        #[arg(long)]
        prefix: Option<String>,
    },
    /// Crash or (re)start weftd on a node.
    Weftd {
        #[arg(long)]
        prefix: Option<String>,
        #[arg(value_enum)]
        action: WeftdAction,
        /// Node (`n1` or `1`).
        node: String,
    },
    /// Remove a lab completely (the last one created by `up` unless --prefix/--all).
    Down {
        #[arg(long, conflicts_with = "all")]
        prefix: Option<String>,
        /// Every recorded lab, including those of running tests.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Debug, Subcommand)]
enum PodCommand {
    /// Add a pod on a node: via the lab's containerd (`ctr run --cni`) unless --fast or
    /// --cri.
    Add {
        #[arg(long)]
        prefix: Option<String>,
        /// A veth-only pod without containerd.
        #[arg(long, conflicts_with = "cri")]
        fast: bool,
        /// Through the CRI as the kubelet does: RunPodSandbox on the node's own
        /// containerd, whose CRI plugin runs the CNI chain (weft, portmap, bandwidth).
        #[arg(long)]
        cri: bool,
        /// CRI pods: the Kubernetes namespace.
        #[arg(long, default_value = "default", requires = "cri")]
        namespace: String,
        /// CRI pods: a host port, `HOST:CONTAINER` or `HOST:CONTAINER/udp` (repeatable).
        #[arg(long = "host-port", value_parser = parse_host_port, requires = "cri")]
        host_ports: Vec<HostPort>,
        /// CRI pods: a pod annotation `KEY=VALUE` (repeatable), e.g.
        /// `kubernetes.io/ingress-bandwidth=20M`.
        #[arg(long = "annotation", value_parser = parse_annotation, requires = "cri")]
        annotations: Vec<(String, String)>,
        /// Node (`n1` or `1`).
        node: String,
        name: String,
    },
    /// Remove a CRI pod (StopPodSandbox, then RemovePodSandbox).
    Rm {
        #[arg(long)]
        prefix: Option<String>,
        name: String,
    },
}

/// `8080:80` or `8080:80/udp`.
fn parse_host_port(s: &str) -> Result<HostPort, String> {
    let (ports, udp) = match s.split_once('/') {
        None => (s, false),
        Some((p, "tcp")) => (p, false),
        Some((p, "udp")) => (p, true),
        Some((_, other)) => return Err(format!("protocol {other:?}: expected tcp or udp")),
    };
    let (host, container) = ports
        .split_once(':')
        .ok_or_else(|| format!("{s:?}: expected HOST:CONTAINER[/udp]"))?;
    let port = |p: &str| {
        p.parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("{p:?} in {s:?} is not a port (1-65535)"))
    };
    Ok(HostPort {
        udp,
        host_port: port(host)?,
        container_port: port(container)?,
    })
}

/// `KEY=VALUE`.
fn parse_annotation(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("{s:?}: expected KEY=VALUE"))?;
    Ok((k.to_owned(), v.to_owned()))
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum WeftdAction {
    Kill9,
    Stop,
    Start,
}

fn main() -> ExitCode {
    // Piped into `head`, end quietly as other Unix tools do: the Rust runtime ignores
    // SIGPIPE, and printing to the closed pipe would then panic.
    // SAFETY: first thing in main, before any other thread exists; SIG_DFL is valid.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("weft-lab: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn last_file() -> std::path::PathBuf {
    Path::new(STATE_DIR).join("last")
}

/// The prefix given, or the one of the last `up`.
fn resolve(prefix: Option<String>) -> anyhow::Result<String> {
    if let Some(p) = prefix {
        lab::check_prefix(&p)?;
        return Ok(p);
    }
    let last = std::fs::read_to_string(last_file()).with_context(|| {
        format!(
            "no --prefix given and no last lab recorded in {}",
            last_file().display()
        )
    })?;
    Ok(last.trim().to_owned())
}

fn parse_node(node: &str) -> anyhow::Result<usize> {
    node.strip_prefix('n')
        .unwrap_or(node)
        .parse()
        .with_context(|| format!("node {node:?}: expected n1, n2, ... or 1, 2, ..."))
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Up {
            nodes,
            backend,
            kernel_nodes,
            port,
            prefix,
            cni,
            ready_timeout,
            json,
        } => {
            let spec = LabSpec {
                nodes,
                kernel_nodes,
                backend,
                port,
                prefix,
                cni,
                ready_timeout: Duration::from_secs(ready_timeout),
                ..LabSpec::default()
            };
            let lab = Lab::start(spec)?;
            std::fs::write(last_file(), lab.prefix())?;
            if json {
                println!("{}", serde_json::to_string_pretty(lab.state())?);
            } else {
                print_status(&lab);
            }
            lab.detach()?;
        }
        Command::Status { prefix, json } => {
            let lab = Lab::attach(&resolve(prefix)?)?;
            if json {
                println!("{}", serde_json::to_string_pretty(lab.state())?);
            } else {
                print_status(&lab);
            }
        }
        Command::Pod {
            command:
                PodCommand::Add {
                    prefix,
                    fast,
                    cri,
                    namespace,
                    host_ports,
                    annotations,
                    node,
                    name,
                },
        } => {
            let mut lab = Lab::attach(&resolve(prefix)?)?;
            let n = parse_node(&node)?;
            let ip = if fast {
                lab.add_pod(n, &name)?
            } else if cri {
                let spec = SandboxSpec {
                    namespace,
                    host_ports,
                    annotations,
                    ..SandboxSpec::default()
                };
                lab.cri_pod(n, &name, &spec)?
            } else {
                lab.ctr_pod(n, &name)?
            };
            println!("{name} {ip} on n{n}");
        }
        Command::Pod {
            command: PodCommand::Rm { prefix, name },
        } => {
            let mut lab = Lab::attach(&resolve(prefix)?)?;
            lab.cri_remove_pod(&name)?;
            println!("{name}: removed");
        }
        Command::Exec {
            prefix,
            target,
            cmd,
        } => {
            let lab = Lab::attach(&resolve(prefix)?)?;
            let ns = lab.netns_of(&target)?;
            let (program, args) = cmd.split_first().context("exec: no command given")?;
            let status = ns
                .command(program)
                .args(args)
                .status()
                .with_context(|| format!("running {program} in {}", ns.name()))?;
            return Ok(ExitCode::from(
                status.code().unwrap_or(1).clamp(0, 255) as u8
            ));
        }
        Command::Sync { prefix } => {
            Lab::attach(&resolve(prefix)?)?.sync_kernel_nodes()?;
        }
        Command::Weftd {
            prefix,
            action,
            node,
        } => {
            let mut lab = Lab::attach(&resolve(prefix)?)?;
            let n = parse_node(&node)?;
            match action {
                WeftdAction::Kill9 => lab.kill9_weftd(n)?,
                WeftdAction::Stop => lab.stop_weftd(n)?,
                WeftdAction::Start => {
                    lab.start_weftd(n)?;
                    lab.wait_weftd_ready(n)?;
                    lab.sync_kernel_nodes()?;
                }
            }
        }
        Command::Down { prefix, all } => {
            let prefixes = if all {
                LabState::list()
            } else {
                vec![resolve(prefix)?]
            };
            let mut failed = false;
            for p in prefixes {
                match down(&p) {
                    Ok(()) => println!("lab {p}: removed"),
                    Err(e) => {
                        eprintln!("weft-lab: lab {p}: {e:#}");
                        failed = true;
                    }
                }
            }
            if failed {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Removes the recorded lab, then any namespace still carrying its prefix (a lab whose
/// record was lost half-way).
fn down(prefix: &str) -> anyhow::Result<()> {
    let recorded = lab::state::state_file(prefix).exists();
    let result = if recorded {
        lab::teardown_prefix(prefix)
    } else {
        Ok(())
    };
    let stray: Vec<String> = weft_tests::netns::list()?
        .into_iter()
        .filter(|n| n.starts_with(&format!("{prefix}-")))
        .collect();
    for ns in &stray {
        weft_tests::netns::delete(ns)?;
    }
    if std::fs::read_to_string(last_file()).is_ok_and(|l| l.trim() == prefix) {
        let _ = std::fs::remove_file(last_file());
    }
    anyhow::ensure!(
        recorded || !stray.is_empty(),
        "no lab {prefix} recorded in {STATE_DIR} and no namespace named {prefix}-*"
    );
    result
}

fn print_status(lab: &Lab) {
    let info = lab.state();
    println!(
        "lab {}  (dir {}, etcd {})",
        info.prefix,
        info.dir.display(),
        info.etcd_endpoint
    );
    for n in &info.nodes {
        let (kind, detail) = match n.kind {
            NodeKind::Weftd => {
                let pid = lab
                    .weftd_pid(n.index)
                    .map_or("not running".to_owned(), |p| format!("pid {}", p.pid));
                ("weftd", format!("{pid}, log {}", n.weftd_log().display()))
            }
            NodeKind::KernelFlannel => ("kernel-flannel", "kernel vxlan flannel.1".to_owned()),
        };
        let subnet = lab
            .node_subnet(n.index)
            .map_or("-".to_owned(), |(s, _)| s.to_string());
        println!(
            "  {:<4} {:<15} {:<14} {:<16} {detail}",
            n.name, n.ip, kind, subnet
        );
    }
    for p in &info.pods {
        let how = if p.sandbox.is_some() {
            "CRI"
        } else if p.container.is_some() {
            "containerd"
        } else {
            "veth"
        };
        println!("  pod {:<12} {:<15} on n{}  ({how})", p.name, p.ip, p.node);
    }
}
