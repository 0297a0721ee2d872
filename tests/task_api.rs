//! The task API over real sockets with the echo and misbehave plugins:
//! validation, replay protection, trace propagation, health and metrics.
//! The echo's own answers (chat shape, raw echo, no user message) are
//! checked in `polyglot.rs`, against the Rust, Python and JS echoes alike.

mod common;

use common::{
    Node, chunked_task_request, client, error_of, health, metrics, plugin, post_task, raw_http,
    task,
};
use serde_json::{Value, json};

const CHAT: &str = "urn:iicp:intent:llm:chat:v1";
const ECHO: &str = "urn:iicp:intent:util:echo:v1";
const INSPECT: &str = "urn:iicp:intent:test:inspect:v1";

fn echo_node() -> Node {
    Node::start(&plugin("echo"), &[])
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_intent_is_refused_in_the_envelope() {
    let node = echo_node();
    let (status, _, body) = post_task(
        &node,
        &task("u-1", "urn:iicp:intent:llm:embedding:v1", json!({})),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    let error = error_of(&body);
    assert_eq!(error["code"], "unknown_intent");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("urn:iicp:intent:llm:embedding:v1")
    );
}

async fn raw_post(node: &Node, body: impl Into<reqwest::Body>) -> (u16, Value) {
    let response = client()
        .post(node.url("/v1/task"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let json =
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("non-JSON error body: {text}"));
    (status, json)
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_and_incomplete_bodies_get_422_envelopes() {
    let node = echo_node();
    let cases: Vec<(&str, &str)> = vec![
        ("{not json", "invalid task body"),
        (r#"{"intent":"urn:iicp:intent:util:echo:v1"}"#, "task_id"),
        (r#"{"task_id":"t"}"#, "intent"),
        (
            r#"{"task_id":"t","intent":"urn:iicp:intent:util:echo:v1","constraints":{"timeout_ms":50}}"#,
            "timeout_ms",
        ),
        (
            r#"{"task_id":"t","intent":"urn:iicp:intent:util:echo:v1","constraints":{"timeout_ms":300001}}"#,
            "timeout_ms",
        ),
        (
            r#"{"task_id":"t","intent":"urn:iicp:intent:util:echo:v1","constraints":{"qos":"urgent"}}"#,
            "qos",
        ),
        (r#"[1,2,3]"#, "invalid task body"),
        ("", "invalid task body"),
    ];
    for (body, expected) in cases {
        let (status, json) = raw_post(&node, body.to_string()).await;
        assert_eq!(status, 422, "{body} -> {json}");
        let error = error_of(&json);
        assert_eq!(error["code"], "validation_error");
        let message = error["message"].as_str().unwrap();
        assert!(message.contains(expected), "{body}: {message}");
        assert!(
            !message.contains("/src/") && !message.contains(".rs"),
            "leaks paths: {message}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bodies_over_the_limit_get_413() {
    let node = Node::start(&plugin("echo"), &["--max-body-bytes", "2048"]);
    let big = format!(
        r#"{{"task_id":"t","intent":"{ECHO}","payload":"{}"}}"#,
        "x".repeat(4096)
    );
    let (status, json) = raw_post(&node, big.clone()).await;
    assert_eq!(status, 413, "{json}");
    assert_eq!(error_of(&json)["code"], "payload_too_large");

    // Without a Content-Length (chunked), the limit holds while reading.
    let (status, text) = raw_http(&node.addr, &chunked_task_request(big.as_bytes())).await;
    assert_eq!(status, 413, "{text}");
    assert!(text.contains(r#""code":"payload_too_large""#), "{text}");

    // The default limit is 1 MiB.
    let default_node = echo_node();
    let over = format!(
        r#"{{"task_id":"t","intent":"{ECHO}","payload":"{}"}}"#,
        "x".repeat(1 << 20)
    );
    let (status, _) = raw_post(&default_node, over).await;
    assert_eq!(status, 413);
    let (status, _, _) = post_task(&node, &task("small", ECHO, json!("ok"))).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replayed_nonce_gets_409_and_a_fresh_one_passes() {
    let node = echo_node();
    let mut body = task("n-1", ECHO, json!(1));
    body["nonce"] = json!("nonce-abc-123");
    let (status, _, first) = post_task(&node, &body).await;
    assert_eq!(status, 200, "{first}");
    body["task_id"] = json!("n-2");
    let (status, _, replay) = post_task(&node, &body).await;
    assert_eq!(status, 409, "{replay}");
    let error = error_of(&replay);
    assert_eq!(error["code"], "IICP-E011");
    assert_eq!(error["message"], "replay_detected");
    body["nonce"] = json!("nonce-abc-124");
    let (status, _, _) = post_task(&node, &body).await;
    assert_eq!(status, 200);
    let text = metrics(&node).await;
    assert!(text.contains("iicp_nonce_replays_total 1"), "{text}");
    assert!(text.contains("iicp_nonce_cache_entries 2"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn nonce_cache_at_its_cap_refuses_new_nonces_but_never_accepts_replays() {
    let node = Node::start(&plugin("echo"), &["--nonce-cache-capacity", "2"]);
    for (i, nonce) in ["a", "b"].iter().enumerate() {
        let mut body = task(&format!("c-{i}"), ECHO, json!(i));
        body["nonce"] = json!(nonce);
        assert_eq!(post_task(&node, &body).await.0, 200);
    }
    let mut body = task("c-3", ECHO, json!(3));
    body["nonce"] = json!("c");
    let (status, headers, json) = post_task(&node, &body).await;
    assert_eq!(status, 503, "{json}");
    assert_eq!(error_of(&json)["code"], "nonce_cache_full");
    assert!(headers.contains_key("retry-after"));
    body["nonce"] = json!("a");
    assert_eq!(post_task(&node, &body).await.0, 409);
    // Tasks without a nonce are unaffected.
    assert_eq!(post_task(&node, &task("c-4", ECHO, json!(4))).await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn trace_context_flows_in_and_out() {
    let node = Node::start(&plugin("misbehave"), &[]);
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let response = client()
        .post(node.url("/v1/task"))
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .header("tracestate", "vendor=opaque,other=1")
        .json(&task("tr-1", INSPECT, json!({"k": "v"})))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-iicp-trace-id"], trace_id);
    let body: Value = response.json().await.unwrap();
    let seen = &body["result"];
    let traceparent = seen["traceparent"].as_str().unwrap();
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    assert_eq!(parts[0], "00");
    assert_eq!(parts[1], trace_id);
    assert_eq!(parts[2].len(), 16);
    assert_ne!(
        parts[2], "00f067aa0ba902b7",
        "the plugin's parent must be the node's span"
    );
    assert_eq!(parts[3], "01");
    assert_eq!(seen["tracestate"], "vendor=opaque,other=1");

    // No traceparent: a new trace id is answered and handed to the plugin.
    let (status, headers, body) = post_task(&node, &task("tr-2", INSPECT, json!(null))).await;
    assert_eq!(status, 200);
    let new_id = headers["x-iicp-trace-id"].to_str().unwrap().to_string();
    assert_eq!(new_id.len(), 32);
    assert!(new_id.bytes().all(|b| b.is_ascii_hexdigit()));
    assert!(
        body["result"]["traceparent"]
            .as_str()
            .unwrap()
            .contains(&new_id)
    );
    assert!(body["result"]["tracestate"].is_null());

    // An invalid traceparent starts a new trace rather than failing the task.
    let response = client()
        .post(node.url("/v1/task"))
        .header("traceparent", "00-zzzz-00f067aa0ba902b7-01")
        .json(&task("tr-3", INSPECT, json!(null)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-iicp-trace-id"].len(), 32);

    // Errors carry the trace id too.
    let response = client()
        .post(node.url("/v1/task"))
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .body("{broken")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422);
    assert_eq!(response.headers()["x-iicp-trace-id"], trace_id);
}

#[tokio::test(flavor = "multi_thread")]
async fn task_spans_carry_task_id_and_intent() {
    let node = Node::start_with_log_filter(&plugin("misbehave"), &[], "info,iicp_host=debug");
    let intent = "urn:iicp:intent:test:log-flood:v1";
    let (status, _, _) = post_task(&node, &task("span-1", intent, json!({"lines": 1}))).await;
    assert_eq!(status, 200);
    let in_span = |name: &'static str| {
        move |entry: &Value| {
            entry["spans"].as_array().is_some_and(|spans| {
                spans.iter().any(|span| {
                    span["name"] == name
                        && span["iicp.task_id"] == "span-1"
                        && span["iicp.intent"] == intent
                })
            })
        }
    };
    let timeout = std::time::Duration::from_secs(5);
    assert!(
        node.wait_for_log(timeout, in_span("iicp.task.validate"))
            .is_some(),
        "{}",
        node.log_text()
    );
    let plugin_line = node
        .wait_for_log(timeout, in_span("iicp.task.execute"))
        .expect("plugin log in execute span");
    assert_eq!(plugin_line["target"], "plugin");
    assert_eq!(plugin_line["fields"]["task_id"], "span-1");
    assert_eq!(plugin_line["fields"]["plugin"], "misbehave");
}

#[tokio::test(flavor = "multi_thread")]
async fn constraints_reach_the_plugin() {
    let node = Node::start(&plugin("misbehave"), &["--timeout-ms", "7000"]);
    let mut body = task("cons-1", INSPECT, json!({"a": [1, 2]}));
    body["constraints"] =
        json!({"timeout_ms": 1500, "max_tokens": 64, "model": "m-1", "qos": "batch"});
    let (status, _, json) = post_task(&node, &body).await;
    assert_eq!(status, 200, "{json}");
    let seen = &json["result"];
    assert_eq!(seen["task_id"], "cons-1");
    assert_eq!(seen["intent"], INSPECT);
    assert_eq!(seen["payload"], r#"{"a":[1,2]}"#);
    assert_eq!(seen["timeout_ms"], 1500);
    assert_eq!(seen["max_tokens"], 64);
    assert_eq!(seen["model"], "m-1");
    assert_eq!(seen["qos"], "batch");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let deadline = seen["deadline_unix_ms"].as_u64().unwrap();
    assert!(
        deadline > now_ms.saturating_sub(1500) && deadline <= now_ms + 1500,
        "{deadline} vs {now_ms}"
    );

    // Without constraints the node's default timeout applies.
    let (_, _, json) = post_task(&node, &task("cons-2", INSPECT, json!(null))).await;
    assert_eq!(json["result"]["timeout_ms"], 7000);
    assert_eq!(json["result"]["qos"], "interactive");
    assert_eq!(json["result"]["payload"], "null");
}

#[tokio::test(flavor = "multi_thread")]
async fn health_reports_identity_load_and_what_is_served() {
    let node = Node::start(
        &plugin("echo"),
        &[
            "--node-id",
            "node-under-test",
            "--region",
            "eu-test",
            "--max-concurrent",
            "7",
        ],
    );
    let response = client().get(node.url("/iicp/health")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let health: Value = response.json().await.unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["node_id"], "node-under-test");
    assert_eq!(health["region"], "eu-test");
    assert_eq!(health["load"], 0.0);
    assert_eq!(health["active_jobs"], 0);
    assert_eq!(health["max_concurrent"], 7);
    assert_eq!(health["available"], true);
    assert_eq!(health["model"], "echo");
    assert_eq!(health["models"], json!(["echo"]));
    assert_eq!(health["intents"], json!([CHAT, ECHO]));
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_expose_tasks_latency_tokens_and_instantiation() {
    let node = echo_node();
    let chat = json!({"messages": [{"role": "user", "content": "one two three"}]});
    for i in 0..3 {
        assert_eq!(
            post_task(&node, &task(&format!("m-{i}"), CHAT, chat.clone()))
                .await
                .0,
            200
        );
    }
    let response = client().get(node.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = response.text().await.unwrap();
    let expect = [
        format!(r#"iicp_tasks_total{{intent="{CHAT}",plugin="echo",status="success"}} 3"#),
        format!(r#"iicp_tokens_used_total{{intent="{CHAT}",plugin="echo"}} 18"#),
        format!(r#"iicp_task_latency_ms_bucket{{intent="{CHAT}",plugin="echo",le="30000"}} 3"#),
        format!(r#"iicp_task_latency_ms_count{{intent="{CHAT}",plugin="echo"}} 3"#),
        r#"iicp_plugin_instantiation_seconds_count{plugin="echo"} 3"#.to_string(),
        "iicp_active_jobs 0".to_string(),
        "iicp_nonce_cache_entries 0".to_string(),
    ];
    for line in expect {
        assert!(text.contains(&line), "missing {line} in\n{text}");
    }
    // The default 32 slots, or fewer the node sized for a smaller machine.
    let slots = text
        .lines()
        .find_map(|line| line.strip_prefix("iicp_max_concurrent "))
        .unwrap_or_else(|| panic!("no iicp_max_concurrent in\n{text}"));
    assert!((1..=32).contains(&slots.parse::<u32>().unwrap()), "{slots}");
    assert!(text.contains(&format!(
        "iicp_memory_setting{{setting=\"max_concurrent\"}} {slots}"
    )));
    for bucket in [
        "10", "50", "100", "250", "500", "1000", "2500", "5000", "30000",
    ] {
        assert!(
            text.contains(&format!(r#"le="{bucket}""#)),
            "bucket {bucket} missing"
        );
    }
    assert!(text.contains("# TYPE iicp_capacity_rejections_total counter"));
    assert!(health(&node).await["active_jobs"] == 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_routes_and_methods_use_the_envelope() {
    let node = echo_node();
    let response = client().get(node.url("/v2/nothing")).send().await.unwrap();
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(error_of(&body)["code"], "not_found");
    let response = client().get(node.url("/v1/task")).send().await.unwrap();
    assert_eq!(response.status(), 405);
    let body: Value = response.json().await.unwrap();
    assert_eq!(error_of(&body)["code"], "method_not_allowed");
}
