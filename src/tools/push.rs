//! `iicp-host push FILE oci://REGISTRY/REPO:TAG`: publishes a plugin so
//! nodes can run it by reference. The file must be a component this host
//! compiles; its imports and exports go into the artifact's config, as the
//! Wasm OCI convention asks.

use std::path::Path;
use std::time::Instant;

use crate::oci::manifest::ComponentSummary;
use crate::oci::{OciLocation, OciSettings, push};
use crate::runtime::artifact::{PrecompiledPolicy, is_component};
use crate::runtime::plugin::HANDLER_EXPORT;

/// The world a plugin targets, recorded when it exports the handler.
const PLUGIN_WORLD: &str = "iicp:plugin/plugin@0.1.0";

/// Pushes `file` to `reference`; returns a one-line summary.
pub async fn push(file: &Path, reference: &str, settings: &OciSettings) -> Result<String, String> {
    let location = OciLocation::parse(reference)?;
    let bytes = std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    if !is_component(&bytes) {
        return Err(format!(
            "{} is not a WebAssembly component (.wasm); push the component, not a core module or a compiled artifact",
            file.display()
        ));
    }
    let facts = super::runtime()?
        .inspect(file, PrecompiledPolicy::Refuse)
        .map_err(|e| e.to_string())?;
    let target = facts
        .exports
        .iter()
        .any(|e| e == HANDLER_EXPORT)
        .then(|| PLUGIN_WORLD.to_string());
    let summary = ComponentSummary {
        exports: facts.exports,
        imports: facts.imports,
        target,
    };
    let started = Instant::now();
    let size = bytes.len();
    let digest = push::push(bytes, summary, &location, settings)
        .await
        .map_err(|e| format!("cannot push to {location}: {e}"))?;
    Ok(format!(
        "pushed {} ({size} bytes, sha256 {}) to {location}@{digest} in {} ms",
        file.display(),
        facts.sha256,
        crate::clock::whole_ms(started.elapsed())
    ))
}
