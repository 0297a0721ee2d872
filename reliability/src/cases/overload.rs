//! Overload: four times as many clients as the node has slots, each
//! sending tasks back to back, for a minute (seconds at the fast size).
//! Every answer must be a success or a 429 `IICP-E021` with `Retry-After`;
//! memory must stay bounded and come back; and the moment the load stops,
//! a full set of tasks (one per slot) must all be served.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::memory::{QUIET_AFTER_CONNECTIONS, RssSampler, settled_rss};
use crate::report::{CaseReport, LatencyStats};
use crate::traffic;
use crate::{Context, Scale};

/// The family's name in reports.
pub const FAMILY: &str = "overload";

/// The versioned plugin's intent: it sleeps `payload.ms`, then answers.
const SLEEPY_INTENT: &str = "urn:iicp:intent:test:versioned:v1";
/// Slots of the node.
const SLOTS: usize = 8;
/// How long each task runs.
const TASK_MS: u64 = 50;

#[derive(Default)]
struct Counts {
    ok: u64,
    over_capacity: u64,
    other: u64,
    latencies: Vec<Duration>,
}

/// Runs the case.
pub async fn run(ctx: &Context, scale: Scale) -> Vec<CaseReport> {
    let load_for = Duration::from_secs(scale.pick(5, 60));
    let clients = SLOTS * 4;
    let node = ctx.launcher().start(
        &ctx.plugin("versioned-v1"),
        &["--max-concurrent", &SLOTS.to_string()],
    );
    let mut report = CaseReport::new(
        FAMILY,
        &format!(
            "{clients} clients on {SLOTS} slots for {} s",
            load_for.as_secs()
        ),
    );
    let started = Instant::now();
    let url = node.url("/v1/task");
    let before = settled_rss(node.pid(), QUIET_AFTER_CONNECTIONS, Duration::from_secs(5));
    let sampler = RssSampler::start(node.pid());
    let stop = Arc::new(AtomicBool::new(false));
    let client = traffic::client();
    let workers: Vec<_> = (0..clients)
        .map(|worker| {
            let (url, stop, client) = (url.clone(), stop.clone(), client.clone());
            tokio::spawn(async move {
                let mut counts = Counts::default();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let mut body = traffic::task(
                        &format!("over-{worker}-{n}"),
                        SLEEPY_INTENT,
                        json!({ "ms": TASK_MS }),
                    );
                    // Batch tasks are refused at once when the node is full
                    // (interactive ones would wait for a slot first).
                    body["constraints"] = json!({ "qos": "batch" });
                    let sent = Instant::now();
                    match traffic::post(&client, &url, &body).await {
                        Some((200, _)) => {
                            counts.ok += 1;
                            counts.latencies.push(sent.elapsed());
                        }
                        Some((429, answer)) if answer["error"]["code"] == "IICP-E021" => {
                            counts.over_capacity += 1
                        }
                        _ => counts.other += 1,
                    }
                }
                counts
            })
        })
        .collect();
    tokio::time::sleep(load_for).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = Counts::default();
    for worker in workers {
        if let Ok(counts) = worker.await {
            total.ok += counts.ok;
            total.over_capacity += counts.over_capacity;
            total.other += counts.other;
            total.latencies.extend(counts.latencies);
        }
    }
    // The load has stopped: one task per slot, all at once, all served.
    let after_load: Vec<_> = (0..SLOTS)
        .map(|i| {
            let (url, client) = (url.clone(), client.clone());
            tokio::spawn(async move {
                let body = traffic::task(
                    &format!("after-{i}"),
                    SLEEPY_INTENT,
                    json!({ "ms": TASK_MS }),
                );
                traffic::post(&client, &url, &body)
                    .await
                    .map(|(status, _)| status)
            })
        })
        .collect();
    let mut served_after = 0;
    for task in after_load {
        if let Ok(Some(200)) = task.await {
            served_after += 1;
        }
    }
    let series = sampler.finish();
    let after = settled_rss(node.pid(), QUIET_AFTER_CONNECTIONS, Duration::from_secs(10));

    report.tries = total.ok + total.over_capacity + total.other;
    report.failures = total.other;
    report.check(
        "only successes and 429 IICP-E021",
        total.other == 0,
        format!(
            "{} served, {} refused 429, {} other ({:.0} tasks/s served)",
            total.ok,
            total.over_capacity,
            total.other,
            total.ok as f64 / load_for.as_secs_f64()
        ),
    );
    report.check(
        "full service the moment the load stops",
        served_after == SLOTS,
        format!("{served_after}/{SLOTS} tasks sent at once right after were served"),
    );
    report.healthy = LatencyStats::from_latencies(total.latencies, 0);
    report.record_rss(before, &series, after);
    report.check_memory(16 << 20);
    report.duration = started.elapsed();
    vec![report]
}
