//! The shell against an in-memory [`SubnetStore`] (paused tokio time): the life cycle
//! runs the same with a store that is not etcd, which is what the seam is for.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;
use std::sync::Mutex;

use weft_proto::lease::LeaseAttrs;

use super::*;
use crate::subnet::status::LeaseState;
use crate::subnet::store::{Binding, Claim, LeaseId, Reachability, StoredLease};

const CONF: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":1}}"#;

#[derive(Debug, Default)]
struct Memory {
    config: Option<String>,
    keys: BTreeMap<Ipv4Net, StoredLease>,
    live_handles: Vec<LeaseId>,
    next_handle: LeaseId,
    revision: i64,
    unreachable: bool,
    watchers: Vec<mpsc::UnboundedSender<Vec<LeaseChange>>>,
}

impl Memory {
    fn check(&self) -> Result<(), StoreError> {
        if self.unreachable {
            return Err(StoreError::new(false, "in-memory store switched off"));
        }
        Ok(())
    }

    fn handle(&mut self, ttl: Option<Duration>) -> LeaseId {
        match ttl {
            None => 0,
            Some(_) => {
                self.next_handle += 1;
                self.live_handles.push(self.next_handle);
                self.next_handle
            }
        }
    }

    fn put(&mut self, subnet: Ipv4Net, attrs: &LeaseAttrs, lease_id: LeaseId) {
        self.revision += 1;
        let lease = StoredLease {
            subnet,
            attrs: attrs.clone(),
            lease_id,
            mod_revision: self.revision,
        };
        self.keys.insert(subnet, lease);
        self.tell(LeaseChange::Put {
            subnet,
            attrs: Some(attrs.clone()),
        });
    }

    fn tell(&mut self, change: LeaseChange) {
        self.watchers
            .retain(|watcher| watcher.send(vec![change.clone()]).is_ok());
    }

    /// A TTL handle ends: its keys go with it.
    fn end(&mut self, handle: LeaseId) {
        self.live_handles.retain(|h| *h != handle);
        let gone: Vec<Ipv4Net> = self
            .keys
            .values()
            .filter(|l| l.lease_id == handle)
            .map(|l| l.subnet)
            .collect();
        for subnet in gone {
            self.keys.remove(&subnet);
            self.revision += 1;
            self.tell(LeaseChange::Deleted(subnet));
        }
    }
}

/// A store in memory, cloned handles sharing it.
#[derive(Debug, Clone, Default)]
struct MemoryStore {
    memory: Arc<Mutex<Memory>>,
    reachability: Arc<Reachability>,
}

impl MemoryStore {
    fn with_config(config: &str) -> Self {
        let store = MemoryStore::default();
        store.lock().config = Some(config.into());
        store
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.memory.lock().unwrap()
    }

    fn answer<T>(&self, f: impl FnOnce(&mut Memory) -> T) -> Result<T, StoreError> {
        let mut memory = self.lock();
        if let Err(e) = memory.check() {
            self.reachability.failed(e.to_string());
            return Err(e);
        }
        self.reachability.ok();
        Ok(f(&mut memory))
    }
}

struct MemoryWatch(mpsc::UnboundedReceiver<Vec<LeaseChange>>);

impl LeaseWatch for MemoryWatch {
    async fn next(&mut self) -> Result<Vec<LeaseChange>, StoreError> {
        self.0
            .recv()
            .await
            .ok_or_else(|| StoreError::new(false, "watch closed"))
    }
}

impl SubnetStore for MemoryStore {
    type Watch = MemoryWatch;

    fn config_location(&self) -> String {
        "memory:config".into()
    }

    fn leases_location(&self) -> String {
        "memory:leases/".into()
    }

    fn reachability(&self) -> Arc<Reachability> {
        self.reachability.clone()
    }

    async fn read_config(&self) -> Result<Option<String>, StoreError> {
        self.answer(|m| m.config.clone())
    }

    async fn list_leases(&self) -> Result<(Vec<StoredLease>, i64), StoreError> {
        self.answer(|m| (m.keys.values().cloned().collect(), m.revision))
    }

    async fn get_lease(&self, subnet: Ipv4Net) -> Result<Option<StoredLease>, StoreError> {
        self.answer(|m| m.keys.get(&subnet).cloned())
    }

    async fn create_lease(
        &self,
        subnet: Ipv4Net,
        attrs: &LeaseAttrs,
        ttl: Option<Duration>,
    ) -> Result<Claim, StoreError> {
        self.answer(|m| {
            if let Some(holder) = m.keys.get(&subnet) {
                return Claim::Lost {
                    holder: Some(holder.clone()),
                };
            }
            let lease_id = m.handle(ttl);
            m.put(subnet, attrs, lease_id);
            Claim::Won { lease_id }
        })
    }

    async fn replace_lease(
        &self,
        subnet: Ipv4Net,
        attrs: &LeaseAttrs,
        binding: Binding,
        expected_revision: i64,
    ) -> Result<Option<LeaseId>, StoreError> {
        self.answer(|m| {
            if m.keys.get(&subnet).map(|l| l.mod_revision) != Some(expected_revision) {
                return None;
            }
            let lease_id = match binding {
                Binding::Reservation => 0,
                Binding::Keep(id) => id,
                Binding::Fresh(ttl) => m.handle(Some(ttl)),
            };
            m.put(subnet, attrs, lease_id);
            Some(lease_id)
        })
    }

    async fn delete_lease(
        &self,
        subnet: Ipv4Net,
        expected_revision: i64,
    ) -> Result<bool, StoreError> {
        self.answer(|m| {
            if m.keys.get(&subnet).map(|l| l.mod_revision) != Some(expected_revision) {
                return false;
            }
            m.keys.remove(&subnet);
            m.revision += 1;
            m.tell(LeaseChange::Deleted(subnet));
            true
        })
    }

    async fn time_left(&self, lease_id: LeaseId) -> Result<Option<i64>, StoreError> {
        self.answer(|m| m.live_handles.contains(&lease_id).then_some(60))
    }

    async fn renew(&self, lease_id: LeaseId) -> Result<Option<i64>, StoreError> {
        self.answer(|m| m.live_handles.contains(&lease_id).then_some(60))
    }

    async fn release(&self, lease_id: LeaseId) -> Result<(), StoreError> {
        self.answer(|m| m.end(lease_id))
    }

    async fn watch_leases(&self, _start_revision: i64) -> Result<MemoryWatch, StoreError> {
        self.answer(|m| {
            let (tx, rx) = mpsc::unbounded_channel();
            m.watchers.push(tx);
            MemoryWatch(rx)
        })
    }
}

fn manager(store: &MemoryStore, n: u8) -> SubnetManager<MemoryStore> {
    let config = ManagerConfig::new(
        Ipv4Addr::new(192, 0, 2, n),
        [2, 0, 0, 0, 0, n],
        Duration::from_secs(60),
    );
    SubnetManager::new(store.clone(), config, ControlStatus::new())
}

/// Waits (in paused time, which runs ahead whenever every task waits) for `done`.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..10_000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never happened: {what}");
}

#[tokio::test(start_paused = true)]
async fn two_nodes_acquire_distinct_subnets_from_a_store_that_is_not_etcd() {
    let store = MemoryStore::with_config(CONF);
    let (_stop, mut shutdown) = watch::channel(false);
    let (a, b) = (manager(&store, 1), manager(&store, 2));
    let netconf = a.wait_for_netconf(&mut shutdown).await.unwrap();
    let first = a.acquire(&netconf).await.unwrap();
    let second = b.acquire(&netconf).await.unwrap();
    assert_ne!(first.subnet, second.subnet);
    assert!(netconf.network.contains(&first.subnet));
    assert_eq!(store.lock().keys.len(), 2);
    // A restarted node finds its own key again and moves it to a fresh TTL handle.
    let again = manager(&store, 1).acquire(&netconf).await.unwrap();
    assert_eq!(
        (again.subnet, again.how),
        (first.subnet, AcquiredHow::Existing)
    );
    assert!(
        !store.lock().live_handles.contains(&first.lease_id),
        "old handle released"
    );
}

#[tokio::test(start_paused = true)]
async fn a_lease_that_ends_is_taken_back_with_the_same_subnet() {
    let store = MemoryStore::with_config(CONF);
    let (_stop, shutdown) = watch::channel(false);
    let m = Arc::new(manager(&store, 1));
    let netconf = NetConf::parse(CONF).unwrap();
    let held = m.acquire(&netconf).await.unwrap();
    let (subnet, first_handle) = (held.subnet, held.lease_id);
    let keeper = m.clone();
    tokio::spawn(async move { keeper.keep(held, Arc::new(Notify::new()), shutdown).await });

    store.lock().end(first_handle);
    assert!(store.lock().keys.is_empty());
    until("the same subnet on a new handle", || {
        store
            .lock()
            .keys
            .get(&subnet)
            .is_some_and(|l| l.lease_id != first_handle)
    })
    .await;
    let counters = &m.status().counters;
    assert_eq!(counters.lease_losses.load(Ordering::Relaxed), 1);
    assert_eq!(counters.lease_reacquisitions.load(Ordering::Relaxed), 1);
    assert!(matches!(m.status().lease(), LeaseState::Held { subnet: s, .. } if s == subnet));
}

#[tokio::test(start_paused = true)]
async fn an_unreachable_store_is_waited_for_then_the_lease_acquired() {
    let store = MemoryStore::with_config(CONF);
    store.lock().unreachable = true;
    let m = Arc::new(manager(&store, 1));
    let (_stop, mut shutdown) = watch::channel(false);
    let acquiring = {
        let m = m.clone();
        tokio::spawn(async move {
            let netconf = m.wait_for_netconf(&mut shutdown).await?;
            m.acquire_retrying(&netconf, &mut shutdown).await
        })
    };
    until("waiting for the store is reported", || {
        matches!(m.status().lease(), LeaseState::WaitingForEtcd { .. })
    })
    .await;
    assert!(!acquiring.is_finished());
    store.lock().unreachable = false;
    let held = acquiring.await.unwrap().unwrap();
    assert_eq!(
        store.lock().keys[&held.subnet].attrs.public_ip,
        Ipv4Addr::new(192, 0, 2, 1)
    );
}

#[tokio::test(start_paused = true)]
async fn the_watch_turns_store_changes_into_lease_events_and_flags_our_key() {
    let store = MemoryStore::with_config(CONF);
    let netconf = NetConf::parse(CONF).unwrap();
    let own = manager(&store, 1).acquire(&netconf).await.unwrap();
    let (events_tx, mut events) = mpsc::channel(16);
    let own_changed = Arc::new(Notify::new());
    let (_stop, shutdown) = watch::channel(false);
    tokio::spawn(watch_peers(
        store.clone(),
        Some(own.subnet),
        events_tx,
        Some(own_changed.clone()),
        ControlStatus::new(),
        shutdown,
    ));
    assert_eq!(
        events.recv().await,
        Some(LeaseEvent::Snapshot(vec![])),
        "own key is no peer"
    );
    own_changed.notified().await; // after every (re-)list

    let peer = manager(&store, 2).acquire(&netconf).await.unwrap();
    match events.recv().await {
        Some(LeaseEvent::Upsert(lease)) => {
            assert_eq!(lease.subnet, IpNet::V4(peer.subnet));
            assert_eq!(
                lease.public_ip,
                std::net::IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2))
            );
        }
        other => panic!("expected an upsert, got {other:?}"),
    }
    store.lock().end(peer.lease_id);
    assert_eq!(
        events.recv().await,
        Some(LeaseEvent::Removed(IpNet::V4(peer.subnet)))
    );
    store.lock().end(own.lease_id);
    own_changed.notified().await;
}
