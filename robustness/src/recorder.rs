//! Records what every client asked and was told, on one clock, into a [`History`].
//!
//! Invariant (the contract in the crate docs): `call` is read right before a request is sent and
//! `ret` right after its answer or error arrived, both from the one `Instant` of the recorder; an
//! error is `Outcome::Failed` only when its code proves the request was not applied
//! ([`outcome_of_error`]), every other error is `Outcome::Unknown`. Every put value is unique
//! ([`Recorder::unique_value`]).

use crate::client::{channel, EtcdClient};
use crate::history::{
    ClientId, Event, EventKind, FinalRead, History, KeyValue, Nanos, Operation, Outcome, Request,
    Response, ValueAt, WatchResponse, WatchStream,
};
use etcd_proto::etcdserverpb::watch_client::WatchClient;
use etcd_proto::etcdserverpb::watch_request::RequestUnion;
use etcd_proto::etcdserverpb::{RangeRequest, WatchCreateRequest, WatchRequest};
use etcd_proto::mvccpb;
use std::future::Future;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::{Code, Status};

/// The shared recorder of one run.
pub struct Recorder {
    start: Instant,
    next_value: AtomicU64,
    /// The revision the run's watch resumes from if its stream breaks now.
    watch_next_revision: AtomicI64,
    operations: Mutex<Vec<Operation>>,
    watches: Mutex<Vec<WatchStream>>,
    /// How often each error was seen, with the outcome it was recorded as (for the run report).
    errors: Mutex<std::collections::BTreeMap<String, u64>>,
}

/// Whether an error proves the request was not applied. Transport errors, timeouts and
/// "unavailable" answers (no leader, leader changed, request timed out, server stopped) do not:
/// the request may have been proposed before the error. A refused connection does: the request
/// never left the client.
pub fn outcome_of_error(status: &Status) -> Outcome {
    match status.code() {
        Code::InvalidArgument
        | Code::FailedPrecondition
        | Code::OutOfRange
        | Code::NotFound
        | Code::AlreadyExists
        | Code::PermissionDenied
        | Code::Unauthenticated
        | Code::ResourceExhausted
        | Code::Unimplemented => Outcome::Failed,
        Code::Unavailable if refused(status) => Outcome::Failed,
        // A learner refuses client requests before looking at them.
        Code::Unavailable if status.message() == "etcdserver: rpc not supported for learner" => {
            Outcome::Failed
        }
        _ => Outcome::Unknown,
    }
}

/// A connection the client could not open: the request was never sent.
fn refused(status: &Status) -> bool {
    let text = format!(
        "{} {:?}",
        status.message(),
        std::error::Error::source(status)
    );
    text.contains("Connection refused") || text.contains("tcp connect error")
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            start: Instant::now(),
            next_value: AtomicU64::new(1),
            watch_next_revision: AtomicI64::new(1),
            operations: Mutex::new(Vec::new()),
            watches: Mutex::new(Vec::new()),
            errors: Mutex::default(),
        }
    }
}

impl Recorder {
    pub fn new() -> Arc<Recorder> {
        Arc::new(Recorder::default())
    }

    /// Nanoseconds since the recorder started, on the clock every operation uses.
    pub fn now(&self) -> Nanos {
        self.start.elapsed().as_nanos() as Nanos
    }

    /// A value no other put of this run writes.
    pub fn unique_value(&self, client: ClientId) -> String {
        let n = self.next_value.fetch_add(1, Ordering::Relaxed);
        format!("c{client}-v{n}")
    }

    /// Appends an operation that was timed elsewhere.
    pub fn push(&self, op: Operation) {
        lock(&self.operations).push(op);
    }

    /// Times `call`, records it as `request` with the answer `answer` makes of its result, and
    /// hands the result back to the caller (to choose its next request).
    pub async fn record<T, F>(
        &self,
        client: ClientId,
        request: Request,
        call: F,
        answer: impl FnOnce(&T) -> Response,
    ) -> Result<T, Status>
    where
        F: Future<Output = Result<T, Status>>,
    {
        let start = self.now();
        let result = call.await;
        let ret = self.now();
        let outcome = match &result {
            Ok(t) => Outcome::Ok(answer(t)),
            Err(status) => {
                let outcome = outcome_of_error(status);
                let seen = format!("{:?} {:?}: {}", outcome, status.code(), status.message());
                *lock(&self.errors).entry(seen).or_default() += 1;
                outcome
            }
        };
        self.push(Operation {
            client,
            call: start,
            ret,
            request,
            outcome,
        });
        result
    }

    /// The highest revision a compaction may use without breaking the run's watch (which
    /// resumes from the revision after the last one it received).
    pub fn safe_compact_revision(&self) -> i64 {
        self.watch_next_revision.load(Ordering::Acquire) - 1
    }

    /// Every distinct error with its count, as "Outcome Code: message".
    pub fn errors(&self) -> Vec<(String, u64)> {
        lock(&self.errors)
            .iter()
            .map(|(e, n)| (e.clone(), *n))
            .collect()
    }

    pub fn push_watch(&self, stream: WatchStream) {
        lock(&self.watches).push(stream);
    }

    /// How many operations were recorded so far.
    pub fn operation_count(&self) -> usize {
        lock(&self.operations).len()
    }

    /// The history recorded so far, with `final_read`; `initial_revision`: the store revision
    /// before the first operation.
    pub fn history(&self, final_read: Option<FinalRead>, initial_revision: i64) -> History {
        History {
            operations: lock(&self.operations).clone(),
            watches: lock(&self.watches).clone(),
            final_read,
            initial_revision,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Keys and values as the history holds them (the traffic writes only UTF-8).
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub fn key_value(kv: &mvccpb::KeyValue) -> KeyValue {
    KeyValue {
        key: text(&kv.key),
        value: text(&kv.value),
        mod_revision: kv.mod_revision,
    }
}

/// The key and range end covering every key (etcd refuses an empty key: "key is not provided").
pub const ALL_KEYS: &[u8] = &[0];

/// A linearizable read of every key, tried on each endpoint in turn until one answers.
pub async fn final_read(client: &mut EtcdClient, attempts: usize) -> Result<FinalRead, String> {
    let mut last = String::new();
    for _ in 0..attempts {
        let request = RangeRequest {
            key: ALL_KEYS.to_vec(),
            range_end: ALL_KEYS.to_vec(),
            ..Default::default()
        };
        match client.observe(client.kv().range(request).await) {
            Ok(resp) => {
                let resp = resp.into_inner();
                return Ok(FinalRead {
                    revision: resp.header.map_or(0, |h| h.revision),
                    kvs: resp.kvs.iter().map(key_value).collect(),
                });
            }
            Err(status) => last = format!("{}: {}", client.endpoint(), status.message()),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!("final read failed: {last}"))
}

/// The one watch of a run: all keys from revision 1 until `stop`, re-created from the last
/// received revision + 1 (as a new [`WatchStream`]) whenever its stream breaks, on the next
/// endpoint. Stops after `stop` once it has seen `until_revision()` (or the stream ends).
pub async fn watch_all(
    recorder: Arc<Recorder>,
    client_id: ClientId,
    endpoints: Arc<Vec<String>>,
    mut stop: tokio::sync::watch::Receiver<Option<i64>>,
) {
    let mut next_revision = 1i64;
    let mut endpoint = 0usize;
    loop {
        let url = endpoints[endpoint % endpoints.len()].clone();
        endpoint += 1;
        let mut stream = WatchStream {
            client: client_id,
            key: String::new(),
            prefix: true,
            start_revision: next_revision,
            responses: Vec::new(),
            prev_kv: false,
            compact_revision: None,
        };
        let done = watch_once(&recorder, &url, &mut stream, &mut next_revision, &mut stop).await;
        if !stream.responses.is_empty() || done {
            recorder.push_watch(stream);
        }
        if done {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One watch stream; true when the run is over (stop asked and the final revision reached).
async fn watch_once(
    recorder: &Recorder,
    url: &str,
    stream: &mut WatchStream,
    next_revision: &mut i64,
    stop: &mut tokio::sync::watch::Receiver<Option<i64>>,
) -> bool {
    let reached = |next: i64, stop: &tokio::sync::watch::Receiver<Option<i64>>| matches!(*stop.borrow(), Some(end) if next > end);
    if reached(*next_revision, stop) {
        return true;
    }
    let Ok(ch) = channel(url, None) else {
        return false;
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<WatchRequest>(1);
    let create = WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: ALL_KEYS.to_vec(),
            range_end: ALL_KEYS.to_vec(),
            start_revision: *next_revision,
            progress_notify: true,
            ..Default::default()
        })),
    };
    if tx.send(create).await.is_err() {
        return false;
    }
    let mut watch = WatchClient::new(ch);
    let open = tokio::time::timeout(Duration::from_secs(3), watch.watch(tokio_stream_of(rx)));
    let Ok(Ok(response)) = open.await else {
        return false;
    };
    let mut inbound = response.into_inner();
    loop {
        let message = tokio::select! {
            m = tokio::time::timeout(Duration::from_secs(5), inbound.message()) => m,
            _ = stop.changed() => {
                if reached(*next_revision, stop) { return true; }
                continue;
            }
        };
        let resp = match message {
            Ok(Ok(Some(resp))) => resp,
            // A quiet stream (no progress notification either) may hang on a dead member.
            Err(_) if reached(*next_revision, stop) => return true,
            _ => return false,
        };
        if resp.canceled || resp.compact_revision > 0 {
            return false;
        }
        if resp.created && resp.events.is_empty() {
            continue;
        }
        let header_revision = resp.header.as_ref().map_or(0, |h| h.revision);
        let events: Vec<Event> = resp.events.iter().filter_map(event).collect();
        if let Some(last) = events.last() {
            *next_revision = last.mod_revision + 1;
        } else {
            *next_revision = (*next_revision).max(header_revision + 1);
        }
        recorder
            .watch_next_revision
            .store(*next_revision, Ordering::Release);
        stream.responses.push(WatchResponse {
            time: recorder.now(),
            header_revision,
            progress_notify: resp.events.is_empty(),
            events,
        });
        if reached(*next_revision, stop) {
            return true;
        }
    }
}

/// A watch event on the history's terms (`prev` is the prev_kv the server sent, if any).
pub fn event(e: &mvccpb::Event) -> Option<Event> {
    let kv = e.kv.as_ref()?;
    let kind = if e.r#type == mvccpb::event::EventType::Delete as i32 {
        EventKind::Delete
    } else {
        EventKind::Put {
            value: text(&kv.value),
        }
    };
    Some(Event {
        key: text(&kv.key),
        mod_revision: kv.mod_revision,
        kind,
        prev: e.prev_kv.as_ref().map(|p| ValueAt {
            value: text(&p.value),
            mod_revision: p.mod_revision,
        }),
    })
}

/// The request stream of a bidirectional call: whatever is sent on the channel.
fn tokio_stream_of<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
