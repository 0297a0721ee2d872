//! `GET /iicp/health`: liveness and load, as the directory's probe and
//! consumers read it (NODE-HEALTH-01..03, `protocol.md` §1.5).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Serialize;

use super::state::AppState;
use crate::directory::payload::{IMPLEMENTATION_NAME, IMPLEMENTATION_VERSION};
use crate::directory::status::StatusView;
use crate::protocol::json_response;

#[derive(Serialize)]
struct Health<'a> {
    status: &'static str,
    node_id: &'a str,
    region: &'a str,
    load: f64,
    active_jobs: u32,
    max_concurrent: u32,
    effective_max_concurrent: u32,
    available: bool,
    /// The whole node drains (operator drain or shutting down).
    draining: bool,
    /// Plugins the operator drained.
    drained_plugins: Vec<&'a str>,
    model: Option<&'a str>,
    models: Vec<&'a str>,
    intent: Option<&'a str>,
    intents: Vec<&'a str>,
    implementation_name: &'static str,
    implementation_version: &'static str,
    /// The standing with the directory; `null` when serving standalone.
    directory: Option<StatusView>,
}

/// The `GET /iicp/health` handler; always 200 while the node serves.
pub async fn health(State(state): State<Arc<AppState>>) -> Response {
    let active = state.gate.active();
    let capacity = state.gate.capacity();
    let plugins = state.plugins.load();
    let models = plugins.models();
    let intents = plugins.intents();
    let drained_plugins: Vec<&str> = plugins
        .entries()
        .iter()
        .filter(|e| e.drained().is_some())
        .map(|e| &*e.plugin.id)
        .collect();
    let all_drained =
        !plugins.entries().is_empty() && drained_plugins.len() == plugins.entries().len();
    let node_draining = state.node_drain.is_on() || state.drain.is_draining();
    let draining = node_draining || all_drained;
    let health = Health {
        // NODE-HEALTH allows `ok` and `degraded`; a drain is the latter.
        status: if draining || !drained_plugins.is_empty() {
            "degraded"
        } else {
            "ok"
        },
        node_id: &state.node.node_id,
        region: &state.node.region,
        load: f64::from(active) / f64::from(capacity.max(1)),
        active_jobs: active,
        max_concurrent: capacity,
        effective_max_concurrent: capacity,
        available: !draining && active < capacity,
        draining: node_draining,
        drained_plugins,
        model: models.first().copied(),
        intent: intents.first().copied(),
        models,
        intents,
        implementation_name: IMPLEMENTATION_NAME,
        implementation_version: IMPLEMENTATION_VERSION,
        directory: state.directory.as_ref().map(|status| status.view()),
    };
    json_response(StatusCode::OK, &health)
}
