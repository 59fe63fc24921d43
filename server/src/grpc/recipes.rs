//! The lock and election recipes the v3lock and v3election services run on the server, with
//! the semantics of clientv3's concurrency package (which etcd's own services use): a
//! participant's key is `<name>/<lease in hex>`, created with the lease in a txn (or found if
//! it exists); the owner or leader is the key under `<name>/` with the lowest create revision;
//! a waiter watches for the deletion of the key created just before its own.
//!
//! etcd runs these services on an in-process clientv3 session: a request with lease 0 gets a
//! new lease of [`SESSION_TTL`] seconds that nobody keeps alive, and the server's errors reach
//! the caller as plain Go errors, so every error here is gRPC code Unknown with etcd's message.

use std::sync::Arc;

use etcd_mvcc::{WatchCreate, WatchMessage};
use etcd_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use etcd_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use etcd_proto::etcdserverpb::request_op::Request as Op;
use etcd_proto::etcdserverpb::response_op::Response as OpResponse;
use etcd_proto::etcdserverpb::{
    Compare, DeleteRangeRequest, LeaseGrantRequest, PutRequest, RangeRequest, RequestOp, ResponseHeader, TxnRequest,
};
use etcd_proto::mvccpb::event::EventType;
use etcd_proto::mvccpb::KeyValue;
use tonic::Status;

use crate::errors::ServerError;
use etcd_auth::AuthInfo;
use crate::etcd_server::EtcdServer;

/// clientv3's concurrency session TTL (seconds): the lease a request without one is granted.
pub const SESSION_TTL: i64 = 60;

/// The errors clientv3's concurrency package returns (plain errors: gRPC code Unknown).
pub const ERR_ELECTION_NOT_LEADER: &str = "election: not leader";
pub const ERR_ELECTION_NO_LEADER: &str = "election: no leader";
/// v3election's answer to a request without its leader key.
pub const ERR_MISSING_LEADER_KEY: &str = "\"leader\" field must be provided";

pub fn prefix(name: &[u8]) -> Vec<u8> {
    let mut p = name.to_vec();
    p.push(b'/');
    p
}

pub fn participant_key(name: &[u8], lease: i64) -> Vec<u8> {
    let mut k = prefix(name);
    k.extend_from_slice(format!("{lease:x}").as_bytes());
    k
}

/// The end of the range of every key starting with `p`.
pub fn prefix_end(p: &[u8]) -> Vec<u8> {
    let mut end = p.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn create_revision_is(key: &[u8], rev: i64) -> Compare {
    Compare {
        key: key.to_vec(),
        target: CompareTarget::Create as i32,
        result: CompareResult::Equal as i32,
        target_union: Some(TargetUnion::CreateRevision(rev)),
        ..Default::default()
    }
}

fn op(r: Op) -> RequestOp {
    RequestOp { request: Some(r) }
}

/// Creates `key` with `value` and `lease` unless it exists. Returns (its create revision,
/// the header, the stored key-value if it existed).
pub async fn create_or_get(
    server: &EtcdServer,
    auth: &AuthInfo,
    key: &[u8],
    value: &[u8],
    lease: i64,
) -> Result<(i64, ResponseHeader, Option<KeyValue>), ServerError> {
    let put = PutRequest { key: key.to_vec(), value: value.to_vec(), lease, ..Default::default() };
    let get = RangeRequest { key: key.to_vec(), ..Default::default() };
    let resp = server
        .txn(TxnRequest {
            compare: vec![create_revision_is(key, 0)],
            success: vec![op(Op::RequestPut(put))],
            failure: vec![op(Op::RequestRange(get))],
        }, Some(auth))
        .await?;
    let header = resp.header.unwrap_or_default();
    if resp.succeeded {
        return Ok((header.revision, header, None));
    }
    let existing = resp.responses.into_iter().find_map(|r| match r.response {
        Some(OpResponse::ResponseRange(rr)) => rr.kvs.into_iter().next(),
        _ => None,
    });
    match existing {
        Some(kv) => Ok((kv.create_revision, header, Some(kv))),
        None => Err(ServerError::Internal("recipe: key vanished between compare and read".into())),
    }
}

/// The key under `prefix` with the lowest create revision (the owner / leader).
pub async fn first_created(server: &EtcdServer, auth: &AuthInfo, prefix: &[u8]) -> Result<(Option<KeyValue>, ResponseHeader), ServerError> {
    let resp = server
        .range(RangeRequest {
            key: prefix.to_vec(),
            range_end: prefix_end(prefix),
            sort_order: SortOrder::Ascend as i32,
            sort_target: SortTarget::Create as i32,
            limit: 1,
            ..Default::default()
        }, Some(auth))
        .await?;
    Ok((resp.kvs.into_iter().next(), resp.header.unwrap_or_default()))
}

/// Waits until no key under `prefix` has a create revision `<= max_rev`: each round watches
/// the newest such key until it is deleted. Returns the header of the read that found none.
pub async fn wait_deletes(server: &Arc<EtcdServer>, auth: &AuthInfo, prefix: &[u8], max_rev: i64) -> Result<ResponseHeader, ServerError> {
    loop {
        let resp = server
            .range(RangeRequest {
                key: prefix.to_vec(),
                range_end: prefix_end(prefix),
                sort_order: SortOrder::Descend as i32,
                sort_target: SortTarget::Create as i32,
                max_create_revision: max_rev,
                limit: 1,
                ..Default::default()
            }, Some(auth))
            .await?;
        let header = resp.header.unwrap_or_default();
        let Some(last) = resp.kvs.into_iter().next() else { return Ok(header) };
        let from = header.revision + 1;
        wait_delete(server, &last.key, from).await?;
    }
}

/// Waits for a delete of `key` at `from` or later (a compacted start re-checks by reading).
async fn wait_delete(server: &Arc<EtcdServer>, key: &[u8], from: i64) -> Result<(), ServerError> {
    let stream = server.watch_hub().open_stream();
    stream.watch(WatchCreate { key: key.to_vec(), start_revision: from, no_put: true, ..Default::default() });
    while let Some(msg) = stream.recv().await {
        match msg {
            WatchMessage::Events { events, .. } if events.iter().any(|e| e.r#type == EventType::Delete as i32) => {
                return Ok(());
            }
            WatchMessage::Compacted { .. } => return Ok(()),
            WatchMessage::Created { cancel_reason: Some(why), .. } => return Err(ServerError::Internal(why)),
            _ => {}
        }
    }
    Err(ServerError::Stopped)
}

/// Watches one key from `from`: the next change (put or delete), or None once deleted.
pub async fn next_change(server: &Arc<EtcdServer>, key: &[u8], from: i64) -> Result<Option<KeyValue>, ServerError> {
    let stream = server.watch_hub().open_stream();
    stream.watch(WatchCreate { key: key.to_vec(), start_revision: from, ..Default::default() });
    while let Some(msg) = stream.recv().await {
        match msg {
            WatchMessage::Events { events, .. } => {
                if let Some(e) = events.last() {
                    return Ok(if e.r#type == EventType::Delete as i32 { None } else { e.kv.clone() });
                }
            }
            // history gone: the caller re-reads the current state
            WatchMessage::Compacted { .. } => return Ok(None),
            WatchMessage::Created { cancel_reason: Some(why), .. } => return Err(ServerError::Internal(why)),
            _ => {}
        }
    }
    Err(ServerError::Stopped)
}

/// The first put under `prefix` from `from` on (an election without a leader getting one).
pub async fn next_put_under(server: &Arc<EtcdServer>, prefix: &[u8], from: i64) -> Result<(), ServerError> {
    let stream = server.watch_hub().open_stream();
    stream.watch(WatchCreate {
        key: prefix.to_vec(),
        range_end: prefix_end(prefix),
        start_revision: from,
        no_delete: true,
        ..Default::default()
    });
    while let Some(msg) = stream.recv().await {
        match msg {
            WatchMessage::Events { .. } | WatchMessage::Compacted { .. } => return Ok(()),
            WatchMessage::Created { cancel_reason: Some(why), .. } => return Err(ServerError::Internal(why)),
            _ => {}
        }
    }
    Err(ServerError::Stopped)
}

/// Deletes `key` if it still has create revision `rev` (resign / give up a lock attempt).
pub async fn delete_if_created_at(server: &EtcdServer, auth: &AuthInfo, key: &[u8], rev: i64) -> Result<ResponseHeader, ServerError> {
    let del = DeleteRangeRequest { key: key.to_vec(), ..Default::default() };
    let resp = server
        .txn(TxnRequest {
            compare: vec![create_revision_is(key, rev)],
            success: vec![op(Op::RequestDeleteRange(del))],
            failure: vec![],
        }, Some(auth))
        .await?;
    Ok(resp.header.unwrap_or_default())
}

/// Puts `value` at `key` with `lease` only while `key` still has create revision `rev`.
/// Returns false when it does not (someone else's key now, or gone).
pub async fn put_if_created_at(
    server: &EtcdServer,
    auth: &AuthInfo,
    key: &[u8],
    rev: i64,
    value: &[u8],
    lease: i64,
) -> Result<(bool, ResponseHeader), ServerError> {
    let put = PutRequest { key: key.to_vec(), value: value.to_vec(), lease, ..Default::default() };
    let resp = server
        .txn(TxnRequest {
            compare: vec![create_revision_is(key, rev)],
            success: vec![op(Op::RequestPut(put))],
            failure: vec![],
        }, Some(auth))
        .await?;
    Ok((resp.succeeded, resp.header.unwrap_or_default()))
}

/// Gives up a participant key if the request is dropped (client gone) before it completes.
pub struct Abandon {
    server: Option<Arc<EtcdServer>>,
    auth: AuthInfo,
    key: Vec<u8>,
    rev: i64,
}

impl Abandon {
    pub fn new(server: &Arc<EtcdServer>, auth: &AuthInfo, key: &[u8], rev: i64) -> Abandon {
        Abandon { server: Some(server.clone()), auth: auth.clone(), key: key.to_vec(), rev }
    }

    pub fn disarm(mut self) {
        self.server = None;
    }
}

impl Drop for Abandon {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            let (key, rev, auth) = (std::mem::take(&mut self.key), self.rev, std::mem::take(&mut self.auth));
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    if let Err(e) = delete_if_created_at(&server, &auth, &key, rev).await {
                        tracing::warn!(error = %e, "could not remove an abandoned lock or election key");
                    }
                });
            }
        }
    }
}

/// An error of the lock and election services: code Unknown with etcd's message (module docs).
#[derive(Debug)]
pub struct RecipeError(String);

/// A concurrency-package error such as [`ERR_ELECTION_NOT_LEADER`].
pub fn recipe_error(msg: &str) -> RecipeError {
    RecipeError(msg.to_string())
}

impl From<ServerError> for RecipeError {
    fn from(e: ServerError) -> RecipeError {
        // the message the gRPC status carries (mvcc errors get their "etcdserver: " prefix)
        RecipeError(Status::from(e).message().to_string())
    }
}

impl From<RecipeError> for Status {
    fn from(e: RecipeError) -> Status {
        Status::unknown(e.0)
    }
}

/// The lease a request's session runs on: `lease`, or for 0 a new lease of [`SESSION_TTL`]
/// seconds, as etcd's services start an orphaned concurrency session.
pub async fn session_lease(server: &EtcdServer, lease: i64) -> Result<i64, ServerError> {
    if lease != 0 {
        return Ok(lease);
    }
    let granted = server.lease_grant(LeaseGrantRequest { ttl: SESSION_TTL, id: 0 }).await?;
    Ok(granted.id)
}
