//! The bodies the node sends: REGISTER (`protocol.md` §2.2), HEARTBEAT
//! (§2.4) with its metrics-batch rule, and the pricing block (§5.1).

use serde_json::{Map, Value, json};

use super::identity::Credentials;
use super::settings::{DirectorySettings, PricingSettings};
use super::signing::{PricingSignature, sdk_pricing_signature, spec_pricing_signature};
use crate::metrics::TallyCounts;
use crate::protocol::confidentiality::CxPublicKey;
use crate::runtime::plugin::CapabilityInfo;

/// `max_tokens` advertised for a capability that declares no limit (the
/// reference SDK's default; legacy directories require the field).
const DEFAULT_MAX_TOKENS: u32 = 8192;
/// The most tasks one metrics batch reports (directories clamp above it).
pub const MAX_BATCH_TASKS: u64 = 1000;

/// This software, as REGISTER's `implementation_name`/`implementation_version`.
pub const IMPLEMENTATION_NAME: &str = "iicp-host";
/// See [`IMPLEMENTATION_NAME`].
pub const IMPLEMENTATION_VERSION: &str = env!("CARGO_PKG_VERSION");

/// What REGISTER says about the node.
pub struct RegisterFacts<'a> {
    /// The public endpoint.
    pub endpoint: &'a str,
    /// The advertised region.
    pub region: &'a str,
    /// Every loaded plugin's capabilities.
    pub capabilities: &'a [CapabilityInfo],
    /// Node-wide task slots.
    pub max_concurrent: u32,
    /// The IICP-CX key, when encrypted tasks are accepted (§1.6).
    pub cx_public_key: Option<&'a CxPublicKey>,
}

/// The REGISTER body. `current_node_token` proves ownership of the node id
/// when a token from an earlier registration is known.
pub fn register_body(
    facts: &RegisterFacts<'_>,
    settings: &DirectorySettings,
    credentials: &Credentials,
) -> Value {
    let capabilities: Vec<Value> = facts
        .capabilities
        .iter()
        .map(|c| {
            json!({
                "intent": c.intent,
                "models": c.models,
                "max_tokens": c.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
                "input_modalities": c.input_modalities,
            })
        })
        .collect();
    let mut body = Map::new();
    body.insert("node_id".into(), json!(credentials.node_id));
    body.insert("endpoint".into(), json!(facts.endpoint));
    body.insert("region".into(), json!(facts.region));
    body.insert("capabilities".into(), Value::Array(capabilities));
    body.insert(
        "limits".into(),
        json!({
            "max_concurrent": facts.max_concurrent.clamp(1, 256),
            "tokens_per_min": settings.tokens_per_min,
        }),
    );
    body.insert("implementation_name".into(), json!(IMPLEMENTATION_NAME));
    body.insert(
        "implementation_version".into(),
        json!(IMPLEMENTATION_VERSION),
    );
    body.insert(
        "pricing".into(),
        pricing_block(&settings.pricing, credentials),
    );
    if let Some(key) = facts.cx_public_key {
        body.insert("cx_public_key".into(), json!(key));
    }
    if let Some(policy) = &settings.policy {
        body.insert("policy".into(), json!(policy));
    }
    let transport = &settings.transport;
    for (field, value) in [
        ("transport_endpoint", &transport.endpoint),
        ("transport_method", &transport.method),
        ("nat_type", &transport.nat_type),
    ] {
        if let Some(value) = value {
            body.insert(field.into(), json!(value));
        }
    }
    let reach = &settings.reach;
    if reach.relay_capable {
        body.insert("relay_capable".into(), json!(true));
    }
    if let Some(relay) = &reach.relayed_by {
        body.insert("exposure_mode".into(), json!("relay_required"));
        body.insert(
            "transport_metadata".into(),
            json!({ "relay_url": relay, "relay_for": credentials.node_id }),
        );
    }
    if let Some(key) = &reach.gossip_public_key {
        body.insert("gossip_public_key".into(), json!(key));
    }
    if let Some(key) = &credentials.operator_hmac_key {
        // The production directory adopts an operator key sent here (§10 #3).
        body.insert("node_hmac_key".into(), json!(key));
    }
    if let Some(token) = &credentials.node_token {
        body.insert("current_node_token".into(), json!(token));
    }
    Value::Object(body)
}

/// The pricing block, signed in the configured form when a key is known:
/// the SDK form needs an HMAC key (none before the first registration unless
/// the operator provisioned one), the spec form needs the node token.
pub fn pricing_block(pricing: &PricingSettings, credentials: &Credentials) -> Value {
    let mut block = Map::new();
    block.insert(
        "credit_cost_multiplier".into(),
        json!(pricing.credit_cost_multiplier),
    );
    block.insert("pricing_model".into(), json!(pricing.pricing_model));
    if let Some(from) = &pricing.effective_from {
        block.insert("effective_from".into(), json!(from));
    }
    if let Some(until) = &pricing.effective_until {
        block.insert("effective_until".into(), json!(until));
    }
    let signature = match pricing.signature {
        PricingSignature::Sdk => credentials.pricing_key().map(|key| {
            sdk_pricing_signature(key, pricing.credit_cost_multiplier, &pricing.pricing_model)
        }),
        PricingSignature::Spec => credentials.node_token.as_deref().map(|token| {
            spec_pricing_signature(
                token,
                pricing.credit_cost_multiplier,
                &pricing.pricing_model,
                pricing.effective_from.as_deref(),
                pricing.effective_until.as_deref(),
            )
        }),
        PricingSignature::Unsigned => None,
    };
    if let Some(signature) = signature {
        block.insert("declaration_signature".into(), json!(signature));
    }
    Value::Object(block)
}

/// One metrics batch: counts and the id the directory acknowledges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsBatch {
    /// The batch id (a UUID).
    pub id: String,
    /// The counts reported.
    pub counts: TallyCounts,
}

impl MetricsBatch {
    fn body(&self) -> Value {
        let finished = self.counts.success + self.counts.failed;
        json!({
            "tasks_success": self.counts.success,
            "tasks_failed": self.counts.failed,
            "avg_latency_ms": self.counts.latency_ms_sum.checked_div(finished).unwrap_or(0),
        })
    }
}

/// Keeps at most one unacknowledged batch and resends it with the same id
/// until a PONG acknowledges it (§2.4).
#[derive(Debug, Default)]
pub struct BatchTracker {
    pending: Option<MetricsBatch>,
}

impl BatchTracker {
    /// The batch to send now: the pending one, or a new one from `tally`.
    /// A batch reports at most [`MAX_BATCH_TASKS`] tasks; larger counts are
    /// scaled down keeping the success/failure ratio (directories clamp
    /// anyway), with the average latency over all of them.
    pub fn next(&mut self, drain: impl FnOnce() -> TallyCounts) -> Option<&MetricsBatch> {
        if self.pending.is_none() {
            let counts = drain();
            let total = counts.success + counts.failed;
            if total > 0 {
                let scaled = if total > MAX_BATCH_TASKS {
                    let success = counts.success * MAX_BATCH_TASKS / total;
                    TallyCounts {
                        success,
                        failed: MAX_BATCH_TASKS - success,
                        latency_ms_sum: counts.latency_ms_sum / total * MAX_BATCH_TASKS,
                    }
                } else {
                    counts
                };
                self.pending = Some(MetricsBatch {
                    id: uuid::Uuid::new_v4().to_string(),
                    counts: scaled,
                });
            }
        }
        self.pending.as_ref()
    }

    /// Reads a PONG: the batch is settled when `metrics_batch_accepted`
    /// names it, or when the key is absent (legacy directories).
    pub fn on_pong(&mut self, pong: &Value) {
        let settled = match (pong.get("metrics_batch_accepted"), &self.pending) {
            (None, _) => true,
            (Some(Value::String(id)), Some(pending)) => *id == pending.id,
            _ => false,
        };
        if settled {
            self.pending = None;
        }
    }
}

/// Live facts a heartbeat reports.
pub struct HeartbeatFacts {
    /// Tasks holding a slot.
    pub active_jobs: u32,
    /// Node-wide task slots.
    pub max_concurrent: u32,
    /// Drains of the node and its plugins.
    pub service: ServiceState,
}

/// What a heartbeat says about taking new tasks: `(status, available)`.
///
/// `available` is node-wide, and directories drop an unavailable node from
/// discovery for every intent (`iicp-core.md` §4.1), so:
/// * the whole node draining, or every plugin drained → `"draining"`,
///   `available: false`;
/// * some but not all plugins drained → `"degraded"`, `available` as the
///   slots say: the other intents still serve, and the drained ones answer
///   503 `IICP-E024` with `Retry-After`, which consumers treat as "switch
///   node" (re-registering without their capabilities would rotate the node
///   token on every drain);
/// * otherwise `"available"`, `available` while a slot is free.
///
/// Directories read `available` and ignore `status` (`protocol.md` §2.4).
pub fn service_status(facts: &HeartbeatFacts) -> (&'static str, bool) {
    let service = &facts.service;
    let free_slot = facts.active_jobs < facts.max_concurrent.max(1);
    if service.node_draining || (service.plugins > 0 && service.drained_plugins == service.plugins)
    {
        ("draining", false)
    } else if service.drained_plugins > 0 {
        ("degraded", free_slot)
    } else {
        ("available", free_slot)
    }
}

/// The HEARTBEAT body.
pub fn heartbeat_body(
    facts: &HeartbeatFacts,
    batch: Option<&MetricsBatch>,
    challenge_response: Option<String>,
    pricing: &PricingSettings,
    credentials: &Credentials,
) -> Value {
    let capacity = facts.max_concurrent.max(1);
    let mut body = Map::new();
    body.insert("node_id".into(), json!(credentials.node_id));
    if let Some(token) = &credentials.node_token {
        // Legacy duplicate of the Bearer header, still read by older directories.
        body.insert("node_token".into(), json!(token));
    }
    let (status, available) = service_status(facts);
    body.insert("status".into(), json!(status));
    body.insert("available".into(), json!(available));
    body.insert(
        "load".into(),
        json!(f64::from(facts.active_jobs) / f64::from(capacity)),
    );
    body.insert("active_jobs".into(), json!(facts.active_jobs));
    body.insert("max_concurrent".into(), json!(facts.max_concurrent));
    match batch {
        Some(batch) => {
            body.insert("metrics".into(), batch.body());
            body.insert("metrics_batch_id".into(), json!(batch.id));
        }
        None => {
            body.insert("metrics".into(), json!({}));
        }
    }
    if let Some(response) = challenge_response {
        body.insert("challenge_response".into(), json!(response));
    }
    body.insert("pricing".into(), pricing_block(pricing, credentials));
    Value::Object(body)
}

/// Whether the node and its plugins take new tasks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServiceState {
    /// The whole node drains (operator drain or shutdown).
    pub node_draining: bool,
    /// Plugins loaded.
    pub plugins: usize,
    /// Plugins drained by the operator.
    pub drained_plugins: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(success: u64, failed: u64, latency_ms_sum: u64) -> TallyCounts {
        TallyCounts {
            success,
            failed,
            latency_ms_sum,
        }
    }

    #[test]
    fn a_batch_is_resent_until_acknowledged() {
        let mut tracker = BatchTracker::default();
        assert!(tracker.next(TallyCounts::default).is_none());
        let first = tracker.next(|| counts(3, 1, 40)).cloned().unwrap();
        assert_eq!(
            first.body(),
            json!({"tasks_success":3,"tasks_failed":1,"avg_latency_ms":10})
        );
        // Not acknowledged (null or another id): the same batch again, no new drain.
        tracker.on_pong(&json!({"metrics_batch_accepted": null}));
        assert_eq!(tracker.next(|| panic!("must not drain")).unwrap(), &first);
        tracker.on_pong(&json!({"metrics_batch_accepted": "other"}));
        assert_eq!(tracker.next(|| panic!("must not drain")).unwrap(), &first);
        tracker.on_pong(&json!({"metrics_batch_accepted": first.id}));
        assert!(tracker.next(TallyCounts::default).is_none());
        // A legacy PONG without the key settles it too.
        tracker.next(|| counts(1, 0, 5));
        tracker.on_pong(&json!({"ok": true}));
        assert!(tracker.next(TallyCounts::default).is_none());
    }

    #[test]
    fn large_batches_keep_their_ratio() {
        let mut tracker = BatchTracker::default();
        let batch = tracker.next(|| counts(7500, 2500, 50_000)).unwrap();
        assert_eq!(batch.counts.success, 750);
        assert_eq!(batch.counts.failed, 250);
        assert_eq!(batch.body()["avg_latency_ms"], 5);
    }

    #[test]
    fn pricing_is_signed_only_with_a_key() {
        let pricing = PricingSettings {
            credit_cost_multiplier: 1.5,
            ..PricingSettings::default()
        };
        let unsigned = pricing_block(&pricing, &Credentials::default());
        assert!(unsigned.get("declaration_signature").is_none());
        let credentials = Credentials {
            directory_hmac_key: Some("test-secret-key".into()),
            ..Credentials::default()
        };
        assert_eq!(
            pricing_block(&pricing, &credentials)["declaration_signature"],
            "24a66a87446583304b1a4a304de30f91dfab8c9c48d85209710217ca6b8b5d0c"
        );
    }
}
