//! Peer gossip (`POST /v1/peers`, `iicp-dir.md` §3.6), off unless the
//! operator turns it on (`[peers]`, `--peers`): nodes tell each other which
//! nodes they know, so the mesh keeps its shape without asking the
//! directory for everything.
//!
//! * [`table`] — the bounded peer table, and who may change what in it;
//! * [`signature`] — both signature forms and the replay table;
//! * [`budget`] — how much one sender may add to the table per window;
//! * [`exchange`] — the route that answers exchanges and the loop that
//!   starts them.
//!
//! Both forms are accepted and answered in their own shape: the spec's
//! Ed25519 form (`{sender_id, known_peers: [ids], timestamp_ms}` →
//! `{new_peers, receiver_id}`) and the reference SDK's HMAC form
//! (`{known_peers: [peer objects]}` → `{peers}`). This node sends the
//! Ed25519 form unless told to use the mesh's shared HMAC key. Its Ed25519
//! key lives in the state directory; its public half goes to the directory
//! at REGISTER, where peers look it up (`GET /v1/node/{id}`). The
//! directory's `node_token` never travels to a peer, in any header or body.
//!
//! Answers are signed too, and an answer is merged only when signed by the
//! peer asked, in the form it was asked in; relayed entries never move a
//! known node id nor evict a configured one (decisions in [`exchange`]).

pub mod budget;
pub mod exchange;
pub mod metrics;
pub mod settings;
pub mod signature;
pub mod table;
