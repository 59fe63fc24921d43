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
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while watchers(&m) != 0 {
        assert!(std::time::Instant::now() < deadline, "watchers left after the client disconnected");
        std::thread::sleep(Duration::from_millis(50));
    }

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

/// etcd_debugging_mvcc_watcher_total from /metrics.
fn watchers(m: &Member) -> u64 {
    let (_, metrics) = http_get(m, "/metrics");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("etcd_debugging_mvcc_watcher_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("watcher gauge")
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
