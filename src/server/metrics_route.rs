//! `GET /metrics`: the Prometheus text exposition.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::state::AppState;

/// The `GET /metrics` handler. Gauges that mirror live state are refreshed
/// here rather than on the task path.
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let metrics = &state.server_metrics;
    metrics.active_jobs.set(i64::from(state.gate.active()));
    metrics.max_concurrent.set(i64::from(state.gate.capacity()));
    metrics.qos_waiting.set(i64::from(state.qos.waiting()));
    if let Some(cache) = &state.idempotency {
        let (entries, bytes) = cache.usage();
        let gauges = &metrics.idempotency;
        gauges
            .entries
            .set(i64::try_from(entries).unwrap_or(i64::MAX));
        gauges.bytes.set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }
    metrics
        .nonce_cache_entries
        .set(i64::try_from(state.nonces.len()).unwrap_or(i64::MAX));
    if let Some(limiter) = &state.origin_limit {
        metrics
            .origin_windows
            .set(i64::try_from(limiter.tracked()).unwrap_or(i64::MAX));
    }
    for entry in state.plugins.load().entries() {
        let idle = entry.plugin.idle_instances();
        entry
            .metrics
            .idle_instances
            .set(i64::try_from(idle).unwrap_or(i64::MAX));
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        state.metrics.render(),
    )
        .into_response()
}
