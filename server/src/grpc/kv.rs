//! KV service: check the request's shape, call `EtcdServer`, answer. Nothing else.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;

use etcd_proto::etcdserverpb::kv_server::Kv;
use etcd_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use etcd_proto::etcdserverpb::{
    request_op, CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, RangeStreamResponse, RequestOp, TxnRequest, TxnResponse,
};
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::errors::ServerError;
use crate::etcd_server::EtcdServer;

pub struct KvService {
    pub server: Arc<EtcdServer>,
}

/// RangeStream's chunks, as tonic sends them.
type RangeChunks = Pin<Box<dyn Stream<Item = Result<RangeStreamResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Kv for KvService {
    type RangeStreamStream = RangeChunks;

    /// etcd 3.7's RangeStream. A learner refuses it even serializable: etcd serves no stream but
    /// Snapshot on a learner.
    async fn range_stream(&self, request: Request<RangeRequest>) -> Result<Response<RangeChunks>, Status> {
        self.server.refuse_if_learner()?;
        let (md, ext, req) = request.into_parts();
        check_range_stream(&req)?;
        let auth = self.server.auth_info(&md, &ext).await?;
        let chunks = self.server.range_stream(req, Some(auth)).await?;
        Ok(Response::new(chunks.map(|c| c.map_err(Status::from)).boxed()))
    }

    async fn range(&self, request: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        let auth = self.server.auth_info(request.metadata(), request.extensions()).await?;
        let req = request.into_inner();
        if !req.serializable {
            self.server.refuse_if_learner()?;
        }
        check_range(&req)?;
        Ok(Response::new(self.server.range(req, Some(&auth)).await?))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let auth = self.server.auth_info(request.metadata(), request.extensions()).await?;
        let req = request.into_inner();
        self.server.refuse_if_learner()?;
        check_put(&req)?;
        Ok(Response::new(self.server.put(req, Some(&auth)).await?))
    }

    async fn delete_range(&self, request: Request<DeleteRangeRequest>) -> Result<Response<DeleteRangeResponse>, Status> {
        let auth = self.server.auth_info(request.metadata(), request.extensions()).await?;
        let req = request.into_inner();
        self.server.refuse_if_learner()?;
        check_delete(&req)?;
        Ok(Response::new(self.server.delete_range(req, Some(&auth)).await?))
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let auth = self.server.auth_info(request.metadata(), request.extensions()).await?;
        let req = request.into_inner();
        self.server.refuse_if_learner()?;
        check_txn(&req, self.server.config().max_txn_ops)?;
        check_intervals(&req.success)?;
        check_intervals(&req.failure)?;
        Ok(Response::new(self.server.txn(req, Some(&auth)).await?))
    }

    async fn compact(&self, request: Request<CompactionRequest>) -> Result<Response<CompactionResponse>, Status> {
        self.server.refuse_if_learner()?;
        let auth = self.server.auth_info(request.metadata(), request.extensions()).await?;
        Ok(Response::new(self.server.compact(request.into_inner(), Some(&auth)).await?))
    }
}

fn check_range(r: &RangeRequest) -> Result<(), ServerError> {
    if r.key.is_empty() {
        return Err(ServerError::EmptyKey);
    }
    Ok(())
}

/// etcd 3.7's checkRangeStreamRequest: Range's checks, valid sort options, key order only and
/// no revision filters (a stream cannot sort or filter what it has not read yet).
fn check_range_stream(r: &RangeRequest) -> Result<(), ServerError> {
    check_range(r)?;
    let (Ok(order), Ok(target)) = (SortOrder::try_from(r.sort_order), SortTarget::try_from(r.sort_target)) else {
        return Err(ServerError::InvalidSortOption);
    };
    if !(order == SortOrder::None || (target == SortTarget::Key && order == SortOrder::Ascend)) {
        return Err(ServerError::RangeStreamSortOrder);
    }
    if r.min_mod_revision != 0 || r.max_mod_revision != 0 || r.min_create_revision != 0 || r.max_create_revision != 0 {
        return Err(ServerError::RangeStreamRevisionFilters);
    }
    Ok(())
}

fn check_put(r: &PutRequest) -> Result<(), ServerError> {
    if r.key.is_empty() {
        return Err(ServerError::EmptyKey);
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(ServerError::ValueProvided);
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(ServerError::LeaseProvided);
    }
    Ok(())
}

fn check_delete(r: &DeleteRangeRequest) -> Result<(), ServerError> {
    if r.key.is_empty() {
        return Err(ServerError::EmptyKey);
    }
    Ok(())
}

/// etcd's limit counts the longest of compares/success/failure, at every nesting level
/// against what is left of `--max-txn-ops`.
fn check_txn(r: &TxnRequest, max_ops: usize) -> Result<(), ServerError> {
    let ops = r.compare.len().max(r.success.len()).max(r.failure.len());
    if ops > max_ops {
        return Err(ServerError::TooManyOps);
    }
    if r.compare.iter().any(|c| c.key.is_empty()) {
        return Err(ServerError::EmptyKey);
    }
    for op in r.success.iter().chain(r.failure.iter()) {
        match &op.request {
            Some(request_op::Request::RequestRange(x)) => check_range(x)?,
            Some(request_op::Request::RequestPut(x)) => check_put(x)?,
            Some(request_op::Request::RequestDeleteRange(x)) => check_delete(x)?,
            Some(request_op::Request::RequestTxn(x)) => check_txn(x, max_ops - ops)?,
            // an empty op (e.g. a gateway body naming the oneof wrongly), refused as etcd does
            None => return Err(ServerError::KeyNotFound),
        }
    }
    Ok(())
}

/// Deleted ranges of one txn level: [key, end) or a single key when end is empty.
#[derive(Default, Clone)]
struct Deletes(Vec<(Vec<u8>, Vec<u8>)>);

impl Deletes {
    fn covers(&self, key: &[u8]) -> bool {
        self.0.iter().any(|(start, end)| {
            if end.is_empty() {
                key == start.as_slice()
            } else {
                key >= start.as_slice() && key < end.as_slice()
            }
        })
    }
}

/// A key may be written at most once by a txn: no two puts of one key, and no put of a key a
/// delete in the same txn covers (then/else branches of a nested txn are exclusive).
fn check_intervals(ops: &[RequestOp]) -> Result<(), ServerError> {
    collect_intervals(ops).map(|_| ())
}

fn collect_intervals(ops: &[RequestOp]) -> Result<(HashSet<Vec<u8>>, Deletes), ServerError> {
    let mut dels = Deletes::default();
    for op in ops {
        if let Some(request_op::Request::RequestDeleteRange(d)) = &op.request {
            dels.0.push((d.key.clone(), d.range_end.clone()));
        }
    }
    let mut puts: HashSet<Vec<u8>> = HashSet::new();
    for op in ops {
        let Some(request_op::Request::RequestTxn(t)) = &op.request else { continue };
        let (puts_then, dels_then) = collect_intervals(&t.success)?;
        let (puts_else, dels_else) = collect_intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || dels.covers(k) {
                return Err(ServerError::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        for k in puts_else {
            if (puts.contains(&k) && !puts_then.contains(&k)) || dels.covers(&k) {
                return Err(ServerError::DuplicateKey);
            }
            puts.insert(k);
        }
        dels.0.extend(dels_then.0);
        dels.0.extend(dels_else.0);
    }
    for op in ops {
        if let Some(request_op::Request::RequestPut(p)) = &op.request {
            if puts.contains(&p.key) || dels.covers(&p.key) {
                return Err(ServerError::DuplicateKey);
            }
            puts.insert(p.key.clone());
        }
    }
    Ok((puts, dels))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &str) -> RequestOp {
        RequestOp { request: Some(request_op::Request::RequestPut(PutRequest { key: k.into(), ..Default::default() })) }
    }
    fn del(k: &str, end: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestDeleteRange(DeleteRangeRequest {
                key: k.into(),
                range_end: end.into(),
                ..Default::default()
            })),
        }
    }
    fn txn(then: Vec<RequestOp>, els: Vec<RequestOp>) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestTxn(TxnRequest { success: then, failure: els, ..Default::default() })),
        }
    }

    #[test]
    fn duplicate_puts_are_refused() {
        assert_eq!(check_intervals(&[put("a"), put("a")]), Err(ServerError::DuplicateKey));
        assert_eq!(check_intervals(&[put("a"), put("b")]), Ok(()));
    }

    #[test]
    fn put_inside_a_deleted_range_is_refused() {
        assert_eq!(check_intervals(&[del("a", "c"), put("b")]), Err(ServerError::DuplicateKey));
        assert_eq!(check_intervals(&[del("a", "c"), put("c")]), Ok(()));
        assert_eq!(check_intervals(&[del("a", ""), put("a")]), Err(ServerError::DuplicateKey));
    }

    #[test]
    fn nested_then_and_else_may_write_the_same_key() {
        assert_eq!(check_intervals(&[txn(vec![put("a")], vec![put("a")])]), Ok(()));
        assert_eq!(check_intervals(&[txn(vec![put("a")], vec![]), put("a")]), Err(ServerError::DuplicateKey));
    }

    #[test]
    fn too_many_ops_counts_the_longest_list() {
        let r = TxnRequest { success: vec![put("a"), put("b"), put("c")], ..Default::default() };
        assert_eq!(check_txn(&r, 2), Err(ServerError::TooManyOps));
        assert_eq!(check_txn(&r, 3), Ok(()));
    }

    #[test]
    fn empty_keys_are_refused() {
        assert_eq!(check_put(&PutRequest::default()), Err(ServerError::EmptyKey));
        let p = PutRequest { key: "k".into(), value: "v".into(), ignore_value: true, ..Default::default() };
        assert_eq!(check_put(&p), Err(ServerError::ValueProvided));
    }
}
