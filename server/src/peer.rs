//! The peer service on `--listen-peer-urls`: raft message streams from other members, and the
//! cluster's identity and members for a member that joins an existing cluster.

use std::sync::Arc;

use etcd_proto::etcdrspb::peer_server::Peer;
use etcd_proto::etcdrspb::{
    LeaseRenewRequest, LeaseRenewResponse, MembersRequest, MembersResponse, PromoteRequest, RaftAck, RaftBatch,
    SnapshotAck, SnapshotChunk,
};
use etcd_proto::etcdserverpb::{HashKvRequest, HashKvResponse, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse};
use protobuf::Message as _;
use raft::eraftpb::Message;
use tonic::{Request, Response, Status, Streaming};

use crate::etcd_server::EtcdServer;
use crate::snapshot::ReceivedFile;

pub struct PeerService {
    pub server: Arc<EtcdServer>,
}

impl PeerService {
    /// Messages only from members of our cluster that were not removed.
    fn check_sender(&self, cluster_id: u64, from: u64) -> Result<(), Status> {
        let ours = self.server.cluster_id();
        if cluster_id != ours {
            tracing::warn!(
                from = %format!("{from:x}"),
                remote_cluster = %format!("{cluster_id:x}"),
                local_cluster = %format!("{ours:x}"),
                "refusing raft messages from a member of another cluster"
            );
            return Err(Status::failed_precondition(format!(
                "etcd-rs: request cluster ID mismatch (got {cluster_id:x} want {ours:x})"
            )));
        }
        if self.server.members().is_removed(from) {
            return Err(Status::permission_denied(format!("etcd-rs: member {from:x} was removed from the cluster")));
        }
        Ok(())
    }

    /// The raft messages of one peer stream, handed to raft in order.
    async fn receive_raft(&self, mut stream: Streaming<RaftBatch>) -> Result<Response<RaftAck>, Status> {
        let mut received: Option<prometheus::IntCounter> = None;
        while let Some(batch) = stream.message().await? {
            self.check_sender(batch.cluster_id, batch.from)?;
            let bytes = batch.messages.iter().map(Vec::len).sum::<usize>() as u64;
            received.get_or_insert_with(|| etcd_raft::metrics::peer_received(batch.from)).inc_by(bytes);
            for bytes in &batch.messages {
                match Message::parse_from_bytes(bytes) {
                    Ok(m) if m.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot => {
                        tracing::warn!("ignoring a raft snapshot sent without its data (snapshots come by Peer.Snapshot)");
                    }
                    Ok(m) => self.server.step(m),
                    Err(e) => return Err(Status::invalid_argument(format!("etcd-rs: bad raft message: {e}"))),
                }
            }
        }
        Ok(Response::new(RaftAck {}))
    }

    /// The rest of a snapshot stream after its first chunk (from a checked sender).
    async fn receive_snapshot(
        &self,
        first: SnapshotChunk,
        mut stream: Streaming<SnapshotChunk>,
    ) -> Result<Response<SnapshotAck>, Status> {
        let msg = Message::parse_from_bytes(&first.message)
            .map_err(|e| Status::invalid_argument(format!("etcd-rs: bad raft message: {e}")))?;
        if msg.get_msg_type() != raft::eraftpb::MessageType::MsgSnapshot || msg.to != self.server.member_id() {
            return Err(Status::invalid_argument("etcd-rs: not a snapshot for this member"));
        }
        let index = msg.get_snapshot().get_metadata().index;
        tracing::info!(from = %format!("{:x}", first.from), index, "receiving a snapshot");
        let mut file = ReceivedFile::create(&self.server.snap_dir(), index)?;
        let mut chunk = first;
        let mut rows = 0u64;
        loop {
            if let Some(r) = &chunk.rows {
                rows += r.keys.len() as u64;
                file.write(r)?;
            }
            if chunk.done {
                break;
            }
            chunk = stream
                .message()
                .await?
                .ok_or_else(|| Status::aborted("etcd-rs: the snapshot stream ended before its last chunk"))?;
        }
        tokio::task::spawn_blocking(move || file.finish())
            .await
            .map_err(|e| Status::internal(format!("etcd-rs: snapshot file: {e}")))??;
        tracing::info!(index, rows, "received a snapshot; handing it to raft");
        self.server.step(msg);
        Ok(Response::new(SnapshotAck {}))
    }

    /// Forwarded requests are answered only by the leader: forwarding again could loop between
    /// members that disagree on who leads.
    fn refuse_unless_leader(&self) -> Result<(), Status> {
        if !self.server.is_leader() {
            return Err(crate::errors::ServerError::NotLeader.into());
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn raft(&self, request: Request<Streaming<RaftBatch>>) -> Result<Response<RaftAck>, Status> {
        let remote = request.remote_addr().map(|a| a.to_string()).unwrap_or_default();
        self.receive_raft(request.into_inner())
            .await
            .inspect_err(|_| etcd_raft::metrics::peer_receive_failure(&remote))
    }

    /// Receives a snapshot: stores its rows durably, then hands the raft message to raft, whose
    /// applier installs them if raft accepts it.
    async fn snapshot(&self, request: Request<Streaming<SnapshotChunk>>) -> Result<Response<SnapshotAck>, Status> {
        let mut stream = request.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("etcd-rs: empty snapshot stream"))?;
        self.check_sender(first.cluster_id, first.from)?;
        let transfer = etcd_raft::metrics::snapshot_receive(first.from);
        let ack = self.receive_snapshot(first, stream).await?;
        transfer.succeeded();
        Ok(ack)
    }

    async fn promote(&self, request: Request<PromoteRequest>) -> Result<Response<MembersResponse>, Status> {
        let id = request.into_inner().member_id;
        self.refuse_unless_leader()?;
        let members = self.server.member_promote(id).await?;
        Ok(Response::new(MembersResponse { cluster_id: self.server.cluster_id(), members }))
    }

    async fn lease_renew(&self, request: Request<LeaseRenewRequest>) -> Result<Response<LeaseRenewResponse>, Status> {
        self.refuse_unless_leader()?;
        let ttl = self.server.lease_renew(request.into_inner().id).await?;
        Ok(Response::new(LeaseRenewResponse { ttl }))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        self.refuse_unless_leader()?;
        Ok(Response::new(self.server.lease_time_to_live(request.into_inner()).await?))
    }

    /// This member's HashKV for another member's corruption check: the header names this member,
    /// its cluster and its current revision (learners answer too, unlike Maintenance.HashKV).
    async fn hash_kv(&self, request: Request<HashKvRequest>) -> Result<Response<HashKvResponse>, Status> {
        // a scan of the whole key table: off the async workers
        let (server, rev) = (self.server.clone(), request.into_inner().revision);
        let (hash, compact_revision, hash_revision, revision) = tokio::task::spawn_blocking(move || server.hash_kv(rev))
            .await
            .map_err(|e| Status::internal(format!("etcd-rs: hash kv: {e}")))??;
        Ok(Response::new(HashKvResponse {
            header: Some(self.server.header(revision)),
            hash,
            compact_revision,
            hash_revision,
        }))
    }

    async fn members(&self, _request: Request<MembersRequest>) -> Result<Response<MembersResponse>, Status> {
        Ok(Response::new(MembersResponse {
            cluster_id: self.server.cluster_id(),
            members: self.server.members().members(),
        }))
    }
}
