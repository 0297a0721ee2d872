//! IICP-CX end to end: the node advertises its key at REGISTER, opens tasks
//! a consumer encrypted for that key (one of them made by the reference
//! Python consumer), seals the response of every encrypted task (asked or
//! not), keeps its key across restarts, and answers broken envelopes with
//! the protocol's error envelope.

mod common;

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use common::cx::{CHAT, chat_content, encrypted_task, open_response};
use common::fake_directory::FakeDirectory;
use common::{Node, error_of, fresh_state_dir, plugin, post_task, task};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(15);

/// Posts `body` and asserts a 400 `code` whose message mentions `about`.
async fn assert_refused(node: &Node, body: &Value, code: &str, about: &str) {
    let (status, _, refused) = post_task(node, body).await;
    assert_eq!(status, 400, "{refused}");
    let error = error_of(&refused);
    assert_eq!(error["code"], code);
    let message = error["message"].as_str().unwrap_or_default();
    assert!(message.contains(about), "{message}");
}

fn directory_node(fake: &FakeDirectory, state_dir: &Path, extra: &[&str]) -> Node {
    let url = fake.url();
    let state = state_dir.display().to_string();
    let mut args = vec!["--directory", &url, "--state-dir", &state];
    args.extend_from_slice(extra);
    Node::start(&plugin("echo"), &args)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_envelope_made_by_the_reference_consumer_is_opened_and_the_answer_sealed() {
    let fixture: Value = serde_json::from_str(include_str!("fixtures/cx_reference_envelope.json"))
        .expect("fixture JSON");
    let state_dir = fresh_state_dir();
    std::fs::create_dir_all(&state_dir).unwrap();
    let key_file = json!({"algorithm": "X25519", "private_key": fixture["node_secret_b64url"]});
    std::fs::write(state_dir.join("cx_key.json"), key_file.to_string()).unwrap();
    let node = Node::start(
        &plugin("echo"),
        &["--state-dir", &state_dir.display().to_string()],
    );
    let task_id = fixture["task_id"].as_str().unwrap();
    let shared = B64
        .decode(fixture["shared_secret_b64url"].as_str().unwrap())
        .unwrap();
    let mut body = json!({
        "task_id": task_id,
        "intent": fixture["intent"],
        "iicp_conf": fixture["iicp_conf"],
        "cx_response_encryption": "required",
    });

    let (status, _, sealed) = post_task(&node, &body).await;
    assert_eq!(status, 200, "{sealed}");
    let opened = open_response(&sealed, &shared, task_id);
    assert_eq!(opened["task_id"], task_id);
    assert_eq!(opened["status"], "success");
    assert_eq!(chat_content(&opened), "sealed hello");
    assert!(opened["metrics"]["latency_ms"].is_u64(), "{opened}");

    // A hop that deletes the request for a sealed answer still gets only
    // the sealed answer: the field is outside the envelope's AAD.
    body.as_object_mut()
        .unwrap()
        .remove("cx_response_encryption");
    let (status, _, sealed) = post_task(&node, &body).await;
    assert_eq!(status, 200, "{sealed}");
    assert_eq!(
        chat_content(&open_response(&sealed, &shared, task_id)),
        "sealed hello"
    );

    // The envelope is bound to its own task id and intent.
    body["task_id"] = json!("another-task");
    assert_refused(&node, &body, "IICP-CX-02", "aad").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_advertised_key_opens_consumer_tasks_and_survives_a_restart() {
    let fake = FakeDirectory::start().await;
    let state_dir = fresh_state_dir();
    let mut node = directory_node(&fake, &state_dir, &[]);
    let advertised = fake.registrations(1, WAIT).await[0]["cx_public_key"].clone();
    assert_eq!(advertised["algorithm"], "X25519");
    assert_eq!(advertised["encoding"], "base64url");
    assert_eq!(advertised["features"], json!(["response_encryption_v1"]));
    let key_id = advertised["key_id"].as_str().expect("key_id");
    assert!(
        key_id.len() == 19 && key_id.starts_with("cx-"),
        "key_id {key_id}"
    );

    let payload = json!({"messages": [{"role": "user", "content": "for your eyes only"}]});
    let (body, shared) = encrypted_task(&advertised, "cx-1", &payload);
    let (status, _, sealed) = post_task(&node, &body).await;
    assert_eq!(status, 200, "{sealed}");
    assert_eq!(
        chat_content(&open_response(&sealed, &shared, "cx-1")),
        "for your eyes only"
    );

    // Broken envelopes and requests: the error envelope, and serving goes on.
    let mut tampered = body.clone();
    let mut ciphertext = B64
        .decode(tampered["iicp_conf"]["encrypted_body"].as_str().unwrap())
        .unwrap();
    ciphertext[3] ^= 0x40;
    tampered["iicp_conf"]["encrypted_body"] = json!(B64.encode(ciphertext));
    assert_refused(&node, &tampered, "IICP-CX-02", "tampered").await;
    let mut missing = body.clone();
    missing["iicp_conf"]
        .as_object_mut()
        .unwrap()
        .remove("kem_ciphertext");
    assert_refused(&node, &missing, "IICP-CX-02", "kem_ciphertext").await;
    let mut clear_but_sealed = task("cx-2", CHAT, payload.clone());
    clear_but_sealed["cx_response_encryption"] = json!("required");
    assert_refused(&node, &clear_but_sealed, "IICP-CX-03", "not encrypted").await;
    let (status, _, clear) = post_task(&node, &task("cx-3", CHAT, payload)).await;
    assert_eq!(status, 200, "{clear}");

    // The key lives in the state directory: a restarted node advertises it
    // again, and a task sealed for it before the restart still opens.
    node.terminate();
    node.wait_exit(WAIT).expect("node exits");
    let restarted = directory_node(&fake, &state_dir, &[]);
    let again = fake.registrations(2, WAIT).await;
    assert_eq!(again.last().unwrap()["cx_public_key"], advertised);
    let (status, _, sealed) = post_task(&restarted, &body).await;
    assert_eq!(status, 200, "{sealed}");
    open_response(&sealed, &shared, "cx-1");
}

#[tokio::test(flavor = "multi_thread")]
async fn turned_off_it_advertises_no_key_and_refuses_encrypted_tasks() {
    let fake = FakeDirectory::start().await;
    let node = directory_node(&fake, &fresh_state_dir(), &["--no-confidentiality"]);
    let register = &fake.registrations(1, WAIT).await[0];
    assert!(register.get("cx_public_key").is_none(), "{register}");

    let someone_else = json!({"key": B64.encode([9u8; 32]), "key_id": "cx-0000000000000000"});
    let (body, _) = encrypted_task(&someone_else, "cx-off", &json!({"messages": []}));
    assert_refused(&node, &body, "IICP-CX-02", "turned off").await;
}

/// A hop on the path strips `cx_response_encryption` to read the answer, and
/// sends a payload the plugin refuses with a message quoting it: the answer
/// is sealed all the same, and the error envelope, which travels in clear,
/// does not quote the payload.
#[tokio::test(flavor = "multi_thread")]
async fn a_hop_stripping_the_response_encryption_request_reads_nothing() {
    let fake = FakeDirectory::start().await;
    let node = directory_node(&fake, &fresh_state_dir(), &[]);
    let advertised = fake.registrations(1, WAIT).await[0]["cx_public_key"].clone();
    let secret = "the hop must not read this";

    let payload = json!({"messages": [{"role": "user", "content": secret}]});
    let (mut body, shared) = encrypted_task(&advertised, "cx-strip-1", &payload);
    body.as_object_mut()
        .unwrap()
        .remove("cx_response_encryption");
    let (status, _, answer) = post_task(&node, &body).await;
    assert_eq!(status, 200, "{answer}");
    assert!(
        !answer.to_string().contains(secret),
        "read by the hop: {answer}"
    );
    assert_eq!(
        chat_content(&open_response(&answer, &shared, "cx-strip-1")),
        secret
    );

    // The echo plugin refuses a chat payload whose `messages` is a string,
    // and its message quotes the string.
    let refused_payload = json!({"messages": secret});
    let (mut body, _) = encrypted_task(&advertised, "cx-strip-2", &refused_payload);
    body.as_object_mut()
        .unwrap()
        .remove("cx_response_encryption");
    let (status, _, refused) = post_task(&node, &body).await;
    assert_eq!(status, 422, "{refused}");
    assert!(
        !refused.to_string().contains(secret),
        "read by the hop: {refused}"
    );
    assert_eq!(error_of(&refused)["code"], "validation_error");
    assert_eq!(refused["task_id"], "cx-strip-2");
    // The same payload in clear keeps the plugin's message.
    let (status, _, clear) = post_task(&node, &task("cx-strip-3", CHAT, refused_payload)).await;
    assert_eq!(status, 422, "{clear}");
    assert!(clear.to_string().contains(secret), "{clear}");
}
