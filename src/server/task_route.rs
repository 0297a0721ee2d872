//! `POST /v1/task`, as a sequence of named steps in the reference node's
//! order (`protocol.md` §1.3), each one either passing the task on or
//! answering with the protocol's error envelope:
//!
//! 1. [`check_origin`] — the per-Origin limit, before the body is read;
//! 2. [`read_body`] — the whole body, within the body-read deadline (408),
//!    before any slot is taken; [`check_node_draining`] — a node that began
//!    shutting down meanwhile runs nothing new (503 `IICP-E024`); then parse
//!    it (413, 422) and name the task's trace. The `iicp.task.validate` span
//!    starts here, after the read (that wait is the client's);
//! 3. [`check_tool_gate`] — tool-domain intents need the operator's policy
//!    (403);
//! 4. [`route`] — the plugin serving the intent (404);
//! 5. [`authenticate`] — the node's auth mode (open, node-token,
//!    consumer-token), then the plugin's tenants (401); before drain and
//!    capacity, so an unauthenticated flood learns nothing and holds no
//!    slot (the reference node checks no auth at all);
//! 6. [`check_drain`] — a drained node or plugin refuses new work (503
//!    `IICP-E024`);
//! 7. [`take_slots`] — the plugin's slot, then the node's; realtime and
//!    interactive tasks may wait a bounded time (429);
//! 8. [`check_nonce`] — replay protection (409), after the slots so a task
//!    refused with 429 does not burn its nonce;
//! 9. [`open_encrypted`] — IICP-CX, after both, so a flood at capacity costs
//!    no key agreement (400);
//! 10. [`claim_task_id`] — when idempotency is on, a task id seen inside the
//!     window (in the caller's own scope, [`id_scope`]) gets its first
//!     answer instead of a second run, or 409 `IICP-E010`. The reference node checks it before decrypting; we check
//!     after, because "same content" means the same plaintext (a retry
//!     re-encrypts it) and a replayed answer is sealed for the retry's own
//!     session (see [`super::idempotency`]);
//! 11. [`execute`] — a fresh instance, bounded by the task's deadline;
//! 12. [`respond`] — the answer, sealed whenever the CALL was encrypted.
//!
//! The `timeout_ms` budget runs from receipt of the request: time spent
//! waiting for a slot is part of it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::extract::connect_info::ConnectInfo;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tracing::Instrument;
use tracing::field::Empty;

use super::access::{AccessPolicy, Refusal, Tenant, bearer};
use super::admission::{NoSlot, RETRY_AFTER_MS, Slots};
use super::body::read_limited;
use super::edge::REFUSAL_RETRY_AFTER_MS;
use super::idempotency::{CachedAnswer, Claim, IdempotencyCache, Running, cacheable, fingerprint};
use super::nonce_cache::NonceCheck;
use super::plugin_table::Route;
use super::state::AppState;
use super::task_auth::{Caller, Presented};
use crate::clock::{now_unix_ms, whole_ms};
use crate::directory::receipts::ReceiptJob;
use crate::protocol::confidentiality::CxSession;
use crate::protocol::task::{
    EncryptedSuccess, ResponseMetrics, TaskRequest, TaskSuccess as SuccessBody, Usage,
};
use crate::protocol::trace_context::TraceContext;
use crate::protocol::{ApiError, json_bytes_response};
use crate::runtime::bindings::ErrorKind;
use crate::runtime::execute::{TaskFailure, TaskInput, TaskReport, TaskSuccess};
use crate::telemetry::otlp;

/// Response header carrying the task's trace id (TRACE-02).
pub static TRACE_ID_HEADER: HeaderName = HeaderName::from_static("x-iicp-trace-id");

/// The `POST /v1/task` handler.
pub async fn submit_task(
    State(state): State<Arc<AppState>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let peer = peer.map(|Extension(ConnectInfo(address))| address.ip());
    serve_task(&state, &headers, body, Instant::now(), peer).await
}

/// Serves one CALL, from whichever entry received it: the `POST /v1/task`
/// route, or a task the relay worker pulled (`crate::relay::worker`), so
/// both take exactly the same steps. `received` is when the consumer's
/// request reached the mesh: the `timeout_ms` budget and the latency run
/// from it. `peer` is the consumer's address when it connected here
/// directly (`None` for a relayed task: its peer is the relay).
pub async fn serve_task(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    received: Instant,
    peer: Option<IpAddr>,
) -> Response {
    // Until a task is parsed, the trace comes from the headers only.
    let mut trace = TraceContext::from_request(
        header_str(headers, "traceparent"),
        header_str(headers, "tracestate"),
        None,
    );
    let result = steps(state, headers, body, received, peer, &mut trace).await;
    answer(result, &trace)
}

/// The steps, in order; the first that refuses answers.
async fn steps(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    received: Instant,
    peer: Option<IpAddr>,
    trace: &mut TraceContext,
) -> Result<Response, ApiError> {
    check_origin(state, headers, received)?;
    let body = read_body(state, headers, body).await?;
    check_node_draining(state)?;
    let parsed = TaskRequest::parse(&body);
    *trace = TraceContext::from_request(
        header_str(headers, "traceparent"),
        header_str(headers, "tracestate"),
        parsed
            .as_ref()
            .ok()
            .and_then(|task| task.body_trace_id.as_deref()),
    );
    let validate_span = tracing::info_span!(
        "iicp.task.validate",
        iicp.task_id = Empty,
        iicp.intent = Empty
    );
    otlp::join(&validate_span, trace, None);
    let admitted = validate(state, headers, parsed?, received, peer)
        .instrument(validate_span.clone())
        .await?;
    let Admitted {
        task,
        route,
        slots,
        session,
        caller,
        id_scope,
    } = admitted;
    let running = match claim_task_id(state, id_scope.as_deref(), &task, &route, received)
        .instrument(validate_span.clone())
        .await?
    {
        Claimed::Answered(answer) => {
            return respond(state, answer, &task.task_id, session.as_ref());
        }
        Claimed::Run(running) => running,
    };
    let querying_node = querying_node(&caller, &task);
    let outcome = execute(
        state,
        &task,
        &route,
        querying_node,
        trace,
        &validate_span,
        received,
    )
    .await;
    drop(slots);
    if let Some(running) = running {
        running.finish(cacheable(&outcome));
    }
    respond(state, outcome, &task.task_id, session.as_ref())
}

/// Step 2: the whole body within the body-read deadline. A client that
/// trickles its body holds a connection until the deadline, never a slot.
async fn read_body(state: &AppState, headers: &HeaderMap, body: Body) -> Result<Bytes, ApiError> {
    let read = read_limited(body, headers, state.max_body_bytes);
    tokio::time::timeout(state.body_read_timeout, read)
        .await
        .unwrap_or_else(|_| {
            state.server_metrics.body_read_timeouts.inc();
            Err(ApiError::request_timeout(whole_ms(state.body_read_timeout)))
        })
}

/// A task whose body finished arriving after the drain began is refused,
/// not run.
fn check_node_draining(state: &AppState) -> Result<(), ApiError> {
    if state.drain.is_draining() {
        return Err(ApiError::shutting_down(REFUSAL_RETRY_AFTER_MS));
    }
    Ok(())
}

/// A task that passed every check before its run.
struct Admitted<'b> {
    task: TaskRequest<'b>,
    route: Route,
    slots: Slots,
    session: Option<CxSession>,
    /// Who the caller proved to be.
    caller: Caller,
    /// The scope of its task ids; `None` when nothing can tell this
    /// anonymous caller from another ([`id_scope`]).
    id_scope: Option<String>,
}

/// Steps 3–9: everything between parsing the body and claiming the id.
async fn validate<'b>(
    state: &AppState,
    headers: &HeaderMap,
    mut task: TaskRequest<'b>,
    received: Instant,
    peer: Option<IpAddr>,
) -> Result<Admitted<'b>, ApiError> {
    let span = tracing::Span::current();
    span.record("iicp.task_id", &*task.task_id);
    span.record("iicp.intent", &*task.intent);
    check_tool_gate(state, &task)?;
    let route = route(state, &task)?;
    let (caller, tenant) = authenticate(state, &route, &task, headers)?;
    check_drain(state, &route)?;
    let slots = take_slots(state, &route, &task, received).await?;
    tracing::debug!(plugin = &*route.entry.plugin.id, "task admitted");
    check_nonce(state, &task)?;
    let session = open_encrypted(state, &mut task)?;
    let id_scope = id_scope(&caller, tenant.as_deref(), session.as_ref(), peer);
    Ok(Admitted {
        task,
        route,
        slots,
        session,
        caller,
        id_scope,
    })
}

fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn answer(result: Result<Response, ApiError>, trace: &TraceContext) -> Response {
    let mut response = result.unwrap_or_else(IntoResponse::into_response);
    if let Ok(value) = HeaderValue::from_str(&trace.trace_id_hex()) {
        response
            .headers_mut()
            .insert(TRACE_ID_HEADER.clone(), value);
    }
    response
}

/// Step 1: browsers get a fixed number of tasks per Origin and window.
fn check_origin(state: &AppState, headers: &HeaderMap, received: Instant) -> Result<(), ApiError> {
    if let (Some(limiter), Some(origin)) = (&state.origin_limit, header_str(headers, "origin"))
        && let Err(wait) = limiter.check(origin, received)
    {
        state.server_metrics.origin_rate_limited.inc();
        return Err(ApiError::origin_rate_limited(whole_ms(wait)));
    }
    Ok(())
}

/// Step 3: tool-domain intents run only where the policy allows them.
fn check_tool_gate(state: &AppState, task: &TaskRequest<'_>) -> Result<(), ApiError> {
    state.tool_gate.check(&task.intent).inspect_err(|_| {
        state.server_metrics.tool_execution_denied.inc();
    })
}

/// Step 4: the plugin serving the intent.
fn route(state: &AppState, task: &TaskRequest<'_>) -> Result<Route, ApiError> {
    state
        .plugins
        .load()
        .route(&task.intent)
        .cloned()
        .ok_or_else(|| ApiError::unknown_intent(&task.intent))
}

/// Step 5: the node's auth mode (TASK-1), then the plugin's tenants.
/// Returns who the caller proved to be, and its tenant's name.
fn authenticate(
    state: &AppState,
    route: &Route,
    task: &TaskRequest<'_>,
    headers: &HeaderMap,
) -> Result<(Caller, Option<String>), ApiError> {
    let token = task
        .auth_token
        .as_deref()
        .or_else(|| bearer(header_str(headers, "authorization")));
    let tenants = match &route.entry.access {
        AccessPolicy::Tenants(tenants) => tenants.as_slice(),
        AccessPolicy::Open => &[],
    };
    let presented = Presented {
        token,
        consumer_token: header_str(headers, "x-iicp-consumer-token"),
    };
    let outcomes = &state.server_metrics.task_auth;
    let caller = state
        .auth
        .check(presented, &task.intent, tenants, now_unix_ms() / 1000)
        .map_err(|failure| {
            let error = failure.to_error(state.auth.mode());
            outcomes
                .with_label_values(&[error.reason().unwrap_or("refused")])
                .inc();
            error
        })?;
    match &caller {
        Caller::Anyone => {}
        Caller::Operator(_) => outcomes.with_label_values(&["accepted_operator"]).inc(),
        Caller::DirectoryToken => outcomes
            .with_label_values(&["accepted_directory_token"])
            .inc(),
        Caller::Consumer(_) => outcomes.with_label_values(&["accepted_consumer"]).inc(),
    }
    let tenant = check_tenant(route, token)?.map(str::to_string);
    Ok((caller, tenant))
}

/// The scope of a caller's task ids, so that no caller can read or probe
/// another's: its tenant, or the identity it proved; an anonymous caller
/// (open auth) by its envelope's ephemeral key when the task is encrypted
/// (only its sender can make an envelope under that key that opens, and a
/// retry resending the same body keeps it), else by the address it
/// connected from. A relayed anonymous clear task has neither (the peer is
/// the relay, shared by all its consumers): `None`, and its id is not
/// claimed.
fn id_scope(
    caller: &Caller,
    tenant: Option<&str>,
    session: Option<&CxSession>,
    peer: Option<IpAddr>,
) -> Option<String> {
    if let Some(tenant) = tenant {
        return Some(format!("tenant:{tenant}"));
    }
    caller.scope().or_else(|| match (session, peer) {
        (Some(session), _) => Some(format!("cx:{}", hex::encode(session.consumer_key()))),
        (None, Some(address)) => Some(format!("peer:{address}")),
        (None, None) => None,
    })
}

/// The `source_node_id` a credit receipt may name: only the node the caller
/// proved to be with a consumer token. Anyone else's claim is unchecked and
/// would let a consumer attribute its tasks to another node (`protocol.md`
/// §5.5, the directory's self-query check), so it is left out.
fn querying_node<'t>(caller: &Caller, task: &'t TaskRequest<'_>) -> Option<&'t str> {
    let claimed = task.source_node_id.as_deref()?;
    match caller {
        Caller::Consumer(sub) if sub == claimed => Some(claimed),
        _ => None,
    }
}

/// A plugin with tenants serves only callers holding a tenant token.
/// Returns the tenant's name.
fn check_tenant<'r>(route: &'r Route, token: Option<&str>) -> Result<Option<&'r str>, ApiError> {
    let entry = &route.entry;
    match entry.access.admit(token) {
        Ok(tenant) => {
            if let Some(tenant) = tenant {
                tracing::debug!(tenant = tenant.name(), "tenant admitted");
            }
            Ok(tenant.map(Tenant::name))
        }
        Err(refusal) => {
            entry.metrics.unauthorized.inc();
            Err(ApiError::unauthorized(match refusal {
                Refusal::Missing => {
                    "this intent needs a tenant token (auth.node_token or Authorization: Bearer)"
                }
                Refusal::Invalid => "the tenant token is not valid for this intent",
            }))
        }
    }
}

/// Step 6: a drained node or plugin takes no new tasks; running ones finish.
fn check_drain(state: &AppState, route: &Route) -> Result<(), ApiError> {
    match state.node_drain.get().or_else(|| route.entry.drained()) {
        None => Ok(()),
        Some(drain) => {
            state
                .server_metrics
                .drain_refusals
                .with_label_values(&[drain.reason.as_str()])
                .inc();
            Err(drain.refusal())
        }
    }
}

/// Step 7: the plugin's slot, then the node's, waiting only as the task's
/// QoS class allows and never past its deadline.
async fn take_slots(
    state: &AppState,
    route: &Route,
    task: &TaskRequest<'_>,
    received: Instant,
) -> Result<Slots, ApiError> {
    let entry = &route.entry;
    let deadline = received + budget(task, route);
    let (waited, outcome) = state
        .qos
        .take_slots(&entry.gate, &state.gate, task.qos, deadline.into())
        .await;
    let metrics = &entry.metrics;
    match outcome {
        Ok(slots) => {
            if waited {
                metrics.qos_waits_admitted.inc();
            }
            Ok(slots)
        }
        Err(why) => {
            match why {
                NoSlot::Full => {}
                NoSlot::WaitingRoomFull => metrics.qos_waiting_room_full.inc(),
                NoSlot::WaitExpired => metrics.qos_waits_expired.inc(),
            }
            metrics.capacity_rejections.inc();
            Err(ApiError::capacity_exceeded(
                task.qos.as_str(),
                RETRY_AFTER_MS,
            ))
        }
    }
}

/// The task's whole budget: its `timeout_ms`, or the plugin's default.
/// The consumer's budget, at most the operator's ceiling for the plugin:
/// the task then ends (504) at the ceiling, well within what it allowed.
fn budget(task: &TaskRequest<'_>, route: &Route) -> Duration {
    let limits = &route.entry.plugin.limits;
    task.timeout_ms
        .map_or(limits.default_timeout, Duration::from_millis)
        .min(limits.max_timeout)
}

/// Step 8: a nonce seen inside the window is a replay.
fn check_nonce(state: &AppState, task: &TaskRequest<'_>) -> Result<(), ApiError> {
    let Some(nonce) = &task.nonce else {
        return Ok(());
    };
    match state.nonces.check_and_insert(nonce) {
        NonceCheck::Fresh => Ok(()),
        NonceCheck::Replay => {
            state.server_metrics.replays.inc();
            Err(ApiError::replay_detected())
        }
        NonceCheck::Full { retry_after } => {
            state.server_metrics.nonce_cache_full.inc();
            Err(ApiError::nonce_cache_full(whole_ms(retry_after)))
        }
    }
}

/// Step 9: replaces an encrypted CALL's payload with its plaintext; the
/// session seals the response. Whether or not the CALL still carries
/// `cx_response_encryption`: that field is outside the envelope's AAD, so a
/// hop could delete it to read the answer.
fn open_encrypted(
    state: &AppState,
    task: &mut TaskRequest<'_>,
) -> Result<Option<CxSession>, ApiError> {
    let Some(envelope) = task.iicp_conf else {
        return Ok(None);
    };
    let key = state.cx_key.as_ref().ok_or_else(|| {
        ApiError::cx_open_failed("this node accepts no encrypted tasks (IICP-CX is turned off)")
    })?;
    let (payload, session) = key.open(envelope, &task.task_id, &task.intent)?;
    task.payload = payload.into();
    Ok(Some(session))
}

/// What [`claim_task_id`] decided.
enum Claimed<'c> {
    /// Run the task (holding its id, when idempotency is on).
    Run(Option<Running<'c>>),
    /// Answer with the first attempt's answer.
    Answered(Result<Bytes, ApiError>),
}

/// Step 10: with idempotency on, claims the task id for this caller and
/// content. A duplicate of a running attempt waits for it, never past its
/// own deadline.
async fn claim_task_id<'s>(
    state: &'s AppState,
    id_scope: Option<&str>,
    task: &TaskRequest<'_>,
    route: &Route,
    received: Instant,
) -> Result<Claimed<'s>, ApiError> {
    let Some(cache) = &state.idempotency else {
        return Ok(Claimed::Run(None));
    };
    let Some(id_scope) = id_scope else {
        state.server_metrics.idempotency.unscoped.inc();
        return Ok(Claimed::Run(None));
    };
    let content = fingerprint(
        &task.intent,
        &task.payload,
        task.model.as_deref(),
        task.max_tokens,
    );
    let metrics = &state.server_metrics.idempotency;
    let deadline = tokio::time::Instant::from(received + budget(task, route));
    loop {
        let key = IdempotencyCache::key(id_scope, &task.task_id);
        match cache.claim(key, content) {
            Claim::Run(running) => return Ok(Claimed::Run(Some(running))),
            Claim::Replay(answer) => {
                metrics.replayed.inc();
                return Ok(Claimed::Answered(match answer {
                    CachedAnswer::Success(body) => Ok(body),
                    CachedAnswer::Failure(error) => Err(error),
                }));
            }
            Claim::Conflict => {
                metrics.conflict.inc();
                return Err(ApiError::duplicate_task("content_differs").for_task(&task.task_id));
            }
            Claim::Forgotten => {
                metrics.forgotten.inc();
                return Err(ApiError::duplicate_task("answer_not_kept").for_task(&task.task_id));
            }
            Claim::Wait(mut first_attempt) => {
                metrics.waited.inc();
                if tokio::time::timeout_at(deadline, first_attempt.changed())
                    .await
                    .is_err()
                {
                    return Err(ApiError::task_timeout(whole_ms(budget(task, route)))
                        .for_task(&task.task_id));
                }
            }
        }
    }
}

/// Step 11: runs the task in its plugin; the plain 200 body or the error.
/// The execute span is a child of the consumer's span (of `validate_span`
/// in a trace the node started), and the plugin's `traceparent` names it.
async fn execute(
    state: &AppState,
    task: &TaskRequest<'_>,
    route: &Route,
    querying_node: Option<&str>,
    trace: &mut TraceContext,
    validate_span: &tracing::Span,
    received: Instant,
) -> Result<Bytes, ApiError> {
    let plugin = &route.entry.plugin;
    let span = tracing::info_span!(
        "iicp.task.execute",
        iicp.task_id = %task.task_id,
        iicp.intent = %task.intent,
        iicp.plugin = %plugin.id,
        trace_id = Empty,
    );
    otlp::join(&span, trace, Some(validate_span));
    span.record("trace_id", trace.trace_id_hex());
    let timeout = budget(task, route);
    let input = TaskInput {
        task_id: &task.task_id,
        intent: &task.intent,
        payload: &task.payload,
        timeout,
        max_tokens: task.max_tokens,
        model: task.model.as_deref(),
        qos: task.qos,
        traceparent: trace.child_traceparent(),
        tracestate: trace.tracestate(),
        deadline: received + timeout,
    };
    let (outcome, report) = state.runtime.run_task(plugin, input).instrument(span).await;
    let latency = received.elapsed();
    record(route, &outcome, &report, latency, &task.task_id);
    state.tally.record(outcome.is_ok(), whole_ms(latency));
    match outcome {
        Ok(success) => {
            if let Some(receipts) = &state.receipts {
                receipts.submit(ReceiptJob {
                    task_id: task.task_id.to_string(),
                    tokens_used: success.usage.map_or(0, |u| u64::from(u.total_tokens)),
                    result: success.result.clone(),
                    querying_node_id: querying_node.map(str::to_string),
                });
            }
            success_body(&task.task_id, &success, latency)
        }
        Err(mut failure) => {
            if task.iicp_conf.is_some()
                && let TaskFailure::Plugin { message, .. } = &mut failure
            {
                *message = WITHHELD_FROM_CLEAR.to_string();
            }
            Err(failure_error(failure, timeout, task).for_task(&task.task_id))
        }
    }
}

/// What an encrypted task's failure says instead of its plugin's own
/// message:
/// error envelopes travel in clear (the reference consumers read them
/// unsealed), and a plugin's message may quote the payload.
const WITHHELD_FROM_CLEAR: &str =
    "the task failed; its message is withheld because the task was encrypted (IICP-CX)";

fn record(
    route: &Route,
    outcome: &Result<TaskSuccess, TaskFailure>,
    report: &TaskReport,
    latency: Duration,
    task_id: &str,
) {
    let (plugin_metrics, metrics) = (&route.entry.metrics, &route.metrics);
    metrics.latency_ms.observe(latency.as_secs_f64() * 1000.0);
    if !report.instantiate.is_zero() {
        plugin_metrics
            .instantiation_s
            .observe(report.instantiate.as_secs_f64());
    }
    plugin_metrics
        .memory_bytes
        .observe(report.memory_bytes as f64);
    plugin_metrics
        .host_memory_bytes
        .observe(report.host_bytes as f64);
    if report.retired_holding_resources {
        plugin_metrics.retired_holding_resources.inc();
    }
    if report.log_lines_dropped > 0 {
        plugin_metrics
            .log_lines_dropped
            .inc_by(report.log_lines_dropped);
    }
    let counters = &route.entry.counters;
    match outcome {
        Ok(success) => {
            metrics.success.inc();
            counters.served.fetch_add(1, Ordering::Relaxed);
            if let Some(usage) = &success.usage {
                metrics.tokens.inc_by(u64::from(usage.total_tokens));
            }
        }
        Err(failure) => {
            counters.failed.fetch_add(1, Ordering::Relaxed);
            if *failure == TaskFailure::Timeout {
                metrics.timeout.inc();
            } else {
                metrics.error.inc();
            }
        }
    }
    if let Err(failure) = outcome
        && let Some(kind) = failure.trap_kind()
    {
        plugin_metrics.trap(kind);
        tracing::warn!(
            plugin = &*route.entry.plugin.id,
            task_id,
            kind,
            "plugin instance stopped"
        );
    }
}

/// The plain 200 body.
fn success_body(
    task_id: &str,
    success: &TaskSuccess,
    latency: Duration,
) -> Result<Bytes, ApiError> {
    let usage = success.usage.map(|u| Usage {
        prompt_tokens: u.prompt_tokens,
        completion_tokens: u.completion_tokens,
        total_tokens: u.total_tokens,
    });
    let body = SuccessBody {
        task_id,
        status: "success",
        result: &success.result,
        usage,
        model_used: success.model_used.as_deref(),
        metrics: ResponseMetrics {
            latency_ms: whole_ms(latency),
            tokens_used: usage.map_or(0, |u| u64::from(u.total_tokens)),
        },
    };
    encode_answer(&body)
}

fn encode_answer(body: &impl serde::Serialize) -> Result<Bytes, ApiError> {
    serde_json::to_vec(body)
        .map(Bytes::from)
        .map_err(|_| ApiError::internal("the answer could not be encoded"))
}

/// Step 12: the answer; a 200 is sealed under `iicp_conf_resp` when the
/// CALL was encrypted (`protocol.md` §1.4: `status:"encrypted"`, no
/// `result`). It is charged to the unsent-answer budget until its client
/// has taken it.
fn respond(
    state: &AppState,
    outcome: Result<Bytes, ApiError>,
    task_id: &str,
    session: Option<&CxSession>,
) -> Result<Response, ApiError> {
    let plain = outcome?;
    let answer = match session {
        None => plain,
        Some(session) => {
            let sealed = EncryptedSuccess {
                task_id,
                status: "encrypted",
                iicp_conf_resp: session.seal(&plain, task_id)?,
                generated_by_ai: true,
            };
            encode_answer(&sealed)?
        }
    };
    let answer = state.unsent_answers.charge(answer)?;
    Ok(json_bytes_response(StatusCode::OK, answer))
}

/// Maps a failed task to the protocol's error codes.
fn failure_error(failure: TaskFailure, timeout: Duration, task: &TaskRequest<'_>) -> ApiError {
    let budget_ms = whole_ms(timeout);
    match failure {
        TaskFailure::Timeout => ApiError::task_timeout(budget_ms),
        TaskFailure::MemoryLimit { .. }
        | TaskFailure::StackOverflow
        | TaskFailure::HostLimit { .. }
        | TaskFailure::ResourceMisuse(_)
        | TaskFailure::Trap(_)
        | TaskFailure::OutputTooLarge { .. }
        | TaskFailure::InvalidOutput => ApiError::backend_error(failure.to_string(), false),
        TaskFailure::PoolExhausted => {
            ApiError::capacity_exceeded(task.qos.as_str(), RETRY_AFTER_MS)
        }
        TaskFailure::Host => ApiError::internal(failure.to_string()),
        TaskFailure::Plugin {
            kind,
            message,
            retryable,
        } => match kind {
            ErrorKind::InvalidInput => ApiError::validation(message),
            ErrorKind::UnsupportedIntent => ApiError::unknown_intent(&task.intent),
            ErrorKind::BackendFailure => ApiError::backend_error(message, retryable),
            ErrorKind::Unavailable => ApiError::unavailable(message, RETRY_AFTER_MS),
            ErrorKind::Timeout => ApiError::task_timeout(budget_ms),
            ErrorKind::Internal => ApiError::internal(message),
        }
        .with_retryable(retryable),
    }
}
