//! Subnet leases (flannel schema), behind a store seam.
//!
//! A node's subnet is chosen in this order: (a) its existing lease or reservation in
//! the store (same PublicIP); (b) a preferred subnet — the last lease in `--state-dir`,
//! then the one in an existing subnet.env — if it is free and fits the network config;
//! (c) a random one among the lowest free subnets between SubnetMin and SubnetMax. The
//! key is created only if it does not exist, with a TTL (24 h); a lost race is retried
//! with another subnet.
//!
//! * [`store`]: the [`SubnetStore`] trait, what the life cycle needs from a store;
//! * [`registry`]: etcd as a store (TLS, auth, timeouts, reachability); the only
//!   module that sees `etcd_client`;
//! * [`machine`]: the lease life cycle as a pure state machine (no I/O, no clock);
//! * [`manager`]: its shell (runs the machine against a store), and the peer watch;
//! * [`choose`] and [`peers`]: pure decisions (subnet choice, peer table);
//! * [`state`]: node identity and the last known state in `--state-dir`;
//! * [`status`]: what `/readyz` and `/v1/status` report.

pub mod choose;
pub mod machine;
pub mod manager;
pub mod peers;
pub mod registry;
pub mod state;
pub mod status;
pub mod store;

pub use choose::choose_subnet;
pub use machine::{LeaseMachine, DEFAULT_LEASE_TTL};
pub use manager::{
    watch_peers, AcquiredHow, HeldLease, ManagerConfig, ManagerError, SubnetManager,
};
pub use registry::{EtcdOptions, Registry, RegistryError};
pub use state::NodeState;
pub use status::{ControlStatus, LeaseState, Readiness};
pub use store::{StoreError, SubnetStore};
