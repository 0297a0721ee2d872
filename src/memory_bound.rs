//! The most memory a configuration lets the node hold, as a sum of named
//! terms.
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
//! `telemetry::otlp::ExportSettings::worst_case_bytes`), the blocking
//! threads plugins' DNS lookups may hold (`max_dns_lookups × 2 MiB`,
//! `runtime::host::dns`), and a fixed 64 MiB
//! for the process itself and its loaded plugins' code; with `oci://`
//! plugins, a manifest and a signature payload being read and parsed. Reach
//! adds, when configured: as a relay, `3 × max_bytes_total` — workers' results being
//! read (reserved before a byte is read), the consumer answers built from
//! them and the pull answers built from held tasks, each until it is
//! charged to the unsent-answer budget (whose term then counts it; the
//! held tasks themselves are bodies the connections term counts) — plus
//! its tables (calls, sessions, bind windows, spent ticket ids, pinned
//! worker ids); as a worker, one pull answer per puller; for peer gossip,
//! the peer, replay and merge-sender tables, one outgoing exchange as read
//! and parsed, and incoming exchange bodies beyond `max_body_bytes`.
//!
//! The instance pool is counted at the larger of the kernels'
//! keep-resident defaults (1 MiB with PAGEMAP_SCAN, 64 KiB without) unless
//! `keep_resident_kib` is set, so the figure is the same on every kernel.
//! `crate::memory_sizing` sizes the settings the operator did not give so
//! that this total fits the machine, and refuses one that cannot fit.

use crate::config::{NodeConfig, PluginSpec};
use crate::relay::accept::{ENVELOPE_BYTES as FRAMED_ENVELOPE_BYTES, RESPONSES_DECODED_AT_ONCE};
use crate::relay::wire::MAX_BIND_BYTES;
use crate::relay::worker::PULL_ENVELOPE_BYTES;
use crate::runtime::engine::{KEEP_RESIDENT_WITH_SCAN, PoolShape};
use crate::runtime::host::dns::LOOKUP_THREAD_BYTES;
use crate::runtime::host::http::DEFAULT_MAX_IN_FLIGHT;
use crate::runtime::limits::PluginLimits;
use crate::runtime::store::{HOST_CALL_MARGIN_BYTES, MAX_COMPONENT_HANDLES};
use std::fmt;

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
/// A pinned worker id: its table entry, and its copy and JSON while the
/// pins file is written.
const PIN_BYTES: u64 = 3 * crate::relay::pins::PIN_FILE_BYTES as u64;
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

/// The worst case of one task of the plugin `spec` configures.
pub fn spec_per_task(spec: &PluginSpec) -> u64 {
    let in_flight = match spec.source.http.max_in_flight {
        0 => DEFAULT_MAX_IN_FLIGHT,
        n => n,
    };
    per_task(&spec.source.limits, in_flight)
}

impl WorstCase {
    /// The worst case of `config`.
    pub fn of(config: &NodeConfig) -> Self {
        let per_task = config
            .plugins
            .iter()
            .map(|p| spec_per_task(p))
            .max()
            .unwrap_or(0);
        let node = &config.node;
        let (runtime, edge) = (node.runtime(), node.edge());
        let mut pool = PoolShape::of(&runtime.engine);
        pool.keep_resident = runtime
            .engine
            .keep_resident_bytes
            .unwrap_or(KEEP_RESIDENT_WITH_SCAN);
        let slots = u64::from(node.max_concurrent());
        let terms = vec![
            Term {
                name: format!("{slots} tasks × {} per task", mib(per_task)),
                bytes: slots * per_task,
            },
            Term {
                name: format!(
                    "instance pool kept resident ({} memories + {} tables × {} KiB)",
                    pool.memories,
                    pool.tables,
                    pool.keep_resident >> 10
                ),
                bytes: u64::from(pool.memories + pool.tables) * pool.keep_resident as u64,
            },
            Term {
                name: format!(
                    "{} connections × (max_body_bytes + read buffer)",
                    edge.max_connections
                ),
                bytes: edge.max_connections as u64
                    * (node.max_body_bytes + edge.buffer_bytes()) as u64,
            },
            Term {
                name: "answers waiting on clients (max_unsent_answers_mib)".to_string(),
                bytes: edge.max_unsent_answer_bytes,
            },
            Term {
                name: format!("nonce cache ({} nonces)", node.nonce_capacity()),
                bytes: node.nonce_capacity() as u64 * NONCE_BYTES,
            },
            Term {
                name: "idempotency cache".to_string(),
                bytes: node
                    .idempotency()
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
                name: format!("per-Origin limiter ({} origins)", node.origin_limit_tracked),
                bytes: node.origin_limit_tracked as u64 * ORIGIN_BYTES,
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
                name: format!(
                    "{} DNS lookup threads × 2 MiB stack (max_dns_lookups)",
                    runtime.max_dns_lookups
                ),
                bytes: runtime.max_dns_lookups as u64 * LOOKUP_THREAD_BYTES,
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
            let manifest = config.oci.max_manifest_bytes as u64;
            self.terms.push(Term {
                name: "registry pulls: a manifest and a signature payload (2 × oci.max_manifest_kib), parsed".to_string(),
                bytes: 2 * manifest * (1 + PARSED_JSON_FACTOR),
            });
        }
    }

    /// The relay, worker and peer-gossip terms of `config`, where set.
    fn add_reach(&mut self, config: &NodeConfig) {
        let connections = config.node.edge().max_connections as u64;
        if let Some(relay) = &config.reach.relay_capable {
            let calls = (u64::from(relay.max_sessions) * u64::from(relay.max_tasks_per_session))
                .min(connections);
            let framed = if relay.accept_port == 0 {
                0
            } else {
                u64::from(relay.max_framed_connections) * 2 * MAX_BIND_BYTES as u64
                    + RESPONSES_DECODED_AT_ONCE as u64
                        * (relay.max_result_bytes + FRAMED_ENVELOPE_BYTES) as u64
            };
            self.terms.push(Term {
                name: format!(
                    "relay: results being read, and answers built before they are charged \
                     (3 × max_bytes_total), {calls} calls, {} sessions, bind windows, spent \
                     tickets, {} pinned workers, framed handshakes and decoded responses",
                    relay.max_sessions, relay.max_pinned_workers
                ),
                bytes: framed
                    + 3 * relay.max_bytes_total as u64
                    + calls * RELAY_CALL_BYTES
                    + u64::from(relay.max_sessions) * RELAY_SESSION_BYTES
                    + u64::from(relay.bind_rate_sources) * BIND_SOURCE_BYTES
                    + u64::from(relay.max_ticket_ids) * TICKET_ID_BYTES
                    + u64::from(relay.max_pinned_workers) * PIN_BYTES,
            });
        }
        if let Some(worker) = &config.reach.relay {
            self.terms.push(Term {
                name: format!("relay worker: {} pull answers", worker.pullers),
                bytes: u64::from(worker.pullers)
                    * (config.node.max_body_bytes + PULL_ENVELOPE_BYTES) as u64,
            });
        }
        if let Some(peers) = &config.reach.peers {
            let body = peers.max_body_bytes as u64;
            self.terms.push(Term {
                name: format!(
                    "peers: {} peers, {} spent signatures, {} merge senders, one outgoing exchange,                      incoming exchanges beyond max_body_bytes",
                    peers.max_peers, peers.max_signatures, peers.max_merge_senders
                ),
                bytes: u64::from(peers.max_peers) * PEER_BYTES
                    + u64::from(peers.max_signatures) * SIGNATURE_BYTES
                    + u64::from(peers.max_merge_senders) * crate::peers::budget::SENDER_BYTES
                    + body * (1 + PARSED_JSON_FACTOR)
                    + connections * body.saturating_sub(config.node.max_body_bytes as u64),
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

/// `bytes` in MiB, rounded up, for messages.
pub fn mib(bytes: u64) -> String {
    format!("{} MiB", bytes.div_ceil(1 << 20))
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
        use crate::peers::settings::PeerSettings;
        use crate::relay::settings::{RelaySettings, WorkerSettings};
        let mut config = NodeConfig::with_plugin("x.wasm".into());
        let base = WorstCase::of(&config).total();
        let long_poll_only = RelaySettings {
            accept_port: 0,
            ..RelaySettings::default()
        };
        config.reach.relay_capable = Some(long_poll_only.clone());
        let relay = WorstCase::of(&config);
        let relay_term = relay.total() - base;
        // 3 × 128 MiB of bytes plus tables of a few MiB.
        assert!(relay_term > 384 << 20 && relay_term < 420 << 20, "{relay}");
        assert!(relay.to_string().contains("relay: "));
        // The framed accept port: 512 handshakes of two 16 KiB frames, and
        // 4 responses of 8 MiB + 64 KiB decoded at once.
        config.reach.relay_capable = Some(RelaySettings::default());
        let framed_term = WorstCase::of(&config).total() - base - relay_term;
        assert_eq!(
            framed_term,
            512 * 2 * (16 << 10) + 4 * ((8 << 20) + (64 << 10))
        );
        config.reach.relay_capable = Some(RelaySettings {
            max_bytes_total: 16 << 20,
            ..long_poll_only
        });
        assert!(WorstCase::of(&config).total() - base < relay_term - (300 << 20));
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
        config.node.max_concurrent = Some(config.node.max_concurrent() * 2);
        let large = WorstCase::of(&config);
        assert!(large.total() > small + 31 * large.per_task);
        assert!(large.to_string().contains("64 tasks"));
    }
}
