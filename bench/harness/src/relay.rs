//! `iicp-bench relay --host BIN --plugin ECHO.wasm [--quick]`: what serving
//! through a relay costs, against the direct path, on loopback.
//!
//! Four iicp-host processes: a direct node, a relay (`--relay-capable`),
//! a worker bound to it by HTTP long poll (`--relay http://…`) and one
//! bound over the native IICP framing (`--relay iicp://…`, the reference
//! workers' transport). The same closed-loop load goes to the direct
//! node's `/v1/task` and to the relay's `/v1/relay-for/<worker>/v1/task`
//! for each worker, at concurrency 1, 16 and 64, in rotating order over
//! several rounds; each point keeps its best round by throughput. Printed
//! per point: requests/s, p50, p99, and each relayed path's ratios to the
//! direct one plus the added p50/p99 in ms. A relayed path pays extra hops
//! (consumer → relay, relay → worker by long poll or CALL frame, worker →
//! relay with the answer) and three processes share the cores the direct
//! node has to itself, so this is the whole cost on one machine. Then a
//! fixed number of tasks at c=16 each way gives the CPU time per task the
//! serving processes spent (direct node; relay + worker), from
//! `/proc/PID/stat`: a figure a busy machine moves much less than latency.
//! Last line: `relay_p50_ratio=<max over points> relay_p99_ratio=<max>`
//! (long poll) `framed_p50_ratio=<max> framed_p99_ratio=<max>`.
//! With `--results DIR` every figure also goes to a results file,
//! `DIR/relay-<date>-<time>.json` (machine, date, commit; keys
//! `relay/<path>/<c>/<req_per_s|p50_ms|p99_ms|requests|errors>`,
//! `relay/<path>/<c>/<throughput|p50|p99>_vs_direct`,
//! `relay/<path>/<p50|p99>_added_ms/<c>`, `relay/<path>/cpu_us_per_task`
//! with its `relay/<path>/cpu_<relay|worker>_us` parts and
//! `relay/<path>/cpu_vs_direct`; the framed path against long poll:
//! `relay/framed/<c>/throughput_vs_longpoll`, `relay/framed/cpu_vs_longpoll`),
//! which docs/reach.md quotes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::load::{self, LoadResult, LoadSpec, Variant};
use crate::process::{self, Server, ServerKind};
use crate::results::Run;
use crate::usage_error;

/// A relay run's results file.
#[derive(Serialize)]
struct RelayResults {
    run: Run,
    figures: BTreeMap<String, f64>,
}

const CONCURRENCY: [usize; 3] = [1, 16, 64];
const MAX_CONCURRENT: u32 = 256;
const WORKER_ID: &str = "bench-worker";
const FRAMED_WORKER_ID: &str = "bench-worker-framed";
/// The paths measured, by name.
const PATHS: [&str; 3] = ["direct", "longpoll", "framed"];

struct Point {
    path: usize,
    concurrency: usize,
    result: LoadResult,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
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
    let mut results_dir: Option<PathBuf> = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--host" => host = args.next().map(PathBuf::from).unwrap_or_default(),
            "--plugin" => plugin = args.next().map(PathBuf::from).unwrap_or_default(),
            "--results" => results_dir = args.next().map(PathBuf::from),
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
    let run = Run {
        tool: format!("bench/relay{}", if quick { " --quick" } else { "" }),
        date: iicp_run_info::now_utc(),
        commit: iicp_run_info::commit(),
        machine: iicp_run_info::machine(),
        rounds,
        warmup_s: warmup.as_secs_f64(),
        measure_s: measure.as_secs_f64(),
        max_requests: cpu_tasks,
        imported_from: None,
    };
    let mut figures = BTreeMap::new();
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
    let accept_port = free_port();
    let relay_args = vec![
        "--relay-capable".into(),
        "--relay-accept-port".into(),
        accept_port.to_string(),
    ];
    let relay = Server::spawn(&node(relay_args), MAX_CONCURRENT);
    let worker_args =
        |url: String, id: &str| vec!["--relay".into(), url, "--node-id".into(), id.into()];
    let worker = Server::spawn(
        &node(worker_args(format!("http://{}", relay.addr), WORKER_ID)),
        MAX_CONCURRENT,
    );
    let framed_worker = Server::spawn(
        &node(worker_args(
            format!("iicp://127.0.0.1:{accept_port}"),
            FRAMED_WORKER_ID,
        )),
        MAX_CONCURRENT,
    );
    let relayed_path = format!("/v1/relay-for/{WORKER_ID}/v1/task");
    let framed_path = format!("/v1/relay-for/{FRAMED_WORKER_ID}/v1/task");
    for path in [&relayed_path, &framed_path] {
        relay
            .wait_first_success_on(path, Instant::now(), Duration::from_secs(120))
            .await
            .expect("a worker did not serve through the relay");
    }
    let targets = [
        (&direct, "/v1/task"),
        (&relay, relayed_path.as_str()),
        (&relay, framed_path.as_str()),
    ];

    println!(
        "relay overhead on loopback: direct node vs relay + worker (long poll, framed), best of {rounds} rounds"
    );
    let mut best: Vec<Point> = Vec::new();
    for concurrency in CONCURRENCY {
        for round in 0..rounds {
            for step in 0..PATHS.len() {
                let which = (step + round) % PATHS.len();
                let (server, path) = targets[which];
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
                println!(
                    "{}   (round {})",
                    line(PATHS[which], concurrency, &result),
                    round + 1
                );
                match best
                    .iter_mut()
                    .find(|p| p.path == which && p.concurrency == concurrency)
                {
                    Some(kept) if kept.result.rps() >= result.rps() => {}
                    Some(kept) => kept.result = result,
                    None => best.push(Point {
                        path: which,
                        concurrency,
                        result,
                    }),
                }
            }
        }
    }
    println!("\nbest per point, relayed against direct:");
    let mut worst = [[0.0f64; 2]; PATHS.len()];
    for concurrency in CONCURRENCY {
        let pick = |path: usize| {
            best.iter()
                .find(|p| p.path == path && p.concurrency == concurrency)
                .map(|p| &p.result)
                .expect("measured")
        };
        let d = pick(0);
        println!("{}", line(PATHS[0], concurrency, d));
        for (path, name) in PATHS.iter().enumerate() {
            let r = pick(path);
            for (metric, value) in [
                ("req_per_s", r.rps()),
                ("p50_ms", r.latency_ms(0.50)),
                ("p99_ms", r.latency_ms(0.99)),
                ("requests", r.requests as f64),
                ("errors", r.errors as f64),
            ] {
                figures.insert(format!("relay/{name}/{concurrency}/{metric}"), value);
            }
        }
        figures.insert(
            format!("relay/framed/{concurrency}/throughput_vs_longpoll"),
            pick(2).rps() / pick(1).rps(),
        );
        for (path, worst) in worst.iter_mut().enumerate().skip(1) {
            let r = pick(path);
            let p50 = r.latency_ms(0.50) / d.latency_ms(0.50);
            let p99 = r.latency_ms(0.99) / d.latency_ms(0.99);
            let name = PATHS[path];
            for (metric, value) in [
                ("p50_vs_direct", p50),
                ("p99_vs_direct", p99),
                ("throughput_vs_direct", r.rps() / d.rps()),
                ("p50_added_ms", r.latency_ms(0.50) - d.latency_ms(0.50)),
                ("p99_added_ms", r.latency_ms(0.99) - d.latency_ms(0.99)),
            ] {
                figures.insert(format!("relay/{name}/{concurrency}/{metric}"), value);
            }
            worst[0] = worst[0].max(p50);
            worst[1] = worst[1].max(p99);
            println!("{}", line(PATHS[path], concurrency, r));
            println!(
                "c={concurrency:<3} {}/direct: p50 x{p50:.2} (+{:.3} ms), p99 x{p99:.2} (+{:.3} ms), throughput x{:.2}",
                PATHS[path],
                r.latency_ms(0.50) - d.latency_ms(0.50),
                r.latency_ms(0.99) - d.latency_ms(0.99),
                r.rps() / d.rps()
            );
        }
    }
    println!("\nCPU per task at c=16, {cpu_tasks} tasks each way (user + system time of the serving processes):");
    let direct_cpu = cpu_per_task(&[&direct], "/v1/task", &direct, cpu_tasks).await;
    println!("direct   {:>7.1} us (the node)", direct_cpu[0]);
    figures.insert("relay/direct/cpu_us_per_task".into(), direct_cpu[0]);
    for (name, worker, path) in [
        ("longpoll", &worker, &relayed_path),
        ("framed", &framed_worker, &framed_path),
    ] {
        let cpu = cpu_per_task(&[&relay, worker], path, &relay, cpu_tasks).await;
        for (metric, value) in [
            ("cpu_us_per_task", cpu[0] + cpu[1]),
            ("cpu_relay_us", cpu[0]),
            ("cpu_worker_us", cpu[1]),
            ("cpu_vs_direct", (cpu[0] + cpu[1]) / direct_cpu[0]),
        ] {
            figures.insert(format!("relay/{name}/{metric}"), value);
        }
        println!(
            "{name:<8} {:>7.1} us (relay {:.1} + worker {:.1}), x{:.2}",
            cpu[0] + cpu[1],
            cpu[0],
            cpu[1],
            (cpu[0] + cpu[1]) / direct_cpu[0]
        );
    }
    let cpu = |path: &str| figures[&format!("relay/{path}/cpu_us_per_task")];
    let framed_cpu = cpu("framed") / cpu("longpoll");
    figures.insert("relay/framed/cpu_vs_longpoll".into(), framed_cpu);
    drop((framed_worker, worker, relay, direct));
    process::remove_dir(&cache_dir);
    if let Some(dir) = results_dir {
        let file = dir.join(iicp_run_info::results_file_name("relay", &run.date));
        crate::write_results(&RelayResults { run, figures }, &file)
            .unwrap_or_else(|e| usage_error(&e));
        println!("results written to {}", file.display());
    }
    println!(
        "relay_p50_ratio={:.3} relay_p99_ratio={:.3} framed_p50_ratio={:.3} framed_p99_ratio={:.3}",
        worst[1][0], worst[1][1], worst[2][0], worst[2][1]
    );
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
