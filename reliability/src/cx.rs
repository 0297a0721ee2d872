//! IICP-CX as a default consumer does it (`protocol.md` §1.6): seal a task
//! for a node's advertised key, and open its sealed answer — so a case can
//! tell a sealed answer from a plaintext one by decrypting it, not by
//! looking at field names.

use aes_gcm::aead::{Aead, KeyInit, OsRng, Payload, rand_core::RngCore};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hkdf::Hkdf;
use serde_json::{Value, json};
use sha2::Sha256;
use x25519_dalek::{PublicKey, StaticSecret};

fn aead(shared: &[u8], salt: &[u8], info: &str) -> Aes256Gcm {
    let mut key = [0u8; 32];
    Hkdf::<Sha256>::new(Some(salt), shared)
        .expand(info.as_bytes(), &mut key)
        .expect("32 bytes of HKDF output");
    Aes256Gcm::new(&key.into())
}

/// A task for `intent` whose `payload` is sealed for the node's
/// `cx_public_key` (as advertised at REGISTER), with no
/// `cx_response_encryption` field: what a hop that strips that unsealed
/// field forwards. Returns the body and the session secret.
pub fn sealed_task_without_response_field(
    cx_public_key: &Value,
    task_id: &str,
    intent: &str,
    payload: &Value,
) -> (Value, Vec<u8>) {
    let node_key: [u8; 32] = B64
        .decode(cx_public_key["key"].as_str().expect("cx_public_key.key"))
        .expect("base64url key")
        .try_into()
        .expect("a 32-byte X25519 key");
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
    .expect("seal");
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
    });
    (body, shared.as_bytes().to_vec())
}

/// The plaintext answer inside a sealed answer body (`iicp_conf_resp`), or
/// `None` when the body is not sealed for `shared` (a plaintext answer, or
/// one sealed for somebody else).
pub fn open_answer(body: &Value, shared: &[u8], task_id: &str) -> Option<Value> {
    let sealed = body.get("iicp_conf_resp")?;
    let nonce = B64.decode(sealed["nonce"].as_str()?).ok()?;
    let ciphertext = B64.decode(sealed["encrypted_body"].as_str()?).ok()?;
    if nonce.len() != 12 {
        return None;
    }
    let plaintext = aead(shared, &nonce, &format!("IICP-CX-RESP-v1{task_id}"))
        .decrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: &ciphertext,
                aad: format!("{task_id}|resp").as_bytes(),
            },
        )
        .ok()?;
    serde_json::from_slice(&plaintext).ok()
}
