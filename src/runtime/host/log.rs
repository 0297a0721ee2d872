//! The `iicp:plugin/log` import: plugin log lines land in the host's log,
//! tagged with the plugin and task ids.
//!
//! A plugin must not be able to flood or forge the host log: each task has a
//! budget of lines and bytes shared by this import and the plugin's
//! stdout/stderr; past it lines are dropped and counted. Control characters
//! are escaped so a message cannot fake extra log lines.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::runtime::bindings::iicp::plugin::log::Level;

/// Longest single line kept; the rest of a longer line is cut.
const MAX_LINE_BYTES: usize = 4096;

/// Per-task log budget and identity, shared by the log import and stdio.
/// A reused instance rebinds it to each new task with [`TaskLog::begin`].
#[derive(Debug)]
pub struct TaskLog {
    plugin: Arc<str>,
    task_id: Mutex<Arc<str>>,
    lines_left: AtomicU64,
    bytes_left: AtomicU64,
    emitted: AtomicU64,
    dropped: AtomicU64,
}

impl TaskLog {
    /// A budget of `max_lines` lines and `max_bytes` bytes for one task.
    pub fn new(plugin: Arc<str>, task_id: Arc<str>, max_lines: u32, max_bytes: usize) -> Self {
        Self {
            plugin,
            task_id: Mutex::new(task_id),
            lines_left: AtomicU64::new(u64::from(max_lines)),
            bytes_left: AtomicU64::new(max_bytes as u64),
            emitted: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    /// Starts a new task's budget under `task_id`.
    pub fn begin(&self, task_id: Arc<str>, max_lines: u32, max_bytes: usize) {
        *self.task_id.lock().unwrap_or_else(|p| p.into_inner()) = task_id;
        self.lines_left
            .store(u64::from(max_lines), Ordering::Relaxed);
        self.bytes_left.store(max_bytes as u64, Ordering::Relaxed);
        self.emitted.store(0, Ordering::Relaxed);
        self.dropped.store(0, Ordering::Relaxed);
    }

    fn task_id(&self) -> Arc<str> {
        self.task_id
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Writes one line from `source` (`log`, `stdout`, `stderr`) if the
    /// budget allows; otherwise counts it as dropped.
    pub fn emit(&self, level: Level, source: &'static str, message: &str) {
        let line = sanitize(message);
        if !self.take_budget(line.len()) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.emitted.fetch_add(1, Ordering::Relaxed);
        let task_id = self.task_id();
        let (plugin, task_id) = (&*self.plugin, &*task_id);
        match level {
            Level::Trace => tracing::trace!(target: "plugin", plugin, task_id, source, "{line}"),
            Level::Debug => tracing::debug!(target: "plugin", plugin, task_id, source, "{line}"),
            Level::Info => tracing::info!(target: "plugin", plugin, task_id, source, "{line}"),
            Level::Warn => tracing::warn!(target: "plugin", plugin, task_id, source, "{line}"),
            Level::Error => tracing::error!(target: "plugin", plugin, task_id, source, "{line}"),
        }
    }

    fn take_budget(&self, bytes: usize) -> bool {
        let take = |counter: &AtomicU64, amount: u64| {
            counter
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                    left.checked_sub(amount)
                })
                .is_ok()
        };
        take(&self.lines_left, 1) && take(&self.bytes_left, bytes as u64)
    }

    /// Lines written to the log so far.
    pub fn lines_emitted(&self) -> u64 {
        self.emitted.load(Ordering::Relaxed)
    }

    /// Lines dropped so far because the budget ran out.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Logs one summary line when lines were dropped; returns how many.
    pub fn finish(&self) -> u64 {
        let dropped = self.dropped();
        if dropped > 0 {
            tracing::warn!(
                target: "plugin",
                plugin = &*self.plugin,
                task_id = &*self.task_id(),
                dropped,
                "plugin log budget exhausted; lines dropped"
            );
        }
        dropped
    }
}

/// Cuts a line to [`MAX_LINE_BYTES`] and escapes control characters.
fn sanitize(message: &str) -> Cow<'_, str> {
    let message = message.trim_end_matches(['\n', '\r']);
    let mut end = message.len().min(MAX_LINE_BYTES);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    let message = &message[..end];
    if !message.chars().any(char::is_control) {
        return Cow::Borrowed(message);
    }
    let mut out = String::with_capacity(message.len() + 8);
    for c in message.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_cannot_forge_lines() {
        assert_eq!(sanitize("a\nINFO fake\r\n"), "a\\nINFO fake");
        assert_eq!(sanitize("plain"), "plain");
        assert_eq!(sanitize("tab\there"), "tab\\there");
    }

    #[test]
    fn long_lines_are_cut_on_char_boundaries() {
        let line = "ü".repeat(MAX_LINE_BYTES);
        let cut = sanitize(&line);
        assert!(cut.len() <= MAX_LINE_BYTES);
        assert!(cut.chars().all(|c| c == 'ü'));
    }

    #[test]
    fn budget_counts_lines_and_bytes() {
        let log = TaskLog::new("p".into(), "t".into(), 3, 10);
        for _ in 0..5 {
            log.emit(Level::Info, "log", "12345");
        }
        // Two 5-byte lines fit the 10-byte budget; the other three are dropped.
        assert_eq!(log.dropped(), 3);
    }
}
