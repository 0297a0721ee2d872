//! Relaying (`protocol.md` §1.1, §3, §7): how a node behind NAT serves, and
//! how a reachable node helps it.
//!
//! * The **worker role** ([`worker`]) binds outbound to a relay and pulls
//!   tasks with long polls, or (`iicp://` relays, `worker::framed`) over the
//!   native IICP framing; consumers reach it at the relay's
//!   `/v1/relay-for/{worker_id}` and the directory lists that endpoint.
//! * The **relay role** ([`sessions`], [`routes`], [`accept`]) accepts
//!   bound workers over either transport and forwards tasks to them, with
//!   bounded sessions, queues and bytes, per-source bind limits and
//!   optional directory-signed bind tickets ([`ticket`]). A framed worker
//!   is one more transport of the same session: same rules, budgets,
//!   metrics and errors.
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
//! The reference's framed workers (`relay_worker_client`, Rust and
//! Python) send `{worker_id, intent, models, bind_ticket?}` and no key, so
//! a framed bind without a ticket is the keyless weak case, like the
//! reference's long-poll binds; ours add their rebind key on both
//! transports. Tickets stay optional by default even when the relay has
//! the directory's key: the reference's long-poll binds (browser workers,
//! #450) carry no ticket, and its framed workers fetch one only when
//! configured with a directory. Our own worker fetches a ticket whenever a
//! bind is refused with `IICP-E040`, which is also how it recovers a
//! pinned id after losing its state directory.
//!
//! Transports: the reference node's HTTP long poll ([`wire`], [`routes`])
//! and its native IICP framing ([`framing`], [`accept`] on the accept
//! port, default 9485). A relay sees the bodies it forwards, so consumers
//! that care use IICP-CX: the relay then only ever holds ciphertext (§7.5).

pub mod accept;
mod bind_limit;
pub mod framing;
pub mod metrics;
pub mod pins;
pub mod routes;
pub mod sessions;
pub mod settings;
pub mod ticket;
pub mod wire;
pub mod worker;
