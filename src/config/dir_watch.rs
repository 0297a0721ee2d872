//! Change notification for the plugin directories (`node.plugin_dirs`,
//! Linux inotify): a reload of one plugin among thousands looks at the
//! files the kernel says were written, created, moved or removed, instead
//! of listing and stat-ing every file.
//!
//! No thread reads the events: the kernel queues them on the write itself
//! (before `write` returns), so draining the queue when a reload starts
//! sees every change completed before it. The watch is only a shortcut —
//! whenever it cannot vouch for the whole picture the caller lists every
//! file again ([`Changes::All`]): the kernel's queue overflowed (its bound
//! is `/proc/sys/fs/inotify/max_queued_events`), more than
//! [`MAX_CHANGED_NAMES`] names changed, a watched directory was removed,
//! moved or replaced, or the directory lives on a filesystem whose changes
//! may come from elsewhere (network filesystems, FUSE) and so never reach
//! inotify. Files that are symbolic links are the caller's to stat: a
//! change to a link's target is not an event in the directory.

use std::collections::HashSet;
use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Names remembered between two reloads; more changed names than this and
/// the next reload lists every file (as it would without the watch).
pub const MAX_CHANGED_NAMES: usize = 4_096;

/// Bytes read from the kernel's queue per `read` call.
const READ_BUFFER_BYTES: usize = 16 << 10;

/// Why a reload lists every file instead of trusting the watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RescanReason {
    /// A new watch (first reload, other directories, or a watch dropped).
    NewWatch,
    /// The kernel's event queue overflowed.
    Overflow,
    /// More than [`MAX_CHANGED_NAMES`] names changed.
    TooManyChanges,
    /// A watched directory was removed, moved, replaced or unmounted.
    DirectoryGone,
    /// No watch: inotify is unavailable or the filesystem may change
    /// without telling it.
    Unwatched,
}

impl RescanReason {
    /// Every reason, in the order of [`Self::label`]'s values.
    pub const ALL: [Self; 5] = [
        Self::NewWatch,
        Self::Overflow,
        Self::TooManyChanges,
        Self::DirectoryGone,
        Self::Unwatched,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::NewWatch => "new_watch",
            Self::Overflow => "overflow",
            Self::TooManyChanges => "too_many_changes",
            Self::DirectoryGone => "directory_gone",
            Self::Unwatched => "unwatched",
        }
    }
}

/// What changed in the watched directories since the last call.
#[derive(Debug, PartialEq, Eq)]
pub enum Changes {
    /// Anything may have: list every file.
    All(RescanReason),
    /// Only these names (directory index, file name) may have.
    Names(HashSet<(usize, OsString)>),
}

/// An inotify instance watching each of a list of directories.
pub struct DirWatch {
    fd: OwnedFd,
    /// Watch descriptor → index of its directory.
    watches: Vec<(i32, usize)>,
    /// Each directory's device and inode when it was watched.
    identities: Vec<(u64, u64)>,
    /// Events read since the watch was made (for the metric).
    events: u64,
}

/// Filesystems on which every change is a local write inotify sees.
fn notifies_every_change(dir: &Path) -> bool {
    const LOCAL: [i64; 8] = [
        0xEF53,      // ext2/3/4
        0x5846_5342, // xfs
        0x9123_683E, // btrfs
        0x0102_1994, // tmpfs
        0x8584_58F6, // ramfs
        0x794C_7630, // overlayfs
        0xF2F5_2010, // f2fs
        0x2FC1_2FC1, // zfs
    ];
    let Ok(path) = CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `path` is a valid C string; `stat` is written by the call.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(path.as_ptr(), &mut stat) } != 0 {
        return false;
    }
    LOCAL.contains(&(stat.f_type as i64))
}

/// A directory's device and inode (the directory a symbolic link points
/// to, when it is one).
fn identity(dir: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(dir).ok().map(|m| (m.dev(), m.ino()))
}

impl DirWatch {
    /// Watches `dirs`; `None` when inotify is unavailable (or out of
    /// watches) or a directory is on a filesystem it cannot vouch for.
    pub fn new(dirs: &[PathBuf]) -> Option<Self> {
        if !dirs.iter().all(|dir| notifies_every_change(dir)) {
            return None;
        }
        // SAFETY: plain syscall; the descriptor is owned below.
        let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if raw < 0 {
            return None;
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mask = libc::IN_CLOSE_WRITE
            | libc::IN_MODIFY
            | libc::IN_ATTRIB
            | libc::IN_CREATE
            | libc::IN_DELETE
            | libc::IN_MOVED_FROM
            | libc::IN_MOVED_TO
            | libc::IN_DELETE_SELF
            | libc::IN_MOVE_SELF
            | libc::IN_ONLYDIR;
        let mut watches = Vec::with_capacity(dirs.len());
        let mut identities = Vec::with_capacity(dirs.len());
        for (index, dir) in dirs.iter().enumerate() {
            let path = CString::new(dir.as_os_str().as_bytes()).ok()?;
            // SAFETY: valid descriptor and C string.
            let wd = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr(), mask) };
            if wd < 0 {
                return None;
            }
            watches.push((wd, index));
            identities.push(identity(dir)?);
        }
        Some(Self {
            fd,
            watches,
            identities,
            events: 0,
        })
    }

    /// Events read since the watch was made.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// Whether `dirs` are still the directories watched (a symbolic link
    /// to a directory may have been pointed elsewhere).
    pub fn watches(&self, dirs: &[PathBuf]) -> bool {
        dirs.len() == self.identities.len()
            && dirs
                .iter()
                .zip(&self.identities)
                .all(|(dir, known)| identity(dir) == Some(*known))
    }

    /// Drains the kernel's queue: what changed since the last call.
    pub fn changes(&mut self) -> Changes {
        let mut names = HashSet::new();
        let mut buffer = vec![0u8; READ_BUFFER_BYTES];
        let mut verdict = None;
        loop {
            // SAFETY: the buffer is ours and `len` bytes long.
            let read = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    buffer.as_mut_ptr().cast(),
                    buffer.len(),
                )
            };
            if read <= 0 {
                // EAGAIN: the queue is empty. Any other error leaves the
                // watch unable to vouch for anything.
                if read < 0
                    && std::io::Error::last_os_error().kind() != std::io::ErrorKind::WouldBlock
                {
                    verdict.get_or_insert(RescanReason::Overflow);
                }
                break;
            }
            let mut offset = 0;
            let header = std::mem::size_of::<libc::inotify_event>();
            while offset + header <= read as usize {
                // SAFETY: the kernel wrote a whole event at `offset`.
                let event: libc::inotify_event =
                    unsafe { std::ptr::read_unaligned(buffer[offset..].as_ptr().cast()) };
                let end = (offset + header + event.len as usize).min(read as usize);
                let name_bytes = &buffer[offset + header..end];
                offset = end;
                self.events += 1;
                if event.mask & libc::IN_Q_OVERFLOW != 0 {
                    verdict.get_or_insert(RescanReason::Overflow);
                    continue;
                }
                if event.mask
                    & (libc::IN_DELETE_SELF
                        | libc::IN_MOVE_SELF
                        | libc::IN_IGNORED
                        | libc::IN_UNMOUNT)
                    != 0
                {
                    verdict.get_or_insert(RescanReason::DirectoryGone);
                    continue;
                }
                let Some(&(_, dir)) = self.watches.iter().find(|(wd, _)| *wd == event.wd) else {
                    continue;
                };
                // The name is padded with NULs to the event's length.
                let end = name_bytes
                    .iter()
                    .position(|&b| b == 0)
                    .unwrap_or(name_bytes.len());
                if names.len() < MAX_CHANGED_NAMES {
                    names.insert((dir, OsStr::from_bytes(&name_bytes[..end]).to_os_string()));
                } else {
                    verdict.get_or_insert(RescanReason::TooManyChanges);
                }
            }
        }
        match verdict {
            Some(reason) => Changes::All(reason),
            None => Changes::Names(names),
        }
    }
}
