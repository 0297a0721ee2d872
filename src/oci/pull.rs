//! Resolving and pulling: reference → manifest (bounded, checked) → the
//! component layer (streamed to disk, bounded, verified) → a file the
//! runtime loads. See the module docs of [`crate::oci`] for the rules.

use std::path::PathBuf;
use std::time::Instant;

use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, RegistryOperation};
use prometheus::IntCounterVec;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::manifest::{MANIFEST_TYPES, WasmLayer, wasm_layer};
use super::reference::OciLocation;
use super::signature::{self, SignaturePolicy};
use super::store::Store;
use super::{OciError, OciSettings, auth, one_line};
use crate::wasm_kind::WasmKind;

/// The labels of `iicp_oci_refusals_total{reason}`.
pub const REFUSAL_REASONS: [&str; 3] = ["not_component", "signature", "unpinned"];

/// Connecting gets at most this much of a call's deadline.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What a location names now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The manifest digest.
    pub manifest_digest: String,
    /// The component layer.
    pub layer: WasmLayer,
    /// Whether the registry was unreachable and the stored copy stood in.
    pub offline: bool,
}

/// A pulled plugin, on disk.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The verified component file.
    pub path: PathBuf,
    /// What the location resolved to.
    pub resolved: Resolved,
    /// Whether the component was downloaded now (rather than found stored).
    pub downloaded: bool,
}

/// Pulls plugins from registries into the store.
pub struct Puller {
    settings: OciSettings,
    /// Opened at the first pull: nodes without OCI plugins create nothing.
    store: std::sync::OnceLock<Result<Store, String>>,
    http: reqwest::Client,
    pulls: IntCounterVec,
    refusals: IntCounterVec,
}

/// One registry conversation: the OCI client (it keeps the token) and the
/// credentials.
struct Session {
    client: Client,
    credentials: RegistryAuth,
}

impl Puller {
    /// A puller with `settings`, counting into `pulls`
    /// (`iicp_oci_pulls_total{result}`) and `refusals`
    /// (`iicp_oci_refusals_total{reason}`, see [`REFUSAL_REASONS`]).
    pub fn new(settings: &OciSettings, pulls: IntCounterVec, refusals: IntCounterVec) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT.min(settings.timeout))
            .timeout(settings.timeout)
            .build()
            .unwrap_or_default();
        Self {
            settings: settings.clone(),
            store: std::sync::OnceLock::new(),
            http,
            pulls,
            refusals,
        }
    }

    /// Counts a refusal for `reason` and passes `error` on.
    fn refused(&self, reason: &str, error: OciError) -> OciError {
        if matches!(error, OciError::Refused(_)) {
            self.refusals.with_label_values(&[reason]).inc();
        }
        error
    }

    fn store(&self) -> Result<&Store, OciError> {
        self.store
            .get_or_init(|| match &self.settings.store_dir {
                None => Err("no directory to keep pulled plugins in: set --cache-dir".to_string()),
                Some(dir) => Store::open(dir, self.settings.max_store_bytes)
                    .map_err(|e| format!("cannot use {}: {e}", dir.display())),
            })
            .as_ref()
            .map_err(|e| OciError::Refused(e.clone()))
    }

    fn plain_http(&self, location: &OciLocation) -> bool {
        location.is_loopback()
            || self
                .settings
                .insecure_registries
                .contains(&location.registry)
    }

    fn session(&self, location: &OciLocation) -> Result<Session, OciError> {
        let protocol = if self.plain_http(location) {
            ClientProtocol::HttpsExcept(vec![location.registry.clone()])
        } else {
            ClientProtocol::Https
        };
        let client = Client::new(ClientConfig {
            protocol,
            platform_resolver: None,
            connect_timeout: Some(CONNECT_TIMEOUT.min(self.settings.timeout)),
            read_timeout: Some(self.settings.timeout),
            ..ClientConfig::default()
        });
        let credentials = auth::credentials(&location.registry).map_err(OciError::Refused)?;
        Ok(Session {
            client,
            credentials,
        })
    }

    /// What `location` names now: asks the registry (a pinned digest whose
    /// manifest is stored needs no registry); when the registry cannot be
    /// reached, the tag's last stored resolution stands in.
    pub async fn resolve(&self, location: &OciLocation) -> Result<Resolved, OciError> {
        let session = self.session(location)?;
        self.resolve_in(&session, location).await
    }

    /// Resolves `location` and returns its component on disk, downloading
    /// it unless the store has it; with `policy`'s keys, only once a
    /// signature by one of them verifies for the manifest.
    pub async fn fetch(
        &self,
        location: &OciLocation,
        policy: &SignaturePolicy,
    ) -> Result<Fetched, OciError> {
        let started = Instant::now();
        let outcome = self.fetch_inner(location, policy).await;
        let result = match &outcome {
            Ok(fetched) if fetched.downloaded => "pulled",
            Ok(fetched) if fetched.resolved.offline => "offline",
            Ok(_) => "stored",
            Err(_) => "failed",
        };
        self.pulls.with_label_values(&[result]).inc();
        if let Ok(fetched) = &outcome {
            tracing::info!(
                location = %location,
                digest = %fetched.resolved.manifest_digest,
                layer = %fetched.resolved.layer.digest,
                bytes = fetched.resolved.layer.size,
                result,
                ms = crate::clock::whole_ms(started.elapsed()),
                "plugin fetched"
            );
        }
        outcome
    }

    async fn fetch_inner(
        &self,
        location: &OciLocation,
        policy: &SignaturePolicy,
    ) -> Result<Fetched, OciError> {
        if policy.require_digest && location.digest.is_none() {
            return Err(self.refused("unpinned", OciError::Refused(
                "the reference must pin a digest (oci.require_digest): oci://REGISTRY/REPOSITORY@sha256:DIGEST".to_string(),
            )));
        }
        let store = self.store()?;
        let session = self.session(location)?;
        let resolved = self.resolve_in(&session, location).await?;
        if policy.requires_signature() {
            self.verify_signature(&session, location, &resolved, policy)
                .await
                .map_err(|error| self.refused("signature", error))?;
        }
        let (path, downloaded) = match store.blob(&resolved.layer.digest) {
            Some(path) => {
                // Stored by an earlier version that did not check.
                only_components(&path, &resolved.layer)
                    .map_err(|why| self.refused("not_component", OciError::Refused(why)))?;
                (path, false)
            }
            None if resolved.offline => {
                return Err(OciError::Unreachable(format!(
                    "{} is not stored and the registry is unreachable",
                    resolved.layer.digest
                )));
            }
            None => (
                self.download(&session, location, &resolved.layer).await?,
                true,
            ),
        };
        // A tag is remembered only once what it names is stored and
        // verified, so the offline fallback always has a whole plugin.
        if location.digest.is_none()
            && !resolved.offline
            && let Err(error) = store.tag(location, &resolved.manifest_digest)
        {
            tracing::warn!(%error, "cannot record a pulled tag; offline starts will not find it");
        }
        Ok(Fetched {
            path,
            resolved,
            downloaded,
        })
    }

    async fn resolve_in(
        &self,
        session: &Session,
        location: &OciLocation,
    ) -> Result<Resolved, OciError> {
        let store = self.store()?;
        let max = self.settings.max_plugin_bytes;
        if let Some(digest) = &location.digest
            && let Some(body) = store.manifest(digest, self.settings.max_manifest_bytes)
        {
            let layer = wasm_layer(&body, None, max).map_err(OciError::Refused)?;
            return Ok(Resolved {
                manifest_digest: digest.clone(),
                layer,
                offline: false,
            });
        }
        match self.manifest(session, location, "the manifest").await {
            Ok((digest, body, content_type)) => {
                let layer =
                    wasm_layer(&body, content_type.as_deref(), max).map_err(OciError::Refused)?;
                if let Err(error) = store.put_manifest(&digest, &body) {
                    tracing::warn!(%error, "cannot store a pulled manifest; it will be pulled again");
                }
                Ok(Resolved {
                    manifest_digest: digest,
                    layer,
                    offline: false,
                })
            }
            Err(OciError::Unreachable(why)) => {
                let stored = store.tagged(location).and_then(|digest| {
                    let body = store.manifest(&digest, self.settings.max_manifest_bytes)?;
                    Some((digest, wasm_layer(&body, None, max).ok()?))
                });
                let Some((digest, layer)) = stored else {
                    return Err(OciError::Unreachable(format!(
                        "{why}; nothing pulled from it before"
                    )));
                };
                tracing::warn!(
                    location = %location,
                    digest = %digest,
                    error = %why,
                    "registry unreachable; using the copy pulled before"
                );
                Ok(Resolved {
                    manifest_digest: digest,
                    layer,
                    offline: true,
                })
            }
            Err(refused) => Err(refused),
        }
    }

    /// Authorizes with the registry: returns the header for our own
    /// requests (the OCI client keeps its token for its own).
    async fn authorize(
        &self,
        session: &Session,
        location: &OciLocation,
    ) -> Result<Option<HeaderValue>, OciError> {
        let reference = location.reference();
        let scheme = if self.plain_http(location) {
            "http"
        } else {
            "https"
        };
        let timeout = self.settings.timeout;
        let credentials = tokio::time::timeout(
            timeout,
            auth::offer(
                &session.credentials,
                scheme,
                &reference,
                RegistryOperation::Pull,
                timeout,
            ),
        )
        .await
        .map_err(|_| self.deadline("authorizing"))?
        .map_err(OciError::Refused)?;
        let token = tokio::time::timeout(
            timeout,
            session
                .client
                .auth(&reference, &credentials, RegistryOperation::Pull),
        )
        .await
        .map_err(|_| self.deadline("authorizing"))?
        .map_err(classify)?;
        let header = match (token, &credentials) {
            (Some(token), _) => Some(format!("Bearer {token}")),
            (None, RegistryAuth::Basic(user, password)) => {
                use base64::Engine as _;
                let pair = format!("{user}:{password}");
                Some(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                ))
            }
            (None, _) => None,
        };
        header
            .map(|value| {
                let mut value = HeaderValue::from_str(&value)
                    .map_err(|_| OciError::Refused("credentials unusable in a header".into()))?;
                value.set_sensitive(true);
                Ok(value)
            })
            .transpose()
    }

    fn url(&self, location: &OciLocation, path: &str) -> String {
        let scheme = if self.plain_http(location) {
            "http"
        } else {
            "https"
        };
        format!(
            "{scheme}://{}/v2/{}/{path}",
            location.registry, location.repository
        )
    }

    /// GETs the manifest, reading at most the manifest bound; returns its
    /// digest (checked against a pinned one and the registry's header), body
    /// and content type. `what` names it in errors.
    async fn manifest(
        &self,
        session: &Session,
        location: &OciLocation,
        what: &str,
    ) -> Result<(String, Vec<u8>, Option<String>), OciError> {
        let authorization = self.authorize(session, location).await?;
        let reference = location
            .digest
            .clone()
            .or_else(|| location.tag.clone())
            .unwrap_or_default();
        let url = self.url(location, &format!("manifests/{reference}"));
        let mut request = self
            .http
            .get(&url)
            .header(ACCEPT, MANIFEST_TYPES.join(", "));
        if let Some(value) = authorization {
            request = request.header(AUTHORIZATION, value);
        }
        let mut response = request.send().await.map_err(|e| transport(&e))?;
        let status = response.status();
        if !status.is_success() {
            return Err(status_error(status, what));
        }
        let max = self.settings.max_manifest_bytes;
        let too_big = || {
            OciError::Refused(format!(
                "{what} is larger than {max} bytes (oci.max_manifest_kib)"
            ))
        };
        if response.content_length().is_some_and(|n| n > max as u64) {
            return Err(too_big());
        }
        let header_digest = response
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or(v).trim().to_string());
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| transport(&e))? {
            if body.len() + chunk.len() > max {
                return Err(too_big());
            }
            body.extend_from_slice(&chunk);
        }
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&body)));
        if let Some(pinned) = &location.digest
            && *pinned != digest
        {
            return Err(OciError::Refused(format!(
                "wrong digest: the registry's manifest is {digest}, not the pinned {pinned}"
            )));
        }
        if let Some(claimed) = header_digest
            && claimed.starts_with("sha256:")
            && claimed != digest
        {
            return Err(OciError::Refused(format!(
                "wrong digest: the registry says {claimed} for a manifest whose digest is {digest}"
            )));
        }
        Ok((digest, body, content_type))
    }

    /// Streams the layer into a temporary file while hashing and counting;
    /// it enters the store only when size and digest match.
    async fn download(
        &self,
        session: &Session,
        location: &OciLocation,
        layer: &WasmLayer,
    ) -> Result<PathBuf, OciError> {
        let store = self.store()?;
        self.authorize(session, location).await?;
        let temp = store.temp_path();
        let written = tokio::time::timeout(
            self.settings.timeout,
            self.stream_to(session, location, layer, &temp),
        )
        .await
        .unwrap_or_else(|_| Err(self.deadline("downloading the component")));
        let committed = written
            .and_then(|()| {
                only_components(&temp, layer)
                    .map_err(|why| self.refused("not_component", OciError::Refused(why)))
            })
            .and_then(|()| {
                store
                    .commit_blob(&temp, &layer.digest)
                    .map_err(|e| OciError::Refused(format!("cannot store the component: {e}")))
            });
        if committed.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        committed
    }

    async fn stream_to(
        &self,
        session: &Session,
        location: &OciLocation,
        layer: &WasmLayer,
        temp: &std::path::Path,
    ) -> Result<(), OciError> {
        let descriptor = OciDescriptor {
            media_type: layer.media_type.clone(),
            digest: layer.digest.clone(),
            size: i64::try_from(layer.size).unwrap_or(i64::MAX),
            ..OciDescriptor::default()
        };
        let mut blob = session
            .client
            .pull_blob_stream(&location.reference(), &descriptor)
            .await
            .map_err(classify)?;
        if blob.content_length.is_some_and(|n| n > layer.size) {
            return Err(OciError::Refused(format!(
                "the registry sends {} bytes for a {}-byte component",
                blob.content_length.unwrap_or_default(),
                layer.size
            )));
        }
        let mut file = private_file(temp)
            .await
            .map_err(|e| OciError::Refused(format!("cannot write the download: {e}")))?;
        let mut hasher = Sha256::new();
        let mut received: u64 = 0;
        // The OCI client's own digest check fails the stream's last read;
        // our hash of what arrived makes the clearer message.
        let mut stream_failure = None;
        while let Some(chunk) = blob.stream.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(error) => {
                    stream_failure = Some(stream_error(&error)?);
                    break;
                }
            };
            received += chunk.len() as u64;
            if received > layer.size {
                return Err(OciError::Refused(format!(
                    "the registry sends more than the {} bytes the manifest declares",
                    layer.size
                )));
            }
            hasher.update(&chunk);
            file.write_all(&chunk)
                .await
                .map_err(|e| OciError::Refused(format!("cannot write the download: {e}")))?;
        }
        file.sync_all()
            .await
            .map_err(|e| OciError::Refused(format!("cannot write the download: {e}")))?;
        let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
        if actual != layer.digest {
            return Err(wrong_layer(&layer.digest, &actual));
        }
        if let Some(failure) = stream_failure {
            return Err(OciError::Refused(failure));
        }
        if received != layer.size {
            return Err(OciError::Refused(format!(
                "the registry sent {received} bytes of a {}-byte component",
                layer.size
            )));
        }
        Ok(())
    }

    /// Requires a signature of the resolved manifest by one of `policy`'s
    /// keys: the one kept from an earlier pull if it still verifies, else
    /// those the registry stores beside the manifest (see [`signature`]).
    async fn verify_signature(
        &self,
        session: &Session,
        location: &OciLocation,
        resolved: &Resolved,
        policy: &SignaturePolicy,
    ) -> Result<(), OciError> {
        let store = self.store()?;
        let digest = &resolved.manifest_digest;
        let repository = format!("{}/{}", location.registry, location.repository);
        let max = self.settings.max_manifest_bytes;
        if let Some((payload, signed)) = store.signature(digest, 2 * max + 1024)
            && signature::check(&payload, &signed, &policy.keys, digest, &repository).is_ok()
        {
            return Ok(());
        }
        if resolved.offline {
            return Err(OciError::Unreachable(format!(
                "no signature of {digest} kept from an earlier pull verifies, and the registry is unreachable"
            )));
        }
        let tag = signature::signature_tag(digest);
        let at_signatures = OciLocation {
            tag: Some(tag.clone()),
            digest: None,
            ..location.clone()
        };
        let (_, body, _) = self
            .manifest(session, &at_signatures, &format!("the signature tag {tag}"))
            .await
            .map_err(|error| match error {
                OciError::Refused(why) if why.contains("(404") => {
                    OciError::Refused(format!("the plugin is not signed: {why}"))
                }
                other => other,
            })?;
        let listed = signature::listed_signatures(&body, self.settings.max_signatures, max as u64)
            .map_err(OciError::Refused)?;
        let mut why_not = None;
        for entry in &listed {
            let payload = self.payload(session, location, entry).await?;
            match signature::check(
                &payload,
                &entry.signature,
                &policy.keys,
                digest,
                &repository,
            ) {
                Ok(key) => {
                    tracing::info!(location = %location, digest = %digest, key = key.name(), "plugin signature verified");
                    if let Err(error) = store.put_signature(digest, &payload, &entry.signature) {
                        tracing::warn!(%error, "cannot keep a verified signature; offline starts will not find it");
                    }
                    return Ok(());
                }
                Err(why) => {
                    why_not.get_or_insert(why);
                }
            }
        }
        Err(OciError::Refused(format!(
            "no signature of {digest} verifies under {} ({} signature(s) in {tag}{})",
            policy.key_names(),
            listed.len(),
            why_not
                .map(|why| format!("; the first: {why}"))
                .unwrap_or_default()
        )))
    }

    /// GETs a signature's payload blob: at most its declared size (itself
    /// bounded), and only if it hashes to its digest.
    async fn payload(
        &self,
        session: &Session,
        location: &OciLocation,
        entry: &signature::ListedSignature,
    ) -> Result<Vec<u8>, OciError> {
        let authorization = self.authorize(session, location).await?;
        let mut request = self
            .http
            .get(self.url(location, &format!("blobs/{}", entry.digest)));
        if let Some(value) = authorization {
            request = request.header(AUTHORIZATION, value);
        }
        let mut response = request.send().await.map_err(|e| transport(&e))?;
        let status = response.status();
        if !status.is_success() {
            return Err(status_error(status, "a signature payload"));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| transport(&e))? {
            if (body.len() + chunk.len()) as u64 > entry.size {
                return Err(OciError::Refused(format!(
                    "the registry sends more than the {} bytes declared for a signature payload",
                    entry.size
                )));
            }
            body.extend_from_slice(&chunk);
        }
        let actual = format!("sha256:{}", hex::encode(Sha256::digest(&body)));
        if actual != entry.digest {
            return Err(OciError::Refused(format!(
                "wrong digest: a signature payload hashes to {actual}, not {}",
                entry.digest
            )));
        }
        Ok(body)
    }

    fn deadline(&self, doing: &str) -> OciError {
        OciError::Unreachable(format!(
            "no answer within {} ms while {doing} (oci.timeout_ms)",
            self.settings.timeout.as_millis()
        ))
    }
}

async fn private_file(path: &std::path::Path) -> std::io::Result<tokio::fs::File> {
    let mut options = tokio::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(0o600);
    options.open(path).await
}

/// Refuses a layer that is not a WebAssembly component — above all a
/// compiled wasmtime artifact, native code the node would run as itself.
fn only_components(path: &std::path::Path, layer: &WasmLayer) -> Result<(), String> {
    use std::io::Read;
    let unreadable = |e: std::io::Error| format!("cannot read the component: {e}");
    let mut header = Vec::with_capacity(WasmKind::HEADER_BYTES);
    std::fs::File::open(path)
        .and_then(|file| {
            file.take(WasmKind::HEADER_BYTES as u64)
                .read_to_end(&mut header)
        })
        .map_err(unreadable)?;
    if WasmKind::of(&header) == WasmKind::Component {
        return Ok(());
    }
    // Only a refusal reads the whole (bounded, verified) file, to say
    // exactly what it is.
    let kind = WasmKind::of(&std::fs::read(path).map_err(unreadable)?);
    Err(format!(
        "the layer {} is {}, not a WebAssembly component: a plugin from a registry must be the .wasm component, which this node compiles itself",
        layer.digest,
        kind.description()
    ))
}

fn wrong_layer(expected: &str, actual: &str) -> OciError {
    OciError::Refused(format!(
        "wrong digest: the component's bytes hash to {actual}, not {expected}"
    ))
}

/// A failed read of the layer stream: a transport failure ends the pull
/// (`Err`); anything else (the OCI client's digest check) is reported
/// after our own hash is compared (`Ok`).
fn stream_error(error: &std::io::Error) -> Result<String, OciError> {
    match error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<reqwest::Error>())
    {
        Some(cause) => Err(transport(cause)),
        None => Ok(one_line(error)),
    }
}

/// A transport failure: connecting, timing out or a broken body are
/// "unreachable"; anything else (a bad URL, a redirect loop) is refused.
fn transport(error: &reqwest::Error) -> OciError {
    if error.is_connect() || error.is_timeout() || error.is_body() || error.is_request() {
        OciError::Unreachable(one_line(error))
    } else {
        OciError::Refused(one_line(error))
    }
}

fn status_error(status: reqwest::StatusCode, what: &str) -> OciError {
    match status.as_u16() {
        401 | 403 => OciError::Refused(format!(
            "the registry refused access to {what} ({status}); check the credentials ({} / {} or the docker config)",
            auth::USERNAME_ENV,
            auth::PASSWORD_ENV
        )),
        404 => OciError::Refused(format!("{what} is not in the registry ({status})")),
        429 | 500..=599 => OciError::Unreachable(format!("the registry answered {status}")),
        _ => OciError::Refused(format!("the registry answered {status} for {what}")),
    }
}

/// Sorts the OCI client's errors into unreachable and refused.
pub(super) fn classify(error: OciDistributionError) -> OciError {
    match error {
        OciDistributionError::RequestError(e) => transport(&e),
        OciDistributionError::ServerError { code, .. } if code == 429 || code >= 500 => {
            OciError::Unreachable(format!("the registry answered {code}"))
        }
        OciDistributionError::ServerError { code, .. } => status_error(
            reqwest::StatusCode::from_u16(code).unwrap_or(reqwest::StatusCode::BAD_GATEWAY),
            "the request",
        ),
        OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::AuthenticationFailure(_) => {
            status_error(reqwest::StatusCode::UNAUTHORIZED, "the repository")
        }
        other => OciError::Refused(one_line(&other)),
    }
}
