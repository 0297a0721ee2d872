//! Files only the node's own user may read — its state and its compiled
//! artifacts — written atomically, so a reader sees the old file, no file,
//! or the whole new one, never a torn write; and the checks that a file or
//! directory found on disk is that user's alone.

use std::fs;
use std::io::Write;
use std::path::Path;

/// Creates `dir` (and its parents) and restricts it to mode 0700.
pub fn create_dir(dir: &Path) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    set_mode(dir, 0o700)
}

/// Writes a mode-0600 file from `parts`, through a temporary file renamed
/// into place.
pub fn write(path: &Path, parts: &[&[u8]]) -> std::io::Result<()> {
    let temp = write_temporary(path, parts)?;
    let renamed = fs::rename(&temp, path);
    if renamed.is_err() {
        let _ = fs::remove_file(&temp);
    }
    renamed
}

/// Writes a mode-0600 file from `parts` unless `path` already exists: the
/// whole file appears at once (a hard link to a complete temporary file),
/// and of racing writers exactly one wins. Returns whether this call did.
pub fn create_once(path: &Path, parts: &[&[u8]]) -> std::io::Result<bool> {
    let temp = write_temporary(path, parts)?;
    let linked = fs::hard_link(&temp, path);
    let _ = fs::remove_file(&temp);
    match linked {
        Ok(()) => Ok(true),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(error) => Err(error),
    }
}

/// A new mode-0600 file beside `path` holding `parts`, synced to disk.
fn write_temporary(path: &Path, parts: &[&[u8]]) -> std::io::Result<std::path::PathBuf> {
    let temp = path.with_extension(format!("tmp{}-{}", std::process::id(), fastrand::u32(..)));
    let written = (|| {
        let mut file = create_new_private(&temp)?;
        for part in parts {
            file.write_all(part)?;
        }
        file.sync_all()
    })();
    match written {
        Ok(()) => Ok(temp),
        Err(error) => {
            let _ = fs::remove_file(&temp);
            Err(error)
        }
    }
}

/// The effective uid of this process: the only owner whose files are trusted.
#[cfg(unix)]
pub fn current_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Whether a file or directory belongs to `uid` and no group or other user
/// can write it.
#[cfg(unix)]
pub fn is_private(metadata: &fs::Metadata, uid: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    metadata.uid() == uid && metadata.mode() & 0o022 == 0
}

/// Whether a file belongs to `uid` and no group or other user can read or
/// write it (mode 0600 or stricter).
#[cfg(unix)]
pub fn is_secret(metadata: &fs::Metadata, uid: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    metadata.uid() == uid && metadata.mode() & 0o077 == 0
}

#[cfg(unix)]
fn create_new_private(path: &Path) -> std::io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_path: &Path, _mode: u32) -> std::io::Result<()> {
    Ok(())
}

/// Without Unix ownership there is no owner to check.
#[cfg(not(unix))]
pub fn current_uid() -> u32 {
    0
}

/// Without Unix ownership and modes, every file counts as private.
#[cfg(not(unix))]
pub fn is_private(_metadata: &fs::Metadata, _uid: u32) -> bool {
    true
}

/// Without Unix ownership and modes, every file counts as secret.
#[cfg(not(unix))]
pub fn is_secret(_metadata: &fs::Metadata, _uid: u32) -> bool {
    true
}

#[cfg(not(unix))]
fn create_new_private(path: &Path) -> std::io::Result<fs::File> {
    fs::File::options().write(true).create_new(true).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_written_whole_and_private() {
        let dir = std::env::temp_dir().join(format!("iicp-private-{}", std::process::id()));
        create_dir(&dir).unwrap();
        let path = dir.join("state");
        write(&path, &[b"one ", b"two"]).unwrap();
        write(&path, &[b"three"]).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"three");
        assert_eq!(
            fs::read_dir(&dir).unwrap().count(),
            1,
            "no temporary file is left"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
            assert_eq!(
                fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
                0o700
            );
        }
        fs::remove_dir_all(&dir).unwrap();
    }
}
