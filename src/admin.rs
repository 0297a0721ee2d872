//! The admin API, on its own listener (loopback by default) and behind a
//! bearer token: list the plugins with their hashes, intents, limits and
//! live counters; reload; drain or resume one plugin.
//!
//! * `GET  /admin/plugins`
//! * `POST /admin/reload`
//! * `POST /admin/plugins/{id}/drain` — refuse its new tasks (503
//!   `IICP-E024`, reason `plugin_draining`), let running ones finish
//! * `POST /admin/plugins/{id}/resume`
//! * `POST /admin/drain` — the same for the whole node (reason
//!   `node_draining`); the heartbeat then reports it unavailable
//! * `POST /admin/resume`
//!
//! A drain takes `?retry_after_ms=N` (the advice refused consumers get;
//! default `drain_retry_after_ms`). Every drain and resume is announced to
//! the directory with a heartbeat at once.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use serde_json::json;

use crate::protocol::{ApiError, json_response};
use crate::reload::{ReloadReport, Reloader};
use crate::server::access::{AccessPolicy, Tenant, bearer};
use crate::server::drain::{Drain, DrainReason, DrainSwitch};
use crate::server::node_settings::DRAIN_RETRY_AFTER_MS_RANGE;
use crate::server::plugin_table::PluginEntry;
use crate::server::state::AppState;

#[derive(Clone)]
struct Admin {
    state: Arc<AppState>,
    reloader: Arc<Reloader>,
    access: Arc<AccessPolicy>,
}

/// The admin routes, requiring `token`.
pub fn router(state: Arc<AppState>, reloader: Arc<Reloader>, token: &str) -> Router {
    let admin = Admin {
        state,
        reloader,
        access: Arc::new(AccessPolicy::Tenants(vec![Tenant::new("admin", token)])),
    };
    Router::new()
        .route("/admin/plugins", get(list_plugins))
        .route("/admin/reload", post(reload))
        .route("/admin/plugins/{id}/drain", post(drain))
        .route("/admin/plugins/{id}/resume", post(resume))
        .route("/admin/drain", post(drain_node))
        .route("/admin/resume", post(resume_node))
        .fallback(|| async { ApiError::not_found() })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(middleware::from_fn_with_state(admin.clone(), require_token))
        .with_state(admin)
}

async fn require_token(State(admin): State<Admin>, request: Request, next: Next) -> Response {
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if admin.access.admit(bearer(header)).is_err() {
        return ApiError::unauthorized("the admin API needs its bearer token").into_response();
    }
    next.run(request).await
}

#[derive(Serialize)]
struct PluginView<'a> {
    id: &'a str,
    name: &'a str,
    version: &'a str,
    sha256: &'a str,
    path: String,
    intents: Vec<&'a str>,
    models: Vec<&'a str>,
    limits: serde_json::Value,
    access: &'static str,
    tenants: Vec<&'a str>,
    draining: bool,
    active: u32,
    served: u64,
    failed: u64,
}

fn view(entry: &PluginEntry) -> PluginView<'_> {
    let plugin = &entry.plugin;
    let limits = &plugin.limits;
    let mut models: Vec<&str> = Vec::new();
    for model in entry.capabilities.iter().flat_map(|c| c.models.iter()) {
        if !models.contains(&model.as_str()) {
            models.push(model);
        }
    }
    PluginView {
        id: &plugin.id,
        name: &plugin.info.name,
        version: &plugin.info.version,
        sha256: &plugin.sha256,
        path: plugin.path.display().to_string(),
        intents: entry
            .capabilities
            .iter()
            .map(|c| c.intent.as_str())
            .collect(),
        models,
        limits: json!({
            "max_concurrent": entry.gate.capacity(),
            "memory_mb": limits.memory_bytes >> 20,
            "timeout_ms": crate::clock::whole_ms(limits.default_timeout),
            "max_output_bytes": limits.max_output_bytes,
            "instance_reuse": limits.instance_reuse,
        }),
        access: match entry.access {
            AccessPolicy::Open => "open",
            AccessPolicy::Tenants(_) => "tenants",
        },
        tenants: entry
            .spec
            .tenants
            .iter()
            .map(|(name, _)| name.as_str())
            .collect(),
        draining: entry.drained().is_some(),
        active: entry.gate.active(),
        served: entry.counters.served.load(Ordering::Relaxed),
        failed: entry.counters.failed.load(Ordering::Relaxed),
    }
}

async fn list_plugins(State(admin): State<Admin>) -> Response {
    let table = admin.state.plugins.load();
    let plugins: Vec<PluginView<'_>> = table.entries().iter().map(|e| view(e)).collect();
    let last_reload: Option<ReloadReport> = admin.reloader.last();
    json_response(
        StatusCode::OK,
        &json!({
            "node_id": admin.state.node.node_id,
            "draining": admin.state.node_drain.is_on() || admin.state.drain.is_draining(),
            "active_jobs": admin.state.gate.active(),
            "max_concurrent": admin.state.gate.capacity(),
            "plugins": plugins,
            "last_reload": last_reload,
        }),
    )
}

async fn reload(State(admin): State<Admin>) -> Response {
    let report = admin.reloader.reload().await;
    // Applied, perhaps without some plugins (`ok: false`, `failed`): 200.
    if report.applied {
        json_response(StatusCode::OK, &report)
    } else {
        json_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            &json!({
                "error": {
                    "code": "reload_failed",
                    "message": report.error.clone().unwrap_or_default(),
                },
                "report": report,
            }),
        )
    }
}

/// The drain an admin call asks for: `reason`, with `?retry_after_ms=N`
/// or the configured default.
fn requested_drain(
    admin: &Admin,
    reason: DrainReason,
    query: Option<&str>,
) -> Result<Drain, ApiError> {
    let asked = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|pair| pair.strip_prefix("retry_after_ms="));
    let retry_after_ms = match asked {
        None => admin.state.drain_retry_after_ms,
        Some(text) => text
            .parse::<u64>()
            .ok()
            .filter(|ms| DRAIN_RETRY_AFTER_MS_RANGE.contains(ms))
            .ok_or_else(|| {
                ApiError::validation(format!(
                    "retry_after_ms must be a number between {} and {}",
                    DRAIN_RETRY_AFTER_MS_RANGE.start(),
                    DRAIN_RETRY_AFTER_MS_RANGE.end()
                ))
            })?,
    };
    Ok(Drain {
        reason,
        retry_after_ms,
    })
}

/// Sets or clears `switch`, tells the directory, and answers with the
/// switch's state and the tasks still running under it.
fn switch_drain(
    admin: &Admin,
    switch: &DrainSwitch,
    drain: Option<Drain>,
    target: &str,
    active: u32,
) -> Response {
    match drain {
        Some(drain) => switch.set(drain),
        None => switch.clear(),
    }
    admin.state.status_changed.notify_one();
    tracing::info!(
        target,
        draining = drain.is_some(),
        active,
        "drain switch set"
    );
    json_response(
        StatusCode::OK,
        &json!({
            "id": target,
            "draining": drain.is_some(),
            "reason": drain.map(|d| d.reason.as_str()),
            "retry_after_ms": drain.map(|d| d.retry_after_ms),
            "active": active,
        }),
    )
}

fn set_plugin_drain(admin: &Admin, id: &str, drain: Option<Drain>) -> Response {
    let table = admin.state.plugins.load();
    let Some(entry) = table.entry(id) else {
        return ApiError::not_found().into_response();
    };
    switch_drain(admin, &entry.drain, drain, id, entry.gate.active())
}

async fn drain(
    State(admin): State<Admin>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    match requested_drain(&admin, DrainReason::Plugin, query.as_deref()) {
        Ok(drain) => set_plugin_drain(&admin, &id, Some(drain)),
        Err(error) => error.into_response(),
    }
}

async fn resume(State(admin): State<Admin>, Path(id): Path<String>) -> Response {
    set_plugin_drain(&admin, &id, None)
}

/// Switches the operator's drain of the whole node; a node shutting down
/// drains until it exits, whatever the operator asks.
fn set_node_drain(admin: &Admin, drain: Option<Drain>) -> Response {
    let state = &admin.state;
    if state.drain.is_draining() {
        return ApiError::conflict("the node is shutting down").into_response();
    }
    switch_drain(admin, &state.node_drain, drain, "node", state.gate.active())
}

async fn drain_node(State(admin): State<Admin>, RawQuery(query): RawQuery) -> Response {
    match requested_drain(&admin, DrainReason::Node, query.as_deref()) {
        Ok(drain) => set_node_drain(&admin, Some(drain)),
        Err(error) => error.into_response(),
    }
}

async fn resume_node(State(admin): State<Admin>) -> Response {
    set_node_drain(&admin, None)
}
