//! The store's Prometheus metrics, under etcd's names (default registry, exposed by the server).

use std::sync::LazyLock;

use prometheus::{register_histogram, Histogram};

/// One backend commit per apply batch (etcd: the bbolt batch commit).
pub static BACKEND_COMMIT_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "etcd_disk_backend_commit_duration_seconds",
        "The latency distributions of commit called by backend.",
        prometheus::exponential_buckets(0.001, 2.0, 14).unwrap_or_default()
    )
    .expect("metric registers once")
});
