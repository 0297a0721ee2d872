//! Signing plugins as operators do, with independent tools: Debian's
//! `skopeo` copies a Wasm OCI artifact from an OCI layout directory to the
//! registry, OpenSSL makes the ECDSA P-256 key and signs, and the signature
//! is stored beside the artifact as cosign stores it (the
//! `sha256-<digest>.sig` tag: a manifest whose layer is the simple-signing
//! payload, the base64 signature in its annotation), with plain registry
//! API calls.
//!
//! Why not `skopeo copy --sign-by-sigstore-private-key`: Debian builds
//! skopeo 1.9.3 with sigstore patched out, signing and verifying alike
//! ("creating signature: Debian-local change: sigstore disabled", and
//! "Source image rejected: …" under a `sigstoreSigned` policy).

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::registry::Registry;

const SKOPEO: &str = "/usr/bin/skopeo";
const OPENSSL: &str = "/usr/bin/openssl";

/// A signing key on disk: the private key and the public key the node trusts.
pub struct KeyPair {
    /// PKCS#8 PEM.
    pub private_key: PathBuf,
    /// `PUBLIC KEY` PEM (what `cosign generate-key-pair` writes as cosign.pub).
    pub public_key: PathBuf,
}

fn openssl(args: &[&str]) -> Vec<u8> {
    let output = Command::new(OPENSSL)
        .args(args)
        .output()
        .expect("the signature tests need openssl");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

impl KeyPair {
    /// Makes a new P-256 key pair in `dir`, its files named after `name`.
    pub fn generate(dir: &Path, name: &str) -> KeyPair {
        let pair = KeyPair {
            private_key: dir.join(format!("{name}.key")),
            public_key: dir.join(format!("{name}.pub")),
        };
        let (private, public) = (
            pair.private_key.to_str().unwrap(),
            pair.public_key.to_str().unwrap(),
        );
        openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            private,
        ]);
        openssl(&["pkey", "-in", private, "-pubout", "-out", public]);
        pair
    }

    /// The DER ECDSA signature of SHA-256(`payload`), by OpenSSL.
    pub fn sign(&self, payload: &[u8]) -> Vec<u8> {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), payload).unwrap();
        openssl(&[
            "dgst",
            "-sha256",
            "-sign",
            self.private_key.to_str().unwrap(),
            file.path().to_str().unwrap(),
        ])
    }
}

/// Signs the manifest `manifest_digest` of `repository` as the image
/// `docker_reference` with `key`, storing the signature at the
/// `sha256-<hex>.sig` tag as cosign does.
pub async fn sign(
    registry: &Registry,
    repository: &str,
    docker_reference: &str,
    manifest_digest: &str,
    key: &KeyPair,
) {
    let payload = serde_json::to_vec(&json!({
        "critical": {
            "identity": {"docker-reference": docker_reference},
            "image": {"docker-manifest-digest": manifest_digest},
            "type": "cosign container image signature",
        },
        "optional": null,
    }))
    .unwrap();
    let signature = base64::engine::general_purpose::STANDARD.encode(key.sign(&payload));
    let config = serde_json::to_vec(&json!({
        "architecture": "", "os": "", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [digest_of(&payload)]},
    }))
    .unwrap();
    registry.put_blob(repository, &payload).await;
    registry.put_blob(repository, &config).await;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": digest_of(&config),
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
            "digest": digest_of(&payload),
            "size": payload.len(),
            "annotations": {"dev.cosignproject.cosign/signature": signature},
        }],
    }))
    .unwrap();
    registry
        .put_manifest(repository, &signature_tag(manifest_digest), &manifest)
        .await;
}

/// `sha256-<hex>.sig`.
pub fn signature_tag(manifest_digest: &str) -> String {
    format!("{}.sig", manifest_digest.replacen(':', "-", 1))
}

pub use iicp_reliability::registry::{digest_of, wasm_artifact};

/// Writes an OCI layout directory holding `component` as a Wasm artifact
/// tagged `tag`; returns the manifest digest.
pub fn oci_layout(dir: &Path, tag: &str, component: &[u8]) -> String {
    let (manifest, config) = wasm_artifact(component);
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    for blob in [component, &config, &manifest] {
        let digest = digest_of(blob);
        std::fs::write(blobs.join(&digest["sha256:".len()..]), blob).unwrap();
    }
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest_of(&manifest),
            "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    });
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
    digest_of(&manifest)
}

/// Debian's skopeo, copying OCI layouts to the test's loopback registry.
pub struct Skopeo;

impl Skopeo {
    /// Checks skopeo is there.
    pub fn new() -> Skopeo {
        assert!(
            Path::new(SKOPEO).exists(),
            "the signature tests need skopeo: apt-get install skopeo (see .ci/debian-packages)"
        );
        Skopeo
    }

    /// Copies `source` (`oci:DIR:TAG`) to `docker://DESTINATION` as it is.
    pub fn copy(&self, source: &str, destination: &str) {
        let output = Command::new(SKOPEO)
            .args(["--insecure-policy", "copy", "--preserve-digests"])
            .args(["--dest-tls-verify=false", source])
            .arg(format!("docker://{destination}"))
            .output()
            .expect("run skopeo");
        assert!(
            output.status.success(),
            "skopeo copy {source} {destination} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
