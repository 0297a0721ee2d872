//! IICP-CX, the task confidentiality layer (`protocol.md` §1.6): the node's
//! X25519 key, opening an encrypted CALL (`iicp_conf`) and sealing its
//! RESPONSE.
//!
//! Default consumers send tasks only to nodes that advertise a key, and then
//! always encrypt, so this is what lets a node receive their traffic.
//!
//! The construction is the shipped one (SDK `confidentiality.rs`), byte for
//! byte: the request key is HKDF-SHA256 over the X25519 shared secret with
//! the envelope's nonce as salt and `"IICP-CX-v1" + task_id + intent` as
//! info, AES-256-GCM with AAD `task_id|intent`; the response key uses a fresh
//! nonce and `"IICP-CX-RESP-v1" + task_id`, AAD `task_id|resp`.
//!
//! Where the SDK and the spec disagree we chose:
//! * key id `cx-` + the first 16 hex digits of SHA-256 of the raw public key
//!   (what the clients compare), not the spec's DER-hash rule;
//! * error codes of the SDK, the ones deployed consumers see: 400
//!   `IICP-CX-02` (cannot open), 400 `IICP-CX-03` (encrypted response
//!   without an encrypted request), 500 `IICP-CX-04` (cannot seal);
//! * unlike the SDK, the AAD must name the CALL's own `task_id` and `intent`
//!   (§10 #19), an envelope addressed to another key id is refused, and a
//!   low-order ephemeral key (an all-zero shared secret) is refused;
//! * an encrypted CALL is always answered sealed, whether or not it carries
//!   `cx_response_encryption: "required"`. The SDK node seals only when that
//!   field is present, but it lies outside the AAD: a relay deleting it would
//!   read the answer. Both reference clients send the field whenever the
//!   key advertises `response_encryption_v1` (ours always does) and then
//!   insist on `iicp_conf_resp`, so they see no difference;
//! * error responses stay in clear, as with the SDK (both reference clients
//!   read a non-2xx body unsealed). An encrypted task's error carries no
//!   plugin-written message, which might quote the payload: code, status,
//!   `retryable` and the node's own fixed texts only.
//!
//! # What a hop can still change
//!
//! A relay (or any hop) sees and may rewrite everything outside the
//! envelope. Field by field, what the node does about it:
//! * `task_id`, `intent`: in the AAD and the key derivation; a changed one
//!   fails to open (400 `IICP-CX-02`). Both travel in clear.
//! * `iicp_conf`: authenticated by AES-GCM; a hop cannot read or alter it.
//!   It can replace the whole CALL with one it sealed itself to the node's
//!   public key, but the answer is then sealed for the hop's session, which
//!   the consumer's session cannot open: a consumer detects it.
//! * `payload`: a hop that adds one beside `iicp_conf` turns the CALL into a
//!   clear task of its own choosing (the envelope is then ignored, as the SDK
//!   node does); the consumer's sealed payload is never read, and a consumer
//!   expecting `iicp_conf_resp` refuses the clear answer.
//! * `cx_response_encryption`: ignored on an encrypted CALL (above); added to
//!   a clear one it only gets that task refused (400 `IICP-CX-03`).
//! * `nonce`: not bound to the envelope; a hop can strip it, and the same
//!   sealed CALL replayed then runs again. The answer is still sealed for
//!   the consumer's session only. (Binding the envelope's own nonce would
//!   refuse the reference clients' retries, which resend the same body.)
//! * `constraints` (`timeout_ms`, `max_tokens`, `model`, `qos`): a hop can
//!   change them; the operator's ceilings bound them as for any consumer.
//!   They change the answer, not who can read it.
//! * `traceparent`, `tracestate`, `trace.trace_id`: telemetry only.
//! * `auth`, `Authorization`, `X-IICP-Consumer-Token`: readable by the hop,
//!   so it can replay them here within their lifetime (a consumer token
//!   names this node and intent) or strip them (the task is then refused).
//! * `source_node_id`: credit attribution; forwarded to the directory only
//!   when a verified consumer token names the same node
//!   (`directory::receipts`).
//! * the task id cache: scoped by the caller, so a hop replaying a sealed
//!   CALL gets only the sealed answer (`server::idempotency`).
//!
//! The answer's status, size, timing, `task_id` and error envelopes are
//! visible to every hop.

use std::borrow::Cow;

use aes_gcm::aead::{Aead, KeyInit, OsRng, Payload, rand_core::RngCore};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hkdf::Hkdf;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey, SharedSecret, StaticSecret};

use super::ApiError;

const REQUEST_INFO: &str = "IICP-CX-v1";
const RESPONSE_INFO: &str = "IICP-CX-RESP-v1";
const ENVELOPE_VERSION: u64 = 1;
const NONCE_BYTES: usize = 12;

/// The node's static X25519 key pair.
pub struct CxKey {
    secret: StaticSecret,
    public: PublicKey,
    key_id: String,
}

impl std::fmt::Debug for CxKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CxKey")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// `cx_public_key` as REGISTER advertises it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CxPublicKey {
    /// Always `X25519`.
    pub algorithm: &'static str,
    /// Always `base64url` (no padding).
    pub encoding: &'static str,
    /// The 32-byte public key.
    pub key: String,
    /// `cx-` + 16 hex digits.
    pub key_id: String,
    /// `response_encryption_v1`: consumers then ask for sealed responses.
    pub features: [&'static str; 1],
}

impl CxKey {
    /// A new random key.
    pub fn generate() -> Self {
        Self::from_secret(StaticSecret::random_from_rng(OsRng))
    }

    /// The key whose secret half is `bytes`.
    pub fn from_secret_bytes(bytes: [u8; 32]) -> Self {
        Self::from_secret(StaticSecret::from(bytes))
    }

    fn from_secret(secret: StaticSecret) -> Self {
        let public = PublicKey::from(&secret);
        let digest = hex::encode(Sha256::digest(public.as_bytes()));
        Self {
            secret,
            public,
            key_id: format!("cx-{}", &digest[..16]),
        }
    }

    /// The secret half, for the node's state directory only.
    pub fn secret_bytes(&self) -> [u8; 32] {
        self.secret.to_bytes()
    }

    /// The key id consumers address envelopes to.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The public half, as advertised.
    pub fn public_key(&self) -> CxPublicKey {
        CxPublicKey {
            algorithm: "X25519",
            encoding: "base64url",
            key: URL_SAFE_NO_PAD.encode(self.public.as_bytes()),
            key_id: self.key_id.clone(),
            features: ["response_encryption_v1"],
        }
    }

    /// Opens the `iicp_conf` envelope of the CALL (`task_id`, `intent`):
    /// returns the payload's JSON text and the session that seals the
    /// response. Every failure is a 400 `IICP-CX-02` naming what is wrong.
    pub fn open(
        &self,
        envelope: &RawValue,
        task_id: &str,
        intent: &str,
    ) -> Result<(String, CxSession), ApiError> {
        let envelope: Envelope<'_> = serde_json::from_str(envelope.get())
            .map_err(|e| ApiError::cx_open_failed(format!("iicp_conf is malformed: {e}")))?;
        if envelope.version.is_some_and(|v| v != ENVELOPE_VERSION) {
            return Err(ApiError::cx_open_failed(
                "iicp_conf.version is not supported (expected 1)",
            ));
        }
        if envelope
            .recipient_key_id
            .as_deref()
            .is_some_and(|id| id != self.key_id)
        {
            return Err(ApiError::cx_open_failed(
                "iicp_conf is addressed to another key (recipient_key_id)",
            ));
        }
        let ephemeral: [u8; 32] = decode_exact(&envelope.kem_ciphertext, "kem_ciphertext")?;
        let nonce: [u8; NONCE_BYTES] = decode_exact(&envelope.nonce, "nonce")?;
        let aad = decode(&envelope.aad, "aad")?;
        if aad != format!("{task_id}|{intent}").as_bytes() {
            return Err(ApiError::cx_open_failed(
                "iicp_conf.aad does not name this task's task_id and intent",
            ));
        }
        let ciphertext = decode(&envelope.encrypted_body, "encrypted_body")?;
        let shared = self.secret.diffie_hellman(&PublicKey::from(ephemeral));
        if !shared.was_contributory() {
            return Err(ApiError::cx_open_failed(
                "iicp_conf.kem_ciphertext is not a usable X25519 key",
            ));
        }
        let info = format!("{REQUEST_INFO}{task_id}{intent}");
        let plaintext = aead_key(&shared, &nonce, &info)
            .decrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| {
                ApiError::cx_open_failed(
                    "iicp_conf cannot be decrypted: wrong key or tampered envelope",
                )
            })?;
        let payload = String::from_utf8(plaintext)
            .ok()
            .filter(|text| serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok())
            .ok_or_else(|| ApiError::cx_open_failed("the decrypted payload is not JSON"))?;
        Ok((
            payload,
            CxSession {
                shared,
                consumer_key: ephemeral,
            },
        ))
    }
}

/// The key agreement of one encrypted CALL, kept to seal its RESPONSE.
pub struct CxSession {
    shared: SharedSecret,
    consumer_key: [u8; 32],
}

/// `iicp_conf_resp`: a sealed response.
#[derive(Debug, Serialize)]
pub struct SealedResponse {
    /// Always 1.
    pub version: u64,
    /// Fresh 12-byte nonce, base64url.
    pub nonce: String,
    /// Ciphertext and tag, base64url.
    pub encrypted_body: String,
}

impl CxSession {
    /// The consumer's ephemeral public key (`kem_ciphertext`). An envelope
    /// that opens proves its sender holds the matching secret, so the key
    /// names an anonymous consumer no other caller can impersonate.
    pub fn consumer_key(&self) -> &[u8; 32] {
        &self.consumer_key
    }

    /// Seals `response` (the whole plain response body) for `task_id`.
    pub fn seal(&self, response: &[u8], task_id: &str) -> Result<SealedResponse, ApiError> {
        let mut nonce = [0u8; NONCE_BYTES];
        OsRng.fill_bytes(&mut nonce);
        let info = format!("{RESPONSE_INFO}{task_id}");
        let aad = format!("{task_id}|resp");
        let ciphertext = aead_key(&self.shared, &nonce, &info)
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: response,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| ApiError::cx_seal_failed())?;
        Ok(SealedResponse {
            version: ENVELOPE_VERSION,
            nonce: URL_SAFE_NO_PAD.encode(nonce),
            encrypted_body: URL_SAFE_NO_PAD.encode(ciphertext),
        })
    }
}

/// The `iicp_conf` fields this node reads (`plaintext_size` is informative).
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(default)]
    version: Option<u64>,
    #[serde(default, borrow)]
    recipient_key_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    kem_ciphertext: Cow<'a, str>,
    #[serde(borrow)]
    encrypted_body: Cow<'a, str>,
    #[serde(borrow)]
    nonce: Cow<'a, str>,
    #[serde(borrow)]
    aad: Cow<'a, str>,
}

fn aead_key(shared: &SharedSecret, salt: &[u8], info: &str) -> Aes256Gcm {
    let mut key = [0u8; 32];
    Hkdf::<Sha256>::new(Some(salt), shared.as_bytes())
        .expand(info.as_bytes(), &mut key)
        .unwrap_or_else(|_| unreachable!("32 bytes is a valid HKDF-SHA256 output length"));
    Aes256Gcm::new(&key.into())
}

fn decode(text: &str, field: &str) -> Result<Vec<u8>, ApiError> {
    URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .map_err(|_| ApiError::cx_open_failed(format!("iicp_conf.{field} is not base64url")))
}

fn decode_exact<const N: usize>(text: &str, field: &str) -> Result<[u8; N], ApiError> {
    decode(text, field)?.try_into().map_err(|_| {
        ApiError::cx_open_failed(format!("iicp_conf.{field} must decode to {N} bytes"))
    })
}

/// The consumer's half of IICP-CX (SDK `encrypt_payload_with_context` and
/// the response opening), written from the construction to check the
/// node's half against it. For tests and fuzzing only: a node never seals a
/// CALL.
#[cfg(any(test, fuzzing))]
pub mod consumer {
    use super::*;

    /// The `iicp_conf` envelope a consumer with the ephemeral secret
    /// `ephemeral` sends for `payload`, and the shared secret it keeps to
    /// open the response.
    pub fn seal_call(
        node: &CxPublicKey,
        ephemeral: [u8; 32],
        nonce: [u8; NONCE_BYTES],
        payload: &[u8],
        task_id: &str,
        intent: &str,
    ) -> (serde_json::Value, SharedSecret) {
        let node_public: [u8; 32] = URL_SAFE_NO_PAD
            .decode(&node.key)
            .ok()
            .and_then(|key| key.try_into().ok())
            .expect("an advertised key is 32 bytes of base64url");
        let ephemeral = StaticSecret::from(ephemeral);
        let shared = ephemeral.diffie_hellman(&PublicKey::from(node_public));
        let aad = format!("{task_id}|{intent}");
        let ciphertext = aead_key(&shared, &nonce, &format!("{REQUEST_INFO}{task_id}{intent}"))
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: payload,
                    aad: aad.as_bytes(),
                },
            )
            .expect("AES-GCM seals any length a test makes");
        let envelope = serde_json::json!({
            "version": 1,
            "recipient_key_id": node.key_id,
            "kem_ciphertext": URL_SAFE_NO_PAD.encode(PublicKey::from(&ephemeral).as_bytes()),
            "encrypted_body": URL_SAFE_NO_PAD.encode(ciphertext),
            "nonce": URL_SAFE_NO_PAD.encode(nonce),
            "aad": URL_SAFE_NO_PAD.encode(aad),
            "plaintext_size": payload.len(),
        });
        (envelope, shared)
    }

    /// Opens a sealed response with the consumer's shared secret; `None`
    /// when it does not open.
    pub fn open_response(
        shared: &SharedSecret,
        sealed: &SealedResponse,
        task_id: &str,
    ) -> Option<Vec<u8>> {
        let nonce: [u8; NONCE_BYTES] = URL_SAFE_NO_PAD
            .decode(&sealed.nonce)
            .ok()?
            .try_into()
            .ok()?;
        let ciphertext = URL_SAFE_NO_PAD.decode(&sealed.encrypted_body).ok()?;
        aead_key(shared, &nonce, &format!("{RESPONSE_INFO}{task_id}"))
            .decrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &ciphertext,
                    aad: format!("{task_id}|resp").as_bytes(),
                },
            )
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a consumer sends, with a fresh ephemeral key and nonce.
    fn encrypt_as_consumer(
        node: &CxPublicKey,
        payload: &str,
        task_id: &str,
        intent: &str,
    ) -> (String, SharedSecret) {
        let mut ephemeral = [0u8; 32];
        let mut nonce = [0u8; NONCE_BYTES];
        OsRng.fill_bytes(&mut ephemeral);
        OsRng.fill_bytes(&mut nonce);
        let (envelope, shared) =
            consumer::seal_call(node, ephemeral, nonce, payload.as_bytes(), task_id, intent);
        (envelope.to_string(), shared)
    }

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_string()).unwrap()
    }

    #[test]
    fn opens_what_a_consumer_sealed_and_seals_what_it_can_open() {
        let key = CxKey::generate();
        let (envelope, consumer_shared) =
            encrypt_as_consumer(&key.public_key(), r#"{"q":1}"#, "t-1", "urn:x:y:v1");
        let (payload, session) = key.open(&raw(&envelope), "t-1", "urn:x:y:v1").unwrap();
        assert_eq!(payload, r#"{"q":1}"#);

        let sealed = session.seal(br#"{"status":"success"}"#, "t-1").unwrap();
        let opened = consumer::open_response(&consumer_shared, &sealed, "t-1");
        assert_eq!(
            opened.as_deref(),
            Some(br#"{"status":"success"}"#.as_slice())
        );
        assert_eq!(
            consumer::open_response(&consumer_shared, &sealed, "t-2"),
            None
        );
    }

    #[test]
    fn refuses_envelopes_bound_to_another_task_key_or_body() {
        let key = CxKey::generate();
        let (envelope, _) = encrypt_as_consumer(&key.public_key(), "{}", "t-1", "urn:a");
        let message = |result: Result<(String, CxSession), ApiError>| {
            let error = result.err().expect("refused");
            assert_eq!((error.status().as_u16(), error.code()), (400, "IICP-CX-02"));
            error.message().to_string()
        };
        assert!(message(key.open(&raw(&envelope), "t-2", "urn:a")).contains("aad"));
        assert!(message(key.open(&raw(&envelope), "t-1", "urn:b")).contains("aad"));
        assert!(
            message(CxKey::generate().open(&raw(&envelope), "t-1", "urn:a"))
                .contains("another key")
        );

        let mut value: serde_json::Value = serde_json::from_str(&envelope).unwrap();
        value["recipient_key_id"] = serde_json::Value::Null;
        let other = CxKey::generate();
        assert!(
            message(other.open(&raw(&value.to_string()), "t-1", "urn:a")).contains("wrong key")
        );

        let mut tampered = value.clone();
        let mut body = URL_SAFE_NO_PAD
            .decode(value["encrypted_body"].as_str().unwrap())
            .unwrap();
        body[0] ^= 1;
        tampered["encrypted_body"] = URL_SAFE_NO_PAD.encode(body).into();
        assert!(
            message(key.open(&raw(&tampered.to_string()), "t-1", "urn:a")).contains("tampered")
        );

        let mut low_order = value.clone();
        low_order["kem_ciphertext"] = URL_SAFE_NO_PAD.encode([0u8; 32]).into();
        assert!(message(key.open(&raw(&low_order.to_string()), "t-1", "urn:a")).contains("usable"));

        let mut short_nonce = value;
        short_nonce["nonce"] = "AAAA".into();
        assert!(
            message(key.open(&raw(&short_nonce.to_string()), "t-1", "urn:a")).contains("12 bytes")
        );
        assert!(message(key.open(&raw("[1]"), "t-1", "urn:a")).contains("malformed"));
    }

    #[test]
    fn key_id_and_advertisement_follow_the_sdk_rule() {
        let key = CxKey::from_secret_bytes([7u8; 32]);
        let public = key.public_key();
        let raw_public = URL_SAFE_NO_PAD.decode(&public.key).unwrap();
        assert_eq!(raw_public.len(), 32);
        let expected = format!("cx-{}", &hex::encode(Sha256::digest(&raw_public))[..16]);
        assert_eq!(public.key_id, expected);
        assert_eq!(
            CxKey::from_secret_bytes(key.secret_bytes()).public_key(),
            public
        );
        // Debug output (logs, panics) never shows the secret half.
        assert_eq!(
            format!("{key:?}"),
            format!("CxKey {{ key_id: {:?}, .. }}", public.key_id)
        );
    }
}
