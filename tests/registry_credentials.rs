//! Registry credentials go only to the registry they are for (issue 19
//! part 6), over real sockets: a test-side "registry" whose challenge names
//! a token realm on another host gets the realm no credentials, a registry
//! the credentials are not for gets none, and the environment pair without
//! the host it is for is refused. The real registry with htpasswd still
//! works: see `tests/oci.rs`.

mod common;

use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::IntoResponse;

const USER: &str = "alice";
const PASSWORD: &str = "operator-s3cret-7f2c";

/// What a listener was sent: each request's path and headers.
type Seen = Arc<Mutex<Vec<(String, HeaderMap)>>>;

/// Serves every request on `bind` with `status`, `headers` and `body`,
/// recording what it was sent; returns `host:port`.
async fn recording_server(
    bind: &str,
    status: StatusCode,
    headers: Vec<(&'static str, String)>,
    body: &'static str,
) -> (String, Seen) {
    let seen: Seen = Arc::default();
    let record = seen.clone();
    let app = axum::Router::new().fallback(move |uri: Uri, request_headers: HeaderMap| {
        let record = record.clone();
        let headers = headers.clone();
        async move {
            record
                .lock()
                .unwrap()
                .push((uri.to_string(), request_headers));
            let mut response = (status, body).into_response();
            for (name, value) in headers {
                response.headers_mut().insert(name, value.parse().unwrap());
            }
            response
        }
    });
    let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, seen)
}

/// A token server on `host` that hands out a token to anyone.
async fn token_realm(host: &str) -> (String, Seen) {
    recording_server(
        &format!("{host}:0"),
        StatusCode::OK,
        vec![("content-type", "application/json".into())],
        r#"{"token":"t0ken","access_token":"t0ken"}"#,
    )
    .await
}

/// A registry on loopback that answers everything 401 with `challenge`.
async fn challenging_registry(challenge: String) -> (String, Seen) {
    recording_server(
        "127.0.0.1:0",
        StatusCode::UNAUTHORIZED,
        vec![
            ("www-authenticate", challenge),
            ("content-type", "application/json".into()),
        ],
        r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
    )
    .await
}

/// `iicp-host run --plugin oci://REGISTRY/team/echo:stable` with `env` and
/// nothing else credential-like in its environment; it must refuse to
/// start (nothing here serves a plugin).
fn run_pulling(registry: &str, env: &[(&str, &str)]) -> Output {
    let cache = tempfile::tempdir().unwrap();
    let state = common::fresh_state_dir();
    let reference = format!("oci://{registry}/team/echo:stable");
    let output = Command::new(env!("CARGO_BIN_EXE_iicp-host"))
        .args(["run", "--plugin", &reference, "--listen", "127.0.0.1:0"])
        .arg("--cache-dir")
        .arg(cache.path())
        .arg("--state-dir")
        .arg(state)
        .env_remove("IICP_HOST_REGISTRY_USERNAME")
        .env_remove("IICP_HOST_REGISTRY_PASSWORD")
        .env_remove("IICP_HOST_REGISTRY_HOST")
        .env("REGISTRY_AUTH_FILE", "/nonexistent/auth.json")
        .env("DOCKER_CONFIG", "/nonexistent")
        .envs(env.iter().copied())
        .output()
        .expect("run iicp-host");
    assert!(
        !output.status.success(),
        "started without a plugin: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Whether anything `seen` holds carries the operator's credentials.
fn got_credentials(seen: &Seen) -> bool {
    use base64::Engine as _;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    seen.lock().unwrap().iter().any(|(uri, headers)| {
        let text = format!("{uri} {headers:?}");
        headers.contains_key("authorization") || text.contains(&basic) || text.contains(PASSWORD)
    })
}

/// The attack: a registry's challenge names a token realm on another host
/// (here 127.0.0.2, over plain HTTP); the operator's credentials, which are
/// for that registry, must not be sent there.
#[tokio::test(flavor = "multi_thread")]
async fn a_token_realm_on_another_host_gets_no_credentials() {
    let (realm, realm_seen) = token_realm("127.0.0.2").await;
    let (registry, registry_seen) = challenging_registry(format!(
        r#"Bearer realm="http://{realm}/token",service="registry""#
    ))
    .await;
    let auth_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        auth_file.path(),
        format!(r#"{{"auths":{{"{registry}":{{"username":"{USER}","password":"{PASSWORD}"}}}}}}"#),
    )
    .unwrap();
    for env in [
        vec![
            ("IICP_HOST_REGISTRY_USERNAME", USER),
            ("IICP_HOST_REGISTRY_PASSWORD", PASSWORD),
            ("IICP_HOST_REGISTRY_HOST", registry.as_str()),
        ],
        vec![("REGISTRY_AUTH_FILE", auth_file.path().to_str().unwrap())],
    ] {
        let output = run_pulling(&registry, &env);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!stderr.contains(PASSWORD), "{stderr}");
        assert!(
            !registry_seen.lock().unwrap().is_empty(),
            "the registry was never asked: {stderr}"
        );
        assert!(
            !got_credentials(&realm_seen),
            "the realm on another host received the credentials: {:?}",
            realm_seen.lock().unwrap()
        );
    }
}

/// Credentials for registry A are never offered to registry B, however B
/// challenges.
#[tokio::test(flavor = "multi_thread")]
async fn credentials_for_one_registry_never_reach_another() {
    let (registry_a, _) = challenging_registry(r#"Basic realm="a""#.into()).await;
    let (registry_b, b_seen) = challenging_registry(r#"Basic realm="b""#.into()).await;
    let auth_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        auth_file.path(),
        format!(
            r#"{{"auths":{{"{registry_a}":{{"username":"{USER}","password":"{PASSWORD}"}}}}}}"#
        ),
    )
    .unwrap();
    let output = run_pulling(
        &registry_b,
        &[
            ("IICP_HOST_REGISTRY_USERNAME", USER),
            ("IICP_HOST_REGISTRY_PASSWORD", PASSWORD),
            ("IICP_HOST_REGISTRY_HOST", registry_a.as_str()),
            ("REGISTRY_AUTH_FILE", auth_file.path().to_str().unwrap()),
        ],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !b_seen.lock().unwrap().is_empty(),
        "registry B was never asked: {stderr}"
    );
    assert!(
        !got_credentials(&b_seen),
        "registry B received A's credentials: {:?}",
        b_seen.lock().unwrap()
    );
}

/// A token realm on the registry's own host (loopback here) does get the
/// credentials meant for that registry: the check withholds them only from
/// other hosts.
#[tokio::test(flavor = "multi_thread")]
async fn a_token_realm_on_the_registry_host_gets_its_credentials() {
    let (realm, realm_seen) = token_realm("127.0.0.1").await;
    let (registry, _) = challenging_registry(format!(
        r#"Bearer realm="http://{realm}/token",service="registry""#
    ))
    .await;
    run_pulling(
        &registry,
        &[
            ("IICP_HOST_REGISTRY_USERNAME", USER),
            ("IICP_HOST_REGISTRY_PASSWORD", PASSWORD),
            ("IICP_HOST_REGISTRY_HOST", registry.as_str()),
        ],
    );
    assert!(
        got_credentials(&realm_seen),
        "the registry's own realm got no credentials: {:?}",
        realm_seen.lock().unwrap()
    );
}

/// The environment pair without the registry it is for is refused with one
/// line, before anything is sent anywhere.
#[tokio::test(flavor = "multi_thread")]
async fn the_environment_pair_needs_the_registry_it_is_for() {
    let (registry, seen) = challenging_registry(r#"Basic realm="r""#.into()).await;
    let output = run_pulling(
        &registry,
        &[
            ("IICP_HOST_REGISTRY_USERNAME", USER),
            ("IICP_HOST_REGISTRY_PASSWORD", PASSWORD),
        ],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line:\n{stderr}");
    assert!(lines[0].contains("IICP_HOST_REGISTRY_HOST"), "{stderr}");
    assert!(!stderr.contains(PASSWORD), "{stderr}");
    assert!(!got_credentials(&seen));
}
