//! What leaves the process about its own work: log lines on stderr
//! (readable text for people by default, one JSON object per line for
//! machines; level filtering follows `RUST_LOG`, default `info`), and, when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, the task spans over OTLP
//! ([`otlp`]).
//!
//! Task payloads and tokens are never logged anywhere in the node; tasks are
//! identified by `task_id` only.

pub mod export_bounds;
pub mod otlp;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// How log lines are written (to stderr).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Installed telemetry; [`Telemetry::shutdown`] flushes what is queued.
#[must_use = "shut it down at exit, or queued spans are lost"]
pub struct Telemetry {
    exporter: Option<otlp::Exporter>,
}

impl Telemetry {
    /// Flushes queued spans (bounded by the export timeout) and stops the
    /// exporter. Call outside the async runtime: it blocks.
    pub fn shutdown(self) {
        if let Some(exporter) = self.exporter {
            exporter.shutdown();
        }
    }
}

/// Installs the global subscriber: logs, plus OTLP export when the
/// environment asks for it. Calling it twice keeps the first one. Call it
/// outside the async runtime: the exporter runs on a thread of its own.
pub fn init(format: LogFormat, export: &otlp::ExportSettings) -> Telemetry {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = match format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => logs
            .json()
            .with_current_span(false)
            .with_filter(filter)
            .boxed(),
    };
    let mut layers = vec![logs];
    let exporter = match otlp::Exporter::from_env(export) {
        Ok(Some((exporter, spans))) => {
            layers.push(spans);
            Some(exporter)
        }
        Ok(None) => None,
        Err(why) => {
            eprintln!("iicp-host: OTLP export is off: {why}");
            None
        }
    };
    let _ = tracing_subscriber::registry().with(layers).try_init();
    if let Some(exporter) = &exporter {
        tracing::info!(
            endpoint = exporter.endpoint(),
            protocol = exporter.protocol(),
            "exporting task spans over OTLP"
        );
    }
    Telemetry { exporter }
}
