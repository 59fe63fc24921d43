//! `Wal`: the raft write-ahead log in `<member>/wal/`.
//!
//! Format: a sequence of segment files named `{seq:016x}-{first_index:016x}.wal`,
//! where `seq` counts up from the first segment without gaps and `first_index` is
//! the index of the first entry expected in that segment. Each segment is a
//! sequence of records (see [`crate::wal_record`] for the byte layout) and starts
//! with a Metadata record and the HardState current when it was cut. A new
//! segment is written as `<name>.tmp`, fsynced, renamed into place, and the
//! directory fsynced, so a segment file either exists with its header or not at
//! all. Every [`Wal::save`] writes its records and calls fdatasync once, unless, as etcd's
//! `raft.MustSync`, it holds no entry and the HardState's term and vote are unchanged (only
//! the commit index moved: commit is not needed for safety, a restart learns it again from
//! the leader or the backend's applied index). Such records reach the disk with the next
//! fdatasync, at the latest before the segment is cut.
//!
//! Pre-zeroed space: a segment file is longer than its records. It is born with its
//! header followed by zeros (up to 64 KiB), and a background thread
//! (`wal_zero.rs`) extends it with written, fsynced zeros before the records reach
//! its end, so a record is written (pwrite at the logical end, never O_APPEND) over bytes
//! that exist on disk and its fdatasync writes no inode. The logical end of a segment is
//! the end of its last record; zeros after it are the normal end of any segment, the last
//! one or an earlier one. With `--unsafe-no-fsync` ([`Wal::set_unsafe_no_fsync`]) records
//! are written but never fdatasynced, and no space is zero-filled.
//!
//! Reading: records are replayed in order; a later Entry record for an index
//! replaces the earlier one and every entry after it (a conflicting tail written
//! by an old leader), and the last HardState wins.
//!
//! Crash rule: a torn or corrupt tail of the LAST segment (a short record, a bad
//! length, a checksum mismatch, zeros followed by anything but zeros, and everything
//! after it) is what a crash during a write leaves, so it is truncated back to the last
//! good record with a warning (the truncation also drops the zero-filled space, which is
//! filled again; nothing stale is ever left past the logical end, where the next records
//! go). A write torn so that its first bytes are zeros but later ones landed is caught
//! by the same rule; only the unacknowledged batch in flight can be torn, so nothing
//! fsynced follows it.
//! Damage in any EARLIER segment was fsynced data that is now lost: opening fails
//! with [`WalError::Corrupt`] naming the file and offset, and nothing is
//! silently dropped.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use raft::eraftpb::{Entry, HardState};

use crate::error::WalError;
use crate::wal_record::{decode_records, encode_record, Record};
use crate::wal_zero::{ZeroFiller, MIN_CHUNK};

pub use crate::wal_record::WalMetadata;

/// A segment is cut once it grows beyond this many bytes.
pub const SEGMENT_SIZE_BYTES: u64 = 64 * 1024 * 1024;

/// What [`Wal::open`] read back.
#[derive(Debug, Clone, Default)]
pub struct WalContents {
    pub metadata: WalMetadata,
    /// The last HardState written (default if none was).
    pub hard_state: HardState,
    /// Entries with index > the snapshot index, contiguous, conflicts resolved.
    pub entries: Vec<Entry>,
}

#[derive(Debug, Clone)]
struct Segment {
    seq: u64,
    first_index: u64,
    path: PathBuf,
}

/// An open write-ahead log, writing at the logical end of its last segment.
#[derive(Debug)]
pub struct Wal {
    dir: PathBuf,
    segments: Vec<Segment>,
    file: Arc<File>,
    /// Keeps zero-filled space ahead of `file_len` (None with `--unsafe-no-fsync`).
    filler: Option<ZeroFiller>,
    /// `--unsafe-no-fsync`: records are written, never fdatasynced.
    no_fsync: bool,
    /// The logical end of the last segment: the end of its last record.
    file_len: u64,
    /// Records were written to the last segment since its last fdatasync (commit-only HardStates).
    unsynced: bool,
    metadata: WalMetadata,
    hard_state: HardState,
    last_index: u64,
    segment_size: u64,
    buf: Vec<u8>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> WalError + '_ {
    move |source| WalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn segment_name(seq: u64, first_index: u64) -> String {
    format!("{seq:016x}-{first_index:016x}.wal")
}

pub(crate) fn parse_segment_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(".wal")?;
    let (seq, index) = stem.split_once('-')?;
    if seq.len() != 16 || index.len() != 16 {
        return None;
    }
    Some((
        u64::from_str_radix(seq, 16).ok()?,
        u64::from_str_radix(index, 16).ok()?,
    ))
}

/// The directory holding `path` ("." for a bare relative name such as `--wal-dir wal`).
fn sync_dir(dir: &Path) -> Result<(), WalError> {
    crate::durable_fs::fsync_dir(dir).map_err(io_err(dir))
}

fn encode(records: &[Record], out: &mut Vec<u8>) -> Result<(), WalError> {
    for r in records {
        encode_record(r, out).map_err(WalError::Encode)?;
    }
    Ok(())
}

/// Lists the segments of `dir` sorted by sequence, removing leftover `.tmp`
/// files of an interrupted cut, and checks that no sequence number is missing.
fn list_segments(dir: &Path) -> Result<Vec<Segment>, WalError> {
    let mut segments = Vec::new();
    for dent in fs::read_dir(dir).map_err(io_err(dir))? {
        let dent = dent.map_err(io_err(dir))?;
        let path = dent.path();
        let name = dent.file_name().to_string_lossy().into_owned();
        if name.ends_with(".wal.tmp") {
            tracing::warn!(file = %path.display(), "removing a WAL segment left unfinished by a crash");
            fs::remove_file(&path).map_err(io_err(&path))?;
            continue;
        }
        if !name.ends_with(".wal") {
            continue;
        }
        let (seq, first_index) =
            parse_segment_name(&name).ok_or_else(|| WalError::BadFileName(path.clone()))?;
        segments.push(Segment {
            seq,
            first_index,
            path,
        });
    }
    segments.sort_by_key(|s| s.seq);
    for (i, s) in segments.iter().enumerate() {
        let expected = segments[0].seq + i as u64;
        if s.seq != expected {
            return Err(WalError::MissingSegment {
                dir: dir.to_path_buf(),
                expected,
            });
        }
    }
    Ok(segments)
}

/// Opens a segment for writing at explicit offsets (never O_APPEND: pwrite would append).
fn open_for_writing(path: &Path) -> Result<File, WalError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io_err(path))
}

/// The length a new segment is born with: its header, then zeros up to a small first chunk
/// (no more than the segment size; the filler extends it in the background).
fn born_len(header_len: usize, segment_size: u64) -> u64 {
    (header_len as u64).max(MIN_CHUNK.min(segment_size))
}

/// Writes a complete segment file (header records, then zeros up to `len`) atomically.
fn write_new_segment(
    dir: &Path,
    seq: u64,
    first_index: u64,
    header: &[u8],
    len: u64,
) -> Result<(Segment, File), WalError> {
    let path = dir.join(segment_name(seq, first_index));
    let tmp = dir.join(format!("{}.tmp", segment_name(seq, first_index)));
    {
        let mut bytes = header.to_vec();
        bytes.resize((len as usize).max(header.len()), 0);
        let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(&bytes).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
    }
    fs::rename(&tmp, &path).map_err(io_err(&path))?;
    sync_dir(dir)?;
    let file = open_for_writing(&path)?;
    Ok((
        Segment {
            seq,
            first_index,
            path,
        },
        file,
    ))
}

/// What [`replay`] read from a WAL's segments.
struct Replayed {
    metadata: WalMetadata,
    hard_state: HardState,
    entries: Vec<Entry>,
    /// Index of the last entry record read (conflicting tails included).
    last_index: u64,
    /// Bytes of good records in the last segment.
    last_len: u64,
}

/// Reads every segment in order (see the module docs' reading and crash rules); a torn or
/// corrupt tail of the last segment is handed to `torn_tail(segment, valid_len)` and ignored.
fn replay(
    dir: &Path,
    segments: &[Segment],
    snap_index: u64,
    mut torn_tail: impl FnMut(&Segment, u64) -> Result<(), WalError>,
) -> Result<Replayed, WalError> {
    if segments.is_empty() {
        return Err(WalError::NotFound(dir.to_path_buf()));
    }
    let mut metadata = None;
    let mut hard_state = HardState::default();
    let mut entries: Vec<Entry> = Vec::new();
    let mut last_index = snap_index;
    let mut last_len = 0u64;
    let last_seq = segments[segments.len() - 1].seq;

    for seg in segments {
        let mut bytes = Vec::new();
        File::open(&seg.path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(io_err(&seg.path))?;
        let decoded = decode_records(&bytes);
        if let Some(failure) = decoded.failure {
            if seg.seq != last_seq {
                return Err(WalError::Corrupt {
                    file: seg.path.clone(),
                    offset: decoded.valid_len as u64,
                });
            }
            tracing::warn!(
                file = %seg.path.display(),
                offset = decoded.valid_len,
                dropped_bytes = bytes.len() - decoded.valid_len,
                ?failure,
                "a torn or corrupt tail of the last WAL segment ends the log at its last good record"
            );
            torn_tail(seg, decoded.valid_len as u64)?;
        }
        if seg.seq == last_seq {
            last_len = decoded.valid_len as u64;
        }
        for record in decoded.records {
            match record {
                Record::Metadata(m) => metadata = Some(m),
                Record::HardState(hs) => hard_state = hs,
                Record::SnapshotMarker { .. } => {}
                Record::Entry(e) => {
                    last_index = e.index;
                    if e.index <= snap_index {
                        continue;
                    }
                    let next = entries.last().map_or(snap_index + 1, |l| l.index + 1);
                    if e.index > next {
                        return Err(WalError::MissingEntries {
                            dir: dir.to_path_buf(),
                            expected: next,
                            found: e.index,
                        });
                    }
                    let keep = (e.index - (snap_index + 1)) as usize;
                    entries.truncate(keep);
                    entries.push(e);
                }
            }
        }
    }
    let metadata = metadata.ok_or_else(|| WalError::MissingMetadata(dir.to_path_buf()))?;
    Ok(Replayed {
        metadata,
        hard_state,
        entries,
        last_index,
        last_len,
    })
}

impl Wal {
    /// True if `dir` holds at least one WAL segment.
    pub fn exists(dir: &Path) -> bool {
        fs::read_dir(dir)
            .map(|rd| {
                rd.filter_map(|d| d.ok())
                    .any(|d| d.file_name().to_string_lossy().ends_with(".wal"))
            })
            .unwrap_or(false)
    }

    /// Creates a new WAL in `dir` (which must not hold one) whose first segment
    /// holds `metadata` and an empty snapshot marker.
    pub fn create(dir: &Path, metadata: WalMetadata) -> Result<Wal, WalError> {
        if Wal::exists(dir) {
            return Err(WalError::AlreadyExists(dir.to_path_buf()));
        }
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        sync_dir(crate::durable_fs::parent_dir(dir))?;
        let mut header = Vec::new();
        encode(
            &[
                Record::Metadata(metadata),
                Record::SnapshotMarker { index: 0, term: 0 },
            ],
            &mut header,
        )?;
        let len = born_len(header.len(), SEGMENT_SIZE_BYTES);
        let (segment, file) = write_new_segment(dir, 0, 0, &header, len)?;
        let file = Arc::new(file);
        let filler = start_filler(&file, &segment.path, len, SEGMENT_SIZE_BYTES)?;
        Ok(Wal {
            dir: dir.to_path_buf(),
            segments: vec![segment],
            file,
            filler: Some(filler),
            no_fsync: false,
            unsynced: false,
            file_len: header.len() as u64,
            metadata,
            hard_state: HardState::default(),
            last_index: 0,
            segment_size: SEGMENT_SIZE_BYTES,
            buf: Vec::new(),
        })
    }

    /// Opens the WAL in `dir` for appending and reads back everything after the
    /// snapshot `(index, term)` the caller restored. See the module docs for the
    /// crash rule applied to damaged files.
    pub fn open(dir: &Path, after_snapshot: (u64, u64)) -> Result<(Wal, WalContents), WalError> {
        let segments = list_segments(dir)?;
        let replayed = replay(dir, &segments, after_snapshot.0, |seg, valid_len| {
            let f = OpenOptions::new()
                .write(true)
                .open(&seg.path)
                .map_err(io_err(&seg.path))?;
            f.set_len(valid_len)
                .and_then(|_| f.sync_all())
                .map_err(io_err(&seg.path))
        })?;
        let Replayed {
            metadata,
            hard_state,
            entries,
            last_index,
            mut last_len,
        } = replayed;
        let last = &segments[segments.len() - 1];
        let file = open_for_writing(&last.path)?;
        if last_len == 0 {
            // The whole segment was torn away: give it its header back.
            let mut header = Vec::new();
            encode(
                &[
                    Record::Metadata(metadata),
                    Record::HardState(hard_state.clone()),
                ],
                &mut header,
            )?;
            file.write_all_at(&header, 0)
                .and_then(|_| file.sync_data())
                .map_err(io_err(&last.path))?;
            last_len = header.len() as u64;
        }
        // Past `last_len` the file holds only zeros now (checked above, or truncated).
        let size = file.metadata().map_err(io_err(&last.path))?.len();
        let file = Arc::new(file);
        let filler = start_filler(&file, &last.path, size.max(last_len), SEGMENT_SIZE_BYTES)?;
        let wal = Wal {
            dir: dir.to_path_buf(),
            segments,
            file,
            filler: Some(filler),
            no_fsync: false,
            unsynced: false,
            file_len: last_len,
            metadata,
            hard_state: hard_state.clone(),
            last_index: last_index.max(entries.last().map_or(0, |e| e.index)),
            segment_size: SEGMENT_SIZE_BYTES,
            buf: Vec::new(),
        };
        Ok((
            wal,
            WalContents {
                metadata,
                hard_state,
                entries,
            },
        ))
    }

    /// Reads the WAL in `dir` as [`Wal::open`] does, without opening it for writing or changing
    /// any file: a torn tail of the last segment is left in place and ignored (for offline tools
    /// reading a stopped member's log).
    pub fn read(dir: &Path, after_snapshot: (u64, u64)) -> Result<WalContents, WalError> {
        let segments = list_segments(dir)?;
        let r = replay(dir, &segments, after_snapshot.0, |_, _| Ok(()))?;
        Ok(WalContents {
            metadata: r.metadata,
            hard_state: r.hard_state,
            entries: r.entries,
        })
    }

    /// Appends the HardState (if given and not empty) and `entries`, then
    /// fdatasyncs once. Cuts a new segment afterwards if this one grew too big.
    pub fn save(&mut self, hs: Option<&HardState>, entries: &[Entry]) -> Result<(), WalError> {
        self.buf.clear();
        let mut buf = std::mem::take(&mut self.buf);
        let result = self.save_into(&mut buf, hs, entries);
        self.buf = buf;
        result
    }

    fn save_into(
        &mut self,
        buf: &mut Vec<u8>,
        hs: Option<&HardState>,
        entries: &[Entry],
    ) -> Result<(), WalError> {
        // Entries before the HardState: a torn batch can then never leave a
        // commit index pointing past the entries that made it to disk.
        for e in entries {
            encode_record(&Record::Entry(e.clone()), buf).map_err(WalError::Encode)?;
        }
        let hs = hs.filter(|hs| **hs != HardState::default());
        if let Some(hs) = hs {
            encode_record(&Record::HardState(hs.clone()), buf).map_err(WalError::Encode)?;
        }
        if buf.is_empty() {
            return Ok(());
        }
        if self.must_sync(hs, entries) {
            self.write_and_sync(buf)?;
        } else {
            self.write_unsynced(buf)?;
        }
        if let Some(hs) = hs {
            self.hard_state = hs.clone();
        }
        if let Some(last) = entries.last() {
            self.last_index = last.index;
        }
        self.cut_if_full()
    }

    /// Whether [`Wal::save`] of these would fdatasync (etcd's `raft.MustSync`): entries, or a
    /// new term or vote.
    pub fn must_sync(&self, hs: Option<&HardState>, entries: &[Entry]) -> bool {
        let hs = hs.filter(|hs| **hs != HardState::default());
        !entries.is_empty() || hs.is_some_and(|hs| hs.term != self.hard_state.term || hs.vote != self.hard_state.vote)
    }

    /// Records that the log now starts after snapshot `(index, term)`; fsynced.
    pub fn save_snapshot_marker(&mut self, index: u64, term: u64) -> Result<(), WalError> {
        let mut buf = Vec::new();
        encode_record(&Record::SnapshotMarker { index, term }, &mut buf)
            .map_err(WalError::Encode)?;
        self.write_and_sync(&buf)?;
        self.cut_if_full()
    }

    /// Writes `buf` at the logical end without fdatasync (the next sync makes it durable).
    fn write_unsynced(&mut self, buf: &[u8]) -> Result<(), WalError> {
        let path = &self.segments[self.segments.len() - 1].path;
        match &self.filler {
            Some(filler) => filler.write_at(buf, self.file_len, false),
            None => self.file.write_all_at(buf, self.file_len),
        }
        .map_err(io_err(path))?;
        self.file_len += buf.len() as u64;
        self.unsynced = !self.no_fsync;
        crate::metrics::WAL_WRITE_BYTES.add(buf.len() as i64);
        Ok(())
    }

    /// Writes `buf` at the logical end and fdatasyncs (unless `--unsafe-no-fsync`).
    fn write_and_sync(&mut self, buf: &[u8]) -> Result<(), WalError> {
        let path = &self.segments[self.segments.len() - 1].path;
        let sync = !self.no_fsync;
        let timer = crate::metrics::WAL_FSYNC_SECONDS.start_timer();
        let started = std::time::Instant::now();
        match &self.filler {
            Some(filler) => filler.write_at(buf, self.file_len, sync),
            None => self.file.write_all_at(buf, self.file_len).and_then(|_| {
                if sync {
                    self.file.sync_data()
                } else {
                    Ok(())
                }
            }),
        }
        .map_err(io_err(path))?;
        if sync {
            timer.observe_duration();
            warn_if_slow_sync(started.elapsed());
        } else {
            // as etcd: no fsync, no fsync duration
            timer.stop_and_discard();
        }
        self.file_len += buf.len() as u64;
        self.unsynced = false;
        crate::metrics::WAL_WRITE_BYTES.add(buf.len() as i64);
        Ok(())
    }

    fn cut_if_full(&mut self) -> Result<(), WalError> {
        if self.file_len < self.segment_size {
            return Ok(());
        }
        if self.unsynced {
            // an earlier segment holds only fsynced records (the crash rule above)
            let path = &self.segments[self.segments.len() - 1].path;
            self.file.sync_data().map_err(io_err(path))?;
            self.unsynced = false;
        }
        let seq = self.segments[self.segments.len() - 1].seq + 1;
        let mut header = Vec::new();
        encode(
            &[
                Record::Metadata(self.metadata),
                Record::HardState(self.hard_state.clone()),
            ],
            &mut header,
        )?;
        let len = if self.no_fsync {
            header.len() as u64
        } else {
            born_len(header.len(), self.segment_size)
        };
        let (segment, file) =
            write_new_segment(&self.dir, seq, self.last_index + 1, &header, len)?;
        tracing::debug!(file = %segment.path.display(), "cut a new WAL segment");
        // The old segment's filler stops (and its thread ends) before the new one starts.
        self.filler = None;
        let file = Arc::new(file);
        if !self.no_fsync {
            self.filler = Some(start_filler(&file, &segment.path, len, self.segment_size)?);
        }
        self.segments.push(segment);
        self.file = file;
        self.file_len = header.len() as u64;
        Ok(())
    }

    /// `--unsafe-no-fsync` (etcd: "Disables fsync, unsafe, will cause data loss"): records
    /// are still written, but never fdatasynced, and no space is zero-filled ahead of them.
    pub fn set_unsafe_no_fsync(&mut self, on: bool) {
        self.no_fsync = on;
        if on {
            self.filler = None;
        }
    }

    /// Deletes the segments whose entries are all at or below `index` (they are
    /// covered by a snapshot). The segment being appended to is always kept.
    pub fn release_to(&mut self, index: u64) -> Result<(), WalError> {
        let mut remove = 0;
        while remove + 1 < self.segments.len() && self.segments[remove + 1].first_index <= index + 1
        {
            remove += 1;
        }
        if remove == 0 {
            return Ok(());
        }
        for seg in self.segments.drain(..remove) {
            fs::remove_file(&seg.path).map_err(io_err(&seg.path))?;
            tracing::debug!(file = %seg.path.display(), "released a WAL segment covered by a snapshot");
        }
        sync_dir(&self.dir)
    }

    /// The member identity written in this WAL.
    pub fn metadata(&self) -> WalMetadata {
        self.metadata
    }

    /// The last HardState written.
    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    /// The index of the last entry written.
    pub fn last_index(&self) -> u64 {
        self.last_index
    }

    /// The segment files currently on disk, oldest first.
    pub fn segment_paths(&self) -> Vec<PathBuf> {
        self.segments.iter().map(|s| s.path.clone()).collect()
    }

    #[cfg(test)]
    pub(crate) fn set_segment_size(&mut self, bytes: u64) {
        self.segment_size = bytes;
        if let Some(f) = &self.filler {
            f.set_cap(bytes);
        }
    }

    /// The logical end of the last segment (the end of its last record).
    #[cfg(test)]
    pub(crate) fn logical_len(&self) -> u64 {
        self.file_len
    }

    /// Waits for the background zero fill; returns the filled length (tests).
    #[cfg(test)]
    pub(crate) fn wait_filled(&self) -> u64 {
        self.filler.as_ref().map_or(0, |f| f.wait_idle())
    }
}

/// Starts the zero filler of a segment file (see `wal_zero.rs`).
fn start_filler(file: &Arc<File>, path: &Path, size: u64, cap: u64) -> Result<ZeroFiller, WalError> {
    ZeroFiller::start(file.clone(), path.to_path_buf(), size, cap).map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    const META: WalMetadata = WalMetadata {
        node_id: 0x8e9e05c52164694d,
        cluster_id: 0xcdf818194e3a8c32,
    };

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: format!("data-{index}-{term}").into_bytes().into(),
            ..Default::default()
        }
    }

    fn hs(term: u64, commit: u64) -> HardState {
        HardState {
            term,
            vote: 1,
            commit,
            ..Default::default()
        }
    }

    fn indexes(entries: &[Entry]) -> Vec<(u64, u64)> {
        entries.iter().map(|e| (e.index, e.term)).collect()
    }

    /// The bytes of a segment file holding records (the rest is zeros).
    fn records_len(path: &Path) -> usize {
        let d = decode_records(&fs::read(path).unwrap());
        assert_eq!(d.failure, None, "{} decodes cleanly", path.display());
        d.valid_len
    }

    /// Writes entries 1..=n at term 1, one save per entry, on segments of `seg` bytes.
    fn write_log(dir: &Path, n: u64, seg: u64) -> Wal {
        let mut wal = Wal::create(dir, META).unwrap();
        wal.set_segment_size(seg);
        for i in 1..=n {
            wal.save(Some(&hs(1, i)), &[entry(i, 1)]).unwrap();
        }
        wal
    }

    #[test]
    fn commit_only_hard_state_is_written_unsynced_and_the_next_entry_syncs_it() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("wal");
        let mut wal = write_log(&dir, 3, 1 << 20);
        assert!(!wal.unsynced, "an entry's save fdatasyncs");
        wal.save(Some(&hs(1, 3)), &[]).unwrap();
        assert!(wal.unsynced, "a commit-only HardState is not fdatasynced (etcd's MustSync)");
        let mut vote_changed = hs(2, 3);
        vote_changed.vote = 2;
        wal.save(Some(&vote_changed), &[]).unwrap();
        assert!(!wal.unsynced, "a new term or vote is fdatasynced");
        let commit_moved = HardState { commit: 4, ..vote_changed };
        wal.save(Some(&commit_moved), &[]).unwrap();
        assert!(wal.unsynced);
        wal.save(None, &[entry(4, 2)]).unwrap();
        assert!(!wal.unsynced);
        drop(wal);
        let (_, contents) = Wal::open(&dir, (0, 0)).unwrap();
        assert_eq!(contents.hard_state.commit, 4, "the unsynced HardState was written");
        assert_eq!(indexes(&contents.entries).last(), Some(&(4, 2)));
    }

    #[test]
    fn segment_cut_after_a_commit_only_hard_state_syncs_it_first() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("wal");
        let mut wal = write_log(&dir, 1, 200);
        let mut commit = 1;
        while wal.segment_paths().len() == 1 {
            commit += 1;
            wal.save(Some(&hs(1, commit)), &[]).unwrap();
        }
        assert!(!wal.unsynced, "the cut fdatasynced the old segment's tail");
        drop(wal);
        let (_, contents) = Wal::open(&dir, (0, 0)).unwrap();
        assert_eq!(contents.hard_state.commit, commit);
    }

    #[test]
    fn round_trip_across_several_segments() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("wal");
        let wal = write_log(&dir, 50, 300);
        let segs = wal.segment_paths();
        assert!(
            segs.len() > 3,
            "expected several segments, got {}",
            segs.len()
        );
        drop(wal);
        let (wal, c) = Wal::open(&dir, (0, 0)).unwrap();
        assert_eq!(c.metadata, META);
        assert_eq!(c.hard_state, hs(1, 50));
        assert_eq!(
            indexes(&c.entries),
            (1..=50).map(|i| (i, 1)).collect::<Vec<_>>()
        );
        assert_eq!(c.entries[9], entry(10, 1));
        assert_eq!(wal.last_index(), 50);
        // Segment names carry the first index they hold.
        let names: Vec<String> = segs
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names[0], "0000000000000000-0000000000000000.wal");
        assert!(names[1].starts_with("0000000000000001-"));
    }

    #[test]
    fn open_skips_entries_covered_by_the_snapshot() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("wal");
        drop(write_log(&dir, 10, SEGMENT_SIZE_BYTES));
        let (_, c) = Wal::open(&dir, (6, 1)).unwrap();
        assert_eq!(indexes(&c.entries), vec![(7, 1), (8, 1), (9, 1), (10, 1)]);
    }

    #[test]
    fn truncated_tail_is_repaired_to_the_last_good_record() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("wal");
        let wal = write_log(&dir, 5, SEGMENT_SIZE_BYTES);
        let last = wal.segment_paths().pop().unwrap();
        let len = wal.logical_len();
        drop(wal);
        // Cut into entry 5, which sits before the last HardState (9 + 24 bytes).
        let hs_record = (crate::wal_record::HEADER_LEN + 24) as u64;
        OpenOptions::new()
            .write(true)
            .open(&last)
            .unwrap()
            .set_len(len - hs_record - 3)
            .unwrap();
        let (mut wal, c) = Wal::open(&dir, (0, 0)).unwrap();
        assert_eq!(
            indexes(&c.entries),
            (1..=4).map(|i| (i, 1)).collect::<Vec<_>>()
        );
        assert_eq!(c.hard_state, hs(1, 4));
        // The file was cut back, so new records follow the good ones.
        wal.save(Some(&hs(1, 5)), &[entry(5, 1)]).unwrap();
        drop(wal);
        let (_, c) = Wal::open(&dir, (0, 0)).unwrap();
        assert_eq!(
            indexes(&c.entries),
            (1..=5).map(|i| (i, 1)).collect::<Vec<_>>()
        );
    }

    #[test]
    fn flipped_byte_in_last_record_is_repaired_to_the_previous_record() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("wal");
        let wal = write_log(&dir, 5, SEGMENT_SIZE_BYTES);
        let last = wal.segment_paths().pop().unwrap();
        drop(wal);
        let mut bytes = fs::read(&last).unwrap();
        let n = records_len(&last);
        bytes[n - 2] ^= 0x40;
        fs::write(&last, &bytes).unwrap();
        let (_, c) = Wal::open(&dir, (0, 0)).unwrap();
        // The last record is the HardState saved with entry 5: it is dropped,
        // the entry before it survives.
        assert_eq!(
            indexes(&c.entries),
            (1..=5).map(|i| (i, 1)).collect::<Vec<_>>()
        );
        assert_eq!(c.hard_state, hs(1, 4));
        assert!(fs::metadata(&last).unwrap().len() < n as u64);
    }

    #[test]
    fn corruption_in_an_earlier_segment_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("wal");
        let wal = write_log(&dir, 30, 300);
        let first = wal.segment_paths()[0].clone();
        drop(wal);
        let mut bytes = fs::read(&first).unwrap();
        let at = records_len(&first) / 2;
        bytes[at] ^= 0xff;
        fs::write(&first, &bytes).unwrap();
        match Wal::open(&dir, (0, 0)) {
            Err(WalError::Corrupt { file, .. }) => assert_eq!(file, first),
            other => panic!("expected Corrupt, got {other:?}"),
        }
        // Nothing was truncated.
        assert_eq!(fs::read(&first).unwrap(), bytes);
    }

    #[test]
    fn conflicting_entries_replace_the_old_tail() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("wal");
        let mut wal = write_log(&dir, 5, SEGMENT_SIZE_BYTES);
        // A new leader at term 2 overwrites from index 3.
        wal.save(Some(&hs(2, 2)), &[entry(3, 2), entry(4, 2)])
            .unwrap();
        drop(wal);
        let (_, c) = Wal::open(&dir, (0, 0)).unwrap();
        assert_eq!(indexes(&c.entries), vec![(1, 1), (2, 1), (3, 2), (4, 2)]);
        assert_eq!(c.entries[2], entry(3, 2));
    }

    #[test]
    fn release_to_deletes_only_fully_covered_segments() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("wal");
        let mut wal = write_log(&dir, 40, 300);
        let before = wal.segment_paths();
        let firsts: Vec<u64> = before
            .iter()
            .map(|p| {
                parse_segment_name(&p.file_name().unwrap().to_string_lossy())
                    .unwrap()
                    .1
            })
            .collect();
        // Segment 0 is covered; segment 1 ends with entry firsts[2]-1, which
        // is one past `index`, so it stays.
        let index = firsts[2] - 2;
        wal.release_to(index).unwrap();
        let after = wal.segment_paths();
        assert_eq!(after, before[1..].to_vec());
        for p in &before[..1] {
            assert!(!p.exists());
        }
        // Releasing past everything keeps the segment being appended to.
        wal.release_to(1_000).unwrap();
        assert_eq!(wal.segment_paths(), before[before.len() - 1..].to_vec());
        drop(wal);
        let (_, c) = Wal::open(&dir, (40, 1)).unwrap();
        assert!(c.entries.is_empty());
        assert_eq!(c.metadata, META);
        assert_eq!(c.hard_state, hs(1, 40));
    }

    #[test]
    fn reopened_wal_continues_appending() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("wal");
        drop(write_log(&dir, 3, SEGMENT_SIZE_BYTES));
        let (mut wal, _) = Wal::open(&dir, (0, 0)).unwrap();
        wal.set_segment_size(200);
        for i in 4..=20 {
            wal.save(Some(&hs(1, i)), &[entry(i, 1)]).unwrap();
        }
        assert!(wal.segment_paths().len() > 1);
        drop(wal);
        let (_, c) = Wal::open(&dir, (0, 0)).unwrap();
        assert_eq!(
            indexes(&c.entries),
            (1..=20).map(|i| (i, 1)).collect::<Vec<_>>()
        );
        assert_eq!(c.hard_state, hs(1, 20));
    }

    #[test]
    fn create_refuses_an_existing_wal_and_a_gap_after_the_snapshot_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("wal");
        drop(write_log(&dir, 10, 300));
        assert!(Wal::exists(&dir));
        assert!(matches!(
            Wal::create(&dir, META),
            Err(WalError::AlreadyExists(_))
        ));
        let mut wal = Wal::open(&dir, (0, 0)).unwrap().0;
        wal.release_to(8).unwrap();
        drop(wal);
        // A snapshot older than the released segments cannot be continued.
        assert!(matches!(
            Wal::open(&dir, (1, 1)),
            Err(WalError::MissingEntries { .. })
        ));
    }

    fn big_entry(index: u64, len: usize) -> Entry {
        Entry {
            index,
            term: 1,
            data: vec![(index % 251) as u8 + 1; len].into(),
            ..Default::default()
        }
    }

    #[test]
    fn reopen_keeps_the_zero_tail_and_resumes_at_the_logical_end() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("wal");
        let wal = write_log(&dir, 5, SEGMENT_SIZE_BYTES);
        let last = wal.segment_paths().pop().unwrap();
        let logical = wal.logical_len();
        drop(wal);
        let physical = fs::metadata(&last).unwrap().len();
        assert!(physical >= MIN_CHUNK && physical > logical, "{physical} vs {logical}");
        assert_eq!(records_len(&last) as u64, logical);
        let (mut wal, c) = Wal::open(&dir, (0, 0)).unwrap();
        assert_eq!(indexes(&c.entries), (1..=5).map(|i| (i, 1)).collect::<Vec<_>>());
        assert_eq!(wal.logical_len(), logical);
        // The zero-filled space was kept, not truncated.
        assert_eq!(fs::metadata(&last).unwrap().len(), physical);
        wal.save(Some(&hs(1, 6)), &[entry(6, 1)]).unwrap();
        assert!(wal.logical_len() > logical);
        drop(wal);
        let (_, c) = Wal::open(&dir, (0, 0)).unwrap();
        assert_eq!(indexes(&c.entries), (1..=6).map(|i| (i, 1)).collect::<Vec<_>>());
        assert_eq!(c.hard_state, hs(1, 6));
    }

    #[test]
    fn torn_record_followed_by_zeros_is_truncated() {
        let mut record = Vec::new();
        encode_record(&Record::Entry(big_entry(6, 300)), &mut record).unwrap();
        // (offset past the logical end, bytes): the front of a record with zeros after it,
        // and a record whose front never landed (zeros, then its later bytes).
        let torn: [(u64, &[u8]); 2] = [(0, &record[..150]), (100, &record[100..])];
        for (at, bytes) in torn {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path().join("wal");
            let wal = write_log(&dir, 5, SEGMENT_SIZE_BYTES);
            let last = wal.segment_paths().pop().unwrap();
            let logical = wal.logical_len();
            drop(wal);
            let f = OpenOptions::new().write(true).open(&last).unwrap();
            f.write_all_at(bytes, logical + at).unwrap();
            drop(f);
            let (mut wal, c) = Wal::open(&dir, (0, 0)).unwrap();
            assert_eq!(indexes(&c.entries), (1..=5).map(|i| (i, 1)).collect::<Vec<_>>());
            assert_eq!(c.hard_state, hs(1, 5));
            assert_eq!(wal.logical_len(), logical);
            // Nothing of the torn write is left past the logical end.
            assert_eq!(fs::metadata(&last).unwrap().len(), logical);
            wal.save(Some(&hs(1, 6)), &[entry(6, 1)]).unwrap();
            drop(wal);
            let (_, c) = Wal::open(&dir, (0, 0)).unwrap();
            assert_eq!(indexes(&c.entries), (1..=6).map(|i| (i, 1)).collect::<Vec<_>>());
            assert_eq!(c.entries[5], entry(6, 1));
        }
    }

    #[test]
    fn zero_filled_tail_in_an_earlier_segment_reads_fine() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("wal");
        let wal = write_log(&dir, 30, 300);
        let segs = wal.segment_paths();
        drop(wal);
        assert!(segs.len() > 3);
        // The first segment was born with a 64 KiB zero-filled tail; give a middle one zeros too.
        assert!(fs::metadata(&segs[0]).unwrap().len() > records_len(&segs[0]) as u64);
        let mid = &segs[segs.len() / 2];
        let f = OpenOptions::new().write(true).open(mid).unwrap();
        let len = f.metadata().unwrap().len();
        f.write_all_at(&[0u8; 5000], len).unwrap();
        drop(f);
        let (_, c) = Wal::open(&dir, (0, 0)).unwrap();
        assert_eq!(indexes(&c.entries), (1..=30).map(|i| (i, 1)).collect::<Vec<_>>());
        assert_eq!(c.hard_state, hs(1, 30));
    }

    #[test]
    fn data_after_the_zeros_of_an_earlier_segment_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("wal");
        let wal = write_log(&dir, 30, 300);
        let first = wal.segment_paths()[0].clone();
        drop(wal);
        let at = records_len(&first) as u64 + 1000;
        let f = OpenOptions::new().write(true).open(&first).unwrap();
        f.write_all_at(&[7], at).unwrap();
        drop(f);
        match Wal::open(&dir, (0, 0)) {
            Err(WalError::Corrupt { file, offset }) => {
                assert_eq!(file, first);
                assert_eq!(offset, records_len_upto_damage(&first));
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    /// The records before the first damage of a segment.
    fn records_len_upto_damage(path: &Path) -> u64 {
        decode_records(&fs::read(path).unwrap()).valid_len as u64
    }

    #[test]
    fn records_written_while_the_space_is_zero_filled_all_survive() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("wal");
        let mut wal = Wal::create(&dir, META).unwrap();
        // 2 MiB of records: the file grows past several fills (64 KiB doubling) while written.
        for i in 1..=512 {
            wal.save(Some(&hs(1, i)), &[big_entry(i, 4000)]).unwrap();
        }
        let filled = wal.wait_filled();
        let logical = wal.logical_len();
        let last = wal.segment_paths().pop().unwrap();
        assert!(filled > logical, "filled {filled}, logical {logical}");
        drop(wal);
        let bytes = fs::read(&last).unwrap();
        assert_eq!(bytes.len() as u64, filled);
        assert!(crate::wal_record::all_zero(&bytes[logical as usize..]));
        let (_, c) = Wal::open(&dir, (0, 0)).unwrap();
        assert_eq!(c.entries.len(), 512);
        for (i, e) in c.entries.iter().enumerate() {
            assert_eq!(*e, big_entry(i as u64 + 1, 4000));
        }
        assert_eq!(c.hard_state, hs(1, 512));
    }

    #[test]
    fn unsafe_no_fsync_still_writes_the_records() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("wal");
        let mut wal = Wal::create(&dir, META).unwrap();
        wal.set_unsafe_no_fsync(true);
        wal.set_segment_size(300);
        for i in 1..=20 {
            wal.save(Some(&hs(1, i)), &[entry(i, 1)]).unwrap();
        }
        assert!(wal.segment_paths().len() > 1);
        drop(wal);
        let (_, c) = Wal::open(&dir, (0, 0)).unwrap();
        assert_eq!(indexes(&c.entries), (1..=20).map(|i| (i, 1)).collect::<Vec<_>>());
        assert_eq!(c.hard_state, hs(1, 20));
    }
}

/// etcd's warnSyncDuration: an fdatasync slower than this is logged as etcd logs it.
const WARN_SYNC_DURATION: std::time::Duration = std::time::Duration::from_secs(1);

fn warn_if_slow_sync(took: std::time::Duration) {
    if took > WARN_SYNC_DURATION {
        tracing::warn!(took = ?took, "expected-duration" = ?WARN_SYNC_DURATION, "slow fdatasync");
    }
}
