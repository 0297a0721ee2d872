//! Host capabilities given to plugins, one module per capability.

pub mod address_policy;
pub mod budget;
pub mod config;
pub mod dns;
pub mod http;
pub mod http_accounting;
pub(crate) mod http_client;
pub mod http_settings;
pub mod log;
pub mod stdio;
