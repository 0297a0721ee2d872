//! The two signatures of `POST /v1/peers`, both carried in
//! `X-IICP-Signature` as lowercase hex (`protocol.md` §10 #20):
//!
//! * the spec's (`iicp-dir.md` §3.6): an Ed25519 signature of the raw body
//!   (128 hex characters) by the sender's registered gossip key, with
//!   `sender_id` and `timestamp_ms` inside the signed body;
//! * the reference SDK's: HMAC-SHA256 of the raw body (64 hex characters)
//!   keyed with a secret the nodes of one mesh share. The SDK accepts
//!   unsigned bodies when it has no key; this node never does.
//!
//! Either way a signature is spent once: the same signature again inside
//! the replay window is refused (§3.6, SEC-NONCE-01), from a table bounded
//! in entries.

use std::collections::HashMap;
use std::sync::Mutex;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// How long a signature stays spent (the spec's 5 minutes).
pub const REPLAY_WINDOW_MS: u64 = 300_000;

/// Which signature a header carries, by its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// 64 bytes: Ed25519.
    Ed25519,
    /// 32 bytes: HMAC-SHA256.
    Hmac,
}

/// The form of `signature`, or `None` when it is neither.
pub fn form_of(signature: &str) -> Option<Form> {
    if !signature.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    match signature.len() {
        128 => Some(Form::Ed25519),
        64 => Some(Form::Hmac),
        _ => None,
    }
}

/// The hex Ed25519 signature of `body`.
pub fn sign_ed25519(key: &SigningKey, body: &[u8]) -> String {
    hex::encode(key.sign(body).to_bytes())
}

/// Whether `signature` (hex) signs `body` under `public_key`.
pub fn verify_ed25519(public_key: &[u8; 32], body: &[u8], signature: &str) -> bool {
    let Ok(key) = VerifyingKey::from_bytes(public_key) else {
        return false;
    };
    let Some(bytes) = hex::decode(signature)
        .ok()
        .and_then(|b| <[u8; 64]>::try_from(b).ok())
    else {
        return false;
    };
    key.verify_strict(body, &Signature::from_bytes(&bytes))
        .is_ok()
}

/// The hex HMAC-SHA256 of `body` under `key`.
pub fn sign_hmac(key: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("HMAC takes any key");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// Whether `signature` is the HMAC of `body` under `key`, compared in
/// constant time.
pub fn verify_hmac(key: &str, body: &[u8], signature: &str) -> bool {
    let expected = sign_hmac(key, body);
    expected
        .as_bytes()
        .ct_eq(signature.to_ascii_lowercase().as_bytes())
        .into()
}

/// Reads a gossip public key as the directory serves it: 64 hex
/// characters, or 32 bytes in base64 / base64url.
pub fn parse_public_key(text: &str) -> Option<[u8; 32]> {
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    let text = text.trim();
    let bytes = if text.len() == 64 {
        hex::decode(text).ok()?
    } else {
        URL_SAFE_NO_PAD
            .decode(text.trim_end_matches('='))
            .or_else(|_| STANDARD.decode(text))
            .ok()?
    };
    bytes.try_into().ok()
}

/// Signatures spent inside the replay window.
pub struct SpentSignatures {
    max: usize,
    spent: Mutex<HashMap<[u8; 32], u64>>,
}

/// Why a signature cannot be spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpendRefusal {
    /// Seen inside the window.
    Replayed,
    /// The table is full of live entries.
    Full,
}

impl SpentSignatures {
    /// A table of at most `max` signatures.
    pub fn new(max: usize) -> Self {
        Self {
            max,
            spent: Mutex::new(HashMap::new()),
        }
    }

    /// Spends `signature` at `now_ms`.
    pub fn spend(&self, signature: &str, now_ms: u64) -> Result<(), SpendRefusal> {
        let digest: [u8; 32] = Sha256::digest(signature.to_ascii_lowercase().as_bytes()).into();
        let mut spent = self.spent.lock().unwrap_or_else(|p| p.into_inner());
        if spent.get(&digest).is_some_and(|until| *until > now_ms) {
            return Err(SpendRefusal::Replayed);
        }
        if spent.len() >= self.max {
            spent.retain(|_, until| *until > now_ms);
            if spent.len() >= self.max {
                return Err(SpendRefusal::Full);
            }
        }
        spent.insert(digest, now_ms + REPLAY_WINDOW_MS);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_forms_verify_and_are_told_apart() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let public = key.verifying_key().to_bytes();
        let body = br#"{"sender_id":"a","known_peers":[],"timestamp_ms":1}"#;
        let signature = sign_ed25519(&key, body);
        assert_eq!(form_of(&signature), Some(Form::Ed25519));
        assert!(verify_ed25519(&public, body, &signature));
        assert!(!verify_ed25519(&public, b"{}", &signature));
        assert!(!verify_ed25519(&[9; 32], body, &signature));
        let mac = sign_hmac("mesh-secret", body);
        assert_eq!(form_of(&mac), Some(Form::Hmac));
        assert!(verify_hmac("mesh-secret", body, &mac));
        assert!(verify_hmac("mesh-secret", body, &mac.to_uppercase()));
        assert!(!verify_hmac("other", body, &mac));
        assert_eq!(form_of("zz"), None);
        assert_eq!(form_of(&"g".repeat(64)), None);
        assert_eq!(parse_public_key(&hex::encode(public)), Some(public));
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(public);
        assert_eq!(parse_public_key(&b64), Some(public));
        assert_eq!(parse_public_key("short"), None);
    }

    #[test]
    fn a_signature_is_spent_once_per_window_in_a_bounded_table() {
        let spent = SpentSignatures::new(2);
        assert_eq!(spent.spend("aa", 0), Ok(()));
        assert_eq!(spent.spend("AA", 1), Err(SpendRefusal::Replayed));
        assert_eq!(spent.spend("bb", 1), Ok(()));
        assert_eq!(spent.spend("cc", 1), Err(SpendRefusal::Full));
        assert_eq!(spent.spend("aa", REPLAY_WINDOW_MS), Ok(()), "window over");
    }
}
