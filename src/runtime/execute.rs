//! Running one task: a fresh store and instance, the `handle` call bounded
//! by the task's deadline, and the outcome classified into a
//! [`TaskFailure`] the server can map to a protocol error.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::value::RawValue;
use wasmtime::component::ResourceTableError;
use wasmtime::{Engine, PoolConcurrencyLimitError, Trap};

use super::bindings::{
    Constraints, ErrorKind, Qos, Task, TaskError, TaskOutput, TraceContext, Usage,
};
use super::handle_export::instantiate;
use super::host::budget::{HostLimit, HostLimitExceeded};
use super::plugin::LoadedPlugin;
use super::reuse::{WarmInstance, WarmRegistry};
use super::store::{MAX_COMPONENT_HANDLES, begin_task, host_call_bytes, task_store};
use super::teardown::{TRIM_AFTER_HOST_BYTES, Teardown};
use crate::clock::unix_ms;
use crate::protocol::task::Qos as WireQos;

/// One task as the runtime needs it; the server has validated every field.
#[derive(Debug)]
pub struct TaskInput<'a> {
    /// The consumer's task id.
    pub task_id: &'a str,
    /// The intent, one the plugin serves.
    pub intent: &'a str,
    /// Payload JSON text.
    pub payload: &'a str,
    /// The task's whole budget (for the plugin's information).
    pub timeout: Duration,
    /// `constraints.max_tokens`.
    pub max_tokens: Option<u32>,
    /// `constraints.model`.
    pub model: Option<&'a str>,
    /// `constraints.qos`.
    pub qos: WireQos,
    /// `traceparent` naming the node's span.
    pub traceparent: String,
    /// The consumer's `tracestate`.
    pub tracestate: Option<&'a str>,
    /// When the plugin must be done.
    pub deadline: Instant,
}

/// A successful task.
#[derive(Debug)]
pub struct TaskSuccess {
    /// The result, checked to be JSON.
    pub result: Box<RawValue>,
    /// Token usage as reported by the plugin.
    pub usage: Option<Usage>,
    /// Model used, as reported by the plugin.
    pub model_used: Option<String>,
}

/// Why a task failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskFailure {
    /// The deadline passed (CPU loop interrupted, or waiting too long).
    Timeout,
    /// The instance tried to grow memory past its cap.
    MemoryLimit {
        /// The cap in MiB.
        cap_mib: usize,
    },
    /// The guest's call stack overflowed.
    StackOverflow,
    /// The instance made the host hold more than a per-task cap allows
    /// (resource-table entries, host memory, bytes per host call).
    HostLimit(HostLimit),
    /// The instance used a host resource the wrong way (a handle that is
    /// gone, of another type, or with children still alive).
    ResourceMisuse(&'static str),
    /// Any other trap; the value names its kind.
    Trap(&'static str),
    /// The result exceeds the plugin's output cap.
    OutputTooLarge {
        /// Which part: `result` or `model_used`.
        part: &'static str,
        /// The cap in bytes.
        limit: usize,
    },
    /// The result is not JSON.
    InvalidOutput,
    /// The plugin returned a typed error.
    Plugin {
        /// The plugin's error kind.
        kind: ErrorKind,
        /// The plugin's message.
        message: String,
        /// Whether the consumer may retry.
        retryable: bool,
    },
    /// No instance slot was free in the engine's pool.
    PoolExhausted,
    /// Something else failed in the host; details are logged, not returned.
    Host,
}

impl std::fmt::Display for TaskFailure {
    /// One line for the consumer and the operator; never details of the
    /// host's internals.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TaskFailure::Timeout => f.write_str("the task did not finish within its budget"),
            TaskFailure::MemoryLimit { cap_mib } => {
                write!(f, "plugin exceeded its memory limit of {cap_mib} MiB")
            }
            TaskFailure::StackOverflow => f.write_str("plugin overflowed its stack"),
            TaskFailure::HostLimit(limit) => write!(f, "plugin exceeded a host limit: {limit}"),
            TaskFailure::ResourceMisuse(what) => {
                write!(f, "plugin misused a host resource: {what}")
            }
            TaskFailure::Trap(kind) => write!(f, "plugin crashed ({kind})"),
            TaskFailure::OutputTooLarge { part, limit } => {
                write!(f, "plugin {part} exceeds the {limit}-byte limit")
            }
            TaskFailure::InvalidOutput => f.write_str("plugin returned a result that is not JSON"),
            TaskFailure::Plugin { message, .. } => f.write_str(message),
            TaskFailure::PoolExhausted => f.write_str("no instance slot free"),
            TaskFailure::Host => f.write_str("internal error while running the task"),
        }
    }
}

impl TaskFailure {
    /// The trap kind for the `iicp_plugin_traps_total{kind}` metric, if this
    /// failure stopped the instance.
    pub fn trap_kind(&self) -> Option<&'static str> {
        match self {
            TaskFailure::Timeout => Some("timeout"),
            TaskFailure::MemoryLimit { .. } => Some("memory_limit"),
            TaskFailure::StackOverflow => Some("stack_overflow"),
            TaskFailure::HostLimit(_) => Some("host_limit"),
            TaskFailure::ResourceMisuse(_) => Some("resource_misuse"),
            TaskFailure::Trap(kind) => Some(kind),
            _ => None,
        }
    }
}

/// What happened besides the result, for logs and metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct TaskReport {
    /// Time to create the store and instantiate the component.
    pub instantiate: Duration,
    /// Log lines dropped because the task's budget ran out.
    pub log_lines_dropped: u64,
    /// Linear memory the instance had at its peak.
    pub memory_bytes: usize,
    /// Host bytes charged to the task's host budget.
    pub host_bytes: u64,
    /// A reused instance was retired because it ended the task still
    /// holding host resources.
    pub retired_holding_resources: bool,
}

/// Runs `input` in a fresh instance of `plugin` (or, when the plugin opted
/// in to reuse, in an idle instance that served fewer than its limit).
pub async fn run_task(
    engine: &Engine,
    teardown: &Teardown,
    idle: &WarmRegistry,
    plugin: &LoadedPlugin,
    input: TaskInput<'_>,
) -> (Result<TaskSuccess, TaskFailure>, TaskReport) {
    let started = Instant::now();
    let task_id: Arc<str> = Arc::from(input.task_id);
    let fresh_store = || {
        task_store(
            engine,
            plugin.id.clone(),
            &plugin.reach,
            task_id.clone(),
            &plugin.limits,
            input.deadline,
        )
    };
    let (mut store, warm, uses) = match plugin.reuse.as_ref().and_then(|pool| pool.take()) {
        Some(mut warm) => {
            begin_task(
                &mut warm.store,
                task_id.clone(),
                &plugin.limits,
                input.deadline,
            );
            (warm.store, Some(warm.handle), warm.uses)
        }
        None => (fresh_store(), None, 0),
    };
    store
        .data_mut()
        .set_trace(&input.traceparent, input.tracestate);
    let task = to_wit_task(&input);
    let mut instantiated = None;
    let store_slot = &mut store;
    let call = async {
        let handle = match warm {
            Some(handle) => handle,
            None => {
                let artifact = &plugin.artifact;
                let handle =
                    match instantiate(&artifact.pre, &artifact.handle, &mut *store_slot).await {
                        // Idle reused instances (of any plugin) hold pool slots:
                        // give them back and try once more, in a clean store.
                        Err(error)
                            if error.is::<PoolConcurrencyLimitError>() && idle.evict_all() > 0 =>
                        {
                            *store_slot = fresh_store();
                            instantiate(&artifact.pre, &artifact.handle, &mut *store_slot).await?
                        }
                        other => other?,
                    };
                instantiated = Some(started.elapsed());
                handle
            }
        };
        let output = handle.call(&mut *store_slot, &task).await?;
        Ok::<_, wasmtime::Error>((handle, output))
    };
    // The epoch callback interrupts running guest code; this timeout also
    // covers time spent waiting in host calls, where no guest code runs.
    let outcome = tokio::time::timeout_at(input.deadline.into(), call).await;
    let state = store.data();
    let mut report = TaskReport {
        instantiate: instantiated.unwrap_or_default(),
        log_lines_dropped: state.task_log().finish(),
        memory_bytes: state.limiter().in_use_bytes(),
        host_bytes: state.host_budget().used(),
        retired_holding_resources: false,
    };
    // The guest's answer is copied into host strings; an oversized one is
    // refused below but its pages stay in the host's heap once freed.
    let mut copied_out_bytes = 0;
    let (result, instance) = match outcome {
        Err(_elapsed) => (Err(TaskFailure::Timeout), None),
        Ok(Err(error)) => (
            Err(classify_error(&error, state.limiter().cap_hit(), plugin)),
            None,
        ),
        Ok(Ok((instance, Err(error)))) => (Err(plugin_error(error)), Some(instance)),
        Ok(Ok((instance, Ok(output)))) => {
            copied_out_bytes = output_copy_bytes(&output);
            let checked = check_output(output.result_json, plugin.limits.max_output_bytes)
                .and_then(|result| Ok((result, check_model_used(output.model_used)?)));
            let result = checked.map(|(result, model_used)| TaskSuccess {
                result,
                usage: output.usage,
                model_used,
            });
            (result, Some(instance))
        }
    };
    let reclaim = report.host_bytes.saturating_add(copied_out_bytes) >= TRIM_AFTER_HOST_BYTES
        || result
            .as_ref()
            .err()
            .and_then(TaskFailure::trap_kind)
            .is_some();
    // Only an instance whose call returned normally, and that let go of
    // every host resource, may serve again.
    let instance = match instance {
        Some(_) if plugin.reuse.is_some() && store.data().holds_resources() => {
            report.retired_holding_resources = true;
            None
        }
        instance => instance,
    };
    if let (Some(pool), Some(instance)) = (&plugin.reuse, instance) {
        pool.give_back(WarmInstance::new(store, instance, uses + 1));
        if reclaim {
            crate::heap::return_free_memory_in_background();
        }
    } else {
        teardown.dispose(store, reclaim);
    }
    (result, report)
}

/// Bytes of the guest's answer the host copied out of its memory.
fn output_copy_bytes(output: &TaskOutput) -> u64 {
    let bytes = output.result_json.len() + output.model_used.as_ref().map_or(0, String::len);
    u64::try_from(bytes).unwrap_or(u64::MAX)
}

fn to_wit_task(input: &TaskInput<'_>) -> Task {
    let deadline_unix_ms = SystemTime::now()
        .checked_add(input.deadline.saturating_duration_since(Instant::now()))
        .map_or(0, unix_ms);
    Task {
        task_id: input.task_id.to_string(),
        intent: input.intent.to_string(),
        payload: input.payload.to_string(),
        constraints: Constraints {
            timeout_ms: u32::try_from(input.timeout.as_millis()).unwrap_or(u32::MAX),
            max_tokens: input.max_tokens,
            model: input.model.map(str::to_string),
            qos: match input.qos {
                WireQos::Realtime => Qos::Realtime,
                WireQos::Interactive => Qos::Interactive,
                WireQos::Batch => Qos::Batch,
                WireQos::BestEffort => Qos::BestEffort,
            },
        },
        trace: TraceContext {
            traceparent: input.traceparent.clone(),
            tracestate: input.tracestate.map(str::to_string),
        },
        deadline_unix_ms,
    }
}

fn classify_error(
    error: &wasmtime::Error,
    memory_cap_hit: bool,
    plugin: &LoadedPlugin,
) -> TaskFailure {
    if memory_cap_hit {
        return TaskFailure::MemoryLimit {
            cap_mib: plugin.limits.memory_bytes >> 20,
        };
    }
    if let Some(trap) = error.downcast_ref::<Trap>() {
        return match trap {
            Trap::Interrupt => TaskFailure::Timeout,
            Trap::StackOverflow => TaskFailure::StackOverflow,
            other => TaskFailure::Trap(trap_kind(other)),
        };
    }
    if error.downcast_ref::<PoolConcurrencyLimitError>().is_some() {
        return TaskFailure::PoolExhausted;
    }
    if let Some(exceeded) = error.downcast_ref::<HostLimitExceeded>() {
        return TaskFailure::HostLimit(exceeded.limit);
    }
    if let Some(table) = error.downcast_ref::<ResourceTableError>() {
        return match table {
            ResourceTableError::Full => TaskFailure::HostLimit(HostLimit {
                what: "resource table",
                value: u64::from(plugin.limits.max_resources),
                unit: "entries",
            }),
            ResourceTableError::NotPresent => TaskFailure::ResourceMisuse("a handle that is gone"),
            ResourceTableError::WrongType => {
                TaskFailure::ResourceMisuse("a handle of another type")
            }
            ResourceTableError::HasChildren => {
                TaskFailure::ResourceMisuse("a resource whose children are still alive")
            }
        };
    }
    // wasmtime's own guards on what a guest hands the host have no public
    // error type; their messages are stable enough to recognise.
    let text = format!("{error:#}");
    if text.contains("fuel allocated for hostcalls has been exhausted") {
        // Without guest frames on the stack, it was the result being handed
        // back, not an import call.
        if error.downcast_ref::<wasmtime::WasmBacktrace>().is_none() {
            return TaskFailure::OutputTooLarge {
                part: "result",
                limit: plugin.limits.max_output_bytes,
            };
        }
        return TaskFailure::HostLimit(HostLimit {
            what: "data passed to the host in one call",
            value: host_call_bytes(&plugin.limits) as u64,
            unit: "bytes",
        });
    }
    if text.contains("store handle limit exceeded") {
        return TaskFailure::HostLimit(HostLimit {
            what: "component resource handles",
            value: MAX_COMPONENT_HANDLES as u64,
            unit: "handles",
        });
    }
    tracing::error!(plugin = &*plugin.id, error = %format!("{error:#}"), "plugin task failed in the host");
    TaskFailure::Host
}

fn trap_kind(trap: &Trap) -> &'static str {
    match trap {
        Trap::UnreachableCodeReached => "unreachable",
        Trap::MemoryOutOfBounds => "memory_out_of_bounds",
        Trap::HeapMisaligned => "heap_misaligned",
        Trap::TableOutOfBounds => "table_out_of_bounds",
        Trap::IndirectCallToNull => "indirect_call_to_null",
        Trap::BadSignature => "bad_signature",
        Trap::IntegerOverflow => "integer_overflow",
        Trap::IntegerDivisionByZero => "division_by_zero",
        Trap::BadConversionToInteger => "bad_conversion_to_integer",
        _ => "other",
    }
}

fn plugin_error(error: TaskError) -> TaskFailure {
    TaskFailure::Plugin {
        kind: error.kind,
        message: error.message,
        retryable: error.retryable,
    }
}

/// Longest `model_used` a plugin may report (it is echoed to the consumer
/// and kept in logs and metrics, outside the output cap).
pub const MAX_MODEL_USED_BYTES: usize = 256;

fn check_model_used(model_used: Option<String>) -> Result<Option<String>, TaskFailure> {
    match model_used {
        Some(model) if model.len() > MAX_MODEL_USED_BYTES => Err(TaskFailure::OutputTooLarge {
            part: "model_used",
            limit: MAX_MODEL_USED_BYTES,
        }),
        other => Ok(other),
    }
}

fn check_output(result_json: String, limit: usize) -> Result<Box<RawValue>, TaskFailure> {
    if result_json.len() > limit {
        return Err(TaskFailure::OutputTooLarge {
            part: "result",
            limit,
        });
    }
    RawValue::from_string(result_json).map_err(|_| TaskFailure::InvalidOutput)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_must_be_json_and_within_the_cap() {
        assert!(check_output(r#"{"a":1}"#.to_string(), 100).is_ok());
        assert_eq!(
            check_output("nope".to_string(), 100).unwrap_err(),
            TaskFailure::InvalidOutput
        );
        assert_eq!(
            check_output("\"0123456789\"".to_string(), 5).unwrap_err(),
            TaskFailure::OutputTooLarge {
                part: "result",
                limit: 5
            }
        );
    }
}
