//! Multi-member clusters of real `etcd-rs` processes, each member's peer traffic entering
//! through a fault-injecting TCP proxy (`PeerProxy`) so tests can cut a member off and heal it.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use etcd_proto::etcdserverpb::StatusRequest;
use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tonic::transport::Channel;

use super::{free_port_on, Member};

/// Member i's own loopback address for peer traffic.
pub fn member_ip(i: usize) -> IpAddr {
    IpAddr::from([127, 0, 0, 10 + i as u8])
}


/// Forwards connections to a member's real peer port. Each member sends peer traffic from its
/// own loopback IP (127.0.0.(10+i)), so the proxy can refuse chosen senders: `block(ip)`
/// drops that sender's connections and refuses new ones until `unblock(ip)`.
pub struct PeerProxy {
    pub port: u16,
    blocked: Arc<Mutex<HashSet<IpAddr>>>,
    kill: broadcast::Sender<IpAddr>,
    task: tokio::task::JoinHandle<()>,
}

impl PeerProxy {
    pub async fn start(target: SocketAddr) -> PeerProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let blocked: Arc<Mutex<HashSet<IpAddr>>> = Arc::default();
        let (kill, _) = broadcast::channel(16);
        let (blocked2, kill2) = (blocked.clone(), kill.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((inbound, from)) = listener.accept().await else { return };
                if blocked2.lock().contains(&from.ip()) {
                    drop(inbound);
                    continue;
                }
                let mut killed = kill2.subscribe();
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(target).await else { return };
                    let (mut ri, mut wi) = inbound.into_split();
                    let (mut ro, mut wo) = outbound.into_split();
                    let kill_me = async {
                        while let Ok(ip) = killed.recv().await {
                            if ip == from.ip() {
                                return;
                            }
                        }
                    };
                    tokio::select! {
                        _ = tokio::io::copy(&mut ri, &mut wo) => {}
                        _ = tokio::io::copy(&mut ro, &mut wi) => {}
                        _ = kill_me => {}
                    }
                });
            }
        });
        PeerProxy { port, blocked, kill, task }
    }

    pub fn block(&self, ip: IpAddr) {
        self.blocked.lock().insert(ip);
        let _ = self.kill.send(ip);
    }

    pub fn unblock(&self, ip: IpAddr) {
        self.blocked.lock().remove(&ip);
    }
}

impl Drop for PeerProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub struct TestCluster {
    pub members: Vec<Member>,
    pub proxies: Vec<PeerProxy>,
}

impl TestCluster {
    /// Starts `n` members named m0..; each advertises its proxy's port as its peer URL.
    pub async fn start(dir: &Path, n: usize, extra: &[&str]) -> TestCluster {
        TestCluster::start_with_peer_scheme(dir, n, extra, "http").await
    }

    /// As `start`, with "http" or "https" peer URLs.
    pub async fn start_with_peer_scheme(dir: &Path, n: usize, extra: &[&str], scheme: &'static str) -> TestCluster {
        TestCluster::start_each(dir, &vec![extra; n], scheme).await
    }

    /// As `start`, member i with flags `extras[i]`.
    pub async fn start_each(dir: &Path, extras: &[&[&str]], scheme: &'static str) -> TestCluster {
        let n = extras.len();
        let mut members = Vec::new();
        let mut proxies = Vec::new();
        for (i, extra) in extras.iter().enumerate() {
            let mut m = Member::new(&dir.join(format!("m{i}.etcd")), extra);
            m.name = format!("m{i}");
            m.peer_ip = member_ip(i);
            m.peer_port = free_port_on(m.peer_ip);
            m.peer_scheme = scheme;
            proxies.push(PeerProxy::start(SocketAddr::new(m.peer_ip, m.peer_port)).await);
            members.push(m);
        }
        let initial: Vec<String> =
            (0..n).map(|i| format!("m{i}={scheme}://127.0.0.1:{}", proxies[i].port)).collect();
        for (i, m) in members.iter_mut().enumerate() {
            m.advertise_peer_port = Some(proxies[i].port);
            m.initial_cluster = Some(initial.join(","));
            m.start();
        }
        TestCluster { members, proxies }
    }

    /// Cuts the members in `side` off from all others, in both directions.
    pub fn partition(&self, side: &[usize]) {
        self.set_partition(side, true)
    }

    pub fn heal(&self, side: &[usize]) {
        self.set_partition(side, false)
    }

    fn set_partition(&self, side: &[usize], cut: bool) {
        for i in 0..self.members.len() {
            for j in 0..self.members.len() {
                if side.contains(&i) != side.contains(&j) {
                    // Traffic from j into i goes through i's proxy.
                    if cut {
                        self.proxies[i].block(member_ip(j));
                    } else {
                        self.proxies[i].unblock(member_ip(j));
                    }
                }
            }
        }
    }

    /// What each member answers about the leader, with the tail of its log: a cluster that never
    /// agreed shows why (a member that exited at start, a port taken, elections that kept failing).
    async fn leader_report(&self, among: &[usize]) -> String {
        let mut out = String::new();
        for &i in among {
            let answer = status(&self.members[i]).await;
            let log = self.members[i].log();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            out.push_str(&format!("member {i}: status (leader, id) {answer:?}; last log lines:\n"));
            for line in tail.into_iter().rev() {
                out.push_str(&format!("  {line}\n"));
            }
        }
        out
    }

    /// Waits (at most 20 s) until every running member agrees on one leader; returns its index.
    pub async fn wait_leader(&self, among: &[usize]) -> usize {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut leaders = Vec::new();
            for &i in among {
                if let Some(st) = status(&self.members[i]).await {
                    leaders.push(st.0);
                }
            }
            if leaders.len() == among.len() && leaders[0] != 0 && leaders.iter().all(|l| *l == leaders[0]) {
                for &i in among {
                    if let Some((_, id)) = status(&self.members[i]).await {
                        if id == leaders[0] {
                            return i;
                        }
                    }
                }
            }
            if Instant::now() >= deadline {
                panic!("no agreed leader among {among:?} within 20s\n{}", self.leader_report(among).await);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// (leader id, own member id) as the member reports in Status.
pub async fn status(m: &Member) -> Option<(u64, u64)> {
    let ch = Channel::from_shared(m.endpoint()).ok()?.connect_timeout(Duration::from_millis(300)).connect().await.ok()?;
    let mut c = MaintenanceClient::new(ch);
    let r = tokio::time::timeout(Duration::from_secs(1), c.status(StatusRequest {})).await.ok()?.ok()?.into_inner();
    Some((r.leader, r.header?.member_id))
}
