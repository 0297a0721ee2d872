//! Directory answers as the node reads them: an HTTP status, a
//! `Retry-After` header and a body, through the client's answer reading,
//! then the REGISTER answer, the PONG and the metrics-batch
//! acknowledgement. A garbage, hostile or huge answer is an error value or
//! a bounded reading, never a panic.
//!
//! Input: two bytes of status (folded into 100..=999), one byte of header
//! length, the header bytes, then the body.
#![no_main]

use std::time::Duration;

use http::{HeaderValue, StatusCode};
use iicp_host::directory::answers::{Pong, Registration};
use iicp_host::directory::client::{DirectoryError, read_answer};
use iicp_host::directory::payload::BatchTracker;
use iicp_host::metrics::TallyCounts;
use libfuzzer_sys::fuzz_target;

const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
const INTERVALS: std::ops::RangeInclusive<Duration> =
    Duration::from_millis(250)..=Duration::from_secs(300);

fuzz_target!(|input: &[u8]| {
    let [high, low, header_len, rest @ ..] = input else {
        return;
    };
    let status = 100 + u16::from_be_bytes([*high, *low]) % 900;
    let status = StatusCode::from_u16(status).expect("100..=999 is a status");
    let (header, body) = rest.split_at(usize::from(*header_len).min(rest.len()));
    let header = HeaderValue::from_bytes(header).ok();

    match read_answer(status, header.as_ref(), body) {
        Ok(answer) => {
            assert!(status.is_success());
            if let Ok(granted) = Registration::read(&answer) {
                assert!(!granted.node_token.is_empty() && granted.node_token.len() <= 4096);
                assert!(
                    granted
                        .hmac_key
                        .is_none_or(|k| !k.is_empty() && k.len() <= 4096)
                );
            }
            if let Ok(pong) = Pong::read(&answer, DEFAULT_INTERVAL, INTERVALS) {
                assert!(INTERVALS.contains(&pong.next_heartbeat));
                assert!(
                    pong.challenge
                        .is_none_or(|c| !c.is_empty() && c.len() <= 1024)
                );
            }
            let mut batches = BatchTracker::default();
            let counts = TallyCounts {
                success: 3,
                failed: 1,
                latency_ms_sum: 40,
            };
            let sent = batches.next(|| counts).cloned();
            batches.on_pong(&answer);
            if let Some(still) = batches.next(TallyCounts::default) {
                assert_eq!(
                    Some(still),
                    sent.as_ref(),
                    "only the pending batch is resent"
                );
            }
        }
        Err(DirectoryError::Status {
            status: code,
            code: error_code,
            message,
            ..
        }) => {
            assert_eq!(code, status.as_u16());
            assert!(!status.is_success());
            assert!(error_code.is_none_or(|c| c.len() <= 300));
            assert!(message.is_none_or(|m| m.len() <= 300));
        }
        Err(DirectoryError::BadResponse(_)) => assert!(status.is_success()),
        Err(DirectoryError::Network(_)) => panic!("no network here"),
    }
});
