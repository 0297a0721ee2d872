//! Node configuration: identity, listener, concurrency, request limits,
//! the directory relationship and the plugins to serve. Built by
//! [`flags::RunArgs::to_config`], at start and at every reload: the TOML
//! file ([`file`]) or the single `--plugin`, then the capability sections'
//! keys from the environment and `--set` ([`sections`]), then the dedicated
//! flags. Every field has a default an operator can rely on. Capabilities
//! that own their settings (`relay::settings`, `peers::settings`,
//! `telemetry::otlp::ExportSettings`, `oci::settings`, `server::settings`
//! for `[auth]` and `[admin]`, `directory::settings::DirectorySection`)
//! hold their defaults and ranges themselves, as do `[node]`
//! (`server::node_settings`) and `[defaults]` (`runtime::limit_settings`).
//! `[node]`, `[defaults]`, `[oci]`, `[auth]`, `[directory]` and `[admin]`
//! name files and environment variables the build resolves, so their keys
//! from the environment and `--set` are stacked over the file's tables
//! before the build ([`sections::FILE_SECTIONS`]).

pub mod dir_watch;
pub mod file;
pub mod file_cache;
pub mod flags;
pub mod memory;
pub mod sections;
pub mod table_split;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use self::memory::MemorySettings;
use crate::directory::directory_key::KeyRefresh;
use crate::directory::settings::DirectorySettings;
use crate::oci::OciSettings;
use crate::peers::settings::PeerSettings;
use crate::relay::settings::{RelaySettings, WorkerSettings};
use crate::server::node_settings::NodeSection;
use crate::server::settings::AuthSection;
use crate::server::task_auth::AuthMode;
use crate::settings::Overrides;
use crate::telemetry::otlp::ExportSettings;

// A plugin's spec lives with the table that serves it; kept here too so
// `config::PluginSpec` still names it.
pub use crate::server::plugin_table::PluginSpec;

/// The replay window of `protocol.md` §4.1.
pub const NONCE_WINDOW: Duration = Duration::from_secs(300);
/// Where pulled plugins are kept, inside the cache directory.
pub const OCI_STORE_SUBDIR: &str = "oci";

/// Everything the node needs to start.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The `[node]` table as the node runs it: checked, its paths resolved
    /// against the file's directory (`cache_dir` defaulted), and once the
    /// node has sized itself (`memory_sizing::size`) every sized key set
    /// to the value in force. Its users read it here, so a new key needs no
    /// field of its own.
    pub node: NodeSection,
    /// Node-wide task authentication.
    pub auth: AuthSettings,
    /// Bounds of the OTLP span export (on when the environment names an
    /// endpoint).
    pub telemetry: ExportSettings,
    /// Run tool-domain intents (`policy.allow_tool_execution`); otherwise
    /// they get 403 `tool_execution_denied`.
    pub allow_tool_execution: bool,
    /// The directory to join; `None` serves standalone.
    pub directory: Option<DirectorySettings>,
    /// How plugins given by OCI reference are pulled (`fetch`).
    pub oci: OciSettings,
    /// The plugins to serve. Shared with the reload cache and the serving
    /// table: a reload recognises an unchanged plugin by pointer.
    pub plugins: Vec<Arc<PluginSpec>>,
    /// The admin API, when configured.
    pub admin: Option<AdminSettings>,
    /// Relaying and peer gossip.
    pub reach: ReachSettings,
    /// Which memory-driven settings were given (the others are sized to
    /// the memory, see `memory_sizing`).
    pub memory: MemorySettings,
    /// The file this came from, for error messages and reloads.
    pub config_path: Option<PathBuf>,
}

/// Node-wide task authentication (`[auth]`, see `server::task_auth`).
#[derive(Clone, PartialEq)]
pub struct AuthSettings {
    /// open, node-token or consumer-token.
    pub mode: AuthMode,
    /// Operator-granted task tokens (name, token).
    pub tokens: Vec<(String, String)>,
    /// Also accept the node's current directory-issued token (TASK-1's
    /// literal rule).
    pub accept_directory_token: bool,
    /// When the directory's key is fetched again.
    pub key_refresh: KeyRefresh,
}

impl Default for AuthSettings {
    fn default() -> Self {
        let section = AuthSection::default();
        Self {
            mode: section.mode,
            tokens: Vec::new(),
            accept_directory_token: section.accept_directory_token,
            key_refresh: section.key_refresh(),
        }
    }
}

impl std::fmt::Debug for AuthSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthSettings")
            .field("mode", &self.mode)
            .field(
                "tokens",
                &self.tokens.iter().map(|(name, _)| name).collect::<Vec<_>>(),
            )
            .field("accept_directory_token", &self.accept_directory_token)
            .finish_non_exhaustive()
    }
}

impl NodeConfig {
    /// Checks that the auth mode can accept anybody at all: consumer tokens
    /// need a directory (its key signs them); node tokens need a granted
    /// token (an `[auth.tokens]` entry, a tenant, or the directory's).
    pub fn check_auth(&self) -> Result<(), String> {
        let has_directory = self.directory.is_some();
        match self.auth.mode {
            AuthMode::ConsumerToken if !has_directory => Err(
                "auth.mode = \"consumer-token\" needs a [directory]: its key signs the tokens"
                    .to_string(),
            ),
            AuthMode::NodeToken
                if self.auth.tokens.is_empty()
                    && !(has_directory && self.auth.accept_directory_token)
                    && self.plugins.iter().all(|p| p.tenants.is_empty()) =>
            {
                Err("auth.mode = \"node-token\" would refuse every task: grant a token in [auth.tokens], a tenant, or a directory's token".to_string())
            }
            _ => Ok(()),
        }
    }
}

/// How the node reaches the mesh besides its own listener; all off unless
/// configured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReachSettings {
    /// The worker role: serve through this relay (`[relay]`, `--relay`).
    pub relay: Option<WorkerSettings>,
    /// The relay role (`[relay_capable]`, `--relay-capable`).
    pub relay_capable: Option<RelaySettings>,
    /// Peer gossip (`[peers]`, `--peers`).
    pub peers: Option<PeerSettings>,
}

/// The admin API listener.
#[derive(Clone, PartialEq)]
pub struct AdminSettings {
    /// Where it listens (loopback by default).
    pub listen: SocketAddr,
    /// The bearer token it requires.
    pub token: String,
    /// Most connections open at once.
    pub max_connections: usize,
}

impl std::fmt::Debug for AdminSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminSettings")
            .field("listen", &self.listen)
            .finish_non_exhaustive()
    }
}

impl NodeConfig {
    /// Every default, serving the plugin at `path`.
    pub fn with_plugin(path: PathBuf) -> Self {
        file::for_plugin(path, &Overrides::default())
            .unwrap_or_else(|e| unreachable!("the defaults are valid: {e}"))
    }
}

/// The default compiled-artifact cache directory:
/// `$XDG_CACHE_HOME/iicp-host` or `$HOME/.cache/iicp-host`.
pub fn default_cache_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .map(|base| base.join("iicp-host"))
}
