//! Giving freed heap memory back to the kernel after a burst.
//!
//! glibc keeps memory that many threads freed in its arenas instead of
//! returning it: measured on this node, 3,500 slow connections opened and
//! closed three times left the resident set at 226 MB against 33 MB before
//! (growing with each round, as fragments pile up), and one `malloc_trim`
//! brought it back to 37 MB. A host that must come back to its baseline
//! after a hostile burst therefore trims once the burst is over.
//!
//! The node binary allocates through mimalloc (`src/main.rs`): by default
//! it purges freed pages only a second later, and only when it next runs
//! on that arena, so an idle node after a burst kept them (a hostile relay
//! worker's 6 MiB results: +64 MiB resident for good). With
//! [`return_freed_pages_at_once`] it decommits them when freed, as glibc
//! does for its mapped blocks. Its heaps are per thread and collected only
//! by their own thread, so a return also has each runtime worker collect
//! its heap as it parks; `malloc_trim` still covers what C code allocated
//! through glibc.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Shortest time between two throttled returns.
const THROTTLE: Duration = Duration::from_millis(200);

/// Blocks at least this large get their own mapping, returned to the
/// kernel the moment they are freed.
pub const LARGE_BLOCK_BYTES: usize = 1 << 20;

/// Makes glibc give every block of [`LARGE_BLOCK_BYTES`] or more its own
/// mapping, for good.
///
/// By default glibc raises its mmap threshold to the size of the largest
/// mapped block freed so far (up to 32 MiB), and its trim threshold to
/// twice that. After one hostile task made the host copy 4 MiB, later
/// 4 MiB copies then land in per-thread arenas, whose free top chunk
/// `malloc_trim` does not return: measured, 40 tasks reporting a 4 MiB
/// `model_used` left two arenas holding 4 MiB each, +12 MiB resident for
/// good; with the threshold fixed, +5 MiB, all of it the pool's
/// keep-resident slots. Blocks this large are rare on the task path (a
/// result over 1 MiB), so the extra mmap per such block costs little.
/// An operator's own `MALLOC_MMAP_THRESHOLD_` or `GLIBC_TUNABLES` wins.
pub fn return_large_blocks_promptly() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let tuned_by_operator = std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_some()
            || std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("mmap_threshold"));
        if !tuned_by_operator {
            // SAFETY: mallopt only changes allocator parameters; it is
            // thread-safe and has no memory-safety preconditions.
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, LARGE_BLOCK_BYTES as libc::c_int);
            }
        }
    }
}

/// mimalloc 3's `mi_option_e` numbers (include/mimalloc.h) for the two
/// options below; libmimalloc-sys names only mimalloc 2's.
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Makes mimalloc decommit freed pages at once (`purge_delay` 0) and commit
/// arenas as they fill (`arena_eager_commit` 0), so the resident set
/// follows what is allocated. Measured: without the first, the trust
/// boundaries reliability family's hostile relay worker left the node at
/// 99.7 MiB against 35.5 before (allowed +24 MiB); with both, 24.5 against
/// 22.7, as with glibc. An operator's `MIMALLOC_PURGE_DELAY` or
/// `MIMALLOC_ARENA_EAGER_COMMIT` wins. Call first thing in `main`.
pub fn return_freed_pages_at_once() {
    // SAFETY: mi_option_set_default only stores a value for an option the
    // environment did not set; valid option numbers, no other preconditions.
    unsafe {
        libmimalloc_sys::mi_option_set_default(MI_OPTION_PURGE_DELAY, 0);
        libmimalloc_sys::mi_option_set_default(MI_OPTION_ARENA_EAGER_COMMIT, 0);
    }
}

/// Bumped by every [`return_free_memory`]: each runtime worker then
/// collects its own mimalloc heap the next time it parks
/// ([`collect_own_heap_if_asked`]), since a collection reaches only the
/// calling thread's heap.
static RETURN_GENERATION: AtomicU64 = AtomicU64::new(0);

/// Frees the calling thread's mimalloc pages that hold nothing (and blocks
/// other threads freed into them).
fn collect_own_heap() {
    // SAFETY: mi_collect only releases memory mimalloc holds free; it has
    // no preconditions.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

/// For the async runtime's `on_thread_park`: collects this thread's heap
/// once after each [`return_free_memory`] (an atomic load otherwise).
pub fn collect_own_heap_if_asked() {
    thread_local! {
        static COLLECTED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }
    let asked = RETURN_GENERATION.load(Ordering::Relaxed);
    COLLECTED.with(|collected| {
        if collected.get() != asked {
            collected.set(asked);
            collect_own_heap();
        }
    });
}

/// Returns free heap pages to the kernel: mimalloc's, here and, as each
/// runtime worker parks, in that worker's heap; and glibc's (`malloc_trim`,
/// for what C code allocated; a no-op with other C libraries, which return
/// memory on their own terms).
pub fn return_free_memory() {
    RETURN_GENERATION.fetch_add(1, Ordering::Relaxed);
    collect_own_heap();
    // Parked workers collect only once they wake: wake them.
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        for _ in 0..runtime.metrics().num_workers() {
            drop(runtime.spawn(async {}));
        }
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases memory that is already free; it
    // has no preconditions and is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// [`return_free_memory`] for callers that may ask often (after every
/// hostile task, say): at most one trim per 200 ms and one at a time, so a
/// flood of such calls cannot become a flood of trims. A call that falls
/// inside the window is not lost: it leaves one trailing trim for the end
/// of the window (when inside a tokio runtime), so the last task of a burst
/// still gets its memory returned.
pub fn return_free_memory_throttled() {
    static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);
    static RUNNING: AtomicBool = AtomicBool::new(false);
    static LAST_MS: AtomicU64 = AtomicU64::new(0);
    let throttle_ms = crate::clock::whole_ms(THROTTLE);
    let now_ms = crate::clock::whole_ms(EPOCH.elapsed()).max(1);
    let last = LAST_MS.load(Ordering::Relaxed);
    let since_last = now_ms.saturating_sub(last);
    if last != 0 && since_last < throttle_ms {
        trim_later(Duration::from_millis(throttle_ms - since_last));
        return;
    }
    if RUNNING.swap(true, Ordering::AcqRel) {
        trim_later(THROTTLE);
        return;
    }
    return_free_memory();
    LAST_MS.store(
        crate::clock::whole_ms(EPOCH.elapsed()).max(1),
        Ordering::Relaxed,
    );
    RUNNING.store(false, Ordering::Release);
}

/// Asks for a throttled trim without blocking the caller: on tokio's
/// blocking pool inside a runtime, inline otherwise.
pub fn return_free_memory_in_background() {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => drop(runtime.spawn_blocking(return_free_memory_throttled)),
        Err(_) => return_free_memory_throttled(),
    }
}

/// Schedules one trailing throttled trim `after` from now; at most one is
/// pending at any time.
fn trim_later(after: Duration) {
    static PENDING: AtomicBool = AtomicBool::new(false);
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    if PENDING.swap(true, Ordering::AcqRel) {
        return;
    }
    runtime.spawn(async move {
        tokio::time::sleep(after).await;
        PENDING.store(false, Ordering::Release);
        let _ = tokio::task::spawn_blocking(return_free_memory_throttled).await;
    });
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
    fn freed_pages_go_back_at_once_unless_the_operator_set_otherwise() {
        let operator_set = std::env::var_os("MIMALLOC_PURGE_DELAY").is_some()
            || std::env::var_os("MIMALLOC_ARENA_EAGER_COMMIT").is_some();
        // SAFETY: mi_option_get reads an option; valid option numbers.
        let options = || unsafe {
            (
                libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY),
                libmimalloc_sys::mi_option_get(MI_OPTION_ARENA_EAGER_COMMIT),
            )
        };
        if operator_set {
            return;
        }
        // mimalloc 3's defaults for exactly these two options (1 s, and
        // "on systems that overcommit"): the numbers name the right ones.
        assert_eq!(options(), (1000, 2));
        return_freed_pages_at_once();
        assert_eq!(options(), (0, 0));
    }

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
