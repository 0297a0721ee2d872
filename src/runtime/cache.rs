//! On-disk cache of compiled components.
//!
//! Compiling a component with Cranelift takes ~100 ms; loading a compiled
//! artifact takes ~0.2 ms. Entries are keyed by the SHA-256 of the `.wasm`
//! and by the engine's compatibility hash (wasmtime version and every
//! setting that affects code generation), so an engine change never loads a
//! stale artifact. A missing, truncated, corrupt, incompatible or refused
//! entry is a cache miss, never a failure: the plugin is compiled again and
//! the entry rewritten.
//!
//! The directory is kept under [`MAX_CACHE_BYTES`]: each store removes the
//! least recently used entries beyond it (a hit counts as a use), since every
//! rebuilt plugin — interpreters' especially, at 35 MB compiled — adds one.
//!
//! # What loading trusts
//! `Component::deserialize` runs whatever native code it is handed: a cache
//! entry has the node's full power. So an entry is loaded only when
//! * the cache directory and the entry are owned by the node's user and
//!   writable by no group and no other user, and the entry is a regular file;
//! * its HMAC-SHA256 verifies (compared in constant time) under the cache's
//!   key — 32 random bytes in `cache.key`, mode 0600, created atomically on
//!   first use — over the engine key, the `.wasm`'s SHA-256 and the
//!   compiled bytes. An entry is therefore valid only under its own name, in
//!   its own cache.
//!
//! Every refusal is logged (the first of each kind) and counted in
//! `iicp_artifact_cache_rejected_total{reason}`: `directory_not_private`,
//! `entry_not_private`, `unverified` (bad or missing HMAC: tampering,
//! corruption, an entry renamed or swapped, copied from another cache, or
//! written by an older format), `unloadable` (verified, yet refused by
//! wasmtime).
//!
//! Entries are looked up only by the SHA-256 of a `.wasm` component (see
//! `artifact::compile_bytes`), so a plugin from a registry — always a
//! component, checked at the OCI boundary — cannot name native code here:
//! the only native code loaded is what this cache wrote, or a local file
//! the operator marked `precompiled`.
//!
//! This protects against other local users — a `cache_dir` on a shared or
//! loosely permitted path, a directory or file planted at the predictable
//! default path, a swapped or edited entry — and against corruption and
//! stale copies. It does not protect against anyone who runs as the node's
//! own user (or as root): they can read the key and forge entries, or
//! simply replace the binary. Run the node as a dedicated user whose files
//! no one else can write.

use std::fs;
use std::hash::{Hash, Hasher};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use aes_gcm::aead::OsRng;
use aes_gcm::aead::rand_core::RngCore;
use hmac::{Hmac, Mac};
use prometheus::IntCounterVec;
use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use crate::private_files;
use crate::prune::prune;

const MAGIC: &[u8; 8] = b"IICPCW02";
/// Most bytes of compiled artifacts kept.
pub const MAX_CACHE_BYTES: u64 = 2 << 30;
const TAG_LEN: usize = 32;
/// The file holding the cache's HMAC key.
const KEY_FILE: &str = "cache.key";
const KEY_LEN: usize = 32;

type EntryMac = Hmac<Sha256>;

/// Why a cache entry was not loaded although a file was there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rejection {
    DirectoryNotPrivate,
    EntryNotPrivate,
    Unverified,
    Unloadable,
}

impl Rejection {
    const ALL: [Rejection; 4] = [
        Rejection::DirectoryNotPrivate,
        Rejection::EntryNotPrivate,
        Rejection::Unverified,
        Rejection::Unloadable,
    ];

    /// The metric label.
    fn label(self) -> &'static str {
        match self {
            Rejection::DirectoryNotPrivate => "directory_not_private",
            Rejection::EntryNotPrivate => "entry_not_private",
            Rejection::Unverified => "unverified",
            Rejection::Unloadable => "unloadable",
        }
    }
}

/// A directory of compiled artifacts for one engine configuration.
#[derive(Clone)]
pub struct ArtifactCache {
    dir: PathBuf,
    engine_key: String,
    key: [u8; KEY_LEN],
    /// The node's effective uid: the only owner trusted.
    uid: u32,
    rejected: IntCounterVec,
    /// Which kinds of refusal were logged already (one line each).
    warned: Arc<[AtomicBool; Rejection::ALL.len()]>,
}

impl std::fmt::Debug for ArtifactCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArtifactCache")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// Where a plugin's compiled code came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Loaded from the cache.
    Hit,
    /// Compiled now (and stored, when a cache is configured).
    Compiled,
    /// Given as an artifact compiled ahead of time.
    Precompiled,
    /// Already loaded for another plugin with the same bytes, and shared.
    Shared,
}

impl ArtifactCache {
    /// Opens (creating if needed, mode 0700) a cache directory and its key;
    /// refuses a directory or key file that is not the node user's alone.
    /// Refusals of single entries are counted in `rejected` (label `reason`).
    pub fn open(dir: &Path, engine: &Engine, rejected: IntCounterVec) -> std::io::Result<Self> {
        for rejection in Rejection::ALL {
            // Every reason is exported from the start, at 0.
            rejected.with_label_values(&[rejection.label()]);
        }
        private_files::create_dir(dir)?;
        let uid = private_files::current_uid();
        let metadata = fs::metadata(dir)?;
        if !private_files::is_private(&metadata, uid) {
            rejected
                .with_label_values(&[Rejection::DirectoryNotPrivate.label()])
                .inc();
            return Err(std::io::Error::other(format!(
                "{} is not owned by this user (uid {uid}) alone",
                dir.display()
            )));
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            engine_key: engine_key(engine),
            key: load_or_create_key(&dir.join(KEY_FILE), uid)?,
            uid,
            rejected,
            warned: Arc::default(),
        })
    }

    fn entry_path(&self, wasm_sha256: &str) -> PathBuf {
        self.dir
            .join(format!("{wasm_sha256}-{}.cwasm", &self.engine_key[..16]))
    }

    /// The cached component for `wasm_sha256`, or `None` on any kind of miss.
    pub fn load(&self, engine: &Engine, wasm_sha256: &str) -> Option<Component> {
        let path = self.entry_path(wasm_sha256);
        match self.try_load(engine, wasm_sha256, &path) {
            Ok(component) => component,
            Err(rejection) => {
                self.rejected.with_label_values(&[rejection.label()]).inc();
                let first = !self.warned[rejection as usize].swap(true, Ordering::Relaxed);
                if first {
                    tracing::warn!(
                        path = %path.display(),
                        reason = rejection.label(),
                        "refusing compiled-artifact cache entry; compiling again (further refusals of this kind are only counted)"
                    );
                }
                None
            }
        }
    }

    /// `Ok(None)`: no entry. `Err`: an entry that must not be loaded.
    fn try_load(
        &self,
        engine: &Engine,
        wasm_sha256: &str,
        path: &Path,
    ) -> Result<Option<Component>, Rejection> {
        let Ok(mut file) = fs::File::open(path) else {
            return Ok(None);
        };
        let directory_private = fs::metadata(&self.dir)
            .is_ok_and(|metadata| private_files::is_private(&metadata, self.uid));
        if !directory_private {
            return Err(Rejection::DirectoryNotPrivate);
        }
        // Checked on the opened file itself, so a rename after the check
        // cannot substitute another.
        let entry_private = file.metadata().is_ok_and(|metadata| {
            metadata.is_file() && private_files::is_private(&metadata, self.uid)
        });
        if !entry_private {
            return Err(Rejection::EntryNotPrivate);
        }
        let mut bytes = Vec::new();
        if file.read_to_end(&mut bytes).is_err() {
            return Ok(None);
        }
        let body = verified_body(entry_mac(&self.key, &self.engine_key, wasm_sha256), &bytes)
            .ok_or(Rejection::Unverified)?;
        // SAFETY: see the module docs — the body carries a valid tag under
        // a key only this user can read, so this cache wrote it.
        let component =
            unsafe { Component::deserialize(engine, body) }.map_err(|_| Rejection::Unloadable)?;
        // Mark the entry used, for the least-recently-used pruning.
        let _ = file.set_modified(std::time::SystemTime::now());
        Ok(Some(component))
    }

    /// Stores a compiled component and prunes the cache; failures are
    /// logged, never fatal.
    pub fn store(&self, wasm_sha256: &str, component: &Component) {
        if let Err(error) = self.try_store(wasm_sha256, component) {
            tracing::warn!(%error, "cannot write compiled-artifact cache entry");
        }
        prune(&self.dir, "cwasm", MAX_CACHE_BYTES);
    }

    fn try_store(&self, wasm_sha256: &str, component: &Component) -> wasmtime::Result<()> {
        let body = component.serialize()?;
        let mut mac = entry_mac(&self.key, &self.engine_key, wasm_sha256);
        mac.update(&body);
        private_files::write(
            &self.entry_path(wasm_sha256),
            &[MAGIC, &mac.finalize().into_bytes(), &body],
        )?;
        Ok(())
    }
}

/// Loads `wasm` from the cache or compiles (and caches) it.
pub fn load_or_compile(
    engine: &Engine,
    cache: Option<&ArtifactCache>,
    wasm: &[u8],
    wasm_sha256: &str,
) -> wasmtime::Result<(Component, CacheOutcome)> {
    if let Some(component) = cache.and_then(|c| c.load(engine, wasm_sha256)) {
        return Ok((component, CacheOutcome::Hit));
    }
    let component = Component::new(engine, wasm)?;
    if let Some(cache) = cache {
        cache.store(wasm_sha256, &component);
    }
    Ok((component, CacheOutcome::Compiled))
}

/// The cache's HMAC key: read from `path`, or made and written there when
/// no key exists yet (atomically: a concurrent node either wins or reads
/// the winner's key). A key file that is not the user's alone, or not
/// [`KEY_LEN`] bytes, disables the cache.
fn load_or_create_key(path: &Path, uid: u32) -> std::io::Result<[u8; KEY_LEN]> {
    let read = |path: &Path| -> std::io::Result<[u8; KEY_LEN]> {
        let mut file = fs::File::open(path)?;
        let metadata = file.metadata()?;
        if !metadata.is_file() || !private_files::is_secret(&metadata, uid) {
            return Err(std::io::Error::other(format!(
                "{} must be a regular file of this user (uid {uid}) with mode 0600",
                path.display()
            )));
        }
        let mut key = Vec::with_capacity(KEY_LEN);
        file.by_ref()
            .take(KEY_LEN as u64 + 1)
            .read_to_end(&mut key)?;
        key.try_into().map_err(|_| {
            std::io::Error::other(format!("{} is not a {KEY_LEN}-byte key", path.display()))
        })
    };
    match read(path) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let mut key = [0u8; KEY_LEN];
            OsRng.fill_bytes(&mut key);
            private_files::create_once(path, &[&key])?;
            read(path)
        }
        other => other,
    }
}

/// The keyed digest of an entry, before its body: binds the bytes to this
/// cache's key, this engine and this `.wasm` (hex strings, so the newlines
/// frame them).
fn entry_mac(key: &[u8; KEY_LEN], engine_key: &str, wasm_sha256: &str) -> EntryMac {
    let mut mac = <EntryMac as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
    for part in [engine_key.as_bytes(), b"\n", wasm_sha256.as_bytes(), b"\n"] {
        mac.update(part);
    }
    mac
}

/// The body of an entry whose tag verifies under `mac` (constant time).
fn verified_body(mut mac: EntryMac, bytes: &[u8]) -> Option<&[u8]> {
    let rest = bytes.strip_prefix(MAGIC.as_slice())?;
    if rest.len() < TAG_LEN {
        return None;
    }
    let (tag, body) = rest.split_at(TAG_LEN);
    mac.update(body);
    mac.verify_slice(tag).ok().map(|()| body)
}

/// SHA-256 of the engine's compatibility hash, as hex: stable across runs of
/// the same build, different for any setting that changes compiled code.
fn engine_key(engine: &Engine) -> String {
    struct DigestHasher(Sha256);
    impl Hasher for DigestHasher {
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
        fn finish(&self) -> u64 {
            let digest = self.0.clone().finalize();
            u64::from_le_bytes(digest[..8].try_into().unwrap_or_default())
        }
    }
    let mut hasher = DigestHasher(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut hasher);
    hex::encode(hasher.0.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &[u8; KEY_LEN], wasm_sha256: &str, body: &[u8]) -> Vec<u8> {
        let mut mac = entry_mac(key, "engine", wasm_sha256);
        mac.update(body);
        [MAGIC.as_slice(), &mac.finalize().into_bytes(), body].concat()
    }

    #[test]
    fn the_tag_binds_key_name_and_body() {
        let key = [7u8; KEY_LEN];
        let file = entry(&key, "aaaa", b"compiled code");
        let verify = |key: &[u8; KEY_LEN], name: &str, bytes: &[u8]| {
            verified_body(entry_mac(key, "engine", name), bytes).map(<[u8]>::to_vec)
        };
        assert_eq!(verify(&key, "aaaa", &file), Some(b"compiled code".to_vec()));
        // Another entry's name (a swapped file), another cache's key, another engine.
        assert_eq!(verify(&key, "bbbb", &file), None);
        assert_eq!(verify(&[8u8; KEY_LEN], "aaaa", &file), None);
        assert_eq!(
            verified_body(entry_mac(&key, "other engine", "aaaa"), &file),
            None
        );
        let mut corrupt = file.clone();
        *corrupt.last_mut().unwrap() ^= 1;
        assert_eq!(verify(&key, "aaaa", &corrupt), None);
        assert_eq!(verify(&key, "aaaa", &file[..20]), None);
        assert_eq!(verify(&key, "aaaa", b"not a cache entry"), None);
        // The earlier format (an unkeyed SHA-256) is not accepted.
        let old = [b"IICPCW01".as_slice(), &Sha256::digest(b"code"), b"code"].concat();
        assert_eq!(verify(&key, "aaaa", &old), None);
    }

    #[cfg(unix)]
    #[test]
    fn the_key_is_made_once_private_and_checked() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let uid = private_files::current_uid();
        let path = dir.path().join(KEY_FILE);
        // Racing creators all end up with the one key that was written.
        let keys: Vec<[u8; KEY_LEN]> = std::thread::scope(|scope| {
            let racers: Vec<_> = (0..4)
                .map(|_| scope.spawn(|| load_or_create_key(&path, uid).unwrap()))
                .collect();
            racers.into_iter().map(|r| r.join().unwrap()).collect()
        });
        assert!(keys.iter().all(|k| *k == keys[0]));
        assert_eq!(fs::read(&path).unwrap(), keys[0]);
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary file left"
        );

        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let loose = load_or_create_key(&path, uid).unwrap_err().to_string();
        assert!(loose.contains("mode 0600"), "{loose}");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(
            load_or_create_key(&path, uid + 1).is_err(),
            "another user's key"
        );
        fs::write(&path, b"short").unwrap();
        let short = load_or_create_key(&path, uid).unwrap_err().to_string();
        assert!(short.contains("32-byte"), "{short}");
    }
}
