//! The HTTP API: `POST /v1/task`, `GET /iicp/health`, `GET /metrics`.
//!
//! Every response that is not a success — unknown route, wrong method,
//! oversized or malformed body, a panic in a handler — is the protocol's
//! error envelope ([`crate::protocol::ApiError`]).

pub mod access;
pub mod admission;
pub mod body;
pub mod health_route;
pub mod metrics_route;
pub mod nonce_cache;
pub mod plugin_table;
pub mod state;
pub mod task_route;

use std::any::Any;
use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tower_http::catch_panic::CatchPanicLayer;

use crate::protocol::ApiError;
use state::AppState;

/// The node's routes.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/task", post(task_route::submit_task))
        .route("/iicp/health", get(health_route::health))
        .route("/metrics", get(metrics_route::metrics))
        .fallback(|| async { ApiError::not_found() })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(CatchPanicLayer::custom(panic_response))
        .with_state(state)
}

fn panic_response(_panic: Box<dyn Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked; answered 500");
    ApiError::internal("internal error").into_response()
}

/// Serves `router` on `listener` until `shutdown` resolves, then stops
/// accepting and waits for in-flight requests to finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Small JSON responses must not wait for Nagle's algorithm.
    let listener = listener.tap_io(|stream| {
        let _ = stream.set_nodelay(true);
    });
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}
