//! `iicp-bench relay --host BIN --plugin ECHO.wasm [--quick]`: what serving
//! through a relay costs, against the direct path, on loopback.
//!
//! Three iicp-host processes: a direct node, a relay (`--relay-capable`)
//! and a worker bound to it (`--relay`). The same closed-loop load goes to
//! the direct node's `/v1/task` and to the relay's
//! `/v1/relay-for/<worker>/v1/task`, at concurrency 1, 16 and 64, in
//! alternating order over several rounds; each point keeps its best round
//! by throughput. Printed per point: requests/s, p50, p99, and the relayed /
//! direct ratios plus the added p50/p99 in ms. The relayed path pays two
//! extra HTTP hops (consumer → relay, relay → worker by long poll, worker →
//! relay with the answer) and two processes share the cores the direct node
//! has to itself, so this is the whole cost on one machine. Then a fixed
//! number of tasks at c=16 each way gives the CPU time per task the serving
//! processes spent (direct node; relay + worker), from `/proc/PID/stat`:
//! a figure a busy machine moves much less than latency. Last line:
//! `relay_p50_ratio=<max over points> relay_p99_ratio=<max over points>`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::load::{self, LoadResult, LoadSpec, Variant};
use crate::process::{self, Server, ServerKind};
use crate::usage_error;

const CONCURRENCY: [usize; 3] = [1, 16, 64];
const MAX_CONCURRENT: u32 = 256;
const WORKER_ID: &str = "bench-worker";

struct Point {
    relayed: bool,
    concurrency: usize,
    result: LoadResult,
}

fn line(name: &str, concurrency: usize, result: &LoadResult) -> String {
    format!(
        "{name:<8} c={concurrency:<3} {:>8.0} req/s  p50={:>7.3} ms  p99={:>7.3} ms  requests={} errors={}",
        result.rps(),
        result.latency_ms(0.50),
        result.latency_ms(0.99),
        result.requests,
        result.errors
    )
}

/// Runs the relay benchmark.
pub async fn run(mut args: impl Iterator<Item = String>) {
    let (mut host, mut plugin, mut quick) = (PathBuf::new(), PathBuf::new(), false);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--host" => host = args.next().map(PathBuf::from).unwrap_or_default(),
            "--plugin" => plugin = args.next().map(PathBuf::from).unwrap_or_default(),
            "--quick" => quick = true,
            other => usage_error(&format!("relay: unknown argument {other}")),
        }
    }
    if host.as_os_str().is_empty() || plugin.as_os_str().is_empty() {
        usage_error("relay needs --host and --plugin");
    }
    let (rounds, warmup, measure, cpu_tasks) = if quick {
        (2, Duration::from_millis(500), Duration::from_secs(2), 5_000)
    } else {
        (3, Duration::from_secs(1), Duration::from_secs(6), 20_000)
    };
    let cache_dir = process::fresh_dir("relay-cache");
    let node = |extra: Vec<String>| ServerKind::Host {
        binary: host.clone(),
        plugin: plugin.clone(),
        cache_dir: cache_dir.clone(),
        extra,
    };
    let direct = Server::spawn(&node(vec![]), MAX_CONCURRENT);
    direct
        .wait_first_success(Instant::now(), Duration::from_secs(120))
        .await
        .expect("the direct node did not start");
    let relay = Server::spawn(&node(vec!["--relay-capable".into()]), MAX_CONCURRENT);
    let worker_args = vec![
        "--relay".into(),
        format!("http://{}", relay.addr),
        "--node-id".into(),
        WORKER_ID.into(),
    ];
    let worker = Server::spawn(&node(worker_args), MAX_CONCURRENT);
    let relayed_path = format!("/v1/relay-for/{WORKER_ID}/v1/task");
    relay
        .wait_first_success_on(&relayed_path, Instant::now(), Duration::from_secs(120))
        .await
        .expect("the worker did not serve through the relay");

    println!("relay overhead on loopback: direct node vs relay + worker, best of {rounds} rounds");
    let mut best: Vec<Point> = Vec::new();
    for concurrency in CONCURRENCY {
        for round in 0..rounds {
            let mut order = [(false, &direct), (true, &relay)];
            if round % 2 == 1 {
                order.reverse();
            }
            for (relayed, server) in order {
                let path = if relayed { &relayed_path } else { "/v1/task" };
                let result = load::run(LoadSpec {
                    addr: server.addr,
                    path: path.to_string(),
                    concurrency,
                    warmup,
                    measure,
                    max_requests: u64::MAX,
                    variant: Variant::Plain,
                })
                .await;
                let name = if relayed { "relayed" } else { "direct" };
                println!(
                    "{}   (round {})",
                    line(name, concurrency, &result),
                    round + 1
                );
                match best
                    .iter_mut()
                    .find(|p| p.relayed == relayed && p.concurrency == concurrency)
                {
                    Some(kept) if kept.result.rps() >= result.rps() => {}
                    Some(kept) => kept.result = result,
                    None => best.push(Point {
                        relayed,
                        concurrency,
                        result,
                    }),
                }
            }
        }
    }
    println!("\nbest per point, relayed against direct:");
    let (mut worst_p50, mut worst_p99) = (0.0f64, 0.0f64);
    for concurrency in CONCURRENCY {
        let pick = |relayed: bool| {
            best.iter()
                .find(|p| p.relayed == relayed && p.concurrency == concurrency)
                .map(|p| &p.result)
                .expect("measured")
        };
        let (d, r) = (pick(false), pick(true));
        let p50 = r.latency_ms(0.50) / d.latency_ms(0.50);
        let p99 = r.latency_ms(0.99) / d.latency_ms(0.99);
        worst_p50 = worst_p50.max(p50);
        worst_p99 = worst_p99.max(p99);
        println!("{}", line("direct", concurrency, d));
        println!("{}", line("relayed", concurrency, r));
        println!(
            "c={concurrency:<3} relayed/direct: p50 x{p50:.2} (+{:.3} ms), p99 x{p99:.2} (+{:.3} ms), throughput x{:.2}",
            r.latency_ms(0.50) - d.latency_ms(0.50),
            r.latency_ms(0.99) - d.latency_ms(0.99),
            r.rps() / d.rps()
        );
    }
    println!("\nCPU per task at c=16, {cpu_tasks} tasks each way (user + system time of the serving processes):");
    let direct_cpu = cpu_per_task(&[&direct], "/v1/task", &direct, cpu_tasks).await;
    let relayed_cpu = cpu_per_task(&[&relay, &worker], &relayed_path, &relay, cpu_tasks).await;
    println!("direct   {:>7.1} us (the node)", direct_cpu[0]);
    println!(
        "relayed  {:>7.1} us (relay {:.1} + worker {:.1}), x{:.2}",
        relayed_cpu[0] + relayed_cpu[1],
        relayed_cpu[0],
        relayed_cpu[1],
        (relayed_cpu[0] + relayed_cpu[1]) / direct_cpu[0]
    );
    drop((worker, relay, direct));
    process::remove_dir(&cache_dir);
    println!("relay_p50_ratio={worst_p50:.3} relay_p99_ratio={worst_p99:.3}");
}

/// Sends `tasks` tasks to `path` at `target` (c=16, bounded by a minute);
/// returns the CPU time per answered task each of `servers` spent, in µs.
async fn cpu_per_task(servers: &[&Server], path: &str, target: &Server, tasks: u64) -> Vec<f64> {
    let before: Vec<f64> = servers
        .iter()
        .map(|s| process::cpu_seconds(s.pid()))
        .collect();
    let result = load::run(LoadSpec {
        addr: target.addr,
        path: path.to_string(),
        concurrency: 16,
        warmup: Duration::ZERO,
        measure: Duration::from_secs(60),
        max_requests: tasks,
        variant: Variant::Plain,
    })
    .await;
    let answered = result.requests.saturating_sub(result.errors).max(1) as f64;
    servers
        .iter()
        .zip(before)
        .map(|(s, before)| (process::cpu_seconds(s.pid()) - before) * 1e6 / answered)
        .collect()
}
