//! Node configuration: identity, listener, concurrency, request limits,
//! the directory relationship and the plugins to serve. Built by
//! [`flags::RunArgs::to_config`], at start and at every reload: the TOML
//! file ([`file`]) or the single `--plugin`, then the capability sections'
//! keys from the environment and `--set` ([`sections`]), then the dedicated
//! flags. Every field has a default an operator can rely on. Capabilities
//! that own their settings (`relay::settings`, `peers::settings`,
//! `telemetry::otlp::ExportSettings`, `oci::settings`, `server::settings`
//! for `[auth]` and `[admin]`, `directory::settings::DirectorySection`)
//! hold their defaults and ranges themselves; the node-wide bounds below
//! (`[node]`, `[defaults]`) are still checked here. `[oci]`, `[auth]`,
//! `[directory]` and `[admin]` name files and environment variables the build resolves,
//! so their keys from the environment and `--set` are stacked over the
//! file's tables before the build ([`sections::FILE_SECTIONS`]).

pub mod dir_watch;
pub mod file;
pub mod file_cache;
pub mod flags;
pub mod memory;
pub mod sections;
pub mod table_split;

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use self::memory::MemorySettings;
use crate::directory::directory_key::KeyRefresh;
use crate::directory::settings::DirectorySettings;
use crate::oci::OciSettings;
use crate::peers::settings::PeerSettings;
use crate::relay::settings::{RelaySettings, WorkerSettings};
use crate::runtime::RuntimeSettings;
use crate::runtime::engine::{AllocatorChoice, EngineSettings};
use crate::runtime::host::dns::DEFAULT_MAX_DNS_LOOKUPS;
use crate::runtime::plugin::PluginSource;
use crate::server::edge::EdgeSettings;
use crate::server::origin_limit::DEFAULT_TRACKED_ORIGINS;
use crate::server::settings::AuthSection;
pub use crate::server::settings::MAX_CONNECTIONS_RANGE;
use crate::server::task_auth::AuthMode;
use crate::telemetry::otlp::ExportSettings;

// A plugin's spec lives with the table that serves it; kept here too so
// `config::PluginSpec` still names it.
pub use crate::server::plugin_table::PluginSpec;
// The range check every folder's `validate()` uses, under its old name.
pub use crate::settings::check_range;

/// Default `max_concurrent`.
pub const DEFAULT_MAX_CONCURRENT: u32 = 32;
/// `max_concurrent` bounds. REGISTER advertises at most 256 (the protocol's
/// `limits.max_concurrent` range); a node may run more, e.g. an LLM gateway
/// whose tasks mostly wait on a backend. The ceiling is what the instance
/// pool can reserve: 4 linear memories per slot, each a 4 GiB reservation
/// plus guard, is ~66 TiB of the 128 TiB of x86-64 user address space at
/// 4,096 slots.
pub const MAX_CONCURRENT_RANGE: RangeInclusive<u32> = 1..=4096;
/// Per-task memory bounds in MiB (wasm32 addresses 4 GiB).
pub const MEMORY_MB_RANGE: RangeInclusive<u32> = 1..=4096;
/// Default task budget bounds in ms (the protocol's `timeout_ms` range).
pub const TIMEOUT_MS_RANGE: RangeInclusive<u64> = 100..=300_000;
/// Resource-table entries per task: enough for the wasi basics, at most a
/// million (wasmtime's own default).
pub const MAX_RESOURCES_RANGE: RangeInclusive<u32> = 64..=1_000_000;
/// Host memory per task in KiB (64 KiB .. 4 GiB).
pub const HOST_MEMORY_KIB_RANGE: RangeInclusive<u32> = 64..=4 << 20;
/// Largest task result in KiB (1 KiB .. 64 MiB; the default is 4 MiB). The
/// node's worst case counts it three times per task (`memory_bound`), so a
/// plugin whose results are small (an LLM completion) may lower it to run
/// many more tasks at once in the same memory.
pub const MAX_OUTPUT_KIB_RANGE: RangeInclusive<u32> = 1..=64 << 10;
/// Bounds on `max_dns_lookups`: at least one lookup, at most half of
/// tokio's blocking pool (512 threads).
pub const MAX_DNS_LOOKUPS_RANGE: RangeInclusive<usize> = 1..=256;
/// Default request body limit.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1 << 20;
/// Default cap on remembered nonces (~18 bytes each).
pub const DEFAULT_NONCE_CAPACITY: usize = 1_000_000;
/// Default tasks per `Origin` per minute (the SDK's 120).
pub const DEFAULT_ORIGIN_RATE_LIMIT: u32 = 120;
/// Default wait for a slot of realtime and interactive tasks (the reference
/// node's 2 s).
pub const DEFAULT_QOS_WAIT: Duration = Duration::from_secs(2);
/// Bounds on the QoS wait, in ms (0: every class fails fast).
pub const QOS_WAIT_MS_RANGE: RangeInclusive<u64> = 0..=30_000;
/// Default bound on tasks waiting for a slot at once.
pub const DEFAULT_QOS_MAX_WAITING: u32 = 64;
/// Bounds on tasks waiting at once (each holds a connection and its body).
pub const QOS_MAX_WAITING_RANGE: RangeInclusive<u32> = 0..=65_536;
/// Default bound on remembered task ids (idempotency).
pub const DEFAULT_IDEMPOTENCY_CAPACITY: usize = 100_000;
/// Default bound on the bytes of remembered task ids and their answers.
pub const DEFAULT_IDEMPOTENCY_MAX_BYTES: usize = 64 << 20;
/// The replay window of `protocol.md` §4.1.
pub const NONCE_WINDOW: Duration = Duration::from_secs(300);
/// Default `retry_after_ms` of the 503 `IICP-E024` a drained node or plugin
/// answers.
pub const DEFAULT_DRAIN_RETRY_AFTER: Duration = Duration::from_secs(30);
/// Bounds on that advice, in ms.
pub const DRAIN_RETRY_AFTER_MS_RANGE: RangeInclusive<u64> = 1..=86_400_000;
/// Default bound on draining at shutdown.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Bounds of the connection deadlines, in ms.
pub const EDGE_TIMEOUT_MS_RANGE: RangeInclusive<u64> = 100..=3_600_000;
/// Bounds of the request-head size limit, in bytes.
pub const MAX_HEADER_BYTES_RANGE: RangeInclusive<usize> = 1024..=1 << 20;
/// Bounds of the request-header count limit.
pub const MAX_HEADERS_RANGE: RangeInclusive<usize> = 8..=1024;
/// Bounds of the number of origins the per-Origin limit tracks.
pub const ORIGIN_LIMIT_TRACKED_RANGE: RangeInclusive<usize> = 32..=1_000_000;
/// Unsent-answer budget in MiB: at least two of the largest answers (a
/// result of 4 MiB in its envelope), at most 1 TiB.
pub const MAX_UNSENT_ANSWERS_MIB_RANGE: RangeInclusive<u64> = 10..=1_048_576;
/// Where pulled plugins are kept, inside the cache directory.
pub const OCI_STORE_SUBDIR: &str = "oci";
/// Default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default region.
pub const DEFAULT_REGION: &str = "unknown";

/// Everything the node needs to start.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The node id, when the operator fixed one; otherwise the stored or a new one.
    pub node_id: Option<String>,
    /// The region it advertises.
    pub region: String,
    /// Where the HTTP API listens.
    pub listen: SocketAddr,
    /// Tasks running at once; more get 429 (or wait, see `qos_wait`).
    pub max_concurrent: u32,
    /// How long realtime and interactive tasks may wait for a slot.
    pub qos_wait: Duration,
    /// Most tasks waiting for a slot at once; more get 429 at once.
    pub qos_max_waiting: u32,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Connection bounds of the public listener (the admin listener uses
    /// them too, with its own connection cap).
    pub edge: EdgeSettings,
    /// Most nonces remembered inside the replay window.
    pub nonce_capacity: usize,
    /// Idempotent task ids, when on (off by default, as in the reference
    /// node: consumers and load generators reuse task ids, and the
    /// reference node runs every one of them).
    pub idempotency: Option<IdempotencyBounds>,
    /// Tasks per browser `Origin` per minute; 0 turns the limit off.
    pub origin_rate_limit: u32,
    /// Node-wide task authentication.
    pub auth: AuthSettings,
    /// Bounds of the OTLP span export (on when the environment names an
    /// endpoint).
    pub telemetry: ExportSettings,
    /// Run tool-domain intents (`policy.allow_tool_execution`); otherwise
    /// they get 403 `tool_execution_denied`.
    pub allow_tool_execution: bool,
    /// Most origins whose window is remembered.
    pub origin_limit_tracked: usize,
    /// How long shutdown waits for in-flight tasks.
    pub drain_timeout: Duration,
    /// When a drained node or plugin tells consumers to try again.
    pub drain_retry_after: Duration,
    /// Where the node id, directory credentials and IICP-CX key persist.
    pub state_dir: Option<PathBuf>,
    /// IICP-CX: advertise an X25519 key and accept encrypted tasks (default
    /// on; default consumers send tasks only to nodes that do).
    pub confidentiality: bool,
    /// The directory to join; `None` serves standalone.
    pub directory: Option<DirectorySettings>,
    /// Engine and artifact-cache settings.
    pub runtime: RuntimeSettings,
    /// How plugins given by OCI reference are pulled (`fetch`).
    pub oci: OciSettings,
    /// The plugins to serve.
    pub plugins: Vec<PluginSpec>,
    /// The admin API, when configured.
    pub admin: Option<AdminSettings>,
    /// Relaying and peer gossip.
    pub reach: ReachSettings,
    /// Start even when the worst-case memory exceeds the machine's (see
    /// `memory_bound`).
    pub memory_overcommit: bool,
    /// The memory the node may assume and which memory-driven settings
    /// were given (the others are sized to it, see `memory_sizing`).
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

/// The bounds of the task-id cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdempotencyBounds {
    /// Answered task ids remembered at most.
    pub capacity: usize,
    /// Bytes of remembered ids and answers at most.
    pub max_bytes: usize,
}

impl Default for IdempotencyBounds {
    fn default() -> Self {
        Self {
            capacity: DEFAULT_IDEMPOTENCY_CAPACITY,
            max_bytes: DEFAULT_IDEMPOTENCY_MAX_BYTES,
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
        Self {
            node_id: None,
            region: DEFAULT_REGION.to_string(),
            listen: DEFAULT_LISTEN
                .parse()
                .unwrap_or_else(|_| unreachable!("valid default address")),
            max_concurrent: DEFAULT_MAX_CONCURRENT,
            qos_wait: DEFAULT_QOS_WAIT,
            qos_max_waiting: DEFAULT_QOS_MAX_WAITING,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            edge: EdgeSettings::default(),
            nonce_capacity: DEFAULT_NONCE_CAPACITY,
            idempotency: None,
            origin_rate_limit: DEFAULT_ORIGIN_RATE_LIMIT,
            auth: AuthSettings::default(),
            telemetry: ExportSettings::default(),
            allow_tool_execution: false,
            origin_limit_tracked: DEFAULT_TRACKED_ORIGINS,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            drain_retry_after: DEFAULT_DRAIN_RETRY_AFTER,
            state_dir: None,
            confidentiality: true,
            directory: None,
            runtime: RuntimeSettings {
                engine: EngineSettings {
                    max_instances: DEFAULT_MAX_CONCURRENT,
                    keep_resident_bytes: None,
                    allocator: AllocatorChoice::default(),
                },
                cache_dir: default_cache_dir(),
                max_dns_lookups: DEFAULT_MAX_DNS_LOOKUPS,
            },
            oci: OciSettings {
                store_dir: default_cache_dir().map(|dir| dir.join(OCI_STORE_SUBDIR)),
                ..OciSettings::default()
            },
            plugins: vec![PluginSpec::new(PluginSource::new(path))],
            admin: None,
            reach: ReachSettings::default(),
            memory_overcommit: false,
            memory: MemorySettings::default(),
            config_path: None,
        }
    }
}

/// Connection bounds as given in a file section or on the command line;
/// each one set replaces the default.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct EdgeOverrides {
    /// Time a client has to send a complete request head, in ms [default: 10000].
    #[arg(long, env = "IICP_HOST_HEADER_READ_TIMEOUT_MS")]
    pub header_read_timeout_ms: Option<u64>,
    /// Time a client has to send a whole request body, in ms; then 408 [default: 30000].
    #[arg(long, env = "IICP_HOST_BODY_READ_TIMEOUT_MS")]
    pub body_read_timeout_ms: Option<u64>,
    /// How long an idle keep-alive connection stays open, in ms [default: 60000].
    #[arg(long, env = "IICP_HOST_KEEP_ALIVE_TIMEOUT_MS")]
    pub keep_alive_timeout_ms: Option<u64>,
    /// How long one response may wait, in all, on a client that does not read it, in ms; then the connection closes [default: 60000].
    #[arg(long, env = "IICP_HOST_RESPONSE_WRITE_TIMEOUT_MS")]
    pub response_write_timeout_ms: Option<u64>,
    /// Largest request head (request line and headers), in bytes; more get 431 [default: 16384].
    #[arg(long, env = "IICP_HOST_MAX_HEADER_BYTES")]
    pub max_header_bytes: Option<usize>,
    /// Most request headers; more get 431 [default: 100].
    #[arg(long, env = "IICP_HOST_MAX_HEADERS")]
    pub max_headers: Option<usize>,
    /// Most connections open at once on the public listener; more get 503 [default: 4096].
    #[arg(long, env = "IICP_HOST_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// After answering on a connection it then closes, how long the node reads and discards what the client still sends, so the answer is not lost to a reset, in ms [default: 2000].
    #[arg(long, env = "IICP_HOST_LINGERING_CLOSE_MS")]
    pub lingering_close_ms: Option<u64>,
    /// Task answers the node holds for clients that have not taken them yet, node-wide, in MiB; past it answers get 503 [default: 256].
    #[arg(long, env = "IICP_HOST_MAX_UNSENT_ANSWERS_MIB")]
    pub max_unsent_answers_mib: Option<u64>,
}

impl EdgeOverrides {
    /// Applies the values set to `edge`, checking each against its bounds;
    /// `name` turns a field name into what the operator typed.
    pub fn apply(
        &self,
        edge: &mut EdgeSettings,
        name: impl Fn(&str) -> String,
    ) -> Result<(), String> {
        let ms = |field: &str, value: Option<u64>, current: Duration| {
            value.map_or(Ok(current), |ms| {
                check_range(&name(field), ms, &EDGE_TIMEOUT_MS_RANGE).map(Duration::from_millis)
            })
        };
        edge.header_read_timeout = ms(
            "header_read_timeout_ms",
            self.header_read_timeout_ms,
            edge.header_read_timeout,
        )?;
        edge.body_read_timeout = ms(
            "body_read_timeout_ms",
            self.body_read_timeout_ms,
            edge.body_read_timeout,
        )?;
        edge.keep_alive_timeout = ms(
            "keep_alive_timeout_ms",
            self.keep_alive_timeout_ms,
            edge.keep_alive_timeout,
        )?;
        edge.response_write_timeout = ms(
            "response_write_timeout_ms",
            self.response_write_timeout_ms,
            edge.response_write_timeout,
        )?;
        edge.lingering_close = ms(
            "lingering_close_ms",
            self.lingering_close_ms,
            edge.lingering_close,
        )?;
        if let Some(bytes) = self.max_header_bytes {
            edge.max_header_bytes =
                check_range(&name("max_header_bytes"), bytes, &MAX_HEADER_BYTES_RANGE)?;
        }
        if let Some(count) = self.max_headers {
            edge.max_headers = check_range(&name("max_headers"), count, &MAX_HEADERS_RANGE)?;
        }
        if let Some(mib) = self.max_unsent_answers_mib {
            edge.max_unsent_answer_bytes = check_range(
                &name("max_unsent_answers_mib"),
                mib,
                &MAX_UNSENT_ANSWERS_MIB_RANGE,
            )? << 20;
        }
        if let Some(count) = self.max_connections {
            edge.max_connections =
                check_range(&name("max_connections"), count, &MAX_CONNECTIONS_RANGE)?;
        }
        Ok(())
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
