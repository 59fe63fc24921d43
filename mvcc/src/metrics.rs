//! The store's Prometheus metrics, under etcd's names (default registry, exposed by the server).
//!
//! Invariant: every figure here counts something that happened in this process (a put applied,
//! a compaction batch, a defrag), updated where it happens through a handle held in a static:
//! no label lookup on the hot path. Gauges of state (revision, keys, watchers) are read by the
//! server when scraped.

use std::sync::LazyLock;
use std::time::Instant;

use prometheus::{
    register_histogram, register_int_counter, register_int_gauge, Histogram, IntCounter, IntGauge,
};

macro_rules! counter {
    ($name:ident, $metric:literal, $help:literal) => {
        pub static $name: LazyLock<IntCounter> =
            LazyLock::new(|| register_int_counter!($metric, $help).expect("metric registers once"));
    };
}

macro_rules! gauge {
    ($name:ident, $metric:literal, $help:literal) => {
        pub static $name: LazyLock<IntGauge> =
            LazyLock::new(|| register_int_gauge!($metric, $help).expect("metric registers once"));
    };
}

macro_rules! histogram {
    ($name:ident, $metric:literal, $help:literal, $start:expr, $factor:expr, $count:expr) => {
        pub static $name: LazyLock<Histogram> = LazyLock::new(|| {
            register_histogram!(
                $metric,
                $help,
                prometheus::exponential_buckets($start, $factor, $count).unwrap_or_default()
            )
            .expect("metric registers once")
        });
    };
}

/// etcd's backend latency buckets: 1 ms doubling to about 8 s.
macro_rules! backend_histogram {
    ($name:ident, $metric:literal, $help:literal) => {
        histogram!($name, $metric, $help, 0.001, 2.0, 14);
    };
}

backend_histogram!(BACKEND_COMMIT_SECONDS, "etcd_disk_backend_commit_duration_seconds", "The latency distributions of commit called by backend.");
// bbolt's commit phases, for durable commits: spill = inserting the batch's rows into the tree,
// write = redb's commit (pages written and fsynced). redb has no separate rebalance phase (it
// merges pages inside its inserts), so each commit records a rebalance of 0 s.
backend_histogram!(COMMIT_REBALANCE_SECONDS, "etcd_debugging_disk_backend_commit_rebalance_duration_seconds", "The latency distributions of commit.rebalance called by bboltdb backend.");
backend_histogram!(COMMIT_SPILL_SECONDS, "etcd_debugging_disk_backend_commit_spill_duration_seconds", "The latency distributions of commit.spill called by bboltdb backend.");
backend_histogram!(COMMIT_WRITE_SECONDS, "etcd_debugging_disk_backend_commit_write_duration_seconds", "The latency distributions of commit.write called by bboltdb backend.");
histogram!(DEFRAG_SECONDS, "etcd_disk_backend_defrag_duration_seconds", "The latency distribution of backend defragmentation.", 0.1, 2.0, 13);
gauge!(DEFRAG_INFLIGHT, "etcd_disk_defrag_inflight", "Whether or not defrag is active on the member. 1 means active, 0 means not.");
histogram!(SNAPSHOT_SECONDS, "etcd_disk_backend_snapshot_duration_seconds", "The latency distribution of backend snapshots.", 0.01, 2.0, 17);
gauge!(OPEN_READ_TXNS, "etcd_mvcc_db_open_read_transactions", "The number of currently open read transactions");

counter!(PUT_TOTAL, "etcd_mvcc_put_total", "Total number of puts seen by this member.");
counter!(DELETE_TOTAL, "etcd_mvcc_delete_total", "Total number of deletes seen by this member.");
counter!(RANGE_TOTAL, "etcd_mvcc_range_total", "Total number of ranges seen by this member.");
counter!(TXN_TOTAL, "etcd_mvcc_txn_total", "Total number of txns seen by this member.");
counter!(DEBUG_RANGE_TOTAL, "etcd_debugging_mvcc_range_total", "Total number of ranges seen by this member.");
gauge!(PUT_SIZE, "etcd_debugging_mvcc_total_put_size_in_bytes", "The total size of put kv pairs seen by this member.");
histogram!(HASH_SECONDS, "etcd_mvcc_hash_duration_seconds", "The latency distribution of storage hash operation.", 0.01, 2.0, 15);
histogram!(HASH_REV_SECONDS, "etcd_mvcc_hash_rev_duration_seconds", "The latency distribution of storage hash by revision operation.", 0.01, 2.0, 15);

counter!(COMPACTION_KEYS, "etcd_debugging_mvcc_db_compaction_keys_total", "Total number of db keys compacted.");
gauge!(COMPACTION_LAST, "etcd_debugging_mvcc_db_compaction_last", "The unix time of the last db compaction. Resets to 0 on start.");
histogram!(COMPACTION_PAUSE_MS, "etcd_debugging_mvcc_db_compaction_pause_duration_milliseconds", "Bucketed histogram of db compaction pause duration.", 1.0, 2.0, 13);
histogram!(COMPACTION_TOTAL_MS, "etcd_debugging_mvcc_db_compaction_total_duration_milliseconds", "Bucketed histogram of db compaction total duration.", 100.0, 2.0, 14);
histogram!(INDEX_COMPACTION_PAUSE_MS, "etcd_debugging_mvcc_index_compaction_pause_duration_milliseconds", "Bucketed histogram of index compaction pause duration.", 0.5, 2.0, 14);

counter!(EVENTS_TOTAL, "etcd_debugging_mvcc_events_total", "Total number of events sent by this member.");
gauge!(PENDING_EVENTS, "etcd_debugging_mvcc_pending_events_total", "Total number of pending events to be sent.");
gauge!(WATCH_STREAMS, "etcd_debugging_mvcc_watch_stream_total", "Total number of watch streams.");

/// Milliseconds since `t`, fractional (etcd truncates to whole ms; the buckets are the same).
pub fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

/// The operations of one write request, added to the counters when it ends (etcd's
/// metricsTxnWrite): a request of more than one operation counts as a txn too. A Txn's compares
/// are ranges, as in etcd.
#[derive(Default)]
pub(crate) struct TxnTally {
    pub ranges: u64,
    pub puts: u64,
    pub deletes: u64,
    pub put_size: i64,
}

impl TxnTally {
    pub fn put(&mut self, key: usize, value: usize) {
        self.puts += 1;
        self.put_size += (key + value) as i64;
    }

    pub fn end(self) {
        if self.ranges + self.puts + self.deletes > 1 {
            TXN_TOTAL.inc();
        }
        if self.ranges > 0 {
            RANGE_TOTAL.inc_by(self.ranges);
            DEBUG_RANGE_TOTAL.inc_by(self.ranges);
        }
        PUT_TOTAL.inc_by(self.puts);
        DELETE_TOTAL.inc_by(self.deletes);
        PUT_SIZE.add(self.put_size);
    }
}

/// One read-only range outside the applier (serializable or after a read index).
pub(crate) fn range_read() {
    RANGE_TOTAL.inc();
    DEBUG_RANGE_TOTAL.inc();
}

/// Called when a compaction's last batch committed.
pub(crate) fn compaction_finished(started: Instant) {
    COMPACTION_TOTAL_MS.observe(ms_since(started));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    COMPACTION_LAST.set(now as i64);
}

/// Registers every metric of this crate, so that all appear from the first scrape.
pub fn register() {
    for h in [
        &BACKEND_COMMIT_SECONDS, &COMMIT_REBALANCE_SECONDS, &COMMIT_SPILL_SECONDS, &COMMIT_WRITE_SECONDS, &DEFRAG_SECONDS,
        &SNAPSHOT_SECONDS, &HASH_SECONDS, &HASH_REV_SECONDS, &COMPACTION_PAUSE_MS, &COMPACTION_TOTAL_MS,
        &INDEX_COMPACTION_PAUSE_MS,
    ] {
        LazyLock::force(h);
    }
    for c in [&PUT_TOTAL, &DELETE_TOTAL, &RANGE_TOTAL, &TXN_TOTAL, &DEBUG_RANGE_TOTAL, &COMPACTION_KEYS, &EVENTS_TOTAL] {
        LazyLock::force(c);
    }
    for g in [&DEFRAG_INFLIGHT, &OPEN_READ_TXNS, &PUT_SIZE, &COMPACTION_LAST, &PENDING_EVENTS, &WATCH_STREAMS] {
        LazyLock::force(g);
    }
}

/// etcd_disk_defrag_inflight is 1 while this lives; dropping it records the defrag's duration.
pub(crate) struct DefragInflight(Instant);

impl DefragInflight {
    pub fn start() -> DefragInflight {
        DEFRAG_INFLIGHT.set(1);
        DefragInflight(Instant::now())
    }
}

impl Drop for DefragInflight {
    fn drop(&mut self) {
        DEFRAG_INFLIGHT.set(0);
        DEFRAG_SECONDS.observe(self.0.elapsed().as_secs_f64());
    }
}

/// Counted in etcd_mvcc_db_open_read_transactions while it lives (one per reader's view).
pub(crate) struct OpenReadTxn(());

impl OpenReadTxn {
    pub fn open() -> OpenReadTxn {
        OPEN_READ_TXNS.inc();
        OpenReadTxn(())
    }
}

impl Drop for OpenReadTxn {
    fn drop(&mut self) {
        OPEN_READ_TXNS.dec();
    }
}
