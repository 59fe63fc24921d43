//! Snapshot transfer: how a member behind the leader's compacted raft log catches up.
//!
//! raft-rs's MsgSnapshot carries only metadata. The transport hands it to the leader's applier,
//! which rewrites its metadata to the applier's own position (applied index, its term, the
//! configuration there) and opens a read transaction at that same point, so the rows sent are
//! exactly the state the metadata names. A task POSTs the message and every backend table to
//! the peer's `/raft/snapshot` (etcd's rafthttp: the MsgSnap frame, then the database); the
//! receiver writes the body to `snap/<index>.snap.db` (tmp, fsync, rename: only a complete file
//! has that name), then steps the message into raft. When raft accepts it, the receiver's
//! applier installs the file: one durable write transaction replaces every table, then the
//! index, lessor, membership and watchers are rebuilt from it.
//!
//! The database after the frame is, for now, etcd-rs's own: checksummed records of table rows
//! ([`ReceivedFile`]'s format), which etcd members cannot read; etcd's bbolt file takes its
//! place once the converter (etcd_backend.rs) is in.
//!
//! Crash rule: raft records the snapshot (snap file, WAL marker) before the applier installs
//! it, so a restart can find the backend behind the newest snapshot; bootstrap then installs
//! the `.snap.db` file raft accepted before starting raft.

use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use etcd_mvcc::backend::{KEY_TABLE, META_TABLE};
use etcd_proto::etcdrspb::SnapshotRows;
use etcd_raft::rafthttp::host::SnapshotBody;
use etcd_raft::{HttpTransport, Snapshotter};
use parking_lot::Mutex;
use prost::Message as _;
use raft::eraftpb::Message;
use redb::{ReadTransaction, ReadableTable, TableDefinition, TableHandle, WriteTransaction};

use crate::alarms::ALARMS;
use crate::errors::ServerError;
use crate::membership::{CLUSTER, MEMBERS, MEMBERS_REMOVED};

/// Bytes of keys and values per streamed chunk (one row may exceed it).
const CHUNK_BYTES: usize = 1 << 20;

fn err(what: &str, e: impl std::fmt::Display) -> ServerError {
    ServerError::Internal(format!("snapshot: {what}: {e}"))
}

/// Where a received snapshot's rows are kept until they are installed.
pub fn db_path(snap_dir: &Path, index: u64) -> PathBuf {
    snap_dir.join(format!("{index:016x}.snap.db"))
}

fn index_of(name: &str) -> Option<u64> {
    u64::from_str_radix(name.strip_suffix(".snap.db")?, 16).ok()
}

/// Removes received snapshot files at or below `applied` (installed or superseded) and
/// unfinished ones.
pub fn purge_received(snap_dir: &Path, applied: u64) {
    let Ok(dir) = fs::read_dir(snap_dir) else { return };
    for dent in dir.flatten() {
        let name = dent.file_name().to_string_lossy().into_owned();
        let stale = name.ends_with(".snap.db.tmp") || index_of(&name).is_some_and(|i| i <= applied);
        if stale {
            if let Err(e) = fs::remove_file(dent.path()) {
                tracing::warn!(file = %name, error = %e, "cannot remove a received snapshot file");
            }
        }
    }
}

// ---------------------------------------------------------------- tables

/// Emits a table's rows in chunks; a table that does not exist emits nothing.
fn dump_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &ReadTransaction,
    def: TableDefinition<K, V>,
    emit: &mut dyn FnMut(SnapshotRows) -> Result<(), ServerError>,
) -> Result<(), ServerError> {
    let table = match txn.open_table(def) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
        Err(e) => return Err(err("open table", e)),
    };
    let name = def.name().to_string();
    let mut rows = SnapshotRows { table: name.clone(), ..Default::default() };
    let mut bytes = 0;
    for row in table.iter().map_err(|e| err("read", e))? {
        let (k, v) = row.map_err(|e| err("read", e))?;
        let key = K::as_bytes(&k.value()).as_ref().to_vec();
        let value = V::as_bytes(&v.value()).as_ref().to_vec();
        bytes += key.len() + value.len();
        rows.keys.push(key);
        rows.values.push(value);
        if bytes >= CHUNK_BYTES {
            emit(std::mem::replace(&mut rows, SnapshotRows { table: name.clone(), ..Default::default() }))?;
            bytes = 0;
        }
    }
    if !rows.keys.is_empty() {
        emit(rows)?;
    }
    Ok(())
}

fn load_rows<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &WriteTransaction,
    def: TableDefinition<K, V>,
    rows: &SnapshotRows,
) -> Result<(), ServerError> {
    if rows.keys.len() != rows.values.len() {
        return Err(err("rows", "keys and values differ in number"));
    }
    let mut table = txn.open_table(def).map_err(|e| err("open table", e))?;
    for (k, v) in rows.keys.iter().zip(&rows.values) {
        table.insert(K::from_bytes(k), V::from_bytes(v)).map_err(|e| err("write", e))?;
    }
    Ok(())
}

/// Every table of the backend, in one place: what a snapshot carries.
fn dump_all(
    txn: &ReadTransaction,
    emit: &mut dyn FnMut(SnapshotRows) -> Result<(), ServerError>,
) -> Result<(), ServerError> {
    dump_table(txn, META_TABLE, emit)?;
    dump_table(txn, KEY_TABLE, emit)?;
    dump_table(txn, etcd_lease::LEASE_TABLE, emit)?;
    dump_table(txn, MEMBERS, emit)?;
    dump_table(txn, MEMBERS_REMOVED, emit)?;
    dump_table(txn, CLUSTER, emit)?;
    dump_table(txn, ALARMS, emit)?;
    dump_table(txn, etcd_auth::AUTH, emit)?;
    dump_table(txn, etcd_auth::AUTH_USERS, emit)?;
    dump_table(txn, etcd_auth::AUTH_ROLES, emit)
}

fn clear_all(txn: &WriteTransaction) -> Result<(), ServerError> {
    let e = |e| err("clear table", e);
    txn.delete_table(META_TABLE).map_err(e)?;
    txn.delete_table(KEY_TABLE).map_err(e)?;
    txn.delete_table(etcd_lease::LEASE_TABLE).map_err(e)?;
    txn.delete_table(MEMBERS).map_err(e)?;
    txn.delete_table(MEMBERS_REMOVED).map_err(e)?;
    txn.delete_table(CLUSTER).map_err(e)?;
    txn.delete_table(ALARMS).map_err(e)?;
    txn.delete_table(etcd_auth::AUTH).map_err(e)?;
    txn.delete_table(etcd_auth::AUTH_USERS).map_err(e)?;
    txn.delete_table(etcd_auth::AUTH_ROLES).map_err(e)?;
    // the lessor expects its table to exist
    txn.open_table(etcd_lease::LEASE_TABLE).map_err(|e| err("open table", e))?;
    Ok(())
}

fn load_any(txn: &WriteTransaction, rows: &SnapshotRows) -> Result<(), ServerError> {
    match rows.table.as_str() {
        t if t == META_TABLE.name() => load_rows(txn, META_TABLE, rows),
        t if t == KEY_TABLE.name() => load_rows(txn, KEY_TABLE, rows),
        t if t == etcd_lease::LEASE_TABLE.name() => load_rows(txn, etcd_lease::LEASE_TABLE, rows),
        t if t == MEMBERS.name() => load_rows(txn, MEMBERS, rows),
        t if t == MEMBERS_REMOVED.name() => load_rows(txn, MEMBERS_REMOVED, rows),
        t if t == CLUSTER.name() => load_rows(txn, CLUSTER, rows),
        t if t == ALARMS.name() => load_rows(txn, ALARMS, rows),
        t if t == etcd_auth::AUTH.name() => load_rows(txn, etcd_auth::AUTH, rows),
        t if t == etcd_auth::AUTH_USERS.name() => load_rows(txn, etcd_auth::AUTH_USERS, rows),
        t if t == etcd_auth::AUTH_ROLES.name() => load_rows(txn, etcd_auth::AUTH_ROLES, rows),
        other => Err(err("rows", format!("unknown table {other:?}"))),
    }
}

// ---------------------------------------------------------------- the received file

/// Writes a received snapshot: records of `[u32 LE length][u32 LE crc32c][SnapshotRows]`,
/// in `<index>.snap.db.tmp`, renamed to `<index>.snap.db` by [`ReceivedFile::finish`].
pub struct ReceivedFile {
    tmp: PathBuf,
    path: PathBuf,
    out: BufWriter<File>,
    /// For etcd_snap_db_save_total_duration_seconds.
    started: std::time::Instant,
}

impl ReceivedFile {
    pub fn create(snap_dir: &Path, index: u64) -> Result<ReceivedFile, ServerError> {
        let path = db_path(snap_dir, index);
        let tmp = path.with_extension("db.tmp");
        let file = File::create(&tmp).map_err(|e| err("create", e))?;
        Ok(ReceivedFile { tmp, path, out: BufWriter::new(file), started: std::time::Instant::now() })
    }

    pub fn write(&mut self, rows: &SnapshotRows) -> Result<(), ServerError> {
        self.write_bytes(&encode_record(rows)?)
    }

    /// Bytes of records as they arrive from a peer (checked when the file is installed).
    pub fn write_bytes(&mut self, bytes: &[u8]) -> Result<(), ServerError> {
        self.out.write_all(bytes).map_err(|e| err("write", e))
    }

    /// Makes the file durable and visible under its final name.
    pub fn finish(mut self) -> Result<PathBuf, ServerError> {
        self.out.flush().map_err(|e| err("flush", e))?;
        let fsync = std::time::Instant::now();
        self.out.get_ref().sync_all().map_err(|e| err("fsync", e))?;
        crate::metrics::snapshot_db_saved(fsync.elapsed(), self.started.elapsed());
        fs::rename(&self.tmp, &self.path).map_err(|e| err("rename", e))?;
        if let Some(dir) = self.path.parent() {
            File::open(dir).and_then(|d| d.sync_all()).map_err(|e| err("fsync dir", e))?;
        }
        Ok(self.path.clone())
    }
}

impl Drop for ReceivedFile {
    fn drop(&mut self) {
        // an unfinished file is useless; a finished one was renamed away
        let _ = fs::remove_file(&self.tmp);
    }
}

/// One record: `[u32 LE length][u32 LE crc32c][SnapshotRows]`.
fn encode_record(rows: &SnapshotRows) -> Result<Vec<u8>, ServerError> {
    let body = rows.encode_to_vec();
    let len = u32::try_from(body.len()).map_err(|_| err("write", "chunk too large"))?;
    let mut out = Vec::with_capacity(8 + body.len());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Saves an incoming snapshot's database (the body after its MsgSnap frame) as
/// `<index>.snap.db`, durable before it gets that name.
pub async fn receive(snap_dir: &Path, index: u64, mut db: SnapshotBody) -> Result<PathBuf, ServerError> {
    let mut file = ReceivedFile::create(snap_dir, index)?;
    while let Some(chunk) = tokio_stream::StreamExt::next(&mut db).await {
        let chunk = chunk.map_err(|e| err("receive", e))?;
        file.write_bytes(&chunk)?;
    }
    tokio::task::spawn_blocking(move || file.finish()).await.map_err(|e| err("receive", e))?
}

fn read_records(path: &Path, mut each: impl FnMut(SnapshotRows) -> Result<(), ServerError>) -> Result<(), ServerError> {
    let file = File::open(path).map_err(|e| err(&format!("open {}", path.display()), e))?;
    let mut r = BufReader::new(file);
    let mut head = [0u8; 8];
    loop {
        match r.read_exact(&mut head) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(err("read", e)),
        }
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        let mut body = vec![0u8; len];
        r.read_exact(&mut body).map_err(|e| err("read", e))?;
        if crc32c::crc32c(&body) != crc {
            return Err(err("read", format!("{} is corrupt", path.display())));
        }
        each(SnapshotRows::decode(&body[..]).map_err(|e| err("decode", e))?)?;
    }
}

/// Replaces the store's tables with the received snapshot at `path` (one durable commit) and
/// rebuilds the store's index. The caller reloads the lessor, membership and watchers.
pub fn install(kv: &etcd_mvcc::KvStore, path: &Path) -> Result<(), ServerError> {
    kv.install(|txn| {
        clear_all(txn)?;
        read_records(path, |rows| load_any(txn, &rows))
    })
}

/// A crash between raft recording a received snapshot and the applier installing it leaves
/// the backend behind the newest raft snapshot: install the received file now, before raft
/// starts (raft refuses a backend behind its snapshot). Then drop files no longer needed.
pub fn install_pending(kv: &etcd_mvcc::KvStore, snap_dir: &Path) -> Result<(), ServerError> {
    let (applied, _) = kv.consistent_index();
    let newest = Snapshotter::new(snap_dir)
        .and_then(|s| s.load_newest())
        .map_err(|e| err("cannot read raft snapshots", e))?;
    if let Some(snap) = newest {
        let index = snap.get_metadata().index;
        if index > applied {
            let path = db_path(snap_dir, index);
            if !path.exists() {
                return Err(err(
                    "missing data",
                    format!("the backend (applied index {applied}) is behind raft snapshot {index} and {} is missing", path.display()),
                ));
            }
            tracing::info!(index, applied, "installing a received snapshot raft recorded before a restart");
            install(kv, &path)?;
        }
    }
    purge_received(snap_dir, kv.consistent_index().0);
    Ok(())
}

// ---------------------------------------------------------------- sending

/// POSTs `msg` (metadata already at the state `read` sees) and every table to its target; the
/// transport reports the outcome to raft. `inflight` holds the targets with a transfer running.
pub fn spawn_send(
    runtime: &tokio::runtime::Handle,
    transport: Arc<HttpTransport>,
    msg: Message,
    read: ReadTransaction,
    inflight: Arc<Mutex<std::collections::HashSet<u64>>>,
) {
    let to = msg.to;
    let index = msg.get_snapshot().get_metadata().index;
    runtime.spawn(async move {
        let started = std::time::Instant::now();
        let transfer = etcd_raft::metrics::snapshot_send(to);
        // the table scan blocks; it feeds the request body through a bounded channel, and an
        // error on the way ends the body with an error (the receiver never keeps a partial file)
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<hyper::body::Bytes, String>>(4);
        let producer = tokio::task::spawn_blocking(move || {
            let mut rows_sent = 0u64;
            let mut emit = |rows: SnapshotRows| {
                rows_sent += rows.keys.len() as u64;
                let record = encode_record(&rows)?;
                tx.blocking_send(Ok(record.into())).map_err(|_| err("send", "the request closed"))
            };
            let dumped = dump_all(&read, &mut emit);
            if let Err(e) = &dumped {
                let _ = tx.blocking_send(Err(e.to_string()));
            }
            dumped.map(|_| rows_sent)
        });
        let frames = tokio_stream::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), |r| r.map(hyper::body::Frame::data));
        let body = http_body_util::BodyExt::boxed(http_body_util::StreamBody::new(frames));
        let sent = transport.send_snapshot(msg, body).await;
        let rows = producer.await.map_err(|e| e.to_string()).and_then(|r| r.map_err(|e| e.to_string()));
        inflight.lock().remove(&to);
        match (sent, rows) {
            (Ok(()), Ok(rows)) => {
                transfer.succeeded();
                tracing::info!(to = %format!("{to:x}"), index, rows, took = ?started.elapsed(), "sent a snapshot");
            }
            (sent, rows) => {
                let error = sent.err().map(|e| e.to_string()).or(rows.err()).unwrap_or_default();
                tracing::warn!(to = %format!("{to:x}"), index, error = %error, "sending a snapshot failed");
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use etcd_mvcc::KvStore;
    use etcd_proto::etcdserverpb::PutRequest;

    use super::*;

    fn store_with(dir: &Path, keys: usize) -> KvStore {
        let kv = KvStore::open(&dir.join("db")).unwrap();
        let mut txn = kv.begin_apply().unwrap();
        for i in 0..keys {
            let put = PutRequest { key: format!("k{i}").into_bytes(), value: vec![b'v'; 100], ..Default::default() };
            txn.put(&put, &|_| false).unwrap();
        }
        txn.set_consistent_index(7, 2);
        txn.commit(true).unwrap();
        kv
    }

    fn dump_to_file(kv: &KvStore, snap_dir: &Path, index: u64) -> PathBuf {
        let read = kv.read_all().unwrap();
        let mut file = ReceivedFile::create(snap_dir, index).unwrap();
        dump_all(&read, &mut |rows| file.write(&rows)).unwrap();
        file.finish().unwrap()
    }

    #[test]
    fn a_dumped_store_installs_into_another_with_the_same_state() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        // enough rows for several chunks
        let source = store_with(&a, 30_000);
        let path = dump_to_file(&source, &a, 7);
        assert_eq!(path, db_path(&a, 7));
        assert!(!a.join("0000000000000007.snap.db.tmp").exists());

        let target = store_with(&b, 3);
        install(&target, &path).unwrap();
        assert_eq!(target.consistent_index(), (7, 2));
        assert_eq!(target.current_revision(), source.current_revision());
        assert_eq!(target.hash_kv(0).unwrap(), source.hash_kv(0).unwrap());
        // the installed state is what a reopen finds
        drop(target);
        let reopened = KvStore::open(&b.join("db")).unwrap();
        assert_eq!(reopened.hash_kv(0).unwrap(), source.hash_kv(0).unwrap());
    }

    #[test]
    fn a_damaged_file_is_refused_and_leaves_the_store_as_it_was() {
        let tmp = tempfile::tempdir().unwrap();
        let source = store_with(tmp.path(), 10);
        let path = dump_to_file(&source, tmp.path(), 9);
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&path, bytes).unwrap();

        let other = tempfile::tempdir().unwrap();
        let target = store_with(other.path(), 3);
        let before = target.hash_kv(0).unwrap();
        assert!(install(&target, &path).is_err());
        assert_eq!(target.hash_kv(0).unwrap(), before);
        assert_eq!(target.consistent_index(), (7, 2));
    }

    #[test]
    fn a_snapshot_raft_recorded_but_not_installed_is_installed_at_start() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        let source = store_with(&a, 50);
        let target = store_with(&b, 3);
        // consistent index 7 on both: make the source's newer
        let mut txn = source.begin_apply().unwrap();
        txn.put(&PutRequest { key: b"newer".to_vec(), ..Default::default() }, &|_| false).unwrap();
        txn.set_consistent_index(12, 3);
        txn.commit(true).unwrap();
        dump_to_file(&source, &b, 12);
        let mut snap = raft::eraftpb::Snapshot::default();
        snap.mut_metadata().index = 12;
        snap.mut_metadata().term = 3;
        let snapshotter = Snapshotter::new(&b).unwrap();
        snapshotter.save(&snap).unwrap();

        install_pending(&target, &b).unwrap();
        assert_eq!(target.consistent_index(), (12, 3));
        assert_eq!(target.hash_kv(0).unwrap(), source.hash_kv(0).unwrap());
        assert!(!db_path(&b, 12).exists(), "an installed file is removed");
        // nothing left to do on the next start
        install_pending(&target, &b).unwrap();

        // raft recorded a newer snapshot whose rows are missing: refuse to start
        snap.mut_metadata().index = 20;
        snapshotter.save(&snap).unwrap();
        let e = install_pending(&target, &b).unwrap_err();
        assert!(e.to_string().contains("is behind raft snapshot 20"), "{e}");
    }

    #[test]
    fn purge_removes_installed_and_unfinished_files_only() {
        let tmp = tempfile::tempdir().unwrap();
        for name in ["0000000000000005.snap.db", "0000000000000009.snap.db", "000000000000000a.snap.db.tmp", "db"] {
            fs::write(tmp.path().join(name), b"x").unwrap();
        }
        purge_received(tmp.path(), 5);
        let mut left: Vec<String> =
            fs::read_dir(tmp.path()).unwrap().map(|d| d.unwrap().file_name().to_string_lossy().into_owned()).collect();
        left.sort();
        assert_eq!(left, ["0000000000000009.snap.db", "db"]);
    }
}
