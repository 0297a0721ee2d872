//! Replay protection: a nonce seen in the last 300 s is refused (409
//! `IICP-E011`).
//!
//! * O(1) amortised: a hash set answers "seen?", and a queue in arrival
//!   order lets each request expire the entries older than the window from
//!   its front, so every entry is inserted and removed exactly once.
//! * Bounded memory: at most `capacity` entries, each a 128-bit keyed hash
//!   of the nonce (random keys per process, so a client cannot aim
//!   collisions; a collision could only refuse a fresh nonce, never accept a
//!   replay).
//! * At the cap, every entry is still inside the window, so evicting one
//!   could let its replay through. Instead a *new* nonce is refused with 503
//!   `nonce_cache_full` and a `Retry-After` of when the oldest entry expires;
//!   tasks without a nonce are unaffected. A replay is never accepted.
//!
//! Nonces are remembered in memory only and are lost on restart, as in the
//! reference SDK (`protocol.md` §4.1).

use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A nonce's fingerprint: two independent keyed 64-bit hashes.
type Fingerprint = [u64; 2];

/// Fingerprints are already keyed hashes with uniformly random bits, so the
/// set folds those bits instead of hashing them a second time.
#[derive(Default)]
struct FingerprintHasher(u64);

impl Hasher for FingerprintHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 ^= u64::from_ne_bytes(word);
        }
    }
}

/// Outcome of checking a nonce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceCheck {
    /// Not seen inside the window; now remembered.
    Fresh,
    /// Seen inside the window.
    Replay,
    /// The cache is at its cap; the nonce was not remembered.
    Full {
        /// When the oldest entry leaves the window.
        retry_after: Duration,
    },
}

struct Entries {
    seen: HashSet<Fingerprint, BuildHasherDefault<FingerprintHasher>>,
    arrivals: VecDeque<(u64, Fingerprint)>,
}

/// The replay cache.
pub struct NonceCache {
    entries: Mutex<Entries>,
    keys: (RandomState, RandomState),
    epoch: Instant,
    window_ms: u64,
    capacity: usize,
}

impl NonceCache {
    /// A cache remembering up to `capacity` nonces for `window`.
    pub fn new(window: Duration, capacity: usize) -> Self {
        Self {
            entries: Mutex::new(Entries {
                seen: HashSet::default(),
                arrivals: VecDeque::new(),
            }),
            keys: (RandomState::new(), RandomState::new()),
            epoch: Instant::now(),
            window_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX),
            capacity,
        }
    }

    /// Checks `nonce` and, when fresh, remembers it.
    pub fn check_and_insert(&self, nonce: &str) -> NonceCheck {
        let fingerprint = [self.keys.0.hash_one(nonce), self.keys.1.hash_one(nonce)];
        let now_ms = self.now_ms();
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        entries.expire(now_ms, self.window_ms);
        if entries.seen.contains(&fingerprint) {
            return NonceCheck::Replay;
        }
        if entries.seen.len() >= self.capacity {
            let oldest = entries.arrivals.front().map_or(now_ms, |(at, _)| *at);
            let expires_in = (oldest + self.window_ms).saturating_sub(now_ms).max(1);
            return NonceCheck::Full {
                retry_after: Duration::from_millis(expires_in),
            };
        }
        entries.seen.insert(fingerprint);
        entries.arrivals.push_back((now_ms, fingerprint));
        NonceCheck::Fresh
    }

    /// Nonces remembered right now (expired ones are dropped first).
    pub fn len(&self) -> usize {
        let now_ms = self.now_ms();
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        entries.expire(now_ms, self.window_ms);
        entries.seen.len()
    }

    /// Whether no nonce is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

impl Entries {
    /// Drops entries whose window has ended by `now_ms`.
    fn expire(&mut self, now_ms: u64, window_ms: u64) {
        let before = self.seen.len();
        while let Some(&(at, fingerprint)) = self.arrivals.front() {
            if at.saturating_add(window_ms) > now_ms {
                break;
            }
            self.arrivals.pop_front();
            self.seen.remove(&fingerprint);
        }
        // Give memory back after a flood has passed.
        if before != self.seen.len() && self.seen.capacity() > 4 * self.seen.len().max(1024) {
            self.seen.shrink_to(self.seen.len() * 2);
            self.arrivals.shrink_to(self.arrivals.len() * 2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nonce_is_fresh_once_then_a_replay() {
        let cache = NonceCache::new(Duration::from_secs(300), 10);
        assert_eq!(cache.check_and_insert("a"), NonceCheck::Fresh);
        assert_eq!(cache.check_and_insert("a"), NonceCheck::Replay);
        assert_eq!(cache.check_and_insert("b"), NonceCheck::Fresh);
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn at_the_cap_replays_are_still_refused_and_new_nonces_wait() {
        let cache = NonceCache::new(Duration::from_secs(300), 2);
        cache.check_and_insert("a");
        cache.check_and_insert("b");
        assert_eq!(cache.check_and_insert("a"), NonceCheck::Replay);
        match cache.check_and_insert("c") {
            NonceCheck::Full { retry_after } => assert!(retry_after <= Duration::from_secs(300)),
            other => panic!("expected Full, got {other:?}"),
        }
        // The refused nonce was not remembered, and the cache did not grow.
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.check_and_insert("b"), NonceCheck::Replay);
    }

    #[test]
    fn entries_expire_after_the_window() {
        let cache = NonceCache::new(Duration::from_millis(30), 2);
        assert_eq!(cache.check_and_insert("a"), NonceCheck::Fresh);
        cache.check_and_insert("b");
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(cache.check_and_insert("a"), NonceCheck::Fresh);
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn memory_is_returned_after_a_flood() {
        let cache = NonceCache::new(Duration::from_millis(20), 100_000);
        for i in 0..50_000 {
            cache.check_and_insert(&i.to_string());
        }
        std::thread::sleep(Duration::from_millis(40));
        cache.check_and_insert("after");
        let entries = cache.entries.lock().unwrap();
        assert_eq!(entries.seen.len(), 1);
        assert!(
            entries.seen.capacity() < 10_000,
            "capacity {}",
            entries.seen.capacity()
        );
    }
}
