//! What OTLP export may cost the node, whatever the collector does: the
//! spans (and their bytes) held between a task's end and the collector's
//! answer, the time one send may take, and how much of an answer is read.
//!
//! A collector that is down, slow, or answers garbage only makes spans wait
//! and then drop: [`BoundedProcessor`] admits a finished span only while the
//! exporter holds fewer than `queue_spans` spans and `queue_bytes` bytes
//! (counting the batch being sent), and drops it otherwise — counted, never
//! waited for. [`DeadlineExporter`] gives each send `timeout` on a runtime of
//! its own, and releases the batch's share of the budget when the send ends,
//! however it ends. [`CappedHttpClient`] reads at most
//! [`MAX_ANSWER_BYTES`] of an HTTP answer and follows no redirect.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use bytes::Bytes;
use opentelemetry::Context;
use opentelemetry_http::{HttpClient, HttpError, Request, Response};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{BatchSpanProcessor, SpanData, SpanExporter, SpanProcessor};
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};

/// Bytes of a collector's HTTP answer read at most; the rest is not read
/// (the connection is dropped). A success answer is a few bytes of
/// `ExportTraceServiceResponse`, and only a failure's text is ever looked at.
pub const MAX_ANSWER_BYTES: usize = 64 << 10;

/// `iicp_otlp_spans_total{result}`: finished spans `queued` for export,
/// `dropped` at a full queue, and, of the queued, `exported` or `failed`
/// (the collector refused, was unreachable, or missed the deadline).
static SPANS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    IntCounterVec::new(
        Opts::new(
            "iicp_otlp_spans_total",
            "Task spans handed to the OTLP exporter, by result (queued, dropped, exported, failed).",
        ),
        &["result"],
    )
    .expect("valid metric definition")
});

/// `iicp_otlp_queued_spans`: spans the exporter holds (waiting or being sent).
static QUEUED_SPANS: LazyLock<IntGauge> = LazyLock::new(|| {
    IntGauge::new(
        "iicp_otlp_queued_spans",
        "Finished spans the OTLP exporter holds, waiting or being sent.",
    )
    .expect("valid metric definition")
});

/// `iicp_otlp_queued_bytes`: estimated bytes of the spans the exporter holds.
static QUEUED_BYTES: LazyLock<IntGauge> = LazyLock::new(|| {
    IntGauge::new(
        "iicp_otlp_queued_bytes",
        "Estimated bytes of the finished spans the OTLP exporter holds.",
    )
    .expect("valid metric definition")
});

/// Adds the export metrics to `registry`. They are process-wide, as the
/// exporter is: every node's registry shows the same families.
pub fn register(registry: &Registry) {
    for family in [
        Box::new(SPANS.clone()) as Box<dyn prometheus::core::Collector>,
        Box::new(QUEUED_SPANS.clone()),
        Box::new(QUEUED_BYTES.clone()),
    ] {
        registry.register(family).expect("unique metric name");
    }
}

/// What the exporter may hold at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueBounds {
    /// Spans, at most.
    pub spans: usize,
    /// Estimated bytes of those spans ([`span_bytes`]), at most.
    pub bytes: usize,
}

/// The spans and bytes the exporter holds now, against its bounds.
#[derive(Debug)]
pub struct Budget {
    bounds: QueueBounds,
    held: Mutex<(usize, usize)>,
    /// Set while spans are being dropped, so a drop episode logs once.
    dropping: AtomicBool,
}

impl Budget {
    /// An empty budget.
    pub fn new(bounds: QueueBounds) -> Arc<Self> {
        Arc::new(Self {
            bounds,
            held: Mutex::new((0, 0)),
            dropping: AtomicBool::new(false),
        })
    }

    /// Takes room for one span of `bytes`, if there is room.
    fn admit(&self, bytes: usize) -> bool {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let (spans, held_bytes) = *held;
        if spans >= self.bounds.spans || held_bytes + bytes > self.bounds.bytes {
            return false;
        }
        *held = (spans + 1, held_bytes + bytes);
        publish(*held);
        true
    }

    /// Gives back the room of `spans` spans of `bytes` in all.
    fn release(&self, spans: usize, bytes: usize) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        *held = (held.0.saturating_sub(spans), held.1.saturating_sub(bytes));
        publish(*held);
    }
}

fn publish((spans, bytes): (usize, usize)) {
    QUEUED_SPANS.set(i64::try_from(spans).unwrap_or(i64::MAX));
    QUEUED_BYTES.set(i64::try_from(bytes).unwrap_or(i64::MAX));
}

/// An estimate of the memory a finished span holds: its fixed part and
/// every string it carries. The same span always gets the same figure, so
/// what [`BoundedProcessor`] takes, [`DeadlineExporter`] gives back.
pub fn span_bytes(span: &SpanData) -> usize {
    fn attributes(list: &[opentelemetry::KeyValue]) -> usize {
        list.iter()
            .map(|kv| {
                std::mem::size_of::<opentelemetry::KeyValue>()
                    + kv.key.as_str().len()
                    + kv.value.as_str().len()
            })
            .sum()
    }
    let events: usize = span
        .events
        .iter()
        .map(|event| {
            std::mem::size_of_val(event) + event.name.len() + attributes(&event.attributes)
        })
        .sum();
    let links: usize = span
        .links
        .iter()
        .map(|link| {
            std::mem::size_of_val(link)
                + link.span_context.trace_state().header().len()
                + attributes(&link.attributes)
        })
        .sum();
    let status = match &span.status {
        opentelemetry::trace::Status::Error { description } => description.len(),
        _ => 0,
    };
    std::mem::size_of::<SpanData>()
        + span.name.len()
        + span.span_context.trace_state().header().len()
        + attributes(&span.attributes)
        + events
        + links
        + status
}

/// Admits finished spans into the batch processor while the budget has
/// room, and drops (and counts) the rest.
#[derive(Debug)]
pub struct BoundedProcessor {
    /// The batch processor; its queue holds at least `bounds.spans`, so
    /// everything admitted fits.
    pub inner: BatchSpanProcessor,
    /// Shared with the exporter, which gives room back.
    pub budget: Arc<Budget>,
}

impl SpanProcessor for BoundedProcessor {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.budget.admit(span_bytes(&span)) {
            SPANS.with_label_values(&["queued"]).inc();
            self.budget.dropping.store(false, Ordering::Relaxed);
            self.inner.on_end(span);
        } else {
            SPANS.with_label_values(&["dropped"]).inc();
            if !self.budget.dropping.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    max_spans = self.budget.bounds.spans,
                    max_bytes = self.budget.bounds.bytes,
                    "OTLP export queue full: spans are dropped until the collector catches up"
                );
            }
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Runs each send of `inner` on a runtime of its own (the batch processor's
/// thread has none, and both transports need one), within `timeout`, then
/// counts it and gives its spans' room back.
#[derive(Debug)]
pub struct DeadlineExporter<E> {
    /// The OTLP exporter.
    pub inner: E,
    /// Where sends run.
    pub runtime: tokio::runtime::Runtime,
    /// Bound on one send, from the first byte to the answer.
    pub timeout: Duration,
    /// Shared with the processor.
    pub budget: Arc<Budget>,
    /// Set while sends fail, so an outage logs once, and its end once.
    pub failing: AtomicBool,
}

impl<E: SpanExporter> SpanExporter for DeadlineExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        let bytes: usize = batch.iter().map(span_bytes).sum();
        let result = self.runtime.block_on(async {
            tokio::time::timeout(self.timeout, self.inner.export(batch))
                .await
                .unwrap_or(Err(OTelSdkError::Timeout(self.timeout)))
        });
        self.budget.release(spans, bytes);
        let outcome = if result.is_ok() { "exported" } else { "failed" };
        SPANS.with_label_values(&[outcome]).inc_by(spans as u64);
        match &result {
            Err(error) if !self.failing.swap(true, Ordering::Relaxed) => {
                tracing::warn!(error = %brief(error), "OTLP export failing");
            }
            Ok(()) if self.failing.swap(false, Ordering::Relaxed) => {
                tracing::info!("OTLP export recovered");
            }
            _ => {}
        }
        result
    }

    fn shutdown_with_timeout(&mut self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&mut self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The first line of an export error, at most 200 characters: a
/// collector's answer text is quoted in it, and a log line is not the
/// place for all of it.
fn brief(error: &OTelSdkError) -> String {
    let text = error.to_string();
    let line = text.lines().next().unwrap_or_default();
    line.chars().take(200).collect()
}

/// The HTTP client of OTLP/HTTP export: the node's reqwest, with the send
/// deadline, no redirects, at most one idle connection, and at most
/// [`MAX_ANSWER_BYTES`] of an answer read.
#[derive(Debug)]
pub struct CappedHttpClient {
    client: reqwest::Client,
}

impl CappedHttpClient {
    /// A client whose every request ends within `timeout`.
    pub fn new(timeout: Duration) -> Result<Self, String> {
        reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(1)
            .build()
            .map(|client| Self { client })
            .map_err(|e| format!("OTLP HTTP client: {e}"))
    }
}

#[async_trait::async_trait]
impl HttpClient for CappedHttpClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let mut response = self.client.execute(request.try_into()?).await?;
        let status = response.status();
        let mut answer = Vec::new();
        while let Some(chunk) = response.chunk().await? {
            let room = MAX_ANSWER_BYTES - answer.len();
            answer.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if chunk.len() >= room {
                break;
            }
        }
        Ok(Response::builder().status(status).body(answer.into())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::KeyValue;
    use opentelemetry::trace::{SpanContext, SpanKind, Status, TraceState};
    use opentelemetry_sdk::trace::{SpanEvents, SpanLinks};
    use std::borrow::Cow;
    use std::time::SystemTime;

    fn span(attribute: &str, trace_state: &str) -> SpanData {
        SpanData {
            span_context: SpanContext::new(
                opentelemetry::trace::TraceId::from(1u128),
                opentelemetry::trace::SpanId::from(1u64),
                opentelemetry::trace::TraceFlags::SAMPLED,
                true,
                trace_state.parse::<TraceState>().unwrap(),
            ),
            parent_span_id: opentelemetry::trace::SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Internal,
            name: Cow::Borrowed("iicp.task.execute"),
            start_time: SystemTime::UNIX_EPOCH,
            end_time: SystemTime::UNIX_EPOCH,
            attributes: vec![KeyValue::new("iicp.task_id", attribute.to_string())],
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Unset,
            instrumentation_scope: Default::default(),
        }
    }

    #[test]
    fn a_span_weighs_what_its_strings_weigh() {
        let small = span_bytes(&span("t", ""));
        assert!(small > std::mem::size_of::<SpanData>());
        assert_eq!(span_bytes(&span(&"t".repeat(1001), "")), small + 1000);
        let state = "vendor=".to_string() + &"v".repeat(200);
        assert_eq!(span_bytes(&span("t", &state)), small + state.len());
    }

    #[test]
    fn the_budget_bounds_spans_and_bytes_and_gives_room_back() {
        let budget = Budget::new(QueueBounds {
            spans: 3,
            bytes: 100,
        });
        assert!(budget.admit(60));
        assert!(!budget.admit(41), "bytes bound");
        assert!(budget.admit(20));
        assert!(budget.admit(20));
        assert!(!budget.admit(0), "count bound");
        budget.release(2, 80);
        assert!(budget.admit(80));
        assert!(!budget.admit(1));
        budget.release(5, 500);
        assert_eq!(*budget.held.lock().unwrap(), (0, 0));
    }
}
