//! The per-Origin task rate limit (`protocol.md` §1.3 step 1, §4.6).
//!
//! With CORS open to every origin, any web page can make its visitors'
//! browsers send tasks to the node (a confused deputy). Browsers always send
//! `Origin`, so each origin gets a fixed number of tasks per 60 s window;
//! the rest get 429 `IICP-E023`. Callers without `Origin` (SDK clients,
//! proxies) are not limited here: the admission gate bounds them.
//!
//! Memory is bounded: at most [`MAX_TRACKED_ORIGINS`] windows are kept.
//! When that many origins are live at once, a new origin passes untracked
//! rather than locking out every browser for a minute; `Origin` is chosen
//! by the caller anyway, so this limit only tames browsers, never a client
//! that lies.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The fixed window.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Most origins tracked at once.
pub const MAX_TRACKED_ORIGINS: usize = 10_000;
/// Longest `Origin` value tracked as itself; longer ones share one window.
const MAX_ORIGIN_BYTES: usize = 256;

/// Counts tasks per origin in fixed windows.
#[derive(Debug)]
pub struct OriginLimiter {
    limit: u32,
    windows: Mutex<HashMap<Box<str>, Window>>,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    tasks: u32,
}

impl OriginLimiter {
    /// `limit` tasks per origin per window; `None` when `limit` is 0 (off).
    pub fn new(limit: u32) -> Option<Self> {
        (limit > 0).then(|| Self {
            limit,
            windows: Mutex::new(HashMap::new()),
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
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        if !windows.contains_key(origin) && windows.len() >= MAX_TRACKED_ORIGINS {
            windows.retain(|_, window| now.duration_since(window.started) < WINDOW);
            if windows.len() >= MAX_TRACKED_ORIGINS {
                return Ok(());
            }
        }
        let window = windows.entry(origin.into()).or_insert(Window {
            started: now,
            tasks: 0,
        });
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_origin_gets_its_own_window_which_resets() {
        let limiter = OriginLimiter::new(2).unwrap();
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
        assert!(OriginLimiter::new(0).is_none());
    }

    #[test]
    fn tracking_is_bounded_and_expired_windows_make_room() {
        let limiter = OriginLimiter::new(1).unwrap();
        let start = Instant::now();
        for i in 0..MAX_TRACKED_ORIGINS {
            limiter
                .check(&format!("https://{i}.example"), start)
                .unwrap();
        }
        // Full of live windows: a new origin passes untracked, every time.
        assert!(limiter.check("https://new.example", start).is_ok());
        assert!(limiter.check("https://new.example", start).is_ok());
        assert_eq!(limiter.windows.lock().unwrap().len(), MAX_TRACKED_ORIGINS);
        // Once they expire, new origins are tracked (and limited) again.
        let later = start + WINDOW;
        assert!(limiter.check("https://new.example", later).is_ok());
        assert!(limiter.check("https://new.example", later).is_err());
        assert_eq!(limiter.windows.lock().unwrap().len(), 1);
    }

    #[test]
    fn oversized_origins_share_one_window() {
        let limiter = OriginLimiter::new(1).unwrap();
        let now = Instant::now();
        assert!(limiter.check(&"a".repeat(300), now).is_ok());
        assert!(limiter.check(&"b".repeat(300), now).is_err());
    }
}
