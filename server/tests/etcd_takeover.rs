//! etcd-rs started on a data dir etcd wrote takes it over: etcd 3.4.23 and 3.5.1 members (keys,
//! a lease with keys, users and roles with auth on, a compaction, raft snapshots with entries
//! after them), a member killed with SIGKILL whose WAL ends in a torn record, and a kill at
//! every step of the conversion, and members run with a dedicated `--wal-dir` (killed at every
//! step too). Each test compares what etcd served with what etcd-rs serves
//! on the same dir (member and cluster IDs, revision, keys, HashKV, lease, users). The 3.5.1
//! test prints a reason and returns when /opt/etcd-3.5 is missing.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, stop_child};
use etcd_proto::etcdserverpb::auth_client::AuthClient;
use etcd_proto::etcdserverpb::kv_client::KvClient;
use etcd_proto::etcdserverpb::lease_client::LeaseClient;
use etcd_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use etcd_proto::etcdserverpb::{
    AuthEnableRequest, AuthenticateRequest, CompactionRequest, DeleteRangeRequest, HashKvRequest, LeaseGrantRequest, LeaseTimeToLiveRequest,
    PutRequest, RangeRequest,
};
use etcd_server::takeover::{
    is_bolt_file, is_etcd_wal, BACKUP_DIR, BUILD_DIR, CRASH_ENV, CRASH_STEPS, READY_DIR, WAL_BACKUP_SUFFIX, WAL_BUILD_SUFFIX,
    WAL_DIR_CRASH_STEPS, WAL_DIR_MARKER, WAL_READY_SUFFIX,
};
use tonic::transport::Channel;
use tonic::Request;

const ETCD_35: &str = "/opt/etcd-3.5/bin/etcd";
const ETCD_34: &str = "/usr/bin/etcd";
const ETCDCTL_34: &str = "/usr/bin/etcdctl";
const LEASE: i64 = 0x1234;

/// An etcd or etcd-rs process on fixed loopback ports (the same for both, so the member's
/// URLs stay what etcd advertised), killed when dropped.
struct Server {
    child: Option<Child>,
    log: PathBuf,
    client_port: u16,
}

impl Server {
    fn start(bin: &str, data_dir: &Path, ports: (u16, u16), env: Option<(&str, &str)>) -> Server {
        Server::start_in(bin, data_dir, None, ports, env)
    }

    /// As [`Server::start`], with `--wal-dir wal_dir` when given.
    fn start_in(bin: &str, data_dir: &Path, wal_dir: Option<&Path>, ports: (u16, u16), env: Option<(&str, &str)>) -> Server {
        let client = format!("http://127.0.0.1:{}", ports.0);
        let peer = format!("http://127.0.0.1:{}", ports.1);
        let log = data_dir.with_extension("log");
        let f = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        let mut cmd = Command::new(bin);
        cmd.args(["--name", "e0", "--data-dir"])
            .arg(data_dir)
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("e0={peer}"), "--snapshot-count", "10"])
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f);
        if let Some((k, v)) = env {
            cmd.env(k, v);
        }
        if let Some(w) = wal_dir {
            cmd.arg("--wal-dir").arg(w);
        }
        Server { child: Some(cmd.spawn().expect("start server")), log, client_port: ports.0 }
    }

    fn etcd_rs(data_dir: &Path, ports: (u16, u16)) -> Server {
        Server::start(env!("CARGO_BIN_EXE_etcd-rs"), data_dir, ports, None)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// A channel once the member answers a read (refused for lack of a token counts: it is up).
    async fn channel(&mut self) -> Channel {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(ch) = Channel::from_shared(self.endpoint()).unwrap().connect().await {
                let probe = KvClient::new(ch.clone()).range(RangeRequest { key: b"x".to_vec(), ..Default::default() }).await;
                if probe.is_ok() || probe.as_ref().is_err_and(|e| e.message().contains("user name is empty")) {
                    return ch;
                }
            }
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("server exited ({st}); log:\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "not serving in 30s; log:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn stop(&mut self) {
        if let Some(c) = self.child.take() {
            stop_child(c, Duration::from_secs(20));
        }
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits (bounded) for the process to end by itself.
    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st;
            }
            assert!(Instant::now() < deadline, "did not exit in 30s; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn present(bin: &str) -> bool {
    let there = Path::new(bin).exists();
    if !there {
        println!("skipping: {bin} is absent");
    }
    there
}

fn with_token<T>(msg: T, token: &str) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut().insert("token", token.parse().unwrap());
    r
}

async fn login(ch: &Channel, user: &str, pw: &str) -> Result<String, tonic::Status> {
    let req = AuthenticateRequest { name: user.into(), password: pw.into() };
    Ok(AuthClient::new(ch.clone()).authenticate(req).await?.into_inner().token)
}

/// Keys, a lease with two keys, deletes, a compaction, writes after it (more than the snapshot
/// count, so raft snapshots are taken with entries after them), users and roles, auth on.
async fn fill(ch: &Channel) {
    let mut kv = KvClient::new(ch.clone());
    LeaseClient::new(ch.clone()).lease_grant(LeaseGrantRequest { ttl: 3600, id: LEASE }).await.unwrap();
    let put = |k: String, v: Vec<u8>, lease: i64| PutRequest { key: k.into_bytes(), value: v, lease, ..Default::default() };
    for i in 0..40 {
        kv.put(put(format!("k{i:03}"), format!("v{i}").into_bytes(), 0)).await.unwrap();
    }
    for k in ["leased/a", "leased/b"] {
        kv.put(put(k.into(), b"l".to_vec(), LEASE)).await.unwrap();
    }
    kv.delete_range(DeleteRangeRequest { key: b"k010".to_vec(), range_end: b"k015".to_vec(), ..Default::default() }).await.unwrap();
    let rev = kv.put(put("mid".into(), b"m".to_vec(), 0)).await.unwrap().into_inner().header.unwrap().revision;
    kv.compact(CompactionRequest { revision: rev - 10, physical: true }).await.unwrap();
    for i in 0..13 {
        kv.put(put(format!("after/{i}"), b"x".to_vec(), 0)).await.unwrap();
    }
    common::add_users_and_roles(ch).await;
    AuthClient::new(ch.clone()).auth_enable(AuthEnableRequest {}).await.unwrap();
}

/// What a member serves, as compared between etcd and etcd-rs on the same data dir.
#[derive(Debug, PartialEq)]
struct Served {
    member_id: u64,
    cluster_id: u64,
    /// (ID, name, peer URLs, client URLs) of each member, from `etcdctl member list -w json`.
    members: Vec<(u64, String, Vec<String>, Vec<String>)>,
    /// HashKV: (hash, compact revision, revision).
    hash_kv: (u32, i64, i64),
    keys: Vec<(Vec<u8>, Vec<u8>, i64, i64, i64)>,
    lease_keys: Vec<Vec<u8>>,
    /// u1 reads k* and is refused a write.
    u1_reads_but_cannot_write: bool,
}

fn etcdctl_json(endpoint: &str, args: &[&str]) -> serde_json::Value {
    let out = Command::new(ETCDCTL_34)
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", endpoint, "--user", "root:rootpw", "-w", "json"])
        // generous: six tests run members at once on a loaded 2-core machine
        .args(["--dial-timeout", "20s", "--command-timeout", "30s"])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "etcdctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

async fn served(s: &mut Server) -> Served {
    let ch = s.channel().await;
    let ep = s.endpoint();
    let list = etcdctl_json(&ep, &["member", "list"]);
    let status = etcdctl_json(&ep, &["endpoint", "status"]);
    let header = &status[0]["Status"]["header"];
    assert_eq!(list["header"]["cluster_id"], header["cluster_id"]);
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array().map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect()).unwrap_or_default()
    };
    let members = list["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["ID"].as_u64().unwrap(), m["name"].as_str().unwrap_or("").to_string(), strings(&m["peerURLs"]), strings(&m["clientURLs"])))
        .collect();
    let root = login(&ch, "root", "rootpw").await.unwrap();
    let h = MaintenanceClient::new(ch.clone()).hash_kv(with_token(HashKvRequest { revision: 0 }, &root)).await.unwrap().into_inner();
    assert_eq!(h.header.as_ref().unwrap().revision, header["revision"].as_i64().unwrap(), "endpoint status revision");
    let all = RangeRequest { key: vec![0], range_end: vec![0], ..Default::default() };
    let keys = KvClient::new(ch.clone()).range(with_token(all, &root)).await.unwrap().into_inner().kvs;
    let ttl = LeaseTimeToLiveRequest { id: LEASE, keys: true };
    let lease = LeaseClient::new(ch.clone()).lease_time_to_live(with_token(ttl, &root)).await.unwrap().into_inner();
    assert!(lease.ttl > 0 && lease.ttl <= 3600 && lease.granted_ttl == 3600, "{lease:?}");
    let mut lease_keys = lease.keys;
    lease_keys.sort();
    let u1 = login(&ch, "u1", "u1pw").await.unwrap();
    let read = KvClient::new(ch.clone()).range(with_token(RangeRequest { key: b"k000".to_vec(), ..Default::default() }, &u1)).await;
    let write = KvClient::new(ch.clone())
        .put(with_token(PutRequest { key: b"k000".to_vec(), value: b"no".to_vec(), ..Default::default() }, &u1))
        .await;
    Served {
        member_id: header["member_id"].as_u64().unwrap(),
        cluster_id: header["cluster_id"].as_u64().unwrap(),
        members,
        hash_kv: (h.hash, h.compact_revision, h.header.unwrap().revision),
        keys: keys.into_iter().map(|k| (k.key, k.value, k.create_revision, k.mod_revision, k.lease)).collect(),
        lease_keys,
        u1_reads_but_cannot_write: read.is_ok() && write.is_err_and(|e| e.message() == "etcdserver: permission denied"),
    }
}

/// An etcd `bin` member with the filled history in `data`, stopped (SIGTERM, or SIGKILL with
/// `kill9`); returns what it served just before.
async fn etcd_member(bin: &str, data: &Path, ports: (u16, u16), kill9: bool) -> Served {
    etcd_member_in(bin, data, None, ports, kill9).await
}

/// As [`etcd_member`], etcd started with `--wal-dir wal` when given.
async fn etcd_member_in(bin: &str, data: &Path, wal: Option<&Path>, ports: (u16, u16), kill9: bool) -> Served {
    let mut etcd = Server::start_in(bin, data, wal, ports, None);
    let ch = etcd.channel().await;
    fill(&ch).await;
    let before = served(&mut etcd).await;
    assert!(before.u1_reads_but_cannot_write);
    assert_eq!(before.lease_keys, vec![b"leased/a".to_vec(), b"leased/b".to_vec()]);
    if kill9 {
        etcd.kill9();
    } else {
        etcd.stop();
    }
    let snaps = std::fs::read_dir(data.join("member/snap")).unwrap().filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".snap")).count();
    assert!(snaps > 0, "etcd took a raft snapshot (--snapshot-count 10)");
    before
}

/// Every file under `dir` with its bytes (the evidence that etcd's files were not modified).
fn contents(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.strip_prefix(dir).unwrap().to_path_buf(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

fn copy_dir(from: &Path, to: &Path) {
    let st = Command::new("cp").args(["-a", "--sparse=always"]).arg(from).arg(to).status().unwrap();
    assert!(st.success());
}

/// Takes over the etcd member dir at `data` and checks it serves what etcd served, and that
/// etcd's original is kept, untouched, as the backup.
async fn takes_over(data: &Path, ports: (u16, u16), etcd_served: &Served) {
    let original = contents(&data.join("member"));
    let mut rs = Server::etcd_rs(data, ports);
    let got = served(&mut rs).await;
    assert_eq!(&got, etcd_served, "etcd-rs serves what etcd served");
    assert!(rs.log().contains("took over etcd's data dir"), "{}", rs.log());
    rs.stop();
    assert_eq!(contents(&data.join(BACKUP_DIR)), original, "etcd's member dir is kept untouched");
    assert!(!is_bolt_file(&data.join("member/snap/db")));
    // and it restarts as an ordinary etcd-rs member
    let logged = rs.log().len();
    let mut rs = Server::etcd_rs(data, ports);
    assert_eq!(&served(&mut rs).await, etcd_served);
    assert!(!rs.log()[logged..].contains("took over"), "a second start converts nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_rs_takes_over_an_etcd_3_4_23_member_dir_with_its_ids_keys_lease_users_and_hashkv() {
    if !present(ETCD_34) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("e0.etcd");
    let ports = (free_port(), free_port());
    let etcd_served = etcd_member(ETCD_34, &data, ports, false).await;
    takes_over(&data, ports, &etcd_served).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_rs_takes_over_an_etcd_3_5_1_member_dir_with_its_ids_keys_lease_users_and_hashkv() {
    if !present(ETCD_35) || !present(ETCD_34) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("e0.etcd");
    let ports = (free_port(), free_port());
    let etcd_served = etcd_member(ETCD_35, &data, ports, false).await;
    takes_over(&data, ports, &etcd_served).await;
}

/// Zeroes the last record of etcd's last WAL segment after its length word: what a write torn
/// by a crash leaves (etcd's repair cuts the log there).
fn tear_last_wal_record(wal_dir: &Path) {
    let names = etcd_raft::etcd_wal::segment_names(wal_dir).unwrap();
    let path = wal_dir.join(names.last().unwrap());
    let mut buf = std::fs::read(&path).unwrap();
    let mut crc = 0;
    let (records, _) = etcd_raft::etcd_wal::decode_segment(&path, &buf, &mut crc, true).unwrap();
    let last = records.last().unwrap().offset as usize;
    let word = u64::from_le_bytes(buf[last..last + 8].try_into().unwrap());
    let (len, pad) = etcd_raft::etcd_wal::decode_frame_len(word);
    buf[last + 8..last + 8 + (len + pad) as usize].fill(0);
    std::fs::write(&path, &buf).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_etcd_with_a_torn_wal_tail_is_taken_over_as_etcd_itself_restarts_on_it() {
    if !present(ETCD_34) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("e0.etcd");
    let ports = (free_port(), free_port());
    etcd_member(ETCD_34, &data, ports, true).await;
    tear_last_wal_record(&data.join("member/wal"));
    let for_etcd = dir.path().join("again.etcd");
    copy_dir(&data, &for_etcd);
    // what etcd itself serves on the torn dir is the reference
    let mut etcd = Server::start(ETCD_34, &for_etcd, ports, None);
    let etcd_served = served(&mut etcd).await;
    etcd.stop();
    assert!(etcd.log().contains("repair"), "etcd repaired a torn WAL tail: {}", etcd.log());
    let mut rs = Server::etcd_rs(&data, ports);
    assert_eq!(served(&mut rs).await, etcd_served);
    assert!(rs.log().contains("torn record"), "{}", rs.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_at_any_step_of_the_takeover_loses_nothing_and_a_damaged_wal_is_refused_leaving_etcds_files_untouched() {
    if !present(ETCD_34) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pristine = dir.path().join("pristine.etcd");
    let ports = (free_port(), free_port());
    let etcd_served = etcd_member(ETCD_34, &pristine, ports, false).await;
    let original = contents(&pristine.join("member"));
    let steps = CRASH_STEPS.iter().filter(|s| !WAL_DIR_CRASH_STEPS.contains(s));
    for (i, step) in steps.enumerate() {
        let data = dir.path().join(format!("{step}.etcd"));
        copy_dir(&pristine, &data);
        let mut rs = Server::start(env!("CARGO_BIN_EXE_etcd-rs"), &data, ports, Some((CRASH_ENV, step)));
        let st = rs.wait_exit();
        assert!(!st.success(), "{step}: killed, not exited: {st}");
        assert!(rs.log().contains(step), "{step}: {}", rs.log());
        // etcd's files are where they were, or in the backup, byte for byte
        let etcd_at = if i < CRASH_STEPS.iter().filter(|s| !WAL_DIR_CRASH_STEPS.contains(s)).position(|s| *s == "backed-up").unwrap() {
            "member"
        } else {
            BACKUP_DIR
        };
        assert_eq!(contents(&data.join(etcd_at)), original, "{step}: etcd's files untouched in {etcd_at}");
        let on_disk: Vec<bool> = ["member", BUILD_DIR, READY_DIR, BACKUP_DIR].iter().map(|d| data.join(d).exists()).collect();
        println!("{step}: member, build, ready, backup present: {on_disk:?}");
        drop(rs);
        let mut rs = Server::etcd_rs(&data, ports);
        assert_eq!(served(&mut rs).await, etcd_served, "{step}: the restart ends complete");
        rs.stop();
        assert!(!data.join(BUILD_DIR).exists() && !data.join(READY_DIR).exists(), "{step}");
        assert_eq!(contents(&data.join(BACKUP_DIR)), original, "{step}: backup");
        drop(rs);
        std::fs::remove_dir_all(&data).unwrap();
    }

    // a WAL damaged before its last record (a flipped byte in a middle record) is refused:
    // the process exits with the reason, etcd's files are as they were, nothing is left beside
    let data = dir.path().join("damaged.etcd");
    copy_dir(&pristine, &data);
    let wal_dir = data.join("member/wal");
    let seg = wal_dir.join(etcd_raft::etcd_wal::segment_names(&wal_dir).unwrap()[0].clone());
    let mut buf = std::fs::read(&seg).unwrap();
    let (records, _) = etcd_raft::etcd_wal::decode_segment(&seg, &buf, &mut 0, true).unwrap();
    let middle = records[records.len() / 2].offset as usize;
    buf[middle + 12] ^= 0x55;
    std::fs::write(&seg, &buf).unwrap();
    let damaged = contents(&data.join("member"));
    let mut rs = Server::etcd_rs(&data, ports);
    assert!(!rs.wait_exit().success());
    assert!(rs.log().contains("cannot take over etcd data dir"), "{}", rs.log());
    assert_eq!(contents(&data.join("member")), damaged, "etcd's files untouched");
    for d in [BUILD_DIR, READY_DIR, BACKUP_DIR] {
        assert!(!data.join(d).exists(), "{d}");
    }
}

/// `<path><suffix>`: the WAL side's names beside a dedicated --wal-dir.
fn beside(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// After a takeover with --wal-dir `wal`: etcd-rs's WAL in `wal`, none in member/wal, etcd's
/// member dir and WAL kept untouched as the backups, nothing of the conversion left over.
fn converted_with_wal_dir(data: &Path, wal: &Path, etcd_member: &[(PathBuf, Vec<u8>)], etcd_wal: &[(PathBuf, Vec<u8>)], what: &str) {
    assert!(etcd_raft::Wal::exists(wal) && !is_etcd_wal(wal), "{what}: etcd-rs's WAL is in --wal-dir");
    assert!(!data.join("member/wal").exists(), "{what}: no WAL in member/wal");
    assert!(!is_bolt_file(&data.join("member/snap/db")), "{what}");
    assert_eq!(contents(&data.join(BACKUP_DIR)), etcd_member, "{what}: etcd's member dir kept untouched");
    assert_eq!(contents(&beside(wal, WAL_BACKUP_SUFFIX)), etcd_wal, "{what}: etcd's WAL kept untouched");
    for left in [data.join(BUILD_DIR), data.join(READY_DIR), data.join("member").join(WAL_DIR_MARKER)] {
        assert!(!left.exists(), "{what}: {left:?} left over");
    }
    for suffix in [WAL_BUILD_SUFFIX, WAL_READY_SUFFIX] {
        assert!(!beside(wal, suffix).exists(), "{what}: {suffix} left over");
    }
}

/// An etcd `bin` member run with a dedicated --wal-dir (on its own "disk" dir), taken over by
/// etcd-rs with the same flags, then restarted with them; with `crash_steps`, a kill at each of
/// those steps of a fresh copy first, then a clean start.
async fn takes_over_with_a_wal_dir(bin: &str, crash_steps: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let (data, wal) = (dir.path().join("e0.etcd"), dir.path().join("wal-disk/e0"));
    std::fs::create_dir_all(wal.parent().unwrap()).unwrap();
    let ports = (free_port(), free_port());
    let etcd_served = etcd_member_in(bin, &data, Some(&wal), ports, false).await;
    assert!(is_etcd_wal(&wal) && !data.join("member/wal").exists(), "etcd kept its WAL in --wal-dir only");
    let (etcd_member, etcd_wal) = (contents(&data.join("member")), contents(&wal));
    let rs_bin = env!("CARGO_BIN_EXE_etcd-rs");
    let position = |step: &str| CRASH_STEPS.iter().position(|s| *s == step).unwrap();
    for step in crash_steps {
        let (d, w) = (dir.path().join(format!("{step}.etcd")), dir.path().join(format!("wal-disk/{step}")));
        copy_dir(&data, &d);
        copy_dir(&wal, &w);
        let mut rs = Server::start_in(rs_bin, &d, Some(&w), ports, Some((CRASH_ENV, step)));
        assert!(!rs.wait_exit().success(), "{step}: killed");
        assert!(rs.log().contains(step), "{step}: {}", rs.log());
        let member_at = if position(step) < position("backed-up") { d.join("member") } else { d.join(BACKUP_DIR) };
        let wal_at = if position(step) < position("wal-backed-up") { w.clone() } else { beside(&w, WAL_BACKUP_SUFFIX) };
        assert_eq!(contents(&member_at), etcd_member, "{step}: etcd's member dir untouched at {member_at:?}");
        assert_eq!(contents(&wal_at), etcd_wal, "{step}: etcd's WAL untouched at {wal_at:?}");
        drop(rs);
        let mut rs = Server::start_in(rs_bin, &d, Some(&w), ports, None);
        assert_eq!(served(&mut rs).await, etcd_served, "{step}: the restart ends complete");
        rs.stop();
        converted_with_wal_dir(&d, &w, &etcd_member, &etcd_wal, step);
        drop(rs);
        std::fs::remove_dir_all(&d).unwrap();
        std::fs::remove_dir_all(&w).unwrap();
        std::fs::remove_dir_all(beside(&w, WAL_BACKUP_SUFFIX)).unwrap();
    }
    let mut rs = Server::start_in(rs_bin, &data, Some(&wal), ports, None);
    assert_eq!(served(&mut rs).await, etcd_served, "etcd-rs serves what etcd served");
    assert!(rs.log().contains("took over etcd's data dir"), "{}", rs.log());
    rs.stop();
    converted_with_wal_dir(&data, &wal, &etcd_member, &etcd_wal, "takeover");
    let logged = rs.log().len();
    let mut rs = Server::start_in(rs_bin, &data, Some(&wal), ports, None);
    assert_eq!(served(&mut rs).await, etcd_served, "a restart with the same --wal-dir");
    assert!(!rs.log()[logged..].contains("took over"), "a second start converts nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_3_4_23_member_with_a_dedicated_wal_dir_is_taken_over_in_place_and_a_kill_at_any_step_loses_nothing() {
    if !present(ETCD_34) {
        return;
    }
    takes_over_with_a_wal_dir(ETCD_34, CRASH_STEPS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_3_5_1_member_with_a_dedicated_wal_dir_is_taken_over_in_place() {
    if !present(ETCD_35) || !present(ETCD_34) {
        return;
    }
    takes_over_with_a_wal_dir(ETCD_35, &[]).await;
}
