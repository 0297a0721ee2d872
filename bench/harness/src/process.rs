//! Starting the servers under test and reading their memory.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A server process under test.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    /// Where the server's stderr goes (removed with the server), so a
    /// server that refuses to start can say why.
    stderr_log: PathBuf,
}

/// Which server to start.
#[derive(Debug, Clone)]
pub enum ServerKind {
    /// The native reference binary.
    Native { binary: PathBuf },
    /// The HTTP floor, answering `body` to every request.
    Floor { binary: PathBuf, body: PathBuf },
    /// iicp-host with a configuration file and the admin API on `admin`,
    /// its token in the environment variable the file names.
    HostConfig {
        binary: PathBuf,
        config: PathBuf,
        cache_dir: PathBuf,
        admin: SocketAddr,
        token: (String, String),
    },
    /// The native reference with its LLM-gateway handler, forwarding to
    /// the OpenAI-compatible backend at `backend` (a base URL).
    NativeGateway { binary: PathBuf, backend: String },
    /// The mock model backend, answering after `latency_ms`.
    MockLlm { binary: PathBuf, latency_ms: u64 },
    /// iicp-host with a configuration file and extra flags.
    HostFile {
        binary: PathBuf,
        config: PathBuf,
        cache_dir: PathBuf,
        extra: Vec<String>,
    },
    /// iicp-host with a plugin and extra flags.
    Host {
        binary: PathBuf,
        plugin: PathBuf,
        cache_dir: PathBuf,
        extra: Vec<String>,
    },
}

/// `iicp-host run --config CONFIG --listen ADDR --cache-dir DIR`.
fn host_with_config(binary: &Path, config: &Path, addr: SocketAddr, cache_dir: &Path) -> Command {
    let mut c = Command::new(binary);
    c.args(["run", "--config"])
        .arg(config)
        .args(["--listen", &addr.to_string()])
        .arg("--cache-dir")
        .arg(cache_dir);
    c
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl Server {
    /// Starts the server; does not wait for it.
    pub fn spawn(kind: &ServerKind, max_concurrent: u32) -> Server {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut command = match kind {
            ServerKind::Native { binary } => {
                let mut c = Command::new(binary);
                c.arg(addr.to_string()).arg(max_concurrent.to_string());
                c
            }
            ServerKind::NativeGateway { binary, backend } => {
                let mut c = Command::new(binary);
                c.arg(addr.to_string())
                    .arg(max_concurrent.to_string())
                    .arg(backend)
                    .arg(crate::llm::MODEL);
                c
            }
            ServerKind::MockLlm { binary, latency_ms } => {
                let mut c = Command::new(binary);
                c.arg(addr.to_string()).arg(latency_ms.to_string());
                c
            }
            ServerKind::HostFile {
                binary,
                config,
                cache_dir,
                extra,
            } => {
                let mut c = host_with_config(binary, config, addr, cache_dir);
                c.args(extra);
                c
            }
            ServerKind::HostConfig {
                binary,
                config,
                cache_dir,
                admin,
                token,
            } => {
                let mut c = host_with_config(binary, config, addr, cache_dir);
                c.args(["--admin-listen", &admin.to_string()])
                    .env(&token.0, &token.1);
                c
            }
            ServerKind::Floor { binary, body } => {
                let mut c = Command::new(binary);
                c.arg(addr.to_string()).arg(body);
                c
            }
            ServerKind::Host {
                binary,
                plugin,
                cache_dir,
                extra,
            } => {
                let mut c = Command::new(binary);
                c.args(["run", "--plugin"])
                    .arg(plugin)
                    .args([
                        "--listen",
                        &addr.to_string(),
                        "--max-concurrent",
                        &max_concurrent.to_string(),
                    ])
                    .arg("--cache-dir")
                    .arg(cache_dir)
                    // A state directory of its own: nodes sharing the
                    // user's default one share a node id and a relay
                    // rebind key, and a relay's pins from an earlier run
                    // would refuse a worker whose key changed since.
                    .arg("--state-dir")
                    .arg(fresh_dir(&format!("state-{}", addr.port())))
                    // Many slots' worst-case memory is more than most
                    // machines have (the node refuses it by default);
                    // a benchmark's echo holds a sliver of it.
                    .arg("--memory-overcommit")
                    .args(extra);
                c
            }
        };
        let stderr_log =
            std::env::temp_dir().join(format!("iicp-bench-{}-{addr}.stderr", std::process::id()));
        let stderr = std::fs::File::create(&stderr_log).map_or_else(|_| Stdio::null(), Stdio::from);
        let child = command
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start server");
        Server {
            child,
            addr,
            stderr_log,
        }
    }

    /// The last `lines` lines the server wrote to stderr, joined by " | ".
    pub fn stderr_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.stderr_log).unwrap_or_default();
        let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        all[all.len().saturating_sub(lines)..].join(" | ")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Polls with a chat task until one succeeds; returns the time since `since`.
    pub async fn wait_first_success(&self, since: Instant, timeout: Duration) -> Option<Duration> {
        self.wait_first_success_on("/v1/task", since, timeout).await
    }

    /// Like [`Server::wait_first_success`], posting the task to `path`
    /// (e.g. a relay's `/v1/relay-for/ID/v1/task`).
    pub async fn wait_first_success_on(
        &self,
        path: &str,
        since: Instant,
        timeout: Duration,
    ) -> Option<Duration> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.answer(path).await.is_some() {
                return Some(since.elapsed());
            }
            if self.exited() {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        None
    }

    /// Whether the server process has ended (a refused configuration, say),
    /// read from `/proc` so that waiting needs no `&mut`.
    fn exited(&self) -> bool {
        std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).map_or(true, |stat| {
            stat.rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z'))
        })
    }

    /// The body of one successful answer to the chat task.
    pub async fn answer_body(&self) -> Option<Vec<u8>> {
        let response = self.answer("/v1/task").await?;
        let body_start = response.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
        Some(response[body_start..].to_vec())
    }

    /// Whether the server accepts connections yet.
    pub async fn wait_listening(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline && !self.exited() {
            if tokio::net::TcpStream::connect(self.addr).await.is_ok() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        false
    }

    /// One chat task to `path` on a fresh connection: the whole response if
    /// it is a 200.
    async fn answer(&self, path: &str) -> Option<Vec<u8>> {
        let body = r#"{"task_id":"startup","intent":"urn:iicp:intent:llm:chat:v1","payload":{"messages":[{"role":"user","content":"Hello from the benchmark, please echo this back"}]}}"#;
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let mut stream = tokio::net::TcpStream::connect(self.addr).await.ok()?;
        let mut response = Vec::new();
        stream.write_all(request.as_bytes()).await.ok()?;
        stream.read_to_end(&mut response).await.ok()?;
        response.starts_with(b"HTTP/1.1 200").then_some(response)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.stderr_log);
    }
}

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status.lines().find_map(|line| {
                let rest = line.strip_prefix(field)?.strip_prefix(':')?;
                rest.trim().trim_end_matches("kB").trim().parse().ok()
            })
        })
        .unwrap_or(0)
}

/// `GET path` from `addr` on a fresh connection: the body of a 200 answer.
pub async fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n");
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let mut response = Vec::new();
    stream.write_all(request.as_bytes()).await.ok()?;
    stream.read_to_end(&mut response).await.ok()?;
    let text = String::from_utf8(response).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

/// Peak resident set (VmHWM) in KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmHWM")
}

/// Current resident set (VmRSS) in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS")
}

/// CPU time (user + system) the process has used so far, in seconds, from
/// `/proc/PID/stat` (fields 14 and 15, in clock ticks).
pub fn cpu_seconds(pid: u32) -> f64 {
    static TICKS_PER_SECOND: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    let ticks_per_second = *TICKS_PER_SECOND.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    });
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // Fields after the parenthesised command name, which may hold spaces.
            let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
            let user: f64 = fields.next()?.parse().ok()?;
            let system: f64 = fields.next()?.parse().ok()?;
            Some((user + system) / ticks_per_second)
        })
        .unwrap_or(0.0)
}

/// Resets VmHWM to the current RSS (Linux `clear_refs` value 5).
pub fn reset_peak_rss(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

/// A fresh, empty directory under the system temp dir.
pub fn fresh_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("iicp-bench-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// Removes a directory made by [`fresh_dir`].
pub fn remove_dir(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
}
