//! Which plugin serves which intent, and everything the server keeps per
//! plugin: its effective capabilities (operator overrides applied), its
//! admission gate, tenants, drain switch, live counters and resolved metric
//! children. A table is immutable; a reload builds a new one and swaps it in
//! whole, carrying over gates, counters and drain switches of plugins that
//! keep their id, so in-flight tasks of the old version still count. The
//! new table starts from the serving one's indexes and is patched with what
//! changed, so a reload of one plugin among thousands touches one entry.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use super::access::{AccessPolicy, Tenant};
use super::admission::AdmissionGate;
use super::drain::{Drain, DrainSwitch};
use super::shared_index::SharedIndex;
use crate::metrics::Metrics;
use crate::runtime::plugin::{CapabilityInfo, LoadedPlugin, PluginSource};
use crate::server::metrics::{IntentMetrics, PluginMetrics, ServerMetrics};

/// One plugin as the operator configured it.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginSpec {
    /// What the runtime loads.
    pub source: PluginSource,
    /// Intents served, replacing the plugin's own list when set.
    pub intents: Option<Vec<String>>,
    /// Models advertised, replacing the plugin's own when set.
    pub models: Option<Vec<String>>,
    /// This plugin's task slots, within the node's (default: the node's).
    pub max_concurrent: Option<u32>,
    /// Tenants allowed to call it (name, token); empty means open.
    pub tenants: Vec<(String, String)>,
    /// Whether the operator set its `memory_mb` (here, in `[defaults]` or
    /// with `--memory-mb`); if not, the node may size it to its memory.
    pub memory_given: bool,
}

impl PluginSpec {
    /// A plugin with no overrides, open to everyone.
    pub fn new(source: PluginSource) -> Self {
        Self {
            source,
            intents: None,
            models: None,
            max_concurrent: None,
            tenants: Vec::new(),
            memory_given: false,
        }
    }
}

/// Tasks a plugin finished, across its versions.
#[derive(Debug, Default)]
pub struct PluginCounters {
    /// Tasks that succeeded.
    pub served: AtomicU64,
    /// Tasks that failed.
    pub failed: AtomicU64,
}

/// Whether `a` and `b` are the same settings: the same shared spec (what a
/// reload finds for every plugin whose table did not change), else equal.
pub fn same_spec(a: &Arc<PluginSpec>, b: &Arc<PluginSpec>) -> bool {
    Arc::ptr_eq(a, b) || a == b
}

/// A plugin as the server serves it.
pub struct PluginEntry {
    /// The loaded plugin.
    pub plugin: Arc<LoadedPlugin>,
    /// How the operator configured it (shared with the configuration it
    /// came from, so an unchanged plugin is recognised by pointer).
    pub spec: Arc<PluginSpec>,
    /// What it serves, overrides applied.
    pub capabilities: Vec<CapabilityInfo>,
    /// Its own task slots, inside the node's.
    pub gate: Arc<AdmissionGate>,
    /// Who may call it.
    pub access: AccessPolicy,
    /// On while it is drained: new tasks are refused, running ones finish.
    pub drain: Arc<DrainSwitch>,
    /// Finished tasks.
    pub counters: Arc<PluginCounters>,
    /// Its metrics.
    pub metrics: PluginMetrics,
}

impl PluginEntry {
    /// The drain it is under, if any.
    pub fn drained(&self) -> Option<Drain> {
        self.drain.get()
    }
}

/// Where one intent goes.
#[derive(Clone)]
pub struct Route {
    /// The plugin serving the intent.
    pub entry: Arc<PluginEntry>,
    /// The intent's metrics (shared: a reload copies every route).
    pub metrics: Arc<IntentMetrics>,
}

/// The routing table: intent → plugin.
#[derive(Default)]
pub struct PluginTable {
    entries: Vec<Arc<PluginEntry>>,
    /// The entries by plugin id: a reload looks plugins up by id, so this
    /// must not be a scan. The entry itself, not a place in `entries`, so
    /// that a reload can carry the index over while places shift.
    by_id: SharedIndex<Arc<str>, Arc<PluginEntry>>,
    routes: SharedIndex<Arc<str>, Route>,
}

/// The capabilities a plugin is served with: its own, or the operator's
/// subset of them, with the operator's model list when given. An intent the
/// plugin does not declare is refused: the plugin would answer every such
/// task 404 `unknown_intent`.
fn effective_capabilities(
    plugin: &LoadedPlugin,
    spec: &PluginSpec,
) -> Result<Vec<CapabilityInfo>, String> {
    let own = &plugin.info.capabilities;
    let mut capabilities: Vec<CapabilityInfo> = match &spec.intents {
        None => own.clone(),
        Some(intents) => intents
            .iter()
            .map(|intent| {
                own.iter()
                    .find(|c| &c.intent == intent)
                    .cloned()
                    .ok_or_else(|| {
                        let declared: Vec<&str> = own.iter().map(|c| c.intent.as_str()).collect();
                        format!(
                            "plugin {:?}: intents: {intent} is not declared by the plugin (it declares {})",
                            plugin.id,
                            declared.join(", ")
                        )
                    })
            })
            .collect::<Result<_, _>>()?,
    };
    if let Some(models) = &spec.models {
        for capability in &mut capabilities {
            capability.models.clone_from(models);
        }
    }
    Ok(capabilities)
}

/// A plugin version's `iicp_plugin_info` labels.
fn info_labels(plugin: &LoadedPlugin) -> [String; 4] {
    [
        plugin.id.to_string(),
        plugin.info.name.clone(),
        plugin.info.version.clone(),
        plugin.sha256.clone(),
    ]
}

impl PluginTable {
    /// Builds a table at start-up. Two plugins claiming one intent is an
    /// error naming both.
    pub fn build(
        plugins: Vec<(Arc<LoadedPlugin>, Arc<PluginSpec>)>,
        metrics: &Metrics,
        node_capacity: u32,
    ) -> Result<Self, String> {
        let mut builder = TableBuilder::new(plugins.len(), metrics, node_capacity, None);
        for (plugin, spec) in plugins {
            let slot = builder.reserve();
            builder.add(slot, plugin, spec)?;
        }
        Ok(builder.finish())
    }

    /// An entry for `plugin`, with the gate, counters, drain switch and
    /// metric series of the entry it replaces (`before`), if any.
    fn new_entry(
        plugin: Arc<LoadedPlugin>,
        spec: Arc<PluginSpec>,
        capacity: u32,
        before: Option<&Arc<PluginEntry>>,
        metrics: &Metrics,
    ) -> Result<PluginEntry, String> {
        let gate = before
            .filter(|e| e.gate.capacity() == capacity)
            .map_or_else(
                || Arc::new(AdmissionGate::new(capacity)),
                |e| e.gate.clone(),
            );
        let access = if spec.tenants.is_empty() {
            AccessPolicy::Open
        } else {
            AccessPolicy::Tenants(
                spec.tenants
                    .iter()
                    .map(|(name, token)| Tenant::new(name, token))
                    .collect(),
            )
        };
        Ok(PluginEntry {
            capabilities: effective_capabilities(&plugin, &spec)?,
            gate,
            access,
            drain: before.map_or_else(Default::default, |e| e.drain.clone()),
            counters: before.map_or_else(Default::default, |e| e.counters.clone()),
            // Resolved series are kept across reloads: resolving them
            // again is most of what rebuilding a large table costs.
            metrics: before.map_or_else(
                || metrics.part::<ServerMetrics>().plugin(&plugin.id),
                |e| e.metrics.clone(),
            ),
            plugin,
            spec,
        })
    }

    /// Shows this table's plugin versions, and only those, in
    /// `iicp_plugin_info`; call once the table serves.
    pub fn publish_info(&self, metrics: &Metrics) {
        metrics.part::<ServerMetrics>().plugins_served(
            self.entries
                .iter()
                .map(|e| info_labels(&e.plugin))
                .collect(),
        );
    }

    /// Updates `iicp_plugin_info` from `previous` to this table, looking
    /// only at the plugins called `ids` (those a reload loaded, removed or
    /// failed): every other plugin kept its version and its series.
    pub fn publish_info_changes<'i>(
        &self,
        previous: &PluginTable,
        ids: impl IntoIterator<Item = &'i str>,
        metrics: &Metrics,
    ) {
        let (mut gone, mut new) = (Vec::new(), Vec::new());
        for id in ids {
            let (before, now) = (previous.entry(id), self.entry(id));
            if let (Some(b), Some(n)) = (before, now)
                && Arc::ptr_eq(&b.plugin, &n.plugin)
            {
                continue;
            }
            gone.extend(before.map(|e| info_labels(&e.plugin)));
            new.extend(now.map(|e| info_labels(&e.plugin)));
        }
        metrics
            .part::<ServerMetrics>()
            .plugin_versions_changed(gone, new);
    }

    /// The route for `intent`, if any plugin serves it.
    pub fn route(&self, intent: &str) -> Option<&Route> {
        self.routes.get(intent)
    }

    /// The plugin called `id`.
    pub fn entry(&self, id: &str) -> Option<&Arc<PluginEntry>> {
        self.by_id.get(id)
    }

    /// Whether the intents served, in order, differ from `other`'s. Entries
    /// at the same place that are one entry (all a reload kept) are not
    /// looked into, so a reload of one plugin compares one plugin's.
    pub fn intents_differ(&self, other: &PluginTable) -> bool {
        if self.entries.len() != other.entries.len() {
            return self.intents() != other.intents();
        }
        fn intents(e: &PluginEntry) -> impl Iterator<Item = &str> {
            e.capabilities.iter().map(|c| c.intent.as_str())
        }
        self.entries
            .iter()
            .zip(&other.entries)
            .filter(|(a, b)| !Arc::ptr_eq(a, b))
            .any(|(a, b)| !intents(a).eq(intents(b)))
    }

    /// Every plugin, in configuration order.
    pub fn entries(&self) -> &[Arc<PluginEntry>] {
        &self.entries
    }

    /// Every capability served, in plugin and declaration order.
    pub fn capabilities(&self) -> impl Iterator<Item = &CapabilityInfo> {
        self.entries.iter().flat_map(|e| e.capabilities.iter())
    }

    /// Every intent served, in plugin and declaration order.
    pub fn intents(&self) -> Vec<&str> {
        self.capabilities().map(|c| c.intent.as_str()).collect()
    }

    /// Every model served, each once, in plugin and declaration order.
    pub fn models(&self) -> Vec<&str> {
        let mut models: Vec<&str> = Vec::new();
        for model in self.capabilities().flat_map(|c| c.models.iter()) {
            if !models.contains(&model.as_str()) {
                models.push(model);
            }
        }
        models
    }
}

/// Builds a table in configuration order while plugins join in another
/// (a reload adds the plugins it keeps first, then the new versions, each
/// of which may fail): each plugin's place is reserved when its turn in
/// the configuration comes, so nothing is sorted afterwards. From a
/// previous table, the indexes start as that table's: a plugin kept as it
/// was is only placed, those leaving are [`TableBuilder::release`]d, and
/// only new versions are indexed, so the work is the delta's.
pub struct TableBuilder<'a> {
    slots: Vec<Option<Arc<PluginEntry>>>,
    by_id: SharedIndex<Arc<str>, Arc<PluginEntry>>,
    routes: SharedIndex<Arc<str>, Route>,
    /// Entries placed whose spec has no operator id: only those can be
    /// named by two specs (ids are unique in a configuration).
    placed_without_id: HashSet<usize>,
    /// Nothing released or added yet: the indexes are the previous table's.
    pristine: bool,
    metrics: &'a Metrics,
    node_capacity: u32,
    previous: Option<&'a PluginTable>,
}

impl<'a> TableBuilder<'a> {
    /// A builder for about `plugins` plugins. `previous` (a reload's
    /// serving table) lends its indexes, and gates, counters, drain
    /// switches and metric series to plugins that keep their id (a gate
    /// only when the plugin's slot count is unchanged).
    pub fn new(
        plugins: usize,
        metrics: &'a Metrics,
        node_capacity: u32,
        previous: Option<&'a PluginTable>,
    ) -> Self {
        // Copies that share the previous table's indexes (see
        // `shared_index`): a reload patches them with what changed.
        let (by_id, routes) = match previous {
            Some(table) => (table.by_id.clone(), table.routes.clone()),
            None => Default::default(),
        };
        Self {
            slots: Vec::with_capacity(plugins),
            by_id,
            routes,
            placed_without_id: HashSet::new(),
            pristine: true,
            metrics,
            node_capacity,
            previous,
        }
    }

    /// The next place in configuration order, empty until filled.
    pub fn reserve(&mut self) -> usize {
        self.slots.push(None);
        self.slots.len() - 1
    }

    /// Puts `plugin` in `slot`, or nothing: an id taken, an intent served by
    /// a plugin already added or an intent the plugin does not declare is
    /// an error, and the table is then as it was (a reload leaves that
    /// plugin out, or keeps its previous version, and applies the rest).
    pub fn add(
        &mut self,
        slot: usize,
        plugin: Arc<LoadedPlugin>,
        spec: Arc<PluginSpec>,
    ) -> Result<(), String> {
        self.pristine = false;
        let capacity = spec.max_concurrent.unwrap_or(self.node_capacity);
        let before = self.previous.and_then(|p| p.entry(&plugin.id));
        // A plugin kept as it was keeps its whole entry: a reload of one
        // plugin among thousands rebuilds one entry, and freeing the
        // replaced table frees only what changed. Settings equal but built
        // again get an entry holding them, so the next reload finds the
        // plugin by pointer.
        let unchanged = before.filter(|e| {
            Arc::ptr_eq(&e.plugin, &plugin)
                && Arc::ptr_eq(&e.spec, &spec)
                && e.gate.capacity() == capacity
        });
        let entry = match unchanged {
            Some(entry) => entry.clone(),
            None => Arc::new(PluginTable::new_entry(
                plugin,
                spec,
                capacity,
                before,
                self.metrics,
            )?),
        };
        self.keep(slot, &entry)
    }

    /// Puts the serving `entry` in `slot` as it is: the caller found its
    /// plugin, settings and slot count unchanged. An entry the indexes
    /// still hold (kept from the previous table) is only placed.
    pub fn keep(&mut self, slot: usize, entry: &Arc<PluginEntry>) -> Result<(), String> {
        let id = &entry.plugin.id;
        if entry.spec.source.id.is_none() && !self.placed_without_id.insert(address(entry)) {
            return Err(taken(id));
        }
        if !self.holds(entry) {
            if self.by_id.contains_key(id) {
                self.placed_without_id.remove(&address(entry));
                return Err(taken(id));
            }
            if let Err(error) = self.add_routes(entry) {
                self.placed_without_id.remove(&address(entry));
                return Err(error);
            }
            self.by_id.insert(id.clone(), entry.clone());
        }
        self.slots[slot] = Some(entry.clone());
        Ok(())
    }

    /// Puts `entry`, an entry of the previous table, in `slot` before any
    /// [`Self::release`] or [`Self::add`]: the indexes copied from that
    /// table hold it, so nothing is looked up (a reload of thousands keeps
    /// thousands). Only a second place for one entry is refused.
    pub fn keep_serving(&mut self, slot: usize, entry: &Arc<PluginEntry>) -> Result<(), String> {
        debug_assert!(self.pristine && self.holds(entry));
        if entry.spec.source.id.is_none() && !self.placed_without_id.insert(address(entry)) {
            return Err(taken(&entry.plugin.id));
        }
        self.slots[slot] = Some(entry.clone());
        Ok(())
    }

    /// Whether the indexes hold `entry` itself.
    fn holds(&self, entry: &Arc<PluginEntry>) -> bool {
        self.by_id
            .get(&entry.plugin.id)
            .is_some_and(|e| Arc::ptr_eq(e, entry))
    }

    /// Takes `entry` (of the previous table) out of the indexes: it leaves
    /// the table, or a new version replaces it.
    pub fn release(&mut self, entry: &Arc<PluginEntry>) {
        self.pristine = false;
        let id = &entry.plugin.id;
        if self.by_id.get(id).is_some_and(|e| Arc::ptr_eq(e, entry)) {
            self.by_id.remove(id);
        }
        for capability in &entry.capabilities {
            let intent = capability.intent.as_str();
            if self
                .routes
                .get(intent)
                .is_some_and(|r| Arc::ptr_eq(&r.entry, entry))
            {
                self.routes.remove(intent);
            }
        }
    }

    /// The plugin in `slot`, if any.
    pub fn slot(&self, slot: usize) -> Option<&Arc<PluginEntry>> {
        self.slots.get(slot)?.as_ref()
    }

    /// Whether `entry`, the serving version a new one replaces, was placed
    /// (as the plugin another spec kept). Only one whose spec has no
    /// operator id can be: ids are unique, so one with an id is named by
    /// that id's spec alone, the one that loaded anew.
    pub fn replaced_is_placed(&self, entry: &Arc<PluginEntry>) -> bool {
        entry.spec.source.id.is_none() && self.placed_without_id.contains(&address(entry))
    }

    /// The address of every entry placed.
    pub fn placed_addresses(&self) -> HashSet<usize> {
        self.slots.iter().flatten().map(address).collect()
    }

    /// Routes `entry`'s intents to it, keeping each intent's route (key and
    /// metric series) when the same plugin served it before.
    fn add_routes(&mut self, entry: &Arc<PluginEntry>) -> Result<(), String> {
        // Every intent is checked before any is routed, so a refused plugin
        // leaves no route behind.
        for capability in &entry.capabilities {
            let intent = capability.intent.as_str();
            if let Some(other) = self.routes.get(intent) {
                return Err(format!(
                    "plugins {:?} and {:?} both serve intent {intent}",
                    other.entry.plugin.id, entry.plugin.id
                ));
            }
        }
        for capability in &entry.capabilities {
            let intent = capability.intent.as_str();
            let before = self
                .previous
                .and_then(|p| p.routes.get_key_value(intent))
                .filter(|(_, r)| r.entry.plugin.id == entry.plugin.id);
            let (key, metrics) = match before {
                Some((key, route)) => (key.clone(), route.metrics.clone()),
                None => (
                    intent.into(),
                    Arc::new(
                        self.metrics
                            .part::<ServerMetrics>()
                            .intent(&entry.plugin.id, intent),
                    ),
                ),
            };
            let route = Route {
                entry: entry.clone(),
                metrics,
            };
            self.routes.insert(key, route);
        }
        Ok(())
    }

    /// The table, in configuration order (places left empty dropped). The
    /// caller released every previous entry that is not placed.
    pub fn finish(self) -> PluginTable {
        PluginTable {
            entries: self.slots.into_iter().flatten().collect(),
            by_id: self.by_id,
            routes: self.routes,
        }
    }
}

/// Where an entry lives: its identity while a reload builds a table (an
/// address, not a pointer, so the reload's future stays `Send`).
pub fn address(entry: &Arc<PluginEntry>) -> usize {
    Arc::as_ptr(entry) as usize
}

fn taken(id: &str) -> String {
    format!("two plugins are called {id:?}; give them distinct ids")
}
