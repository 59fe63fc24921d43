//! `etcdutl-rs export-etcd-data-dir` (etcd-rs only): the way back to etcd. From a stopped
//! etcd-rs member's data dir it writes a data dir etcd 3.4/3.5 starts on as the same member:
//!
//! - `member/snap/db`: the backend in etcd's bbolt format (etcd_backend.rs), whose consistent
//!   index is the member's applied index;
//! - `member/snap/<term>-<index>.snap`: a raft snapshot AT that applied index, its data the v2
//!   store JSON etcd recovers membership and the cluster version from (v2store.rs), its conf
//!   state the members' voters and learners;
//! - `member/wal/` (or `--output-wal-dir`): etcd's WAL with the member and cluster IDs, the
//!   snapshot record, the raft entries after the applied index and the HardState.
//!
//! Invariants: the snapshot, the db's consistent index and the WAL's snapshot record name the
//! same (index, term), so etcd replays exactly the entries the member had not applied; entries
//! up to it are carried by the snapshot state. The source is only read, under its db lock (a
//! running member is refused). The output appears whole or not at all: everything is written
//! under `<output>.tmp` (and `<wal>.tmp`), fsynced, then renamed; an existing output is refused.
//!
//! With `--output-wal-dir W2` (maybe on another filesystem, so no single rename can publish
//! both) the data dir's rename is the commit: `<output>.export-pending` (W2's path) is written
//! first, then `W2.tmp` is renamed to W2, then `<output>.tmp` to the output, then the marker is
//! removed. A W2 that the marker names while the output does not exist is an interrupted
//! export's: the next run removes it (saying so) and exports again. Test hook:
//! `ETCDUTL_RS_EXPORT_CRASH_AT=<step>` ([`EXPORT_CRASH_STEPS`]) kills the process at a step.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use etcd_mvcc::backend::{META_CONSISTENT_INDEX, META_TABLE, META_TERM};
use etcd_proto::etcdserverpb::Metadata;
use etcd_proto::membershippb::Member;
use etcd_proto::raftpb::{ConfState, Snapshot, SnapshotMetadata};
use etcd_raft::etcd_wal::{eraftpb_conv, EtcdWalWriter};
use etcd_raft::{Snapshotter, Wal};
use redb::ReadableDatabase;

use super::{backend_path, lock, stat, EtcdutlError};
use crate::etcd_backend::{export_etcd_db_from, writes_conf_state, Converted};
use crate::membership::Membership;
use crate::takeover::{absolute, parent_of};

/// What to export and where.
#[derive(Debug, Clone)]
pub struct ExportConfig {
    /// The stopped etcd-rs member's data dir.
    pub data_dir: PathBuf,
    /// Its WAL dir when it ran with `--wal-dir` (None: `<data-dir>/member/wal`).
    pub wal_dir: Option<PathBuf>,
    pub output_data_dir: PathBuf,
    /// etcd's `--wal-dir` for the output (None: `<output-data-dir>/member/wal`).
    pub output_wal_dir: Option<PathBuf>,
    /// How long to wait for a running member to release the db (None: indefinitely).
    pub timeout: Option<Duration>,
}

/// What an export wrote.
#[derive(Debug, Clone)]
pub struct Exported {
    pub member_id: u64,
    pub cluster_id: u64,
    pub snapshot_index: u64,
    pub snapshot_term: u64,
    /// Raft entries written after the snapshot (committed but not applied, or not committed).
    pub entries_after: usize,
    pub backend: Converted,
}

/// The test hook's variable (see the module doc).
pub const EXPORT_CRASH_ENV: &str = "ETCDUTL_RS_EXPORT_CRASH_AT";
/// The steps the hook can kill at, in order (`marked` and `wal-published` only with
/// `--output-wal-dir`).
pub const EXPORT_CRASH_STEPS: &[&str] = &["written", "marked", "wal-published", "published"];
/// Suffix of the marker beside the output data dir while a separate WAL dir is published.
pub const PENDING_SUFFIX: &str = ".export-pending";

fn other(what: &str, e: impl std::fmt::Display) -> EtcdutlError {
    EtcdutlError::Other(format!("export-etcd-data-dir: {what}: {e}"))
}

/// What the member's backend says: applied index and term, and the membership.
struct BackendState {
    applied_index: u64,
    applied_term: u64,
    members: Vec<Member>,
    removed: Vec<u64>,
    cluster_version: Option<String>,
}

fn read_backend(db: &redb::Database) -> Result<BackendState, EtcdutlError> {
    let txn = db.begin_read().map_err(|e| other("read backend", e))?;
    let meta = txn.open_table(META_TABLE).map_err(|e| other("meta table", e))?;
    let get = |k: &str| -> Result<u64, EtcdutlError> {
        Ok(meta.get(k).map_err(|e| other("meta table", e))?.map_or(0, |v| v.value()))
    };
    let (applied_index, applied_term) = (get(META_CONSISTENT_INDEX)?, get(META_TERM)?);
    let membership = Membership::load(db, 0, 0)?;
    Ok(BackendState {
        applied_index,
        applied_term,
        members: membership.members(),
        removed: membership.removed(),
        cluster_version: membership.cluster_version(),
    })
}

/// raft's conf state for these members (the conf state at the applied index, since etcd-rs
/// applies every conf change to the members table).
fn conf_state(members: &[Member]) -> ConfState {
    let (mut voters, mut learners) = (Vec::new(), Vec::new());
    for m in members {
        if m.raft_attrs.as_ref().is_some_and(|r| r.is_learner) {
            learners.push(m.id);
        } else {
            voters.push(m.id);
        }
    }
    voters.sort_unstable();
    learners.sort_unstable();
    ConfState { voters, learners, auto_leave: Some(false), ..Default::default() }
}

/// `<path><suffix>`, beside `path`.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// `<path>.tmp`: where an output is built before its rename.
fn tmp_of(path: &Path) -> PathBuf {
    sibling(path, ".tmp")
}

fn remove_dir_if_there(dir: &Path) -> Result<(), EtcdutlError> {
    etcd_raft::durable_fs::remove_dir_all_if_there(dir).map_err(|e| other(&format!("remove {}", dir.display()), e))?;
    Ok(())
}

/// Undoes what an export killed while publishing a separate WAL dir left (see the module doc):
/// the WAL dir its marker names, unless the output data dir made that export complete.
fn recover_interrupted(output_data_dir: &Path) -> Result<(), EtcdutlError> {
    let marker = sibling(output_data_dir, PENDING_SUFFIX);
    let wal = match fs::read(&marker) {
        Ok(b) => PathBuf::from(std::ffi::OsStr::from_bytes(&b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(other(&format!("read {}", marker.display()), e)),
    };
    if !output_data_dir.exists() {
        if wal.exists() {
            eprintln!(
                "removing {}: an earlier export was interrupted after publishing it and before {} (marker {}); exporting again",
                wal.display(),
                output_data_dir.display(),
                marker.display()
            );
        }
        remove_dir_if_there(&wal)?;
        remove_dir_if_there(&tmp_of(&wal))?;
    }
    fs::remove_file(&marker).map_err(|e| other(&format!("remove {}", marker.display()), e))?;
    fsync_dir(parent_of(&marker))
}

/// Writes the marker naming the separate WAL dir about to be published, durably.
fn write_marker(output_data_dir: &Path, wal: &Path) -> Result<PathBuf, EtcdutlError> {
    let marker = sibling(output_data_dir, PENDING_SUFFIX);
    let abs = absolute(wal);
    (|| {
        let mut f = fs::File::create(&marker)?;
        std::io::Write::write_all(&mut f, abs.as_os_str().as_bytes())?;
        f.sync_all()
    })()
    .map_err(|e| other(&format!("write {}", marker.display()), e))?;
    fsync_dir(parent_of(&marker))?;
    Ok(marker)
}

fn fsync_dir(dir: &Path) -> Result<(), EtcdutlError> {
    etcd_raft::durable_fs::fsync_dir(dir).map_err(|e| other(&format!("fsync {}", dir.display()), e))
}

/// Renames a finished `tmp` to `dest` and makes the rename durable.
fn publish(tmp: &Path, dest: &Path) -> Result<(), EtcdutlError> {
    fsync_dir(tmp)?;
    fs::rename(tmp, dest).map_err(|e| other(&format!("rename {} to {}", tmp.display(), dest.display()), e))?;
    fsync_dir(parent_of(dest))
}

fn crash_point(step: &str) {
    crate::takeover::crash_point_of(EXPORT_CRASH_ENV, step);
}

/// Writes the etcd data dir (see the module docs).
pub fn export_etcd_data_dir(cfg: &ExportConfig) -> Result<Exported, EtcdutlError> {
    let member = cfg.data_dir.join("member");
    let src_db = backend_path(&cfg.data_dir);
    stat(&src_db)?;
    let src_wal = cfg.wal_dir.clone().unwrap_or_else(|| member.join("wal"));
    recover_interrupted(&cfg.output_data_dir)?;
    for out in std::iter::once(&cfg.output_data_dir).chain(cfg.output_wal_dir.as_ref()) {
        if out.exists() {
            return Err(other("output", format!("{:?} exists", out.display().to_string())));
        }
    }
    // held until the end: no member can start on the source while it is read
    let db = lock::open_exclusive(&src_db, cfg.timeout, || {})?;
    let state = read_backend(&db)?;
    let snap = Snapshotter::new(&member.join("snap"))
        .and_then(|s| s.load_newest())
        .map_err(|e| other("etcd-rs snapshot", e))?;
    let (snap_index, snap_term) = snap.as_ref().map_or((0, 0), |s| (s.get_metadata().index, s.get_metadata().term));
    let wal = Wal::read(&src_wal, (snap_index, snap_term)).map_err(|e| other("etcd-rs WAL", e))?;

    // the (index, term) the export's snapshot stands at: the backend's applied index
    let applied = state.applied_index;
    if applied < snap_index {
        return Err(other("backend", format!("applied index {applied} is behind the raft snapshot at {snap_index}")));
    }
    let after = (applied - snap_index) as usize;
    if after > wal.entries.len() {
        return Err(other("WAL", format!("ends at index {} before the applied index {applied}", snap_index + wal.entries.len() as u64)));
    }
    let term = if after == 0 { snap_term } else { wal.entries[after - 1].term };
    if state.applied_term != 0 && state.applied_term != term {
        return Err(other("backend", format!("applied term {} but the log has term {term} at index {applied}", state.applied_term)));
    }
    // etcd-rs's WAL may hold a HardState older than its last commit (raft-rs reports commit
    // advances apart from the HardState, and recovery.rs raises it the same way): whatever the
    // member applied was committed
    let mut hard_state = wal.hard_state.clone();
    hard_state.commit = hard_state.commit.max(applied);
    hard_state.term = hard_state.term.max(term);
    let cs = conf_state(&state.members);

    let out_tmp = tmp_of(&cfg.output_data_dir);
    let wal_tmp = cfg.output_wal_dir.as_deref().map(tmp_of);
    for stale in std::iter::once(&out_tmp).chain(wal_tmp.as_ref()) {
        remove_dir_if_there(stale)?;
    }
    let result = (|| {
        let snap_dir = out_tmp.join("member").join("snap");
        fs::create_dir_all(&snap_dir).map_err(|e| other("create", e))?;
        let read = db.begin_read().map_err(|e| other("read backend", e))?;
        let backend = export_etcd_db_from(&read, &snap_dir.join("db"))?;
        if backend.consistent_index != applied {
            return Err(other("backend", format!("exported consistent index {} is not {applied}", backend.consistent_index)));
        }
        let data = crate::v2store::snapshot_json(&state.members, &state.removed, state.cluster_version.as_deref());
        let snapshot = Snapshot {
            data: Some(data),
            metadata: Some(SnapshotMetadata { conf_state: Some(cs.clone()), index: Some(applied), term: Some(term) }),
        };
        etcd_raft::etcd_snap::write_snap(&snap_dir, &snapshot).map_err(|e| other("snap file", e))?;

        let out_wal = wal_tmp.clone().unwrap_or_else(|| out_tmp.join("member").join("wal"));
        let md = Metadata { node_id: Some(wal.metadata.node_id), cluster_id: Some(wal.metadata.cluster_id) };
        let mut w = EtcdWalWriter::create(&out_wal, &md).map_err(|e| other("etcd WAL", e))?;
        // etcd 3.5 writes the conf state into WAL snapshot records, 3.4 does not
        let with_cs = writes_conf_state(state.cluster_version.as_deref()).then(|| cs.clone());
        w.save_snapshot(applied, term, with_cs).map_err(|e| other("etcd WAL", e))?;
        let entries = wal.entries[after..]
            .iter()
            .map(eraftpb_conv::entry_from_eraftpb)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| other("raft entry", e))?;
        let hs = eraftpb_conv::hard_state_from_eraftpb(&hard_state);
        w.save(&hs, &entries).map_err(|e| other("etcd WAL", e))?;
        w.finish().map_err(|e| other("etcd WAL", e))?;
        fsync_dir(&snap_dir)?;
        fsync_dir(&out_tmp.join("member"))?;
        crash_point("written");
        let marker = match (&wal_tmp, &cfg.output_wal_dir) {
            (Some(tmp), Some(wal)) => {
                let marker = write_marker(&cfg.output_data_dir, wal)?;
                crash_point("marked");
                publish(tmp, wal)?;
                crash_point("wal-published");
                Some(marker)
            }
            _ => None,
        };
        publish(&out_tmp, &cfg.output_data_dir)?;
        crash_point("published");
        if let Some(m) = marker {
            fs::remove_file(&m).map_err(|e| other(&format!("remove {}", m.display()), e))?;
            fsync_dir(parent_of(&m))?;
        }
        Ok(Exported {
            member_id: wal.metadata.node_id,
            cluster_id: wal.metadata.cluster_id,
            snapshot_index: applied,
            snapshot_term: term,
            entries_after: entries.len(),
            backend,
        })
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&out_tmp);
        if let Some(t) = &wal_tmp {
            let _ = fs::remove_dir_all(t);
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::new_member;

    #[test]
    fn the_conf_state_lists_voters_and_learners_in_order() {
        let ms = [new_member(9, "a", vec![], false), new_member(3, "b", vec![], true), new_member(5, "c", vec![], false)];
        let cs = conf_state(&ms);
        assert_eq!((cs.voters, cs.learners), (vec![5, 9], vec![3]));
    }
}
