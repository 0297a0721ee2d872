//! Registry credentials, from where operators already keep them, and the
//! rule for where they may go.
//!
//! Where they come from, for one registry (`host[:port]`) at a time:
//!
//! 1. `IICP_HOST_REGISTRY_USERNAME` and `IICP_HOST_REGISTRY_PASSWORD`, only
//!    for the registry `IICP_HOST_REGISTRY_HOST` names. The pair without the
//!    host is refused with one line: it used to be offered to every registry
//!    a plugin reference named.
//! 2. the `auths` of a docker-style config: `$REGISTRY_AUTH_FILE` (podman,
//!    skopeo), else `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`,
//!    matched by registry host and port (with or without a scheme) — the
//!    docker model, per registry, so no new file format;
//! 3. otherwise anonymous.
//!
//! Credential helpers (`credsStore`, `credHelpers`) are not run: a node
//! should not execute programs named in a file to start; write the entry
//! into `auths` (`docker login` with no helper does) or use the variables.
//!
//! Where they go ([`offer`], issue 19 part 6): only to the registry they are
//! for, and to the token realm its challenge names only when that realm is
//! on the same host (any port) over HTTPS, or over plain HTTP on loopback.
//! The token exchange is made here, not by the OCI client, so the realm is
//! checked on the very challenge whose realm gets the credentials; the OCI
//! client then only ever holds the token. A realm elsewhere gets nothing:
//! the pull goes on anonymously (public images still work) and one warning
//! says why. Docker Hub, whose realm is `auth.docker.io`, is therefore
//! pulled from anonymously. A registry that asks for Basic auth itself gets
//! its credentials from the OCI client, which asks `/v2/` again; were that
//! second answer to name a realm, the realm would be that registry's
//! choice, and a registry holding its own credentials could send them
//! anywhere regardless.

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use oci_client::secrets::RegistryAuth;
use oci_client::{Reference, RegistryOperation};
use reqwest::header::WWW_AUTHENTICATE;
use serde::Deserialize;

/// The username variable.
pub const USERNAME_ENV: &str = "IICP_HOST_REGISTRY_USERNAME";
/// The password variable.
pub const PASSWORD_ENV: &str = "IICP_HOST_REGISTRY_PASSWORD";
/// The variable naming the one registry (`host[:port]`) the pair is for.
pub const HOST_ENV: &str = "IICP_HOST_REGISTRY_HOST";
/// A docker config larger than this is refused rather than read.
const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// A token service's answer larger than this is refused.
const MAX_TOKEN_ANSWER_BYTES: usize = 64 << 10;

#[derive(Deserialize, Default)]
struct DockerConfig {
    #[serde(default)]
    auths: std::collections::BTreeMap<String, DockerAuth>,
}

#[derive(Deserialize)]
struct DockerAuth {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

/// The credentials kept for `registry` (`host[:port]`).
pub fn credentials(registry: &str) -> Result<RegistryAuth, String> {
    if let (Ok(username), Ok(password)) = (std::env::var(USERNAME_ENV), std::env::var(PASSWORD_ENV))
    {
        let Ok(host) = std::env::var(HOST_ENV) else {
            return Err(format!(
                "{USERNAME_ENV} and {PASSWORD_ENV} are set without {HOST_ENV} naming the one \
                 registry (host[:port]) they are for; set it, or keep the credentials in the \
                 docker config's auths"
            ));
        };
        if registry_of_key(host.trim()) == registry {
            return Ok(RegistryAuth::Basic(username, password));
        }
    }
    let Some(path) = docker_config_path() else {
        return Ok(RegistryAuth::Anonymous);
    };
    let config = match read_bounded(&path) {
        Ok(Some(text)) => serde_json::from_str::<DockerConfig>(&text)
            .map_err(|e| format!("{}: {e}", path.display()))?,
        Ok(None) => return Ok(RegistryAuth::Anonymous),
        Err(error) => return Err(format!("{}: {error}", path.display())),
    };
    let entry = config
        .auths
        .iter()
        .find(|(key, _)| registry_of_key(key) == registry)
        .map(|(_, entry)| entry);
    match entry {
        None => Ok(RegistryAuth::Anonymous),
        Some(DockerAuth {
            username: Some(username),
            password: Some(password),
            ..
        }) => Ok(RegistryAuth::Basic(username.clone(), password.clone())),
        Some(DockerAuth {
            auth: Some(encoded),
            ..
        }) => {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .ok_or_else(|| {
                    format!("{}: auths.{registry}.auth is not base64", path.display())
                })?;
            let (username, password) = decoded.split_once(':').ok_or_else(|| {
                format!(
                    "{}: auths.{registry}.auth is not username:password",
                    path.display()
                )
            })?;
            Ok(RegistryAuth::Basic(
                username.to_string(),
                password.to_string(),
            ))
        }
        Some(_) => Ok(RegistryAuth::Anonymous),
    }
}

fn docker_config_path() -> Option<PathBuf> {
    if let Some(file) = std::env::var_os("REGISTRY_AUTH_FILE") {
        return Some(PathBuf::from(file));
    }
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".docker/config.json"))
}

/// The file's text; `None` when there is no file.
fn read_bounded(path: &PathBuf) -> Result<Option<String>, String> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
        Ok(meta) if meta.len() > MAX_CONFIG_BYTES => {
            return Err(format!("larger than {MAX_CONFIG_BYTES} bytes"));
        }
        Ok(_) => {}
    }
    std::fs::read_to_string(path)
        .map(Some)
        .map_err(|e| e.to_string())
}

/// What to hand the OCI client for `operation` on `reference`, whose
/// registry is spoken to over `scheme`, given the `credentials` kept for
/// it: a bearer token fetched here when the registry's challenge names a
/// token realm the credentials may go to (see the module docs), the
/// credentials themselves when the registry asks for Basic auth, else
/// nothing. Each call is bounded by `timeout`.
pub async fn offer(
    credentials: &RegistryAuth,
    scheme: &str,
    reference: &Reference,
    operation: RegistryOperation,
    timeout: Duration,
) -> Result<RegistryAuth, String> {
    let RegistryAuth::Basic(username, password) = credentials else {
        return Ok(credentials.clone());
    };
    let registry = reference.resolve_registry();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .build()
        .map_err(|e| format!("cannot build the registry client: {e}"))?;
    let answer = http
        .get(format!("{scheme}://{registry}/v2/"))
        .send()
        .await
        .map_err(|e| format!("cannot reach {registry}: {}", crate::oci::one_line(&e)))?;
    let challenge = answer
        .headers()
        .get(WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let Some(challenge) = BearerChallenge::parse(&challenge) else {
        return Ok(credentials.clone());
    };
    let Some(realm) = realm_for(&challenge.realm, registry) else {
        tracing::warn!(
            registry,
            realm = %challenge.realm,
            "registry credentials withheld: the token realm the registry names is not on its \
             host over HTTPS (or loopback); asking anonymously"
        );
        return Ok(RegistryAuth::Anonymous);
    };
    let scope = match operation {
        RegistryOperation::Pull => format!("repository:{}:pull", reference.repository()),
        RegistryOperation::Push => format!("repository:{}:pull,push", reference.repository()),
    };
    let mut query = vec![("scope", scope)];
    if let Some(service) = challenge.service {
        query.push(("service", service));
    }
    let mut answer = http
        .get(realm)
        .query(&query)
        .basic_auth(username, Some(password))
        .send()
        .await
        .map_err(|e| {
            format!(
                "cannot reach {registry}'s token service: {}",
                crate::oci::one_line(&e)
            )
        })?;
    if !answer.status().is_success() {
        return Err(format!(
            "the registry's token service refused the credentials ({}); check the credentials \
             ({USERNAME_ENV} / {PASSWORD_ENV} / {HOST_ENV} or the docker config)",
            answer.status()
        ));
    }
    let mut body = Vec::new();
    while let Some(chunk) = answer
        .chunk()
        .await
        .map_err(|e| format!("reading the token: {}", crate::oci::one_line(&e)))?
    {
        if body.len() + chunk.len() > MAX_TOKEN_ANSWER_BYTES {
            return Err(format!(
                "the registry's token answer is larger than {MAX_TOKEN_ANSWER_BYTES} bytes"
            ));
        }
        body.extend_from_slice(&chunk);
    }
    #[derive(Deserialize)]
    struct TokenAnswer {
        token: Option<String>,
        access_token: Option<String>,
    }
    let token = serde_json::from_slice::<TokenAnswer>(&body)
        .ok()
        .and_then(|t| t.token.or(t.access_token))
        .filter(|t| !t.is_empty())
        .ok_or("the registry's token service answered without a token")?;
    Ok(RegistryAuth::Bearer(token))
}

/// A `WWW-Authenticate: Bearer realm="…",service="…"` challenge.
struct BearerChallenge {
    realm: String,
    service: Option<String>,
}

impl BearerChallenge {
    /// The challenge in `header`, if it is a Bearer one with a realm.
    fn parse(header: &str) -> Option<Self> {
        let (scheme, params) = header.trim().split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let mut realm = None;
        let mut service = None;
        for (name, value) in auth_params(params) {
            if name.eq_ignore_ascii_case("realm") {
                realm = Some(value);
            } else if name.eq_ignore_ascii_case("service") {
                service = Some(value);
            }
        }
        Some(Self {
            realm: realm?,
            service,
        })
    }
}

/// `name="value", name=token, …` (RFC 9110 §11.2) as pairs.
fn auth_params(text: &str) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    let mut rest = text.trim();
    while let Some((name, after)) = rest.split_once('=') {
        let name = name.trim().trim_start_matches(',').trim().to_string();
        let after = after.trim_start();
        let (value, remaining) = if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, escaped)) = chars.next() {
                            value.push(escaped);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => value.push(c),
                }
            }
            (value, &quoted[end.min(quoted.len())..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        pairs.push((name, value));
        rest = remaining.trim_start().trim_start_matches(',');
    }
    pairs
}

/// The realm URL, if credentials for `registry` may go there: the same
/// host, over HTTPS or over plain HTTP on loopback.
fn realm_for(realm: &str, registry: &str) -> Option<reqwest::Url> {
    let realm = reqwest::Url::parse(realm).ok()?;
    let registry = reqwest::Url::parse(&format!("https://{registry}/")).ok()?;
    let host = realm.host_str()?;
    let same_host = Some(host) == registry.host_str();
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = bare.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback());
    let transport = realm.scheme() == "https" || (realm.scheme() == "http" && loopback);
    let plain = realm.username().is_empty() && realm.password().is_none();
    (same_host && transport && plain).then_some(realm)
}

/// `https://host:port/v1/` → `host:port`.
fn registry_of_key(key: &str) -> &str {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    key.split('/').next().unwrap_or(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_config_keys_match_by_registry() {
        assert_eq!(
            registry_of_key("https://index.docker.io/v1/"),
            "index.docker.io"
        );
        assert_eq!(registry_of_key("127.0.0.1:5000"), "127.0.0.1:5000");
        assert_eq!(registry_of_key("http://localhost:5000"), "localhost:5000");
    }

    #[test]
    fn a_realm_gets_credentials_only_on_the_registry_host_over_https_or_loopback() {
        let ok = |realm: &str, registry: &str| realm_for(realm, registry).is_some();
        assert!(ok("https://ghcr.io/token", "ghcr.io"));
        assert!(ok(
            "https://Registry.Example:5001/auth",
            "registry.example:5000"
        ));
        assert!(ok("http://127.0.0.1:9000/token", "127.0.0.1:5000"));
        assert!(ok("http://[::1]:9000/token", "[::1]:5000"));
        assert!(!ok("http://127.0.0.2:9000/token", "127.0.0.1:5000"));
        assert!(!ok("https://auth.docker.io/token", "registry-1.docker.io"));
        assert!(!ok("http://registry.example/token", "registry.example"));
        assert!(!ok("https://u:p@ghcr.io/token", "ghcr.io"));
        assert!(!ok("https://ghcr.io.evil.example/token", "ghcr.io"));
        assert!(!ok("not a url", "ghcr.io"));
    }

    #[test]
    fn bearer_challenges_are_read() {
        let challenge = BearerChallenge::parse(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a:pull""#,
        )
        .unwrap();
        assert_eq!(challenge.realm, "https://auth.example/token");
        assert_eq!(challenge.service.as_deref(), Some("registry.example"));
        let bare = BearerChallenge::parse("bearer realm=https://a.example/t, service=s").unwrap();
        assert_eq!(bare.realm, "https://a.example/t");
        assert_eq!(bare.service.as_deref(), Some("s"));
        let escaped = BearerChallenge::parse(r#"Bearer realm="https://a.example/\"t""#).unwrap();
        assert_eq!(escaped.realm, r#"https://a.example/"t"#);
        assert!(BearerChallenge::parse(r#"Basic realm="r""#).is_none());
        assert!(BearerChallenge::parse("Bearer service=s").is_none());
        assert!(BearerChallenge::parse("").is_none());
    }
}
