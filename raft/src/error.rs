//! The crate's errors: `RaftError` for callers of the raft node, with the
//! file-level `WalError` and `SnapshotError` it wraps. Messages read as
//! sentences an operator can act on.

use std::io;
use std::path::PathBuf;

/// Errors from reading or writing the write-ahead log.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("WAL I/O failed on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "WAL file {file} is corrupt at offset {offset}; refusing to start rather than lose \
         committed entries (restore the member from a snapshot or re-add it to the cluster)"
    )]
    Corrupt { file: PathBuf, offset: u64 },
    #[error("WAL directory {0} already exists; refusing to create a new WAL over it")]
    AlreadyExists(PathBuf),
    #[error("WAL directory {0} holds no WAL segment files")]
    NotFound(PathBuf),
    #[error("WAL file name {0} is not of the form <seq:016x>-<index:016x>.wal")]
    BadFileName(PathBuf),
    #[error("WAL segment with sequence {expected:016x} is missing from {dir}")]
    MissingSegment { dir: PathBuf, expected: u64 },
    #[error("WAL in {0} has no metadata record (node id, cluster id)")]
    MissingMetadata(PathBuf),
    #[error(
        "WAL in {dir} does not continue the snapshot: expected entry {expected}, found entry \
         {found}"
    )]
    MissingEntries {
        dir: PathBuf,
        expected: u64,
        found: u64,
    },
    #[error("a raft entry could not be encoded for the WAL: {0}")]
    Encode(String),
}

/// Errors from reading or writing snapshot files.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot I/O failed on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("snapshot file {0} is corrupt (bad checksum or encoding)")]
    Corrupt(PathBuf),
    #[error("a raft snapshot could not be encoded: {0}")]
    Encode(String),
}

/// Errors returned by the raft node and its handle.
#[derive(Debug, thiserror::Error)]
pub enum RaftError {
    #[error("there is no raft leader; the request was not accepted")]
    NoLeader,
    #[error("the raft node has stopped")]
    Stopped,
    #[error("raft dropped the proposal (leadership is changing or the node is not ready); retry")]
    ProposalDropped,
    #[error("too many requests are queued for the raft node; retry later")]
    TooManyRequests,
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("raft rejected the operation: {0}")]
    Raft(String),
    #[error("could not create directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("a new member needs at least one initial peer to bootstrap its raft log")]
    NoInitialPeers,
    #[error(
        "the backend's applied index {applied} is older than the raft snapshot at index \
         {snapshot}; the entries in between are no longer in the WAL"
    )]
    BackendBehindSnapshot { applied: u64, snapshot: u64 },
    #[error(
        "--force-new-cluster: member {0:x} is not a voter in its own raft log (removed, or a \
         learner), so it cannot become a one-member cluster"
    )]
    ForceNewClusterNotVoter(u64),
    #[error("could not start the raft loop thread: {0}")]
    Spawn(#[source] io::Error),
    /// A conf change entry that is not etcd's V1 `ConfChange` (etcd-rs before 1.0 wrote
    /// ConfChangeV2 entries with its own context; such a log is refused, not converted).
    #[error("raft entry {index} is not an etcd conf change ({reason}); a data dir written by etcd-rs before 1.0 cannot be used: save a snapshot with the etcd-rs that wrote it (`etcdctl snapshot save`) and restore it (`etcdutl-rs snapshot restore`)")]
    ConfChangeEntry { index: u64, reason: String },
}

impl From<raft::Error> for RaftError {
    fn from(e: raft::Error) -> Self {
        match e {
            raft::Error::ProposalDropped => RaftError::ProposalDropped,
            other => RaftError::Raft(other.to_string()),
        }
    }
}
