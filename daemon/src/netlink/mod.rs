//! Idempotent netlink operations (links, addresses, routes, bridges, veths).
pub mod bridge;
