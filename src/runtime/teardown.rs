//! Teardown off the critical path: a finished task's store (instance memory
//! reset, pool slot release) is dropped by a separate tokio task, which runs
//! after the response has been written, instead of before it.
//!
//! Measured at one connection (bench harness load, echo, 3 alternating
//! rounds): inline p50 74-76 µs and 13.2k-14.1k req/s; deferred p50 62-69 µs
//! and 14.3k-15.8k req/s. Pending drops hold engine pool slots,
//! so at most [`MAX_PENDING`] are deferred at a time — fewer than the
//! engine's spare slots — and the rest are dropped inline.
//!
//! A task that made the host allocate a lot (a hostile one, usually) leaves
//! that memory freed but still resident in the allocator's per-thread heaps.
//! After dropping such a store the heap is asked to return it (throttled,
//! see [`crate::heap`]), so the node's RSS comes back.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use wasmtime::Store;

use super::store::TaskState;

/// Host bytes a task must have made the host hold (charged to its budget
/// or copied out of the guest) for its teardown to trim.
pub const TRIM_AFTER_HOST_BYTES: u64 = 1 << 20;

/// Deferred drops allowed at once; below the engine's spare instance slots.
pub const MAX_PENDING: usize = 8;

/// Drops finished stores, deferred when possible.
#[derive(Debug, Default, Clone)]
pub struct Teardown {
    pending: Arc<AtomicUsize>,
}

impl Teardown {
    /// Drops `store` now or right after the current task yields; with
    /// `reclaim`, then gives freed heap memory back to the kernel.
    pub fn dispose(&self, store: Store<TaskState>, reclaim: bool) {
        let in_runtime = tokio::runtime::Handle::try_current().is_ok();
        if !in_runtime || self.pending.fetch_add(1, Ordering::AcqRel) >= MAX_PENDING {
            if in_runtime {
                self.pending.fetch_sub(1, Ordering::AcqRel);
            }
            drop(store);
            if reclaim {
                crate::heap::return_free_memory_in_background();
            }
            return;
        }
        let pending = self.pending.clone();
        tokio::spawn(async move {
            drop(store);
            pending.fetch_sub(1, Ordering::AcqRel);
            if reclaim {
                crate::heap::return_free_memory_in_background();
            }
        });
    }
}
