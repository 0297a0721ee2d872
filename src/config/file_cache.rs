//! The files of configuration directories (`node.plugin_dirs`), parsed
//! again only when they changed: a hot reload of one plugin among thousands
//! parses one file, not thousands. Listing and stat-ing the others is what
//! remains (about 5 µs per file on the benchmark's VM: at 1,000 plugins
//! about what parsing them all from one file costs; docs/performance.md).
//!
//! A file's parse is kept with its stamp (size, inode, device, modification
//! and change times). It is reused only when the stamp is unchanged *and*
//! both times were at least [`RACY_WINDOW`] older than the read that
//! produced it: a file written again within one tick of a coarse
//! filesystem clock keeps its modification time, so a recent file is read
//! again on every reload until it is old enough to trust (git's rule for
//! "racily clean" index entries). The change time cannot be set by a user,
//! so a copy that preserves the modification time (`cp -p`, `rsync -t`)
//! is still seen.
//!
//! Bounds: at most [`MAX_FILES`] files over all directories,
//! [`MAX_FILE_BYTES`] per file and [`MAX_TOTAL_BYTES`] in all (each an error
//! naming the directory or file); the cache holds one entry per file last
//! listed, nothing for files that are gone.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use super::dir_watch::{Changes, DirWatch, RescanReason};

/// Files read over all configuration directories.
pub const MAX_FILES: usize = 10_000;
/// Bytes of one file.
pub const MAX_FILE_BYTES: u64 = 1 << 20;
/// Bytes of all files together (the parses are kept between reloads).
pub const MAX_TOTAL_BYTES: u64 = 64 << 20;
/// How much older than its read a file must be for its stamp to be trusted
/// (covers filesystems with one- and two-second timestamps).
pub const RACY_WINDOW: Duration = Duration::from_secs(2);

/// What identifies one version of a file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    inode: u64,
    device: u64,
    modified_ns: i128,
    changed_ns: i128,
}

impl Stamp {
    fn of(metadata: &std::fs::Metadata) -> Self {
        let ns = |secs: i64, nanos: i64| i128::from(secs) * 1_000_000_000 + i128::from(nanos);
        Self {
            len: metadata.len(),
            inode: metadata.ino(),
            device: metadata.dev(),
            modified_ns: ns(metadata.mtime(), metadata.mtime_nsec()),
            changed_ns: ns(metadata.ctime(), metadata.ctime_nsec()),
        }
    }

    /// Whether no write can have kept this stamp since `read_at`.
    fn settled_before(&self, read_at: SystemTime) -> bool {
        let Ok(since_epoch) = read_at.duration_since(SystemTime::UNIX_EPOCH) else {
            return false;
        };
        let read_ns = since_epoch.as_nanos() as i128;
        let window = RACY_WINDOW.as_nanos() as i128;
        self.modified_ns.max(self.changed_ns) + window <= read_ns
    }
}

/// Change events read and full listings by [`RescanReason`] since the
/// process started, over every cache (published by the reloader as
/// `iicp_plugin_dir_events_total` and `iicp_plugin_dir_full_listings_total`).
static EVENTS_READ: AtomicU64 = AtomicU64::new(0);
static FULL_LISTINGS: [AtomicU64; RescanReason::ALL.len()] =
    [const { AtomicU64::new(0) }; RescanReason::ALL.len()];

/// Events read and full listings (in [`RescanReason::ALL`]'s order) so far.
pub fn listing_totals() -> (u64, [u64; RescanReason::ALL.len()]) {
    (
        EVENTS_READ.load(Ordering::Relaxed),
        std::array::from_fn(|i| FULL_LISTINGS[i].load(Ordering::Relaxed)),
    )
}

/// One file of the last listing, with its parse.
struct CachedFile<T> {
    /// Index of its directory in the list read.
    dir: usize,
    path: Arc<Path>,
    stamp: Stamp,
    /// A symbolic link: its target's changes are no event in the
    /// directory, so it is stat-ed on every reload.
    is_link: bool,
    read_at: SystemTime,
    /// Bytes read, counted against [`MAX_TOTAL_BYTES`].
    bytes: u64,
    parsed: Arc<T>,
}

struct State<T> {
    /// The last listing, directory by directory, each in name order.
    files: Vec<CachedFile<T>>,
    /// The directories `watch` watches and `files` lists.
    dirs: Vec<PathBuf>,
    watch: Option<DirWatch>,
    /// Whether to watch at all (off: every reload lists every file).
    watching: bool,
}

/// Parsed files by path; `T` is what one file parses into.
pub struct ParsedFileCache<T> {
    state: Mutex<State<T>>,
}

impl<T> Default for ParsedFileCache<T> {
    fn default() -> Self {
        Self::new(true)
    }
}

/// The files one listing found, in order, with their parses.
#[derive(Debug)]
pub struct Listing<T> {
    /// Each file and what it parsed into.
    pub files: Vec<(Arc<Path>, Arc<T>)>,
    /// How many were parsed and how many reused.
    pub stats: ListingStats,
}

/// What one listing read.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ListingStats {
    /// Files parsed on this listing.
    pub parsed: usize,
    /// Files whose earlier parse was reused.
    pub reused: usize,
    /// Why every file was listed and stat-ed (none: only the files change
    /// notification named were looked at).
    pub listed_all: Option<RescanReason>,
    /// Change events read from the kernel for this listing.
    pub events: u64,
}

/// A file found by a listing or named by an event, not yet read.
struct Found {
    dir: usize,
    path: Arc<Path>,
    stamp: Stamp,
    is_link: bool,
}

impl<T> ParsedFileCache<T> {
    /// A cache; with `watching`, reloads use change notification where
    /// the directories' filesystem allows it ([`super::dir_watch`]).
    pub fn new(watching: bool) -> Self {
        Self {
            state: Mutex::new(State {
                files: Vec::new(),
                dirs: Vec::new(),
                watch: None,
                watching,
            }),
        }
    }

    /// Every `*.toml` file of `dirs` (names starting with `.` skipped, as
    /// editors' temporary files), directory by directory, each in byte
    /// order of its name, with what `parse` made of it. Files that did not
    /// change since the last call are not read again; with a watch, files
    /// no event named are not even stat-ed.
    pub fn read_dirs(
        &self,
        dirs: &[PathBuf],
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Listing<T>, String> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let result = state.read(dirs, &parse);
        if result.is_err() {
            // The events this listing consumed are gone: the next one
            // lists every file.
            state.watch = None;
        }
        result
    }
}

impl<T> State<T> {
    fn read(
        &mut self,
        dirs: &[PathBuf],
        parse: &impl Fn(&str) -> Result<T, String>,
    ) -> Result<Listing<T>, String> {
        let mut stats = ListingStats::default();
        let same_dirs = self.dirs == dirs;
        let changes = match &mut self.watch {
            Some(watch) if same_dirs && watch.watches(dirs) => {
                let before = watch.events();
                let changes = watch.changes();
                stats.events = watch.events() - before;
                changes
            }
            _ => {
                // Watch before listing: a write after the listing began is
                // an event for the next reload.
                self.watch = if self.watching {
                    DirWatch::new(dirs)
                } else {
                    None
                };
                self.dirs = dirs.to_vec();
                Changes::All(if self.watch.is_some() {
                    RescanReason::NewWatch
                } else {
                    RescanReason::Unwatched
                })
            }
        };
        EVENTS_READ.fetch_add(stats.events, Ordering::Relaxed);
        match changes {
            Changes::All(reason) => {
                stats.listed_all = Some(reason);
                let index = RescanReason::ALL.iter().position(|r| *r == reason);
                FULL_LISTINGS[index.unwrap_or_default()].fetch_add(1, Ordering::Relaxed);
                let mut found = Vec::new();
                for (index, dir) in dirs.iter().enumerate() {
                    list_toml_files(index, dir, &mut found)?;
                }
                self.reread(found, &mut stats, parse)?;
            }
            Changes::Names(names) => self.apply_events(names, &mut stats, parse)?,
        }
        let mut held: u64 = 0;
        for file in &self.files {
            held += file.bytes;
            if held > MAX_TOTAL_BYTES {
                return Err(format!(
                    "{}: the files of node.plugin_dirs hold more than {MAX_TOTAL_BYTES} bytes",
                    file.path.display()
                ));
            }
        }
        let files = self
            .files
            .iter()
            .map(|file| (file.path.clone(), file.parsed.clone()))
            .collect();
        Ok(Listing { files, stats })
    }

    /// Replaces the listing with `found`, reusing each unchanged file's
    /// parse (stamp equal and old enough to trust).
    fn reread(
        &mut self,
        found: Vec<Found>,
        stats: &mut ListingStats,
        parse: &impl Fn(&str) -> Result<T, String>,
    ) -> Result<(), String> {
        let mut known: HashMap<Arc<Path>, CachedFile<T>> = std::mem::take(&mut self.files)
            .into_iter()
            .map(|file| (file.path.clone(), file))
            .collect();
        let mut files = Vec::with_capacity(found.len());
        for found in found {
            let file = match known.remove(&found.path) {
                Some(mut file)
                    if file.stamp == found.stamp && found.stamp.settled_before(file.read_at) =>
                {
                    stats.reused += 1;
                    file.dir = found.dir;
                    file.is_link = found.is_link;
                    file
                }
                _ => {
                    stats.parsed += 1;
                    read_file(found, parse)?
                }
            };
            files.push(file);
        }
        // Files no longer listed are forgotten.
        self.files = files;
        Ok(())
    }

    /// Looks at the files events named (and at every symbolic link): each
    /// is read again, added or dropped; every other file keeps its parse.
    fn apply_events(
        &mut self,
        names: HashSet<(usize, OsString)>,
        stats: &mut ListingStats,
        parse: &impl Fn(&str) -> Result<T, String>,
    ) -> Result<(), String> {
        let mut read_now: HashSet<Arc<Path>> = HashSet::new();
        let mut named: Vec<(usize, OsString)> = names.into_iter().collect();
        named.sort();
        for (dir, name) in named {
            let Some(text) = name.to_str() else { continue };
            if text.starts_with('.') || !text.ends_with(".toml") {
                continue;
            }
            let path = self.dirs[dir].join(&name);
            let position = self.files.binary_search_by(|file| {
                (file.dir, file.path.file_name()).cmp(&(dir, Some(&name)))
            });
            match stat_file(&path)? {
                None => {
                    if let Ok(index) = position {
                        self.files.remove(index);
                    }
                }
                Some((stamp, is_link)) => {
                    stats.parsed += 1;
                    let path: Arc<Path> = path.into();
                    read_now.insert(path.clone());
                    let found = Found {
                        dir,
                        path,
                        stamp,
                        is_link,
                    };
                    match position {
                        Ok(index) => self.files[index] = read_file(found, parse)?,
                        Err(index) => {
                            if self.files.len() >= MAX_FILES {
                                return Err(too_many_files(&self.dirs[dir]));
                            }
                            self.files.insert(index, read_file(found, parse)?);
                        }
                    }
                }
            }
        }
        // Links: their targets change without an event here (those an
        // event named were just read).
        for index in 0..self.files.len() {
            let file = &self.files[index];
            if !file.is_link || read_now.contains(&file.path) {
                continue;
            }
            let (dir, path, known, read_at) =
                (file.dir, file.path.clone(), file.stamp, file.read_at);
            match stat_file(&path)? {
                Some((stamp, _)) if stamp == known && stamp.settled_before(read_at) => {}
                Some((stamp, is_link)) => {
                    stats.parsed += 1;
                    let found = Found {
                        dir,
                        path,
                        stamp,
                        is_link,
                    };
                    self.files[index] = read_file(found, parse)?;
                }
                None => {
                    return Err(format!("{}: the file a link names is gone", path.display()));
                }
            }
        }
        stats.reused = self.files.len() - stats.parsed.min(self.files.len());
        Ok(())
    }
}

fn too_many_files(dir: &Path) -> String {
    format!(
        "{}: more than {MAX_FILES} configuration files in node.plugin_dirs",
        dir.display()
    )
}

/// Reads and parses the file whose listing stamp is `found.stamp`. The
/// stamp was taken before the read: a write during the read leaves a newer
/// stamp (and an event), so the next listing reads the file again.
fn read_file<T>(
    found: Found,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<CachedFile<T>, String> {
    let name = found.path.display();
    let read_at = SystemTime::now();
    if found.stamp.len > MAX_FILE_BYTES {
        return Err(format!(
            "{name}: {} bytes, more than the {MAX_FILE_BYTES} a configuration file may hold",
            found.stamp.len
        ));
    }
    // Read at most one byte past the bound: a file that grew since its
    // stamp is refused without being read whole.
    let mut text = String::new();
    std::fs::File::open(&found.path)
        .and_then(|file| file.take(MAX_FILE_BYTES + 1).read_to_string(&mut text))
        .map_err(|e| format!("{name}: cannot read: {e}"))?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(format!(
            "{name}: more than the {MAX_FILE_BYTES} bytes a configuration file may hold"
        ));
    }
    let parsed = parse(&text).map_err(|e| format!("{name}: {e}"))?;
    Ok(CachedFile {
        dir: found.dir,
        path: found.path.clone(),
        stamp: found.stamp,
        is_link: found.is_link,
        read_at,
        bytes: text.len() as u64,
        parsed: Arc::new(parsed),
    })
}

/// The stamp of the regular file at `path` (following a link) and whether
/// it is a link; `None` when it is gone or not a regular file.
fn stat_file(path: &Path) -> Result<Option<(Stamp, bool)>, String> {
    let is_link = match std::fs::symlink_metadata(path) {
        Ok(metadata) => metadata.file_type().is_symlink(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    match std::fs::metadata(path) {
        Ok(metadata) if metadata.is_file() => Ok(Some((Stamp::of(&metadata), is_link))),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Appends the `*.toml` files of `dir` (the `index`th directory) with
/// their stamps, in name order, to `files` (those of the directories before
/// it), which may hold at most [`MAX_FILES`].
fn list_toml_files(index: usize, dir: &Path, files: &mut Vec<Found>) -> Result<(), String> {
    let listing = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let first = files.len();
    for item in listing {
        let item = item.map_err(|e| format!("{}: {e}", dir.display()))?;
        let name = item.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') || !name.ends_with(".toml") {
            continue;
        }
        // One stat per file, relative to the open directory (the entry's
        // own metadata), except for symbolic links, which are followed (a
        // common way to enable a plugin); directories and other non-files
        // are skipped.
        let is_link = item.file_type().is_ok_and(|t| t.is_symlink());
        let metadata = if is_link {
            std::fs::metadata(item.path())
        } else {
            item.metadata()
        };
        let metadata = metadata.map_err(|e| format!("{}: {e}", item.path().display()))?;
        if metadata.is_file() {
            files.push(Found {
                dir: index,
                path: item.path().into(),
                stamp: Stamp::of(&metadata),
                is_link,
            });
        }
        if files.len() > MAX_FILES {
            return Err(too_many_files(dir));
        }
    }
    // All in one directory: the names alone order them (comparing whole
    // paths component by component costs more than the listing).
    files[first..].sort_by(|a, b| a.path.file_name().cmp(&b.path.file_name()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    fn lengths(cache: &ParsedFileCache<usize>, dirs: &[PathBuf]) -> (Vec<usize>, ListingStats) {
        let listing = cache.read_dirs(dirs, |text| Ok(text.len())).unwrap();
        let lengths = listing.files.iter().map(|(_, n)| **n).collect();
        (lengths, listing.stats)
    }

    /// Pretends every file was read long after it was written (the change
    /// time cannot be set back), so stamps are trusted.
    fn age(cache: &ParsedFileCache<usize>) {
        for file in &mut cache.state.lock().unwrap().files {
            file.read_at = SystemTime::now() + 2 * RACY_WINDOW;
        }
    }

    fn watched(cache: &ParsedFileCache<usize>) -> bool {
        cache.state.lock().unwrap().watch.is_some()
    }

    #[test]
    fn lists_toml_files_in_name_order_and_skips_the_rest() {
        for watching in [false, true] {
            let d = dir();
            for (name, text) in [
                ("b.toml", "bb"),
                ("a.toml", "a"),
                (".x.toml", "x"),
                ("c.txt", "c"),
            ] {
                std::fs::write(d.path().join(name), text).unwrap();
            }
            std::fs::create_dir(d.path().join("sub.toml")).unwrap();
            let cache = ParsedFileCache::new(watching);
            assert_eq!(lengths(&cache, &[d.path().into()]).0, vec![1, 2]);
        }
    }

    #[test]
    fn a_recent_file_is_read_again_even_with_the_same_stamp() {
        for watching in [false, true] {
            let d = dir();
            let path = d.path().join("a.toml");
            std::fs::write(&path, "one").unwrap();
            let cache = ParsedFileCache::new(watching);
            let dirs = [d.path().to_path_buf()];
            assert_eq!(lengths(&cache, &dirs).1.parsed, 1);
            // Same size, written within the racy window: never trusted.
            std::fs::write(&path, "two").unwrap();
            let (read, stats) = lengths(&cache, &dirs);
            assert_eq!((read, stats.parsed, stats.reused), (vec![3], 1, 0));
        }
    }

    #[test]
    fn an_edit_is_seen_with_and_without_the_watch() {
        for watching in [false, true] {
            let d = dir();
            let (a, b) = (d.path().join("a.toml"), d.path().join("b.toml"));
            std::fs::write(&a, "a").unwrap();
            std::fs::write(&b, "b").unwrap();
            let cache = ParsedFileCache::new(watching);
            let dirs = [d.path().to_path_buf()];
            let first = lengths(&cache, &dirs).1;
            assert_eq!(watched(&cache), watching, "/tmp is a local filesystem");
            let listed_all = if watching {
                RescanReason::NewWatch
            } else {
                RescanReason::Unwatched
            };
            assert_eq!(first.listed_all, Some(listed_all));
            age(&cache);
            let unchanged = lengths(&cache, &dirs).1;
            assert_eq!((unchanged.parsed, unchanged.reused), (0, 2));
            // With the watch, nothing was listed: no event named a file.
            let expected = (!watching).then_some(RescanReason::Unwatched);
            assert_eq!(unchanged.listed_all, expected);
            std::fs::write(&b, "bbb").unwrap();
            let (read, stats) = lengths(&cache, &dirs);
            assert_eq!((read, stats.parsed, stats.reused), (vec![1, 3], 1, 1));
            assert_eq!(stats.listed_all, expected);
            if watching {
                assert!(stats.events > 0, "{stats:?}");
            }
            // A new file and a removed one.
            std::fs::write(d.path().join("0.toml"), "zero").unwrap();
            std::fs::remove_file(&a).unwrap();
            assert_eq!(lengths(&cache, &dirs).0, vec![4, 3]);
            assert_eq!(cache.state.lock().unwrap().files.len(), 2);
        }
    }

    #[test]
    fn a_flood_of_changes_lists_every_file_and_misses_none() {
        let d = dir();
        let dirs = [d.path().to_path_buf()];
        let cache = ParsedFileCache::new(true);
        std::fs::write(d.path().join("first.toml"), "1").unwrap();
        lengths(&cache, &dirs);
        assert!(watched(&cache));
        // More names than the watch remembers: one listing of everything.
        for i in 0..=dir_watch_bound() {
            std::fs::write(d.path().join(format!("{i:05}.toml")), "22").unwrap();
        }
        let (read, stats) = lengths(&cache, &dirs);
        assert_eq!(stats.listed_all, Some(RescanReason::TooManyChanges));
        assert_eq!(read.len(), dir_watch_bound() + 2);
        // Then back to events only.
        std::fs::write(d.path().join("first.toml"), "333").unwrap();
        let (read, stats) = lengths(&cache, &dirs);
        assert_eq!((stats.listed_all, read.last()), (None, Some(&3)));
    }

    fn dir_watch_bound() -> usize {
        super::super::dir_watch::MAX_CHANGED_NAMES
    }

    #[test]
    fn a_linked_file_and_a_replaced_directory_are_seen_under_the_watch() {
        let d = dir();
        let outside = dir();
        let target = outside.path().join("t.toml");
        std::fs::write(&target, "t").unwrap();
        let plugins = d.path().join("plugins");
        std::fs::create_dir(&plugins).unwrap();
        std::os::unix::fs::symlink(&target, plugins.join("link.toml")).unwrap();
        let cache = ParsedFileCache::new(true);
        let dirs = [plugins.clone()];
        assert_eq!(lengths(&cache, &dirs).0, vec![1]);
        age(&cache);
        // The link's target changes: no event in the directory, but links
        // are stat-ed on every reload.
        std::fs::write(&target, "tt").unwrap();
        assert_eq!(lengths(&cache, &dirs).0, vec![2]);
        // The whole directory is swapped for another one.
        let next = d.path().join("next");
        std::fs::create_dir(&next).unwrap();
        std::fs::write(next.join("n.toml"), "nnn").unwrap();
        std::fs::rename(&plugins, d.path().join("old")).unwrap();
        std::fs::rename(&next, &plugins).unwrap();
        let (read, stats) = lengths(&cache, &dirs);
        assert_eq!(read, vec![3]);
        assert!(stats.listed_all.is_some(), "{stats:?}");
    }

    #[test]
    fn bounds_and_errors_name_the_file() {
        for watching in [false, true] {
            let d = dir();
            let big = d.path().join("big.toml");
            std::fs::write(&big, vec![b'#'; MAX_FILE_BYTES as usize + 1]).unwrap();
            let cache = ParsedFileCache::<usize>::new(watching);
            let error = cache
                .read_dirs(&[d.path().into()], |t| Ok(t.len()))
                .unwrap_err();
            assert!(
                error.contains("big.toml") && error.contains("more than"),
                "{error}"
            );
            std::fs::remove_file(&big).unwrap();
            std::fs::write(d.path().join("bad.toml"), "x").unwrap();
            let error = cache
                .read_dirs(&[d.path().into()], |_| Err::<usize, _>("no".into()))
                .unwrap_err();
            assert!(error.contains("bad.toml: no"), "{error}");
            // A refused file is refused again on the next read (the events
            // the failed read consumed are not lost).
            let error = cache
                .read_dirs(&[d.path().into()], |_| Err::<usize, _>("no".into()))
                .unwrap_err();
            assert!(error.contains("bad.toml: no"), "{error}");
            let missing = cache
                .read_dirs(&[d.path().join("absent")], |t| Ok(t.len()))
                .unwrap_err();
            assert!(missing.contains("absent"), "{missing}");
        }
    }

    #[test]
    fn too_many_files_or_bytes_in_all_are_refused() {
        let many = dir();
        for i in 0..MAX_FILES {
            std::fs::write(many.path().join(format!("{i}.toml")), "").unwrap();
        }
        let cache = ParsedFileCache::<usize>::default();
        let read = |dirs: &[PathBuf]| cache.read_dirs(dirs, |t| Ok(t.len()));
        assert_eq!(read(&[many.path().into()]).unwrap().files.len(), MAX_FILES);
        // The bound is over all directories together, and one alone, and
        // holds for a file an event names.
        let error = read(&[many.path().into(), many.path().into()]).unwrap_err();
        assert!(error.contains(&format!("more than {MAX_FILES}")), "{error}");
        read(&[many.path().into()]).unwrap();
        std::fs::write(many.path().join("last.toml"), "").unwrap();
        let error = read(&[many.path().into()]).unwrap_err();
        assert!(error.contains(&format!("more than {MAX_FILES}")), "{error}");
        cache.state.lock().unwrap().files.clear();
        // Each file within its own bound, all of them past the total.
        let big = dir();
        let files = MAX_TOTAL_BYTES / MAX_FILE_BYTES + 1;
        for i in 0..files {
            let file = std::fs::File::create(big.path().join(format!("{i}.toml"))).unwrap();
            file.set_len(MAX_FILE_BYTES).unwrap();
        }
        let error = cache
            .read_dirs(&[big.path().into()], |t| Ok(t.len()))
            .unwrap_err();
        assert!(
            error.contains(&format!("more than {MAX_TOTAL_BYTES}")),
            "{error}"
        );
    }
}
