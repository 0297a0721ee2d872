//! The operator's drain switches: a drained plugin, or a drained node,
//! refuses new tasks while the running ones finish (`protocol.md` §1.3
//! step 3). Shutting down is the network edge's drain
//! (`super::edge::DrainSignal`), answered the same way with reason
//! `shutting_down`.
//!
//! A refused task gets the reference node's answer for a draining backend:
//! 503 `IICP-E024` with `reason`, `retry_after_ms` and `Retry-After`. The
//! reasons are a fixed vocabulary, so nothing an operator typed leaks to
//! consumers:
//!
//! * `plugin_draining` — the operator drained the plugin serving the intent
//!   (`POST /admin/plugins/{id}/drain`);
//! * `node_draining` — the operator drained the whole node
//!   (`POST /admin/drain`).
//!
//! A switch is one atomic word, read once per task.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::protocol::ApiError;

/// Why new tasks are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainReason {
    /// The plugin serving the intent is drained.
    Plugin,
    /// The whole node is drained by its operator.
    Node,
}

impl DrainReason {
    /// The wire name (`error.reason`).
    pub fn as_str(self) -> &'static str {
        match self {
            DrainReason::Plugin => "plugin_draining",
            DrainReason::Node => "node_draining",
        }
    }

    fn code(self) -> u64 {
        match self {
            DrainReason::Plugin => 1,
            DrainReason::Node => 2,
        }
    }

    fn from_code(code: u64) -> Option<Self> {
        match code {
            1 => Some(DrainReason::Plugin),
            2 => Some(DrainReason::Node),
            _ => None,
        }
    }
}

/// An active drain: why, and when consumers should try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drain {
    /// Why.
    pub reason: DrainReason,
    /// The retry advice, in ms.
    pub retry_after_ms: u64,
}

impl Drain {
    /// The 503 `IICP-E024` a task refused by this drain gets.
    pub fn refusal(self) -> ApiError {
        ApiError::draining(self.reason.as_str(), self.retry_after_ms)
    }
}

/// Bits of the word holding the retry advice; the reason sits above them.
const RETRY_BITS: u32 = 48;
const RETRY_MASK: u64 = (1 << RETRY_BITS) - 1;

/// Off, or a [`Drain`], in one atomic word.
#[derive(Debug, Default)]
pub struct DrainSwitch(AtomicU64);

impl DrainSwitch {
    /// Turns the drain on (or changes its reason and advice).
    pub fn set(&self, drain: Drain) {
        let word = (drain.reason.code() << RETRY_BITS) | drain.retry_after_ms.min(RETRY_MASK);
        self.0.store(word, Ordering::Relaxed);
    }

    /// Turns the drain off.
    pub fn clear(&self) {
        self.0.store(0, Ordering::Relaxed);
    }

    /// The active drain, if any.
    pub fn get(&self) -> Option<Drain> {
        let word = self.0.load(Ordering::Relaxed);
        DrainReason::from_code(word >> RETRY_BITS).map(|reason| Drain {
            reason,
            retry_after_ms: word & RETRY_MASK,
        })
    }

    /// Whether a drain is on.
    pub fn is_on(&self) -> bool {
        self.get().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_switch_holds_its_reason_and_advice() {
        let switch = DrainSwitch::default();
        assert_eq!(switch.get(), None);
        let drain = Drain {
            reason: DrainReason::Node,
            retry_after_ms: 30_000,
        };
        switch.set(drain);
        assert_eq!(switch.get(), Some(drain));
        switch.clear();
        assert!(!switch.is_on());
    }

    #[test]
    fn the_refusal_is_e024_with_reason_and_retry_after() {
        let error = Drain {
            reason: DrainReason::Plugin,
            retry_after_ms: 1500,
        }
        .refusal();
        assert_eq!((error.status().as_u16(), error.code()), (503, "IICP-E024"));
    }
}
