//! Hot reload, on SIGHUP or `POST /admin/reload`: read the configuration
//! again, load every new or changed plugin (compile, check its world, ask
//! it to describe itself) while the old set keeps serving, then swap the
//! whole routing table in one atomic store. Tasks already running finish on
//! the version they started with (they hold it); plugins that did not change
//! keep their loaded code, gates and counters. If anything fails to load,
//! nothing is swapped and the error is logged, counted and reported.
//!
//! Only plugin-level settings are reloadable; node-level ones (listen
//! address, node slots, directory, admin listener, identity) are reported as
//! needing a restart and left as they are.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;

use crate::clock::now_unix_ms;
use crate::config::{NodeConfig, PluginSpec};
use crate::runtime::plugin::LoadedPlugin;
use crate::server::plugin_table::{PluginEntry, PluginTable};
use crate::server::state::AppState;

/// Reads the configuration as the node was started (file and flags).
pub type ConfigSource = Arc<dyn Fn() -> Result<NodeConfig, String> + Send + Sync>;

/// What a reload did.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ReloadReport {
    /// Whether the new set is serving.
    pub ok: bool,
    /// When the reload ended, ms since the Unix epoch.
    pub at_unix_ms: u64,
    /// Plugins loaded anew (new or changed).
    pub loaded: Vec<String>,
    /// Plugins kept as they were.
    pub kept: Vec<String>,
    /// Plugins no longer served.
    pub removed: Vec<String>,
    /// Tasks in flight when the table was swapped.
    pub in_flight: u32,
    /// Time to read the configuration and load the plugins, in ms.
    pub prepare_ms: f64,
    /// Time of the swap itself, in µs.
    pub swap_us: f64,
    /// Whether the set of intents changed (the node then registers again).
    pub intents_changed: bool,
    /// Settings that changed but only take effect after a restart.
    pub restart_needed: Vec<String>,
    /// Why the reload failed.
    pub error: Option<String>,
}

/// Performs reloads, one at a time.
pub struct Reloader {
    source: ConfigSource,
    running: NodeConfig,
    state: Arc<AppState>,
    on_intents_changed: Box<dyn Fn() + Send + Sync>,
    serial: tokio::sync::Mutex<()>,
    last: Mutex<Option<ReloadReport>>,
}

/// The node-level settings that differ, by name.
fn restart_needed(running: &NodeConfig, next: &NodeConfig) -> Vec<String> {
    let mut changed = Vec::new();
    let mut check = |name: &str, differs: bool| {
        if differs {
            changed.push(name.to_string());
        }
    };
    check("node.listen", running.listen != next.listen);
    check(
        "node.max_concurrent",
        running.max_concurrent != next.max_concurrent,
    );
    check("node.qos_wait_ms", running.qos_wait != next.qos_wait);
    check(
        "node.qos_max_waiting",
        running.qos_max_waiting != next.qos_max_waiting,
    );
    check("node.idempotency", running.idempotency != next.idempotency);
    check("auth", running.auth != next.auth);
    check("telemetry", running.telemetry != next.telemetry);
    check("node.node_id", running.node_id != next.node_id);
    check("node.region", running.region != next.region);
    check(
        "directory",
        running.directory.as_ref().map(|d| &d.url) != next.directory.as_ref().map(|d| &d.url),
    );
    check("admin", running.admin != next.admin);
    check("relay", running.reach != next.reach);
    changed
}

impl Reloader {
    /// A reloader for a node started from `running`.
    pub fn new(
        source: ConfigSource,
        running: NodeConfig,
        state: Arc<AppState>,
        on_intents_changed: Box<dyn Fn() + Send + Sync>,
    ) -> Self {
        Self {
            source,
            running,
            state,
            on_intents_changed,
            serial: tokio::sync::Mutex::new(()),
            last: Mutex::new(None),
        }
    }

    /// The last reload's report.
    pub fn last(&self) -> Option<ReloadReport> {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reloads; concurrent calls run one after another.
    pub async fn reload(&self) -> ReloadReport {
        let _serial = self.serial.lock().await;
        let started = Instant::now();
        let report = match self.prepare().await {
            Ok((table, mut report)) => {
                report.prepare_ms = started.elapsed().as_secs_f64() * 1000.0;
                let before = self.served_intents();
                report.in_flight = self.state.gate.active();
                let swap = Instant::now();
                let replaced = self.state.plugins.swap(Arc::new(table));
                report.swap_us = swap.elapsed().as_secs_f64() * 1e6;
                // Freeing a table of thousands of plugins takes milliseconds;
                // not on the reload's answer.
                tokio::task::spawn_blocking(move || drop(replaced));
                self.state.plugins.load().publish_info(&self.state.metrics);
                let after = self.served_intents();
                report.intents_changed = before != after;
                if report.intents_changed {
                    (self.on_intents_changed)();
                }
                self.state.metrics.reloads.with_label_values(&["ok"]).inc();
                // Kept plugins by count: a node of thousands would log them
                // all on every reload (the admin API's report names them).
                tracing::info!(
                    loaded = ?report.loaded,
                    kept = report.kept.len(),
                    removed = ?report.removed,
                    in_flight = report.in_flight,
                    prepare_ms = report.prepare_ms,
                    swap_us = report.swap_us,
                    intents_changed = report.intents_changed,
                    "reload applied"
                );
                if !report.restart_needed.is_empty() {
                    tracing::warn!(settings = ?report.restart_needed, "changed settings take effect only after a restart");
                }
                report
            }
            Err(error) => {
                self.state
                    .metrics
                    .reloads
                    .with_label_values(&["error"])
                    .inc();
                tracing::error!(%error, "reload failed; the previous plugins keep serving");
                ReloadReport {
                    at_unix_ms: now_unix_ms(),
                    in_flight: self.state.gate.active(),
                    prepare_ms: started.elapsed().as_secs_f64() * 1000.0,
                    error: Some(error),
                    ..ReloadReport::default()
                }
            }
        };
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(report.clone());
        report
    }

    fn served_intents(&self) -> Vec<String> {
        self.state
            .plugins
            .load()
            .intents()
            .iter()
            .map(|i| i.to_string())
            .collect()
    }

    /// Reads the configuration and builds the next table without touching
    /// the serving one.
    async fn prepare(&self) -> Result<(PluginTable, ReloadReport), String> {
        // Reading the configuration is file I/O (a plugin directory of
        // thousands of files, or a filesystem that hangs): not on a worker.
        let source = self.source.clone();
        let mut next = tokio::task::spawn_blocking(move || source())
            .await
            .map_err(|e| format!("reading the configuration failed: {e}"))??;
        crate::memory_sizing::carry_over(&self.running, &mut next)?;
        let specs = std::mem::take(&mut next.plugins);
        let current = self.state.plugins.load_full();
        let mut plugins: Vec<(Arc<LoadedPlugin>, PluginSpec)> = Vec::with_capacity(specs.len());
        let (mut loaded, mut kept) = (Vec::new(), Vec::new());
        // Many plugins may share one file (or one OCI reference): read its
        // digest once per reload, not once per plugin.
        let mut digests = HashMap::new();
        for spec in specs {
            match self.reusable(&current, &spec, &mut digests).await {
                Some(plugin) => {
                    kept.push(plugin.id.to_string());
                    plugins.push((plugin, spec));
                }
                None => {
                    let plugin = self
                        .state
                        .runtime
                        .load_plugin(&spec.source)
                        .await
                        .map_err(|e| e.to_string())?;
                    loaded.push(plugin.id.to_string());
                    plugins.push((Arc::new(plugin), spec));
                }
            }
        }
        let next_ids: HashSet<&str> = plugins.iter().map(|(p, _)| &*p.id).collect();
        let removed = current
            .entries()
            .iter()
            .filter(|e| !next_ids.contains(&*e.plugin.id))
            .map(|e| e.plugin.id.to_string())
            .collect();
        let table = PluginTable::build(
            plugins,
            &self.state.metrics,
            self.state.gate.capacity(),
            Some(&current),
        )?;
        let report = ReloadReport {
            ok: true,
            at_unix_ms: now_unix_ms(),
            loaded,
            kept,
            removed,
            restart_needed: restart_needed(&self.running, &next),
            ..ReloadReport::default()
        };
        Ok((table, report))
    }

    /// The loaded plugin to keep for `spec`: same settings, same content
    /// (an `oci://` tag is resolved again, so a moved tag reloads).
    /// `digests` remembers each location's digest for this reload.
    async fn reusable(
        &self,
        current: &PluginTable,
        spec: &PluginSpec,
        digests: &mut HashMap<PathBuf, Option<String>>,
    ) -> Option<Arc<LoadedPlugin>> {
        // A plugin without an operator id is called by its own name, which
        // only a load would tell; those few are found by a scan.
        let entry: &Arc<PluginEntry> = match &spec.source.id {
            Some(id) => current.entry(id).filter(|e| e.spec == *spec)?,
            None => current.entries().iter().find(|e| e.spec == *spec)?,
        };
        let path = &spec.source.path;
        let sha256 = match digests.get(path) {
            Some(known) => known.clone(),
            None => {
                let read = self.state.runtime.current_sha256(path).await;
                digests.insert(path.clone(), read.clone());
                read
            }
        }?;
        (sha256 == entry.plugin.sha256).then(|| entry.plugin.clone())
    }
}
