//! `iicp-host push FILE oci://REGISTRY/REPO:TAG`: publishes a component as
//! the Wasm OCI artifact convention has it (see [`super::manifest`]), so
//! `wkg`, wasmCloud and any convention-following tool can pull it, and
//! every iicp-host node can run it by reference.

use std::collections::BTreeMap;

use oci_client::RegistryOperation;
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::manifest::OciImageManifest;

use super::manifest::{ComponentSummary, WASM_CONFIG, WASM_LAYER, WasmConfig};
use super::pull::classify;
use super::reference::OciLocation;
use super::{OciError, OciSettings, auth};

/// Pushes `component` (bytes of a `.wasm` component described by
/// `summary`) to `location`; returns the manifest digest now tagged.
pub async fn push(
    component: Vec<u8>,
    summary: ComponentSummary,
    location: &OciLocation,
    settings: &OciSettings,
) -> Result<String, OciError> {
    if location.tag.is_none() || location.digest.is_some() {
        return Err(OciError::Refused(
            "push to a tag: oci://REGISTRY/REPOSITORY:TAG".to_string(),
        ));
    }
    if component.len() as u64 > settings.max_plugin_bytes {
        return Err(OciError::Refused(format!(
            "the component is {} bytes, over the {}-byte limit (--oci-max-plugin-mib)",
            component.len(),
            settings.max_plugin_bytes
        )));
    }
    let layer = ImageLayer::new(component, WASM_LAYER.to_string(), None);
    let config = WasmConfig {
        created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        architecture: "wasm",
        os: "wasip2",
        layer_digests: vec![layer.sha256_digest()],
        component: summary,
    };
    let config = Config::new(
        serde_json::to_vec(&config).map_err(|e| OciError::Refused(e.to_string()))?,
        WASM_CONFIG.to_string(),
        None,
    );
    let annotations = BTreeMap::from([(
        "org.opencontainers.image.created".to_string(),
        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    )]);
    let manifest =
        OciImageManifest::build(std::slice::from_ref(&layer), &config, Some(annotations));
    let protocol =
        if location.is_loopback() || settings.insecure_registries.contains(&location.registry) {
            ClientProtocol::HttpsExcept(vec![location.registry.clone()])
        } else {
            ClientProtocol::Https
        };
    let client = oci_client::Client::new(ClientConfig {
        protocol: protocol.clone(),
        connect_timeout: Some(settings.timeout),
        read_timeout: Some(settings.timeout),
        ..ClientConfig::default()
    });
    let credentials = auth::credentials(&location.registry).map_err(OciError::Refused)?;
    let reference = location.reference();
    let deadline = |doing: &str| {
        OciError::Unreachable(format!(
            "no answer within {} ms while {doing}",
            settings.timeout.as_millis()
        ))
    };
    let scheme = if matches!(protocol, ClientProtocol::Https) {
        "https"
    } else {
        "http"
    };
    let credentials = tokio::time::timeout(
        settings.timeout,
        auth::offer(
            &credentials,
            scheme,
            &reference,
            RegistryOperation::Push,
            settings.timeout,
        ),
    )
    .await
    .map_err(|_| deadline("authorizing"))?
    .map_err(OciError::Refused)?;
    tokio::time::timeout(
        settings.timeout,
        client.push(&reference, &[layer], config, &credentials, Some(manifest)),
    )
    .await
    .map_err(|_| deadline("pushing"))?
    .map_err(classify)?;
    tokio::time::timeout(
        settings.timeout,
        client.fetch_manifest_digest(&reference, &credentials),
    )
    .await
    .map_err(|_| deadline("reading back the digest"))?
    .map_err(classify)
}
