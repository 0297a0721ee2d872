//! Starting and stopping a node: build the runtime, load every plugin (any
//! failure refuses to start, before a port is bound), serve, and on shutdown
//! stop accepting and drain in-flight tasks within a bound.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use arc_swap::ArcSwap;
use tokio::net::TcpListener;

use crate::config::{NONCE_WINDOW, NodeConfig};
use crate::directory::DirectoryLink;
use crate::directory::client::DirectoryClient;
use crate::directory::identity::{Credentials, SharedCredentials, StateDir, default_state_dir};
use crate::directory::lifecycle::{Lifecycle, LifecycleParts, NodeView};
use crate::directory::receipts;
use crate::directory::status::DirectoryStatus;
use crate::metrics::{Metrics, TallyCounts, TaskTally};
use crate::protocol::confidentiality::{CxKey, CxPublicKey};
use crate::reload::{ConfigSource, Reloader};
use crate::runtime::Runtime;
use crate::runtime::plugin::CapabilityInfo;
use crate::runtime::plugin::LoadError;
use crate::server::admission::AdmissionGate;
use crate::server::nonce_cache::NonceCache;
use crate::server::origin_limit::OriginLimiter;
use crate::server::plugin_table::PluginTable;
use crate::server::state::{AppState, NodeIdentity};

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

/// Prefixes `message` with the configuration file, when there is one.
fn in_config(config: &NodeConfig, message: String) -> String {
    match &config.config_path {
        Some(path) => format!("{}: {message}", path.display()),
        None => message,
    }
}

/// Runs the node until `shutdown` resolves, then drains and returns.
/// `reload_source` re-reads the configuration for hot reloads (SIGHUP,
/// `POST /admin/reload`); without it, reloads re-read `config` as given.
pub async fn run(
    config: NodeConfig,
    reload_source: Option<ConfigSource>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    let state_dir = match config.state_dir.clone().or_else(default_state_dir) {
        Some(dir) => Some(StateDir::open(&dir).map_err(|e| StartError::State(dir, e))?),
        None => None,
    };
    let node_id = match &state_dir {
        Some(state) => state
            .node_id(config.node_id.as_deref())
            .map_err(|e| StartError::Config(format!("cannot store the node id: {e}")))?,
        None => config
            .node_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
    };
    let cx_key = match (config.confidentiality, &state_dir) {
        (false, _) => None,
        (true, Some(state)) => Some(
            state
                .cx_key()
                .map_err(|e| StartError::Config(format!("cannot load the IICP-CX key: {e}")))?,
        ),
        (true, None) => {
            tracing::warn!("no state directory: the IICP-CX key changes at every start");
            Some(CxKey::generate())
        }
    };
    let metrics = Arc::new(Metrics::new());
    let runtime = Runtime::new(&config.runtime, metrics.clone())
        .map_err(|e| StartError::Runtime(format!("{e:#}")))?;
    let mut plugins = Vec::with_capacity(config.plugins.len());
    for spec in &config.plugins {
        match runtime.load_plugin(&spec.source).await {
            Ok(plugin) => plugins.push((Arc::new(plugin), spec.clone())),
            Err(error) if config.config_path.is_some() => {
                return Err(StartError::Config(in_config(&config, error.to_string())));
            }
            Err(error) => return Err(StartError::Plugin(error)),
        }
    }
    let table = PluginTable::build(plugins, &metrics, config.max_concurrent, None)
        .map_err(|e| StartError::Config(in_config(&config, e)))?;
    let directory_client = match &config.directory {
        Some(settings) => Some(
            DirectoryClient::new(&settings.url, settings.timeout).map_err(StartError::Config)?,
        ),
        None => None,
    };
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| StartError::Bind(config.listen, e))?;
    let local_addr = listener
        .local_addr()
        .map_err(|e| StartError::Bind(config.listen, e))?;
    let admin_listener = match &config.admin {
        Some(admin) => Some(
            TcpListener::bind(admin.listen)
                .await
                .map_err(|e| StartError::Bind(admin.listen, e))?,
        ),
        None => None,
    };

    for entry in table.entries() {
        let plugin = &entry.plugin;
        tracing::info!(
            plugin = &*plugin.id,
            version = %plugin.info.version,
            sha256 = %plugin.sha256,
            intents = ?entry.capabilities.iter().map(|c| c.intent.as_str()).collect::<Vec<_>>(),
            cached = matches!(plugin.cache, crate::runtime::cache::CacheOutcome::Hit),
            load_ms = crate::clock::whole_ms(plugin.load_time),
            "plugin loaded"
        );
    }

    // The directory relationship: credentials (stored ones prove ownership on
    // the first registration), receipts and status exist before serving.
    let joined = config
        .directory
        .clone()
        .zip(directory_client)
        .map(|(settings, client)| {
            let (node_token, directory_hmac_key) = state_dir
                .as_ref()
                .and_then(|state| state.credentials(&settings.url, &node_id))
                .map_or((None, None), |(token, key)| (Some(token), key));
            let credentials: SharedCredentials = Arc::new(RwLock::new(Credentials {
                node_id: node_id.clone(),
                node_token,
                directory_hmac_key,
                operator_hmac_key: settings.operator_hmac_key.clone(),
            }));
            let receipts = receipts::start(
                client.clone(),
                credentials.clone(),
                metrics.clone(),
                settings.receipt_queue,
            );
            let status = Arc::new(DirectoryStatus::new(&settings.url));
            (settings, client, credentials, receipts, status)
        });
    if joined.is_none() {
        tracing::info!("no directory configured; serving standalone");
    }

    let state = Arc::new(AppState {
        node: NodeIdentity {
            node_id: node_id.clone(),
            region: config.region.clone(),
        },
        runtime: Arc::new(runtime),
        plugins: ArcSwap::from_pointee(table),
        gate: AdmissionGate::new(config.max_concurrent),
        nonces: NonceCache::new(NONCE_WINDOW, config.nonce_capacity),
        origin_limit: OriginLimiter::new(config.origin_rate_limit),
        metrics: metrics.clone(),
        tally: TaskTally::default(),
        max_body_bytes: config.max_body_bytes,
        directory: joined.as_ref().map(|(_, _, _, _, status)| status.clone()),
        receipts: joined
            .as_ref()
            .map(|(_, _, _, receipts, _)| receipts.clone()),
        cx_key,
    });
    tracing::info!(
        addr = %local_addr,
        node_id = %node_id,
        allocator = state.runtime.allocator().as_str(),
        max_concurrent = config.max_concurrent,
        cx_key_id = state.cx_key.as_ref().map(CxKey::key_id),
        "listening"
    );

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut stop: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stop.wait_for(|stopped| *stopped).await;
    };
    let router = crate::server::router(state.clone());
    let mut server = tokio::spawn(crate::server::serve(
        listener,
        router,
        stopped(stop_rx.clone()),
    ));
    let link = joined.map(|(settings, client, credentials, _, status)| {
        let endpoint = settings
            .endpoint
            .clone()
            .unwrap_or_else(|| format!("http://{local_addr}"));
        Arc::new(DirectoryLink::start(Lifecycle::new(LifecycleParts {
            client,
            settings,
            endpoint,
            region: config.region.clone(),
            local_health_url: format!("http://{local_addr}/iicp/health"),
            credentials,
            state_dir: state_dir.clone(),
            status,
            metrics: metrics.clone(),
            node: state.clone(),
        })))
    });
    let reloader = {
        let fixed = config.clone();
        let source = reload_source.unwrap_or_else(|| Arc::new(move || Ok(fixed.clone())));
        let link = link.clone();
        Arc::new(Reloader::new(
            source,
            config.clone(),
            state.clone(),
            Box::new(move || {
                if let Some(link) = &link {
                    link.capabilities_changed();
                }
            }),
        ))
    };
    let admin = match (admin_listener, &config.admin) {
        (Some(listener), Some(settings)) => {
            let addr = listener
                .local_addr()
                .map_err(|e| StartError::Bind(settings.listen, e))?;
            tracing::info!(%addr, "admin API listening");
            let router = crate::admin::router(state.clone(), reloader.clone(), &settings.token);
            Some(tokio::spawn(crate::server::serve(
                listener,
                router,
                stopped(stop_rx.clone()),
            )))
        }
        _ => None,
    };
    let hangups = tokio::spawn(reload_on_hangup(reloader.clone()));
    tokio::select! {
        finished = &mut server => {
            // The server only stops by itself on an accept-loop failure.
            let error = match finished {
                Ok(Ok(())) => "server stopped unexpectedly".to_string(),
                Ok(Err(e)) => e.to_string(),
                Err(e) => e.to_string(),
            };
            return Err(StartError::Bind(local_addr, std::io::Error::other(error)));
        }
        () = shutdown => {}
    }
    hangups.abort();
    tracing::info!(
        active_jobs = state.gate.active(),
        "shutting down: no new connections, draining in-flight tasks"
    );
    if let Some(link) = &link {
        link.stop().await;
    }
    let _ = stop_tx.send(true);
    match tokio::time::timeout(config.drain_timeout, server).await {
        Ok(_) => tracing::info!("drained"),
        Err(_) => tracing::warn!(
            abandoned = state.gate.active(),
            "drain timeout reached; abandoning tasks still running"
        ),
    }
    if let Some(admin) = admin {
        admin.abort();
    }
    if let Some(link) = &link {
        link.deregister().await;
    }
    tracing::info!("bye");
    Ok(())
}

/// Reloads on every SIGHUP.
async fn reload_on_hangup(reloader: Arc<Reloader>) {
    #[cfg(unix)]
    {
        let Ok(mut hangups) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            tracing::warn!("cannot listen for SIGHUP; reload through the admin API only");
            return;
        };
        while hangups.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading");
            reloader.reload().await;
        }
    }
    #[cfg(not(unix))]
    {
        let _ = reloader;
        std::future::pending::<()>().await;
    }
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
