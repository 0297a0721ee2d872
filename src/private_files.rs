//! Files only the node's own user may read — its state and its compiled
//! artifacts — written atomically, so a reader sees the old file, no file,
//! or the whole new one, never a torn write.

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
    let temp = path.with_extension(format!("tmp{}-{}", std::process::id(), fastrand::u32(..)));
    let written = (|| {
        let mut file = fs::File::create(&temp)?;
        set_mode(&temp, 0o600)?;
        for part in parts {
            file.write_all(part)?;
        }
        file.sync_all()?;
        drop(file);
        fs::rename(&temp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&temp);
    }
    written
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
