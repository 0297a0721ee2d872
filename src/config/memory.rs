//! Which of the memory-driven settings the operator gave (how much
//! memory the node may assume is `[node] memory_limit_mib`). The given
//! ones are honoured (or the start refused); the others are sized to the
//! memory by `crate::memory_sizing`.

/// The memory settings of a node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemorySettings {
    /// Which memory-driven settings the operator gave.
    pub given: GivenKnobs,
    /// The `memory_mb` the node chose at start for plugins that set none,
    /// when it lowered the default; a hot reload gives it to such plugins
    /// too.
    pub sized_plugin_memory_bytes: Option<usize>,
}

/// The memory-driven node settings the operator gave explicitly, in the
/// file, the environment or a flag (a plugin's `memory_mb` is recorded on
/// its `PluginSpec`, `keep_resident_kib` by its `Option`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GivenKnobs {
    /// `max_concurrent`.
    pub max_concurrent: bool,
    /// `max_connections`.
    pub max_connections: bool,
    /// `max_unsent_answers_mib`.
    pub max_unsent_answers: bool,
    /// `nonce_cache_capacity`.
    pub nonce_cache_capacity: bool,
    /// `idempotency_max_bytes`.
    pub idempotency_max_bytes: bool,
    /// `max_dns_lookups`.
    pub max_dns_lookups: bool,
}
