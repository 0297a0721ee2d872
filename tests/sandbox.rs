//! Misbehaving plugins are stopped with structured errors and the node keeps
//! serving: endless loop, memory bomb, deep recursion, trap, oversized and
//! invalid output, log flood, and every typed plugin error.

mod common;

use std::time::{Duration, Instant};

use common::{Node, error_of, message, metrics, plugin, post_task, task};
use serde_json::{Value, json};

fn intent(case: &str) -> String {
    format!("urn:iicp:intent:test:{case}:v1")
}

fn misbehave_node(extra: &[&str]) -> Node {
    Node::start(&plugin("misbehave"), extra)
}

/// Asserts that an ordinary task still succeeds on `node`.
async fn still_serves(node: &Node) {
    let (status, _, body) = post_task(
        node,
        &task("after", &intent("ok"), json!({"still": "here"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"], json!({"still": "here"}));
}

async fn run_case(node: &Node, case: &str, payload: Value, timeout_ms: u64) -> (u16, Value) {
    let mut body = task(&format!("case-{case}"), &intent(case), payload);
    body["constraints"] = json!({"timeout_ms": timeout_ms});
    let (status, _, json) = post_task(node, &body).await;
    (status, json)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_endless_loop_times_out_near_its_deadline() {
    let node = misbehave_node(&[]);
    let started = Instant::now();
    let (status, body) = run_case(&node, "loop", json!(null), 500).await;
    let took = started.elapsed();
    assert_eq!(status, 504, "{body}");
    assert_eq!(error_of(&body)["code"], "task_timeout");
    assert_eq!(body["status"], "timeout");
    assert_eq!(body["task_id"], "case-loop");
    // Never before the deadline; how long after it depends on the load of
    // the machine, so only the timeout itself is asserted.
    assert!(
        took >= Duration::from_millis(480),
        "stopped too early: {took:?}"
    );
    still_serves(&node).await;
    let text = metrics(&node).await;
    assert!(
        text.contains(r#"iicp_plugin_traps_total{kind="timeout",plugin="misbehave"} 1"#),
        "{text}"
    );
    assert!(text.contains(&format!(
        r#"iicp_tasks_total{{intent="{}",plugin="misbehave",status="timeout"}} 1"#,
        intent("loop")
    )));
}

#[tokio::test(flavor = "multi_thread")]
async fn other_tasks_run_while_a_loop_burns_cpu() {
    let node = misbehave_node(&[]);
    let mut body = task("spinner", &intent("loop"), json!(null));
    body["constraints"] = json!({"timeout_ms": 8000});
    let looping = common::spawn_post(node.url("/v1/task"), body);
    common::wait_active(&node, 1, Duration::from_secs(30)).await;
    // Served while the loop still spins: not starved by it.
    for _ in 0..5 {
        still_serves(&node).await;
    }
    assert!(
        !looping.is_finished(),
        "the loop ended before the others ran"
    );
    assert_eq!(looping.await.unwrap(), 504);
}

#[tokio::test(flavor = "multi_thread")]
async fn waiting_in_a_host_call_past_the_deadline_times_out() {
    let node = misbehave_node(&[]);
    let started = Instant::now();
    let (status, body) = run_case(&node, "sleep", json!({"ms": 10_000}), 300).await;
    assert_eq!(status, 504, "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "waited out the plugin's sleep instead of the deadline"
    );
    still_serves(&node).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_memory_bomb_hits_its_cap() {
    let node = misbehave_node(&["--memory-mb", "32"]);
    let (status, body) = run_case(&node, "memory-bomb", json!(null), 10_000).await;
    assert_eq!(status, 502, "{body}");
    let error = error_of(&body);
    assert_eq!(error["code"], "backend_error");
    assert_eq!(
        error["message"],
        "plugin exceeded its memory limit of 32 MiB"
    );
    assert_eq!(error["retryable"], false);
    still_serves(&node).await;
    let text = metrics(&node).await;
    assert!(
        text.contains(r#"iicp_plugin_traps_total{kind="memory_limit",plugin="misbehave"} 1"#),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn deep_recursion_is_stopped() {
    let node = misbehave_node(&[]);
    let (status, body) = run_case(&node, "recursion", json!(null), 10_000).await;
    assert_eq!(status, 502, "{body}");
    let error = error_of(&body);
    assert_eq!(error["code"], "backend_error");
    let text = error["message"].as_str().unwrap();
    assert!(text.contains("stack") || text.contains("crashed"), "{text}");
    still_serves(&node).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trap_is_a_backend_error_with_its_kind() {
    let node = misbehave_node(&[]);
    let (status, body) = run_case(&node, "trap", json!(null), 10_000).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(error_of(&body)["message"], "plugin crashed (unreachable)");
    still_serves(&node).await;
    let text = metrics(&node).await;
    assert!(
        text.contains(r#"iicp_plugin_traps_total{kind="unreachable",plugin="misbehave"} 1"#),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_and_non_json_results_are_refused() {
    let node = misbehave_node(&[]);
    let (status, body) = run_case(&node, "big-output", json!({"bytes": 5 << 20}), 10_000).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(
        error_of(&body)["message"],
        "plugin result exceeds the 4194304-byte limit"
    );
    let (status, body) = run_case(&node, "big-output", json!({"bytes": 1000}), 10_000).await;
    assert_eq!(status, 200);
    assert_eq!(body["result"].as_str().unwrap().len(), 1000);
    let (status, body) = run_case(&node, "invalid-json", json!(null), 10_000).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(
        error_of(&body)["message"],
        "plugin returned a result that is not JSON"
    );
    still_serves(&node).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_log_flood_is_capped_and_counted() {
    let node = misbehave_node(&[]);
    // Each of the 5000 iterations writes one log line, one stdout and one stderr line.
    let (status, body) = run_case(&node, "log-flood", json!({"lines": 5000}), 60_000).await;
    assert_eq!(status, 200, "{body}");
    let summary = node
        .wait_for_log(Duration::from_secs(10), |e| {
            message(e) == "plugin log budget exhausted; lines dropped"
        })
        .expect("budget summary line");
    assert_eq!(summary["fields"]["dropped"], 15_000 - 200);
    let kept = node
        .log_entries()
        .iter()
        .filter(|e| e["target"] == "plugin" && e["fields"]["task_id"] == "case-log-flood")
        .count();
    // 200 budgeted lines plus the summary.
    assert_eq!(kept, 201);
    let text = metrics(&node).await;
    assert!(
        text.contains(r#"iicp_plugin_log_lines_dropped_total{plugin="misbehave"} 14800"#),
        "{text}"
    );
    still_serves(&node).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn typed_plugin_errors_map_to_protocol_codes() {
    let node = misbehave_node(&[]);
    let cases = [
        ("invalid-input", 422, "validation_error"),
        ("unsupported-intent", 404, "unknown_intent"),
        ("backend-failure", 502, "backend_error"),
        ("unavailable", 503, "unavailable"),
        ("timeout", 504, "task_timeout"),
        ("internal", 500, "internal_error"),
    ];
    for (kind, http, code) in cases {
        let payload =
            json!({"kind": kind, "message": format!("{kind} happened"), "retryable": true});
        let (status, body) = run_case(&node, "fail", payload, 10_000).await;
        assert_eq!(status, http, "{kind}: {body}");
        let error = error_of(&body);
        assert_eq!(error["code"], code, "{kind}");
        assert_eq!(error["retryable"], true, "{kind}");
        assert_eq!(body["task_id"], "case-fail");
    }
    let (_, body) = run_case(
        &node,
        "fail",
        json!({"kind": "backend-failure", "message": "db down", "retryable": false}),
        10_000,
    )
    .await;
    assert_eq!(body["error"]["message"], "db down");
    assert_eq!(body["error"]["retryable"], false);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_reaches_no_env_files_or_network() {
    let node = misbehave_node(&[]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (status, body) = run_case(&node, "escape", json!({"port": port}), 10_000).await;
    assert_eq!(status, 200, "{body}");
    let report = &body["result"];
    assert_eq!(report["env_vars"], 0, "{report}");
    assert_eq!(report["args"], 0, "{report}");
    for attempt in [
        "read_file",
        "list_root",
        "tcp_connect",
        "dns_lookup",
        "http_request",
    ] {
        let outcome = report[attempt].as_str().unwrap();
        assert!(outcome.starts_with("denied"), "{attempt}: {outcome}");
    }
    // The task is over: any connection it made is already in the backlog.
    let accepted = tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
    assert!(accepted.is_err(), "the plugin opened a TCP connection");
}

async fn counter(node: &Node) -> u64 {
    let (status, body) = run_case(node, "counter", json!(null), 10_000).await;
    assert_eq!(status, 200, "{body}");
    body["result"]["calls"].as_u64().unwrap()
}

/// Bytes of misbehave's initialised static that an earlier task changed, as
/// the task sees them before it changes 40 scattered pages of it again.
async fn scribbled_bytes(node: &Node) -> u64 {
    let (status, body) = run_case(node, "scribble", json!(null), 10_000).await;
    assert_eq!(status, 200, "{body}");
    body["result"]["changed_bytes"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fresh_instance_starts_from_the_pristine_memory_image() {
    // One task at a time: each fresh instance takes the pool slot the last
    // one dirtied, with more scattered dirty pages than one reset scan holds.
    let node = misbehave_node(&[]);
    for _ in 0..4 {
        assert_eq!(scribbled_bytes(&node).await, 0);
    }
    // The check sees writes when they are there: a reused instance does.
    let reused = misbehave_node(&["--instance-reuse", "2"]);
    assert_eq!(scribbled_bytes(&reused).await, 0);
    assert_eq!(scribbled_bytes(&reused).await, 40 * 64);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_task_gets_a_fresh_instance_by_default() {
    let node = misbehave_node(&[]);
    for _ in 0..5 {
        assert_eq!(
            counter(&node).await,
            1,
            "a task saw an earlier task's state"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn opt_in_reuse_is_bounded_and_drops_trapped_instances() {
    let node = misbehave_node(&["--instance-reuse", "3"]);
    let calls: Vec<u64> = {
        let mut calls = Vec::new();
        for _ in 0..5 {
            calls.push(counter(&node).await);
        }
        calls
    };
    assert_eq!(
        calls,
        vec![1, 2, 3, 1, 2],
        "each instance serves at most 3 tasks"
    );
    // The instance that served two tasks traps on the third; it must not come back.
    let (status, _) = run_case(&node, "trap", json!(null), 10_000).await;
    assert_eq!(status, 502);
    assert_eq!(counter(&node).await, 1);
    // A typed plugin error does not poison the instance, and counts as a use.
    let (status, _) = run_case(&node, "fail", json!({"kind": "backend-failure"}), 10_000).await;
    assert_eq!(status, 502);
    assert_eq!(counter(&node).await, 2);
    assert_eq!(
        counter(&node).await,
        1,
        "the instance had served its 3 tasks"
    );
}
