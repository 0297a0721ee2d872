//! Per-task sandbox cost: create a store, instantiate the plugin, call
//! `handle`, drop everything — the work `iicp-host` does for every task,
//! without HTTP. Prints p50/p90/p99/p99.9 and calls per second, for a fresh
//! instance per task (the default) and for opt-in reuse of 1000 tasks, and
//! two figures that do not depend on how busy the machine is: page faults
//! per task (the process's minor faults over the measured tasks) and the
//! p50 of store creation + instantiation alone.
//!
//! Run: `cargo bench --bench sandbox -- [PLUGIN.wasm ...] [--iterations N]
//! [--cache-dir DIR] [--keep-resident-kib N]` (defaults: the Rust echo plugin, 20000 iterations
//! after 2000 warm-up, no artifact cache; a cache directory saves the
//! compile when profiling under valgrind or perf).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use iicp_host::protocol::task::Qos;
use iicp_host::runtime::engine::{AllocatorChoice, EngineSettings};
use iicp_host::runtime::execute::TaskInput;
use iicp_host::runtime::plugin::PluginSource;
use iicp_host::runtime::{Runtime, RuntimeSettings};

const CHAT: &str = "urn:iicp:intent:llm:chat:v1";
const PAYLOAD: &str =
    r#"{"messages":[{"role":"user","content":"Hello from the sandbox benchmark"}]}"#;
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

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
            oci: Default::default(),
        },
        std::sync::Arc::new(iicp_host::metrics::Metrics::new()),
    )
    .expect("runtime");
    println!("allocator: {}", runtime.allocator().as_str());
    for path in plugins {
        for reuse in [1, 1000] {
            measure(&runtime, &path, reuse, iterations).await;
        }
    }
}

async fn measure(runtime: &Runtime, path: &std::path::Path, reuse: u32, iterations: usize) {
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
    let mut samples = Vec::with_capacity(iterations);
    let mut instantiations = Vec::with_capacity(iterations);
    let warmup = iterations / 10;
    let mut faults_before = 0;
    for i in 0..iterations + warmup {
        let input = TaskInput {
            task_id: "bench-task",
            intent: &intent,
            payload: PAYLOAD,
            timeout: Duration::from_secs(30),
            max_tokens: None,
            model: None,
            qos: Qos::Interactive,
            traceparent: TRACEPARENT.to_string(),
            tracestate: None,
            deadline: Instant::now() + Duration::from_secs(30),
        };
        if i == warmup {
            faults_before = minor_faults();
        }
        let started = Instant::now();
        let (outcome, report) = runtime.run_task(&plugin, input).await;
        let took = started.elapsed();
        outcome.expect("task succeeds");
        if i >= warmup {
            samples.push(took);
            instantiations.push(report.instantiate);
        }
    }
    // Let the last deferred teardown run, so every measured task paid its own.
    tokio::task::yield_now().await;
    let faults = minor_faults().saturating_sub(faults_before);
    instantiations.sort();
    let total: Duration = samples.iter().sum();
    samples.sort();
    println!(
        "{} ({} bytes) {}: n={} p50={:.1}us p90={:.1}us p99={:.1}us p99.9={:.1}us calls/s={:.0} faults/task={:.1} instantiate_p50={:.1}us",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
        if reuse > 1 {
            format!("reuse={reuse}")
        } else {
            "fresh instance".to_string()
        },
        samples.len(),
        micros(percentile(&samples, 0.50)),
        micros(percentile(&samples, 0.90)),
        micros(percentile(&samples, 0.99)),
        micros(percentile(&samples, 0.999)),
        samples.len() as f64 / total.as_secs_f64(),
        faults as f64 / samples.len() as f64,
        micros(percentile(&instantiations, 0.50)),
    );
}

/// The process's minor page faults so far (`/proc/self/stat` field 10).
fn minor_faults() -> u64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| {
            // Fields after the parenthesised command name, which may hold spaces.
            let rest = stat.rsplit_once(')')?.1;
            rest.split_whitespace().nth(7)?.parse().ok()
        })
        .unwrap_or(0)
}
