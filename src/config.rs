//! Node configuration: identity, listener, concurrency, request limits and
//! the plugins to serve. Built from the command line today; every field has
//! a default an operator can rely on.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::runtime::RuntimeSettings;
use crate::runtime::plugin::PluginSource;

/// Default `max_concurrent` (the protocol allows 1..=256).
pub const DEFAULT_MAX_CONCURRENT: u32 = 32;
/// Upper bound of `max_concurrent` per `limits.max_concurrent` in REGISTER.
pub const MAX_CONCURRENT_LIMIT: u32 = 256;
/// Default request body limit.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1 << 20;
/// Default cap on remembered nonces (~60 bytes each).
pub const DEFAULT_NONCE_CAPACITY: usize = 1_000_000;
/// The replay window of `protocol.md` §4.1.
pub const NONCE_WINDOW: Duration = Duration::from_secs(300);

/// Everything the node needs to start.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The node's id in the mesh.
    pub node_id: String,
    /// The region it advertises.
    pub region: String,
    /// Where the HTTP API listens.
    pub listen: SocketAddr,
    /// Tasks running at once; more get 429.
    pub max_concurrent: u32,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Most nonces remembered inside the replay window.
    pub nonce_capacity: usize,
    /// How long shutdown waits for in-flight tasks.
    pub drain_timeout: Duration,
    /// Engine and artifact-cache settings.
    pub runtime: RuntimeSettings,
    /// The plugins to serve.
    pub plugins: Vec<PluginSource>,
}

/// The default compiled-artifact cache directory:
/// `$XDG_CACHE_HOME/iicp-host` or `$HOME/.cache/iicp-host`.
pub fn default_cache_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .map(|base| base.join("iicp-host"))
}
