//! weftd: the node daemon's library (subnet manager, data plane, masquerade and forward
//! rules, health); netlink is the `weft-netlink` crate. The binary in `src/bin` is thin.

pub mod backend;
pub mod dataplane;
pub mod firewall;
pub mod health;
pub mod lease;
pub mod masq;
pub mod metrics;
pub mod metrics_export;
pub mod node;
pub mod subnet;
pub mod underlay;
