//! The one error type of the crate. The variants a client can see display etcd's own strings.

/// Everything a lessor operation can refuse or fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    /// No lease with this ID exists (or the ID is 0).
    #[error("lease not found")]
    NotFound,
    /// A grant named an ID that is already in use.
    #[error("lease already exists")]
    Exists,
    /// A grant asked for a TTL above [`crate::MAX_LEASE_TTL`].
    #[error("too large lease TTL")]
    TtlTooLarge,
    /// Keep-alives and expiry belong to the leader's (primary) lessor.
    #[error("not a primary lessor")]
    NotPrimary,
    /// The lease is past its deadline and its revoke is on its way through raft.
    #[error("lease expired and is being revoked")]
    Expired,
    /// The backend (redb) failed or holds a lease record that does not decode.
    #[error("lease: backend error: {0}")]
    Backend(String),
}

macro_rules! backend_error_from {
    ($($t:ty),* $(,)?) => {$(
        impl From<$t> for LeaseError {
            fn from(e: $t) -> Self {
                LeaseError::Backend(e.to_string())
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
    prost::DecodeError,
);
