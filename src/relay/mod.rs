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
//! **Who may bind under a worker id.** An alive session is displaced only
//! by a bind presenting its rebind key. Beyond that, each id is pinned to
//! the rebind key it first bound with, and the pins outlive relay restarts
//! ([`pins`]): after a restart a pinned id binds only with its key or a
//! valid bind ticket (which re-pins it), so nobody else receives its
//! consumers' tasks and credentials. Our workers always present their key.
//! Workers that present neither key nor ticket (the reference's long-poll
//! body) still bind, pin nothing and stay the weak case: their id is the
//! first binder's while their session is dead; `refuse_keyless_binds`
//! turns them away.
//!
//! Tickets stay optional by default even when the relay has the
//! directory's key: the reference workers that fetch tickets
//! (`relay_worker_client`, Rust and Python) bind over the native transport
//! this node does not serve, and the reference's long-poll binds (browser
//! workers, #450) carry `{worker_id, intent, models}` only, so requiring
//! tickets would refuse them. Our own worker fetches a ticket whenever a
//! bind is refused with 401 `IICP-E040`, which is also how it recovers a
//! pinned id after losing its state directory.
//!
//! Both speak the reference node's HTTP long-poll transport ([`wire`]);
//! the native TCP `RELAY_BIND` transport is not offered. A relay sees the
//! bodies it forwards, so consumers that care use IICP-CX: the relay then
//! only ever holds ciphertext (§7.5).

pub mod accept;
mod bind_limit;
pub mod framing;
pub mod pins;
pub mod routes;
pub mod sessions;
pub mod ticket;
pub mod wire;
pub mod worker;
mod worker_framed;
