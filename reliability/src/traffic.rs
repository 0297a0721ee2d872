//! Healthy traffic: a fixed number of concurrent clients sending echo tasks
//! in a loop (bounded in count and time) while a case does something
//! hostile, recording every latency and every unexpected answer.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::report::LatencyStats;

/// The echo plugin's plain intent.
pub const ECHO_INTENT: &str = "urn:iicp:intent:util:echo:v1";

/// An HTTP client: no proxy, bounded connect and request time.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(60))
        .build()
        .expect("build client")
}

/// A task body.
pub fn task(task_id: &str, intent: &str, payload: Value) -> Value {
    json!({ "task_id": task_id, "intent": intent, "payload": payload })
}

/// Posts `body` to `url`; returns the status and the JSON body (`Null`
/// when the body is not JSON), or `None` when no answer came.
pub async fn post(client: &reqwest::Client, url: &str, body: &Value) -> Option<(u16, Value)> {
    let response = client.post(url).json(body).send().await.ok()?;
    let status = response.status().as_u16();
    let text = response.text().await.ok()?;
    Some((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

/// The value of the unlabelled metric `name` in the Prometheus text at
/// `url` (a node's `/metrics`).
pub async fn metric(url: &str, name: &str) -> Option<f64> {
    let text = client().get(url).send().await.ok()?.text().await.ok()?;
    text.lines().find_map(|line| {
        line.strip_prefix(name)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Healthy clients running in the background.
pub struct HealthyLoad {
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<(Vec<Duration>, u64)>>,
    sent: Arc<AtomicU64>,
}

impl HealthyLoad {
    /// Starts `clients` clients posting echo tasks to `url` (a node's
    /// `/v1/task`) until stopped, or until `max_requests` in total or
    /// `max_time` — whichever comes first. Only a 200 echoing the payload
    /// counts as success.
    pub fn start(url: String, clients: usize, max_requests: u64, max_time: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + max_time;
        let client = client();
        let workers = (0..clients)
            .map(|worker| {
                let (stop, sent, client, url) =
                    (stop.clone(), sent.clone(), client.clone(), url.clone());
                tokio::spawn(async move {
                    let mut latencies = Vec::new();
                    let mut failures = 0;
                    while !stop.load(Ordering::Relaxed)
                        && Instant::now() < deadline
                        && sent.fetch_add(1, Ordering::Relaxed) < max_requests
                    {
                        let n = latencies.len() as u64 + failures;
                        let payload = json!({ "worker": worker, "n": n });
                        let body = task(
                            &format!("healthy-{worker}-{n}"),
                            ECHO_INTENT,
                            payload.clone(),
                        );
                        let started = Instant::now();
                        match post(&client, &url, &body).await {
                            Some((200, answer)) if answer["result"] == payload => {
                                latencies.push(started.elapsed())
                            }
                            _ => failures += 1,
                        }
                    }
                    (latencies, failures)
                })
            })
            .collect();
        Self {
            stop,
            workers,
            sent,
        }
    }

    /// Requests started so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Stops the clients and returns what they saw.
    pub async fn finish(self) -> LatencyStats {
        self.stop.store(true, Ordering::Relaxed);
        self.join().await
    }

    /// Waits for the clients to reach their request or time bound.
    pub async fn join(self) -> LatencyStats {
        let mut latencies = Vec::new();
        let mut failures = 0;
        for worker in self.workers {
            if let Ok((mut l, f)) = worker.await {
                latencies.append(&mut l);
                failures += f;
            }
        }
        LatencyStats::from_latencies(latencies, failures)
    }
}

/// Runs `requests` healthy tasks on `clients` clients and returns their
/// latencies: the baseline a case compares against.
pub async fn baseline(url: &str, clients: usize, requests: u64) -> LatencyStats {
    HealthyLoad::start(url.to_string(), clients, requests, Duration::from_secs(120))
        .join()
        .await
}

/// Waits until the server closes `stream` (EOF or reset); returns when.
pub async fn closed_by_server(stream: &mut TcpStream, limit: Duration) -> Option<Instant> {
    let mut sink = [0u8; 256];
    tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return Instant::now(),
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
}

/// Raises this process's soft open-file limit to its hard limit, for
/// callers that open thousands of sockets.
pub fn raise_open_file_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let _ = setrlimit(
        Resource::Nofile,
        Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        },
    );
}
