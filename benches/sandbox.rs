//! Per-task sandbox cost: create a store, instantiate the plugin, call
//! `handle`, drop everything — the work `iicp-host` does for every task,
//! without HTTP. Prints p50/p90/p99/p99.9 and calls per second, for a fresh
//! instance per task (the default) and for opt-in reuse of 1000 tasks, and
//! figures that do not depend on how busy the machine is: page faults per
//! task (the process's minor faults over the measured tasks), the linear
//! memory a task peaked at, and the p50 of store creation + instantiation
//! alone. CPU time per task (the benchmark thread's, from the scheduler's
//! statistics) depends less on load than wall time, but still some.
//!
//! The plugins are measured in interleaved rounds (each round runs every
//! plugin in turn, the order alternating), so a change in machine load
//! shifts all of them alike; the last lines are each plugin's fresh-instance
//! p50 and CPU time as ratios against the first plugin's (the Rust echo in
//! `bench/run`), measured in the same run.
//!
//! Run: `cargo bench --bench sandbox -- [PLUGIN.wasm ...] [--iterations N]
//! [--cache-dir DIR] [--keep-resident-kib N] [--fresh-only]` (defaults: the
//! Rust echo plugin, 20000 iterations per plugin after 10% warm-up, no
//! artifact cache; a cache directory saves the compile when profiling under
//! valgrind or perf; `--fresh-only` skips the reuse case).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use iicp_host::protocol::task::Qos;
use iicp_host::runtime::engine::{AllocatorChoice, EngineSettings};
use iicp_host::runtime::execute::TaskInput;
use iicp_host::runtime::plugin::{LoadedPlugin, PluginSource};
use iicp_host::runtime::{Runtime, RuntimeSettings};

const CHAT: &str = "urn:iicp:intent:llm:chat:v1";
const PAYLOAD: &str =
    r#"{"messages":[{"role":"user","content":"Hello from the sandbox benchmark"}]}"#;
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
/// Interleaved rounds per case.
const ROUNDS: usize = 4;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut plugins = Vec::new();
    let mut iterations = 20_000usize;
    let mut cache_dir = None;
    let mut keep_resident_bytes = None;
    let mut reuse_cases = vec![1, 1000];
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--iterations" => {
                iterations = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("--iterations N")
            }
            "--cache-dir" => cache_dir = Some(PathBuf::from(args.next().expect("--cache-dir DIR"))),
            "--keep-resident-kib" => {
                keep_resident_bytes = args
                    .next()
                    .and_then(|n| n.parse::<usize>().ok())
                    .map(|kib| kib << 10);
                assert!(keep_resident_bytes.is_some(), "--keep-resident-kib N");
            }
            "--fresh-only" => reuse_cases = vec![1],
            "--bench" => {}
            other if other.ends_with(".wasm") => plugins.push(PathBuf::from(other)),
            _ => {}
        }
    }
    if plugins.is_empty() {
        plugins.push(PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/plugins/target/wasm32-wasip2/release/echo.wasm"
        )));
    }
    let runtime = Runtime::new(
        &RuntimeSettings {
            engine: EngineSettings {
                max_instances: 64,
                keep_resident_bytes,
                allocator: AllocatorChoice::Auto,
            },
            cache_dir,
            max_dns_lookups: iicp_host::runtime::host::dns::DEFAULT_MAX_DNS_LOOKUPS,
        },
        std::sync::Arc::new(iicp_host::metrics::Metrics::new()),
    )
    .expect("runtime");
    println!("allocator: {}", runtime.allocator().as_str());
    for &reuse in &reuse_cases {
        let mut measured = Vec::new();
        for path in &plugins {
            measured.push(Measured::load(&runtime, path, reuse).await);
        }
        let warmup = (iterations / 10).max(1);
        for plugin in &mut measured {
            plugin.run(&runtime, warmup, false).await;
        }
        for round in 0..ROUNDS {
            let per_round = iterations.div_ceil(ROUNDS);
            let order: Vec<usize> = if round % 2 == 0 {
                (0..measured.len()).collect()
            } else {
                (0..measured.len()).rev().collect()
            };
            for index in order {
                measured[index].run(&runtime, per_round, true).await;
            }
        }
        for plugin in &mut measured {
            println!("{}", plugin.line());
        }
        if let (1, Some((base, others))) = (reuse, measured.split_first_mut()) {
            for other in others {
                println!("{}", other.ratio_line(base));
            }
        }
    }
}

/// One plugin's figures in one case.
struct Measured {
    name: String,
    bytes: u64,
    reuse: u32,
    plugin: LoadedPlugin,
    intent: String,
    samples: Vec<Duration>,
    instantiations: Vec<Duration>,
    peak_memory: usize,
    faults: u64,
    cpu: Duration,
}

impl Measured {
    async fn load(runtime: &Runtime, path: &std::path::Path, reuse: u32) -> Self {
        let mut source = PluginSource::new(path.to_path_buf());
        source.limits.instance_reuse = reuse;
        let plugin = runtime.load_plugin(&source).await.expect("load plugin");
        let intent = plugin
            .info
            .capabilities
            .iter()
            .map(|c| c.intent.as_str())
            .find(|i| *i == CHAT)
            .unwrap_or(&plugin.info.capabilities[0].intent)
            .to_string();
        Self {
            name: path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
            bytes: std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
            reuse,
            plugin,
            intent,
            samples: Vec::new(),
            instantiations: Vec::new(),
            peak_memory: 0,
            faults: 0,
            cpu: Duration::ZERO,
        }
    }

    /// Runs `tasks` tasks; with `record`, adds them to the figures.
    async fn run(&mut self, runtime: &Runtime, tasks: usize, record: bool) {
        let (faults_before, cpu_before) = (minor_faults(), thread_cpu());
        for _ in 0..tasks {
            let input = TaskInput {
                task_id: "bench-task",
                intent: &self.intent,
                payload: PAYLOAD,
                timeout: Duration::from_secs(30),
                max_tokens: None,
                model: None,
                qos: Qos::Interactive,
                traceparent: TRACEPARENT.to_string(),
                tracestate: None,
                deadline: Instant::now() + Duration::from_secs(30),
            };
            let started = Instant::now();
            let (outcome, report) = runtime.run_task(&self.plugin, input).await;
            let took = started.elapsed();
            outcome.expect("task succeeds");
            if record {
                self.samples.push(took);
                self.instantiations.push(report.instantiate);
                self.peak_memory = self.peak_memory.max(report.memory_bytes);
            }
        }
        // Let the last deferred teardown run, so every task paid its own.
        tokio::task::yield_now().await;
        if record {
            self.faults += minor_faults().saturating_sub(faults_before);
            self.cpu += thread_cpu().saturating_sub(cpu_before);
        }
    }

    fn p50(&mut self) -> Duration {
        self.samples.sort();
        percentile(&self.samples, 0.50)
    }

    fn cpu_per_task(&self) -> Duration {
        self.cpu / u32::try_from(self.samples.len().max(1)).unwrap_or(u32::MAX)
    }

    fn line(&mut self) -> String {
        self.samples.sort();
        self.instantiations.sort();
        let total: Duration = self.samples.iter().sum();
        let tasks = self.samples.len() as f64;
        format!(
            "{} ({} bytes) {}: n={} p50={:.1}us p90={:.1}us p99={:.1}us p99.9={:.1}us calls/s={:.0} cpu/task={:.1}us faults/task={:.1} instantiate_p50={:.1}us peak_memory={:.1}MiB",
            self.name,
            self.bytes,
            if self.reuse > 1 {
                format!("reuse={}", self.reuse)
            } else {
                "fresh instance".to_string()
            },
            self.samples.len(),
            micros(percentile(&self.samples, 0.50)),
            micros(percentile(&self.samples, 0.90)),
            micros(percentile(&self.samples, 0.99)),
            micros(percentile(&self.samples, 0.999)),
            tasks / total.as_secs_f64(),
            micros(self.cpu_per_task()),
            self.faults as f64 / tasks,
            micros(percentile(&self.instantiations, 0.50)),
            self.peak_memory as f64 / f64::from(1 << 20),
        )
    }

    fn ratio_line(&mut self, base: &mut Measured) -> String {
        let (p50, base_p50) = (self.p50(), base.p50());
        format!(
            "ratio {} / {} (fresh instance, same run): p50 {:.1}x, cpu/task {:.1}x",
            self.name,
            base.name,
            p50.as_secs_f64() / base_p50.as_secs_f64(),
            self.cpu_per_task().as_secs_f64() / base.cpu_per_task().as_secs_f64().max(1e-9),
        )
    }
}

/// The process's minor page faults so far.
fn minor_faults() -> u64 {
    iicp_reliability::memory::minor_faults("/proc/self/stat").unwrap_or(0)
}

/// CPU time this thread has run so far (`/proc/thread-self/schedstat`, in
/// nanoseconds). The runtime is single-threaded, so it holds every task's
/// work, teardown included, and not the epoch ticker's.
fn thread_cpu() -> Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|stat| stat.split_whitespace().next()?.parse().ok())
        .map_or(Duration::ZERO, Duration::from_nanos)
}
