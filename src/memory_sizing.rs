//! Fitting the node to the memory it has: which memory it may assume, the
//! defaults sized so that the worst case ([`crate::memory_bound`]) fits a
//! share of it, and the start-up refusal of settings that cannot fit.
//!
//! **The memory** is the smallest of `memory_limit_mib` (when set), the
//! memory limit of the node's cgroup (v2 `memory.max`, v1
//! `memory.limit_in_bytes`, on the path from its own group to the root) and
//! the machine's `MemTotal`: a setting above what the kernel enforces would
//! only trade a clear refusal for the OOM killer. When none of them can be
//! read (a unit with `ProcSubset=pid` and no `MemoryMax=`, say) the node
//! warns and assumes [`UNSEEN_MEMORY`], 1 GiB: a node that guesses high
//! can be killed under load, one that guesses low only serves fewer tasks
//! at once, and the warning says how to give the real figure.
//!
//! **The budget** the sized defaults fit is the memory less an eighth (at
//! least 32 MiB): the worst case counts what the node's own code holds, not
//! what the kernel charges to its cgroup beside it (socket buffers, page
//! tables, the page cache of plugin and artifact files) nor the allocator's
//! fragmentation.
//!
//! **Sizing**: start from the defaults; while the worst case exceeds the
//! budget, scale every memory-driven setting the operator did not give down
//! one step together (÷√2; connections and unsent answers ÷2, their
//! defaults serving many slots and slow clients), each stopping at a floor
//! that still serves (see [`Setting`]); only when all are at their floors
//! halve the task memory of plugins that set none, whose need the node
//! cannot know. Scaling together keeps the defaults' proportions, so a
//! smaller machine gets a smaller copy of the node rather than one setting
//! cut to nothing. A large machine keeps every default; settings
//! the operator gave are never changed: a configuration whose worst case
//! exceeds the memory itself is refused with the formula, unless
//! `memory_overcommit` is set (then nothing is sized either: the operator
//! takes the worst case on, and the defaults stay as documented). The
//! relay's and the OTLP export's byte budgets are not sized: both are off
//! unless configured, and when on they count in the worst case and the
//! sized settings make room for them (OTLP's exporter starts before the
//! node sizes anything).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use prometheus::{IntGauge, IntGaugeVec, Registry};

use crate::config::NodeConfig;
use crate::memory_bound::{WorstCase, mib};
use crate::metric_families::{Part, gauge, gauge_vec};
use crate::runtime::engine::{KEEP_RESIDENT_WITH_SCAN, PoolShape, default_keep_resident};

/// The memory assumed when no limit can be read at all.
pub const UNSEEN_MEMORY: u64 = 1 << 30;
/// The least memory kept out of the budget for the kernel and allocator.
pub const MIN_HEADROOM: u64 = 32 << 20;

/// The memory the node sizes itself to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Memory {
    /// Bytes.
    pub bytes: u64,
    /// Where the figure came from, for the start-up line.
    pub source: String,
    /// Whether it was read or set (not assumed for want of either).
    pub known: bool,
}

impl Memory {
    /// The memory the node may assume: the smaller of `setting` and what it
    /// can see of its cgroup and machine, else [`UNSEEN_MEMORY`].
    pub fn find(setting: Option<u64>) -> Self {
        let total = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|info| mem_total(&info))
            .map(|bytes| (bytes, "MemTotal of /proc/meminfo".to_string()));
        let cgroup = std::fs::read_to_string("/proc/self/cgroup")
            .ok()
            .and_then(|membership| cgroup_limit(&membership, Path::new("/sys/fs/cgroup")))
            .map(|(bytes, file)| (bytes, format!("cgroup limit {}", file.display())));
        Self::of_readings(setting, cgroup, total)
    }

    /// The smallest of what was set and read, each with where it came
    /// from; [`UNSEEN_MEMORY`] when there is none.
    fn of_readings(
        setting: Option<u64>,
        cgroup: Option<(u64, String)>,
        total: Option<(u64, String)>,
    ) -> Self {
        let set = setting.map(|bytes| (bytes, "memory_limit_mib".to_string()));
        match [set, cgroup, total].into_iter().flatten().min() {
            Some((bytes, source)) => Self {
                bytes,
                source,
                known: true,
            },
            None => Self {
                bytes: UNSEEN_MEMORY,
                source: "assumed: no cgroup limit, /proc/meminfo or memory_limit_mib".to_string(),
                known: false,
            },
        }
    }

    /// What the sized defaults must fit in: the memory less an eighth, at
    /// least [`MIN_HEADROOM`].
    pub fn budget(&self) -> u64 {
        self.bytes
            .saturating_sub((self.bytes / 8).max(MIN_HEADROOM))
    }
}

fn mem_total(info: &str) -> Option<u64> {
    info.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| kib * 1024)
}

/// Limits at or above this mean "none": cgroup v1 writes an unlimited
/// group as `i64::MAX` rounded down to a page.
const CGROUP_UNLIMITED: u64 = 1 << 62;

/// The smallest memory limit from this process's cgroup up to the root of
/// the hierarchy mounted at `root`, and the file that sets it, given
/// `/proc/self/cgroup` as `membership`: cgroup v2 (`0::/path`,
/// `<root>/path/memory.max`) and v1's memory controller (`N:memory:/path`,
/// possibly comma-joined with others,
/// `<root>/memory/path/memory.limit_in_bytes`). `max` means no limit. The
/// group is the one `/proc/self/cgroup` names: a systemd unit's
/// `MemoryMax=` sits on `system.slice/<unit>`, not on the root of the
/// hierarchy, which only a container's own namespace shows.
fn cgroup_limit(membership: &str, root: &Path) -> Option<(u64, PathBuf)> {
    let mut files = Vec::new();
    for line in membership.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let (base, file) = if id == "0" && controllers.is_empty() {
            (root.to_path_buf(), "memory.max")
        } else if controllers.split(',').any(|c| c == "memory") {
            (root.join("memory"), "memory.limit_in_bytes")
        } else {
            continue;
        };
        let own = Path::new(path.trim_start_matches('/'));
        files.extend(own.ancestors().map(|dir| base.join(dir).join(file)));
    }
    files
        .into_iter()
        .filter_map(|file| {
            let limit = std::fs::read_to_string(&file)
                .ok()?
                .trim()
                .parse::<u64>()
                .ok()?;
            Some((limit, file))
        })
        .filter(|&(limit, _)| limit < CGROUP_UNLIMITED)
        .min()
}

/// A memory-driven setting the node sizes when the operator did not give
/// it, and the floor below which it would no longer serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    /// `max_concurrent` (and the instance pool that follows it), at least 1.
    MaxConcurrent,
    /// `memory_mb` of plugins that set none, at least 16 MiB (what the
    /// repo's Rust echo needs; Python and JS plugins need an explicit one).
    PluginMemory,
    /// `max_connections`, at least 32.
    MaxConnections,
    /// `max_unsent_answers_mib`, at least 10 MiB (two of the largest
    /// answers).
    UnsentAnswers,
    /// `keep_resident_kib`, at least 64 KiB (the default of a kernel
    /// without PAGEMAP_SCAN).
    KeepResident,
    /// `nonce_cache_capacity`, at least 65,536 (218 signed tasks a second
    /// over the 300 s replay window).
    NonceCache,
    /// `idempotency_max_bytes`, when idempotency is on, at least 4 MiB.
    IdempotencyBytes,
    /// `max_dns_lookups`, at least 2 (each may hold a blocking thread's
    /// stack while the resolver answers).
    DnsLookups,
}

impl Setting {
    /// Every sized setting.
    pub const ALL: [Setting; 8] = [
        Setting::MaxConcurrent,
        Setting::PluginMemory,
        Setting::MaxConnections,
        Setting::UnsentAnswers,
        Setting::KeepResident,
        Setting::NonceCache,
        Setting::IdempotencyBytes,
        Setting::DnsLookups,
    ];

    /// The setting's name (also its `iicp_memory_setting` label).
    pub fn name(self) -> &'static str {
        match self {
            Setting::MaxConcurrent => "max_concurrent",
            Setting::PluginMemory => "plugin_memory_bytes",
            Setting::MaxConnections => "max_connections",
            Setting::UnsentAnswers => "max_unsent_answer_bytes",
            Setting::KeepResident => "keep_resident_bytes",
            Setting::NonceCache => "nonce_cache_capacity",
            Setting::IdempotencyBytes => "idempotency_max_bytes",
            Setting::DnsLookups => "max_dns_lookups",
        }
    }

    /// `value` as the start-up line shows it.
    pub fn show(self, value: u64) -> String {
        match self {
            Setting::MaxConcurrent
            | Setting::MaxConnections
            | Setting::NonceCache
            | Setting::DnsLookups => value.to_string(),
            Setting::KeepResident => format!("{} KiB", value >> 10),
            Setting::PluginMemory | Setting::UnsentAnswers | Setting::IdempotencyBytes => {
                mib(value)
            }
        }
    }

    fn floor(self) -> u64 {
        match self {
            Setting::MaxConcurrent => 1,
            Setting::PluginMemory => 16 << 20,
            Setting::MaxConnections => 32,
            Setting::UnsentAnswers => 10 << 20,
            Setting::KeepResident => 64 << 10,
            Setting::NonceCache => 65_536,
            Setting::IdempotencyBytes => 4 << 20,
            Setting::DnsLookups => 2,
        }
    }

    /// Its value `step` steps down from `default`: each step divides by
    /// √2 (two steps halve it), rounded down to the setting's grain, at
    /// least its floor. Connections and unsent answers, whose defaults are
    /// sized for many slots and slow clients, halve at every step, so a
    /// small node gives its memory to tasks rather than to idle sockets.
    fn scaled(self, default: u64, step: u32) -> u64 {
        let step = match self {
            Setting::MaxConnections | Setting::UnsentAnswers => 2 * step,
            _ => step,
        };
        let grain: u64 = match self {
            Setting::MaxConcurrent | Setting::MaxConnections | Setting::DnsLookups => 1,
            Setting::KeepResident => 64 << 10,
            Setting::NonceCache => 1024,
            Setting::PluginMemory | Setting::UnsentAnswers | Setting::IdempotencyBytes => 1 << 20,
        };
        let value = (default as f64 * 0.5f64.powf(f64::from(step) / 2.0)) as u64;
        (value / grain * grain).max(self.floor())
    }

    /// Its value in `config` (a count, or bytes as its name says); `None`
    /// when it does not apply (idempotency off, every plugin's memory set).
    /// An unset keep-resident counts as the larger kernel default.
    pub fn value(self, config: &NodeConfig) -> Option<u64> {
        let node = &config.node;
        match self {
            Setting::MaxConcurrent => Some(u64::from(node.max_concurrent())),
            Setting::PluginMemory => config
                .plugins
                .iter()
                .filter(|p| !p.memory_given)
                .map(|p| p.source.limits.memory_bytes as u64)
                .max(),
            Setting::MaxConnections => Some(node.edge().max_connections as u64),
            Setting::UnsentAnswers => Some(node.edge().max_unsent_answer_bytes),
            Setting::KeepResident => Some(
                node.keep_resident_kib
                    .map_or(KEEP_RESIDENT_WITH_SCAN as u64, |kib| u64::from(kib) << 10),
            ),
            Setting::NonceCache => Some(node.nonce_capacity() as u64),
            Setting::IdempotencyBytes => node.idempotency().map(|b| b.max_bytes as u64),
            Setting::DnsLookups => Some(node.max_dns_lookups() as u64),
        }
    }

    /// Whether the operator gave it (then it is never sized).
    fn given(self, config: &NodeConfig) -> bool {
        let given = &config.memory.given;
        match self {
            Setting::MaxConcurrent => given.max_concurrent,
            Setting::PluginMemory => config.plugins.iter().all(|p| p.memory_given),
            Setting::MaxConnections => given.max_connections,
            Setting::UnsentAnswers => given.max_unsent_answers,
            Setting::KeepResident => config.node.keep_resident_kib.is_some(),
            Setting::NonceCache => given.nonce_cache_capacity,
            Setting::IdempotencyBytes => given.idempotency_max_bytes,
            Setting::DnsLookups => given.max_dns_lookups,
        }
    }

    fn set(self, config: &mut NodeConfig, value: u64) {
        let count = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
        let node = &mut config.node;
        match self {
            Setting::MaxConcurrent => {
                node.max_concurrent = Some(u32::try_from(value).unwrap_or(u32::MAX));
            }
            Setting::PluginMemory => {
                // A spec already of that size stays the shared one.
                for plugin in config.plugins.iter_mut().filter(|p| !p.memory_given) {
                    if plugin.source.limits.memory_bytes != count(value) {
                        Arc::make_mut(plugin).source.limits.memory_bytes = count(value);
                    }
                }
                config.memory.sized_plugin_memory_bytes = Some(count(value));
            }
            // Sized in whole MiB and KiB (their grains), so nothing is lost.
            Setting::MaxConnections => node.max_connections = Some(count(value)),
            Setting::UnsentAnswers => node.max_unsent_answers_mib = Some(value >> 20),
            Setting::KeepResident => {
                node.keep_resident_kib = Some(u32::try_from(value >> 10).unwrap_or(u32::MAX));
            }
            Setting::NonceCache => node.nonce_cache_capacity = Some(count(value)),
            Setting::IdempotencyBytes => {
                if node.idempotency {
                    node.idempotency_max_bytes = Some(count(value));
                }
            }
            Setting::DnsLookups => node.max_dns_lookups = Some(count(value)),
        }
    }
}

/// One setting the sizing lowered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lowered {
    /// Which.
    pub setting: Setting,
    /// Its default.
    pub from: u64,
    /// What it became.
    pub to: u64,
}

/// What the sizing found and chose.
#[derive(Debug, Clone)]
pub struct Sizing {
    /// The memory assumed.
    pub memory: Memory,
    /// The settings lowered to fit.
    pub lowered: Vec<Lowered>,
    /// The worst case of the configuration as sized.
    pub worst: WorstCase,
    /// What the pool keeps resident per slot on this kernel.
    pub keep_resident: usize,
    /// What the worst case counts for it: the larger kernel default unless
    /// set (see `memory_bound`).
    pub keep_resident_counted: usize,
}

impl fmt::Display for Sizing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "memory {} ({}), budget {}; ",
            mib(self.memory.bytes),
            self.memory.source,
            mib(self.memory.budget())
        )?;
        if self.lowered.is_empty() {
            f.write_str("defaults kept")?;
        }
        for (i, lowered) in self.lowered.iter().enumerate() {
            let sep = if i == 0 { "sized " } else { ", " };
            write!(
                f,
                "{sep}{} {} -> {}",
                lowered.setting.name(),
                lowered.setting.show(lowered.from),
                lowered.setting.show(lowered.to)
            )?;
        }
        write!(
            f,
            "; the pool keeps {} KiB per slot resident on this kernel, counted as {} KiB",
            self.keep_resident >> 10,
            self.keep_resident_counted >> 10
        )
    }
}

/// Sizes the settings of `config` the operator did not give so that its
/// worst case fits the budget of `memory`, and returns what it lowered.
/// A pure function of its arguments: the start-up ([`size`]) and the unit
/// tests use it alike.
pub fn fit(config: &mut NodeConfig, memory: &Memory) -> Vec<Lowered> {
    // An operator who allows overcommit takes the worst case on: the
    // defaults stay as documented rather than shrink around what was given.
    if config.node.memory_overcommit {
        return Vec::new();
    }
    let budget = memory.budget();
    // The worst case's per-task term is the largest of any plugin's: two
    // stand-ins (the largest plugin with its memory given, the largest
    // without) give the same worst case at every sized memory, so a node
    // of thousands of plugins is sized in the time of two.
    let plugins = std::mem::take(&mut config.plugins);
    let largest = |given: bool| {
        plugins
            .iter()
            .filter(|p| p.memory_given == given)
            .max_by_key(|p| {
                crate::memory_bound::spec_per_task(p)
                    - if given {
                        0
                    } else {
                        p.source.limits.memory_bytes as u64
                    }
            })
            .cloned()
    };
    let mut trial = config.clone();
    trial.plugins = [largest(true), largest(false)]
        .into_iter()
        .flatten()
        .collect();
    config.plugins = plugins;

    let fits = |trial: &NodeConfig| WorstCase::of(trial).total() <= budget;
    // Decided on the configuration as given: a setting the sizing lowered
    // is not thereby given.
    let scaled: Vec<(Setting, u64)> = Setting::ALL
        .into_iter()
        .filter(|&s| s != Setting::PluginMemory && !s.given(config))
        .filter_map(|s| Some((s, s.value(&trial)?)))
        .collect();
    let mut step = 0;
    while !fits(&trial)
        && scaled
            .iter()
            .any(|&(s, _)| s.value(&trial).is_some_and(|v| v > s.floor()))
    {
        step += 1;
        for &(setting, default) in &scaled {
            setting.set(&mut trial, setting.scaled(default, step));
        }
    }
    // Only then the memory of a task: plugins may need all of it.
    if !Setting::PluginMemory.given(config) {
        while !fits(&trial)
            && let Some(bytes) = Setting::PluginMemory.value(&trial)
            && bytes > Setting::PluginMemory.floor()
        {
            let halved = (bytes / 2).max(Setting::PluginMemory.floor());
            Setting::PluginMemory.set(&mut trial, halved);
        }
    }
    let lowered: Vec<Lowered> = Setting::ALL
        .into_iter()
        .filter_map(|setting| {
            let (from, to) = (setting.value(config)?, setting.value(&trial)?);
            (to < from).then_some(Lowered { setting, from, to })
        })
        .collect();
    for change in &lowered {
        change.setting.set(config, change.to);
    }
    lowered
}

/// At start: finds the memory, sizes `config` to it ([`fit`]), and refuses
/// a configuration whose worst case still exceeds the memory, naming its
/// terms, unless the operator allowed overcommit (then it warns).
pub fn size(config: &mut NodeConfig) -> Result<Sizing, String> {
    let memory = Memory::find(config.node.memory_limit_bytes());
    if !memory.known {
        tracing::warn!(
            assumed = %mib(memory.bytes),
            "cannot see this machine's memory (no cgroup limit, no /proc/meminfo): sizing to an assumed 1 GiB; \
             set memory_limit_mib (--memory-limit-mib) to the memory the node may use"
        );
    }
    let lowered = fit(config, &memory);
    // A keep-resident lowered for a kernel with PAGEMAP_SCAN is lowered
    // further to this kernel's default: without the scan every kept byte
    // is rewritten on every teardown.
    if lowered.iter().any(|l| l.setting == Setting::KeepResident)
        && let Some(kib) = &mut config.node.keep_resident_kib
    {
        *kib = (*kib).min(u32::try_from(default_keep_resident() >> 10).unwrap_or(u32::MAX));
    }
    fill_in(config);
    let worst = check(config, &memory)?;
    let engine = config.node.runtime().engine;
    Ok(Sizing {
        memory,
        lowered,
        worst,
        keep_resident: PoolShape::of(&engine).keep_resident,
        keep_resident_counted: engine
            .keep_resident_bytes
            .unwrap_or(KEEP_RESIDENT_WITH_SCAN),
    })
}

/// Sets every sized key the node runs with but `keep_resident_kib` (whose
/// unset value is the kernel's default), so the `[node]` table says what is
/// in force and a reload compares like with like.
fn fill_in(config: &mut NodeConfig) {
    for setting in Setting::ALL {
        if matches!(setting, Setting::PluginMemory | Setting::KeepResident) {
            continue;
        }
        if let Some(value) = setting.value(config) {
            setting.set(config, value);
        }
    }
}

/// Refuses `config` when its worst case exceeds `memory`, unless the
/// operator allowed overcommit (then it warns).
pub fn check(config: &NodeConfig, memory: &Memory) -> Result<WorstCase, String> {
    let worst = WorstCase::of(config);
    if worst.total() <= memory.bytes {
        return Ok(worst);
    }
    let advice = format!(
        "the configuration could make the node hold {worst}, more than the {} of memory it may \
         assume ({}): lower max_concurrent, memory_mb, max_connections, host_memory_kib or \
         max_output_kib, raise memory_limit_mib (--memory-limit-mib) if the memory is there, \
         or set memory_overcommit = true (--memory-overcommit) to start anyway",
        mib(memory.bytes),
        memory.source
    );
    if config.node.memory_overcommit {
        tracing::warn!("{advice}");
        Ok(worst)
    } else {
        Err(advice)
    }
}

/// On a hot reload: gives the settings of `next` that the operator did not
/// give the values the node runs with (they take effect only at a restart,
/// and plugins that set no `memory_mb` get the sized one), then checks the
/// result against the memory as at start.
pub fn carry_over(running: &NodeConfig, next: &mut NodeConfig) -> Result<(), String> {
    for setting in Setting::ALL {
        if setting == Setting::KeepResident {
            continue;
        }
        if setting == Setting::PluginMemory {
            if let Some(bytes) = running.memory.sized_plugin_memory_bytes {
                setting.set(next, bytes as u64);
            }
        } else if !setting.given(next)
            && let Some(value) = setting.value(running)
            && setting.value(next).is_some()
        {
            setting.set(next, value);
        }
    }
    next.node.keep_resident_kib = running.node.keep_resident_kib;
    check(next, &Memory::find(next.node.memory_limit_bytes())).map(drop)
}

/// What the sizing publishes: the memory it sized to, the worst case of
/// the configuration, and each memory-driven setting in force.
pub struct MemoryMetrics {
    /// `iicp_memory_worst_case_bytes`: the configuration's worst case.
    pub worst_case: IntGauge,
    /// `iicp_memory_limit_bytes`: the memory the node sized itself to.
    pub limit: IntGauge,
    /// `iicp_memory_setting{setting}`: each memory-driven setting in force
    /// (sized or given), in the unit its name says.
    pub setting: IntGaugeVec,
}

impl Part for MemoryMetrics {
    fn register(r: &Registry) -> Self {
        Self {
            worst_case: gauge(
                r,
                "iicp_memory_worst_case_bytes",
                "The most memory this configuration lets the node hold (docs/memory.md, Memory bounds).",
            ),
            limit: gauge(
                r,
                "iicp_memory_limit_bytes",
                "The memory the node sized its defaults to (its cgroup limit, the machine's, or memory_limit_mib).",
            ),
            setting: gauge_vec(
                r,
                "iicp_memory_setting",
                "Memory-driven settings in force, sized to the memory or given (docs/memory.md, What machine it needs).",
                &["setting"],
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PluginSpec;
    use crate::runtime::plugin::PluginSource;
    use crate::server::node_settings::DEFAULT_MAX_CONCURRENT;

    fn memory(mib: u64) -> Memory {
        Memory {
            bytes: mib << 20,
            source: "test".to_string(),
            known: true,
        }
    }

    fn sized(mib: u64, config: &mut NodeConfig) -> Vec<Lowered> {
        let lowered = fit(config, &memory(mib));
        let worst = WorstCase::of(config);
        assert!(
            worst.total() <= memory(mib).budget(),
            "{mib} MiB: {worst} over the budget {}",
            memory(mib).budget()
        );
        lowered
    }

    #[test]
    fn a_big_machine_keeps_every_default() {
        let mut config = NodeConfig::with_plugin("x.wasm".into());
        let before = WorstCase::of(&config);
        assert!(fit(&mut config, &memory(24 << 10)).is_empty());
        assert_eq!(WorstCase::of(&config), before);
        assert_eq!(config.node.max_concurrent(), DEFAULT_MAX_CONCURRENT);
        assert_eq!(config.node.keep_resident_kib, None);
    }

    #[test]
    fn small_machines_get_fitting_defaults_that_still_serve() {
        let mut previous = 0;
        for mib in [256, 512, 2048, 8192] {
            let mut config = NodeConfig::with_plugin("x.wasm".into());
            let lowered = sized(mib, &mut config);
            assert!(!lowered.is_empty(), "{mib} MiB");
            for setting in Setting::ALL {
                if let Some(value) = setting.value(&config) {
                    assert!(value >= setting.floor(), "{mib}: {setting:?} {value}");
                }
            }
            // More memory never serves fewer tasks at once.
            let slots = config.node.max_concurrent();
            assert!(slots >= previous, "{mib} MiB");
            previous = slots;
            assert_eq!(config.node.runtime().engine.max_instances, slots);
        }
    }

    #[test]
    fn the_readme_table_of_sized_defaults_holds() {
        // docs/memory.md, "What machine it needs": memory → slots, task memory in
        // MiB, connections, unsent answers in MiB, keep-resident in KiB,
        // nonces, worst case in MiB.
        let table = [
            (256, [1, 64, 32, 10, 64, 65_536, 224]),
            (512, [2, 128, 32, 10, 64, 88_064, 447]),
            (2048, [8, 128, 256, 16, 256, 249_856, 1_708]),
            (8192, [22, 128, 2048, 128, 704, 706_560, 6_208]),
            (24 << 10, [32, 128, 4096, 256, 1024, 1_000_000, 10_374]),
        ];
        for (mib, row) in table {
            let mut config = NodeConfig::with_plugin("x.wasm".into());
            fit(&mut config, &memory(mib));
            let value = |s: Setting| s.value(&config).unwrap();
            let got = [
                value(Setting::MaxConcurrent),
                value(Setting::PluginMemory) >> 20,
                value(Setting::MaxConnections),
                value(Setting::UnsentAnswers) >> 20,
                value(Setting::KeepResident) >> 10,
                value(Setting::NonceCache),
                WorstCase::of(&config).total().div_ceil(1 << 20),
            ];
            assert_eq!(got, row, "{mib} MiB");
        }
    }

    #[test]
    fn given_settings_are_never_changed() {
        let mut config = NodeConfig::with_plugin("x.wasm".into());
        config.node.max_concurrent = Some(3);
        config.memory.given.max_concurrent = true;
        config.node.max_connections = Some(100);
        config.memory.given.max_connections = true;
        config.node.keep_resident_kib = Some(256);
        let given = std::sync::Arc::make_mut(&mut config.plugins[0]);
        given.source.limits.memory_bytes = 48 << 20;
        given.memory_given = true;
        let mut unset = PluginSpec::new(PluginSource::new("y.wasm".into()));
        unset.source.id = Some("y".to_string());
        config.plugins.push(unset.into());
        let lowered = sized(672, &mut config);
        assert_eq!(config.node.max_concurrent, Some(3));
        assert_eq!(config.node.max_connections, Some(100));
        assert_eq!(config.node.keep_resident_kib, Some(256));
        assert_eq!(config.plugins[0].source.limits.memory_bytes, 48 << 20);
        // The plugin without one got the sized memory, the others the rest.
        assert!(config.plugins[1].source.limits.memory_bytes < 128 << 20);
        assert!(lowered.iter().all(|l| !matches!(
            l.setting,
            Setting::MaxConcurrent | Setting::MaxConnections | Setting::KeepResident
        )));
    }

    #[test]
    fn settings_that_cannot_fit_are_refused_with_the_formula() {
        let mut config = NodeConfig::with_plugin("x.wasm".into());
        config.node.max_concurrent = Some(64);
        config.memory.given.max_concurrent = true;
        fit(&mut config, &memory(256));
        let error = check(&config, &memory(256)).unwrap_err();
        assert!(error.contains("64 tasks ×"), "{error}");
        assert!(error.contains("256 MiB of memory"), "{error}");
        config.node.memory_overcommit = true;
        assert!(check(&config, &memory(256)).is_ok());
        // Overcommit sizes nothing: the defaults stay around what was given.
        let mut overcommitted = NodeConfig::with_plugin("x.wasm".into());
        overcommitted.node.memory_overcommit = true;
        assert!(fit(&mut overcommitted, &memory(256)).is_empty());
        assert_eq!(overcommitted.node.edge().max_connections, 4096);
    }

    #[test]
    fn the_sizing_does_not_depend_on_the_kernel() {
        // An unset keep-resident counts as the larger kernel default, so the
        // sized worst case is the same with PAGEMAP_SCAN and without it.
        use crate::runtime::engine::{KEEP_RESIDENT_WITHOUT_SCAN, keep_resident_for};
        assert_eq!(keep_resident_for(true), KEEP_RESIDENT_WITH_SCAN);
        assert_eq!(keep_resident_for(false), KEEP_RESIDENT_WITHOUT_SCAN);
        let mut config = NodeConfig::with_plugin("x.wasm".into());
        let unset = WorstCase::of(&config).total();
        for scan in [true, false] {
            config.node.keep_resident_kib = Some((keep_resident_for(scan) >> 10) as u32);
            assert!(WorstCase::of(&config).total() <= unset, "scan {scan}");
        }
    }

    #[test]
    fn the_memory_is_the_smallest_seen_or_set_else_an_assumed_gib() {
        let seen = |bytes: u64, what: &str| Some((bytes, what.to_string()));
        let memory = Memory::of_readings(
            Some(256 << 20),
            seen(1 << 30, "cgroup"),
            seen(8 << 30, "MemTotal"),
        );
        assert_eq!((memory.bytes, memory.known), (256 << 20, true));
        assert_eq!(memory.source, "memory_limit_mib");
        // A setting above what the kernel enforces does not count.
        let memory = Memory::of_readings(Some(4 << 30), seen(1 << 30, "cgroup"), None);
        assert_eq!((memory.bytes, memory.source.as_str()), (1 << 30, "cgroup"));
        let unseen = Memory::of_readings(None, None, None);
        assert_eq!((unseen.bytes, unseen.known), (UNSEEN_MEMORY, false));
    }

    #[test]
    fn the_budget_leaves_an_eighth_and_at_least_32_mib() {
        assert_eq!(memory(8192).budget(), 7168 << 20);
        assert_eq!(memory(128).budget(), 96 << 20);
    }

    #[test]
    fn reloads_keep_the_sized_values() {
        let mut running = NodeConfig::with_plugin("x.wasm".into());
        running.node.memory_limit_mib = Some(512);
        fit(&mut running, &memory(512));
        fill_in(&mut running);
        let mut next = NodeConfig::with_plugin("x.wasm".into());
        next.node.memory_limit_mib = Some(512);
        carry_over(&running, &mut next).unwrap();
        assert_eq!(next.plugins, running.plugins);
        // The [node] table as the node runs it: nothing for a restart.
        assert_eq!(next.node, running.node);
    }

    fn write(root: &Path, file: &str, text: &str) {
        let path = root.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn the_cgroup_limit_is_the_smallest_on_the_path_of_our_own_group() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        let limit = |membership: &str| cgroup_limit(membership, root).map(|(bytes, _)| bytes);
        // cgroup v2, as in a systemd service with MemoryMax=2G.
        let membership = "0::/system.slice/iicp-host.service\n";
        write(root, "memory.max", "max\n");
        write(root, "system.slice/memory.max", "max\n");
        write(
            root,
            "system.slice/iicp-host.service/memory.max",
            "2147483648\n",
        );
        assert_eq!(limit(membership), Some(2 << 30));
        assert!(
            cgroup_limit(membership, root)
                .unwrap()
                .1
                .ends_with("iicp-host.service/memory.max")
        );
        // A lower limit on the slice above it binds too.
        write(root, "system.slice/memory.max", "1073741824\n");
        assert_eq!(limit(membership), Some(1 << 30));
        // No limit anywhere; or a group whose files cannot be read.
        assert_eq!(limit("0::/user.slice\n"), None);

        // cgroup v1's memory controller, beside others; "unlimited" is none.
        let membership = "5:devices:/\n4:cpu,memory:/process_api/abc\n0::/\n";
        write(
            root,
            "memory/memory.limit_in_bytes",
            "9223372036854771712\n",
        );
        assert_eq!(limit(membership), None);
        write(
            root,
            "memory/process_api/abc/memory.limit_in_bytes",
            "536870912\n",
        );
        assert_eq!(limit(membership), Some(512 << 20));
        assert_eq!(limit("garbage\n\n4:memory\n"), None);
        assert_eq!(mem_total("MemTotal:       1024 kB\n"), Some(1 << 20));
    }
}
