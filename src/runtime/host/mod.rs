//! Host capabilities given to plugins, one module per capability.

pub mod config;
pub mod http;
pub mod log;
pub mod stdio;
