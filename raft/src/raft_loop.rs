//! The raft loop: the one task that owns the `RawNode`, the `Wal` and the
//! `Snapshotter`, on the raft thread shared with the peer connections ([`crate::raft_runtime`]).
//!
//! Each iteration waits for a command until the next tick is due (not when linearizable
//! readers who queued during the ReadIndex round just answered start the next one: that
//! round's messages go out with the next Ready), drains every
//! queued command (so concurrent proposals share one Ready and one fsync; the
//! proposals drained together are stepped as ONE MsgPropose, so a leader appends
//! them with one broadcast, one MsgApp per follower, and a follower forwards them
//! to the leader as one message),
//! ticks if due, then handles Ready in the order raft-rs requires: apply a snapshot; hand
//! `committed_entries` (with the snapshot, after it) to the apply channel (before the messages:
//! the applier's wake-up is on every answer's path); send `messages()` (a leader may send
//! before its own fsync); append `entries()` and the HardState to the WAL
//! with one fsync, on this thread (see [`RaftLoop::persist`]); send `persisted_messages()`;
//! advance; handle the LightReady (committed entries, then messages); `advance_apply`.
//!
//! Proposals that arrive while no leader can take them (none known: the leader vanished after
//! the handle checked; or this leader is transferring leadership) are held, in arrival order,
//! for up to two election timeouts and proposed once a leader can take them; past that they
//! are refused with `NoLeader`. Each is handed to raft-rs at most once.
//!
//! Memory: the in-memory log (raft-rs's `MemStorage`) keeps `snapshot_catchup_entries` entries
//! below the applied index, and, on a leader, every entry a peer has not matched yet; older
//! ones are dropped in steps of [`TRIM_STEP`] (they stay in the WAL until the next snapshot).
//! etcd keeps the whole log since its last snapshot (up to `--snapshot-count` entries, ~40 MB
//! at 100k puts of 256 B); a peer behind what is kept gets a snapshot, as it would after one.
//!
//! Crash rule: nothing raft-rs asks to persist is acknowledged (persisted
//! messages, commit advance) before the WAL fsync returns. A WAL or snapshot
//! write error stops the loop (callers then get `Stopped`) instead of running on
//! with state that is not durable.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use raft::eraftpb::{ConfChangeV2, ConfState, Message, Snapshot};
use raft::storage::MemStorage;
use raft::{RawNode, StateRole, Storage, INVALID_ID};
use tokio::sync::{mpsc, oneshot};

use crate::error::RaftError;
use crate::node::{ApplyBatch, PeerProgress, RaftNodeConfig, Shared};
use crate::read_index::ReadIndexQueue;
use crate::recovery::Recovered;
use crate::snapshotter::Snapshotter;
use crate::transport::Transport;
use crate::wal::Wal;

/// Proposal bytes that make the loop step its batch at once (raft-rs's max_size_per_msg).
const MAX_BATCH_BYTES: usize = 1 << 20;

pub(crate) enum Command {
    Propose {
        data: Vec<u8>,
        reply: ProposeReply,
    },
    /// etcd's `ConfChange` bytes.
    ProposeConfChange {
        data: Vec<u8>,
        reply: oneshot::Sender<Result<(), RaftError>>,
    },
    /// Readers queued in `Shared::reads` while the loop was idle.
    ReadsQueued,
    ReportSnapshot {
        id: u64,
        finished: bool,
    },
    ApplyConfChange {
        cc: ConfChangeV2,
        reply: oneshot::Sender<Result<ConfState, RaftError>>,
    },
    Compact {
        index: u64,
        data: Vec<u8>,
    },
    Step(Box<Message>),
    Campaign,
    TransferLeader(u64),
    ReportUnreachable(u64),
    Stop {
        reply: oneshot::Sender<()>,
    },
}

/// How the raft loop answers a proposal.
pub(crate) enum ProposeReply {
    /// The proposer waits for raft-rs to take the entry (or refuse it).
    Wait(oneshot::Sender<Result<(), RaftError>>),
    /// The proposer waits for the applier instead; only a refusal is reported, so a taken
    /// proposal costs no extra wake-up of its task.
    OnRefused(Box<dyn FnOnce(RaftError) + Send>),
}

impl ProposeReply {
    fn send(self, result: Result<(), RaftError>) {
        match (self, result) {
            (ProposeReply::Wait(tx), result) => {
                let _ = tx.send(result);
            }
            (ProposeReply::OnRefused(f), Err(e)) => f(e),
            (ProposeReply::OnRefused(_), Ok(())) => {}
        }
    }
}

pub(crate) struct RaftLoop {
    raw: RawNode<MemStorage>,
    wal: Wal,
    /// The WAL's, which never changes: the status names it on every turn.
    cluster_id: u64,
    snapshotter: Snapshotter,
    transport: Arc<dyn Transport>,
    apply_tx: mpsc::UnboundedSender<ApplyBatch>,
    commands: mpsc::UnboundedReceiver<Command>,
    shared: Arc<Shared>,
    tick_interval: Duration,
    next_tick: Instant,
    snapshot_catchup_entries: u64,
    snapshot_index: u64,
    conf_state: ConfState,
    reads: ReadIndexQueue,
    /// Ticks left in which to campaign at once if we are the only voter.
    campaign_ticks_left: usize,
    /// Proposals no leader could take yet, with the ticks they may still wait.
    held: VecDeque<(usize, Vec<u8>, ProposeReply)>,
    /// How long (ticks) a proposal is held for a leader: two election timeouts.
    hold_ticks: usize,
    /// Proposals drained in this iteration, stepped together by [`RaftLoop::flush_proposals`].
    batch: Vec<(Vec<u8>, ProposeReply)>,
    /// Data bytes in `batch`.
    batch_bytes: usize,
    stop_replies: Vec<oneshot::Sender<()>>,
}

impl RaftLoop {
    pub(crate) fn new(
        cfg: &RaftNodeConfig,
        recovered: Recovered,
        transport: Arc<dyn Transport>,
        apply_tx: mpsc::UnboundedSender<ApplyBatch>,
        commands: mpsc::UnboundedReceiver<Command>,
        shared: Arc<Shared>,
    ) -> RaftLoop {
        RaftLoop {
            raw: recovered.raw,
            cluster_id: recovered.wal.metadata().cluster_id,
            wal: recovered.wal,
            snapshotter: recovered.snapshotter,
            transport,
            apply_tx,
            commands,
            shared,
            tick_interval: cfg.tick_interval,
            next_tick: Instant::now() + cfg.tick_interval,
            snapshot_catchup_entries: cfg.snapshot_catchup_entries,
            snapshot_index: recovered.snapshot_index,
            conf_state: recovered.conf_state,
            reads: ReadIndexQueue::default(),
            campaign_ticks_left: cfg.election_tick.max(1),
            held: VecDeque::new(),
            hold_ticks: 2 * cfg.election_tick.max(1),
            batch: Vec::new(),
            batch_bytes: 0,
            stop_replies: Vec::new(),
        }
    }

    pub(crate) async fn run(mut self) {
        if let Err(e) = self.run_until_stopped().await {
            tracing::error!(error = %e, "the raft loop stopped on an error");
        }
        self.reads.fail_all(&self.shared.reads);
        let batched = std::mem::take(&mut self.batch).into_iter().map(|(_, r)| r);
        let held = std::mem::take(&mut self.held).into_iter().map(|(_, _, r)| r);
        for reply in batched.chain(held) {
            self.shared.pending_proposals.fetch_sub(1, Ordering::AcqRel);
            reply.send(Err(RaftError::Stopped));
        }
        self.shared.stopped.store(true, Ordering::Release);
        self.publish_status();
        self.shared.leader.send_modify(|l| l.stopped = true);
        let replies = std::mem::take(&mut self.stop_replies);
        // Close the WAL before telling anyone we stopped.
        drop(self);
        for r in replies {
            let _ = r.send(());
        }
        tracing::info!("raft loop stopped");
    }

    async fn run_until_stopped(&mut self) -> Result<(), RaftError> {
        loop {
            self.process_ready().await?;
            self.publish_status();
            if !self.stop_replies.is_empty() {
                return Ok(());
            }
            // Readers who queued during the round just answered woke nobody: their round starts
            // now and goes out with the next Ready, so the loop does not wait for a command
            // first (it only lets the runtime's other tasks run).
            if self.reads.start_round(&mut self.raw, &self.shared.reads) {
                tokio::task::yield_now().await;
            } else {
                let tick = tokio::time::Instant::from_std(self.next_tick);
                match tokio::time::timeout_at(tick, self.commands.recv()).await {
                    Ok(Some(cmd)) => self.handle(cmd)?,
                    Ok(None) => return Ok(()),
                    Err(_) => {}
                }
            }
            while let Ok(cmd) = self.commands.try_recv() {
                self.handle(cmd)?;
            }
            self.flush_proposals();
            let now = Instant::now();
            if now >= self.next_tick {
                self.next_tick += self.tick_interval;
                if self.next_tick < now {
                    self.next_tick = now + self.tick_interval;
                }
                self.raw.tick();
                self.reads.on_tick(&mut self.raw);
                self.age_held_proposals();
                self.campaign_ticks_left = self.campaign_ticks_left.saturating_sub(1);
            }
            self.reads.start_round(&mut self.raw, &self.shared.reads);
            self.propose_held();
        }
    }

    /// Whether raft-rs would take a proposal now rather than drop it.
    fn can_propose(&self) -> bool {
        let r = &self.raw.raft;
        r.leader_id != INVALID_ID && !(r.state == StateRole::Leader && r.lead_transferee.is_some())
    }

    /// Batches `data` for raft-rs, or holds it (behind any held before) until a leader can take it.
    fn propose(&mut self, data: Vec<u8>, reply: ProposeReply) {
        if self.can_propose() && self.held.is_empty() {
            self.batch_proposal(data, reply);
        } else {
            self.held.push_back((self.hold_ticks, data, reply));
        }
    }

    fn batch_proposal(&mut self, data: Vec<u8>, reply: ProposeReply) {
        self.batch_bytes += data.len();
        self.batch.push((data, reply));
        if self.batch_bytes >= MAX_BATCH_BYTES {
            self.flush_proposals();
        }
    }

    /// Steps the batched proposals as one MsgPropose, as `RawNode::propose` steps one: the
    /// leader appends them with one broadcast; a follower forwards them in one message. raft-rs
    /// takes or drops the message whole, so every proposer gets the same answer.
    fn flush_proposals(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        if !self.can_propose() {
            // a message stepped since they were batched took the leader away: hold them, ahead
            // of those held after them
            for (data, reply) in batch.into_iter().rev() {
                self.held.push_front((self.hold_ticks, data, reply));
            }
            return;
        }
        self.shared.pending_proposals.fetch_sub(batch.len(), Ordering::AcqRel);
        let mut m = Message::default();
        m.set_msg_type(raft::eraftpb::MessageType::MsgPropose);
        m.from = self.raw.raft.id;
        let mut replies = Vec::with_capacity(batch.len());
        let entries: Vec<raft::eraftpb::Entry> = batch
            .into_iter()
            .map(|(data, reply)| {
                replies.push(reply);
                let mut e = raft::eraftpb::Entry::default();
                e.data = data.into();
                e
            })
            .collect();
        m.set_entries(entries.into());
        let result = self.raw.raft.step(m);
        for reply in replies {
            reply.send(result.as_ref().map(|_| ()).map_err(refusal));
        }
    }

    /// Proposes the held proposals, oldest first, once a leader can take them.
    fn propose_held(&mut self) {
        while self.can_propose() {
            let Some((_, data, reply)) = self.held.pop_front() else { break };
            self.batch_proposal(data, reply);
        }
        self.flush_proposals();
    }

    /// Counts a tick for the held proposals; refuses those that waited too long.
    fn age_held_proposals(&mut self) {
        for held in self.held.iter_mut() {
            held.0 = held.0.saturating_sub(1);
        }
        while self.held.front().is_some_and(|(left, _, _)| *left == 0) {
            if let Some((_, _, reply)) = self.held.pop_front() {
                self.shared.pending_proposals.fetch_sub(1, Ordering::AcqRel);
                reply.send(Err(RaftError::NoLeader));
            }
        }
    }

    fn handle(&mut self, cmd: Command) -> Result<(), RaftError> {
        if !matches!(cmd, Command::Propose { .. } | Command::Step(_) | Command::ReadsQueued) {
            // keep the batched proposals ahead of what this command proposes or changes
            self.flush_proposals();
        }
        match cmd {
            Command::Propose { data, reply } => self.propose(data, reply),
            Command::ProposeConfChange { data, reply } => {
                let result = if self.raw.raft.leader_id == INVALID_ID {
                    Err(RaftError::NoLeader)
                } else {
                    self.raw.step(conf_change_proposal(data)).map_err(RaftError::from)
                };
                let _ = reply.send(result);
            }
            Command::ReadsQueued => {} // taken by the next `start_round`
            Command::ApplyConfChange { cc, reply } => {
                let result = self.raw.apply_conf_change(&cc).map_err(RaftError::from);
                if let Ok(cs) = &result {
                    self.conf_state = cs.clone();
                    self.raw.mut_store().wl().set_conf_state(cs.clone());
                }
                let _ = reply.send(result);
            }
            Command::Compact { index, data } => self.compact(index, data)?,
            Command::Step(msg) => {
                if let Err(e) = self.raw.step(*msg) {
                    tracing::debug!(error = %e, "raft refused a peer message");
                }
            }
            Command::Campaign => {
                if let Err(e) = self.raw.campaign() {
                    tracing::warn!(error = %e, "could not start a campaign");
                }
            }
            Command::TransferLeader(to) => self.raw.transfer_leader(to),
            Command::ReportUnreachable(id) => self.raw.report_unreachable(id),
            Command::ReportSnapshot { id, finished } => self.raw.report_snapshot(
                id,
                if finished { raft::SnapshotStatus::Finish } else { raft::SnapshotStatus::Failure },
            ),
            Command::Stop { reply } => self.stop_replies.push(reply),
        }
        Ok(())
    }

    /// Campaigns at start without waiting for an election timeout when this
    /// member is the only voter (a single-member cluster).
    fn maybe_campaign(&mut self) {
        if self.campaign_ticks_left == 0 || self.raw.raft.state == StateRole::Leader {
            return;
        }
        let id = self.raw.raft.id;
        let cs = &self.conf_state;
        let only_voter = cs.voters == [id] && cs.voters_outgoing.is_empty();
        let log = &self.raw.raft.raft_log;
        // raft-rs refuses to campaign while committed conf changes are unapplied.
        if only_voter && log.applied >= log.committed {
            self.campaign_ticks_left = 0;
            if let Err(e) = self.raw.campaign() {
                tracing::warn!(error = %e, "could not campaign as the only voter");
            }
        }
    }

    async fn process_ready(&mut self) -> Result<(), RaftError> {
        self.maybe_campaign();
        while self.raw.has_ready() {
            self.handle_ready().await?;
            self.maybe_campaign();
        }
        Ok(())
    }

    fn deliver(&self, entries: Vec<raft::eraftpb::Entry>, snapshot: Option<Snapshot>) {
        if entries.is_empty() && snapshot.is_none() {
            return;
        }
        if self
            .apply_tx
            .send(ApplyBatch { entries, snapshot })
            .is_err()
        {
            tracing::debug!("the apply channel is closed; dropping committed entries");
        }
    }

    /// Hands `msgs` to the transport; false when there were none.
    fn send(&self, msgs: Vec<Message>) -> bool {
        if msgs.is_empty() {
            return false;
        }
        crate::metrics::heartbeats_sent(&msgs, self.tick_interval);
        self.transport.send(msgs);
        true
    }

    async fn handle_ready(&mut self) -> Result<(), RaftError> {
        // The applier reads the status while applying what this Ready commits (a new leader's
        // empty entry promotes the lessor only if the status already names this member leader
        // in that term): publish the role change before handing entries over.
        self.publish_status();
        let mut rd = self.raw.ready();
        let mut snapshot = None;
        if !rd.snapshot().is_empty() {
            let snap = rd.snapshot().clone();
            let (index, term) = (snap.get_metadata().index, snap.get_metadata().term);
            self.snapshotter.save(&snap)?;
            self.wal.save_snapshot_marker(index, term)?;
            self.raw.mut_store().wl().apply_snapshot(snap.clone())?;
            // the log before a received snapshot is superseded by it
            self.wal.release_to(index)?;
            self.conf_state = snap.get_metadata().get_conf_state().clone();
            self.snapshot_index = index;
            snapshot = Some(snap);
        }
        // committed entries (after a snapshot they follow) before messages: the applier's
        // wake-up is on every answer's path, the messages' wake-ups then overlap with the apply
        self.deliver(rd.take_committed_entries(), snapshot);
        let sent = self.send(rd.take_messages());
        self.reads.on_read_states(rd.take_read_states());

        let hs = rd.hs().cloned();
        let entries = rd.take_entries();
        self.persist(hs.as_ref(), &entries, sent).await?;
        {
            let store = self.raw.mut_store();
            let mut core = store.wl();
            if let Some(hs) = hs {
                core.set_hardstate(hs);
            }
            core.append(&entries)?;
        }
        self.send(rd.take_persisted_messages());

        let mut light = self.raw.advance(rd);
        if let Some(commit) = light.commit_index() {
            self.raw.mut_store().wl().mut_hard_state().commit = commit;
        }
        self.deliver(light.take_committed_entries(), None);
        self.send(light.take_messages());
        self.raw.advance_apply();
        self.trim_memory_log()
    }

    /// Writes a Ready's HardState and entries to the WAL, with an fsync when raft-rs needs one,
    /// on this thread: the loop must wait for it anyway, and a hand-off to another thread cost
    /// two thread wake-ups per fsync. The peer connections, tasks of this runtime, wait while the
    /// fsync blocks the thread, so the messages this Ready sent before persisting (a leader's
    /// appends, whose followers fsync in parallel with it) are written to their sockets first:
    /// the loop yields once, and the stream writers they woke run before it resumes.
    async fn persist(
        &mut self,
        hs: Option<&raft::eraftpb::HardState>,
        entries: &[raft::eraftpb::Entry],
        sent: bool,
    ) -> Result<(), RaftError> {
        if sent && self.wal.must_sync(hs, entries) {
            tokio::task::yield_now().await;
        }
        self.wal.save(hs, entries)?;
        Ok(())
    }

    /// Drops what the in-memory log no longer needs (see the module doc).
    fn trim_memory_log(&mut self) -> Result<(), RaftError> {
        let r = &self.raw.raft;
        let first = self.raw.store().first_index()?;
        let peers_matched = (r.state == raft::StateRole::Leader).then(|| r.prs().iter().map(|(_, p)| p.matched));
        let Some(to) = trim_point(first, r.raft_log.applied, self.snapshot_catchup_entries, peers_matched.into_iter().flatten())
        else {
            return Ok(());
        };
        self.raw.mut_store().wl().compact(to)?;
        Ok(())
    }

    /// Records a snapshot at `index` and releases the log before it.
    fn compact(&mut self, index: u64, data: Vec<u8>) -> Result<(), RaftError> {
        let applied = self.raw.raft.raft_log.applied;
        let index = index.min(applied);
        if index <= self.snapshot_index {
            return Ok(());
        }
        let store = self.raw.store().clone();
        let term = match store.term(index) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(index, error = %e, "cannot snapshot at an index the log no longer holds");
                return Ok(());
            }
        };
        let mut snap = Snapshot::default();
        let meta = snap.mut_metadata();
        meta.index = index;
        meta.term = term;
        meta.set_conf_state(self.conf_state.clone());
        snap.data = data.into();
        // The snapshot file first: a WAL marker never names a missing snapshot.
        self.snapshotter.save(&snap)?;
        self.wal.save_snapshot_marker(index, term)?;
        self.snapshot_index = index;
        let compact_to = index.saturating_sub(self.snapshot_catchup_entries);
        if compact_to > store.first_index()? {
            store.wl().compact(compact_to)?;
        }
        self.wal.release_to(index)?;
        tracing::info!(
            index,
            term,
            compacted_to = compact_to,
            "saved a raft snapshot and released the log before it"
        );
        Ok(())
    }

    pub(crate) fn publish_status(&self) {
        let r = &self.raw.raft;
        let id = r.id;
        let previous_leader = self.shared.status.read().leader_id;
        if r.leader_id != previous_leader {
            log_leader_change(id, previous_leader, r.leader_id, r.term);
            if r.leader_id != INVALID_ID {
                crate::metrics::LEADER_CHANGES.inc();
                crate::metrics::reset_heartbeats();
            }
            let since = Instant::now();
            self.shared.leader.send_modify(|l| (l.id, l.since) = (r.leader_id, since));
        }
        // updated in place, reusing the vectors' room: this runs on every turn of the loop
        let mut s = self.shared.status.write();
        s.id = id;
        s.cluster_id = self.cluster_id;
        s.leader_id = r.leader_id;
        s.term = r.term;
        s.commit_index = r.raft_log.committed;
        s.applied_index = r.raft_log.applied;
        s.last_index = r.raft_log.last_index();
        s.snapshot_index = self.snapshot_index;
        s.role = r.state;
        s.is_learner = self.conf_state.learners.contains(&id);
        s.voters.clone_from(&self.conf_state.voters);
        s.learners.clone_from(&self.conf_state.learners);
        s.progress.clear();
        if r.state == raft::StateRole::Leader {
            s.progress.extend(
                r.prs().iter().map(|(id, p)| PeerProgress { id: *id, matched: p.matched, recent_active: p.recent_active }),
            );
        }
    }
}

/// Entries the in-memory log drops at once: trimming shifts the kept entries, so it runs
/// only when this many can go.
const TRIM_STEP: u64 = 4096;

/// The index the in-memory log can be compacted to (entries from it on are kept): `keep`
/// entries below `applied`, and no entry a peer has not matched (the entry at a peer's match
/// is kept too: its term is the next MsgApp's log term). None when fewer than [`TRIM_STEP`]
/// entries would go.
fn trim_point(first: u64, applied: u64, keep: u64, peers_matched: impl IntoIterator<Item = u64>) -> Option<u64> {
    let to = peers_matched.into_iter().fold(applied.saturating_sub(keep), u64::min);
    (to >= first.saturating_add(TRIM_STEP)).then_some(to)
}

/// What a proposer is told when raft-rs refused the batch its proposal was in.
fn refusal(e: &raft::Error) -> RaftError {
    match e {
        raft::Error::ProposalDropped => RaftError::ProposalDropped,
        other => RaftError::Raft(other.to_string()),
    }
}

/// The proposal RawNode::propose_conf_change would make, with etcd's bytes in it (the
/// leader's raft-rs accepts etcd's numbering: third_party/raft/ETCD-RS-PATCH.md).
fn conf_change_proposal(data: Vec<u8>) -> Message {
    let mut e = raft::eraftpb::Entry::default();
    e.set_entry_type(raft::eraftpb::EntryType::EntryConfChange);
    e.data = data.into();
    let mut m = Message::default();
    m.set_msg_type(raft::eraftpb::MessageType::MsgPropose);
    m.set_entries(vec![e].into());
    m
}

/// etcd's raft.node lines (dashboards count elections by them), logger "raft" as etcd's.
fn log_leader_change(id: u64, old: u64, new: u64, term: u64) {
    match (old, new) {
        (INVALID_ID, new) => tracing::info!(logger = "raft", "raft.node: {id:x} elected leader {new:x} at term {term}"),
        (old, INVALID_ID) => tracing::info!(logger = "raft", "raft.node: {id:x} lost leader {old:x} at term {term}"),
        (old, new) => tracing::info!(logger = "raft", "raft.node: {id:x} changed leader from {old:x} to {new:x} at term {term}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_to_the_catch_up_window_below_applied() {
        assert_eq!(trim_point(1, 100_000, 5000, []), Some(95_000));
        // a leader's peers all caught up: same point
        assert_eq!(trim_point(1, 100_000, 5000, [100_000, 99_990, 100_000]), Some(95_000));
    }

    #[test]
    fn keeps_every_entry_a_lagging_peer_has_not_matched() {
        assert_eq!(trim_point(1, 100_000, 5000, [100_000, 20_000]), Some(20_000));
        // a new member (matched 0) holds the log until it has caught up
        assert_eq!(trim_point(1, 100_000, 5000, [100_000, 0]), None);
    }

    /// `batch_append` (recovery.rs) batches new entries into a queued MsgApp only when they
    /// continue it; for one without entries, right after its index (third_party/raft's patch).
    #[test]
    fn an_empty_append_is_batched_with_entries_only_right_after_its_index() {
        let entry = |index| {
            let mut e = raft::eraftpb::Entry::default();
            e.index = index;
            e
        };
        let mut msg = Message::default();
        msg.index = 180;
        assert!(raft::util::is_continuous_ents(&msg, &[entry(181)]));
        assert!(!raft::util::is_continuous_ents(&msg, &[entry(177), entry(178)]));
        msg.set_entries(vec![entry(181)].into());
        assert!(raft::util::is_continuous_ents(&msg, &[entry(182)]));
        assert!(!raft::util::is_continuous_ents(&msg, &[entry(181)]));
    }

    #[test]
    fn waits_until_a_whole_step_can_go() {
        assert_eq!(trim_point(92_000, 100_000, 5000, []), None);
        assert_eq!(trim_point(95_000 - TRIM_STEP, 100_000, 5000, []), Some(95_000));
        assert_eq!(trim_point(1, 3000, 5000, []), None);
    }
}
