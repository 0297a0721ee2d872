//! The IICP wire format as this node speaks it: task requests and responses,
//! the error envelope, W3C trace context and IICP-CX confidentiality.

pub mod confidentiality;
pub mod consumer_token;
pub mod error;
pub mod task;
pub mod trace_context;

pub use error::ApiError;

use axum::body::Bytes;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// A JSON response; an unencodable body (never expected) becomes the
/// 500 error envelope rather than a panic.
pub fn json_response(status: StatusCode, body: &impl Serialize) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => json_bytes_response(status, bytes.into()),
        Err(_) => ApiError::internal("cannot encode the response").into_response(),
    }
}

/// A response carrying JSON that is already encoded.
pub fn json_bytes_response(status: StatusCode, body: Bytes) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}
