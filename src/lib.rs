//! iicp-host: an IICP provider node that runs each task inside a sandboxed
//! WebAssembly component.
//!
//! Data flows one way: [`server`] receives a task, admits it and hands it to
//! [`runtime`], which runs it in a fresh plugin instance; the response goes
//! back out through [`protocol`]'s wire types and error envelope.

#![deny(missing_docs)]

pub mod config;
pub mod directory;
pub mod metrics;
pub mod node;
pub mod protocol;
pub mod runtime;
pub mod server;
pub mod telemetry;
