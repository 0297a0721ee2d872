//! Relaying end to end over real sockets (`protocol.md` §7): a worker that
//! consumers never contact directly serves plain and IICP-CX tasks through
//! a relay node; a worker killed mid-load leaves no consumer hanging; a
//! restarted relay gets its worker back; every relay limit answers with the
//! protocol's error; bind tickets come from the directory when the relay
//! requires them. The real NAT (inbound dropped) is shown by
//! `reach/netns-demo`; here consumers only ever hold the relay's address.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::cx::{CHAT, chat_content, encrypted_task, open_response};
use common::fake_directory::{FakeDirectory, relay_bind_ticket};
use common::relaying::{echo_task, free_port, post_traced, relay_for};
use common::wait_until;
use common::{
    Node, client, echo_config, error_of, fresh_state_dir, message, metric_value, metrics, plugin,
    task,
};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

const WAIT: Duration = Duration::from_secs(30);
const SLEEP: &str = "urn:iicp:intent:test:sleep:v1";

/// A relay-capable node serving echo, with `[relay_capable]` set to `table`.
fn relay_config(table: &str) -> PathBuf {
    echo_config(&format!("[relay_capable]\naccept_port = 0\n{table}"))
}

/// A worker serving `plugin_name` through `relay` as `worker_id`.
fn worker(relay: &Node, plugin_name: &str, worker_id: &str, extra: &[&str]) -> Node {
    let relay_url = format!("http://{}", relay.addr);
    let mut args = vec!["--relay", &relay_url, "--node-id", worker_id];
    args.extend_from_slice(extra);
    let node = Node::start(&plugin(plugin_name), &args);
    wait_bound(&node);
    node
}

fn wait_bound(node: &Node) -> Value {
    node.wait_for_log(WAIT, |e| message(e).starts_with("bound to the relay"))
        .unwrap_or_else(|| panic!("worker never bound; log:\n{}", node.log_text()))
}

/// Posts a task through the relay; status, headers, JSON body.
async fn relayed(
    relay: &Node,
    worker_id: &str,
    body: &Value,
) -> (u16, reqwest::header::HeaderMap, Value) {
    post_traced(relay_for(relay, worker_id, "/v1/task"), body).await
}

fn sleep_task(task_id: &str, ms: u64, timeout_ms: u64) -> Value {
    let mut body = task(task_id, SLEEP, json!({"ms": ms}));
    body["constraints"] = json!({"timeout_ms": timeout_ms});
    body
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_serves_plain_and_encrypted_tasks_through_the_relay() {
    let relay = Node::start(
        &plugin("echo"),
        &["--relay-capable", "--relay-accept-port", "0"],
    );
    let fake = FakeDirectory::start().await;
    let directory = fake.url();
    let worker = worker(&relay, "echo", "w-nat-1", &["--directory", &directory]);

    // The directory lists the relay-for endpoint, with the transport fields
    // that spare it a probe of an address nobody can reach.
    let register = fake.registrations(1, WAIT).await.remove(0);
    assert_eq!(
        register["endpoint"],
        format!("http://{}/v1/relay-for/w-nat-1", relay.addr)
    );
    assert_eq!(register["transport_method"], "turn_relay");
    assert_eq!(register["nat_type"], "symmetric");
    assert_eq!(register["exposure_mode"], "relay_required");
    assert_eq!(
        register["transport_metadata"]["relay_url"],
        format!("http://{}", relay.addr)
    );
    assert!(register.get("relay_capable").is_none(), "{register}");

    let health: Value = client()
        .get(relay_for(&relay, "w-nat-1", "/iicp/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["via_relay"], true);
    assert_eq!(health["node_id"], "w-nat-1");

    // Plain: the worker's own answer, trace included.
    let (status, headers, body) = relayed(&relay, "w-nat-1", &echo_task("r-1", "hi")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["task_id"], "r-1");
    assert_eq!(body["status"], "success");
    assert_eq!(chat_content(&body), "hi");
    assert!(body["metrics"]["latency_ms"].is_u64(), "{body}");
    assert_eq!(
        headers["x-iicp-trace-id"],
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    assert_eq!(headers["access-control-allow-origin"], "*");

    // IICP-CX: sealed for the worker's advertised key; the relay only ever
    // carries ciphertext.
    let secret = "only the worker may read this";
    let (sealed_task, shared) = encrypted_task(
        &register["cx_public_key"],
        "r-cx",
        &json!({"messages": [{"role": "user", "content": secret}]}),
    );
    let (status, _, sealed) = relayed(&relay, "w-nat-1", &sealed_task).await;
    assert_eq!(status, 200, "{sealed}");
    assert!(!sealed.to_string().contains(secret));
    assert_eq!(
        chat_content(&open_response(&sealed, &shared, "r-cx")),
        secret
    );

    // The worker's own refusals come back as they are (here: a replay).
    let mut nonced = echo_task("r-2", "once");
    nonced["nonce"] = json!("relay-nonce-1");
    assert_eq!(relayed(&relay, "w-nat-1", &nonced).await.0, 200);
    nonced["task_id"] = json!("r-3");
    let (status, _, replay) = relayed(&relay, "w-nat-1", &nonced).await;
    assert_eq!(status, 409, "{replay}");
    assert_eq!(error_of(&replay)["code"], "IICP-E011");

    // Browser consumers: the relay-for routes answer preflights.
    let preflight = client()
        .request(
            reqwest::Method::OPTIONS,
            relay_for(&relay, "w-nat-1", "/v1/task"),
        )
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success());
    assert_eq!(preflight.headers()["access-control-allow-origin"], "*");

    let relay_metrics = metrics(&relay).await;
    assert_eq!(metric_value(&relay_metrics, "iicp_relay_sessions "), 1.0);
    assert_eq!(
        metric_value(
            &relay_metrics,
            r#"iicp_relay_tasks_total{outcome="answered"}"#
        ),
        4.0
    );
    assert!(
        metric_value(
            &relay_metrics,
            r#"iicp_relay_bytes_total{direction="to_worker"}"#
        ) > 0.0
    );
    assert_eq!(metric_value(&relay_metrics, "iicp_relay_held_bytes "), 0.0);
    let worker_metrics = metrics(&worker).await;
    assert_eq!(
        metric_value(&worker_metrics, "iicp_relay_worker_bound "),
        1.0
    );
    // The worker counts a task once the relay has taken its answer, which
    // may be just after the relay answered the consumer: waited on.
    common::wait_for_sample(
        &worker,
        r#"iicp_relay_worker_tasks_total{result="answered"}"#,
        WAIT,
        |answered| answered == 4.0,
    )
    .await;
}

/// A hop between the consumer and the relay, as a hostile network path
/// would be: it deletes `cx_response_encryption` from every CALL, forwards
/// it to `upstream` and keeps the answer it carried back.
struct StrippingHop {
    url: String,
    carried: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

async fn stripping_hop(upstream: String) -> StrippingHop {
    use axum::body::Bytes;
    use axum::extract::State;
    use axum::http::StatusCode;

    type Carried = std::sync::Arc<std::sync::Mutex<Vec<String>>>;
    async fn forward(
        State((upstream, carried)): State<(String, Carried)>,
        body: Bytes,
    ) -> (StatusCode, String) {
        let mut call: Value = serde_json::from_slice(&body).unwrap();
        call.as_object_mut()
            .unwrap()
            .remove("cx_response_encryption");
        let response = client().post(&upstream).json(&call).send().await.unwrap();
        let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
        let text = response.text().await.unwrap();
        carried.lock().unwrap().push(text.clone());
        (status, text)
    }

    let carried = Carried::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1/task", listener.local_addr().unwrap());
    let app = axum::Router::new()
        .route("/v1/task", axum::routing::post(forward))
        .with_state((upstream, carried.clone()));
    tokio::spawn(async move { axum::serve(listener, app).await });
    StrippingHop { url, carried }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hop_stripping_the_response_encryption_request_carries_only_ciphertext() {
    let relay = Node::start(
        &plugin("echo"),
        &["--relay-capable", "--relay-accept-port", "0"],
    );
    let fake = FakeDirectory::start().await;
    let directory = fake.url();
    let _worker = worker(&relay, "echo", "w-strip", &["--directory", &directory]);
    let register = fake.registrations(1, WAIT).await.remove(0);
    let hop = stripping_hop(relay_for(&relay, "w-strip", "/v1/task")).await;

    let secret = "neither the hop nor the relay may read this";
    let (sealed_task, shared) = encrypted_task(
        &register["cx_public_key"],
        "strip-1",
        &json!({"messages": [{"role": "user", "content": secret}]}),
    );
    assert_eq!(sealed_task["cx_response_encryption"], "required");
    let response = client()
        .post(&hop.url)
        .json(&sealed_task)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(
        chat_content(&open_response(&answer, &shared, "strip-1")),
        secret
    );
    let carried = hop.carried.lock().unwrap().clone();
    assert_eq!(carried.len(), 1);
    assert!(!carried[0].contains(secret), "the hop read: {}", carried[0]);
}

/// Every consumer of a relay reaches the worker from the relay's address,
/// so an anonymous clear task id cannot be told from another consumer's:
/// the worker runs each one (never another consumer's cached answer); an
/// encrypted one is scoped by its envelope's key, and its consumer's retry
/// gets the first answer.
#[tokio::test(flavor = "multi_thread")]
async fn relayed_anonymous_task_ids_are_never_shared_between_consumers() {
    let relay = Node::start(
        &plugin("echo"),
        &["--relay-capable", "--relay-accept-port", "0"],
    );
    let fake = FakeDirectory::start().await;
    let directory = fake.url();
    let worker = worker(
        &relay,
        "echo",
        "w-idem",
        &["--directory", &directory, "--idempotency"],
    );
    let register = fake.registrations(1, WAIT).await.remove(0);

    for text in ["mine", "yours"] {
        let (status, _, body) = relayed(&relay, "w-idem", &echo_task("same-id", text)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(chat_content(&body), text, "another consumer's answer");
    }
    let (sealed_task, shared) = encrypted_task(
        &register["cx_public_key"],
        "sealed-id",
        &json!({"messages": [{"role": "user", "content": "sealed"}]}),
    );
    for _ in 0..2 {
        let (status, _, sealed) = relayed(&relay, "w-idem", &sealed_task).await;
        assert_eq!(status, 200, "{sealed}");
        assert_eq!(
            chat_content(&open_response(&sealed, &shared, "sealed-id")),
            "sealed"
        );
    }
    let text = metrics(&worker).await;
    assert_eq!(
        metric_value(&text, r#"iicp_idempotency_total{outcome="unscoped"}"#),
        2.0
    );
    assert_eq!(
        metric_value(&text, r#"iicp_idempotency_total{outcome="replayed"}"#),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_mid_load_fails_its_tasks_and_is_back_at_once() {
    let relay = Node::start(
        &plugin("echo"),
        &["--relay-capable", "--relay-accept-port", "0"],
    );
    let state_dir = fresh_state_dir();
    let state = state_dir.display().to_string();
    let first = worker(&relay, "misbehave", "w-restart", &["--state-dir", &state]);

    // Four slow tasks held by the worker when it dies.
    let in_flight: Vec<_> = (0..4)
        .map(|i| {
            let url = relay_for(&relay, "w-restart", "/v1/task");
            let body = sleep_task(&format!("slow-{i}"), 20_000, 60_000);
            tokio::spawn(async move {
                let response = client().post(url).json(&body).send().await.unwrap();
                let status = response.status().as_u16();
                (status, response.json::<Value>().await.unwrap())
            })
        })
        .collect();
    wait_until("four tasks running on the worker", WAIT, || async {
        common::health(&first).await["active_jobs"] == 4
    })
    .await;
    drop(first); // SIGKILL

    // The same worker comes back (same state directory, so the same rebind
    // key): it takes its session over and the tasks the dead process held
    // are answered at once with the protocol's error.
    let started = Instant::now();
    let second = worker(&relay, "misbehave", "w-restart", &["--state-dir", &state]);
    for handle in in_flight {
        let (status, body) = tokio::time::timeout(WAIT, handle)
            .await
            .expect("a task of the dead worker hangs")
            .unwrap();
        assert_eq!(status, 502, "{body}");
        assert_eq!(error_of(&body)["code"], "IICP-E031");
        assert_eq!(body["status"], "error");
        assert!(body["task_id"].as_str().unwrap().starts_with("slow-"));
    }
    eprintln!(
        "worker restart: tasks answered {:?} after the restart began",
        started.elapsed()
    );
    let (status, _, body) = relayed(&relay, "w-restart", &sleep_task("after", 1, 5_000)).await;
    assert_eq!(status, 200, "{body}");
    let text = metrics(&relay).await;
    assert_eq!(
        metric_value(&text, r#"iicp_relay_tasks_total{outcome="worker_gone"}"#),
        4.0
    );
    assert_eq!(
        metric_value(&text, r#"iicp_relay_binds_total{result="rebound"}"#),
        1.0
    );
    assert_eq!(metric_value(&text, "iicp_relay_tasks_in_flight "), 0.0);
    drop(second);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_relay_gets_its_worker_back() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let echo = plugin("echo").display().to_string();
    let relay_state = fresh_state_dir();
    let start_relay = || {
        Node::start_at(
            &["--plugin", &echo],
            &listen,
            &relay_state,
            &["--relay-capable", "--relay-accept-port", "0"],
        )
    };
    let relay = start_relay();
    let worker = worker(&relay, "echo", "w-rebind", &[]);
    assert_eq!(
        relayed(&relay, "w-rebind", &echo_task("before", "a"))
            .await
            .0,
        200
    );

    drop(relay);
    let relay = start_relay();
    let rebound = worker
        .wait_for_log(WAIT, |e| message(e) == "bound to the relay again")
        .unwrap_or_else(|| panic!("no rebind; log:\n{}", worker.log_text()));
    eprintln!(
        "relay restart: worker rebound in {} ms",
        rebound["fields"]["rebind_ms"]
    );
    let (status, _, body) = relayed(&relay, "w-rebind", &echo_task("after", "b")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(chat_content(&body), "b");
    let text = metrics(&worker).await;
    assert_eq!(
        metric_value(&text, "iicp_relay_worker_rebind_seconds_count "),
        1.0
    );
}

/// A worker played by the test: binds and pulls by hand.
struct RawWorker {
    base: String,
    token: String,
}

async fn raw_bind(relay: &Node, body: Value) -> (u16, Value) {
    let response = client()
        .post(relay.url("/v1/relay/bind"))
        .json(&body)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

impl RawWorker {
    async fn bind(relay: &Node, worker_id: &str) -> RawWorker {
        let (status, body) = raw_bind(relay, json!({"worker_id": worker_id})).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body["worker_endpoint_path"],
            format!("/v1/relay-for/{worker_id}")
        );
        RawWorker {
            base: format!("http://{}", relay.addr),
            token: body["session_token"].as_str().unwrap().to_string(),
        }
    }

    async fn pull(&self) -> (u16, Value) {
        let response = client()
            .get(format!("{}/v1/relay/pull", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let response = client()
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn relay_limits_answer_with_the_protocol_errors() {
    let config = relay_config(
        "max_sessions = 2\nbind_rate_limit = 3\nmax_tasks_per_session = 1\n\
         poll_timeout_ms = 500\nliveness_ms = 60000\nresult_grace_ms = 0\nmax_result_bytes = 2048",
    );
    let relay = Node::start_config(&config, &[]);

    let first = RawWorker::bind(&relay, "w-a").await;
    let (status, body) = raw_bind(&relay, json!({"worker_id": "w-a"})).await;
    assert_eq!(
        (status, error_of(&body)["code"].clone()),
        (409, json!("IICP-E038"))
    );
    let second = RawWorker::bind(&relay, "w-b").await;
    let (status, body) = raw_bind(&relay, json!({"worker_id": "w-c"})).await;
    assert_eq!(
        (status, error_of(&body)["code"].clone()),
        (503, json!("IICP-E039"))
    );
    assert_eq!(second.post("/v1/relay/unbind", &json!({})).await.0, 204);
    let (status, body) = raw_bind(&relay, json!({"worker_id": "w-d"})).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(error_of(&body)["code"], "IICP-E039");
    assert_eq!(body["error"]["reason"], "relay_bind_rate_limited");
    let (status, body) = raw_bind(&relay, json!({"worker_id": "not a node id!"})).await;
    assert_eq!(
        (status, error_of(&body)["code"].clone()),
        (422, json!("IICP-E001"))
    );

    // Tokens: missing or wrong, on every worker route.
    let stranger = RawWorker {
        base: first.base.clone(),
        token: "0".repeat(64),
    };
    assert_eq!(stranger.pull().await.0, 401);
    let (status, body) = stranger
        .post("/v1/relay/result", &json!({"call_id": "x", "result": {}}))
        .await;
    assert_eq!(
        (status, error_of(&body)["code"].clone()),
        (401, json!("IICP-E021"))
    );
    assert_eq!(stranger.post("/v1/relay/unbind", &json!({})).await.0, 401);

    // Consumers: unknown worker, full queue, a budget the worker never meets.
    let (status, _, body) = relayed(&relay, "w-ghost", &echo_task("g", "x")).await;
    assert_eq!(
        (status, error_of(&body)["code"].clone()),
        (404, json!("IICP-E030"))
    );
    let mut waiting = echo_task("budget", "x");
    waiting["constraints"] = json!({"timeout_ms": 800});
    let queued = {
        let url = relay_for(&relay, "w-a", "/v1/task");
        tokio::spawn(async move {
            let response = client().post(url).json(&waiting).send().await.unwrap();
            (
                response.status().as_u16(),
                response.json::<Value>().await.unwrap(),
            )
        })
    };
    wait_until("the first task to queue", WAIT, || async {
        metric_value(&metrics(&relay).await, "iicp_relay_tasks_queued ") == 1.0
    })
    .await;
    let (status, _, body) = relayed(&relay, "w-a", &echo_task("over", "x")).await;
    assert_eq!(
        (status, error_of(&body)["code"].clone()),
        (429, json!("IICP-E021"))
    );
    let (status, body) = tokio::time::timeout(WAIT, queued).await.unwrap().unwrap();
    assert_eq!(status, 504, "{body}");
    assert_eq!(error_of(&body)["code"], "task_timeout");
    assert_eq!(body["task_id"], "budget");

    // The worker: a held task, an oversized result, a late one, an empty poll.
    let consumer = {
        let url = relay_for(&relay, "w-a", "/v1/task");
        tokio::spawn(async move {
            client()
                .post(url)
                .json(&echo_task("held", "x"))
                .send()
                .await
        })
    };
    let (status, call) = first.pull().await;
    assert_eq!(status, 200, "{call}");
    assert_eq!(call["task"]["task_id"], "held");
    let huge = json!({"call_id": call["call_id"], "result": {"pad": "x".repeat(4096)}});
    assert_eq!(first.post("/v1/relay/result", &huge).await.0, 413);
    let answer = json!({"call_id": call["call_id"], "result": {"result": {"text": "from a reference worker"}}});
    // Results being read are bounded per worker (here one at a time, as it
    // holds one task): a post that trickles keeps its reservation, a second
    // one is refused, and the reservation returns when the first goes away.
    let mut slow = tokio::net::TcpStream::connect(&relay.addr).await.unwrap();
    let head = format!(
        "POST /v1/relay/result HTTP/1.1\r\nHost: relay\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"call_id\":",
        first.token
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    let reserved = || async { metric_value(&metrics(&relay).await, "iicp_relay_result_bytes ") };
    wait_until("the trickled result's reservation", WAIT, || async {
        reserved().await == 1000.0
    })
    .await;
    let (status, body) = first.post("/v1/relay/result", &answer).await;
    assert_eq!(
        (status, error_of(&body)["code"].clone()),
        (503, json!("IICP-E039"))
    );
    drop(slow);
    wait_until("the reservation to return", WAIT, || async {
        reserved().await == 0.0
    })
    .await;
    assert_eq!(first.post("/v1/relay/result", &answer).await.0, 204);
    let response = consumer.await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    let merged: Value = response.json().await.unwrap();
    assert_eq!(
        merged,
        json!({"task_id": "held", "status": "success", "result": {"text": "from a reference worker"}})
    );
    assert_eq!(first.post("/v1/relay/result", &answer).await.0, 204);
    assert_eq!(first.pull().await.0, 204);

    let text = metrics(&relay).await;
    for reason in [
        "alive_rebind",
        "at_capacity",
        "bind_rate_limited",
        "bind_malformed",
        "bad_session_token",
        "no_session",
        "queue_full",
        "late_result",
        "result_malformed",
        "result_reads",
    ] {
        assert!(
            metric_value(
                &text,
                &format!(r#"iicp_relay_refusals_total{{reason="{reason}"}}"#)
            ) >= 1.0,
            "no {reason} refusal counted:\n{text}"
        );
    }
    assert_eq!(metric_value(&text, "iicp_relay_held_bytes "), 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_silent_worker_is_dropped_and_its_consumers_answered() {
    let config = relay_config("poll_timeout_ms = 300\nliveness_ms = 1000");
    let relay = Node::start_config(&config, &[]);
    let _bound = RawWorker::bind(&relay, "w-silent").await;
    // Nobody pulls: the task waits until the session expires.
    let (status, _, body) = relayed(&relay, "w-silent", &echo_task("orphan", "x")).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(error_of(&body)["code"], "IICP-E031");
    assert!(
        error_of(&body)["message"]
            .as_str()
            .unwrap()
            .contains("stopped pulling"),
        "{body}"
    );
    let (status, _, body) = relayed(&relay, "w-silent", &echo_task("later", "x")).await;
    assert_eq!(
        (status, error_of(&body)["code"].clone()),
        (404, json!("IICP-E030"))
    );
    assert_eq!(
        metric_value(&metrics(&relay).await, "iicp_relay_sessions "),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bind_tickets_are_checked_and_fetched_from_the_directory() {
    let key = ed25519_dalek::SigningKey::from_bytes(&[42; 32]);
    let key_hex = hex::encode(key.verifying_key().to_bytes());
    let relay = Node::start(
        &plugin("echo"),
        &[
            "--relay-capable",
            "--relay-accept-port",
            "0",
            "--relay-require-bind-ticket",
            "--relay-bind-ticket-key",
            &key_hex,
            "--node-id",
            "relay-1",
        ],
    );
    let (status, body) = raw_bind(&relay, json!({"worker_id": "w-t"})).await;
    assert_eq!(
        (status, error_of(&body)["code"].clone()),
        (401, json!("IICP-E040"))
    );
    let jti = "0123456789abcdef0123456789abcdef";
    let wrong = relay_bind_ticket(&key, "someone-else", "relay-1", jti);
    let (status, _) = raw_bind(&relay, json!({"worker_id": "w-t", "bind_ticket": wrong})).await;
    assert_eq!(status, 401);
    let good = relay_bind_ticket(&key, "w-t", "relay-1", jti);
    let (status, bound) = raw_bind(&relay, json!({"worker_id": "w-t", "bind_ticket": good})).await;
    assert_eq!(status, 200, "{bound}");
    let by_hand = RawWorker {
        base: format!("http://{}", relay.addr),
        token: bound["session_token"].as_str().unwrap().to_string(),
    };
    assert_eq!(by_hand.post("/v1/relay/unbind", &json!({})).await.0, 204);
    let (status, body) = raw_bind(&relay, json!({"worker_id": "w-t", "bind_ticket": good})).await;
    assert_eq!(
        (status, error_of(&body)["code"].clone()),
        (409, json!("IICP-E040"))
    );

    // A real worker registers, asks the directory for a ticket and binds.
    let fake = FakeDirectory::start().await;
    fake.state.lock().unwrap().ticket_key = Some(key);
    let directory = fake.url();
    let node = worker(&relay, "echo", "w-ticketed", &["--directory", &directory]);
    assert!(!fake.requests("/v1/relay/ticket").is_empty());
    let (status, _, body) = relayed(&relay, "w-ticketed", &echo_task("t-1", "ok")).await;
    assert_eq!(status, 200, "{body}");
    drop(node);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopping_worker_finishes_its_relayed_tasks_then_unbinds() {
    let relay = Node::start(
        &plugin("echo"),
        &["--relay-capable", "--relay-accept-port", "0"],
    );
    let node = worker(&relay, "misbehave", "w-drain", &[]);
    let running = {
        let url = relay_for(&relay, "w-drain", "/v1/task");
        tokio::spawn(async move {
            let response = client()
                .post(url)
                .json(&sleep_task("draining", 1_500, 30_000))
                .send()
                .await
                .unwrap();
            (
                response.status().as_u16(),
                response.json::<Value>().await.unwrap(),
            )
        })
    };
    wait_until("the task to run on the worker", WAIT, || async {
        common::health(&node).await["active_jobs"] == 1
    })
    .await;
    node.terminate();
    let (status, body) = tokio::time::timeout(WAIT, running).await.unwrap().unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["task_id"], "draining");
    node.wait_for_log(WAIT, |e| message(e) == "unbound from the relay")
        .unwrap_or_else(|| panic!("no unbind; log:\n{}", node.log_text()));
    let (status, _, body) = relayed(&relay, "w-drain", &echo_task("gone", "x")).await;
    assert_eq!(
        (status, error_of(&body)["code"].clone()),
        (404, json!("IICP-E030"))
    );
}

/// The relay node for the identity tests: `--relay-capable` on a fixed
/// port with its own state directory, so it can be killed and started
/// again as the same relay.
struct RestartableRelay {
    listen: String,
    state: PathBuf,
    source: Vec<String>,
}

impl RestartableRelay {
    fn new(source: &[&str]) -> Self {
        Self {
            listen: format!("127.0.0.1:{}", free_port()),
            state: fresh_state_dir(),
            source: source.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn start(&self, extra: &[&str]) -> Node {
        let source: Vec<&str> = self.source.iter().map(String::as_str).collect();
        Node::start_at(&source, &self.listen, &self.state, extra)
    }
}

/// Issue 19, part 2, as an attacker plays it: the relay restarts (its
/// sessions were in memory), and before the victim worker is back the
/// attacker binds under the victim's id, with no key or with a key of its
/// own, hoping to receive the victim's consumers' tasks and credentials.
#[tokio::test(flavor = "multi_thread")]
async fn after_a_relay_restart_only_the_worker_itself_binds_under_its_id() {
    let echo = plugin("echo").display().to_string();
    let relay_node = RestartableRelay::new(&["--plugin", &echo]);
    let relay = relay_node.start(&["--relay-capable", "--relay-accept-port", "0"]);
    let victim_state = fresh_state_dir().display().to_string();
    let victim_args = ["--state-dir", victim_state.as_str()];
    let victim = worker(&relay, "echo", "w-victim", &victim_args);
    assert_eq!(
        relayed(&relay, "w-victim", &echo_task("before", "a"))
            .await
            .0,
        200
    );
    // The victim is down for a moment (a crash, an upgrade) when the relay
    // restarts: the attacker is first at the bind route.
    drop(victim);
    drop(relay); // SIGKILL: every session is gone
    let relay = relay_node.start(&["--relay-capable", "--relay-accept-port", "0"]);

    let attempts = [
        json!({"worker_id": "w-victim"}),
        json!({"worker_id": "w-victim", "rebind_key": "f".repeat(64)}),
        json!({"worker_id": "w-victim", "rebind_key": "", "intent": CHAT}),
    ];
    for attempt in attempts {
        let (status, body) = raw_bind(&relay, attempt.clone()).await;
        if status == 200 {
            // What the attacker gets: the victim's consumers' next task,
            // with their credentials.
            let impostor = RawWorker {
                base: format!("http://{}", relay.addr),
                token: body["session_token"].as_str().unwrap().to_string(),
            };
            let mut stolen = echo_task("stolen", "private");
            stolen["constraints"] = json!({"timeout_ms": 1000});
            let consumer = client()
                .post(relay_for(&relay, "w-victim", "/v1/task"))
                .header("authorization", "Bearer consumer-secret")
                .json(&stolen)
                .send();
            let (pulled, _) = tokio::join!(impostor.pull(), consumer);
            panic!(
                "{attempt} bound as the victim; its pull got the consumer's task {} with \
                 authorization {}",
                pulled.1["task"]["task_id"], pulled.1["headers"]["authorization"]
            );
        }
        assert_eq!(status, 401, "{attempt}: {body}");
        assert_eq!(error_of(&body)["code"], "IICP-E040", "{attempt}");
    }

    // The real worker (same state directory, so the same key) binds and
    // serves its consumers end to end, credentials and all.
    let victim = worker(&relay, "echo", "w-victim", &victim_args);
    let response = client()
        .post(relay_for(&relay, "w-victim", "/v1/task"))
        .header("authorization", "Bearer consumer-secret")
        .json(&echo_task("after", "b"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(chat_content(&response.json().await.unwrap()), "b");
    let text = metrics(&relay).await;
    assert_eq!(
        metric_value(&text, r#"iicp_relay_refusals_total{reason="pin_mismatch"}"#),
        3.0,
        "{text}"
    );
    assert_eq!(metric_value(&text, "iicp_relay_pinned_workers "), 1.0);
    assert!(
        !relay.log_text().contains(&"f".repeat(64)),
        "a presented key reached the log"
    );
    drop(victim);
}

#[tokio::test(flavor = "multi_thread")]
async fn keyless_workers_still_bind_and_the_pin_table_is_bounded() {
    let config = relay_config("max_pinned_workers = 2\npoll_timeout_ms = 500");
    let config = config.display().to_string();
    let relay_node = RestartableRelay::new(&["--config", &config]);
    let relay = relay_node.start(&[]);
    let bind = |relay: &Node, body: Value| {
        let relay_addr = relay.addr.clone();
        async move {
            let response = client()
                .post(format!("http://{relay_addr}/v1/relay/bind"))
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    let key = |n: u8| format!("{n:0>64}");
    // A keyless worker (the reference's long-poll body) binds and pins
    // nothing; keyed workers pin until the table is full.
    let keyless = json!({"worker_id": "w-keyless", "intent": CHAT, "models": []});
    assert_eq!(bind(&relay, keyless.clone()).await.0, 200);
    for (id, n) in [("w-k1", 1), ("w-k2", 2)] {
        let (status, body) = bind(&relay, json!({"worker_id": id, "rebind_key": key(n)})).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) = bind(&relay, json!({"worker_id": "w-k3", "rebind_key": key(3)})).await;
    assert_eq!(
        (status, error_of(&body)["code"].clone()),
        (503, json!("IICP-E039")),
        "{body}"
    );
    let text = metrics(&relay).await;
    assert_eq!(metric_value(&text, "iicp_relay_pinned_workers "), 2.0);
    assert_eq!(
        metric_value(&text, r#"iicp_relay_refusals_total{reason="pins_full"}"#),
        1.0
    );

    // After a restart the pins are back, the keyless worker binds again,
    // and a pinned id needs its key.
    drop(relay);
    let relay = relay_node.start(&[]);
    assert_eq!(
        metric_value(&metrics(&relay).await, "iicp_relay_pinned_workers "),
        2.0
    );
    assert_eq!(bind(&relay, keyless.clone()).await.0, 200);
    let (status, _) = bind(&relay, json!({"worker_id": "w-k1", "rebind_key": key(1)})).await;
    assert_eq!(status, 200);
    let (status, body) = bind(&relay, json!({"worker_id": "w-k2"})).await;
    assert_eq!(
        (status, error_of(&body)["code"].clone()),
        (401, json!("IICP-E040"))
    );

    // The operator may refuse keyless binds altogether.
    drop(relay);
    let relay = relay_node.start(&["--relay-refuse-keyless-binds"]);
    let (status, body) = bind(&relay, keyless).await;
    assert_eq!(
        (status, error_of(&body)["code"].clone()),
        (401, json!("IICP-E040"))
    );
    assert_eq!(
        metric_value(
            &metrics(&relay).await,
            r#"iicp_relay_refusals_total{reason="key_required"}"#
        ),
        1.0
    );
    let (status, _) = bind(&relay, json!({"worker_id": "w-k1", "rebind_key": key(1)})).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_that_lost_its_state_gets_its_id_back_with_a_bind_ticket() {
    let key = ed25519_dalek::SigningKey::from_bytes(&[43; 32]);
    let key_hex = hex::encode(key.verifying_key().to_bytes());
    let relay = Node::start(
        &plugin("echo"),
        &[
            "--relay-capable",
            "--relay-accept-port",
            "0",
            "--relay-bind-ticket-key",
            &key_hex,
            "--node-id",
            "relay-2",
        ],
    );
    let fake = FakeDirectory::start().await;
    fake.state.lock().unwrap().ticket_key = Some(key);
    let directory = fake.url();
    // Bound with its key and no ticket (tickets are optional here): pinned.
    let first = worker(&relay, "echo", "w-lost", &["--directory", &directory]);
    assert!(fake.requests("/v1/relay/ticket").is_empty());
    first.terminate();
    first
        .wait_for_log(WAIT, |e| message(e) == "unbound from the relay")
        .unwrap_or_else(|| panic!("no unbind; log:\n{}", first.log_text()));
    // A new state directory: a new key. The pin refuses it (401 IICP-E040),
    // the worker asks its directory for a ticket, and the ticket re-pins.
    let second = worker(&relay, "echo", "w-lost", &["--directory", &directory]);
    assert!(!fake.requests("/v1/relay/ticket").is_empty());
    let (status, _, body) = relayed(&relay, "w-lost", &echo_task("back", "c")).await;
    assert_eq!(status, 200, "{body}");
    let text = metrics(&relay).await;
    assert_eq!(
        metric_value(&text, r#"iicp_relay_refusals_total{reason="pin_mismatch"}"#),
        1.0
    );
    drop(second);
}

const BIG_OUTPUT: &str = "urn:iicp:intent:test:big-output:v1";

/// The value of `series` in a Prometheus exposition; a missing series
/// fails the test (a renamed metric must not read as zero).
fn present_sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} series in:\n{text}"))
}

/// The JSON body of the rest of an HTTP/1.1 answer whose status line was
/// read, by its Content-Length (the connection stays open).
async fn read_json_answer(stream: &mut tokio::net::TcpStream) -> Value {
    use tokio::io::AsyncReadExt;
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .expect("a Content-Length");
            if buffer.len() >= end + 4 + length {
                return serde_json::from_slice(&buffer[end + 4..end + 4 + length])
                    .expect("a JSON body");
            }
        }
        let read = tokio::time::timeout(WAIT, stream.read(&mut chunk))
            .await
            .expect("the answer arrives")
            .unwrap();
        assert!(read > 0, "closed mid-answer");
        buffer.extend_from_slice(&chunk[..read]);
    }
}

/// Resident and peak resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Issue 19, part 3, as an attacker plays it: many consumers ask a relayed
/// worker for large answers and never read them. The relay holds each
/// answer until its consumer takes it, so those answers must count
/// against the node's unsent-answer budget like direct ones.
#[tokio::test(flavor = "multi_thread")]
async fn relayed_answers_that_consumers_do_not_read_stay_within_the_unsent_answer_budget() {
    const BUDGET_MIB: u64 = 10;
    const ANSWER_BYTES: u64 = 3_900_000;
    const CONSUMERS: usize = 16;
    const HELD: &str = "iicp_unsent_answer_bytes ";
    let config = relay_config(
        "max_bytes_per_session = 134217728\nmax_bytes_total = 134217728\n\
         poll_timeout_ms = 1000",
    );
    let relay = Node::start_config(
        &config,
        &[
            "--max-unsent-answers-mib",
            &BUDGET_MIB.to_string(),
            "--response-write-timeout-ms",
            "600000",
        ],
    );
    // Slots for every consumer, so none is refused by the worker itself.
    let worker = worker(&relay, "misbehave", "w-big", &["--max-concurrent", "16"]);
    let (rss_before, _) = rss_kib(relay.pid());

    // Each consumer: one task, a 4 KiB receive window, and no reads.
    let mut body = task("unread", BIG_OUTPUT, json!({ "bytes": ANSWER_BYTES }));
    body["constraints"] = json!({"timeout_ms": 120_000});
    let body = serde_json::to_vec(&body).unwrap();
    let mut consumers = Vec::new();
    for _ in 0..CONSUMERS {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut stream = socket.connect(relay.addr.parse().unwrap()).await.unwrap();
        let head = format!(
            "POST /v1/relay-for/w-big/v1/task HTTP/1.1\r\nHost: relay\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(&body).await.unwrap();
        consumers.push(stream);
    }
    wait_until("every relayed task answered", WAIT, || async {
        common::polled_sample(
            &metrics(&relay).await,
            r#"iicp_relay_tasks_total{outcome="answered"} "#,
        ) >= CONSUMERS as f64
    })
    .await;
    let (rss_held, _) = rss_kib(relay.pid());
    let text = metrics(&relay).await;
    let held = present_sample(&text, HELD);
    eprintln!(
        "relay RSS: {rss_before} KiB before, {rss_held} KiB with {CONSUMERS} unread answers \
         of {ANSWER_BYTES} B ({held} B charged)"
    );
    assert!(held <= (BUDGET_MIB << 20) as f64, "{held} over the budget");
    assert!(
        held >= ANSWER_BYTES as f64,
        "the unread answers are not charged: {held}"
    );

    // The consumers whose answers did not fit got the 503 envelope (small
    // enough to arrive through the 4 KiB window).
    let mut refused = 0;
    let mut answered = 0;
    for stream in &mut consumers {
        let mut head = [0u8; 12];
        tokio::io::AsyncReadExt::read_exact(stream, &mut head)
            .await
            .unwrap();
        match &head {
            b"HTTP/1.1 503" => {
                let envelope = read_json_answer(stream).await;
                assert_eq!(error_of(&envelope)["code"], "unavailable", "{envelope}");
                assert_eq!(envelope["task_id"], "unread");
                refused += 1;
            }
            b"HTTP/1.1 200" => answered += 1,
            other => panic!("unexpected answer {:?}", String::from_utf8_lossy(other)),
        }
    }
    assert_eq!(refused + answered, CONSUMERS);
    // Two answers fill the budget; a few more may slip into kernel buffers
    // and leave the budget early, but most must be refused.
    assert!(refused >= CONSUMERS / 2, "only {refused} refused");
    assert!(
        present_sample(&metrics(&relay).await, "iicp_unsent_answer_refusals_total ")
            >= refused as f64
    );

    // The consumers leave; every charge returns, and the relay serves on.
    drop(consumers);
    wait_until("the unsent answers to be released", WAIT, || async {
        present_sample(&metrics(&relay).await, HELD) == 0.0
    })
    .await;
    let (rss_after, rss_peak) = rss_kib(relay.pid());
    eprintln!("relay RSS: {rss_after} KiB after the consumers left, peak {rss_peak} KiB");
    let mut small = task("small", BIG_OUTPUT, json!({ "bytes": 10 }));
    small["constraints"] = json!({"timeout_ms": 30_000});
    let (status, _, body) = relayed(&relay, "w-big", &small).await;
    assert_eq!(status, 200, "{body}");
    drop(worker);
}

/// A worker that opens pulls and never reads them makes the relay hold
/// a copy of each task it hands out: those copies count against the
/// unsent-answer budget too. A pull that does not fit answers 204 and
/// leaves its task queued for a later pull.
#[tokio::test(flavor = "multi_thread")]
async fn pull_answers_a_worker_does_not_read_count_against_the_unsent_answer_budget() {
    const TASK_TEXT: usize = 3_900_000;
    const HELD: &str = "iicp_unsent_answer_bytes ";
    let config = relay_config("poll_timeout_ms = 1000\nliveness_ms = 60000");
    let relay = Node::start_config(
        &config,
        &[
            "--max-body-bytes",
            "4194304",
            "--max-unsent-answers-mib",
            "10",
            "--response-write-timeout-ms",
            "600000",
        ],
    );
    let hoarder = RawWorker::bind(&relay, "w-hoarder").await;
    let consumer = |id: &str| {
        let url = relay_for(&relay, "w-hoarder", "/v1/task");
        let mut body = echo_task(id, &"x".repeat(TASK_TEXT));
        body["constraints"] = json!({"timeout_ms": 60_000});
        tokio::spawn(async move { client().post(url).json(&body).send().await })
    };
    // Two pulls with a 4 KiB window that the worker never reads.
    let mut stuck = Vec::new();
    let mut consumers = Vec::new();
    for i in 1..=2 {
        consumers.push(consumer(&format!("c-{i}")));
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut stream = socket.connect(relay.addr.parse().unwrap()).await.unwrap();
        let head = format!(
            "GET /v1/relay/pull HTTP/1.1\r\nHost: relay\r\nAuthorization: Bearer {}\r\n\r\n",
            hoarder.token
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut status = [0u8; 12];
        tokio::io::AsyncReadExt::read_exact(&mut stream, &mut status)
            .await
            .unwrap();
        assert_eq!(&status, b"HTTP/1.1 200");
        stuck.push(stream);
    }
    let held = present_sample(&metrics(&relay).await, HELD);
    assert!(
        held >= (2 * TASK_TEXT) as f64,
        "pull answers not charged: {held}"
    );

    // The third task's pull answer does not fit: 204, the task stays queued.
    consumers.push(consumer("c-3"));
    wait_until("the third task to queue", WAIT, || async {
        metric_value(&metrics(&relay).await, "iicp_relay_tasks_queued ") == 1.0
    })
    .await;
    assert_eq!(hoarder.pull().await.0, 204);
    let text = metrics(&relay).await;
    assert_eq!(metric_value(&text, "iicp_relay_tasks_queued "), 1.0);
    assert!(
        metric_value(
            &text,
            r#"iicp_relay_refusals_total{reason="pull_unsent_budget"}"#
        ) >= 1.0,
        "{text}"
    );
    assert!(present_sample(&text, HELD) <= (10 << 20) as f64);

    // The hoarded pulls go away: their charges return and the task is
    // handed out whole.
    drop(stuck);
    wait_until("the pull answers to be released", WAIT, || async {
        present_sample(&metrics(&relay).await, HELD) == 0.0
    })
    .await;
    let (status, call) = hoarder.pull().await;
    assert_eq!(status, 200);
    assert_eq!(call["task"]["task_id"], "c-3");
    let answer = json!({"call_id": call["call_id"], "result": {"result": {"text": "ok"}}});
    assert_eq!(hoarder.post("/v1/relay/result", &answer).await.0, 204);
    let third = consumers.pop().unwrap().await.unwrap().unwrap();
    assert_eq!(third.status(), 200);
    for waiting in consumers {
        waiting.abort();
    }
}

/// Settings stack file → `IICP_HOST_<SECTION>__<KEY>` → `--set`, checked
/// once after stacking: the file's `max_sessions = 5` and `bind_rate_limit
/// = 3`, the environment's `max_sessions = 0` (out of range alone) and
/// `bind_rate_limit = 0` (off), `--set`'s `max_sessions = 1`. The relay then
/// holds one session and never rate-limits binds.
#[tokio::test(flavor = "multi_thread")]
async fn relay_settings_stack_the_file_the_environment_and_set() {
    let config = relay_config("max_sessions = 5\nbind_rate_limit = 3");
    let relay = Node::start_config_env(
        &config,
        &["--set", "relay_capable.max_sessions=1"],
        &[
            ("IICP_HOST_RELAY_CAPABLE__MAX_SESSIONS", "0"),
            ("IICP_HOST_RELAY_CAPABLE__BIND_RATE_LIMIT", "0"),
        ],
    );
    let _only = RawWorker::bind(&relay, "w-only").await;
    for attempt in 0..5 {
        let (status, body) = raw_bind(&relay, json!({"worker_id": format!("w-{attempt}")})).await;
        assert_eq!(status, 503, "attempt {attempt}: {body}");
        assert_eq!(error_of(&body)["code"], "IICP-E039", "{body}");
        assert_ne!(body["error"]["reason"], "relay_bind_rate_limited", "{body}");
    }
}
