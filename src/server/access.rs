//! Per-plugin access control for tenants: a plugin is open, or serves only
//! callers presenting one of its tenants' tokens — as `auth.node_token`
//! (the spec's field), `auth.token` (what SDK clients send) or
//! `Authorization: Bearer`. Tokens are kept as SHA-256 digests and compared
//! in constant time against every tenant, so neither timing nor length
//! tells a caller how close it came. Tokens are never logged.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Who may call a plugin.
#[derive(Debug, Clone, Default)]
pub enum AccessPolicy {
    /// Anyone.
    #[default]
    Open,
    /// Only holders of one of these tenants' tokens.
    Tenants(Vec<Tenant>),
}

/// A tenant: a name for logs and metrics, and its token's digest.
#[derive(Clone)]
pub struct Tenant {
    name: String,
    digest: [u8; 32],
}

impl std::fmt::Debug for Tenant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tenant")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Tenant {
    /// A tenant called `name` holding `token`.
    pub fn new(name: &str, token: &str) -> Self {
        Self {
            name: name.to_string(),
            digest: Sha256::digest(token.as_bytes()).into(),
        }
    }

    /// The tenant's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether `digest` (SHA-256 of a presented token) is this tenant's
    /// token, compared in constant time.
    pub fn matches(&self, digest: &[u8; 32]) -> bool {
        bool::from(self.digest.ct_eq(digest))
    }
}

/// Why a caller was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No token was presented.
    Missing,
    /// The token matches no tenant.
    Invalid,
}

impl AccessPolicy {
    /// The tenant the caller proved to be (`None` for an open plugin).
    pub fn admit(&self, presented: Option<&str>) -> Result<Option<&Tenant>, Refusal> {
        let AccessPolicy::Tenants(tenants) = self else {
            return Ok(None);
        };
        let token = presented
            .filter(|t| !t.is_empty())
            .ok_or(Refusal::Missing)?;
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // Check every tenant, without stopping at a match.
        let mut matched = None;
        for tenant in tenants {
            if tenant.matches(&digest) {
                matched = Some(tenant);
            }
        }
        matched.map(Some).ok_or(Refusal::Invalid)
    }
}

/// The Bearer token of an `Authorization` header value.
pub fn bearer(header: Option<&str>) -> Option<&str> {
    let value = header?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_plugins_admit_anyone() {
        assert_eq!(
            AccessPolicy::Open.admit(None).map(|t| t.is_none()),
            Ok(true)
        );
    }

    #[test]
    fn tenants_need_their_own_token() {
        let policy = AccessPolicy::Tenants(vec![
            Tenant::new("acme", "a-secret"),
            Tenant::new("globex", "g-secret"),
        ]);
        assert_eq!(
            policy.admit(Some("g-secret")).unwrap().unwrap().name(),
            "globex"
        );
        assert_eq!(
            policy.admit(Some("a-secret")).unwrap().unwrap().name(),
            "acme"
        );
        assert_eq!(policy.admit(Some("a-secre")).unwrap_err(), Refusal::Invalid);
        assert_eq!(policy.admit(Some("")).unwrap_err(), Refusal::Missing);
        assert_eq!(policy.admit(None).unwrap_err(), Refusal::Missing);
    }

    #[test]
    fn bearer_headers() {
        assert_eq!(bearer(Some("Bearer abc")), Some("abc"));
        assert_eq!(bearer(Some("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(Some("Basic abc")), None);
        assert_eq!(bearer(None), None);
    }

    #[test]
    fn debug_output_hides_the_digest() {
        let text = format!("{:?}", Tenant::new("acme", "secret"));
        assert!(text.contains("acme") && !text.contains("digest"));
    }
}
