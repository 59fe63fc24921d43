//! `etcdutl hashkv <file> [--rev R]` (etcd 3.6): the KV history hash of a db file, the same
//! figure a member's HashKV answers at that revision. The file may be an etcd-rs backend
//! (`member/snap/db` of a stopped member) or etcd's bbolt format (a snapshot from
//! `etcdctl snapshot save`, or etcd's own `member/snap/db`), which is first converted into a
//! temporary etcd-rs backend (etcd_backend.rs) and hashed there.

use std::path::Path;
use std::time::Duration;

use etcd_mvcc::bolt::BoltReader;
use etcd_mvcc::KvStore;

use super::{lock, stat, EtcdutlError};

/// etcdutl's `HashKV` (JSON field names as etcd 3.6 prints them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct HashKv {
    pub hash: u32,
    #[serde(rename = "hashRevision")]
    pub hash_revision: i64,
    /// -1 when the history was never compacted, as etcd answers.
    #[serde(rename = "compactRevision")]
    pub compact_revision: i64,
}

/// Hashes the key history in `path` up to `rev` (0: the latest revision).
pub fn hash_kv_file(path: &Path, rev: i64, timeout: Option<Duration>) -> Result<HashKv, EtcdutlError> {
    stat(path)?;
    if BoltReader::open(path).is_ok() {
        let tmp = tempfile::tempdir().map_err(|e| EtcdutlError::Other(format!("temp dir: {e}")))?;
        let redb = tmp.path().join("db");
        crate::etcd_backend::import_etcd_db(path, &redb)?;
        return hash_redb(&redb, rev);
    }
    lock::wait_unlocked(path, timeout)?;
    hash_redb(path, rev)
}

fn hash_redb(path: &Path, rev: i64) -> Result<HashKv, EtcdutlError> {
    let store = KvStore::open(path)?;
    let (hash, compact_revision, hash_revision) = store.hash_kv(rev)?;
    Ok(HashKv { hash, hash_revision, compact_revision })
}
