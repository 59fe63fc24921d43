//! Maintenance service: status, alarms, hashes, defragment. RPCs not built yet answer `Unimplemented`
//! naming themselves.

use std::pin::Pin;
use std::sync::Arc;

use etcd_proto::etcdserverpb::maintenance_server::Maintenance;
use etcd_proto::etcdserverpb::{
    AlarmRequest, AlarmResponse, DefragmentRequest, DefragmentResponse,
    DowngradeRequest, DowngradeResponse, HashKvRequest, HashKvResponse, HashRequest, HashResponse,
    MoveLeaderRequest, MoveLeaderResponse, SnapshotRequest, SnapshotResponse, StatusRequest, StatusResponse,
};
use tonic::{Request, Response, Status};

use crate::errors::ServerError;
use crate::etcd_server::EtcdServer;

pub struct MaintenanceService {
    pub server: Arc<EtcdServer>,
}

fn unimplemented(rpc: &str) -> Status {
    ServerError::Unimplemented(format!("etcd-rs: Maintenance.{rpc} is not implemented yet")).into()
}

type SnapshotStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<SnapshotResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(&self, request: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        self.server.refuse_if_learner()?;
        Ok(Response::new(self.server.alarm(request.into_inner()).await?))
    }

    async fn status(&self, _request: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        Ok(Response::new(self.server.status()))
    }

    async fn defragment(&self, request: Request<DefragmentRequest>) -> Result<Response<DefragmentResponse>, Status> {
        self.server.refuse_if_learner()?;
        self.server.check_admin(&self.server.auth_info(request.metadata()).await?)?;
        self.server.defragment().await?;
        Ok(Response::new(DefragmentResponse { header: Some(self.server.header(self.server.kv_revision())) }))
    }

    async fn hash(&self, request: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        self.server.check_admin(&self.server.auth_info(request.metadata()).await?)?;
        let (hash, revision) = self.server.hash()?;
        Ok(Response::new(HashResponse { header: Some(self.server.header(revision)), hash }))
    }

    async fn hash_kv(&self, request: Request<HashKvRequest>) -> Result<Response<HashKvResponse>, Status> {
        self.server.refuse_if_learner()?;
        self.server.check_admin(&self.server.auth_info(request.metadata()).await?)?;
        let req = request.into_inner();
        let (hash, compact_revision, hash_revision, revision) = self.server.hash_kv(req.revision)?;
        Ok(Response::new(HashKvResponse {
            header: Some(self.server.header(revision)),
            hash,
            compact_revision,
            hash_revision,
        }))
    }

    type SnapshotStream = SnapshotStream;

    async fn snapshot(&self, request: Request<SnapshotRequest>) -> Result<Response<Self::SnapshotStream>, Status> {
        self.server.check_admin(&self.server.auth_info(request.metadata()).await?)?;
        Err(unimplemented("Snapshot"))
    }

    async fn downgrade(&self, _request: Request<DowngradeRequest>) -> Result<Response<DowngradeResponse>, Status> {
        Err(unimplemented("Downgrade"))
    }

    async fn move_leader(&self, request: Request<MoveLeaderRequest>) -> Result<Response<MoveLeaderResponse>, Status> {
        self.server.refuse_if_learner()?;
        self.server.move_leader(request.into_inner().target_id).await?;
        Ok(Response::new(MoveLeaderResponse { header: Some(self.server.header(self.server.kv_revision())) }))
    }
}
