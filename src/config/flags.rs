//! The `run` command's flags and how they stack over the configuration
//! file (or the single `--plugin`): `RunArgs::to_config` is the one place a
//! configuration is built, at start and at every hot reload. Each flag also
//! reads its `IICP_HOST_*` variable; every key of a capability's settings
//! section is settable from the environment (`IICP_HOST_<SECTION>__<KEY>`)
//! and by `--set SECTION.KEY=VALUE` as well (see [`crate::settings`]).

// The doc comments of the flags are their `--help` text, written for a
// terminal, not for rustdoc.
#![allow(
    rustdoc::bare_urls,
    rustdoc::broken_intra_doc_links,
    rustdoc::invalid_html_tags
)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::file::{self, PluginFileCache};
use super::*;
use crate::directory::settings::validate_http_url;
use crate::oci::settings::{MAX_PLUGIN_MIB_RANGE, TIMEOUT_MS_RANGE, is_registry};
use crate::oci::signature::SignatureKey;
use crate::oci::{OciLocation, OciSettings};
use crate::peers::settings::PeerSettings;
use crate::relay::settings::{RelaySettings, WorkerSettings};
use crate::runtime::engine::AllocatorChoice;
use crate::settings::{Overrides, Section};
use crate::telemetry::{LogFormat, otlp};

/// How to talk to OCI registries (shared by `run` and `push`).
#[derive(Args, Clone)]
pub struct RegistryArgs {
    /// Deadline of each registry call, in ms [default: 60000].
    #[arg(long, env = "IICP_HOST_OCI_TIMEOUT_MS")]
    oci_timeout_ms: Option<u64>,
    /// Largest plugin pulled or pushed, in MiB [default: 256].
    #[arg(long, env = "IICP_HOST_OCI_MAX_PLUGIN_MIB")]
    oci_max_plugin_mib: Option<u32>,
    /// A registry (HOST:PORT) spoken to over plain HTTP although not on
    /// loopback (repeatable; loopback registries always use HTTP).
    #[arg(
        long = "oci-insecure-registry",
        value_name = "HOST:PORT",
        env = "IICP_HOST_OCI_INSECURE_REGISTRY",
        value_delimiter = ','
    )]
    oci_insecure_registries: Vec<String>,
}

impl RegistryArgs {
    /// Applies the flags to `settings`.
    pub fn apply(&self, settings: &mut OciSettings) -> Result<(), String> {
        if let Some(ms) = self.oci_timeout_ms {
            settings.timeout =
                Duration::from_millis(check_range("--oci-timeout-ms", ms, &TIMEOUT_MS_RANGE)?);
        }
        if let Some(mib) = self.oci_max_plugin_mib {
            settings.max_plugin_bytes = u64::from(check_range(
                "--oci-max-plugin-mib",
                mib,
                &MAX_PLUGIN_MIB_RANGE,
            )?) << 20;
        }
        for registry in &self.oci_insecure_registries {
            if !is_registry(registry) {
                return Err(format!(
                    "--oci-insecure-registry: {registry:?} is not HOST:PORT"
                ));
            }
            settings.insecure_registries.push(registry.clone());
        }
        Ok(())
    }
}

/// Flags given with `--config` override the file.
#[derive(Args, Clone)]
pub struct RunArgs {
    /// The plugin component (.wasm) to serve; it declares its own intents.
    #[arg(
        long,
        required_unless_present = "config",
        conflicts_with = "config",
        env = "IICP_HOST_PLUGIN"
    )]
    plugin: Option<PathBuf>,
    /// A TOML configuration file (see iicp-host.example.toml).
    #[arg(long, env = "IICP_HOST_CONFIG")]
    config: Option<PathBuf>,
    /// Address of the HTTP API [default: 127.0.0.1:8080].
    #[arg(long, env = "IICP_HOST_LISTEN")]
    listen: Option<SocketAddr>,
    /// Tasks run at once; more are refused with 429 [default: 32].
    #[arg(long, env = "IICP_HOST_MAX_CONCURRENT")]
    max_concurrent: Option<u32>,
    /// How long realtime and interactive tasks wait for a slot at a full node,
    /// in ms; batch and best-effort never wait; 0 = nobody waits [default: 2000].
    #[arg(long, env = "IICP_HOST_QOS_WAIT_MS")]
    qos_wait_ms: Option<u64>,
    /// Most tasks waiting for a slot at once; more get 429 at once [default: 64].
    #[arg(long, env = "IICP_HOST_QOS_MAX_WAITING")]
    qos_max_waiting: Option<u32>,
    /// Linear memory per task, in MiB, for every plugin [default: 128].
    #[arg(long, env = "IICP_HOST_MEMORY_MB")]
    memory_mb: Option<u32>,
    /// Task budget when the consumer sets no constraints.timeout_ms, for every plugin [default: 30000].
    #[arg(long, env = "IICP_HOST_TIMEOUT_MS")]
    timeout_ms: Option<u64>,
    /// The longest budget a task gets, whatever its constraints.timeout_ms asks, for every plugin [default: 300000].
    #[arg(long, env = "IICP_HOST_MAX_TIMEOUT_MS")]
    max_timeout_ms: Option<u64>,
    /// Resource-table entries a task may hold (wasi resources: header maps,
    /// requests, streams, pollables), for every plugin [default: 1024].
    #[arg(long, env = "IICP_HOST_MAX_RESOURCES")]
    max_resources: Option<u32>,
    /// Memory a task may make the host hold outside its own linear memory
    /// (wasi:http header maps, request strings, body buffers), in KiB, for
    /// every plugin [default: 8192].
    #[arg(long, env = "IICP_HOST_HOST_MEMORY_KIB")]
    host_memory_kib: Option<u32>,
    /// Serve up to N tasks with one instance instead of a fresh instance per
    /// task, for every plugin. Faster, but a task can see memory an earlier
    /// task of the same plugin left behind [default: 1, isolated].
    #[arg(long, env = "IICP_HOST_INSTANCE_REUSE")]
    instance_reuse: Option<u32>,
    /// Node id in the mesh [default: the stored one, else a new UUID].
    #[arg(long, env = "IICP_HOST_NODE_ID")]
    node_id: Option<String>,
    /// Region advertised [default: unknown].
    #[arg(long, env = "IICP_HOST_REGION")]
    region: Option<String>,
    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "IICP_HOST_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// Largest request body accepted, in bytes [default: 1048576].
    #[arg(long, env = "IICP_HOST_MAX_BODY_BYTES")]
    max_body_bytes: Option<usize>,
    /// Most nonces remembered for replay protection [default: 1000000].
    #[arg(long, env = "IICP_HOST_NONCE_CACHE_CAPACITY")]
    nonce_cache_capacity: Option<usize>,
    /// Who may send tasks: open (anyone), node-token (an operator-granted
    /// token in auth.node_token), consumer-token (a directory-signed
    /// X-IICP-Consumer-Token, or a node token) [default: open].
    #[arg(long, value_enum, env = "IICP_HOST_TASK_AUTH")]
    task_auth: Option<crate::server::task_auth::AuthMode>,
    /// Finished spans held for OTLP export at most (waiting or being
    /// sent); more are dropped (with OTEL_EXPORTER_OTLP_ENDPOINT) [default: 2048].
    #[arg(long, env = "IICP_HOST_OTLP_QUEUE_SPANS")]
    otlp_queue_spans: Option<usize>,
    /// Estimated bytes of those spans at most; more are dropped [default: 4194304].
    #[arg(long, env = "IICP_HOST_OTLP_QUEUE_BYTES")]
    otlp_queue_bytes: Option<usize>,
    /// Bound on one OTLP export request, connection included, in ms [default: 5000].
    #[arg(long, env = "IICP_HOST_OTLP_TIMEOUT_MS")]
    otlp_timeout_ms: Option<u64>,
    /// Idempotent task ids: a task id seen in the last 300 s gets its first
    /// answer instead of running again, or 409 IICP-E010 with other content
    /// [default: off, as in the reference node].
    #[arg(long, env = "IICP_HOST_IDEMPOTENCY")]
    idempotency: bool,
    /// Answered task ids remembered at most, with --idempotency [default: 100000].
    #[arg(long, env = "IICP_HOST_IDEMPOTENCY_CAPACITY")]
    idempotency_capacity: Option<usize>,
    /// Bytes of remembered task ids and answers at most, with --idempotency [default: 67108864].
    #[arg(long, env = "IICP_HOST_IDEMPOTENCY_MAX_BYTES")]
    idempotency_max_bytes: Option<usize>,
    /// Tasks per browser Origin per minute; more get 429 IICP-E023; 0 turns it off [default: 120].
    #[arg(long, env = "IICP_HOST_ORIGIN_RATE_LIMIT")]
    origin_rate_limit: Option<u32>,
    /// Run tool-domain intents (urn:iicp:intent:tool:…); without it, or
    /// `allow_tool_execution = true` in [policy], they get 403.
    #[arg(long, env = "IICP_HOST_ALLOW_TOOL_EXECUTION")]
    allow_tool_execution: bool,
    /// Browser origins whose task window is remembered (least recently used forgotten first) [default: 10000].
    #[arg(long, env = "IICP_HOST_ORIGIN_LIMIT_TRACKED")]
    origin_limit_tracked: Option<usize>,
    /// How long shutdown waits for in-flight tasks, in ms [default: 30000].
    #[arg(long, env = "IICP_HOST_DRAIN_TIMEOUT_MS")]
    drain_timeout_ms: Option<u64>,
    #[command(flatten)]
    edge: EdgeOverrides,
    /// retry_after_ms a drained node or plugin advises (503 IICP-E024), in ms [default: 30000].
    #[arg(long, env = "IICP_HOST_DRAIN_RETRY_AFTER_MS")]
    drain_retry_after_ms: Option<u64>,
    /// Directory for compiled plugins [default: ~/.cache/iicp-host].
    #[arg(long, env = "IICP_HOST_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Compile plugins on every start instead of caching them.
    #[arg(long, conflicts_with = "cache_dir", env = "IICP_HOST_NO_CACHE")]
    no_cache: bool,
    /// Instance allocator [default: auto].
    #[arg(long, value_enum, env = "IICP_HOST_ALLOCATOR")]
    allocator: Option<AllocatorChoice>,
    /// Memory kept warm per pooled instance slot, in KiB [default: 1024 when
    /// the kernel supports PAGEMAP_SCAN, else 64].
    #[arg(long, env = "IICP_HOST_KEEP_RESIDENT_KIB")]
    keep_resident_kib: Option<u32>,
    /// Plugins' DNS lookups in flight at once, node-wide (each holds a
    /// blocking thread until the resolver answers), 1-256 [default: 32].
    #[arg(long, env = "IICP_HOST_MAX_DNS_LOOKUPS")]
    max_dns_lookups: Option<usize>,
    /// Directory base URL to register with, e.g. https://iicp.network/api.
    #[arg(long, env = "IICP_HOST_DIRECTORY")]
    directory: Option<String>,
    /// Public URL advertised to the directory [default: http://<listen address>].
    #[arg(long, env = "IICP_HOST_ENDPOINT")]
    endpoint: Option<String>,
    /// Where the node id, directory credentials and IICP-CX key persist [default: ~/.local/state/iicp-host].
    #[arg(long, env = "IICP_HOST_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Do not advertise an IICP-CX key nor accept encrypted tasks; default
    /// consumers then skip this node.
    #[arg(long, env = "IICP_HOST_NO_CONFIDENTIALITY")]
    no_confidentiality: bool,
    /// Start even if the configuration's worst-case memory (see
    /// docs/memory.md, "Memory bounds") exceeds this machine's memory.
    #[arg(long, env = "IICP_HOST_MEMORY_OVERCOMMIT")]
    memory_overcommit: bool,
    /// The memory the node may assume, in MiB, where its limit is not
    /// visible (a container or sandbox); the smaller of this and its
    /// cgroup limit or the machine's memory counts. Settings not given are
    /// sized to fit it [default: what the node sees].
    #[arg(long, env = "IICP_HOST_MEMORY_LIMIT_MIB")]
    memory_limit_mib: Option<u64>,
    /// Address of the admin API (needs an [admin] table with token_env).
    #[arg(long, env = "IICP_HOST_ADMIN_LISTEN")]
    admin_listen: Option<SocketAddr>,
    /// Serve from behind NAT through this relay (its base URL, or
    /// iicp://host:port for the native IICP framing to its accept port);
    /// the directory then lists the relay's /v1/relay-for/<node id> endpoint.
    #[arg(long, value_name = "URL", env = "IICP_HOST_RELAY")]
    relay: Option<String>,
    /// Act as a relay for workers behind NAT.
    #[arg(long, env = "IICP_HOST_RELAY_CAPABLE")]
    relay_capable: bool,
    /// Workers bound at once when relaying [default: 256].
    #[arg(long, env = "IICP_HOST_RELAY_MAX_SESSIONS")]
    relay_max_sessions: Option<u32>,
    /// New binds per source address per minute when relaying; 0 turns it off [default: 30].
    #[arg(long, env = "IICP_HOST_RELAY_BIND_RATE_LIMIT")]
    relay_bind_rate_limit: Option<u32>,
    /// A bound worker silent this long is dropped and its tasks failed, in ms [default: 90000].
    #[arg(long, env = "IICP_HOST_RELAY_LIVENESS_MS")]
    relay_liveness_ms: Option<u64>,
    /// The directory's Ed25519 key (hex) that signs relay bind tickets.
    #[arg(long, value_name = "HEX", env = "IICP_HOST_RELAY_BIND_TICKET_KEY")]
    relay_bind_ticket_key: Option<String>,
    /// Refuse relay binds without a valid bind ticket.
    #[arg(long, env = "IICP_HOST_RELAY_REQUIRE_BIND_TICKET")]
    relay_require_bind_ticket: bool,
    /// Refuse relay binds that present neither a rebind key nor a bind ticket.
    #[arg(long, env = "IICP_HOST_RELAY_REFUSE_KEYLESS_BINDS")]
    relay_refuse_keyless_binds: bool,
    /// Worker ids the relay pins to their rebind keys at most [default: 16384].
    #[arg(long, value_name = "N", env = "IICP_HOST_RELAY_MAX_PINNED_WORKERS")]
    relay_max_pinned_workers: Option<u32>,
    /// Port where workers bind over the native IICP framing when relaying
    /// (the reference's relay_accept_port); 0 turns it off [default: 9485].
    #[arg(long, value_name = "PORT", env = "IICP_HOST_RELAY_ACCEPT_PORT")]
    relay_accept_port: Option<u16>,
    /// Gossip peers (POST /v1/peers) with the [peers] settings or their defaults.
    #[arg(long, env = "IICP_HOST_PEERS")]
    peers: bool,
    /// A peer to gossip with first (repeatable, or comma-separated in the
    /// variable; implies --peers).
    #[arg(
        long = "peer-seed",
        value_name = "URL",
        env = "IICP_HOST_PEER_SEED",
        value_delimiter = ','
    )]
    peer_seeds: Vec<String>,
    #[command(flatten)]
    registry: RegistryArgs,
    /// The plugin files may be compiled artifacts (`iicp-host compile`):
    /// native code the node runs as itself, for every local plugin; only
    /// for files you compiled yourself. Never applies to oci:// plugins.
    #[arg(long, env = "IICP_HOST_PRECOMPILED")]
    precompiled: bool,
    /// A public key (PEM, ECDSA P-256, as cosign makes) one of which must
    /// have signed every oci:// plugin, cosign-style (repeatable; replaces
    /// the keys of the file).
    #[arg(
        long = "oci-signature-key",
        value_name = "PEM_FILE",
        env = "IICP_HOST_OCI_SIGNATURE_KEY",
        value_delimiter = ','
    )]
    oci_signature_keys: Vec<PathBuf>,
    /// oci:// plugins must be pinned: oci://REGISTRY/REPO@sha256:DIGEST.
    #[arg(long, env = "IICP_HOST_OCI_REQUIRE_DIGEST")]
    oci_require_digest: bool,
    /// Set one key of a settings section ([relay], [relay_capable], [peers],
    /// [telemetry]; with --config also [oci], [auth], [directory], [admin]) over the
    /// file and the IICP_HOST_<SECTION>__<KEY> variables, e.g. --set
    /// relay_capable.max_sessions=512 (repeatable; the dedicated flags above
    /// still win).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    set: Vec<String>,
}

impl RunArgs {
    /// The configuration: the file (or the single plugin) with the flags
    /// applied. Called again for every hot reload; `plugin_files` keeps the
    /// plugin directories' parsed files between calls.
    pub fn to_config(&self, plugin_files: &PluginFileCache) -> Result<NodeConfig, String> {
        let overrides = Overrides::from_env(std::env::vars()).with_flags(&self.set)?;
        sections::check_names(&overrides, self.config.is_some())?;
        let mut config = match (&self.config, &self.plugin) {
            (Some(path), _) => {
                file::load_cached(path, plugin_files, &overrides).map_err(|e| e.to_string())?
            }
            (None, Some(plugin)) => NodeConfig::with_plugin(plugin.clone()),
            (None, None) => return Err("give --plugin or --config".to_string()),
        };
        sections::stack(&mut config, &overrides)?;
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
        if let Some(max) = self.max_concurrent {
            config.max_concurrent = check_range("--max-concurrent", max, &MAX_CONCURRENT_RANGE)?;
            config.runtime.engine.max_instances = config.max_concurrent;
            config.memory.given.max_concurrent = true;
        }
        if let Some(ms) = self.qos_wait_ms {
            config.qos_wait =
                Duration::from_millis(check_range("--qos-wait-ms", ms, &QOS_WAIT_MS_RANGE)?);
        }
        if let Some(waiting) = self.qos_max_waiting {
            config.qos_max_waiting =
                check_range("--qos-max-waiting", waiting, &QOS_MAX_WAITING_RANGE)?;
        }
        let signature_keys = self
            .oci_signature_keys
            .iter()
            .map(|path| SignatureKey::load(path).map_err(|e| format!("--oci-signature-key: {e}")))
            .collect::<Result<Vec<_>, String>>()?;
        for plugin in &mut config.plugins {
            let source = &mut plugin.source;
            if OciLocation::from_path(&source.path).is_some() {
                if !signature_keys.is_empty() {
                    source.signatures.keys.clone_from(&signature_keys);
                }
                source.signatures.require_digest |= self.oci_require_digest;
            } else if self.precompiled {
                source.precompiled = true;
            }
            if let Some(memory_mb) = self.memory_mb {
                plugin.source.limits.memory_bytes =
                    (check_range("--memory-mb", memory_mb, &MEMORY_MB_RANGE)? as usize) << 20;
                plugin.memory_given = true;
            }
            if let Some(timeout_ms) = self.timeout_ms {
                plugin.source.limits.default_timeout = Duration::from_millis(check_range(
                    "--timeout-ms",
                    timeout_ms,
                    &TIMEOUT_MS_RANGE,
                )?);
            }
            if let Some(reuse) = self.instance_reuse {
                plugin.source.limits.instance_reuse =
                    check_range("--instance-reuse", reuse, &(1..=1_000_000))?;
            }
            if let Some(ms) = self.max_timeout_ms {
                plugin.source.limits.max_timeout =
                    Duration::from_millis(check_range("--max-timeout-ms", ms, &TIMEOUT_MS_RANGE)?);
            }
            if let Some(entries) = self.max_resources {
                plugin.source.limits.max_resources =
                    check_range("--max-resources", entries, &MAX_RESOURCES_RANGE)?;
            }
            if let Some(kib) = self.host_memory_kib {
                plugin.source.limits.host_memory_bytes =
                    (check_range("--host-memory-kib", kib, &HOST_MEMORY_KIB_RANGE)? as usize) << 10;
            }
            plugin
                .source
                .limits
                .fit_default_timeout(self.timeout_ms.is_some())
                .map_err(|(default, ceiling)| {
                    format!(
                        "--timeout-ms ({default} ms) is above the task budget ceiling ({ceiling} ms)"
                    )
                })?;
        }
        if self.node_id.is_some() {
            config.node_id.clone_from(&self.node_id);
        }
        if let Some(region) = &self.region {
            config.region.clone_from(region);
        }
        if let Some(bytes) = self.max_body_bytes {
            config.max_body_bytes = bytes;
        }
        if let Some(capacity) = self.nonce_cache_capacity {
            config.nonce_capacity = capacity;
            config.memory.given.nonce_cache_capacity = true;
        }
        if self.idempotency && config.idempotency.is_none() {
            config.idempotency = Some(IdempotencyBounds::default());
        }
        if let Some(bounds) = &mut config.idempotency {
            if let Some(capacity) = self.idempotency_capacity {
                bounds.capacity = capacity;
            }
            if let Some(max_bytes) = self.idempotency_max_bytes {
                bounds.max_bytes = max_bytes;
                config.memory.given.idempotency_max_bytes = true;
            }
        } else if self.idempotency_capacity.is_some() || self.idempotency_max_bytes.is_some() {
            return Err(
                "--idempotency-capacity and --idempotency-max-bytes need --idempotency".to_string(),
            );
        }
        if let Some(limit) = self.origin_rate_limit {
            config.origin_rate_limit = limit;
        }
        if let Some(tracked) = self.origin_limit_tracked {
            config.origin_limit_tracked = check_range(
                "--origin-limit-tracked",
                tracked,
                &ORIGIN_LIMIT_TRACKED_RANGE,
            )?;
        }
        if let Some(ms) = self.drain_timeout_ms {
            config.drain_timeout = Duration::from_millis(ms);
        }
        self.edge.apply(&mut config.edge, |field| {
            format!("--{}", field.replace('_', "-"))
        })?;
        let given = &mut config.memory.given;
        given.max_connections |= self.edge.max_connections.is_some();
        given.max_unsent_answers |= self.edge.max_unsent_answers_mib.is_some();
        if let Some(ms) = self.drain_retry_after_ms {
            config.drain_retry_after = Duration::from_millis(check_range(
                "--drain-retry-after-ms",
                ms,
                &DRAIN_RETRY_AFTER_MS_RANGE,
            )?);
        }
        if self.no_cache {
            config.runtime.cache_dir = None;
        } else if self.cache_dir.is_some() {
            config.runtime.cache_dir.clone_from(&self.cache_dir);
        }
        if let Some(dir) = &self.cache_dir {
            config.oci.store_dir = Some(dir.join(OCI_STORE_SUBDIR));
        }
        self.registry.apply(&mut config.oci)?;
        if let Some(allocator) = self.allocator {
            config.runtime.engine.allocator = allocator;
        }
        if let Some(kib) = self.keep_resident_kib {
            config.runtime.engine.keep_resident_bytes = Some((kib as usize) << 10);
        }
        if let Some(lookups) = self.max_dns_lookups {
            config.runtime.max_dns_lookups =
                check_range("--max-dns-lookups", lookups, &MAX_DNS_LOOKUPS_RANGE)?;
            config.memory.given.max_dns_lookups = true;
        }
        if self.state_dir.is_some() {
            config.state_dir.clone_from(&self.state_dir);
        }
        if self.allow_tool_execution {
            config.allow_tool_execution = true;
            if let Some(policy) = config.directory.as_mut().and_then(|d| d.policy.as_mut()) {
                policy.allow_tool_execution = true;
            }
        }
        if self.no_confidentiality {
            config.confidentiality = false;
        }
        if self.memory_overcommit {
            config.memory_overcommit = true;
        }
        if let Some(mib) = self.memory_limit_mib {
            config.memory.set_limit_mib("--memory-limit-mib", mib)?;
        }
        if let Some(endpoint) = &self.endpoint {
            validate_http_url(endpoint).map_err(|e| format!("--endpoint: {e}"))?;
        }
        match (self.directory.clone(), &mut config.directory) {
            (Some(url), Some(settings)) => settings.url = url,
            (Some(url), None) => config.directory = Some(file::directory_defaults(url, None)),
            (None, _) => {}
        }
        if let Some(settings) = &mut config.directory {
            validate_http_url(&settings.url).map_err(|e| format!("--directory: {e}"))?;
            if self.endpoint.is_some() {
                settings.endpoint.clone_from(&self.endpoint);
            }
        } else if self.endpoint.is_some() {
            return Err("--endpoint is only meaningful with --directory".to_string());
        }
        match (self.admin_listen, &mut config.admin) {
            (Some(listen), Some(admin)) => admin.listen = listen,
            (Some(_), None) => {
                return Err(
                    "--admin-listen needs an [admin] table with token_env in the config file"
                        .to_string(),
                );
            }
            (None, _) => {}
        }
        self.apply_reach(&mut config)?;
        if let Some(spans) = self.otlp_queue_spans {
            config.telemetry.queue_spans =
                check_range("--otlp-queue-spans", spans, &otlp::SPANS_RANGE)?;
        }
        if let Some(bytes) = self.otlp_queue_bytes {
            config.telemetry.queue_bytes =
                check_range("--otlp-queue-bytes", bytes, &otlp::BYTES_RANGE)?;
        }
        if let Some(ms) = self.otlp_timeout_ms {
            config.telemetry.timeout =
                Duration::from_millis(check_range("--otlp-timeout-ms", ms, &otlp::MS_RANGE)?);
        }
        if let Some(mode) = self.task_auth {
            config.auth.mode = mode;
        }
        config.check_auth().map_err(|e| match &config.config_path {
            Some(path) => format!("{}: {e}", path.display()),
            None => e,
        })?;
        if let Some(id) = &config.node_id {
            crate::directory::identity::check_node_id(id).map_err(|e| format!("--node-id: {e}"))?;
        }
        Ok(config)
    }
}

impl RunArgs {
    /// The relay flags, over the file's `[relay]` and `[relay_capable]`.
    fn apply_reach(&self, config: &mut NodeConfig) -> Result<(), String> {
        let reach = &mut config.reach;
        if let Some(url) = &self.relay {
            match &mut reach.relay {
                Some(worker) => worker.url.clone_from(url),
                None => reach.relay = Some(WorkerSettings::new(url.clone())),
            }
        }
        if let Some(worker) = &reach.relay {
            worker.validate().map_err(|e| format!("--relay: {e}"))?;
            if self.endpoint.is_some() {
                return Err(
                    "--endpoint: a node serving through a relay advertises its relay-for endpoint"
                        .to_string(),
                );
            }
        }
        let tuned = self.relay_max_sessions.is_some()
            || self.relay_bind_rate_limit.is_some()
            || self.relay_liveness_ms.is_some()
            || self.relay_bind_ticket_key.is_some()
            || self.relay_require_bind_ticket
            || self.relay_refuse_keyless_binds
            || self.relay_max_pinned_workers.is_some()
            || self.relay_accept_port.is_some();
        if self.relay_capable || (tuned && reach.relay_capable.is_some()) {
            let relay = reach
                .relay_capable
                .get_or_insert_with(RelaySettings::default);
            if let Some(max) = self.relay_max_sessions {
                relay.max_sessions = max;
            }
            if let Some(limit) = self.relay_bind_rate_limit {
                relay.bind_rate_limit = limit;
            }
            if let Some(ms) = self.relay_liveness_ms {
                relay.liveness_ms = ms;
            }
            if self.relay_bind_ticket_key.is_some() {
                relay
                    .bind_ticket_key
                    .clone_from(&self.relay_bind_ticket_key);
            }
            if self.relay_require_bind_ticket {
                relay.require_bind_ticket = true;
            }
            if self.relay_refuse_keyless_binds {
                relay.refuse_keyless_binds = true;
            }
            if let Some(max) = self.relay_max_pinned_workers {
                relay.max_pinned_workers = max;
            }
            if let Some(port) = self.relay_accept_port {
                relay.accept_port = port;
            }
            relay
                .validate()
                .map_err(|e| format!("--relay-capable: {e}"))?;
        } else if tuned {
            return Err("the --relay-* limits need --relay-capable".to_string());
        }
        if self.peers || !self.peer_seeds.is_empty() {
            let peers = reach.peers.get_or_insert_with(PeerSettings::default);
            peers.seeds.extend(self.peer_seeds.iter().cloned());
            peers.validate().map_err(|e| format!("--peers: {e}"))?;
        }
        Ok(())
    }
}
