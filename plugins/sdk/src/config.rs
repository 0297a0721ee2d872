//! The plugin's configuration (`[plugin.config]`) and secrets
//! (`[plugin.secrets]`), read-only.

use crate::Error;
use crate::bindings::iicp::plugin::config as wit;

/// The value of `key`, if configured.
pub fn get(key: &str) -> Option<String> {
    wit::get(key)
}

/// The value of `key`, or an unavailable error naming it.
pub fn require(key: &str) -> Result<String, Error> {
    get(key).ok_or_else(|| missing(key))
}

fn missing(key: &str) -> Error {
    Error::unavailable(format!(
        "the plugin is not configured: config key {key} is missing"
    ))
}

/// Every configured key and value, read with one call into the host: for
/// a handler that needs several keys per task (one [`get`] each costs a
/// call apiece).
pub struct Values(Vec<(String, String)>);

impl Values {
    /// Reads the whole configuration.
    pub fn read() -> Self {
        Values(all())
    }

    /// The value of `key`, if configured.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(name, _)| name == key)
            .map(|(_, value)| value.as_str())
    }

    /// The value of `key`, or the same unavailable error as [`require`].
    pub fn require(&self, key: &str) -> Result<&str, Error> {
        self.get(key).ok_or_else(|| missing(key))
    }
}

/// Every configured key and value, sorted by key.
pub fn all() -> Vec<(String, String)> {
    wit::get_all()
}

/// The secret `key`, if configured. Never log it or put it in a result.
pub fn secret(key: &str) -> Option<String> {
    wit::get_secret(key)
}
