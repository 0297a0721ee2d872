//! The TOML configuration file (`iicp-host run --config iicp-host.toml`).
//! See `iicp-host.example.toml` for every key with its default.
//!
//! Unknown keys are errors, and every error names the file, the key and
//! what is wrong, so a typo cannot silently fall back to a default.
//! Relative paths are relative to the file's directory. Secrets never live
//! in the file: it names environment variables that hold them.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use super::file_cache::ParsedFileCache;
use super::table_split::{self, Piece, Recut};

use super::{
    AdminSettings, AuthSettings, NodeConfig, OCI_STORE_SUBDIR, PluginSpec, ReachSettings,
    default_cache_dir,
};
use crate::config::memory::{GivenKnobs, MemorySettings};
use crate::directory::settings::{
    CipPolicy, DirectorySection, DirectorySettings, PricingSettings, TransportSettings,
};
use crate::oci::OciLocation;
use crate::oci::settings::OciSection;
use crate::oci::signature::{SignatureKey, SignaturePolicy};
use crate::peers::settings::PeerSettings;
use crate::relay::settings::{RelaySettings, WorkerSettings};
use crate::runtime::host::http::HttpSettings;
use crate::runtime::host::http_settings::HttpKeys;
use crate::runtime::limit_settings::LimitKeys;
use crate::runtime::limits::PluginLimits;
use crate::runtime::plugin::PluginSource;
use crate::server::node_settings::NodeSection;
use crate::server::settings::{AdminSection, AuthSection};
use crate::settings::{Overrides, check_range, check_section};
use crate::telemetry::otlp::ExportSettings;

/// A configuration error: which file, and what is wrong in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong, naming the key.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.message)
    }
}

impl std::error::Error for ConfigError {}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    node: NodeSection,
    admin: Option<AdminSection>,
    directory: Option<DirectorySection>,
    pricing: Option<PricingSettings>,
    policy: Option<CipPolicy>,
    transport: Option<TransportSettings>,
    auth: Option<AuthSection>,
    relay: Option<WorkerSettings>,
    relay_capable: Option<RelaySettings>,
    peers: Option<PeerSettings>,
    telemetry: Option<ExportSettings>,
    #[serde(default)]
    defaults: LimitKeys,
    #[serde(default)]
    oci: OciSection,
    #[serde(default, rename = "plugin")]
    plugins: Vec<PluginSection>,
}

/// A file of a plugin directory: `[[plugin]]` tables and nothing else.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PluginFile {
    #[serde(default, rename = "plugin")]
    plugins: Vec<PluginSection>,
}

/// What a hot reload keeps from the last read so that it parses and
/// builds again only what changed: the parsed files of `node.plugin_dirs`
/// (see [`super::file_cache`]) and the main file's `[[plugin]]` tables by
/// their text (see [`super::table_split`]), each table with the spec last
/// built from it.
#[derive(Default)]
pub struct PluginFileCache {
    files: ParsedFileCache<Vec<Arc<CachedTable>>>,
    /// The main file's text at its last read, cut in tables.
    main: std::sync::Mutex<Option<MainText>>,
    /// The plugin list last built, so that the next build looks only at
    /// the tables that changed.
    last: std::sync::Mutex<Option<LastBuild>>,
}

/// One `[[plugin]]` table as parsed, and the spec last built from it with
/// the inputs it was built from.
struct CachedTable {
    section: PluginSection,
    /// A registry plugin's spec is built on every read (its signature keys
    /// are files).
    from_registry: bool,
    built: std::sync::Mutex<Option<(SpecInputs, Arc<PluginSpec>)>>,
}

/// The plugin list of the last build that succeeded: its tables, their
/// specs, and which table claimed each id and intent. A build under the
/// same node-wide inputs whose tables are these but for a few rebuilds and
/// checks those few against the claims (the others were checked together
/// before); anything else, or any error, is checked whole, so errors are
/// the whole check's.
struct LastBuild {
    node_inputs: NodeInputs,
    /// Each table, its directory, and whether it is a registry plugin's
    /// (kept here: a look into each of thousands of tables is a cache miss).
    tables: Vec<(Arc<CachedTable>, Arc<Path>, bool)>,
    specs: Vec<Arc<PluginSpec>>,
    claims: Claims,
}

/// Which table claimed each plugin id and each intent: one table each.
#[derive(Default)]
struct Claims {
    ids: HashMap<String, usize>,
    intents: HashMap<String, usize>,
}

/// What another table already claimed.
enum Clash<'s> {
    Id(&'s str),
    /// The intent and the table that holds it.
    Intent(&'s str, usize),
}

impl Claims {
    fn with_capacity(tables: usize) -> Self {
        Self {
            ids: HashMap::with_capacity(tables),
            intents: HashMap::with_capacity(tables),
        }
    }

    /// Claims `spec`'s id and intents for table `index`. One table never
    /// lists an intent twice (`plugin_spec` refuses it), so an intent
    /// already claimed is another table's.
    fn claim<'s>(&mut self, index: usize, spec: &'s PluginSpec) -> Result<(), Clash<'s>> {
        if let Some(id) = &spec.source.id
            && self.ids.insert(id.clone(), index).is_some()
        {
            return Err(Clash::Id(id));
        }
        for intent in spec.intents.iter().flatten() {
            if let Some(other) = self.intents.insert(intent.clone(), index) {
                return Err(Clash::Intent(intent, other));
            }
        }
        Ok(())
    }

    /// Gives up what table `index` claimed for `spec`.
    fn release(&mut self, index: usize, spec: &PluginSpec) {
        let release = |claims: &mut HashMap<String, usize>, key: &String| {
            if claims.get(key) == Some(&index) {
                claims.remove(key);
            }
        };
        if let Some(id) = &spec.source.id {
            release(&mut self.ids, id);
        }
        for intent in spec.intents.iter().flatten() {
            release(&mut self.intents, intent);
        }
    }
}

/// The node-wide part of [`SpecInputs`].
#[derive(Clone, PartialEq)]
struct NodeInputs {
    defaults: PluginLimits,
    defaults_memory_given: bool,
    node_max_concurrent: u32,
}

/// What a table's spec depends on besides the table: the same table under
/// the same inputs builds the same spec (secrets and tenant tokens come
/// from this process's environment, which nothing outside it changes).
#[derive(Clone)]
struct SpecInputs {
    node: NodeInputs,
    base: Arc<Path>,
}

impl PartialEq for SpecInputs {
    fn eq(&self, other: &Self) -> bool {
        self.node == other.node && same_path(&self.base, &other.base)
    }
}

/// One shared path, else equal ones.
fn same_path(a: &Arc<Path>, b: &Arc<Path>) -> bool {
    Arc::ptr_eq(a, b) || a == b
}

impl CachedTable {
    fn new(section: PluginSection) -> Arc<Self> {
        Arc::new(Self {
            from_registry: OciLocation::from_path(&section.path).is_some(),
            section,
            built: std::sync::Mutex::new(None),
        })
    }

    /// The spec under `inputs`: the one built last time when they are the
    /// same, else `build`'s. A registry plugin's is always built again (its
    /// signature keys are files read on each reload).
    fn spec(
        &self,
        inputs: &SpecInputs,
        build: impl FnOnce(PluginSection) -> Result<PluginSpec, String>,
    ) -> Result<Arc<PluginSpec>, String> {
        let mut built = self.built.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((known, spec)) = &*built
            && known == inputs
        {
            return Ok(spec.clone());
        }
        let spec = Arc::new(build(self.section.clone())?);
        if !self.from_registry {
            *built = Some((inputs.clone(), spec.clone()));
        }
        Ok(spec)
    }
}

#[derive(Deserialize, Clone, Default)]
#[serde(deny_unknown_fields)]
struct PluginSection {
    id: Option<String>,
    path: PathBuf,
    intents: Option<Vec<String>>,
    models: Option<Vec<String>>,
    max_concurrent: Option<u32>,
    memory_mb: Option<u32>,
    timeout_ms: Option<u64>,
    max_timeout_ms: Option<u64>,
    instance_reuse: Option<u32>,
    instance_idle_ms: Option<u64>,
    max_resources: Option<u32>,
    host_memory_kib: Option<u32>,
    max_output_kib: Option<u32>,
    #[serde(default)]
    config: toml::Table,
    /// Secret name → environment variable holding the value.
    #[serde(default)]
    secrets: BTreeMap<String, String>,
    /// Tenant name → environment variable holding its token.
    #[serde(default)]
    tenants: BTreeMap<String, String>,
    http: Option<HttpKeys>,
    /// The local file may be a compiled artifact.
    #[serde(default)]
    precompiled: bool,
    /// Public keys one of which must have signed this `oci://` plugin
    /// (instead of `[oci] signature_keys`).
    signature_keys: Option<Vec<PathBuf>>,
}

const MAX_PLUGIN_ID_BYTES: usize = 64;

/// Reads and validates a configuration file and the files of its
/// `node.plugin_dirs`.
pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
    load_cached(path, &PluginFileCache::default(), &Overrides::default())
}

/// [`load`], parsing again only the plugin-directory files that changed
/// since `cache` last saw them (hot reloads).
pub fn load_cached(
    path: &Path,
    cache: &PluginFileCache,
    overrides: &Overrides,
) -> Result<NodeConfig, ConfigError> {
    let error = |message: String| ConfigError {
        path: path.to_path_buf(),
        message,
    };
    let text =
        std::fs::read_to_string(path).map_err(|e| error(format!("cannot read the file: {e}")))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let (mut file, tables) = cache.parse_main(text).map_err(error)?;
    stack_file_tables(&mut file, overrides).map_err(error)?;
    let dirs: Vec<PathBuf> = std::mem::take(&mut file.node.plugin_dirs)
        .into_iter()
        .map(|dir| resolve(base, dir))
        .collect();
    let mut plugins = located(tables, base);
    let listing = cache
        .files
        .read_dirs(&dirs, |text| {
            let file: PluginFile = toml::from_str(text).map_err(|e| one_line(&e.to_string()))?;
            Ok(file.plugins.into_iter().map(CachedTable::new).collect())
        })
        .map_err(|e| error(format!("node.plugin_dirs: {e}")))?;
    if !dirs.is_empty() {
        tracing::debug!(
            parsed = listing.stats.parsed,
            reused = listing.stats.reused,
            listed_all = ?listing.stats.listed_all,
            events = listing.stats.events,
            "plugin directories read"
        );
    }
    // One shared path per directory, not one per file.
    let mut dir: Arc<Path> = base.into();
    for (file_path, parsed) in listing.files {
        let parent = file_path.parent().unwrap_or(base);
        if *dir != *parent {
            dir = parent.into();
        }
        plugins.extend(parsed.iter().map(|table| LocatedPlugin {
            table: table.clone(),
            base: dir.clone(),
            file: Some(file_path.clone()),
        }));
    }
    let mut config = build(file, base, plugins, Some(&cache.last)).map_err(error)?;
    config.node.plugin_dirs = dirs;
    config.config_path = Some(path.to_path_buf());
    Ok(config)
}

/// Parses and validates configuration text, resolving relative paths
/// against `base_dir`. Touches no file but the public keys it names (a
/// `node.plugin_dirs` is refused: it needs [`load`]); reads only the environment variables the text names
/// for secrets, and the cache directory's defaults (`XDG_CACHE_HOME`,
/// `HOME`).
pub fn parse(text: &str, base_dir: &Path) -> Result<NodeConfig, String> {
    let mut file = parse_file(text)?;
    refuse_plugin_dirs(&file)?;
    let tables = std::mem::take(&mut file.plugins)
        .into_iter()
        .map(CachedTable::new)
        .collect();
    build(file, base_dir, located(tables, base_dir), None)
}

/// The configuration of `--plugin PATH`: that plugin with every default,
/// and the `[node]` and `[defaults]` keys the environment and `--set` give
/// (paths relative to the working directory).
pub fn for_plugin(path: PathBuf, overrides: &Overrides) -> Result<NodeConfig, String> {
    let mut file = FileConfig::default();
    stack_file_tables(&mut file, overrides)?;
    refuse_plugin_dirs(&file)?;
    let plugin = PluginSection {
        path,
        ..PluginSection::default()
    };
    build(
        file,
        Path::new(""),
        located(vec![CachedTable::new(plugin)], Path::new("")),
        None,
    )
}

/// Plugin directories are read by [`load`] only.
fn refuse_plugin_dirs(file: &FileConfig) -> Result<(), String> {
    if file.node.plugin_dirs.is_empty() {
        return Ok(());
    }
    Err(
        "node.plugin_dirs: only a configuration file read from disk may name plugin directories"
            .to_string(),
    )
}

/// Stacks the environment's and `--set`'s keys of the sections the build
/// resolves (`sections::FILE_SECTIONS`: they name files and variables) over
/// the file's tables, each checked once with the source of a bad key named.
fn stack_file_tables(file: &mut FileConfig, overrides: &Overrides) -> Result<(), String> {
    file.node = overrides
        .layer(Some(std::mem::take(&mut file.node)))?
        .unwrap_or_default();
    file.defaults = overrides
        .layer(Some(std::mem::take(&mut file.defaults)))?
        .unwrap_or_default();
    file.oci = overrides
        .layer(Some(std::mem::take(&mut file.oci)))?
        .unwrap_or_default();
    file.auth = overrides.layer(file.auth.take())?;
    file.directory = overrides.layer(file.directory.take())?;
    file.admin = overrides.layer(file.admin.take())?;
    Ok(())
}

/// A `[[plugin]]` table, the directory its relative paths start from, and
/// the plugin-directory file it came from (none for the main file).
struct LocatedPlugin {
    table: Arc<CachedTable>,
    base: Arc<Path>,
    file: Option<Arc<Path>>,
}

fn located(tables: Vec<Arc<CachedTable>>, base: &Path) -> Vec<LocatedPlugin> {
    let base: Arc<Path> = base.into();
    tables
        .into_iter()
        .map(|table| LocatedPlugin {
            table,
            base: base.clone(),
            file: None,
        })
        .collect()
}

impl PluginFileCache {
    /// Parses the main file, its `[[plugin]]` tables apart: only the text
    /// between the first and the last byte that differ from the last read
    /// is cut again ([`table_split::recut`]), and of that only the tables
    /// whose text is new are parsed. Any piece cut anew that does not
    /// parse alone (or a layout [`table_split::cut`] leaves to the whole
    /// parse) parses the whole text, so results and errors are the whole
    /// parse's; the pieces kept parsed alone when they were read.
    fn parse_main(&self, text: String) -> Result<(FileConfig, Vec<Arc<CachedTable>>), String> {
        let whole = |text: &str| {
            let mut file = parse_file(text)?;
            let tables = std::mem::take(&mut file.plugins)
                .into_iter()
                .map(CachedTable::new)
                .collect();
            Ok((file, tables))
        };
        let mut known = self.main.lock().unwrap_or_else(|p| p.into_inner());
        let last = known.get_or_insert_with(MainText::default);
        let recut = if last.pieces.is_empty() {
            table_split::cut(&text).map(|middle| Recut {
                front: 0,
                middle,
                back: 0,
            })
        } else {
            table_split::recut(&last.text, &last.pieces, &text)
        };
        let Some(recut) = recut else {
            return whole(&text);
        };
        let replaced = recut.front..last.pieces.len() - recut.back;
        let Some(middle_tables) = last.tables_cut_anew(replaced.clone(), &recut.middle, &text)
        else {
            return whole(&text);
        };
        // The other settings: every piece that is not a plugin table. The
        // kept ones read the same in the last text.
        fn rest<'t>(pieces: &[Piece], text: &'t str) -> impl Iterator<Item = &'t str> {
            pieces.iter().filter(|p| !p.plugin).map(|p| p.of(text))
        }
        let mut rest_text: String = rest(&last.pieces[..replaced.start], &last.text).collect();
        rest_text.extend(rest(&recut.middle, &text));
        rest_text.extend(rest(&last.pieces[replaced.end..], &last.text));
        let file = match parse_file(&rest_text) {
            Ok(file) if file.plugins.is_empty() => file,
            _ => return whole(&text),
        };
        let cut_anew = recut.middle.len();
        last.pieces.splice(replaced.clone(), recut.middle);
        last.tables.splice(replaced.clone(), middle_tables);
        if text.len() != last.text.len() {
            for piece in &mut last.pieces[replaced.start + cut_anew..] {
                piece.start = piece.start + text.len() - last.text.len();
                piece.end = piece.end + text.len() - last.text.len();
            }
        }
        last.text = text;
        let tables = last.tables.iter().flatten().cloned().collect();
        Ok((file, tables))
    }
}

/// The main file's text at its last read, cut in pieces, with the table
/// parsed from each plugin piece (`None` for the other pieces).
#[derive(Default)]
struct MainText {
    text: String,
    pieces: Vec<Piece>,
    tables: Vec<Option<Arc<CachedTable>>>,
}

impl MainText {
    /// The tables of `middle`, the pieces of `text` that replace this
    /// text's `replaced` pieces: a table whose text one of those had (an
    /// unchanged or moved table) is that table, any other is parsed.
    /// `None` when a piece does not parse alone.
    fn tables_cut_anew(
        &self,
        replaced: std::ops::Range<usize>,
        middle: &[Piece],
        text: &str,
    ) -> Option<Vec<Option<Arc<CachedTable>>>> {
        let mut by_text: Option<HashMap<&str, &Arc<CachedTable>>> = None;
        let mut tables = Vec::with_capacity(middle.len());
        for piece in middle {
            let piece_text = piece.of(text);
            if !piece.plugin {
                toml::from_str::<toml::Table>(piece_text).ok()?;
                tables.push(None);
                continue;
            }
            let known = by_text
                .get_or_insert_with(|| {
                    let pieces = self.pieces[replaced.clone()].iter();
                    pieces
                        .zip(&self.tables[replaced.clone()])
                        .filter_map(|(p, t)| Some((p.of(&self.text), t.as_ref()?)))
                        .collect()
                })
                .get(piece_text);
            let table = match known {
                Some(table) => Arc::clone(table),
                None => {
                    let parsed = toml::from_str::<PluginFile>(piece_text).ok()?;
                    let [section] = <[PluginSection; 1]>::try_from(parsed.plugins).ok()?;
                    CachedTable::new(section)
                }
            };
            tables.push(Some(table));
        }
        Some(tables)
    }
}

fn parse_file(text: &str) -> Result<FileConfig, String> {
    toml::from_str(text).map_err(|e| one_line(&e.to_string()))
}

/// toml's messages span lines (a source excerpt); keep the gist on one.
fn one_line(message: &str) -> String {
    let lines: Vec<&str> = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let location = lines.first().copied().unwrap_or_default();
    let cause = lines.last().copied().unwrap_or_default();
    if location == cause {
        cause.to_string()
    } else {
        format!("{location}: {cause}")
    }
}

/// `path` relative to the file's directory; `oci://` references as given.
fn resolve(base: &Path, path: PathBuf) -> PathBuf {
    if path.is_absolute() || path.to_str().is_some_and(OciLocation::is_oci) {
        path
    } else {
        base.join(path)
    }
}

fn env_secret(variable: &str, key: &str) -> Result<String, String> {
    match std::env::var(variable) {
        Ok(value) if !value.is_empty() => Ok(value),
        _ => Err(format!("{key}: environment variable {variable} is not set")),
    }
}

/// The node's configuration from the main file's sections and every
/// `[[plugin]]` table with the directory its relative paths start from.
fn build(
    file: FileConfig,
    base: &Path,
    plugin_tables: Vec<LocatedPlugin>,
    last: Option<&std::sync::Mutex<Option<LastBuild>>>,
) -> Result<NodeConfig, String> {
    let mut node = file.node;
    check_section(&node)?;
    let max_concurrent = node.max_concurrent();
    let defaults = file
        .defaults
        .checked_over(&PluginLimits::default(), "defaults")?;
    if plugin_tables.is_empty() {
        return Err("no [[plugin]] table: the node needs at least one plugin".to_string());
    }
    let signatures = SignaturePolicy {
        keys: signature_keys(&file.oci.signature_keys, base, "oci.signature_keys")?,
        require_digest: file.oci.require_digest,
    };
    let node_inputs = NodeInputs {
        defaults,
        defaults_memory_given: file.defaults.memory_mb.is_some(),
        node_max_concurrent: max_concurrent,
    };
    let plugins = plugin_specs(&plugin_tables, &node_inputs, &signatures, last)?;
    let memory = MemorySettings {
        given: GivenKnobs {
            max_concurrent: node.max_concurrent.is_some(),
            max_connections: node.max_connections.is_some(),
            max_unsent_answers: node.max_unsent_answers_mib.is_some(),
            nonce_cache_capacity: node.nonce_cache_capacity.is_some(),
            idempotency_max_bytes: node.idempotency_max_bytes.is_some(),
            max_dns_lookups: node.max_dns_lookups.is_some(),
        },
        sized_plugin_memory_bytes: None,
    };
    let admin = file.admin.map(admin).transpose()?;
    let auth = file.auth.map(auth).transpose()?.unwrap_or_default();
    let telemetry = file.telemetry.unwrap_or_default();
    check_section(&telemetry)?;
    // The tool gate follows the policy table with or without a directory.
    let allow_tool_execution = file.policy.as_ref().is_some_and(|p| p.allow_tool_execution);
    node.cache_dir = node
        .cache_dir
        .take()
        .map(|dir| resolve(base, dir))
        .or_else(default_cache_dir);
    node.state_dir = node.state_dir.take().map(|dir| resolve(base, dir));
    check_section(&file.oci)?;
    let oci = file.oci.settings(
        node.cache_dir
            .as_ref()
            .map(|dir| dir.join(OCI_STORE_SUBDIR)),
    );
    let directory = match file.directory {
        None => None,
        Some(section) => Some(directory(
            section,
            &node,
            file.pricing,
            file.policy,
            file.transport,
        )?),
    };
    if let Some(worker) = &file.relay {
        check_section(worker)?;
    }
    if let Some(relay) = &file.relay_capable {
        check_section(relay)?;
    }
    if let Some(peers) = &file.peers {
        check_section(peers)?;
        if let Some(variable) = &peers.hmac_key_env {
            env_secret(variable, "peers.hmac_key_env")?;
        }
    }
    let reach = ReachSettings {
        relay: file.relay,
        relay_capable: file.relay_capable,
        peers: file.peers,
    };
    if reach.relay.is_some()
        && let Some(directory) = &directory
        && directory.endpoint.is_some()
    {
        return Err(
            "node.endpoint: a node serving through [relay] advertises its relay-for endpoint; remove node.endpoint"
                .to_string(),
        );
    }
    Ok(NodeConfig {
        node,
        auth,
        telemetry,
        allow_tool_execution,
        directory,
        admin,
        reach,
        memory,
        config_path: None,
        oci,
        plugins,
    })
}

/// Every table's spec, each checked alone and all against each other
/// (ids and intents claimed once). With `last`, the list last built is
/// reused but for the tables that changed ([`LastBuild`]).
fn plugin_specs(
    tables: &[LocatedPlugin],
    node: &NodeInputs,
    signatures: &SignaturePolicy,
    last: Option<&std::sync::Mutex<Option<LastBuild>>>,
) -> Result<Vec<Arc<PluginSpec>>, String> {
    let Some(last) = last else {
        return Ok(checked_whole(tables, node, signatures)?.specs);
    };
    let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(known) = last.as_mut() {
        match known.apply(tables, node, signatures) {
            Some(specs) => return Ok(specs),
            None => *last = None,
        }
    }
    let checked = checked_whole(tables, node, signatures)?;
    let specs = checked.specs.clone();
    *last = Some(LastBuild {
        node_inputs: node.clone(),
        tables: tables
            .iter()
            .map(|t| (t.table.clone(), t.base.clone(), t.table.from_registry))
            .collect(),
        specs: checked.specs,
        claims: checked.claims,
    });
    Ok(specs)
}

/// Specs checked together, with which table claimed each id and intent.
struct Checked {
    specs: Vec<Arc<PluginSpec>>,
    claims: Claims,
}

/// Every table's spec, checked in order: the first error found is the one
/// reported.
fn checked_whole(
    tables: &[LocatedPlugin],
    node: &NodeInputs,
    signatures: &SignaturePolicy,
) -> Result<Checked, String> {
    let mut checked = Checked {
        specs: Vec::with_capacity(tables.len()),
        claims: Claims::with_capacity(tables.len()),
    };
    for (index, table) in tables.iter().enumerate() {
        let spec = table_spec(table, index, node, signatures)?;
        match checked.claims.claim(index, &spec) {
            Ok(()) => {}
            Err(Clash::Id(id)) => {
                return Err(format!(
                    "plugin {id:?}: the id is used by two [[plugin]] tables"
                ));
            }
            Err(Clash::Intent(intent, other)) => {
                return Err(format!(
                    "{}: intent {intent} is also claimed by {}",
                    plugin_name(&spec.source.id, index),
                    plugin_name(&checked.specs[other].source.id, other)
                ));
            }
        }
        checked.specs.push(spec);
    }
    Ok(checked)
}

/// The spec of the `index`th table, built again only when it or its inputs
/// changed; an error names the plugin-directory file it came from.
fn table_spec(
    table: &LocatedPlugin,
    index: usize,
    node: &NodeInputs,
    signatures: &SignaturePolicy,
) -> Result<Arc<PluginSpec>, String> {
    let inputs = SpecInputs {
        node: node.clone(),
        base: table.base.clone(),
    };
    table
        .table
        .spec(&inputs, |section| {
            plugin_spec(
                section,
                index,
                &node.defaults,
                node.defaults_memory_given,
                node.node_max_concurrent,
                &table.base,
                signatures,
            )
        })
        .map_err(|e| match &table.file {
            Some(file) => format!("{}: {e}", file.display()),
            None => e,
        })
}

impl LastBuild {
    /// The specs of `tables` when they are the last build's but for some
    /// (a registry plugin's always counts as changed) and those take no id
    /// or intent another table holds; `None` otherwise or on any error,
    /// for the whole check to find. Updates the claims as it goes: after
    /// `None`, this is stale.
    fn apply(
        &mut self,
        tables: &[LocatedPlugin],
        node: &NodeInputs,
        signatures: &SignaturePolicy,
    ) -> Option<Vec<Arc<PluginSpec>>> {
        if self.node_inputs != *node || self.tables.len() != tables.len() {
            return None;
        }
        let changed: Vec<usize> = tables
            .iter()
            .zip(&self.tables)
            .enumerate()
            .filter(|(_, (now, (table, base, from_registry)))| {
                !Arc::ptr_eq(&now.table, table) || !same_path(&now.base, base) || *from_registry
            })
            .map(|(index, _)| index)
            .collect();
        let mut built = Vec::with_capacity(changed.len());
        for &index in &changed {
            built.push(table_spec(&tables[index], index, node, signatures).ok()?);
        }
        for &index in &changed {
            self.claims.release(index, &self.specs[index]);
        }
        for (&index, spec) in changed.iter().zip(built) {
            self.claims.claim(index, &spec).ok()?;
            let now = &tables[index];
            self.tables[index] = (now.table.clone(), now.base.clone(), now.table.from_registry);
            self.specs[index] = spec;
        }
        Some(self.specs.clone())
    }
}

/// Reads the public keys named by `key`, relative to `base`.
fn signature_keys(paths: &[PathBuf], base: &Path, key: &str) -> Result<Vec<SignatureKey>, String> {
    paths
        .iter()
        .map(|path| {
            SignatureKey::load(&resolve(base, path.clone())).map_err(|e| format!("{key}: {e}"))
        })
        .collect()
}

fn plugin_name(id: &Option<String>, index: usize) -> String {
    match id {
        Some(id) => format!("plugin {id:?}"),
        None => format!("[[plugin]] #{}", index + 1),
    }
}

fn plugin_spec(
    plugin: PluginSection,
    index: usize,
    defaults: &PluginLimits,
    defaults_memory_given: bool,
    node_max_concurrent: u32,
    base: &Path,
    node_signatures: &SignaturePolicy,
) -> Result<PluginSpec, String> {
    let name = plugin_name(&plugin.id, index);
    if let Some(id) = &plugin.id
        && (id.is_empty()
            || id.len() > MAX_PLUGIN_ID_BYTES
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "{name}: id must be 1-64 letters, digits, '.', '_' or '-'"
        ));
    }
    let memory_given = plugin.memory_mb.is_some() || defaults_memory_given;
    let limits = LimitKeys {
        memory_mb: plugin.memory_mb,
        timeout_ms: plugin.timeout_ms,
        max_timeout_ms: plugin.max_timeout_ms,
        instance_reuse: plugin.instance_reuse,
        instance_idle_ms: plugin.instance_idle_ms,
        max_resources: plugin.max_resources,
        host_memory_kib: plugin.host_memory_kib,
        max_output_kib: plugin.max_output_kib,
    }
    .checked_over(defaults, &name)?;
    let from_registry = match OciLocation::from_path(&plugin.path) {
        Some(Err(why)) => return Err(format!("{name}: path: {why}")),
        Some(Ok(_)) => true,
        None => false,
    };
    if from_registry && plugin.precompiled {
        return Err(format!(
            "{name}: precompiled: a plugin from a registry is always a .wasm component this node compiles; precompiled = true is for a local file you compiled"
        ));
    }
    if !from_registry && plugin.signature_keys.is_some() {
        return Err(format!(
            "{name}: signature_keys: only a plugin from a registry (oci://) is checked for signatures"
        ));
    }
    let signatures = match (&plugin.signature_keys, from_registry) {
        (_, false) => SignaturePolicy::default(),
        (None, true) => node_signatures.clone(),
        (Some(paths), true) => SignaturePolicy {
            keys: signature_keys(paths, base, &format!("{name}: signature_keys"))?,
            require_digest: node_signatures.require_digest,
        },
    };
    if let Some(intents) = &plugin.intents {
        if intents.is_empty() {
            return Err(format!(
                "{name}: intents must not be empty (leave it out to serve the plugin's own)"
            ));
        }
        if let Some(bad) = intents
            .iter()
            .find(|i| i.is_empty() || i.chars().any(char::is_whitespace))
        {
            return Err(format!("{name}: intents: {bad:?} is not an intent URN"));
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(repeated) = intents.iter().find(|i| !seen.insert(i.as_str())) {
            return Err(format!("{name}: intents: {repeated} is listed twice"));
        }
    }
    let max_concurrent = plugin
        .max_concurrent
        .map(|max| {
            check_range(
                &format!("{name}: max_concurrent"),
                max,
                &(1..=node_max_concurrent),
            )
        })
        .transpose()?;
    let mut config = BTreeMap::new();
    for (key, value) in plugin.config {
        let text = match value {
            toml::Value::String(text) => text,
            toml::Value::Integer(n) => n.to_string(),
            toml::Value::Float(x) => x.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            _ => {
                return Err(format!(
                    "{name}: config.{key} must be a string, number or boolean"
                ));
            }
        };
        config.insert(key, text);
    }
    let mut secrets = BTreeMap::new();
    for (key, variable) in plugin.secrets {
        secrets.insert(
            key.clone(),
            env_secret(&variable, &format!("{name}: secrets.{key}"))?,
        );
    }
    let http = match plugin.http {
        None => HttpSettings::default(),
        Some(keys) => {
            keys.validate().map_err(|e| format!("{name}: http.{e}"))?;
            keys.settings()
        }
    };
    let mut tenants = Vec::new();
    for (tenant, variable) in plugin.tenants {
        tenants.push((
            tenant.clone(),
            env_secret(&variable, &format!("{name}: tenants.{tenant}"))?,
        ));
    }
    Ok(PluginSpec {
        source: PluginSource {
            id: plugin.id,
            path: resolve(base, plugin.path),
            limits,
            config,
            secrets,
            http,
            precompiled: plugin.precompiled,
            signatures,
        },
        intents: plugin.intents,
        models: plugin.models,
        max_concurrent,
        tenants,
        memory_given,
    })
}

fn auth(section: AuthSection) -> Result<AuthSettings, String> {
    check_section(&section)?;
    let mut tokens = Vec::with_capacity(section.tokens.len());
    for (name, variable) in &section.tokens {
        let token = env_secret(variable, &format!("auth.tokens.{name}"))?;
        tokens.push((name.clone(), token));
    }
    Ok(AuthSettings {
        mode: section.mode,
        tokens,
        accept_directory_token: section.accept_directory_token,
        key_refresh: section.key_refresh(),
    })
}

fn admin(section: AdminSection) -> Result<AdminSettings, String> {
    check_section(&section)?;
    Ok(AdminSettings {
        listen: section.listen_addr()?,
        token: env_secret(&section.token_env, "admin.token_env")?,
        max_connections: section.max_connections,
    })
}

fn directory(
    section: DirectorySection,
    node: &NodeSection,
    pricing: Option<PricingSettings>,
    policy: Option<CipPolicy>,
    transport: Option<TransportSettings>,
) -> Result<DirectorySettings, String> {
    check_section(&section)?;
    let pricing = pricing.unwrap_or_default();
    pricing.validate().map_err(|e| format!("pricing.{e}"))?;
    if let Some(policy) = &policy {
        policy.validate().map_err(|e| format!("policy.{e}"))?;
    }
    let transport = transport.unwrap_or_default();
    transport.validate().map_err(|e| format!("transport.{e}"))?;
    let operator_hmac_key = section
        .hmac_key_env
        .as_deref()
        .map(|variable| env_secret(variable, "directory.hmac_key_env"))
        .transpose()?;
    Ok(DirectorySettings {
        pricing,
        policy,
        transport,
        operator_hmac_key,
        ..section.settings(node.endpoint.clone())
    })
}

/// Directory settings with defaults, for `--directory URL` without a file.
pub fn directory_defaults(url: String, endpoint: Option<String>) -> DirectorySettings {
    DirectorySection::new(url).settings(endpoint)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::server::node_settings::DEFAULT_MAX_CONCURRENT;

    fn parse(text: &str) -> Result<NodeConfig, String> {
        super::parse(text, Path::new("/etc/iicp"))
    }

    /// Loads `text` as a file through `cache` and without any, which must
    /// agree (configuration or error).
    fn load_both(cache: &PluginFileCache, text: &str) -> Result<NodeConfig, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, text).unwrap();
        let cached = load_cached(&path, cache, &Overrides::default()).map_err(|e| e.message);
        let whole = load(&path).map_err(|e| e.message);
        let plugins = |c: &Result<NodeConfig, String>| -> Result<Vec<Arc<PluginSpec>>, String> {
            c.as_ref().map(|c| c.plugins.clone()).map_err(Clone::clone)
        };
        assert_eq!(plugins(&cached), plugins(&whole));
        cached
    }

    /// The main file's tables as `cache` holds them after its last read.
    fn cached_tables(cache: &PluginFileCache) -> Vec<Arc<CachedTable>> {
        let main = cache.main.lock().unwrap();
        let tables = &main.as_ref().unwrap().tables;
        tables.iter().flatten().cloned().collect()
    }

    #[test]
    fn a_reload_parses_only_the_plugin_tables_whose_text_changed() {
        let table = |id: &str, timeout: u32| {
            format!(
                "[[plugin]]\nid = \"{id}\"\npath = \"{id}.wasm\"\ntimeout_ms = {timeout}\n[plugin.config]\nk = \"v\"\n"
            )
        };
        let text = |timeout: u32| {
            format!(
                "[node]\nmax_concurrent = 8\n{}{}[defaults]\nmemory_mb = 32\n{}",
                table("a", 1000),
                table("b", 1000),
                table("c", timeout)
            )
        };
        let cache = PluginFileCache::default();
        load_both(&cache, &text(1000)).unwrap();
        let before = cached_tables(&cache);
        let config = load_both(&cache, &text(2000)).unwrap();
        assert_eq!(
            config.plugins[2].source.limits.default_timeout,
            Duration::from_millis(2000)
        );
        let after = cached_tables(&cache);
        let same: Vec<bool> = before
            .iter()
            .zip(&after)
            .map(|(b, a)| Arc::ptr_eq(b, a))
            .collect();
        assert_eq!(same, [true, true, false]);
        // Settings outside the tables that their specs depend on still
        // reach every plugin.
        let config = load_both(
            &cache,
            &text(2000).replace("memory_mb = 32", "memory_mb = 48"),
        )
        .unwrap();
        assert!(
            config
                .plugins
                .iter()
                .all(|p| p.source.limits.memory_bytes == 48 << 20)
        );
        // A table moved keeps its parse; one removed is gone.
        let moved = format!("{}{}", table("c", 2000), table("a", 1000));
        let config = load_both(&cache, &moved).unwrap();
        assert_eq!(config.plugins[0].source.id.as_deref(), Some("c"));
        assert_eq!(cached_tables(&cache).len(), 2);
    }

    #[test]
    fn a_rebuild_shares_unchanged_specs_and_checks_changed_tables_against_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        let table = |id: &str, intent: &str, timeout: u32| {
            format!(
                "[[plugin]]\nid = \"{id}\"\npath = \"{id}.wasm\"\nintents = [\"{intent}\"]\ntimeout_ms = {timeout}\n"
            )
        };
        let three = |c_id: &str, c_intent: &str, c_timeout: u32| {
            table("a", "urn:a", 1000)
                + &table("b", "urn:b", 1000)
                + &table(c_id, c_intent, c_timeout)
        };
        let cache = PluginFileCache::default();
        // Through the cache, and whole: the same configuration or error.
        let load_twice = |text: &str| {
            std::fs::write(&path, text).unwrap();
            let cached = load_cached(&path, &cache, &Overrides::default()).map_err(|e| e.message);
            let whole = load(&path).map_err(|e| e.message);
            let plugins = |c: &Result<NodeConfig, String>| {
                c.as_ref().map(|c| c.plugins.clone()).map_err(Clone::clone)
            };
            assert_eq!(plugins(&cached), plugins(&whole));
            cached
        };
        let first = load_twice(&three("c", "urn:c", 1000)).unwrap();
        let second = load_twice(&three("c", "urn:c", 2000)).unwrap();
        let shared: Vec<bool> = first
            .plugins
            .iter()
            .zip(&second.plugins)
            .map(|(a, b)| Arc::ptr_eq(a, b))
            .collect();
        assert_eq!(
            shared,
            [true, true, false],
            "only the edited table is built again"
        );
        // A changed table taking another's id or intent is refused with the
        // whole check's error, and the cache recovers once it is fixed.
        let taken_intent = load_twice(&three("c", "urn:a", 2000)).unwrap_err();
        assert_eq!(
            taken_intent,
            "plugin \"c\": intent urn:a is also claimed by plugin \"a\""
        );
        let taken_id = load_twice(&three("b", "urn:c", 2000)).unwrap_err();
        assert!(taken_id.contains("used by two"), "{taken_id}");
        let fixed = load_twice(&three("c", "urn:c", 3000)).unwrap();
        assert_eq!(
            fixed.plugins[2].source.limits.default_timeout,
            Duration::from_millis(3000)
        );
        // An intent a changed table gives up is free for another changed
        // table in the same read.
        let swapped =
            table("a", "urn:b", 1000) + &table("b", "urn:a", 1000) + &table("c", "urn:c", 3000);
        let config = load_twice(&swapped).unwrap();
        assert_eq!(
            config.plugins[0].intents.as_deref(),
            Some(&["urn:b".to_string()][..])
        );
        assert!(Arc::ptr_eq(&config.plugins[2], &fixed.plugins[2]));
    }

    #[test]
    fn an_edit_of_one_table_in_a_long_file_parses_that_table_alone() {
        let table = |id: usize, extra: &str| {
            format!(
                "\n[[plugin]]\nid = \"p{id}\"\npath = \"p.wasm\"\nintents = [\"urn:p{id}\"]\n{extra}"
            )
        };
        let file = |edited: usize, extra: &str| -> String {
            let tables: String = (0..50)
                .map(|id| table(id, if id == edited { extra } else { "" }))
                .collect();
            format!("[node]\nmax_concurrent = 8\n{tables}[defaults]\nmemory_mb = 32\n")
        };
        let cache = PluginFileCache::default();
        let first = load_both(&cache, &file(0, "")).unwrap();
        let before = cached_tables(&cache);
        // A comment, blank lines, then a real change: each time only table
        // 30 is parsed again, and the configuration is the whole parse's.
        for extra in ["# only a comment\n", "\n   \n", "timeout_ms = 700\n"] {
            let config = load_both(&cache, &file(30, extra)).unwrap();
            let after = cached_tables(&cache);
            let parsed_again: Vec<usize> = (0..50)
                .filter(|&i| !Arc::ptr_eq(&before[i], &after[i]))
                .collect();
            assert_eq!(parsed_again, [30], "{extra:?}");
            assert_eq!(config.plugins.len(), first.plugins.len());
        }
        // The changed table taking a kept table's intent, then a piece that
        // does not parse: refused with the whole check's and the whole
        // parse's errors, and the next good file reads as the whole parse.
        let taken = load_both(&cache, &file(30, "intents = [\"urn:p7\"]\n")).unwrap_err();
        assert!(taken.contains("duplicate key"), "{taken}");
        let stolen = file(30, "").replace("urn:p30", "urn:p7");
        assert_eq!(
            load_both(&cache, &stolen).unwrap_err(),
            "plugin \"p30\": intent urn:p7 is also claimed by plugin \"p7\""
        );
        let broken = load_both(&cache, &file(30, "timeout_ms = \n")).unwrap_err();
        assert!(broken.contains("line"), "{broken}");
        let config = load_both(&cache, &file(30, "timeout_ms = 900\n")).unwrap();
        assert_eq!(
            config.plugins[30].source.limits.default_timeout,
            Duration::from_millis(900)
        );
    }

    #[test]
    fn text_that_only_looks_like_a_plugin_table_is_read_as_the_whole_parse_reads_it() {
        let cache = PluginFileCache::default();
        let tricky = "[[plugin]]\nid = \"a\"\npath = \"a.wasm\"\n[plugin.config]\nnote = \"\"\"\n[[plugin]]\nid = \"b\"\n\"\"\"\n";
        let config = load_both(&cache, tricky).unwrap();
        assert_eq!(config.plugins.len(), 1);
        let hidden =
            "[node]\nregion = \"\"\"\n[[plugin]]\nid = \"a\"\npath = \"a.wasm\"\n[admin]\n\"\"\"\n";
        let error = load_both(&cache, hidden).unwrap_err();
        assert!(error.contains("no [[plugin]] table"), "{error}");
        // A broken table: the error is the whole parse's, line and all.
        let broken = "[node]\n[[plugin]]\nid = \"a\"\npath = \"a.wasm\"\n[[plugin]]\nid = 7\npath = \"b.wasm\"\n";
        let error = load_both(&cache, broken).unwrap_err();
        assert!(error.contains("line 6"), "{error}");
    }

    #[test]
    fn file_sections_are_stacked_over_the_tables_before_the_build() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(
            &path,
            "[oci]\nmax_plugin_mib = 64\ntimeout_ms = 5000\n[[plugin]]\npath = \"a.wasm\"\n",
        )
        .unwrap();
        let overrides = Overrides::default()
            .with_flags(&["oci.max_plugin_mib=8".to_string()])
            .unwrap();
        let config = load_cached(&path, &PluginFileCache::default(), &overrides).unwrap();
        assert_eq!(config.oci.max_plugin_bytes, 8 << 20);
        assert_eq!(config.oci.timeout, Duration::from_millis(5000));
        let plain = load(&path).unwrap();
        assert_eq!(plain.oci.max_plugin_bytes, 64 << 20);
    }

    #[test]
    fn a_minimal_file_gets_defaults_and_resolved_paths() {
        let config = parse("[[plugin]]\npath = \"echo.wasm\"\n").unwrap();
        assert_eq!(
            config.plugins[0].source.path,
            PathBuf::from("/etc/iicp/echo.wasm")
        );
        assert_eq!(config.node.max_concurrent(), DEFAULT_MAX_CONCURRENT);
        assert!(config.directory.is_none());
    }

    #[test]
    fn content_trust_keys_apply_where_they_mean_something() {
        let dir = tempfile::tempdir().unwrap();
        let key = p256::ecdsa::SigningKey::from_slice(&[3; 32]).unwrap();
        let pem = p256::pkcs8::EncodePublicKey::to_public_key_pem(
            key.verifying_key(),
            p256::pkcs8::LineEnding::LF,
        )
        .unwrap();
        std::fs::write(dir.path().join("node.pub"), &pem).unwrap();
        std::fs::write(dir.path().join("tenant.pub"), &pem).unwrap();
        std::fs::write(dir.path().join("not-a-key.pub"), "hello").unwrap();
        let parse = |text: &str| super::parse(text, dir.path());
        let reg = "oci://127.0.0.1:5000/echo:1";
        let config = parse(&format!(
            "[oci]\nsignature_keys = [\"node.pub\"]\nrequire_digest = true\n\
             [[plugin]]\nid = \"a\"\npath = \"{reg}\"\n\
             [[plugin]]\nid = \"b\"\npath = \"{reg}\"\nsignature_keys = [\"tenant.pub\"]\n\
             [[plugin]]\nid = \"c\"\npath = \"c.cwasm\"\nprecompiled = true\n"
        ))
        .unwrap();
        let [a, b, c] = [0, 1, 2].map(|i| &config.plugins[i].source);
        assert!(a.signatures.keys[0].name().ends_with("node.pub"));
        assert!(
            b.signatures.keys[0].name().ends_with("tenant.pub"),
            "its own keys instead"
        );
        assert!(a.signatures.require_digest && b.signatures.require_digest);
        assert!(c.precompiled && c.signatures.keys.is_empty());

        let remote = parse(&format!(
            "[[plugin]]\npath = \"{reg}\"\nprecompiled = true\n"
        ));
        assert!(
            remote
                .unwrap_err()
                .contains("precompiled: a plugin from a registry")
        );
        let local = parse("[[plugin]]\npath = \"a.wasm\"\nsignature_keys = [\"node.pub\"]\n");
        assert!(
            local
                .unwrap_err()
                .contains("signature_keys: only a plugin from a registry")
        );
        let bad = parse(&format!(
            "[oci]\nsignature_keys = [\"not-a-key.pub\"]\n[[plugin]]\npath = \"{reg}\"\n"
        ));
        assert!(bad.unwrap_err().starts_with("oci.signature_keys: "));
    }

    #[test]
    fn errors_name_the_key() {
        let unknown = parse("[node]\nlisten_addr = \"x\"\n").unwrap_err();
        assert!(unknown.contains("unknown field `listen_addr`"), "{unknown}");
        let range =
            parse("[[plugin]]\nid = \"a\"\npath = \"a.wasm\"\nmemory_mb = 0\n").unwrap_err();
        assert_eq!(
            range,
            "plugin \"a\": memory_mb must be between 1 and 4096, got 0"
        );
        let missing = parse("[node]\nregion = \"eu\"\n").unwrap_err();
        assert!(missing.contains("[[plugin]]"), "{missing}");
        let model = parse("[directory]\nurl = \"http://d\"\n[pricing]\npricing_model = \"hourly\"\n[[plugin]]\npath = \"a\"\n")
            .unwrap_err();
        assert!(model.starts_with("pricing.pricing_model"), "{model}");
        let secret = parse("[directory]\nurl = \"http://d\"\nhmac_key_env = \"IICP_TEST_UNSET_VARIABLE\"\n[[plugin]]\npath = \"a\"\n")
            .unwrap_err();
        assert_eq!(
            secret,
            "directory.hmac_key_env: environment variable IICP_TEST_UNSET_VARIABLE is not set"
        );
    }

    #[test]
    fn plugin_tables_are_checked_against_each_other() {
        let two = "[[plugin]]\nid = \"a\"\npath = \"a\"\nintents = [\"urn:x\"]\n[[plugin]]\nid = \"b\"\npath = \"b\"\nintents = [\"urn:x\"]\n";
        assert_eq!(
            parse(two).unwrap_err(),
            "plugin \"b\": intent urn:x is also claimed by plugin \"a\""
        );
        let same_id =
            "[[plugin]]\nid = \"a\"\npath = \"a\"\n[[plugin]]\nid = \"a\"\npath = \"b\"\n";
        assert!(parse(same_id).unwrap_err().contains("used by two"));
        let over = "[node]\nmax_concurrent = 4\n[[plugin]]\nid = \"a\"\npath = \"a\"\nmax_concurrent = 5\n";
        assert_eq!(
            parse(over).unwrap_err(),
            "plugin \"a\": max_concurrent must be between 1 and 4, got 5"
        );
        let nested = "[[plugin]]\nid = \"a\"\npath = \"a\"\n[plugin.config]\nx = [1]\n";
        assert_eq!(
            parse(nested).unwrap_err(),
            "plugin \"a\": config.x must be a string, number or boolean"
        );
        let config = "[[plugin]]\nid = \"a\"\npath = \"a\"\n[plugin.config]\nurl = \"http://x\"\nretries = 3\n";
        let parsed = parse(config).unwrap();
        assert_eq!(parsed.plugins[0].source.config["retries"], "3");
    }

    #[test]
    fn an_intent_listed_twice_by_one_plugin_is_refused() {
        let text =
            "[[plugin]]\nid = \"a\"\npath = \"a\"\nintents = [\"urn:x\", \"urn:y\", \"urn:x\"]\n";
        assert_eq!(
            parse(text).unwrap_err(),
            "plugin \"a\": intents: urn:x is listed twice"
        );
    }

    #[test]
    fn relay_tables_are_read_and_checked() {
        let both = "[relay]\nurl = \"http://relay:8080\"\npullers = 2\n[relay_capable]\nmax_sessions = 8\nliveness_ms = 30000\n[[plugin]]\npath = \"a\"\n";
        let config = parse(both).unwrap();
        assert_eq!(config.reach.relay.unwrap().pullers, 2);
        let relay = config.reach.relay_capable.unwrap();
        assert_eq!((relay.max_sessions, relay.liveness_ms), (8, 30000));
        assert_eq!(relay.poll_timeout_ms, 25_000, "defaults fill the rest");
        let short = "[relay_capable]\nliveness_ms = 10\n[[plugin]]\npath = \"a\"\n";
        assert!(
            parse(short)
                .unwrap_err()
                .starts_with("relay_capable.liveness_ms"),
        );
        let typo = "[relay]\nurl = \"http://r\"\npuller = 2\n[[plugin]]\npath = \"a\"\n";
        assert!(parse(typo).unwrap_err().contains("unknown field `puller`"));
        let with_endpoint = "[node]\nendpoint = \"http://me\"\n[directory]\nurl = \"http://d\"\n[relay]\nurl = \"http://r\"\n[[plugin]]\npath = \"a\"\n";
        assert!(
            parse(with_endpoint)
                .unwrap_err()
                .contains("relay-for endpoint")
        );
    }

    #[test]
    fn the_peers_table_switches_gossip_on_and_is_checked() {
        let on = parse("[peers]\nmax_peers = 8\nseeds = [\"http://peer:8080\"]\n[peers.trusted_keys]\nn-1 = \"0000000000000000000000000000000000000000000000000000000000000000\"\n[[plugin]]\npath = \"a\"\n").unwrap();
        let peers = on.reach.peers.unwrap();
        assert_eq!((peers.max_peers, peers.seeds.len()), (8, 1));
        assert!(
            parse("[[plugin]]\npath = \"a\"\n")
                .unwrap()
                .reach
                .peers
                .is_none()
        );
        let bad_key = "[peers.trusted_keys]\nn-1 = \"abc\"\n[[plugin]]\npath = \"a\"\n";
        assert!(
            parse(bad_key)
                .unwrap_err()
                .starts_with("peers.trusted_keys.n-1")
        );
        let hmac = "[peers]\nsend_hmac = true\n[[plugin]]\npath = \"a\"\n";
        assert!(parse(hmac).unwrap_err().contains("hmac_key_env"));
    }

    #[test]
    fn plugin_limits_inherit_defaults() {
        let config = parse("[defaults]\nmemory_mb = 64\n[[plugin]]\npath = \"a\"\n[[plugin]]\npath = \"b\"\ntimeout_ms = 500\n").unwrap();
        assert_eq!(config.plugins[0].source.limits.memory_bytes, 64 << 20);
        assert_eq!(config.plugins[1].source.limits.memory_bytes, 64 << 20);
        assert_eq!(
            config.plugins[1].source.limits.default_timeout,
            Duration::from_millis(500)
        );
    }

    #[test]
    fn the_memory_settings_given_are_recorded_for_the_sizing() {
        let config = parse(
            "[node]\nmemory_limit_mib = 300\nmax_concurrent = 4\n\
             [[plugin]]\nid = \"a\"\npath = \"a\"\nmemory_mb = 32\n\
             [[plugin]]\nid = \"b\"\npath = \"b\"\n",
        )
        .unwrap();
        assert_eq!(config.node.memory_limit_bytes(), Some(300 << 20));
        assert!(config.memory.given.max_concurrent);
        assert!(!config.memory.given.max_connections && !config.memory.given.nonce_cache_capacity);
        assert!(config.plugins[0].memory_given && !config.plugins[1].memory_given);
        let defaults = parse("[defaults]\nmemory_mb = 64\n[[plugin]]\npath = \"a\"\n").unwrap();
        assert!(defaults.plugins[0].memory_given);
        assert_eq!(defaults.node.memory_limit_bytes(), None);
        let small = parse("[node]\nmemory_limit_mib = 64\n[[plugin]]\npath = \"a\"\n").unwrap_err();
        assert!(
            small.starts_with("node.memory_limit_mib must be between 128"),
            "{small}"
        );
    }

    #[test]
    fn auth_modes_that_would_refuse_everyone_are_errors() {
        let plugin = "[[plugin]]\npath = \"a\"\n";
        let consumer = parse(&format!("[auth]\nmode = \"consumer-token\"\n{plugin}")).unwrap();
        assert!(
            consumer
                .check_auth()
                .unwrap_err()
                .contains("needs a [directory]")
        );
        let node = parse(&format!("[auth]\nmode = \"node-token\"\n{plugin}")).unwrap();
        assert!(
            node.check_auth()
                .unwrap_err()
                .contains("would refuse every task")
        );
        let joined = parse(&format!(
            "[auth]\nmode = \"node-token\"\n[directory]\nurl = \"http://d\"\n{plugin}"
        ))
        .unwrap();
        assert!(joined.check_auth().is_ok());
        let bad = parse(&format!("[auth]\nmode = \"password\"\n{plugin}")).unwrap_err();
        assert!(bad.contains("unknown variant `password`"), "{bad}");
        let unset = parse(&format!(
            "[auth]\nmode = \"node-token\"\n[auth.tokens]\nops = \"IICP_TEST_UNSET_TOKEN\"\n{plugin}"
        ))
        .unwrap_err();
        assert_eq!(
            unset,
            "auth.tokens.ops: environment variable IICP_TEST_UNSET_TOKEN is not set"
        );
    }

    #[test]
    fn a_node_may_run_up_to_4096_tasks_at_once() {
        let config = parse(
            "[node]\nmax_concurrent = 4096\nmemory_overcommit = true\n[[plugin]]\npath = \"a\"\n",
        )
        .unwrap();
        assert_eq!(config.node.max_concurrent(), 4096);
        assert_eq!(config.node.runtime().engine.max_instances, 4096);
        assert_eq!(
            parse("[node]\nmax_concurrent = 4097\n[[plugin]]\npath = \"a\"\n").unwrap_err(),
            "node.max_concurrent must be between 1 and 4096, got 4097"
        );
    }

    #[test]
    fn host_limits_are_read_checked_and_inherited() {
        let config = parse(
            "[node]\nmemory_overcommit = true\n[defaults]\nhost_memory_kib = 1024\nmax_resources = 256\n\
             max_output_kib = 512\n[[plugin]]\npath = \"a\"\nmax_timeout_ms = 2000\ninstance_idle_ms = 500\n\
             [[plugin]]\npath = \"b\"\nmax_output_kib = 64\n[plugin.http]\nmax_in_flight = 2\n",
        )
        .unwrap();
        let plugin = &config.plugins[0].source;
        assert!(config.node.memory_overcommit);
        assert_eq!(plugin.limits.host_memory_bytes, 1 << 20);
        assert_eq!(plugin.limits.max_resources, 256);
        assert_eq!(plugin.limits.max_timeout, Duration::from_secs(2));
        assert_eq!(plugin.limits.default_timeout, Duration::from_secs(2));
        assert_eq!(plugin.limits.instance_idle, Duration::from_millis(500));
        assert_eq!(plugin.limits.max_output_bytes, 512 << 10, "from [defaults]");
        let second = &config.plugins[1].source;
        assert_eq!(second.limits.max_output_bytes, 64 << 10, "the plugin's own");
        assert_eq!(second.http.max_in_flight, 2);
        for (text, error) in [
            (
                "[[plugin]]\npath = \"a\"\nmax_output_kib = 0\n",
                "[[plugin]] #1: max_output_kib must be between 1 and 65536, got 0",
            ),
            (
                "[[plugin]]\npath = \"a\"\nmax_resources = 10\n",
                "[[plugin]] #1: max_resources must be between 64 and 1000000, got 10",
            ),
            (
                "[[plugin]]\npath = \"a\"\ntimeout_ms = 5000\nmax_timeout_ms = 1000\n",
                "[[plugin]] #1: timeout_ms (5000 ms) is above max_timeout_ms (1000 ms)",
            ),
            (
                "[defaults]\nhost_memory_kib = 1\n[[plugin]]\npath = \"a\"\n",
                "defaults: host_memory_kib must be between 64 and 4194304, got 1",
            ),
        ] {
            assert_eq!(parse(text).unwrap_err(), error);
        }
    }
}
