//! The relay role's HTTP routes (`protocol.md` §1.1, §7.1): workers bind,
//! long-poll for tasks, post results and unbind; consumers reach a bound
//! worker at `/v1/relay-for/{worker_id}/v1/task` and `…/iicp/health`, so
//! they need no change. Every answer is the protocol's error envelope or the
//! worker's own response; CORS comes from the node's router, as on every
//! route (the reference answers relay routes with the same headers).
//!
//! Every answer body the relay holds for a peer that has not taken it — a
//! task copied into a pull answer for a worker, a worker's result turned
//! into the consumer's answer — is charged to the node's unsent-answer
//! budget (`server::unsent_answers`) like a direct task's answer, until
//! its last byte is written. A consumer's answer that does not fit is
//! replaced by the same 503 `unavailable` envelope; a pull answer that
//! does not fit puts its task back at the head of the queue and answers
//! 204, so the worker polls again. A worker's result is walked field by
//! field (`wire::for_each_field`), never parsed into a tree.
//!
//! A relayed task keeps its `timeout_ms` budget end to end: the relay waits
//! at most the budget (plus `result_grace_ms`, so the worker's own 504
//! arrives first), tells the worker how long the task already waited, and
//! answers 504 `task_timeout` itself when the worker stays silent.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::connect_info::ConnectInfo;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;

use super::sessions::{
    Answer, BindRefusal, Bound, CallSpec, QueueRefusal, Relay, ResultRefusal, Session,
};
use super::wire::{
    BindAnswer, BindRequest, FORWARDED_REQUEST_HEADERS, FORWARDED_RESPONSE_HEADERS, MAX_BIND_BYTES,
    ReceivedResult, allowed_headers, for_each_field, header_map, pick_headers,
};
use crate::clock::whole_ms;
use crate::protocol::task::TIMEOUT_MS_RANGE;
use crate::protocol::{ApiError, json_response};
use crate::server::access::bearer;
use crate::server::admission::RETRY_AFTER_MS;
use crate::server::body::read_limited;
use crate::server::unsent_answers::UnsentAnswers;

/// What the relay routes share.
#[derive(Clone)]
pub struct RelayRoutes {
    relay: Arc<Relay>,
    max_task_bytes: usize,
    body_read_timeout: Duration,
    answers: UnsentAnswers,
}

impl RelayRoutes {
    /// Routes for `relay`; consumer bodies are bounded by `max_task_bytes`,
    /// every body by `body_read_timeout` (408 beyond, as on `/v1/task`),
    /// and answers not yet taken by `answers`, the node's budget.
    pub fn new(
        relay: Arc<Relay>,
        max_task_bytes: usize,
        body_read_timeout: Duration,
        answers: UnsentAnswers,
    ) -> Self {
        Self {
            relay,
            max_task_bytes,
            body_read_timeout,
            answers,
        }
    }

    /// Reads a whole body of at most `limit` bytes within the deadline.
    async fn read(&self, body: Body, headers: &HeaderMap, limit: usize) -> Result<Bytes, ApiError> {
        tokio::time::timeout(self.body_read_timeout, read_limited(body, headers, limit))
            .await
            .unwrap_or_else(|_| Err(ApiError::request_timeout(whole_ms(self.body_read_timeout))))
    }

    /// The router, to merge into the node's.
    pub fn router<S: Clone + Send + Sync + 'static>(self) -> Router<S> {
        Router::new()
            .route("/v1/relay/bind", post(bind))
            .route("/v1/relay/pull", get(pull))
            .route("/v1/relay/result", post(result))
            .route("/v1/relay/unbind", post(unbind))
            .route("/v1/relay-for/{worker_id}/v1/task", post(relay_task))
            .route("/v1/relay-for/{worker_id}/iicp/health", get(relay_health))
            .with_state(self)
    }

    fn refuse(&self, reason: &str, error: ApiError) -> Response {
        self.relay
            .metrics
            .refusals
            .with_label_values(&[reason])
            .inc();
        error.into_response()
    }

    /// The session the request's bearer token names.
    fn session(&self, headers: &HeaderMap) -> Option<Arc<Session>> {
        let token = bearer(
            headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok()),
        );
        self.relay.session_by_token(token.unwrap_or_default())
    }

    fn unknown_session(&self) -> Response {
        self.refuse("bad_session_token", ApiError::relay_session_unknown())
    }
}

async fn bind(State(routes): State<RelayRoutes>, request: Request) -> Response {
    // Behind a proxy every worker shares the proxy's address; the socket's
    // peer is still the only source this node can vouch for.
    let source = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |info| info.0.ip());
    let (parts, body) = request.into_parts();
    let body = match routes.read(body, &parts.headers, MAX_BIND_BYTES).await {
        Ok(body) => body,
        Err(error) => return routes.refuse("bind_malformed", error),
    };
    let Ok(bind) = serde_json::from_slice::<BindRequest>(&body) else {
        return routes.refuse(
            "bind_malformed",
            ApiError::relay_input("worker_id is required"),
        );
    };
    let settings = &routes.relay.settings;
    match routes.relay.bind(&bind, source) {
        Ok(bound) => {
            record_bind(&routes.relay, &bind.worker_id, &bound).await;
            json_response(
                StatusCode::OK,
                &BindAnswer {
                    session_token: bound.token,
                    poll_timeout_s: settings.poll_timeout().as_secs().max(1),
                    worker_endpoint_path: format!("/v1/relay-for/{}", bind.worker_id),
                    liveness_s: Some(settings.liveness().as_secs()),
                },
            )
        }
        Err(refusal) => routes.refuse(refusal.label(), bind_refusal_error(refusal)),
    }
}

/// After a bind of either transport: the pins file written when it
/// changed (before the worker hears of the bind, so a relay killed right
/// after it still knows the pin when it starts again), metric and log.
pub(super) async fn record_bind(relay: &Arc<Relay>, worker_id: &str, bound: &Bound) {
    if bound.pins_changed {
        let saving = relay.clone();
        let saved = tokio::task::spawn_blocking(move || saving.save_pins()).await;
        if let Ok(Err(error)) | Err(error) = saved.map_err(std::io::Error::other) {
            tracing::error!(%error, "cannot write the relay's pins file; this pin lasts until the relay restarts");
        }
    }
    let kind = if bound.replaced { "rebound" } else { "new" };
    relay.metrics.binds.with_label_values(&[kind]).inc();
    tracing::info!(worker_id = %worker_id, kind, "relay worker bound");
}

/// The protocol error a refused bind is answered with, on either transport.
pub(super) fn bind_refusal_error(refusal: BindRefusal) -> ApiError {
    match refusal {
        BindRefusal::Malformed => {
            ApiError::relay_input("worker_id must be a node id; intent and models must be short")
        }
        BindRefusal::TicketRequired => ApiError::relay_ticket_refused("relay bind ticket required"),
        BindRefusal::TicketInvalid => ApiError::relay_ticket_refused("relay bind ticket invalid"),
        BindRefusal::TicketReplayed => ApiError::relay_ticket_replayed(),
        BindRefusal::Alive => ApiError::relay_worker_bound(),
        BindRefusal::PinMismatch => ApiError::relay_ticket_refused(
            "this worker id is pinned to another rebind key: present that key, \
             or a bind ticket from the directory",
        ),
        BindRefusal::KeyRequired => ApiError::relay_ticket_refused(
            "this relay refuses binds without a rebind key or a bind ticket",
        ),
        BindRefusal::PinsFull => ApiError::relay_at_capacity(
            "the relay's table of pinned workers is full; try another relay",
            RETRY_AFTER_MS,
        ),
        BindRefusal::RateLimited => {
            ApiError::relay_bind_rate_limited(super::bind_limit::WINDOW.as_millis() as u64)
        }
        BindRefusal::AtCapacity => ApiError::relay_at_capacity(
            "relay at session capacity; try another relay",
            RETRY_AFTER_MS,
        ),
        BindRefusal::Stopping => {
            ApiError::unavailable("the relay is shutting down", RETRY_AFTER_MS)
        }
    }
}

async fn pull(State(routes): State<RelayRoutes>, headers: HeaderMap) -> Response {
    let Some(session) = routes.session(&headers) else {
        return routes.unknown_session();
    };
    let relay = &routes.relay;
    let Some(_open) = session.open_pull(relay.settings.max_pulls_per_session) else {
        return routes.refuse(
            "too_many_pulls",
            ApiError::relay_at_capacity(
                "too many pulls open for this relay session",
                RETRY_AFTER_MS,
            ),
        );
    };
    let until = tokio::time::Instant::now() + relay.settings.poll_timeout();
    loop {
        if relay.is_stopping() {
            return ApiError::unavailable("the relay is shutting down", RETRY_AFTER_MS)
                .into_response();
        }
        if session.ended().is_some() {
            return routes.unknown_session();
        }
        if let Some((call_id, task, meta)) = session.take_next(&relay.metrics) {
            let headers = serde_json::to_string(&meta.headers).unwrap_or_else(|_| "{}".into());
            // The task body was checked to be JSON when it queued; it goes
            // to the worker byte for byte.
            let mut body = format!(
                r#"{{"call_id":"{call_id}","elapsed_ms":{},"headers":{headers},"task":"#,
                meta.elapsed.as_millis()
            )
            .into_bytes();
            body.extend_from_slice(&task);
            body.push(b'}');
            let Ok(body) = routes.answers.charge(Bytes::from(body)) else {
                session.requeue(&call_id, &relay.metrics);
                relay
                    .metrics
                    .refusals
                    .with_label_values(&["pull_unsent_budget"])
                    .inc();
                return StatusCode::NO_CONTENT.into_response();
            };
            relay
                .metrics
                .bytes
                .with_label_values(&["to_worker"])
                .inc_by(body.len() as u64);
            return (
                StatusCode::OK,
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )],
                body,
            )
                .into_response();
        }
        if tokio::time::Instant::now() >= until {
            return StatusCode::NO_CONTENT.into_response();
        }
        session.wait_for_task(until).await;
    }
}

async fn result(State(routes): State<RelayRoutes>, headers: HeaderMap, body: Body) -> Response {
    let Some(session) = routes.session(&headers) else {
        return routes.unknown_session();
    };
    let relay = &routes.relay;
    let limit = relay.settings.max_result_bytes;
    // Reserved before a byte is read: the declared length, or the largest
    // result when none is declared (a longer body is refused while read).
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .map_or(limit, |len| len.min(limit));
    let _reserved = match relay.reserve_result(&session, declared) {
        Ok(reserved) => reserved,
        Err(refusal) => {
            let (label, message) = match refusal {
                ResultRefusal::TooManyReads => (
                    "result_reads",
                    "too many results being posted at once for this relay session",
                ),
                ResultRefusal::BytesFull => (
                    "result_bytes",
                    "the relay's budget for results being read is used up",
                ),
            };
            return routes.refuse(label, ApiError::relay_at_capacity(message, RETRY_AFTER_MS));
        }
    };
    let body = match routes.read(body, &headers, limit).await {
        Ok(body) => body,
        Err(error) => return routes.refuse("result_malformed", error),
    };
    let Ok(post) = serde_json::from_slice::<ReceivedResult<'_>>(&body) else {
        return routes.refuse(
            "result_malformed",
            ApiError::relay_input("call_id and result are required"),
        );
    };
    let answer = match post.http_status {
        Some(code) => {
            let Ok(headers) = allowed_headers(post.headers, FORWARDED_RESPONSE_HEADERS) else {
                return routes.refuse(
                    "result_malformed",
                    ApiError::relay_input("headers must be an object"),
                );
            };
            worker_response(code, post.result.get(), &headers)
        }
        None => {
            let task_id = session.task_id_of(post.call_id).unwrap_or_default();
            let Some(answer) = merged_response(&task_id, post.result.get()) else {
                return routes.refuse(
                    "result_malformed",
                    ApiError::relay_input("result must be an object"),
                );
            };
            answer
        }
    };
    deliver(relay, &session, &routes.answers, post.call_id, answer);
    StatusCode::NO_CONTENT.into_response()
}

/// Hands a worker's answer (of either transport) to its consumer, charged
/// to the unsent-answer budget like a direct answer until written.
pub(super) fn deliver(
    relay: &Relay,
    session: &Session,
    answers: &UnsentAnswers,
    call_id: &str,
    answer: Answer,
) {
    let answer = match answer {
        Answer::Result {
            status,
            body,
            headers,
        } => match answers.charge(body) {
            Ok(body) => Answer::Result {
                status,
                body,
                headers,
            },
            Err(full) => Answer::Failed(full),
        },
        other => other,
    };
    if !session.deliver(call_id, answer, &relay.metrics) {
        // Answered after its budget, or a call this worker never held.
        relay
            .metrics
            .refusals
            .with_label_values(&["late_result"])
            .inc();
    }
}

/// Our worker's answer: its status, body and headers as they are.
pub(super) fn worker_response(
    code: u16,
    body: &str,
    headers: &std::collections::BTreeMap<String, String>,
) -> Answer {
    match StatusCode::from_u16(code) {
        Ok(status) if (200..=599).contains(&code) && body.trim_start().starts_with('{') => {
            let mut headers = header_map(headers, FORWARDED_RESPONSE_HEADERS);
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            Answer::Result {
                status,
                body: Bytes::copy_from_slice(body.as_bytes()),
                headers,
            }
        }
        _ => Answer::Failed(ApiError::relay_forward_failed(
            "the worker answered with an invalid status or body",
        )),
    }
}

/// A reference worker's answer: its result object merged into
/// `{task_id, status:"success"}` (its own `task_id` and `status` win),
/// written field by field; `None` when `result` is not an object.
pub(super) fn merged_response(task_id: &str, result: &str) -> Option<Answer> {
    let (mut has_task_id, mut has_status) = (false, false);
    for_each_field(result, |key, _| {
        has_task_id |= key == "task_id";
        has_status |= key == "status";
    })
    .ok()?;
    let mut body = Vec::with_capacity(result.len() + task_id.len() + 48);
    body.push(b'{');
    if !has_task_id {
        body.extend_from_slice(br#""task_id":"#);
        serde_json::to_writer(&mut body, task_id).ok()?;
    }
    if !has_status {
        if body.len() > 1 {
            body.push(b',');
        }
        body.extend_from_slice(br#""status":"success""#);
    }
    for_each_field(result, |key, value| {
        if body.len() > 1 {
            body.push(b',');
        }
        let _ = serde_json::to_writer(&mut body, key);
        body.push(b':');
        body.extend_from_slice(value.get().as_bytes());
    })
    .ok()?;
    body.push(b'}');
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Some(Answer::Result {
        status: StatusCode::OK,
        body: Bytes::from(body),
        headers,
    })
}

async fn unbind(State(routes): State<RelayRoutes>, headers: HeaderMap) -> Response {
    let Some(session) = routes.session(&headers) else {
        return routes.unknown_session();
    };
    routes.relay.unbind(&session);
    tracing::info!(worker_id = %session.worker_id, "relay worker unbound");
    StatusCode::NO_CONTENT.into_response()
}

/// What the relay reads of a task: its id and budget.
#[derive(Deserialize)]
struct TaskPeek {
    #[serde(default)]
    task_id: Option<String>,
    #[serde(default)]
    constraints: Option<ConstraintsPeek>,
}

#[derive(Deserialize)]
struct ConstraintsPeek {
    #[serde(default)]
    timeout_ms: Option<u64>,
}

async fn relay_task(
    State(routes): State<RelayRoutes>,
    Path(worker_id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let received = Instant::now();
    let relay = &routes.relay;
    let Some(session) = relay.alive_session(&worker_id) else {
        return routes.refuse("no_session", ApiError::relay_target_unknown());
    };
    let body = match routes.read(body, &headers, routes.max_task_bytes).await {
        Ok(body) => body,
        Err(error) => return error.into_response(),
    };
    let Ok(peek) = serde_json::from_slice::<TaskPeek>(&body) else {
        return ApiError::validation("the body is not a JSON task object").into_response();
    };
    let task_id = peek.task_id.unwrap_or_default();
    let budget = Duration::from_millis(
        peek.constraints
            .and_then(|c| c.timeout_ms)
            .unwrap_or(relay.settings.default_task_timeout_ms)
            .clamp(*TIMEOUT_MS_RANGE.start(), *TIMEOUT_MS_RANGE.end()),
    );
    let deadline = received + budget;
    let spec = CallSpec {
        call_id: uuid::Uuid::new_v4().simple().to_string(),
        task_id: task_id.clone(),
        task: body,
        headers: pick_headers(&headers, FORWARDED_REQUEST_HEADERS),
        received,
        deadline,
    };
    let pending = match relay.enqueue(&session, spec) {
        Ok(pending) => pending,
        Err(QueueRefusal::Ended) => {
            return routes.refuse("no_session", ApiError::relay_target_unknown());
        }
        Err(QueueRefusal::SessionFull | QueueRefusal::RelayFull) => {
            return routes.refuse(
                "queue_full",
                ApiError::capacity_exceeded("relay", RETRY_AFTER_MS),
            );
        }
    };
    let _withdraw_if_abandoned = pending.withdraw;
    let grace = Duration::from_millis(relay.settings.result_grace_ms);
    let answer = tokio::time::timeout_at((deadline + grace).into(), pending.answer).await;
    let outcome = |label: &str| relay.metrics.tasks.with_label_values(&[label]).inc();
    match answer {
        Ok(Ok(Answer::Result {
            status,
            body,
            headers,
        })) => {
            outcome("answered");
            relay
                .metrics
                .bytes
                .with_label_values(&["to_consumer"])
                .inc_by(body.len() as u64);
            let mut response = (status, body).into_response();
            response.headers_mut().extend(headers);
            response
        }
        Ok(Ok(Answer::Failed(error))) => {
            outcome("answered");
            error.for_task(&task_id).into_response()
        }
        Ok(Ok(Answer::Ended(reason))) => {
            outcome("worker_gone");
            ApiError::relay_forward_failed(format!("relay forward failed: {}", reason.as_str()))
                .for_task(&task_id)
                .into_response()
        }
        Ok(Err(_)) => {
            outcome("worker_gone");
            ApiError::relay_forward_failed("relay forward failed: the worker's session ended")
                .for_task(&task_id)
                .into_response()
        }
        Ok(Ok(Answer::Expired)) | Err(_) => {
            outcome("timeout");
            ApiError::task_timeout(budget.as_millis() as u64)
                .for_task(&task_id)
                .into_response()
        }
    }
}

async fn relay_health(
    State(routes): State<RelayRoutes>,
    Path(worker_id): Path<String>,
) -> Response {
    match routes.relay.alive_session(&worker_id) {
        Some(session) => json_response(
            StatusCode::OK,
            &json!({
                "status": "ok",
                "node_id": session.worker_id,
                "via_relay": true,
                "models": session.models,
                "relay_queue": session.queued(),
            }),
        ),
        None => routes.refuse("no_session", ApiError::relay_target_unknown()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn merged(task_id: &str, result: &str) -> Option<serde_json::Value> {
        match merged_response(task_id, result)? {
            Answer::Result { status, body, .. } => {
                assert_eq!(status, StatusCode::OK);
                Some(serde_json::from_slice(&body).expect("merged answers are JSON"))
            }
            _ => None,
        }
    }

    #[test]
    fn a_reference_result_is_merged_field_by_field_and_its_own_fields_win() {
        assert_eq!(
            merged("t-1", r#"{"result":{"text":"hi"}}"#),
            Some(json!({"task_id": "t-1", "status": "success", "result": {"text": "hi"}}))
        );
        assert_eq!(
            merged("t-\"2", r#"{"status":"completed","task_id":"own"}"#),
            Some(json!({"task_id": "own", "status": "completed"}))
        );
        assert_eq!(
            merged("t-3", "{}"),
            Some(json!({"task_id": "t-3", "status": "success"}))
        );
        assert_eq!(merged("t-4", "[1]"), None);
        assert_eq!(merged("t-4", r#""text""#), None);
    }
}
