//! Netlink sockets bound to a network namespace.
//!
//! A netlink socket belongs to the namespace it was created in, for life. So instead
//! of moving the plugin's main thread between namespaces (which would leave it in the
//! pod namespace on any early return), a short-lived thread enters the pod namespace,
//! creates the socket and exits; the main thread then drives both the host and the pod
//! socket from one single-threaded async runtime.

use std::fs::File;
use std::os::fd::{AsFd, IntoRawFd, OwnedFd};
use std::os::unix::io::FromRawFd;
use std::path::Path;

use nix::sched::{setns, CloneFlags};
use nix::sys::socket::{socket, AddressFamily, SockFlag, SockProtocol, SockType};
use nix::sys::statfs::{fstatfs, NSFS_MAGIC};
use rtnetlink::sys::TokioSocket;
use rtnetlink::Handle;

use crate::error::{code, CniError};

/// Open a network namespace handle (`/var/run/netns/x`, `/proc/PID/ns/net`).
pub fn open_netns(path: &Path) -> Result<File, CniError> {
    let file = File::open(path).map_err(|e| {
        CniError::new(
            code::INVALID_ENV,
            format!(
                "CNI_NETNS {}: cannot open the network namespace: {e}",
                path.display()
            ),
        )
    })?;
    match fstatfs(&file) {
        Ok(fs) if fs.filesystem_type() == NSFS_MAGIC => Ok(file),
        _ => Err(CniError::new(
            code::INVALID_ENV,
            format!(
                "CNI_NETNS {} is not a network namespace (expected a path like /var/run/netns/NAME or /proc/PID/ns/net)",
                path.display()
            ),
        )),
    }
}

/// This process's own network namespace (the host/node namespace).
pub fn current_netns() -> Result<File, CniError> {
    File::open("/proc/self/ns/net").map_err(|e| CniError::io("opening /proc/self/ns/net", e))
}

fn netlink_socket() -> nix::Result<OwnedFd> {
    socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute,
    )
}

/// A NETLINK_ROUTE socket inside namespace `ns`, created from a dedicated thread.
pub fn netlink_socket_in(ns: &File) -> Result<OwnedFd, CniError> {
    let ns_fd = ns.as_fd();
    std::thread::scope(|scope| {
        scope
            .spawn(move || -> Result<OwnedFd, String> {
                setns(ns_fd, CloneFlags::CLONE_NEWNET)
                    .map_err(|e| format!("entering the pod network namespace: {e}"))?;
                netlink_socket().map_err(|e| format!("netlink socket in the pod namespace: {e}"))
            })
            .join()
            .unwrap_or_else(|_| Err("the namespace thread panicked".to_string()))
    })
    .map_err(|msg| CniError::new(code::IO_FAILURE, msg))
}

/// An rtnetlink handle on an existing socket; must be called inside the runtime (the
/// connection task is spawned on it).
pub fn connect(fd: OwnedFd) -> Result<Handle, CniError> {
    let raw = fd.into_raw_fd();
    // SAFETY: `raw` comes from `into_raw_fd` of an OwnedFd we own, so it is an open
    // socket that nothing else will close; TokioSocket takes over its ownership.
    let socket = unsafe { TokioSocket::from_raw_fd(raw) };
    let (connection, handle, _) = rtnetlink::from_socket(socket);
    tokio::spawn(connection);
    Ok(handle)
}

/// An rtnetlink handle in the current (host) namespace.
pub fn connect_here() -> Result<Handle, CniError> {
    let fd = netlink_socket().map_err(|e| CniError::io("netlink socket", e.into()))?;
    connect(fd)
}
