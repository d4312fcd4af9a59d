//! The lease life cycle stepped by hand: observations in, actions out, a fake clock.
//! No store, no I/O.

use std::net::Ipv6Addr;
use std::time::UNIX_EPOCH;

use weft_proto::lease::MacAddr;

use super::*;

const CONF: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":1}}"#;
const TTL: Duration = Duration::from_secs(60);
const RENEW: Duration = Duration::from_secs(10);

/// A clock that moves only when told to.
struct Clock {
    start: Instant,
    elapsed: Duration,
}

impl Clock {
    fn new() -> Self {
        Clock {
            start: Instant::now(),
            elapsed: Duration::ZERO,
        }
    }

    fn now(&self) -> Now {
        Now {
            mono: self.start + self.elapsed,
            wall: UNIX_EPOCH + Duration::from_secs(1_700_000_000) + self.elapsed,
        }
    }

    fn unix(&self) -> u64 {
        1_700_000_000 + self.elapsed.as_secs()
    }

    fn advance(&mut self, by: Duration) {
        self.elapsed += by;
    }
}

fn me() -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, 1)
}

fn other() -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, 2)
}

const MY_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 1]);

fn net(text: &str) -> Ipv4Net {
    text.parse().unwrap()
}

fn netconf() -> NetConf {
    NetConf::parse(CONF).unwrap()
}

fn config() -> ManagerConfig {
    ManagerConfig::new(me(), MY_MAC.0, TTL)
}

fn names() -> StoreNames {
    StoreNames {
        config: "/coreos.com/network/config".into(),
        leases: "/coreos.com/network/subnets/".into(),
    }
}

fn my_record() -> LeaseAttrs {
    LeaseAttrs::vxlan(me(), 1, MY_MAC)
}

fn stored(subnet: &str, attrs: LeaseAttrs, lease_id: LeaseId, mod_revision: i64) -> StoredLease {
    StoredLease {
        subnet: net(subnet),
        attrs,
        lease_id,
        mod_revision,
    }
}

fn theirs(subnet: &str, lease_id: LeaseId) -> StoredLease {
    stored(
        subnet,
        LeaseAttrs::vxlan(other(), 1, MacAddr([2, 0, 0, 0, 0, 2])),
        lease_id,
        1,
    )
}

/// The one store request among `actions` (at most one per step).
fn request(actions: &[Action]) -> &Action {
    let requests: Vec<&Action> = actions
        .iter()
        .filter(|a| {
            !matches!(
                a,
                Action::WakeAt(_)
                    | Action::Report(_)
                    | Action::Count(_)
                    | Action::Release(_)
                    | Action::ConfigReady { .. }
                    | Action::Acquired(_)
                    | Action::Fail(_)
            )
        })
        .collect();
    assert_eq!(
        requests.len(),
        1,
        "exactly one store request in {actions:?}"
    );
    requests[0]
}

fn no_request(actions: &[Action]) {
    assert!(
        actions.iter().all(|a| matches!(
            a,
            Action::WakeAt(_) | Action::Report(_) | Action::Count(_) | Action::Release(_)
        )),
        "no store request expected: {actions:?}"
    );
}

fn created_subnet(actions: &[Action]) -> Ipv4Net {
    match request(actions) {
        Action::Create { subnet, attrs, ttl } => {
            assert_eq!(*ttl, Some(TTL), "a lease is created with the TTL");
            assert_eq!(attrs.public_ip, me());
            *subnet
        }
        other => panic!("expected a create, got {other:?}"),
    }
}

fn acquired_lease(actions: &[Action]) -> HeldLease {
    actions
        .iter()
        .find_map(|a| match a {
            Action::Acquired(held) => Some(held.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no lease acquired in {actions:?}"))
}

fn wake_at(actions: &[Action]) -> Instant {
    actions
        .iter()
        .find_map(|a| match a {
            Action::WakeAt(at) => Some(*at),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no timer in {actions:?}"))
}

fn reports(actions: &[Action]) -> Vec<&LeaseState> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Report(state) => Some(state),
            _ => None,
        })
        .collect()
}

fn counts(actions: &[Action]) -> Vec<Counter> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Count(counter) => Some(*counter),
            _ => None,
        })
        .collect()
}

fn released(actions: &[Action]) -> Vec<LeaseId> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Release(id) => Some(*id),
            _ => None,
        })
        .collect()
}

fn failure(actions: Vec<Action>) -> ManagerError {
    actions
        .into_iter()
        .find_map(|a| match a {
            Action::Fail(error) => Some(error),
            _ => None,
        })
        .expect("a failure")
}

/// A machine that has read the config and sent its first list.
fn listing(config: ManagerConfig, clock: &Clock) -> LeaseMachine {
    let mut machine = LeaseMachine::with_netconf(config, names(), 7, netconf());
    let actions = machine.step(Observation::Start, clock.now());
    assert!(matches!(request(&actions), Action::ListLeases));
    machine
}

/// A machine holding `subnet` on `lease_id`, waiting to renew.
fn holding(subnet: &str, lease_id: LeaseId, clock: &Clock) -> LeaseMachine {
    let held = HeldLease {
        netconf: netconf(),
        subnet: net(subnet),
        lease_id,
        how: AcquiredHow::New,
    };
    let mut machine = LeaseMachine::holding(config(), names(), held);
    let actions = machine.step(Observation::Start, clock.now());
    assert_eq!(wake_at(&actions), clock.now().mono + RENEW);
    machine
}

#[test]
fn first_acquire_reads_the_config_lists_creates_and_publishes() {
    let clock = Clock::new();
    let mut machine = LeaseMachine::new(config(), names(), 1);
    let actions = machine.step(Observation::Start, clock.now());
    assert!(matches!(request(&actions), Action::ReadConfig));

    let actions = machine.step(Observation::ConfigRead(Some(CONF.into())), clock.now());
    assert!(
        matches!(&actions[0], Action::ConfigReady { netconf: n, json } if *n == netconf() && json == CONF)
    );
    assert!(matches!(request(&actions), Action::ListLeases));

    let actions = machine.step(
        Observation::Listed(vec![theirs("10.244.0.0/24", 3)]),
        clock.now(),
    );
    let subnet = created_subnet(&actions);
    assert!(netconf().network.contains(&subnet));
    assert_ne!(subnet, net("10.244.0.0/24"), "a taken subnet is not tried");
    match request(&actions) {
        Action::Create { attrs, .. } => assert_eq!(*attrs, my_record(), "flannel's record"),
        _ => unreachable!(),
    }

    let actions = machine.step(
        Observation::Claimed(Claim::Won { lease_id: 42 }),
        clock.now(),
    );
    let held = acquired_lease(&actions);
    assert_eq!(
        (held.subnet, held.lease_id, held.how),
        (subnet, 42, AcquiredHow::New)
    );
    assert_eq!(
        reports(&actions),
        [&LeaseState::Held {
            subnet,
            public_ip: me(),
            reservation: false,
            lease_id: 42,
            expires_unix: Some(clock.unix() + 60),
        }]
    );
    assert_eq!(
        wake_at(&actions),
        clock.now().mono + RENEW,
        "renewal scheduled"
    );
    assert_eq!(machine.held(), Some(&held));
}

#[test]
fn missing_config_is_waited_for_with_backoff_and_invalid_config_fails() {
    let mut clock = Clock::new();
    let mut machine = LeaseMachine::new(config(), names(), 1);
    machine.step(Observation::Start, clock.now());
    let actions = machine.step(Observation::ConfigRead(None), clock.now());
    no_request(&actions);
    assert_eq!(
        reports(&actions),
        [&LeaseState::WaitingForConfig {
            key: "/coreos.com/network/config".into()
        }]
    );
    assert_eq!(
        wake_at(&actions),
        clock.now().mono + Duration::from_millis(100)
    );
    clock.advance(Duration::from_millis(100));
    let actions = machine.step(Observation::TimerFired, clock.now());
    assert!(matches!(request(&actions), Action::ReadConfig));
    let actions = machine.step(Observation::ConfigRead(None), clock.now());
    assert_eq!(
        wake_at(&actions),
        clock.now().mono + Duration::from_millis(200),
        "the backoff doubles"
    );
    clock.advance(Duration::from_millis(200));
    machine.step(Observation::TimerFired, clock.now());
    let error = failure(machine.step(
        Observation::ConfigRead(Some("{\"Network\":\"nope\"}".into())),
        clock.now(),
    ));
    assert!(
        matches!(&error, ManagerError::BadConfig { key, .. } if key == "/coreos.com/network/config"),
        "{error}"
    );
    assert!(machine.is_done());
}

#[test]
fn renewal_reports_the_new_expiry_and_schedules_the_next() {
    let mut clock = Clock::new();
    let mut machine = holding("10.244.5.0/24", 42, &clock);
    clock.advance(RENEW);
    let actions = machine.step(Observation::TimerFired, clock.now());
    assert!(matches!(request(&actions), Action::Renew(42)));
    let actions = machine.step(Observation::Renewed(Some(59)), clock.now());
    assert_eq!(counts(&actions), [Counter::Renewal]);
    assert_eq!(
        reports(&actions),
        [&LeaseState::Held {
            subnet: net("10.244.5.0/24"),
            public_ip: me(),
            reservation: false,
            lease_id: 42,
            expires_unix: Some(clock.unix() + 59),
        }]
    );
    assert_eq!(wake_at(&actions), clock.now().mono + RENEW);
}

#[test]
fn lost_lease_is_reacquired_with_the_same_subnet() {
    let mut clock = Clock::new();
    let mut machine = holding("10.244.5.0/24", 42, &clock);
    clock.advance(RENEW);
    machine.step(Observation::TimerFired, clock.now());
    let actions = machine.step(Observation::Renewed(None), clock.now());
    assert_eq!(counts(&actions), [Counter::Loss]);
    assert!(
        matches!(reports(&actions)[..], [LeaseState::Lost { subnet, .. }] if *subnet == net("10.244.5.0/24"))
    );
    assert_eq!(
        created_subnet(&actions),
        net("10.244.5.0/24"),
        "the same subnet"
    );

    let actions = machine.step(
        Observation::Claimed(Claim::Won { lease_id: 43 }),
        clock.now(),
    );
    assert_eq!(counts(&actions), [Counter::Reacquisition]);
    assert!(matches!(
        reports(&actions)[..],
        [LeaseState::Held { lease_id: 43, .. }]
    ));
    let held = machine.held().unwrap();
    assert_eq!((held.subnet, held.lease_id), (net("10.244.5.0/24"), 43));
    // Healthy again: the next check is a plain renewal of the new lease.
    clock.advance(RENEW);
    let actions = machine.step(Observation::TimerFired, clock.now());
    assert!(matches!(request(&actions), Action::Renew(43)));
}

#[test]
fn a_changed_key_is_read_and_a_deleted_key_recreated() {
    let clock = Clock::new();
    let mut machine = holding("10.244.5.0/24", 42, &clock);
    let actions = machine.step(Observation::KeyChanged, clock.now());
    assert!(matches!(request(&actions), Action::GetLease(s) if *s == net("10.244.5.0/24")));
    let actions = machine.step(Observation::LeaseRead(None), clock.now());
    assert_eq!(created_subnet(&actions), net("10.244.5.0/24"));
}

#[test]
fn recreate_finding_our_own_record_moves_it_to_a_fresh_lease() {
    let clock = Clock::new();
    let mut machine = holding("10.244.5.0/24", 42, &clock);
    machine.step(Observation::TimerFired, clock.now());
    machine.step(Observation::Renewed(None), clock.now());
    // Our earlier instance (same PublicIP) wrote the key meanwhile, on lease 30.
    let ours = stored("10.244.5.0/24", my_record(), 30, 9);
    let actions = machine.step(
        Observation::Claimed(Claim::Lost { holder: Some(ours) }),
        clock.now(),
    );
    assert!(matches!(
        request(&actions),
        Action::Replace {
            binding: Binding::Fresh(TTL),
            expected_revision: 9,
            ..
        }
    ));
    let actions = machine.step(Observation::Replaced(Some(44)), clock.now());
    assert_eq!(released(&actions), [30], "the old lease holds nothing now");
    assert_eq!(machine.held().unwrap().lease_id, 44);
}

#[test]
fn a_reservation_for_this_node_is_used_and_never_renewed() {
    let mut clock = Clock::new();
    let mut machine = listing(config(), &clock);
    let reservation = stored("10.244.77.0/24", my_record(), 0, 4);
    let own_lease = stored("10.244.8.0/24", my_record(), 12, 5);
    let actions = machine.step(
        Observation::Listed(vec![own_lease, reservation]),
        clock.now(),
    );
    let held = acquired_lease(&actions);
    assert_eq!(
        (held.subnet, held.lease_id, held.how),
        (net("10.244.77.0/24"), 0, AcquiredHow::Reservation),
        "the reservation wins over a lease of ours"
    );
    assert!(matches!(
        reports(&actions)[..],
        [LeaseState::Held {
            reservation: true,
            expires_unix: None,
            ..
        }]
    ));

    // Keeping a reservation reads its key; it is never renewed nor given a TTL.
    clock.advance(RENEW);
    let actions = machine.step(Observation::TimerFired, clock.now());
    assert!(matches!(request(&actions), Action::GetLease(_)));
    let actions = machine.step(
        Observation::LeaseRead(Some(stored("10.244.77.0/24", my_record(), 0, 4))),
        clock.now(),
    );
    no_request(&actions);
    assert!(matches!(
        reports(&actions)[..],
        [LeaseState::Held {
            reservation: true,
            ..
        }]
    ));
}

#[test]
fn a_reservation_with_stale_attributes_is_refreshed_without_a_ttl() {
    let clock = Clock::new();
    let mut machine = listing(config(), &clock);
    let old_mac = LeaseAttrs::vxlan(me(), 1, MacAddr([2, 9, 9, 9, 9, 9]));
    let actions = machine.step(
        Observation::Listed(vec![stored("10.244.77.0/24", old_mac, 0, 4)]),
        clock.now(),
    );
    match request(&actions) {
        Action::Replace {
            attrs,
            binding,
            expected_revision,
            ..
        } => {
            assert_eq!(*attrs, my_record());
            assert_eq!(*binding, Binding::Reservation);
            assert_eq!(*expected_revision, 4);
        }
        other => panic!("expected a replace, got {other:?}"),
    }
    let actions = machine.step(Observation::Replaced(Some(0)), clock.now());
    assert_eq!(acquired_lease(&actions).how, AcquiredHow::Reservation);
}

#[test]
fn public_ipv6_of_an_existing_record_is_kept_when_rewriting_it() {
    let clock = Clock::new();
    let mut machine = listing(config(), &clock);
    let v6: Ipv6Addr = "2001:db8::1".parse().unwrap();
    let mut old = LeaseAttrs::vxlan(me(), 1, MacAddr([2, 9, 9, 9, 9, 9]));
    old.public_ipv6 = Some(v6);
    let actions = machine.step(
        Observation::Listed(vec![stored("10.244.77.0/24", old, 0, 4)]),
        clock.now(),
    );
    assert!(
        matches!(request(&actions), Action::Replace { attrs, .. } if attrs.public_ipv6 == Some(v6))
    );
}

#[test]
fn an_existing_lease_moves_to_a_fresh_ttl_and_the_old_one_is_released() {
    let clock = Clock::new();
    let mut machine = listing(config(), &clock);
    let actions = machine.step(
        Observation::Listed(vec![stored("10.244.8.0/24", my_record(), 12, 5)]),
        clock.now(),
    );
    assert!(matches!(
        request(&actions),
        Action::Replace {
            binding: Binding::Fresh(TTL),
            expected_revision: 5,
            ..
        }
    ));
    // Someone changed it meanwhile: list again.
    let actions = machine.step(Observation::Replaced(None), clock.now());
    assert!(matches!(request(&actions), Action::ListLeases));
    machine.step(
        Observation::Listed(vec![stored("10.244.8.0/24", my_record(), 12, 6)]),
        clock.now(),
    );
    let actions = machine.step(Observation::Replaced(Some(13)), clock.now());
    assert_eq!(released(&actions), [12]);
    let held = acquired_lease(&actions);
    assert_eq!(
        (held.subnet, held.lease_id, held.how),
        (net("10.244.8.0/24"), 13, AcquiredHow::Existing)
    );
}

#[test]
fn own_lease_outside_the_network_is_deleted_then_a_new_one_taken() {
    let clock = Clock::new();
    let mut machine = listing(config(), &clock);
    let actions = machine.step(
        Observation::Listed(vec![stored("10.99.8.0/24", my_record(), 12, 5)]),
        clock.now(),
    );
    assert!(matches!(
        request(&actions),
        Action::Delete { subnet, expected_revision: 5 } if *subnet == net("10.99.8.0/24")
    ));
    let actions = machine.step(Observation::Deleted(true), clock.now());
    assert!(matches!(request(&actions), Action::ListLeases));
    let actions = machine.step(Observation::Listed(vec![]), clock.now());
    assert!(netconf().network.contains(&created_subnet(&actions)));
}

#[test]
fn lost_race_is_retried_with_another_subnet() {
    let clock = Clock::new();
    let mut cfg = config();
    cfg.preferred = vec![net("10.244.9.0/24")];
    let mut machine = listing(cfg, &clock);
    let actions = machine.step(Observation::Listed(vec![]), clock.now());
    assert_eq!(
        created_subnet(&actions),
        net("10.244.9.0/24"),
        "the preferred subnet first"
    );
    let actions = machine.step(
        Observation::Claimed(Claim::Lost {
            holder: Some(theirs("10.244.9.0/24", 3)),
        }),
        clock.now(),
    );
    assert_eq!(counts(&actions), [Counter::RaceRetry]);
    assert!(matches!(request(&actions), Action::ListLeases));
    // The winner's key may not be listed yet: the lost subnet is excluded anyway.
    let actions = machine.step(Observation::Listed(vec![]), clock.now());
    let second = created_subnet(&actions);
    assert_ne!(second, net("10.244.9.0/24"));
    let actions = machine.step(
        Observation::Claimed(Claim::Won { lease_id: 5 }),
        clock.now(),
    );
    let held = acquired_lease(&actions);
    assert_eq!((held.subnet, held.how), (second, AcquiredHow::New));
}

#[test]
fn endless_lost_races_give_up_with_a_clear_error() {
    let clock = Clock::new();
    let mut machine = listing(config(), &clock);
    let mut actions = machine.step(Observation::Listed(vec![]), clock.now());
    for _ in 1..MAX_ACQUIRE_ATTEMPTS {
        created_subnet(&actions);
        machine.step(
            Observation::Claimed(Claim::Lost { holder: None }),
            clock.now(),
        );
        actions = machine.step(Observation::Listed(vec![]), clock.now());
    }
    let actions = machine.step(
        Observation::Claimed(Claim::Lost { holder: None }),
        clock.now(),
    );
    let error = failure(actions);
    assert!(matches!(
        error,
        ManagerError::TooManyRaces {
            attempts: MAX_ACQUIRE_ATTEMPTS,
            ..
        }
    ));
}

#[test]
fn exhausted_network_names_the_range_and_the_prefix() {
    let clock = Clock::new();
    let conf = r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.1.0","SubnetMax":"10.244.2.0"}"#;
    let mut machine =
        LeaseMachine::with_netconf(config(), names(), 1, NetConf::parse(conf).unwrap());
    machine.step(Observation::Start, clock.now());
    let error = failure(machine.step(
        Observation::Listed(vec![theirs("10.244.1.0/24", 1), theirs("10.244.2.0/24", 2)]),
        clock.now(),
    ));
    assert!(
        matches!(
            error,
            ManagerError::Exhausted {
                capacity: 2,
                taken: 2,
                ..
            }
        ),
        "{error}"
    );
    assert!(
        error.to_string().contains("/coreos.com/network/subnets/"),
        "{error}"
    );
}

#[test]
fn store_unreachable_while_acquiring_backs_off_then_acquires() {
    let mut clock = Clock::new();
    let mut machine = listing(config(), &clock);
    let actions = machine.step(
        Observation::StoreUnreachable("connection refused".into()),
        clock.now(),
    );
    no_request(&actions);
    assert_eq!(
        reports(&actions),
        [&LeaseState::WaitingForEtcd {
            error: "connection refused".into()
        }]
    );
    assert_eq!(
        wake_at(&actions),
        clock.now().mono + Duration::from_millis(100)
    );
    clock.advance(Duration::from_millis(100));
    let actions = machine.step(Observation::TimerFired, clock.now());
    assert!(matches!(request(&actions), Action::ListLeases));
    let actions = machine.step(
        Observation::StoreUnreachable("timed out".into()),
        clock.now(),
    );
    assert_eq!(
        wake_at(&actions),
        clock.now().mono + Duration::from_millis(200)
    );
    clock.advance(Duration::from_millis(200));
    machine.step(Observation::TimerFired, clock.now());
    let actions = machine.step(Observation::Listed(vec![]), clock.now());
    let subnet = created_subnet(&actions);
    let actions = machine.step(
        Observation::Claimed(Claim::Won { lease_id: 1 }),
        clock.now(),
    );
    assert_eq!(acquired_lease(&actions).subnet, subnet);
}

#[test]
fn store_unreachable_while_holding_keeps_the_subnet_then_renews() {
    let mut clock = Clock::new();
    let mut machine = holding("10.244.5.0/24", 42, &clock);
    for _ in 0..3 {
        clock.advance(RENEW);
        let actions = machine.step(Observation::TimerFired, clock.now());
        assert!(matches!(request(&actions), Action::Renew(42)));
        let actions = machine.step(
            Observation::StoreUnreachable("timed out".into()),
            clock.now(),
        );
        no_request(&actions);
        assert!(counts(&actions).is_empty(), "an outage is not a loss");
        assert!(
            reports(&actions).is_empty(),
            "the lease stays held: {actions:?}"
        );
        assert_eq!(wake_at(&actions), clock.now().mono + RENEW);
    }
    clock.advance(RENEW);
    machine.step(Observation::TimerFired, clock.now());
    let actions = machine.step(Observation::Renewed(Some(20)), clock.now());
    assert!(matches!(
        reports(&actions)[..],
        [LeaseState::Held { lease_id: 42, .. }]
    ));
    assert_eq!(machine.held().unwrap().subnet, net("10.244.5.0/24"));
}

#[test]
fn resume_keeps_the_last_known_lease_untouched() {
    let clock = Clock::new();
    let mut cfg = config();
    cfg.resume = Some((net("10.244.5.0/24"), 42));
    let mut machine = LeaseMachine::with_netconf(cfg.clone(), names(), 1, netconf());
    let actions = machine.step(Observation::Start, clock.now());
    assert!(matches!(request(&actions), Action::GetLease(s) if *s == net("10.244.5.0/24")));
    let actions = machine.step(
        Observation::LeaseRead(Some(stored("10.244.5.0/24", my_record(), 42, 3))),
        clock.now(),
    );
    assert!(matches!(request(&actions), Action::CheckTimeLeft(42)));
    let actions = machine.step(Observation::TimeLeft(Some(30)), clock.now());
    let held = acquired_lease(&actions);
    assert_eq!((held.lease_id, held.how), (42, AcquiredHow::Resumed));

    // On another lease: acquire as usual.
    let mut machine = LeaseMachine::with_netconf(cfg, names(), 1, netconf());
    machine.step(Observation::Start, clock.now());
    let actions = machine.step(
        Observation::LeaseRead(Some(stored("10.244.5.0/24", my_record(), 41, 3))),
        clock.now(),
    );
    assert!(matches!(request(&actions), Action::ListLeases));
}

#[test]
fn another_node_at_our_key_is_a_conflict_until_it_lets_go() {
    let mut clock = Clock::new();
    let mut machine = holding("10.244.5.0/24", 42, &clock);
    machine.step(Observation::KeyChanged, clock.now());
    let actions = machine.step(
        Observation::LeaseRead(Some(theirs("10.244.5.0/24", 7))),
        clock.now(),
    );
    no_request(&actions);
    assert_eq!(
        reports(&actions),
        [&LeaseState::Conflict {
            subnet: net("10.244.5.0/24"),
            holder: other()
        }]
    );
    // While in trouble, every check reads the key first.
    clock.advance(RENEW);
    let actions = machine.step(Observation::TimerFired, clock.now());
    assert!(matches!(request(&actions), Action::GetLease(_)));
    let actions = machine.step(Observation::LeaseRead(None), clock.now());
    assert_eq!(created_subnet(&actions), net("10.244.5.0/24"));
    let actions = machine.step(
        Observation::Claimed(Claim::Won { lease_id: 50 }),
        clock.now(),
    );
    assert!(matches!(
        reports(&actions)[..],
        [LeaseState::Held { lease_id: 50, .. }]
    ));
}

#[test]
fn a_key_change_during_a_renewal_is_checked_right_after() {
    let clock = Clock::new();
    let mut machine = holding("10.244.5.0/24", 42, &clock);
    machine.step(Observation::TimerFired, clock.now());
    let actions = machine.step(Observation::KeyChanged, clock.now());
    assert!(actions.is_empty(), "one request at a time: {actions:?}");
    let actions = machine.step(Observation::Renewed(Some(60)), clock.now());
    assert!(matches!(request(&actions), Action::GetLease(_)));
}

#[test]
fn our_key_rewritten_on_another_lease_is_followed() {
    let clock = Clock::new();
    let mut machine = holding("10.244.5.0/24", 42, &clock);
    machine.step(Observation::KeyChanged, clock.now());
    let actions = machine.step(
        Observation::LeaseRead(Some(stored("10.244.5.0/24", my_record(), 77, 8))),
        clock.now(),
    );
    assert!(matches!(request(&actions), Action::Renew(77)));
    assert_eq!(machine.held().unwrap().lease_id, 77);
}

#[test]
fn shutdown_ends_the_machine_without_requests() {
    let clock = Clock::new();
    let mut machine = holding("10.244.5.0/24", 42, &clock);
    assert!(machine.step(Observation::Shutdown, clock.now()).is_empty());
    assert!(machine.is_done());
    assert!(machine
        .step(Observation::TimerFired, clock.now())
        .is_empty());
}

/// flanneld's `--subnet-lease-renew-margin`: between renewals the store is probed for
/// the time left, and the renewal comes when no more than the margin is left.
#[test]
fn the_renew_margin_renews_that_long_before_expiry_and_probes_meanwhile() {
    let mut clock = Clock::new();
    let held = HeldLease {
        netconf: netconf(),
        subnet: net("10.244.5.0/24"),
        lease_id: 42,
        how: AcquiredHow::New,
    };
    let mut config = config();
    config.renew_margin = Duration::from_secs(25);
    let mut machine = LeaseMachine::holding(config, names(), held);
    machine.step(Observation::Start, clock.now());
    // The expiry is unknown at first: renew.
    clock.advance(RENEW);
    let actions = machine.step(Observation::TimerFired, clock.now());
    assert!(matches!(request(&actions), Action::Renew(42)));
    let actions = machine.step(Observation::Renewed(Some(60)), clock.now());
    assert_eq!(wake_at(&actions), clock.now().mono + RENEW);
    // 50 s and 40 s left: more than the margin, so only the time left is read.
    for left in [50, 40] {
        clock.advance(RENEW);
        let actions = machine.step(Observation::TimerFired, clock.now());
        assert!(
            matches!(request(&actions), Action::CheckTimeLeft(42)),
            "{actions:?}"
        );
        let actions = machine.step(Observation::TimeLeft(Some(left)), clock.now());
        no_request(&actions);
        assert!(counts(&actions).is_empty(), "no renewal with {left} s left");
        assert!(matches!(
            reports(&actions)[..],
            [LeaseState::Held { expires_unix: Some(at), .. }] if *at == clock.unix() + left as u64
        ));
    }
    // The next wake-up is the due time itself (25 s before expiry), not a whole
    // interval later.
    clock.advance(RENEW);
    machine.step(Observation::TimerFired, clock.now());
    let actions = machine.step(Observation::TimeLeft(Some(30)), clock.now());
    assert_eq!(wake_at(&actions), clock.now().mono + Duration::from_secs(5));
    clock.advance(Duration::from_secs(5));
    let actions = machine.step(Observation::TimerFired, clock.now());
    assert!(
        matches!(request(&actions), Action::Renew(42)),
        "{actions:?}"
    );
    let actions = machine.step(Observation::Renewed(Some(60)), clock.now());
    assert_eq!(counts(&actions), [Counter::Renewal]);
    // A probe that finds the lease gone takes the subnet back at once.
    clock.advance(RENEW);
    machine.step(Observation::TimerFired, clock.now());
    let actions = machine.step(Observation::TimeLeft(None), clock.now());
    assert!(
        matches!(request(&actions), Action::Create { subnet, .. } if *subnet == net("10.244.5.0/24"))
    );
}
