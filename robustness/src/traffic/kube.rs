//! A Kubernetes-like mix: pods created, updated and deleted by mod_revision transactions, events
//! created with a lease, paged lists (a continuation page is read at the first page's
//! revision), count-only ranges, short watches with prev_kv from a recent revision, and
//! compaction by a client.
//!
//! Invariant: everything is recorded through `requests::call`, every watch as a `WatchStream`
//! with the revision it asked for; a client compacts only at a revision it saw at least
//! `COMPACT_AGE` ago and the run's all-keys watch has passed (`Recorder::safe_compact_revision`;
//! a compaction ahead of that watch would cancel it). The `CompactWatch` mix is the regression scenario
//! `watch-at-compact-revision` (etcd #18089): put, delete at r, put, compact at r, watch from r:
//! the delete at r must be the first event.

use super::requests::{call, end_of_prefix};
use super::{ClientContext, Traffic};
use crate::history::{Compare, KeyValue, Request, Response, TxnWrite, WatchResponse, WatchStream};
use crate::recorder::event;
use etcd_proto::etcdserverpb::watch_request::RequestUnion;
use etcd_proto::etcdserverpb::{WatchCreateRequest, WatchRequest};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

const PREFIX: &str = "kube/";
const PODS: &str = "kube/pods/";
const EVENTS: &str = "kube/events/";
/// How old a revision must be before a client compacts at it.
const COMPACT_AGE: Duration = Duration::from_secs(10);
/// How long one short watch listens.
const WATCH_WINDOW: Duration = Duration::from_millis(300);
const PAGE: i64 = 2;
const EVENT_TTL: i64 = 5;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mix {
    Random,
    CompactWatch,
}

pub struct KubeTraffic {
    pub name: &'static str,
    pub mix: Mix,
    pub pods: usize,
}

impl Traffic for KubeTraffic {
    fn name(&self) -> &'static str {
        self.name
    }

    fn key_prefix(&self) -> &'static str {
        PREFIX
    }

    fn run(&self, ctx: ClientContext) -> BoxFuture<'static, ()> {
        let client = KubeClient {
            pods: self.pods.max(1),
            seen: HashMap::new(),
            revisions: VecDeque::new(),
            event_lease: None,
            next_lease: 0,
        };
        match self.mix {
            Mix::Random => client.random(ctx).boxed(),
            Mix::CompactWatch => client.compact_watch(ctx).boxed(),
        }
    }
}

struct KubeClient {
    pods: usize,
    /// The mod_revision this client last saw of each pod.
    seen: HashMap<String, i64>,
    /// Header revisions seen, with when, oldest first (for compaction).
    revisions: VecDeque<(Instant, i64)>,
    event_lease: Option<i64>,
    next_lease: i64,
}

fn header_revision(answer: &Response) -> Option<i64> {
    match answer {
        Response::Put { revision }
        | Response::Get { revision, .. }
        | Response::Delete { revision, .. }
        | Response::Txn { revision, .. }
        | Response::Range { revision, .. }
        | Response::Compact { revision }
        | Response::LeaseGrant { revision, .. }
        | Response::LeaseRevoke { revision } => Some(*revision),
        _ => None,
    }
}

impl KubeClient {
    async fn send(&mut self, ctx: &mut ClientContext, request: Request) -> Option<Response> {
        let answer = call(ctx, request).await.ok()?;
        if let Some(revision) = header_revision(&answer) {
            self.revisions.push_back((Instant::now(), revision));
        }
        Some(answer)
    }

    fn learn(&mut self, kvs: &[KeyValue]) {
        for kv in kvs {
            self.seen.insert(kv.key.clone(), kv.mod_revision);
        }
    }

    fn latest_revision(&self) -> i64 {
        self.revisions.back().map_or(1, |r| r.1)
    }

    /// `if mod_revision(key) == expected then write`; remembers the pod's new mod_revision.
    async fn guarded(
        &mut self,
        ctx: &mut ClientContext,
        key: String,
        expected: i64,
        then: TxnWrite,
    ) {
        let deletes = then == TxnWrite::Delete;
        let request = Request::Txn {
            key: key.clone(),
            compare: Compare::ModRevisionEquals(expected),
            then,
        };
        match self.send(ctx, request).await {
            Some(Response::Txn {
                revision,
                succeeded: true,
                ..
            }) if !deletes => {
                self.seen.insert(key, revision);
            }
            Some(Response::Txn { .. }) => {
                self.seen.remove(&key);
            }
            _ => {}
        }
    }

    async fn random(mut self, mut ctx: ClientContext) {
        while ctx.next_turn().await {
            let pod = format!("{PODS}p{}", ctx.rng.usize(0..self.pods));
            let known = self.seen.get(&pod).copied().unwrap_or(0);
            let value = ctx.recorder.unique_value(ctx.id);
            match ctx.rng.u32(0..100) {
                0..20 => self.guarded(&mut ctx, pod, 0, TxnWrite::Put(value)).await,
                20..40 => {
                    self.guarded(&mut ctx, pod, known, TxnWrite::Put(value))
                        .await
                }
                40..48 => self.guarded(&mut ctx, pod, known, TxnWrite::Delete).await,
                48..55 => self.create_event(&mut ctx, value).await,
                55..75 => self.list(&mut ctx).await,
                75..80 => {
                    let count = Request::List {
                        start: PREFIX.into(),
                        end: end_of_prefix(PREFIX),
                        limit: 0,
                        revision: 0,
                        count_only: true,
                    };
                    self.send(&mut ctx, count).await;
                }
                80..88 => {
                    if let Some(Response::Get { kv, .. }) =
                        self.send(&mut ctx, Request::Get { key: pod.clone() }).await
                    {
                        match kv {
                            Some(kv) => self.seen.insert(pod, kv.mod_revision),
                            None => self.seen.remove(&pod),
                        };
                    }
                }
                88..97 => {
                    let back = ctx.rng.i64(0..5);
                    let from = (self.latest_revision() - back).max(1);
                    watch(&mut ctx, PODS, true, from).await;
                }
                _ => self.compact(&mut ctx).await,
            }
        }
    }

    /// An event object with a lease of `EVENT_TTL` seconds, created like a pod; a new lease
    /// when the last one is gone.
    async fn create_event(&mut self, ctx: &mut ClientContext, value: String) {
        let lease = match self.event_lease {
            Some(id) => id,
            None => {
                self.next_lease += 1;
                let id = (i64::from(ctx.id) << 32) | (1 << 31) | self.next_lease;
                let grant = Request::LeaseGrant { id, ttl: EVENT_TTL };
                if !matches!(
                    self.send(ctx, grant).await,
                    Some(Response::LeaseGrant { .. })
                ) {
                    return;
                }
                self.event_lease = Some(id);
                id
            }
        };
        let key = format!("{EVENTS}{value}");
        let request = Request::Txn {
            key,
            compare: Compare::ModRevisionEquals(0),
            then: TxnWrite::PutWithLease(value, lease),
        };
        if let Some(Response::Error(_)) = self.send(ctx, request).await {
            self.event_lease = None;
        }
    }

    /// A paged list of the pods: the first page now, the next ones at its revision.
    async fn list(&mut self, ctx: &mut ClientContext) {
        let mut start = PODS.to_string();
        let mut at = 0;
        for _ in 0..5 {
            let page = Request::List {
                start: start.clone(),
                end: end_of_prefix(PODS),
                limit: PAGE,
                revision: at,
                count_only: false,
            };
            let Some(Response::Range {
                revision,
                kvs,
                count,
            }) = self.send(ctx, page).await
            else {
                return;
            };
            self.learn(&kvs);
            let Some(last) = kvs.last().filter(|_| count > kvs.len() as i64) else {
                return;
            };
            start = format!("{}\0", last.key);
            if at == 0 {
                at = revision;
            }
        }
    }

    /// Compacts at a revision seen at least `COMPACT_AGE` ago, if there is one.
    async fn compact(&mut self, ctx: &mut ClientContext) {
        let mut old = None;
        while let Some(&(when, revision)) = self.revisions.front() {
            if when.elapsed() < COMPACT_AGE {
                break;
            }
            old = Some(revision);
            self.revisions.pop_front();
        }
        let safe = ctx.recorder.safe_compact_revision();
        if let Some(revision) = old.map(|r| r.min(safe)).filter(|r| *r > 1) {
            self.send(ctx, Request::Compact { revision }).await;
        }
    }

    async fn compact_watch(mut self, mut ctx: ClientContext) {
        let mut n = 0;
        while ctx.next_turn().await {
            n += 1;
            let key = format!("{PODS}cw{}-{n}", ctx.id);
            let value = ctx.recorder.unique_value(ctx.id);
            let put = Request::Put {
                key: key.clone(),
                value,
            };
            if self.send(&mut ctx, put.clone()).await.is_none() {
                continue;
            }
            let Some(Response::Delete {
                revision: deleted_at,
                deleted: 1,
            }) = self
                .send(&mut ctx, Request::Delete { key: key.clone() })
                .await
            else {
                continue;
            };
            let again = Request::Put {
                key: key.clone(),
                value: ctx.recorder.unique_value(ctx.id),
            };
            self.send(&mut ctx, again).await;
            // Let the run's all-keys watch pass the delete before compacting at it.
            for _ in 0..20 {
                if ctx.recorder.safe_compact_revision() >= deleted_at {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if ctx.recorder.safe_compact_revision() < deleted_at {
                continue;
            }
            let compact = Request::Compact {
                revision: deleted_at,
            };
            if let Some(Response::Compact { .. }) = self.send(&mut ctx, compact).await {
                tokio::time::sleep(Duration::from_millis(200)).await;
                watch(&mut ctx, &key, false, deleted_at).await;
            }
        }
    }
}

/// Watches `key` (a prefix when `prefix`) with prev_kv from `start` for `WATCH_WINDOW` and
/// records what arrived; a watch that cannot be opened is not recorded.
async fn watch(ctx: &mut ClientContext, key: &str, prefix: bool, start: i64) {
    let Ok(mut client) = ctx.client.watch() else {
        return;
    };
    let range_end = if prefix {
        end_of_prefix(key).into_bytes()
    } else {
        Vec::new()
    };
    let create = WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: key.as_bytes().to_vec(),
            range_end,
            start_revision: start,
            prev_kv: true,
            ..Default::default()
        })),
    };
    let requests = futures::stream::iter([create]).chain(futures::stream::pending());
    let opened = tokio::time::timeout(Duration::from_secs(2), client.watch(requests)).await;
    let Ok(Ok(response)) = opened else {
        return;
    };
    let mut inbound = response.into_inner();
    let mut stream = WatchStream {
        client: ctx.id,
        key: key.to_string(),
        prefix,
        start_revision: start,
        responses: Vec::new(),
        prev_kv: true,
        compact_revision: None,
    };
    let deadline = tokio::time::Instant::now() + WATCH_WINDOW;
    while let Ok(Ok(Some(resp))) = tokio::time::timeout_at(deadline, inbound.message()).await {
        if resp.compact_revision > 0 {
            stream.compact_revision = Some(resp.compact_revision);
            break;
        }
        if resp.canceled {
            break;
        }
        if resp.created && resp.events.is_empty() {
            continue;
        }
        stream.responses.push(WatchResponse {
            time: ctx.recorder.now(),
            header_revision: resp.header.as_ref().map_or(0, |h| h.revision),
            progress_notify: resp.events.is_empty(),
            events: resp.events.iter().filter_map(event).collect(),
        });
    }
    ctx.recorder.push_watch(stream);
}
