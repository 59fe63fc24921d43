//! A Txn of ranges only is served as etcd serves it: on the member, without a raft entry
//! (after the read index unless every op is serializable), with read permission checked on
//! every compare and range, counted in /metrics as the ranges of one read txn. Each scenario
//! runs against etcd-rs and, when installed, etcd 3.4.23 (/usr/bin/etcd, or $ETCD_BIN), and
//! both must answer alike.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{free_port, http_get, Member};
use etcd_proto::etcdserverpb::auth_client::AuthClient;
use etcd_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use etcd_proto::etcdserverpb::kv_client::KvClient;
use etcd_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use etcd_proto::etcdserverpb::request_op::Request as Op;
use etcd_proto::etcdserverpb::response_op::Response as OpResp;
use etcd_proto::etcdserverpb::{
    AuthEnableRequest, AuthenticateRequest, Compare, CompactionRequest, PutRequest, RangeRequest, RequestOp,
    StatusRequest, TxnRequest, TxnResponse,
};
use tonic::transport::Channel;

/// Raft timings for both implementations (etcd's flags, milliseconds).
const TIMING: [&str; 4] = ["--heartbeat-interval", "50", "--election-timeout", "500"];

fn etcd_binary() -> Option<PathBuf> {
    let path = std::env::var_os("ETCD_BIN").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/usr/bin/etcd"));
    path.exists().then_some(path)
}

fn etcd_rs_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_etcd-rs"))
}

fn range(key: &str, revision: i64, serializable: bool) -> RequestOp {
    RequestOp { request: Some(Op::RequestRange(RangeRequest { key: key.into(), revision, serializable, ..Default::default() })) }
}

fn value_is(key: &str, value: &str) -> Compare {
    Compare {
        key: key.into(),
        target: CompareTarget::Value as i32,
        result: CompareResult::Equal as i32,
        target_union: Some(TargetUnion::Value(value.into())),
        ..Default::default()
    }
}

fn mod_below(key: &str, rev: i64) -> Compare {
    Compare {
        key: key.into(),
        target: CompareTarget::Mod as i32,
        result: CompareResult::Less as i32,
        target_union: Some(TargetUnion::ModRevision(rev)),
        ..Default::default()
    }
}

fn txn(compare: Vec<Compare>, success: Vec<RequestOp>, failure: Vec<RequestOp>) -> TxnRequest {
    TxnRequest { compare, success, failure }
}

/// A Txn's answer without the member-specific header fields: branch, revisions, keys.
fn show(r: &Result<TxnResponse, tonic::Status>) -> String {
    fn body(t: &TxnResponse) -> String {
        let ops: Vec<String> = t
            .responses
            .iter()
            .map(|op| match &op.response {
                Some(OpResp::ResponseRange(r)) => {
                    let kvs: Vec<String> = r
                        .kvs
                        .iter()
                        .map(|kv| format!("{}={}@{}", String::from_utf8_lossy(&kv.key), String::from_utf8_lossy(&kv.value), kv.mod_revision))
                        .collect();
                    format!("range(rev {} count {} {:?})", r.header.as_ref().map_or(-1, |h| h.revision), r.count, kvs)
                }
                Some(OpResp::ResponseTxn(t)) => format!("txn({})", body(t)),
                other => format!("{other:?}"),
            })
            .collect();
        format!("succeeded {} rev {} {:?}", t.succeeded, t.header.as_ref().map_or(-1, |h| h.revision), ops)
    }
    match r {
        Ok(t) => body(t),
        Err(e) => format!("error {:?} {}", e.code(), e.message()),
    }
}

async fn raft_index(m: &Member) -> u64 {
    let ch = Channel::from_shared(m.endpoint()).unwrap().connect().await.unwrap();
    MaintenanceClient::new(ch).status(StatusRequest {}).await.unwrap().into_inner().raft_index
}

/// Waits (at most 10 s) until the raft index stays put for 500 ms: the entries a new member
/// proposes by itself (attributes, cluster version) are in.
async fn settled_raft_index(m: &Member) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = raft_index(m).await;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = raft_index(m).await;
        if now == last || Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}

/// A counter's value in a /metrics body (0 when absent).
fn counter(body: &str, name: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// One member of `bin` on a fresh data dir, ready.
async fn start_single(bin: PathBuf, dir: &std::path::Path) -> (Member, KvClient<Channel>) {
    let mut m = Member::new(&dir.join("m0.etcd"), &TIMING);
    m.bin = bin;
    m.start();
    let kv = m.ready_client().await;
    (m, kv)
}

/// The single-member scenario: what each Txn answered and how many raft entries it took.
async fn single_member_transcript(bin: PathBuf) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let (m, mut kv) = start_single(bin, dir.path()).await;
    let mut out = Vec::new();
    for (k, v) in [("a", "1"), ("b", "2"), ("a", "3"), ("k1", "v")] {
        kv.put(PutRequest { key: k.into(), value: v.into(), ..Default::default() }).await.unwrap();
    }
    let cases: Vec<(&str, TxnRequest)> = vec![
        ("compare true, ranges at now and at rev 2", txn(vec![value_is("a", "3")], vec![range("a", 0, false), range("a", 2, false)], vec![range("b", 0, false)])),
        ("compare false takes failure", txn(vec![mod_below("a", 3)], vec![range("a", 0, false)], vec![range("b", 0, false)])),
        ("two compares and one get", txn(vec![value_is("a", "3"), value_is("b", "2")], vec![range("b", 0, false)], vec![])),
        ("serializable", txn(vec![value_is("a", "3")], vec![range("a", 0, true)], vec![range("b", 0, true)])),
        ("range at a future revision", txn(vec![], vec![range("a", 100, false)], vec![])),
        ("failure branch at a future revision", txn(vec![value_is("a", "x")], vec![], vec![range("a", 100, false)])),
        ("empty", TxnRequest::default()),
    ];
    for (name, req) in cases {
        let before = settled_raft_index(&m).await;
        let r = kv.txn(req).await.map(|r| r.into_inner());
        let entries = raft_index(&m).await - before;
        out.push(format!("{name}: {} / raft entries {entries}", show(&r)));
    }

    // etcd counts a read-only Txn's compares and gets as the ranges of one read txn
    let before = http_get(&m, "/metrics").1;
    let two_compares_one_get = txn(vec![value_is("a", "3"), value_is("b", "2")], vec![range("b", 0, false)], vec![]);
    kv.txn(two_compares_one_get).await.unwrap();
    let after = http_get(&m, "/metrics").1;
    for name in ["etcd_mvcc_range_total", "etcd_mvcc_txn_total", "etcd_mvcc_put_total"] {
        out.push(format!("metrics: {name} +{}", counter(&after, name) - counter(&before, name)));
    }

    // a nested Txn is a write for etcd (isTxnReadonly looks one level deep): through raft
    let nested = txn(vec![], vec![RequestOp { request: Some(Op::RequestTxn(txn(vec![], vec![range("a", 0, false)], vec![]))) }], vec![]);
    let before = settled_raft_index(&m).await;
    let r = kv.txn(nested).await.map(|r| r.into_inner());
    out.push(format!("nested read-only: {} / raft entries {}", show(&r), raft_index(&m).await - before));

    kv.compact(CompactionRequest { revision: 3, physical: true }).await.unwrap();
    for (name, rev) in [("range at a compacted revision", 2), ("range at the compact revision", 3)] {
        let before = settled_raft_index(&m).await;
        let r = kv.txn(txn(vec![], vec![range("a", rev, false)], vec![])).await.map(|r| r.into_inner());
        out.push(format!("{name}: {} / raft entries {}", show(&r), raft_index(&m).await - before));
    }

    // auth: u1 may read [k, l) only; a compare is a read
    let ch = Channel::from_shared(m.endpoint()).unwrap().connect().await.unwrap();
    common::add_users_and_roles(&ch).await;
    let mut auth = AuthClient::new(ch.clone());
    auth.auth_enable(AuthEnableRequest {}).await.unwrap();
    let token = auth
        .authenticate(AuthenticateRequest { name: "u1".into(), password: "u1pw".into() })
        .await
        .unwrap()
        .into_inner()
        .token;
    let as_u1 = |t: TxnRequest| {
        let mut r = tonic::Request::new(t);
        r.metadata_mut().insert("token", token.parse().unwrap());
        r
    };
    let auth_cases: Vec<(&str, TxnRequest)> = vec![
        ("u1 compares and reads k1", txn(vec![value_is("k1", "v")], vec![range("k1", 0, false)], vec![])),
        ("u1 compares a, reads k1", txn(vec![value_is("a", "3")], vec![range("k1", 0, false)], vec![])),
        ("u1 reads a in the failure branch", txn(vec![value_is("k1", "v")], vec![range("k1", 0, false)], vec![range("a", 0, false)])),
    ];
    for (name, req) in auth_cases {
        let before = settled_raft_index(&m).await;
        let r = kv.txn(as_u1(req)).await.map(|r| r.into_inner());
        out.push(format!("{name}: {} / raft entries {}", show(&r), raft_index(&m).await - before));
    }
    drop(kv);
    drop(m);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_txns_take_no_raft_entry_and_answer_as_etcd() {
    let ours = single_member_transcript(etcd_rs_binary()).await;
    eprintln!("etcd-rs: {ours:#?}");
    let expect = |prefix: &str, want: &str| {
        let line = ours.iter().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no {prefix} in {ours:#?}"));
        assert!(line.contains(want), "{line}\nshould contain: {want}\nall: {ours:#?}");
    };
    expect("compare true, ranges at now and at rev 2", r#"succeeded true rev 5 ["range(rev 5 count 1 [\"a=3@4\"])", "range(rev 5 count 1 [\"a=1@2\"])"] / raft entries 0"#);
    expect("compare false takes failure", r#"succeeded false rev 5 ["range(rev 5 count 1 [\"b=2@3\"])"] / raft entries 0"#);
    expect("serializable", "succeeded true rev 5");
    expect("range at a future revision", "error OutOfRange etcdserver: mvcc: required revision is a future revision / raft entries 0");
    expect("failure branch at a future revision", "error OutOfRange etcdserver: mvcc: required revision is a future revision / raft entries 0");
    expect("empty", "succeeded true rev 5 [] / raft entries 0");
    expect("metrics: etcd_mvcc_range_total", "+3");
    expect("metrics: etcd_mvcc_txn_total", "+1");
    expect("nested read-only", "raft entries 1");
    expect("range at a compacted revision", "error OutOfRange etcdserver: mvcc: required revision has been compacted / raft entries 0");
    expect("range at the compact revision", "succeeded true rev 5 [\"range(rev 5 count 1 [\\\"a=1@2\\\"])\"] / raft entries 0");
    expect("u1 compares and reads k1", "succeeded true rev 5 [\"range(rev 5 count 1 [\\\"k1=v@5\\\"])\"]");
    expect("u1 compares a, reads k1", "error PermissionDenied etcdserver: permission denied");
    expect("u1 reads a in the failure branch", "error PermissionDenied etcdserver: permission denied");
    match etcd_binary() {
        Some(bin) => assert_eq!(ours, single_member_transcript(bin).await, "etcd-rs (left) and etcd (right) differ"),
        None => eprintln!("skipping the comparison with etcd: no /usr/bin/etcd (set ETCD_BIN)"),
    }
}

/// Three members of `bin`; the leader and one follower are then killed, and the follower
/// left (no leader now) is asked a serializable and a linearizable read-only Txn.
async fn leaderless_follower_transcript(bin: PathBuf) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let peer_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let initial: Vec<String> = (0..3).map(|i| format!("m{i}=http://127.0.0.1:{}", peer_ports[i])).collect();
    let mut members: Vec<Member> = (0..3)
        .map(|i| {
            let mut m = Member::new(&dir.path().join(format!("m{i}.etcd")), &TIMING);
            m.name = format!("m{i}");
            m.peer_port = peer_ports[i];
            m.initial_cluster = Some(initial.join(","));
            m.bin = bin.clone();
            m.start();
            m
        })
        .collect();
    let mut kv = members[0].ready_client().await;
    kv.put(PutRequest { key: "a".into(), value: "1".into(), ..Default::default() }).await.unwrap();
    for m in &members {
        common::wait_revision(m, 2).await;
    }
    let mut leader = None;
    for (i, m) in members.iter().enumerate() {
        let ch = Channel::from_shared(m.endpoint()).unwrap().connect().await.unwrap();
        let st = MaintenanceClient::new(ch).status(StatusRequest {}).await.unwrap().into_inner();
        if st.leader == st.header.unwrap().member_id {
            leader = Some(i);
        }
    }
    let leader = leader.expect("a leader");
    let follower = (0..3).find(|i| *i != leader).unwrap();
    for (i, m) in members.iter_mut().enumerate() {
        if i != follower {
            m.kill9();
        }
    }
    let ch = Channel::from_shared(members[follower].endpoint()).unwrap().connect().await.unwrap();
    let mut kv = KvClient::new(ch);
    let mut out = Vec::new();
    let serializable = txn(vec![value_is("a", "1")], vec![range("a", 0, true)], vec![]);
    let r = kv.txn(serializable).await.map(|r| r.into_inner());
    out.push(format!("serializable: {}", show(&r)));
    let mut linearizable = tonic::Request::new(txn(vec![value_is("a", "1")], vec![range("a", 0, false)], vec![]));
    linearizable.set_timeout(Duration::from_secs(30));
    let r = kv.txn(linearizable).await.map(|r| r.into_inner());
    out.push(format!("linearizable: {}", show(&r)));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaderless_follower_answers_a_serializable_read_only_txn_and_refuses_a_linearizable_one() {
    let ours = leaderless_follower_transcript(etcd_rs_binary()).await;
    eprintln!("etcd-rs: {ours:#?}");
    assert_eq!(ours[0], r#"serializable: succeeded true rev 2 ["range(rev 2 count 1 [\"a=1@2\"])"]"#, "{ours:#?}");
    assert!(ours[1].starts_with("linearizable: error"), "{ours:#?}");
    match etcd_binary() {
        Some(bin) => assert_eq!(ours, leaderless_follower_transcript(bin).await, "etcd-rs (left) and etcd (right) differ"),
        None => eprintln!("skipping the comparison with etcd: no /usr/bin/etcd (set ETCD_BIN)"),
    }
}
