//! A cluster whose members may run different binaries (etcd 3.5.1, etcd 3.4.23, etcd-rs), changed
//! at run time the way an operator changes one: member add --learner, start with
//! `--initial-cluster-state existing`, promote, move-leader, remove.
//!
//! Invariant: the fleet knows every member it ever started and what it wants of it (voting,
//! learner, paused, stopped, removed); a member process that exited while it was wanted up is a
//! crash and fails the next [`Fleet::crashed`] check. Every process is SIGKILLed when the fleet
//! is dropped, before its temp dir (data dirs and logs) is removed. Membership changes go through
//! etcd's gRPC Cluster and Maintenance APIs, as `etcdctl member ...` / `move-leader` send them.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use etcd_proto::etcdserverpb::cluster_client::ClusterClient;
use etcd_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use etcd_proto::etcdserverpb::{
    MemberAddRequest, MemberListRequest, MemberPromoteRequest, MemberRemoveRequest,
    MoveLeaderRequest, StatusRequest, StatusResponse,
};
use etcd_robustness::client::channel;
use etcd_robustness::cluster::free_port;
use etcd_robustness::process::{exit_reason, signal, spawn_member, stop_child, MemberFlags};
use tonic::transport::Channel;

use crate::member::log_tail;

/// How long a started member may take to answer Status.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a membership change or leader move may be retried.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(60);
const RPC_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a removed member may take to stop by itself before it is killed.
const REMOVED_EXIT_WITHIN: Duration = Duration::from_secs(10);
const CLUSTER_TOKEN: &str = "migration-token";

/// An etcd-compatible server binary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Etcd35,
    Etcd34,
    EtcdRs,
}

impl Kind {
    /// Short name, used in member names and messages.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Etcd35 => "etcd35",
            Kind::Etcd34 => "etcd34",
            Kind::EtcdRs => "rs",
        }
    }

    /// The binary: `ETCD_35_BIN` (default /opt/etcd-3.5/bin/etcd), `ETCD_34_BIN` (default
    /// /usr/bin/etcd), `ETCD_RS_BIN` (default the workspace's target/release/etcd-rs).
    pub fn binary(self) -> PathBuf {
        let env = |key: &str| {
            std::env::var_os(key)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        match self {
            Kind::Etcd35 => env("ETCD_35_BIN").unwrap_or_else(|| "/opt/etcd-3.5/bin/etcd".into()),
            Kind::Etcd34 => env("ETCD_34_BIN").unwrap_or_else(|| "/usr/bin/etcd".into()),
            Kind::EtcdRs => env("ETCD_RS_BIN")
                .unwrap_or_else(|| crate::workspace_dir().join("target/release/etcd-rs")),
        }
    }

    /// Why this binary cannot be run here, if it cannot.
    pub fn missing(self) -> Option<String> {
        let path = self.binary();
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => None,
            _ => Some(format!("{} not found at {}", self.label(), path.display())),
        }
    }
}

/// Flags every member gets (all three binaries accept them).
#[derive(Clone, Copy, Debug)]
pub struct Tuning {
    pub snapshot_count: u64,
    pub heartbeat_ms: u64,
    pub election_ms: u64,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            snapshot_count: 10_000,
            heartbeat_ms: 100,
            election_ms: 1000,
        }
    }
}

/// What the test wants of a member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Voter,
    Learner,
    /// SIGSTOPped: a voter that answers nobody, peers included.
    Paused,
    /// Killed or stopped, may be restarted on its data dir.
    Down,
    /// Removed from the cluster; never started again.
    Removed,
}

pub struct Member {
    pub name: String,
    pub kind: Kind,
    pub client_port: u16,
    pub peer_port: u16,
    /// Raft member ID, as the cluster's member list reports it.
    pub id: u64,
    pub role: Role,
    initial_cluster: String,
    initial_state: &'static str,
    child: Option<Child>,
}

impl Member {
    pub fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

pub struct Fleet {
    // Declared before `dir`: processes die before their data dirs go.
    pub members: Vec<Member>,
    tuning: Tuning,
    dir: tempfile::TempDir,
}

impl Fleet {
    /// Starts a new cluster with one member per entry of `kinds` and waits until every member
    /// answers and they agree on a leader.
    pub async fn bootstrap(kinds: &[Kind], tuning: Tuning) -> Result<Fleet, String> {
        // MIGTEST_KEEP=1 keeps the data dirs and logs for inspection (remove them yourself).
        let keep = std::env::var("MIGTEST_KEEP").is_ok_and(|v| v == "1");
        let dir = tempfile::Builder::new()
            .prefix("migtest-")
            .disable_cleanup(keep)
            .tempdir()
            .map_err(|e| format!("cannot create a temp dir: {e}"))?;
        let mut fleet = Fleet {
            members: Vec::new(),
            tuning,
            dir,
        };
        for &kind in kinds {
            fleet.plan(kind, "new");
        }
        let initial = fleet.initial_cluster(|_| true);
        for i in 0..fleet.members.len() {
            fleet.members[i].initial_cluster = initial.clone();
            fleet.spawn(i)?;
            fleet.members[i].role = Role::Voter;
        }
        for i in 0..fleet.members.len() {
            fleet.wait_answers(i).await?;
        }
        fleet.learn_ids().await?;
        fleet.wait_leader().await?;
        Ok(fleet)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log_path(&self, i: usize) -> PathBuf {
        self.dir
            .path()
            .join(format!("{}.log", self.members[i].name))
    }

    fn data_dir(&self, i: usize) -> PathBuf {
        self.dir
            .path()
            .join(format!("{}.data", self.members[i].name))
    }

    /// The last lines of member `i`'s log, for failure messages.
    pub fn log_tail(&self, i: usize, lines: usize) -> String {
        log_tail(&self.log_path(i), lines)
    }

    /// Adds a member slot with fresh ports and a name saying its binary.
    fn plan(&mut self, kind: Kind, state: &'static str) -> usize {
        let i = self.members.len();
        self.members.push(Member {
            name: format!("{}-{i}", kind.label()),
            kind,
            client_port: free_port(),
            peer_port: free_port(),
            id: 0,
            role: Role::Down,
            initial_cluster: String::new(),
            initial_state: state,
            child: None,
        });
        i
    }

    /// `name=peer-url,...` of the members `which` selects.
    fn initial_cluster(&self, which: impl Fn(&Member) -> bool) -> String {
        self.members
            .iter()
            .filter(|m| which(m))
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn spawn(&mut self, i: usize) -> Result<(), String> {
        let data_dir = self.data_dir(i);
        let t = self.tuning;
        let m = &self.members[i];
        let flags = MemberFlags {
            name: &m.name,
            data_dir: &data_dir,
            client_url: &m.client_url(),
            listen_peer_url: &m.peer_url(),
            advertised_peer_url: &m.peer_url(),
            initial_cluster: &m.initial_cluster,
            initial_state: m.initial_state,
            token: CLUSTER_TOKEN,
            snapshot_count: t.snapshot_count,
            heartbeat_ms: t.heartbeat_ms,
            election_ms: t.election_ms,
        };
        let child = spawn_member(&m.kind.binary(), &flags, &self.log_path(i))?;
        self.members[i].child = Some(child);
        Ok(())
    }

    /// Whether member `i`'s process has exited (reaping it), with its exit status.
    fn exited(&mut self, i: usize) -> Option<String> {
        exit_reason(self.members[i].child.as_mut()?)
    }

    /// Members that exited although the test wanted them up, each with its log tail.
    pub fn crashed(&mut self) -> Vec<String> {
        let mut crashed = Vec::new();
        for i in 0..self.members.len() {
            let up = matches!(
                self.members[i].role,
                Role::Voter | Role::Learner | Role::Paused
            );
            if !up {
                continue;
            }
            if let Some(why) = self.exited(i) {
                self.members[i].child = None;
                self.members[i].role = Role::Down;
                crashed.push(format!(
                    "member {} exited ({why})\n{}",
                    self.members[i].name,
                    self.log_tail(i, 25)
                ));
            }
        }
        crashed
    }

    async fn status_of(&self, i: usize) -> Result<StatusResponse, String> {
        let url = self.members[i].client_url();
        let ch = channel(&url, Some(RPC_TIMEOUT))?;
        MaintenanceClient::new(ch)
            .status(StatusRequest {})
            .await
            .map(|r| r.into_inner())
            .map_err(|e| format!("status of {}: {}", self.members[i].name, e.message()))
    }

    /// Waits until member `i` answers Status (a learner does too).
    async fn wait_answers(&mut self, i: usize) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(why) = self.exited(i) {
                self.members[i].child = None;
                return Err(format!(
                    "member {} exited while starting ({why})\n{}",
                    self.members[i].name,
                    self.log_tail(i, 25)
                ));
            }
            if self.status_of(i).await.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "member {} did not answer Status within {START_TIMEOUT:?}\n{}",
                    self.members[i].name,
                    self.log_tail(i, 25)
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Indexes of the running voters (not paused, not learners).
    pub fn voters(&self) -> Vec<usize> {
        (0..self.members.len())
            .filter(|&i| self.members[i].role == Role::Voter)
            .collect()
    }

    /// Client URLs of the running voters: where clients may be served.
    pub fn voter_urls(&self) -> Vec<String> {
        self.voters()
            .into_iter()
            .map(|i| self.members[i].client_url())
            .collect()
    }

    /// The members the running voters agree is the leader, if they agree.
    pub async fn leader(&self) -> Option<usize> {
        let mut leader = None;
        for i in self.voters() {
            let s = self.status_of(i).await.ok()?;
            if s.leader == 0 || leader.is_some_and(|l| l != s.leader) {
                return None;
            }
            leader = Some(s.leader);
        }
        let id = leader?;
        self.members.iter().position(|m| m.id == id)
    }

    /// Waits until the running voters agree on a leader (one of them).
    pub async fn wait_leader(&self) -> Result<usize, String> {
        let deadline = Instant::now() + CHANGE_TIMEOUT;
        loop {
            if let Some(l) = self.leader().await {
                if self.members[l].role == Role::Voter {
                    return Ok(l);
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the voters agreed on no leader within {CHANGE_TIMEOUT:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn cluster_client(&self, on: usize) -> Result<ClusterClient<Channel>, String> {
        Ok(ClusterClient::new(channel(
            &self.members[on].client_url(),
            Some(RPC_TIMEOUT),
        )?))
    }

    /// Fills every member's raft ID from the member list (matched by peer URL).
    async fn learn_ids(&mut self) -> Result<(), String> {
        let on = *self.voters().first().ok_or("no running voter")?;
        let list = self
            .cluster_client(on)?
            .member_list(MemberListRequest::default())
            .await
            .map_err(|e| format!("member list: {}", e.message()))?
            .into_inner();
        for m in &mut self.members {
            if let Some(listed) = list
                .members
                .iter()
                .find(|l| l.peer_ur_ls.contains(&m.peer_url()))
            {
                m.id = listed.id;
            }
        }
        Ok(())
    }

    /// Runs `attempt` on each running voter in turn until one succeeds or the change timeout
    /// passes; `retry_on` says which errors are worth another try.
    async fn on_some_voter<T, F, Fut>(&self, what: &str, mut attempt: F) -> Result<T, String>
    where
        F: FnMut(usize) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let deadline = Instant::now() + CHANGE_TIMEOUT;
        let mut turn = 0;
        loop {
            let voters = self.voters();
            if voters.is_empty() {
                return Err(format!("{what}: no running voter"));
            }
            let on = voters[turn % voters.len()];
            turn += 1;
            match attempt(on).await {
                Ok(t) => return Ok(t),
                Err(e) if Instant::now() > deadline => {
                    return Err(format!(
                        "{what} failed for {CHANGE_TIMEOUT:?}; last answer from {}: {:?} {}",
                        self.members[on].name,
                        e.code(),
                        e.message()
                    ))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
            }
        }
    }

    /// `member add --learner` for a new member of `kind`, then starts it with
    /// `--initial-cluster-state existing` and waits until it answers. Returns its index.
    pub async fn add_learner(&mut self, kind: Kind) -> Result<usize, String> {
        if let Some(why) = kind.missing() {
            return Err(why);
        }
        let i = self.plan(kind, "existing");
        let url = self.members[i].peer_url();
        let added = self
            .on_some_voter("member add --learner", |on| {
                let url = url.clone();
                let client = self.cluster_client(on);
                async move {
                    let mut client = client.map_err(tonic::Status::unavailable)?;
                    let r = client
                        .member_add(MemberAddRequest {
                            peer_ur_ls: vec![url.clone()],
                            is_learner: true,
                        })
                        .await;
                    match r {
                        Ok(r) => Ok(r.into_inner().member.map(|m| m.id)),
                        // an earlier attempt that timed out may have added it
                        Err(e) if e.message().contains("Peer URLs already exists") => Ok(None),
                        Err(e) => Err(e),
                    }
                }
            })
            .await?;
        match added {
            Some(id) => self.members[i].id = id,
            None => self.learn_ids().await?,
        }
        if self.members[i].id == 0 {
            return Err(format!(
                "member add: {} has no ID in the member list",
                self.members[i].name
            ));
        }
        // etcd checks that --initial-cluster lists exactly the cluster's members
        let initial = self.initial_cluster(|m| m.role != Role::Removed);
        self.members[i].initial_cluster = initial;
        self.members[i].role = Role::Learner;
        self.spawn(i)?;
        self.wait_answers(i).await?;
        Ok(i)
    }

    /// `member promote`, retried while etcd says the learner is not yet in sync with the leader.
    pub async fn promote(&mut self, i: usize) -> Result<(), String> {
        let id = self.members[i].id;
        self.on_some_voter(&format!("member promote {}", self.members[i].name), |on| {
            let client = self.cluster_client(on);
            async move {
                let mut client = client.map_err(tonic::Status::unavailable)?;
                match client.member_promote(MemberPromoteRequest { id }).await {
                    Ok(_) => Ok(()),
                    // an earlier attempt that timed out may have promoted it
                    Err(e) if e.message() == "etcdserver: can only promote a learner member" => {
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
        })
        .await?;
        self.members[i].role = Role::Voter;
        Ok(())
    }

    /// `move-leader` to member `to` (sent to the current leader, as etcdctl does), then waits until
    /// every voter names `to` as leader.
    pub async fn move_leader(&mut self, to: usize) -> Result<(), String> {
        let target_id = self.members[to].id;
        let deadline = Instant::now() + CHANGE_TIMEOUT;
        loop {
            let leader = self.wait_leader().await?;
            if leader == to {
                return Ok(());
            }
            let ch = channel(&self.members[leader].client_url(), Some(RPC_TIMEOUT))?;
            let answer = MaintenanceClient::new(ch)
                .move_leader(MoveLeaderRequest { target_id })
                .await;
            if Instant::now() > deadline {
                return Err(format!(
                    "move-leader to {} did not happen within {CHANGE_TIMEOUT:?}; last answer: {answer:?}",
                    self.members[to].name
                ));
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// `member remove` of member `i` (sent to another voter), then waits for its process to stop
    /// by itself as a removed etcd member does, killing it when it does not. Ok(true) when it
    /// stopped by itself.
    pub async fn remove(&mut self, i: usize) -> Result<bool, String> {
        let id = self.members[i].id;
        self.members[i].role = Role::Removed;
        let result = self
            .on_some_voter(&format!("member remove {}", self.members[i].name), |on| {
                let client = self.cluster_client(on);
                async move {
                    let mut client = client.map_err(tonic::Status::unavailable)?;
                    match client.member_remove(MemberRemoveRequest { id }).await {
                        Ok(_) => Ok(()),
                        // an earlier attempt that timed out may have removed it
                        Err(e) if e.code() == tonic::Code::NotFound => Ok(()),
                        Err(e) => Err(e),
                    }
                }
            })
            .await;
        let deadline = Instant::now() + REMOVED_EXIT_WITHIN;
        let mut stopped = self.exited(i).is_some();
        while !stopped && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            stopped = self.exited(i).is_some();
        }
        self.kill(i, libc::SIGKILL).await;
        self.members[i].role = Role::Removed;
        result.map(|()| stopped)
    }

    /// Sends `sig` to member `i` and waits until it exited; it is down until restarted.
    pub async fn kill(&mut self, i: usize, sig: libc::c_int) {
        if self.members[i].role != Role::Removed {
            self.members[i].role = Role::Down;
        }
        if let Some(child) = self.members[i].child.take() {
            stop_child(child, sig, Duration::from_secs(10)).await;
        }
    }

    /// Starts a down voter again on its data dir and waits until it answers.
    pub async fn restart(&mut self, i: usize) -> Result<(), String> {
        if self.members[i].role != Role::Down {
            return Err(format!("{} is not down", self.members[i].name));
        }
        self.spawn(i)?;
        self.members[i].role = Role::Voter;
        self.wait_answers(i).await
    }

    /// SIGSTOP: the member stops answering anyone, peers included, until [`Fleet::resume`].
    pub fn pause(&mut self, i: usize) {
        if let Some(pid) = self.members[i].pid() {
            signal(pid, libc::SIGSTOP);
            self.members[i].role = Role::Paused;
        }
    }

    pub fn resume(&mut self, i: usize) {
        if let Some(pid) = self.members[i].pid() {
            signal(pid, libc::SIGCONT);
            self.members[i].role = Role::Voter;
        }
    }

    /// Member `i`'s applied store revision (Status header).
    pub async fn revision(&self, i: usize) -> Result<i64, String> {
        Ok(self.status_of(i).await?.header.map_or(0, |h| h.revision))
    }

    /// Member `i`'s Prometheus exposition (`/metrics` on its client URL).
    pub async fn metrics(&self, i: usize) -> Result<String, String> {
        http_get(self.members[i].client_port, "/metrics").await
    }

    /// A one-line picture of the fleet for progress messages: `name(role, leader)`.
    pub async fn describe(&self) -> String {
        let leader = self.leader().await;
        self.members
            .iter()
            .enumerate()
            .filter(|(_, m)| m.role != Role::Removed)
            .map(|(i, m)| {
                let mark = if Some(i) == leader { ", leader" } else { "" };
                format!("{}({:?}{mark})", m.name, m.role)
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut child) = m.child.take() {
                signal(child.id(), libc::SIGCONT);
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// A plain HTTP/1.0 GET on 127.0.0.1:`port`; the body of a 200 answer.
async fn http_get(port: u16, path: &str) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
            .await?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&out).into_owned())
    };
    let text = tokio::time::timeout(RPC_TIMEOUT, fetch)
        .await
        .map_err(|_| format!("GET {path} on port {port}: timed out"))?
        .map_err(|e| format!("GET {path} on port {port}: {e}"))?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        return Err(format!(
            "GET {path} on port {port}: {}",
            head.lines().next().unwrap_or("")
        ));
    }
    Ok(body.to_string())
}
