//! weftd: the node daemon's library (subnet manager, data plane, netlink, masquerade and
//! forward rules, health) and weftctl's client side. The binaries in `src/bin` are thin.

pub mod backend;
pub mod dataplane;
pub mod firewall;
pub mod health;
pub mod lease;
pub mod masq;
pub mod metrics;
pub mod metrics_export;
pub mod netlink;
pub mod node;
pub mod subnet;
pub mod trace;
pub mod underlay;
