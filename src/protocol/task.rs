//! `POST /v1/task` wire types: parsing and validating the CALL body, and the
//! success body of the RESPONSE.
//!
//! The request is deserialised straight from the received bytes, borrowing
//! strings and keeping `payload` as raw JSON text, so the payload is parsed
//! exactly once (to check it is JSON) and handed to the plugin without being
//! rebuilt. Unknown top-level fields are accepted: clients send SDK-era fields
//! (`source_node_id`, `billing`, …) that `task.json`'s strict schema would
//! reject (`protocol.md` §1.2).

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::ApiError;
use super::confidentiality::SealedResponse;

/// Bounds on `constraints.timeout_ms` (`task.json`: 100..=300000).
pub const TIMEOUT_MS_RANGE: std::ops::RangeInclusive<u64> = 100..=300_000;
const MAX_ID_BYTES: usize = 256;

/// Quality-of-service class of a task (`constraints.qos`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Qos {
    /// Latency-critical.
    Realtime,
    /// A person is waiting; the clients' default.
    #[default]
    Interactive,
    /// Throughput work.
    Batch,
    /// Anything goes.
    BestEffort,
}

impl Qos {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Qos::Realtime => "realtime",
            Qos::Interactive => "interactive",
            Qos::Batch => "batch",
            Qos::BestEffort => "best-effort",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        match name {
            "realtime" => Some(Qos::Realtime),
            "interactive" => Some(Qos::Interactive),
            "batch" => Some(Qos::Batch),
            "best-effort" | "best_effort" => Some(Qos::BestEffort),
            _ => None,
        }
    }
}

#[derive(Deserialize)]
struct RawTask<'a> {
    #[serde(borrow)]
    task_id: Cow<'a, str>,
    #[serde(borrow)]
    intent: Cow<'a, str>,
    #[serde(default, borrow)]
    payload: Option<&'a RawValue>,
    #[serde(default, borrow)]
    constraints: Option<RawConstraints<'a>>,
    #[serde(default, borrow)]
    nonce: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    trace: Option<BodyTrace<'a>>,
    #[serde(default, borrow)]
    iicp_conf: Option<&'a RawValue>,
    #[serde(default, borrow)]
    cx_response_encryption: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    source_node_id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    auth: Option<RawAuth<'a>>,
}

/// `auth`: the spec names the field `node_token`; SDK clients send `token`.
#[derive(Deserialize)]
struct RawAuth<'a> {
    #[serde(default, borrow)]
    node_token: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    token: Option<Cow<'a, str>>,
}

#[derive(Deserialize, Default)]
struct RawConstraints<'a> {
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default, borrow)]
    model: Option<Cow<'a, str>>,
    /// Clients send `qos`; the reference SDK node read `qos_class`
    /// (`protocol.md` §10 #6), so both are accepted.
    #[serde(default, borrow, alias = "qos_class")]
    qos: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct BodyTrace<'a> {
    #[serde(default, borrow)]
    trace_id: Option<Cow<'a, str>>,
}

/// A parsed and validated task CALL.
#[derive(Debug)]
pub struct TaskRequest<'a> {
    /// The consumer's task id, echoed in the response.
    pub task_id: Cow<'a, str>,
    /// The requested intent URN.
    pub intent: Cow<'a, str>,
    /// The payload as JSON text (`null` when absent, and until an encrypted
    /// CALL is opened).
    pub payload: Cow<'a, str>,
    /// The IICP-CX envelope carrying the payload, when the CALL is encrypted
    /// (`payload` absent or null, as the SDK decides).
    pub iicp_conf: Option<&'a RawValue>,
    /// `constraints.timeout_ms`, if the consumer set it (already range-checked).
    pub timeout_ms: Option<u64>,
    /// `constraints.max_tokens`.
    pub max_tokens: Option<u32>,
    /// `constraints.model`.
    pub model: Option<Cow<'a, str>>,
    /// `constraints.qos`. Absent means `interactive`, the clients' default
    /// (`iicp-semantics.md` §2.2); the reference node reads absent as
    /// `best_effort` and fails it fast, but the Rust CLI omits
    /// `constraints` for tasks a person is waiting on.
    pub qos: Qos,
    /// Replay-protection nonce, if any.
    pub nonce: Option<Cow<'a, str>>,
    /// `trace.trace_id` from the body, used when no `traceparent` header came.
    pub body_trace_id: Option<Cow<'a, str>>,
    /// The consumer's own node id (credit-receipt attribution).
    pub source_node_id: Option<Cow<'a, str>>,
    /// `auth.node_token` (or `auth.token`), for plugins with tenants.
    pub auth_token: Option<Cow<'a, str>>,
}

impl<'a> TaskRequest<'a> {
    /// Parses and validates a CALL body. Every failure is a 422
    /// `validation_error` naming what is wrong.
    pub fn parse(body: &'a [u8]) -> Result<Self, ApiError> {
        let raw: RawTask<'a> = serde_json::from_slice(body)
            .map_err(|e| ApiError::validation(format!("invalid task body: {e}")))?;
        check_id("task_id", &raw.task_id)?;
        check_id("intent", &raw.intent)?;
        if let Some(nonce) = &raw.nonce {
            check_id("nonce", nonce)?;
        }
        if let Some(source) = &raw.source_node_id {
            check_id("source_node_id", source)?;
        }
        let iicp_conf = raw.iicp_conf.filter(|_| raw.payload.is_none());
        // Only checked, never obeyed: an encrypted CALL is always answered
        // sealed, so a hop that deletes the field changes nothing
        // (`confidentiality` module docs).
        let seal_response = raw.cx_response_encryption.as_deref() == Some("required");
        if seal_response && iicp_conf.is_none() {
            return Err(ApiError::cx_response_without_request());
        }
        let constraints = raw.constraints.unwrap_or_default();
        if let Some(timeout) = constraints.timeout_ms
            && !TIMEOUT_MS_RANGE.contains(&timeout)
        {
            return Err(ApiError::validation(format!(
                "constraints.timeout_ms must be between {} and {}, got {timeout}",
                TIMEOUT_MS_RANGE.start(),
                TIMEOUT_MS_RANGE.end()
            )));
        }
        let qos = match constraints.qos.as_deref() {
            None => Qos::default(),
            Some(name) => Qos::parse(name).ok_or_else(|| {
                ApiError::validation(
                    "constraints.qos must be one of realtime, interactive, batch, best-effort",
                )
            })?,
        };
        Ok(TaskRequest {
            task_id: raw.task_id,
            intent: raw.intent,
            payload: Cow::Borrowed(raw.payload.map_or("null", RawValue::get)),
            iicp_conf,
            timeout_ms: constraints.timeout_ms,
            max_tokens: constraints.max_tokens,
            model: constraints.model,
            qos,
            nonce: raw.nonce,
            body_trace_id: raw.trace.and_then(|t| t.trace_id),
            source_node_id: raw.source_node_id,
            auth_token: raw.auth.and_then(|auth| auth.node_token.or(auth.token)),
        })
    }
}

fn check_id(field: &str, value: &str) -> Result<(), ApiError> {
    if value.is_empty() {
        return Err(ApiError::validation(format!("{field} must not be empty")));
    }
    if value.len() > MAX_ID_BYTES {
        return Err(ApiError::validation(format!(
            "{field} is longer than {MAX_ID_BYTES} bytes"
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(ApiError::validation(format!(
            "{field} contains control characters"
        )));
    }
    Ok(())
}

/// Token accounting in a response.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Usage {
    /// Tokens consumed by the prompt.
    pub prompt_tokens: u32,
    /// Tokens generated.
    pub completion_tokens: u32,
    /// Sum of both.
    pub total_tokens: u32,
}

/// `metrics` of a successful response (NODE-TASK-04).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ResponseMetrics {
    /// Time from receipt to response, in whole milliseconds.
    pub latency_ms: u64,
    /// `usage.total_tokens`, or 0.
    pub tokens_used: u64,
}

/// The 200 body: `{task_id, status:"success", result, usage?, model_used?, metrics}`.
#[derive(Debug, Serialize)]
pub struct TaskSuccess<'a> {
    /// Echo of the CALL's task id.
    pub task_id: &'a str,
    /// Always `success`.
    pub status: &'static str,
    /// The plugin's result, embedded verbatim.
    pub result: &'a RawValue,
    /// Token usage, when the plugin reported it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// The model that produced the result, when reported.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_used: Option<&'a str>,
    /// Latency and token figures.
    pub metrics: ResponseMetrics,
}

/// The 200 body of an encrypted CALL whose consumer asked for a sealed
/// response: the whole [`TaskSuccess`] body is inside `iicp_conf_resp`.
#[derive(Debug, Serialize)]
pub struct EncryptedSuccess<'a> {
    /// Echo of the CALL's task id.
    pub task_id: &'a str,
    /// Always `encrypted`.
    pub status: &'static str,
    /// The sealed response.
    pub iicp_conf_resp: SealedResponse,
    /// Always true, as the SDK node sends it.
    pub generated_by_ai: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code_of(body: &str) -> String {
        TaskRequest::parse(body.as_bytes())
            .unwrap_err()
            .message()
            .to_string()
    }

    #[test]
    fn parses_a_minimal_task_and_keeps_payload_text() {
        let body = br#"{"task_id":"t","intent":"urn:x","payload":{"a": [1, 2]}}"#;
        let task = TaskRequest::parse(body).unwrap();
        assert_eq!(task.payload, r#"{"a": [1, 2]}"#);
        assert_eq!(task.qos, Qos::Interactive);
        assert_eq!(task.timeout_ms, None);
    }

    #[test]
    fn absent_payload_becomes_json_null() {
        let task = TaskRequest::parse(br#"{"task_id":"t","intent":"urn:x"}"#).unwrap();
        assert_eq!(task.payload, "null");
    }

    #[test]
    fn accepts_qos_class_alias_and_underscore_best_effort() {
        let body = br#"{"task_id":"t","intent":"i","constraints":{"qos_class":"best_effort"}}"#;
        assert_eq!(TaskRequest::parse(body).unwrap().qos, Qos::BestEffort);
    }

    #[test]
    fn rejects_out_of_range_timeout() {
        let message = code_of(r#"{"task_id":"t","intent":"i","constraints":{"timeout_ms":99}}"#);
        assert!(message.contains("timeout_ms"), "{message}");
        let message =
            code_of(r#"{"task_id":"t","intent":"i","constraints":{"timeout_ms":300001}}"#);
        assert!(message.contains("300000"), "{message}");
    }

    #[test]
    fn rejects_missing_fields_and_bad_json() {
        assert!(code_of(r#"{"intent":"i"}"#).contains("task_id"));
        assert!(code_of(r#"{"task_id":"t","#).contains("invalid task body"));
        assert!(code_of(r#"{"task_id":"","intent":"i"}"#).contains("empty"));
        assert!(
            code_of(r#"{"task_id":"t","intent":"i","constraints":{"qos":"fast"}}"#).contains("qos")
        );
    }

    #[test]
    fn an_envelope_replaces_a_missing_payload_only() {
        let encrypted = br#"{"task_id":"t","intent":"i","payload":null,"iicp_conf":{"v":1},
            "cx_response_encryption":"required"}"#;
        let task = TaskRequest::parse(encrypted).unwrap();
        assert_eq!(task.iicp_conf.map(RawValue::get), Some(r#"{"v":1}"#));
        let clear = br#"{"task_id":"t","intent":"i","payload":{},"iicp_conf":{"v":1}}"#;
        assert!(TaskRequest::parse(clear).unwrap().iicp_conf.is_none());
        let error = TaskRequest::parse(
            br#"{"task_id":"t","intent":"i","payload":{},"cx_response_encryption":"required"}"#,
        )
        .unwrap_err();
        assert_eq!((error.status().as_u16(), error.code()), (400, "IICP-CX-03"));
    }

    #[test]
    fn escaped_ids_are_unescaped() {
        let task = TaskRequest::parse(br#"{"task_id":"a\u0041","intent":"i"}"#).unwrap();
        assert_eq!(task.task_id, "aA");
    }
}
