//! One generation of the data plane's devices and workers ([`Plane`]), what outlives it
//! ([`Shared`]: sockets, the peer table), and the reconcile's device checks
//! ([`Repairer`], the I/O shell around the pure [`super::repair::plan`]).

use std::os::fd::{AsFd as _, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use ipnet::Ipv4Net;

use super::peers::{Encap, PeerTable};
use super::repair::{self, Built, DeviceState, Observed, PlaneFaults, RepairPlan};
use super::tun::{Offloads, Tun};
use super::worker::{self, WorkerContext};
use super::{express, io, tap_encap, RouteInputs, BRIDGE, KERNEL_ENCAP_RETRY};
use crate::lease::LocalLease;
use crate::metrics::{Metrics, Repair};
use weft_config::TcAttach;
use weft_netlink::{Link, Netlink};

/// What outlives a plane rebuild: settings, the sockets, the peer table.
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) busy_poll: Duration,
    /// How the tc program is attached (`off`: no TAP, the userspace path).
    pub(super) attach: TcAttach,
    /// The TUN device's name.
    pub(super) name: String,
    pub(super) lease: LocalLease,
    pub(super) encap: Encap,
    pub(super) wanted: Offloads,
    pub(super) queues: usize,
    pub(super) receivers: Vec<Arc<OwnedFd>>,
    /// The express lane's socket, or none (see `express`).
    pub(super) express: Vec<Arc<OwnedFd>>,
    pub(super) senders: Arc<Vec<OwnedFd>>,
    pub(super) table: Arc<ArcSwap<PeerTable>>,
    pub(super) metrics: Arc<Metrics>,
}

/// Attaches the express lane's TUN steering program (see `express`), or detaches any
/// left on the persistent device by a weftd that had the lane; says whether small
/// packets from TUN take the lane. Without the program the express worker is one more
/// ordinary worker (TUN spreads flows by its own steering).
fn steer_small_packets(tun: &Tun, shared: &Shared) -> bool {
    if shared.express.is_empty() {
        if let Err(error) = tun.set_steering_program(None) {
            tracing::warn!(%error, "could not clear the TUN device's steering program");
        }
        return false;
    }
    let attached = express::load_tun_steering(shared.queues as u32)
        .map_err(anyhow::Error::from)
        .and_then(|program| Ok(tun.set_steering_program(Some(&program))?));
    match attached {
        Ok(()) => true,
        Err(error) => {
            tracing::warn!(error = %format!("{error:#}"), "small packets from TUN share the workers' queues: no steering program");
            false
        }
    }
}

/// One generation of the devices and the workers on them.
#[derive(Debug)]
pub(super) struct Plane {
    tun: Tun,
    tap: Option<tap_encap::TapEncap>,
    /// Why packets leave through the userspace path, when they do.
    userspace_reason: Option<String>,
    /// Small packets take the express lane both ways (see `express`).
    express_lane: bool,
    pub(super) built: Built,
    started: Instant,
    stop: Arc<io::StopSignal>,
    pub(super) faults: Arc<PlaneFaults>,
    threads: Vec<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl Plane {
    /// Opens (or creates) the TUN device, sets up the TAP and its program where wanted
    /// and possible, and starts one worker per queue. With `strict` (weftd's start), a
    /// forced `--tc-attach=tcx|tc` that cannot attach is an error; otherwise (a rebuild
    /// while running) the plane falls back to the userspace path and says why.
    pub(super) async fn start(
        netlink: &Netlink,
        shared: &Shared,
        underlay: &Link,
        strict: bool,
    ) -> anyhow::Result<Plane> {
        let name = &shared.name;
        let lease = &shared.lease;
        // The TUN VTEP: persistent, so it (and its routes) survive a restart.
        let tun = Tun::open(name, shared.queues + shared.express.len(), shared.wanted)
            .with_context(|| format!("opening TUN device {name}"))?;
        let express_lane = steer_small_packets(&tun, shared);
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
        let (tap, userspace_reason) = if shared.attach != TcAttach::Off {
            match tap_encap::setup(
                netlink,
                &shared.encap,
                underlay.index,
                lease.mtu + tap_encap::outer_len(&shared.encap) as u32,
                shared.queues,
                shared.attach,
            )
            .await
            {
                Ok(tap) => {
                    tracing::info!(
                        device = tap_encap::DEVICE,
                        attach = tap.attach_kind(),
                        "the kernel adds the outer headers (tc program): one underlay packet per 64 KB"
                    );
                    (Some(tap), None)
                }
                Err(error) if strict && shared.attach != TcAttach::Auto => {
                    return Err(error.context(format!(
                        "kernel encapsulation with --tc-attach={} (forced; auto would fall back to the userspace path)",
                        shared.attach
                    )));
                }
                Err(error) => {
                    let reason = format!("kernel encapsulation unavailable: {error:#}");
                    tracing::warn!(%reason, "segmenting and encapsulating in userspace (slower)");
                    (None, Some(reason))
                }
            }
        } else {
            (
                None,
                Some("--tc-attach=off (or --kernel-encap=false)".to_owned()),
            )
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
            udp_gro: tun.offloads().uso4,
        };
        let mut plane = Plane {
            built: Built {
                tun_index: tun_link.index,
                tap_index: tap.as_ref().map(tap_encap::TapEncap::index),
                underlay_index: underlay.index,
                mtu: lease.mtu,
            },
            started: Instant::now(),
            tun,
            tap,
            userspace_reason,
            express_lane,
            stop,
            faults,
            threads: Vec::new(),
        };
        for queue in 0..plane.tun.queue_count() {
            let tap = match &plane.tap {
                Some(tap_encap) => Some(worker::TapQueue {
                    fd: tap_encap.queue(queue)?,
                    local_ip: lease.public_ip,
                    udp_tunnel_offload: tap_encap.udp_tunnel_offload(),
                }),
                None => None,
            };
            let transmit = worker::TransmitSetup {
                ctx: ctx.clone(),
                tun: plane.tun.clone_queue(queue)?,
                senders: shared.senders.clone(),
                tap,
            };
            let socket = match queue.checked_sub(shared.queues) {
                None => shared.receivers.get(queue),
                Some(express) => shared.express.get(express),
            };
            let receive = match socket {
                Some(receiver) => Some(worker::ReceiveSetup {
                    ctx: ctx.clone(),
                    tun: plane.tun.clone_queue(queue)?,
                    socket: receiver.clone(),
                }),
                None => None,
            };
            let stop = plane.stop.clone();
            let is_express = queue >= shared.queues;
            let name = if is_express {
                "weft-express".to_owned()
            } else {
                format!("weft-q{queue}")
            };
            let thread = std::thread::Builder::new().name(name).spawn(move || {
                let priority = is_express.then(express::Priority::raise).flatten();
                worker::run(stop, Some(transmit), receive, priority)
            });
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
    pub(super) async fn stop(mut self) -> anyhow::Result<(Tun, Option<tap_encap::TapEncap>)> {
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
    pub(super) fn info(&self, shared: &Shared) -> crate::metrics::DataplaneInfo {
        let vxlan = shared.encap.is_udp();
        let offloads = crate::metrics::ActiveOffloads {
            tun_csum: self.tun.offloads().csum,
            tun_tso4: self.tun.offloads().tso4,
            // Super-packets leave in UDP GSO sends when TUN hands them over and the kernel
            // does not encapsulate them whole.
            udp_segment: vxlan && self.tun.offloads().tso4 && self.tap.is_none(),
            udp_gro: vxlan
                && crate::metrics::ActiveOffloads::udp_gro_enabled(shared.receivers[0].as_fd()),
            kernel_encap: self.tap.is_some(),
            udp_tunnel_csum: self
                .tap
                .as_ref()
                .is_some_and(tap_encap::TapEncap::udp_tunnel_offload),
            express_lane: self.express_lane,
        };
        crate::metrics::DataplaneInfo {
            device: shared.name.clone(),
            bridge: BRIDGE.to_owned(),
            backend: shared.lease.netconf.backend.type_name(),
            vni: shared.encap.vni(),
            offloads,
            transmit_path: if self.tap.is_some() {
                "kernel_encap"
            } else {
                "userspace"
            },
            transmit_path_reason: self.userspace_reason.clone(),
            tc_attach: self.tap.as_ref().map(tap_encap::TapEncap::attach_kind),
        }
    }
}

/// The TUN device's address: the subnet's network address as a /32.
fn tun_address(subnet: Ipv4Net) -> Ipv4Net {
    Ipv4Net::new(subnet.network(), 32).expect("/32 is a valid prefix")
}

/// The reconcile's device checks (see [`repair`]).
pub(super) struct Repairer<'a> {
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

impl<'a> Repairer<'a> {
    pub(super) fn new(netlink: &'a Netlink, shared: &'a Shared, gateway: Ipv4Net) -> Self {
        Repairer {
            netlink,
            shared,
            gateway,
            underlay_missing_logged: false,
            pending: Vec::new(),
            tap_failure: None,
            last_failure: None,
        }
    }

    /// Observes the devices, repairs what [`repair::plan`] says, and keeps the plane and
    /// the route inputs pointing at the devices as they are now. Failures are logged
    /// and tried again at the next reconcile; they never end the data plane.
    pub(super) async fn check(&mut self, slot: &mut Option<Plane>, routes: &mut RouteInputs) {
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
            program_attached: match &plane.tap {
                Some(tap) => tap.attached(self.netlink).await,
                None => false,
            },
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
        let mut plane = Plane::start(self.netlink, self.shared, &underlay, false).await?;
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
            routes.on_link = super::underlay_subnets(self.netlink, underlay.index).await?;
        }
        let info = plane.info(self.shared);
        tracing::warn!(transmit_path = info.transmit_path, "data plane rebuilt");
        metrics.set_up(info);
        Ok(plane)
    }

    async fn check_bridge(&self) -> anyhow::Result<()> {
        let shared = self.shared;
        check_bridge(
            self.netlink,
            self.gateway,
            shared.lease.mtu,
            &shared.metrics,
        )
        .await
    }
}

/// Puts cni0 back (created, its MTU, up, its address) if anything about it changed.
pub(super) async fn check_bridge(
    netlink: &Netlink,
    gateway: Ipv4Net,
    mtu: u32,
    metrics: &Metrics,
) -> anyhow::Result<()> {
    let state = netlink.ensure_bridge(BRIDGE, gateway, mtu).await?;
    if state.created
        || state.mtu_changed
        || state.brought_up
        || state.added_address
        || !state.removed_addresses.is_empty()
    {
        metrics.count_repair(Repair::Bridge);
        tracing::warn!(?state, "repaired {BRIDGE}");
    }
    Ok(())
}
