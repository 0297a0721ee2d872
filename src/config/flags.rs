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
use std::sync::Arc;

use clap::Args;
use serde::Serialize;

use super::file::{self, PluginFileCache};
use super::{NodeConfig, PluginSpec, sections};
use crate::directory::settings::validate_http_url;
use crate::oci::settings::OciSection;
use crate::oci::signature::SignatureKey;
use crate::oci::{OciLocation, OciSettings};
use crate::peers::settings::PeerSettings;
use crate::relay::settings::{RelaySettings, WorkerSettings};
use crate::runtime::engine::AllocatorChoice;
use crate::runtime::limit_settings::LimitKeys;
use crate::server::node_settings::NodeSection;
use crate::settings::{FlagValue, Overrides, Section, naming_flag};
use crate::telemetry::LogFormat;
use crate::telemetry::otlp::ExportSettings;

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
    /// Applies the flags to `settings`, checked by the `[oci]` section's
    /// own rules.
    pub fn apply(&self, settings: &mut OciSettings) -> Result<(), String> {
        let defaults = OciSection::default();
        let flags = OciSection {
            timeout_ms: self.oci_timeout_ms.unwrap_or(defaults.timeout_ms),
            max_plugin_mib: self.oci_max_plugin_mib.unwrap_or(defaults.max_plugin_mib),
            insecure_registries: self.oci_insecure_registries.clone(),
            ..defaults
        };
        flags.validate().map_err(|error| {
            let key = error.split([' ', ':']).next().unwrap_or_default();
            let flag = match key {
                "insecure_registries" => "--oci-insecure-registry".to_string(),
                key => format!("--oci-{}", key.replace('_', "-")),
            };
            naming_flag(&error, key, &flag)
        })?;
        let checked = flags.settings(None);
        if self.oci_timeout_ms.is_some() {
            settings.timeout = checked.timeout;
        }
        if self.oci_max_plugin_mib.is_some() {
            settings.max_plugin_bytes = checked.max_plugin_bytes;
        }
        settings
            .insecure_registries
            .extend(checked.insecure_registries);
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
    edge: EdgeFlags,
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
    /// Set one key of a settings section ([node], [defaults], [relay],
    /// [relay_capable], [peers], [telemetry]; with --config also [oci],
    /// [auth], [directory], [admin]) over the
    /// file and the IICP_HOST_<SECTION>__<KEY> variables, e.g. --set
    /// relay_capable.max_sessions=512 (repeatable; the dedicated flags above
    /// still win).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    set: Vec<String>,
}

impl RunArgs {
    /// The configuration: the file (or the single plugin) with the
    /// environment's, `--set`'s and the dedicated flags' keys stacked over
    /// it. Called again for every hot reload; `plugin_files` keeps the
    /// plugin directories' parsed files between calls.
    pub fn to_config(&self, plugin_files: &PluginFileCache) -> Result<NodeConfig, String> {
        let dedicated = self.section_flags()?;
        let relay_tuned = dedicated.iter().any(|v| v.section == RelaySettings::NAME);
        let overrides = Overrides::from_env(std::env::vars())
            .with_flags(&self.set)?
            .with_dedicated(dedicated);
        sections::check_names(&overrides, self.config.is_some())?;
        let mut config = match (&self.config, &self.plugin) {
            (Some(path), _) => {
                file::load_cached(path, plugin_files, &overrides).map_err(|e| e.to_string())?
            }
            (None, Some(plugin)) => file::for_plugin(plugin.clone(), &overrides)?,
            (None, None) => return Err("give --plugin or --config".to_string()),
        };
        // The --relay-* limits tune a relay the node is: --relay-capable, or
        // a [relay_capable] table in the file or from the environment.
        let relay = &mut config.reach.relay_capable;
        if self.relay_capable {
            relay.get_or_insert_with(RelaySettings::default);
        } else if relay_tuned && relay.is_none() && !overrides.sets(RelaySettings::NAME) {
            return Err("the --relay-* limits need --relay-capable".to_string());
        }
        sections::stack(&mut config, &overrides)?;
        self.apply_plugin_flags(&mut config)?;
        if !config.node.idempotency
            && (self.idempotency_capacity.is_some() || self.idempotency_max_bytes.is_some())
        {
            return Err(
                "--idempotency-capacity and --idempotency-max-bytes need --idempotency".to_string(),
            );
        }
        self.registry.apply(&mut config.oci)?;
        if self.allow_tool_execution {
            config.allow_tool_execution = true;
            if let Some(policy) = config.directory.as_mut().and_then(|d| d.policy.as_mut()) {
                policy.allow_tool_execution = true;
            }
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
        if let Some(mode) = self.task_auth {
            config.auth.mode = mode;
        }
        config.check_auth().map_err(|e| match &config.config_path {
            Some(path) => format!("{}: {e}", path.display()),
            None => e,
        })?;
        Ok(config)
    }

    /// The dedicated flags that set one key of a section, as that key's
    /// values: its range and rules are the section's own, and the
    /// environment's and `--set`'s values of the key stack under them.
    fn section_flags(&self) -> Result<Vec<FlagValue>, String> {
        let mut flags = SectionFlags::default();
        let node = NodeSection::NAME;
        flags.set(node, "listen", self.listen);
        flags.set(node, "max_concurrent", self.max_concurrent);
        flags.set(node, "qos_wait_ms", self.qos_wait_ms);
        flags.set(node, "qos_max_waiting", self.qos_max_waiting);
        flags.set(node, "node_id", self.node_id.as_ref());
        flags.set(node, "region", self.region.as_ref());
        flags.set(node, "max_body_bytes", self.max_body_bytes);
        flags.set(node, "nonce_cache_capacity", self.nonce_cache_capacity);
        flags.set(node, "idempotency", self.idempotency.then_some(true));
        flags.set(node, "idempotency_capacity", self.idempotency_capacity);
        flags.set(node, "idempotency_max_bytes", self.idempotency_max_bytes);
        flags.set(node, "origin_rate_limit", self.origin_rate_limit);
        flags.set(node, "origin_limit_tracked", self.origin_limit_tracked);
        flags.set(node, "drain_timeout_ms", self.drain_timeout_ms);
        flags.set(node, "drain_retry_after_ms", self.drain_retry_after_ms);
        // A path on the command line is the working directory's, not the
        // file's: made absolute, the file's directory does not apply.
        let absolute = |path: &PathBuf| {
            std::path::absolute(path).map_err(|e| format!("{}: {e}", path.display()))
        };
        if let Some(dir) = &self.cache_dir {
            flags.set(node, "cache_dir", Some(absolute(dir)?));
            flags.set(node, "no_cache", Some(false));
        }
        flags.set(node, "no_cache", self.no_cache.then_some(true));
        flags.set(node, "allocator", self.allocator);
        flags.set(node, "keep_resident_kib", self.keep_resident_kib);
        flags.set(node, "max_dns_lookups", self.max_dns_lookups);
        if let Some(dir) = &self.state_dir {
            flags.set(node, "state_dir", Some(absolute(dir)?));
        }
        flags.set_as(
            node,
            "confidentiality",
            self.no_confidentiality.then_some(false),
            "--no-confidentiality",
        );
        flags.set(
            node,
            "memory_overcommit",
            self.memory_overcommit.then_some(true),
        );
        flags.set(node, "memory_limit_mib", self.memory_limit_mib);
        let edge = &self.edge;
        flags.set(node, "header_read_timeout_ms", edge.header_read_timeout_ms);
        flags.set(node, "body_read_timeout_ms", edge.body_read_timeout_ms);
        flags.set(node, "keep_alive_timeout_ms", edge.keep_alive_timeout_ms);
        flags.set(
            node,
            "response_write_timeout_ms",
            edge.response_write_timeout_ms,
        );
        flags.set(node, "max_header_bytes", edge.max_header_bytes);
        flags.set(node, "max_headers", edge.max_headers);
        flags.set(node, "max_connections", edge.max_connections);
        flags.set(node, "lingering_close_ms", edge.lingering_close_ms);
        flags.set(node, "max_unsent_answers_mib", edge.max_unsent_answers_mib);
        // `--relay-KEY`: a key of [relay_capable].
        let (relay, r) = (RelaySettings::NAME, "relay-");
        flags.set_prefixed(relay, r, "max_sessions", self.relay_max_sessions);
        flags.set_prefixed(relay, r, "bind_rate_limit", self.relay_bind_rate_limit);
        flags.set_prefixed(relay, r, "liveness_ms", self.relay_liveness_ms);
        flags.set_prefixed(
            relay,
            r,
            "bind_ticket_key",
            self.relay_bind_ticket_key.as_ref(),
        );
        let require_ticket = self.relay_require_bind_ticket.then_some(true);
        flags.set_prefixed(relay, r, "require_bind_ticket", require_ticket);
        let refuse_keyless = self.relay_refuse_keyless_binds.then_some(true);
        flags.set_prefixed(relay, r, "refuse_keyless_binds", refuse_keyless);
        flags.set_prefixed(
            relay,
            r,
            "max_pinned_workers",
            self.relay_max_pinned_workers,
        );
        flags.set_prefixed(relay, r, "accept_port", self.relay_accept_port);
        let telemetry = ExportSettings::NAME;
        flags.set(telemetry, "otlp_queue_spans", self.otlp_queue_spans);
        flags.set(telemetry, "otlp_queue_bytes", self.otlp_queue_bytes);
        flags.set(telemetry, "otlp_timeout_ms", self.otlp_timeout_ms);
        match flags.errors.first() {
            Some(error) => Err(error.clone()),
            None => Ok(flags.values),
        }
    }

    /// The flags that set a limit of every plugin, over each plugin's own
    /// (`--memory-mb`, …): checked by the limit keys' own ranges.
    fn plugin_limit_flags(&self) -> LimitKeys {
        LimitKeys {
            memory_mb: self.memory_mb,
            timeout_ms: self.timeout_ms,
            max_timeout_ms: self.max_timeout_ms,
            instance_reuse: self.instance_reuse,
            max_resources: self.max_resources,
            host_memory_kib: self.host_memory_kib,
            ..LimitKeys::default()
        }
    }

    /// The flags that apply to every plugin: limits, precompiled files and
    /// the signature policy of `oci://` plugins.
    fn apply_plugin_flags(&self, config: &mut NodeConfig) -> Result<(), String> {
        let limits = self.plugin_limit_flags();
        limits.validate().map_err(|error| {
            let key = error.split(' ').next().unwrap_or_default();
            naming_flag(&error, key, &format!("--{}", key.replace('_', "-")))
        })?;
        let signature_keys = self
            .oci_signature_keys
            .iter()
            .map(|path| SignatureKey::load(path).map_err(|e| format!("--oci-signature-key: {e}")))
            .collect::<Result<Vec<_>, String>>()?;
        // Without such flags nothing is walked: a reload of thousands of
        // plugins keeps every shared spec as it is.
        let applies = limits != LimitKeys::default()
            || !signature_keys.is_empty()
            || self.oci_require_digest
            || self.precompiled;
        if !applies {
            return Ok(());
        }
        for plugin in &mut config.plugins {
            let mut spec = PluginSpec::clone(plugin);
            let source = &mut spec.source;
            if OciLocation::from_path(&source.path).is_some() {
                if !signature_keys.is_empty() {
                    source.signatures.keys.clone_from(&signature_keys);
                }
                source.signatures.require_digest |= self.oci_require_digest;
            } else if self.precompiled {
                source.precompiled = true;
            }
            source.limits = limits.over(&source.limits).map_err(|(default, ceiling)| {
                format!(
                    "--timeout-ms ({default} ms) is above the task budget ceiling ({ceiling} ms)"
                )
            })?;
            spec.memory_given |= limits.memory_mb.is_some();
            if spec != **plugin {
                *plugin = Arc::new(spec);
            }
        }
        Ok(())
    }
}

/// The values of the dedicated flags given, each named by its flag.
#[derive(Default)]
struct SectionFlags {
    values: Vec<FlagValue>,
    /// A value TOML cannot hold (a path that is not UTF-8).
    errors: Vec<String>,
}

impl SectionFlags {
    /// `--KEY-WITH-DASHES VALUE`, when given.
    fn set<T: Serialize>(&mut self, section: &'static str, key: &'static str, value: Option<T>) {
        self.set_prefixed(section, "", key, value);
    }

    /// `--PREFIXKEY-WITH-DASHES VALUE` (`--relay-max-sessions`), when given.
    fn set_prefixed<T: Serialize>(
        &mut self,
        section: &'static str,
        prefix: &str,
        key: &'static str,
        value: Option<T>,
    ) {
        let flag = format!("--{prefix}{}", key.replace('_', "-"));
        self.set_as(section, key, value, &flag);
    }

    /// `flag`, when given, sets `key`.
    fn set_as<T: Serialize>(
        &mut self,
        section: &'static str,
        key: &'static str,
        value: Option<T>,
        flag: &str,
    ) {
        match value.map(toml::Value::try_from) {
            None => {}
            Some(Ok(value)) => self.values.push(FlagValue {
                section,
                key,
                value,
                flag: flag.to_string(),
            }),
            Some(Err(e)) => self.errors.push(format!("{flag}: {e}")),
        }
    }
}

/// The connection-bound flags (the `[node]` keys of the same names).
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct EdgeFlags {
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

impl RunArgs {
    /// The worker's relay and the peers' flags, over the file's `[relay]`
    /// and `[peers]`.
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
        if self.peers || !self.peer_seeds.is_empty() {
            let peers = reach.peers.get_or_insert_with(PeerSettings::default);
            peers.seeds.extend(self.peer_seeds.iter().cloned());
            peers.validate().map_err(|e| format!("--peers: {e}"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use clap::FromArgMatches;

    use super::*;
    use crate::runtime::limits::PluginLimits;
    use crate::server::settings::AuthSection;

    fn parse(args: &[&str]) -> RunArgs {
        let command = RunArgs::augment_args(clap::Command::new("run").no_binary_name(true));
        let matches = command
            .try_get_matches_from(["--plugin", "x.wasm"].iter().chain(args))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        RunArgs::from_arg_matches(&matches).unwrap()
    }

    /// Each section's keys and defaults, as the file writes them; a sized
    /// `[node]` key with what it is when nothing sizes it.
    fn section_defaults() -> BTreeMap<&'static str, toml::Table> {
        fn table(settings: impl Serialize) -> toml::Table {
            toml::Table::try_from(settings).unwrap()
        }
        let mut node = table(NodeSection::default());
        for (key, value) in NodeSection::sized_defaults() {
            node.insert(key.to_string(), toml::Value::Integer(value as i64));
        }
        BTreeMap::from([
            (NodeSection::NAME, node),
            (ExportSettings::NAME, table(ExportSettings::default())),
            (
                "every plugin",
                table(LimitKeys::of(&PluginLimits::default())),
            ),
            (RelaySettings::NAME, table(RelaySettings::default())),
            (OciSection::NAME, table(OciSection::default())),
            (AuthSection::NAME, table(AuthSection::default())),
        ])
    }

    /// The section and key `--flag VALUE` sets, found by giving it: the
    /// keys the flag becomes, the plugin limits it sets, or (for the flags
    /// applied by hand: `--oci-*`, `--task-auth`) the key of the same name.
    fn key_set_by(flag: &str, value: &str) -> Option<(&'static str, String)> {
        let args = parse(&[&format!("--{flag}"), value]);
        let values = args.section_flags().unwrap();
        if let Some(found) = values.iter().find(|v| v.flag == format!("--{flag}")) {
            return Some((found.section, found.key.to_string()));
        }
        let limits = toml::Table::try_from(args.plugin_limit_flags()).unwrap();
        if let Some(key) = limits.keys().next() {
            return Some(("every plugin", key.clone()));
        }
        let by_hand = |prefix: &str| flag.strip_prefix(prefix).map(|k| k.replace('-', "_"));
        if let Some(key) = by_hand("oci-") {
            return Some((OciSection::NAME, key));
        }
        (flag == "task-auth").then(|| (AuthSection::NAME, "mode".to_string()))
    }

    /// A value a flag whose default is not a value (it says what unset
    /// means) accepts.
    const SAMPLES: &[(&str, &str)] = &[
        ("node-id", "n-1"),
        ("cache-dir", "/tmp/iicp-cache"),
        ("state-dir", "/tmp/iicp-state"),
        ("keep-resident-kib", "64"),
        ("memory-limit-mib", "1024"),
    ];

    /// Every dedicated flag that shows a default sets a key of a section
    /// (its name and range are the section's), and the default it shows is
    /// that key's: a flag drifting from its section fails here.
    #[test]
    fn every_dedicated_flag_is_its_sections_key_with_its_default() {
        let defaults = section_defaults();
        let command = RunArgs::augment_args(clap::Command::new("run"));
        let mut checked = Vec::new();
        for arg in command.get_arguments() {
            let (Some(flag), Some(help)) = (arg.get_long(), arg.get_help()) else {
                continue;
            };
            let help = help.to_string();
            let Some(shown) = help
                .split("[default: ")
                .nth(1)
                .and_then(|rest| rest.split(']').next())
            else {
                continue;
            };
            // `--endpoint` is the [directory]'s, shown as what unset means.
            if !arg.get_action().takes_values() || flag == "endpoint" {
                continue;
            }
            let shown = shown.split([',', ' ']).next().unwrap_or_default();
            let sample = SAMPLES.iter().find(|(f, _)| *f == flag).map(|(_, v)| *v);
            let (section, key) = key_set_by(flag, sample.unwrap_or(shown))
                .unwrap_or_else(|| panic!("--{flag} sets no key of a section"));
            let table = &defaults[section];
            let default = match table.get(&key) {
                Some(toml::Value::String(text)) => text.clone(),
                Some(toml::Value::Integer(number)) => number.to_string(),
                Some(other) => panic!("--{flag}: {section}.{key} is {other:?}"),
                None => {
                    assert!(sample.is_some(), "--{flag}: no {section}.{key}");
                    continue;
                }
            };
            assert_eq!(
                shown, default,
                "--{flag} shows {shown}, {section}.{key} is {default}"
            );
            checked.push(flag);
        }
        assert!(checked.len() >= 40, "checked only {checked:?}");
    }

    /// A dedicated flag is checked by its key's range, named as typed.
    #[test]
    fn a_dedicated_flag_gets_its_keys_range() {
        let error = |args: &[&str]| {
            parse(args)
                .to_config(&PluginFileCache::default())
                .unwrap_err()
        };
        assert_eq!(
            error(&["--max-headers", "4"]),
            "--max-headers must be between 8 and 1024, got 4"
        );
        assert_eq!(
            error(&["--otlp-timeout-ms", "1"]),
            "--otlp-timeout-ms must be between 100 and 300000, got 1"
        );
        assert_eq!(
            error(&["--host-memory-kib", "1"]),
            "--host-memory-kib must be between 64 and 4194304, got 1"
        );
        assert_eq!(
            error(&["--oci-max-plugin-mib", "0"]),
            "--oci-max-plugin-mib must be between 1 and 4096, got 0"
        );
        assert_eq!(
            error(&["--timeout-ms", "5000", "--max-timeout-ms", "1000"]),
            "--timeout-ms (5000 ms) is above the task budget ceiling (1000 ms)"
        );
    }
}
