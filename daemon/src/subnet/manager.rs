//! The I/O shell of the lease life cycle: runs [`LeaseMachine`] against a
//! [`SubnetStore`] and the clock (carrying out its actions, feeding back the answers,
//! sleeping until its timer), and watches the other nodes' leases. The decisions are
//! in [`super::machine`], [`super::choose`] and [`super::peers`]; nothing here decides.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ipnet::{IpNet, Ipv4Net};
use tokio::sync::{mpsc, watch, Notify};
use weft_config::NetConf;

pub use super::machine::{
    default_renew_interval, AcquiredHow, Backoff, HeldLease, ManagerConfig, ManagerError,
    DEFAULT_LEASE_TTL,
};
use super::machine::{Action, Counter, LeaseMachine, Now, Observation, StoreNames};
use super::peers::{PeerTable, SubnetEntry};
use super::registry::Registry;
use super::status::{ControlStatus, Counters};
use super::store::{LeaseChange, LeaseWatch, StoreError, SubnetStore};
use crate::lease::LeaseEvent;

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

/// The subnet manager of one node: the lease life cycle against `S`.
#[derive(Debug)]
pub struct SubnetManager<S: SubnetStore = Registry> {
    store: S,
    config: ManagerConfig,
    status: Arc<ControlStatus>,
}

/// How [`SubnetManager::drive`] treats a store that does not answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnUnreachable {
    /// Tell the machine (it backs off and retries).
    Retry,
    /// Return the error.
    Fail,
}

impl<S: SubnetStore> SubnetManager<S> {
    pub fn new(store: S, config: ManagerConfig, status: Arc<ControlStatus>) -> Self {
        status.set_etcd(store.reachability());
        SubnetManager {
            store,
            config,
            status,
        }
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    pub fn config(&self) -> &ManagerConfig {
        &self.config
    }

    pub fn status(&self) -> &Arc<ControlStatus> {
        &self.status
    }

    fn names(&self) -> StoreNames {
        StoreNames {
            config: self.store.config_location(),
            leases: self.store.leases_location(),
        }
    }

    /// Reads the network config, waiting (with backoff, logging what it waits for)
    /// while the store is unreachable or the config absent. An invalid config is an
    /// error.
    pub async fn wait_for_netconf(
        &self,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<NetConf, ManagerError> {
        Ok(self.wait_for_netconf_json(shutdown).await?.0)
    }

    /// [`SubnetManager::wait_for_netconf`], with the JSON text as stored.
    pub async fn wait_for_netconf_json(
        &self,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(NetConf, String), ManagerError> {
        let machine = LeaseMachine::new(self.config.clone(), self.names(), rand::random());
        self.drive(
            machine,
            OnUnreachable::Retry,
            Some(shutdown),
            None,
            |action| match action {
                Action::ConfigReady { netconf, json } => Some((netconf, json)),
                _ => None,
            },
        )
        .await
    }

    /// Acquires this node's subnet (see [`crate::subnet`] for the order of
    /// preference), retrying lost races with another subnet. A store error is returned.
    pub async fn acquire(&self, netconf: &NetConf) -> Result<HeldLease, ManagerError> {
        let machine = self.acquiring(netconf);
        self.drive(machine, OnUnreachable::Fail, None, None, acquired)
            .await
    }

    /// [`SubnetManager::acquire`], retried with backoff while the store is unreachable
    /// (it may flap between reading the config and writing the lease). Errors that
    /// waiting cannot fix (exhausted network, bad credentials) are returned.
    pub async fn acquire_retrying(
        &self,
        netconf: &NetConf,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<HeldLease, ManagerError> {
        let machine = self.acquiring(netconf);
        self.drive(
            machine,
            OnUnreachable::Retry,
            Some(shutdown),
            None,
            acquired,
        )
        .await
    }

    fn acquiring(&self, netconf: &NetConf) -> LeaseMachine {
        LeaseMachine::with_netconf(
            self.config.clone(),
            self.names(),
            rand::random(),
            netconf.clone(),
        )
    }

    /// Keeps `held` until shutdown: renewals every `renew_interval`; when the lease is
    /// found lost (the renewal says so, or `check_now` is notified because the watcher
    /// saw our key change), the same subnet is re-acquired if free.
    pub async fn keep(
        &self,
        held: HeldLease,
        check_now: Arc<Notify>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let machine = LeaseMachine::holding(self.config.clone(), self.names(), held);
        let never = |_: Action| None::<()>;
        let _ = self
            .drive(
                machine,
                OnUnreachable::Retry,
                Some(&mut shutdown),
                Some(&check_now),
                never,
            )
            .await;
    }

    /// Runs `machine` until `want` picks a value out of an action, it fails, or
    /// shutdown. Store requests are carried out one at a time and their answers fed
    /// back; with nothing to do it sleeps until its timer (or `check_now`).
    async fn drive<T>(
        &self,
        mut machine: LeaseMachine,
        on_unreachable: OnUnreachable,
        mut shutdown: Option<&mut watch::Receiver<bool>>,
        check_now: Option<&Notify>,
        mut want: impl FnMut(Action) -> Option<T>,
    ) -> Result<T, ManagerError> {
        let mut observations = VecDeque::from([Observation::Start]);
        let mut wake_at: Option<Instant> = None;
        loop {
            let observation = match observations.pop_front() {
                Some(observation) => observation,
                None => {
                    let Some(at) = wake_at.take() else {
                        return Err(ManagerError::Shutdown); // the machine has ended
                    };
                    match wait(at, shutdown.as_deref_mut(), check_now).await {
                        Some(observation) => observation,
                        None => return Err(ManagerError::Shutdown),
                    }
                }
            };
            for action in machine.step(observation, now()) {
                match action {
                    Action::WakeAt(at) => wake_at = Some(at),
                    Action::Report(state) => self.status.set_lease(state),
                    Action::Count(counter) => Counters::bump(self.counter(counter)),
                    Action::Fail(error) => return Err(error),
                    Action::Release(lease_id) => {
                        if let Err(e) = self.store.release(lease_id).await {
                            tracing::debug!(lease_id, error = %e, "could not release an unused lease");
                        }
                    }
                    action @ (Action::ConfigReady { .. } | Action::Acquired(_)) => {
                        if let Some(value) = want(action) {
                            return Ok(value);
                        }
                    }
                    request => match self.perform(request).await {
                        Ok(observation) => observations.push_back(observation),
                        Err(e) if e.permanent || on_unreachable == OnUnreachable::Fail => {
                            return Err(e.into())
                        }
                        Err(e) => {
                            observations.push_back(Observation::StoreUnreachable(e.to_string()))
                        }
                    },
                }
            }
        }
    }

    fn counter(&self, counter: Counter) -> &std::sync::atomic::AtomicU64 {
        let counters = &self.status.counters;
        match counter {
            Counter::RaceRetry => &counters.race_retries,
            Counter::Renewal => &counters.lease_renewals,
            Counter::Loss => &counters.lease_losses,
            Counter::Reacquisition => &counters.lease_reacquisitions,
        }
    }

    /// Carries out one store request; its answer as an observation.
    async fn perform(&self, request: Action) -> Result<Observation, StoreError> {
        let store = &self.store;
        Ok(match request {
            Action::ReadConfig => Observation::ConfigRead(store.read_config().await?),
            Action::ListLeases => Observation::Listed(store.list_leases().await?.0),
            Action::GetLease(subnet) => Observation::LeaseRead(store.get_lease(subnet).await?),
            Action::CheckTimeLeft(id) => Observation::TimeLeft(store.time_left(id).await?),
            Action::Create { subnet, attrs, ttl } => {
                Observation::Claimed(store.create_lease(subnet, &attrs, ttl).await?)
            }
            Action::Replace {
                subnet,
                attrs,
                binding,
                expected_revision,
            } => Observation::Replaced(
                store
                    .replace_lease(subnet, &attrs, binding, expected_revision)
                    .await?,
            ),
            Action::Delete {
                subnet,
                expected_revision,
            } => Observation::Deleted(store.delete_lease(subnet, expected_revision).await?),
            Action::Renew(id) => Observation::Renewed(store.renew(id).await?),
            other => unreachable!("not a store request: {other:?}"),
        })
    }
}

fn acquired(action: Action) -> Option<HeldLease> {
    match action {
        Action::Acquired(held) => Some(held),
        _ => None,
    }
}

/// Tokio's clock for timers (so a test that pauses time drives the machine too).
fn now() -> Now {
    Now {
        mono: tokio::time::Instant::now().into_std(),
        wall: SystemTime::now(),
    }
}

/// Waits until `at` (the timer), a notice on `check_now` (our key changed) or
/// shutdown (`None`).
async fn wait(
    at: Instant,
    shutdown: Option<&mut watch::Receiver<bool>>,
    check_now: Option<&Notify>,
) -> Option<Observation> {
    let key_changed = async {
        match check_now {
            Some(notify) => notify.notified().await,
            None => std::future::pending().await,
        }
    };
    let stopped = async {
        match shutdown {
            Some(shutdown) => loop {
                if *shutdown.borrow_and_update() || shutdown.changed().await.is_err() {
                    return;
                }
            },
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = stopped => None,
        () = tokio::time::sleep_until(at.into()) => Some(Observation::TimerFired),
        () = key_changed => Some(Observation::KeyChanged),
    }
}

/// Watches every subnet lease and sends the data plane what changed, until shutdown.
/// Starts with a list (sending a [`LeaseEvent::Snapshot`]) and watches from the list's
/// revision + 1, so nothing between list and watch is missed; whenever the watch ends
/// (disconnect, compaction, store restart) it lists again and sends a fresh snapshot.
/// `own` is excluded from the peers; changes of its key notify `own_key_changed`.
pub async fn watch_peers<S: SubnetStore>(
    store: S,
    own: Option<Ipv4Net>,
    events: mpsc::Sender<LeaseEvent>,
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
        let watcher = Watcher {
            table: &mut table,
            events: &events,
            own_key_changed: own_key_changed.as_deref(),
            status: &status,
        };
        match watcher.run(&store, &mut shutdown, &mut backoff).await {
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

/// One list-then-watch of [`watch_peers`].
struct Watcher<'a> {
    table: &'a mut PeerTable,
    events: &'a mpsc::Sender<LeaseEvent>,
    own_key_changed: Option<&'a Notify>,
    status: &'a ControlStatus,
}

impl Watcher<'_> {
    async fn send(&self, event: LeaseEvent) -> bool {
        Counters::bump(&self.status.counters.peer_events);
        self.events.send(event).await.is_ok()
    }

    fn own_key_changed(&self) {
        if let Some(notify) = self.own_key_changed {
            notify.notify_one();
        }
    }

    async fn run<S: SubnetStore>(
        self,
        store: &S,
        shutdown: &mut watch::Receiver<bool>,
        backoff: &mut Backoff,
    ) -> WatchEnd {
        let (stored, revision) = match store.list_leases().await {
            Ok(listed) => listed,
            Err(e) => return WatchEnd::Restart(e.to_string()),
        };
        let entries = stored.into_iter().map(|s| SubnetEntry {
            subnet: s.subnet,
            attrs: s.attrs,
        });
        let snapshot = self.table.reset(entries);
        self.status.set_peers(self.table.peers());
        if !self.send(snapshot).await {
            return WatchEnd::Shutdown; // the data plane is gone
        }
        // Our own key may have changed while the watch was down.
        self.own_key_changed();
        let mut stream = match store.watch_leases(revision + 1).await {
            Ok(stream) => stream,
            Err(e) => return WatchEnd::Restart(e.to_string()),
        };
        backoff.reset();
        loop {
            let changes = tokio::select! {
                changes = stream.next() => changes,
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() { return WatchEnd::Shutdown; }
                    continue;
                }
            };
            let changes = match changes {
                Ok(changes) => changes,
                Err(e) => return WatchEnd::Restart(e.to_string()),
            };
            let mut changed = false;
            for change in changes {
                let subnet = match &change {
                    LeaseChange::Put { subnet, .. } | LeaseChange::Deleted(subnet) => *subnet,
                };
                if Some(IpNet::V4(subnet)) == self.table.own() {
                    self.own_key_changed();
                    continue;
                }
                let outcome = match change {
                    LeaseChange::Put {
                        subnet,
                        attrs: Some(attrs),
                    } => self.table.upsert(&SubnetEntry { subnet, attrs }),
                    LeaseChange::Put { attrs: None, .. } | LeaseChange::Deleted(_) => {
                        self.table.remove(subnet)
                    }
                };
                if let Some(event) = outcome {
                    changed = true;
                    if !self.send(event).await {
                        return WatchEnd::Shutdown;
                    }
                }
            }
            if changed {
                self.status.set_peers(self.table.peers());
            }
        }
    }
}

#[cfg(test)]
mod tests;
