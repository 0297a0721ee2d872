//! OTLP export of the task spans (`iicp.task.validate`, `iicp.task.execute`),
//! on when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `…_TRACES_ENDPOINT`) is set, as
//! conformance §13.2 asks; a no-op otherwise. Through opentelemetry-otlp's
//! exporter: OTLP/HTTP with protobuf bodies by default, OTLP/gRPC when
//! `OTEL_EXPORTER_OTLP_PROTOCOL` (or `…_TRACES_PROTOCOL`) is `grpc`;
//! `http/json` is refused (export stays off, with a message).
//! `OTEL_EXPORTER_OTLP_HEADERS` and `OTEL_SERVICE_NAME` are honoured;
//! `OTEL_EXPORTER_OTLP_TIMEOUT` is not — the node's own `otlp_timeout_ms`
//! bounds every send, whatever the environment says.
//!
//! The trace continues the consumer's: the task's spans are children of the
//! span named by its `traceparent` (see [`join`]), and the plugin's
//! `traceparent` — for its own outbound calls — names `iicp.task.execute`.
//!
//! Export never slows a task and never grows without bound: see
//! [`export_bounds`](super::export_bounds) for the queue (spans and bytes),
//! the per-send deadline and the answer cap. Batches of at most
//! `batch_spans` go every `interval` from the batch processor's own thread.
//!
//! Only spans of this crate are exported, never log events: plugin log lines
//! (which a plugin may fill with its payload) stay out of the collector.

use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};
use serde::{Deserialize, Serialize};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::{Layer, Registry};

use super::export_bounds::{
    BoundedProcessor, Budget, CappedHttpClient, DeadlineExporter, QueueBounds,
};
use crate::protocol::trace_context::TraceContext;
use crate::settings::{Section, as_millis, check_range};

/// Bounds on the OTLP span queue and batch.
pub const SPANS_RANGE: RangeInclusive<usize> = 1..=1_000_000;
/// Bounds on the bytes of the OTLP span queue.
pub const BYTES_RANGE: RangeInclusive<usize> = (64 << 10)..=(1 << 30);
/// Bounds on the OTLP send timeout and interval, in ms.
pub const MS_RANGE: RangeInclusive<u64> = 100..=300_000;

/// The bounds of the export: the file's `[telemetry]` table (also
/// `IICP_HOST_TELEMETRY__<KEY>` and `--set telemetry.<key>=…`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExportSettings {
    /// Finished spans held for export (waiting or being sent), at most;
    /// more are dropped.
    #[serde(rename = "otlp_queue_spans")]
    pub queue_spans: usize,
    /// Estimated bytes of those spans, at most; more are dropped.
    #[serde(rename = "otlp_queue_bytes")]
    pub queue_bytes: usize,
    /// Spans per request to the collector, at most.
    #[serde(rename = "otlp_batch_spans")]
    pub batch_spans: usize,
    /// Time between sends.
    #[serde(rename = "otlp_interval_ms", with = "crate::settings::millis")]
    pub interval: Duration,
    /// Bound on one send, connection included.
    #[serde(rename = "otlp_timeout_ms", with = "crate::settings::millis")]
    pub timeout: Duration,
}

impl Default for ExportSettings {
    fn default() -> Self {
        Self {
            queue_spans: 2048,
            queue_bytes: 4 << 20,
            batch_spans: 512,
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(5),
        }
    }
}

impl Section for ExportSettings {
    const NAME: &'static str = "telemetry";

    fn validate(&self) -> Result<(), String> {
        check_range("otlp_queue_spans", self.queue_spans, &SPANS_RANGE)?;
        check_range("otlp_queue_bytes", self.queue_bytes, &BYTES_RANGE)?;
        check_range("otlp_batch_spans", self.batch_spans, &SPANS_RANGE)?;
        check_range("otlp_interval_ms", as_millis(self.interval), &MS_RANGE)?;
        check_range("otlp_timeout_ms", as_millis(self.timeout), &MS_RANGE)?;
        Ok(())
    }
}

impl ExportSettings {
    /// The most memory export can hold, for the node's worst case: the held
    /// spans' estimate twice (allocation slack), once more for their
    /// protobuf copy and once for the encoded request, plus a collector's
    /// answer (tonic's 4 MiB decode cap; 64 KiB over HTTP) and the two
    /// threads' stacks.
    pub fn worst_case_bytes(&self) -> u64 {
        4 * self.queue_bytes as u64 + (8 << 20)
    }
}

static ACTIVE: AtomicBool = AtomicBool::new(false);

/// Whether spans are being exported.
pub fn active() -> bool {
    ACTIVE.load(Ordering::Relaxed)
}

/// The running export.
pub struct Exporter {
    provider: SdkTracerProvider,
    endpoint: String,
    protocol: &'static str,
    timeout: Duration,
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

/// The OTLP transports the node speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    HttpProtobuf,
    Grpc,
}

impl Transport {
    /// The transport `OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL` names; OTLP/HTTP
    /// protobuf without one (the OTLP specification's recommended default).
    fn from_env() -> Result<Self, String> {
        match env(&[
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ]) {
            None => Ok(Self::HttpProtobuf),
            Some((_, protocol)) if protocol == "http/protobuf" => Ok(Self::HttpProtobuf),
            Some((_, protocol)) if protocol == "grpc" => Ok(Self::Grpc),
            Some((name, protocol)) => Err(format!(
                "{name}={protocol}: only http/protobuf and grpc are supported"
            )),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::HttpProtobuf => "http/protobuf",
            Self::Grpc => "grpc",
        }
    }
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
        let transport = Transport::from_env()?;
        // One worker thread of its own, so connections close and HTTP/2
        // pings answer between sends too, not only while one runs.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("otlp-export")
            .enable_all()
            .build()
            .map_err(|e| format!("OTLP export runtime: {e}"))?;
        let exporter = match transport {
            Transport::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .with_timeout(settings.timeout)
                .with_http_client(CappedHttpClient::new(settings.timeout)?)
                .build(),
            Transport::Grpc => {
                // The channel is made on the runtime its sends will run on.
                let _entered = runtime.enter();
                let builder = opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_timeout(settings.timeout);
                let builder = if endpoint.starts_with("https:") {
                    builder.with_tls_config(
                        opentelemetry_otlp::tonic_types::transport::ClientTlsConfig::new()
                            .with_webpki_roots(),
                    )
                } else {
                    builder
                };
                builder.build()
            }
        }
        .map_err(|e| format!("{variable}: {e}"))?;
        let budget = Budget::new(QueueBounds {
            spans: settings.queue_spans,
            bytes: settings.queue_bytes,
        });
        let batches = BatchConfigBuilder::default()
            .with_max_queue_size(settings.queue_spans)
            .with_max_export_batch_size(settings.batch_spans)
            .with_scheduled_delay(settings.interval)
            .build();
        let processor = BoundedProcessor {
            inner: BatchSpanProcessor::builder(DeadlineExporter {
                inner: exporter,
                runtime,
                timeout: settings.timeout,
                budget: budget.clone(),
                failing: AtomicBool::new(false),
            })
            .with_batch_config(batches)
            .build(),
            budget,
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
        let exporter = Self {
            provider,
            endpoint,
            protocol: transport.name(),
            timeout: settings.timeout,
        };
        Ok(Some((exporter, layer)))
    }

    /// The configured endpoint (no headers: they may hold credentials).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The OTLP transport, as `OTEL_EXPORTER_OTLP_PROTOCOL` spells it.
    pub fn protocol(&self) -> &'static str {
        self.protocol
    }

    /// Sends what is queued and stops, waiting at most the export timeout:
    /// a collector that does not answer costs the exit that much, no more.
    pub fn shutdown(self) {
        ACTIVE.store(false, Ordering::Relaxed);
        if let Err(error) = self.provider.shutdown_with_timeout(self.timeout) {
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
