//! v3election's Election service: leader election per name, with the leader's value in its key.

use std::pin::Pin;
use std::sync::Arc;

use etcd_proto::v3electionpb::election_server::Election;
use etcd_proto::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest, ProclaimResponse,
    ResignRequest, ResignResponse,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::recipes::{
    create_or_get, delete_if_created_at, first_created, next_change, next_put_under, participant_key, prefix,
    put_if_created_at, recipe_error, wait_deletes, Abandon, ERR_ELECTION_NOT_LEADER, ERR_ELECTION_NO_LEADER,
    ERR_MISSING_LEADER_KEY,
};
use crate::etcd_server::EtcdServer;

pub struct ElectionService {
    pub server: Arc<EtcdServer>,
}

type ObserveStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<LeaderResponse, Status>> + Send>>;

fn leader_key(k: Option<LeaderKey>) -> Result<LeaderKey, Status> {
    k.ok_or_else(|| recipe_error(ERR_MISSING_LEADER_KEY))
}

#[tonic::async_trait]
impl Election for ElectionService {
    /// Enters the election with `<name>/<lease>` holding `value` and waits to lead.
    async fn campaign(&self, request: Request<CampaignRequest>) -> Result<Response<CampaignResponse>, Status> {
        let auth = self.server.auth_info(request.metadata(), request.extensions()).await?;
        let req = request.into_inner();
        let server = &self.server;
        let key = participant_key(&req.name, req.lease);
        let (rev, _, existing) = create_or_get(server, &auth, &key, &req.value, req.lease).await?;
        let abandon = Abandon::new(server, &auth, &key, rev);
        if existing.is_some_and(|kv| kv.value != req.value) {
            // already campaigning under this lease: announce the new value
            let (ok, _) = put_if_created_at(server, &auth, &key, rev, &req.value, req.lease).await?;
            if !ok {
                return Err(recipe_error(ERR_ELECTION_NOT_LEADER));
            }
        }
        let header = wait_deletes(server, &auth, &prefix(&req.name), rev - 1).await?;
        abandon.disarm();
        Ok(Response::new(CampaignResponse {
            header: Some(header),
            leader: Some(LeaderKey { name: req.name, key, rev, lease: req.lease }),
        }))
    }

    async fn proclaim(&self, request: Request<ProclaimRequest>) -> Result<Response<ProclaimResponse>, Status> {
        let auth = self.server.auth_info(request.metadata(), request.extensions()).await?;
        let req = request.into_inner();
        let l = leader_key(req.leader)?;
        let (ok, header) = put_if_created_at(&self.server, &auth, &l.key, l.rev, &req.value, l.lease).await?;
        if !ok {
            return Err(recipe_error(ERR_ELECTION_NOT_LEADER));
        }
        Ok(Response::new(ProclaimResponse { header: Some(header) }))
    }

    async fn leader(&self, request: Request<LeaderRequest>) -> Result<Response<LeaderResponse>, Status> {
        let auth = self.server.auth_info(request.metadata(), request.extensions()).await?;
        let name = request.into_inner().name;
        match first_created(&self.server, &auth, &prefix(&name)).await? {
            (Some(kv), header) => Ok(Response::new(LeaderResponse { header: Some(header), kv: Some(kv) })),
            (None, _) => Err(recipe_error(ERR_ELECTION_NO_LEADER)),
        }
    }

    type ObserveStream = ObserveStream;

    /// Streams the leader's key-value: now, on every new value, and on every new leader.
    async fn observe(&self, request: Request<LeaderRequest>) -> Result<Response<Self::ObserveStream>, Status> {
        let auth = self.server.auth_info(request.metadata(), request.extensions()).await?;
        let pfx = prefix(&request.into_inner().name);
        let server = self.server.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let result: Result<(), crate::errors::ServerError> = async {
                loop {
                    let (leader, header) = first_created(&server, &auth, &pfx).await?;
                    let Some(mut kv) = leader else {
                        next_put_under(&server, &pfx, header.revision + 1).await?;
                        continue;
                    };
                    loop {
                        let resp = LeaderResponse { header: Some(server.header(kv.mod_revision)), kv: Some(kv.clone()) };
                        if tx.send(Ok(resp)).await.is_err() {
                            return Ok(()); // the observer went away
                        }
                        match next_change(&server, &kv.key, kv.mod_revision + 1).await? {
                            Some(next) => kv = next,
                            None => break, // resigned or expired: look for the next leader
                        }
                    }
                }
            }
            .await;
            if let Err(e) = result {
                let _ = tx.send(Err(e.into())).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn resign(&self, request: Request<ResignRequest>) -> Result<Response<ResignResponse>, Status> {
        let auth = self.server.auth_info(request.metadata(), request.extensions()).await?;
        let l = leader_key(request.into_inner().leader)?;
        let header = delete_if_created_at(&self.server, &auth, &l.key, l.rev).await?;
        Ok(Response::new(ResignResponse { header: Some(header) }))
    }
}
