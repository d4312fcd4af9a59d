//! Shared pieces of the reliability tests (issue 9): threads inside lab namespaces, a
//! hashed TCP transfer whose receiver measures the longest silence, and readers for
//! what a node shows from outside (`/v1/status`, devices, routes, memory).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sha2::{Digest, Sha256};
use weft_tests::lab::{Backend, Lab, HEALTHZ_ADDR};
use weft_tests::netns::Netns;
use weft_tests::wait_until;

/// Panics with a build hint unless the binaries the lab runs exist.
pub fn require_binaries(names: &[&str]) {
    for name in names {
        let path = weft_tests::bin_path(name);
        assert!(
            path.is_file(),
            "{} missing: cargo build --workspace --bins",
            path.display()
        );
    }
}

pub use weft_tests::netns::spawn_in;

/// Joins a thread started by [`spawn_in`].
pub fn join<T>(handle: JoinHandle<anyhow::Result<T>>, what: &str) -> anyhow::Result<T> {
    handle
        .join()
        .map_err(|_| anyhow::anyhow!("{what}: thread panicked"))?
        .with_context(|| what.to_owned())
}

/// What the receiving end of a transfer saw.
#[derive(Debug, Clone)]
pub struct Received {
    pub bytes: u64,
    pub sha256: String,
    /// Longest interval between two reads that returned data.
    pub longest_gap: Duration,
    /// Bytes received when that gap began.
    pub gap_at: u64,
}

/// What the sending end sent.
#[derive(Debug, Clone)]
pub struct Sent {
    pub bytes: u64,
    pub sha256: String,
}

/// A TCP transfer of `total` pseudo-random bytes from the pod namespace `from` to
/// `to_ip:port` in the pod namespace `to`, paced at `rate` bytes per second (so that a
/// fault can be injected while it runs). `progress` counts bytes received.
#[derive(Debug)]
pub struct Transfer {
    pub progress: Arc<AtomicU64>,
    pub total: u64,
    receiver: JoinHandle<anyhow::Result<Received>>,
    sender: JoinHandle<anyhow::Result<Sent>>,
}

/// Every socket operation gives up after this long, so a broken path fails the test
/// instead of hanging it.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(30);
const CHUNK: usize = 64 * 1024;

impl Transfer {
    pub fn start(
        from: &Netns,
        to: &Netns,
        to_ip: Ipv4Addr,
        port: u16,
        total: u64,
        rate: u64,
    ) -> anyhow::Result<Transfer> {
        let progress = Arc::new(AtomicU64::new(0));
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let receiver = {
            let progress = progress.clone();
            spawn_in(to.name(), move || {
                let listener = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port));
                let listener = match listener {
                    Ok(l) => {
                        let _ = bound_tx.send(Ok(()));
                        l
                    }
                    Err(e) => {
                        let _ = bound_tx.send(Err(e.to_string()));
                        return Err(e.into());
                    }
                };
                let (stream, _) = listener.accept()?;
                receive_all(stream, &progress)
            })
        };
        bound_rx
            .recv_timeout(Duration::from_secs(10))
            .context("receiver did not start")?
            .map_err(|e| anyhow::anyhow!("receiver cannot listen on {port}: {e}"))?;
        let sender = spawn_in(from.name(), move || {
            let stream = TcpStream::connect_timeout(
                &SocketAddr::V4(SocketAddrV4::new(to_ip, port)),
                Duration::from_secs(5),
            )?;
            send_all(stream, total, rate)
        });
        Ok(Transfer {
            progress,
            total,
            receiver,
            sender,
        })
    }

    pub fn received(&self) -> u64 {
        self.progress.load(Ordering::Relaxed)
    }

    pub fn finish(self) -> anyhow::Result<(Sent, Received)> {
        let sent = join(self.sender, "TCP sender")?;
        let received = join(self.receiver, "TCP receiver")?;
        Ok((sent, received))
    }
}

fn receive_all(mut stream: TcpStream, progress: &AtomicU64) -> anyhow::Result<Received> {
    stream.set_read_timeout(Some(SOCKET_TIMEOUT))?;
    let mut buf = vec![0u8; CHUNK];
    let mut hash = Sha256::new();
    let mut bytes = 0u64;
    let mut last: Option<Instant> = None;
    let (mut longest_gap, mut gap_at) = (Duration::ZERO, 0);
    loop {
        let n = stream
            .read(&mut buf)
            .with_context(|| format!("reading after {bytes} bytes"))?;
        if n == 0 {
            break;
        }
        let now = Instant::now();
        if let Some(last) = last {
            let gap = now - last;
            if gap > longest_gap {
                (longest_gap, gap_at) = (gap, bytes);
            }
        }
        last = Some(now);
        hash.update(&buf[..n]);
        bytes += n as u64;
        progress.store(bytes, Ordering::Relaxed);
    }
    Ok(Received {
        bytes,
        sha256: hex::encode(hash.finalize()),
        longest_gap,
        gap_at,
    })
}

fn send_all(mut stream: TcpStream, total: u64, rate: u64) -> anyhow::Result<Sent> {
    stream.set_write_timeout(Some(SOCKET_TIMEOUT))?;
    let mut hash = Sha256::new();
    let mut chunk = vec![0u8; CHUNK];
    let mut data = weft_tests::PseudoRandom::default();
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < total {
        let n = (total - sent).min(CHUNK as u64) as usize;
        data.fill(&mut chunk[..n]);
        stream
            .write_all(&chunk[..n])
            .with_context(|| format!("writing after {sent} bytes"))?;
        hash.update(&chunk[..n]);
        sent += n as u64;
        // Pacing (rate limiting, not synchronisation): keep to `rate` bytes/s.
        let due = Duration::from_secs_f64(sent as f64 / rate as f64);
        if let Some(ahead) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(ahead);
        }
    }
    stream.shutdown(std::net::Shutdown::Write)?;
    // Wait for the receiver to close: everything was read.
    let mut rest = [0u8; 1];
    stream.set_read_timeout(Some(SOCKET_TIMEOUT))?;
    let _ = stream.read(&mut rest);
    Ok(Sent {
        bytes: sent,
        sha256: hex::encode(hash.finalize()),
    })
}

/// `/v1/status` of the weftd on node `n`.
pub fn status(lab: &Lab, n: usize) -> anyhow::Result<serde_json::Value> {
    let (code, body) = lab.node_ns(n)?.http_get(HEALTHZ_ADDR, "/v1/status")?;
    anyhow::ensure!(code == 200, "/v1/status answered {code}: {body}");
    serde_json::from_str(&body).with_context(|| format!("/v1/status is not JSON: {body}"))
}

/// `/readyz` of node `n`: status code and body.
pub fn readyz(lab: &Lab, n: usize) -> anyhow::Result<(u16, String)> {
    lab.node_ns(n)?.http_get(HEALTHZ_ADDR, "/readyz")
}

/// Data-plane drop counters by reason from a `/v1/status` body.
pub fn drops(status: &serde_json::Value) -> BTreeMap<String, u64> {
    weft_tests::named_counts(&status["dataplane"]["drops"])
}

/// A control-plane counter from a `/v1/status` body.
pub fn counter(status: &serde_json::Value, name: &str) -> u64 {
    status["counters"][name].as_u64().unwrap_or(0)
}

/// Resident memory of a process in KiB (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/<pid>/status")
}

/// Interface index of `dev` in `ns`, `None` if it does not exist.
pub fn ifindex(ns: &Netns, dev: &str) -> Option<u64> {
    let out = ns.ip(&["-j", "link", "show", "dev", dev]).ok()?;
    let v: serde_json::Value = serde_json::from_str(&out).ok()?;
    v.get(0)?.get("ifindex")?.as_u64()
}

/// The IPv4 routes of `ns` through `dev`, as `ip route` prints them, sorted.
pub fn routes_via(ns: &Netns, dev: &str) -> Vec<String> {
    let mut routes: Vec<String> = ns
        .ip(&["-4", "route", "show", "dev", dev])
        .unwrap_or_default()
        .lines()
        .map(|l| l.trim().replace(" linkdown", ""))
        .filter(|l| !l.is_empty())
        .collect();
    routes.sort();
    routes
}

/// What must stay the same on a node across a fault (a crash, an etcd outage): the
/// TUN device and cni0 (not rebuilt: same interface indexes), the routes through the
/// TUN device and subnet.env.
#[derive(Debug, PartialEq, Eq)]
pub struct NodeView {
    pub tun_index: Option<u64>,
    pub bridge_index: Option<u64>,
    pub routes: Vec<String>,
    pub subnet_env: String,
}

/// The [`NodeView`] of node `n` now.
pub fn view(lab: &Lab, n: usize) -> NodeView {
    let ns = lab.node_ns(n).unwrap();
    let tun = match lab.state().backend {
        Backend::Vxlan => "weft.1",
        Backend::Ipip => "weft.ipip",
    };
    NodeView {
        tun_index: ifindex(&ns, tun),
        bridge_index: ifindex(&ns, "cni0"),
        routes: routes_via(&ns, tun),
        subnet_env: std::fs::read_to_string(lab.node(n).unwrap().subnet_file()).unwrap_or_default(),
    }
}

/// Pod `a` on node 1 and pod `b` on node 2, once `a` reaches `b`; their addresses.
pub fn pods_a_to_b(lab: &mut Lab) -> (Ipv4Addr, Ipv4Addr) {
    let a = lab.add_pod(1, "a").unwrap();
    let b = lab.add_pod(2, "b").unwrap();
    wait_until("pod a to reach pod b", Duration::from_secs(15), || {
        lab.ping("a", b)
    })
    .unwrap();
    (a, b)
}

/// The lease in etcd whose PublicIP is node `n`'s, as (subnet, VtepMAC or "").
pub fn lease_of(lab: &Lab, n: usize) -> anyhow::Result<(ipnet::Ipv4Net, String)> {
    let ip = lab.node(n)?.ip;
    let lease = lab
        .leases()?
        .into_iter()
        .find(|l| l.public_ip == ip)
        .with_context(|| format!("no lease with PublicIP {ip} in etcd"))?;
    Ok((lease.subnet, lease.vtep_mac.unwrap_or_default()))
}

/// The last `n` lines of node `node`'s weftd log (for failure messages).
pub fn log_tail(lab: &Lab, node: usize, n: usize) -> String {
    lab.node(node)
        .map(|info| weft_tests::etcd::tail(&info.weftd_log(), n))
        .unwrap_or_default()
}

/// The whole weftd log of node `n`.
pub fn log_text(lab: &Lab, n: usize) -> String {
    lab.node(n)
        .ok()
        .and_then(|info| std::fs::read_to_string(info.weftd_log()).ok())
        .unwrap_or_default()
}
