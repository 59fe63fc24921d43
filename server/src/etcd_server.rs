//! `EtcdServer`: wires bootstrap (backend, WAL, snapshotter, membership) to the raft node and
//! the apply scheduler, and offers the operations the gRPC services call.
//!
//! Writes: propose an `InternalRaftRequest` and wait for the applier to answer it.
//! Linearizable reads: one batched ReadIndex round, wait until applied >= that index, read.
//! Serializable reads: read the local state at once.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use etcd_lease::Lessor;
use etcd_mvcc::KvStore;
use etcd_proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, InternalRaftRequest,
    PutRequest, PutResponse, RangeRequest, RangeResponse, RequestHeader, ResponseHeader, StatusResponse,
    TxnRequest, TxnResponse,
};
use etcd_proto::membershippb::{Attributes, ClusterMemberAttrSetRequest, ClusterVersionSetRequest};
use etcd_raft::{NoopTransport, RaftNode, RaftNodeConfig, Wal};
use parking_lot::Mutex;
use prost::Message;
use tokio::sync::watch;

use crate::apply::{Applied, ApplyResult, ApplyWait, Applier};
use crate::config::ServerConfig;
use crate::errors::ServerError;
use crate::ids::{cluster_id, member_id, RequestIdGen};
use crate::membership::{new_member, Membership};

mod lease;

/// The backend quota etcd applies when `--quota-backend-bytes` is 0.
pub const DEFAULT_QUOTA_BYTES: i64 = 2 * 1024 * 1024 * 1024;
/// Log entries kept after a raft log compaction so slow followers catch up without a snapshot.
const SNAPSHOT_CATCHUP_ENTRIES: u64 = 5000;

pub struct EtcdServer {
    cfg: ServerConfig,
    member_id: u64,
    cluster_id: u64,
    kv: Arc<KvStore>,
    raft: RaftNode,
    members: Arc<Membership>,
    lessor: Arc<Lessor>,
    wait: Arc<ApplyWait>,
    applied_rx: watch::Receiver<u64>,
    ids: RequestIdGen,
    applier: Mutex<Option<std::thread::JoinHandle<()>>>,
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
        create_private_dir(&member_dir.join("snap"))?;

        let kv = Arc::new(KvStore::open(&member_dir.join("snap").join("db"))?);
        let (applied_index, _) = kv.consistent_index();
        let lessor = lease::open_lessor(&kv, &cfg)?;

        // A restart takes its identity from the WAL and ignores the --initial-* flags, as etcd does.
        let restarting = Wal::exists(&member_dir.join("wal"));
        let (my_id, initial_peers) = if restarting {
            (0, Vec::new())
        } else {
            if !cfg.initial_cluster_new {
                return Err(ServerError::Unimplemented(
                    "etcd-rs: joining an existing cluster (--initial-cluster-state existing) is not supported yet".into(),
                ));
            }
            let mut peers = Vec::new();
            let mut my_id = 0;
            for m in &cfg.initial_cluster {
                let id = member_id(&m.peer_urls, &cfg.initial_cluster_token, None);
                if m.name == cfg.name {
                    my_id = id;
                }
                peers.push((id, new_member(id, &m.name, m.peer_urls.clone(), false).encode_to_vec()));
            }
            if peers.len() > 1 {
                return Err(ServerError::Unimplemented(
                    "etcd-rs: multi-member clusters are not supported yet (single member only)".into(),
                ));
            }
            (my_id, peers)
        };
        let cid = cluster_id(&initial_peers.iter().map(|(id, _)| *id).collect::<Vec<_>>());
        let mut raft_cfg = RaftNodeConfig::new(my_id, cid, member_dir.clone());
        raft_cfg.initial_peers = initial_peers;
        raft_cfg.applied_index = applied_index;
        raft_cfg.tick_interval = cfg.heartbeat;
        raft_cfg.election_tick = cfg.election_ticks;
        raft_cfg.heartbeat_tick = 1;
        raft_cfg.snapshot_catchup_entries = SNAPSHOT_CATCHUP_ENTRIES;
        let (raft, apply_rx) = RaftNode::start(raft_cfg, Arc::new(NoopTransport))?;
        let meta = raft.wal_metadata();
        let (my_id, cid) = (meta.node_id, meta.cluster_id);
        tracing::info!(
            member_id = %format!("{my_id:x}"),
            cluster_id = %format!("{cid:x}"),
            restarting,
            "raft node started"
        );
        let members = Arc::new(Membership::load(kv.backend().database(), my_id, cid)?);
        let (applied_tx, applied_rx) = watch::channel(applied_index);
        let wait = Arc::new(ApplyWait::default());
        let applier = Applier {
            kv: kv.clone(),
            raft: raft.clone(),
            members: members.clone(),
            lessor: lessor.clone(),
            lease_promote_extend: cfg.heartbeat * cfg.election_ticks as u32,
            wait: wait.clone(),
            applied_tx,
            runtime: tokio::runtime::Handle::current(),
            batch_interval: cfg.backend_batch_interval,
            batch_limit: cfg.backend_batch_limit,
            snapshot_count: cfg.snapshot_count,
            last_snapshot_index: applied_index,
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
            raft,
            members,
            lessor,
            wait,
            applied_rx,
            ids: RequestIdGen::new(my_id),
            applier: Mutex::new(Some(handle)),
            request_timeout: Duration::from_secs(5) + 2 * election,
            cfg,
        });
        tokio::spawn(lease::run_expiry_loop(Arc::downgrade(&server)));
        Ok(server)
    }

    /// Publishes this member's name and client URLs and, on the leader, the cluster version,
    /// through raft; retried until it succeeds or the server stops.
    pub async fn publish(self: &Arc<Self>) {
        let attrs = Attributes { name: self.cfg.name.clone(), client_urls: self.cfg.advertise_client_urls.clone() };
        while !self.has_leader() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        loop {
            let req = InternalRaftRequest {
                cluster_member_attr_set: Some(ClusterMemberAttrSetRequest {
                    member_id: self.member_id,
                    member_attributes: Some(attrs.clone()),
                }),
                ..Default::default()
            };
            match self.propose(req).await {
                Ok(_) => break,
                Err(ServerError::Stopped) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "failed to publish local member to cluster through raft; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        if self.members.cluster_version().is_none() && self.raft.status().leader_id == self.member_id {
            let ver = cluster_version_of(&self.cfg.etcd_api_version);
            let req = InternalRaftRequest {
                cluster_version_set: Some(ClusterVersionSetRequest { ver }),
                ..Default::default()
            };
            if let Err(e) = self.propose(req).await {
                tracing::warn!(error = %e, "failed to set the cluster version");
            }
        }
        tracing::info!("ready to serve client requests");
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

    pub fn members(&self) -> &Membership {
        &self.members
    }

    pub fn header(&self, revision: i64) -> ResponseHeader {
        ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member_id,
            revision,
            raft_term: self.raft.status().term,
        }
    }

    async fn propose(&self, mut req: InternalRaftRequest) -> Result<Applied, ServerError> {
        let id = self.ids.next();
        req.header = Some(RequestHeader { id, ..Default::default() });
        let data = req.encode_to_vec();
        if data.len() > self.cfg.max_request_bytes {
            return Err(ServerError::RequestTooLarge);
        }
        let rx = self.wait.register(id);
        if let Err(e) = self.raft.propose(data).await {
            self.wait.cancel(id);
            return Err(e.into());
        }
        match tokio::time::timeout(self.request_timeout, rx).await {
            Ok(Ok(applied)) => Ok(applied),
            Ok(Err(_)) => Err(ServerError::Stopped),
            Err(_) => {
                self.wait.cancel(id);
                Err(ServerError::Timeout)
            }
        }
    }

    /// Waits until this member has applied everything committed before the call.
    pub async fn linearizable_barrier(&self) -> Result<(), ServerError> {
        let index = match tokio::time::timeout(self.request_timeout, self.raft.read_index()).await {
            Ok(r) => r?,
            Err(_) => return Err(ServerError::Timeout),
        };
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

    pub async fn range(&self, req: RangeRequest) -> Result<RangeResponse, ServerError> {
        if !req.serializable {
            self.linearizable_barrier().await?;
        }
        let mut resp = self.kv.range(&req)?;
        let read_at = resp.header.as_ref().map(|h| h.revision).unwrap_or_else(|| self.kv.current_revision());
        resp.header = Some(self.header(read_at));
        Ok(resp)
    }

    pub async fn put(&self, req: PutRequest) -> Result<PutResponse, ServerError> {
        let applied = self.propose(InternalRaftRequest { put: Some(req), ..Default::default() }).await?;
        match applied.result? {
            ApplyResult::Put(mut r) => {
                r.header = Some(self.header(applied.revision));
                Ok(r)
            }
            other => Err(unexpected(other)),
        }
    }

    pub async fn delete_range(&self, req: DeleteRangeRequest) -> Result<DeleteRangeResponse, ServerError> {
        let applied = self.propose(InternalRaftRequest { delete_range: Some(req), ..Default::default() }).await?;
        match applied.result? {
            ApplyResult::DeleteRange(mut r) => {
                r.header = Some(self.header(applied.revision));
                Ok(r)
            }
            other => Err(unexpected(other)),
        }
    }

    pub async fn txn(&self, req: TxnRequest) -> Result<TxnResponse, ServerError> {
        let applied = self.propose(InternalRaftRequest { txn: Some(req), ..Default::default() }).await?;
        match applied.result? {
            ApplyResult::Txn(mut r) => {
                // Nested responses keep the per-op headers mvcc gave them, as etcd answers.
                r.header = Some(self.header(applied.revision));
                Ok(r)
            }
            other => Err(unexpected(other)),
        }
    }

    pub async fn compact(&self, req: CompactionRequest) -> Result<CompactionResponse, ServerError> {
        let applied = self.propose(InternalRaftRequest { compaction: Some(req), ..Default::default() }).await?;
        match applied.result? {
            ApplyResult::Compaction(mut r) => {
                r.header = Some(self.header(applied.revision));
                Ok(r)
            }
            other => Err(unexpected(other)),
        }
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
            errors: Vec::new(),
            db_size_in_use,
            is_learner: st.is_learner,
            storage_version: String::new(),
            db_size_quota: if self.cfg.quota_backend_bytes > 0 { self.cfg.quota_backend_bytes } else { DEFAULT_QUOTA_BYTES },
            downgrade_info: None,
        }
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

    pub fn is_leader(&self) -> bool {
        self.raft.status().leader_id == self.member_id
    }

    pub fn has_leader(&self) -> bool {
        self.raft.status().leader_id != 0
    }

    /// Stops raft and the applier; the backend is synced by the applier on its way out.
    pub async fn stop(&self) {
        self.raft.stop().await;
        let handle = self.applier.lock().take();
        if let Some(h) = handle {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
    }
}

/// "3.5.17" -> "3.5.0": the cluster version is major.minor.
fn cluster_version_of(api_version: &str) -> String {
    let mut parts = api_version.split('.');
    let major = parts.next().unwrap_or("3");
    let minor = parts.next().unwrap_or("5");
    format!("{major}.{minor}.0")
}

fn unexpected(r: ApplyResult) -> ServerError {
    ServerError::Internal(format!("applier answered with an unexpected result: {r:?}"))
}
