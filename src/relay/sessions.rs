//! The relay role's state: bound worker sessions, each with the tasks
//! waiting for it and the tasks it holds, and the rules that keep all of it
//! bounded (`protocol.md` §7.2, §7.3).
//!
//! Every task a consumer sends through the relay is one [`Call`]: its body
//! bytes are counted against the session's and the relay's byte budgets
//! from the moment it queues until it is answered, times out, or its
//! consumer goes away — the count returns itself on drop, like an admission
//! slot. A consumer's wait always ends: with the worker's answer, with 504
//! `task_timeout` at the task's budget (plus a grace for the worker's own
//! timeout answer), or with `IICP-E031` the moment the worker's session
//! ends (unbind, takeover by a restarted worker, liveness expiry, shutdown).
//!
//! A worker's result is bounded the same way while it is read: before its
//! body is read, the result's declared length (or `max_result_bytes` when it
//! declares none) is reserved against the session's and the relay's byte
//! budgets for results, and the session may have at most
//! `max_tasks_per_session` results being read at once (it cannot hold more
//! tasks than that to answer). A hostile worker posting many large results
//! at once therefore makes the relay hold at most `max_bytes_per_session`,
//! and all workers together `max_bytes_total`, of result bodies.
//!
//! A session is alive while its worker holds a pull open or pulled within
//! the liveness window; a reaper ends dead sessions, so nothing a vanished
//! worker held outlives the window. Session tokens are 256-bit random
//! values; the relay keeps only their SHA-256 and finds a session by that
//! digest, comparing it in constant time. Who may bind under a worker id
//! when no alive session holds it is the rule of [`super::pins`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::{Notify, oneshot};

use super::bind_limit::BindLimiter;
use super::pins::{PinCheck, Pins};
use super::settings::RelaySettings;
use super::ticket::{TicketRefusal, TicketVerifier};
use super::wire::BindRequest;
use crate::clock::now_unix_ms;
use crate::directory::identity::{random_secret, valid_node_id};
use crate::relay::metrics::RelayMetrics;

/// Why a session ended; the consumers it held are told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// The worker unbound.
    Unbound,
    /// The same worker bound again (it restarted) and took over.
    Replaced,
    /// The worker stopped pulling for the liveness window.
    Silent,
    /// The relay is shutting down.
    RelayStopping,
    /// The worker's framed connection closed, failed or fell silent.
    Disconnected,
}

impl EndReason {
    /// For messages and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Unbound => "the worker unbound",
            EndReason::Replaced => "the worker restarted and bound again",
            EndReason::Silent => "the worker stopped pulling",
            EndReason::RelayStopping => "the relay is shutting down",
            EndReason::Disconnected => "the worker's connection closed",
        }
    }
}

/// How a consumer's wait ends.
#[derive(Debug)]
pub enum Answer {
    /// The worker answered.
    Result {
        /// HTTP status.
        status: StatusCode,
        /// Response body (JSON).
        body: Bytes,
        /// Headers to pass on.
        headers: HeaderMap,
    },
    /// The worker answered something that cannot be passed on.
    Failed(crate::protocol::ApiError),
    /// The worker's session ended before it answered.
    Ended(EndReason),
    /// The task's budget ran out while it still waited for a pull.
    Expired,
}

/// Bytes held for one call, returned to the session and relay on drop.
struct HeldBytes {
    len: usize,
    session: Arc<AtomicUsize>,
    relay: Arc<AtomicUsize>,
    gauge: prometheus::IntGauge,
}

impl Drop for HeldBytes {
    fn drop(&mut self) {
        self.session.fetch_sub(self.len, Ordering::Relaxed);
        let total = self.relay.fetch_sub(self.len, Ordering::Relaxed) - self.len;
        self.gauge.set(total as i64);
    }
}

/// Result bytes (and one result read) reserved for a worker's result post
/// while it is read; returned on drop.
pub struct ResultReservation {
    _bytes: HeldBytes,
    reads: Arc<AtomicU32>,
}

impl Drop for ResultReservation {
    fn drop(&mut self) {
        self.reads.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A consumer's task as the relay received it.
pub struct CallSpec {
    /// Names the answer (unique per relay).
    pub call_id: String,
    /// The consumer's `task_id`.
    pub task_id: String,
    /// The consumer's body, untouched.
    pub task: Bytes,
    /// The consumer's forwarded headers.
    pub headers: BTreeMap<String, String>,
    /// When the relay received it.
    pub received: Instant,
    /// When its budget ends.
    pub deadline: Instant,
}

/// One task on its way through the relay.
struct Call {
    call_id: String,
    task_id: String,
    task: Bytes,
    headers: BTreeMap<String, String>,
    received: Instant,
    deadline: Instant,
    reply: oneshot::Sender<Answer>,
    _held: HeldBytes,
}

impl Call {
    fn answer(self, answer: Answer) {
        let _ = self.reply.send(answer);
    }
}

/// What a consumer waits on: the answer, and a guard that withdraws the
/// call if the consumer stops waiting first.
pub struct Pending {
    /// Resolves with the answer; an error means the call was dropped.
    pub answer: oneshot::Receiver<Answer>,
    /// Withdraws the call on drop (a no-op once it was answered).
    pub withdraw: Withdraw,
}

/// Removes an unanswered call from its session when dropped.
pub struct Withdraw {
    session: Arc<Session>,
    call_id: String,
    metrics: Arc<RelayMetrics>,
}

impl Drop for Withdraw {
    fn drop(&mut self) {
        self.session.withdraw(&self.call_id, &self.metrics);
    }
}

#[derive(Default)]
struct Held {
    queue: VecDeque<Call>,
    in_flight: HashMap<String, Call>,
    ended: Option<EndReason>,
}

/// One bound worker.
pub struct Session {
    /// The worker's node id.
    pub worker_id: String,
    /// Its models, for the relay-for health route.
    pub models: Vec<String>,
    token_digest: [u8; 32],
    rebind_digest: Option<[u8; 32]>,
    held: Mutex<Held>,
    held_bytes: Arc<AtomicUsize>,
    result_bytes: Arc<AtomicUsize>,
    result_reads: Arc<AtomicU32>,
    wake: Notify,
    pulls: AtomicU32,
    /// When the last pull ended, ms since the Unix epoch.
    last_pull_ms: std::sync::atomic::AtomicU64,
}

impl Session {
    fn lock(&self) -> MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the worker holds a pull or pulled within `liveness`.
    pub fn is_alive(&self, liveness: Duration) -> bool {
        if self.lock().ended.is_some() {
            return false;
        }
        self.pulls.load(Ordering::Relaxed) > 0
            || now_unix_ms().saturating_sub(self.last_pull_ms.load(Ordering::Relaxed))
                < liveness.as_millis() as u64
    }

    /// Tasks waiting for a pull.
    pub fn queued(&self) -> usize {
        self.lock().queue.len()
    }

    /// Tasks handed to the worker and not yet answered or withdrawn.
    pub fn in_flight(&self) -> usize {
        self.lock().in_flight.len()
    }

    fn withdraw(&self, call_id: &str, metrics: &RelayMetrics) {
        let mut held = self.lock();
        if let Some(index) = held.queue.iter().position(|c| c.call_id == call_id) {
            held.queue.remove(index);
            metrics.tasks_queued.dec();
        } else if held.in_flight.remove(call_id).is_some() {
            metrics.tasks_in_flight.dec();
        }
    }

    /// The next task for the worker, moved to its held set; tasks whose
    /// budget already ran out are answered 504 on the way.
    pub fn take_next(&self, metrics: &RelayMetrics) -> Option<(String, Bytes, PullMeta)> {
        let now = Instant::now();
        let mut held = self.lock();
        while let Some(call) = held.queue.pop_front() {
            metrics.tasks_queued.dec();
            if call.deadline <= now {
                call.answer(Answer::Expired);
                continue;
            }
            let meta = PullMeta {
                elapsed: now.duration_since(call.received),
                headers: call.headers.clone(),
            };
            let id = call.call_id.clone();
            let task = call.task.clone();
            held.in_flight.insert(id.clone(), call);
            metrics.tasks_in_flight.inc();
            return Some((id, task, meta));
        }
        None
    }

    /// Puts a handed-out call back at the head of the queue (its pull
    /// answer could not be sent); a no-op when it was answered meanwhile.
    pub fn requeue(&self, call_id: &str, metrics: &RelayMetrics) {
        let mut held = self.lock();
        if let Some(call) = held.in_flight.remove(call_id) {
            metrics.tasks_in_flight.dec();
            held.queue.push_front(call);
            metrics.tasks_queued.inc();
        }
    }

    /// Delivers the worker's answer to `call_id`; false when nobody waits
    /// for it any more (answered late, or never handed out).
    pub fn deliver(&self, call_id: &str, answer: Answer, metrics: &RelayMetrics) -> bool {
        let Some(call) = self.lock().in_flight.remove(call_id) else {
            return false;
        };
        metrics.tasks_in_flight.dec();
        call.answer(answer);
        true
    }

    /// The task id of a held call (a reference worker's answer is merged
    /// into an envelope that names it).
    pub fn task_id_of(&self, call_id: &str) -> Option<String> {
        self.lock()
            .in_flight
            .get(call_id)
            .map(|c| c.task_id.clone())
    }

    /// Ends the session: every waiting consumer is answered at once.
    fn end(&self, reason: EndReason, metrics: &RelayMetrics) {
        let (queued, in_flight) = {
            let mut held = self.lock();
            if held.ended.is_some() {
                return;
            }
            held.ended = Some(reason);
            (
                std::mem::take(&mut held.queue),
                std::mem::take(&mut held.in_flight),
            )
        };
        metrics.tasks_queued.sub(queued.len() as i64);
        metrics.tasks_in_flight.sub(in_flight.len() as i64);
        for call in queued.into_iter().chain(in_flight.into_values()) {
            call.answer(Answer::Ended(reason));
        }
        self.wake.notify_waiters();
    }

    /// Why the session ended, if it did.
    pub fn ended(&self) -> Option<EndReason> {
        self.lock().ended
    }

    /// Waits until a task may be queued, the session ends, or `until`.
    pub async fn wait_for_task(&self, until: tokio::time::Instant) {
        let notified = self.wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        {
            let held = self.lock();
            if held.ended.is_some() || !held.queue.is_empty() {
                return;
            }
        }
        tokio::select! {
            () = notified => {}
            () = tokio::time::sleep_until(until) => {}
        }
    }

    /// Counts an open pull; the guard stamps the pull's end.
    pub fn open_pull(self: &Arc<Self>, max: u32) -> Option<PullGuard> {
        let open = self.pulls.fetch_add(1, Ordering::AcqRel);
        let guard = PullGuard {
            session: self.clone(),
        };
        (open < max).then_some(guard)
    }
}

/// What a pulled task carries besides its body.
pub struct PullMeta {
    /// Time the task spent at the relay before this pull.
    pub elapsed: Duration,
    /// The consumer's forwarded headers.
    pub headers: BTreeMap<String, String>,
}

/// An open pull; on drop it is closed and stamped.
pub struct PullGuard {
    session: Arc<Session>,
}

impl Drop for PullGuard {
    fn drop(&mut self) {
        self.session
            .last_pull_ms
            .store(now_unix_ms(), Ordering::Relaxed);
        self.session.pulls.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why a bind was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindRefusal {
    /// `worker_id`, intent or models malformed.
    Malformed,
    /// A ticket is required and none came.
    TicketRequired,
    /// The ticket is not valid for this worker and relay.
    TicketInvalid,
    /// The ticket was used before.
    TicketReplayed,
    /// An alive session holds this worker id.
    Alive,
    /// The id is pinned to another rebind key and no valid ticket came.
    PinMismatch,
    /// Neither a rebind key nor a ticket came, and the relay refuses that.
    KeyRequired,
    /// The table of pinned worker ids is full.
    PinsFull,
    /// Too many binds from this source.
    RateLimited,
    /// The relay holds its maximum of sessions (or of spent tickets).
    AtCapacity,
    /// The relay is shutting down.
    Stopping,
}

impl BindRefusal {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            BindRefusal::Malformed => "bind_malformed",
            BindRefusal::TicketRequired => "ticket_required",
            BindRefusal::TicketInvalid => "ticket_invalid",
            BindRefusal::TicketReplayed => "ticket_replayed",
            BindRefusal::Alive => "alive_rebind",
            BindRefusal::PinMismatch => "pin_mismatch",
            BindRefusal::KeyRequired => "key_required",
            BindRefusal::PinsFull => "pins_full",
            BindRefusal::RateLimited => "bind_rate_limited",
            BindRefusal::AtCapacity => "at_capacity",
            BindRefusal::Stopping => "stopping",
        }
    }
}

/// A successful bind.
pub struct Bound {
    /// The bearer token for pull, result, unbind (shown once).
    pub token: String,
    /// Whether it replaced an earlier session of the same worker.
    pub replaced: bool,
    /// Whether the pins changed, so the pins file needs writing.
    pub pins_changed: bool,
}

/// Why a task could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueRefusal {
    /// The worker's task or byte budget is used up.
    SessionFull,
    /// The relay's byte budget is used up.
    RelayFull,
    /// The session ended meanwhile.
    Ended,
}

/// Why a result cannot be read now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultRefusal {
    /// The worker has `max_tasks_per_session` results being read already.
    TooManyReads,
    /// The worker's or the relay's result byte budget is used up.
    BytesFull,
}

#[derive(Default)]
struct Table {
    by_worker: HashMap<String, Arc<Session>>,
    by_token: HashMap<[u8; 32], Arc<Session>>,
}

/// The relay role.
pub struct Relay {
    /// Its settings.
    pub settings: RelaySettings,
    table: Mutex<Table>,
    held_bytes: Arc<AtomicUsize>,
    result_bytes: Arc<AtomicUsize>,
    binds: BindLimiter,
    tickets: Option<TicketVerifier>,
    pins: Pins,
    stopping: AtomicBool,
    /// Its metrics.
    pub metrics: Arc<RelayMetrics>,
}

fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

impl Relay {
    /// A relay for node `node_id` (the audience of bind tickets), keeping
    /// its worker pins in `pins_file` (in memory only without one).
    pub fn new(
        settings: RelaySettings,
        node_id: &str,
        pins_file: Option<std::path::PathBuf>,
        metrics: Arc<RelayMetrics>,
    ) -> Result<Self, String> {
        let tickets = settings
            .bind_ticket_key
            .as_deref()
            .map(|key| TicketVerifier::new(key, node_id, settings.max_ticket_ids as usize))
            .transpose()?;
        let pins = Pins::load(
            settings.max_pinned_workers as usize,
            i64::from(settings.pin_expiry_days) * 86_400,
            pins_file,
            (now_unix_ms() / 1000) as i64,
            metrics.pinned_workers.clone(),
        )?;
        Ok(Self {
            pins,
            binds: BindLimiter::new(
                settings.bind_rate_limit,
                settings.bind_rate_sources as usize,
            ),
            settings,
            table: Mutex::new(Table::default()),
            held_bytes: Arc::new(AtomicUsize::new(0)),
            result_bytes: Arc::new(AtomicUsize::new(0)),
            tickets,
            stopping: AtomicBool::new(false),
            metrics,
        })
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Binds `request` from `source` (`protocol.md` §7.2–7.4).
    pub fn bind(&self, request: &BindRequest, source: IpAddr) -> Result<Bound, BindRefusal> {
        if self.stopping.load(Ordering::Relaxed) {
            return Err(BindRefusal::Stopping);
        }
        if !valid_node_id(&request.worker_id)
            || request.intent.len() > super::wire::MAX_NAME_BYTES
            || request.models.len() > super::wire::MAX_MODELS
            || request
                .models
                .iter()
                .any(|m| m.is_empty() || m.len() > super::wire::MAX_NAME_BYTES)
            || request.rebind_key.as_ref().is_some_and(|k| k.len() > 256)
        {
            return Err(BindRefusal::Malformed);
        }
        let now_s = (now_unix_ms() / 1000) as i64;
        let ticket = match (&self.tickets, request.bind_ticket.as_deref()) {
            (Some(verifier), Some(ticket)) if !ticket.is_empty() => Some(
                verifier
                    .verify(ticket, &request.worker_id, now_s)
                    .ok_or(BindRefusal::TicketInvalid)?,
            ),
            _ if self.settings.require_bind_ticket => return Err(BindRefusal::TicketRequired),
            _ => None,
        };
        let key_digest = request
            .rebind_key
            .as_deref()
            .filter(|key| !key.is_empty())
            .map(digest);
        let liveness = self.settings.liveness();
        let mut table = self.table();
        let existing = table.by_worker.get(&request.worker_id).cloned();
        if let Some(existing) = &existing
            && existing.is_alive(liveness)
        {
            let proven = match (&existing.rebind_digest, &key_digest) {
                (Some(stored), Some(key)) => bool::from(stored.ct_eq(key)),
                _ => false,
            };
            if !proven {
                return Err(BindRefusal::Alive);
            }
        }
        // Who may bind under this id when no alive session holds it
        // (`pins`): the pinned key's holder, or a ticket's.
        match self
            .pins
            .check(&request.worker_id, key_digest.as_ref(), now_s)
        {
            PinCheck::Mismatch if ticket.is_none() => return Err(BindRefusal::PinMismatch),
            PinCheck::Unpinned
                if key_digest.is_none()
                    && ticket.is_none()
                    && self.settings.refuse_keyless_binds =>
            {
                return Err(BindRefusal::KeyRequired);
            }
            _ => {}
        }
        if key_digest.is_some() && !self.pins.has_room(&request.worker_id, now_s) {
            return Err(BindRefusal::PinsFull);
        }
        // Recovering a worker the relay knows is exempt from the rate
        // limit and the cap (§7.3): a reconnect must not lock itself out.
        if existing.is_none() {
            if !self.binds.allow(source, Instant::now()) {
                return Err(BindRefusal::RateLimited);
            }
            if table.by_worker.len() >= self.settings.max_sessions as usize {
                return Err(BindRefusal::AtCapacity);
            }
        }
        if let (Some(verifier), Some(claims)) = (&self.tickets, &ticket) {
            verifier
                .spend(claims, now_s)
                .map_err(|refusal| match refusal {
                    TicketRefusal::Replayed | TicketRefusal::Invalid => BindRefusal::TicketReplayed,
                    TicketRefusal::TableFull => BindRefusal::AtCapacity,
                })?;
        }
        let pins_changed = match key_digest {
            Some(key) => self
                .pins
                .pin(&request.worker_id, key, now_s)
                .map_err(|_| BindRefusal::PinsFull)?,
            None => false,
        };
        let token = random_secret();
        let session = Arc::new(Session {
            worker_id: request.worker_id.clone(),
            models: request.models.clone(),
            token_digest: digest(&token),
            rebind_digest: key_digest,
            held: Mutex::new(Held::default()),
            held_bytes: Arc::new(AtomicUsize::new(0)),
            result_bytes: Arc::new(AtomicUsize::new(0)),
            result_reads: Arc::new(AtomicU32::new(0)),
            wake: Notify::new(),
            pulls: AtomicU32::new(0),
            last_pull_ms: now_unix_ms().into(),
        });
        let replaced = existing.is_some();
        if let Some(old) = existing {
            table.by_token.remove(&old.token_digest);
            old.end(EndReason::Replaced, &self.metrics);
        }
        table
            .by_worker
            .insert(session.worker_id.clone(), session.clone());
        table.by_token.insert(session.token_digest, session);
        self.metrics.sessions.set(table.by_worker.len() as i64);
        Ok(Bound {
            token,
            replaced,
            pins_changed,
        })
    }

    /// Writes the pins file (blocking: call it off the async runtime).
    pub fn save_pins(&self) -> std::io::Result<()> {
        self.pins.save()
    }

    /// The session a bearer token belongs to.
    pub fn session_by_token(&self, token: &str) -> Option<Arc<Session>> {
        if token.is_empty() || token.len() > 256 {
            return None;
        }
        let wanted = digest(token);
        let session = self.table().by_token.get(&wanted).cloned()?;
        bool::from(session.token_digest.ct_eq(&wanted)).then_some(session)
    }

    /// The alive session of `worker_id`.
    pub fn alive_session(&self, worker_id: &str) -> Option<Arc<Session>> {
        let session = self.table().by_worker.get(worker_id).cloned()?;
        session
            .is_alive(self.settings.liveness())
            .then_some(session)
    }

    /// Ends `session` (unbind) and forgets it.
    pub fn unbind(&self, session: &Arc<Session>) {
        self.forget(session, EndReason::Unbound);
    }

    /// Ends `session` because its framed connection is gone (a no-op when
    /// it ended already, e.g. replaced by the worker's new bind).
    pub fn disconnected(&self, session: &Arc<Session>) {
        self.forget(session, EndReason::Disconnected);
    }

    fn forget(&self, session: &Arc<Session>, reason: EndReason) {
        {
            let mut table = self.table();
            if table
                .by_worker
                .get(&session.worker_id)
                .is_some_and(|current| Arc::ptr_eq(current, session))
            {
                table.by_worker.remove(&session.worker_id);
            }
            table.by_token.remove(&session.token_digest);
            self.metrics.sessions.set(table.by_worker.len() as i64);
        }
        session.end(reason, &self.metrics);
    }

    /// Queues a consumer's task for `session`.
    pub fn enqueue(&self, session: &Arc<Session>, spec: CallSpec) -> Result<Pending, QueueRefusal> {
        let len = spec.task.len() + spec.headers.values().map(String::len).sum::<usize>();
        let total = self.held_bytes.fetch_add(len, Ordering::Relaxed) + len;
        let session_total = session.held_bytes.fetch_add(len, Ordering::Relaxed) + len;
        self.metrics.held_bytes.set(total as i64);
        let held = HeldBytes {
            len,
            session: session.held_bytes.clone(),
            relay: self.held_bytes.clone(),
            gauge: self.metrics.held_bytes.clone(),
        };
        if total > self.settings.max_bytes_total {
            return Err(QueueRefusal::RelayFull);
        }
        if session_total > self.settings.max_bytes_per_session {
            return Err(QueueRefusal::SessionFull);
        }
        let (reply, answer) = oneshot::channel();
        {
            let mut state = session.lock();
            if state.ended.is_some() {
                return Err(QueueRefusal::Ended);
            }
            if state.queue.len() + state.in_flight.len()
                >= self.settings.max_tasks_per_session as usize
            {
                return Err(QueueRefusal::SessionFull);
            }
            state.queue.push_back(Call {
                call_id: spec.call_id.clone(),
                task_id: spec.task_id,
                task: spec.task,
                headers: spec.headers,
                received: spec.received,
                deadline: spec.deadline,
                reply,
                _held: held,
            });
        }
        self.metrics.tasks_queued.inc();
        session.wake.notify_one();
        Ok(Pending {
            answer,
            withdraw: Withdraw {
                session: session.clone(),
                call_id: spec.call_id,
                metrics: self.metrics.clone(),
            },
        })
    }

    /// Reserves what reading one result of `len` bytes for `session` holds.
    pub fn reserve_result(
        &self,
        session: &Session,
        len: usize,
    ) -> Result<ResultReservation, ResultRefusal> {
        let reads = session.result_reads.fetch_add(1, Ordering::AcqRel) + 1;
        let total = self.result_bytes.fetch_add(len, Ordering::Relaxed) + len;
        let session_total = session.result_bytes.fetch_add(len, Ordering::Relaxed) + len;
        self.metrics.result_bytes.set(total as i64);
        let reservation = ResultReservation {
            _bytes: HeldBytes {
                len,
                session: session.result_bytes.clone(),
                relay: self.result_bytes.clone(),
                gauge: self.metrics.result_bytes.clone(),
            },
            reads: session.result_reads.clone(),
        };
        if reads > self.settings.max_tasks_per_session {
            return Err(ResultRefusal::TooManyReads);
        }
        if total > self.settings.max_bytes_total
            || session_total > self.settings.max_bytes_per_session
        {
            return Err(ResultRefusal::BytesFull);
        }
        Ok(reservation)
    }

    /// Ends every session that fell silent; returns how many.
    pub fn reap(&self) -> usize {
        let liveness = self.settings.liveness();
        let dead: Vec<Arc<Session>> = self
            .table()
            .by_worker
            .values()
            .filter(|s| !s.is_alive(liveness))
            .cloned()
            .collect();
        for session in &dead {
            tracing::info!(worker_id = %session.worker_id, "relay session expired: the worker stopped pulling");
            self.forget(session, EndReason::Silent);
        }
        dead.len()
    }

    /// Keeps the pins of bound workers from expiring while they stay bound
    /// (a pin's time is otherwise only its last bind); returns whether the
    /// pins file needs writing.
    pub fn refresh_pins(&self) -> bool {
        let now_s = (now_unix_ms() / 1000) as i64;
        let keyed: Vec<(String, [u8; 32])> = self
            .table()
            .by_worker
            .values()
            .filter_map(|s| Some((s.worker_id.clone(), s.rebind_digest?)))
            .collect();
        keyed.iter().fold(false, |changed, (id, key)| {
            self.pins.refresh(id, key, now_s) || changed
        })
    }

    /// Refuses new binds and ends every session (shutdown).
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        let all: Vec<Arc<Session>> = self.table().by_worker.values().cloned().collect();
        for session in &all {
            self.forget(session, EndReason::RelayStopping);
        }
    }

    /// Whether [`Relay::stop`] was called.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// Bound sessions.
    pub fn session_count(&self) -> usize {
        self.table().by_worker.len()
    }
}

/// How often the pins of bound workers are refreshed.
const PIN_REFRESH_PERIOD: Duration = Duration::from_secs(3600);

/// Ends silent sessions every `period` until the relay stops, and hourly
/// refreshes the pins of the workers still bound.
pub async fn reap_silent_sessions(relay: Arc<Relay>, period: Duration) {
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut refreshed = Instant::now();
    while !relay.is_stopping() {
        ticks.tick().await;
        relay.reap();
        if refreshed.elapsed() >= PIN_REFRESH_PERIOD {
            refreshed = Instant::now();
            if relay.refresh_pins() {
                let saving = relay.clone();
                if let Ok(Err(error)) =
                    tokio::task::spawn_blocking(move || saving.save_pins()).await
                {
                    tracing::error!(%error, "cannot write the relay's pins file");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    fn relay(settings: RelaySettings) -> Relay {
        Relay::new(
            settings,
            "relay-1",
            None,
            Metrics::new().part::<RelayMetrics>(),
        )
        .unwrap()
    }

    fn bind_request(worker_id: &str, rebind_key: Option<&str>) -> BindRequest {
        BindRequest {
            worker_id: worker_id.into(),
            intent: String::new(),
            models: vec![],
            bind_ticket: None,
            rebind_key: rebind_key.map(str::to_string),
        }
    }

    fn spec(call_id: &str, task: Bytes, received: Instant, deadline: Instant) -> CallSpec {
        CallSpec {
            call_id: call_id.into(),
            task_id: format!("t-{call_id}"),
            task,
            headers: BTreeMap::new(),
            received,
            deadline,
        }
    }

    const SOURCE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[tokio::test]
    async fn a_session_ends_with_every_waiting_consumer_answered() {
        let relay = relay(RelaySettings::default());
        let bound = relay.bind(&bind_request("w-1", Some("k")), SOURCE).unwrap();
        let session = relay.session_by_token(&bound.token).unwrap();
        assert!(relay.session_by_token("wrong").is_none());
        let now = Instant::now();
        let later = now + Duration::from_secs(60);
        let first = relay
            .enqueue(&session, spec("c1", Bytes::from_static(b"{}"), now, later))
            .unwrap();
        let second = relay
            .enqueue(&session, spec("c2", Bytes::from_static(b"{}"), now, later))
            .unwrap();
        let (taken, _, _) = session.take_next(&relay.metrics).unwrap();
        assert_eq!(taken, "c1");
        assert_eq!(relay.held_bytes.load(Ordering::Relaxed), 4);
        // Same worker, same rebind key: takes over; both calls are answered.
        let again = relay.bind(&bind_request("w-1", Some("k")), SOURCE).unwrap();
        assert!(again.replaced);
        for pending in [first, second] {
            assert!(matches!(
                pending.answer.await,
                Ok(Answer::Ended(EndReason::Replaced))
            ));
        }
        assert_eq!(relay.held_bytes.load(Ordering::Relaxed), 0);
        assert!(relay.session_by_token(&bound.token).is_none());
        assert_eq!(relay.metrics.tasks_queued.get(), 0);
        assert_eq!(relay.metrics.tasks_in_flight.get(), 0);
    }

    #[tokio::test]
    async fn alive_sessions_are_not_displaced_without_the_key_and_caps_hold() {
        let relay = relay(RelaySettings {
            max_sessions: 1,
            max_tasks_per_session: 1,
            ..RelaySettings::default()
        });
        let bound = relay.bind(&bind_request("w-1", Some("k")), SOURCE).unwrap();
        assert_eq!(
            relay.bind(&bind_request("w-1", None), SOURCE).err(),
            Some(BindRefusal::Alive)
        );
        assert_eq!(
            relay
                .bind(&bind_request("w-1", Some("other")), SOURCE)
                .err(),
            Some(BindRefusal::Alive)
        );
        assert_eq!(
            relay.bind(&bind_request("w-2", None), SOURCE).err(),
            Some(BindRefusal::AtCapacity)
        );
        assert_eq!(
            relay.bind(&bind_request("not valid!", None), SOURCE).err(),
            Some(BindRefusal::Malformed)
        );
        let session = relay.session_by_token(&bound.token).unwrap();
        let now = Instant::now();
        let pending = relay
            .enqueue(&session, spec("c1", Bytes::from_static(b"{}"), now, now))
            .unwrap();
        assert_eq!(
            relay
                .enqueue(&session, spec("c2", Bytes::new(), now, now))
                .err(),
            Some(QueueRefusal::SessionFull)
        );
        // Its budget is over: the pull answers it 504 and hands out nothing.
        assert!(session.take_next(&relay.metrics).is_none());
        assert!(matches!(pending.answer.await, Ok(Answer::Expired)));
        drop(pending.withdraw);
        relay.stop();
        assert_eq!(relay.session_count(), 0);
        assert_eq!(
            relay.bind(&bind_request("w-3", None), SOURCE).err(),
            Some(BindRefusal::Stopping)
        );
    }

    #[test]
    fn results_being_read_are_bounded_per_worker_and_relay() {
        let relay = relay(RelaySettings {
            max_tasks_per_session: 2,
            max_bytes_per_session: 1024,
            max_bytes_total: 1536,
            ..RelaySettings::default()
        });
        let bind = |id: &str| {
            let bound = relay.bind(&bind_request(id, None), SOURCE).unwrap();
            relay.session_by_token(&bound.token).unwrap()
        };
        let (w1, w2) = (bind("w-1"), bind("w-2"));
        let first = relay.reserve_result(&w1, 600).unwrap();
        assert_eq!(
            relay.reserve_result(&w1, 600).err(),
            Some(ResultRefusal::BytesFull),
            "over the worker's budget"
        );
        let second = relay.reserve_result(&w1, 10).unwrap();
        assert_eq!(
            relay.reserve_result(&w1, 0).err(),
            Some(ResultRefusal::TooManyReads)
        );
        let other = relay.reserve_result(&w2, 900).unwrap();
        assert_eq!(
            relay.reserve_result(&w2, 100).err(),
            Some(ResultRefusal::BytesFull),
            "over the relay's budget"
        );
        assert_eq!(relay.metrics.result_bytes.get(), 1510);
        drop((first, second, other));
        assert_eq!(relay.result_bytes.load(Ordering::Relaxed), 0);
        assert_eq!(relay.metrics.result_bytes.get(), 0);
        assert!(relay.reserve_result(&w1, 1024).is_ok());
    }

    #[test]
    fn a_pinned_id_needs_its_key_or_a_ticket_which_re_pins_it() {
        use super::super::ticket::tests::sign;
        let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
        let relay = relay(RelaySettings {
            bind_ticket_key: Some(hex::encode(key.verifying_key().to_bytes())),
            ..RelaySettings::default()
        });
        let bound = relay.bind(&bind_request("w-1", Some("k")), SOURCE).unwrap();
        assert!(bound.pins_changed);
        relay.unbind(&relay.session_by_token(&bound.token).unwrap());
        for stranger in [None, Some(""), Some("other")] {
            assert_eq!(
                relay.bind(&bind_request("w-1", stranger), SOURCE).err(),
                Some(BindRefusal::PinMismatch)
            );
        }
        let again = relay.bind(&bind_request("w-1", Some("k")), SOURCE).unwrap();
        assert!(!again.pins_changed, "nothing new to write");
        relay.unbind(&relay.session_by_token(&again.token).unwrap());
        // The worker lost its key: its directory's ticket proves the id.
        let exp = (now_unix_ms() / 1000) as i64 + 60;
        let mut lost = bind_request("w-1", Some("new"));
        lost.bind_ticket = Some(sign(&key, "w-1", "relay-1", &"a".repeat(32), exp));
        let recovered = relay.bind(&lost, SOURCE).unwrap();
        assert!(recovered.pins_changed);
        relay.unbind(&relay.session_by_token(&recovered.token).unwrap());
        assert_eq!(
            relay.bind(&bind_request("w-1", Some("k")), SOURCE).err(),
            Some(BindRefusal::PinMismatch),
            "the old key no longer proves the id"
        );
        assert!(
            relay
                .bind(&bind_request("w-1", Some("new")), SOURCE)
                .is_ok()
        );
        assert_eq!(relay.metrics.pinned_workers.get(), 1);
    }

    #[tokio::test]
    async fn a_consumer_that_leaves_frees_its_bytes() {
        let relay = relay(RelaySettings {
            max_bytes_per_session: 1024,
            max_bytes_total: 1024,
            ..RelaySettings::default()
        });
        let bound = relay.bind(&bind_request("w-1", None), SOURCE).unwrap();
        let session = relay.session_by_token(&bound.token).unwrap();
        let now = Instant::now();
        let big = Bytes::from(vec![b' '; 800]);
        let later = now + Duration::from_secs(60);
        let pending = relay
            .enqueue(&session, spec("c1", big.clone(), now, later))
            .unwrap();
        assert_eq!(
            relay
                .enqueue(&session, spec("c2", big.clone(), now, later))
                .err(),
            Some(QueueRefusal::RelayFull)
        );
        drop(pending);
        assert_eq!(relay.held_bytes.load(Ordering::Relaxed), 0);
        assert_eq!(session.queued(), 0);
        assert!(relay.enqueue(&session, spec("c3", big, now, later)).is_ok());
    }
}
