//! Giving freed heap memory back to the kernel after a burst.
//!
//! glibc keeps memory that many threads freed in its arenas instead of
//! returning it: measured on this node, 3,500 slow connections opened and
//! closed three times left the resident set at 226 MB against 33 MB before
//! (growing with each round, as fragments pile up), and one `malloc_trim`
//! brought it back to 37 MB. A host that must come back to its baseline
//! after a hostile burst therefore trims once the burst is over.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Shortest time between two throttled returns.
const THROTTLE: Duration = Duration::from_millis(200);

/// Returns free heap pages to the kernel (glibc's `malloc_trim`); a no-op
/// with other C libraries, which return memory on their own terms.
pub fn return_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases memory that is already free; it
    // has no preconditions and is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// [`return_free_memory`] for callers that may ask often (after every
/// hostile task, say): skipped while one runs or if one ran within the
/// last 200 ms, so a flood of such calls cannot become a flood of trims.
pub fn return_free_memory_throttled() {
    static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);
    static RUNNING: AtomicBool = AtomicBool::new(false);
    static LAST_MS: AtomicU64 = AtomicU64::new(0);
    let now_ms = crate::clock::whole_ms(EPOCH.elapsed()).max(1);
    let last = LAST_MS.load(Ordering::Relaxed);
    if (last != 0 && now_ms.saturating_sub(last) < crate::clock::whole_ms(THROTTLE))
        || RUNNING.swap(true, Ordering::AcqRel)
    {
        return;
    }
    return_free_memory();
    LAST_MS.store(now_ms, Ordering::Relaxed);
    RUNNING.store(false, Ordering::Release);
}

/// Decides when a burst of held resources (connections) is over: once the
/// count falls to a quarter of a peak of at least `min_burst`.
#[derive(Debug)]
pub struct BurstEnd {
    min_burst: usize,
    held: AtomicUsize,
    peak: AtomicUsize,
}

impl BurstEnd {
    /// Bursts smaller than `min_burst` are not worth a trim.
    pub fn new(min_burst: usize) -> Self {
        Self {
            min_burst,
            held: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
        }
    }

    /// One more held.
    pub fn acquired(&self) {
        let held = self.held.fetch_add(1, Ordering::AcqRel) + 1;
        self.peak.fetch_max(held, Ordering::AcqRel);
    }

    /// One fewer held; true when this release ends a burst (once per burst).
    pub fn released(&self) -> bool {
        let held = self.held.fetch_sub(1, Ordering::AcqRel).saturating_sub(1);
        let peak = self.peak.load(Ordering::Acquire);
        peak >= self.min_burst
            && held <= peak / 4
            && self
                .peak
                .compare_exchange(peak, held, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_ends_once_when_three_quarters_are_released() {
        let burst = BurstEnd::new(8);
        for _ in 0..4 {
            burst.acquired();
        }
        assert!(!(0..4).any(|_| burst.released()), "too small to count");
        for _ in 0..16 {
            burst.acquired();
        }
        let ends: Vec<bool> = (0..16).map(|_| burst.released()).collect();
        assert_eq!(ends.iter().filter(|e| **e).count(), 1);
        assert!(ends[11], "ends when 4 of 16 are left: {ends:?}");
    }
}
