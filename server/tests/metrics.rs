//! `/metrics` on the client port: every metric name etcd 3.5 serves, with etcd's types, and
//! values that follow what the server does.

mod common;

use std::time::{Duration, Instant};

use common::cluster::TestCluster;
use common::{http_get, put, single_member};
use etcd_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use etcd_proto::etcdserverpb::request_op::Request as Op;
use etcd_proto::etcdserverpb::watch_client::WatchClient;
use etcd_proto::etcdserverpb::watch_request::RequestUnion;
use etcd_proto::etcdserverpb::{
    CompactionRequest, Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, WatchCreateRequest, WatchRequest,
};
use tokio_stream::wrappers::ReceiverStream;

/// Every metric family etcd 3.5.1 served (`# TYPE` lines of its /metrics) after a workload of
/// puts, a delete, a range, a txn, a lease, a watch, a compaction, a defrag and a snapshot,
/// without `go_*` (Go's runtime) and `etcd_grpc_proxy_*` (the proxy's); captured from
/// /opt/etcd-3.5/bin/etcd, a single member.
const ETCD_3_5_FAMILIES: &[(&str, &str)] = &[
    ("etcd_cluster_version", "gauge"),
    ("etcd_debugging_auth_revision", "gauge"),
    ("etcd_debugging_disk_backend_commit_rebalance_duration_seconds", "histogram"),
    ("etcd_debugging_disk_backend_commit_spill_duration_seconds", "histogram"),
    ("etcd_debugging_disk_backend_commit_write_duration_seconds", "histogram"),
    ("etcd_debugging_lease_granted_total", "counter"),
    ("etcd_debugging_lease_renewed_total", "counter"),
    ("etcd_debugging_lease_revoked_total", "counter"),
    ("etcd_debugging_lease_ttl_total", "histogram"),
    ("etcd_debugging_mvcc_compact_revision", "gauge"),
    ("etcd_debugging_mvcc_current_revision", "gauge"),
    ("etcd_debugging_mvcc_db_compaction_keys_total", "counter"),
    ("etcd_debugging_mvcc_db_compaction_last", "gauge"),
    ("etcd_debugging_mvcc_db_compaction_pause_duration_milliseconds", "histogram"),
    ("etcd_debugging_mvcc_db_compaction_total_duration_milliseconds", "histogram"),
    ("etcd_debugging_mvcc_events_total", "counter"),
    ("etcd_debugging_mvcc_index_compaction_pause_duration_milliseconds", "histogram"),
    ("etcd_debugging_mvcc_keys_total", "gauge"),
    ("etcd_debugging_mvcc_pending_events_total", "gauge"),
    ("etcd_debugging_mvcc_range_total", "counter"),
    ("etcd_debugging_mvcc_slow_watcher_total", "gauge"),
    ("etcd_debugging_mvcc_total_put_size_in_bytes", "gauge"),
    ("etcd_debugging_mvcc_watch_stream_total", "gauge"),
    ("etcd_debugging_mvcc_watcher_total", "gauge"),
    ("etcd_debugging_server_lease_expired_total", "counter"),
    ("etcd_debugging_snap_save_marshalling_duration_seconds", "histogram"),
    ("etcd_debugging_snap_save_total_duration_seconds", "histogram"),
    ("etcd_debugging_store_expires_total", "counter"),
    ("etcd_debugging_store_reads_total", "counter"),
    ("etcd_debugging_store_watch_requests_total", "counter"),
    ("etcd_debugging_store_watchers", "gauge"),
    ("etcd_debugging_store_writes_total", "counter"),
    ("etcd_disk_backend_commit_duration_seconds", "histogram"),
    ("etcd_disk_backend_defrag_duration_seconds", "histogram"),
    ("etcd_disk_backend_snapshot_duration_seconds", "histogram"),
    ("etcd_disk_defrag_inflight", "gauge"),
    ("etcd_disk_wal_fsync_duration_seconds", "histogram"),
    ("etcd_disk_wal_write_bytes_total", "gauge"),
    ("etcd_mvcc_db_open_read_transactions", "gauge"),
    ("etcd_mvcc_db_total_size_in_bytes", "gauge"),
    ("etcd_mvcc_db_total_size_in_use_in_bytes", "gauge"),
    ("etcd_mvcc_delete_total", "counter"),
    ("etcd_mvcc_hash_duration_seconds", "histogram"),
    ("etcd_mvcc_hash_rev_duration_seconds", "histogram"),
    ("etcd_mvcc_put_total", "counter"),
    ("etcd_mvcc_range_total", "counter"),
    ("etcd_mvcc_txn_total", "counter"),
    ("etcd_network_client_grpc_received_bytes_total", "counter"),
    ("etcd_network_client_grpc_sent_bytes_total", "counter"),
    ("etcd_server_apply_duration_seconds", "histogram"),
    ("etcd_server_client_requests_total", "counter"),
    ("etcd_server_go_version", "gauge"),
    ("etcd_server_has_leader", "gauge"),
    ("etcd_server_health_failures", "counter"),
    ("etcd_server_health_success", "counter"),
    ("etcd_server_heartbeat_send_failures_total", "counter"),
    ("etcd_server_id", "gauge"),
    ("etcd_server_is_leader", "gauge"),
    ("etcd_server_is_learner", "gauge"),
    ("etcd_server_leader_changes_seen_total", "counter"),
    ("etcd_server_learner_promote_successes", "counter"),
    ("etcd_server_proposals_applied_total", "gauge"),
    ("etcd_server_proposals_committed_total", "gauge"),
    ("etcd_server_proposals_failed_total", "counter"),
    ("etcd_server_proposals_pending", "gauge"),
    ("etcd_server_quota_backend_bytes", "gauge"),
    ("etcd_server_read_indexes_failed_total", "counter"),
    ("etcd_server_slow_apply_total", "counter"),
    ("etcd_server_slow_read_indexes_total", "counter"),
    ("etcd_server_snapshot_apply_in_progress_total", "gauge"),
    ("etcd_server_version", "gauge"),
    ("etcd_snap_db_fsync_duration_seconds", "histogram"),
    ("etcd_snap_db_save_total_duration_seconds", "histogram"),
    ("etcd_snap_fsync_duration_seconds", "histogram"),
    ("grpc_server_handled_total", "counter"),
    ("grpc_server_msg_received_total", "counter"),
    ("grpc_server_msg_sent_total", "counter"),
    ("grpc_server_started_total", "counter"),
    ("os_fd_limit", "gauge"),
    ("os_fd_used", "gauge"),
    ("process_cpu_seconds_total", "counter"),
    ("process_max_fds", "gauge"),
    ("process_open_fds", "gauge"),
    ("process_resident_memory_bytes", "gauge"),
    ("process_start_time_seconds", "gauge"),
    ("process_virtual_memory_bytes", "gauge"),
    ("process_virtual_memory_max_bytes", "gauge"),
    ("promhttp_metric_handler_requests_in_flight", "gauge"),
    ("promhttp_metric_handler_requests_total", "counter"),
];

/// The families etcd 3.5.1 serves only once it has peers (captured from a 3-member cluster).
const ETCD_3_5_PEER_FAMILIES: &[(&str, &str)] = &[
    ("etcd_network_active_peers", "gauge"),
    ("etcd_network_peer_received_bytes_total", "counter"),
    ("etcd_network_peer_round_trip_time_seconds", "histogram"),
    ("etcd_network_peer_sent_bytes_total", "counter"),
];

fn value(body: &str, series: &str) -> Option<f64> {
    body.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// The sum of every sample of `family` whose labels contain all of `labels`.
fn sum(body: &str, family: &str, labels: &[&str]) -> f64 {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(family)?;
            let (series, v) = rest.rsplit_once(' ')?;
            let ok = (series.is_empty() || series.starts_with('{')) && labels.iter().all(|want| series.contains(want));
            ok.then(|| v.parse::<f64>().ok()).flatten()
        })
        .sum()
}

fn missing_families(body: &str, families: &[(&str, &str)]) -> Vec<String> {
    families
        .iter()
        .filter(|(name, kind)| !body.lines().any(|l| l == format!("# TYPE {name} {kind}")))
        .map(|(name, kind)| format!("{name} ({kind})"))
        .collect()
}

fn scrape(m: &common::Member) -> String {
    let (code, body) = http_get(m, "/metrics");
    assert_eq!(code, 200);
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_expose_etcds_names_and_follow_the_server() {
    let (_dir, m, mut kv) = single_member(&[]).await;
    let before = scrape(&m);
    assert_eq!(value(&before, "etcd_server_has_leader"), Some(1.0));
    assert_eq!(value(&before, "etcd_server_is_leader"), Some(1.0));
    assert_eq!(value(&before, "etcd_server_leader_changes_seen_total"), Some(1.0));
    assert!(before.contains("etcd_server_version{server_version=\"3.5.17\"} 1"), "{before}");
    assert!(value(&before, "etcd_mvcc_db_total_size_in_bytes").unwrap() > 0.0);
    assert!(value(&before, "process_resident_memory_bytes").unwrap() > 0.0);

    for i in 0..10 {
        put(&mut kv, &format!("k{i}"), "v").await.unwrap();
    }
    let after = scrape(&m);
    let applied = |b: &str| value(b, "etcd_server_proposals_applied_total").unwrap();
    assert!(applied(&after) >= applied(&before) + 10.0);
    assert_eq!(value(&after, "etcd_debugging_mvcc_keys_total"), Some(10.0));
    let fsyncs = |b: &str| value(b, "etcd_disk_wal_fsync_duration_seconds_count").unwrap();
    assert!(fsyncs(&after) >= fsyncs(&before) + 10.0, "one fsync per sequential put at least");
    let puts = r#"grpc_server_handled_total{grpc_code="OK",grpc_method="Put",grpc_service="etcdserverpb.KV",grpc_type="unary"}"#;
    assert_eq!(value(&after, puts), Some(10.0), "{after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_family_etcd_3_5_serves_is_served_with_its_type() {
    let (_dir, m, mut kv) = single_member(&[]).await;
    put(&mut kv, "k", "v").await.unwrap();
    let body = scrape(&m);
    let missing = missing_families(&body, ETCD_3_5_FAMILIES);
    assert!(missing.is_empty(), "families etcd 3.5 serves that are missing: {missing:?}");
    // go-grpc-prometheus' series exist from the start for every method of etcd's services
    let series = r#"grpc_server_handled_total{grpc_code="Unavailable",grpc_method="MemberPromote",grpc_service="etcdserverpb.Cluster",grpc_type="unary"}"#;
    assert_eq!(value(&body, series), Some(0.0));
    assert!(body.contains("etcd_server_go_version{server_go_version=\"rust"), "the toolchain is named");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mvcc_and_grpc_counters_count_what_clients_did() {
    let (_dir, m, mut kv) = single_member(&[]).await;
    let before = scrape(&m);
    for i in 0..5 {
        put(&mut kv, &format!("k{i}"), "value").await.unwrap();
    }
    kv.delete_range(DeleteRangeRequest { key: b"k0".to_vec(), ..Default::default() }).await.unwrap();
    kv.range(RangeRequest { key: b"k1".to_vec(), ..Default::default() }).await.unwrap();
    // a txn of a compare (a range, as etcd counts it) and a put: more than one op, so a txn
    let txn = TxnRequest {
        compare: vec![Compare {
            key: b"k1".to_vec(),
            target: CompareTarget::Version as i32,
            result: CompareResult::Greater as i32,
            target_union: Some(TargetUnion::Version(0)),
            ..Default::default()
        }],
        success: vec![RequestOp { request: Some(Op::RequestPut(PutRequest { key: b"t".to_vec(), value: b"1".to_vec(), ..Default::default() })) }],
        ..Default::default()
    };
    kv.txn(txn).await.unwrap();
    // a put reading the previous value: a range and a put in one write, so a txn
    kv.put(PutRequest { key: b"k1".to_vec(), value: b"value".to_vec(), prev_kv: true, ..Default::default() }).await.unwrap();
    // etcd's applier reads a key after compacting (for the revision it answers): a range
    kv.compact(CompactionRequest { revision: 2, ..Default::default() }).await.unwrap();
    let after = scrape(&m);
    let grew = |family: &str| sum(&after, family, &[]) - sum(&before, family, &[]);
    assert_eq!(grew("etcd_mvcc_put_total"), 7.0, "6 puts and the txn's put");
    assert_eq!(grew("etcd_mvcc_delete_total"), 1.0);
    assert_eq!(grew("etcd_mvcc_range_total"), 4.0, "the range, the txn's compare, the prev_kv read, the compaction's read");
    // etcd evaluates a writing txn's compares in a read of their own: neither that read (one
    // range) nor the write after it (one put) is more than one op; the prev_kv put is
    assert_eq!(grew("etcd_mvcc_txn_total"), 1.0);
    assert_eq!(grew("etcd_debugging_mvcc_total_put_size_in_bytes"), 6.0 * 7.0 + 2.0);
    // revision 1, then 5 puts, the delete, the txn and the prev_kv put
    assert_eq!(value(&after, "etcd_debugging_mvcc_current_revision"), Some(9.0));
    assert!(grew("etcd_network_client_grpc_received_bytes_total") > 5.0 * 7.0);
    assert!(grew("etcd_network_client_grpc_sent_bytes_total") > 0.0);
    let grew_with = |family: &str, labels: &[&str]| sum(&after, family, labels) - sum(&before, family, labels);
    let put_labels = [r#"grpc_method="Put""#];
    assert_eq!(grew_with("grpc_server_msg_received_total", &put_labels), 6.0);
    assert_eq!(grew_with("grpc_server_msg_sent_total", &put_labels), 6.0);
    assert_eq!(grew_with("etcd_server_client_requests_total", &[r#"type="unary""#]), 10.0);
    let applies = grew_with("etcd_server_apply_duration_seconds_count", &[r#"op="Put""#, r#"success="true""#]);
    assert_eq!(applies, 6.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_stream_counts_as_handled_when_it_ends_and_its_events_are_counted() {
    let (_dir, m, mut kv) = single_member(&[]).await;
    let open = |b: &str| {
        let watch = [r#"grpc_service="etcdserverpb.Watch""#];
        sum(b, "grpc_server_started_total", &watch) - sum(b, "grpc_server_handled_total", &watch)
    };
    let before = scrape(&m);
    assert_eq!(open(&before), 0.0);

    let mut watch = WatchClient::connect(m.endpoint()).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let create = WatchCreateRequest { key: b"w".to_vec(), ..Default::default() };
    tx.send(WatchRequest { request_union: Some(RequestUnion::CreateRequest(create)) }).await.unwrap();
    let mut stream = watch.watch(ReceiverStream::new(rx)).await.unwrap().into_inner();
    stream.message().await.unwrap().expect("created");
    put(&mut kv, "w", "1").await.unwrap();
    let got = stream.message().await.unwrap().expect("an event");
    assert_eq!(got.events.len(), 1);

    let during = scrape(&m);
    assert_eq!(open(&during), 1.0, "the dashboard's active watch streams: started - handled");
    assert_eq!(value(&during, "etcd_debugging_mvcc_watch_stream_total"), Some(1.0));
    assert_eq!(value(&during, "etcd_debugging_mvcc_watcher_total"), Some(1.0));
    assert_eq!(sum(&during, "etcd_debugging_mvcc_events_total", &[]) - sum(&before, "etcd_debugging_mvcc_events_total", &[]), 1.0);

    drop(tx);
    drop(stream);
    drop(watch);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let after = scrape(&m);
        if open(&after) == 0.0 && value(&after, "etcd_debugging_mvcc_watch_stream_total") == Some(0.0) {
            break;
        }
        assert!(Instant::now() < deadline, "the ended stream is still counted open:\n{after}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Short raft timings keep the test quick.
const FAST: &[&str] = &["--heartbeat-interval", "50", "--election-timeout", "500"];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn peer_metrics_follow_the_traffic_of_a_three_member_cluster() {
    let dir = tempfile::tempdir().unwrap();
    // snapshots every 50 entries keeping 10: a follower cut off for 100 writes needs one
    let flags = [FAST, &["--snapshot-count", "50", "--experimental-snapshot-catchup-entries", "10"]].concat();
    let c = TestCluster::start(dir.path(), 3, &flags).await;
    let leader = c.wait_leader(&[0, 1, 2]).await;
    let mut kv = c.members[leader].ready_client().await;
    put(&mut kv, "warm", "up").await.unwrap();
    let before = scrape(&c.members[leader]);
    for i in 0..20 {
        put(&mut kv, &format!("k{i}"), &"v".repeat(100)).await.unwrap();
    }
    let after = scrape(&c.members[leader]);
    let sent = |b: &str| sum(b, "etcd_network_peer_sent_bytes_total", &[]);
    // every put goes to both followers: at least its value each time
    assert!(sent(&after) - sent(&before) >= 2.0 * 20.0 * 100.0, "sent {} -> {}", sent(&before), sent(&after));
    for f in (0..3).filter(|i| *i != leader) {
        let body = scrape(&c.members[f]);
        assert!(sum(&body, "etcd_network_peer_received_bytes_total", &[]) >= 20.0 * 100.0, "member {f}:\n{body}");
        assert_eq!(sum(&body, "etcd_network_active_peers", &[]), 2.0, "member {f} has both peers");
    }

    // the prober reports its first round trip within about 5 s
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        let body = scrape(&c.members[leader]);
        if sum(&body, "etcd_network_peer_round_trip_time_seconds_count", &[]) >= 2.0 {
            break body;
        }
        assert!(Instant::now() < deadline, "no round trip measured:\n{body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let missing = missing_families(&body, ETCD_3_5_PEER_FAMILIES);
    assert!(missing.is_empty(), "peer families etcd 3.5 serves that are missing: {missing:?}");

    // cut a follower off: the leader sees it disconnect and fails to send to it
    let follower = (leader + 1) % 3;
    c.partition(&[follower]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let _ = put(&mut kv, "during", "cut").await;
        let body = scrape(&c.members[leader]);
        let disconnected = sum(&body, "etcd_network_disconnected_peers_total", &[]);
        let failures = sum(&body, "etcd_network_peer_sent_failures_total", &[]);
        if disconnected >= 1.0 && failures >= 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "no disconnection or send failure counted:\n{body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // the follower falls behind the leader's log: it catches up from a snapshot
    for i in 0..100 {
        put(&mut kv, &format!("behind{i}"), "v").await.unwrap();
    }
    c.heal(&[follower]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (lb, fb) = (scrape(&c.members[leader]), scrape(&c.members[follower]));
        let sent = sum(&lb, "etcd_network_snapshot_send_success", &[]);
        let received = sum(&fb, "etcd_network_snapshot_receive_success", &[]);
        let saved = sum(&fb, "etcd_snap_db_save_total_duration_seconds_count", &[]);
        if sent >= 1.0 && received >= 1.0 && saved >= 1.0 {
            assert!(sum(&lb, "etcd_debugging_snap_save_total_duration_seconds_count", &[]) >= 1.0, "raft snapshots saved");
            assert_eq!(sum(&lb, "etcd_network_snapshot_send_inflights_total", &[]), 0.0);
            break;
        }
        assert!(Instant::now() < deadline, "no snapshot transfer counted:\nleader:\n{lb}\nfollower:\n{fb}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
