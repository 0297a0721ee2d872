//! The admin API, on its own listener (loopback by default) and behind a
//! bearer token: list the plugins with their hashes, intents, limits and
//! live counters; reload; drain or resume one plugin.
//!
//! * `GET  /admin/plugins`
//! * `POST /admin/reload`
//! * `POST /admin/plugins/{id}/drain` — refuse its new tasks (503), let
//!   running ones finish
//! * `POST /admin/plugins/{id}/resume`

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use serde_json::json;

use crate::protocol::{ApiError, json_response};
use crate::reload::{ReloadReport, Reloader};
use crate::server::access::{AccessPolicy, Tenant, bearer};
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
        draining: entry.is_draining(),
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
            "active_jobs": admin.state.gate.active(),
            "max_concurrent": admin.state.gate.capacity(),
            "plugins": plugins,
            "last_reload": last_reload,
        }),
    )
}

async fn reload(State(admin): State<Admin>) -> Response {
    let report = admin.reloader.reload().await;
    if report.ok {
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

fn set_draining(admin: &Admin, id: &str, draining: bool) -> Response {
    let table = admin.state.plugins.load();
    let Some(entry) = table.entry(id) else {
        return ApiError::not_found().into_response();
    };
    entry.draining.store(draining, Ordering::Relaxed);
    tracing::info!(
        plugin = id,
        draining,
        active = entry.gate.active(),
        "plugin drain switch set"
    );
    json_response(
        StatusCode::OK,
        &json!({ "id": id, "draining": draining, "active": entry.gate.active() }),
    )
}

async fn drain(State(admin): State<Admin>, Path(id): Path<String>) -> Response {
    set_draining(&admin, &id, true)
}

async fn resume(State(admin): State<Admin>, Path(id): Path<String>) -> Response {
    set_draining(&admin, &id, false)
}
