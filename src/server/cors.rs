//! The CORS headers of every answer (`protocol.md` §4.6): any origin, `GET`,
//! `POST`, `OPTIONS`, the headers consumers send (`traceparent`,
//! `tracestate`, `X-IICP-Consumer-Token`), a readable `X-IICP-Trace-Id`,
//! preflight cached a day.
//!
//! Preflight requests (`OPTIONS`) are answered by tower-http's CORS service.
//! Every other answer gets three headers whose values never change, so they
//! are constants here: tower-http builds a header map and joins its `Vary`
//! value anew for each answer, which the node paid on every task.

use std::convert::Infallible;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::header::{
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, AUTHORIZATION, CONTENT_TYPE, VARY,
};
use axum::http::{HeaderName, HeaderValue, Method, Request, Response};
use futures_util::future::{Either, MapOk, TryFutureExt};
use tower_http::cors;
use tower_service::Service;

use super::task_route::TRACE_ID_HEADER;

/// The request headers an answer depends on, as tower-http lists them.
const VARY_VALUE: &str = "origin, access-control-request-method, access-control-request-headers";

/// `inner` with the CORS headers on every answer.
#[derive(Clone, Debug)]
pub struct Cors<S> {
    preflight: cors::Cors<S>,
    inner: S,
}

impl<S: Clone> Cors<S> {
    /// Wraps `inner`; preflight requests never reach it.
    pub fn new(inner: S) -> Self {
        Self {
            preflight: configured(inner.clone()),
            inner,
        }
    }
}

/// tower-http's CORS service with the node's rules.
fn configured<S>(inner: S) -> cors::Cors<S> {
    cors::Cors::new(inner)
        .allow_origin(cors::Any)
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers([
            CONTENT_TYPE,
            AUTHORIZATION,
            HeaderName::from_static("traceparent"),
            HeaderName::from_static("tracestate"),
            HeaderName::from_static("x-iicp-consumer-token"),
        ])
        .expose_headers([TRACE_ID_HEADER.clone()])
        .max_age(Duration::from_secs(86_400))
}

type AddHeaders<B> = fn(Response<B>) -> Response<B>;

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Cors<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>, Error = Infallible> + Clone,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = Infallible;
    type Future = Either<cors::ResponseFuture<S::Future>, MapOk<S::Future, AddHeaders<ResBody>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        match self.preflight.poll_ready(cx) {
            Poll::Ready(Ok(())) => self.inner.poll_ready(cx),
            other => other,
        }
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        if request.method() == Method::OPTIONS {
            Either::Left(self.preflight.call(request))
        } else {
            let add: AddHeaders<ResBody> = with_answer_headers;
            Either::Right(self.inner.call(request).map_ok(add))
        }
    }
}

/// What tower-http adds to an answer that is not a preflight's: `Vary`
/// appended to any the handler set, the other two replaced.
fn with_answer_headers<B>(mut response: Response<B>) -> Response<B> {
    let headers = response.headers_mut();
    headers.append(VARY, HeaderValue::from_static(VARY_VALUE));
    headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    headers.insert(
        ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(TRACE_ID_HEADER.as_str()),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::routing::get;

    /// A route whose handler sets a `Vary` of its own.
    fn app() -> axum::Router {
        axum::Router::new().route("/", get(|| async { ([(VARY, "accept-encoding")], "hi") }))
    }

    async fn answer<S>(mut service: S, method: &Method) -> Response<Body>
    where
        S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
    {
        let request = Request::builder()
            .method(method)
            .uri("/")
            .header("origin", "https://page.example")
            .header("access-control-request-method", "POST")
            .body(Body::empty())
            .unwrap();
        std::future::poll_fn(|cx| service.poll_ready(cx))
            .await
            .unwrap();
        service.call(request).await.unwrap()
    }

    #[tokio::test]
    async fn answers_and_preflights_carry_what_tower_https_service_alone_adds() {
        for method in [Method::GET, Method::POST, Method::OPTIONS] {
            let ours = answer(Cors::new(app()), &method).await;
            let reference = answer(configured(app()), &method).await;
            assert_eq!(ours.status(), reference.status(), "{method}");
            assert_eq!(ours.headers(), reference.headers(), "{method}");
            assert!(ours.headers().contains_key(VARY), "{method}");
        }
    }
}
