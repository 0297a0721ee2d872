//! What relaying counts, in both roles.

use prometheus::{Histogram, IntCounterVec, IntGauge, Registry};

use crate::metric_families::{Part, counter_vec, gauge, histogram};

/// Relaying, in both roles (`crate::relay`).
#[derive(Clone)]
pub struct RelayMetrics {
    /// `iicp_relay_sessions`: workers bound to this relay.
    pub sessions: IntGauge,
    /// `iicp_relay_tasks_queued`: tasks waiting for a worker's pull.
    pub tasks_queued: IntGauge,
    /// `iicp_relay_tasks_in_flight`: tasks a worker holds.
    pub tasks_in_flight: IntGauge,
    /// `iicp_relay_held_bytes`: task bytes held for workers.
    pub held_bytes: IntGauge,
    /// `iicp_relay_result_bytes`: result bytes reserved for results being read.
    pub result_bytes: IntGauge,
    /// `iicp_relay_bytes_total{direction}`: to_worker, to_consumer.
    pub bytes: IntCounterVec,
    /// `iicp_relay_tasks_total{outcome}`: answered, timeout, worker_gone.
    pub tasks: IntCounterVec,
    /// `iicp_relay_refusals_total{reason}`.
    pub refusals: IntCounterVec,
    /// `iicp_relay_binds_total{result}`: new, rebound.
    pub binds: IntCounterVec,
    /// `iicp_relay_pinned_workers`: worker ids pinned to their rebind keys.
    pub pinned_workers: IntGauge,
    /// `iicp_relay_worker_bound`: 1 while this worker holds a relay session.
    pub worker_bound: IntGauge,
    /// `iicp_relay_worker_binds_total{result}`: ok, refused, failed.
    pub worker_binds: IntCounterVec,
    /// `iicp_relay_worker_tasks_total{result}`: answered, answer_lost.
    pub worker_tasks: IntCounterVec,
    /// `iicp_relay_worker_rebind_seconds`: from losing a session to the next bind.
    pub worker_rebind_seconds: Histogram,
}

impl Part for RelayMetrics {
    fn register(r: &Registry) -> Self {
        Self {
            sessions: gauge(r, "iicp_relay_sessions", "Workers bound to this relay."),
            tasks_queued: gauge(
                r,
                "iicp_relay_tasks_queued",
                "Relayed tasks waiting for their worker's pull.",
            ),
            tasks_in_flight: gauge(
                r,
                "iicp_relay_tasks_in_flight",
                "Relayed tasks a worker pulled and has not answered.",
            ),
            held_bytes: gauge(
                r,
                "iicp_relay_held_bytes",
                "Bytes of relayed tasks held for workers.",
            ),
            result_bytes: gauge(
                r,
                "iicp_relay_result_bytes",
                "Bytes reserved for workers' results being read.",
            ),
            bytes: counter_vec(
                r,
                "iicp_relay_bytes_total",
                "Bytes relayed, by direction (to_worker, to_consumer).",
                &["direction"],
            ),
            tasks: counter_vec(
                r,
                "iicp_relay_tasks_total",
                "Relayed tasks by outcome (answered, timeout, worker_gone).",
                &["outcome"],
            ),
            refusals: counter_vec(
                r,
                "iicp_relay_refusals_total",
                "Relay requests refused, by reason.",
                &["reason"],
            ),
            binds: counter_vec(
                r,
                "iicp_relay_binds_total",
                "Worker binds accepted, by kind (new, rebound).",
                &["result"],
            ),
            pinned_workers: gauge(
                r,
                "iicp_relay_pinned_workers",
                "Worker ids this relay pinned to the rebind key they first bound with.",
            ),
            worker_bound: gauge(
                r,
                "iicp_relay_worker_bound",
                "1 while this node holds a session with its relay.",
            ),
            worker_binds: counter_vec(
                r,
                "iicp_relay_worker_binds_total",
                "This worker's bind attempts, by result (ok, refused, failed).",
                &["result"],
            ),
            worker_tasks: counter_vec(
                r,
                "iicp_relay_worker_tasks_total",
                "Tasks this worker pulled, by result (answered, answer_lost).",
                &["result"],
            ),
            worker_rebind_seconds: histogram(
                r,
                "iicp_relay_worker_rebind_seconds",
                "Time from losing the relay session to the next successful bind.",
                &[0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0],
            ),
        }
    }
}
