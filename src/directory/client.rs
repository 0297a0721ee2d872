//! HTTP calls to the directory: `{base}/v1/<op>` with an optional Bearer
//! token, JSON in and out. Every answer is bounded in size and time, and
//! both error shapes real directories use — `{"error":{"code","message"}}`
//! and the flat `{"error":"IICP-E034","message":…}` — are understood. A
//! garbage, oversized or slow answer is a [`DirectoryError`], never a panic.

use std::fmt;
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// Largest directory answer read.
const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// Why a directory call failed.
#[derive(Debug, Clone, PartialEq)]
pub enum DirectoryError {
    /// No answer: connection refused, reset, timed out.
    Network(String),
    /// An HTTP error status, with whatever the body explained.
    Status {
        /// The HTTP status.
        status: u16,
        /// `error.code` or the flat `error` string.
        code: Option<String>,
        /// `error.message` or `message`.
        message: Option<String>,
        /// `Retry-After`, `retry_after` or `retry_after_ms`, if given.
        retry_after: Option<Duration>,
    },
    /// A success status with a body that is not the expected JSON, or too big.
    BadResponse(String),
}

impl DirectoryError {
    /// The HTTP status, for status errors.
    pub fn status(&self) -> Option<u16> {
        match self {
            DirectoryError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether the directory no longer knows this node or its token
    /// (401, 404, 410): the cure is to register again.
    pub fn needs_registration(&self) -> bool {
        matches!(self.status(), Some(401 | 404 | 410))
    }
}

impl fmt::Display for DirectoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DirectoryError::Network(why) => write!(f, "directory unreachable: {why}"),
            DirectoryError::BadResponse(why) => write!(f, "invalid directory answer: {why}"),
            DirectoryError::Status {
                status,
                code,
                message,
                ..
            } => {
                write!(f, "directory answered HTTP {status}")?;
                if let Some(code) = code {
                    write!(f, " {code}")?;
                }
                if let Some(message) = message {
                    write!(f, ": {message}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for DirectoryError {}

/// A directory at one base URL (e.g. `https://iicp.network/api`).
#[derive(Debug, Clone)]
pub struct DirectoryClient {
    http: reqwest::Client,
    base: String,
}

impl DirectoryClient {
    /// A client whose every call is bounded by `timeout`.
    pub fn new(base_url: &str, timeout: Duration) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            // Never follow a redirect: the register body carries the node's
            // token and HMAC key, and a directory that moved is configured
            // by the operator, not discovered. A 3xx is a failed call.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("iicp-host/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Self {
            http,
            base: base_url.trim_end_matches('/').to_string(),
        })
    }

    /// The base URL as given.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// `POST {base}/v1/{op}`.
    pub async fn post(
        &self,
        op: &str,
        bearer: Option<&str>,
        body: &Value,
    ) -> Result<Value, DirectoryError> {
        self.call(Method::POST, op, bearer, Some(body)).await
    }

    /// `POST {base}/v1/{op}` with extra request headers.
    pub async fn post_with_headers(
        &self,
        op: &str,
        bearer: Option<&str>,
        headers: &[(&str, &str)],
        body: &Value,
    ) -> Result<Value, DirectoryError> {
        self.call_with(Method::POST, op, bearer, headers, Some(body))
            .await
    }

    /// `DELETE {base}/v1/{op}`.
    pub async fn delete(
        &self,
        op: &str,
        bearer: Option<&str>,
        body: &Value,
    ) -> Result<Value, DirectoryError> {
        self.call(Method::DELETE, op, bearer, Some(body)).await
    }

    /// `GET {base}/v1/{op}`, unauthenticated.
    pub async fn get(&self, op: &str) -> Result<Value, DirectoryError> {
        self.call(Method::GET, op, None, None).await
    }

    async fn call(
        &self,
        method: Method,
        op: &str,
        bearer: Option<&str>,
        body: Option<&Value>,
    ) -> Result<Value, DirectoryError> {
        self.call_with(method, op, bearer, &[], body).await
    }

    async fn call_with(
        &self,
        method: Method,
        op: &str,
        bearer: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<Value, DirectoryError> {
        let url = format!("{}/v1/{op}", self.base);
        let mut request = self.http.request(method, &url);
        if let Some(body) = body {
            let body =
                serde_json::to_vec(body).map_err(|e| DirectoryError::BadResponse(e.to_string()))?;
            request = request.header(CONTENT_TYPE, "application/json").body(body);
        }
        if let Some(token) = bearer {
            request = request.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let mut response = request
            .send()
            .await
            .map_err(|e| DirectoryError::Network(describe(&e)))?;
        let status = response.status();
        let retry_after_header = response.headers().get(RETRY_AFTER).cloned();
        let mut bytes = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| DirectoryError::Network(describe(&e)))?
        {
            if bytes.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(DirectoryError::BadResponse(format!(
                    "answer exceeds {MAX_RESPONSE_BYTES} bytes"
                )));
            }
            bytes.extend_from_slice(&chunk);
        }
        read_answer(status, retry_after_header.as_ref(), &bytes)
    }
}

/// Reads a directory answer: a success status with a JSON body (or none) is
/// the body; an error status is a [`DirectoryError::Status`] with whatever
/// the body and `Retry-After` explain; anything else is a
/// [`DirectoryError::BadResponse`].
pub fn read_answer(
    status: StatusCode,
    retry_after_header: Option<&HeaderValue>,
    bytes: &[u8],
) -> Result<Value, DirectoryError> {
    let json: Option<Value> = serde_json::from_slice(bytes).ok();
    if status.is_success() {
        return match json {
            Some(value) => Ok(value),
            None if bytes.iter().all(u8::is_ascii_whitespace) => Ok(Value::Null),
            None => Err(DirectoryError::BadResponse(format!(
                "HTTP {} with a body that is not JSON",
                status.as_u16()
            ))),
        };
    }
    Err(status_error(
        status,
        json.as_ref(),
        retry_after_header.and_then(parse_retry_after),
    ))
}

/// A `Retry-After` header in delta-seconds; an HTTP-date is not honoured
/// (directories send seconds), nor is anything unparsable.
pub fn parse_retry_after(header: &HeaderValue) -> Option<Duration> {
    header
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

fn status_error(
    status: StatusCode,
    body: Option<&Value>,
    retry_after_header: Option<Duration>,
) -> DirectoryError {
    let text = |value: Option<&Value>| value.and_then(Value::as_str).map(|s| truncate(s, 300));
    let error = body.and_then(|b| b.get("error"));
    let (code, message) = match error {
        Some(Value::Object(object)) => (text(object.get("code")), text(object.get("message"))),
        Some(Value::String(code)) => (
            Some(truncate(code, 300)),
            text(body.and_then(|b| b.get("message"))),
        ),
        _ => (None, text(body.and_then(|b| b.get("message")))),
    };
    let retry_after = retry_after_header.or_else(|| {
        let body = body?;
        let seconds = body
            .get("retry_after")
            .or_else(|| error?.get("retry_after"));
        let millis = body
            .get("retry_after_ms")
            .or_else(|| error?.get("retry_after_ms"));
        seconds
            .and_then(Value::as_u64)
            .map(Duration::from_secs)
            .or_else(|| millis.and_then(Value::as_u64).map(Duration::from_millis))
    });
    DirectoryError::Status {
        status: status.as_u16(),
        code,
        message,
        retry_after,
    }
}

fn truncate(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// A short cause for a transport failure (without the URL, which is noise).
fn describe(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        "timed out".to_string()
    } else if error.is_connect() {
        "connection failed".to_string()
    } else if error.is_body() || error.is_decode() {
        "the answer broke off".to_string()
    } else {
        "request failed".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(status: u16, body: &str) -> DirectoryError {
        read_answer(StatusCode::from_u16(status).unwrap(), None, body.as_bytes()).unwrap_err()
    }

    #[test]
    fn both_error_shapes_are_read() {
        let nested = parse(
            401,
            r#"{"error":{"code":"unauthorized","message":"missing node_token"}}"#,
        );
        assert_eq!(
            nested.to_string(),
            "directory answered HTTP 401 unauthorized: missing node_token"
        );
        assert!(nested.needs_registration());
        let flat = parse(
            429,
            r#"{"error":"IICP-E034","message":"slow down","retry_after":60}"#,
        );
        assert_eq!(
            flat,
            DirectoryError::Status {
                status: 429,
                code: Some("IICP-E034".into()),
                message: Some("slow down".into()),
                retry_after: Some(Duration::from_secs(60)),
            }
        );
        assert!(!flat.needs_registration());
        let garbage = parse(502, "<html>bad gateway</html>");
        assert_eq!(garbage.to_string(), "directory answered HTTP 502");
        assert!(parse(404, r#"{"error":{"code":"IICP-E003"}}"#).needs_registration());
        assert!(parse(410, "").needs_registration());
    }

    #[test]
    fn success_bodies_and_retry_after() {
        let ok = |body: &str| read_answer(StatusCode::OK, None, body.as_bytes());
        assert_eq!(ok(r#"{"ok":true}"#), Ok(serde_json::json!({"ok": true})));
        assert_eq!(ok(" \n"), Ok(Value::Null));
        assert!(matches!(ok("<html>"), Err(DirectoryError::BadResponse(_))));

        let retry = |header: &'static str, body: &str| {
            let header = HeaderValue::from_static(header);
            match read_answer(
                StatusCode::SERVICE_UNAVAILABLE,
                Some(&header),
                body.as_bytes(),
            ) {
                Err(DirectoryError::Status { retry_after, .. }) => retry_after,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(retry(" 7 ", ""), Some(Duration::from_secs(7)));
        // The header wins over the body; an HTTP-date or garbage is ignored.
        assert_eq!(
            retry("3", r#"{"retry_after":60}"#),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            retry(
                "Wed, 21 Oct 2015 07:28:00 GMT",
                r#"{"retry_after_ms":1500}"#
            ),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(retry("-1", ""), None);
    }
}
