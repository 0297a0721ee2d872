//! W3C trace context from a consumer: `traceparent`, `tracestate` and the
//! body's `trace.trace_id`, as three lines of the input (an empty line is
//! an absent value). Whatever comes, the node's context is well formed:
//! a non-zero trace id, a non-zero span, a `traceparent` for the plugin
//! that parses back to the same trace, and a `tracestate` passed on only
//! beside a valid `traceparent` and only within its bounds.
#![no_main]

use iicp_host::protocol::trace_context::TraceContext;
use libfuzzer_sys::fuzz_target;

fn is_lower_hex(text: &str, len: usize) -> bool {
    text.len() == len && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fuzz_target!(|input: &str| {
    let mut lines = input
        .splitn(3, '\n')
        .map(|line| Some(line).filter(|l| !l.is_empty()));
    let traceparent = lines.next().flatten();
    let tracestate = lines.next().flatten();
    let body_trace_id = lines.next().flatten();
    let trace = TraceContext::from_request(traceparent, tracestate, body_trace_id);

    let trace_id = trace.trace_id_hex();
    assert!(
        is_lower_hex(&trace_id, 32) && trace_id != "0".repeat(32),
        "{trace_id}"
    );
    let span_id = trace.span_id_hex();
    assert!(
        is_lower_hex(&span_id, 16) && span_id != "0".repeat(16),
        "{span_id}"
    );

    let child = trace.child_traceparent();
    assert_eq!(child.len(), 55, "{child}");
    let again = TraceContext::from_request(Some(&child), None, None);
    assert!(again.is_continued(), "{child} does not parse back");
    assert_eq!(again.trace_id_hex(), trace_id);
    assert_eq!(&again.child_traceparent()[53..], &child[53..], "flags kept");

    if let Some(state) = trace.tracestate() {
        assert_eq!(Some(state), tracestate);
        assert!(state.len() <= 512 && state.bytes().all(|b| (0x20..0x7f).contains(&b)));
        let header = traceparent
            .expect("tracestate only beside a traceparent")
            .trim();
        assert_eq!(header.get(3..35), Some(trace_id.as_str()));
    }
    if !trace.is_continued() {
        assert!(trace.tracestate().is_none());
    }
});
