//! The node's standing with its directory, as `/iicp/health` shows it.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use serde::Serialize;

use crate::clock::now_unix_ms;

/// Shared, updated by the lifecycle, read by the health route.
#[derive(Debug)]
pub struct DirectoryStatus {
    url: String,
    registered: AtomicBool,
    consecutive_failures: AtomicU32,
    last_heartbeat: Mutex<Option<(u64, String)>>,
}

/// A snapshot for `/iicp/health`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct StatusView {
    /// The directory base URL.
    pub url: String,
    /// Whether the directory accepted the last registration and has not
    /// since asked for a new one.
    pub registered: bool,
    /// When the last heartbeat attempt ended, ms since the Unix epoch.
    pub last_heartbeat_at_ms: Option<u64>,
    /// `ok` or why it failed.
    pub last_heartbeat_result: Option<String>,
    /// Heartbeats failed in a row.
    pub consecutive_failures: u32,
}

impl DirectoryStatus {
    /// A node not yet registered with `url`.
    pub fn new(url: &str) -> Self {
        Self {
            url: url.to_string(),
            registered: AtomicBool::new(false),
            consecutive_failures: AtomicU32::new(0),
            last_heartbeat: Mutex::new(None),
        }
    }

    /// Records the registration state.
    pub fn set_registered(&self, registered: bool) {
        self.registered.store(registered, Ordering::Relaxed);
    }

    /// Whether the node is registered.
    pub fn is_registered(&self) -> bool {
        self.registered.load(Ordering::Relaxed)
    }

    /// Records a heartbeat outcome.
    pub fn heartbeat(&self, result: Result<(), String>) {
        match &result {
            Ok(()) => self.consecutive_failures.store(0, Ordering::Relaxed),
            Err(_) => {
                self.consecutive_failures.fetch_add(1, Ordering::Relaxed);
            }
        }
        let now_ms = now_unix_ms();
        let text = result.map_or_else(|why| why, |()| "ok".to_string());
        *self
            .last_heartbeat
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some((now_ms, text));
    }

    /// The current standing.
    pub fn view(&self) -> StatusView {
        let last = self
            .last_heartbeat
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        StatusView {
            url: self.url.clone(),
            registered: self.is_registered(),
            last_heartbeat_at_ms: last.as_ref().map(|(at, _)| *at),
            last_heartbeat_result: last.map(|(_, result)| result),
            consecutive_failures: self.consecutive_failures.load(Ordering::Relaxed),
        }
    }
}
