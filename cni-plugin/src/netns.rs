//! The network namespaces of one invocation: the pod's (`CNI_NETNS`, checked to be one)
//! and our own. Netlink sockets inside them come from `weft_netlink::Netlink::connect_in`.

use std::fs::File;
use std::path::Path;

use nix::sys::statfs::{fstatfs, NSFS_MAGIC};

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
