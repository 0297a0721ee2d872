//! W3C Trace Context (`traceparent`, `tracestate`) as IICP uses it
//! (conformance §13.2, TRACE-01..04).
//!
//! A valid incoming `traceparent` continues the consumer's trace; a missing or
//! invalid one starts a new trace, as W3C Trace Context requires of a
//! receiver (an invalid header is not an error for the task). The node acts
//! as one span of the trace: plugins receive a `traceparent` whose parent id is
//! the node's span, and `tracestate` untouched.
//!
//! With OTLP export on, the node's span ids are the exported spans' own
//! ([`TraceContext::adopt`]). A trace named only by the body's
//! `trace.trace_id` has no parent span the node knows; its spans get a
//! parent id of their own making, which collectors show as a missing parent
//! — the trace id, which the consumer asked for, is kept.

use std::fmt::Write;

/// W3C's advice: a receiver may drop a `tracestate` longer than this.
const MAX_TRACESTATE_BYTES: usize = 512;

/// The trace a task belongs to and the node's span in it.
#[derive(Debug, Clone)]
pub struct TraceContext {
    trace_id: u128,
    span_id: u64,
    flags: u8,
    tracestate: Option<String>,
    continued: bool,
    /// The span the node's spans are children of, when the trace was
    /// continued.
    parent: Option<u64>,
}

impl TraceContext {
    /// Continues the trace of `traceparent` when it is valid; otherwise uses
    /// `fallback_trace_id` (the body's `trace.trace_id`) or starts a new trace.
    /// `tracestate` is kept only alongside a valid `traceparent`.
    pub fn from_request(
        traceparent: Option<&str>,
        tracestate: Option<&str>,
        fallback_trace_id: Option<&str>,
    ) -> Self {
        let span_id = random_nonzero_u64();
        if let Some((trace_id, parent, flags)) = traceparent.and_then(parse_traceparent) {
            return Self {
                trace_id,
                span_id,
                flags,
                tracestate: tracestate
                    .filter(|s| valid_tracestate(s))
                    .map(str::to_string),
                continued: true,
                parent: Some(parent),
            };
        }
        let trace_id = fallback_trace_id
            .and_then(parse_hex_id::<16>)
            .map(u128::from_be_bytes)
            .filter(|id| *id != 0);
        Self {
            continued: trace_id.is_some(),
            parent: trace_id.map(|_| random_nonzero_u64()),
            trace_id: trace_id.unwrap_or_else(random_nonzero_u128),
            span_id,
            flags: 0x01,
            tracestate: None,
        }
    }

    /// The trace id.
    pub fn trace_id(&self) -> u128 {
        self.trace_id
    }

    /// The W3C trace flags (bit 0: sampled).
    pub fn flags(&self) -> u8 {
        self.flags
    }

    /// The span id the node's spans are children of, when the trace was
    /// continued from the consumer.
    pub fn remote_parent(&self) -> Option<u64> {
        self.parent
    }

    /// Takes the ids an exported span got: the trace id (a new trace's, or
    /// the continued one unchanged), its span id and sampling flags.
    pub fn adopt(&mut self, trace_id: u128, span_id: u64, flags: u8) {
        self.trace_id = trace_id;
        self.span_id = span_id;
        self.flags = flags;
    }

    /// The trace id as 32 lowercase hex digits (the `X-IICP-Trace-Id` value).
    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    /// The node's span id as 16 lowercase hex digits.
    pub fn span_id_hex(&self) -> String {
        format!("{:016x}", self.span_id)
    }

    /// A `traceparent` naming the node's span as parent, for the plugin.
    pub fn child_traceparent(&self) -> String {
        let mut out = String::with_capacity(55);
        let _ = write!(
            out,
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.span_id, self.flags
        );
        out
    }

    /// The consumer's `tracestate`, when it came with a valid `traceparent`.
    pub fn tracestate(&self) -> Option<&str> {
        self.tracestate.as_deref()
    }

    /// Whether the trace came from the consumer rather than being started here.
    pub fn is_continued(&self) -> bool {
        self.continued
    }
}

fn parse_traceparent(header: &str) -> Option<(u128, u64, u8)> {
    let header = header.trim();
    let mut parts = header.splitn(5, '-');
    let version = parse_hex_id::<1>(parts.next()?)?[0];
    let trace_id = u128::from_be_bytes(parse_hex_id::<16>(parts.next()?)?);
    let parent_id = u64::from_be_bytes(parse_hex_id::<8>(parts.next()?)?);
    let flags = parse_hex_id::<1>(parts.next()?)?[0];
    let rest = parts.next();
    // Version 00 has exactly four fields; later versions may append more.
    let shape_ok = match version {
        0xff => false,
        0x00 => rest.is_none(),
        _ => true,
    };
    (shape_ok && trace_id != 0 && parent_id != 0).then_some((trace_id, parent_id, flags))
}

/// Parses exactly `N` bytes of lowercase hex.
fn parse_hex_id<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != N * 2 || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0u8; N];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

fn valid_tracestate(value: &str) -> bool {
    value.len() <= MAX_TRACESTATE_BYTES && value.bytes().all(|b| (0x20..0x7f).contains(&b))
}

fn random_nonzero_u64() -> u64 {
    fastrand::u64(1..)
}

fn random_nonzero_u128() -> u128 {
    fastrand::u128(1..)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn continues_a_valid_trace_with_a_new_parent() {
        let trace = TraceContext::from_request(Some(VALID), Some("vendor=1"), None);
        assert!(trace.is_continued());
        assert_eq!(trace.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let child = trace.child_traceparent();
        assert!(child.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(child.ends_with("-01"));
        assert!(!child.contains("00f067aa0ba902b7"));
        assert_eq!(trace.tracestate(), Some("vendor=1"));
    }

    #[test]
    fn invalid_traceparents_start_a_new_trace() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            let trace = TraceContext::from_request(Some(bad), Some("vendor=1"), None);
            assert!(!trace.is_continued(), "{bad:?} was accepted");
            assert_ne!(trace.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
            assert_eq!(trace.tracestate(), None);
            assert_eq!(trace.trace_id_hex().len(), 32);
        }
    }

    #[test]
    fn later_versions_may_carry_extra_fields() {
        let header = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-ever";
        assert!(TraceContext::from_request(Some(header), None, None).is_continued());
    }

    #[test]
    fn body_trace_id_is_the_fallback() {
        let trace =
            TraceContext::from_request(None, None, Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert!(trace.is_continued());
        assert_eq!(trace.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
    }
}
