//! Data plane: cni0, the TUN VTEP, the userspace VXLAN/IPIP hot path, routes, masquerade.
//!
//! INTERFACE (called by `node.rs`; keep the signature, the body is the data plane's):
//! [`run`] owns devices, routes and sockets for as long as the node runs, applies every
//! [`PeerEvent`] in order, and returns when `shutdown` turns true.
//!
//! Structure: this module is the control side (an async task): it sets up devices and
//! sockets, keeps the set of peers, publishes a [`peers::PeerTable`] to the workers with
//! one atomic swap per change, and reconciles routes (on every change and every
//! [`RECONCILE_PERIOD`], so a deleted route comes back). The packets never pass through
//! here: [`worker`] threads move them between the TUN device and the underlay socket.

pub mod bpf;
pub mod io;
pub mod packet;
pub mod peers;
pub mod repair;
pub mod reply_wait;
pub mod tap_encap;
pub mod tun;
pub mod worker;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd as _, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use ipnet::Ipv4Net;
use tokio::sync::{mpsc, watch};
use weft_config::{Backend, Settings};

use crate::lease::{LocalLease, Peer, PeerEvent};
use crate::metrics::{Metrics, Repair};
use crate::netlink::{bridge, Link, Netlink, Route};
use peers::{compatible, Encap, PeerTable};
use repair::{Built, DeviceState, Observed, PlaneFaults, RepairPlan};
use tun::{Offloads, Tun};
use worker::WorkerContext;

/// What the kernel may hand us from TUN: partial checksums and TCPv4 super-packets
/// (segmented by the queue workers, see `worker::Transmitter`).
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

/// [`run`], counting into `metrics` (which the caller exports).
pub async fn run_with_metrics(
    settings: Settings,
    lease: LocalLease,
    mut events: mpsc::Receiver<PeerEvent>,
    mut shutdown: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<()> {
    let netlink = Netlink::connect().context("opening netlink")?;
    let backend = lease.netconf.backend.clone();
    let subnet_len = lease.subnet.prefix_len();

    // cni0 with the gateway address, shared with the CNI plugin.
    let gateway = Ipv4Net::new(first_host(lease.subnet), subnet_len)?;
    bridge::ensure_bridge(netlink.handle(), BRIDGE, gateway, lease.mtu)
        .await
        .with_context(|| format!("setting up bridge {BRIDGE}"))?;

    let name = device_name(&backend);
    // Super-packets are only worth taking from TUN when they can leave in one UDP GSO
    // send (VXLAN); IPIP segments them into one sendmmsg batch either way.
    let wanted = if matches!(backend, Backend::Ipip { .. }) || io::udp_gso_supported() {
        TUN_OFFLOADS
    } else {
        tracing::warn!("no UDP GSO (UDP_SEGMENT) in this kernel: TUN TSO off");
        Offloads {
            tso4: false,
            ..TUN_OFFLOADS
        }
    };
    let queues = worker_queues();
    let underlay = netlink.require_link(&lease.underlay_iface).await?;
    let underlay_net = underlay_subnet(&netlink, underlay.index, lease.public_ip).await?;

    let (encap, direct_routing) = match backend {
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
    };
    // Receiving sockets, one per receive worker. VXLAN: UDP sockets sharing the port
    // with SO_REUSEPORT, so the kernel spreads peers' flows (distinct source ports, see
    // `worker::pick_sender`) over the workers. IPIP: raw sockets, each filtering for its
    // share of the inner flows (every raw socket sees every packet; see `io::ipip_sockets`).
    // Sockets are bound to no device, so they outlive plane rebuilds and a re-created
    // underlay device.
    let receivers: Vec<Arc<OwnedFd>> = match encap {
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
    // `worker::pick_sender`); IPIP from the raw socket (everything, or what the TAP
    // cannot take).
    let senders: Vec<OwnedFd> = match encap {
        Encap::Vxlan { .. } => (0..FLOW_SOCKETS)
            .map(|_| io::vxlan_send_socket())
            .collect::<Result<_, _>>()
            .context("opening the VXLAN sending sockets")?,
        Encap::Ipip => vec![receivers[0]
            .try_clone()
            .context("duplicating the IPIP socket")?],
    };
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
    let plane = Plane::start(&netlink, &shared, &underlay).await?;
    let tun_index = plane.built.tun_index;

    let mut host_rules =
        crate::firewall::HostRules::new(&settings, lease.netconf.network, lease.subnet);
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

    let mut state = RouteInputs {
        own_subnet: lease.subnet,
        encap,
        direct_routing,
        underlay_net,
        tun_index,
        underlay_index: underlay.index,
    };
    let mut repairs = Repairer {
        netlink: &netlink,
        shared: &shared,
        gateway,
        underlay_missing_logged: false,
        pending: Vec::new(),
        tap_failure: None,
        last_failure: None,
    };
    // `None` between a failed rebuild and the next attempt.
    let mut plane = Some(plane);
    let mut peers: BTreeMap<Ipv4Net, Peer> = BTreeMap::new();
    // The first reconcile one period from now, not at once: the peer snapshot that
    // follows the start must come first, or routes from the last run would be deleted
    // and put back a moment later.
    let mut reconcile = tokio::time::interval_at(
        tokio::time::Instant::now() + RECONCILE_PERIOD,
        RECONCILE_PERIOD,
    );
    reconcile.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let result = loop {
        let faults = plane.as_ref().map(|plane| plane.faults.clone());
        let fault_reported = async {
            match &faults {
                Some(faults) => faults.reported().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            event = events.recv() => match event {
                Some(event) => {
                    apply_event(&mut peers, event, &lease.subnet);
                    // A burst of events (a watch catching up, many nodes joining) is
                    // applied as one: one table swap and one route reconcile.
                    while let Ok(event) = events.try_recv() {
                        apply_event(&mut peers, event, &lease.subnet);
                    }
                    // Gone peers' series go; before the table swap, so no worker can
                    // register a peer that just left.
                    metrics.retain_peers(peers.values().map(|p| (p.subnet, p.public_ip)));
                    let (routes, table_input) = state.desired(&peers);
                    shared.table.store(Arc::new(PeerTable::build(subnet_len, &encap, table_input)));
                    if let Err(error) = sync_routes(&netlink, &routes, &metrics).await {
                        tracing::warn!(error = %format!("{error:#}"), "route update failed; retrying at the next reconcile");
                    }
                }
                None => break Ok(()),
            },
            // A worker's fault is repaired at once, not at the next tick.
            () = fault_reported => {
                repairs.check(&mut plane, &mut state).await;
                if let Err(error) = sync_routes(&netlink, &state.desired(&peers).0, &metrics).await {
                    tracing::warn!(error = %format!("{error:#}"), "route update failed; retrying at the next reconcile");
                }
            }
            _ = reconcile.tick() => {
                repairs.check(&mut plane, &mut state).await;
                let (routes, _) = state.desired(&peers);
                match sync_routes(&netlink, &routes, &metrics).await {
                    Ok(fixes) => {
                        metrics.route_reconcile_fixes.fetch_add(fixes as u64, std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(error) => tracing::warn!(error = %format!("{error:#}"), "route reconcile failed"),
                }
                sample_underlay_stats(&netlink, &lease.underlay_iface, &metrics).await;
                host_rules.reconcile(&metrics).await;
            }
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    break Ok(());
                }
            }
        }
    };

    metrics.set_down();
    let devices = match plane {
        Some(plane) => Some(plane.stop().await?),
        None => None,
    };

    // The masquerade table and forward rules stay (a restart replaces them atomically),
    // so pods keep NAT and forwarding while weftd is down.
    if settings.cleanup_on_exit {
        host_rules.cleanup().await;
        sync_routes(&netlink, &[], &metrics).await?;
        if let Some((tun, tap_encap)) = devices {
            tun.set_transient()?;
            // The TAP and its program go with the last descriptor.
            drop((tun, tap_encap));
        }
        if let Some(link) = netlink.link(&name).await? {
            netlink.delete_link(link.index).await?;
        }
        tracing::info!(device = %name, "removed TUN device and routes (--cleanup-on-exit)");
    }
    result
}

/// The underlay subnet our PublicIP sits in (for DirectRouting), if it is on `index`.
async fn underlay_subnet(
    netlink: &Netlink,
    index: u32,
    public_ip: Ipv4Addr,
) -> anyhow::Result<Option<Ipv4Net>> {
    Ok(netlink
        .addresses(index)
        .await?
        .into_iter()
        .find(|net| net.addr() == public_ip)
        .map(|net| net.trunc()))
}

/// What outlives a plane rebuild: settings, the sockets, the peer table.
#[derive(Debug)]
struct Shared {
    busy_poll: Duration,
    kernel_encap: bool,
    /// The TUN device's name.
    name: String,
    lease: LocalLease,
    encap: Encap,
    wanted: Offloads,
    queues: usize,
    receivers: Vec<Arc<OwnedFd>>,
    senders: Arc<Vec<OwnedFd>>,
    table: Arc<ArcSwap<PeerTable>>,
    metrics: Arc<Metrics>,
}

/// One generation of the devices and the workers on them.
#[derive(Debug)]
struct Plane {
    tun: Tun,
    tap: Option<tap_encap::TapEncap>,
    /// Why packets leave through the userspace path, when they do.
    userspace_reason: Option<String>,
    built: Built,
    started: std::time::Instant,
    stop: Arc<io::StopSignal>,
    faults: Arc<PlaneFaults>,
    threads: Vec<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl Plane {
    /// Opens (or creates) the TUN device, sets up the TAP and its program where wanted
    /// and possible, and starts one worker per queue.
    async fn start(netlink: &Netlink, shared: &Shared, underlay: &Link) -> anyhow::Result<Plane> {
        let name = &shared.name;
        let lease = &shared.lease;
        // The TUN VTEP: persistent, so it (and its routes) survive a restart.
        let tun = Tun::open(name, shared.queues, shared.wanted)
            .with_context(|| format!("opening TUN device {name}"))?;
        if tun.offloads() == shared.wanted {
            tracing::info!(device = %name, offloads = ?tun.offloads(), "TUN offloads: TSO super-packets are segmented in userspace");
        } else {
            tracing::warn!(device = %name, wanted = ?shared.wanted, active = ?tun.offloads(), "this kernel refuses some TUN offloads; using the slower path");
        }
        let tun_link = netlink.ensure_link_up(name, Some(lease.mtu)).await?;
        // Like flannel's `.0/32` on flannel.<VNI>: traffic this host originates towards
        // other nodes' pods gets a source inside our subnet, which peers accept.
        netlink
            .ensure_address(tun_link.index, tun_address(lease.subnet))
            .await?;

        // Super-packets leave whole through the kernel's encapsulation where this host
        // allows it (see `tap_encap`), else segmented here.
        let (tap, userspace_reason) = if shared.kernel_encap {
            match tap_encap::setup(
                netlink,
                &shared.encap,
                underlay.index,
                lease.mtu + tap_encap::outer_len(&shared.encap) as u32,
                shared.queues,
            )
            .await
            {
                Ok(tap) => {
                    tracing::info!(
                        device = tap_encap::DEVICE,
                        "the kernel adds the outer headers (tc program): one underlay packet per 64 KB"
                    );
                    (Some(tap), None)
                }
                Err(error) => {
                    let reason = format!("kernel encapsulation unavailable: {error:#}");
                    tracing::warn!(%reason, "segmenting and encapsulating in userspace (slower)");
                    (None, Some(reason))
                }
            }
        } else {
            (None, Some("--kernel-encap=false".to_owned()))
        };

        let stop = Arc::new(io::StopSignal::new().context("creating the stop eventfd")?);
        let faults = Arc::new(PlaneFaults::default());
        let ctx = WorkerContext {
            encap: shared.encap,
            own_subnet: lease.subnet,
            peers: shared.table.clone(),
            metrics: shared.metrics.clone(),
            stop: stop.clone(),
            mtu: lease.mtu as usize,
            busy_poll: shared.busy_poll,
            faults: faults.clone(),
        };
        let mut plane = Plane {
            built: Built {
                tun_index: tun_link.index,
                tap_index: tap.as_ref().map(tap_encap::TapEncap::index),
                underlay_index: underlay.index,
                mtu: lease.mtu,
            },
            started: std::time::Instant::now(),
            tun,
            tap,
            userspace_reason,
            stop,
            faults,
            threads: Vec::new(),
        };
        for queue in 0..plane.tun.queue_count() {
            let tap = match &plane.tap {
                Some(tap_encap) => Some(worker::TapQueue {
                    fd: tap_encap.queue(queue)?,
                    local_ip: lease.public_ip,
                }),
                None => None,
            };
            let transmit = worker::TransmitSetup {
                ctx: ctx.clone(),
                tun: plane.tun.clone_queue(queue)?,
                senders: shared.senders.clone(),
                tap,
            };
            let receive = match shared.receivers.get(queue) {
                Some(receiver) => {
                    Some((ctx.clone(), plane.tun.clone_queue(queue)?, receiver.clone()))
                }
                None => None,
            };
            let stop = plane.stop.clone();
            let thread = std::thread::Builder::new()
                .name(format!("weft-q{queue}"))
                .spawn(move || worker::run(stop, Some(transmit), receive));
            match thread {
                Ok(thread) => plane.threads.push(thread),
                Err(error) => {
                    // Stop the workers already running before giving up.
                    let _ = plane.stop().await;
                    return Err(error).context("starting a data-plane worker");
                }
            }
        }
        Ok(plane)
    }

    /// Stops and joins the workers; hands back the devices (dropping the TAP deletes it).
    async fn stop(mut self) -> anyhow::Result<(Tun, Option<tap_encap::TapEncap>)> {
        self.stop.raise();
        let threads = std::mem::take(&mut self.threads);
        tokio::task::spawn_blocking(move || {
            for thread in threads {
                match thread.join() {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => tracing::warn!(%error, "worker ended with an error"),
                    Err(_) => tracing::error!("worker panicked"),
                }
            }
        })
        .await
        .context("joining workers")?;
        Ok((self.tun, self.tap))
    }

    /// What `/v1/status` and `/readyz` show of this plane.
    fn info(&self, shared: &Shared) -> crate::metrics::DataplaneInfo {
        let vxlan = matches!(shared.encap, Encap::Vxlan { .. });
        let offloads = crate::metrics::ActiveOffloads {
            tun_csum: self.tun.offloads().csum,
            tun_tso4: self.tun.offloads().tso4,
            // Super-packets leave in UDP GSO sends when TUN hands them over and the kernel
            // does not encapsulate them whole.
            udp_segment: vxlan && self.tun.offloads().tso4 && self.tap.is_none(),
            udp_gro: vxlan
                && crate::metrics::ActiveOffloads::udp_gro_enabled(shared.receivers[0].as_fd()),
            kernel_encap: self.tap.is_some(),
        };
        crate::metrics::DataplaneInfo {
            device: shared.name.clone(),
            bridge: BRIDGE.to_owned(),
            backend: shared.lease.netconf.backend.type_name(),
            vni: match shared.encap {
                Encap::Vxlan { vni, .. } => Some(vni),
                Encap::Ipip => None,
            },
            offloads,
            transmit_path: if self.tap.is_some() {
                "kernel_encap"
            } else {
                "userspace"
            },
            transmit_path_reason: self.userspace_reason.clone(),
        }
    }
}

/// The TUN device's address: the subnet's network address as a /32.
fn tun_address(subnet: Ipv4Net) -> Ipv4Net {
    Ipv4Net::new(subnet.network(), 32).expect("/32 is a valid prefix")
}

/// The reconcile's device checks (see [`repair`]).
struct Repairer<'a> {
    netlink: &'a Netlink,
    shared: &'a Shared,
    /// cni0's address.
    gateway: Ipv4Net,
    underlay_missing_logged: bool,
    /// Why the plane is being rebuilt, counted once the rebuild succeeds.
    pending: Vec<Repair>,
    /// What workers said of the TAP when they gave up on it, until a plane has one again.
    tap_failure: Option<String>,
    /// The last rebuild's error, so a failure that repeats every reconcile is logged once.
    last_failure: Option<String>,
}

impl Repairer<'_> {
    /// Observes the devices, repairs what [`repair::plan`] says, and keeps the plane and
    /// the route inputs pointing at the devices as they are now. Failures are logged
    /// and tried again at the next reconcile; they never end the data plane.
    async fn check(&mut self, slot: &mut Option<Plane>, routes: &mut RouteInputs) {
        if let Err(error) = self.check_bridge().await {
            tracing::warn!(error = %format!("{error:#}"), "repairing {BRIDGE} failed; retrying at the next reconcile");
        }
        let result = match slot {
            Some(plane) => self.check_plane(plane).await,
            None => Ok(Some(Vec::new())),
        };
        let rebuild = match result {
            Ok(rebuild) => rebuild,
            Err(error) => {
                tracing::warn!(error = %format!("{error:#}"), "data-plane repair failed; retrying at the next reconcile");
                None
            }
        };
        let Some(rebuild) = rebuild else {
            return;
        };
        if let Some(old) = slot.take() {
            let what: Vec<&str> = rebuild.iter().map(|r| r.name()).collect();
            tracing::warn!(?what, "rebuilding the data plane's devices and workers");
            let tap_broke = rebuild
                .iter()
                .any(|r| matches!(r, Repair::Tap | Repair::TcProgram));
            if let Some(failure) = old.faults.tap_failed() {
                self.tap_failure = Some(failure);
            } else if tap_broke && old.tap.is_some() {
                self.tap_failure = Some(format!(
                    "{} was deleted or altered, or its program detached",
                    tap_encap::DEVICE
                ));
            }
            self.pending.extend(rebuild);
            // The old workers and devices go first: the new TAP takes the same name, and
            // the old one disappears with its last descriptor.
            self.shared.metrics.set_down();
            match old.stop().await {
                Ok(devices) => drop(devices),
                Err(error) => tracing::warn!(error = %format!("{error:#}"), "stopping the workers"),
            }
        }
        match self.start(routes).await {
            Ok(plane) => {
                *slot = Some(plane);
                self.last_failure = None;
            }
            Err(error) => {
                let error = format!("{error:#}");
                if self.last_failure.as_ref() != Some(&error) {
                    tracing::warn!(%error, "rebuilding the data plane failed; retrying at every reconcile");
                    self.last_failure = Some(error);
                }
            }
        }
    }

    /// Repairs what can be repaired in place; `Some(reasons)` when the plane must be
    /// rebuilt.
    async fn check_plane(&mut self, plane: &Plane) -> anyhow::Result<Option<Vec<Repair>>> {
        let observed = self.observe(plane).await?;
        let todo = repair::plan(&observed, &plane.built);
        if todo.underlay_missing {
            if !self.underlay_missing_logged {
                tracing::warn!(
                    iface = %self.shared.lease.underlay_iface,
                    "the underlay device is gone; waiting for it to come back"
                );
                self.underlay_missing_logged = true;
            }
            return Ok(None);
        }
        self.underlay_missing_logged = false;
        self.fix_in_place(&todo).await?;
        if !todo.rebuild.is_empty() {
            return Ok(Some(todo.rebuild));
        }
        // Fell back from the kernel path at run time: try it again now and then, since
        // what broke it (a deleted TAP whose name was taken, say) may have passed.
        let retry_kernel_encap = self.tap_failure.is_some()
            && plane.tap.is_none()
            && plane.started.elapsed() >= KERNEL_ENCAP_RETRY;
        Ok(retry_kernel_encap.then(Vec::new))
    }

    async fn observe(&self, plane: &Plane) -> anyhow::Result<Observed> {
        let state = |link: &Link| DeviceState {
            index: link.index,
            up: link.up,
            mtu: link.mtu,
        };
        let tun = self.netlink.link(&self.shared.name).await?;
        let tun_has_address = match &tun {
            Some(link) => self
                .netlink
                .addresses(link.index)
                .await?
                .contains(&tun_address(self.shared.lease.subnet)),
            None => false,
        };
        let tap = match &plane.tap {
            Some(_) => Some(
                self.netlink
                    .link(tap_encap::DEVICE)
                    .await?
                    .as_ref()
                    .map(state),
            ),
            None => None,
        };
        let underlay = self.netlink.link(&self.shared.lease.underlay_iface).await?;
        Ok(Observed {
            tun: tun.as_ref().map(state),
            tun_has_address,
            tun_lost: plane.faults.tun_lost(),
            tap,
            program_attached: plane
                .tap
                .as_ref()
                .is_some_and(tap_encap::TapEncap::attached),
            tap_failed: plane.faults.tap_failed().is_some(),
            underlay: underlay.as_ref().map(state),
        })
    }

    async fn fix_in_place(&self, todo: &RepairPlan) -> anyhow::Result<()> {
        let metrics = &self.shared.metrics;
        let name = &self.shared.name;
        if todo.fix_tun {
            let link = self
                .netlink
                .ensure_link_up(name, Some(self.shared.lease.mtu))
                .await?;
            self.netlink
                .ensure_address(link.index, tun_address(self.shared.lease.subnet))
                .await?;
            metrics.count_repair(Repair::Tun);
            tracing::warn!(device = %name, "repaired the TUN device (up, MTU, address)");
        }
        if todo.fix_tap {
            self.netlink.ensure_link_up(tap_encap::DEVICE, None).await?;
            metrics.count_repair(Repair::Tap);
            tracing::warn!(
                device = tap_encap::DEVICE,
                "set the encapsulating TAP up again"
            );
        }
        Ok(())
    }

    /// Starts a new plane on the devices as they are now, and points the routes at it.
    async fn start(&mut self, routes: &mut RouteInputs) -> anyhow::Result<Plane> {
        let underlay = self
            .netlink
            .require_link(&self.shared.lease.underlay_iface)
            .await?;
        let mut plane = Plane::start(self.netlink, self.shared, &underlay).await?;
        let metrics = &self.shared.metrics;
        if plane.tap.is_some() {
            let counted = self
                .pending
                .iter()
                .any(|r| matches!(r, Repair::Tap | Repair::TcProgram));
            if self.tap_failure.take().is_some() && !counted {
                // The kernel path is back after a fallback.
                self.pending.push(Repair::Tap);
            }
        } else if let (Some(failure), Some(reason)) = (&self.tap_failure, &plane.userspace_reason) {
            plane.userspace_reason = Some(format!("{failure}; then {reason}"));
        }
        for what in self.pending.drain(..) {
            metrics.count_repair(what);
        }
        routes.tun_index = plane.built.tun_index;
        if routes.underlay_index != underlay.index {
            routes.underlay_index = underlay.index;
            routes.underlay_net =
                underlay_subnet(self.netlink, underlay.index, self.shared.lease.public_ip).await?;
        }
        let info = plane.info(self.shared);
        tracing::warn!(transmit_path = info.transmit_path, "data plane rebuilt");
        metrics.set_up(info);
        Ok(plane)
    }

    /// Puts cni0 back (created, its MTU, up, its address) if anything about it changed.
    async fn check_bridge(&self) -> anyhow::Result<()> {
        let state = bridge::ensure_bridge(
            self.netlink.handle(),
            BRIDGE,
            self.gateway,
            self.shared.lease.mtu,
        )
        .await?;
        if state.created
            || state.mtu_changed
            || state.brought_up
            || state.added_address
            || !state.removed_addresses.is_empty()
        {
            self.shared.metrics.count_repair(Repair::Bridge);
            tracing::warn!(?state, "repaired {BRIDGE}");
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
