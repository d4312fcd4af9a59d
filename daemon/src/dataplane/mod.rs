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
//!
//! What differs per backend is asked of [`crate::backend`]: which peers get which route
//! (or are refused), and whether there is a tunnel at all. A backend without one
//! (host-gw) gets cni0, routes via the peers' PublicIPs and the host rules, and no
//! TUN, TAP, sockets or workers.

mod batch;
pub mod express;
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
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use ipnet::Ipv4Net;
use tokio::sync::{mpsc, watch};
use weft_config::Settings;

use crate::backend::{self, is_on_link, Backend as _, NodeBackend, Refusal, RouteDevices, Tunnel};
use crate::lease::{LocalLease, Peer, PeerEvent};
use crate::metrics::Metrics;
use peers::PeerTable;
use plane::{Plane, Repairer, Shared};
use tun::Offloads;
use weft_netlink::{Netlink, Route};

/// What the kernel may hand us from TUN: partial checksums, TCPv4 and UDPv4
/// super-packets (segmented by the queue workers, see `transmit::Transmitter`). A kernel
/// that accepts USO4 also takes UDP super-packets written to TUN (`receive`).
const TUN_OFFLOADS: Offloads = Offloads {
    csum: true,
    tso4: true,
    uso4: true,
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

/// The pod bridge.
pub const BRIDGE: &str = "cni0";
/// How often routes are re-read and repaired even without events.
pub const RECONCILE_PERIOD: Duration = Duration::from_secs(2);
/// How often the kernel-encapsulation path is tried again after the workers fell back
/// from it at run time and it could not be set up again.
const KERNEL_ENCAP_RETRY: Duration = Duration::from_secs(30);

/// The TUN device's name for a backend: `weft.<VNI>` or `weft.ipip`; `None` for a
/// backend without a tunnel (host-gw).
pub fn device_name(backend: &weft_config::Backend) -> Option<String> {
    NodeBackend::new(backend, [0; 6])
        .tunnel()
        .map(|tunnel| tunnel.device_name())
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
        shared: shared.as_ref(),
        repairs: shared
            .as_ref()
            .map(|shared| Repairer::new(&netlink, shared, gateway)),
        gateway,
        plane,
        routes,
        host_rules,
        peers: BTreeMap::new(),
        refused: BTreeMap::new(),
    };
    let result = control.serve(events, shutdown).await;
    control.stop(settings.cleanup_on_exit).await?;
    result
}

/// What [`start`] set up: everything the control loop works on.
struct Started {
    /// The tunnel's sockets and peer table; `None` for a backend without a tunnel.
    shared: Option<Shared>,
    plane: Option<Plane>,
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
    let backend = NodeBackend::new(&lease.netconf.backend, lease.vtep_mac);
    let subnet_len = lease.subnet.prefix_len();

    // cni0 with the gateway address, shared with the CNI plugin.
    let gateway = Ipv4Net::new(first_host(lease.subnet), subnet_len)?;
    netlink
        .ensure_bridge(BRIDGE, gateway, lease.mtu)
        .await
        .with_context(|| format!("setting up bridge {BRIDGE}"))?;

    let underlay = netlink.require_link(&lease.underlay_iface).await?;
    let on_link = underlay_subnets(netlink, underlay.index).await?;
    if backend.tunnel().is_none() && !is_on_link(lease.public_ip, &on_link) {
        // flannel's host-gw refuses this too: peers route to our PublicIP as a
        // next hop on their L2 network, which a NATed or foreign address is not.
        anyhow::bail!(
            "the {} backend needs PublicIP {} to be an address of the underlay interface {} \
             (peers use it as their next hop on one L2 network), but it is not; \
             leave --public-ip unset or give one of {}'s addresses",
            backend.type_name(),
            lease.public_ip,
            lease.underlay_iface,
            lease.underlay_iface
        );
    }
    // The tunnel's devices, sockets and workers; a backend without one (host-gw) only
    // routes.
    let shared = match backend.tunnel() {
        Some(tunnel) => Some(open_tunnel(settings, lease, tunnel, metrics)?),
        None => None,
    };
    let plane = match &shared {
        Some(shared) => Some(Plane::start(netlink, shared, &underlay, true).await?),
        None => None,
    };
    let tun_index = plane.as_ref().map_or(0, |plane| plane.built.tun_index);

    let mut host_rules =
        crate::firewall::HostRules::new(settings, lease.netconf.network, lease.subnet);
    host_rules
        .install()
        .await
        .context("installing the masquerade rules")?;
    let info = match (&plane, &shared) {
        (Some(plane), Some(shared)) => plane.info(shared),
        _ => routed_info(&backend, lease),
    };
    tracing::info!(
        device = %info.device, backend = info.backend, subnet = %lease.subnet,
        public_ip = %lease.public_ip, mtu = lease.mtu, offloads = ?info.offloads,
        transmit_path = info.transmit_path, "data plane up"
    );
    metrics.set_up(info);

    let routes = RouteInputs {
        own_subnet: lease.subnet,
        backend,
        on_link,
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

/// The IPv4 subnets of the underlay interface `index` (host bits cleared).
async fn underlay_subnets(netlink: &Netlink, index: u32) -> anyhow::Result<Vec<Ipv4Net>> {
    let mut subnets: Vec<Ipv4Net> = netlink
        .addresses(index)
        .await?
        .into_iter()
        .map(|net| net.trunc())
        .collect();
    subnets.dedup();
    Ok(subnets)
}

/// Opens what a tunnel needs that outlives a plane rebuild: its sockets and the peer
/// table (the devices and workers are the plane's).
fn open_tunnel(
    settings: &Settings,
    lease: &LocalLease,
    tunnel: Tunnel,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Shared> {
    // Super-packets are only worth taking from TUN when they can leave in one UDP GSO
    // send (VXLAN) or the tunnel segments them into one batch either way (IPIP).
    let wanted = if tunnel.wants_tso_without_udp_gso() || io::udp_gso_supported() {
        TUN_OFFLOADS
    } else {
        tracing::warn!("no UDP GSO (UDP_SEGMENT) in this kernel: TUN TSO off");
        Offloads {
            tso4: false,
            ..TUN_OFFLOADS
        }
    };
    let queues = worker_queues();
    Ok(Shared {
        busy_poll: settings.busy_poll,
        attach: settings.attach_mode(),
        name: tunnel.device_name(),
        lease: lease.clone(),
        encap: tunnel,
        wanted,
        queues,
        receivers: tunnel.open_receivers(queues)?,
        express: tunnel.open_express(queues, settings.express_lane)?,
        senders: Arc::new(tunnel.open_senders()?),
        table: Arc::new(ArcSwap::from_pointee(PeerTable::empty(
            lease.subnet.prefix_len(),
        ))),
        metrics: metrics.clone(),
    })
}

/// What `/readyz` and `/v1/status` show of a data plane without a tunnel: the routes
/// leave through the underlay device, which `/readyz` checks.
fn routed_info(backend: &NodeBackend, lease: &LocalLease) -> crate::metrics::DataplaneInfo {
    crate::metrics::DataplaneInfo {
        device: lease.underlay_iface.clone(),
        bridge: BRIDGE.to_owned(),
        backend: backend.type_name(),
        vni: None,
        offloads: crate::metrics::ActiveOffloads {
            tun_csum: false,
            tun_tso4: false,
            udp_segment: false,
            udp_gro: false,
            kernel_encap: false,
            udp_tunnel_csum: false,
            express_lane: false,
        },
        transmit_path: "routed",
        transmit_path_reason: None,
        tc_attach: None,
    }
}

/// The reconcile's device checks without a tunnel: cni0, and the underlay device the
/// routes name (a re-created one has a new ifindex, and maybe other subnets).
async fn check_routed(
    netlink: &Netlink,
    gateway: Ipv4Net,
    lease: &LocalLease,
    state: &mut RouteInputs,
    metrics: &Metrics,
) {
    if let Err(error) = plane::check_bridge(netlink, gateway, lease.mtu, metrics).await {
        tracing::warn!(error = %format!("{error:#}"), "repairing {BRIDGE} failed; retrying at the next reconcile");
    }
    let Ok(Some(underlay)) = netlink.link(&lease.underlay_iface).await else {
        return;
    };
    if underlay.index != state.underlay_index {
        state.underlay_index = underlay.index;
        metrics.count_repair(crate::metrics::Repair::Underlay);
        tracing::warn!(iface = %lease.underlay_iface, "the underlay device was re-created; routes follow it");
    }
    if let Ok(on_link) = underlay_subnets(netlink, underlay.index).await {
        state.on_link = on_link;
    }
}

/// The control loop's state between [`start`] and [`Control::stop`].
struct Control<'a> {
    netlink: &'a Netlink,
    lease: &'a LocalLease,
    metrics: &'a Arc<Metrics>,
    /// The tunnel's sockets and peer table; `None` for a backend without a tunnel.
    shared: Option<&'a Shared>,
    /// The tunnel's device checks; without a tunnel, [`check_routed`].
    repairs: Option<Repairer<'a>>,
    /// cni0's address.
    gateway: Ipv4Net,
    /// `None` between a failed rebuild and the next attempt, and without a tunnel.
    plane: Option<Plane>,
    routes: RouteInputs,
    host_rules: crate::firewall::HostRules,
    peers: BTreeMap<Ipv4Net, Peer>,
    /// The peers the backend refuses now, each logged and counted once.
    refused: BTreeMap<Ipv4Net, Refusal>,
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
        let plan = self.routes.desired(&self.peers);
        note_refusals(&mut self.refused, plan.refused, self.metrics);
        if let Some(shared) = self.shared {
            shared.table.store(Arc::new(PeerTable::build(
                own_subnet.prefix_len(),
                &shared.encap,
                plan.reachable,
            )));
        }
        if let Err(error) = sync_routes(self.netlink, &plan.routes, self.metrics).await {
            tracing::warn!(error = %format!("{error:#}"), "route update failed; retrying at the next reconcile");
        }
    }

    /// A worker reported a lost TUN queue or a failed TAP.
    async fn on_fault(&mut self) {
        if let Some(repairs) = &mut self.repairs {
            repairs.check(&mut self.plane, &mut self.routes).await;
        }
        let routes = self.routes.desired(&self.peers).routes;
        if let Err(error) = sync_routes(self.netlink, &routes, self.metrics).await {
            tracing::warn!(error = %format!("{error:#}"), "route update failed; retrying at the next reconcile");
        }
    }

    /// The periodic reconcile: devices, routes, underlay counters, host rules, the
    /// sending sockets' error queues.
    async fn on_reconcile(&mut self) {
        match &mut self.repairs {
            Some(repairs) => repairs.check(&mut self.plane, &mut self.routes).await,
            None => {
                check_routed(
                    self.netlink,
                    self.gateway,
                    self.lease,
                    &mut self.routes,
                    self.metrics,
                )
                .await
            }
        }
        let plan = self.routes.desired(&self.peers);
        note_refusals(&mut self.refused, plan.refused, self.metrics);
        match sync_routes(self.netlink, &plan.routes, self.metrics).await {
            Ok(fixes) => {
                self.metrics
                    .route_reconcile_fixes
                    .fetch_add(fixes as u64, std::sync::atomic::Ordering::Relaxed);
            }
            Err(error) => tracing::warn!(error = %format!("{error:#}"), "route reconcile failed"),
        }
        sample_underlay_stats(self.netlink, &self.lease.underlay_iface, self.metrics).await;
        self.host_rules.reconcile(self.metrics).await;
        if let Some(shared) = self.shared {
            worker::drain_send_error_queues(&shared.senders, self.metrics);
        }
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
            if let Some(shared) = self.shared {
                let name = &shared.name;
                if let Some(link) = self.netlink.link(name).await? {
                    self.netlink.delete_link(link.index).await?;
                }
                tracing::info!(device = %name, "removed TUN device (--cleanup-on-exit)");
            }
            tracing::info!("removed routes (--cleanup-on-exit)");
        }
        Ok(())
    }
}

/// What the route and peer-table computation depends on besides the peers.
#[derive(Debug, Clone)]
struct RouteInputs {
    own_subnet: Ipv4Net,
    backend: NodeBackend,
    /// The underlay interface's IPv4 subnets: a PublicIP in one is directly connected.
    on_link: Vec<Ipv4Net>,
    tun_index: u32,
    underlay_index: u32,
}

impl RouteInputs {
    /// The backend's plan: desired routes, each reachable peer with whether it is
    /// reached through the tunnel (`false`: a plain route via its PublicIP, host-gw's
    /// and DirectRouting's), and the refused peers.
    fn desired<'a>(&self, peers: &'a BTreeMap<Ipv4Net, Peer>) -> backend::Plan<'a> {
        let devices = RouteDevices {
            tunnel: self.tun_index,
            underlay: self.underlay_index,
        };
        backend::plan(
            &self.backend,
            self.own_subnet,
            peers.values(),
            &self.on_link,
            devices,
        )
    }
}

/// Logs and counts each refusal that is news (a peer refused for the first time, or
/// for another reason than before), forgets those of peers no longer refused, and
/// publishes the refused subnets (for `/readyz`).
fn note_refusals(known: &mut BTreeMap<Ipv4Net, Refusal>, now: Vec<Refusal>, metrics: &Metrics) {
    let current: BTreeMap<Ipv4Net, Refusal> = now
        .into_iter()
        .map(|refusal| (refusal.subnet(), refusal))
        .collect();
    for (subnet, refusal) in &current {
        if known.get(subnet) != Some(refusal) {
            tracing::warn!(reason = refusal.reason().name(), "{refusal}");
            metrics.count_refused_peer(refusal.reason());
        }
    }
    if !current.keys().eq(known.keys()) {
        metrics.set_refused_peers(current.keys().copied().collect());
    }
    *known = current;
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
    use crate::metrics::RefusalReason;

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
        let config = weft_config::Backend::Vxlan {
            vni: 1,
            port: 8472,
            direct_routing,
        };
        RouteInputs {
            own_subnet: "10.244.1.0/24".parse().unwrap(),
            backend: NodeBackend::new(&config, [2, 0, 0, 0, 0, 1]),
            on_link: vec!["192.0.2.0/24".parse().unwrap()],
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
        let plan = inputs(false).desired(&peers);
        assert_eq!(plan.routes.len(), 2, "the udp-backend peer gets no route");
        assert!(plan
            .routes
            .iter()
            .all(|r| r.gateway.is_none() && r.oif == 7));
        assert!(plan.reachable.iter().all(|(_, tunnelled)| *tunnelled));
        assert_eq!(plan.refused.len(), 1);
        assert_eq!(plan.refused[0].reason(), RefusalReason::BackendMismatch);

        let plan = inputs(true).desired(&peers);
        assert_eq!(
            plan.routes[0],
            Route {
                dst: "10.244.2.0/24".parse().unwrap(),
                gateway: Some("192.0.2.2".parse().unwrap()),
                oif: 2
            }
        );
        assert_eq!(
            plan.routes[1].oif, 7,
            "a peer on another underlay subnet stays tunnelled"
        );
        assert_eq!(
            plan.reachable.iter().map(|(_, t)| *t).collect::<Vec<_>>(),
            [false, true]
        );
    }

    #[test]
    fn each_refusal_is_counted_once_until_it_changes() {
        let metrics = Metrics::default();
        let mut known = BTreeMap::new();
        let refused = |ip: &str| {
            let peer = Peer {
                backend: PeerBackend::HostGw,
                ..peer("10.244.9.0/24", ip)
            };
            let host_gw = NodeBackend::new(&weft_config::Backend::HostGw, [0; 6]);
            host_gw
                .reach(&peer, &["192.0.2.0/24".parse().unwrap()])
                .unwrap_err()
        };
        let total = || metrics.refused_peers_total(RefusalReason::NotOnLink);
        note_refusals(&mut known, vec![refused("198.51.100.9")], &metrics);
        assert_eq!(total(), 1);
        assert_eq!(metrics.refused_peers(), ["10.244.9.0/24".parse().unwrap()]);
        // Every reconcile and re-list plans again: the same refusal is not news.
        note_refusals(&mut known, vec![refused("198.51.100.9")], &metrics);
        assert_eq!(total(), 1);
        // The peer's lease changed (another PublicIP, still off link): news.
        note_refusals(&mut known, vec![refused("198.51.100.10")], &metrics);
        assert_eq!(total(), 2);
        // Gone, then back: counted again.
        note_refusals(&mut known, Vec::new(), &metrics);
        assert!(metrics.refused_peers().is_empty());
        note_refusals(&mut known, vec![refused("198.51.100.10")], &metrics);
        assert_eq!(total(), 3);
        assert_eq!(
            metrics.refused_peers_total(RefusalReason::BackendMismatch),
            0
        );
    }

    #[test]
    fn device_names() {
        let name = |config| device_name(&config);
        assert_eq!(
            name(weft_config::Backend::Vxlan {
                vni: 1,
                port: 8472,
                direct_routing: false
            }),
            Some("weft.1".to_owned())
        );
        assert_eq!(
            name(weft_config::Backend::Ipip {
                direct_routing: false
            }),
            Some("weft.ipip".to_owned())
        );
        assert_eq!(name(weft_config::Backend::HostGw), None);
    }
}
