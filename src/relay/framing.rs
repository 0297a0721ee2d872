//! The native IICP framing as the reference relay and workers speak it
//! (`protocol.md` §13, divergence 21): frames, their CBOR maps, and a
//! reader that never holds more than the caller allows.
//!
//! Wire facts relied on (sources: `iicp-client` 0.7.109 `src/iicp_tcp.rs`
//! for the header, `src/relay_session.rs` `RelayAcceptServer` for the relay
//! side, `src/relay_worker_client.rs` for the worker side):
//!
//! * **Frame**: 12-byte header — magic `IICP`, version `0x01`, message
//!   type, flags (`0`), reserved (`0`), payload length as a big-endian
//!   `u32` — then the payload. The reference refuses a payload over 16 MiB
//!   and a wrong magic by closing the connection; it does not check the
//!   version byte. We refuse a wrong magic, any version but `0x01` and a
//!   length over the caller's cap, before allocating, by closing too.
//! * **Payloads** are CBOR maps with small-integer keys; other keys are
//!   skipped and a repeated key's last value wins (the reference builds a
//!   hash map). A text field may come as a byte string and the reverse.
//! * **Message types** and their maps:
//!   - INIT `0x01` `{1: version}` → ACK `0x02` `{1: version}`;
//!   - RELAY_BIND `0x0b` `{1: worker_id, 2: intent, 3: [models], 4:
//!     bind_ticket?}` → RELAY_ACK `0x0c` `{1: "ok", 2: worker_id, 4:
//!     relay_http_port}` or `{1: "error", 2: worker_id, 3: message}` after
//!     which the relay closes the connection. Divergence 21: the spec gives
//!     `0x0b`/`0x0c` other meanings; we follow the implementations;
//!   - CALL `0x05` (relay → worker) `{15: call_id, 5: task JSON bytes}` →
//!     RESPONSE `0x06` `{15: call_id, 5: result JSON bytes}`; the
//!     reference relay merges the result object into `{task_id, status,
//!     …}` for the consumer, as for its long-poll workers;
//!   - PING `0x09` `{1: bytes}` → PONG `0x0a` `{1: the same bytes}`; the
//!     reference worker pings every 30 s;
//!   - CLOSE `0x07`: the sender is done; either side may send it.
//!
//!   The reference relay ignores frames of other types on a bound
//!   connection, and a RESPONSE it cannot decode.
//! * **Ours**, keys from [`key::REBIND_KEY`] up, which reference peers
//!   skip: RELAY_BIND `rebind_key`, RELAY_ACK (error) `error_code`, CALL
//!   `elapsed_ms` and forwarded `headers`, RESPONSE `http_status` and
//!   `headers` — the same additions the long-poll bodies carry (`wire`).
//!
//! **Bounds.** A frame's length is checked against the caller's cap before
//! a byte of payload is allocated; a payload is decoded only after a walk
//! that allocates nothing has found it to be one map of at most
//! [`MAX_ITEMS`] items nested at most [`MAX_DEPTH`] deep, so the decoded
//! map is at most a small multiple of the payload. Every read has a
//! deadline.

use std::time::Duration;

use ciborium::value::Value;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The first four bytes of every frame.
pub const MAGIC: &[u8; 4] = b"IICP";
/// The framing version spoken.
pub const VERSION: u8 = 0x01;
/// Bytes of a frame header.
pub const HEADER_LEN: usize = 12;
/// Deepest nesting of arrays and maps in a payload.
pub const MAX_DEPTH: usize = 8;
/// Most data items (keys, values, array elements) in a payload.
pub const MAX_ITEMS: usize = 4096;

/// Message types.
pub mod kind {
    /// Opens a connection.
    pub const INIT: u8 = 0x01;
    /// Answers INIT.
    pub const ACK: u8 = 0x02;
    /// A task for the worker.
    pub const CALL: u8 = 0x05;
    /// The worker's answer to a CALL.
    pub const RESPONSE: u8 = 0x06;
    /// The sender is done.
    pub const CLOSE: u8 = 0x07;
    /// Liveness probe.
    pub const PING: u8 = 0x09;
    /// Answers PING.
    pub const PONG: u8 = 0x0a;
    /// A worker binds its session.
    pub const RELAY_BIND: u8 = 0x0b;
    /// Answers RELAY_BIND.
    pub const RELAY_ACK: u8 = 0x0c;
}

/// Map keys, per message.
pub mod key {
    /// INIT, ACK: the framing version.
    pub const VERSION: i64 = 1;
    /// RELAY_BIND: the worker's node id.
    pub const WORKER_ID: i64 = 1;
    /// RELAY_BIND: its intent.
    pub const INTENT: i64 = 2;
    /// RELAY_BIND: its models (array of text).
    pub const MODELS: i64 = 3;
    /// RELAY_BIND: a directory-signed bind ticket.
    pub const BIND_TICKET: i64 = 4;
    /// RELAY_ACK: `"ok"` or `"error"`.
    pub const STATUS: i64 = 1;
    /// RELAY_ACK: the worker id bound.
    pub const ACK_WORKER_ID: i64 = 2;
    /// RELAY_ACK (error): why.
    pub const MESSAGE: i64 = 3;
    /// RELAY_ACK (ok): the relay's HTTP port for the relay-for endpoint.
    pub const HTTP_PORT: i64 = 4;
    /// CALL, RESPONSE: names the call.
    pub const CALL_ID: i64 = 15;
    /// CALL: the task; RESPONSE: the result (JSON bytes).
    pub const BODY: i64 = 5;
    /// PING, PONG: echoed bytes.
    pub const ECHO: i64 = 1;
    /// Ours, RELAY_BIND: the worker's rebind key (`wire::BindRequest`).
    pub const REBIND_KEY: i64 = 1000;
    /// Ours, RELAY_ACK (error): the protocol error code.
    pub const ERROR_CODE: i64 = 1001;
    /// Ours, CALL: milliseconds the task already waited at the relay.
    pub const ELAPSED_MS: i64 = 1002;
    /// Ours, CALL and RESPONSE: forwarded headers (map of text).
    pub const HEADERS: i64 = 1003;
    /// Ours, RESPONSE: the HTTP status for the consumer; the body is then
    /// the whole response body.
    pub const HTTP_STATUS: i64 = 1004;
}

/// Why a frame could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The peer closed the connection (or it failed).
    Closed,
    /// Nothing (or not all of it) arrived within the deadline.
    Timeout,
    /// Not an IICP frame header.
    BadHeader,
    /// The announced payload is longer than allowed.
    TooLarge,
    /// The payload is not a bounded CBOR map.
    BadPayload,
}

impl FrameError {
    /// For logs and metric labels.
    pub fn label(self) -> &'static str {
        match self {
            FrameError::Closed => "frame_closed",
            FrameError::Timeout => "frame_timeout",
            FrameError::BadHeader => "frame_bad_header",
            FrameError::TooLarge => "frame_too_large",
            FrameError::BadPayload => "frame_malformed",
        }
    }
}

/// A checked frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Message type.
    pub kind: u8,
    /// Payload bytes that follow.
    pub len: usize,
}

/// Checks a header: magic, version, and a payload of at most `max_payload`.
pub fn parse_header(bytes: &[u8; HEADER_LEN], max_payload: usize) -> Result<Header, FrameError> {
    if &bytes[..4] != MAGIC || bytes[4] != VERSION {
        return Err(FrameError::BadHeader);
    }
    let len = u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
    if len > max_payload {
        return Err(FrameError::TooLarge);
    }
    Ok(Header {
        kind: bytes[5],
        len,
    })
}

/// One frame of `kind` carrying `payload`.
pub fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[VERSION, kind, 0, 0]);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// One frame of `kind` carrying the map `entries`.
pub fn map_frame(kind: u8, entries: Vec<(i64, Value)>) -> Vec<u8> {
    frame(kind, &encode_map(entries))
}

/// A map of text to text, as forwarded headers travel.
pub fn text_map(pairs: &std::collections::BTreeMap<String, String>) -> Value {
    Value::Map(
        pairs
            .iter()
            .map(|(k, v)| (Value::Text(k.clone()), Value::Text(v.clone())))
            .collect(),
    )
}

/// Reads a header within `within` and checks it against `max_payload`.
pub async fn read_header<R: AsyncRead + Unpin>(
    reader: &mut R,
    max_payload: usize,
    within: Duration,
) -> Result<Header, FrameError> {
    let mut bytes = [0u8; HEADER_LEN];
    match tokio::time::timeout(within, reader.read_exact(&mut bytes)).await {
        Ok(Ok(_)) => parse_header(&bytes, max_payload),
        Ok(Err(_)) => Err(FrameError::Closed),
        Err(_) => Err(FrameError::Timeout),
    }
}

/// Reads the payload `header` announced, within `within`. The buffer
/// grows with what arrives, so a peer announcing much and sending little
/// holds little.
pub async fn read_payload<R: AsyncRead + Unpin>(
    reader: &mut R,
    header: Header,
    within: Duration,
) -> Result<Vec<u8>, FrameError> {
    let mut payload = Vec::new();
    let mut limited = reader.take(header.len as u64);
    match tokio::time::timeout(within, limited.read_to_end(&mut payload)).await {
        Ok(Ok(n)) if n == header.len => Ok(payload),
        Ok(_) => Err(FrameError::Closed),
        Err(_) => Err(FrameError::Timeout),
    }
}

/// Reads a whole frame of at most `max_payload` bytes within `within`.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    max_payload: usize,
    within: Duration,
) -> Result<(u8, IntMap), FrameError> {
    let started = tokio::time::Instant::now();
    let header = read_header(reader, max_payload, within).await?;
    let left = within.saturating_sub(started.elapsed());
    let payload = read_payload(reader, header, left).await?;
    Ok((header.kind, IntMap::decode(&payload)?))
}

/// The CBOR encoding of a map with integer keys.
pub fn encode_map(entries: Vec<(i64, Value)>) -> Vec<u8> {
    let map = Value::Map(
        entries
            .into_iter()
            .map(|(k, v)| (Value::Integer(k.into()), v))
            .collect(),
    );
    let mut out = Vec::new();
    // Writing a Value into a Vec cannot fail.
    let _ = ciborium::ser::into_writer(&map, &mut out);
    out
}

/// A decoded payload: its integer-keyed entries.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct IntMap(Vec<(i64, Value)>);

impl IntMap {
    /// Decodes `payload`, which must be one bounded CBOR map (an empty
    /// payload is an empty map, as the reference sends none for some).
    pub fn decode(payload: &[u8]) -> Result<Self, FrameError> {
        if payload.is_empty() {
            return Ok(Self::default());
        }
        check_bounds(payload)?;
        let value: Value = ciborium::de::from_reader_with_recursion_limit(payload, MAX_DEPTH + 1)
            .map_err(|_| FrameError::BadPayload)?;
        let Value::Map(entries) = value else {
            return Err(FrameError::BadPayload);
        };
        Ok(Self(
            entries
                .into_iter()
                .filter_map(|(k, v)| Some((i64::try_from(k.as_integer()?).ok()?, v)))
                .collect(),
        ))
    }

    /// Its entries, in wire order.
    pub fn into_entries(self) -> Vec<(i64, Value)> {
        self.0
    }

    fn get(&self, key: i64) -> Option<&Value> {
        self.0.iter().rev().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// A text field (a UTF-8 byte string too).
    pub fn text(&self, key: i64) -> Option<&str> {
        match self.get(key)? {
            Value::Text(text) => Some(text),
            Value::Bytes(bytes) => std::str::from_utf8(bytes).ok(),
            _ => None,
        }
    }

    /// A byte field (a text string's bytes too).
    pub fn bytes(&self, key: i64) -> Option<&[u8]> {
        match self.get(key)? {
            Value::Bytes(bytes) => Some(bytes),
            Value::Text(text) => Some(text.as_bytes()),
            _ => None,
        }
    }

    /// A non-negative integer field.
    pub fn uint(&self, key: i64) -> Option<u64> {
        self.get(key)?.as_integer()?.try_into().ok()
    }

    /// The text elements of an array field (others skipped).
    pub fn texts(&self, key: i64) -> Vec<String> {
        match self.get(key) {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(|v| v.as_text().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The text-to-text entries of a map field (others skipped).
    pub fn text_pairs(&self, key: i64) -> Vec<(String, String)> {
        match self.get(key) {
            Some(Value::Map(entries)) => entries
                .iter()
                .filter_map(|(k, v)| Some((k.as_text()?.to_string(), v.as_text()?.to_string())))
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// Walks `payload` without allocating: one top-level map, at most
/// [`MAX_ITEMS`] items, [`MAX_DEPTH`] deep, nothing after it.
fn check_bounds(payload: &[u8]) -> Result<(), FrameError> {
    use ciborium_ll::{Decoder, Header as Item};
    let mut decoder = Decoder::from(payload);
    // Items still expected at each open level; `None`: until a break.
    let mut open: Vec<Option<u64>> = Vec::with_capacity(MAX_DEPTH + 1);
    let mut items = 0usize;
    let mut scratch = [0u8; 256];
    let bad = |_| FrameError::BadPayload;
    loop {
        let item = decoder.pull().map_err(bad)?;
        items += 1;
        if items > MAX_ITEMS {
            return Err(FrameError::BadPayload);
        }
        if open.is_empty() && !matches!(item, Item::Map(_)) {
            return Err(FrameError::BadPayload);
        }
        let mut child: Option<Option<u64>> = None;
        match item {
            Item::Break => match open.pop() {
                Some(None) => {
                    items -= 1;
                }
                _ => return Err(FrameError::BadPayload),
            },
            Item::Bytes(len) => {
                let mut segments = decoder.bytes(len);
                while let Some(mut segment) = segments.pull().map_err(bad)? {
                    while segment.pull(&mut scratch).map_err(bad)?.is_some() {}
                }
            }
            Item::Text(len) => {
                let mut segments = decoder.text(len);
                while let Some(mut segment) = segments.pull().map_err(bad)? {
                    while segment.pull(&mut scratch).map_err(bad)?.is_some() {}
                }
            }
            Item::Array(len) => {
                child = Some(len.map(|n| n as u64));
            }
            Item::Map(len) => {
                child = Some(len.map(|n| (n as u64).saturating_mul(2)));
            }
            Item::Tag(_) => {
                // The tagged item follows and counts as the tag's.
                continue;
            }
            Item::Positive(_) | Item::Negative(_) | Item::Float(_) | Item::Simple(_) => {}
        }
        if !matches!(item, Item::Break) {
            // This item fills one slot of its parent.
            if let Some(Some(left)) = open.last_mut() {
                *left -= 1;
            }
        }
        if let Some(len) = child {
            if open.len() >= MAX_DEPTH || len.is_some_and(|n| n > MAX_ITEMS as u64) {
                return Err(FrameError::BadPayload);
            }
            open.push(len);
        }
        while let Some(Some(0)) = open.last() {
            open.pop();
        }
        if open.is_empty() {
            return if decoder.offset() == payload.len() {
                Ok(())
            } else {
                Err(FrameError::BadPayload)
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cbor(value: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::ser::into_writer(value, &mut out).unwrap();
        out
    }

    #[test]
    fn a_frame_round_trips_and_its_header_is_checked_before_the_payload() {
        let bytes = map_frame(
            kind::RELAY_BIND,
            vec![
                (key::WORKER_ID, Value::Text("w-1".into())),
                (key::MODELS, Value::Array(vec![Value::Text("echo".into())])),
                (key::BIND_TICKET, Value::Bytes(b"t".to_vec())),
                (key::ELAPSED_MS, Value::Integer(7.into())),
            ],
        );
        assert_eq!(&bytes[..6], b"IICP\x01\x0b");
        let header = parse_header(bytes[..12].try_into().unwrap(), 1024).unwrap();
        assert_eq!(header.len, bytes.len() - HEADER_LEN);
        let map = IntMap::decode(&bytes[12..]).unwrap();
        assert_eq!(map.text(key::WORKER_ID), Some("w-1"));
        assert_eq!(map.texts(key::MODELS), ["echo"]);
        assert_eq!(map.text(key::BIND_TICKET), Some("t"), "bytes read as text");
        assert_eq!(map.uint(key::ELAPSED_MS), Some(7));
        assert_eq!(map.text(key::INTENT), None);

        let too_long = parse_header(bytes[..12].try_into().unwrap(), header.len - 1);
        assert_eq!(too_long, Err(FrameError::TooLarge));
        let mut wrong = bytes.clone();
        wrong[0] = b'X';
        assert_eq!(
            parse_header(wrong[..12].try_into().unwrap(), 1024),
            Err(FrameError::BadHeader)
        );
        wrong = bytes.clone();
        wrong[4] = 2;
        assert_eq!(
            parse_header(wrong[..12].try_into().unwrap(), 1024),
            Err(FrameError::BadHeader)
        );
        // The reference's wire: a u32 length of 4 GiB − 1 is refused
        // from the header alone.
        let huge = [b'I', b'I', b'C', b'P', 1, 6, 0, 0, 0xff, 0xff, 0xff, 0xff];
        assert_eq!(parse_header(&huge, 16 << 20), Err(FrameError::TooLarge));
    }

    #[test]
    fn payloads_past_the_depth_or_item_caps_or_not_one_map_are_refused() {
        let mut deep = Value::Integer(1.into());
        for _ in 0..MAX_DEPTH {
            deep = Value::Array(vec![deep]);
        }
        let nested = Value::Map(vec![(Value::Integer(1.into()), deep.clone())]);
        assert_eq!(IntMap::decode(&cbor(&nested)), Err(FrameError::BadPayload));
        let ok = Value::Map(vec![(
            Value::Integer(1.into()),
            Value::Array(vec![Value::Integer(1.into())]),
        )]);
        assert!(IntMap::decode(&cbor(&ok)).is_ok());

        let wide = Value::Map(vec![(
            Value::Integer(1.into()),
            Value::Array(vec![Value::Integer(0.into()); MAX_ITEMS]),
        )]);
        assert_eq!(IntMap::decode(&cbor(&wide)), Err(FrameError::BadPayload));
        // A declared length far past the data allocates nothing.
        let lying = [
            0xa1, 0x01, 0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        ];
        assert_eq!(IntMap::decode(&lying), Err(FrameError::BadPayload));
        let lying_bytes = [0xa1, 0x01, 0x5a, 0xff, 0xff, 0xff, 0xff];
        assert_eq!(IntMap::decode(&lying_bytes), Err(FrameError::BadPayload));

        assert_eq!(
            IntMap::decode(&cbor(&Value::Array(vec![]))),
            Err(FrameError::BadPayload)
        );
        let mut trailing = cbor(&ok);
        trailing.push(0x01);
        assert_eq!(IntMap::decode(&trailing), Err(FrameError::BadPayload));
        // Indefinite-length maps and strings, as other encoders write them.
        let indefinite = [0xbf, 0x0f, 0x7f, 0x61, b'c', 0x61, b'1', 0xff, 0xff];
        let map = IntMap::decode(&indefinite).unwrap();
        assert_eq!(map.text(key::CALL_ID), Some("c1"));
        assert_eq!(IntMap::decode(&[]), Ok(IntMap::default()));
        // Text keys are skipped; the last of repeated keys wins.
        let mixed = Value::Map(vec![
            (Value::Text("a".into()), Value::Integer(1.into())),
            (Value::Integer(15.into()), Value::Text("first".into())),
            (Value::Integer(15.into()), Value::Text("last".into())),
        ]);
        assert_eq!(
            IntMap::decode(&cbor(&mixed)).unwrap().text(key::CALL_ID),
            Some("last")
        );
    }

    #[tokio::test]
    async fn reads_stop_at_the_deadline_and_at_a_short_payload() {
        let (mut ours, mut theirs) = tokio::io::duplex(1024);
        let started = tokio::time::Instant::now();
        let silent = read_frame(&mut ours, 1024, Duration::from_millis(20)).await;
        assert_eq!(silent, Err(FrameError::Timeout));
        assert!(started.elapsed() >= Duration::from_millis(20));
        use tokio::io::AsyncWriteExt;
        let whole = map_frame(kind::PING, vec![(key::ECHO, Value::Bytes(vec![1, 2]))]);
        theirs.write_all(&whole).await.unwrap();
        let (kind, map) = read_frame(&mut ours, 1024, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(
            (kind, map.bytes(key::ECHO)),
            (kind::PING, Some(&[1u8, 2][..]))
        );
        // A header announcing more than ever comes.
        theirs.write_all(&whole[..whole.len() - 1]).await.unwrap();
        drop(theirs);
        let short = read_frame(&mut ours, 1024, Duration::from_secs(5)).await;
        assert_eq!(short, Err(FrameError::Closed));
    }
}
