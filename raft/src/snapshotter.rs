//! `Snapshotter`: raft snapshot files in `<member>/snap/`.
//!
//! Format: one file per snapshot named `{term:016x}-{index:016x}.snap`, holding
//! `[u32 LE crc32c(body)][body]` where body is the protobuf-encoded raft
//! `Snapshot` (metadata: index, term, conf_state; data: usually empty, because
//! the backend itself lives beside it at `snap/db`).
//!
//! Crash rule: a snapshot is written to `<name>.tmp`, fsynced, renamed into
//! place and the directory fsynced, so a `.snap` file is complete or absent.
//! A `.snap` file that fails its checksum anyway (disk damage) is skipped with
//! a warning and the next older one is used. Only `*.snap` and `*.snap.tmp`
//! files are ever touched here.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use protobuf::Message as _;
use raft::eraftpb::Snapshot;

use crate::error::SnapshotError;

/// How many snapshot files are kept; older ones are purged.
pub const MAX_SNAP_FILES: usize = 5;

/// Saves and loads raft snapshots in one directory.
#[derive(Debug, Clone)]
pub struct Snapshotter {
    dir: PathBuf,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Snapshotter {
    /// A snapshotter over `dir`, created if missing.
    pub fn new(dir: &Path) -> Result<Snapshotter, SnapshotError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        Ok(Snapshotter {
            dir: dir.to_path_buf(),
        })
    }

    /// The directory snapshots are kept in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn file_name(term: u64, index: u64) -> String {
        format!("{term:016x}-{index:016x}.snap")
    }

    /// Writes `snap` durably, then purges all but the newest [`MAX_SNAP_FILES`].
    pub fn save(&self, snap: &Snapshot) -> Result<PathBuf, SnapshotError> {
        let _total = crate::metrics::SNAP_SAVE_SECONDS.start_timer();
        let meta = snap.get_metadata();
        let name = Self::file_name(meta.term, meta.index);
        let path = self.dir.join(&name);
        let tmp = self.dir.join(format!("{name}.tmp"));
        let marshalling = crate::metrics::SNAP_MARSHALLING_SECONDS.start_timer();
        let body = snap
            .write_to_bytes()
            .map_err(|e| SnapshotError::Encode(e.to_string()))?;
        marshalling.observe_duration();
        {
            let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
            f.write_all(&crc32c::crc32c(&body).to_le_bytes())
                .and_then(|_| f.write_all(&body))
                .and_then(|_| {
                    let _fsync = crate::metrics::SNAP_FSYNC_SECONDS.start_timer();
                    f.sync_all()
                })
                .map_err(io_err(&tmp))?;
        }
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&self.dir))?;
        self.purge()?;
        Ok(path)
    }

    /// Snapshot files, newest first (names sort by term, then index).
    fn snap_files(&self) -> Result<Vec<PathBuf>, SnapshotError> {
        let mut names = Vec::new();
        for dent in fs::read_dir(&self.dir).map_err(io_err(&self.dir))? {
            let dent = dent.map_err(io_err(&self.dir))?;
            let name = dent.file_name().to_string_lossy().into_owned();
            if name.ends_with(".snap") {
                names.push(name);
            }
        }
        names.sort_unstable_by(|a, b| b.cmp(a));
        Ok(names.into_iter().map(|n| self.dir.join(n)).collect())
    }

    /// Reads and checks one snapshot file.
    pub fn read(path: &Path) -> Result<Snapshot, SnapshotError> {
        let bytes = fs::read(path).map_err(io_err(path))?;
        if bytes.len() < 4 {
            return Err(SnapshotError::Corrupt(path.to_path_buf()));
        }
        let crc = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        let body = &bytes[4..];
        if crc32c::crc32c(body) != crc {
            return Err(SnapshotError::Corrupt(path.to_path_buf()));
        }
        Snapshot::parse_from_bytes(body).map_err(|_| SnapshotError::Corrupt(path.to_path_buf()))
    }

    /// The newest snapshot that reads back intact, or None if there is none.
    pub fn load_newest(&self) -> Result<Option<Snapshot>, SnapshotError> {
        for path in self.snap_files()? {
            match Self::read(&path) {
                Ok(snap) => return Ok(Some(snap)),
                Err(SnapshotError::Corrupt(p)) => {
                    tracing::warn!(file = %p.display(), "skipping a corrupt snapshot file");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// Deletes all but the newest [`MAX_SNAP_FILES`] snapshot files.
    pub fn purge(&self) -> Result<(), SnapshotError> {
        for path in self.snap_files()?.into_iter().skip(MAX_SNAP_FILES) {
            fs::remove_file(&path).map_err(io_err(&path))?;
            tracing::debug!(file = %path.display(), "purged an old snapshot file");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::eraftpb::ConfState;

    fn snap(index: u64, term: u64) -> Snapshot {
        let mut s = Snapshot::default();
        s.mut_metadata().index = index;
        s.mut_metadata().term = term;
        let cs = ConfState {
            voters: vec![1, 2, 3],
            learners: vec![4],
            ..Default::default()
        };
        s.mut_metadata().set_conf_state(cs);
        s
    }

    #[test]
    fn save_then_load_newest_returns_the_latest_snapshot() {
        let tmp = tempfile::tempdir().unwrap();
        let ss = Snapshotter::new(&tmp.path().join("snap")).unwrap();
        assert!(ss.load_newest().unwrap().is_none());
        ss.save(&snap(10, 2)).unwrap();
        let p = ss.save(&snap(20, 3)).unwrap();
        assert_eq!(
            p.file_name().unwrap().to_string_lossy(),
            "0000000000000003-0000000000000014.snap"
        );
        assert_eq!(ss.load_newest().unwrap(), Some(snap(20, 3)));
    }

    #[test]
    fn corrupt_newest_falls_back_to_the_previous_snapshot() {
        let tmp = tempfile::tempdir().unwrap();
        let ss = Snapshotter::new(&tmp.path().join("snap")).unwrap();
        ss.save(&snap(10, 2)).unwrap();
        let newest = ss.save(&snap(20, 2)).unwrap();
        let mut bytes = fs::read(&newest).unwrap();
        let n = bytes.len();
        bytes[n - 1] ^= 0x01;
        fs::write(&newest, bytes).unwrap();
        assert_eq!(ss.load_newest().unwrap(), Some(snap(10, 2)));
    }

    #[test]
    fn purge_keeps_the_five_newest_and_leaves_other_files_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("snap");
        let ss = Snapshotter::new(&dir).unwrap();
        fs::write(dir.join("db"), b"backend").unwrap();
        for i in 1..=8 {
            ss.save(&snap(i * 100, 1)).unwrap();
        }
        let mut left: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|d| d.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        let mut expected: Vec<String> = (4..=8)
            .map(|i| Snapshotter::file_name(1, i * 100))
            .collect();
        expected.push("db".to_string());
        expected.sort();
        assert_eq!(left, expected);
    }
}
