//! The walk's state (the report so far, the namespaces found on this machine) and the
//! small helpers every hop uses.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;
use weft_netlink::inspect::{self, LinkView, NsView, Query};

use super::{Break, Hop, HopStatus, TraceReport};

/// Unwinds the walk at the first broken hop (already recorded).
#[derive(Debug)]
pub(super) struct Stop;

pub(super) type Step<T> = Result<T, Stop>;

/// A namespace found by scanning `/run/netns`.
#[derive(Debug, Clone)]
pub(super) struct Found {
    pub(super) name: String,
    pub(super) path: PathBuf,
    pub(super) view: NsView,
}

#[derive(Debug)]
pub(super) struct Walk {
    pub(super) report: TraceReport,
    pub(super) own_ns: Option<String>,
    /// Every named namespace, read once when first needed.
    scanned: Option<Vec<Found>>,
}

impl Walk {
    pub(super) fn new(report: TraceReport, own_ns: Option<String>) -> Walk {
        Walk {
            report,
            own_ns,
            scanned: None,
        }
    }

    pub(super) fn ok(&mut self, hop: &'static str, detail: impl Into<String>) {
        self.report.hops.push(Hop {
            hop,
            status: HopStatus::Ok,
            detail: detail.into(),
        });
    }

    pub(super) fn skipped(&mut self, hop: &'static str, detail: impl Into<String>) {
        self.report.hops.push(Hop {
            hop,
            status: HopStatus::Skipped,
            detail: detail.into(),
        });
    }

    pub(super) fn broken<T>(&mut self, hop: &'static str, reason: impl Into<String>) -> Step<T> {
        let reason = reason.into();
        self.report.hops.push(Hop {
            hop,
            status: HopStatus::Broken,
            detail: reason.clone(),
        });
        self.report.broken = Some(Break { hop, reason });
        Err(Stop)
    }

    /// Every named namespace but our own, read once.
    pub(super) fn namespaces(&mut self) -> &[Found] {
        if self.scanned.is_none() {
            let own = self.own_ns.clone();
            let found = inspect::named_namespaces()
                .into_iter()
                .filter(|(name, _)| Some(name) != own.as_ref())
                .filter_map(|(name, path)| {
                    // A namespace may vanish while we scan: skip it.
                    let view = inspect::inspect(&path, Query::default()).ok()?;
                    Some(Found { name, path, view })
                })
                .collect();
            self.scanned = Some(found);
        }
        self.scanned.as_deref().unwrap_or_default()
    }
}

/// The candidate sharing most of `own`'s name: in a lab, `<prefix>-n1` and
/// `<prefix>-n2`, so other clusters on the same machine lose ties.
pub(super) fn closest<'a>(own: &str, candidates: Vec<&'a Found>) -> Option<&'a Found> {
    candidates.into_iter().max_by_key(|f| {
        f.name
            .chars()
            .zip(own.chars())
            .take_while(|(a, b)| a == b)
            .count()
    })
}

/// Whether `pod_link` (in its namespace) and `host_view`'s link at its peer index are
/// the two ends of one veth pair.
pub(super) fn paired<'h>(pod_link: &LinkView, host_view: &'h NsView) -> Option<&'h LinkView> {
    let host = host_view.link(pod_link.peer_index?)?;
    (host.kind.as_deref() == Some("veth") && host.peer_index == Some(pod_link.index))
        .then_some(host)
}

/// A pod namespace holding `ip` on a veth whose peer is in `host_view`: preferably a
/// port of a bridge there; else one whose host end is on no bridge (so the walk can
/// say that, rather than that no pod exists).
pub(super) fn find_pod(walk: &mut Walk, ip: Ipv4Addr, host_view: &NsView) -> Option<Found> {
    let own = walk.own_ns.clone().unwrap_or_default();
    let (bridged, stray): (Vec<_>, Vec<_>) = walk
        .namespaces()
        .iter()
        .filter_map(|f| {
            let (link, _) = f.view.holder_of(ip)?;
            let host = paired(link, host_view)?;
            Some((f, host.master.is_some()))
        })
        .partition(|(_, bridged)| *bridged);
    closest(&own, firsts(bridged))
        .or_else(|| closest(&own, firsts(stray)))
        .cloned()
}

fn firsts(pairs: Vec<(&Found, bool)>) -> Vec<&Found> {
    pairs.into_iter().map(|(f, _)| f).collect()
}

pub(super) fn describe_link(link: &LinkView) -> String {
    let state = match (link.up, link.lower_up) {
        (true, true) => "up",
        (true, false) => "up, no carrier",
        (false, _) => "DOWN",
    };
    format!("{} [{state}, mtu {}]", link.name, link.mtu)
}

/// Up with a carrier.
pub(super) fn is_running(link: &LinkView) -> bool {
    link.up && link.lower_up
}

pub(super) fn list(nets: &[Ipv4Net]) -> String {
    nets.iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
