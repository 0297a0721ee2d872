//! What peer gossip counts.

use prometheus::{IntCounterVec, IntGauge, Registry};

use crate::metric_families::{Part, counter_vec, gauge};

/// Peer gossip (`crate::peers`).
#[derive(Clone)]
pub struct PeerMetrics {
    /// `iicp_peers_active`: peers in the table (ADR-014's name).
    pub active: IntGauge,
    /// `iicp_peer_exchanges_total{direction,result}`.
    pub exchanges: IntCounterVec,
    /// `iicp_peer_refusals_total{reason}`: exchanges, answers and listed
    /// entries this node refused.
    pub refusals: IntCounterVec,
    /// `iicp_peer_merge_senders`: senders whose merge windows are
    /// remembered.
    pub merge_senders: IntGauge,
}

impl Part for PeerMetrics {
    fn register(r: &Registry) -> Self {
        Self {
            active: gauge(r, "iicp_peers_active", "Peers in this node's table."),
            exchanges: counter_vec(
                r,
                "iicp_peer_exchanges_total",
                "Peer exchanges, by direction (in, out) and result.",
                &["direction", "result"],
            ),
            refusals: counter_vec(
                r,
                "iicp_peer_refusals_total",
                "Peer exchanges, answers and listed entries this node refused, by reason.",
                &["reason"],
            ),
            merge_senders: gauge(
                r,
                "iicp_peer_merge_senders",
                "Senders whose per-window merge budgets are remembered.",
            ),
        }
    }
}
