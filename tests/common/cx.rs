//! IICP-CX as a default consumer does it (`protocol.md` §1.6): seal a
//! task for a node's advertised key, open its sealed answer.

#![allow(dead_code)]

use aes_gcm::aead::OsRng;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use iicp_reliability::cx;
use serde_json::{Value, json};
use x25519_dalek::{PublicKey, StaticSecret};

/// The intent the echo plugin answers in chat form.
pub const CHAT: &str = "urn:iicp:intent:llm:chat:v1";

/// What a default consumer sends for `payload` to a node advertising
/// `cx_public_key`; returns the body and the session secret.
pub fn encrypted_task(cx_public_key: &Value, task_id: &str, payload: &Value) -> (Value, Vec<u8>) {
    encrypted_task_for(cx_public_key, task_id, CHAT, payload)
}

/// Gives the node started with `state_dir` a fresh key (before it starts)
/// and returns the `cx_public_key` it will advertise.
pub fn node_key_in(state_dir: &std::path::Path) -> Value {
    use sha2::Digest;
    let secret = StaticSecret::random_from_rng(OsRng);
    std::fs::create_dir_all(state_dir).unwrap();
    let file = json!({"algorithm": "X25519", "private_key": B64.encode(secret.to_bytes())});
    std::fs::write(state_dir.join("cx_key.json"), file.to_string()).unwrap();
    let public = PublicKey::from(&secret);
    let digest = hex::encode(sha2::Sha256::digest(public.as_bytes()));
    json!({"key": B64.encode(public.as_bytes()), "key_id": format!("cx-{}", &digest[..16])})
}

/// What a default consumer sends for `payload` under `intent` (sealed
/// as the reliability suite seals it, asking for a sealed answer).
pub fn encrypted_task_for(
    cx_public_key: &Value,
    task_id: &str,
    intent: &str,
    payload: &Value,
) -> (Value, Vec<u8>) {
    let (mut body, shared) =
        cx::sealed_task_without_response_field(cx_public_key, task_id, intent, payload);
    body["cx_response_encryption"] = json!("required");
    (body, shared)
}

/// Opens a sealed 200 body the way the consumer does.
pub fn open_response(body: &Value, shared: &[u8], task_id: &str) -> Value {
    assert_eq!(body["status"], "encrypted", "{body}");
    assert!(body.get("result").is_none(), "no clear result: {body}");
    assert_eq!(body["iicp_conf_resp"]["version"], 1);
    cx::open_answer(body, shared, task_id).expect("the consumer can open the sealed response")
}

pub fn chat_content(response: &Value) -> &str {
    response["result"]["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_else(|| panic!("no chat content in {response}"))
}
