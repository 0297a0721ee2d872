//! iicp-host: an IICP provider node that runs each task inside a sandboxed
//! WebAssembly component.
//!
//! Data flows one way: [`server`] receives a task, admits it and hands it to
//! [`runtime`], which runs it in a fresh plugin instance; the response goes
//! back out through [`protocol`]'s wire types and error envelope. Around
//! that path: [`directory`] keeps the node registered, [`reload`] and
//! [`admin`] let an operator change plugins while it serves, each
//! capability folder owns its settings and [`config`] stacks the file, the
//! environment and the flags into them, [`oci`] pulls plugins from
//! registries and [`fetch`] hands the runtime only verified bytes, and
//! [`node`] starts and stops it all, telling [`systemd`] when it is ready
//! and when it stops.
//!
//! Modules sit in layers; a module uses only modules of its own or a lower
//! layer, and no two files import each other, even through others (a
//! folder's `mod.rs` may use its own files; `tests/import_graph.rs` checks
//! both):
//! <!-- layers: -->
//! 1. foundations: `clock`, `metric_families`, `private_files`, `prune`, `settings`, `wasm_kind`, `heap`, `protocol`
//! 2. leaf capabilities: `telemetry`, `oci`
//! 3. counting: `metrics`
//! 4. the sandbox: `runtime`
//! 5. around the sandbox: `fetch`, `directory`
//! 6. the front door: `server`
//! 7. node-to-node reach: `relay`, `peers`
//! 8. assembling the settings: `config`, `memory_bound`, `memory_sizing`
//! 9. operating the node: `reload`, `admin`, `systemd`, `tools`
//! 10. wiring: `node`
//! <!-- layers: end -->

#![deny(missing_docs)]

pub mod admin;
pub mod clock;
pub mod config;
pub mod directory;
pub mod fetch;
pub mod heap;
pub mod memory_bound;
pub mod memory_sizing;
pub mod metric_families;
pub mod metrics;
pub mod node;
pub mod oci;
pub mod peers;
pub mod private_files;
pub mod protocol;
pub mod prune;
pub mod relay;
pub mod reload;
pub mod runtime;
pub mod server;
pub mod settings;
pub mod systemd;
pub mod telemetry;
pub mod tools;
pub mod wasm_kind;
