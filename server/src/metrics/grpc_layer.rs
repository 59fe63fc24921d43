//! Counting gRPC calls as go-grpc-prometheus does (`grpc_server_*`), plus etcd's own
//! `etcd_network_client_grpc_*_bytes_total` and `etcd_server_client_requests_total`.
//!
//! A call's request and response bodies are wrapped: their gRPC frames (1 flag byte, 4 length
//! bytes, the message) are counted as messages and message bytes as they pass, without
//! buffering. A call is "handled" once, with the code of its end: the grpc-status of a
//! trailers-only response, else the one in the trailers at the end of the body; a response
//! dropped before its end (the client went away) counts as Canceled. So a watch stream is
//! handled when it ends, not when it starts, and started - handled is the number open.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::http::{self, HeaderMap, Request};
use http_body::{Body, Frame, SizeHint};
use parking_lot::RwLock;
use prometheus::{
    register_histogram_vec, register_int_counter, register_int_counter_vec, Histogram, HistogramVec, IntCounter,
    IntCounterVec,
};
use tonic::codegen::Bytes;

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
static GRPC_MSG_RECEIVED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "grpc_server_msg_received_total",
        "Total number of RPC stream messages received on the server.",
        &["grpc_type", "grpc_service", "grpc_method"]
    )
    .expect("metric registers once")
});
static GRPC_MSG_SENT: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "grpc_server_msg_sent_total",
        "Total number of gRPC stream messages sent by the server.",
        &["grpc_type", "grpc_service", "grpc_method"]
    )
    .expect("metric registers once")
});
static CLIENT_SENT_BYTES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("etcd_network_client_grpc_sent_bytes_total", "The total number of bytes sent to grpc clients.")
        .expect("metric registers once")
});
static CLIENT_RECEIVED_BYTES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "etcd_network_client_grpc_received_bytes_total",
        "The total number of bytes received from grpc clients."
    )
    .expect("metric registers once")
});
static CLIENT_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "etcd_server_client_requests_total",
        "The total number of client requests per client version.",
        &["type", "client_api_version"]
    )
    .expect("metric registers once")
});

/// `--metrics extensive`: gRPC handling times too (go-grpc-prometheus' handling-time histogram).
static EXTENSIVE: AtomicBool = AtomicBool::new(false);
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
    EXTENSIVE.store(true, Ordering::Relaxed);
    LazyLock::force(&GRPC_HANDLING_SECONDS);
}

/// The methods etcd registers with go-grpc-prometheus, whose series exist (at 0) from the
/// start: etcd's v3 services and the health service (not v3lock / v3election).
const ETCD_METHODS: &[(&str, &[&str])] = &[
    ("etcdserverpb.KV", &["Range", "Put", "DeleteRange", "Txn", "Compact"]),
    ("etcdserverpb.Watch", &["Watch"]),
    ("etcdserverpb.Lease", &["LeaseGrant", "LeaseRevoke", "LeaseKeepAlive", "LeaseTimeToLive", "LeaseLeases"]),
    ("etcdserverpb.Cluster", &["MemberAdd", "MemberRemove", "MemberUpdate", "MemberList", "MemberPromote"]),
    (
        "etcdserverpb.Maintenance",
        &["Alarm", "Status", "Defragment", "Hash", "HashKV", "Snapshot", "MoveLeader", "Downgrade"],
    ),
    (
        "etcdserverpb.Auth",
        &[
            "AuthEnable", "AuthDisable", "AuthStatus", "Authenticate", "UserAdd", "UserGet", "UserList", "UserDelete",
            "UserChangePassword", "UserGrantRole", "UserRevokeRole", "RoleAdd", "RoleGet", "RoleList", "RoleDelete",
            "RoleGrantPermission", "RoleRevokePermission",
        ],
    ),
    ("grpc.health.v1.Health", &["Check", "Watch"]),
];

/// The streaming RPCs of etcd's services (everything else is unary).
fn grpc_type(service: &str, method: &str) -> &'static str {
    match (service, method) {
        ("grpc.health.v1.Health", "Watch") => "server_stream",
        (_, "Watch" | "LeaseKeepAlive") => "bidi_stream",
        (_, "Snapshot" | "Observe" | "RangeStream") => "server_stream",
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
const CANCELED: usize = 1;
const UNKNOWN: usize = 2;

/// The counters of one method path, found once per call by the path (no label hashing or
/// allocation per call); a code's `handled` counter is registered at its first use.
struct MethodCounters {
    kind: &'static str,
    service: String,
    method: String,
    started: IntCounter,
    msg_received: IntCounter,
    msg_sent: IntCounter,
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
        let labels = [kind, service, method];
        MethodCounters {
            kind,
            started: GRPC_STARTED.with_label_values(&labels),
            msg_received: GRPC_MSG_RECEIVED.with_label_values(&labels),
            msg_sent: GRPC_MSG_SENT.with_label_values(&labels),
            handling: EXTENSIVE.load(Ordering::Relaxed).then(|| GRPC_HANDLING_SECONDS.with_label_values(&labels)),
            service: service.to_string(),
            method: method.to_string(),
            handled: Default::default(),
        }
    }

    fn handled(&self, code: usize) -> &IntCounter {
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

/// Registers the gRPC metrics with every series of etcd's methods at 0, as go-grpc-prometheus
/// does for the services registered with it.
pub(super) fn register() {
    LazyLock::force(&CLIENT_SENT_BYTES);
    LazyLock::force(&CLIENT_RECEIVED_BYTES);
    LazyLock::force(&CLIENT_REQUESTS);
    for (service, methods) in ETCD_METHODS {
        for method in *methods {
            let m = method_counters(&format!("/{service}/{method}"));
            for code in 0..CODE_NAMES.len() {
                m.handled(code);
            }
        }
    }
}

/// `etcd_server_client_requests_total` by the client's `client-api-version` header. Versions
/// seen are remembered (a few per cluster); past [`MAX_VERSIONS`] others count as "unknown".
/// A client version and its counters: [unary, stream].
type VersionCounters = (Vec<u8>, [IntCounter; 2]);
static CLIENT_VERSIONS: LazyLock<RwLock<Vec<VersionCounters>>> = LazyLock::new(Default::default);
const MAX_VERSIONS: usize = 32;

fn count_client_request(headers: &HeaderMap, unary: bool) {
    let version = headers.get("client-api-version").map(|v| v.as_bytes()).unwrap_or(b"unknown");
    let slot = usize::from(!unary);
    if let Some((_, c)) = CLIENT_VERSIONS.read().iter().find(|(v, _)| v == version) {
        c[slot].inc();
        return;
    }
    let mut versions = CLIENT_VERSIONS.write();
    let version: &[u8] = if versions.len() < MAX_VERSIONS { version } else { b"unknown" };
    if let Some((_, c)) = versions.iter().find(|(v, _)| v == version) {
        c[slot].inc();
        return;
    }
    let label = String::from_utf8_lossy(version).into_owned();
    let counters = [CLIENT_REQUESTS.with_label_values(&["unary", &label]), CLIENT_REQUESTS.with_label_values(&["stream", &label])];
    counters[slot].inc();
    versions.push((version.to_vec(), counters));
}

/// One call in progress.
struct Call {
    counters: Arc<MethodCounters>,
    started: Option<Instant>,
    finished: AtomicBool,
}

impl Call {
    /// Counts the call handled with `code`, once.
    fn finish(&self, code: usize) {
        if self.finished.swap(true, Ordering::AcqRel) {
            return;
        }
        self.counters.handled(code).inc();
        if let (Some(h), Some(t)) = (&self.counters.handling, self.started) {
            h.observe(t.elapsed().as_secs_f64());
        }
    }
}

fn grpc_status(headers: &HeaderMap) -> Option<usize> {
    headers.get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok())
}

/// Splits a body's bytes into gRPC messages: counts each message and its length when its
/// 5-byte prefix has passed.
#[derive(Default)]
struct FrameCounter {
    prefix: [u8; 5],
    have: usize,
    remaining: u64,
}

impl FrameCounter {
    /// (messages begun, their payload bytes) in `data`.
    fn feed(&mut self, mut data: &[u8]) -> (u64, u64) {
        let (mut msgs, mut bytes) = (0, 0);
        while !data.is_empty() {
            if self.remaining > 0 {
                let n = data.len().min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
                self.remaining -= n as u64;
                data = &data[n..];
                continue;
            }
            let n = (5 - self.have).min(data.len());
            self.prefix[self.have..self.have + n].copy_from_slice(&data[..n]);
            self.have += n;
            data = &data[n..];
            if self.have == 5 {
                let len = u64::from(u32::from_be_bytes([self.prefix[1], self.prefix[2], self.prefix[3], self.prefix[4]]));
                msgs += 1;
                bytes += len;
                self.remaining = len;
                self.have = 0;
            }
        }
        (msgs, bytes)
    }
}

#[derive(Clone, Copy)]
enum Direction {
    Received,
    Sent,
}

pin_project_lite::pin_project! {
    /// A gRPC body whose messages are counted as they pass.
    pub struct CountedBody<B> {
        #[pin]
        inner: B,
        call: Option<Arc<Call>>,
        frames: FrameCounter,
        direction: Direction,
    }

    impl<B> PinnedDrop for CountedBody<B> {
        fn drop(this: Pin<&mut Self>) {
            // a response that did not reach its end: the client cancelled the call
            if let (Some(call), Direction::Sent) = (&this.call, this.direction) {
                call.finish(CANCELED);
            }
        }
    }
}

impl<B> CountedBody<B> {
    fn new(inner: B, call: Option<Arc<Call>>, direction: Direction) -> CountedBody<B> {
        CountedBody { inner, call, frames: FrameCounter::default(), direction }
    }
}

impl<B: Body<Data = Bytes>> Body for CountedBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let polled = std::task::ready!(this.inner.poll_frame(cx));
        if let Some(call) = this.call.as_ref() {
            match (&polled, *this.direction) {
                (Some(Ok(frame)), direction) => {
                    if let Some(data) = frame.data_ref() {
                        let (msgs, bytes) = this.frames.feed(data);
                        if msgs > 0 {
                            match direction {
                                Direction::Received => {
                                    call.counters.msg_received.inc_by(msgs);
                                    CLIENT_RECEIVED_BYTES.inc_by(bytes);
                                }
                                Direction::Sent => {
                                    call.counters.msg_sent.inc_by(msgs);
                                    CLIENT_SENT_BYTES.inc_by(bytes);
                                }
                            }
                        }
                    } else if let (Some(trailers), Direction::Sent) = (frame.trailers_ref(), direction) {
                        call.finish(grpc_status(trailers).unwrap_or(UNKNOWN));
                    }
                }
                (Some(Err(_)), Direction::Sent) => call.finish(UNKNOWN),
                (None, Direction::Sent) => call.finish(UNKNOWN),
                _ => {}
            }
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A tower layer counting gRPC calls (see the module doc). Other HTTP requests pass through
/// uncounted.
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
    S: tower::Service<Request<CountedBody<B>>, Response = http::Response<RB>>,
    RB: Body<Data = Bytes> + Send + 'static,
    RB::Error: Into<tonic::codegen::StdError>,
{
    type Response = http::Response<tonic::body::Body>;
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
        let call = is_grpc.then(|| {
            let counters = method_counters(req.uri().path());
            counters.started.inc();
            count_client_request(req.headers(), counters.kind == "unary");
            let started = counters.handling.is_some().then(Instant::now);
            Arc::new(Call { counters, started, finished: AtomicBool::new(false) })
        });
        let req = req.map(|b| CountedBody::new(b, call.clone(), Direction::Received));
        GrpcMetricsFuture { inner: self.inner.call(req), call }
    }
}

pin_project_lite::pin_project! {
    pub struct GrpcMetricsFuture<F> {
        #[pin]
        inner: F,
        call: Option<Arc<Call>>,
    }
}

impl<F, RB, E> Future for GrpcMetricsFuture<F>
where
    F: Future<Output = Result<http::Response<RB>, E>>,
    RB: Body<Data = Bytes> + Send + 'static,
    RB::Error: Into<tonic::codegen::StdError>,
{
    type Output = Result<http::Response<tonic::body::Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        let call = this.call.take();
        Poll::Ready(result.map(|resp| match call {
            None => resp.map(tonic::body::Body::new),
            Some(call) => {
                // a trailers-only response (an error before any message) ends here
                if let Some(code) = grpc_status(resp.headers()) {
                    call.finish(code);
                }
                resp.map(|b| tonic::body::Body::new(CountedBody::new(b, Some(call), Direction::Sent)))
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::FrameCounter;

    fn frame(len: u32) -> Vec<u8> {
        let mut f = vec![0u8];
        f.extend_from_slice(&len.to_be_bytes());
        f.extend(vec![7u8; len as usize]);
        f
    }

    #[test]
    fn messages_are_counted_however_the_bytes_are_split() {
        let mut all = frame(3);
        all.extend(frame(0));
        all.extend(frame(300));
        let whole = FrameCounter::default().feed(&all);
        assert_eq!(whole, (3, 303));
        for chunk in [1, 2, 4, 5, 6, 64] {
            let mut fc = FrameCounter::default();
            let mut total = (0, 0);
            for c in all.chunks(chunk) {
                let (m, b) = fc.feed(c);
                total = (total.0 + m, total.1 + b);
            }
            assert_eq!(total, (3, 303), "chunks of {chunk}");
        }
    }
}
