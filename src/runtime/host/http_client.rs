//! The connection pool a plugin's outbound HTTP requests go through.
//!
//! hyper-util's pooled client, given the request `wasi:http` built as it
//! is: no URL parsed again from its text, the response body handed to the
//! guest through one wrapper that bounds it (size, deadline) and counts it.
//! Names resolve through the policy's [`PolicyResolver`], so the address
//! check happens where the connection is made; `https` goes through rustls
//! with the Mozilla roots (webpki-roots), HTTP/1.1 only. Idle keep-alive
//! connections are bounded per destination and closed after a timeout.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use prometheus::IntCounter;
use tokio::sync::OwnedSemaphorePermit;
use wasmtime_wasi_http::Error as HttpError;

use super::address_policy::{PolicyResolver, refused_by_resolver};

/// Sent when the plugin's request names no agent of its own.
const USER_AGENT: &str = concat!("iicp-host-plugin/", env!("CARGO_PKG_VERSION"));

/// A plugin's pooled outbound client.
pub(crate) struct OutboundClient {
    client: Client<HttpsConnector<HttpConnector<PolicyResolver>>, Full<Bytes>>,
}

/// Why a request got no response.
pub(crate) enum SendFailure {
    /// The resolver found only addresses the policy forbids.
    Prohibited,
    /// The deadline passed before the response head arrived.
    Timeout,
    /// No connection could be made.
    Connect,
    /// The connection broke or the answer was not HTTP.
    Protocol,
}

impl OutboundClient {
    /// A client keeping at most `idle_per_host` idle connections per
    /// destination, each for at most `idle_timeout`.
    pub(crate) fn new(
        resolver: PolicyResolver,
        idle_per_host: usize,
        idle_timeout: Duration,
    ) -> Result<Self, String> {
        let mut connector = HttpConnector::new_with_resolver(resolver);
        connector.enforce_http(false);
        // Requests are small and answers awaited: no Nagle delay.
        connector.set_nodelay(true);
        let tls = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
            .map_err(|e| format!("cannot set up TLS for plugins: {e}"))?
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(idle_per_host)
            .pool_idle_timeout(idle_timeout)
            // Without a timer the idle timeout is never enforced.
            .pool_timer(TokioTimer::new())
            .build(tls);
        Ok(Self { client })
    }

    /// Sends `request` (absolute URI, body collected), waiting for the
    /// response head until `deadline`; a request without its own
    /// `User-Agent` or `Accept` gets the node's.
    pub(crate) async fn send(
        &self,
        mut request: http::Request<Full<Bytes>>,
        deadline: Instant,
    ) -> Result<http::Response<Incoming>, SendFailure> {
        let headers = request.headers_mut();
        headers
            .entry(http::header::USER_AGENT)
            .or_insert(http::HeaderValue::from_static(USER_AGENT));
        headers
            .entry(http::header::ACCEPT)
            .or_insert(http::HeaderValue::from_static("*/*"));
        let sent = tokio::time::timeout_at(deadline.into(), self.client.request(request)).await;
        match sent {
            Ok(Ok(response)) => Ok(response),
            Err(_elapsed) => Err(SendFailure::Timeout),
            Ok(Err(error)) if refused_by_resolver(&error) => Err(SendFailure::Prohibited),
            Ok(Err(error)) if error.is_connect() => Err(SendFailure::Connect),
            Ok(Err(_)) => Err(SendFailure::Protocol),
        }
    }
}

/// A response body as the guest reads it: at most `cap` bytes, counted
/// into the plugin's received bytes, holding the request's in-flight slot
/// until read or dropped. A read still waiting at the task's deadline
/// fails (a body still flowing then is stopped by the cap, and the task's
/// own deadline drops it with the instance).
pub(crate) struct BoundedResponseBody {
    incoming: Incoming,
    left: usize,
    cap: usize,
    deadline: Pin<Box<tokio::time::Sleep>>,
    received: IntCounter,
    _in_flight: OwnedSemaphorePermit,
}

impl BoundedResponseBody {
    pub(crate) fn new(
        incoming: Incoming,
        cap: usize,
        deadline: Instant,
        received: IntCounter,
        in_flight: OwnedSemaphorePermit,
    ) -> Self {
        Self {
            incoming,
            left: cap,
            cap,
            deadline: Box::pin(tokio::time::sleep_until(deadline.into())),
            received,
            _in_flight: in_flight,
        }
    }
}

impl Body for BoundedResponseBody {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        let this = &mut *self;
        let frame = match Pin::new(&mut this.incoming).poll_frame(cx) {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                ready!(this.deadline.as_mut().poll(cx));
                return Poll::Ready(Some(Err(HttpError::HttpResponseIncomplete)));
            }
        };
        let frame = match frame {
            None => return Poll::Ready(None),
            Some(Err(_)) => return Poll::Ready(Some(Err(HttpError::HttpResponseIncomplete))),
            Some(Ok(frame)) => frame,
        };
        if let Some(data) = frame.data_ref() {
            if data.len() > this.left {
                this.left = 0;
                return Poll::Ready(Some(Err(HttpError::HttpResponseBodySize(Some(
                    this.cap as u64,
                )))));
            }
            this.left -= data.len();
            this.received.inc_by(data.len() as u64);
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        // As `http_body_util::Limited` reports it.
        let mut hint = self.incoming.size_hint();
        let left = self.left as u64;
        if hint.lower() >= left {
            hint.set_exact(left);
        } else {
            hint.set_upper(hint.upper().map_or(left, |upper| upper.min(left)));
        }
        hint
    }
}
