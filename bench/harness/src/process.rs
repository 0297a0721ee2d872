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
}

/// Which server to start.
#[derive(Debug, Clone)]
pub enum ServerKind {
    /// The native reference binary.
    Native { binary: PathBuf },
    /// iicp-host with a plugin and extra flags.
    Host {
        binary: PathBuf,
        plugin: PathBuf,
        cache_dir: PathBuf,
        extra: Vec<String>,
    },
}

fn free_port() -> u16 {
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
                    .args(extra);
                c
            }
        };
        let child = command
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start server");
        Server { child, addr }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Polls with a chat task until one succeeds; returns the time since `since`.
    pub async fn wait_first_success(&self, since: Instant, timeout: Duration) -> Option<Duration> {
        let deadline = Instant::now() + timeout;
        let body = r#"{"task_id":"startup","intent":"urn:iicp:intent:llm:chat:v1","payload":{"messages":[{"role":"user","content":"up?"}]}}"#;
        let request = format!(
            "POST /v1/task HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        while Instant::now() < deadline {
            if let Ok(mut stream) = tokio::net::TcpStream::connect(self.addr).await {
                let mut response = Vec::new();
                if stream.write_all(request.as_bytes()).await.is_ok()
                    && stream.read_to_end(&mut response).await.is_ok()
                    && response.starts_with(b"HTTP/1.1 200")
                {
                    return Some(since.elapsed());
                }
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        None
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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

/// Peak resident set (VmHWM) in KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmHWM")
}

/// Current resident set (VmRSS) in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS")
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
