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

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

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

struct Entry<T> {
    stamp: Stamp,
    read_at: SystemTime,
    /// Bytes read, counted against [`MAX_TOTAL_BYTES`].
    bytes: u64,
    parsed: Arc<T>,
}

/// Parsed files by path; `T` is what one file parses into.
pub struct ParsedFileCache<T> {
    entries: Mutex<HashMap<PathBuf, Entry<T>>>,
}

impl<T> Default for ParsedFileCache<T> {
    fn default() -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
        }
    }
}

/// The files one listing found, in order, with their parses.
#[derive(Debug)]
pub struct Listing<T> {
    /// Each file and what it parsed into.
    pub files: Vec<(PathBuf, Arc<T>)>,
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
}

impl<T> ParsedFileCache<T> {
    /// Every `*.toml` file of `dirs` (names starting with `.` skipped, as
    /// editors' temporary files), directory by directory, each in byte
    /// order of its name, with what `parse` made of it. Files that did not
    /// change since the last call are not read again.
    pub fn read_dirs(
        &self,
        dirs: &[PathBuf],
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Listing<T>, String> {
        let mut files: Vec<(PathBuf, Stamp)> = Vec::new();
        for dir in dirs {
            list_toml_files(dir, &mut files)?;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let mut kept = HashMap::with_capacity(files.len());
        let mut read = Vec::with_capacity(files.len());
        let mut stats = ListingStats::default();
        // Counted from what was read, not from the listing's sizes: a file
        // may grow between its stat and its read.
        let mut held: u64 = 0;
        for (path, stamp) in files {
            let entry = match entries.remove(&path) {
                Some(entry) if entry.stamp == stamp && stamp.settled_before(entry.read_at) => {
                    stats.reused += 1;
                    entry
                }
                _ => {
                    stats.parsed += 1;
                    read_entry(&path, stamp, &parse)?
                }
            };
            held += entry.bytes;
            if held > MAX_TOTAL_BYTES {
                return Err(format!(
                    "{}: the files of node.plugin_dirs hold more than {MAX_TOTAL_BYTES} bytes",
                    path.display()
                ));
            }
            read.push((path.clone(), entry.parsed.clone()));
            kept.insert(path, entry);
        }
        // Files no longer listed are forgotten.
        *entries = kept;
        Ok(Listing { files: read, stats })
    }
}

/// Reads and parses the file whose listing stamp is `stamp`. The stamp was
/// taken before the read: a write during the read leaves a newer stamp, so
/// the next listing reads the file again.
fn read_entry<T>(
    path: &Path,
    stamp: Stamp,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Entry<T>, String> {
    let name = path.display();
    let read_at = SystemTime::now();
    if stamp.len > MAX_FILE_BYTES {
        return Err(format!(
            "{name}: {} bytes, more than the {MAX_FILE_BYTES} a configuration file may hold",
            stamp.len
        ));
    }
    // Read at most one byte past the bound: a file that grew since its
    // stamp is refused without being read whole.
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(MAX_FILE_BYTES + 1).read_to_string(&mut text))
        .map_err(|e| format!("{name}: cannot read: {e}"))?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(format!(
            "{name}: more than the {MAX_FILE_BYTES} bytes a configuration file may hold"
        ));
    }
    let parsed = parse(&text).map_err(|e| format!("{name}: {e}"))?;
    Ok(Entry {
        stamp,
        read_at,
        bytes: text.len() as u64,
        parsed: Arc::new(parsed),
    })
}

/// Appends the `*.toml` files of `dir` with their stamps, in name order,
/// to `files` (those of the directories before it), which may hold at most
/// [`MAX_FILES`].
fn list_toml_files(dir: &Path, files: &mut Vec<(PathBuf, Stamp)>) -> Result<(), String> {
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
            files.push((item.path(), Stamp::of(&metadata)));
        }
        if files.len() > MAX_FILES {
            return Err(format!(
                "{}: more than {MAX_FILES} configuration files in node.plugin_dirs",
                dir.display()
            ));
        }
    }
    // All in one directory: the names alone order them (comparing whole
    // paths component by component costs more than the listing).
    files[first..].sort_by(|a, b| a.0.file_name().cmp(&b.0.file_name()));
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

    #[test]
    fn lists_toml_files_in_name_order_and_skips_the_rest() {
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
        let cache = ParsedFileCache::default();
        assert_eq!(lengths(&cache, &[d.path().into()]).0, vec![1, 2]);
    }

    #[test]
    fn a_recent_file_is_read_again_even_with_the_same_stamp() {
        let d = dir();
        let path = d.path().join("a.toml");
        std::fs::write(&path, "one").unwrap();
        let cache = ParsedFileCache::default();
        let dirs = [d.path().to_path_buf()];
        assert_eq!(lengths(&cache, &dirs).1.parsed, 1);
        // Same size, written within the racy window: never trusted.
        std::fs::write(&path, "two").unwrap();
        let (read, stats) = lengths(&cache, &dirs);
        assert_eq!((read, stats.parsed, stats.reused), (vec![3], 1, 0));
    }

    #[test]
    fn an_old_unchanged_file_is_not_read_again_and_a_changed_one_is() {
        let d = dir();
        let (a, b) = (d.path().join("a.toml"), d.path().join("b.toml"));
        std::fs::write(&a, "a").unwrap();
        std::fs::write(&b, "b").unwrap();
        // The change time cannot be set back, so trust needs a read made
        // well after both times: pretend the first read happened later.
        let cache = ParsedFileCache::default();
        let dirs = [d.path().to_path_buf()];
        lengths(&cache, &dirs);
        for entry in cache.entries.lock().unwrap().values_mut() {
            entry.read_at = SystemTime::now() + 2 * RACY_WINDOW;
        }
        assert_eq!(
            lengths(&cache, &dirs).1,
            ListingStats {
                parsed: 0,
                reused: 2
            }
        );
        std::fs::write(&b, "bbb").unwrap();
        let (read, stats) = lengths(&cache, &dirs);
        assert_eq!(
            (read, stats),
            (
                vec![1, 3],
                ListingStats {
                    parsed: 1,
                    reused: 1
                }
            )
        );
        // A removed file is forgotten.
        std::fs::remove_file(&a).unwrap();
        lengths(&cache, &dirs);
        assert_eq!(cache.entries.lock().unwrap().len(), 1);
    }

    #[test]
    fn bounds_and_errors_name_the_file() {
        let d = dir();
        let big = d.path().join("big.toml");
        std::fs::write(&big, vec![b'#'; MAX_FILE_BYTES as usize + 1]).unwrap();
        let cache = ParsedFileCache::<usize>::default();
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
        let missing = cache
            .read_dirs(&[d.path().join("absent")], |t| Ok(t.len()))
            .unwrap_err();
        assert!(missing.contains("absent"), "{missing}");
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
        // The bound is over all directories together, and one alone.
        let error = read(&[many.path().into(), many.path().into()]).unwrap_err();
        assert!(error.contains(&format!("more than {MAX_FILES}")), "{error}");
        std::fs::write(many.path().join("last.toml"), "").unwrap();
        let error = read(&[many.path().into()]).unwrap_err();
        assert!(error.contains(&format!("more than {MAX_FILES}")), "{error}");
        cache.entries.lock().unwrap().clear();
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
        assert!(cache.entries.lock().unwrap().is_empty());
    }
}
