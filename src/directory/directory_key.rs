//! The directory's Ed25519 key, which signs consumer tokens
//! (`GET {dir}/v1/directory-key` → `{"algorithm":"ed25519","public_key":
//! "<64 hex>"}`, 503 `not_configured` when the directory has none;
//! `protocol.md` §2.8, §11).
//!
//! Fetched in the background, never on the task path: at start, then every
//! `refresh` while the last fetch worked, and again when a token's signature
//! fails to verify (the directory may have rotated its key) — but never
//! sooner than `min_interval` after the previous fetch, whatever asks, so a
//! flood of forged tokens cannot turn into a flood of directory requests. A
//! failed fetch keeps the key already held (a rotation is announced by a
//! new key, not by an outage) and is retried with backoff from
//! `min_interval` up to `refresh`.

use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use ed25519_dalek::VerifyingKey;
use serde_json::Value;
use tokio::sync::Notify;
use tokio::task::AbortHandle;

use super::client::{DirectoryClient, DirectoryError};
use crate::directory::metrics::DirectoryMetrics;
use crate::protocol::consumer_token::parse_key;

/// When the key is fetched again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyRefresh {
    /// Interval between fetches while they work.
    pub refresh: Duration,
    /// Shortest time between two fetches, whatever asks.
    pub min_interval: Duration,
}

/// The key, as last fetched. Dropping the last handle stops the fetcher.
#[derive(Default)]
pub struct DirectoryKey {
    key: RwLock<Option<VerifyingKey>>,
    refetch: Arc<Notify>,
    fetcher: OnceLock<AbortHandle>,
}

impl DirectoryKey {
    /// The key, when one was fetched.
    pub fn get(&self) -> Option<VerifyingKey> {
        *self.key.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks for a fetch soon (at the earliest `min_interval` after the last).
    pub fn request_refetch(&self) {
        self.refetch.notify_one();
    }

    fn set(&self, key: VerifyingKey) {
        *self.key.write().unwrap_or_else(|p| p.into_inner()) = Some(key);
    }
}

impl Drop for DirectoryKey {
    fn drop(&mut self) {
        if let Some(fetcher) = self.fetcher.get() {
            fetcher.abort();
        }
    }
}

/// Starts fetching the key from `client`'s directory; the returned handle
/// is read by the task route.
pub fn start(
    client: DirectoryClient,
    timing: KeyRefresh,
    metrics: Arc<DirectoryMetrics>,
) -> Arc<DirectoryKey> {
    let key = Arc::new(DirectoryKey::default());
    let (weak, refetch) = (Arc::downgrade(&key), key.refetch.clone());
    let fetcher = tokio::spawn(async move {
        let mut retry = timing.min_interval;
        loop {
            let Some(held) = weak.upgrade() else {
                return;
            };
            let wait = match fetch(&client).await {
                Ok(fetched) => {
                    if held.get() != Some(fetched) {
                        tracing::info!(
                            key = %hex::encode(fetched.to_bytes()),
                            "directory key fetched"
                        );
                    }
                    held.set(fetched);
                    metrics
                        .directory_key_fetches
                        .with_label_values(&["ok"])
                        .inc();
                    retry = timing.min_interval;
                    timing.refresh
                }
                Err(error) => {
                    metrics
                        .directory_key_fetches
                        .with_label_values(&["error"])
                        .inc();
                    tracing::warn!(%error, "cannot fetch the directory key; consumer tokens wait for it");
                    let wait = retry;
                    retry = (retry * 2).min(timing.refresh);
                    wait
                }
            };
            drop(held);
            // Always the minimum gap; then the rest of the wait, unless a
            // refetch is asked for.
            tokio::time::sleep(timing.min_interval).await;
            let rest = wait.saturating_sub(timing.min_interval);
            tokio::select! {
                () = tokio::time::sleep(rest) => {}
                () = refetch.notified() => {}
            }
        }
    });
    let _ = key.fetcher.set(fetcher.abort_handle());
    key
}

async fn fetch(client: &DirectoryClient) -> Result<VerifyingKey, DirectoryError> {
    let answer = client.get("directory-key").await?;
    read_key(&answer)
}

/// Reads `{"algorithm":"ed25519","public_key":"<64 hex>"}`.
fn read_key(answer: &Value) -> Result<VerifyingKey, DirectoryError> {
    let algorithm = answer.get("algorithm").and_then(Value::as_str);
    if !algorithm.is_some_and(|a| a.eq_ignore_ascii_case("ed25519")) {
        return Err(DirectoryError::BadResponse(
            "the directory key is not an ed25519 key".into(),
        ));
    }
    answer
        .get("public_key")
        .and_then(Value::as_str)
        .and_then(parse_key)
        .ok_or_else(|| DirectoryError::BadResponse("the directory key is not 64 hex digits".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_ed25519_keys_in_hex_are_read() {
        let hex_key = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
        assert!(read_key(&json!({"algorithm": "ed25519", "public_key": hex_key})).is_ok());
        assert!(read_key(&json!({"algorithm": "rsa", "public_key": hex_key})).is_err());
        assert!(read_key(&json!({"algorithm": "ed25519", "public_key": "abcd"})).is_err());
        assert!(read_key(&json!({"public_key": hex_key})).is_err());
    }
}
