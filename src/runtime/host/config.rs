//! The `iicp:plugin/config` import: a plugin reads the values and secrets
//! its operator configured for it, and nothing else. Read-only, per plugin.

use std::collections::BTreeMap;

use crate::runtime::bindings::iicp::plugin::config::Host;
use crate::runtime::store::TaskState;

/// One plugin's configuration and secrets.
#[derive(Default, Clone, PartialEq, Eq)]
pub struct PluginConfig {
    /// `[plugin.config]`.
    pub values: BTreeMap<String, String>,
    /// `[plugin.secrets]`, resolved from the environment.
    pub secrets: BTreeMap<String, String>,
}

impl std::fmt::Debug for PluginConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginConfig")
            .field("values", &self.values)
            .field("secrets", &self.secrets.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Host for TaskState {
    fn get(&mut self, key: String) -> Option<String> {
        self.config().values.get(&key).cloned()
    }

    fn get_all(&mut self) -> Vec<(String, String)> {
        self.config()
            .values
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    fn get_secret(&mut self, key: String) -> Option<String> {
        self.config().secrets.get(&key).cloned()
    }
}
