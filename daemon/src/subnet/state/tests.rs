use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::watch;

use super::*;
use crate::lease::{LeaseEvent, Peer, PeerLease};

#[test]
fn identity_survives_reload() {
    let dir = tempfile::tempdir().unwrap();
    let first = NodeState::load_or_create(dir.path()).unwrap();
    assert_eq!(
        first.vtep_mac.0[0] & 0x03,
        0x02,
        "locally administered unicast"
    );
    let mut with_lease = first.clone();
    with_lease.last_lease = Some(LastLease {
        network: "10.244.0.0/16".parse().unwrap(),
        subnet: "10.244.9.0/24".parse().unwrap(),
        public_ip: Ipv4Addr::new(192, 0, 2, 9),
    });
    with_lease.save(dir.path()).unwrap();
    let again = NodeState::load_or_create(dir.path()).unwrap();
    assert_eq!(again, with_lease);
}

#[test]
fn corrupt_state_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(STATE_FILE), b"{").unwrap();
    let err = NodeState::load_or_create(dir.path())
        .unwrap_err()
        .to_string();
    assert!(err.contains(STATE_FILE), "{err}");
}

const NETCONF: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;
const NOW: u64 = 1_796_359_207;

fn peer(third: u8) -> PeerLease {
    PeerLease::from(&Peer {
        subnet: Ipv4Net::new(Ipv4Addr::new(10, 244, third, 0), 24).unwrap(),
        public_ip: Ipv4Addr::new(192, 0, 2, third),
        backend: PeerBackend::Vxlan {
            vni: 1,
            vtep_mac: [2, 0, 0, 0, 0, third],
        },
    })
}

fn saved() -> LastKnown {
    let mut peers: Vec<SavedPeer> = [2, 3].map(|t| SavedPeer::from(&peer(t))).to_vec();
    peers.push(SavedPeer::from(&PeerLease::from(&Peer {
        subnet: "10.244.4.0/24".parse().unwrap(),
        public_ip: Ipv4Addr::new(192, 0, 2, 4),
        backend: PeerBackend::Ipip,
    })));
    peers.push(SavedPeer::from(&PeerLease::from(&Peer {
        subnet: "10.244.5.0/24".parse().unwrap(),
        public_ip: Ipv4Addr::new(192, 0, 2, 5),
        backend: PeerBackend::HostGw,
    })));
    peers.push(SavedPeer::from(&PeerLease::from(&Peer {
        subnet: "10.244.6.0/24".parse().unwrap(),
        public_ip: Ipv4Addr::new(192, 0, 2, 6),
        backend: PeerBackend::Other("udp".into()),
    })));
    LastKnown {
        netconf: NETCONF.into(),
        public_ip: Ipv4Addr::new(192, 0, 2, 1),
        subnet: "10.244.1.0/24".parse().unwrap(),
        lease_id: 0x1234,
        expires_unix: Some(NOW + 3600),
        written_unix: NOW - 60,
        peers,
    }
}

fn last_lease(subnet: &str) -> LastLease {
    LastLease {
        network: "10.244.0.0/16".parse().unwrap(),
        subnet: subnet.parse().unwrap(),
        public_ip: Ipv4Addr::new(192, 0, 2, 1),
    }
}

#[test]
fn last_known_round_trips_and_restores_its_peers() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(LastKnown::load(dir.path()), Ok(None));
    let state = saved();
    state.save(dir.path()).unwrap();
    let loaded = LastKnown::load(dir.path()).unwrap().unwrap();
    assert_eq!(loaded, state);
    let restored = loaded
        .restorable(
            Ipv4Addr::new(192, 0, 2, 1),
            Some(&last_lease("10.244.1.0/24")),
            NOW,
        )
        .unwrap();
    assert_eq!(restored.subnet, state.subnet);
    assert_eq!(restored.lease_id, 0x1234);
    assert_eq!(restored.peers_as_of_unix, NOW - 60);
    assert_eq!(restored.netconf, NetConf::parse(NETCONF).unwrap());
    assert_eq!(restored.peers.len(), 5);
    assert_eq!(restored.peers[0], peer(2));
    assert_eq!(restored.peers[2].backend, PeerBackend::Ipip);
    assert_eq!(restored.peers[3].backend, PeerBackend::HostGw);
    assert_eq!(restored.peers[4].backend, PeerBackend::Other("udp".into()));
    LastKnown::remove(dir.path()).unwrap();
    LastKnown::remove(dir.path()).unwrap();
    assert_eq!(LastKnown::load(dir.path()), Ok(None));
}

#[test]
fn stale_or_foreign_state_is_refused_with_the_reason() {
    let ip = Ipv4Addr::new(192, 0, 2, 1);
    let last = last_lease("10.244.1.0/24");
    let check = |state: LastKnown, last: Option<&LastLease>, now| {
        state.restorable(ip, last, now).unwrap_err().to_string()
    };

    let mut foreign = saved();
    foreign.public_ip = Ipv4Addr::new(192, 0, 2, 2);
    let err = check(foreign, Some(&last), NOW);
    assert!(
        err.contains("192.0.2.2") && err.contains("192.0.2.1"),
        "{err}"
    );

    let mut other_network = saved();
    other_network.netconf = r#"{"Network":"10.50.0.0/16"}"#.into();
    let err = check(other_network, Some(&last), NOW);
    assert!(
        err.contains("10.244.1.0/24") && err.contains("10.50.0.0/16"),
        "{err}"
    );

    let mut bad_netconf = saved();
    bad_netconf.netconf = r#"{"Network":"nope"}"#.into();
    assert!(check(bad_netconf, Some(&last), NOW).contains("net-conf"));

    let err = check(saved(), Some(&last_lease("10.244.9.0/24")), NOW);
    assert!(
        err.contains("10.244.9.0/24") && err.contains(STATE_FILE),
        "{err}"
    );
    assert!(check(saved(), None, NOW).contains("none"));

    let err = check(saved(), Some(&last), NOW + 3600);
    assert!(err.contains("expired"), "{err}");
    // A reservation never expires.
    let mut reservation = saved();
    reservation.lease_id = 0;
    reservation.expires_unix = None;
    assert!(reservation.restorable(ip, Some(&last), u64::MAX).is_ok());
}

#[test]
fn garbage_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(LAST_KNOWN_FILE), b"\x00garbage").unwrap();
    let (path, why) = LastKnown::load(dir.path()).unwrap_err();
    assert!(path.ends_with(LAST_KNOWN_FILE));
    assert!(matches!(why, Unusable::Garbled(_)), "{why}");
    std::fs::write(dir.path().join(LAST_KNOWN_FILE), br#"{"netconf":1}"#).unwrap();
    assert!(LastKnown::load(dir.path()).is_err());
}

#[test]
fn expiry_is_rewritten_only_when_it_lags_a_quarter_of_the_time_left() {
    let day = 24 * 3600;
    // A keep-alive 10 s later: not worth a write.
    assert!(!expiry_worth_saving(
        Some(NOW + day),
        Some(NOW + day + 10),
        NOW + 10
    ));
    // Six hours and a bit later: the saved one lags more than a quarter.
    let later = NOW + 6 * 3600 + 60;
    assert!(expiry_worth_saving(
        Some(NOW + day),
        Some(later + day),
        later
    ));
    // An expiry moving backwards is never written (the saved one stays early).
    assert!(!expiry_worth_saving(Some(NOW + day), Some(NOW + 10), NOW));
    assert!(expiry_worth_saving(None, Some(NOW + day), NOW));
    assert!(expiry_worth_saving(Some(NOW + day), None, NOW));
    assert!(!expiry_worth_saving(None, None, NOW));
}

#[test]
fn peer_events_change_the_set_only_when_it_changes() {
    let mut peers = BTreeMap::new();
    assert!(apply_peer_event(&mut peers, &LeaseEvent::Upsert(peer(2))));
    assert!(!apply_peer_event(&mut peers, &LeaseEvent::Upsert(peer(2))));
    let snapshot = LeaseEvent::Snapshot(vec![peer(2), peer(3)]);
    assert!(apply_peer_event(&mut peers, &snapshot));
    assert!(!apply_peer_event(&mut peers, &snapshot));
    assert!(apply_peer_event(
        &mut peers,
        &LeaseEvent::Removed(peer(3).subnet)
    ));
    assert!(!apply_peer_event(
        &mut peers,
        &LeaseEvent::Removed(peer(3).subnet)
    ));
    assert_eq!(peers.len(), 1);
}

#[tokio::test]
async fn a_burst_of_5000_peer_events_is_one_write() {
    let dir = tempfile::tempdir().unwrap();
    let (stop_tx, stop) = watch::channel(false);
    let (writer, task) =
        LastKnownWriter::spawn(dir.path().to_owned(), Duration::from_millis(200), stop);
    writer.set_netconf(NETCONF.into(), Ipv4Addr::new(192, 0, 2, 1));
    writer.set_lease("10.244.1.0/24".parse().unwrap(), 7, Some(NOW));
    let file = dir.path().join(LAST_KNOWN_FILE);
    let mut writes = 0;
    let mut last_modified = None;
    let start = std::time::Instant::now();
    for i in 0..5000u32 {
        let subnet = Ipv4Net::new(Ipv4Addr::from(0x0a00_0000 | (i << 8)), 24).unwrap();
        writer.apply(&LeaseEvent::Upsert(PeerLease::from(&Peer {
            subnet,
            public_ip: Ipv4Addr::from(0xc000_0200 + i),
            backend: PeerBackend::Ipip,
        })));
        if i % 500 == 0 {
            tokio::task::yield_now().await;
            let modified = std::fs::metadata(&file).and_then(|m| m.modified()).ok();
            if modified != last_modified {
                writes += u32::from(modified.is_some());
                last_modified = modified;
            }
        }
    }
    let burst = start.elapsed();
    // The debounce ends and one write lands.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let state = loop {
        if let Ok(Some(state)) = LastKnown::load(dir.path()) {
            if state.peers.len() == 5000 {
                break state;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no write of all 5000 peers"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(state.lease_id, 7);
    if burst < Duration::from_millis(200) {
        assert_eq!(writes, 0, "nothing written during the burst ({burst:?})");
    }
    // Stop writes what is pending: a removal after a conflict.
    writer.forget();
    stop_tx.send(true).unwrap();
    task.await.unwrap();
    assert!(!file.exists(), "removed on stop, before the task ended");
}

#[test]
fn saved_peers_keep_public_ipv6_and_read_files_without_it() {
    let mut lease = peer(2);
    lease.public_ipv6 = Some("2001:db8::2".parse().unwrap());
    let json = serde_json::to_string(&SavedPeer::from(&lease)).unwrap();
    assert!(json.contains("\"public_ipv6\":\"2001:db8::2\""), "{json}");
    let back: SavedPeer = serde_json::from_str(&json).unwrap();
    assert_eq!(PeerLease::from(&back), lease);

    // A file written before the field existed (IPv4 only).
    let old = r#"{"subnet":"10.244.2.0/24","public_ip":"192.0.2.2","backend":{"type":"ipip"}}"#;
    let back: SavedPeer = serde_json::from_str(old).unwrap();
    assert_eq!(back.public_ipv6, None);
    assert_eq!(
        back.subnet,
        "10.244.2.0/24".parse::<ipnet::IpNet>().unwrap()
    );
    assert!(!serde_json::to_string(&back)
        .unwrap()
        .contains("public_ipv6"));
}
