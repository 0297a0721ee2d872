//! Building blocks of the node's Prometheus metrics, below every folder:
//! each folder defines its own families with these builders and registers
//! them on the node's one [`Registry`] (`crate::metrics` composes them).
//!
//! A family's definition is static, so a failure to build or register it
//! is a programming error (a bad name or the same name twice) and panics.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// The metric families of one folder, registered together on first use
/// (see `crate::metrics::Metrics::part`): folders above the metrics layer
/// define theirs this way, so the composer never names them.
pub trait Part: Send + Sync + 'static {
    /// Registers the folder's families on `registry`.
    fn register(registry: &Registry) -> Self;
}

/// An integer counter.
pub fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    registered(registry, IntCounter::new(name, help))
}

/// An integer gauge.
pub fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    registered(registry, IntGauge::new(name, help))
}

/// An integer counter with `labels`.
pub fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    registered(registry, IntCounterVec::new(Opts::new(name, help), labels))
}

/// An integer gauge with `labels`.
pub fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    registered(registry, IntGaugeVec::new(Opts::new(name, help), labels))
}

/// A histogram with `buckets`.
pub fn histogram(registry: &Registry, name: &str, help: &str, buckets: &[f64]) -> Histogram {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    registered(registry, Histogram::with_opts(opts))
}

/// A histogram with `buckets` and `labels`.
pub fn histogram_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    buckets: &[f64],
    labels: &[&str],
) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    registered(registry, HistogramVec::new(opts, labels))
}

/// A counter family whose `label` takes only `values`, each exported from
/// the start at 0, so `increase()` sees the first event.
pub fn seeded_counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    label: &str,
    values: &[&str],
) -> IntCounterVec {
    let metric = counter_vec(registry, name, help, &[label]);
    for value in values {
        metric.with_label_values(&[value]);
    }
    metric
}

fn registered<M>(registry: &Registry, built: prometheus::Result<M>) -> M
where
    M: prometheus::core::Collector + Clone + 'static,
{
    let metric = built.expect("valid metric definition");
    registry
        .register(Box::new(metric.clone()))
        .expect("unique metric name");
    metric
}
