//! The bodies of the HTTP long-poll relay (`protocol.md` §1.1, §7.1), as
//! the reference node exchanges them, plus a few optional fields of ours.
//!
//! Reference fields: bind `{worker_id, intent, models, bind_ticket}` →
//! `{session_token, poll_timeout_s, worker_endpoint_path}`; pull →
//! `{call_id, task}` or 204; result `{call_id, result}` where `result` is
//! merged into `{task_id, status, …}` for the consumer.
//!
//! Our additions, ignored by reference peers:
//! * bind `rebind_key` — a secret the worker keeps in its state directory;
//!   a bind presenting the key of an *alive* session takes it over (the old
//!   session ends, its tasks are answered `IICP-E031`) instead of being
//!   refused with `IICP-E038`, so a restarted worker is back at once rather
//!   than after the liveness window. Without the key the reference's
//!   non-displacement rule (§7.2) holds. The relay also pins each worker
//!   id to the key it first bound with, across restarts (`pins`).
//! * bind answer `liveness_s` — the window after which a silent worker is
//!   dropped.
//! * pulled call `elapsed_ms` and `headers` — how long the task already
//!   waited at the relay (the worker's `timeout_ms` budget runs from the
//!   relay's receipt, not its own) and the consumer's trace, origin and
//!   credential headers, so the worker runs it exactly as a direct task.
//! * result `http_status` and `headers` — our worker posts its whole
//!   response body as `result` plus its status and headers, and our relay
//!   answers the consumer with exactly those. Without `http_status` (a
//!   reference worker) `result` is merged into `{task_id, status:"success"}`
//!   with 200 — `success` rather than the reference's `completed`, as the
//!   spec and our direct path say (`protocol.md` §10 #7).

use std::collections::BTreeMap;
use std::fmt;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use serde::de::{DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Largest bind body read.
pub const MAX_BIND_BYTES: usize = 16 << 10;
/// Most models a bind may list, and the longest name of each.
pub const MAX_MODELS: usize = 64;
/// Longest intent or model name accepted at bind.
pub const MAX_NAME_BYTES: usize = 256;
/// Longest header value carried across the relay.
const MAX_HEADER_VALUE_BYTES: usize = 4096;

/// Consumer request headers the relay hands to the worker with the task.
pub const FORWARDED_REQUEST_HEADERS: &[&str] = &[
    "traceparent",
    "tracestate",
    "origin",
    "authorization",
    "x-iicp-consumer-token",
];

/// Worker response headers the relay passes back to the consumer.
pub const FORWARDED_RESPONSE_HEADERS: &[&str] = &["retry-after", "x-iicp-trace-id"];

/// `POST /v1/relay/bind`.
#[derive(Debug, Serialize, Deserialize)]
pub struct BindRequest {
    /// The worker's node id.
    pub worker_id: String,
    /// Its (first) intent, informational.
    #[serde(default)]
    pub intent: String,
    /// Its models, shown by the relay-for health route.
    #[serde(default)]
    pub models: Vec<String>,
    /// A directory-signed bind ticket (§7.4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind_ticket: Option<String>,
    /// Ours: proves this is the worker that bound the alive session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebind_key: Option<String>,
}

/// The bind answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct BindAnswer {
    /// Bearer token for pull, result and unbind.
    pub session_token: String,
    /// How long a pull waits before answering 204.
    pub poll_timeout_s: u64,
    /// Path prefix consumers use: `/v1/relay-for/{worker_id}`.
    pub worker_endpoint_path: String,
    /// Ours: the liveness window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness_s: Option<u64>,
}

/// A task handed to the worker by `GET /v1/relay/pull`.
#[derive(Debug, Deserialize)]
pub struct PulledCall {
    /// Names the answer.
    pub call_id: String,
    /// The consumer's CALL body, untouched.
    pub task: Box<RawValue>,
    /// Ours: milliseconds the task already spent at the relay.
    #[serde(default)]
    pub elapsed_ms: Option<u64>,
    /// Ours: the consumer's forwarded headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// `POST /v1/relay/result`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ResultPost<R> {
    /// The call answered.
    pub call_id: String,
    /// The response body (ours) or the handler's result object (reference).
    pub result: R,
    /// Ours: the HTTP status to answer the consumer with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    /// Ours: response headers to pass on.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

/// `POST /v1/relay/result` as the relay reads it: borrowed from the body,
/// so a large result is never copied or parsed into a tree while read.
#[derive(Debug, Deserialize)]
pub struct ReceivedResult<'a> {
    /// The call answered (a relay-made hex id: no escapes to unfold).
    pub call_id: &'a str,
    /// The response body (ours) or the handler's result object (reference).
    #[serde(borrow)]
    pub result: &'a RawValue,
    /// Ours: the HTTP status to answer the consumer with.
    #[serde(default)]
    pub http_status: Option<u16>,
    /// Ours: response headers, read field by field with [`for_each_field`]
    /// so only the forwarded ones are kept.
    #[serde(default, borrow)]
    pub headers: Option<&'a RawValue>,
}

/// Calls `each` with every key and raw value of the JSON object `object`,
/// in order, holding one key at a time: a huge object is walked, never
/// built. Fails when `object` is not one JSON object.
pub fn for_each_field<'a>(
    object: &'a str,
    mut each: impl FnMut(&str, &'a RawValue),
) -> Result<(), serde_json::Error> {
    let mut deserializer = serde_json::Deserializer::from_str(object);
    Fields(&mut each).deserialize(&mut deserializer)?;
    deserializer.end()
}

struct Fields<'f, F>(&'f mut F);

impl<'de, F: FnMut(&str, &'de RawValue)> DeserializeSeed<'de> for Fields<'_, F> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de, F: FnMut(&str, &'de RawValue)> Visitor<'de> for Fields<'_, F> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<String>()? {
            let value: &'de RawValue = map.next_value()?;
            (self.0)(&key, value);
        }
        Ok(())
    }
}

/// The forwarded response headers (`allowed`) of a posted `headers`
/// object; anything else in it is skipped unread.
pub fn allowed_headers(
    headers: Option<&RawValue>,
    allowed: &[&str],
) -> Result<BTreeMap<String, String>, serde_json::Error> {
    let mut kept = BTreeMap::new();
    if let Some(headers) = headers {
        for_each_field(headers.get(), |name, value| {
            let name = name.to_ascii_lowercase();
            if allowed.contains(&name.as_str())
                && value.get().len() <= MAX_HEADER_VALUE_BYTES + 2
                && let Ok(value) = serde_json::from_str::<String>(value.get())
            {
                kept.insert(name, value);
            }
        })?;
    }
    Ok(kept)
}

/// The headers of `headers` named in `allowed`, lower-cased, with values
/// that are visible ASCII and not too long.
pub fn pick_headers(headers: &HeaderMap, allowed: &[&str]) -> BTreeMap<String, String> {
    allowed
        .iter()
        .filter_map(|name| {
            let value = headers.get(*name)?.to_str().ok()?;
            (value.len() <= MAX_HEADER_VALUE_BYTES).then(|| (name.to_string(), value.to_string()))
        })
        .collect()
}

/// Turns carried headers back into a header map, keeping only `allowed`
/// names and valid values: whatever the other side sent, nothing else gets
/// through.
pub fn header_map(carried: &BTreeMap<String, String>, allowed: &[&str]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in carried {
        let name = name.to_ascii_lowercase();
        if !allowed.contains(&name.as_str()) || value.len() > MAX_HEADER_VALUE_BYTES {
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            map.insert(name, value);
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_are_walked_field_by_field_and_only_allowed_headers_are_kept() {
        let mut seen = Vec::new();
        for_each_field(r#"{"a":1,"b\"c":{"d":[1,2]},"a":"x"}"#, |key, value| {
            seen.push((key.to_string(), value.get().to_string()));
        })
        .unwrap();
        assert_eq!(
            seen,
            [
                ("a".into(), "1".into()),
                ("b\"c".into(), r#"{"d":[1,2]}"#.into()),
                ("a".into(), r#""x""#.into())
            ]
        );
        assert!(for_each_field("[1]", |_, _| {}).is_err());
        assert!(for_each_field("{} {}", |_, _| {}).is_err());
        let received: ReceivedResult<'_> = serde_json::from_str(
            r#"{"call_id":"c","result":{},"headers":{"Retry-After":"2","set-cookie":"x","x-iicp-trace-id":7}}"#,
        )
        .unwrap();
        assert_eq!(received.call_id, "c");
        assert_eq!(
            allowed_headers(received.headers, FORWARDED_RESPONSE_HEADERS).unwrap(),
            BTreeMap::from([("retry-after".to_string(), "2".to_string())])
        );
    }

    #[test]
    fn only_allowed_headers_cross() {
        let mut carried = BTreeMap::new();
        carried.insert("Traceparent".to_string(), "00-a-b-01".to_string());
        carried.insert("cookie".to_string(), "secret".to_string());
        carried.insert("origin".to_string(), "bad\nvalue".to_string());
        let map = header_map(&carried, FORWARDED_REQUEST_HEADERS);
        assert_eq!(map.len(), 1);
        assert_eq!(map["traceparent"], "00-a-b-01");
        assert_eq!(
            pick_headers(&map, FORWARDED_REQUEST_HEADERS),
            BTreeMap::from([("traceparent".to_string(), "00-a-b-01".to_string())])
        );
    }
}
