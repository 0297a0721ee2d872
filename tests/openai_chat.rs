//! The openai-chat plugin end to end, against a fake OpenAI-compatible
//! backend on loopback: a working one, one that hangs, one that answers
//! garbage and one that fails.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use common::{Node, health, plugin, post_task, task};
use serde_json::{Value, json};

const CHAT: &str = "urn:iicp:intent:llm:chat:v1";

#[derive(Default)]
struct Seen {
    bodies: Vec<Value>,
    authorization: Vec<Option<String>>,
    traceparents: Vec<Option<String>>,
    /// The node's end of the connection each completion came on.
    peers: Vec<SocketAddr>,
}

type Shared = Arc<Mutex<Seen>>;

fn remember(seen: &Shared, headers: &HeaderMap, body: &Value) {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let mut seen = seen.lock().unwrap();
    seen.bodies.push(body.clone());
    seen.authorization.push(header("authorization"));
    seen.traceparents.push(header("traceparent"));
}

async fn working(
    State(seen): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> impl IntoResponse {
    let body: Value = serde_json::from_slice(&body).unwrap_or_default();
    remember(&seen, &headers, &body);
    seen.lock().unwrap().peers.push(peer);
    let last = body["messages"]
        .as_array()
        .and_then(|m| m.last())
        .cloned()
        .unwrap_or_default();
    let reply: String = last["content"]
        .as_str()
        .unwrap_or_default()
        .chars()
        .rev()
        .collect();
    let completion = json!({
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "fake-llm",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
    });
    (
        [("content-type", "application/json")],
        completion.to_string(),
    )
}

async fn backend() -> (SocketAddr, Shared) {
    let seen: Shared = Arc::default();
    let app = Router::new()
        .route("/ok/v1/chat/completions", post(working))
        .route(
            "/hang/v1/chat/completions",
            post(|| async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                "too late"
            }),
        )
        .route(
            "/long/v1/chat/completions",
            post(|| async {
                let content = "word ".repeat(1000);
                json!({
                    "object": "chat.completion",
                    "model": "fake-llm",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}]
                })
                .to_string()
            }),
        )
        .route(
            "/chunked/v1/chat/completions",
            post(|| async {
                // No content-length: the answer in three chunks, its end
                // known only when the stream ends.
                let parts = [
                    r#"{"object":"chat.completion","model":"fake-llm","#,
                    r#""choices":[{"index":0,"message":{"role":"assistant","#,
                    r#""content":"in pieces"},"finish_reason":"stop"}]}"#,
                ];
                let chunks = futures_util::stream::iter(
                    parts.map(|part| Ok::<_, std::convert::Infallible>(part.to_string())),
                );
                axum::body::Body::from_stream(chunks)
            }),
        )
        .route(
            "/garbage/v1/chat/completions",
            post(|| async { "<html>this is not a completion</html>" }),
        )
        .route(
            "/fail/v1/chat/completions",
            post(|| async {
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    r#"{"error":{"message":"model crashed"}}"#,
                )
            }),
        )
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, seen)
}

fn node_for(dir: &Path, addr: SocketAddr, mode: &str) -> Node {
    node_with(dir, addr, mode, "", "")
}

/// A node for backend `mode` with `limits` (TOML lines) in its plugin table
/// and `http_limits` in its `[plugin.http]`.
fn node_with(dir: &Path, addr: SocketAddr, mode: &str, limits: &str, http_limits: &str) -> Node {
    let config = dir.join(format!("{mode}.toml"));
    std::fs::write(
        &config,
        format!(
            r#"
[[plugin]]
id = "llm"
path = "{plugin}"
{limits}
[plugin.config]
base_url = "http://{addr}/{mode}"
model = "fake-llm"
[plugin.secrets]
api_key = "TEST_OPENAI_KEY"
[plugin.http]
allow = ["http://{addr}"]
{http_limits}
"#,
            plugin = plugin("openai-chat").display()
        ),
    )
    .unwrap();
    Node::start_config_env(&config, &[], &[("TEST_OPENAI_KEY", "sk-test-123")])
}

fn chat(id: &str, timeout_ms: u64) -> Value {
    let mut body = task(
        id,
        CHAT,
        json!({"messages": [{"role": "system", "content": "be kind"}, {"role": "user", "content": "hello backend"}], "temperature": 0.2}),
    );
    body["constraints"] = json!({"timeout_ms": timeout_ms, "max_tokens": 64});
    body
}

#[tokio::test(flavor = "multi_thread")]
async fn chat_goes_through_the_backend() {
    let (addr, seen) = backend().await;
    let dir = tempfile::tempdir().unwrap();
    let node = node_for(dir.path(), addr, "ok");
    let health = health(&node).await;
    assert_eq!(
        health["models"],
        json!(["fake-llm"]),
        "the plugin advertises the configured model"
    );

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let response = common::client()
        .post(node.url("/v1/task"))
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .json(&chat("llm-1", 10_000))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "success");
    assert_eq!(
        body["result"]["choices"][0]["message"]["content"],
        "dnekcab olleh"
    );
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18})
    );
    assert_eq!(body["model_used"], "fake-llm");
    assert_eq!(body["metrics"]["tokens_used"], 18);

    {
        let seen = seen.lock().unwrap();
        let sent = &seen.bodies[0];
        assert_eq!(sent["model"], "fake-llm");
        assert_eq!(sent["stream"], false);
        assert_eq!(sent["max_tokens"], 64);
        assert_eq!(sent["temperature"], 0.2);
        assert_eq!(sent["messages"][1]["content"], "hello backend");
        assert_eq!(seen.authorization[0].as_deref(), Some("Bearer sk-test-123"));
        assert!(
            seen.traceparents[0].as_deref().unwrap().contains(trace_id),
            "trace context reaches the backend"
        );
    }
    assert!(!node.log_text().contains("sk-test-123"));

    // A model this node does not serve is refused before any backend call.
    let mut other = chat("llm-2", 10_000);
    other["constraints"]["model"] = json!("gpt-9");
    let (status, _, body) = post_task(&node, &other).await;
    assert_eq!(status, 422, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("gpt-9"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hanging_backend_ends_at_the_task_deadline() {
    let (addr, _) = backend().await;
    let dir = tempfile::tempdir().unwrap();
    let node = node_for(dir.path(), addr, "hang");
    let started = Instant::now();
    let (status, _, body) = post_task(&node, &chat("hang", 800)).await;
    let took = started.elapsed();
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["error"]["code"], "task_timeout");
    assert!(
        took >= Duration::from_millis(700) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_and_failures_from_the_backend_are_clean_errors() {
    let (addr, _) = backend().await;
    let dir = tempfile::tempdir().unwrap();
    let garbage = node_for(dir.path(), addr, "garbage");
    let (status, _, body) = post_task(&garbage, &chat("g", 5000)).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["code"], "backend_error");
    assert_eq!(
        body["error"]["message"],
        "the model backend answered something that is not a chat completion"
    );

    let failing = node_for(dir.path(), addr, "fail");
    let (status, _, body) = post_task(&failing, &chat("f", 5000)).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(
        body["error"]["message"],
        "the model backend failed with HTTP 500: model crashed"
    );
    assert_eq!(body["error"]["retryable"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backend_outside_the_allow_list_is_refused() {
    let (addr, _) = backend().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("denied.toml");
    std::fs::write(
        &config,
        format!(
            "[[plugin]]\npath = \"{}\"\n[plugin.config]\nbase_url = \"http://{addr}/ok\"\nmodel = \"fake-llm\"\n",
            plugin("openai-chat").display()
        ),
    )
    .unwrap();
    let node = Node::start_config(&config, &[]);
    let (status, _, body) = post_task(&node, &chat("d", 5000)).await;
    assert_eq!(status, 502, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("not reachable") && message.contains("allow-list"),
        "{message}"
    );
    assert_eq!(body["error"]["retryable"], false);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_completion_above_max_output_kib_is_refused_and_the_node_keeps_serving() {
    let (addr, _) = backend().await;
    let dir = tempfile::tempdir().unwrap();
    // The long completion is ~5 KiB of JSON; 4 KiB is the plugin's cap.
    let node = node_with(dir.path(), addr, "long", "max_output_kib = 4", "");
    let (status, _, body) = post_task(&node, &chat("long", 5000)).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["code"], "backend_error");
    assert_eq!(
        body["error"]["message"],
        "plugin result exceeds the 4096-byte limit"
    );
    let (status, _, body) = post_task(&node, &chat("long-again", 5000)).await;
    assert_eq!(status, 502, "the node still answers: {body}");

    // Under the default cap (4 MiB) the same completion is served.
    let roomy = node_with(dir.path(), addr, "long", "", "");
    let (status, _, body) = post_task(&roomy, &chat("long-roomy", 5000)).await;
    assert_eq!(status, 200, "{body}");
}

/// Tasks one after another: how many backend connections the node opened.
async fn connections_for(http_limits: &str, mode_dir: &str) -> usize {
    let (addr, seen) = backend().await;
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path().join(mode_dir);
    std::fs::create_dir_all(&dir).unwrap();
    let node = node_with(&dir, addr, "ok", "", http_limits);
    for i in 0..3 {
        let (status, _, body) = post_task(&node, &chat(&format!("reuse-{i}"), 5000)).await;
        assert_eq!(status, 200, "{body}");
    }
    let peers = seen.lock().unwrap().peers.clone();
    assert_eq!(peers.len(), 3);
    peers
        .iter()
        .collect::<std::collections::BTreeSet<_>>()
        .len()
}

#[tokio::test(flavor = "multi_thread")]
async fn backend_connections_are_reused_across_fresh_instances_as_max_idle_connections_allows() {
    assert_eq!(
        connections_for("", "default").await,
        1,
        "by default, one kept connection serves every task in turn"
    );
    assert_eq!(
        connections_for("max_idle_connections = 0", "none").await,
        3,
        "with none kept, each task opens its own"
    );
}

/// The SDK writes a body above one blocking write (4 KiB) by `check-write`
/// and waits when the host's buffer is full (one 64 KiB chunk); it stops
/// reading an answer at its announced length, and reads one without a
/// length to its end.
#[tokio::test(flavor = "multi_thread")]
async fn long_requests_arrive_whole_and_answers_with_or_without_a_length_are_read_whole() {
    let (addr, seen) = backend().await;
    let dir = tempfile::tempdir().unwrap();
    let node = node_for(dir.path(), addr, "ok");
    // ~300 KiB: several host chunks, so the guest must wait for the send.
    let long: String = (0..30_000).map(|i| format!("w{:07} ", i)).collect();
    let mut body = chat("long-request", 10_000);
    body["payload"]["messages"][1]["content"] = json!(long);
    let (status, _, answer) = post_task(&node, &body).await;
    assert_eq!(status, 200, "{answer}");
    let reversed: String = long.chars().rev().collect();
    assert_eq!(
        answer["result"]["choices"][0]["message"]["content"], reversed,
        "the answer (with a content-length) is read whole"
    );
    assert_eq!(
        seen.lock().unwrap().bodies[0]["messages"][1]["content"],
        long,
        "the request body reached the backend whole"
    );

    let chunked = node_for(dir.path(), addr, "chunked");
    let (status, _, answer) = post_task(&chunked, &chat("chunked", 10_000)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["result"]["choices"][0]["message"]["content"],
        "in pieces"
    );
}
