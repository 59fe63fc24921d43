//! Lease service: check the request, call `EtcdServer`, answer. Unknown leases answer as etcd
//! does: TimeToLive with TTL -1, KeepAlive with TTL 0 (neither is an error).

use std::pin::Pin;
use std::sync::Arc;

use etcd_proto::etcdserverpb::lease_server::Lease;
use etcd_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseLeasesRequest,
    LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::errors::ServerError;
use crate::etcd_server::EtcdServer;

pub struct LeaseService {
    pub server: Arc<EtcdServer>,
}

pub(super) type KeepAliveStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send>>;

/// Responses buffered per keep-alive stream before the reader waits for the client.
const KEEP_ALIVE_BUFFER: usize = 16;

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(&self, request: Request<LeaseGrantRequest>) -> Result<Response<LeaseGrantResponse>, Status> {
        self.server.refuse_if_learner()?;
        Ok(Response::new(self.server.lease_grant(request.into_inner()).await?))
    }

    async fn lease_revoke(&self, request: Request<LeaseRevokeRequest>) -> Result<Response<LeaseRevokeResponse>, Status> {
        self.server.refuse_if_learner()?;
        let auth = self.server.auth_info(request.metadata(), request.extensions()).await?;
        Ok(Response::new(self.server.lease_revoke(request.into_inner(), Some(&auth)).await?))
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        Ok(Response::new(self.keep_alive(request.into_inner())?))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        self.server.refuse_if_learner()?;
        let auth = self.server.auth_info(request.metadata(), request.extensions()).await?;
        let req = request.into_inner();
        let id = req.id;
        match self.server.lease_time_to_live(req).await {
            Ok(r) => {
                // the keys are shown only to a user who may read them all
                self.server.check_keys_readable(&auth, &r.keys)?;
                Ok(Response::new(r))
            }
            Err(ServerError::LeaseNotFound) => Ok(Response::new(LeaseTimeToLiveResponse {
                header: Some(self.server.header(self.server.kv_revision())),
                id,
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            })),
            Err(e) => Err(e.into()),
        }
    }

    async fn lease_leases(&self, _request: Request<LeaseLeasesRequest>) -> Result<Response<LeaseLeasesResponse>, Status> {
        self.server.refuse_if_learner()?;
        Ok(Response::new(self.server.lease_leases()))
    }
}

impl LeaseService {
    /// Answers each keep-alive of `inbound` (a gRPC stream, or the gateway's JSON messages) in
    /// order; the answers end when `inbound` does.
    pub(super) fn keep_alive(
        &self,
        mut inbound: impl tokio_stream::Stream<Item = Result<LeaseKeepAliveRequest, Status>> + Send + Unpin + 'static,
    ) -> Result<KeepAliveStream, Status> {
        self.server.refuse_if_learner()?;
        let (tx, rx) = tokio::sync::mpsc::channel(KEEP_ALIVE_BUFFER);
        let server = self.server.clone();
        tokio::spawn(async move {
            while let Some(next) = inbound.next().await {
                let req = match next {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::debug!(error = %e, "lease keep-alive stream ended");
                        return;
                    }
                };
                // The header is taken before the renewal, so its revision is never newer than
                // a revoke that the renewal would have raced with (as etcd).
                let header = server.header(server.kv_revision());
                let item = match server.lease_renew(req.id).await {
                    Ok(ttl) => Ok(LeaseKeepAliveResponse { header: Some(header), id: req.id, ttl }),
                    Err(ServerError::LeaseNotFound) => Ok(LeaseKeepAliveResponse { header: Some(header), id: req.id, ttl: 0 }),
                    Err(e) => Err(Status::from(e)),
                };
                let failed = item.is_err();
                if tx.send(item).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Box::pin(ReceiverStream::new(rx)))
    }
}
