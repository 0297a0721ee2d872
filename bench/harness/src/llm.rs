//! `iicp-bench llm`: the LLM-gateway workload — tasks whose handler waits
//! on a model backend, thousands at a time.
//!
//! A mock OpenAI-compatible backend (`bench/mock-llm`, a fixed latency per
//! completion) serves both nodes: iicp-host running `plugins/openai-chat`
//! with a fresh instance per task, and the native reference node with a
//! handler that makes the same backend call through one shared client.
//! Per backend latency and concurrency (closed loop, one keep-alive
//! connection per consumer), each node is started fresh and measured
//! alternately; printed per point: completed tasks/s, p50 and p99 above the
//! backend's latency, the node's CPU per task, its RSS growth per task in
//! flight ((peak − idle) ÷ concurrency) and the backend connections it
//! opened per task (1.0: no reuse). Last line:
//! `llm_throughput_ratio=<min host/native> llm_p99_overhead_ms=<max host p99 − latency>`.
//! With `--report PAGE` the figures go to a results file
//! (`results/llm-<date>-<time>.json` beside the page's directory, see
//! [`crate::llm_results`]) and the page is drawn from it.
//!
//! Usage: `iicp-bench llm --host BIN --plugin OPENAI_CHAT.wasm --native BIN
//!         --mock BIN [--quick] [--latency-ms 200,2000] [--concurrency 1,64,512,2000]
//!         [--report FILE] [-- HOST_FLAGS…]`

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::llm_results::{LlmResults, PointFigures};
use crate::load::{self, LoadResult, LoadSpec, Variant};
use crate::process::{self, Server, ServerKind};
use crate::results::Run;
use crate::usage_error;

/// Writes `page` from the results file at `results_file` (read back, so
/// the page shows what the file holds).
pub fn publish(results_file: &Path, page: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(results_file)
        .map_err(|e| format!("{}: {e}", results_file.display()))?;
    let stored: LlmResults =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", results_file.display()))?;
    let dir = page.parent().unwrap_or(Path::new("."));
    std::fs::write(page, stored.markdown(&crate::pathdiff(results_file, dir)))
        .map_err(|e| format!("{}: {e}", page.display()))?;
    println!("page written to {}", page.display());
    Ok(())
}

/// The model the backend serves and both nodes advertise.
pub const MODEL: &str = "bench-llm";
const LATENCIES_MS: [u64; 2] = [200, 2000];
const CONCURRENCY: [usize; 4] = [1, 64, 512, 2000];
/// Tasks one node runs at once beyond the highest concurrency, so the gate
/// never refuses a consumer (the start-up probe takes one more).
const GATE_HEADROOM: u32 = 64;
/// The plugin's per-task limits, sized to what an LLM call needs so that
/// the node's worst case at 2,000+ tasks fits this machine without
/// `memory_overcommit` (the defaults, 128 MiB of linear memory and 8 MiB
/// of host memory per task, are for any plugin): linear memory (the
/// openai-chat component starts at ~1.1 MiB), host memory, one backend
/// request at a time, a 256 KiB completion at most.
const PLUGIN_LIMITS: &str =
    "memory_mb = 2\nhost_memory_kib = 1024\nmax_resources = 256\nmax_output_kib = 256\n";
const PLUGIN_HTTP_LIMITS: &str = "max_in_flight = 1\nmax_response_kib = 256\n";
/// Tasks one point may complete: bounded in count as in time (the most a
/// point could complete with a backend answering at once, at any
/// concurrency here).
const MAX_TASKS: u64 = 2_000_000;
/// Kept backend connections: one per task in flight, as the native node's
/// client keeps (reqwest's default keeps every one).
const PLUGIN_IDLE_CONNECTIONS: u32 = 4096;

struct Options {
    host: PathBuf,
    plugin: PathBuf,
    native: PathBuf,
    mock: PathBuf,
    quick: bool,
    latencies_ms: Vec<u64>,
    concurrencies: Vec<usize>,
    report: Option<PathBuf>,
    host_flags: Vec<String>,
}

fn list<T: std::str::FromStr>(text: &str, what: &str) -> Vec<T> {
    text.split(',')
        .map(|n| {
            n.trim()
                .parse()
                .unwrap_or_else(|_| usage_error(&format!("llm: {what} takes numbers, a,b,c")))
        })
        .collect()
}

fn parse(mut args: impl Iterator<Item = String>) -> Options {
    let mut options = Options {
        host: PathBuf::new(),
        plugin: PathBuf::new(),
        native: PathBuf::new(),
        mock: PathBuf::new(),
        quick: false,
        latencies_ms: LATENCIES_MS.to_vec(),
        concurrencies: CONCURRENCY.to_vec(),
        report: None,
        host_flags: Vec::new(),
    };
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .unwrap_or_else(|| usage_error(&format!("llm: {arg} needs a value")))
        };
        match arg.as_str() {
            "--host" => options.host = value().into(),
            "--plugin" => options.plugin = value().into(),
            "--native" => options.native = value().into(),
            "--mock" => options.mock = value().into(),
            "--report" => options.report = Some(value().into()),
            "--latency-ms" => options.latencies_ms = list(&value(), "--latency-ms"),
            "--concurrency" => options.concurrencies = list(&value(), "--concurrency"),
            "--quick" => options.quick = true,
            "--" => options.host_flags.extend(args.by_ref()),
            other => usage_error(&format!("llm: unknown argument {other}")),
        }
    }
    if crate::any_missing(&[
        &options.host,
        &options.plugin,
        &options.native,
        &options.mock,
    ]) {
        usage_error("llm needs --host, --plugin, --native and --mock");
    }
    options
}

/// One node at one latency and concurrency.
struct Point {
    node: &'static str,
    latency_ms: u64,
    concurrency: usize,
    result: LoadResult,
    cpu_us_per_task: f64,
    idle_rss_kib: u64,
    peak_rss_kib: u64,
    backend_connections_per_task: f64,
}

impl Point {
    fn completed_per_second(&self) -> f64 {
        self.result.requests.saturating_sub(self.result.errors) as f64
            / self.result.elapsed.as_secs_f64().max(1e-9)
    }

    fn overhead_ms(&self, q: f64) -> f64 {
        self.result.latency_ms(q) - self.latency_ms as f64
    }

    fn rss_per_task_kib(&self) -> f64 {
        self.peak_rss_kib.saturating_sub(self.idle_rss_kib) as f64 / self.concurrency as f64
    }

    fn line(&self) -> String {
        let statuses: Vec<String> = self
            .result
            .statuses
            .iter()
            .filter(|(status, _)| **status != 200)
            .map(|(status, n)| format!("{status}×{n}"))
            .collect();
        format!(
            "{:<9} latency={:>4} ms c={:<4} {:>8.1} tasks/s  p50=+{:>7.2} ms  p99=+{:>7.2} ms  cpu/task={:>6.1} us  rss/in-flight={:>6.1} KiB (idle {} MiB, peak {} MiB)  backend conns/task={:.3}  tasks={} errors={}{}",
            self.node,
            self.latency_ms,
            self.concurrency,
            self.completed_per_second(),
            self.overhead_ms(0.50),
            self.overhead_ms(0.99),
            self.cpu_us_per_task,
            self.rss_per_task_kib(),
            self.idle_rss_kib / 1024,
            self.peak_rss_kib / 1024,
            self.backend_connections_per_task,
            self.result.requests,
            self.result.errors,
            if statuses.is_empty() {
                String::new()
            } else {
                format!(" ({})", statuses.join(" "))
            }
        )
    }
}

/// The mock backend's `connections=… requests=…` counters.
async fn backend_counters(backend: SocketAddr) -> (u64, u64) {
    let text = process::http_get(backend, "/stats")
        .await
        .unwrap_or_default();
    let field = |name: &str| {
        text.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
            .unwrap_or(0)
    };
    (field("connections"), field("requests"))
}

fn host_config(dir: &Path, plugin: &Path, backend: &Server, max_concurrent: u32) -> PathBuf {
    let config = dir.join("llm.toml");
    let plugin = std::fs::canonicalize(plugin).unwrap_or_else(|_| plugin.to_path_buf());
    let text = format!(
        "[node]\nmax_concurrent = {max_concurrent}\nmax_connections = {max_concurrent}\n\
         max_body_bytes = 262144\n\n\
         [[plugin]]\nid = \"llm\"\npath = \"{plugin}\"\n{PLUGIN_LIMITS}\
         [plugin.config]\nbase_url = \"http://{addr}\"\nmodel = \"{MODEL}\"\n\
         [plugin.http]\nallow = [\"http://{addr}\"]\n{PLUGIN_HTTP_LIMITS}\
         max_idle_connections = {PLUGIN_IDLE_CONNECTIONS}\n",
        plugin = plugin.display(),
        addr = backend.addr,
    );
    std::fs::write(&config, text).expect("write the LLM case's configuration");
    config
}

/// Measures one node at one point on a freshly started process.
async fn measure(
    node: &'static str,
    kind: &ServerKind,
    backend: &Server,
    latency_ms: u64,
    concurrency: usize,
    quick: bool,
    max_concurrent: u32,
) -> Option<Point> {
    let server = Server::spawn(kind, max_concurrent);
    if server
        .wait_first_success(Instant::now(), Duration::from_secs(120))
        .await
        .is_none()
    {
        println!("{node}: did not start: {}", server.stderr_tail(5));
        return None;
    }
    let pid = server.pid();
    let latency = Duration::from_millis(latency_ms);
    // Long enough for every consumer to be past its first connection and
    // first task (the accept backlog may delay some by a SYN retry, 1 s).
    let warmup = latency * 2 + Duration::from_millis(if quick { 1000 } else { 1500 });
    let measure = if quick {
        (latency * 3).max(Duration::from_secs(3))
    } else {
        (latency * 5).max(Duration::from_secs(6))
    };
    let idle_rss_kib = process::rss_kib(pid);
    process::reset_peak_rss(pid);
    let measuring = {
        let backend_addr = backend.addr;
        tokio::spawn(async move {
            tokio::time::sleep(warmup).await;
            let stats = backend_counters(backend_addr).await;
            (process::cpu_seconds(pid), stats)
        })
    };
    let result = load::run(LoadSpec {
        addr: server.addr,
        path: "/v1/task".into(),
        concurrency,
        warmup,
        measure,
        max_requests: MAX_TASKS,
        variant: Variant::Plain,
    })
    .await;
    let (cpu_at_start, (connections_at_start, completions_at_start)) =
        measuring.await.unwrap_or_default();
    let cpu = process::cpu_seconds(pid) - cpu_at_start;
    let (connections, completions) = backend_counters(backend.addr).await;
    let completed = result.requests.saturating_sub(result.errors).max(1) as f64;
    let backend_tasks = completions.saturating_sub(completions_at_start).max(1) as f64;
    Some(Point {
        node,
        latency_ms,
        concurrency,
        cpu_us_per_task: cpu * 1e6 / completed,
        idle_rss_kib,
        peak_rss_kib: process::peak_rss_kib(pid),
        backend_connections_per_task: connections.saturating_sub(connections_at_start) as f64
            / backend_tasks,
        result,
    })
}

/// Runs the LLM-gateway case.
pub async fn run(args: impl Iterator<Item = String>) {
    let options = parse(args);
    let rounds = if options.quick { 1 } else { 2 };
    let max_concurrent =
        options.concurrencies.iter().max().copied().unwrap_or(1) as u32 + GATE_HEADROOM;
    let started_at = iicp_run_info::now_utc();
    let dir = process::fresh_dir("llm");
    let cache_dir = dir.join("cache");
    std::fs::create_dir_all(&cache_dir).expect("create the LLM case's cache directory");
    let mut best: Vec<Point> = Vec::new();
    println!(
        "LLM gateway: openai-chat (fresh instance per task) vs the native handler, mock backend, best of {rounds} round(s)"
    );
    for &latency_ms in &options.latencies_ms {
        let backend = Server::spawn(
            &ServerKind::MockLlm {
                binary: options.mock.clone(),
                latency_ms,
            },
            0,
        );
        assert!(
            backend.wait_listening(Duration::from_secs(30)).await,
            "the mock backend did not start: {}",
            backend.stderr_tail(5)
        );
        let backend_url = format!("http://{}", backend.addr);
        let host = ServerKind::HostFile {
            binary: options.host.clone(),
            config: host_config(&dir, &options.plugin, &backend, max_concurrent),
            cache_dir: cache_dir.clone(),
            extra: options.host_flags.clone(),
        };
        let native = ServerKind::NativeGateway {
            binary: options.native.clone(),
            backend: backend_url,
        };
        for &concurrency in &options.concurrencies {
            for round in 0..rounds {
                let mut order = [("native", &native), ("iicp-host", &host)];
                if round % 2 == 1 {
                    order.reverse();
                }
                for (name, kind) in order {
                    let Some(point) = measure(
                        name,
                        kind,
                        &backend,
                        latency_ms,
                        concurrency,
                        options.quick,
                        max_concurrent,
                    )
                    .await
                    else {
                        continue;
                    };
                    println!("{}   (round {})", point.line(), round + 1);
                    match best.iter_mut().find(|p| {
                        p.node == name && p.latency_ms == latency_ms && p.concurrency == concurrency
                    }) {
                        Some(kept)
                            if kept.completed_per_second() >= point.completed_per_second() => {}
                        Some(kept) => *kept = point,
                        None => best.push(point),
                    }
                }
            }
        }
    }
    let results = results(&options, rounds, started_at, &best);
    if let Some(report) = &options.report {
        let file = crate::results_path(report, "llm", &results.run.date);
        crate::write_results(&results, &file).expect("write the LLM case's results file");
        println!("\nresults written to {}", file.display());
        publish(&file, report).expect("write the LLM case's page");
    }
    process::remove_dir(&dir);
    println!("\n{}", results.summary_line());
}

/// The best points as a results file (ratios and summary included).
fn results(options: &Options, rounds: usize, started_at: String, best: &[Point]) -> LlmResults {
    let run = Run {
        tool: format!("bench/llm{}", if options.quick { " --quick" } else { "" }),
        date: started_at,
        commit: iicp_run_info::commit(),
        machine: iicp_run_info::machine(),
        rounds,
        max_requests: MAX_TASKS,
        ..Run::default()
    };
    let points: Vec<PointFigures> = best
        .iter()
        .map(|point| PointFigures {
            node: point.node.to_string(),
            latency_ms: point.latency_ms,
            concurrency: point.concurrency,
            values: [
                point.completed_per_second(),
                point.overhead_ms(0.50),
                point.overhead_ms(0.99),
                point.cpu_us_per_task,
                point.rss_per_task_kib(),
                point.backend_connections_per_task,
                point.result.errors as f64,
                point.result.requests as f64,
            ],
        })
        .collect();
    LlmResults::new(run, &points)
}
