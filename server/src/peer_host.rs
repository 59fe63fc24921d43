//! The server's side of etcd's peer protocol (rafthttp), served on `--listen-peer-urls`:
//!
//! - [`PeerHost`]: what the transport and the raft handler need of the server (deliver a
//!   message to raft, who was removed, where an incoming snapshot's database goes);
//! - `impl PeerApi for EtcdServer`: the other peer endpoints (`/members`, `/version`,
//!   `/members/promote/<id>`, `/leases`, `/leases/internal`, `/members/hashkv`,
//!   `/downgrade/enabled`);
//! - [`PeerRoutes`]: the peer listener's service, routing each path to one of them (anything
//!   else: 404 as etcd's mux).
//!
//! Invariant: messages from a member removed from the cluster never reach raft (403 / 410 as
//! etcd), and only the leader answers forwarded requests (forwarding again could loop between
//! members that disagree on who leads).

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use etcd_proto::etcdserverpb::{LeaseTimeToLiveRequest, LeaseTimeToLiveResponse};
use etcd_proto::membershippb::{Attributes, Member, RaftAttributes};
use etcd_raft::rafthttp::handler::{http_error, ResponseBody};
use etcd_raft::rafthttp::host::{BoxFuture, SnapshotBody};
use etcd_raft::rafthttp::peer_api::{self, HashKvHeaderJson, HashKvResponseJson, LeaseError, MemberJson, PeerApi, PromoteError};
use etcd_raft::rafthttp::{ProcessError, RaftHost, RaftHttpHandler};
use etcd_raft::RaftNode;
use axum::http::{Request, Response, StatusCode};
use raft::eraftpb::{Message, MessageType};
use tokio::sync::watch;

use crate::errors::ServerError;
use crate::etcd_server::EtcdServer;
use crate::membership::Membership;
use crate::serve::RequestBody;

/// The server as the peer transport sees it. Made before raft starts (the transport needs
/// it), filled in once the node and the membership exist; until then messages are refused.
pub struct PeerHost {
    raft: OnceLock<RaftNode>,
    members: OnceLock<Arc<Membership>>,
    snap_dir: PathBuf,
    /// Turns true when a peer refuses us as a removed member.
    removed: watch::Sender<bool>,
}

impl PeerHost {
    pub fn new(snap_dir: PathBuf) -> Arc<PeerHost> {
        Arc::new(PeerHost { raft: OnceLock::new(), members: OnceLock::new(), snap_dir, removed: watch::channel(false).0 })
    }

    pub fn bind(&self, raft: RaftNode, members: Arc<Membership>) {
        let _ = self.raft.set(raft);
        let _ = self.members.set(members);
    }

    /// Turns true once a peer said this member was removed from the cluster.
    pub fn removed_by_peers(&self) -> watch::Receiver<bool> {
        self.removed.subscribe()
    }

    fn raft(&self) -> Result<&RaftNode, ProcessError> {
        self.raft.get().ok_or_else(|| ProcessError::Other("etcd-rs: raft is not started yet".into()))
    }

    /// A message from a removed member is refused (as etcd); so is one addressed to another
    /// member: a member replaced by a new one on the same peer URL can still be sent what was
    /// queued for it (a peer proxy in between keeps accepting while no member listens), and
    /// raft-rs would step it as its own (a heartbeat carrying the old member's commit index,
    /// beyond the new member's log, stops the new member's raft).
    fn check_message(&self, m: &Message) -> Result<(), ProcessError> {
        if self.is_removed(m.from) {
            return Err(ProcessError::RemovedMember);
        }
        let local = self.members.get().map(|ms| ms.local_id());
        if local.is_some_and(|id| id != m.to) {
            tracing::warn!(to = %format!("{:x}", m.to), from = %format!("{:x}", m.from), kind = ?m.get_msg_type(), "ignoring a raft message addressed to another member");
            return Err(ProcessError::Other(format!("message for member {:x}, not this member", m.to)));
        }
        if let Some(why) = misnumbered_append(m) {
            tracing::error!(from = %format!("{:x}", m.from), index = m.index, log_term = m.log_term, commit = m.commit, entries = m.entries.len(), first = m.entries.first().map(|e| e.index), "ignoring a raft append whose entries do not follow its index: {why}");
            return Err(ProcessError::Other(format!("append at index {}: {why}", m.index)));
        }
        Ok(())
    }
}

/// Why an append's entries do not continue the log right after its `index` (each entry carries
/// its own index): raft-rs would take `index + entries` as the new last index, acknowledge it and
/// commit up to it, beyond what it holds, and then stop on the commit (`to_commit ... out of
/// range`). None for any other message and for a well-formed append.
fn misnumbered_append(m: &Message) -> Option<String> {
    if m.get_msg_type() != MessageType::MsgAppend {
        return None;
    }
    let mut expected = m.index + 1;
    for e in m.entries.iter() {
        if e.index != expected {
            return Some(format!("entry {} where {expected} was due", e.index));
        }
        expected += 1;
    }
    None
}

impl RaftHost for PeerHost {
    fn process(&self, m: Message) -> Result<(), ProcessError> {
        self.check_message(&m)?;
        if m.get_msg_type() == MessageType::MsgSnapshot {
            // a snapshot is useful only with its database, which comes by /raft/snapshot
            tracing::warn!(from = %format!("{:x}", m.from), "ignoring a raft snapshot sent without its database");
            return Ok(());
        }
        self.raft()?.step(m);
        Ok(())
    }

    fn is_removed(&self, id: u64) -> bool {
        self.members.get().is_some_and(|m| m.is_removed(id))
    }

    fn receive_snapshot(&self, m: Message, db: SnapshotBody) -> BoxFuture<'_, Result<(), ProcessError>> {
        Box::pin(async move {
            self.check_message(&m)?;
            let raft = self.raft()?.clone();
            let transfer = etcd_raft::metrics::snapshot_receive(m.from);
            let index = m.get_snapshot().get_metadata().index;
            let started = std::time::Instant::now();
            let path = crate::snapshot::receive(&self.snap_dir, index, db).await.map_err(|e| ProcessError::Other(e.to_string()))?;
            let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            tracing::info!(
                "local-member-id" = %format!("{:x}", m.to), "remote-snapshot-sender-id" = %format!("{:x}", m.from),
                "incoming-snapshot-index" = index, "incoming-snapshot-size-bytes" = bytes,
                "incoming-snapshot-size" = %crate::logging::human_bytes(bytes), "download-took" = %crate::logging::go_duration(started.elapsed()),
                path = %path.display(), "received and saved database snapshot"
            );
            raft.step(m);
            transfer.succeeded();
            Ok(())
        })
    }

    fn report_unreachable(&self, id: u64) {
        if let Some(r) = self.raft.get() {
            r.report_unreachable(id);
        }
    }

    fn report_snapshot(&self, id: u64, ok: bool) {
        if let Some(r) = self.raft.get() {
            r.report_snapshot(id, ok);
        }
    }

    fn removed_from_cluster(&self) {
        tracing::warn!("a peer says this member was removed from the cluster");
        self.removed.send_replace(true);
    }
}

/// A member as etcd's `/members` lists it.
pub fn member_json(m: &Member) -> MemberJson {
    let raft = m.raft_attrs.clone().unwrap_or_default();
    let attrs = m.member_attrs.clone().unwrap_or_default();
    MemberJson { id: m.id, peer_urls: raft.peer_urls, is_learner: raft.is_learner, name: attrs.name, client_urls: attrs.client_urls }
}

/// A member from etcd's `/members` JSON.
pub fn member_from_json(m: MemberJson) -> Member {
    Member {
        id: m.id,
        raft_attrs: Some(RaftAttributes { peer_urls: m.peer_urls, is_learner: m.is_learner }),
        member_attrs: Some(Attributes { name: m.name, client_urls: m.client_urls }),
    }
}

fn lease_error(e: ServerError) -> LeaseError {
    match e {
        ServerError::LeaseNotFound => LeaseError::NotFound,
        ServerError::Timeout | ServerError::TimeoutWaitAppliedIndex => LeaseError::Timeout,
        other => LeaseError::Other(other.to_string()),
    }
}

/// etcd's lessor text for a renewal that reached a member which is not the leader.
pub const NOT_PRIMARY: &str = "not a primary lessor";

impl PeerApi for EtcdServer {
    fn cluster_id(&self) -> u64 {
        EtcdServer::cluster_id(self)
    }

    fn members(&self) -> Vec<MemberJson> {
        EtcdServer::members(self).members().iter().map(member_json).collect()
    }

    fn promote_member(&self, id: u64) -> BoxFuture<'_, Result<Vec<MemberJson>, PromoteError>> {
        Box::pin(async move {
            if !self.is_leader() {
                return Err(PromoteError::Other(ServerError::NotLeader.to_string()));
            }
            match self.member_promote(id).await {
                Ok(members) => Ok(members.iter().map(member_json).collect()),
                Err(ServerError::MemberNotFound) => Err(PromoteError::IdNotFound),
                Err(ServerError::MemberNotLearner) => Err(PromoteError::NotLearner),
                Err(ServerError::LearnerNotReady) => Err(PromoteError::LearnerNotReady),
                Err(e) => Err(PromoteError::Other(e.to_string())),
            }
        })
    }

    fn versions(&self) -> (String, Option<String>) {
        EtcdServer::versions(self)
    }

    fn renew_lease(&self, id: i64) -> BoxFuture<'_, Result<i64, LeaseError>> {
        Box::pin(async move {
            if !self.is_leader() {
                return Err(LeaseError::Other(NOT_PRIMARY.into()));
            }
            self.lease_renew(id).await.map_err(lease_error)
        })
    }

    fn lease_time_to_live(&self, id: i64, keys: bool) -> BoxFuture<'_, Result<LeaseTimeToLiveResponse, LeaseError>> {
        Box::pin(async move {
            if !self.is_leader() {
                return Err(LeaseError::Other(NOT_PRIMARY.into()));
            }
            EtcdServer::lease_time_to_live(self, LeaseTimeToLiveRequest { id, keys }).await.map_err(lease_error)
        })
    }

    fn hash_kv(&self, revision: i64) -> BoxFuture<'_, Result<HashKvResponseJson, String>> {
        Box::pin(async move {
            let r = self.hash_by_rev(revision).await;
            let (h, current) = r.map_err(|e| e.to_string())?;
            Ok(HashKvResponseJson {
                header: HashKvHeaderJson { revision: current, ..Default::default() },
                hash: h.hash,
                compact_revision: h.compact_revision,
                hash_revision: h.revision,
            })
        })
    }

    fn downgrade_enabled(&self) -> BoxFuture<'_, Result<bool, String>> {
        Box::pin(async move { EtcdServer::downgrade_enabled(self).await.map_err(|e| e.to_string()) })
    }
}

/// The peer listener's service: raft's paths to the rafthttp handler, the peer endpoints to
/// the server, anything else 404.
#[derive(Clone)]
pub struct PeerRoutes {
    raft: RaftHttpHandler,
    server: Arc<EtcdServer>,
}

impl PeerRoutes {
    pub fn new(server: Arc<EtcdServer>) -> PeerRoutes {
        PeerRoutes { raft: server.raft_http_handler(), server }
    }

    async fn answer(self, req: Request<RequestBody>) -> Response<ResponseBody> {
        let path = req.uri().path();
        if RaftHttpHandler::handles(path) {
            self.raft.handle(req).await
        } else if peer_api::handles(path) {
            peer_api::handle(&*self.server, req).await
        } else {
            http_error(StatusCode::NOT_FOUND, "404 page not found")
        }
    }
}

impl tower::Service<Request<RequestBody>> for PeerRoutes {
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response<ResponseBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<RequestBody>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.answer(req).await) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append(index: u64, entries: &[u64]) -> Message {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgAppend);
        m.index = index;
        let entries: Vec<raft::eraftpb::Entry> = entries
            .iter()
            .map(|&i| {
                let mut e = raft::eraftpb::Entry::default();
                e.index = i;
                e
            })
            .collect();
        m.set_entries(entries.into());
        m
    }

    #[test]
    fn an_append_whose_entries_do_not_follow_its_index_is_refused() {
        assert_eq!(misnumbered_append(&append(180, &[181, 182])), None);
        assert_eq!(misnumbered_append(&append(180, &[])), None);
        assert!(misnumbered_append(&append(180, &[177, 178, 179, 180])).is_some());
        assert!(misnumbered_append(&append(180, &[181, 183])).is_some());
    }
}
