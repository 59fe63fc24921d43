//! KV.RangeStream (etcd 3.7) end to end: merged chunks equal Range's answer, its refusals are
//! etcd's, auth is checked as for Range, the revision stays pinned across chunks, and concurrent
//! streams sharing the reader threads each get their own answer.

mod common;

use common::{single_member, Member};
use etcd_proto::authpb::{permission::Type as PermType, Permission};
use etcd_proto::etcdserverpb::auth_client::AuthClient;
use etcd_proto::etcdserverpb::kv_client::KvClient;
use etcd_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use etcd_proto::etcdserverpb::{
    request_op, AuthEnableRequest, AuthRoleAddRequest, AuthRoleGrantPermissionRequest, AuthRoleRevokePermissionRequest,
    AuthUserAddRequest, AuthUserGrantRoleRequest, AuthenticateRequest, CompactionRequest, DeleteRangeRequest,
    PutRequest, RangeRequest, RangeResponse, RangeStreamResponse, RequestOp, TxnRequest,
};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

/// `msg` as a request carrying `token` (if any) the way clientv3 sends it.
fn with_token<T>(msg: T, token: Option<&str>) -> Request<T> {
    let mut r = Request::new(msg);
    if let Some(t) = token {
        r.metadata_mut().insert("token", t.parse().unwrap());
    }
    r
}

/// Every chunk of a RangeStream, or the error that ended it (with the keys received before).
async fn chunks(kv: &mut KvClient<Channel>, req: RangeRequest, token: Option<&str>) -> Result<Vec<RangeResponse>, (Status, usize)> {
    let mut stream = kv.range_stream(with_token(req, token)).await.map_err(|e| (e, 0))?.into_inner();
    let mut out: Vec<RangeResponse> = Vec::new();
    loop {
        match stream.message().await {
            Ok(Some(c)) => out.push(c.range_response.expect("a chunk carries a range_response")),
            Ok(None) => return Ok(out),
            Err(e) => return Err((e, out.iter().map(|c| c.kvs.len()).sum())),
        }
    }
}

/// The protobuf merge of a stream's chunks, as clientv3's GetStreamToGetResponse builds it.
fn merge(chunks: Vec<RangeResponse>) -> RangeResponse {
    let mut all = RangeResponse::default();
    for c in chunks {
        all.kvs.extend(c.kvs);
        all.header = c.header.or(all.header);
        all.more |= c.more;
        if c.count != 0 {
            all.count = c.count;
        }
    }
    all
}

async fn range(kv: &mut KvClient<Channel>, req: RangeRequest, token: Option<&str>) -> Result<RangeResponse, Status> {
    kv.range(with_token(req, token)).await.map(|r| r.into_inner())
}

fn req(key: &str, end: &str, with: impl FnOnce(&mut RangeRequest)) -> RangeRequest {
    let mut r = RangeRequest { key: key.into(), range_end: end.into(), ..Default::default() };
    with(&mut r);
    r
}

/// Puts `n` keys `{prefix}{i:05}` with values of `size` bytes (varying a little), `per_txn` in
/// each txn.
async fn load(kv: &mut KvClient<Channel>, prefix: &str, n: usize, size: usize, per_txn: usize) -> i64 {
    let mut rev = 0;
    for start in (0..n).step_by(per_txn) {
        let success = (start..n.min(start + per_txn))
            .map(|i| RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: format!("{prefix}{i:05}").into(),
                    value: vec![b'a' + (i % 26) as u8; size + i % 7],
                    ..Default::default()
                })),
            })
            .collect();
        let resp = kv.txn(TxnRequest { success, ..Default::default() }).await.unwrap().into_inner();
        rev = resp.header.unwrap().revision;
    }
    rev
}

/// Receives the rest of a stream that must end in an error: the error and the keys received in
/// all (`received` before).
async fn rest_until_error(stream: &mut tonic::Streaming<RangeStreamResponse>, mut received: usize) -> (Status, usize) {
    loop {
        match stream.message().await {
            Ok(Some(c)) => received += c.range_response.unwrap().kvs.len(),
            Ok(None) => panic!("the stream ended without an error after {received} keys"),
            Err(e) => return (e, received),
        }
    }
}

fn status(e: &Status) -> (Code, &str) {
    (e.code(), e.message())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merged_chunks_equal_range_for_prefixes_limits_keys_only_count_only_revisions_and_sort_targets() {
    // a small request size makes chunks of a few keys, so every request spans many chunks
    let (_dir, _m, mut kv) = single_member(&["--max-request-bytes", "4096"]).await;
    load(&mut kv, "k", 300, 100, 20).await;
    kv.delete_range(DeleteRangeRequest { key: "k00100".into(), range_end: "k00150".into(), ..Default::default() })
        .await
        .unwrap();
    let old = load(&mut kv, "k002", 10, 3, 20).await - 1;
    let cases = [
        req("k", "l", |_| {}),
        req("\0", "\0", |_| {}),
        req("k00042", "", |_| {}),
        req("nothing", "", |_| {}),
        req("k", "l", |r| r.limit = 7),
        req("k", "l", |r| r.limit = 249),
        req("k", "l", |r| r.limit = 250),
        req("k", "l", |r| r.limit = 1000),
        req("k", "l", |r| r.limit = -1),
        req("k", "l", |r| r.keys_only = true),
        req("k", "l", |r| r.count_only = true),
        req("k", "l", |r| r.revision = old),
        req("k", "l", |r| r.revision = 2),
        req("k", "l", |r| r.serializable = true),
        req("k", "l", |r| r.sort_order = SortOrder::Ascend as i32),
        req("k", "l", |r| r.sort_target = SortTarget::Value as i32),
        req("k", "l", |r| {
            r.sort_target = SortTarget::Mod as i32;
            r.limit = 40
        }),
    ];
    for (i, r) in cases.into_iter().enumerate() {
        let want = range(&mut kv, r.clone(), None).await.unwrap();
        let got = chunks(&mut kv, r, None).await.unwrap();
        let last = got.len() - 1;
        for (j, c) in got.iter().enumerate() {
            assert_eq!(c.header.is_some(), j == last, "case {i}: the final chunk alone carries the header");
            assert!(j == last || (!c.more && c.count == 0), "case {i} chunk {j}: more and count on the final chunk only");
        }
        if want.kvs.len() > 20 {
            assert!(got.len() > 2, "case {i}: {} keys came in {} chunks", want.kvs.len(), got.len());
        }
        assert_eq!(merge(got), want, "case {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_etcds_and_compacted_or_future_revisions_fail_as_range_does() {
    let (_dir, _m, mut kv) = single_member(&[]).await;
    load(&mut kv, "k", 20, 10, 10).await;
    let rev = load(&mut kv, "x", 3, 10, 1).await;
    kv.compact(CompactionRequest { revision: rev - 1, physical: true }).await.unwrap();
    let refused = [
        (req("", "", |_| {}), Code::InvalidArgument, "etcdserver: key is not provided"),
        (req("k", "l", |r| r.sort_order = 9), Code::InvalidArgument, "etcdserver: invalid sort option"),
        (req("k", "l", |r| r.sort_target = 9), Code::InvalidArgument, "etcdserver: invalid sort option"),
        (req("k", "l", |r| r.sort_order = SortOrder::Descend as i32), Code::Unimplemented, "RangeStream does not support custom sort orders"),
        (
            req("k", "l", |r| {
                r.sort_order = SortOrder::Ascend as i32;
                r.sort_target = SortTarget::Create as i32
            }),
            Code::Unimplemented,
            "RangeStream does not support custom sort orders",
        ),
        (req("k", "l", |r| r.min_mod_revision = 2), Code::Unimplemented, "RangeStream does not support revision filters"),
        (req("k", "l", |r| r.max_create_revision = 9), Code::Unimplemented, "RangeStream does not support revision filters"),
    ];
    for (r, code, msg) in refused {
        let (e, _) = chunks(&mut kv, r, None).await.unwrap_err();
        assert_eq!(status(&e), (code, msg));
    }
    for r in [req("k", "l", |r| r.revision = 2), req("k", "l", |r| r.revision = rev + 10)] {
        let want = range(&mut kv, r.clone(), None).await.unwrap_err();
        let (got, received) = chunks(&mut kv, r, None).await.unwrap_err();
        assert_eq!(status(&got), status(&want));
        assert_eq!(received, 0);
        assert_eq!(got.code(), Code::OutOfRange);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_after_the_first_chunk_are_not_seen_and_a_compaction_past_its_revision_ends_the_stream() {
    let (_dir, _m, mut kv) = single_member(&[]).await;
    // 8 MiB: more than the client's HTTP/2 window and the server's send buffer, so the server
    // cannot have read the whole range ahead of the client
    let rev = load(&mut kv, "k", 800, 10 * 1024, 100).await;
    let mut big = kv.clone().max_decoding_message_size(usize::MAX);
    let want = range(&mut big, req("k", "l", |_| {}), None).await.unwrap();

    let mut pinned = kv.range_stream(req("k", "l", |_| {})).await.unwrap().into_inner();
    let mut got = vec![pinned.message().await.unwrap().unwrap().range_response.unwrap()];
    // new keys late in the range and at its end, a deleted stretch in the middle
    load(&mut kv, "k0070", 3, 1, 100).await;
    load(&mut kv, "k0099", 2, 1, 100).await;
    kv.delete_range(DeleteRangeRequest { key: "k00500".into(), range_end: "k00600".into(), ..Default::default() })
        .await
        .unwrap();
    while let Some(c) = pinned.message().await.unwrap() {
        got.push(c.range_response.unwrap());
    }
    let got = merge(got);
    assert_eq!(got.header.as_ref().unwrap().revision, rev);
    assert_eq!(got, want, "the stream reads at the revision of its first chunk");

    let mut stream = kv.range_stream(req("k", "l", |_| {})).await.unwrap().into_inner();
    let first = stream.message().await.unwrap().unwrap().range_response.unwrap().kvs.len();
    let now = common::put(&mut kv, "zz", "advance").await.unwrap();
    kv.compact(CompactionRequest { revision: now, physical: true }).await.unwrap();
    let (err, received) = rest_until_error(&mut stream, first).await;
    assert_eq!(status(&err), (Code::OutOfRange, "etcdserver: mvcc: required revision has been compacted"));
    assert!(received < 800, "{received}");
}

async fn auth_setup(m: &Member, kv: &mut KvClient<Channel>) -> (AuthClient<Channel>, String, String) {
    let mut auth = AuthClient::new(Channel::from_shared(m.endpoint()).unwrap().connect().await.unwrap());
    for (name, pw) in [("root", "rootpw"), ("alice", "alicepw")] {
        auth.user_add(AuthUserAddRequest { name: name.into(), password: pw.into(), ..Default::default() }).await.unwrap();
    }
    auth.user_grant_role(AuthUserGrantRoleRequest { user: "root".into(), role: "root".into() }).await.unwrap();
    auth.role_add(AuthRoleAddRequest { name: "readers".into() }).await.unwrap();
    let perm = Permission { perm_type: PermType::Read as i32, key: b"/data/".to_vec(), range_end: b"/data0".to_vec() };
    auth.role_grant_permission(AuthRoleGrantPermissionRequest { name: "readers".into(), perm: Some(perm) }).await.unwrap();
    auth.user_grant_role(AuthUserGrantRoleRequest { user: "alice".into(), role: "readers".into() }).await.unwrap();
    load(kv, "/data/", 2000, 4 * 1024, 100).await;
    load(kv, "/other/", 10, 10, 100).await;
    auth.auth_enable(AuthEnableRequest {}).await.unwrap();
    let login = |name: &'static str, password: &'static str| {
        let mut auth = auth.clone();
        async move {
            let r = auth.authenticate(AuthenticateRequest { name: name.into(), password: password.into() }).await;
            r.unwrap().into_inner().token
        }
    };
    let root = login("root", "rootpw").await;
    let alice = login("alice", "alicepw").await;
    (auth, root, alice)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_allows_and_refuses_as_for_range_and_a_permission_change_ends_a_running_stream() {
    let (_dir, m, mut kv) = single_member(&["--bcrypt-cost", "4"]).await;
    let (mut auth, root, alice) = auth_setup(&m, &mut kv).await;

    let data = req("/data/", "/data0", |r| r.keys_only = true);
    let want = range(&mut kv, data.clone(), Some(&alice)).await.unwrap();
    assert_eq!(want.kvs.len(), 2000);
    assert_eq!(merge(chunks(&mut kv, data.clone(), Some(&alice)).await.unwrap()), want);

    for (r, token) in [
        (req("/other/", "/other0", |_| {}), Some(alice.as_str())),
        (req("/data/", "/data1", |_| {}), Some(alice.as_str())),
        (req("\0", "\0", |_| {}), Some(alice.as_str())),
        (req("/data/", "/data0", |_| {}), None),
        (req("/data/", "/data0", |_| {}), Some("not-a-token")),
    ] {
        let want = range(&mut kv, r.clone(), token).await.unwrap_err();
        let (got, received) = chunks(&mut kv, r, token).await.unwrap_err();
        assert_eq!(status(&got), status(&want));
        assert_eq!(received, 0);
    }
    assert_eq!(merge(chunks(&mut kv, req("\0", "\0", |_| {}), Some(&root)).await.unwrap()).kvs.len(), 2010);

    // revoking alice's permission after her stream started: no chunk read after it is sent
    let mut stream = kv.range_stream(with_token(req("/data/", "/data0", |_| {}), Some(&alice))).await.unwrap().into_inner();
    let first = stream.message().await.unwrap().unwrap().range_response.unwrap().kvs.len();
    let revoke = AuthRoleRevokePermissionRequest { role: "readers".into(), key: b"/data/".to_vec(), range_end: b"/data0".to_vec() };
    auth.role_revoke_permission(with_token(revoke, Some(&root))).await.unwrap();
    let (err, received) = rest_until_error(&mut stream, first).await;
    assert_eq!(status(&err), (Code::InvalidArgument, "etcdserver: revision of auth store is old"));
    assert!(received < 2000, "{received}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_streams_beyond_the_reader_threads_each_merge_to_range_and_a_stream_dropped_midway_does_not_stall_them() {
    // chunks of a few keys: eight streams at once interleave many chunk reads on the (at most
    // four) reader threads they share
    let (_dir, _m, mut kv) = single_member(&["--max-request-bytes", "4096"]).await;
    load(&mut kv, "c", 400, 100, 20).await;
    // a stream the client drops after its first chunk: its reader must keep serving the others
    let mut dropped = kv.range_stream(req("c", "d", |_| {})).await.unwrap().into_inner();
    assert!(dropped.message().await.unwrap().is_some());
    drop(dropped);
    let cases: Vec<RangeRequest> = (0..8)
        .map(|i| req(&format!("c{:05}", i * 10), "d", |r| r.keys_only = i % 2 == 1))
        .collect();
    let mut lists = tokio::task::JoinSet::new();
    for (i, r) in cases.iter().cloned().enumerate() {
        let mut kv = kv.clone();
        lists.spawn(async move { (i, chunks(&mut kv, r, None).await) });
    }
    let mut done = 0;
    while let Some(joined) = tokio::time::timeout(std::time::Duration::from_secs(60), lists.join_next()).await.expect("streams finish") {
        let (i, got) = joined.unwrap();
        let got = got.unwrap_or_else(|(e, n)| panic!("stream {i} failed after {n} keys: {e:?}"));
        assert!(got.len() > 2, "stream {i} came in {} chunks", got.len());
        let want = range(&mut kv, cases[i].clone(), None).await.unwrap();
        assert_eq!(merge(got), want, "stream {i}");
        done += 1;
    }
    assert_eq!(done, cases.len());
}
