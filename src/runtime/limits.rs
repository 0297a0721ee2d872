//! Per-plugin task limits as plain data, and the [`TaskLimiter`] that
//! enforces the memory part inside each store: linear memories and tables
//! together count against one cap.

use std::time::Duration;

use wasmtime::ResourceLimiter;

/// How long an idle reused instance ([`super::reuse`]) is kept by default.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Limits applied to every task of one plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginLimits {
    /// Linear memory a task may use, summed over the instance's memories.
    pub memory_bytes: usize,
    /// Task budget when the consumer sets no `constraints.timeout_ms`.
    pub default_timeout: Duration,
    /// The longest budget a task of this plugin gets, whatever the consumer
    /// asks (a larger `timeout_ms` is lowered to it).
    pub max_timeout: Duration,
    /// Largest result (JSON text) a task may return.
    pub max_output_bytes: usize,
    /// Log lines (log import and stdio together) kept per task.
    pub max_log_lines: u32,
    /// Log bytes kept per task.
    pub max_log_bytes: usize,
    /// Entries in the task's resource table (every wasi resource the plugin
    /// holds at once: header maps, requests, streams, pollables).
    pub max_resources: u32,
    /// Bytes the task may make the host store outside its linear memory
    /// (see `host::budget`).
    pub host_memory_bytes: usize,
    /// Tasks one instance may serve before it is dropped. 1 (the default)
    /// means a fresh instance per task; more is an opt-in that trades
    /// isolation between this plugin's tasks for speed (see `reuse.rs`).
    pub instance_reuse: u32,
    /// How long a reused instance may sit idle before it is dropped.
    pub instance_idle: Duration,
}

impl PluginLimits {
    /// Keeps the default budget within the ceiling: an inherited default
    /// above it is lowered to it; a default given (`default_given`) above it
    /// is a contradiction, returned as (default, ceiling) in ms for the
    /// caller to name.
    pub fn fit_default_timeout(&mut self, default_given: bool) -> Result<(), (u128, u128)> {
        if self.default_timeout > self.max_timeout {
            if default_given {
                return Err((
                    self.default_timeout.as_millis(),
                    self.max_timeout.as_millis(),
                ));
            }
            self.default_timeout = self.max_timeout;
        }
        Ok(())
    }
}

impl Default for PluginLimits {
    fn default() -> Self {
        Self {
            memory_bytes: 128 << 20,
            default_timeout: Duration::from_secs(30),
            max_timeout: MAX_TIMEOUT,
            max_output_bytes: 4 << 20,
            max_log_lines: 200,
            max_log_bytes: 64 << 10,
            max_resources: DEFAULT_MAX_RESOURCES,
            host_memory_bytes: DEFAULT_HOST_MEMORY_BYTES,
            instance_reuse: 1,
            instance_idle: DEFAULT_IDLE_TIMEOUT,
        }
    }
}

/// The protocol's largest `timeout_ms` (300 s), the default ceiling.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(300);
/// Default resource-table entries per task.
pub const DEFAULT_MAX_RESOURCES: u32 = 1024;
/// Default host memory per task.
pub const DEFAULT_HOST_MEMORY_BYTES: usize = 8 << 20;
/// Host bytes per table element, charged to the memory cap (a funcref slot).
pub const TABLE_ELEMENT_BYTES: usize = 8;
/// Most table elements an instance may grow a table to.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;
/// Most core instances, tables and memories one task may create.
const MAX_INSTANCES: usize = 64;
const MAX_TABLES: usize = 64;
const MAX_MEMORIES: usize = 16;

/// Enforces a task's memory cap — linear memories plus tables, at
/// [`TABLE_ELEMENT_BYTES`] per element — and remembers whether it was hit,
/// so a trap can be reported as "memory limit exceeded" rather than an
/// opaque abort.
#[derive(Debug)]
pub struct TaskLimiter {
    cap_bytes: usize,
    in_use_bytes: usize,
    cap_hit: bool,
}

impl TaskLimiter {
    /// A limiter allowing `cap_bytes` of linear memory in total.
    pub fn new(cap_bytes: usize) -> Self {
        Self {
            cap_bytes,
            in_use_bytes: 0,
            cap_hit: false,
        }
    }

    /// Forgets an earlier cap hit (memory already granted stays counted).
    pub fn clear_cap_hit(&mut self) {
        self.cap_hit = false;
    }

    /// Whether a growth was refused because of the cap.
    pub fn cap_hit(&self) -> bool {
        self.cap_hit
    }

    /// Linear memory and table bytes granted so far (the high-water mark).
    pub fn in_use_bytes(&self) -> usize {
        self.in_use_bytes
    }

    fn grow(&mut self, bytes: usize) -> wasmtime::Result<bool> {
        let after = self.in_use_bytes.saturating_add(bytes);
        if after > self.cap_bytes {
            self.cap_hit = true;
            // An error (rather than `Ok(false)`) traps at once: Rust guests turn a
            // failed grow into an `unreachable` abort we could not tell apart.
            wasmtime::bail!("memory limit of {} MiB exceeded", self.cap_bytes >> 20);
        }
        self.in_use_bytes = after;
        Ok(true)
    }
}

impl ResourceLimiter for TaskLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.grow(desired.saturating_sub(current))
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > MAX_TABLE_ELEMENTS {
            return Ok(false);
        }
        self.grow(
            desired
                .saturating_sub(current)
                .saturating_mul(TABLE_ELEMENT_BYTES),
        )
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_within_the_cap_is_granted_and_tracked() {
        let mut limiter = TaskLimiter::new(1 << 20);
        assert!(limiter.memory_growing(0, 512 << 10, None).unwrap());
        assert!(limiter.memory_growing(512 << 10, 1 << 20, None).unwrap());
        assert_eq!(limiter.in_use_bytes(), 1 << 20);
        assert!(!limiter.cap_hit());
    }

    #[test]
    fn growth_past_the_cap_errors_and_is_remembered() {
        let mut limiter = TaskLimiter::new(1 << 20);
        assert!(limiter.memory_growing(0, 2 << 20, None).is_err());
        assert!(limiter.cap_hit());
        assert_eq!(limiter.in_use_bytes(), 0);
    }

    #[test]
    fn tables_count_against_the_same_cap() {
        let mut limiter = TaskLimiter::new(1 << 20);
        assert!(limiter.memory_growing(0, 512 << 10, None).unwrap());
        let elements = (512 << 10) / TABLE_ELEMENT_BYTES;
        assert!(limiter.table_growing(0, elements, None).unwrap());
        assert!(limiter.table_growing(elements, elements + 1, None).is_err());
        assert!(limiter.cap_hit());
    }

    #[test]
    fn the_cap_covers_all_memories_together() {
        let mut limiter = TaskLimiter::new(1 << 20);
        assert!(limiter.memory_growing(0, 768 << 10, None).unwrap());
        assert!(limiter.memory_growing(0, 512 << 10, None).is_err());
    }
}
