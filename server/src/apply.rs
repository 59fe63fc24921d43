//! The FIFO apply scheduler: applies committed raft entries in log order on one thread.
//!
//! What apply may depend on: the entry bytes and the state built by earlier entries. Never the
//! wall clock, randomness or local flags — every member must reach the same state from the
//! same log. (Timing only decides *when* a batch is made durable, never *what* it contains.)
//!
//! One backend write transaction per batch of entries carries the MVCC changes, membership
//! changes and the consistent index together; waiters are answered only after that commit, so
//! an acknowledged write is visible to every later read. Commits are made durable (fsync) at
//! most every `--backend-batch-interval` or `--backend-batch-limit` operations: until then the
//! WAL holds the entries and a restart re-applies everything after the stored consistent index.

use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_lease::Lessor;
use etcd_mvcc::{ApplyTxn, KvStore};
use etcd_proto::etcdserverpb::{
    CompactionResponse, DeleteRangeResponse, InternalRaftRequest, LeaseGrantResponse, LeaseRevokeResponse,
    PutResponse, RangeResponse, TxnResponse,
};
use etcd_proto::membershippb::Member;
use etcd_raft::{ApplyBatch, RaftNode};
use prost::Message as _;
use raft::eraftpb::{ConfChangeType, Entry, EntryType};
use tokio::sync::watch;

use crate::errors::ServerError;
use crate::membership::Membership;
use crate::wait::WaitRegistry;

/// What applying one request produced.
#[derive(Debug)]
pub enum ApplyResult {
    Range(RangeResponse),
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    Compaction(CompactionResponse),
    LeaseGrant(LeaseGrantResponse),
    LeaseRevoke(LeaseRevokeResponse),
    Empty,
}

/// A waiter's answer: the result and the store revision right after the request applied.
#[derive(Debug)]
pub struct Applied {
    pub result: Result<ApplyResult, ServerError>,
    pub revision: i64,
}

pub type ApplyWait = WaitRegistry<Applied>;

pub struct Applier {
    pub kv: Arc<KvStore>,
    pub raft: RaftNode,
    pub members: Arc<Membership>,
    pub lessor: Arc<Lessor>,
    /// How far a new leader pushes every lease's deadline (the election timeout). Only the
    /// leader's local expiry timing uses it, never applied state.
    pub lease_promote_extend: Duration,
    pub wait: Arc<ApplyWait>,
    pub applied_tx: watch::Sender<u64>,
    pub runtime: tokio::runtime::Handle,
    pub batch_interval: Duration,
    pub batch_limit: u64,
    pub snapshot_count: u64,
    pub last_snapshot_index: u64,
}

/// Per-batch bookkeeping that is not part of the replicated state.
struct BatchOutcome {
    answers: Vec<(u64, Applied)>,
    ops: u64,
    last: Option<(u64, u64)>,
}

impl Applier {
    /// Runs until the raft node closes the apply channel.
    pub fn run(mut self, mut rx: tokio::sync::mpsc::UnboundedReceiver<ApplyBatch>) {
        let mut last_durable = Instant::now();
        let mut undurable_ops: u64 = 0;
        loop {
            let first = self.runtime.block_on(async {
                tokio::time::timeout(self.batch_interval, rx.recv()).await
            });
            let mut batches = match first {
                Ok(Some(b)) => vec![b],
                Ok(None) => break,
                Err(_) => {
                    // Idle: make what was applied durable so the WAL tail to replay stays short.
                    if undurable_ops > 0 {
                        if let Err(e) = self.kv.sync() {
                            fatal(&format!("backend sync failed: {e}"));
                        }
                        undurable_ops = 0;
                        last_durable = Instant::now();
                    }
                    continue;
                }
            };
            // Merge everything already queued into one backend transaction.
            while batches.len() < 64 {
                match rx.try_recv() {
                    Ok(b) => batches.push(b),
                    Err(_) => break,
                }
            }
            let entries: Vec<Entry> = batches.into_iter().flat_map(|b| b.entries).collect();
            if entries.is_empty() {
                continue;
            }
            let durable_due = last_durable.elapsed() >= self.batch_interval;
            let outcome = match self.apply_entries(&entries, durable_due || undurable_ops >= self.batch_limit) {
                Ok(o) => o,
                Err(e) => fatal(&format!("applying entries failed: {e}")),
            };
            if durable_due || undurable_ops + outcome.ops >= self.batch_limit {
                undurable_ops = 0;
                last_durable = Instant::now();
            } else {
                undurable_ops += outcome.ops.max(1);
            }
            if let Some((index, _term)) = outcome.last {
                self.applied_tx.send_replace(index);
                self.maybe_snapshot(index);
            }
            for (id, applied) in outcome.answers {
                self.wait.trigger(id, applied);
            }
        }
        if let Err(e) = self.kv.sync() {
            tracing::error!(error = %e, "final backend sync failed");
        }
        tracing::info!("apply scheduler stopped");
    }

    fn maybe_snapshot(&mut self, applied: u64) {
        if applied.saturating_sub(self.last_snapshot_index) < self.snapshot_count {
            return;
        }
        // The raft log may only be compacted up to state that is durable in the backend.
        if let Err(e) = self.kv.sync() {
            fatal(&format!("backend sync before snapshot failed: {e}"));
        }
        tracing::info!(applied_index = applied, "triggering snapshot");
        self.raft.compact(applied);
        self.last_snapshot_index = applied;
    }

    fn apply_entries(&self, entries: &[Entry], durable: bool) -> Result<BatchOutcome, ServerError> {
        let (applied_index, _) = self.kv.consistent_index();
        let mut txn = self.kv.begin_apply()?;
        let mut out = BatchOutcome { answers: Vec::new(), ops: 0, last: None };
        for e in entries {
            if e.index <= applied_index {
                continue;
            }
            out.last = Some((e.index, e.term));
            match e.get_entry_type() {
                EntryType::EntryNormal => {
                    if e.data.is_empty() {
                        // a new leader's empty entry: once applied, its lessor takes over expiry
                        self.promote_lessor_if_leader(e.term);
                        continue;
                    }
                    out.ops += 1;
                    match InternalRaftRequest::decode(&e.data[..]) {
                        Ok(req) => {
                            let id = req.header.as_ref().map(|h| h.id).filter(|id| *id != 0).unwrap_or(req.id);
                            let result = self.apply_request(&mut txn, req);
                            let revision = txn.current_revision();
                            out.answers.push((id, Applied { result, revision }));
                        }
                        Err(err) => {
                            // Every member sees the same bytes, so every member skips it alike.
                            tracing::error!(index = e.index, %err, "skipping undecodable raft entry");
                        }
                    }
                }
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    let cc = etcd_raft::recovery::conf_change_of(e)
                        .ok_or_else(|| ServerError::Internal(format!("bad conf change at index {}", e.index)))?;
                    for c in cc.get_changes() {
                        self.apply_conf_change(&txn, c.get_change_type(), c.node_id, &cc.context)?;
                    }
                    self.runtime.block_on(self.raft.apply_conf_change(cc))?;
                }
            }
        }
        if let Some((index, term)) = out.last {
            txn.set_consistent_index(index, term);
        }
        // Watch notification of the returned events comes with the watch hub.
        let _events = txn.commit(durable)?;
        Ok(out)
    }

    fn apply_conf_change(
        &self,
        txn: &ApplyTxn<'_>,
        kind: ConfChangeType,
        node_id: u64,
        context: &[u8],
    ) -> Result<(), ServerError> {
        match kind {
            ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                let mut m = Member::decode(context)
                    .map_err(|e| ServerError::Internal(format!("bad member record in conf change: {e}")))?;
                m.id = node_id;
                if let Some(r) = m.raft_attrs.as_mut() {
                    r.is_learner = kind == ConfChangeType::AddLearnerNode;
                }
                // A promotion re-adds an existing learner as a voter: keep its published attributes.
                if let Some(existing) = self.members.member(node_id) {
                    if m.member_attrs.as_ref().is_none_or(|a| a.client_urls.is_empty()) {
                        m.member_attrs = existing.member_attrs;
                    }
                }
                self.members.apply_add(txn.write_txn(), m)
            }
            ConfChangeType::RemoveNode => self.members.apply_remove(txn.write_txn(), node_id),
        }
    }

    /// Applies one request; the lessor follows the key changes it made (attach / detach).
    fn apply_request(&self, txn: &mut ApplyTxn<'_>, req: InternalRaftRequest) -> Result<ApplyResult, ServerError> {
        let before = txn.pending_events().len();
        let result = self.apply_request_ops(txn, req);
        self.lessor.apply_events(&txn.pending_events()[before..]);
        result
    }

    fn apply_request_ops(&self, txn: &mut ApplyTxn<'_>, req: InternalRaftRequest) -> Result<ApplyResult, ServerError> {
        let lessor = self.lessor.clone();
        let lease_exists = move |id: i64| lessor.exists(id);
        if let Some(r) = req.put {
            return Ok(ApplyResult::Put(txn.put(&r, &lease_exists)?));
        }
        if let Some(r) = req.delete_range {
            return Ok(ApplyResult::DeleteRange(txn.delete_range(&r)?));
        }
        if let Some(r) = req.txn {
            return Ok(ApplyResult::Txn(txn.txn(&r, &lease_exists)?));
        }
        if let Some(r) = req.range {
            return Ok(ApplyResult::Range(txn.range(&r)?));
        }
        if let Some(r) = req.compaction {
            txn.compact(r.revision)?;
            return Ok(ApplyResult::Compaction(CompactionResponse::default()));
        }
        if let Some(r) = req.lease_grant {
            return self.apply_lease_grant(txn, &r);
        }
        if let Some(r) = req.lease_revoke {
            return self.apply_lease_revoke(txn, r.id);
        }
        if let Some(r) = req.lease_checkpoint {
            return self.apply_lease_checkpoint(txn, &r);
        }
        if let Some(r) = req.cluster_member_attr_set {
            if let Some(attrs) = r.member_attributes {
                self.members.apply_attributes(txn.write_txn(), r.member_id, attrs)?;
                if r.member_id == self.members.local_id() {
                    tracing::info!(member_id = %format!("{:x}", r.member_id), "published local member to cluster through raft");
                }
            }
            return Ok(ApplyResult::Empty);
        }
        if let Some(r) = req.cluster_version_set {
            let first = self.members.cluster_version().is_none();
            self.members.apply_version(txn.write_txn(), &r.ver)?;
            if first {
                let major_minor: String = r.ver.split('.').take(2).collect::<Vec<_>>().join(".");
                tracing::info!(cluster_version = %r.ver, "enabled capabilities for version {major_minor}");
            }
            return Ok(ApplyResult::Empty);
        }
        Err(ServerError::Unimplemented("etcd-rs: this raft request type is not implemented yet".into()))
    }
}

/// A backend or raft failure in apply leaves the member's state unknown: stop, as etcd panics,
/// rather than answer from a state that may differ from the other members'.
fn fatal(msg: &str) -> ! {
    tracing::error!("{msg}");
    eprintln!("etcd-rs: fatal: {msg}");
    std::process::exit(2)
}
