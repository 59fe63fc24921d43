//! Backups: Maintenance.Snapshot streams etcd's file format, `etcdutl-rs snapshot status`
//! reads it as etcdutl does, and `etcdutl-rs snapshot restore` turns it into a new member that
//! serves the same keys, revisions, leases and users.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{single_member, Member};
use etcd_proto::etcdserverpb::auth_client::AuthClient;
use etcd_proto::etcdserverpb::cluster_client::ClusterClient;
use etcd_proto::etcdserverpb::kv_client::KvClient;
use etcd_proto::etcdserverpb::lease_client::LeaseClient;
use etcd_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use etcd_proto::etcdserverpb::{
    AuthEnableRequest, AuthUserAddRequest, AuthUserGrantRoleRequest, AuthenticateRequest, CompactionRequest,
    DeleteRangeRequest, LeaseGrantRequest, LeaseTimeToLiveRequest, MemberListRequest, PutRequest, RangeRequest,
    SnapshotRequest,
};
use sha2::Digest;
use tonic::transport::Channel;
use tonic::{Code, Request};

const LEASE: i64 = 0x7e57;

/// Every key (key, value, create and mod revision, version, lease) and the header revision.
type Dump = (Vec<(Vec<u8>, Vec<u8>, i64, i64, i64, i64)>, i64);

fn with_token<T>(msg: T, token: Option<&str>) -> Request<T> {
    let mut r = Request::new(msg);
    if let Some(t) = token {
        r.metadata_mut().insert("token", t.parse().unwrap());
    }
    r
}

async fn channel(m: &Member) -> Channel {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(ch) = Channel::from_shared(m.endpoint()).unwrap().connect().await {
            return ch;
        }
        assert!(Instant::now() < deadline, "no connection in 20s; log:\n{}", m.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Fills a member: many small keys (several pages and branch levels in the file), values large
/// enough for overflow pages, a lease with keys, a delete and a compaction. Returns the
/// revision compacted at.
async fn fill(kv: &mut KvClient<Channel>, lease: &mut LeaseClient<Channel>) -> i64 {
    lease.lease_grant(LeaseGrantRequest { ttl: 600, id: LEASE }).await.unwrap();
    for k in ["leased/a", "leased/b"] {
        kv.put(PutRequest { key: k.into(), value: b"l".to_vec(), lease: LEASE, ..Default::default() }).await.unwrap();
    }
    for i in 0..1500 {
        let put = PutRequest { key: format!("k{i:05}").into_bytes(), value: vec![b'v'; 40], ..Default::default() };
        kv.put(put).await.unwrap();
    }
    for i in 0..3 {
        let put = PutRequest { key: format!("big{i}").into_bytes(), value: vec![b'0' + i; 100_000], ..Default::default() };
        kv.put(put).await.unwrap();
    }
    kv.put(PutRequest { key: b"k00001".to_vec(), value: b"second".to_vec(), ..Default::default() }).await.unwrap();
    kv.delete_range(DeleteRangeRequest { key: b"k00002".to_vec(), ..Default::default() }).await.unwrap();
    kv.compact(CompactionRequest { revision: 100, physical: true }).await.unwrap();
    kv.put(PutRequest { key: b"after-compaction".to_vec(), value: b"x".to_vec(), ..Default::default() }).await.unwrap();
    100
}

async fn dump(kv: &mut KvClient<Channel>, token: Option<&str>) -> Dump {
    let all = RangeRequest { key: vec![0], range_end: vec![0], ..Default::default() };
    let r = kv.range(with_token(all, token)).await.unwrap().into_inner();
    let rows = r.kvs.into_iter().map(|k| (k.key, k.value, k.create_revision, k.mod_revision, k.version, k.lease)).collect();
    (rows, r.header.unwrap().revision)
}

fn etcdutl_rs(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_etcdutl-rs")).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Restores `file` into `dir` for a member named `name` on `peer_port`, as the test Member
/// starts it (token "test-token").
fn restore(file: &Path, dir: &Path, name: &str, peer_port: u16) {
    let peer = format!("http://127.0.0.1:{peer_port}");
    let cluster = format!("{name}={peer}");
    let (ok, _, err) = etcdutl_rs(&[
        "snapshot",
        "restore",
        file.to_str().unwrap(),
        "--data-dir",
        dir.to_str().unwrap(),
        "--name",
        name,
        "--initial-cluster",
        &cluster,
        "--initial-cluster-token",
        "test-token",
        "--initial-advertise-peer-urls",
        &peer,
    ]);
    assert!(ok, "restore failed: {err}");
}

/// The restored member answers as the original did: same keys and revisions, compaction,
/// the lease with its keys, one member (the restored one), and new writes continue the
/// revisions.
async fn check_restored(
    m: &Member,
    token: Option<&str>,
    before: &Dump,
    compacted: i64,
) {
    let ch = channel(m).await;
    let mut kv = KvClient::new(ch.clone());
    assert_eq!(&dump(&mut kv, token).await, before);
    let old = RangeRequest { key: b"k00001".to_vec(), revision: compacted - 1, ..Default::default() };
    let e = kv.range(with_token(old, token)).await.unwrap_err();
    assert_eq!(e.message(), "etcdserver: mvcc: required revision has been compacted");
    let at = RangeRequest { key: b"k00001".to_vec(), revision: compacted, ..Default::default() };
    assert_eq!(kv.range(with_token(at, token)).await.unwrap().into_inner().kvs[0].value, vec![b'v'; 40]);

    let mut lease = LeaseClient::new(ch.clone());
    let ttl = lease.lease_time_to_live(with_token(LeaseTimeToLiveRequest { id: LEASE, keys: true }, token)).await.unwrap().into_inner();
    assert_eq!(ttl.granted_ttl, 600);
    assert_eq!(ttl.keys, [b"leased/a".to_vec(), b"leased/b".to_vec()]);

    let members = ClusterClient::new(ch).member_list(with_token(MemberListRequest::default(), token)).await.unwrap().into_inner().members;
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].name, m.name);
    assert_eq!(members[0].peer_ur_ls, [format!("http://127.0.0.1:{}", m.peer_port)]);

    let put = PutRequest { key: b"new".to_vec(), value: b"1".to_vec(), ..Default::default() };
    let r = kv.put(with_token(put, token)).await.unwrap().into_inner();
    assert_eq!(r.header.unwrap().revision, before.1 + 1);
}

async fn login(m: &Member, user: &str, password: &str) -> String {
    let mut auth = AuthClient::new(channel(m).await);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match auth.authenticate(AuthenticateRequest { name: user.into(), password: password.into() }).await {
            Ok(r) => return r.into_inner().token,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("login failed: {e}; log:\n{}", m.log()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_rpc_streams_etcds_file_and_a_restore_serves_the_same_data_and_users() {
    let (dir, mut m, mut kv) = single_member(&["--bcrypt-cost", "4"]).await;
    let ch = channel(&m).await;
    let compacted = fill(&mut kv, &mut LeaseClient::new(ch.clone())).await;

    // Auth on: root may take a snapshot, alice (no roles) may not.
    let mut auth = AuthClient::new(ch.clone());
    for name in ["root", "alice"] {
        auth.user_add(AuthUserAddRequest { name: name.into(), password: format!("{name}pw"), ..Default::default() }).await.unwrap();
    }
    auth.user_grant_role(AuthUserGrantRoleRequest { user: "root".into(), role: "root".into() }).await.unwrap();
    auth.auth_enable(AuthEnableRequest {}).await.unwrap();
    let root = login(&m, "root", "rootpw").await;
    let alice = login(&m, "alice", "alicepw").await;
    let before = dump(&mut kv, Some(&root)).await;

    let mut mt = MaintenanceClient::new(ch);
    let Err(e) = mt.snapshot(with_token(SnapshotRequest {}, Some(&alice))).await else { panic!("alice is refused") };
    // etcd answers the maintenance RPCs' root check with the auth error unmapped
    assert_eq!((e.code(), e.message()), (Code::Unknown, "auth: permission denied"));

    let mut stream = mt.snapshot(with_token(SnapshotRequest {}, Some(&root))).await.unwrap().into_inner();
    let mut messages = Vec::new();
    while let Some(msg) = stream.message().await.unwrap() {
        messages.push(msg);
    }
    let (last, chunks) = messages.split_last().unwrap();
    let data: Vec<u8> = chunks.iter().flat_map(|c| c.blob.clone()).collect();
    let total = data.len() as u64;
    assert!(chunks.len() > 4, "a file of {total} bytes comes in 32 KiB chunks");
    let mut sent = 0;
    for c in chunks {
        assert!(c.blob.len() <= 32 * 1024);
        sent += c.blob.len() as u64;
        assert_eq!(c.remaining_bytes, total - sent);
    }
    assert_eq!(last.remaining_bytes, 0);
    assert_eq!(last.blob, sha2::Sha256::digest(&data).to_vec(), "the last message is the sha256 of the file");

    let file = dir.path().join("snap.db");
    std::fs::write(&file, [data.as_slice(), last.blob.as_slice()].concat()).unwrap();
    let (ok, out, err) = etcdutl_rs(&["snapshot", "status", file.to_str().unwrap(), "-w", "json"]);
    assert!(ok, "{err}");
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["revision"], before.1);
    assert_eq!(status["totalSize"], total);
    // rows of every bucket: more than the key bucket's 1500+ revisions after compaction
    assert!(status["totalKey"].as_u64().unwrap() > 1500, "{out}");
    let etcdutl = Path::new("/opt/etcd-3.5/bin/etcdutl");
    if etcdutl.exists() {
        for w in ["simple", "table", "json", "fields"] {
            let theirs = Command::new(etcdutl).args(["snapshot", "status", file.to_str().unwrap(), "-w", w]).output().unwrap();
            assert!(theirs.status.success(), "etcdutl refused our file: {}", String::from_utf8_lossy(&theirs.stderr));
            let (_, ours, _) = etcdutl_rs(&["snapshot", "status", file.to_str().unwrap(), "-w", w]);
            assert_eq!(ours, String::from_utf8_lossy(&theirs.stdout), "-w {w}");
        }
    } else {
        println!("skipping the comparison with etcdutl 3.5: {} is absent", etcdutl.display());
    }
    m.stop();

    // Restore into a new member; auth comes along (root logs in with its password).
    let restored_dir = dir.path().join("r.etcd");
    let mut r = Member::new(&restored_dir, &["--bcrypt-cost", "4"]);
    r.name = "r0".into();
    restore(&file, &restored_dir, "r0", r.peer_port);
    let (ok, _, err) = etcdutl_rs(&["snapshot", "restore", file.to_str().unwrap(), "--data-dir", restored_dir.to_str().unwrap()]);
    assert!(!ok && err.contains("not empty or could not be read"), "a second restore into the same dir is refused: {err}");
    r.start();
    let root = login(&r, "root", "rootpw").await;
    check_restored(&r, Some(&root), &before, compacted).await;
    let e = KvClient::new(channel(&r).await).range(RangeRequest { key: b"k".to_vec(), ..Default::default() }).await.unwrap_err();
    assert_eq!(e.message(), "etcdserver: user name is empty", "auth is still on");

    // The restored member restarts from its own WAL like any member.
    r.stop();
    r.start();
    let root = login(&r, "root", "rootpw").await;
    let mut kv = KvClient::new(channel(&r).await);
    assert_eq!(dump(&mut kv, Some(&root)).await.1, before.1 + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_snapshot_save_then_etcdutl_rs_status_and_restore() {
    let Some(etcdctl) = common::reference_etcdctl() else { return };
    let (dir, mut m, mut kv) = single_member(&[]).await;
    let compacted = fill(&mut kv, &mut LeaseClient::new(channel(&m).await)).await;
    let before = dump(&mut kv, None).await;

    let file = dir.path().join("saved.db");
    let out = Command::new(etcdctl)
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &m.endpoint(), "snapshot", "save", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "etcdctl snapshot save: {}", String::from_utf8_lossy(&out.stderr));

    // etcdctl's own status of the file and ours agree
    let theirs = Command::new(etcdctl).env("ETCDCTL_API", "3").args(["snapshot", "status", file.to_str().unwrap(), "-w", "json"]).output().unwrap();
    assert!(theirs.status.success(), "etcdctl snapshot status: {}", String::from_utf8_lossy(&theirs.stderr));
    let (ok, ours, err) = etcdutl_rs(&["snapshot", "status", file.to_str().unwrap(), "-w", "json"]);
    assert!(ok, "{err}");
    let theirs: serde_json::Value = serde_json::from_slice(&theirs.stdout).unwrap();
    let ours: serde_json::Value = serde_json::from_str(&ours).unwrap();
    assert_eq!(ours, theirs);
    assert_eq!(ours["revision"], before.1);
    m.stop();

    let restored_dir = dir.path().join("r.etcd");
    let mut r = Member::new(&restored_dir, &[]);
    r.name = "r0".into();
    restore(&file, &restored_dir, "r0", r.peer_port);
    r.start();
    r.ready_client().await;
    check_restored(&r, None, &before, compacted).await;
}
