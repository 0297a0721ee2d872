//! New relay binds per source per minute (`protocol.md` §7.3): a fixed
//! window per source, in a table bounded in entries.
//!
//! The source is the peer address as the socket saw it — an IPv4 address,
//! or the /64 an IPv6 address belongs to, since one host commonly holds a
//! whole /64 and could otherwise mint a new source per bind. Addresses are
//! never logged. When the table is full of live windows a bind from a new
//! source is refused: forgetting a window would let a flood reset its own
//! count. Rebinds of a worker the relay already knows never reach here.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The window length.
pub const WINDOW: Duration = Duration::from_secs(60);

/// Per-source bind windows.
pub struct BindLimiter {
    limit: u32,
    max_sources: usize,
    windows: Mutex<HashMap<Source, (Instant, u32)>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Source {
    V4(u32),
    V6Prefix(u64),
}

impl Source {
    fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Source::V4(v4.into()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source::V4(v4.into()),
                None => Source::V6Prefix((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

impl BindLimiter {
    /// `limit` binds per source per window (0: unlimited), remembering at
    /// most `max_sources` sources.
    pub fn new(limit: u32, max_sources: usize) -> Self {
        Self {
            limit,
            max_sources,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// Counts a bind from `ip` at `now`; false when it is over the limit.
    pub fn allow(&self, ip: IpAddr, now: Instant) -> bool {
        if self.limit == 0 {
            return true;
        }
        let source = Source::of(ip);
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        if !windows.contains_key(&source) && windows.len() >= self.max_sources {
            windows.retain(|_, (start, _)| now.duration_since(*start) < WINDOW);
            if windows.len() >= self.max_sources {
                return false;
            }
        }
        let window = windows.entry(source).or_insert((now, 0));
        if now.duration_since(window.0) >= WINDOW {
            *window = (now, 0);
        }
        window.1 = window.1.saturating_add(1);
        window.1 <= self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_source_and_v6_prefix_and_stays_bounded() {
        let limiter = BindLimiter::new(2, 2);
        let now = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(limiter.allow(a, now));
        assert!(limiter.allow(a, now));
        assert!(!limiter.allow(a, now));
        assert!(limiter.allow(a, now + WINDOW), "a new window");
        let v6a: IpAddr = "2001:db8::1".parse().unwrap();
        let v6b: IpAddr = "2001:db8::2:3".parse().unwrap();
        assert!(limiter.allow(v6a, now));
        assert!(limiter.allow(v6b, now));
        assert!(!limiter.allow(v6a, now), "one /64, one count");
        let c: IpAddr = "192.0.2.3".parse().unwrap();
        assert!(!limiter.allow(c, now), "table full of live windows");
        assert!(
            limiter.allow(c, now + WINDOW * 2),
            "expired windows make room"
        );
        assert!(BindLimiter::new(0, 1).allow(c, now));
    }
}
