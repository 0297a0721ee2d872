//! Test support: builds the guest plugins from source once per test binary,
//! starts the real `iicp-host` binary on a free loopback port and talks to it
//! over real sockets.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod cx;
pub mod fake_directory;
pub mod registry;

/// How long a node may take to start: a deadline for the condition, not a
/// timing claim. A debug build compiling an 18 MB interpreter plugin while
/// the other tests load both cores takes minutes.
const START_TIMEOUT: Duration = Duration::from_secs(300);

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
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "state-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Collected stderr lines of a node, with a way to wait for one.
#[derive(Default)]
struct LogLines {
    lines: Mutex<Vec<String>>,
    changed: Condvar,
    /// Set when the process closed its stderr (it exited): no line will come.
    ended: std::sync::atomic::AtomicBool,
}

/// A running `iicp-host` process.
pub struct Node {
    child: Child,
    pub addr: String,
    logs: Arc<LogLines>,
}

impl Node {
    /// Starts `iicp-host run --plugin <plugin> <extra>` on a free port.
    pub fn start(plugin_path: &Path, extra: &[&str]) -> Node {
        Self::start_with_log_filter(plugin_path, extra, "info")
    }

    /// Like [`Node::start`] with `RUST_LOG` set to `filter`.
    pub fn start_with_log_filter(plugin_path: &Path, extra: &[&str], filter: &str) -> Node {
        Self::launch(
            &["--plugin", &plugin_path.display().to_string()],
            extra,
            filter,
        )
    }

    /// Starts `iicp-host run --config <file> <extra>` on a free port.
    pub fn start_config(config: &Path, extra: &[&str]) -> Node {
        Self::start_config_env(config, extra, &[])
    }

    /// Like [`Node::start_config`] with extra environment variables.
    pub fn start_config_env(config: &Path, extra: &[&str], env: &[(&str, &str)]) -> Node {
        Self::launch_env(
            &["--config", &config.display().to_string()],
            extra,
            "info",
            env,
        )
    }

    fn launch(source: &[&str], extra: &[&str], filter: &str) -> Node {
        Self::launch_env(source, extra, filter, &[])
    }

    fn launch_env(source: &[&str], extra: &[&str], filter: &str, env: &[(&str, &str)]) -> Node {
        let cache = shared_cache_dir();
        let mut args: Vec<String> = vec!["run".into()];
        args.extend(source.iter().map(|s| s.to_string()));
        args.extend([
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--log-format".into(),
            "json".into(),
        ]);
        if !extra
            .iter()
            .any(|a| *a == "--no-cache" || *a == "--cache-dir")
        {
            args.push("--cache-dir".into());
            args.push(cache.display().to_string());
        }
        if !extra.contains(&"--state-dir") {
            args.push("--state-dir".into());
            args.push(fresh_state_dir().display().to_string());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut command = Command::new(env!("CARGO_BIN_EXE_iicp-host"));
        command.args(&args).envs(env.iter().copied());
        Self::spawn_command(&mut command, filter)
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
        let mut child = command
            .env("RUST_LOG", log_filter)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn iicp-host");
        let logs = Arc::new(LogLines::default());
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lines.lock().unwrap().push(line);
                sink.changed.notify_all();
            }
            let _lines = sink.lines.lock().unwrap();
            sink.ended.store(true, std::sync::atomic::Ordering::SeqCst);
            sink.changed.notify_all();
        });
        let mut node = Node {
            child,
            addr: String::new(),
            logs,
        };
        let listening = node
            .wait_for_log(START_TIMEOUT, |entry| message(entry) == "listening")
            .unwrap_or_else(|| panic!("node did not start; log:\n{}", node.log_text()));
        node.addr = listening["fields"]["addr"]
            .as_str()
            .expect("addr field")
            .to_string();
        node
    }

    /// `http://<addr><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// `http://<admin addr><path>`, once the admin API listens.
    pub fn admin_url(&self, path: &str) -> String {
        let listening = self
            .wait_for_log(START_TIMEOUT, |e| message(e) == "admin API listening")
            .expect("admin API listening");
        format!(
            "http://{}{}",
            listening["fields"]["addr"].as_str().unwrap(),
            path
        )
    }

    /// Every JSON log line so far.
    pub fn log_entries(&self) -> Vec<Value> {
        self.logs
            .lines
            .lock()
            .unwrap()
            .iter()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// The raw log so far.
    pub fn log_text(&self) -> String {
        self.logs.lines.lock().unwrap().join("\n")
    }

    /// Waits until a JSON log line satisfies `accept`; `None` after
    /// `timeout`, or as soon as the process has exited without one.
    pub fn wait_for_log(
        &self,
        timeout: Duration,
        accept: impl Fn(&Value) -> bool,
    ) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        let mut lines = self.logs.lines.lock().unwrap();
        let mut seen = 0;
        loop {
            for line in &lines[seen..] {
                if let Ok(entry) = serde_json::from_str::<Value>(line)
                    && accept(&entry)
                {
                    return Some(entry);
                }
            }
            seen = lines.len();
            let now = Instant::now();
            if now >= deadline || self.logs.ended.load(std::sync::atomic::Ordering::SeqCst) {
                return None;
            }
            lines = self
                .logs
                .changed
                .wait_timeout(lines, deadline - now)
                .unwrap()
                .0;
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `fields.message` of a JSON log line.
pub fn message(entry: &Value) -> &str {
    entry["fields"]["message"].as_str().unwrap_or_default()
}

/// An HTTP client for tests: no proxy, short connect timeout.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(60))
        .build()
        .expect("build client")
}

/// A task body.
pub fn task(task_id: &str, intent: &str, payload: Value) -> Value {
    serde_json::json!({ "task_id": task_id, "intent": intent, "payload": payload })
}

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
    client()
        .get(node.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text")
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
