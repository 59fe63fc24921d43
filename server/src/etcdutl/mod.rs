//! The offline work behind `etcdutl-rs` (the binary only parses flags and prints): each verb
//! reads or rewrites a data dir or a db file of a member that is not running.
//!
//! Invariant: a verb touches a member's db only while it holds the db's lock (redb's file
//! lock, which a running etcd-rs holds for its whole life), so nothing here ever writes under a
//! running member; waiting for the lock is bounded by `--timeout` as in etcdutl 3.6.

pub mod defrag;
pub mod export;
pub mod hashkv;
pub mod lock;

use std::path::Path;

/// Why an etcdutl-rs verb failed; the binary prints it after `Error: ` as etcdutl does.
#[derive(Debug, thiserror::Error)]
pub enum EtcdutlError {
    /// Go's wording of a failed `os.Stat` (etcdutl checks its inputs this way first).
    #[error("stat {path}: {why}")]
    Stat { path: String, why: String },
    /// The db's lock stayed held (a member is running on it) for the whole `--timeout`.
    #[error("timeout: {0:?} is locked by a running member (stop it, or use etcdctl against it)")]
    LockTimeout(String),
    #[error("{0}")]
    Mvcc(#[from] etcd_mvcc::MvccError),
    #[error("{0}")]
    Server(#[from] crate::errors::ServerError),
    #[error("{0}")]
    Other(String),
}

/// `os.Stat(path)` as etcdutl calls it, with Go's error text.
pub fn stat(path: &Path) -> Result<(), EtcdutlError> {
    std::fs::metadata(path).map(|_| ()).map_err(|e| EtcdutlError::Stat {
        path: path.display().to_string(),
        why: match e.kind() {
            std::io::ErrorKind::NotFound => "no such file or directory".to_string(),
            std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
            _ => e.to_string(),
        },
    })
}

/// etcd's `datadir.ToBackendFileName`: `<data-dir>/member/snap/db`.
pub fn backend_path(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("member").join("snap").join("db")
}
