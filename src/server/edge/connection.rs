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
//! Across phases, the **response write budget** bounds how long one
//! response may wait on a client that does not take it: the time the socket
//! refused more bytes (writes pending), summed from the request's head on.
//! A client that reads its answer at a trickle keeps the idle clock alive,
//! so without this budget it could hold a connection and its unsent answer
//! (up to the largest result) for as long as it likes.
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
    /// The client left a response unread for longer than its write budget.
    ResponseWrite,
}

impl Expired {
    /// The `kind` label of `iicp_connection_timeouts_total`.
    pub fn label(self) -> &'static str {
        match self {
            Expired::Header => "header",
            Expired::Idle => "idle",
            Expired::ResponseWrite => "response_write",
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
    /// Since when (ms since `opened`, plus one) the socket refuses the
    /// current write; zero while it does not.
    write_blocked_since: AtomicU64,
    /// How long the current response's writes were refused before that.
    write_blocked_ms: AtomicU64,
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
            write_blocked_since: AtomicU64::new(0),
            write_blocked_ms: AtomicU64::new(0),
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
        // A new response: its write budget starts afresh.
        self.write_blocked_ms.store(0, Ordering::Release);
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

    /// The socket refused (part of) a write.
    fn write_refused(&self) {
        let now = self.now_ms() + 1;
        if self
            .write_blocked_since
            .compare_exchange(0, now, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.changed.notify_one();
        }
    }

    /// The socket took a write (or failed it): a refusal spell, if any, is
    /// over and counts against the response's budget.
    fn write_taken(&self) {
        // Almost every write is taken at once: a load keeps that path free
        // of a read-modify-write.
        if self.write_blocked_since.load(Ordering::Acquire) == 0 {
            return;
        }
        let since = self.write_blocked_since.swap(0, Ordering::AcqRel);
        if since != 0 {
            let spell = (self.now_ms() + 1).saturating_sub(since);
            self.write_blocked_ms.fetch_add(spell, Ordering::AcqRel);
        }
    }

    /// When the current refusal spell uses up `budget`, if a write is
    /// refused now; with the spell's start, to recognise it later.
    fn write_deadline(&self, budget: Duration) -> Option<(Instant, u64)> {
        let since = self.write_blocked_since.load(Ordering::Acquire);
        if since == 0 {
            return None;
        }
        let spent = Duration::from_millis(self.write_blocked_ms.load(Ordering::Acquire));
        let left = budget.saturating_sub(spent);
        Some((self.opened + Duration::from_millis(since - 1) + left, since))
    }

    /// Resolves when a deadline passes: the head did not arrive within
    /// `limits.header`, an idle spell lasted `limits.idle`, or the current
    /// response's writes were refused for `limits.response_write` in all.
    pub async fn expired(&self, limits: Deadlines) -> Expired {
        loop {
            let (phase, since) = self.load();
            let phase_deadline = match phase {
                Phase::AwaitingHead => Some((limits.header, Expired::Header)),
                Phase::Idle => Some((limits.idle, Expired::Idle)),
                Phase::Busy => None,
            }
            .map(|(limit, expired)| (self.opened + Duration::from_millis(since) + limit, expired));
            let write_deadline = self.write_deadline(limits.response_write);
            let next = [
                phase_deadline.map(|(at, _)| at),
                write_deadline.map(|(at, _)| at),
            ]
            .into_iter()
            .flatten()
            .min();
            let Some(next) = next else {
                self.changed.notified().await;
                continue;
            };
            tokio::select! {
                () = tokio::time::sleep_until(next) => {
                    if let Some((write_at, blocked_since)) = write_deadline
                        && write_at <= Instant::now()
                        && self.write_blocked_since.load(Ordering::Acquire) == blocked_since
                    {
                        return Expired::ResponseWrite;
                    }
                    if let Some((at, expired)) = phase_deadline
                        && at <= Instant::now()
                        && self.load() == (phase, since)
                    {
                        return expired;
                    }
                }
                () = self.changed.notified() => {}
            }
        }
    }
}

/// The deadlines one connection's watchdog keeps.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    /// For a request head, from accept or its first byte.
    pub header: Duration,
    /// For an idle keep-alive connection.
    pub idle: Duration,
    /// For the time one response's writes may be refused, in all.
    pub response_write: Duration,
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

    fn note_write(&self, poll: &Poll<io::Result<usize>>) {
        match poll {
            Poll::Pending => self.activity.write_refused(),
            Poll::Ready(result) => {
                self.activity.write_taken();
                if matches!(result, Ok(n) if *n > 0) {
                    self.activity.bytes_written();
                }
            }
        }
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
        self.note_write(&poll);
        poll
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.note_write(&poll);
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

    // Tokio's paused clock: time moves only when every task waits, so a
    // busy machine cannot stretch one step past the next deadline (on the
    // real clock, a 200 ms stall between two steps broke these).
    const HEADER: Duration = Duration::from_millis(200);
    const IDLE: Duration = Duration::from_millis(400);
    const WRITE: Duration = Duration::from_millis(300);
    const LIMITS: Deadlines = Deadlines {
        header: HEADER,
        idle: IDLE,
        response_write: WRITE,
    };

    #[tokio::test(start_paused = true)]
    async fn a_head_that_never_arrives_expires_after_the_header_deadline() {
        let activity = Activity::new();
        let started = Instant::now();
        assert_eq!(activity.expired(LIMITS).await, Expired::Header);
        assert!(started.elapsed() >= HEADER);
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_connection_has_no_deadline_and_idles_after_its_request() {
        let activity = Activity::new();
        let request = activity.request_started();
        let watch = activity.expired(LIMITS);
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

    #[tokio::test(start_paused = true)]
    async fn a_byte_after_an_idle_spell_starts_the_head_clock() {
        let activity = Activity::new();
        drop(activity.request_started());
        tokio::time::sleep(IDLE / 2).await;
        activity.bytes_read();
        let head_from = Instant::now();
        assert_eq!(activity.expired(LIMITS).await, Expired::Header);
        assert!(head_from.elapsed() >= HEADER);
    }

    #[tokio::test(start_paused = true)]
    async fn refused_writes_add_up_to_the_response_write_budget() {
        let activity = Activity::new();
        let _request = activity.request_started();
        let watch = activity.expired(LIMITS);
        tokio::pin!(watch);
        // Two refusal spells of about half the budget each, separated by a
        // taken write: the budget is the sum, not each spell.
        let started = Instant::now();
        activity.write_refused();
        tokio::time::sleep(WRITE / 2).await;
        activity.write_taken();
        activity.write_refused();
        assert_eq!(watch.await, Expired::ResponseWrite);
        assert!(started.elapsed() >= WRITE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_request_gets_a_fresh_write_budget() {
        let activity = Activity::new();
        let first = activity.request_started();
        activity.write_refused();
        tokio::time::sleep(WRITE * 2 / 3).await;
        activity.write_taken();
        drop(first);
        let _second = activity.request_started();
        let watch = activity.expired(LIMITS);
        tokio::pin!(watch);
        let refused_from = Instant::now();
        activity.write_refused();
        assert_eq!(watch.await, Expired::ResponseWrite);
        assert!(refused_from.elapsed() >= WRITE);
    }
}
