//! A directory stand-in for the chaos cases: a real HTTP server on loopback
//! that registers nodes and accepts heartbeats when healthy, and otherwise
//! misbehaves in one chosen way — down, slow, garbage, 500s, 401s on every
//! heartbeat, redirects — while counting every request it receives.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

/// The route recorded for a connection a down directory closed unanswered.
pub const CLOSED_UNANSWERED: &str = "connection closed unanswered";

/// How the stand-in answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Registers, accepts heartbeats (every 30 s), deregisters.
    Healthy,
    /// Answers nothing for `delay`, longer than the node's directory timeout.
    Slow(Duration),
    /// 200 with a body that is not JSON.
    Garbage,
    /// 500 to everything.
    ServerErrors,
    /// Accepts registrations, answers every heartbeat 401.
    Unauthorized,
    /// 307 to another address for everything.
    Redirect,
}

/// One request received.
#[derive(Debug, Clone)]
pub struct Received {
    /// `POST /v1/register`, `POST /v1/heartbeat`, `DELETE /v1/register`, ...
    pub route: String,
    /// When it arrived.
    pub at: Instant,
}

#[derive(Debug)]
struct Shared {
    behaviour: Behaviour,
    heartbeat_ms: u64,
    received: Vec<Received>,
    registered: bool,
    /// The body of the last registration accepted.
    last_registration: Option<Value>,
}

/// A running stand-in; `stop` takes it down (the port refuses connections),
/// `start_again` brings it back on the same port.
pub struct StandInDirectory {
    /// Where it listens.
    pub addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    server: Option<(
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    )>,
}

impl StandInDirectory {
    /// Starts on a free loopback port, behaving `behaviour`.
    pub async fn start(behaviour: Behaviour) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the stand-in directory");
        let addr = listener.local_addr().expect("local address");
        let mut directory = Self {
            addr,
            shared: Arc::new(Mutex::new(Shared {
                behaviour,
                heartbeat_ms: 30_000,
                received: Vec::new(),
                registered: false,
                last_registration: None,
            })),
            server: None,
        };
        directory.serve(listener);
        directory
    }

    /// A directory that is down when the node starts: its port accepts
    /// connections and closes each at once without a byte of answer — to
    /// the node the same failure as a refused connection — and counts each
    /// as a request (route `"connection closed unanswered"`), so a case can
    /// check how often a node tries a directory that is down.
    /// [`StandInDirectory::start_again`] brings it up there.
    pub async fn down() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the stand-in directory");
        let addr = listener.local_addr().expect("local address");
        let mut directory = Self {
            addr,
            shared: Arc::new(Mutex::new(Shared {
                behaviour: Behaviour::Healthy,
                heartbeat_ms: 30_000,
                received: Vec::new(),
                registered: false,
                last_registration: None,
            })),
            server: None,
        };
        let shared = directory.shared.clone();
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = &mut stopped => return,
                    accepted = listener.accept() => {
                        if let Ok((connection, _)) = accepted {
                            shared.lock().unwrap().received.push(Received {
                                route: CLOSED_UNANSWERED.to_string(),
                                at: Instant::now(),
                            });
                            drop(connection);
                        }
                    }
                }
            }
        });
        directory.server = Some((stop, server));
        directory
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let app = Router::new()
            .route("/v1/register", post(register).delete(deregister))
            .route("/v1/heartbeat", post(heartbeat))
            .route("/v1/credits/award", post(award))
            .with_state(self.shared.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        self.server = Some((stop, server));
    }

    /// `http://addr`, the URL to give the node.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Changes how it answers from now on.
    pub fn behave(&self, behaviour: Behaviour) {
        self.shared.lock().unwrap().behaviour = behaviour;
    }

    /// The `next_heartbeat_ms` it asks for while healthy (default 30 s).
    pub fn ask_heartbeats_every(&self, interval: Duration) {
        self.shared.lock().unwrap().heartbeat_ms = interval.as_millis() as u64;
    }

    /// Goes down: the port refuses connections, and kept-alive ones are
    /// closed, until `start_again`.
    pub async fn stop(&mut self) {
        if let Some((stop, server)) = self.server.take() {
            let _ = stop.send(());
            // Slow answers still sleeping are cut off after a bound.
            let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
        }
    }

    /// Comes back up on the same port.
    pub async fn start_again(&mut self) {
        // A down directory's acceptor lets the port go first.
        self.stop().await;
        let listener = tokio::net::TcpListener::bind(self.addr)
            .await
            .expect("rebind the stand-in directory");
        self.serve(listener);
    }

    /// Requests received since `since`.
    pub fn received_since(&self, since: Instant) -> Vec<Received> {
        self.shared
            .lock()
            .unwrap()
            .received
            .iter()
            .filter(|r| r.at >= since)
            .cloned()
            .collect()
    }

    /// The body of the last registration it accepted (what the node
    /// advertised: endpoint, intents, `cx_public_key`, ...).
    pub fn last_registration(&self) -> Option<Value> {
        self.shared.lock().unwrap().last_registration.clone()
    }

    /// Whether the last registration is standing (not yet refused or
    /// deregistered).
    pub fn registered(&self) -> bool {
        self.shared.lock().unwrap().registered
    }
}

impl Drop for StandInDirectory {
    fn drop(&mut self) {
        if let Some((stop, server)) = self.server.take() {
            let _ = stop.send(());
            server.abort();
        }
    }
}

type SharedState = State<Arc<Mutex<Shared>>>;

/// Records the request; returns the misbehaviour to answer with, if any.
async fn misbehaviour(shared: &Arc<Mutex<Shared>>, route: &str) -> Option<Response> {
    let behaviour = {
        let mut shared = shared.lock().unwrap();
        shared.received.push(Received {
            route: route.to_string(),
            at: Instant::now(),
        });
        shared.behaviour
    };
    match behaviour {
        Behaviour::Healthy | Behaviour::Unauthorized => None,
        Behaviour::Slow(delay) => {
            tokio::time::sleep(delay).await;
            Some(StatusCode::GATEWAY_TIMEOUT.into_response())
        }
        Behaviour::Garbage => Some((StatusCode::OK, "<html>not json</html>").into_response()),
        Behaviour::ServerErrors => Some(
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({"error": {"code": "internal", "message": "storm"}}).to_string(),
            )
                .into_response(),
        ),
        Behaviour::Redirect => Some(
            (
                StatusCode::TEMPORARY_REDIRECT,
                [("location", "http://127.0.0.1:9/v1/elsewhere")],
            )
                .into_response(),
        ),
    }
}

fn json_answer(status: StatusCode, body: Value) -> Response {
    (
        status,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn register(State(shared): SharedState, body: Bytes) -> Response {
    if let Some(answer) = misbehaviour(&shared, "POST /v1/register").await {
        return answer;
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    {
        let mut shared = shared.lock().unwrap();
        shared.registered = true;
        shared.last_registration = Some(body.clone());
    }
    json_answer(
        StatusCode::CREATED,
        json!({
            "node_id": body["node_id"],
            "node_token": format!("token-{}", fastrand_token()),
            "node_hmac_key": "stand-in-key",
        }),
    )
}

async fn heartbeat(State(shared): SharedState, _headers: HeaderMap) -> Response {
    if let Some(answer) = misbehaviour(&shared, "POST /v1/heartbeat").await {
        return answer;
    }
    if shared.lock().unwrap().behaviour == Behaviour::Unauthorized {
        shared.lock().unwrap().registered = false;
        return json_answer(
            StatusCode::UNAUTHORIZED,
            json!({"error": {"code": "unauthorized", "message": "token revoked"}}),
        );
    }
    let interval = shared.lock().unwrap().heartbeat_ms;
    json_answer(
        StatusCode::OK,
        json!({"ok": true, "next_heartbeat_ms": interval}),
    )
}

async fn deregister(State(shared): SharedState) -> Response {
    if let Some(answer) = misbehaviour(&shared, "DELETE /v1/register").await {
        return answer;
    }
    shared.lock().unwrap().registered = false;
    json_answer(StatusCode::OK, json!({"deregistered": true}))
}

async fn award(State(shared): SharedState) -> Response {
    if let Some(answer) = misbehaviour(&shared, "POST /v1/credits/award").await {
        return answer;
    }
    json_answer(StatusCode::CREATED, json!({"awarded": true}))
}

fn fastrand_token() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}
