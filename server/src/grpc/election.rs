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
    put_if_created_at, recipe_error, session_lease, wait_deletes, Abandon, RecipeError, ERR_ELECTION_NOT_LEADER,
    ERR_ELECTION_NO_LEADER, ERR_MISSING_LEADER_KEY,
};
use crate::errors::ServerError;
use crate::etcd_server::EtcdServer;

pub struct ElectionService {
    pub server: Arc<EtcdServer>,
}

type ObserveStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<LeaderResponse, Status>> + Send>>;

fn leader_key(k: Option<LeaderKey>) -> Result<LeaderKey, RecipeError> {
    k.ok_or_else(|| recipe_error(ERR_MISSING_LEADER_KEY))
}

#[tonic::async_trait]
impl Election for ElectionService {
    async fn campaign(&self, request: Request<CampaignRequest>) -> Result<Response<CampaignResponse>, Status> {
        Ok(Response::new(campaign(&self.server, request).await?))
    }

    async fn proclaim(&self, request: Request<ProclaimRequest>) -> Result<Response<ProclaimResponse>, Status> {
        Ok(Response::new(proclaim(&self.server, request).await?))
    }

    async fn leader(&self, request: Request<LeaderRequest>) -> Result<Response<LeaderResponse>, Status> {
        Ok(Response::new(leader(&self.server, request).await?))
    }

    type ObserveStream = ObserveStream;

    async fn observe(&self, request: Request<LeaderRequest>) -> Result<Response<Self::ObserveStream>, Status> {
        Ok(Response::new(observe(&self.server, request)))
    }

    async fn resign(&self, request: Request<ResignRequest>) -> Result<Response<ResignResponse>, Status> {
        Ok(Response::new(resign(&self.server, request).await?))
    }
}

/// Enters the election with `<name>/<lease>` holding `value` and waits to lead.
async fn campaign(server: &Arc<EtcdServer>, request: Request<CampaignRequest>) -> Result<CampaignResponse, RecipeError> {
    let auth = server.auth_info(request.metadata(), request.extensions()).await?;
    let req = request.into_inner();
    let lease = session_lease(server, req.lease).await?;
    let key = participant_key(&req.name, lease);
    let (rev, _, existing) = create_or_get(server, &auth, &key, &req.value, lease).await?;
    let abandon = Abandon::new(server, &auth, &key, rev);
    if existing.is_some_and(|kv| kv.value != req.value) {
        // already campaigning under this lease: announce the new value
        let (ok, _) = put_if_created_at(server, &auth, &key, rev, &req.value, lease).await?;
        if !ok {
            return Err(recipe_error(ERR_ELECTION_NOT_LEADER));
        }
    }
    let header = wait_deletes(server, &auth, &prefix(&req.name), rev - 1).await?;
    abandon.disarm();
    Ok(CampaignResponse { header: Some(header), leader: Some(LeaderKey { name: req.name, key, rev, lease }) })
}

async fn proclaim(server: &EtcdServer, request: Request<ProclaimRequest>) -> Result<ProclaimResponse, RecipeError> {
    let (md, ext, req) = request.into_parts();
    let l = leader_key(req.leader)?;
    let auth = server.auth_info(&md, &ext).await?;
    let lease = session_lease(server, l.lease).await?;
    let (ok, header) = put_if_created_at(server, &auth, &l.key, l.rev, &req.value, lease).await?;
    if !ok {
        return Err(recipe_error(ERR_ELECTION_NOT_LEADER));
    }
    Ok(ProclaimResponse { header: Some(header) })
}

async fn leader(server: &EtcdServer, request: Request<LeaderRequest>) -> Result<LeaderResponse, RecipeError> {
    let auth = server.auth_info(request.metadata(), request.extensions()).await?;
    let name = request.into_inner().name;
    match first_created(server, &auth, &prefix(&name)).await? {
        (Some(kv), header) => Ok(LeaderResponse { header: Some(header), kv: Some(kv) }),
        (None, _) => Err(recipe_error(ERR_ELECTION_NO_LEADER)),
    }
}

/// Streams the leader's key-value: now (with the header of the read that found it), on every
/// new value, and on every new leader. An error ends the stream without one, as etcd's observer
/// closes its channel on any error of its client.
fn observe(server: &Arc<EtcdServer>, request: Request<LeaderRequest>) -> ObserveStream {
    let server = server.clone();
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        let gone = tx.clone();
        // the watches end with the observer, not at the next leader change
        let result = tokio::select! {
            r = follow_leader(&server, request, tx) => r,
            _ = gone.closed() => Ok(()),
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "election observe ends");
        }
    });
    Box::pin(ReceiverStream::new(rx))
}

/// Sends each leader key-value of the election to `tx` until the receiver goes away or an
/// error.
async fn follow_leader(
    server: &Arc<EtcdServer>,
    request: Request<LeaderRequest>,
    tx: tokio::sync::mpsc::Sender<Result<LeaderResponse, Status>>,
) -> Result<(), ServerError> {
    let auth = server.auth_info(request.metadata(), request.extensions()).await?;
    let pfx = prefix(&request.into_inner().name);
    loop {
        let (leader, mut header) = first_created(server, &auth, &pfx).await?;
        let Some(mut kv) = leader else {
            next_put_under(server, &pfx, header.revision + 1).await?;
            continue;
        };
        loop {
            let resp = LeaderResponse { header: Some(header), kv: Some(kv.clone()) };
            if tx.send(Ok(resp)).await.is_err() {
                return Ok(()); // the observer went away
            }
            match next_change(server, &kv.key, kv.mod_revision + 1).await? {
                Some(next) => {
                    header = server.header(next.mod_revision);
                    kv = next;
                }
                None => break, // resigned or expired: look for the next leader
            }
        }
    }
}

async fn resign(server: &EtcdServer, request: Request<ResignRequest>) -> Result<ResignResponse, RecipeError> {
    let (md, ext, req) = request.into_parts();
    let l = leader_key(req.leader)?;
    let auth = server.auth_info(&md, &ext).await?;
    // etcd starts a session here too, so lease 0 is granted one (unused)
    session_lease(server, l.lease).await?;
    let header = delete_if_created_at(server, &auth, &l.key, l.rev).await?;
    Ok(ResignResponse { header: Some(header) })
}
