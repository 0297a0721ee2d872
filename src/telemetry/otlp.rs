//! OTLP export of the task spans (`iicp.task.validate`, `iicp.task.execute`),
//! on when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `…_TRACES_ENDPOINT`) is set, as
//! conformance §13.2 asks; a no-op otherwise. OTLP/HTTP with protobuf
//! bodies, through opentelemetry-otlp's exporter; `OTEL_EXPORTER_OTLP_HEADERS`
//! and `OTEL_SERVICE_NAME` are honoured, `OTEL_EXPORTER_OTLP_PROTOCOL` must
//! be `http/protobuf` (gRPC would add a second HTTP/2 stack for no gain on a
//! node that already speaks HTTP/1 to its collector).
//!
//! The trace continues the consumer's: the task's spans are children of the
//! span named by its `traceparent` (see [`join`]), and the plugin's
//! `traceparent` — for its own outbound calls — names `iicp.task.execute`.
//!
//! Export never slows a task: a finished span is handed to a bounded queue
//! (`queue_spans`; when full, spans are dropped and counted, never waited
//! for), and a thread of its own sends batches of at most `batch_spans`
//! every `interval`, each send bounded by `timeout`. A collector that is
//! down costs that thread its timeouts, and nothing else.
//!
//! Only spans of this crate are exported, never log events: plugin log lines
//! (which a plugin may fill with its payload) stay out of the collector.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider, SpanData, SpanExporter,
    SpanProcessor,
};
use prometheus::{IntCounter, IntCounterVec, Opts};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::{Layer, Registry};

use crate::protocol::trace_context::TraceContext;

/// The bounds of the export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportSettings {
    /// Finished spans waiting to be sent, at most; more are dropped.
    pub queue_spans: usize,
    /// Spans per request to the collector, at most.
    pub batch_spans: usize,
    /// Time between sends.
    pub interval: Duration,
    /// Bound on one send.
    pub timeout: Duration,
}

impl Default for ExportSettings {
    fn default() -> Self {
        Self {
            queue_spans: 2048,
            batch_spans: 512,
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(5),
        }
    }
}

/// `iicp_otlp_spans_total{result}`: spans `queued` for export, `exported`,
/// `failed` (the collector refused or was unreachable); queued minus the
/// other two, minus what is in the queue, were dropped at a full queue.
pub static SPANS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    IntCounterVec::new(
        Opts::new(
            "iicp_otlp_spans_total",
            "Task spans handed to the OTLP exporter, by result (queued, exported, failed).",
        ),
        &["result"],
    )
    .expect("valid metric definition")
});

static ACTIVE: AtomicBool = AtomicBool::new(false);

/// Whether spans are being exported.
pub fn active() -> bool {
    ACTIVE.load(Ordering::Relaxed)
}

/// The running export.
pub struct Exporter {
    provider: SdkTracerProvider,
    endpoint: String,
}

/// The tracing layer that feeds the exporter.
pub type SpanLayer = Box<dyn Layer<Registry> + Send + Sync>;

/// The first non-empty variable of `names`.
fn env(names: &[&str]) -> Option<(String, String)> {
    names.iter().find_map(|name| {
        std::env::var(name)
            .ok()
            .filter(|v| !v.trim().is_empty())
            .map(|v| (name.to_string(), v))
    })
}

impl Exporter {
    /// The export the environment asks for: none without an endpoint, an
    /// error for what cannot be honoured.
    pub fn from_env(settings: &ExportSettings) -> Result<Option<(Self, SpanLayer)>, String> {
        let Some((variable, endpoint)) = env(&[
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ]) else {
            return Ok(None);
        };
        if let Some((name, protocol)) = env(&[
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ]) && protocol != "http/protobuf"
        {
            return Err(format!(
                "{name}={protocol}: only http/protobuf is supported"
            ));
        }
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_timeout(settings.timeout)
            .build()
            .map_err(|e| format!("{variable}: {e}"))?;
        let batches = BatchConfigBuilder::default()
            .with_max_queue_size(settings.queue_spans)
            .with_max_export_batch_size(settings.batch_spans)
            .with_scheduled_delay(settings.interval)
            .build();
        let processor = Queued {
            inner: BatchSpanProcessor::builder(Counted(exporter))
                .with_batch_config(batches)
                .build(),
            queued: SPANS.with_label_values(&["queued"]),
        };
        let mut resource = Resource::builder()
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
        if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
            resource = resource.with_service_name("iicp-host");
        }
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_resource(resource.build())
            .build();
        let layer = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("iicp-host"))
            .with_tracked_inactivity(false)
            .with_threads(false)
            .with_location(false)
            .with_filter(filter_fn(|meta| {
                meta.is_span() && meta.target().starts_with("iicp_host")
            }))
            .boxed();
        ACTIVE.store(true, Ordering::Relaxed);
        Ok(Some((Self { provider, endpoint }, layer)))
    }

    /// The configured endpoint (no headers: they may hold credentials).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Sends what is queued, bounded by the export timeout, and stops.
    pub fn shutdown(self) {
        ACTIVE.store(false, Ordering::Relaxed);
        if let Err(error) = self.provider.shutdown() {
            eprintln!("iicp-host: OTLP export did not flush: {error}");
        }
    }
}

/// Makes `span` a span of the task's trace — a child of the consumer's span
/// when the trace was continued, else of `local_parent` (or the root of a
/// new trace) — and adopts the ids it got into `trace`, so `X-IICP-Trace-Id`
/// and the plugin's `traceparent` name what the collector receives. Must be
/// called before `span` is entered. A no-op while nothing is exported.
pub fn join(span: &tracing::Span, trace: &mut TraceContext, local_parent: Option<&tracing::Span>) {
    if !active() {
        return;
    }
    let parent = match trace.remote_parent() {
        Some(parent) => Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from_bytes(trace.trace_id().to_be_bytes()),
            SpanId::from_bytes(parent.to_be_bytes()),
            TraceFlags::new(trace.flags()),
            true,
            trace
                .tracestate()
                .and_then(|state| state.parse::<TraceState>().ok())
                .unwrap_or_default(),
        )),
        None => local_parent.map_or_else(Context::new, OpenTelemetrySpanExt::context),
    };
    if span.set_parent(parent).is_err() {
        return;
    }
    let context = span.context();
    let own = context.span().span_context().clone();
    if own.is_valid() {
        trace.adopt(
            u128::from_be_bytes(own.trace_id().to_bytes()),
            u64::from_be_bytes(own.span_id().to_bytes()),
            own.trace_flags().to_u8(),
        );
    }
}

/// Counts what the batch processor exports.
#[derive(Debug)]
struct Counted<E>(E);

impl<E: SpanExporter> SpanExporter for Counted<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len() as u64;
        let result = self.0.export(batch).await;
        let outcome = if result.is_ok() { "exported" } else { "failed" };
        SPANS.with_label_values(&[outcome]).inc_by(spans);
        result
    }

    fn shutdown_with_timeout(&mut self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    fn force_flush(&mut self) -> OTelSdkResult {
        self.0.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.0.set_resource(resource);
    }
}

/// Counts the spans handed to the batch processor.
#[derive(Debug)]
struct Queued {
    inner: BatchSpanProcessor,
    queued: IntCounter,
}

impl SpanProcessor for Queued {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        self.queued.inc();
        self.inner.on_end(span);
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
