//! The raft layer's Prometheus metrics, under etcd's names (registered in the default registry,
//! which the server exposes on `/metrics`).

use std::sync::LazyLock;

use prometheus::{register_histogram, register_int_counter, Histogram, IntCounter};

/// etcd's buckets for disk latencies: 1 ms doubling to about 8 s.
fn disk_buckets() -> Vec<f64> {
    prometheus::exponential_buckets(0.001, 2.0, 14).unwrap_or_default()
}

/// One WAL write + fdatasync per Ready batch.
pub static WAL_FSYNC_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "etcd_disk_wal_fsync_duration_seconds",
        "The latency distributions of fsync called by WAL.",
        disk_buckets()
    )
    .expect("metric registers once")
});

pub static LEADER_CHANGES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("etcd_server_leader_changes_seen_total", "The number of leader changes seen.")
        .expect("metric registers once")
});
