//! The serving phase: the public API, the directory link, hot reloads
//! (SIGHUP and the admin API), and at shutdown the drain — stop announcing,
//! stop accepting, let in-flight tasks finish within a bound, deregister.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use tokio::task::JoinHandle;

use super::StartError;
use super::directory_join::DirectoryJoin;
use super::identity::Identity;
use super::listeners::Listeners;
use crate::config::NodeConfig;
use crate::directory::DirectoryLink;
use crate::protocol::confidentiality::CxKey;
use crate::reload::{ConfigSource, Reloader};
use crate::server::edge::{self, EdgeSettings};
use crate::server::state::AppState;

type ServerTask = JoinHandle<std::io::Result<()>>;

/// A node that serves.
pub struct Serving {
    state: Arc<AppState>,
    local_addr: SocketAddr,
    server: ServerTask,
    admin: Option<ServerTask>,
    link: Option<Arc<DirectoryLink>>,
    hangups: JoinHandle<()>,
}

/// Starts serving on `listeners`: the node's routes over `state`, plus
/// the routes other phases add.
pub fn start(
    config: &NodeConfig,
    identity: &Identity,
    listeners: Listeners,
    state: Arc<AppState>,
    extra_routes: Router<Arc<AppState>>,
    directory: Option<DirectoryJoin>,
    reload_source: Option<ConfigSource>,
) -> Result<Serving, StartError> {
    let local_addr = listeners.public_addr;
    tracing::info!(
        addr = %local_addr,
        node_id = %identity.node_id,
        allocator = state.runtime.allocator().as_str(),
        max_concurrent = config.node.max_concurrent(),
        cx_key_id = state.cx_key.as_ref().map(CxKey::key_id),
        "listening"
    );
    let server = tokio::spawn(edge::serve(
        listeners.public,
        crate::server::router_with(state.clone(), extra_routes),
        config.node.edge(),
        state.server_metrics.edge("public"),
        state.drain.clone(),
    ));
    let link = directory.map(|join| {
        Arc::new(join.start(config, identity, local_addr, &state.metrics, state.clone()))
    });
    let reloader = reloader(config, reload_source, &state, link.clone());
    let admin = match (listeners.admin, &config.admin) {
        (Some(listener), Some(settings)) => {
            let addr = listener
                .local_addr()
                .map_err(|e| StartError::Bind(settings.listen, e))?;
            tracing::info!(%addr, "admin API listening");
            let router = crate::admin::router(state.clone(), reloader.clone(), &settings.token);
            let edge = EdgeSettings {
                max_connections: settings.max_connections,
                ..config.node.edge()
            };
            Some(tokio::spawn(edge::serve(
                listener,
                router,
                edge,
                state.server_metrics.edge("admin"),
                state.drain.clone(),
            )))
        }
        _ => None,
    };
    let hangups = tokio::spawn(reload_on_hangup(reloader));
    Ok(Serving {
        state,
        local_addr,
        server,
        admin,
        link,
        hangups,
    })
}

impl Serving {
    /// Serves until `shutdown` resolves. Errs only if the server stopped by
    /// itself (an accept-loop failure).
    pub async fn until(&mut self, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
        tokio::select! {
            finished = &mut self.server => {
                let error = match finished {
                    Ok(Ok(())) => "server stopped unexpectedly".to_string(),
                    Ok(Err(e)) => e.to_string(),
                    Err(e) => e.to_string(),
                };
                Err(StartError::Bind(self.local_addr, std::io::Error::other(error)))
            }
            () = shutdown => Ok(()),
        }
    }

    /// Stops announcing and accepting, closes idle connections, refuses new
    /// requests on open ones (503 `IICP-E024`), waits for in-flight tasks
    /// (bounded by the drain timeout), then deregisters.
    pub async fn drain(self, config: &NodeConfig) {
        self.hangups.abort();
        // The drain starts before the link stops, so the directory's last
        // heartbeat says the node drains; and before the line below, so a
        // request finished by anyone who read it is refused, not run.
        self.state.drain.start();
        tracing::info!(
            active_jobs = self.state.gate.active(),
            "shutting down: no new connections, draining in-flight tasks"
        );
        if let Some(link) = &self.link {
            link.stop().await;
        }
        match tokio::time::timeout(config.node.drain_timeout(), self.server).await {
            Ok(_) => tracing::info!("drained"),
            Err(_) => tracing::warn!(
                abandoned = self.state.gate.active(),
                "drain timeout reached; abandoning tasks still running"
            ),
        }
        if let Some(admin) = self.admin {
            admin.abort();
        }
        if let Some(link) = &self.link {
            link.deregister().await;
        }
        tracing::info!("bye");
    }
}

/// The reloader: re-reads `reload_source` (or the starting configuration)
/// and tells the directory link when the served intents change.
fn reloader(
    config: &NodeConfig,
    reload_source: Option<ConfigSource>,
    state: &Arc<AppState>,
    link: Option<Arc<DirectoryLink>>,
) -> Arc<Reloader> {
    let fixed = config.clone();
    let source = reload_source.unwrap_or_else(|| Arc::new(move || Ok(fixed.clone())));
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
