//! Retrying the directory: exponential backoff with jitter, shared by the
//! lifecycle (register, heartbeat) and the credit-receipt sender.

use std::time::Duration;

/// Exponential backoff with jitter (each wait in [d/2, d]).
#[derive(Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Starts at `initial`, doubles up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            next: initial,
        }
    }

    /// Back to the first step, after a success.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }

    /// The next wait, jittered, and one step further.
    pub fn wait(&mut self) -> Duration {
        let current = self.next;
        self.next = (current * 2).min(self.max);
        current.mul_f64(0.5 + fastrand::f64() * 0.5)
    }
}
