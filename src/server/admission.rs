//! The admission gate: `max_concurrent` slots. A task takes a slot before it
//! runs and holds it as an owned permit, so the slot comes back however the
//! task ends — success, error, panic, timeout, or the client hanging up and
//! the request future being dropped.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// `Retry-After` advice sent with a 429, in milliseconds.
pub const RETRY_AFTER_MS: u64 = 1000;

/// A fixed number of task slots.
#[derive(Debug)]
pub struct AdmissionGate {
    slots: Arc<Semaphore>,
    capacity: u32,
}

/// A held slot; dropping it frees the slot.
pub type Slot = OwnedSemaphorePermit;

impl AdmissionGate {
    /// A gate with `capacity` slots.
    pub fn new(capacity: u32) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(capacity as usize)),
            capacity,
        }
    }

    /// Takes a slot if one is free. Never waits: a saturated node refuses at
    /// once so the consumer can switch nodes (`iicp-semantics.md` §2.2).
    pub fn try_admit(&self) -> Option<Slot> {
        self.slots.clone().try_acquire_owned().ok()
    }

    /// Slots in use.
    pub fn active(&self) -> u32 {
        self.capacity
            .saturating_sub(u32::try_from(self.slots.available_permits()).unwrap_or(u32::MAX))
    }

    /// Total slots.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_refused_when_full_and_return_on_drop() {
        let gate = AdmissionGate::new(2);
        let first = gate.try_admit().unwrap();
        let second = gate.try_admit().unwrap();
        assert!(gate.try_admit().is_none());
        assert_eq!(gate.active(), 2);
        drop(first);
        assert_eq!(gate.active(), 1);
        let third = gate.try_admit();
        assert!(third.is_some());
        drop((second, third));
        assert_eq!(gate.active(), 0);
    }
}
