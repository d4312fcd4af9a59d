//! Route conflicts and failures between route passes, and their `/v1/status` views.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::netlink::{describe, protocol_name, Change, Conflict, RoutePass};

/// The route conflicts and failures as of the last pass, by destination.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RouteHealth {
    pub(super) conflicts: BTreeMap<Ipv4Net, Conflict>,
    pub(super) failing: BTreeMap<Ipv4Net, RouteFailureView>,
}

/// What changed between two route passes: what to count and log once.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RouteNews {
    /// Conflicts that were not there at the last pass.
    pub new_conflicts: Vec<Conflict>,
    /// Destinations no longer in conflict (the other route went, or the peer did).
    pub resolved_conflicts: Vec<Ipv4Net>,
    /// Failing changes whose destination did not fail at the last pass.
    pub new_failures: Vec<RouteFailureView>,
    /// Failures in this pass (new or not).
    pub failures: usize,
}

impl RouteHealth {
    /// Takes in one pass (pure): the conflicts and failures are those of `pass`; the
    /// answer says which are news.
    pub fn update(&mut self, pass: &RoutePass) -> RouteNews {
        let mut news = RouteNews {
            failures: pass.failures.len(),
            ..RouteNews::default()
        };
        let mut conflicts = BTreeMap::new();
        for conflict in &pass.conflicts {
            let dst = conflict.wanted.dst;
            if !self.conflicts.contains_key(&dst) && !conflicts.contains_key(&dst) {
                news.new_conflicts.push(*conflict);
            }
            // Keep what the table said over an `EEXIST` that named nobody.
            match (conflicts.get(&dst), self.conflicts.get(&dst)) {
                (
                    Some(Conflict {
                        foreign: Some(_), ..
                    }),
                    _,
                ) => {}
                (_, Some(known)) if conflict.foreign.is_none() => {
                    conflicts.insert(dst, *known);
                }
                _ => {
                    conflicts.insert(dst, *conflict);
                }
            }
        }
        news.resolved_conflicts = self
            .conflicts
            .keys()
            .filter(|dst| !conflicts.contains_key(dst))
            .copied()
            .collect();
        let mut failing = BTreeMap::new();
        for failure in &pass.failures {
            let view = RouteFailureView::new(&failure.change, &failure.error);
            if !self.failing.contains_key(&view.prefix) {
                news.new_failures.push(view.clone());
            }
            failing.insert(view.prefix, view);
        }
        self.conflicts = conflicts;
        self.failing = failing;
        news
    }
}

/// A destination held by another route, as `/v1/status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RouteConflictView {
    pub prefix: Ipv4Net,
    /// The route weft would install (`10.244.5.0/24 dev 7`).
    pub wanted: String,
    /// The other route's protocol (`static`, `boot`, `kernel`, a number); `null` when it
    /// appeared while weft was adding its own.
    pub protocol: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oif: Option<u32>,
}

impl From<&Conflict> for RouteConflictView {
    fn from(conflict: &Conflict) -> Self {
        RouteConflictView {
            prefix: conflict.wanted.dst,
            wanted: describe(&conflict.wanted),
            protocol: conflict.foreign.map(|f| protocol_name(f.protocol)),
            gateway: conflict.foreign.and_then(|f| f.gateway),
            oif: conflict.foreign.and_then(|f| f.oif),
        }
    }
}

/// A route change the kernel refused at the last pass, as `/v1/status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RouteFailureView {
    pub prefix: Ipv4Net,
    /// `add 10.244.5.0/24 dev 7`, `replace ...`, `delete ...`.
    pub change: String,
    pub error: String,
}

impl RouteFailureView {
    fn new(change: &Change, error: &str) -> Self {
        let change_text = match change {
            Change::Add(route) => format!("add {}", describe(route)),
            Change::Replace { old, new } => {
                format!("replace {} with {}", describe(old), describe(new))
            }
            Change::Delete(route) => format!("delete {}", describe(route)),
        };
        RouteFailureView {
            prefix: change.dst(),
            change: change_text,
            error: error.to_owned(),
        }
    }
}
