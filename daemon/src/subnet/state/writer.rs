//! [`LastKnownWriter`]: keeps `last-known.json` up to date, debounced.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net};
use tokio::sync::{watch, Notify};

use super::*;
use crate::lease::{LeaseEvent, PeerLease};

/// Keeps [`LastKnown`] up to date in `--state-dir`: the lease (from the lease keeper's
/// state) and the peers (every [`PeerEvent`] the data plane gets passes through
/// [`LastKnownWriter::apply`]). Changes only mark the state dirty; a task writes it at
/// most once per debounce period, so a burst of peer events (a re-list of 5,000 peers)
/// is one write, and writes once more on shutdown.
#[derive(Debug, Clone)]
pub struct LastKnownWriter {
    shared: Arc<WriterShared>,
}

#[derive(Debug)]
struct WriterShared {
    dir: PathBuf,
    pending: Mutex<Pending>,
    wake: Notify,
}

#[derive(Debug, Default)]
struct Pending {
    netconf: Option<String>,
    public_ip: Option<Ipv4Addr>,
    /// subnet, lease id, expiry.
    lease: Option<(Ipv4Net, i64, Option<u64>)>,
    peers: BTreeMap<IpNet, PeerLease>,
    dirty: bool,
    /// The file must go (the subnet is not ours any more).
    remove: bool,
}

impl LastKnownWriter {
    /// Starts the writing task for `dir`; it ends (after a last write of what is
    /// pending) when `stop` turns true. Await the handle to know that write is done.
    pub fn spawn(
        dir: PathBuf,
        debounce: Duration,
        stop: watch::Receiver<bool>,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let shared = Arc::new(WriterShared {
            dir,
            pending: Mutex::default(),
            wake: Notify::new(),
        });
        let task = tokio::spawn(write_loop(shared.clone(), debounce, stop));
        (LastKnownWriter { shared }, task)
    }

    fn pending(&self) -> MutexGuard<'_, Pending> {
        // Plain data: a panic elsewhere cannot leave it half-updated in a harmful way.
        self.shared
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn changed(&self, mut pending: MutexGuard<'_, Pending>) {
        pending.dirty = true;
        drop(pending);
        self.shared.wake.notify_one();
    }

    /// Starts from a restored state, as it is on disk (nothing to write).
    pub fn seed(&self, restored: &Restored, public_ip: Ipv4Addr) {
        let mut pending = self.pending();
        pending.netconf = Some(restored.netconf_json.clone());
        pending.public_ip = Some(public_ip);
        pending.lease = Some((restored.subnet, restored.lease_id, restored.expires_unix));
        pending.peers = restored
            .peers
            .iter()
            .map(|p| (p.subnet, p.clone()))
            .collect();
    }

    /// The net-conf (as stored in etcd) and PublicIP the lease belongs to.
    pub fn set_netconf(&self, netconf_json: String, public_ip: Ipv4Addr) {
        let mut pending = self.pending();
        if pending.netconf.as_ref() == Some(&netconf_json) && pending.public_ip == Some(public_ip) {
            return;
        }
        pending.netconf = Some(netconf_json);
        pending.public_ip = Some(public_ip);
        self.changed(pending);
    }

    /// The lease as the keeper holds it now; written when it differs enough from the
    /// saved one ([`expiry_worth_saving`]).
    pub fn set_lease(&self, subnet: Ipv4Net, lease_id: i64, expires_unix: Option<u64>) {
        let mut pending = self.pending();
        let worth = match pending.lease {
            Some((saved_subnet, saved_id, saved_expiry)) => {
                saved_subnet != subnet
                    || saved_id != lease_id
                    || expiry_worth_saving(saved_expiry, expires_unix, now_unix())
            }
            None => true,
        };
        if !worth {
            return;
        }
        pending.lease = Some((subnet, lease_id, expires_unix));
        pending.remove = false;
        self.changed(pending);
    }

    /// The subnet is not this node's any more: no start without etcd from it.
    pub fn forget(&self) {
        let mut pending = self.pending();
        if pending.lease.take().is_some() {
            pending.remove = true;
            self.changed(pending);
        }
    }

    /// Applies one peer event (the same the data plane gets); marks the state dirty only
    /// when the peer set changed.
    pub fn apply(&self, event: &LeaseEvent) {
        let mut pending = self.pending();
        let changed = apply_peer_event(&mut pending.peers, event);
        if changed {
            self.changed(pending);
        }
    }

    /// The state as it would be written now (`None` without a lease).
    fn snapshot(pending: &Pending) -> Option<LastKnown> {
        let (subnet, lease_id, expires_unix) = pending.lease?;
        Some(LastKnown {
            netconf: pending.netconf.clone()?,
            public_ip: pending.public_ip?,
            subnet,
            lease_id,
            expires_unix,
            written_unix: now_unix(),
            peers: pending.peers.values().map(SavedPeer::from).collect(),
        })
    }
}

/// Applies `event` to `peers`; true when the set changed.
pub fn apply_peer_event(peers: &mut BTreeMap<IpNet, PeerLease>, event: &LeaseEvent) -> bool {
    match event {
        LeaseEvent::Upsert(peer) => peers.insert(peer.subnet, peer.clone()).as_ref() != Some(peer),
        LeaseEvent::Removed(subnet) => peers.remove(subnet).is_some(),
        LeaseEvent::Snapshot(all) => {
            let new: BTreeMap<IpNet, PeerLease> =
                all.iter().map(|p| (p.subnet, p.clone())).collect();
            if *peers == new {
                return false;
            }
            *peers = new;
            true
        }
    }
}

async fn write_loop(
    shared: Arc<WriterShared>,
    debounce: Duration,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let stopping = tokio::select! {
            () = shared.wake.notified() => {
                // Let the rest of a burst arrive; it goes into the same write.
                tokio::select! {
                    () = tokio::time::sleep(debounce) => false,
                    () = stopped(&mut stop) => true,
                }
            }
            () = stopped(&mut stop) => true,
        };
        flush(&shared).await;
        if stopping {
            return;
        }
    }
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

async fn flush(shared: &Arc<WriterShared>) {
    enum Job {
        Write(LastKnown),
        Remove,
    }
    let job = {
        let mut pending = shared.pending.lock().unwrap_or_else(|e| e.into_inner());
        if !std::mem::take(&mut pending.dirty) {
            return;
        }
        if std::mem::take(&mut pending.remove) && pending.lease.is_none() {
            Job::Remove
        } else {
            match LastKnownWriter::snapshot(&pending) {
                Some(state) => Job::Write(state),
                None => return,
            }
        }
    };
    let dir = shared.dir.clone();
    let result = tokio::task::spawn_blocking(move || match job {
        Job::Write(state) => state.save(&dir),
        Job::Remove => LastKnown::remove(&dir),
    })
    .await;
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot update the last known state"),
        Err(e) => tracing::warn!(error = %e, "writing the last known state failed"),
    }
}
