//! Data plane: cni0, the TUN VTEP, the userspace VXLAN/IPIP hot path, routes, masquerade.
//!
//! INTERFACE (called by `node.rs`; keep the signature, the body is the data plane's):
//! [`run`] owns devices, routes and sockets for as long as the node runs, applies every
//! [`PeerEvent`] in order, and returns when `shutdown` turns true.

pub mod tun;

use tokio::sync::{mpsc, watch};
use weft_config::Settings;

use crate::lease::{LocalLease, PeerEvent};

/// Runs the data plane until `shutdown` becomes true.
pub async fn run(
    settings: Settings,
    lease: LocalLease,
    mut events: mpsc::Receiver<PeerEvent>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let _ = (&settings, &lease);
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(event) => tracing::debug!(?event, "peer event"),
                None => return Ok(()),
            },
            _ = shutdown.changed() => if *shutdown.borrow() { return Ok(()) },
        }
    }
}
