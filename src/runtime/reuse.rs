//! Opt-in instance reuse: a plugin with `instance_reuse = N > 1` keeps idle
//! instances and serves up to N tasks with each, skipping instantiation and
//! teardown. Never the default.
//!
//! Between tasks the host-side state is reset — log budget and task id,
//! memory-cap flag, deadline — but the guest's linear memory and globals are
//! not: a task can observe what an earlier task of the *same plugin* left
//! behind. An instance that trapped or timed out is never reused, nor one
//! that ended its task still holding host resources (resource-table
//! entries: header maps, requests, streams): the host budget restarts with
//! each task, so such an instance could pile up host memory across tasks
//! past any one task's budget (`iicp_plugin_instances_retired_total`). An
//! idle instance is dropped after its plugin's idle timeout (default
//! [`DEFAULT_IDLE_TIMEOUT`](super::limits::DEFAULT_IDLE_TIMEOUT)) so its memory goes back.
//!
//! Idle instances hold engine pool slots, which every plugin shares. So the
//! [`WarmRegistry`] knows every pool: a sweeper thread drops expired idle
//! instances even when no task comes to take them, and when an
//! instantiation finds the engine's pool exhausted, every idle instance is
//! dropped before it tries again — a burst of one plugin's reused instances
//! can never starve the others.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use wasmtime::Store;

use super::handle_export::HandleFunc;
use super::store::TaskState;

/// An instance between tasks.
pub struct WarmInstance {
    /// Its store.
    pub store: Store<TaskState>,
    /// Its `handle` export.
    pub handle: HandleFunc,
    /// Tasks served so far.
    pub uses: u32,
    idle_since: Instant,
}

impl WarmInstance {
    /// An instance that has served `uses` tasks.
    pub fn new(store: Store<TaskState>, handle: HandleFunc, uses: u32) -> Self {
        Self {
            store,
            handle,
            uses,
            idle_since: Instant::now(),
        }
    }
}

/// Idle instances of one plugin.
pub struct InstancePool {
    idle: Mutex<Vec<WarmInstance>>,
    max_uses: u32,
    idle_timeout: Duration,
}

impl InstancePool {
    /// A pool whose instances serve at most `max_uses` tasks each and are
    /// dropped after `idle_timeout` without one.
    pub fn new(max_uses: u32, idle_timeout: Duration) -> Self {
        Self {
            idle: Mutex::new(Vec::new()),
            max_uses,
            idle_timeout,
        }
    }

    /// The most recently used idle instance, if any (its memory is warmest).
    pub fn take(&self) -> Option<WarmInstance> {
        self.expire(Instant::now());
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    /// Drops the instances idle for longer than the idle timeout at `now`;
    /// returns how many.
    pub fn expire(&self, now: Instant) -> usize {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        // Instances are pushed in idle order, so expired ones sit at the front.
        let expired = idle
            .iter()
            .take_while(|w| now.duration_since(w.idle_since) > self.idle_timeout)
            .count();
        let stale: Vec<WarmInstance> = idle.drain(..expired).collect();
        drop(idle);
        stale.len()
    }

    /// Drops every idle instance; returns how many.
    pub fn evict(&self) -> usize {
        let stale = std::mem::take(&mut *self.idle.lock().unwrap_or_else(|p| p.into_inner()));
        stale.len()
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

/// How often the sweeper looks for expired idle instances, at most.
const SWEEP_EVERY: Duration = Duration::from_secs(5);
/// How often it looks, at least.
const SWEEP_EVERY_MIN: Duration = Duration::from_millis(50);

/// Every plugin's pool of idle instances, for sweeping and eviction.
pub struct WarmRegistry {
    pools: Arc<Mutex<Vec<Weak<InstancePool>>>>,
    sweeper: std::sync::OnceLock<()>,
    /// The sweep period: a quarter of the shortest idle timeout registered.
    period_ms: Arc<std::sync::atomic::AtomicU64>,
}

impl Default for WarmRegistry {
    fn default() -> Self {
        Self {
            pools: Arc::default(),
            sweeper: std::sync::OnceLock::new(),
            period_ms: Arc::new(crate::clock::whole_ms(SWEEP_EVERY).into()),
        }
    }
}

impl WarmRegistry {
    /// A pool for a plugin whose instances serve `max_uses` tasks, swept
    /// from now on.
    pub fn pool(&self, max_uses: u32, idle_timeout: Duration) -> Arc<InstancePool> {
        let pool = Arc::new(InstancePool::new(max_uses, idle_timeout));
        let period = (idle_timeout / 4).clamp(SWEEP_EVERY_MIN, SWEEP_EVERY);
        self.period_ms.fetch_min(
            crate::clock::whole_ms(period),
            std::sync::atomic::Ordering::Relaxed,
        );
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        pools.retain(|weak| weak.strong_count() > 0);
        pools.push(Arc::downgrade(&pool));
        drop(pools);
        self.start_sweeper();
        pool
    }

    /// Drops every idle instance of every plugin; returns how many.
    pub fn evict_all(&self) -> usize {
        self.live().iter().map(|pool| pool.evict()).sum()
    }

    fn live(&self) -> Vec<Arc<InstancePool>> {
        live_pools(&self.pools)
    }

    /// Drops expired instances every sweep period, on a thread of its own
    /// that ends with the registry.
    fn start_sweeper(&self) {
        self.sweeper.get_or_init(|| {
            let pools = Arc::downgrade(&self.pools);
            let period_ms = self.period_ms.clone();
            let spawned = std::thread::Builder::new()
                .name("iicp-reuse-sweep".to_string())
                .spawn(move || {
                    loop {
                        let ms = period_ms.load(std::sync::atomic::Ordering::Relaxed);
                        std::thread::sleep(Duration::from_millis(ms));
                        let Some(pools) = pools.upgrade() else { return };
                        let now = Instant::now();
                        for pool in live_pools(&pools) {
                            pool.expire(now);
                        }
                    }
                });
            if let Err(error) = spawned {
                tracing::warn!(%error, "cannot start the idle-instance sweeper; idle instances expire on their next use");
            }
        });
    }
}

fn live_pools(pools: &Mutex<Vec<Weak<InstancePool>>>) -> Vec<Arc<InstancePool>> {
    pools
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter_map(Weak::upgrade)
        .collect()
}
