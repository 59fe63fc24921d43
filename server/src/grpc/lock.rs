//! v3lock's Lock service: a distributed mutex per name, held through a lease.

use std::sync::Arc;

use etcd_proto::etcdserverpb::DeleteRangeRequest;
use etcd_proto::v3lockpb::lock_server::Lock;
use etcd_proto::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};
use tonic::{Request, Response, Status};

use super::recipes::{create_or_get, first_created, participant_key, prefix, wait_deletes, Abandon};
use crate::etcd_server::EtcdServer;

pub struct LockService {
    pub server: Arc<EtcdServer>,
}

#[tonic::async_trait]
impl Lock for LockService {
    /// Waits until the caller's key `<name>/<lease>` is the oldest under `<name>/`.
    async fn lock(&self, request: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        let auth = self.server.auth_info(request.metadata(), request.extensions()).await?;
        let req = request.into_inner();
        let server = &self.server;
        let pfx = prefix(&req.name);
        let key = participant_key(&req.name, req.lease);
        let (my_rev, mut header, _) = create_or_get(server, &auth, &key, b"", req.lease).await?;
        let (owner, _) = first_created(server, &auth, &pfx).await?;
        if owner.is_some_and(|o| o.create_revision != my_rev) {
            // a dropped request (client gone) gives the key up, as clientv3's Mutex does
            let abandon = Abandon::new(server, &auth, &key, my_rev);
            header = wait_deletes(server, &auth, &pfx, my_rev - 1).await?;
            abandon.disarm();
        }
        Ok(Response::new(LockResponse { header: Some(header), key }))
    }

    async fn unlock(&self, request: Request<UnlockRequest>) -> Result<Response<UnlockResponse>, Status> {
        let auth = self.server.auth_info(request.metadata(), request.extensions()).await?;
        let key = request.into_inner().key;
        let resp = self.server.delete_range(DeleteRangeRequest { key, ..Default::default() }, Some(&auth)).await?;
        Ok(Response::new(UnlockResponse { header: resp.header }))
    }
}
