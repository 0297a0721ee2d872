//! Pulled plugins on disk, content-addressed, beside the compiled-artifact
//! cache (`<cache dir>/oci/`):
//!
//! * `blobs/sha256/<hex>.wasm` — components, named by their digest;
//! * `manifests/sha256/<hex>.json` — the manifests that named them;
//! * `tags/<sha256 of the tag reference>` — the manifest digest a tag had
//!   when last resolved, so the node starts offline with what it pulled;
//! * `signatures/sha256/<manifest hex>.json` — the payload and signature
//!   that last verified for a manifest, so a node that requires signatures
//!   also starts offline (they are verified again under the keys of the
//!   moment: the store vouches for nothing).
//!
//! Everything read back is checked against its name: a corrupt or
//! truncated entry is a miss (and removed), never a plugin. Components are
//! kept under a byte bound, least recently used first out.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::reference::{OciLocation, valid_digest};
use crate::private_files;
use crate::prune::prune;

/// The on-disk store.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
    max_bytes: u64,
}

impl Store {
    /// Opens (creating, mode 0700) the store at `dir`, holding at most
    /// `max_bytes` of components.
    pub fn open(dir: &Path, max_bytes: u64) -> std::io::Result<Self> {
        for sub in [
            "blobs/sha256",
            "manifests/sha256",
            "signatures/sha256",
            "tags",
        ] {
            private_files::create_dir(&dir.join(sub))?;
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            max_bytes,
        })
    }

    fn hex(digest: &str) -> Option<&str> {
        valid_digest(digest).then(|| &digest["sha256:".len()..])
    }

    /// Where the component with `digest` is (or would be) kept.
    pub fn blob_path(&self, digest: &str) -> Option<PathBuf> {
        Some(
            self.dir
                .join("blobs/sha256")
                .join(format!("{}.wasm", Self::hex(digest)?)),
        )
    }

    fn manifest_path(&self, digest: &str) -> Option<PathBuf> {
        Some(
            self.dir
                .join("manifests/sha256")
                .join(format!("{}.json", Self::hex(digest)?)),
        )
    }

    fn tag_path(&self, location: &OciLocation) -> PathBuf {
        let untagged = OciLocation {
            digest: None,
            ..location.clone()
        };
        self.dir
            .join("tags")
            .join(hex::encode(Sha256::digest(untagged.to_string().as_bytes())))
    }

    /// The stored manifest with `digest`, if intact.
    pub fn manifest(&self, digest: &str, max_bytes: usize) -> Option<Vec<u8>> {
        let path = self.manifest_path(digest)?;
        let bytes = read_at_most(&path, max_bytes as u64)?;
        verified(&path, &bytes, digest).then_some(bytes)
    }

    /// Stores a manifest under its digest.
    pub fn put_manifest(&self, digest: &str, bytes: &[u8]) -> std::io::Result<()> {
        match self.manifest_path(digest) {
            Some(path) => private_files::write(&path, &[bytes]),
            None => Ok(()),
        }
    }

    fn signature_path(&self, manifest_digest: &str) -> Option<PathBuf> {
        Some(
            self.dir
                .join("signatures/sha256")
                .join(format!("{}.json", Self::hex(manifest_digest)?)),
        )
    }

    /// Keeps the payload and base64 signature that verified for a manifest.
    pub fn put_signature(
        &self,
        manifest_digest: &str,
        payload: &[u8],
        signature: &str,
    ) -> std::io::Result<()> {
        use base64::Engine as _;
        let Some(path) = self.signature_path(manifest_digest) else {
            return Ok(());
        };
        let entry = serde_json::json!({
            "payload": base64::engine::general_purpose::STANDARD.encode(payload),
            "signature": signature,
        });
        private_files::write(&path, &[entry.to_string().as_bytes()])
    }

    /// The payload and base64 signature kept for a manifest, if any (at
    /// most `max_bytes` of entry).
    pub fn signature(&self, manifest_digest: &str, max_bytes: usize) -> Option<(Vec<u8>, String)> {
        use base64::Engine as _;
        let bytes = read_at_most(&self.signature_path(manifest_digest)?, max_bytes as u64)?;
        let entry: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
        let payload = base64::engine::general_purpose::STANDARD
            .decode(entry["payload"].as_str()?)
            .ok()?;
        Some((payload, entry["signature"].as_str()?.to_string()))
    }

    /// The manifest digest `location`'s tag had when last resolved.
    pub fn tagged(&self, location: &OciLocation) -> Option<String> {
        let text = read_at_most(&self.tag_path(location), 512)?;
        let digest = String::from_utf8(text).ok()?.lines().next()?.to_string();
        valid_digest(&digest).then_some(digest)
    }

    /// Records what `location`'s tag resolved to.
    pub fn tag(&self, location: &OciLocation, digest: &str) -> std::io::Result<()> {
        let text = format!("{digest}\n{location}\n");
        private_files::write(&self.tag_path(location), &[text.as_bytes()])
    }

    /// The stored component with `digest`, if present and intact (it is
    /// hashed: a corrupt one is removed and reported missing).
    pub fn blob(&self, digest: &str) -> Option<PathBuf> {
        let path = self.blob_path(digest)?;
        let mut file = fs::File::open(&path).ok()?;
        let mut hasher = Sha256::new();
        let mut buffer = vec![0u8; 1 << 16];
        loop {
            match file.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => hasher.update(&buffer[..n]),
                Err(_) => return None,
            }
        }
        if format!("sha256:{}", hex::encode(hasher.finalize())) != digest {
            tracing::warn!(path = %path.display(), "discarding corrupt pulled plugin");
            let _ = fs::remove_file(&path);
            return None;
        }
        // Mark it used for the least-recently-used pruning.
        let _ = fs::File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(std::time::SystemTime::now()));
        Some(path)
    }

    /// A temporary file in the store for a download in progress.
    pub fn temp_path(&self) -> PathBuf {
        self.dir.join("blobs").join(format!(
            "download-{}-{}.tmp",
            std::process::id(),
            fastrand::u64(..)
        ))
    }

    /// Moves a verified download into place and keeps the store in bounds.
    pub fn commit_blob(&self, temp: &Path, digest: &str) -> std::io::Result<PathBuf> {
        let path = self
            .blob_path(digest)
            .ok_or_else(|| std::io::Error::other("not a sha256 digest"))?;
        fs::rename(temp, &path)?;
        prune(&self.dir.join("blobs/sha256"), "wasm", self.max_bytes);
        Ok(path)
    }
}

fn read_at_most(path: &Path, max_bytes: u64) -> Option<Vec<u8>> {
    let mut bytes = Vec::new();
    fs::File::open(path)
        .ok()?
        .take(max_bytes + 1)
        .read_to_end(&mut bytes)
        .ok()?;
    (bytes.len() as u64 <= max_bytes).then_some(bytes)
}

fn verified(path: &Path, bytes: &[u8], digest: &str) -> bool {
    let ok = format!("sha256:{}", hex::encode(Sha256::digest(bytes))) == digest;
    if !ok {
        let _ = fs::remove_file(path);
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_checked_against_their_digest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let body = b"{\"schemaVersion\":2}";
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(body)));
        store.put_manifest(&digest, body).unwrap();
        assert_eq!(store.manifest(&digest, 1024).as_deref(), Some(&body[..]));
        assert_eq!(store.manifest(&digest, 4), None, "over the bound");

        let component = b"\0asm\x0d\0\x01\0";
        let blob_digest = format!("sha256:{}", hex::encode(Sha256::digest(component)));
        let temp = store.temp_path();
        fs::write(&temp, component).unwrap();
        let path = store.commit_blob(&temp, &blob_digest).unwrap();
        assert_eq!(store.blob(&blob_digest), Some(path.clone()));
        fs::write(&path, b"tampered").unwrap();
        assert_eq!(store.blob(&blob_digest), None);
        assert!(!path.exists(), "a corrupt entry is removed");

        let location = OciLocation::parse("oci://127.0.0.1:5000/echo:1").unwrap();
        assert_eq!(store.tagged(&location), None);
        store.tag(&location, &digest).unwrap();
        assert_eq!(store.tagged(&location.at_digest(&digest)), Some(digest));
    }
}
