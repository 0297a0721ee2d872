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
    let body = json!({"known_peers": listed(3, "sdk")}).to_string();
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
    let body = json!({"known_peers": flood}).to_string();
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

/// A peer played by the test: records exchanges and answers with one peer.
async fn recording_peer() -> (String, Arc<Mutex<Vec<(HeaderMap, Bytes)>>>) {
    let seen: Arc<Mutex<Vec<(HeaderMap, Bytes)>>> = Arc::default();
    let record = seen.clone();
    let app = axum::Router::new().route(
        "/v1/peers",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let record = record.clone();
            async move {
                record.lock().unwrap().push((headers, body));
                let answer = json!({
                    "new_peers": [{"node_id": "far-1", "endpoint": "http://far-1.example:8080", "region": "eu", "last_seen_ms": now_ms()}],
                    "receiver_id": "seed-1",
                });
                ([("content-type", "application/json")], answer.to_string())
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
    let config = peers_config(&format!("gossip_interval_ms = 200\nseeds = [{seed:?}]"));
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
    let deadline = std::time::Instant::now() + WAIT;
    while seen.lock().unwrap().len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "no gossip reached the seed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
        if metric_value(&text, &series("private_address")) >= 4.0 {
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
