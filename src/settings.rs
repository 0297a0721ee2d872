//! What every capability's settings share: the range check each folder's
//! `validate()` uses, and the checks of values several folders take.
//! The capability folders own their settings (e.g. `relay::settings`,
//! `peers::settings`); `config` only stacks the layers that fill them.

use std::ops::RangeInclusive;

/// Checks `value` against `range`, naming `field` in the error.
pub fn check_range<T: PartialOrd + std::fmt::Display>(
    field: &str,
    value: T,
    range: &RangeInclusive<T>,
) -> Result<T, String> {
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(format!(
            "{field} must be between {} and {}, got {value}",
            range.start(),
            range.end()
        ))
    }
}

/// Whether `key` is an Ed25519 public key in hex (64 hex characters).
pub fn is_ed25519_hex(key: &str) -> bool {
    key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit())
}
