//! Background load while the cluster changes: a writer and a whole-keyspace watcher.
//!
//! Invariant: the writer is the only client that writes, every put writes a value never written
//! before, and each put's outcome is recorded as it is known: acknowledged with its revision, or
//! unknown (an error or timeout: it may or may not have been applied). The watcher asks for every
//! revision from 1 and, whenever its stream fails or goes quiet, resumes on the next serving
//! member from the revision after the last one it received, so its record is the cluster's
//! history as one client saw it across member changes.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use etcd_proto::etcdserverpb::kv_client::KvClient;
use etcd_proto::etcdserverpb::watch_client::WatchClient;
use etcd_proto::etcdserverpb::watch_request::RequestUnion;
use etcd_proto::etcdserverpb::{PutRequest, WatchCreateRequest, WatchRequest};
use etcd_proto::mvccpb::event::EventType;
use etcd_robustness::client::{channel, REQUEST_TIMEOUT};
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// Keys the steady writer cycles through.
const WRITER_KEYS: usize = 5;
/// Pause between two steady writes: the history stays small enough to check after every step.
const WRITE_PAUSE: Duration = Duration::from_millis(10);
/// A watch stream silent this long while writes go on is assumed stuck on a paused or dead member.
const WATCH_IDLE: Duration = Duration::from_secs(3);

/// The client URLs clients may use now (the serving voters), updated by the test as members
/// come and go.
#[derive(Clone, Default)]
pub struct Endpoints(Arc<Mutex<Vec<String>>>);

impl Endpoints {
    pub fn set(&self, urls: Vec<String>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = urls;
    }

    /// The `turn`-th endpoint, round robin; None while there is none.
    pub fn pick(&self, turn: usize) -> Option<String> {
        let urls = self.0.lock().unwrap_or_else(|p| p.into_inner());
        (!urls.is_empty()).then(|| urls[turn % urls.len()].clone())
    }
}

/// A put the cluster acknowledged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ack {
    pub key: String,
    pub value: String,
    pub revision: i64,
}

/// Every put the writer made, by outcome.
#[derive(Default)]
pub struct Ledger {
    pub acked: Vec<Ack>,
    /// (key, value) of puts whose outcome is unknown.
    pub unknown: Vec<(String, String)>,
    /// (key, value) of puts sent and not answered yet: the watcher may see them before the answer.
    pub in_flight: HashSet<(String, String)>,
}

/// A put event as the watcher received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub revision: i64,
    pub key: String,
    /// None for a delete (the writer never deletes).
    pub value: Option<String>,
}

/// What the watcher received, in arrival order across all its streams.
#[derive(Default)]
pub struct Watched {
    pub events: Vec<Seen>,
    /// The revision the watcher resumes from.
    pub next_revision: i64,
    /// Streams opened (1 + reconnections).
    pub streams: usize,
    /// Things a watcher must never see here (a cancel, a compaction).
    pub anomalies: Vec<String>,
}

/// The writer and watcher tasks; stopped (aborted) on drop.
pub struct Load {
    pub endpoints: Endpoints,
    pub ledger: Arc<Mutex<Ledger>>,
    pub watched: Arc<Mutex<Watched>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn lock_ledger(load: &Load) -> MutexGuard<'_, Ledger> {
    lock(&load.ledger)
}

pub fn lock_watched(load: &Load) -> MutexGuard<'_, Watched> {
    lock(&load.watched)
}

impl Load {
    /// Starts the writer and the watcher on `endpoints`.
    pub fn start(endpoints: Endpoints) -> Load {
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let watched = Arc::new(Mutex::new(Watched {
            next_revision: 1,
            ..Watched::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let writer = tokio::spawn(write_steadily(
            endpoints.clone(),
            ledger.clone(),
            stop.clone(),
        ));
        let watcher = tokio::spawn(watch_everything(endpoints.clone(), watched.clone()));
        Load {
            endpoints,
            ledger,
            watched,
            stop,
            tasks: vec![writer, watcher],
        }
    }

    /// `count` puts on one key as fast as `concurrency` clients go (to make the raft log grow past
    /// a snapshot); their outcomes go to the same ledger. Returns how many were acknowledged.
    pub async fn burst(&self, count: usize, concurrency: usize) -> usize {
        let mut clients = Vec::new();
        for c in 0..concurrency {
            let endpoints = self.endpoints.clone();
            let ledger = self.ledger.clone();
            let share = count / concurrency + usize::from(c < count % concurrency);
            clients.push(tokio::spawn(async move {
                let mut writer = Putter::new(endpoints, c);
                let mut acked = 0;
                for j in 0..share {
                    let value = format!("b{c}-{j}");
                    if writer.put("mig/burst", &value, &ledger).await {
                        acked += 1;
                    }
                }
                acked
            }));
        }
        let mut acked = 0;
        for c in clients {
            acked += c.await.unwrap_or(0);
        }
        acked
    }

    /// The highest acknowledged revision so far.
    pub fn last_acked_revision(&self) -> i64 {
        lock(&self.ledger)
            .acked
            .iter()
            .map(|a| a.revision)
            .max()
            .unwrap_or(1)
    }

    /// Stops the writer (the watcher keeps watching).
    pub fn stop_writing(&self) {
        self.stop.store(true, Ordering::Release);
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// One writing client: puts on the current endpoint, moves to the next one after a failure.
struct Putter {
    endpoints: Endpoints,
    turn: usize,
    channels: HashMap<String, Channel>,
}

impl Putter {
    fn new(endpoints: Endpoints, first: usize) -> Putter {
        Putter {
            endpoints,
            turn: first,
            channels: HashMap::new(),
        }
    }

    /// One put, recorded in `ledger`; true when acknowledged.
    async fn put(&mut self, key: &str, value: &str, ledger: &Mutex<Ledger>) -> bool {
        let attempt = (key.to_string(), value.to_string());
        lock(ledger).in_flight.insert(attempt.clone());
        let answer = match self.endpoints.pick(self.turn) {
            Some(url) => self.put_on(&url, key, value).await,
            None => Err("no serving member".to_string()),
        };
        match answer {
            Ok(revision) => {
                let mut l = lock(ledger);
                l.in_flight.remove(&attempt);
                l.acked.push(Ack {
                    key: key.to_string(),
                    value: value.to_string(),
                    revision,
                });
                true
            }
            Err(_) => {
                {
                    let mut l = lock(ledger);
                    l.in_flight.remove(&attempt);
                    l.unknown.push(attempt);
                }
                self.turn += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
                false
            }
        }
    }

    async fn put_on(&mut self, url: &str, key: &str, value: &str) -> Result<i64, String> {
        if !self.channels.contains_key(url) {
            let ch = channel(url, Some(REQUEST_TIMEOUT))?;
            self.channels.insert(url.to_string(), ch);
        }
        let ch = self.channels[url].clone();
        let r = KvClient::new(ch)
            .put(PutRequest {
                key: key.as_bytes().to_vec(),
                value: value.as_bytes().to_vec(),
                ..Default::default()
            })
            .await
            .map_err(|e| e.message().to_string())?
            .into_inner();
        r.header
            .map(|h| h.revision)
            .ok_or_else(|| "put answer without a header".to_string())
    }
}

/// The steady writer: puts on `mig/k0..k4` until stopped.
async fn write_steadily(endpoints: Endpoints, ledger: Arc<Mutex<Ledger>>, stop: Arc<AtomicBool>) {
    let mut putter = Putter::new(endpoints, 0);
    let mut n = 0usize;
    while !stop.load(Ordering::Acquire) {
        let key = format!("mig/k{}", n % WRITER_KEYS);
        putter.put(&key, &format!("w{n}"), &ledger).await;
        n += 1;
        tokio::time::sleep(WRITE_PAUSE).await;
    }
}

/// The watcher: one stream at a time on the whole keyspace, resumed elsewhere when it breaks.
async fn watch_everything(endpoints: Endpoints, watched: Arc<Mutex<Watched>>) {
    let mut turn = 0usize;
    loop {
        if let Some(url) = endpoints.pick(turn) {
            lock(&watched).streams += 1;
            watch_once(&url, &watched).await;
        }
        turn += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Watches from the watcher's next revision on `url` until the stream fails or goes quiet.
async fn watch_once(url: &str, watched: &Mutex<Watched>) {
    let Ok(ch) = channel(url, None) else {
        return;
    };
    let start_revision = lock(watched).next_revision;
    let (tx, rx) = tokio::sync::mpsc::channel::<WatchRequest>(1);
    let create = WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: vec![0],
            range_end: vec![0],
            start_revision,
            ..Default::default()
        })),
    };
    if tx.send(create).await.is_err() {
        return;
    }
    let mut client = WatchClient::new(ch);
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    let Ok(Ok(response)) = tokio::time::timeout(WATCH_IDLE, client.watch(stream)).await else {
        return;
    };
    let mut inbound = response.into_inner();
    // `tx` stays alive while the stream is read: etcd ends a watch whose client closed its side.
    loop {
        let resp = match tokio::time::timeout(WATCH_IDLE, inbound.message()).await {
            Ok(Ok(Some(resp))) => resp,
            _ => return,
        };
        let mut w = lock(watched);
        if resp.canceled || resp.compact_revision > 0 {
            w.anomalies.push(format!(
                "watch on {url} from revision {start_revision} canceled (compact revision {}, reason {:?})",
                resp.compact_revision, resp.cancel_reason
            ));
            return;
        }
        for e in &resp.events {
            let Some(kv) = &e.kv else { continue };
            let value = (e.r#type != EventType::Delete as i32)
                .then(|| String::from_utf8_lossy(&kv.value).into_owned());
            w.events.push(Seen {
                revision: kv.mod_revision,
                key: String::from_utf8_lossy(&kv.key).into_owned(),
                value,
            });
            w.next_revision = w.next_revision.max(kv.mod_revision + 1);
        }
    }
}
