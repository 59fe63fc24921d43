//! Directory operations made durable: what a crash-safe rename or removal needs after it (the
//! directory holding the change fsynced). Shared by the WAL writers here and the server's
//! takeover and export, each mapping the `io::Error` into its own error type.

use std::fs::{self, File};
use std::io;
use std::path::Path;

/// The directory `path` is in (`.` for a bare name).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// fsync of a directory: makes the creations, renames and removals in it durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Removes the directory tree at `path` if there is one, durably (its parent fsynced after).
/// True when something was removed.
pub fn remove_dir_all_if_there(path: &Path) -> io::Result<bool> {
    if !path.exists() {
        return Ok(false);
    }
    fs::remove_dir_all(path)?;
    fsync_dir(parent_dir(path))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parent_of_a_bare_name_is_the_current_dir() {
        assert_eq!(parent_dir(Path::new("wal")), Path::new("."));
        assert_eq!(parent_dir(Path::new("/a/b")), Path::new("/a"));
    }

    #[test]
    fn removes_a_tree_only_when_there() {
        let dir = std::env::temp_dir().join(format!("durable-fs-{}", std::process::id()));
        fs::create_dir_all(dir.join("x/y")).unwrap();
        assert!(remove_dir_all_if_there(&dir.join("x")).unwrap());
        assert!(!dir.join("x").exists());
        assert!(!remove_dir_all_if_there(&dir.join("x")).unwrap());
        fs::remove_dir_all(&dir).unwrap();
    }
}
