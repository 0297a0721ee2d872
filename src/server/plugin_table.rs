//! Which plugin serves which intent, with each plugin's and each intent's
//! metric children resolved up front.

use std::collections::HashMap;
use std::sync::Arc;

use crate::metrics::{IntentMetrics, Metrics, PluginMetrics};
use crate::runtime::plugin::LoadedPlugin;

/// A plugin as the server serves it.
pub struct PluginEntry {
    /// The loaded plugin.
    pub plugin: Arc<LoadedPlugin>,
    /// Its metrics.
    pub metrics: PluginMetrics,
}

/// Where one intent goes.
#[derive(Clone)]
pub struct Route {
    /// The plugin serving the intent.
    pub entry: Arc<PluginEntry>,
    /// The intent's metrics.
    pub metrics: IntentMetrics,
}

/// The routing table: intent → plugin.
#[derive(Default)]
pub struct PluginTable {
    entries: Vec<Arc<PluginEntry>>,
    routes: HashMap<Box<str>, Route>,
}

impl PluginTable {
    /// Builds the table; two plugins claiming one intent is an error naming both.
    pub fn build(plugins: Vec<LoadedPlugin>, metrics: &Metrics) -> Result<Self, String> {
        let mut table = Self::default();
        for plugin in plugins {
            let plugin = Arc::new(plugin);
            let entry = Arc::new(PluginEntry {
                metrics: metrics.plugin(
                    &plugin.id,
                    &plugin.info.name,
                    &plugin.info.version,
                    &plugin.sha256,
                ),
                plugin: plugin.clone(),
            });
            for capability in &plugin.info.capabilities {
                let intent = capability.intent.as_str();
                if let Some(other) = table.routes.get(intent) {
                    return Err(format!(
                        "plugins {} and {} both serve intent {intent}",
                        other.entry.plugin.id, plugin.id
                    ));
                }
                let route = Route {
                    entry: entry.clone(),
                    metrics: metrics.intent(&plugin.id, intent),
                };
                table.routes.insert(intent.into(), route);
            }
            table.entries.push(entry);
        }
        Ok(table)
    }

    /// The route for `intent`, if any plugin serves it.
    pub fn route(&self, intent: &str) -> Option<&Route> {
        self.routes.get(intent)
    }

    /// Every plugin, in load order.
    pub fn entries(&self) -> &[Arc<PluginEntry>] {
        &self.entries
    }

    /// Every intent served, in plugin and declaration order.
    pub fn intents(&self) -> Vec<&str> {
        self.capabilities().map(|c| c.intent.as_str()).collect()
    }

    /// Every model served, each once, in plugin and declaration order.
    pub fn models(&self) -> Vec<&str> {
        let mut models: Vec<&str> = Vec::new();
        for model in self.capabilities().flat_map(|c| c.models.iter()) {
            if !models.contains(&model.as_str()) {
                models.push(model);
            }
        }
        models
    }

    fn capabilities(&self) -> impl Iterator<Item = &crate::runtime::plugin::CapabilityInfo> {
        self.entries
            .iter()
            .flat_map(|e| e.plugin.info.capabilities.iter())
    }
}
