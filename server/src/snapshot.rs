//! Snapshot transfer: how a member behind the leader's compacted raft log catches up, in etcd's
//! formats so etcd and etcd-rs members catch up from each other.
//!
//! raft-rs's MsgSnapshot carries only metadata. The transport hands it to the leader's applier,
//! which rewrites its metadata to the applier's own position (applied index, its term, the
//! configuration there), sets its `data` to etcd's v2 store JSON of the membership there (what
//! an etcd member recovers its membership from) and opens a read transaction at that same
//! point, so the database sent is exactly the state the metadata names. A task exports that
//! read as etcd's bbolt file (in the snap dir) and POSTs the message and the file to the peer's
//! `/raft/snapshot` (etcd's rafthttp). The receiver writes the body to `snap/<index>.snap.db`
//! (tmp, fsync, rename: only a complete file has that name), then steps the message into raft.
//! When raft accepts it, the receiver's applier installs the file (`install_etcd_db`: one
//! durable write transaction replaces every table), then the index, lessor, membership and
//! watchers are rebuilt from it.
//!
//! Crash rule: raft records the snapshot (snap file, WAL marker) before the applier installs
//! it, so a restart can find the backend behind the newest snapshot; bootstrap then installs
//! the `.snap.db` file raft accepted before starting raft.

use std::fs::{self, File};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use etcd_raft::rafthttp::host::SnapshotBody;
use etcd_raft::{HttpTransport, Snapshotter};
use parking_lot::Mutex;
use raft::eraftpb::Message;
use redb::ReadTransaction;

use crate::errors::ServerError;

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

// ---------------------------------------------------------------- the received file

/// Writes a received snapshot's database in `<index>.snap.db.tmp`, renamed to `<index>.snap.db`
/// by [`ReceivedFile::finish`].
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

    /// Bytes of the database as they arrive from a peer (checked when the file is installed).
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

/// Replaces the store's tables with the received snapshot (etcd's bbolt file) at `path` in one
/// durable commit and rebuilds the store's index. The caller reloads the lessor, membership and
/// watchers.
pub fn install(kv: &etcd_mvcc::KvStore, path: &Path) -> Result<(), ServerError> {
    crate::etcd_backend::install_etcd_db(kv, path).map(|_| ())
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

/// Where the database for a snapshot to `to` is exported before it is sent (a `.tmp` name:
/// [`purge_received`] removes one a crash left behind).
fn export_path(snap_dir: &Path, to: u64, index: u64) -> PathBuf {
    snap_dir.join(format!("{to:x}-{index:016x}.snap.db.tmp"))
}

/// Bytes of the exported database per request body chunk.
const SEND_CHUNK: usize = 1 << 20;

/// POSTs `msg` (metadata and data already at the state `read` sees) and `read` exported as
/// etcd's bbolt file to its target; the transport reports the outcome to raft. `inflight` holds
/// the targets with a transfer running.
pub fn spawn_send(
    runtime: &tokio::runtime::Handle,
    transport: Arc<HttpTransport>,
    snap_dir: PathBuf,
    msg: Message,
    read: ReadTransaction,
    inflight: Arc<Mutex<std::collections::HashSet<u64>>>,
) {
    let to = msg.to;
    let index = msg.get_snapshot().get_metadata().index;
    runtime.spawn(async move {
        let started = std::time::Instant::now();
        let transfer = etcd_raft::metrics::snapshot_send(to);
        let path = export_path(&snap_dir, to, index);
        let result = send(&transport, msg, read, &path).await;
        let _ = fs::remove_file(&path);
        inflight.lock().remove(&to);
        match result {
            Ok(bytes) => {
                transfer.succeeded();
                let size = crate::logging::human_bytes(bytes);
                tracing::info!("snapshot-index" = index, "remote-peer-id" = %format!("{to:x}"), bytes, size, took = %crate::logging::go_duration(started.elapsed()), "sent database snapshot");
            }
            Err(e) => tracing::warn!(to = %format!("{to:x}"), index, error = %e, "sending a database snapshot failed"),
        }
    });
}

/// Exports `read` to `path`, then streams it after `msg`; the bytes sent.
async fn send(transport: &HttpTransport, msg: Message, read: ReadTransaction, path: &Path) -> Result<u64, String> {
    let to = msg.to;
    let export = {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || crate::etcd_backend::export_etcd_db_from(&read, &path)).await
    };
    if let Err(e) = export.map_err(|e| e.to_string()).and_then(|r| r.map_err(|e| e.to_string())) {
        transport.host().report_snapshot(to, false);
        return Err(format!("cannot export the backend: {e}"));
    }
    let mut file = File::open(path).map_err(|e| e.to_string())?;
    let bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
    let (index, size) = (msg.get_snapshot().get_metadata().index, crate::logging::human_bytes(bytes));
    tracing::info!("snapshot-index" = index, "remote-peer-id" = %format!("{to:x}"), bytes, size, "sending database snapshot");
    // the file is read off the async workers and fed to the request body through a bounded
    // channel; a read error ends the body with an error (the receiver keeps no partial file)
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<hyper::body::Bytes, String>>(4);
    let reader = tokio::task::spawn_blocking(move || loop {
        let mut buf = vec![0u8; SEND_CHUNK];
        match file.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                buf.truncate(n);
                if tx.blocking_send(Ok(buf.into())).is_err() {
                    return;
                }
            }
            Err(e) => {
                let _ = tx.blocking_send(Err(e.to_string()));
                return;
            }
        }
    });
    let frames = tokio_stream::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), |r| r.map(hyper::body::Frame::data));
    let body = http_body_util::BodyExt::boxed(http_body_util::StreamBody::new(frames));
    let sent = transport.send_snapshot(msg, body).await;
    reader.abort();
    sent.map(|_| bytes).map_err(|e| e.to_string())
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

    /// `kv` exported as etcd's file and received, in chunks, as `<index>.snap.db` in `snap_dir`.
    fn export_and_receive(kv: &KvStore, snap_dir: &Path, index: u64) -> PathBuf {
        let exported = snap_dir.join("exported.tmp");
        crate::etcd_backend::export_etcd_db_from(&kv.read_all().unwrap(), &exported).unwrap();
        let bytes = fs::read(&exported).unwrap();
        fs::remove_file(&exported).unwrap();
        let chunks: Vec<Result<hyper::body::Bytes, String>> = bytes.chunks(4096).map(|c| Ok(c.to_vec().into())).collect();
        let body: SnapshotBody = Box::pin(tokio_stream::iter(chunks));
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(receive(snap_dir, index, body)).unwrap()
    }

    #[test]
    fn a_received_etcd_database_installs_into_another_store_with_the_same_state() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        fs::create_dir_all(&a).unwrap();
        fs::create_dir_all(&b).unwrap();
        let source = store_with(&a, 3000);
        let path = export_and_receive(&source, &b, 7);
        assert_eq!(path, db_path(&b, 7));
        assert!(!b.join("0000000000000007.snap.db.tmp").exists());

        let target = store_with(&b, 3);
        install(&target, &path).unwrap();
        assert_eq!(target.consistent_index().0, 7);
        assert_eq!(target.current_revision(), source.current_revision());
        assert_eq!(target.hash_kv(0).unwrap(), source.hash_kv(0).unwrap());
        // the installed state is what a reopen finds
        drop(target);
        let reopened = KvStore::open(&b.join("db")).unwrap();
        assert_eq!(reopened.hash_kv(0).unwrap(), source.hash_kv(0).unwrap());
    }

    #[test]
    fn a_body_that_is_not_etcds_database_is_refused_and_leaves_the_store_as_it_was() {
        let tmp = tempfile::tempdir().unwrap();
        let body: SnapshotBody = Box::pin(tokio_stream::iter(vec![Ok(hyper::body::Bytes::from_static(b"not a bbolt file"))]));
        let path = tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(receive(tmp.path(), 9, body)).unwrap();
        let target = store_with(tmp.path(), 3);
        let before = target.hash_kv(0).unwrap();
        assert!(install(&target, &path).is_err());
        assert_eq!(target.hash_kv(0).unwrap(), before);
        assert_eq!(target.consistent_index(), (7, 2));
    }

    #[test]
    fn a_snapshot_raft_recorded_but_not_installed_is_installed_at_start() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        fs::create_dir_all(&a).unwrap();
        fs::create_dir_all(&b).unwrap();
        let source = store_with(&a, 50);
        let target = store_with(&b, 3);
        // consistent index 7 on both: make the source's newer
        let mut txn = source.begin_apply().unwrap();
        txn.put(&PutRequest { key: b"newer".to_vec(), ..Default::default() }, &|_| false).unwrap();
        txn.set_consistent_index(12, 3);
        txn.commit(true).unwrap();
        export_and_receive(&source, &b, 12);
        let mut snap = raft::eraftpb::Snapshot::default();
        snap.mut_metadata().index = 12;
        snap.mut_metadata().term = 3;
        let snapshotter = Snapshotter::new(&b).unwrap();
        snapshotter.save(&snap).unwrap();

        install_pending(&target, &b).unwrap();
        assert_eq!(target.consistent_index().0, 12);
        assert_eq!(target.hash_kv(0).unwrap(), source.hash_kv(0).unwrap());
        assert!(!db_path(&b, 12).exists(), "an installed file is removed");
        // nothing left to do on the next start
        install_pending(&target, &b).unwrap();

        // raft recorded a newer snapshot whose database is missing: refuse to start
        snap.mut_metadata().index = 20;
        snapshotter.save(&snap).unwrap();
        let e = install_pending(&target, &b).unwrap_err();
        assert!(e.to_string().contains("is behind raft snapshot 20"), "{e}");
    }

    #[test]
    fn purge_removes_installed_and_unfinished_files_only() {
        let tmp = tempfile::tempdir().unwrap();
        for name in ["0000000000000005.snap.db", "0000000000000009.snap.db", "000000000000000a.snap.db.tmp", "2a-000000000000000b.snap.db.tmp", "db"] {
            fs::write(tmp.path().join(name), b"x").unwrap();
        }
        purge_received(tmp.path(), 5);
        let mut left: Vec<String> =
            fs::read_dir(tmp.path()).unwrap().map(|d| d.unwrap().file_name().to_string_lossy().into_owned()).collect();
        left.sort();
        assert_eq!(left, ["0000000000000009.snap.db", "db"]);
    }
}
