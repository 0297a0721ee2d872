//! iicp-host: an IICP provider node that runs each task inside a sandboxed
//! WebAssembly component.
//!
//! Data flows one way: [`server`] receives a task, admits it and hands it to
//! [`runtime`], which runs it in a fresh plugin instance; the response goes
//! back out through [`protocol`]'s wire types and error envelope. Around
//! that path: [`directory`] keeps the node registered, [`reload`] and
//! [`admin`] let an operator change plugins while it serves, [`config`]
//! reads what to serve, [`oci`] pulls plugins from registries, and [`node`]
//! starts and stops it all, telling [`systemd`] when it is ready and when it
//! stops.

#![deny(missing_docs)]

pub mod admin;
pub mod clock;
pub mod config;
pub mod directory;
pub mod heap;
pub mod memory_bound;
pub mod memory_sizing;
pub mod metrics;
pub mod node;
pub mod oci;
pub mod peers;
pub mod private_files;
pub mod protocol;
pub mod relay;
pub mod reload;
pub mod runtime;
pub mod server;
pub mod systemd;
pub mod telemetry;
pub mod tools;
pub mod wasm_kind;
