//! The relay role's native IICP accept port (`protocol.md` §13): where the
//! reference's workers (Rust and Python `relay_worker_client`) bind over
//! the framing of [`super::framing`]. A framed worker is one more
//! transport of a session in [`super::sessions`]: the same bind rules
//! (rebind-key pins, tickets, keyless policy, per-source limit, session
//! cap), the same queue, byte budgets, timeouts, metrics and protocol
//! errors, and consumers reach it at the same `/v1/relay-for/{worker_id}`.
//!
//! The reference also sniffs `IICP` on its HTTP port, but what it serves
//! there is its direct native task transport, not relay binds (its
//! `node.rs` #457); relay binds come only to the accept port, so that is
//! all this listener serves.
//!
//! One connection, one session, two tasks:
//! * the **reader** waits at most the liveness window for each frame (the
//!   reference worker pings every 30 s), reads a payload within the
//!   node's body read deadline, answers PING with PONG, and hands each
//!   RESPONSE to its consumer exactly as a long-poll result (merged into
//!   `{task_id, status, …}`, or our worker's status and body). Before a
//!   RESPONSE payload is read its length is reserved against the session's
//!   and the relay's result budgets; control frames may carry at most
//!   `wire::MAX_BIND_BYTES`;
//! * the **writer** sends queued tasks as CALL frames while fewer than
//!   `max_calls_in_flight` are unanswered, one frame at a time, each
//!   within the body read deadline (a worker that does not read is cut
//!   off). A frame is charged to the node's unsent-answer budget until
//!   written, like a pull answer; when it does not fit, its task goes back
//!   to the head of the queue.
//!
//! A RESPONSE is decoded at most [`RESPONSES_DECODED_AT_ONCE`] at a time
//! relay-wide (decoding copies its body once), so a relay holds at most
//! its result budgets plus that many copies of `max_result_bytes`.
//!
//! When the connection closes, fails, falls silent or breaks the framing,
//! the session ends at once and every task it held or queued is answered
//! `IICP-E031`. Binds are refused with RELAY_ACK `{1: "error", 3: message}`
//! plus our error code, then the connection is closed, as the reference
//! does. Connections at once, binding or bound, are capped by
//! `max_framed_connections`; INIT and RELAY_BIND must arrive within
//! `handshake_timeout_ms` of the connection.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use ciborium::value::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::framing::{self, FrameError, IntMap, key, kind, map_frame};
use super::routes::{bind_refusal_error, deliver, merged_response, record_bind, worker_response};
use super::sessions::{Answer, Relay, Session};
use super::wire::{BindRequest, MAX_BIND_BYTES};
use crate::server::unsent_answers::UnsentAnswers;

/// Bytes of a CALL or RESPONSE map besides its body (call id, elapsed
/// time, forwarded headers, status).
pub const ENVELOPE_BYTES: usize = 64 << 10;
/// How often the writer looks again when it cannot send (calls in flight
/// withdrawn by their consumers free their slots without a frame, and the
/// unsent-answer budget frees itself as answers are written).
const RECHECK: Duration = Duration::from_secs(1);
/// RESPONSE payloads decoded at once relay-wide: decoding copies the body
/// once beside the reserved payload, so this bounds those copies.
pub const RESPONSES_DECODED_AT_ONCE: usize = 4;

/// What the accept port needs.
#[derive(Clone)]
pub struct FramedAccept {
    relay: Arc<Relay>,
    answers: UnsentAnswers,
    http_port: u16,
    frame_timeout: Duration,
    connections: Arc<Semaphore>,
    decoding: Arc<Semaphore>,
}

/// What the reader tells the writer.
enum Event {
    /// Answer a PING with these bytes.
    Pong(Vec<u8>),
    /// A call was answered: a slot may be free.
    Answered,
}

impl FramedAccept {
    /// The accept port of `relay`; `http_port` is told to workers for
    /// their relay-for endpoint, `frame_timeout` bounds every payload read
    /// and frame write, `answers` is the node's unsent-answer budget.
    pub fn new(
        relay: Arc<Relay>,
        answers: UnsentAnswers,
        http_port: u16,
        frame_timeout: Duration,
    ) -> Self {
        let connections = Arc::new(Semaphore::new(
            relay.settings.max_framed_connections as usize,
        ));
        Self {
            relay,
            answers,
            http_port,
            frame_timeout,
            connections,
            decoding: Arc::new(Semaphore::new(RESPONSES_DECODED_AT_ONCE)),
        }
    }

    fn refuse(&self, reason: &str) {
        self.relay
            .metrics
            .refusals
            .with_label_values(&[reason])
            .inc();
    }

    /// Accepts workers until the task is aborted.
    pub async fn serve(self, listener: TcpListener) {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "framed relay accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = self.connections.clone().try_acquire_owned() else {
                self.refuse("framed_connections_full");
                continue;
            };
            let this = self.clone();
            tokio::spawn(async move { this.connection(stream, peer, permit).await });
        }
    }

    async fn connection(self, stream: TcpStream, peer: SocketAddr, _permit: OwnedSemaphorePermit) {
        let _ = stream.set_nodelay(true);
        let (mut reader, mut writer) = stream.into_split();
        let Some(session) = self.handshake(&mut reader, &mut writer, peer).await else {
            return;
        };
        let _connected = session.open_pull(u32::MAX);
        let (events, received) = mpsc::channel(1);
        let reading = tokio::spawn(self.clone().read_loop(reader, session.clone(), events));
        self.write_loop(writer, &session, received).await;
        reading.abort();
        self.relay.disconnected(&session);
        tracing::info!(worker_id = %session.worker_id, "framed relay worker disconnected");
    }

    /// INIT → ACK, RELAY_BIND → RELAY_ACK; the bound session, or `None`
    /// when the peer is refused (told why when it got as far as binding).
    async fn handshake(
        &self,
        reader: &mut OwnedReadHalf,
        writer: &mut OwnedWriteHalf,
        peer: SocketAddr,
    ) -> Option<Arc<Session>> {
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis(self.relay.settings.handshake_timeout_ms);
        let left = || deadline.saturating_duration_since(tokio::time::Instant::now());
        let init = framing::read_frame(reader, MAX_BIND_BYTES, left()).await;
        if !matches!(init, Ok((kind::INIT, _))) {
            self.refuse("framed_handshake");
            return None;
        }
        let ack = map_frame(
            kind::ACK,
            vec![(key::VERSION, Value::from(framing::VERSION))],
        );
        if !self.write(writer, &ack).await {
            return None;
        }
        let bind = match framing::read_frame(reader, MAX_BIND_BYTES, left()).await {
            Ok((kind::RELAY_BIND, map)) => map,
            _ => {
                self.refuse("framed_handshake");
                return None;
            }
        };
        let request = BindRequest {
            worker_id: bind.text(key::WORKER_ID).unwrap_or_default().to_string(),
            intent: bind.text(key::INTENT).unwrap_or_default().to_string(),
            models: bind.texts(key::MODELS),
            bind_ticket: bind.text(key::BIND_TICKET).map(str::to_string),
            rebind_key: bind.text(key::REBIND_KEY).map(str::to_string),
        };
        let worker_id = Value::Text(request.worker_id.clone());
        match self.relay.bind(&request, peer.ip()) {
            Ok(bound) => {
                let session = self.relay.session_by_token(&bound.token)?;
                record_bind(&self.relay, &request.worker_id, &bound).await;
                let ok = map_frame(
                    kind::RELAY_ACK,
                    vec![
                        (key::STATUS, Value::Text("ok".into())),
                        (key::ACK_WORKER_ID, worker_id),
                        (key::HTTP_PORT, Value::from(self.http_port)),
                    ],
                );
                if !self.write(writer, &ok).await {
                    self.relay.disconnected(&session);
                    return None;
                }
                Some(session)
            }
            Err(refusal) => {
                self.refuse(refusal.label());
                let error = bind_refusal_error(refusal);
                let nack = map_frame(
                    kind::RELAY_ACK,
                    vec![
                        (key::STATUS, Value::Text("error".into())),
                        (key::ACK_WORKER_ID, worker_id),
                        (key::MESSAGE, Value::Text(error.message().to_string())),
                        (key::ERROR_CODE, Value::Text(error.code().to_string())),
                    ],
                );
                self.write(writer, &nack).await;
                None
            }
        }
    }

    /// Reads the worker's frames until the connection ends or breaks the
    /// framing; returning ends the session.
    async fn read_loop(
        self,
        mut reader: OwnedReadHalf,
        session: Arc<Session>,
        events: mpsc::Sender<Event>,
    ) {
        let relay = &self.relay;
        let idle = relay.settings.liveness();
        let max_response = relay.settings.max_result_bytes + ENVELOPE_BYTES;
        loop {
            let header = match framing::read_header(&mut reader, max_response, idle).await {
                Ok(header) => header,
                Err(error) => {
                    if error != FrameError::Closed {
                        self.refuse(error.label());
                    }
                    return;
                }
            };
            if header.kind != kind::RESPONSE && header.len > MAX_BIND_BYTES {
                self.refuse(FrameError::TooLarge.label());
                return;
            }
            // A response's bytes are the worker's result: reserved before read.
            let _reserved = if header.kind == kind::RESPONSE {
                match relay.reserve_result(&session, header.len) {
                    Ok(reserved) => Some(reserved),
                    Err(_) => {
                        self.refuse("result_bytes");
                        return;
                    }
                }
            } else {
                None
            };
            let payload = match framing::read_payload(&mut reader, header, self.frame_timeout).await
            {
                Ok(payload) => payload,
                Err(error) => {
                    self.refuse(error.label());
                    return;
                }
            };
            let _decoding = if header.kind == kind::RESPONSE {
                self.decoding.acquire().await.ok()
            } else {
                None
            };
            let Ok(map) = IntMap::decode(&payload) else {
                // As the reference: an undecodable frame is skipped.
                self.refuse(FrameError::BadPayload.label());
                continue;
            };
            drop(payload);
            let event = match header.kind {
                kind::PING => Event::Pong(map.bytes(key::ECHO).unwrap_or_default().to_vec()),
                kind::RESPONSE => {
                    self.answer(&session, &map);
                    Event::Answered
                }
                kind::CLOSE => return,
                _ => continue,
            };
            if events.send(event).await.is_err() {
                return;
            }
        }
    }

    /// Hands a RESPONSE to the consumer waiting for it.
    fn answer(&self, session: &Session, map: &IntMap) {
        let relay = &self.relay;
        let (Some(call_id), Some(body)) = (map.text(key::CALL_ID), map.bytes(key::BODY)) else {
            self.refuse("result_malformed");
            return;
        };
        let Ok(body) = std::str::from_utf8(body) else {
            self.refuse("result_malformed");
            return;
        };
        let answer = match map.uint(key::HTTP_STATUS) {
            Some(code) => {
                // Only the forwarded response headers pass (`worker_response`).
                let headers = map.text_pairs(key::HEADERS).into_iter().collect();
                worker_response(u16::try_from(code).unwrap_or(0), body, &headers)
            }
            None => {
                let task_id = session.task_id_of(call_id).unwrap_or_default();
                match merged_response(&task_id, body) {
                    Some(answer) => answer,
                    None => Answer::Failed(crate::protocol::ApiError::relay_forward_failed(
                        "the worker's result is not a JSON object",
                    )),
                }
            }
        };
        deliver(relay, session, &self.answers, call_id, answer);
    }

    /// Sends queued tasks as CALL frames, and PONGs, until the session
    /// ends, the reader stops or a write fails.
    async fn write_loop(
        &self,
        mut writer: OwnedWriteHalf,
        session: &Session,
        mut events: mpsc::Receiver<Event>,
    ) {
        let relay = &self.relay;
        let max_in_flight = relay
            .settings
            .max_calls_in_flight
            .min(relay.settings.max_tasks_per_session) as usize;
        loop {
            if session.ended().is_some() {
                let close = framing::frame(kind::CLOSE, &[]);
                let _ = tokio::time::timeout(self.frame_timeout, writer.write_all(&close)).await;
                return;
            }
            let mut budget_full = false;
            while session.in_flight() < max_in_flight {
                let Some((call_id, task, meta)) = session.take_next(&relay.metrics) else {
                    break;
                };
                let call = call_frame(&call_id, &task, meta.elapsed, &meta.headers);
                // Held until written: charged like a pull answer.
                let Ok(call) = self.answers.charge(Bytes::from(call)) else {
                    session.requeue(&call_id, &relay.metrics);
                    self.refuse("pull_unsent_budget");
                    budget_full = true;
                    break;
                };
                if !self.write(&mut writer, &call).await {
                    return;
                }
                relay
                    .metrics
                    .bytes
                    .with_label_values(&["to_worker"])
                    .inc_by(call.len() as u64);
            }
            let room = session.in_flight() < max_in_flight && !budget_full;
            let until = tokio::time::Instant::now() + RECHECK;
            tokio::select! {
                event = events.recv() => match event {
                    None => return,
                    Some(Event::Pong(echo)) => {
                        let pong = map_frame(kind::PONG, vec![(key::ECHO, Value::Bytes(echo))]);
                        if !self.write(&mut writer, &pong).await {
                            return;
                        }
                    }
                    Some(Event::Answered) => {}
                },
                () = session.wait_for_task(until), if room => {}
                () = tokio::time::sleep_until(until), if !room => {}
            }
        }
    }

    /// Writes one frame within the deadline; false when the connection is
    /// done for.
    async fn write(&self, writer: &mut OwnedWriteHalf, frame: &[u8]) -> bool {
        match tokio::time::timeout(self.frame_timeout, writer.write_all(frame)).await {
            Ok(Ok(())) => true,
            Ok(Err(_)) => false,
            Err(_) => {
                self.refuse("framed_write_timeout");
                false
            }
        }
    }
}

/// A CALL frame: the consumer's task as it came, its call id, and ours —
/// the time it waited here and the consumer's forwarded headers.
fn call_frame(
    call_id: &str,
    task: &Bytes,
    elapsed: Duration,
    headers: &BTreeMap<String, String>,
) -> Vec<u8> {
    map_frame(
        kind::CALL,
        vec![
            (key::CALL_ID, Value::Text(call_id.to_string())),
            (key::BODY, Value::Bytes(task.to_vec())),
            (
                key::ELAPSED_MS,
                Value::from(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)),
            ),
            (key::HEADERS, framing::text_map(headers)),
        ],
    )
}
