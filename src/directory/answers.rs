//! What the node reads from the directory's answers: the REGISTER answer
//! (`protocol.md` §2.2) and the PONG of a heartbeat (§2.4).
//!
//! Plain functions over the decoded JSON, apart from the calls that fetch
//! it, so that any answer — garbage, hostile or oversized fields — is an
//! error value or a bounded reading, never a panic (`fuzz/` runs them on
//! arbitrary answers).

use std::ops::RangeInclusive;
use std::time::Duration;

use serde_json::Value;

use super::client::DirectoryError;
use super::identity::valid_node_id;

/// Longest token or HMAC key accepted from a REGISTER answer.
const MAX_SECRET_BYTES: usize = 4096;
/// Longest liveness challenge answered.
const MAX_CHALLENGE_BYTES: usize = 1024;

/// What a REGISTER answer grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration<'a> {
    /// `node_token` (or the SDK-era `token`): the Bearer of later calls.
    pub node_token: &'a str,
    /// `node_hmac_key`, when the directory issued one.
    pub hmac_key: Option<&'a str>,
    /// `node_id`, when the directory assigned a valid one.
    pub node_id: Option<&'a str>,
}

impl<'a> Registration<'a> {
    /// Reads a REGISTER answer; one without a usable token is refused.
    /// An HMAC key or node id that is empty, oversized or invalid is
    /// ignored rather than stored.
    pub fn read(answer: &'a Value) -> Result<Self, DirectoryError> {
        let node_token = ["node_token", "token"]
            .iter()
            .find_map(|key| answer.get(*key).and_then(Value::as_str))
            .filter(|t| !t.is_empty() && t.len() <= MAX_SECRET_BYTES)
            .ok_or_else(|| {
                DirectoryError::BadResponse("registration answer carries no node_token".into())
            })?;
        let hmac_key = answer
            .get("node_hmac_key")
            .and_then(Value::as_str)
            .filter(|k| !k.is_empty() && k.len() <= MAX_SECRET_BYTES);
        let node_id = answer
            .get("node_id")
            .and_then(Value::as_str)
            .filter(|id| valid_node_id(id));
        Ok(Self {
            node_token,
            hmac_key,
            node_id,
        })
    }
}

/// What a PONG tells the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pong {
    /// When to heartbeat next.
    pub next_heartbeat: Duration,
    /// A liveness challenge to answer in the next heartbeat.
    pub challenge: Option<String>,
}

impl Pong {
    /// Reads a PONG: `next_heartbeat_ms` (or `default_interval`) kept within
    /// `interval_bounds`, and a challenge of sane length. A PONG that is not
    /// a JSON object is refused.
    pub fn read(
        pong: &Value,
        default_interval: Duration,
        interval_bounds: RangeInclusive<Duration>,
    ) -> Result<Self, DirectoryError> {
        if !pong.is_object() {
            return Err(DirectoryError::BadResponse(
                "heartbeat answer is not a JSON object".into(),
            ));
        }
        let next_heartbeat = pong
            .get("next_heartbeat_ms")
            .and_then(Value::as_u64)
            .map_or(default_interval, Duration::from_millis)
            .clamp(*interval_bounds.start(), *interval_bounds.end());
        let challenge = pong
            .get("challenge")
            .and_then(Value::as_str)
            .filter(|c| !c.is_empty() && c.len() <= MAX_CHALLENGE_BYTES)
            .map(str::to_string);
        Ok(Self {
            next_heartbeat,
            challenge,
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const BOUNDS: RangeInclusive<Duration> = Duration::from_millis(250)..=Duration::from_secs(300);
    const DEFAULT: Duration = Duration::from_secs(30);

    #[test]
    fn registration_needs_a_token_and_drops_unusable_fields() {
        let answer = json!({"node_token": "t", "node_hmac_key": "k", "node_id": "node-1"});
        assert_eq!(
            Registration::read(&answer),
            Ok(Registration {
                node_token: "t",
                hmac_key: Some("k"),
                node_id: Some("node-1"),
            })
        );
        let sdk = json!({"token": "t", "node_hmac_key": "", "node_id": "not a node id!"});
        assert_eq!(
            Registration::read(&sdk),
            Ok(Registration {
                node_token: "t",
                hmac_key: None,
                node_id: None,
            })
        );
        for refused in [
            json!({"node_token": ""}),
            json!({"node_token": "x".repeat(4097)}),
            json!({"node_token": 7}),
            json!(["node_token"]),
            Value::Null,
        ] {
            assert!(
                matches!(
                    Registration::read(&refused),
                    Err(DirectoryError::BadResponse(_))
                ),
                "{refused}"
            );
        }
    }

    #[test]
    fn pong_interval_is_bounded_and_challenges_are_sane() {
        let read = |pong: Value| Pong::read(&pong, DEFAULT, BOUNDS);
        assert_eq!(
            read(json!({"next_heartbeat_ms": 1500, "challenge": "c"})),
            Ok(Pong {
                next_heartbeat: Duration::from_millis(1500),
                challenge: Some("c".into()),
            })
        );
        assert_eq!(read(json!({})).unwrap().next_heartbeat, DEFAULT);
        assert_eq!(
            read(json!({"next_heartbeat_ms": 0}))
                .unwrap()
                .next_heartbeat,
            Duration::from_millis(250)
        );
        assert_eq!(
            read(json!({"next_heartbeat_ms": u64::MAX}))
                .unwrap()
                .next_heartbeat,
            Duration::from_secs(300)
        );
        assert_eq!(
            read(json!({"next_heartbeat_ms": -5}))
                .unwrap()
                .next_heartbeat,
            DEFAULT
        );
        let long = "c".repeat(1025);
        assert_eq!(read(json!({"challenge": long})).unwrap().challenge, None);
        assert!(read(json!("ok")).is_err());
        assert!(read(Value::Null).is_err());
    }
}
