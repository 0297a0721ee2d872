//! Opt-in instance reuse: a plugin with `instance_reuse = N > 1` keeps idle
//! instances and serves up to N tasks with each, skipping instantiation and
//! teardown. Never the default.
//!
//! Between tasks the host-side state is reset — log budget and task id,
//! memory-cap flag, deadline — but the guest's linear memory and globals are
//! not: a task can observe what an earlier task of the *same plugin* left
//! behind. An instance that trapped or timed out is never reused, and an
//! idle instance is dropped after [`IDLE_TIMEOUT`] so its memory goes back.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use wasmtime::Store;

use super::bindings::Plugin;
use super::store::TaskState;

/// How long an idle instance is kept.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// An instance between tasks.
pub struct WarmInstance {
    /// Its store.
    pub store: Store<TaskState>,
    /// Its exports.
    pub instance: Plugin,
    /// Tasks served so far.
    pub uses: u32,
    idle_since: Instant,
}

impl WarmInstance {
    /// An instance that has served `uses` tasks.
    pub fn new(store: Store<TaskState>, instance: Plugin, uses: u32) -> Self {
        Self {
            store,
            instance,
            uses,
            idle_since: Instant::now(),
        }
    }
}

/// Idle instances of one plugin.
pub struct InstancePool {
    idle: Mutex<Vec<WarmInstance>>,
    max_uses: u32,
}

impl InstancePool {
    /// A pool whose instances serve at most `max_uses` tasks each.
    pub fn new(max_uses: u32) -> Self {
        Self {
            idle: Mutex::new(Vec::new()),
            max_uses,
        }
    }

    /// The most recently used idle instance, if any (its memory is warmest).
    pub fn take(&self) -> Option<WarmInstance> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        // Instances are pushed in idle order, so expired ones sit at the front.
        let expired = idle
            .iter()
            .take_while(|w| now.duration_since(w.idle_since) > IDLE_TIMEOUT)
            .count();
        let stale: Vec<WarmInstance> = idle.drain(..expired).collect();
        let warm = idle.pop();
        drop(idle);
        drop(stale);
        warm
    }

    /// Returns an instance after a task that did not trap; it is kept only
    /// while it has uses left.
    pub fn give_back(&self, mut warm: WarmInstance) {
        if warm.uses >= self.max_uses {
            return;
        }
        warm.idle_since = Instant::now();
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(warm);
    }

    /// Idle instances right now.
    pub fn idle(&self) -> usize {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}
