//! Name lookups for plugins' outbound HTTP, bounded node-wide.
//!
//! The system resolver (`getaddrinfo`) blocks, so each lookup holds a
//! thread of tokio's blocking pool until the resolver gives up — with a
//! silent name server, for as long as `resolv.conf`'s timeouts allow, far
//! past the task that asked. Dropping the waiting future (the task's
//! deadline does) cannot stop that thread. So a lookup first takes one of
//! `max_dns_lookups` permits and its thread keeps the permit until
//! `getaddrinfo` returns: however many plugins ask for slow names, at most
//! that many blocking threads are tied up by lookups, and the rest of the
//! pool (file reads, reloads, artifact hashing) keeps working. A lookup
//! that finds every permit taken waits for one; that wait, like the lookup
//! itself, ends with the task's deadline (the request future is dropped).
//!
//! Metrics: `iicp_dns_lookups_in_flight` (threads in `getaddrinfo` now) and
//! `iicp_dns_lookup_waits_total` (lookups that found the cap reached).

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use prometheus::IntGauge;

use crate::runtime::metrics::DnsMetrics;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Lookups in flight at once, node-wide, by default.
pub const DEFAULT_MAX_DNS_LOOKUPS: usize = 32;
/// Stack of one blocking-pool thread (tokio's default), for the memory
/// bound.
pub const LOOKUP_THREAD_BYTES: u64 = 2 << 20;

/// The node's lookup permits, shared by every plugin's resolver.
pub struct DnsLookups {
    permits: Arc<Semaphore>,
    metrics: DnsMetrics,
}

impl DnsLookups {
    /// At most `max` lookups in flight at once (at least one).
    pub fn new(max: usize, metrics: DnsMetrics) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max.max(1))),
            metrics,
        }
    }

    /// The addresses `host` resolves to (port 0).
    pub async fn lookup(&self, host: String) -> io::Result<Vec<SocketAddr>> {
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                self.metrics.waits.inc();
                self.permits
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(io::Error::other)?
            }
        };
        let held = HeldLookup::start(permit, self.metrics.in_flight.clone());
        tokio::task::spawn_blocking(move || {
            let _held = held;
            (host.as_str(), 0).to_socket_addrs().map(Iterator::collect)
        })
        .await
        .map_err(io::Error::other)?
    }
}

/// A permit held by the thread doing the lookup, counted while held.
struct HeldLookup {
    _permit: OwnedSemaphorePermit,
    in_flight: IntGauge,
}

impl HeldLookup {
    fn start(permit: OwnedSemaphorePermit, in_flight: IntGauge) -> Self {
        in_flight.inc();
        Self {
            _permit: permit,
            in_flight,
        }
    }
}

impl Drop for HeldLookup {
    fn drop(&mut self) {
        self.in_flight.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_lookup_holds_its_permit_only_while_it_runs() {
        let lookups = DnsLookups::new(1, DnsMetrics::detached());
        let addresses = lookups.lookup("127.0.0.1".to_string()).await.unwrap();
        assert_eq!(addresses, vec![SocketAddr::from(([127, 0, 0, 1], 0))]);
        assert_eq!(lookups.permits.available_permits(), 1);
        assert_eq!(lookups.metrics.in_flight.get(), 0);
        assert_eq!(lookups.metrics.waits.get(), 0);
    }
}
