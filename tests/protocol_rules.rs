//! The `/v1/task` rules the reference node has beyond admission, end to end
//! over real sockets: the CIP tool gate, drain, idempotent task ids and the
//! task auth modes; and the reference consumer (PyPI `iicp-client` 0.7.109)
//! served by a node with default settings and in consumer-token mode.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::fake_directory::FakeDirectory;
use common::{Node, client, error_of, health, metrics, plugin, post_task, sample, task};
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

/// A config serving the misbehave plugin under `intents` (which it is told
/// to declare), plus `extra`.
fn misbehave_config(dir: &Path, intents: &[&str], extra: &str) -> PathBuf {
    let path = dir.join("node.toml");
    let quoted: Vec<String> = intents.iter().map(|i| format!("{i:?}")).collect();
    std::fs::write(
        &path,
        format!(
            "{extra}\n[[plugin]]\nid = \"misbehave\"\npath = {:?}\nintents = [{}]\n[plugin.config]\nalso_declare = {:?}\n",
            plugin("misbehave").display().to_string(),
            quoted.join(", "),
            intents.join(",")
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
    while common::polled_sample(&metrics(&node).await, waited) < 3.0 {
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

/// With open auth, an attacker who knows a task id (they travel in clear)
/// sends it again with a guessed payload, from its own address or under its
/// own envelope: it must neither get the first caller's answer nor learn
/// from `content_differs` that its guess was wrong.
#[tokio::test(flavor = "multi_thread")]
async fn an_anonymous_caller_cannot_read_or_probe_another_callers_task_ids() {
    use common::cx::{encrypted_task_for, node_key_in, open_response};
    let counter = RunCounter::start().await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let node_key = node_key_in(&state);
    let state = state.display().to_string();
    let node = counted_node(
        dir.path(),
        &counter,
        &["--idempotency", "--state-dir", &state],
    );
    // Another loopback address: another anonymous caller.
    let attacker = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .unwrap();
    let attack = |body: Value| {
        let (attacker, url) = (attacker.clone(), node.url("/v1/task"));
        async move {
            let response = attacker.post(url).json(&body).send().await.unwrap();
            (
                response.status().as_u16(),
                response.json::<Value>().await.unwrap(),
            )
        }
    };

    // The same id and the right guess: a run of its own, not the answer.
    let (status, _, first) = post_task(&node, &counter.task("anon-1", "?secret")).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["result"]["body"], "run 1");
    let (status, stolen) = attack(counter.task("anon-1", "?secret")).await;
    assert_eq!(status, 200, "{stolen}");
    assert_eq!(
        stolen["result"]["body"], "run 2",
        "read the first caller's answer"
    );
    // A wrong guess: no `content_differs` to tell it so.
    let (status, _, second) = post_task(&node, &counter.task("anon-2", "?secret")).await;
    assert_eq!(status, 200, "{second}");
    let (status, probe) = attack(counter.task("anon-2", "?wrong-guess")).await;
    assert_eq!(status, 200, "a guessing oracle: {probe}");
    // The first caller's own retries still get its answer, without a run.
    let runs = counter.runs();
    let (status, _, again) = post_task(&node, &counter.task("anon-1", "?secret")).await;
    assert_eq!((status, &again), (200, &first));
    assert_eq!(counter.runs(), runs);

    // Encrypted, from the same address: the envelope's key is the caller.
    let intent = "urn:iicp:intent:test:http-get:v1";
    let payload = counter.task("x", "?sealed")["payload"].clone();
    let (sealed, shared) = encrypted_task_for(&node_key, "anon-cx", intent, &payload);
    let (status, _, answer) = post_task(&node, &sealed).await;
    assert_eq!(status, 200, "{answer}");
    let first = open_response(&answer, &shared, "anon-cx")["result"]["body"].clone();
    let (guess, guess_shared) = encrypted_task_for(&node_key, "anon-cx", intent, &payload);
    let (status, _, answer) = post_task(&node, &guess).await;
    assert_eq!(status, 200, "{answer}");
    let stolen = open_response(&answer, &guess_shared, "anon-cx")["result"]["body"].clone();
    assert_ne!(stolen, first, "read the first caller's sealed answer");
    // The consumer's retry resends its body: its own answer, no run.
    let runs = counter.runs();
    let (status, _, answer) = post_task(&node, &sealed).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        open_response(&answer, &shared, "anon-cx")["result"]["body"],
        first
    );
    assert_eq!(counter.runs(), runs);
}

const OPS_TOKEN: &str = "ops-token-for-tests-0123456789";

/// A node serving the echo plugin with `[auth] mode`, an operator token
/// "ops", joined to `fake`; `extra` goes into the `[auth]` table.
fn auth_node(dir: &Path, fake: &FakeDirectory, mode: &str, extra: &str) -> Node {
    let path = dir.join(format!("auth-{mode}.toml"));
    std::fs::write(
        &path,
        format!(
            "[auth]\nmode = \"{mode}\"\n{extra}\n[auth.tokens]\nops = \"TEST_OPS_TOKEN\"\n\
             [directory]\nurl = \"{}\"\ntimeout_ms = 1000\n[[plugin]]\npath = {:?}\n",
            fake.url(),
            plugin("echo").display().to_string(),
        ),
    )
    .unwrap();
    Node::start_config_env(&path, &[], &[("TEST_OPS_TOKEN", OPS_TOKEN)])
}

/// Posts a chat task with `auth` (as `auth.node_token` unless `bearer`) and
/// a consumer token; returns the status and `error.reason` of a refusal.
async fn authed(
    node: &Node,
    node_token: Option<&str>,
    bearer: bool,
    consumer_token: Option<&str>,
) -> (u16, Value) {
    let mut body = chat("auth");
    let mut request = client().post(node.url("/v1/task"));
    if let Some(token) = node_token {
        if bearer {
            request = request.bearer_auth(token);
        } else {
            body["auth"] = json!({ "node_token": token });
        }
    }
    if let Some(token) = consumer_token {
        request = request.header("X-IICP-Consumer-Token", token);
    }
    let response = request.json(&body).send().await.unwrap();
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    let reason = if status == 200 {
        Value::Null
    } else {
        error_of(&body)["reason"].clone()
    };
    (status, reason)
}

async fn registered_node_id(fake: &FakeDirectory) -> String {
    assert!(
        fake.wait_for(WAIT, |state| state.registrations > 0).await,
        "the node never registered"
    );
    fake.requests("/v1/register")[0].body["node_id"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn node_token_mode_accepts_granted_tokens_only() {
    let fake = FakeDirectory::start().await;
    let dir = tempfile::tempdir().unwrap();
    let node = auth_node(dir.path(), &fake, "node-token", "");
    let node_id = registered_node_id(&fake).await;
    let directory_token = fake.state.lock().unwrap().nodes[&node_id].token.clone();

    assert_eq!(
        authed(&node, None, false, None).await,
        (401, json!("token_missing"))
    );
    assert_eq!(
        authed(&node, Some("not-a-granted-token"), false, None).await,
        (401, json!("token_invalid"))
    );
    assert_eq!(authed(&node, Some(OPS_TOKEN), false, None).await.0, 200);
    assert_eq!(authed(&node, Some(OPS_TOKEN), true, None).await.0, 200);
    assert_eq!(
        authed(&node, Some(&directory_token), false, None).await.0,
        200
    );
    // Default consumers send no auth at all: refused here, served by `open`.
    let text = metrics(&node).await;
    assert!(
        text.contains(r#"iicp_task_auth_total{result="token_missing"} 1"#),
        "{text}"
    );
    assert!(text.contains(r#"iicp_task_auth_total{result="accepted_operator"} 2"#));
    assert!(text.contains(r#"iicp_task_auth_total{result="accepted_directory_token"} 1"#));
    let log = node.log_text();
    assert!(!log.contains(OPS_TOKEN) && !log.contains(&directory_token));
}

mod consumer_tokens {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use ed25519_dalek::{Signer, SigningKey};

    const ECHO: &str = "urn:iicp:intent:util:echo:v1";

    pub(super) fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    /// A consumer token as the reference directory signs one.
    pub(super) fn sign(key: &SigningKey, aud: &str, intent: &str, exp: u64) -> String {
        let claims = json!({"aud": aud, "exp": exp, "iat": exp.saturating_sub(300),
            "intent": intent, "iss": "https://iicp.network", "sub": "consumer-7", "v": 1});
        let encoded = URL_SAFE_NO_PAD.encode(claims.to_string());
        let signature = key.sign(format!("iicp:consumer-token:v1\n{encoded}").as_bytes());
        format!("{encoded}.{}", hex::encode(signature.to_bytes()))
    }

    pub(super) fn publish(fake: &FakeDirectory, key: &SigningKey) {
        fake.state.lock().unwrap().directory_key =
            Some(hex::encode(key.verifying_key().to_bytes()));
    }

    pub(super) async fn wait_for_key(node: &Node) {
        let deadline = std::time::Instant::now() + WAIT;
        while !metrics(node)
            .await
            .contains(r#"iicp_directory_key_fetches_total{result="ok"}"#)
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the key never arrived"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn consumer_tokens_are_checked_claim_by_claim() {
        let fake = FakeDirectory::start().await;
        let key = SigningKey::from_bytes(&[42u8; 32]);
        publish(&fake, &key);
        let dir = tempfile::tempdir().unwrap();
        let node = auth_node(
            dir.path(),
            &fake,
            "consumer-token",
            "directory_key_min_interval_s = 1",
        );
        let node_id = registered_node_id(&fake).await;
        wait_for_key(&node).await;
        let soon = now() + 300;
        let check = |token: String| {
            let node = &node;
            async move { authed(node, None, false, Some(&token)).await }
        };
        assert_eq!(check(sign(&key, &node_id, CHAT, soon)).await.0, 200);
        assert_eq!(check(sign(&key, &node_id, "*", soon)).await.0, 200);
        let refusals = [
            (
                sign(&key, &node_id, CHAT, now() - 60),
                "consumer_token_expired",
            ),
            (
                sign(&key, "another-node", CHAT, soon),
                "consumer_token_audience",
            ),
            (sign(&key, &node_id, ECHO, soon), "consumer_token_intent"),
            (
                sign(&SigningKey::from_bytes(&[1u8; 32]), &node_id, CHAT, soon),
                "consumer_token_signature",
            ),
            ("not-a-token".to_string(), "consumer_token_malformed"),
        ];
        for (token, reason) in refusals {
            assert_eq!(check(token).await, (401, json!(reason)), "{reason}");
        }
        // Without a consumer token, a node token still works; nothing does not.
        assert_eq!(authed(&node, Some(OPS_TOKEN), false, None).await.0, 200);
        assert_eq!(
            authed(&node, None, false, None).await,
            (401, json!("token_missing"))
        );

        // The directory rotates its key: a token signed with the new one is
        // refused until the node fetches the key again, which the refusal
        // itself asks for (at most once per second here).
        let rotated = SigningKey::from_bytes(&[43u8; 32]);
        publish(&fake, &rotated);
        let deadline = std::time::Instant::now() + WAIT;
        while check(sign(&rotated, &node_id, CHAT, soon)).await.0 != 200 {
            assert!(
                std::time::Instant::now() < deadline,
                "the new key never arrived"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            check(sign(&key, &node_id, CHAT, soon)).await,
            (401, json!("consumer_token_signature"))
        );
        assert!(
            !node
                .log_text()
                .contains(&sign(&key, &node_id, CHAT, soon)[..40])
        );
    }

    /// A consumer names another node as the task's source to have the
    /// directory book the task against it: a receipt names the source only
    /// when a verified consumer token says the caller is that node.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_receipt_names_only_the_source_node_the_caller_proved_to_be() {
        let fake = FakeDirectory::start().await;
        let key = SigningKey::from_bytes(&[42u8; 32]);
        publish(&fake, &key);
        let dir = tempfile::tempdir().unwrap();
        let node = auth_node(dir.path(), &fake, "consumer-token", "");
        let node_id = registered_node_id(&fake).await;
        wait_for_key(&node).await;
        let token = sign(&key, &node_id, CHAT, now() + 300);

        // (task id, source_node_id claimed, consumer token, operator token)
        let calls = [
            ("src-proved", "consumer-7", Some(&token), None),
            ("src-forged", "victim-node", Some(&token), None),
            ("src-operator", "victim-node", None, Some(OPS_TOKEN)),
        ];
        for (task_id, source, consumer_token, node_token) in calls {
            let mut body = chat(task_id);
            body["source_node_id"] = json!(source);
            if let Some(node_token) = node_token {
                body["auth"] = json!({ "node_token": node_token });
            }
            let mut request = client().post(node.url("/v1/task")).json(&body);
            if let Some(consumer_token) = consumer_token {
                request = request.header("X-IICP-Consumer-Token", consumer_token.as_str());
            }
            assert_eq!(request.send().await.unwrap().status(), 200, "{task_id}");
        }
        assert!(
            fake.wait_for(WAIT, |state| state.receipt_checks.len() >= calls.len())
                .await,
            "the receipts never arrived"
        );
        let awards = fake.requests("/v1/credits/award");
        let querying = |task_id: &str| {
            let award = awards
                .iter()
                .find(|award| award.body["task_id"] == task_id)
                .unwrap_or_else(|| panic!("no receipt for {task_id}"));
            award.body.get("querying_node_id").cloned()
        };
        assert_eq!(querying("src-proved"), Some(json!("consumer-7")));
        assert_eq!(querying("src-forged"), None);
        assert_eq!(querying("src-operator"), None);
        // Every receipt is still signed over what it carries.
        assert!(
            fake.state
                .lock()
                .unwrap()
                .receipt_checks
                .iter()
                .all(|ok| *ok)
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn without_a_directory_key_only_node_tokens_are_accepted() {
        let fake = FakeDirectory::start().await;
        let dir = tempfile::tempdir().unwrap();
        let node = auth_node(dir.path(), &fake, "consumer-token", "");
        let node_id = registered_node_id(&fake).await;
        assert!(
            fake.wait_for(WAIT, |state| state.directory_key_fetches > 0)
                .await
        );
        let token = sign(
            &SigningKey::from_bytes(&[42u8; 32]),
            &node_id,
            CHAT,
            now() + 300,
        );
        assert_eq!(
            authed(&node, None, false, Some(&token)).await,
            (401, json!("directory_key_unavailable"))
        );
        assert_eq!(
            authed(&node, Some(OPS_TOKEN), false, Some(&token)).await.0,
            200
        );
        assert_eq!(authed(&node, Some(OPS_TOKEN), false, None).await.0, 200);
    }
}

mod reference_consumer {
    //! `tests/reference-consumer/consumer.py` sends tasks with the reference
    //! consumer's own code, from the venv `setup.sh` makes (python3 with
    //! `venv`, and PyPI access on the first run; never skipped).

    use super::*;
    use common::cx::chat_content;
    use common::fresh_state_dir;
    use ed25519_dalek::SigningKey;
    use std::process::Command;

    fn here() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference-consumer")
    }

    fn python() -> &'static Path {
        common::reference_python()
    }

    /// Runs the consumer with `spec` (see consumer.py) and returns what it printed.
    async fn consume(spec: Value) -> Value {
        tokio::task::spawn_blocking(move || {
            let output = Command::new(python())
                .arg(here().join("consumer.py"))
                .arg(spec.to_string())
                .env("IICP_PROXY_ALLOW_LOOPBACK_NODES", "1")
                .output()
                .unwrap();
            assert!(
                output.status.success(),
                "{}",
                String::from_utf8_lossy(&output.stderr)
            );
            serde_json::from_slice(&output.stdout).unwrap()
        })
        .await
        .unwrap()
    }

    fn chat_spec(node: &Node, content: &str) -> Value {
        json!({
            "endpoint": node.url(""),
            "intent": CHAT,
            "payload": {"messages": [{"role": "user", "content": content}]},
        })
    }

    fn assert_served(out: &Value, content: &str) {
        let answer = &out["answer"];
        assert_eq!(answer["status"], "success", "{out}");
        assert_eq!(answer["task_id"], out["task_id"], "{out}");
        assert!(chat_content(answer).contains(content), "{out}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn the_reference_consumer_is_served_with_default_settings() {
        let fake = FakeDirectory::start().await;
        let state = fresh_state_dir().display().to_string();
        let node = Node::start(
            &plugin("echo"),
            &["--directory", &fake.url(), "--state-dir", &state],
        );
        registered_node_id(&fake).await;
        let key = fake.requests("/v1/register")[0].body["cx_public_key"].clone();
        assert!(key.is_object(), "no cx_public_key registered");

        let out = consume(chat_spec(&node, "plain from python")).await;
        assert_served(&out, "plain from python");
        // As it does with a node that advertises a key: encrypted.
        let mut spec = chat_spec(&node, "sealed from python");
        spec["cx_public_key"] = key;
        assert_served(&consume(spec).await, "sealed from python");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn the_reference_consumer_gets_through_with_a_consumer_token() {
        let fake = FakeDirectory::start().await;
        let key = SigningKey::from_bytes(&[7u8; 32]);
        consumer_tokens::publish(&fake, &key);
        let dir = tempfile::tempdir().unwrap();
        let node = auth_node(dir.path(), &fake, "consumer-token", "");
        let node_id = registered_node_id(&fake).await;
        consumer_tokens::wait_for_key(&node).await;

        let mut spec = chat_spec(&node, "token from python");
        spec["consumer_token"] = json!(consumer_tokens::sign(
            &key,
            &node_id,
            CHAT,
            consumer_tokens::now() + 300
        ));
        assert_served(&consume(spec.clone()).await, "token from python");

        // The same consumer, with a token another key signed, or none.
        spec["consumer_token"] = json!(consumer_tokens::sign(
            &SigningKey::from_bytes(&[8u8; 32]),
            &node_id,
            CHAT,
            consumer_tokens::now() + 300
        ));
        let refused = consume(spec.clone()).await;
        assert_eq!(refused["error"]["status"], 401, "{refused}");
        spec.as_object_mut().unwrap().remove("consumer_token");
        let refused = consume(spec).await;
        assert_eq!(refused["error"]["status"], 401, "{refused}");
    }
}
