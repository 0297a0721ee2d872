//! The `/v1/task` rules the reference node has beyond admission, end to end
//! over real sockets: the CIP tool gate, drain, idempotent task ids and the
//! task auth modes.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::fake_directory::FakeDirectory;
use common::{Node, client, error_of, health, metrics, plugin, post_task, task};
use serde_json::{Value, json};

const CHAT: &str = "urn:iicp:intent:llm:chat:v1";
const ADMIN_TOKEN: &str = "admin-secret-for-tests";
const WAIT: Duration = Duration::from_secs(30);

fn chat(id: &str) -> Value {
    task(
        id,
        CHAT,
        json!({"messages": [{"role": "user", "content": "hello"}]}),
    )
}

/// `POST` on the admin API with the operator's token.
async fn admin_post(node: &Node, path: &str) -> Value {
    let response = client()
        .post(node.admin_url(path))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{path}");
    response.json().await.unwrap()
}

/// A config serving the misbehave plugin under `intents`, plus `extra`.
fn misbehave_config(dir: &Path, intents: &[&str], extra: &str) -> PathBuf {
    let path = dir.join("node.toml");
    let intents: Vec<String> = intents.iter().map(|i| format!("{i:?}")).collect();
    std::fs::write(
        &path,
        format!(
            "{extra}\n[[plugin]]\nid = \"misbehave\"\npath = {:?}\nintents = [{}]\n",
            plugin("misbehave").display().to_string(),
            intents.join(", ")
        ),
    )
    .unwrap();
    path
}

const TOOL_OK: &str = "urn:iicp:intent:tool:ok:v1";
const TEST_OK: &str = "urn:iicp:intent:test:ok:v1";

#[tokio::test(flavor = "multi_thread")]
async fn tool_intents_need_the_policy() {
    let dir = tempfile::tempdir().unwrap();
    let config = misbehave_config(dir.path(), &[TOOL_OK, TEST_OK], "");
    let denied = Node::start_config(&config, &[]);
    assert!(
        denied
            .log_text()
            .contains("policy.allow_tool_execution is false"),
        "no start-up warning:\n{}",
        denied.log_text()
    );
    for intent in [TOOL_OK, "urn:iicp:intent:tool:unserved:v1"] {
        let (status, _, body) = post_task(&denied, &task("tool-1", intent, json!(1))).await;
        assert_eq!(status, 403, "{body}");
        assert_eq!(error_of(&body)["code"], "tool_execution_denied");
    }
    let (status, _, _) = post_task(&denied, &task("plain-1", TEST_OK, json!(1))).await;
    assert_eq!(status, 200);
    assert!(
        metrics(&denied)
            .await
            .contains("iicp_tool_execution_denied_total 2")
    );

    let allowed = Node::start_config(&config, &["--allow-tool-execution"]);
    let (status, _, body) = post_task(&allowed, &task("tool-2", TOOL_OK, json!(7))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"], 7);

    let policy = misbehave_config(
        dir.path(),
        &[TOOL_OK],
        "[policy]\nallow_tool_execution = true\n",
    );
    let from_file = Node::start_config(&policy, &[]);
    assert_eq!(
        post_task(&from_file, &task("tool-3", TOOL_OK, json!(1)))
            .await
            .0,
        200
    );
}

/// A node with the echo and misbehave plugins, an admin API, joined to `fake`.
fn drain_config(dir: &Path, fake: &FakeDirectory) -> PathBuf {
    let path = dir.join("drain.toml");
    std::fs::write(
        &path,
        format!(
            "[node]\ndrain_retry_after_ms = 4000\n[admin]\ntoken_env = \"TEST_ADMIN_TOKEN\"\n\
             [directory]\nurl = \"{}\"\ntimeout_ms = 1000\n\
             [[plugin]]\nid = \"echo\"\npath = {:?}\n[[plugin]]\nid = \"tools\"\npath = {:?}\n",
            fake.url(),
            plugin("echo").display().to_string(),
            plugin("misbehave").display().to_string(),
        ),
    )
    .unwrap();
    path
}

/// Waits for a heartbeat sent after the first `after` requests whose body
/// says `status` and `available`.
async fn wait_heartbeat(fake: &FakeDirectory, after: usize, status: &str, available: bool) {
    let seen = fake
        .wait_for(WAIT, |state| {
            state.requests[after.min(state.requests.len())..]
                .iter()
                .any(|r| {
                    r.path == "/v1/heartbeat"
                        && r.body["status"] == status
                        && r.body["available"] == available
                })
        })
        .await;
    let heartbeats: Vec<Value> = fake
        .requests("/v1/heartbeat")
        .iter()
        .map(|r| json!([r.body["status"], r.body["available"]]))
        .collect();
    assert!(
        seen,
        "no heartbeat with status {status}, available {available}: {heartbeats:?}"
    );
}

fn request_count(fake: &FakeDirectory) -> usize {
    fake.state.lock().unwrap().requests.len()
}

#[tokio::test(flavor = "multi_thread")]
async fn drains_answer_e024_and_the_heartbeat_follows() {
    let fake = FakeDirectory::start().await;
    fake.state.lock().unwrap().next_heartbeat_ms = 60_000;
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start_config_env(
        &drain_config(dir.path(), &fake),
        &["--admin-listen", "127.0.0.1:0"],
        &[("TEST_ADMIN_TOKEN", ADMIN_TOKEN)],
    );
    wait_heartbeat(&fake, 0, "available", true).await;
    let ok = task("ok", "urn:iicp:intent:test:ok:v1", json!(1));

    // One plugin drained: its intents answer E024, the other's serve, and
    // the node stays available (degraded) — heartbeats come at once even
    // though the directory asked for one a minute.
    let mark = request_count(&fake);
    let answer = admin_post(&node, "/admin/plugins/tools/drain?retry_after_ms=1500").await;
    assert_eq!(answer["reason"], "plugin_draining");
    let (status, headers, body) = post_task(&node, &ok).await;
    assert_eq!(status, 503, "{body}");
    let error = error_of(&body);
    assert_eq!(error["code"], "IICP-E024");
    assert_eq!(error["reason"], "plugin_draining");
    assert_eq!(error["retry_after_ms"], 1500);
    assert_eq!(headers["retry-after"], "2");
    assert_eq!(post_task(&node, &chat("c1")).await.0, 200);
    wait_heartbeat(&fake, mark, "degraded", true).await;
    let health_now = health(&node).await;
    assert_eq!(health_now["status"], "degraded");
    assert_eq!(health_now["drained_plugins"], json!(["tools"]));

    // Every plugin drained: the node is unavailable.
    let mark = request_count(&fake);
    admin_post(&node, "/admin/plugins/echo/drain").await;
    wait_heartbeat(&fake, mark, "draining", false).await;
    assert_eq!(health(&node).await["available"], false);

    // Resumed: available again.
    let mark = request_count(&fake);
    admin_post(&node, "/admin/plugins/echo/resume").await;
    admin_post(&node, "/admin/plugins/tools/resume").await;
    wait_heartbeat(&fake, mark, "available", true).await;
    assert_eq!(post_task(&node, &ok).await.0, 200);

    // The whole node drained by its operator, with the configured advice.
    let mark = request_count(&fake);
    admin_post(&node, "/admin/drain").await;
    let (status, _, body) = post_task(&node, &chat("c2")).await;
    assert_eq!(status, 503);
    assert_eq!(error_of(&body)["reason"], "node_draining");
    assert_eq!(error_of(&body)["retry_after_ms"], 4000);
    wait_heartbeat(&fake, mark, "draining", false).await;
    let mark = request_count(&fake);
    admin_post(&node, "/admin/resume").await;
    wait_heartbeat(&fake, mark, "available", true).await;
    assert_eq!(post_task(&node, &chat("c3")).await.0, 200);
    let text = metrics(&node).await;
    assert!(text.contains(r#"iicp_drain_refusals_total{reason="plugin_draining"} 1"#));
    assert!(text.contains(r#"iicp_drain_refusals_total{reason="node_draining"} 1"#));

    // SIGTERM: a last heartbeat says the node drains, then it deregisters.
    let mark = request_count(&fake);
    node.terminate();
    assert!(node.wait_exit(WAIT).expect("exited").success());
    let after: Vec<_> = fake.state.lock().unwrap().requests[mark..].to_vec();
    let farewell = after
        .iter()
        .position(|r| r.path == "/v1/heartbeat" && r.body["status"] == "draining")
        .expect("a draining heartbeat at shutdown");
    assert_eq!(after[farewell].body["available"], false);
    let deregistered = after
        .iter()
        .position(|r| r.method == "DELETE")
        .expect("deregistration");
    assert!(farewell < deregistered);
}

/// An HTTP server counting the requests it gets (each is one plugin run);
/// while `hold` is on, it answers only once `hold` turns off.
struct RunCounter {
    addr: std::net::SocketAddr,
    hits: std::sync::Arc<std::sync::atomic::AtomicU32>,
    hold: tokio::sync::watch::Sender<bool>,
}

impl RunCounter {
    async fn start() -> RunCounter {
        use std::sync::atomic::Ordering;
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let (hold, held) = tokio::sync::watch::channel(false);
        let counted = hits.clone();
        let app = axum::Router::new().route(
            "/run",
            axum::routing::get(move || {
                let (counted, mut held) = (counted.clone(), held.clone());
                async move {
                    let run = counted.fetch_add(1, Ordering::SeqCst) + 1;
                    let _ = held.wait_for(|on| !*on).await;
                    format!("run {run}")
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        RunCounter { addr, hits, hold }
    }

    fn runs(&self) -> u32 {
        self.hits.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn task(&self, id: &str, query: &str) -> Value {
        task(
            id,
            "urn:iicp:intent:test:http-get:v1",
            json!({ "url": format!("http://{}/run{query}", self.addr) }),
        )
    }
}

/// A node whose misbehave plugin may call `counter`.
fn counted_node(dir: &Path, counter: &RunCounter, extra: &[&str]) -> Node {
    let path = dir.join("counted.toml");
    std::fs::write(
        &path,
        format!(
            "[[plugin]]\nid = \"misbehave\"\npath = {:?}\n[plugin.http]\nallow = [\"http://{}\"]\n",
            plugin("misbehave").display().to_string(),
            counter.addr
        ),
    )
    .unwrap();
    Node::start_config(&path, extra)
}

fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_id_runs_once_and_duplicates_get_its_answer() {
    let counter = RunCounter::start().await;
    let dir = tempfile::tempdir().unwrap();
    let node = counted_node(dir.path(), &counter, &["--idempotency"]);

    let (status, _, first) = post_task(&node, &counter.task("idem-1", "")).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["result"]["body"], "run 1");
    let (status, _, again) = post_task(&node, &counter.task("idem-1", "")).await;
    assert_eq!((status, &again), (200, &first));
    assert_eq!(counter.runs(), 1);

    // The same id with other content is a conflict, and runs nothing.
    let (status, _, body) = post_task(&node, &counter.task("idem-1", "?other")).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(error_of(&body)["code"], "IICP-E010");
    assert_eq!(error_of(&body)["reason"], "content_differs");
    assert_eq!(body["task_id"], "idem-1");
    assert_eq!(counter.runs(), 1);

    // Duplicates arriving while the first attempt runs wait for its answer.
    counter.hold.send_replace(true);
    let url = node.url("/v1/task");
    let post = |body: Value| {
        let url = url.clone();
        tokio::spawn(async move {
            let response = client().post(url).json(&body).send().await.unwrap();
            (
                response.status().as_u16(),
                response.json::<Value>().await.unwrap(),
            )
        })
    };
    let original = post(counter.task("idem-2", ""));
    let deadline = std::time::Instant::now() + WAIT;
    while counter.runs() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the first attempt never ran"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let duplicates: Vec<_> = (0..3).map(|_| post(counter.task("idem-2", ""))).collect();
    let waited = r#"iicp_idempotency_total{outcome="waited"}"#;
    while sample(&metrics(&node).await, waited) < 3.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the duplicates never waited"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    counter.hold.send_replace(false);
    let (status, answer) = original.await.unwrap();
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["result"]["body"], "run 2");
    for duplicate in duplicates {
        assert_eq!(duplicate.await.unwrap(), (200, answer.clone()));
    }
    assert_eq!(counter.runs(), 2);
    let text = metrics(&node).await;
    assert_eq!(
        sample(&text, r#"iicp_idempotency_total{outcome="replayed"}"#),
        4.0
    );
    assert_eq!(
        sample(&text, r#"iicp_idempotency_total{outcome="conflict"}"#),
        1.0
    );
    assert_eq!(sample(&text, "iicp_idempotency_entries"), 2.0);

    // Off by default, as in the reference node: every task runs.
    let plain = counted_node(dir.path(), &counter, &[]);
    for _ in 0..2 {
        assert_eq!(post_task(&plain, &counter.task("idem-1", "")).await.0, 200);
    }
    assert_eq!(counter.runs(), 4);
}
