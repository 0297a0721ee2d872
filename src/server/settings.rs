//! What the operator configures about the front door's task authentication
//! (`[auth]`, `--task-auth`): plain data with defaults, deserialized from the
//! configuration file and checked once by `validate`; every bound here is
//! documented in `iicp-host.example.toml`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::directory::directory_key::KeyRefresh;
use crate::server::task_auth::AuthMode;
use crate::settings::{Section, check_range};

/// Seconds a directory-key refresh setting may take.
const KEY_REFRESH_S_RANGE: std::ops::RangeInclusive<u64> = 1..=86_400;

/// The `[auth]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSection {
    /// open, node-token or consumer-token.
    pub mode: AuthMode,
    /// Operator-granted task tokens: name → the environment variable
    /// holding the token (the token itself is never in the file).
    pub tokens: BTreeMap<String, String>,
    /// node-token: also accept the node's current directory-issued token.
    pub accept_directory_token: bool,
    /// consumer-token: fetch the directory's key this often, in seconds.
    pub directory_key_refresh_s: u64,
    /// ... and never more often than this, whatever asks, in seconds.
    pub directory_key_min_interval_s: u64,
}

impl Default for AuthSection {
    fn default() -> Self {
        Self {
            mode: AuthMode::Open,
            tokens: BTreeMap::new(),
            accept_directory_token: true,
            directory_key_refresh_s: 3600,
            directory_key_min_interval_s: 30,
        }
    }
}

impl Section for AuthSection {
    const NAME: &'static str = "auth";

    fn validate(&self) -> Result<(), String> {
        check_range(
            "directory_key_refresh_s",
            self.directory_key_refresh_s,
            &KEY_REFRESH_S_RANGE,
        )?;
        check_range(
            "directory_key_min_interval_s",
            self.directory_key_min_interval_s,
            &KEY_REFRESH_S_RANGE,
        )?;
        if self.directory_key_min_interval_s > self.directory_key_refresh_s {
            return Err(
                "directory_key_min_interval_s must not exceed auth.directory_key_refresh_s"
                    .to_string(),
            );
        }
        Ok(())
    }
}

impl AuthSection {
    /// When the directory's key is fetched again.
    pub fn key_refresh(&self) -> KeyRefresh {
        KeyRefresh {
            refresh: Duration::from_secs(self.directory_key_refresh_s),
            min_interval: Duration::from_secs(self.directory_key_min_interval_s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::check_section;

    #[test]
    fn the_defaults_are_valid_and_each_rule_is_named() {
        assert_eq!(AuthSection::default().validate(), Ok(()));
        let refresh_zero = AuthSection {
            directory_key_refresh_s: 0,
            ..AuthSection::default()
        };
        assert!(
            check_section(&refresh_zero)
                .unwrap_err()
                .starts_with("auth.directory_key_refresh_s must be between 1 and 86400")
        );
        let min_above_refresh = AuthSection {
            directory_key_refresh_s: 10,
            directory_key_min_interval_s: 11,
            ..AuthSection::default()
        };
        assert_eq!(
            check_section(&min_above_refresh).unwrap_err(),
            "auth.directory_key_min_interval_s must not exceed auth.directory_key_refresh_s"
        );
    }
}
