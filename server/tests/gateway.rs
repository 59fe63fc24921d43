//! The gRPC gateway: etcd's `/v3/...` JSON endpoints answer as etcd's grpc-gateway does.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{http_get, http_post, single_member, Member};
use etcd_proto::etcdserverpb::SnapshotResponse;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_gateway_serves_kv_lease_and_maintenance_as_etcd() {
    let (_dir, m, _) = single_member(&[]).await;
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
    let (code, _) = http_post(&m, "/v3/maintenance/status", r#"{"unknown_field":1}"#);
    assert_eq!(code, 200, "unknown fields are ignored, as etcd's jsonpb decoder does");
}

/// A streaming gateway response read as it arrives: the status, then one chunk at a time.
struct ChunkedResponse {
    status: u16,
    headers: String,
    reader: BufReader<TcpStream>,
}

impl ChunkedResponse {
    /// POSTs `body` (whole, then the request is done) and reads the status line and headers.
    fn post(m: &Member, path: &str, headers: &[(&str, &str)], body: &str) -> ChunkedResponse {
        let addr = m.endpoint().trim_start_matches("http://").to_string();
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).and_then(|_| s.write_all(body.as_bytes())).unwrap();
        let mut reader = BufReader::new(s);
        let mut status_line = String::new();
        reader.read_line(&mut status_line).unwrap();
        let status = status_line.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let mut headers = String::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line == "\r\n" || line.is_empty() {
                break;
            }
            headers.push_str(&line.to_ascii_lowercase());
        }
        assert!(headers.contains("transfer-encoding: chunked"), "{headers}");
        ChunkedResponse { status, headers, reader }
    }

    /// The next chunk's text; None at the last (empty) chunk.
    fn next_chunk(&mut self) -> Option<String> {
        let mut size = String::new();
        self.reader.read_line(&mut size).unwrap();
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or_else(|_| panic!("chunk size line {size:?}"));
        let mut data = vec![0; size + 2];
        self.reader.read_exact(&mut data).unwrap();
        assert_eq!(&data[size..], b"\r\n");
        data.truncate(size);
        (size > 0).then(|| String::from_utf8(data).unwrap())
    }

    /// The next message's `result`, checking grpc-gateway's framing (one JSON line per chunk).
    fn next_result(&mut self) -> Option<serde_json::Value> {
        let chunk = self.next_chunk()?;
        let line = chunk.strip_suffix('\n').unwrap_or_else(|| panic!("a message ends with a newline: {chunk}"));
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        Some(v.get("result").unwrap_or_else(|| panic!("not a result: {line}")).clone())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_watch_streams_a_put_made_after_it() {
    let (_dir, m, _) = single_member(&[]).await;
    // two requests in one body, concatenated: "foo" = Zm9v, "bar" = YmFy
    let body = r#"{"create_request":{"key":"Zm9v"}}{"create_request":{"key":"YmFy","watch_id":"9"}}"#;
    let mut w = ChunkedResponse::post(&m, "/v3/watch", &[], body);
    assert_eq!(w.status, 200);
    let created = w.next_result().unwrap();
    assert_eq!(created["created"], true, "{created}");
    assert!(created.get("watch_id").is_none(), "watch ID 0 is omitted: {created}");
    let created = w.next_result().unwrap();
    assert_eq!((&created["created"], &created["watch_id"]), (&true.into(), &"9".into()), "{created}");

    let (code, put) = http_post(&m, "/v3/kv/put", r#"{"key":"Zm9v","value":"YmF6"}"#);
    assert_eq!(code, 200, "{put}");
    let put: serde_json::Value = serde_json::from_str(&put).unwrap();
    let event = w.next_result().expect("the watch goes on after the request body ended");
    assert!(event.get("watch_id").is_none(), "{event}");
    assert_eq!(event["header"]["revision"], put["header"]["revision"]);
    let kv = &event["events"][0]["kv"];
    assert_eq!((&kv["key"], &kv["value"]), (&"Zm9v".into(), &"YmF6".into()), "{event}");
    assert_eq!(kv["mod_revision"], put["header"]["revision"]);

    // the client going away ends the watch stream and its watchers
    assert_eq!(watchers(&m), 2);
    drop(w);
    wait_no_watchers(&m, "watchers left after the client disconnected");

    // a first message that does not parse is refused as grpc-gateway does
    let (code, err) = http_post(&m, "/v3/watch", "{bad");
    assert_eq!(code, 500, "{err}");
    assert!(err.ends_with(r#""code":2}"#), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_keepalive_answers_each_request_with_the_lease_ttl() {
    let (_dir, m, _) = single_member(&[]).await;
    let (code, grant) = http_post(&m, "/v3/lease/grant", r#"{"TTL":60,"ID":7}"#);
    assert_eq!(code, 200, "{grant}");
    let mut ka = ChunkedResponse::post(&m, "/v3/lease/keepalive", &[], "{\"ID\":7}\n{\"ID\":\"8\"}\n");
    assert_eq!(ka.status, 200);
    let first = ka.next_result().unwrap();
    assert_eq!((&first["ID"], &first["TTL"]), (&"7".into(), &"60".into()), "{first}");
    let unknown = ka.next_result().unwrap();
    assert_eq!(unknown["ID"], "8");
    assert!(unknown.get("TTL").is_none(), "an unknown lease answers TTL 0: {unknown}");
    assert!(ka.next_result().is_none(), "the answers end with the requests");

    let mut empty = ChunkedResponse::post(&m, "/v3/lease/keepalive", &[], "");
    assert_eq!(empty.status, 200);
    assert!(empty.next_chunk().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_snapshot_chunks_end_with_the_sha256_of_the_file() {
    use sha2::Digest;
    let (_dir, m, _) = single_member(&[]).await;
    for i in 0..50 {
        let body = format!(r#"{{"key":"{}","value":"{}"}}"#, b64(format!("k{i}").as_bytes()), b64(&[b'v'; 2000]));
        assert_eq!(http_post(&m, "/v3/kv/put", &body).0, 200);
    }
    let mut snap = ChunkedResponse::post(&m, "/v3/maintenance/snapshot", &[], "");
    assert_eq!(snap.status, 200);
    let mut file = Vec::new();
    let mut messages = 0;
    while let Some(r) = snap.next_result() {
        let msg: SnapshotResponse = serde_json::from_value(r).unwrap();
        file.extend_from_slice(&msg.blob);
        messages += 1;
    }
    assert!(messages > 2, "100 KB of values come in several 32 KiB chunks plus the hash: {messages}");
    assert!(file.len() > 100_000 + 32);
    let (data, sum) = file.split_at(file.len() - 32);
    assert_eq!(sha2::Sha256::digest(data).as_slice(), sum);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_stream_errors_come_as_grpc_gateway_error_objects() {
    let (_dir, m, _) = single_member(&[]).await;
    for (path, body) in [
        ("/v3/auth/user/add", r#"{"name":"root","password":"pw"}"#),
        ("/v3/auth/user/grant", r#"{"user":"root","role":"root"}"#),
        ("/v3/auth/enable", ""),
    ] {
        let (code, out) = http_post(&m, path, body);
        assert_eq!(code, 200, "{path}: {out}");
    }
    // as etcd: the status comes from the error, the error object is the whole body
    let mut snap = ChunkedResponse::post(&m, "/v3/maintenance/snapshot", &[("Authorization", "bad")], "");
    assert_eq!(snap.status, 500, "{}", snap.headers);
    assert_eq!(
        snap.next_chunk().unwrap(),
        r#"{"error":{"grpc_code":2,"http_code":500,"message":"auth: invalid auth token","http_status":"Internal Server Error"}}"#
    );
    assert!(snap.next_chunk().is_none());
    // a watch the token may not read is created and canceled at once, naming why
    let mut w = ChunkedResponse::post(&m, "/v3/watch", &[("Authorization", "bad")], r#"{"create_request":{"key":"Zm9v"}}"#);
    assert_eq!(w.status, 200);
    let refused = w.next_result().unwrap();
    assert_eq!(refused["canceled"], true);
    assert_eq!(refused["cancel_reason"], "rpc error: code = Unauthenticated desc = etcdserver: invalid auth token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_txn_op_without_a_request_is_refused_with_key_not_found() {
    let (_dir, m, _) = single_member(&[]).await;
    // the bodies of etcd's TestV3CurlTxn: Go's jsonpb (camelCase, enum names), then one whose
    // oneofs are named as Go's struct fields, which jsonpb skips as unknown: empty ops
    let txn = r#"{"compare":[{"target":"CREATE","key":"Zm9v","createRevision":"0"}],"success":[{"requestPut":{"key":"Zm9v","value":"YmFy"}}]}"#;
    let (code, out) = http_post(&m, "/v3/kv/txn", txn);
    assert_eq!(code, 200, "{out}");
    assert!(out.contains(r#""succeeded":true,"responses":[{"response_put":{"header":{"revision":"2"}}}]"#), "{out}");
    let not_found = r#"{"error":"etcdserver: key not found","message":"etcdserver: key not found","code":3}"#;
    for (prefix, body) in [
        ("/v3", r#"{"compare":[{"result":0,"target":1,"key":"Zm9v","TargetUnion":null}],"success":[{"Request":{"RequestPut":{"key":"Zm9v","value":"YmFy"}}}]}"#),
        ("/v3beta", r#"{"failure":[{}]}"#),
        ("/v3", r#"{"success":[{"request_txn":{"success":[{}]}}]}"#),
    ] {
        let (code, out) = http_post(&m, &format!("{prefix}/kv/txn"), body);
        assert_eq!((code, out.as_str()), (400, not_found), "{body}");
    }
    let (_, range) = http_post(&m, "/v3/kv/range", r#"{"key":"Zm9v"}"#);
    assert!(range.contains(r#""revision":"2""#), "a refused txn writes nothing: {range}");
}

/// The JSON of a successful gateway call.
fn post_ok(m: &Member, path: &str, body: &str) -> serde_json::Value {
    let (code, out) = http_post(m, path, body);
    assert_eq!(code, 200, "{path}: {out}");
    serde_json::from_str(&out).unwrap()
}

/// grpc-gateway's body for an error of gRPC code Unknown (HTTP 500).
fn unknown_error(msg: &str) -> (u16, String) {
    let quoted = serde_json::Value::from(msg).to_string();
    (500, format!(r#"{{"error":{quoted},"message":{quoted},"code":2}}"#))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_election_campaigns_proclaims_observes_and_resigns_as_etcd() {
    let (_dir, m, _) = single_member(&[]).await;
    for prefix in ["/v3", "/v3beta"] {
        let name = b64(format!("{prefix}/election").as_bytes());
        let path = |p: &str| format!("{prefix}/election/{p}");
        let missing = unknown_error("\"leader\" field must be provided");
        assert_eq!(http_post(&m, &path("proclaim"), r#"{"value":"djI="}"#), missing);
        assert_eq!(http_post(&m, &path("resign"), "{}"), missing);
        let no_leader = unknown_error("election: no leader");
        assert_eq!(http_post(&m, &path("leader"), &format!(r#"{{"name":"{name}"}}"#)), no_leader);

        // no lease given: the campaign runs on a new lease of 60 s, as etcd's session
        let campaign = post_ok(&m, &path("campaign"), &format!(r#"{{"name":"{name}","value":"djE="}}"#));
        let leader = campaign["leader"].clone();
        let lease: i64 = leader["lease"].as_str().unwrap().parse().unwrap();
        assert_eq!(leader["name"], name.as_str());
        assert_eq!(leader["key"], b64(format!("{prefix}/election/{lease:x}").as_bytes()));
        assert_eq!(leader["rev"], campaign["header"]["revision"]);
        let ttl = post_ok(&m, "/v3/lease/timetolive", &format!(r#"{{"ID":"{lease}"}}"#));
        assert_eq!(ttl["grantedTTL"], "60", "{ttl}");

        let mut observe = ChunkedResponse::post(&m, &path("observe"), &[], &format!(r#"{{"name":"{name}"}}"#));
        assert_eq!(observe.status, 200);
        let now = observe.next_result().unwrap();
        assert_eq!((&now["kv"]["key"], &now["kv"]["value"]), (&leader["key"], &"djE=".into()), "{now}");

        let proclaim = post_ok(&m, &path("proclaim"), &format!(r#"{{"leader":{leader},"value":"djI="}}"#));
        let next = observe.next_result().unwrap();
        assert_eq!(next["kv"]["value"], "djI=", "{next}");
        assert_eq!(next["header"]["revision"], proclaim["header"]["revision"]);
        let current = post_ok(&m, &path("leader"), &format!(r#"{{"name":"{name}"}}"#));
        assert_eq!(current["kv"]["value"], "djI=");

        // the observer going away ends its watch
        assert_eq!(watchers(&m), 1);
        drop(observe);
        wait_no_watchers(&m, "the observe watch outlived its client");

        post_ok(&m, &path("resign"), &format!(r#"{{"leader":{leader}}}"#));
        let stale = format!(r#"{{"leader":{leader},"value":"djM="}}"#);
        assert_eq!(http_post(&m, &path("proclaim"), &stale), unknown_error("election: not leader"));
        assert_eq!(http_post(&m, &path("leader"), &format!(r#"{{"name":"{name}"}}"#)), no_leader);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_lock_takes_a_session_lease_and_answers_errors_as_code_unknown() {
    let (_dir, m, _) = single_member(&[]).await;
    for prefix in ["/v3", "/v3beta"] {
        let before = lease_ids(&m);
        let lock = post_ok(&m, &format!("{prefix}/lock/lock"), r#"{"name":"bQ=="}"#);
        let granted: Vec<i64> = lease_ids(&m).into_iter().filter(|id| !before.contains(id)).collect();
        let [lease] = granted[..] else { panic!("one lease granted for the lock: {granted:?}") };
        assert_eq!(lock["key"], b64(format!("m/{lease:x}").as_bytes()), "{lock}");
        let unlock = post_ok(&m, &format!("{prefix}/lock/unlock"), &format!(r#"{{"key":{}}}"#, lock["key"]));
        assert!(unlock["header"]["revision"].as_str().is_some(), "{unlock}");

        let (code, out) = http_post(&m, &format!("{prefix}/lock/lock"), r#"{"name":"bQ==","lease":"123"}"#);
        assert_eq!((code, out), unknown_error("etcdserver: requested lease not found"));
        let (code, out) = http_post(&m, &format!("{prefix}/lock/unlock"), "{}");
        assert_eq!((code, out), unknown_error("etcdserver: key is not provided"));
    }
    let (code, out) = http_post(&m, "/v3/lock/lock", r#"{"name":"bQ==""#);
    assert_eq!((code, out.as_str()), (400, r#"{"error":"unexpected EOF","message":"unexpected EOF","code":3}"#));
}

fn lease_ids(m: &Member) -> Vec<i64> {
    let leases = post_ok(m, "/v3/lease/leases", "");
    let ids = leases["leases"].as_array().cloned().unwrap_or_default();
    ids.iter().map(|l| l["ID"].as_str().unwrap().parse().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defragment_and_move_leader_answer_without_a_header() {
    use etcd_proto::etcdserverpb::maintenance_client::MaintenanceClient;
    use etcd_proto::etcdserverpb::{DefragmentRequest, MoveLeaderRequest, StatusRequest};
    let (_dir, m, _) = single_member(&[]).await;
    let mut c = MaintenanceClient::connect(m.endpoint()).await.unwrap();
    let defrag = c.defragment(DefragmentRequest {}).await.unwrap().into_inner();
    assert!(defrag.header.is_none(), "{defrag:?}");
    let me = c.status(StatusRequest {}).await.unwrap().into_inner().header.unwrap().member_id;
    let moved = c.move_leader(MoveLeaderRequest { target_id: me }).await.unwrap().into_inner();
    assert!(moved.header.is_none(), "{moved:?}");

    assert_eq!(http_post(&m, "/v3/maintenance/defragment", "{}"), (200, "{}".to_string()));
    let to_self = format!(r#"{{"targetID":"{me}"}}"#);
    assert_eq!(http_post(&m, "/v3/maintenance/transfer-leadership", &to_self), (200, "{}".to_string()));
}

/// etcd_debugging_mvcc_watcher_total from /metrics.
fn watchers(m: &Member) -> u64 {
    let (_, metrics) = http_get(m, "/metrics");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("etcd_debugging_mvcc_watcher_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("watcher gauge")
}

/// Waits (bounded) until the member has no watchers left.
fn wait_no_watchers(m: &Member, why_not: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while watchers(m) != 0 {
        assert!(std::time::Instant::now() < deadline, "{why_not}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn b64(data: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
