//! The most memory a configuration lets the node hold, as a sum of named
//! terms, and the start-up check against the machine's memory.
//!
//! Every task is bounded on its own (see `runtime::limits`, `runtime::host`):
//!
//! ```text
//! per task = memory_mb                      linear memories + tables (one cap)
//!          + max_output_bytes + 1 MiB       one copy of what the guest hands the host
//!                                           in a call (wasmtime's hostcall fuel)
//!          + host_memory_kib                wasi:http fields, strings, body buffers
//!          + max_resources × 512 B          resource-table entries
//!          + 10,000 × 64 B                  component resource handles
//!          + http.max_in_flight × 512 KiB   response bodies being read
//!          + 2 × max_output_bytes           the result and the response written from it
//!          + 64 KiB                         log budget and partial stdio lines
//!          + 2 MiB                          the instance's fiber stack
//! ```
//!
//! and the node adds, once: `max_concurrent ×` the largest per-task figure of
//! any plugin, what the instance pool keeps resident between tasks
//! (`(pool memories + pool tables) × keep_resident`), connections
//! (`max_connections × (max_body_bytes + read buffer)`: bodies are read
//! before admission), the answers waiting on clients that have not taken
//! them (`max_unsent_answers_mib`: a task's slot is freed when its answer
//! is ready, not when it is sent), the nonce cache (`nonce_cache_capacity × 64 B`), the
//! idempotency cache and the credit-receipt queue (their byte bounds), the
//! per-Origin limiter (`origin_limit_tracked × 320 B`), the OTLP span export
//! when it is on (`4 × otlp_queue_bytes + 8 MiB`, see
//! `telemetry::otlp::ExportSettings::worst_case_bytes`), and a fixed 64 MiB
//! for the process itself and its loaded plugins' code; with `oci://`
//! plugins, a manifest and a signature payload being read and parsed. Reach adds, when
//! configured: as a relay, `2 × max_bytes_total` (copies of held tasks on
//! their way to workers; workers' results being read — the held tasks
//! themselves are bodies the connections term counts) plus its tables
//! (calls, sessions, bind windows, spent ticket ids); as a worker, one pull
//! answer per puller; for peer gossip, the peer and replay tables, one
//! outgoing exchange as read and parsed, and incoming exchange bodies beyond
//! `max_body_bytes`.
//!
//! At start the total is compared with the machine's memory (the smaller
//! of `MemTotal` and the cgroup limit): a configuration that could exceed
//! it is refused, naming the terms, unless the operator accepts the risk
//! with `memory_overcommit`; then the node starts and, under attack at
//! full concurrency, the kernel's OOM killer is what ends it.

use std::fmt;
use std::path::Path;

use crate::config::NodeConfig;
use crate::relay::worker::PULL_ENVELOPE_BYTES;
use crate::runtime::engine::PoolShape;
use crate::runtime::host::http::DEFAULT_MAX_IN_FLIGHT;
use crate::runtime::limits::PluginLimits;
use crate::runtime::store::{HOST_CALL_MARGIN_BYTES, MAX_COMPONENT_HANDLES};

/// Host bytes per resource-table entry, counted generously (entry, boxed
/// value, bookkeeping).
pub const RESOURCE_ENTRY_BYTES: u64 = 512;
/// Bytes per live component handle.
const HANDLE_BYTES: u64 = 64;
/// Buffered response bytes per request in flight.
const RESPONSE_BUFFER_BYTES: u64 = 512 << 10;
/// Log budget and partial stdout/stderr lines.
const LOG_BYTES: u64 = 64 << 10;
/// A fiber stack (wasmtime's default async stack).
const STACK_BYTES: u64 = 2 << 20;
/// Bytes per remembered nonce (fingerprint, arrival run, map overhead).
const NONCE_BYTES: u64 = 64;
/// Bytes per tracked Origin (its key, at most 256 bytes, and its window).
const ORIGIN_BYTES: u64 = 320;
/// The process itself: binary, runtime, engine, plugins' compiled code.
const PROCESS_BYTES: u64 = 64 << 20;
/// A relayed call's bookkeeping (ids, deadline, reply channel; its body
/// and headers are counted in bytes).
const RELAY_CALL_BYTES: u64 = 1 << 10;
/// A relay session: ids, token digests, up to 64 models of 256 bytes.
const RELAY_SESSION_BYTES: u64 = 20 << 10;
/// A bind window per source.
const BIND_SOURCE_BYTES: u64 = 64;
/// A spent ticket id (32 hex characters and its expiry).
const TICKET_ID_BYTES: u64 = 96;
/// A peer: id, endpoint (at most 512 bytes), region, key, contact time.
const PEER_BYTES: u64 = 1536;
/// A spent gossip signature (its SHA-256 and time).
const SIGNATURE_BYTES: u64 = 96;
/// A parsed JSON document against its text, counted generously.
const PARSED_JSON_FACTOR: u64 = 4;

/// A named share of the worst case, in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Term {
    /// What it is.
    pub name: String,
    /// Bytes.
    pub bytes: u64,
}

/// The worst case of one configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorstCase {
    /// Its terms; the worst case is their sum.
    pub terms: Vec<Term>,
    /// The largest per-task figure of any plugin.
    pub per_task: u64,
}

/// The worst case of one task of a plugin with `limits` (and `in_flight`
/// requests on the wire at once).
pub fn per_task(limits: &PluginLimits, in_flight: u32) -> u64 {
    let output = limits.max_output_bytes as u64;
    [
        limits.memory_bytes as u64,
        output + HOST_CALL_MARGIN_BYTES as u64,
        limits.host_memory_bytes as u64,
        u64::from(limits.max_resources) * RESOURCE_ENTRY_BYTES,
        MAX_COMPONENT_HANDLES as u64 * HANDLE_BYTES,
        u64::from(in_flight) * RESPONSE_BUFFER_BYTES,
        2 * output,
        LOG_BYTES,
        STACK_BYTES,
    ]
    .iter()
    .sum()
}

impl WorstCase {
    /// The worst case of `config`.
    pub fn of(config: &NodeConfig) -> Self {
        let per_task = config
            .plugins
            .iter()
            .map(|spec| {
                let in_flight = match spec.source.http.max_in_flight {
                    0 => DEFAULT_MAX_IN_FLIGHT,
                    n => n,
                };
                per_task(&spec.source.limits, in_flight)
            })
            .max()
            .unwrap_or(0);
        let pool = PoolShape::of(&config.runtime.engine);
        let slots = u64::from(config.max_concurrent);
        let terms = vec![
            Term {
                name: format!("{slots} tasks × {} per task", mib(per_task)),
                bytes: slots * per_task,
            },
            Term {
                name: format!(
                    "instance pool kept resident ({} memories + {} tables × {})",
                    pool.memories,
                    pool.tables,
                    mib(pool.keep_resident as u64)
                ),
                bytes: u64::from(pool.memories + pool.tables) * pool.keep_resident as u64,
            },
            Term {
                name: format!(
                    "{} connections × (max_body_bytes + read buffer)",
                    config.edge.max_connections
                ),
                bytes: config.edge.max_connections as u64
                    * (config.max_body_bytes + config.edge.buffer_bytes()) as u64,
            },
            Term {
                name: "answers waiting on clients (max_unsent_answers_mib)".to_string(),
                bytes: config.edge.max_unsent_answer_bytes,
            },
            Term {
                name: format!("nonce cache ({} nonces)", config.nonce_capacity),
                bytes: config.nonce_capacity as u64 * NONCE_BYTES,
            },
            Term {
                name: "idempotency cache".to_string(),
                bytes: config
                    .idempotency
                    .as_ref()
                    .map_or(0, |bounds| bounds.max_bytes as u64),
            },
            Term {
                name: "credit-receipt queue".to_string(),
                bytes: config
                    .directory
                    .as_ref()
                    .map_or(0, |d| d.receipt_queue.bytes as u64),
            },
            Term {
                name: format!(
                    "per-Origin limiter ({} origins)",
                    config.origin_limit_tracked
                ),
                bytes: config.origin_limit_tracked as u64 * ORIGIN_BYTES,
            },
            Term {
                name: "OTLP export (4 × otlp_queue_bytes + 8 MiB, when on)".to_string(),
                bytes: if crate::telemetry::otlp::active() {
                    config.telemetry.worst_case_bytes()
                } else {
                    0
                },
            },
            Term {
                name: "the process and its plugins' code".to_string(),
                bytes: PROCESS_BYTES,
            },
        ];
        let mut worst = Self { terms, per_task };
        worst.add_reach(config);
        worst.add_registry(config);
        worst
    }

    /// Pulling `oci://` plugins, where any: a manifest and one signature
    /// payload read at a time (each under `oci.max_manifest_kib`), parsed.
    /// Components stream to disk, never whole in memory.
    fn add_registry(&mut self, config: &NodeConfig) {
        let pulls = config
            .plugins
            .iter()
            .any(|spec| crate::oci::OciLocation::from_path(&spec.source.path).is_some());
        if pulls {
            let manifest = config.runtime.oci.max_manifest_bytes as u64;
            self.terms.push(Term {
                name: "registry pulls: a manifest and a signature payload (2 × oci.max_manifest_kib), parsed".to_string(),
                bytes: 2 * manifest * (1 + PARSED_JSON_FACTOR),
            });
        }
    }

    /// The relay, worker and peer-gossip terms of `config`, where set.
    fn add_reach(&mut self, config: &NodeConfig) {
        let connections = config.edge.max_connections as u64;
        if let Some(relay) = &config.reach.relay_capable {
            let calls = (u64::from(relay.max_sessions) * u64::from(relay.max_tasks_per_session))
                .min(connections);
            self.terms.push(Term {
                name: format!(
                    "relay: task copies to workers and results being read (2 × max_bytes_total),                      {calls} calls, {} sessions, bind windows, spent tickets",
                    relay.max_sessions
                ),
                bytes: 2 * relay.max_bytes_total as u64
                    + calls * RELAY_CALL_BYTES
                    + u64::from(relay.max_sessions) * RELAY_SESSION_BYTES
                    + u64::from(relay.bind_rate_sources) * BIND_SOURCE_BYTES
                    + u64::from(relay.max_ticket_ids) * TICKET_ID_BYTES,
            });
        }
        if let Some(worker) = &config.reach.relay {
            self.terms.push(Term {
                name: format!("relay worker: {} pull answers", worker.pullers),
                bytes: u64::from(worker.pullers)
                    * (config.max_body_bytes + PULL_ENVELOPE_BYTES) as u64,
            });
        }
        if let Some(peers) = &config.reach.peers {
            let body = peers.max_body_bytes as u64;
            self.terms.push(Term {
                name: format!(
                    "peers: {} peers, {} spent signatures, one outgoing exchange,                      incoming exchanges beyond max_body_bytes",
                    peers.max_peers, peers.max_signatures
                ),
                bytes: u64::from(peers.max_peers) * PEER_BYTES
                    + u64::from(peers.max_signatures) * SIGNATURE_BYTES
                    + body * (1 + PARSED_JSON_FACTOR)
                    + connections * body.saturating_sub(config.max_body_bytes as u64),
            });
        }
    }

    /// The sum of the terms.
    pub fn total(&self) -> u64 {
        self.terms.iter().map(|t| t.bytes).sum()
    }
}

impl fmt::Display for WorstCase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", mib(self.total()))?;
        for term in &self.terms {
            write!(f, "; {}: {}", term.name, mib(term.bytes))?;
        }
        Ok(())
    }
}

fn mib(bytes: u64) -> String {
    format!("{} MiB", bytes.div_ceil(1 << 20))
}

/// The memory this process may use: the smaller of the machine's
/// `MemTotal` and the memory limit of its own cgroup (or of one above it),
/// when either can be read. The cgroup is the one `/proc/self/cgroup` names:
/// a systemd unit's `MemoryMax=` sits on `system.slice/<unit>`, not on the
/// root of the hierarchy, which only a container's own namespace shows.
pub fn machine_memory() -> Option<u64> {
    let total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
                .map(|kib| kib * 1024)
        });
    let cgroup = std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|membership| cgroup_limit(&membership, Path::new("/sys/fs/cgroup")));
    match (total, cgroup) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Limits at or above this mean "none": cgroup v1 writes an unlimited
/// group as `i64::MAX` rounded down to a page.
const CGROUP_UNLIMITED: u64 = 1 << 62;

/// The smallest memory limit from this process's cgroup up to the root of
/// the hierarchy mounted at `root`, given `/proc/self/cgroup` as
/// `membership`: cgroup v2 (`0::/path`, `<root>/path/memory.max`) and v1's
/// memory controller (`N:memory:/path`, possibly comma-joined with others,
/// `<root>/memory/path/memory.limit_in_bytes`). `max` means no limit.
fn cgroup_limit(membership: &str, root: &Path) -> Option<u64> {
    let mut files = Vec::new();
    for line in membership.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let (base, file) = if id == "0" && controllers.is_empty() {
            (root.to_path_buf(), "memory.max")
        } else if controllers.split(',').any(|c| c == "memory") {
            (root.join("memory"), "memory.limit_in_bytes")
        } else {
            continue;
        };
        let own = Path::new(path.trim_start_matches('/'));
        files.extend(own.ancestors().map(|dir| base.join(dir).join(file)));
    }
    files
        .iter()
        .filter_map(|file| {
            std::fs::read_to_string(file)
                .ok()?
                .trim()
                .parse::<u64>()
                .ok()
        })
        .filter(|&limit| limit < CGROUP_UNLIMITED)
        .min()
}

/// Refuses `config` when its worst case exceeds the machine's memory,
/// unless the operator allowed overcommit (then it warns).
pub fn check(config: &NodeConfig) -> Result<WorstCase, String> {
    let worst = WorstCase::of(config);
    let Some(available) = machine_memory() else {
        return Ok(worst);
    };
    if worst.total() <= available {
        return Ok(worst);
    }
    let advice = format!(
        "the configuration could make the node hold {worst}, more than this machine's {}: \
         lower max_concurrent, memory_mb, host_memory_kib or max_output_bytes, or set \
         memory_overcommit = true (--memory-overcommit) to start anyway",
        mib(available)
    );
    if config.memory_overcommit {
        tracing::warn!("{advice}");
        Ok(worst)
    } else {
        Err(advice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_task_is_its_memory_cap_plus_bounded_host_terms() {
        let limits = PluginLimits::default();
        let task = per_task(&limits, DEFAULT_MAX_IN_FLIGHT);
        assert!(task > limits.memory_bytes as u64);
        // 128 MiB + (4+1) + 8 + 0.5 + 0.6 + 4 + 8 + 0.06 + 2 MiB.
        assert!(task < (160 << 20), "{task}");
    }

    fn write(root: &Path, file: &str, text: &str) {
        let path = root.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn the_cgroup_limit_is_the_smallest_on_the_path_of_our_own_group() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        // cgroup v2, as in a systemd service with MemoryMax=2G.
        let membership = "0::/system.slice/iicp-host.service\n";
        write(root, "memory.max", "max\n");
        write(root, "system.slice/memory.max", "max\n");
        write(
            root,
            "system.slice/iicp-host.service/memory.max",
            "2147483648\n",
        );
        assert_eq!(cgroup_limit(membership, root), Some(2 << 30));
        // A lower limit on the slice above it binds too.
        write(root, "system.slice/memory.max", "1073741824\n");
        assert_eq!(cgroup_limit(membership, root), Some(1 << 30));
        // No limit anywhere; or a group whose files cannot be read.
        assert_eq!(cgroup_limit("0::/user.slice\n", root), None);

        // cgroup v1's memory controller, beside others; "unlimited" is none.
        let membership = "5:devices:/\n4:cpu,memory:/process_api/abc\n0::/\n";
        write(
            root,
            "memory/memory.limit_in_bytes",
            "9223372036854771712\n",
        );
        assert_eq!(cgroup_limit(membership, root), None);
        write(
            root,
            "memory/process_api/abc/memory.limit_in_bytes",
            "536870912\n",
        );
        assert_eq!(cgroup_limit(membership, root), Some(512 << 20));
        assert_eq!(cgroup_limit("garbage\n\n4:memory\n", root), None);
    }

    #[test]
    fn registry_pulls_add_their_term_only_with_oci_plugins() {
        let local = NodeConfig::with_plugin("x.wasm".into());
        let remote = NodeConfig::with_plugin("oci://127.0.0.1:5000/x:1".into());
        let term = WorstCase::of(&remote).total() - WorstCase::of(&local).total();
        // 2 × 4 MiB of manifest and payload, parsed (× 5).
        assert_eq!(term, 40 << 20);
        assert!(
            WorstCase::of(&remote)
                .to_string()
                .contains("registry pulls")
        );
    }

    #[test]
    fn reach_adds_its_terms_only_when_configured() {
        use crate::config::reach::{PeerSettings, RelaySettings, WorkerSettings};
        let mut config = NodeConfig::with_plugin("x.wasm".into());
        let base = WorstCase::of(&config).total();
        config.reach.relay_capable = Some(RelaySettings::default());
        let relay = WorstCase::of(&config);
        let relay_term = relay.total() - base;
        // 2 × 128 MiB of bytes plus tables of a few MiB.
        assert!(relay_term > 256 << 20 && relay_term < 280 << 20, "{relay}");
        assert!(relay.to_string().contains("relay: "));
        config.reach.relay_capable = Some(RelaySettings {
            max_bytes_total: 16 << 20,
            ..RelaySettings::default()
        });
        assert!(WorstCase::of(&config).total() - base < relay_term - (200 << 20));
        config.reach.relay_capable = None;
        config.reach.relay = Some(WorkerSettings::new("http://relay:8080".into()));
        assert!(WorstCase::of(&config).total() > base);
        config.reach.relay = None;
        config.reach.peers = Some(PeerSettings::default());
        let peers = WorstCase::of(&config);
        assert!(peers.total() > base && peers.to_string().contains("peers: 256 peers"));
    }

    #[test]
    fn the_node_worst_case_grows_with_concurrency() {
        let mut config = NodeConfig::with_plugin("x.wasm".into());
        let small = WorstCase::of(&config).total();
        config.max_concurrent *= 2;
        config.runtime.engine.max_instances *= 2;
        let large = WorstCase::of(&config);
        assert!(large.total() > small + 31 * large.per_task);
        assert!(large.to_string().contains("64 tasks"));
    }
}
