//! Host capabilities given to plugins, one module per capability.

pub mod log;
pub mod stdio;
