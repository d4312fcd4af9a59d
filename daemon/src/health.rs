//! The node's HTTP endpoint on `--healthz-addr`:
//!
//! * `/healthz`: the process answers;
//! * `/readyz`: a lease is held, etcd answers (or has been away less than the grace
//!   period), and the data plane is in place: it is up, and the bridge, the TUN device
//!   and a route for every compatible peer exist in the kernel (checked over netlink on
//!   each request, so a device someone deleted shows at once), except for subnets
//!   another route holds (a route conflict, reported in `/v1/status`);
//! * `/metrics`: Prometheus/OpenMetrics text ([`crate::metrics_export`]);
//! * `/v1/status`: JSON: readiness, lease, etcd, peers, devices and active offloads,
//!   counters, and `degraded` while the data plane runs from the last known state
//!   (etcd unreachable since start; `/readyz` then answers 503, `/healthz` 200).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::metrics::{DataplaneInfo, Metrics, MetricsSnapshot, PeerTraffic};
use crate::subnet::registry::EtcdHealth;
use crate::subnet::status::{ControlStatus, Degraded, LeaseState, PeerView, Readiness};
use weft_netlink::Netlink;

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on --healthz-addr {addr}: {source}")]
pub struct BindError {
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// Binds the listener (done first, so a taken port is a start-up error).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { addr, source })
}

/// `/v1/status` body.
#[derive(Debug, Serialize)]
pub struct StatusReport {
    pub ready: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_ready_reason: Option<String>,
    pub lease: LeaseState,
    /// Present while the data plane runs from the last known state (etcd unreachable
    /// since start): the subnet and the time of the peer set it runs with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub degraded: Option<Degraded>,
    pub etcd: EtcdReport,
    pub peers: Vec<PeerView>,
    pub counters: CountersReport,
    /// Data-plane counters (packets, bytes, drops per reason).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dataplane: Option<MetricsSnapshot>,
    /// Traffic per peer (current peers only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub peer_traffic: Vec<PeerTraffic>,
    /// The data plane's devices and active offload path, once it is up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub devices: Option<DataplaneInfo>,
}

/// What the endpoint reports on: the control plane's status and the data plane's
/// counters.
#[derive(Debug, Clone)]
pub struct HealthSources {
    pub control: Arc<ControlStatus>,
    pub dataplane: Option<Arc<Metrics>>,
}

#[derive(Debug, Serialize)]
pub struct EtcdReport {
    pub state: &'static str,
    /// How weftd reaches etcd (endpoints, prefix, TLS file paths, user name).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub client: Option<crate::subnet::status::EtcdClientView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unreachable_secs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct CountersReport {
    pub race_retries: u64,
    pub watch_restarts: u64,
    pub lease_renewals: u64,
    pub lease_losses: u64,
    pub lease_reacquisitions: u64,
    pub peer_events: u64,
}

impl StatusReport {
    /// The report without the data plane's kernel checks (see [`StatusReport::collect`]).
    pub fn new(sources: &HealthSources) -> Self {
        let mut report = StatusReport::from_status(&sources.control);
        report.dataplane = sources.dataplane.as_ref().map(|m| m.snapshot());
        report.devices = sources.dataplane.as_ref().and_then(|m| m.dataplane());
        if let Some(m) = &sources.dataplane {
            // The data plane drops a peer's series when its lease goes
            // (`Metrics::retain_peers`), so these are the current peers'.
            report.peer_traffic = m.peer_traffic();
        }
        report
    }

    /// The full report: readiness includes [`readiness`]'s data-plane checks.
    pub async fn collect(sources: &HealthSources) -> Self {
        let mut report = StatusReport::new(sources);
        if let Readiness::NotReady(reason) = readiness(sources).await {
            report.ready = false;
            report.not_ready_reason = Some(reason);
        }
        report
    }

    pub fn from_status(status: &ControlStatus) -> Self {
        let readiness = status.readiness();
        let etcd = match status.etcd() {
            EtcdHealth::Unknown => EtcdReport {
                state: "unknown",
                client: None,
                unreachable_secs: None,
                error: None,
            },
            EtcdHealth::Reachable => EtcdReport {
                state: "reachable",
                client: None,
                unreachable_secs: None,
                error: None,
            },
            EtcdHealth::Unreachable { for_, error } => EtcdReport {
                state: "unreachable",
                client: None,
                unreachable_secs: Some(for_.as_secs()),
                error: Some(error),
            },
        };
        let etcd = EtcdReport {
            client: status.etcd_client(),
            ..etcd
        };
        let c = &status.counters;
        StatusReport {
            ready: readiness == Readiness::Ready,
            not_ready_reason: match readiness {
                Readiness::Ready => None,
                Readiness::NotReady(reason) => Some(reason),
            },
            lease: status.lease(),
            degraded: status.degraded(),
            etcd,
            peers: status.peers(),
            counters: CountersReport {
                race_retries: c.race_retries.load(Ordering::Relaxed),
                watch_restarts: c.watch_restarts.load(Ordering::Relaxed),
                lease_renewals: c.lease_renewals.load(Ordering::Relaxed),
                lease_losses: c.lease_losses.load(Ordering::Relaxed),
                lease_reacquisitions: c.lease_reacquisitions.load(Ordering::Relaxed),
                peer_events: c.peer_events.load(Ordering::Relaxed),
            },
            dataplane: None,
            peer_traffic: Vec::new(),
            devices: None,
        }
    }
}

/// What `/readyz` answers: the control plane's readiness, then the data plane's.
pub async fn readiness(sources: &HealthSources) -> Readiness {
    match sources.control.readiness() {
        Readiness::Ready => {}
        not_ready => return not_ready,
    }
    match dataplane_in_place(sources).await {
        Ok(()) => Readiness::Ready,
        Err(reason) => Readiness::NotReady(reason),
    }
}

/// The data plane is up and its devices and peer routes exist in the kernel.
async fn dataplane_in_place(sources: &HealthSources) -> Result<(), String> {
    let Some(metrics) = &sources.dataplane else {
        // An endpoint without a data plane (control-plane tests) reports on the rest.
        return Ok(());
    };
    let info = metrics
        .dataplane()
        .ok_or_else(|| "the data plane is not up yet".to_owned())?;
    let netlink = Netlink::connect().map_err(|e| e.to_string())?;
    for name in [&info.bridge, &info.device] {
        match netlink.link(name).await {
            Ok(Some(link)) if link.up => {}
            Ok(Some(_)) => return Err(format!("device {name} is down")),
            Ok(None) => return Err(format!("device {name} is missing")),
            Err(e) => return Err(e.to_string()),
        }
    }
    let own = match sources.control.lease() {
        LeaseState::Held { subnet, .. } => Some(subnet),
        _ => sources.control.degraded().map(|d| d.subnet),
    };
    let routes = netlink.weft_routes().await.map_err(|e| e.to_string())?;
    // A subnet another route holds has no weft route on purpose: that is reported
    // (`route_conflicts`), not a data plane that is not in place.
    let conflicts = metrics.route_conflicts();
    // A peer the backend refuses has no route on purpose (logged and counted).
    let refused = metrics.refused_peers();
    for peer in sources.control.peers() {
        let compatible = peer.backend == info.backend && peer.vni == info.vni;
        // The data plane routes IPv4 peers only (it refuses the others, logged).
        let ipnet::IpNet::V4(subnet) = peer.subnet else {
            continue;
        };
        if !compatible || Some(subnet) == own {
            continue;
        }
        let dst = ipnet::IpNet::V4(subnet);
        if refused.contains(&subnet) || conflicts.iter().any(|c| c.prefix == dst) {
            continue;
        }
        if !routes.iter().any(|route| route.dst == dst) {
            return Err(format!(
                "no route to {} (peer {}) yet",
                peer.subnet, peer.public_ip
            ));
        }
    }
    Ok(())
}

fn text(code: StatusCode, body: impl Into<String>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.into())));
    *response.status_mut() = code;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Answers one request (exposed for tests).
pub async fn respond(
    sources: &HealthSources,
    method: &Method,
    path: &str,
) -> Response<Full<Bytes>> {
    if method != Method::GET && method != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    match path {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => match readiness(sources).await {
            Readiness::Ready => text(StatusCode::OK, "ready\n"),
            Readiness::NotReady(reason) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {reason}\n"),
            ),
        },
        "/metrics" => {
            let collector = crate::metrics_export::NodeCollector {
                control: sources.control.clone(),
                dataplane: sources.dataplane.clone(),
            };
            match crate::metrics_export::render(collector) {
                Ok(page) => with_type(
                    text(StatusCode::OK, page),
                    crate::metrics_export::CONTENT_TYPE,
                ),
                Err(_) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "cannot encode the metrics\n",
                ),
            }
        }
        "/v1/status" => {
            let report = StatusReport::collect(sources).await;
            // Plain data (strings, numbers, addresses) always serializes.
            let json = serde_json::to_string_pretty(&report).unwrap_or_default();
            with_type(text(StatusCode::OK, json + "\n"), "application/json")
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /healthz, /readyz, /metrics, /v1/status\n",
        ),
    }
}

fn with_type(
    mut response: Response<Full<Bytes>>,
    content_type: &'static str,
) -> Response<Full<Bytes>> {
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}

/// Serves until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    sources: HealthSources,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() { return; }
                continue;
            }
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "health endpoint: accept failed");
                continue;
            }
        };
        let sources = sources.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let sources = sources.clone();
                async move {
                    let response = respond(&sources, request.method(), request.uri().path()).await;
                    Ok::<_, Infallible>(response)
                }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "health endpoint: connection error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[tokio::test]
    async fn readyz_flips_with_the_lease() {
        let status = ControlStatus::new();
        let sources = HealthSources {
            control: status.clone(),
            dataplane: None,
        };
        let status = &sources;
        let get = Method::GET;
        assert_eq!(
            respond(status, &get, "/healthz").await.status(),
            StatusCode::OK
        );
        assert_eq!(
            respond(status, &get, "/readyz").await.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        status.control.set_lease(LeaseState::Held {
            subnet: "10.244.3.0/24".parse().unwrap(),
            public_ip: Ipv4Addr::new(192, 0, 2, 3),
            reservation: false,
            lease_id: 1,
            expires_unix: None,
        });
        assert_eq!(
            respond(status, &get, "/readyz").await.status(),
            StatusCode::OK
        );
        assert_eq!(
            respond(status, &get, "/nope").await.status(),
            StatusCode::NOT_FOUND
        );
        let report = serde_json::to_value(StatusReport::new(status)).unwrap();
        assert_eq!(report["lease"]["state"], "held");
        assert_eq!(report["lease"]["subnet"], "10.244.3.0/24");
        assert_eq!(report["ready"], true);
        assert!(report.get("dataplane").is_none());

        // With a data plane that is not up yet, the lease alone is not enough.
        let with_dataplane = HealthSources {
            control: status.control.clone(),
            dataplane: Some(Arc::new(Metrics::default())),
        };
        let response = respond(&with_dataplane, &get, "/readyz").await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let metrics = respond(&with_dataplane, &get, "/metrics").await;
        assert_eq!(metrics.status(), StatusCode::OK);
        let report = serde_json::to_value(StatusReport::new(&with_dataplane)).unwrap();
        assert_eq!(report["dataplane"]["tx_packets"], 0);
    }
}
