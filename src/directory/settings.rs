//! What the operator configures about the directory relationship: where the
//! directory is, what the node advertises (endpoint, transport, CIP policy,
//! pricing), and how declarations are signed. Plain data, validated once.

use std::ops::RangeInclusive;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::signing::PricingSignature;
use crate::settings::{Section, as_millis, check_range};

/// Pricing models the directories accept.
pub const PRICING_MODELS: &[&str] = &["per_token", "per_request", "flat"];
/// `transport_method` values of `protocol.md` §2.2.
pub const TRANSPORT_METHODS: &[&str] = &[
    "direct",
    "upnp_mapped",
    "stun_hole_punch",
    "turn_relay",
    "external_tunnel",
    "webrtc_datachannel",
];
/// `nat_type` values of `protocol.md` §2.2.
pub const NAT_TYPES: &[&str] = &[
    "full_cone",
    "restricted_cone",
    "port_restricted",
    "symmetric",
    "unknown",
];

/// Everything needed to join a directory.
#[derive(Debug, Clone)]
pub struct DirectorySettings {
    /// Base URL, used as given with `/v1/<op>` appended (e.g. `https://iicp.network/api`).
    pub url: String,
    /// The public URL advertised as `endpoint`; `None` means `http://<listen address>`.
    pub endpoint: Option<String>,
    /// Bound on every directory call.
    pub timeout: Duration,
    /// `limits.tokens_per_min` advertised.
    pub tokens_per_min: u32,
    /// The pricing declaration.
    pub pricing: PricingSettings,
    /// The CIP policy block, when the operator set one.
    pub policy: Option<CipPolicy>,
    /// Optional transport and NAT fields.
    pub transport: TransportSettings,
    /// An operator-provisioned HMAC key (read from the environment, never from a file).
    pub operator_hmac_key: Option<String>,
    /// Credit receipts queued at most, in count and bytes; more are
    /// dropped and counted.
    pub receipt_queue: QueueBounds,
    /// Heartbeat cadence bounds, retry floor and backoff.
    pub timing: Timing,
    /// How the node is reached besides `endpoint`; set by the node's reach
    /// phase from the relay and peer settings, not read from `[directory]`.
    pub reach: ReachAdvert,
}

/// What REGISTER says about reaching the node beyond `endpoint`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReachAdvert {
    /// The node relays for workers behind NAT (`relay_capable`).
    pub relay_capable: bool,
    /// The node is reached only through this relay: `endpoint` is its
    /// relay-for URL, `exposure_mode` is `relay_required` and
    /// `transport_metadata` names the relay.
    pub relayed_by: Option<String>,
    /// The Ed25519 key peers verify this node's gossip with (hex), sent as
    /// `gossip_public_key` — the name the directory stores it under; the
    /// spec names no REGISTER field for it and `public_key` is read by some
    /// directories as the deprecated IICP-CX alias (`iicp-dir.md` §3.6).
    pub gossip_public_key: Option<String>,
}

/// The ADR-019 pricing block.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PricingSettings {
    /// `credit_cost_multiplier`, 0..=1000.
    #[serde(default = "default_multiplier")]
    pub credit_cost_multiplier: f64,
    /// `pricing_model`: per_token, per_request or flat.
    #[serde(default = "default_model")]
    pub pricing_model: String,
    /// ISO-8601 start of validity, if any.
    #[serde(default)]
    pub effective_from: Option<String>,
    /// ISO-8601 end of validity, if any.
    #[serde(default)]
    pub effective_until: Option<String>,
    /// Signature form.
    #[serde(default)]
    pub signature: PricingSignature,
}

fn default_multiplier() -> f64 {
    1.0
}

fn default_model() -> String {
    "per_token".to_string()
}

impl Default for PricingSettings {
    fn default() -> Self {
        Self {
            credit_cost_multiplier: default_multiplier(),
            pricing_model: default_model(),
            effective_from: None,
            effective_until: None,
            signature: PricingSignature::default(),
        }
    }
}

impl PricingSettings {
    /// Checks ranges and enums; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1000.0).contains(&self.credit_cost_multiplier) {
            return Err(format!(
                "credit_cost_multiplier must be between 0 and 1000, got {}",
                self.credit_cost_multiplier
            ));
        }
        if !PRICING_MODELS.contains(&self.pricing_model.as_str()) {
            return Err(format!(
                "pricing_model must be one of {}, got {:?}",
                PRICING_MODELS.join(", "),
                self.pricing_model
            ));
        }
        Ok(())
    }
}

/// The CIP policy block of REGISTER (`protocol.md` §6).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CipPolicy {
    /// Eligible as a CIP worker.
    #[serde(default)]
    pub allow_remote_inference: bool,
    /// General tool-execution policy.
    #[serde(default)]
    pub allow_tool_execution: bool,
    /// General file-access policy.
    #[serde(default)]
    pub allow_file_access: bool,
    /// Coordinators below this reputation are refused.
    #[serde(default)]
    pub minimum_reputation: f64,
    /// CIP sub-tasks served at once.
    #[serde(default = "default_max_concurrent_remote")]
    pub max_concurrent_remote: u32,
}

fn default_max_concurrent_remote() -> u32 {
    2
}

impl CipPolicy {
    /// Checks ranges; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.minimum_reputation) {
            return Err(format!(
                "minimum_reputation must be between 0 and 1, got {}",
                self.minimum_reputation
            ));
        }
        if self.max_concurrent_remote == 0 {
            return Err("max_concurrent_remote must be at least 1".to_string());
        }
        Ok(())
    }
}

/// Optional transport fields of REGISTER.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransportSettings {
    /// `transport_endpoint` (`iicp://` or `iicpsec://`).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// `transport_method`.
    #[serde(default)]
    pub method: Option<String>,
    /// `nat_type`.
    #[serde(default)]
    pub nat_type: Option<String>,
}

impl TransportSettings {
    /// Checks schemes and enums; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(endpoint) = &self.endpoint
            && !(endpoint.starts_with("iicp://") || endpoint.starts_with("iicpsec://"))
        {
            return Err(format!(
                "endpoint must start with iicp:// or iicpsec://, got {endpoint:?}"
            ));
        }
        if let Some(method) = &self.method
            && !TRANSPORT_METHODS.contains(&method.as_str())
        {
            return Err(format!(
                "method must be one of {}, got {method:?}",
                TRANSPORT_METHODS.join(", ")
            ));
        }
        if let Some(nat) = &self.nat_type
            && !NAT_TYPES.contains(&nat.as_str())
        {
            return Err(format!(
                "nat_type must be one of {}, got {nat:?}",
                NAT_TYPES.join(", ")
            ));
        }
        Ok(())
    }
}

/// Checks that `url` is an absolute http(s) URL.
pub fn validate_http_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
        return Err(format!(
            "{url:?} must be an http:// or https:// URL with a host"
        ));
    }
    Ok(())
}

/// Every timing of the directory relationship, in one table. The first six
/// are the operator's (`[directory]` keys `*_ms`); the rest are fixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Heartbeat interval when the directory names none (the SDK's 30 s).
    pub default_heartbeat: Duration,
    /// Shortest heartbeat interval honoured, whatever the directory asks.
    pub min_heartbeat: Duration,
    /// Longest heartbeat interval honoured, and the longest `Retry-After`.
    pub max_heartbeat: Duration,
    /// Shortest wait before any retry, `Retry-After: 0` included.
    pub retry_floor: Duration,
    /// Backoff after the first failure (each wait is jittered to [d/2, d]).
    pub backoff_initial: Duration,
    /// Backoff never grows past this.
    pub backoff_max: Duration,
    /// Fewest time between two writes of the credentials file.
    pub state_write_interval: Duration,
    /// How long to wait for the node's own health route before registering anyway.
    pub local_health_wait: Duration,
    /// Bound on the deregistration call at shutdown.
    pub deregister_timeout: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            default_heartbeat: Duration::from_secs(30),
            min_heartbeat: Duration::from_millis(250),
            max_heartbeat: Duration::from_secs(300),
            retry_floor: Duration::from_millis(500),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            state_write_interval: Duration::from_secs(10),
            local_health_wait: Duration::from_secs(10),
            deregister_timeout: Duration::from_secs(5),
        }
    }
}

impl Timing {
    /// The shortest gap between two requests of the lifecycle.
    pub fn request_gap(&self) -> Duration {
        self.min_heartbeat.min(self.retry_floor)
    }
}

/// How much the credit-receipt queue (`receipts`) may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueBounds {
    /// Receipts queued at most.
    pub count: usize,
    /// Bytes of queued receipts (task ids and results) at most.
    pub bytes: usize,
}

/// The `[directory]` table, in the units the file writes; `url` is
/// required, every other key has its default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectorySection {
    /// The directory's base URL.
    pub url: String,
    /// Bound on each directory call, in ms.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Consumer tokens the directory may issue for this node per minute.
    #[serde(default = "default_tokens_per_min")]
    pub tokens_per_min: u32,
    /// The environment variable holding the operator's HMAC key, if any.
    #[serde(default)]
    pub hmac_key_env: Option<String>,
    /// Credit receipts queued at most.
    #[serde(default = "default_receipt_queue")]
    pub receipt_queue: usize,
    /// Bytes of queued credit receipts at most.
    #[serde(default = "default_receipt_queue_bytes")]
    pub receipt_queue_bytes: usize,
    /// [`Timing::default_heartbeat`], in ms.
    #[serde(default = "default_heartbeat_ms")]
    pub default_heartbeat_ms: u64,
    /// [`Timing::min_heartbeat`], in ms.
    #[serde(default = "default_min_heartbeat_ms")]
    pub min_heartbeat_ms: u64,
    /// [`Timing::max_heartbeat`], in ms.
    #[serde(default = "default_max_heartbeat_ms")]
    pub max_heartbeat_ms: u64,
    /// [`Timing::retry_floor`], in ms.
    #[serde(default = "default_retry_floor_ms")]
    pub retry_floor_ms: u64,
    /// [`Timing::backoff_initial`], in ms.
    #[serde(default = "default_backoff_initial_ms")]
    pub backoff_initial_ms: u64,
    /// [`Timing::backoff_max`], in ms.
    #[serde(default = "default_backoff_max_ms")]
    pub backoff_max_ms: u64,
}

fn default_timeout_ms() -> u64 {
    10_000
}
/// The reference SDK's `limits.tokens_per_min`.
fn default_tokens_per_min() -> u32 {
    10_000
}
fn default_receipt_queue() -> usize {
    1024
}
fn default_receipt_queue_bytes() -> usize {
    16 << 20
}
fn default_heartbeat_ms() -> u64 {
    as_millis(Timing::default().default_heartbeat)
}
fn default_min_heartbeat_ms() -> u64 {
    as_millis(Timing::default().min_heartbeat)
}
fn default_max_heartbeat_ms() -> u64 {
    as_millis(Timing::default().max_heartbeat)
}
fn default_retry_floor_ms() -> u64 {
    as_millis(Timing::default().retry_floor)
}
fn default_backoff_initial_ms() -> u64 {
    as_millis(Timing::default().backoff_initial)
}
fn default_backoff_max_ms() -> u64 {
    as_millis(Timing::default().backoff_max)
}

/// Bounds of the directory timings, in ms: from 100 ms (at most ten
/// requests a second, however the operator sets it) to an hour.
const TIMING_MS_RANGE: RangeInclusive<u64> = 100..=3_600_000;

impl Section for DirectorySection {
    const NAME: &'static str = "directory";

    fn validate(&self) -> Result<(), String> {
        validate_http_url(&self.url).map_err(|e| format!("url: {e}"))?;
        for (key, ms) in [
            ("default_heartbeat_ms", self.default_heartbeat_ms),
            ("min_heartbeat_ms", self.min_heartbeat_ms),
            ("max_heartbeat_ms", self.max_heartbeat_ms),
            ("retry_floor_ms", self.retry_floor_ms),
            ("backoff_initial_ms", self.backoff_initial_ms),
            ("backoff_max_ms", self.backoff_max_ms),
        ] {
            check_range(key, ms, &TIMING_MS_RANGE)?;
        }
        if self.max_heartbeat_ms < self.min_heartbeat_ms {
            return Err("max_heartbeat_ms must not be below min_heartbeat_ms".to_string());
        }
        if self.backoff_max_ms < self.backoff_initial_ms {
            return Err("backoff_max_ms must not be below backoff_initial_ms".to_string());
        }
        check_range("timeout_ms", self.timeout_ms, &(100..=120_000))?;
        check_range("tokens_per_min", self.tokens_per_min, &(1..=u32::MAX))?;
        check_range("receipt_queue", self.receipt_queue, &(1..=1_000_000))?;
        check_range(
            "receipt_queue_bytes",
            self.receipt_queue_bytes,
            &(1 << 16..=1 << 32),
        )?;
        Ok(())
    }
}

impl DirectorySection {
    /// Defaults for `--directory URL`.
    pub fn new(url: String) -> Self {
        Self {
            url,
            timeout_ms: default_timeout_ms(),
            tokens_per_min: default_tokens_per_min(),
            hmac_key_env: None,
            receipt_queue: default_receipt_queue(),
            receipt_queue_bytes: default_receipt_queue_bytes(),
            default_heartbeat_ms: default_heartbeat_ms(),
            min_heartbeat_ms: default_min_heartbeat_ms(),
            max_heartbeat_ms: default_max_heartbeat_ms(),
            retry_floor_ms: default_retry_floor_ms(),
            backoff_initial_ms: default_backoff_initial_ms(),
            backoff_max_ms: default_backoff_max_ms(),
        }
    }

    /// The directory settings these keys give, advertising `endpoint`, with
    /// the default pricing and transport, no CIP policy and no operator key.
    pub fn settings(&self, endpoint: Option<String>) -> DirectorySettings {
        let ms = Duration::from_millis;
        DirectorySettings {
            url: self.url.clone(),
            endpoint,
            timeout: ms(self.timeout_ms),
            tokens_per_min: self.tokens_per_min,
            pricing: PricingSettings::default(),
            policy: None,
            transport: TransportSettings::default(),
            operator_hmac_key: None,
            receipt_queue: QueueBounds {
                count: self.receipt_queue,
                bytes: self.receipt_queue_bytes,
            },
            timing: Timing {
                default_heartbeat: ms(self.default_heartbeat_ms),
                min_heartbeat: ms(self.min_heartbeat_ms),
                max_heartbeat: ms(self.max_heartbeat_ms),
                retry_floor: ms(self.retry_floor_ms),
                backoff_initial: ms(self.backoff_initial_ms),
                backoff_max: ms(self.backoff_max_ms),
                ..Timing::default()
            },
            reach: ReachAdvert::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_what_is_wrong() {
        let pricing = PricingSettings {
            pricing_model: "per_hour".into(),
            ..PricingSettings::default()
        };
        assert!(pricing.validate().unwrap_err().contains("pricing_model"));
        let pricing = PricingSettings {
            credit_cost_multiplier: 1001.0,
            ..PricingSettings::default()
        };
        assert!(
            pricing
                .validate()
                .unwrap_err()
                .contains("credit_cost_multiplier")
        );
        let transport = TransportSettings {
            nat_type: Some("open".into()),
            ..TransportSettings::default()
        };
        assert!(transport.validate().unwrap_err().contains("nat_type"));
        assert!(validate_http_url("ftp://x").is_err());
        assert!(validate_http_url("https://iicp.network/api").is_ok());
    }

    #[test]
    fn the_directory_table_defaults_to_the_fixed_timings_and_checks_its_rules() {
        let section = DirectorySection::new("http://dir.example".into());
        assert_eq!(section.validate(), Ok(()));
        assert_eq!(section.settings(None).timing, Timing::default());
        let inverted = DirectorySection {
            min_heartbeat_ms: 2000,
            max_heartbeat_ms: 1000,
            ..section.clone()
        };
        assert_eq!(
            crate::settings::check_section(&inverted).unwrap_err(),
            "directory.max_heartbeat_ms must not be below min_heartbeat_ms"
        );
        let tiny_queue = DirectorySection {
            receipt_queue_bytes: 1,
            ..section
        };
        assert!(
            tiny_queue
                .validate()
                .unwrap_err()
                .starts_with("receipt_queue_bytes must be between 65536")
        );
    }
}
