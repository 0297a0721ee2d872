//! The reliability suite: a real `iicp-host` process under hostile plugins,
//! hostile clients and a broken directory, with every outcome counted.
//!
//! Each case family in [`cases`] runs at two sizes: [`Scale::Fast`] inside
//! `make test` (tests/reliability.rs asserts every report passes) and
//! [`Scale::Full`] in `reliability/run`, which writes `docs/reliability.md`.
//! A case reports tries, failures, the latency of healthy traffic running
//! beside it, and the node's resident memory before, at peak and after
//! ([`report::CaseReport`]).
//!
//! * [`directory`] — a directory stand-in that misbehaves on demand;
//! * [`registry`] — a real OCI registry, pushed to with raw API calls;
//! * [`cx`] — IICP-CX sealing as a consumer does it;
//! * [`node`] — starting and stopping a node process, reading its log;
//! * [`memory`] — the node's resident memory, sampled;
//! * [`traffic`] — healthy traffic and its latencies;
//! * [`report`] — what a case found, as data and as markdown;
//! * [`results`] — a run's results file, and `docs/reliability.md` drawn
//!   from the newest run of each family;
//! * [`charts`] — the node's RSS over time during each family, as SVG.

#![deny(missing_docs)]

pub mod cases;
pub mod charts;
pub mod cx;
pub mod directory;
pub mod memory;
pub mod node;
pub mod registry;
pub mod report;
pub mod results;
pub mod traffic;

use std::path::PathBuf;

/// How big a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    /// Seconds per case: part of `make test`.
    Fast,
    /// The sizes the suite promises (minutes per case): `reliability/run`.
    Full,
}

impl Scale {
    /// `fast` or `full` when the case is `Fast` or `Full`.
    pub fn pick<T>(self, fast: T, full: T) -> T {
        match self {
            Scale::Fast => fast,
            Scale::Full => full,
        }
    }
}

/// Where the suite finds what it runs.
#[derive(Debug, Clone)]
pub struct Context {
    /// The `iicp-host` binary under test.
    pub host_binary: PathBuf,
    /// The Rust plugins built for wasm32-wasip2 (`plugins/target/.../release`).
    pub plugin_dir: PathBuf,
    /// A compiled-artifact cache shared by the nodes of one run.
    pub cache_dir: PathBuf,
    /// Scratch space (state directories, configuration files).
    pub work_dir: PathBuf,
}

impl Context {
    /// The plugin `name` (`plugins/<name>`) as built.
    pub fn plugin(&self, name: &str) -> PathBuf {
        self.plugin_dir
            .join(format!("{}.wasm", name.replace('-', "_")))
    }

    /// A launcher for nodes of this run.
    pub fn launcher(&self) -> node::Launcher {
        node::Launcher {
            binary: self.host_binary.clone(),
            cache_dir: self.cache_dir.clone(),
            state_root: self.work_dir.clone(),
        }
    }
}
