//! The subnet lease manager against a real etcd (the harness's, on loopback): subnet
//! allocation under races, restarts, expiry and revocation, reservations, flannel
//! interoperability of the records, and the watch across compaction and etcd restarts.
//! In-process managers; no network namespaces needed.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use tokio::sync::{mpsc, watch, Notify};
use weft_daemon::lease::{LeaseEvent, Peer, PeerBackend, PeerEvent};
use weft_daemon::subnet::manager::default_renew_interval;
use weft_daemon::subnet::{
    watch_peers, AcquiredHow, ControlStatus, EtcdOptions, HeldLease, ManagerConfig, ManagerError,
    NodeState, Registry, SubnetManager,
};
use weft_tests::etcd::Etcd;

const PREFIX: &str = "/coreos.com/network";
const VXLAN_CONF: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":1}}"#;

fn start_etcd(netconf: &str) -> Etcd {
    let etcd = Etcd::start().expect("start etcd");
    etcd.put(&format!("{PREFIX}/config"), netconf)
        .expect("put config");
    etcd
}

fn options(etcd: &Etcd) -> EtcdOptions {
    EtcdOptions {
        endpoints: vec![etcd.endpoint()],
        prefix: PREFIX.into(),
        ..EtcdOptions::default()
    }
}

fn node_ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, n)
}

fn mac(n: u8) -> [u8; 6] {
    [0x02, 0, 0, 0, 0, n]
}

async fn manager_with(etcd: &Etcd, config: ManagerConfig) -> SubnetManager {
    let registry = Registry::connect(&options(etcd)).await.expect("connect");
    SubnetManager::new(registry, config, ControlStatus::new())
}

async fn manager(etcd: &Etcd, n: u8, ttl: Duration) -> SubnetManager {
    manager_with(etcd, ManagerConfig::new(node_ip(n), mac(n), ttl)).await
}

async fn acquire(m: &SubnetManager) -> HeldLease {
    let (_tx, mut shutdown) = watch::channel(false);
    let netconf = m.wait_for_netconf(&mut shutdown).await.expect("netconf");
    m.acquire(&netconf).await.expect("acquire")
}

/// Polls `f` until it yields `Some`, failing after `timeout` (no fixed sleeps: the
/// pause between polls is only a polling interval).
async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = f().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The subnet keys in etcd as (subnet → PublicIP).
async fn etcd_state(registry: &Registry) -> BTreeMap<Ipv4Net, Ipv4Addr> {
    let (stored, _) = registry.list_subnets().await.expect("list");
    stored
        .into_iter()
        .map(|s| (s.subnet, s.attrs.public_ip))
        .collect()
}

/// A data plane stand-in: applies peer events, as the data plane gets them, to a map.
fn collect_peers(mut events: mpsc::Receiver<LeaseEvent>) -> Arc<Mutex<BTreeMap<Ipv4Net, Peer>>> {
    let peers = Arc::new(Mutex::new(BTreeMap::new()));
    let sink = peers.clone();
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            let Some(event) = PeerEvent::from_lease_event(&event) else {
                continue;
            };
            let mut map = sink.lock().unwrap();
            match event {
                PeerEvent::Snapshot(all) => {
                    map.clear();
                    map.extend(all.into_iter().map(|p| (p.subnet, p)));
                }
                PeerEvent::Upsert(peer) => {
                    map.insert(peer.subnet, peer);
                }
                PeerEvent::Removed(subnet) => {
                    map.remove(&subnet);
                }
            }
        }
    });
    peers
}

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_managers_get_distinct_subnets_in_the_network() {
    let etcd = start_etcd(VXLAN_CONF);
    let a = acquire(&manager(&etcd, 1, Duration::from_secs(60)).await).await;
    let b = acquire(&manager(&etcd, 2, Duration::from_secs(60)).await).await;
    assert_ne!(a.subnet, b.subnet);
    for held in [&a, &b] {
        assert_eq!(held.subnet.prefix_len(), 24);
        assert!(net("10.244.0.0/16").contains(&held.subnet));
        // flannel's default SubnetMin skips the network's first subnet.
        assert_ne!(held.subnet, net("10.244.0.0/24"));
        assert_ne!(held.lease_id, 0, "a normal lease has an etcd lease (TTL)");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_managers_get_distinct_subnets_retrying_lost_races() {
    // 21 subnets for 20 nodes starting at once: collisions are all but certain, so the
    // retry path runs; the counters prove it did.
    let etcd = start_etcd(
        r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.1.0","SubnetMax":"10.244.21.0","Backend":{"Type":"vxlan"}}"#,
    );
    let mut managers = Vec::new();
    for n in 1..=20 {
        managers.push(Arc::new(manager(&etcd, n, Duration::from_secs(60)).await));
    }
    let start = Arc::new(tokio::sync::Barrier::new(managers.len()));
    let tasks: Vec<_> = managers
        .iter()
        .map(|m| {
            let m = m.clone();
            let start = start.clone();
            tokio::spawn(async move {
                start.wait().await;
                acquire(&m).await.subnet
            })
        })
        .collect();
    let mut subnets = Vec::new();
    for task in tasks {
        subnets.push(task.await.expect("acquire task"));
    }
    let distinct: std::collections::BTreeSet<_> = subnets.iter().collect();
    assert_eq!(distinct.len(), 20, "subnets: {subnets:?}");
    let retries: u64 = managers
        .iter()
        .map(|m| m.status().counters.race_retries.load(Ordering::Relaxed))
        .sum();
    eprintln!("20 managers, 21 subnets: {retries} lost races retried");
    assert!(retries > 0, "the race-retry path was not exercised");

    // etcd agrees: 20 keys, each with its own node's PublicIP.
    let state = etcd_state(managers[0].store()).await;
    assert_eq!(state.len(), 20);
    let ips: std::collections::BTreeSet<_> = state.values().collect();
    assert_eq!(ips.len(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_network_is_a_clear_error() {
    let etcd = start_etcd(
        r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.1.0","SubnetMax":"10.244.2.0"}"#,
    );
    acquire(&manager(&etcd, 1, Duration::from_secs(60)).await).await;
    acquire(&manager(&etcd, 2, Duration::from_secs(60)).await).await;
    let third = manager(&etcd, 3, Duration::from_secs(60)).await;
    let (_tx, mut shutdown) = watch::channel(false);
    let netconf = third.wait_for_netconf(&mut shutdown).await.unwrap();
    let err = third.acquire(&netconf).await.unwrap_err();
    assert!(
        matches!(err, ManagerError::Exhausted { capacity: 2, .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("10.244.0.0/16") && text.contains("all 2 subnets"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_subnet_and_vtep_mac() {
    let etcd = start_etcd(VXLAN_CONF);
    let state_dir = tempfile::tempdir().unwrap();

    // First run: a new identity, a new lease, both persisted as weftd does.
    let mut identity = NodeState::load_or_create(state_dir.path()).unwrap();
    let first = acquire(
        &manager_with(
            &etcd,
            ManagerConfig::new(node_ip(7), identity.vtep_mac.0, Duration::from_secs(60)),
        )
        .await,
    )
    .await;
    identity.last_lease = Some(weft_daemon::subnet::state::LastLease {
        network: first.netconf.network,
        subnet: first.subnet,
        public_ip: node_ip(7),
    });
    identity.save(state_dir.path()).unwrap();

    // Restart with the lease still in etcd: found by PublicIP.
    let reloaded = NodeState::load_or_create(state_dir.path()).unwrap();
    assert_eq!(
        reloaded.vtep_mac, identity.vtep_mac,
        "VTEP MAC must survive"
    );
    let second = acquire(
        &manager_with(
            &etcd,
            ManagerConfig::new(node_ip(7), reloaded.vtep_mac.0, Duration::from_secs(60)),
        )
        .await,
    )
    .await;
    assert_eq!(second.subnet, first.subnet);
    assert_eq!(second.how, AcquiredHow::Existing);

    // Restart after the key vanished (e.g. expired during a long outage): the state
    // dir's last lease is preferred, so the subnet is still the same.
    let registry = Registry::connect(&options(&etcd)).await.unwrap();
    registry.revoke(second.lease_id).await.unwrap();
    assert!(registry.get_subnet(first.subnet).await.unwrap().is_none());
    let mut config = ManagerConfig::new(node_ip(7), reloaded.vtep_mac.0, Duration::from_secs(60));
    config.preferred = vec![reloaded.last_lease.as_ref().unwrap().subnet];
    let third = acquire(&manager_with(&etcd, config).await).await;
    assert_eq!(third.subnet, first.subnet);
    assert_eq!(third.how, AcquiredHow::Preferred);

    // And the record in etcd carries the persisted MAC.
    let stored = registry.get_subnet(first.subnet).await.unwrap().unwrap();
    assert_eq!(
        stored.attrs.vxlan_data().unwrap().vtep_mac,
        identity.vtep_mac
    );
}

/// Runs a node's keeper and watcher (as weftd does) for a held lease.
fn keep_and_watch(
    m: Arc<SubnetManager>,
    held: HeldLease,
    shutdown: watch::Receiver<bool>,
) -> Arc<Mutex<BTreeMap<Ipv4Net, Peer>>> {
    let notify = Arc::new(Notify::new());
    let (tx, rx) = mpsc::channel(1024);
    tokio::spawn(watch_peers(
        m.store().clone(),
        Some(held.subnet),
        tx,
        Some(notify.clone()),
        m.status().clone(),
        shutdown.clone(),
    ));
    let keeper = m.clone();
    tokio::spawn(async move { keeper.keep(held, notify, shutdown).await });
    collect_peers(rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_lease_is_reacquired_as_the_same_subnet() {
    let etcd = start_etcd(VXLAN_CONF);
    // Keep-alives far apart from a 2 s TTL: the lease expires between them, like a
    // node that was paused or cut off for longer than its TTL.
    let ttl = Duration::from_secs(2);
    let mut config = ManagerConfig::new(node_ip(9), mac(9), ttl);
    config.renew_interval = Duration::from_secs(30);
    let m = Arc::new(manager_with(&etcd, config).await);
    let held = acquire(&m).await;
    let subnet = held.subnet;
    let first_lease = held.lease_id;
    let (_stop_tx, stop) = watch::channel(false);
    keep_and_watch(m.clone(), held, stop);

    let registry = m.store().clone();
    let lease_now = eventually(
        "the lease to expire and be re-acquired",
        Duration::from_secs(20),
        || {
            let registry = registry.clone();
            let m = m.clone();
            async move {
                let reacquired = m
                    .status()
                    .counters
                    .lease_reacquisitions
                    .load(Ordering::Relaxed);
                let current = registry.get_subnet(subnet).await.ok()??;
                (reacquired >= 1 && current.lease_id != first_lease).then_some(current)
            }
        },
    )
    .await;
    assert_eq!(lease_now.attrs.public_ip, node_ip(9));
    assert!(m.status().counters.lease_losses.load(Ordering::Relaxed) >= 1);
    assert!(registry
        .time_to_live(lease_now.lease_id)
        .await
        .unwrap()
        .is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_lease_is_reacquired_as_the_same_subnet() {
    let etcd = start_etcd(VXLAN_CONF);
    let m = Arc::new(manager(&etcd, 10, Duration::from_secs(60)).await);
    let held = acquire(&m).await;
    let (subnet, revoked) = (held.subnet, held.lease_id);
    let (_stop_tx, stop) = watch::channel(false);
    keep_and_watch(m.clone(), held, stop);

    // An operator revokes it with etcdctl (lease IDs in hex there).
    etcd.etcdctl(&["lease", "revoke", &format!("{revoked:x}")])
        .expect("etcdctl lease revoke");
    let registry = m.store().clone();
    let current = eventually(
        "the revoked lease to be re-acquired",
        Duration::from_secs(15),
        || {
            let registry = registry.clone();
            async move {
                let current = registry.get_subnet(subnet).await.ok()??;
                (current.lease_id != revoked).then_some(current)
            }
        },
    )
    .await;
    assert_eq!(current.attrs.public_ip, node_ip(10));
    assert_eq!(
        m.status()
            .counters
            .lease_reacquisitions
            .load(Ordering::Relaxed),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservation_is_honoured_and_never_gets_a_ttl() {
    let etcd = start_etcd(VXLAN_CONF);
    // An operator reserves 10.244.200.0/24 for 192.0.2.11: a key without a lease.
    let key = format!("{PREFIX}/subnets/10.244.200.0-24");
    etcd.put(
        &key,
        r#"{"PublicIP":"192.0.2.11","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:99"}}"#,
    )
    .unwrap();
    let mut config = ManagerConfig::new(node_ip(11), mac(11), Duration::from_secs(60));
    config.renew_interval = Duration::from_millis(200);
    let m = Arc::new(manager_with(&etcd, config).await);
    let held = acquire(&m).await;
    assert_eq!(held.subnet, net("10.244.200.0/24"));
    assert_eq!(held.how, AcquiredHow::Reservation);
    assert_eq!(held.lease_id, 0);

    let (_stop_tx, stop) = watch::channel(false);
    keep_and_watch(m.clone(), held, stop);
    // Several keep cycles later the key is still lease-less, with our current MAC.
    let registry = m.store().clone();
    eventually("a few keep cycles", Duration::from_secs(10), || {
        let status = m.status().clone();
        async move {
            let s = status.lease();
            matches!(
                s,
                weft_daemon::subnet::LeaseState::Held {
                    reservation: true,
                    ..
                }
            )
            .then_some(())
        }
    })
    .await;
    let stored = registry.get_subnet(held_subnet()).await.unwrap().unwrap();
    assert!(
        stored.is_reservation(),
        "the reservation must not get a TTL"
    );
    assert_eq!(stored.attrs.vxlan_data().unwrap().vtep_mac.0, mac(11));
    fn held_subnet() -> Ipv4Net {
        net("10.244.200.0/24")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_written_like_flanneld_is_a_peer_and_ours_reads_like_flannels() {
    let etcd = start_etcd(VXLAN_CONF);
    let m = Arc::new(manager(&etcd, 12, Duration::from_secs(60)).await);
    let held = acquire(&m).await;
    let (_stop_tx, stop) = watch::channel(false);
    let peers = keep_and_watch(m.clone(), held.clone(), stop);

    // Exactly what flanneld's etcd registry does: grant a lease, put the record on it.
    let lease = etcd.lease_grant(86400).unwrap();
    etcd.put_with_lease(
        &format!("{PREFIX}/subnets/10.244.99.0-24"),
        r#"{"PublicIP":"192.0.2.99","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"f6:3e:1a:9b:0c:d2"}}"#,
        &lease,
    )
    .unwrap();
    let peer = eventually(
        "the flanneld lease as a peer",
        Duration::from_secs(10),
        || {
            let peers = peers.clone();
            async move { peers.lock().unwrap().get(&net("10.244.99.0/24")).cloned() }
        },
    )
    .await;
    assert_eq!(peer.public_ip, Ipv4Addr::new(192, 0, 2, 99));
    assert_eq!(
        peer.backend,
        PeerBackend::Vxlan {
            vni: 1,
            vtep_mac: [0xf6, 0x3e, 0x1a, 0x9b, 0x0c, 0xd2]
        }
    );
    assert!(
        !peers.lock().unwrap().contains_key(&held.subnet),
        "own subnet is not a peer"
    );

    // Our own record, read back raw, has flannel's field names and shapes.
    let key = format!("{PREFIX}/subnets/{}-24", held.subnet.network());
    let raw = etcd.get(&key).unwrap().expect("own key");
    let json: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(json["PublicIP"], "192.0.2.12");
    assert!(json["PublicIPv6"].is_null());
    assert_eq!(json["BackendType"], "vxlan");
    assert_eq!(json["BackendData"]["VNI"], 1);
    assert_eq!(json["BackendData"]["VtepMAC"], "02:00:00:00:00:0c");
    assert_eq!(
        raw,
        r#"{"PublicIP":"192.0.2.12","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:0c"}}"#
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_loses_nothing_across_etcd_restart_and_compaction() {
    let mut etcd = start_etcd(VXLAN_CONF);
    let registry = Registry::connect(&options(&etcd)).await.unwrap();
    let record = |n: u8| {
        format!(
            r#"{{"PublicIP":"192.0.2.{n}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"02:00:00:00:00:{n:02x}"}}}}"#
        )
    };
    let key = |n: u8| format!("{PREFIX}/subnets/10.244.{n}.0-24");
    for n in 1..=5 {
        etcd.put(&key(n), &record(n)).unwrap();
    }
    let status = ControlStatus::new();
    let (tx, rx) = mpsc::channel(1024);
    let (_stop_tx, stop) = watch::channel(false);
    tokio::spawn(watch_peers(
        registry.clone(),
        None,
        tx,
        None,
        status.clone(),
        stop,
    ));
    let peers = collect_peers(rx);
    let seen = |peers: &Arc<Mutex<BTreeMap<Ipv4Net, Peer>>>| -> BTreeMap<Ipv4Net, Ipv4Addr> {
        peers
            .lock()
            .unwrap()
            .values()
            .map(|p| (p.subnet, p.public_ip))
            .collect()
    };
    eventually("the initial five peers", Duration::from_secs(10), || {
        let n = seen(&peers).len();
        async move { (n == 5).then_some(()) }
    })
    .await;

    // etcd goes away and comes back; while the watcher reconnects, leases change and
    // the history is compacted, so a watch resuming from its old revision would fail.
    etcd.restart().unwrap();
    etcd.etcdctl(&["del", &key(1)]).unwrap();
    etcd.put(&key(2), &record(22)).unwrap();
    for n in 6..=8 {
        etcd.put(&key(n), &record(n)).unwrap();
    }
    let revision: serde_json::Value =
        serde_json::from_str(&etcd.etcdctl(&["get", "x", "-w", "json"]).unwrap()).unwrap();
    let revision = revision["header"]["revision"].as_i64().unwrap();
    etcd.etcdctl(&["compaction", &revision.to_string()])
        .unwrap();
    etcd.etcdctl(&["del", &key(3)]).unwrap();

    let want = etcd_state(&registry).await;
    assert_eq!(want.len(), 6);
    eventually(
        "the peer set to equal etcd's state",
        Duration::from_secs(20),
        || {
            let got = seen(&peers);
            let want = want.clone();
            async move { (got == want).then_some(()) }
        },
    )
    .await;
    assert!(
        status.counters.watch_restarts.load(Ordering::Relaxed) >= 1,
        "the watch must have been re-established"
    );
    assert_eq!(
        seen(&peers)[&net("10.244.2.0/24")],
        Ipv4Addr::new(192, 0, 2, 22)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_config_is_waited_for_and_invalid_config_is_an_error() {
    let etcd = Etcd::start().unwrap();
    let m = Arc::new(manager(&etcd, 13, Duration::from_secs(60)).await);
    let (_stop_tx, stop) = watch::channel(false);
    let waiter = {
        let m = m.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move { m.wait_for_netconf(&mut stop).await })
    };
    eventually(
        "the manager to report it waits for the config",
        Duration::from_secs(10),
        || {
            let state = m.status().lease();
            async move {
                matches!(
                    state,
                    weft_daemon::subnet::LeaseState::WaitingForConfig { .. }
                )
                .then_some(())
            }
        },
    )
    .await;
    etcd.put(&format!("{PREFIX}/config"), VXLAN_CONF).unwrap();
    let netconf = waiter.await.unwrap().unwrap();
    assert_eq!(netconf.network, net("10.244.0.0/16"));

    etcd.put(
        &format!("{PREFIX}/config"),
        r#"{"Network":"10.244.0.0/33"}"#,
    )
    .unwrap();
    let mut stop = stop.clone();
    let err = m.wait_for_netconf(&mut stop).await.unwrap_err().to_string();
    assert!(err.contains("/coreos.com/network/config"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_auth_with_username_and_password() {
    let etcd = start_etcd(VXLAN_CONF);
    etcd.etcdctl(&["user", "add", "root:weft-test-pw"]).unwrap();
    etcd.etcdctl(&["auth", "enable"]).unwrap();
    let with_user = |password: &str| EtcdOptions {
        username: Some("root".into()),
        password: Some(password.into()),
        ..options(&etcd)
    };

    let registry = Registry::connect(&with_user("weft-test-pw")).await.unwrap();
    let m = SubnetManager::new(
        registry,
        ManagerConfig::new(node_ip(14), mac(14), Duration::from_secs(60)),
        ControlStatus::new(),
    );
    let held = acquire(&m).await;
    assert!(net("10.244.0.0/16").contains(&held.subnet));

    // A wrong password or none at all is refused, as an error that retrying cannot fix
    // (weftd exits with it instead of retrying forever).
    let err = Registry::connect(&with_user("wrong")).await.unwrap_err();
    assert!(err.is_permanent(), "{err}");
    let anonymous = Registry::connect(&options(&etcd)).await.unwrap();
    let err = anonymous.get_config().await.unwrap_err();
    assert!(err.is_permanent(), "{err}");
    assert!(err.to_string().contains(&etcd.endpoint()), "{err}");
}

#[test]
fn default_renew_interval_is_well_before_expiry() {
    assert_eq!(
        default_renew_interval(Duration::from_secs(3)),
        Duration::from_secs(1)
    );
    assert!(default_renew_interval(Duration::from_secs(86400)) <= Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weftctl_leases_shows_ttl_and_reservations() {
    let etcd = start_etcd(VXLAN_CONF);
    etcd.put(
        &format!("{PREFIX}/subnets/10.244.201.0-24"),
        r#"{"PublicIP":"192.0.2.201","PublicIPv6":null,"BackendType":"ipip"}"#,
    )
    .unwrap();
    let held = acquire(&manager(&etcd, 15, Duration::from_secs(3600)).await).await;
    let out = std::process::Command::new(weft_tests::bin_path("weftctl"))
        .args(["leases", "--etcd-endpoints", &etcd.endpoint()])
        .output()
        .expect("run weftctl (cargo build --bins first)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8(out.stdout).unwrap();
    let line_of = |needle: &str| {
        table
            .lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle} in\n{table}"))
            .to_owned()
    };
    assert!(table.starts_with("SUBNET"), "{table}");
    let reserved = line_of("10.244.201.0/24");
    assert!(
        reserved.contains("192.0.2.201") && reserved.contains("ipip"),
        "{reserved}"
    );
    assert!(reserved.trim_end().ends_with("reserved"), "{reserved}");
    let ours = line_of(&held.subnet.to_string());
    assert!(
        ours.contains("vxlan (VNI 1)") && ours.contains("02:00:00:00:00:0f"),
        "{ours}"
    );
    // An hour's TTL, a moment after it was granted.
    let expiry = ours.split_whitespace().last().unwrap_or_default();
    assert!(expiry.starts_with("59m") || expiry == "1h00m", "{ours}");

    // Piped into a reader that is gone (`weftctl leases | head -0`): it ends on SIGPIPE
    // like other Unix tools, without a panic on stderr.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = std::process::Command::new(weft_tests::bin_path("weftctl"))
        .args(["leases", "--etcd-endpoints", &etcd.endpoint()])
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&out.status),
        Some(libc::SIGPIPE),
        "{:?} {err}",
        out.status
    );

    // Unreachable etcd: one clear line and a non-zero exit.
    let out = std::process::Command::new(weft_tests::bin_path("weftctl"))
        .args(["leases", "--etcd-endpoints", "http://127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("weftctl: etcd at http://127.0.0.1:1"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_outage_degrades_readiness_but_keeps_the_lease() {
    let mut etcd = start_etcd(VXLAN_CONF);
    // Time scaled down: a 500 ms grace instead of 10 s, keep-alives every 200 ms.
    let status = ControlStatus::with_etcd_grace(Duration::from_millis(500));
    let registry = Registry::connect(&options(&etcd)).await.unwrap();
    let mut config = ManagerConfig::new(node_ip(16), mac(16), Duration::from_secs(60));
    config.renew_interval = Duration::from_millis(200);
    let m = Arc::new(SubnetManager::new(registry, config, status.clone()));
    let held = acquire(&m).await;
    let (subnet, lease_id) = (held.subnet, held.lease_id);
    let (_stop_tx, stop) = watch::channel(false);
    keep_and_watch(m.clone(), held, stop);
    let readiness = |status: &Arc<ControlStatus>| status.readiness();

    etcd.stop();
    let reason = eventually("readiness to degrade", Duration::from_secs(20), || {
        let r = readiness(&status);
        async move {
            match r {
                weft_daemon::subnet::Readiness::NotReady(reason) => Some(reason),
                weft_daemon::subnet::Readiness::Ready => None,
            }
        }
    })
    .await;
    assert!(reason.contains("etcd unreachable"), "{reason}");
    // The lease is not given up while etcd is away: the data plane keeps routing.
    assert!(
        matches!(status.lease(), weft_daemon::subnet::LeaseState::Held { subnet: s, .. } if s == subnet),
        "{:?}",
        status.lease()
    );

    etcd.restart().unwrap();
    let renewals = status.counters.lease_renewals.load(Ordering::Relaxed);
    eventually(
        "readiness to recover and renewals to resume",
        Duration::from_secs(20),
        || {
            let ready = readiness(&status) == weft_daemon::subnet::Readiness::Ready;
            let renewed = status.counters.lease_renewals.load(Ordering::Relaxed) > renewals;
            async move { (ready && renewed).then_some(()) }
        },
    )
    .await;
    let stored = m
        .store()
        .get_subnet(subnet)
        .await
        .unwrap()
        .expect("key kept");
    assert_eq!(
        stored.lease_id, lease_id,
        "same etcd lease, no re-acquisition"
    );
    assert_eq!(status.counters.lease_losses.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subnet_taken_by_another_node_is_reported_then_taken_back_when_freed() {
    let etcd = start_etcd(VXLAN_CONF);
    let mut config = ManagerConfig::new(node_ip(17), mac(17), Duration::from_secs(60));
    config.renew_interval = Duration::from_millis(200);
    let m = Arc::new(manager_with(&etcd, config).await);
    let held = acquire(&m).await;
    let subnet = held.subnet;
    let (_stop_tx, stop) = watch::channel(false);
    keep_and_watch(m.clone(), held, stop);

    // Someone overwrites our key with another node's record.
    let key = format!("{PREFIX}/subnets/{}-24", subnet.network());
    etcd.put(
        &key,
        r#"{"PublicIP":"192.0.2.77","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:77"}}"#,
    )
    .unwrap();
    let status = m.status().clone();
    eventually(
        "the conflict to be reported",
        Duration::from_secs(10),
        || {
            let state = status.lease();
            async move {
                (state
                    == weft_daemon::subnet::LeaseState::Conflict {
                        subnet,
                        holder: Ipv4Addr::new(192, 0, 2, 77),
                    })
                .then_some(())
            }
        },
    )
    .await;
    let weft_daemon::subnet::Readiness::NotReady(reason) = status.readiness() else {
        panic!("a node whose subnet is taken must not be ready");
    };
    assert!(reason.contains("192.0.2.77"), "{reason}");
    // It does not fight over the key.
    let current = m.store().get_subnet(subnet).await.unwrap().unwrap();
    assert_eq!(current.attrs.public_ip, Ipv4Addr::new(192, 0, 2, 77));

    // The other node gives it up: the subnet comes back to us.
    etcd.etcdctl(&["del", &key]).unwrap();
    let registry = m.store().clone();
    eventually(
        "the subnet to be taken back",
        Duration::from_secs(10),
        || {
            let registry = registry.clone();
            let ready = status.readiness() == weft_daemon::subnet::Readiness::Ready;
            async move {
                let current = registry.get_subnet(subnet).await.ok()??;
                (ready && current.attrs.public_ip == node_ip(17)).then_some(())
            }
        },
    )
    .await;
}
