//! Netlink sockets bound to another network namespace.
//!
//! A netlink socket belongs to the namespace it was created in, for life. So instead
//! of moving the caller's thread between namespaces (which would leave it in the other
//! namespace on any early return), a short-lived thread enters the namespace, creates
//! the socket and exits; the caller then drives that socket from wherever it likes,
//! beside sockets of its own namespace.

use std::fs::File;
use std::os::fd::{AsFd as _, OwnedFd};
use std::path::Path;

use nix::sched::{setns, CloneFlags};
use nix::sys::socket::{socket, AddressFamily, SockFlag, SockProtocol, SockType};

use crate::{Error, Netlink, Result};

fn netlink_socket() -> nix::Result<OwnedFd> {
    socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute,
    )
}

/// A NETLINK_ROUTE socket inside namespace `ns` (an open `/run/netns/NAME`,
/// `/proc/PID/ns/net`), created from a dedicated thread.
pub fn socket_in(ns: &File) -> Result<OwnedFd> {
    let ns_fd = ns.as_fd();
    std::thread::scope(|scope| {
        scope
            .spawn(move || -> Result<OwnedFd> {
                setns(ns_fd, CloneFlags::CLONE_NEWNET).map_err(|e| Error::Netns {
                    what: "entering the network namespace".into(),
                    source: e.into(),
                })?;
                netlink_socket().map_err(|e| Error::Netns {
                    what: "a netlink socket in the network namespace".into(),
                    source: e.into(),
                })
            })
            .join()
            .unwrap_or_else(|_| {
                Err(Error::Netns {
                    what: "the namespace thread".into(),
                    source: std::io::Error::other("it panicked"),
                })
            })
    })
}

impl Netlink {
    /// A connection inside namespace `ns`; must be called inside a tokio runtime (the
    /// connection task is spawned on it).
    pub fn connect_in(ns: &File) -> Result<Netlink> {
        Ok(Netlink::from_socket(socket_in(ns)?))
    }

    /// A connection inside the namespace at `path` (`/run/netns/NAME`,
    /// `/proc/PID/ns/net`, `/proc/self/ns/net` for our own).
    pub fn connect_at(path: &Path) -> Result<Netlink> {
        let ns = File::open(path).map_err(|source| Error::Netns {
            what: format!("opening network namespace {}", path.display()),
            source,
        })?;
        Netlink::connect_in(&ns).map_err(|e| match e {
            Error::Netns { what, source } => Error::Netns {
                what: format!("{what} {}", path.display()),
                source,
            },
            other => other,
        })
    }
}
