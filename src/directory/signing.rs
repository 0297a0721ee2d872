//! HMAC material exchanged with the directory (`protocol.md` §2.5, §5):
//! the liveness-challenge response, the two pricing-signature forms, and the
//! credit-receipt signature. Pure functions, checked against the vectors of
//! §5.4.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = HmacSha256::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// Lowercase hex HMAC-SHA256 of `message` under `key` (UTF-8 bytes of both).
pub fn hmac_hex(key: &str, message: &str) -> String {
    hex::encode(hmac_sha256(key.as_bytes(), message.as_bytes()))
}

/// `challenge_response`: hex HMAC of the directory's last challenge (ADR-047).
pub fn challenge_response(hmac_key: &str, challenge: &str) -> String {
    hmac_hex(hmac_key, challenge)
}

/// How a pricing declaration is signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PricingSignature {
    /// The SDK's form, which the production PHP directory checks (§5.2):
    /// hex HMAC over the two-field canonical JSON, keyed with the HMAC key.
    #[default]
    Sdk,
    /// The spec's form (§5.3): base64url HMAC over the whole canonical
    /// block including effective dates, keyed with the node token.
    Spec,
    /// No signature.
    #[serde(rename = "none")]
    #[value(name = "none")]
    Unsigned,
}

/// A number as PHP's `json_encode` writes it: whole values without a
/// fraction (`1`, not `1.0`), others in shortest round-trip form (`1.5`).
pub fn canonical_number(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value}")
    }
}

/// The SDK form's signed bytes: `{"credit_cost_multiplier":<n>,"pricing_model":<s>}`.
pub fn sdk_pricing_message(multiplier: f64, model: &str) -> String {
    format!(
        "{{\"credit_cost_multiplier\":{},\"pricing_model\":{}}}",
        canonical_number(multiplier),
        serde_json::Value::String(model.to_string())
    )
}

/// The SDK form's signature: lowercase hex.
pub fn sdk_pricing_signature(hmac_key: &str, multiplier: f64, model: &str) -> String {
    hmac_hex(hmac_key, &sdk_pricing_message(multiplier, model))
}

/// The spec form's signed bytes: the whole block, keys sorted, effective
/// dates as strings or JSON `null`.
pub fn spec_pricing_message(
    multiplier: f64,
    model: &str,
    from: Option<&str>,
    until: Option<&str>,
) -> String {
    let text = |value: Option<&str>| {
        value.map_or_else(
            || "null".to_string(),
            |v| serde_json::Value::String(v.to_string()).to_string(),
        )
    };
    format!(
        "{{\"credit_cost_multiplier\":{},\"effective_from\":{},\"effective_until\":{},\"pricing_model\":{}}}",
        canonical_number(multiplier),
        text(from),
        text(until),
        serde_json::Value::String(model.to_string())
    )
}

/// The spec form's signature: base64url without padding, keyed with the node token.
pub fn spec_pricing_signature(
    node_token: &str,
    multiplier: f64,
    model: &str,
    from: Option<&str>,
    until: Option<&str>,
) -> String {
    let mac = hmac_sha256(
        node_token.as_bytes(),
        spec_pricing_message(multiplier, model, from, until).as_bytes(),
    );
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac)
}

/// The receipt's canonical string (§5.5, 6/7-field form, empty CIP fields):
/// `task_id:tokens_used:::nonce:response_hash[:querying_node_id]`.
pub fn receipt_message(
    task_id: &str,
    tokens_used: u64,
    nonce: &str,
    response_hash: &str,
    querying_node_id: Option<&str>,
) -> String {
    let mut message = format!("{task_id}:{tokens_used}:::{nonce}:{response_hash}");
    if let Some(querying) = querying_node_id.filter(|q| !q.is_empty()) {
        message.push(':');
        message.push_str(querying);
    }
    message
}

/// SHA-256 hex of the result as key-sorted compact JSON (`response_hash`).
pub fn response_hash(result: &serde_json::Value) -> String {
    let mut canonical = String::new();
    write_sorted(result, &mut canonical);
    hex::encode(Sha256::digest(canonical.as_bytes()))
}

/// Compact JSON with object keys sorted at every depth, whatever order the
/// map type keeps.
fn write_sorted(value: &serde_json::Value, out: &mut String) {
    match value {
        serde_json::Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::Value::String(key.clone()).to_string());
                out.push(':');
                write_sorted(&map[key], out);
            }
            out.push('}');
        }
        serde_json::Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_sorted(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Vectors of protocol.md §5.4.
    #[test]
    fn sdk_pricing_signatures_match_the_vectors() {
        assert_eq!(
            sdk_pricing_message(1.5, "per_token"),
            r#"{"credit_cost_multiplier":1.5,"pricing_model":"per_token"}"#
        );
        assert_eq!(
            sdk_pricing_message(1.0, "per_token"),
            r#"{"credit_cost_multiplier":1,"pricing_model":"per_token"}"#
        );
        assert_eq!(
            sdk_pricing_signature("test-secret-key", 1.5, "per_token"),
            "24a66a87446583304b1a4a304de30f91dfab8c9c48d85209710217ca6b8b5d0c"
        );
        assert_eq!(
            sdk_pricing_signature("test-secret-key", 1.0, "per_token"),
            "f9410daac024d20a38ef76ca16b92d07e01b1686d5b755cea691fa593a947a26"
        );
        assert_eq!(
            sdk_pricing_signature("k", 1.5, "per_token"),
            "4d5de8e319119be82684eeae72addd47918cb8fdde29b9e0c17e67b1d2db1682"
        );
    }

    #[test]
    fn challenge_response_matches_the_vector() {
        assert_eq!(
            challenge_response("secret-key", "nonce-abc"),
            "2241c5f5adb098fa34ba90a921abb3634ce84403d21fbf193d046452b231fe63"
        );
    }

    #[test]
    fn spec_form_signs_the_whole_block_in_base64url() {
        assert_eq!(
            spec_pricing_message(2.0, "flat", Some("2026-01-01T00:00:00Z"), None),
            r#"{"credit_cost_multiplier":2,"effective_from":"2026-01-01T00:00:00Z","effective_until":null,"pricing_model":"flat"}"#
        );
        let signature = spec_pricing_signature("token", 2.0, "flat", None, None);
        assert_eq!(signature.len(), 43);
        assert!(!signature.contains(['+', '/', '=']));
        let mac = hmac_sha256(
            b"token",
            spec_pricing_message(2.0, "flat", None, None).as_bytes(),
        );
        assert_eq!(
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(&signature)
                .unwrap(),
            mac
        );
    }

    #[test]
    fn numbers_follow_php_json_encode() {
        assert_eq!(canonical_number(1.0), "1");
        assert_eq!(canonical_number(0.0), "0");
        assert_eq!(canonical_number(1.5), "1.5");
        assert_eq!(canonical_number(0.1), "0.1");
        assert_eq!(canonical_number(1000.0), "1000");
    }

    #[test]
    fn receipt_message_and_hash() {
        assert_eq!(receipt_message("t", 12, "n", "h", None), "t:12:::n:h");
        assert_eq!(receipt_message("t", 12, "n", "h", Some("")), "t:12:::n:h");
        assert_eq!(
            receipt_message("t", 12, "n", "h", Some("q")),
            "t:12:::n:h:q"
        );
        let value: serde_json::Value =
            serde_json::from_str(r#"{"b":1,"a":{"d":[1,{"z":0,"y":"é"}],"c":null}}"#).unwrap();
        let mut canonical = String::new();
        write_sorted(&value, &mut canonical);
        assert_eq!(
            canonical,
            r#"{"a":{"c":null,"d":[1,{"y":"é","z":0}]},"b":1}"#
        );
        assert_eq!(response_hash(&value).len(), 64);
    }
}
