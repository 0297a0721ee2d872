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

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use http_body_util::{BodyExt, Limited};
use prometheus::IntCounter;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

use crate::metrics::PluginHttpMetrics;

/// Largest request body a plugin may send.
const MAX_REQUEST_BYTES: usize = 16 << 20;

/// What the operator allowed for one plugin.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpSettings {
    /// `scheme://host[:port]` patterns; host may start with `*.`, port may be `*`.
    pub allow: Vec<String>,
    /// Let names resolve to non-public addresses.
    pub allow_private: bool,
    /// Largest response body accepted.
    pub max_response_bytes: usize,
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

/// Whether `ip` is an ordinary public unicast address.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 192 && b == 0 && c == 0)
                || (a == 198 && (18..20).contains(&b))
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || first == 0x2001 && v6.segments()[1] == 0x0db8)
        }
    }
}

/// Checks allow-list patterns without building a policy (for config errors).
pub fn check_patterns(patterns: &[String]) -> Result<(), String> {
    patterns
        .iter()
        .try_for_each(|p| AllowRule::parse(p).map(drop))
}

/// Resolves names for the plugin's HTTP client, dropping every address the
/// policy forbids; a name left with none fails as prohibited.
struct PolicyResolver {
    allow_private: bool,
}

/// The resolver's refusal, recognised when mapping errors for the guest.
#[derive(Debug)]
struct ProhibitedAddress(String);

impl std::fmt::Display for ProhibitedAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} resolves only to non-public addresses", self.0)
    }
}

impl std::error::Error for ProhibitedAddress {}

impl reqwest::dns::Resolve for PolicyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let host = name.as_str().to_string();
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = resolved
                .into_iter()
                .filter(|addr| allow_private || is_public(addr.ip()))
                .collect();
            if allowed.is_empty() {
                return Err(
                    Box::new(ProhibitedAddress(host)) as Box<dyn std::error::Error + Send + Sync>
                );
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// One plugin's outbound HTTP policy and the client that enforces it.
pub struct HttpPolicy {
    rules: Vec<AllowRule>,
    allow_private: bool,
    max_response_bytes: usize,
    client: reqwest::Client,
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
    /// Builds the policy; a malformed pattern is an error naming it.
    pub fn new(settings: &HttpSettings, metrics: PluginHttpMetrics) -> Result<Self, String> {
        let rules = settings
            .allow
            .iter()
            .map(|p| AllowRule::parse(p))
            .collect::<Result<Vec<_>, _>>()?;
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(PolicyResolver {
                allow_private: settings.allow_private,
            }))
            .user_agent(concat!("iicp-host-plugin/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Self {
            rules,
            allow_private: settings.allow_private,
            max_response_bytes: if settings.max_response_bytes == 0 {
                DEFAULT_MAX_RESPONSE_BYTES
            } else {
                settings.max_response_bytes
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
        let body = Limited::new(body, MAX_REQUEST_BYTES)
            .collect()
            .await
            .map_err(|_| HttpError::HttpRequestBodySize(None))?
            .to_bytes();
        let url = parts.uri.to_string();
        let outcome = self
            .client
            .request(parts.method, url)
            .headers(parts.headers)
            .body(body)
            .timeout(remaining)
            .send()
            .await;
        let response = match outcome {
            Ok(response) => response,
            Err(error) => {
                let mapped = map_error(&error);
                if matches!(mapped, HttpError::DestinationIpProhibited) {
                    self.metrics.denied.inc();
                } else {
                    self.metrics.failed.inc();
                }
                return Err(mapped);
            }
        };
        self.metrics.ok.inc();
        let response: http::Response<reqwest::Body> = response.into();
        let (parts, body) = response.into_parts();
        let received: IntCounter = self.metrics.response_bytes.clone();
        let cap = self.max_response_bytes;
        let body = Limited::new(body, cap)
            .map_frame(move |frame| {
                if let Some(data) = frame.data_ref() {
                    received.inc_by(data.len() as u64);
                }
                frame
            })
            .map_err(move |error| {
                if error.is::<http_body_util::LengthLimitError>() {
                    HttpError::HttpResponseBodySize(Some(cap as u64))
                } else {
                    HttpError::HttpResponseIncomplete
                }
            })
            .boxed_unsync();
        Ok(http::Response::from_parts(parts, body))
    }
}

/// Maps a client error to the wasi:http error the guest sees.
fn map_error(error: &reqwest::Error) -> HttpError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(cause) = source {
        if cause.is::<ProhibitedAddress>() {
            return HttpError::DestinationIpProhibited;
        }
        source = cause.source();
    }
    if error.is_timeout() {
        HttpError::HttpResponseTimeout
    } else if error.is_connect() {
        HttpError::ConnectionRefused
    } else {
        HttpError::HttpProtocolError
    }
}

/// The wasi:http hooks of one task: its plugin's policy and its deadline.
pub struct TaskHttp {
    policy: Arc<HttpPolicy>,
    deadline: Instant,
}

impl TaskHttp {
    /// Hooks for a task of a plugin with `policy`, ending at `deadline`.
    pub fn new(policy: Arc<HttpPolicy>, deadline: Instant) -> Self {
        Self { policy, deadline }
    }

    /// Moves the deadline (reused instances serve several tasks).
    pub fn set_deadline(&mut self, deadline: Instant) {
        self.deadline = deadline;
    }
}

impl WasiHttpHooks for TaskHttp {
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
        let (policy, deadline) = (self.policy.clone(), self.deadline);
        Box::new(async move {
            let response = policy.send(request, deadline).await?;
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

    #[test]
    fn public_addresses() {
        for public in ["8.8.8.8", "1.1.1.1", "2606:4700::1111"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "224.0.0.1",
            "255.255.255.255",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
    }
}
