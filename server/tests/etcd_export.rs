//! The way back to etcd (issue 14): `etcdutl-rs export-etcd-data-dir` turns a stopped etcd-rs
//! member's data dir into one etcd starts on as the same member, with the same keys, revision,
//! HashKV, leases and users, and then writes on. Parts that need a reference etcd binary print
//! a reason and skip when it is missing (CI has only Debian's 3.4.23).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, put, stop_child, Member};
use etcd_proto::etcdserverpb::auth_client::AuthClient;
use etcd_proto::etcdserverpb::cluster_client::ClusterClient;
use etcd_proto::etcdserverpb::kv_client::KvClient;
use etcd_proto::etcdserverpb::lease_client::LeaseClient;
use etcd_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use etcd_proto::etcdserverpb::{
    AuthEnableRequest, AuthUserAddRequest, AuthUserGrantRoleRequest, AuthUserListRequest, AuthenticateRequest,
    CompactionRequest, DeleteRangeRequest, HashKvRequest, LeaseGrantRequest, LeaseLeasesRequest, MemberListRequest,
    PutRequest, RangeRequest,
};
use tonic::transport::Channel;
use tonic::Request;

const ETCD_35: &str = "/opt/etcd-3.5/bin/etcd";
const ETCD_34: &str = "/usr/bin/etcd";
const LEASE: i64 = 0x5eed;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn with_token<T>(msg: T, token: &str) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut().insert("token", token.parse().unwrap());
    r
}

/// What a member serves, as compared across implementations.
#[derive(Debug, Clone, PartialEq)]
struct Served {
    cluster_id: u64,
    member_id: u64,
    members: Vec<(u64, String, Vec<String>)>,
    revision: i64,
    /// (key, value, create, mod, version, lease)
    kvs: Vec<(Vec<u8>, Vec<u8>, i64, i64, i64, i64)>,
    /// (hash, compact revision) at `revision`
    hash_kv: (u32, i64),
    leases: Vec<i64>,
    users: Vec<String>,
}

async fn root_token(ch: &Channel) -> String {
    let auth = AuthenticateRequest { name: "root".into(), password: "rootpw".into() };
    AuthClient::new(ch.clone()).authenticate(auth).await.unwrap().into_inner().token
}

async fn served(ch: &Channel, hash_at: i64) -> Served {
    let token = root_token(ch).await;
    let all = RangeRequest { key: vec![0], range_end: vec![0], ..Default::default() };
    let r = KvClient::new(ch.clone()).range(with_token(all, &token)).await.unwrap().into_inner();
    let h = r.header.clone().unwrap();
    let kvs = r.kvs.into_iter().map(|kv| (kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease)).collect();
    let hk = MaintenanceClient::new(ch.clone()).hash_kv(with_token(HashKvRequest { revision: hash_at }, &token)).await.unwrap().into_inner();
    let ml = ClusterClient::new(ch.clone()).member_list(MemberListRequest { linearizable: false }).await.unwrap().into_inner();
    let mut members: Vec<_> = ml.members.into_iter().map(|m| (m.id, m.name, m.peer_ur_ls)).collect();
    members.sort();
    let mut leases: Vec<i64> =
        LeaseClient::new(ch.clone()).lease_leases(with_token(LeaseLeasesRequest {}, &token)).await.unwrap().into_inner().leases.iter().map(|l| l.id).collect();
    leases.sort();
    let users = AuthClient::new(ch.clone()).user_list(with_token(AuthUserListRequest {}, &token)).await.unwrap().into_inner().users;
    Served {
        cluster_id: h.cluster_id,
        member_id: h.member_id,
        members,
        revision: h.revision,
        kvs,
        hash_kv: (hk.hash, hk.compact_revision),
        leases,
        users,
    }
}

/// Keys (some deleted, some leased), a compaction, users with auth on, and more writes after a
/// raft snapshot (`--snapshot-count 50` in the caller).
async fn fill(ch: &Channel) {
    let mut kv = KvClient::new(ch.clone());
    LeaseClient::new(ch.clone()).lease_grant(LeaseGrantRequest { ttl: 3600, id: LEASE }).await.unwrap();
    kv.put(PutRequest { key: b"leased".to_vec(), value: b"l".to_vec(), lease: LEASE, ..Default::default() }).await.unwrap();
    for i in 0..60 {
        put(&mut kv, &format!("k{i:03}"), &format!("v{i}")).await.unwrap();
    }
    kv.delete_range(DeleteRangeRequest { key: b"k00".to_vec(), range_end: b"k01".to_vec(), ..Default::default() }).await.unwrap();
    let rev = put(&mut kv, "k001", "again").await.unwrap();
    kv.compact(CompactionRequest { revision: rev - 1, physical: true }).await.unwrap();
    let mut auth = AuthClient::new(ch.clone());
    for (name, password) in [("root", "rootpw"), ("alice", "alicepw")] {
        auth.user_add(AuthUserAddRequest { name: name.into(), password: password.into(), ..Default::default() }).await.unwrap();
    }
    auth.user_grant_role(AuthUserGrantRoleRequest { user: "root".into(), role: "root".into() }).await.unwrap();
    auth.auth_enable(AuthEnableRequest {}).await.unwrap();
    let token = root_token(ch).await;
    for i in 0..30 {
        let p = PutRequest { key: format!("late{i:02}").into_bytes(), value: b"x".to_vec(), ..Default::default() };
        kv.put(with_token(p, &token)).await.unwrap();
    }
}

/// A reference etcd started on a data dir, killed when dropped.
struct Etcd {
    child: Option<Child>,
    log: PathBuf,
    client_port: u16,
}

impl Etcd {
    fn start(bin: &str, data_dir: &Path, name: &str, peer_port: u16) -> Etcd {
        let client_port = free_port();
        let client = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let log = data_dir.with_extension("log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(bin)
            .args(["--name", name, "--data-dir", s(data_dir)])
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        Etcd { child: Some(child), log, client_port }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A channel once the member authenticates root (bounded wait); Err(log) if it exited.
    async fn channel(&mut self) -> Result<Channel, String> {
        let url = format!("http://127.0.0.1:{}", self.client_port);
        let child = self.child.as_mut().unwrap();
        match serving(&url, || matches!(child.try_wait(), Ok(Some(_)))).await {
            Some(ch) => Ok(ch),
            None => Err(self.log()),
        }
    }
}

/// A channel to `url` once root authenticates there (within 30 s); None once `exited()`.
async fn serving(url: &str, mut exited: impl FnMut() -> bool) -> Option<Channel> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if exited() {
            return None;
        }
        if let Ok(ch) = Channel::from_shared(url.to_string()).unwrap().connect().await {
            let auth = AuthenticateRequest { name: "root".into(), password: "rootpw".into() };
            if AuthClient::new(ch.clone()).authenticate(auth).await.is_ok() {
                return Some(ch);
            }
        }
        assert!(Instant::now() < deadline, "{url} did not serve in 30 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if let Some(c) = self.child.take() {
            stop_child(c, Duration::from_secs(10));
        }
    }
}

fn export(data_dir: &Path, out: &Path, extra: &[&str]) -> (i32, String) {
    export_env(data_dir, out, extra, None)
}

/// As [`export`], with an environment variable set (the crash hook).
fn export_env(data_dir: &Path, out: &Path, extra: &[&str], env: Option<(&str, &str)>) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_etcdutl-rs"));
    cmd.args(["export-etcd-data-dir", "--data-dir", s(data_dir), "--output-data-dir", s(out)]).args(extra);
    if let Some((k, v)) = env {
        cmd.env(k, v);
    }
    let o = cmd.output().unwrap();
    (o.status.code().unwrap_or(-1), String::from_utf8_lossy(&o.stderr).into_owned())
}

/// A running etcd-rs member in `dir` with the filled history (raft snapshots and entries after
/// them), and what it serves.
async fn filled_member(dir: &Path) -> (Member, Served) {
    let mut m = Member::new(&dir.join("rs.etcd"), &["--snapshot-count", "50"]);
    m.start();
    m.ready_client().await;
    let ch = Channel::from_shared(m.endpoint()).unwrap().connect().await.unwrap();
    fill(&ch).await;
    let before = served(&ch, 0).await;
    assert!(
        std::fs::read_dir(m.data_dir.join("member/snap")).unwrap().any(|e| e.unwrap().file_name().to_string_lossy().ends_with(".snap")),
        "etcd-rs took a raft snapshot, and wrote entries after it"
    );
    (m, before)
}

#[tokio::test]
async fn an_exported_etcd_rs_data_dir_starts_etcd_as_the_same_member_with_the_same_data() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut m, before) = filled_member(tmp.path()).await;

    // refused while the member runs, and nothing is written
    let out35 = tmp.path().join("e35.etcd");
    let (code, err) = export(&m.data_dir, &out35, &["--timeout", "500ms"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.starts_with("Error: timeout"), "{err}");
    assert!(!out35.exists() && !tmp.path().join("e35.etcd.tmp").exists());
    m.stop();

    let (code, err) = export(&m.data_dir, &out35, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains(&format!("member {:x}, cluster {:x}", before.member_id, before.cluster_id)), "{err}");
    for p in ["member/snap/db", "member/wal/0000000000000000-0000000000000000.wal"] {
        assert!(out35.join(p).is_file(), "{p}");
    }
    let (code, err) = export(&m.data_dir, &out35, &[]);
    assert_eq!(code, 1);
    assert!(err.contains("exists"), "{err}");

    // the source is untouched: etcd-rs starts on it again with the same state
    m.start();
    let ch = serving(&m.endpoint(), || false).await.unwrap();
    assert_eq!(served(&ch, before.revision).await, before);
    drop(ch);
    m.stop();

    if Path::new(ETCD_35).exists() {
        let mut e = Etcd::start(ETCD_35, &out35, &m.name, m.peer_port);
        let ch = e.channel().await.unwrap_or_else(|log| panic!("etcd 3.5.1 exited on the export:\n{log}"));
        let got = served(&ch, before.revision).await;
        assert_eq!(got, Served { revision: got.revision, ..before.clone() }, "etcd 3.5.1 serves what etcd-rs served");
        assert!(got.revision >= before.revision);
        // and it writes on, at the next revisions
        let token = root_token(&ch).await;
        let p = PutRequest { key: b"from-etcd".to_vec(), value: b"1".to_vec(), ..Default::default() };
        let r = KvClient::new(ch.clone()).put(with_token(p, &token)).await.unwrap().into_inner();
        assert_eq!(r.header.unwrap().revision, got.revision + 1);
        println!("etcd 3.5.1 started on the export, serves the same data and writes on");
    } else {
        println!("skipping etcd 3.5.1 on the export: {ETCD_35} is absent");
    }

    if Path::new(ETCD_34).exists() {
        let out34 = tmp.path().join("e34.etcd");
        // what an export killed before its rename leaves behind is replaced
        std::fs::create_dir_all(tmp.path().join("e34.etcd.tmp/member")).unwrap();
        std::fs::write(tmp.path().join("e34.etcd.tmp/member/half"), b"x").unwrap();
        let (code, err) = export(&m.data_dir, &out34, &[]);
        assert_eq!(code, 0, "{err}");
        assert!(!tmp.path().join("e34.etcd.tmp").exists() && !out34.join("member/half").exists());
        let mut e = Etcd::start(ETCD_34, &out34, &m.name, m.peer_port);
        match e.channel().await {
            Ok(ch) => {
                let got = served(&ch, before.revision).await;
                assert_eq!(got, Served { revision: got.revision, ..before.clone() }, "etcd 3.4.23 serves what etcd-rs served");
                println!("etcd 3.4.23 started on the export and serves the same data");
            }
            // etcd-rs runs its cluster at version 3.5: etcd 3.4 refuses to join a 3.5 cluster
            Err(log) => {
                assert!(log.contains("cluster cannot be downgraded"), "etcd 3.4.23 exited for another reason:\n{log}");
                println!("etcd 3.4.23 refused the export: the cluster version is 3.5");
            }
        }
    } else {
        println!("skipping etcd 3.4.23 on the export: {ETCD_34} is absent");
    }
}

fn beside(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

#[tokio::test]
async fn an_export_with_a_separate_wal_dir_killed_at_any_step_is_completed_by_running_it_again() {
    use etcd_server::etcdutl::export::{EXPORT_CRASH_ENV, EXPORT_CRASH_STEPS, PENDING_SUFFIX};
    let tmp = tempfile::tempdir().unwrap();
    let (mut m, before) = filled_member(tmp.path()).await;
    m.stop();

    let (out, wal) = (tmp.path().join("out.etcd"), tmp.path().join("wal-disk/out"));
    std::fs::create_dir_all(wal.parent().unwrap()).unwrap();
    let args = ["--output-wal-dir", s(&wal)];
    let position = |step: &str| EXPORT_CRASH_STEPS.iter().position(|s| *s == step).unwrap();
    for step in EXPORT_CRASH_STEPS {
        let (code, err) = export_env(&m.data_dir, &out, &args, Some((EXPORT_CRASH_ENV, step)));
        assert!(code != 0 && err.contains(step), "{step}: killed: {code} {err}");
        // the output data dir appears last: before it, a published WAL dir is the only trace
        assert_eq!(out.exists(), *step == "published", "{step}");
        assert_eq!(wal.exists(), position(step) >= position("wal-published"), "{step}");
        let (code, err) = export(&m.data_dir, &out, &args);
        if *step == "published" {
            assert!(code == 1 && err.contains("exists"), "{step}: a complete export is kept: {err}");
        } else {
            assert_eq!(code, 0, "{step}: {err}");
            assert_eq!(err.contains("exporting again"), *step == "wal-published", "{step}: {err}");
        }
        for left in [beside(&out, ".tmp"), beside(&wal, ".tmp"), beside(&out, PENDING_SUFFIX)] {
            assert!(!left.exists(), "{step}: {left:?} left over");
        }
        assert!(out.join("member/snap/db").is_file() && !out.join("member/wal").exists(), "{step}");
        assert!(wal.join("0000000000000000-0000000000000000.wal").is_file(), "{step}");
        if *step != "published" {
            std::fs::remove_dir_all(&out).unwrap();
            std::fs::remove_dir_all(&wal).unwrap();
        }
    }

    // the last output is whole: etcd-rs takes it over with the same --wal-dir as the same member
    m.data_dir = out.clone();
    m.extra.extend(["--wal-dir".to_string(), s(&wal).to_string()]);
    m.start();
    let ch = serving(&m.endpoint(), || false).await.unwrap();
    assert_eq!(served(&ch, before.revision).await, before);
    drop(ch);
    m.stop();
}
