//! On-disk cache of compiled components.
//!
//! Compiling a component with Cranelift takes ~100 ms; loading a compiled
//! artifact takes ~0.2 ms. Entries are keyed by the SHA-256 of the `.wasm`
//! and by the engine's compatibility hash (wasmtime version and every
//! setting that affects code generation), so an engine change never loads a
//! stale artifact. Each file carries a SHA-256 of its own body; a missing,
//! truncated, corrupt or incompatible entry is a cache miss, never a failure.
//!
//! The directory is kept under [`MAX_CACHE_BYTES`]: each store removes the
//! least recently used entries beyond it (a hit counts as a use), since every
//! rebuilt plugin — interpreters' especially, at 35 MB compiled — adds one.
//!
//! Safety of loading: `Component::deserialize` trusts its input. We only load
//! files from a directory this process created with mode 0700, and only when
//! the embedded digest matches, i.e. bytes this code wrote itself.

use std::fs;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use crate::private_files;

const MAGIC: &[u8; 8] = b"IICPCW01";
/// Most bytes of compiled artifacts kept.
pub const MAX_CACHE_BYTES: u64 = 2 << 30;
const DIGEST_LEN: usize = 32;

/// A directory of compiled artifacts for one engine configuration.
#[derive(Debug, Clone)]
pub struct ArtifactCache {
    dir: PathBuf,
    engine_key: String,
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
}

impl ArtifactCache {
    /// Opens (creating if needed, mode 0700) a cache directory.
    pub fn open(dir: &Path, engine: &Engine) -> std::io::Result<Self> {
        private_files::create_dir(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            engine_key: engine_key(engine),
        })
    }

    fn entry_path(&self, wasm_sha256: &str) -> PathBuf {
        self.dir
            .join(format!("{wasm_sha256}-{}.cwasm", &self.engine_key[..16]))
    }

    /// The cached component for `wasm_sha256`, or `None` on any kind of miss.
    pub fn load(&self, engine: &Engine, wasm_sha256: &str) -> Option<Component> {
        let path = self.entry_path(wasm_sha256);
        let bytes = fs::read(&path).ok()?;
        // Mark the entry used, for the least-recently-used pruning.
        let _ = fs::File::options()
            .write(true)
            .open(&path)
            .and_then(|file| file.set_modified(std::time::SystemTime::now()));
        let component = verified_body(&bytes).and_then(|body| {
            // SAFETY: see the module docs — the body is what `store` wrote.
            unsafe { Component::deserialize(engine, body) }.ok()
        });
        if component.is_none() {
            tracing::warn!(path = %path.display(), "discarding unusable compiled-artifact cache entry");
            let _ = fs::remove_file(&path);
        }
        component
    }

    /// Stores a compiled component and prunes the cache; failures are
    /// logged, never fatal.
    pub fn store(&self, wasm_sha256: &str, component: &Component) {
        if let Err(error) = self.try_store(wasm_sha256, component) {
            tracing::warn!(%error, "cannot write compiled-artifact cache entry");
        }
        prune(&self.dir, MAX_CACHE_BYTES);
    }

    fn try_store(&self, wasm_sha256: &str, component: &Component) -> wasmtime::Result<()> {
        let body = component.serialize()?;
        private_files::write(
            &self.entry_path(wasm_sha256),
            &[MAGIC, &Sha256::digest(&body), &body],
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

/// Removes the least recently used `.cwasm` entries until at most
/// `max_bytes` remain.
fn prune(dir: &Path, max_bytes: u64) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut files: Vec<(std::time::SystemTime, u64, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|ext| ext == "cwasm"))
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            Some((meta.modified().ok()?, meta.len(), e.path()))
        })
        .collect();
    let mut total: u64 = files.iter().map(|(_, len, _)| len).sum();
    files.sort();
    for (_, len, path) in files {
        if total <= max_bytes {
            break;
        }
        if fs::remove_file(&path).is_ok() {
            total -= len;
        }
    }
}

fn verified_body(bytes: &[u8]) -> Option<&[u8]> {
    let rest = bytes.strip_prefix(MAGIC.as_slice())?;
    if rest.len() < DIGEST_LEN {
        return None;
    }
    let (digest, body) = rest.split_at(DIGEST_LEN);
    (Sha256::digest(body).as_slice() == digest).then_some(body)
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

    #[test]
    fn pruning_removes_the_least_recently_used_first() {
        let dir = std::env::temp_dir().join(format!("iicp-cache-prune-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        for (name, age) in [("a.cwasm", 3), ("b.cwasm", 2), ("c.cwasm", 1)] {
            let path = dir.join(name);
            fs::write(&path, vec![0u8; 100]).unwrap();
            let when = old + std::time::Duration::from_secs(100 * (4 - age));
            fs::File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_modified(when)
                .unwrap();
        }
        fs::write(dir.join("keep.txt"), vec![0u8; 500]).unwrap();
        prune(&dir, 250);
        assert!(!dir.join("a.cwasm").exists());
        assert!(dir.join("b.cwasm").exists() && dir.join("c.cwasm").exists());
        assert!(
            dir.join("keep.txt").exists(),
            "only cache entries are pruned"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn body_digest_must_match() {
        let body = b"compiled code";
        let mut file = MAGIC.to_vec();
        file.extend_from_slice(&Sha256::digest(body));
        file.extend_from_slice(body);
        assert_eq!(verified_body(&file), Some(body.as_slice()));

        let mut corrupt = file.clone();
        *corrupt.last_mut().unwrap() ^= 1;
        assert_eq!(verified_body(&corrupt), None);
        assert_eq!(verified_body(&file[..20]), None);
        assert_eq!(verified_body(b"not a cache entry"), None);
    }
}
