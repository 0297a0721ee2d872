//! Host-side bindings generated from `wit/plugin.wit`.
//!
//! Exports are async so a task runs on the async fiber that epoch deadlines
//! can yield from; the `log` import is a plain synchronous host function.
//! The generated items are documented in `wit/plugin.wit`.

#![allow(missing_docs)]

wasmtime::component::bindgen!({
    path: "wit",
    world: "plugin",
    exports: { default: async },
});

pub use exports::iicp::plugin::handler::{Descriptor, Task, TaskError, TaskOutput};
pub use iicp::plugin::types::{Capability, Constraints, ErrorKind, Qos, TraceContext, Usage};
