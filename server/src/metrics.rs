//! `/metrics`: etcd's Prometheus metrics under etcd's names, in the text exposition format.
//!
//! Counters and histograms are updated where things happen (proposals here; WAL fsync and
//! leader changes in `etcd_raft::metrics`; backend commits in `etcd_mvcc::metrics`; gRPC calls
//! by [`GrpcMetricsLayer`]). Gauges that mirror server state (leader, sizes, indexes, watchers,
//! process) are read when scraped. Everything lives in Prometheus' default registry.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, LazyLock, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::http::{self, Request};
use parking_lot::RwLock;
use prometheus::{
    register_gauge, register_histogram_vec, register_int_counter, register_int_counter_vec, register_int_gauge, register_int_gauge_vec, Encoder,
    Gauge, Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, TextEncoder,
};

use crate::etcd_server::EtcdServer;

macro_rules! int_gauge {
    ($name:ident, $metric:literal, $help:literal) => {
        static $name: LazyLock<IntGauge> =
            LazyLock::new(|| register_int_gauge!($metric, $help).expect("metric registers once"));
    };
}

macro_rules! info_gauge {
    ($name:ident, $metric:literal, $help:literal, $label:literal) => {
        static $name: LazyLock<IntGaugeVec> =
            LazyLock::new(|| register_int_gauge_vec!($metric, $help, &[$label]).expect("metric registers once"));
    };
}

pub static PROPOSALS_FAILED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("etcd_server_proposals_failed_total", "The total number of failed proposals seen.")
        .expect("metric registers once")
});
int_gauge!(PROPOSALS_PENDING, "etcd_server_proposals_pending", "The current number of pending proposals to commit.");
int_gauge!(PROPOSALS_COMMITTED, "etcd_server_proposals_committed_total", "The total number of consensus proposals committed.");
int_gauge!(PROPOSALS_APPLIED, "etcd_server_proposals_applied_total", "The total number of consensus proposals applied.");
int_gauge!(HAS_LEADER, "etcd_server_has_leader", "Whether or not a leader exists. 1 is existence, 0 is not.");
int_gauge!(IS_LEADER, "etcd_server_is_leader", "Whether or not this member is a leader. 1 if is, 0 otherwise.");
int_gauge!(IS_LEARNER, "etcd_server_is_learner", "Whether or not this member is a learner. 1 if is, 0 otherwise.");
int_gauge!(QUOTA_BYTES, "etcd_server_quota_backend_bytes", "Current backend storage quota size in bytes.");
int_gauge!(DB_SIZE, "etcd_mvcc_db_total_size_in_bytes", "Total size of the underlying database physically allocated in bytes.");
int_gauge!(DB_IN_USE, "etcd_mvcc_db_total_size_in_use_in_bytes", "Total size of the underlying database logically in use in bytes.");
int_gauge!(KEYS, "etcd_debugging_mvcc_keys_total", "Total number of keys.");
int_gauge!(WATCHERS, "etcd_debugging_mvcc_watcher_total", "Total number of watchers.");
int_gauge!(SLOW_WATCHERS, "etcd_debugging_mvcc_slow_watcher_total", "Total number of unsynced slow watchers.");
int_gauge!(LEASES, "etcd_debugging_lease_total", "The number of leases.");
info_gauge!(SERVER_ID, "etcd_server_id", "Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID.", "server_id");
info_gauge!(SERVER_VERSION, "etcd_server_version", "Which version is running. 1 for 'server_version' label with current version.", "server_version");
info_gauge!(CLUSTER_VERSION, "etcd_cluster_version", "Which version is running. 1 for 'cluster_version' label with current cluster version", "cluster_version");
int_gauge!(PROCESS_RSS, "process_resident_memory_bytes", "Resident memory size in bytes.");
int_gauge!(PROCESS_VSIZE, "process_virtual_memory_bytes", "Virtual memory size in bytes.");
int_gauge!(PROCESS_OPEN_FDS, "process_open_fds", "Number of open file descriptors.");
int_gauge!(PROCESS_MAX_FDS, "process_max_fds", "Maximum number of open file descriptors.");
static PROCESS_CPU: LazyLock<Gauge> = LazyLock::new(|| {
    register_gauge!("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.")
        .expect("metric registers once")
});
static PROCESS_START: LazyLock<Gauge> = LazyLock::new(|| {
    register_gauge!("process_start_time_seconds", "Start time of the process since unix epoch in seconds.")
        .expect("metric registers once")
});

static GRPC_STARTED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "grpc_server_started_total",
        "Total number of RPCs started on the server.",
        &["grpc_type", "grpc_service", "grpc_method"]
    )
    .expect("metric registers once")
});
static GRPC_HANDLED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "grpc_server_handled_total",
        "Total number of RPCs completed on the server, regardless of success or failure.",
        &["grpc_type", "grpc_service", "grpc_method", "grpc_code"]
    )
    .expect("metric registers once")
});

/// `--metrics extensive`: gRPC handling times too (go-grpc-prometheus' handling-time histogram).
static EXTENSIVE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static GRPC_HANDLING_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "grpc_server_handling_seconds",
        "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.",
        &["grpc_type", "grpc_service", "grpc_method"],
        prometheus::DEFAULT_BUCKETS.to_vec()
    )
    .expect("metric registers once")
});

/// Turns on the extensive metrics (`--metrics extensive`); call once at start.
pub fn enable_extensive() {
    EXTENSIVE.store(true, std::sync::atomic::Ordering::Relaxed);
    LazyLock::force(&GRPC_HANDLING_SECONDS);
}

/// The streaming RPCs of etcd's services (everything else is unary).
fn grpc_type(service: &str, method: &str) -> &'static str {
    match (service, method) {
        ("grpc.health.v1.Health", "Watch") => "server_stream",
        (_, "Watch" | "LeaseKeepAlive") => "bidi_stream",
        (_, "Snapshot" | "Observe") => "server_stream",
        _ => "unary",
    }
}

/// gRPC status code names as go-grpc-prometheus labels them, by code.
const CODE_NAMES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

/// The gRPC counters of one method path, found once per call by the path (no label hashing
/// or allocation per call); a code's `handled` counter is registered at its first use.
struct MethodCounters {
    kind: &'static str,
    service: String,
    method: String,
    started: IntCounter,
    handled: [OnceLock<IntCounter>; 17],
    /// `--metrics extensive` only.
    handling: Option<Histogram>,
}

impl MethodCounters {
    fn new(path: &str) -> MethodCounters {
        // "/etcdserverpb.KV/Range" -> ("etcdserverpb.KV", "Range")
        let path = path.trim_start_matches('/');
        let (service, method) = path.split_once('/').unwrap_or((path, ""));
        let kind = grpc_type(service, method);
        MethodCounters {
            kind,
            started: GRPC_STARTED.with_label_values(&[kind, service, method]),
            handling: EXTENSIVE
                .load(std::sync::atomic::Ordering::Relaxed)
                .then(|| GRPC_HANDLING_SECONDS.with_label_values(&[kind, service, method])),
            service: service.to_string(),
            method: method.to_string(),
            handled: Default::default(),
        }
    }

    fn handled(&self, code: usize) -> &IntCounter {
        const UNKNOWN: usize = 2;
        let code = if code < CODE_NAMES.len() { code } else { UNKNOWN };
        self.handled[code].get_or_init(|| {
            GRPC_HANDLED.with_label_values(&[self.kind, &self.service, &self.method, CODE_NAMES[code]])
        })
    }
}

/// Paths seen so far. Bounded: clients may call any path (answered Unimplemented), and past
/// the bound such calls are counted without being remembered.
static METHODS: LazyLock<RwLock<HashMap<String, Arc<MethodCounters>>>> = LazyLock::new(Default::default);
const MAX_METHODS: usize = 1024;

fn method_counters(path: &str) -> Arc<MethodCounters> {
    if let Some(m) = METHODS.read().get(path) {
        return m.clone();
    }
    let mut methods = METHODS.write();
    if let Some(m) = methods.get(path) {
        return m.clone();
    }
    let m = Arc::new(MethodCounters::new(path));
    if methods.len() < MAX_METHODS {
        methods.insert(path.to_string(), m.clone());
    }
    m
}

/// A tower layer counting gRPC calls by service, method and code (`grpc_server_started_total`,
/// `grpc_server_handled_total`). A call is "handled" when its response starts: an error
/// answered before any message carries its code in the headers; otherwise it is counted OK (a
/// stream that fails later is not re-counted). Other HTTP requests pass through uncounted.
#[derive(Clone, Copy, Default)]
pub struct GrpcMetricsLayer;

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> GrpcMetrics<S> {
        GrpcMetrics { inner }
    }
}

#[derive(Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
}

impl<S, B, RB> tower::Service<Request<B>> for GrpcMetrics<S>
where
    S: tower::Service<Request<B>, Response = http::Response<RB>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = GrpcMetricsFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let is_grpc = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        let counters = is_grpc.then(|| method_counters(req.uri().path()));
        if let Some(c) = &counters {
            c.started.inc();
        }
        let started = counters.as_ref().is_some_and(|c| c.handling.is_some()).then(Instant::now);
        GrpcMetricsFuture { inner: self.inner.call(req), counters, started }
    }
}

pin_project_lite::pin_project! {
    pub struct GrpcMetricsFuture<F> {
        #[pin]
        inner: F,
        counters: Option<Arc<MethodCounters>>,
        started: Option<Instant>,
    }
}

impl<F, RB, E> Future for GrpcMetricsFuture<F>
where
    F: Future<Output = Result<http::Response<RB>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        if let (Some(c), Ok(resp)) = (this.counters.take(), &result) {
            let code = resp
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            c.handled(code).inc();
            // a stream is timed to its response headers (go-grpc-prometheus: to its end)
            if let (Some(h), Some(t)) = (&c.handling, this.started) {
                h.observe(t.elapsed().as_secs_f64());
            }
        }
        Poll::Ready(result)
    }
}

/// The text exposition of every metric, with the state gauges read now.
pub fn render(server: &EtcdServer) -> String {
    let st = server.raft_status();
    HAS_LEADER.set(i64::from(st.leader_id != 0));
    IS_LEADER.set(i64::from(st.leader_id != 0 && st.leader_id == st.id));
    IS_LEARNER.set(i64::from(st.is_learner));
    PROPOSALS_COMMITTED.set(st.commit_index as i64);
    PROPOSALS_APPLIED.set(server.applied_index() as i64);
    PROPOSALS_PENDING.set(server.pending_proposals() as i64);
    let status = server.status();
    QUOTA_BYTES.set(status.db_size_quota);
    DB_SIZE.set(status.db_size);
    DB_IN_USE.set(status.db_size_in_use);
    let (keys, watchers, unsynced, victims, leases) = server.store_counts();
    KEYS.set(keys as i64);
    WATCHERS.set(watchers as i64);
    SLOW_WATCHERS.set((unsynced + victims) as i64);
    LEASES.set(leases as i64);
    SERVER_ID.reset();
    SERVER_ID.with_label_values(&[&format!("{:x}", server.member_id())]).set(1);
    SERVER_VERSION.reset();
    SERVER_VERSION.with_label_values(&[&server.config().etcd_api_version]).set(1);
    CLUSTER_VERSION.reset();
    if let Some(v) = server.members().cluster_version() {
        let major_minor: Vec<&str> = v.split('.').take(2).collect();
        CLUSTER_VERSION.with_label_values(&[&major_minor.join(".")]).set(1);
    }
    read_process_metrics();
    // touch the lazily registered metrics of the other crates so they appear from the start
    LazyLock::force(&etcd_raft::metrics::WAL_FSYNC_SECONDS);
    LazyLock::force(&etcd_raft::metrics::LEADER_CHANGES);
    LazyLock::force(&etcd_mvcc::metrics::BACKEND_COMMIT_SECONDS);
    LazyLock::force(&PROPOSALS_FAILED);
    LazyLock::force(&GRPC_STARTED);
    LazyLock::force(&GRPC_HANDLED);
    crate::health::register_metrics();

    let mut out = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&prometheus::gather(), &mut out) {
        tracing::warn!(error = %e, "cannot encode metrics");
    }
    String::from_utf8(out).unwrap_or_default()
}

/// Linux /proc figures for the standard process_* metrics (left unset elsewhere).
fn read_process_metrics() {
    let page = 4096i64;
    if let Ok(statm) = std::fs::read_to_string("/proc/self/statm") {
        let mut f = statm.split_whitespace().map(|x| x.parse::<i64>().unwrap_or(0));
        let (size, resident) = (f.next().unwrap_or(0), f.next().unwrap_or(0));
        PROCESS_VSIZE.set(size * page);
        PROCESS_RSS.set(resident * page);
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        PROCESS_OPEN_FDS.set(fds.count() as i64);
    }
    if let Ok(limits) = std::fs::read_to_string("/proc/self/limits") {
        let soft = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .and_then(|l| l.split_whitespace().nth(3))
            .and_then(|v| v.parse::<i64>().ok());
        if let Some(n) = soft {
            PROCESS_MAX_FDS.set(n);
        }
    }
    // utime, stime (fields 14, 15) and starttime (22) in clock ticks; assume the usual 100 Hz
    if let (Ok(stat), Ok(uptime)) = (std::fs::read_to_string("/proc/self/stat"), std::fs::read_to_string("/proc/uptime")) {
        let after_comm = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
        let fields: Vec<f64> = after_comm.split_whitespace().map(|x| x.parse().unwrap_or(0.0)).collect();
        let ticks = 100.0;
        if fields.len() > 19 {
            PROCESS_CPU.set((fields[11] + fields[12]) / ticks);
            let up: f64 = uptime.split_whitespace().next().and_then(|x| x.parse().ok()).unwrap_or(0.0);
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
            PROCESS_START.set(now - up + fields[19] / ticks);
        }
    }
}
