//! What the operator configures about registries (`[oci]`): plain data with
//! defaults, deserialized from the configuration file and checked once by
//! `validate`; every bound here is documented in `iicp-host.example.toml`.

use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{
    DEFAULT_MAX_MANIFEST_BYTES, DEFAULT_MAX_PLUGIN_BYTES, DEFAULT_MAX_STORE_BYTES, DEFAULT_TIMEOUT,
    OciLocation, OciSettings, signature,
};
use crate::settings::{Section, as_millis, check_range};

/// `timeout_ms` (and `--oci-timeout-ms`).
pub const TIMEOUT_MS_RANGE: RangeInclusive<u64> = 100..=3_600_000;
/// `max_manifest_kib`.
pub const MAX_MANIFEST_KIB_RANGE: RangeInclusive<u32> = 1..=65_536;
/// `max_plugin_mib` (and `--oci-max-plugin-mib`).
pub const MAX_PLUGIN_MIB_RANGE: RangeInclusive<u32> = 1..=4096;
/// `max_store_mib`.
pub const MAX_STORE_MIB_RANGE: RangeInclusive<u32> = 1..=1_048_576;
/// `max_signatures`.
pub const MAX_SIGNATURES_RANGE: RangeInclusive<usize> = 1..=1024;

/// Whether `registry` is `HOST` or `HOST:PORT` (an insecure registry's
/// form, in the file and in `--oci-insecure-registry`).
pub fn is_registry(registry: &str) -> bool {
    OciLocation::parse(&format!("oci://{registry}/x:y")).is_ok()
}

/// The `[oci]` table, in the units the file writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OciSection {
    /// Deadline of each registry call (a whole download included), in ms.
    pub timeout_ms: u64,
    /// Largest manifest accepted, in KiB.
    pub max_manifest_kib: u32,
    /// Largest component accepted, in MiB.
    pub max_plugin_mib: u32,
    /// Components the store keeps, in MiB.
    pub max_store_mib: u32,
    /// Registries (`host[:port]`) spoken to over plain HTTP although not on
    /// loopback.
    pub insecure_registries: Vec<String>,
    /// Public keys one of which must have signed every `oci://` plugin
    /// without its own `signature_keys` (relative to the file).
    pub signature_keys: Vec<PathBuf>,
    /// Refuse `oci://` plugins named by a tag instead of a digest.
    pub require_digest: bool,
    /// Signature layers looked at per signed manifest, at most.
    pub max_signatures: usize,
}

impl Default for OciSection {
    fn default() -> Self {
        Self {
            timeout_ms: as_millis(DEFAULT_TIMEOUT),
            max_manifest_kib: (DEFAULT_MAX_MANIFEST_BYTES >> 10) as u32,
            max_plugin_mib: (DEFAULT_MAX_PLUGIN_BYTES >> 20) as u32,
            max_store_mib: (DEFAULT_MAX_STORE_BYTES >> 20) as u32,
            insecure_registries: Vec::new(),
            signature_keys: Vec::new(),
            require_digest: false,
            max_signatures: signature::DEFAULT_MAX_SIGNATURES,
        }
    }
}

impl Section for OciSection {
    const NAME: &'static str = "oci";

    fn validate(&self) -> Result<(), String> {
        check_range("timeout_ms", self.timeout_ms, &TIMEOUT_MS_RANGE)?;
        check_range(
            "max_manifest_kib",
            self.max_manifest_kib,
            &MAX_MANIFEST_KIB_RANGE,
        )?;
        check_range("max_plugin_mib", self.max_plugin_mib, &MAX_PLUGIN_MIB_RANGE)?;
        check_range("max_store_mib", self.max_store_mib, &MAX_STORE_MIB_RANGE)?;
        if let Some(bad) = self.insecure_registries.iter().find(|r| !is_registry(r)) {
            return Err(format!(
                "insecure_registries: {bad:?} is not HOST or HOST:PORT"
            ));
        }
        check_range("max_signatures", self.max_signatures, &MAX_SIGNATURES_RANGE)?;
        Ok(())
    }
}

impl OciSection {
    /// The settings a puller works with, its store in `store_dir`.
    pub fn settings(&self, store_dir: Option<PathBuf>) -> OciSettings {
        OciSettings {
            store_dir,
            max_manifest_bytes: (self.max_manifest_kib as usize) << 10,
            max_plugin_bytes: u64::from(self.max_plugin_mib) << 20,
            max_store_bytes: u64::from(self.max_store_mib) << 20,
            timeout: Duration::from_millis(self.timeout_ms),
            insecure_registries: self.insecure_registries.clone(),
            max_signatures: self.max_signatures,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_the_pullers_defaults_and_valid() {
        let section = OciSection::default();
        assert_eq!(section.validate(), Ok(()));
        assert_eq!(section.settings(None), OciSettings::default());
    }

    #[test]
    fn each_bound_is_checked_and_named() {
        type Spoil = fn(&mut OciSection);
        let cases: [(Spoil, &str); 4] = [
            (|s| s.timeout_ms = 99, "timeout_ms must be between 100"),
            (|s| s.max_plugin_mib = 0, "max_plugin_mib must be between 1"),
            (
                |s| s.max_signatures = 1025,
                "max_signatures must be between 1",
            ),
            (
                |s| s.insecure_registries = vec!["bad host".into()],
                "insecure_registries: \"bad host\" is not HOST or HOST:PORT",
            ),
        ];
        for (spoil, message) in cases {
            let mut section = OciSection::default();
            spoil(&mut section);
            let error = section.validate().unwrap_err();
            assert!(error.starts_with(message), "{error}");
        }
    }
}
