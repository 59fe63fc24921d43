//! Building the raft state at start: bootstrap a new member or restore one.
//!
//! Bootstrap (no WAL yet): like etcd, the log starts with one ConfChange(AddNode)
//! entry per initial peer at indexes 1..=n, term 1, carrying the peer's context
//! bytes, with HardState {term 1, commit n}. The WAL is written in `wal.tmp/`
//! and renamed to `wal/`, so a crash leaves either no WAL or a complete one.
//!
//! The WAL is `cfg.wal_dir` (`member/wal`, or a dedicated `--wal-dir` created on first start).
//!
//! Restore: newest intact snapshot into `MemStorage`, then the WAL entries
//! after it and its HardState. The backend's applied index is the truth about
//! what was applied: entries at or below it were committed, so commit is raised
//! to it (bounded by the log), raft-rs is told they are applied (they are not
//! delivered again), and the conf changes among them are re-applied to raft
//! here, because the applier will not see them again.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use raft::eraftpb::{ConfChangeType, ConfChangeV2, ConfState, Entry, EntryType, HardState};
use raft::storage::MemStorage;
use raft::{Config, RawNode, Storage};

use crate::error::{RaftError, WalError};
use crate::etcd_conf_change::{EtcdConfChange, EtcdConfChangeType};
use crate::node::RaftNodeConfig;
use crate::snapshotter::Snapshotter;
use crate::durable_fs::parent_dir;
use crate::wal::{Wal, WalMetadata};

/// Everything the raft loop owns, ready to run.
pub(crate) struct Recovered {
    pub raw: RawNode<MemStorage>,
    pub wal: Wal,
    pub snapshotter: Snapshotter,
    pub metadata: WalMetadata,
    pub snapshot_index: u64,
    pub conf_state: ConfState,
}

fn create_dir(path: &Path) -> Result<(), RaftError> {
    fs::create_dir_all(path).map_err(|source| RaftError::CreateDir {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes the bootstrap WAL of a new member (see the module docs).
pub fn bootstrap_wal(cfg: &RaftNodeConfig, wal_dir: &Path) -> Result<(), RaftError> {
    // A member joining a running cluster starts with an empty log and no configuration: the
    // leader sends it the log (or a snapshot), conf changes included.
    if cfg.initial_peers.is_empty() && !cfg.join_existing {
        return Err(RaftError::NoInitialPeers);
    }
    // `<wal dir>.tmp` beside the WAL dir (`member/wal.tmp`, or next to a dedicated --wal-dir)
    let mut tmp_name = wal_dir.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = wal_dir.with_file_name(tmp_name);
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(|source| WalError::Io {
            path: tmp.clone(),
            source,
        })?;
    }
    let metadata = WalMetadata {
        node_id: cfg.id,
        cluster_id: cfg.cluster_id,
    };
    let mut wal = Wal::create(&tmp, metadata)?;
    wal.set_unsafe_no_fsync(cfg.unsafe_no_fsync);
    let mut entries = Vec::with_capacity(cfg.initial_peers.len());
    for (i, (id, context)) in cfg.initial_peers.iter().enumerate() {
        let cc = EtcdConfChange {
            id: 0,
            change_type: EtcdConfChangeType::AddNode,
            node_id: *id,
            context: context.clone(),
        };
        let mut e = Entry::default();
        e.set_entry_type(EntryType::EntryConfChange);
        e.term = 1;
        e.index = i as u64 + 1;
        e.data = cc.encode().into();
        entries.push(e);
    }
    let hs = HardState {
        term: if entries.is_empty() { 0 } else { 1 },
        commit: entries.len() as u64,
        ..Default::default()
    };
    wal.save(Some(&hs), &entries)?;
    drop(wal);
    let io = |source| WalError::Io {
        path: wal_dir.to_path_buf(),
        source,
    };
    fs::rename(&tmp, wal_dir).map_err(io)?;
    fs::File::open(parent_dir(wal_dir))
        .and_then(|d| d.sync_all())
        .map_err(io)?;
    tracing::info!(
        member = %format!("{:x}", cfg.id),
        peers = cfg.initial_peers.len(),
        "bootstrapped a new raft log"
    );
    Ok(())
}

/// The log's voters and learners after the snapshot's configuration and the conf changes in
/// `entries` (etcd's getIDs, learners kept apart so a learner is not taken for a voter).
fn members_in_log(
    snapshot_conf: Option<&ConfState>,
    entries: &[Entry],
) -> Result<(BTreeSet<u64>, BTreeSet<u64>), RaftError> {
    let mut voters: BTreeSet<u64> = BTreeSet::new();
    let mut learners: BTreeSet<u64> = BTreeSet::new();
    if let Some(cs) = snapshot_conf {
        voters.extend(cs.voters.iter().chain(&cs.voters_outgoing));
        learners.extend(cs.learners.iter().chain(&cs.learners_next));
    }
    for e in entries {
        let Some(cc) = conf_change_of(e)? else { continue };
        for c in cc.get_changes() {
            match c.get_change_type() {
                ConfChangeType::AddNode => {
                    learners.remove(&c.node_id);
                    voters.insert(c.node_id);
                }
                ConfChangeType::AddLearnerNode => {
                    voters.remove(&c.node_id);
                    learners.insert(c.node_id);
                }
                ConfChangeType::RemoveNode => {
                    voters.remove(&c.node_id);
                    learners.remove(&c.node_id);
                }
            }
        }
    }
    Ok((voters, learners))
}

/// etcd's restartAsStandaloneNode (`--force-new-cluster`): the uncommitted tail of the log is
/// dropped, one RemoveNode conf change per other member is appended at the commit index's term
/// and committed locally (written to the WAL with the raised commit index before raft starts),
/// so the applier removes the others from raft and from the membership as for any removal,
/// and this member, the only voter left, elects itself.
fn force_new_cluster(
    wal: &mut Wal,
    self_id: u64,
    snapshot_conf: Option<&ConfState>,
    entries: &mut Vec<Entry>,
    hs: &mut HardState,
) -> Result<(), RaftError> {
    if let Some(i) = entries.iter().position(|e| e.index > hs.commit) {
        tracing::info!(
            entry_index = entries[i].index,
            commit_index_from_wal = hs.commit,
            number_of_discarded_entries = entries.len() - i,
            "discarding uncommitted WAL entries"
        );
        entries.truncate(i);
    }
    let (voters, learners) = members_in_log(snapshot_conf, entries)?;
    if !voters.contains(&self_id) {
        return Err(RaftError::ForceNewClusterNotVoter(self_id));
    }
    let mut next = hs.commit + 1;
    let mut forced = Vec::new();
    for id in voters.iter().chain(&learners).filter(|id| **id != self_id) {
        let cc = EtcdConfChange {
            id: 0,
            change_type: EtcdConfChangeType::RemoveNode,
            node_id: *id,
            context: Vec::new(),
        };
        let mut e = Entry::default();
        e.set_entry_type(EntryType::EntryConfChange);
        e.term = hs.term;
        e.index = next;
        e.data = cc.encode().into();
        forced.push(e);
        next += 1;
    }
    hs.commit = next - 1;
    wal.save(Some(hs), &forced)?;
    entries.extend(forced);
    tracing::info!(
        local_member_id = %format!("{self_id:x}"),
        cluster_id = %format!("{:x}", wal.metadata().cluster_id),
        commit_index = hs.commit,
        removed = voters.len() + learners.len() - 1,
        "forcing restart member"
    );
    Ok(())
}

/// The etcd conf change an entry carries (None for a normal entry). Only etcd's V1 entries are
/// conf changes here: a V2 entry is a log etcd-rs wrote before 1.0 (etcd's servers never propose
/// V2), refused rather than misread.
pub fn etcd_conf_change_of(e: &Entry) -> Result<Option<EtcdConfChange>, RaftError> {
    let refused = |reason: String| RaftError::ConfChangeEntry { index: e.index, reason };
    match e.get_entry_type() {
        EntryType::EntryNormal => Ok(None),
        EntryType::EntryConfChange => EtcdConfChange::decode(&e.data).map(Some).map_err(|err| refused(err.to_string())),
        EntryType::EntryConfChangeV2 => Err(refused("a ConfChangeV2 entry".into())),
    }
}

/// The change raft-rs applies for an entry: None for normal entries and for etcd's UpdateNode,
/// which changes no raft configuration.
pub fn conf_change_of(e: &Entry) -> Result<Option<ConfChangeV2>, RaftError> {
    Ok(etcd_conf_change_of(e)?.and_then(|cc| cc.to_raft()))
}

/// Bootstraps or restores the member in `cfg.member_dir`.
pub(crate) fn recover(cfg: &RaftNodeConfig, logger: &slog::Logger) -> Result<Recovered, RaftError> {
    create_dir(&cfg.member_dir)?;
    let wal_dir = cfg.wal_dir.as_path();
    create_dir(parent_dir(wal_dir))?;
    let snapshotter = Snapshotter::new(&cfg.member_dir.join("snap"))?;
    let bootstrapping = !Wal::exists(wal_dir);
    if bootstrapping {
        bootstrap_wal(cfg, wal_dir)?;
    }

    let snapshot = snapshotter.load_newest()?;
    let (snap_index, snap_term) = snapshot
        .as_ref()
        .map_or((0, 0), |s| (s.get_metadata().index, s.get_metadata().term));
    let snapshot_conf = snapshot.as_ref().map(|s| s.get_metadata().get_conf_state().clone());
    let (mut wal, contents) = Wal::open(wal_dir, (snap_index, snap_term))?;
    wal.set_unsafe_no_fsync(cfg.unsafe_no_fsync);
    if cfg.unsafe_no_fsync {
        tracing::warn!("--unsafe-no-fsync: the WAL and the backend are not fsynced; a crash of the machine can lose acknowledged writes");
    }
    let metadata = contents.metadata;
    let mut entries = contents.entries;
    let last_index = entries.last().map_or(snap_index, |e| e.index);

    let mut hs = contents.hard_state;
    hs.term = hs.term.max(snap_term);
    hs.commit = hs.commit.max(snap_index);
    if hs.commit > last_index {
        tracing::warn!(
            commit = hs.commit,
            last_index,
            "WAL commit index is past its last entry; lowering it"
        );
        hs.commit = last_index;
    }
    if cfg.applied_index < snap_index {
        return Err(RaftError::BackendBehindSnapshot {
            applied: cfg.applied_index,
            snapshot: snap_index,
        });
    }
    if cfg.applied_index > last_index {
        tracing::warn!(
            applied = cfg.applied_index,
            last_index,
            "the backend has applied entries the WAL no longer holds; treating the WAL's end as applied"
        );
    }
    let applied = cfg.applied_index.min(last_index);
    if applied > hs.commit {
        hs.commit = applied;
    }
    if cfg.force_new_cluster && !bootstrapping {
        force_new_cluster(&mut wal, metadata.node_id, snapshot_conf.as_ref(), &mut entries, &mut hs)?;
    }

    let storage = MemStorage::new();
    if let Some(snap) = snapshot {
        storage.wl().apply_snapshot(snap)?;
    }
    if bootstrapping {
        let cs = ConfState {
            voters: cfg.initial_peers.iter().map(|(id, _)| *id).collect(),
            ..Default::default()
        };
        storage.wl().set_conf_state(cs);
    }
    storage.wl().append(&entries)?;
    let last_index = storage.last_index()?;
    storage.wl().set_hardstate(hs.clone());

    let config = Config {
        id: metadata.node_id,
        election_tick: cfg.election_tick,
        heartbeat_tick: cfg.heartbeat_tick,
        applied,
        max_size_per_msg: cfg.max_size_per_msg,
        max_inflight_msgs: cfg.max_inflight_msgs,
        check_quorum: true,
        pre_vote: true,
        // MsgApps to one follower made within one Ready (one per stepped proposal message)
        // travel as one: one frame to encode and decode, one append and one MsgAppResp there
        batch_append: true,
        ..Default::default()
    };
    config.validate()?;
    let mut raw = RawNode::new(&config, storage, logger)?;

    // Conf changes the backend already applied are not delivered again; apply
    // them to raft here so its configuration matches the backend's.
    let mut conf_state = raw.store().initial_state()?.conf_state;
    for e in entries.iter().take_while(|e| e.index <= applied) {
        if let Some(cc) = conf_change_of(e)? {
            conf_state = raw.apply_conf_change(&cc)?;
        }
    }
    raw.mut_store().wl().set_conf_state(conf_state.clone());

    tracing::info!(
        member = %format!("{:x}", metadata.node_id),
        term = hs.term,
        commit = hs.commit,
        applied,
        last_index,
        snapshot_index = snap_index,
        voters = ?conf_state.voters,
        "raft state restored"
    );
    Ok(Recovered {
        raw,
        wal,
        snapshotter,
        metadata,
        snapshot_index: snap_index,
        conf_state,
    })
}
