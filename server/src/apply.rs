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
//! After the commit and the applied index are published, the watch hub gets the batch's events
//! (it never makes the applier wait: slow watchers are moved aside).
//! A compaction's rows are deleted in bounded steps between batches (and at once when idle), so
//! a large compaction never holds up writes; a physical compaction is answered once they are gone.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_lease::Lessor;
use etcd_mvcc::{ApplyTxn, KvStore, WatchHub};
use etcd_proto::etcdserverpb::{
    alarm_request::AlarmAction, AlarmRequest, AlarmResponse, AlarmType, CompactionResponse, DeleteRangeResponse, InternalRaftRequest, LeaseGrantResponse, LeaseRevokeResponse,
    PutResponse, RangeResponse, TxnResponse,
};
use etcd_proto::etcdserverpb::Request;
use etcd_proto::membershippb::{Attributes, DowngradeInfoSetRequest, Member};
use etcd_raft::{ApplyBatch, HttpTransport, RaftNode};
use parking_lot::Mutex;
use raft::eraftpb::{ConfState, Entry, EntryType, Message, Snapshot};
use tokio::sync::watch;

use crate::entry_format::{self, MemberChange, NormalEntry, V2Write};
use crate::errors::ServerError;
use crate::membership::Membership;
use crate::wait::WaitRegistry;

/// Key-table rows one compaction step scans: a step is one short write transaction between
/// apply batches (etcd deletes 1,000 per batch too).
const COMPACTION_STEP_ROWS: usize = 1000;

/// What applying one request produced.
#[derive(Debug)]
pub enum ApplyResult {
    Range(RangeResponse),
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    Compaction(CompactionResponse),
    /// A membership change: the members after it.
    Members(Vec<Member>),
    LeaseGrant(LeaseGrantResponse),
    Alarm(AlarmResponse),
    LeaseRevoke(LeaseRevokeResponse),
    Auth(crate::apply_auth::AuthResult),
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
    pub transport: Arc<HttpTransport>,
    /// `--max-learners` (etcd validates it in apply too; all members run with the same value).
    pub max_learners: usize,
    /// Set when this member's removal is applied: it must stop serving.
    pub removed_tx: watch::Sender<bool>,
    pub lessor: Arc<Lessor>,
    pub alarms: Arc<crate::alarms::Alarms>,
    pub auth: Arc<etcd_auth::AuthStore>,
    /// How far a new leader pushes every lease's deadline (the election timeout). Only the
    /// leader's local expiry timing uses it, never applied state.
    pub lease_promote_extend: Duration,
    pub wait: Arc<ApplyWait>,
    pub watch_hub: Arc<WatchHub>,
    pub applied_tx: watch::Sender<u64>,
    pub runtime: tokio::runtime::Handle,
    pub batch_interval: Duration,
    pub batch_limit: u64,
    pub snapshot_count: u64,
    pub last_snapshot_index: u64,
    /// This binary's etcd server version: read only to stop (as etcd's mustDetectDowngrade)
    /// when the cluster moves to a version it cannot serve, never to decide what to apply.
    pub server_version: String,
    /// `member/snap`: where received snapshots wait to be installed.
    pub snap_dir: PathBuf,
    /// raft's MsgSnapshot for members behind the log, from the transport.
    pub snapshot_requests: Receiver<Message>,
    /// Members a snapshot is being streamed to.
    pub snapshots_sending: Arc<Mutex<HashSet<u64>>>,
    /// The raft configuration as of the last applied entry (what a snapshot made here records).
    pub conf_state: ConfState,
}

/// Per-batch bookkeeping that is not part of the replicated state.
struct BatchOutcome {
    answers: Vec<(u64, Applied)>,
    /// The batch's events in revision order, for the watch hub.
    events: Vec<etcd_proto::mvccpb::Event>,
    /// False when some put's event lacks prev_kv (see `ApplyTxn::read_prev_kv`).
    prev_kv_complete: bool,
    ops: u64,
    last: Option<(u64, u64)>,
    /// Answers to physical compactions: (revision, waiter, answer).
    after_compaction: Vec<(i64, u64, Applied)>,
}

/// Commits what was applied durably (fsync) and restarts the batch interval and limit count.
fn sync_backend(kv: &KvStore, undurable_ops: &mut u64, last_durable: &mut Instant) {
    if let Err(e) = kv.sync() {
        fatal(&format!("backend sync failed: {e}"));
    }
    *undurable_ops = 0;
    *last_durable = Instant::now();
}

impl Applier {
    /// Runs until the raft node closes the apply channel.
    pub fn run(mut self, mut rx: tokio::sync::mpsc::UnboundedReceiver<ApplyBatch>) {
        let mut last_durable = Instant::now();
        let mut undurable_ops: u64 = 0;
        let mut after_compaction: Vec<(i64, u64, Applied)> = Vec::new();
        loop {
            // a compaction's rows are deleted in steps between batches, at once when idle
            let wait = if self.kv.compaction_pending() { Duration::ZERO } else { self.batch_interval };
            let first = self.runtime.block_on(async { tokio::time::timeout(wait, rx.recv()).await });
            self.compaction_step(&mut after_compaction);
            self.serve_snapshot_requests();
            let mut batches = match first {
                Ok(Some(b)) => vec![b],
                Ok(None) => break,
                Err(_) if self.kv.compaction_pending() => continue,
                Err(_) => {
                    // Idle: make what was applied durable so the WAL tail to replay stays short.
                    if undurable_ops > 0 {
                        sync_backend(&self.kv, &mut undurable_ops, &mut last_durable);
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
            // A snapshot covers every entry raft handed over before it.
            if let Some(at) = batches.iter().rposition(|b| b.snapshot.is_some()) {
                batches.drain(..at);
                if let Some(snap) = batches[0].snapshot.take() {
                    if let Err(e) = self.install_snapshot(&snap) {
                        fatal(&format!("installing snapshot {} failed: {e}", snap.get_metadata().index));
                    }
                    undurable_ops = 0;
                    last_durable = Instant::now();
                }
            }
            let entries: Vec<Entry> = batches.into_iter().flat_map(|b| b.entries).collect();
            if entries.is_empty() {
                continue;
            }
            // Applied undurably: the answers must not wait for the backend's fsync (the WAL
            // already holds the entries; a crash replays them from the consistent index).
            let mut outcome = match self.apply_entries(&entries) {
                Ok(o) => o,
                // The raft node stopped under a conf change (this member's own removal stops it
                // at once): the batch is not committed and stays in the WAL for a restart.
                Err(ServerError::Stopped) => {
                    tracing::info!("raft stopped while applying a batch; leaving it to the WAL");
                    break;
                }
                // What came before the entry is durable: a restart at the version the cluster
                // asks for resumes after it, with the downgrade state it set.
                Err(e @ ServerError::IncompatibleVersion(_)) => {
                    sync_backend(&self.kv, &mut undurable_ops, &mut last_durable);
                    fatal(&e.to_string())
                }
                Err(e) => fatal(&format!("applying entries failed: {e}")),
            };
            if let Some((index, _term)) = outcome.last {
                self.applied_tx.send_replace(index);
            }
            after_compaction.append(&mut outcome.after_compaction);
            self.watch_hub.notify(std::mem::take(&mut outcome.events), outcome.prev_kv_complete);
            for (id, applied) in outcome.answers {
                self.wait.trigger(id, applied);
            }
            // The periodic durable commit (etcd's batch interval / limit), after the answers.
            undurable_ops += outcome.ops.max(1);
            if last_durable.elapsed() >= self.batch_interval || undurable_ops >= self.batch_limit {
                sync_backend(&self.kv, &mut undurable_ops, &mut last_durable);
            }
            if let Some((index, _term)) = outcome.last {
                self.maybe_snapshot(index);
            }
        }
        if let Err(e) = self.kv.sync() {
            tracing::error!(error = %e, "final backend sync failed");
        }
        tracing::info!("apply scheduler stopped");
    }

    /// Pairs each MsgSnapshot raft wants sent with the backend as of the last applied entry: the
    /// message's metadata is rewritten to that entry and configuration, and the rows are read
    /// from a read transaction opened now (the applier is between batches, so they match).
    fn serve_snapshot_requests(&self) {
        while let Ok(mut msg) = self.snapshot_requests.try_recv() {
            let to = msg.to;
            if !self.snapshots_sending.lock().insert(to) {
                continue; // one transfer per member at a time; raft asks again if it fails
            }
            let (index, term) = self.kv.consistent_index();
            let read = match self.kv.read_all() {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the backend for a snapshot");
                    self.snapshots_sending.lock().remove(&to);
                    self.raft.report_snapshot(to, false);
                    continue;
                }
            };
            let meta = msg.mut_snapshot().mut_metadata();
            meta.index = index;
            meta.term = term;
            meta.set_conf_state(self.conf_state.clone());
            msg.mut_snapshot().data = self.members.v2_snapshot_json().into();
            tracing::info!(to = %format!("{to:x}"), index, term, "sending a snapshot of the backend");
            let (transport, snap_dir) = (self.transport.clone(), self.snap_dir.clone());
            crate::snapshot::spawn_send(&self.runtime, transport, snap_dir, msg, read, self.snapshots_sending.clone());
        }
    }

    /// Replaces this member's state with a snapshot raft accepted (the rows arrived before
    /// raft saw the message), then rebuilds everything derived from the backend.
    fn install_snapshot(&mut self, snap: &Snapshot) -> Result<(), ServerError> {
        let index = snap.get_metadata().index;
        if index <= self.kv.consistent_index().0 {
            return Ok(());
        }
        let path = crate::snapshot::db_path(&self.snap_dir, index);
        let _applying = crate::metrics::SnapshotApplying::start();
        tracing::info!(index, file = %path.display(), "installing a snapshot");
        crate::snapshot::install(&self.kv, &path)?;
        // (each guard is a temporary: reads below take the backend's lock again)
        self.lessor.reload(&self.kv.backend().database(), Instant::now())?;
        crate::etcd_server::lease::attach_lease_keys(&self.kv, &self.lessor)?;
        self.members.reload(&self.kv.backend().database())?;
        self.alarms.reload(&self.kv.backend().database())?;
        self.auth.reload(&self.kv.backend().database())?;
        let members = self.members.members();
        for m in &members {
            self.transport.add_peer(m.id, m.raft_attrs.as_ref().map(|r| r.peer_urls.clone()).unwrap_or_default());
        }
        for id in self.transport.peer_ids() {
            if !members.iter().any(|m| m.id == id) {
                self.transport.remove_peer(id);
            }
        }
        if self.members.is_removed(self.members.local_id()) {
            tracing::warn!("the member has been permanently removed from the cluster");
            self.removed_tx.send_replace(true);
        }
        self.watch_hub.restore();
        self.conf_state = snap.get_metadata().get_conf_state().clone();
        self.last_snapshot_index = index;
        crate::snapshot::purge_received(&self.snap_dir, index);
        tracing::info!(index, revision = self.kv.current_revision(), "installed a snapshot");
        self.applied_tx.send_replace(index);
        Ok(())
    }

    /// Deletes one bounded step of a pending compaction's rows; answers the physical
    /// compactions it completes.
    fn compaction_step(&self, waiting: &mut Vec<(i64, u64, Applied)>) {
        let finished = match self.kv.compaction_step(COMPACTION_STEP_ROWS) {
            Ok(etcd_mvcc::CompactionStep::More) => return,
            Ok(etcd_mvcc::CompactionStep::Finished(rev)) => rev,
            // nothing pending (or a replaced data set): whoever waits is done
            Ok(etcd_mvcc::CompactionStep::Idle) => i64::MAX,
            Err(e) => {
                // the compaction stays scheduled; open() would resume it after a restart
                tracing::error!(error = %e, "physical compaction step failed");
                return;
            }
        };
        let (done, still): (Vec<_>, Vec<_>) = std::mem::take(waiting).into_iter().partition(|(rev, _, _)| *rev <= finished);
        *waiting = still;
        for (_, id, applied) in done {
            self.wait.trigger(id, applied);
        }
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
        self.raft.compact(applied, self.members.v2_snapshot_json());
        self.last_snapshot_index = applied;
    }

    /// Applies `entries` in one backend transaction, left open (committed undurably) for the
    /// periodic durable commit.
    fn apply_entries(&mut self, entries: &[Entry]) -> Result<BatchOutcome, ServerError> {
        let (applied_index, _) = self.kv.consistent_index();
        let mut txn = self.kv.begin_apply()?;
        let mut out = BatchOutcome {
            answers: Vec::new(),
            events: Vec::new(),
            prev_kv_complete: true,
            ops: 0,
            last: None,
            after_compaction: Vec::new(),
        };
        for e in entries {
            if e.index <= applied_index {
                continue;
            }
            let before = out.last.replace((e.index, e.term));
            match e.get_entry_type() {
                EntryType::EntryNormal => {
                    if e.data.is_empty() {
                        // a new leader's empty entry: once applied, its lessor takes over expiry
                        self.promote_lessor_if_leader(e.term);
                        continue;
                    }
                    out.ops += 1;
                    match entry_format::decode_normal(&e.data) {
                        NormalEntry::V3(req) => {
                            let id = req.header.as_ref().map(|h| h.id).filter(|id| *id != 0).unwrap_or(req.id);
                            // a physical compaction is answered once its rows are gone (as etcd)
                            let physical = req.compaction.as_ref().filter(|c| c.physical).map(|c| c.revision);
                            let timer = crate::metrics::ApplyTimer::start(&req);
                            let result = self.apply_request(&mut txn, req, e.index);
                            timer.finish(matches!(result, Ok(_) | Err(ServerError::Compacted)));
                            let result = match result {
                                Err(e @ ServerError::IncompatibleVersion(_)) => return Err(commit_before(txn, before, e)),
                                r => r,
                            };
                            let revision = txn.current_revision();
                            match physical {
                                Some(rev) if result.is_ok() => {
                                    out.after_compaction.push((rev, id, Applied { result, revision }))
                                }
                                _ => out.answers.push((id, Applied { result, revision })),
                            }
                        }
                        NormalEntry::V2(req) => {
                            let result = self.apply_v2(&txn, &req, e.index);
                            let result = match result {
                                Err(e @ ServerError::IncompatibleVersion(_)) => return Err(commit_before(txn, before, e)),
                                r => r,
                            };
                            out.answers.push((req.id(), Applied { result, revision: txn.current_revision() }));
                        }
                        NormalEntry::Undecodable(err) => {
                            // Every member sees the same bytes, so every member skips it alike.
                            tracing::error!(index = e.index, %err, "skipping undecodable raft entry");
                        }
                    }
                }
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    // A conf change this member cannot read would leave it with another
                    // configuration than the others: stop (etcd panics) with the reason.
                    let fatal = |err: String| ServerError::Internal(format!("cannot apply the conf change at raft index {}: {err}", e.index));
                    let cc = etcd_raft::recovery::etcd_conf_change_of(e)
                        .map_err(|err| fatal(err.to_string()))?
                        .ok_or_else(|| fatal("not a conf change".into()))?;
                    let change = entry_format::decode_member_change(&cc).map_err(|err| fatal(err.to_string()))?;
                    // Validation reads only replicated state, so every member accepts or refuses alike;
                    // a refused change is not handed to raft (the log entry becomes a no-op).
                    let result = match self.validate_member_change(&change, cc.id) {
                        Ok(()) => {
                            self.members.log_change(&change);
                            self.apply_member_change(&txn, change)?;
                            if let Some(raft_cc) = cc.to_raft() {
                                self.conf_state = self.runtime.block_on(self.raft.apply_conf_change(raft_cc))?;
                            }
                            Ok(ApplyResult::Members(self.members.members()))
                        }
                        Err(err) => Err(err),
                    };
                    if cc.id != 0 {
                        out.answers.push((cc.id, Applied { result, revision: txn.current_revision() }));
                    }
                }
            }
        }
        if let Some((index, term)) = out.last {
            txn.set_consistent_index(index, term);
        }
        // the watch hub gets these after the applied index is published
        out.prev_kv_complete = txn.prev_kv_complete();
        out.events = txn.commit(false)?;
        Ok(out)
    }

    /// etcd's membership rules for a committed conf change (`request_id` 0: a bootstrap entry).
    fn validate_member_change(&self, change: &MemberChange, request_id: u64) -> Result<(), ServerError> {
        let id = change.member_id();
        if self.members.is_removed(id) {
            return Err(ServerError::MemberNotFound);
        }
        let existing = self.members.member(id);
        let members = self.members.members();
        let urls_taken_by_others = |urls: &[String]| {
            members.iter().filter(|m| m.id != id).any(|m| {
                m.raft_attrs.as_ref().is_some_and(|r| r.peer_urls.iter().any(|u| urls.contains(u)))
            })
        };
        match change {
            MemberChange::Promote(_) => match existing {
                None => Err(ServerError::MemberNotFound),
                Some(m) if !m.raft_attrs.as_ref().is_some_and(|r| r.is_learner) => Err(ServerError::MemberNotLearner),
                Some(_) => Ok(()),
            },
            MemberChange::Update { peer_urls, .. } => match existing {
                None => Err(ServerError::MemberNotFound),
                Some(_) if urls_taken_by_others(peer_urls) => Err(ServerError::PeerUrlExists),
                Some(_) => Ok(()),
            },
            MemberChange::Add(m) => {
                if existing.is_some() {
                    // The bootstrap entries are re-applied after a restart: same member, same URLs.
                    return if request_id == 0 { Ok(()) } else { Err(ServerError::MemberExists) };
                }
                let raft = m.raft_attrs.clone().unwrap_or_default();
                if urls_taken_by_others(&raft.peer_urls) {
                    return Err(ServerError::PeerUrlExists);
                }
                let learners = members.iter().filter(|m| m.raft_attrs.as_ref().is_some_and(|r| r.is_learner)).count();
                if raft.is_learner && learners + 1 > self.max_learners {
                    return Err(ServerError::TooManyLearners);
                }
                Ok(())
            }
            MemberChange::Remove(_) => existing.map(|_| ()).ok_or(ServerError::MemberNotFound),
        }
    }

    fn apply_member_change(&self, txn: &ApplyTxn<'_>, change: MemberChange) -> Result<(), ServerError> {
        let id = change.member_id();
        let m = match change {
            MemberChange::Remove(_) => {
                self.transport.remove_peer(id);
                self.members.apply_remove(txn.write_txn(), id)?;
                if id == self.members.local_id() {
                    tracing::warn!("the member has been permanently removed from the cluster");
                    self.removed_tx.send_replace(true);
                }
                return Ok(());
            }
            // A re-applied bootstrap entry keeps the record and its published attributes.
            MemberChange::Add(new) => self.members.member(id).unwrap_or(new),
            // Promotion and update keep the record and its published attributes; an update
            // changes only the peer URLs (a learner stays one, as in etcd since 3.5.5).
            MemberChange::Promote(_) | MemberChange::Update { .. } => {
                let mut m = self.members.member(id).ok_or(ServerError::MemberNotFound)?;
                let raft = m.raft_attrs.get_or_insert_with(Default::default);
                match change {
                    MemberChange::Update { peer_urls, .. } => raft.peer_urls = peer_urls,
                    _ => raft.is_learner = false,
                }
                m
            }
        };
        self.transport.add_peer(id, m.raft_attrs.as_ref().map(|r| r.peer_urls.clone()).unwrap_or_default());
        self.members.apply_add(txn.write_txn(), m)
    }

    /// A v2 request etcd proposes (member attributes, cluster version), applied as etcd's v2
    /// applier does. etcd-rs keeps no v2 store: other v2 writes are skipped (logged).
    fn apply_v2(&self, txn: &ApplyTxn<'_>, req: &Request, index: u64) -> Result<ApplyResult, ServerError> {
        match entry_format::decode_v2(req) {
            Ok(V2Write::MemberAttributes { id, attrs }) => self.apply_member_attributes(txn, id, attrs),
            Ok(V2Write::ClusterVersion(ver)) => self.apply_cluster_version(txn, &ver),
            Ok(V2Write::Other { method, path }) => {
                tracing::warn!(index, %method, %path, "skipping a v2 store request: etcd-rs keeps no v2 store");
                Ok(ApplyResult::Empty)
            }
            Err(err) => {
                // Every member sees the same bytes, so every member skips it alike.
                tracing::error!(index, %err, "skipping an undecodable v2 request");
                Err(ServerError::Internal(err.to_string()))
            }
        }
    }

    fn apply_member_attributes(&self, txn: &ApplyTxn<'_>, id: u64, attrs: Attributes) -> Result<ApplyResult, ServerError> {
        self.members.apply_attributes(txn.write_txn(), id, attrs)?;
        Ok(ApplyResult::Empty)
    }

    fn apply_cluster_version(&self, txn: &ApplyTxn<'_>, ver: &str) -> Result<ApplyResult, ServerError> {
        let old = self.members.cluster_version();
        if old.as_deref() == Some(ver) {
            return Ok(ApplyResult::Empty);
        }
        let label = crate::cluster_version::cluster_label;
        match &old {
            Some(from) => tracing::info!(from = %label(from), to = %label(ver), "updated cluster version"),
            None => tracing::info!(cluster_version = %label(ver), "set initial cluster version"),
        }
        crate::cluster_version::detect_downgrade(&self.server_version, Some(ver), &self.members.downgrade_info())?;
        self.members.apply_version(txn.write_txn(), ver)?;
        // etcd's api.UpdateCapability logs only a move up
        let parse = crate::cluster_version::Version::parse;
        if old.as_deref().and_then(parse).is_none_or(|o| parse(ver).is_some_and(|v| o < v)) {
            crate::membership::log_enabled_capabilities(ver);
        }
        // A downgrade to a version older than 3.5 is over once the cluster version reached its
        // target: members of that version cannot apply a DowngradeInfoSet ending it (etcd 3.4
        // panics on one), and every member that could has just stopped (mustDetectDowngrade).
        // Decided on replicated state only, so every member ends it alike.
        let target = self.members.downgrade_info().target();
        if target.is_some() && target == parse(ver) && !crate::cluster_version::understands_v3_5_requests(Some(ver)) {
            tracing::info!(cluster_version = %label(ver), "the cluster has been downgraded");
            self.members.apply_downgrade(txn.write_txn(), Default::default())?;
        }
        Ok(ApplyResult::Empty)
    }

    /// etcd 3.5's DowngradeInfoSet: enabled with its target, or disabled (target cleared).
    fn apply_downgrade_info(&self, txn: &ApplyTxn<'_>, r: &DowngradeInfoSetRequest) -> Result<ApplyResult, ServerError> {
        let d = match r.enabled {
            true => crate::cluster_version::DowngradeInfo { target_version: r.ver.clone(), enabled: true },
            false => Default::default(),
        };
        if d.enabled {
            tracing::info!(target_version = %d.target_version, server_version = %self.server_version, "The server is ready to downgrade");
        }
        self.members.apply_downgrade(txn.write_txn(), d)?;
        Ok(ApplyResult::Empty)
    }

    /// Applies one request; the lessor follows the key changes it made (attach / detach).
    fn apply_request(&self, txn: &mut ApplyTxn<'_>, req: InternalRaftRequest, index: u64) -> Result<ApplyResult, ServerError> {
        let before = txn.pending_events().len();
        // A put's previous value is read only for those who look at it: the lessor (to detach
        // the key from its old lease; with no lease at all no key has one) and prev_kv watchers
        // (the hub fills in what it lacks if one comes in meanwhile).
        txn.read_prev_kv(!self.lessor.is_empty() || self.watch_hub.wants_prev_kv());
        let result = self.apply_request_ops(txn, req, index);
        self.lessor.apply_events(&txn.pending_events()[before..]);
        result
    }

    fn apply_request_ops(&self, txn: &mut ApplyTxn<'_>, req: InternalRaftRequest, index: u64) -> Result<ApplyResult, ServerError> {
        // etcd's corrupt applier, outermost: while CORRUPT is raised the store must not change
        if self.alarms.corrupt() && refused_while_corrupt(&req) {
            return Err(ServerError::Corrupt);
        }
        // etcd applies DowngradeInfoSet before its auth layer looks at the request
        if let Some(r) = &req.downgrade_info_set {
            return self.apply_downgrade_info(txn, r);
        }
        // etcd's auth applier: the sender named in the header must be allowed the request
        let sender = crate::apply_auth::header_auth(&req);
        crate::apply_auth::authorize(&self.auth, &self.lessor, &sender, &req)?;
        if let Some(r) = crate::apply_auth::apply(&self.auth, txn.write_txn(), &req, index) {
            return r.map(ApplyResult::Auth);
        }
        let lessor = self.lessor.clone();
        let lease_exists = move |id: i64| lessor.exists(id);
        // etcd's capped applier: while NOSPACE is raised nothing may grow the store
        let no_space = self.alarms.no_space();
        if let Some(r) = req.put {
            if no_space {
                return Err(ServerError::NoSpace);
            }
            return Ok(ApplyResult::Put(txn.put(&r, &lease_exists)?));
        }
        if let Some(r) = req.delete_range {
            return Ok(ApplyResult::DeleteRange(txn.delete_range(&r)?));
        }
        if let Some(r) = req.txn {
            if no_space && crate::etcd_server::txn_cost(&r) > 0 {
                return Err(ServerError::NoSpace);
            }
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
            if no_space {
                return Err(ServerError::NoSpace);
            }
            return self.apply_lease_grant(txn, &r);
        }
        if let Some(r) = req.lease_revoke {
            return self.apply_lease_revoke(txn, r.id);
        }
        if let Some(r) = req.lease_checkpoint {
            return self.apply_lease_checkpoint(txn, &r);
        }
        if let Some(r) = req.alarm {
            return self.apply_alarm(txn, &r).map(ApplyResult::Alarm);
        }
        if let Some(r) = req.cluster_member_attr_set {
            return match r.member_attributes {
                Some(attrs) => self.apply_member_attributes(txn, r.member_id, attrs),
                None => Ok(ApplyResult::Empty),
            };
        }
        if let Some(r) = req.cluster_version_set {
            return self.apply_cluster_version(txn, &r.ver);
        }
        Err(ServerError::Unimplemented("etcd-rs: this raft request type is not implemented yet".into()))
    }
}

impl Applier {
    fn apply_alarm(&self, txn: &ApplyTxn<'_>, r: &AlarmRequest) -> Result<AlarmResponse, ServerError> {
        let name = |a: i32| AlarmType::try_from(a).map(|t| t.as_str_name()).unwrap_or("UNKNOWN");
        let alarms = match r.action() {
            AlarmAction::Get => self.alarms.get(r.alarm),
            AlarmAction::Activate => {
                if r.alarm == AlarmType::None as i32 {
                    return Ok(AlarmResponse::default());
                }
                let (m, first) = self.alarms.activate(txn.write_txn(), r.member_id, r.alarm)?;
                if first {
                    tracing::warn!(alarm = name(m.alarm), from = %format!("{:x}", m.member_id), "alarm raised");
                }
                vec![m]
            }
            AlarmAction::Deactivate => match self.alarms.deactivate(txn.write_txn(), r.member_id, r.alarm)? {
                Some((m, cleared)) => {
                    if cleared {
                        tracing::warn!(alarm = name(m.alarm), from = %format!("{:x}", m.member_id), "alarm disarmed");
                    }
                    vec![m]
                }
                None => Vec::new(),
            },
        };
        Ok(AlarmResponse { header: None, alarms })
    }
}

/// What etcd's corrupt applier refuses: every KV write, range and compaction, lease grant and
/// revoke (read-only txns never reach etcd's applier, so they are served).
fn refused_while_corrupt(req: &InternalRaftRequest) -> bool {
    req.put.is_some()
        || req.delete_range.is_some()
        || req.range.is_some()
        || req.compaction.is_some()
        || req.lease_grant.is_some()
        || req.lease_revoke.is_some()
        || req.txn.as_ref().is_some_and(|t| !crate::corrupt::txn_is_read_only(t))
}

/// Commits a batch up to the entry `before` the one this member refused (which wrote nothing),
/// and hands the refusal on: the member stops, and a restart resumes right at the refused entry.
fn commit_before(mut txn: ApplyTxn<'_>, before: Option<(u64, u64)>, refusal: ServerError) -> ServerError {
    if let Some((index, term)) = before {
        txn.set_consistent_index(index, term);
    }
    match txn.commit(false) {
        Ok(_) => refusal,
        Err(e) => ServerError::Internal(format!("{refusal}; committing what was applied before failed: {e}")),
    }
}

/// A backend or raft failure in apply leaves the member's state unknown: stop, as etcd panics,
/// rather than answer from a state that may differ from the other members'.
fn fatal(msg: &str) -> ! {
    tracing::error!("{msg}");
    eprintln!("etcd-rs: fatal: {msg}");
    std::process::exit(2)
}
