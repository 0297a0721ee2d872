//! The native reference node for `bench/run`: the protocol SDK's own
//! `IicpNode` (crates.io `iicp-client =0.7.109`) serving `/v1/task` with an
//! in-process echo handler whose result equals the echo plugin's for
//! `urn:iicp:intent:llm:chat:v1`.
//!
//! With a third argument, the handler is the LLM gateway's instead: it
//! forwards the task to that OpenAI-compatible backend the way
//! `plugins/openai-chat` does (the payload with the model set, streaming
//! off, `max_tokens` from the constraints) through one client shared by all
//! tasks, and answers the backend's completion.
//!
//! Usage: `native-node LISTEN_ADDR MAX_CONCURRENT [BACKEND_BASE_URL MODEL]`

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

#[tokio::main]
async fn main() -> iicp_client::Result<()> {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:8020".to_string());
    let max_concurrent = args.next().and_then(|n| n.parse().ok()).unwrap_or(256);
    let backend = args.next().map(|base_url| Backend {
        // reqwest keeps every idle connection by default: one per task in flight.
        client: reqwest::Client::new(),
        endpoint: format!("{}/v1/chat/completions", base_url.trim_end_matches('/')),
        model: args.next().unwrap_or_else(|| "bench-llm".to_string()),
    });
    let mut config = NodeConfig::new("native-reference", format!("http://{listen}"), CHAT);
    config.model = Some(
        backend
            .as_ref()
            .map_or("echo", |b| b.model.as_str())
            .to_string(),
    );
    config.max_concurrent = max_concurrent;
    let node = IicpNode::new(config);
    match backend {
        None => {
            node.serve(
                |task| async move { echo(&task.payload).map_err(iicp_client::IicpError::Node) },
                &listen,
                None,
            )
            .await
        }
        Some(backend) => {
            let backend = std::sync::Arc::new(backend);
            node.serve(
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
            .await
        }
    }
}
