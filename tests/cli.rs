//! The command line: plugins that cannot be served are refused with one
//! clear line before any port is bound; SIGTERM drains in-flight tasks; the
//! compiled-artifact cache survives restarts, shrugs off corruption and
//! refuses entries that are not the node user's alone or do not verify; the
//! allocator falls back when the address space is too small.

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Node, client, message, metrics, plugin, post_task, task};
use serde_json::json;

/// Runs `iicp-host run --plugin <path>` on a port that is already taken and
/// returns (exit success, stderr). A plugin error must win over the bind error.
fn run_refused(plugin_path: &Path) -> (bool, String) {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let output = Command::new(env!("CARGO_BIN_EXE_iicp-host"))
        .args(["run", "--plugin"])
        .arg(plugin_path)
        .args(["--listen", &addr, "--no-cache", "--state-dir"])
        .arg(common::fresh_state_dir())
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).to_string(),
    )
}

fn assert_one_line_error(plugin_path: &Path, expected: &str) {
    let (success, stderr) = run_refused(plugin_path);
    assert!(!success, "must exit non-zero");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got:\n{stderr}");
    assert!(lines[0].starts_with("iicp-host: error: "), "{stderr}");
    assert!(
        lines[0].contains(expected),
        "expected {expected:?} in {stderr}"
    );
    assert!(
        !lines[0].contains("cannot listen"),
        "bound the port first: {stderr}"
    );
}

#[test]
fn a_missing_file_is_refused() {
    assert_one_line_error(
        Path::new("/nonexistent/echo.wasm"),
        "plugin file not found: /nonexistent/echo.wasm",
    );
}

#[test]
fn a_core_module_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("core.wasm");
    std::fs::write(&path, b"\0asm\x01\0\0\0").unwrap();
    assert_one_line_error(&path, "is a core WebAssembly module, not a component");
}

#[test]
fn a_file_that_is_not_wasm_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.wasm");
    std::fs::write(&path, b"just some text").unwrap();
    assert_one_line_error(&path, "is not a WebAssembly file");
}

#[test]
fn a_component_of_the_wrong_world_is_refused() {
    assert_one_line_error(
        &plugin("cli-command"),
        "does not fit the iicp:plugin world: it does not export iicp:plugin/handler@0.1.0 (it exports wasi:cli/run@",
    );
}

/// Fresh instances call `handle` without checking its type again once one
/// instance of the artifact passed the check (`runtime/handle_export.rs`);
/// a component whose `handle` has another type must never get that far.
#[test]
fn a_component_whose_handle_has_another_type_is_refused() {
    assert_one_line_error(
        &plugin("mistyped-handle"),
        "failed to describe itself: failed to convert function to given type: type mismatch with parameters: expected `record` found `string`",
    );
}

#[test]
fn out_of_range_flags_are_refused() {
    let output = Command::new(env!("CARGO_BIN_EXE_iicp-host"))
        .args(["run", "--plugin", "x.wasm", "--max-concurrent", "0"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--max-concurrent"));
}

#[test]
fn inconsistent_relay_flags_are_refused() {
    for (args, expected) in [
        (&["--relay", "relay:8080"][..], "--relay: url"),
        (&["--relay-max-sessions", "5"][..], "need --relay-capable"),
        (
            &["--relay-capable", "--relay-liveness-ms", "5"][..],
            "--relay-liveness-ms must be between 25000 and 3600000, got 5",
        ),
        (
            &["--relay-capable", "--relay-require-bind-ticket"][..],
            "bind_ticket_key",
        ),
        (
            &[
                "--relay",
                "http://r:1",
                "--directory",
                "http://d",
                "--endpoint",
                "http://me",
            ][..],
            "relay-for endpoint",
        ),
    ] {
        assert_run_refused(args, None, expected);
    }
}

/// `iicp-host run --plugin x.wasm ARGS` (with `env` set) fails with one
/// line containing `expected`.
fn assert_run_refused(args: &[&str], env: Option<(&str, &str)>, expected: &str) {
    assert_refused(&["run", "--plugin", "x.wasm"], args, env, expected);
}

/// `iicp-host COMMAND ARGS` (with `env` set) fails with one line
/// containing `expected`.
fn assert_refused(command: &[&str], args: &[&str], env: Option<(&str, &str)>, expected: &str) {
    let mut command_line = Command::new(env!("CARGO_BIN_EXE_iicp-host"));
    let command = command_line.args(command).args(args);
    if let Some((name, value)) = env {
        command.env(name, value);
    }
    let output = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{env:?} {args:?}");
    assert!(stderr.contains(expected), "{env:?} {args:?}: {stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

#[test]
fn section_keys_from_the_environment_and_set_are_checked_naming_their_source() {
    for (env, args, expected) in [
        (
            ("IICP_HOST_PEERS__MAX_PEERS", "0"),
            &[][..],
            "IICP_HOST_PEERS__MAX_PEERS: max_peers must be between 1 and 100000, got 0",
        ),
        (
            ("IICP_HOST_PEERS__CALL_TIMEOUT_MS", "5"),
            &["--set", "peers.call_timeout_ms=50"][..],
            "--set peers.call_timeout_ms=50: call_timeout_ms must be between 100 and 120000, got 50",
        ),
        (
            ("IICP_HOST_RELAY_CAPABLE__MAX_SESION", "3"),
            &[][..],
            "IICP_HOST_RELAY_CAPABLE__MAX_SESION: unknown field `max_sesion`",
        ),
        (
            ("IICP_HOST_TELEMETRY__OTLP_QUEUE_SPANS", "0"),
            &[][..],
            "IICP_HOST_TELEMETRY__OTLP_QUEUE_SPANS: otlp_queue_spans must be between 1 and 1000000, got 0",
        ),
        (
            ("IICP_HOST_NOPE__X", "1"),
            &[][..],
            "IICP_HOST_NOPE__X: no settings section `nope`",
        ),
        (
            ("IICP_HOST_NODE__MAX_CONCURRENT", "0"),
            &[][..],
            "IICP_HOST_NODE__MAX_CONCURRENT: max_concurrent must be between 1 and 4096, got 0",
        ),
        (
            ("IICP_HOST_DEFAULTS__HOST_MEMORY_KIB", "1"),
            &[][..],
            "IICP_HOST_DEFAULTS__HOST_MEMORY_KIB: host_memory_kib must be between 64 and 4194304, got 1",
        ),
        // A dedicated flag stacks over the key's other sources and is
        // named as typed.
        (
            ("IICP_HOST_NODE__MAX_CONCURRENT", "8"),
            &["--max-concurrent", "0"][..],
            "--max-concurrent must be between 1 and 4096, got 0",
        ),
        (
            ("IICP_HOST_UNRELATED", "1"),
            &["--set", "node.listen_addr=x"][..],
            "--set node.listen_addr=x: unknown field `listen_addr`",
        ),
        (
            ("IICP_HOST_UNRELATED", "1"),
            &["--set", "relay.url=relay:8080"][..],
            "--set relay.url=relay:8080: url:",
        ),
    ] {
        assert_run_refused(args, Some(env), expected);
    }
}

#[test]
fn file_sections_take_keys_from_the_environment_and_set_over_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(&config, "[[plugin]]\npath = \"x.wasm\"\n").unwrap();
    let config = config.to_str().unwrap();
    for (env, args, expected) in [
        (
            ("IICP_HOST_OCI__MAX_PLUGIN_MIB", "0"),
            &[][..],
            "IICP_HOST_OCI__MAX_PLUGIN_MIB: max_plugin_mib must be between 1 and 4096, got 0",
        ),
        (
            ("IICP_HOST_AUTH__DIRECTORY_KEY_REFRESH_S", "60"),
            &["--set", "auth.directory_key_min_interval_s=120"][..],
            "--set auth.directory_key_min_interval_s=120: directory_key_min_interval_s must not exceed auth.directory_key_refresh_s",
        ),
        (
            ("IICP_HOST_DIRECTORY__TIMEOUT_MS", "5000"),
            &[][..],
            "IICP_HOST_DIRECTORY__TIMEOUT_MS: missing field `url`",
        ),
        // The stacked value is the one in force: node-token without a
        // token would refuse every task.
        (
            ("IICP_HOST_AUTH__MODE", "node-token"),
            &[][..],
            "auth.mode = \"node-token\" would refuse every task",
        ),
    ] {
        assert_refused(&["run", "--config", config], args, Some(env), expected);
    }
    // Without a file they have no table to stack over, and say so.
    assert_run_refused(
        &[],
        Some(("IICP_HOST_AUTH__MODE", "node-token")),
        "[oci], [auth], [directory], [admin] are read with --config only",
    );
}

/// A backend on loopback whose one answer waits until the test releases
/// it: a task fetching it runs exactly as long as the test wants.
async fn held_backend() -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let released = std::sync::Arc::new(tokio::sync::Mutex::new(Some(released)));
    let app = axum::Router::new().route(
        "/held",
        axum::routing::get(move || {
            let released = released.clone();
            async move {
                if let Some(wait) = released.lock().await.take() {
                    let _ = wait.await;
                }
                "released"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, release)
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_in_flight_tasks_then_exits_zero() {
    // The in-flight task fetches a backend that answers only when the test
    // says so: it outlasts the checks below however slow the machine is.
    let (backend, release) = held_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("drain.toml");
    std::fs::write(
        &config,
        format!(
            "[[plugin]]\nid = \"fetcher\"\npath = {:?}\n[plugin.http]\nallow = [\"http://{backend}\"]\n",
            plugin("misbehave").display().to_string()
        ),
    )
    .unwrap();
    let mut node = Node::start_config(&config, &[]);
    let url = node.url("/v1/task");
    let in_flight = tokio::spawn(async move {
        let mut body = task(
            "draining",
            "urn:iicp:intent:test:http-get:v1",
            json!({"url": format!("http://{backend}/held")}),
        );
        body["constraints"] = json!({"timeout_ms": 120_000});
        let response = client().post(url).json(&body).send().await.unwrap();
        (
            response.status().as_u16(),
            response.json::<serde_json::Value>().await.unwrap(),
        )
    });
    common::wait_active(&node, 1, Duration::from_secs(30)).await;
    node.terminate();
    node.wait_for_log(Duration::from_secs(30), |e| {
        message(e).starts_with("shutting down")
    })
    .expect("shutdown announced");
    // No new connections are accepted while draining (the listener closes
    // right after the announcement; the task still runs).
    let deadline = Instant::now() + Duration::from_secs(30);
    while client().get(node.url("/iicp/health")).send().await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "still accepting connections while draining"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        !node.log_entries().iter().any(|e| message(e) == "drained"),
        "the drain ended before the listener closed"
    );

    release.send(()).unwrap();
    let (status, body) = in_flight.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["task_id"], "draining");
    let exit = node.wait_exit(Duration::from_secs(10)).expect("exited");
    assert!(exit.success(), "{exit:?}");
    assert!(node.log_entries().iter().any(|e| message(e) == "drained"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_drain_is_bounded() {
    let mut node = Node::start(&plugin("misbehave"), &["--drain-timeout-ms", "500"]);
    let url = node.url("/v1/task");
    let stuck = tokio::spawn(async move {
        let body = task(
            "stuck",
            "urn:iicp:intent:test:sleep:v1",
            json!({"ms": 20_000}),
        );
        let _ = client().post(url).json(&body).send().await;
    });
    common::wait_active(&node, 1, Duration::from_secs(30)).await;
    node.terminate();
    // The 20 s task is abandoned at the 0.5 s drain bound, not waited for.
    let exit = node.wait_exit(Duration::from_secs(15)).expect("exited");
    assert!(exit.success());
    let abandoned = node
        .log_entries()
        .into_iter()
        .find(|e| message(e).starts_with("drain timeout reached"))
        .expect("drain timeout line");
    assert_eq!(abandoned["fields"]["abandoned"], 1, "{abandoned}");
    stuck.abort();
}

fn plugin_loaded_cached(node: &Node) -> bool {
    let loaded = node
        .log_entries()
        .into_iter()
        .find(|e| message(e) == "plugin loaded")
        .expect("plugin loaded line");
    loaded["fields"]["cached"].as_bool().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn compiled_artifacts_are_cached_and_corruption_is_a_miss() {
    let cache = tempfile::tempdir().unwrap();
    let cache_arg = cache.path().display().to_string();
    let echo = plugin("echo");
    let first = Node::start(&echo, &["--cache-dir", &cache_arg]);
    assert!(!plugin_loaded_cached(&first));
    drop(first);

    let second = Node::start(&echo, &["--cache-dir", &cache_arg]);
    assert!(plugin_loaded_cached(&second));
    assert_eq!(
        post_task(
            &second,
            &task("c", "urn:iicp:intent:util:echo:v1", json!(1))
        )
        .await
        .0,
        200
    );
    drop(second);

    let entries = cache_entries(cache.path());
    assert_eq!(entries.len(), 1, "{entries:?}");
    let mut bytes = std::fs::read(&entries[0]).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&entries[0], &bytes).unwrap();

    let third = Node::start(&echo, &["--cache-dir", &cache_arg]);
    assert!(!plugin_loaded_cached(&third));
    assert_eq!(refusal_reasons(&third), ["unverified"]);
    assert_eq!(
        post_task(&third, &task("c", "urn:iicp:intent:util:echo:v1", json!(2)))
            .await
            .0,
        200
    );

    // Truncated to nothing: still a miss, never a failure.
    drop(third);
    let entries = cache_entries(cache.path());
    std::fs::write(&entries[0], b"").unwrap();
    let fourth = Node::start(&echo, &["--cache-dir", &cache_arg]);
    assert!(!plugin_loaded_cached(&fourth));
}

/// The compiled entries in a cache directory (not its key).
fn cache_entries(dir: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "cwasm"))
        .collect()
}

/// The cache entry of the component at `wasm` (named by its SHA-256).
fn cache_entry_of(dir: &Path, wasm: &Path) -> std::path::PathBuf {
    use sha2::Digest;
    let sha256 = hex::encode(sha2::Sha256::digest(std::fs::read(wasm).unwrap()));
    let entries = cache_entries(dir);
    let found = entries.iter().find(|path| {
        path.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(&sha256)
    });
    found
        .unwrap_or_else(|| panic!("no entry for {sha256} in {entries:?}"))
        .clone()
}

/// The reasons of the node's "refusing … cache entry" log lines.
fn refusal_reasons(node: &Node) -> Vec<String> {
    node.log_entries()
        .iter()
        .filter(|e| message(e).starts_with("refusing compiled-artifact cache entry"))
        .map(|e| e["fields"]["reason"].as_str().unwrap().to_string())
        .collect()
}

/// `iicp_artifact_cache_rejected_total{reason}` as the node exports it.
async fn rejected_count(node: &Node, reason: &str) -> u64 {
    let text = metrics(node).await;
    let series = format!("iicp_artifact_cache_rejected_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&series))
        .unwrap_or_else(|| panic!("no {series} in {text}"))
        .parse()
        .unwrap()
}

/// How a node is expected to get its plugin's compiled code.
#[derive(Clone, Copy)]
enum Load {
    /// From the cache.
    Hit,
    /// Compiled: there was no entry.
    Compiled,
    /// Compiled: the entry was refused for this reason.
    Refused(&'static str),
}

/// Starts the versioned plugin `version` on `cache`, checks how its code
/// was loaded (a refusal logged and counted) and that it answers as itself.
async fn serves_version(cache: &Path, version: &str, expected: Load) {
    let node = Node::start(
        &plugin(&format!("versioned-v{version}")),
        &["--cache-dir", &cache.display().to_string()],
    );
    assert_eq!(plugin_loaded_cached(&node), matches!(expected, Load::Hit));
    match expected {
        Load::Refused(reason) => {
            assert_eq!(refusal_reasons(&node), [reason]);
            assert_eq!(rejected_count(&node, reason).await, 1);
        }
        Load::Hit | Load::Compiled => assert!(refusal_reasons(&node).is_empty()),
    }
    let (status, _, body) = post_task(
        &node,
        &task("v", "urn:iicp:intent:test:versioned:v1", json!({})),
    )
    .await;
    assert_eq!(
        (status, &body["result"]),
        (200, &json!({ "version": version }))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cache_entries_not_ours_alone_or_not_verifying_are_compiled_again() {
    use std::os::unix::fs::{PermissionsExt, chown};
    const NOBODY: u32 = 65534;
    let cache = tempfile::tempdir().unwrap();
    let dir = cache.path();
    serves_version(dir, "1", Load::Compiled).await;
    serves_version(dir, "2", Load::Compiled).await;
    serves_version(dir, "2", Load::Hit).await;

    // Swapped: v1's valid entry under v2's name must not run as v2.
    let entry = cache_entry_of(dir, &plugin("versioned-v2"));
    std::fs::copy(cache_entry_of(dir, &plugin("versioned-v1")), &entry).unwrap();
    serves_version(dir, "2", Load::Refused("unverified")).await;
    serves_version(dir, "2", Load::Hit).await;

    // Writable by others.
    std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(0o666)).unwrap();
    serves_version(dir, "2", Load::Refused("entry_not_private")).await;
    serves_version(dir, "2", Load::Hit).await;

    // Another user's file.
    chown(&entry, Some(NOBODY), None)
        .expect("planting another user's cache entry needs root (CAP_CHOWN)");
    serves_version(dir, "2", Load::Refused("entry_not_private")).await;
    serves_version(dir, "2", Load::Hit).await;

    // Another user's directory: no cache at all, and the node serves.
    chown(dir, Some(NOBODY), None).unwrap();
    let node = Node::start(
        &plugin("versioned-v2"),
        &["--cache-dir", &dir.display().to_string()],
    );
    assert!(!plugin_loaded_cached(&node));
    assert!(
        node.log_entries()
            .iter()
            .any(|e| message(e) == "compiled-artifact cache disabled")
    );
    assert_eq!(rejected_count(&node, "directory_not_private").await, 1);
    let (status, _, body) = post_task(
        &node,
        &task("v", "urn:iicp:intent:test:versioned:v1", json!({})),
    )
    .await;
    assert_eq!((status, &body["result"]), (200, &json!({ "version": "2" })));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_small_address_space_falls_back_to_on_demand_allocation() {
    // 10 GB of address space cannot hold the pool (~1 TiB reserved) but can
    // hold one on-demand instance.
    let script = format!(
        "ulimit -v 10000000 && exec '{}' run --plugin '{}' --listen 127.0.0.1:0 --log-format json --no-cache --state-dir '{}'",
        env!("CARGO_BIN_EXE_iicp-host"),
        plugin("echo").display(),
        common::fresh_state_dir().display()
    );
    let node = Node::spawn_command(Command::new("sh").args(["-c", &script]), "info");
    let listening = node
        .log_entries()
        .into_iter()
        .find(|e| message(e) == "listening")
        .unwrap();
    assert_eq!(listening["fields"]["allocator"], "on-demand");
    assert!(
        node.log_entries()
            .iter()
            .any(|e| message(e).starts_with("pooling allocator unavailable"))
    );
    let (status, _, body) = post_task(
        &node,
        &task("small-va", "urn:iicp:intent:util:echo:v1", json!("ok")),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

/// Each option of `iicp-host run --help`: its flag (without `--`) and its
/// help block, from its `--flag` line up to the next option.
fn run_help_blocks() -> Vec<(String, String)> {
    let help = Command::new(env!("CARGO_BIN_EXE_iicp-host"))
        .args(["run", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout).to_string();
    let mut blocks: Vec<(String, String)> = Vec::new();
    for line in help.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if indent <= 6 && trimmed.starts_with('-') {
            let flag = trimmed
                .split(", ")
                .last()
                .unwrap_or(trimmed)
                .trim_start_matches('-')
                .split([' ', '<'])
                .next()
                .unwrap_or_default()
                .to_string();
            blocks.push((flag, String::new()));
        } else if let Some((_, block)) = blocks.last_mut() {
            block.push_str(line);
            block.push('\n');
        }
    }
    blocks
}

#[test]
fn every_run_flag_can_come_from_the_environment() {
    let blocks = run_help_blocks();
    let mut flags = 0;
    for (flag, block) in &blocks {
        if flag == "help" {
            continue;
        }
        flags += 1;
        if flag == "set" {
            // Its keys come from IICP_HOST_<SECTION>__<KEY> each.
            assert!(block.contains("IICP_HOST_<SECTION>__<KEY>"), "{block}");
            continue;
        }
        let variable = format!("IICP_HOST_{}", flag.replace('-', "_").to_uppercase());
        assert!(
            block.contains(&format!("[env: {variable}=")),
            "--{flag} has no {variable}:\n{block}"
        );
    }
    assert!(flags >= 25, "parsed only {flags} flags from:\n{blocks:?}");

    // And the variables are read: a bad value is refused naming the flag.
    let output = Command::new(env!("CARGO_BIN_EXE_iicp-host"))
        .args(["run", "--plugin", "x.wasm"])
        .env("IICP_HOST_MAX_CONCURRENT", "0")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--max-concurrent"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_configured_by_environment_serves_with_those_settings() {
    let mut command = Command::new(env!("CARGO_BIN_EXE_iicp-host"));
    command
        .arg("run")
        .env("IICP_HOST_PLUGIN", plugin("echo"))
        .env("IICP_HOST_LISTEN", "127.0.0.1:0")
        .env("IICP_HOST_LOG_FORMAT", "json")
        .env("IICP_HOST_MAX_CONCURRENT", "3")
        .env("IICP_HOST_CACHE_DIR", common::shared_cache_dir())
        .env("IICP_HOST_STATE_DIR", common::fresh_state_dir());
    let node = Node::spawn_command(&mut command, "info");
    let health = common::health(&node).await;
    assert_eq!(health["max_concurrent"], 3, "{health}");
}

#[test]
fn completions_and_man_pages_come_from_the_cli_definition() {
    let run = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_iicp-host"))
            .args(args)
            .output()
            .unwrap();
        assert!(output.status.success(), "{args:?}");
        String::from_utf8_lossy(&output.stdout).to_string()
    };
    let bash = run(&["completions", "bash"]);
    assert!(
        bash.contains("complete -F _iicp__host") && bash.contains("--max-concurrent"),
        "{bash}"
    );
    assert!(run(&["completions", "zsh"]).contains("#compdef iicp-host"));
    let page = run(&["man"]);
    assert!(page.starts_with(".ie \\n(.g .ds Aq"), "{page}");
    assert!(page.contains(".TH iicp-host 1"), "{page}");
    let dir = tempfile::tempdir().unwrap();
    run(&["man", "--out-dir", dir.path().to_str().unwrap()]);
    let run_page = std::fs::read_to_string(dir.path().join("iicp-host-run.1")).unwrap();
    assert!(run_page.contains("max\\-concurrent"), "{run_page}");
    assert!(run_page.contains("IICP_HOST_MAX_CONCURRENT"), "{run_page}");
    assert!(dir.path().join("iicp-host-push.1").exists());
}
