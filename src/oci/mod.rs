//! Plugins from OCI registries: `--plugin oci://REGISTRY/REPO:TAG` (or
//! `@sha256:DIGEST`), and `iicp-host push FILE REF` for authors.
//!
//! A pull resolves the reference to a manifest, checks it against the Wasm
//! OCI artifact convention ([`manifest`]), downloads the one component layer
//! and verifies it against its digest before anything loads it; the bytes
//! are kept content-addressed beside the compiled-artifact cache
//! ([`store`]), so a node starts offline with what it pulled before, and a
//! pinned digest needs no registry at all once pulled.
//!
//! A registry is remote input like any other: every call has a deadline,
//! manifests and components have byte bounds (settable, `[oci]`), the
//! download streams to disk (never more than one chunk in memory) and is cut
//! off the moment it exceeds what the manifest declared. Plain HTTP is used
//! only for loopback registries (as docker does for 127.0.0.0/8) and for
//! registries the operator lists in `oci.insecure_registries`.
//!
//! When the registry cannot be reached (connection refused, timeout, 5xx,
//! 429) and the tag was resolved before, the stored copy is used with one
//! warning line: a restart or a reload during a registry outage keeps
//! serving what it served. A registry that *answers* — not found, refused
//! credentials, a wrong digest, an unexpected media type — is an error.
//!
//! A plugin from a registry is always a WebAssembly component, compiled by
//! this node: the layer's first bytes are checked before it is stored or
//! loaded, and a core module, a compiled wasmtime artifact (native code)
//! or anything else is refused, naming what the bytes are. Whoever
//! controls a registry, a moved tag or a plain-HTTP hop can at most offer
//! wasm for the sandbox, never native code. Beyond that, a plugin may have
//! to be signed by a key the operator trusts, and its reference pinned to
//! a digest ([`signature`]).
//!
//! Known limit: the bearer-token exchange is done by `oci-client`, which
//! reads the token response without a byte bound; it is still under the
//! deadline, and the token endpoint is one the operator's registry names.

pub mod auth;
pub mod manifest;
pub mod metrics;
pub mod pull;
pub mod push;
pub mod reference;
pub mod settings;
pub mod signature;
pub mod store;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

pub use self::pull::{Fetched, Puller, Resolved};
pub use self::reference::OciLocation;

/// Default bound on a manifest.
pub const DEFAULT_MAX_MANIFEST_BYTES: usize = 4 << 20;
/// Default bound on a pulled component.
pub const DEFAULT_MAX_PLUGIN_BYTES: u64 = 256 << 20;
/// Default deadline of each registry call (a whole download included).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Default bound on the components kept in the store.
pub const DEFAULT_MAX_STORE_BYTES: u64 = 2 << 30;

/// How the node talks to registries.
#[derive(Debug, Clone, PartialEq)]
pub struct OciSettings {
    /// Where pulled plugins are kept (`<cache dir>/oci` by default).
    pub store_dir: Option<PathBuf>,
    /// Largest manifest accepted.
    pub max_manifest_bytes: usize,
    /// Largest component accepted.
    pub max_plugin_bytes: u64,
    /// Bytes of components the store keeps.
    pub max_store_bytes: u64,
    /// Deadline of each registry call.
    pub timeout: Duration,
    /// Registries (`host[:port]`) spoken to over plain HTTP although not on
    /// loopback.
    pub insecure_registries: Vec<String>,
    /// Signature layers looked at per signed manifest, at most.
    pub max_signatures: usize,
}

impl Default for OciSettings {
    fn default() -> Self {
        Self {
            store_dir: None,
            max_manifest_bytes: DEFAULT_MAX_MANIFEST_BYTES,
            max_plugin_bytes: DEFAULT_MAX_PLUGIN_BYTES,
            max_store_bytes: DEFAULT_MAX_STORE_BYTES,
            timeout: DEFAULT_TIMEOUT,
            insecure_registries: Vec::new(),
            max_signatures: signature::DEFAULT_MAX_SIGNATURES,
        }
    }
}

/// Why a pull or push failed; `Display` is one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OciError {
    /// The registry could not be reached or is failing (a later try may work).
    Unreachable(String),
    /// The registry answered, and the answer is unusable.
    Refused(String),
}

impl fmt::Display for OciError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OciError::Unreachable(why) => write!(f, "registry unreachable: {why}"),
            OciError::Refused(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for OciError {}

/// An error and its causes on one line, at most 300 characters.
fn one_line(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    let mut line: String = text
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(300)
        .collect();
    if line.len() < text.len() && line.chars().count() == 300 {
        line.push('…');
    }
    line
}
