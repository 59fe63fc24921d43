//! The history's requests beyond the KV mix on the wire: leases, lists at a revision,
//! compaction, puts with a lease; and [`call`], which records any request.
//!
//! Invariant: an error answer the model predicts (lease not found, lease exists, compacted,
//! future revision) is recorded as `Response::Error` with etcd's message, so the checker sees
//! it as an answer that changed nothing; every other error goes to the recorder's
//! classification (failed or unknown). KV-mix requests are sent by `traffic::kv::send`, so one
//! request has one translation.

use super::kv::{self, prefix_end};
use super::ClientContext;
use crate::client::EtcdClient;
use crate::history::{Request, Response};
use crate::model::{COMPACTED, FUTURE_REVISION, LEASE_EXISTS, LEASE_NOT_FOUND};
use crate::recorder::key_value;
use etcd_proto::etcdserverpb::{
    CompactionRequest, LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest,
    LeaseTimeToLiveRequest, PutRequest, RangeRequest, ResponseHeader,
};
use futures::StreamExt;
use tonic::Status;

/// Sends `request`, records it, and returns the answer (moving to another member on trouble).
pub async fn call(ctx: &mut ClientContext, request: Request) -> Result<Response, Status> {
    let client = ctx.client.clone();
    let sent = request.clone();
    let future = async move { send(&client, &sent).await };
    let result = ctx
        .recorder
        .record(ctx.id, request, future, Clone::clone)
        .await;
    ctx.client.observe(result)
}

/// One request on the wire and its answer on the history's terms.
pub async fn send(client: &EtcdClient, request: &Request) -> Result<Response, Status> {
    let answer = match request {
        Request::PutWithLease { key, value, lease } => {
            let put = PutRequest {
                key: key.as_bytes().to_vec(),
                value: value.as_bytes().to_vec(),
                lease: *lease,
                ..Default::default()
            };
            let r = client.kv().put(put).await.map(|r| r.into_inner());
            r.map(|r| Response::Put {
                revision: revision(r.header),
            })
        }
        Request::List {
            start,
            end,
            limit,
            revision: at,
            count_only,
        } => {
            let range = RangeRequest {
                key: key_or_lowest(start),
                range_end: key_or_lowest(end),
                limit: *limit,
                revision: *at,
                count_only: *count_only,
                ..Default::default()
            };
            let r = client.kv().range(range).await.map(|r| r.into_inner());
            r.map(|r| Response::Range {
                revision: revision(r.header),
                kvs: r.kvs.iter().map(key_value).collect(),
                count: r.count,
            })
        }
        Request::Compact { revision: at } => {
            let compact = CompactionRequest {
                revision: *at,
                physical: false,
            };
            let r = client.kv().compact(compact).await.map(|r| r.into_inner());
            r.map(|r| Response::Compact {
                revision: revision(r.header),
            })
        }
        Request::LeaseGrant { id, ttl } => {
            let grant = LeaseGrantRequest { ttl: *ttl, id: *id };
            let r = client
                .lease()
                .lease_grant(grant)
                .await
                .map(|r| r.into_inner());
            r.map(|r| Response::LeaseGrant {
                revision: revision(r.header),
                id: r.id,
                ttl: r.ttl,
            })
        }
        Request::LeaseRevoke { id } => {
            let r = client
                .lease()
                .lease_revoke(LeaseRevokeRequest { id: *id })
                .await;
            r.map(|r| Response::LeaseRevoke {
                revision: revision(r.into_inner().header),
            })
        }
        Request::LeaseKeepAlive { id } => keep_alive_once(client, *id).await,
        Request::LeaseTimeToLive { id } => {
            let ask = LeaseTimeToLiveRequest {
                id: *id,
                keys: false,
            };
            let r = client.lease().lease_time_to_live(ask).await;
            r.map(|r| {
                let r = r.into_inner();
                Response::LeaseTimeToLive {
                    ttl: r.ttl,
                    raft_term: r.header.map_or(0, |h| h.raft_term),
                }
            })
        }
        // Made by the checker, never sent: nothing to do on the wire.
        Request::LeaseExpiry { .. } => {
            Err(Status::invalid_argument("lease expiry is not a request"))
        }
        Request::Put { .. }
        | Request::Get { .. }
        | Request::Delete { .. }
        | Request::Txn { .. }
        | Request::Range { .. } => kv::send(client.kv(), request).await,
    };
    answer.or_else(|status| match modelled_error(&status) {
        Some(message) => Ok(Response::Error(message.to_string())),
        None => Err(status),
    })
}

/// `text` as a key; "" as "\0", which etcd reads as the lowest key (as a start: it refuses an
/// empty key) and as "no end" (as a range end).
pub fn key_or_lowest(text: &str) -> Vec<u8> {
    if text.is_empty() {
        vec![0]
    } else {
        text.as_bytes().to_vec()
    }
}

fn revision(header: Option<ResponseHeader>) -> i64 {
    header.map_or(0, |h| h.revision)
}

/// The model's name for an error answer, if the model predicts it.
fn modelled_error(status: &Status) -> Option<&'static str> {
    [LEASE_NOT_FOUND, LEASE_EXISTS, COMPACTED, FUTURE_REVISION]
        .into_iter()
        .find(|m| status.message() == *m)
}

/// One keep-alive on its own stream: a TTL of 0 or less is etcd's "lease not found".
async fn keep_alive_once(client: &EtcdClient, id: i64) -> Result<Response, Status> {
    // The request stream stays open until the answer came (dropped with `answers`).
    let request =
        futures::stream::iter([LeaseKeepAliveRequest { id }]).chain(futures::stream::pending());
    let mut answers = client.lease().lease_keep_alive(request).await?.into_inner();
    match answers.next().await {
        Some(Ok(r)) if r.ttl > 0 => Ok(Response::LeaseKeepAlive { ttl: r.ttl }),
        Some(Ok(_)) => Ok(Response::Error(LEASE_NOT_FOUND.to_string())),
        Some(Err(status)) => Err(status),
        None => Err(Status::unavailable(
            "keep-alive stream closed without an answer",
        )),
    }
}

/// The exclusive end of the keys under `prefix`, as text (prefixes here are ASCII).
pub fn end_of_prefix(prefix: &str) -> String {
    String::from_utf8_lossy(&prefix_end(prefix.as_bytes())).into_owned()
}
