//! The lessor's Prometheus metrics under etcd's names (default registry, exposed by the
//! server): grants and revokes as applied on every member, renewals as seen by the leader.

use std::sync::LazyLock;

use prometheus::{register_histogram, register_int_counter, Histogram, IntCounter};

pub static GRANTED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("etcd_debugging_lease_granted_total", "The total number of granted leases.")
        .expect("metric registers once")
});
pub static REVOKED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("etcd_debugging_lease_revoked_total", "The total number of revoked leases.")
        .expect("metric registers once")
});
pub static RENEWED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("etcd_debugging_lease_renewed_total", "The number of renewed leases seen by the leader.")
        .expect("metric registers once")
});
/// etcd's buckets: 1 s doubling to about 97 days.
pub static TTL_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "etcd_debugging_lease_ttl_total",
        "Bucketed histogram of lease TTLs.",
        prometheus::exponential_buckets(1.0, 2.0, 24).unwrap_or_default()
    )
    .expect("metric registers once")
});

/// A lease granted with `ttl` seconds.
pub(crate) fn granted(ttl: i64) {
    GRANTED.inc();
    TTL_SECONDS.observe(ttl as f64);
}

/// Registers every metric of this crate, so that all appear from the first scrape.
pub fn register() {
    for c in [&GRANTED, &REVOKED, &RENEWED] {
        LazyLock::force(c);
    }
    LazyLock::force(&TTL_SECONDS);
}
