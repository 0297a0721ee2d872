//! The node's Prometheus metrics: one registry, composed of each folder's
//! own families.
//!
//! A folder at or below this layer (`oci`, `telemetry`) is composed here by
//! name. A module above it (`runtime`, `directory`, `server`, `relay` and
//! `peers` in their `metrics.rs`; `memory_sizing`, `reload`) defines its
//! families as a [`Part`] and asks for them with [`Metrics::part`]: this
//! module never names it, so no import runs upward. The node registers
//! every part at start, so the exposition lists each family from the first
//! scrape.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus::{Encoder, Registry, TextEncoder};

use crate::metric_families::Part;
use crate::oci::metrics::OciMetrics;

/// The node's registry, the families of the folders at or below this
/// layer, and the parts of the folders above it.
pub struct Metrics {
    registry: Registry,
    /// Plugins pulled from registries.
    pub oci: OciMetrics,
    /// The families of folders above this layer, by type ([`Metrics::part`]).
    parts: Mutex<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers the families composed here; the parts register on first
    /// use. Definitions are static, so registration cannot fail at run time.
    pub fn new() -> Self {
        let r = Registry::new();
        Self {
            oci: OciMetrics::register(&r),
            parts: Mutex::new(HashMap::new()),
            registry: {
                crate::telemetry::export_bounds::register(&r);
                r
            },
        }
    }

    /// The families of a folder above this layer, registered
    /// on the first call and the same instance on every later one: the
    /// folder defines them ([`Part`]), so this module never names it.
    pub fn part<P: Part>(&self) -> Arc<P> {
        let mut parts = self.parts.lock().unwrap_or_else(|p| p.into_inner());
        let part = parts
            .entry(TypeId::of::<P>())
            .or_insert_with(|| Arc::new(P::register(&self.registry)));
        Arc::clone(part)
            .downcast::<P>()
            .expect("parts are keyed by their type")
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8192);
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

/// Task outcomes not yet reported to the directory (heartbeat `metrics`).
#[derive(Debug, Default)]
pub struct TaskTally {
    success: AtomicU64,
    failed: AtomicU64,
    latency_ms_sum: AtomicU64,
}

/// A drained [`TaskTally`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TallyCounts {
    /// Tasks that succeeded.
    pub success: u64,
    /// Tasks that failed.
    pub failed: u64,
    /// Sum of their latencies in ms.
    pub latency_ms_sum: u64,
}

impl TaskTally {
    /// Counts one finished task.
    pub fn record(&self, success: bool, latency_ms: u64) {
        let counter = if success { &self.success } else { &self.failed };
        counter.fetch_add(1, Ordering::Relaxed);
        self.latency_ms_sum.fetch_add(latency_ms, Ordering::Relaxed);
    }

    /// Takes everything counted so far.
    pub fn drain(&self) -> TallyCounts {
        TallyCounts {
            success: self.success.swap(0, Ordering::Relaxed),
            failed: self.failed.swap(0, Ordering::Relaxed),
            latency_ms_sum: self.latency_ms_sum.swap(0, Ordering::Relaxed),
        }
    }
}
