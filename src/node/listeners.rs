//! Phase 3 of starting a node: bind every listening socket (the public API
//! and, when configured, the admin API) before anything announces the node.

use std::net::SocketAddr;

use tokio::net::TcpListener;

use super::StartError;
use crate::config::NodeConfig;

/// The bound sockets.
pub struct Listeners {
    /// The public API.
    pub public: TcpListener,
    /// Its bound address (the port is known even when 0 was asked).
    pub public_addr: SocketAddr,
    /// The admin API, when configured.
    pub admin: Option<TcpListener>,
}

impl Listeners {
    /// Binds the configured addresses.
    pub async fn bind(config: &NodeConfig) -> Result<Self, StartError> {
        let public = bind(config.listen).await?;
        let public_addr = public
            .local_addr()
            .map_err(|e| StartError::Bind(config.listen, e))?;
        let admin = match &config.admin {
            Some(admin) => Some(bind(admin.listen).await?),
            None => None,
        };
        Ok(Self {
            public,
            public_addr,
            admin,
        })
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| StartError::Bind(addr, e))
}
