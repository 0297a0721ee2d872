//! Per-task store set-up: a fresh [`Store`] holding a capability-less WASI
//! context, the task's memory limiter, host budget and log budget, a capped
//! resource table, and a wall-clock deadline enforced on epoch ticks.

use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::ResourceTable;
use wasmtime::{Engine, Store, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::host::budget::HostBudget;
use super::host::config::PluginConfig;
use super::host::http::{HttpPolicy, TaskHttp};
use super::host::log::TaskLog;
use super::host::stdio::PluginOutput;
use super::limits::{PluginLimits, TaskLimiter};

/// Largest buffer a guest may request from `wasi:random` in one call.
const MAX_RANDOM_BYTES: u64 = 1 << 20;
/// Bytes a guest may pass to the host in one call (strings, lists) beyond
/// its largest allowed result: wasmtime's "hostcall fuel", which also
/// meters the result `handle` returns. It bounds the transient copy each
/// call makes; log lines are cut at 4 KiB and body writes come in 64 KiB
/// permits, so honest plugins stay far below it.
pub const HOST_CALL_MARGIN_BYTES: usize = 1 << 20;

/// The most a guest of a plugin with `limits` may pass in one host call.
pub fn host_call_bytes(limits: &PluginLimits) -> usize {
    limits
        .max_output_bytes
        .saturating_add(HOST_CALL_MARGIN_BYTES)
}
/// Live component-model handles per store (resources a component defines
/// itself and lends); wasmtime's default is 100,000.
pub const MAX_COMPONENT_HANDLES: usize = 10_000;

/// Everything a plugin instance can reach while it runs one task.
pub struct TaskState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: TaskLimiter,
    host_budget: Arc<HostBudget>,
    log: Arc<TaskLog>,
    config: Arc<PluginConfig>,
    http_ctx: WasiHttpCtx,
    http: TaskHttp,
}

impl TaskState {
    /// The task's log sink.
    pub fn task_log(&self) -> &TaskLog {
        &self.log
    }

    /// Sets the trace context the plugin's outbound requests carry.
    pub fn set_trace(&mut self, traceparent: &str, tracestate: Option<&str>) {
        self.http.set_trace(traceparent, tracestate);
    }

    /// The plugin's configuration.
    pub fn config(&self) -> &PluginConfig {
        &self.config
    }

    /// The task's memory limiter.
    pub fn limiter(&self) -> &TaskLimiter {
        &self.limiter
    }

    /// The task's host budget.
    pub fn host_budget(&self) -> &HostBudget {
        &self.host_budget
    }

    /// Whether the guest still holds host resources (resource-table
    /// entries: header maps, requests, streams, pollables). The host budget
    /// starts again with each task, so a reused instance that kept them
    /// could pile them up across tasks; it is retired instead.
    pub fn holds_resources(&self) -> bool {
        !self.table.is_empty()
    }
}

impl WasiView for TaskState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for TaskState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http_ctx,
            table: &mut self.table,
            hooks: &mut self.http,
        }
    }
}

impl super::bindings::iicp::plugin::types::Host for TaskState {}

/// `iicp:plugin/config`: the plugin's own values and secrets.
impl super::bindings::iicp::plugin::config::Host for TaskState {
    fn get(&mut self, key: String) -> Option<String> {
        self.config().values.get(&key).cloned()
    }

    fn get_all(&mut self) -> Vec<(String, String)> {
        self.config()
            .values
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    fn get_secret(&mut self, key: String) -> Option<String> {
        self.config().secrets.get(&key).cloned()
    }
}

/// `iicp:plugin/log`: lines into the task's bounded log.
impl super::bindings::iicp::plugin::log::Host for TaskState {
    fn log(&mut self, level: super::bindings::iicp::plugin::log::Level, message: String) {
        self.task_log().emit(level, "log", &message);
    }
}

/// What a plugin's tasks may reach beyond their own instance.
#[derive(Clone)]
pub struct PluginReach {
    /// Its configuration and secrets.
    pub config: Arc<PluginConfig>,
    /// Its outbound HTTP policy.
    pub http: Arc<HttpPolicy>,
}

/// A store for one task of `plugin` that traps once `deadline` passes.
pub fn task_store(
    engine: &Engine,
    plugin: Arc<str>,
    reach: &PluginReach,
    task_id: Arc<str>,
    limits: &PluginLimits,
    deadline: Instant,
) -> Store<TaskState> {
    let log = Arc::new(TaskLog::new(
        plugin,
        task_id.clone(),
        limits.max_log_lines,
        limits.max_log_bytes,
    ));
    // No preopens, no env, no args, no network: the builder's defaults plus
    // explicit denials, so a future default change cannot widen the sandbox.
    let wasi = WasiCtx::builder()
        .stdout(PluginOutput::stdout(log.clone()))
        .stderr(PluginOutput::stderr(log.clone()))
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .max_random_size(MAX_RANDOM_BYTES)
        .build();
    // Every wasi resource a guest creates (header maps, requests, streams,
    // pollables) is an entry; wasmtime's default allows a million.
    let mut table = ResourceTable::new();
    table.set_max_capacity(limits.max_resources as usize);
    let host_budget = Arc::new(HostBudget::new(limits.host_memory_bytes));
    let state = TaskState {
        wasi,
        table,
        limiter: TaskLimiter::new(limits.memory_bytes),
        host_budget: host_budget.clone(),
        log,
        config: reach.config.clone(),
        http_ctx: WasiHttpCtx::new(),
        http: TaskHttp::new(reach.http.clone(), host_budget, deadline),
    };
    let mut store = Store::new(engine, state);
    store.limiter(|state| &mut state.limiter);
    store.set_hostcall_fuel(host_call_bytes(limits));
    store.set_max_component_handles(MAX_COMPONENT_HANDLES);
    begin_task(&mut store, task_id, limits, deadline);
    store
}

/// Prepares `store` for a task: its log budget, a clear memory-cap flag and
/// a wall-clock deadline. A reused instance goes through this before each
/// task; the guest's own memory is *not* reset.
pub fn begin_task(
    store: &mut Store<TaskState>,
    task_id: Arc<str>,
    limits: &PluginLimits,
    deadline: Instant,
) {
    let state = store.data_mut();
    state
        .log
        .begin(task_id, limits.max_log_lines, limits.max_log_bytes);
    state.limiter.clear_cap_hit();
    state.host_budget.reset(limits.host_memory_bytes);
    state.http.set_deadline(deadline);
    // Check the wall clock on every epoch tick: tick counting alone drifts
    // with the ticker's sleep. Yielding on each tick keeps a CPU-bound guest
    // from holding a runtime worker thread.
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |_| {
        if Instant::now() >= deadline {
            Err(wasmtime::Trap::Interrupt.into())
        } else {
            Ok(UpdateDeadline::Yield(1))
        }
    });
}
