//! Register, heartbeat, re-register, deregister.
//!
//! * Register only once the node's own `/iicp/health` answers: real
//!   directories probe the endpoint inside the register call.
//! * Heartbeat at `{dir}/v1/heartbeat` with `Authorization: Bearer`, at the
//!   cadence the PONG asks for (`next_heartbeat_ms`), answering each
//!   liveness challenge and reporting task metrics in acknowledged batches.
//! * 401/404/410 → register again at once, proving ownership with
//!   `current_node_token`.
//! * Network errors, timeouts, 5xx and garbage → exponential backoff with
//!   jitter, capped; the node keeps serving tasks throughout.
//! * On shutdown, after the drain, deregister.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::{Notify, watch};

use super::answers::{Pong, Registration};
use super::client::{DirectoryClient, DirectoryError};
use super::identity::{SharedCredentials, StateDir, snapshot};
use super::payload::{BatchTracker, HeartbeatFacts, RegisterFacts, heartbeat_body, register_body};
use super::settings::DirectorySettings;
use super::signing::challenge_response;
use super::status::DirectoryStatus;
use crate::metrics::{Metrics, TallyCounts};
use crate::protocol::confidentiality::CxPublicKey;
use crate::runtime::plugin::CapabilityInfo;

/// Every timing of the directory relationship, in one table.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Heartbeat interval when the directory names none (the SDK's 30 s).
    pub default_heartbeat: Duration,
    /// Shortest interval honoured, whatever the directory asks.
    pub min_heartbeat: Duration,
    /// Longest interval honoured.
    pub max_heartbeat: Duration,
    /// First retry delay after a failure.
    pub backoff_initial: Duration,
    /// Retry delays never exceed this.
    pub backoff_max: Duration,
    /// How long to wait for the node's own health route before registering anyway.
    pub local_health_wait: Duration,
    /// Bound on the deregistration call at shutdown.
    pub deregister_timeout: Duration,
}

/// The defaults.
pub const TIMING: Timing = Timing {
    default_heartbeat: Duration::from_secs(30),
    min_heartbeat: Duration::from_millis(250),
    max_heartbeat: Duration::from_secs(300),
    backoff_initial: Duration::from_millis(500),
    backoff_max: Duration::from_secs(30),
    local_health_wait: Duration::from_secs(10),
    deregister_timeout: Duration::from_secs(5),
};

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
}

/// Exponential backoff with jitter (each wait in [d/2, d]).
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Self {
        Self {
            next: TIMING.backoff_initial,
        }
    }

    fn reset(&mut self) {
        self.next = TIMING.backoff_initial;
    }

    fn wait(&mut self) -> Duration {
        let current = self.next;
        self.next = (current * 2).min(TIMING.backoff_max);
        current.mul_f64(0.5 + fastrand::f64() * 0.5)
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
    metrics: Arc<Metrics>,
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
    pub metrics: Arc<Metrics>,
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

    /// Registers and heartbeats until `shutdown` turns true.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        self.wait_for_local_health().await;
        let mut backoff = Backoff::new();
        let mut batches = BatchTracker::default();
        'registered: loop {
            loop {
                match self.register().await {
                    Ok(()) => break,
                    Err(error) => {
                        self.metrics
                            .registrations
                            .with_label_values(&["error"])
                            .inc();
                        tracing::warn!(directory = self.client.base_url(), %error, "registration failed; will retry");
                        let wait = retry_after(&error).unwrap_or_else(|| backoff.wait());
                        if self.sleep(wait, &mut shutdown).await == Wake::Shutdown {
                            return;
                        }
                    }
                }
            }
            backoff.reset();
            let mut interval = Duration::ZERO;
            let mut challenge: Option<String> = None;
            loop {
                match self.sleep(interval, &mut shutdown).await {
                    Wake::Shutdown => return,
                    Wake::Reregister => {
                        tracing::info!("the served intents changed; registering again");
                        continue 'registered;
                    }
                    Wake::Elapsed => {}
                }
                match self.heartbeat(&mut batches, challenge.as_deref()).await {
                    Ok(pong) => {
                        backoff.reset();
                        self.status.heartbeat(Ok(()));
                        self.metrics.heartbeats.inc();
                        interval = pong.next_heartbeat;
                        challenge = pong.challenge;
                    }
                    Err(error) if error.needs_registration() => {
                        tracing::info!(%error, "the directory no longer knows this node's token; registering again");
                        self.status.set_registered(false);
                        self.metrics.directory_registered.set(0);
                        continue 'registered;
                    }
                    Err(error) => {
                        self.metrics.heartbeat_failures.inc();
                        self.status.heartbeat(Err(error.to_string()));
                        tracing::warn!(%error, "heartbeat failed; serving continues");
                        // The challenge stays pending: the directory never saw the answer.
                        interval = retry_after(&error).unwrap_or_else(|| backoff.wait());
                    }
                }
            }
        }
    }

    async fn wait_for_local_health(&self) {
        let deadline = tokio::time::Instant::now() + TIMING.local_health_wait;
        let probe = reqwest::Client::new();
        while tokio::time::Instant::now() < deadline {
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

    async fn register(&self) -> Result<(), DirectoryError> {
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
        if let Some(state) = &self.state_dir
            && let Err(error) = state.save_credentials(self.client.base_url(), &updated)
        {
            tracing::warn!(%error, "cannot persist directory credentials");
        }
        self.status.set_registered(true);
        self.metrics.directory_registered.set(1);
        self.metrics.registrations.with_label_values(&["ok"]).inc();
        tracing::info!(
            directory = self.client.base_url(),
            node_id = %updated.node_id,
            endpoint = %self.endpoint,
            "registered with the directory"
        );
        Ok(())
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
            },
            batch.as_ref(),
            answer,
            &self.settings.pricing,
            &credentials,
        );
        let answer = self.client.post("heartbeat", Some(token), &body).await?;
        let pong = Pong::read(
            &answer,
            TIMING.default_heartbeat,
            TIMING.min_heartbeat..=TIMING.max_heartbeat,
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
        match tokio::time::timeout(TIMING.deregister_timeout, call).await {
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

fn retry_after(error: &DirectoryError) -> Option<Duration> {
    match error {
        DirectoryError::Status { retry_after, .. } => {
            retry_after.map(|d| d.min(TIMING.max_heartbeat))
        }
        _ => None,
    }
}

/// Why a lifecycle sleep ended.
#[derive(Debug, PartialEq, Eq)]
enum Wake {
    Elapsed,
    Shutdown,
    Reregister,
}

impl Lifecycle {
    /// Sleeps `duration` unless shutdown or a re-registration comes first.
    async fn sleep(&self, duration: Duration, shutdown: &mut watch::Receiver<bool>) -> Wake {
        if *shutdown.borrow() {
            return Wake::Shutdown;
        }
        tokio::select! {
            () = tokio::time::sleep(duration) => if *shutdown.borrow() { Wake::Shutdown } else { Wake::Elapsed },
            _ = shutdown.changed() => Wake::Shutdown,
            () = self.reregister.notified() => Wake::Reregister,
        }
    }
}
