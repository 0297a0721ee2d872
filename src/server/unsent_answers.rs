//! Answers the node has produced but clients have not taken yet, bounded
//! in bytes node-wide.
//!
//! A task's slot is released when its answer is ready, but the answer stays
//! in memory until its connection has written the last byte to the kernel.
//! A client that asks for large answers and does not read them would
//! otherwise make the node hold `connections × largest answer` (4096 × 4 MiB
//! with the defaults) for as long as the response write budget allows. Each
//! answer is charged here when it is handed to its connection and released
//! when the connection lets go of its bytes (written, or the connection
//! closed); one that does not fit is replaced by a 503 `unavailable` with
//! `Retry-After`, the answer of a node whose egress is full. Small answers
//! are charged like large ones, so the bound holds for any mix.
//!
//! Metrics: `iicp_unsent_answer_bytes` (gauge) and
//! `iicp_unsent_answer_refusals_total`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use prometheus::{IntCounter, IntGauge};

use crate::protocol::error::ApiError;

/// Retry advice when the budget is full: a second lets stuck connections
/// drain or reach their write budget.
const RETRY_AFTER_MS: u64 = 1_000;

/// The node-wide budget of unsent answer bytes.
#[derive(Debug, Clone)]
pub struct UnsentAnswers {
    inner: Arc<Budget>,
}

#[derive(Debug)]
struct Budget {
    limit: u64,
    used: AtomicU64,
    gauge: IntGauge,
    refusals: IntCounter,
}

impl UnsentAnswers {
    /// A budget of `limit` bytes, reported through `gauge` and `refusals`.
    pub fn new(limit: u64, gauge: IntGauge, refusals: IntCounter) -> Self {
        Self {
            inner: Arc::new(Budget {
                limit,
                used: AtomicU64::new(0),
                gauge,
                refusals,
            }),
        }
    }

    /// `answer`, charged until its last byte leaves the node; a 503 when
    /// it does not fit.
    pub fn charge(&self, answer: Bytes) -> Result<Bytes, ApiError> {
        let bytes = answer.len() as u64;
        let budget = &self.inner;
        let fits = budget
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes)
                    .filter(|total| *total <= budget.limit)
            })
            .is_ok();
        if !fits {
            budget.refusals.inc();
            return Err(ApiError::unavailable(
                "answers waiting on clients fill the node's unsent-answer budget",
                RETRY_AFTER_MS,
            ));
        }
        budget.report();
        Ok(Bytes::from_owner(Charged {
            answer,
            budget: self.inner.clone(),
        }))
    }

    /// Bytes charged now.
    pub fn used(&self) -> u64 {
        self.inner.used.load(Ordering::Acquire)
    }
}

impl Budget {
    fn report(&self) {
        self.gauge
            .set(i64::try_from(self.used.load(Ordering::Acquire)).unwrap_or(i64::MAX));
    }
}

/// An answer's bytes and their charge, released together.
struct Charged {
    answer: Bytes,
    budget: Arc<Budget>,
}

impl AsRef<[u8]> for Charged {
    fn as_ref(&self) -> &[u8] {
        &self.answer
    }
}

impl Drop for Charged {
    fn drop(&mut self) {
        self.budget
            .used
            .fetch_sub(self.answer.len() as u64, Ordering::AcqRel);
        self.budget.report();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(limit: u64) -> UnsentAnswers {
        UnsentAnswers::new(
            limit,
            IntGauge::new("g", "g").unwrap(),
            IntCounter::new("c", "c").unwrap(),
        )
    }

    #[test]
    fn an_answer_is_charged_until_its_last_copy_is_dropped() {
        let answers = budget(10);
        let first = answers.charge(Bytes::from_static(b"123456")).unwrap();
        let copy = first.slice(2..);
        assert_eq!(answers.used(), 6);
        assert!(answers.charge(Bytes::from_static(b"12345")).is_err());
        drop(first);
        assert_eq!(answers.used(), 6, "a slice still holds the bytes");
        drop(copy);
        assert_eq!(answers.used(), 0);
        assert_eq!(
            &answers.charge(Bytes::from_static(b"12345")).unwrap()[..],
            b"12345"
        );
        assert_eq!(answers.inner.refusals.get(), 1);
    }
}
