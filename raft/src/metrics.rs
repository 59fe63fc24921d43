//! The raft layer's Prometheus metrics, under etcd's names (registered in the default registry,
//! which the server exposes on `/metrics`).
//!
//! Invariant: counters move where the thing happens (a WAL write, a snapshot file saved, a
//! batch sent to a peer), through handles held in statics or, per peer, in the peer's link task
//! ([`PeerMetrics`]): nothing looks a label up per message.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use prometheus::{
    register_histogram, register_histogram_vec, register_int_counter, register_int_counter_vec, register_int_gauge,
    register_int_gauge_vec, Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
};
use raft::eraftpb::{Message, MessageType};

/// etcd's buckets for disk latencies: 1 ms doubling to about 8 s.
fn disk_buckets() -> Vec<f64> {
    prometheus::exponential_buckets(0.001, 2.0, 14).unwrap_or_default()
}

macro_rules! disk_histogram {
    ($name:ident, $metric:literal, $help:literal) => {
        pub static $name: LazyLock<Histogram> =
            LazyLock::new(|| register_histogram!($metric, $help, disk_buckets()).expect("metric registers once"));
    };
}

macro_rules! counter {
    ($name:ident, $metric:literal, $help:literal) => {
        pub static $name: LazyLock<IntCounter> =
            LazyLock::new(|| register_int_counter!($metric, $help).expect("metric registers once"));
    };
}

// One WAL write + fdatasync per Ready batch.
disk_histogram!(WAL_FSYNC_SECONDS, "etcd_disk_wal_fsync_duration_seconds", "The latency distributions of fsync called by WAL.");
/// Bytes appended to the WAL (a gauge in etcd, counting up).
pub static WAL_WRITE_BYTES: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!("etcd_disk_wal_write_bytes_total", "Total number of bytes written in WAL.").expect("metric registers once")
});
disk_histogram!(SNAP_FSYNC_SECONDS, "etcd_snap_fsync_duration_seconds", "The latency distributions of fsync called by snap.");
disk_histogram!(SNAP_SAVE_SECONDS, "etcd_debugging_snap_save_total_duration_seconds", "The total latency distributions of save called by snapshot.");
disk_histogram!(SNAP_MARSHALLING_SECONDS, "etcd_debugging_snap_save_marshalling_duration_seconds", "The marshalling cost distributions of save called by snapshot.");

counter!(LEADER_CHANGES, "etcd_server_leader_changes_seen_total", "The number of leader changes seen.");
counter!(HEARTBEAT_SEND_FAILURES, "etcd_server_heartbeat_send_failures_total", "The total number of leader heartbeat send failures (likely overloaded from slow disk).");
counter!(SLOW_READ_INDEXES, "etcd_server_slow_read_indexes_total", "The total number of pending read indexes not in sync with leader's or timed out read index requests.");
counter!(READ_INDEXES_FAILED, "etcd_server_read_indexes_failed_total", "The total number of failed read indexes seen.");

static PEER_SENT_BYTES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!("etcd_network_peer_sent_bytes_total", "The total number of bytes sent to peers.", &["To"])
        .expect("metric registers once")
});
static PEER_RECEIVED_BYTES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!("etcd_network_peer_received_bytes_total", "The total number of bytes received from peers.", &["From"])
        .expect("metric registers once")
});
static PEER_SENT_FAILURES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!("etcd_network_peer_sent_failures_total", "The total number of send failures from peers.", &["To"])
        .expect("metric registers once")
});
static ACTIVE_PEERS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!("etcd_network_active_peers", "The current number of active peer connections.", &["Local", "Remote"])
        .expect("metric registers once")
});
static DISCONNECTED_PEERS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "etcd_network_disconnected_peers_total",
        "The total number of disconnected peers.",
        &["Local", "Remote"]
    )
    .expect("metric registers once")
});
/// etcd's buckets: 0.1 ms doubling to about 3.3 s.
static PEER_RTT_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "etcd_network_peer_round_trip_time_seconds",
        "Round-Trip-Time histogram between peers",
        &["To"],
        prometheus::exponential_buckets(0.0001, 2.0, 16).unwrap_or_default()
    )
    .expect("metric registers once")
});

/// Member IDs are labelled as etcd prints them: lower-case hex without leading zeros.
fn id_label(id: u64) -> String {
    format!("{id:x}")
}

/// The metrics of one peer link, looked up once when the link is made.
pub struct PeerMetrics {
    local: String,
    remote: String,
    sent_bytes: IntCounter,
    sent_failures: IntCounter,
    rtt: Histogram,
}

impl PeerMetrics {
    pub fn new(local: u64, remote: u64) -> PeerMetrics {
        let remote_label = id_label(remote);
        PeerMetrics {
            local: id_label(local),
            sent_bytes: PEER_SENT_BYTES.with_label_values(&[&remote_label]),
            sent_failures: PEER_SENT_FAILURES.with_label_values(&[&remote_label]),
            rtt: PEER_RTT_SECONDS.with_label_values(&[&remote_label]),
            remote: remote_label,
        }
    }

    /// Raft messages of `bytes` (encoded) went out on the stream.
    pub fn sent(&self, bytes: usize) {
        self.sent_bytes.inc_by(bytes as u64);
    }

    /// A raft message for this peer was dropped instead of sent.
    pub fn failed(&self) {
        self.sent_failures.inc();
    }

    pub fn observe_rtt(&self, rtt: Duration) {
        self.rtt.observe(rtt.as_secs_f64());
    }

    /// The link is up until the returned guard drops; then it counts as a disconnection.
    pub fn activate(&self) -> ActivePeer {
        let active = ACTIVE_PEERS.with_label_values(&[&self.local, &self.remote]);
        active.set(1);
        ActivePeer { active, disconnected: DISCONNECTED_PEERS.with_label_values(&[&self.local, &self.remote]) }
    }
}

/// A connected peer stream (etcd_network_active_peers is 1 while it lives).
pub struct ActivePeer {
    active: IntGauge,
    disconnected: IntCounter,
}

impl Drop for ActivePeer {
    fn drop(&mut self) {
        self.active.set(0);
        self.disconnected.inc();
    }
}

/// A raft message for `to` dropped before reaching its link (its queue was full).
pub fn sent_failure(to: u64) {
    PEER_SENT_FAILURES.with_label_values(&[&id_label(to)]).inc();
}

/// The counter of bytes received from member `from` (look it up once per stream).
pub fn peer_received(from: u64) -> IntCounter {
    PEER_RECEIVED_BYTES.with_label_values(&[&id_label(from)])
}

/// When the leader last sent a heartbeat to each peer (etcd's timeout detector).
static LAST_HEARTBEAT: LazyLock<Mutex<HashMap<u64, Instant>>> = LazyLock::new(Default::default);

/// Counts heartbeats that left later than twice the heartbeat interval after the previous one
/// to the same peer: the leader was too busy (etcd: likely a slow disk) to send on time.
pub(crate) fn heartbeats_sent(msgs: &[Message], interval: Duration) {
    let mut last = None;
    let now = Instant::now();
    for m in msgs.iter().filter(|m| m.get_msg_type() == MessageType::MsgHeartbeat) {
        let last = last.get_or_insert_with(|| LAST_HEARTBEAT.lock());
        if let Some(prev) = last.insert(m.to, now) {
            if now.duration_since(prev) > interval * 2 {
                tracing::warn!(
                    to = %id_label(m.to),
                    heartbeat_interval = ?interval,
                    exceeded = ?(now.duration_since(prev) - interval * 2),
                    "leader failed to send out heartbeat on time; took too long, leader is overloaded likely from slow disk"
                );
                HEARTBEAT_SEND_FAILURES.inc();
            }
        }
    }
}

/// A new leader term starts the heartbeat schedule afresh.
pub(crate) fn reset_heartbeats() {
    LAST_HEARTBEAT.lock().clear();
}

/// Registers every metric of this crate that etcd shows before anything happened.
pub fn register() {
    for h in [&WAL_FSYNC_SECONDS, &SNAP_FSYNC_SECONDS, &SNAP_SAVE_SECONDS, &SNAP_MARSHALLING_SECONDS] {
        LazyLock::force(h);
    }
    for c in [&LEADER_CHANGES, &HEARTBEAT_SEND_FAILURES, &SLOW_READ_INDEXES, &READ_INDEXES_FAILED] {
        LazyLock::force(c);
    }
    LazyLock::force(&WAL_WRITE_BYTES);
    // the per-peer families appear with their first peer, as in etcd
    LazyLock::force(&PEER_SENT_BYTES);
    LazyLock::force(&PEER_RECEIVED_BYTES);
    LazyLock::force(&PEER_SENT_FAILURES);
    LazyLock::force(&ACTIVE_PEERS);
    LazyLock::force(&DISCONNECTED_PEERS);
    LazyLock::force(&PEER_RTT_SECONDS);
    LazyLock::force(&PEER_RECEIVED_FAILURES);
    LazyLock::force(&SNAPSHOT_SEND);
    LazyLock::force(&SNAPSHOT_RECEIVE);
}

static PEER_RECEIVED_FAILURES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "etcd_network_peer_received_failures_total",
        "The total number of receive failures from peers.",
        &["From"]
    )
    .expect("metric registers once")
});

/// A raft message stream from `remote` (its address, as etcd labels it) failed.
pub fn peer_receive_failure(remote: &str) {
    PEER_RECEIVED_FAILURES.with_label_values(&[remote]).inc();
}

/// The four metrics of one direction of snapshot transfers, by peer label.
struct SnapshotMetrics {
    success: IntCounterVec,
    inflight: IntGaugeVec,
    failures: IntCounterVec,
    seconds: HistogramVec,
}

fn snapshot_metrics(dir: &str, label: &str) -> SnapshotMetrics {
    let name = |what: &str| format!("etcd_network_snapshot_{dir}_{what}");
    let verb = if dir == "send" { "sends" } else { "receives" };
    let labels = &[label];
    SnapshotMetrics {
        success: register_int_counter_vec!(name("success"), format!("Total number of successful snapshot {verb}"), labels)
            .expect("metric registers once"),
        inflight: register_int_gauge_vec!(name("inflights_total"), format!("Total number of inflight snapshot {verb}"), labels)
            .expect("metric registers once"),
        failures: register_int_counter_vec!(name("failures"), format!("Total number of snapshot {dir} failures"), labels)
            .expect("metric registers once"),
        seconds: register_histogram_vec!(
            name("total_duration_seconds"),
            format!("Total latency distributions of v3 snapshot {verb}"),
            labels,
            prometheus::exponential_buckets(0.1, 2.0, 10).unwrap_or_default()
        )
        .expect("metric registers once"),
    }
}

static SNAPSHOT_SEND: LazyLock<SnapshotMetrics> = LazyLock::new(|| snapshot_metrics("send", "To"));
static SNAPSHOT_RECEIVE: LazyLock<SnapshotMetrics> = LazyLock::new(|| snapshot_metrics("receive", "From"));

/// One snapshot transfer in progress: in flight until dropped; a failure unless
/// [`SnapshotTransfer::succeeded`] was called.
pub struct SnapshotTransfer {
    metrics: &'static SnapshotMetrics,
    peer: String,
    started: Instant,
    succeeded: bool,
}

impl SnapshotTransfer {
    fn start(metrics: &'static SnapshotMetrics, peer: u64) -> SnapshotTransfer {
        let peer = id_label(peer);
        metrics.inflight.with_label_values(&[&peer]).inc();
        SnapshotTransfer { metrics, peer, started: Instant::now(), succeeded: false }
    }

    pub fn succeeded(mut self) {
        self.succeeded = true;
        self.metrics.success.with_label_values(&[&self.peer]).inc();
        self.metrics.seconds.with_label_values(&[&self.peer]).observe(self.started.elapsed().as_secs_f64());
    }
}

impl Drop for SnapshotTransfer {
    fn drop(&mut self) {
        self.metrics.inflight.with_label_values(&[&self.peer]).dec();
        if !self.succeeded {
            self.metrics.failures.with_label_values(&[&self.peer]).inc();
        }
    }
}

/// A snapshot being sent to member `to`.
pub fn snapshot_send(to: u64) -> SnapshotTransfer {
    SnapshotTransfer::start(&SNAPSHOT_SEND, to)
}

/// A snapshot being received from member `from`.
pub fn snapshot_receive(from: u64) -> SnapshotTransfer {
    SnapshotTransfer::start(&SNAPSHOT_RECEIVE, from)
}
