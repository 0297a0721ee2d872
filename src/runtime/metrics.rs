//! What the sandbox counts: plugins' outbound HTTP and name lookups, and
//! compiled artifacts the cache refused.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Registry};

use crate::metric_families::{Part, counter, counter_vec, gauge};

/// The runtime families.
pub struct RuntimeMetrics {
    /// Plugins' name lookups (`runtime::host::dns`).
    pub dns: DnsMetrics,
    /// `iicp_artifact_cache_rejected_total{reason}`: cache entries refused.
    pub artifact_cache_rejected: IntCounterVec,
    http_requests: IntCounterVec,
    http_response_bytes: IntCounterVec,
}

impl Part for RuntimeMetrics {
    fn register(r: &Registry) -> Self {
        Self {
            artifact_cache_rejected: counter_vec(
                r,
                "iicp_artifact_cache_rejected_total",
                "Compiled-artifact cache entries refused and compiled again, by reason.",
                &["reason"],
            ),
            dns: DnsMetrics {
                in_flight: gauge(
                    r,
                    "iicp_dns_lookups_in_flight",
                    "Plugins' name lookups holding a blocking thread now (at most max_dns_lookups).",
                ),
                waits: counter(
                    r,
                    "iicp_dns_lookup_waits_total",
                    "Plugins' name lookups that found max_dns_lookups in flight and waited.",
                ),
            },
            http_requests: counter_vec(
                r,
                "iicp_plugin_http_requests_total",
                "Plugin outbound HTTP requests, by result (ok, denied, failed).",
                &["plugin", "result"],
            ),
            http_response_bytes: counter_vec(
                r,
                "iicp_plugin_http_response_bytes_total",
                "Response body bytes plugins received over outbound HTTP.",
                &["plugin"],
            ),
        }
    }
}

impl RuntimeMetrics {
    /// Resolves a plugin's outbound HTTP counters.
    pub fn plugin_http(&self, plugin: &str) -> PluginHttpMetrics {
        PluginHttpMetrics {
            ok: self.http_requests.with_label_values(&[plugin, "ok"]),
            denied: self.http_requests.with_label_values(&[plugin, "denied"]),
            failed: self.http_requests.with_label_values(&[plugin, "failed"]),
            response_bytes: self.http_response_bytes.with_label_values(&[plugin]),
        }
    }
}

/// Where plugins' name lookups (`runtime::host::dns`) are counted.
#[derive(Clone)]
pub struct DnsMetrics {
    /// `iicp_dns_lookups_in_flight`.
    pub in_flight: IntGauge,
    /// `iicp_dns_lookup_waits_total`.
    pub waits: IntCounter,
}

impl DnsMetrics {
    /// Metrics registered nowhere.
    pub fn detached() -> Self {
        Self {
            in_flight: IntGauge::new("dns_in_flight", "detached").expect("valid metric"),
            waits: IntCounter::new("dns_waits", "detached").expect("valid metric"),
        }
    }
}

/// A plugin's outbound HTTP counters.
#[derive(Clone)]
pub struct PluginHttpMetrics {
    /// Requests answered by the remote side.
    pub ok: IntCounter,
    /// Requests refused by the allow-list or the address check.
    pub denied: IntCounter,
    /// Requests that failed in transport (timeout, refused, protocol).
    pub failed: IntCounter,
    /// Response body bytes received.
    pub response_bytes: IntCounter,
}

impl PluginHttpMetrics {
    /// Counters registered nowhere, for calls that are not a plugin's tasks.
    pub fn detached() -> Self {
        let counter =
            || IntCounter::new("detached", "not exported").expect("valid metric definition");
        Self {
            ok: counter(),
            denied: counter(),
            failed: counter(),
            response_bytes: counter(),
        }
    }
}
