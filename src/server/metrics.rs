//! What the front door counts: tasks by plugin and intent (the conformance
//! names), per-plugin instance and admission figures, connections, replays,
//! origins, answers waiting on clients, authentication and idempotent ids.
//!
//! Label children for each (plugin, intent) pair are resolved once when a
//! plugin is installed, so the task path only bumps atomics.

use std::sync::Mutex;

use prometheus::{
    Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry,
};

use crate::metric_families::{Part, counter, counter_vec, gauge, gauge_vec, histogram_vec};

/// Buckets of `iicp_task_latency_ms` (`iicp-dir.md` §3.8).
const LATENCY_BUCKETS_MS: &[f64] = &[
    10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 30000.0,
];
/// Buckets of instantiation time, in seconds (10 µs .. 100 ms).
const INSTANTIATION_BUCKETS_S: &[f64] = &[
    1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3, 2.5e-2, 1e-1,
];
/// Buckets of peak linear memory per task, in bytes (64 KiB .. 1 GiB).
const MEMORY_BUCKETS_BYTES: &[f64] = &[
    65536.0,
    262144.0,
    1048576.0,
    4194304.0,
    16777216.0,
    67108864.0,
    268435456.0,
    1073741824.0,
];

/// The server families.
pub struct ServerMetrics {
    tasks: IntCounterVec,
    latency: HistogramVec,
    tokens: IntCounterVec,
    instantiation: HistogramVec,
    memory: HistogramVec,
    host_memory: HistogramVec,
    idle_instances: IntGaugeVec,
    instances_retired: IntCounterVec,
    traps: IntCounterVec,
    log_dropped: IntCounterVec,
    capacity_rejections: IntCounterVec,
    qos_waits: IntCounterVec,
    unauthorized: IntCounterVec,
    plugin_info: IntGaugeVec,
    /// The label sets of `iicp_plugin_info` now exported.
    plugin_info_served: Mutex<std::collections::HashSet<PluginInfoLabels>>,
    /// `iicp_nonce_replays_total`.
    pub replays: IntCounter,
    /// `iicp_nonce_cache_full_total`.
    pub nonce_cache_full: IntCounter,
    /// `iicp_tool_execution_denied_total`.
    pub tool_execution_denied: IntCounter,
    /// `iicp_origin_rate_limited_total`.
    pub origin_rate_limited: IntCounter,
    /// `iicp_origin_windows` (set at scrape time): origins tracked.
    pub origin_windows: IntGauge,
    /// `iicp_origin_windows_forgotten_total`: windows dropped to make room.
    pub origin_windows_forgotten: IntCounter,
    /// `iicp_unsent_answer_bytes`: answers not yet taken by their clients.
    pub unsent_answer_bytes: IntGauge,
    /// `iicp_unsent_answer_refusals_total`: answers replaced by a 503
    /// because the unsent-answer budget was full.
    pub unsent_answer_refusals: IntCounter,
    /// `iicp_nonce_cache_entries` (set at scrape time).
    pub nonce_cache_entries: IntGauge,
    /// `iicp_qos_waiting` (set at scrape time).
    pub qos_waiting: IntGauge,
    /// `iicp_nonce_cache_capacity`: the cap on remembered nonces.
    pub nonce_cache_capacity: IntGauge,
    /// `iicp_active_jobs` (set at scrape time).
    pub active_jobs: IntGauge,
    /// `iicp_max_concurrent`.
    pub max_concurrent: IntGauge,
    /// `iicp_drain_refusals_total{reason}`: tasks refused with 503
    /// `IICP-E024`.
    pub drain_refusals: IntCounterVec,
    /// `iicp_task_auth_total{result}`: tasks accepted by the auth mode
    /// (by how: operator, directory_token, consumer) or refused (by reason).
    pub task_auth: IntCounterVec,
    /// Idempotent task ids.
    pub idempotency: IdempotencyMetrics,
    connections_open: IntGaugeVec,
    connections_refused: IntCounterVec,
    connection_timeouts: IntCounterVec,
    draining_refusals: IntCounterVec,
    /// `iicp_connection_timeouts_total{listener="public",kind="body"}`:
    /// task bodies that did not arrive within the body-read deadline.
    pub body_read_timeouts: IntCounter,
}

impl Part for ServerMetrics {
    fn register(r: &Registry) -> Self {
        let plugin_intent = &["plugin", "intent"];
        let connection_timeouts = counter_vec(
            r,
            "iicp_connection_timeouts_total",
            "Connections or requests ended by a deadline, by kind (header, body, idle).",
            &["listener", "kind"],
        );
        Self {
            tasks: counter_vec(
                r,
                "iicp_tasks_total",
                "Tasks run, by outcome.",
                &["plugin", "intent", "status"],
            ),
            latency: histogram_vec(
                r,
                "iicp_task_latency_ms",
                "Task latency from receipt to response, in milliseconds.",
                LATENCY_BUCKETS_MS,
                plugin_intent,
            ),
            tokens: counter_vec(
                r,
                "iicp_tokens_used_total",
                "Tokens reported by plugins.",
                plugin_intent,
            ),
            instantiation: histogram_vec(
                r,
                "iicp_plugin_instantiation_seconds",
                "Time to create a fresh store and plugin instance for a task.",
                INSTANTIATION_BUCKETS_S,
                &["plugin"],
            ),
            memory: histogram_vec(
                r,
                "iicp_plugin_memory_bytes",
                "Peak linear memory of a task's instance.",
                MEMORY_BUCKETS_BYTES,
                &["plugin"],
            ),
            host_memory: histogram_vec(
                r,
                "iicp_plugin_host_memory_bytes",
                "Host memory a task was charged for (wasi:http fields, request strings, body buffers).",
                MEMORY_BUCKETS_BYTES,
                &["plugin"],
            ),
            idle_instances: gauge_vec(
                r,
                "iicp_plugin_idle_instances",
                "Reused instances waiting for a task (plugins with instance_reuse > 1).",
                &["plugin"],
            ),
            instances_retired: counter_vec(
                r,
                "iicp_plugin_instances_retired_total",
                "Reused instances not given another task, by reason (held_resources: it ended a task still holding host resources).",
                &["plugin", "reason"],
            ),
            traps: counter_vec(
                r,
                "iicp_plugin_traps_total",
                "Plugin instances stopped by a trap, by kind.",
                &["plugin", "kind"],
            ),
            log_dropped: counter_vec(
                r,
                "iicp_plugin_log_lines_dropped_total",
                "Plugin log lines dropped by the per-task budget.",
                &["plugin"],
            ),
            capacity_rejections: counter_vec(
                r,
                "iicp_capacity_rejections_total",
                "Tasks refused with 429 because every slot was busy.",
                &["plugin"],
            ),
            qos_waits: counter_vec(
                r,
                "iicp_qos_waits_total",
                "Realtime and interactive tasks that found the gates full, by outcome (admitted, expired, waiting_room_full).",
                &["plugin", "outcome"],
            ),
            unauthorized: counter_vec(
                r,
                "iicp_unauthorized_total",
                "Tasks refused with 401 because the tenant token was missing or wrong.",
                &["plugin"],
            ),
            drain_refusals: counter_vec(
                r,
                "iicp_drain_refusals_total",
                "Tasks refused with 503 IICP-E024 because the node or their plugin drains, by reason.",
                &["reason"],
            ),
            task_auth: counter_vec(
                r,
                "iicp_task_auth_total",
                "Task authentication outcomes: accepted_<how> (operator, directory_token, consumer) or the refusal's reason.",
                &["result"],
            ),
            plugin_info: gauge_vec(
                r,
                "iicp_plugin_info",
                "Loaded plugins (value 1).",
                &["plugin", "name", "version", "sha256"],
            ),
            plugin_info_served: Mutex::default(),
            connections_open: gauge_vec(
                r,
                "iicp_connections_open",
                "HTTP connections open now.",
                &["listener"],
            ),
            connections_refused: counter_vec(
                r,
                "iicp_connections_refused_total",
                "Connections refused with 503 because the listener was at its connection cap.",
                &["listener"],
            ),
            body_read_timeouts: connection_timeouts.with_label_values(&["public", "body"]),
            connection_timeouts,
            draining_refusals: counter_vec(
                r,
                "iicp_draining_refusals_total",
                "Requests answered 503 IICP-E024 because the node was shutting down.",
                &["listener"],
            ),

            replays: counter(
                r,
                "iicp_nonce_replays_total",
                "Tasks refused because their nonce was replayed.",
            ),
            nonce_cache_full: counter(
                r,
                "iicp_nonce_cache_full_total",
                "Nonced tasks refused because the replay cache was at its cap.",
            ),
            tool_execution_denied: counter(
                r,
                "iicp_tool_execution_denied_total",
                "Tool-domain tasks refused because the policy does not allow tool execution.",
            ),
            origin_rate_limited: counter(
                r,
                "iicp_origin_rate_limited_total",
                "Tasks refused because their Origin used its window.",
            ),
            origin_windows: gauge(
                r,
                "iicp_origin_windows",
                "Browser origins whose task window is tracked.",
            ),
            origin_windows_forgotten: counter(
                r,
                "iicp_origin_windows_forgotten_total",
                "Origin windows forgotten, least recently used first, to stay within the tracked limit.",
            ),
            unsent_answer_bytes: gauge(
                r,
                "iicp_unsent_answer_bytes",
                "Bytes of answers produced but not yet taken by their clients.",
            ),
            unsent_answer_refusals: counter(
                r,
                "iicp_unsent_answer_refusals_total",
                "Answers replaced by a 503 because answers waiting on clients filled their budget.",
            ),
            nonce_cache_entries: gauge(
                r,
                "iicp_nonce_cache_entries",
                "Nonces remembered for replay protection.",
            ),
            qos_waiting: gauge(
                r,
                "iicp_qos_waiting",
                "Tasks waiting for a slot right now (they hold none).",
            ),
            nonce_cache_capacity: gauge(
                r,
                "iicp_nonce_cache_capacity",
                "Most nonces the replay cache remembers.",
            ),
            active_jobs: gauge(r, "iicp_active_jobs", "Tasks holding a slot right now."),
            max_concurrent: gauge(r, "iicp_max_concurrent", "Task slots of the node."),
            idempotency: {
                let outcomes = counter_vec(
                    r,
                    "iicp_idempotency_total",
                    "Duplicate task ids, by outcome (replayed, waited, conflict, forgotten), and anonymous tasks run unscoped.",
                    &["outcome"],
                );
                let evictions = counter_vec(
                    r,
                    "iicp_idempotency_evictions_total",
                    "Task-id cache evictions, by kind (answer: dropped to fit the bytes; entry: dropped to fit the bounds).",
                    &["kind"],
                );
                IdempotencyMetrics {
                    replayed: outcomes.with_label_values(&["replayed"]),
                    waited: outcomes.with_label_values(&["waited"]),
                    conflict: outcomes.with_label_values(&["conflict"]),
                    forgotten: outcomes.with_label_values(&["forgotten"]),
                    unscoped: outcomes.with_label_values(&["unscoped"]),
                    entries: gauge(
                        r,
                        "iicp_idempotency_entries",
                        "Task ids remembered (running and answered).",
                    ),
                    bytes: gauge(
                        r,
                        "iicp_idempotency_bytes",
                        "Bytes of remembered task ids and answers.",
                    ),
                    evictions: EvictionCounters {
                        answers: evictions.with_label_values(&["answer"]),
                        entries: evictions.with_label_values(&["entry"]),
                    },
                }
            },
        }
    }
}

impl ServerMetrics {
    /// The connection metrics of the listener called `listener`.
    pub fn edge(&self, listener: &'static str) -> EdgeMetrics {
        EdgeMetrics {
            open: self.connections_open.with_label_values(&[listener]),
            refused: self.connections_refused.with_label_values(&[listener]),
            draining_refusals: self.draining_refusals.with_label_values(&[listener]),
            timeouts: self.connection_timeouts.clone(),
            listener,
        }
    }

    /// Resolves the metrics of one plugin.
    pub fn plugin(&self, plugin: &str) -> PluginMetrics {
        PluginMetrics {
            plugin: plugin.to_string(),
            traps: self.traps.clone(),
            instantiation_s: self.instantiation.with_label_values(&[plugin]),
            memory_bytes: self.memory.with_label_values(&[plugin]),
            host_memory_bytes: self.host_memory.with_label_values(&[plugin]),
            idle_instances: self.idle_instances.with_label_values(&[plugin]),
            retired_holding_resources: self
                .instances_retired
                .with_label_values(&[plugin, "held_resources"]),
            log_lines_dropped: self.log_dropped.with_label_values(&[plugin]),
            capacity_rejections: self.capacity_rejections.with_label_values(&[plugin]),
            qos_waits_admitted: self.qos_waits.with_label_values(&[plugin, "admitted"]),
            qos_waits_expired: self.qos_waits.with_label_values(&[plugin, "expired"]),
            qos_waiting_room_full: self
                .qos_waits
                .with_label_values(&[plugin, "waiting_room_full"]),
            unauthorized: self.unauthorized.with_label_values(&[plugin]),
        }
    }

    /// Makes `iicp_plugin_info` show exactly the plugin versions in
    /// `served` (called whenever a routing table starts serving): versions
    /// no longer served lose their series instead of lingering as stale 1s.
    pub fn plugins_served(&self, served: Vec<PluginInfoLabels>) {
        let mut exported = self
            .plugin_info_served
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let serving: std::collections::HashSet<PluginInfoLabels> = served.into_iter().collect();
        for gone in exported.iter().filter(|labels| !serving.contains(*labels)) {
            let _ = self.plugin_info.remove_label_values(&label_refs(gone));
        }
        for labels in &serving {
            self.plugin_info
                .with_label_values(&label_refs(labels))
                .set(1);
        }
        *exported = serving;
    }

    /// The delta form of [`Self::plugins_served`]: the versions in `gone`
    /// are no longer served, those in `new` now are (a reload of one plugin
    /// among thousands touches two series, not thousands).
    pub fn plugin_versions_changed(&self, gone: Vec<PluginInfoLabels>, new: Vec<PluginInfoLabels>) {
        let mut exported = self
            .plugin_info_served
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for labels in gone {
            if !new.contains(&labels) && exported.remove(&labels) {
                let _ = self.plugin_info.remove_label_values(&label_refs(&labels));
            }
        }
        for labels in new {
            self.plugin_info
                .with_label_values(&label_refs(&labels))
                .set(1);
            exported.insert(labels);
        }
    }

    /// Resolves the metrics of one (plugin, intent) pair.
    pub fn intent(&self, plugin: &str, intent: &str) -> IntentMetrics {
        IntentMetrics {
            success: self.tasks.with_label_values(&[plugin, intent, "success"]),
            error: self.tasks.with_label_values(&[plugin, intent, "error"]),
            timeout: self.tasks.with_label_values(&[plugin, intent, "timeout"]),
            latency_ms: self.latency.with_label_values(&[plugin, intent]),
            tokens: self.tokens.with_label_values(&[plugin, intent]),
        }
    }
}

/// One listener's connection metrics.
#[derive(Clone)]
pub struct EdgeMetrics {
    /// Connections open now.
    pub open: IntGauge,
    /// Connections refused at the connection cap.
    pub refused: IntCounter,
    /// Requests answered 503 because the node was draining.
    pub draining_refusals: IntCounter,
    timeouts: IntCounterVec,
    listener: &'static str,
}

impl EdgeMetrics {
    /// Connections closed by the deadline of `kind` (header, idle).
    pub fn timeout(&self, kind: &str) -> IntCounter {
        self.timeouts.with_label_values(&[self.listener, kind])
    }
}

/// The labels of one `iicp_plugin_info` series: plugin id, name, version,
/// sha256.
pub type PluginInfoLabels = [String; 4];

/// What idempotent task ids did (`iicp_idempotency_total{outcome}`), and the
/// cache's size and evictions.
pub struct IdempotencyMetrics {
    /// A duplicate got the first attempt's answer.
    pub replayed: IntCounter,
    /// A duplicate waited for the first attempt.
    pub waited: IntCounter,
    /// Same id, other content: 409.
    pub conflict: IntCounter,
    /// Same id, answer no longer kept: 409.
    pub forgotten: IntCounter,
    /// An anonymous task no scope could be vouched for (a relayed clear
    /// task): run without claiming its id.
    pub unscoped: IntCounter,
    /// `iicp_idempotency_entries` (set at scrape time).
    pub entries: IntGauge,
    /// `iicp_idempotency_bytes` (set at scrape time).
    pub bytes: IntGauge,
    /// `iicp_idempotency_evictions_total{kind}`.
    pub evictions: EvictionCounters,
}

/// Where the task-id cache (`server::idempotency`) counts what it drops.
#[derive(Clone)]
pub struct EvictionCounters {
    /// Answers dropped to stay within the byte bound.
    pub answers: IntCounter,
    /// Entries dropped to stay within the bounds.
    pub entries: IntCounter,
}

/// Pre-resolved metrics for one (plugin, intent) pair.
#[derive(Clone)]
pub struct IntentMetrics {
    /// Tasks that succeeded.
    pub success: IntCounter,
    /// Tasks that failed other than by timeout.
    pub error: IntCounter,
    /// Tasks that timed out.
    pub timeout: IntCounter,
    /// Task latency in ms.
    pub latency_ms: Histogram,
    /// Tokens reported by the plugin.
    pub tokens: IntCounter,
}

/// Pre-resolved metrics for one plugin.
#[derive(Clone)]
pub struct PluginMetrics {
    plugin: String,
    traps: IntCounterVec,
    /// Store creation plus instantiation, in seconds.
    pub instantiation_s: Histogram,
    /// Peak linear memory per task, in bytes.
    pub memory_bytes: Histogram,
    /// Host memory charged per task, in bytes.
    pub host_memory_bytes: Histogram,
    /// Reused instances waiting for a task (set at scrape time).
    pub idle_instances: IntGauge,
    /// Reused instances retired because they ended a task still holding
    /// host resources.
    pub retired_holding_resources: IntCounter,
    /// Log lines dropped by the per-task budget.
    pub log_lines_dropped: IntCounter,
    /// Tasks refused with 429 for lack of a slot.
    pub capacity_rejections: IntCounter,
    /// Tasks that waited for a slot and got one.
    pub qos_waits_admitted: IntCounter,
    /// Tasks that waited for a slot until their wait or deadline ran out.
    pub qos_waits_expired: IntCounter,
    /// Tasks that could have waited but found the waiting room full.
    pub qos_waiting_room_full: IntCounter,
    /// Tasks refused with 401 (no or wrong tenant token).
    pub unauthorized: IntCounter,
}

impl PluginMetrics {
    /// Counts a trap of `kind`.
    pub fn trap(&self, kind: &str) {
        self.traps
            .with_label_values(&[self.plugin.as_str(), kind])
            .inc();
    }
}

fn label_refs(labels: &PluginInfoLabels) -> [&str; 4] {
    [&labels[0], &labels[1], &labels[2], &labels[3]]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    #[test]
    fn resolved_children_show_up_in_the_exposition() {
        let registry = Metrics::new();
        let metrics = registry.part::<ServerMetrics>();
        let intent = metrics.intent("echo", "urn:x");
        intent.success.inc();
        intent.latency_ms.observe(3.0);
        metrics.plugin("echo").trap("unreachable");
        let text = String::from_utf8(registry.render()).unwrap();
        assert!(
            text.contains(r#"iicp_tasks_total{intent="urn:x",plugin="echo",status="success"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"iicp_task_latency_ms_bucket{intent="urn:x",plugin="echo",le="10"} 1"#)
        );
        assert!(text.contains(r#"iicp_plugin_traps_total{kind="unreachable",plugin="echo"} 1"#));
    }

    #[test]
    fn plugin_info_shows_only_the_versions_served() {
        let registry = Metrics::new();
        let metrics = registry.part::<ServerMetrics>();
        let labels = |version: &str| ["svc", "svc", version, "ab"].map(String::from);
        metrics.plugins_served(vec![labels("1.0.0")]);
        metrics.plugins_served(vec![labels("2.0.0")]);
        let text = String::from_utf8(registry.render()).unwrap();
        let series: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("iicp_plugin_info{"))
            .collect();
        assert_eq!(
            series,
            [r#"iicp_plugin_info{name="svc",plugin="svc",sha256="ab",version="2.0.0"} 1"#]
        );
    }
}
