//! Watch service: one bidirectional stream carries many watchers. Requests are normalized
//! and handed to the stream's [`etcd_mvcc::WatchStream`]; its queue is turned into responses
//! (header, prev_kv kept only when asked, fragments when asked). Nothing else: ordering,
//! filtering, catch-up and slow consumers are the hub's.
//!
//! Invariant: every response of a stream goes through the hub's one queue for it, so a
//! created, canceled or progress response is never reordered with the events around it.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use etcd_mvcc::{WatchCreate, WatchMessage, WatchStream as HubStream};
use etcd_proto::etcdserverpb::watch_create_request::FilterType;
use etcd_proto::etcdserverpb::watch_request::RequestUnion;
use etcd_proto::etcdserverpb::watch_server::Watch;
use etcd_proto::etcdserverpb::{WatchRequest, WatchResponse};
use etcd_proto::mvccpb::Event;
use futures::{Stream, StreamExt};
use prost::Message;
use tokio::sync::oneshot;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

use crate::errors::ServerError;
use crate::etcd_server::EtcdServer;

/// etcd's floor for `--watch-progress-notify-interval`.
const MIN_PROGRESS_INTERVAL: Duration = Duration::from_millis(100);
/// clientv3's WithRequireLeader metadata key and value.
const REQUIRE_LEADER_KEY: &str = "hasleader";

pub struct WatchService {
    pub server: Arc<EtcdServer>,
    /// Responses larger than this are split when the watcher asked for fragments.
    pub max_response_bytes: usize,
}

pub(super) type ResponseStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = ResponseStream;

    async fn watch(&self, request: Request<Streaming<WatchRequest>>) -> Result<Response<ResponseStream>, Status> {
        let metadata = request.metadata().clone();
        let cert_cn = crate::tls::client_cert_cn(request.extensions());
        Ok(Response::new(self.open(metadata, cert_cn, request.into_inner())?))
    }
}

impl WatchService {
    /// One watch stream fed by `inbound` (a gRPC stream, or the gateway's JSON messages);
    /// `metadata` carries the token and clientv3's require-leader flag; `cert_cn` is the
    /// connection's verified client certificate CN (None for the gateway's streams).
    pub(super) fn open(
        &self,
        metadata: MetadataMap,
        cert_cn: Option<Arc<str>>,
        mut inbound: impl Stream<Item = Result<WatchRequest, Status>> + Send + Unpin + 'static,
    ) -> Result<ResponseStream, Status> {
        // As etcd, a learner serves no streams.
        self.server.refuse_if_learner()?;
        let require_leader = metadata
            .get(REQUIRE_LEADER_KEY)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == "true");
        if require_leader && !self.server.has_leader() {
            return Err(ServerError::NoLeader.into());
        }
        let stream = Arc::new(self.server.watch_hub().open_stream());
        let (err_tx, err_rx) = oneshot::channel::<Status>();
        let (denied_tx, denied_rx) = tokio::sync::mpsc::channel::<WatchResponse>(DENIED_BUFFER);
        let reader = stream.clone();
        let server = self.server.clone();
        tokio::spawn(async move {
            loop {
                reader.control_room().await;
                match inbound.next().await {
                    Some(Ok(req)) => {
                        if let Some(denied) = refused_create(&server, &metadata, cert_cn.as_deref(), &req).await {
                            if denied_tx.send(denied).await.is_err() {
                                break;
                            }
                            continue;
                        }
                        handle_request(&reader, req)
                    }
                    // a client that only half-closes keeps receiving, as with etcd
                    None => break,
                    Some(Err(status)) => {
                        let _ = err_tx.send(status);
                        break;
                    }
                }
            }
        });
        let period = progress_period(self.server.config().watch_progress_notify_interval);
        let start = tokio::time::Instant::now() + period;
        let out = Outbound {
            stream,
            server: self.server.clone(),
            pending: VecDeque::new(),
            progress: tokio::time::interval_at(start, period),
            leader_check: require_leader.then(|| {
                let every = self.server.election_timeout().max(Duration::from_millis(100));
                tokio::time::interval_at(tokio::time::Instant::now() + every, every)
            }),
            err_rx: Some(err_rx),
            denied_rx,
            done: false,
            max_response_bytes: self.max_response_bytes,
        };
        Ok(Box::pin(futures::stream::unfold(out, Outbound::next)))
    }
}

/// The interval with etcd's floor and up to a tenth of jitter, so that watchers created
/// together do not all get their notifications at once.
fn progress_period(configured: Duration) -> Duration {
    let base = if configured < MIN_PROGRESS_INTERVAL {
        tracing::warn!(
            min = ?MIN_PROGRESS_INTERVAL,
            "adjusting watch progress notify interval to minimum period"
        );
        MIN_PROGRESS_INTERVAL
    } else {
        configured
    };
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    let tenth = (base.as_nanos() / 10).max(1) as u64;
    base + Duration::from_nanos(h.finish() % tenth)
}

/// Refused watch creations waiting to be sent, before the reader waits for the client.
const DENIED_BUFFER: usize = 16;

/// etcd's isWatchPermitted: a create the sender may not read is answered at once with a
/// created-and-canceled response (watch ID -1) naming why.
async fn refused_create(server: &EtcdServer, md: &MetadataMap, cert_cn: Option<&str>, req: &WatchRequest) -> Option<WatchResponse> {
    let Some(RequestUnion::CreateRequest(c)) = &req.request_union else { return None };
    let key: &[u8] = if c.key.is_empty() { &[0] } else { &c.key };
    let checked = match server.auth_info_as(md, cert_cn).await {
        Ok(ai) => server.check_range_readable(&ai, key, &c.range_end),
        Err(e) => Err(e),
    };
    let reason = match checked {
        Ok(()) => return None,
        Err(e @ (ServerError::InvalidAuthToken | ServerError::AuthOldRevision | ServerError::UserEmpty)) => e,
        Err(_) => ServerError::PermissionDenied,
    };
    Some(WatchResponse {
        header: Some(server.header(server.kv_revision())),
        watch_id: -1,
        created: true,
        canceled: true,
        cancel_reason: reason.grpc_error_string(),
        ..Default::default()
    })
}

fn handle_request(stream: &HubStream, req: WatchRequest) {
    match req.request_union {
        Some(RequestUnion::CreateRequest(c)) => {
            let key = if c.key.is_empty() { vec![0] } else { c.key };
            stream.watch(WatchCreate {
                watch_id: c.watch_id,
                key,
                range_end: c.range_end,
                start_revision: c.start_revision,
                prev_kv: c.prev_kv,
                no_put: c.filters.contains(&(FilterType::Noput as i32)),
                no_delete: c.filters.contains(&(FilterType::Nodelete as i32)),
                progress_notify: c.progress_notify,
                fragment: c.fragment,
            });
        }
        Some(RequestUnion::CancelRequest(c)) => stream.cancel(c.watch_id),
        Some(RequestUnion::ProgressRequest(_)) => stream.request_progress(),
        None => {}
    }
}

struct Outbound {
    stream: Arc<HubStream>,
    server: Arc<EtcdServer>,
    pending: VecDeque<WatchResponse>,
    progress: tokio::time::Interval,
    leader_check: Option<tokio::time::Interval>,
    err_rx: Option<oneshot::Receiver<Status>>,
    denied_rx: tokio::sync::mpsc::Receiver<WatchResponse>,
    done: bool,
    max_response_bytes: usize,
}

impl Outbound {
    async fn next(mut self) -> Option<(Result<WatchResponse, Status>, Outbound)> {
        loop {
            if let Some(r) = self.pending.pop_front() {
                return Some((Ok(r), self));
            }
            if self.done {
                return None;
            }
            let err_rx = async {
                match self.err_rx.as_mut() {
                    Some(rx) => rx.await.ok(),
                    None => std::future::pending().await,
                }
            };
            let leader_tick = async {
                match self.leader_check.as_mut() {
                    Some(t) => {
                        t.tick().await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                m = self.stream.recv() => match m {
                    Some(m) => {
                        let rs = self.responses(m);
                        self.pending.extend(rs);
                    }
                    None => return None,
                },
                Some(r) = self.denied_rx.recv() => self.pending.push_back(r),
                e = err_rx => match e {
                    Some(status) => {
                        self.done = true;
                        return Some((Err(status), self));
                    }
                    None => self.err_rx = None,
                },
                _ = self.progress.tick() => self.stream.progress_tick(),
                _ = leader_tick => {
                    if !self.server.has_leader() {
                        self.done = true;
                        return Some((Err(ServerError::NoLeader.into()), self));
                    }
                }
            }
        }
    }

    fn responses(&self, m: WatchMessage) -> Vec<WatchResponse> {
        let header = |rev| Some(self.server.header(rev));
        match m {
            WatchMessage::Created { watch_id, revision, cancel_reason } => vec![WatchResponse {
                header: header(revision),
                watch_id,
                created: true,
                canceled: cancel_reason.is_some(),
                cancel_reason: cancel_reason.unwrap_or_default(),
                ..Default::default()
            }],
            WatchMessage::Canceled { watch_id, revision } => vec![WatchResponse {
                header: header(revision),
                watch_id,
                canceled: true,
                ..Default::default()
            }],
            // etcd reports the compaction with revision 0 in the header
            WatchMessage::Compacted { watch_id, compact_revision } => vec![WatchResponse {
                header: header(0),
                watch_id,
                canceled: true,
                compact_revision,
                ..Default::default()
            }],
            WatchMessage::Progress { watch_id, revision } => vec![WatchResponse {
                header: header(revision),
                watch_id,
                ..Default::default()
            }],
            WatchMessage::Events { watch_id, revision, events, prev_kv, fragment } => {
                etcd_mvcc::metrics::EVENTS_TOTAL.inc_by(events.len() as u64);
                let events: Vec<Event> = events
                    .iter()
                    .map(|e| {
                        let mut e = Event::clone(e);
                        if !prev_kv {
                            e.prev_kv = None;
                        }
                        e
                    })
                    .collect();
                let wr = WatchResponse { header: header(revision), watch_id, events, ..Default::default() };
                if fragment {
                    fragments(wr, self.max_response_bytes)
                } else {
                    vec![wr]
                }
            }
        }
    }
}

/// etcd's sendFragments: a response over `max` bytes with more than one event is split into
/// responses of as many events as fit (at least one), all but the last marked `fragment`.
fn fragments(wr: WatchResponse, max: usize) -> Vec<WatchResponse> {
    if wr.encoded_len() < max || wr.events.len() < 2 {
        return vec![wr];
    }
    let mut out = Vec::new();
    let mut template = wr.clone();
    template.events.clear();
    template.fragment = true;
    let mut cur = template.clone();
    for ev in wr.events {
        cur.events.push(ev);
        if cur.events.len() > 1 && cur.encoded_len() >= max {
            let ev = cur.events.pop().expect("just pushed");
            out.push(std::mem::replace(&mut cur, template.clone()));
            cur.events.push(ev);
        }
    }
    cur.fragment = false;
    out.push(cur);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcd_proto::mvccpb::KeyValue;

    fn ev(i: usize, size: usize) -> Event {
        Event {
            kv: Some(KeyValue { key: format!("k{i}").into_bytes(), value: vec![b'x'; size], ..Default::default() }),
            ..Default::default()
        }
    }

    #[test]
    fn fragments_split_large_responses_and_mark_all_but_the_last() {
        let wr = WatchResponse { watch_id: 7, events: (0..10).map(|i| ev(i, 100)).collect(), ..Default::default() };
        let parts = fragments(wr.clone(), 350);
        assert!(parts.len() > 1);
        let all: Vec<Event> = parts.iter().flat_map(|p| p.events.clone()).collect();
        assert_eq!(all, wr.events, "every event once, in order");
        for p in &parts[..parts.len() - 1] {
            assert!(p.fragment && p.watch_id == 7);
            assert!(p.encoded_len() < 350 || p.events.len() == 1);
        }
        assert!(!parts[parts.len() - 1].fragment);
        assert_eq!(fragments(wr.clone(), 1 << 20), vec![wr], "small responses are not split");
        let one = WatchResponse { events: vec![ev(0, 1000)], ..Default::default() };
        assert_eq!(fragments(one.clone(), 10), vec![one], "one event is never split");
    }
}
