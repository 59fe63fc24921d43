//! v3lock's Lock service: a distributed mutex per name, held through a lease.

use std::sync::Arc;

use etcd_proto::etcdserverpb::DeleteRangeRequest;
use etcd_proto::v3lockpb::lock_server::Lock;
use etcd_proto::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};
use tonic::{Request, Response, Status};

use super::recipes::{
    create_or_get, first_created, participant_key, prefix, session_lease, wait_deletes, Abandon, RecipeError,
};
use crate::errors::ServerError;
use crate::etcd_server::EtcdServer;

pub struct LockService {
    pub server: Arc<EtcdServer>,
}

#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(&self, request: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        Ok(Response::new(lock(&self.server, request).await?))
    }

    async fn unlock(&self, request: Request<UnlockRequest>) -> Result<Response<UnlockResponse>, Status> {
        Ok(Response::new(unlock(&self.server, request).await?))
    }
}

/// Waits until the caller's key `<name>/<lease>` is the oldest under `<name>/`.
async fn lock(server: &Arc<EtcdServer>, request: Request<LockRequest>) -> Result<LockResponse, RecipeError> {
    let auth = server.auth_info(request.metadata(), request.extensions()).await?;
    let req = request.into_inner();
    let lease = session_lease(server, req.lease).await?;
    let pfx = prefix(&req.name);
    let key = participant_key(&req.name, lease);
    let (my_rev, mut header, _) = create_or_get(server, &auth, &key, b"", lease).await?;
    let (owner, _) = first_created(server, &auth, &pfx).await?;
    if owner.is_some_and(|o| o.create_revision != my_rev) {
        // a dropped request (client gone) gives the key up, as clientv3's Mutex does
        let abandon = Abandon::new(server, &auth, &key, my_rev);
        header = wait_deletes(server, &auth, &pfx, my_rev - 1).await?;
        abandon.disarm();
    }
    Ok(LockResponse { header: Some(header), key })
}

async fn unlock(server: &EtcdServer, request: Request<UnlockRequest>) -> Result<UnlockResponse, RecipeError> {
    let auth = server.auth_info(request.metadata(), request.extensions()).await?;
    let key = request.into_inner().key;
    if key.is_empty() {
        // the KV service's check, which etcd's in-process client passes through
        return Err(ServerError::EmptyKey.into());
    }
    let resp = server.delete_range(DeleteRangeRequest { key, ..Default::default() }, Some(&auth)).await?;
    Ok(UnlockResponse { header: resp.header })
}
