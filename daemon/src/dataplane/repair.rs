//! Self-repair of the data plane's devices: what the workers report ([`PlaneFaults`])
//! and what the periodic reconcile decides from what it observes ([`plan`], pure).
//!
//! On a real node other software deletes or alters devices under a running daemon
//! (an admin's `ip link del`, a CNI cleanup script, a NIC driver reload that re-creates
//! the underlay device). Every reconcile (≤ [`super::RECONCILE_PERIOD`]) and every fault a
//! worker reports compares the devices with what the running plane was built on; what
//! can be fixed in place (a device down, a wrong MTU, a lost address) is fixed in place,
//! and whatever the workers' descriptors or the tc program depend on (the TUN or TAP
//! device re-created, the program detached, the underlay's ifindex changed) rebuilds the
//! plane: workers stopped, devices opened again, workers started; sockets stay open.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use tokio::sync::Notify;

use crate::metrics::Repair;

/// What workers found broken, for the control task; shared by every worker of a plane.
///
/// A worker that meets a fault reports it and stops using what broke (the TUN queue:
/// it parks until the plane is rebuilt, instead of spinning on a descriptor that polls
/// readable forever; the TAP: it sends through the userspace path from then on).
#[derive(Debug, Default)]
pub struct PlaneFaults {
    tun_lost: AtomicBool,
    tap_failed: Mutex<Option<String>>,
    wake: Notify,
}

impl PlaneFaults {
    /// The TUN device is gone (reads fail with `EBADFD`): the plane must be rebuilt.
    pub fn report_tun_lost(&self, error: &std::io::Error) {
        if !self.tun_lost.swap(true, Ordering::AcqRel) {
            tracing::warn!(%error, "TUN queue lost (device deleted?); workers wait for the repair");
        }
        self.wake.notify_one();
    }

    /// Writing to the encapsulating TAP failed for good: the worker falls back to the
    /// userspace send path; `reason` says why (first report wins).
    pub fn report_tap_failed(&self, reason: String) {
        let mut failed = self.tap_failed.lock().unwrap_or_else(|e| e.into_inner());
        if failed.is_none() {
            tracing::warn!(%reason, "kernel encapsulation failed; sending through the userspace path");
            *failed = Some(reason);
        }
        drop(failed);
        self.wake.notify_one();
    }

    /// Whether a worker lost its TUN queue.
    pub fn tun_lost(&self) -> bool {
        self.tun_lost.load(Ordering::Acquire)
    }

    /// Why a worker gave up on the TAP, if one did.
    pub fn tap_failed(&self) -> Option<String> {
        self.tap_failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Resolves when a worker reports a fault (or one was reported since the last wait).
    pub async fn reported(&self) {
        self.wake.notified().await;
    }
}

/// A device as the reconcile sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceState {
    pub index: u32,
    pub up: bool,
    pub mtu: u32,
}

/// What one reconcile observed, next to what the running plane was built on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observed {
    /// The TUN device (`None`: gone).
    pub tun: Option<DeviceState>,
    /// The TUN device has this node's `.0/32` address.
    pub tun_has_address: bool,
    /// A worker reported the TUN queue lost.
    pub tun_lost: bool,
    /// The TAP, when the plane runs with one (`None` in `Some`: gone).
    pub tap: Option<Option<DeviceState>>,
    /// The tc program still attached to the TAP (meaningful with a TAP).
    pub program_attached: bool,
    /// A worker gave up on the TAP.
    pub tap_failed: bool,
    /// The underlay device (`None`: gone).
    pub underlay: Option<DeviceState>,
}

/// What the running plane was built on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Built {
    pub tun_index: u32,
    pub tap_index: Option<u32>,
    pub underlay_index: u32,
    /// The overlay MTU (the TUN device's).
    pub mtu: u32,
}

/// The reconcile's verdict.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepairPlan {
    /// Rebuild the plane (workers, TUN and TAP), for these reasons.
    pub rebuild: Vec<Repair>,
    /// Fix the TUN device in place (set it up, its MTU, its address).
    pub fix_tun: bool,
    /// Set the TAP up again in place.
    pub fix_tap: bool,
    /// The underlay device is missing: nothing to rebuild on until it is back.
    pub underlay_missing: bool,
}

impl RepairPlan {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.rebuild.is_empty() && !self.fix_tun && !self.fix_tap && !self.underlay_missing
    }
}

/// Decides what to repair. Pure: the caller observes and acts.
pub fn plan(observed: &Observed, built: &Built) -> RepairPlan {
    let mut out = RepairPlan::default();
    let Some(underlay) = observed.underlay else {
        // Without the underlay neither a TAP program nor a route can point anywhere;
        // the plane keeps running on what it has (the userspace sends fail and are
        // counted) and is rebuilt once the device is back.
        out.underlay_missing = true;
        return out;
    };
    match observed.tun {
        None => out.rebuild.push(Repair::Tun),
        Some(tun) if tun.index != built.tun_index || observed.tun_lost => {
            out.rebuild.push(Repair::Tun);
        }
        Some(tun) => {
            out.fix_tun = !tun.up || tun.mtu != built.mtu || !observed.tun_has_address;
        }
    }
    if underlay.index != built.underlay_index {
        out.rebuild.push(Repair::Underlay);
    }
    if let Some(tap) = observed.tap {
        match tap {
            None => out.rebuild.push(Repair::Tap),
            Some(tap) if Some(tap.index) != built.tap_index || observed.tap_failed => {
                out.rebuild.push(Repair::Tap);
            }
            Some(_) if !observed.program_attached => out.rebuild.push(Repair::TcProgram),
            Some(tap) => out.fix_tap = !tap.up,
        }
    } else if observed.tap_failed {
        out.rebuild.push(Repair::Tap);
    }
    if !out.rebuild.is_empty() {
        // A rebuild sets everything up afresh.
        out.fix_tun = false;
        out.fix_tap = false;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(index: u32) -> DeviceState {
        DeviceState {
            index,
            up: true,
            mtu: 1450,
        }
    }

    fn healthy() -> (Observed, Built) {
        (
            Observed {
                tun: Some(dev(10)),
                tun_has_address: true,
                tun_lost: false,
                tap: Some(Some(dev(11))),
                program_attached: true,
                tap_failed: false,
                underlay: Some(dev(2)),
            },
            Built {
                tun_index: 10,
                tap_index: Some(11),
                underlay_index: 2,
                mtu: 1450,
            },
        )
    }

    #[test]
    fn a_healthy_plane_needs_nothing() {
        let (observed, built) = healthy();
        assert!(plan(&observed, &built).is_empty());
    }

    #[test]
    fn a_deleted_or_recreated_tun_rebuilds() {
        let (mut observed, built) = healthy();
        observed.tun = None;
        assert_eq!(plan(&observed, &built).rebuild, [Repair::Tun]);
        observed.tun = Some(dev(12));
        assert_eq!(plan(&observed, &built).rebuild, [Repair::Tun]);
        // Deleted and re-created by someone between two reconciles: same name, the
        // workers' queues are dead; a worker says so even if the index matched.
        observed.tun = Some(dev(10));
        observed.tun_lost = true;
        assert_eq!(plan(&observed, &built).rebuild, [Repair::Tun]);
    }

    #[test]
    fn a_tun_down_or_altered_is_fixed_in_place() {
        let (mut observed, built) = healthy();
        observed.tun = Some(DeviceState {
            up: false,
            ..dev(10)
        });
        let out = plan(&observed, &built);
        assert!(out.rebuild.is_empty() && out.fix_tun);
        observed.tun = Some(DeviceState {
            mtu: 1500,
            ..dev(10)
        });
        assert!(plan(&observed, &built).fix_tun);
        observed.tun = Some(dev(10));
        observed.tun_has_address = false;
        assert!(plan(&observed, &built).fix_tun);
    }

    #[test]
    fn tap_faults_rebuild_and_a_down_tap_is_set_up() {
        let (mut observed, built) = healthy();
        observed.tap = Some(None);
        assert_eq!(plan(&observed, &built).rebuild, [Repair::Tap]);
        observed.tap = Some(Some(dev(13)));
        assert_eq!(plan(&observed, &built).rebuild, [Repair::Tap]);
        observed.tap = Some(Some(dev(11)));
        observed.program_attached = false;
        assert_eq!(plan(&observed, &built).rebuild, [Repair::TcProgram]);
        observed.program_attached = true;
        observed.tap_failed = true;
        assert_eq!(plan(&observed, &built).rebuild, [Repair::Tap]);
        observed.tap_failed = false;
        observed.tap = Some(Some(DeviceState {
            up: false,
            ..dev(11)
        }));
        let out = plan(&observed, &built);
        assert!(out.rebuild.is_empty() && out.fix_tap);
    }

    #[test]
    fn a_recreated_underlay_rebuilds_and_a_missing_one_waits() {
        let (mut observed, built) = healthy();
        observed.underlay = Some(dev(7));
        assert_eq!(plan(&observed, &built).rebuild, [Repair::Underlay]);
        observed.underlay = None;
        let out = plan(&observed, &built);
        assert!(out.underlay_missing && out.rebuild.is_empty());
    }

    #[test]
    fn without_a_tap_only_a_worker_fault_asks_for_one() {
        let (mut observed, mut built) = healthy();
        observed.tap = None;
        built.tap_index = None;
        assert!(plan(&observed, &built).is_empty());
        observed.tap_failed = true;
        assert_eq!(plan(&observed, &built).rebuild, [Repair::Tap]);
    }

    #[test]
    fn several_faults_are_all_named_once_rebuilt() {
        let (mut observed, built) = healthy();
        observed.tun = None;
        observed.underlay = Some(dev(3));
        observed.tap = Some(None);
        assert_eq!(
            plan(&observed, &built).rebuild,
            [Repair::Tun, Repair::Underlay, Repair::Tap]
        );
    }
}
