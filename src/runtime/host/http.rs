//! Outbound HTTP for plugins, through `wasi:http/outgoing-handler`.
//!
//! Deny by default: a plugin reaches only the `scheme://host:port` patterns
//! its operator listed (`[plugin.http] allow`). Addresses are checked after
//! name resolution, and the connection goes to the checked address, so a DNS
//! name cannot smuggle in a loopback, private, link-local or otherwise
//! non-public address: those are refused unless the allow-list names that
//! address literally (e.g. `http://127.0.0.1:11434`) or the plugin sets
//! `allow_private`. Redirects are not followed (the plugin sees them and
//! its next request is checked again). Every call is bounded by the task's
//! deadline and the response body by a size cap, and is counted per plugin.
//!
//! What a task makes the host hold here is bounded too: each outgoing body
//! buffers at most [`OUTGOING_BODY_BUFFER_BYTES`] before it is sent (and is
//! charged that to the task's host budget when created), a request body is
//! collected only up to what is left of the budget, at most `max_in_flight`
//! requests of a task are on the wire at once, and a plugin keeps at most
//! `max_idle_connections` ([`DEFAULT_IDLE_CONNECTIONS_PER_HOST`]) idle
//! connections per destination, for [`IDLE_CONNECTION_TIMEOUT`]. Name lookups take a node-wide permit
//! ([`super::dns`]), so slow names cannot tie up the blocking pool. The
//! requests themselves go through [`super::http_client`].

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Semaphore;

use http_body_util::{BodyExt, Full, Limited};
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

use super::address_policy::{PolicyResolver, is_public};
use super::budget::HostBudget;
use super::dns::DnsLookups;
use super::http_client::{BoundedResponseBody, OutboundClient, SendFailure};
use crate::runtime::metrics::PluginHttpMetrics;

/// Bytes per chunk a guest may write into an outgoing body at once.
pub const OUTGOING_BODY_CHUNK_BYTES: usize = 64 << 10;
/// Chunks an outgoing body buffers before the guest must wait for the send.
const OUTGOING_BODY_BUFFER_CHUNKS: usize = 1;
/// The most an outgoing body holds on the host before it is sent: the
/// buffered chunks plus the one wasmtime-wasi-http keeps free.
pub const OUTGOING_BODY_BUFFER_BYTES: usize =
    (OUTGOING_BODY_BUFFER_CHUNKS + 1) * OUTGOING_BODY_CHUNK_BYTES;
/// Default requests of one task on the wire at once.
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 8;
/// Default idle keep-alive connections kept per destination, per plugin.
pub const DEFAULT_IDLE_CONNECTIONS_PER_HOST: u32 = 4;
/// Bounds on `max_idle_connections`: none kept at all, up to the most tasks
/// a node runs at once.
pub const IDLE_CONNECTIONS_RANGE: std::ops::RangeInclusive<u32> = 0..=4096;
/// How long an idle keep-alive connection is kept.
const IDLE_CONNECTION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// What the operator allowed for one plugin.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpSettings {
    /// `scheme://host[:port]` patterns; host may start with `*.`, port may be `*`.
    pub allow: Vec<String>,
    /// Let names resolve to non-public addresses.
    pub allow_private: bool,
    /// Largest response body accepted.
    pub max_response_bytes: usize,
    /// Requests of one task on the wire at once (0: the default).
    pub max_in_flight: u32,
    /// Idle keep-alive connections kept per destination across the
    /// plugin's tasks (None: [`DEFAULT_IDLE_CONNECTIONS_PER_HOST`]). A
    /// gateway whose tasks all call one backend wants about as many as it
    /// runs tasks at once, or most tasks open a new connection.
    pub max_idle_connections: Option<u32>,
}

/// Default response cap.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 8 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Exact(String),
    /// `*.example.com`: any subdomain of `example.com` (not itself).
    Subdomain(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct AllowRule {
    https: bool,
    host: HostPattern,
    /// `None`: any port.
    port: Option<u16>,
}

impl AllowRule {
    fn parse(pattern: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("{pattern:?}: {why}");
        let (scheme, rest) = pattern
            .split_once("://")
            .ok_or_else(|| bad("expected scheme://host[:port]"))?;
        let https = match scheme {
            "http" => false,
            "https" => true,
            _ => return Err(bad("the scheme must be http or https")),
        };
        let rest = rest.trim_end_matches('/');
        if rest.contains(['/', '?', '#', '@']) {
            return Err(bad(
                "only scheme://host[:port] is allowed, no path, query or user",
            ));
        }
        let default_port = if https { 443 } else { 80 };
        let parse_port = |port: &str| match port {
            "*" => Ok(None),
            digits => digits
                .parse::<u16>()
                .map(Some)
                .map_err(|_| bad("the port must be a number or *")),
        };
        // `[v6]:port`, `host:port` or `host`.
        let (host, port) = match rest.strip_prefix('[') {
            Some(bracketed) => {
                let (address, after) =
                    bracketed.split_once(']').ok_or_else(|| bad("unclosed ["))?;
                let port = match after.strip_prefix(':') {
                    Some(port) => parse_port(port)?,
                    None if after.is_empty() => Some(default_port),
                    None => return Err(bad("unexpected text after ]")),
                };
                (address, port)
            }
            None => match rest.split_once(':') {
                Some((host, port)) => (host, parse_port(port)?),
                None => (rest, Some(default_port)),
            },
        };
        let host = host.to_ascii_lowercase();
        if host.is_empty() {
            return Err(bad("the host is empty"));
        }
        let host = match host.strip_prefix("*.") {
            Some(domain) if !domain.is_empty() && !domain.contains('*') => {
                HostPattern::Subdomain(domain.to_string())
            }
            _ if host.contains('*') => {
                return Err(bad(
                    "a wildcard may only lead the host, as in *.example.com",
                ));
            }
            _ => HostPattern::Exact(host),
        };
        Ok(Self { https, host, port })
    }

    fn matches(&self, https: bool, host: &str, port: u16) -> bool {
        let host_ok = match &self.host {
            HostPattern::Exact(exact) => exact == host,
            HostPattern::Subdomain(domain) => host
                .strip_suffix(domain.as_str())
                .is_some_and(|prefix| prefix.len() > 1 && prefix.ends_with('.')),
        };
        self.https == https && host_ok && self.port.is_none_or(|p| p == port)
    }
}

/// Checks allow-list patterns without building a policy (for config errors).
pub fn check_patterns(patterns: &[String]) -> Result<(), String> {
    patterns
        .iter()
        .try_for_each(|p| AllowRule::parse(p).map(drop))
}

/// One plugin's outbound HTTP policy and the client that enforces it.
pub struct HttpPolicy {
    rules: Vec<AllowRule>,
    allow_private: bool,
    max_response_bytes: usize,
    max_in_flight: u32,
    client: OutboundClient,
    metrics: PluginHttpMetrics,
}

impl std::fmt::Debug for HttpPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpPolicy")
            .field("rules", &self.rules)
            .field("allow_private", &self.allow_private)
            .finish_non_exhaustive()
    }
}

/// Why a request was not sent.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    NotAllowed,
    NonPublicAddress,
}

impl HttpPolicy {
    /// Builds the policy, resolving names with permits from `lookups`; a
    /// malformed pattern is an error naming it.
    pub fn new(
        settings: &HttpSettings,
        metrics: PluginHttpMetrics,
        lookups: Arc<DnsLookups>,
    ) -> Result<Self, String> {
        let rules = settings
            .allow
            .iter()
            .map(|p| AllowRule::parse(p))
            .collect::<Result<Vec<_>, _>>()?;
        // Idle keep-alive connections are file descriptors the plugin left
        // behind: a bounded number per destination, closed soon, so a plugin
        // allowed a wildcard port cannot pile them up across its tasks.
        let idle = settings
            .max_idle_connections
            .unwrap_or(DEFAULT_IDLE_CONNECTIONS_PER_HOST);
        let client = OutboundClient::new(
            PolicyResolver::with_lookups(settings.allow_private, lookups),
            idle as usize,
            IDLE_CONNECTION_TIMEOUT,
        )?;
        Ok(Self {
            rules,
            allow_private: settings.allow_private,
            max_response_bytes: if settings.max_response_bytes == 0 {
                DEFAULT_MAX_RESPONSE_BYTES
            } else {
                settings.max_response_bytes
            },
            max_in_flight: if settings.max_in_flight == 0 {
                DEFAULT_MAX_IN_FLIGHT
            } else {
                settings.max_in_flight
            },
            client,
            metrics,
        })
    }

    /// Whether the request's URL may be fetched at all (before resolution).
    fn check(&self, uri: &http::Uri) -> Result<(), Refusal> {
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(Refusal::NotAllowed),
        };
        let host = uri
            .host()
            .ok_or(Refusal::NotAllowed)?
            .trim_start_matches('[')
            .trim_end_matches(']');
        let host = host.to_ascii_lowercase();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let rule = self
            .rules
            .iter()
            .find(|rule| rule.matches(https, &host, port))
            .ok_or(Refusal::NotAllowed)?;
        // An IP literal is never resolved: check it here. Naming it exactly in
        // the allow-list is the operator's explicit permission.
        if let Ok(ip) = host.parse::<IpAddr>()
            && !is_public(ip)
            && !self.allow_private
            && rule.host != HostPattern::Exact(host.clone())
        {
            return Err(Refusal::NonPublicAddress);
        }
        Ok(())
    }

    async fn send(
        &self,
        request: http::Request<WasiBody>,
        deadline: Instant,
        budget: &HostBudget,
        slot: tokio::sync::OwnedSemaphorePermit,
    ) -> Result<http::Response<WasiBody>, HttpError> {
        match self.check(request.uri()) {
            Ok(()) => {}
            Err(refusal) => {
                self.metrics.denied.inc();
                let uri = request.uri();
                tracing::info!(
                    scheme = uri.scheme_str().unwrap_or(""),
                    host = uri.host().unwrap_or(""),
                    port = uri.port_u16(),
                    reason = ?refusal,
                    "plugin outbound request refused"
                );
                return Err(match refusal {
                    Refusal::NotAllowed => HttpError::HttpRequestDenied,
                    Refusal::NonPublicAddress => HttpError::DestinationIpProhibited,
                });
            }
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(HttpError::HttpResponseTimeout);
        }
        let (parts, body) = request.into_parts();
        // The body is collected before sending, so it is host memory the
        // task asked for: it may use what is left of the host budget.
        let room = budget.remaining();
        let body = Limited::new(body, room)
            .collect()
            .await
            .map_err(|_| HttpError::HttpRequestBodySize(Some(room as u64)))?
            .to_bytes();
        budget
            .charge(body.len(), "wasi:http request body")
            .map_err(|_| HttpError::HttpRequestBodySize(Some(room as u64)))?;
        let request = http::Request::from_parts(parts, Full::new(body));
        let response = match self.client.send(request, deadline).await {
            Ok(response) => response,
            Err(failure) => {
                let (counter, error) = match failure {
                    SendFailure::Prohibited => {
                        (&self.metrics.denied, HttpError::DestinationIpProhibited)
                    }
                    SendFailure::Timeout => (&self.metrics.failed, HttpError::HttpResponseTimeout),
                    SendFailure::Connect => (&self.metrics.failed, HttpError::ConnectionRefused),
                    SendFailure::Protocol => (&self.metrics.failed, HttpError::HttpProtocolError),
                };
                counter.inc();
                return Err(error);
            }
        };
        self.metrics.ok.inc();
        let (parts, body) = response.into_parts();
        // The request keeps its in-flight slot until the guest has read or
        // dropped the response body.
        let body = BoundedResponseBody::new(
            body,
            self.max_response_bytes,
            deadline,
            self.metrics.response_bytes.clone(),
            slot,
        );
        Ok(http::Response::from_parts(parts, body.boxed_unsync()))
    }
}

/// The wasi:http hooks of one task: its plugin's policy, its host budget,
/// its requests in flight and its deadline.
pub struct TaskHttp {
    policy: Arc<HttpPolicy>,
    budget: Arc<HostBudget>,
    in_flight: Arc<Semaphore>,
    deadline: Instant,
    trace: Vec<(http::HeaderName, http::HeaderValue)>,
}

impl TaskHttp {
    /// Hooks for a task of a plugin with `policy`, charging `budget`,
    /// ending at `deadline`.
    pub fn new(policy: Arc<HttpPolicy>, budget: Arc<HostBudget>, deadline: Instant) -> Self {
        let in_flight = Arc::new(Semaphore::new(policy.max_in_flight as usize));
        Self {
            policy,
            budget,
            in_flight,
            deadline,
            trace: Vec::new(),
        }
    }

    /// Moves the deadline (reused instances serve several tasks).
    pub fn set_deadline(&mut self, deadline: Instant) {
        self.deadline = deadline;
    }

    /// The task's trace context (`traceparent` naming the task's execute
    /// span, and the consumer's `tracestate`), added to every request the
    /// plugin sends without its own, so its backend continues the trace.
    pub fn set_trace(&mut self, traceparent: &str, tracestate: Option<&str>) {
        self.trace.clear();
        let headers = [
            ("traceparent", Some(traceparent)),
            ("tracestate", tracestate),
        ];
        for (name, value) in headers {
            if let Some(value) = value.and_then(|v| http::HeaderValue::from_str(v).ok()) {
                self.trace
                    .push((http::HeaderName::from_static(name), value));
            }
        }
    }
}

impl WasiHttpHooks for TaskHttp {
    fn p2_outgoing_body_buffer_chunks(&mut self) -> usize {
        OUTGOING_BODY_BUFFER_CHUNKS
    }

    fn p2_outgoing_body_chunk_size(&mut self) -> usize {
        OUTGOING_BODY_CHUNK_BYTES
    }

    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        _options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> Box<
        dyn Future<
                Output = Result<
                    (
                        http::Response<WasiBody>,
                        Box<dyn Future<Output = Result<(), HttpError>> + Send>,
                    ),
                    HttpError,
                >,
            > + Send,
    > {
        let (policy, budget, deadline) = (self.policy.clone(), self.budget.clone(), self.deadline);
        let Ok(slot) = self.in_flight.clone().try_acquire_owned() else {
            let max = self.policy.max_in_flight;
            return Box::new(async move {
                Err(HttpError::InternalError(Some(format!(
                    "more than {max} requests of this task in flight"
                ))))
            });
        };
        let mut request = request;
        if !request.headers().contains_key("traceparent") {
            request.headers_mut().extend(self.trace.iter().cloned());
        }
        Box::new(async move {
            let response = policy.send(request, deadline, &budget, slot).await?;
            let done: Box<dyn Future<Output = Result<(), HttpError>> + Send> =
                Box::new(async { Ok(()) });
            Ok((response, done))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(pattern: &str) -> AllowRule {
        AllowRule::parse(pattern).unwrap()
    }

    #[test]
    fn patterns_parse_and_match() {
        let api = rule("https://api.openai.com");
        assert!(api.matches(true, "api.openai.com", 443));
        assert!(!api.matches(true, "api.openai.com", 8443));
        assert!(!api.matches(false, "api.openai.com", 443));
        let any_port = rule("http://127.0.0.1:*");
        assert!(any_port.matches(false, "127.0.0.1", 11434));
        let wild = rule("https://*.example.com:8443");
        assert!(wild.matches(true, "a.example.com", 8443));
        assert!(wild.matches(true, "a.b.example.com", 8443));
        assert!(!wild.matches(true, "example.com", 8443));
        assert!(!wild.matches(true, "badexample.com", 8443));
        let v6 = rule("http://[::1]:8080");
        assert!(v6.matches(false, "::1", 8080));
        for bad in [
            "ftp://x",
            "x.com",
            "https://x.com/path",
            "https://a*.com",
            "https://x.com:port",
            "https://user@x.com",
        ] {
            assert!(AllowRule::parse(bad).is_err(), "{bad}");
        }
    }
}
