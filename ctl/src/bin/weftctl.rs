//! weftctl — operator CLI for weft.
//!
//! * `weftctl leases`: every subnet lease in etcd (flannel's schema, so flanneld nodes
//!   show up too) with its PublicIP, backend, VTEP MAC and time to expiry.
//! * `weftctl status`: the local weftd's `/v1/status`.
//! * `weftctl trace --from <pod> --to <IP>`: walk a packet's path hop by hop and name
//!   the hop where it breaks (see `weft_ctl::trace`).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use serde::Serialize;
use weft_config::weftd::{clap_error_line, one_line_causes};
use weft_ctl::etcd_source::{EtcdArgs, Resolved};
use weft_ctl::trace::{HopStatus, TraceOptions, TraceReport};
use weft_daemon::subnet::Registry;

#[derive(Debug, Parser)]
#[command(
    name = "weftctl",
    version,
    about = "Operate a weft overlay network",
    long_about = "Operate a weft overlay network: list the subnet leases in etcd, show the \
                  local weftd's status, and trace a pod's packets hop by hop.\n\n\
                  Exit status: 0 on success; 1 on failure (for `trace`: the path is broken); \
                  2 when `trace` cannot run at all (bad --from, unreadable namespace)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List every subnet lease in etcd: subnet, PublicIP, backend, VTEP MAC and the time
    /// until the lease expires ("reserved" for a reservation, which never expires).
    ///
    /// On a node no flag is needed: the etcd endpoints, prefix and TLS files are the
    /// local weftd's (from its /v1/status at --healthz-addr); a flag or WEFTD_ variable
    /// overrides each; --verbose says which source each came from.
    Leases {
        #[command(flatten)]
        etcd: EtcdArgs,
        /// The local weftd's --healthz-addr, asked for its etcd settings.
        #[arg(long, env = "WEFTD_HEALTHZ_ADDR", default_value = "127.0.0.1:9842")]
        healthz_addr: SocketAddr,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show the local weftd's status from its `/v1/status` endpoint: readiness, lease,
    /// etcd, devices and active offloads, traffic, and the peers with per-peer packets.
    Status {
        /// weftd's --healthz-addr.
        #[arg(long, env = "WEFTD_HEALTHZ_ADDR", default_value = "127.0.0.1:9842")]
        healthz_addr: SocketAddr,
        /// Print weftd's JSON as is.
        #[arg(long)]
        json: bool,
    },
    /// Walk a packet's path from a pod to an IP, hop by hop, and name the hop where it
    /// breaks.
    ///
    /// Each hop is shown with the kernel's or etcd's evidence: the pod's interface and
    /// its veth peer (iflink), the bridge (cni0), the route this node picks (the
    /// RTM_GETROUTE answer `ip route get` shows), the overlay device (weft's TUN weft.N /
    /// weft.ipip, or a kernel flannel.N), the lease of the destination's subnet
    /// (PublicIP, VtepMAC), for a kernel vxlan device its neighbour and fdb entries, the
    /// underlay route and MTU, and — when a network namespace on this machine holds the
    /// destination node's PublicIP, as in weft-lab — the remote node, its bridge and the
    /// destination pod. A destination outside the cluster network is checked for
    /// masquerading instead.
    ///
    /// Run it in the source pod's node (its network namespace). Exit status: 0 when the
    /// path is complete, 1 when it breaks (the first broken hop is named with the
    /// reason: bridge down, route missing, no lease, neighbour/fdb missing, MTU
    /// mismatch, masquerade rule missing, ...), 2 when it cannot run.
    #[command(after_long_help = "Examples:\n  \
        ip netns exec node1 weftctl trace --from 10.244.1.5 --to 10.244.2.7\n  \
        weftctl trace --from web-1 --to 10.244.2.7 --json          # netns /run/netns/web-1\n  \
        weftctl trace --from 3f9c2e... --to 10.244.2.7             # container ID (CNI cache)")]
    Trace {
        /// The source pod: its IP, its network namespace (a name under /run/netns or a
        /// path such as /proc/PID/ns/net), or its container ID (looked up in the CNI
        /// cache).
        #[arg(long, value_name = "POD_IP|NETNS|CONTAINER_ID")]
        from: String,
        /// The destination IPv4 address (a pod elsewhere or outside the cluster).
        #[arg(long, value_name = "IP")]
        to: Ipv4Addr,
        #[command(flatten)]
        etcd: EtcdArgs,
        /// CNI cache directory searched for container IDs (repeatable).
        #[arg(long, value_name = "DIR", default_value = "/var/lib/cni")]
        cni_cache_dir: Vec<PathBuf>,
        /// This node's subnet.env (cluster network, FLANNEL_IPMASQ).
        #[arg(
            long,
            env = "WEFTD_SUBNET_FILE",
            value_name = "PATH",
            default_value = "/run/flannel/subnet.env"
        )]
        subnet_file: PathBuf,
        /// Expect masquerading of traffic leaving the cluster (default: as subnet.env's
        /// FLANNEL_IPMASQ says).
        #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true,
              default_missing_value = "true")]
        ip_masq: Option<bool>,
        /// The local weftd's --healthz-addr (its peer list is checked when it answers).
        #[arg(long, env = "WEFTD_HEALTHZ_ADDR", default_value = "127.0.0.1:9842")]
        healthz_addr: SocketAddr,
        /// Print the hops as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// One row of `weftctl leases`.
#[derive(Debug, Serialize)]
struct LeaseRow {
    subnet: String,
    public_ip: String,
    backend: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    vni: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    vtep_mac: Option<String>,
    /// Seconds until the lease expires; `None` for a reservation.
    expires_in_secs: Option<i64>,
    reserved: bool,
}

fn main() -> ExitCode {
    // Piped into `head`, end quietly as other Unix tools do: the Rust runtime ignores
    // SIGPIPE, and printing to the closed pipe would then panic.
    // SAFETY: first thing in main, before any other thread exists; SIG_DFL is valid.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => match clap_error_line(&e) {
            Some(line) => {
                eprintln!("weftctl: {line} (weftctl --help lists the commands and flags)");
                return ExitCode::from(2);
            }
            None => e.exit(),
        },
    };
    let tracing_run = matches!(cli.command, Command::Trace { .. });
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("weftctl: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("weftctl: {}", one_line_causes(e.chain()));
            if tracing_run {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Leases {
            etcd,
            healthz_addr,
            json,
        } => {
            let etcd = etcd_settings(&etcd, healthz_addr).await?;
            leases(&etcd, json).await.map(|()| ExitCode::SUCCESS)
        }
        Command::Status { healthz_addr, json } => {
            status(healthz_addr, json).await.map(|()| ExitCode::SUCCESS)
        }
        Command::Trace {
            from,
            to,
            etcd,
            cni_cache_dir,
            subnet_file,
            ip_masq,
            healthz_addr,
            json,
        } => {
            // Best effort: a kernel-flannel node has no weftd.
            let weftd_status = tokio::time::timeout(
                std::time::Duration::from_secs(2),
                http_get(healthz_addr, "/v1/status"),
            )
            .await
            .ok()
            .and_then(Result::ok)
            .and_then(|body| serde_json::from_str(&body).ok());
            let opts = TraceOptions {
                from,
                to,
                etcd: resolved_etcd(&etcd, weftd_status.as_ref(), healthz_addr)?.options,
                cni_cache_dirs: cni_cache_dir,
                subnet_file,
                ip_masq,
                weftd_status,
            };
            let report = weft_ctl::trace::trace(&opts).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print_trace(&report);
            }
            Ok(if report.complete {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

fn print_trace(report: &TraceReport) {
    println!(
        "trace {} (netns {}) -> {}",
        report
            .source_ip
            .map_or_else(|| report.from.clone(), |ip| ip.to_string()),
        report.source_netns.as_deref().unwrap_or("?"),
        report.to
    );
    let width = report.hops.iter().map(|h| h.hop.len()).max().unwrap_or(0);
    for hop in &report.hops {
        let mark = match hop.status {
            HopStatus::Ok => "ok",
            HopStatus::Broken => "BROKEN",
            HopStatus::Skipped => "skipped",
        };
        println!("  {mark:<7}  {:<width$}  {}", hop.hop, hop.detail);
    }
    match &report.broken {
        None => println!("path complete ({} hops)", report.hops.len()),
        Some(b) => println!("path broken at hop {:?}: {}", b.hop, b.reason),
    }
}

/// The etcd settings: flags first, then the local weftd's (asked only when a flag is
/// missing), then the defaults.
async fn etcd_settings(etcd: &EtcdArgs, healthz_addr: SocketAddr) -> anyhow::Result<Resolved> {
    let status = if etcd.needs_weftd() {
        tokio::time::timeout(
            std::time::Duration::from_secs(2),
            http_get(healthz_addr, "/v1/status"),
        )
        .await
        .ok()
        .and_then(Result::ok)
        .and_then(|body| serde_json::from_str(&body).ok())
    } else {
        None
    };
    resolved_etcd(etcd, status.as_ref(), healthz_addr)
}

fn resolved_etcd(
    etcd: &EtcdArgs,
    weftd_status: Option<&serde_json::Value>,
    healthz_addr: SocketAddr,
) -> anyhow::Result<Resolved> {
    let resolved = etcd
        .resolve(weftd_status, healthz_addr)
        .map_err(anyhow::Error::msg)?;
    if etcd.verbose {
        eprintln!("weftctl: {}", resolved.describe());
    }
    Ok(resolved)
}

async fn leases(etcd: &Resolved, json: bool) -> anyhow::Result<()> {
    // An etcd error names the endpoints; a default one also says why it was used.
    let hint = |e: weft_daemon::subnet::registry::RegistryError| match &etcd.default_endpoints_hint
    {
        Some(hint) => anyhow::anyhow!("{e} ({hint})"),
        None => anyhow::Error::new(e),
    };
    let registry = Registry::connect(&etcd.options).await.map_err(hint)?;
    let (stored, _) = registry.list_subnets().await.map_err(hint)?;
    let mut rows = Vec::with_capacity(stored.len());
    for lease in stored {
        let expires_in_secs = if lease.is_reservation() {
            None
        } else {
            // A key whose lease just expired is about to vanish: show it as 0.
            Some(registry.time_to_live(lease.lease_id).await?.unwrap_or(0))
        };
        let (vni, vtep_mac) = match lease.attrs.vxlan_data() {
            Ok(data) if lease.attrs.backend_type == "vxlan" => {
                (Some(data.vni), Some(data.vtep_mac.to_string()))
            }
            _ => (None, None),
        };
        rows.push(LeaseRow {
            subnet: lease.subnet.to_string(),
            public_ip: lease.attrs.public_ip.to_string(),
            backend: lease.attrs.backend_type.clone(),
            vni,
            vtep_mac,
            expires_in_secs,
            reserved: lease.is_reservation(),
        });
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    let table: Vec<[String; 5]> = rows
        .iter()
        .map(|row| {
            [
                row.subnet.clone(),
                row.public_ip.clone(),
                match row.vni {
                    Some(vni) => format!("{} (VNI {vni})", row.backend),
                    None => row.backend.clone(),
                },
                row.vtep_mac.clone().unwrap_or_else(|| "-".into()),
                match row.expires_in_secs {
                    None => "reserved".into(),
                    Some(secs) => human_duration(secs),
                },
            ]
        })
        .collect();
    print_table(
        ["SUBNET", "PUBLIC IP", "BACKEND", "VTEP MAC", "EXPIRES IN"],
        &table,
    );
    Ok(())
}

/// `1d02h`, `3h04m`, `5m06s`, `7s`.
fn human_duration(secs: i64) -> String {
    let secs = secs.max(0);
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m{s:02}s"),
        (0, _, _) => format!("{h}h{m:02}m"),
        _ => format!("{d}d{h:02}h"),
    }
}

fn print_table<const N: usize>(header: [&str; N], rows: &[[String; N]]) {
    let mut widths = header.map(str::len);
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let text: Vec<String> = cells
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        println!("{}", text.join("  ").trim_end());
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
}

async fn status(addr: SocketAddr, json: bool) -> anyhow::Result<()> {
    let body = http_get(addr, "/v1/status")
        .await
        .with_context(|| format!("cannot reach weftd at {addr} (is it running? --healthz-addr)"))?;
    if json {
        print!("{body}");
        return Ok(());
    }
    let status: serde_json::Value =
        serde_json::from_str(&body).context("weftd's /v1/status is not JSON")?;
    let lease = &status["lease"];
    let ready = status["ready"].as_bool().unwrap_or(false);
    println!(
        "ready:   {}{}",
        ready,
        status["not_ready_reason"]
            .as_str()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default()
    );
    println!(
        "lease:   {} {} (PublicIP {})",
        lease["state"].as_str().unwrap_or("?"),
        lease["subnet"].as_str().unwrap_or("-"),
        lease["public_ip"].as_str().unwrap_or("-"),
    );
    println!(
        "etcd:    {}",
        status["etcd"]["state"].as_str().unwrap_or("?")
    );
    let devices = &status["devices"];
    if devices.is_object() {
        let offloads: Vec<&str> = [
            "tun_csum",
            "tun_tso4",
            "udp_segment",
            "udp_gro",
            "kernel_encap",
        ]
        .into_iter()
        .filter(|k| devices["offloads"][*k].as_bool() == Some(true))
        .collect();
        println!(
            "devices: {} ({}{}), bridge {}",
            devices["device"].as_str().unwrap_or("?"),
            devices["backend"].as_str().unwrap_or("?"),
            devices["vni"]
                .as_u64()
                .map(|v| format!(" VNI {v}"))
                .unwrap_or_default(),
            devices["bridge"].as_str().unwrap_or("?"),
        );
        println!(
            "offload: {}",
            if offloads.is_empty() {
                "none".to_owned()
            } else {
                offloads.join(", ")
            }
        );
    }
    let dp = &status["dataplane"];
    if dp.is_object() {
        let n = |k: &str| dp[k].as_u64().unwrap_or(0);
        let drops: u64 = dp["drops"]
            .as_array()
            .map(|d| d.iter().filter_map(|p| p[1].as_u64()).sum())
            .unwrap_or(0);
        println!(
            "traffic: tx {} packets / {} bytes, rx {} packets / {} bytes, {drops} dropped",
            n("tx_packets"),
            n("tx_bytes"),
            n("rx_packets"),
            n("rx_bytes"),
        );
    }
    let traffic = |subnet: &str, key: &str| -> String {
        status["peer_traffic"]
            .as_array()
            .and_then(|t| t.iter().find(|p| p["subnet"] == subnet))
            .and_then(|p| p[key].as_u64())
            .map_or("-".to_owned(), |v| v.to_string())
    };
    let peers: Vec<[String; 6]> = status["peers"]
        .as_array()
        .map(|peers| {
            peers
                .iter()
                .map(|p| {
                    let field = |k: &str| p[k].as_str().unwrap_or("-").to_owned();
                    let subnet = field("subnet");
                    [
                        subnet.clone(),
                        field("public_ip"),
                        field("backend"),
                        field("vtep_mac"),
                        traffic(&subnet, "tx_packets"),
                        traffic(&subnet, "rx_packets"),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    println!("peers:   {}", peers.len());
    if !peers.is_empty() {
        println!();
        print_table(
            [
                "SUBNET",
                "PUBLIC IP",
                "BACKEND",
                "VTEP MAC",
                "TX PKTS",
                "RX PKTS",
            ],
            &peers,
        );
    }
    Ok(())
}

/// A plain HTTP/1.1 GET against weftd's local endpoint.
async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    use http_body_util::{BodyExt, Empty};
    use hyper::body::Bytes;

    let stream = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio::net::TcpStream::connect(addr),
    )
    .await
    .context("connect timed out")??;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())?;
    let response = sender.send_request(request).await?;
    let code = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    let body = String::from_utf8_lossy(&body).into_owned();
    if !code.is_success() {
        anyhow::bail!("{path} answered {code}: {}", body.trim());
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human_duration(7), "7s");
        assert_eq!(human_duration(306), "5m06s");
        assert_eq!(human_duration(3 * 3600 + 240), "3h04m");
        assert_eq!(human_duration(86400 + 7200), "1d02h");
        assert_eq!(human_duration(-5), "0s");
    }

    #[test]
    fn cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
