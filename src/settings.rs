//! What every capability's settings share: the [`Section`] shape each
//! folder's settings take, the range check its `validate()` uses, checks of
//! values several folders take, and the [`Overrides`] that stack the
//! environment and `--set` over the file. The capability folders own their
//! settings (e.g. `relay::settings`, `peers::settings`); `config` only
//! stacks the layers that fill them.

use std::ops::RangeInclusive;

use serde::Serialize;
use serde::de::DeserializeOwned;

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

/// Serde for a [`std::time::Duration`] written as whole milliseconds (the
/// files' `*_ms` keys).
pub mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes whole milliseconds.
    pub fn serialize<S: Serializer>(duration: &Duration, out: S) -> Result<S::Ok, S::Error> {
        out.serialize_u64(super::as_millis(*duration))
    }

    /// Reads whole milliseconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(input: D) -> Result<Duration, D::Error> {
        u64::deserialize(input).map(Duration::from_millis)
    }
}

/// `duration` in whole milliseconds, for range checks of `*_ms` keys.
pub fn as_millis(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Whether `key` is an Ed25519 public key in hex (64 hex characters).
pub fn is_ed25519_hex(key: &str) -> bool {
    key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A capability's settings: one table of the configuration file, a default
/// for every key it may leave out, `deny_unknown_fields`, and one
/// [`Section::validate`] holding its ranges. The folder that uses the
/// settings defines them; [`Overrides`] lets the environment and `--set`
/// change any key of them without another line anywhere.
pub trait Section: Serialize + DeserializeOwned {
    /// Its table in the file (`[relay_capable]`), and the first part of its
    /// keys in the environment (`IICP_HOST_RELAY_CAPABLE__MAX_SESSIONS`) and
    /// in `--set` (`--set relay_capable.max_sessions=512`).
    const NAME: &'static str;

    /// The keys a hot reload puts in force; a change to any other key is
    /// reported as needing a restart ([`keys_needing_restart`]), so a new
    /// key is until it is listed here.
    const APPLIED_LIVE: &'static [&'static str] = &[];

    /// Checks every range and rule; the error starts with the field's name.
    fn validate(&self) -> Result<(), String>;
}

/// The keys whose values differ between `running` and `next`, as
/// `section.key`, leaving out the section's [`Section::APPLIED_LIVE`]
/// ones: what a reload that read `next` leaves to a restart. Compared as
/// the file writes them, so every key counts without a list of them. A
/// section TOML cannot write (none does) is named whole.
pub fn keys_needing_restart<S: Section>(running: &S, next: &S) -> Vec<String> {
    let (Ok(running), Ok(next)) = (toml::Table::try_from(running), toml::Table::try_from(next))
    else {
        return vec![S::NAME.to_string()];
    };
    let keys: std::collections::BTreeSet<&String> = running.keys().chain(next.keys()).collect();
    keys.into_iter()
        .filter(|key| !S::APPLIED_LIVE.contains(&key.as_str()))
        .filter(|key| running.get(*key) != next.get(*key))
        .map(|key| format!("{}.{key}", S::NAME))
        .collect()
}

/// Checks `settings`, naming the key as the file spells it
/// (`relay_capable.liveness_ms must be …`).
pub fn check_section<S: Section>(settings: &S) -> Result<(), String> {
    settings
        .validate()
        .map_err(|error| format!("{}.{error}", S::NAME))
}

/// The prefix of the environment variables [`Overrides::from_env`] reads;
/// `__` separates the section from the key (both keep their own `_`).
pub const ENV_PREFIX: &str = "IICP_HOST_";

/// One key set above the file: by an environment variable or by `--set`.
#[derive(Debug, Clone, PartialEq)]
struct Override {
    section: String,
    /// The key inside the section; dots reach into nested tables.
    key: Vec<String>,
    value: toml::Value,
    /// What the operator wrote, for errors: the variable or the flag.
    source: String,
    /// Set by a dedicated flag (`--max-concurrent`): errors name the flag
    /// in place of the key, as the operator typed it.
    dedicated: bool,
}

/// A dedicated flag's value for one key of a section: `--max-concurrent 8`
/// is `node.max_concurrent = 8`, so the flag gets the key's range and
/// rules from the section's one definition.
#[derive(Debug, Clone, PartialEq)]
pub struct FlagValue {
    /// The section (`node`).
    pub section: &'static str,
    /// The key (`max_concurrent`).
    pub key: &'static str,
    /// The value, as the file would hold it.
    pub value: toml::Value,
    /// The flag as typed (`--max-concurrent`).
    pub flag: String,
}

/// `error` (which starts with `key`, as every `validate()` error does)
/// naming `flag` instead: `--memory-mb must be between …`.
pub fn naming_flag(error: &str, key: &str, flag: &str) -> String {
    match error.strip_prefix(key) {
        Some(rest) => format!("{flag}{rest}"),
        None => format!("{flag}: {error}"),
    }
}

/// The keys the environment and the command line set, in the order they
/// stack: every environment variable first, then every `--set`, a later
/// one winning over an earlier one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    entries: Vec<Override>,
}

impl Overrides {
    /// The `IICP_HOST_<SECTION>__<KEY>` variables among `vars` (the
    /// variables without `__` are the flags' own, read by the CLI).
    pub fn from_env(vars: impl IntoIterator<Item = (String, String)>) -> Self {
        let mut entries: Vec<Override> = vars
            .into_iter()
            .filter_map(|(name, value)| {
                let rest = name.strip_prefix(ENV_PREFIX)?;
                let (section, key) = rest.split_once("__")?;
                Some(Override {
                    section: section.to_ascii_lowercase(),
                    key: key.split("__").map(str::to_ascii_lowercase).collect(),
                    value: parse_value(&value),
                    source: name.clone(),
                    dedicated: false,
                })
            })
            .collect();
        // The environment has no order of its own: sorted, a run repeats.
        entries.sort_by(|a, b| a.source.cmp(&b.source));
        Self { entries }
    }

    /// Adds the `--set SECTION.KEY=VALUE` flags, over what is there.
    pub fn with_flags(mut self, flags: &[String]) -> Result<Self, String> {
        for flag in flags {
            let source = format!("--set {flag}");
            let (path, value) = flag
                .split_once('=')
                .ok_or_else(|| format!("{source}: expected SECTION.KEY=VALUE"))?;
            let mut parts = path.trim().split('.').map(str::to_string);
            let section = parts.next().unwrap_or_default();
            let key: Vec<String> = parts.collect();
            if section.is_empty() || key.is_empty() || key.iter().any(String::is_empty) {
                return Err(format!("{source}: expected SECTION.KEY=VALUE"));
            }
            self.entries.push(Override {
                section,
                key,
                value: parse_value(value.trim()),
                source,
                dedicated: false,
            });
        }
        Ok(self)
    }

    /// Adds the dedicated flags' values, over every `--set`.
    pub fn with_dedicated(mut self, values: impl IntoIterator<Item = FlagValue>) -> Self {
        self.entries.extend(values.into_iter().map(|v| Override {
            section: v.section.to_string(),
            key: vec![v.key.to_string()],
            value: v.value,
            source: v.flag,
            dedicated: true,
        }));
        self
    }

    /// Whether the environment or `--set` (not a dedicated flag) sets a
    /// key of `section`.
    pub fn sets(&self, section: &str) -> bool {
        self.entries
            .iter()
            .any(|o| !o.dedicated && o.section == section)
    }

    /// Refuses a key for a section no capability owns, naming its source.
    pub fn check_sections(&self, known: &[&str]) -> Result<(), String> {
        match self
            .entries
            .iter()
            .find(|o| !known.contains(&o.section.as_str()))
        {
            Some(unknown) => Err(format!(
                "{}: no settings section `{}` (known: {})",
                unknown.source,
                unknown.section,
                known.join(", ")
            )),
            None => Ok(()),
        }
    }

    /// `current` (from the file, or `None` when the file has no such
    /// table) with every override of `S`'s keys applied and checked once.
    /// A key set in the environment or by `--set` brings the table in, as
    /// writing it in the file would. An error names the variable or flag
    /// that set the offending key (`IICP_HOST_PEERS__MAX_PEERS: max_peers
    /// must be …`).
    pub fn layer<S: Section>(&self, current: Option<S>) -> Result<Option<S>, String> {
        let mine: Vec<&Override> = self
            .entries
            .iter()
            .filter(|o| o.section == S::NAME)
            .collect();
        if mine.is_empty() {
            return Ok(current);
        }
        let mut table = match &current {
            Some(settings) => {
                toml::Table::try_from(settings).map_err(|e| format!("[{}]: {e}", S::NAME))?
            }
            None => toml::Table::new(),
        };
        for entry in &mine {
            set_key(&mut table, &entry.key, entry.value.clone());
        }
        let sources = || {
            mine.iter()
                .map(|o| o.source.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let layered: S = toml::Value::Table(table)
            .try_into()
            .map_err(|e| format!("{}: {}", sources(), e.to_string().trim()))?;
        layered.validate().map_err(|error| {
            let field = error.split([' ', ':', '.']).next().unwrap_or_default();
            match mine.iter().rev().find(|o| o.key[0] == field) {
                Some(setter) if setter.dedicated => naming_flag(&error, field, &setter.source),
                Some(setter) => format!("{}: {error}", setter.source),
                None => format!("{}.{error} (with {})", S::NAME, sources()),
            }
        })?;
        Ok(Some(layered))
    }
}

/// A value as TOML reads it (`512`, `true`, `["a", "b"]`, `"text"`), or
/// else the text itself (`http://relay:8080`).
fn parse_value(text: &str) -> toml::Value {
    format!("v = {text}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut table| table.remove("v"))
        .unwrap_or_else(|| toml::Value::String(text.to_string()))
}

fn set_key(table: &mut toml::Table, key: &[String], value: toml::Value) {
    let (last, parents) = key
        .split_last()
        .unwrap_or_else(|| unreachable!("keys have a part"));
    let mut table = table;
    for part in parents {
        let entry = table
            .entry(part.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        table = entry
            .as_table_mut()
            .unwrap_or_else(|| unreachable!("made a table"));
    }
    table.insert(last.clone(), value);
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Pool {
        size: u32,
        name: String,
    }

    impl Default for Pool {
        fn default() -> Self {
            Self {
                size: 4,
                name: "main".into(),
            }
        }
    }

    impl Section for Pool {
        const NAME: &'static str = "pool_settings";
        const APPLIED_LIVE: &'static [&'static str] = &["size"];
        fn validate(&self) -> Result<(), String> {
            check_range("size", self.size, &(1..=64)).map(drop)
        }
    }

    fn env(pairs: &[(&str, &str)]) -> Overrides {
        Overrides::from_env(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn the_environment_then_set_stack_over_the_file_and_the_last_wins() {
        let from_file = Pool {
            size: 8,
            name: "file".into(),
        };
        let overrides = env(&[
            ("IICP_HOST_POOL_SETTINGS__SIZE", "16"),
            ("IICP_HOST_POOL_SETTINGS__NAME", "from env"),
            ("IICP_HOST_MAX_CONCURRENT", "3"),
            ("OTHER__SIZE", "1"),
        ])
        .with_flags(&["pool_settings.size=32".into()])
        .unwrap();
        let layered = overrides.layer(Some(from_file)).unwrap().unwrap();
        assert_eq!(
            layered,
            Pool {
                size: 32,
                name: "from env".into()
            }
        );
        // A key set above the file brings the table in, defaults filling the rest.
        assert_eq!(
            env(&[("IICP_HOST_POOL_SETTINGS__SIZE", "2")])
                .layer::<Pool>(None)
                .unwrap(),
            Some(Pool {
                size: 2,
                ..Pool::default()
            })
        );
        // Nothing set: the file's value (or its absence) stays.
        assert_eq!(Overrides::default().layer::<Pool>(None).unwrap(), None);
    }

    #[test]
    fn every_error_names_the_variable_or_flag_that_caused_it() {
        let range = env(&[("IICP_HOST_POOL_SETTINGS__SIZE", "0")]).layer::<Pool>(None);
        assert_eq!(
            range.unwrap_err(),
            "IICP_HOST_POOL_SETTINGS__SIZE: size must be between 1 and 64, got 0"
        );
        let flag = Overrides::default()
            .with_flags(&["pool_settings.size=99".into()])
            .unwrap()
            .layer::<Pool>(None)
            .unwrap_err();
        assert!(
            flag.starts_with("--set pool_settings.size=99: size must be"),
            "{flag}"
        );
        let typo = env(&[("IICP_HOST_POOL_SETTINGS__SIZ", "3")]).layer::<Pool>(None);
        let typo = typo.unwrap_err();
        assert!(
            typo.starts_with("IICP_HOST_POOL_SETTINGS__SIZ: ") && typo.contains("siz"),
            "{typo}"
        );
        let wrong_type = env(&[("IICP_HOST_POOL_SETTINGS__SIZE", "many")]).layer::<Pool>(None);
        assert!(
            wrong_type
                .unwrap_err()
                .starts_with("IICP_HOST_POOL_SETTINGS__SIZE: ")
        );
        let unknown = env(&[("IICP_HOST_POLE__SIZE", "3")]).check_sections(&[Pool::NAME]);
        assert_eq!(
            unknown.unwrap_err(),
            "IICP_HOST_POLE__SIZE: no settings section `pole` (known: pool_settings)"
        );
        for bad in ["pool_settings.size", "size=3", "pool_settings.=3"] {
            let error = Overrides::default().with_flags(&[bad.into()]).unwrap_err();
            assert_eq!(error, format!("--set {bad}: expected SECTION.KEY=VALUE"));
        }
    }

    #[test]
    fn every_changed_key_but_the_live_ones_needs_a_restart() {
        let running = Pool::default();
        assert!(keys_needing_restart(&running, &Pool::default()).is_empty());
        let next = Pool {
            size: 9,
            name: "other".into(),
        };
        assert_eq!(
            keys_needing_restart(&running, &next),
            ["pool_settings.name"]
        );
    }

    #[test]
    fn values_read_as_toml_or_else_as_text() {
        assert_eq!(parse_value("512"), toml::Value::Integer(512));
        assert_eq!(parse_value("true"), toml::Value::Boolean(true));
        assert_eq!(
            parse_value("[\"a\", \"b\"]"),
            toml::Value::Array(vec!["a".into(), "b".into()])
        );
        assert_eq!(parse_value("http://relay:8080"), "http://relay:8080".into());
        assert_eq!(parse_value("\"quoted\""), "quoted".into());
    }
}
