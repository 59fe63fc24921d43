//! The backend: one redb database file holding the key table, the meta table, and the tables of
//! other stores (leases, membership, auth) so that one apply batch commits all of them at once.
//!
//! Tables:
//! - `key`: encoded [`Revision`](crate::Revision) (17 bytes, 18 for a tombstone) -> prost-encoded
//!   `mvccpb.KeyValue` (a tombstone's value holds only the key);
//! - `meta`: name -> u64: `consistent_index`, `term` (the last raft entry applied, written in
//!   the same commit as its effects), `scheduled_compact_rev`, `finished_compact_rev`.
//!
//! Crash rule: a commit with [`Durability::None`] may be lost in a crash together with every
//! later one, never partially; what survives is always a prefix of the applied batches, and the
//! consistent index stored with it says where raft must resume applying.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::{RwLock, RwLockReadGuard};
use redb::{
    CompactionError, Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable,
    TableDefinition, WriteTransaction,
};

use crate::MvccError;

/// The key table: revision bytes -> encoded KeyValue.
pub const KEY_TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("key");
/// The meta table: name -> value.
pub const META_TABLE: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Meta key: index of the last raft entry whose effects are in the database.
pub const META_CONSISTENT_INDEX: &str = "consistent_index";
/// Meta key: term of that entry.
pub const META_TERM: &str = "term";
/// Meta key: revision of the latest compaction asked for.
pub const META_SCHEDULED_COMPACT: &str = "scheduled_compact_rev";
/// Meta key: revision of the latest compaction whose physical deletion finished.
pub const META_FINISHED_COMPACT: &str = "finished_compact_rev";

/// redb's own page cache (read cache and the write buffer of the open write transaction). redb's
/// default (1 GiB) kept the whole 340 MiB file of 1M keys resident after the start-up index scan
/// and made peak RSS larger than etcd's (bench/compare.sh: 670 MiB vs 617 MiB). 64 MiB then cost
/// ~80 MiB of RSS (a cached 4 KiB page is a 4,112-byte allocation, which mimalloc serves from its
/// 5,120-byte size class). 16 MiB holds the branch pages and the hot leaves; pages outside it are
/// read with pread from the kernel's page cache, which is shared and reclaimable and not part of
/// the process's RSS: ~60 MiB less RSS once the cache has filled (figures in the commit that set
/// it).
pub const CACHE_SIZE_BYTES: usize = 16 * 1024 * 1024;

/// The page cache of the database opened only to scan the key table once at start (the index
/// rebuild and the size walk). Each page is read once there, so a larger cache would only keep
/// the last pages scanned resident (see KvStore::open).
pub const SCAN_CACHE_BYTES: usize = 1024 * 1024;

/// The redb database file and its well-known tables.
pub struct Backend {
    /// Transactions begin under the read lock; defragmentation alone takes the write lock
    /// (redb compacts only through `&mut Database`). Shared with the size measurer's thread.
    db: Arc<RwLock<Database>>,
    path: PathBuf,
    /// `--unsafe-no-fsync`: commits asked to be durable are made without fsync.
    no_fsync: AtomicBool,
}

impl Backend {
    /// Opens the database at `path`, creating it (and its parent directories) if needed, and
    /// makes sure the key and meta tables exist.
    pub fn open(path: &Path) -> Result<Backend, MvccError> {
        Backend::open_with_cache(path, CACHE_SIZE_BYTES)
    }

    /// Like [`Backend::open`], with a page cache of `cache_bytes` (see [`SCAN_CACHE_BYTES`]).
    pub fn open_with_cache(path: &Path, cache_bytes: usize) -> Result<Backend, MvccError> {
        if let Some(parent) = path.parent() {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent)?;
            }
        }
        let db = Database::builder().set_cache_size(cache_bytes).create(path)?;
        let b = Backend {
            db: Arc::new(RwLock::new(db)),
            path: path.to_path_buf(),
            no_fsync: AtomicBool::new(false),
        };
        let txn = b.begin_write(true)?;
        txn.open_table(KEY_TABLE)?;
        txn.open_table(META_TABLE)?;
        txn.commit()?;
        Ok(b)
    }

    /// The database, for stores that keep their own tables in the same file.
    pub fn database(&self) -> RwLockReadGuard<'_, Database> {
        self.db.read()
    }

    /// The database behind its lock, shared with the size measurer's thread.
    pub(crate) fn shared_database(&self) -> Arc<RwLock<Database>> {
        self.db.clone()
    }

    /// The file path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens a write transaction; `durable` selects an fsynced commit (with quick repair, so a
    /// crash after it reopens fast) or a commit without fsync (always, with `--unsafe-no-fsync`).
    pub fn begin_write(&self, durable: bool) -> Result<WriteTransaction, MvccError> {
        let mut txn = self.db.read().begin_write()?;
        set_durability(&mut txn, self.durable(durable))?;
        Ok(txn)
    }

    /// `--unsafe-no-fsync` (etcd: "Disables fsync, unsafe, will cause data loss"): from now on
    /// no commit of this backend fsyncs (closing the database still persists the last one).
    pub fn set_unsafe_no_fsync(&self, on: bool) {
        self.no_fsync.store(on, Ordering::Relaxed);
    }

    /// Whether a commit asked to be `durable` is fsynced (not with `--unsafe-no-fsync`).
    pub fn durable(&self, durable: bool) -> bool {
        durable && !self.no_fsync.load(Ordering::Relaxed)
    }

    /// Opens a read transaction: a consistent snapshot of the latest commit.
    pub fn begin_read(&self) -> Result<ReadTransaction, MvccError> {
        Ok(self.db.read().begin_read()?)
    }

    /// Reads a meta value (0 when absent).
    pub fn read_meta(&self, name: &str) -> Result<u64, MvccError> {
        let txn = self.begin_read()?;
        let table = txn.open_table(META_TABLE)?;
        Ok(table.get(name)?.map(|v| v.value()).unwrap_or(0))
    }

    /// Size of the file in bytes (redb preallocates: see `db_size` for the figures etcd
    /// reports).
    pub fn file_size(&self) -> i64 {
        std::fs::metadata(&self.path)
            .map(|m| m.len() as i64)
            .unwrap_or(0)
    }
}

impl Backend {
    /// Rewrites the file without its free pages (etcd's defragment). Fails with
    /// `Ok(false)` while a transaction is open; the caller holds off writers and retries.
    pub fn compact_file(&self) -> Result<bool, MvccError> {
        let mut db = self.db.write();
        loop {
            match db.compact() {
                Ok(true) => continue, // redb compacts in steps
                Ok(false) => return Ok(true),
                Err(CompactionError::TransactionInProgress) => return Ok(false),
                Err(e) => return Err(MvccError::Backend(e.to_string())),
            }
        }
    }
}

/// Sets a write transaction's durability: fsynced with quick repair, or no fsync.
pub fn set_durability(txn: &mut WriteTransaction, durable: bool) -> Result<(), MvccError> {
    if durable {
        txn.set_durability(Durability::Immediate)?;
        txn.set_quick_repair(true);
    } else {
        txn.set_durability(Durability::None)?;
    }
    Ok(())
}

/// Writes meta values inside `txn` (opening the table once: that costs about as much as the
/// inserts).
pub fn write_meta(txn: &WriteTransaction, values: &[(&str, u64)]) -> Result<(), MvccError> {
    let mut table = txn.open_table(META_TABLE)?;
    for (name, value) in values {
        table.insert(*name, *value)?;
    }
    Ok(())
}

/// Reads a meta value inside `txn` (0 when absent).
pub fn read_meta_in(txn: &WriteTransaction, name: &str) -> Result<u64, MvccError> {
    let table = txn.open_table(META_TABLE)?;
    let v = table.get(name)?.map(|v| v.value()).unwrap_or(0);
    Ok(v)
}
