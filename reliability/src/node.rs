//! A running `iicp-host` process: started on a free loopback port with JSON
//! logs, its log lines collected so callers can wait for one, stopped with
//! SIGTERM or killed when dropped. The end-to-end tests use the same type.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long a node may take to start: a debug build compiling an 18 MB
/// interpreter plugin on a busy 2-core machine takes minutes. Only a node
/// that never starts waits this long.
pub const START_TIMEOUT: Duration = Duration::from_secs(600);

/// How to start nodes: which binary, with which cache and state dirs.
#[derive(Debug, Clone)]
pub struct Launcher {
    /// The `iicp-host` binary.
    pub binary: PathBuf,
    /// Compiled-artifact cache shared by the nodes (passed unless the
    /// caller passes `--cache-dir` or `--no-cache`).
    pub cache_dir: PathBuf,
    /// Parent of the fresh state directory each node gets (unless the
    /// caller passes `--state-dir`).
    pub state_root: PathBuf,
}

impl Launcher {
    /// Starts `iicp-host run --plugin <plugin> <extra>` on a free port.
    pub fn start(&self, plugin: &Path, extra: &[&str]) -> Node {
        self.run(
            &["--plugin", &plugin.display().to_string()],
            extra,
            "info",
            &[],
        )
    }

    /// Starts `iicp-host run --config <file> <extra>` with extra environment.
    pub fn start_config(&self, config: &Path, extra: &[&str], env: &[(&str, &str)]) -> Node {
        self.run(
            &["--config", &config.display().to_string()],
            extra,
            "info",
            env,
        )
    }

    /// Starts `iicp-host run <source> <extra>` with `RUST_LOG=filter`.
    pub fn run(&self, source: &[&str], extra: &[&str], filter: &str, env: &[(&str, &str)]) -> Node {
        let mut args: Vec<String> = vec!["run".into()];
        args.extend(source.iter().map(|s| s.to_string()));
        args.extend(["--listen", "127.0.0.1:0", "--log-format", "json"].map(String::from));
        if !extra
            .iter()
            .any(|a| *a == "--no-cache" || *a == "--cache-dir")
        {
            args.push("--cache-dir".into());
            args.push(self.cache_dir.display().to_string());
        }
        if !extra.contains(&"--state-dir") {
            args.push("--state-dir".into());
            args.push(self.fresh_state_dir().display().to_string());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut command = Command::new(&self.binary);
        command.args(&args).envs(env.iter().copied());
        Node::spawn_command(&mut command, filter)
    }

    /// Starts `iicp-host run <source> <extra>` listening on `listen` with
    /// the state directory `state_dir`: a node that can be killed and
    /// started again as the same node, at the same address.
    pub fn start_at(
        &self,
        source: &[&str],
        listen: &str,
        state_dir: &Path,
        extra: &[&str],
    ) -> Node {
        let mut command = Command::new(&self.binary);
        command
            .arg("run")
            .args(source)
            .args(["--listen", listen, "--log-format", "json", "--cache-dir"])
            .arg(&self.cache_dir)
            .arg("--state-dir")
            .arg(state_dir)
            .args(extra);
        Node::spawn_command(&mut command, "info")
    }

    /// A new, empty state directory under `state_root`.
    pub fn fresh_state_dir(&self) -> PathBuf {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = self.state_root.join(format!(
            "state-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }
}

/// Collected stderr lines of a node, with a way to wait for one.
#[derive(Default)]
struct LogLines {
    lines: Mutex<Vec<String>>,
    changed: Condvar,
    /// Set once the process closed its stderr (it exited): no line will come.
    ended: AtomicBool,
}

/// A running `iicp-host` process; killed when dropped.
pub struct Node {
    child: Child,
    /// `host:port` of its public listener.
    pub addr: String,
    logs: Arc<LogLines>,
}

impl Node {
    /// Starts `command` (which must run `iicp-host run` with JSON logs) and
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
            sink.ended.store(true, Ordering::SeqCst);
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
            if now >= deadline || self.logs.ended.load(Ordering::SeqCst) {
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

    /// Stops the process where it is (SIGSTOP) or lets it go on (SIGCONT):
    /// a worker that cannot act while a case plays an impostor.
    pub fn pause(&self, paused: bool) {
        let signal = if paused { "-STOP" } else { "-CONT" };
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
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
