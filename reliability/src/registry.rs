//! A real OCI registry for the trust-boundary cases: Debian's
//! `docker-registry` (CNCF distribution) on a loopback port, storage in a
//! directory the case owns, and a push made with nothing but the registry
//! API — what an attacker who controls a registry (or a tag in it) does,
//! without going through `iicp-host push` and its checks.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use sha2::{Digest, Sha256};

const BINARY: &str = "/usr/bin/docker-registry";
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running registry; stopped when dropped.
pub struct Registry {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
}

impl Registry {
    /// Starts a registry with its storage under `dir`.
    pub async fn start(dir: &Path) -> Registry {
        assert!(
            Path::new(BINARY).exists(),
            "the trust-boundary cases need a real registry: apt-get install docker-registry"
        );
        std::fs::create_dir_all(dir).expect("registry directory");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
                dir.join("data").display()
            ),
        )
        .expect("registry config");
        let child = Command::new(BINARY)
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start docker-registry");
        let registry = Registry { child, addr };
        let deadline = Instant::now() + START_TIMEOUT;
        let client = crate::traffic::client();
        while client
            .get(format!("http://{}/v2/", registry.addr))
            .send()
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "the registry did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        registry
    }

    /// `oci://ADDR/REPOSITORY:TAG`.
    pub fn reference(&self, repository: &str, tag: &str) -> String {
        format!("oci://{}/{repository}:{tag}", self.addr)
    }

    /// Pushes `layer` as the single `application/wasm` layer of a Wasm OCI
    /// artifact at `repository:tag` with plain registry API calls (blob
    /// uploads, then the manifest), whatever the bytes are. Returns the
    /// manifest's digest.
    pub async fn push_raw(&self, repository: &str, tag: &str, layer: &[u8]) -> String {
        let client = crate::traffic::client();
        let base = format!("http://{}/v2/{repository}", self.addr);
        let layer_digest = self.upload(&client, &base, layer).await;
        let config = serde_json::to_vec(&json!({
            "architecture": "wasm",
            "os": "wasip2",
            "layerDigests": [layer_digest],
        }))
        .expect("config JSON");
        let config_digest = self.upload(&client, &base, &config).await;
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.wasm.config.v0+json",
                "digest": config_digest,
                "size": config.len(),
            },
            "layers": [{
                "mediaType": "application/wasm",
                "digest": layer_digest,
                "size": layer.len(),
            }],
        }))
        .expect("manifest JSON");
        let response = client
            .put(format!("{base}/manifests/{tag}"))
            .header("content-type", "application/vnd.oci.image.manifest.v1+json")
            .body(manifest.clone())
            .send()
            .await
            .expect("put the manifest");
        assert!(
            response.status().is_success(),
            "manifest refused: {}",
            response.status()
        );
        sha256(&manifest)
    }

    async fn upload(&self, client: &reqwest::Client, base: &str, blob: &[u8]) -> String {
        let digest = sha256(blob);
        let started = client
            .post(format!("{base}/blobs/uploads/"))
            .send()
            .await
            .expect("start an upload");
        assert_eq!(started.status().as_u16(), 202, "upload not started");
        let location = started
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .expect("upload location")
            .to_string();
        let url = if location.starts_with("http") {
            location
        } else {
            format!("http://{}{location}", self.addr)
        };
        let separator = if url.contains('?') { '&' } else { '?' };
        let response = client
            .put(format!("{url}{separator}digest={digest}"))
            .header("content-type", "application/octet-stream")
            .body(blob.to_vec())
            .send()
            .await
            .expect("upload the blob");
        assert_eq!(response.status().as_u16(), 201, "blob refused");
        digest
    }
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `iicp-host compile PLUGIN -o OUT`: the precompiled (native code)
/// artifact of a plugin, as an operator would make it.
pub fn precompile(host_binary: &Path, plugin: &Path, out: &Path) -> PathBuf {
    let status = Command::new(host_binary)
        .arg("compile")
        .arg(plugin)
        .arg("-o")
        .arg(out)
        .stdout(Stdio::null())
        .status()
        .expect("run iicp-host compile");
    assert!(status.success(), "iicp-host compile failed");
    out.to_path_buf()
}
