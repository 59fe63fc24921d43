//! Cluster service: membership as every member agreed on it through raft.

use std::sync::Arc;

use etcd_proto::etcdserverpb::cluster_server::Cluster;
use etcd_proto::etcdserverpb::{
    MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse, MemberPromoteRequest,
    MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse, MemberUpdateRequest, MemberUpdateResponse,
};
use tonic::{Request, Response, Status};

use crate::etcd_server::EtcdServer;
use crate::membership::to_pb;

pub struct ClusterService {
    pub server: Arc<EtcdServer>,
}

fn header_without_revision(server: &EtcdServer) -> etcd_proto::etcdserverpb::ResponseHeader {
    let mut header = server.header(0);
    header.revision = 0; // etcd's cluster responses carry no revision
    header
}

fn to_pbs(members: &[etcd_proto::membershippb::Member]) -> Vec<etcd_proto::etcdserverpb::Member> {
    members.iter().map(to_pb).collect()
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(&self, request: Request<MemberAddRequest>) -> Result<Response<MemberAddResponse>, Status> {
        self.server.refuse_if_learner()?;
        let req = request.into_inner();
        let (member, members) = self.server.member_add(req.peer_ur_ls, req.is_learner).await?;
        Ok(Response::new(MemberAddResponse {
            header: Some(header_without_revision(&self.server)),
            member: Some(to_pb(&member)),
            members: to_pbs(&members),
        }))
    }

    async fn member_remove(&self, request: Request<MemberRemoveRequest>) -> Result<Response<MemberRemoveResponse>, Status> {
        self.server.refuse_if_learner()?;
        let members = self.server.member_remove(request.into_inner().id).await?;
        Ok(Response::new(MemberRemoveResponse {
            header: Some(header_without_revision(&self.server)),
            members: to_pbs(&members),
        }))
    }

    async fn member_update(&self, request: Request<MemberUpdateRequest>) -> Result<Response<MemberUpdateResponse>, Status> {
        self.server.refuse_if_learner()?;
        let req = request.into_inner();
        let members = self.server.member_update(req.id, req.peer_ur_ls).await?;
        Ok(Response::new(MemberUpdateResponse {
            header: Some(header_without_revision(&self.server)),
            members: to_pbs(&members),
        }))
    }

    async fn member_list(&self, request: Request<MemberListRequest>) -> Result<Response<MemberListResponse>, Status> {
        self.server.refuse_if_learner()?;
        if request.into_inner().linearizable {
            self.server.linearizable_barrier().await?;
        }
        let members = self.server.members().members();
        Ok(Response::new(MemberListResponse { header: Some(header_without_revision(&self.server)), members: to_pbs(&members) }))
    }

    async fn member_promote(&self, request: Request<MemberPromoteRequest>) -> Result<Response<MemberPromoteResponse>, Status> {
        self.server.refuse_if_learner()?;
        let members = self.server.member_promote(request.into_inner().id).await?;
        Ok(Response::new(MemberPromoteResponse {
            header: Some(header_without_revision(&self.server)),
            members: to_pbs(&members),
        }))
    }
}
