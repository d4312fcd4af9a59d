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
use crate::metrics::Metrics;
use crate::netlink::{bridge, Netlink, Route};
use peers::{compatible, Encap, PeerTable};
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

    // The TUN VTEP: persistent, so it (and its routes) survive a restart.
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
    let tun =
        Tun::open(&name, queues, wanted).with_context(|| format!("opening TUN device {name}"))?;
    if tun.offloads() == wanted {
        tracing::info!(device = %name, offloads = ?tun.offloads(), "TUN offloads: TSO super-packets are segmented in userspace");
    } else {
        tracing::warn!(device = %name, ?wanted, active = ?tun.offloads(), "this kernel refuses some TUN offloads; using the slower path");
    }
    let tun_link = netlink.ensure_link_up(&name, Some(lease.mtu)).await?;
    // Like flannel's `.0/32` on flannel.<VNI>: traffic this host originates towards
    // other nodes' pods gets a source inside our subnet, which peers accept.
    netlink
        .ensure_address(tun_link.index, Ipv4Net::new(lease.subnet.network(), 32)?)
        .await?;

    let underlay = netlink.require_link(&lease.underlay_iface).await?;
    let underlay_net = netlink
        .addresses(underlay.index)
        .await?
        .into_iter()
        .find(|net| net.addr() == lease.public_ip)
        .map(|net| net.trunc());

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
    let socket = receivers[0].clone();
    // Super-packets leave whole through the kernel's encapsulation where this host
    // allows it (see `tap_encap`), else segmented here.
    let tap_encap = if settings.kernel_encap {
        match tap_encap::setup(
            &netlink,
            &encap,
            underlay.index,
            lease.mtu + tap_encap::outer_len(&encap) as u32,
            queues,
        )
        .await
        {
            Ok(tap_encap) => {
                tracing::info!(
                    device = tap_encap::DEVICE,
                    "the kernel adds the outer headers (tc program): one underlay packet per 64 KB"
                );
                Some(tap_encap)
            }
            Err(error) => {
                tracing::warn!(error = %format!("{error:#}"), "kernel encapsulation unavailable; segmenting and encapsulating in userspace (slower)");
                None
            }
        }
    } else {
        None
    };
    // VXLAN sends from a few ephemeral ports chosen by inner flow (see
    // `worker::pick_sender`); IPIP from a raw socket of its own (everything, or what
    // the TAP cannot take), not a receiving one: see `io::ipip_send_socket`.
    let senders: Vec<OwnedFd> = match encap {
        Encap::Vxlan { .. } => (0..FLOW_SOCKETS)
            .map(|_| io::vxlan_send_socket())
            .collect::<Result<_, _>>()
            .context("opening the VXLAN sending sockets")?,
        Encap::Ipip => vec![io::ipip_send_socket().context("opening the IPIP sending socket")?],
    };
    let senders = Arc::new(senders);

    let table = Arc::new(ArcSwap::from_pointee(PeerTable::empty(subnet_len)));
    let stop = Arc::new(io::StopSignal::new().context("creating the stop eventfd")?);
    let ctx = WorkerContext {
        encap,
        own_subnet: lease.subnet,
        peers: table.clone(),
        metrics: metrics.clone(),
        stop: stop.clone(),
        mtu: lease.mtu as usize,
        busy_poll: settings.busy_poll,
    };
    let mut threads = Vec::new();
    for queue in 0..tun.queue_count() {
        let tap = match &tap_encap {
            Some(tap_encap) => Some(worker::TapQueue {
                fd: tap_encap.queue(queue)?,
                local_ip: lease.public_ip,
            }),
            None => None,
        };
        let transmit = worker::TransmitSetup {
            ctx: ctx.clone(),
            tun: tun.clone_queue(queue)?,
            senders: senders.clone(),
            tap,
        };
        let receive = match receivers.get(queue) {
            Some(receiver) => Some((ctx.clone(), tun.clone_queue(queue)?, receiver.clone())),
            None => None,
        };
        let stop = stop.clone();
        threads.push(
            std::thread::Builder::new()
                .name(format!("weft-q{queue}"))
                .spawn(move || worker::run(stop, Some(transmit), receive))?,
        );
    }

    if settings.ip_masq {
        crate::masq::install(lease.netconf.network, lease.subnet)
            .context("installing the masquerade rules")?;
    }
    let vxlan = matches!(encap, Encap::Vxlan { .. });
    let offloads = crate::metrics::ActiveOffloads {
        tun_csum: tun.offloads().csum,
        tun_tso4: tun.offloads().tso4,
        // Super-packets leave in UDP GSO sends when TUN hands them over and the kernel
        // does not encapsulate them whole.
        udp_segment: vxlan && tun.offloads().tso4 && tap_encap.is_none(),
        udp_gro: vxlan && crate::metrics::ActiveOffloads::udp_gro_enabled(socket.as_fd()),
        kernel_encap: tap_encap.is_some(),
    };
    metrics.set_up(crate::metrics::DataplaneInfo {
        device: name.clone(),
        bridge: BRIDGE.to_owned(),
        backend: lease.netconf.backend.type_name(),
        vni: match encap {
            Encap::Vxlan { vni, .. } => Some(vni),
            Encap::Ipip => None,
        },
        offloads,
    });
    tracing::info!(
        device = %name, subnet = %lease.subnet, public_ip = %lease.public_ip,
        mtu = lease.mtu, ?offloads, "data plane up"
    );

    let state = RouteInputs {
        own_subnet: lease.subnet,
        encap,
        direct_routing,
        underlay_net,
        tun_index: tun_link.index,
        underlay_index: underlay.index,
    };
    let mut peers: BTreeMap<Ipv4Net, Peer> = BTreeMap::new();
    let mut reconcile = tokio::time::interval(RECONCILE_PERIOD);
    reconcile.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let result = loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(event) => {
                    apply_event(&mut peers, event, &lease.subnet);
                    // A burst of events (a watch catching up, many nodes joining) is
                    // applied as one: one table swap and one route reconcile.
                    while let Ok(event) = events.try_recv() {
                        apply_event(&mut peers, event, &lease.subnet);
                    }
                    let (routes, table_input) = state.desired(&peers);
                    table.store(Arc::new(PeerTable::build(subnet_len, &encap, table_input)));
                    if let Err(error) = sync_routes(&netlink, &routes).await {
                        tracing::warn!(error = %format!("{error:#}"), "route update failed; retrying at the next reconcile");
                    }
                }
                None => break Ok(()),
            },
            _ = reconcile.tick() => {
                let (routes, _) = state.desired(&peers);
                match sync_routes(&netlink, &routes).await {
                    Ok(fixes) => {
                        metrics.route_reconcile_fixes.fetch_add(fixes as u64, std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(error) => tracing::warn!(error = %format!("{error:#}"), "route reconcile failed"),
                }
                sample_underlay_stats(&netlink, &lease.underlay_iface, &metrics).await;
                worker::drain_send_error_queues(&senders, &metrics);
            }
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    break Ok(());
                }
            }
        }
    };

    metrics.set_down();
    stop.raise();
    let joined = tokio::task::spawn_blocking(move || {
        for thread in threads {
            match thread.join() {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::warn!(%error, "worker ended with an error"),
                Err(_) => tracing::error!("worker panicked"),
            }
        }
    });
    joined.await.context("joining workers")?;

    if settings.ip_masq {
        if let Err(error) = crate::masq::remove() {
            tracing::warn!(%error, "removing the masquerade rules");
        }
    }
    if settings.cleanup_on_exit {
        sync_routes(&netlink, &[]).await?;
        tun.set_transient()?;
        drop(tun);
        netlink.delete_link(tun_link.index).await?;
        // The TAP and its program go with the last descriptor.
        drop(tap_encap);
        tracing::info!(device = %name, "removed TUN device and routes (--cleanup-on-exit)");
    }
    result
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

/// Applies the route plan; returns how many changes it made.
async fn sync_routes(netlink: &Netlink, desired: &[Route]) -> anyhow::Result<usize> {
    let changes = netlink.reconcile_routes(desired).await?;
    for change in &changes {
        tracing::info!(?change, "route");
    }
    Ok(changes.len())
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
