//! Test support: builds the guest plugins from source once per test binary,
//! starts the real `iicp-host` binary on a free loopback port and talks to it
//! over real sockets.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code, unused_imports)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use iicp_reliability::node::Launcher;
use serde_json::Value;

pub mod cx;
pub mod fake_directory;
pub mod registry;
pub mod relaying;
pub mod signing;

/// Builds `plugins/` for wasm32-wasip2 (a no-op when up to date) and returns
/// the directory holding the `.wasm` files.
pub fn plugin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let status = Command::new(env!("CARGO"))
            .args([
                "build",
                "--release",
                "--target",
                "wasm32-wasip2",
                "--manifest-path",
            ])
            .arg(root.join("plugins/Cargo.toml"))
            .status()
            .expect("run cargo to build the plugins");
        assert!(
            status.success(),
            "building plugins/ failed (is the wasm32-wasip2 target installed?)"
        );
        root.join("plugins/target/wasm32-wasip2/release")
    })
}

/// Path of a plugin built from `plugins/<name>`.
pub fn plugin(name: &str) -> PathBuf {
    let path = plugin_dir().join(format!("{}.wasm", name.replace('-', "_")));
    if path.exists() {
        return path;
    }
    plugin_dir().join(format!("{name}.wasm"))
}

/// A compiled-artifact cache shared by the nodes of one test binary.
pub fn shared_cache_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("plugin-cache")
}

/// A new, empty state directory under the test binary's temp dir.
pub fn fresh_state_dir() -> PathBuf {
    launcher().fresh_state_dir()
}

/// The launcher for nodes of this test binary: the binary under test, the
/// shared artifact cache and state directories under the temp dir.
pub fn launcher() -> Launcher {
    Launcher {
        binary: PathBuf::from(env!("CARGO_BIN_EXE_iicp-host")),
        cache_dir: shared_cache_dir(),
        state_root: PathBuf::from(env!("CARGO_TARGET_TMPDIR")),
    }
}

/// A running `iicp-host` process (the suite's [`iicp_reliability::node::Node`])
/// with the constructors the tests use.
pub struct Node(iicp_reliability::node::Node);

impl std::ops::Deref for Node {
    type Target = iicp_reliability::node::Node;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Node {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Node {
    /// Starts `iicp-host run --plugin <plugin> <extra>` on a free port.
    pub fn start(plugin_path: &Path, extra: &[&str]) -> Node {
        Node(launcher().start(plugin_path, extra))
    }

    /// Like [`Node::start`] with `RUST_LOG` set to `filter`.
    pub fn start_with_log_filter(plugin_path: &Path, extra: &[&str], filter: &str) -> Node {
        Self::start_plugin(plugin_path, extra, filter, &[])
    }

    /// Like [`Node::start`] with extra environment variables.
    pub fn start_env(plugin_path: &Path, extra: &[&str], env: &[(&str, &str)]) -> Node {
        Self::start_plugin(plugin_path, extra, "info", env)
    }

    fn start_plugin(
        plugin_path: &Path,
        extra: &[&str],
        filter: &str,
        env: &[(&str, &str)],
    ) -> Node {
        let source = ["--plugin", &plugin_path.display().to_string()].map(String::from);
        let source: Vec<&str> = source.iter().map(String::as_str).collect();
        Node(launcher().run(&source, extra, filter, env))
    }

    /// Starts `iicp-host run --config <file> <extra>` on a free port.
    pub fn start_config(config: &Path, extra: &[&str]) -> Node {
        Self::start_config_env(config, extra, &[])
    }

    /// Like [`Node::start_config`], run through `wrapper`: an executable
    /// that gets the node's arguments and runs the node binary with them in
    /// a set-up of its own (e.g. another mount namespace).
    pub fn start_config_wrapped(wrapper: &Path, config: &Path) -> Node {
        let launcher = iicp_reliability::node::Launcher {
            binary: wrapper.to_path_buf(),
            ..launcher()
        };
        Node(launcher.start_config(config, &[], &[]))
    }

    /// Like [`Node::start_config`] with extra environment variables.
    pub fn start_config_env(config: &Path, extra: &[&str], env: &[(&str, &str)]) -> Node {
        Node(launcher().start_config(config, extra, env))
    }

    /// Starts `iicp-host run <source>` listening on `listen` (a fixed port,
    /// or another address family) with `state_dir`.
    pub fn start_at(source: &[&str], listen: &str, state_dir: &Path, extra: &[&str]) -> Node {
        let mut args: Vec<String> = vec!["run".into()];
        args.extend(source.iter().map(|s| s.to_string()));
        let cache = shared_cache_dir().display().to_string();
        let state = state_dir.display().to_string();
        for arg in [
            "--listen",
            listen,
            "--log-format",
            "json",
            "--cache-dir",
            &cache,
            "--state-dir",
            &state,
        ] {
            args.push(arg.to_string());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        Self::spawn(&args, "info")
    }

    /// Starts `iicp-host` with exactly `args`, waiting until it listens.
    pub fn spawn(args: &[String], log_filter: &str) -> Node {
        let mut command = Command::new(env!("CARGO_BIN_EXE_iicp-host"));
        command.args(args);
        Self::spawn_command(&mut command, log_filter)
    }

    /// Starts `command` (which must exec `iicp-host` with JSON logs) and
    /// waits until it listens.
    pub fn spawn_command(command: &mut Command, log_filter: &str) -> Node {
        Node(iicp_reliability::node::Node::spawn_command(
            command, log_filter,
        ))
    }
}

pub use iicp_reliability::node::message;

pub use iicp_reliability::traffic::{client, task};

/// Posts `body` to `/v1/task`; returns status, headers and JSON body.
pub async fn post_task(node: &Node, body: &Value) -> (u16, reqwest::header::HeaderMap, Value) {
    let response = client()
        .post(node.url("/v1/task"))
        .json(body)
        .send()
        .await
        .expect("send task");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.expect("read body");
    let json =
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("non-JSON body ({status}): {text}"));
    (status, headers, json)
}

/// `GET /iicp/health` as JSON.
pub async fn health(node: &Node) -> Value {
    client()
        .get(node.url("/iicp/health"))
        .send()
        .await
        .expect("health")
        .json()
        .await
        .expect("health JSON")
}

/// `GET /metrics` as text.
pub async fn metrics(node: &Node) -> String {
    metrics_of(node).await
}

/// `GET /metrics` of any node process (one the suite's launcher started
/// too), as text.
pub async fn metrics_of(node: &iicp_reliability::node::Node) -> String {
    client()
        .get(node.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text")
}

/// The value of the sample `series` (name and labels, as exposed) in a
/// Prometheus exposition; 0 when that label set is absent, a failed test
/// when the whole metric is (see [`exported_family`]).
pub fn sample(text: &str, series: &str) -> f64 {
    exported_family(text, series);
    polled_sample(text, series)
}

/// The value of the sample `series`, 0 when absent whatever the reason:
/// for polls, where a labelled counter appears only at its first event.
/// A test's final checks read with [`sample`].
pub fn polled_sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Panics unless the metric family of `series` (its name before any `{`)
/// is in the exposition `text`: a missing label set of an exported family
/// reads as 0 (a counter child not yet touched), a missing family — a
/// misspelt or renamed metric — fails the test instead of passing an
/// `== 0` check.
fn exported_family(text: &str, series: &str) {
    let family = series
        .split(['{', ' '])
        .next()
        .unwrap_or(series)
        .trim_end_matches("_bucket")
        .trim_end_matches("_count")
        .trim_end_matches("_sum");
    let exported = text.lines().any(|line| {
        let name = line
            .strip_prefix("# TYPE ")
            .or_else(|| line.strip_prefix("# HELP "))
            .unwrap_or(line)
            .split(['{', ' '])
            .next()
            .unwrap_or_default();
        name == family
            || ["_bucket", "_count", "_sum"]
                .iter()
                .any(|suffix| name.strip_suffix(suffix) == Some(family))
    });
    assert!(
        exported,
        "the node exports no metric {family} (misspelt, renamed, or never created):\n{text}"
    );
}

/// Polls `check` until it holds; fails naming `what` after `within`.
pub async fn wait_until<F, Fut>(what: &str, within: Duration, check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Polls the node's metrics until the sample `series` satisfies `done`,
/// for at most `limit`; returns when it did, and panics naming the series
/// (with the last exposition) when it never does.
pub async fn wait_for_sample(
    node: &Node,
    series: &str,
    limit: Duration,
    done: impl Fn(f64) -> bool,
) -> Instant {
    let deadline = Instant::now() + limit;
    loop {
        let text = metrics(node).await;
        if done(polled_sample(&text, series)) {
            return Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "{series} did not reach its value within {limit:?}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A configuration file serving the echo plugin, followed by `extra`
/// (TOML tables), in a fresh directory.
pub fn echo_config(extra: &str) -> PathBuf {
    let dir = fresh_state_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("node.toml");
    let echo = plugin("echo").display().to_string();
    std::fs::write(&path, format!("[[plugin]]\npath = {echo:?}\n\n{extra}\n")).unwrap();
    path
}

/// The value of the first metric line starting with `series` (name and
/// labels, or name and a space), 0 when absent.
pub fn metric_value(text: &str, series: &str) -> f64 {
    exported_family(text, series);
    text.lines()
        .find(|line| line.starts_with(series))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or(0.0)
}

/// Asserts the protocol error envelope and returns `error`.
pub fn error_of(body: &Value) -> &Value {
    let error = &body["error"];
    assert!(error["code"].is_string(), "no error.code in {body}");
    assert!(error["message"].is_string(), "no error.message in {body}");
    error
}

/// Waits until health reports no active jobs; returns the last health.
pub async fn wait_idle(node: &Node, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let health = health(node).await;
        if health["active_jobs"] == 0 || Instant::now() >= deadline {
            return health;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits until health reports at least `jobs` active jobs (a task has
/// reached its plugin); panics after `timeout`.
pub async fn wait_active(node: &Node, jobs: u64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let active = health(node).await["active_jobs"].as_u64().unwrap_or(0);
        if active >= jobs {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {active} of {jobs} jobs became active"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Sends raw bytes as one HTTP/1.1 request on a new connection and returns
/// the status code and body of the response (the server closes after it).
pub async fn raw_http(addr: &str, request: &[u8]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write request");
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"));
    let body = text
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    (status, body)
}

/// A chunked (no Content-Length) `POST /v1/task` carrying `body`.
pub fn chunked_task_request(body: &[u8]) -> Vec<u8> {
    let mut request = b"POST /v1/task HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    for chunk in body.chunks(512) {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    request
}

/// Posts `body` to `url` on a task of its own; the handle yields the status.
pub fn spawn_post(url: String, body: Value) -> tokio::task::JoinHandle<u16> {
    tokio::spawn(async move {
        client()
            .post(url)
            .json(&body)
            .send()
            .await
            .expect("send task")
            .status()
            .as_u16()
    })
}

/// Awaits every handle, in order.
pub async fn join_all<T: Send + 'static>(handles: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        out.push(handle.await.expect("task panicked"));
    }
    out
}

/// The hex SHA-256 of a file.
pub fn file_sha256(path: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(
        std::fs::read(path).expect("read file"),
    ))
}

/// Runs `command` (an `iicp-host run` expected to refuse to start) and
/// returns the non-empty lines of its stderr. A node that starts serving
/// instead (it logs `listening`) is stopped and the test fails: an attack
/// that succeeds fails the test rather than hanging it.
pub fn refused_to_start(command: &mut Command) -> Vec<String> {
    use std::io::BufRead;
    let mut child = command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run iicp-host");
    let stderr = child.stderr.take().unwrap();
    let mut lines = Vec::new();
    for line in std::io::BufReader::new(stderr).lines() {
        let line = line.unwrap();
        if line.contains("listening") {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the node started and served instead of refusing:\n{}\n{line}",
                lines.join("\n")
            );
        }
        if !line.trim().is_empty() {
            lines.push(line);
        }
    }
    let status = child.wait().unwrap();
    assert!(!status.success(), "exited 0:\n{}", lines.join("\n"));
    lines
}

/// The python of the PyPI reference package's venv
/// (`tests/reference-consumer/`), which its `setup.sh` installs on the
/// first run (`make test` runs it first; python3 with `venv`, and PyPI
/// access once; never skipped).
pub fn reference_python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let setup = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference-consumer/setup.sh");
        let output = Command::new(setup)
            .stderr(std::process::Stdio::inherit())
            .output()
            .expect("run tests/reference-consumer/setup.sh");
        assert!(
            output.status.success(),
            "tests/reference-consumer/setup.sh failed (see its error above)"
        );
        PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
    })
}

/// Asserts each `(series, value)` of `/metrics` text `text`.
pub fn assert_metrics(text: &str, expected: &[(&str, f64)]) {
    for (series, value) in expected {
        assert_eq!(metric_value(text, series), *value, "{series}");
    }
}
