//! A minimal cluster for data-plane tests: an underlay namespace with a bridge, node
//! namespaces on 192.0.2.0/24, one pod namespace per node behind cni0, and the data
//! plane (`weft_daemon::dataplane::run_with_metrics`) running **in process**, one
//! thread per node that has entered the node's namespace. No etcd: the test feeds the
//! peer events itself, which makes lease arrival/removal exact and instant, and gives
//! direct access to each node's drop counters.
//!
//! Everything is removed on Drop (data planes stopped first, then namespaces).

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context as _;
use ipnet::Ipv4Net;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};
use weft_config::{NetConf, Settings};
use weft_daemon::lease::{LocalLease, Peer, PeerBackend, PeerEvent};
use weft_daemon::metrics::Metrics;
use weft_tests::lab::kernel::FlannelLease;
use weft_tests::link::{Bridge, End, Veth};
use weft_tests::netns::Netns;
use weft_tests::{run_prefix, wait_until};

pub const UNDERLAY_MTU: u32 = 1500;

/// Runs `f` on a new thread that has entered network namespace `ns`.
pub use weft_tests::netns::spawn_in as in_netns;

/// A data plane running in a node namespace.
pub struct Running {
    pub events: mpsc::Sender<PeerEvent>,
    shutdown: watch::Sender<bool>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
    pub metrics: Arc<Metrics>,
}

impl Running {
    /// Stops the data plane and returns its result.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(true);
        match self.thread.take() {
            Some(thread) => thread
                .join()
                .map_err(|_| anyhow::anyhow!("data plane thread panicked"))?,
            None => Ok(()),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Err(e) = self.stop_inner() {
            eprintln!("data plane ended with: {e:#}");
        }
    }
}

pub struct Node {
    // Field order is drop order: stop the data plane, then remove the namespaces.
    pub running: Option<Running>,
    _pod_veth: Option<Veth>,
    pub pod: Option<Netns>,
    _uplink: Veth,
    pub ns: Netns,
    pub n: u8,
    pub lease: LocalLease,
    pub settings: Settings,
}

impl Node {
    pub fn public_ip(&self) -> Ipv4Addr {
        self.lease.public_ip
    }

    pub fn pod_ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.lease.subnet.network()) + 2)
    }

    pub fn pod(&self) -> &Netns {
        self.pod.as_ref().expect("node has a pod")
    }

    pub fn metrics(&self) -> &Metrics {
        &self.running.as_ref().expect("node is running").metrics
    }

    /// This node as its peers see it (its lease).
    pub fn as_peer(&self) -> Peer {
        let backend = match self.lease.netconf.backend {
            weft_config::Backend::Vxlan { vni, .. } => PeerBackend::Vxlan {
                vni,
                vtep_mac: self.lease.vtep_mac,
            },
            weft_config::Backend::Ipip { .. } => PeerBackend::Ipip,
            weft_config::Backend::HostGw => PeerBackend::HostGw,
        };
        Peer {
            subnet: self.lease.subnet,
            public_ip: self.lease.public_ip,
            backend,
        }
    }

    /// Starts the data plane in the node's namespace and waits for its devices.
    pub fn start(&mut self) -> anyhow::Result<()> {
        let (events, events_rx) = mpsc::channel(64);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let metrics = Arc::new(Metrics::default());
        let (settings, lease, counters) =
            (self.settings.clone(), self.lease.clone(), metrics.clone());
        let thread = in_netns(self.ns.name(), move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(weft_daemon::dataplane::run_with_metrics(
                settings,
                lease,
                events_rx,
                shutdown_rx,
                counters,
            ))
        });
        self.running = Some(Running {
            events,
            shutdown,
            thread: Some(thread),
            metrics,
        });
        // host-gw has no tunnel device: cni0 alone.
        let device = weft_daemon::dataplane::device_name(&self.lease.netconf.backend);
        let ns = Netns::existing(self.ns.name());
        let running = self.running.as_mut().expect("just set");
        wait_until("data plane devices", Duration::from_secs(10), || {
            let ready = device
                .as_ref()
                .is_none_or(|device| ns.ip(&["link", "show", "dev", device]).is_ok())
                && ns.ip(&["link", "show", "dev", "cni0"]).is_ok();
            ready || running.thread.as_ref().is_some_and(|t| t.is_finished())
        })?;
        if running.thread.as_ref().is_some_and(|t| t.is_finished()) {
            let result = running.stop_inner();
            self.running = None;
            result.context("data plane exited at start")?;
            anyhow::bail!("data plane exited at start");
        }
        Ok(())
    }

    /// Sends one peer event to the running data plane.
    pub fn send(&self, event: PeerEvent) -> anyhow::Result<()> {
        self.running
            .as_ref()
            .context("node not running")?
            .events
            .blocking_send(event)
            .map_err(|_| anyhow::anyhow!("data plane stopped"))
    }

    /// Adds a pod namespace behind cni0 at `<subnet>.2`.
    pub fn add_pod(&mut self, prefix: &str) -> anyhow::Result<()> {
        let pod = Netns::new(&format!("{prefix}-p{}", self.n))?;
        let host_end = format!("vp{}", self.n);
        let address = format!("{}/{}", self.pod_ip(), self.lease.subnet.prefix_len());
        let veth = Veth::create(
            End::with_addr(&pod, "eth0", &address),
            End::new(&self.ns, &host_end),
            Some(self.lease.mtu),
        )?;
        self.ns.ip(&["link", "set", &host_end, "master", "cni0"])?;
        let gateway = Ipv4Addr::from(u32::from(self.lease.subnet.network()) + 1);
        pod.ip(&["route", "add", "default", "via", &gateway.to_string()])?;
        self.pod = Some(pod);
        self._pod_veth = Some(veth);
        Ok(())
    }
}

pub struct Cluster {
    pub nodes: Vec<Node>,
    _bridge: Bridge,
    pub underlay: Netns,
    pub prefix: String,
}

/// `02:77:00:00:00:01`
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses `02:77:00:00:00:01`.
pub fn parse_mac(text: &str) -> anyhow::Result<[u8; 6]> {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|part| u8::from_str_radix(part, 16))
        .collect::<Result<_, _>>()
        .with_context(|| format!("bad MAC {text:?}"))?;
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("bad MAC {text:?}"))
}

/// `{"Network":"10.244.0.0/16","Backend":{...}}` with the given backend JSON.
pub fn netconf(backend_json: &str) -> NetConf {
    NetConf::parse(&format!(
        r#"{{"Network":"10.244.0.0/16","SubnetLen":24,"Backend":{backend_json}}}"#
    ))
    .expect("valid net-conf")
}

impl Cluster {
    /// Waits until every node's pod pings every other node's pod.
    pub fn wait_all_pods_reach_each_other(&self, timeout: Duration) -> anyhow::Result<()> {
        for from in &self.nodes {
            for to in &self.nodes {
                if from.n != to.n {
                    wait_ping(from.pod(), to.pod_ip(), timeout)?;
                }
            }
        }
        Ok(())
    }

    /// The underlay only.
    pub fn new() -> anyhow::Result<Cluster> {
        let prefix = run_prefix();
        let underlay = Netns::new(&format!("{prefix}-ul"))?;
        let bridge = Bridge::create(&underlay, "br0", None)?;
        Ok(Cluster {
            nodes: Vec::new(),
            _bridge: bridge,
            underlay,
            prefix,
        })
    }

    /// Adds node `n` (namespace, uplink 192.0.2.n/24, subnet 10.244.n.0/24) without
    /// starting it.
    pub fn add_node(&mut self, n: u8, netconf: &NetConf) -> anyhow::Result<usize> {
        let ns = Netns::new(&format!("{}-n{n}", self.prefix))?;
        let uplink_name = format!("n{n}");
        let address = format!("192.0.2.{n}/24");
        let uplink = Veth::create(
            End::with_addr(&ns, "eth0", &address),
            End::new(&self.underlay, &uplink_name),
            Some(UNDERLAY_MTU),
        )?;
        self.underlay
            .ip(&["link", "set", &uplink_name, "master", "br0"])?;
        ns.run("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
        let lease = LocalLease {
            netconf: netconf.clone(),
            subnet: Ipv4Net::new(Ipv4Addr::new(10, 244, n, 0), 24)?,
            public_ip: Ipv4Addr::new(192, 0, 2, n),
            vtep_mac: [0x02, 0x77, 0, 0, 0, n],
            underlay_iface: "eth0".to_owned(),
            mtu: UNDERLAY_MTU - netconf.backend.overhead(),
        };
        let settings = Settings {
            state_dir: std::env::temp_dir().join(format!("{}-n{n}", self.prefix)),
            ..Settings::default()
        };
        self.nodes.push(Node {
            running: None,
            _pod_veth: None,
            pod: None,
            _uplink: uplink,
            ns,
            n,
            lease,
            settings,
        });
        Ok(self.nodes.len() - 1)
    }

    /// `count` weft nodes, started, each with a pod, each told about all others.
    pub fn weft(count: u8, netconf: &NetConf) -> anyhow::Result<Cluster> {
        Cluster::weft_with(count, netconf, |_| {})
    }

    /// [`Cluster::weft`], with `configure` applied to each node's settings first.
    pub fn weft_with(
        count: u8,
        netconf: &NetConf,
        configure: impl Fn(&mut Settings),
    ) -> anyhow::Result<Cluster> {
        Cluster::weft_with_each(count, netconf, |_, settings| configure(settings))
    }

    /// [`Cluster::weft`], with `configure(n, settings)` applied to node `n`'s settings.
    pub fn weft_with_each(
        count: u8,
        netconf: &NetConf,
        configure: impl Fn(u8, &mut Settings),
    ) -> anyhow::Result<Cluster> {
        let mut cluster = Cluster::new()?;
        for n in 1..=count {
            let i = cluster.add_node(n, netconf)?;
            configure(n, &mut cluster.nodes[i].settings);
            cluster.nodes[i].start()?;
            let prefix = cluster.prefix.clone();
            cluster.nodes[i].add_pod(&prefix)?;
        }
        cluster.announce_all()?;
        Ok(cluster)
    }

    /// A mixed pair on VXLAN: node 1 runs weft, node 2 is a kernel-flannel node (the
    /// kernel's vxlan device programmed like flanneld), each with a pod, each programmed
    /// with the other's lease. Returns the cluster and the (weft, kernel) node indices.
    pub fn weft_and_kernel(netconf: &NetConf) -> anyhow::Result<(Cluster, usize, usize)> {
        let weft_config::Backend::Vxlan { vni, .. } = netconf.backend else {
            anyhow::bail!("kernel-flannel nodes are vxlan only");
        };
        let mut cluster = Cluster::new()?;
        let weft = cluster.add_node(1, netconf)?;
        cluster.nodes[weft].start()?;
        let prefix = cluster.prefix.clone();
        cluster.nodes[weft].add_pod(&prefix)?;
        let (kernel, kernel_mac) = cluster.add_kernel_node(2, netconf)?;
        cluster.sync_kernel_node(kernel, &[(kernel, kernel_mac.clone())])?;
        let kernel_peer = Peer {
            subnet: cluster.nodes[kernel].lease.subnet,
            public_ip: cluster.nodes[kernel].lease.public_ip,
            backend: PeerBackend::Vxlan {
                vni,
                vtep_mac: parse_mac(&kernel_mac)?,
            },
        };
        let own = cluster.nodes[weft].as_peer();
        cluster.nodes[weft].send(PeerEvent::Snapshot(vec![own, kernel_peer]))?;
        Ok((cluster, weft, kernel))
    }

    /// Adds node `n` as a kernel-flannel node (the kernel's vxlan device programmed like
    /// flanneld, by the lab's `kernel` module) with a pod; returns its index and the
    /// VtepMAC. Its peers are programmed with [`Cluster::sync_kernel_node`].
    pub fn add_kernel_node(&mut self, n: u8, netconf: &NetConf) -> anyhow::Result<(usize, String)> {
        let weft_config::Backend::Vxlan { vni, port, .. } = netconf.backend else {
            anyhow::bail!("kernel-flannel nodes are vxlan only");
        };
        let i = self.add_node(n, netconf)?;
        let node = &self.nodes[i];
        let mac = weft_tests::lab::kernel::setup_node(
            &node.ns,
            node.lease.public_ip,
            node.lease.subnet,
            vni,
            port,
            node.lease.mtu,
        )?;
        let prefix = self.prefix.clone();
        self.nodes[i].add_pod(&prefix)?;
        Ok((i, mac))
    }

    /// Programs kernel node `i` with every other node's lease, as flanneld would.
    pub fn sync_kernel_node(&self, i: usize, macs: &[(usize, String)]) -> anyhow::Result<()> {
        let node = &self.nodes[i];
        let weft_config::Backend::Vxlan { vni, .. } = node.lease.netconf.backend else {
            anyhow::bail!("kernel-flannel nodes are vxlan only");
        };
        let leases: Vec<FlannelLease> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(j, other)| FlannelLease {
                subnet: other.lease.subnet,
                public_ip: other.lease.public_ip,
                backend_type: "vxlan".to_owned(),
                vtep_mac: Some(
                    macs.iter()
                        .find(|(k, _)| *k == j)
                        .map(|(_, mac)| mac.clone())
                        .unwrap_or_else(|| format_mac(&other.lease.vtep_mac)),
                ),
            })
            .collect();
        weft_tests::lab::kernel::sync_node(&node.ns, node.lease.subnet, vni, &leases)
    }

    /// Sends every running node a snapshot of all nodes' leases.
    pub fn announce_all(&self) -> anyhow::Result<()> {
        let peers: Vec<Peer> = self.nodes.iter().map(Node::as_peer).collect();
        for node in self.nodes.iter().filter(|n| n.running.is_some()) {
            node.send(PeerEvent::Snapshot(peers.clone()))?;
        }
        Ok(())
    }
}

/// One ping from `from` (a namespace) to `to`, 1 s timeout.
/// `forward` transfers of `bytes` from `a`'s pod to `b`'s and `backward` the other way,
/// all at once; each must arrive whole and intact.
pub fn concurrent_transfers(a: &Node, b: &Node, forward: usize, backward: usize, bytes: usize) {
    std::thread::scope(|scope| {
        let streams: Vec<_> = (0..forward)
            .map(|_| scope.spawn(|| tcp_transfer(a.pod(), b.pod(), b.pod_ip(), bytes)))
            .chain(
                (0..backward)
                    .map(|_| scope.spawn(|| tcp_transfer(b.pod(), a.pod(), a.pod_ip(), bytes))),
            )
            .collect();
        for stream in streams {
            let (sent, received, length) = stream.join().unwrap().unwrap();
            assert_eq!(length, bytes);
            assert_eq!(sent, received, "payload hash differs");
        }
    });
}

pub fn ping_once(from: &Netns, to: Ipv4Addr) -> bool {
    from.run("ping", &["-c", "1", "-W", "1", &to.to_string()])
        .is_ok()
}

/// Pings until one answer arrives or `timeout` passes.
pub fn wait_ping(from: &Netns, to: Ipv4Addr, timeout: Duration) -> anyhow::Result<()> {
    wait_until(
        &format!("{} to answer a ping from {}", to, from.name()),
        timeout,
        || ping_once(from, to),
    )
}

/// Sends `bytes` pseudo-random bytes over TCP from namespace `from` to `to_ip` (a
/// listener in namespace `to_ns`); returns (sent hash, received hash, received length).
pub fn tcp_transfer(
    from: &Netns,
    to_ns: &Netns,
    to_ip: Ipv4Addr,
    bytes: usize,
) -> anyhow::Result<([u8; 32], [u8; 32], usize)> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let receiver = in_netns(to_ns.name(), move || {
        let listener = TcpListener::bind(SocketAddrV4::new(to_ip, 0))?;
        ready_tx.send(listener.local_addr()?.port())?;
        let (mut stream, _) = listener.accept()?;
        stream.set_read_timeout(Some(Duration::from_secs(read_timeout())))?;
        let mut hasher = Sha256::new();
        let mut buffer = vec![0u8; 256 * 1024];
        let mut total = 0usize;
        loop {
            let n = stream.read(&mut buffer)?;
            if n == 0 {
                break;
            }
            hasher.update(&buffer[..n]);
            total += n;
        }
        Ok((<[u8; 32]>::from(hasher.finalize()), total))
    });
    let port = ready_rx
        .recv_timeout(Duration::from_secs(10))
        .context("receiver did not start")?;
    let sender = in_netns(from.name(), move || {
        let mut stream = TcpStream::connect_timeout(
            &SocketAddrV4::new(to_ip, port).into(),
            Duration::from_secs(10),
        )?;
        stream.set_write_timeout(Some(Duration::from_secs(read_timeout())))?;
        let mut hasher = Sha256::new();
        let mut data = weft_tests::PseudoRandom::default();
        let mut chunk = vec![0u8; 64 * 1024];
        let mut left = bytes;
        while left > 0 {
            data.fill(&mut chunk);
            let n = left.min(chunk.len());
            stream.write_all(&chunk[..n])?;
            hasher.update(&chunk[..n]);
            left -= n;
        }
        stream.shutdown(std::net::Shutdown::Write)?;
        Ok(<[u8; 32]>::from(hasher.finalize()))
    });
    let sent = sender
        .join()
        .map_err(|_| anyhow::anyhow!("sender panicked"))??;
    let (received, length) = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("receiver panicked"))??;
    Ok((sent, received, length))
}

fn read_timeout() -> u64 {
    std::env::var("WEFT_TEST_IO_TIMEOUT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60)
}
