//! The state every route shares, behind one `Arc`.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::Notify;

use super::admission::{AdmissionGate, QosAdmission};
use super::drain::DrainSwitch;
use super::edge::DrainSignal;
use super::idempotency::IdempotencyCache;
use super::nonce_cache::NonceCache;
use super::origin_limit::OriginLimiter;
use super::plugin_table::PluginTable;
use super::task_auth::TaskAuth;
use super::tool_gate::ToolGate;
use super::unsent_answers::UnsentAnswers;
use crate::directory::receipts::ReceiptQueue;
use crate::directory::status::DirectoryStatus;
use crate::fetch::PluginFetcher;
use crate::metrics::{Metrics, TaskTally};
use crate::protocol::confidentiality::CxKey;
use crate::runtime::Runtime;
use crate::server::metrics::ServerMetrics;

/// Who this node is.
#[derive(Debug, Clone)]
pub struct NodeIdentity {
    /// The node id.
    pub node_id: String,
    /// The advertised region.
    pub region: String,
}

/// Shared server state.
pub struct AppState {
    /// Node identity.
    pub node: NodeIdentity,
    /// The Wasm runtime.
    pub runtime: Arc<Runtime>,
    /// Where plugins' bytes come from, for reloads.
    pub fetcher: PluginFetcher,
    /// Intent routing; a reload swaps in a whole new table.
    pub plugins: ArcSwap<PluginTable>,
    /// Node-wide task slots.
    pub gate: AdmissionGate,
    /// Who may wait for a slot, and how long.
    pub qos: QosAdmission,
    /// On while the operator drains the whole node (shutting down is
    /// `drain`).
    pub node_drain: DrainSwitch,
    /// `retry_after_ms` advised by an operator's drain unless it names one.
    pub drain_retry_after_ms: u64,
    /// Woken when what the node tells the directory changes (a drain), so
    /// the next heartbeat goes out at once.
    pub status_changed: Notify,
    /// The node-wide task authentication mode.
    pub auth: TaskAuth,
    /// Whether tool-domain intents may run.
    pub tool_gate: ToolGate,
    /// Task ids seen inside the window, when idempotency is on.
    pub idempotency: Option<IdempotencyCache>,
    /// Replay protection.
    pub nonces: NonceCache,
    /// The per-Origin task limit, unless turned off.
    pub origin_limit: Option<OriginLimiter>,
    /// Prometheus metrics: the registry every folder's families are on.
    pub metrics: Arc<Metrics>,
    /// This folder's families, resolved once from `metrics`.
    pub server_metrics: Arc<ServerMetrics>,
    /// Task outcomes for the directory's metrics batches.
    pub tally: TaskTally,
    /// Answers waiting on their clients, bounded in bytes.
    pub unsent_answers: UnsentAnswers,
    /// Request body limit in bytes.
    pub max_body_bytes: usize,
    /// Time a request body has to arrive.
    pub body_read_timeout: Duration,
    /// Set when the node starts shutting down.
    pub drain: DrainSignal,
    /// Standing with the directory, when one is configured.
    pub directory: Option<Arc<DirectoryStatus>>,
    /// Credit receipts, when a directory is configured.
    pub receipts: Option<ReceiptQueue>,
    /// The IICP-CX key that opens encrypted tasks, unless turned off.
    pub cx_key: Option<CxKey>,
}
