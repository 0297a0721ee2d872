//! A real OCI registry for tests: the reliability suite's
//! ([`iicp_reliability::registry`]), shared so both push the same way.

pub use iicp_reliability::registry::Registry;
