//! Subnet lease manager (etcd, flannel schema).
//!
//! A node's subnet is chosen in this order: (a) its existing lease or reservation in
//! etcd (same PublicIP); (b) a preferred subnet — the last lease in `--state-dir`, then
//! the one in an existing subnet.env — if it is free and fits the network config;
//! (c) a random one among the lowest free subnets between SubnetMin and SubnetMax. The
//! key is created with a transaction that only succeeds if it does not exist, attached
//! to an etcd lease (24 h TTL); a lost race is retried with another subnet.
//!
//! * [`choose`] and [`peers`]: pure decisions (subnet choice, peer table), tested
//!   without etcd;
//! * [`registry`]: etcd access (TLS, auth, timeouts, reachability);
//! * [`manager`]: acquire, keep alive / re-acquire, watch;
//! * [`state`]: node identity in `--state-dir`;
//! * [`status`]: what `/readyz` and `/v1/status` report.

pub mod choose;
pub mod manager;
pub mod peers;
pub mod registry;
pub mod state;
pub mod status;

pub use choose::choose_subnet;
pub use manager::{
    watch_peers, AcquiredHow, HeldLease, ManagerConfig, ManagerError, SubnetManager,
    DEFAULT_LEASE_TTL,
};
pub use registry::{EtcdOptions, Registry, RegistryError};
pub use state::NodeState;
pub use status::{ControlStatus, LeaseState, Readiness};
