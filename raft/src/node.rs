//! `RaftNode`: the cloneable handle to the raft loop, its configuration and
//! its cheap status view.
//!
//! Invariant: the raft-rs `RawNode`, the `Wal` and the `Snapshotter` are owned
//! by one task, the raft loop, on the "raft-loop" thread ([`crate::raft_runtime`], which also
//! writes and fsyncs the WAL); the handle only sends commands over a channel
//! and reads a status snapshot the loop republishes after every iteration.
//! The leader is also published on a watch channel, changed only when it
//! changes, so a request can wait for an election without polling.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use raft::eraftpb::{ConfChangeV2, ConfState, Entry, Message, Snapshot};

use crate::etcd_conf_change::EtcdConfChange;
use raft::StateRole;
use tokio::sync::{mpsc, oneshot, watch};

use crate::error::RaftError;
use crate::raft_loop::{Command, ProposeReply, RaftLoop};
use crate::raft_runtime::RaftRuntime;
use crate::read_index::SharedReads;
use crate::recovery::recover;
use crate::slog_bridge::raft_logger;
#[cfg(test)]
use crate::snapshotter::Snapshotter;
use crate::transport::Transport;
use crate::wal::WalMetadata;

/// Proposals queued for the loop beyond this are refused with `TooManyRequests`.
pub const MAX_PENDING_PROPOSALS: usize = 8192;

/// How to start a raft node.
#[derive(Debug, Clone)]
pub struct RaftNodeConfig {
    /// This member's id (used for a new WAL; a restart takes the WAL's).
    pub id: u64,
    pub cluster_id: u64,
    /// `<data-dir>/member`; snapshots live in `snap/`.
    pub member_dir: PathBuf,
    /// The WAL's directory: `<member_dir>/wal` unless a dedicated one is given (`--wal-dir`).
    pub wal_dir: PathBuf,
    /// Restart as the only voter: remove every other member through conf change entries
    /// committed locally (`--force-new-cluster`; ignored when there is no WAL yet).
    pub force_new_cluster: bool,
    /// (member id, ConfChange context bytes), used only to bootstrap a new WAL.
    pub initial_peers: Vec<(u64, Vec<u8>)>,
    /// A new WAL for a member added to a running cluster: empty log, no initial peers.
    pub join_existing: bool,
    /// The backend's consistent index: entries up to it are not delivered again.
    pub applied_index: u64,
    /// One raft tick (`--heartbeat-interval`).
    pub tick_interval: Duration,
    /// Election timeout in ticks (election ms / heartbeat ms).
    pub election_tick: usize,
    /// Heartbeat interval in ticks (1).
    pub heartbeat_tick: usize,
    /// Entries kept in memory below a snapshot for slow followers (etcd: 5000).
    pub snapshot_catchup_entries: u64,
    pub max_inflight_msgs: usize,
    pub max_size_per_msg: u64,
    /// `--unsafe-no-fsync`: WAL records are written but never fdatasynced.
    pub unsafe_no_fsync: bool,
}

impl RaftNodeConfig {
    /// A configuration with etcd's defaults: 100 ms ticks, 1 s elections.
    pub fn new(id: u64, cluster_id: u64, member_dir: PathBuf) -> RaftNodeConfig {
        RaftNodeConfig {
            id,
            cluster_id,
            wal_dir: member_dir.join("wal"),
            force_new_cluster: false,
            member_dir,
            initial_peers: Vec::new(),
            join_existing: false,
            applied_index: 0,
            tick_interval: Duration::from_millis(100),
            election_tick: 10,
            heartbeat_tick: 1,
            snapshot_catchup_entries: 5000,
            max_inflight_msgs: 4096 / 8,
            max_size_per_msg: 1024 * 1024,
            unsafe_no_fsync: false,
        }
    }
}

/// Committed raft output for the applier, in log order.
#[derive(Debug, Clone, Default)]
pub struct ApplyBatch {
    /// Committed entries, contiguous and increasing. Includes the leader's
    /// empty entry of each term (EntryNormal with empty data) and conf change
    /// entries, for which the applier must call [`RaftNode::apply_conf_change`].
    pub entries: Vec<Entry>,
    /// A snapshot received from the leader, to be restored before `entries`.
    pub snapshot: Option<Snapshot>,
}

/// A cheap view of the node's state, republished by the loop.
#[derive(Debug, Clone)]
pub struct RaftStatus {
    pub id: u64,
    pub cluster_id: u64,
    /// 0 when no leader is known.
    pub leader_id: u64,
    pub term: u64,
    pub commit_index: u64,
    /// The last index handed to the apply channel.
    pub applied_index: u64,
    pub last_index: u64,
    /// The index of the newest snapshot on disk.
    pub snapshot_index: u64,
    pub role: StateRole,
    pub is_learner: bool,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    /// On the leader: every member's replication progress (empty elsewhere).
    pub progress: Vec<PeerProgress>,
}

/// How far the leader knows a member's log matches its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PeerProgress {
    pub id: u64,
    pub matched: u64,
    pub recent_active: bool,
}

/// The leader as this member knows it; published when it changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leader {
    /// 0 while no leader is known.
    pub id: u64,
    /// When this member learnt of `id` (or lost its leader, for 0).
    pub since: Instant,
    /// The raft loop has stopped: no leader will come.
    pub stopped: bool,
}

pub(crate) struct Shared {
    pub status: RwLock<RaftStatus>,
    pub stopped: AtomicBool,
    pub pending_proposals: AtomicUsize,
    pub leader: watch::Sender<Leader>,
    /// Linearizable readers waiting for the loop to take them into a ReadIndex round.
    pub reads: SharedReads,
}

struct Inner {
    commands: mpsc::UnboundedSender<Command>,
    shared: Arc<Shared>,
    metadata: WalMetadata,
    runtime: RaftRuntime,
}

/// The handle to a running raft node. Clone freely.
#[derive(Clone)]
pub struct RaftNode {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RaftNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftNode")
            .field("status", &self.status())
            .finish()
    }
}

impl RaftNode {
    /// Bootstraps or restores the member in `cfg.member_dir` and starts the
    /// raft loop thread. Committed entries arrive on the returned receiver.
    pub fn start(
        cfg: RaftNodeConfig,
        transport: Arc<dyn Transport>,
    ) -> Result<(RaftNode, mpsc::UnboundedReceiver<ApplyBatch>), RaftError> {
        let runtime = RaftRuntime::start().map_err(RaftError::Spawn)?;
        RaftNode::start_on(cfg, transport, runtime)
    }

    /// As [`RaftNode::start`], with the loop on `runtime`, where the transport's tasks run too
    /// (see [`crate::raft_runtime`]). The node keeps the runtime.
    pub fn start_on(
        cfg: RaftNodeConfig,
        transport: Arc<dyn Transport>,
        runtime: RaftRuntime,
    ) -> Result<(RaftNode, mpsc::UnboundedReceiver<ApplyBatch>), RaftError> {
        let logger = raft_logger(cfg.id);
        let recovered = recover(&cfg, &logger)?;
        let metadata = recovered.metadata;
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (apply_tx, apply_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            status: RwLock::new(RaftStatus {
                id: metadata.node_id,
                cluster_id: metadata.cluster_id,
                leader_id: 0,
                term: 0,
                commit_index: 0,
                applied_index: 0,
                last_index: 0,
                snapshot_index: recovered.snapshot_index,
                role: StateRole::Follower,
                is_learner: false,
                voters: Vec::new(),
                learners: Vec::new(),
                progress: Vec::new(),
            }),
            stopped: AtomicBool::new(false),
            pending_proposals: AtomicUsize::new(0),
            leader: watch::Sender::new(Leader { id: 0, since: Instant::now(), stopped: false }),
            reads: SharedReads::default(),
        });
        let raft_loop = RaftLoop::new(&cfg, recovered, transport, apply_tx, cmd_rx, shared.clone());
        raft_loop.publish_status();
        let running = runtime.handle().spawn(raft_loop.run());
        // a panic would end the task unseen and leave a member that cannot write
        runtime.handle().spawn(async move {
            if running.await.is_err_and(|e| e.is_panic()) {
                tracing::error!("the raft loop panicked");
                std::process::abort();
            }
        });
        Ok((
            RaftNode {
                inner: Arc::new(Inner {
                    commands: cmd_tx,
                    shared,
                    metadata,
                    runtime,
                }),
            },
            apply_rx,
        ))
    }

    /// The runtime the raft loop runs on, for the peer listener's connections.
    pub fn runtime(&self) -> &tokio::runtime::Handle {
        self.inner.runtime.handle()
    }

    fn send(&self, cmd: Command) -> Result<(), RaftError> {
        if self.inner.shared.stopped.load(Ordering::Acquire) {
            return Err(RaftError::Stopped);
        }
        self.inner
            .commands
            .send(cmd)
            .map_err(|_| RaftError::Stopped)
    }

    /// Hands `data` to raft as a new entry. Ok means raft-rs accepted it (a
    /// follower forwards it to the leader), not that it is committed.
    pub async fn propose(&self, data: Vec<u8>) -> Result<(), RaftError> {
        let (reply, rx) = oneshot::channel();
        self.hand_over(data, ProposeReply::Wait(reply)).map_err(|(e, _)| e)?;
        rx.await.map_err(|_| RaftError::Stopped)?
    }

    /// Hands `data` to raft without waiting for the raft loop to take it: for a
    /// proposer that waits for the entry to be applied anyway. Errors found at
    /// once come back with `data` (`NoLeader`: nothing was proposed, so the
    /// caller may wait for a leader and submit it again); a refusal by the loop
    /// (no leader by then, proposal dropped) is passed to `on_refused`, on the
    /// raft thread, so keep it short.
    pub fn submit(&self, data: Vec<u8>, on_refused: Box<dyn FnOnce(RaftError) + Send>) -> Result<(), (RaftError, Vec<u8>)> {
        self.hand_over(data, ProposeReply::OnRefused(on_refused))
    }

    fn hand_over(&self, data: Vec<u8>, reply: ProposeReply) -> Result<(), (RaftError, Vec<u8>)> {
        if self.inner.shared.status.read().leader_id == 0 {
            return Err((RaftError::NoLeader, data));
        }
        let pending = &self.inner.shared.pending_proposals;
        if pending.fetch_add(1, Ordering::AcqRel) >= MAX_PENDING_PROPOSALS {
            pending.fetch_sub(1, Ordering::AcqRel);
            return Err((RaftError::TooManyRequests, data));
        }
        if let Err(e) = self.send(Command::Propose { data, reply }) {
            pending.fetch_sub(1, Ordering::AcqRel);
            return Err((e, Vec::new()));
        }
        Ok(())
    }

    /// A linearizable read index: once the applier has applied up to it, a
    /// local read sees every write committed before this call. Concurrent
    /// callers share one round. Retries until it succeeds: wrap the call in
    /// `tokio::time::timeout` for a deadline.
    pub async fn read_index(&self) -> Result<u64, RaftError> {
        let (reply, rx) = oneshot::channel();
        match self.inner.shared.reads.push(reply) {
            Err(_) => return Err(RaftError::Stopped),
            // the loop is idle: wake it (later readers join without waking it)
            Ok(true) => self.send(Command::ReadsQueued)?,
            Ok(false) => {}
        }
        rx.await.map_err(|_| RaftError::Stopped)?
    }

    /// Applies a committed conf change to raft; returns the new configuration.
    /// Called by the applier, in log order, for every conf change entry.
    pub async fn apply_conf_change(&self, cc: ConfChangeV2) -> Result<ConfState, RaftError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::ApplyConfChange { cc, reply })?;
        rx.await.map_err(|_| RaftError::Stopped)?
    }

    /// Proposes a conf change as etcd does: an `EntryConfChange` entry holding etcd's bytes
    /// (raft-rs's own encoder would write its numbering, which etcd members misread).
    pub async fn propose_conf_change(&self, cc: &EtcdConfChange) -> Result<(), RaftError> {
        if self.inner.shared.status.read().leader_id == 0 {
            return Err(RaftError::NoLeader);
        }
        let data = cc.encode();
        let (reply, rx) = oneshot::channel();
        self.send(Command::ProposeConfChange { data, reply })?;
        rx.await.map_err(|_| RaftError::Stopped)?
    }

    /// Tells raft that backend state up to `index` is durable: a snapshot is
    /// recorded at `index` and the log before it is released (keeping the
    /// catch-up tail in memory); `data` is the snapshot's data (etcd's v2 store JSON).
    /// Errors are logged by the loop.
    pub fn compact(&self, index: u64, data: Vec<u8>) {
        let _ = self.send(Command::Compact { index, data });
    }

    /// Delivers a message from a peer.
    pub fn step(&self, msg: Message) {
        let _ = self.send(Command::Step(Box::new(msg)));
    }

    /// Starts an election now.
    pub fn campaign(&self) {
        let _ = self.send(Command::Campaign);
    }

    /// Asks the leader to hand leadership to `to`.
    pub fn transfer_leader(&self, to: u64) {
        let _ = self.send(Command::TransferLeader(to));
    }

    /// Reports that `id` could not be reached (stop pipelining to it).
    /// Tells raft whether a snapshot sent to `id` arrived.
    pub fn report_snapshot(&self, id: u64, finished: bool) {
        let _ = self.send(Command::ReportSnapshot { id, finished });
    }

    pub fn report_unreachable(&self, id: u64) {
        let _ = self.send(Command::ReportUnreachable(id));
    }

    /// The latest status the loop published.
    pub fn status(&self) -> RaftStatus {
        self.inner.shared.status.read().clone()
    }

    /// Reads one thing from the status without copying it (a copy allocates its member lists;
    /// request paths ask for the term or leader on every call).
    pub fn with_status<R>(&self, f: impl FnOnce(&RaftStatus) -> R) -> R {
        f(&self.inner.shared.status.read())
    }

    /// The leader now and when this member learnt of it.
    pub fn leader(&self) -> Leader {
        *self.inner.shared.leader.borrow()
    }

    /// Waits until a leader is known: Ok(its id), or `NoLeader` once `deadline` passes
    /// (`Stopped` if the loop stops meanwhile).
    pub async fn wait_for_leader(&self, deadline: tokio::time::Instant) -> Result<u64, RaftError> {
        self.wait_leader_where(deadline, |l| l.id != 0).await
    }

    /// Waits until the leader is another than `seen` (a new election's winner, or none):
    /// Ok(the new leader's id, 0 for none), or `NoLeader` once `deadline` passes.
    pub async fn wait_leader_change(&self, seen: u64, deadline: tokio::time::Instant) -> Result<u64, RaftError> {
        self.wait_leader_where(deadline, |l| l.id != seen).await
    }

    async fn wait_leader_where(
        &self,
        deadline: tokio::time::Instant,
        done: impl Fn(&Leader) -> bool,
    ) -> Result<u64, RaftError> {
        let mut rx = self.inner.shared.leader.subscribe();
        let waited = tokio::time::timeout_at(deadline, rx.wait_for(|l| l.stopped || done(l))).await;
        match waited {
            Ok(Ok(l)) if !l.stopped => Ok(l.id),
            Ok(_) => Err(RaftError::Stopped),
            Err(_) => Err(RaftError::NoLeader),
        }
    }

    /// The member and cluster ids stored in the WAL (for the server to check).
    pub fn wal_metadata(&self) -> WalMetadata {
        self.inner.metadata
    }

    /// True once the loop has exited.
    pub fn is_stopped(&self) -> bool {
        self.inner.shared.stopped.load(Ordering::Acquire)
    }

    /// Stops the loop after it has persisted what it holds; the WAL is closed
    /// when this returns. Calling it again is harmless.
    pub async fn stop(&self) {
        let (reply, rx) = oneshot::channel();
        if self.send(Command::Stop { reply }).is_ok() {
            let _ = rx.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use raft::eraftpb::EntryType;

    use super::*;
    use crate::etcd_conf_change::EtcdConfChangeType;
    use crate::recovery::conf_change_of;
    use crate::transport::NoopTransport;
    use crate::wal::Wal;

    const TICK: Duration = Duration::from_millis(50);
    const ELECTION_TICKS: usize = 10;

    fn config(member_dir: PathBuf, applied_index: u64) -> RaftNodeConfig {
        RaftNodeConfig {
            initial_peers: vec![(1, b"member-1".to_vec())],
            applied_index,
            tick_interval: TICK,
            election_tick: ELECTION_TICKS,
            snapshot_catchup_entries: 2,
            ..RaftNodeConfig::new(1, 0xc1, member_dir)
        }
    }

    fn start(cfg: RaftNodeConfig) -> (RaftNode, mpsc::UnboundedReceiver<ApplyBatch>) {
        RaftNode::start(cfg, Arc::new(NoopTransport)).expect("raft node starts")
    }

    async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Receives `n` committed entries, applying conf changes as the applier would.
    async fn apply(
        node: &RaftNode,
        rx: &mut mpsc::UnboundedReceiver<ApplyBatch>,
        n: usize,
    ) -> Vec<Entry> {
        let mut out = Vec::new();
        while out.len() < n {
            let batch = tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .expect("committed entries arrive")
                .expect("apply channel open");
            for e in &batch.entries {
                if let Some(cc) = conf_change_of(e).unwrap() {
                    node.apply_conf_change(cc).await.unwrap();
                }
            }
            out.extend(batch.entries);
        }
        assert_eq!(out.len(), n, "more entries than expected: {out:?}");
        out
    }

    fn summary(entries: &[Entry]) -> Vec<(u64, u64, Vec<u8>)> {
        entries
            .iter()
            .map(|e| (e.index, e.term, e.data.to_vec()))
            .collect()
    }

    /// Bootstraps, elects, and commits "a", "b", "c" at indexes 3..=5, term 2.
    async fn run_first_life(dir: &std::path::Path) {
        let (node, mut rx) = start(config(dir.to_path_buf(), 0));
        wait_for("leadership", || node.status().role == StateRole::Leader).await;
        apply(&node, &mut rx, 2).await;
        for d in [b"a", b"b", b"c"] {
            node.propose(d.to_vec()).await.unwrap();
        }
        let ents = apply(&node, &mut rx, 3).await;
        assert_eq!(ents[2].index, 5);
        node.stop().await;
    }

    #[tokio::test]
    async fn single_member_bootstraps_leads_at_once_and_applies_in_order() {
        let tmp = tempfile::tempdir().unwrap();
        // An election timeout far beyond wait_for's bound: leadership within that bound means
        // the lone voter campaigned at start instead of waiting for a timeout.
        let cfg = RaftNodeConfig { election_tick: 100_000, ..config(tmp.path().join("member"), 0) };
        let (node, mut rx) = start(cfg);
        wait_for("leadership", || node.status().role == StateRole::Leader).await;
        assert_eq!(node.status().leader_id, 1);
        assert_eq!(
            node.wal_metadata(),
            WalMetadata {
                node_id: 1,
                cluster_id: 0xc1
            }
        );

        let ents = apply(&node, &mut rx, 2).await;
        assert_eq!(ents[0].index, 1);
        assert_eq!(ents[0].get_entry_type(), EntryType::EntryConfChange);
        let cc = EtcdConfChange::decode(&ents[0].data).unwrap();
        assert_eq!(cc.change_type, EtcdConfChangeType::AddNode);
        assert_eq!(cc.node_id, 1);
        assert_eq!(cc.context, b"member-1".to_vec());
        // The new leader's empty entry.
        assert_eq!((ents[1].index, ents[1].term), (2, 2));
        assert!(ents[1].data.is_empty());

        for d in [b"a", b"b", b"c"] {
            node.propose(d.to_vec()).await.unwrap();
        }
        let ents = apply(&node, &mut rx, 3).await;
        assert_eq!(
            summary(&ents),
            vec![
                (3, 2, b"a".to_vec()),
                (4, 2, b"b".to_vec()),
                (5, 2, b"c".to_vec())
            ]
        );
        assert_eq!(node.status().voters, vec![1]);

        // Concurrent reads all get an index covering every committed write.
        let mut reads = Vec::new();
        for _ in 0..10 {
            let node = node.clone();
            reads.push(tokio::spawn(async move { node.read_index().await }));
        }
        for r in reads {
            let index = r.await.unwrap().unwrap();
            assert!(
                index >= 5,
                "read index {index} is below the last committed write"
            );
        }

        node.stop().await;
        assert!(node.is_stopped());
        assert!(matches!(
            node.propose(b"x".to_vec()).await,
            Err(RaftError::Stopped)
        ));
        assert!(matches!(node.read_index().await, Err(RaftError::Stopped)));
    }

    #[tokio::test]
    async fn concurrent_proposals_all_commit_in_one_log() {
        let tmp = tempfile::tempdir().unwrap();
        let (node, mut rx) = start(config(tmp.path().join("member"), 0));
        wait_for("leadership", || node.status().role == StateRole::Leader).await;
        apply(&node, &mut rx, 2).await;
        let mut tasks = Vec::new();
        for i in 0..50u32 {
            let node = node.clone();
            tasks.push(tokio::spawn(async move {
                node.propose(i.to_be_bytes().to_vec()).await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let ents = apply(&node, &mut rx, 50).await;
        let indexes: Vec<u64> = ents.iter().map(|e| e.index).collect();
        assert_eq!(indexes, (3..53).collect::<Vec<_>>());
        let mut data: Vec<Vec<u8>> = ents.iter().map(|e| e.data.to_vec()).collect();
        data.sort();
        assert_eq!(
            data,
            (0..50u32)
                .map(|i| i.to_be_bytes().to_vec())
                .collect::<Vec<_>>()
        );
        node.stop().await;
    }

    #[tokio::test]
    async fn restart_redelivers_only_entries_after_the_applied_index() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("member");
        run_first_life(&dir).await;

        // The backend had applied up to 4 when the process died.
        let mut cfg = config(dir.clone(), 4);
        cfg.initial_peers = vec![(9, b"ignored on restart".to_vec())];
        let (node, mut rx) = start(cfg);
        wait_for("leadership", || node.status().role == StateRole::Leader).await;
        let ents = apply(&node, &mut rx, 2).await;
        assert_eq!(
            summary(&ents),
            vec![(5, 2, b"c".to_vec()), (6, 3, Vec::new())],
            "entry 5 again, then the new term's empty entry"
        );
        let status = node.status();
        assert_eq!(status.term, 3);
        assert_eq!(status.voters, vec![1]);
        node.propose(b"d".to_vec()).await.unwrap();
        assert_eq!(
            summary(&apply(&node, &mut rx, 1).await),
            vec![(7, 3, b"d".to_vec())]
        );
        assert!(node.read_index().await.unwrap() >= 7);
        node.stop().await;
    }

    #[tokio::test]
    async fn compact_then_restart_starts_the_log_after_the_snapshot() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("member");
        run_first_life(&dir).await;

        let (node, mut rx) = start(config(dir.clone(), 5));
        wait_for("leadership", || node.status().role == StateRole::Leader).await;
        apply(&node, &mut rx, 1).await; // the empty entry at 6, term 3
        for i in 0..4u8 {
            node.propose(vec![i]).await.unwrap();
        }
        let ents = apply(&node, &mut rx, 4).await;
        assert_eq!(ents[3].index, 10);
        node.compact(9, Vec::new());
        wait_for("the snapshot", || node.status().snapshot_index == 9).await;
        let snap = Snapshotter::new(&dir.join("snap"))
            .unwrap()
            .load_newest()
            .unwrap()
            .unwrap();
        assert_eq!(
            (snap.get_metadata().index, snap.get_metadata().term),
            (9, 3)
        );
        assert_eq!(snap.get_metadata().get_conf_state().voters, vec![1]);
        node.stop().await;

        let (node, mut rx) = start(config(dir.clone(), 10));
        wait_for("leadership", || node.status().role == StateRole::Leader).await;
        let ents = apply(&node, &mut rx, 1).await;
        assert_eq!(summary(&ents), vec![(11, 4, Vec::new())]);
        let status = node.status();
        assert_eq!(
            (status.snapshot_index, status.term, status.last_index),
            (9, 4, 11)
        );
        assert_eq!(
            status.voters,
            vec![1],
            "membership comes back from the snapshot"
        );
        node.propose(b"after".to_vec()).await.unwrap();
        assert_eq!(
            summary(&apply(&node, &mut rx, 1).await),
            vec![(12, 4, b"after".to_vec())]
        );
        node.stop().await;
    }

    #[tokio::test]
    async fn backend_older_than_the_snapshot_is_a_startup_error() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("member");
        run_first_life(&dir).await;
        let (node, _rx) = start(config(dir.clone(), 5));
        node.compact(5, Vec::new());
        wait_for("the snapshot", || node.status().snapshot_index == 5).await;
        node.stop().await;
        match RaftNode::start(config(dir, 3), Arc::new(NoopTransport)) {
            Err(RaftError::BackendBehindSnapshot {
                applied: 3,
                snapshot: 5,
            }) => {}
            other => panic!(
                "expected BackendBehindSnapshot, got {:?}",
                other.map(|_| ())
            ),
        }
    }

    #[tokio::test]
    async fn without_a_leader_propose_fails_at_once_and_reads_wait() {
        let tmp = tempfile::tempdir().unwrap();
        let mut cfg = config(tmp.path().join("member"), 0);
        // Two voters and no transport: no election can succeed.
        cfg.initial_peers = vec![(1, Vec::new()), (2, Vec::new())];
        let (node, _rx) = start(cfg);
        // No leader ever comes: a propose that waited for one would never return.
        let proposed = tokio::time::timeout(Duration::from_secs(5), node.propose(b"x".to_vec())).await;
        assert!(matches!(proposed, Ok(Err(RaftError::NoLeader))), "{proposed:?}");
        let read = tokio::time::timeout(TICK * 4, node.read_index()).await;
        assert!(
            read.is_err(),
            "a read index without a leader must wait for the caller's deadline"
        );
        node.stop().await;
    }

    #[tokio::test]
    async fn waiting_for_a_leader_ends_with_the_election_the_deadline_or_the_stop() {
        let tmp = tempfile::tempdir().unwrap();
        let mut cfg = config(tmp.path().join("two"), 0);
        // Two voters and no transport: no leader ever comes.
        cfg.initial_peers = vec![(1, Vec::new()), (2, Vec::new())];
        let (node, _rx) = start(cfg);
        let waited = node.wait_for_leader(tokio::time::Instant::now() + TICK * 4).await;
        assert!(matches!(waited, Err(RaftError::NoLeader)), "{waited:?}");
        let pending = tokio::spawn({
            let node = node.clone();
            async move { node.wait_for_leader(tokio::time::Instant::now() + Duration::from_secs(3600)).await }
        });
        node.stop().await;
        let stopped = tokio::time::timeout(Duration::from_secs(5), pending).await.expect("the stop ends the wait").unwrap();
        assert!(matches!(stopped, Err(RaftError::Stopped)), "{stopped:?}");

        let (node, _rx) = start(config(tmp.path().join("one"), 0));
        let far = tokio::time::Instant::now() + Duration::from_secs(3600);
        assert_eq!(node.wait_for_leader(far).await.unwrap(), 1);
        assert_eq!(node.leader().id, 1);
        assert_eq!(node.wait_leader_change(0, far).await.unwrap(), 1);
        node.stop().await;
    }

    #[tokio::test]
    async fn a_proposal_the_loop_gets_without_a_leader_is_held_then_refused_or_failed_on_stop() {
        let tmp = tempfile::tempdir().unwrap();
        let mut cfg = config(tmp.path().join("member"), 0);
        // Two voters and no transport: no leader ever comes.
        cfg.initial_peers = vec![(1, Vec::new()), (2, Vec::new())];
        let (node, _rx) = start(cfg);
        // as if the leader vanished between the handle's check and the loop
        let hand_to_loop = || {
            let (reply, rx) = oneshot::channel();
            node.inner.shared.pending_proposals.fetch_add(1, Ordering::AcqRel);
            node.send(Command::Propose { data: b"x".to_vec(), reply: ProposeReply::Wait(reply) }).unwrap();
            rx
        };
        let held = hand_to_loop();
        // held for two election timeouts (20 ticks), then refused: nothing was proposed
        let refused = tokio::time::timeout(Duration::from_secs(5), held).await.expect("refused after the hold").unwrap();
        assert!(matches!(refused, Err(RaftError::NoLeader)), "{refused:?}");
        let held = hand_to_loop();
        node.stop().await;
        assert!(matches!(held.await.unwrap(), Err(RaftError::Stopped)));
        assert_eq!(node.inner.shared.pending_proposals.load(Ordering::Acquire), 0);
    }

    #[tokio::test]
    async fn force_new_cluster_removes_the_other_members_after_the_committed_log() {
        let tmp = tempfile::tempdir().unwrap();
        let member_dir = tmp.path().join("member");
        // a dedicated WAL dir (--wal-dir), created by the first start
        let wal_dir = tmp.path().join("elsewhere").join("wal");
        let three = |applied, force| RaftNodeConfig {
            initial_peers: vec![(1, b"m1".to_vec()), (2, b"m2".to_vec()), (3, b"m3".to_vec())],
            wal_dir: wal_dir.clone(),
            force_new_cluster: force,
            ..config(member_dir.clone(), applied)
        };
        // First life: members 2 and 3 never answer, so only the bootstrap entries commit.
        let (node, mut rx) = start(three(0, false));
        apply(&node, &mut rx, 3).await;
        let mut voters = node.status().voters;
        voters.sort();
        assert_eq!(voters, vec![1, 2, 3]);
        node.stop().await;
        assert!(Wal::exists(&wal_dir) && !member_dir.join("wal").exists());
        // an entry that never committed (commit stays 3), as an old leader could have left
        let (mut wal, contents) = Wal::open(&wal_dir, (0, 0)).unwrap();
        let term = contents.hard_state.term;
        assert_eq!(contents.hard_state.commit, 3);
        let mut stale = Entry::default();
        (stale.index, stale.term, stale.data) = (4, term, b"uncommitted".to_vec().into());
        wal.save(None, &[stale]).unwrap();
        drop(wal);

        let (node, mut rx) = start(three(3, true));
        let ents = apply(&node, &mut rx, 2).await;
        let removed: Vec<(u64, u64, u64)> = ents
            .iter()
            .map(|e| {
                let cc = EtcdConfChange::decode(&e.data).unwrap();
                assert_eq!(cc.change_type, EtcdConfChangeType::RemoveNode);
                (e.index, e.term, cc.node_id)
            })
            .collect();
        assert_eq!(removed, vec![(4, term, 2), (5, term, 3)]);
        wait_for("leadership alone", || node.status().role == StateRole::Leader).await;
        assert_eq!(node.status().voters, vec![1]);
        node.propose(b"alone".to_vec()).await.unwrap();
        node.stop().await;

        // the removals were written to the WAL as committed: a plain restart is still alone
        let (node, _rx) = start(three(5, false));
        wait_for("leadership after a plain restart", || node.status().role == StateRole::Leader).await;
        assert_eq!(node.status().voters, vec![1]);
        node.stop().await;
    }

    /// etcd's AddLearnerNode is 3, a value raft-rs's own enum lacks: the leader must still take
    /// the proposal (patched raft-rs), and the log must keep etcd's bytes.
    #[tokio::test]
    async fn leader_takes_etcd_learner_and_update_conf_changes_and_keeps_their_bytes() {
        let tmp = tempfile::tempdir().unwrap();
        let (node, mut rx) = start(config(tmp.path().join("member"), 0));
        wait_for("leadership", || node.status().role == StateRole::Leader).await;
        apply(&node, &mut rx, 2).await;
        let learner = EtcdConfChange {
            id: 42,
            change_type: EtcdConfChangeType::AddLearnerNode,
            node_id: 7,
            context: br#"{"id":7,"peerURLs":["http://127.0.0.1:1"],"isLearner":true}"#.to_vec(),
        };
        node.propose_conf_change(&learner).await.unwrap();
        let ents = apply(&node, &mut rx, 1).await;
        assert_eq!(ents[0].get_entry_type(), EntryType::EntryConfChange);
        assert_eq!(ents[0].data.to_vec(), learner.encode());
        wait_for("the learner in raft's configuration", || node.status().learners == vec![7]).await;

        // UpdateNode (2, raft-rs's AddLearnerNode number) changes no raft configuration
        let update = EtcdConfChange { id: 43, change_type: EtcdConfChangeType::UpdateNode, node_id: 1, context: b"{}".to_vec() };
        node.propose_conf_change(&update).await.unwrap();
        let ents = apply(&node, &mut rx, 1).await;
        assert_eq!(EtcdConfChange::decode(&ents[0].data).unwrap(), update);
        assert_eq!((node.status().voters, node.status().learners), (vec![1], vec![7]));
        node.stop().await;
    }
}
