//! Directory-issued consumer tokens (`X-IICP-Consumer-Token`,
//! `protocol.md` §4.3, §11): `<b64url(JSON claims), no padding>.<hex
//! Ed25519 signature>`, signed by the directory's key over
//! `"iicp:consumer-token:v1\n"` followed by the base64url text exactly as
//! sent. The claims are `{v:1, iss, sub, aud, intent, iat, exp}`.
//!
//! A token is accepted when the signature verifies (strictly: no
//! malleable signatures, no weak keys), `v` is 1, `aud` is this node's id,
//! `intent` is the task's intent or `*`, and `exp` has not passed by more
//! than [`EXPIRY_GRACE_S`]. The signature is checked before any claim, so a
//! forged token learns nothing about which claim would have failed. `iat`
//! and `iss` are not checked: the directory's signature vouches for them.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signature, VerifyingKey};
use serde::Deserialize;

/// The signing domain prefix.
pub const MESSAGE_PREFIX: &[u8] = b"iicp:consumer-token:v1\n";
/// Seconds a token stays good after its `exp` (clock skew).
pub const EXPIRY_GRACE_S: u64 = 10;
/// Longest header value read; a real token is about 400 bytes.
pub const MAX_TOKEN_BYTES: usize = 4096;

/// The claims of a token that verified.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Claims {
    /// Format version, 1.
    pub v: u64,
    /// The directory that issued it.
    pub iss: String,
    /// The consumer node it was issued to.
    pub sub: String,
    /// The provider node it is for.
    pub aud: String,
    /// The intent it allows, or `*`.
    pub intent: String,
    /// Issued at, Unix seconds.
    pub iat: u64,
    /// Expires at, Unix seconds.
    pub exp: u64,
}

/// Which part of a token failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    /// Not `<base64url>.<128 hex>`, or the claims are not the expected JSON.
    Malformed,
    /// The signature does not verify against the directory's key.
    Signature,
    /// `v` is not 1.
    Version,
    /// Issued for another node.
    Audience,
    /// Issued for another intent.
    Intent,
    /// `exp` passed (beyond the grace).
    Expired,
}

impl TokenError {
    /// The `reason` of the 401 envelope.
    pub fn reason(self) -> &'static str {
        match self {
            TokenError::Malformed => "consumer_token_malformed",
            TokenError::Signature => "consumer_token_signature",
            TokenError::Version => "consumer_token_version",
            TokenError::Audience => "consumer_token_audience",
            TokenError::Intent => "consumer_token_intent",
            TokenError::Expired => "consumer_token_expired",
        }
    }

    /// What failed, in words (never the token).
    pub fn message(self) -> &'static str {
        match self {
            TokenError::Malformed => "the consumer token is not <base64url claims>.<hex signature>",
            TokenError::Signature => {
                "the consumer token's signature does not verify against the directory key"
            }
            TokenError::Version => "the consumer token's version is not 1",
            TokenError::Audience => "the consumer token was issued for another node",
            TokenError::Intent => "the consumer token was issued for another intent",
            TokenError::Expired => "the consumer token has expired",
        }
    }
}

/// Parses a directory key as `GET /v1/directory-key` gives it: 64 hex
/// digits of an Ed25519 public key.
pub fn parse_key(hex_key: &str) -> Option<VerifyingKey> {
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(hex_key.trim(), &mut bytes).ok()?;
    VerifyingKey::from_bytes(&bytes).ok()
}

/// Verifies `token` for a task of `intent` on node `node_id` at `now_unix`.
pub fn verify(
    token: &str,
    key: &VerifyingKey,
    node_id: &str,
    intent: &str,
    now_unix: u64,
) -> Result<Claims, TokenError> {
    let token = token.trim();
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::Malformed);
    }
    let (claims_b64, signature_hex) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
    let mut signature = [0u8; 64];
    hex::decode_to_slice(signature_hex, &mut signature).map_err(|_| TokenError::Malformed)?;
    let mut message = Vec::with_capacity(MESSAGE_PREFIX.len() + claims_b64.len());
    message.extend_from_slice(MESSAGE_PREFIX);
    message.extend_from_slice(claims_b64.as_bytes());
    key.verify_strict(&message, &Signature::from_bytes(&signature))
        .map_err(|_| TokenError::Signature)?;
    let json = URL_SAFE_NO_PAD
        .decode(claims_b64.trim_end_matches('='))
        .map_err(|_| TokenError::Malformed)?;
    let claims: Claims = serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)?;
    if claims.v != 1 {
        return Err(TokenError::Version);
    }
    if claims.aud != node_id {
        return Err(TokenError::Audience);
    }
    if claims.intent != "*" && claims.intent != intent {
        return Err(TokenError::Intent);
    }
    if now_unix > claims.exp.saturating_add(EXPIRY_GRACE_S) {
        return Err(TokenError::Expired);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};
    use serde_json::json;

    const NODE: &str = "node-a";
    const CHAT: &str = "urn:iicp:intent:llm:chat:v1";

    fn signing_key() -> SigningKey {
        SigningKey::from_bytes(&[7u8; 32])
    }

    /// A token as the reference directory makes one (keys sorted).
    fn token(key: &SigningKey, claims: serde_json::Value) -> String {
        let encoded = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap());
        let mut message = MESSAGE_PREFIX.to_vec();
        message.extend_from_slice(encoded.as_bytes());
        format!("{encoded}.{}", hex::encode(key.sign(&message).to_bytes()))
    }

    fn claims(aud: &str, intent: &str, exp: u64) -> serde_json::Value {
        json!({"aud": aud, "exp": exp, "iat": exp - 300, "intent": intent,
               "iss": "https://iicp.network", "sub": "consumer-1", "v": 1})
    }

    #[test]
    fn a_good_token_verifies_and_each_claim_is_checked() {
        let key = signing_key();
        let public = key.verifying_key();
        let check = |t: &str, intent: &str, now: u64| verify(t, &public, NODE, intent, now);
        let good = token(&key, claims(NODE, CHAT, 1000));
        assert_eq!(check(&good, CHAT, 900).unwrap().sub, "consumer-1");
        // The grace: 10 s past exp is still good, 11 s is not.
        assert!(check(&good, CHAT, 1010).is_ok());
        assert_eq!(check(&good, CHAT, 1011), Err(TokenError::Expired));
        assert_eq!(check(&good, "urn:other", 900), Err(TokenError::Intent));
        let wildcard = token(&key, claims(NODE, "*", 1000));
        assert!(check(&wildcard, "urn:other", 900).is_ok());
        let elsewhere = token(&key, claims("node-b", CHAT, 1000));
        assert_eq!(check(&elsewhere, CHAT, 900), Err(TokenError::Audience));
        let mut v2 = claims(NODE, CHAT, 1000);
        v2["v"] = json!(2);
        assert_eq!(check(&token(&key, v2), CHAT, 900), Err(TokenError::Version));
    }

    #[test]
    fn forged_and_malformed_tokens_are_refused() {
        let key = signing_key();
        let public = key.verifying_key();
        let other = SigningKey::from_bytes(&[9u8; 32]);
        let forged = token(&other, claims(NODE, CHAT, 1000));
        assert_eq!(
            verify(&forged, &public, NODE, CHAT, 900),
            Err(TokenError::Signature)
        );
        // A signed token whose claims were swapped afterwards.
        let good = token(&key, claims(NODE, CHAT, 1000));
        let (_, signature) = good.rsplit_once('.').unwrap();
        let swapped = format!(
            "{}.{signature}",
            URL_SAFE_NO_PAD.encode(claims(NODE, "*", 9999).to_string())
        );
        assert_eq!(
            verify(&swapped, &public, NODE, CHAT, 900),
            Err(TokenError::Signature)
        );
        for bad in ["", "abc", "abc.zz", &"a.".repeat(3000), "e30.00"] {
            assert_eq!(
                verify(bad, &public, NODE, CHAT, 900),
                Err(TokenError::Malformed),
                "{bad:.40}"
            );
        }
    }

    #[test]
    fn keys_parse_from_64_hex_digits() {
        let public = signing_key().verifying_key();
        assert_eq!(parse_key(&hex::encode(public.to_bytes())), Some(public));
        assert_eq!(parse_key("abcd"), None);
        assert_eq!(parse_key(&"zz".repeat(32)), None);
    }
}
