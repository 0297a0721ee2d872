//! Keeping a directory of cache files under a byte bound: the compiled-
//! artifact cache (`runtime::cache`) and the OCI blob store (`oci::store`)
//! both drop their least recently used entries beyond their bound.

use std::fs;
use std::path::{Path, PathBuf};

/// Removes the least recently used `*.{extension}` files of `dir` until at
/// most `max_bytes` of them remain.
pub fn prune(dir: &Path, extension: &str, max_bytes: u64) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut files: Vec<(std::time::SystemTime, u64, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|ext| ext == extension))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pruning_removes_the_least_recently_used_first() {
        let dir = std::env::temp_dir().join(format!("iicp-prune-{}", std::process::id()));
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
        prune(&dir, "cwasm", 250);
        assert!(!dir.join("a.cwasm").exists());
        assert!(dir.join("b.cwasm").exists() && dir.join("c.cwasm").exists());
        assert!(
            dir.join("keep.txt").exists(),
            "only cache entries are pruned"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
