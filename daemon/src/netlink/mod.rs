//! Idempotent netlink operations (links, addresses, routes, bridges, veths).
