//! Registry credentials, from where operators already keep them:
//!
//! 1. `IICP_HOST_REGISTRY_USERNAME` and `IICP_HOST_REGISTRY_PASSWORD`, when
//!    both are set (used for every registry the node pulls from or pushes to);
//! 2. the `auths` of a docker-style config: `$REGISTRY_AUTH_FILE` (podman,
//!    skopeo), else `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`,
//!    matched by registry host (with or without a scheme);
//! 3. otherwise anonymous.
//!
//! Credential helpers (`credsStore`, `credHelpers`) are not run: a node
//! should not execute programs named in a file to start; write the entry
//! into `auths` (`docker login` with no helper does) or use the variables.

use std::path::PathBuf;

use base64::Engine as _;
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;

/// The username variable.
pub const USERNAME_ENV: &str = "IICP_HOST_REGISTRY_USERNAME";
/// The password variable.
pub const PASSWORD_ENV: &str = "IICP_HOST_REGISTRY_PASSWORD";
/// A docker config larger than this is refused rather than read.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

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

/// The credentials for `registry` (`host[:port]`).
pub fn credentials(registry: &str) -> Result<RegistryAuth, String> {
    if let (Ok(username), Ok(password)) = (std::env::var(USERNAME_ENV), std::env::var(PASSWORD_ENV))
    {
        return Ok(RegistryAuth::Basic(username, password));
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
}
