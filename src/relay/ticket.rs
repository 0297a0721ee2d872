//! Relay bind tickets (`protocol.md` §7.4): a worker asks its directory for
//! a short-lived ticket naming its node id and the relay, signed with the
//! directory's Ed25519 key; the relay checks the signature, the subject,
//! the audience and the expiry, and spends the ticket's `jti` once.
//!
//! Format (the reference's): `<base64url(JSON claims)>.<hex Ed25519
//! signature>` over `"iicp:relay-bind-ticket:v1\n" ‖ <base64url claims>`;
//! claims `{v, typ:"relay-bind-ticket", jti:<32 lowercase hex>, iss, sub:
//! <worker_id>, aud:<relay node id or "*">, iat, exp}`.
//!
//! Hostile-input bounds: tickets over 4 KiB are refused unread, and a
//! ticket may live at most [`MAX_TICKET_LIFETIME_S`] from now, so spent ids
//! — kept until their ticket expires — cannot pin the replay table for
//! long; the table itself is capped and a full table of live ids refuses
//! new binds rather than forgetting one.

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use serde::Deserialize;
use serde_json::json;

use crate::directory::client::{DirectoryClient, DirectoryError};

const DOMAIN: &[u8] = b"iicp:relay-bind-ticket:v1\n";
const MAX_TICKET_BYTES: usize = 4096;
/// Longest a ticket may still be valid when presented.
pub const MAX_TICKET_LIFETIME_S: i64 = 3600;

/// The claims of a valid ticket.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct TicketClaims {
    /// Format version.
    pub v: u8,
    /// Must be `relay-bind-ticket`.
    pub typ: String,
    /// Single-use id, 128 bits as 32 lowercase hex.
    pub jti: String,
    /// Issuer.
    pub iss: String,
    /// The worker's node id.
    pub sub: String,
    /// The relay's node id, or `*`.
    pub aud: String,
    /// Issued at, Unix seconds.
    pub iat: i64,
    /// Expires at, Unix seconds.
    pub exp: i64,
}

/// Why a ticket was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TicketRefusal {
    /// Bad form, signature, subject, audience or expiry.
    Invalid,
    /// Its `jti` was spent already.
    Replayed,
    /// The table of spent ids is full of live ones.
    TableFull,
}

/// Checks tickets against the directory's key and remembers spent ids.
pub struct TicketVerifier {
    key: VerifyingKey,
    audience: String,
    spent: Mutex<HashMap<String, i64>>,
    max_spent: usize,
}

impl TicketVerifier {
    /// A verifier for tickets signed by `key_hex` for relay `audience`.
    pub fn new(key_hex: &str, audience: &str, max_spent: usize) -> Result<Self, String> {
        let bytes: [u8; 32] = hex::decode(key_hex)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or("the bind ticket key is not 32 bytes of hex")?;
        let key = VerifyingKey::from_bytes(&bytes)
            .map_err(|_| "the bind ticket key is not an Ed25519 public key")?;
        Ok(Self {
            key,
            audience: audience.to_string(),
            spent: Mutex::new(HashMap::new()),
            max_spent,
        })
    }

    /// The claims of `ticket` if it is valid for `worker_id` at `now_s`.
    pub fn verify(&self, ticket: &str, worker_id: &str, now_s: i64) -> Option<TicketClaims> {
        if ticket.len() > MAX_TICKET_BYTES {
            return None;
        }
        let (payload, signature) = ticket.split_once('.')?;
        let signature: [u8; 64] = hex::decode(signature).ok()?.try_into().ok()?;
        let mut message = DOMAIN.to_vec();
        message.extend_from_slice(payload.as_bytes());
        self.key
            .verify(&message, &Signature::from_bytes(&signature))
            .ok()?;
        let claims: TicketClaims =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
        let jti_ok = claims.jti.len() == 32
            && claims
                .jti
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        let valid = claims.typ == "relay-bind-ticket"
            && jti_ok
            && claims.sub == worker_id
            && (claims.aud == "*" || claims.aud == self.audience)
            && claims.exp > now_s
            && claims.exp <= now_s + MAX_TICKET_LIFETIME_S;
        valid.then_some(claims)
    }

    /// Spends the ticket's id; refuses an id spent before.
    pub fn spend(&self, claims: &TicketClaims, now_s: i64) -> Result<(), TicketRefusal> {
        let mut spent = self.spent.lock().unwrap_or_else(|p| p.into_inner());
        if spent.contains_key(&claims.jti) {
            return Err(TicketRefusal::Replayed);
        }
        if spent.len() >= self.max_spent {
            spent.retain(|_, exp| *exp > now_s);
            if spent.len() >= self.max_spent {
                return Err(TicketRefusal::TableFull);
            }
        }
        spent.insert(claims.jti.clone(), claims.exp);
        Ok(())
    }
}

/// Asks the directory for a bind ticket (`POST {dir}/v1/relay/ticket`,
/// Bearer `node_token`, `X-Node-Id`), for the relay `relay_node_id` or any.
pub async fn fetch(
    directory: &DirectoryClient,
    node_token: &str,
    worker_id: &str,
    relay_node_id: Option<&str>,
) -> Result<String, DirectoryError> {
    let body = match relay_node_id {
        Some(id) => json!({ "relay_node_id": id }),
        None => json!({}),
    };
    let answer = directory
        .post_with_headers(
            "relay/ticket",
            Some(node_token),
            &[("x-node-id", worker_id)],
            &body,
        )
        .await?;
    answer
        .get("ticket")
        .and_then(|t| t.as_str())
        .filter(|t| !t.is_empty() && t.len() <= MAX_TICKET_BYTES)
        .map(str::to_string)
        .ok_or_else(|| DirectoryError::BadResponse("the ticket answer carries no ticket".into()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    /// A ticket signed by `key` (tests across the crate use it).
    pub(crate) fn sign(key: &SigningKey, sub: &str, aud: &str, jti: &str, exp: i64) -> String {
        let claims = json!({
            "v": 1, "typ": "relay-bind-ticket", "jti": jti, "iss": "test",
            "sub": sub, "aud": aud, "iat": exp - 60, "exp": exp,
        });
        let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
        let mut message = DOMAIN.to_vec();
        message.extend_from_slice(payload.as_bytes());
        format!("{payload}.{}", hex::encode(key.sign(&message).to_bytes()))
    }

    #[test]
    fn checks_signature_subject_audience_expiry_and_spends_once() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let verifier =
            TicketVerifier::new(&hex::encode(key.verifying_key().to_bytes()), "relay-1", 2)
                .unwrap();
        let jti = "0123456789abcdef0123456789abcdef";
        let good = sign(&key, "w-1", "relay-1", jti, 1_000);
        let claims = verifier.verify(&good, "w-1", 900).unwrap();
        assert!(verifier.verify(&good, "w-2", 900).is_none(), "subject");
        assert!(verifier.verify(&good, "w-1", 1_000).is_none(), "expired");
        assert!(
            verifier
                .verify(&sign(&key, "w-1", "relay-2", jti, 1_000), "w-1", 900)
                .is_none(),
            "audience"
        );
        assert!(
            verifier
                .verify(&sign(&key, "w-1", "*", jti, 1_000), "w-1", 900)
                .is_some(),
            "any relay"
        );
        assert!(
            verifier
                .verify(&sign(&key, "w-1", "*", jti, 900 + 7200), "w-1", 900)
                .is_none(),
            "too long-lived"
        );
        let other = SigningKey::from_bytes(&[8; 32]);
        assert!(
            verifier
                .verify(&sign(&other, "w-1", "relay-1", jti, 1_000), "w-1", 900)
                .is_none(),
            "signer"
        );
        assert!(verifier.verify(&format!("{good}0"), "w-1", 900).is_none());
        assert_eq!(verifier.spend(&claims, 900), Ok(()));
        assert_eq!(verifier.spend(&claims, 901), Err(TicketRefusal::Replayed));
        let second = TicketClaims {
            jti: "1".repeat(32),
            ..claims.clone()
        };
        let third = TicketClaims {
            jti: "2".repeat(32),
            ..claims
        };
        assert_eq!(verifier.spend(&second, 900), Ok(()));
        assert_eq!(verifier.spend(&third, 900), Err(TicketRefusal::TableFull));
        // Once the spent ones expire, their room is reused.
        assert_eq!(verifier.spend(&third, 1_000), Ok(()));
    }
}
