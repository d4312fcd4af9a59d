//! Data plane: cni0, the TUN VTEP, the userspace VXLAN/IPIP hot path, routes, masquerade.
//!
//! INTERFACE (called by `node.rs`; keep the signature, the body is the data plane's):
//! [`run`] owns devices, routes and sockets for as long as the node runs, applies every
//! [`PeerEvent`] in order, and returns when `shutdown` turns true.
//!
//! Structure: this module is the control side (an async task): it sets up devices and
//! sockets, keeps the set of peers, publishes a [`peers::PeerTable`] to the workers with
//! one atomic swap per change, and reconciles routes (on every change and every
//! [`RECONCILE_PERIOD`], so a deleted route comes back). The devices and the workers
//! on them are a `plane::Plane`, rebuilt when a device goes (see [`repair`]). The
//! packets never pass through here: [`worker`] threads move them between the TUN device
//! and the underlay socket.

mod batch;
pub mod bpf;
pub mod io;
mod pacer;
pub mod packet;
pub mod peers;
mod plane;
mod receive;
pub mod repair;
pub mod reply_wait;
mod send;
pub mod tap_encap;
mod transmit;
pub mod tun;
pub mod worker;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use ipnet::Ipv4Net;
use tokio::sync::{mpsc, watch};
use weft_config::{Backend, Settings};

use crate::lease::{LocalLease, Peer, PeerEvent};
use crate::metrics::Metrics;
use crate::netlink::{bridge, Netlink, Route};
use peers::{compatible, Encap, PeerTable};
use plane::{underlay_subnet, Plane, Repairer, Shared};
use tun::Offloads;

/// What the kernel may hand us from TUN: partial checksums and TCPv4 super-packets
/// (segmented by the queue workers, see `transmit::Transmitter`).
const TUN_OFFLOADS: Offloads = Offloads {
    csum: true,
    tso4: true,
    uso4: false,
};

/// TUN queues (each with one worker thread for both directions): two per CPU, at least
/// 2 and at most 4. Each flow stays on one worker (its TUN queue and socket follow the
/// flow hash), so with as many workers as CPUs a few flows often land on one worker
/// while a CPU idles; twice as many let the scheduler even the load out (weft-bench,
/// 2 CPUs, tcp-4: 10.9–11.4 Gbit/s with 4 workers against 10.0–10.9 with 2).
fn worker_queues() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .saturating_mul(2)
        .clamp(2, 4)
}

/// Sending sockets for VXLAN, each with its own source port (flows are spread over them).
const FLOW_SOCKETS: usize = 8;

/// The pod bridge.
pub const BRIDGE: &str = "cni0";
/// How often routes are re-read and repaired even without events.
pub const RECONCILE_PERIOD: Duration = Duration::from_secs(2);
/// How often the kernel-encapsulation path is tried again after the workers fell back
/// from it at run time and it could not be set up again.
const KERNEL_ENCAP_RETRY: Duration = Duration::from_secs(30);

/// The TUN device's name for a backend: `weft.<VNI>` or `weft.ipip`.
pub fn device_name(backend: &Backend) -> String {
    match backend {
        Backend::Vxlan { vni, .. } => format!("weft.{vni}"),
        Backend::Ipip { .. } => "weft.ipip".to_owned(),
    }
}

/// Runs the data plane until `shutdown` becomes true.
pub async fn run(
    settings: Settings,
    lease: LocalLease,
    events: mpsc::Receiver<PeerEvent>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    run_with_metrics(
        settings,
        lease,
        events,
        shutdown,
        Arc::new(Metrics::default()),
    )
    .await
}

/// [`run`], counting into `metrics` (which the caller exports). Three phases: [`start`]
/// (bridge, sockets, the first plane, host rules), [`Control::serve`] (peer events,
/// worker faults and the reconcile tick until shutdown), [`Control::stop`].
pub async fn run_with_metrics(
    settings: Settings,
    lease: LocalLease,
    events: mpsc::Receiver<PeerEvent>,
    shutdown: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<()> {
    let netlink = Netlink::connect().context("opening netlink")?;
    let Started {
        shared,
        plane,
        routes,
        host_rules,
        gateway,
    } = start(&netlink, &settings, &lease, &metrics).await?;
    let mut control = Control {
        netlink: &netlink,
        lease: &lease,
        metrics: &metrics,
        shared: &shared,
        repairs: Repairer::new(&netlink, &shared, gateway),
        plane: Some(plane),
        routes,
        host_rules,
        peers: BTreeMap::new(),
    };
    let result = control.serve(events, shutdown).await;
    control.stop(settings.cleanup_on_exit).await?;
    result
}

/// What [`start`] set up: everything the control loop works on.
struct Started {
    shared: Shared,
    plane: Plane,
    routes: RouteInputs,
    host_rules: crate::firewall::HostRules,
    /// cni0's address.
    gateway: Ipv4Net,
}

/// The start: cni0, the sockets (which outlive planes), the first plane, the host
/// firewall rules.
async fn start(
    netlink: &Netlink,
    settings: &Settings,
    lease: &LocalLease,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Started> {
    let backend = &lease.netconf.backend;
    let subnet_len = lease.subnet.prefix_len();

    // cni0 with the gateway address, shared with the CNI plugin.
    let gateway = Ipv4Net::new(first_host(lease.subnet), subnet_len)?;
    bridge::ensure_bridge(netlink.handle(), BRIDGE, gateway, lease.mtu)
        .await
        .with_context(|| format!("setting up bridge {BRIDGE}"))?;

    let name = device_name(backend);
    let wanted = tun_offloads(backend);
    let queues = worker_queues();
    let underlay = netlink.require_link(&lease.underlay_iface).await?;
    let underlay_net = underlay_subnet(netlink, underlay.index, lease.public_ip).await?;
    let (encap, direct_routing) = encap_of(backend, lease);
    let (receivers, senders) = open_sockets(&encap, queues)?;
    let shared = Shared {
        busy_poll: settings.busy_poll,
        kernel_encap: settings.kernel_encap,
        name: name.clone(),
        lease: lease.clone(),
        encap,
        wanted,
        queues,
        receivers,
        senders: Arc::new(senders),
        table: Arc::new(ArcSwap::from_pointee(PeerTable::empty(subnet_len))),
        metrics: metrics.clone(),
    };
    let plane = Plane::start(netlink, &shared, &underlay).await?;
    let tun_index = plane.built.tun_index;

    let mut host_rules =
        crate::firewall::HostRules::new(settings, lease.netconf.network, lease.subnet);
    host_rules
        .install()
        .await
        .context("installing the masquerade rules")?;
    let info = plane.info(&shared);
    tracing::info!(
        device = %name, subnet = %lease.subnet, public_ip = %lease.public_ip,
        mtu = lease.mtu, offloads = ?info.offloads, transmit_path = info.transmit_path,
        "data plane up"
    );
    metrics.set_up(info);

    let routes = RouteInputs {
        own_subnet: lease.subnet,
        encap,
        direct_routing,
        underlay_net,
        tun_index,
        underlay_index: underlay.index,
    };
    Ok(Started {
        shared,
        plane,
        routes,
        host_rules,
        gateway,
    })
}

/// The offloads asked of TUN. Super-packets are only worth taking from TUN when they
/// can leave in one UDP GSO send (VXLAN); IPIP segments them into one sendmmsg batch
/// either way.
fn tun_offloads(backend: &Backend) -> Offloads {
    if matches!(backend, Backend::Ipip { .. }) || io::udp_gso_supported() {
        TUN_OFFLOADS
    } else {
        tracing::warn!("no UDP GSO (UDP_SEGMENT) in this kernel: TUN TSO off");
        Offloads {
            tso4: false,
            ..TUN_OFFLOADS
        }
    }
}

/// The workers' encapsulation for `backend`, and whether DirectRouting is on.
fn encap_of(backend: &Backend, lease: &LocalLease) -> (Encap, bool) {
    match *backend {
        Backend::Vxlan {
            vni,
            port,
            direct_routing,
        } => (
            Encap::Vxlan {
                vni,
                port,
                local_mac: lease.vtep_mac,
            },
            direct_routing,
        ),
        Backend::Ipip { direct_routing } => (Encap::Ipip, direct_routing),
    }
}

/// The underlay sockets: receiving (one per worker) and sending.
fn open_sockets(encap: &Encap, queues: usize) -> anyhow::Result<(Vec<Arc<OwnedFd>>, Vec<OwnedFd>)> {
    // Receiving sockets, one per receive worker. VXLAN: UDP sockets sharing the port
    // with SO_REUSEPORT, so the kernel spreads peers' flows (distinct source ports, see
    // `transmit::pick_sender`) over the workers. IPIP: raw sockets, each filtering for its
    // share of the inner flows (every raw socket sees every packet; see `io::ipip_sockets`).
    // Sockets are bound to no device, so they outlive plane rebuilds and a re-created
    // underlay device.
    let receivers: Vec<Arc<OwnedFd>> = match *encap {
        Encap::Vxlan { port, .. } => (0..queues)
            .map(|_| io::vxlan_socket(port).map(Arc::new))
            .collect::<Result<_, _>>()
            .with_context(|| format!("binding UDP 0.0.0.0:{port} for VXLAN"))?,
        Encap::Ipip => io::ipip_sockets(queues)
            .context("opening the raw IPIP sockets")?
            .into_iter()
            .map(Arc::new)
            .collect(),
    };
    // VXLAN sends from a few ephemeral ports chosen by inner flow (see
    // `transmit::pick_sender`); IPIP from a raw socket of its own (everything, or what
    // the TAP cannot take), not a receiving one: see `io::ipip_send_socket`.
    let senders: Vec<OwnedFd> = match encap {
        Encap::Vxlan { .. } => (0..FLOW_SOCKETS)
            .map(|_| io::vxlan_send_socket())
            .collect::<Result<_, _>>()
            .context("opening the VXLAN sending sockets")?,
        Encap::Ipip => vec![io::ipip_send_socket().context("opening the IPIP sending socket")?],
    };
    Ok((receivers, senders))
}

/// The control loop's state between [`start`] and [`Control::stop`].
struct Control<'a> {
    netlink: &'a Netlink,
    lease: &'a LocalLease,
    metrics: &'a Arc<Metrics>,
    shared: &'a Shared,
    repairs: Repairer<'a>,
    /// `None` between a failed rebuild and the next attempt.
    plane: Option<Plane>,
    routes: RouteInputs,
    host_rules: crate::firewall::HostRules,
    peers: BTreeMap<Ipv4Net, Peer>,
}

impl Control<'_> {
    /// Serves peer events, worker faults and the reconcile tick until `shutdown` turns
    /// true or the events end.
    async fn serve(
        &mut self,
        mut events: mpsc::Receiver<PeerEvent>,
        mut shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        // The first reconcile one period from now, not at once: the peer snapshot that
        // follows the start must come first, or routes from the last run would be
        // deleted and put back a moment later.
        let mut reconcile = tokio::time::interval_at(
            tokio::time::Instant::now() + RECONCILE_PERIOD,
            RECONCILE_PERIOD,
        );
        reconcile.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let faults = self.plane.as_ref().map(|plane| plane.faults.clone());
            let fault_reported = async {
                match &faults {
                    Some(faults) => faults.reported().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                event = events.recv() => match event {
                    Some(event) => self.on_events(event, &mut events).await,
                    None => return Ok(()),
                },
                // A worker's fault is repaired at once, not at the next tick.
                () = fault_reported => self.on_fault().await,
                _ = reconcile.tick() => self.on_reconcile().await,
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Applies `first` and every event already queued behind it.
    async fn on_events(&mut self, first: PeerEvent, events: &mut mpsc::Receiver<PeerEvent>) {
        let own_subnet = self.lease.subnet;
        apply_event(&mut self.peers, first, &own_subnet);
        // A burst of events (a watch catching up, many nodes joining) is applied as
        // one: one table swap and one route reconcile.
        while let Ok(event) = events.try_recv() {
            apply_event(&mut self.peers, event, &own_subnet);
        }
        // Gone peers' series go; before the table swap, so no worker can register a
        // peer that just left.
        self.metrics
            .retain_peers(self.peers.values().map(|p| (p.subnet, p.public_ip)));
        let (routes, table_input) = self.routes.desired(&self.peers);
        self.shared.table.store(Arc::new(PeerTable::build(
            own_subnet.prefix_len(),
            &self.shared.encap,
            table_input,
        )));
        if let Err(error) = sync_routes(self.netlink, &routes, self.metrics).await {
            tracing::warn!(error = %format!("{error:#}"), "route update failed; retrying at the next reconcile");
        }
    }

    /// A worker reported a lost TUN queue or a failed TAP.
    async fn on_fault(&mut self) {
        self.repairs.check(&mut self.plane, &mut self.routes).await;
        let routes = self.routes.desired(&self.peers).0;
        if let Err(error) = sync_routes(self.netlink, &routes, self.metrics).await {
            tracing::warn!(error = %format!("{error:#}"), "route update failed; retrying at the next reconcile");
        }
    }

    /// The periodic reconcile: devices, routes, underlay counters, host rules, the
    /// sending sockets' error queues.
    async fn on_reconcile(&mut self) {
        self.repairs.check(&mut self.plane, &mut self.routes).await;
        let (routes, _) = self.routes.desired(&self.peers);
        match sync_routes(self.netlink, &routes, self.metrics).await {
            Ok(fixes) => {
                self.metrics
                    .route_reconcile_fixes
                    .fetch_add(fixes as u64, std::sync::atomic::Ordering::Relaxed);
            }
            Err(error) => tracing::warn!(error = %format!("{error:#}"), "route reconcile failed"),
        }
        sample_underlay_stats(self.netlink, &self.lease.underlay_iface, self.metrics).await;
        self.host_rules.reconcile(self.metrics).await;
        worker::drain_send_error_queues(&self.shared.senders, self.metrics);
    }

    /// Stops the workers; with `cleanup` (`--cleanup-on-exit`) also removes the host
    /// rules, routes and devices.
    async fn stop(self, cleanup: bool) -> anyhow::Result<()> {
        self.metrics.set_down();
        let devices = match self.plane {
            Some(plane) => Some(plane.stop().await?),
            None => None,
        };
        // The masquerade table and forward rules stay (a restart replaces them
        // atomically), so pods keep NAT and forwarding while weftd is down.
        if cleanup {
            let mut host_rules = self.host_rules;
            host_rules.cleanup().await;
            sync_routes(self.netlink, &[], self.metrics).await?;
            if let Some((tun, tap_encap)) = devices {
                tun.set_transient()?;
                // The TAP and its program go with the last descriptor.
                drop((tun, tap_encap));
            }
            let name = &self.shared.name;
            if let Some(link) = self.netlink.link(name).await? {
                self.netlink.delete_link(link.index).await?;
            }
            tracing::info!(device = %name, "removed TUN device and routes (--cleanup-on-exit)");
        }
        Ok(())
    }
}

/// What the route and peer-table computation depends on besides the peers.
#[derive(Debug, Clone, Copy)]
struct RouteInputs {
    own_subnet: Ipv4Net,
    encap: Encap,
    direct_routing: bool,
    underlay_net: Option<Ipv4Net>,
    tun_index: u32,
    underlay_index: u32,
}

impl RouteInputs {
    /// Desired routes, and each compatible peer with whether it is reached through the
    /// tunnel (`false` = DirectRouting: a plain route via its PublicIP, as flannel does
    /// for peers on the same underlay subnet).
    fn desired<'a>(
        &self,
        peers: &'a BTreeMap<Ipv4Net, Peer>,
    ) -> (Vec<Route>, Vec<(&'a Peer, bool)>) {
        let mut routes = Vec::with_capacity(peers.len());
        let mut table = Vec::with_capacity(peers.len());
        for peer in peers.values() {
            if peer.subnet == self.own_subnet || compatible(&self.encap, &peer.backend).is_none() {
                continue;
            }
            let direct = self.direct_routing
                && self
                    .underlay_net
                    .is_some_and(|net| net.contains(&peer.public_ip));
            routes.push(if direct {
                Route {
                    dst: peer.subnet,
                    gateway: Some(peer.public_ip),
                    oif: self.underlay_index,
                }
            } else {
                Route {
                    dst: peer.subnet,
                    gateway: None,
                    oif: self.tun_index,
                }
            });
            table.push((peer, !direct));
        }
        (routes, table)
    }
}

fn apply_event(peers: &mut BTreeMap<Ipv4Net, Peer>, event: PeerEvent, own_subnet: &Ipv4Net) {
    match event {
        PeerEvent::Upsert(peer) => {
            if peer.subnet != *own_subnet {
                tracing::info!(subnet = %peer.subnet, public_ip = %peer.public_ip, "peer up");
                peers.insert(peer.subnet, peer);
            }
        }
        PeerEvent::Removed(subnet) => {
            if peers.remove(&subnet).is_some() {
                tracing::info!(%subnet, "peer gone");
            }
        }
        PeerEvent::Snapshot(all) => {
            peers.clear();
            peers.extend(
                all.into_iter()
                    .filter(|peer| peer.subnet != *own_subnet)
                    .map(|peer| (peer.subnet, peer)),
            );
            tracing::info!(peers = peers.len(), "peer snapshot");
        }
    }
}

/// Copies the underlay device's transmit error and drop counters into the metrics:
/// the kernel's count of packets it could not send, which with kernel encapsulation
/// includes weft's own after the tc program handed them on. A failed lookup keeps the
/// last values (the next reconcile tries again).
async fn sample_underlay_stats(netlink: &Netlink, underlay: &str, metrics: &Metrics) {
    if let Ok(Some(link)) = netlink.link(underlay).await {
        use std::sync::atomic::Ordering::Relaxed;
        metrics.underlay_tx_errors.store(link.tx_errors, Relaxed);
        metrics.underlay_tx_dropped.store(link.tx_dropped, Relaxed);
    }
}

/// Applies the route plan; returns how many changes it made. Conflicts with foreign
/// routes and refused changes go to `metrics` (counted, logged once).
async fn sync_routes(
    netlink: &Netlink,
    desired: &[Route],
    metrics: &Metrics,
) -> anyhow::Result<usize> {
    let pass = netlink.reconcile_routes(desired).await?;
    for change in &pass.applied {
        tracing::info!(?change, "route");
    }
    metrics.record_route_pass(&pass);
    Ok(pass.applied.len())
}

fn first_host(subnet: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()).wrapping_add(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::PeerBackend;

    fn peer(subnet: &str, ip: &str) -> Peer {
        Peer {
            subnet: subnet.parse().unwrap(),
            public_ip: ip.parse().unwrap(),
            backend: PeerBackend::Vxlan {
                vni: 1,
                vtep_mac: [2, 0, 0, 0, 0, 2],
            },
        }
    }

    fn inputs(direct_routing: bool) -> RouteInputs {
        RouteInputs {
            own_subnet: "10.244.1.0/24".parse().unwrap(),
            encap: Encap::Vxlan {
                vni: 1,
                port: 8472,
                local_mac: [2, 0, 0, 0, 0, 1],
            },
            direct_routing,
            underlay_net: Some("192.0.2.0/24".parse().unwrap()),
            tun_index: 7,
            underlay_index: 2,
        }
    }

    #[test]
    fn events_build_the_peer_set() {
        let own: Ipv4Net = "10.244.1.0/24".parse().unwrap();
        let mut peers = BTreeMap::new();
        apply_event(
            &mut peers,
            PeerEvent::Upsert(peer("10.244.2.0/24", "192.0.2.2")),
            &own,
        );
        apply_event(
            &mut peers,
            PeerEvent::Upsert(peer("10.244.1.0/24", "192.0.2.1")),
            &own,
        );
        assert_eq!(peers.len(), 1, "own lease is not a peer");
        apply_event(
            &mut peers,
            PeerEvent::Snapshot(vec![peer("10.244.3.0/24", "192.0.2.3")]),
            &own,
        );
        assert_eq!(
            peers.keys().map(|k| k.to_string()).collect::<Vec<_>>(),
            ["10.244.3.0/24"]
        );
        apply_event(
            &mut peers,
            PeerEvent::Removed("10.244.3.0/24".parse().unwrap()),
            &own,
        );
        assert!(peers.is_empty());
    }

    #[test]
    fn tunnelled_and_direct_routes() {
        let mut peers = BTreeMap::new();
        for p in [
            peer("10.244.2.0/24", "192.0.2.2"),
            peer("10.244.3.0/24", "198.51.100.3"),
            Peer {
                backend: PeerBackend::Other("udp".into()),
                ..peer("10.244.4.0/24", "192.0.2.4")
            },
        ] {
            peers.insert(p.subnet, p);
        }
        let (routes, table) = inputs(false).desired(&peers);
        assert_eq!(routes.len(), 2, "the udp-backend peer gets no route");
        assert!(routes.iter().all(|r| r.gateway.is_none() && r.oif == 7));
        assert!(table.iter().all(|(_, tunnelled)| *tunnelled));

        let (routes, table) = inputs(true).desired(&peers);
        assert_eq!(
            routes[0],
            Route {
                dst: "10.244.2.0/24".parse().unwrap(),
                gateway: Some("192.0.2.2".parse().unwrap()),
                oif: 2
            }
        );
        assert_eq!(
            routes[1].oif, 7,
            "a peer on another underlay subnet stays tunnelled"
        );
        assert_eq!(
            table.iter().map(|(_, t)| *t).collect::<Vec<_>>(),
            [false, true]
        );
    }

    #[test]
    fn device_names() {
        assert_eq!(
            device_name(&Backend::Vxlan {
                vni: 1,
                port: 8472,
                direct_routing: false
            }),
            "weft.1"
        );
        assert_eq!(
            device_name(&Backend::Ipip {
                direct_routing: false
            }),
            "weft.ipip"
        );
    }
}
