//! Credit receipts (`protocol.md` §5.5): after each successful task the node
//! claims its credits with `POST {dir}/v1/credits/award`, signed with the
//! directory's HMAC key. Off the task path: tasks only offer a receipt to a
//! queue bounded in count *and* bytes (a receipt holds its task's result,
//! up to 4 MiB, until it is hashed and sent) and never wait; a receipt that
//! does not fit is dropped and counted. One background worker sends them in
//! order, one at a time; after a failed send it waits like the lifecycle
//! does (floor, jittered exponential backoff, reset by a success), so a
//! refusing directory sees at most the lifecycle's retry rate from here.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;
use serde_json::value::RawValue;
use tokio::sync::mpsc;

use super::backoff::Backoff;
use super::client::DirectoryClient;
use super::identity::{SharedCredentials, snapshot};
use super::settings::{QueueBounds, Timing};
use super::signing::{hmac_hex, receipt_message, response_hash};
use crate::directory::metrics::DirectoryMetrics;

/// How long a receipt stays valid.
const RECEIPT_TTL: Duration = Duration::from_secs(300);

/// One successful task to claim credits for.
#[derive(Debug)]
pub struct ReceiptJob {
    /// The task id.
    pub task_id: String,
    /// `usage.total_tokens`, or 0.
    pub tokens_used: u64,
    /// The result the consumer received (hashed into `response_hash`).
    pub result: Box<RawValue>,
    /// The consumer's `source_node_id`, only when the caller proved to be
    /// that node (a verified consumer token's `sub`): an unverified claim
    /// could pin a task on another node at the directory.
    pub querying_node_id: Option<String>,
}

impl ReceiptJob {
    /// The bytes it holds while queued.
    fn bytes(&self) -> usize {
        self.task_id.len()
            + self.result.get().len()
            + self.querying_node_id.as_ref().map_or(0, String::len)
    }
}

/// The task path's side of the queue.
#[derive(Clone)]
pub struct ReceiptQueue {
    sender: mpsc::Sender<ReceiptJob>,
    queued_bytes: Arc<AtomicUsize>,
    max_bytes: usize,
    metrics: Arc<DirectoryMetrics>,
}

impl ReceiptQueue {
    /// Offers a receipt; never waits.
    pub fn submit(&self, job: ReceiptJob) {
        let bytes = job.bytes();
        let before = self.queued_bytes.fetch_add(bytes, Ordering::AcqRel);
        let fits = before + bytes <= self.max_bytes;
        if !fits || self.sender.try_send(job).is_err() {
            self.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
            self.metrics.receipts.with_label_values(&["dropped"]).inc();
            return;
        }
        self.metrics.receipt_queue_bytes.add(bytes as i64);
    }
}

/// Starts the sender, with the queue bounded by `bounds` and the pause
/// after a failure set by `timing`.
pub fn start(
    client: DirectoryClient,
    credentials: SharedCredentials,
    metrics: Arc<DirectoryMetrics>,
    bounds: QueueBounds,
    timing: Timing,
) -> ReceiptQueue {
    let (sender, mut receiver) = mpsc::channel::<ReceiptJob>(bounds.count.max(1));
    let queued_bytes = Arc::new(AtomicUsize::new(0));
    let (worker_metrics, worker_bytes) = (metrics.clone(), queued_bytes.clone());
    tokio::spawn(async move {
        let mut backoff = Backoff::new(timing.backoff_initial, timing.backoff_max);
        while let Some(job) = receiver.recv().await {
            let bytes = job.bytes();
            let outcome = send(&client, &credentials, job).await;
            worker_bytes.fetch_sub(bytes, Ordering::AcqRel);
            worker_metrics.receipt_queue_bytes.sub(bytes as i64);
            worker_metrics.receipts.with_label_values(&[outcome]).inc();
            if outcome == "failed" {
                tokio::time::sleep(backoff.wait().max(timing.retry_floor)).await;
            } else {
                backoff.reset();
            }
        }
    });
    ReceiptQueue {
        sender,
        queued_bytes,
        max_bytes: bounds.bytes,
        metrics,
    }
}

async fn send(
    client: &DirectoryClient,
    credentials: &SharedCredentials,
    job: ReceiptJob,
) -> &'static str {
    let credentials = snapshot(credentials);
    let (Some(token), Some(key)) = (
        credentials.node_token.as_deref(),
        credentials.verification_key(),
    ) else {
        return "skipped";
    };
    let result: serde_json::Value = serde_json::from_str(job.result.get()).unwrap_or_default();
    let hash = response_hash(&result);
    // 122 random bits from the OS generator, as 32 hex digits (the Rust
    // directory wants at least 32 characters).
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    let signature = hmac_hex(
        key,
        &receipt_message(
            &job.task_id,
            job.tokens_used,
            &nonce,
            &hash,
            job.querying_node_id.as_deref(),
        ),
    );
    let mut body = json!({
        "node_id": credentials.node_id,
        "task_id": job.task_id,
        "tokens_used": job.tokens_used,
        "amount": job.tokens_used.max(1) as f64 / 1000.0,
        "nonce": nonce,
        "expires_at": rfc3339(SystemTime::now() + RECEIPT_TTL),
        "signature": signature,
        "response_hash": hash,
        "reason": "task_completion",
    });
    if let Some(querying) = job.querying_node_id.filter(|q| !q.is_empty()) {
        body["querying_node_id"] = json!(querying);
    }
    match client.post("credits/award", Some(token), &body).await {
        Ok(_) => "sent",
        Err(error) => {
            tracing::debug!(task_id = %body["task_id"], %error, "credit receipt refused");
            "failed"
        }
    }
}

/// RFC 3339 UTC timestamp with second precision.
pub fn rfc3339(time: SystemTime) -> String {
    let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_795_861_845)),
            "2026-11-28T10:30:45Z"
        );
    }
}
