//! The HTTP API: `POST /v1/task`, `GET /iicp/health`, `GET /metrics`.
//!
//! Every response that is not a success — unknown route, wrong method,
//! oversized or malformed body, a panic in a handler — is the protocol's
//! error envelope ([`crate::protocol::ApiError`]).
//!
//! Browser consumers call nodes directly, so every response carries the
//! reference node's CORS headers ([`cors`]). The per-Origin limit
//! ([`origin_limit`]) tames pages that abuse this.

pub mod access;
pub mod admission;
pub mod body;
pub mod cors;
pub mod drain;
pub mod edge;
pub mod health_route;
pub mod idempotency;
pub mod metrics;
pub mod metrics_route;
pub mod node_settings;
pub mod nonce_cache;
pub mod origin_limit;
pub mod plugin_table;
pub mod settings;
pub mod shared_index;
pub mod state;
pub mod task_auth;
pub mod task_route;
pub mod tool_gate;
pub mod unsent_answers;

use std::any::Any;
use std::sync::Arc;

use axum::Router;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tower_http::catch_panic::CatchPanicLayer;

use crate::protocol::ApiError;
use state::AppState;

/// The node's routes.
pub fn router(state: Arc<AppState>) -> cors::Cors<Router> {
    router_with(state, Router::new())
}

/// The node's routes plus `extra` (capabilities with routes of their own,
/// such as the relay role), under the same error envelope, panic guard and
/// CORS headers.
pub fn router_with(state: Arc<AppState>, extra: Router<Arc<AppState>>) -> cors::Cors<Router> {
    let routes = Router::new()
        .merge(extra)
        .route("/v1/task", post(task_route::submit_task))
        .route("/iicp/health", get(health_route::health))
        .route("/metrics", get(metrics_route::metrics))
        .fallback(|| async { ApiError::not_found() })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(CatchPanicLayer::custom(panic_response))
        .with_state(state);
    cors::Cors::new(routes)
}

fn panic_response(_panic: Box<dyn Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked; answered 500");
    ApiError::internal("internal error").into_response()
}
