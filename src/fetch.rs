//! Where a plugin's bytes come from, before the runtime sees them: a local
//! path as it is; an `oci://` reference pulled (unless stored), checked to be
//! a component and signed as its policy asks, and handed to the runtime as
//! the stored, verified file. The runtime itself never talks to a registry.

use std::path::{Path, PathBuf};

use crate::metrics::Metrics;
use crate::oci::{OciLocation, OciSettings, Puller};
use crate::runtime::Runtime;
use crate::runtime::plugin::{LoadError, LoadedPlugin, PluginSource};

/// Resolves plugin locations to local files and loads them.
pub struct PluginFetcher {
    oci: Puller,
}

impl PluginFetcher {
    /// A fetcher pulling from registries as `settings` say, counted in
    /// `metrics`.
    pub fn new(settings: &OciSettings, metrics: &Metrics) -> Self {
        Self {
            oci: Puller::new(
                settings,
                metrics.oci.pulls.clone(),
                metrics.oci.refusals.clone(),
            ),
        }
    }

    /// Loads `source` into `runtime`, pulling and verifying it first when
    /// its path is an `oci://` reference.
    pub async fn load(
        &self,
        runtime: &Runtime,
        source: &PluginSource,
    ) -> Result<LoadedPlugin, LoadError> {
        let file = self.local_file(source).await?;
        runtime.load_plugin_file(source, &file).await
    }

    /// The file to load for `source`: its path, or the verified component
    /// (signed as its policy asks) an `oci://` reference names, pulled
    /// unless stored.
    async fn local_file(&self, source: &PluginSource) -> Result<PathBuf, LoadError> {
        let location = &source.path;
        match OciLocation::from_path(location) {
            None => Ok(location.to_path_buf()),
            Some(parsed) => {
                let fetch_error = |why: String| LoadError::Fetch(location.to_path_buf(), why);
                let oci = parsed.map_err(fetch_error)?;
                let fetched = self.oci.fetch(&oci, &source.signatures).await;
                Ok(fetched.map_err(|e| fetch_error(e.to_string()))?.path)
            }
        }
    }

    /// The SHA-256 of the plugin `location` names now — a file's content, or
    /// the component an `oci://` tag points to at the registry (its stored
    /// resolution when the registry is unreachable) — `None` if unknown.
    pub async fn current_sha256(&self, runtime: &Runtime, location: &Path) -> Option<String> {
        match OciLocation::from_path(location) {
            None => runtime.file_sha256(location).await,
            Some(parsed) => {
                let resolved = self.oci.resolve(&parsed.ok()?).await.ok()?;
                Some(resolved.layer.sha256().to_string())
            }
        }
    }
}
