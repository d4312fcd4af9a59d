//! The lease life cycle as a pure state machine, in the style of etcd's raft
//! `RawNode`: [`LeaseMachine::step`] takes what the shell observed (a store's answer, a
//! timer, a notice that our key changed) and the time, and returns the [`Action`]s to
//! carry out (store requests, a timer, a status report, the lease to publish). It does
//! no I/O, reads no clock and draws no random number of its own (the subnet choice uses
//! a generator seeded by the caller), so every transition is tested with plain data
//! (`machine/tests.rs`). The shell that runs it against a [`super::store::SubnetStore`]
//! is [`super::manager`]; its only side effect is logging.
//!
//! The life cycle: read the network config (waiting, with backoff, while it is absent
//! or the store unreachable); acquire a subnet — the last known lease if the store
//! still has it untouched, else this node's own lease or reservation (same PublicIP),
//! else a preferred subnet, else a random free one, retrying lost races with another;
//! then keep it: renew every `renew_interval`, read the key first for a reservation,
//! after our key changed or while in trouble, and re-create the same subnet when the
//! lease is found lost. At most one store request is outstanding at a time.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant, SystemTime};

use ipnet::Ipv4Net;
use rand::rngs::StdRng;
use rand::SeedableRng;
use weft_config::NetConf;
use weft_proto::lease::LeaseAttrs;

use super::choose::{capacity, choose_subnet, is_compatible};
use super::status::{ControlStatus, LeaseState};
use super::store::{Binding, Claim, LeaseId, StoreError, StoredLease};
use crate::lease::{lease_record, MacAddr};

/// flannel's lease TTL.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(24 * 3600);

/// flannel's `--subnet-lease-renew-margin` default: renew an hour before expiry.
pub const DEFAULT_RENEW_MARGIN: Duration = Duration::from_secs(3600);

/// How often a lost race is retried before giving up (each retry re-lists the store
/// and excludes the subnets already lost, so this only runs out under pathological
/// churn).
pub const MAX_ACQUIRE_ATTEMPTS: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error(transparent)]
    Store(#[from] StoreError),
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
    /// How often the store is probed: the lease's time left is read (a renewal when
    /// it is due), or a reservation's key.
    pub renew_interval: Duration,
    /// Renew the lease once no more than this is left of it (flanneld's
    /// `--subnet-lease-renew-margin`). A margin as long as the TTL or longer (test TTLs)
    /// renews at every probe.
    pub renew_margin: Duration,
    /// Subnets to try first, in order (last lease from the state dir, subnet.env),
    /// when this node has no lease in the store yet.
    pub preferred: Vec<Ipv4Net>,
    /// The lease of the last known state (subnet, TTL handle): kept as it is if its
    /// key still holds this node's record on that same, live handle.
    pub resume: Option<(Ipv4Net, LeaseId)>,
}

impl ManagerConfig {
    pub fn new(public_ip: Ipv4Addr, vtep_mac: MacAddr, lease_ttl: Duration) -> Self {
        ManagerConfig {
            public_ip,
            vtep_mac,
            lease_ttl,
            renew_interval: default_renew_interval(lease_ttl),
            renew_margin: DEFAULT_RENEW_MARGIN,
            preferred: Vec::new(),
            resume: None,
        }
    }
}

/// A third of the TTL (etcd's own clients use the same), at most 10 s: these probes
/// (a renewal, or a read of the time left) are also how a node notices that the store
/// is gone or that its lease was revoked.
pub fn default_renew_interval(ttl: Duration) -> Duration {
    (ttl / 3).clamp(Duration::from_millis(300), Duration::from_secs(10))
}

/// Exponential backoff for retries against the store (pure: it only counts).
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
    /// The lease of the last known state, still live in the store: kept untouched
    /// (same key, same TTL handle).
    Resumed,
}

/// A held lease.
#[derive(Debug, Clone, PartialEq)]
pub struct HeldLease {
    pub netconf: NetConf,
    pub subnet: Ipv4Net,
    /// The TTL handle the key is attached to; 0 for a reservation.
    pub lease_id: LeaseId,
    pub how: AcquiredHow,
}

/// The time of a step: monotonic for timers, wall clock for the expiry reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    pub mono: Instant,
    pub wall: SystemTime,
}

/// What the shell observed: a store's answer to the last request, a timer, a notice.
#[derive(Debug, Clone, PartialEq)]
pub enum Observation {
    /// Begin (read the config, or acquire, or wait to renew, by how the machine was
    /// made).
    Start,
    ConfigRead(Option<String>),
    Listed(Vec<StoredLease>),
    LeaseRead(Option<StoredLease>),
    TimeLeft(Option<i64>),
    Claimed(Claim),
    /// The TTL handle the key now hangs on; `None` when it changed meanwhile.
    Replaced(Option<LeaseId>),
    Deleted(bool),
    /// Seconds left after a renewal; `None` when the TTL handle is gone.
    Renewed(Option<i64>),
    /// The last request failed and retrying may fix it.
    StoreUnreachable(String),
    TimerFired,
    /// Our key changed (the peer watcher saw it): check it now.
    KeyChanged,
    Shutdown,
}

/// Events worth a counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    RaceRetry,
    Renewal,
    Loss,
    Reacquisition,
}

/// What the shell must do. At most one store request per step, and it comes last but
/// for `WakeAt`.
#[derive(Debug)]
pub enum Action {
    ReadConfig,
    ListLeases,
    GetLease(Ipv4Net),
    CheckTimeLeft(LeaseId),
    Create {
        subnet: Ipv4Net,
        attrs: LeaseAttrs,
        ttl: Option<Duration>,
    },
    Replace {
        subnet: Ipv4Net,
        attrs: LeaseAttrs,
        binding: Binding,
        expected_revision: i64,
    },
    Delete {
        subnet: Ipv4Net,
        expected_revision: i64,
    },
    Renew(LeaseId),
    /// Give up a TTL handle that holds nothing any more (best effort, no answer).
    Release(LeaseId),
    /// Observe [`Observation::TimerFired`] at this time (replaces an earlier one).
    WakeAt(Instant),
    /// The lease state for `/readyz` and `/v1/status` (and `last-known.json`).
    Report(LeaseState),
    Count(Counter),
    /// The network config was read.
    ConfigReady {
        netconf: NetConf,
        json: String,
    },
    /// The lease is ours: publish it (subnet.env, the data plane).
    Acquired(HeldLease),
    /// Nothing the machine can do fixes this.
    Fail(ManagerError),
}

/// Where the store keeps things, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreNames {
    pub config: String,
    pub leases: String,
}

#[derive(Debug, Clone, PartialEq)]
enum Phase {
    /// Made, not started.
    New,
    /// Reading the config (or waiting to read it again).
    Config {
        logged_missing: bool,
    },
    Acquire(Acquiring),
    Held(Keeping),
    Done,
}

#[derive(Debug, Clone, PartialEq)]
enum Acquiring {
    /// `GetLease` of the last known lease sent.
    ResumeRead {
        subnet: Ipv4Net,
        lease_id: LeaseId,
    },
    /// `CheckTimeLeft` of the last known lease sent.
    ResumeTimeLeft {
        subnet: Ipv4Net,
        lease_id: LeaseId,
    },
    Listing,
    /// Deleting this node's key that does not fit the network.
    DeletingMisfit,
    /// Taking over this node's key (`Replace` sent).
    Adopting(StoredLease),
    Creating {
        subnet: Ipv4Net,
        preferred: bool,
    },
    /// The store did not answer: the timer restarts the acquisition.
    BackingOff,
}

#[derive(Debug, Clone, PartialEq)]
enum Keeping {
    /// Waiting for the renewal timer.
    Idle,
    /// `CheckTimeLeft` of our lease sent: renew if the margin is reached.
    Probing,
    /// `GetLease` of our key sent.
    Reading,
    /// Our record rewritten in place (`Replace` with the same handle) sent.
    Refreshing,
    Renewing,
    /// The lease was lost: `Create` of the same subnet sent.
    Recreating,
    /// Our record was found at the key, on another handle: `Replace` sent.
    Retaking(StoredLease),
}

/// The lease life cycle of one node.
#[derive(Debug)]
pub struct LeaseMachine {
    config: ManagerConfig,
    names: StoreNames,
    rng: StdRng,
    phase: Phase,
    netconf: Option<NetConf>,
    held: Option<HeldLease>,
    backoff: Backoff,
    lost_races: BTreeSet<Ipv4Net>,
    lists: usize,
    /// Check our key at the end of the running check (it changed meanwhile).
    verify_pending: bool,
    /// When the held lease is due for renewal (expiry minus the margin), as of the
    /// store's last answer; `None`: renew at the next check.
    renew_due: Option<Instant>,
    reported: LeaseState,
}

impl LeaseMachine {
    /// A node that starts by reading the network config. `seed` drives the random
    /// subnet choice.
    pub fn new(config: ManagerConfig, names: StoreNames, seed: u64) -> Self {
        LeaseMachine {
            config,
            names,
            rng: StdRng::seed_from_u64(seed),
            phase: Phase::New,
            netconf: None,
            held: None,
            backoff: Backoff::new(),
            lost_races: BTreeSet::new(),
            lists: 0,
            verify_pending: false,
            renew_due: None,
            reported: LeaseState::Starting,
        }
    }

    /// A node that has the config already and starts by acquiring.
    pub fn with_netconf(
        config: ManagerConfig,
        names: StoreNames,
        seed: u64,
        netconf: NetConf,
    ) -> Self {
        let mut machine = Self::new(config, names, seed);
        machine.netconf = Some(netconf);
        machine
    }

    /// A node that holds `held` and starts by waiting to renew it.
    pub fn holding(config: ManagerConfig, names: StoreNames, held: HeldLease) -> Self {
        let mut machine = Self::with_netconf(config, names, 0, held.netconf.clone());
        machine.held = Some(held);
        machine
    }

    /// The lease held now, if any.
    pub fn held(&self) -> Option<&HeldLease> {
        self.held.as_ref()
    }

    /// The lease state last reported.
    pub fn reported(&self) -> &LeaseState {
        &self.reported
    }

    /// Whether the machine has ended (failed or shut down).
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// One transition.
    pub fn step(&mut self, observation: Observation, now: Now) -> Vec<Action> {
        let mut out = Vec::new();
        match (std::mem::replace(&mut self.phase, Phase::Done), observation) {
            (_, Observation::Shutdown) => {}
            (Phase::New, Observation::Start) => match (&self.netconf, &self.held) {
                (_, Some(_)) => self.wait_to_renew(now, &mut out),
                (Some(_), None) => self.start_acquiring(&mut out),
                (None, None) => {
                    self.phase = Phase::Config {
                        logged_missing: false,
                    };
                    out.push(Action::ReadConfig);
                }
            },
            (Phase::Config { logged_missing }, observation) => {
                self.on_config(logged_missing, observation, now, &mut out)
            }
            (Phase::Acquire(acquiring), observation) => {
                self.on_acquire(acquiring, observation, now, &mut out)
            }
            (Phase::Held(keeping), observation) => {
                self.on_keep(keeping, observation, now, &mut out)
            }
            (phase, _) => self.phase = phase,
        }
        out
    }

    fn report(&mut self, state: LeaseState, out: &mut Vec<Action>) {
        self.reported = state.clone();
        out.push(Action::Report(state));
    }

    fn fail(&mut self, error: ManagerError, out: &mut Vec<Action>) {
        self.phase = Phase::Done;
        out.push(Action::Fail(error));
    }

    /// This node's record; a PublicIPv6 an existing record carries (written by an
    /// operator or a dual-stack tool) is kept, so a rewrite does not drop it.
    fn record(&self, existing: Option<&LeaseAttrs>) -> LeaseAttrs {
        let backend = &self
            .netconf
            .as_ref()
            .expect("the record is only needed once the config is known")
            .backend;
        let mut attrs = lease_record(backend, self.config.public_ip, self.config.vtep_mac);
        if let Some(existing) = existing {
            if attrs.public_ipv6.is_none() {
                attrs.public_ipv6 = existing.public_ipv6;
            }
        }
        attrs
    }

    fn on_config(
        &mut self,
        logged_missing: bool,
        observation: Observation,
        now: Now,
        out: &mut Vec<Action>,
    ) {
        let key = self.names.config.clone();
        match observation {
            Observation::ConfigRead(Some(json)) => match NetConf::parse(&json) {
                Ok(netconf) => {
                    self.netconf = Some(netconf.clone());
                    self.backoff.reset();
                    out.push(Action::ConfigReady { netconf, json });
                    self.start_acquiring(out);
                }
                Err(e) => self.fail(
                    ManagerError::BadConfig {
                        key,
                        reason: e.to_string(),
                    },
                    out,
                ),
            },
            Observation::ConfigRead(None) => {
                if !logged_missing {
                    tracing::warn!(
                        %key,
                        "waiting for the network config: create it, e.g. etcdctl put {key} \
                         '{{\"Network\":\"10.244.0.0/16\",\"Backend\":{{\"Type\":\"vxlan\"}}}}'"
                    );
                }
                self.report(LeaseState::WaitingForConfig { key }, out);
                self.phase = Phase::Config {
                    logged_missing: true,
                };
                out.push(Action::WakeAt(now.mono + self.backoff.next_delay()));
            }
            Observation::StoreUnreachable(error) => {
                tracing::warn!(%error, "the subnet store is unreachable; retrying");
                self.report(LeaseState::WaitingForEtcd { error }, out);
                self.phase = Phase::Config { logged_missing };
                out.push(Action::WakeAt(now.mono + self.backoff.next_delay()));
            }
            Observation::TimerFired => {
                self.phase = Phase::Config { logged_missing };
                out.push(Action::ReadConfig);
            }
            _ => self.phase = Phase::Config { logged_missing },
        }
    }
}

mod acquire;
mod keep;

#[cfg(test)]
mod tests;

/// The wall-clock expiry, in Unix seconds, of a lease with `ttl_secs` left at `now`.
fn expiry_unix(now: Now, ttl_secs: i64) -> u64 {
    ControlStatus::unix_secs(now.wall + Duration::from_secs(u64::try_from(ttl_secs).unwrap_or(0)))
}

fn ttl_secs(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX)
}
