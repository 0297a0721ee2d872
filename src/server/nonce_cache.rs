//! Replay protection: a nonce seen in the last 300 s is refused (409
//! `IICP-E011`).
//!
//! * O(1) amortised: a hash set answers "seen?", and a queue in arrival
//!   order (counted per second) lets each request expire the entries older
//!   than the window from its front, so every entry is inserted and removed
//!   exactly once.
//! * Bounded memory: at most `capacity` entries of ~18 bytes, each a 64-bit
//!   keyed hash of the nonce (random key per process, so a client cannot aim
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

/// Fingerprints are keyed 64-bit hashes with uniformly random bits, so the
/// set uses them as they are instead of hashing them a second time.
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
    fn write_u64(&mut self, value: u64) {
        self.0 ^= value;
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
        /// When the oldest entries leave the window.
        retry_after: Duration,
    },
}

/// Remembered fingerprints in arrival order, with arrivals counted per
/// second: about 18 bytes per nonce in all.
#[derive(Default)]
struct Entries {
    seen: HashSet<u64, BuildHasherDefault<FingerprintHasher>>,
    order: VecDeque<u64>,
    /// (second since the cache started, nonces that arrived in it).
    seconds: VecDeque<(u64, u32)>,
}

/// The replay cache.
pub struct NonceCache {
    entries: Mutex<Entries>,
    key: RandomState,
    epoch: Instant,
    window_s: u64,
    capacity: usize,
}

impl NonceCache {
    /// A cache remembering up to `capacity` nonces for `window` (rounded up
    /// to whole seconds: an entry lives between `window` and `window + 1 s`).
    pub fn new(window: Duration, capacity: usize) -> Self {
        Self {
            entries: Mutex::new(Entries::default()),
            key: RandomState::new(),
            epoch: Instant::now(),
            window_s: window.as_secs() + u64::from(window.subsec_nanos() > 0),
            capacity,
        }
    }

    /// Checks `nonce` and, when fresh, remembers it.
    pub fn check_and_insert(&self, nonce: &str) -> NonceCheck {
        self.check_and_insert_at(nonce, self.epoch.elapsed().as_secs())
    }

    fn check_and_insert_at(&self, nonce: &str, now_s: u64) -> NonceCheck {
        let fingerprint = self.key.hash_one(nonce);
        let mut entries = self.lock();
        entries.expire(now_s, self.window_s);
        if entries.seen.contains(&fingerprint) {
            return NonceCheck::Replay;
        }
        if entries.seen.len() >= self.capacity {
            let oldest = entries.seconds.front().map_or(now_s, |&(second, _)| second);
            let expires_in = (oldest + self.window_s).saturating_sub(now_s).max(1);
            return NonceCheck::Full {
                retry_after: Duration::from_secs(expires_in),
            };
        }
        if entries.seen.capacity() == 0 {
            // Size the set once, on first use, so it never rehashes under the
            // lock; its pages are only touched as nonces arrive.
            entries.seen.reserve(self.capacity.min(1 << 24));
        }
        entries.seen.insert(fingerprint);
        entries.order.push_back(fingerprint);
        match entries.seconds.back_mut() {
            Some((second, count)) if *second == now_s => *count += 1,
            _ => entries.seconds.push_back((now_s, 1)),
        }
        NonceCheck::Fresh
    }

    /// Nonces remembered right now (expired ones are dropped first).
    pub fn len(&self) -> usize {
        self.len_at(self.epoch.elapsed().as_secs())
    }

    fn len_at(&self, now_s: u64) -> usize {
        let mut entries = self.lock();
        entries.expire(now_s, self.window_s);
        entries.seen.len()
    }

    /// Whether no nonce is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Entries {
    /// Drops the nonces whose window has ended by `now_s`.
    fn expire(&mut self, now_s: u64, window_s: u64) {
        while let Some(&(second, count)) = self.seconds.front() {
            if second + window_s > now_s {
                break;
            }
            self.seconds.pop_front();
            for fingerprint in self.order.drain(..count as usize) {
                self.seen.remove(&fingerprint);
            }
        }
        if self.seen.is_empty() && self.order.capacity() > 0 {
            // Give the memory back once a flood has fully passed.
            *self = Entries::default();
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
            NonceCheck::Full { retry_after } => assert!(retry_after <= Duration::from_secs(301)),
            other => panic!("expected Full, got {other:?}"),
        }
        // The refused nonce was not remembered, and the cache did not grow.
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.check_and_insert("b"), NonceCheck::Replay);
    }

    #[test]
    fn entries_expire_after_the_window_not_before() {
        let cache = NonceCache::new(Duration::from_secs(300), 10);
        assert_eq!(cache.check_and_insert_at("a", 10), NonceCheck::Fresh);
        assert_eq!(cache.check_and_insert_at("b", 11), NonceCheck::Fresh);
        assert_eq!(cache.check_and_insert_at("a", 309), NonceCheck::Replay);
        assert_eq!(cache.check_and_insert_at("a", 310), NonceCheck::Fresh);
        assert_eq!(cache.len_at(310), 2);
        assert_eq!(cache.len_at(311), 1);
    }

    #[test]
    fn a_full_cache_names_when_room_frees_up() {
        let cache = NonceCache::new(Duration::from_secs(300), 1);
        assert_eq!(cache.check_and_insert_at("a", 100), NonceCheck::Fresh);
        assert_eq!(
            cache.check_and_insert_at("b", 150),
            NonceCheck::Full {
                retry_after: Duration::from_secs(250)
            }
        );
        assert_eq!(cache.check_and_insert_at("b", 400), NonceCheck::Fresh);
    }

    #[test]
    fn memory_is_returned_after_a_flood() {
        let cache = NonceCache::new(Duration::from_secs(300), 100_000);
        for i in 0..50_000 {
            cache.check_and_insert_at(&i.to_string(), i / 10_000);
        }
        assert_eq!(cache.len_at(300), 40_000);
        assert_eq!(cache.len_at(305), 0);
        let entries = cache.lock();
        assert_eq!(entries.seen.capacity(), 0);
        assert_eq!(entries.order.capacity(), 0);
    }
}
