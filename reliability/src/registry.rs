//! A real OCI registry for the suite and the end-to-end tests: Debian's
//! `docker-registry` (CNCF distribution 2.8) on a loopback port, its config
//! and storage in a temp dir it owns, optionally behind htpasswd basic
//! auth; and pushes made with nothing but the registry API — what anyone
//! who controls a registry (or a tag in it) can do, without `iicp-host
//! push` and its checks.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BINARY: &str = "/usr/bin/docker-registry";
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running registry; stopped on drop.
pub struct Registry {
    child: Option<Child>,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    dir: tempfile::TempDir,
}

impl Registry {
    /// Starts a registry; with `user`, every request needs that user's
    /// basic-auth password.
    pub fn start(user: Option<(&str, &str)>) -> Registry {
        assert!(
            Path::new(BINARY).exists(),
            "the OCI tests need a real registry: apt-get install docker-registry (see .ci/debian-packages)"
        );
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let auth = match user {
            None => String::new(),
            Some((name, password)) => {
                let htpasswd = dir.path().join("htpasswd");
                let output = Command::new("htpasswd")
                    .args(["-Bbn", name, password])
                    .output()
                    .expect("the OCI auth test needs htpasswd: apt-get install apache2-utils");
                assert!(output.status.success());
                std::fs::write(&htpasswd, output.stdout).unwrap();
                format!(
                    "auth:\n  htpasswd:\n    realm: iicp-test\n    path: {}\n",
                    htpasswd.display()
                )
            }
        };
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n{auth}",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new(BINARY)
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start docker-registry");
        let registry = Registry {
            child: Some(child),
            addr,
            dir,
        };
        registry.wait_ready();
        registry
    }

    /// Waits until `/v2/` answers (200, or 401 behind auth).
    fn wait_ready(&self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(mut stream) = TcpStream::connect(&self.addr) {
                let _ = stream.write_all(b"GET /v2/ HTTP/1.0\r\n\r\n");
                let mut head = [0u8; 12];
                if stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.") {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "the registry did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `oci://ADDR/PATH`.
    pub fn reference(&self, path: &str) -> String {
        format!("oci://{}/{path}", self.addr)
    }

    /// The file where the registry keeps the blob with `digest`.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Uploads a blob to `repository` with plain registry API calls (a
    /// monolithic upload: POST, then PUT with the digest); returns its digest.
    pub async fn put_blob(&self, repository: &str, bytes: &[u8]) -> String {
        let digest = digest_of(bytes);
        let client = reqwest::Client::new();
        let started = client
            .post(format!(
                "http://{}/v2/{repository}/blobs/uploads/",
                self.addr
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(started.status(), 202, "starting an upload");
        let location = started.headers()["location"].to_str().unwrap().to_string();
        let location = if location.starts_with('/') {
            format!("http://{}{location}", self.addr)
        } else {
            location
        };
        let separator = if location.contains('?') { '&' } else { '?' };
        let put = client
            .put(format!("{location}{separator}digest={digest}"))
            .header("content-type", "application/octet-stream")
            .body(bytes.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(put.status(), 201, "finishing an upload");
        digest
    }

    /// PUTs an OCI image manifest at `repository:reference`; returns its digest.
    pub async fn put_manifest(&self, repository: &str, reference: &str, body: &[u8]) -> String {
        let response = reqwest::Client::new()
            .put(format!(
                "http://{}/v2/{repository}/manifests/{reference}",
                self.addr
            ))
            .header("content-type", "application/vnd.oci.image.manifest.v1+json")
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "putting a manifest");
        digest_of(body)
    }

    /// The manifest at `repository:reference`, as stored.
    pub async fn get_manifest(&self, repository: &str, reference: &str) -> Vec<u8> {
        let response = reqwest::Client::new()
            .get(format!(
                "http://{}/v2/{repository}/manifests/{reference}",
                self.addr
            ))
            .header("accept", "application/vnd.oci.image.manifest.v1+json")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "getting a manifest");
        response.bytes().await.unwrap().to_vec()
    }

    /// Publishes `layer` as the one `application/wasm` layer of a Wasm OCI
    /// artifact at `repository:tag`, with plain API calls (what anyone
    /// controlling the registry can do); returns the manifest digest.
    pub async fn push_wasm_artifact(&self, repository: &str, tag: &str, layer: &[u8]) -> String {
        let (manifest, config) = wasm_artifact(layer);
        self.put_blob(repository, layer).await;
        self.put_blob(repository, &config).await;
        self.put_manifest(repository, tag, &manifest).await
    }

    /// Stops it: its port then refuses connections.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `sha256:<hex>` of `bytes`.
pub fn digest_of(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// The manifest and config blob of a Wasm OCI artifact whose one
/// `application/wasm` layer is `component` (the shape `iicp-host push`
/// makes, whatever the bytes are).
pub fn wasm_artifact(component: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "wasm",
        "os": "wasip2",
        "layerDigests": [digest_of(component)],
    }))
    .expect("config JSON");
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.wasm.config.v0+json",
            "digest": digest_of(&config),
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/wasm",
            "digest": digest_of(component),
            "size": component.len(),
        }],
    }))
    .expect("manifest JSON");
    (manifest, config)
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
