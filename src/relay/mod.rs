//! Relaying (`protocol.md` §1.1, §3, §7): how a node behind NAT serves, and
//! how a reachable node helps it.
//!
//! * The **worker role** ([`worker`]) binds outbound to a relay and pulls
//!   tasks with long polls; consumers reach it at the relay's
//!   `/v1/relay-for/{worker_id}` and the directory lists that endpoint.
//! * The **relay role** ([`sessions`], [`routes`]) accepts bound workers
//!   and forwards tasks to them, with bounded sessions, queues and bytes,
//!   per-source bind limits and optional directory-signed bind tickets
//!   ([`ticket`]).
//!
//! Both speak the reference node's HTTP long-poll transport ([`wire`]);
//! the native TCP `RELAY_BIND` transport is not offered. A relay sees the
//! bodies it forwards, so consumers that care use IICP-CX: the relay then
//! only ever holds ciphertext (§7.5).

mod bind_limit;
pub mod routes;
pub mod sessions;
pub mod ticket;
pub mod wire;
pub mod worker;
