//! The `[node]` table: the public listener and its bounds (the front
//! door's), and the node-wide keys the other rooms read (identity, the
//! artifact cache and allocator, memory). One struct because it is one
//! table; each key has its default and range here, and every key is
//! settable from the environment (`IICP_HOST_NODE__MAX_BODY_BYTES`) and by
//! `--set node.max_body_bytes=…`; the older keys have a dedicated flag too,
//! a new key needs none.
//!
//! The node runs on this struct itself (`NodeConfig::node`), so a new key
//! is this struct's field, default and range, and the code that reads it:
//! nothing is copied field by field elsewhere, and a hot reload reports it
//! as needing a restart unless [`NodeSection::APPLIED_LIVE`] lists it.
//!
//! A key the memory sizing computes (`crate::memory_sizing`) stays an
//! `Option`: left unset it is sized to the memory, given it is honoured;
//! once the node has sized itself every such key holds its value in force.

use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::directory::identity::check_node_id;
use crate::directory::settings::validate_http_url;
use crate::runtime::RuntimeSettings;
use crate::runtime::engine::{AllocatorChoice, EngineSettings};
use crate::runtime::host::dns::DEFAULT_MAX_DNS_LOOKUPS;
use crate::server::edge::EdgeSettings;
use crate::server::settings::MAX_CONNECTIONS_RANGE;
use crate::settings::{Section, as_millis, check_range};

/// Default `max_concurrent` (when not sized to the memory).
pub const DEFAULT_MAX_CONCURRENT: u32 = 32;
/// `max_concurrent` bounds. REGISTER advertises at most 256 (the protocol's
/// `limits.max_concurrent` range); a node may run more, e.g. an LLM gateway
/// whose tasks mostly wait on a backend. The ceiling is what the instance
/// pool can reserve: 4 linear memories per slot, each a 4 GiB reservation
/// plus guard, is ~66 TiB of the 128 TiB of x86-64 user address space at
/// 4,096 slots.
pub const MAX_CONCURRENT_RANGE: RangeInclusive<u32> = 1..=4096;
/// Bounds on the QoS wait, in ms (0: every class fails fast).
pub const QOS_WAIT_MS_RANGE: RangeInclusive<u64> = 0..=30_000;
/// Bounds on tasks waiting at once (each holds a connection and its body).
pub const QOS_MAX_WAITING_RANGE: RangeInclusive<u32> = 0..=65_536;
/// Default cap on remembered nonces (~18 bytes each).
pub const DEFAULT_NONCE_CAPACITY: usize = 1_000_000;
/// Default bound on remembered task ids (idempotency).
pub const DEFAULT_IDEMPOTENCY_CAPACITY: usize = 100_000;
/// Default bound on the bytes of remembered task ids and their answers.
pub const DEFAULT_IDEMPOTENCY_MAX_BYTES: usize = 64 << 20;
/// Bounds on the `retry_after_ms` a drained node or plugin advises.
pub const DRAIN_RETRY_AFTER_MS_RANGE: RangeInclusive<u64> = 1..=86_400_000;
/// Bounds of the connection deadlines, in ms.
pub const EDGE_TIMEOUT_MS_RANGE: RangeInclusive<u64> = 100..=3_600_000;
/// Bounds of the request-head size limit, in bytes.
pub const MAX_HEADER_BYTES_RANGE: RangeInclusive<usize> = 1024..=1 << 20;
/// Bounds of the request-header count limit.
pub const MAX_HEADERS_RANGE: RangeInclusive<usize> = 8..=1024;
/// Bounds of what a lingering close reads, in bytes: at least one read.
pub const LINGERING_CLOSE_MAX_BYTES_RANGE: RangeInclusive<u64> = 4096..=1 << 30;
/// Bounds of the number of origins the per-Origin limit tracks.
pub const ORIGIN_LIMIT_TRACKED_RANGE: RangeInclusive<usize> = 32..=1_000_000;
/// Unsent-answer budget in MiB: at least two of the largest answers (a
/// result of 4 MiB in its envelope), at most 1 TiB.
pub const MAX_UNSENT_ANSWERS_MIB_RANGE: RangeInclusive<u64> = 10..=1_048_576;
/// Bounds on `max_dns_lookups`: at least one lookup, at most half of
/// tokio's blocking pool (512 threads).
pub const MAX_DNS_LOOKUPS_RANGE: RangeInclusive<usize> = 1..=256;
/// Bounds of `memory_limit_mib`: at least what the process itself is
/// counted at (64 MiB) plus room to serve; at most 64 TiB.
pub const MEMORY_LIMIT_MIB_RANGE: RangeInclusive<u64> = 128..=64 << 20;

/// The `[node]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeSection {
    /// The node id; unset: the stored one, else a new UUID.
    pub node_id: Option<String>,
    /// The region advertised.
    pub region: String,
    /// Where the HTTP API listens.
    pub listen: String,
    /// The public URL advertised to the directory; unset: `http://<listen>`.
    pub endpoint: Option<String>,
    /// Tasks run at once (sized).
    pub max_concurrent: Option<u32>,
    /// How long realtime and interactive tasks wait for a slot, in ms.
    pub qos_wait_ms: u64,
    /// Most tasks waiting for a slot at once.
    pub qos_max_waiting: u32,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Most nonces remembered (sized).
    pub nonce_cache_capacity: Option<usize>,
    /// Idempotent task ids on.
    pub idempotency: bool,
    /// Answered task ids remembered at most, when idempotency is on.
    pub idempotency_capacity: usize,
    /// Bytes of remembered ids and answers at most (sized).
    pub idempotency_max_bytes: Option<usize>,
    /// Tasks per browser `Origin` per minute; 0 turns the limit off.
    pub origin_rate_limit: u32,
    /// Origins whose window is remembered.
    pub origin_limit_tracked: usize,
    /// How long shutdown waits for in-flight tasks, in ms.
    pub drain_timeout_ms: u64,
    /// `retry_after_ms` a drained node or plugin advises.
    pub drain_retry_after_ms: u64,
    /// Where the node id, directory credentials and IICP-CX key persist.
    pub state_dir: Option<PathBuf>,
    /// IICP-CX: advertise an X25519 key and accept encrypted tasks.
    pub confidentiality: bool,
    /// Directory for compiled plugins; unset: `~/.cache/iicp-host`.
    pub cache_dir: Option<PathBuf>,
    /// Compile plugins on every start instead of caching them.
    pub no_cache: bool,
    /// Instance allocator.
    pub allocator: AllocatorChoice,
    /// Memory kept warm per pooled instance slot, in KiB (sized).
    pub keep_resident_kib: Option<u32>,
    /// Plugins' DNS lookups in flight at once, node-wide (sized).
    pub max_dns_lookups: Option<usize>,
    /// Time a client has to send a complete request head, in ms.
    pub header_read_timeout_ms: u64,
    /// Time a client has to send a whole request body, in ms.
    pub body_read_timeout_ms: u64,
    /// How long an idle keep-alive connection stays open, in ms.
    pub keep_alive_timeout_ms: u64,
    /// How long one response may wait on a client that does not read it, in ms.
    pub response_write_timeout_ms: u64,
    /// Largest request head, in bytes.
    pub max_header_bytes: usize,
    /// Most request headers.
    pub max_headers: usize,
    /// Most connections open at once on the public listener (sized).
    pub max_connections: Option<usize>,
    /// How long a closing connection reads what still arrives, in ms.
    pub lingering_close_ms: u64,
    /// The most a closing connection reads of what still arrives, in bytes.
    pub lingering_close_max_bytes: u64,
    /// Task answers held for clients that have not taken them, in MiB (sized).
    pub max_unsent_answers_mib: Option<u64>,
    /// Start even when the worst-case memory exceeds the machine's.
    pub memory_overcommit: bool,
    /// The memory the node may assume, in MiB; unset: what it sees.
    pub memory_limit_mib: Option<u64>,
    /// Directories whose `*.toml` files hold more `[[plugin]]` tables.
    pub plugin_dirs: Vec<PathBuf>,
}

impl Default for NodeSection {
    fn default() -> Self {
        let edge = EdgeSettings::default();
        Self {
            node_id: None,
            region: "unknown".to_string(),
            listen: "127.0.0.1:8080".to_string(),
            endpoint: None,
            max_concurrent: None,
            qos_wait_ms: 2000,
            qos_max_waiting: 64,
            max_body_bytes: 1 << 20,
            nonce_cache_capacity: None,
            idempotency: false,
            idempotency_capacity: DEFAULT_IDEMPOTENCY_CAPACITY,
            idempotency_max_bytes: None,
            origin_rate_limit: 120,
            origin_limit_tracked: crate::server::origin_limit::DEFAULT_TRACKED_ORIGINS,
            drain_timeout_ms: 30_000,
            drain_retry_after_ms: 30_000,
            state_dir: None,
            confidentiality: true,
            cache_dir: None,
            no_cache: false,
            allocator: AllocatorChoice::default(),
            keep_resident_kib: None,
            max_dns_lookups: None,
            header_read_timeout_ms: as_millis(edge.header_read_timeout),
            body_read_timeout_ms: as_millis(edge.body_read_timeout),
            keep_alive_timeout_ms: as_millis(edge.keep_alive_timeout),
            response_write_timeout_ms: as_millis(edge.response_write_timeout),
            max_header_bytes: edge.max_header_bytes,
            max_headers: edge.max_headers,
            max_connections: None,
            lingering_close_ms: as_millis(edge.lingering_close),
            lingering_close_max_bytes: edge.lingering_close_max_bytes,
            max_unsent_answers_mib: None,
            memory_overcommit: false,
            memory_limit_mib: None,
            plugin_dirs: Vec::new(),
        }
    }
}

impl Section for NodeSection {
    const NAME: &'static str = "node";
    /// A reload reads the plugin directories again; every other key is
    /// read once, at start.
    const APPLIED_LIVE: &'static [&'static str] = &["plugin_dirs"];

    fn validate(&self) -> Result<(), String> {
        if let Some(id) = &self.node_id {
            check_node_id(id).map_err(|e| format!("node_id: {e}"))?;
        }
        self.listen_addr()?;
        if let Some(endpoint) = &self.endpoint {
            validate_http_url(endpoint).map_err(|e| format!("endpoint: {e}"))?;
        }
        check_range(
            "max_concurrent",
            self.max_concurrent(),
            &MAX_CONCURRENT_RANGE,
        )?;
        check_range("qos_wait_ms", self.qos_wait_ms, &QOS_WAIT_MS_RANGE)?;
        check_range(
            "qos_max_waiting",
            self.qos_max_waiting,
            &QOS_MAX_WAITING_RANGE,
        )?;
        check_range(
            "origin_limit_tracked",
            self.origin_limit_tracked,
            &ORIGIN_LIMIT_TRACKED_RANGE,
        )?;
        check_range(
            "drain_retry_after_ms",
            self.drain_retry_after_ms,
            &DRAIN_RETRY_AFTER_MS_RANGE,
        )?;
        for (key, ms) in [
            ("header_read_timeout_ms", self.header_read_timeout_ms),
            ("body_read_timeout_ms", self.body_read_timeout_ms),
            ("keep_alive_timeout_ms", self.keep_alive_timeout_ms),
            ("response_write_timeout_ms", self.response_write_timeout_ms),
            ("lingering_close_ms", self.lingering_close_ms),
        ] {
            check_range(key, ms, &EDGE_TIMEOUT_MS_RANGE)?;
        }
        check_range(
            "max_header_bytes",
            self.max_header_bytes,
            &MAX_HEADER_BYTES_RANGE,
        )?;
        check_range("max_headers", self.max_headers, &MAX_HEADERS_RANGE)?;
        check_range(
            "lingering_close_max_bytes",
            self.lingering_close_max_bytes,
            &LINGERING_CLOSE_MAX_BYTES_RANGE,
        )?;
        if let Some(count) = self.max_connections {
            check_range("max_connections", count, &MAX_CONNECTIONS_RANGE)?;
        }
        if let Some(mib) = self.max_unsent_answers_mib {
            check_range("max_unsent_answers_mib", mib, &MAX_UNSENT_ANSWERS_MIB_RANGE)?;
        }
        if let Some(lookups) = self.max_dns_lookups {
            check_range("max_dns_lookups", lookups, &MAX_DNS_LOOKUPS_RANGE)?;
        }
        if let Some(mib) = self.memory_limit_mib {
            check_range("memory_limit_mib", mib, &MEMORY_LIMIT_MIB_RANGE)?;
        }
        Ok(())
    }
}

impl NodeSection {
    /// The listen address, parsed.
    pub fn listen_addr(&self) -> Result<std::net::SocketAddr, String> {
        self.listen.parse().map_err(|e| format!("listen: {e}"))
    }

    /// `max_concurrent` as given, else its default (the sizing may lower
    /// an unset one later).
    pub fn max_concurrent(&self) -> u32 {
        self.max_concurrent.unwrap_or(DEFAULT_MAX_CONCURRENT)
    }

    /// How long realtime and interactive tasks wait for a slot.
    pub fn qos_wait(&self) -> Duration {
        Duration::from_millis(self.qos_wait_ms)
    }

    /// How long shutdown waits for in-flight tasks.
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_millis(self.drain_timeout_ms)
    }

    /// Most nonces remembered inside the replay window.
    pub fn nonce_capacity(&self) -> usize {
        self.nonce_cache_capacity.unwrap_or(DEFAULT_NONCE_CAPACITY)
    }

    /// The bounds of the task-id cache, when idempotency is on (off by
    /// default, as in the reference node: consumers and load generators
    /// reuse task ids, and the reference node runs every one of them).
    pub fn idempotency(&self) -> Option<IdempotencyBounds> {
        self.idempotency.then(|| IdempotencyBounds {
            capacity: self.idempotency_capacity,
            max_bytes: self
                .idempotency_max_bytes
                .unwrap_or(DEFAULT_IDEMPOTENCY_MAX_BYTES),
        })
    }

    /// Plugins' DNS lookups in flight at once, node-wide.
    pub fn max_dns_lookups(&self) -> usize {
        self.max_dns_lookups.unwrap_or(DEFAULT_MAX_DNS_LOOKUPS)
    }

    /// The memory the node may assume, in bytes, when set.
    pub fn memory_limit_bytes(&self) -> Option<u64> {
        self.memory_limit_mib.map(|mib| mib << 20)
    }

    /// Engine and artifact-cache settings (`cache_dir` as the build
    /// resolved it).
    pub fn runtime(&self) -> RuntimeSettings {
        RuntimeSettings {
            engine: EngineSettings {
                max_instances: self.max_concurrent(),
                keep_resident_bytes: self.keep_resident_kib.map(|kib| (kib as usize) << 10),
                allocator: self.allocator,
            },
            cache_dir: if self.no_cache {
                None
            } else {
                self.cache_dir.clone()
            },
            max_dns_lookups: self.max_dns_lookups(),
        }
    }

    /// The connection bounds of the public listener.
    pub fn edge(&self) -> EdgeSettings {
        let defaults = EdgeSettings::default();
        EdgeSettings {
            header_read_timeout: Duration::from_millis(self.header_read_timeout_ms),
            body_read_timeout: Duration::from_millis(self.body_read_timeout_ms),
            keep_alive_timeout: Duration::from_millis(self.keep_alive_timeout_ms),
            response_write_timeout: Duration::from_millis(self.response_write_timeout_ms),
            max_header_bytes: self.max_header_bytes,
            max_headers: self.max_headers,
            max_connections: self.max_connections.unwrap_or(defaults.max_connections),
            lingering_close: Duration::from_millis(self.lingering_close_ms),
            lingering_close_max_bytes: self.lingering_close_max_bytes,
            max_unsent_answer_bytes: self
                .max_unsent_answers_mib
                .map_or(defaults.max_unsent_answer_bytes, |mib| mib << 20),
        }
    }

    /// What each sized key is when neither the operator nor the sizing
    /// sets it (the values `--help` shows).
    pub fn sized_defaults() -> [(&'static str, u64); 6] {
        let edge = EdgeSettings::default();
        [
            ("max_concurrent", u64::from(DEFAULT_MAX_CONCURRENT)),
            ("nonce_cache_capacity", DEFAULT_NONCE_CAPACITY as u64),
            (
                "idempotency_max_bytes",
                DEFAULT_IDEMPOTENCY_MAX_BYTES as u64,
            ),
            ("max_connections", edge.max_connections as u64),
            ("max_unsent_answers_mib", edge.max_unsent_answer_bytes >> 20),
            ("max_dns_lookups", DEFAULT_MAX_DNS_LOOKUPS as u64),
        ]
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::check_section;

    #[test]
    fn the_defaults_are_valid_and_a_bad_key_is_named() {
        assert_eq!(NodeSection::default().validate(), Ok(()));
        assert_eq!(NodeSection::default().edge(), EdgeSettings::default());
        let cases = [
            (
                NodeSection {
                    max_concurrent: Some(4097),
                    ..NodeSection::default()
                },
                "node.max_concurrent must be between 1 and 4096, got 4097",
            ),
            (
                NodeSection {
                    max_headers: 4,
                    ..NodeSection::default()
                },
                "node.max_headers must be between 8 and 1024, got 4",
            ),
            (
                NodeSection {
                    lingering_close_max_bytes: 1,
                    ..NodeSection::default()
                },
                "node.lingering_close_max_bytes must be between 4096 and 1073741824, got 1",
            ),
            (
                NodeSection {
                    memory_limit_mib: Some(64),
                    ..NodeSection::default()
                },
                "node.memory_limit_mib must be between 128 and 67108864, got 64",
            ),
            (
                NodeSection {
                    listen: "nowhere".to_string(),
                    ..NodeSection::default()
                },
                "node.listen: invalid socket address syntax",
            ),
        ];
        for (section, error) in cases {
            assert_eq!(check_section(&section).unwrap_err(), error);
        }
    }
}
