//! The peer table: etcd's subnet keys turned into [`PeerEvent`]s (pure, no I/O).
//!
//! The watcher feeds it what etcd says (a full list, or one put/delete at a time); it
//! answers with the event the data plane must apply, and keeps the current set for the
//! status endpoint. This node's own subnet is never a peer.

use std::collections::BTreeMap;

use ipnet::{IpNet, Ipv4Net};
use weft_proto::lease::{parse_subnet_key, LeaseAttrs};

use crate::lease::{LeaseEvent, PeerLease};

/// The current peers, keyed by subnet.
#[derive(Debug, Clone, Default)]
pub struct PeerTable {
    own: Option<IpNet>,
    peers: BTreeMap<IpNet, PeerLease>,
}

/// What one etcd key/value said, before it is known to be a peer.
#[derive(Debug, Clone)]
pub struct SubnetEntry {
    pub subnet: Ipv4Net,
    pub attrs: LeaseAttrs,
}

/// Decodes `<prefix>/subnets/<key>` and its value. Returns `None` (after logging why)
/// for keys that are not subnet leases or values that do not parse, which are skipped
/// rather than fatal: one bad record must not stop a node from learning the others.
pub fn decode_entry(key: &[u8], value: &[u8]) -> Option<SubnetEntry> {
    let key = String::from_utf8_lossy(key);
    let subnet = decode_key(&key)?;
    match LeaseAttrs::from_json(value) {
        Ok(attrs) => Some(SubnetEntry { subnet, attrs }),
        Err(e) => {
            tracing::warn!(%key, error = %e, "ignoring subnet lease with an invalid value");
            None
        }
    }
}

/// The subnet a `<prefix>/subnets/<key>` key names, or `None` for other keys.
pub fn decode_key(key: &str) -> Option<Ipv4Net> {
    let last = key.rsplit('/').next().unwrap_or(key);
    match parse_subnet_key(last) {
        Ok(subnet) => Some(subnet),
        Err(e) => {
            tracing::warn!(%key, error = %e, "ignoring a key under subnets/ that is not a subnet");
            None
        }
    }
}

impl PeerTable {
    /// A table for a node owning `own` (`None` for an observer such as `weftctl`).
    pub fn new(own: Option<Ipv4Net>) -> Self {
        PeerTable {
            own: own.map(IpNet::V4),
            peers: BTreeMap::new(),
        }
    }

    /// This node's subnet, never reported as a peer.
    pub fn own(&self) -> Option<IpNet> {
        self.own
    }

    pub fn peers(&self) -> impl Iterator<Item = &PeerLease> {
        self.peers.values()
    }

    pub fn len(&self) -> usize {
        self.peers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// Replaces the whole set (after a list) and returns the snapshot event.
    pub fn reset(&mut self, entries: impl IntoIterator<Item = SubnetEntry>) -> LeaseEvent {
        self.peers.clear();
        for entry in entries {
            if let Some(peer) = self.to_peer(&entry) {
                self.peers.insert(peer.subnet, peer);
            }
        }
        LeaseEvent::Snapshot(self.peers.values().cloned().collect())
    }

    /// A put of a subnet key. `None` when nothing changed for the data plane.
    pub fn upsert(&mut self, entry: &SubnetEntry) -> Option<LeaseEvent> {
        let Some(peer) = self.to_peer(entry) else {
            // A record that became unusable (or is ours) must not keep routing to the
            // old one.
            return self.remove(entry.subnet);
        };
        if self.peers.get(&peer.subnet) == Some(&peer) {
            return None;
        }
        self.peers.insert(peer.subnet, peer.clone());
        Some(LeaseEvent::Upsert(peer))
    }

    /// A delete (or expiry) of a subnet key. `None` when it was not a known peer.
    pub fn remove(&mut self, subnet: impl Into<IpNet>) -> Option<LeaseEvent> {
        let subnet = subnet.into();
        self.peers
            .remove(&subnet)
            .map(|_| LeaseEvent::Removed(subnet))
    }

    fn to_peer(&self, entry: &SubnetEntry) -> Option<PeerLease> {
        if Some(IpNet::V4(entry.subnet)) == self.own {
            return None;
        }
        match PeerLease::from_record(entry.subnet, &entry.attrs) {
            Ok(peer) => Some(peer),
            Err(e) => {
                tracing::warn!(error = %e, "ignoring peer lease");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use weft_proto::lease::MacAddr;

    use super::*;

    fn entry(third: u8, mac_last: u8) -> SubnetEntry {
        SubnetEntry {
            subnet: Ipv4Net::new(Ipv4Addr::new(10, 244, third, 0), 24).unwrap(),
            attrs: LeaseAttrs::vxlan(
                Ipv4Addr::new(192, 0, 2, third),
                1,
                MacAddr([2, 0, 0, 0, 0, mac_last]),
            ),
        }
    }

    #[test]
    fn own_subnet_is_never_a_peer() {
        let mut table = PeerTable::new(Some("10.244.1.0/24".parse().unwrap()));
        let LeaseEvent::Snapshot(peers) = table.reset([entry(1, 1), entry(2, 2)]) else {
            panic!("reset must give a snapshot");
        };
        assert_eq!(peers.len(), 1);
        assert_eq!(peers[0].subnet, "10.244.2.0/24".parse::<IpNet>().unwrap());
        assert_eq!(table.upsert(&entry(1, 9)), None);
    }

    #[test]
    fn upsert_reports_only_changes() {
        let mut table = PeerTable::new(None);
        assert!(matches!(
            table.upsert(&entry(3, 1)),
            Some(LeaseEvent::Upsert(_))
        ));
        assert_eq!(table.upsert(&entry(3, 1)), None, "same record twice");
        assert!(matches!(
            table.upsert(&entry(3, 2)),
            Some(LeaseEvent::Upsert(_))
        ));
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn remove_of_unknown_subnet_is_silent() {
        let mut table = PeerTable::new(None);
        table.upsert(&entry(4, 1));
        let subnet = entry(4, 1).subnet;
        assert_eq!(
            table.remove(subnet),
            Some(LeaseEvent::Removed(subnet.into()))
        );
        assert_eq!(table.remove(subnet), None);
        assert!(table.is_empty());
    }

    #[test]
    fn record_turning_invalid_removes_the_peer() {
        let mut table = PeerTable::new(None);
        table.upsert(&entry(5, 1));
        let mut broken = entry(5, 1);
        broken.attrs.backend_data = None;
        let subnet = broken.subnet;
        assert_eq!(
            table.upsert(&broken),
            Some(LeaseEvent::Removed(subnet.into()))
        );
    }

    #[test]
    fn keys_decode_from_full_paths_and_junk_is_skipped() {
        assert_eq!(
            decode_key("/coreos.com/network/subnets/10.244.3.0-24"),
            Some("10.244.3.0/24".parse().unwrap())
        );
        assert_eq!(decode_key("/coreos.com/network/subnets/garbage"), None);
        assert!(decode_entry(b"/p/subnets/10.244.3.0-24", b"{not json").is_none());
    }
}
