//! Peer gossip end to end (`POST /v1/peers`, `iicp-dir.md` §3.6): both
//! signature forms are accepted and answered in their own shape, every bad
//! signature, replay, stale or unknown sender is refused with its code, the
//! table stays bounded, outgoing gossip is signed and carries no
//! credential, and two nodes learn each other.

mod common;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::http::HeaderMap;
use common::fake_directory::{FakeDirectory, NodeRecord, hmac_hex};
use common::{Node, client, echo_config, error_of, metric_value, metrics, plugin};
use ed25519_dalek::{Signer, SigningKey};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);
const MESH_KEY: &str = "a shared mesh secret";

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A config serving echo with `[peers]` set to `table` (on loopback, so
/// private addresses are allowed).
fn peers_config(table: &str) -> PathBuf {
    echo_config(&format!("[peers]\nallow_private_endpoints = true\n{table}"))
}

async fn exchange(node: &Node, body: &[u8], signature: Option<&str>) -> (u16, Value) {
    let mut request = client()
        .post(node.url("/v1/peers"))
        .header("content-type", "application/json")
        .body(body.to_vec());
    if let Some(signature) = signature {
        request = request.header("x-iicp-signature", signature);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn listed(count: usize, prefix: &str) -> Vec<Value> {
    (0..count)
        .map(|i| {
            json!({"node_id": format!("{prefix}-{i}"), "endpoint": format!("http://{prefix}-{i}.example:8080"), "region": "eu"})
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn both_signature_forms_are_checked_and_answered() {
    let fake = FakeDirectory::start().await;
    let sender = SigningKey::from_bytes(&[11; 32]);
    fake.state.lock().unwrap().nodes.insert(
        "peer-x".into(),
        NodeRecord {
            token: "t".into(),
            hmac_key: "k".into(),
            endpoint: "http://peer-x.example:8080".into(),
            challenge: None,
            operator_key: None,
            gossip_key: Some(hex::encode(sender.verifying_key().to_bytes())),
        },
    );
    let directory = fake.url();
    let config = peers_config(
        "max_peers = 16\nmin_sender_interval_ms = 0\nhmac_key_env = \"IICP_TEST_MESH_KEY\"",
    );
    let node = Node::start_config_env(
        &config,
        &["--directory", &directory, "--node-id", "receiver-1"],
        &[("IICP_TEST_MESH_KEY", MESH_KEY)],
    );

    // The reference SDK's form: HMAC with the mesh key; peers merge and the
    // answer lists what the node knows.
    let body = json!({"known_peers": listed(3, "sdk"), "timestamp_ms": now_ms()}).to_string();
    let (status, answer) = exchange(&node, body.as_bytes(), Some(&hmac_hex(MESH_KEY, &body))).await;
    assert_eq!(status, 200, "{answer}");
    let peers = answer["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 3, "{answer}");
    assert!(
        peers
            .iter()
            .all(|p| p["last_seen"].as_str().unwrap().ends_with('Z'))
    );
    let (status, replay) = exchange(&node, body.as_bytes(), Some(&hmac_hex(MESH_KEY, &body))).await;
    assert_eq!(
        (status, error_of(&replay)["code"].clone()),
        (409, json!("conflict"))
    );
    let (status, wrong) = exchange(&node, body.as_bytes(), Some(&hmac_hex("other", &body))).await;
    assert_eq!(
        (status, error_of(&wrong)["code"].clone()),
        (401, json!("IICP-E012"))
    );
    let (status, unsigned) = exchange(&node, body.as_bytes(), None).await;
    assert_eq!(
        (status, error_of(&unsigned)["code"].clone()),
        (401, json!("unauthorized"))
    );

    // The spec's form: Ed25519 by the key the directory holds for the sender.
    let signed = |body: &str| hex::encode(sender.sign(body.as_bytes()).to_bytes());
    let body = json!({"sender_id": "peer-x", "known_peers": ["sdk-0"], "timestamp_ms": now_ms()})
        .to_string();
    let (status, answer) = exchange(&node, body.as_bytes(), Some(&signed(&body))).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["receiver_id"], "receiver-1");
    let new: Vec<&str> = answer["new_peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["node_id"].as_str().unwrap())
        .collect();
    assert!(
        new.contains(&"sdk-1") && !new.contains(&"sdk-0"),
        "{answer}"
    );
    assert!(answer["new_peers"][0]["last_seen_ms"].is_u64());
    let (status, replay) = exchange(&node, body.as_bytes(), Some(&signed(&body))).await;
    assert_eq!(
        (status, error_of(&replay)["code"].clone()),
        (409, json!("conflict"))
    );
    let other =
        json!({"sender_id": "peer-x", "known_peers": [], "timestamp_ms": now_ms()}).to_string();
    let (status, forged) = exchange(&node, other.as_bytes(), Some(&signed(&body))).await;
    assert_eq!(
        (status, error_of(&forged)["code"].clone()),
        (403, json!("forbidden"))
    );
    let stale =
        json!({"sender_id": "peer-x", "known_peers": [], "timestamp_ms": now_ms() - 120_000})
            .to_string();
    let (status, old) = exchange(&node, stale.as_bytes(), Some(&signed(&stale))).await;
    assert_eq!(
        (status, error_of(&old)["code"].clone()),
        (422, json!("validation_error"))
    );
    let stranger =
        json!({"sender_id": "peer-unknown", "known_peers": [], "timestamp_ms": now_ms()})
            .to_string();
    let (status, unknown) = exchange(&node, stranger.as_bytes(), Some(&signed(&stranger))).await;
    assert_eq!(
        (status, error_of(&unknown)["code"].clone()),
        (403, json!("forbidden"))
    );

    // Bounded: a flood of entries (some unusable) leaves at most max_peers.
    let mut flood = listed(500, "flood");
    flood.push(json!({"node_id": "bad id", "endpoint": "http://x.example"}));
    flood.push(json!({"node_id": "ftp-1", "endpoint": "ftp://x.example"}));
    let body = json!({"known_peers": flood, "timestamp_ms": now_ms()}).to_string();
    let (status, _) = exchange(&node, body.as_bytes(), Some(&hmac_hex(MESH_KEY, &body))).await;
    assert_eq!(status, 200);
    let text = metrics(&node).await;
    let active = metric_value(&text, "iicp_peers_active ");
    assert!(active > 0.0 && active <= 16.0, "{active}");
    assert!(metric_value(&text, r#"iicp_peer_refusals_total{reason="replayed"}"#) >= 2.0);

    // Off by default: a node without [peers] has no such route.
    let plain = Node::start(&plugin("echo"), &[]);
    assert_eq!(exchange(&plain, b"{}", None).await.0, 404);
}

/// The gossip key of the peer [`recording_peer`] plays.
fn seed_key() -> SigningKey {
    SigningKey::from_bytes(&[31; 32])
}

/// A peer played by the test, `seed-1` signing with [`seed_key`]: records
/// exchanges and answers with one peer.
async fn recording_peer() -> (String, Arc<Mutex<Vec<(HeaderMap, Bytes)>>>) {
    let seen: Arc<Mutex<Vec<(HeaderMap, Bytes)>>> = Arc::default();
    let record = seen.clone();
    let app = axum::Router::new().route(
        "/v1/peers",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let record = record.clone();
            async move {
                record.lock().unwrap().push((headers, body));
                let (headers, body) = answer_signed_by(
                    Some(&seed_key()),
                    "seed-1",
                    vec![entry("far-1", "http://far-1.example:8080")],
                );
                let signature = headers[0].1.clone();
                (
                    [
                        ("content-type", "application/json".to_string()),
                        ("x-iicp-signature", signature),
                    ],
                    body,
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

#[tokio::test(flavor = "multi_thread")]
async fn outgoing_gossip_is_signed_and_carries_no_credential() {
    let fake = FakeDirectory::start().await;
    let (seed, seen) = recording_peer().await;
    let config = peers_config(&format!(
        "gossip_interval_ms = 200\nseeds = [{seed:?}]\n[peers.trusted_keys]\nseed-1 = {:?}\n",
        hex::encode(seed_key().verifying_key().to_bytes())
    ));
    let directory = fake.url();
    let node = Node::start_config(
        &config,
        &["--directory", &directory, "--node-id", "gossiper"],
    );
    let register = fake.registrations(1, WAIT).await.remove(0);
    let key = register["gossip_public_key"]
        .as_str()
        .expect("gossip key at REGISTER");
    // The request is recorded before the directory answers it.
    assert!(
        fake.wait_for(WAIT, |state| state.nodes.contains_key("gossiper"))
            .await,
        "the node did not register"
    );
    let token = fake.state.lock().unwrap().nodes["gossiper"].token.clone();
    common::wait_until("gossip to reach the seed", WAIT, || async {
        seen.lock().unwrap().len() >= 2
    })
    .await;
    let key: [u8; 32] = hex::decode(key).unwrap().try_into().unwrap();
    let verifying = ed25519_dalek::VerifyingKey::from_bytes(&key).unwrap();
    for (headers, body) in seen.lock().unwrap().iter() {
        assert!(headers.get("authorization").is_none());
        let everything = format!("{headers:?}{}", String::from_utf8_lossy(body));
        assert!(!everything.contains(&token), "node_token sent to a peer");
        assert!(!everything.contains("node_token"));
        let exchange: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(exchange["sender_id"], "gossiper");
        let signature: [u8; 64] = hex::decode(headers["x-iicp-signature"].to_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap();
        verifying
            .verify_strict(body, &ed25519_dalek::Signature::from_bytes(&signature))
            .expect("the signature verifies with the registered gossip key");
    }
    // It learned the seed (by its receiver_id) and the peer the seed named.
    let text = metrics(&node).await;
    assert_eq!(metric_value(&text, "iicp_peers_active "), 2.0, "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_nodes_learn_each_other() {
    let fake = FakeDirectory::start().await;
    let directory = fake.url();
    let b = Node::start_config(
        &peers_config("gossip_interval_ms = 200\nmin_sender_interval_ms = 0"),
        &["--directory", &directory, "--node-id", "node-b"],
    );
    let seed = format!("http://{}", b.addr);
    let a = Node::start_config(
        &peers_config(&format!("gossip_interval_ms = 200\nseeds = [{seed:?}]")),
        &["--directory", &directory, "--node-id", "node-a"],
    );
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (at_a, at_b) = (
            metric_value(&metrics(&a).await, "iicp_peers_active "),
            metric_value(&metrics(&b).await, "iicp_peers_active "),
        );
        if at_a >= 1.0 && at_b >= 1.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a knows {at_a}, b knows {at_b}; b's log:\n{}",
            b.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn private_peers_are_never_contacted_unless_allowed() {
    // The same loopback peer, once as an IP literal and once by a name
    // that resolves to loopback: both refused before anything is sent.
    let (seed, seen) = recording_peer().await;
    let port = seed.rsplit(':').next().unwrap();
    let by_name = format!("http://localhost:{port}");
    let config = echo_config(&format!(
        "[peers]\ngossip_interval_ms = 100\nseeds = [{seed:?}, {by_name:?}]"
    ));
    let node = Node::start_config(&config, &["--node-id", "careful"]);
    let series =
        |result: &str| format!(r#"iicp_peer_exchanges_total{{direction="out",result="{result}"}}"#);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let text = metrics(&node).await;
        if common::polled_sample(&text, &series("private_address")) >= 4.0 {
            assert_eq!(metric_value(&text, &series("ok")), 0.0, "{text}");
            assert_eq!(metric_value(&text, &series("unreachable")), 0.0, "{text}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        seen.lock().unwrap().is_empty(),
        "a private peer was contacted"
    );
}

/// The exchanges a test-side peer was sent.
type Recorded = Arc<Mutex<Vec<(HeaderMap, Bytes)>>>;

/// What a scripted peer answers: headers and body, given how many
/// exchanges it has answered before.
type Script = Arc<dyn Fn(usize) -> (Vec<(String, String)>, String) + Send + Sync>;

/// A peer played by the test that answers every exchange by `script` and
/// records what it was sent.
async fn scripted_peer(script: Script) -> (String, Recorded) {
    let seen: Recorded = Arc::default();
    let record = seen.clone();
    let app = axum::Router::new().route(
        "/v1/peers",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let record = record.clone();
            let script = script.clone();
            async move {
                let answered = {
                    let mut record = record.lock().unwrap();
                    record.push((headers, body));
                    record.len() - 1
                };
                let (headers, body) = script(answered);
                let mut response =
                    axum::http::Response::builder().header("content-type", "application/json");
                for (name, value) in headers {
                    response = response.header(name, value);
                }
                response.body(axum::body::Body::from(body)).unwrap()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

/// A spec-form answer from `receiver_id` listing `new_peers`, signed by
/// `key` (when given).
fn answer_signed_by(
    key: Option<&SigningKey>,
    receiver_id: &str,
    new_peers: Vec<Value>,
) -> (Vec<(String, String)>, String) {
    let body =
        json!({"new_peers": new_peers, "receiver_id": receiver_id, "timestamp_ms": now_ms()})
            .to_string();
    let headers = key
        .map(|key| {
            vec![(
                "x-iicp-signature".to_string(),
                hex::encode(key.sign(body.as_bytes()).to_bytes()),
            )]
        })
        .unwrap_or_default();
    (headers, body)
}

fn entry(node_id: &str, endpoint: &str) -> Value {
    json!({"node_id": node_id, "endpoint": endpoint, "region": "eu", "last_seen_ms": now_ms()})
}

fn directory_knows(fake: &FakeDirectory, node_id: &str, key: &SigningKey) {
    fake.state.lock().unwrap().nodes.insert(
        node_id.into(),
        NodeRecord {
            token: "t".into(),
            hmac_key: "k".into(),
            endpoint: format!("http://{node_id}.invalid:8080"),
            challenge: None,
            operator_key: None,
            gossip_key: Some(hex::encode(key.verifying_key().to_bytes())),
        },
    );
}

/// Waits until every recorder holds at least `count` exchanges.
async fn wait_exchanged(recorders: &[&Recorded], count: usize) {
    let deadline = std::time::Instant::now() + WAIT;
    while recorders.iter().any(|r| r.lock().unwrap().len() < count) {
        assert!(
            std::time::Instant::now() < deadline,
            "the node did not exchange with every scripted peer"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The peers the node gossips on: its answer to a signed exchange.
async fn gossiped_by(node: &Node, asker: &SigningKey, asker_id: &str) -> Vec<Value> {
    let body =
        json!({"sender_id": asker_id, "known_peers": [], "timestamp_ms": now_ms()}).to_string();
    let signature = hex::encode(asker.sign(body.as_bytes()).to_bytes());
    let (status, answer) = exchange(node, body.as_bytes(), Some(&signature)).await;
    assert_eq!(status, 200, "{answer}");
    answer["new_peers"].as_array().unwrap().clone()
}

/// The attack of issue 19 part 5: peers the node asks answer with unsigned
/// entries, entries signed by a key that is not the answerer's, a captured
/// answer played back after six minutes, a flood of
/// entries stamped "now" and a known node id re-pointed at the attacker's
/// endpoint. Nothing of that is merged or gossiped on; the configured peer
/// and its trusted key stay.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_answers_merge_nothing_they_should_not() {
    let fake = FakeDirectory::start().await;
    let friend_key = SigningKey::from_bytes(&[21; 32]);
    let hostile_key = SigningKey::from_bytes(&[22; 32]);
    let asker_key = SigningKey::from_bytes(&[23; 32]);
    let stranger_key = SigningKey::from_bytes(&[24; 32]);
    directory_knows(&fake, "hostile-1", &hostile_key);
    directory_knows(&fake, "asker-1", &asker_key);

    // The configured friend: its key is trusted by configuration.
    let friend_answer = {
        let key = friend_key.clone();
        Arc::new(move |_| answer_signed_by(Some(&key), "friend-1", vec![])) as Script
    };
    let (friend, friend_seen) = scripted_peer(friend_answer).await;
    // Unsigned entries.
    let (unsigned, unsigned_seen) = scripted_peer(Arc::new(|_| {
        answer_signed_by(
            None,
            "unsigned-1",
            vec![entry("unsigned-9", "http://127.0.0.1:9")],
        )
    }))
    .await;
    // Entries claiming to come from the friend, signed by another key.
    let forger = {
        let key = stranger_key.clone();
        Arc::new(move |_| {
            answer_signed_by(
                Some(&key),
                "friend-1",
                vec![entry("forged-9", "http://127.0.0.1:9")],
            )
        }) as Script
    };
    let (forged, forged_seen) = scripted_peer(forger).await;
    // A captured answer of the friend's, six minutes old, played back.
    let replayer = {
        let key = friend_key.clone();
        Arc::new(move |_| {
            let body = json!({
                "new_peers": [entry("replayed-9", "http://127.0.0.1:9")],
                "receiver_id": "friend-1",
                "timestamp_ms": now_ms() - 360_000,
            })
            .to_string();
            let signature = hex::encode(key.sign(body.as_bytes()).to_bytes());
            (vec![("x-iicp-signature".to_string(), signature)], body)
        }) as Script
    };
    let (replayed, replayed_seen) = scripted_peer(replayer).await;
    // A peer the directory knows, validly signing a flood of fresh entries
    // and the friend's id re-pointed at itself.
    let hostile_url: Arc<Mutex<String>> = Arc::default();
    let hostile_script = {
        let key = hostile_key.clone();
        let url = hostile_url.clone();
        Arc::new(move |round: usize| {
            let mut listed: Vec<Value> = (0..500)
                .map(|i| entry(&format!("flood-{round}-{i}"), "http://127.0.0.1:9"))
                .collect();
            listed.insert(0, entry("friend-1", &url.lock().unwrap()));
            answer_signed_by(Some(&key), "hostile-1", listed)
        }) as Script
    };
    let (hostile, hostile_seen) = scripted_peer(hostile_script).await;
    *hostile_url.lock().unwrap() = hostile.clone();

    let config = peers_config(&format!(
        "max_peers = 64\nmin_sender_interval_ms = 0\ngossip_interval_ms = 200\n\
         merge_window_ms = 3600000\nmerge_entries_per_window = 8\n\
         seeds = [{friend:?}, {unsigned:?}, {forged:?}, {replayed:?}, {hostile:?}]\n\
         [peers.trusted_keys]\nfriend-1 = {:?}\n",
        hex::encode(friend_key.verifying_key().to_bytes())
    ));
    let directory = fake.url();
    let node = Node::start_config(&config, &["--directory", &directory, "--node-id", "victim"]);
    wait_exchanged(
        &[
            &friend_seen,
            &unsigned_seen,
            &forged_seen,
            &replayed_seen,
            &hostile_seen,
        ],
        1,
    )
    .await;
    // More rounds: the node now gossips with what it learned, the hostile
    // peer among them, whose every answer is a fresh flood.
    wait_exchanged(&[&hostile_seen], 3).await;

    let gossiped = gossiped_by(&node, &asker_key, "asker-1").await;
    let ids: Vec<&str> = gossiped
        .iter()
        .map(|p| p["node_id"].as_str().unwrap())
        .collect();
    assert!(
        !ids.iter().any(|id| ["unsigned", "forged", "replayed"]
            .iter()
            .any(|p| id.starts_with(p))),
        "entries without a valid signature were merged: {ids:?}"
    );
    let friend_entry = gossiped
        .iter()
        .find(|p| p["node_id"] == "friend-1")
        .unwrap_or_else(|| panic!("the configured friend is gone: {ids:?}"));
    assert_eq!(
        friend_entry["endpoint"], friend,
        "a third party re-pointed a known id"
    );
    let text = metrics(&node).await;
    let flooded = ids.iter().filter(|id| id.starts_with("flood")).count();
    assert!(flooded <= 8, "{flooded} flood entries gossiped on");
    let active = metric_value(&text, "iicp_peers_active ");
    assert!(
        active <= 2.0 + 8.0,
        "{active} peers after the flood\n{text}"
    );
    assert!(
        metric_value(
            &text,
            r#"iicp_peer_refusals_total{reason="unsigned_answer"}"#
        ) >= 1.0
    );
    assert!(metric_value(&text, r#"iicp_peer_refusals_total{reason="bad_signature"}"#) >= 1.0);
    assert!(metric_value(&text, r#"iicp_peer_refusals_total{reason="stale"}"#) >= 1.0);
    assert!(metric_value(&text, r#"iicp_peer_refusals_total{reason="repoint"}"#) >= 1.0);
    assert!(metric_value(&text, r#"iicp_peer_refusals_total{reason="merge_rate"}"#) >= 1.0);

    // The friend's configured key still verifies its exchanges.
    let body =
        json!({"sender_id": "friend-1", "known_peers": [], "timestamp_ms": now_ms()}).to_string();
    let signature = hex::encode(friend_key.sign(body.as_bytes()).to_bytes());
    let (status, answer) = exchange(&node, body.as_bytes(), Some(&signature)).await;
    assert_eq!(status, 200, "the trusted key was evicted: {answer}");
}

/// The reference SDK's HMAC form has no timestamp, so a captured body
/// verifies forever: one captured more than the replay window ago, whose
/// signature the node no longer remembers, is refused, and so is a body
/// without a timestamp unless the operator opts in.
#[tokio::test(flavor = "multi_thread")]
async fn a_captured_hmac_body_is_refused_after_the_replay_window() {
    let config = peers_config(
        "max_peers = 16\nmin_sender_interval_ms = 0\nhmac_key_env = \"IICP_TEST_MESH_KEY\"",
    );
    let node = Node::start_config_env(
        &config,
        &["--node-id", "receiver-2"],
        &[("IICP_TEST_MESH_KEY", MESH_KEY)],
    );
    let six_minutes_ago = now_ms() - 360_000;
    let captured =
        json!({"known_peers": listed(2, "old"), "timestamp_ms": six_minutes_ago}).to_string();
    let (status, answer) = exchange(
        &node,
        captured.as_bytes(),
        Some(&hmac_hex(MESH_KEY, &captured)),
    )
    .await;
    assert_eq!(
        (status, error_of(&answer)["code"].clone()),
        (401, json!("IICP-E012")),
        "{answer}"
    );
    let untimed = json!({"known_peers": listed(2, "untimed")}).to_string();
    let (status, answer) = exchange(
        &node,
        untimed.as_bytes(),
        Some(&hmac_hex(MESH_KEY, &untimed)),
    )
    .await;
    assert_eq!(
        (status, error_of(&answer)["code"].clone()),
        (401, json!("IICP-E012")),
        "{answer}"
    );
    let text = metrics(&node).await;
    assert_eq!(metric_value(&text, "iicp_peers_active "), 0.0, "{text}");
    assert!(metric_value(&text, r#"iicp_peer_refusals_total{reason="stale"}"#) >= 1.0);
    assert!(metric_value(&text, r#"iicp_peer_refusals_total{reason="untimed"}"#) >= 1.0);

    // A fresh timestamped body is taken, once.
    let fresh = json!({"known_peers": listed(2, "fresh"), "timestamp_ms": now_ms()}).to_string();
    let signature = hmac_hex(MESH_KEY, &fresh);
    assert_eq!(
        exchange(&node, fresh.as_bytes(), Some(&signature)).await.0,
        200
    );
    assert_eq!(
        exchange(&node, fresh.as_bytes(), Some(&signature)).await.0,
        409
    );
    assert_eq!(
        metric_value(&metrics(&node).await, "iicp_peers_active "),
        2.0
    );

    // The operator may opt in to the SDK's untimed bodies; each is still
    // taken once within the window.
    let lenient = Node::start_config_env(
        &peers_config(
            "min_sender_interval_ms = 0\nhmac_key_env = \"IICP_TEST_MESH_KEY\"\naccept_untimed_hmac = true",
        ),
        &["--node-id", "receiver-3"],
        &[("IICP_TEST_MESH_KEY", MESH_KEY)],
    );
    let signature = hmac_hex(MESH_KEY, &untimed);
    assert_eq!(
        exchange(&lenient, untimed.as_bytes(), Some(&signature))
            .await
            .0,
        200
    );
    assert_eq!(
        exchange(&lenient, untimed.as_bytes(), Some(&signature))
            .await
            .0,
        409
    );
}

/// `peers.call_timeout_ms` bounds a call to a peer that accepts and never
/// answers. The file says 120 s; the environment's 200 ms stacks over it, so
/// several exchanges give up well inside the wait (at 120 s not one would).
#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_peer_holds_a_gossip_call_only_for_call_timeout_ms() {
    let stalled = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let seed = format!("http://{}", stalled.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut connections = Vec::new();
        loop {
            let (connection, _) = stalled.accept().await.unwrap();
            connections.push(connection);
        }
    });
    let config = peers_config(&format!(
        "gossip_interval_ms = 100\ncall_timeout_ms = 120000\nseeds = [{seed:?}]"
    ));
    let node = Node::start_config_env(
        &config,
        &["--node-id", "patient"],
        &[("IICP_HOST_PEERS__CALL_TIMEOUT_MS", "200")],
    );
    let unreachable = r#"iicp_peer_exchanges_total{direction="out",result="unreachable"}"#;
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let text = metrics(&node).await;
        if common::polled_sample(&text, unreachable) >= 3.0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    held.abort();
}
