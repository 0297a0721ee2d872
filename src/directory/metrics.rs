//! What keeping the node registered with its directory counts.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Registry};

use crate::metric_families::{Part, counter, counter_vec, gauge};

/// The directory families.
pub struct DirectoryMetrics {
    /// `iicp_heartbeat_failures_total`.
    pub heartbeat_failures: IntCounter,
    /// `iicp_heartbeats_total` (accepted).
    pub heartbeats: IntCounter,
    /// `iicp_directory_registered` (0 or 1).
    pub directory_registered: IntGauge,
    /// `iicp_registrations_total{result}`.
    pub registrations: IntCounterVec,
    /// `iicp_credential_writes_total`: writes of the stored directory credentials.
    pub credential_writes: IntCounter,
    /// `iicp_credit_receipts_total{result}`: sent, failed, dropped, skipped.
    pub receipts: IntCounterVec,
    /// `iicp_credit_receipt_queue_bytes`: bytes of receipts waiting to be sent.
    pub receipt_queue_bytes: IntGauge,
    /// `iicp_directory_key_fetches_total{result}`: ok, error.
    pub directory_key_fetches: IntCounterVec,
}

impl Part for DirectoryMetrics {
    fn register(r: &Registry) -> Self {
        Self {
            heartbeat_failures: counter(
                r,
                "iicp_heartbeat_failures_total",
                "Heartbeats that got no valid answer from the directory.",
            ),
            heartbeats: counter(
                r,
                "iicp_heartbeats_total",
                "Heartbeats the directory accepted.",
            ),
            directory_registered: gauge(
                r,
                "iicp_directory_registered",
                "1 while the directory holds a valid registration of this node.",
            ),
            registrations: counter_vec(
                r,
                "iicp_registrations_total",
                "Registration attempts, by result.",
                &["result"],
            ),
            credential_writes: counter(
                r,
                "iicp_credential_writes_total",
                "Writes of the stored directory credentials (only changes, rate-limited).",
            ),
            receipt_queue_bytes: gauge(
                r,
                "iicp_credit_receipt_queue_bytes",
                "Bytes (task ids and results) of credit receipts waiting to be sent.",
            ),
            receipts: counter_vec(
                r,
                "iicp_credit_receipts_total",
                "Credit receipts, by outcome (sent, failed, dropped, skipped).",
                &["result"],
            ),
            directory_key_fetches: counter_vec(
                r,
                "iicp_directory_key_fetches_total",
                "Fetches of the directory's consumer-token key, by result.",
                &["result"],
            ),
        }
    }
}
