//! etcd's backend file format, bbolt (go.etcd.io/bbolt, file format version 2): a writer that
//! builds a valid file from sorted buckets and a reader that validates and walks one. etcd-rs
//! keeps its data in redb; this is how it speaks etcd's snapshot format (`etcdctl snapshot
//! save` / `etcdutl snapshot status|restore`) in both directions.
//!
//! - [`page`]: page, element, meta and freelist layouts, the meta checksum;
//! - [`writer`]: [`BoltWriter`], streaming, bottom-up;
//! - [`reader`]: [`BoltReader`], pread-based, bounds-checked (a damaged file is an error, never
//!   a panic).

pub mod page;
pub mod reader;
pub mod writer;

pub use reader::{BoltReader, BucketRef, Element};
pub use writer::{BoltWriter, BucketWriter};

/// What can go wrong reading or writing a bbolt file.
#[derive(Debug, thiserror::Error)]
pub enum BoltError {
    #[error("bolt: {0}")]
    Io(#[from] std::io::Error),
    /// The writer was asked for something bbolt cannot hold (empty key, keys out of order).
    #[error("bolt: {0}")]
    Invalid(String),
    /// The file is not a valid bbolt database.
    #[error("bolt: corrupt database: {0}")]
    Corrupt(String),
}

#[cfg(test)]
mod tests;
