//! SIGTERM under load: clients keep sending tasks that take a while when the
//! node is told to stop. Every task the node had admitted must be answered
//! (200), every request that reaches it after the drain began must get the
//! protocol's refusal (503 `IICP-E024` with `Retry-After`) or find the port
//! closed, the node must deregister from its directory and exit 0, having
//! logged that it drained (nothing abandoned). Requests whose bodies are
//! still on their way when SIGTERM arrives complete during the drain and
//! must get 503 `IICP-E024` — so the refusal itself is seen every run, not
//! only a closed port.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::directory::{Behaviour, StandInDirectory};
use crate::memory::{RssSampler, rss_bytes};
use crate::node::message;
use crate::report::{CaseReport, LatencyStats};
use crate::traffic;
use crate::{Context, Scale};

/// The family's name in reports.
pub const FAMILY: &str = "shutdown";

/// The versioned plugin's intent: it sleeps `payload.ms`, then answers.
const SLEEPY_INTENT: &str = "urn:iicp:intent:test:versioned:v1";
/// Slots of the node.
const SLOTS: usize = 8;
/// Requests whose body is half sent when SIGTERM arrives.
const MID_REQUEST: usize = 4;

/// How one request ended.
#[derive(Debug, Default)]
struct Outcomes {
    answered: u64,
    refused_draining: u64,
    over_capacity: u64,
    port_closed: u64,
    /// Sent on an open connection, closed without an answer.
    dropped: u64,
    /// An HTTP answer other than the three above.
    wrong: u64,
    latencies: Vec<Duration>,
}

/// Runs the case.
pub async fn run(ctx: &Context, scale: Scale) -> Vec<CaseReport> {
    let clients = SLOTS * 2;
    let load_for = Duration::from_secs(scale.pick(2, 20));
    let task_ms = scale.pick(300, 1000);
    let directory = StandInDirectory::start(Behaviour::Healthy).await;
    let mut node = ctx.launcher().start(
        &ctx.plugin("versioned-v1"),
        &[
            "--max-concurrent",
            &SLOTS.to_string(),
            "--drain-timeout-ms",
            "30000",
            "--directory",
            &directory.url(),
        ],
    );
    let mut report = CaseReport::new(FAMILY, &format!("SIGTERM with {clients} clients sending"));
    let started = Instant::now();
    let registered = wait_until(Duration::from_secs(30), || directory.registered()).await;
    let before = rss_bytes(node.pid());
    let sampler = RssSampler::start(node.pid());
    // Half-sent requests, opened while the node is idle and held open
    // across the load: accepted (not waiting in the kernel's backlog, which
    // the drain closes unread) before SIGTERM arrives.
    let mut halves = Vec::new();
    for n in 0..MID_REQUEST {
        halves.push(half_sent(&node.addr, n).await);
    }
    let metrics = node.url("/metrics");
    let accepted = wait_until_async(Duration::from_secs(30), || async {
        // The scrape's own connection is open too.
        traffic::metric(&metrics, r#"iicp_connections_open{listener="public"}"#)
            .await
            .is_some_and(|open| open >= (MID_REQUEST + 1) as f64)
    })
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let url = node.url("/v1/task");
    let workers: Vec<_> = (0..clients)
        .map(|worker| {
            let (url, stop) = (url.clone(), stop.clone());
            tokio::spawn(async move {
                // A fresh connection per task: idle keep-alive connections
                // are closed by the drain, which says nothing about tasks.
                let client = reqwest::Client::builder()
                    .no_proxy()
                    .pool_max_idle_per_host(0)
                    .timeout(Duration::from_secs(60))
                    .build()
                    .expect("build client");
                let mut outcomes = Outcomes::default();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let body = traffic::task(
                        &format!("term-{worker}-{n}"),
                        SLEEPY_INTENT,
                        json!({ "ms": task_ms }),
                    );
                    let sent = Instant::now();
                    match post(&client, &url, &body).await {
                        Ok((200, _)) => {
                            outcomes.answered += 1;
                            outcomes.latencies.push(sent.elapsed());
                        }
                        Ok((503, answer)) if answer["error"]["code"] == "IICP-E024" => {
                            outcomes.refused_draining += 1;
                        }
                        Ok((429, _)) => outcomes.over_capacity += 1,
                        Ok(_) => outcomes.wrong += 1,
                        Err(Unanswered::PortClosed) => {
                            outcomes.port_closed += 1;
                            // The port is closed for good: stop this client.
                            break;
                        }
                        Err(Unanswered::Dropped) => outcomes.dropped += 1,
                    }
                }
                outcomes
            })
        })
        .collect();
    tokio::time::sleep(load_for).await;
    node.terminate();
    let draining = node
        .wait_for_log(Duration::from_secs(30), |e| {
            message(e).starts_with("shutting down")
        })
        .is_some();
    let mut mid_request_refused = 0;
    for half in halves {
        if let Some((stream, rest)) = half
            && finish_and_read(stream, &rest).await.is_some_and(|answer| {
                answer.starts_with("HTTP/1.1 503") && answer.contains("IICP-E024")
            })
        {
            mid_request_refused += 1;
        }
    }
    let exit = node.wait_exit(Duration::from_secs(60));
    stop.store(true, Ordering::Relaxed);
    let mut total = Outcomes::default();
    for worker in workers {
        if let Ok(outcomes) = worker.await {
            total.answered += outcomes.answered;
            total.refused_draining += outcomes.refused_draining;
            total.over_capacity += outcomes.over_capacity;
            total.port_closed += outcomes.port_closed;
            total.dropped += outcomes.dropped;
            total.wrong += outcomes.wrong;
            total.latencies.extend(outcomes.latencies);
        }
    }
    let series = sampler.finish();
    let drained = node.log_entries().iter().any(|e| message(e) == "drained");
    let deregistered = directory
        .received_since(started)
        .iter()
        .any(|r| r.route == "DELETE /v1/register");

    report.tries = total.answered
        + total.refused_draining
        + total.over_capacity
        + total.port_closed
        + total.dropped
        + total.wrong;
    report.failures = total.wrong + total.dropped + (MID_REQUEST - mid_request_refused) as u64;
    report.check(
        "registered before the test",
        registered,
        "with the stand-in directory",
    );
    report.check(
        "every admitted task answered: the drain finished, nothing abandoned",
        drained,
        format!(
            "{} answered 200, {} refused 429 before the drain",
            total.answered, total.over_capacity
        ),
    );
    report.check(
        "requests during the drain refused with 503 IICP-E024 or the port closed",
        total.wrong == 0 && total.dropped == 0,
        format!(
            "{} got 503 IICP-E024, {} found the port closed, {} closed without an answer, {} other answers",
            total.refused_draining, total.port_closed, total.dropped, total.wrong
        ),
    );
    report.check(
        "requests still arriving when the drain began get 503 IICP-E024",
        accepted && draining && mid_request_refused == MID_REQUEST,
        format!(
            "{mid_request_refused}/{MID_REQUEST} bodies finished after SIGTERM were refused with IICP-E024"
        ),
    );
    report.check("deregistered", deregistered, "DELETE /v1/register received");
    report.check(
        "exited 0",
        exit.is_some_and(|status| status.success()),
        format!("{exit:?}"),
    );
    report.healthy = LatencyStats::from_latencies(total.latencies, 0);
    report.record_rss(before, &series, 0);
    report.duration = started.elapsed();
    vec![report]
}

/// A task request whose head and half its body are sent: the connection
/// and the rest of the body, or `None` when the node did not take it.
async fn half_sent(addr: &str, n: usize) -> Option<(TcpStream, Vec<u8>)> {
    let body = traffic::task(&format!("mid-{n}"), SLEEPY_INTENT, json!({ "ms": 0 })).to_string();
    let head = format!(
        "POST /v1/task HTTP/1.1\r\nHost: node\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let (first, rest) = body.as_bytes().split_at(body.len() / 2);
    let mut stream = TcpStream::connect(addr).await.ok()?;
    stream.write_all(head.as_bytes()).await.ok()?;
    stream.write_all(first).await.ok()?;
    Some((stream, rest.to_vec()))
}

/// Sends the rest of a half-sent request and reads the answer to its end.
async fn finish_and_read(mut stream: TcpStream, rest: &[u8]) -> Option<String> {
    stream.write_all(rest).await.ok()?;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), async {
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&chunk[..n]),
            }
            // One answer is all this connection gets.
            if let Some(text) = std::str::from_utf8(&answer).ok()
                && let Some((head, body)) = text.split_once("\r\n\r\n")
                && let Some(length) = head.lines().find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .and_then(|v| v.trim().parse::<usize>().ok())
                })
                && body.len() >= length
            {
                break;
            }
        }
    })
    .await;
    read.ok()?;
    String::from_utf8(answer).ok()
}

/// Why a request got no HTTP answer.
enum Unanswered {
    /// The connection was refused: the node no longer listens.
    PortClosed,
    /// The request went out on a connection that then closed.
    Dropped,
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
) -> Result<(u16, serde_json::Value), Unanswered> {
    let response = client.post(url).json(body).send().await.map_err(|e| {
        if e.is_connect() {
            Unanswered::PortClosed
        } else {
            Unanswered::Dropped
        }
    })?;
    let status = response.status().as_u16();
    let text = response.text().await.map_err(|_| Unanswered::Dropped)?;
    Ok((status, serde_json::from_str(&text).unwrap_or_default()))
}

/// Polls the async `condition` every 50 ms until it holds or `limit` passes.
async fn wait_until_async<F, Fut>(limit: Duration, condition: F) -> bool
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if condition().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    condition().await
}

/// Polls `condition` every 50 ms until it holds or `limit` passes.
async fn wait_until(limit: Duration, condition: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    condition()
}
