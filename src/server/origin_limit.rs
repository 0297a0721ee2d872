//! The per-Origin task rate limit (`protocol.md` §1.3 step 1, §4.6).
//!
//! With CORS open to every origin, any web page can make its visitors'
//! browsers send tasks to the node (a confused deputy). Browsers always send
//! `Origin`, so each origin gets a fixed number of tasks per 60 s window;
//! the rest get 429 `IICP-E023`. Callers without `Origin` (SDK clients,
//! proxies) are not limited here: the admission gate bounds them.
//!
//! Memory is bounded in count and bytes: at most `tracked` windows, each
//! keyed by at most [`MAX_ORIGIN_BYTES`] (longer origins share one window),
//! so at most `tracked × (256 + ~64)` bytes — about 3 MiB for the default
//! 10,000. The limiter never fails open: when it is full, the origins used
//! least recently are forgotten, not the new one let through untracked. A
//! page whose visitors keep sending tasks stays tracked however many fake
//! origins a client invents, because every use makes its window recent.
//!
//! "Least recently used" is kept in two generations per shard: a window
//! used in the current generation stays, one used only in the previous
//! generation moves to the current one on its next use, and when the current
//! generation is full the previous one is dropped whole. Every check is
//! O(1) (amortised) under the lock of one of [`SHARDS`] shards, chosen by a
//! keyed hash so no client can aim its origins at one shard.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus::IntCounter;

/// The fixed window.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Default number of origins tracked at once.
pub const DEFAULT_TRACKED_ORIGINS: usize = 10_000;
/// Longest `Origin` value tracked as itself; longer ones share one window.
pub const MAX_ORIGIN_BYTES: usize = 256;
/// Lock shards.
const SHARDS: usize = 16;

/// Counts tasks per origin in fixed windows.
#[derive(Debug)]
pub struct OriginLimiter {
    limit: u32,
    shards: Box<[Mutex<Shard>]>,
    hasher: std::collections::hash_map::RandomState,
    generation_capacity: usize,
    forgotten: IntCounter,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    tasks: u32,
}

#[derive(Debug, Default)]
struct Shard {
    current: HashMap<Box<str>, Window>,
    previous: HashMap<Box<str>, Window>,
}

impl Shard {
    /// The window of `origin`, made recent; counts the windows a full
    /// generation pushed out into `forgotten`.
    fn window(
        &mut self,
        origin: &str,
        now: Instant,
        capacity: usize,
        forgotten: &IntCounter,
    ) -> &mut Window {
        if !self.current.contains_key(origin) {
            let carried = self.previous.remove(origin);
            if self.current.len() >= capacity {
                forgotten.inc_by(self.previous.len() as u64);
                self.previous = std::mem::take(&mut self.current);
            }
            let window = carried.unwrap_or(Window {
                started: now,
                tasks: 0,
            });
            self.current.insert(origin.into(), window);
        }
        self.current
            .get_mut(origin)
            .unwrap_or_else(|| unreachable!("inserted above"))
    }

    fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }
}

impl OriginLimiter {
    /// `limit` tasks per origin per window, at most `tracked` origins
    /// remembered; windows forgotten to make room are counted in
    /// `forgotten`. `None` when `limit` is 0 (off).
    pub fn new(limit: u32, tracked: usize, forgotten: IntCounter) -> Option<Self> {
        (limit > 0).then(|| Self {
            limit,
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: Default::default(),
            // Two generations per shard share the shard's part of `tracked`.
            generation_capacity: (tracked / SHARDS / 2).max(1),
            forgotten,
        })
    }

    /// Counts a task from `origin` at `now`: `Err(wait)` when the origin
    /// has used its window, `wait` being the time until the window ends.
    pub fn check(&self, origin: &str, now: Instant) -> Result<(), Duration> {
        let origin = if origin.len() > MAX_ORIGIN_BYTES {
            "(oversized origin)"
        } else {
            origin
        };
        let shard = &self.shards[self.hasher.hash_one(origin) as usize % SHARDS];
        let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
        let window = shard.window(origin, now, self.generation_capacity, &self.forgotten);
        if now.duration_since(window.started) >= WINDOW {
            *window = Window {
                started: now,
                tasks: 0,
            };
        }
        if window.tasks >= self.limit {
            return Err(WINDOW.saturating_sub(now.duration_since(window.started)));
        }
        window.tasks += 1;
        Ok(())
    }

    /// Origins tracked now.
    pub fn tracked(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(limit: u32, tracked: usize) -> OriginLimiter {
        OriginLimiter::new(limit, tracked, IntCounter::new("f", "f").unwrap()).unwrap()
    }

    #[test]
    fn each_origin_gets_its_own_window_which_resets() {
        let limiter = limiter(2, DEFAULT_TRACKED_ORIGINS);
        let start = Instant::now();
        assert!(limiter.check("https://a.example", start).is_ok());
        assert!(limiter.check("https://a.example", start).is_ok());
        let wait = limiter
            .check("https://a.example", start + Duration::from_secs(15))
            .unwrap_err();
        assert_eq!(wait, Duration::from_secs(45));
        assert!(limiter.check("https://b.example", start).is_ok());
        assert!(limiter.check("https://a.example", start + WINDOW).is_ok());
    }

    #[test]
    fn zero_turns_it_off() {
        assert!(OriginLimiter::new(0, 10, IntCounter::new("f", "f").unwrap()).is_none());
    }

    #[test]
    fn a_flood_of_fake_origins_neither_switches_it_off_nor_grows_it() {
        let limiter = limiter(1, DEFAULT_TRACKED_ORIGINS);
        let start = Instant::now();
        assert!(limiter.check("https://abuser.example", start).is_ok());
        for i in 0..5 * DEFAULT_TRACKED_ORIGINS {
            let fake = format!("https://{i}.example");
            assert!(limiter.check(&fake, start).is_ok());
            if i % 100 == 0 {
                // The page whose visitors keep coming stays limited.
                assert!(
                    limiter.check("https://abuser.example", start).is_err(),
                    "fail-open after {i} fake origins"
                );
            }
        }
        assert!(limiter.tracked() <= DEFAULT_TRACKED_ORIGINS);
        assert!(limiter.forgotten.get() >= 3 * DEFAULT_TRACKED_ORIGINS as u64);
        // A new origin is still tracked, and limited.
        assert!(limiter.check("https://new.example", start).is_ok());
        assert!(limiter.check("https://new.example", start).is_err());
    }

    #[test]
    fn oversized_origins_share_one_window() {
        let limiter = limiter(1, DEFAULT_TRACKED_ORIGINS);
        let now = Instant::now();
        assert!(limiter.check(&"a".repeat(300), now).is_ok());
        assert!(limiter.check(&"b".repeat(300), now).is_err());
    }
}
