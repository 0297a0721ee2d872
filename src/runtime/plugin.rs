//! Loading a plugin: read and classify the file, compile it (or load it from
//! the artifact cache), check that it fits the `iicp:plugin` world, build the
//! pre-instantiated component, and ask the plugin to describe itself (once
//! per artifact, configuration and limits: see [`super::shared`]).
//!
//! Every refusal is a [`LoadError`] whose `Display` is one line an operator
//! can act on.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::Engine;

pub use super::link::HANDLER_EXPORT;
pub use super::load_error::LoadError;

use super::artifact::PrecompiledPolicy;
use super::bindings::{Descriptor, PluginPre};
use super::cache::CacheOutcome;
use super::host::config::PluginConfig;
use super::host::dns::DnsLookups;
use super::host::http::{HttpPolicy, HttpSettings};
use super::limits::PluginLimits;
use super::reuse::{InstancePool, WarmRegistry};
use super::shared::{ArtifactRegistry, DescribeInput, SharedArtifact};
use super::store::{PluginReach, TaskState, task_store};
use crate::oci::OciLocation;
use crate::oci::signature::SignaturePolicy;
use crate::runtime::metrics::{DnsMetrics, PluginHttpMetrics, RuntimeMetrics};

/// Time a plugin gets to answer `describe` at load time.
const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(5);
/// The input modalities the protocol knows.
const MODALITIES: &[&str] = &["text", "image", "audio", "video"];
const MAX_INTENT_BYTES: usize = 256;

/// What to load.
#[derive(Clone, PartialEq)]
pub struct PluginSource {
    /// Operator-chosen id; defaults to the plugin's own name.
    pub id: Option<String>,
    /// Path of the `.wasm` component, or its `oci://` reference.
    pub path: PathBuf,
    /// Limits for the plugin's tasks.
    pub limits: PluginLimits,
    /// Values the plugin may read.
    pub config: BTreeMap<String, String>,
    /// Secret values the plugin may read (taken from the environment).
    pub secrets: BTreeMap<String, String>,
    /// Where it may send HTTP requests.
    pub http: HttpSettings,
    /// Whether the local file may be a compiled artifact (`precompiled =
    /// true`): native code the operator vouches for. Never for `oci://`.
    pub precompiled: bool,
    /// Who must have signed an `oci://` plugin, and whether its reference
    /// must pin a digest.
    pub signatures: SignaturePolicy,
}

impl PluginSource {
    /// A plugin at `path` with default limits and no config.
    pub fn new(path: PathBuf) -> Self {
        Self {
            id: None,
            path,
            limits: PluginLimits::default(),
            config: BTreeMap::new(),
            secrets: BTreeMap::new(),
            http: HttpSettings::default(),
            precompiled: false,
            signatures: SignaturePolicy::default(),
        }
    }

    /// Whether its file may be a compiled artifact: only a local path the
    /// operator opted in for.
    pub fn precompiled_policy(&self) -> PrecompiledPolicy {
        let local = OciLocation::from_path(&self.path).is_none();
        if self.precompiled && local {
            PrecompiledPolicy::Allow
        } else {
            PrecompiledPolicy::Refuse
        }
    }
}

impl fmt::Debug for PluginSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PluginSource")
            .field("id", &self.id)
            .field("path", &self.path)
            .field("limits", &self.limits)
            .field("config", &self.config)
            .field("secrets", &self.secrets.keys().collect::<Vec<_>>())
            .field("http", &self.http)
            .field("precompiled", &self.precompiled)
            .field("signatures", &self.signatures)
            .finish()
    }
}

/// One intent a plugin serves, as it described it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapabilityInfo {
    /// Intent URN.
    pub intent: String,
    /// Models served for it.
    pub models: Vec<String>,
    /// Advertised `max_tokens`, if limited.
    pub max_tokens: Option<u32>,
    /// Accepted input modalities (never empty; `text` by default).
    pub input_modalities: Vec<String>,
}

/// A plugin's validated self-description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginInfo {
    /// The plugin's name.
    pub name: String,
    /// The plugin's version.
    pub version: String,
    /// The intents it serves, each once.
    pub capabilities: Vec<CapabilityInfo>,
}

/// A plugin ready to run tasks: compiled, linked and described.
pub struct LoadedPlugin {
    /// The id tasks, logs and metrics know it by.
    pub id: Arc<str>,
    /// What it says it serves.
    pub info: PluginInfo,
    /// SHA-256 of the `.wasm`, hex.
    pub sha256: String,
    /// Where it was loaded from.
    pub path: PathBuf,
    /// Limits for its tasks.
    pub limits: PluginLimits,
    /// What it was loaded from, to tell on reload whether anything changed.
    pub source: PluginSource,
    /// Where the compiled code came from.
    pub cache: CacheOutcome,
    /// Time taken to load it.
    pub load_time: Duration,
    pub(super) artifact: Arc<SharedArtifact>,
    pub(super) reuse: Option<Arc<InstancePool>>,
    pub(super) reach: PluginReach,
}

impl LoadedPlugin {
    /// Reused instances waiting for a task (0 without reuse).
    pub fn idle_instances(&self) -> usize {
        self.reuse.as_ref().map_or(0, |pool| pool.idle())
    }
}

impl fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("id", &self.id)
            .field("info", &self.info)
            .field("sha256", &self.sha256)
            .finish_non_exhaustive()
    }
}

/// Reads, compiles, links and describes a plugin; the compiled code is
/// shared with every other plugin loaded from the same bytes.
pub(super) async fn load(
    registry: &Arc<ArtifactRegistry>,
    metrics: &RuntimeMetrics,
    warm: &WarmRegistry,
    dns: &Arc<DnsLookups>,
    source: &PluginSource,
    file: &Path,
) -> Result<LoadedPlugin, LoadError> {
    let started = Instant::now();
    let path = source.path.clone();
    // Reading and compiling are blocking and CPU-heavy (~100 ms to compile):
    // keep them off the async workers.
    let (artifact, cache_outcome) = {
        let (registry, file) = (registry.clone(), file.to_path_buf());
        let precompiled = source.precompiled_policy();
        tokio::task::spawn_blocking(move || registry.resolve(&file, precompiled))
            .await
            .map_err(|e| LoadError::Invalid(path.clone(), e.to_string()))??
    };
    let config = Arc::new(PluginConfig {
        values: source.config.clone(),
        secrets: source.secrets.clone(),
    });
    let describe_input = DescribeInput {
        config: PluginConfig::clone(&config),
        limits: source.limits.clone(),
    };
    let descriptor = match artifact.description(&describe_input) {
        Some(descriptor) => descriptor,
        None => {
            let descriptor =
                describe(registry.engine(), &artifact.pre, source, config.clone()).await?;
            artifact.remember_description(describe_input, descriptor.clone());
            descriptor
        }
    };
    let info = validate_descriptor(descriptor)
        .map_err(|why| LoadError::BadDescriptor(path.clone(), why))?;
    let id: Arc<str> = Arc::from(source.id.clone().unwrap_or_else(|| info.name.clone()));
    let http = HttpPolicy::new(&source.http, metrics.plugin_http(&id), dns.clone())
        .map_err(|why| LoadError::BadSettings(path.clone(), why))?;
    Ok(LoadedPlugin {
        id,
        info,
        sha256: artifact.sha256.clone(),
        path: source.path.clone(),
        limits: source.limits.clone(),
        source: source.clone(),
        cache: cache_outcome,
        load_time: started.elapsed(),
        artifact,
        reuse: (source.limits.instance_reuse > 1)
            .then(|| warm.pool(source.limits.instance_reuse, source.limits.instance_idle)),
        reach: PluginReach {
            config,
            http: Arc::new(http),
        },
    })
}

/// Asks the plugin to describe itself, under its own limits and with its
/// own configuration (a plugin may derive its models from it). Describing
/// reaches no network: outbound HTTP is denied.
async fn describe(
    engine: &Engine,
    pre: &PluginPre<TaskState>,
    source: &PluginSource,
    config: Arc<PluginConfig>,
) -> Result<Descriptor, LoadError> {
    let path = &source.path;
    let deadline = Instant::now() + DESCRIBE_TIMEOUT;
    let reach = PluginReach {
        config,
        http: Arc::new(
            HttpPolicy::new(
                &HttpSettings::default(),
                PluginHttpMetrics::detached(),
                // Describing may send no request, so resolves no name.
                Arc::new(DnsLookups::new(1, DnsMetrics::detached())),
            )
            .map_err(|why| LoadError::BadSettings(path.clone(), why))?,
        ),
    };
    let mut store = task_store(
        engine,
        Arc::from(source.id.as_deref().unwrap_or("loader")),
        &reach,
        Arc::from("describe"),
        &source.limits,
        deadline,
    );
    let call = async {
        let plugin = pre.instantiate_async(&mut store).await?;
        plugin.iicp_plugin_handler().call_describe(&mut store).await
    };
    match tokio::time::timeout(DESCRIBE_TIMEOUT, call).await {
        Ok(Ok(descriptor)) => Ok(descriptor),
        Ok(Err(error)) => Err(LoadError::BadDescriptor(
            path.to_path_buf(),
            format!("{error:#}"),
        )),
        Err(_) => Err(LoadError::BadDescriptor(
            path.to_path_buf(),
            format!(
                "describe did not return within {} s",
                DESCRIBE_TIMEOUT.as_secs()
            ),
        )),
    }
}

fn validate_descriptor(descriptor: Descriptor) -> Result<PluginInfo, String> {
    if descriptor.name.trim().is_empty() {
        return Err("the plugin name is empty".to_string());
    }
    if descriptor.capabilities.is_empty() {
        return Err("the plugin declares no intents".to_string());
    }
    let mut capabilities: Vec<CapabilityInfo> = Vec::with_capacity(descriptor.capabilities.len());
    for capability in descriptor.capabilities {
        let intent = capability.intent;
        if intent.is_empty()
            || intent.len() > MAX_INTENT_BYTES
            || intent.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(format!("invalid intent {intent:?}"));
        }
        if capabilities.iter().any(|c| c.intent == intent) {
            return Err(format!("intent {intent} is declared twice"));
        }
        if capability.max_tokens == Some(0) {
            return Err(format!("intent {intent} declares max-tokens 0"));
        }
        if let Some(bad) = capability
            .input_modalities
            .iter()
            .find(|m| !MODALITIES.contains(&m.as_str()))
        {
            return Err(format!(
                "intent {intent} declares unknown input modality {bad:?}"
            ));
        }
        let mut input_modalities = capability.input_modalities;
        if input_modalities.is_empty() {
            input_modalities.push("text".to_string());
        }
        capabilities.push(CapabilityInfo {
            intent,
            models: capability.models,
            max_tokens: capability.max_tokens,
            input_modalities,
        });
    }
    Ok(PluginInfo {
        name: descriptor.name,
        version: descriptor.version,
        capabilities,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::bindings::Capability;

    fn capability(intent: &str) -> Capability {
        Capability {
            intent: intent.to_string(),
            models: vec![],
            max_tokens: None,
            input_modalities: vec![],
        }
    }

    fn descriptor(capabilities: Vec<Capability>) -> Descriptor {
        Descriptor {
            name: "p".to_string(),
            version: "1".to_string(),
            capabilities,
        }
    }

    #[test]
    fn descriptor_defaults_modalities_to_text() {
        let info =
            validate_descriptor(descriptor(vec![capability("urn:iicp:intent:a:b:v1")])).unwrap();
        assert_eq!(info.capabilities[0].input_modalities, vec!["text"]);
    }

    #[test]
    fn descriptor_errors_are_specific() {
        let twice = vec![capability("urn:a"), capability("urn:a")];
        assert!(
            validate_descriptor(descriptor(twice))
                .unwrap_err()
                .contains("twice")
        );
        assert!(
            validate_descriptor(descriptor(vec![]))
                .unwrap_err()
                .contains("no intents")
        );
        let spaced = vec![capability("urn:a b")];
        assert!(
            validate_descriptor(descriptor(spaced))
                .unwrap_err()
                .contains("invalid intent")
        );
        let mut odd = capability("urn:a");
        odd.input_modalities = vec!["smell".to_string()];
        assert!(
            validate_descriptor(descriptor(vec![odd]))
                .unwrap_err()
                .contains("smell")
        );
    }
}
