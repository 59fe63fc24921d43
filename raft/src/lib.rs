//! `etcd-raft`: the raft node of etcd-rs.
//!
//! It wraps the consensus core (raft-rs) with what makes it durable and
//! usable by the server:
//!
//! - [`wal`]: the write-ahead log (`<member>/wal/`), record format in
//!   [`wal_record`], and its crash rule (torn tail of the last segment is
//!   truncated; damage anywhere else refuses to start);
//! - [`snapshotter`]: raft snapshot metadata files (`<member>/snap/*.snap`);
//! - [`etcd_wal`] and [`etcd_snap`]: etcd's own WAL and snap file formats (3.4/3.5), read and
//!   written, for data dirs etcd wrote or will start on;
//! - [`node`]: [`RaftNode`], the handle to the raft loop thread that owns the
//!   `RawNode`, the WAL and the snapshotter ([`raft_loop`]);
//! - [`etcd_conf_change`]: etcd's conf change entries (its bytes, its numbering) and their
//!   translation for raft-rs;
//! - [`recovery`]: bootstrap of a new member and restore of an existing one;
//! - [`read_index`]: batching of linearizable read-index requests;
//! - [`transport`]: how messages leave the loop ([`peer_dial`]: plain or TLS
//!   connections to peer URLs; [`peer_probe`]: round-trip probes); [`slog_bridge`]: raft-rs logs
//!   into `tracing`;
//! - [`rafthttp`]: etcd's peer protocol (streams, pipeline, snapshot POST, the peer endpoints),
//!   the [`Transport`] of every member and the handler of its peer listener, spoken alike
//!   by etcd-rs and etcd 3.4/3.5 members;
//! - [`metrics`]: etcd's raft, WAL, snapshot and peer metrics; [`durable_fs`]: directory fsyncs
//!   and durable removals.
//!
//! The most important invariant: an entry the applier receives was persisted
//! to the WAL (fsynced) by a quorum, and nothing raft-rs asks to persist is
//! acknowledged to a peer before this member's fsync returns.

pub mod durable_fs;
pub mod error;
pub mod etcd_conf_change;
pub mod etcd_snap;
pub mod etcd_wal;
pub mod metrics;
pub mod node;
pub mod peer_dial;
pub mod peer_probe;
mod raft_loop;
pub mod raft_runtime;
pub mod rafthttp;
pub mod read_index;
pub mod recovery;
pub mod slog_bridge;
pub mod snapshotter;
pub mod transport;
pub mod wal;
pub mod wal_record;
mod wal_zero;

pub use raft_runtime::RaftRuntime;
pub use error::{RaftError, SnapshotError, WalError};
pub use node::{ApplyBatch, Leader, PeerProgress, RaftNode, RaftNodeConfig, RaftStatus};
pub use raft::eraftpb;
pub use raft::StateRole;
pub use snapshotter::Snapshotter;
pub use peer_dial::PeerDialer;
pub use rafthttp::HttpTransport;
pub use transport::{NoopTransport, Transport};
pub use wal::{Wal, WalContents, WalMetadata};
