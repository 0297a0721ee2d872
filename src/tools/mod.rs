//! Commands for plugin authors: `check`, `call`, `compile`, `new` and `push`. They
//! use the same runtime as `run`, so what passes here serves there.

pub mod call;
pub mod check;
pub mod cli;
pub mod compile;
pub mod new;
pub mod push;

use std::sync::Arc;

use crate::config::default_cache_dir;
use crate::fetch::PluginFetcher;
use crate::metrics::Metrics;
use crate::oci::OciSettings;
use crate::runtime::engine::{AllocatorChoice, EngineSettings};
use crate::runtime::{Runtime, RuntimeSettings};

/// A runtime like `run`'s, sized for one task at a time.
pub fn runtime() -> Result<Runtime, String> {
    let settings = RuntimeSettings {
        engine: EngineSettings {
            max_instances: 4,
            keep_resident_bytes: None,
            allocator: AllocatorChoice::Auto,
        },
        cache_dir: default_cache_dir(),
        max_dns_lookups: crate::runtime::host::dns::DEFAULT_MAX_DNS_LOOKUPS,
    };
    Runtime::new(&settings, Arc::new(Metrics::new()))
        .map_err(|e| format!("cannot start the WebAssembly runtime: {e:#}"))
}

/// A fetcher like `run`'s, pulling `oci://` plugins into the default store.
pub fn fetcher() -> PluginFetcher {
    let oci = OciSettings {
        store_dir: default_cache_dir().map(|dir| dir.join("oci")),
        ..OciSettings::default()
    };
    PluginFetcher::new(&oci, &Metrics::new())
}

/// Parses `key=value` pairs given on the command line.
pub fn key_values(
    pairs: &[String],
    flag: &str,
) -> Result<std::collections::BTreeMap<String, String>, String> {
    pairs
        .iter()
        .map(|pair| match pair.split_once('=') {
            Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
            _ => Err(format!("{flag} {pair:?}: expected key=value")),
        })
        .collect()
}
