//! The HTTP floor for `bench/run`: a minimal hyper HTTP/1.1 server that
//! answers every request with the same body iicp-host answers the chat task
//! with. It reads each request body to the end but never parses it, so what
//! it costs is the closest thing to the physical limit of loopback HTTP on
//! this machine: the floor that iicp-host and the native node are measured
//! against. Same runtime shape as both: tokio's multi-thread runtime, one
//! worker per core.
//!
//! Usage: `http-floor LISTEN_ADDR BODY_FILE`

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

async fn answer(
    request: Request<Incoming>,
    body: Bytes,
) -> Result<Response<Full<Bytes>>, Infallible> {
    // Read the request to the end, as any server must; a broken body gets
    // the same answer, the floor has no error path to measure.
    let _ = request.into_body().collect().await;
    let mut response = Response::new(Full::new(body));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(body_file)) = (args.next(), args.next()) else {
        eprintln!("usage: http-floor LISTEN_ADDR BODY_FILE");
        std::process::exit(2);
    };
    let body = Bytes::from(std::fs::read(&body_file)?);
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let body = body.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| answer(request, body.clone()));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
