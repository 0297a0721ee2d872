//! How much one sender may add to the peer table: entries and their bytes
//! per window, per sender, from a table of senders bounded in count.
//!
//! A "sender" is whoever vouches for a list: the node id whose Ed25519
//! signature verified, or — for the HMAC form, whose shared key names no
//! one — the address the list came from (`hmac@IP` for an exchange this
//! node answered, `hmac@HOST` for an answer to its own). An entry's bytes
//! are its id, endpoint and region. Windows are fixed: a sender's count
//! starts at its first entry and resets `window_ms` later; a sender whose
//! window is over is forgotten when room is needed.

use std::collections::HashMap;
use std::sync::Mutex;

/// Bytes one remembered sender costs at most: its key (a node id, or
/// `hmac@` and an address or host name: at most 260 bytes), counters and
/// the map's overhead.
pub const SENDER_BYTES: u64 = 384;

/// The bounds of a [`MergeBudget`].
#[derive(Debug, Clone, Copy)]
pub struct BudgetBounds {
    /// The window, in ms.
    pub window_ms: u64,
    /// Entries one sender may add or refresh per window.
    pub entries: u32,
    /// Their bytes.
    pub bytes: u64,
    /// Senders remembered at most.
    pub senders: usize,
}

/// Why an entry was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spent {
    /// This sender's window is used up.
    Sender,
    /// The table of senders is full of live windows.
    Senders,
}

#[derive(Clone, Copy)]
struct Window {
    started_ms: u64,
    entries: u32,
    bytes: u64,
}

/// Per-sender merge budgets.
pub struct MergeBudget {
    bounds: BudgetBounds,
    senders: Mutex<HashMap<String, Window>>,
}

impl MergeBudget {
    /// A budget with `bounds`.
    pub fn new(bounds: BudgetBounds) -> Self {
        Self {
            bounds,
            senders: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one entry of `bytes` from `sender`'s budget at `now_ms`.
    pub fn take(&self, sender: &str, bytes: u64, now_ms: u64) -> Result<(), Spent> {
        let bounds = self.bounds;
        let over = |w: &Window| now_ms.saturating_sub(w.started_ms) >= bounds.window_ms;
        let mut senders = self.senders.lock().unwrap_or_else(|p| p.into_inner());
        if !senders.contains_key(sender) && senders.len() >= bounds.senders {
            senders.retain(|_, w| !over(w));
            if senders.len() >= bounds.senders {
                return Err(Spent::Senders);
            }
        }
        let window = senders.entry(sender.to_string()).or_insert(Window {
            started_ms: now_ms,
            entries: 0,
            bytes: 0,
        });
        if over(window) {
            *window = Window {
                started_ms: now_ms,
                entries: 0,
                bytes: 0,
            };
        }
        if window.entries >= bounds.entries || window.bytes + bytes > bounds.bytes {
            return Err(Spent::Sender);
        }
        window.entries += 1;
        window.bytes += bytes;
        Ok(())
    }

    /// Senders remembered now.
    pub fn senders(&self) -> usize {
        self.senders.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_bytes_and_senders_are_bounded_per_window() {
        let budget = MergeBudget::new(BudgetBounds {
            window_ms: 1000,
            entries: 2,
            bytes: 100,
            senders: 2,
        });
        assert_eq!(budget.take("a", 10, 0), Ok(()));
        assert_eq!(budget.take("a", 10, 1), Ok(()));
        assert_eq!(budget.take("a", 10, 2), Err(Spent::Sender), "count");
        assert_eq!(budget.take("b", 90, 2), Ok(()));
        assert_eq!(budget.take("b", 11, 3), Err(Spent::Sender), "bytes");
        assert_eq!(budget.take("c", 1, 3), Err(Spent::Senders));
        assert_eq!(budget.take("a", 10, 1000), Ok(()), "a new window");
        assert_eq!(budget.take("c", 1, 1002), Ok(()), "b's window is over");
        assert_eq!(budget.senders(), 2);
    }
}
