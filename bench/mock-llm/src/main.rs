//! The mock model backend for `iicp-bench llm`: an OpenAI-compatible
//! `POST …/chat/completions` that reads the request to the end, waits a
//! fixed latency (a timer, no work) and answers one fixed chat completion.
//! `GET /stats` answers `connections=<accepted> requests=<completions>`, so
//! the benchmark can tell whether a node reuses its backend connections.
//!
//! It must never be the bottleneck: one tokio task per connection, the wait
//! is a timer, the answer preformatted bytes, and the listen backlog deep
//! enough for thousands of connections opened at once.
//!
//! Usage: `mock-llm LISTEN_ADDR LATENCY_MS`

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

/// Connections open at once the kernel may queue before they are accepted.
const BACKLOG: u32 = 8192;

const COMPLETION: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"bench-llm","choices":[{"index":0,"message":{"role":"assistant","content":"Hello from the mock model backend."},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":7,"total_tokens":19}}"#;

static CONNECTIONS: AtomicU64 = AtomicU64::new(0);
static COMPLETIONS: AtomicU64 = AtomicU64::new(0);

fn answer(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

async fn serve(
    request: Request<Incoming>,
    latency: Duration,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.method() == Method::GET && request.uri().path() == "/stats" {
        let stats = format!(
            "connections={} requests={}\n",
            CONNECTIONS.load(Ordering::Relaxed),
            COMPLETIONS.load(Ordering::Relaxed)
        );
        return Ok(answer(StatusCode::OK, Bytes::from(stats)));
    }
    if request.method() != Method::POST || !request.uri().path().ends_with("/chat/completions") {
        return Ok(answer(StatusCode::NOT_FOUND, Bytes::new()));
    }
    if request.into_body().collect().await.is_err() {
        return Ok(answer(StatusCode::BAD_REQUEST, Bytes::new()));
    }
    tokio::time::sleep(latency).await;
    COMPLETIONS.fetch_add(1, Ordering::Relaxed);
    Ok(answer(
        StatusCode::OK,
        Bytes::from_static(COMPLETION.as_bytes()),
    ))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(latency_ms)) = (
        args.next()
            .and_then(|a| a.parse::<std::net::SocketAddr>().ok()),
        args.next().and_then(|a| a.parse::<u64>().ok()),
    ) else {
        eprintln!("usage: mock-llm LISTEN_ADDR LATENCY_MS");
        std::process::exit(2);
    };
    let latency = Duration::from_millis(latency_ms);
    let socket = if listen.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(listen)?;
    let listener = socket.listen(BACKLOG)?;
    loop {
        // Out of descriptors, say: the loads are bounded, so wait for some to close.
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        CONNECTIONS.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let service = service_fn(move |request| serve(request, latency));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
