//! The KV mix of issue 13 over a few keys: put, linearizable get, serializable get, txn
//! compare-and-set on value and on mod_revision, delete, range with limit.
//!
//! Invariant: every request except the serializable get is recorded with [`call`], which sends a
//! `history::Request` as the equivalent etcd gRPC request and converts the answer back, so what is
//! recorded is exactly what was asked. Serializable gets may be stale by design and are not
//! recorded as linearizable reads; they are only counted (`serializable_gets`).

use super::{ClientContext, Traffic};
use crate::history::{Compare, Request, Response, TxnWrite, ValueAt};
use crate::recorder::{key_value, text};
use etcd_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use etcd_proto::etcdserverpb::request_op::Request as OpRequest;
use etcd_proto::etcdserverpb::response_op::Response as OpResponse;
use etcd_proto::etcdserverpb::{
    self as pb, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use futures::future::BoxFuture;
use futures::FutureExt;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tonic::Status;

const PREFIX: &str = "kv/";

/// The KV traffic; `keys` distinct keys `kv/k0`.. share the load.
pub struct KvTraffic {
    pub keys: usize,
    /// Serializable gets sent (not in the history).
    pub serializable_gets: Arc<AtomicU64>,
}

impl Default for KvTraffic {
    fn default() -> Self {
        KvTraffic {
            keys: 4,
            serializable_gets: Arc::default(),
        }
    }
}

impl KvTraffic {
    /// Every key this traffic uses.
    pub fn key_names(&self) -> Vec<String> {
        (0..self.keys.max(1)).map(key_name).collect()
    }
}

fn key_name(k: usize) -> String {
    format!("{PREFIX}k{k}")
}

impl Traffic for KvTraffic {
    fn name(&self) -> &'static str {
        "kv"
    }

    fn key_prefix(&self) -> &'static str {
        PREFIX
    }

    fn run(&self, ctx: ClientContext) -> BoxFuture<'static, ()> {
        run_client(ctx, self.keys.max(1), self.serializable_gets.clone()).boxed()
    }
}

/// What a client last saw of a key, to make compare-and-set requests that can succeed.
#[derive(Default)]
struct Seen(HashMap<String, ValueAt>);

impl Seen {
    fn learn(&mut self, key: &str, response: &Response) {
        match response {
            Response::Get { kv: Some(kv), .. } => {
                self.0.insert(key.to_string(), kv.clone());
            }
            Response::Get { kv: None, .. } | Response::Delete { .. } => {
                self.0.remove(key);
            }
            _ => {}
        }
    }
}

async fn run_client(mut ctx: ClientContext, keys: usize, serializable: Arc<AtomicU64>) {
    let mut seen = Seen::default();
    while ctx.next_turn().await {
        let key = key_name(ctx.rng.usize(0..keys));
        let roll = ctx.rng.u32(0..100);
        let request = match roll {
            0..30 => Request::Put {
                key: key.clone(),
                value: ctx.recorder.unique_value(ctx.id),
            },
            30..50 => Request::Get { key: key.clone() },
            50..60 => {
                serializable_get(&mut ctx, &key).await;
                serializable.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            60..70 => Request::Txn {
                key: key.clone(),
                compare: Compare::ValueEquals(
                    seen.0
                        .get(&key)
                        .map_or_else(String::new, |kv| kv.value.clone()),
                ),
                then: TxnWrite::Put(ctx.recorder.unique_value(ctx.id)),
            },
            70..80 => {
                let then = if ctx.rng.bool() {
                    TxnWrite::Put(ctx.recorder.unique_value(ctx.id))
                } else {
                    TxnWrite::Delete
                };
                Request::Txn {
                    key: key.clone(),
                    compare: Compare::ModRevisionEquals(
                        seen.0.get(&key).map_or(0, |kv| kv.mod_revision),
                    ),
                    then,
                }
            }
            80..90 => Request::Delete { key: key.clone() },
            _ => Request::Range {
                prefix: PREFIX.to_string(),
                limit: ctx.rng.i64(0..=keys as i64),
            },
        };
        if let Ok(response) = call(&mut ctx, request).await {
            seen.learn(&key, &response);
        }
    }
}

/// A serializable get: may be stale by design, so it is sent but not recorded.
async fn serializable_get(ctx: &mut ClientContext, key: &str) {
    let request = RangeRequest {
        key: key.as_bytes().to_vec(),
        serializable: true,
        ..Default::default()
    };
    let result = ctx.client.kv().range(request).await;
    let _ = ctx.client.observe(result);
}

/// Sends `request` as etcd's gRPC request, records it, and returns the answer.
pub async fn call(ctx: &mut ClientContext, request: Request) -> Result<Response, Status> {
    let kv = ctx.client.kv();
    let sent = request.clone();
    let future = async move { send(kv, &sent).await };
    let result = ctx
        .recorder
        .record(ctx.id, request, future, Clone::clone)
        .await;
    ctx.client.observe(result)
}

/// One request on the wire and its answer on the history's terms.
pub(crate) async fn send(
    mut kv: pb::kv_client::KvClient<tonic::transport::Channel>,
    request: &Request,
) -> Result<Response, Status> {
    let revision = |h: Option<pb::ResponseHeader>| h.map_or(0, |h| h.revision);
    match request {
        Request::Put { key, value } => {
            let r = kv.put(put(key, value)).await?.into_inner();
            Ok(Response::Put {
                revision: revision(r.header),
            })
        }
        Request::Get { key } => {
            let r = kv.range(range(key, Vec::new(), 0)).await?.into_inner();
            Ok(Response::Get {
                revision: revision(r.header),
                kv: r.kvs.first().map(|kv| ValueAt {
                    value: text(&kv.value),
                    mod_revision: kv.mod_revision,
                }),
            })
        }
        Request::Delete { key } => {
            let r = kv.delete_range(delete(key)).await?.into_inner();
            Ok(Response::Delete {
                revision: revision(r.header),
                deleted: r.deleted,
            })
        }
        Request::Txn { key, compare, then } => {
            let r = kv.txn(txn(key, compare, then)).await?.into_inner();
            let deleted = r
                .responses
                .iter()
                .map(|op| match &op.response {
                    Some(OpResponse::ResponseDeleteRange(d)) => d.deleted,
                    _ => 0,
                })
                .sum();
            Ok(Response::Txn {
                revision: revision(r.header),
                succeeded: r.succeeded,
                deleted,
            })
        }
        Request::Range { prefix, limit } => {
            let end = prefix_end(prefix.as_bytes());
            let r = kv.range(range(prefix, end, *limit)).await?.into_inner();
            Ok(Response::Range {
                revision: revision(r.header),
                kvs: r.kvs.iter().map(key_value).collect(),
                count: r.count,
            })
        }
        // Leases, lists and compaction are sent by `traffic::requests`.
        other => Err(Status::unimplemented(format!(
            "not a KV-mix request: {other}"
        ))),
    }
}

fn put(key: &str, value: &str) -> PutRequest {
    PutRequest {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        ..Default::default()
    }
}

fn delete(key: &str) -> DeleteRangeRequest {
    DeleteRangeRequest {
        key: key.as_bytes().to_vec(),
        ..Default::default()
    }
}

fn range(key: &str, range_end: Vec<u8>, limit: i64) -> RangeRequest {
    RangeRequest {
        key: key.as_bytes().to_vec(),
        range_end,
        limit,
        ..Default::default()
    }
}

fn txn(key: &str, compare: &Compare, then: &TxnWrite) -> TxnRequest {
    let (target, union) = match compare {
        Compare::ValueEquals(v) => (
            CompareTarget::Value,
            TargetUnion::Value(v.as_bytes().to_vec()),
        ),
        Compare::ModRevisionEquals(r) => (CompareTarget::Mod, TargetUnion::ModRevision(*r)),
    };
    let op = match then {
        TxnWrite::Put(v) => OpRequest::RequestPut(put(key, v)),
        TxnWrite::PutWithLease(v, lease) => OpRequest::RequestPut(PutRequest {
            lease: *lease,
            ..put(key, v)
        }),
        TxnWrite::Delete => OpRequest::RequestDeleteRange(delete(key)),
    };
    TxnRequest {
        compare: vec![pb::Compare {
            result: CompareResult::Equal as i32,
            target: target as i32,
            key: key.as_bytes().to_vec(),
            target_union: Some(union),
            ..Default::default()
        }],
        success: vec![RequestOp { request: Some(op) }],
        failure: Vec::new(),
    }
}

/// The range end that covers every key starting with `prefix` (etcd's prefix rule).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}
