//! A directory for tests: a real HTTP server on loopback that behaves like
//! the Rust reference directory as `protocol.md` §11 observed it — it probes
//! the node's `/iicp/health` inside REGISTER, rotates token and HMAC key on
//! every registration, enforces Bearer on heartbeats, issues challenges and
//! checks the answers, checks pricing and receipt signatures — plus knobs to
//! force a 401, answer slowly, answer garbage, go down and come back.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

/// One request the directory received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub authorization: Option<String>,
    pub body: Value,
    pub at: Instant,
}

/// A registered node.
#[derive(Debug, Clone)]
pub struct NodeRecord {
    pub token: String,
    pub hmac_key: String,
    pub endpoint: String,
    pub challenge: Option<String>,
    pub operator_key: Option<String>,
    /// The Ed25519 gossip key sent at REGISTER (`gossip_public_key`).
    pub gossip_key: Option<String>,
}

/// A fixed answer that replaces a route's behaviour.
#[derive(Debug, Clone)]
pub struct Canned {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Canned {
    /// `status` with an error envelope and the given headers.
    pub fn status(status: u16, headers: &[(&str, &str)]) -> Self {
        Self {
            status,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            body: json!({"error": {"code": "canned", "message": "canned answer"}}).to_string(),
        }
    }

    fn response(&self) -> Response {
        let mut response = (
            StatusCode::from_u16(self.status).unwrap(),
            [("content-type", "application/json")],
            self.body.clone(),
        )
            .into_response();
        for (name, value) in &self.headers {
            response.headers_mut().insert(
                axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        response
    }
}

/// Everything the fake knows and every knob.
#[derive(Debug)]
pub struct FakeState {
    pub nodes: HashMap<String, NodeRecord>,
    pub requests: Vec<Recorded>,
    pub next_heartbeat_ms: u64,
    /// Heartbeats to refuse with 401 before behaving again.
    pub force_401: u32,
    /// Delay before answering heartbeats.
    pub heartbeat_delay: Duration,
    /// Answer heartbeats with a body that is not JSON.
    pub garbage: bool,
    /// Answer heartbeats with a body over a megabyte.
    pub oversized: bool,
    /// Acknowledge metrics batches.
    pub accept_batches: bool,
    /// Delay before answering credit awards.
    pub award_delay: Duration,
    /// Answer every registration with this instead (after recording it).
    pub register_canned: Option<Canned>,
    /// Answer every heartbeat with this instead (after recording it).
    pub heartbeat_canned: Option<Canned>,
    pub registrations: u32,
    pub challenge_checks: Vec<bool>,
    pub pricing_checks: Vec<bool>,
    pub receipt_checks: Vec<bool>,
    pub deregistrations: Vec<(Option<String>, Value)>,
    /// The Ed25519 key `GET /v1/directory-key` publishes (64 hex digits);
    /// `None` answers 503 `not_configured`, as a directory without one.
    pub directory_key: Option<String>,
    pub directory_key_fetches: u32,
    /// Signs relay bind tickets, when set.
    pub ticket_key: Option<ed25519_dalek::SigningKey>,
}

impl Default for FakeState {
    fn default() -> Self {
        Self {
            nodes: HashMap::new(),
            requests: Vec::new(),
            next_heartbeat_ms: 300,
            force_401: 0,
            heartbeat_delay: Duration::ZERO,
            garbage: false,
            oversized: false,
            accept_batches: true,
            award_delay: Duration::ZERO,
            register_canned: None,
            heartbeat_canned: None,
            registrations: 0,
            challenge_checks: Vec::new(),
            pricing_checks: Vec::new(),
            receipt_checks: Vec::new(),
            deregistrations: Vec::new(),
            directory_key: None,
            directory_key_fetches: 0,
            ticket_key: None,
        }
    }
}

type Shared = Arc<Mutex<FakeState>>;

/// The running fake.
pub struct FakeDirectory {
    pub addr: SocketAddr,
    pub state: Shared,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

pub fn hmac_hex(key: &str, message: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(message.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

fn sdk_pricing_message(pricing: &Value) -> Option<String> {
    let multiplier = pricing.get("credit_cost_multiplier")?.as_f64()?;
    let number = if multiplier.fract() == 0.0 {
        format!("{}", multiplier as i64)
    } else {
        format!("{multiplier}")
    };
    let model = pricing.get("pricing_model")?.as_str()?;
    Some(format!(
        "{{\"credit_cost_multiplier\":{number},\"pricing_model\":\"{model}\"}}"
    ))
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        [("content-type", "application/json")],
        json!({"error": {"code": code, "message": message}}).to_string(),
    )
        .into_response()
}

fn ok(status: StatusCode, body: Value) -> Response {
    (
        status,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string)
}

fn record(state: &Shared, method: &str, path: &str, headers: &HeaderMap, body: &Value) {
    state.lock().unwrap().requests.push(Recorded {
        method: method.to_string(),
        path: path.to_string(),
        authorization: headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        body: body.clone(),
        at: Instant::now(),
    });
}

async fn register(State(state): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_error",
            "body is not JSON",
        );
    };
    record(&state, "POST", "/v1/register", &headers, &body);
    if let Some(canned) = state.lock().unwrap().register_canned.clone() {
        return canned.response();
    }
    let (Some(endpoint), Some(node_id)) = (body["endpoint"].as_str(), body["node_id"].as_str())
    else {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_error",
            "endpoint and node_id required",
        );
    };
    if body["capabilities"].as_array().is_none_or(Vec::is_empty) {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_error",
            "capabilities required",
        );
    }
    // The liveness probe, inside the register call, as the real directory
    // does — skipped, as there, for a declared concrete NAT type with a
    // transport method (`protocol.md` §2.3).
    let declared = body["nat_type"]
        .as_str()
        .is_some_and(|n| !matches!(n, "" | "none" | "unknown"))
        && body["transport_method"]
            .as_str()
            .is_some_and(|t| !t.is_empty());
    let probe = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let alive = declared
        || probe
            .get(format!("{endpoint}/iicp/health"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
    if !alive {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "IICP-E036",
            "liveness check failed",
        );
    }
    let mut state = state.lock().unwrap();
    let previous = state.nodes.get(node_id).cloned();
    if let Some(previous) = &previous {
        let proven = body["current_node_token"].as_str() == Some(previous.token.as_str());
        if previous.endpoint != endpoint && !proven {
            return (
                StatusCode::FORBIDDEN,
                json!({"error": "IICP-E050", "message": "endpoint ownership not proven"})
                    .to_string(),
            )
                .into_response();
        }
    }
    let operator_key = body["node_hmac_key"].as_str().map(str::to_string);
    if let Some(signature) = body["pricing"]["declaration_signature"].as_str() {
        let key = operator_key
            .clone()
            .or(previous.as_ref().map(|p| p.hmac_key.clone()));
        let valid = key
            .zip(sdk_pricing_message(&body["pricing"]))
            .is_some_and(|(key, message)| hmac_hex(&key, &message) == signature);
        state.pricing_checks.push(valid);
    }
    let record = NodeRecord {
        token: uuid::Uuid::new_v4().to_string(),
        hmac_key: uuid::Uuid::new_v4().simple().to_string(),
        endpoint: endpoint.to_string(),
        challenge: None,
        operator_key,
        gossip_key: body["gossip_public_key"].as_str().map(str::to_string),
    };
    state.registrations += 1;
    state.nodes.insert(node_id.to_string(), record.clone());
    ok(
        StatusCode::CREATED,
        json!({
            "node_id": node_id,
            "node_token": record.token,
            "node_hmac_key": record.hmac_key,
            "expires_at": null,
            "directory": "fake",
        }),
    )
}

async fn heartbeat(State(state): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    record(&state, "POST", "/v1/heartbeat", &headers, &body);
    if let Some(canned) = state.lock().unwrap().heartbeat_canned.clone() {
        return canned.response();
    }
    let (delay, garbage, oversized) = {
        let s = state.lock().unwrap();
        (s.heartbeat_delay, s.garbage, s.oversized)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if garbage {
        return (StatusCode::OK, "<html>definitely not json</html>").into_response();
    }
    if oversized {
        return (
            StatusCode::OK,
            format!("{{\"ok\":true,\"pad\":\"{}\"}}", "x".repeat(2 << 20)),
        )
            .into_response();
    }
    let Some(token) = bearer(&headers) else {
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing node_token",
        );
    };
    let mut state = state.lock().unwrap();
    let node_id = body["node_id"].as_str().unwrap_or_default().to_string();
    let Some(node) = state.nodes.get(&node_id).cloned() else {
        return error(StatusCode::NOT_FOUND, "IICP-E003", "unknown node");
    };
    if node.token != token {
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "invalid node_token",
        );
    }
    if state.force_401 > 0 {
        state.force_401 -= 1;
        return error(StatusCode::UNAUTHORIZED, "unauthorized", "token revoked");
    }
    if let (Some(challenge), Some(answer)) = (&node.challenge, body["challenge_response"].as_str())
    {
        let valid = hmac_hex(&node.hmac_key, challenge) == answer;
        state.challenge_checks.push(valid);
    }
    if let Some(signature) = body["pricing"]["declaration_signature"].as_str() {
        let key = node.operator_key.clone().unwrap_or(node.hmac_key.clone());
        let valid =
            sdk_pricing_message(&body["pricing"]).is_some_and(|m| hmac_hex(&key, &m) == signature);
        state.pricing_checks.push(valid);
    }
    let challenge = uuid::Uuid::new_v4().simple().to_string();
    state.nodes.get_mut(&node_id).unwrap().challenge = Some(challenge.clone());
    let accepted = if state.accept_batches {
        body.get("metrics_batch_id").cloned().unwrap_or(Value::Null)
    } else {
        Value::Null
    };
    ok(
        StatusCode::OK,
        json!({
            "ok": true,
            "next_heartbeat_ms": state.next_heartbeat_ms,
            "challenge": challenge,
            "metrics_batch_accepted": accepted,
            "reputation_score": 0.5,
        }),
    )
}

async fn deregister(State(state): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    record(&state, "DELETE", "/v1/register", &headers, &body);
    let mut state = state.lock().unwrap();
    state.deregistrations.push((bearer(&headers), body.clone()));
    let node_id = body["node_id"].as_str().unwrap_or_default().to_string();
    match state.nodes.get(&node_id) {
        Some(node) if Some(node.token.clone()) == bearer(&headers) => {
            state.nodes.remove(&node_id);
            ok(StatusCode::OK, json!({"deregistered": true}))
        }
        Some(_) => error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "invalid node_token",
        ),
        None => error(StatusCode::NOT_FOUND, "IICP-E003", "unknown node"),
    }
}

async fn award(State(state): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    record(&state, "POST", "/v1/credits/award", &headers, &body);
    let delay = state.lock().unwrap().award_delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut state = state.lock().unwrap();
    let node_id = body["node_id"].as_str().unwrap_or_default();
    let Some(node) = state.nodes.get(node_id).cloned() else {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "IICP-E027",
            "unknown node",
        );
    };
    if bearer(&headers) != Some(node.token.clone()) {
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "invalid node_token",
        );
    }
    let mut message = format!(
        "{}:{}:::{}:{}",
        body["task_id"].as_str().unwrap_or_default(),
        body["tokens_used"].as_u64().unwrap_or_default(),
        body["nonce"].as_str().unwrap_or_default(),
        body["response_hash"].as_str().unwrap_or_default()
    );
    if let Some(querying) = body["querying_node_id"].as_str() {
        message.push(':');
        message.push_str(querying);
    }
    let valid = body["signature"].as_str() == Some(hmac_hex(&node.hmac_key, &message).as_str())
        && body["nonce"].as_str().is_some_and(|n| n.len() >= 32);
    state.receipt_checks.push(valid);
    if valid {
        ok(StatusCode::CREATED, json!({"awarded": true}))
    } else {
        error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "IICP-E027",
            "bad receipt signature",
        )
    }
}

async fn directory_key(State(state): State<Shared>) -> Response {
    let mut state = state.lock().unwrap();
    state.directory_key_fetches += 1;
    match &state.directory_key {
        Some(key) => ok(
            StatusCode::OK,
            json!({"algorithm": "ed25519", "public_key": key}),
        ),
        None => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_configured",
            "this directory has no signing key",
        ),
    }
}

/// `POST /v1/relay/ticket`: a bind ticket for the calling node, signed
/// with `ticket_key` (`protocol.md` §7.4), as the reference format has it.
async fn relay_ticket(State(state): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    record(&state, "POST", "/v1/relay/ticket", &headers, &body);
    let state = state.lock().unwrap();
    let node_id = headers
        .get("x-node-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let Some(node) = state.nodes.get(node_id) else {
        return error(StatusCode::NOT_FOUND, "IICP-E003", "unknown node");
    };
    if bearer(&headers) != Some(node.token.clone()) {
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "invalid node_token",
        );
    }
    let Some(key) = &state.ticket_key else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "not_configured", "no key");
    };
    let audience = body["relay_node_id"].as_str().unwrap_or("*");
    let ticket = relay_bind_ticket(
        key,
        node_id,
        audience,
        &uuid::Uuid::new_v4().simple().to_string(),
    );
    ok(StatusCode::CREATED, json!({ "ticket": ticket }))
}

/// A relay bind ticket for `worker_id` and `audience`, valid for a minute.
pub fn relay_bind_ticket(
    key: &ed25519_dalek::SigningKey,
    worker_id: &str,
    audience: &str,
    jti: &str,
) -> String {
    use base64::Engine;
    use ed25519_dalek::Signer;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({
        "v": 1, "typ": "relay-bind-ticket", "jti": jti, "iss": "fake-directory",
        "sub": worker_id, "aud": audience, "iat": now, "exp": now + 60,
    });
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims.to_string());
    let signature = key.sign(format!("iicp:relay-bind-ticket:v1\n{payload}").as_bytes());
    format!("{payload}.{}", hex::encode(signature.to_bytes()))
}

/// `GET /v1/node/{id}`: node detail with the gossip key as `public_key`.
async fn node_detail(
    State(state): State<Shared>,
    axum::extract::Path(node_id): axum::extract::Path<String>,
) -> Response {
    let state = state.lock().unwrap();
    match state.nodes.get(&node_id) {
        Some(node) => ok(
            StatusCode::OK,
            json!({
                "node_id": node_id,
                "endpoint": node.endpoint,
                "region": "test",
                "public_key": node.gossip_key,
            }),
        ),
        None => error(StatusCode::NOT_FOUND, "not_found", "Node not found"),
    }
}

fn router(state: Shared) -> Router {
    Router::new()
        .route("/v1/directory-key", axum::routing::get(directory_key))
        .route("/v1/register", post(register).delete(deregister))
        .route("/v1/heartbeat", post(heartbeat))
        .route("/v1/credits/award", post(award))
        .route("/v1/relay/ticket", post(relay_ticket))
        .route("/v1/node/{node_id}", axum::routing::get(node_detail))
        .with_state(state)
}

impl FakeDirectory {
    /// Starts on a free loopback port.
    pub async fn start() -> FakeDirectory {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut fake = FakeDirectory {
            addr,
            state: Arc::new(Mutex::new(FakeState::default())),
            stop: None,
            server: None,
        };
        fake.serve(listener);
        fake
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let app = router(self.state.clone());
        self.server = Some(tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        }));
        self.stop = Some(stop);
    }

    /// `http://addr` — the base URL to give the node.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Goes down: stops accepting and closes idle connections.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
        }
    }

    /// Comes back on the same address; with `forget`, with no memory of
    /// registered nodes (a directory restarted without persistence).
    pub async fn restart(&mut self, forget: bool) {
        if forget {
            self.state.lock().unwrap().nodes.clear();
        }
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }

    /// The requests to `path` so far.
    pub fn requests(&self, path: &str) -> Vec<Recorded> {
        self.state
            .lock()
            .unwrap()
            .requests
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    /// The REGISTER bodies so far, once there are `count` (within `wait`).
    pub async fn registrations(&self, count: usize, wait: Duration) -> Vec<Value> {
        let deadline = Instant::now() + wait;
        loop {
            let bodies: Vec<Value> = self
                .requests("/v1/register")
                .into_iter()
                .filter(|r| r.method == "POST")
                .map(|r| r.body)
                .collect();
            if bodies.len() >= count || Instant::now() >= deadline {
                assert!(bodies.len() >= count, "{} registrations", bodies.len());
                return bodies;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `accept` holds on the state, polling.
    pub async fn wait_for(&self, timeout: Duration, accept: impl Fn(&FakeState) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if accept(&self.state.lock().unwrap()) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        accept(&self.state.lock().unwrap())
    }
}
