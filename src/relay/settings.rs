//! What the operator configures about relaying: the worker role (`[relay]`,
//! `--relay URL`, see [`super::worker`]) and the relay role
//! (`[relay_capable]`, `--relay-capable`, see [`super::sessions`]). Plain
//! data with defaults, deserialized from the configuration file and checked
//! once by `validate`; every bound here is documented in
//! `iicp-host.example.toml`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::directory::settings::validate_http_url;
use crate::settings::{Section, check_range, is_ed25519_hex};

/// The worker role: serve tasks pulled from a relay instead of (or beside)
/// an inbound listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    /// The relay: its base URL for the HTTP long-poll transport, e.g.
    /// `http://relay.example:8080`, or `iicp://relay.example:9485` for the
    /// native IICP framing to its accept port (the reference's workers'
    /// transport, which every reference relay serves).
    pub url: String,
    /// For an `iicp://` relay: the base URL consumers reach it at, which
    /// the directory lists (`{http_url}/v1/relay-for/{id}`); unset, the
    /// relay's host on the reference's HTTP port 9484. The worker warns
    /// when the relay names another port at bind.
    #[serde(default)]
    pub http_url: Option<String>,
    /// Long polls kept open at once. More than one keeps tasks flowing while
    /// a pull is being answered.
    #[serde(default = "default_pullers")]
    pub pullers: u32,
    /// The relay's node id, the audience of the bind tickets this worker
    /// asks the directory for (`protocol.md` §7.4); unset asks for `*`.
    #[serde(default)]
    pub relay_node_id: Option<String>,
    /// Shortest wait before binding again after a failure, in ms.
    #[serde(default = "default_backoff_floor_ms")]
    pub backoff_floor_ms: u64,
    /// Longest wait before binding again, in ms.
    #[serde(default = "default_backoff_max_ms")]
    pub backoff_max_ms: u64,
    /// Bound on each call to the relay other than the long poll, in ms.
    #[serde(default = "default_call_timeout_ms")]
    pub call_timeout_ms: u64,
}

fn default_pullers() -> u32 {
    4
}
fn default_backoff_floor_ms() -> u64 {
    250
}
fn default_backoff_max_ms() -> u64 {
    30_000
}
fn default_call_timeout_ms() -> u64 {
    10_000
}

impl WorkerSettings {
    /// Defaults for `--relay URL`.
    pub fn new(url: String) -> Self {
        Self {
            url,
            http_url: None,
            pullers: default_pullers(),
            relay_node_id: None,
            backoff_floor_ms: default_backoff_floor_ms(),
            backoff_max_ms: default_backoff_max_ms(),
            call_timeout_ms: default_call_timeout_ms(),
        }
    }

    /// `host:port` of an `iicp://` relay (the framed transport).
    pub fn framed_addr(&self) -> Option<&str> {
        self.url
            .strip_prefix("iicp://")
            .map(|rest| rest.trim_end_matches('/'))
    }

    /// The relay's HTTP base URL, without a trailing slash: the URL itself,
    /// or for an `iicp://` relay `http_url` (or its host on port 9484).
    pub fn base_url(&self) -> String {
        match (self.framed_addr(), &self.http_url) {
            (Some(_), Some(http_url)) => http_url.trim_end_matches('/').to_string(),
            (Some(addr), None) => {
                let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
                format!("http://{host}:{REFERENCE_HTTP_PORT}")
            }
            (None, _) => self.url.trim_end_matches('/').to_string(),
        }
    }

    /// `{relay}/v1/relay-for/{worker_id}`: the endpoint this worker
    /// registers, so consumers that append `/v1/task` reach it through the
    /// relay.
    pub fn relay_for_endpoint(&self, worker_id: &str) -> String {
        format!("{}/v1/relay-for/{worker_id}", self.base_url())
    }
}

impl Section for WorkerSettings {
    const NAME: &'static str = "relay";

    /// Checks the URL and ranges; the error names the field.
    fn validate(&self) -> Result<(), String> {
        match self.framed_addr() {
            Some(addr)
                if addr
                    .rsplit_once(':')
                    .is_none_or(|(_, p)| p.parse::<u16>().is_err()) =>
            {
                return Err(format!("url: {:?} must be iicp://host:port", self.url));
            }
            Some(_) => {}
            None => validate_http_url(&self.url).map_err(|e| format!("url: {e}"))?,
        }
        if let Some(http_url) = &self.http_url {
            validate_http_url(http_url).map_err(|e| format!("http_url: {e}"))?;
        }
        check_range("pullers", self.pullers, &(1..=64))?;
        check_range("backoff_floor_ms", self.backoff_floor_ms, &(10..=60_000))?;
        check_range(
            "backoff_max_ms",
            self.backoff_max_ms,
            &(self.backoff_floor_ms..=600_000),
        )?;
        check_range("call_timeout_ms", self.call_timeout_ms, &(100..=120_000))?;
        Ok(())
    }
}

/// The reference relay's HTTP port when an `iicp://` relay names none.
pub const REFERENCE_HTTP_PORT: u16 = 9484;

/// The relay role: accept bound workers and forward tasks to them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelaySettings {
    /// Bound workers at once; a new bind past it gets 503 `IICP-E039`
    /// (§7.3, the reference's 256).
    pub max_sessions: u32,
    /// New binds per source address per minute; more get 429 `IICP-E039`;
    /// 0 turns the limit off (§7.3, the reference's 30).
    pub bind_rate_limit: u32,
    /// Source addresses whose bind windows are remembered at once.
    pub bind_rate_sources: u32,
    /// Tasks waiting for or held by one worker; more get 429 `IICP-E021`.
    /// Also the results one worker may have being read at once.
    pub max_tasks_per_session: u32,
    /// Bytes of task bodies waiting for or held by one worker; separately,
    /// bytes of its results being read.
    pub max_bytes_per_session: usize,
    /// Bytes of task bodies held for all workers together; separately,
    /// bytes of all their results being read.
    pub max_bytes_total: usize,
    /// Long polls one worker may hold open at once.
    pub max_pulls_per_session: u32,
    /// How long a pull waits for a task before answering 204, in ms (§7.1: ≤ 25 s).
    pub poll_timeout_ms: u64,
    /// A worker that neither holds a pull nor pulled within this window is
    /// dead: its session ends and its tasks are answered `IICP-E031` (§7.2
    /// recommends 90 s).
    pub liveness_ms: u64,
    /// Task budget when the consumer sets no `constraints.timeout_ms`.
    pub default_task_timeout_ms: u64,
    /// Time past a task's budget the relay still waits for the worker's own
    /// answer (the worker times the task out itself) before answering 504.
    pub result_grace_ms: u64,
    /// Largest result a worker may post.
    pub max_result_bytes: usize,
    /// Refuse binds without a valid directory-signed ticket (§7.4).
    pub require_bind_ticket: bool,
    /// The directory's Ed25519 ticket-signing key, 64 hex characters.
    pub bind_ticket_key: Option<String>,
    /// Ticket ids remembered against replay (each until its ticket expires).
    pub max_ticket_ids: u32,
    /// Worker ids pinned to the rebind key they first bound with, kept in
    /// the state directory across restarts (`crate::relay::pins`); a full
    /// table refuses keyed binds of new ids with 503 `IICP-E039`.
    pub max_pinned_workers: u32,
    /// A pin not bound for this many days expires.
    pub pin_expiry_days: u32,
    /// Refuse binds that present neither a rebind key nor a valid bind
    /// ticket (such workers' ids can be taken by whoever binds first while
    /// their session is dead).
    pub refuse_keyless_binds: bool,
    /// Port of the native IICP framed accept listener, on the listen
    /// address's host, where the reference's workers bind
    /// (`relay_accept_port`, default 9485); 0 turns it off.
    pub accept_port: u16,
    /// Connections on the accept port at once, binding or bound; more are
    /// closed at once.
    pub max_framed_connections: u32,
    /// INIT and RELAY_BIND must both arrive within this, in ms.
    pub handshake_timeout_ms: u64,
    /// Tasks sent to one framed worker and not yet answered; more wait in
    /// its queue (never more than `max_tasks_per_session` anyway).
    pub max_calls_in_flight: u32,
}

impl Default for RelaySettings {
    fn default() -> Self {
        Self {
            max_sessions: 256,
            bind_rate_limit: 30,
            bind_rate_sources: 4096,
            max_tasks_per_session: 256,
            max_bytes_per_session: 16 << 20,
            max_bytes_total: 128 << 20,
            max_pulls_per_session: 8,
            poll_timeout_ms: 25_000,
            liveness_ms: 90_000,
            default_task_timeout_ms: 120_000,
            result_grace_ms: 2_000,
            max_result_bytes: 8 << 20,
            require_bind_ticket: false,
            bind_ticket_key: None,
            max_ticket_ids: 65_536,
            max_pinned_workers: 16_384,
            pin_expiry_days: 30,
            refuse_keyless_binds: false,
            accept_port: 9485,
            max_framed_connections: 512,
            handshake_timeout_ms: 10_000,
            max_calls_in_flight: 64,
        }
    }
}

impl Section for RelaySettings {
    const NAME: &'static str = "relay_capable";

    /// Checks ranges and the ticket key; the error names the field.
    fn validate(&self) -> Result<(), String> {
        check_range("max_sessions", self.max_sessions, &(1..=65_536))?;
        check_range("bind_rate_limit", self.bind_rate_limit, &(0..=100_000))?;
        check_range(
            "bind_rate_sources",
            self.bind_rate_sources,
            &(1..=1_000_000),
        )?;
        check_range(
            "max_tasks_per_session",
            self.max_tasks_per_session,
            &(1..=100_000),
        )?;
        check_range(
            "max_bytes_per_session",
            self.max_bytes_per_session,
            &(1024..=(4 << 30)),
        )?;
        check_range(
            "max_bytes_total",
            self.max_bytes_total,
            &(self.max_bytes_per_session..=(64 << 30)),
        )?;
        check_range(
            "max_pulls_per_session",
            self.max_pulls_per_session,
            &(1..=1024),
        )?;
        check_range("poll_timeout_ms", self.poll_timeout_ms, &(100..=25_000))?;
        check_range(
            "liveness_ms",
            self.liveness_ms,
            &(self.poll_timeout_ms..=3_600_000),
        )?;
        check_range(
            "default_task_timeout_ms",
            self.default_task_timeout_ms,
            &(100..=300_000),
        )?;
        check_range("result_grace_ms", self.result_grace_ms, &(0..=60_000))?;
        check_range(
            "max_result_bytes",
            self.max_result_bytes,
            &(1024..=(1 << 30)),
        )?;
        check_range("max_ticket_ids", self.max_ticket_ids, &(1..=10_000_000))?;
        check_range(
            "max_pinned_workers",
            self.max_pinned_workers,
            &(1..=1_000_000),
        )?;
        check_range("pin_expiry_days", self.pin_expiry_days, &(1..=3650))?;
        check_range(
            "max_framed_connections",
            self.max_framed_connections,
            &(1..=65_536),
        )?;
        check_range(
            "handshake_timeout_ms",
            self.handshake_timeout_ms,
            &(100..=120_000),
        )?;
        check_range(
            "max_calls_in_flight",
            self.max_calls_in_flight,
            &(1..=100_000),
        )?;
        match (&self.bind_ticket_key, self.require_bind_ticket) {
            (Some(key), _) if !is_ed25519_hex(key) => Err(format!(
                "bind_ticket_key must be 64 hex characters (an Ed25519 public key), got {} characters",
                key.len()
            )),
            (None, true) => Err(
                "require_bind_ticket needs bind_ticket_key (the directory's Ed25519 key)"
                    .to_string(),
            ),
            _ => Ok(()),
        }
    }
}

impl RelaySettings {
    /// [`Self::poll_timeout_ms`] as a duration.
    pub fn poll_timeout(&self) -> Duration {
        Duration::from_millis(self.poll_timeout_ms)
    }

    /// [`Self::liveness_ms`] as a duration.
    pub fn liveness(&self) -> Duration {
        Duration::from_millis(self.liveness_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_iicp_relay_url_picks_the_framed_transport_and_its_http_base() {
        let mut framed = WorkerSettings::new("iicp://relay.example:9485".into());
        framed.validate().unwrap();
        assert_eq!(framed.framed_addr(), Some("relay.example:9485"));
        assert_eq!(
            framed.relay_for_endpoint("w-1"),
            "http://relay.example:9484/v1/relay-for/w-1"
        );
        framed.http_url = Some("https://relay.example/".into());
        assert_eq!(framed.base_url(), "https://relay.example");
        for bad in [
            "iicp://relay.example",
            "iicp://relay.example:x",
            "tcp://r:1",
        ] {
            assert!(WorkerSettings::new(bad.into()).validate().is_err(), "{bad}");
        }
        assert_eq!(WorkerSettings::new("http://r:1".into()).framed_addr(), None);
    }

    #[test]
    fn defaults_are_valid_and_errors_name_the_field() {
        RelaySettings::default().validate().unwrap();
        WorkerSettings::new("http://relay:8080".into())
            .validate()
            .unwrap();
        let bad = RelaySettings {
            liveness_ms: 1000,
            ..RelaySettings::default()
        };
        assert!(bad.validate().unwrap_err().starts_with("liveness_ms"));
        let ticketless = RelaySettings {
            require_bind_ticket: true,
            ..RelaySettings::default()
        };
        assert!(
            ticketless
                .validate()
                .unwrap_err()
                .contains("bind_ticket_key")
        );
        assert!(
            WorkerSettings::new("relay:8080".into())
                .validate()
                .unwrap_err()
                .starts_with("url")
        );
        assert_eq!(
            WorkerSettings::new("http://r:1/".into()).relay_for_endpoint("w-1"),
            "http://r:1/v1/relay-for/w-1"
        );
    }
}
