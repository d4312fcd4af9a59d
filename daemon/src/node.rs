//! Wiring of one weftd node: settings → underlay → node identity → health endpoint →
//! etcd → lease → subnet.env → data plane, with the lease keeper and the peer watcher
//! running beside the data plane until shutdown.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use ipnet::Ipv4Net;
use tokio::sync::{mpsc, watch, Notify};
use weft_config::{NetConf, Settings, SubnetEnv};

use crate::health::HealthSources;
use crate::lease::{overlay_mtu, LocalLease};
use crate::metrics::Metrics;
use crate::subnet::manager::{sleep_or_shutdown, Backoff};
use crate::subnet::state::LastLease;
use crate::subnet::{
    watch_peers, ControlStatus, EtcdOptions, LeaseState, ManagerConfig, ManagerError, NodeState,
    Registry, SubnetManager,
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
    let result = run_until(settings, stop.clone()).await;
    let _ = stop_tx.send(true);
    result
}

async fn run_until(settings: Settings, mut stop: watch::Receiver<bool>) -> anyhow::Result<()> {
    let underlay = underlay::resolve(settings.iface.as_deref(), settings.public_ip)?;
    tracing::info!(iface = %underlay.iface, public_ip = %underlay.public_ip, mtu = underlay.mtu, "underlay");
    let mut identity = NodeState::load_or_create(&settings.state_dir)?;

    let status = ControlStatus::with_etcd_grace(settings.etcd_grace);
    let metrics = Arc::new(Metrics::default());
    let listener = crate::health::bind(settings.healthz_addr).await?;
    tracing::info!(addr = %settings.healthz_addr, "health endpoint listening");
    let sources = HealthSources {
        control: status.clone(),
        dataplane: Some(metrics.clone()),
    };
    tokio::spawn(crate::health::serve(listener, sources, stop.clone()));

    let Some(registry) =
        connect(&EtcdOptions::from_settings(&settings), &status, &mut stop).await?
    else {
        return Ok(());
    };
    let mut config = ManagerConfig::new(
        underlay.public_ip,
        identity.vtep_mac.0,
        Duration::from_secs(settings.lease_ttl_secs),
    );
    config.preferred = preferred_subnets(&identity, &settings);
    let manager = Arc::new(SubnetManager::new(registry.clone(), config, status.clone()));

    let netconf = match manager.wait_for_netconf(&mut stop).await {
        Ok(netconf) => netconf,
        Err(ManagerError::Shutdown) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    tracing::info!(network = %netconf.network, backend = netconf.backend.type_name(), "network config");
    let held = match manager.acquire_retrying(&netconf, &mut stop).await {
        Ok(held) => held,
        Err(ManagerError::Shutdown) => return Ok(()),
        Err(e) => return Err(e.into()),
    };

    identity.last_lease = Some(LastLease {
        network: netconf.network,
        subnet: held.subnet,
        public_ip: underlay.public_ip,
    });
    identity.save(&settings.state_dir)?;

    let lease = local_lease(&netconf, held.subnet, &underlay, &identity);
    write_subnet_env(&settings, &lease)?;

    let own_key_changed = Arc::new(Notify::new());
    let mut lease_states = status.subscribe_lease();
    {
        let manager = manager.clone();
        let notify = own_key_changed.clone();
        let stop = stop.clone();
        tokio::spawn(async move { manager.keep(held, notify, stop).await });
    }

    // The data plane (with the peer watcher feeding it) runs while the subnet is ours.
    // When another node's record takes our key, this node stops routing the subnet —
    // two nodes answering for one subnet would split its traffic — and stays not ready
    // until the key is free and the keeper has taken it back.
    loop {
        let (dataplane_stop_tx, dataplane_stop) = watch::channel(false);
        let (events_tx, events_rx) = mpsc::channel(PEER_EVENT_QUEUE);
        let watcher = tokio::spawn(watch_peers(
            registry.clone(),
            Some(lease.subnet),
            events_tx,
            Some(own_key_changed.clone()),
            status.clone(),
            dataplane_stop.clone(),
        ));
        let dataplane = crate::dataplane::run_with_metrics(
            settings.clone(),
            lease.clone(),
            events_rx,
            dataplane_stop,
            metrics.clone(),
        );
        tokio::pin!(dataplane);
        let conflict = tokio::select! {
            result = &mut dataplane => {
                let _ = dataplane_stop_tx.send(true);
                let _ = watcher.await;
                return result.context("data plane");
            }
            () = until_stopped(&mut stop) => None,
            conflict = until_conflict(&mut lease_states) => Some(conflict),
        };
        let _ = dataplane_stop_tx.send(true);
        let result = dataplane.await.context("data plane");
        let _ = watcher.await;
        result?;
        let Some((subnet, holder)) = conflict else {
            return Ok(());
        };
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
) -> LocalLease {
    LocalLease {
        netconf: netconf.clone(),
        subnet,
        public_ip: underlay.public_ip,
        vtep_mac: identity.vtep_mac.0,
        underlay_iface: underlay.iface.clone(),
        mtu: overlay_mtu(underlay.mtu, netconf),
    }
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
