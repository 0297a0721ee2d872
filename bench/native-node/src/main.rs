//! The native reference node for `bench/run`: the protocol SDK's own
//! `IicpNode` (crates.io `iicp-client =0.7.109`) serving `/v1/task` with an
//! in-process echo handler whose result equals the echo plugin's for
//! `urn:iicp:intent:llm:chat:v1` (after `payload.sleep_ms`, when set).
//!
//! Usage:
//! * `native-node LISTEN_ADDR MAX_CONCURRENT` — a node serving `/v1/task`;
//! * `native-node LISTEN_ADDR MAX_CONCURRENT BACKEND_BASE_URL [MODEL]` — the
//!   LLM gateway's handler instead of the echo: it forwards the task to that
//!   OpenAI-compatible backend the way `plugins/openai-chat` does (the
//!   payload with the model set, streaming off, `max_tokens` from the
//!   constraints) through one client shared by all tasks, and answers the
//!   backend's completion.
//! * `native-node relay LISTEN_ADDR ACCEPT_PORT` — the same node as a relay
//!   (`relay_capable`): HTTP long-poll binds on LISTEN_ADDR, native IICP
//!   framed binds on ACCEPT_PORT;
//! * `native-node worker LISTEN_ADDR WORKER_ID RELAY_HOST:ACCEPT_PORT` — the
//!   same node as a relay worker (`relay_worker_endpoint`), binding over the
//!   native framing. Its IICP-CX key lives under `$IICP_CX_KEY_DIR`; the
//!   node prints `cx_public_key=<json>` on stdout before it serves.

use iicp_client::node::{IicpNode, NodeConfig};
use serde_json::{json, Value};

const CHAT: &str = "urn:iicp:intent:llm:chat:v1";

fn word_count(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

fn text_of(message: &Value) -> String {
    match &message["content"] {
        Value::String(text) => text.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// Same result as `plugins/echo` for chat tasks.
fn echo(payload: &Value) -> Result<Value, String> {
    let messages = payload["messages"].as_array().cloned().unwrap_or_default();
    let reply = messages
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .map(text_of)
        .ok_or("payload.messages has no user message")?;
    let prompt_tokens: u64 = messages.iter().map(|m| word_count(&text_of(m))).sum();
    let completion_tokens = word_count(&reply);
    Ok(json!({
        "object": "chat.completion",
        "model": "echo",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens
        }
    }))
}

/// What the LLM-gateway handler needs: the backend and its model.
struct Backend {
    client: reqwest::Client,
    endpoint: String,
    model: String,
}

/// The openai-chat plugin's backend call, natively.
async fn complete(
    backend: &Backend,
    payload: &Value,
    max_tokens: Option<u32>,
) -> Result<Value, String> {
    let mut body = payload
        .as_object()
        .cloned()
        .ok_or("the payload is not an object")?;
    if !body.get("messages").is_some_and(Value::is_array) {
        return Err("payload.messages must be a list of chat messages".into());
    }
    body.insert("model".into(), Value::from(backend.model.as_str()));
    body.insert("stream".into(), Value::Bool(false));
    if let Some(max_tokens) = max_tokens {
        body.entry("max_tokens").or_insert(Value::from(max_tokens));
    }
    let response = backend
        .client
        .post(&backend.endpoint)
        .json(&body)
        .send()
        .await
        .map_err(|e| format!("the model backend failed: {e}"))?;
    if !response.status().is_success() {
        return Err(format!(
            "the model backend failed with HTTP {}",
            response.status()
        ));
    }
    let completion: Value = response
        .json()
        .await
        .map_err(|_| "the model backend answered something that is not a chat completion")?;
    if completion["choices"].as_array().is_none_or(Vec::is_empty) {
        return Err("the model backend answered a completion without choices".into());
    }
    Ok(completion)
}

/// A directory address that refuses at once: the reference worker
/// re-registers after each bind, and the tests run without a directory.
const NO_DIRECTORY: &str = "http://127.0.0.1:9";

fn config(node_id: &str, listen: &str) -> NodeConfig {
    let mut config = NodeConfig::new(node_id, format!("http://{listen}"), CHAT);
    config.model = Some("echo".to_string());
    config.directory_url = NO_DIRECTORY.to_string();
    config
}

fn usage() -> ! {
    eprintln!(
        "usage: native-node LISTEN_ADDR [MAX_CONCURRENT [BACKEND_BASE_URL [MODEL]]]\n       \
         native-node relay LISTEN_ADDR ACCEPT_PORT\n       \
         native-node worker LISTEN_ADDR WORKER_ID RELAY_HOST:ACCEPT_PORT"
    );
    std::process::exit(2)
}

#[tokio::main]
async fn main() -> iicp_client::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (listen, config) = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["relay", listen, accept_port] => {
            let mut config = config("native-relay", listen);
            config.relay_capable = true;
            config.relay_accept_port = accept_port.parse().unwrap_or_else(|_| usage());
            config.max_concurrent = 256;
            (listen.to_string(), config)
        }
        ["worker", listen, worker_id, relay] => {
            let mut config = config(worker_id, listen);
            config.relay_worker_endpoint = Some(relay.to_string());
            config.max_concurrent = 256;
            let (public, _) =
                iicp_client::confidentiality::load_or_create_node_cx_key(worker_id, "")?;
            println!("cx_public_key={}", serde_json::to_string(&public)?);
            (listen.to_string(), config)
        }
        [listen, ..] if args.len() <= 4 => {
            let mut config = config("native-reference", listen);
            config.max_concurrent = args.get(1).and_then(|n| n.parse().ok()).unwrap_or(256);
            (listen.to_string(), config)
        }
        [] => (
            "127.0.0.1:8020".to_string(),
            config("native-reference", "127.0.0.1:8020"),
        ),
        _ => usage(),
    };
    let backend = match args.first().map(String::as_str) {
        Some("relay" | "worker") => None,
        _ => args.get(2).map(|base_url| Backend {
            // reqwest keeps every idle connection by default: one per task in flight.
            client: reqwest::Client::new(),
            endpoint: format!("{}/v1/chat/completions", base_url.trim_end_matches('/')),
            model: args
                .get(3)
                .cloned()
                .unwrap_or_else(|| "bench-llm".to_string()),
        }),
    };
    let mut config = config;
    if let Some(backend) = &backend {
        config.model = Some(backend.model.clone());
    }
    let node = IicpNode::new(config);
    if let Some(backend) = backend {
        let backend = std::sync::Arc::new(backend);
        return node
            .serve(
                move |task| {
                    let backend = backend.clone();
                    async move {
                        let max_tokens = task
                            .constraints
                            .as_ref()
                            .and_then(|c| c["max_tokens"].as_u64())
                            .and_then(|n| u32::try_from(n).ok());
                        complete(&backend, &task.payload, max_tokens)
                            .await
                            .map_err(iicp_client::IicpError::Node)
                    }
                },
                &listen,
                None,
            )
            .await;
    }
    node.serve(
        |task| async move {
            // Tests hold tasks on the worker with `payload.sleep_ms`.
            if let Some(ms) = task.payload["sleep_ms"].as_u64() {
                tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            }
            echo(&task.payload).map_err(iicp_client::IicpError::Node)
        },
        &listen,
        None,
    )
    .await
}
