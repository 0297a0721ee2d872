//! The native reference node for `bench/run`: the protocol SDK's own
//! `IicpNode` (crates.io `iicp-client =0.7.109`) serving `/v1/task` with an
//! in-process echo handler whose result equals the echo plugin's for
//! `urn:iicp:intent:llm:chat:v1`.
//!
//! Usage: `native-node LISTEN_ADDR MAX_CONCURRENT`

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

#[tokio::main]
async fn main() -> iicp_client::Result<()> {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:8020".to_string());
    let max_concurrent = args.next().and_then(|n| n.parse().ok()).unwrap_or(256);
    let mut config = NodeConfig::new("native-reference", format!("http://{listen}"), CHAT);
    config.model = Some("echo".to_string());
    config.max_concurrent = max_concurrent;
    let node = IicpNode::new(config);
    node.serve(
        |task| async move { echo(&task.payload).map_err(iicp_client::IicpError::Node) },
        &listen,
        None,
    )
    .await
}
