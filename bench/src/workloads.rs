//! The subcommands: each builds one `ClientOp` per client, runs them, and prints the report.

use crate::keygen::{self, KeyGen};
use crate::report;
use crate::runner::{self, ClientOp, Outcome, RunResult};
use crate::Global;
use clap::Args;
use etcd_proto::etcdserverpb::{
    compare, kv_client::KvClient, DeleteRangeRequest, lease_client::LeaseClient, request_op, response_op, watch_client::WatchClient,
    watch_request, Compare, LeaseGrantRequest, LeaseKeepAliveRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
    WatchCreateRequest, WatchRequest,
};
use etcd_proto::mvccpb::{event::EventType, Event};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};

pub enum BenchError {
    /// The server answered Unimplemented for a service the workload needs.
    NotSupported(&'static str, Status),
    Setup(String),
}

fn setup_err(what: &'static str, s: Status) -> BenchError {
    if s.code() == Code::Unimplemented {
        BenchError::NotSupported(what, s)
    } else {
        BenchError::Setup(format!("{what}: {:?}: {}", s.code(), s.message()))
    }
}

fn print(g: &Global, workload: &str, r: &RunResult, extra: Map<String, Value>) {
    if g.json {
        println!("{}", report::to_json(workload, r, &extra));
    } else {
        print!("{}", report::to_text(workload, r, &extra, g.precise));
    }
}

fn boxed<T: ClientOp + 'static>(v: Vec<T>) -> Vec<Box<dyn ClientOp>> {
    v.into_iter().map(|o| Box::new(o) as Box<dyn ClientOp>).collect()
}

// ---------------------------------------------------------------- put

#[derive(Args, Debug)]
pub struct PutArgs {
    /// Key size of put request.
    #[arg(long, default_value_t = 8)]
    pub key_size: usize,
    /// Value size of put request.
    #[arg(long, default_value_t = 8)]
    pub val_size: usize,
    /// Maximum possible keys.
    #[arg(long, default_value_t = 1)]
    pub key_space_size: u64,
    /// Use sequential keys.
    #[arg(long)]
    pub sequential_keys: bool,
}

struct PutOp {
    kv: KvClient<Channel>,
    keys: KeyGen,
    value: Vec<u8>,
    rng: fastrand::Rng,
}

impl ClientOp for PutOp {
    fn call(&mut self, i: u64) -> BoxFuture<'_, Result<Outcome, Status>> {
        let key = self.keys.key(self.keys.index(i, &mut self.rng));
        let req = PutRequest { key, value: self.value.clone(), ..Default::default() };
        async move {
            self.kv.put(req).await?;
            Ok(Outcome::ok("put"))
        }
        .boxed()
    }
}

pub async fn put(g: &Global, a: PutArgs) -> Result<(), BenchError> {
    let ops: Vec<PutOp> = (0..g.clients)
        .map(|c| PutOp {
            kv: KvClient::new(g.channel(c)),
            keys: KeyGen::new(a.key_size, a.key_space_size, a.sequential_keys),
            value: keygen::value(a.val_size),
            rng: fastrand::Rng::with_seed(c as u64 + 1),
        })
        .collect();
    let r = runner::run(g.cfg.clone(), boxed(ops)).await;
    print(g, "put", &r, Map::new());
    Ok(())
}

// ---------------------------------------------------------------- range

#[derive(Args, Debug)]
pub struct RangeArgs {
    /// Key to range (or start of the range).
    pub key: String,
    /// End of the range (exclusive); "\0" reads from KEY to the end of the key space.
    pub end: Option<String>,
    /// Linearizable (l) or serializable (s).
    #[arg(long, default_value = "l")]
    pub consistency: String,
    /// Maximum number of results to return (0 is no limit).
    #[arg(long, default_value_t = 0)]
    pub limit: i64,
    /// Return only keys.
    #[arg(long)]
    pub keys_only: bool,
    /// Return only the count.
    #[arg(long)]
    pub count_only: bool,
}

fn serializable(consistency: &str) -> Result<bool, BenchError> {
    match consistency {
        "l" => Ok(false),
        "s" => Ok(true),
        other => Err(BenchError::Setup(format!("consistency must be l or s, not {other:?}"))),
    }
}

fn range_end_arg(end: &Option<String>) -> Vec<u8> {
    match end.as_deref() {
        None => Vec::new(),
        Some("\\0") | Some("\0") => vec![0],
        Some(e) => e.as_bytes().to_vec(),
    }
}

struct RangeOp {
    kv: KvClient<Channel>,
    req: RangeRequest,
}

impl ClientOp for RangeOp {
    fn call(&mut self, _i: u64) -> BoxFuture<'_, Result<Outcome, Status>> {
        let req = self.req.clone();
        async move {
            self.kv.range(req).await?;
            Ok(Outcome::ok("range"))
        }
        .boxed()
    }
}

pub async fn range(g: &Global, a: RangeArgs) -> Result<(), BenchError> {
    let req = RangeRequest {
        key: a.key.as_bytes().to_vec(),
        range_end: range_end_arg(&a.end),
        limit: a.limit,
        serializable: serializable(&a.consistency)?,
        keys_only: a.keys_only,
        count_only: a.count_only,
        ..Default::default()
    };
    let ops: Vec<RangeOp> = (0..g.clients).map(|c| RangeOp { kv: KvClient::new(g.channel(c)), req: req.clone() }).collect();
    let r = runner::run(g.cfg.clone(), boxed(ops)).await;
    print(g, "range", &r, Map::new());
    Ok(())
}

// ---------------------------------------------------------------- txn-put (CAS)

#[derive(Args, Debug)]
pub struct TxnPutArgs {
    /// Key size of txn put.
    #[arg(long, default_value_t = 8)]
    pub key_size: usize,
    /// Value size of txn put.
    #[arg(long, default_value_t = 8)]
    pub val_size: usize,
    /// Maximum possible keys (split between clients: each client updates its own keys, as one
    /// controller owns an object).
    #[arg(long, default_value_t = 1)]
    pub key_space_size: u64,
}

/// A compare-and-swap on `mod_revision`, as Kubernetes' GuaranteedUpdate: compare the cached
/// mod_revision (0 = must not exist), run `then` (a put or a delete of the key) on success, read
/// the current value on failure.
fn cas_txn(key: Vec<u8>, expected_mod: i64, then: request_op::Request) -> TxnRequest {
    TxnRequest {
        compare: vec![Compare {
            result: compare::CompareResult::Equal as i32,
            target: compare::CompareTarget::Mod as i32,
            key: key.clone(),
            target_union: Some(compare::TargetUnion::ModRevision(expected_mod)),
            ..Default::default()
        }],
        success: vec![RequestOp { request: Some(then) }],
        failure: vec![RequestOp {
            request: Some(request_op::Request::RequestRange(RangeRequest { key, ..Default::default() })),
        }],
    }
}

/// Runs a CAS and returns (applied, the key's mod_revision now: 0 when absent; after an applied
/// delete, the delete's revision).
async fn cas(kv: &mut KvClient<Channel>, key: Vec<u8>, expected_mod: i64, then: request_op::Request) -> Result<(bool, i64), Status> {
    let r = kv.txn(cas_txn(key, expected_mod, then)).await?.into_inner();
    if r.succeeded {
        return Ok((true, r.header.map(|h| h.revision).unwrap_or(0)));
    }
    let now = match r.responses.into_iter().next().and_then(|o| o.response) {
        Some(response_op::Response::ResponseRange(rr)) => rr.kvs.first().map(|kv| kv.mod_revision).unwrap_or(0),
        _ => 0,
    };
    Ok((false, now))
}

/// A CAS put of `value` (with `lease`, 0 = none).
async fn cas_put(kv: &mut KvClient<Channel>, key: Vec<u8>, value: Vec<u8>, lease: i64, expected_mod: i64) -> Result<(bool, i64), Status> {
    let put = PutRequest { key: key.clone(), value, lease, ..Default::default() };
    cas(kv, key, expected_mod, request_op::Request::RequestPut(put)).await
}

struct TxnPutOp {
    kv: KvClient<Channel>,
    keys: KeyGen,
    value: Vec<u8>,
    rng: fastrand::Rng,
    client: u64,
    clients: u64,
    cache: HashMap<u64, i64>,
}

impl ClientOp for TxnPutOp {
    fn call(&mut self, _i: u64) -> BoxFuture<'_, Result<Outcome, Status>> {
        let owned = (self.keys.space / self.clients).max(1);
        let idx = (self.rng.u64(0..owned) * self.clients + self.client) % self.keys.space;
        let key = self.keys.key(idx);
        let expected = self.cache.get(&idx).copied().unwrap_or(0);
        let value = self.value.clone();
        async move {
            let (applied, now) = cas_put(&mut self.kv, key, value, 0, expected).await?;
            self.cache.insert(idx, now);
            Ok(Outcome { kind: "txn-put", conflict: !applied })
        }
        .boxed()
    }
}

pub async fn txn_put(g: &Global, a: TxnPutArgs) -> Result<(), BenchError> {
    let ops: Vec<TxnPutOp> = (0..g.clients)
        .map(|c| TxnPutOp {
            kv: KvClient::new(g.channel(c)),
            keys: KeyGen::new(a.key_size, a.key_space_size, false),
            value: keygen::value(a.val_size),
            rng: fastrand::Rng::with_seed(c as u64 + 1),
            client: c as u64,
            clients: g.clients as u64,
            cache: HashMap::new(),
        })
        .collect();
    let r = runner::run(g.cfg.clone(), boxed(ops)).await;
    print(g, "txn-put", &r, Map::new());
    Ok(())
}

// ---------------------------------------------------------------- txn-mixed

#[derive(Args, Debug)]
pub struct TxnMixedArgs {
    /// Key to range (or start of the range).
    pub key: String,
    /// End of the range (exclusive).
    pub end: Option<String>,
    /// Reads per write.
    #[arg(long, default_value_t = 1.0)]
    pub rw_ratio: f64,
    /// Linearizable (l) or serializable (s) reads.
    #[arg(long, default_value = "l")]
    pub consistency: String,
    /// Maximum number of results per range (0 is no limit).
    #[arg(long, default_value_t = 0)]
    pub limit: i64,
    #[arg(long, default_value_t = 8)]
    pub key_size: usize,
    #[arg(long, default_value_t = 8)]
    pub val_size: usize,
    #[arg(long, default_value_t = 1)]
    pub key_space_size: u64,
}

struct TxnMixedOp {
    kv: KvClient<Channel>,
    read: RangeRequest,
    keys: KeyGen,
    value: Vec<u8>,
    read_fraction: f64,
    rng: fastrand::Rng,
}

impl ClientOp for TxnMixedOp {
    fn call(&mut self, i: u64) -> BoxFuture<'_, Result<Outcome, Status>> {
        if self.rng.f64() < self.read_fraction {
            let req = self.read.clone();
            return async move {
                self.kv.range(req).await?;
                Ok(Outcome::ok("range"))
            }
            .boxed();
        }
        let key = self.keys.key(self.keys.index(i, &mut self.rng));
        let put = PutRequest { key, value: self.value.clone(), ..Default::default() };
        let req = TxnRequest { success: vec![RequestOp { request: Some(request_op::Request::RequestPut(put)) }], ..Default::default() };
        async move {
            self.kv.txn(req).await?;
            Ok(Outcome::ok("txn-put"))
        }
        .boxed()
    }
}

pub async fn txn_mixed(g: &Global, a: TxnMixedArgs) -> Result<(), BenchError> {
    let read = RangeRequest {
        key: a.key.as_bytes().to_vec(),
        range_end: range_end_arg(&a.end),
        limit: a.limit,
        serializable: serializable(&a.consistency)?,
        ..Default::default()
    };
    let ratio = a.rw_ratio.max(0.0);
    let ops: Vec<TxnMixedOp> = (0..g.clients)
        .map(|c| TxnMixedOp {
            kv: KvClient::new(g.channel(c)),
            read: read.clone(),
            keys: KeyGen::new(a.key_size, a.key_space_size, false),
            value: keygen::value(a.val_size),
            read_fraction: ratio / (ratio + 1.0),
            rng: fastrand::Rng::with_seed(c as u64 + 1),
        })
        .collect();
    let r = runner::run(g.cfg.clone(), boxed(ops)).await;
    print(g, "txn-mixed", &r, Map::new());
    Ok(())
}

// ---------------------------------------------------------------- watch streams (shared)

/// One open watch stream: the request sender (kept open) and the response stream.
struct WatchStream {
    _tx: mpsc::Sender<WatchRequest>,
    rx: Streaming<etcd_proto::etcdserverpb::WatchResponse>,
}

/// Opens a stream and creates `watchers` watchers on [key, end) from `start_rev` (0 = now),
/// waiting for each creation to be confirmed.
async fn open_watch(ch: Channel, key: &[u8], end: &[u8], start_rev: i64, watchers: usize) -> Result<WatchStream, BenchError> {
    open_watch_keys(ch, (0..watchers).map(|_| key.to_vec()).collect(), end, start_rev, false).await
}

/// Opens a stream with one watcher per key in `keys` (each on [key, end) from `start_rev`),
/// with the previous key-value in each event when `prev_kv` (as Kubernetes' watch cache asks),
/// waiting for each creation to be confirmed.
async fn open_watch_keys(ch: Channel, keys: Vec<Vec<u8>>, end: &[u8], start_rev: i64, prev_kv: bool) -> Result<WatchStream, BenchError> {
    let watchers = keys.len();
    let (tx, rx) = mpsc::channel(watchers.max(1) + 1);
    for key in keys {
        let create = WatchCreateRequest { key, range_end: end.to_vec(), start_revision: start_rev, prev_kv, ..Default::default() };
        let req = WatchRequest { request_union: Some(watch_request::RequestUnion::CreateRequest(create)) };
        tx.send(req).await.map_err(|_| BenchError::Setup("watch request channel closed".into()))?;
    }
    let mut stream = WatchClient::new(ch).watch(ReceiverStream::new(rx)).await.map_err(|s| setup_err("watch", s))?.into_inner();
    let mut created = 0;
    while created < watchers {
        match stream.message().await {
            Ok(Some(r)) if r.created => {
                if r.canceled {
                    return Err(BenchError::Setup(format!("watch create refused: {}", r.cancel_reason)));
                }
                created += 1;
            }
            Ok(Some(_)) => {}
            Ok(None) => return Err(BenchError::Setup("watch stream closed before the watchers were created".into())),
            Err(s) => return Err(setup_err("watch", s)),
        }
    }
    Ok(WatchStream { _tx: tx, rx: stream })
}

// ---------------------------------------------------------------- watch-latency

#[derive(Args, Debug)]
pub struct WatchLatencyArgs {
    /// Total number of watch streams.
    #[arg(long, default_value_t = 10)]
    pub streams: usize,
    /// Watchers per stream (all on the same key).
    #[arg(long, default_value_t = 10)]
    pub watchers_per_stream: usize,
    /// Value size of the puts (at least 20: the value carries the put's sequence number).
    #[arg(long, default_value_t = 32)]
    pub val_size: usize,
    /// How long to wait for the last events after the last put.
    #[arg(long, default_value = "10s", value_parser = crate::parse_duration)]
    pub drain_timeout: Duration,
}

struct StampedPutOp {
    kv: KvClient<Channel>,
    key: Vec<u8>,
    val_size: usize,
    base: Instant,
    sent: Arc<Vec<AtomicU64>>,
}

impl ClientOp for StampedPutOp {
    fn call(&mut self, i: u64) -> BoxFuture<'_, Result<Outcome, Status>> {
        let mut value = format!("{i:020}").into_bytes();
        value.resize(self.val_size.max(20), b'x');
        if let Some(slot) = self.sent.get(i as usize) {
            slot.store(self.base.elapsed().as_nanos() as u64 + 1, Ordering::Relaxed);
        }
        let req = PutRequest { key: self.key.clone(), value, ..Default::default() };
        async move {
            self.kv.put(req).await?;
            Ok(Outcome::ok("put"))
        }
        .boxed()
    }
}

pub async fn watch_latency(g: &Global, a: WatchLatencyArgs) -> Result<(), BenchError> {
    let total = g.cfg.total.ok_or_else(|| BenchError::Setup("watch-latency needs --total (the number of puts)".into()))?;
    let key = b"/etcd-rs-bench/watch-latency".to_vec();
    let base = Instant::now();
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..total).map(|_| AtomicU64::new(0)).collect());
    let expected = total * a.watchers_per_stream as u64;
    let mut receivers = Vec::new();
    let setup = Instant::now();
    let reordered = Arc::new(AtomicU64::new(0));
    for s in 0..a.streams {
        let mut ws = open_watch(g.channel(s), &key, &[], 0, a.watchers_per_stream).await?;
        let (sent, reordered) = (sent.clone(), reordered.clone());
        receivers.push(tokio::spawn(async move {
            let mut h = crate::histogram::Histogram::new();
            // Each watcher must see each put once, in revision order.
            let mut last_rev: HashMap<i64, i64> = HashMap::new();
            while h.count() < expected {
                let Ok(Some(r)) = ws.rx.message().await else { break };
                let now = base.elapsed().as_nanos() as u64;
                let last = last_rev.entry(r.watch_id).or_insert(0);
                for ev in r.events {
                    let Some(kv) = ev.kv else { continue };
                    if kv.mod_revision <= *last {
                        reordered.fetch_add(1, Ordering::Relaxed);
                    }
                    *last = kv.mod_revision;
                    let seq = std::str::from_utf8(&kv.value[..kv.value.len().min(20)]).ok().and_then(|s| s.parse::<usize>().ok());
                    if let Some(t) = seq.and_then(|i| sent.get(i)).map(|a| a.load(Ordering::Relaxed)).filter(|&t| t > 0) {
                        h.record(now.saturating_sub(t - 1));
                    }
                }
            }
            h
        }));
    }
    let setup_s = setup.elapsed().as_secs_f64();
    let ops: Vec<StampedPutOp> = (0..g.clients)
        .map(|c| StampedPutOp { kv: KvClient::new(g.channel(c)), key: key.clone(), val_size: a.val_size, base, sent: sent.clone() })
        .collect();
    let puts = runner::run(g.cfg.clone(), boxed(ops)).await;
    let mut r = RunResult { elapsed: puts.elapsed, errors: puts.errors.clone(), ..Default::default() };
    let deadline = tokio::time::Instant::now() + a.drain_timeout;
    for rx in receivers {
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(h)) => r.latency.merge(&h),
            _ => *r.errors.entry("watch stream did not deliver every event in time".into()).or_default() += 1,
        }
    }
    let want = puts.latency.count() * (a.streams * a.watchers_per_stream) as u64;
    let mut extra = Map::new();
    extra.insert("watchers".into(), json!(a.streams * a.watchers_per_stream));
    extra.insert("watch_setup_s".into(), json!(setup_s));
    extra.insert("puts".into(), json!(puts.latency.count()));
    extra.insert("put_throughput".into(), json!(puts.latency.count() as f64 / puts.elapsed.as_secs_f64().max(1e-9)));
    extra.insert("events_expected".into(), json!(want));
    extra.insert("events_received".into(), json!(r.latency.count()));
    extra.insert("events_out_of_order".into(), json!(reordered.load(Ordering::Relaxed)));
    put_latency(&mut extra, &puts);
    r.by_kind.insert("watch-event", r.latency.clone());
    print(g, "watch-latency", &r, extra);
    Ok(())
}

/// The puts' own latency beside the events' (the event latency includes the put's commit).
fn put_latency(extra: &mut Map<String, Value>, puts: &RunResult) {
    let ms = |q: f64| puts.latency.quantile(q) as f64 / 1e6;
    extra.insert("put_latency_ms".into(), json!({"p50": ms(0.5), "p99": ms(0.99)}));
}

// ---------------------------------------------------------------- watch-hold

#[derive(Args, Debug)]
pub struct WatchHoldArgs {
    /// Total number of watch streams (spread over --conns connections).
    #[arg(long, default_value_t = 100)]
    pub streams: usize,
    /// Idle watchers per stream, each on its own key (no key is written).
    #[arg(long, default_value_t = 100)]
    pub watchers_per_stream: usize,
    /// How long to hold the watchers open after they are created (then exit); stop it earlier
    /// with a signal.
    #[arg(long, default_value = "1h", value_parser = crate::parse_duration)]
    pub hold: Duration,
}

/// Opens `streams * watchers_per_stream` idle watchers on distinct keys, prints one line (JSON
/// with --json) once every creation is confirmed, and keeps them open: a server's memory per
/// watcher is its RSS while they are held minus its RSS before, divided by the count.
pub async fn watch_hold(g: &Global, a: WatchHoldArgs) -> Result<(), BenchError> {
    let t = Instant::now();
    let opens = (0..a.streams).map(|s| {
        let keys = (0..a.watchers_per_stream).map(|w| format!("/etcd-rs-bench/idle/{s:05}/{w:06}").into_bytes()).collect();
        open_watch_keys(g.channel(s), keys, &[], 0, false)
    });
    // Open a few streams at a time: fast, without a burst of thousands of creates at once.
    let held: Vec<WatchStream> = futures::stream::iter(opens).buffer_unordered(8).try_collect().await?;
    let n = a.streams * a.watchers_per_stream;
    let setup_s = t.elapsed().as_secs_f64();
    if g.json {
        println!("{}", json!({"workload": "watch-hold", "watchers": n, "streams": a.streams, "setup_s": setup_s}));
    } else {
        println!("{n} idle watchers on {} streams created in {setup_s:.3} s; holding for {:?}", a.streams, a.hold);
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
    // Drain the streams (nothing should arrive; a closed stream is reported).
    let mut closed = futures::stream::iter(held.into_iter().map(|mut ws| async move {
        loop {
            match ws.rx.message().await {
                Ok(Some(_)) => continue,
                _ => return,
            }
        }
    }))
    .buffer_unordered(usize::MAX);
    match tokio::time::timeout(a.hold, closed.next()).await {
        Err(_) => Ok(()),
        Ok(_) => Err(BenchError::Setup("a held watch stream was closed by the server".into())),
    }
}

// ---------------------------------------------------------------- lease-keepalive

#[derive(Args, Debug)]
pub struct LeaseKeepaliveArgs {
    /// TTL of the lease each client keeps alive.
    #[arg(long, default_value_t = 100)]
    pub ttl: i64,
}

struct KeepAliveOp {
    id: i64,
    tx: mpsc::Sender<LeaseKeepAliveRequest>,
    rx: Streaming<etcd_proto::etcdserverpb::LeaseKeepAliveResponse>,
}

impl ClientOp for KeepAliveOp {
    fn call(&mut self, _i: u64) -> BoxFuture<'_, Result<Outcome, Status>> {
        async move {
            self.tx.send(LeaseKeepAliveRequest { id: self.id }).await.map_err(|_| Status::cancelled("keep-alive stream closed"))?;
            match self.rx.message().await? {
                Some(r) if r.ttl > 0 => Ok(Outcome::ok("keepalive")),
                Some(_) => Err(Status::not_found("lease expired or revoked")),
                None => Err(Status::cancelled("keep-alive stream closed by the server")),
            }
        }
        .boxed()
    }
}

pub async fn lease_keepalive(g: &Global, a: LeaseKeepaliveArgs) -> Result<(), BenchError> {
    let mut ops = Vec::new();
    for c in 0..g.clients {
        let mut lc = LeaseClient::new(g.channel(c));
        let grant = lc.lease_grant(LeaseGrantRequest { ttl: a.ttl, id: 0 }).await.map_err(|s| setup_err("lease", s))?.into_inner();
        if !grant.error.is_empty() {
            return Err(BenchError::Setup(format!("lease grant: {}", grant.error)));
        }
        // A server sends the stream's headers with its first answer, and tonic returns the stream
        // only after the headers: queue one keep-alive before opening it and read its answer.
        let (tx, rx) = mpsc::channel(1);
        tx.send(LeaseKeepAliveRequest { id: grant.id }).await.map_err(|_| BenchError::Setup("keep-alive channel closed".into()))?;
        let mut stream = lc.lease_keep_alive(ReceiverStream::new(rx)).await.map_err(|s| setup_err("lease", s))?.into_inner();
        stream.message().await.map_err(|s| setup_err("lease keep-alive", s))?;
        ops.push(KeepAliveOp { id: grant.id, tx, rx: stream });
    }
    let r = runner::run(g.cfg.clone(), boxed(ops)).await;
    print(g, "lease-keepalive", &r, Map::new());
    Ok(())
}

// ---------------------------------------------------------------- kube

#[derive(Args, Debug)]
pub struct KubeArgs {
    /// Number of namespaces the objects are spread over.
    #[arg(long, default_value_t = 10)]
    pub namespaces: u64,
    /// Maximum number of objects (the key space under /registry/pods/).
    #[arg(long, default_value_t = 10_000)]
    pub objects: u64,
    /// Object (value) size (at least 20: a write's value carries its send time).
    #[arg(long, default_value_t = 1024)]
    pub val_size: usize,
    /// Page size of list requests (Kubernetes' --limit / continue).
    #[arg(long, default_value_t = 500)]
    pub page_size: i64,
    /// Informers: each lists /registry/pods/ in pages, then watches it (with prev_kv) from the
    /// list revision + 1.
    #[arg(long, default_value_t = 2)]
    pub informers: usize,
    /// Percentages of creates, updates, deletes, gets, namespace lists, count-only ranges and
    /// event writes (seven numbers adding up to 100).
    #[arg(long, default_value = "10,45,5,25,4,1,10", value_delimiter = ',')]
    pub mix: Vec<u32>,
    /// TTL of the one lease every event is attached to (kube-apiserver's --event-ttl, one lease
    /// shared by many events as its lease manager does).
    #[arg(long, default_value_t = 3600)]
    pub event_ttl: i64,
}

const KUBE_RESOURCE: &str = "pods";
/// The operations of the mix, in `--mix` order.
const KUBE_KINDS: [&str; 7] = ["create", "update", "delete", "get", "list", "count", "event"];

/// The operation for a roll in 0..100, by the cumulative `--mix` percentages.
fn kube_pick(mix: &[u32], roll: u32) -> &'static str {
    let mut acc = 0;
    for (kind, pct) in KUBE_KINDS.iter().zip(mix) {
        acc += pct;
        if roll < acc {
            return kind;
        }
    }
    "get"
}

/// A Kubernetes paged list: the first page at the current revision, the next pages at that
/// revision from the key after the last one returned. Returns (revision, keys listed).
async fn paged_list(kv: &mut KvClient<Channel>, prefix: &[u8], page: i64) -> Result<(i64, u64), Status> {
    let end = keygen::prefix_end(prefix);
    let mut key = prefix.to_vec();
    let mut rev = 0;
    let mut n = 0;
    loop {
        let req = RangeRequest { key, range_end: end.clone(), limit: page, revision: rev, ..Default::default() };
        let r = kv.range(req).await?.into_inner();
        if rev == 0 {
            rev = r.header.as_ref().map(|h| h.revision).unwrap_or(0);
        }
        n += r.kvs.len() as u64;
        match r.kvs.last() {
            Some(last) if r.more => {
                key = last.key.clone();
                key.push(0);
            }
            _ => return Ok((rev, n)),
        }
    }
}

/// An object value whose first 20 bytes are the time it was built (ns since `base`, plus 1):
/// a watcher that receives it knows its put-to-event latency.
fn stamped_value(base: Instant, size: usize) -> Vec<u8> {
    let mut v = format!("{:020}", base.elapsed().as_nanos() as u64 + 1).into_bytes();
    v.resize(size.max(20), b'x');
    v
}

/// The send time stamped in a value by `stamped_value` (None if it carries none).
fn value_stamp(v: &[u8]) -> Option<u64> {
    std::str::from_utf8(v.get(..20)?).ok()?.parse::<u64>().ok().filter(|&t| t > 0).map(|t| t - 1)
}

struct KubeOp {
    kv: KvClient<Channel>,
    a: Arc<KubeArgs>,
    rng: fastrand::Rng,
    client: u64,
    clients: u64,
    base: Instant,
    lease: i64,
    events_written: u64,
    /// Objects this client created or saw, with their mod_revision.
    cache: HashMap<u64, i64>,
    known: Vec<u64>,
    /// The revision of the last applied write under /registry/pods/ (what the informers watch).
    last_write: Arc<AtomicI64>,
}

impl KubeOp {
    fn key(&self, name: u64) -> Vec<u8> {
        keygen::kube_key(KUBE_RESOURCE, name % self.a.namespaces.max(1), name)
    }

    async fn op(&mut self, kind: &'static str) -> Result<Outcome, Status> {
        let ns = self.rng.u64(0..self.a.namespaces.max(1));
        match kind {
            "get" => {
                let name = self.rng.u64(0..self.a.objects.max(1));
                let key = self.key(name);
                self.kv.range(RangeRequest { key, ..Default::default() }).await?;
                Ok(Outcome::ok("get"))
            }
            "list" => {
                let prefix = format!("/registry/{KUBE_RESOURCE}/ns-{ns:04}/").into_bytes();
                paged_list(&mut self.kv, &prefix, self.a.page_size).await?;
                Ok(Outcome::ok("list"))
            }
            "count" => {
                // kube-apiserver's periodic object count of a resource.
                let prefix = format!("/registry/{KUBE_RESOURCE}/").into_bytes();
                let range_end = keygen::prefix_end(&prefix);
                self.kv.range(RangeRequest { key: prefix, range_end, count_only: true, ..Default::default() }).await?;
                Ok(Outcome::ok("count"))
            }
            "event" => {
                // A new Event object, created (mod_revision 0) with the shared lease attached.
                self.events_written += 1;
                let key = format!("/registry/events/ns-{ns:04}/evt-{:05}-{:08}", self.client, self.events_written).into_bytes();
                let value = stamped_value(self.base, self.a.val_size);
                let (applied, _) = cas_put(&mut self.kv, key, value, self.lease, 0).await?;
                Ok(Outcome { kind: "event", conflict: !applied })
            }
            "delete" if !self.known.is_empty() => {
                let at = self.rng.usize(0..self.known.len());
                let name = self.known[at];
                let expected = self.cache.get(&name).copied().unwrap_or(0);
                let key = self.key(name);
                let del = request_op::Request::RequestDeleteRange(DeleteRangeRequest { key: key.clone(), ..Default::default() });
                let (applied, now) = cas(&mut self.kv, key, expected, del).await?;
                if applied || now == 0 {
                    self.known.swap_remove(at);
                    self.cache.remove(&name);
                } else {
                    self.cache.insert(name, now);
                }
                if applied {
                    self.last_write.fetch_max(now, Ordering::Relaxed);
                }
                Ok(Outcome { kind: "delete", conflict: !applied })
            }
            // Create, or update one of this client's objects (a create when it knows none yet).
            _ => {
                let update = kind != "create" && !self.known.is_empty();
                let name = if update {
                    self.known[self.rng.usize(0..self.known.len())]
                } else {
                    let owned = (self.a.objects / self.clients).max(1);
                    (self.rng.u64(0..owned) * self.clients + self.client) % self.a.objects.max(1)
                };
                let expected = self.cache.get(&name).copied().unwrap_or(0);
                let key = self.key(name);
                let value = stamped_value(self.base, self.a.val_size);
                let (applied, now) = cas_put(&mut self.kv, key, value, 0, expected).await?;
                if !self.cache.contains_key(&name) {
                    self.known.push(name);
                }
                self.cache.insert(name, now);
                if applied {
                    self.last_write.fetch_max(now, Ordering::Relaxed);
                }
                Ok(Outcome { kind: if expected == 0 { "create" } else { "update" }, conflict: !applied })
            }
        }
    }
}

impl ClientOp for KubeOp {
    fn call(&mut self, _i: u64) -> BoxFuture<'_, Result<Outcome, Status>> {
        let kind = kube_pick(&self.a.mix, self.rng.u32(0..100));
        self.op(kind).boxed()
    }
}

/// What one informer's watch saw: the highest mod_revision, event count, put-to-event latency
/// of the stamped puts, and updates or deletes that came without their prev_kv.
#[derive(Default)]
struct InformerSeen {
    last_rev: AtomicI64,
    events: AtomicU64,
    missing_prev_kv: AtomicU64,
    latency: std::sync::Mutex<crate::histogram::Histogram>,
}

/// Whether an event of a prev_kv watch lacks the value it replaced: an update (version > 1) or a
/// delete must carry it, a create has none.
fn lacks_prev_kv(ev: &Event) -> bool {
    let replaced = ev.r#type == EventType::Delete as i32 || ev.kv.as_ref().is_some_and(|kv| kv.version > 1);
    replaced && ev.prev_kv.is_none()
}

fn informer_task(mut ws: WatchStream, seen: Arc<InformerSeen>, base: Instant) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Ok(Some(r)) = ws.rx.message().await {
            let now = base.elapsed().as_nanos() as u64;
            seen.events.fetch_add(r.events.len() as u64, Ordering::Relaxed);
            let mut lat = seen.latency.lock().unwrap_or_else(|e| e.into_inner());
            for ev in &r.events {
                let Some(kv) = ev.kv.as_ref() else { continue };
                seen.last_rev.fetch_max(kv.mod_revision, Ordering::Relaxed);
                let is_delete = ev.r#type == EventType::Delete as i32;
                if lacks_prev_kv(ev) {
                    seen.missing_prev_kv.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(t) = value_stamp(&kv.value).filter(|_| !is_delete) {
                    lat.record(now.saturating_sub(t));
                }
            }
        }
    })
}

pub async fn kube(g: &Global, a: KubeArgs) -> Result<(), BenchError> {
    if a.mix.len() != KUBE_KINDS.len() || a.mix.iter().sum::<u32>() != 100 {
        return Err(BenchError::Setup(format!("--mix needs {} percentages ({}) adding up to 100", KUBE_KINDS.len(), KUBE_KINDS.join(","))));
    }
    let a = Arc::new(a);
    let base = Instant::now();
    let prefix = format!("/registry/{KUBE_RESOURCE}/").into_bytes();
    let mut extra = Map::new();
    // The lease events are attached to.
    let lease = if a.mix[6] > 0 {
        let grant = LeaseClient::new(g.channel(0))
            .lease_grant(LeaseGrantRequest { ttl: a.event_ttl, id: 0 })
            .await
            .map_err(|s| setup_err("kube event lease", s))?
            .into_inner();
        if !grant.error.is_empty() {
            return Err(BenchError::Setup(format!("kube event lease grant: {}", grant.error)));
        }
        grant.id
    } else {
        0
    };
    // Informers: list, then watch with prev_kv from the list revision + 1.
    let mut informers = Vec::new();
    let mut watch_note = None;
    for i in 0..a.informers {
        let mut kv = KvClient::new(g.channel(i));
        let (rev, listed) = paged_list(&mut kv, &prefix, a.page_size).await.map_err(|s| setup_err("kube list", s))?;
        let watch = open_watch_keys(g.channel(i), vec![prefix.clone()], &keygen::prefix_end(&prefix), rev + 1, true).await;
        match watch {
            Ok(ws) => {
                let seen = Arc::new(InformerSeen::default());
                seen.last_rev.store(rev, Ordering::Relaxed);
                informers.push((seen.clone(), informer_task(ws, seen, base), listed));
            }
            Err(BenchError::NotSupported(_, s)) => {
                watch_note = Some(format!("watch not supported by the server yet ({}); informers skipped", s.message()));
                break;
            }
            Err(e) => return Err(e),
        }
    }
    let last_write = Arc::new(AtomicI64::new(0));
    let ops: Vec<KubeOp> = (0..g.clients)
        .map(|c| KubeOp {
            kv: KvClient::new(g.channel(c)),
            a: a.clone(),
            rng: fastrand::Rng::with_seed(c as u64 + 1),
            client: c as u64,
            clients: g.clients as u64,
            base,
            lease,
            events_written: 0,
            cache: HashMap::new(),
            known: Vec::new(),
            last_write: last_write.clone(),
        })
        .collect();
    let r = runner::run(g.cfg.clone(), boxed(ops)).await;
    if let Some(n) = watch_note {
        extra.insert("informers".into(), json!(n));
    } else if !informers.is_empty() {
        // How long after the last write until every informer has seen it.
        let target = last_write.load(Ordering::Relaxed);
        let t = Instant::now();
        let deadline = t + Duration::from_secs(30);
        let behind = || informers.iter().any(|(seen, ..)| seen.last_rev.load(Ordering::Relaxed) < target);
        while behind() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        extra.insert("informers".into(), json!(informers.len()));
        extra.insert("informers_caught_up".into(), json!(!behind()));
        extra.insert("informer_lag_ms".into(), json!(t.elapsed().as_secs_f64() * 1e3));
        extra.insert("informer_listed".into(), json!(informers.iter().map(|i| i.2).sum::<u64>()));
        let sum = |f: fn(&InformerSeen) -> u64| informers.iter().map(|i| f(&i.0)).sum::<u64>();
        extra.insert("informer_events".into(), json!(sum(|s| s.events.load(Ordering::Relaxed))));
        extra.insert("events_missing_prev_kv".into(), json!(sum(|s| s.missing_prev_kv.load(Ordering::Relaxed))));
        let mut lat = crate::histogram::Histogram::new();
        for (seen, task, _) in informers {
            task.abort();
            lat.merge(&seen.latency.lock().unwrap_or_else(|e| e.into_inner()));
        }
        // Put-to-event latency of the informers' watches (creates and updates; a delete event
        // carries no value to stamp), per event and informer.
        extra.insert("watch_latency_ms".into(), report::latency_json(&lat));
    }
    print(g, "kube", &r, extra);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamped_values_carry_their_send_time() {
        let base = Instant::now() - Duration::from_millis(5);
        let v = stamped_value(base, 64);
        assert_eq!(v.len(), 64);
        let t = value_stamp(&v).expect("stamp");
        assert!(t >= 5_000_000 && t <= base.elapsed().as_nanos() as u64, "{t}");
        assert_eq!(value_stamp(&keygen::value(64)), None, "an unstamped value has no send time");
        assert_eq!(value_stamp(b"12"), None, "a short value has no send time");
    }

    #[test]
    fn updates_and_deletes_without_prev_kv_are_flagged_creates_are_not() {
        use etcd_proto::mvccpb::KeyValue;
        let kv = |version| Some(KeyValue { key: b"k".to_vec(), version, ..Default::default() });
        let put = EventType::Put as i32;
        let del = EventType::Delete as i32;
        let ev = |t, kv, prev_kv| Event { r#type: t, kv, prev_kv };
        assert!(!lacks_prev_kv(&ev(put, kv(1), None)), "a create has no previous value");
        assert!(lacks_prev_kv(&ev(put, kv(2), None)), "an update without prev_kv");
        assert!(!lacks_prev_kv(&ev(put, kv(2), kv(1))));
        assert!(lacks_prev_kv(&ev(del, kv(0), None)), "a delete without prev_kv");
        assert!(!lacks_prev_kv(&ev(del, kv(0), kv(3))));
    }

    #[test]
    fn kube_mix_picks_each_kind_by_its_percentage() {
        let mix = [10, 45, 5, 25, 4, 1, 10];
        let mut counts: HashMap<&str, u32> = HashMap::new();
        for roll in 0..100 {
            *counts.entry(kube_pick(&mix, roll)).or_default() += 1;
        }
        for (k, n) in KUBE_KINDS.iter().zip(mix) {
            assert_eq!(counts.get(k).copied().unwrap_or(0), n, "{k}");
        }
    }
}
