//! The protocol's error envelope, `{"error":{"code":…,"message":…}}`, and the
//! codes this node emits. Every route reports failures through [`ApiError`], so
//! no framework default (plain text, HTML, stack traces) ever reaches a client.
//!
//! Codes follow `protocol.md` §3. Where the spec and the reference SDK
//! disagree we chose:
//! * capacity: HTTP 429 with code `IICP-E021`, message `capacity_exceeded`,
//!   plus `qos_class`, `retry_after_ms` and a `Retry-After` header (§10 #5);
//! * replay: HTTP 409 `IICP-E011`, message `replay_detected`;
//! * draining: the SDK's 503 `IICP-E024` (the spec uses E024 for a proxy's
//!   504 when every CIP worker timed out, §10 #13) with `reason` and
//!   `retry_after_ms`;
//! * unknown intent: HTTP 404 `unknown_intent`;
//! * IICP-CX failures: the SDK's 400 `IICP-CX-02`/`-03` and 500 `IICP-CX-04`
//!   rather than the spec's 422 `IICP-E050`, which collides with a directory
//!   code (§10 #13);
//! * failures after a task was accepted also carry `task_id` and `status`
//!   (`error` or `timeout`), which both the SDK clients and the spec read.

use std::borrow::Cow;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Longest message text we put in an envelope; longer text is cut.
const MAX_MESSAGE_BYTES: usize = 1024;

/// A protocol error, rendered as the error envelope with its HTTP status.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: Cow<'static, str>,
    retryable: Option<bool>,
    qos_class: Option<&'static str>,
    reason: Option<&'static str>,
    retry_after_ms: Option<u64>,
    /// Boxed: rare, and it keeps every `Result<_, ApiError>` small.
    task: Option<Box<TaskContext>>,
}

#[derive(Debug, Clone)]
struct TaskContext {
    task_id: String,
    status: &'static str,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            status,
            code,
            message: truncate(message.into()),
            retryable: None,
            qos_class: None,
            reason: None,
            retry_after_ms: None,
            task: None,
        }
    }

    /// 422 `validation_error`: the body is not a valid task.
    pub fn validation(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_error",
            message,
        )
    }

    /// 404 `unknown_intent`: no loaded plugin serves the intent.
    pub fn unknown_intent(intent: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "unknown_intent",
            format!("this node does not serve intent {intent}"),
        )
    }

    /// 413 `payload_too_large`: the body exceeds the configured limit.
    pub fn payload_too_large(limit_bytes: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request body exceeds {limit_bytes} bytes"),
        )
    }

    /// 429 `IICP-E021` `capacity_exceeded`: every slot is busy.
    pub fn capacity_exceeded(qos_class: &'static str, retry_after_ms: u64) -> Self {
        let mut error = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "IICP-E021",
            "capacity_exceeded",
        );
        error.qos_class = Some(qos_class);
        error.retry_later(retry_after_ms)
    }

    /// 409 `IICP-E010` `duplicate_task` (the reference node's code and
    /// message): the task id was used inside the window and `reason` says
    /// why it is not answered (see `server::idempotency`).
    pub fn duplicate_task(reason: &'static str) -> Self {
        let mut error = Self::new(StatusCode::CONFLICT, "IICP-E010", "duplicate_task");
        error.reason = Some(reason);
        error.retryable = Some(false);
        error
    }

    /// 409 `IICP-E011` `replay_detected`: the nonce was seen inside the window.
    pub fn replay_detected() -> Self {
        Self::new(StatusCode::CONFLICT, "IICP-E011", "replay_detected")
    }

    /// 503 `nonce_cache_full`: the replay cache is at its cap with entries
    /// that are all still inside the window, so a new nonce cannot be
    /// remembered and is refused rather than risk accepting a replay later.
    pub fn nonce_cache_full(retry_after_ms: u64) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "nonce_cache_full",
            "replay cache is full; retry later or send the task without a nonce",
        )
        .retry_later(retry_after_ms)
    }

    /// 429 `IICP-E023`: this `Origin` used its task window (the SDK's code
    /// and message).
    pub fn origin_rate_limited(retry_after_ms: u64) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "IICP-E023",
            "per-origin task rate limit exceeded",
        )
        .retry_later(retry_after_ms)
    }

    /// 504 `task_timeout`: the task did not finish inside its budget.
    pub fn task_timeout(budget_ms: u64) -> Self {
        let mut error = Self::new(
            StatusCode::GATEWAY_TIMEOUT,
            "task_timeout",
            format!("task did not finish within its {budget_ms} ms budget"),
        );
        error.retryable = Some(true);
        error
    }

    /// 502 `backend_error`: the plugin or its backend failed.
    pub fn backend_error(message: impl Into<Cow<'static, str>>, retryable: bool) -> Self {
        let mut error = Self::new(StatusCode::BAD_GATEWAY, "backend_error", message);
        error.retryable = Some(retryable);
        error
    }

    /// 503 `unavailable`: temporarily unable to serve.
    pub fn unavailable(message: impl Into<Cow<'static, str>>, retry_after_ms: u64) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
            .retry_later(retry_after_ms)
    }

    /// 408 `request_timeout`: the request body did not arrive within the
    /// body-read deadline.
    pub fn request_timeout(deadline_ms: u64) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!("the request body did not arrive within {deadline_ms} ms"),
        )
    }

    /// 503 `IICP-E024`: the node is shutting down (the reference node's
    /// code for a draining backend, `protocol.md` §1.3 step 3); retry on
    /// another node or later.
    pub fn shutting_down(retry_after_ms: u64) -> Self {
        let mut error = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "IICP-E024",
            "the node is shutting down",
        );
        error.reason = Some("shutting_down");
        error.retry_later(retry_after_ms)
    }

    /// 503 `IICP-E024`: the node or the plugin is draining; `reason` says
    /// which (see `server::drain`).
    pub fn draining(reason: &'static str, retry_after_ms: u64) -> Self {
        let mut error = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "IICP-E024",
            "backend temporarily draining",
        );
        error.reason = Some(reason);
        error.retry_later(retry_after_ms)
    }

    /// 500 `internal_error`: a fault inside this node or a plugin bug.
    pub fn internal(message: impl Into<Cow<'static, str>>) -> Self {
        let mut error = Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", message);
        error.retryable = Some(false);
        error
    }

    /// 400 `IICP-CX-02`: an encrypted CALL that cannot be opened
    /// (`protocol.md` §1.6; the SDK's code, see `confidentiality`).
    pub fn cx_open_failed(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "IICP-CX-02", message)
    }

    /// 400 `IICP-CX-03`: a sealed response asked for without an encrypted CALL.
    pub fn cx_response_without_request() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "IICP-CX-03",
            "cx_response_encryption is required but the task is not encrypted (iicp_conf)",
        )
    }

    /// 500 `IICP-CX-04`: the response could not be sealed.
    pub fn cx_seal_failed() -> Self {
        let mut error = Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "IICP-CX-04",
            "the response could not be encrypted",
        );
        error.retryable = Some(false);
        error
    }

    /// 403 `tool_execution_denied`: a tool-domain intent on a node whose
    /// policy does not allow tool execution (the reference node's message).
    pub fn tool_execution_denied() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "tool_execution_denied",
            "Tool-execution intents are not permitted by this node's CIP policy",
        )
    }

    /// 401 `unauthorized`: missing or wrong credentials.
    pub fn unauthorized(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 401 `unauthorized` whose `reason` names the part that failed
    /// (see `server::task_auth`).
    pub fn unauthorized_because(reason: &'static str, message: &'static str) -> Self {
        let mut error = Self::unauthorized(message);
        error.reason = Some(reason);
        error
    }

    /// 409 `conflict`: the request contradicts the current state.
    pub fn conflict(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// 404 `not_found`: no such route.
    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "no such route")
    }

    /// 405 `method_not_allowed`: the route exists with another method.
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "method not allowed on this route",
        )
    }

    /// 404 `IICP-E030`: no alive relay session for this worker.
    pub fn relay_target_unknown() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "IICP-E030",
            "no alive relay session for this worker",
        )
    }

    /// 502 `IICP-E031`: the relay could not get the task answered.
    pub fn relay_forward_failed(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_GATEWAY, "IICP-E031", message).with_retryable(true)
    }

    /// 409 `IICP-E038`: the worker id has an alive relay session.
    pub fn relay_worker_bound() -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "IICP-E038",
            "worker_id has an alive relay session; rebind rejected",
        )
    }

    /// 429 `IICP-E039`, reason `relay_bind_rate_limited`.
    pub fn relay_bind_rate_limited(retry_after_ms: u64) -> Self {
        let mut error = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "IICP-E039",
            "relay bind rate limit exceeded",
        );
        error.reason = Some("relay_bind_rate_limited");
        error.retry_later(retry_after_ms)
    }

    /// 503 `IICP-E039`: the relay is at a capacity limit.
    pub fn relay_at_capacity(message: impl Into<Cow<'static, str>>, retry_after_ms: u64) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "IICP-E039", message).retry_later(retry_after_ms)
    }

    /// 401 `IICP-E040`: the bind ticket is missing or invalid.
    pub fn relay_ticket_refused(message: &'static str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "IICP-E040", message)
    }

    /// 409 `IICP-E040`: the bind ticket was used before.
    pub fn relay_ticket_replayed() -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "IICP-E040",
            "relay bind ticket replayed",
        )
    }

    /// 401 `IICP-E021`: the relay session token is missing or unknown (the
    /// reference's code, reused for this; `protocol.md` §10 #13).
    pub fn relay_session_unknown() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "IICP-E021",
            "invalid or missing relay session token",
        )
    }

    /// 422 `IICP-E001`: a relay request body is malformed (the reference's code).
    pub fn relay_input(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "IICP-E001", message)
    }

    /// 403 `forbidden`: the credentials are understood and not good enough
    /// (e.g. a gossip signature that does not verify).
    pub fn forbidden(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 429 `rate_limited`, retryable after `retry_after_ms`.
    pub fn rate_limited(message: impl Into<Cow<'static, str>>, retry_after_ms: u64) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message)
            .retry_later(retry_after_ms)
    }

    /// 401 `IICP-E012`: an HMAC-signed `/v1/peers` exchange is refused (the
    /// reference SDK's code).
    pub fn peers_hmac_refused(message: &'static str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "IICP-E012", message)
    }

    /// Retryable, after `retry_after_ms` (also sent as `Retry-After`).
    fn retry_later(mut self, retry_after_ms: u64) -> Self {
        self.retry_after_ms = Some(retry_after_ms);
        self.retryable = Some(true);
        self
    }

    /// Sets whether the consumer may retry.
    pub fn with_retryable(mut self, retryable: bool) -> Self {
        self.retryable = Some(retryable);
        self
    }

    /// Attaches the accepted task's id; the body then also carries `status`.
    pub fn for_task(mut self, task_id: &str) -> Self {
        let status = if self.status == StatusCode::GATEWAY_TIMEOUT {
            "timeout"
        } else {
            "error"
        };
        self.task = Some(Box::new(TaskContext {
            task_id: task_id.to_string(),
            status,
        }));
        self
    }

    /// The HTTP status this error is sent with.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The protocol error code, e.g. `validation_error` or `IICP-E021`.
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// Whether the consumer may retry, when the error says.
    pub fn retryable(&self) -> Option<bool> {
        self.retryable
    }

    /// The `reason` detail, when the error has one.
    pub fn reason(&self) -> Option<&'static str> {
        self.reason
    }

    /// The human-readable message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

fn truncate(mut message: Cow<'static, str>) -> Cow<'static, str> {
    if message.len() > MAX_MESSAGE_BYTES {
        let mut end = MAX_MESSAGE_BYTES;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.to_mut().truncate(end);
    }
    message
}

#[derive(Serialize)]
struct Envelope<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    task_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<&'a str>,
    error: ErrorBody<'a>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    retryable: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    qos_class: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after_ms: Option<u64>,
}

impl ApiError {
    /// The envelope's JSON bytes.
    fn envelope_json(&self) -> Vec<u8> {
        let envelope = Envelope {
            task_id: self.task.as_ref().map(|t| t.task_id.as_str()),
            status: self.task.as_ref().map(|t| t.status),
            error: ErrorBody {
                code: self.code,
                message: &self.message,
                retryable: self.retryable,
                qos_class: self.qos_class,
                reason: self.reason,
                retry_after_ms: self.retry_after_ms,
            },
        };
        serde_json::to_vec(&envelope).unwrap_or_else(|_| {
            br#"{"error":{"code":"internal_error","message":"unencodable error"}}"#.to_vec()
        })
    }

    /// The whole HTTP/1.1 response, with `Connection: close`, as bytes to
    /// write on a socket no HTTP server handles (a connection refused at
    /// the connection cap). Carries CORS's allow-origin so browsers can
    /// read it, like every other response.
    pub fn to_http1_close(&self) -> Vec<u8> {
        let body = self.envelope_json();
        let mut head = format!(
            "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\naccess-control-allow-origin: *\r\nconnection: close\r\ncontent-length: {}\r\n",
            self.status.as_u16(),
            self.status.canonical_reason().unwrap_or(""),
            body.len()
        );
        if let Some(ms) = self.retry_after_ms {
            head.push_str(&format!("retry-after: {}\r\n", retry_after_seconds(ms)));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(&body);
        bytes
    }
}

/// `Retry-After` is in whole seconds; never 0 (that would invite an
/// immediate retry).
fn retry_after_seconds(ms: u64) -> u64 {
    ms.div_ceil(1000).max(1)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, self.envelope_json()).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(ms) = self.retry_after_ms {
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after_seconds(ms)),
            );
        }
        if self.status == StatusCode::REQUEST_TIMEOUT {
            // The rest of the request body is never read, so the connection
            // cannot carry another request.
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_are_cut_on_a_char_boundary() {
        let error = ApiError::validation("é".repeat(MAX_MESSAGE_BYTES));
        assert!(error.message().len() <= MAX_MESSAGE_BYTES);
        assert!(error.message().chars().all(|c| c == 'é'));
    }

    #[test]
    fn capacity_error_carries_retry_after_header() {
        let response = ApiError::capacity_exceeded("batch", 1500).into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
    }

    #[test]
    fn a_raw_refusal_is_a_complete_http_response_with_the_envelope() {
        let bytes = ApiError::unavailable("busy", 1000).to_http1_close();
        let text = String::from_utf8(bytes).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{head}"
        );
        assert!(head.contains("connection: close") && head.contains("retry-after: 1"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"]["code"], "unavailable");
    }

    #[test]
    fn timeout_for_task_reports_timeout_status() {
        let error = ApiError::task_timeout(500).for_task("t-1");
        assert_eq!(error.task.as_ref().map(|t| t.status), Some("timeout"));
    }
}
