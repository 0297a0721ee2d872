//! Signatures on plugins from registries, as cosign and `skopeo copy
//! --sign-by-sigstore-private-key` make and store them: beside the
//! artifact, under the tag `sha256-<manifest hex>.sig`, an OCI manifest
//! whose layers are "simple signing" payloads
//! (`application/vnd.dev.cosign.simplesigning.v1+json`), each with its
//! base64 ECDSA signature in the `dev.cosignproject.cosign/signature`
//! annotation. A payload is JSON whose `critical.image.docker-manifest-digest`
//! names the manifest signed and `critical.identity.docker-reference` the
//! image it was signed as.
//!
//! Decisions the formats leave open, made here:
//! * Keys are ECDSA P-256 public keys in PEM (`PUBLIC KEY`, SPKI) — what
//!   `cosign generate-key-pair` makes and what skopeo signs with; a key of
//!   another kind is refused when the configuration is read. Signatures are
//!   ASN.1 DER (what both write) or the raw 64-byte form.
//! * A signature counts only when it verifies under one of the plugin's
//!   keys, its payload names exactly the manifest digest being run, and its
//!   docker-reference names the same registry and repository as the
//!   plugin's reference (tag and digest aside): a signature made for
//!   another repository is not one for this one. A mirror needs its own
//!   signature (`skopeo copy --sign-by-sigstore-private-key` signs the copy).
//! * Keyless (Fulcio certificate, Rekor bundle) signatures are not
//!   verified: they need a transparency-log client; such layers simply do
//!   not verify under a key.
//! * Bounds: a signature manifest and each payload are bounded like
//!   manifests (`oci.max_manifest_kib`), at most `oci.max_signatures`
//!   signature layers are looked at, every call has `oci.timeout_ms`.

use std::fmt;
use std::io::Read;
use std::path::Path;

use base64::Engine as _;
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey;
use serde::Deserialize;

use super::reference::valid_digest;

/// The media type of a simple-signing payload layer.
pub const SIGNATURE_LAYER: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The layer annotation holding the base64 signature.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// `critical.type` of a container image signature payload.
const PAYLOAD_TYPE: &str = "cosign container image signature";
/// Default bound on the signature layers looked at.
pub const DEFAULT_MAX_SIGNATURES: usize = 16;
/// A public key file is a few hundred bytes; more is not a key.
const MAX_KEY_FILE_BYTES: u64 = 64 << 10;

/// A trusted signer's public key.
#[derive(Clone)]
pub struct SignatureKey {
    /// Where it came from (its file), for messages.
    name: String,
    key: VerifyingKey,
}

impl SignatureKey {
    /// Reads a PEM public key file (ECDSA P-256).
    pub fn load(path: &Path) -> Result<Self, String> {
        let mut text = String::new();
        std::fs::File::open(path)
            .and_then(|file| file.take(MAX_KEY_FILE_BYTES).read_to_string(&mut text))
            .map_err(|e| format!("cannot read the public key {}: {e}", path.display()))?;
        Self::from_pem(&path.display().to_string(), &text)
    }

    /// Parses a PEM public key (`-----BEGIN PUBLIC KEY-----`, ECDSA P-256).
    pub fn from_pem(name: &str, pem: &str) -> Result<Self, String> {
        let key = VerifyingKey::from_public_key_pem(pem.trim()).map_err(|e| {
            format!(
                "{name} is not an ECDSA P-256 public key in PEM (what cosign generate-key-pair makes): {e}"
            )
        })?;
        Ok(Self {
            name: name.to_string(),
            key,
        })
    }

    /// Where the key came from.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl PartialEq for SignatureKey {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.key == other.key
    }
}

impl fmt::Debug for SignatureKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// What an `oci://` plugin must satisfy beyond its digest.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SignaturePolicy {
    /// A signature by one of these keys is required; none: not required.
    pub keys: Vec<SignatureKey>,
    /// The reference must pin a manifest digest (`@sha256:`).
    pub require_digest: bool,
}

impl SignaturePolicy {
    /// Whether a signature is required.
    pub fn requires_signature(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The keys' names, for messages.
    pub fn key_names(&self) -> String {
        self.keys
            .iter()
            .map(SignatureKey::name)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The tag a manifest's signatures are stored under: `sha256-<hex>.sig`.
pub fn signature_tag(manifest_digest: &str) -> String {
    format!("{}.sig", manifest_digest.replacen(':', "-", 1))
}

/// One signature a signature manifest lists: its payload's blob and the
/// signature over it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedSignature {
    /// The payload's digest.
    pub digest: String,
    /// The payload's size, as declared.
    pub size: u64,
    /// The base64 signature.
    pub signature: String,
}

#[derive(Deserialize)]
struct SignatureManifest {
    #[serde(default)]
    layers: Vec<SignatureDescriptor>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SignatureDescriptor {
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default)]
    annotations: std::collections::BTreeMap<String, String>,
}

/// The signatures a signature manifest lists: at most `max_signatures`
/// layers (more is refused), payloads of at most `max_payload_bytes`.
pub fn listed_signatures(
    manifest: &[u8],
    max_signatures: usize,
    max_payload_bytes: u64,
) -> Result<Vec<ListedSignature>, String> {
    let manifest: SignatureManifest = serde_json::from_slice(manifest)
        .map_err(|e| format!("the signature manifest is not valid: {e}"))?;
    if manifest.layers.len() > max_signatures {
        return Err(format!(
            "the signature manifest has {} layers, over the {max_signatures} looked at (oci.max_signatures)",
            manifest.layers.len()
        ));
    }
    Ok(manifest
        .layers
        .into_iter()
        .filter(|layer| {
            layer.media_type == SIGNATURE_LAYER
                && valid_digest(&layer.digest)
                && layer.size <= max_payload_bytes
        })
        .filter_map(|layer| {
            let signature = layer.annotations.get(SIGNATURE_ANNOTATION)?.clone();
            Some(ListedSignature {
                digest: layer.digest,
                size: layer.size,
                signature,
            })
        })
        .collect())
}

#[derive(Deserialize)]
struct Payload {
    critical: Critical,
}

#[derive(Deserialize)]
struct Critical {
    #[serde(rename = "type")]
    kind: String,
    identity: Identity,
    image: Image,
}

#[derive(Deserialize)]
struct Identity {
    #[serde(rename = "docker-reference")]
    docker_reference: String,
}

#[derive(Deserialize)]
struct Image {
    #[serde(rename = "docker-manifest-digest")]
    docker_manifest_digest: String,
}

/// Checks one signature: made over `payload` by one of `keys`, for
/// `manifest_digest`, as an image of `repository` (`REGISTRY/REPOSITORY`).
/// Returns the key that made it, or why it does not count.
pub fn check<'k>(
    payload: &[u8],
    signature_base64: &str,
    keys: &'k [SignatureKey],
    manifest_digest: &str,
    repository: &str,
) -> Result<&'k SignatureKey, String> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(signature_base64.trim())
        .map_err(|_| "the signature is not base64".to_string())?;
    let signature = Signature::from_der(&raw)
        .or_else(|_| Signature::from_slice(&raw))
        .map_err(|_| "the signature is not an ECDSA P-256 signature".to_string())?;
    let key = keys
        .iter()
        .find(|key| key.key.verify(payload, &signature).is_ok())
        .ok_or_else(|| "a signature by none of the trusted keys".to_string())?;
    // Only an authentic payload is read: what it says is the signer's word.
    let payload: Payload = serde_json::from_slice(payload)
        .map_err(|e| format!("the signed payload is not a simple-signing payload: {e}"))?;
    let critical = payload.critical;
    if critical.kind != PAYLOAD_TYPE {
        return Err(format!(
            "the signed payload's type is {:?}, not {PAYLOAD_TYPE:?}",
            critical.kind
        ));
    }
    if critical.image.docker_manifest_digest != manifest_digest {
        return Err(format!(
            "the signature is for {}, not {manifest_digest}",
            critical.image.docker_manifest_digest
        ));
    }
    let signed_as = repository_of(&critical.identity.docker_reference);
    if signed_as != repository {
        return Err(format!(
            "the signature is for the repository {signed_as}, not {repository}"
        ));
    }
    Ok(key)
}

/// `REGISTRY/REPOSITORY` of a docker reference: without `@digest` and
/// without a `:tag` after the last `/`.
fn repository_of(reference: &str) -> &str {
    let name = reference.split('@').next().unwrap_or(reference);
    match name.rfind(':') {
        Some(colon) if !name[colon..].contains('/') => &name[..colon],
        _ => name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::SigningKey;
    use p256::ecdsa::signature::Signer;
    use p256::pkcs8::EncodePublicKey;

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn key_pair(seed: u8) -> (SigningKey, SignatureKey) {
        let signing = SigningKey::from_slice(&[seed; 32]).unwrap();
        let pem = signing
            .verifying_key()
            .to_public_key_pem(p256::pkcs8::LineEnding::LF)
            .unwrap();
        (signing, SignatureKey::from_pem("test.pub", &pem).unwrap())
    }

    fn payload(digest: &str, reference: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "critical": {
                "identity": {"docker-reference": reference},
                "image": {"docker-manifest-digest": digest},
                "type": PAYLOAD_TYPE,
            },
            "optional": null,
        }))
        .unwrap()
    }

    fn sign(key: &SigningKey, payload: &[u8]) -> String {
        let signature: Signature = key.sign(payload);
        base64::engine::general_purpose::STANDARD.encode(signature.to_der().as_bytes())
    }

    #[test]
    fn only_a_trusted_key_signing_this_digest_of_this_repository_counts() {
        let (signer, trusted) = key_pair(7);
        let (other, _) = key_pair(9);
        let keys = [trusted];
        let repository = "127.0.0.1:5000/plugins/echo";
        let good = payload(DIGEST, "127.0.0.1:5000/plugins/echo:1.0");
        assert!(check(&good, &sign(&signer, &good), &keys, DIGEST, repository).is_ok());

        let by_other = check(&good, &sign(&other, &good), &keys, DIGEST, repository);
        assert!(by_other.unwrap_err().contains("none of the trusted keys"));
        let mut tampered = good.clone();
        tampered[5] ^= 1;
        assert!(check(&tampered, &sign(&signer, &good), &keys, DIGEST, repository).is_err());

        let another_digest = DIGEST.replace("0123", "4567");
        let wrong = check(
            &good,
            &sign(&signer, &good),
            &keys,
            &another_digest,
            repository,
        );
        assert!(
            wrong
                .unwrap_err()
                .contains("the signature is for sha256:0123")
        );
        let elsewhere = payload(DIGEST, "127.0.0.1:5000/plugins/evil:1.0");
        let moved = check(
            &elsewhere,
            &sign(&signer, &elsewhere),
            &keys,
            DIGEST,
            repository,
        );
        assert!(moved.unwrap_err().contains("repository"));
        assert!(check(&good, "%%%", &keys, DIGEST, repository).is_err());
    }

    #[test]
    fn signature_manifests_are_bounded() {
        let layer = |t: &str, size: u64| {
            serde_json::json!({"mediaType": t, "digest": DIGEST, "size": size,
                "annotations": {SIGNATURE_ANNOTATION: "c2ln"}})
        };
        let manifest = |layers: Vec<serde_json::Value>| {
            serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "layers": layers})).unwrap()
        };
        let listed = listed_signatures(
            &manifest(vec![
                layer(SIGNATURE_LAYER, 10),
                layer("application/octet-stream", 10),
                layer(SIGNATURE_LAYER, 1 << 30),
            ]),
            4,
            1024,
        )
        .unwrap();
        assert_eq!(
            listed.len(),
            1,
            "other types and oversized payloads are skipped"
        );
        assert_eq!(listed[0].signature, "c2ln");
        let many = manifest((0..5).map(|_| layer(SIGNATURE_LAYER, 1)).collect());
        assert!(
            listed_signatures(&many, 4, 1024)
                .unwrap_err()
                .contains("oci.max_signatures")
        );
        assert_eq!(
            signature_tag(DIGEST),
            format!("sha256-{}.sig", &DIGEST[7..])
        );
        assert_eq!(repository_of("reg:5000/a/b:1@sha256:00"), "reg:5000/a/b");
        assert_eq!(repository_of("reg:5000/a/b"), "reg:5000/a/b");
    }
}
