//! Plugins by OCI reference, against a real registry (Debian's
//! `docker-registry`, distribution 2.8) on loopback: push, pull by tag and
//! by digest, verification, basic auth from the environment (scoped to the
//! registry) and from a docker config, offline starts, a moved tag picked up
//! by reload, and a wrong digest or an unreachable registry that change
//! nothing serving.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::registry::Registry;
use common::signing::{KeyPair, Skopeo, oci_layout, signature_tag};
use common::{Node, client, message, plugin, post_task, task};
use serde_json::{Value, json};

const ECHO: &str = "urn:iicp:intent:util:echo:v1";
const VERSIONED: &str = "urn:iicp:intent:test:versioned:v1";
const ADMIN_TOKEN: &str = "oci-admin-token";

fn host(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_iicp-host"))
        .args(args)
        .env("XDG_CACHE_HOME", common::shared_cache_dir())
        .env_remove("IICP_HOST_REGISTRY_USERNAME")
        .env_remove("IICP_HOST_REGISTRY_PASSWORD")
        .env_remove("IICP_HOST_REGISTRY_HOST")
        .env("DOCKER_CONFIG", "/nonexistent")
        .envs(env.iter().copied())
        .output()
        .expect("run iicp-host")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).to_string()
}

/// Pushes `plugin_name`'s component to `reference`; returns the manifest digest.
fn push(plugin_name: &str, reference: &str, env: &[(&str, &str)]) -> String {
    let wasm = plugin(plugin_name);
    let output = host(&["push", wasm.to_str().unwrap(), reference], env);
    assert!(
        output.status.success(),
        "push failed: {}",
        text(&output.stderr)
    );
    let line = text(&output.stdout);
    assert!(line.starts_with("pushed "), "{line}");
    line.split('@')
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no digest in {line}"))
        .to_string()
}

/// `iicp-host run` that must refuse to start; returns its one stderr line.
fn refused(args: &[&str], env: &[(&str, &str)]) -> String {
    let state = common::fresh_state_dir();
    let mut command = Command::new(env!("CARGO_BIN_EXE_iicp-host"));
    command
        .args(["run", "--listen", "127.0.0.1:0", "--state-dir"])
        .arg(state)
        .args(args)
        .env("XDG_CACHE_HOME", common::shared_cache_dir())
        .env_remove("IICP_HOST_REGISTRY_USERNAME")
        .env_remove("IICP_HOST_REGISTRY_PASSWORD")
        .env("DOCKER_CONFIG", "/nonexistent")
        .envs(env.iter().copied());
    let lines = common::refused_to_start(&mut command);
    assert_eq!(lines.len(), 1, "expected one line:\n{}", lines.join("\n"));
    lines[0].clone()
}

/// Starts a node serving `reference`, its pulled plugins kept in `cache`.
fn serve(reference: &str, cache: &Path, env: &[(&str, &str)]) -> Node {
    serve_with(reference, cache, &[], env)
}

/// [`serve`] with more flags.
fn serve_with(reference: &str, cache: &Path, args: &[&str], env: &[(&str, &str)]) -> Node {
    let state = common::fresh_state_dir();
    let mut command = Command::new(env!("CARGO_BIN_EXE_iicp-host"));
    command
        .args(["run", "--plugin", reference, "--listen", "127.0.0.1:0"])
        .args(args)
        .args(["--log-format", "json", "--cache-dir"])
        .arg(cache)
        .arg("--state-dir")
        .arg(state)
        .env_remove("IICP_HOST_REGISTRY_USERNAME")
        .env_remove("IICP_HOST_REGISTRY_PASSWORD")
        .env_remove("IICP_HOST_REGISTRY_HOST")
        .env("DOCKER_CONFIG", "/nonexistent")
        .envs(env.iter().copied());
    Node::spawn_command(&mut command, "info")
}

fn fetched(node: &Node) -> Value {
    node.log_entries()
        .into_iter()
        .find(|e| message(e) == "plugin fetched")
        .unwrap_or_else(|| panic!("no fetch line:\n{}", node.log_text()))
}

fn warned_unreachable(node: &Node) -> bool {
    node.log_entries()
        .iter()
        .any(|e| message(e) == "registry unreachable; using the copy pulled before")
}

async fn echo_works(node: &Node) {
    let (status, _, body) = post_task(node, &task("oci", ECHO, json!({"from": "oci"}))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"], json!({"from": "oci"}));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pushed_plugin_is_pulled_verified_and_later_served_offline() {
    let mut registry = Registry::start(None);
    let tagged = registry.reference("plugins/echo:1.0");
    let digest = push("echo", &tagged, &[]);
    let cache = tempfile::tempdir().unwrap();

    let first = serve(&tagged, cache.path(), &[]);
    let line = fetched(&first);
    assert_eq!(line["fields"]["result"], "pulled", "{line}");
    assert_eq!(line["fields"]["digest"], digest.as_str());
    let layer = line["fields"]["layer"].as_str().unwrap().to_string();
    let echo_sha = common::file_sha256(&plugin("echo"));
    assert_eq!(
        layer,
        format!("sha256:{echo_sha}"),
        "the layer is the component"
    );
    eprintln!("echo: cold pull+load {} ms", line["fields"]["ms"]);
    echo_works(&first).await;
    drop(first);

    // Stored: the registry is asked only what the tag names now.
    let second = serve(&tagged, cache.path(), &[]);
    assert_eq!(fetched(&second)["fields"]["result"], "stored");
    eprintln!(
        "echo: warm resolve+load {} ms",
        fetched(&second)["fields"]["ms"]
    );
    drop(second);

    // A digest the registry does not have: one line, no start.
    let absent = format!(
        "{}@sha256:{}",
        registry.reference("plugins/echo"),
        "0".repeat(64)
    );
    let line = refused(
        &[
            "--plugin",
            &absent,
            "--cache-dir",
            cache.path().to_str().unwrap(),
        ],
        &[],
    );
    assert!(line.contains("is not in the registry (404"), "{line}");

    registry.stop();
    // Offline: the tag's stored resolution stands in, with one warning.
    let offline = serve(&tagged, cache.path(), &[]);
    assert!(warned_unreachable(&offline), "{}", offline.log_text());
    assert_eq!(fetched(&offline)["fields"]["result"], "offline");
    echo_works(&offline).await;
    let metrics = common::metrics(&offline).await;
    assert!(
        metrics.contains(r#"iicp_oci_pulls_total{result="offline"} 1"#),
        "{metrics}"
    );
    drop(offline);

    // A pinned digest needs no registry once pulled, and warns of nothing.
    let pinned = serve(
        &format!("{}@{digest}", registry.reference("plugins/echo")),
        cache.path(),
        &[],
    );
    assert!(!warned_unreachable(&pinned));
    echo_works(&pinned).await;
    drop(pinned);

    // Unreachable, and nothing pulled before: one line, no start.
    let empty = tempfile::tempdir().unwrap();
    let line = refused(
        &[
            "--plugin",
            &tagged,
            "--cache-dir",
            empty.path().to_str().unwrap(),
        ],
        &[],
    );
    assert!(
        line.starts_with(&format!(
            "iicp-host: error: cannot pull {tagged}: registry unreachable"
        )),
        "{line}"
    );
    assert!(line.contains("nothing pulled from it before"), "{line}");
}

#[tokio::test(flavor = "multi_thread")]
async fn basic_auth_comes_from_the_environment_or_a_docker_config() {
    let registry = Registry::start(Some(("alice", "s3cret")));
    let reference = registry.reference("team/echo:stable");
    let creds = [
        ("IICP_HOST_REGISTRY_USERNAME", "alice"),
        ("IICP_HOST_REGISTRY_PASSWORD", "s3cret"),
        ("IICP_HOST_REGISTRY_HOST", registry.addr.as_str()),
    ];

    let wasm = plugin("echo");
    let anonymous = host(&["push", wasm.to_str().unwrap(), &reference], &[]);
    assert!(!anonymous.status.success());
    assert!(
        text(&anonymous.stderr).contains("the registry refused access"),
        "{}",
        text(&anonymous.stderr)
    );
    push("echo", &reference, &creds);

    let docker = tempfile::tempdir().unwrap();
    let auth = base64_of("alice:s3cret");
    std::fs::write(
        docker.path().join("config.json"),
        format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, registry.addr),
    )
    .unwrap();
    let cache = tempfile::tempdir().unwrap();
    let node = serve(
        &reference,
        cache.path(),
        &[("DOCKER_CONFIG", docker.path().to_str().unwrap())],
    );
    assert_eq!(fetched(&node)["fields"]["result"], "pulled");
    echo_works(&node).await;
    drop(node);

    let wrong = [
        ("IICP_HOST_REGISTRY_USERNAME", "alice"),
        ("IICP_HOST_REGISTRY_PASSWORD", "guess"),
        ("IICP_HOST_REGISTRY_HOST", registry.addr.as_str()),
    ];
    let fresh = tempfile::tempdir().unwrap();
    let line = refused(
        &[
            "--plugin",
            &reference,
            "--cache-dir",
            fresh.path().to_str().unwrap(),
        ],
        &wrong,
    );
    assert!(line.contains("the registry refused access"), "{line}");
    assert!(!line.contains("guess"), "never print a password: {line}");
}

fn base64_of(text: &str) -> String {
    use std::process::Stdio;
    let mut child = Command::new("base64")
        .args(["-w", "0"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    text_of(child.wait_with_output().unwrap().stdout)
}

fn text_of(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap().trim().to_string()
}

async fn reload(node: &Node) -> Value {
    let response = client()
        .post(node.admin_url("/admin/reload"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    response.json().await.unwrap()
}

async fn version_of(node: &Node) -> String {
    let (status, _, body) = post_task(node, &task("v", VERSIONED, json!({}))).await;
    assert_eq!(status, 200, "{body}");
    body["result"]["version"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn reload_follows_a_moved_tag_and_a_bad_registry_changes_nothing() {
    let mut registry = Registry::start(None);
    let live = registry.reference("svc/versioned:live");
    push("versioned-v1", &live, &[]);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "[node]\ncache_dir = \"{}\"\n[admin]\ntoken_env = \"TEST_ADMIN_TOKEN\"\n[[plugin]]\nid = \"svc\"\npath = \"{live}\"\n",
            dir.path().join("cache").display()
        ),
    )
    .unwrap();
    let node = Node::start_config_env(
        &config,
        &["--admin-listen", "127.0.0.1:0"],
        &[("TEST_ADMIN_TOKEN", ADMIN_TOKEN)],
    );
    assert_eq!(version_of(&node).await, "1");

    // The tag moves: a reload picks it up.
    push("versioned-v2", &live, &[]);
    let report = reload(&node).await;
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["loaded"], json!(["svc"]));
    assert_eq!(version_of(&node).await, "2");

    // Unchanged tag: kept, nothing downloaded.
    let report = reload(&node).await;
    assert_eq!(report["kept"], json!(["svc"]), "{report}");

    // The tag moves to a component whose stored bytes the registry corrupted.
    push("echo", &live, &[]);
    let blob = registry.blob_file(&format!("sha256:{}", common::file_sha256(&plugin("echo"))));
    let mut bytes = std::fs::read(&blob).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&blob, &bytes).unwrap();
    // That plugin keeps its previous version (the others would reload).
    let report = reload(&node).await;
    assert_eq!(report["ok"], false, "{report}");
    assert_eq!(report["failed"][0]["plugin"], "svc", "{report}");
    assert_eq!(report["failed"][0]["kept_previous"], true, "{report}");
    let error = report["failed"][0]["error"].as_str().unwrap();
    assert!(
        error.starts_with(&format!(
            "cannot pull {live}: wrong digest: the component's bytes hash to sha256:"
        )),
        "{error}"
    );
    assert_eq!(version_of(&node).await, "2", "nothing changed");

    // The registry goes away: the reload keeps what serves, with one warning.
    registry.stop();
    let report = reload(&node).await;
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["kept"], json!(["svc"]));
    assert!(
        node.wait_for_log(Duration::from_secs(10), |e| message(e)
            == "registry unreachable; using the copy pulled before")
            .is_some()
    );
    assert_eq!(version_of(&node).await, "2");
}

/// Issue 19's attack: a compiled wasmtime artifact (native code, what
/// `iicp-host compile` writes) published as the `application/wasm` layer of
/// a Wasm OCI artifact with plain registry API calls, as anyone who
/// controls a registry, a moved tag or a plain-HTTP hop can.
#[tokio::test(flavor = "multi_thread")]
async fn a_compiled_artifact_published_as_a_plugin_is_refused() {
    let mut registry = Registry::start(None);
    let dir = tempfile::tempdir().unwrap();
    let native = dir.path().join("echo.cwasm");
    let output = host(
        &[
            "compile",
            plugin("echo").to_str().unwrap(),
            "-o",
            native.to_str().unwrap(),
        ],
        &[],
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
    let evil = std::fs::read(&native).unwrap();
    assert!(evil.starts_with(b"\x7fELF"), "a compiled artifact is ELF");
    let cache = tempfile::tempdir().unwrap();

    // The same API calls publishing the component make an artifact that serves.
    let component = std::fs::read(plugin("echo")).unwrap();
    registry
        .push_wasm_artifact("good/echo", "1", &component)
        .await;
    let node = serve(&registry.reference("good/echo:1"), cache.path(), &[]);
    echo_works(&node).await;
    drop(node);

    let reference = registry.reference("evil/echo:1");
    let pinned = format!(
        "{}@{}",
        registry.reference("evil/echo"),
        registry.push_wasm_artifact("evil/echo", "1", &evil).await
    );
    let evil_layer = format!("sha256:{}", common::file_sha256(&native));
    let cache_dir = cache.path().to_str().unwrap();
    for opt_in in [&[][..], &["--precompiled"][..]] {
        let mut args = vec!["--plugin", &reference, "--cache-dir", cache_dir];
        args.extend_from_slice(opt_in);
        let line = refused(&args, &[]);
        assert_eq!(
            line,
            format!(
                "iicp-host: error: cannot pull {reference}: the layer {evil_layer} is a compiled wasmtime artifact (native code, ELF), not a WebAssembly component: a plugin from a registry must be the .wasm component, which this node compiles itself"
            )
        );
    }
    let stored = cache
        .path()
        .join("oci/blobs/sha256")
        .join(format!("{}.wasm", &evil_layer["sha256:".len()..]));
    assert!(!stored.exists(), "the refused layer is not kept");

    // Planted in the store under its digest (as a version that did not check
    // would have kept it), with the registry gone: still refused.
    std::fs::write(&stored, &evil).unwrap();
    registry.stop();
    let line = refused(&["--plugin", &pinned, "--cache-dir", cache_dir], &[]);
    assert!(
        line.contains(
            "is a compiled wasmtime artifact (native code, ELF), not a WebAssembly component"
        ),
        "{line}"
    );
}

/// Publishes test plugins with skopeo (from an OCI layout directory) and
/// signs them with OpenSSL keys, cosign's way (see `common::signing`).
struct Signer {
    dir: tempfile::TempDir,
    skopeo: Skopeo,
}

impl Signer {
    fn new() -> Signer {
        Signer {
            dir: tempfile::tempdir().unwrap(),
            skopeo: Skopeo::new(),
        }
    }

    fn key(&self, name: &str) -> KeyPair {
        KeyPair::generate(self.dir.path(), name)
    }

    /// Copies `plugin_name`'s component to `repository:tag` with skopeo,
    /// signed by `key` if given; returns the manifest digest.
    async fn publish(
        &self,
        registry: &Registry,
        plugin_name: &str,
        repository: &str,
        tag: &str,
        key: Option<&KeyPair>,
    ) -> String {
        let layout = self.dir.path().join(format!("layout-{plugin_name}"));
        let component = std::fs::read(plugin(plugin_name)).unwrap();
        let digest = oci_layout(&layout, "v", &component);
        let destination = format!("{}/{repository}:{tag}", registry.addr);
        self.skopeo
            .copy(&format!("oci:{}:v", layout.display()), &destination);
        if let Some(key) = key {
            common::signing::sign(registry, repository, &destination, &digest, key).await;
        }
        digest
    }
}

fn path_of(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn signed_plugins_serve_and_unsigned_or_wrongly_signed_ones_are_refused() {
    let registry = Registry::start(None);
    let signer = Signer::new();
    let trusted = signer.key("trusted");
    let other = signer.key("other");
    let cache = tempfile::tempdir().unwrap();
    let cache_dir = path_of(cache.path());
    let key_flag = ["--oci-signature-key", path_of(&trusted.public_key)];

    // Signed by the trusted key: pulled, verified, served.
    let signed = signer
        .publish(&registry, "echo", "signed/echo", "1", Some(&trusted))
        .await;
    let node = serve_with(
        &registry.reference("signed/echo:1"),
        cache.path(),
        &key_flag,
        &[],
    );
    let verified = node
        .log_entries()
        .into_iter()
        .find(|e| message(e) == "plugin signature verified")
        .unwrap_or_else(|| panic!("{}", node.log_text()));
    assert_eq!(verified["fields"]["digest"], signed.as_str());
    echo_works(&node).await;
    drop(node);

    let refused_with_key = |reference: &str| {
        let mut args = vec!["--plugin", reference, "--cache-dir", cache_dir];
        args.extend_from_slice(&key_flag);
        refused(&args, &[])
    };
    // Unsigned.
    signer
        .publish(&registry, "echo", "plain/echo", "1", None)
        .await;
    let line = refused_with_key(&registry.reference("plain/echo:1"));
    assert!(line.contains("the plugin is not signed"), "{line}");
    // Signed, by a key the node does not trust.
    signer
        .publish(&registry, "echo", "other/echo", "1", Some(&other))
        .await;
    let line = refused_with_key(&registry.reference("other/echo:1"));
    assert!(
        line.contains("verifies under") && line.contains("a signature by none of the trusted keys"),
        "{line}"
    );
    // The trusted signature of another artifact copied to this one's
    // signature tag (the registry's operator can do that).
    let versioned = signer
        .publish(&registry, "versioned-v1", "swap/echo", "a", Some(&trusted))
        .await;
    let echo = signer
        .publish(&registry, "echo", "swap/echo", "b", None)
        .await;
    let theirs = registry
        .get_manifest("swap/echo", &signature_tag(&versioned))
        .await;
    registry
        .put_manifest("swap/echo", &signature_tag(&echo), &theirs)
        .await;
    let line = refused_with_key(&registry.reference("swap/echo:b"));
    assert!(
        line.contains(&format!("the signature is for {versioned}, not {echo}")),
        "{line}"
    );

    // A digest-pinning policy refuses a tag, and takes the pinned signed digest.
    let tagged = registry.reference("signed/echo:1");
    let args = [
        "--plugin",
        &tagged,
        "--cache-dir",
        cache_dir,
        "--oci-require-digest",
    ];
    let line = refused(&args, &[]);
    assert!(line.contains("must pin a digest"), "{line}");
    let pinned = format!("{}@{signed}", registry.reference("signed/echo"));
    let node = serve_with(
        &pinned,
        cache.path(),
        &[key_flag[0], key_flag[1], "--oci-require-digest"],
        &[],
    );
    echo_works(&node).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_to_a_wrongly_signed_version_keeps_the_signed_one_serving() {
    let mut registry = Registry::start(None);
    let signer = Signer::new();
    let trusted = signer.key("trusted");
    let other = signer.key("other");
    let live = registry.reference("svc/versioned:live");
    signer
        .publish(
            &registry,
            "versioned-v1",
            "svc/versioned",
            "live",
            Some(&trusted),
        )
        .await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "[node]\ncache_dir = \"{}\"\n[admin]\ntoken_env = \"TEST_ADMIN_TOKEN\"\n[[plugin]]\nid = \"svc\"\npath = \"{live}\"\nsignature_keys = [\"{}\"]\n",
            dir.path().join("cache").display(),
            trusted.public_key.display()
        ),
    )
    .unwrap();
    let node = Node::start_config_env(
        &config,
        &["--admin-listen", "127.0.0.1:0"],
        &[("TEST_ADMIN_TOKEN", ADMIN_TOKEN)],
    );
    assert_eq!(version_of(&node).await, "1");

    // The tag moves to a version signed by another key: the plugin's
    // reload fails and its previous version is kept.
    signer
        .publish(
            &registry,
            "versioned-v2",
            "svc/versioned",
            "live",
            Some(&other),
        )
        .await;
    let report = reload(&node).await;
    assert_eq!(report["ok"], false, "{report}");
    let failed = &report["failed"][0];
    assert_eq!(failed["plugin"], "svc", "{report}");
    assert_eq!(failed["kept_previous"], true, "{report}");
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.starts_with(&format!("cannot pull {live}: no signature of sha256:")),
        "{error}"
    );
    assert_eq!(version_of(&node).await, "1", "the signed version serves on");
    let metrics = common::metrics(&node).await;
    assert!(
        metrics.contains(r#"iicp_oci_refusals_total{reason="signature"} 1"#),
        "{metrics}"
    );

    // Signed by the trusted key: the reload takes it.
    signer
        .publish(
            &registry,
            "versioned-v2",
            "svc/versioned",
            "live",
            Some(&trusted),
        )
        .await;
    let report = reload(&node).await;
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(version_of(&node).await, "2");

    // Offline, the kept signature still verifies: a restart serves.
    drop(node);
    registry.stop();
    let node = Node::start_config_env(
        &config,
        &["--admin-listen", "127.0.0.1:0"],
        &[("TEST_ADMIN_TOKEN", ADMIN_TOKEN)],
    );
    assert!(warned_unreachable(&node), "{}", node.log_text());
    assert_eq!(version_of(&node).await, "2");
}
