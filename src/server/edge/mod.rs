//! The network edge: our own accept loop on hyper, so that no client can
//! hold the node's connections, memory or task slots by being slow.
//!
//! `axum::serve` gives hyper no timer (which silently turns off hyper's
//! header-read timeout) and has no connection cap, no idle limit and no
//! body deadline. Here every listener (public and admin) gets:
//!
//! * a **connection cap** — a connection over it is answered at once with a
//!   complete 503 error envelope (`Retry-After`, `Connection: close`)
//!   once its request head is read (hyper clients take an answer that comes
//!   before their request for a protocol error), then closed after a
//!   lingering close (below); beyond [`REFUSAL_LINGERS`] such refusals at
//!   once, written without reading anything and closed. We answer rather than
//!   close silently or leave connections in the kernel's backlog, so a
//!   consumer learns in one round trip that this node is full and moves on
//!   (a reset or a connect timeout says nothing); the answer costs one
//!   non-blocking write and holds nothing;
//! * a **header-read deadline** and a **keep-alive idle timeout**, kept by one
//!   watchdog per connection ([`connection`]);
//! * limits on **header bytes** and **header count** (hyper answers 431);
//! * the **body-read deadline** is the task route's: it reads the whole body
//!   under it before any task slot is taken, and answers 408 in the error
//!   envelope when it passes;
//! * a **lingering close**: when the node ends a connection after answering
//!   (a 408, a 413, a `Connection: close`) while the client may still be
//!   sending, it shuts its sending side and reads and discards what still
//!   arrives for at most `lingering_close` and `lingering_close_max_bytes`
//!   (`iicp_connection_timeouts_total{kind="lingering_close"}` when either
//!   runs out). Closing
//!   at once with unread bytes makes the kernel send a reset, which can
//!   destroy the answer before the client reads it (the trickling clients
//!   of the reliability suite lost ~1 in 10 of their 408s that way).
//!
//! When a burst of connections (a flood of slow clients, say) is over, the
//! memory it freed is handed back to the kernel, so the node's resident set
//! returns to its baseline instead of keeping the burst's high-water mark.
//!
//! HTTP/1.1 only, as before. Metrics: `iicp_connections_open`,
//! `iicp_connections_refused_total`, `iicp_connection_timeouts_total{kind}`
//! and `iicp_draining_refusals_total`, each by `listener`.
//!
//! **Drain.** When [`DrainSignal::start`] is called the loop stops
//! accepting, idle connections are closed, requests already running finish
//! (their responses carry `Connection: close`), and a request that arrives
//! on an open connection from then on is answered 503 `IICP-E024` with
//! `Retry-After` instead of being run. [`serve`] returns when the last
//! connection has closed; the caller bounds that wait.

pub mod connection;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::connect_info::ConnectInfo;
use axum::http::{HeaderValue, Request, Response, header};
use axum::response::IntoResponse;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tower_service::Service;

use self::connection::{Activity, TrackedBody, TrackedStream};
use crate::heap::{self, BurstEnd};
use crate::protocol::ApiError;
use crate::server::metrics::EdgeMetrics;

/// A burst of at least this many connections, once mostly closed, gives
/// its memory back to the kernel ([`heap`]).
const TRIM_AFTER_CONNECTIONS: usize = 256;
/// How long after a burst ends the trim waits, so the rest of the closing
/// wave is freed first.
const TRIM_DELAY: Duration = Duration::from_secs(1);
/// `Retry-After` sent with a refusal at the cap or during a drain, in ms.
pub const REFUSAL_RETRY_AFTER_MS: u64 = 1000;
/// hyper's built-in header count, which it keeps on the stack; any other
/// count costs a heap allocation per request.
const HYPER_DEFAULT_MAX_HEADERS: usize = 100;
/// The read buffer hyper may grow a connection's to while a body streams
/// in (its default is ~400 KiB), unless the header limit needs more; at
/// least hyper's minimum of 8 KiB.
const BODY_BUFFER_BYTES: usize = 64 << 10;
/// Refusals at the connection cap served at once (each a socket, a task,
/// a read buffer of at most the head limit, for at most the header
/// deadline and `lingering_close`); a flood beyond them gets the bare
/// answer and an immediate close.
pub const REFUSAL_LINGERS: usize = 64;

/// Bounds on every connection of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EdgeSettings {
    /// Time to deliver a complete request head, from accept or from the
    /// first byte after an idle spell.
    pub header_read_timeout: Duration,
    /// Time to deliver a whole request body, from the parsed head.
    pub body_read_timeout: Duration,
    /// How long a keep-alive connection may sit idle between requests.
    pub keep_alive_timeout: Duration,
    /// How long, in all, one response may wait on a client that does not
    /// read it (the time its writes were refused).
    pub response_write_timeout: Duration,
    /// Largest request head (request line and headers), in bytes.
    pub max_header_bytes: usize,
    /// Most request headers.
    pub max_headers: usize,
    /// Most connections open at once on the listener.
    pub max_connections: usize,
    /// How long a connection the node closes after answering keeps reading
    /// (and discarding) what the client still sends.
    pub lingering_close: Duration,
    /// The most a lingering close reads and discards before it closes
    /// anyway (a client may keep sending at line rate for the whole
    /// `lingering_close`).
    pub lingering_close_max_bytes: u64,
    /// Bytes of task answers the node holds, node-wide, for clients that
    /// have not taken them yet (see `server::unsent_answers`).
    pub max_unsent_answer_bytes: u64,
}

impl Default for EdgeSettings {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            keep_alive_timeout: Duration::from_secs(60),
            response_write_timeout: Duration::from_secs(60),
            max_header_bytes: 16 << 10,
            max_headers: HYPER_DEFAULT_MAX_HEADERS,
            max_connections: 4096,
            lingering_close: Duration::from_secs(2),
            lingering_close_max_bytes: 256 << 10,
            max_unsent_answer_bytes: 256 << 20,
        }
    }
}

impl EdgeSettings {
    /// The per-connection read buffer hyper may grow to.
    /// hyper refuses a head once it fills the buffer, so the buffer holds
    /// one byte more than the largest head.
    pub fn buffer_bytes(&self) -> usize {
        self.max_header_bytes
            .saturating_add(1)
            .max(BODY_BUFFER_BYTES)
    }
}

/// The node's shutdown switch, seen by every listener and by the task
/// route (a task whose body finished arriving after the drain began is
/// refused, not run).
#[derive(Debug, Clone)]
pub struct DrainSignal(Arc<watch::Sender<bool>>);

impl Default for DrainSignal {
    fn default() -> Self {
        Self(Arc::new(watch::Sender::new(false)))
    }
}

impl DrainSignal {
    /// Starts the drain (idempotent).
    pub fn start(&self) {
        self.0.send_replace(true);
    }

    /// Whether the drain has begun.
    pub fn is_draining(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once the drain has begun.
    pub fn started(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut receiver = self.0.subscribe();
        async move {
            let _ = receiver.wait_for(|draining| *draining).await;
        }
    }
}

/// What the edge serves: an axum `Router`, or one wrapped in a service of
/// our own (the public routes in [`crate::server::cors::Cors`]).
pub trait Routes: RoutesService + Clone + Send + Sync + Unpin + 'static {}

impl<S: RoutesService + Clone + Send + Sync + Unpin + 'static> Routes for S {}

/// The request-to-answer half of [`Routes`].
pub trait RoutesService:
    Service<Request<Incoming>, Response = Answer, Error = Infallible, Future: Send + 'static>
{
}

impl<S> RoutesService for S where
    S: Service<Request<Incoming>, Response = Answer, Error = Infallible, Future: Send + 'static>
{
}

type Answer = axum::response::Response;

/// Serves `router` on `listener` within `settings` until `drain` starts,
/// then drains as the module docs say and returns when every connection
/// has closed.
pub async fn serve(
    listener: TcpListener,
    router: impl Routes,
    settings: EdgeSettings,
    metrics: EdgeMetrics,
    drain: DrainSignal,
) -> std::io::Result<()> {
    let capacity = settings.max_connections.clamp(1, Semaphore::MAX_PERMITS);
    let connections = Arc::new(Semaphore::new(capacity));
    let refusal_lingers = Arc::new(Semaphore::new(REFUSAL_LINGERS));
    let refusal: Arc<[u8]> = ApiError::unavailable(
        "the node is at its connection limit",
        REFUSAL_RETRY_AFTER_MS,
    )
    .to_http1_close()
    .into();
    let mut builder = http1::Builder::new();
    builder
        .header_read_timeout(None)
        .max_header_size(settings.max_header_bytes)
        .max_buf_size(settings.buffer_bytes());
    if settings.max_headers != HYPER_DEFAULT_MAX_HEADERS {
        builder.max_headers(settings.max_headers);
    }
    let burst = Arc::new(BurstEnd::new(TRIM_AFTER_CONNECTIONS));
    let stop = drain.started();
    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    wait_after_accept_error(&error).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let Ok(slot) = connections.clone().try_acquire_owned() else {
            metrics.refused.inc();
            // A client that has not sent its request yet takes an answer
            // that comes first for a protocol error, and one whose request
            // is unread at the close loses it to the kernel's reset: while
            // at most REFUSAL_LINGERS refusals do, read the request head
            // first, answer, then linger as after a 408. Beyond them (a
            // flood), the bare answer and an immediate close must do.
            match refusal_lingers.clone().try_acquire_owned() {
                Ok(permit) => {
                    let builder = builder.clone();
                    tokio::spawn(async move {
                        refuse_after_the_head(stream, builder, settings).await;
                        drop(permit);
                    });
                }
                Err(_) => {
                    let _ = stream.try_write(&refusal);
                }
            }
            continue;
        };
        // Small JSON answers must not wait for Nagle's algorithm.
        let _ = stream.set_nodelay(true);
        let connection = Connection {
            peer,
            builder: builder.clone(),
            router: router.clone(),
            settings,
            metrics: metrics.clone(),
            drain: drain.clone(),
        };
        let burst = burst.clone();
        burst.acquired();
        tokio::spawn(async move {
            connection.serve(stream).await;
            drop(slot);
            if burst.released() {
                // A wave of closes takes a moment: trim once it has passed.
                tokio::time::sleep(TRIM_DELAY).await;
                let _ = tokio::task::spawn_blocking(heap::return_free_memory).await;
            }
        });
    }
    drop(listener);
    // Every slot back means every connection closed.
    let everything = u32::try_from(capacity).unwrap_or(u32::MAX);
    let _closed = connections.acquire_many(everything).await;
    Ok(())
}

/// Accept errors on one connection (it was reset before we took it) are
/// skipped; anything else — out of descriptors, most likely — would
/// repeat at once, so the loop pauses (as hyper's and axum's examples do)
/// and the kernel's backlog holds new connections meanwhile.
async fn wait_after_accept_error(error: &std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        error.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::warn!(%error, "cannot accept connections; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Everything one connection needs.
struct Connection<R> {
    /// The client's address, handed to handlers that limit per source
    /// (relay binds) as axum's `ConnectInfo`.
    peer: SocketAddr,
    builder: http1::Builder,
    router: R,
    settings: EdgeSettings,
    metrics: EdgeMetrics,
    drain: DrainSignal,
}

impl<R: Routes> Connection<R> {
    /// Serves requests until the client leaves, a deadline passes, or the
    /// drain closes the connection.
    async fn serve(self, stream: TcpStream) {
        let _open = OpenConnection::count(&self.metrics);
        let activity = Activity::new();
        let service = EdgeService {
            peer: ConnectInfo(self.peer),
            router: self.router,
            activity: activity.clone(),
            drain: self.drain.clone(),
            metrics: self.metrics.clone(),
        };
        let io = TokioIo::new(TrackedStream::new(stream, activity.clone()));
        let mut connection = self.builder.serve_connection(io, service);
        let expired = activity.expired(connection::Deadlines {
            header: self.settings.header_read_timeout,
            idle: self.settings.keep_alive_timeout,
            response_write: self.settings.response_write_timeout,
        });
        tokio::pin!(expired);
        let drain = self.drain.started();
        tokio::pin!(drain);
        let mut draining = false;
        let mut deadline_passed = None;
        loop {
            tokio::select! {
                // hyper is done (the client left, or the node answered and
                // ends the connection): keep the socket for a lingering close.
                _ = std::future::poll_fn(|cx| connection.poll_without_shutdown(cx)) => break,
                kind = &mut expired => {
                    deadline_passed = Some(kind);
                    break;
                }
                () = &mut drain, if !draining => {
                    draining = true;
                    Pin::new(&mut connection).graceful_shutdown();
                }
            }
        }
        if let Some(kind) = deadline_passed {
            self.metrics.timeout(kind.label()).inc();
            // Dropping the connection closes the socket and frees what the
            // slow client made the node hold (buffers, an unsent answer);
            // give that back to the kernel (throttled, so a flood of such
            // closes costs a few trims a second).
            drop(connection);
            heap::return_free_memory_in_background();
            return;
        }
        let stream = connection.into_parts().io.into_inner().into_inner();
        if !linger(stream, &self.settings).await {
            self.metrics.timeout("lingering_close").inc();
        }
    }
}

/// Answers a connection over the cap with the 503 envelope after reading
/// its request head (under the header deadline), closes it, and lingers so
/// the client reads the answer before any reset.
async fn refuse_after_the_head(
    stream: TcpStream,
    mut builder: http1::Builder,
    settings: EdgeSettings,
) {
    builder.keep_alive(false);
    let answer = hyper::service::service_fn(|_request: Request<Incoming>| async {
        let mut response = ApiError::unavailable(
            "the node is at its connection limit",
            REFUSAL_RETRY_AFTER_MS,
        )
        .into_response();
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        Ok::<_, Infallible>(response)
    });
    let served = builder
        .serve_connection(TokioIo::new(stream), answer)
        .without_shutdown();
    if let Ok(Ok(parts)) = tokio::time::timeout(settings.header_read_timeout, served).await {
        linger(parts.io.into_inner(), &settings).await;
    }
}

/// Sends FIN, then reads and discards until the client closes too, for at
/// most the settings' `lingering_close` and `lingering_close_max_bytes`;
/// false when either ran out.
async fn linger(mut stream: TcpStream, settings: &EdgeSettings) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if stream.shutdown().await.is_err() {
        return true;
    }
    let mut discard = [0u8; 4096];
    let mut budget = settings.lingering_close_max_bytes;
    let drained = tokio::time::timeout(settings.lingering_close, async {
        loop {
            match stream.read(&mut discard).await {
                Ok(0) | Err(_) => return true,
                Ok(n) => match budget.checked_sub(n as u64) {
                    Some(left) => budget = left,
                    None => return false,
                },
            }
        }
    })
    .await;
    drained.unwrap_or(false)
}

/// One open connection in `iicp_connections_open`, for as long as it lives.
struct OpenConnection(prometheus::IntGauge);

impl OpenConnection {
    fn count(metrics: &EdgeMetrics) -> Self {
        metrics.open.inc();
        Self(metrics.open.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The router behind a connection, with the drain rule in front and the
/// busy phase marked around each request.
#[derive(Clone)]
struct EdgeService<R> {
    peer: ConnectInfo<SocketAddr>,
    router: R,
    activity: Arc<Activity>,
    drain: DrainSignal,
    metrics: EdgeMetrics,
}

type EdgeResponse = Response<TrackedBody>;

impl<R: Routes> hyper::service::Service<Request<Incoming>> for EdgeService<R> {
    type Response = EdgeResponse;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<EdgeResponse, Infallible>> + Send>>;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        request.extensions_mut().insert(self.peer);
        let guard = self.activity.request_started();
        if self.drain.is_draining() {
            self.metrics.draining_refusals.inc();
            let response = draining_response().map(|body| TrackedBody::new(body, guard));
            return Box::pin(std::future::ready(Ok(response)));
        }
        let answer = self.router.clone().call(request);
        Box::pin(async move {
            let response = answer.await.unwrap_or_else(|never| match never {});
            Ok(response.map(|body| TrackedBody::new(body, guard)))
        })
    }
}

/// 503 `IICP-E024` for a request that arrived during the drain. It never
/// reaches the router, so it carries CORS's allow-origin itself.
fn draining_response() -> axum::response::Response {
    let mut response = ApiError::shutting_down(REFUSAL_RETRY_AFTER_MS).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    response
}
