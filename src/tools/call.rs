//! `iicp-host call PLUGIN --intent URN --payload JSON`: one task, no HTTP,
//! under the same sandbox and limits as `run`. Prints the outcome as one
//! JSON line, then the time taken.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::protocol::task::Qos;
use crate::protocol::trace_context::TraceContext;
use crate::runtime::bindings::ErrorKind;
use crate::runtime::execute::{TaskFailure, TaskInput};
use crate::runtime::host::http::HttpSettings;
use crate::runtime::plugin::PluginSource;

/// What to call.
#[derive(Debug, Clone)]
pub struct CallArgs {
    /// The plugin.
    pub plugin: PathBuf,
    /// Whether it may be a compiled artifact (`--precompiled`).
    pub precompiled: bool,
    /// The intent; default: the plugin's first.
    pub intent: Option<String>,
    /// Payload JSON text, or `@file`.
    pub payload: String,
    /// Config values.
    pub config: BTreeMap<String, String>,
    /// Secret values.
    pub secrets: BTreeMap<String, String>,
    /// Outbound HTTP allow-list.
    pub allow_http: Vec<String>,
    /// The task's budget.
    pub timeout: Duration,
}

/// The WIT name of a plugin error kind.
fn kind_name(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::InvalidInput => "invalid-input",
        ErrorKind::UnsupportedIntent => "unsupported-intent",
        ErrorKind::BackendFailure => "backend-failure",
        ErrorKind::Unavailable => "unavailable",
        ErrorKind::Timeout => "timeout",
        ErrorKind::Internal => "internal",
    }
}

fn failure_json(failure: &TaskFailure) -> Value {
    let kind = match failure {
        TaskFailure::Plugin { kind, .. } => kind_name(*kind),
        TaskFailure::Timeout => "timeout",
        TaskFailure::OutputTooLarge { .. } => "output_too_large",
        TaskFailure::InvalidOutput => "invalid_output",
        TaskFailure::PoolExhausted => "capacity",
        TaskFailure::Host => "host",
        TaskFailure::Trap(_) => "trap",
        other => other.trap_kind().unwrap_or("trap"),
    };
    let message = failure.to_string();
    json!({"status": "error", "error": {"kind": kind, "message": message}})
}

/// Runs one task; `Ok`/`Err` carry the text to print (success or not).
pub async fn call(args: CallArgs) -> Result<String, String> {
    let payload_text = match args.payload.strip_prefix('@') {
        Some(file) => {
            std::fs::read_to_string(file).map_err(|e| format!("error: cannot read {file}: {e}"))?
        }
        None => args.payload.clone(),
    };
    let payload: Box<serde_json::value::RawValue> = serde_json::from_str(&payload_text)
        .map_err(|e| format!("error: --payload is not JSON: {e}"))?;
    let (runtime, fetcher) = (super::runtime()?, super::fetcher());
    let mut source = PluginSource::new(args.plugin.clone());
    source.config = args.config;
    source.secrets = args.secrets;
    source.precompiled = args.precompiled;
    source.http = HttpSettings {
        allow: args.allow_http,
        ..HttpSettings::default()
    };
    let loading = Instant::now();
    let plugin = fetcher
        .load(&runtime, &source)
        .await
        .map_err(|e| format!("error: {e}"))?;
    let load_time = loading.elapsed();
    let intent = match args.intent {
        Some(intent) => intent,
        None => plugin.info.capabilities[0].intent.clone(),
    };
    let trace = TraceContext::from_request(None, None, None);
    let started = Instant::now();
    let input = TaskInput {
        task_id: "call",
        intent: &intent,
        payload: payload.get(),
        timeout: args.timeout,
        max_tokens: None,
        model: None,
        qos: Qos::Interactive,
        traceparent: trace.child_traceparent(),
        tracestate: None,
        deadline: started + args.timeout,
    };
    let (outcome, report) = runtime.run_task(&plugin, input).await;
    let took = started.elapsed();
    let line = match &outcome {
        Ok(success) => json!({
            "status": "success",
            "intent": intent,
            "result": serde_json::from_str::<Value>(success.result.get()).unwrap_or_default(),
            "usage": success.usage.map(|u| json!({
                "prompt_tokens": u.prompt_tokens,
                "completion_tokens": u.completion_tokens,
                "total_tokens": u.total_tokens,
            })),
            "model_used": success.model_used,
        }),
        Err(failure) => failure_json(failure),
    };
    let mut out = line.to_string();
    let _ = write!(
        out,
        "\ntook {:.3} ms (instantiate {:.3} ms, peak memory {} KiB; loading the plugin took {:.0} ms)",
        took.as_secs_f64() * 1000.0,
        report.instantiate.as_secs_f64() * 1000.0,
        report.memory_bytes >> 10,
        load_time.as_secs_f64() * 1000.0
    );
    if outcome.is_ok() { Ok(out) } else { Err(out) }
}
