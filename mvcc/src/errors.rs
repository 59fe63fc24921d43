//! The one error type of the crate. `Display` strings of the variants a client can see are
//! etcd's exact strings, because clients match on them.

/// Everything that can go wrong in the revisioned store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MvccError {
    /// A read, watch or compaction asked for a revision that compaction already removed.
    #[error("mvcc: required revision has been compacted")]
    Compacted,
    /// A read or compaction asked for a revision newer than the store's current revision.
    #[error("mvcc: required revision is a future revision")]
    FutureRev,
    /// A put with `ignore_value` or `ignore_lease` named a key that does not exist.
    #[error("etcdserver: key not found")]
    KeyNotFound,
    /// A put named a lease that does not exist.
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    /// A write reached a read-only evaluation (a caller's bug, refused rather than ignored).
    #[error("mvcc: a write in a read-only txn")]
    NotReadOnly,
    /// The backend (redb) failed: I/O, a full disk, a broken file.
    #[error("mvcc: backend error: {0}")]
    Backend(String),
    /// The stored data breaks an invariant of the store (undecodable row, missing revision).
    #[error("mvcc: corrupt data: {0}")]
    Corrupt(String),
}

macro_rules! backend_error_from {
    ($($t:ty),* $(,)?) => {$(
        impl From<$t> for MvccError {
            fn from(e: $t) -> Self {
                MvccError::Backend(e.to_string())
            }
        }
    )*};
}

backend_error_from!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError,
    std::io::Error,
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_visible_errors_use_etcd_strings() {
        assert_eq!(
            MvccError::Compacted.to_string(),
            "mvcc: required revision has been compacted"
        );
        assert_eq!(
            MvccError::FutureRev.to_string(),
            "mvcc: required revision is a future revision"
        );
        assert_eq!(
            MvccError::KeyNotFound.to_string(),
            "etcdserver: key not found"
        );
        assert_eq!(
            MvccError::LeaseNotFound.to_string(),
            "etcdserver: requested lease not found"
        );
    }
}
