//! Phase 3 of starting a node: bind every listening socket (the public API
//! and, when configured, the admin API) before anything announces the node.
//!
//! Dual stack: the IPv6 wildcard (`--listen [::]:8080`) is one socket with
//! `IPV6_V6ONLY` off, so it answers IPv6 and IPv4 (as mapped addresses)
//! whatever the system default (`net.ipv6.bindv6only`) says — one port, one
//! accept loop, one set of limits. Any other address is bound as given.

use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};
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
        let listen = config.node.listen_addr().map_err(StartError::Config)?;
        let public = bind(listen).await?;
        let public_addr = public
            .local_addr()
            .map_err(|e| StartError::Bind(listen, e))?;
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
    bind_socket(addr).map_err(|e| StartError::Bind(addr, e))
}

/// Connections waiting to be accepted (tokio's default).
const BACKLOG: i32 = 1024;

fn bind_socket(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if let SocketAddr::V6(v6) = addr {
        socket.set_only_v6(!v6.ip().is_unspecified())?;
    }
    // As tokio's own bind does: a restarted node rebinds its port at once.
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_ipv6_wildcard_answers_both_families() {
        let Ok(listener) = bind_socket("[::]:0".parse().unwrap()) else {
            panic!("this system cannot bind the IPv6 wildcard (is IPv6 disabled?)");
        };
        let port = listener.local_addr().unwrap().port();
        for target in [format!("127.0.0.1:{port}"), format!("[::1]:{port}")] {
            let connect = tokio::net::TcpStream::connect(&target);
            let (connected, accepted) = tokio::join!(connect, listener.accept());
            connected.unwrap_or_else(|e| panic!("{target}: {e}"));
            accepted.unwrap();
        }
        let v6_only = bind_socket("[::1]:0".parse().unwrap()).unwrap();
        let port = v6_only.local_addr().unwrap().port();
        assert!(
            tokio::net::TcpStream::connect(format!("127.0.0.1:{port}"))
                .await
                .is_err(),
            "a specific IPv6 address is not dual-stack"
        );
    }
}
