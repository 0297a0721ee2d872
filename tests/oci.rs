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
    let mut all = vec!["run", "--listen", "127.0.0.1:0", "--state-dir"];
    let state = common::fresh_state_dir();
    all.push(state.to_str().unwrap());
    all.extend_from_slice(args);
    let output = host(&all, env);
    assert!(
        !output.status.success(),
        "started: {}",
        text(&output.stderr)
    );
    let stderr = text(&output.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line:\n{stderr}");
    lines[0].to_string()
}

/// Starts a node serving `reference`, its pulled plugins kept in `cache`.
fn serve(reference: &str, cache: &Path, env: &[(&str, &str)]) -> Node {
    let state = common::fresh_state_dir();
    let mut command = Command::new(env!("CARGO_BIN_EXE_iicp-host"));
    command
        .args(["run", "--plugin", reference, "--listen", "127.0.0.1:0"])
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
