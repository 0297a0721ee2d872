//! What the relay tests (`tests/relay.rs`, `tests/relay_framed.rs`) share.

use std::time::Duration;

use serde_json::{Value, json};

use super::Node;
use super::cx::CHAT;

/// A loopback port free a moment ago (for a node that must come back on
/// the same port, or a second listener).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `{relay}/v1/relay-for/{worker_id}{path}`.
pub fn relay_for(relay: &Node, worker_id: &str, path: &str) -> String {
    relay.url(&format!("/v1/relay-for/{worker_id}{path}"))
}

/// A chat task the echo handlers answer with `text`.
pub fn echo_task(task_id: &str, text: &str) -> Value {
    super::task(
        task_id,
        CHAT,
        json!({"messages": [{"role": "user", "content": text}]}),
    )
}

/// Posts `body` to `url` with a `traceparent`, as a traced consumer does;
/// status, headers, JSON body.
pub async fn post_traced(url: String, body: &Value) -> (u16, reqwest::header::HeaderMap, Value) {
    let response = super::client()
        .post(url)
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .json(body)
        .send()
        .await
        .expect("the relay answers");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    let json = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{status}: {text}"));
    (status, headers, json)
}
