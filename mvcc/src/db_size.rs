//! The database size figures: what Status reports as `db_size` / `db_size_in_use` (and the
//! `etcd_mvcc_db_total_size_in_bytes` / `..._in_use_in_bytes` gauges), and what the backend
//! quota (`--quota-backend-bytes`) compares with.
//!
//! They follow the data as bbolt's figures do in etcd:
//! - **in use**: bytes of redb's header page and of the pages holding the tables' b-trees (every
//!   table of the file: keys, meta, leases, members, auth, alarms), found by walking them in a
//!   read transaction. Not counted: redb's own bookkeeping (allocator state, lists of freed
//!   pages), free pages, and the file's preallocated tail (redb grows the file by doubling from
//!   1 MiB, so the file size says little about the data). etcd's figure: bbolt's high-water mark
//!   minus its free pages (its meta and freelist pages included).
//! - **size**: the most *in use* has been since the store opened or was last defragmented. Like
//!   bbolt's high-water mark it does not shrink when compaction frees pages, only when
//!   defragment rewrites the file (and, unlike etcd's, at a restart).
//!
//! Invariant: reading a figure costs two atomic loads (the quota reads them on every write
//! request), and the walk, whose cost grows with the file (it reads every page), never runs on
//! the writer's path: a measurer thread walks after commits, then waits 999 times as long as the
//! walk took (at most ~0.1% of a core; at 0.5% the walks were still ~1.3% of a busy 3-member
//! cluster's CPU in `perf`, at 2% 4-5%). Between walks *in use* grows by the bytes of the
//! key-table rows committed since the walk's read transaction (a lower bound of the pages they
//! take; other tables' changes and compaction's deletions wait for the next walk). A batch
//! committed while a walk starts may be counted twice until the next walk, never missed.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, RwLock};
use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTableMetadata, TableStats};

use crate::MvccError;

/// How much longer the measurer waits after a walk than the walk took.
const IDLE_FACTOR: u32 = 999;

/// redb's header: the file's first page (the backend keeps redb's default page size).
const HEADER_BYTES: i64 = 4096;

/// The figures, shared by the store (writer and readers) and the measurer thread.
#[derive(Default)]
pub(crate) struct DbSize {
    /// The last walk's bytes minus `committed` as of its read transaction: *in use* is this plus
    /// `committed`, so a reader never pairs one walk's bytes with another walk's offset.
    base: AtomicI64,
    /// Bytes of key-table rows committed since the store opened.
    committed: AtomicI64,
    /// The most *in use* has been since open or the last defragment.
    high_water: AtomicI64,
    /// Walks one at a time (the measurer's and the synchronous ones of open and defragment).
    walking: Mutex<()>,
}

impl DbSize {
    /// Bytes the tables' pages hold (as of the last walk plus the rows committed since).
    pub(crate) fn in_use(&self) -> i64 {
        (self.base.load(Ordering::Acquire) + self.committed.load(Ordering::Acquire)).max(0)
    }

    /// The high-water mark of [`in_use`](Self::in_use) since open or the last defragment.
    pub(crate) fn size(&self) -> i64 {
        self.high_water.load(Ordering::Acquire).max(self.in_use())
    }

    /// Counts `bytes` of key-table rows that a commit just made durable or visible.
    pub(crate) fn add_committed(&self, bytes: i64) {
        if bytes != 0 {
            self.committed.fetch_add(bytes, Ordering::AcqRel);
            self.high_water.fetch_max(self.in_use(), Ordering::AcqRel);
        }
    }

    /// Walks every table of the latest commit and makes *in use* exact.
    pub(crate) fn measure(&self, db: &RwLock<Database>) -> Result<(), MvccError> {
        let _one_walk = self.walking.lock();
        // read before the transaction begins: a commit in between is counted twice, never missed
        let committed = self.committed.load(Ordering::Acquire);
        // the read lock is held through the walk, so a defragment waits for it to end
        let db = db.read();
        let txn = db.begin_read()?;
        let bytes = HEADER_BYTES + table_bytes(&txn)?;
        drop(txn);
        drop(db);
        self.base.store(bytes - committed, Ordering::Release);
        self.high_water.fetch_max(self.in_use(), Ordering::AcqRel);
        Ok(())
    }

    /// Forgets the high-water mark: the file was rewritten (defragment) or replaced (snapshot).
    pub(crate) fn reset_high_water(&self) {
        self.high_water.store(self.in_use(), Ordering::Release);
    }
}

/// Bytes of the pages of every table's b-tree in `txn` (a page's stored, metadata and unused
/// bytes add up to the whole page).
fn table_bytes(txn: &ReadTransaction) -> Result<i64, MvccError> {
    fn page_bytes(s: TableStats) -> u64 {
        s.stored_bytes() + s.metadata_bytes() + s.fragmented_bytes()
    }
    let mut total = 0;
    for table in txn.list_tables()? {
        total += page_bytes(txn.open_untyped_table(table)?.stats()?);
    }
    for table in txn.list_multimap_tables()? {
        total += page_bytes(txn.open_untyped_multimap_table(table)?.stats()?);
    }
    Ok(i64::try_from(total).unwrap_or(i64::MAX))
}

/// What the measurer thread is asked to do.
#[derive(Default)]
struct Wanted {
    /// A commit happened since the last walk began.
    walk: bool,
    stop: bool,
}

#[derive(Default)]
struct Signal {
    wanted: Mutex<Wanted>,
    changed: Condvar,
}

/// The thread that walks the tables after commits; stopped and joined on drop.
pub(crate) struct Measurer {
    signal: Arc<Signal>,
    thread: Option<JoinHandle<()>>,
}

impl Measurer {
    pub(crate) fn start(db: Arc<RwLock<Database>>, size: Arc<DbSize>) -> Result<Measurer, MvccError> {
        let signal = Arc::new(Signal::default());
        let s = signal.clone();
        let thread = std::thread::Builder::new()
            .name("mvcc-db-size".into())
            .spawn(move || measure_after_commits(&s, &db, &size))?;
        Ok(Measurer { signal, thread: Some(thread) })
    }

    /// A commit changed the tables: walk them again (when the rate limit allows).
    pub(crate) fn commit_happened(&self) {
        let mut w = self.signal.wanted.lock();
        if !w.walk {
            w.walk = true;
            self.signal.changed.notify_one();
        }
    }

    /// Walks no more (a walk under way ends first); the store is closing.
    pub(crate) fn stop(&self) {
        self.signal.wanted.lock().stop = true;
        self.signal.changed.notify_one();
    }
}

impl Drop for Measurer {
    fn drop(&mut self) {
        self.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn measure_after_commits(signal: &Signal, db: &RwLock<Database>, size: &DbSize) {
    let mut not_before = Instant::now();
    loop {
        {
            let mut w = signal.wanted.lock();
            loop {
                if w.stop {
                    return;
                }
                if w.walk && Instant::now() >= not_before {
                    break;
                }
                if w.walk {
                    signal.changed.wait_until(&mut w, not_before);
                } else {
                    signal.changed.wait(&mut w);
                }
            }
            w.walk = false;
        }
        let started = Instant::now();
        if let Err(e) = size.measure(db) {
            tracing::warn!(error = %e, "could not measure the database size");
        }
        let took = started.elapsed();
        not_before = Instant::now() + took.saturating_mul(IDLE_FACTOR).min(Duration::from_secs(3600));
    }
}
