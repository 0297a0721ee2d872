//! Register, heartbeat, re-register, deregister — politely, whatever the
//! directory answers.
//!
//! * Register only once the node's own `/iicp/health` answers: real
//!   directories probe the endpoint inside the register call.
//! * Heartbeat at `{dir}/v1/heartbeat` with `Authorization: Bearer`, at the
//!   cadence the PONG asks for (`next_heartbeat_ms`, held within
//!   [`Timing::min_heartbeat`]..[`Timing::max_heartbeat`]), answering each
//!   liveness challenge and reporting task metrics in acknowledged batches.
//! * 401/404/410 → register again, proving ownership with
//!   `current_node_token`, after a backoff wait like any other failure.
//! * Every failure — network error, timeout, 3xx (redirects are never
//!   followed: the register body carries the token and HMAC key), 4xx,
//!   5xx, garbage, and a heartbeat refused right after a registration the
//!   directory accepted — waits `max(retry_floor, Retry-After, backoff)`
//!   with jittered exponential backoff (each wait in [d/2, d], d doubling
//!   from `backoff_initial` to `backoff_max`). Only an *accepted heartbeat*
//!   resets the backoff: a directory that accepts registrations but refuses
//!   the heartbeats after them cannot hold the node in a tight loop.
//!   `Retry-After` can only lengthen a wait (at most to `max_heartbeat`).
//! * Any two requests of this loop are at least
//!   `min(min_heartbeat, retry_floor)` apart, whatever woke it (a reload
//!   asking for a new registration included).
//! * The credentials file is written only when the credentials changed,
//!   at most once per [`Timing::state_write_interval`]; a change inside the
//!   interval is written at the first wake-up after it, and at shutdown.
//! * A drain (of the node, or of plugins) changes what heartbeats report
//!   (see [`super::payload::service_status`]); while heartbeating, the
//!   change is sent at the next paced moment, not at the next interval.
//! * On shutdown: one last heartbeat saying the node drains (when
//!   registered), then, after the drain, deregister.
//!
//! # The most this node asks of a directory
//!
//! With `g = min(min_heartbeat, retry_floor)`:
//!
//! * at any time: at most `1/g` requests per second (defaults: 4/s);
//! * while healthy: one heartbeat per `max(next_heartbeat_ms, min_heartbeat)`,
//!   plus one registration per reload that changes the served intents;
//! * while failing, in any of the ways above: the n-th consecutive failure
//!   waits at least `w(n) = max(retry_floor, min(backoff_initial·2ⁿ⁻¹,
//!   backoff_max)/2)` and each failure costs at most two requests (a
//!   registration and the heartbeat refused after it), so a failure
//!   episode of length T sends at most `2·(N(T) + 1)` requests, N(T) being
//!   the largest n with `w(1) + … + w(n) ≤ T`; in the long run
//!   `4/backoff_max` per second. Defaults (1 s, 60 s, floor 0.5 s): at
//!   most 12 requests in the first 20 s, 16 in the first minute, then one
//!   cycle every 30 s or more.
//!
//! Credit receipts ([`super::receipts`]) are one request per successful task,
//! one at a time, and back off the same way while they fail.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::answers::{Pong, Registration};
use super::backoff::Backoff;
use super::client::{DirectoryClient, DirectoryError};
use super::identity::{Credentials, SharedCredentials, StateDir, snapshot};
use super::payload::ServiceState;
use super::payload::{BatchTracker, HeartbeatFacts, RegisterFacts, heartbeat_body, register_body};
use super::settings::{DirectorySettings, Timing};
use super::signing::challenge_response;
use super::status::DirectoryStatus;
use crate::directory::metrics::DirectoryMetrics;
use crate::metrics::TallyCounts;
use crate::protocol::confidentiality::CxPublicKey;
use crate::runtime::plugin::CapabilityInfo;

impl Timing {
    /// The wait before retrying after `error`: the backoff's next step,
    /// lengthened by `Retry-After`, never under the floor.
    fn retry_wait(&self, backoff: &mut Backoff, error: &DirectoryError) -> Duration {
        let asked = match error {
            DirectoryError::Status { retry_after, .. } => {
                retry_after.map_or(Duration::ZERO, |d| d.min(self.max_heartbeat))
            }
            _ => Duration::ZERO,
        };
        backoff.wait().max(asked).max(self.retry_floor)
    }
}

/// What the lifecycle reads from the serving node.
pub trait NodeView: Send + Sync + 'static {
    /// Every capability of every loaded plugin.
    fn capabilities(&self) -> Vec<CapabilityInfo>;
    /// (tasks holding a slot, slots).
    fn load(&self) -> (u32, u32);
    /// Task outcomes since the last call.
    fn drain_tally(&self) -> TallyCounts;
    /// The IICP-CX key advertised, if the node accepts encrypted tasks.
    fn cx_public_key(&self) -> Option<CxPublicKey>;
    /// Whether the node and its plugins take new tasks.
    fn service_state(&self) -> ServiceState;
    /// Notified when [`NodeView::service_state`] changes.
    fn service_changed(&self) -> &Notify;
}

/// Keeps requests `gap` apart.
struct Pacer {
    gap: Duration,
    last: Option<Instant>,
}

impl Pacer {
    /// How long until the next request may go.
    fn remaining(&self) -> Duration {
        self.last.map_or(Duration::ZERO, |last| {
            (last + self.gap).saturating_duration_since(Instant::now())
        })
    }

    /// Counts a request going now.
    fn mark(&mut self) {
        self.last = Some(Instant::now());
    }
}

/// Writes of the credentials file: only changes, at most one per interval.
struct StateWrites {
    interval: Duration,
    written: Option<Credentials>,
    last_write: Option<Instant>,
    pending: Option<Credentials>,
}

impl StateWrites {
    fn new(interval: Duration) -> Self {
        Self {
            interval,
            written: None,
            last_write: None,
            pending: None,
        }
    }

    /// Offers the latest credentials; they are written now or later.
    fn offer(&mut self, credentials: Credentials) {
        if self.written.as_ref() != Some(&credentials) {
            self.pending = Some(credentials);
        }
    }

    /// What to write now, if anything (always, when `forced`).
    fn due(&mut self, forced: bool) -> Option<Credentials> {
        let ready = forced
            || self
                .last_write
                .is_none_or(|at| at.elapsed() >= self.interval);
        if !ready {
            return None;
        }
        let credentials = self.pending.take()?;
        self.last_write = Some(Instant::now());
        self.written = Some(credentials.clone());
        Some(credentials)
    }
}

/// One node's relationship with one directory.
pub struct Lifecycle {
    client: DirectoryClient,
    settings: DirectorySettings,
    endpoint: String,
    region: String,
    local_health_url: String,
    credentials: SharedCredentials,
    state_dir: Option<StateDir>,
    status: Arc<DirectoryStatus>,
    metrics: Arc<DirectoryMetrics>,
    node: Arc<dyn NodeView>,
    reregister: Notify,
}

/// Everything [`Lifecycle::new`] needs.
pub struct LifecycleParts {
    /// The directory client.
    pub client: DirectoryClient,
    /// Directory settings.
    pub settings: DirectorySettings,
    /// The advertised endpoint.
    pub endpoint: String,
    /// The advertised region.
    pub region: String,
    /// URL of the node's own health route, on the listener.
    pub local_health_url: String,
    /// Shared credentials.
    pub credentials: SharedCredentials,
    /// Where credentials persist.
    pub state_dir: Option<StateDir>,
    /// Shared status.
    pub status: Arc<DirectoryStatus>,
    /// Metrics.
    pub metrics: Arc<DirectoryMetrics>,
    /// The serving node.
    pub node: Arc<dyn NodeView>,
}

impl Lifecycle {
    /// Assembles a lifecycle.
    pub fn new(parts: LifecycleParts) -> Self {
        Self {
            client: parts.client,
            settings: parts.settings,
            endpoint: parts.endpoint,
            region: parts.region,
            local_health_url: parts.local_health_url,
            credentials: parts.credentials,
            state_dir: parts.state_dir,
            status: parts.status,
            metrics: parts.metrics,
            node: parts.node,
            reregister: Notify::new(),
        }
    }

    /// Asks the loop to register again (with the current capabilities) at
    /// its next wake-up, without waiting for the heartbeat interval.
    pub fn request_registration(&self) {
        self.reregister.notify_one();
    }

    /// Registers and heartbeats until `shutdown` turns true, by the rules
    /// of the module docs.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        self.wait_for_local_health().await;
        let timing = self.settings.timing;
        let mut backoff = Backoff::new(timing.backoff_initial, timing.backoff_max);
        let mut pacer = Pacer {
            gap: timing.request_gap(),
            last: None,
        };
        let mut writes = StateWrites::new(timing.state_write_interval);
        let mut batches = BatchTracker::default();
        let mut step = Step::Register;
        let mut wait = Duration::ZERO;
        let mut challenge: Option<String> = None;
        loop {
            let service_wakes = step == Step::Heartbeat;
            match self.sleep(wait, &mut shutdown, service_wakes).await {
                Wake::Shutdown => break,
                Wake::Reregister => {
                    tracing::info!("the served intents changed; registering again");
                    step = Step::Register;
                }
                Wake::Elapsed | Wake::ServiceChanged => {}
            }
            self.persist(&mut writes, false);
            wait = pacer.remaining();
            if !wait.is_zero() {
                continue;
            }
            pacer.mark();
            wait = match step {
                Step::Register => match self.register().await {
                    Ok(credentials) => {
                        writes.offer(credentials);
                        self.persist(&mut writes, false);
                        step = Step::Heartbeat;
                        challenge = None;
                        // The first heartbeat follows at once (the pacer
                        // keeps the gap); the backoff stays where it is
                        // until a heartbeat is accepted.
                        Duration::ZERO
                    }
                    Err(error) => {
                        self.metrics
                            .registrations
                            .with_label_values(&["error"])
                            .inc();
                        tracing::warn!(directory = self.client.base_url(), %error, "registration failed; will retry");
                        timing.retry_wait(&mut backoff, &error)
                    }
                },
                Step::Heartbeat => match self.heartbeat(&mut batches, challenge.as_deref()).await {
                    Ok(pong) => {
                        backoff.reset();
                        self.status.heartbeat(Ok(()));
                        self.metrics.heartbeats.inc();
                        challenge = pong.challenge;
                        pong.next_heartbeat
                    }
                    Err(error) if error.needs_registration() => {
                        tracing::info!(%error, "the directory no longer knows this node's token; registering again");
                        self.status.set_registered(false);
                        self.metrics.directory_registered.set(0);
                        step = Step::Register;
                        timing.retry_wait(&mut backoff, &error)
                    }
                    Err(error) => {
                        self.metrics.heartbeat_failures.inc();
                        self.status.heartbeat(Err(error.to_string()));
                        tracing::warn!(%error, "heartbeat failed; serving continues");
                        // The challenge stays pending: the directory never saw the answer.
                        timing.retry_wait(&mut backoff, &error)
                    }
                },
            };
        }
        if step == Step::Heartbeat {
            tokio::time::sleep(pacer.remaining()).await;
            self.farewell(&mut batches, challenge.as_deref()).await;
        }
        self.persist(&mut writes, true);
    }

    /// The heartbeat sent when shutdown begins, so the directory hears that
    /// the node drains before it deregisters; bounded like deregistration.
    async fn farewell(&self, batches: &mut BatchTracker, challenge: Option<&str>) {
        let sent = tokio::time::timeout(
            self.settings.timing.deregister_timeout,
            self.heartbeat(batches, challenge),
        )
        .await;
        if !matches!(sent, Ok(Ok(_))) {
            tracing::warn!("the directory did not take the draining heartbeat");
        }
    }

    /// Writes the credentials file if a change is due (or at all, `forced`).
    fn persist(&self, writes: &mut StateWrites, forced: bool) {
        let Some(state) = &self.state_dir else {
            return;
        };
        let Some(credentials) = writes.due(forced) else {
            return;
        };
        match state.save_credentials(self.client.base_url(), &credentials) {
            Ok(()) => self.metrics.credential_writes.inc(),
            Err(error) => tracing::warn!(%error, "cannot persist directory credentials"),
        }
    }

    async fn wait_for_local_health(&self) {
        let deadline = Instant::now() + self.settings.timing.local_health_wait;
        let probe = reqwest::Client::new();
        while Instant::now() < deadline {
            let answered = probe
                .get(&self.local_health_url)
                .timeout(Duration::from_secs(1))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if answered {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tracing::warn!("own health route did not answer; registering anyway");
    }

    /// Registers; returns the credentials the directory issued.
    async fn register(&self) -> Result<Credentials, DirectoryError> {
        let credentials = snapshot(&self.credentials);
        let capabilities = self.node.capabilities();
        let (_, max_concurrent) = self.node.load();
        let cx_public_key = self.node.cx_public_key();
        let facts = RegisterFacts {
            endpoint: &self.endpoint,
            region: &self.region,
            capabilities: &capabilities,
            max_concurrent,
            cx_public_key: cx_public_key.as_ref(),
        };
        let answer = self
            .client
            .post(
                "register",
                None,
                &register_body(&facts, &self.settings, &credentials),
            )
            .await?;
        let granted = Registration::read(&answer)?;
        let updated = {
            let mut live = self.credentials.write().unwrap_or_else(|p| p.into_inner());
            live.node_token = Some(granted.node_token.to_string());
            live.directory_hmac_key = granted.hmac_key.map(str::to_string);
            if let Some(node_id) = granted.node_id {
                live.node_id = node_id.to_string();
            }
            live.clone()
        };
        self.status.set_registered(true);
        self.metrics.directory_registered.set(1);
        self.metrics.registrations.with_label_values(&["ok"]).inc();
        tracing::info!(
            directory = self.client.base_url(),
            node_id = %updated.node_id,
            endpoint = %self.endpoint,
            "registered with the directory"
        );
        Ok(updated)
    }

    async fn heartbeat(
        &self,
        batches: &mut BatchTracker,
        challenge: Option<&str>,
    ) -> Result<Pong, DirectoryError> {
        let credentials = snapshot(&self.credentials);
        let Some(token) = credentials.node_token.as_deref() else {
            return Err(DirectoryError::Status {
                status: 401,
                code: None,
                message: Some("no token yet".into()),
                retry_after: None,
            });
        };
        let (active_jobs, max_concurrent) = self.node.load();
        let service = self.node.service_state();
        let batch = batches.next(|| self.node.drain_tally()).cloned();
        let answer = challenge.and_then(|c| {
            credentials
                .verification_key()
                .map(|key| challenge_response(key, c))
        });
        let body = heartbeat_body(
            &HeartbeatFacts {
                active_jobs,
                max_concurrent,
                service,
            },
            batch.as_ref(),
            answer,
            &self.settings.pricing,
            &credentials,
        );
        let answer = self.client.post("heartbeat", Some(token), &body).await?;
        let pong = Pong::read(
            &answer,
            self.settings.timing.default_heartbeat,
            self.settings.timing.min_heartbeat..=self.settings.timing.max_heartbeat,
        )?;
        batches.on_pong(&answer);
        Ok(pong)
    }

    /// `DELETE {dir}/v1/register`, bounded; 404 counts as done.
    pub async fn deregister(&self) {
        let credentials = snapshot(&self.credentials);
        let Some(token) = credentials.node_token.as_deref() else {
            return;
        };
        let body = json!({ "node_id": credentials.node_id });
        let call = self.client.delete("register", Some(token), &body);
        match tokio::time::timeout(self.settings.timing.deregister_timeout, call).await {
            Ok(Ok(_)) => tracing::info!("deregistered from the directory"),
            Ok(Err(error)) if error.status() == Some(404) => {
                tracing::info!("the directory had already forgotten this node")
            }
            Ok(Err(error)) => tracing::warn!(%error, "deregistration failed"),
            Err(_) => tracing::warn!("deregistration timed out"),
        }
        self.status.set_registered(false);
        self.metrics.directory_registered.set(0);
    }
}

/// What the loop does at its next wake-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Register,
    Heartbeat,
}

/// Why a lifecycle sleep ended.
#[derive(Debug, PartialEq, Eq)]
enum Wake {
    Elapsed,
    Shutdown,
    Reregister,
    ServiceChanged,
}

impl Lifecycle {
    /// Sleeps `duration` unless shutdown, a re-registration or (with
    /// `service_wakes`) a change of service state comes first.
    async fn sleep(
        &self,
        duration: Duration,
        shutdown: &mut watch::Receiver<bool>,
        service_wakes: bool,
    ) -> Wake {
        if *shutdown.borrow() {
            return Wake::Shutdown;
        }
        tokio::select! {
            () = tokio::time::sleep(duration) => if *shutdown.borrow() { Wake::Shutdown } else { Wake::Elapsed },
            _ = shutdown.changed() => Wake::Shutdown,
            () = self.reregister.notified() => Wake::Reregister,
            () = self.node.service_changed().notified(), if service_wakes => Wake::ServiceChanged,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(retry_after: Option<Duration>) -> DirectoryError {
        DirectoryError::Status {
            status: 503,
            code: None,
            message: None,
            retry_after,
        }
    }

    #[test]
    fn retry_waits_keep_the_floor_and_the_backoff_whatever_retry_after_says() {
        let timing = Timing::default();
        let mut backoff = Backoff::new(timing.backoff_initial, timing.backoff_max);
        let mut previous_ceiling = Duration::ZERO;
        for step in 0..10 {
            let wait = timing.retry_wait(&mut backoff, &refused(Some(Duration::ZERO)));
            assert!(wait >= timing.retry_floor, "step {step}: {wait:?}");
            let ceiling = (timing.backoff_initial * 2u32.pow(step)).min(timing.backoff_max);
            assert!(wait >= ceiling / 2 && wait <= ceiling.max(timing.retry_floor));
            previous_ceiling = previous_ceiling.max(ceiling);
        }
        assert_eq!(previous_ceiling, timing.backoff_max);
        let asked = timing.retry_wait(&mut backoff, &refused(Some(Duration::from_secs(86_400))));
        assert_eq!(asked, timing.max_heartbeat, "Retry-After is capped");
    }

    #[test]
    fn credentials_are_written_on_change_at_most_once_per_interval() {
        let mut writes = StateWrites::new(Duration::from_secs(3600));
        let token = |t: &str| Credentials {
            node_token: Some(t.to_string()),
            ..Credentials::default()
        };
        writes.offer(token("a"));
        assert_eq!(writes.due(false), Some(token("a")));
        writes.offer(token("a"));
        assert_eq!(writes.due(true), None, "unchanged: nothing to write");
        writes.offer(token("b"));
        writes.offer(token("c"));
        assert_eq!(writes.due(false), None, "inside the interval");
        assert_eq!(
            writes.due(true),
            Some(token("c")),
            "the latest, at shutdown"
        );
    }
}
