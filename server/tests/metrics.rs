//! `/metrics` on the client port: etcd's metric names, values that follow the server.

mod common;

use common::{http_get, put, single_member};

fn value(body: &str, series: &str) -> Option<f64> {
    body.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_expose_etcds_names_and_follow_the_server() {
    let (_dir, m, mut kv) = single_member(&[]).await;
    let (code, before) = http_get(&m, "/metrics");
    assert_eq!(code, 200);
    assert_eq!(value(&before, "etcd_server_has_leader"), Some(1.0));
    assert_eq!(value(&before, "etcd_server_is_leader"), Some(1.0));
    assert_eq!(value(&before, "etcd_server_leader_changes_seen_total"), Some(1.0));
    assert!(before.contains("etcd_server_version{server_version=\"3.5.17\"} 1"), "{before}");
    assert!(value(&before, "etcd_mvcc_db_total_size_in_bytes").unwrap() > 0.0);
    assert!(value(&before, "process_resident_memory_bytes").unwrap() > 0.0);

    for i in 0..10 {
        put(&mut kv, &format!("k{i}"), "v").await.unwrap();
    }
    let (_, after) = http_get(&m, "/metrics");
    let applied = |b: &str| value(b, "etcd_server_proposals_applied_total").unwrap();
    assert!(applied(&after) >= applied(&before) + 10.0);
    assert_eq!(value(&after, "etcd_debugging_mvcc_keys_total"), Some(10.0));
    let fsyncs = |b: &str| value(b, "etcd_disk_wal_fsync_duration_seconds_count").unwrap();
    assert!(fsyncs(&after) >= fsyncs(&before) + 10.0, "one fsync per sequential put at least");
    let puts = r#"grpc_server_handled_total{grpc_code="OK",grpc_method="Put",grpc_service="etcdserverpb.KV",grpc_type="unary"}"#;
    assert_eq!(value(&after, puts), Some(10.0), "{after}");
}
