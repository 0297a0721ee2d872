//! The one process-wide wasmtime [`Engine`] and its epoch ticker.
//!
//! * Cranelift, epoch interruption on (fuel off: it costs ~14 % CPU, epochs ~0).
//! * The pooling allocator, sized to the node's concurrency, keeps instance
//!   memory warm between tasks, which is what makes a fresh instance per task
//!   cheap. It reserves a large virtual range up front; when the address space
//!   cannot hold it (39-bit VA, `ulimit -v`), building the engine fails and we
//!   fall back to the on-demand allocator instead of refusing to start.
//! * A ticker thread bumps the epoch every [`EPOCH_TICK`]; each store turns its
//!   wall-clock deadline into a check on every tick (see `store.rs`). The
//!   thread holds only a weak reference, so it ends with the engine.

use std::time::Duration;

use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the epoch advances: the granularity of deadline checks and of
/// the yields that keep a CPU-bound plugin from monopolising a worker thread.
pub const EPOCH_TICK: Duration = Duration::from_millis(2);

/// Instance slots kept beyond the task concurrency, for load-time `describe`
/// calls, hot-reload checks and deferred teardowns (`teardown::MAX_PENDING`).
const SPARE_INSTANCE_SLOTS: u32 = 16;

/// What the engine is built for.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// Most plugin instances alive at once (the node's task concurrency).
    pub max_instances: u32,
    /// Bytes of each linear memory and table kept resident (not returned to
    /// the kernel) when a pooled slot is reused; `None` picks
    /// [`default_keep_resident`].
    pub keep_resident_bytes: Option<usize>,
    /// Which instance allocator to use.
    pub allocator: AllocatorChoice,
}

/// The operator's choice of instance allocator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AllocatorChoice {
    /// Pooling when the address space allows it, else on-demand.
    #[default]
    Auto,
    /// Pooling or fail.
    Pooling,
    /// Always on-demand (mmap per instance).
    OnDemand,
}

/// The allocator actually in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllocatorKind {
    /// Pre-reserved slots, reused across tasks.
    Pooling,
    /// Fresh mappings per instance.
    OnDemand,
}

impl AllocatorKind {
    /// Name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            AllocatorKind::Pooling => "pooling",
            AllocatorKind::OnDemand => "on-demand",
        }
    }
}

/// Builds the engine and starts its epoch ticker.
pub fn build_engine(settings: &EngineSettings) -> wasmtime::Result<(Engine, AllocatorKind)> {
    let (engine, kind) = match settings.allocator {
        AllocatorChoice::OnDemand => (Engine::new(&base_config())?, AllocatorKind::OnDemand),
        AllocatorChoice::Pooling => (pooling_engine(settings)?, AllocatorKind::Pooling),
        AllocatorChoice::Auto => match pooling_engine(settings) {
            Ok(engine) => (engine, AllocatorKind::Pooling),
            Err(error) => {
                tracing::warn!(
                    error = %error,
                    "pooling allocator unavailable (address space too small?); using on-demand allocation"
                );
                (Engine::new(&base_config())?, AllocatorKind::OnDemand)
            }
        },
    };
    start_epoch_ticker(&engine)?;
    Ok((engine, kind))
}

fn base_config() -> Config {
    let mut config = Config::new();
    config.epoch_interruption(true);
    config
}

/// How big the instance pool is for `settings`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolShape {
    /// Component instances alive at once.
    pub instances: u32,
    /// Linear memories across them.
    pub memories: u32,
    /// Tables across them.
    pub tables: u32,
    /// Bytes of each memory and table kept resident between tasks.
    pub keep_resident: usize,
}

impl PoolShape {
    /// The pool the engine builds for `settings`.
    pub fn of(settings: &EngineSettings) -> Self {
        let instances = settings.max_instances.saturating_add(SPARE_INSTANCE_SLOTS);
        Self {
            instances,
            // Components built by different toolchains hold 3 (Rust) to a
            // dozen (interpreters) core instances, memories and tables.
            memories: instances.saturating_mul(4),
            tables: instances.saturating_mul(8),
            keep_resident: settings
                .keep_resident_bytes
                .unwrap_or_else(default_keep_resident),
        }
    }
}

fn pooling_engine(settings: &EngineSettings) -> wasmtime::Result<Engine> {
    let shape = PoolShape::of(settings);
    let (slots, keep_resident) = (shape.instances, shape.keep_resident);
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(slots)
        .total_core_instances(slots.saturating_mul(16))
        .total_memories(shape.memories)
        .total_tables(shape.tables)
        .max_tables_per_module(4)
        .total_stacks(slots)
        // Reuse the slots already warm before touching cold ones: the set of
        // slots ever used (each keeping `keep_resident` bytes) then stays at
        // the peak concurrency instead of creeping up to the whole pool.
        .max_unused_warm_slots(0)
        .linear_memory_keep_resident(keep_resident)
        .table_keep_resident(keep_resident)
        // With PAGEMAP_SCAN (Linux 6.7+) only the pages a task actually
        // dirtied are reset, by copying, so keep-resident can cover a guest's
        // whole working set without paying for untouched bytes, and teardown
        // needs no madvise, TLB-shootdown IPIs or page faults on the next task.
        .pagemap_scan(Enabled::Auto);
    let mut config = base_config();
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Engine::new(&config)
}

/// Keep-resident default when the kernel can tell which pages a task
/// dirtied (PAGEMAP_SCAN, Linux 6.7+): then only those are reset.
pub const KEEP_RESIDENT_WITH_SCAN: usize = 1 << 20;
/// Keep-resident default without the scan: every kept byte is rewritten on
/// every teardown.
pub const KEEP_RESIDENT_WITHOUT_SCAN: usize = 64 << 10;
// The memory bound counts the with-scan figure for every kernel.
const _: () = assert!(KEEP_RESIDENT_WITHOUT_SCAN <= KEEP_RESIDENT_WITH_SCAN);

/// Keep-resident default of this kernel (see [`keep_resident_for`]).
pub fn default_keep_resident() -> usize {
    keep_resident_for(PoolingAllocationConfig::is_pagemap_scan_available())
}

/// Keep-resident default with or without PAGEMAP_SCAN. The memory bound
/// counts the larger one whatever the kernel (`memory_bound`), so a
/// configuration that fits one kernel fits every kernel.
///
/// Measured with the echo plugin at 16 connections (bench/run): without the
/// scan, 64 KiB gave 23.9k req/s and 1 MiB 19.2k; with it, 64 KiB gave 54.3k
/// and 1 MiB 55.5k.
pub fn keep_resident_for(pagemap_scan: bool) -> usize {
    if pagemap_scan {
        KEEP_RESIDENT_WITH_SCAN
    } else {
        KEEP_RESIDENT_WITHOUT_SCAN
    }
}

/// Without the ticker a CPU-bound plugin would never be interrupted, so
/// failing to start it fails the engine.
fn start_epoch_ticker(engine: &Engine) -> std::io::Result<()> {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("iicp-epoch".to_string())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })?;
    Ok(())
}
