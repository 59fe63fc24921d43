//! etcd-rs and etcd members in one cluster, speaking etcd's peer protocol to each other: an
//! etcd-rs learner joins a running etcd cluster, is promoted, takes the lead and serves writes
//! the etcd members see, and sends an etcd member a snapshot. Needs etcd's binary (`ETCD_BIN`, else /usr/bin/etcd, 3.4.23 in CI);
//! skipped, saying so, when it is missing.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, put, Member};
use etcd_proto::etcdserverpb::cluster_client::ClusterClient;
use etcd_proto::etcdserverpb::kv_client::KvClient;
use etcd_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use etcd_proto::etcdserverpb::{
    HashKvRequest, MemberAddRequest, MemberPromoteRequest, MemberRemoveRequest, MoveLeaderRequest, RangeRequest,
    StatusRequest,
};
use tonic::transport::Channel;

/// Raft timings shared by both implementations (etcd's flags, milliseconds).
const TIMING: [&str; 4] = ["--heartbeat-interval", "50", "--election-timeout", "500"];

fn etcd_binary() -> Option<PathBuf> {
    let path = std::env::var_os("ETCD_BIN").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/usr/bin/etcd"));
    path.exists().then_some(path)
}

/// A real etcd member, killed on drop.
struct EtcdMember {
    name: String,
    bin: PathBuf,
    dir: PathBuf,
    client_port: u16,
    peer_port: u16,
    initial_cluster: String,
    log: PathBuf,
    child: Option<Child>,
}

impl EtcdMember {
    fn start(bin: &Path, dir: &Path, name: &str, client_port: u16, peer_port: u16, initial_cluster: &str) -> EtcdMember {
        let log = dir.join(format!("{name}.log"));
        let (bin, dir, name, initial_cluster) = (bin.to_path_buf(), dir.to_path_buf(), name.to_string(), initial_cluster.to_string());
        let mut m = EtcdMember { name, bin, dir, client_port, peer_port, initial_cluster, log, child: None };
        m.spawn();
        m
    }

    /// Starts the process (again, on its data dir).
    fn spawn(&mut self) {
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let out = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = Command::new(&self.bin)
            .args(["--name", &self.name, "--data-dir"])
            .arg(self.dir.join(format!("{}.etcd", self.name)))
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial_cluster, "--initial-cluster-token", "mixed", "--initial-cluster-state", "new"])
            .args(TIMING)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start etcd");
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }
}

impl Drop for EtcdMember {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn channel(endpoint: &str) -> Channel {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // every call bounded: a stuck member fails the test instead of hanging it
        let ep = Channel::from_shared(endpoint.to_string()).unwrap().timeout(Duration::from_secs(10));
        if let Ok(ch) = ep.connect().await {
            return ch;
        }
        assert!(Instant::now() < deadline, "{endpoint} did not accept connections in 20 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every key and value, read serializably (a learner answers those) or linearizably.
async fn keys(endpoint: &str, serializable: bool) -> Result<Vec<(Vec<u8>, Vec<u8>)>, tonic::Status> {
    let mut kv = KvClient::new(channel(endpoint).await);
    let all = RangeRequest { key: vec![0], range_end: vec![0], serializable, ..Default::default() };
    Ok(kv.range(all).await?.into_inner().kvs.into_iter().map(|kv| (kv.key, kv.value)).collect())
}

/// Retries `f` every 200 ms until it answers Ok, for at most `limit`.
async fn eventually<T, F, Fut>(what: &str, limit: Duration, logs: &dyn Fn() -> String, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + limit;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) if Instant::now() >= deadline => panic!("{what}: not done in {limit:?}: {e}\n{}", logs()),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_etcd_rs_learner_joins_an_etcd_cluster_is_promoted_leads_it_and_catches_an_etcd_member_up_by_snapshot() {
    let Some(bin) = etcd_binary() else {
        eprintln!("skipped: no etcd binary at /usr/bin/etcd (set ETCD_BIN)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let initial: Vec<String> = ports.iter().enumerate().map(|(i, (_, p))| format!("e{i}=http://127.0.0.1:{p}")).collect();
    let mut etcd: Vec<EtcdMember> =
        (0..3).map(|i| EtcdMember::start(&bin, dir.path(), &format!("e{i}"), ports[i].0, ports[i].1, &initial.join(","))).collect();
    // snapshots every 20 entries keeping 5: an etcd member down for 60 writes needs one
    let rs_flags = ["--initial-cluster-state", "existing", "--snapshot-count", "20", "--experimental-snapshot-catchup-entries", "5"];
    let mut rs = Member::new(&dir.path().join("rs1.etcd"), &[&rs_flags[..], &TIMING[..]].concat());
    rs.name = "rs1".into();
    let rs_log = rs.data_dir.with_extension("log");
    let log_files: Vec<PathBuf> = etcd.iter().map(|e| e.log.clone()).chain([rs_log]).collect();
    let logs = || {
        let read = |p: &PathBuf| format!("--- {} ---\n{}\n", p.display(), std::fs::read_to_string(p).unwrap_or_default());
        log_files.iter().map(read).collect::<String>()
    };

    // data written before the learner exists
    let e0 = etcd[0].endpoint();
    let mut kv = eventually("etcd serves", Duration::from_secs(20), &logs, || async {
        let mut kv = KvClient::new(channel(&e0).await);
        put(&mut kv, "before/0", "etcd").await.map(|_| kv).map_err(|e| e.to_string())
    })
    .await;
    for i in 1..20 {
        put(&mut kv, &format!("before/{i}"), "etcd").await.unwrap();
    }

    // etcdctl member add rs1 --learner, then etcd-rs joins with --initial-cluster-state existing
    let rs_peer = format!("http://127.0.0.1:{}", rs.peer_port);
    let cluster = ClusterClient::new(channel(&e0).await);
    // (etcd refuses a member add until its members have been connected for 5 s)
    let added = eventually("member add", Duration::from_secs(20), &logs, || {
        let (mut cluster, urls) = (cluster.clone(), vec![rs_peer.clone()]);
        async move { cluster.member_add(MemberAddRequest { peer_ur_ls: urls, is_learner: true }).await.map_err(|e| e.to_string()) }
    })
    .await
    .into_inner();
    let rs_id = added.member.unwrap().id;
    rs.initial_cluster = Some(format!("{},rs1={rs_peer}", initial.join(",")));
    rs.start();

    // the learner gets the data (serializable reads: a learner serves only those)
    let want = keys(&e0, false).await.unwrap();
    assert_eq!(want.len(), 20);
    let rs_end = rs.endpoint();
    eventually("the learner catches up", Duration::from_secs(20), &logs, || async {
        let got = keys(&rs_end, true).await.map_err(|e| e.to_string())?;
        if got == want { Ok(()) } else { Err(format!("{} keys of {}", got.len(), want.len())) }
    })
    .await;

    // promoted through an etcd member, then handed the lead by the etcd leader
    eventually("promote", Duration::from_secs(20), &logs, || {
        let mut cluster = cluster.clone();
        async move { cluster.member_promote(MemberPromoteRequest { id: rs_id }).await.map(|_| ()).map_err(|e| e.to_string()) }
    })
    .await;
    eventually("move-leader", Duration::from_secs(20), &logs, || {
        let etcd = &etcd;
        async move {
            let status = MaintenanceClient::new(channel(&etcd[0].endpoint()).await).status(StatusRequest {}).await.map_err(|e| e.to_string())?;
            let leader = status.into_inner().leader;
            // the etcd leader's client URL: ask each etcd member which one it is
            for e in etcd {
                let mut m = MaintenanceClient::new(channel(&e.endpoint()).await);
                let st = m.status(StatusRequest {}).await.map_err(|e| e.to_string())?.into_inner();
                if st.header.map(|h| h.member_id) == Some(leader) {
                    m.move_leader(MoveLeaderRequest { target_id: rs_id }).await.map_err(|e| e.to_string())?;
                    return Ok(());
                }
            }
            Err(format!("leader {leader:x} is not an etcd member"))
        }
    })
    .await;
    let st = MaintenanceClient::new(channel(&rs_end).await).status(StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(st.leader, rs_id, "etcd-rs leads");
    assert!(!st.is_learner);

    // writes through the etcd-rs leader reach the etcd members
    let mut rs_kv = KvClient::new(channel(&rs_end).await);
    let mut rev = 0;
    for i in 0..10 {
        rev = put(&mut rs_kv, &format!("after/{i}"), "etcd-rs").await.unwrap();
    }
    let want = keys(&rs_end, false).await.unwrap();
    assert_eq!(want.len(), 30);
    for e in &etcd {
        assert_eq!(keys(&e.endpoint(), false).await.unwrap(), want, "{} has the writes made through etcd-rs", e.name);
    }

    // every member hashes the same history alike
    let mut hashes = Vec::new();
    for end in etcd.iter().map(|e| e.endpoint()).chain([rs_end.clone()]) {
        let h = MaintenanceClient::new(channel(&end).await).hash_kv(HashKvRequest { revision: rev }).await.unwrap().into_inner();
        hashes.push((end, h.hash, h.compact_revision));
    }
    assert!(hashes.iter().all(|h| (h.1, h.2) == (hashes[0].1, hashes[0].2)), "HashKV at {rev} differs: {hashes:?}");

    // an etcd member down while the etcd-rs leader compacts its log catches up from etcd-rs's
    // snapshot (etcd's bbolt database and v2 store JSON)
    etcd[1].kill();
    for i in 0..60 {
        rev = put(&mut rs_kv, &format!("while-down/{i}"), "etcd-rs").await.unwrap();
    }
    etcd[1].spawn();
    let want = keys(&rs_end, false).await.unwrap();
    let e1 = etcd[1].endpoint();
    eventually("the etcd member catches up", Duration::from_secs(30), &logs, || async {
        let got = keys(&e1, true).await.map_err(|e| e.to_string())?;
        if got == want { Ok(()) } else { Err(format!("{} keys of {}", got.len(), want.len())) }
    })
    .await;
    let hash = |end: String| async move {
        let h = MaintenanceClient::new(channel(&end).await).hash_kv(HashKvRequest { revision: rev }).await.unwrap().into_inner();
        (h.hash, h.compact_revision)
    };
    assert_eq!(hash(e1.clone()).await, hash(rs_end.clone()).await, "HashKV at {rev} after the snapshot");
    let e1_log = std::fs::read_to_string(&etcd[1].log).unwrap();
    // 3.4's capnslog says "raft applied incoming snapshot", 3.5's zap "applied snapshot"
    let applied = e1_log.contains("applied incoming snapshot") || e1_log.contains("applied snapshot");
    assert!(e1_log.contains("received and saved database snapshot") && applied, "{}", logs());

    // the etcd-rs leader removes an etcd member, which stops
    let e2_id = {
        let st = MaintenanceClient::new(channel(&etcd[2].endpoint()).await).status(StatusRequest {}).await.unwrap().into_inner();
        st.header.unwrap().member_id
    };
    let mut rs_cluster = ClusterClient::new(channel(&rs_end).await);
    let left = rs_cluster.member_remove(MemberRemoveRequest { id: e2_id }).await.unwrap().into_inner();
    assert_eq!(left.members.len(), 3);
    put(&mut rs_kv, "after/removal", "x").await.unwrap();
    assert_eq!(keys(&etcd[0].endpoint(), false).await.unwrap().len(), 91);
}
