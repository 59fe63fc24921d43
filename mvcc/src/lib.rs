//! etcd's revisioned key-value store (MVCC): a redb backend, an in-memory key index, reads and
//! writes at revisions, compaction and hashes. It knows nothing of Raft or gRPC.
//!
//! The one invariant that matters most: every member that applies the same requests in the
//! same order ends with the same key table, byte for byte, and answers every read exactly as
//! etcd would. Nothing here depends on the clock, randomness or local configuration.
//!
//! - [`revision`]: the (main, sub) revision and its key-table encoding;
//! - [`backend`]: the redb file, its key and meta tables; [`db_size`]: the size figures etcd
//!   reports and the quota reads;
//! - [`bolt`]: etcd's backend file format (bbolt), written and read, for snapshot files;
//! - [`key_index`]: one key's generations; [`index`]: all keys, stored in `key_blocks`;
//! - [`kv_store`]: [`KvStore`], the readers' side, open/rebuild, hash, compaction's deletion;
//! - [`hash`]: the HashKV rule and the hashes stored at compactions;
//! - [`kv_store_txn`]: [`ApplyTxn`], the applier's batch;
//! - [`range_stream`]: [`RangeStream`], one Range answered in chunks at a pinned revision;
//! - [`watch_hub`]: [`WatchHub`], the member's watchers; [`watch_queue`]: a stream's bounded
//!   outbound queue.
//!
//! Request validation that etcd does in its gRPC layer (empty key, sort option values, duplicate
//! keys in a Txn, ...) is the server's job; this crate applies what it is given.

pub mod backend;
pub mod bolt;
mod db_size;
mod errors;
pub mod hash;
pub mod index;
mod key_blocks;
pub mod key_index;
pub mod kv_store;
pub mod kv_store_txn;
pub mod metrics;
mod kv_view;
mod pending_rows;
pub mod range_stream;
pub mod revision;
pub mod watch_hub;
pub mod watch_queue;
mod watcher_group;

pub use backend::Backend;
pub use errors::MvccError;
pub use hash::KeyValueHash;
pub use kv_store::{CompactionStep, KvStore};
pub use kv_store_txn::ApplyTxn;
pub use range_stream::RangeStream;
pub use revision::Revision;
pub use watch_hub::{WatchCreate, WatchHub, WatchHubOptions, WatchStream};
pub use watch_queue::WatchMessage;

#[cfg(test)]
mod tests;
