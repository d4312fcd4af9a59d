//! `/metrics`: the node's counters in the Prometheus/OpenMetrics text format, encoded by
//! `prometheus-client`.
//!
//! The counters themselves stay plain atomics owned by the data plane ([`Metrics`]) and
//! the control plane ([`ControlStatus`]); a [`Collector`] reads them once per scrape, so
//! the hot path never sees the exporter.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `weft_packets_total`, `weft_bytes_total` | counter | `direction` = `tx` (TUN → peers) / `rx` (peers → TUN) |
//! | `weft_peer_packets_total`, `weft_peer_bytes_total` | counter | `peer` (subnet), `public_ip`, `direction` |
//! | `weft_syscalls_total` | counter | `direction` |
//! | `weft_worker_wakeups_total`, `weft_worker_polling_seconds_total` | counter | |
//! | `weft_reply_waits_total` | counter | `result` = `answered` / `expired` |
//! | `weft_drops_total` | counter | `reason` (one per [`DropReason`]) |
//! | `weft_tx_full_waits_total` | counter | |
//! | `weft_send_error_reports_total` | counter | `kind` (one per [`SendErrorReport`](crate::metrics::SendErrorReport)) |
//! | `weft_encap_errors_total`, `weft_decap_errors_total` | counter | |
//! | `weft_route_reconcile_fixes_total` | counter | |
//! | `weft_route_conflicts_total`, `weft_route_failures_total` | counter | |
//! | `weft_routes_conflicting` | gauge | |
//! | `weft_dataplane_repairs_total` | counter | `what` (one per [`Repair`](crate::metrics::Repair)) |
//! | `weft_peers_refused_total` | counter | `reason` (one per [`RefusalReason`](crate::metrics::RefusalReason)) |
//! | `weft_underlay_tx_errors_total`, `weft_underlay_tx_dropped_total` | counter | the underlay device's, sampled every 2 s |
//! | `weft_etcd_watch_restarts_total`, `weft_lease_renewals_total`, `weft_lease_losses_total`, `weft_lease_reacquisitions_total`, `weft_subnet_race_retries_total` | counter | |
//! | `weft_lease_held`, `weft_lease_expiry_timestamp_seconds` | gauge | |
//! | `weft_peers`, `weft_etcd_reachable`, `weft_ready`, `weft_dataplane_up` | gauge | |
//! | `weft_dataplane_transmit_path` | gauge (always 1, while up) | `path`, `tc_attach` |
//! | `weft_build_info` | gauge (always 1) | `version`, `backend` |

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::metrics::{DropReason, Metrics};
use crate::subnet::registry::EtcdHealth;
use crate::subnet::status::{ControlStatus, LeaseState, Readiness};

/// The content type of the text format `prometheus-client` writes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Drop reasons that mean "a packet could not be encapsulated and sent".
const ENCAP_ERRORS: [DropReason; 4] = [
    DropReason::TxMalformed,
    DropReason::TxSendError,
    DropReason::TxTooBig,
    DropReason::TxSocketFull,
];
/// Drop reasons that mean "a received packet could not be decapsulated and delivered".
const DECAP_ERRORS: [DropReason; 4] = [
    DropReason::RxMalformed,
    DropReason::RxWrongVni,
    DropReason::RxBadChecksum,
    DropReason::RxTunWrite,
];

/// Reads the node's counters at scrape time.
#[derive(Debug, Clone)]
pub struct NodeCollector {
    pub control: Arc<ControlStatus>,
    pub dataplane: Option<Arc<Metrics>>,
}

/// The whole `/metrics` page.
pub fn render(collector: NodeCollector) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(collector));
    let mut page = String::with_capacity(8 * 1024);
    prometheus_client::encoding::text::encode(&mut page, &registry)?;
    Ok(page)
}

fn counter(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, MetricType::Counter)?)
}

fn gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

/// One counter family with one label.
fn labelled_counters(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    label: &'static str,
    values: &[(&'static str, u64)],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value_label, value) in values {
        let labels = [(label, *value_label)];
        ConstCounter::new(*value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for NodeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let e = &mut encoder;
        let backend = self
            .dataplane
            .as_ref()
            .and_then(|m| m.dataplane().map(|d| d.backend))
            .unwrap_or("none");
        {
            let mut family = e.encode_descriptor(
                "weft_build_info",
                "weftd's version and active backend (always 1)",
                None,
                MetricType::Gauge,
            )?;
            let labels = [("version", env!("CARGO_PKG_VERSION")), ("backend", backend)];
            ConstGauge::new(1i64).encode(family.encode_family(&labels)?)?;
        }

        if let Some(m) = &self.dataplane {
            let s = m.snapshot();
            labelled_counters(
                e,
                "weft_packets",
                "Inner packets moved by the data plane (tx: TUN to peers, rx: peers to TUN)",
                "direction",
                &[("tx", s.tx_packets), ("rx", s.rx_packets)],
            )?;
            labelled_counters(
                e,
                "weft_bytes",
                "Inner IPv4 bytes moved by the data plane",
                "direction",
                &[("tx", s.tx_bytes), ("rx", s.rx_bytes)],
            )?;
            // Current peers only: the data plane drops a peer's series when its lease
            // goes (`Metrics::retain_peers`).
            let peers = m.peer_traffic();
            for (name, help, tx, rx) in [
                (
                    "weft_peer_packets",
                    "Inner packets sent to / received from each current peer",
                    peers.iter().map(|p| p.tx_packets).collect::<Vec<_>>(),
                    peers.iter().map(|p| p.rx_packets).collect::<Vec<_>>(),
                ),
                (
                    "weft_peer_bytes",
                    "Inner bytes sent to / received from each current peer",
                    peers.iter().map(|p| p.tx_bytes).collect(),
                    peers.iter().map(|p| p.rx_bytes).collect(),
                ),
            ] {
                let mut family = e.encode_descriptor(name, help, None, MetricType::Counter)?;
                for (i, peer) in peers.iter().enumerate() {
                    let subnet = peer.subnet.to_string();
                    let public_ip = peer.public_ip.to_string();
                    for (direction, value) in [("tx", tx[i]), ("rx", rx[i])] {
                        let labels = [
                            ("peer", subnet.as_str()),
                            ("public_ip", public_ip.as_str()),
                            ("direction", direction),
                        ];
                        ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
                    }
                }
            }
            labelled_counters(
                e,
                "weft_syscalls",
                "Underlay send/receive syscalls (batching: packets per syscall)",
                "direction",
                &[("tx", s.tx_syscalls), ("rx", s.rx_syscalls)],
            )?;
            counter(
                e,
                "weft_tun_writes",
                "Writes to the TUN device: received packets per write shows how much was coalesced",
                s.tun_writes,
            )?;
            counter(
                e,
                "weft_tx_full_waits",
                "Underlay sends that found the socket buffer or the device queue full and waited for room",
                s.tx_full_waits,
            )?;
            labelled_counters(
                e,
                "weft_send_error_reports",
                "Errors the kernel reported for sent packets (the sending sockets' error queues), per kind",
                "kind",
                &s.send_error_reports,
            )?;
            counter(
                e,
                "weft_worker_wakeups",
                "Times a data-plane worker slept and was woken by a packet (each costs latency; see --busy-poll)",
                s.worker_wakeups,
            )?;
            labelled_counters(
                e,
                "weft_reply_waits",
                "Waits for the reply to a request a worker woke up to send, by how they ended (each expired wait halves the next)",
                "result",
                &[
                    ("answered", s.reply_waits_answered),
                    ("expired", s.reply_waits_expired),
                ],
            )?;
            ConstCounter::new(s.worker_polling_ns as f64 / 1e9).encode(e.encode_descriptor(
                "weft_worker_polling_seconds",
                "Time data-plane workers spent polling for packets instead of sleeping (each round yields the CPU)",
                None,
                MetricType::Counter,
            )?)?;
            labelled_counters(
                e,
                "weft_drops",
                "Packets not forwarded, per reason",
                "reason",
                &s.drops,
            )?;
            counter(
                e,
                "weft_encap_errors",
                "Packets from pods that could not be encapsulated or sent (tx_malformed + tx_send_error + tx_too_big + tx_socket_full)",
                ENCAP_ERRORS.iter().map(|r| m.drops(*r)).sum(),
            )?;
            counter(
                e,
                "weft_decap_errors",
                "Received packets that could not be decapsulated or delivered (rx_malformed + rx_wrong_vni + rx_bad_checksum + rx_tun_write)",
                DECAP_ERRORS.iter().map(|r| m.drops(*r)).sum(),
            )?;
            counter(
                e,
                "weft_underlay_tx_errors",
                "The underlay device's transmit errors as the kernel counts them (packets it could not send after weft handed them over)",
                s.underlay_tx_errors,
            )?;
            counter(
                e,
                "weft_underlay_tx_dropped",
                "The underlay device's transmit drops as the kernel counts them",
                s.underlay_tx_dropped,
            )?;
            counter(
                e,
                "weft_route_reconcile_fixes",
                "Routes the periodic reconcile had to add, replace or remove",
                s.route_reconcile_fixes,
            )?;
            counter(
                e,
                "weft_route_conflicts",
                "Peer subnets found held by a route weft did not install (left alone; counted once per conflict)",
                s.route_conflicts_total,
            )?;
            gauge(
                e,
                "weft_routes_conflicting",
                "Peer subnets another route holds now",
                i64::try_from(s.route_conflicts.len()).unwrap_or(i64::MAX),
            )?;
            counter(
                e,
                "weft_route_failures",
                "Route changes the kernel refused (every attempt; the other changes of the pass go on)",
                s.route_failures_total,
            )?;
            labelled_counters(
                e,
                "weft_dataplane_repairs",
                "Parts of the data plane the reconcile found missing or altered and put back",
                "what",
                &s.repairs,
            )?;
            labelled_counters(
                e,
                "weft_peers_refused",
                "Peer leases given no route (host-gw: PublicIP not on the underlay's subnet; another backend), each counted once",
                "reason",
                &s.peers_refused,
            )?;
            gauge(
                e,
                "weft_dataplane_up",
                "1 while the data plane's devices, sockets and workers are up",
                i64::from(m.dataplane().is_some()),
            )?;
            if let Some(info) = m.dataplane() {
                let mut family = e.encode_descriptor(
                    "weft_dataplane_transmit_path",
                    "How packets leave while the data plane is up (always 1): path = kernel_encap, userspace or routed; tc_attach = tcx, tc or none",
                    None,
                    MetricType::Gauge,
                )?;
                let labels = [
                    ("path", info.transmit_path),
                    ("tc_attach", info.tc_attach.unwrap_or("none")),
                ];
                ConstGauge::new(1i64).encode(family.encode_family(&labels)?)?;
            }
        }

        let c = &self.control.counters;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        counter(
            e,
            "weft_etcd_watch_restarts",
            "etcd watch streams that ended and were re-listed",
            load(&c.watch_restarts),
        )?;
        counter(
            e,
            "weft_lease_renewals",
            "Successful lease keep-alives",
            load(&c.lease_renewals),
        )?;
        counter(
            e,
            "weft_lease_losses",
            "Leases found lost (expired, revoked, deleted)",
            load(&c.lease_losses),
        )?;
        counter(
            e,
            "weft_lease_reacquisitions",
            "Lost leases taken again",
            load(&c.lease_reacquisitions),
        )?;
        counter(
            e,
            "weft_subnet_race_retries",
            "Subnet acquisitions that lost a race and were retried",
            load(&c.race_retries),
        )?;

        let lease = self.control.lease();
        gauge(
            e,
            "weft_lease_held",
            "1 when this node holds its subnet lease",
            i64::from(matches!(lease, LeaseState::Held { .. })),
        )?;
        if let LeaseState::Held {
            expires_unix: Some(expires),
            ..
        } = lease
        {
            gauge(
                e,
                "weft_lease_expiry_timestamp_seconds",
                "When the lease expires unless renewed (Unix time, as of the last keep-alive)",
                i64::try_from(expires).unwrap_or(i64::MAX),
            )?;
        }
        gauge(
            e,
            "weft_peers",
            "Other nodes' leases known to this node",
            i64::try_from(self.control.peers().len()).unwrap_or(i64::MAX),
        )?;
        gauge(
            e,
            "weft_etcd_reachable",
            "1 when the last etcd request succeeded",
            i64::from(matches!(self.control.etcd(), EtcdHealth::Reachable)),
        )?;
        gauge(
            e,
            "weft_ready",
            "1 when the control plane is ready (lease held, etcd reachable or within grace)",
            i64::from(self.control.readiness() == Readiness::Ready),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::sync::atomic::Ordering;

    use super::*;

    /// Every sample line is `name{labels} value` or `name value`; every family has
    /// HELP and TYPE.
    fn samples(page: &str) -> Vec<(String, f64)> {
        let mut typed = std::collections::HashSet::new();
        let mut helped = std::collections::HashSet::new();
        let mut out = Vec::new();
        for line in page.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                typed.insert(rest.split(' ').next().unwrap().to_owned());
            } else if let Some(rest) = line.strip_prefix("# HELP ") {
                helped.insert(rest.split(' ').next().unwrap().to_owned());
            } else if !line.starts_with('#') {
                let (name, value) = line.rsplit_once(' ').expect(line);
                let family = name.split('{').next().unwrap();
                let base = family.strip_suffix("_total").unwrap_or(family);
                assert!(typed.contains(base), "no TYPE for {line}");
                assert!(helped.contains(base), "no HELP for {line}");
                out.push((name.to_owned(), value.parse().expect(line)));
            }
        }
        out
    }

    #[test]
    fn page_has_every_family_and_counts() {
        let control = ControlStatus::new();
        control.set_lease(LeaseState::Held {
            subnet: "10.244.3.0/24".parse().unwrap(),
            public_ip: Ipv4Addr::new(192, 0, 2, 3),
            reservation: false,
            lease_id: 1,
            expires_unix: Some(1_900_000_000),
        });
        let metrics = Arc::new(Metrics::default());
        metrics.tx.add(3, 300);
        let peer = crate::lease::Peer {
            subnet: "10.244.4.0/24".parse().unwrap(),
            public_ip: Ipv4Addr::new(192, 0, 2, 4),
            backend: crate::lease::PeerBackend::Ipip,
        };
        control.set_peers(std::iter::once(&crate::lease::PeerLease::from(&peer)));
        metrics
            .peer_stats(peer.subnet, peer.public_ip)
            .rx
            .0
            .add(2, 168);
        // A peer that is gone is not exported.
        metrics.peer_stats(
            "10.244.9.0/24".parse().unwrap(),
            Ipv4Addr::new(192, 0, 2, 9),
        );
        metrics.retain_peers([(peer.subnet, peer.public_ip)]);
        metrics.drop_packet(DropReason::RxWrongVni);
        metrics.underlay_tx_errors.store(7, Ordering::Relaxed);
        let page = render(NodeCollector {
            control,
            dataplane: Some(metrics),
        })
        .unwrap();
        let samples = samples(&page);
        let value = |name: &str| {
            samples
                .iter()
                .find(|(n, _)| n == name)
                .unwrap_or_else(|| panic!("{name} missing in\n{page}"))
                .1
        };
        assert_eq!(value("weft_packets_total{direction=\"tx\"}"), 3.0);
        assert_eq!(value("weft_bytes_total{direction=\"tx\"}"), 300.0);
        assert_eq!(value("weft_drops_total{reason=\"rx_wrong_vni\"}"), 1.0);
        assert_eq!(value("weft_decap_errors_total"), 1.0);
        assert_eq!(value("weft_underlay_tx_errors_total"), 7.0);
        assert_eq!(value("weft_underlay_tx_dropped_total"), 0.0);
        assert_eq!(
            value(
                "weft_peer_packets_total{peer=\"10.244.4.0/24\",public_ip=\"192.0.2.4\",direction=\"rx\"}"
            ),
            2.0
        );
        assert_eq!(
            value(
                "weft_peer_bytes_total{peer=\"10.244.4.0/24\",public_ip=\"192.0.2.4\",direction=\"tx\"}"
            ),
            0.0
        );
        assert!(!page.contains("10.244.9.0/24"), "{page}");
        assert_eq!(value("weft_lease_held"), 1.0);
        assert_eq!(value("weft_lease_expiry_timestamp_seconds"), 1.9e9);
        assert_eq!(value("weft_ready"), 1.0);
        assert!(page.contains("weft_build_info{version=\""), "{page}");
        assert!(page.ends_with("# EOF\n"), "{page}");
    }
}
