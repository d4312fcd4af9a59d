//! The node's HTTP endpoint on `--healthz-addr`: `/healthz` (the process answers),
//! `/readyz` (a lease is held and etcd answers, or has been away less than a grace
//! period), `/v1/status` (JSON: lease, peers, etcd, counters).

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

use crate::metrics::{Metrics, MetricsSnapshot};
use crate::subnet::registry::EtcdHealth;
use crate::subnet::status::{ControlStatus, LeaseState, PeerView, Readiness};

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
    pub etcd: EtcdReport,
    pub peers: Vec<PeerView>,
    pub counters: CountersReport,
    /// Data-plane counters (packets, bytes, drops per reason).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dataplane: Option<MetricsSnapshot>,
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
    pub fn new(sources: &HealthSources) -> Self {
        let mut report = StatusReport::from_status(&sources.control);
        report.dataplane = sources.dataplane.as_ref().map(|m| m.snapshot());
        report
    }

    pub fn from_status(status: &ControlStatus) -> Self {
        let readiness = status.readiness();
        let etcd = match status.etcd() {
            EtcdHealth::Unknown => EtcdReport {
                state: "unknown",
                unreachable_secs: None,
                error: None,
            },
            EtcdHealth::Reachable => EtcdReport {
                state: "reachable",
                unreachable_secs: None,
                error: None,
            },
            EtcdHealth::Unreachable { for_, error } => EtcdReport {
                state: "unreachable",
                unreachable_secs: Some(for_.as_secs()),
                error: Some(error),
            },
        };
        let c = &status.counters;
        StatusReport {
            ready: readiness == Readiness::Ready,
            not_ready_reason: match readiness {
                Readiness::Ready => None,
                Readiness::NotReady(reason) => Some(reason),
            },
            lease: status.lease(),
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
        }
    }
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
pub fn respond(sources: &HealthSources, method: &Method, path: &str) -> Response<Full<Bytes>> {
    let status = &sources.control;
    if method != Method::GET && method != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    match path {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => match status.readiness() {
            Readiness::Ready => text(StatusCode::OK, "ready\n"),
            Readiness::NotReady(reason) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {reason}\n"),
            ),
        },
        "/v1/status" => {
            let report = StatusReport::new(sources);
            // Plain data (strings, numbers, addresses) always serializes.
            let json = serde_json::to_string_pretty(&report).unwrap_or_default();
            let mut response = text(StatusCode::OK, json + "\n");
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/json"),
            );
            response
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /healthz, /readyz, /v1/status\n",
        ),
    }
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
                let response = respond(&sources, request.method(), request.uri().path());
                async move { Ok::<_, Infallible>(response) }
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

    #[test]
    fn readyz_flips_with_the_lease() {
        let status = ControlStatus::new();
        let sources = HealthSources {
            control: status.clone(),
            dataplane: Some(Arc::new(Metrics::default())),
        };
        let status = &sources;
        let get = Method::GET;
        assert_eq!(respond(&status, &get, "/healthz").status(), StatusCode::OK);
        assert_eq!(
            respond(&status, &get, "/readyz").status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        status.control.set_lease(LeaseState::Held {
            subnet: "10.244.3.0/24".parse().unwrap(),
            public_ip: Ipv4Addr::new(192, 0, 2, 3),
            reservation: false,
            lease_id: 1,
            expires_unix: None,
        });
        assert_eq!(respond(&status, &get, "/readyz").status(), StatusCode::OK);
        assert_eq!(
            respond(&status, &get, "/nope").status(),
            StatusCode::NOT_FOUND
        );
        let report = serde_json::to_value(StatusReport::new(status)).unwrap();
        assert_eq!(report["lease"]["state"], "held");
        assert_eq!(report["lease"]["subnet"], "10.244.3.0/24");
        assert_eq!(report["ready"], true);
        assert_eq!(report["dataplane"]["tx_packets"], 0);
    }
}
