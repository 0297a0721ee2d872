//! The WebAssembly side of the node: one engine, plugins loaded into it, and
//! a fresh sandboxed instance for every task.
//!
//! * [`engine`] — engine configuration, pooling allocator, epoch ticker;
//! * [`cache`] — on-disk cache of compiled components;
//! * [`artifact`] — plugin files: classifying, compiling, inspecting;
//! * [`plugin`] — loading and checking a plugin, [`link`] its fit to the
//!   host's world, [`load_error`] every reason it may be refused;
//! * [`store`] and [`limits`] — the per-task store and its limits;
//! * [`shared`] — compiled code shared by plugins loaded from the same bytes;
//! * [`reuse`] — opt-in reuse of instances across tasks;
//! * [`teardown`] — dropping finished instances after the response;
//! * [`execute`] — running one task and classifying its outcome;
//! * [`host`] — the capabilities plugins import (log, stdio, config, HTTP)
//!   and the host budget every byte they make the host store is charged to.

pub mod artifact;
pub mod bindings;
pub mod cache;
pub mod engine;
pub mod execute;
pub mod handle_export;
pub mod host;
pub mod limit_settings;
pub mod limits;
pub mod link;
pub mod load_error;
pub mod metrics;
pub mod plugin;
pub mod reuse;
pub mod shared;
pub mod store;
pub mod teardown;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use wasmtime::Engine;
use wasmtime::component::{HasSelf, Linker};

use self::bindings::Plugin;
use self::cache::ArtifactCache;
use self::engine::{AllocatorKind, EngineSettings};
use self::execute::{TaskFailure, TaskInput, TaskReport, TaskSuccess};
use self::plugin::{LoadError, LoadedPlugin, PluginSource};
use self::reuse::WarmRegistry;
use self::shared::ArtifactRegistry;
use self::store::TaskState;
use self::teardown::Teardown;
use crate::metrics::Metrics;
use crate::runtime::metrics::RuntimeMetrics;

/// How to build the runtime.
#[derive(Debug, Clone)]
pub struct RuntimeSettings {
    /// Engine and allocator settings.
    pub engine: EngineSettings,
    /// Where compiled artifacts are cached; `None` disables the cache.
    pub cache_dir: Option<PathBuf>,
    /// Plugins' name lookups in flight at once, node-wide
    /// ([`host::dns`]).
    pub max_dns_lookups: usize,
}

/// The engine, the linker with every host capability, and the artifact cache.
pub struct Runtime {
    engine: Engine,
    metrics: Arc<RuntimeMetrics>,
    artifacts: Arc<ArtifactRegistry>,
    cache: Option<ArtifactCache>,
    allocator: AllocatorKind,
    teardown: Teardown,
    warm: WarmRegistry,
    dns: Arc<host::dns::DnsLookups>,
}

impl Runtime {
    /// Builds the engine and links the host capabilities.
    pub fn new(settings: &RuntimeSettings, metrics: Arc<Metrics>) -> wasmtime::Result<Self> {
        let metrics = metrics.part::<RuntimeMetrics>();
        let (engine, allocator) = engine::build_engine(&settings.engine)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
        host::http_accounting::add_to_linker(&mut linker)?;
        Plugin::add_to_linker::<TaskState, HasSelf<TaskState>>(&mut linker, |state| state)?;
        let cache = settings.cache_dir.as_deref().and_then(|dir| {
            ArtifactCache::open(dir, &engine, metrics.artifact_cache_rejected.clone())
                .inspect_err(|error| {
                    tracing::warn!(dir = %dir.display(), %error, "compiled-artifact cache disabled");
                })
                .ok()
        });
        let artifacts = ArtifactRegistry::new(engine.clone(), linker, cache.clone());
        let dns = host::dns::DnsLookups::new(settings.max_dns_lookups, metrics.dns.clone());
        Ok(Self {
            engine,
            metrics,
            artifacts: Arc::new(artifacts),
            cache,
            allocator,
            teardown: Teardown::default(),
            warm: WarmRegistry::default(),
            dns: Arc::new(dns),
        })
    }

    /// The allocator in use.
    pub fn allocator(&self) -> AllocatorKind {
        self.allocator
    }

    /// Loads and checks the plugin at `source.path`, a local file; a plugin
    /// from a registry is pulled and verified first (`fetch`), and loaded
    /// with [`Self::load_plugin_file`].
    pub async fn load_plugin(&self, source: &PluginSource) -> Result<LoadedPlugin, LoadError> {
        self.load_plugin_file(source, &source.path).await
    }

    /// Loads and checks the plugin `source` describes from the local `file`
    /// holding its bytes.
    pub async fn load_plugin_file(
        &self,
        source: &PluginSource,
        file: &Path,
    ) -> Result<LoadedPlugin, LoadError> {
        plugin::load(
            &self.artifacts,
            &self.metrics,
            &self.warm,
            &self.dns,
            source,
            file,
        )
        .await
    }

    /// The SHA-256 of the local file at `path` now, `None` if unreadable.
    /// Reloads compare it with what is loaded. A file is read and hashed
    /// again only when it may have changed since it was last hashed (see
    /// [`shared`]), so a reload among 1,000 plugins of one artifact hashes
    /// nothing.
    pub async fn file_sha256(&self, path: &Path) -> Option<String> {
        let (artifacts, path) = (self.artifacts.clone(), path.to_path_buf());
        tokio::task::spawn_blocking(move || artifacts.file_sha256(&path).ok())
            .await
            .ok()?
    }

    /// Compiles a `.wasm` component ahead of time for this engine.
    pub fn precompile(&self, path: &std::path::Path) -> Result<Vec<u8>, LoadError> {
        artifact::precompile(&self.engine, path)
    }

    /// Lists a component's imports and exports (a compiled artifact's only
    /// with [`artifact::PrecompiledPolicy::Allow`]).
    pub fn inspect(
        &self,
        path: &std::path::Path,
        precompiled: artifact::PrecompiledPolicy,
    ) -> Result<artifact::ComponentFacts, LoadError> {
        artifact::inspect(&self.engine, self.cache.as_ref(), path, precompiled)
    }

    /// Runs one task in a fresh instance of `plugin`.
    pub async fn run_task(
        &self,
        plugin: &LoadedPlugin,
        input: TaskInput<'_>,
    ) -> (Result<TaskSuccess, TaskFailure>, TaskReport) {
        execute::run_task(&self.engine, &self.teardown, &self.warm, plugin, input).await
    }
}
