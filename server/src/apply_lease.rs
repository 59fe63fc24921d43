//! The applier's lease requests: grant, revoke (all attached keys deleted at one revision) and
//! checkpoint, written in the batch's transaction like every other change.
//!
//! Apply-side rules: the lease ID and the TTL come from the request (the proposer picked the
//! ID and raised the TTL to the minimum); nothing here reads the clock except the lessor's
//! local deadline bookkeeping on the leader, which never changes applied state.

use std::time::Instant;

use etcd_mvcc::ApplyTxn;
use etcd_proto::etcdserverpb::{
    request_op, DeleteRangeRequest, LeaseCheckpointRequest, LeaseGrantRequest, LeaseGrantResponse,
    LeaseRevokeResponse, RequestOp, TxnRequest,
};

use crate::apply::{ApplyResult, Applier};
use crate::errors::ServerError;

impl Applier {
    pub(crate) fn apply_lease_grant(&self, txn: &mut ApplyTxn<'_>, r: &LeaseGrantRequest) -> Result<ApplyResult, ServerError> {
        let ttl = self.lessor.grant(txn.write_txn(), r.id, r.ttl, Instant::now())?;
        Ok(ApplyResult::LeaseGrant(LeaseGrantResponse { header: None, id: r.id, ttl, error: String::new() }))
    }

    /// Deletes every key attached to the lease (sorted, so every member writes the same rows)
    /// in one Txn, hence one revision, then forgets the lease.
    pub(crate) fn apply_lease_revoke(&self, txn: &mut ApplyTxn<'_>, id: i64) -> Result<ApplyResult, ServerError> {
        let keys = self.lessor.keys(id)?;
        if !keys.is_empty() {
            let deletes = TxnRequest {
                success: keys
                    .into_iter()
                    .map(|key| RequestOp {
                        request: Some(request_op::Request::RequestDeleteRange(DeleteRangeRequest {
                            key,
                            ..Default::default()
                        })),
                    })
                    .collect(),
                ..Default::default()
            };
            txn.txn(&deletes, &|_| false)?;
        }
        self.lessor.remove(txn.write_txn(), id)?;
        Ok(ApplyResult::LeaseRevoke(LeaseRevokeResponse::default()))
    }

    pub(crate) fn apply_lease_checkpoint(
        &self,
        txn: &mut ApplyTxn<'_>,
        r: &LeaseCheckpointRequest,
    ) -> Result<ApplyResult, ServerError> {
        let now = Instant::now();
        for c in &r.checkpoints {
            self.lessor.checkpoint(txn.write_txn(), c.id, c.remaining_ttl, now)?;
        }
        Ok(ApplyResult::Empty)
    }

    /// etcd promotes its lessor when the leader has applied the first (empty) entry of its
    /// term: every lease's deadline is then pushed by the election timeout before any expires.
    pub(crate) fn promote_lessor_if_leader(&self, entry_term: u64) {
        let st = self.raft.status();
        if st.leader_id != 0 && st.leader_id == self.members.local_id() && st.term == entry_term {
            self.lessor.promote(self.lease_promote_extend, Instant::now());
        }
    }
}
