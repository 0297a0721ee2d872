//! What pulling plugins from registries counts.

use prometheus::{IntCounterVec, Registry};

use crate::metric_families::seeded_counter_vec;
use crate::oci::pull::REFUSAL_REASONS;

/// The OCI families.
#[derive(Clone)]
pub struct OciMetrics {
    /// `iicp_oci_pulls_total{result}`: pulled, stored, offline, failed.
    pub pulls: IntCounterVec,
    /// `iicp_oci_refusals_total{reason}`: plugins from registries refused
    /// for what they are (`not_component`), their signatures (`signature`)
    /// or an unpinned reference (`unpinned`).
    pub refusals: IntCounterVec,
}

impl OciMetrics {
    /// Registers the OCI families on `registry`.
    pub fn register(registry: &Registry) -> Self {
        Self {
            pulls: seeded_counter_vec(
                registry,
                "iicp_oci_pulls_total",
                "Plugins fetched by OCI reference, by result (pulled, stored, offline, failed).",
                "result",
                &["pulled", "stored", "offline", "failed"],
            ),
            refusals: seeded_counter_vec(
                registry,
                "iicp_oci_refusals_total",
                "Plugins from registries refused, by reason (not_component, signature, unpinned).",
                "reason",
                &REFUSAL_REASONS,
            ),
        }
    }
}
