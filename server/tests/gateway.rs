//! The gRPC gateway: etcd's `/v3/...` JSON endpoints answer as etcd's grpc-gateway does.

mod common;

use common::{http_post, Member};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_gateway_serves_kv_lease_and_maintenance_as_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = Member::new(&dir.path().join("m.etcd"), &[]);
    m.start();
    m.ready_client().await;
    // "foo" = Zm9v, "bar" = YmFy; int64 fields are strings, field names as in the .proto
    let (code, put) = http_post(&m, "/v3/kv/put", r#"{"key":"Zm9v","value":"YmFy"}"#);
    assert_eq!(code, 200, "{put}");
    let put: serde_json::Value = serde_json::from_str(&put).unwrap();
    let rev = put["header"]["revision"].as_str().unwrap().to_string();
    let (_, range) = http_post(&m, "/v3/kv/range", r#"{"key":"Zm9v"}"#);
    let range: serde_json::Value = serde_json::from_str(&range).unwrap();
    assert_eq!(range["kvs"][0]["value"], "YmFy");
    assert_eq!(range["kvs"][0]["mod_revision"], rev.as_str());
    assert_eq!(range["count"], "1");
    let (_, empty) = http_post(&m, "/v3beta/kv/range", r#"{"key":"bm8="}"#);
    assert!(!empty.contains("kvs") && !empty.contains("count"), "zero values are omitted: {empty}");

    let (code, err) = http_post(&m, "/v3/kv/range", r#"{"key":"Zm9v","revision":"100"}"#);
    assert_eq!(code, 400);
    let msg = "etcdserver: mvcc: required revision is a future revision";
    assert_eq!(err, format!(r#"{{"error":"{msg}","message":"{msg}","code":11}}"#));
    let (code, _) = http_post(&m, "/v3/kv/put", "{bad");
    assert_eq!(code, 400);

    let (_, grant) = http_post(&m, "/v3/lease/grant", r#"{"TTL":60,"ID":7}"#);
    assert!(grant.contains(r#""ID":"7","TTL":"60""#), "{grant}");
    let (code, _) = http_post(&m, "/v3/kv/lease/revoke", r#"{"ID":7}"#);
    assert_eq!(code, 200);
    let (code, _) = http_post(&m, "/v3/lease/revoke", r#"{"ID":7}"#);
    assert_eq!(code, 404);

    let (code, status) = http_post(&m, "/v3/maintenance/status", "");
    assert_eq!(code, 200);
    assert!(status.contains(r#""version":"3.5.17""#) && status.contains(r#""dbSize":""#), "{status}");
    let (_, members) = http_post(&m, "/v3/cluster/member/list", "");
    assert!(members.contains(r#""peerURLs":["#), "{members}");
    let (code, _) = http_post(&m, "/v3/watch", "{}");
    assert_eq!(code, 501);
}
