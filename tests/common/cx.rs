//! IICP-CX as a default consumer does it (`protocol.md` §1.6): seal a
//! task for a node's advertised key, open its sealed answer.

#![allow(dead_code)]

use aes_gcm::aead::{Aead, KeyInit, OsRng, Payload, rand_core::RngCore};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hkdf::Hkdf;
use serde_json::{Value, json};
use sha2::Sha256;
use x25519_dalek::{PublicKey, StaticSecret};

/// The intent the echo plugin answers in chat form.
pub const CHAT: &str = "urn:iicp:intent:llm:chat:v1";

fn aead(shared: &[u8], salt: &[u8], info: &str) -> Aes256Gcm {
    let mut key = [0u8; 32];
    Hkdf::<Sha256>::new(Some(salt), shared)
        .expand(info.as_bytes(), &mut key)
        .unwrap();
    Aes256Gcm::new(&key.into())
}

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

/// Like [`encrypted_task`], for `intent`.
pub fn encrypted_task_for(
    cx_public_key: &Value,
    task_id: &str,
    intent: &str,
    payload: &Value,
) -> (Value, Vec<u8>) {
    let node_key: [u8; 32] = B64
        .decode(cx_public_key["key"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let ephemeral = StaticSecret::random_from_rng(OsRng);
    let shared = ephemeral.diffie_hellman(&PublicKey::from(node_key));
    let mut nonce = [0u8; 12];
    OsRng.fill_bytes(&mut nonce);
    let aad = format!("{task_id}|{intent}");
    let plaintext = payload.to_string();
    let ciphertext = aead(
        shared.as_bytes(),
        &nonce,
        &format!("IICP-CX-v1{task_id}{intent}"),
    )
    .encrypt(
        Nonce::from_slice(&nonce),
        Payload {
            msg: plaintext.as_bytes(),
            aad: aad.as_bytes(),
        },
    )
    .unwrap();
    let body = json!({
        "task_id": task_id,
        "intent": intent,
        "iicp_conf": {
            "version": 1,
            "recipient_key_id": cx_public_key["key_id"],
            "kem_ciphertext": B64.encode(PublicKey::from(&ephemeral).as_bytes()),
            "encrypted_body": B64.encode(ciphertext),
            "nonce": B64.encode(nonce),
            "aad": B64.encode(&aad),
            "plaintext_size": plaintext.len(),
        },
        "cx_response_encryption": "required",
    });
    (body, shared.as_bytes().to_vec())
}

/// Opens a sealed 200 body the way the consumer does.
pub fn open_response(body: &Value, shared: &[u8], task_id: &str) -> Value {
    assert_eq!(body["status"], "encrypted", "{body}");
    assert!(body.get("result").is_none(), "no clear result: {body}");
    let sealed = &body["iicp_conf_resp"];
    assert_eq!(sealed["version"], 1);
    let nonce = B64.decode(sealed["nonce"].as_str().unwrap()).unwrap();
    let ciphertext = B64
        .decode(sealed["encrypted_body"].as_str().unwrap())
        .unwrap();
    let plaintext = aead(shared, &nonce, &format!("IICP-CX-RESP-v1{task_id}"))
        .decrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: &ciphertext,
                aad: format!("{task_id}|resp").as_bytes(),
            },
        )
        .expect("the consumer can open the sealed response");
    serde_json::from_slice(&plaintext).unwrap()
}

pub fn chat_content(response: &Value) -> &str {
    response["result"]["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_else(|| panic!("no chat content in {response}"))
}
