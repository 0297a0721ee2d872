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
