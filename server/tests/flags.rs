//! Operator flags with their own start-up paths: `--config-file` (YAML instead of flags and
//! `ETCD_*`), `--wal-dir` (the WAL outside the data dir) and `--force-new-cluster` (a member of a
//! cluster that lost quorum restarts alone with its data), `--unsafe-no-fsync` (no fsync, writes
//! still served and kept across a graceful restart), `--enable-v2` (accepted with a warning) and
//! `--version` (quiet on a closed stdout).

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::cluster::TestCluster;
use common::{dump, free_port, http_get, put, Member};
use etcd_proto::etcdserverpb::cluster_client::ClusterClient;
use etcd_proto::etcdserverpb::{Member as PbMember, MemberListRequest};
use tonic::transport::Channel;

/// An etcd-rs process started with only the config-file settings given; killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn has_wal_segment(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok()).any(|e| e.file_name().to_string_lossy().ends_with(".wal")))
        .unwrap_or(false)
}

/// `ready_client` bounded: a linearizable read on a member without a leader does not end by
/// itself in etcd-rs today (etcd answers "request timed out" after its request timeout).
async fn ready(m: &Member) -> etcd_proto::etcdserverpb::kv_client::KvClient<Channel> {
    match tokio::time::timeout(Duration::from_secs(30), m.ready_client()).await {
        Ok(c) => c,
        Err(_) => panic!("no linearizable read within 30s; log:\n{}", m.log()),
    }
}

async fn members(m: &Member) -> Vec<PbMember> {
    let ch = Channel::from_shared(m.endpoint()).unwrap().connect().await.unwrap();
    ClusterClient::new(ch)
        .member_list(MemberListRequest { linearizable: true })
        .await
        .expect("member list")
        .into_inner()
        .members
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_file_alone_configures_the_server_and_other_flags_and_env_are_ignored() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("from-yaml.etcd");
    // `m` only names the endpoint, the log file and the data dir: the process is started here
    let mut m = Member::new(&data_dir, &[]);
    m.name = "yaml-member".into();
    let client = m.endpoint();
    let peer = format!("http://127.0.0.1:{}", m.peer_port);
    let yaml = format!(
        "# etcd's sample config style\n\
         name: 'yaml-member'\n\
         data-dir: {data}\n\
         snapshot-count: 10000\n\
         heartbeat-interval: 100\n\
         election-timeout: 1000\n\
         listen-peer-urls: {peer}\n\
         listen-client-urls: {client}\n\
         initial-advertise-peer-urls: {peer}\n\
         advertise-client-urls: {client}\n\
         initial-cluster: yaml-member={peer}\n\
         initial-cluster-token: 'yaml-token'\n\
         initial-cluster-state: 'new'\n\
         grpc-keepalive-min-time: 5000000000\n\
         some-key-etcd-rs-does-not-know: [1, 2]\n\
         client-transport-security:\n  client-cert-auth: false\n  auto-tls: false\n\
         peer-transport-security:\n  client-cert-auth: false\n",
        data = data_dir.display()
    );
    let cfg = tmp.path().join("etcd.conf.yml");
    std::fs::write(&cfg, yaml).unwrap();
    let ignored_dir = tmp.path().join("ignored.etcd");
    let spawn = |with_flag: bool| {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(data_dir.with_extension("log")).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_etcd-rs"));
        if with_flag {
            // everything besides the file is ignored, as in etcd: a data dir and a client URL
            // that would make the test fail if used
            cmd.arg("--config-file").arg(&cfg).args(["--name", "flag-name", "--data-dir"]).arg(&ignored_dir);
        } else {
            cmd.env("ETCD_CONFIG_FILE", &cfg);
        }
        cmd.env("ETCD_NAME", "env-name")
            .env("ETCD_DATA_DIR", &ignored_dir)
            .env("ETCD_LISTEN_CLIENT_URLS", format!("http://127.0.0.1:{}", free_port()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        Proc(cmd.spawn().expect("start etcd-rs"))
    };

    let p = spawn(true);
    let mut c = ready(&m).await;
    put(&mut c, "from", "yaml").await.unwrap();
    let list = members(&m).await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].name, "yaml-member");
    assert_eq!(list[0].client_ur_ls, vec![client.clone()]);
    assert!(m.log_shows("loaded server configuration, other configuration command line flags and environment variables will be ignored if provided"));
    assert!(has_wal_segment(&data_dir.join("member").join("wal")));
    assert!(!ignored_dir.exists(), "the --data-dir flag / ETCD_DATA_DIR must be ignored");
    drop(p);

    // ETCD_CONFIG_FILE works as the flag does; the restart finds the data the file points at
    let _p = spawn(false);
    let mut c = ready(&m).await;
    let kvs: Vec<(String, String)> = dump(&mut c).await.into_iter().map(|(k, v, _)| (k, v)).collect();
    assert_eq!(kvs, vec![("from".to_string(), "yaml".to_string())]);
    assert!(!ignored_dir.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enable_v2_starts_the_member_with_a_warning_that_the_v2_api_is_not_served() {
    let (_dir, m, mut kv) = common::single_member(&["--enable-v2"]).await;
    put(&mut kv, "k", "v").await.unwrap();
    assert!(m.log_shows("the v2 API is not served"), "{}", m.log());
}

#[test]
fn version_on_a_closed_stdout_exits_quietly() {
    // `etcd-rs --version | head -0`: the reader is gone before anything is written
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let child = Command::new(env!("CARGO_BIN_EXE_etcd-rs"))
        .arg("--version")
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(stderr.is_empty(), "{stderr}");
}

#[test]
fn config_file_with_a_value_of_the_wrong_type_refuses_to_start() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("bad.yml");
    std::fs::write(&cfg, format!("data-dir: {}\nauto-compaction-retention: 1\n", tmp.path().join("d").display())).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_etcd-rs")).arg("--config-file").arg(&cfg).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("auto-compaction-retention"), "{err}");
    assert!(!tmp.path().join("d").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_dir_holds_the_wal_and_is_found_on_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let wal_dir = tmp.path().join("dedicated").join("wal");
    let data_dir = tmp.path().join("m0.etcd");
    let mut m = Member::new(&data_dir, &["--wal-dir", wal_dir.to_str().unwrap()]);
    m.start();
    let mut c = ready(&m).await;
    for i in 0..20 {
        put(&mut c, &format!("k{i:02}"), &format!("v{i}")).await.unwrap();
    }
    let before = dump(&mut c).await;
    m.stop();
    assert!(has_wal_segment(&wal_dir), "no WAL segment in --wal-dir");
    assert!(!data_dir.join("member").join("wal").exists(), "a WAL was written in the data dir too");

    // the backend alone is not enough: the restart must replay the WAL from --wal-dir, or it
    // would bootstrap a new member over the old data
    m.start();
    let mut c = ready(&m).await;
    assert_eq!(dump(&mut c).await, before);
    put(&mut c, "after", "restart").await.unwrap();
    assert!(m.log().contains("\"restarting\":true") || m.log().contains("restarting=true"), "{}", m.log());
}

/// SIGTERM, then the process must stop by itself within 15s, as etcd: killed by the same signal,
/// re-raised after its graceful stop.
fn graceful_stop(m: &mut Member) {
    use std::os::unix::process::ExitStatusExt as _;
    let _ = Command::new("kill").args(["-TERM", &m.pid().to_string()]).status();
    match m.wait_exit(Duration::from_secs(15)) {
        Some(status) => assert_eq!(status.signal(), Some(libc::SIGTERM), "exit {status:?}; log:\n{}", m.log()),
        None => panic!("no exit within 15s of SIGTERM; log:\n{}", m.log()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_no_fsync_serves_writes_and_restarts_cleanly_after_a_graceful_stop() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("m0.etcd");
    // small snapshot count: raft snapshots, WAL segments released, backend commits all run
    let mut m = Member::new(&data_dir, &["--unsafe-no-fsync", "--snapshot-count", "50"]);
    m.start();
    let mut c = ready(&m).await;
    for i in 0..120 {
        put(&mut c, &format!("k{i:03}"), &format!("v{i}")).await.unwrap();
    }
    let before = dump(&mut c).await;
    assert_eq!(before.len(), 120);
    assert!(m.log_shows("unsafe-no-fsync"), "no warning that fsync is off; log:\n{}", m.log());
    // as etcd: the WAL fsync histogram stays empty, since no fsync is made
    let (code, metrics) = http_get(&m, "/metrics");
    assert_eq!(code, 200);
    assert!(metrics.contains("etcd_disk_wal_fsync_duration_seconds_count 0\n"), "{metrics}");
    graceful_stop(&mut m);

    m.start();
    let mut c = ready(&m).await;
    assert_eq!(dump(&mut c).await, before);
    put(&mut c, "after", "restart").await.unwrap();
    graceful_stop(&mut m);

    // and the same data opens with fsync back on
    m.extra.clear();
    m.start();
    let mut c = ready(&m).await;
    let after: Vec<_> = dump(&mut c).await.into_iter().filter(|(k, _, _)| k != "after").collect();
    assert_eq!(after, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn force_new_cluster_restarts_one_member_alone_with_its_data() {
    assert!(!force_new_cluster_scenario(&[]).await, "the WAL-only path took a raft snapshot");
}

/// The members' ids come from the raft snapshot's configuration when the WAL no longer holds
/// the bootstrap entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn force_new_cluster_after_raft_snapshots() {
    assert!(force_new_cluster_scenario(&["--snapshot-count", "5"]).await, "no raft snapshot was taken");
}

/// 3 members write, all stop, member 0 restarts with --force-new-cluster; returns whether
/// member 0 had raft snapshot files when it was forced.
async fn force_new_cluster_scenario(extra: &[&str]) -> bool {
    let tmp = tempfile::tempdir().unwrap();
    let mut cl = TestCluster::start(tmp.path(), 3, extra).await;
    let leader = cl.wait_leader(&[0, 1, 2]).await;
    let mut c = ready(&cl.members[leader]).await;
    for i in 0..10 {
        put(&mut c, &format!("before{i}"), "x").await.unwrap();
    }
    let before = dump(&mut c).await;
    assert_eq!(members(&cl.members[0]).await.len(), 3);
    let own_id = common::cluster::status(&cl.members[0]).await.unwrap().1;
    // wait until member 0 has applied everything, then lose the whole cluster
    let mut c0 = ready(&cl.members[0]).await;
    assert_eq!(dump(&mut c0).await, before);
    for m in cl.members.iter_mut() {
        m.stop();
    }
    let had_snapshots = std::fs::read_dir(cl.members[0].data_dir.join("member").join("snap"))
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| e.file_name().to_string_lossy().ends_with(".snap"));

    let m = &mut cl.members[0];
    m.extra.push("--force-new-cluster".into());
    m.start();
    let mut c = ready(m).await;
    assert_eq!(dump(&mut c).await, before);
    put(&mut c, "after", "forced").await.unwrap();
    let list = members(m).await;
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0].id, own_id);
    assert!(m.log_shows("forcing restart member"));

    // the removals were committed: a plain restart stays a one-member cluster with all the data
    m.stop();
    m.extra.clear();
    m.start();
    let mut c = ready(m).await;
    put(&mut c, "after2", "plain").await.unwrap();
    assert_eq!(members(m).await.len(), 1);
    let keys: Vec<String> = dump(&mut c).await.into_iter().map(|(k, _, _)| k).collect();
    assert!(keys.contains(&"after".to_string()) && keys.contains(&"before0".to_string()), "{keys:?}");
    had_snapshots
}

/// The command of kubeadm's etcd static pod for etcd 3.6 (Kubernetes 1.33+), with this test's
/// paths and ports: TLS on client and peer URLs with client-certificate auth, plain-http
/// metrics, `--feature-gates=InitialCorruptCheck=true` and `--watch-progress-notify-interval`
/// (3.6's names of kubeadm's earlier `--experimental-*` flags).
fn kubeadm_3_6_command(pki: &common::pki::Pki, data_dir: &Path, client: u16, peer: u16, metrics: u16) -> Vec<String> {
    let (server_cert, server_key) = pki.files("server");
    let (peer_cert, peer_key) = pki.files("peer");
    let ca = pki.ca_file();
    let d = data_dir.display();
    [
        format!("--advertise-client-urls=https://127.0.0.1:{client}"),
        format!("--cert-file={server_cert}"),
        "--client-cert-auth=true".into(),
        format!("--data-dir={d}"),
        "--feature-gates=InitialCorruptCheck=true".into(),
        format!("--initial-advertise-peer-urls=https://127.0.0.1:{peer}"),
        format!("--initial-cluster=cp-1=https://127.0.0.1:{peer}"),
        format!("--key-file={server_key}"),
        format!("--listen-client-urls=https://127.0.0.1:{client}"),
        format!("--listen-metrics-urls=http://127.0.0.1:{metrics}"),
        format!("--listen-peer-urls=https://127.0.0.1:{peer}"),
        "--name=cp-1".into(),
        format!("--peer-cert-file={peer_cert}"),
        "--peer-client-cert-auth=true".into(),
        format!("--peer-key-file={peer_key}"),
        format!("--peer-trusted-ca-file={ca}"),
        "--snapshot-count=10000".into(),
        format!("--trusted-ca-file={ca}"),
        "--watch-progress-notify-interval=5s".into(),
    ]
    .into()
}

/// GET on the plain-http metrics listener: (status, body), or None while nothing answers.
fn metrics_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let code = out.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string()))
}

/// Polls kubeadm's probe path until it answers 200 (at most 30 s).
fn wait_probe(port: u16, path: &str, log: &Path) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some((200, body)) = metrics_get(port, path) {
            return body;
        }
        if std::time::Instant::now() > deadline {
            panic!("{path} never answered 200; log:\n{}", std::fs::read_to_string(log).unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn kubeadm_etcd_3_6_manifest_starts_etcd_rs_unchanged_and_its_feature_gate_runs_the_corruption_check() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = common::pki::Pki::new(tmp.path());
    pki.issue("server", "cp-1", &["127.0.0.1", "localhost"], true);
    pki.issue("peer", "cp-1", &["127.0.0.1", "localhost"], true);
    let (client, peer, metrics) = (free_port(), free_port(), free_port());
    let data_dir = tmp.path().join("etcd");
    let log_path = tmp.path().join("etcd.log");
    let args = kubeadm_3_6_command(&pki, &data_dir, client, peer, metrics);
    let spawn = || {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).unwrap();
        Proc(
            Command::new(env!("CARGO_BIN_EXE_etcd-rs"))
                .args(&args)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap(),
        )
    };
    let p = spawn();
    // kubeadm's probes: startup and readiness /readyz, liveness /livez
    wait_probe(metrics, "/readyz", &log_path);
    wait_probe(metrics, "/livez", &log_path);
    drop(p);
    // InitialCorruptCheck=true: a restarting member checks its data before serving
    let _p = spawn();
    wait_probe(metrics, "/readyz", &log_path);
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("starting initial corruption check"), "{log}");
    assert!(!log.contains("deprecated"), "kubeadm's 3.6 flags must not warn: {log}");
}

/// Runs etcd-rs with `args` (and `env`) expecting it to refuse to start: (exit code, stderr).
fn refused(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_etcd-rs"))
        .arg("--data-dir")
        .arg(tmp.path().join("d"))
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!tmp.path().join("d").exists(), "{args:?} created the data dir");
    (out.status.code(), String::from_utf8_lossy(&out.stderr).to_string())
}

#[test]
fn feature_gate_and_renamed_flag_errors_end_with_etcds_message_and_exit_code() {
    let (code, err) = refused(&["--feature-gates=InitialCorruptCheck=true,Bogus=false"], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains(r#"invalid value "InitialCorruptCheck=true,Bogus=false" for flag -feature-gates: unrecognized feature gate: Bogus"#), "{err}");
    // the ETCD_* variable is read as the flag is
    let (code, err) = refused(&[], &[("ETCD_FEATURE_GATES", "InitialCorruptCheck=maybe")]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("invalid value of InitialCorruptCheck=maybe, err: strconv.ParseBool"), "{err}");
    let (code, err) = refused(&["--feature-gates=InitialCorruptCheck=false"], &[("ETCD_EXPERIMENTAL_INITIAL_CORRUPT_CHECK", "true")]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("cannot specify both flags: --experimental-initial-corrupt-check=true and --feature-gates=InitialCorruptCheck=false"), "{err}");
    let (code, err) = refused(&["--watch-progress-notify-interval=5s"], &[("ETCD_EXPERIMENTAL_WATCH_PROGRESS_NOTIFY_INTERVAL", "1s")]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("cannot set --experimental-watch-progress-notify-interval and --watch-progress-notify-interval at the same time"), "{err}");
    let (code, err) = refused(&["--feature-gates=SetMemberLocalAddr=true"], &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("feature gate SetMemberLocalAddr=true is not supported by etcd-rs yet"), "{err}");
}
