//! Taking over a data dir etcd 3.4 or 3.5 wrote (`member/wal` in etcd's WAL format,
//! `member/snap/*.snap`, `member/snap/db` in bbolt), also what `etcdctl snapshot restore` writes:
//! converted once, at start, into etcd-rs's own member dir (same paths, its own formats), which
//! then starts as any etcd-rs member does.
//!
//! What is carried over: the WAL metadata (member and cluster ID), the HardState (term, vote,
//! commit), the snapshot etcd would start from (index, term, conf state) and the WAL entries after
//! it with their terms, as etcd reads them (a torn last record ends the log, as etcd's repair
//! does); the whole backend (`etcd_backend::import_etcd_db`), whose consistent index is the
//! applied index: entries after it are applied again by etcd-rs as by etcd.
//!
//! Invariant (crash safety): at every instant the data dir holds etcd's untouched member dir as
//! `member`, or a complete, fsynced etcd-rs member dir (as `member.etcd-rs`, or as `member`).
//! etcd's files are only ever read and renamed, never written. The steps:
//!
//! | step | on disk after it | a start after a crash there |
//! | --- | --- | --- |
//! | build | `member` (etcd), `member.etcd-rs.tmp` partial | removes the temp dir, converts again |
//! | ready: rename temp -> `member.etcd-rs` | `member` (etcd), `member.etcd-rs` complete | does the two renames below |
//! | backup: rename `member` -> `member.etcd-backup` | `member.etcd-rs`, `member.etcd-backup` | does the rename below |
//! | switch: rename `member.etcd-rs` -> `member` | `member` (etcd-rs), `member.etcd-backup` | nothing left to do |
//!
//! Each rename is followed by an fsync of the data dir. `member.etcd-rs` existing is the marker
//! that a conversion completed. etcd's original is kept as `member.etcd-backup` (logged): an
//! operator can go back to etcd by renaming it back to `member`, which is safe only while this
//! member has not run with its cluster since (etcd-rs's raft log moves on without it). A new
//! takeover refuses to start while an old backup is there.
//!
//! With a dedicated `--wal-dir W` (etcd then keeps its WAL only in W and ignores `member/wal`,
//! its `WALDir()`), the WAL side is converted beside W, in W's parent, since W may be on another
//! filesystem than the data dir and a rename only stays atomic within one directory: etcd-rs's
//! WAL is built as `W.etcd-rs.tmp` (the member dir, without `wal`, as above), and the data dir's
//! `member.etcd-rs` stays the one marker that the whole conversion is complete. It holds
//! `takeover-wal-dir` (W's absolute path), so a start with another `--wal-dir` than the one the
//! pending renames are for is refused instead of finishing them wrongly. The order:
//!
//! | step | on disk after it | a start after a crash there |
//! | --- | --- | --- |
//! | build | `member`, W (etcd), `member.etcd-rs.tmp`, `W.etcd-rs.tmp` partial | removes both temps, converts again |
//! | wal-ready: rename `W.etcd-rs.tmp` -> `W.etcd-rs` | W (etcd), `W.etcd-rs` complete, no marker | no marker: removes `W.etcd-rs` and the temp, converts again |
//! | ready: rename temp -> `member.etcd-rs` | the marker: everything complete | does the four renames below |
//! | wal-backed-up: rename W -> `W.etcd-backup` | `W.etcd-rs`, `W.etcd-backup` | does the renames below |
//! | wal-switched: rename `W.etcd-rs` -> W | W (etcd-rs), `W.etcd-backup` | does the member renames below |
//! | backed-up, switched | as above; then `takeover-wal-dir` is removed | nothing left to do |
//!
//! The WAL side switches first, so `member.etcd-rs` outlives every `W.etcd-rs`: a `W.etcd-rs`
//! without the marker is always an incomplete build (and only exists while `member` is etcd's,
//! so a start on an etcd-rs member never removes a dir of that name). A W inside the member dir (other than
//! `member/wal` itself), or holding it, is refused: one side's renames would carry the other.
//!
//! Test hook: `ETCD_RS_TAKEOVER_CRASH_AT=<step>` kills the process with SIGKILL at a named step
//! ([`CRASH_STEPS`]); it exists for the crash tests and is not an operator setting.

use std::fs::{self, File};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use etcd_proto::membershippb::Member;
use etcd_proto::raftpb;
use etcd_raft::eraftpb;
use etcd_raft::etcd_snap::{self, EtcdSnapError};
use etcd_raft::etcd_wal::{eraftpb_conv, EtcdWal, EtcdWalError};
use etcd_raft::{Snapshotter, Wal, WalMetadata};
use prost::Message as _;
use redb::{ReadableDatabase, ReadableTable};

use crate::errors::ServerError;
use crate::etcd_backend::{import_etcd_db, member_from_json, Converted};
use crate::membership::{CLUSTER, CLUSTER_VERSION_KEY, MEMBERS, MEMBERS_REMOVED};

/// The temp dir a conversion builds in, beside `member`.
pub const BUILD_DIR: &str = "member.etcd-rs.tmp";
/// A complete conversion waiting for its renames (the marker).
pub const READY_DIR: &str = "member.etcd-rs";
/// Where etcd's original member dir is kept.
pub const BACKUP_DIR: &str = "member.etcd-backup";
/// Suffixes of the WAL side's names beside a dedicated `--wal-dir` W (build, ready, backup).
pub const WAL_BUILD_SUFFIX: &str = ".etcd-rs.tmp";
pub const WAL_READY_SUFFIX: &str = ".etcd-rs";
pub const WAL_BACKUP_SUFFIX: &str = ".etcd-backup";
/// In the ready member dir: the dedicated `--wal-dir` the pending renames are for.
pub const WAL_DIR_MARKER: &str = "takeover-wal-dir";
/// The test hook's variable (see the module doc).
pub const CRASH_ENV: &str = "ETCD_RS_TAKEOVER_CRASH_AT";
/// The steps the test hook can kill at, in order.
pub const CRASH_STEPS: &[&str] =
    &["db-imported", "wal-written", "built", "wal-ready", "ready", "wal-backed-up", "wal-switched", "backed-up", "switched"];
/// The steps of [`CRASH_STEPS`] only a takeover with a dedicated `--wal-dir` passes.
pub const WAL_DIR_CRASH_STEPS: &[&str] = &["wal-ready", "wal-backed-up", "wal-switched"];

/// bbolt's meta page magic (little-endian u32 after the 16-byte page header of page 0).
const BOLT_MAGIC: u32 = 0xED0C_DAED;
/// Entries written to the new WAL per fsynced batch.
const WAL_BATCH: usize = 1024;

/// Why an etcd data dir cannot be taken over (or the conversion failed).
#[derive(Debug, thiserror::Error)]
pub enum TakeoverError {
    #[error("cannot take over etcd data dir: I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot take over etcd data dir: {0} holds etcd's WAL but no backend file member/snap/db")]
    MissingDb(PathBuf),
    #[error("cannot take over etcd data dir: {db} is etcd's bbolt backend but {wal} holds no etcd WAL")]
    MissingWal { db: PathBuf, wal: PathBuf },
    #[error("cannot take over etcd data dir: --wal-dir {0} overlaps the member dir; give etcd's own --wal-dir")]
    WalDirOverlapsMember(PathBuf),
    #[error("cannot take over etcd data dir: --wal-dir {0} names no directory")]
    WalDirPath(PathBuf),
    #[error("cannot take over etcd data dir: a takeover with {recorded} is pending; start etcd-rs again with it (--wal-dir {given} was given)")]
    PendingForOtherWalDir { recorded: String, given: String },
    #[error("cannot take over etcd data dir: {0} exists from an earlier takeover; move it away first")]
    BackupExists(PathBuf),
    #[error("cannot take over etcd data dir: {0}")]
    Wal(#[from] EtcdWalError),
    #[error("cannot take over etcd data dir: {0}")]
    Snap(#[from] EtcdSnapError),
    #[error("cannot take over etcd data dir: backend: {0}")]
    Backend(String),
    #[error("cannot take over etcd data dir: its backend was written by a newer etcd ({0}); only etcd 3.4 and 3.5 data dirs are taken over")]
    NewerEtcd(String),
    #[error("cannot take over etcd data dir: the backend's consistent index {applied} is behind the raft snapshot at {snapshot}")]
    BackendBehindSnapshot { applied: u64, snapshot: u64 },
    #[error("cannot take over etcd data dir: writing etcd-rs's raft state: {0}")]
    Raft(String),
}

impl From<TakeoverError> for ServerError {
    fn from(e: TakeoverError) -> Self {
        ServerError::Internal(e.to_string())
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TakeoverError + '_ {
    move |source| TakeoverError::Io { path: path.to_path_buf(), source }
}

fn backend_err(e: impl std::fmt::Display) -> TakeoverError {
    TakeoverError::Backend(e.to_string())
}

fn raft_err(e: impl std::fmt::Display) -> TakeoverError {
    TakeoverError::Raft(e.to_string())
}

/// The test hook: SIGKILL (as `kill -9`, nothing flushed or cleaned up) at `step`.
fn crash_point(step: &str) {
    crash_point_of(CRASH_ENV, step);
}

/// SIGKILL at `step` when the variable `env` names it (the crash tests' hook, also the export's).
pub(crate) fn crash_point_of(env: &str, step: &str) {
    if std::env::var(env).is_ok_and(|s| s == step) {
        tracing::warn!(step, "{env}: killing the process here (test hook)");
        eprintln!("{env}={step}: killing the process here (test hook)");
        // SAFETY: getpid and kill have no memory-safety preconditions.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}

fn fsync_dir(dir: &Path) -> Result<(), TakeoverError> {
    etcd_raft::durable_fs::fsync_dir(dir).map_err(io_err(dir))
}

/// Renames `from` to `to` and makes it durable (fsync of their directory).
fn rename_durably(dir: &Path, from: impl AsRef<Path>, to: impl AsRef<Path>) -> Result<(), TakeoverError> {
    let (from, to) = (dir.join(from), dir.join(to));
    fs::rename(&from, &to).map_err(io_err(&to))?;
    fsync_dir(dir)
}

/// Removes `path` (a dir) when it is there, durably.
fn remove_dir_durably(path: &Path) -> Result<(), TakeoverError> {
    if etcd_raft::durable_fs::remove_dir_all_if_there(path).map_err(io_err(path))? {
        tracing::warn!(dir = %path.display(), "removed an etcd takeover that did not complete; converting again");
    }
    Ok(())
}

pub(crate) use etcd_raft::durable_fs::parent_dir as parent_of;

/// `p` with its parent made absolute (the parent must exist for that; else `p` as given).
pub(crate) fn absolute(p: &Path) -> PathBuf {
    match (fs::canonicalize(parent_of(p)), p.file_name()) {
        (Ok(parent), Some(name)) => parent.join(name),
        _ => p.to_path_buf(),
    }
}

/// The WAL side of a takeover with a dedicated `--wal-dir` W: its names beside W.
#[derive(Debug, Clone)]
struct WalSide {
    /// W's parent, absolute: where every rename of the WAL side happens.
    parent: PathBuf,
    /// W's own name in it.
    name: std::ffi::OsString,
}

impl WalSide {
    /// W itself (absolute).
    fn dir(&self) -> PathBuf {
        self.parent.join(&self.name)
    }

    /// The name `W<suffix>` in W's parent.
    fn named(&self, suffix: &str) -> std::ffi::OsString {
        let mut n = self.name.clone();
        n.push(suffix);
        n
    }

    fn path(&self, suffix: &str) -> PathBuf {
        self.parent.join(self.named(suffix))
    }

    /// `None` when `wal_dir` is the member's own `member/wal`.
    fn of(data_dir: &Path, wal_dir: &Path) -> Result<Option<WalSide>, TakeoverError> {
        let member = absolute(&data_dir.join("member"));
        let w = absolute(wal_dir);
        if wal_dir == data_dir.join("member").join("wal") || w == member.join("wal") {
            return Ok(None);
        }
        if w.starts_with(&member) || member.starts_with(&w) {
            return Err(TakeoverError::WalDirOverlapsMember(wal_dir.to_path_buf()));
        }
        let name = w.file_name().ok_or_else(|| TakeoverError::WalDirPath(wal_dir.to_path_buf()))?.to_owned();
        Ok(Some(WalSide { parent: parent_of(&w).to_path_buf(), name }))
    }
}

/// True when `db` starts with bbolt's meta page (etcd's backend), false for anything else
/// (redb's file, or no file).
pub fn is_bolt_file(db: &Path) -> bool {
    let mut head = [0u8; 20];
    File::open(db).and_then(|mut f| f.read_exact(&mut head)).is_ok()
        && u32::from_le_bytes([head[16], head[17], head[18], head[19]]) == BOLT_MAGIC
}

/// True when the first segment in `wal_dir` starts as etcd's WAL does: a frame whose
/// `walpb.Record` has type 4 (crc). etcd-rs's own WAL starts with a metadata record whose
/// ninth byte is its type 1.
pub fn is_etcd_wal(wal_dir: &Path) -> bool {
    let Ok(names) = etcd_raft::etcd_wal::segment_names(wal_dir) else { return false };
    let Some(first) = names.first() else { return false };
    let mut head = [0u8; 10];
    File::open(wal_dir.join(first)).and_then(|mut f| f.read_exact(&mut head)).is_ok() && head[8..10] == [0x08, 0x04]
}

/// What a takeover found and carried over (logged).
#[derive(Debug, Clone)]
pub struct TakenOver {
    pub member_id: u64,
    pub cluster_id: u64,
    pub hard_state: eraftpb::HardState,
    pub snapshot_index: u64,
    pub snapshot_term: u64,
    pub entries: usize,
    pub backend: Converted,
    pub members_from_v2_store: bool,
}

/// Brings `data_dir` to an etcd-rs member dir when it holds an etcd one (or a takeover that a
/// crash interrupted), before anything else opens it. `Ok(None)` when there was nothing to do.
pub fn take_over_etcd_data_dir(data_dir: &Path, wal_dir: &Path) -> Result<Option<TakenOver>, TakeoverError> {
    let member = data_dir.join("member");
    let db = member.join("snap").join("db");
    let wal_side = match WalSide::of(data_dir, wal_dir) {
        Ok(w) => w,
        // etcd-rs's own members may keep their WAL anywhere: only etcd's files need W apart
        Err(_) if !is_bolt_file(&db) && !is_etcd_wal(wal_dir) && !data_dir.join(READY_DIR).exists() => return Ok(None),
        Err(e) => return Err(e),
    };
    finish_pending(data_dir, wal_side.as_ref())?;
    // etcd reads its WAL from --wal-dir alone when given one (ServerConfig.WALDir())
    let etcd_wal_dir = wal_side.as_ref().map_or_else(|| member.join("wal"), WalSide::dir);
    let etcd_db = is_bolt_file(&db);
    let etcd_wal = is_etcd_wal(&etcd_wal_dir);
    if !etcd_db && !etcd_wal {
        return Ok(None);
    }
    if !etcd_db {
        return Err(TakeoverError::MissingDb(member));
    }
    if !etcd_wal {
        return Err(TakeoverError::MissingWal { db, wal: etcd_wal_dir });
    }
    let backup = data_dir.join(BACKUP_DIR);
    for b in std::iter::once(backup.clone()).chain(wal_side.as_ref().map(|w| w.path(WAL_BACKUP_SUFFIX))) {
        if b.exists() {
            return Err(TakeoverError::BackupExists(b));
        }
    }
    tracing::info!(data_dir = %data_dir.display(), wal_dir = %etcd_wal_dir.display(), "found a data dir written by etcd; taking it over");
    let started = Instant::now();
    let build = data_dir.join(BUILD_DIR);
    let new_wal = wal_side.as_ref().map_or_else(|| build.join("wal"), |w| w.path(WAL_BUILD_SUFFIX));
    let built = build_member_dir(&member, &etcd_wal_dir, &build, &new_wal).and_then(|t| {
        if let Some(w) = &wal_side {
            write_wal_dir_marker(&build, &w.dir())?;
        }
        Ok(t)
    });
    let done = match built {
        Ok(t) => t,
        Err(e) => {
            let _ = fs::remove_dir_all(&build);
            if wal_side.is_some() {
                let _ = fs::remove_dir_all(&new_wal);
            }
            return Err(e);
        }
    };
    crash_point("built");
    if let Some(w) = &wal_side {
        rename_durably(&w.parent, w.named(WAL_BUILD_SUFFIX), w.named(WAL_READY_SUFFIX))?;
        crash_point("wal-ready");
    }
    rename_durably(data_dir, BUILD_DIR, READY_DIR)?;
    crash_point("ready");
    finish_pending(data_dir, wal_side.as_ref())?;
    tracing::info!(
        member_id = %format!("{:x}", done.member_id),
        cluster_id = %format!("{:x}", done.cluster_id),
        term = done.hard_state.term,
        vote = %format!("{:x}", done.hard_state.vote),
        commit = done.hard_state.commit,
        snapshot_index = done.snapshot_index,
        snapshot_term = done.snapshot_term,
        entries = done.entries,
        consistent_index = done.backend.consistent_index,
        revisions = done.backend.loaded.revisions,
        leases = done.backend.loaded.leases,
        members = done.backend.members,
        members_from_v2_store = done.members_from_v2_store,
        backup = %backup.display(),
        took = ?started.elapsed(),
        "took over etcd's data dir; etcd's original member dir is kept as the backup"
    );
    Ok(Some(done))
}

/// Records in the build which dedicated `--wal-dir` its WAL side is for, fsynced.
fn write_wal_dir_marker(build: &Path, wal_dir: &Path) -> Result<(), TakeoverError> {
    let path = build.join(WAL_DIR_MARKER);
    let mut f = File::create(&path).map_err(io_err(&path))?;
    std::io::Write::write_all(&mut f, wal_dir.as_os_str().as_bytes()).map_err(io_err(&path))?;
    f.sync_all().map_err(io_err(&path))?;
    fsync_dir(build)
}

/// The dedicated `--wal-dir` a ready conversion was built for (None: `member/wal`).
fn read_wal_dir_marker(ready: &Path) -> Result<Option<PathBuf>, TakeoverError> {
    let path = ready.join(WAL_DIR_MARKER);
    match fs::read(&path) {
        Ok(b) => Ok(Some(PathBuf::from(std::ffi::OsStr::from_bytes(&b)))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(TakeoverError::Io { path, source: e }),
    }
}

/// Completes what a crash interrupted (see the tables in the module doc).
fn finish_pending(data_dir: &Path, wal_side: Option<&WalSide>) -> Result<(), TakeoverError> {
    let ready = data_dir.join(READY_DIR);
    remove_dir_durably(&data_dir.join(BUILD_DIR))?;
    if !ready.exists() {
        // no marker: a WAL side built beside W is incomplete whatever its name (and there is
        // one only while `member` is still etcd's)
        if let Some(w) = wal_side.filter(|_| is_bolt_file(&data_dir.join("member/snap/db"))) {
            remove_dir_durably(&w.path(WAL_BUILD_SUFFIX))?;
            remove_dir_durably(&w.path(WAL_READY_SUFFIX))?;
        }
        return remove_wal_dir_marker(&data_dir.join("member"));
    }
    match (read_wal_dir_marker(&ready)?, wal_side) {
        (None, None) => {}
        (Some(recorded), Some(w)) if recorded == w.dir() => finish_wal_side(w)?,
        (recorded, w) => {
            return Err(TakeoverError::PendingForOtherWalDir {
                recorded: recorded.map_or("member/wal".into(), |r| format!("--wal-dir {}", r.display())),
                given: w.map_or("member/wal".into(), |w| w.dir().display().to_string()),
            })
        }
    }
    if data_dir.join("member").exists() {
        let backup = data_dir.join(BACKUP_DIR);
        if backup.exists() {
            return Err(TakeoverError::BackupExists(backup));
        }
        rename_durably(data_dir, "member", BACKUP_DIR)?;
        crash_point("backed-up");
    }
    rename_durably(data_dir, READY_DIR, "member")?;
    crash_point("switched");
    remove_wal_dir_marker(&data_dir.join("member"))
}

/// The WAL side's renames once the conversion is complete: etcd's W to `W.etcd-backup`, then
/// `W.etcd-rs` to W. No `W.etcd-rs` left means both were done.
fn finish_wal_side(w: &WalSide) -> Result<(), TakeoverError> {
    if !w.path(WAL_READY_SUFFIX).exists() {
        return Ok(());
    }
    if w.dir().exists() {
        let backup = w.path(WAL_BACKUP_SUFFIX);
        if backup.exists() {
            return Err(TakeoverError::BackupExists(backup));
        }
        rename_durably(&w.parent, &w.name, w.named(WAL_BACKUP_SUFFIX))?;
        crash_point("wal-backed-up");
    }
    rename_durably(&w.parent, w.named(WAL_READY_SUFFIX), &w.name)?;
    crash_point("wal-switched");
    Ok(())
}

/// The marker has done its work once the member dir is switched in (a crash may leave it there).
fn remove_wal_dir_marker(member: &Path) -> Result<(), TakeoverError> {
    let path = member.join(WAL_DIR_MARKER);
    if path.exists() {
        fs::remove_file(&path).map_err(io_err(&path))?;
        fsync_dir(member)?;
    }
    Ok(())
}

/// Writes the complete etcd-rs member dir for etcd's `member` (its WAL in `etcd_wal_dir`) into
/// `build`, its WAL into `new_wal`, fsynced.
fn build_member_dir(member: &Path, etcd_wal_dir: &Path, build: &Path, new_wal: &Path) -> Result<TakenOver, TakeoverError> {
    let etcd_snap_dir = member.join("snap");
    // etcd's choice of snapshot: the newest readable snap file the WAL's committed log names
    let wal_snaps = EtcdWal::valid_snapshot_entries(etcd_wal_dir)?;
    let snap = match etcd_snap::read_snap(&etcd_snap_dir, Some(&wal_snaps)) {
        Ok((s, path)) => {
            tracing::info!(path = %path.display(), "etcd snapshot file chosen");
            Some(s)
        }
        Err(EtcdSnapError::NoSnapshot) => None,
        Err(e) => return Err(e.into()),
    };
    let meta = snap.as_ref().and_then(|s| s.metadata.clone()).unwrap_or_default();
    let (snap_index, snap_term) = (meta.index(), meta.term());
    let wal = EtcdWal::read_all(etcd_wal_dir, (snap_index, snap_term))?;
    if let Some((file, offset)) = &wal.torn_tail {
        tracing::warn!(file = %file.display(), offset, "etcd's WAL ends in a torn record (a crash while writing); the log ends before it, as etcd's repair makes it");
    }

    let new_snap = build.join("snap");
    fs::create_dir_all(&new_snap).map_err(io_err(&new_snap))?;
    let backend = import_etcd_db(&etcd_snap_dir.join("db"), &new_snap.join("db")).map_err(backend_err)?;
    refuse_newer_etcd(&new_snap.join("db"), &backend)?;
    if backend.consistent_index < snap_index {
        return Err(TakeoverError::BackendBehindSnapshot { applied: backend.consistent_index, snapshot: snap_index });
    }
    let conf_state = meta.conf_state.clone().unwrap_or_default();
    let members_from_v2_store = match &snap {
        Some(s) if backend.consistent_index == snap_index => {
            adopt_v2_store_members(&new_snap.join("db"), s.data.as_deref().unwrap_or_default(), &conf_state)?
        }
        _ => false,
    };
    crash_point("db-imported");

    if snap.is_some() {
        let mut s = eraftpb::Snapshot::default();
        let m = s.mut_metadata();
        m.index = snap_index;
        m.term = snap_term;
        m.set_conf_state(eraftpb_conv::conf_state_to_eraftpb(&conf_state).map_err(raft_err)?);
        Snapshotter::new(&new_snap).and_then(|sn| sn.save(&s)).map_err(raft_err)?;
    }
    let hard_state = eraftpb_conv::hard_state_to_eraftpb(&wal.hard_state);
    let metadata = WalMetadata { node_id: wal.metadata.node_id(), cluster_id: wal.metadata.cluster_id() };
    write_wal(new_wal, metadata, (snap_index, snap_term), &hard_state, &wal.entries)?;
    crash_point("wal-written");
    for d in [new_snap.as_path(), new_wal, parent_of(new_wal), build] {
        fsync_dir(d)?;
    }
    Ok(TakenOver {
        member_id: metadata.node_id,
        cluster_id: metadata.cluster_id,
        hard_state,
        snapshot_index: snap_index,
        snapshot_term: snap_term,
        entries: wal.entries.len(),
        backend,
        members_from_v2_store,
    })
}

/// etcd-rs's WAL holding etcd's log after the snapshot: its marker, the entries (terms and
/// payloads unchanged) and the HardState, fsynced.
fn write_wal(
    dir: &Path,
    metadata: WalMetadata,
    (snap_index, snap_term): (u64, u64),
    hard_state: &eraftpb::HardState,
    entries: &[raftpb::Entry],
) -> Result<(), TakeoverError> {
    let mut w = Wal::create(dir, metadata).map_err(raft_err)?;
    if snap_index > 0 {
        w.save_snapshot_marker(snap_index, snap_term).map_err(raft_err)?;
    }
    for batch in entries.chunks(WAL_BATCH) {
        let batch = batch
            .iter()
            .map(eraftpb_conv::entry_to_eraftpb)
            .collect::<Result<Vec<_>, _>>()
            .map_err(raft_err)?;
        w.save(None, &batch).map_err(raft_err)?;
    }
    w.save(Some(hard_state), &[]).map_err(raft_err)?;
    Ok(())
}

/// `major.minor` of a version string such as "3.5.0".
fn major_minor(v: &str) -> (u64, u64) {
    let mut p = v.split('.').map(|x| x.parse::<u64>().unwrap_or(0));
    (p.next().unwrap_or(0), p.next().unwrap_or(0))
}

/// Refuses a backend from an etcd newer than 3.5: 3.6 marks its schema with `storageVersion`,
/// and a cluster version above 3.5 means entries and buckets this conversion does not know.
fn refuse_newer_etcd(redb: &Path, c: &Converted) -> Result<(), TakeoverError> {
    if let Some(k) = c.skipped_meta.iter().find(|k| k.as_str() == "storageVersion") {
        return Err(TakeoverError::NewerEtcd(format!("meta key {k}")));
    }
    let db = redb::Database::open(redb).map_err(backend_err)?;
    let txn = db.begin_read().map_err(backend_err)?;
    let version = match txn.open_table(CLUSTER) {
        Ok(t) => t.get(CLUSTER_VERSION_KEY).map_err(backend_err)?.map(|v| String::from_utf8_lossy(v.value()).into_owned()),
        Err(redb::TableError::TableDoesNotExist(_)) => None,
        Err(e) => return Err(backend_err(e)),
    };
    match version {
        Some(v) if major_minor(&v) > (3, 5) => Err(TakeoverError::NewerEtcd(format!("cluster version {v}"))),
        _ => Ok(()),
    }
}

/// The members (and removed member IDs) of etcd's v2 store JSON (a raft snapshot's data):
/// `/0/members/<hex id>/{raftAttributes,attributes}` and `/0/removed_members/<hex id>`.
/// `None` when the data is not such a store.
pub fn v2_store_members(data: &[u8]) -> Option<(Vec<Member>, Vec<u64>)> {
    let store: serde_json::Value = serde_json::from_slice(data).ok()?;
    let cluster = store.get("Root")?.get("Children")?.get("0")?.get("Children")?;
    let children = |n: &serde_json::Value| -> Vec<(u64, serde_json::Value)> {
        n.get("Children")
            .and_then(|c| c.as_object())
            .map(|o| o.iter().filter_map(|(k, v)| Some((u64::from_str_radix(k, 16).ok()?, v.clone()))).collect())
            .unwrap_or_default()
    };
    let value = |n: &serde_json::Value, name: &str| -> Option<String> {
        n.get("Children")?.get(name)?.get("Value")?.as_str().map(str::to_string)
    };
    let mut members = Vec::new();
    for (id, node) in cluster.get("members").map(children).unwrap_or_default() {
        // one JSON object of the member as etcd's members bucket holds it: id, the raft
        // attributes (peerURLs, isLearner) and the attributes (name, clientURLs)
        let mut json = serde_json::Map::new();
        json.insert("id".into(), id.into());
        for part in [value(&node, "raftAttributes"), value(&node, "attributes")].into_iter().flatten() {
            if let serde_json::Value::Object(o) = serde_json::from_str(&part).ok()? {
                json.extend(o);
            }
        }
        if !json.contains_key("peerURLs") {
            return None; // raftAttributes is what makes a member
        }
        members.push(member_from_json(serde_json::Value::Object(json).to_string().as_bytes()).ok()?);
    }
    let removed = cluster.get("removed_members").map(children).unwrap_or_default().into_iter().map(|(id, _)| id).collect();
    Some((members, removed))
}

/// When the backend and the raft snapshot are at the same index, the snapshot's v2 store is
/// the membership etcd itself starts with (3.4 and 3.5 recover members from it). They differ
/// after `etcdctl snapshot restore` (3.4), which leaves the old cluster's members in the db's
/// buckets: then the v2 store's members replace them. Returns whether they did.
fn adopt_v2_store_members(redb: &Path, v2: &[u8], conf_state: &raftpb::ConfState) -> Result<bool, TakeoverError> {
    let Some((members, removed)) = v2_store_members(v2) else {
        tracing::warn!("the etcd snapshot's data is not a v2 store; membership is taken from the backend");
        return Ok(false);
    };
    let mut in_raft: Vec<u64> = conf_state.voters.iter().chain(&conf_state.learners).copied().collect();
    in_raft.sort_unstable();
    let mut in_v2: Vec<u64> = members.iter().map(|m| m.id).collect();
    in_v2.sort_unstable();
    if in_v2 != in_raft {
        tracing::warn!(?in_v2, ?in_raft, "the etcd snapshot's v2 store disagrees with its conf state; membership is taken from the backend");
        return Ok(false);
    }
    let db = redb::Database::open(redb).map_err(backend_err)?;
    let txn = db.begin_write().map_err(backend_err)?;
    {
        let mut t = txn.open_table(MEMBERS).map_err(backend_err)?;
        let mut stored = Vec::new();
        for row in t.iter().map_err(backend_err)? {
            let (_, v) = row.map_err(backend_err)?;
            stored.push(Member::decode(v.value()).map_err(backend_err)?);
        }
        stored.sort_by_key(|m| m.id);
        let mut wanted = members.clone();
        wanted.sort_by_key(|m| m.id);
        if stored == wanted {
            return Ok(false);
        }
        tracing::info!(
            backend = ?stored.iter().map(|m| format!("{:x}", m.id)).collect::<Vec<_>>(),
            v2_store = ?wanted.iter().map(|m| format!("{:x}", m.id)).collect::<Vec<_>>(),
            "the backend's members are not the snapshot's (a restored snapshot keeps the old cluster's); taking the v2 store's, as etcd does"
        );
        t.retain(|_, _| false).map_err(backend_err)?;
        for m in &wanted {
            t.insert(m.id, m.encode_to_vec().as_slice()).map_err(backend_err)?;
        }
        let mut r = txn.open_table(MEMBERS_REMOVED).map_err(backend_err)?;
        r.retain(|_, _| false).map_err(backend_err)?;
        for id in removed {
            r.insert(id, ()).map_err(backend_err)?;
        }
    }
    txn.commit().map_err(backend_err)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_store_members_are_read_as_etcd_3_4_restore_writes_them() {
        // shape of v2store.Save() after `etcdctl snapshot restore` (3.4.23), trimmed
        let json = br#"{"Root":{"Path":"/","CreatedIndex":0,"ModifiedIndex":0,"ExpireTime":"0001-01-01T00:00:00Z","Value":"","Children":{
            "0":{"Path":"/0","Children":{"members":{"Path":"/0/members","Children":{
              "8e9e05c52164694d":{"Path":"/0/members/8e9e05c52164694d","Children":{
                "raftAttributes":{"Path":"/0/members/8e9e05c52164694d/raftAttributes","Value":"{\"peerURLs\":[\"http://127.0.0.1:2380\"]}","Children":null},
                "attributes":{"Value":"{\"name\":\"n1\",\"clientURLs\":[\"http://127.0.0.1:2379\"]}","Children":null}}},
              "10":{"Children":{"raftAttributes":{"Value":"{\"peerURLs\":[\"http://b:2380\"],\"isLearner\":true}","Children":null}}}}},
              "removed_members":{"Children":{"ff":{"Value":"","Children":null}}}}},
            "1":{"Path":"/1","Children":{}}}},"WatcherHub":{"EventHistory":null},"CurrentIndex":3}"#;
        let (mut members, removed) = v2_store_members(json).unwrap();
        members.sort_by_key(|m| m.id);
        assert_eq!(removed, vec![0xff]);
        assert_eq!(members.len(), 2);
        assert_eq!(members[0].id, 0x10);
        assert!(members[0].raft_attrs.as_ref().unwrap().is_learner);
        assert_eq!(members[0].member_attrs.as_ref().unwrap().name, "");
        let m = &members[1];
        assert_eq!(m.id, 0x8e9e05c52164694d);
        assert_eq!(m.raft_attrs.as_ref().unwrap().peer_urls, vec!["http://127.0.0.1:2380"]);
        assert_eq!(m.member_attrs.as_ref().unwrap().client_urls, vec!["http://127.0.0.1:2379"]);
        assert!(v2_store_members(b"not json").is_none());
        assert!(v2_store_members(br#"{"Root":{"Children":{}}}"#).is_none());
    }

    #[test]
    fn etcd_files_are_told_from_etcd_rs_files_by_content() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../mvcc/tests/fixtures/etcd-3.4.23-snapshot.db");
        assert!(is_bolt_file(&fixture));
        let redb = d.join("db");
        etcd_mvcc::Backend::open(&redb).unwrap();
        assert!(!is_bolt_file(&redb));
        assert!(!is_bolt_file(&d.join("missing")));

        let rs_wal = d.join("rs-wal");
        drop(Wal::create(&rs_wal, WalMetadata { node_id: 1, cluster_id: 2 }).unwrap());
        assert!(!is_etcd_wal(&rs_wal));
        let etcd_wal = d.join("etcd-wal");
        let md = etcd_proto::etcdserverpb::Metadata { node_id: Some(1), cluster_id: Some(2) };
        etcd_raft::etcd_wal::EtcdWalWriter::create(&etcd_wal, &md).unwrap().finish().unwrap();
        assert!(is_etcd_wal(&etcd_wal));
        assert!(!is_etcd_wal(&d.join("none")));
    }

    #[test]
    fn nothing_to_take_over_leaves_a_data_dir_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        let member = d.join("member");
        assert!(take_over_etcd_data_dir(d, &member.join("wal")).unwrap().is_none());
        fs::create_dir_all(member.join("snap")).unwrap();
        etcd_mvcc::Backend::open(&member.join("snap/db")).unwrap();
        assert!(take_over_etcd_data_dir(d, &member.join("wal")).unwrap().is_none());
        // an etcd WAL with its db gone is refused, and nothing is renamed
        let md = etcd_proto::etcdserverpb::Metadata { node_id: Some(1), cluster_id: Some(2) };
        fs::remove_file(member.join("snap/db")).unwrap();
        etcd_raft::etcd_wal::EtcdWalWriter::create(&member.join("wal"), &md).unwrap().finish().unwrap();
        let e = take_over_etcd_data_dir(d, &member.join("wal")).unwrap_err();
        assert!(matches!(e, TakeoverError::MissingDb(_)), "{e}");
        assert!(member.join("wal").exists() && !d.join(BACKUP_DIR).exists());
        // with a dedicated --wal-dir etcd ignores member/wal (its WALDir()): so does the takeover
        let elsewhere = d.join("wal-elsewhere");
        etcd_mvcc::Backend::open(&member.join("snap/db")).unwrap();
        fs::rename(member.join("wal"), &elsewhere).unwrap();
        let e = take_over_etcd_data_dir(d, &elsewhere).unwrap_err();
        assert!(matches!(e, TakeoverError::MissingDb(_)), "an etcd WAL in W without etcd's db: {e}");
        assert!(elsewhere.exists() && !d.join(BUILD_DIR).exists());
        fs::rename(&elsewhere, member.join("wal")).unwrap();
        fs::create_dir_all(&elsewhere).unwrap();
        assert!(take_over_etcd_data_dir(d, &elsewhere).unwrap().is_none(), "an etcd WAL in member/wal is ignored beside W");
        // a W overlapping the member dir: etcd-rs's own member starts, etcd's WAL there is refused
        for w in [member.join("wal2"), d.to_path_buf()] {
            assert!(take_over_etcd_data_dir(d, &w).unwrap().is_none(), "{w:?}");
        }
        etcd_raft::etcd_wal::EtcdWalWriter::create(&member.join("wal2"), &md).unwrap().finish().unwrap();
        let e = take_over_etcd_data_dir(d, &member.join("wal2")).unwrap_err();
        assert!(matches!(e, TakeoverError::WalDirOverlapsMember(_)), "{e}");
        assert!(member.join("wal").exists() && member.join("wal2").exists() && !d.join(BUILD_DIR).exists());
    }

    #[test]
    fn a_ready_conversion_is_switched_in_at_the_next_start() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        fs::create_dir_all(d.join("member")).unwrap();
        fs::write(d.join("member/etcd"), b"etcd's").unwrap();
        fs::create_dir_all(d.join(READY_DIR)).unwrap();
        fs::write(d.join(READY_DIR).join("rs"), b"etcd-rs's").unwrap();
        fs::create_dir_all(d.join(BUILD_DIR)).unwrap();
        finish_pending(d, None).unwrap();
        assert!(d.join("member/rs").exists() && d.join(BACKUP_DIR).join("etcd").exists());
        assert!(!d.join(READY_DIR).exists() && !d.join(BUILD_DIR).exists());
        // crashed after the backup rename: only the switch is left
        fs::rename(d.join("member"), d.join(READY_DIR)).unwrap();
        finish_pending(d, None).unwrap();
        assert!(d.join("member/rs").exists());
        finish_pending(d, None).unwrap();
        assert!(d.join("member/rs").exists());
    }

    /// A data dir `d/data` and a dedicated W `d/wal-disk/w`, with etcd's files named by content.
    fn wal_side_fixture(d: &Path) -> (PathBuf, PathBuf, WalSide) {
        let (data, w) = (d.join("data"), d.join("wal-disk/w"));
        fs::create_dir_all(data.join("member/snap")).unwrap();
        fs::write(data.join("member/etcd"), b"etcd's").unwrap();
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../mvcc/tests/fixtures/etcd-3.4.23-snapshot.db");
        fs::copy(fixture, data.join("member/snap/db")).unwrap();
        fs::create_dir_all(&w).unwrap();
        fs::write(w.join("etcd.wal"), b"etcd's").unwrap();
        let side = WalSide::of(&data, &w).unwrap().unwrap();
        (data, w, side)
    }

    #[test]
    fn a_wal_side_without_the_marker_is_removed_and_with_it_is_switched_first() {
        let tmp = tempfile::tempdir().unwrap();
        let (data, w, side) = wal_side_fixture(tmp.path());
        assert_eq!(side.path(WAL_READY_SUFFIX), absolute(&tmp.path().join("wal-disk/w.etcd-rs")));
        // crashed after wal-ready: a complete W.etcd-rs but no member.etcd-rs: converted again
        fs::create_dir_all(side.path(WAL_READY_SUFFIX)).unwrap();
        fs::create_dir_all(side.path(WAL_BUILD_SUFFIX)).unwrap();
        fs::create_dir_all(data.join(BUILD_DIR)).unwrap();
        finish_pending(&data, Some(&side)).unwrap();
        for p in [side.path(WAL_READY_SUFFIX), side.path(WAL_BUILD_SUFFIX), data.join(BUILD_DIR)] {
            assert!(!p.exists(), "{p:?}");
        }
        assert!(w.join("etcd.wal").exists() && data.join("member/etcd").exists());

        // crashed after ready: the four renames, the WAL side first; the marker then goes
        fs::create_dir_all(side.path(WAL_READY_SUFFIX)).unwrap();
        fs::write(side.path(WAL_READY_SUFFIX).join("rs.wal"), b"etcd-rs's").unwrap();
        fs::create_dir_all(data.join(READY_DIR)).unwrap();
        write_wal_dir_marker(&data.join(READY_DIR), &side.dir()).unwrap();
        // started with another --wal-dir, or none: refused, nothing renamed
        let other = WalSide::of(&data, &tmp.path().join("other")).unwrap();
        for s in [other.as_ref(), None] {
            let e = finish_pending(&data, s).unwrap_err();
            assert!(matches!(e, TakeoverError::PendingForOtherWalDir { .. }), "{e}");
        }
        assert!(side.path(WAL_READY_SUFFIX).exists() && w.join("etcd.wal").exists());
        finish_pending(&data, Some(&side)).unwrap();
        assert!(w.join("rs.wal").exists() && side.path(WAL_BACKUP_SUFFIX).join("etcd.wal").exists());
        assert!(data.join(BACKUP_DIR).join("etcd").exists() && data.join("member").exists());
        assert!(!data.join("member").join(WAL_DIR_MARKER).exists() && !data.join(READY_DIR).exists());
        finish_pending(&data, Some(&side)).unwrap();
        assert!(w.join("rs.wal").exists());
        // with etcd-rs's member in place, a dir of that name is not a takeover's: left alone
        fs::create_dir_all(side.path(WAL_READY_SUFFIX)).unwrap();
        finish_pending(&data, Some(&side)).unwrap();
        assert!(side.path(WAL_READY_SUFFIX).exists());
    }
}
