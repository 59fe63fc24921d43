//! [`RaftHost`]: what the server gives the peer protocol. The transport and the handler know
//! nothing else of the server, so the same code serves etcd-rs and the tests that stand in for it.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use raft::eraftpb::Message;

/// Why the server refused a message from a peer (etcd's `Raft.Process` errors).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProcessError {
    /// The sender was removed from the cluster: answered 403 with etcd's JSON
    /// `{"message":"cannot process message from removed member"}`.
    #[error("cannot process message from removed member")]
    RemovedMember,
    /// Anything else: 500 "error processing raft message".
    #[error("{0}")]
    Other(String),
}

/// The database bytes of an incoming snapshot, as they arrive after the MsgSnap frame.
pub type SnapshotBody = Pin<Box<dyn tokio_stream::Stream<Item = Result<Bytes, String>> + Send>>;

/// A boxed future (the trait stays object-safe).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the server provides to the peer protocol.
pub trait RaftHost: Send + Sync + 'static {
    /// Hands a message from a peer to the raft node (etcd's `Raft.Process`). Called from the
    /// handler and the stream readers; must not block for long (queue and return).
    fn process(&self, m: Message) -> Result<(), ProcessError>;

    /// True when `id` was removed from the cluster (etcd's `IsIDRemoved`): its streams are
    /// refused with 410 "removed member".
    fn is_removed(&self, id: u64) -> bool;

    /// Saves an incoming snapshot's database (`db`, read to its end), then processes `m`, the
    /// MsgSnap that came with it (etcd: `SaveDBFrom`, then `Process`). An error becomes a 500
    /// whose body is the error text.
    fn receive_snapshot(&self, m: Message, db: SnapshotBody) -> BoxFuture<'_, Result<(), ProcessError>>;

    /// Raft could not send to `id` (etcd's `ReportUnreachable`).
    fn report_unreachable(&self, id: u64);

    /// A snapshot to `id` was sent (`ok`) or failed (etcd's `ReportSnapshot`).
    fn report_snapshot(&self, id: u64, ok: bool);

    /// A peer refused us as a removed member (a 410 on a stream or a 403 on a POST): the
    /// server stops, as etcd does on `errMemberRemoved`.
    fn removed_from_cluster(&self);
}
