//! Reads at a revision, shared by readers and the applier: the Range options of etcd's
//! `applierV3backend.Range`, the compares of a Txn and the branches they choose, and a
//! read-only Txn as a whole (etcd serves those without its applier).
//!
//! Invariant: a read never looks at index revisions newer than the revision it reads at, so
//! the applier's unpublished changes are invisible to readers at the published revision.

use std::cmp::Ordering;

use etcd_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use etcd_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use etcd_proto::etcdserverpb::request_op::Request;
use etcd_proto::etcdserverpb::response_op::Response;
use etcd_proto::etcdserverpb::{
    Compare, RangeRequest, RangeResponse, RequestOp, ResponseHeader, ResponseOp, TxnRequest,
    TxnResponse,
};
use etcd_proto::mvccpb::KeyValue;
use prost::Message;

use crate::index::{range_end, Index};
use crate::revision::Revision;
use crate::MvccError;

/// Where a read finds the row of a revision (a redb read or write transaction).
pub(crate) trait Rows {
    /// The KeyValue stored at a (non-tombstone) revision.
    fn kv(&self, rev: Revision) -> Result<KeyValue, MvccError>;
}

/// Decodes a key-table value.
pub(crate) fn decode_kv(bytes: &[u8], rev: Revision) -> Result<KeyValue, MvccError> {
    KeyValue::decode(bytes)
        .map_err(|e| MvccError::Corrupt(format!("undecodable KeyValue at {rev:?}: {e}")))
}

/// The error for an indexed revision missing from the key table.
pub(crate) fn missing_row(rev: Revision) -> MvccError {
    MvccError::Corrupt(format!(
        "revision {}_{} is indexed but not in the key table",
        rev.main, rev.sub
    ))
}

/// A header carrying only a revision; the server fills cluster, member and term.
pub(crate) fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..Default::default()
    })
}

/// A view of the store at `current` (the newest revision the caller may see) with compaction
/// at `compact_floor` not yet applied to the index (the applier's pending compaction).
pub(crate) struct View<'a, R: Rows> {
    pub index: &'a Index,
    pub rows: &'a R,
    pub current: i64,
    pub compact_floor: i64,
}

impl<R: Rows> View<'_, R> {
    /// The revision a read with `revision` happens at, or why it cannot.
    pub(crate) fn read_rev(&self, revision: i64) -> Result<i64, MvccError> {
        if revision > self.current {
            return Err(MvccError::FutureRev);
        }
        let rev = if revision <= 0 {
            self.current
        } else {
            revision
        };
        if rev < self.compact_floor {
            return Err(MvccError::Compacted);
        }
        Ok(rev)
    }

    fn fetch(&self, revs: &[Revision]) -> Result<Vec<KeyValue>, MvccError> {
        revs.iter().map(|r| self.rows.kv(*r)).collect()
    }

    /// The live keys of `[key, range_end)` at the current revision (etcd's plain `Range` with no
    /// options), in key order.
    pub fn kvs(&self, key: &[u8], end: &[u8]) -> Result<Vec<KeyValue>, MvccError> {
        let revs = self.index.revisions(key, range_end(end), self.current);
        self.fetch(&revs)
    }

    /// One key at the current revision.
    pub fn kv(&self, key: &[u8]) -> Result<Option<KeyValue>, MvccError> {
        match self.index.get(key, self.current) {
            Some(s) => Ok(Some(self.rows.kv(s.modified)?)),
            None => Ok(None),
        }
    }

    /// etcd's Range with every option; the header carries the current revision.
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, MvccError> {
        let rev = self.read_rev(req.revision)?;
        if req.count_only {
            // counted in the index, without collecting the range's revisions
            let count = self.index.count_checked(&req.key, range_end(&req.range_end), rev)?;
            return Ok(RangeResponse { header: header(self.current), count: count as i64, ..Default::default() });
        }
        let revs = self
            .index
            .revisions_checked(&req.key, range_end(&req.range_end), rev)?;
        let mut resp = RangeResponse {
            header: header(self.current),
            count: revs.len() as i64,
            ..Default::default()
        };
        if revs.is_empty() {
            return Ok(resp);
        }
        let sort_order = SortOrder::try_from(req.sort_order).unwrap_or(SortOrder::None);
        let filtered = sort_order != SortOrder::None
            || req.min_mod_revision != 0
            || req.max_mod_revision != 0
            || req.min_create_revision != 0
            || req.max_create_revision != 0;
        // fetch everything when sorting or filtering; otherwise one more than the limit, to
        // know whether there is more
        let fetch = if filtered || req.limit <= 0 {
            revs.len()
        } else {
            revs.len().min(req.limit as usize + 1)
        };
        let mut kvs = self.fetch(&revs[..fetch])?;
        kvs.retain(|kv| {
            (req.max_mod_revision == 0 || kv.mod_revision <= req.max_mod_revision)
                && (req.min_mod_revision == 0 || kv.mod_revision >= req.min_mod_revision)
                && (req.min_create_revision == 0 || kv.create_revision >= req.min_create_revision)
                && (req.max_create_revision == 0 || kv.create_revision <= req.max_create_revision)
        });
        let target = SortTarget::try_from(req.sort_target).unwrap_or(SortTarget::Key);
        let order = if target != SortTarget::Key && sort_order == SortOrder::None {
            SortOrder::Ascend
        } else {
            sort_order
        };
        if order != SortOrder::None {
            let by = |a: &KeyValue, b: &KeyValue| -> Ordering {
                match target {
                    SortTarget::Key => a.key.cmp(&b.key),
                    SortTarget::Version => a.version.cmp(&b.version),
                    SortTarget::Create => a.create_revision.cmp(&b.create_revision),
                    SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
                    SortTarget::Value => a.value.cmp(&b.value),
                }
            };
            // stable, so ties stay in key order, as etcd's small-slice sort leaves them
            if order == SortOrder::Descend {
                kvs.sort_by(|a, b| by(b, a));
            } else {
                kvs.sort_by(by);
            }
        }
        if req.limit > 0 && kvs.len() > req.limit as usize {
            kvs.truncate(req.limit as usize);
            resp.more = true;
        }
        if req.keys_only {
            for kv in &mut kvs {
                kv.value.clear();
            }
        }
        resp.kvs = kvs;
        Ok(resp)
    }

    /// Whether one compare of a Txn holds: every key of its range must pass; a missing key
    /// compares as all zeros, except that a value compare on a missing key always fails.
    pub fn compare(&self, c: &Compare) -> Result<bool, MvccError> {
        let kvs = self.kvs(&c.key, &c.range_end)?;
        if kvs.is_empty() {
            if c.target == CompareTarget::Value as i32 {
                return Ok(false);
            }
            return Ok(compare_kv(c, &KeyValue::default()));
        }
        Ok(kvs.iter().all(|kv| compare_kv(c, kv)))
    }
}

/// Which branch each Txn took: the outer one, then one entry per nested Txn of that branch.
pub(crate) struct TxnPath {
    pub succeeded: bool,
    pub nested: Vec<TxnPath>,
    /// Compares evaluated here and in the nested Txns (each a range, as etcd counts them).
    pub compared: u64,
}

/// The ops of the branch `path` chose.
pub(crate) fn branch<'r>(req: &'r TxnRequest, path: &TxnPath) -> &'r [RequestOp] {
    if path.succeeded {
        &req.success
    } else {
        &req.failure
    }
}

/// Evaluates the compares of `req` and, recursively, of the nested Txns of the chosen branch.
pub(crate) fn compare_path<R: Rows>(view: &View<'_, R>, req: &TxnRequest) -> Result<TxnPath, MvccError> {
    let mut succeeded = true;
    let mut compared = 0;
    for c in &req.compare {
        compared += 1;
        if !view.compare(c)? {
            succeeded = false;
            break;
        }
    }
    let mut path = TxnPath { succeeded, nested: Vec::new(), compared };
    for op in branch(req, &path) {
        if let Some(Request::RequestTxn(t)) = &op.request {
            let nested = compare_path(view, t)?;
            path.compared += nested.compared;
            path.nested.push(nested);
        }
    }
    Ok(path)
}

/// Range ops of the chosen branches must read at an available revision: at most `current`,
/// not below `compact_floor` (etcd's checkRange, before any op runs).
pub(crate) fn check_range_revisions(
    req: &TxnRequest,
    path: &TxnPath,
    current: i64,
    compact_floor: i64,
) -> Result<(), MvccError> {
    // etcd's never-compacted store has compact revision -1, so negative revisions pass
    let first_rev = if compact_floor == 0 { -1 } else { compact_floor };
    let mut nested = path.nested.iter();
    for op in branch(req, path) {
        match &op.request {
            Some(Request::RequestTxn(t)) => {
                let p = nested.next().expect("one path per nested txn");
                check_range_revisions(t, p, current, compact_floor)?
            }
            Some(Request::RequestRange(r)) if r.revision == 0 => {}
            Some(Request::RequestRange(r)) if r.revision > current => return Err(MvccError::FutureRev),
            Some(Request::RequestRange(r)) if r.revision < first_rev => return Err(MvccError::Compacted),
            _ => {}
        }
    }
    Ok(())
}

impl<R: Rows> View<'_, R> {
    /// A Txn of ranges only ([`txn_is_read_only`](crate::kv_store_txn::txn_is_read_only)),
    /// answered at this view as etcd answers it outside raft; the header carries the revision
    /// read at. Each compare and range op evaluated is added to `ranges` (also on an error).
    pub(crate) fn read_only_txn(&self, req: &TxnRequest, ranges: &mut u64) -> Result<TxnResponse, MvccError> {
        let path = compare_path(self, req)?;
        *ranges += path.compared;
        check_range_revisions(req, &path, self.current, self.compact_floor)?;
        let mut responses = Vec::new();
        for op in branch(req, &path) {
            let Some(Request::RequestRange(r)) = &op.request else {
                return Err(MvccError::NotReadOnly);
            };
            *ranges += 1;
            responses.push(ResponseOp { response: Some(Response::ResponseRange(self.range(r)?)) });
        }
        Ok(TxnResponse { header: header(self.current), succeeded: path.succeeded, responses })
    }
}

fn compare_kv(c: &Compare, kv: &KeyValue) -> bool {
    let ord = match CompareTarget::try_from(c.target) {
        Ok(CompareTarget::Value) => {
            let v: &[u8] = match &c.target_union {
                Some(TargetUnion::Value(v)) => v,
                _ => &[],
            };
            kv.value.as_slice().cmp(v)
        }
        Ok(CompareTarget::Create) => {
            let want = match c.target_union {
                Some(TargetUnion::CreateRevision(r)) => r,
                _ => 0,
            };
            kv.create_revision.cmp(&want)
        }
        Ok(CompareTarget::Mod) => {
            let want = match c.target_union {
                Some(TargetUnion::ModRevision(r)) => r,
                _ => 0,
            };
            kv.mod_revision.cmp(&want)
        }
        Ok(CompareTarget::Version) => {
            let want = match c.target_union {
                Some(TargetUnion::Version(r)) => r,
                _ => 0,
            };
            kv.version.cmp(&want)
        }
        Ok(CompareTarget::Lease) => {
            let want = match c.target_union {
                Some(TargetUnion::Lease(r)) => r,
                _ => 0,
            };
            kv.lease.cmp(&want)
        }
        Err(_) => Ordering::Equal,
    };
    match CompareResult::try_from(c.result) {
        Ok(CompareResult::Equal) => ord == Ordering::Equal,
        Ok(CompareResult::NotEqual) => ord != Ordering::Equal,
        Ok(CompareResult::Greater) => ord == Ordering::Greater,
        Ok(CompareResult::Less) => ord == Ordering::Less,
        Err(_) => true,
    }
}
