//! What the operator configures about peer gossip (`[peers]`, `--peers`):
//! plain data with defaults, deserialized from the configuration file and
//! checked once by `validate`; every bound here is documented in
//! `iicp-host.example.toml`.

use serde::{Deserialize, Serialize};

use crate::directory::settings::validate_http_url;
use crate::settings::{Section, check_range, is_ed25519_hex};

/// Peer gossip (`POST /v1/peers`, `iicp-dir.md` §3.6), off unless
/// configured (`[peers]`, `--peers`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PeerSettings {
    /// Peers kept at most; a full table drops its stalest entry.
    pub max_peers: u32,
    /// How often this node gossips with one peer, in ms.
    pub gossip_interval_ms: u64,
    /// Peer base URLs to gossip with first (besides the directory's
    /// `/v1/bootstrap`).
    pub seeds: Vec<String>,
    /// Gossip keys of peers this node trusts without asking the directory:
    /// node id → Ed25519 public key (64 hex characters).
    pub trusted_keys: std::collections::BTreeMap<String, String>,
    /// The environment variable holding the mesh's shared HMAC key, for the
    /// reference SDK's signature form; unset refuses that form.
    pub hmac_key_env: Option<String>,
    /// Sign outgoing gossip with the shared HMAC key (the reference SDK's
    /// form) instead of this node's Ed25519 key.
    pub send_hmac: bool,
    /// Largest gossip body read, in either direction.
    pub max_body_bytes: usize,
    /// One exchange per sender per this many ms; more get 429 (§3.6: 30 s).
    pub min_sender_interval_ms: u64,
    /// Signatures remembered against replay (each for 5 minutes).
    pub max_signatures: u32,
    /// Gossip keys asked of the directory per minute at most.
    pub key_lookups_per_minute: u32,
    /// Gossip with peers at private, loopback and other non-public
    /// addresses too (a local mesh); off, such peers are kept but skipped.
    pub allow_private_endpoints: bool,
    /// Take HMAC-form exchanges without `timestamp_ms` (the reference
    /// SDK's): a captured one then replays after the 5-minute window.
    pub accept_untimed_hmac: bool,
    /// The per-sender merge window, in ms.
    pub merge_window_ms: u64,
    /// Bound on each gossip call to a peer (connection, request and answer),
    /// in ms: a peer that stalls holds one exchange this long at most.
    pub call_timeout_ms: u64,
    /// Entries one sender's lists may offer per window; the rest of a list
    /// is dropped.
    pub merge_entries_per_window: u32,
    /// Their bytes (id, endpoint and region) per window.
    pub merge_bytes_per_window: u64,
    /// Senders whose windows are remembered at most; beyond, lists from new
    /// senders are dropped until a window ends.
    pub max_merge_senders: u32,
}

impl Default for PeerSettings {
    fn default() -> Self {
        Self {
            max_peers: 256,
            gossip_interval_ms: 30_000,
            seeds: Vec::new(),
            trusted_keys: std::collections::BTreeMap::new(),
            hmac_key_env: None,
            send_hmac: false,
            max_body_bytes: 256 << 10,
            min_sender_interval_ms: 30_000,
            max_signatures: 65_536,
            key_lookups_per_minute: 60,
            allow_private_endpoints: false,
            accept_untimed_hmac: false,
            merge_window_ms: 60_000,
            call_timeout_ms: 5_000,
            merge_entries_per_window: 256,
            merge_bytes_per_window: 128 << 10,
            max_merge_senders: 1024,
        }
    }
}

impl Section for PeerSettings {
    const NAME: &'static str = "peers";

    /// Checks ranges, seeds and keys; the error names the field.
    fn validate(&self) -> Result<(), String> {
        check_range("max_peers", self.max_peers, &(1..=100_000))?;
        check_range(
            "gossip_interval_ms",
            self.gossip_interval_ms,
            &(100..=3_600_000),
        )?;
        check_range("max_body_bytes", self.max_body_bytes, &(1024..=(16 << 20)))?;
        check_range(
            "min_sender_interval_ms",
            self.min_sender_interval_ms,
            &(0..=3_600_000),
        )?;
        check_range("max_signatures", self.max_signatures, &(1..=10_000_000))?;
        check_range(
            "key_lookups_per_minute",
            self.key_lookups_per_minute,
            &(0..=100_000),
        )?;
        check_range(
            "merge_window_ms",
            self.merge_window_ms,
            &(1_000..=86_400_000),
        )?;
        check_range("call_timeout_ms", self.call_timeout_ms, &(100..=120_000))?;
        check_range(
            "merge_entries_per_window",
            self.merge_entries_per_window,
            &(1..=100_000),
        )?;
        check_range(
            "merge_bytes_per_window",
            self.merge_bytes_per_window,
            &(1024..=(64 << 20)),
        )?;
        check_range(
            "max_merge_senders",
            self.max_merge_senders,
            &(1..=1_000_000),
        )?;
        if self.seeds.len() > 64 {
            return Err("seeds: at most 64".to_string());
        }
        for seed in &self.seeds {
            validate_http_url(seed).map_err(|e| format!("seeds: {e}"))?;
        }
        for (node_id, key) in &self.trusted_keys {
            if !is_ed25519_hex(key) {
                return Err(format!(
                    "trusted_keys.{node_id}: must be 64 hex characters (an Ed25519 public key)"
                ));
            }
        }
        if self.send_hmac && self.hmac_key_env.is_none() {
            return Err("send_hmac needs hmac_key_env".to_string());
        }
        Ok(())
    }
}
