//! What the operator configures about the front door: task authentication
//! (`[auth]`, `--task-auth`) and the admin listener (`[admin]`,
//! `--admin-listen`). Plain data with defaults, deserialized from the
//! configuration file and checked once by `validate`; every bound here is
//! documented in `iicp-host.example.toml`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::directory::directory_key::KeyRefresh;
use crate::server::task_auth::AuthMode;
use crate::settings::{Section, check_range};

/// Connections a listener may hold open at once (`node.max_connections`,
/// `admin.max_connections`).
pub const MAX_CONNECTIONS_RANGE: std::ops::RangeInclusive<usize> = 1..=1_000_000;

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

/// The `[admin]` table: the admin API's listener and the environment
/// variable holding its bearer token (required).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    /// Where it listens: loopback by default.
    #[serde(default = "default_admin_listen")]
    pub listen: String,
    /// The environment variable holding the bearer token.
    pub token_env: String,
    /// Most connections open at once (an operator's tools, not the public).
    #[serde(default = "default_admin_max_connections")]
    pub max_connections: usize,
}

fn default_admin_listen() -> String {
    "127.0.0.1:9090".to_string()
}

/// Default connection cap of the admin listener.
pub fn default_admin_max_connections() -> usize {
    64
}

impl Section for AdminSection {
    const NAME: &'static str = "admin";

    fn validate(&self) -> Result<(), String> {
        self.listen_addr()?;
        check_range(
            "max_connections",
            self.max_connections,
            &MAX_CONNECTIONS_RANGE,
        )?;
        Ok(())
    }
}

impl AdminSection {
    /// The listen address, parsed.
    pub fn listen_addr(&self) -> Result<SocketAddr, String> {
        self.listen.parse().map_err(|e| format!("listen: {e}"))
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

    #[test]
    fn the_admin_table_checks_its_address_and_cap() {
        let admin: AdminSection = toml::from_str("token_env = \"T\"").unwrap();
        assert_eq!(admin.listen_addr(), Ok("127.0.0.1:9090".parse().unwrap()));
        assert_eq!(admin.max_connections, 64);
        let bad = AdminSection {
            listen: "nowhere".into(),
            ..admin.clone()
        };
        assert!(
            check_section(&bad)
                .unwrap_err()
                .starts_with("admin.listen: ")
        );
        let closed = AdminSection {
            max_connections: 0,
            ..admin
        };
        assert!(
            check_section(&closed)
                .unwrap_err()
                .starts_with("admin.max_connections must be between 1 and 1000000")
        );
    }
}
