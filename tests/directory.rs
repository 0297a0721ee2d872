//! The directory lifecycle against a fake directory that behaves like the
//! real one: register payload, heartbeat path/header/cadence, challenges,
//! token rotation, outages, slow and garbage answers, pricing signatures,
//! credit receipts, deregistration and identity across restarts.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::fake_directory::{Canned, FakeDirectory, hmac_hex};
use common::{Node, health, message, metrics, plugin, post_task, task};
use serde_json::{Value, json};

const CHAT: &str = "urn:iicp:intent:llm:chat:v1";
const ECHO: &str = "urn:iicp:intent:util:echo:v1";
const WAIT: Duration = Duration::from_secs(15);
/// The node's directory timing in these tests: quick, so outages recover
/// within the waits above, with the shape of the defaults.
const RETRY_FLOOR_MS: u64 = 100;
const BACKOFF_INITIAL_MS: u64 = 200;
const BACKOFF_MAX_MS: u64 = 1600;
const MIN_HEARTBEAT_MS: u64 = 100;

fn write_config(dir: &Path, fake: &FakeDirectory, extra: &str) -> PathBuf {
    let path = dir.join("iicp-host.toml");
    let text = format!(
        r#"
[node]
region = "eu-test"
max_concurrent = 5

[directory]
url = "{url}"
timeout_ms = 1000
retry_floor_ms = {RETRY_FLOOR_MS}
backoff_initial_ms = {BACKOFF_INITIAL_MS}
backoff_max_ms = {BACKOFF_MAX_MS}
min_heartbeat_ms = {MIN_HEARTBEAT_MS}
{extra}

[pricing]
credit_cost_multiplier = 1.5
pricing_model = "per_token"

[policy]
allow_remote_inference = true
max_concurrent_remote = 3

[transport]
method = "direct"
nat_type = "unknown"

[[plugin]]
path = "{plugin}"
"#,
        url = fake.url(),
        plugin = plugin("echo").display(),
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn chat_task(id: &str) -> Value {
    task(
        id,
        CHAT,
        json!({"messages": [{"role": "user", "content": "one two three"}]}),
    )
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

fn first_token(fake: &FakeDirectory, node_id: &str) -> String {
    fake.state.lock().unwrap().nodes[node_id].token.clone()
}

async fn wait_heartbeats(fake: &FakeDirectory, count: usize) {
    let reached = fake
        .wait_for(WAIT, |s| {
            s.requests
                .iter()
                .filter(|r| r.path == "/v1/heartbeat")
                .count()
                >= count
        })
        .await;
    assert!(reached, "fewer than {count} heartbeats arrived");
}

/// A node configured for `fake` (`extra` lines in `[directory]`), once it
/// has sent `heartbeats` heartbeats. The directory holds its config file,
/// so keep it as long as the node.
async fn join_directory(
    fake: &FakeDirectory,
    extra: &str,
    heartbeats: usize,
) -> (tempfile::TempDir, Node) {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start_config(&write_config(dir.path(), fake, extra), &[]);
    wait_heartbeats(fake, heartbeats).await;
    (dir, node)
}

#[tokio::test(flavor = "multi_thread")]
async fn registers_with_the_full_payload_then_heartbeats_with_bearer_at_the_asked_cadence() {
    let fake = FakeDirectory::start().await;
    let (_dir, node) = join_directory(&fake, "", 5).await;

    let registers = fake.requests("/v1/register");
    assert_eq!(registers.len(), 1);
    let body = &registers[0].body;
    assert_eq!(body["endpoint"], format!("http://{}", node.addr));
    assert_eq!(body["region"], "eu-test");
    let node_id = body["node_id"].as_str().unwrap().to_string();
    assert!(!node_id.is_empty());
    let capability = |intent: &str| json!({"intent": intent, "models": ["echo"], "max_tokens": 8192, "input_modalities": ["text"]});
    assert_eq!(
        body["capabilities"],
        json!([capability(CHAT), capability(ECHO)])
    );
    assert_eq!(
        body["limits"],
        json!({"max_concurrent": 5, "tokens_per_min": 10000})
    );
    assert_eq!(body["implementation_name"], "iicp-host");
    assert_eq!(body["implementation_version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(
        body["pricing"],
        json!({"credit_cost_multiplier": 1.5, "pricing_model": "per_token"})
    );
    assert_eq!(
        body["policy"],
        json!({"allow_remote_inference": true, "allow_tool_execution": false, "allow_file_access": false,
               "minimum_reputation": 0.0, "max_concurrent_remote": 3})
    );
    assert_eq!(body["transport_method"], "direct");
    assert_eq!(body["nat_type"], "unknown");
    assert!(body.get("current_node_token").is_none());
    assert!(body.get("sdk_version").is_none());

    let token = first_token(&fake, &node_id);
    let heartbeats = fake.requests("/v1/heartbeat");
    for beat in &heartbeats {
        assert_eq!(
            beat.authorization.as_deref(),
            Some(format!("Bearer {token}").as_str())
        );
        assert_eq!(beat.body["node_id"], node_id);
        assert_eq!(beat.body["status"], "available");
        assert_eq!(beat.body["available"], true);
        assert_eq!(beat.body["max_concurrent"], 5);
        assert!(beat.body["load"].is_number() && beat.body["active_jobs"].is_number());
    }
    // The fake asks for 300 ms; the first heartbeat follows the registration
    // at once. Never faster than asked; the upper bound only tells the asked
    // cadence from the 30 s default, so a loaded machine's late timers pass.
    for pair in heartbeats.windows(2).skip(1) {
        let gap = pair[1].at - pair[0].at;
        assert!(
            gap >= Duration::from_millis(250) && gap < Duration::from_secs(10),
            "gap {gap:?}"
        );
    }
    let (challenges, pricing) = {
        let state = fake.state.lock().unwrap();
        (state.challenge_checks.clone(), state.pricing_checks.clone())
    };
    assert!(challenges.len() >= 3, "{challenges:?}");
    assert!(challenges.iter().all(|ok| *ok), "{challenges:?}");
    assert!(
        !pricing.is_empty() && pricing.iter().all(|ok| *ok),
        "{pricing:?}"
    );

    let health = health(&node).await;
    assert_eq!(health["node_id"], node_id);
    assert_eq!(health["directory"]["registered"], true);
    assert_eq!(health["directory"]["last_heartbeat_result"], "ok");
    assert_eq!(health["directory"]["url"], fake.url());
    let text = metrics(&node).await;
    assert_eq!(metric(&text, "iicp_directory_registered"), 1.0);
    assert!(metric(&text, "iicp_heartbeats_total") >= 4.0);
    assert!(
        !node.log_text().contains(&token),
        "the token must never be logged"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_batches_report_tasks_and_are_resent_until_acknowledged() {
    let fake = FakeDirectory::start().await;
    fake.state.lock().unwrap().accept_batches = false;
    let (_dir, node) = join_directory(&fake, "", 1).await;
    for i in 0..3 {
        assert_eq!(post_task(&node, &chat_task(&format!("b-{i}"))).await.0, 200);
    }
    let unknown = task("b-x", "urn:iicp:intent:none:none:v1", json!(null));
    assert_eq!(post_task(&node, &unknown).await.0, 404);
    let with_batch = |s: &common::fake_directory::FakeState| {
        s.requests
            .iter()
            .filter(|r| r.body.get("metrics_batch_id").is_some())
            .count()
            >= 3
    };
    assert!(fake.wait_for(WAIT, with_batch).await);
    let batches: Vec<Value> = fake
        .requests("/v1/heartbeat")
        .into_iter()
        .filter(|r| r.body.get("metrics_batch_id").is_some())
        .map(|r| r.body)
        .collect();
    // Unacknowledged: the same id and counts again and again.
    assert!(
        batches
            .iter()
            .all(|b| b["metrics_batch_id"] == batches[0]["metrics_batch_id"])
    );
    assert_eq!(batches[0]["metrics"]["tasks_success"], 3);
    assert_eq!(batches[0]["metrics"]["tasks_failed"], 0);
    fake.state.lock().unwrap().accept_batches = true;
    let settled = fake
        .wait_for(WAIT, |s| {
            s.requests
                .iter()
                .rev()
                .take(2)
                .all(|r| r.path != "/v1/heartbeat" || r.body["metrics"] == json!({}))
        })
        .await;
    assert!(settled, "the batch was not settled after acknowledgement");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_401_makes_the_node_register_again_with_its_current_token() {
    let fake = FakeDirectory::start().await;
    let (_dir, node) = join_directory(&fake, "", 2).await;
    let node_id = fake.requests("/v1/register")[0].body["node_id"]
        .as_str()
        .unwrap()
        .to_string();
    let old_token = first_token(&fake, &node_id);
    fake.state.lock().unwrap().force_401 = 1;
    assert!(
        fake.wait_for(WAIT, |s| s.registrations >= 2).await,
        "no re-registration"
    );
    let registers = fake.requests("/v1/register");
    assert_eq!(registers[1].body["current_node_token"], old_token);
    let new_token = first_token(&fake, &node_id);
    assert_ne!(new_token, old_token);
    let before = fake.requests("/v1/heartbeat").len();
    wait_heartbeats(&fake, before + 2).await;
    let last = fake.requests("/v1/heartbeat").pop().unwrap();
    assert_eq!(last.authorization, Some(format!("Bearer {new_token}")));
    assert_eq!(health(&node).await["directory"]["registered"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn tasks_are_served_through_an_outage_and_the_node_registers_again() {
    let mut fake = FakeDirectory::start().await;
    let (_dir, node) = join_directory(&fake, "", 2).await;
    fake.stop().await;
    for i in 0..5 {
        let (status, _, body) = post_task(&node, &chat_task(&format!("outage-{i}"))).await;
        assert_eq!(status, 200, "{body}");
    }
    let mut failed = false;
    for _ in 0..100 {
        if health(&node).await["directory"]["consecutive_failures"]
            .as_u64()
            .unwrap_or(0)
            >= 2
        {
            failed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(failed, "heartbeat failures were not reported");
    assert!(metric(&metrics(&node).await, "iicp_heartbeat_failures_total") >= 2.0);
    assert_eq!(post_task(&node, &chat_task("during")).await.0, 200);

    // The directory comes back without its memory: 404, so the node registers again.
    fake.restart(true).await;
    assert!(
        fake.wait_for(WAIT, |s| s.registrations >= 2).await,
        "no re-registration"
    );
    let after = fake.requests("/v1/heartbeat").len();
    wait_heartbeats(&fake, after + 2).await;
    let health = health(&node).await;
    assert_eq!(health["directory"]["registered"], true);
    assert_eq!(health["directory"]["consecutive_failures"], 0);
    assert_eq!(post_task(&node, &chat_task("after")).await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_garbage_and_oversized_answers_are_failures_not_crashes() {
    let fake = FakeDirectory::start().await;
    let (_dir, node) = join_directory(&fake, "", 1).await;
    for knob in ["slow", "garbage", "oversized"] {
        {
            let mut state = fake.state.lock().unwrap();
            state.heartbeat_delay = if knob == "slow" {
                Duration::from_secs(3)
            } else {
                Duration::ZERO
            };
            state.garbage = knob == "garbage";
            state.oversized = knob == "oversized";
        }
        let before = metric(&metrics(&node).await, "iicp_heartbeat_failures_total");
        let mut counted = false;
        for _ in 0..100 {
            if metric(&metrics(&node).await, "iicp_heartbeat_failures_total") > before {
                counted = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(counted, "{knob} answer was not counted as a failure");
        let result = health(&node).await["directory"]["last_heartbeat_result"]
            .as_str()
            .unwrap()
            .to_string();
        assert_ne!(result, "ok", "{knob}");
        assert_eq!(post_task(&node, &chat_task(knob)).await.0, 200, "{knob}");
    }
    {
        let mut state = fake.state.lock().unwrap();
        state.heartbeat_delay = Duration::ZERO;
        state.garbage = false;
        state.oversized = false;
    }
    let mut recovered = false;
    for _ in 0..150 {
        if health(&node).await["directory"]["last_heartbeat_result"] == "ok" {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "heartbeats did not recover");
}

#[tokio::test(flavor = "multi_thread")]
async fn credit_receipts_are_signed_and_never_slow_tasks() {
    let fake = FakeDirectory::start().await;
    let (_dir, node) = join_directory(&fake, "receipt_queue = 2", 1).await;
    let mut with_source = chat_task("r-0");
    with_source["source_node_id"] = json!("consumer-node-7");
    assert_eq!(post_task(&node, &with_source).await.0, 200);
    for i in 1..3 {
        assert_eq!(post_task(&node, &chat_task(&format!("r-{i}"))).await.0, 200);
    }
    assert!(fake.wait_for(WAIT, |s| s.receipt_checks.len() >= 3).await);
    assert!(
        fake.state
            .lock()
            .unwrap()
            .receipt_checks
            .iter()
            .all(|ok| *ok)
    );
    let awards = fake.requests("/v1/credits/award");
    let first = &awards[0].body;
    assert_eq!(first["task_id"], "r-0");
    assert_eq!(first["tokens_used"], 6);
    assert_eq!(first["amount"], 0.006);
    assert_eq!(first["reason"], "task_completion");
    // An anonymous consumer's `source_node_id` is its unproved claim: the
    // receipt does not carry it (see protocol_rules.rs for a proved one).
    assert!(first.get("querying_node_id").is_none(), "{first}");
    assert_eq!(first["response_hash"].as_str().unwrap().len(), 64);
    let expires = first["expires_at"].as_str().unwrap();
    assert!(
        expires.len() == 20 && expires.ends_with('Z') && expires.contains('T'),
        "{expires}"
    );

    // A directory that takes 30 s per receipt: tasks do not wait for it
    // (one that did would take 30 s; no tighter bound, a loaded machine is
    // slow), the queue (2 deep) overflows and the overflow is counted.
    let award_delay = Duration::from_secs(30);
    fake.state.lock().unwrap().award_delay = award_delay;
    for i in 0..10 {
        let started = std::time::Instant::now();
        assert_eq!(
            post_task(&node, &chat_task(&format!("fast-{i}"))).await.0,
            200
        );
        assert!(
            started.elapsed() < award_delay,
            "a task waited for its receipt"
        );
    }
    let text = metrics(&node).await;
    assert!(
        metric(&text, r#"iicp_credit_receipts_total{result="dropped"}"#) >= 5.0,
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_key_signs_pricing_while_challenges_use_the_directory_key() {
    let fake = FakeDirectory::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &fake,
        "hmac_key_env = \"IICP_TEST_OPERATOR_KEY\"",
    );
    let node = Node::start_config_env(
        &config,
        &[],
        &[("IICP_TEST_OPERATOR_KEY", "operator-secret")],
    );
    wait_heartbeats(&fake, 3).await;
    let register = &fake.requests("/v1/register")[0].body;
    let expected = hmac_hex(
        "operator-secret",
        r#"{"credit_cost_multiplier":1.5,"pricing_model":"per_token"}"#,
    );
    assert_eq!(register["pricing"]["declaration_signature"], expected);
    assert_eq!(register["node_hmac_key"], "operator-secret");
    {
        let state = fake.state.lock().unwrap();
        assert!(state.pricing_checks.iter().all(|ok| *ok) && !state.pricing_checks.is_empty());
        assert!(state.challenge_checks.iter().all(|ok| *ok) && !state.challenge_checks.is_empty());
    }
    assert!(!node.log_text().contains("operator-secret"));
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_deregisters_after_draining() {
    let fake = FakeDirectory::start().await;
    let (_dir, mut node) = join_directory(&fake, "", 1).await;
    let node_id = fake.requests("/v1/register")[0].body["node_id"]
        .as_str()
        .unwrap()
        .to_string();
    let token = first_token(&fake, &node_id);
    node.terminate();
    let exit = node.wait_exit(Duration::from_secs(15)).expect("exited");
    assert!(exit.success());
    {
        let state = fake.state.lock().unwrap();
        assert_eq!(state.deregistrations.len(), 1);
        let (bearer, body) = &state.deregistrations[0];
        assert_eq!(bearer.as_deref(), Some(token.as_str()));
        assert_eq!(body["node_id"], node_id);
        assert!(state.nodes.is_empty());
    }
    assert!(
        node.log_entries()
            .iter()
            .any(|e| message(e) == "deregistered from the directory")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn node_id_and_token_survive_a_restart() {
    let fake = FakeDirectory::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &fake, "");
    let state_dir = dir.path().join("state");
    let state_arg = state_dir.display().to_string();
    let first = Node::start_config(&config, &["--state-dir", &state_arg]);
    wait_heartbeats(&fake, 1).await;
    let node_id = fake.requests("/v1/register")[0].body["node_id"]
        .as_str()
        .unwrap()
        .to_string();
    let token = first_token(&fake, &node_id);
    drop(first); // killed: no deregistration, as after a crash

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for file in ["node_id", "directory.json"] {
            let mode = std::fs::metadata(state_dir.join(file))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{file}");
        }
    }
    let _second = Node::start_config(&config, &["--state-dir", &state_arg]);
    assert!(fake.wait_for(WAIT, |s| s.registrations >= 2).await);
    let again = &fake.requests("/v1/register")[1].body;
    assert_eq!(again["node_id"], node_id);
    assert_eq!(again["current_node_token"], token);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_directory_the_node_says_so_once_and_serves() {
    let node = Node::start(&plugin("echo"), &[]);
    let standalone: Vec<_> = node
        .log_entries()
        .into_iter()
        .filter(|e| message(e) == "no directory configured; serving standalone")
        .collect();
    assert_eq!(standalone.len(), 1);
    assert!(health(&node).await["directory"].is_null());
    assert_eq!(post_task(&node, &chat_task("alone")).await.0, 200);
}

/// The lifecycle's documented ceiling: requests a failure episode of
/// `window` may cost, `2·(N + 1)` with N the failures whose shortest waits
/// fit in the window (each at least `max(floor, min(b0·2ⁿ⁻¹, bmax)/2)`).
fn most_requests_while_failing(window: Duration) -> usize {
    let mut waited = Duration::ZERO;
    let mut failures = 0;
    loop {
        let step =
            Duration::from_millis((BACKOFF_INITIAL_MS << failures.min(20)).min(BACKOFF_MAX_MS) / 2)
                .max(Duration::from_millis(RETRY_FLOOR_MS));
        if waited + step > window {
            return 2 * (failures + 1);
        }
        waited += step;
        failures += 1;
    }
}

/// Requests to `paths` in the first `window` after the first of them.
fn requests_in_window(fake: &FakeDirectory, paths: &[&str], window: Duration) -> usize {
    let state = fake.state.lock().unwrap();
    let mut times = state
        .requests
        .iter()
        .filter(|r| paths.contains(&r.path.as_str()))
        .map(|r| r.at);
    let Some(first) = times.next() else {
        return 0;
    };
    1 + times.filter(|at| *at - first <= window).count()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_directory_that_accepts_registrations_but_refuses_every_heartbeat_is_backed_off() {
    let fake = FakeDirectory::start().await;
    fake.state.lock().unwrap().heartbeat_canned = Some(Canned::status(404, &[]));
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start_config(&write_config(dir.path(), &fake, ""), &[]);
    let window = Duration::from_secs(6);
    let observed = fake
        .wait_for(window + WAIT, |s| {
            s.requests
                .last()
                .zip(s.requests.first())
                .is_some_and(|(last, first)| last.at - first.at > window)
        })
        .await;
    assert!(observed, "the node stopped asking");
    let sent = requests_in_window(&fake, &["/v1/register", "/v1/heartbeat"], window);
    let ceiling = most_requests_while_failing(window);
    eprintln!("404 storm: {sent} requests in {window:?} (documented ceiling {ceiling})");
    assert!(
        sent <= ceiling,
        "{sent} requests in {window:?}, ceiling {ceiling}"
    );
    assert!(
        fake.requests("/v1/register").len() >= 3,
        "gave up registering"
    );
    // Every registration rotated the token; the file was written at most
    // once per 10 s.
    let writes = metric(&metrics(&node).await, "iicp_credential_writes_total");
    assert!((1.0..=2.0).contains(&writes), "{writes} credential writes");

    // Once heartbeats are accepted again, the node is registered.
    fake.state.lock().unwrap().heartbeat_canned = None;
    let before = fake.requests("/v1/heartbeat").len();
    wait_heartbeats(&fake, before + 2).await;
    assert_eq!(health(&node).await["directory"]["registered"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_after_zero_and_500_storms_are_floored_and_backed_off() {
    for canned in [
        Canned::status(503, &[("retry-after", "0")]),
        Canned::status(500, &[]),
    ] {
        let fake = FakeDirectory::start().await;
        let (_dir, node) = join_directory(&fake, "", 1).await;
        let start = fake.state.lock().unwrap().requests.len();
        fake.state.lock().unwrap().heartbeat_canned = Some(canned.clone());
        let window = Duration::from_secs(4);
        assert!(
            fake.wait_for(window + WAIT, |s| s.requests.len() > start
                && s.requests.last().unwrap().at - s.requests[start].at > window)
                .await
        );
        let sent = {
            let state = fake.state.lock().unwrap();
            let first = state.requests[start].at;
            state.requests[start..]
                .iter()
                .filter(|r| r.at - first <= window)
                .count()
        };
        // Each refused heartbeat is one request.
        let ceiling = most_requests_while_failing(window) / 2;
        eprintln!(
            "HTTP {} storm: {sent} heartbeats in {window:?} (ceiling {ceiling})",
            canned.status
        );
        assert!(sent <= ceiling, "{sent} heartbeats, ceiling {ceiling}");
        assert_eq!(post_task(&node, &chat_task("storm")).await.0, 200);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn redirects_are_never_followed() {
    let elsewhere = FakeDirectory::start().await;
    let fake = FakeDirectory::start().await;
    let location = format!("{}/v1/register", elsewhere.url());
    fake.state.lock().unwrap().register_canned =
        Some(Canned::status(307, &[("location", &location)]));
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start_config(&write_config(dir.path(), &fake, ""), &[]);
    assert!(
        fake.wait_for(WAIT, |s| s
            .requests
            .iter()
            .filter(|r| r.path == "/v1/register")
            .count()
            >= 3)
            .await
    );
    assert!(
        elsewhere.state.lock().unwrap().requests.is_empty(),
        "the register body (token, HMAC key) followed a redirect"
    );
    assert_eq!(health(&node).await["directory"]["registered"], false);
    fake.state.lock().unwrap().register_canned = None;
    wait_heartbeats(&fake, 1).await;
    assert_eq!(health(&node).await["directory"]["registered"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_receipt_queue_is_bounded_in_bytes_as_well_as_count() {
    const QUEUE_BYTES: f64 = 65536.0;
    let fake = FakeDirectory::start().await;
    let (_dir, node) = join_directory(
        &fake,
        "receipt_queue = 1000\nreceipt_queue_bytes = 65536",
        1,
    )
    .await;
    fake.state.lock().unwrap().award_delay = Duration::from_secs(5);
    // Each echoed result is ~16 KiB: four fit in the bytes, not twelve.
    let text = "x".repeat(16 << 10);
    for i in 0..12 {
        let (status, _, body) = post_task(
            &node,
            &task(&format!("big-{i}"), ECHO, json!({"text": text})),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    let text = metrics(&node).await;
    let queued = metric(&text, "iicp_credit_receipt_queue_bytes");
    assert!(
        queued > 0.0 && queued <= QUEUE_BYTES,
        "{queued} bytes queued"
    );
    let dropped = metric(&text, r#"iicp_credit_receipts_total{result="dropped"}"#);
    assert!(dropped >= 6.0, "{dropped} dropped\n{text}");
}
