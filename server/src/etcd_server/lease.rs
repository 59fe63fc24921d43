//! `EtcdServer`'s lease operations and the leader's expiry loop.
//!
//! - Grant picks an ID for ID 0 and raises a TTL below the minimum (ceil(1.5 x election
//!   timeout)) here, on the proposing side, as etcd does, so apply never reads local config.
//! - Revoke and checkpoints go through raft; keep-alive and TimeToLive are answered by the
//!   leader's (primary) lessor, which alone knows deadlines. A follower forwards them to the
//!   leader's peer service.
//! - The expiry loop runs on every member but acts only on the leader: twice a second it
//!   proposes revokes for at most half of [`LEASE_REVOKE_RATE`] expired leases (with a bounded
//!   number in flight) and the checkpoints that are due.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use etcd_lease::{LeaseError, Lessor, LessorConfig, LEASE_REVOKE_RATE, MAX_CHECKPOINT_BATCH};
use etcd_mvcc::KvStore;
use etcd_proto::etcdserverpb::{
    InternalRaftRequest, LeaseCheckpoint, LeaseCheckpointRequest, LeaseGrantRequest, LeaseGrantResponse,
    LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus, LeaseTimeToLiveRequest,
    LeaseTimeToLiveResponse, RangeRequest,
};
use etcd_raft::rafthttp::peer_api::{self, LeaseError as PeerLeaseError};
use tokio::sync::Semaphore;

use super::{unexpected, EtcdServer};
use crate::apply::ApplyResult;
use crate::config::ServerConfig;
use crate::errors::ServerError;

/// Revokes proposed at once by the expiry loop (etcd's `maxPendingRevokes`).
const MAX_PENDING_REVOKES: usize = 16;
/// How often the expiry loop looks for expired leases and due checkpoints (as etcd).
const EXPIRY_LOOP_INTERVAL: Duration = Duration::from_millis(500);
/// How often a keep-alive for a lease that expired checks whether its revoke was applied.
const EXPIRED_POLL: Duration = Duration::from_millis(20);

/// Opens the lessor on the backend's lease table and attaches the keys the key table holds.
pub(super) fn open_lessor(kv: &KvStore, cfg: &ServerConfig) -> Result<Arc<Lessor>, ServerError> {
    let lessor = Lessor::open(
        &kv.backend().database(),
        LessorConfig { checkpoint_enabled: cfg.enable_lease_checkpoint, checkpoint_interval: cfg.lease_checkpoint_interval },
    )?;
    attach_lease_keys(kv, &lessor)?;
    Ok(Arc::new(lessor))
}

/// Attaches every key the store holds with a lease to its lease (after loading the lessor).
pub(crate) fn attach_lease_keys(kv: &KvStore, lessor: &Lessor) -> Result<(), ServerError> {
    if !lessor.is_empty() {
        let all = RangeRequest { key: vec![0], range_end: vec![0], ..Default::default() };
        let kvs = kv.range(&all)?.kvs;
        lessor.attach_existing(kvs.into_iter().filter(|kv| kv.lease != 0).map(|kv| (kv.key, kv.lease)));
    }
    Ok(())
}

impl EtcdServer {
    /// ceil(1.5 x election timeout) in seconds, computed as etcd does (whole ticks).
    pub fn min_lease_ttl(&self) -> i64 {
        let ticks = (3 * self.cfg.election_ticks as u32) / 2;
        let d = self.cfg.heartbeat * ticks;
        d.as_secs() as i64 + i64::from(d.subsec_nanos() > 0)
    }

    pub async fn lease_grant(&self, mut req: LeaseGrantRequest) -> Result<LeaseGrantResponse, ServerError> {
        // no ID given: choose one (positive), as etcd does from its request ID generator
        while req.id == 0 {
            req.id = (self.ids.next() & (i64::MAX as u64)) as i64;
        }
        req.ttl = req.ttl.max(self.min_lease_ttl());
        // etcd's lease overhead: a grant counts against the quota too
        self.check_quota(64).await?;
        let req = InternalRaftRequest { lease_grant: Some(req), ..Default::default() };
        let applied = self.propose(req).await?;
        match applied.result? {
            ApplyResult::LeaseGrant(mut r) => {
                r.header = Some(self.header(applied.revision));
                Ok(r)
            }
            other => Err(unexpected(other)),
        }
    }

    /// `auth`: the client's identity (None: this member's own expiry revoke, run as root).
    pub async fn lease_revoke(&self, req: LeaseRevokeRequest, auth: Option<&etcd_auth::AuthInfo>) -> Result<LeaseRevokeResponse, ServerError> {
        let req = self.sent_by(InternalRaftRequest { lease_revoke: Some(req), ..Default::default() }, auth);
        let applied = self.propose(req).await?;
        match applied.result? {
            ApplyResult::LeaseRevoke(mut r) => {
                r.header = Some(self.header(applied.revision));
                Ok(r)
            }
            other => Err(unexpected(other)),
        }
    }

    /// A keep-alive: the lease's full TTL, or LeaseNotFound (also once an expired lease's
    /// revoke has been applied). A follower forwards it to the leader, through elections and
    /// leader failures, until the request timeout (as etcd's LeaseRenew).
    pub async fn lease_renew(&self, id: i64) -> Result<i64, ServerError> {
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        if self.is_leader() {
            self.wait_applied().await?;
        }
        loop {
            if !self.is_leader() {
                let forwarded = self.forward_to_leader(deadline, |mut conn, me| async move {
                    let answer = peer_api::call::renew_lease(&mut conn, &me, id).await;
                    (conn, answer.map_err(forwarded_lease_error))
                });
                match forwarded.await {
                    Some(answer) => return answer,
                    None => continue, // this member leads now
                }
            }
            match self.lessor.renew(id, Instant::now()) {
                Ok((ttl, clear_checkpoint)) => {
                    if clear_checkpoint {
                        let cp = LeaseCheckpointRequest { checkpoints: vec![LeaseCheckpoint { id, remaining_ttl: 0 }] };
                        if let Err(e) = self.propose(InternalRaftRequest { lease_checkpoint: Some(cp), ..Default::default() }).await {
                            tracing::warn!(lease_id = %format!("{id:016x}"), error = %e, "failed to clear a lease checkpoint");
                        }
                    }
                    return Ok(ttl);
                }
                // expired: wait until its revoke is applied (then NotFound) or leadership moves;
                // not primary yet: the new leader has not applied its first entry
                Err(LeaseError::Expired) | Err(LeaseError::NotPrimary) => {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(ServerError::Timeout);
                    }
                    tokio::time::sleep(EXPIRED_POLL).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Answered by the leader's lessor; a follower forwards it as it does keep-alives.
    pub async fn lease_time_to_live(&self, req: LeaseTimeToLiveRequest) -> Result<LeaseTimeToLiveResponse, ServerError> {
        if !self.is_leader() {
            let deadline = tokio::time::Instant::now() + self.request_timeout;
            let (id, keys) = (req.id, req.keys);
            let forwarded = self.forward_to_leader(deadline, |mut conn, me| async move {
                let answer = peer_api::call::lease_time_to_live(&mut conn, &me, id, keys).await;
                (conn, answer.map_err(forwarded_lease_error))
            });
            if let Some(answer) = forwarded.await {
                return answer;
            }
        }
        self.wait_applied().await?;
        let st = self.lessor.time_to_live(req.id, req.keys, Instant::now()).ok_or(ServerError::LeaseNotFound)?;
        Ok(LeaseTimeToLiveResponse {
            header: Some(self.header(self.kv.current_revision())),
            id: req.id,
            ttl: st.remaining,
            granted_ttl: st.granted_ttl,
            keys: st.keys,
        })
    }

    pub fn lease_leases(&self) -> LeaseLeasesResponse {
        LeaseLeasesResponse {
            header: Some(self.header(self.kv.current_revision())),
            leases: self.lessor.leases(Instant::now()).into_iter().map(|id| LeaseStatus { id }).collect(),
        }
    }

    /// Waits until everything committed so far is applied (etcd's waitAppliedIndex).
    async fn wait_applied(&self) -> Result<(), ServerError> {
        self.wait_applied_index(self.raft.with_status(|st| st.commit_index)).await
    }
}

/// The leader's expiry loop: revokes expired leases and records due checkpoints through raft.
/// Ends when the server is dropped or stopped.
pub(super) async fn run_expiry_loop(server: Weak<EtcdServer>) {
    let pending = Arc::new(Semaphore::new(MAX_PENDING_REVOKES));
    let mut tick = tokio::time::interval(EXPIRY_LOOP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut leader_since: Option<Instant> = None;
    loop {
        tick.tick().await;
        let Some(s) = server.upgrade() else { return };
        if s.applier.lock().is_none() {
            return; // stopped
        }
        if !s.is_leader() {
            leader_since = None;
            if s.lessor.is_primary() {
                s.lessor.demote();
            }
            continue;
        }
        let since = *leader_since.get_or_insert_with(Instant::now);
        if !s.lessor.is_primary() {
            // The applier promotes on the leader's first entry; should that have been missed,
            // take over once the entry must long have been applied.
            if since.elapsed() > 2 * s.election_timeout() {
                s.lessor.promote(s.election_timeout(), Instant::now());
            }
            continue;
        }
        for id in s.lessor.find_expired(LEASE_REVOKE_RATE / 2, Instant::now()) {
            let Ok(permit) = pending.clone().acquire_owned().await else { return };
            let srv = s.clone();
            tokio::spawn(async move {
                match srv.lease_revoke(LeaseRevokeRequest { id }, None).await {
                    Ok(_) => crate::metrics::LEASE_EXPIRED.inc(),
                    Err(ServerError::LeaseNotFound) => {}
                    Err(e) => tracing::warn!(lease_id = %format!("{id:016x}"), error = %e, "failed to revoke an expired lease"),
                }
                drop(permit);
            });
        }
        // checkpoints: up to half the checkpoint rate (1000/s) per round, in batches
        for _ in 0..(LEASE_REVOKE_RATE / 2) {
            let cps = s.lessor.due_checkpoints(MAX_CHECKPOINT_BATCH, Instant::now());
            if cps.is_empty() {
                break;
            }
            let full = cps.len() == MAX_CHECKPOINT_BATCH;
            let checkpoints = cps.into_iter().map(|(id, remaining_ttl)| LeaseCheckpoint { id, remaining_ttl }).collect();
            let req = InternalRaftRequest {
                lease_checkpoint: Some(LeaseCheckpointRequest { checkpoints }),
                ..Default::default()
            };
            if let Err(e) = s.propose(req).await {
                tracing::warn!(error = %e, "failed to record lease checkpoints");
            }
            if !full {
                break;
            }
        }
    }
}

/// What the leader's answer to a forwarded lease request means here (etcd's leasehttp codes).
fn forwarded_lease_error(e: PeerLeaseError) -> ServerError {
    match e {
        PeerLeaseError::NotFound => ServerError::LeaseNotFound,
        PeerLeaseError::Timeout => ServerError::Timeout,
        PeerLeaseError::Other(text) => ServerError::from_peer_text(&text),
    }
}
