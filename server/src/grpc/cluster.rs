//! Cluster service: membership as every member agreed on it through raft.

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

fn unimplemented(rpc: &str) -> Status {
    ServerError::Unimplemented(format!("etcd-rs: Cluster.{rpc} is not implemented yet (single member only)")).into()
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(&self, _r: Request<MemberAddRequest>) -> Result<Response<MemberAddResponse>, Status> {
        Err(unimplemented("MemberAdd"))
    }

    async fn member_remove(&self, _r: Request<MemberRemoveRequest>) -> Result<Response<MemberRemoveResponse>, Status> {
        Err(unimplemented("MemberRemove"))
    }

    async fn member_update(&self, _r: Request<MemberUpdateRequest>) -> Result<Response<MemberUpdateResponse>, Status> {
        Err(unimplemented("MemberUpdate"))
    }

    async fn member_list(&self, request: Request<MemberListRequest>) -> Result<Response<MemberListResponse>, Status> {
        if request.into_inner().linearizable {
            self.server.linearizable_barrier().await?;
        }
        let members = self.server.members().members().iter().map(to_pb).collect();
        let mut header = self.server.header(0);
        header.revision = 0; // etcd's cluster responses carry no revision
        Ok(Response::new(MemberListResponse { header: Some(header), members }))
    }

    async fn member_promote(&self, _r: Request<MemberPromoteRequest>) -> Result<Response<MemberPromoteResponse>, Status> {
        Err(unimplemented("MemberPromote"))
    }
}
