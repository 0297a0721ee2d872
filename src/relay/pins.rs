//! Worker identity pins: which rebind key each worker id first bound
//! with, kept across relay restarts, so that after a restart only the
//! worker itself can bind under its id (issue 19).
//!
//! Sessions live in memory; before pins, a restarted relay knew no worker
//! and the first party to bind under a worker's id received its consumers'
//! tasks and forwarded credentials. Now a bind that presents a rebind key
//! on an unpinned id pins the id to the key's SHA-256 (trust on first
//! use); later binds under that id must present the same key, or a valid
//! directory-signed bind ticket (§7.4), which re-pins the id to the key it
//! carries — a worker that lost its state directory recovers through its
//! directory. The relay keeps only digests, compares them in constant time
//! and never logs keys.
//!
//! Decisions the protocol leaves open, written here:
//! * A bind without a key and without a ticket on an unpinned id is
//!   accepted (the reference's HTTP long-poll workers bind with `{worker_id,
//!   intent, models}` only) and pins nothing: that id stays takeable by the
//!   first binder while its session is dead. Operators who serve only
//!   keyed or ticketed workers set `refuse_keyless_binds`.
//! * A keyless worker whose id someone else pinned first cannot bind here
//!   again without a ticket: first use decides.
//! * The table holds at most `max_pinned_workers` pins. When it is full a
//!   keyed bind of a new id is refused (503 `IICP-E039`) rather than
//!   evicting a pin: eviction would let a flood of binds unpin a victim
//!   and take its id. Pins not bound for `pin_expiry_days` expire, so
//!   abandoned ids free their room.
//! * The pins file (`relay_worker_pins.json` in the state directory, mode
//!   0600, written whole through a rename) is read at start; a file that
//!   is too large or damaged stops the start rather than being dropped,
//!   since dropping it would reopen the takeover. Without a state
//!   directory pins live in memory only.
//! * A pin's time is refreshed at most once a day, at a bind or (checked
//!   hourly) while its worker stays bound with the pinned key, so a worker
//!   bound for longer than the expiry keeps its pin; the file is rewritten
//!   when a pin is made or changed, and rarely otherwise.
//!
//! Metrics: `iicp_relay_pinned_workers` (gauge); refusals in
//! `iicp_relay_refusals_total{reason="pin_mismatch"|"pins_full"|"key_required"}`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::directory::identity::valid_node_id;
use crate::private_files;

/// The pins file's name in the relay's state directory.
pub const PINS_FILE: &str = "relay_worker_pins.json";
/// Most bytes one pin takes in the file (a 36-byte id, 64 hex digits, a
/// time, JSON punctuation), counted generously: a file larger than
/// `max_pins ×` this is refused unread.
pub const PIN_FILE_BYTES: usize = 192;
/// How often a pin's bind time is refreshed at most.
const REFRESH_S: i64 = 86_400;

/// What a bind proves about the id it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinCheck {
    /// Nobody pinned this id.
    Unpinned,
    /// The presented key is the pinned one.
    Proven,
    /// The id is pinned and the bind presented another key or none.
    Mismatch,
}

/// Why a pin could not be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PinsFull;

#[derive(Debug, Clone, Copy)]
struct Pin {
    key_digest: [u8; 32],
    bound_s: i64,
}

#[derive(Serialize, Deserialize)]
struct PinsFile {
    v: u8,
    pins: Vec<StoredPin>,
}

#[derive(Serialize, Deserialize)]
struct StoredPin {
    worker_id: String,
    key_sha256: String,
    bound_s: i64,
}

/// The relay's pins, bounded in count, with the file they persist in.
pub struct Pins {
    max: usize,
    expiry_s: i64,
    file: Option<PathBuf>,
    table: Mutex<HashMap<String, Pin>>,
    /// Serializes file writes, so the last write holds the latest table.
    writing: Mutex<()>,
    gauge: prometheus::IntGauge,
}

impl Pins {
    /// At most `max` pins, each expiring `expiry_s` after its last bind,
    /// loaded from `file` (when given and present) at `now_s`.
    pub fn load(
        max: usize,
        expiry_s: i64,
        file: Option<PathBuf>,
        now_s: i64,
        gauge: prometheus::IntGauge,
    ) -> Result<Self, String> {
        let mut table = HashMap::new();
        if let Some(path) = &file {
            let stored = read_bounded(path, max.saturating_mul(PIN_FILE_BYTES) + 64)?;
            for pin in stored {
                let digest: Option<[u8; 32]> = hex::decode(&pin.key_sha256)
                    .ok()
                    .and_then(|b| b.try_into().ok());
                let (Some(key_digest), true) = (digest, valid_node_id(&pin.worker_id)) else {
                    return Err(format!("{} holds a damaged pin", path.display()));
                };
                if pin.bound_s + expiry_s > now_s {
                    table.insert(
                        pin.worker_id,
                        Pin {
                            key_digest,
                            bound_s: pin.bound_s,
                        },
                    );
                }
            }
            if table.len() > max {
                // The operator lowered the bound: keep the most recent.
                let mut by_age: Vec<(String, Pin)> = table.drain().collect();
                by_age.sort_by_key(|(_, pin)| std::cmp::Reverse(pin.bound_s));
                by_age.truncate(max);
                table = by_age.into_iter().collect();
            }
        }
        gauge.set(table.len() as i64);
        Ok(Self {
            max,
            expiry_s,
            file,
            table: Mutex::new(table),
            writing: Mutex::new(()),
            gauge,
        })
    }

    fn table(&self) -> MutexGuard<'_, HashMap<String, Pin>> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What `key_digest` proves about `worker_id` at `now_s`.
    pub fn check(&self, worker_id: &str, key_digest: Option<&[u8; 32]>, now_s: i64) -> PinCheck {
        let table = self.table();
        let Some(pin) = table
            .get(worker_id)
            .filter(|pin| pin.bound_s + self.expiry_s > now_s)
        else {
            return PinCheck::Unpinned;
        };
        match key_digest {
            Some(digest) if bool::from(pin.key_digest.ct_eq(digest)) => PinCheck::Proven,
            _ => PinCheck::Mismatch,
        }
    }

    /// Whether a new pin would fit (expired pins make room).
    pub fn has_room(&self, worker_id: &str, now_s: i64) -> bool {
        let mut table = self.table();
        if table.contains_key(worker_id) || table.len() < self.max {
            return true;
        }
        table.retain(|_, pin| pin.bound_s + self.expiry_s > now_s);
        self.gauge.set(table.len() as i64);
        table.len() < self.max
    }

    /// Pins `worker_id` to `key_digest` (new, changed, or refreshed);
    /// returns whether the file needs writing.
    pub fn pin(&self, worker_id: &str, key_digest: [u8; 32], now_s: i64) -> Result<bool, PinsFull> {
        let mut table = self.table();
        if let Some(pin) = table.get_mut(worker_id) {
            let same = bool::from(pin.key_digest.ct_eq(&key_digest));
            let stale = now_s - pin.bound_s >= REFRESH_S;
            if same && !stale {
                return Ok(false);
            }
            *pin = Pin {
                key_digest,
                bound_s: now_s,
            };
            return Ok(true);
        }
        if table.len() >= self.max {
            return Err(PinsFull);
        }
        table.insert(
            worker_id.to_string(),
            Pin {
                key_digest,
                bound_s: now_s,
            },
        );
        self.gauge.set(table.len() as i64);
        Ok(true)
    }

    /// Refreshes the time of `worker_id`'s pin if `key_digest` is the
    /// pinned key and the time is a day old; returns whether it did.
    pub fn refresh(&self, worker_id: &str, key_digest: &[u8; 32], now_s: i64) -> bool {
        let mut table = self.table();
        match table.get_mut(worker_id) {
            Some(pin)
                if bool::from(pin.key_digest.ct_eq(key_digest))
                    && now_s - pin.bound_s >= REFRESH_S =>
            {
                pin.bound_s = now_s;
                true
            }
            _ => false,
        }
    }

    /// Writes the current table to the pins file (blocking; call it off
    /// the async runtime). A no-op without a file.
    pub fn save(&self) -> std::io::Result<()> {
        let Some(path) = &self.file else {
            return Ok(());
        };
        let _one_writer = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        let stored = PinsFile {
            v: 1,
            pins: self
                .table()
                .iter()
                .map(|(worker_id, pin)| StoredPin {
                    worker_id: worker_id.clone(),
                    key_sha256: hex::encode(pin.key_digest),
                    bound_s: pin.bound_s,
                })
                .collect(),
        };
        let bytes = serde_json::to_vec(&stored).map_err(std::io::Error::other)?;
        private_files::write(path, &[&bytes])
    }
}

/// The pins stored at `path`; none when there is no file.
fn read_bounded(path: &std::path::Path, limit: usize) -> Result<Vec<StoredPin>, String> {
    use std::io::Read;
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(format!("cannot read {}: {error}", path.display())),
    };
    let mut bytes = Vec::new();
    file.take(limit as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.len() > limit {
        return Err(format!(
            "{} is larger than max_pinned_workers allows; raise the bound or remove the file \
             (every worker then pins again at its next bind)",
            path.display()
        ));
    }
    let stored: PinsFile = serde_json::from_slice(&bytes).map_err(|_| {
        format!(
            "{} is not a pins file; restore it or remove it (every worker then pins again at \
             its next bind)",
            path.display()
        )
    })?;
    Ok(stored.pins)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gauge() -> prometheus::IntGauge {
        prometheus::IntGauge::new("pins", "pins").unwrap()
    }

    #[test]
    fn pins_persist_expire_and_stay_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(PINS_FILE);
        let pins = Pins::load(2, 100, Some(path.clone()), 1_000, gauge()).unwrap();
        let (a, b) = ([1; 32], [2; 32]);
        assert_eq!(pins.check("w-1", Some(&a), 1_000), PinCheck::Unpinned);
        assert_eq!(pins.pin("w-1", a, 1_000), Ok(true));
        assert_eq!(pins.pin("w-1", a, 1_001), Ok(false), "nothing to write");
        assert_eq!(pins.check("w-1", Some(&a), 1_001), PinCheck::Proven);
        assert_eq!(pins.check("w-1", Some(&b), 1_001), PinCheck::Mismatch);
        assert_eq!(pins.check("w-1", None, 1_001), PinCheck::Mismatch);
        assert_eq!(pins.pin("w-2", b, 1_050), Ok(true));
        assert!(!pins.has_room("w-3", 1_050));
        assert_eq!(pins.pin("w-3", b, 1_050), Err(PinsFull));
        pins.save().unwrap();

        let again = Pins::load(2, 100, Some(path.clone()), 1_060, gauge()).unwrap();
        assert_eq!(again.check("w-1", Some(&a), 1_060), PinCheck::Proven);
        assert_eq!(again.gauge.get(), 2);
        // w-1 expires at 1_100 and makes room; w-2 is still pinned.
        assert_eq!(again.check("w-1", None, 1_100), PinCheck::Unpinned);
        assert!(again.has_room("w-3", 1_100));
        assert_eq!(again.table().len(), 1);
        assert_eq!(again.check("w-2", Some(&a), 1_100), PinCheck::Mismatch);

        // A bound worker's pin is refreshed (with its own key only).
        let long = Pins::load(2, 2 * REFRESH_S, None, 0, gauge()).unwrap();
        assert_eq!(long.pin("w-1", a, 0), Ok(true));
        assert!(!long.refresh("w-1", &a, REFRESH_S - 1), "not a day old yet");
        assert!(!long.refresh("w-1", &b, REFRESH_S), "another key");
        assert!(long.refresh("w-1", &a, REFRESH_S));
        assert_eq!(long.check("w-1", Some(&a), 2 * REFRESH_S), PinCheck::Proven);

        // A smaller bound refuses the larger file unread; a damaged one too.
        assert!(Pins::load(0, 100, Some(path.clone()), 1_060, gauge()).is_err());
        std::fs::write(
            &path,
            b"{\"v\":1,\"pins\":[{\"worker_id\":\"w 1\",\"key_sha256\":\"00\",\"bound_s\":1}]}",
        )
        .unwrap();
        assert!(Pins::load(2, 100, Some(path), 1_060, gauge()).is_err());
    }
}
