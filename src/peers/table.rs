//! The peer table: nodes this node knows, bounded in count, each entry
//! checked on the way in (`iicp-dir.md` §3.6).
//!
//! An entry is a node id, an http(s) endpoint without credentials, a region
//! and when it was last heard of; entries older than the liveness window
//! are neither answered nor gossiped and are dropped when room is needed.
//! A full table drops the stalest entry for a fresher one, so a flood of
//! made-up peers cannot evict what was heard of recently — and never drops
//! a pinned entry: a node whose key the configuration trusts, or the node
//! a configured seed answered as.
//!
//! Every merge says where the entry comes from ([`Origin`]). Only the
//! directory or the node itself (its own signed answer, at the endpoint
//! this node reached) may place or move a known node id; an entry relayed
//! by anyone else may add an unknown id or refresh a known one at the same
//! endpoint, never re-point it. A node whose key is configured counts as
//! known before its entry exists, so a relay cannot be the first to place
//! it either.
//!
//! Gossip keys are kept beside entries only when they came from a source
//! this node trusts (its configuration or the directory), never from gossip
//! itself. Configured keys live apart from learned ones and are never
//! evicted; learned ones leave with their entry.

use std::collections::{HashMap, HashSet};
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

/// Where an entry comes from, which decides what it may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The directory (bootstrap list, node detail): may place and move ids.
    Directory,
    /// The node itself, by its own verified signature: may place and move
    /// its own id.
    SelfSigned,
    /// Another node's list: may add unknown ids and refresh known ones at
    /// their known endpoint.
    Relayed,
}

/// What a merge did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merged {
    /// A new entry.
    Added,
    /// A known entry heard of again (or moved, by its own node).
    Refreshed,
    /// Nothing changed: this node itself, or no fresher than what is known.
    Unchanged,
    /// Refused: a relayed entry naming a known id at another endpoint.
    Repointed,
    /// Refused: the table is full of fresher or pinned entries.
    Full,
}

#[derive(Default)]
struct Entries {
    peers: HashMap<String, Peer>,
    keys: HashMap<String, [u8; 32]>,
    contacted: HashMap<String, u64>,
    /// The node id each seed answered as (seed URL → id), at most one per
    /// configured seed.
    seed_ids: HashMap<String, String>,
}

/// The bounded table.
pub struct PeerTable {
    own_id: String,
    max: usize,
    /// Keys from the configuration: never evicted, never replaced.
    configured_keys: HashMap<String, [u8; 32]>,
    /// Seeds from the configuration (the bound on `seed_ids`).
    seeds: HashSet<String>,
    entries: Mutex<Entries>,
}

impl PeerTable {
    /// A table for node `own_id` holding at most `max` peers, trusting
    /// `configured_keys` and pinning what the configured `seeds` answer as.
    pub fn new(
        own_id: &str,
        max: usize,
        configured_keys: HashMap<String, [u8; 32]>,
        seeds: &[String],
    ) -> Self {
        Self {
            own_id: own_id.to_string(),
            max,
            configured_keys,
            seeds: seeds.iter().map(|s| seed_key(s)).collect(),
            entries: Mutex::new(Entries::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn pinned(&self, entries: &Entries, node_id: &str) -> bool {
        self.configured_keys.contains_key(node_id)
            || entries.seed_ids.values().any(|id| id == node_id)
    }

    /// Adds or refreshes `peer` from `origin` (see the module docs). Never
    /// adds this node itself; when full, the stalest unpinned entry makes
    /// room unless it is fresher than `peer`.
    pub fn merge(&self, peer: Peer, origin: Origin) -> Merged {
        if peer.node_id == self.own_id {
            return Merged::Unchanged;
        }
        let relayed = origin == Origin::Relayed;
        let mut entries = self.lock();
        if let Some(known) = entries.peers.get_mut(&peer.node_id) {
            if relayed && known.endpoint != peer.endpoint {
                return Merged::Repointed;
            }
            if peer.last_seen_ms < known.last_seen_ms {
                return Merged::Unchanged;
            }
            if relayed {
                known.last_seen_ms = peer.last_seen_ms;
            } else {
                *known = peer;
            }
            return Merged::Refreshed;
        }
        if relayed && self.configured_keys.contains_key(&peer.node_id) {
            return Merged::Repointed;
        }
        if entries.peers.len() >= self.max {
            let stalest = entries
                .peers
                .values()
                .filter(|p| !self.pinned(&entries, &p.node_id))
                .min_by_key(|p| p.last_seen_ms)
                .map(|p| (p.node_id.clone(), p.last_seen_ms));
            match stalest {
                Some((id, seen)) if seen < peer.last_seen_ms => {
                    entries.peers.remove(&id);
                    entries.keys.remove(&id);
                    entries.contacted.remove(&id);
                }
                _ => return Merged::Full,
            }
        }
        entries.peers.insert(peer.node_id.clone(), peer);
        Merged::Added
    }

    /// Pins `node_id` as what configured `seed` answered as (replacing what
    /// it answered as before); other URLs pin nothing.
    pub fn pin_seed(&self, seed: &str, node_id: &str) {
        let seed = seed_key(seed);
        if self.seeds.contains(&seed) {
            self.lock().seed_ids.insert(seed, node_id.to_string());
        }
    }

    /// Records a gossip key from a trusted source for a peer in the table
    /// (or for a configured peer, whose key is known before its entry).
    pub fn set_key(&self, node_id: &str, key: [u8; 32]) {
        if self.configured_keys.contains_key(node_id) {
            return;
        }
        let mut entries = self.lock();
        if entries.keys.len() < self.max * 2 || entries.keys.contains_key(node_id) {
            entries.keys.insert(node_id.to_string(), key);
        }
    }

    /// The trusted gossip key of `node_id`, if known.
    pub fn key(&self, node_id: &str) -> Option<[u8; 32]> {
        if let Some(key) = self.configured_keys.get(node_id) {
            return Some(*key);
        }
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

/// A seed URL as compared: without a trailing slash.
fn seed_key(seed: &str) -> String {
    seed.trim_end_matches('/').to_string()
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
        let table = PeerTable::new("me", 2, HashMap::new(), &[]);
        let relayed = |p| table.merge(p, Origin::Relayed);
        assert_eq!(relayed(peer("me", now)), Merged::Unchanged);
        assert_eq!(relayed(peer("a", now - 10)), Merged::Added);
        assert_eq!(relayed(peer("b", now - 5)), Merged::Added);
        assert_eq!(
            relayed(peer("stale", now - 20)),
            Merged::Full,
            "staler than all"
        );
        assert_eq!(relayed(peer("c", now)), Merged::Added);
        assert_eq!(table.len(), 2);
        let ids: Vec<String> = table
            .fresh(&[], 10)
            .into_iter()
            .map(|p| p.node_id)
            .collect();
        assert_eq!(ids, ["c", "b"]);
        assert_eq!(table.fresh(&["c"], 10).len(), 1);
        assert_eq!(relayed(peer("old", now - LIVENESS_MS * 2)), Merged::Full);
        let first = table.next_to_contact().unwrap();
        let second = table.next_to_contact().unwrap();
        assert_ne!(first.node_id, second.node_id, "round robin");
    }

    #[test]
    fn only_the_node_itself_or_the_directory_moves_a_known_id() {
        let now = now_unix_ms();
        let configured = HashMap::from([("friend".to_string(), [7; 32])]);
        let table = PeerTable::new("me", 8, configured, &[]);
        let elsewhere = |id: &str| Peer::checked(id, "http://evil.example", "eu", now).unwrap();
        assert_eq!(
            table.merge(peer("a", now - 10), Origin::Relayed),
            Merged::Added
        );
        assert_eq!(
            table.merge(elsewhere("a"), Origin::Relayed),
            Merged::Repointed
        );
        assert_eq!(
            table.merge(peer("a", now), Origin::Relayed),
            Merged::Refreshed
        );
        assert_eq!(
            table.merge(elsewhere("friend"), Origin::Relayed),
            Merged::Repointed
        );
        assert_eq!(
            table.merge(elsewhere("a"), Origin::SelfSigned),
            Merged::Refreshed
        );
        assert_eq!(table.fresh(&[], 10)[0].endpoint, "http://evil.example");
        assert_eq!(
            table.merge(peer("friend", now), Origin::Directory),
            Merged::Added
        );
    }

    #[test]
    fn pinned_entries_and_configured_keys_are_never_evicted() {
        let now = now_unix_ms();
        let configured = HashMap::from([("friend".to_string(), [7; 32])]);
        let seed = "http://seed.example:8080/".to_string();
        let table = PeerTable::new("me", 2, configured, std::slice::from_ref(&seed));
        assert_eq!(
            table.merge(peer("friend", now - 50), Origin::SelfSigned),
            Merged::Added
        );
        assert_eq!(
            table.merge(peer("seed", now - 40), Origin::SelfSigned),
            Merged::Added
        );
        table.pin_seed("http://seed.example:8080", "seed");
        table.pin_seed("http://not-a-seed.example", "other");
        for i in 0..10 {
            let merged = table.merge(peer(&format!("flood-{i}"), now), Origin::Relayed);
            assert_eq!(merged, Merged::Full);
        }
        table.set_key("friend", [9; 32]);
        assert_eq!(table.key("friend"), Some([7; 32]), "configured keys stay");
        assert_eq!(table.len(), 2);
    }
}
