//! Hot reload, on SIGHUP or `POST /admin/reload`: read the configuration
//! again, load every new or changed plugin (compile, check its world, ask
//! it to describe itself) while the old set keeps serving, then swap the
//! whole routing table in one atomic store. Tasks already running finish on
//! the version they started with (they hold it); plugins that did not change
//! keep their loaded code, gates and counters.
//!
//! One plugin's failure is that plugin's alone (one tenant's moved OCI tag
//! or broken file must not hold back every other tenant's update): a plugin
//! whose new version does not load, or cannot join the table (an intent
//! another plugin serves, an intent it does not declare, a taken id), keeps
//! its previous version — code *and* settings, never one without the other
//! — and a new plugin that fails is absent. Failed plugins are named with
//! their errors in the report (`failed`, answer 200 with `ok: false`) and
//! the log, and counted as `iicp_reloads_total{result="partial"}`. The
//! previous version of a plugin is the one with the same id (or, for a
//! plugin without an operator id, the same path); if it now collides with
//! another plugin's new version it is left out too, and reported. An error
//! in the configuration itself (a file that does not parse, a bad value)
//! fails the whole reload: nothing is swapped, 422 `reload_failed`,
//! `result="error"`.
//!
//! Only plugin-level settings are reloadable (and `node.plugin_dirs`);
//! node-level ones (every other `[node]` key, the directory, the admin
//! listener, auth, telemetry, relay and peers) are reported as needing a
//! restart and left as they are.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use prometheus::{IntCounter, IntCounterVec, Registry};
use serde::Serialize;

use crate::clock::now_unix_ms;
use crate::config::dir_watch::RescanReason;
use crate::config::file_cache;
use crate::config::{NodeConfig, PluginSpec};
use crate::metric_families::{Part, counter, seeded_counter_vec};
use crate::runtime::plugin::LoadedPlugin;
use crate::server::plugin_table::{PluginEntry, PluginTable, TableBuilder, address, same_spec};
use crate::server::state::AppState;
use crate::settings::keys_needing_restart;

/// Reads the configuration as the node was started (file and flags).
pub type ConfigSource = Arc<dyn Fn() -> Result<NodeConfig, String> + Send + Sync>;

/// A plugin a reload could not apply.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PluginFailure {
    /// Its id (or path, when it has no id and never loaded).
    pub plugin: String,
    /// Why.
    pub error: String,
    /// Whether its previous version keeps serving (else it is absent).
    pub kept_previous: bool,
}

/// What a reload did.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ReloadReport {
    /// Whether the whole new configuration is serving (no plugin failed).
    pub ok: bool,
    /// Whether a new routing table was swapped in (false only when the
    /// configuration itself failed).
    pub applied: bool,
    /// When the reload ended, ms since the Unix epoch.
    pub at_unix_ms: u64,
    /// Plugins loaded anew (new or changed).
    pub loaded: Vec<String>,
    /// Plugins kept as they were (shared ids: a node of thousands lists
    /// them on every reload).
    #[serde(serialize_with = "ids")]
    pub kept: Vec<Arc<str>>,
    /// Plugins no longer served.
    pub removed: Vec<String>,
    /// Plugins whose new version could not be applied.
    pub failed: Vec<PluginFailure>,
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

/// Writes shared ids as the strings they are.
fn ids<S: serde::Serializer>(ids: &[Arc<str>], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(ids.iter().map(|id| &**id))
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

/// The node-level settings that differ, by name: each `[node]` key that a
/// reload does not put in force (`node.listen`, …; the section says which
/// it does), then the tables read only at start, whole.
fn restart_needed(running: &NodeConfig, next: &NodeConfig) -> Vec<String> {
    let mut changed = keys_needing_restart(&running.node, &next.node);
    let mut check = |name: &str, differs: bool| {
        if differs {
            changed.push(name.to_string());
        }
    };
    check("auth", running.auth != next.auth);
    check("telemetry", running.telemetry != next.telemetry);
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
                report.in_flight = self.state.gate.active();
                let swap = Instant::now();
                let replaced = self.state.plugins.swap(Arc::new(table));
                report.swap_us = swap.elapsed().as_secs_f64() * 1e6;
                let serving = self.state.plugins.load();
                let changed = report.loaded.iter().chain(&report.removed);
                let failed = report.failed.iter().map(|f| &f.plugin);
                serving.publish_info_changes(
                    &replaced,
                    changed.chain(failed).map(String::as_str),
                    &self.state.metrics,
                );
                report.intents_changed = replaced.intents_differ(&serving);
                // Freeing a table of thousands of plugins takes milliseconds;
                // not on the reload's answer.
                tokio::task::spawn_blocking(move || drop(replaced));
                if report.intents_changed {
                    (self.on_intents_changed)();
                }
                let result = if report.ok { "ok" } else { "partial" };
                self.state
                    .metrics
                    .part::<ReloadMetrics>()
                    .reloads
                    .with_label_values(&[result])
                    .inc();
                for failure in &report.failed {
                    tracing::warn!(
                        plugin = %failure.plugin,
                        error = %failure.error,
                        kept_previous = failure.kept_previous,
                        "a plugin failed to reload; the others are applied"
                    );
                }
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
                    .part::<ReloadMetrics>()
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
        self.state
            .metrics
            .part::<ReloadMetrics>()
            .publish_listings();
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(report.clone());
        report
    }

    /// Reads the configuration and builds the next table without touching
    /// the serving one. The next table starts from the serving one's
    /// indexes: kept plugins are found by their shared spec (at the same
    /// place, else by id) and only placed; only what changed is indexed.
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
        let (mut loaded, mut kept, mut failed) = (Vec::new(), Vec::new(), Vec::new());
        let capacity = self.state.gate.capacity();
        // Each plugin's place in configuration order is reserved in turn;
        // kept plugins and the previous versions of those whose new version
        // failed to load coexisted in the serving table, so they join
        // first, new versions after them, one by one.
        let mut builder =
            TableBuilder::new(specs.len(), &self.state.metrics, capacity, Some(&current));
        // Each serving entry to place, and whether it is kept (else it is a
        // failed plugin's previous version).
        let mut settled: Vec<(usize, Arc<PluginEntry>, bool)> = Vec::with_capacity(specs.len());
        let mut fresh: Vec<NewVersion> = Vec::new();
        // Kept plugins whose settings were built again to the same values
        // (other `[defaults]`, another layout): served on under the new
        // spec, so that the next reload finds them by pointer again.
        let mut respecified: Vec<(usize, Arc<PluginEntry>, Arc<PluginSpec>)> = Vec::new();
        let mut digests = Digests::default();
        for (index, spec) in specs.into_iter().enumerate() {
            let slot = builder.reserve();
            if let Some(entry) = self.reusable(&current, index, &spec, &mut digests).await {
                if Arc::ptr_eq(&entry.spec, &spec) {
                    settled.push((slot, entry, true));
                } else {
                    respecified.push((slot, entry, spec));
                }
                continue;
            }
            let previous = previous_version(&current, &spec);
            match self
                .state
                .fetcher
                .load(&self.state.runtime, &spec.source)
                .await
            {
                Ok(plugin) => fresh.push((slot, Arc::new(plugin), spec, previous)),
                Err(error) => {
                    failed.push(PluginFailure {
                        plugin: spec.source.id.clone().unwrap_or_else(|| {
                            previous.as_ref().map_or_else(
                                || spec.source.path.display().to_string(),
                                |p| p.plugin.id.to_string(),
                            )
                        }),
                        error: error.to_string(),
                        kept_previous: previous.is_some(),
                    });
                    if let Some(previous) = previous {
                        settled.push((slot, previous, false));
                    }
                }
            }
        }
        let mut placed = 0;
        for (slot, entry, is_kept) in settled {
            // These served together until now, so this fails only when two
            // specs name one serving plugin; the second is then out.
            let result = builder.keep_serving(slot, &entry);
            placed += usize::from(result.is_ok());
            match result {
                Ok(()) if is_kept => kept.push(entry.plugin.id.clone()),
                Ok(()) => {}
                Err(error) => {
                    let id = entry.plugin.id.to_string();
                    kept.retain(|k| **k != *id);
                    match failed.iter_mut().find(|f| f.plugin == id) {
                        Some(failure) => failure.kept_previous = false,
                        None => failed.push(PluginFailure {
                            plugin: id,
                            error,
                            kept_previous: false,
                        }),
                    }
                }
            }
        }
        // Respecified entries are not placed: they leave the indexes with
        // the entries that depart, and join again below.
        let departing = departing(&current, &builder, &fresh, placed);
        for entry in &departing {
            builder.release(entry);
        }
        for (slot, entry, spec) in respecified {
            // It served with these settings until now; should it not join
            // again, its entry as it was does.
            let joined = builder
                .add(slot, entry.plugin.clone(), spec)
                .or_else(|_| builder.keep(slot, &entry));
            match joined {
                Ok(()) => kept.push(entry.plugin.id.clone()),
                Err(error) => failed.push(PluginFailure {
                    plugin: entry.plugin.id.to_string(),
                    error,
                    kept_previous: false,
                }),
            }
        }
        for (slot, plugin, spec, previous) in fresh {
            let id = plugin.id.to_string();
            match builder.add(slot, plugin, spec) {
                Ok(()) => loaded.push(id),
                Err(error) => {
                    let kept_previous =
                        previous.is_some_and(|previous| builder.keep(slot, &previous).is_ok());
                    failed.push(PluginFailure {
                        plugin: id,
                        error,
                        kept_previous,
                    });
                }
            }
        }
        let table = builder.finish();
        let removed = departing
            .iter()
            .filter(|e| table.entry(&e.plugin.id).is_none())
            .map(|e| e.plugin.id.to_string())
            .collect();
        let report = ReloadReport {
            ok: failed.is_empty(),
            applied: true,
            at_unix_ms: now_unix_ms(),
            loaded,
            kept,
            removed,
            failed,
            restart_needed: restart_needed(&self.running, &next),
            ..ReloadReport::default()
        };
        Ok((table, report))
    }

    /// The loaded plugin to keep for `spec`, the `index`th of the
    /// configuration: same settings, same content (an `oci://` tag is
    /// resolved again, so a moved tag reloads).
    async fn reusable(
        &self,
        current: &PluginTable,
        index: usize,
        spec: &Arc<PluginSpec>,
        digests: &mut Digests,
    ) -> Option<Arc<PluginEntry>> {
        // An unchanged table's spec is the one the serving entry holds, and
        // usually at the same place: a pointer comparison. Otherwise by id;
        // a plugin without an operator id is called by its own name, which
        // only a load would tell, so those few are found by a scan.
        let at_place = current
            .entries()
            .get(index)
            .filter(|e| Arc::ptr_eq(&e.spec, spec));
        let entry: &Arc<PluginEntry> = match (at_place, &spec.source.id) {
            (Some(entry), _) => entry,
            (None, Some(id)) => current.entry(id).filter(|e| same_spec(&e.spec, spec))?,
            (None, None) => current
                .entries()
                .iter()
                .find(|e| same_spec(&e.spec, spec))?,
        };
        let sha256 = digests.of(self, &spec.source.path).await?;
        (*sha256 == entry.plugin.sha256).then(|| entry.clone())
    }
}

/// Each plugin location's digest, read once per reload: many plugins may
/// share one file (or one OCI reference). The last one asked is answered
/// without hashing its path (tenants of one artifact come in a row).
#[derive(Default)]
struct Digests {
    last: Option<(PathBuf, Option<Arc<str>>)>,
    known: HashMap<PathBuf, Option<Arc<str>>>,
}

impl Digests {
    async fn of(&mut self, reloader: &Reloader, path: &Path) -> Option<Arc<str>> {
        if let Some((last, sha256)) = &self.last
            && last == path
        {
            return sha256.clone();
        }
        let sha256 = match self.known.get(path) {
            Some(known) => known.clone(),
            None => {
                let read = reloader
                    .state
                    .fetcher
                    .current_sha256(&reloader.state.runtime, path)
                    .await
                    .map(Arc::from);
                self.known.insert(path.to_path_buf(), read.clone());
                read
            }
        };
        self.last = Some((path.to_path_buf(), sha256.clone()));
        sha256
    }
}

/// The serving entries that leave the table: those new versions replace
/// (unless placed too, as another spec's plugin) and, when the count says
/// some plugin is gone, every other entry not placed. `placed` serving
/// entries were put in place.
fn departing(
    current: &PluginTable,
    builder: &TableBuilder<'_>,
    fresh: &[NewVersion],
    placed: usize,
) -> Vec<Arc<PluginEntry>> {
    let mut departing: Vec<Arc<PluginEntry>> = Vec::new();
    for previous in fresh
        .iter()
        .filter_map(|(_, _, _, previous)| previous.as_ref())
    {
        if !builder.replaced_is_placed(previous)
            && !departing.iter().any(|d| Arc::ptr_eq(d, previous))
        {
            departing.push(previous.clone());
        }
    }
    // Every serving entry is placed, replaced or gone: only when plugins
    // were removed are the others looked at.
    if placed + departing.len() < current.entries().len() {
        let mut known = builder.placed_addresses();
        known.extend(departing.iter().map(address));
        departing.extend(
            current
                .entries()
                .iter()
                .filter(|e| !known.contains(&address(e)))
                .cloned(),
        );
    }
    departing
}

/// A plugin loaded anew, with its place in configuration order, its
/// settings and the serving entry it replaces.
type NewVersion = (
    usize,
    Arc<LoadedPlugin>,
    Arc<PluginSpec>,
    Option<Arc<PluginEntry>>,
);

/// The serving entry `spec` replaces: the plugin with its id, or, without
/// an operator id, the one loaded from the same path.
fn previous_version(current: &PluginTable, spec: &PluginSpec) -> Option<Arc<PluginEntry>> {
    match &spec.source.id {
        Some(id) => current.entry(id).cloned(),
        None => current
            .entries()
            .iter()
            .find(|e| e.spec.source.id.is_none() && e.spec.source.path == spec.source.path)
            .cloned(),
    }
}

/// What reloading counts.
pub struct ReloadMetrics {
    /// `iicp_reloads_total{result}`: ok, partial, error.
    pub reloads: IntCounterVec,
    /// `iicp_plugin_dir_events_total`: change events read from the plugin
    /// directories' watch.
    pub plugin_dir_events: IntCounter,
    /// `iicp_plugin_dir_full_listings_total{reason}`: reads of the plugin
    /// directories that listed and stat-ed every file, by why.
    pub plugin_dir_full_listings: IntCounterVec,
}

impl ReloadMetrics {
    /// Brings the counters up to what the plugin directories' reads
    /// counted so far (each counter holds what it already published).
    fn publish_listings(&self) {
        let (events, full) = file_cache::listing_totals();
        let catch_up = |counter: &IntCounter, total: u64| {
            counter.inc_by(total.saturating_sub(counter.get()));
        };
        catch_up(&self.plugin_dir_events, events);
        for (reason, total) in RescanReason::ALL.iter().zip(full) {
            catch_up(
                &self
                    .plugin_dir_full_listings
                    .with_label_values(&[reason.label()]),
                total,
            );
        }
    }
}

impl Part for ReloadMetrics {
    fn register(r: &Registry) -> Self {
        let labels: Vec<&str> = RescanReason::ALL.iter().map(|r| r.label()).collect();
        Self {
            plugin_dir_events: counter(
                r,
                "iicp_plugin_dir_events_total",
                "Change events read from the watch on node.plugin_dirs (a reload looks only at the files they name).",
            ),
            plugin_dir_full_listings: seeded_counter_vec(
                r,
                "iicp_plugin_dir_full_listings_total",
                "Reads of node.plugin_dirs that listed and stat-ed every file, by reason (new_watch, overflow, too_many_changes, directory_gone, unwatched).",
                "reason",
                &labels,
            ),
            reloads: seeded_counter_vec(
                r,
                "iicp_reloads_total",
                "Configuration reloads, by result (partial: applied without the plugins that failed).",
                "result",
                &["ok", "partial", "error"],
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn config(node_keys: &str) -> NodeConfig {
        let text = format!("[node]\n{node_keys}\n[[plugin]]\npath = \"a.wasm\"\n");
        crate::config::file::parse(&text, Path::new("/etc/iicp")).unwrap()
    }

    #[test]
    fn every_changed_node_key_but_the_live_ones_needs_a_restart() {
        let running = config("region = \"eu\"\nmax_concurrent = 8");
        assert!(restart_needed(&running, &running.clone()).is_empty());
        let next = config("region = \"us\"\nmax_concurrent = 8\nqos_wait_ms = 10");
        assert_eq!(
            restart_needed(&running, &next),
            ["node.qos_wait_ms", "node.region"]
        );
        // A reload reads the plugin directories again.
        let mut more_dirs = running.clone();
        more_dirs.node.plugin_dirs = vec!["/etc/iicp/plugins.d".into()];
        assert!(restart_needed(&running, &more_dirs).is_empty());
    }
}
