//! `EtcdServer`: wires bootstrap (backend, WAL, snapshotter, membership) to the raft node and
//! the apply scheduler, and offers the operations the gRPC services call.
//!
//! Writes: propose an `InternalRaftRequest` and wait for the applier to answer it.
//! Linearizable reads: one batched ReadIndex round, wait until applied >= that index, read.
//! Serializable reads: read the local state at once.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use etcd_lease::Lessor;
use etcd_mvcc::{KvStore, WatchHub, WatchHubOptions};
use etcd_proto::etcdserverpb::{
    alarm_request::AlarmAction, request_op, AlarmRequest, AlarmResponse, AlarmType, RequestOp,
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, InternalRaftRequest,
    PutRequest, PutResponse, RangeRequest, RangeResponse, ResponseHeader, StatusResponse,
    TxnRequest, TxnResponse,
};
use etcd_proto::membershippb::{Attributes, Member};
use etcd_raft::rafthttp::client::{Connection, Identity};
use etcd_raft::rafthttp::headers::Versions;
use etcd_raft::rafthttp::peer_api::{self, PromoteError};
use etcd_raft::rafthttp::{HttpTransport, RaftHttpHandler, TransportConfig};
use etcd_raft::{RaftNode, RaftNodeConfig, Wal};
use parking_lot::Mutex;
use prost::Message;
use tokio::sync::watch;

use crate::alarms::Alarms;
use crate::apply::{Applied, ApplyResult, ApplyWait, Applier};
use crate::config::ServerConfig;
use crate::entry_format::{
    bootstrap_context, encode_member_change, member_attributes_request, MemberChange,
};
use crate::errors::ServerError;
use etcd_auth::AuthInfo;
use crate::ids::{cluster_id, member_id, RequestIdGen};
use crate::membership::{new_member, Membership};
use crate::peer_host::{member_from_json, PeerHost};
use crate::snapshot;

pub(crate) mod auth;
pub(crate) mod lease;
pub(crate) mod range_stream;
pub(crate) mod versions;

/// The backend quota etcd applies when `--quota-backend-bytes` is 0.
pub const DEFAULT_QUOTA_BYTES: i64 = 2 * 1024 * 1024 * 1024;

pub struct EtcdServer {
    cfg: ServerConfig,
    member_id: u64,
    cluster_id: u64,
    kv: Arc<KvStore>,
    watch_hub: Arc<WatchHub>,
    watch_sync: Mutex<Option<std::thread::JoinHandle<()>>>,
    raft: RaftNode,
    members: Arc<Membership>,
    lessor: Arc<Lessor>,
    alarms: Arc<Alarms>,
    auth: Arc<etcd_auth::AuthStore>,
    wait: Arc<ApplyWait>,
    applied_rx: watch::Receiver<u64>,
    ids: RequestIdGen,
    applier: Mutex<Option<std::thread::JoinHandle<()>>>,
    removed_rx: watch::Receiver<bool>,
    /// Turns true when a peer refuses our raft messages as those of a removed member.
    removed_by_peers: watch::Receiver<bool>,
    /// Idle connections to the leader's peer URL, for forwarded lease and promote requests.
    leader_conns: Mutex<Vec<(u64, Connection)>>,
    /// etcd's peer protocol: raft's messages, and the peers' own requests.
    transport: Arc<HttpTransport>,
    request_timeout: Duration,
}

fn io_err(what: &str, path: &Path, e: impl std::fmt::Display) -> ServerError {
    ServerError::Internal(format!("{what} {}: {e}", path.display()))
}

fn create_private_dir(p: &Path) -> Result<(), ServerError> {
    std::fs::create_dir_all(p).map_err(|e| io_err("cannot create directory", p, e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700));
    }
    Ok(())
}

impl EtcdServer {
    /// Opens (or creates) the data dir, replays the WAL and starts raft and the applier.
    pub async fn start(cfg: ServerConfig) -> Result<Arc<EtcdServer>, ServerError> {
        let member_dir: PathBuf = cfg.data_dir.join("member");
        create_private_dir(&cfg.data_dir)?;
        // A data dir etcd wrote becomes an etcd-rs one here, before anything opens it.
        crate::takeover::take_over_etcd_data_dir(&cfg.data_dir, &cfg.wal_dir)?;
        create_private_dir(&member_dir.join("snap"))?;

        let snap_dir = member_dir.join("snap");
        let kv = Arc::new(KvStore::open(&snap_dir.join("db"))?);
        kv.backend().set_unsafe_no_fsync(cfg.unsafe_no_fsync);
        snapshot::install_pending(&kv, &snap_dir)?;
        let (applied_index, _) = kv.consistent_index();
        let lessor = lease::open_lessor(&kv, &cfg)?;
        let alarms = Arc::new(Alarms::load(&kv.backend().database())?);
        let token_ttl = if cfg.auth_token_ttl.is_zero() { Duration::from_secs(300) } else { cfg.auth_token_ttl };
        let tokens = etcd_auth::TokenProvider::from_options(&cfg.auth_token, token_ttl)
            .map_err(|e| ServerError::Internal(format!("failed to create token provider: {e}")))?;
        let auth = Arc::new(etcd_auth::AuthStore::load(&kv.backend().database(), tokens)?);

        // A restart takes its identity from the WAL and ignores the --initial-* flags, as etcd does.
        let restarting = Wal::exists(&cfg.wal_dir);
        let mut join_existing = false;
        let mut known_peers: Vec<(u64, Vec<String>)> = Vec::new();
        let (my_id, cid, initial_peers) = if restarting {
            (0, 0, Vec::new())
        } else if cfg.initial_cluster_new {
            let mut peers = Vec::new();
            let mut my_id = 0;
            for m in &cfg.initial_cluster {
                let id = member_id(&m.peer_urls, &cfg.initial_cluster_token, None);
                if m.name == cfg.name {
                    my_id = id;
                }
                peers.push((id, bootstrap_context(&new_member(id, &m.name, m.peer_urls.clone(), false))));
                known_peers.push((id, m.peer_urls.clone()));
            }
            let cid = cluster_id(&peers.iter().map(|(id, _)| *id).collect::<Vec<_>>());
            (my_id, cid, peers)
        } else {
            // Joining: the running cluster tells us its ID and our member ID (from `member add`).
            let (cid, members) = fetch_cluster(&cfg).await?;
            let my_id = crate::membership::match_initial_cluster(&cfg.initial_cluster, &cfg.name, &members)
                .map_err(|e| ServerError::Internal(format!("error validating peerURLs {}: {e}", member_list_text(cid, &members))))?;
            versions::check_join_compatible(&cfg, &members, my_id).await?;
            join_existing = true;
            for m in &members {
                known_peers.push((m.id, m.raft_attrs.as_ref().map(|r| r.peer_urls.clone()).unwrap_or_default()));
            }
            (my_id, cid, Vec::new())
        };
        let mut raft_cfg = RaftNodeConfig::new(my_id, cid, member_dir.clone());
        raft_cfg.wal_dir = cfg.wal_dir.clone();
        raft_cfg.force_new_cluster = cfg.force_new_cluster;
        raft_cfg.unsafe_no_fsync = cfg.unsafe_no_fsync;
        raft_cfg.initial_peers = initial_peers;
        raft_cfg.join_existing = join_existing;
        raft_cfg.applied_index = applied_index;
        raft_cfg.tick_interval = cfg.heartbeat;
        raft_cfg.election_tick = cfg.election_ticks;
        raft_cfg.heartbeat_tick = 1;
        raft_cfg.snapshot_catchup_entries = cfg.snapshot_catchup_entries;
        // Peer traffic leaves from this member's own peer IP when it listens on a specific one.
        let local_ip = cfg
            .listen_peer_urls
            .first()
            .and_then(|u| u.host_str())
            .and_then(|h| h.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>().ok())
            .filter(|ip| !ip.is_unspecified());
        let dialer = etcd_raft::PeerDialer::new(local_ip, cfg.peer_dial_tls.clone());
        let host = PeerHost::new(snap_dir.clone());
        let identity = |id, cluster_id| Identity { id, cluster_id, peer_urls: cfg.advertise_peer_urls.clone(), versions: peer_versions(&cfg) };
        let config = TransportConfig { identity: identity(my_id, cid), dialer, timeouts: etcd_raft::rafthttp::StreamTimeouts { read: cfg.raft_read_timeout, write: cfg.raft_write_timeout } };
        // the raft loop and the peer connections share one thread (see etcd_raft::raft_runtime)
        let raft_runtime = etcd_raft::RaftRuntime::start().map_err(|e| ServerError::Internal(format!("cannot start the raft thread: {e}")))?;
        let transport = HttpTransport::new(raft_runtime.handle().clone(), config, host.clone());
        let (raft, apply_rx) = RaftNode::start_on(raft_cfg, transport.clone(), raft_runtime)?;
        let meta = raft.wal_metadata();
        let (my_id, cid) = (meta.node_id, meta.cluster_id);
        transport.set_identity(identity(my_id, cid));
        tracing::info!(
            member_id = %format!("{my_id:x}"),
            cluster_id = %format!("{cid:x}"),
            restarting,
            "raft node started"
        );
        let members = Arc::new(Membership::load(&kv.backend().database(), my_id, cid)?);
        host.bind(raft.clone(), members.clone());
        // etcd's cluster.Recover: a server older than the stored cluster version stops here
        crate::cluster_version::detect_downgrade(&cfg.etcd_api_version, members.cluster_version().as_deref(), &members.downgrade_info())
            .map_err(|e| ServerError::Internal(e.to_string()))?;
        // Peers known now: the stored membership (restart) or the initial cluster (new). Conf
        // changes applied later update the transport from the applier.
        if restarting {
            for m in members.members() {
                transport.add_peer(m.id, m.raft_attrs.map(|r| r.peer_urls).unwrap_or_default());
            }
        } else {
            for (id, urls) in known_peers {
                transport.add_peer(id, urls);
            }
        }
        let (removed_tx, removed_rx) = watch::channel(false);
        let (applied_tx, applied_rx) = watch::channel(applied_index);
        let wait = Arc::new(ApplyWait::default());
        let watch_hub = WatchHub::new(kv.clone(), WatchHubOptions::default());
        let watch_sync = watch_hub
            .start()
            .map_err(|e| ServerError::Internal(format!("cannot start the watch sync thread: {e}")))?;
        let (snapshot_tx, snapshot_rx) = std::sync::mpsc::sync_channel(16);
        transport.set_snapshot_sink(snapshot_tx);
        let status = raft.status();
        let applier = Applier {
            snap_dir: snap_dir.clone(),
            snapshot_requests: snapshot_rx,
            snapshots_sending: Default::default(),
            conf_state: raft::eraftpb::ConfState {
                voters: status.voters.clone(),
                learners: status.learners.clone(),
                ..Default::default()
            },
            watch_hub: watch_hub.clone(),
            kv: kv.clone(),
            raft: raft.clone(),
            members: members.clone(),
            transport: transport.clone(),
            max_learners: cfg.max_learners,
            removed_tx,
            lessor: lessor.clone(),
            alarms: alarms.clone(),
            auth: auth.clone(),
            lease_promote_extend: cfg.heartbeat * cfg.election_ticks as u32,
            wait: wait.clone(),
            applied_tx,
            runtime: tokio::runtime::Handle::current(),
            batch_interval: cfg.backend_batch_interval,
            batch_limit: cfg.backend_batch_limit,
            snapshot_count: cfg.snapshot_count,
            last_snapshot_index: applied_index,
            server_version: cfg.etcd_api_version.clone(),
        };
        let handle = std::thread::Builder::new()
            .name("apply".into())
            .spawn(move || applier.run(apply_rx))
            .map_err(|e| ServerError::Internal(format!("cannot start the apply thread: {e}")))?;

        let election = cfg.heartbeat * cfg.election_ticks as u32;
        let server = Arc::new(EtcdServer {
            member_id: my_id,
            cluster_id: cid,
            kv,
            watch_hub,
            watch_sync: Mutex::new(Some(watch_sync)),
            raft,
            members,
            lessor,
            alarms,
            auth,
            wait,
            applied_rx,
            ids: RequestIdGen::new(my_id),
            applier: Mutex::new(Some(handle)),
            removed_rx,
            removed_by_peers: host.removed_by_peers(),
            leader_conns: Mutex::new(Vec::new()),
            transport,
            request_timeout: Duration::from_secs(5) + 2 * election,
            cfg,
        });
        tokio::spawn(lease::run_expiry_loop(Arc::downgrade(&server)));
        tokio::spawn(versions::run_version_monitor(Arc::downgrade(&server)));
        tokio::spawn(versions::run_downgrade_monitor(Arc::downgrade(&server)));
        Ok(server)
    }

    /// Publishes this member's name and client URLs through raft; retried until it succeeds or
    /// the server stops. As etcd 3.5 (and 3.4) do: as v2 requests, which members of both
    /// versions apply (3.4 has no v3 form of them). The cluster version is the leader's version
    /// monitor's (`versions`).
    pub async fn publish(self: &Arc<Self>) {
        let attrs = Attributes { name: self.cfg.name.clone(), client_urls: self.cfg.advertise_client_urls.clone() };
        while !self.has_leader() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        loop {
            let id = self.ids.next();
            let req = member_attributes_request(id, self.member_id, &attrs);
            match self.propose_encoded(id, req.encode_to_vec()).await {
                Ok(_) => {
                    self.log_published(&attrs);
                    break;
                }
                Err(ServerError::Stopped) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "failed to publish local member to cluster through raft; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        // the leader's first round of the version monitor, as etcd's runs on the first commit of
        // its term: a cluster version from the start, before clients are served
        if self.is_leader() && self.members.cluster_version().is_none() {
            self.monitor_versions_once().await;
        }
        tracing::info!("ready to serve client requests");
    }

    /// etcd's line once its attributes are committed (fields as etcd 3.5 writes them).
    fn log_published(&self, attrs: &Attributes) {
        let me = format!("{:x}", self.member_id);
        tracing::info!(
            "local-member-id" = %me,
            "local-member-attributes" = %format!("{{Name:{} ClientURLs:[{}]}}", attrs.name, attrs.client_urls.join(" ")),
            "request-path" = %format!("/0/members/{me}/attributes"),
            "cluster-id" = %format!("{:x}", self.members.cluster_id()),
            "publish-timeout" = %crate::logging::go_duration(self.request_timeout()),
            "published local member to cluster through raft"
        );
    }

    /// `<data-dir>/member/snap`: raft snapshots, the backend, received snapshot files.
    pub fn snap_dir(&self) -> PathBuf {
        self.cfg.data_dir.join("member").join("snap")
    }

    pub fn member_id(&self) -> u64 {
        self.member_id
    }

    pub fn cluster_id(&self) -> u64 {
        self.cluster_id
    }

    pub fn config(&self) -> &ServerConfig {
        &self.cfg
    }

    pub fn applied_index(&self) -> u64 {
        *self.applied_rx.borrow()
    }

    /// Proposals waiting to be applied.
    pub fn pending_proposals(&self) -> usize {
        self.wait.pending()
    }

    /// (current revision, compact revision, auth revision), for metrics.
    pub fn revisions(&self) -> (i64, i64, u64) {
        (self.kv.current_revision(), self.kv.compact_revision(), self.auth.revision())
    }

    /// (keys, watchers, unsynced watchers, victim watchers, leases), for metrics.
    pub fn store_counts(&self) -> (usize, usize, usize, usize, usize) {
        let (watchers, unsynced, victims) = self.watch_hub.counts();
        (self.kv.key_count(), watchers, unsynced, victims, self.lessor.len())
    }

    pub fn alarms(&self) -> &Alarms {
        &self.alarms
    }

    pub fn members(&self) -> &Membership {
        &self.members
    }

    /// Resolves once this member's removal from the cluster has been applied, or a peer
    /// refused its messages as those of a removed member (it missed the entry removing it).
    pub async fn removed(&self) {
        let mut applied = self.removed_rx.clone();
        let mut told = self.removed_by_peers.clone();
        tokio::select! {
            _ = applied.wait_for(|r| *r) => {}
            _ = told.wait_for(|r| *r) => {}
        }
    }

    /// Proposes a membership conf change (etcd's ConfChange) and waits for it to be applied here.
    async fn configure(&self, change: MemberChange) -> Result<Vec<Member>, ServerError> {
        let id = self.ids.next();
        let cc = encode_member_change(id, &change);
        let start = tokio::time::Instant::now();
        let deadline = start + self.request_timeout;
        let rx = self.wait.register(id);
        // as a proposal: held until there is a leader (not proposed before, so safe to resend)
        loop {
            match self.raft.propose_conf_change(&cc).await {
                Ok(()) => break,
                Err(etcd_raft::RaftError::NoLeader) => {
                    if let Err(e) = self.wait_for_leader_to_propose(deadline).await {
                        self.wait.cancel(id);
                        return Err(e);
                    }
                }
                Err(e) => {
                    self.wait.cancel(id);
                    return Err(e.into());
                }
            }
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(applied)) => match applied.result? {
                ApplyResult::Members(m) => {
                    tracing::info!(
                        raft_conf_change = cc.change_type.as_str(),
                        raft_conf_change_node_id = %format!("{:x}", cc.node_id),
                        "applied a configuration change through raft"
                    );
                    Ok(m)
                }
                other => Err(unexpected(other)),
            },
            Ok(Err(_)) => Err(ServerError::Stopped),
            Err(_) => {
                self.wait.cancel(id);
                Err(self.proposal_timeout(start))
            }
        }
    }

    /// Quorum safety (`--strict-reconfig-check`), judged by the leader from replication progress.
    fn check_quorum_after(&self, voters_delta: i64, removing: Option<u64>) -> Result<(), ServerError> {
        if !self.cfg.strict_reconfig_check {
            return Ok(());
        }
        let st = self.raft.status();
        if st.progress.is_empty() {
            return Ok(()); // not the leader: the leader's own check is what protects the cluster
        }
        let voters: Vec<u64> = st.voters.iter().copied().filter(|v| Some(*v) != removing).collect();
        let total = voters.len() as i64 + voters_delta.max(0);
        let active = st
            .progress
            .iter()
            .filter(|p| voters.contains(&p.id) && (p.recent_active || p.id == self.member_id))
            .count() as i64;
        // etcd lets a lone started member take a second voter (how a restored cluster grows).
        let growing_one_member = voters.len() == 1 && active == 1 && voters_delta == 1;
        if active < total / 2 + 1 && !growing_one_member {
            return Err(ServerError::NotEnoughStartedMembers);
        }
        Ok(())
    }

    pub async fn member_add(&self, peer_urls: Vec<String>, is_learner: bool) -> Result<(Member, Vec<Member>), ServerError> {
        let urls = crate::config::parse_peer_urls(&peer_urls).map_err(|_| ServerError::MemberBadUrls)?;
        if !is_learner {
            self.check_quorum_after(1, None)?;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        // As etcd: the ID mixes in the time of the request, and no cluster token.
        let id = member_id(&urls, "", Some(now));
        let member = new_member(id, "", urls, is_learner);
        let members = self.configure(MemberChange::Add(member.clone())).await?;
        Ok((member, members))
    }

    pub async fn member_remove(&self, id: u64) -> Result<Vec<Member>, ServerError> {
        let Some(m) = self.members.member(id) else {
            return Err(ServerError::MemberNotFound);
        };
        if !m.raft_attrs.as_ref().is_some_and(|r| r.is_learner) {
            self.check_quorum_after(-1, Some(id))?;
        }
        self.configure(MemberChange::Remove(id)).await
    }

    pub async fn member_update(&self, id: u64, peer_urls: Vec<String>) -> Result<Vec<Member>, ServerError> {
        let urls = crate::config::parse_peer_urls(&peer_urls).map_err(|_| ServerError::MemberBadUrls)?;
        let Some(m) = self.members.member(id) else {
            return Err(ServerError::MemberNotFound);
        };
        self.configure(MemberChange::Update { id: m.id, peer_urls: urls }).await
    }

    /// Promotes a learner that caught up with the leader (matched >= 90% of the leader's).
    /// Only the leader can judge that; other members forward the request to it.
    pub async fn member_promote(&self, id: u64) -> Result<Vec<Member>, ServerError> {
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        let forwarded = self.forward_to_leader(deadline, |mut conn, me| async move {
            let answer = peer_api::call::promote(&mut conn, &me, id).await.map_err(|e| match e {
                PromoteError::IdNotFound => ServerError::MemberNotFound,
                PromoteError::NotLearner => ServerError::MemberNotLearner,
                PromoteError::LearnerNotReady => ServerError::LearnerNotReady,
                PromoteError::Other(e) => ServerError::from_peer_text(&e),
            });
            (conn, answer.map(|members| members.into_iter().map(member_from_json).collect()))
        });
        if let Some(answer) = forwarded.await {
            return answer;
        }
        let st = self.raft.status();
        match self.members.member(id) {
            None => return Err(ServerError::MemberNotFound),
            Some(m) if !m.raft_attrs.as_ref().is_some_and(|r| r.is_learner) => return Err(ServerError::MemberNotLearner),
            Some(_) => {}
        }
        let leader_match = st.progress.iter().find(|p| p.id == self.member_id).map(|p| p.matched).unwrap_or(0);
        let learner_match = st.progress.iter().find(|p| p.id == id).map(|p| p.matched).unwrap_or(0);
        if (learner_match as f64) < (leader_match as f64) * 0.9 {
            crate::metrics::learner_promote_failed(&ServerError::LearnerNotReady.to_string());
            return Err(ServerError::LearnerNotReady);
        }
        self.check_quorum_after(1, None)?;
        self.configure(MemberChange::Promote(id))
            .await
            .inspect(|_| crate::metrics::LEARNER_PROMOTE_SUCCESSES.inc())
    }

    /// Runs `call` on a connection to the leader's peer URL, for requests only the leader can
    /// answer, as etcd forwards them: waits for an election (`NoLeader` if none comes by
    /// `deadline`), and tries again what a dead or deposed leader fails with (transport errors,
    /// "not leader", time-outs) once the leader changes or after a pause, until `deadline`
    /// (then `Timeout`). The leader's own answers (a missing lease, a learner not ready...) are
    /// returned as they are. None: this member is the leader now and answers itself. `call`
    /// gives the connection back with its answer, to be used again.
    pub(crate) async fn forward_to_leader<T, F, Fut>(&self, deadline: tokio::time::Instant, mut call: F) -> Option<Result<T, ServerError>>
    where
        F: FnMut(Connection, Identity) -> Fut,
        Fut: Future<Output = (Connection, Result<T, ServerError>)>,
    {
        loop {
            let leader = match self.raft.wait_for_leader(deadline).await {
                Ok(leader) => leader,
                Err(e) => return Some(Err(e.into())),
            };
            if leader == self.member_id {
                return None;
            }
            let failed = match self.leader_conn(leader).await {
                Ok(conn) => match tokio::time::timeout_at(deadline, call(conn, self.transport.identity())).await {
                    Ok((conn, answer)) => {
                        if conn.is_usable() {
                            self.leader_conns.lock().push((leader, conn));
                        }
                        match answer {
                            Ok(answer) => return Some(Ok(answer)),
                            Err(e) => e,
                        }
                    }
                    Err(_) => return Some(Err(ServerError::Timeout)),
                },
                Err(e) => e,
            };
            if !leader_gone(&failed) {
                return Some(Err(failed));
            }
            tracing::debug!(leader = %format!("{leader:x}"), error = %failed, "the leader did not answer a forwarded request; retrying");
            // A dead leader fails at once: wait for the next one, or a heartbeat, before retrying.
            let pause = deadline.min(tokio::time::Instant::now() + self.cfg.heartbeat);
            let _ = self.raft.wait_leader_change(leader, pause).await;
            if tokio::time::Instant::now() >= deadline {
                return Some(Err(ServerError::Timeout));
            }
        }
    }

    /// An idle connection to `leader`'s peer URL, or a new one (connections to a former leader
    /// are dropped).
    async fn leader_conn(&self, leader: u64) -> Result<Connection, ServerError> {
        {
            let mut idle = self.leader_conns.lock();
            idle.retain(|(id, c)| *id == leader && c.is_usable());
            if let Some((_, c)) = idle.pop() {
                return Ok(c);
            }
        }
        let urls = self.members.member(leader).and_then(|m| m.raft_attrs).map(|r| r.peer_urls).unwrap_or_default();
        let mut errors = Vec::new();
        for url in urls {
            match Connection::open(self.transport.dialer(), &url, Duration::from_secs(1)).await {
                Ok(c) => return Ok(c),
                Err(e) => errors.push(e.to_string()),
            }
        }
        Err(ServerError::Internal(format!("cannot reach the leader's peer URLs: {}", errors.join("; "))))
    }

    /// Hands leadership to `to` (a voting member) and waits until it leads.
    pub async fn move_leader(&self, to: u64) -> Result<(), ServerError> {
        let st = self.raft.status();
        if st.leader_id != self.member_id {
            return Err(ServerError::NotLeader);
        }
        if !st.voters.contains(&to) {
            return Err(ServerError::BadLeaderTransferee);
        }
        if to == self.member_id {
            return Ok(());
        }
        let (me, started) = (format!("{:x}", self.member_id), tokio::time::Instant::now());
        tracing::info!(
            "local-member-id" = %me,
            "current-leader-member-id" = %me,
            "transferee-member-id" = %format!("{to:x}"),
            "leadership transfer starting"
        );
        self.raft.transfer_leader(to);
        let deadline = started + self.request_timeout;
        while tokio::time::Instant::now() < deadline {
            if self.raft.with_status(|st| st.leader_id) == to {
                tracing::info!(
                    "local-member-id" = %me,
                    "old-leader-member-id" = %me,
                    "new-leader-member-id" = %format!("{to:x}"),
                    took = ?started.elapsed(),
                    "leadership transfer finished"
                );
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(ServerError::TimeoutLeaderTransfer)
    }

    /// etcd's TransferLeadership, the first step of a graceful stop: a leader with other voters
    /// hands leadership to the most caught-up of those it heard from lately (etcd picks the
    /// longest-connected; the most caught-up is the one that can take over soonest), so the
    /// cluster does not wait an election timeout for a new leader once this member is gone.
    /// Anything else is skipped, as etcd logs it.
    pub async fn transfer_leadership(&self) -> Result<(), ServerError> {
        let st = self.raft.status();
        let me = format!("{:x}", self.member_id);
        if st.leader_id != self.member_id {
            tracing::info!(
                "local-member-id" = %me,
                "current-leader-member-id" = %format!("{:x}", st.leader_id),
                "skipped leadership transfer; local server is not leader"
            );
            return Ok(());
        }
        if st.voters.len() < 2 {
            tracing::info!(
                "local-member-id" = %me,
                "current-leader-member-id" = %me,
                "skipped leadership transfer for single voting member cluster"
            );
            return Ok(());
        }
        // raft forgets who was active at every election-timeout check, until their next
        // heartbeat answer: so a member nobody heard from is looked for again for one election
        // timeout before the cluster counts as unhealthy.
        let deadline = tokio::time::Instant::now() + self.election_timeout();
        loop {
            if let Some(to) = self.raft.with_status(|st| self.most_caught_up_active_voter(st)) {
                return self.move_leader(to).await;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ServerError::Unhealthy);
            }
            tokio::time::sleep(self.cfg.heartbeat).await;
        }
    }

    /// Of the other voters the leader heard from lately, the one whose log matches furthest.
    fn most_caught_up_active_voter(&self, st: &etcd_raft::RaftStatus) -> Option<u64> {
        st.progress
            .iter()
            .filter(|p| p.id != self.member_id && p.recent_active && st.voters.contains(&p.id))
            .max_by_key(|p| p.matched)
            .map(|p| p.id)
    }

    /// A raft message from a peer.
    pub fn step(&self, m: raft::eraftpb::Message) {
        self.raft.step(m);
    }

    pub fn header(&self, revision: i64) -> ResponseHeader {
        ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member_id,
            revision,
            raft_term: self.raft.with_status(|st| st.term),
        }
    }

    /// Proposes `req` and waits until it is applied. Not an `async fn`: the request is encoded
    /// before the returned future exists, so the future (boxed per gRPC call) holds its bytes
    /// and not the whole `InternalRaftRequest`.
    fn propose(&self, req: InternalRaftRequest) -> impl Future<Output = Result<Applied, ServerError>> + Send + '_ {
        let encoded = self.encode_proposal(req);
        async move {
            let (id, data) = encoded?;
            self.propose_encoded(id, data).await
        }
    }

    /// Gives `req` a fresh ID (and this member as sender when it has none) and encodes it.
    fn encode_proposal(&self, mut req: InternalRaftRequest) -> Result<(u64, Vec<u8>), ServerError> {
        let id = self.ids.next();
        // no header: a request this member makes itself (client requests carry their sender)
        let mut header = req.header.take().unwrap_or_else(|| self.auth_header(None));
        header.id = id;
        req.header = Some(header);
        let data = req.encode_to_vec();
        if data.len() > self.cfg.max_request_bytes {
            return Err(ServerError::RequestTooLarge);
        }
        Ok((id, data))
    }

    async fn propose_encoded(&self, id: u64, mut data: Vec<u8>) -> Result<Applied, ServerError> {
        let start = tokio::time::Instant::now();
        let deadline = start + self.request_timeout;
        let rx = self.wait.register(id);
        loop {
            // the applier answers a taken proposal; a refusal by the raft loop answers here
            let wait = self.wait.clone();
            let on_refused = Box::new(move |e: etcd_raft::RaftError| {
                crate::metrics::PROPOSALS_FAILED.inc();
                wait.trigger(id, Applied { result: Err(e.into()), revision: 0 });
            });
            match self.raft.submit(data, on_refused) {
                Ok(()) => break,
                // Nothing was proposed: wait for an election and submit it then (boxed: the
                // common path's future, one per request, stays small).
                Err((etcd_raft::RaftError::NoLeader, back)) => {
                    if let Err(e) = Box::pin(self.wait_for_leader_to_propose(deadline)).await {
                        self.wait.cancel(id);
                        crate::metrics::PROPOSALS_FAILED.inc();
                        return Err(e);
                    }
                    data = back;
                }
                Err((e, _)) => {
                    self.wait.cancel(id);
                    crate::metrics::PROPOSALS_FAILED.inc();
                    return Err(e.into());
                }
            }
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(applied)) => Ok(applied),
            Ok(Err(_)) => Err(ServerError::Stopped),
            Err(_) => {
                self.wait.cancel(id);
                crate::metrics::PROPOSALS_FAILED.inc();
                Err(self.proposal_timeout(start))
            }
        }
    }

    /// Holds a proposal until a leader is known, as etcd's raft node does; past `deadline` the
    /// answer is etcd's: the bare context error.
    async fn wait_for_leader_to_propose(&self, deadline: tokio::time::Instant) -> Result<(), ServerError> {
        match self.raft.wait_for_leader(deadline).await {
            Ok(_) => Ok(()),
            Err(etcd_raft::RaftError::NoLeader) => Err(ServerError::ContextDeadlineExceeded),
            Err(e) => Err(e.into()),
        }
    }

    /// Why a proposal taken by raft at `start` was not applied in time (etcd's
    /// parseProposeCtxErr): when a leader was elected up to two election timeouts after it, the
    /// leader it went to likely failed.
    fn proposal_timeout(&self, start: tokio::time::Instant) -> ServerError {
        let leader = self.raft.leader();
        let start = start.into_std();
        let lost = leader.since.checked_sub(2 * self.election_timeout());
        if leader.id != 0 && start < leader.since && lost.is_none_or(|lost| start > lost) {
            ServerError::TimeoutDueToLeaderFail
        } else {
            ServerError::Timeout
        }
    }

    /// Waits until this member has applied everything committed before the call.
    pub async fn linearizable_barrier(&self) -> Result<(), ServerError> {
        let index = match tokio::time::timeout(self.request_timeout, self.raft.read_index()).await {
            Ok(r) => r.inspect_err(|_| etcd_raft::metrics::READ_INDEXES_FAILED.inc())?,
            Err(_) => {
                etcd_raft::metrics::SLOW_READ_INDEXES.inc();
                return Err(ServerError::Timeout);
            }
        };
        self.wait_applied_index(index).await
    }

    /// Waits (bounded by the request timeout) until this member applied `index`.
    pub(crate) async fn wait_applied_index(&self, index: u64) -> Result<(), ServerError> {
        let mut rx = self.applied_rx.clone();
        let reached = tokio::time::timeout(self.request_timeout, async move {
            rx.wait_for(|applied| *applied >= index).await.is_ok()
        })
        .await;
        match reached {
            Ok(true) => Ok(()),
            Ok(false) => Err(ServerError::Stopped),
            Err(_) => Err(ServerError::TimeoutWaitAppliedIndex),
        }
    }

    /// `auth`: the client's identity (None: this member's own read, unchecked).
    pub async fn range(&self, req: RangeRequest, auth: Option<&AuthInfo>) -> Result<RangeResponse, ServerError> {
        if !req.serializable {
            self.linearizable_barrier().await?;
        }
        if let Some(ai) = auth {
            self.auth.is_range_permitted(ai, &req.key, &req.range_end)?;
        }
        let mut resp = off_worker_if(may_read_many(&req), || self.kv.range(&req))?;
        self.check_auth_unchanged(auth)?;
        let read_at = resp.header.as_ref().map(|h| h.revision).unwrap_or_else(|| self.kv.current_revision());
        resp.header = Some(self.header(read_at));
        Ok(resp)
    }

    /// After a read: the auth state changed while reading, so the permission check before it
    /// may be stale (etcd's doSerialize).
    fn check_auth_unchanged(&self, auth: Option<&AuthInfo>) -> Result<(), ServerError> {
        match auth {
            Some(ai) if ai.revision != 0 && ai.revision != self.auth.revision() => Err(ServerError::AuthOldRevision),
            _ => Ok(()),
        }
    }

    pub async fn put(&self, req: PutRequest, auth: Option<&AuthInfo>) -> Result<PutResponse, ServerError> {
        self.check_quota(put_cost(&req)).await?;
        let req = self.sent_by(InternalRaftRequest { put: Some(req), ..Default::default() }, auth);
        self.propose_for(req).await
    }

    pub async fn delete_range(&self, req: DeleteRangeRequest, auth: Option<&AuthInfo>) -> Result<DeleteRangeResponse, ServerError> {
        let req = self.sent_by(InternalRaftRequest { delete_range: Some(req), ..Default::default() }, auth);
        self.propose_for(req).await
    }

    /// Nested responses keep the per-op headers mvcc gave them, as etcd answers. A Txn of
    /// ranges only is served locally (see [`EtcdServer::read_only_txn`]).
    pub async fn txn(&self, req: TxnRequest, auth: Option<&AuthInfo>) -> Result<TxnResponse, ServerError> {
        if etcd_mvcc::kv_store_txn::txn_is_read_only(&req) {
            return self.read_only_txn(&req, auth).await;
        }
        self.check_quota(txn_cost(&req)).await?;
        let req = self.sent_by(InternalRaftRequest { txn: Some(req), ..Default::default() }, auth);
        self.propose_for(req).await
    }

    /// etcd's read-only Txn: no raft entry, no quota check, no applier; after the read index
    /// unless every op is a serializable range, with read permission on every compare and
    /// range, and the auth-revision recheck after reading (as [`EtcdServer::range`]). The
    /// header carries the revision read at.
    async fn read_only_txn(&self, req: &TxnRequest, auth: Option<&AuthInfo>) -> Result<TxnResponse, ServerError> {
        let ops = || req.success.iter().chain(&req.failure).map(|op| match &op.request {
            Some(request_op::Request::RequestRange(r)) => Some(r),
            _ => None,
        });
        let serializable = ops().all(|r| r.is_some_and(|r| r.serializable));
        if !serializable {
            self.linearizable_barrier().await?;
        }
        if let Some(ai) = auth {
            crate::apply_auth::txn_permitted(&self.auth, ai, req)?;
        }
        let many = ops().any(|r| r.is_some_and(may_read_many));
        let mut resp = off_worker_if(many, || self.kv.read_only_txn(req))?;
        self.check_auth_unchanged(auth)?;
        let read_at = resp.header.as_ref().map_or_else(|| self.kv.current_revision(), |h| h.revision);
        resp.header = Some(self.header(read_at));
        Ok(resp)
    }

    pub async fn compact(&self, req: CompactionRequest, auth: Option<&AuthInfo>) -> Result<CompactionResponse, ServerError> {
        let req = self.sent_by(InternalRaftRequest { compaction: Some(req), ..Default::default() }, auth);
        self.propose_for(req).await
    }

    /// Proposes `req`, waits for it to apply, and answers with this member's header at the
    /// revision right after it. Callers build `req` in a `let` before awaiting: a
    /// `..Default::default()` temporary inside the awaited expression lives until the end of
    /// the statement and so takes room (1.3 KB) in every request's future.
    fn propose_for<R: AppliedResponse>(&self, req: InternalRaftRequest) -> impl Future<Output = Result<R, ServerError>> + Send + '_ {
        let applied = self.propose(req);
        async move {
            let applied = applied.await?;
            let mut resp = R::from_result(applied.result?)?;
            resp.set_header(self.header(applied.revision));
            Ok(resp)
        }
    }

    /// etcd's backend quota: a request that would grow the backend past `--quota-backend-bytes`
    /// raises the NOSPACE alarm (through raft, for the whole cluster) and is refused. The size is
    /// this member's `db_size` (mvcc's db_size.rs: the high-water mark of the tables' pages, as
    /// bbolt's in etcd) plus the rows applied since the last backend commit. Checked before
    /// proposing only, so apply never depends on it.
    pub(crate) async fn check_quota(&self, cost: i64) -> Result<(), ServerError> {
        let quota = match self.cfg.quota_backend_bytes {
            q if q < 0 => return Ok(()),
            0 => DEFAULT_QUOTA_BYTES,
            q => q,
        };
        if cost == 0 || self.kv.db_size().0 + self.kv.uncommitted_bytes() + cost < quota {
            return Ok(());
        }
        let raise = AlarmRequest { action: AlarmAction::Activate as i32, member_id: self.member_id, alarm: AlarmType::Nospace as i32 };
        // boxed: the common path's future (one per put) stays small
        if let Err(e) = Box::pin(self.alarm(raise)).await {
            tracing::warn!(error = %e, "could not raise the NOSPACE alarm");
        }
        Err(ServerError::NoSpace)
    }

    /// Alarm get / activate / deactivate, all applied through raft as in etcd.
    pub async fn alarm(&self, req: AlarmRequest) -> Result<AlarmResponse, ServerError> {
        let req = InternalRaftRequest { alarm: Some(req), ..Default::default() };
        self.propose_for(req).await
    }

    /// Rewrites this member's backend file without its free pages (member-local, not through
    /// raft, as etcd). Writes wait meanwhile.
    pub async fn defragment(&self) -> Result<(), ServerError> {
        tracing::info!("starting defragment");
        let kv = self.kv.clone();
        let started = std::time::Instant::now();
        let (before, _) = kv.db_size();
        tokio::task::spawn_blocking(move || kv.defragment(Duration::from_secs(10)))
            .await
            .map_err(|e| ServerError::Internal(format!("defragment: {e}")))??;
        let (after, in_use) = self.kv.db_size();
        tracing::info!(took = ?started.elapsed(), size_before = before, size_after = after, size_in_use = in_use, "finished defragment");
        Ok(())
    }

    pub fn status(&self) -> StatusResponse {
        let st = self.raft.status();
        let (db_size, db_size_in_use) = self.kv.db_size();
        StatusResponse {
            header: Some(self.header(self.kv.current_revision())),
            version: self.cfg.etcd_api_version.clone(),
            db_size,
            leader: st.leader_id,
            raft_index: st.commit_index,
            raft_term: st.term,
            raft_applied_index: *self.applied_rx.borrow(),
            errors: self.alarms.status_errors(),
            db_size_in_use,
            is_learner: st.is_learner,
            storage_version: String::new(),
            db_size_quota: if self.cfg.quota_backend_bytes > 0 { self.cfg.quota_backend_bytes } else { DEFAULT_QUOTA_BYTES },
            downgrade_info: self.downgrade_status(),
        }
    }

    /// A consistent read view of every backend table (what Maintenance.Snapshot sends);
    /// writes go on meanwhile.
    pub fn backend_snapshot(&self) -> Result<redb::ReadTransaction, ServerError> {
        Ok(self.kv.read_all()?)
    }

    pub fn kv_revision(&self) -> i64 {
        self.kv.current_revision()
    }

    /// Hash of the whole key table, with the revision it was taken at.
    pub fn hash(&self) -> Result<(u32, i64), ServerError> {
        let rev = self.kv.current_revision();
        Ok((self.kv.hash()?, rev))
    }

    /// (hash, compact revision, hash revision, current revision); revision 0 means current.
    pub fn hash_kv(&self, revision: i64) -> Result<(u32, i64, i64, i64), ServerError> {
        let current = self.kv.current_revision();
        let (hash, compact, hash_rev) = self.kv.hash_kv(if revision == 0 { current } else { revision })?;
        Ok((hash, compact, hash_rev, current))
    }

    /// etcd 3.5.6+'s HashByRev, as the peer `/members/hashkv` answers: the hash stored at a
    /// compaction to `revision` when there is one, else HashKV now; with the current revision.
    /// A scan of the whole key table, on a blocking thread (the peer listener's connections
    /// share the raft loop's thread).
    pub async fn hash_by_rev(&self, revision: i64) -> Result<(etcd_mvcc::KeyValueHash, i64), ServerError> {
        let kv = self.kv.clone();
        tokio::task::spawn_blocking(move || {
            let current = kv.current_revision();
            Ok((kv.hash_by_rev(revision)?, current))
        })
        .await
        .map_err(|e| ServerError::Internal(format!("hashing the key table failed: {e}")))?
    }

    /// The hashes this member took at its last compactions, oldest first.
    pub fn compaction_hashes(&self) -> Vec<etcd_mvcc::KeyValueHash> {
        self.kv.compaction_hashes()
    }

    /// A learner serves only Status and serializable reads, as in etcd.
    pub fn refuse_if_learner(&self) -> Result<(), ServerError> {
        if self.raft.with_status(|st| st.is_learner) {
            return Err(ServerError::NotSupportedForLearner);
        }
        Ok(())
    }

    pub fn raft_status(&self) -> etcd_raft::RaftStatus {
        self.raft.status()
    }

    pub fn is_leader(&self) -> bool {
        self.raft.with_status(|st| st.leader_id) == self.member_id
    }

    pub fn has_leader(&self) -> bool {
        self.raft.with_status(|st| st.leader_id) != 0
    }

    /// The member's watchers.
    pub fn watch_hub(&self) -> &Arc<WatchHub> {
        &self.watch_hub
    }

    /// etcd's request timeout (5 s + 2 election timeouts): how long a proposal or read may wait.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// The peer transport (its dialer and identity serve this member's own peer requests).
    pub(crate) fn transport(&self) -> &Arc<HttpTransport> {
        &self.transport
    }

    /// Where the peer listener's connections run: the raft loop's thread.
    pub fn peer_runtime(&self) -> tokio::runtime::Handle {
        self.raft.runtime().clone()
    }

    /// The raft part of the peer listener.
    pub fn raft_http_handler(&self) -> RaftHttpHandler {
        RaftHttpHandler::new(self.transport.clone())
    }

    /// The election timeout (how long a stream asking for a leader tolerates having none).
    pub fn election_timeout(&self) -> Duration {
        self.cfg.heartbeat * self.cfg.election_ticks as u32
    }

    /// Stops raft and the applier; the backend is synced by the applier on its way out.
    pub async fn stop(&self) {
        self.raft.stop().await;
        let handle = self.applier.lock().take();
        if let Some(h) = handle {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
        self.watch_hub.stop();
        let handle = self.watch_sync.lock().take();
        if let Some(h) = handle {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
    }
}

/// What this member says of its versions in its peer requests (etcd's minimum cluster version
/// is 3.0.0 in 3.4 and 3.5).
fn peer_versions(cfg: &ServerConfig) -> Versions {
    Versions { server: cfg.etcd_api_version.clone(), min_cluster: "3.0.0".into() }
}

/// The running cluster as a joining member's refusal names it.
fn member_list_text(cid: u64, members: &[Member]) -> String {
    let list: Vec<String> = members
        .iter()
        .map(|m| format!("{:x}={}", m.id, m.raft_attrs.as_ref().map(|r| r.peer_urls.join(",")).unwrap_or_default()))
        .collect();
    format!("cluster {cid:x} [{}]", list.join(" "))
}

/// Asks the members of `--initial-cluster` (other than us) for the cluster ID and members
/// (etcd's `GET /members`, the ID in `X-Etcd-Cluster-ID`), with etcd's error texts.
async fn fetch_cluster(cfg: &ServerConfig) -> Result<(u64, Vec<Member>), ServerError> {
    // Dialled as the raft streams are (TLS for https peers), but from any local address: the
    // transport and its local IP do not exist yet.
    let dialer = etcd_raft::PeerDialer::new(None, cfg.peer_dial_tls.clone());
    let me = Identity { peer_urls: cfg.advertise_peer_urls.clone(), versions: peer_versions(cfg), ..Default::default() };
    for m in cfg.initial_cluster.iter().filter(|m| m.name != cfg.name) {
        for url in &m.peer_urls {
            let asked = async {
                let mut conn = Connection::open(&dialer, url, Duration::from_secs(2)).await.map_err(|e| e.to_string())?;
                peer_api::call::members(&mut conn, &me).await
            };
            match tokio::time::timeout(Duration::from_secs(10), asked).await {
                Ok(Ok((cid, members))) if !members.is_empty() => {
                    return Ok((cid, members.into_iter().map(member_from_json).collect()));
                }
                Ok(Ok(_)) => {
                    return Err(ServerError::Internal(
                        "cannot fetch cluster info from peer urls: failed to get raft cluster member(s) from the given URLs".into(),
                    ))
                }
                Ok(Err(e)) => tracing::warn!(address = %format!("{url}/members"), error = %e, "failed to get cluster response"),
                Err(_) => tracing::warn!(address = %format!("{url}/members"), "failed to get cluster response: timed out"),
            }
        }
    }
    Err(ServerError::Internal(
        "cannot fetch cluster info from peer urls: could not retrieve cluster information from the given URLs".into(),
    ))
}

/// A client response produced by applying one raft request.
trait AppliedResponse: Sized {
    fn from_result(r: ApplyResult) -> Result<Self, ServerError>;
    fn set_header(&mut self, h: ResponseHeader);
}

macro_rules! applied_response {
    ($($variant:ident => $ty:ty),* $(,)?) => {$(
        impl AppliedResponse for $ty {
            fn from_result(r: ApplyResult) -> Result<Self, ServerError> {
                match r {
                    ApplyResult::$variant(x) => Ok(x),
                    other => Err(unexpected(other)),
                }
            }
            fn set_header(&mut self, h: ResponseHeader) {
                self.header = Some(h);
            }
        }
    )*};
}

applied_response!(
    Put => PutResponse,
    DeleteRange => DeleteRangeResponse,
    Txn => TxnResponse,
    Compaction => CompactionResponse,
    Alarm => AlarmResponse,
);

/// etcd's estimate of what a put adds to the backend (its key's metadata overhead included).
pub(crate) fn put_cost(r: &PutRequest) -> i64 {
    256 + r.key.len() as i64 + r.value.len() as i64
}

/// The larger of a txn's two branches, counting only their direct puts (as etcd does).
pub(crate) fn txn_cost(r: &TxnRequest) -> i64 {
    let branch = |ops: &[RequestOp]| -> i64 {
        ops.iter()
            .map(|op| match &op.request {
                Some(request_op::Request::RequestPut(p)) => put_cost(p),
                _ => 0,
            })
            .sum()
    };
    branch(&r.success).max(branch(&r.failure))
}

/// Whether a forwarded request failed because the leader it went to is gone (dead, deposed,
/// unreachable) rather than by the leader's own answer: worth sending again.
fn leader_gone(e: &ServerError) -> bool {
    use ServerError::*;
    matches!(e, NotLeader | NoLeader | Stopped | Timeout | TimeoutDueToLeaderFail | Internal(_))
}

fn unexpected(r: ApplyResult) -> ServerError {
    ServerError::Internal(format!("applier answered with an unexpected result: {r:?}"))
}

/// Whether a range may read many keys: a key range without a small limit (a point get or a
/// page of at most [`SMALL_PAGE`] keys is read where it is asked).
fn may_read_many(req: &RangeRequest) -> bool {
    !req.range_end.is_empty() && !req.count_only && (req.limit <= 0 || req.limit > SMALL_PAGE)
}

/// The largest limit of a range that is read on the client runtime's worker itself.
const SMALL_PAGE: i64 = 1000;

/// Runs `read` (when `long`: a read that may take long) off the client runtime's worker, which
/// then goes on serving other calls: the runtime has one worker per core but one (see the
/// binary's `client_worker_threads`), so on 2 cores a long read would hold up every other call.
fn off_worker_if<T>(long: bool, read: impl FnOnce() -> T) -> T {
    let multi_thread = || {
        tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
    };
    if long && multi_thread() {
        tokio::task::block_in_place(read)
    } else {
        read()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_key_ranges_without_a_small_limit_may_read_many() {
        let range = |key: &[u8], end: &[u8], limit: i64, count_only: bool| RangeRequest {
            key: key.to_vec(),
            range_end: end.to_vec(),
            limit,
            count_only,
            ..Default::default()
        };
        assert!(!may_read_many(&range(b"a", b"", 0, false)), "a point get");
        assert!(may_read_many(&range(b"a", b"b", 0, false)), "no limit");
        assert!(may_read_many(&range(b"\0", b"\0", 0, false)), "everything");
        assert!(!may_read_many(&range(b"a", b"b", 500, false)), "a page");
        assert!(may_read_many(&range(b"a", b"b", SMALL_PAGE + 1, false)));
        assert!(!may_read_many(&range(b"a", b"b", 0, true)), "a count");
    }

    #[tokio::test]
    async fn a_read_off_the_worker_runs_on_a_current_thread_runtime_too() {
        assert_eq!(off_worker_if(true, || 7), 7);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_long_read_leaves_the_only_worker_to_other_tasks() {
        // on the worker (a test's own body runs on the thread that blocks on it)
        let answered = tokio::spawn(async {
            let (tx, rx) = std::sync::mpsc::channel();
            // the other task can only run (and answer) while this one's read is off the worker
            tokio::spawn(async move { tx.send(()).unwrap() });
            off_worker_if(true, || rx.recv_timeout(Duration::from_secs(5)).is_ok())
        })
        .await
        .unwrap();
        assert!(answered);
    }
}
