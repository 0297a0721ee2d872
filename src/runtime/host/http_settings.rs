//! The `[plugin.http]` table: what one plugin may fetch, and how much. Its
//! keys, their defaults and ranges live here, next to the outbound-HTTP
//! capability that enforces them (`super::http`).

use std::ops::RangeInclusive;

use serde::{Deserialize, Serialize};

use super::http::{
    DEFAULT_MAX_IN_FLIGHT, DEFAULT_MAX_RESPONSE_BYTES, HttpSettings, IDLE_CONNECTIONS_RANGE,
    check_patterns,
};
use crate::settings::check_range;

/// Largest response body, in KiB (1 KiB .. 1 GiB).
pub const MAX_RESPONSE_KIB_RANGE: RangeInclusive<u32> = 1..=1_048_576;
/// Requests of one task on the wire at once.
pub const MAX_IN_FLIGHT_RANGE: RangeInclusive<u32> = 1..=1024;

/// A plugin's `[plugin.http]` table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpKeys {
    /// `scheme://host[:port]` patterns the plugin may fetch.
    pub allow: Vec<String>,
    /// Let names resolve to non-public addresses.
    pub allow_private: bool,
    /// Largest response body accepted, in KiB.
    pub max_response_kib: Option<u32>,
    /// Requests of one task on the wire at once.
    pub max_in_flight: Option<u32>,
    /// Idle keep-alive connections kept per destination.
    pub max_idle_connections: Option<u32>,
}

impl HttpKeys {
    /// Checks the patterns and every range; the error starts with the key.
    pub fn validate(&self) -> Result<(), String> {
        check_patterns(&self.allow).map_err(|e| format!("allow: {e}"))?;
        check_range(
            "max_response_kib",
            self.response_kib(),
            &MAX_RESPONSE_KIB_RANGE,
        )?;
        check_range("max_in_flight", self.in_flight(), &MAX_IN_FLIGHT_RANGE)?;
        if let Some(idle) = self.max_idle_connections {
            check_range("max_idle_connections", idle, &IDLE_CONNECTIONS_RANGE)?;
        }
        Ok(())
    }

    /// The settings the capability enforces (checked by [`Self::validate`]).
    pub fn settings(self) -> HttpSettings {
        HttpSettings {
            max_response_bytes: (self.response_kib() as usize) << 10,
            max_in_flight: self.in_flight(),
            allow: self.allow,
            allow_private: self.allow_private,
            max_idle_connections: self.max_idle_connections,
        }
    }

    fn response_kib(&self) -> u32 {
        self.max_response_kib
            .unwrap_or((DEFAULT_MAX_RESPONSE_BYTES >> 10) as u32)
    }

    fn in_flight(&self) -> u32 {
        self.max_in_flight.unwrap_or(DEFAULT_MAX_IN_FLIGHT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_left_out_take_the_defaults_and_a_bad_key_is_named() {
        let settings = HttpKeys::default().settings();
        assert_eq!(settings.max_response_bytes, DEFAULT_MAX_RESPONSE_BYTES);
        assert_eq!(settings.max_in_flight, DEFAULT_MAX_IN_FLIGHT);
        let many = HttpKeys {
            max_in_flight: Some(0),
            ..HttpKeys::default()
        };
        assert_eq!(
            many.validate().unwrap_err(),
            "max_in_flight must be between 1 and 1024, got 0"
        );
        let path = HttpKeys {
            allow: vec!["https://api.example.com/v1".into()],
            ..HttpKeys::default()
        };
        assert!(path.validate().unwrap_err().starts_with("allow: "));
    }
}
