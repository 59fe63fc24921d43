//! The peer service on `--listen-peer-urls`: raft message streams from other members, and the
//! cluster's identity and members for a member that joins an existing cluster.

use std::sync::Arc;

use etcd_proto::etcdrspb::peer_server::Peer;
use etcd_proto::etcdrspb::{
    LeaseRenewRequest, LeaseRenewResponse, MembersRequest, MembersResponse, PromoteRequest, RaftAck, RaftBatch,
};
use etcd_proto::etcdserverpb::{LeaseTimeToLiveRequest, LeaseTimeToLiveResponse};
use protobuf::Message as _;
use raft::eraftpb::Message;
use tonic::{Request, Response, Status, Streaming};

use crate::etcd_server::EtcdServer;

pub struct PeerService {
    pub server: Arc<EtcdServer>,
}

impl PeerService {
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
        let mut stream = request.into_inner();
        let ours = self.server.cluster_id();
        while let Some(batch) = stream.message().await? {
            if batch.cluster_id != ours {
                tracing::warn!(
                    from = %format!("{:x}", batch.from),
                    remote_cluster = %format!("{:x}", batch.cluster_id),
                    local_cluster = %format!("{ours:x}"),
                    "refusing raft messages from a member of another cluster"
                );
                return Err(Status::failed_precondition(format!(
                    "etcd-rs: request cluster ID mismatch (got {:x} want {ours:x})",
                    batch.cluster_id
                )));
            }
            if self.server.members().is_removed(batch.from) {
                return Err(Status::permission_denied(format!(
                    "etcd-rs: member {:x} was removed from the cluster",
                    batch.from
                )));
            }
            for bytes in &batch.messages {
                match Message::parse_from_bytes(bytes) {
                    Ok(m) if m.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot => {
                        tracing::error!("refusing a raft snapshot without backend data (snapshot transfer is not built yet)");
                    }
                    Ok(m) => self.server.step(m),
                    Err(e) => return Err(Status::invalid_argument(format!("etcd-rs: bad raft message: {e}"))),
                }
            }
        }
        Ok(Response::new(RaftAck {}))
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

    async fn members(&self, _request: Request<MembersRequest>) -> Result<Response<MembersResponse>, Status> {
        Ok(Response::new(MembersResponse {
            cluster_id: self.server.cluster_id(),
            members: self.server.members().members(),
        }))
    }
}
