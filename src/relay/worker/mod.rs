//! The worker role: serve from behind NAT through a relay. The node binds
//! outbound to the relay (`POST /v1/relay/bind`), keeps `pullers` long
//! polls open (`GET /v1/relay/pull`), runs every pulled task through the
//! very function the `/v1/task` route uses ([`serve_task`]: admission,
//! nonce, IICP-CX, trace, sandbox — nothing relay-specific), and posts the
//! response back (`POST /v1/relay/result`) with its status and headers.
//!
//! * A lost session (401 on a pull, the relay gone or restarted) is bound
//!   again with jittered exponential backoff that never waits less than
//!   `backoff_floor_ms`; the backoff resets only once a pull worked, so a
//!   relay that accepts binds but no pulls cannot make the worker spin. A
//!   relay that answers empty polls early is polled at most once a second
//!   per puller.
//! * The bind carries a rebind key kept in the state directory: after a
//!   restart the worker takes its alive session over at once (its old
//!   tasks fail with `IICP-E031` on the relay) instead of waiting out the
//!   liveness window.
//! * When the relay requires bind tickets (`IICP-E040`), each bind carries a
//!   fresh one from the directory, asked for with the node's token. The
//!   same answer comes when the relay pinned this id to another key (this
//!   node lost its state directory): the ticket proves the id and re-pins it.
//! * Relayed tasks running at once are bounded by the node's slots; a task
//!   pulled beyond that is answered at once by the node's own admission
//!   (429), so a relay cannot make the worker hold more than it serves.
//! * At shutdown the pulls stop, running tasks finish (within the drain
//!   bound) and post their answers, then the worker unbinds.

mod framed;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use http_body_util::BodyExt;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use serde_json::value::RawValue;
use tokio::sync::{Semaphore, watch};
use tokio::task::{JoinHandle, JoinSet};

use super::settings::WorkerSettings;
use super::ticket;
use super::wire::{
    BindAnswer, BindRequest, FORWARDED_REQUEST_HEADERS, FORWARDED_RESPONSE_HEADERS, PulledCall,
    ResultPost, header_map, pick_headers,
};
use crate::directory::client::DirectoryClient;
use crate::directory::identity::{SharedCredentials, snapshot};
use crate::relay::metrics::RelayMetrics;
use crate::server::state::AppState;
use crate::server::task_route::serve_task;

/// An empty poll answered faster than this is followed by a pause, so a
/// misbehaving relay cannot make a puller spin.
const MIN_EMPTY_POLL: Duration = Duration::from_secs(1);
/// Bytes a pulled call may carry beyond the node's task body limit (its
/// envelope: call id, elapsed time, forwarded headers).
pub const PULL_ENVELOPE_BYTES: usize = 64 << 10;

/// Where bind tickets come from: the directory, with the node's token.
pub struct TicketSource {
    /// The directory.
    pub client: DirectoryClient,
    /// The node's live credentials.
    pub credentials: SharedCredentials,
}

/// Everything the worker needs.
pub struct WorkerParts {
    /// Settings.
    pub settings: WorkerSettings,
    /// The serving node.
    pub state: Arc<AppState>,
    /// This node's id (the worker id).
    pub worker_id: String,
    /// Proves this node bound its earlier session.
    pub rebind_key: String,
    /// Tickets, when a directory is configured.
    pub tickets: Option<TicketSource>,
    /// How long running tasks may take to finish at shutdown.
    pub drain: Duration,
}

/// A running worker.
pub struct WorkerHandle {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl WorkerHandle {
    /// Stops pulling, lets running tasks post their answers (within the
    /// drain bound), then unbinds.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

pub(super) struct Worker {
    pub(super) parts: WorkerParts,
    http: reqwest::Client,
    pub(super) metrics: RelayMetrics,
    pub(super) running: Arc<Semaphore>,
    pub(super) slots: u32,
    pub(super) stop: watch::Receiver<bool>,
}

/// A bound long-poll session.
struct Bound {
    token: String,
    poll_timeout: Duration,
}

/// A bound session of either transport.
enum Session {
    LongPoll(Bound),
    Framed(framed::Connection),
}

pub(super) enum BindError {
    /// The relay wants a (fresh) ticket.
    TicketNeeded,
    /// Refused or unreachable; wait this long at least.
    Retry(String, Option<Duration>),
}

/// Why a session stopped serving.
pub(super) enum SessionEnd {
    Lost,
    Stopping,
}

/// Starts the worker.
pub fn start(parts: WorkerParts) -> Result<WorkerHandle, String> {
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_millis(parts.settings.call_timeout_ms))
        .user_agent(concat!("iicp-host/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("cannot build the relay client: {e}"))?;
    let slots = parts.state.gate.capacity().max(1);
    let (stop, stopped) = watch::channel(false);
    let worker = Arc::new(Worker {
        metrics: RelayMetrics::clone(&parts.state.metrics.part()),
        running: Arc::new(Semaphore::new(slots as usize)),
        slots,
        http,
        parts,
        stop: stopped,
    });
    Ok(WorkerHandle {
        stop,
        task: tokio::spawn(worker.run()),
    })
}

/// Exponential backoff with jitter and a floor.
pub(super) struct Backoff {
    floor: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(settings: &WorkerSettings) -> Self {
        let floor = Duration::from_millis(settings.backoff_floor_ms);
        Self {
            floor,
            max: Duration::from_millis(settings.backoff_max_ms),
            next: floor,
        }
    }

    pub(super) fn reset(&mut self) {
        self.next = self.floor;
    }

    /// The next wait, in [max(floor, d/2), d]; `at_least` (a relay's
    /// Retry-After) raises it.
    fn wait(&mut self, at_least: Option<Duration>) -> Duration {
        let current = self.next;
        self.next = (current * 2).min(self.max);
        current
            .mul_f64(0.5 + fastrand::f64() * 0.5)
            .max(self.floor)
            .max(at_least.unwrap_or_default().min(self.max))
    }
}

impl Worker {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.parts.settings.base_url())
    }

    pub(super) fn call_timeout(&self) -> Duration {
        Duration::from_millis(self.parts.settings.call_timeout_ms)
    }

    pub(super) fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Sleeps `duration` unless the worker stops first.
    async fn pause(&self, duration: Duration) {
        let mut stop = self.stop.clone();
        tokio::select! {
            () = tokio::time::sleep(duration) => {}
            _ = stop.wait_for(|stopped| *stopped) => {}
        }
    }

    async fn run(self: Arc<Self>) {
        let mut backoff = Backoff::new(&self.parts.settings);
        let mut ticket_needed = false;
        let mut lost_at: Option<Instant> = None;
        let relay = self.parts.settings.base_url().to_string();
        while !self.stopping() {
            let bound = match self.parts.settings.framed_addr() {
                Some(addr) => match self.bind_request(ticket_needed).await {
                    Ok(request) => framed::bind(&self, addr, &request)
                        .await
                        .map(Session::Framed),
                    Err(error) => Err(error),
                },
                None => self.bind(ticket_needed).await.map(Session::LongPoll),
            };
            match bound {
                Ok(bound) => {
                    self.metrics.worker_binds.with_label_values(&["ok"]).inc();
                    self.metrics.worker_bound.set(1);
                    match lost_at.take() {
                        Some(lost) => {
                            let rebind = lost.elapsed();
                            self.metrics
                                .worker_rebind_seconds
                                .observe(rebind.as_secs_f64());
                            tracing::info!(%relay, rebind_ms = rebind.as_millis() as u64, "bound to the relay again");
                        }
                        None => tracing::info!(%relay, "bound to the relay"),
                    }
                    let end = match bound {
                        Session::LongPoll(bound) => {
                            let end = self.serve(&bound, &mut backoff).await;
                            self.metrics.worker_bound.set(0);
                            if matches!(end, SessionEnd::Stopping) {
                                self.finish(&bound).await;
                            }
                            end
                        }
                        Session::Framed(connection) => {
                            let end = framed::serve(&self, connection, &mut backoff).await;
                            self.metrics.worker_bound.set(0);
                            end
                        }
                    };
                    match end {
                        SessionEnd::Stopping => return,
                        SessionEnd::Lost => {
                            tracing::warn!(%relay, "lost the relay session; binding again");
                            lost_at = Some(Instant::now());
                        }
                    }
                }
                Err(BindError::TicketNeeded) if !ticket_needed => {
                    tracing::info!(%relay, "the relay requires bind tickets; asking the directory");
                    ticket_needed = true;
                    continue;
                }
                Err(BindError::TicketNeeded) => {
                    self.metrics
                        .worker_binds
                        .with_label_values(&["refused"])
                        .inc();
                    tracing::warn!(%relay, "the relay refused the bind ticket");
                    self.pause(backoff.wait(None)).await;
                }
                Err(BindError::Retry(why, at_least)) => {
                    self.metrics
                        .worker_binds
                        .with_label_values(&["failed"])
                        .inc();
                    tracing::warn!(%relay, error = %why, "relay bind failed; will retry");
                    self.pause(backoff.wait(at_least)).await;
                }
            }
        }
    }

    /// What this worker binds with, on either transport.
    async fn bind_request(&self, with_ticket: bool) -> Result<BindRequest, BindError> {
        let parts = &self.parts;
        let bind_ticket = if with_ticket {
            Some(self.fetch_ticket().await?)
        } else {
            None
        };
        let capabilities = parts.state.plugins.load();
        Ok(BindRequest {
            worker_id: parts.worker_id.clone(),
            intent: capabilities
                .intents()
                .first()
                .map(|i| i.to_string())
                .unwrap_or_default(),
            models: capabilities
                .models()
                .iter()
                .take(super::wire::MAX_MODELS)
                .map(|m| m.to_string())
                .collect(),
            bind_ticket,
            rebind_key: Some(parts.rebind_key.clone()),
        })
    }

    async fn bind(&self, with_ticket: bool) -> Result<Bound, BindError> {
        let request = self.bind_request(with_ticket).await?;
        let response = self
            .http
            .post(self.url("/v1/relay/bind"))
            .header(CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(&request).unwrap_or_default())
            .timeout(self.call_timeout())
            .send()
            .await
            .map_err(|e| BindError::Retry(describe(&e), None))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok())
            .map(Duration::from_secs);
        let body = read_bounded(response, 64 << 10)
            .await
            .map_err(|why| BindError::Retry(why, None))?;
        if status.is_success() {
            let answer: BindAnswer = serde_json::from_slice(&body).map_err(|_| {
                BindError::Retry("the relay's bind answer is not understood".into(), None)
            })?;
            return Ok(Bound {
                token: answer.session_token,
                poll_timeout: Duration::from_secs(answer.poll_timeout_s.clamp(1, 60)),
            });
        }
        let code = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"]["code"].as_str().map(str::to_string))
            .unwrap_or_default();
        if code == "IICP-E040" && status != StatusCode::CONFLICT {
            return Err(BindError::TicketNeeded);
        }
        Err(BindError::Retry(
            format!("HTTP {} {code}", status.as_u16()),
            retry_after,
        ))
    }

    async fn fetch_ticket(&self) -> Result<String, BindError> {
        let Some(source) = &self.parts.tickets else {
            return Err(BindError::Retry(
                "the relay asks for a bind ticket (it requires them, or pinned this node id to \
                 another rebind key); tickets come from a directory (configure one)"
                    .into(),
                None,
            ));
        };
        let Some(token) = snapshot(&source.credentials).node_token else {
            return Err(BindError::Retry(
                "no bind ticket until the directory has registered this node".into(),
                None,
            ));
        };
        ticket::fetch(
            &source.client,
            &token,
            &self.parts.worker_id,
            self.parts.settings.relay_node_id.as_deref(),
        )
        .await
        .map_err(|e| BindError::Retry(format!("bind ticket: {e}"), None))
    }

    /// Runs the pullers until the session is lost or the worker stops.
    async fn serve(self: &Arc<Self>, bound: &Bound, backoff: &mut Backoff) -> SessionEnd {
        let (worked, mut worked_rx) = watch::channel(false);
        let mut pullers = JoinSet::new();
        for _ in 0..self.parts.settings.pullers {
            let worker = self.clone();
            let token = bound.token.clone();
            let poll_timeout = bound.poll_timeout;
            let worked = worked.clone();
            pullers.spawn(async move { worker.pull_loop(&token, poll_timeout, &worked).await });
        }
        let mut stop = self.stop.clone();
        let end = loop {
            tokio::select! {
                finished = pullers.join_next() => match finished {
                    Some(Ok(SessionEnd::Stopping)) => continue,
                    Some(_) | None => break SessionEnd::Lost,
                },
                _ = stop.wait_for(|stopped| *stopped) => break SessionEnd::Stopping,
                Ok(()) = worked_rx.changed() => backoff.reset(),
            }
        };
        pullers.abort_all();
        if matches!(end, SessionEnd::Stopping) || self.stopping() {
            return SessionEnd::Stopping;
        }
        end
    }

    async fn pull_loop(
        self: Arc<Self>,
        token: &str,
        poll_timeout: Duration,
        worked: &watch::Sender<bool>,
    ) -> SessionEnd {
        let limit = self.parts.state.max_body_bytes + PULL_ENVELOPE_BYTES;
        while !self.stopping() {
            let started = Instant::now();
            let response = self
                .http
                .get(self.url("/v1/relay/pull"))
                .header(AUTHORIZATION, format!("Bearer {token}"))
                .timeout(poll_timeout + self.call_timeout())
                .send()
                .await;
            let response = match response {
                Ok(response) => response,
                Err(_) => return SessionEnd::Lost,
            };
            match response.status() {
                StatusCode::OK => {
                    let Ok(body) = read_bounded(response, limit).await else {
                        return SessionEnd::Lost;
                    };
                    worked.send_replace(true);
                    match serde_json::from_slice::<PulledCall>(&body) {
                        Ok(call) => self.clone().dispatch(call, token.to_string()).await,
                        Err(_) => tracing::warn!("the relay sent a task that is not understood"),
                    }
                }
                StatusCode::NO_CONTENT => {
                    worked.send_replace(true);
                    if let Some(rest) = MIN_EMPTY_POLL.checked_sub(started.elapsed()) {
                        self.pause(rest).await;
                    }
                }
                StatusCode::TOO_MANY_REQUESTS => {
                    self.pause(Duration::from_millis(self.parts.settings.backoff_floor_ms))
                        .await;
                }
                _ => return SessionEnd::Lost,
            }
        }
        SessionEnd::Stopping
    }

    /// Runs `call` on its own task when a slot is free, else at once here
    /// (the node's admission then refuses it quickly).
    async fn dispatch(self: Arc<Self>, call: PulledCall, token: String) {
        match self.running.clone().try_acquire_owned() {
            Ok(permit) => {
                tokio::spawn(async move {
                    self.answer(call, &token).await;
                    drop(permit);
                });
            }
            Err(_) => self.answer(call, &token).await,
        }
    }

    /// Serves a relayed task exactly as a direct one (its budget running
    /// from the relay's receipt, `waited_ms` ago): the response's status,
    /// forwarded headers and JSON body, or `None` when it cannot be passed on.
    pub(super) async fn run_task(
        &self,
        task: Vec<u8>,
        forwarded: &BTreeMap<String, String>,
        waited_ms: Option<u64>,
    ) -> Option<(StatusCode, BTreeMap<String, String>, Bytes)> {
        let waited = Duration::from_millis(waited_ms.unwrap_or(0).min(300_000));
        let received = Instant::now()
            .checked_sub(waited)
            .unwrap_or_else(Instant::now);
        let mut headers = header_map(forwarded, FORWARDED_REQUEST_HEADERS);
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let response = serve_task(
            &self.parts.state,
            &headers,
            Body::from(task),
            received,
            None,
        )
        .await;
        let status = response.status();
        let response_headers = pick_headers(response.headers(), FORWARDED_RESPONSE_HEADERS);
        let Ok(collected) = response.into_body().collect().await else {
            self.lost("the response could not be read");
            return None;
        };
        let bytes = collected.to_bytes();
        if serde_json::from_slice::<&RawValue>(&bytes).is_err() {
            self.lost("the response is not JSON");
            return None;
        }
        Some((status, response_headers, bytes))
    }

    /// Serves `call` and posts the response.
    async fn answer(&self, call: PulledCall, token: &str) {
        let task = call.task.get().as_bytes().to_vec();
        let Some((status, headers, bytes)) =
            self.run_task(task, &call.headers, call.elapsed_ms).await
        else {
            return;
        };
        let Ok(result) = serde_json::from_slice::<&RawValue>(&bytes) else {
            return;
        };
        let post = ResultPost {
            call_id: call.call_id,
            result,
            http_status: Some(status.as_u16()),
            headers,
        };
        let sent = self
            .http
            .post(self.url("/v1/relay/result"))
            .header(AUTHORIZATION, format!("Bearer {token}"))
            .header(CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(&post).unwrap_or_default())
            .timeout(self.call_timeout())
            .send()
            .await;
        match sent {
            Ok(response) if response.status().is_success() => self.answered(),
            Ok(response) => self.lost(&format!("the relay answered HTTP {}", response.status())),
            Err(error) => self.lost(&describe(&error)),
        }
    }

    pub(super) fn answered(&self) {
        self.metrics
            .worker_tasks
            .with_label_values(&["answered"])
            .inc();
    }

    pub(super) fn lost(&self, why: &str) {
        self.metrics
            .worker_tasks
            .with_label_values(&["answer_lost"])
            .inc();
        tracing::warn!(why, "a relayed task's answer did not reach the relay");
    }

    /// After the pulls stopped: waits for running tasks, then unbinds.
    async fn finish(&self, bound: &Bound) {
        let all_back = self.running.acquire_many(self.slots);
        if tokio::time::timeout(self.parts.drain, all_back)
            .await
            .is_err()
        {
            tracing::warn!("relayed tasks still running at the drain bound; unbinding anyway");
        }
        let unbound = self
            .http
            .post(self.url("/v1/relay/unbind"))
            .header(AUTHORIZATION, format!("Bearer {}", bound.token))
            .header(CONTENT_TYPE, "application/json")
            .body("{}")
            .timeout(self.call_timeout())
            .send()
            .await;
        match unbound {
            Ok(response) if response.status().is_success() => {
                tracing::info!("unbound from the relay")
            }
            _ => tracing::warn!("could not unbind from the relay; it will expire the session"),
        }
    }
}

/// Reads a response body, refusing more than `limit` bytes.
async fn read_bounded(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| describe(&e))? {
        if bytes.len() + chunk.len() > limit {
            return Err(format!("the relay's answer exceeds {limit} bytes"));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

pub(super) fn describe(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        "timed out".to_string()
    } else if error.is_connect() {
        "connection failed".to_string()
    } else {
        "request failed".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_never_drops_below_the_floor() {
        let settings = WorkerSettings {
            backoff_floor_ms: 100,
            backoff_max_ms: 1000,
            ..WorkerSettings::new("http://r".into())
        };
        let mut backoff = Backoff::new(&settings);
        let waits: Vec<Duration> = (0..8).map(|_| backoff.wait(None)).collect();
        assert!(waits.iter().all(|w| *w >= Duration::from_millis(100)));
        assert!(waits.iter().all(|w| *w <= Duration::from_millis(1000)));
        assert!(waits[7] >= Duration::from_millis(500), "{waits:?}");
        backoff.reset();
        assert!(backoff.wait(None) <= Duration::from_millis(100));
        assert_eq!(
            backoff.wait(Some(Duration::from_secs(5))),
            Duration::from_millis(1000),
            "a Retry-After counts, up to the cap"
        );
    }
}
