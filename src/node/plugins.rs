//! Phase 2 of starting a node: the Wasm runtime and every configured
//! plugin, loaded and checked before any port is bound, so a broken plugin
//! refuses the start instead of serving errors.

use std::sync::Arc;

use super::StartError;
use crate::config::NodeConfig;
use crate::fetch::PluginFetcher;
use crate::metrics::Metrics;
use crate::runtime::Runtime;
use crate::runtime::cache::CacheOutcome;
use crate::server::plugin_table::PluginTable;

/// Builds the runtime and the fetcher and loads the plugins into a routing
/// table.
pub async fn load(
    config: &NodeConfig,
    metrics: &Arc<Metrics>,
) -> Result<(Runtime, PluginFetcher, PluginTable), StartError> {
    let runtime = Runtime::new(&config.node.runtime(), metrics.clone())
        .map_err(|e| StartError::Runtime(format!("{e:#}")))?;
    let fetcher = PluginFetcher::new(&config.oci, metrics);
    let mut plugins = Vec::with_capacity(config.plugins.len());
    for spec in &config.plugins {
        match fetcher.load(&runtime, &spec.source).await {
            Ok(plugin) => plugins.push((Arc::new(plugin), spec.clone())),
            Err(error) if config.config_path.is_some() => {
                return Err(StartError::Config(in_config(config, error.to_string())));
            }
            Err(error) => return Err(StartError::Plugin(error)),
        }
    }
    let table = PluginTable::build(plugins, metrics, config.node.max_concurrent())
        .map_err(|e| StartError::Config(in_config(config, e)))?;
    table.publish_info(metrics);
    Ok((runtime, fetcher, table))
}

/// Logs one line per loaded plugin.
pub fn log_loaded(table: &PluginTable) {
    for entry in table.entries() {
        let plugin = &entry.plugin;
        tracing::info!(
            plugin = &*plugin.id,
            version = %plugin.info.version,
            sha256 = %plugin.sha256,
            intents = ?entry.capabilities.iter().map(|c| c.intent.as_str()).collect::<Vec<_>>(),
            cached = matches!(plugin.cache, CacheOutcome::Hit),
            shared = matches!(plugin.cache, CacheOutcome::Shared),
            load_ms = crate::clock::whole_ms(plugin.load_time),
            "plugin loaded"
        );
    }
}

/// Prefixes `message` with the configuration file, when there is one.
fn in_config(config: &NodeConfig, message: String) -> String {
    match &config.config_path {
        Some(path) => format!("{}: {message}", path.display()),
        None => message,
    }
}
