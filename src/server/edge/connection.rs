//! One connection's deadlines. A connection is always in one phase:
//!
//! * **awaiting a request head** — from accept, or from the first byte after
//!   an idle spell, until hyper has parsed the head: bounded by
//!   `header_read_timeout`;
//! * **busy** — from the parsed head until the response body has been
//!   handed to hyper: no connection deadline (the task route bounds the
//!   request body itself, and the task its own run);
//! * **idle** — after a response, until the next request's first byte:
//!   bounded by `keep_alive_timeout`, restarted while the response is still
//!   being written, so a slow but live reader is not cut off while a client
//!   that stops reading its response is.
//!
//! hyper's own header timer is not used: it starts when a connection turns
//! idle, so it cannot tell an idle keep-alive connection from a slow head,
//! and it would close both without saying which. One watchdog per
//! connection does both, and names the deadline that fired.
//!
//! The phase and its start share one atomic word, so the watchdog never
//! pairs a new phase with an old start time.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

/// A connection phase (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitingHead = 0,
    Busy = 1,
    Idle = 2,
}

/// Which deadline closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// The request head did not arrive in time.
    Header,
    /// Nothing happened on an idle keep-alive connection.
    Idle,
}

impl Expired {
    /// The `kind` label of `iicp_connection_timeouts_total`.
    pub fn label(self) -> &'static str {
        match self {
            Expired::Header => "header",
            Expired::Idle => "idle",
        }
    }
}

/// The connection's phase, shared by its socket wrapper, its service, the
/// response bodies and its watchdog.
#[derive(Debug)]
pub struct Activity {
    opened: Instant,
    /// Phase in the top two bits, its start in ms since `opened` below.
    state: AtomicU64,
    changed: Notify,
}

const PHASE_SHIFT: u32 = 62;
const SINCE_MASK: u64 = (1 << PHASE_SHIFT) - 1;

impl Activity {
    /// A connection accepted now, awaiting its first request head.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            opened: Instant::now(),
            state: AtomicU64::new(pack(Phase::AwaitingHead, 0)),
            changed: Notify::new(),
        })
    }

    fn load(&self) -> (Phase, u64) {
        unpack(self.state.load(Ordering::Acquire))
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(SINCE_MASK) & SINCE_MASK
    }

    fn enter(&self, phase: Phase) {
        self.state
            .store(pack(phase, self.now_ms()), Ordering::Release);
        self.changed.notify_one();
    }

    /// hyper parsed a request head; the returned guard marks the end of the
    /// request when the response body is done (or the request is dropped).
    pub fn request_started(self: &Arc<Self>) -> RequestGuard {
        self.enter(Phase::Busy);
        RequestGuard(self.clone())
    }

    fn bytes_read(&self) {
        if self.load().0 == Phase::Idle {
            self.enter(Phase::AwaitingHead);
        }
    }

    fn bytes_written(&self) {
        // A response still draining to the client keeps the idle clock at
        // zero; the watchdog notices the new start when it wakes.
        if self.load().0 == Phase::Idle {
            self.state
                .store(pack(Phase::Idle, self.now_ms()), Ordering::Release);
        }
    }

    /// Resolves when a deadline passes: the head did not arrive within
    /// `header`, or an idle spell lasted `idle`.
    pub async fn expired(&self, header: Duration, idle: Duration) -> Expired {
        loop {
            let (phase, since) = self.load();
            let (limit, expired) = match phase {
                Phase::AwaitingHead => (header, Expired::Header),
                Phase::Idle => (idle, Expired::Idle),
                Phase::Busy => {
                    self.changed.notified().await;
                    continue;
                }
            };
            let deadline = self.opened + Duration::from_millis(since) + limit;
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => {
                    if self.load() == (phase, since) {
                        return expired;
                    }
                }
                () = self.changed.notified() => {}
            }
        }
    }
}

fn pack(phase: Phase, since_ms: u64) -> u64 {
    ((phase as u64) << PHASE_SHIFT) | (since_ms & SINCE_MASK)
}

fn unpack(word: u64) -> (Phase, u64) {
    let phase = match word >> PHASE_SHIFT {
        0 => Phase::AwaitingHead,
        1 => Phase::Busy,
        _ => Phase::Idle,
    };
    (phase, word & SINCE_MASK)
}

/// Held from a parsed request head until its response body is done.
#[derive(Debug)]
pub struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.enter(Phase::Idle);
    }
}

/// A response body that ends the request's busy phase when hyper is done
/// with it.
pub struct TrackedBody {
    inner: Body,
    _request: RequestGuard,
}

impl TrackedBody {
    /// `inner`, ending `request` when dropped.
    pub fn new(inner: Body, request: RequestGuard) -> Self {
        Self {
            inner,
            _request: request,
        }
    }
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The socket, telling the connection's [`Activity`] when bytes move.
pub struct TrackedStream {
    stream: TcpStream,
    activity: Arc<Activity>,
}

impl TrackedStream {
    /// Wraps an accepted socket.
    pub fn new(stream: TcpStream, activity: Arc<Activity>) -> Self {
        Self { stream, activity }
    }

    /// The socket again.
    pub fn into_inner(self) -> TcpStream {
        self.stream
    }
}

impl AsyncRead for TrackedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(poll, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.bytes_read();
        }
        poll
    }
}

impl AsyncWrite for TrackedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.stream).poll_write(cx, buf);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.bytes_written();
        }
        poll
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.bytes_written();
        }
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Real time, short limits: only lower bounds are asserted, which a
    // busy machine cannot break.
    const HEADER: Duration = Duration::from_millis(200);
    const IDLE: Duration = Duration::from_millis(400);

    #[tokio::test]
    async fn a_head_that_never_arrives_expires_after_the_header_deadline() {
        let activity = Activity::new();
        let started = Instant::now();
        assert_eq!(activity.expired(HEADER, IDLE).await, Expired::Header);
        assert!(started.elapsed() >= HEADER);
    }

    #[tokio::test]
    async fn a_busy_connection_has_no_deadline_and_idles_after_its_request() {
        let activity = Activity::new();
        let request = activity.request_started();
        let watch = activity.expired(HEADER, IDLE);
        tokio::pin!(watch);
        assert!(
            tokio::time::timeout(IDLE * 3, &mut watch).await.is_err(),
            "a busy connection expired"
        );
        drop(request);
        let idle_from = Instant::now();
        assert_eq!(watch.await, Expired::Idle);
        assert!(idle_from.elapsed() >= IDLE);
    }

    #[tokio::test]
    async fn a_byte_after_an_idle_spell_starts_the_head_clock() {
        let activity = Activity::new();
        drop(activity.request_started());
        tokio::time::sleep(IDLE / 2).await;
        activity.bytes_read();
        let head_from = Instant::now();
        assert_eq!(activity.expired(HEADER, IDLE).await, Expired::Header);
        assert!(head_from.elapsed() >= HEADER);
    }
}
