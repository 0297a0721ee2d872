//! The command line: plugins that cannot be served are refused with one
//! clear line before any port is bound; SIGTERM drains in-flight tasks; the
//! compiled-artifact cache survives restarts and shrugs off corruption; the
//! allocator falls back when the address space is too small.

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Node, client, message, plugin, post_task, task};
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

#[test]
fn out_of_range_flags_are_refused() {
    let output = Command::new(env!("CARGO_BIN_EXE_iicp-host"))
        .args(["run", "--plugin", "x.wasm", "--max-concurrent", "0"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--max-concurrent"));
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_in_flight_tasks_then_exits_zero() {
    let mut node = Node::start(&plugin("misbehave"), &[]);
    let url = node.url("/v1/task");
    let in_flight = tokio::spawn(async move {
        let mut body = task(
            "draining",
            "urn:iicp:intent:test:sleep:v1",
            json!({"ms": 1500}),
        );
        body["constraints"] = json!({"timeout_ms": 10_000});
        let response = client().post(url).json(&body).send().await.unwrap();
        (
            response.status().as_u16(),
            response.json::<serde_json::Value>().await.unwrap(),
        )
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    node.terminate();
    node.wait_for_log(Duration::from_secs(5), |e| {
        message(e).starts_with("shutting down")
    })
    .expect("shutdown announced");
    // No new connections are accepted while draining.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let refused = client().get(node.url("/iicp/health")).send().await;
    assert!(refused.is_err(), "accepted a new connection while draining");

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
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    node.terminate();
    let exit = node.wait_exit(Duration::from_secs(10)).expect("exited");
    assert!(exit.success());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(
        node.log_entries()
            .iter()
            .any(|e| message(e).starts_with("drain timeout reached"))
    );
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

    let entries: Vec<_> = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let mut bytes = std::fs::read(&entries[0]).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&entries[0], &bytes).unwrap();

    let third = Node::start(&echo, &["--cache-dir", &cache_arg]);
    assert!(!plugin_loaded_cached(&third));
    assert!(
        third
            .log_entries()
            .iter()
            .any(|e| message(e) == "discarding unusable compiled-artifact cache entry")
    );
    assert_eq!(
        post_task(&third, &task("c", "urn:iicp:intent:util:echo:v1", json!(2)))
            .await
            .0,
        200
    );

    // Truncated to nothing: still a miss, never a failure.
    drop(third);
    let entries: Vec<_> = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    std::fs::write(&entries[0], b"").unwrap();
    let fourth = Node::start(&echo, &["--cache-dir", &cache_arg]);
    assert!(!plugin_loaded_cached(&fourth));
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
