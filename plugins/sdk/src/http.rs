//! Outbound HTTP over `wasi:http`. The host sends requests only to the
//! `scheme://host:port` patterns the operator allowed for this plugin, and
//! only to public addresses unless allowed otherwise; every call also ends
//! at the task's deadline.

use std::time::Duration;

use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    ErrorCode, Fields, FutureIncomingResponse, IncomingResponse, Method, OutgoingBody,
    OutgoingRequest, RequestOptions, Scheme,
};
use wasip2::io::streams::{InputStream, StreamError};

/// An HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Header names (lowercase) and values.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// The URL cannot be used.
    InvalidUrl(String),
    /// The host's policy refused it (not allowed, or a non-public address).
    Denied(String),
    /// No answer in time.
    Timeout,
    /// The answer was larger than the host allows.
    TooLarge,
    /// Anything else on the way.
    Transport(String),
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpError::InvalidUrl(why) => write!(f, "invalid URL: {why}"),
            HttpError::Denied(why) => write!(f, "request refused by the host: {why}"),
            HttpError::Timeout => f.write_str("no answer in time"),
            HttpError::TooLarge => f.write_str("answer too large"),
            HttpError::Transport(why) => write!(f, "transport failure: {why}"),
        }
    }
}

impl std::error::Error for HttpError {}

fn from_code(code: ErrorCode) -> HttpError {
    match code {
        ErrorCode::HttpRequestDenied => {
            HttpError::Denied("the destination is not in the plugin's allow-list".into())
        }
        ErrorCode::DestinationIpProhibited => {
            HttpError::Denied("the destination is not a public address".into())
        }
        ErrorCode::ConnectionTimeout
        | ErrorCode::ConnectionReadTimeout
        | ErrorCode::ConnectionWriteTimeout
        | ErrorCode::HttpResponseTimeout => HttpError::Timeout,
        ErrorCode::HttpResponseBodySize(_) => HttpError::TooLarge,
        other => HttpError::Transport(format!("{other:?}")),
    }
}

/// The parts of an absolute `http`/`https` URL.
struct Target<'a> {
    https: bool,
    authority: &'a str,
    path_and_query: &'a str,
}

fn split_url(url: &str) -> Result<Target<'_>, HttpError> {
    let (https, rest) = if let Some(rest) = url.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (false, rest)
    } else {
        return Err(HttpError::InvalidUrl(format!(
            "{url:?} is not an http(s) URL"
        )));
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if authority.is_empty() || authority.contains('@') {
        return Err(HttpError::InvalidUrl(format!("{url:?} has no usable host")));
    }
    let tail = tail.split('#').next().unwrap_or_default();
    Ok(Target {
        https,
        authority,
        path_and_query: if tail.is_empty() { "/" } else { tail },
    })
}

/// The most `blocking-write-and-flush` takes in one call (wasi:io).
const BLOCKING_WRITE_MAX: usize = 4096;
/// How much is asked per read when the answer does not say its length.
const READ_CHUNK: u64 = 64 * 1024;
/// The most asked per read, and reserved up front, when it does.
const READ_MAX: u64 = 1 << 20;

/// Sends one request and reads the whole answer. `timeout` bounds the
/// connection and the wait for the answer; `None` leaves only the task's
/// deadline, at which the host stops every call anyway.
///
/// Each step below is a call into the host, so the order is chosen to make
/// few: no request options without a timeout, no method for a `GET` (the
/// default), no body stream for an empty body, one wait before the first
/// look at the answer, and no read past a body whose length was announced.
pub fn send(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: impl Into<Option<Duration>>,
) -> Result<Response, HttpError> {
    let target = split_url(url)?;
    let fields = Fields::from_list(
        &headers
            .iter()
            .map(|(name, value)| (name.to_string(), value.as_bytes().to_vec()))
            .collect::<Vec<_>>(),
    )
    .map_err(|e| HttpError::InvalidUrl(format!("bad header: {e:?}")))?;
    let request = OutgoingRequest::new(fields);
    let method = match method.to_ascii_uppercase().as_str() {
        "GET" => Method::Get,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "PATCH" => Method::Patch,
        "HEAD" => Method::Head,
        other => Method::Other(other.to_string()),
    };
    let bad = |what: &str| HttpError::InvalidUrl(format!("cannot set the {what}"));
    if !matches!(method, Method::Get) {
        request.set_method(&method).map_err(|()| bad("method"))?;
    }
    request
        .set_scheme(Some(if target.https {
            &Scheme::Https
        } else {
            &Scheme::Http
        }))
        .map_err(|()| bad("scheme"))?;
    request
        .set_authority(Some(target.authority))
        .map_err(|()| bad("host"))?;
    request
        .set_path_with_query(Some(target.path_and_query))
        .map_err(|()| bad("path"))?;
    let options = timeout.into().map(|timeout| {
        let options = RequestOptions::new();
        let nanos = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
        // Hosts may not support every option; the deadline still holds.
        let _ = options.set_connect_timeout(Some(nanos));
        let _ = options.set_first_byte_timeout(Some(nanos));
        let _ = options.set_between_bytes_timeout(Some(nanos));
        options
    });

    let outgoing = request
        .body()
        .map_err(|()| HttpError::Transport("no request body".into()))?;
    // Start the request first: the host reads the body while it sends.
    let pending = outgoing_handler::handle(request, options).map_err(from_code)?;
    if let Err(error) = write_body(&outgoing, body) {
        // A host that refuses the request (allow-list, limits) closes its
        // body: the response then says why, which the write cannot. The
        // body is dropped unfinished first, so the request cannot be left
        // waiting for it.
        drop(outgoing);
        return Err(match wait(&pending) {
            Ok(Err(code)) => from_code(code),
            _ => error,
        });
    }
    OutgoingBody::finish(outgoing, None).map_err(from_code)?;

    let response = wait(&pending)
        .map_err(|()| HttpError::Transport("response already taken".into()))?
        .map_err(from_code)?;
    let status = response.status();
    let headers: Vec<(String, String)> = response
        .headers()
        .entries()
        .into_iter()
        .map(|(name, value)| {
            (
                name.to_ascii_lowercase(),
                String::from_utf8_lossy(&value).into_owned(),
            )
        })
        .collect();
    let announced = headers
        .iter()
        .find(|(name, _)| name == "content-length")
        .and_then(|(_, value)| value.trim().parse::<u64>().ok());
    let incoming = response
        .consume()
        .map_err(|()| HttpError::Transport("no response body".into()))?;
    let body = {
        let stream = incoming
            .stream()
            .map_err(|()| HttpError::Transport("cannot read the response body".into()))?;
        read_body(&stream, announced)?
    };
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// Writes the whole request body in as few calls as the stream allows: none
/// for an empty body, one up to [`BLOCKING_WRITE_MAX`], else as much per
/// write as `check-write` permits.
fn write_body(outgoing: &OutgoingBody, body: &[u8]) -> Result<(), HttpError> {
    if body.is_empty() {
        return Ok(());
    }
    let stream = outgoing
        .write()
        .map_err(|()| HttpError::Transport("cannot write the request body".into()))?;
    let failed = |e: StreamError| HttpError::Transport(format!("writing the body: {e:?}"));
    if body.len() <= BLOCKING_WRITE_MAX {
        return stream.blocking_write_and_flush(body).map_err(failed);
    }
    let mut rest = body;
    while !rest.is_empty() {
        let permitted = stream.check_write().map_err(failed)?;
        if permitted == 0 {
            stream.subscribe().block();
            continue;
        }
        let (now, later) = rest.split_at(rest.len().min(permitted as usize));
        stream.write(now).map_err(failed)?;
        rest = later;
    }
    stream.blocking_flush().map_err(failed)
}

/// Waits for the answer. It is never there right after the request was
/// sent, so the wait comes before the first look, not after an empty one.
fn wait(pending: &FutureIncomingResponse) -> Result<Result<IncomingResponse, ErrorCode>, ()> {
    loop {
        pending.subscribe().block();
        if let Some(result) = pending.get() {
            break result;
        }
    }
}

/// Reads a response body to its end, or to its announced length: once that
/// many bytes are in, the end-of-stream read would only cost a call.
fn read_body(stream: &InputStream, announced: Option<u64>) -> Result<Vec<u8>, HttpError> {
    let mut body = Vec::with_capacity(announced.map_or(0, |n| n.min(READ_MAX) as usize));
    loop {
        let want = match announced {
            Some(length) if body.len() as u64 >= length => break,
            Some(length) => (length - body.len() as u64).min(READ_MAX),
            None => READ_CHUNK,
        };
        match stream.blocking_read(want) {
            Ok(chunk) => body.extend_from_slice(&chunk),
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(error)) => {
                return Err(match wasip2::http::types::http_error_code(&error) {
                    Some(code) => from_code(code),
                    None => HttpError::Transport(error.to_debug_string()),
                });
            }
        }
    }
    Ok(body)
}

/// `POST url` with a JSON body; `timeout` as for [`send`].
pub fn post_json(
    url: &str,
    headers: &[(&str, &str)],
    body: &impl serde::Serialize,
    timeout: impl Into<Option<Duration>>,
) -> Result<Response, HttpError> {
    let json = serde_json::to_vec(body).map_err(|e| HttpError::InvalidUrl(format!("body: {e}")))?;
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    send("POST", url, &all, &json, timeout)
}

/// `GET url`; `timeout` as for [`send`].
pub fn get(url: &str, timeout: impl Into<Option<Duration>>) -> Result<Response, HttpError> {
    send("GET", url, &[], &[], timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_their_parts() {
        let target = split_url("https://api.example.com:8443/v1/chat?x=1#frag").unwrap();
        assert!(target.https);
        assert_eq!(target.authority, "api.example.com:8443");
        assert_eq!(target.path_and_query, "/v1/chat?x=1");
        let bare = split_url("http://host").unwrap();
        assert_eq!((bare.authority, bare.path_and_query), ("host", "/"));
        assert!(split_url("ftp://x").is_err());
        assert!(split_url("http://user@host/").is_err());
    }
}
