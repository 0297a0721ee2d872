//! The admission gates: `max_concurrent` slots for the node and for each
//! plugin, and the QoS rule for a task that finds them full.
//!
//! A task takes a slot before it runs and holds it as an owned permit, so the
//! slot comes back however the task ends — success, error, panic, timeout,
//! or the client hanging up and the request future being dropped.
//!
//! At a full gate, `realtime` and `interactive` tasks may wait a bounded time
//! for a slot (the reference node's 2 s, `protocol.md` §1.3 step 4), while
//! `batch` and `best-effort` fail fast with 429 so a proxy can switch nodes
//! (`iicp-semantics.md` §2.2). The wait is built on tokio's semaphore:
//!
//! * a waiter is woken by a release, not by polling, and waiters are served
//!   in arrival order (the semaphore hands a freed slot to the oldest waiter,
//!   so a new arrival cannot jump the queue);
//! * a waiting task holds no slot: it waits for one gate at a time and keeps
//!   a slot only when it can take the other gate's at once;
//! * the wait ends at the earlier of the QoS wait and the task's own
//!   deadline (`timeout_ms` runs from receipt);
//! * at most `max_waiting` tasks wait at once; beyond that a task is refused
//!   at once, so a flood cannot park unbounded connections and bodies;
//! * a waiter whose client hangs up is dropped, which removes it from the
//!   semaphore's queue and gives its waiting place back.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::protocol::task::Qos;

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

    /// Takes a slot if one is free, without waiting.
    pub fn try_admit(&self) -> Option<Slot> {
        self.slots.clone().try_acquire_owned().ok()
    }

    /// Waits, in arrival order, for a slot until `until`.
    async fn admit_until(&self, until: Instant) -> Option<Slot> {
        tokio::time::timeout_at(until, self.slots.clone().acquire_owned())
            .await
            .ok()?
            .ok()
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

/// The slots a running task holds: its plugin's and the node's.
#[derive(Debug)]
pub struct Slots {
    _plugin: Slot,
    _node: Slot,
}

/// Why a task got no slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoSlot {
    /// Full, and the task's class does not wait (or waiting is off).
    Full,
    /// Full, and `max_waiting` tasks already wait.
    WaitingRoomFull,
    /// Waited until the QoS wait or the task's deadline ran out.
    WaitExpired,
}

impl NoSlot {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            NoSlot::Full => "full",
            NoSlot::WaitingRoomFull => "waiting_room_full",
            NoSlot::WaitExpired => "wait_expired",
        }
    }
}

/// The QoS rule for full gates, shared by every plugin of the node.
#[derive(Debug)]
pub struct QosAdmission {
    wait: Duration,
    max_waiting: u32,
    waiting: AtomicU32,
}

/// A place in the waiting room; dropping it leaves.
struct WaitingPlace<'a>(&'a AtomicU32);

impl Drop for WaitingPlace<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl QosAdmission {
    /// Queue-eligible classes wait up to `wait` (zero: nobody waits); at most
    /// `max_waiting` tasks wait at once.
    pub fn new(wait: Duration, max_waiting: u32) -> Self {
        Self {
            wait,
            max_waiting,
            waiting: AtomicU32::new(0),
        }
    }

    /// Tasks waiting for a slot right now.
    pub fn waiting(&self) -> u32 {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Whether a task of class `qos` may wait for a slot (the reference
    /// node's rule: realtime and interactive only).
    fn may_wait(&self, qos: Qos) -> bool {
        !self.wait.is_zero() && matches!(qos, Qos::Realtime | Qos::Interactive)
    }

    fn enter(&self) -> Option<WaitingPlace<'_>> {
        self.waiting
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.max_waiting).then_some(n + 1)
            })
            .ok()
            .map(|_| WaitingPlace(&self.waiting))
    }

    /// Takes a slot of `plugin` and then one of `node`, waiting when the
    /// task's class may and at most until `deadline`. Returns whether the
    /// task waited, with the slots or why there are none.
    pub async fn take_slots(
        &self,
        plugin: &AdmissionGate,
        node: &AdmissionGate,
        qos: Qos,
        deadline: Instant,
    ) -> (bool, Result<Slots, NoSlot>) {
        // The plugin's gate first: a saturated plugin is refused without
        // touching the node's slots, so it cannot starve the other plugins.
        if let Some(plugin_slot) = plugin.try_admit()
            && let Some(node_slot) = node.try_admit()
        {
            return (false, Ok(slots(plugin_slot, node_slot)));
        }
        if !self.may_wait(qos) {
            return (false, Err(NoSlot::Full));
        }
        let Some(_place) = self.enter() else {
            return (false, Err(NoSlot::WaitingRoomFull));
        };
        let until = deadline.min(Instant::now() + self.wait);
        (true, wait_for_both(plugin, node, until).await)
    }
}

fn slots(plugin: Slot, node: Slot) -> Slots {
    Slots {
        _plugin: plugin,
        _node: node,
    }
}

/// Waits on one gate at a time, holding nothing while it waits: with one
/// gate's slot in hand it takes the other's only if one is free at once,
/// else gives the first back and queues at the other. Each turn ends in a
/// release or at `until`, so this never spins.
async fn wait_for_both(
    plugin: &AdmissionGate,
    node: &AdmissionGate,
    until: Instant,
) -> Result<Slots, NoSlot> {
    loop {
        let plugin_slot = plugin.admit_until(until).await.ok_or(NoSlot::WaitExpired)?;
        if let Some(node_slot) = node.try_admit() {
            return Ok(slots(plugin_slot, node_slot));
        }
        drop(plugin_slot);
        let node_slot = node.admit_until(until).await.ok_or(NoSlot::WaitExpired)?;
        if let Some(plugin_slot) = plugin.try_admit() {
            return Ok(slots(plugin_slot, node_slot));
        }
        drop(node_slot);
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

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(3600)
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_plugin_takes_no_node_slot() {
        let (plugin, node) = (AdmissionGate::new(1), AdmissionGate::new(4));
        let qos = QosAdmission::new(Duration::ZERO, 8);
        let held = plugin.try_admit().unwrap();
        let (waited, outcome) = qos.take_slots(&plugin, &node, Qos::Batch, far()).await;
        assert_eq!((waited, outcome.unwrap_err()), (false, NoSlot::Full));
        assert_eq!(node.active(), 0);
        drop(held);
    }

    #[tokio::test(start_paused = true)]
    async fn batch_fails_fast_interactive_waits_for_a_release() {
        let (plugin, node) = (
            Arc::new(AdmissionGate::new(1)),
            Arc::new(AdmissionGate::new(1)),
        );
        let qos = Arc::new(QosAdmission::new(Duration::from_secs(2), 8));
        let running = qos
            .take_slots(&plugin, &node, Qos::Batch, far())
            .await
            .1
            .unwrap();
        let batch = qos.take_slots(&plugin, &node, Qos::Batch, far()).await;
        assert_eq!(batch.1.unwrap_err(), NoSlot::Full);
        let waiter = {
            let (plugin, node, qos) = (plugin.clone(), node.clone(), qos.clone());
            tokio::spawn(async move {
                qos.take_slots(&plugin, &node, Qos::Interactive, far())
                    .await
                    .1
                    .is_ok()
            })
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(qos.waiting(), 1);
        // While it waits, it holds nothing.
        assert_eq!((plugin.active(), node.active()), (1, 1));
        drop(running);
        assert!(waiter.await.unwrap());
        assert_eq!(qos.waiting(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_wait_ends_at_the_qos_wait_or_the_deadline() {
        let (plugin, node) = (AdmissionGate::new(1), AdmissionGate::new(1));
        let qos = QosAdmission::new(Duration::from_secs(2), 8);
        let _running = plugin.try_admit().unwrap();
        let started = Instant::now();
        let (waited, outcome) = qos.take_slots(&plugin, &node, Qos::Realtime, far()).await;
        assert!(waited);
        assert_eq!(outcome.unwrap_err(), NoSlot::WaitExpired);
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        let started = Instant::now();
        let deadline = started + Duration::from_millis(300);
        let (_, outcome) = qos
            .take_slots(&plugin, &node, Qos::Interactive, deadline)
            .await;
        assert_eq!(outcome.unwrap_err(), NoSlot::WaitExpired);
        assert_eq!(started.elapsed(), Duration::from_millis(300));
        assert_eq!(qos.waiting(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_waiting_room_is_bounded_and_served_in_order() {
        let (plugin, node) = (
            Arc::new(AdmissionGate::new(1)),
            Arc::new(AdmissionGate::new(1)),
        );
        let qos = Arc::new(QosAdmission::new(Duration::from_secs(2), 2));
        let running = plugin.try_admit().zip(node.try_admit()).unwrap();
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        for i in 0..2 {
            let (plugin, node, qos, order) =
                (plugin.clone(), node.clone(), qos.clone(), order.clone());
            waiters.push(tokio::spawn(async move {
                let slots = qos
                    .take_slots(&plugin, &node, Qos::Interactive, far())
                    .await
                    .1
                    .unwrap();
                order.lock().unwrap().push(i);
                tokio::time::sleep(Duration::from_millis(10)).await;
                drop(slots);
            }));
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(qos.waiting(), 2);
        let third = qos
            .take_slots(&plugin, &node, Qos::Interactive, far())
            .await;
        assert_eq!(third.1.unwrap_err(), NoSlot::WaitingRoomFull);
        drop(running);
        for waiter in waiters {
            waiter.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![0, 1]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_waiter_leaves_the_queue() {
        let (plugin, node) = (
            Arc::new(AdmissionGate::new(1)),
            Arc::new(AdmissionGate::new(1)),
        );
        let qos = Arc::new(QosAdmission::new(Duration::from_secs(2), 1));
        let running = plugin.try_admit().zip(node.try_admit()).unwrap();
        let gone = {
            let (plugin, node, qos) = (plugin.clone(), node.clone(), qos.clone());
            tokio::spawn(async move {
                let _ = qos
                    .take_slots(&plugin, &node, Qos::Interactive, far())
                    .await;
            })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(qos.waiting(), 1);
        gone.abort();
        let _ = gone.await;
        assert_eq!(qos.waiting(), 0);
        drop(running);
        // The slot it queued for goes to the next task, not to the dead waiter.
        assert!(plugin.try_admit().is_some());
    }
}
