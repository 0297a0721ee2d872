//! The per-task host budget: bytes a plugin makes the *host* store on its
//! behalf, outside its own linear memory — `wasi:http` header maps and
//! request strings, outgoing-body buffers, request bodies collected for
//! sending. Linear memory has its own cap ([`crate::runtime::limits`]);
//! without this one a plugin with a 16 MiB cap could pile up gigabytes of
//! host memory through resources it never drops.
//!
//! Charges are cumulative for the task (a dropped header map does not give
//! its bytes back): the budget is an upper bound on what the task can make
//! the host hold at once, cheap to keep, and generous for honest plugins
//! (a request with its headers costs a few KiB). Exceeding it traps the
//! task with [`HostLimitExceeded`], which the consumer sees as a 502 naming
//! the limit; everything the task held is freed with its store.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// A per-task cap on what a plugin makes the host hold, for messages:
/// "host memory: 8388608 bytes".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostLimit {
    /// What is limited ("host memory", "resource table", ...).
    pub what: &'static str,
    /// The cap.
    pub value: u64,
    /// The unit of `value` ("bytes", "entries", ...).
    pub unit: &'static str,
}

impl fmt::Display for HostLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} of {} {}", self.what, self.value, self.unit)
    }
}

/// A task went past its host budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostLimitExceeded {
    /// The limit.
    pub limit: HostLimit,
    /// What the task was doing when it hit it.
    pub during: &'static str,
}

impl fmt::Display for HostLimitExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} exceeded ({})", self.limit, self.during)
    }
}

impl std::error::Error for HostLimitExceeded {}

/// Bytes a task may still make the host store.
#[derive(Debug)]
pub struct HostBudget {
    limit: AtomicU64,
    used: AtomicU64,
}

impl HostBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            limit: AtomicU64::new(limit as u64),
            used: AtomicU64::new(0),
        }
    }

    /// Starts a new task with `limit` bytes (reused instances).
    pub fn reset(&self, limit: usize) {
        self.limit.store(limit as u64, Ordering::Relaxed);
        self.used.store(0, Ordering::Relaxed);
    }

    /// Charges `bytes` for `during`; errs once the budget is exceeded.
    pub fn charge(&self, bytes: usize, during: &'static str) -> Result<(), HostLimitExceeded> {
        let limit = self.limit.load(Ordering::Relaxed);
        let bytes = bytes as u64;
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(bytes).filter(|&after| after <= limit)
            })
            .map(|_| ())
            .map_err(|_| HostLimitExceeded {
                limit: HostLimit {
                    what: "host memory",
                    value: limit,
                    unit: "bytes",
                },
                during,
            })
    }

    /// Bytes not yet charged.
    pub fn remaining(&self) -> usize {
        let (limit, used) = (
            self.limit.load(Ordering::Relaxed),
            self.used.load(Ordering::Relaxed),
        );
        usize::try_from(limit.saturating_sub(used)).unwrap_or(usize::MAX)
    }

    /// Bytes charged so far.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_accumulate_until_the_limit() {
        let budget = HostBudget::new(100);
        assert!(budget.charge(60, "a").is_ok());
        assert!(budget.charge(40, "b").is_ok());
        let error = budget.charge(1, "c").unwrap_err();
        assert_eq!(error.limit.value, 100);
        assert_eq!(error.to_string(), "host memory of 100 bytes exceeded (c)");
        assert_eq!(error.during, "c");
        assert_eq!(budget.used(), 100);
        assert_eq!(budget.remaining(), 0);
        budget.reset(10);
        assert_eq!(budget.remaining(), 10);
    }
}
