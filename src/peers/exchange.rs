//! Answering and starting peer exchanges.
//!
//! Answering (`POST /v1/peers`), cheapest checks first: size, signature
//! form, body shape and freshness; then the signature — against a
//! configured key, a key the directory served (`GET /v1/node/{id}`, at most
//! `key_lookups_per_minute`), or the shared HMAC key; then the replay table;
//! then one exchange per sender per `min_sender_interval_ms`. Codes: the
//! spec's for the Ed25519 form (401 `unauthorized`, 403 `forbidden`, 409
//! `conflict`, 422 `validation_error`, 429 `rate_limited`), the reference's
//! 401 `IICP-E012` for the HMAC form.
//!
//! Starting: every `gossip_interval_ms`, one exchange with the peer
//! contacted least recently (the seeds and the directory's bootstrap list
//! while the table is empty), signed, bounded in time and size, never to a
//! private address unless allowed, never carrying a credential. The
//! address check is made by the client's resolver as it connects (an IP
//! literal is checked before), so a gossiped name that resolves to a
//! public address first and a private one later gains nothing.
//!
//! Decisions the spec and the reference leave open (issue 19, part 5):
//!
//! * **Answers are signed and checked like exchanges.** §3.6 signs only
//!   the exchange; this node also signs its answer, in the form it was
//!   asked in, with `timestamp_ms` inside (Ed25519 by its gossip key for
//!   `{new_peers, receiver_id, timestamp_ms}`, HMAC by the mesh key for
//!   `{peers, timestamp_ms}`), and merges an answer to its own exchange
//!   only when it is signed in the form it asked in, by `receiver_id`'s
//!   trusted key (and `receiver_id` is the peer it meant to ask, when it
//!   knew the id), within ±60 s, and not seen before. The reference SDK
//!   signs no answer, so its answers are not merged: with SDK nodes, this
//!   node learns from the exchanges they send it.
//! * **An entry's signature is the signature of the message that lists
//!   it.** Neither form signs entries one by one, so a listed entry is only
//!   ever vouched for by its sender. An entry is the node's *own* only when
//!   the signer is that node: the `receiver_id` of a verified Ed25519
//!   answer, at the endpoint this node reached. Own entries (and the
//!   directory's) may place or move an id; every other entry is relayed and
//!   may add unknown ids only (see [`super::table`]). The HMAC key is
//!   shared by the whole mesh and names no one, so nothing HMAC-signed is
//!   ever anyone's own.
//! * **Per-sender budget.** Entries offered by one sender (its node id; for
//!   the HMAC form the address they came from) count against
//!   `merge_entries_per_window` and `merge_bytes_per_window` per
//!   `merge_window_ms`, from at most `max_merge_senders` senders
//!   ([`super::budget`]); the rest of a list is dropped.
//! * **HMAC replay.** The reference SDK's body carries no timestamp, so a
//!   captured one would verify forever and replay as soon as the replay
//!   table forgets it (5 minutes). This node puts `timestamp_ms` in the
//!   HMAC bodies and answers it sends and refuses an HMAC body without one
//!   (`IICP-E012 timestamp_required`) or more than 60 s off; a signature
//!   stays spent for 5 minutes, longer than any body it signs can be
//!   accepted. `accept_untimed_hmac = true` takes the SDK's untimed bodies
//!   anyway, knowing a capture replays after 5 minutes; what it can then
//!   add is bounded by the rules above (relayed, budgeted, never evicting
//!   pinned entries).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use ed25519_dalek::SigningKey;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::watch;

use super::budget::{BudgetBounds, MergeBudget, Spent};
use super::settings::PeerSettings;
use super::signature::{
    Form, SpendRefusal, SpentSignatures, form_of, parse_public_key, sign_ed25519, sign_hmac,
    verify_ed25519, verify_hmac,
};
use super::table::{Merged, Origin, Peer, PeerTable};
use crate::clock::now_unix_ms;
use crate::directory::client::DirectoryClient;
use crate::directory::identity::valid_node_id;
use crate::directory::receipts::rfc3339;
use crate::peers::metrics::PeerMetrics;
use crate::protocol::{ApiError, json_bytes_response};
use crate::runtime::host::address_policy::{PolicyResolver, is_public, refused_by_resolver};
use crate::server::body::read_limited;

/// The signature header.
pub const SIGNATURE_HEADER: &str = "x-iicp-signature";
/// Clock skew accepted on `timestamp_ms` (the spec's ±60 s).
const MAX_SKEW_MS: u64 = 60_000;
/// Peers one answer lists at most (the spec's SHOULD).
const MAX_ANSWERED: usize = 20;
/// Entries one exchange may carry.
const MAX_LISTED: usize = 4096;

/// Everything [`Peers::new`] needs.
pub struct PeersParts {
    /// This node's id.
    pub node_id: String,
    /// Its advertised endpoint (its own entry in HMAC-form gossip).
    pub endpoint: Option<String>,
    /// Its region.
    pub region: String,
    /// Settings.
    pub settings: PeerSettings,
    /// The seed of its Ed25519 gossip key.
    pub signing_seed: [u8; 32],
    /// The mesh's shared HMAC key, if configured.
    pub hmac_key: Option<String>,
    /// The directory, for gossip keys and bootstrap peers.
    pub directory: Option<DirectoryClient>,
    /// Metrics.
    pub metrics: PeerMetrics,
    /// Gossip to private and loopback addresses too (local meshes, tests).
    pub allow_private: bool,
    /// Deadline for reading an exchange's body (the node's, 408 beyond).
    pub body_read_timeout: Duration,
}

/// Peer gossip state.
pub struct Peers {
    parts: PeersParts,
    signing: SigningKey,
    table: PeerTable,
    spent: SpentSignatures,
    senders: Mutex<HashMap<String, u64>>,
    lookups: Mutex<(u64, u32)>,
    budget: MergeBudget,
    http: reqwest::Client,
}

/// Why an exchange was refused: the error and its metric label.
struct Refusal(ApiError, &'static str);

#[derive(Deserialize)]
struct SignedExchange {
    sender_id: String,
    known_peers: Vec<String>,
    timestamp_ms: u64,
}

#[derive(Deserialize)]
struct HmacExchange {
    known_peers: Vec<Value>,
    timestamp_ms: Option<u64>,
}

impl Peers {
    /// Gossip for `parts`; configured keys are trusted from the start.
    pub fn new(parts: PeersParts) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(parts.settings.call_timeout_ms))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(Arc::new(PolicyResolver::new(parts.allow_private)))
            .user_agent(concat!("iicp-host/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the gossip client: {e}"))?;
        let settings = &parts.settings;
        let mut configured = HashMap::new();
        for (node_id, key) in &settings.trusted_keys {
            let key = parse_public_key(key).ok_or(format!("peers.trusted_keys.{node_id}"))?;
            configured.insert(node_id.clone(), key);
        }
        let table = PeerTable::new(
            &parts.node_id,
            settings.max_peers as usize,
            configured,
            &settings.seeds,
        );
        Ok(Self {
            signing: SigningKey::from_bytes(&parts.signing_seed),
            spent: SpentSignatures::new(settings.max_signatures as usize),
            senders: Mutex::new(HashMap::new()),
            lookups: Mutex::new((0, 0)),
            budget: MergeBudget::new(BudgetBounds {
                window_ms: settings.merge_window_ms,
                entries: settings.merge_entries_per_window,
                bytes: settings.merge_bytes_per_window,
                senders: settings.max_merge_senders as usize,
            }),
            table,
            http,
            parts,
        })
    }

    /// This node's gossip public key, hex (advertised at REGISTER).
    pub fn public_key_hex(&self) -> String {
        hex::encode(self.signing.verifying_key().to_bytes())
    }

    /// Peers in the table.
    pub fn known(&self) -> usize {
        self.table.len()
    }

    /// The `POST /v1/peers` route.
    pub fn router<S: Clone + Send + Sync + 'static>(self: Arc<Self>) -> Router<S> {
        Router::new()
            .route("/v1/peers", post(answer_exchange))
            .with_state(self)
    }

    fn refused(&self, refusal: Refusal) -> Response {
        self.note_refusal(refusal.1);
        refusal.0.into_response()
    }

    fn note_refusal(&self, reason: &str) {
        self.parts
            .metrics
            .refusals
            .with_label_values(&[reason])
            .inc();
    }

    fn count(&self, direction: &str, result: &str) {
        self.parts
            .metrics
            .exchanges
            .with_label_values(&[direction, result])
            .inc();
        self.parts.metrics.active.set(self.table.len() as i64);
    }

    /// Answers one exchange from `source`: the answer and the form to sign
    /// it in.
    async fn answer(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        source: IpAddr,
    ) -> Result<(Value, Form), Refusal> {
        let signature = headers
            .get(SIGNATURE_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .unwrap_or_default();
        match form_of(signature) {
            Some(Form::Ed25519) => Ok((self.answer_signed(body, signature).await?, Form::Ed25519)),
            Some(Form::Hmac) => Ok((self.answer_hmac(body, signature, source)?, Form::Hmac)),
            None => Err(Refusal(
                ApiError::unauthorized("X-IICP-Signature is missing or malformed"),
                "unsigned",
            )),
        }
    }

    async fn answer_signed(&self, body: &[u8], signature: &str) -> Result<Value, Refusal> {
        let exchange: SignedExchange = serde_json::from_slice(body).map_err(|_| {
            Refusal(
                ApiError::validation("sender_id, known_peers and timestamp_ms are required"),
                "malformed",
            )
        })?;
        let now = now_unix_ms();
        if !valid_node_id(&exchange.sender_id) || exchange.known_peers.len() > MAX_LISTED {
            return Err(Refusal(
                ApiError::validation("sender_id or known_peers is not acceptable"),
                "malformed",
            ));
        }
        if exchange.timestamp_ms.abs_diff(now) > MAX_SKEW_MS {
            return Err(Refusal(
                ApiError::validation("timestamp_ms is more than 60 s from this node's clock"),
                "stale",
            ));
        }
        let Some(key) = self.gossip_key(&exchange.sender_id).await else {
            return Err(Refusal(
                ApiError::forbidden("the sender's gossip key is unknown"),
                "unknown_key",
            ));
        };
        if !verify_ed25519(&key, body, signature) {
            return Err(Refusal(
                ApiError::forbidden("the Ed25519 gossip signature does not verify"),
                "bad_signature",
            ));
        }
        self.spend(signature, now).map_err(spend_refusal)?;
        self.pace(&exchange.sender_id, now)?;
        let mut except: Vec<&str> = exchange.known_peers.iter().map(String::as_str).collect();
        except.push(&exchange.sender_id);
        let new_peers: Vec<Value> = self
            .table
            .fresh(&except, MAX_ANSWERED)
            .into_iter()
            .map(|p| {
                json!({
                    "node_id": p.node_id,
                    "endpoint": p.endpoint,
                    "region": p.region,
                    "last_seen_ms": p.last_seen_ms,
                })
            })
            .collect();
        Ok(json!({ "new_peers": new_peers, "receiver_id": self.parts.node_id }))
    }

    fn answer_hmac(&self, body: &[u8], signature: &str, source: IpAddr) -> Result<Value, Refusal> {
        let Some(key) = &self.parts.hmac_key else {
            return Err(Refusal(
                ApiError::peers_hmac_refused("this node accepts no HMAC-signed gossip"),
                "hmac_off",
            ));
        };
        if !verify_hmac(key, body, signature) {
            return Err(Refusal(
                ApiError::peers_hmac_refused("invalid_signature"),
                "bad_signature",
            ));
        }
        let exchange: HmacExchange = serde_json::from_slice(body).map_err(|_| {
            Refusal(
                ApiError::peers_hmac_refused("malformed_exchange"),
                "malformed",
            )
        })?;
        if exchange.known_peers.len() > MAX_LISTED {
            return Err(Refusal(
                ApiError::peers_hmac_refused("malformed_exchange"),
                "malformed",
            ));
        }
        let now = now_unix_ms();
        match exchange.timestamp_ms {
            Some(sent) if sent.abs_diff(now) > MAX_SKEW_MS => {
                return Err(Refusal(
                    ApiError::peers_hmac_refused("stale_timestamp"),
                    "stale",
                ));
            }
            None if !self.parts.settings.accept_untimed_hmac => {
                return Err(Refusal(
                    ApiError::peers_hmac_refused("timestamp_required"),
                    "untimed",
                ));
            }
            _ => {}
        }
        self.spend(signature, now).map_err(spend_refusal)?;
        self.merge_relayed(&exchange.known_peers, &format!("hmac@{source}"), now);
        let peers: Vec<Value> = self
            .table
            .fresh(&[], MAX_ANSWERED)
            .into_iter()
            .map(|p| {
                let seen = std::time::UNIX_EPOCH + Duration::from_millis(p.last_seen_ms);
                json!({
                    "node_id": p.node_id,
                    "endpoint": p.endpoint,
                    "region": p.region,
                    "last_seen": rfc3339(seen),
                })
            })
            .collect();
        Ok(json!({ "peers": peers }))
    }

    fn spend(&self, signature: &str, now: u64) -> Result<(), SpendRefusal> {
        self.spent.spend(signature, now)
    }

    /// Merges entries `sender` relayed, within its budget.
    fn merge_relayed(&self, listed: &[Value], sender: &str, now: u64) {
        for entry in listed.iter().take(MAX_LISTED) {
            let Some(peer) = listed_peer(entry, now) else {
                continue;
            };
            let bytes = (peer.node_id.len() + peer.endpoint.len() + peer.region.len()) as u64;
            match self.budget.take(sender, bytes, now) {
                Ok(()) => {}
                Err(Spent::Sender) => {
                    self.note_refusal("merge_rate");
                    break;
                }
                Err(Spent::Senders) => {
                    self.note_refusal("merge_senders_full");
                    break;
                }
            }
            if self.table.merge(peer, Origin::Relayed) == Merged::Repointed {
                self.note_refusal("repoint");
            }
        }
        self.parts
            .metrics
            .merge_senders
            .set(self.budget.senders() as i64);
    }

    /// The answer in `form`, with `timestamp_ms`, signed.
    fn signed_answer(&self, mut answer: Value, form: Form) -> Response {
        answer["timestamp_ms"] = json!(now_unix_ms());
        let Ok(bytes) = serde_json::to_vec(&answer) else {
            return ApiError::internal("cannot encode the answer").into_response();
        };
        let signature = match (form, &self.parts.hmac_key) {
            (Form::Hmac, Some(key)) => sign_hmac(key, &bytes),
            _ => sign_ed25519(&self.signing, &bytes),
        };
        let mut response = json_bytes_response(StatusCode::OK, bytes.into());
        if let Ok(value) = HeaderValue::from_str(&signature) {
            response.headers_mut().insert(SIGNATURE_HEADER, value);
        }
        response
    }

    /// One exchange per sender per interval; a bounded map of senders.
    fn pace(&self, sender: &str, now: u64) -> Result<(), Refusal> {
        let interval = self.parts.settings.min_sender_interval_ms;
        let mut senders = self.senders.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(last) = senders.get(sender)
            && now.saturating_sub(*last) < interval
        {
            return Err(Refusal(
                ApiError::rate_limited("one exchange per sender per interval", interval),
                "rate_limited",
            ));
        }
        if senders.len() >= 2 * self.parts.settings.max_peers as usize {
            senders.retain(|_, last| now.saturating_sub(*last) < interval);
        }
        senders.insert(sender.to_string(), now);
        Ok(())
    }

    /// The sender's trusted key: configured, learned from the directory
    /// before, or asked of the directory now (rate-bounded).
    async fn gossip_key(&self, node_id: &str) -> Option<[u8; 32]> {
        if let Some(key) = self.table.key(node_id) {
            return Some(key);
        }
        let directory = self.parts.directory.as_ref()?;
        {
            let now = now_unix_ms();
            let mut lookups = self.lookups.lock().unwrap_or_else(|p| p.into_inner());
            if now.saturating_sub(lookups.0) >= 60_000 {
                *lookups = (now, 0);
            }
            if lookups.1 >= self.parts.settings.key_lookups_per_minute {
                return None;
            }
            lookups.1 += 1;
        }
        let detail = directory.get(&format!("node/{node_id}")).await.ok()?;
        let key = detail.get("public_key").and_then(Value::as_str)?;
        let key = parse_public_key(key)?;
        self.table.set_key(node_id, key);
        if let Some(peer) = detail
            .get("endpoint")
            .and_then(Value::as_str)
            .and_then(|endpoint| {
                let region = detail.get("region").and_then(Value::as_str).unwrap_or("");
                Peer::checked(node_id, endpoint, region, now_unix_ms())
            })
        {
            self.table.merge(peer, Origin::Directory);
        }
        Some(key)
    }

    /// Gossips every `gossip_interval_ms` until `stop`.
    pub async fn gossip(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let interval = Duration::from_millis(self.parts.settings.gossip_interval_ms);
        loop {
            self.gossip_round().await;
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                _ = stop.wait_for(|stopped| *stopped) => return,
            }
        }
    }

    async fn gossip_round(&self) {
        if let Some(peer) = self.table.next_to_contact() {
            self.exchange_with(&peer.endpoint, Some(&peer.node_id))
                .await;
            return;
        }
        self.bootstrap().await;
        for seed in &self.parts.settings.seeds {
            self.exchange_with(seed.trim_end_matches('/'), None).await;
        }
    }

    /// Peers from the directory's `GET /v1/bootstrap` (no keys: those only
    /// ever come from node detail).
    async fn bootstrap(&self) {
        let Some(directory) = &self.parts.directory else {
            return;
        };
        let Ok(answer) = directory.get("bootstrap?limit=5").await else {
            return;
        };
        for listed in answer
            .get("peers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .take(50)
        {
            if let Some(peer) = listed_peer(listed, now_unix_ms()) {
                self.table.merge(peer, Origin::Directory);
            }
        }
    }

    /// One exchange with the node at `endpoint`, which is `expected` when
    /// this node knows its id.
    async fn exchange_with(&self, endpoint: &str, expected: Option<&str>) {
        if !self.parts.allow_private && names_a_private_address(endpoint) {
            self.count("out", "private_address");
            return;
        }
        let (body, signature, form) = self.signed_body();
        let sent = self
            .http
            .post(format!("{endpoint}/v1/peers"))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, signature)
            .body(body)
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(error) if refused_by_resolver(&error) => {
                return self.count("out", "private_address");
            }
            Err(_) => return self.count("out", "unreachable"),
        };
        if !response.status().is_success() {
            return self.count("out", "refused");
        }
        let signature = response
            .headers()
            .get(SIGNATURE_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_string());
        let Ok(bytes) = read_bounded(response, self.parts.settings.max_body_bytes).await else {
            return self.count("out", "bad_answer");
        };
        let now = now_unix_ms();
        let checked = self
            .check_answer(endpoint, expected, form, &bytes, signature.as_deref(), now)
            .await;
        let (answer, sender) = match checked {
            Ok(checked) => checked,
            Err(reason) => {
                self.note_refusal(reason);
                return self.count("out", "bad_answer");
            }
        };
        let listed = match form {
            Form::Ed25519 => answer.get("new_peers"),
            Form::Hmac => answer.get("peers"),
        };
        if let Some(listed) = listed.and_then(Value::as_array) {
            self.merge_relayed(listed, &sender, now);
        }
        self.count("out", "ok");
    }

    /// Checks an answer to this node's exchange (see the module docs);
    /// returns it and who vouches for its entries, having merged the
    /// answering node's own entry. The error is the refusal's label.
    async fn check_answer(
        &self,
        endpoint: &str,
        expected: Option<&str>,
        form: Form,
        body: &[u8],
        signature: Option<&str>,
        now: u64,
    ) -> Result<(Value, String), &'static str> {
        let signature = signature
            .filter(|s| !s.is_empty())
            .ok_or("unsigned_answer")?;
        if form_of(signature) != Some(form) {
            return Err("wrong_form");
        }
        let answer: Value = serde_json::from_slice(body).map_err(|_| "bad_answer")?;
        match answer.get("timestamp_ms").and_then(Value::as_u64) {
            None => return Err("untimed"),
            Some(sent) if sent.abs_diff(now) > MAX_SKEW_MS => return Err("stale"),
            Some(_) => {}
        }
        let sender = match form {
            Form::Ed25519 => {
                let receiver = answer
                    .get("receiver_id")
                    .and_then(Value::as_str)
                    .filter(|id| valid_node_id(id))
                    .ok_or("bad_answer")?;
                if expected.is_some_and(|id| id != receiver) {
                    return Err("wrong_signer");
                }
                let key = self.gossip_key(receiver).await.ok_or("unknown_key")?;
                if !verify_ed25519(&key, body, signature) {
                    return Err("bad_signature");
                }
                receiver.to_string()
            }
            Form::Hmac => {
                let key = self.parts.hmac_key.as_deref().ok_or("hmac_off")?;
                if !verify_hmac(key, body, signature) {
                    return Err("bad_signature");
                }
                let host = reqwest::Url::parse(endpoint)
                    .ok()
                    .and_then(|url| url.host_str().map(str::to_string))
                    .unwrap_or_default();
                format!("hmac@{host}")
            }
        };
        self.spend(signature, now)
            .map_err(|refusal| match refusal {
                SpendRefusal::Replayed => "replayed",
                SpendRefusal::Full => "replay_table_full",
            })?;
        // Stamped after the key lookup, which may have merged the
        // directory's (older) entry for the same id.
        if form == Form::Ed25519
            && let Some(own) = Peer::checked(&sender, endpoint, "", now_unix_ms())
        {
            self.table.merge(own, Origin::SelfSigned);
            self.table.pin_seed(endpoint, &sender);
        }
        Ok((answer, sender))
    }

    /// The outgoing body, its signature and their form, as configured.
    fn signed_body(&self) -> (Vec<u8>, String, Form) {
        let parts = &self.parts;
        match (&parts.hmac_key, parts.settings.send_hmac) {
            (Some(key), true) => {
                let mut known: Vec<Value> = self
                    .table
                    .fresh(&[], MAX_LISTED)
                    .into_iter()
                    .map(|p| json!({"node_id": p.node_id, "endpoint": p.endpoint, "region": p.region}))
                    .collect();
                if let Some(endpoint) = &parts.endpoint {
                    known.push(json!({
                        "node_id": parts.node_id,
                        "endpoint": endpoint,
                        "region": parts.region,
                    }));
                }
                let body = json!({ "known_peers": known, "timestamp_ms": now_unix_ms() })
                    .to_string()
                    .into_bytes();
                let signature = sign_hmac(key, &body);
                (body, signature, Form::Hmac)
            }
            _ => {
                let body = json!({
                    "sender_id": parts.node_id,
                    "known_peers": self.table.fresh_ids(),
                    "timestamp_ms": now_unix_ms(),
                    "ttl_s": super::table::LIVENESS_MS / 1000,
                })
                .to_string()
                .into_bytes();
                let signature = sign_ed25519(&self.signing, &body);
                (body, signature, Form::Ed25519)
            }
        }
    }
}

async fn answer_exchange(State(peers): State<Arc<Peers>>, request: Request) -> Response {
    // The socket's peer: the only source an HMAC-signed list can be
    // charged to (the shared key names no one).
    let source = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |info| info.0.ip());
    let (parts, body) = request.into_parts();
    let headers = parts.headers;
    let limit = peers.parts.settings.max_body_bytes;
    let deadline = peers.parts.body_read_timeout;
    let body = match tokio::time::timeout(deadline, read_limited(body, &headers, limit)).await {
        Ok(Ok(body)) => body,
        Ok(Err(error)) => return peers.refused(Refusal(error, "too_large")),
        Err(_) => {
            let error = ApiError::request_timeout(crate::clock::whole_ms(deadline));
            return peers.refused(Refusal(error, "slow_body"));
        }
    };
    match peers.answer(&headers, &body, source).await {
        Ok((answer, form)) => {
            peers.count("in", "ok");
            peers.signed_answer(answer, form)
        }
        Err(refusal) => peers.refused(refusal),
    }
}

/// The refusal of a signature already spent, or of a full replay table.
fn spend_refusal(refusal: SpendRefusal) -> Refusal {
    match refusal {
        SpendRefusal::Replayed => Refusal(
            ApiError::conflict("this signature was used within the last 5 minutes"),
            "replayed",
        ),
        SpendRefusal::Full => Refusal(
            ApiError::unavailable("the replay table is full; retry later", 60_000),
            "replay_table_full",
        ),
    }
}

/// A peer entry as gossip lists it, if acceptable. `last_seen_ms` (ours,
/// the spec's) is taken when present, else the entry counts as seen now —
/// the reference SDK refreshes merged peers the same way.
fn listed_peer(entry: &Value, now: u64) -> Option<Peer> {
    let text = |key: &str| entry.get(key).and_then(Value::as_str);
    let seen = entry
        .get("last_seen_ms")
        .and_then(Value::as_u64)
        .unwrap_or(now);
    Peer::checked(
        text("node_id")?,
        text("endpoint")?,
        text("region").unwrap_or(""),
        seen,
    )
}

/// Whether `endpoint` is not a plain http(s) URL or names a non-public IP
/// literal (names are checked by the client's resolver as it connects).
fn names_a_private_address(endpoint: &str) -> bool {
    let Ok(url) = reqwest::Url::parse(endpoint) else {
        return true;
    };
    let Some(host) = url.host_str() else {
        return true;
    };
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    literal.parse::<IpAddr>().is_ok_and(|ip| !is_public(ip))
}

async fn read_bounded(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, ()> {
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|_| ())? {
        if bytes.len() + chunk.len() > limit {
            return Err(());
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}
