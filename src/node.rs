//! Starting and stopping a node: build the runtime, load every plugin (any
//! failure refuses to start, before a port is bound), serve, and on shutdown
//! stop accepting and drain in-flight tasks within a bound.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::config::{NONCE_WINDOW, NodeConfig};
use crate::metrics::Metrics;
use crate::runtime::Runtime;
use crate::runtime::plugin::LoadError;
use crate::server::admission::AdmissionGate;
use crate::server::nonce_cache::NonceCache;
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
    /// The listen address could not be bound.
    Bind(SocketAddr, std::io::Error),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Runtime(why) => write!(f, "cannot start the WebAssembly runtime: {why}"),
            StartError::Plugin(error) => error.fmt(f),
            StartError::Config(why) => f.write_str(why),
            StartError::Bind(addr, error) => write!(f, "cannot listen on {addr}: {error}"),
        }
    }
}

impl std::error::Error for StartError {}

/// Runs the node until `shutdown` resolves, then drains and returns.
pub async fn run(config: NodeConfig, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
    let runtime =
        Runtime::new(&config.runtime).map_err(|e| StartError::Runtime(format!("{e:#}")))?;
    let mut plugins = Vec::with_capacity(config.plugins.len());
    for source in &config.plugins {
        plugins.push(
            runtime
                .load_plugin(source)
                .await
                .map_err(StartError::Plugin)?,
        );
    }
    let metrics = Arc::new(Metrics::new());
    let table = PluginTable::build(plugins, &metrics).map_err(StartError::Config)?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| StartError::Bind(config.listen, e))?;
    let local_addr = listener
        .local_addr()
        .map_err(|e| StartError::Bind(config.listen, e))?;

    for entry in table.entries() {
        let plugin = &entry.plugin;
        tracing::info!(
            plugin = &*plugin.id,
            version = %plugin.info.version,
            sha256 = %plugin.sha256,
            intents = ?plugin.info.capabilities.iter().map(|c| c.intent.as_str()).collect::<Vec<_>>(),
            cached = matches!(plugin.cache, crate::runtime::cache::CacheOutcome::Hit),
            load_ms = plugin.load_time.as_millis() as u64,
            "plugin loaded"
        );
    }
    let state = Arc::new(AppState {
        node: NodeIdentity {
            node_id: config.node_id.clone(),
            region: config.region.clone(),
        },
        runtime: Arc::new(runtime),
        plugins: table,
        gate: AdmissionGate::new(config.max_concurrent),
        nonces: NonceCache::new(NONCE_WINDOW, config.nonce_capacity),
        metrics,
        max_body_bytes: config.max_body_bytes,
    });
    tracing::info!(
        addr = %local_addr,
        node_id = %config.node_id,
        allocator = state.runtime.allocator().as_str(),
        max_concurrent = config.max_concurrent,
        "listening"
    );

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let router = crate::server::router(state.clone());
    let mut server = tokio::spawn(crate::server::serve(listener, router, async {
        let _ = stop_rx.await;
    }));
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
    tracing::info!(
        active_jobs = state.gate.active(),
        "shutting down: no new connections, draining in-flight tasks"
    );
    let _ = stop_tx.send(());
    match tokio::time::timeout(config.drain_timeout, server).await {
        Ok(_) => tracing::info!("drained; bye"),
        Err(_) => tracing::warn!(
            abandoned = state.gate.active(),
            "drain timeout reached; abandoning tasks still running"
        ),
    }
    Ok(())
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
