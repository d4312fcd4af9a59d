//! The lease life cycle against etcd: wait for the net-conf, acquire a subnet, keep the
//! lease alive (re-acquiring the same subnet if it is lost), and watch the other nodes'
//! leases. The decisions are in [`super::choose`] and [`super::peers`]; this module only
//! gathers inputs from etcd and applies the outcome.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{EventType, LeaseKeepAliveStream, LeaseKeeper};
use ipnet::Ipv4Net;
use tokio::sync::{mpsc, watch, Notify};
use weft_config::NetConf;
use weft_proto::lease::LeaseAttrs;

use super::choose::{capacity, choose_subnet, is_compatible};
use super::peers::{decode_entry, decode_key, PeerTable};
use super::registry::{expiry_from_ttl, CreateOutcome, Registry, RegistryError, StoredLease};
use super::status::{ControlStatus, Counters, LeaseState};
use crate::lease::{lease_record, MacAddr, PeerEvent};

/// flannel's lease TTL.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(24 * 3600);

/// How often a lost race is retried before giving up (each retry re-lists etcd and
/// excludes the subnets already lost, so this only runs out under pathological churn).
const MAX_ACQUIRE_ATTEMPTS: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("network config at {key} is invalid: {reason}")]
    BadConfig { key: String, reason: String },
    #[error(
        "network {network} is exhausted: all {capacity} subnets between SubnetMin {min} and \
         SubnetMax {max} are leased ({taken} keys under {prefix})"
    )]
    Exhausted {
        network: Ipv4Net,
        capacity: u64,
        min: Ipv4Addr,
        max: Ipv4Addr,
        taken: usize,
        prefix: String,
    },
    #[error("gave up acquiring a subnet in {network} after {attempts} lost races")]
    TooManyRaces { network: Ipv4Net, attempts: usize },
    #[error("shutting down")]
    Shutdown,
}

/// Who this node is, and the lease parameters.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    pub public_ip: Ipv4Addr,
    pub vtep_mac: MacAddr,
    pub lease_ttl: Duration,
    /// How often the lease is kept alive and etcd probed.
    pub renew_interval: Duration,
    /// Subnets to try first, in order (last lease from the state dir, subnet.env),
    /// when this node has no lease in etcd yet.
    pub preferred: Vec<Ipv4Net>,
    /// The lease of the last known state (subnet, etcd lease id): kept as it is if its
    /// key still holds this node's record on that same, live etcd lease.
    pub resume: Option<(Ipv4Net, i64)>,
}

impl ManagerConfig {
    pub fn new(public_ip: Ipv4Addr, vtep_mac: MacAddr, lease_ttl: Duration) -> Self {
        ManagerConfig {
            public_ip,
            vtep_mac,
            lease_ttl,
            renew_interval: default_renew_interval(lease_ttl),
            preferred: Vec::new(),
            resume: None,
        }
    }
}

/// A third of the TTL (etcd's own clients use the same), at most 10 s: keep-alives are
/// also how a node notices that etcd is gone or that its lease was revoked.
pub fn default_renew_interval(ttl: Duration) -> Duration {
    (ttl / 3).clamp(Duration::from_millis(300), Duration::from_secs(10))
}

/// How the subnet was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcquiredHow {
    /// This node's existing lease (same PublicIP), renewed.
    Existing,
    /// A reservation (key without TTL) with this node's PublicIP.
    Reservation,
    /// A preferred subnet (previous lease, subnet.env) that was free.
    Preferred,
    /// A new subnet.
    New,
    /// The lease of the last known state, still live in etcd: kept untouched (same key,
    /// same etcd lease).
    Resumed,
}

/// What one check of the lease found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyCheck {
    Alive,
    /// Gone (expired, revoked, deleted): re-acquire.
    Lost,
    /// Another node's record is at our key now.
    TakenBy(Ipv4Addr),
}

/// A held lease.
#[derive(Debug, Clone)]
pub struct HeldLease {
    pub netconf: NetConf,
    pub subnet: Ipv4Net,
    /// The etcd lease the key is attached to; 0 for a reservation.
    pub lease_id: i64,
    pub how: AcquiredHow,
}

/// The subnet manager of one node.
#[derive(Debug)]
pub struct SubnetManager {
    registry: Registry,
    config: ManagerConfig,
    status: Arc<ControlStatus>,
}

/// Exponential backoff for retries against etcd.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new() -> Self {
        Backoff {
            next: Duration::from_millis(100),
            max: Duration::from_secs(3),
        }
    }

    /// The delay to wait now; doubles for next time.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    pub fn reset(&mut self) {
        self.next = Duration::from_millis(100);
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

/// Sleeps for `delay` unless shutdown is requested first. Returns false on shutdown.
pub async fn sleep_or_shutdown(delay: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    if *shutdown.borrow() {
        return false;
    }
    tokio::select! {
        _ = tokio::time::sleep(delay) => true,
        changed = shutdown.changed() => changed.is_ok() && !*shutdown.borrow(),
    }
}

impl SubnetManager {
    pub fn new(registry: Registry, config: ManagerConfig, status: Arc<ControlStatus>) -> Self {
        status.set_etcd(registry.reachability());
        SubnetManager {
            registry,
            config,
            status,
        }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn config(&self) -> &ManagerConfig {
        &self.config
    }

    pub fn status(&self) -> &Arc<ControlStatus> {
        &self.status
    }

    fn record(&self, netconf: &NetConf) -> LeaseAttrs {
        lease_record(
            &netconf.backend,
            self.config.public_ip,
            self.config.vtep_mac,
        )
    }

    /// Reads `<prefix>/config`, waiting (with backoff, logging what it waits for) while
    /// etcd is unreachable or the key is absent. An invalid config is an error.
    pub async fn wait_for_netconf(
        &self,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<NetConf, ManagerError> {
        Ok(self.wait_for_netconf_json(shutdown).await?.0)
    }

    /// [`SubnetManager::wait_for_netconf`], with the JSON text as stored in etcd.
    pub async fn wait_for_netconf_json(
        &self,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(NetConf, String), ManagerError> {
        let key = self.registry.config_key();
        let mut backoff = Backoff::new();
        let mut logged_missing = false;
        loop {
            match self.registry.get_config().await {
                Ok(Some(json)) => {
                    return match NetConf::parse(&json) {
                        Ok(netconf) => Ok((netconf, json)),
                        Err(e) => Err(ManagerError::BadConfig {
                            key,
                            reason: e.to_string(),
                        }),
                    }
                }
                Ok(None) => {
                    if !logged_missing {
                        tracing::warn!(
                            %key,
                            "waiting for the network config: create it, e.g. etcdctl put {key} \
                             '{{\"Network\":\"10.244.0.0/16\",\"Backend\":{{\"Type\":\"vxlan\"}}}}'"
                        );
                        logged_missing = true;
                    }
                    self.status
                        .set_lease(LeaseState::WaitingForConfig { key: key.clone() });
                }
                Err(e) if e.is_permanent() => return Err(e.into()),
                Err(e) => {
                    tracing::warn!(error = %e, "etcd unreachable; retrying");
                    self.status.set_lease(LeaseState::WaitingForEtcd {
                        error: e.to_string(),
                    });
                }
            }
            if !sleep_or_shutdown(backoff.next_delay(), shutdown).await {
                return Err(ManagerError::Shutdown);
            }
        }
    }

    /// Acquires this node's subnet (see the module docs of [`crate::subnet`] for the
    /// order of preference), retrying lost races with another subnet.
    pub async fn acquire(&self, netconf: &NetConf) -> Result<HeldLease, ManagerError> {
        let attrs = self.record(netconf);
        let mut granted: Option<i64> = None;
        let mut lost_races: BTreeSet<Ipv4Net> = BTreeSet::new();
        let result = self
            .acquire_inner(netconf, &attrs, &mut granted, &mut lost_races)
            .await;
        // A lease granted for an attempt that did not use it would linger for a day.
        if let Some(unused) = granted {
            if result.as_ref().map(|held| held.lease_id).ok() != Some(unused) {
                let _ = self.registry.revoke(unused).await;
            }
        }
        let held = result?;
        self.status.set_lease(LeaseState::Held {
            subnet: held.subnet,
            public_ip: self.config.public_ip,
            reservation: held.lease_id == 0,
            lease_id: held.lease_id,
            expires_unix: (held.lease_id != 0).then(|| {
                ControlStatus::unix_secs(expiry_from_ttl(
                    i64::try_from(self.config.lease_ttl.as_secs()).unwrap_or(i64::MAX),
                ))
            }),
        });
        tracing::info!(
            subnet = %held.subnet,
            public_ip = %self.config.public_ip,
            how = ?held.how,
            lease_id = held.lease_id,
            race_retries = lost_races.len(),
            "subnet lease acquired"
        );
        Ok(held)
    }

    /// [`SubnetManager::acquire`], retried with backoff while etcd is unreachable (it
    /// may flap between reading the config and writing the lease). Errors that waiting
    /// cannot fix (exhausted network, bad credentials) are returned.
    pub async fn acquire_retrying(
        &self,
        netconf: &NetConf,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<HeldLease, ManagerError> {
        let mut backoff = Backoff::new();
        loop {
            match self.acquire(netconf).await {
                Err(ManagerError::Registry(e)) if !e.is_permanent() => {
                    tracing::warn!(error = %e, "cannot acquire a subnet lease yet; retrying");
                    self.status.set_lease(LeaseState::WaitingForEtcd {
                        error: e.to_string(),
                    });
                }
                other => return other,
            }
            if !sleep_or_shutdown(backoff.next_delay(), shutdown).await {
                return Err(ManagerError::Shutdown);
            }
        }
    }

    async fn lease_id(&self, granted: &mut Option<i64>) -> Result<i64, ManagerError> {
        if let Some(id) = *granted {
            return Ok(id);
        }
        let id = self.registry.grant(self.config.lease_ttl).await?;
        *granted = Some(id);
        Ok(id)
    }

    async fn acquire_inner(
        &self,
        netconf: &NetConf,
        attrs: &LeaseAttrs,
        granted: &mut Option<i64>,
        lost_races: &mut BTreeSet<Ipv4Net>,
    ) -> Result<HeldLease, ManagerError> {
        let public_ip = self.config.public_ip;
        if let Some((subnet, lease_id)) = self.config.resume {
            if let Some(held) = self.resume(netconf, attrs, subnet, lease_id).await? {
                return Ok(held);
            }
        }
        for _ in 0..MAX_ACQUIRE_ATTEMPTS {
            let (stored, _) = self.registry.list_subnets().await?;

            // (a) this node's own lease or reservation (same PublicIP).
            let mut mine: Vec<&StoredLease> = stored
                .iter()
                .filter(|s| s.attrs.public_ip == public_ip)
                .collect();
            mine.sort_by_key(|s| !s.is_reservation());
            if let Some(own) = mine.first() {
                if is_compatible(netconf, own.subnet) {
                    if let Some(held) = self.adopt(netconf, attrs, own, granted).await? {
                        return Ok(held);
                    }
                    continue; // it changed under us: look again
                }
                tracing::warn!(
                    subnet = %own.subnet, network = %netconf.network,
                    "found this node's lease but it does not fit the network config; deleting it"
                );
                self.registry
                    .delete_subnet(own.subnet, own.mod_revision)
                    .await?;
                continue;
            }

            // (b) a preferred subnet, else (c) a random free one.
            let taken: BTreeSet<Ipv4Net> = stored
                .iter()
                .map(|s| s.subnet)
                .chain(lost_races.iter().copied())
                .collect();
            let preferred = self
                .config
                .preferred
                .iter()
                .copied()
                .find(|p| is_compatible(netconf, *p) && !taken.contains(p));
            let Some(subnet) = choose_subnet(netconf, &taken, preferred, &mut rand::rng()) else {
                return Err(ManagerError::Exhausted {
                    network: netconf.network,
                    capacity: capacity(netconf),
                    min: netconf.subnet_min,
                    max: netconf.subnet_max,
                    taken: stored.len(),
                    prefix: self.registry.subnets_prefix(),
                });
            };
            let lease_id = self.lease_id(granted).await?;
            match self.registry.create_subnet(subnet, attrs, lease_id).await? {
                CreateOutcome::Created => {
                    let how = if Some(subnet) == preferred {
                        AcquiredHow::Preferred
                    } else {
                        AcquiredHow::New
                    };
                    return Ok(HeldLease {
                        netconf: netconf.clone(),
                        subnet,
                        lease_id,
                        how,
                    });
                }
                CreateOutcome::Exists(holder) => {
                    Counters::bump(&self.status.counters.race_retries);
                    tracing::info!(
                        %subnet,
                        holder = ?holder.map(|h| h.attrs.public_ip),
                        "lost the race for a subnet; retrying with another"
                    );
                    lost_races.insert(subnet);
                }
            }
        }
        Err(ManagerError::TooManyRaces {
            network: netconf.network,
            attempts: MAX_ACQUIRE_ATTEMPTS,
        })
    }

    /// The last known lease, if etcd still has it exactly so: the key holds this node's
    /// record, on the same etcd lease, which is alive. Then nothing is written (the
    /// lease ID stays, peers see no change). `None` otherwise: acquire as usual.
    async fn resume(
        &self,
        netconf: &NetConf,
        attrs: &LeaseAttrs,
        subnet: Ipv4Net,
        lease_id: i64,
    ) -> Result<Option<HeldLease>, ManagerError> {
        if lease_id == 0 || !is_compatible(netconf, subnet) {
            return Ok(None);
        }
        let Some(current) = self.registry.get_subnet(subnet).await? else {
            return Ok(None);
        };
        if current.lease_id != lease_id || current.attrs != *attrs {
            return Ok(None);
        }
        if self.registry.time_to_live(lease_id).await?.is_none() {
            return Ok(None);
        }
        Ok(Some(HeldLease {
            netconf: netconf.clone(),
            subnet,
            lease_id,
            how: AcquiredHow::Resumed,
        }))
    }

    /// Takes over this node's existing key: a reservation stays without TTL, a lease is
    /// moved to a fresh etcd lease. `None` when the key changed meanwhile.
    async fn adopt(
        &self,
        netconf: &NetConf,
        attrs: &LeaseAttrs,
        own: &StoredLease,
        granted: &mut Option<i64>,
    ) -> Result<Option<HeldLease>, ManagerError> {
        if own.is_reservation() {
            // Keep the reservation's TTL-less form; refresh the attributes (VtepMAC) so
            // peers reach the current identity.
            if own.attrs != *attrs
                && !self
                    .registry
                    .replace_subnet(own.subnet, attrs, 0, own.mod_revision)
                    .await?
            {
                return Ok(None);
            }
            return Ok(Some(HeldLease {
                netconf: netconf.clone(),
                subnet: own.subnet,
                lease_id: 0,
                how: AcquiredHow::Reservation,
            }));
        }
        let lease_id = self.lease_id(granted).await?;
        if !self
            .registry
            .replace_subnet(own.subnet, attrs, lease_id, own.mod_revision)
            .await?
        {
            return Ok(None);
        }
        // The key now hangs on the new lease; the old one (our previous run's) holds
        // nothing and would otherwise linger until its TTL ends.
        if own.lease_id != lease_id {
            let _ = self.registry.revoke(own.lease_id).await;
        }
        Ok(Some(HeldLease {
            netconf: netconf.clone(),
            subnet: own.subnet,
            lease_id,
            how: AcquiredHow::Existing,
        }))
    }

    /// Keeps `held` alive until shutdown: keep-alives every `renew_interval`; when the
    /// lease is found lost (keep-alive says so, or `check_now` is notified because the
    /// watcher saw our key change), the same subnet is re-acquired if free. The
    /// [`crate::lease::LocalLease`] never changes: the data plane keeps running.
    pub async fn keep(
        &self,
        mut held: HeldLease,
        check_now: Arc<Notify>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let attrs = self.record(&held.netconf);
        let mut stream: Option<(LeaseKeeper, LeaseKeepAliveStream)> = None;
        let mut verify_key = false;
        loop {
            if !verify_key {
                tokio::select! {
                    _ = tokio::time::sleep(self.config.renew_interval) => {}
                    _ = check_now.notified() => verify_key = true,
                    changed = shutdown.changed() => {
                        if changed.is_err() || *shutdown.borrow() { return; }
                    }
                }
            }
            if *shutdown.borrow() {
                return;
            }
            let check = std::mem::take(&mut verify_key);
            match self.check_once(&mut held, &attrs, &mut stream, check).await {
                Ok(KeyCheck::Alive) => {}
                Ok(KeyCheck::TakenBy(holder)) => {
                    // Nothing to renew or re-create while another node holds the key;
                    // keep checking, it may give the subnet up.
                    stream = None;
                    self.report_conflict(held.subnet, holder);
                }
                Ok(KeyCheck::Lost) => {
                    // Lost: try to get the same subnet back right away.
                    stream = None;
                    Counters::bump(&self.status.counters.lease_losses);
                    match self.reacquire_same(&mut held, &attrs).await {
                        Ok(()) => {}
                        Err(e) => tracing::warn!(subnet = %held.subnet, error = %e,
                            "lease lost and not re-acquired yet; retrying"),
                    }
                }
                Err(e) => {
                    stream = None;
                    tracing::warn!(error = %e, "cannot renew the subnet lease; retrying");
                }
            }
        }
    }

    /// One keep-alive (or, for a reservation, when asked, or while in trouble, a read
    /// of our key first).
    async fn check_once(
        &self,
        held: &mut HeldLease,
        attrs: &LeaseAttrs,
        stream: &mut Option<(LeaseKeeper, LeaseKeepAliveStream)>,
        verify_key: bool,
    ) -> Result<KeyCheck, ManagerError> {
        if held.lease_id == 0 || verify_key || self.in_trouble() {
            match self.registry.get_subnet(held.subnet).await? {
                None => {
                    tracing::error!(subnet = %held.subnet, "this node's subnet key is gone (revoked, expired or deleted)");
                    return Ok(KeyCheck::Lost);
                }
                Some(current) if current.attrs.public_ip != self.config.public_ip => {
                    return Ok(KeyCheck::TakenBy(current.attrs.public_ip));
                }
                Some(current) => {
                    if current.lease_id != held.lease_id {
                        // Rewritten by our own (earlier) instance or an operator with our
                        // identity: keep the key alive through whatever lease it has now.
                        held.lease_id = current.lease_id;
                        *stream = None;
                    }
                    if current.attrs != *attrs {
                        self.registry
                            .replace_subnet(held.subnet, attrs, held.lease_id, current.mod_revision)
                            .await?;
                    }
                }
            }
            if held.lease_id == 0 {
                self.set_held(held, None);
                return Ok(KeyCheck::Alive);
            }
        }
        if stream.is_none() {
            match self.registry.keep_alive(held.lease_id).await? {
                Some(pair) => *stream = Some(pair),
                None => {
                    tracing::error!(subnet = %held.subnet, lease_id = held.lease_id,
                        "this node's etcd lease expired or was revoked");
                    return Ok(KeyCheck::Lost);
                }
            }
        }
        let Some((keeper, responses)) = stream.as_mut() else {
            return Ok(KeyCheck::Alive);
        };
        let ttl = self.registry.keep_alive_once(keeper, responses).await?;
        if ttl <= 0 {
            tracing::error!(subnet = %held.subnet, lease_id = held.lease_id,
                "this node's etcd lease expired or was revoked");
            return Ok(KeyCheck::Lost);
        }
        Counters::bump(&self.status.counters.lease_renewals);
        self.set_held(held, Some(ttl));
        Ok(KeyCheck::Alive)
    }

    fn in_trouble(&self) -> bool {
        matches!(
            self.status.lease(),
            LeaseState::Lost { .. } | LeaseState::Conflict { .. }
        )
    }

    fn set_held(&self, held: &HeldLease, ttl: Option<i64>) {
        self.status.set_lease(LeaseState::Held {
            subnet: held.subnet,
            public_ip: self.config.public_ip,
            reservation: held.lease_id == 0,
            lease_id: held.lease_id,
            expires_unix: ttl.map(|t| ControlStatus::unix_secs(expiry_from_ttl(t))),
        });
    }

    fn report_conflict(&self, subnet: Ipv4Net, holder: Ipv4Addr) {
        if self.status.lease() != (LeaseState::Conflict { subnet, holder }) {
            tracing::error!(
                %subnet, %holder,
                "this node's subnet is now leased by another node; two nodes claim it and \
                 traffic to it is ambiguous — stop one of them or delete the wrong key"
            );
        }
        self.status
            .set_lease(LeaseState::Conflict { subnet, holder });
    }

    /// Re-creates our key for the same subnet with a new etcd lease, if it is free.
    async fn reacquire_same(
        &self,
        held: &mut HeldLease,
        attrs: &LeaseAttrs,
    ) -> Result<(), ManagerError> {
        self.status.set_lease(LeaseState::Lost {
            subnet: held.subnet,
            reason: "expired, revoked or deleted in etcd".into(),
        });
        let lease_id = self.registry.grant(self.config.lease_ttl).await?;
        let outcome = match self
            .registry
            .create_subnet(held.subnet, attrs, lease_id)
            .await
        {
            Ok(outcome) => outcome,
            Err(e) => {
                let _ = self.registry.revoke(lease_id).await;
                return Err(e.into());
            }
        };
        match outcome {
            CreateOutcome::Created => {}
            CreateOutcome::Exists(Some(current))
                if current.attrs.public_ip == self.config.public_ip =>
            {
                if !self
                    .registry
                    .replace_subnet(held.subnet, attrs, lease_id, current.mod_revision)
                    .await?
                {
                    let _ = self.registry.revoke(lease_id).await;
                    return Ok(()); // changed again; the next check looks anew
                }
                if current.lease_id != 0 && current.lease_id != lease_id {
                    let _ = self.registry.revoke(current.lease_id).await;
                }
            }
            CreateOutcome::Exists(holder) => {
                let _ = self.registry.revoke(lease_id).await;
                if let Some(holder) = holder {
                    self.report_conflict(held.subnet, holder.attrs.public_ip);
                }
                return Ok(());
            }
        }
        held.lease_id = lease_id;
        Counters::bump(&self.status.counters.lease_reacquisitions);
        tracing::warn!(subnet = %held.subnet, lease_id, "lease was lost; re-acquired the same subnet");
        self.set_held(
            held,
            Some(i64::try_from(self.config.lease_ttl.as_secs()).unwrap_or(i64::MAX)),
        );
        Ok(())
    }
}

/// Watches every subnet lease and sends the data plane what changed, until shutdown.
/// Starts with a list (sending a [`PeerEvent::Snapshot`]) and watches from the list's
/// revision + 1, so nothing between list and watch is missed; whenever the watch ends
/// (disconnect, compaction, etcd restart) it lists again and sends a fresh snapshot.
/// `own` is excluded from the peers; changes of its key notify `own_key_changed`.
pub async fn watch_peers(
    registry: Registry,
    own: Option<Ipv4Net>,
    events: mpsc::Sender<PeerEvent>,
    own_key_changed: Option<Arc<Notify>>,
    status: Arc<ControlStatus>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut table = PeerTable::new(own);
    let mut backoff = Backoff::new();
    let mut first = true;
    loop {
        if *shutdown.borrow() {
            return;
        }
        if !first {
            Counters::bump(&status.counters.watch_restarts);
        }
        first = false;
        match watch_once(
            &registry,
            &mut table,
            &events,
            own_key_changed.as_deref(),
            &status,
            &mut shutdown,
            &mut backoff,
        )
        .await
        {
            WatchEnd::Shutdown => return,
            WatchEnd::Restart(reason) => {
                tracing::warn!(%reason, "subnet watch ended; re-listing");
            }
        }
        if !sleep_or_shutdown(backoff.next_delay(), &mut shutdown).await {
            return;
        }
    }
}

enum WatchEnd {
    Shutdown,
    Restart(String),
}

async fn send(events: &mpsc::Sender<PeerEvent>, status: &ControlStatus, event: PeerEvent) -> bool {
    Counters::bump(&status.counters.peer_events);
    events.send(event).await.is_ok()
}

async fn watch_once(
    registry: &Registry,
    table: &mut PeerTable,
    events: &mpsc::Sender<PeerEvent>,
    own_key_changed: Option<&Notify>,
    status: &ControlStatus,
    shutdown: &mut watch::Receiver<bool>,
    backoff: &mut Backoff,
) -> WatchEnd {
    let (stored, revision) = match registry.list_subnets().await {
        Ok(listed) => listed,
        Err(e) => return WatchEnd::Restart(e.to_string()),
    };
    let entries = stored.into_iter().map(|s| super::peers::SubnetEntry {
        subnet: s.subnet,
        attrs: s.attrs,
    });
    let snapshot = table.reset(entries);
    status.set_peers(table.peers());
    if !send(events, status, snapshot).await {
        return WatchEnd::Shutdown; // the data plane is gone
    }
    // Our own key may have changed while the watch was down.
    if let Some(notify) = own_key_changed {
        notify.notify_one();
    }
    let mut stream = match registry.watch_subnets(revision + 1).await {
        Ok(stream) => stream,
        Err(e) => return WatchEnd::Restart(e.to_string()),
    };
    backoff.reset();
    loop {
        let message = tokio::select! {
            message = stream.message() => message,
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() { return WatchEnd::Shutdown; }
                continue;
            }
        };
        let response = match message {
            Ok(Some(response)) => response,
            Ok(None) => {
                registry.note_failure("watch stream closed".into());
                return WatchEnd::Restart("watch stream closed by etcd".into());
            }
            Err(e) => {
                registry.note_failure(e.to_string());
                return WatchEnd::Restart(e.to_string());
            }
        };
        registry.note_success();
        if response.canceled() || response.compact_revision() > 0 {
            return WatchEnd::Restart(format!(
                "watch canceled (compacted at revision {}): {}",
                response.compact_revision(),
                response.cancel_reason()
            ));
        }
        let mut changed = false;
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            let key = String::from_utf8_lossy(kv.key());
            let Some(subnet) = decode_key(&key) else {
                continue;
            };
            if Some(subnet) == table.own() {
                if let Some(notify) = own_key_changed {
                    notify.notify_one();
                }
                continue;
            }
            let outcome = match event.event_type() {
                EventType::Put => match decode_entry(kv.key(), kv.value()) {
                    Some(entry) => table.upsert(&entry),
                    None => table.remove(subnet),
                },
                EventType::Delete => table.remove(subnet),
            };
            if let Some(event) = outcome {
                changed = true;
                if !send(events, status, event).await {
                    return WatchEnd::Shutdown;
                }
            }
        }
        if changed {
            status.set_peers(table.peers());
        }
    }
}
