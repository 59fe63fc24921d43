//! Cluster service: membership as every member agreed on it through raft.
//!
//! Invariant: with auth enabled, no membership change is proposed for a sender without the
//! root role (etcd checks in the API layer, before proposing; listing is open to anyone).

use std::sync::Arc;

use etcd_proto::etcdserverpb::cluster_server::Cluster;
use etcd_proto::etcdserverpb::{
    MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse, MemberPromoteRequest,
    MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse, MemberUpdateRequest, MemberUpdateResponse,
};
use tonic::{Request, Response, Status};

use crate::errors::ServerError;
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

impl ClusterService {
    /// etcd's checkMembershipOperationPermission for a membership change.
    async fn check_permission<T>(&self, request: &Request<T>) -> Result<(), ServerError> {
        self.server.check_membership_permission(request.metadata(), request.extensions()).await
    }
}

fn to_pbs(members: &[etcd_proto::membershippb::Member]) -> Vec<etcd_proto::etcdserverpb::Member> {
    members.iter().map(to_pb).collect()
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(&self, request: Request<MemberAddRequest>) -> Result<Response<MemberAddResponse>, Status> {
        self.server.refuse_if_learner()?;
        // etcd parses the URLs before its permission check
        crate::config::parse_peer_urls(&request.get_ref().peer_ur_ls).map_err(|_| ServerError::MemberBadUrls)?;
        self.check_permission(&request).await?;
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
        self.check_permission(&request).await?;
        let members = self.server.member_remove(request.into_inner().id).await?;
        Ok(Response::new(MemberRemoveResponse {
            header: Some(header_without_revision(&self.server)),
            members: to_pbs(&members),
        }))
    }

    async fn member_update(&self, request: Request<MemberUpdateRequest>) -> Result<Response<MemberUpdateResponse>, Status> {
        self.server.refuse_if_learner()?;
        self.check_permission(&request).await?;
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
        self.check_permission(&request).await?;
        let members = self.server.member_promote(request.into_inner().id).await?;
        Ok(Response::new(MemberPromoteResponse {
            header: Some(header_without_revision(&self.server)),
            members: to_pbs(&members),
        }))
    }
}
