//! Per-plugin task limits as plain data, and the [`TaskLimiter`] that
//! enforces the memory part inside each store.

use std::time::Duration;

use wasmtime::ResourceLimiter;

/// Limits applied to every task of one plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginLimits {
    /// Linear memory a task may use, summed over the instance's memories.
    pub memory_bytes: usize,
    /// Task budget when the consumer sets no `constraints.timeout_ms`.
    pub default_timeout: Duration,
    /// Largest result (JSON text) a task may return.
    pub max_output_bytes: usize,
    /// Log lines (log import and stdio together) kept per task.
    pub max_log_lines: u32,
    /// Log bytes kept per task.
    pub max_log_bytes: usize,
    /// Tasks one instance may serve before it is dropped. 1 (the default)
    /// means a fresh instance per task; more is an opt-in that trades
    /// isolation between this plugin's tasks for speed (see `reuse.rs`).
    pub instance_reuse: u32,
}

impl Default for PluginLimits {
    fn default() -> Self {
        Self {
            memory_bytes: 128 << 20,
            default_timeout: Duration::from_secs(30),
            max_output_bytes: 4 << 20,
            max_log_lines: 200,
            max_log_bytes: 64 << 10,
            instance_reuse: 1,
        }
    }
}

/// Most table elements an instance may grow a table to.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;
/// Most core instances, tables and memories one task may create.
const MAX_INSTANCES: usize = 64;
const MAX_TABLES: usize = 64;
const MAX_MEMORIES: usize = 16;

/// Enforces a task's memory cap and remembers whether it was hit, so a trap
/// can be reported as "memory limit exceeded" rather than an opaque abort.
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

    /// Linear memory granted so far (the task's high-water mark).
    pub fn in_use_bytes(&self) -> usize {
        self.in_use_bytes
    }
}

impl ResourceLimiter for TaskLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let after = self
            .in_use_bytes
            .saturating_add(desired.saturating_sub(current));
        if after > self.cap_bytes {
            self.cap_hit = true;
            // An error (rather than `Ok(false)`) traps at once: Rust guests turn a
            // failed grow into an `unreachable` abort we could not tell apart.
            wasmtime::bail!("memory limit of {} MiB exceeded", self.cap_bytes >> 20);
        }
        self.in_use_bytes = after;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
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
    fn the_cap_covers_all_memories_together() {
        let mut limiter = TaskLimiter::new(1 << 20);
        assert!(limiter.memory_growing(0, 768 << 10, None).unwrap());
        assert!(limiter.memory_growing(0, 512 << 10, None).is_err());
    }
}
