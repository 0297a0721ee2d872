//! Starting and stopping a node, as a sequence of named phases (see
//! [`run`]): each module below is one phase, so a new capability joins the
//! node with one call in the right place.
//!
//! * [`identity`] — state directory, node id, IICP-CX key;
//! * [`plugins`] — the runtime and every plugin, checked before binding;
//! * [`descriptors`] — an open-file limit that fits the connection caps;
//! * [`listeners`] — the public and admin sockets;
//! * [`reach`] — the relay roles, which change what the directory is told;
//! * [`directory_join`] — the directory client, credentials and receipts;
//! * [`serving`] — the servers, the directory link, reloads, then the drain.

pub mod descriptors;
pub mod directory_join;
pub mod identity;
pub mod listeners;
pub mod plugins;
pub mod reach;
pub mod serving;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::Notify;

use self::directory_join::DirectoryJoin;
use self::identity::Identity;
use self::listeners::Listeners;
use self::reach::Reach;
use crate::config::{NONCE_WINDOW, NodeConfig};
use crate::directory::lifecycle::NodeView;
use crate::directory::metrics::DirectoryMetrics;
use crate::directory::payload::ServiceState;
use crate::fetch::PluginFetcher;
use crate::memory_sizing::{self, MemoryMetrics, Setting, Sizing};
use crate::metrics::{Metrics, TallyCounts, TaskTally};
use crate::peers::metrics::PeerMetrics;
use crate::protocol::confidentiality::{CxKey, CxPublicKey};
use crate::relay::metrics::RelayMetrics;
use crate::reload::{ConfigSource, ReloadMetrics};
use crate::runtime::Runtime;
use crate::runtime::engine::PoolShape;
use crate::runtime::metrics::RuntimeMetrics;
use crate::runtime::plugin::CapabilityInfo;
use crate::runtime::plugin::LoadError;
use crate::server::admission::{AdmissionGate, QosAdmission};
use crate::server::drain::DrainSwitch;
use crate::server::edge::DrainSignal;
use crate::server::idempotency::IdempotencyCache;
use crate::server::metrics::ServerMetrics;
use crate::server::nonce_cache::NonceCache;
use crate::server::origin_limit::OriginLimiter;
use crate::server::plugin_table::PluginTable;
use crate::server::state::{AppState, NodeIdentity};
use crate::server::task_auth::TaskAuth;
use crate::server::tool_gate::ToolGate;
use crate::server::unsent_answers::UnsentAnswers;
use crate::systemd::ServiceManager;

/// Why the node could not start.
#[derive(Debug)]
pub enum StartError {
    /// The Wasm engine could not be built.
    Runtime(String),
    /// A plugin could not be loaded.
    Plugin(LoadError),
    /// The configuration is inconsistent.
    Config(String),
    /// The state directory cannot be used.
    State(PathBuf, std::io::Error),
    /// The listen address could not be bound.
    Bind(SocketAddr, std::io::Error),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Runtime(why) => write!(f, "cannot start the WebAssembly runtime: {why}"),
            StartError::Plugin(error) => error.fmt(f),
            StartError::Config(why) => f.write_str(why),
            StartError::State(dir, error) => {
                write!(f, "cannot use state directory {}: {error}", dir.display())
            }
            StartError::Bind(addr, error) => write!(f, "cannot listen on {addr}: {error}"),
        }
    }
}

impl std::error::Error for StartError {}

/// Runs the node until `shutdown` resolves, then drains and returns.
/// `reload_source` re-reads the configuration for hot reloads (SIGHUP,
/// `POST /admin/reload`); without it, reloads re-read `config` as given.
///
/// The phases, in order: memory bound → identity → runtime and plugins → listeners →
/// reach (relay roles) → directory preparation → shared state → serving
/// (public API, directory link, reloads, admin API) → ready for systemd →
/// drain. Anything that fails before serving refuses the start, before the
/// node is announced anywhere.
pub async fn run(
    mut config: NodeConfig,
    reload_source: Option<ConfigSource>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    crate::heap::return_large_blocks_promptly();
    let sizing = memory_sizing::size(&mut config).map_err(StartError::Config)?;
    let mut identity = Identity::establish(&config)?;
    let metrics = Arc::new(Metrics::new());
    register_folder_metrics(&metrics);
    let (runtime, fetcher, table) = plugins::load(&config, &metrics).await?;
    descriptors::fit_connection_caps(&mut config);
    publish_memory(&config, &sizing, &metrics);
    let listeners = Listeners::bind(&config).await?;
    plugins::log_loaded(&table);
    ToolGate::new(config.allow_tool_execution).warn_unreachable(&table);
    tracing::info!(sizing = %sizing, worst_case = %sizing.worst, "memory bound");
    let reach = Reach::prepare(&mut config, &identity, &metrics)?;
    let directory = DirectoryJoin::prepare(&config, &identity, &metrics)?;
    let cx_key = identity.cx_key.take();
    let state = shared_state(
        &config,
        &identity,
        cx_key,
        (runtime, fetcher),
        table,
        &metrics,
        directory.as_ref(),
    );
    let reach = reach.start(
        &config,
        &identity,
        &state,
        directory.as_ref(),
        listeners.public_addr.port(),
    )?;
    let mut serving = serving::start(
        &config,
        &identity,
        listeners,
        state.clone(),
        reach.routes(&config),
        directory,
        reload_source,
    )?;
    let service_manager = ServiceManager::ready(state.clone());
    serving.until(shutdown).await?;
    service_manager.stopping(&state);
    tokio::join!(reach.stop(), serving.drain(&config));
    Ok(())
}

/// The state every route shares.
fn shared_state(
    config: &NodeConfig,
    identity: &Identity,
    cx_key: Option<CxKey>,
    (runtime, fetcher): (Runtime, PluginFetcher),
    table: PluginTable,
    metrics: &Arc<Metrics>,
    directory: Option<&DirectoryJoin>,
) -> Arc<AppState> {
    let node = &config.node;
    let server_metrics = metrics.part::<ServerMetrics>();
    server_metrics
        .nonce_cache_capacity
        .set(i64::try_from(node.nonce_capacity()).unwrap_or(i64::MAX));
    Arc::new(AppState {
        node: NodeIdentity {
            node_id: identity.node_id.clone(),
            region: node.region.clone(),
        },
        runtime: Arc::new(runtime),
        fetcher,
        plugins: ArcSwap::from_pointee(table),
        gate: AdmissionGate::new(node.max_concurrent()),
        qos: QosAdmission::new(node.qos_wait(), node.qos_max_waiting),
        node_drain: DrainSwitch::default(),
        drain_retry_after_ms: node.drain_retry_after_ms,
        status_changed: Notify::new(),
        auth: TaskAuth::new(
            config.auth.mode,
            &config.auth.tokens,
            directory.map(|join| join.credentials.clone()),
            config.auth.accept_directory_token,
            directory.and_then(|join| join.directory_key.clone()),
            &identity.node_id,
        ),
        tool_gate: ToolGate::new(config.allow_tool_execution),
        idempotency: node.idempotency().map(|bounds| {
            IdempotencyCache::new(
                bounds.capacity,
                bounds.max_bytes,
                server_metrics.idempotency.evictions.clone(),
            )
        }),
        nonces: NonceCache::new(NONCE_WINDOW, node.nonce_capacity()),
        origin_limit: OriginLimiter::new(
            node.origin_rate_limit,
            node.origin_limit_tracked,
            server_metrics.origin_windows_forgotten.clone(),
        ),
        metrics: metrics.clone(),
        server_metrics: server_metrics.clone(),
        tally: TaskTally::default(),
        unsent_answers: UnsentAnswers::new(
            node.edge().max_unsent_answer_bytes,
            server_metrics.unsent_answer_bytes.clone(),
            server_metrics.unsent_answer_refusals.clone(),
        ),
        max_body_bytes: node.max_body_bytes,
        body_read_timeout: node.edge().body_read_timeout,
        drain: DrainSignal::default(),
        directory: directory.map(|join| join.status.clone()),
        receipts: directory.map(|join| join.receipts.clone()),
        cx_key,
    })
}

impl NodeView for AppState {
    fn capabilities(&self) -> Vec<CapabilityInfo> {
        self.plugins.load().capabilities().cloned().collect()
    }

    fn load(&self) -> (u32, u32) {
        (self.gate.active(), self.gate.capacity())
    }

    fn drain_tally(&self) -> TallyCounts {
        self.tally.drain()
    }

    fn cx_public_key(&self) -> Option<CxPublicKey> {
        self.cx_key.as_ref().map(CxKey::public_key)
    }

    fn service_state(&self) -> ServiceState {
        let table = self.plugins.load();
        ServiceState {
            node_draining: self.node_drain.is_on() || self.drain.is_draining(),
            plugins: table.entries().len(),
            drained_plugins: table.entries().iter().filter(|e| e.drain.is_on()).count(),
        }
    }

    fn service_changed(&self) -> &Notify {
        &self.status_changed
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = interrupt => {}
            () = terminate => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

/// Exports the memory the node sized itself to, the settings in force and
/// the worst case they allow.
/// Registers the families of the folders above the metrics layer now, so
/// every node exports them (at 0 when it neither relays, gossips nor joins a
/// directory) and dashboards and alerts find them.
fn register_folder_metrics(metrics: &Metrics) {
    metrics.part::<DirectoryMetrics>();
    metrics.part::<RelayMetrics>();
    metrics.part::<PeerMetrics>();
    metrics.part::<RuntimeMetrics>();
    metrics.part::<ServerMetrics>();
    metrics.part::<MemoryMetrics>();
    metrics.part::<ReloadMetrics>();
}

fn publish_memory(config: &NodeConfig, sizing: &Sizing, metrics: &Metrics) {
    let gauge = |bytes: u64| i64::try_from(bytes).unwrap_or(i64::MAX);
    let metrics = metrics.part::<MemoryMetrics>();
    metrics.worst_case.set(gauge(sizing.worst.total()));
    metrics.limit.set(gauge(sizing.memory.bytes));
    for setting in Setting::ALL {
        let value = match setting {
            // What the engine keeps, not the larger figure the bound counts.
            Setting::KeepResident => {
                Some(PoolShape::of(&config.node.runtime().engine).keep_resident as u64)
            }
            _ => setting.value(config),
        };
        if let Some(value) = value {
            metrics
                .setting
                .with_label_values(&[setting.name()])
                .set(gauge(value));
        }
    }
}
