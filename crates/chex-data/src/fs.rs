//! Writing files so that a crash never leaves half of one: the workspace's single
//! [`write_atomic`], and [`sync_tree`] for folders (checkpoints) that are renamed into place.

use std::io::Write;
use std::path::Path;

/// Write `bytes` to `path` through a temporary sibling: the data is flushed to the disk
/// (`fsync`) before the rename, and the folder after it, so after a crash or power loss the path
/// holds either the old file or the whole new one. Parent folders are created.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(dir) = dir {
        std::fs::create_dir_all(dir)?;
    }
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    let tmp = path.with_file_name(name);
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = dir {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Flush every file under `dir`, and the folders themselves, to the disk (before a folder
/// written by other code is renamed into place).
pub fn sync_tree(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            sync_tree(&path)?;
        } else {
            std::fs::File::open(&path)?.sync_all()?;
        }
    }
    sync_dir(dir)
}

/// Flush a folder's entries (a rename is durable only once its folder is).
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    // Windows cannot open a folder as a file; its renames are durable on return.
    if cfg!(unix) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_files_and_leaves_no_scratch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/state.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
        sync_tree(dir.path()).unwrap();
    }
}
