//! A closed-loop HTTP/1.1 load generator: `concurrency` keep-alive
//! connections, each sending the next request as soon as the previous
//! response arrived. Bounded by a measuring window and a request cap; the
//! warm-up is excluded from the figures.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What each request carries besides the chat task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// The chat task only.
    Plain,
    /// Plus a unique `nonce`.
    Nonce,
    /// Plus a unique W3C `traceparent` header.
    Trace,
}

/// One load run.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub addr: SocketAddr,
    /// The request path, e.g. `/v1/task` or a relay's `/v1/relay-for/ID/v1/task`.
    pub path: String,
    pub concurrency: usize,
    pub warmup: Duration,
    pub measure: Duration,
    pub max_requests: u64,
    pub variant: Variant,
}

/// What a load run measured.
#[derive(Debug, Clone, Default)]
pub struct LoadResult {
    pub requests: u64,
    pub errors: u64,
    /// Measured responses by HTTP status.
    pub statuses: BTreeMap<u16, u64>,
    pub elapsed: Duration,
    /// Sorted latencies of measured requests, in microseconds.
    pub latencies_us: Vec<u32>,
    /// p50, p99 and p99.9 in microseconds, when a load generator reported
    /// only those (wrk) instead of every latency.
    pub quantiles_us: Option<[u32; 3]>,
}

impl LoadResult {
    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Latency at quantile `q` (0..=1) in milliseconds.
    pub fn latency_ms(&self, q: f64) -> f64 {
        if let Some([p50, p99, p999]) = self.quantiles_us {
            let us = match q {
                q if q <= 0.5 => p50,
                q if q <= 0.99 => p99,
                _ => p999,
            };
            return f64::from(us) / 1000.0;
        }
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let index = ((self.latencies_us.len() - 1) as f64 * q).round() as usize;
        f64::from(self.latencies_us[index]) / 1000.0
    }
}

struct Window {
    start: Instant,
    end: Instant,
    measured: AtomicU64,
    max_requests: u64,
}

/// Nonces stay unique across runs against the same server.
static NONCE_SEQUENCE: AtomicU64 = AtomicU64::new(0);
/// Read once: `std::process::id` is a system call on every use, and only
/// the nonce variant would pay it.
static PROCESS_ID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

fn request_bytes(variant: Variant, path: &str, connection: usize, sequence: u64) -> Vec<u8> {
    let mut body = format!(
        r#"{{"task_id":"bench-{connection}-{sequence}","intent":"urn:iicp:intent:llm:chat:v1","constraints":{{"timeout_ms":10000,"qos":"batch"}},"payload":{{"messages":[{{"role":"user","content":"Hello from the benchmark, please echo this back"}}]}}"#
    );
    if variant == Variant::Nonce {
        let nonce = NONCE_SEQUENCE.fetch_add(1, Ordering::Relaxed);
        body.push_str(&format!(
            r#","nonce":"bench-{}-{nonce}""#,
            PROCESS_ID.get_or_init(std::process::id)
        ));
    }
    body.push('}');
    let trace = if variant == Variant::Trace {
        format!(
            "traceparent: 00-{:016x}{:016x}-{:016x}-01\r\n",
            connection + 1,
            sequence + 1,
            sequence + 7
        )
    } else {
        String::new()
    };
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{trace}\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body.as_bytes());
    request
}

/// Reads one response; returns its status code.
async fn read_response(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> std::io::Result<u16> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    loop {
        if let Some(header_end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head =
                std::str::from_utf8(&buffer[..header_end]).map_err(|_| bad("non-UTF-8 head"))?;
            let status: u16 = head
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| bad("no status"))?;
            let length: usize = head
                .lines()
                .find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())?
                })
                .ok_or_else(|| bad("no content-length"))?;
            let total = header_end + 4 + length;
            while buffer.len() < total {
                read_more(stream, buffer).await?;
            }
            buffer.drain(..total);
            return Ok(status);
        }
        read_more(stream, buffer).await?;
    }
}

async fn read_more(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> std::io::Result<()> {
    let mut chunk = [0u8; 16384];
    let read = stream.read(&mut chunk).await?;
    if read == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    buffer.extend_from_slice(&chunk[..read]);
    Ok(())
}

async fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

async fn connection(
    spec: Arc<LoadSpec>,
    window: Arc<Window>,
    id: usize,
) -> (Vec<u32>, u64, BTreeMap<u16, u64>) {
    let mut latencies = Vec::with_capacity(4096);
    let mut errors = 0u64;
    let mut statuses = BTreeMap::new();
    let mut buffer = Vec::with_capacity(16384);
    let mut stream = None;
    let mut sequence = 0u64;
    loop {
        let now = Instant::now();
        if now >= window.end || window.measured.load(Ordering::Relaxed) >= window.max_requests {
            break;
        }
        let request = request_bytes(spec.variant, &spec.path, id, sequence);
        sequence += 1;
        if stream.is_none() {
            match connect(spec.addr).await {
                Ok(s) => stream = Some(s),
                Err(_) => {
                    errors += u64::from(now >= window.start);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let Some(s) = stream.as_mut() else { continue };
        let started = Instant::now();
        let outcome = match s.write_all(&request).await {
            Ok(()) => read_response(s, &mut buffer).await,
            Err(e) => Err(e),
        };
        let took = started.elapsed();
        if started < window.start {
            if outcome.is_err() {
                stream = None;
                buffer.clear();
            }
            continue;
        }
        window.measured.fetch_add(1, Ordering::Relaxed);
        if let Ok(status) = outcome {
            *statuses.entry(status).or_insert(0) += 1;
        }
        match outcome {
            Ok(200) => latencies.push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX)),
            Ok(_) => {
                errors += 1;
                latencies.push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX));
            }
            Err(_) => {
                errors += 1;
                stream = None;
                buffer.clear();
            }
        }
    }
    (latencies, errors, statuses)
}

/// Runs one load and returns its figures.
pub async fn run(spec: LoadSpec) -> LoadResult {
    let start = Instant::now() + spec.warmup;
    let window = Arc::new(Window {
        start,
        end: start + spec.measure,
        measured: AtomicU64::new(0),
        max_requests: spec.max_requests,
    });
    let spec = Arc::new(spec);
    let tasks: Vec<_> = (0..spec.concurrency)
        .map(|id| tokio::spawn(connection(spec.clone(), window.clone(), id)))
        .collect();
    let mut result = LoadResult::default();
    for task in tasks {
        if let Ok((latencies, errors, statuses)) = task.await {
            result.errors += errors;
            result.latencies_us.extend(latencies);
            for (status, count) in statuses {
                *result.statuses.entry(status).or_insert(0) += count;
            }
        }
    }
    let finished = Instant::now().min(window.end);
    result.elapsed = finished.saturating_duration_since(window.start);
    result.requests = window.measured.load(Ordering::Relaxed);
    result.latencies_us.sort_unstable();
    result
}
