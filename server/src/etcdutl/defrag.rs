//! `etcdutl defrag --data-dir D`: rewrites a stopped member's db without its free pages
//! (redb's compaction, what the running member's Defragment does), offline.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{backend_path, lock, stat, EtcdutlError};

/// What a defrag did: the file and its size before and after.
#[derive(Debug, Clone)]
pub struct Defragmented {
    pub path: PathBuf,
    pub size_before: u64,
    pub size_after: u64,
}

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Defragments `<data_dir>/member/snap/db`, waiting up to `timeout` for a running member to
/// release it (`on_wait` runs once when the wait passes a second).
pub fn defrag_data_dir(
    data_dir: &Path,
    timeout: Option<Duration>,
    on_wait: impl FnOnce(&Path),
) -> Result<Defragmented, EtcdutlError> {
    let path = backend_path(data_dir);
    stat(&path)?;
    let size_before = file_size(&path);
    let mut db = lock::open_exclusive(&path, timeout, || on_wait(&path))?;
    // redb compacts in steps: `true` means it moved pages and another step may free more
    while db.compact().map_err(|e| EtcdutlError::Other(format!("defragment {}: {e}", path.display())))? {}
    drop(db);
    Ok(Defragmented { size_after: file_size(&path), path, size_before })
}
