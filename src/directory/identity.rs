//! The node's identity and its directory credentials.
//!
//! The node id, the last `node_token`/`node_hmac_key` and the IICP-CX key
//! survive restarts in a state directory (directory 0700, files 0600), so
//! the directory keeps the node's identity, `current_node_token` proves
//! ownership when the node registers again, and consumers holding the
//! advertised CX key can still reach it. Stored credentials are used only
//! with the same directory URL and node id they were issued for.
//!
//! Keys: every successful REGISTER replaces token and directory-issued key
//! together. An operator-provisioned key (from the environment) is kept
//! beside it: it signs pricing declarations, as the reference SDK does for
//! the production directory; challenge responses and credit receipts use the
//! key the directory issued, since that is the key it verifies them with
//! (`protocol.md` §10 #3), falling back to the operator key when the
//! directory issued none.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::private_files;
use crate::protocol::confidentiality::CxKey;

const NODE_ID_FILE: &str = "node_id";
const CREDENTIALS_FILE: &str = "directory.json";
const CX_KEY_FILE: &str = "cx_key.json";
const MAX_NODE_ID_BYTES: usize = 36;

/// Live credentials, replaced atomically on every registration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// The node id the directory knows.
    pub node_id: String,
    /// The last `node_token` issued.
    pub node_token: Option<String>,
    /// The last `node_hmac_key` issued by the directory.
    pub directory_hmac_key: Option<String>,
    /// The operator-provisioned key, if configured.
    pub operator_hmac_key: Option<String>,
}

impl Credentials {
    /// The key the directory verifies challenges and receipts with.
    pub fn verification_key(&self) -> Option<&str> {
        self.directory_hmac_key
            .as_deref()
            .or(self.operator_hmac_key.as_deref())
    }

    /// The key pricing declarations are signed with (SDK form).
    pub fn pricing_key(&self) -> Option<&str> {
        self.operator_hmac_key
            .as_deref()
            .or(self.directory_hmac_key.as_deref())
    }
}

/// Credentials shared by the lifecycle, the heartbeat and the receipt sender.
pub type SharedCredentials = Arc<RwLock<Credentials>>;

/// Reads a snapshot of shared credentials.
pub fn snapshot(shared: &SharedCredentials) -> Credentials {
    shared.read().unwrap_or_else(|p| p.into_inner()).clone()
}

#[derive(Serialize, Deserialize)]
struct StoredCredentials {
    directory_url: String,
    node_id: String,
    node_token: String,
    #[serde(default)]
    node_hmac_key: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct StoredCxKey {
    algorithm: String,
    /// The X25519 secret, base64url.
    private_key: String,
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    /// Opens (creating, mode 0700) the state directory.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        private_files::create_dir(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// The node id: `configured` if given, else the stored one, else a new
    /// UUID. Whatever is chosen is stored for the next start.
    pub fn node_id(&self, configured: Option<&str>) -> std::io::Result<String> {
        let path = self.dir.join(NODE_ID_FILE);
        let stored = fs::read_to_string(&path)
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| valid_node_id(s));
        let node_id = match (configured, stored) {
            (Some(configured), _) => configured.to_string(),
            (None, Some(stored)) => return Ok(stored),
            (None, None) => uuid::Uuid::new_v4().to_string(),
        };
        private_files::write(&path, &[node_id.as_bytes()])?;
        Ok(node_id)
    }

    /// The IICP-CX key: the stored one, else a new one stored for the next
    /// start. A stored file that is not a key is an error naming the file,
    /// never silently replaced: consumers know its public half.
    pub fn cx_key(&self) -> std::io::Result<CxKey> {
        let path = self.dir.join(CX_KEY_FILE);
        match fs::read(&path) {
            Ok(bytes) => parse_cx_key(&bytes).ok_or_else(|| {
                std::io::Error::other(format!(
                    "{} is not an X25519 key file; restore it or delete it to make a new key",
                    path.display()
                ))
            }),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                let key = CxKey::generate();
                let stored = StoredCxKey {
                    algorithm: "X25519".into(),
                    private_key: URL_SAFE_NO_PAD.encode(key.secret_bytes()),
                };
                let bytes = serde_json::to_vec_pretty(&stored).map_err(std::io::Error::other)?;
                private_files::write(&path, &[&bytes])?;
                Ok(key)
            }
            Err(error) => Err(error),
        }
    }

    /// Where `file` lives in the state directory.
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// A random 256-bit secret (hex) stored in `file`: the stored one, else
    /// a new one stored for the next start. A stored value that is not 64
    /// hex characters is replaced.
    pub fn secret(&self, file: &str) -> std::io::Result<String> {
        let path = self.dir.join(file);
        if let Ok(stored) = fs::read_to_string(&path) {
            let stored = stored.trim();
            if stored.len() == 64 && stored.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Ok(stored.to_string());
            }
        }
        let secret = random_secret();
        private_files::write(&path, &[secret.as_bytes()])?;
        Ok(secret)
    }

    /// The token and key last issued by `directory_url` to `node_id`.
    pub fn credentials(
        &self,
        directory_url: &str,
        node_id: &str,
    ) -> Option<(String, Option<String>)> {
        let bytes = fs::read(self.dir.join(CREDENTIALS_FILE)).ok()?;
        let stored: StoredCredentials = serde_json::from_slice(&bytes).ok()?;
        (stored.directory_url == directory_url && stored.node_id == node_id)
            .then_some((stored.node_token, stored.node_hmac_key))
    }

    /// Stores the credentials just issued.
    pub fn save_credentials(
        &self,
        directory_url: &str,
        credentials: &Credentials,
    ) -> std::io::Result<()> {
        let Some(node_token) = credentials.node_token.clone() else {
            return Ok(());
        };
        let stored = StoredCredentials {
            directory_url: directory_url.to_string(),
            node_id: credentials.node_id.clone(),
            node_token,
            node_hmac_key: credentials.directory_hmac_key.clone(),
        };
        let bytes = serde_json::to_vec_pretty(&stored).map_err(std::io::Error::other)?;
        private_files::write(&self.dir.join(CREDENTIALS_FILE), &[&bytes])
    }
}

fn parse_cx_key(bytes: &[u8]) -> Option<CxKey> {
    let stored: StoredCxKey = serde_json::from_slice(bytes).ok()?;
    let secret = URL_SAFE_NO_PAD.decode(stored.private_key).ok()?;
    (stored.algorithm == "X25519")
        .then(|| secret.try_into().ok().map(CxKey::from_secret_bytes))
        .flatten()
}

/// 32 bytes from the operating system's generator, as hex.
pub fn random_secret() -> String {
    use aes_gcm::aead::OsRng;
    use aes_gcm::aead::rand_core::RngCore;
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// [`valid_node_id`], with the rule spelled out for an operator; the caller
/// names where the id came from (`node.node_id`, `--node-id`).
pub fn check_node_id(id: &str) -> Result<(), String> {
    if valid_node_id(id) {
        Ok(())
    } else {
        Err(format!(
            "{id:?} must be 1-36 characters of letters, digits, '.', '_', ':', '-', starting with a letter or digit"
        ))
    }
}

/// The Rust directory's node id rule: ≤ 36 chars of `[A-Za-z0-9._:-]`,
/// starting alphanumeric.
pub fn valid_node_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_NODE_ID_BYTES
        && id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'))
}

/// The default state directory: `$XDG_STATE_HOME/iicp-host` or
/// `$HOME/.local/state/iicp-host`.
pub fn default_state_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".local/state")))
        .map(|base| base.join("iicp-host"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_is_stable_and_credentials_are_scoped() {
        let temp = std::env::temp_dir().join(format!("iicp-state-test-{}", std::process::id()));
        let state = StateDir::open(&temp).unwrap();
        let first = state.node_id(None).unwrap();
        assert!(valid_node_id(&first));
        assert_eq!(state.node_id(None).unwrap(), first);
        assert_eq!(state.node_id(Some("custom-1")).unwrap(), "custom-1");
        assert_eq!(state.node_id(None).unwrap(), "custom-1");

        let credentials = Credentials {
            node_id: "custom-1".into(),
            node_token: Some("tok".into()),
            directory_hmac_key: Some("key".into()),
            operator_hmac_key: Some("operator".into()),
        };
        state.save_credentials("http://dir", &credentials).unwrap();
        assert_eq!(
            state.credentials("http://dir", "custom-1"),
            Some(("tok".to_string(), Some("key".to_string())))
        );
        assert_eq!(state.credentials("http://other", "custom-1"), None);
        assert_eq!(state.credentials("http://dir", "someone-else"), None);
        let stored = fs::read_to_string(temp.join(CREDENTIALS_FILE)).unwrap();
        assert!(
            !stored.contains("operator"),
            "the operator key is never written"
        );
        assert_private(&temp.join(CREDENTIALS_FILE));
        fs::remove_dir_all(&temp).unwrap();
    }

    fn assert_private(path: &Path) {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", path.display());
        }
    }

    #[test]
    fn the_cx_key_persists_privately_and_a_damaged_file_is_refused() {
        let temp = std::env::temp_dir().join(format!("iicp-state-cx-{}", std::process::id()));
        let state = StateDir::open(&temp).unwrap();
        let first = state.cx_key().unwrap();
        assert_eq!(state.cx_key().unwrap().key_id(), first.key_id());
        assert_private(&temp.join(CX_KEY_FILE));
        fs::write(
            temp.join(CX_KEY_FILE),
            b"{\"algorithm\":\"X25519\",\"private_key\":\"AAAA\"}",
        )
        .unwrap();
        let error = state.cx_key().unwrap_err().to_string();
        assert!(error.contains(CX_KEY_FILE), "{error}");
        fs::remove_dir_all(&temp).unwrap();
    }

    #[test]
    fn keys_are_chosen_per_purpose() {
        let mut credentials = Credentials {
            directory_hmac_key: Some("dir".into()),
            operator_hmac_key: Some("op".into()),
            ..Credentials::default()
        };
        assert_eq!(credentials.verification_key(), Some("dir"));
        assert_eq!(credentials.pricing_key(), Some("op"));
        credentials.directory_hmac_key = None;
        assert_eq!(credentials.verification_key(), Some("op"));
    }

    #[test]
    fn node_id_rule() {
        assert!(valid_node_id("a1b2-c3.d_e:f"));
        assert!(!valid_node_id("-leading"));
        assert!(!valid_node_id("has space"));
        assert!(!valid_node_id(&"a".repeat(37)));
    }
}
