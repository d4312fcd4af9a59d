//! Wiring of one weftd node: settings → underlay → node identity → health endpoint →
//! etcd → lease → subnet.env → data plane, with the lease keeper and the peer watcher
//! running beside the data plane until shutdown.

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use ipnet::Ipv4Net;
use tokio::sync::{mpsc, watch, Notify};
use weft_config::{NetConf, Settings, SubnetEnv};

use crate::health::HealthSources;
use crate::lease::{checked_overlay_mtu, LeaseEvent, LocalLease, MtuTooLarge, PeerEvent};
use crate::metrics::Metrics;
use crate::subnet::manager::{sleep_or_shutdown, Backoff};
use crate::subnet::state::{
    now_unix, LastKnown, LastKnownWriter, LastLease, Restored, LAST_KNOWN_FILE,
};
use crate::subnet::status::{rfc3339_utc, Degraded};
use crate::subnet::{
    watch_peers, ControlStatus, EtcdOptions, HeldLease, LeaseState, ManagerConfig, ManagerError,
    NodeState, Registry, SubnetManager,
};
use crate::underlay::{self, Underlay};

/// How many peer events may wait for the data plane before the watcher waits too.
const PEER_EVENT_QUEUE: usize = 4096;

/// Runs the node until `shutdown` turns true (Ok) or something fails for good (Err,
/// with a message fit for one line on stderr).
pub async fn run(settings: Settings, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    // Our own stop signal: the outer shutdown, or the data plane ending on its own.
    let (stop_tx, stop) = watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    {
        let stop_tx = stop_tx.clone();
        let mut outer = shutdown;
        tokio::spawn(async move {
            while !*outer.borrow() {
                if outer.changed().await.is_err() {
                    break;
                }
            }
            let _ = stop_tx.send(true);
        });
    }
    let (saver, saver_task) =
        LastKnownWriter::spawn(settings.state_dir.clone(), SAVE_DEBOUNCE, stop.clone());
    let result = run_until(settings, saver, stop.clone()).await;
    let _ = stop_tx.send(true);
    // What changed in the last debounce period is written before the process exits.
    if tokio::time::timeout(SAVE_ON_EXIT, saver_task)
        .await
        .is_err()
    {
        tracing::warn!("the last write of the last known state did not finish in time");
    }
    result
}

async fn run_until(
    settings: Settings,
    saver: LastKnownWriter,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let underlay = underlay::resolve(&underlay::Choice::from_settings(&settings))?;
    tracing::info!(iface = %underlay.iface, public_ip = %underlay.public_ip, mtu = underlay.mtu,
        chosen_by = %underlay.chosen_by, "underlay");
    let mut identity = NodeState::load_or_create(&settings.state_dir)?;

    let status = ControlStatus::with_etcd_grace(settings.etcd_grace);
    status.set_etcd_client(crate::subnet::status::EtcdClientView::from_settings(
        &settings,
    ));
    let metrics = Arc::new(Metrics::default());
    let listener = crate::health::bind(settings.healthz_addr).await?;
    tracing::info!(addr = %settings.healthz_addr, "health endpoint listening");
    let sources = HealthSources {
        control: status.clone(),
        dataplane: Some(metrics.clone()),
    };
    tokio::spawn(crate::health::serve(listener, sources, stop.clone()));

    let restored = load_restorable(&settings.state_dir, &underlay, &identity);
    if let Some(restored) = &restored {
        saver.seed(restored, underlay.public_ip);
    }

    let establish = establish(
        &settings,
        &underlay,
        identity.clone(),
        &status,
        restored.as_ref(),
        stop.clone(),
    );
    tokio::pin!(establish);
    // With a usable last known state, etcd gets a moment to answer; if it does not,
    // the data plane comes up from that state and etcd is waited for beside it.
    let mut restored_dataplane: Option<Dataplane> = None;
    let online = match &restored {
        Some(restored) => {
            let early = tokio::select! {
                online = &mut establish => Some(online),
                () = etcd_refused_or(&status, RESTORE_AFTER) => None,
            };
            match early {
                Some(online) => online,
                None if !etcd_never_answered(&status) => (&mut establish).await,
                None => {
                    let mut dataplane = start_restored(
                        &settings, &underlay, &identity, &status, &metrics, &saver, restored,
                    )?;
                    enum Offline {
                        Online(Box<anyhow::Result<Option<Online>>>),
                        Ended(anyhow::Result<()>),
                        Stopped,
                    }
                    let outcome = tokio::select! {
                        online = &mut establish => Offline::Online(Box::new(online)),
                        ended = &mut dataplane.task => Offline::Ended(joined(ended)),
                        () = until_stopped(&mut stop) => Offline::Stopped,
                    };
                    match outcome {
                        Offline::Online(online) => {
                            restored_dataplane = Some(dataplane);
                            *online
                        }
                        Offline::Ended(result) => return result.context("data plane"),
                        Offline::Stopped => return dataplane.stop().await,
                    }
                }
            }
        }
        None => (&mut establish).await,
    };
    let online = match online {
        Ok(Some(online)) => online,
        other => {
            if let Some(dataplane) = restored_dataplane {
                dataplane.stop().await?;
            }
            return other.map(|_| ());
        }
    };
    let Online {
        registry,
        manager,
        netconf,
        netconf_json,
        held,
    } = online;

    identity.last_lease = Some(LastLease {
        network: netconf.network,
        subnet: held.subnet,
        public_ip: underlay.public_ip,
    });
    identity.save(&settings.state_dir)?;

    let lease = local_lease(&netconf, held.subnet, &underlay, &identity)?;
    write_subnet_env(&settings, &lease)?;
    saver.set_netconf(netconf_json, underlay.public_ip);
    tokio::spawn(save_lease_changes(
        status.subscribe_lease(),
        saver.clone(),
        stop.clone(),
    ));

    let own_key_changed = Arc::new(Notify::new());
    let mut lease_states = status.subscribe_lease();
    {
        let manager = manager.clone();
        let notify = own_key_changed.clone();
        let stop = stop.clone();
        tokio::spawn(async move { manager.keep(held, notify, stop).await });
    }

    let mut running = match restored_dataplane {
        Some(dataplane) if dataplane.lease == lease => {
            tracing::info!(
                subnet = %lease.subnet,
                "etcd answers: the last known lease is still this node's; the data plane \
                 keeps running and takes etcd's peers"
            );
            Some(dataplane)
        }
        Some(dataplane) => {
            tracing::warn!(
                saved = %dataplane.lease.subnet, subnet = %lease.subnet,
                "etcd answers with another lease or net-conf than the last known state; \
                 restarting the data plane with it"
            );
            dataplane.stop().await?;
            None
        }
        None => None,
    };
    // Only now: until the restored data plane is confirmed or gone, the node is not
    // ready in the sense of `/readyz`.
    status.set_degraded(None);

    // The data plane (with the peer watcher feeding it) runs while the subnet is ours.
    // When another node's record takes our key, this node stops routing the subnet —
    // two nodes answering for one subnet would split its traffic — and stays not ready
    // until the key is free and the keeper has taken it back.
    loop {
        let mut dataplane = match running.take() {
            Some(dataplane) => dataplane,
            None => Dataplane::start(&settings, lease.clone(), &metrics, &saver),
        };
        let watcher = tokio::spawn(watch_peers(
            registry.clone(),
            Some(lease.subnet),
            dataplane.peers.clone(),
            Some(own_key_changed.clone()),
            status.clone(),
            dataplane.stop_rx.clone(),
        ));
        enum Outcome {
            Ended(anyhow::Result<()>),
            Stopped,
            Conflict(Ipv4Net, Ipv4Addr),
        }
        let outcome = tokio::select! {
            ended = &mut dataplane.task => Outcome::Ended(joined(ended)),
            () = until_stopped(&mut stop) => Outcome::Stopped,
            (subnet, holder) = until_conflict(&mut lease_states) => Outcome::Conflict(subnet, holder),
        };
        let (subnet, holder) = match outcome {
            Outcome::Ended(result) => {
                let _ = dataplane.stop_tx.send(true);
                let _ = watcher.await;
                return result.context("data plane");
            }
            Outcome::Stopped => {
                let result = dataplane.stop().await;
                let _ = watcher.await;
                return result;
            }
            Outcome::Conflict(subnet, holder) => (subnet, holder),
        };
        let result = dataplane.stop().await;
        let _ = watcher.await;
        result?;
        tracing::error!(
            %subnet, %holder,
            "stopped routing this node's subnet: {holder} holds it in etcd now; the data \
             plane stays down (pods on this node are cut off) until the key is free again"
        );
        if !until_held(&mut lease_states, &mut stop).await {
            return Ok(());
        }
        tracing::warn!(%subnet, "this node's subnet is ours again; restarting the data plane");
    }
}

/// How long a node with a usable last known state waits for etcd at start before it
/// brings the data plane up from that state (at once if etcd refuses).
const RESTORE_AFTER: Duration = Duration::from_millis(500);
/// `last-known.json` is written at most this often (a burst of peer events is one write).
const SAVE_DEBOUNCE: Duration = Duration::from_secs(1);
/// How long an exiting weftd waits for the last write of `last-known.json`.
const SAVE_ON_EXIT: Duration = Duration::from_secs(2);

/// What etcd gave: the client, the manager, the net-conf and the lease.
struct Online {
    registry: Registry,
    manager: Arc<SubnetManager>,
    netconf: NetConf,
    netconf_json: String,
    held: HeldLease,
}

/// Connects to etcd, waits for the net-conf and acquires the lease (resuming the last
/// known one if etcd still has it). `None` on shutdown.
async fn establish(
    settings: &Settings,
    underlay: &Underlay,
    identity: NodeState,
    status: &Arc<ControlStatus>,
    restored: Option<&Restored>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<Option<Online>> {
    let Some(registry) = connect(&EtcdOptions::from_settings(settings), status, &mut stop).await?
    else {
        return Ok(None);
    };
    let mut config = ManagerConfig::new(
        underlay.public_ip,
        identity.vtep_mac.0,
        Duration::from_secs(settings.lease_ttl_secs),
    );
    config.renew_margin = settings.subnet_lease_renew_margin;
    config.preferred = preferred_subnets(&identity, settings);
    config.resume = restored.map(|r| (r.subnet, r.lease_id));
    let manager = Arc::new(SubnetManager::new(registry.clone(), config, status.clone()));

    let (netconf, netconf_json) = match manager.wait_for_netconf_json(&mut stop).await {
        Ok(netconf) => netconf,
        Err(ManagerError::Shutdown) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    tracing::info!(network = %netconf.network, backend = netconf.backend.type_name(), "network config");
    let held = match manager.acquire_retrying(&netconf, &mut stop).await {
        Ok(held) => held,
        Err(ManagerError::Shutdown) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    Ok(Some(Online {
        registry,
        manager,
        netconf,
        netconf_json,
        held,
    }))
}

/// The last known state, if it may bring the data plane up without etcd; logs why not
/// otherwise (never fatal: the node then waits for etcd, as without it).
fn load_restorable(dir: &Path, underlay: &Underlay, identity: &NodeState) -> Option<Restored> {
    let path = dir.join(LAST_KNOWN_FILE);
    let unusable = match LastKnown::load(dir) {
        Ok(None) => return None,
        Ok(Some(saved)) => {
            match saved.restorable(underlay.public_ip, identity.last_lease.as_ref(), now_unix()) {
                Ok(restored) => {
                    tracing::info!(
                        path = %path.display(), subnet = %restored.subnet,
                        peers = restored.peers.len(),
                        peers_as_of = %rfc3339_utc(restored.peers_as_of_unix),
                        "last known state usable should etcd not answer"
                    );
                    return Some(restored);
                }
                Err(unusable) => unusable,
            }
        }
        Err((_, unusable)) => unusable,
    };
    tracing::warn!(
        path = %path.display(), reason = %unusable,
        "ignoring the last known state {}: {unusable}; the data plane waits for etcd",
        path.display()
    );
    None
}

/// Returns once etcd has refused a request (the lease state says so) or after `limit`.
async fn etcd_refused_or(status: &ControlStatus, limit: Duration) {
    let mut states = status.subscribe_lease();
    let refused = async {
        loop {
            if matches!(
                &*states.borrow_and_update(),
                Some(LeaseState::WaitingForEtcd { .. })
            ) {
                return;
            }
            if states.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    };
    let _ = tokio::time::timeout(limit, refused).await;
}

/// Whether etcd has not answered this process yet (as opposed to answering without a
/// net-conf: then etcd is the authority and the node waits, as without a saved state).
fn etcd_never_answered(status: &ControlStatus) -> bool {
    matches!(
        status.lease(),
        LeaseState::Starting | LeaseState::WaitingForEtcd { .. }
    )
}

/// Brings the data plane up from the last known state: subnet.env, the lease, the
/// saved peers; the status says degraded.
#[allow(clippy::too_many_arguments)]
fn start_restored(
    settings: &Settings,
    underlay: &Underlay,
    identity: &NodeState,
    status: &ControlStatus,
    metrics: &Arc<Metrics>,
    saver: &LastKnownWriter,
    restored: &Restored,
) -> anyhow::Result<Dataplane> {
    let path = settings.state_dir.join(LAST_KNOWN_FILE);
    tracing::warn!(
        path = %path.display(), subnet = %restored.subnet, peers = restored.peers.len(),
        peers_as_of = %rfc3339_utc(restored.peers_as_of_unix),
        "etcd does not answer; bringing the data plane up from the last known state \
         (degraded until etcd answers)"
    );
    let lease = local_lease(&restored.netconf, restored.subnet, underlay, identity)?;
    write_subnet_env(settings, &lease)?;
    status.set_peers(restored.peers.iter());
    status.set_degraded(Some(Degraded::from_saved_state(
        &path,
        restored.subnet,
        restored.expires_unix,
        restored.peers_as_of_unix,
    )));
    let dataplane = Dataplane::start(settings, lease, metrics, saver);
    // The channel is fresh and far larger than one event: this cannot be full.
    let _ = dataplane
        .peers
        .try_send(LeaseEvent::Snapshot(restored.peers.clone()));
    Ok(dataplane)
}

/// Follows the lease state into `last-known.json`: a held lease is saved (its expiry
/// only when it moved enough), a subnet another node holds now is forgotten.
async fn save_lease_changes(
    mut states: watch::Receiver<Option<LeaseState>>,
    saver: LastKnownWriter,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        match &*states.borrow_and_update() {
            Some(LeaseState::Held {
                subnet,
                lease_id,
                expires_unix,
                ..
            }) => saver.set_lease(*subnet, *lease_id, *expires_unix),
            Some(LeaseState::Conflict { .. }) => saver.forget(),
            _ => {}
        }
        tokio::select! {
            changed = states.changed() => if changed.is_err() { return },
            () = until_stopped(&mut stop) => return,
        }
    }
}

/// A running data plane: its task, its stop signal, and the way in for peer events
/// (through a tee that keeps the last known peers up to date).
struct Dataplane {
    lease: LocalLease,
    stop_tx: watch::Sender<bool>,
    stop_rx: watch::Receiver<bool>,
    peers: mpsc::Sender<LeaseEvent>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Dataplane {
    fn start(
        settings: &Settings,
        lease: LocalLease,
        metrics: &Arc<Metrics>,
        saver: &LastKnownWriter,
    ) -> Dataplane {
        let (stop_tx, stop_rx) = watch::channel(false);
        let (peers_tx, mut peers_rx) = mpsc::channel::<LeaseEvent>(PEER_EVENT_QUEUE);
        let (events_tx, events_rx) = mpsc::channel(PEER_EVENT_QUEUE);
        let saver = saver.clone();
        tokio::spawn(async move {
            while let Some(event) = peers_rx.recv().await {
                saver.apply(&event);
                // The data plane's boundary: it gets the peers it can carry (IPv4).
                let Some(event) = PeerEvent::from_lease_event(&event) else {
                    continue;
                };
                if events_tx.send(event).await.is_err() {
                    return;
                }
            }
        });
        let task = tokio::spawn(crate::dataplane::run_with_metrics(
            settings.clone(),
            lease.clone(),
            events_rx,
            stop_rx.clone(),
            metrics.clone(),
        ));
        Dataplane {
            lease,
            stop_tx,
            stop_rx,
            peers: peers_tx,
            task,
        }
    }

    /// Stops it and waits until it is down.
    async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop_tx.send(true);
        drop(self.peers);
        joined(self.task.await).context("data plane")
    }
}

/// The data plane task's result, a panic or cancellation included.
fn joined(result: Result<anyhow::Result<()>, tokio::task::JoinError>) -> anyhow::Result<()> {
    result.unwrap_or_else(|e| Err(anyhow::anyhow!("the data plane task failed: {e}")))
}

/// Returns when `stop` turns true (or its sender is gone).
async fn until_stopped(stop: &mut watch::Receiver<bool>) {
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

/// Returns the subnet and the other holder once the lease state is a conflict; never
/// returns if the status goes away.
async fn until_conflict(states: &mut watch::Receiver<Option<LeaseState>>) -> (Ipv4Net, Ipv4Addr) {
    loop {
        if let Some(LeaseState::Conflict { subnet, holder }) = &*states.borrow_and_update() {
            return (*subnet, *holder);
        }
        if states.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// Waits until the lease is held again (true) or `stop` turns true (false).
async fn until_held(
    states: &mut watch::Receiver<Option<LeaseState>>,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    loop {
        if matches!(&*states.borrow_and_update(), Some(LeaseState::Held { .. })) {
            return true;
        }
        tokio::select! {
            changed = states.changed() => {
                if changed.is_err() {
                    return false;
                }
            }
            () = until_stopped(stop) => return false,
        }
    }
}

/// Connects to etcd, retrying while it is unreachable. `None` on shutdown.
async fn connect(
    opts: &EtcdOptions,
    status: &ControlStatus,
    stop: &mut watch::Receiver<bool>,
) -> anyhow::Result<Option<Registry>> {
    let mut backoff = Backoff::new();
    loop {
        match Registry::connect(opts).await {
            Ok(registry) => return Ok(Some(registry)),
            Err(e) if e.is_permanent() => return Err(e.into()),
            Err(e) => {
                tracing::warn!(error = %e, "cannot connect to etcd; retrying");
                status.set_lease(LeaseState::WaitingForEtcd {
                    error: e.to_string(),
                });
            }
        }
        if !sleep_or_shutdown(backoff.next_delay(), stop).await {
            return Ok(None);
        }
    }
}

/// The last lease from the state dir, then the subnet of an existing subnet.env.
fn preferred_subnets(identity: &NodeState, settings: &Settings) -> Vec<Ipv4Net> {
    let mut preferred = Vec::new();
    if let Some(last) = &identity.last_lease {
        preferred.push(last.subnet);
    }
    match SubnetEnv::read(&settings.subnet_file) {
        Ok(env) => preferred.push(env.subnet_network()),
        Err(weft_config::subnet_env::SubnetEnvError::Read { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(error = %e, "ignoring the existing subnet.env"),
    }
    preferred.dedup();
    preferred
}

/// The lease as the data plane gets it.
pub fn local_lease(
    netconf: &NetConf,
    subnet: Ipv4Net,
    underlay: &Underlay,
    identity: &NodeState,
) -> Result<LocalLease, MtuTooLarge> {
    Ok(LocalLease {
        netconf: netconf.clone(),
        subnet,
        public_ip: underlay.public_ip,
        vtep_mac: identity.vtep_mac.0,
        underlay_iface: underlay.iface.clone(),
        mtu: checked_overlay_mtu(&underlay.iface, underlay.mtu, netconf)?,
    })
}

/// The gateway of a node subnet: its first host address (`.1` of a /24).
pub fn gateway(subnet: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()).saturating_add(1))
}

fn write_subnet_env(settings: &Settings, lease: &LocalLease) -> anyhow::Result<()> {
    let subnet = Ipv4Net::new(gateway(lease.subnet), lease.subnet.prefix_len())
        .context("gateway address of the subnet")?;
    let env = SubnetEnv {
        network: lease.netconf.network,
        subnet,
        mtu: lease.mtu,
        ipmasq: settings.ip_masq,
    };
    env.write_atomic(&settings.subnet_file)?;
    tracing::info!(path = %settings.subnet_file.display(), subnet = %subnet, mtu = lease.mtu, "wrote subnet.env");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preferred_subnets_are_last_lease_then_subnet_env() {
        let dir = tempfile::tempdir().unwrap();
        let settings = Settings {
            subnet_file: dir.path().join("subnet.env"),
            ..Settings::default()
        };
        let mut identity = NodeState::new_random(&mut rand::rng());
        assert!(preferred_subnets(&identity, &settings).is_empty());

        std::fs::write(
            &settings.subnet_file,
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.8.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
        )
        .unwrap();
        assert_eq!(
            preferred_subnets(&identity, &settings),
            vec!["10.244.8.0/24".parse::<Ipv4Net>().unwrap()]
        );
        identity.last_lease = Some(LastLease {
            network: "10.244.0.0/16".parse().unwrap(),
            subnet: "10.244.9.0/24".parse().unwrap(),
            public_ip: Ipv4Addr::new(192, 0, 2, 9),
        });
        assert_eq!(
            preferred_subnets(&identity, &settings),
            vec![
                "10.244.9.0/24".parse::<Ipv4Net>().unwrap(),
                "10.244.8.0/24".parse().unwrap()
            ]
        );
        // A garbled subnet.env is ignored (logged), not fatal.
        std::fs::write(&settings.subnet_file, "garbage").unwrap();
        assert_eq!(preferred_subnets(&identity, &settings).len(), 1);
    }

    #[test]
    fn gateway_is_first_host() {
        assert_eq!(
            gateway("10.244.7.0/24".parse().unwrap()),
            Ipv4Addr::new(10, 244, 7, 1)
        );
    }
}
