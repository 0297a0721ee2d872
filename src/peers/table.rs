//! The peer table: nodes this node knows, bounded in count, each entry
//! checked on the way in (`iicp-dir.md` §3.6).
//!
//! An entry is a node id, an http(s) endpoint without credentials, a region
//! and when it was last heard of; entries older than the liveness window
//! are neither answered nor gossiped and are dropped when room is needed.
//! A full table drops the stalest entry for a fresher one, so a flood of
//! made-up peers cannot evict what was heard of recently. Gossip keys are
//! kept beside entries only when they came from a source this node trusts
//! (its configuration or the directory), never from gossip itself.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::Serialize;

use crate::clock::now_unix_ms;
use crate::directory::identity::valid_node_id;

/// Longest endpoint URL kept.
const MAX_ENDPOINT_BYTES: usize = 512;
/// Longest region kept.
const MAX_REGION_BYTES: usize = 64;
/// Peers not heard of for this long are stale (the spec's 90 s).
pub const LIVENESS_MS: u64 = 90_000;

/// One known peer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Peer {
    /// Its node id.
    pub node_id: String,
    /// Where it serves.
    pub endpoint: String,
    /// Its region.
    pub region: String,
    /// When it was last heard of, ms since the Unix epoch.
    pub last_seen_ms: u64,
}

impl Peer {
    /// A peer from untrusted input, if every field is acceptable. A
    /// `last_seen_ms` in the future is taken as now.
    pub fn checked(node_id: &str, endpoint: &str, region: &str, last_seen_ms: u64) -> Option<Self> {
        if !valid_node_id(node_id) || endpoint.len() > MAX_ENDPOINT_BYTES {
            return None;
        }
        let url = reqwest::Url::parse(endpoint).ok()?;
        let plain = matches!(url.scheme(), "http" | "https")
            && url.host().is_some()
            && url.username().is_empty()
            && url.password().is_none()
            && url.fragment().is_none();
        let region_ok = region.len() <= MAX_REGION_BYTES
            && region
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        (plain && region_ok).then(|| Self {
            node_id: node_id.to_string(),
            endpoint: endpoint.trim_end_matches('/').to_string(),
            region: region.to_string(),
            last_seen_ms: last_seen_ms.min(now_unix_ms()),
        })
    }

    /// Whether it was heard of within the liveness window.
    pub fn is_fresh(&self, now_ms: u64) -> bool {
        now_ms.saturating_sub(self.last_seen_ms) < LIVENESS_MS
    }
}

#[derive(Default)]
struct Entries {
    peers: HashMap<String, Peer>,
    keys: HashMap<String, [u8; 32]>,
    contacted: HashMap<String, u64>,
}

/// The bounded table.
pub struct PeerTable {
    own_id: String,
    max: usize,
    entries: Mutex<Entries>,
}

impl PeerTable {
    /// A table for node `own_id` holding at most `max` peers.
    pub fn new(own_id: &str, max: usize) -> Self {
        Self {
            own_id: own_id.to_string(),
            max,
            entries: Mutex::new(Entries::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds or refreshes `peer`; returns whether it was new. Never adds
    /// this node itself; when full, the stalest entry makes room unless it
    /// is fresher than `peer`.
    pub fn merge(&self, peer: Peer) -> bool {
        if peer.node_id == self.own_id {
            return false;
        }
        let mut entries = self.lock();
        if let Some(known) = entries.peers.get_mut(&peer.node_id) {
            if peer.last_seen_ms >= known.last_seen_ms {
                *known = peer;
            }
            return false;
        }
        if entries.peers.len() >= self.max {
            let stalest = entries
                .peers
                .values()
                .min_by_key(|p| p.last_seen_ms)
                .map(|p| (p.node_id.clone(), p.last_seen_ms));
            match stalest {
                Some((id, seen)) if seen < peer.last_seen_ms => {
                    entries.peers.remove(&id);
                    entries.keys.remove(&id);
                    entries.contacted.remove(&id);
                }
                _ => return false,
            }
        }
        entries.peers.insert(peer.node_id.clone(), peer);
        true
    }

    /// Records a gossip key from a trusted source for a peer in the table
    /// (or for a configured peer, whose key is known before its entry).
    pub fn set_key(&self, node_id: &str, key: [u8; 32]) {
        let mut entries = self.lock();
        if entries.keys.len() < self.max * 2 || entries.keys.contains_key(node_id) {
            entries.keys.insert(node_id.to_string(), key);
        }
    }

    /// The trusted gossip key of `node_id`, if known.
    pub fn key(&self, node_id: &str) -> Option<[u8; 32]> {
        self.lock().keys.get(node_id).copied()
    }

    /// Fresh peers, freshest first, leaving out `except`, at most `limit`.
    pub fn fresh(&self, except: &[&str], limit: usize) -> Vec<Peer> {
        let now = now_unix_ms();
        let mut fresh: Vec<Peer> = self
            .lock()
            .peers
            .values()
            .filter(|p| p.is_fresh(now) && !except.contains(&p.node_id.as_str()))
            .cloned()
            .collect();
        fresh.sort_by_key(|p| std::cmp::Reverse(p.last_seen_ms));
        fresh.truncate(limit);
        fresh
    }

    /// The ids of every fresh peer.
    pub fn fresh_ids(&self) -> Vec<String> {
        let now = now_unix_ms();
        self.lock()
            .peers
            .values()
            .filter(|p| p.is_fresh(now))
            .map(|p| p.node_id.clone())
            .collect()
    }

    /// The fresh peer gossiped with least recently, marked as contacted now.
    pub fn next_to_contact(&self) -> Option<Peer> {
        let now = now_unix_ms();
        let mut entries = self.lock();
        let target = entries
            .peers
            .values()
            .filter(|p| p.is_fresh(now))
            .min_by_key(|p| entries.contacted.get(&p.node_id).copied().unwrap_or(0))
            .cloned()?;
        entries.contacted.insert(target.node_id.clone(), now);
        Some(target)
    }

    /// Peers in the table.
    pub fn len(&self) -> usize {
        self.lock().peers.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: &str, seen: u64) -> Peer {
        Peer::checked(id, &format!("http://{id}.example:8080/"), "eu", seen).unwrap()
    }

    #[test]
    fn entries_are_checked() {
        assert!(Peer::checked("n-1", "https://n.example", "eu-west", 1).is_some());
        assert!(Peer::checked("bad id", "https://n.example", "", 1).is_none());
        assert!(Peer::checked("n-1", "ftp://n.example", "", 1).is_none());
        assert!(Peer::checked("n-1", "https://user:pw@n.example", "", 1).is_none());
        assert!(Peer::checked("n-1", "https://n.example", "<script>", 1).is_none());
        assert!(Peer::checked("n-1", &format!("https://{}", "a".repeat(600)), "", 1).is_none());
        let future = Peer::checked("n-1", "https://n.example", "", u64::MAX).unwrap();
        assert!(future.last_seen_ms <= now_unix_ms());
    }

    #[test]
    fn a_full_table_keeps_the_freshest_and_never_itself() {
        let now = now_unix_ms();
        let table = PeerTable::new("me", 2);
        assert!(!table.merge(peer("me", now)));
        assert!(table.merge(peer("a", now - 10)));
        assert!(table.merge(peer("b", now - 5)));
        assert!(!table.merge(peer("stale", now - 20)), "staler than all");
        assert!(table.merge(peer("c", now)));
        assert_eq!(table.len(), 2);
        let ids: Vec<String> = table
            .fresh(&[], 10)
            .into_iter()
            .map(|p| p.node_id)
            .collect();
        assert_eq!(ids, ["c", "b"]);
        assert_eq!(table.fresh(&["c"], 10).len(), 1);
        assert!(!table.merge(peer("old", now - LIVENESS_MS * 2)));
        let first = table.next_to_contact().unwrap();
        let second = table.next_to_contact().unwrap();
        assert_ne!(first.node_id, second.node_id, "round robin");
    }
}
