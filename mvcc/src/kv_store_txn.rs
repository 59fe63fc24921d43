//! `ApplyTxn`: the applier's write view of one batch of raft entries, written into the backend
//! write transaction carried from batch to batch until a durable commit.
//!
//! Invariants:
//! - each request (Put, DeleteRange, Txn) that changes something takes the next main revision;
//!   its changes take sub revisions 0, 1, ...; a request that changes nothing (a read-only Txn,
//!   a DeleteRange that deletes nothing) or fails takes none;
//! - a failing request leaves no change: every check that can fail (compares, ignore_value /
//!   ignore_lease on a missing key, unknown lease, range revisions) runs before the first write,
//!   as etcd does; if the backend fails mid-request, the request's rows and index entries are
//!   removed again;
//! - all compares of a Txn, nested ones included, and all its checks see the store as it was
//!   before the Txn, as in etcd;
//! - the index learns each change at once (later requests of the batch see it); a batch that is
//!   dropped without commit, or whose commit fails, is removed from the index again.

use etcd_proto::etcdserverpb::request_op::Request;
use etcd_proto::etcdserverpb::response_op::Response;
use etcd_proto::etcdserverpb::{
    DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse,
    ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
};
use etcd_proto::mvccpb::event::EventType;
use etcd_proto::mvccpb::{Event, KeyValue};
use prost::Message;
use std::cell::{Cell, RefCell};
use std::sync::Arc;

use redb::{ReadableTable, Table, WriteTransaction};

use crate::backend::{
    write_meta, KEY_TABLE, META_CONSISTENT_INDEX, META_SCHEDULED_COMPACT, META_TERM,
};
use crate::index::range_end;
use crate::kv_view::{
    branch, check_range_revisions, compare_path, decode_kv, header, missing_row, Rows, TxnPath, View,
};
use crate::pending_rows::Row;
use crate::revision::Revision;
use crate::{KvStore, MvccError};

/// One change of the batch, remembered to undo it in the index if the batch is abandoned.
struct Change {
    key: Vec<u8>,
    rev: Revision,
    tombstone: bool,
}

struct WriteRows<'t>(Table<'t, &'static [u8], &'static [u8]>);

impl Rows for WriteRows<'_> {
    fn kv(&self, rev: Revision) -> Result<KeyValue, MvccError> {
        let v = self
            .0
            .get(rev.to_bytes().as_slice())?
            .ok_or_else(|| missing_row(rev))?;
        decode_kv(v.value(), rev)
    }
}

/// The applier's batch: writes at new revisions, reads that see them, compaction, the
/// consistent index; invisible to readers until [`ApplyTxn::commit`].
pub struct ApplyTxn<'s> {
    store: &'s KvStore,
    txn: Option<WriteTransaction>,
    /// Whether `txn` holds earlier batches not committed yet.
    carried: bool,
    /// Set once something was written that [`ApplyTxn::remove_rows`] cannot take back: other
    /// stores' tables (through [`ApplyTxn::write_txn`]) or the meta table at commit.
    irrevocable: Cell<bool>,
    /// The revision of the last change of the batch (the published one at the start).
    rev: i64,
    /// Changes made so far by the request being applied.
    req_changes: i64,
    /// Reads below this fail: the store's compact revision, or this batch's compaction.
    compact_floor: i64,
    pending_compact: Option<i64>,
    consistent: Option<(u64, u64)>,
    events: Vec<Event>,
    undo: Vec<Change>,
    /// Set when a failed request could not be rolled back in the backend: the batch must not
    /// commit.
    poisoned: Option<String>,
    /// Key-table rows written by the batch, in revision order. Those from `written` on are not
    /// inserted yet: opening the table costs about as much as a third of a put's insert, so
    /// rows are inserted together, before anything reads the table and at commit. They become
    /// the batch's pending rows for readers if the commit leaves the transaction open.
    rows: RefCell<Vec<Row>>,
    written: Cell<usize>,
    /// Set when inserting unwritten rows failed: rows of requests already answered are lost,
    /// so the batch must not commit.
    write_failed: RefCell<Option<String>>,
    /// The operations of the request being applied, for the mvcc counters.
    tally: crate::metrics::TxnTally,
    /// Whether puts read the key's previous value for their event's prev_kv.
    read_prev: bool,
    /// False once a put's event was made without reading its previous value.
    prev_complete: bool,
}

impl<'s> ApplyTxn<'s> {
    pub(crate) fn begin(store: &'s KvStore) -> Result<ApplyTxn<'s>, MvccError> {
        store.writer.acquire();
        if let Some(why) = store.lost_batches.lock().clone() {
            store.writer.release();
            return Err(MvccError::Backend(why));
        }
        let carried = store.open_txn.lock().take();
        let (txn, carried) = match carried {
            Some(txn) => (txn, true),
            None => match store.backend.begin_write(false) {
                Ok(txn) => (txn, false),
                Err(e) => {
                    store.writer.release();
                    return Err(e);
                }
            },
        };
        Ok(ApplyTxn {
            store,
            txn: Some(txn),
            carried,
            irrevocable: Cell::new(false),
            rev: store.current_revision(),
            req_changes: 0,
            compact_floor: store.compact_revision(),
            pending_compact: None,
            consistent: None,
            events: Vec::new(),
            undo: Vec::new(),
            poisoned: None,
            rows: RefCell::new(Vec::new()),
            written: Cell::new(0),
            write_failed: RefCell::new(None),
            tally: Default::default(),
            read_prev: true,
            prev_complete: true,
        })
    }

    /// The write transaction, for other stores' tables in the same commit. Do not touch the
    /// `key` and `meta` tables through it. (What is written through it cannot be taken back if
    /// the batch is dropped without commit.)
    pub fn write_txn(&self) -> &WriteTransaction {
        self.irrevocable.set(true);
        self.backend_txn()
    }

    fn backend_txn(&self) -> &WriteTransaction {
        self.txn
            .as_ref()
            .expect("the write transaction lives until commit")
    }

    /// Takes this batch's rows out of the write transaction again, so that the transaction can
    /// carry the earlier batches on.
    fn remove_rows(&self) -> Result<(), MvccError> {
        let rows = self.rows.borrow();
        let mut table = self.backend_txn().open_table(KEY_TABLE)?;
        for (k, _) in &rows[..self.written.get()] {
            table.remove(k.as_slice())?;
        }
        Ok(())
    }

    /// The events of the batch so far, in revision order (a failed request's events are
    /// gone), prev_kv filled except for puts made while [`ApplyTxn::read_prev_kv`] was off.
    /// Lets the applier follow per request what [`ApplyTxn::commit`] returns.
    pub fn pending_events(&self) -> &[Event] {
        &self.events
    }

    /// Whether the following puts read the key's previous value for their event's prev_kv (on
    /// by default). Reading it is a B-tree lookup and a decode per put; the applier turns it
    /// off when nothing would look at it (no leases, no prev_kv watcher). Deletes always read
    /// it. Only events, never the replicated state or a response, depend on this.
    pub fn read_prev_kv(&mut self, on: bool) {
        self.read_prev = on;
    }

    /// False when some put's event of the batch lacks the prev_kv it would otherwise have.
    pub fn prev_kv_complete(&self) -> bool {
        self.prev_complete
    }

    /// The batch's current revision (the revision of its latest change).
    pub fn current_revision(&self) -> i64 {
        self.rev
    }

    /// The revision reads of the current request happen at: its own changes included.
    fn read_rev(&self) -> i64 {
        self.rev + i64::from(self.req_changes > 0)
    }

    fn with_view<T>(
        &self,
        f: impl FnOnce(&View<'_, WriteRows<'_>>) -> Result<T, MvccError>,
    ) -> Result<T, MvccError> {
        self.write_rows()?;
        let rows = WriteRows(self.backend_txn().open_table(KEY_TABLE)?);
        f(&View {
            index: &self.store.index,
            rows: &rows,
            current: self.read_rev(),
            compact_floor: self.compact_floor,
        })
    }

    /// Runs one request: on success it takes a revision if it changed something; on failure
    /// everything it changed is undone.
    fn request<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, MvccError>,
    ) -> Result<T, MvccError> {
        if let Some(why) = self.poisoned.clone().or_else(|| self.write_failed.borrow().clone()) {
            return Err(MvccError::Backend(why));
        }
        let (undo_start, events_start) = (self.undo.len(), self.events.len());
        let rows_start = self.rows.borrow().len();
        self.req_changes = 0;
        self.tally = Default::default();
        let out = f(self);
        std::mem::take(&mut self.tally).end();
        match out {
            Ok(_) if self.req_changes > 0 => self.rev += 1,
            Ok(_) => {}
            Err(_) => self.roll_back(undo_start, events_start, rows_start),
        }
        self.req_changes = 0;
        out
    }

    fn roll_back(&mut self, undo_start: usize, events_start: usize, rows_start: usize) {
        let changes: Vec<Change> = self.undo.drain(undo_start..).collect();
        self.events.truncate(events_start);
        let mut failure = None;
        match self.write_rows().and_then(|_| Ok(self.backend_txn().open_table(KEY_TABLE)?)) {
            Ok(mut table) => {
                for c in changes.iter().rev() {
                    self.store.index.undo(&c.key, c.rev, c.tombstone);
                    if let Err(e) = table.remove(c.rev.to_key_bytes(c.tombstone).as_slice()) {
                        failure = Some(e.to_string());
                    }
                }
            }
            Err(e) => {
                for c in changes.iter().rev() {
                    self.store.index.undo(&c.key, c.rev, c.tombstone);
                }
                failure = Some(e.to_string());
            }
        }
        // the request's rows are the last ones; those inserted were removed above
        self.rows.borrow_mut().truncate(rows_start);
        self.written.set(self.written.get().min(rows_start));
        if let Some(why) = failure {
            tracing::error!(%why, "could not roll back a failed request; the batch cannot commit");
            self.poisoned = Some(why);
        }
    }

    fn insert_row(&self, rev: Revision, tombstone: bool, kv: &KeyValue) {
        self.rows
            .borrow_mut()
            .push((rev.to_key_bytes(tombstone), kv.encode_to_vec()));
    }

    /// Inserts the rows not inserted yet into the key table.
    fn write_rows(&self) -> Result<(), MvccError> {
        let rows = self.rows.borrow();
        let from = self.written.get();
        if from == rows.len() {
            return Ok(());
        }
        let result = (|| -> Result<(), MvccError> {
            let mut table = self.backend_txn().open_table(KEY_TABLE)?;
            for (k, v) in &rows[from..] {
                table.insert(k.as_slice(), v.as_slice())?;
            }
            Ok(())
        })();
        self.written.set(rows.len());
        if let Err(e) = &result {
            *self.write_failed.borrow_mut() = Some(e.to_string());
        }
        result
    }

    /// The key as it was at `at` (for events' prev_kv).
    fn kv_at(&self, key: &[u8], at: i64) -> Result<Option<KeyValue>, MvccError> {
        match self.store.index.get(key, at) {
            Some(s) => {
                self.write_rows()?;
                let rows = WriteRows(self.backend_txn().open_table(KEY_TABLE)?);
                Ok(Some(rows.kv(s.modified)?))
            }
            None => Ok(None),
        }
    }

    /// Writes a put of the current request; returns its main revision.
    fn write_put(&mut self, key: &[u8], value: Vec<u8>, lease: i64) -> Result<i64, MvccError> {
        let main = self.rev + 1;
        let rev = Revision::new(main, self.req_changes);
        let prev_kv = if self.read_prev {
            self.kv_at(key, self.rev)?
        } else {
            self.prev_complete = false;
            None
        };
        // nothing can fail from here to the undo record
        let (create_revision, version) = match self.store.index.put(key, rev) {
            Some(s) => (s.created.main, s.version + 1),
            None => (main, 1),
        };
        let kv = KeyValue {
            key: key.to_vec(),
            create_revision,
            mod_revision: main,
            version,
            value,
            lease,
        };
        self.insert_row(rev, false, &kv);
        self.undo.push(Change {
            key: key.to_vec(),
            rev,
            tombstone: false,
        });
        self.req_changes += 1;
        self.events.push(Event {
            r#type: EventType::Put as i32,
            kv: Some(kv),
            prev_kv,
        });
        Ok(main)
    }

    /// Writes the deletion of a live key in the current request.
    fn write_delete(&mut self, key: &[u8]) -> Result<(), MvccError> {
        let main = self.rev + 1;
        let rev = Revision::new(main, self.req_changes);
        let prev_kv = self.kv_at(key, self.rev)?;
        self.insert_row(
            rev,
            true,
            &KeyValue {
                key: key.to_vec(),
                ..Default::default()
            },
        );
        if !self.store.index.tombstone(key, rev) {
            self.write_rows()?;
            self.backend_txn()
                .open_table(KEY_TABLE)?
                .remove(rev.to_key_bytes(true).as_slice())?;
            return Err(MvccError::Corrupt(format!(
                "delete of key {key:?} that is not live"
            )));
        }
        self.undo.push(Change {
            key: key.to_vec(),
            rev,
            tombstone: true,
        });
        self.req_changes += 1;
        let kv = KeyValue {
            key: key.to_vec(),
            mod_revision: main,
            ..Default::default()
        };
        self.events.push(Event {
            r#type: EventType::Delete as i32,
            kv: Some(kv),
            prev_kv,
        });
        Ok(())
    }

    /// Applies a Put. A nonzero lease must satisfy `lease_exists` (else LeaseNotFound);
    /// `ignore_value` / `ignore_lease` need the key to exist (else KeyNotFound).
    pub fn put(
        &mut self,
        req: &PutRequest,
        lease_exists: &dyn Fn(i64) -> bool,
    ) -> Result<PutResponse, MvccError> {
        self.request(|t| {
            if req.lease != 0 && !lease_exists(req.lease) {
                return Err(MvccError::LeaseNotFound);
            }
            t.apply_put(req)
        })
    }

    fn apply_put(&mut self, req: &PutRequest) -> Result<PutResponse, MvccError> {
        let mut resp = PutResponse::default();
        let (mut value, mut lease) = (None, req.lease);
        if req.ignore_value || req.ignore_lease || req.prev_kv {
            self.tally.ranges += 1;
            let prev = self.with_view(|v| v.kv(&req.key))?;
            match prev {
                None if req.ignore_value || req.ignore_lease => return Err(MvccError::KeyNotFound),
                None => {}
                Some(prev) => {
                    if req.ignore_value {
                        value = Some(prev.value.clone());
                    }
                    if req.ignore_lease {
                        lease = prev.lease;
                    }
                    if req.prev_kv {
                        resp.prev_kv = Some(prev);
                    }
                }
            }
        }
        let value = value.unwrap_or_else(|| req.value.clone());
        self.tally.put(req.key.len(), value.len());
        resp.header = header(self.write_put(&req.key, value, lease)?);
        Ok(resp)
    }

    /// Applies a DeleteRange (`range_end` as in Range). Deleting nothing takes no revision.
    pub fn delete_range(
        &mut self,
        req: &DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, MvccError> {
        self.request(|t| t.apply_delete_range(req))
    }

    fn apply_delete_range(
        &mut self,
        req: &DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, MvccError> {
        let mut resp = DeleteRangeResponse::default();
        self.tally.deletes += 1;
        let keys: Vec<Vec<u8>> = if req.prev_kv {
            self.tally.ranges += 1;
            resp.prev_kvs = self.with_view(|v| v.kvs(&req.key, &req.range_end))?;
            resp.prev_kvs.iter().map(|kv| kv.key.clone()).collect()
        } else {
            let at = self.read_rev();
            self.store
                .index
                .range(&req.key, range_end(&req.range_end), at)
                .into_iter()
                .map(|(k, _)| k)
                .collect()
        };
        for key in &keys {
            self.write_delete(key)?;
        }
        resp.deleted = keys.len() as i64;
        resp.header = header(self.read_rev());
        Ok(resp)
    }

    /// Range inside the batch: sees the batch's writes.
    pub fn range(&mut self, req: &RangeRequest) -> Result<RangeResponse, MvccError> {
        self.request(|t| {
            t.tally.ranges += 1;
            t.with_view(|v| v.range(req))
        })
    }

    /// Applies a Txn: compares (all against the state before the Txn, nested ones included),
    /// then the checks of the chosen branches, then their ops, all sharing one main revision.
    pub fn txn(
        &mut self,
        req: &TxnRequest,
        lease_exists: &dyn Fn(i64) -> bool,
    ) -> Result<TxnResponse, MvccError> {
        self.request(|t| {
            let path = t.with_view(|v| compare_path(v, req))?;
            // etcd evaluates a writing Txn's compares and put checks in a read transaction of
            // their own, counted apart (etcd_mvcc_*_total) from the write transaction after it
            let writes = !txn_is_read_only(req);
            let mut checks = crate::metrics::TxnTally { ranges: path.compared, ..Default::default() };
            let checked = t.with_view(|v| check_puts(v, req, &path, lease_exists, &mut checks.ranges));
            if writes {
                checks.end();
            } else {
                t.tally.ranges += checks.ranges;
            }
            checked?;
            check_range_revisions(req, &path, t.rev, t.compact_floor)?;
            let mut resp = t.apply_txn_ops(req, &path)?;
            resp.header = header(t.read_rev());
            Ok(resp)
        })
    }

    fn apply_txn_ops(
        &mut self,
        req: &TxnRequest,
        path: &TxnPath,
    ) -> Result<TxnResponse, MvccError> {
        let ops = branch(req, path);
        let mut nested = path.nested.iter();
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let response = match &op.request {
                Some(Request::RequestRange(r)) => {
                    self.tally.ranges += 1;
                    Some(Response::ResponseRange(self.with_view(|v| v.range(r))?))
                }
                Some(Request::RequestPut(p)) => Some(Response::ResponsePut(self.apply_put(p)?)),
                Some(Request::RequestDeleteRange(d)) => {
                    Some(Response::ResponseDeleteRange(self.apply_delete_range(d)?))
                }
                Some(Request::RequestTxn(t)) => {
                    let mut r =
                        self.apply_txn_ops(t, nested.next().expect("one path per nested txn"))?;
                    r.header = Some(ResponseHeader::default());
                    Some(Response::ResponseTxn(r))
                }
                None => None,
            };
            responses.push(ResponseOp { response });
        }
        Ok(TxnResponse {
            header: None,
            succeeded: path.succeeded,
            responses,
        })
    }

    /// Compacts at `rev`: reads below it fail from now on; the index and the key table are
    /// compacted when the batch commits. `rev <= compact revision` is Compacted, `rev >`
    /// current FutureRev.
    pub fn compact(&mut self, rev: i64) -> Result<(), MvccError> {
        // etcd starts "never compacted" below revision 0, so compacting to 0 first is a no-op
        // success. (etcd would refuse a second compaction to 0; here it stays a no-op.)
        if rev == 0 && self.compact_floor == 0 {
            crate::metrics::range_read();
            return Ok(());
        }
        if rev <= self.compact_floor {
            return Err(MvccError::Compacted);
        }
        if rev > self.rev {
            return Err(MvccError::FutureRev);
        }
        // recorded in the backend at commit
        self.pending_compact = Some(rev);
        self.compact_floor = rev;
        // etcd's applier reads a key after compacting, for the response's revision: a range
        crate::metrics::range_read();
        Ok(())
    }

    /// Records the raft entry this batch applies up to; stored in the same commit.
    pub fn set_consistent_index(&mut self, index: u64, term: u64) {
        self.consistent = Some((index, term));
    }

    /// Completes the batch and publishes its revision to readers. With `durable` the backend
    /// transaction (this batch and those carried in it) commits with fsync; otherwise it stays
    /// open for the next batch and the rows reach readers as pending rows. Runs a compaction
    /// the batch asked for and returns its events in revision order, prev_kv filled.
    pub fn commit(mut self, durable: bool) -> Result<Vec<Event>, MvccError> {
        if let Some(why) = self.poisoned.take() {
            return Err(MvccError::Backend(why));
        }
        let spill = std::time::Instant::now();
        self.write_rows()?;
        if let Some(why) = self.write_failed.borrow_mut().take() {
            return Err(MvccError::Backend(why));
        }
        let mut meta = Vec::with_capacity(3);
        if let Some((index, term)) = self.consistent {
            meta.extend([(META_CONSISTENT_INDEX, index), (META_TERM, term)]);
        }
        if let Some(rev) = self.pending_compact {
            meta.push((META_SCHEDULED_COMPACT, rev as u64));
        }
        if !meta.is_empty() {
            self.irrevocable.set(true);
            write_meta(self.backend_txn(), &meta)?;
        }
        let txn = self
            .txn
            .take()
            .expect("the write transaction lives until commit");
        let rows = std::mem::take(&mut *self.rows.borrow_mut());
        let bytes: usize = rows.iter().map(|(k, v)| k.len() + v.len()).sum();
        // counted as committed (in the size figures) when a commit holds them
        self.store.pending_bytes.fetch_add(bytes as i64, std::sync::atomic::Ordering::Relaxed);
        if durable {
            if let Err(e) = self.store.commit_write(txn, true, spill.elapsed()) {
                if self.carried {
                    self.store.lose_batches(&e);
                }
                return Err(e);
            }
        } else {
            Arc::make_mut(&mut self.store.pending.lock()).push(rows);
            *self.store.open_txn.lock() = Some(txn);
        }
        self.undo.clear();
        self.store
            .published
            .store(self.rev, std::sync::atomic::Ordering::Release);
        if durable {
            // after publishing: a reader that sees the new revision reads the commit
            self.store.pending_committed();
        }
        if let Some(ci) = self.consistent {
            *self.store.consistent.lock() = ci;
        }
        if let Some(rev) = self.pending_compact.take() {
            // readers below `rev` fail from now on; the rows go in steps between batches
            let pause = std::time::Instant::now();
            let prev = self.store.index.compact_rev();
            let keep = self.store.index.compact(rev);
            crate::metrics::INDEX_COMPACTION_PAUSE_MS.observe(crate::metrics::ms_since(pause));
            self.store.schedule_physical_compaction(rev, Some(prev), keep);
        }
        Ok(std::mem::take(&mut self.events))
    }
}

impl Drop for ApplyTxn<'_> {
    fn drop(&mut self) {
        // Without commit: a fresh write transaction is aborted; one carrying earlier batches
        // goes back to the store without this batch's rows, or, if that cannot be done, is
        // aborted with the earlier batches.
        if self.txn.is_some() && self.carried {
            let undone = if self.irrevocable.get() {
                Err(MvccError::Backend("it wrote other tables".into()))
            } else {
                self.remove_rows()
            };
            match undone {
                Ok(()) => *self.store.open_txn.lock() = self.txn.take(),
                Err(e) => self.store.lose_batches(&format!("a batch was abandoned and {e}")),
            }
        }
        drop(self.txn.take());
        for c in self.undo.drain(..).rev() {
            self.store.index.undo(&c.key, c.rev, c.tombstone);
        }
        self.store.writer.release();
    }
}

/// etcd's isTxnReadonly: every operation of both branches is a range. A nested Txn counts as
/// a write even when it only reads (etcd 3.4 to 3.6 look one level deep): etcd proposes it
/// through raft and applies it as a writing Txn.
pub fn txn_is_read_only(r: &TxnRequest) -> bool {
    r.success
        .iter()
        .chain(&r.failure)
        .all(|op| matches!(op.request, Some(Request::RequestRange(_))))
}

/// Puts of the chosen branches: ignore_value / ignore_lease need the key (a range each, added
/// to `ranges`), a lease must exist.
fn check_puts<R: Rows>(
    view: &View<'_, R>,
    req: &TxnRequest,
    path: &TxnPath,
    lease_exists: &dyn Fn(i64) -> bool,
    ranges: &mut u64,
) -> Result<(), MvccError> {
    let mut nested = path.nested.iter();
    for op in branch(req, path) {
        match &op.request {
            Some(Request::RequestTxn(t)) => check_puts(
                view,
                t,
                nested.next().expect("one path per nested txn"),
                lease_exists,
                ranges,
            )?,
            Some(Request::RequestPut(p)) => {
                if p.ignore_value || p.ignore_lease {
                    *ranges += 1;
                    if view.kv(&p.key)?.is_none() {
                        return Err(MvccError::KeyNotFound);
                    }
                }
                if p.lease != 0 && !lease_exists(p.lease) {
                    return Err(MvccError::LeaseNotFound);
                }
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcd_proto::etcdserverpb::RequestOp;

    fn op(r: Request) -> RequestOp {
        RequestOp { request: Some(r) }
    }

    #[test]
    fn read_only_txns_are_told_apart_from_writing_ones() {
        let range = || op(Request::RequestRange(RangeRequest::default()));
        assert!(txn_is_read_only(&TxnRequest::default()));
        assert!(txn_is_read_only(&TxnRequest { success: vec![range()], failure: vec![range()], ..Default::default() }));
        let put = TxnRequest { failure: vec![range(), op(Request::RequestPut(PutRequest::default()))], ..Default::default() };
        assert!(!txn_is_read_only(&put));
        let del = TxnRequest { success: vec![op(Request::RequestDeleteRange(DeleteRangeRequest::default()))], ..Default::default() };
        assert!(!txn_is_read_only(&del));
        let nested = TxnRequest { success: vec![op(Request::RequestTxn(put))], ..Default::default() };
        assert!(!txn_is_read_only(&nested));
        let nested_ro = TxnRequest { success: vec![op(Request::RequestTxn(TxnRequest { success: vec![range()], ..Default::default() }))], ..Default::default() };
        // etcd's isTxnReadonly looks one level deep: a nested Txn is a write
        assert!(!txn_is_read_only(&nested_ro));
    }
}
