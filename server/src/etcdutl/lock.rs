//! Waiting for a member's db lock. A running etcd-rs holds redb's file lock on `member/snap/db`
//! for its whole life, so opening the file exclusively succeeds exactly when no member runs on
//! it (etcd's tools wait on bbolt's flock the same way).

use std::path::Path;
use std::time::{Duration, Instant};

use super::EtcdutlError;

/// How often the lock is tried again while a member holds it.
const RETRY: Duration = Duration::from_millis(100);
/// After this long, `on_slow` tells the operator what is being waited for (etcdutl 3.5: 1 s).
const SLOW_AFTER: Duration = Duration::from_secs(1);
/// redb's page cache for a tool's one pass over the file.
const TOOL_CACHE_BYTES: usize = 16 * 1024 * 1024;

/// Opens the redb file at `path` exclusively, retrying while another process holds its lock,
/// for up to `timeout` (`None`: indefinitely, as etcdutl's `--timeout 0`). `on_slow` runs once
/// when the wait passes one second.
pub fn open_exclusive(
    path: &Path,
    timeout: Option<Duration>,
    on_slow: impl FnOnce(),
) -> Result<redb::Database, EtcdutlError> {
    let start = Instant::now();
    let mut on_slow = Some(on_slow);
    loop {
        match redb::Database::builder().set_cache_size(TOOL_CACHE_BYTES).open(path) {
            Ok(db) => return Ok(db),
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {}
            Err(e) => return Err(EtcdutlError::Other(format!("open {}: {e}", path.display()))),
        }
        let waited = start.elapsed();
        if timeout.is_some_and(|t| waited >= t) {
            return Err(EtcdutlError::LockTimeout(path.display().to_string()));
        }
        if waited >= SLOW_AFTER {
            if let Some(f) = on_slow.take() {
                f();
            }
        }
        std::thread::sleep(RETRY);
    }
}

/// Waits as [`open_exclusive`] does, then lets the lock go: for callers that open the file
/// through their own store type right after (a member starting in between is not guarded).
pub fn wait_unlocked(path: &Path, timeout: Option<Duration>) -> Result<(), EtcdutlError> {
    open_exclusive(path, timeout, || {}).map(drop)
}
