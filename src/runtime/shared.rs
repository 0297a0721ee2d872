//! Compiled code shared between plugins: every plugin loaded from the same
//! bytes (same SHA-256) uses one compiled component and one
//! pre-instantiation, so a multi-tenant node serving one artifact under many
//! `[[plugin]]` tables holds its code, its copy-on-write memory images and
//! its import resolution once, not once per table.
//!
//! The artifact also remembers what the plugin said to `describe`, per
//! configuration and limits (at most [`MAX_REMEMBERED_DESCRIPTIONS`]).
//!
//! Two maps, both bounded:
//! * file identity → SHA-256. A file's identity is its device, inode, size,
//!   modification and status-change times; any write or replacement changes
//!   at least one (the status-change time cannot be set back), so a plugin
//!   file is read and hashed again exactly when it may have changed. This is
//!   what keeps a reload of one plugin among 1,000 from hashing 1,000 files.
//!   At most [`MAX_REMEMBERED_FILES`] entries; the map starts over when full.
//! * SHA-256 → the shared artifact, held weakly: it lives while a loaded
//!   plugin uses it, and dead entries are dropped on every insert.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use wasmtime::Engine;
use wasmtime::component::Linker;

use super::artifact::{PrecompiledPolicy, compile_bytes, plugin_sha256, read};
use super::bindings::{Descriptor, PluginPre};
use super::cache::{ArtifactCache, CacheOutcome};
use super::handle_export::HandleExport;
use super::host::config::PluginConfig;
use super::limits::PluginLimits;
use super::link::link;
use super::load_error::LoadError;
use super::store::TaskState;

/// Most file identities remembered.
pub const MAX_REMEMBERED_FILES: usize = 4096;

/// What identifies a file's content without reading it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct FileIdentity {
    path: std::path::PathBuf,
    device: u64,
    inode: u64,
    size: u64,
    modified: (i64, i64),
    changed: (i64, i64),
}

impl FileIdentity {
    fn of(path: &Path) -> Result<Self, LoadError> {
        let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => LoadError::NotFound(path.to_path_buf()),
            _ => LoadError::Unreadable(path.to_path_buf(), e.to_string()),
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            device: meta.dev(),
            inode: meta.ino(),
            size: meta.size(),
            modified: (meta.mtime(), meta.mtime_nsec()),
            changed: (meta.ctime(), meta.ctime_nsec()),
        })
    }
}

/// Most self-descriptions remembered per artifact (one per distinct
/// configuration and limits it was loaded with).
pub const MAX_REMEMBERED_DESCRIPTIONS: usize = 64;

/// A compiled, linked component, shared by every plugin loaded from it.
pub struct SharedArtifact {
    /// SHA-256 of the file, hex.
    pub sha256: String,
    /// Whether it was loaded as a compiled artifact (not compiled here).
    pub precompiled: bool,
    /// Its imports resolved against the host's linker (holds the component).
    pub pre: PluginPre<TaskState>,
    /// Its `handle` export, typechecked once for every instance.
    pub handle: HandleExport,
    /// What it said when asked to describe itself, per configuration and
    /// limits: `describe` is a function of those, so a thousand plugins of
    /// one artifact and one configuration need one fresh instance to
    /// describe them, not a thousand.
    descriptions: Mutex<Vec<(DescribeInput, Descriptor)>>,
}

/// What a plugin's `describe` may depend on.
#[derive(Clone, PartialEq, Eq)]
pub struct DescribeInput {
    /// Its configuration and secrets.
    pub config: PluginConfig,
    /// Its limits.
    pub limits: PluginLimits,
}

impl SharedArtifact {
    /// The description remembered for `input`, if any.
    pub fn description(&self, input: &DescribeInput) -> Option<Descriptor> {
        lock(&self.descriptions)
            .iter()
            .find(|(known, _)| known == input)
            .map(|(_, descriptor)| descriptor.clone())
    }

    /// Remembers a successful description (the oldest goes when full).
    pub fn remember_description(&self, input: DescribeInput, descriptor: Descriptor) {
        let mut descriptions = lock(&self.descriptions);
        if descriptions.len() >= MAX_REMEMBERED_DESCRIPTIONS {
            descriptions.remove(0);
        }
        descriptions.push((input, descriptor));
    }
}

/// How long a file must have been left unchanged before its hash is
/// remembered. File times have a coarse clock (a few ms), so a file written
/// twice within one tick can keep its times; remembering only hashes of
/// files older than this (as git does for its index) means any later write
/// shows as a new modification time.
const SETTLED: Duration = Duration::from_secs(2);

/// Whether a file last modified or changed at these Unix times (seconds,
/// nanoseconds) has been left alone for [`SETTLED`] at `now`.
fn settled(times: [(i64, i64); 2], now: SystemTime) -> bool {
    let Some(horizon) = now.checked_sub(SETTLED) else {
        return false;
    };
    times.iter().all(|&(seconds, nanos)| {
        let (Ok(seconds), Ok(nanos)) = (u64::try_from(seconds), u32::try_from(nanos)) else {
            return false;
        };
        UNIX_EPOCH + Duration::new(seconds, nanos) < horizon
    })
}

/// The shared artifacts of one engine, and what it takes to make one: the
/// engine, the host's linker and the on-disk cache of compiled code.
pub struct ArtifactRegistry {
    engine: Engine,
    linker: Linker<TaskState>,
    cache: Option<ArtifactCache>,
    hashes: Mutex<HashMap<FileIdentity, String>>,
    artifacts: Mutex<HashMap<String, Weak<SharedArtifact>>>,
}

impl ArtifactRegistry {
    /// An empty registry compiling for `engine` and linking with `linker`.
    pub fn new(engine: Engine, linker: Linker<TaskState>, cache: Option<ArtifactCache>) -> Self {
        Self {
            engine,
            linker,
            cache,
            hashes: Mutex::default(),
            artifacts: Mutex::default(),
        }
    }

    /// The engine artifacts are compiled for.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The SHA-256 of the file at `path`, hashing it only when its identity
    /// is new or changed.
    pub fn file_sha256(&self, path: &Path) -> Result<String, LoadError> {
        Ok(self.identify(path)?.1)
    }

    /// The file's identity and SHA-256, and its bytes when it was read.
    fn identify(&self, path: &Path) -> Result<(FileIdentity, String, Option<Vec<u8>>), LoadError> {
        self.identify_at(path, SystemTime::now())
    }

    fn identify_at(
        &self,
        path: &Path,
        now: SystemTime,
    ) -> Result<(FileIdentity, String, Option<Vec<u8>>), LoadError> {
        let identity = FileIdentity::of(path)?;
        if let Some(sha256) = lock(&self.hashes).get(&identity) {
            return Ok((identity, sha256.clone(), None));
        }
        let bytes = read(path)?;
        let sha256 = plugin_sha256(&bytes);
        // The file may have changed between the stat and the read; remember
        // the hash only when the identity still holds after reading, and
        // only for a file left alone long enough that a later write cannot
        // keep its times.
        let unchanged = FileIdentity::of(path).is_ok_and(|after| after == identity);
        if unchanged && settled([identity.modified, identity.changed], now) {
            let mut hashes = lock(&self.hashes);
            if hashes.len() >= MAX_REMEMBERED_FILES {
                hashes.clear();
            }
            hashes.insert(identity.clone(), sha256.clone());
        }
        Ok((identity, sha256, Some(bytes)))
    }

    /// The artifact for the file at `path`: the one already loaded from the
    /// same bytes ([`CacheOutcome::Shared`]), or a newly compiled (or
    /// cache-loaded) and linked one. Blocking: reads, hashes and compiles.
    pub fn resolve(
        &self,
        path: &Path,
        precompiled: PrecompiledPolicy,
    ) -> Result<(Arc<SharedArtifact>, CacheOutcome), LoadError> {
        let (_, remembered, bytes) = self.identify(path)?;
        if let Some(shared) = self.live(&remembered) {
            // The same bytes loaded as a compiled artifact for a plugin that
            // opted in are still refused to one that did not.
            if shared.precompiled && precompiled == PrecompiledPolicy::Refuse {
                return Err(LoadError::PrecompiledNotAllowed(path.to_path_buf()));
            }
            return Ok((shared, CacheOutcome::Shared));
        }
        // A remembered hash whose artifact is gone: read the file again, and
        // hash what was read, not what was remembered.
        let (sha256, bytes) = match bytes {
            Some(bytes) => (remembered, bytes),
            None => {
                let bytes = read(path)?;
                (plugin_sha256(&bytes), bytes)
            }
        };
        let (component, cache_outcome) = compile_bytes(
            &self.engine,
            self.cache.as_ref(),
            path,
            &bytes,
            &sha256,
            precompiled,
        )?;
        // Wasmtime writes each memory's initial image into a memfd and seals
        // it on the first instantiation unless asked earlier; asked here, that
        // copy (12 MiB for the Python echo) and the seal's retries on EBUSY
        // (patches/README.md) run on this blocking thread, not on the async
        // worker that describes the plugin or runs its first task.
        component
            .initialize_copy_on_write_image()
            .map_err(|e| LoadError::Invalid(path.to_path_buf(), format!("{e:#}")))?;
        let pre = link(&self.engine, &self.linker, &component)
            .map_err(|why| LoadError::WrongWorld(path.to_path_buf(), why))?;
        let shared = Arc::new(SharedArtifact {
            sha256: sha256.clone(),
            precompiled: cache_outcome == CacheOutcome::Precompiled,
            handle: HandleExport::of(&pre),
            pre,
            descriptions: Mutex::default(),
        });
        let mut artifacts = lock(&self.artifacts);
        artifacts.retain(|_, weak| weak.strong_count() > 0);
        artifacts.insert(sha256, Arc::downgrade(&shared));
        Ok((shared, cache_outcome))
    }

    fn live(&self, sha256: &str) -> Option<Arc<SharedArtifact>> {
        lock(&self.artifacts).get(sha256).and_then(Weak::upgrade)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_files_left_alone_have_their_hash_remembered() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let old = (999_990, 0);
        let fresh = (999_999, 500_000_000);
        assert!(settled([old, old], now));
        assert!(!settled([old, fresh], now), "changed a moment ago");
        assert!(!settled([fresh, old], now), "modified a moment ago");
        assert!(
            !settled([(-1, 0), old], now),
            "times before 1970 are not trusted"
        );
    }

    #[test]
    fn a_remembered_hash_is_forgotten_when_the_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plugin.wasm");
        std::fs::write(&path, b"first").unwrap();
        let engine = Engine::default();
        let registry = ArtifactRegistry::new(engine.clone(), Linker::new(&engine), None);
        let remembered = || lock(&registry.hashes).len();
        let now = SystemTime::now();
        let (_, sha256, bytes) = registry.identify_at(&path, now).unwrap();
        assert_eq!(sha256, plugin_sha256(b"first"));
        assert_eq!(bytes.as_deref(), Some(&b"first"[..]), "read");
        assert_eq!(remembered(), 0, "just written: not trusted yet");

        let later = now + SETTLED * 10;
        let (_, _, bytes) = registry.identify_at(&path, later).unwrap();
        assert!(bytes.is_some(), "read once more");
        assert_eq!(remembered(), 1);
        let (_, sha256, bytes) = registry.identify_at(&path, later).unwrap();
        assert_eq!(sha256, plugin_sha256(b"first"));
        assert!(bytes.is_none(), "answered from memory, not read");

        // Rewritten in place (same path and inode): read and hashed again.
        std::fs::write(&path, b"second, longer").unwrap();
        let (_, sha256, bytes) = registry.identify_at(&path, later).unwrap();
        assert_eq!(sha256, plugin_sha256(b"second, longer"));
        assert!(bytes.is_some());
        assert!(matches!(
            registry.file_sha256(&dir.path().join("gone.wasm")),
            Err(LoadError::NotFound(_))
        ));
    }
}
