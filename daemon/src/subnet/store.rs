//! The seam between the lease life cycle and wherever leases live: [`SubnetStore`].
//!
//! The life cycle ([`super::machine`]) and its shell ([`super::manager`]) only ever
//! talk to a store through this trait; etcd ([`super::registry::Registry`]) is one
//! implementation, and all `etcd_client` types stay inside it. Another control plane
//! (Kubernetes `Node.spec.podCIDR`, a file for tests) would be one more implementation,
//! with no change to the machine or the data plane.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use weft_proto::lease::LeaseAttrs;

/// A store's handle on the TTL a lease key hangs on (etcd: the lease id). 0 means none:
/// the key is a reservation and never expires.
pub type LeaseId = i64;

/// A store request failed.
#[derive(Debug)]
pub struct StoreError {
    /// Retrying cannot fix it (bad credentials, bad TLS files, bad endpoints), as
    /// opposed to the store being unreachable for now.
    pub permanent: bool,
    inner: Box<dyn std::error::Error + Send + Sync>,
}

impl StoreError {
    pub fn new(
        permanent: bool,
        inner: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        StoreError {
            permanent,
            inner: inner.into(),
        }
    }
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner.source()
    }
}

/// One lease as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredLease {
    pub subnet: Ipv4Net,
    pub attrs: LeaseAttrs,
    /// The TTL handle the key hangs on; 0 for a reservation (no TTL).
    pub lease_id: LeaseId,
    /// The store's version of the key, for compare-and-swap writes.
    pub mod_revision: i64,
}

impl StoredLease {
    pub fn is_reservation(&self) -> bool {
        self.lease_id == 0
    }
}

/// What a lease key is written with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding {
    /// No TTL: a reservation.
    Reservation,
    /// A new TTL handle of this length.
    Fresh(Duration),
    /// The handle the key has now.
    Keep(LeaseId),
}

/// The outcome of an exclusive create.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// The key is ours, on this TTL handle.
    Won { lease_id: LeaseId },
    /// Someone holds the key already (it may have been created a moment ago); the
    /// store released the TTL handle it had taken for the attempt.
    Lost { holder: Option<StoredLease> },
}

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq)]
pub enum LeaseChange {
    /// Written; `attrs` is `None` when the value does not parse (the key then counts
    /// as gone).
    Put {
        subnet: Ipv4Net,
        attrs: Option<LeaseAttrs>,
    },
    Deleted(Ipv4Net),
}

/// Where leases live. Every request is bounded in time by the implementation (a dead
/// store must not hang the node) and records whether the store answered
/// ([`SubnetStore::reachability`]).
pub trait SubnetStore: Send + Sync + 'static {
    type Watch: LeaseWatch;

    /// Where the network config lives, for messages (etcd: `<prefix>/config`).
    fn config_location(&self) -> String;
    /// Where the leases live, for messages (etcd: `<prefix>/subnets/`).
    fn leases_location(&self) -> String;
    /// Whether the store answered lately, shared with the health endpoint.
    fn reachability(&self) -> Arc<Reachability>;

    /// The network config's JSON text; `None` while it does not exist.
    fn read_config(&self) -> impl Future<Output = Result<Option<String>, StoreError>> + Send;
    /// Every lease (skipping records that do not parse) and the revision of the list.
    fn list_leases(
        &self,
    ) -> impl Future<Output = Result<(Vec<StoredLease>, i64), StoreError>> + Send;
    /// One lease; `None` when absent.
    fn get_lease(
        &self,
        subnet: Ipv4Net,
    ) -> impl Future<Output = Result<Option<StoredLease>, StoreError>> + Send;
    /// Creates `subnet`'s key only if it does not exist, with a TTL handle of `ttl`
    /// (`None`: no TTL).
    fn create_lease(
        &self,
        subnet: Ipv4Net,
        attrs: &LeaseAttrs,
        ttl: Option<Duration>,
    ) -> impl Future<Output = Result<Claim, StoreError>> + Send;
    /// Rewrites `subnet`'s key with `attrs` and `binding` only if nobody changed it
    /// since `expected_revision`: the TTL handle it now hangs on, `None` when it changed.
    fn replace_lease(
        &self,
        subnet: Ipv4Net,
        attrs: &LeaseAttrs,
        binding: Binding,
        expected_revision: i64,
    ) -> impl Future<Output = Result<Option<LeaseId>, StoreError>> + Send;
    /// Deletes `subnet`'s key if unchanged since `expected_revision`; false when it
    /// changed.
    fn delete_lease(
        &self,
        subnet: Ipv4Net,
        expected_revision: i64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Seconds left on a TTL handle; `None` when it is gone (or for 0).
    fn time_left(
        &self,
        lease_id: LeaseId,
    ) -> impl Future<Output = Result<Option<i64>, StoreError>> + Send;
    /// Renews a TTL handle: the seconds it has now, `None` when it is gone.
    fn renew(
        &self,
        lease_id: LeaseId,
    ) -> impl Future<Output = Result<Option<i64>, StoreError>> + Send;
    /// Gives a TTL handle up (its keys go with it). One already gone is not an error.
    fn release(&self, lease_id: LeaseId) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Watches every lease from `start_revision` on.
    fn watch_leases(
        &self,
        start_revision: i64,
    ) -> impl Future<Output = Result<Self::Watch, StoreError>> + Send;
}

/// An open watch.
pub trait LeaseWatch: Send {
    /// The next batch of changes. An error ends the watch: list again and watch anew
    /// (disconnect, compaction, store restart).
    fn next(&mut self) -> impl Future<Output = Result<Vec<LeaseChange>, StoreError>> + Send;
}

/// Whether the store answered lately, shared with the health endpoint.
#[derive(Debug, Default)]
pub struct Reachability {
    inner: Mutex<ReachabilityInner>,
}

#[derive(Debug, Default, Clone)]
struct ReachabilityInner {
    last_ok: Option<Instant>,
    failing_since: Option<Instant>,
    last_error: Option<String>,
}

/// A point-in-time view of [`Reachability`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EtcdHealth {
    /// No request has completed yet.
    Unknown,
    Reachable,
    Unreachable {
        for_: Duration,
        error: String,
    },
}

impl Reachability {
    /// The store answered.
    pub fn ok(&self) {
        let mut inner = self.lock();
        inner.last_ok = Some(Instant::now());
        inner.failing_since = None;
        inner.last_error = None;
    }

    /// A request failed with `error`.
    pub fn failed(&self, error: String) {
        let mut inner = self.lock();
        inner.failing_since.get_or_insert_with(Instant::now);
        inner.last_error = Some(error);
    }

    pub fn health(&self) -> EtcdHealth {
        let inner = self.lock().clone();
        match (inner.failing_since, inner.last_error) {
            (Some(since), Some(error)) => EtcdHealth::Unreachable {
                for_: since.elapsed(),
                error,
            },
            _ if inner.last_ok.is_some() => EtcdHealth::Reachable,
            _ => EtcdHealth::Unknown,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ReachabilityInner> {
        // A panic while holding this lock cannot leave the plain data inconsistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}
