//! A cluster of any etcd-compatible binary (etcd-rs, etcd 3.4, etcd 3.5) on 127.0.0.1.
//!
//! Invariant: the driver knows, for every member, whether it asked it to be down; a member
//! process that exited without being asked is a crash ([`Cluster::crashed`]), which fails the
//! run. Members are started only with flags all three binaries accept, each with its log in
//! `<dir>/<name>.log`. A member's peer URL as advertised to the others may be a proxy in front
//! of its peer listener (see `set_advertised_peers`), so network faults can sit between peers.

use crate::client::channel;
use crate::network::PeerNetwork;
use crate::process::{exit_reason, signal, spawn_member, stop_child, MemberFlags};
use etcd_proto::etcdserverpb::cluster_client::ClusterClient;
use etcd_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use etcd_proto::etcdserverpb::{
    MemberAddRequest, MemberListRequest, MemberPromoteRequest, MemberRemoveRequest, StatusRequest,
};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use tonic::Code;

/// How long a member may take to answer after a (re)start.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a SIGTERM'd member may take to exit before it is killed.
const TERM_TIMEOUT: Duration = Duration::from_secs(10);
const RPC_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Clone, Debug)]
pub struct ClusterConfig {
    pub binary: PathBuf,
    pub members: usize,
    /// Data dirs and logs go here.
    pub dir: PathBuf,
    pub snapshot_count: u64,
    pub heartbeat_ms: u64,
    pub election_ms: u64,
}

/// The state of one member slot, as the driver wants it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wanted {
    Running,
    Paused,
    Down,
}

pub struct Member {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    /// The peer address the other members reach this one on (a proxy, or the peer port).
    pub advertised_peer: SocketAddr,
    /// Bumped on every replacement: the data dir is `<name>.<generation>`.
    pub generation: u32,
    pub wanted: Wanted,
    child: Option<Child>,
}

impl Member {
    pub fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub fn peer_listen_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.peer_port))
    }

    fn advertised_peer_url(&self) -> String {
        format!("http://{}", self.advertised_peer)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

pub struct Cluster {
    pub config: ClusterConfig,
    pub members: Vec<Member>,
    token: String,
    /// The proxies between the members, when network faults are wanted.
    pub network: Option<PeerNetwork>,
}

/// A free port below the kernel's ephemeral range (a port handed out by `bind(0)` can be taken
/// by an outgoing connection before the member binds it), in turn per process.
pub fn free_port() -> u16 {
    const FIRST: u32 = 12000;
    const COUNT: u32 = 20000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let seed = (std::process::id().wrapping_mul(7919) + 5003) % COUNT;
    let _ = NEXT.compare_exchange(u32::MAX, seed, Ordering::AcqRel, Ordering::Acquire);
    for _ in 0..COUNT {
        let port = (FIRST + NEXT.fetch_add(1, Ordering::AcqRel) % COUNT) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map_or(0, |a| a.port())
}

impl Cluster {
    /// Plans the cluster (ports, names); nothing runs until [`Cluster::start_all`].
    pub fn new(config: ClusterConfig) -> Result<Cluster, String> {
        std::fs::create_dir_all(&config.dir)
            .map_err(|e| format!("cannot create {}: {e}", config.dir.display()))?;
        let members = (0..config.members)
            .map(|i| {
                let peer_port = free_port();
                Member {
                    name: format!("m{i}"),
                    client_port: free_port(),
                    peer_port,
                    advertised_peer: SocketAddr::from(([127, 0, 0, 1], peer_port)),
                    generation: 0,
                    wanted: Wanted::Down,
                    child: None,
                }
            })
            .collect();
        Ok(Cluster {
            token: format!("robustness-{}", std::process::id()),
            config,
            members,
            network: None,
        })
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn client_urls(&self) -> Vec<String> {
        self.members.iter().map(Member::client_url).collect()
    }

    pub fn peer_listen_addrs(&self) -> Vec<SocketAddr> {
        self.members.iter().map(Member::peer_listen_addr).collect()
    }

    /// Puts a proxy in front of every member's peer listener and advertises the proxies as the
    /// members' peer URLs; call before the first start.
    pub async fn attach_network(&mut self) -> Result<(), String> {
        let network = PeerNetwork::start(&self.peer_listen_addrs())
            .await
            .map_err(|e| format!("cannot start the peer proxies: {e}"))?;
        for (i, m) in self.members.iter_mut().enumerate() {
            m.advertised_peer = network.proxy_addr(i);
        }
        self.network = Some(network);
        Ok(())
    }

    fn data_dir(&self, i: usize) -> PathBuf {
        let m = &self.members[i];
        self.config.dir.join(format!("{}.{}", m.name, m.generation))
    }

    pub fn log_path(&self, i: usize) -> PathBuf {
        self.config
            .dir
            .join(format!("{}.log", self.members[i].name))
    }

    fn initial_cluster(&self, which: impl Fn(usize) -> bool) -> String {
        self.members
            .iter()
            .enumerate()
            .filter(|(i, _)| which(*i))
            .map(|(_, m)| format!("{}={}", m.name, m.advertised_peer_url()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts every member of a new cluster and waits until each answers.
    pub async fn start_all(&mut self) -> Result<(), String> {
        let initial = self.initial_cluster(|_| true);
        for i in 0..self.len() {
            self.spawn(i, &initial, "new")?;
        }
        for i in 0..self.len() {
            self.wait_ready(i).await?;
        }
        Ok(())
    }

    /// Starts member `i` on its existing data dir (the initial-cluster flags are then ignored).
    pub async fn restart(&mut self, i: usize) -> Result<(), String> {
        self.restart_all(&[i]).await
    }

    /// Starts `members` on their data dirs, all before waiting for any: a member may answer
    /// only once a quorum is up (etcd serves clients after it published itself through raft).
    pub async fn restart_all(&mut self, members: &[usize]) -> Result<(), String> {
        let initial = self.initial_cluster(|_| true);
        for &i in members {
            if self.members[i].child.is_some() {
                return Err(format!("{} is still running", self.members[i].name));
            }
            self.spawn(i, &initial, "new")?;
        }
        for &i in members {
            self.wait_ready(i).await?;
        }
        Ok(())
    }

    /// The members the driver took down (or that crashed).
    pub fn down(&self) -> Vec<usize> {
        (0..self.len())
            .filter(|&i| self.members[i].child.is_none())
            .collect()
    }

    fn spawn(&mut self, i: usize, initial_cluster: &str, state: &str) -> Result<(), String> {
        let data_dir = self.data_dir(i);
        let m = &self.members[i];
        let flags = MemberFlags {
            name: &m.name,
            data_dir: &data_dir,
            client_url: &m.client_url(),
            listen_peer_url: &format!("http://{}", m.peer_listen_addr()),
            advertised_peer_url: &m.advertised_peer_url(),
            initial_cluster,
            initial_state: state,
            token: &self.token,
            snapshot_count: self.config.snapshot_count,
            heartbeat_ms: self.config.heartbeat_ms,
            election_ms: self.config.election_ms,
        };
        let child = spawn_member(&self.config.binary, &flags, &self.log_path(i))?;
        if let Some(network) = &self.network {
            network.set_pid(i, child.id());
        }
        let m = &mut self.members[i];
        m.child = Some(child);
        m.wanted = Wanted::Running;
        Ok(())
    }

    /// Waits until member `i` answers a Status call (it has joined and applied its log).
    pub async fn wait_ready(&mut self, i: usize) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(why) = self.exited(i) {
                return Err(format!(
                    "{} exited while starting: {why}",
                    self.members[i].name
                ));
            }
            if self.status(i).await.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{} did not answer within {START_TIMEOUT:?} (log: {})",
                    self.members[i].name,
                    self.log_path(i).display()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Why member `i`'s process is gone, if it is.
    fn exited(&mut self, i: usize) -> Option<String> {
        exit_reason(self.members[i].child.as_mut()?)
    }

    /// Members whose process exited although the driver wanted them up: "member crashed".
    pub fn crashed(&mut self) -> Vec<String> {
        let up: Vec<usize> = (0..self.len())
            .filter(|&i| self.members[i].wanted != Wanted::Down)
            .collect();
        up.into_iter()
            .filter_map(|i| {
                let why = self.exited(i)?;
                let name = self.members[i].name.clone();
                self.members[i].child = None;
                self.members[i].wanted = Wanted::Down;
                Some(format!(
                    "member {name} crashed ({why}); log: {}",
                    self.log_path(i).display()
                ))
            })
            .collect()
    }

    /// Sends `sig` (SIGKILL or SIGTERM) to member `i` and waits until it exited.
    pub async fn stop(&mut self, i: usize, sig: libc::c_int) -> Result<(), String> {
        self.members[i].wanted = Wanted::Down;
        let Some(child) = self.members[i].child.take() else {
            return Ok(());
        };
        if stop_child(child, sig, TERM_TIMEOUT).await {
            Ok(())
        } else {
            Err(format!(
                "{} did not exit within {TERM_TIMEOUT:?} of signal {sig}",
                self.members[i].name
            ))
        }
    }

    /// SIGSTOP: the member stops answering anyone, peers included.
    pub fn pause(&mut self, i: usize) {
        if let Some(pid) = self.members[i].pid() {
            signal(pid, libc::SIGSTOP);
            self.members[i].wanted = Wanted::Paused;
        }
    }

    pub fn resume(&mut self, i: usize) {
        if let Some(pid) = self.members[i].pid() {
            signal(pid, libc::SIGCONT);
            self.members[i].wanted = Wanted::Running;
        }
    }

    /// The running member indexes.
    pub fn running(&self) -> Vec<usize> {
        (0..self.len())
            .filter(|&i| self.members[i].wanted == Wanted::Running)
            .collect()
    }

    async fn status(
        &self,
        i: usize,
    ) -> Result<etcd_proto::etcdserverpb::StatusResponse, tonic::Status> {
        let ch = channel(&self.members[i].client_url(), Some(RPC_TIMEOUT))
            .map_err(tonic::Status::unavailable)?;
        Ok(MaintenanceClient::new(ch)
            .status(StatusRequest {})
            .await?
            .into_inner())
    }

    /// Member `i`'s store revision.
    pub async fn revision(&self, i: usize) -> Result<i64, String> {
        let s = self
            .status(i)
            .await
            .map_err(|e| format!("status of {}: {}", self.members[i].name, e.message()))?;
        Ok(s.header.map_or(0, |h| h.revision))
    }

    /// The index of the member every running member that answers names as leader, if they agree.
    pub async fn leader(&self) -> Option<usize> {
        let mut ids = vec![None; self.len()];
        let mut leader_id = None;
        for i in self.running() {
            let Ok(s) = self.status(i).await else {
                continue;
            };
            ids[i] = s.header.map(|h| h.member_id);
            if s.leader == 0 || leader_id.is_some_and(|l| l != s.leader) {
                return None;
            }
            leader_id = Some(s.leader);
        }
        let leader_id = leader_id?;
        ids.iter().position(|id| *id == Some(leader_id))
    }

    /// Waits until the running members agree on a leader.
    pub async fn wait_leader(&self, timeout: Duration) -> Result<usize, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.leader().await {
                return Ok(l);
            }
            if Instant::now() > deadline {
                return Err(format!("no leader within {timeout:?}"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A cluster client on a running member other than `except`.
    fn cluster_client(
        &self,
        except: usize,
    ) -> Result<ClusterClient<tonic::transport::Channel>, String> {
        let other = self
            .running()
            .into_iter()
            .find(|&j| j != except)
            .ok_or("no other running member")?;
        Ok(ClusterClient::new(channel(
            &self.members[other].client_url(),
            Some(RPC_TIMEOUT),
        )?))
    }

    /// The raft ID of the member named like slot `i`, per the cluster's member list.
    async fn member_id(&self, i: usize) -> Result<u64, String> {
        let list = self
            .cluster_client(i)?
            .member_list(MemberListRequest::default())
            .await
            .map_err(|e| format!("member list: {}", e.message()))?
            .into_inner();
        let url = self.members[i].advertised_peer_url();
        list.members
            .iter()
            .find(|m| m.peer_ur_ls.contains(&url))
            .map(|m| m.id)
            .ok_or_else(|| format!("{} is not in the member list", self.members[i].name))
    }

    /// Member replacement: remove member `i`, wipe it, add it back as a learner with a new data
    /// dir, start it, and promote it once it caught up.
    pub async fn replace(&mut self, i: usize, timeout: Duration) -> Result<(), String> {
        let id = self.member_id(i).await?;
        // A removed member may exit by itself: it is down on purpose from here on.
        self.members[i].wanted = Wanted::Down;
        retry(timeout, "member remove", || async {
            let mut c = self.cluster_client(i)?;
            match c.member_remove(MemberRemoveRequest { id }).await {
                Ok(_) => Ok(true),
                // An earlier attempt that timed out may have removed it.
                Err(e) if e.code() == Code::NotFound => Ok(true),
                Err(e) => Err(format!("member remove: {}", e.message())),
            }
        })
        .await?;
        self.stop(i, libc::SIGKILL).await?;
        let old = self.data_dir(i);
        let _ = std::fs::remove_dir_all(&old);
        self.members[i].generation += 1;
        let url = self.members[i].advertised_peer_url();
        let new_id = retry(timeout, "member add", || async {
            let mut c = self.cluster_client(i)?;
            let req = MemberAddRequest {
                peer_ur_ls: vec![url.clone()],
                is_learner: true,
            };
            match c.member_add(req).await {
                Ok(r) => Ok(r.into_inner().member.map(|m| m.id)),
                // An earlier attempt that timed out may have added it.
                Err(e) => match self.member_id(i).await {
                    Ok(id) => Ok(Some(id)),
                    Err(_) => Err(format!("member add: {}", e.message())),
                },
            }
        })
        .await?
        .ok_or("member add: no member in the answer")?;
        let initial = self.initial_cluster(|_| true);
        self.spawn(i, &initial, "existing")?;
        self.wait_ready(i).await?;
        retry(timeout, "member promote", || async {
            let mut c = self.cluster_client(i)?;
            match c.member_promote(MemberPromoteRequest { id: new_id }).await {
                Ok(_) => Ok(true),
                Err(e) => Err(format!("member promote: {}", e.message())),
            }
        })
        .await?;
        Ok(())
    }

    /// Kills every member (the end of a run, or a drop).
    pub fn kill_all(&mut self) {
        for m in &mut self.members {
            m.wanted = Wanted::Down;
            if let Some(mut child) = m.child.take() {
                signal(child.id(), libc::SIGKILL);
                let _ = child.wait();
            }
        }
    }

    /// Removes the data dirs (keeps the logs).
    pub fn remove_data(&self) {
        for i in 0..self.len() {
            let _ = std::fs::remove_dir_all(self.data_dir(i));
        }
    }

    pub fn dir(&self) -> &Path {
        &self.config.dir
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// Calls `attempt` until it succeeds or `timeout` passed; the last error explains a failure.
async fn retry<T, F, Fut>(timeout: Duration, what: &str, mut attempt: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match attempt().await {
            Ok(t) => return Ok(t),
            Err(e) if Instant::now() > deadline => {
                return Err(format!("{what} gave up after {timeout:?}: {e}"))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }
}
