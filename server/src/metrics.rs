//! `/metrics`: etcd's Prometheus metrics under etcd's names, in the text exposition format.
//!
//! Invariant: every series etcd 3.5 serves (except `go_*`, which describe Go's runtime, and the
//! gRPC proxy's) is served with etcd's name, type, labels and buckets, and its value is what
//! this member measured. Counters and histograms move where things happen, through handles
//! held in statics (proposals, apply here; WAL, snapshots, peers and read indexes in
//! `etcd_raft::metrics`; the store in `etcd_mvcc::metrics`; leases in `etcd_lease::metrics`;
//! gRPC calls in [`grpc_layer`]). Gauges that mirror server state (leader, sizes, revisions,
//! watchers, process) are read when scraped. Everything lives in Prometheus' default registry.

mod grpc_layer;

use std::sync::{LazyLock, OnceLock};
use std::time::Instant;

use etcd_proto::etcdserverpb::InternalRaftRequest;
use prometheus::{
    register_gauge, register_histogram, register_histogram_vec, register_int_counter, register_int_counter_vec,
    register_int_gauge, register_int_gauge_vec, Encoder, Gauge, Histogram, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, TextEncoder,
};

pub use grpc_layer::{enable_extensive, CountedBody, GrpcMetrics, GrpcMetricsFuture, GrpcMetricsLayer};

use crate::etcd_server::EtcdServer;

macro_rules! int_gauge {
    ($name:ident, $metric:literal, $help:literal) => {
        pub(crate) static $name: LazyLock<IntGauge> =
            LazyLock::new(|| register_int_gauge!($metric, $help).expect("metric registers once"));
    };
}

macro_rules! counter {
    ($name:ident, $metric:literal, $help:literal) => {
        pub static $name: LazyLock<IntCounter> =
            LazyLock::new(|| register_int_counter!($metric, $help).expect("metric registers once"));
    };
}

macro_rules! float_gauge {
    ($name:ident, $metric:literal, $help:literal) => {
        static $name: LazyLock<Gauge> = LazyLock::new(|| register_gauge!($metric, $help).expect("metric registers once"));
    };
}

macro_rules! info_gauge {
    ($name:ident, $metric:literal, $help:literal, $label:literal) => {
        static $name: LazyLock<IntGaugeVec> =
            LazyLock::new(|| register_int_gauge_vec!($metric, $help, &[$label]).expect("metric registers once"));
    };
}

counter!(PROPOSALS_FAILED, "etcd_server_proposals_failed_total", "The total number of failed proposals seen.");
int_gauge!(PROPOSALS_PENDING, "etcd_server_proposals_pending", "The current number of pending proposals to commit.");
int_gauge!(PROPOSALS_COMMITTED, "etcd_server_proposals_committed_total", "The total number of consensus proposals committed.");
int_gauge!(PROPOSALS_APPLIED, "etcd_server_proposals_applied_total", "The total number of consensus proposals applied.");
int_gauge!(HAS_LEADER, "etcd_server_has_leader", "Whether or not a leader exists. 1 is existence, 0 is not.");
int_gauge!(IS_LEADER, "etcd_server_is_leader", "Whether or not this member is a leader. 1 if is, 0 otherwise.");
int_gauge!(IS_LEARNER, "etcd_server_is_learner", "Whether or not this member is a learner. 1 if is, 0 otherwise.");
int_gauge!(QUOTA_BYTES, "etcd_server_quota_backend_bytes", "Current backend storage quota size in bytes.");
int_gauge!(SNAPSHOT_APPLY_IN_PROGRESS, "etcd_server_snapshot_apply_in_progress_total", "1 if the server is applying the incoming snapshot. 0 if none.");
counter!(SLOW_APPLY, "etcd_server_slow_apply_total", "The total number of slow apply requests (likely overloaded from slow disk).");
counter!(LEARNER_PROMOTE_SUCCESSES, "etcd_server_learner_promote_successes", "The total number of successful learner promotions while this member is leader.");
static LEARNER_PROMOTE_FAILURES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "etcd_server_learner_promote_failures",
        "The total number of failed learner promotions (likely learner not ready) while this member is leader.",
        &["Reason"]
    )
    .expect("metric registers once")
});
counter!(LEASE_EXPIRED, "etcd_debugging_server_lease_expired_total", "The total number of expired leases.");
info_gauge!(SERVER_ID, "etcd_server_id", "Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID.", "server_id");
info_gauge!(SERVER_VERSION, "etcd_server_version", "Which version is running. 1 for 'server_version' label with current version.", "server_version");
info_gauge!(SERVER_GO_VERSION, "etcd_server_go_version", "Which Go version server is running with. 1 for 'server_go_version' label with current version.", "server_go_version");
info_gauge!(CLUSTER_VERSION, "etcd_cluster_version", "Which version is running. 1 for 'cluster_version' label with current cluster version", "cluster_version");

int_gauge!(DB_SIZE, "etcd_mvcc_db_total_size_in_bytes", "Total size of the underlying database physically allocated in bytes.");
int_gauge!(DB_IN_USE, "etcd_mvcc_db_total_size_in_use_in_bytes", "Total size of the underlying database logically in use in bytes.");
int_gauge!(KEYS, "etcd_debugging_mvcc_keys_total", "Total number of keys.");
int_gauge!(CURRENT_REVISION, "etcd_debugging_mvcc_current_revision", "The current revision of store.");
int_gauge!(COMPACT_REVISION, "etcd_debugging_mvcc_compact_revision", "The revision of the last compaction in store.");
int_gauge!(WATCHERS, "etcd_debugging_mvcc_watcher_total", "Total number of watchers.");
int_gauge!(SLOW_WATCHERS, "etcd_debugging_mvcc_slow_watcher_total", "Total number of unsynced slow watchers.");
int_gauge!(LEASES, "etcd_debugging_lease_total", "The number of leases.");
int_gauge!(AUTH_REVISION, "etcd_debugging_auth_revision", "The current revision of auth store.");

// etcd's v2 store, which etcd 3.5 still keeps membership in; etcd-rs keeps membership in the
// backend and counts its membership reads and writes under the v2 store's actions. The v2 API
// (and so v2 watchers and TTL keys) does not exist here, as it is off by default in etcd 3.5.
static STORE_READS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "etcd_debugging_store_reads_total",
        "Total number of reads action by (get/getRecursive), local to this member.",
        &["action"]
    )
    .expect("metric registers once")
});
static STORE_WRITES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "etcd_debugging_store_writes_total",
        "Total number of writes (e.g. set/compareAndDelete) seen by this member.",
        &["action"]
    )
    .expect("metric registers once")
});
counter!(STORE_WATCH_REQUESTS, "etcd_debugging_store_watch_requests_total", "Total number of incoming watch requests (new or reestablished).");
int_gauge!(STORE_WATCHERS, "etcd_debugging_store_watchers", "Count of currently active watchers.");
counter!(STORE_EXPIRES, "etcd_debugging_store_expires_total", "Total number of expired keys.");

static SNAP_DB_FSYNC_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "etcd_snap_db_fsync_duration_seconds",
        "The latency distributions of fsyncing .snap.db file",
        prometheus::exponential_buckets(0.001, 2.0, 14).unwrap_or_default()
    )
    .expect("metric registers once")
});
static SNAP_DB_SAVE_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "etcd_snap_db_save_total_duration_seconds",
        "The total latency distributions of v3 snapshot save",
        prometheus::exponential_buckets(0.1, 2.0, 10).unwrap_or_default()
    )
    .expect("metric registers once")
});

int_gauge!(PROCESS_RSS, "process_resident_memory_bytes", "Resident memory size in bytes.");
int_gauge!(PROCESS_VSIZE, "process_virtual_memory_bytes", "Virtual memory size in bytes.");
int_gauge!(PROCESS_OPEN_FDS, "process_open_fds", "Number of open file descriptors.");
int_gauge!(PROCESS_MAX_FDS, "process_max_fds", "Maximum number of open file descriptors.");
int_gauge!(OS_FD_USED, "os_fd_used", "The number of used file descriptors.");
int_gauge!(OS_FD_LIMIT, "os_fd_limit", "The file descriptor limit.");
float_gauge!(PROCESS_VMAX, "process_virtual_memory_max_bytes", "Maximum amount of virtual memory available in bytes.");
/// A counter, as in etcd: moved up to the kernel's figure at each scrape.
static PROCESS_CPU: LazyLock<prometheus::Counter> = LazyLock::new(|| {
    prometheus::register_counter!("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.")
        .expect("metric registers once")
});
float_gauge!(PROCESS_START, "process_start_time_seconds", "Start time of the process since unix epoch in seconds.");

int_gauge!(SCRAPES_IN_FLIGHT, "promhttp_metric_handler_requests_in_flight", "Current number of scrapes being served.");
static SCRAPES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!("promhttp_metric_handler_requests_total", "Total number of scrapes by HTTP status code.", &["code"])
        .expect("metric registers once")
});

/// The Rust toolchain this binary was built with, where etcd names its Go toolchain
/// (`go1.16.3`): `rust1.95.0`. It answers the same question (which compiler and runtime built
/// the server), so a dashboard grouping members by it still groups them correctly.
const TOOLCHAIN_VERSION: &str = concat!("rust", env!("ETCD_RS_RUSTC_VERSION"));

/// etcd's apply time limit (`--warning-apply-duration`, default 100 ms), in nanoseconds: an
/// apply taking longer is logged and counted in etcd_server_slow_apply_total.
static WARNING_APPLY_NANOS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(100_000_000);

/// Sets the apply time limit (at start, from `--warning-apply-duration`).
pub fn set_warning_apply_duration(d: std::time::Duration) {
    WARNING_APPLY_NANOS.store(d.as_nanos().min(u128::from(u64::MAX)) as u64, std::sync::atomic::Ordering::Relaxed);
}

fn warning_apply_duration() -> std::time::Duration {
    std::time::Duration::from_nanos(WARNING_APPLY_NANOS.load(std::sync::atomic::Ordering::Relaxed))
}

/// etcd's names for the operations of an InternalRaftRequest (the `op` label of
/// etcd_server_apply_duration_seconds), in the order [`apply_op`] checks them.
const APPLY_OPS: [&str; 30] = [
    "Range", "Put", "DeleteRange", "Txn", "Compaction", "LeaseGrant", "LeaseRevoke", "LeaseCheckpoint", "Alarm",
    "Authenticate", "AuthEnable", "AuthDisable", "AuthStatus", "UserAdd", "UserDelete", "UserChangePassword",
    "UserGrantRole", "UserGet", "UserRevokeRole", "UserList", "RoleAdd", "RoleGrantPermission", "RoleGet",
    "RoleRevokePermission", "RoleDelete", "RoleList", "ClusterVersionSet", "ClusterMemberAttrSet", "DowngradeInfoSet",
    "Unknown",
];

/// An operation's field name in etcd's request text (`DeleteRange` -> `delete_range`).
fn snake_case(op: &str) -> String {
    let mut out = String::with_capacity(op.len() + 4);
    for (i, c) in op.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

fn apply_op(r: &InternalRaftRequest) -> usize {
    let present = [
        r.range.is_some(), r.put.is_some(), r.delete_range.is_some(), r.txn.is_some(), r.compaction.is_some(),
        r.lease_grant.is_some(), r.lease_revoke.is_some(), r.lease_checkpoint.is_some(), r.alarm.is_some(),
        r.authenticate.is_some(), r.auth_enable.is_some(), r.auth_disable.is_some(), r.auth_status.is_some(),
        r.auth_user_add.is_some(), r.auth_user_delete.is_some(), r.auth_user_change_password.is_some(),
        r.auth_user_grant_role.is_some(), r.auth_user_get.is_some(), r.auth_user_revoke_role.is_some(),
        r.auth_user_list.is_some(), r.auth_role_add.is_some(), r.auth_role_grant_permission.is_some(),
        r.auth_role_get.is_some(), r.auth_role_revoke_permission.is_some(), r.auth_role_delete.is_some(),
        r.auth_role_list.is_some(), r.cluster_version_set.is_some(), r.cluster_member_attr_set.is_some(),
        r.downgrade_info_set.is_some(),
    ];
    present.iter().position(|p| *p).unwrap_or(APPLY_OPS.len() - 1)
}

static APPLY_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "etcd_server_apply_duration_seconds",
        "The latency distributions of v2 apply called by backend.",
        &["version", "op", "success"],
        prometheus::exponential_buckets(0.0001, 2.0, 20).unwrap_or_default()
    )
    .expect("metric registers once")
});

/// etcd_server_apply_duration_seconds{version="v3", op, success}: one handle per (op, success),
/// made at its first use (so, as in etcd, only operations that happened have series).
static APPLY_HANDLES: [[OnceLock<Histogram>; 2]; APPLY_OPS.len()] =
    [const { [const { OnceLock::new() }; 2] }; APPLY_OPS.len()];

/// Times the apply of one request (etcd's applierV3 wrapper): the duration histogram by
/// operation and outcome, and the slow-apply counter and warning.
pub(crate) struct ApplyTimer {
    op: usize,
    started: Instant,
    /// The request's ID, for the slow-apply warning (its contents are gone by then).
    id: u64,
}

impl ApplyTimer {
    pub fn start(req: &InternalRaftRequest) -> ApplyTimer {
        let id = req.header.as_ref().map(|h| h.id).filter(|id| *id != 0).unwrap_or(req.id);
        ApplyTimer { op: apply_op(req), started: Instant::now(), id }
    }

    /// `ok`: etcd counts a compacted-revision error as a success, as here the caller decides.
    pub fn finish(self, ok: bool) {
        let took = self.started.elapsed();
        let success = if ok { "true" } else { "false" };
        APPLY_HANDLES[self.op][usize::from(ok)]
            .get_or_init(|| APPLY_SECONDS.with_label_values(&["v3", APPLY_OPS[self.op], success]))
            .observe(took.as_secs_f64());
        let expected = warning_apply_duration();
        if took > expected {
            // etcd writes the whole request in its text form; etcd-rs its ID and operation
            let request = format!("header:<ID:{} > {}", self.id, snake_case(APPLY_OPS[self.op]));
            let (took, expected) = (crate::logging::go_duration(took), crate::logging::go_duration(expected));
            tracing::warn!(took, "expected-duration" = expected, prefix = "", request, response = "", "apply request took too long");
            SLOW_APPLY.inc();
        }
    }
}

/// etcd_server_snapshot_apply_in_progress_total is 1 while this lives.
pub(crate) struct SnapshotApplying(());

impl SnapshotApplying {
    pub fn start() -> SnapshotApplying {
        SNAPSHOT_APPLY_IN_PROGRESS.set(1);
        SnapshotApplying(())
    }
}

impl Drop for SnapshotApplying {
    fn drop(&mut self) {
        SNAPSHOT_APPLY_IN_PROGRESS.set(0);
    }
}

/// A learner promotion refused by this leader (etcd labels the reason with the error).
pub(crate) fn learner_promote_failed(reason: &str) {
    LEARNER_PROMOTE_FAILURES.with_label_values(&[reason]).inc();
}

/// A membership read or write, under the v2 store action etcd 3.5 performs for it
/// (`getRecursive`; `create`, `set`, `delete`).
pub(crate) fn membership_read() {
    STORE_READS.with_label_values(&["getRecursive"]).inc();
}

pub(crate) fn membership_write(action: &'static str) {
    STORE_WRITES.with_label_values(&[action]).inc();
}

/// A received database snapshot made durable: its fsync and its whole receive time.
pub(crate) fn snapshot_db_saved(fsync: std::time::Duration, since_start: std::time::Duration) {
    SNAP_DB_FSYNC_SECONDS.observe(fsync.as_secs_f64());
    SNAP_DB_SAVE_SECONDS.observe(since_start.as_secs_f64());
}

/// Registers every metric, so that all of etcd's series appear from the first scrape.
fn register_all() {
    static DONE: std::sync::Once = std::sync::Once::new();
    DONE.call_once(|| {
        for g in [
            &PROPOSALS_PENDING, &PROPOSALS_COMMITTED, &PROPOSALS_APPLIED, &HAS_LEADER, &IS_LEADER, &IS_LEARNER,
            &QUOTA_BYTES, &SNAPSHOT_APPLY_IN_PROGRESS, &DB_SIZE, &DB_IN_USE, &KEYS, &CURRENT_REVISION, &COMPACT_REVISION,
            &WATCHERS, &SLOW_WATCHERS, &LEASES, &AUTH_REVISION, &STORE_WATCHERS, &PROCESS_RSS, &PROCESS_VSIZE,
            &PROCESS_OPEN_FDS, &PROCESS_MAX_FDS, &OS_FD_USED, &OS_FD_LIMIT, &SCRAPES_IN_FLIGHT,
        ] {
            LazyLock::force(g);
        }
        for c in [
            &PROPOSALS_FAILED, &SLOW_APPLY, &LEARNER_PROMOTE_SUCCESSES, &LEASE_EXPIRED, &STORE_WATCH_REQUESTS,
            &STORE_EXPIRES,
        ] {
            LazyLock::force(c);
        }
        for g in [&PROCESS_VMAX, &PROCESS_START] {
            LazyLock::force(g);
        }
        LazyLock::force(&PROCESS_CPU);
        LazyLock::force(&LEARNER_PROMOTE_FAILURES);
        LazyLock::force(&STORE_READS);
        LazyLock::force(&STORE_WRITES);
        LazyLock::force(&SNAP_DB_FSYNC_SECONDS);
        LazyLock::force(&SNAP_DB_SAVE_SECONDS);
        LazyLock::force(&APPLY_SECONDS);
        for code in ["200", "500", "503"] {
            SCRAPES.with_label_values(&[code]);
        }
        SERVER_GO_VERSION.with_label_values(&[TOOLCHAIN_VERSION]).set(1);
        grpc_layer::register();
        etcd_raft::metrics::register();
        etcd_mvcc::metrics::register();
        etcd_lease::metrics::register();
        crate::health::register_metrics();
    });
}

/// The text exposition of every metric, with the state gauges read now.
pub fn render(server: &EtcdServer) -> String {
    register_all();
    SCRAPES_IN_FLIGHT.inc();
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
    let (current, compacted, auth) = server.revisions();
    CURRENT_REVISION.set(current);
    COMPACT_REVISION.set(compacted);
    AUTH_REVISION.set(auth as i64);
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

    let mut out = Vec::new();
    let code = match TextEncoder::new().encode(&prometheus::gather(), &mut out) {
        Ok(()) => "200",
        Err(e) => {
            tracing::warn!(error = %e, "cannot encode metrics");
            "500"
        }
    };
    SCRAPES_IN_FLIGHT.dec();
    // counted once served, as promhttp does: a scrape shows the scrapes before it
    SCRAPES.with_label_values(&[code]).inc();
    String::from_utf8(out).unwrap_or_default()
}

/// Linux /proc figures for the standard process_* metrics and etcd's os_fd_* (left unset
/// elsewhere).
fn read_process_metrics() {
    let page = 4096i64;
    if let Ok(statm) = std::fs::read_to_string("/proc/self/statm") {
        let mut f = statm.split_whitespace().map(|x| x.parse::<i64>().unwrap_or(0));
        let (size, resident) = (f.next().unwrap_or(0), f.next().unwrap_or(0));
        PROCESS_VSIZE.set(size * page);
        PROCESS_RSS.set(resident * page);
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        let n = fds.count() as i64;
        PROCESS_OPEN_FDS.set(n);
        OS_FD_USED.set(n);
    }
    if let Ok(limits) = std::fs::read_to_string("/proc/self/limits") {
        if let Some(n) = soft_limit(&limits, "Max open files") {
            PROCESS_MAX_FDS.set(n as i64);
            OS_FD_LIMIT.set(n as i64);
        }
        PROCESS_VMAX.set(soft_limit(&limits, "Max address space").unwrap_or(u64::MAX) as f64);
    }
    // utime, stime (fields 14, 15) and starttime (22) in clock ticks; assume the usual 100 Hz
    if let (Ok(stat), Ok(uptime)) = (std::fs::read_to_string("/proc/self/stat"), std::fs::read_to_string("/proc/uptime")) {
        let after_comm = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
        let fields: Vec<f64> = after_comm.split_whitespace().map(|x| x.parse().unwrap_or(0.0)).collect();
        let ticks = 100.0;
        if fields.len() > 19 {
            let cpu = (fields[11] + fields[12]) / ticks;
            if cpu > PROCESS_CPU.get() {
                PROCESS_CPU.inc_by(cpu - PROCESS_CPU.get());
            }
            let up: f64 = uptime.split_whitespace().next().and_then(|x| x.parse().ok()).unwrap_or(0.0);
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
            PROCESS_START.set(now - up + fields[19] / ticks);
        }
    }
}

/// A soft limit from /proc/self/limits ("unlimited" is u64::MAX, as Go's procfs reads it).
fn soft_limit(limits: &str, name: &str) -> Option<u64> {
    let rest = limits.lines().find_map(|l| l.strip_prefix(name))?;
    match rest.split_whitespace().next()? {
        "unlimited" => Some(u64::MAX),
        n => n.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soft_limits_are_read_from_proc_limits() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max open files            1024                 524288               files     \n\
                      Max address space         unlimited            unlimited            bytes     \n";
        assert_eq!(soft_limit(limits, "Max open files"), Some(1024));
        assert_eq!(soft_limit(limits, "Max address space"), Some(u64::MAX));
        assert_eq!(soft_limit(limits, "Max processes"), None);
    }

    #[test]
    fn apply_ops_are_named_as_etcd_names_them() {
        let put = InternalRaftRequest { put: Some(Default::default()), ..Default::default() };
        assert_eq!(APPLY_OPS[apply_op(&put)], "Put");
        let grant = InternalRaftRequest { lease_grant: Some(Default::default()), ..Default::default() };
        assert_eq!(APPLY_OPS[apply_op(&grant)], "LeaseGrant");
        assert_eq!(APPLY_OPS[apply_op(&InternalRaftRequest::default())], "Unknown");
    }
}
