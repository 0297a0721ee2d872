//! The worker role over the native IICP framing (`--relay
//! iicp://host:port`), so this node can serve behind NAT through any
//! reference relay's accept port, as the reference's own workers do
//! (`iicp-client` 0.7.109 `src/relay_worker_client.rs`; wire facts in
//! [`crate::relay::framing`]).
//!
//! INIT → ACK, RELAY_BIND (with our rebind key, and a ticket when the
//! relay asks for one) → RELAY_ACK; then each CALL runs through the very
//! function the `/v1/task` route uses, like a pulled task, and its answer
//! goes back as a RESPONSE carrying our status and headers (a reference
//! relay merges the body into its envelope and answers 200). The worker
//! pings every 30 s, as the reference does, and takes a connection silent
//! for two pings as lost. Calls beyond the node's slots are answered at
//! once by the node's own admission (429). At shutdown it stops reading,
//! lets running tasks answer within the drain bound, then sends CLOSE.
//! Every frame it reads is bounded ([`crate::relay::framing`]): a CALL by the
//! node's task body limit plus an envelope, anything else by the bind
//! body limit; every read and write by the call timeout.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ciborium::value::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;

use super::{Backoff, BindError, PULL_ENVELOPE_BYTES, SessionEnd, Worker};
use crate::relay::framing::{self, FrameError, IntMap, key, kind, map_frame};
use crate::relay::wire::{BindRequest, MAX_BIND_BYTES};

/// How often the worker pings the relay (the reference's period).
const PING_EVERY: Duration = Duration::from_secs(30);

/// A bound framed connection.
pub(super) struct Connection {
    reader: OwnedReadHalf,
    writer: OwnedWriteHalf,
    relay_http_port: Option<u64>,
}

/// Connects to `addr` and binds `request`.
pub(super) async fn bind(
    worker: &Worker,
    addr: &str,
    request: &BindRequest,
) -> Result<Connection, BindError> {
    let within = worker.call_timeout();
    let failed = |why: String| BindError::Retry(why, None);
    let stream = tokio::time::timeout(within, TcpStream::connect(addr))
        .await
        .map_err(|_| failed(format!("connecting to {addr} timed out")))?
        .map_err(|e| failed(format!("cannot connect to {addr}: {e}")))?;
    let _ = stream.set_nodelay(true);
    let (mut reader, mut writer) = stream.into_split();
    let frame_failed = |what: &str, e: FrameError| failed(format!("{what}: {}", e.label()));
    write(
        &mut writer,
        &map_frame(
            kind::INIT,
            vec![(key::VERSION, Value::from(framing::VERSION))],
        ),
        within,
    )
    .await
    .map_err(|e| frame_failed("INIT", e))?;
    match framing::read_frame(&mut reader, MAX_BIND_BYTES, within).await {
        Ok((kind::ACK, _)) => {}
        Ok((other, _)) => return Err(failed(format!("the relay answered INIT with {other:#04x}"))),
        Err(e) => return Err(frame_failed("ACK", e)),
    }
    let mut fields = vec![
        (key::WORKER_ID, Value::Text(request.worker_id.clone())),
        (key::INTENT, Value::Text(request.intent.clone())),
        (
            key::MODELS,
            Value::Array(request.models.iter().cloned().map(Value::Text).collect()),
        ),
    ];
    if let Some(ticket) = &request.bind_ticket {
        fields.push((key::BIND_TICKET, Value::Text(ticket.clone())));
    }
    if let Some(rebind_key) = &request.rebind_key {
        fields.push((key::REBIND_KEY, Value::Text(rebind_key.clone())));
    }
    write(&mut writer, &map_frame(kind::RELAY_BIND, fields), within)
        .await
        .map_err(|e| frame_failed("RELAY_BIND", e))?;
    let ack = match framing::read_frame(&mut reader, MAX_BIND_BYTES, within).await {
        Ok((kind::RELAY_ACK, ack)) => ack,
        Ok((other, _)) => {
            return Err(failed(format!(
                "the relay answered RELAY_BIND with {other:#04x}"
            )));
        }
        Err(e) => return Err(frame_failed("RELAY_ACK", e)),
    };
    if ack.text(key::STATUS) == Some("ok") {
        return Ok(Connection {
            reader,
            writer,
            relay_http_port: ack.uint(key::HTTP_PORT),
        });
    }
    let message = ack.text(key::MESSAGE).unwrap_or("refused").to_string();
    // Ours name the code; the reference's say it in words.
    let ticket_needed =
        ack.text(key::ERROR_CODE) == Some("IICP-E040") || message.starts_with("relay bind ticket");
    if ticket_needed {
        return Err(BindError::TicketNeeded);
    }
    Err(failed(format!("the relay refused the bind: {message}")))
}

/// Serves the relay's calls until the connection is lost or the worker
/// stops.
pub(super) async fn serve(
    worker: &Arc<Worker>,
    connection: Connection,
    backoff: &mut Backoff,
) -> SessionEnd {
    let Connection {
        mut reader,
        writer,
        relay_http_port,
    } = connection;
    let settings = &worker.parts.settings;
    if let Some(port) = relay_http_port
        && settings.http_url.is_none()
        && !settings.base_url().ends_with(&format!(":{port}"))
    {
        tracing::warn!(
            relay_http_port = port,
            advertised = %settings.base_url(),
            "the relay serves consumers on another port than the one advertised; set [relay] http_url"
        );
    }
    let within = worker.call_timeout();
    // Answers and pings wait here for the writer: at most one per slot.
    let (frames, to_write) = mpsc::channel(worker.slots as usize + 1);
    let writing = tokio::spawn(write_loop(writer, to_write, within));
    let max_call = worker.parts.state.max_body_bytes + PULL_ENVELOPE_BYTES;
    let idle = 2 * PING_EVERY + within;
    let mut stop = worker.stop.clone();
    let end = loop {
        let frame = tokio::select! {
            frame = read_bounded(&mut reader, max_call, idle, within) => frame,
            _ = stop.wait_for(|stopped| *stopped) => break SessionEnd::Stopping,
        };
        match frame {
            Ok((kind::CALL, call)) => {
                backoff.reset();
                dispatch(worker, call, frames.clone()).await;
            }
            Ok((kind::CLOSE, _)) | Err(_) => break SessionEnd::Lost,
            Ok(_) => {} // PONG, and what the reference also ignores
        }
    };
    if matches!(end, SessionEnd::Stopping) {
        let all_back = worker.running.acquire_many(worker.slots);
        if tokio::time::timeout(worker.parts.drain, all_back)
            .await
            .is_err()
        {
            tracing::warn!("relayed tasks still running at the drain bound; closing anyway");
        }
        let _ = frames.send(framing::frame(kind::CLOSE, &[])).await;
    }
    drop(frames);
    if tokio::time::timeout(within, writing).await.is_err() {
        tracing::warn!("the relay connection did not take the last frames");
    }
    end
}

/// A frame whose payload is bounded by `max_call` for a CALL and the bind
/// limit otherwise; the header may take `idle`, the payload `within`.
async fn read_bounded(
    reader: &mut OwnedReadHalf,
    max_call: usize,
    idle: Duration,
    within: Duration,
) -> Result<(u8, IntMap), FrameError> {
    let header = framing::read_header(reader, max_call, idle).await?;
    if header.kind != kind::CALL && header.len > MAX_BIND_BYTES {
        return Err(FrameError::TooLarge);
    }
    let payload = framing::read_payload(reader, header, within).await?;
    Ok((header.kind, IntMap::decode(&payload)?))
}

/// Runs `call` on its own task when a slot is free, else at once here
/// (the node's admission then refuses it quickly).
async fn dispatch(worker: &Arc<Worker>, call: IntMap, frames: mpsc::Sender<Vec<u8>>) {
    let run = {
        let worker = worker.clone();
        async move {
            if let Some(response) = answer(&worker, &call).await {
                if frames.send(response).await.is_ok() {
                    worker.answered();
                } else {
                    worker.lost("the relay connection closed");
                }
            }
        }
    };
    match worker.running.clone().try_acquire_owned() {
        Ok(permit) => {
            tokio::spawn(async move {
                run.await;
                drop(permit);
            });
        }
        Err(_) => run.await,
    }
}

/// The RESPONSE frame for `call`: the task served exactly as a direct one.
async fn answer(worker: &Worker, call: &IntMap) -> Option<Vec<u8>> {
    let (Some(call_id), Some(task)) = (call.text(key::CALL_ID), call.bytes(key::BODY)) else {
        tracing::warn!("the relay sent a call that is not understood");
        return None;
    };
    let forwarded: BTreeMap<String, String> = call.text_pairs(key::HEADERS).into_iter().collect();
    let (status, headers, body) = worker
        .run_task(task.to_vec(), &forwarded, call.uint(key::ELAPSED_MS))
        .await?;
    Some(map_frame(
        kind::RESPONSE,
        vec![
            (key::CALL_ID, Value::Text(call_id.to_string())),
            (key::BODY, Value::Bytes(body.to_vec())),
            (key::HTTP_STATUS, Value::from(status.as_u16())),
            (key::HEADERS, framing::text_map(&headers)),
        ],
    ))
}

/// Writes queued frames, and a PING every [`PING_EVERY`], each within
/// `within`, until the queue closes or a write fails.
async fn write_loop(
    mut writer: OwnedWriteHalf,
    mut frames: mpsc::Receiver<Vec<u8>>,
    within: Duration,
) {
    let mut pings = tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
    loop {
        let frame = tokio::select! {
            frame = frames.recv() => match frame {
                Some(frame) => frame,
                None => return,
            },
            _ = pings.tick() => map_frame(kind::PING, vec![(key::ECHO, Value::Bytes(Vec::new()))]),
        };
        if write(&mut writer, &frame, within).await.is_err() {
            return;
        }
    }
}

async fn write(
    writer: &mut OwnedWriteHalf,
    frame: &[u8],
    within: Duration,
) -> Result<(), FrameError> {
    match tokio::time::timeout(within, writer.write_all(frame)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(FrameError::Closed),
        Err(_) => Err(FrameError::Timeout),
    }
}
