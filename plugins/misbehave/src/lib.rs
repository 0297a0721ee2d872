//! A plugin that misbehaves on purpose, one intent per kind of abuse, so the
//! host's sandbox limits can be tested end to end. Intents are
//! `urn:iicp:intent:test:<case>:v1`; the case is read from the action
//! segment whatever the domain, and config value `also_declare` (intents,
//! comma-separated) declares cases under other domains too (e.g.
//! `urn:iicp:intent:tool:ok:v1`), for tests of rules that depend on the
//! domain (the host serves only intents a plugin declares):
//!
//! | case         | behaviour                                                  |
//! |--------------|------------------------------------------------------------|
//! | ok           | returns the payload unchanged                              |
//! | loop         | spins forever                                              |
//! | memory-bomb  | allocates 1 MiB blocks until memory runs out               |
//! | recursion    | recurses until the stack overflows                         |
//! | trap         | executes `unreachable`                                     |
//! | big-output   | returns a JSON string of `payload.bytes` bytes             |
//! | log-flood    | writes `payload.lines` log lines and stdout lines          |
//! | sleep        | sleeps `payload.ms` milliseconds, then returns the payload |
//! | fail         | returns the typed error described by the payload           |
//! | invalid-json | returns a result that is not JSON                          |
//! | inspect      | returns every field of the task record it received         |
//! | escape       | tries to reach env, args, files, `payload.port` on TCP,    |
//! |              | a DNS lookup and `payload.url` over wasi:http              |
//! | counter      | counts calls in a global: 1 on every fresh instance        |
//! | scribble     | counts the bytes of a 320 KiB initialised static that are  |
//! |              | no longer as initialised, then overwrites every other page |
//! |              | of it (40 scattered dirty pages): 0 on every fresh instance|
//! | config       | returns its config, and whether secret `payload.secret`    |
//! |              | equals `payload.expect` (the secret itself never leaves)   |
//! | http-get     | fetches `payload.url` over wasi:http (through the SDK)     |

use serde::{Deserialize, Serialize};

wit_bindgen::generate!({ path: "../../wit", world: "plugin" });

use exports::iicp::plugin::handler::{Descriptor, Guest, Task, TaskError, TaskOutput};
use iicp::plugin::config;
use iicp::plugin::log::{Level, log};
use iicp::plugin::types::{Capability, ErrorKind, Qos};

const CASES: &[&str] = &[
    "ok",
    "loop",
    "memory-bomb",
    "recursion",
    "trap",
    "big-output",
    "log-flood",
    "sleep",
    "fail",
    "invalid-json",
    "inspect",
    "escape",
    "counter",
    "scribble",
    "config",
    "http-get",
];

/// Calls served by this instance; only a reused instance ever gets past 1.
static CALLS: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);

/// Pages of [`SCRIBBLED`]: enough that overwriting every other one leaves
/// more disjoint dirty regions than the host's reset scans in one pass.
const SCRIBBLE_PAGES: usize = 80;
const PAGE: usize = 4096;
/// Initialised (not zero) data, so it lives in the component's memory image.
static SCRIBBLED: std::sync::Mutex<[u8; SCRIBBLE_PAGES * PAGE]> =
    std::sync::Mutex::new([0x5a; SCRIBBLE_PAGES * PAGE]);

/// Bytes of [`SCRIBBLED`] that differ from their initial value, then
/// overwrites the first bytes of every other page.
fn scribble() -> usize {
    let mut pages = SCRIBBLED.lock().unwrap_or_else(|p| p.into_inner());
    let changed = pages.iter().filter(|&&b| b != 0x5a).count();
    for page in pages.chunks_mut(PAGE).step_by(2) {
        page[..64].fill(0xa5);
    }
    changed
}

struct Misbehave;

#[derive(Deserialize, Default)]
#[serde(default)]
struct Params {
    bytes: usize,
    lines: u32,
    ms: u64,
    port: u16,
    secret: String,
    expect: String,
    url: String,
    kind: String,
    message: String,
    retryable: bool,
}

fn output(result: String) -> Result<TaskOutput, TaskError> {
    Ok(TaskOutput {
        result_json: result,
        usage: None,
        model_used: None,
    })
}

/// The task record as the plugin saw it, for the `inspect` case.
#[derive(Serialize)]
struct Inspection<'a> {
    task_id: &'a str,
    intent: &'a str,
    payload: &'a str,
    timeout_ms: u32,
    max_tokens: Option<u32>,
    model: Option<&'a str>,
    qos: &'static str,
    traceparent: &'a str,
    tracestate: Option<&'a str>,
    deadline_unix_ms: u64,
}

fn inspect(task: &Task) -> String {
    let inspection = Inspection {
        task_id: &task.task_id,
        intent: &task.intent,
        payload: &task.payload,
        timeout_ms: task.constraints.timeout_ms,
        max_tokens: task.constraints.max_tokens,
        model: task.constraints.model.as_deref(),
        qos: match task.constraints.qos {
            Qos::Realtime => "realtime",
            Qos::Interactive => "interactive",
            Qos::Batch => "batch",
            Qos::BestEffort => "best-effort",
        },
        traceparent: &task.trace.traceparent,
        tracestate: task.trace.tracestate.as_deref(),
        deadline_unix_ms: task.deadline_unix_ms,
    };
    serde_json::to_string(&inspection).unwrap_or_default()
}

/// What a sandbox escape attempt could reach.
#[derive(Serialize)]
struct Escape {
    env_vars: usize,
    args: usize,
    read_file: String,
    list_root: String,
    tcp_connect: String,
    dns_lookup: String,
    http_request: String,
}

fn outcome<T, E: core::fmt::Display>(result: Result<T, E>) -> String {
    match result {
        Ok(_) => "allowed".to_string(),
        Err(error) => format!("denied: {error}"),
    }
}

fn escape(port: u16, url: &str) -> String {
    let url = if url.is_empty() {
        format!("http://127.0.0.1:{port}/")
    } else {
        url.to_string()
    };
    let report = Escape {
        env_vars: std::env::vars_os().count(),
        args: std::env::args_os().count(),
        read_file: outcome(std::fs::read("/etc/passwd")),
        list_root: outcome(std::fs::read_dir("/")),
        tcp_connect: outcome(std::net::TcpStream::connect(("127.0.0.1", port))),
        dns_lookup: outcome(std::net::ToSocketAddrs::to_socket_addrs(&(
            "localhost",
            port,
        ))),
        http_request: outcome(iicp_plugin_sdk::http::get(
            &url,
            std::time::Duration::from_secs(2),
        )),
    };
    serde_json::to_string(&report).unwrap_or_default()
}

fn recurse(depth: u64) -> u64 {
    let frame = core::hint::black_box([depth; 32]);
    if depth == 0 {
        return frame[1];
    }
    recurse(depth - 1).wrapping_add(frame[7])
}

fn error_kind(name: &str) -> ErrorKind {
    match name {
        "invalid-input" => ErrorKind::InvalidInput,
        "unsupported-intent" => ErrorKind::UnsupportedIntent,
        "backend-failure" => ErrorKind::BackendFailure,
        "unavailable" => ErrorKind::Unavailable,
        "timeout" => ErrorKind::Timeout,
        _ => ErrorKind::Internal,
    }
}

/// Every case under the test domain, then `also_declare`'s intents not
/// already among them.
fn declared_intents() -> Vec<String> {
    let mut intents: Vec<String> = CASES
        .iter()
        .map(|case| format!("urn:iicp:intent:test:{case}:v1"))
        .collect();
    for intent in config::get("also_declare").unwrap_or_default().split(',') {
        let intent = intent.trim();
        if !intent.is_empty() && !intents.iter().any(|i| i == intent) {
            intents.push(intent.to_string());
        }
    }
    intents
}

impl Guest for Misbehave {
    fn describe() -> Descriptor {
        Descriptor {
            name: "misbehave".to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            capabilities: declared_intents()
                .into_iter()
                .map(|intent| Capability {
                    intent,
                    models: Vec::new(),
                    max_tokens: None,
                    input_modalities: Vec::new(),
                })
                .collect(),
        }
    }

    fn handle(task: Task) -> Result<TaskOutput, TaskError> {
        let case = task
            .intent
            .strip_prefix("urn:iicp:intent:")
            .and_then(|rest| rest.split(':').nth(1))
            .unwrap_or_default();
        let params: Params = serde_json::from_str(&task.payload).unwrap_or_default();
        match case {
            "ok" => output(task.payload),
            "loop" => {
                let mut counter = 0u64;
                loop {
                    counter = core::hint::black_box(counter.wrapping_add(1));
                }
            }
            "memory-bomb" => {
                let mut blocks = Vec::new();
                loop {
                    blocks.push(core::hint::black_box(vec![7u8; 1 << 20]));
                }
            }
            "recursion" => output(recurse(core::hint::black_box(u64::MAX)).to_string()),
            "trap" => core::arch::wasm32::unreachable(),
            "big-output" => output(format!("\"{}\"", "x".repeat(params.bytes))),
            "log-flood" => {
                for line in 0..params.lines {
                    log(Level::Info, &format!("flood line {line}"));
                    println!("stdout flood line {line}");
                    eprintln!("stderr flood line {line}");
                }
                output(format!("{{\"logged\":{}}}", params.lines))
            }
            "sleep" => {
                std::thread::sleep(std::time::Duration::from_millis(params.ms));
                output(task.payload)
            }
            "fail" => Err(TaskError {
                kind: error_kind(&params.kind),
                message: params.message,
                retryable: params.retryable,
            }),
            "invalid-json" => output("this is not JSON".to_string()),
            "inspect" => output(inspect(&task)),
            "escape" => output(escape(params.port, &params.url)),
            "config" => {
                let values: std::collections::BTreeMap<String, String> =
                    config::get_all().into_iter().collect();
                let secret = config::get_secret(&params.secret);
                let report = serde_json::json!({
                    "values": values,
                    "missing": config::get("no-such-key"),
                    "secret_set": secret.is_some(),
                    "secret_matches": secret.as_deref() == Some(params.expect.as_str()),
                });
                output(report.to_string())
            }
            "http-get" => {
                let timeout =
                    std::time::Duration::from_millis(u64::from(task.constraints.timeout_ms));
                match iicp_plugin_sdk::http::get(&params.url, timeout) {
                    Ok(response) => output(
                        serde_json::json!({
                            "status": response.status,
                            "body": String::from_utf8_lossy(&response.body),
                        })
                        .to_string(),
                    ),
                    Err(error) => Err(TaskError {
                        kind: ErrorKind::BackendFailure,
                        message: error.to_string(),
                        retryable: false,
                    }),
                }
            }
            "scribble" => output(format!("{{\"changed_bytes\":{}}}", scribble())),
            "counter" => {
                let calls = CALLS.fetch_add(1, core::sync::atomic::Ordering::Relaxed) + 1;
                output(format!("{{\"calls\":{calls}}}"))
            }
            _ => Err(TaskError {
                kind: ErrorKind::UnsupportedIntent,
                message: format!("misbehave does not serve {}", task.intent),
                retryable: false,
            }),
        }
    }
}

export!(Misbehave);
