//! The `iicp:plugin/config` import: a plugin reads the values and secrets
//! its operator configured for it, and nothing else. Read-only, per plugin.

use std::collections::BTreeMap;

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
