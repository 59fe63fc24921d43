//! etcd's snap files (`member/snap/{term:016x}-{index:016x}.snap`), read and written.
//!
//! A file is a `snappb.snapshot {crc, data}` where `data` is a `raftpb.Snapshot` and `crc` its
//! CRC-32C. Which file counts is etcd's choice (`Snapshotter.LoadNewestAvailable`): the newest
//! by name that reads and checks, and whose (index, term) is one of the WAL's snapshot records
//! at or below its commit index; empty, undecodable or CRC-failing files are skipped.
//!
//! Invariants: reading never modifies the directory (etcd renames a bad file to `.broken`; a
//! conversion must leave etcd's data dir untouched) and never panics; a written file appears
//! whole or not at all (temp file, fsync, rename, directory fsync).

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use etcd_proto::raftpb::Snapshot;
use etcd_proto::snappb::Snapshot as SnapFile;
use etcd_proto::walpb::Snapshot as WalSnapshot;
use prost::Message as _;

/// Errors reading or writing etcd snap files.
#[derive(Debug, thiserror::Error)]
pub enum EtcdSnapError {
    #[error("etcd snap I/O failed on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("snap: no available snapshot")]
    NoSnapshot,
    #[error("etcd snap file {path} is unusable: {reason}")]
    Bad { path: PathBuf, reason: &'static str },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> EtcdSnapError + '_ {
    move |source| EtcdSnapError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `{term:016x}-{index:016x}.snap`.
pub fn snap_name(term: u64, index: u64) -> String {
    format!("{term:016x}-{index:016x}.snap")
}

/// Reads and checks one snap file (etcd's `snap.Read`).
pub fn read_snap_file(path: &Path) -> Result<Snapshot, EtcdSnapError> {
    let bad = |reason| EtcdSnapError::Bad {
        path: path.to_path_buf(),
        reason,
    };
    let b = fs::read(path).map_err(io_err(path))?;
    if b.is_empty() {
        return Err(bad("empty file"));
    }
    let file = SnapFile::decode(b.as_slice()).map_err(|_| bad("not a snappb.snapshot"))?;
    let data = file.data.unwrap_or_default();
    if data.is_empty() || file.crc.unwrap_or(0) == 0 {
        return Err(bad("empty snapshot"));
    }
    if crc32c::crc32c(&data) != file.crc.unwrap_or(0) {
        return Err(bad("crc mismatch"));
    }
    Snapshot::decode(data.as_slice()).map_err(|_| bad("not a raftpb.Snapshot"))
}

/// The newest usable snapshot in `dir` whose (index, term) is among `wal_snaps` (see
/// [`crate::etcd_wal::EtcdWal::valid_snapshot_entries`]); `None` for `wal_snaps` accepts any.
/// Returns the snapshot and its file; files that fail are skipped, as etcd skips them.
pub fn read_snap(
    dir: &Path,
    wal_snaps: Option<&[WalSnapshot]>,
) -> Result<(Snapshot, PathBuf), EtcdSnapError> {
    let mut names = Vec::new();
    for e in fs::read_dir(dir).map_err(io_err(dir))? {
        let e = e.map_err(io_err(dir))?;
        if let Some(n) = e.file_name().to_str() {
            if n.ends_with(".snap") {
                names.push(n.to_string());
            }
        }
    }
    names.sort_unstable_by(|a, b| b.cmp(a));
    for name in names {
        let path = dir.join(&name);
        let Ok(snap) = read_snap_file(&path) else {
            tracing::warn!(path = %path.display(), "skipping an unreadable etcd snap file");
            continue;
        };
        let m = snap.metadata.clone().unwrap_or_default();
        let wanted = wal_snaps.is_none_or(|ws| {
            ws.iter()
                .any(|w| w.index() == m.index() && w.term() == m.term())
        });
        if wanted {
            return Ok((snap, path));
        }
    }
    Err(EtcdSnapError::NoSnapshot)
}

/// Writes `snap` as etcd's `Snapshotter.SaveSnap` names and encodes it, crash-safely.
/// Zero-valued metadata fields are written explicitly, as etcd writes them.
pub fn write_snap(dir: &Path, snap: &Snapshot) -> Result<PathBuf, EtcdSnapError> {
    let mut snap = snap.clone();
    let mut m = snap.metadata.take().unwrap_or_default();
    m.index = Some(m.index());
    m.term = Some(m.term());
    m.conf_state = Some(m.conf_state.take().unwrap_or_default());
    if let Some(cs) = m.conf_state.as_mut() {
        cs.auto_leave = Some(cs.auto_leave());
    }
    let name = snap_name(m.term(), m.index());
    snap.metadata = Some(m);
    let data = snap.encode_to_vec();
    let file = SnapFile {
        crc: Some(crc32c::crc32c(&data)),
        data: Some(data),
    };
    let path = dir.join(&name);
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(&file.encode_to_vec())
        .and_then(|_| f.sync_all())
        .map_err(io_err(&tmp))?;
    fs::rename(&tmp, &path).map_err(io_err(&path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcd_proto::raftpb::{ConfState, SnapshotMetadata};

    fn snap(index: u64, term: u64) -> Snapshot {
        Snapshot {
            data: Some(format!("store at {index}").into_bytes()),
            metadata: Some(SnapshotMetadata {
                conf_state: Some(ConfState {
                    voters: vec![1, 2, 3],
                    ..Default::default()
                }),
                index: Some(index),
                term: Some(term),
            }),
        }
    }

    fn wal_snap(index: u64, term: u64) -> WalSnapshot {
        WalSnapshot {
            index: Some(index),
            term: Some(term),
            conf_state: None,
        }
    }

    #[test]
    fn newest_readable_snap_wins_and_damaged_ones_are_skipped_untouched() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        fs::write(d.join("db"), b"bolt").unwrap();
        let p1 = write_snap(d, &snap(100, 2)).unwrap();
        assert_eq!(
            p1.file_name().unwrap(),
            "0000000000000002-0000000000000064.snap"
        );
        write_snap(d, &snap(200, 2)).unwrap();
        let p3 = write_snap(d, &snap(300, 3)).unwrap();
        let (s, p) = read_snap(d, None).unwrap();
        assert_eq!((s.metadata.unwrap().index(), p), (300, p3.clone()));
        // Not among the WAL's committed snapshot records: skipped.
        let ws = [wal_snap(0, 0), wal_snap(100, 2), wal_snap(200, 2)];
        assert_eq!(
            read_snap(d, Some(&ws)).unwrap().0.metadata.unwrap().index(),
            200
        );
        // A flipped byte in the newest fails its CRC; an empty file is skipped too.
        let mut b = fs::read(&p3).unwrap();
        let n = b.len();
        b[n - 2] ^= 1;
        fs::write(&p3, &b).unwrap();
        fs::write(d.join("0000000000000004-0000000000000190.snap"), b"").unwrap();
        assert!(matches!(
            read_snap_file(&p3),
            Err(EtcdSnapError::Bad {
                reason: "crc mismatch",
                ..
            })
        ));
        assert_eq!(read_snap(d, None).unwrap().0.metadata.unwrap().index(), 200);
        assert!(p3.exists(), "reading leaves files in place");
        assert!(matches!(
            read_snap(d, Some(&[wal_snap(7, 7)])),
            Err(EtcdSnapError::NoSnapshot)
        ));
        assert!(!d
            .join("0000000000000002-0000000000000064.snap.tmp")
            .exists());
    }

    #[test]
    fn snap_file_encodes_zero_metadata_fields_as_etcd_does() {
        let tmp = tempfile::tempdir().unwrap();
        let s = Snapshot {
            data: Some(b"x".to_vec()),
            metadata: Some(SnapshotMetadata {
                conf_state: None,
                index: Some(1),
                term: None,
            }),
        };
        let p = write_snap(tmp.path(), &s).unwrap();
        let file = SnapFile::decode(fs::read(&p).unwrap().as_slice()).unwrap();
        // data(1)="x", metadata(2){conf_state(1){auto_leave(5)=false}, index(2)=1, term(3)=0}
        assert_eq!(
            file.data.unwrap(),
            vec![0x0a, 1, b'x', 0x12, 8, 0x0a, 2, 0x28, 0, 0x10, 1, 0x18, 0]
        );
    }
}
