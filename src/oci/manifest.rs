//! The Wasm OCI artifact convention (the one `wkg`, wasmCloud and
//! `oci-wasm` use): an OCI image manifest whose config has media type
//! `application/vnd.wasm.config.v0+json` and whose single layer is the
//! component, `application/wasm`. We push exactly that, and pull it or the
//! older `wasm-to-oci` types; any other manifest, config or layer type is
//! refused, naming what was found and what is accepted.

use serde::{Deserialize, Serialize};

use super::reference::valid_digest;

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Docker's schema 2 manifest, which some registries still hand out.
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// The manifest types we ask for and accept.
pub const MANIFEST_TYPES: &[&str] = &[OCI_MANIFEST, DOCKER_MANIFEST];
/// The Wasm config media type we push.
pub const WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";
/// The Wasm layer media type we push.
pub const WASM_LAYER: &str = "application/wasm";
/// Config types accepted: ours, and `wasm-to-oci`'s.
const CONFIG_TYPES: &[&str] = &[WASM_CONFIG, "application/vnd.wasm.config.v1+json"];
/// Layer types accepted: ours, and `wasm-to-oci`'s.
const LAYER_TYPES: &[&str] = &[WASM_LAYER, "application/vnd.wasm.content.layer.v1+wasm"];

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    schema_version: u32,
    media_type: Option<String>,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    media_type: String,
    digest: String,
    size: u64,
}

/// The component layer a manifest names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WasmLayer {
    /// `sha256:<hex>`; the hex is also the plugin's SHA-256.
    pub digest: String,
    /// Its size in bytes, as the manifest declares it.
    pub size: u64,
    /// Its media type.
    pub media_type: String,
}

impl WasmLayer {
    /// The digest's hex part.
    pub fn sha256(&self) -> &str {
        self.digest.trim_start_matches("sha256:")
    }
}

/// Checks a manifest against the convention and `max_layer_bytes`;
/// `content_type` is the response's, used when the body names no type.
pub fn wasm_layer(
    body: &[u8],
    content_type: Option<&str>,
    max_layer_bytes: u64,
) -> Result<WasmLayer, String> {
    let manifest: Manifest =
        serde_json::from_slice(body).map_err(|e| format!("the manifest is not valid: {e}"))?;
    if manifest.schema_version != 2 {
        return Err(format!(
            "manifest schemaVersion {} (expected 2)",
            manifest.schema_version
        ));
    }
    let media_type = manifest
        .media_type
        .as_deref()
        .or(content_type)
        .unwrap_or(OCI_MANIFEST);
    if !MANIFEST_TYPES.contains(&media_type) {
        return Err(unexpected("manifest", media_type, MANIFEST_TYPES));
    }
    if !CONFIG_TYPES.contains(&manifest.config.media_type.as_str()) {
        return Err(unexpected(
            "config",
            &manifest.config.media_type,
            CONFIG_TYPES,
        ));
    }
    let [layer] = manifest.layers.as_slice() else {
        return Err(format!(
            "the manifest has {} layers; a Wasm component artifact has exactly one",
            manifest.layers.len()
        ));
    };
    if !LAYER_TYPES.contains(&layer.media_type.as_str()) {
        return Err(unexpected("layer", &layer.media_type, LAYER_TYPES));
    }
    if !valid_digest(&layer.digest) {
        return Err(format!("the layer digest {:?} is not sha256", layer.digest));
    }
    if layer.size > max_layer_bytes {
        return Err(format!(
            "the component is {} bytes, over the {max_layer_bytes}-byte limit (oci.max_plugin_mib)",
            layer.size
        ));
    }
    Ok(WasmLayer {
        digest: layer.digest.clone(),
        size: layer.size,
        media_type: layer.media_type.clone(),
    })
}

fn unexpected(what: &str, found: &str, accepted: &[&str]) -> String {
    format!(
        "unexpected {what} media type {found:?} (accepted: {})",
        accepted.join(", ")
    )
}

/// The config blob we push: the convention's `WasmConfig`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WasmConfig {
    /// When it was pushed (RFC 3339).
    pub created: String,
    /// Always `wasm`.
    pub architecture: &'static str,
    /// `wasip2` for components.
    pub os: &'static str,
    /// The layer digests, in order.
    pub layer_digests: Vec<String>,
    /// What the component imports and exports.
    pub component: ComponentSummary,
}

/// The `component` part of [`WasmConfig`].
#[derive(Serialize)]
pub struct ComponentSummary {
    /// Interfaces it exports.
    pub exports: Vec<String>,
    /// Interfaces it imports.
    pub imports: Vec<String>,
    /// The world it targets, when known.
    pub target: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(config: &str, layers: &[(&str, u64)]) -> Vec<u8> {
        let digest = format!("sha256:{}", "a".repeat(64));
        let layers: Vec<_> = layers
            .iter()
            .map(|(t, size)| serde_json::json!({"mediaType": t, "digest": digest, "size": size}))
            .collect();
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": config, "digest": digest, "size": 2},
            "layers": layers,
        }))
        .unwrap()
    }

    #[test]
    fn the_convention_is_accepted_and_others_refused() {
        let good = wasm_layer(&manifest(WASM_CONFIG, &[(WASM_LAYER, 10)]), None, 100).unwrap();
        assert_eq!(good.size, 10);
        assert_eq!(good.sha256(), "a".repeat(64));

        let image = manifest(
            "application/vnd.oci.image.config.v1+json",
            &[(WASM_LAYER, 10)],
        );
        assert!(
            wasm_layer(&image, None, 100)
                .unwrap_err()
                .contains("unexpected config media type")
        );
        let tar = manifest(
            WASM_CONFIG,
            &[("application/vnd.oci.image.layer.v1.tar+gzip", 10)],
        );
        assert!(
            wasm_layer(&tar, None, 100)
                .unwrap_err()
                .contains("unexpected layer media type")
        );
        let two = manifest(WASM_CONFIG, &[(WASM_LAYER, 1), (WASM_LAYER, 1)]);
        assert!(
            wasm_layer(&two, None, 100)
                .unwrap_err()
                .contains("2 layers")
        );
        let big = manifest(WASM_CONFIG, &[(WASM_LAYER, 101)]);
        assert!(
            wasm_layer(&big, None, 100)
                .unwrap_err()
                .contains("over the")
        );
        assert!(wasm_layer(b"<html>", None, 100).is_err());
    }
}
