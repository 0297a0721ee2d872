//! A plugin that tries to make the *host* hold memory outside the plugin's
//! own linear memory, one class of host resource per intent
//! (`urn:iicp:intent:hoard:<class>:v1`). Each class keeps every handle it
//! creates (never dropping one) and loops until the host stops it, so the
//! host's per-task caps — resource-table entries, host bytes, requests in
//! flight, output — are what end the task.
//!
//! | class            | what it piles up on the host                                |
//! |------------------|-------------------------------------------------------------|
//! | fields           | `fields` maps with two 60 KiB values each                   |
//! | fields-clone     | clones of one 100 KiB `fields` map                          |
//! | request-bodies   | outgoing requests whose body streams are written full       |
//! | request-strings  | outgoing requests with a 1 MiB path and authority           |
//! | resources        | empty `fields` (the cheapest table entry)                   |
//! | pollables        | clock pollables                                             |
//! | streams          | handles to stdout                                           |
//! | in-flight        | requests to `payload.url` with 1 MiB bodies, never awaited  |
//! | random           | 1 MiB of random bytes per call (must not accumulate)        |
//! | big-log          | 1 MiB log lines (must not accumulate)                       |
//! | huge-call        | one 8 MiB log line: more than one host call may carry       |
//! | model-used       | a result whose `model_used` is 4 MiB                        |
//! | keep-fields      | one 120 KiB `fields` map per task, kept across tasks of a   |
//! |                  | reused instance; answers how many it holds (`{"kept":n}`)   |
//! | ok               | nothing: returns `{"ok":true}`                              |

use serde::Deserialize;

wit_bindgen::generate!({ path: "../../wit", world: "plugin" });

use exports::iicp::plugin::handler::{Descriptor, Guest, Task, TaskError, TaskOutput};
use iicp::plugin::log::{Level, log};
use iicp::plugin::types::{Capability, ErrorKind};
use wasip2::http::outgoing_handler;
use wasip2::http::types::{Fields, Method, OutgoingBody, OutgoingRequest, Scheme};

const CLASSES: &[&str] = &[
    "fields",
    "fields-clone",
    "request-bodies",
    "request-strings",
    "resources",
    "pollables",
    "streams",
    "in-flight",
    "random",
    "big-log",
    "huge-call",
    "model-used",
    "keep-fields",
    "ok",
];

const MIB: usize = 1 << 20;

#[derive(Deserialize, Default)]
#[serde(default)]
struct Params {
    /// `http://host:port` for `in-flight`.
    url: String,
}

struct Hoarder;

/// Everything kept alive until the host ends the task.
#[derive(Default)]
struct Hoard {
    fields: Vec<Fields>,
    requests: Vec<OutgoingRequest>,
    bodies: Vec<OutgoingBody>,
    streams: Vec<wasip2::io::streams::OutputStream>,
    pollables: Vec<wasip2::io::poll::Pollable>,
    responses: Vec<outgoing_handler::FutureIncomingResponse>,
}

fn filled_fields(value_bytes: usize, copies: usize) -> Fields {
    let fields = Fields::new();
    for n in 0..copies {
        // Over the host's per-map limit this fails; keep going with what fit.
        let _ = fields.append(&format!("x-hoard-{n}"), &vec![b'a'; value_bytes]);
    }
    fields
}

/// Writes into `body` until the host stops taking bytes; returns the
/// stream (a child of `body`).
fn fill_body(body: &OutgoingBody, limit: usize) -> Option<wasip2::io::streams::OutputStream> {
    let stream = body.write().ok()?;
    let chunk = vec![b'b'; 64 << 10];
    let mut written = 0;
    while written < limit {
        match stream.check_write() {
            Ok(0) | Err(_) => break,
            Ok(permit) => {
                let n = (permit as usize).min(chunk.len()).min(limit - written);
                if stream.write(&chunk[..n]).is_err() {
                    break;
                }
                written += n;
            }
        }
    }
    Some(stream)
}

fn hoard(class: &str, params: &Params) -> ! {
    let mut hoard = Hoard::default();
    let big = "p".repeat(MIB);
    loop {
        match class {
            "fields" => hoard.fields.push(filled_fields(60 << 10, 2)),
            "fields-clone" => {
                let original = filled_fields(100 << 10, 1);
                loop {
                    hoard.fields.push(original.clone());
                }
            }
            "request-bodies" => {
                let request = OutgoingRequest::new(Fields::new());
                if let Ok(body) = request.body() {
                    hoard.streams.extend(fill_body(&body, MIB));
                    hoard.bodies.push(body);
                }
                hoard.requests.push(request);
            }
            "request-strings" => {
                let request = OutgoingRequest::new(Fields::new());
                let _ = request.set_path_with_query(Some(&format!("/{big}")));
                let _ = request.set_authority(Some(&big));
                let _ = request.set_method(&Method::Other(big.clone()));
                hoard.requests.push(request);
            }
            "resources" => hoard.fields.push(Fields::new()),
            "pollables" => hoard
                .pollables
                .push(wasip2::clocks::monotonic_clock::subscribe_duration(1 << 40)),
            "streams" => hoard.streams.push(wasip2::cli::stdout::get_stdout()),
            "in-flight" => {
                let (https, authority) = match params.url.split_once("://") {
                    Some((scheme, rest)) => (scheme == "https", rest.trim_end_matches('/')),
                    None => (false, params.url.as_str()),
                };
                let request = OutgoingRequest::new(Fields::new());
                let _ = request.set_method(&Method::Post);
                let _ =
                    request.set_scheme(Some(if https { &Scheme::Https } else { &Scheme::Http }));
                let _ = request.set_authority(Some(authority));
                let _ = request.set_path_with_query(Some("/hoard"));
                let body = request.body();
                if let Ok(response) = outgoing_handler::handle(request, None) {
                    hoard.responses.push(response);
                }
                if let Ok(body) = body {
                    drop(fill_body(&body, MIB));
                    let _ = OutgoingBody::finish(body, None);
                }
            }
            "random" => {
                let bytes = wasip2::random::random::get_random_bytes(MIB as u64);
                core::hint::black_box(bytes);
            }
            "big-log" => log(Level::Info, &big),
            "huge-call" => log(Level::Info, &big.repeat(8)),
            other => panic!("no hoarding class {other}"),
        }
    }
}

/// Adds a filled `fields` map to those kept from earlier tasks of this
/// instance; returns how many are kept now.
fn keep_fields() -> usize {
    thread_local! {
        static KEPT: std::cell::RefCell<Vec<Fields>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    KEPT.with(|kept| {
        let mut kept = kept.borrow_mut();
        kept.push(filled_fields(60 << 10, 2));
        kept.len()
    })
}

impl Guest for Hoarder {
    fn describe() -> Descriptor {
        Descriptor {
            name: "hoarder".to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            capabilities: CLASSES
                .iter()
                .map(|class| Capability {
                    intent: format!("urn:iicp:intent:hoard:{class}:v1"),
                    models: Vec::new(),
                    max_tokens: None,
                    input_modalities: Vec::new(),
                })
                .collect(),
        }
    }

    fn handle(task: Task) -> Result<TaskOutput, TaskError> {
        let class = task
            .intent
            .strip_prefix("urn:iicp:intent:hoard:")
            .and_then(|rest| rest.strip_suffix(":v1"))
            .unwrap_or_default();
        let params: Params = serde_json::from_str(&task.payload).unwrap_or_default();
        match class {
            "ok" => Ok(TaskOutput {
                result_json: "{\"ok\":true}".to_string(),
                usage: None,
                model_used: None,
            }),
            "keep-fields" => Ok(TaskOutput {
                result_json: format!("{{\"kept\":{}}}", keep_fields()),
                usage: None,
                model_used: None,
            }),
            "model-used" => Ok(TaskOutput {
                result_json: "{\"ok\":true}".to_string(),
                usage: None,
                model_used: Some("m".repeat(4 * MIB)),
            }),
            c if CLASSES.contains(&c) => hoard(c, &params),
            _ => Err(TaskError {
                kind: ErrorKind::UnsupportedIntent,
                message: format!("hoarder does not serve {}", task.intent),
                retryable: false,
            }),
        }
    }
}

export!(Hoarder);
