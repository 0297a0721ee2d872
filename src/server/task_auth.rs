//! Task authentication (TASK-1, `protocol.md` §4.3) as one node-wide mode:
//!
//! * `open` (the default) — no credential needed, as the reference node and
//!   every default consumer expect (they send no `auth`);
//! * `node-token` — `auth.node_token` (or `auth.token`, or `Authorization:
//!   Bearer`) must equal, in constant time, a credential the operator
//!   granted: one of the `[auth.tokens]` tokens, or the node's own current
//!   directory-issued `node_token` (the spec's literal rule, on by default
//!   when a directory is configured; it rotates at every registration, and
//!   whoever holds it can also heartbeat as this node, so prefer
//!   `[auth.tokens]` and set `accept_directory_token = false`);
//! * `consumer-token` — `X-IICP-Consumer-Token`, signed by the directory's
//!   key ([`crate::protocol::consumer_token`]) for this node and intent; a
//!   caller without one may still present a node token as above. When no
//!   directory key has been fetched yet, consumer tokens cannot be checked
//!   and only node tokens are accepted (the §4.3 fallback).
//!
//! Per-plugin tenants ([`super::access`]) are checked after the mode and
//! compose with it: in `node-token` mode a tenant's token is itself an
//! operator-granted credential for its plugin; in `consumer-token` mode the
//! consumer token travels in its own header, the tenant token in `auth`.
//!
//! A refusal is 401 `unauthorized` whose `reason` and message say which
//! part failed (missing, invalid, which consumer-token claim, no key) and
//! never contain the token. Tokens are compared as SHA-256 digests in
//! constant time, and never logged.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::access::Tenant;
use crate::directory::directory_key::DirectoryKey;
use crate::directory::identity::{SharedCredentials, snapshot};
use crate::protocol::ApiError;
use crate::protocol::consumer_token::{self, TokenError};

/// The node-wide task authentication mode.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    serde::Deserialize,
    serde::Serialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum AuthMode {
    /// No credential needed.
    #[default]
    Open,
    /// An operator-granted token.
    NodeToken,
    /// A directory-signed consumer token, or an operator-granted token.
    ConsumerToken,
}

impl AuthMode {
    /// The configuration name.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::Open => "open",
            AuthMode::NodeToken => "node-token",
            AuthMode::ConsumerToken => "consumer-token",
        }
    }
}

/// Who a task's caller proved to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Nobody in particular (`open` mode).
    Anyone,
    /// The holder of an `[auth.tokens]` token, by its name.
    Operator(String),
    /// The holder of the node's directory-issued token.
    DirectoryToken,
    /// A consumer node vouched for by the directory (its `sub`).
    Consumer(String),
}

impl Caller {
    /// A name that scopes the caller's task ids; `None` for anyone, who
    /// proved nothing (the task route scopes those by what it can vouch for).
    pub fn scope(&self) -> Option<String> {
        match self {
            Caller::Anyone => None,
            Caller::Operator(name) => Some(format!("operator:{name}")),
            Caller::DirectoryToken => Some("node".to_string()),
            Caller::Consumer(sub) => Some(format!("consumer:{sub}")),
        }
    }
}

/// What a task presented.
#[derive(Debug, Clone, Copy, Default)]
pub struct Presented<'a> {
    /// `auth.node_token`, `auth.token` or the Bearer token.
    pub token: Option<&'a str>,
    /// `X-IICP-Consumer-Token`.
    pub consumer_token: Option<&'a str>,
}

/// Why a task was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No credential at all.
    Missing,
    /// A token that matches no granted credential.
    InvalidToken,
    /// A consumer token that failed a check.
    ConsumerToken(TokenError),
    /// A consumer token, but no directory key to check it with yet.
    KeyUnavailable,
}

impl AuthFailure {
    /// The 401 envelope.
    pub fn to_error(self, mode: AuthMode) -> ApiError {
        match self {
            AuthFailure::Missing => ApiError::unauthorized_because(
                "token_missing",
                match mode {
                    AuthMode::ConsumerToken => {
                        "this node needs an X-IICP-Consumer-Token or auth.node_token"
                    }
                    _ => "this node needs auth.node_token (or Authorization: Bearer)",
                },
            ),
            AuthFailure::InvalidToken => ApiError::unauthorized_because(
                "token_invalid",
                "auth.node_token is not a credential of this node",
            ),
            AuthFailure::ConsumerToken(error) => {
                ApiError::unauthorized_because(error.reason(), error.message())
            }
            AuthFailure::KeyUnavailable => ApiError::unauthorized_because(
                "directory_key_unavailable",
                "consumer tokens cannot be checked yet (no directory key); send auth.node_token",
            ),
        }
    }
}

/// The mode and the credentials it checks against.
pub struct TaskAuth {
    mode: AuthMode,
    operator_tokens: Vec<Tenant>,
    /// The node's directory credentials: its current token (when accepted)
    /// and its current node id (a consumer token's audience).
    directory: Option<SharedCredentials>,
    accept_directory_token: bool,
    directory_key: Option<Arc<DirectoryKey>>,
    node_id: String,
}

impl TaskAuth {
    /// The open mode.
    pub fn open() -> Self {
        Self {
            mode: AuthMode::Open,
            operator_tokens: Vec::new(),
            directory: None,
            accept_directory_token: false,
            directory_key: None,
            node_id: String::new(),
        }
    }

    /// `mode` with its credentials: `operator_tokens` (name, token), the
    /// directory's credentials and key when a directory is configured, and
    /// the node id for when it is not.
    pub fn new(
        mode: AuthMode,
        operator_tokens: &[(String, String)],
        directory: Option<SharedCredentials>,
        accept_directory_token: bool,
        directory_key: Option<Arc<DirectoryKey>>,
        node_id: &str,
    ) -> Self {
        Self {
            mode,
            operator_tokens: operator_tokens
                .iter()
                .map(|(name, token)| Tenant::new(name, token))
                .collect(),
            directory,
            accept_directory_token,
            directory_key,
            node_id: node_id.to_string(),
        }
    }

    /// The mode.
    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// Checks a task of `intent` at `now_unix`; `tenants` are the routed
    /// plugin's tenants, whose tokens also count as granted credentials.
    pub fn check(
        &self,
        presented: Presented<'_>,
        intent: &str,
        tenants: &[Tenant],
        now_unix: u64,
    ) -> Result<Caller, AuthFailure> {
        match self.mode {
            AuthMode::Open => Ok(Caller::Anyone),
            AuthMode::NodeToken => self.check_node_token(presented.token, tenants),
            AuthMode::ConsumerToken => match presented.consumer_token {
                None => self.check_node_token(presented.token, tenants),
                Some(consumer) => match self.directory_key.as_ref().and_then(|k| k.get()) {
                    Some(key) => self.check_consumer_token(consumer, &key, intent, now_unix),
                    // Without a key, a node token is the only way in.
                    None => self
                        .check_node_token(presented.token, tenants)
                        .map_err(|_| AuthFailure::KeyUnavailable),
                },
            },
        }
    }

    fn check_consumer_token(
        &self,
        token: &str,
        key: &ed25519_dalek::VerifyingKey,
        intent: &str,
        now_unix: u64,
    ) -> Result<Caller, AuthFailure> {
        let node_id = self
            .directory
            .as_ref()
            .map_or_else(|| self.node_id.clone(), |d| snapshot(d).node_id);
        match consumer_token::verify(token, key, &node_id, intent, now_unix) {
            Ok(claims) => Ok(Caller::Consumer(claims.sub)),
            Err(error) => {
                if error == TokenError::Signature
                    && let Some(directory_key) = &self.directory_key
                {
                    // Perhaps the directory rotated its key.
                    directory_key.request_refetch();
                }
                Err(AuthFailure::ConsumerToken(error))
            }
        }
    }

    /// Whether `token` is a granted credential: an operator token, the
    /// directory-issued token (when accepted), or a tenant token of the
    /// routed plugin. Every candidate is compared, without stopping early.
    fn check_node_token(
        &self,
        token: Option<&str>,
        tenants: &[Tenant],
    ) -> Result<Caller, AuthFailure> {
        let token = token
            .filter(|t| !t.is_empty())
            .ok_or(AuthFailure::Missing)?;
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut caller = None;
        for granted in self.operator_tokens.iter().chain(tenants) {
            if granted.matches(&digest) {
                caller = Some(Caller::Operator(granted.name().to_string()));
            }
        }
        if self.accept_directory_token
            && let Some(directory) = &self.directory
            && let Some(current) = snapshot(directory).node_token
        {
            let expected: [u8; 32] = Sha256::digest(current.as_bytes()).into();
            if bool::from(expected.ct_eq(&digest)) {
                caller = Some(Caller::DirectoryToken);
            }
        }
        caller.ok_or(AuthFailure::InvalidToken)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::RwLock;

    use crate::directory::identity::Credentials;

    fn credentials(token: &str) -> SharedCredentials {
        Arc::new(RwLock::new(Credentials {
            node_id: "node-a".into(),
            node_token: Some(token.into()),
            ..Credentials::default()
        }))
    }

    fn token(token: &str) -> Presented<'_> {
        Presented {
            token: Some(token),
            consumer_token: None,
        }
    }

    #[test]
    fn open_admits_anyone() {
        let auth = TaskAuth::open();
        assert_eq!(
            auth.check(Presented::default(), "i", &[], 0),
            Ok(Caller::Anyone)
        );
    }

    #[test]
    fn node_token_mode_accepts_granted_tokens_only() {
        let directory = credentials("dir-token");
        let auth = TaskAuth::new(
            AuthMode::NodeToken,
            &[("ops".into(), "ops-secret".into())],
            Some(directory.clone()),
            true,
            None,
            "node-a",
        );
        let tenants = [Tenant::new("acme", "acme-secret")];
        let check = |presented| auth.check(presented, "i", &tenants, 0);
        assert_eq!(
            check(token("ops-secret")),
            Ok(Caller::Operator("ops".into()))
        );
        assert_eq!(check(token("dir-token")), Ok(Caller::DirectoryToken));
        assert_eq!(
            check(token("acme-secret")),
            Ok(Caller::Operator("acme".into()))
        );
        assert_eq!(check(token("ops-secre")), Err(AuthFailure::InvalidToken));
        assert_eq!(check(token("")), Err(AuthFailure::Missing));
        assert_eq!(check(Presented::default()), Err(AuthFailure::Missing));
        // The token rotates with every registration: the old one stops working.
        directory.write().unwrap().node_token = Some("rotated".into());
        assert_eq!(check(token("dir-token")), Err(AuthFailure::InvalidToken));
        let without_directory_token = TaskAuth::new(
            AuthMode::NodeToken,
            &[],
            Some(directory),
            false,
            None,
            "node-a",
        );
        assert_eq!(
            without_directory_token.check(token("rotated"), "i", &[], 0),
            Err(AuthFailure::InvalidToken)
        );
    }

    #[test]
    fn without_a_key_consumer_tokens_fall_back_to_node_tokens() {
        let auth = TaskAuth::new(
            AuthMode::ConsumerToken,
            &[("ops".into(), "ops-secret".into())],
            Some(credentials("dir-token")),
            true,
            Some(Arc::new(DirectoryKey::default())),
            "node-a",
        );
        let consumer = |token| Presented {
            token,
            consumer_token: Some("anything.00"),
        };
        assert_eq!(
            auth.check(consumer(None), "i", &[], 0),
            Err(AuthFailure::KeyUnavailable)
        );
        assert_eq!(
            auth.check(consumer(Some("ops-secret")), "i", &[], 0),
            Ok(Caller::Operator("ops".into()))
        );
        assert_eq!(
            auth.check(token("dir-token"), "i", &[], 0),
            Ok(Caller::DirectoryToken)
        );
    }
}
