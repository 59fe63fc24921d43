//! `KvStore`: the revisioned key-value store over the backend and the key index.
//!
//! Invariants:
//! - one writer: the applier's [`ApplyTxn`](crate::ApplyTxn) (a gate held from `begin_apply` to
//!   the end of `commit`), which applies a batch of raft entries in one redb write transaction;
//! - readers read at the *published* revision, which moves only after a batch is complete: they
//!   never block on the writer and never see part of a batch;
//! - the backend write transaction stays open across batches until a durable commit is due
//!   (`ApplyTxn::commit(true)`, [`KvStore::sync`]); published rows not committed yet are read
//!   from [`PendingRows`] (see there for the order readers take things in);
//! - the consistent index (last applied raft entry) is stored in the same commit as its effects;
//! - a compaction is recorded (`scheduled_compact_rev`) in the commit that asks for it; its
//!   physical deletion then runs in bounded write transactions and records
//!   `finished_compact_rev` in the last one; `open` resumes it when scheduled > finished.

use std::collections::HashSet;
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use etcd_proto::etcdserverpb::{RangeRequest, RangeResponse, TxnRequest, TxnResponse};
use etcd_proto::mvccpb::KeyValue;
use parking_lot::{Condvar, Mutex};
use redb::{ReadOnlyTable, ReadTransaction, ReadableTable, WriteTransaction};

use crate::backend::{
    write_meta, Backend, KEY_TABLE, META_CONSISTENT_INDEX, META_FINISHED_COMPACT,
    META_SCHEDULED_COMPACT, META_TERM,
};
use crate::db_size::{DbSize, Measurer};
use crate::hash::{HashStorage, KeyValueHash, KvHasher, KEY_BUCKET_NAME};
use crate::index::Index;
use crate::kv_view::{decode_kv, missing_row, Rows, View};
use crate::pending_rows::PendingRows;
use crate::revision::{main_rev_bound, Revision};
use crate::MvccError;

/// Rows deleted per write transaction by physical compaction.
pub const COMPACTION_BATCH: usize = 10_000;

/// The store: backend, index, and the published revision readers read at.
pub struct KvStore {
    pub(crate) backend: Backend,
    pub(crate) index: Index,
    /// The newest revision whose batch is committed; what readers see.
    pub(crate) published: AtomicI64,
    pub(crate) consistent: Mutex<(u64, u64)>,
    /// Taken by the open ApplyTxn: one writer at a time.
    pub(crate) writer: WriterGate,
    /// The backend write transaction holding published batches not committed yet; taken by the
    /// next batch (or committed) under the writer gate.
    pub(crate) open_txn: Mutex<Option<WriteTransaction>>,
    /// The rows of those batches, for readers.
    pub(crate) pending: Mutex<Arc<PendingRows>>,
    /// Bytes of those rows: the tables grow by about that much when they commit.
    pub(crate) pending_bytes: AtomicI64,
    /// Set when a batch was dropped without commit after earlier batches were carried in its
    /// write transaction: they are gone from the backend, so the store takes no more writes
    /// (a restart applies them again from the WAL).
    pub(crate) lost_batches: Mutex<Option<String>>,
    /// The size figures etcd reports and the quota reads (see [`crate::db_size`]).
    size: Arc<DbSize>,
    /// Walks the tables after commits to keep `size` exact.
    measurer: Measurer,
    /// The physical compaction whose rows are still being deleted, step by step.
    physical: Mutex<Option<PhysicalCompaction>>,
    /// The hashes taken at the last compactions (for the compaction hash check).
    hashes: HashStorage,
    /// Test hook: leave physical compaction undone, as if the process died after the commit.
    #[cfg(test)]
    pub(crate) skip_physical_compaction: std::sync::atomic::AtomicBool,
}

/// Rows of a compaction still to delete: main revision `<= rev`, not in `keep`, from `start`.
pub(crate) struct PhysicalCompaction {
    rev: i64,
    keep: HashSet<Revision>,
    start: Vec<u8>,
    deleted: usize,
    /// The hash of the rows up to `rev` as the compaction found them (etcd 3.5.6+ hashes in
    /// its compaction's scan); None when it cannot be taken whole (a compaction resumed after a
    /// crash may have lost rows already, or a step failed midway).
    hasher: Option<KvHasher>,
    /// For etcd_debugging_mvcc_db_compaction_total_duration_milliseconds.
    started: std::time::Instant,
}

/// What one [`KvStore::compaction_step`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompactionStep {
    /// No compaction pending.
    Idle,
    /// Rows deleted; more to go.
    More,
    /// The compaction to this revision is physically done.
    Finished(i64),
}

/// One writer at a time, without a lock guard, so that an open batch can move between threads
/// (an async applier may hold it across an await).
#[derive(Default)]
pub(crate) struct WriterGate {
    busy: Mutex<bool>,
    free: Condvar,
}

impl WriterGate {
    pub(crate) fn acquire(&self) {
        let mut busy = self.busy.lock();
        while *busy {
            self.free.wait(&mut busy);
        }
        *busy = true;
    }

    pub(crate) fn release(&self) {
        *self.busy.lock() = false;
        self.free.notify_one();
    }
}

/// What readers read rows from: the committed key table and the pending rows.
pub(crate) struct ReadRows {
    table: ReadOnlyTable<&'static [u8], &'static [u8]>,
    pending: Arc<PendingRows>,
    _open: crate::metrics::OpenReadTxn,
}

impl Rows for ReadRows {
    fn kv(&self, rev: Revision) -> Result<KeyValue, MvccError> {
        self.find(rev)?.ok_or_else(|| missing_row(rev))
    }
}

impl ReadRows {
    /// The KeyValue stored at a (non-tombstone) revision, if the row exists.
    pub(crate) fn find(&self, rev: Revision) -> Result<Option<KeyValue>, MvccError> {
        let key = rev.to_bytes();
        if let Some(v) = self.pending.get(&key) {
            return decode_kv(v, rev).map(Some);
        }
        self.table.get(key.as_slice())?.map(|v| decode_kv(v.value(), rev)).transpose()
    }

    /// The rows with keys in `[lo, hi)` in key order (see [`PendingRows::scan`]).
    pub(crate) fn scan(
        &self,
        lo: &[u8],
        hi: &[u8],
        f: impl FnMut(&[u8], &[u8]) -> Result<ControlFlow<()>, MvccError>,
    ) -> Result<(), MvccError> {
        self.pending.scan(&self.table, lo, hi, f)
    }
}

/// What one scan of the database rebuilds: the index, revisions and consistent index.
struct StoredState {
    index: Index,
    current: i64,
    consistent: (u64, u64),
    scheduled: i64,
    finished: i64,
}

impl StoredState {
    fn scan(backend: &Backend) -> Result<StoredState, MvccError> {
        let index = Index::new();
        let txn = backend.begin_read()?;
        let meta = |name| -> Result<u64, MvccError> {
            let t = txn.open_table(crate::backend::META_TABLE)?;
            Ok(t.get(name)?.map(|v| v.value()).unwrap_or(0))
        };
        let consistent = (meta(META_CONSISTENT_INDEX)?, meta(META_TERM)?);
        let scheduled = meta(META_SCHEDULED_COMPACT)? as i64;
        let finished = meta(META_FINISHED_COMPACT)? as i64;
        let mut current = 1;
        {
            let table = txn.open_table(KEY_TABLE)?;
            for row in table.iter()? {
                let (k, v) = row?;
                let (rev, tombstone) = Revision::from_key_bytes(k.value())?;
                let kv = decode_kv(v.value(), rev)?;
                index.restore_row(&kv.key, rev, tombstone, kv.create_revision, kv.version);
                current = current.max(rev.main);
            }
        }
        drop(txn);
        current = current.max(finished).max(scheduled);
        if finished > 0 {
            index.compact(finished);
        }
        Ok(StoredState { index, current, consistent, scheduled, finished })
    }
}

impl KvStore {
    /// Opens (or creates) the store at `path`, rebuilds the index from one scan of the key
    /// table, and finishes a compaction a crash interrupted.
    pub fn open(path: &Path) -> Result<KvStore, MvccError> {
        // The index scan and the size walk (each reads every page once) run on a database of
        // their own with a small cache, closed before the store opens its own: otherwise they
        // leave the store's cache full of the last pages scanned, resident from the start
        // (1M keys: RSS when ready 395 -> 215 MiB with the 64 MiB cache).
        let size = Arc::new(DbSize::default());
        let state = {
            let scan = Backend::open_with_cache(path, crate::backend::SCAN_CACHE_BYTES)?;
            let state = StoredState::scan(&scan)?;
            size.measure(&scan.shared_database())?;
            state
        };
        size.reset_high_water();
        let backend = Backend::open(path)?;
        let measurer = Measurer::start(backend.shared_database(), size.clone())?;
        let store = KvStore {
            backend,
            index: state.index,
            published: AtomicI64::new(state.current),
            consistent: Mutex::new(state.consistent),
            writer: WriterGate::default(),
            open_txn: Mutex::new(None),
            pending: Mutex::new(Arc::new(PendingRows::default())),
            pending_bytes: AtomicI64::new(0),
            lost_batches: Mutex::new(None),
            size,
            measurer,
            physical: Mutex::new(None),
            hashes: HashStorage::default(),
            #[cfg(test)]
            skip_physical_compaction: Default::default(),
        };
        store.resume_compaction(state.scheduled, state.finished)?;
        tracing::debug!(
            current = state.current,
            compact = store.compact_revision(),
            keys = store.index.len(),
            "mvcc store opened"
        );
        Ok(store)
    }

    fn resume_compaction(&self, scheduled: i64, finished: i64) -> Result<(), MvccError> {
        if scheduled > finished {
            tracing::info!(scheduled, finished, "resuming an interrupted compaction");
            let keep = self.index.compact(scheduled);
            // some rows may be gone already: no hash is stored for this compaction
            self.schedule_physical_compaction(scheduled, None, keep);
            self.finish_compaction()?;
        }
        Ok(())
    }

    /// Replaces the whole database with a snapshot's contents: `fill` empties and refills every
    /// table inside one durable write transaction (so a crash leaves the old state or the new
    /// one, never a mix), then the index, revisions and consistent index are rebuilt from it.
    /// Takes the writer gate: never call it from the thread holding an ApplyTxn.
    pub fn install<E: From<MvccError>>(
        &self,
        fill: impl FnOnce(&redb::WriteTransaction) -> Result<(), E>,
    ) -> Result<(), E> {
        self.writer.acquire();
        let result = self.install_locked(fill);
        self.writer.release();
        result
    }

    fn install_locked<E: From<MvccError>>(
        &self,
        fill: impl FnOnce(&redb::WriteTransaction) -> Result<(), E>,
    ) -> Result<(), E> {
        self.commit_open(false)?;
        let txn = self.backend.begin_write(true)?;
        fill(&txn)?;
        // the tables the store itself needs exist even if the snapshot lacked them
        txn.open_table(KEY_TABLE).map_err(MvccError::from)?;
        txn.open_table(crate::backend::META_TABLE).map_err(MvccError::from)?;
        txn.commit().map_err(MvccError::from)?;
        let state = StoredState::scan(&self.backend)?;
        *self.physical.lock() = None;
        self.index.replace(state.index);
        *self.consistent.lock() = state.consistent;
        self.published.store(state.current, Ordering::Release);
        self.resume_compaction(state.scheduled, state.finished)?;
        // a new file's contents: its figures start afresh, as etcd's with the snapshot's file
        self.size.measure(&self.backend.shared_database())?;
        self.size.reset_high_water();
        tracing::info!(
            current = state.current,
            consistent_index = state.consistent.0,
            keys = self.index.len(),
            "mvcc store replaced by a snapshot"
        );
        Ok(())
    }

    /// The backend, for stores that keep their own tables in the same database file.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// The index and term of the last raft entry whose effects are stored (0, 0 when none).
    pub fn consistent_index(&self) -> (u64, u64) {
        *self.consistent.lock()
    }

    /// Keys in the index (live or with history not compacted yet).
    /// Keys live now (deleted ones awaiting compaction are not counted, as etcd counts them).
    pub fn key_count(&self) -> usize {
        self.index.live_len()
    }

    /// The published revision: 1 for an empty store, then +1 per changing write transaction.
    pub fn current_revision(&self) -> i64 {
        self.published.load(Ordering::Acquire)
    }

    /// The revision of the latest compaction (0 when never compacted). Reads below it fail.
    pub fn compact_revision(&self) -> i64 {
        self.index.compact_rev()
    }

    /// Range at the published revision (or `req.revision`); the header carries only the
    /// revision read at (etcd's current revision), for the server to complete.
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, MvccError> {
        crate::metrics::range_read();
        let current = self.current_revision();
        let (rows, _txn) = self.read_rows()?;
        View {
            index: &self.index,
            rows: &rows,
            current,
            compact_floor: 0,
        }
        .range(req)
    }

    /// A Txn of ranges only at the published revision, as etcd serves one outside raft: its
    /// compares and range ops count as the ranges of one read txn (etcd_mvcc_range_total,
    /// etcd_mvcc_txn_total when more than one). The header carries only the revision read at.
    pub fn read_only_txn(&self, req: &TxnRequest) -> Result<TxnResponse, MvccError> {
        let compact_floor = self.compact_revision();
        let current = self.current_revision();
        let mut tally = crate::metrics::TxnTally::default();
        let out = self.read_rows().and_then(|(rows, _txn)| {
            View { index: &self.index, rows: &rows, current, compact_floor }
                .read_only_txn(req, &mut tally.ranges)
        });
        tally.end();
        out
    }

    /// The revisions changed in the key range (`range_end` as in a request) at or after `rev`,
    /// in revision order, for watchers catching up.
    pub fn revisions_since(&self, key: &[u8], range_end: &[u8], rev: i64) -> Vec<Revision> {
        let current = self.current_revision();
        self.index
            .revisions_since(key, crate::index::range_end(range_end), rev)
            .into_iter()
            .take_while(|r| r.main <= current)
            .collect()
    }

    /// The rows readers see: everything at or below the revision published before the call
    /// (pending rows taken before the read transaction is opened; see [`PendingRows`]).
    pub(crate) fn read_rows(&self) -> Result<(ReadRows, ReadTransaction), MvccError> {
        let pending = self.pending.lock().clone();
        let txn = self.backend.begin_read()?;
        let table = txn.open_table(KEY_TABLE)?;
        Ok((ReadRows { table, pending, _open: crate::metrics::OpenReadTxn::open() }, txn))
    }

    /// Commits the write transaction carried between batches, if any, and forgets the pending
    /// rows it held. The caller holds the writer gate.
    fn commit_open(&self, durable: bool) -> Result<(), MvccError> {
        let Some(txn) = self.open_txn.lock().take() else {
            return Ok(());
        };
        if let Err(e) = self.commit_write(txn, durable, std::time::Duration::ZERO) {
            self.lose_batches(&e);
            return Err(e);
        }
        self.pending_committed();
        Ok(())
    }

    /// Commits a write transaction; a durable commit (fsync) is timed as etcd times its backend
    /// commits, `spill` being the time the rows took to go into the tree (bbolt's spill phase;
    /// zero for batches carried in the transaction, whose rows went in as they were applied).
    pub(crate) fn commit_write(&self, mut txn: WriteTransaction, durable: bool, spill: std::time::Duration) -> Result<(), MvccError> {
        crate::backend::set_durability(&mut txn, self.backend.durable(durable))?;
        if !durable {
            return Ok(txn.commit()?);
        }
        crate::metrics::COMMIT_SPILL_SECONDS.observe(spill.as_secs_f64());
        crate::metrics::COMMIT_REBALANCE_SECONDS.observe(0.0);
        let timer = crate::metrics::BACKEND_COMMIT_SECONDS.start_timer();
        let write = crate::metrics::COMMIT_WRITE_SECONDS.start_timer();
        txn.commit()?;
        write.observe_duration();
        timer.observe_duration();
        Ok(())
    }

    /// A commit now holds the pending rows: forgets them, counts their bytes in the size
    /// figures and has the measurer walk the tables again.
    pub(crate) fn pending_committed(&self) {
        *self.pending.lock() = Arc::new(PendingRows::default());
        self.size.add_committed(self.pending_bytes.swap(0, Ordering::AcqRel));
        self.measurer.commit_happened();
    }

    /// Bytes of key-table rows applied but not committed to the backend yet (what the quota
    /// adds to the file size, which moves only at commits).
    pub fn uncommitted_bytes(&self) -> i64 {
        self.pending_bytes.load(Ordering::Relaxed)
    }

    /// Records that published batches carried in an aborted write transaction are gone from
    /// the backend: from now on the store refuses batches.
    pub(crate) fn lose_batches(&self, why: &dyn std::fmt::Display) {
        let why = format!("applied batches were not committed ({why}); restart to apply them again from the WAL");
        tracing::error!("{why}");
        self.lost_batches.lock().get_or_insert(why);
    }

    /// A read transaction of every table holding every batch applied so far (the batches
    /// carried in the open write transaction are committed first, without fsync): for readers
    /// of whole tables such as snapshots. Waits for an open batch: never call it from the
    /// thread holding an ApplyTxn.
    pub fn read_all(&self) -> Result<ReadTransaction, MvccError> {
        self.writer.acquire();
        let result = self.commit_open(false);
        self.writer.release();
        result?;
        self.backend.begin_read()
    }

    /// Starts applying a batch; blocks while another batch is open.
    pub fn begin_apply(&self) -> Result<crate::ApplyTxn<'_>, MvccError> {
        crate::ApplyTxn::begin(self)
    }

    /// etcd's HashKV: crc32c (Castagnoli) of the key-table rows up to `rev` (0 = current),
    /// skipping rows at or below the compact revision that a compaction at `rev` would remove,
    /// so members at different stages of physical compaction agree. Returns (hash, compact
    /// revision, hashed revision); the compact revision is -1 when never compacted, as etcd's
    /// HashKV answers. The hash equals etcd 3.4's for the same history.
    pub fn hash_kv(&self, rev: i64) -> Result<(u32, i64, i64), MvccError> {
        let _timer = crate::metrics::HASH_REV_SECONDS.start_timer();
        let current = self.current_revision();
        let (rows, _txn) = self.read_rows()?;
        let (rev, compact, keep) = self.index.keep_for_hash(rev, current)?;
        let mut h = KvHasher::new(compact);
        let upper = main_rev_bound(rev + 1);
        rows.scan(&[], &upper, |k, v| {
            let (r, _) = Revision::from_key_bytes(k)?;
            h.write(r, k, v, &keep);
            Ok(ControlFlow::Continue(()))
        })?;
        let h = h.finish(rev);
        Ok((h.hash, h.compact_revision, h.revision))
    }

    /// etcd 3.5.6+'s HashStorage.HashByRev: the hash stored at a compaction to `rev` when there
    /// is one (it starts from the compact revision before that compaction), else
    /// [`KvStore::hash_kv`] now.
    pub fn hash_by_rev(&self, rev: i64) -> Result<KeyValueHash, MvccError> {
        if let Some(h) = self.hashes.at(rev) {
            return Ok(h);
        }
        let (hash, compact_revision, revision) = self.hash_kv(rev)?;
        Ok(KeyValueHash { hash, compact_revision, revision })
    }

    /// The hashes taken at the last compactions, oldest first.
    pub fn compaction_hashes(&self) -> Vec<KeyValueHash> {
        self.hashes.hashes()
    }

    /// crc32c of the whole key table (etcd's Hash, restricted to the key table).
    pub fn hash(&self) -> Result<u32, MvccError> {
        let _timer = crate::metrics::HASH_SECONDS.start_timer();
        let (rows, _txn) = self.read_rows()?;
        let mut h = crc32c::crc32c(KEY_BUCKET_NAME);
        // [0xff; 19] sorts after every key-table key (17 or 18 bytes, a positive revision first)
        rows.scan(&[], &[0xff; 19], |k, v| {
            h = crc32c::crc32c_append(h, k);
            h = crc32c::crc32c_append(h, v);
            Ok(ControlFlow::Continue(()))
        })?;
        Ok(h)
    }

    /// Makes every batch applied so far durable (one fsynced commit). Waits for an open batch
    /// to commit: never call it from the thread holding an ApplyTxn.
    pub fn sync(&self) -> Result<(), MvccError> {
        self.writer.acquire();
        let result = self.sync_locked();
        self.writer.release();
        result
    }

    fn sync_locked(&self) -> Result<(), MvccError> {
        // a new transaction too: its durable commit makes earlier undurable ones durable
        let txn = self.carried_or_new(true)?;
        *self.open_txn.lock() = Some(txn);
        self.commit_open(true)
    }

    /// The write transaction carried between batches, or a new one. The caller holds the
    /// writer gate and puts it back in `open_txn` (or commits it).
    fn carried_or_new(&self, durable: bool) -> Result<WriteTransaction, MvccError> {
        match self.open_txn.lock().take() {
            Some(txn) => Ok(txn),
            None => self.backend.begin_write(durable),
        }
    }

    /// Defragments the database file: waits for the open batch to commit, holds off the next
    /// one, and retries while readers finish (up to `patience`). Member-local, as in etcd.
    pub fn defragment(&self, patience: std::time::Duration) -> Result<(), MvccError> {
        let deadline = std::time::Instant::now() + patience;
        let _inflight = crate::metrics::DefragInflight::start();
        self.writer.acquire();
        let result = self.commit_open(false).and_then(|_| loop {
            match self.backend.compact_file() {
                Ok(true) => {
                    // etcd's defragment leaves a file as large as its data: so does the figure
                    break self.size.measure(&self.backend.shared_database()).map(|_| self.size.reset_high_water());
                }
                Ok(false) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(1))
                }
                Ok(false) => break Err(MvccError::Backend("defragment: the database stayed busy with readers".into())),
                Err(e) => break Err(e),
            }
        });
        self.writer.release();
        result
    }

    /// (size, in use): etcd's `db_size` and `db_size_in_use`, as [`crate::db_size`] defines
    /// them; two atomic loads. `in use <= size`.
    pub fn db_size(&self) -> (i64, i64) {
        let in_use = self.size.in_use();
        (self.size.size().max(in_use), in_use)
    }

    /// Walks the tables now and makes [`db_size`](Self::db_size) exact (the measurer thread
    /// does it after commits, rate-limited); for tests and tools that need the figure at once.
    pub fn measure_db_size(&self) -> Result<(), MvccError> {
        self.size.measure(&self.backend.shared_database())
    }

    /// Schedules the physical deletion of the rows a compaction to `rev` left behind (the index
    /// is compacted already). A newer compaction replaces an unfinished older one: its deletions
    /// cover the older one's (and the older one's hash is not stored). `prev_compact` (the compact
    /// revision before this one) starts the compaction's hash; None takes none.
    pub(crate) fn schedule_physical_compaction(&self, rev: i64, prev_compact: Option<i64>, keep: HashSet<Revision>) {
        #[cfg(test)]
        if self.skip_physical_compaction.load(Ordering::Relaxed) {
            return;
        }
        *self.physical.lock() = Some(PhysicalCompaction { rev, keep, start: Vec::new(), deleted: 0, hasher: prev_compact.map(KvHasher::new), started: std::time::Instant::now() });
    }

    /// Whether a compaction's rows are still being deleted.
    pub fn compaction_pending(&self) -> bool {
        self.physical.lock().is_some()
    }

    /// Deletes up to `max_rows` rows of the pending physical compaction in one write
    /// transaction (taking the writer gate: never call it while holding an ApplyTxn), so that
    /// a large compaction never holds up the applier for long. The last step records the
    /// compaction as finished.
    pub fn compaction_step(&self, max_rows: usize) -> Result<CompactionStep, MvccError> {
        let Some(mut job) = self.physical.lock().take() else {
            return Ok(CompactionStep::Idle);
        };
        self.writer.acquire();
        let pause = std::time::Instant::now();
        let done = self.delete_batch(&mut job, max_rows);
        crate::metrics::COMPACTION_PAUSE_MS.observe(crate::metrics::ms_since(pause));
        self.writer.release();
        let done = match done {
            Ok(d) => d,
            Err(e) => {
                // the step's rows may be hashed in part: this compaction stores no hash
                job.hasher = None;
                // keep the job (unless a newer one came): the next step retries it
                self.physical.lock().get_or_insert(job);
                return Err(e);
            }
        };
        if done {
            crate::metrics::compaction_finished(job.started);
            tracing::info!("compact-revision" = job.rev, took = ?job.started.elapsed(), deleted = job.deleted, "finished scheduled compaction");
            if let Some(h) = &job.hasher {
                self.hashes.store(h.finish(job.rev));
            }
            return Ok(CompactionStep::Finished(job.rev));
        }
        // a newer compaction scheduled meanwhile supersedes this one
        self.physical.lock().get_or_insert(job);
        Ok(CompactionStep::More)
    }

    /// Runs the pending physical compaction to its end.
    pub fn finish_compaction(&self) -> Result<(), MvccError> {
        while let CompactionStep::More | CompactionStep::Finished(_) = self.compaction_step(COMPACTION_BATCH)? {}
        Ok(())
    }

    /// One bounded write transaction of a physical compaction; true when it was the last.
    fn delete_batch(&self, job: &mut PhysicalCompaction, max_rows: usize) -> Result<bool, MvccError> {
        // the carried batches commit with the deletions: pending rows never hold a deleted row
        let txn = self.carried_or_new(false)?;
        let result = self.delete_rows(&txn, job, max_rows);
        // kept even after a failed step: deleting compacted rows only in part is harmless
        *self.open_txn.lock() = Some(txn);
        let done = result?;
        self.commit_open(false)?;
        Ok(done)
    }

    fn delete_rows(&self, txn: &WriteTransaction, job: &mut PhysicalCompaction, max_rows: usize) -> Result<bool, MvccError> {
        let end = main_rev_bound(job.rev + 1);
        let mut done = true;
        {
            let mut table = txn.open_table(KEY_TABLE)?;
            let mut doomed = Vec::new();
            let mut scanned = 0;
            for row in table.range::<&[u8]>(job.start.as_slice()..end.as_slice())? {
                let (k, v) = row?;
                let (r, _) = Revision::from_key_bytes(k.value())?;
                if let Some(h) = &mut job.hasher {
                    h.write(r, k.value(), v.value(), &job.keep);
                }
                if !job.keep.contains(&r) {
                    doomed.push(k.value().to_vec());
                }
                scanned += 1;
                if scanned == max_rows {
                    job.start = k.value().to_vec();
                    job.start.push(0); // the smallest key after this one
                    done = false;
                    break;
                }
            }
            for k in &doomed {
                table.remove(k.as_slice())?;
            }
            job.deleted += doomed.len();
            crate::metrics::COMPACTION_KEYS.inc_by(doomed.len() as u64);
        }
        if done {
            write_meta(txn, &[(META_FINISHED_COMPACT, job.rev as u64)])?;
        }
        Ok(done)
    }
}

impl Drop for KvStore {
    /// Commits the batches carried in the open write transaction (a clean close keeps them).
    fn drop(&mut self) {
        // closing: a walk started now would only delay it
        self.measurer.stop();
        if let Err(e) = self.commit_open(true) {
            tracing::error!(error = %e, "could not commit the last batches at close; the WAL has them");
        }
    }
}
