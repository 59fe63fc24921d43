//! etcd's own WAL format (`member/wal/*.wal`, etcd 3.4 and 3.5), read and written, so etcd-rs can
//! take over a data dir etcd wrote and write one etcd can start on.
//!
//! A segment is a sequence of frames: a little-endian u64 length word, then a `walpb.Record`
//! `{type, crc, data}`, then zero padding to 8-byte alignment. The length word's low 56 bits are
//! the record's size; when padding follows, its top byte is `0x80 | padding`. `crc` is CRC-32C
//! chained across the whole WAL: each record's crc continues the previous one over its `data`;
//! a `crc` record (first in every segment) carries the running value of the segment before it.
//! Records: 1 metadata (`etcdserverpb.Metadata`), 2 entry (`raftpb.Entry`), 3 state
//! (`raftpb.HardState`), 4 crc, 5 snapshot (`walpb.Snapshot`). Segments are named
//! `{seq:016x}-{index:016x}.wal` (index: the first entry the segment may hold), preallocated to
//! [`SEGMENT_SIZE_BYTES`] and zero past the last record; a zero length word ends a segment.
//!
//! Invariants: reading never panics and never allocates more than [`MAX_RECORD_BYTES`] for a
//! record whatever the bytes say; a torn tail (a record cut short or partly zero, in the last
//! segment only) ends the log as etcd's repair does, anything else that fails its CRC or decode
//! is an error. Reading never modifies the directory. Writing goes to `<dir>.tmp` and is renamed
//! to `<dir>` only once complete and fsynced, so a crash leaves no WAL or a whole one.
//! Entries stay etcd's `raftpb.Entry` (raw payload bytes): their meaning is decoded elsewhere.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use etcd_proto::etcdserverpb::Metadata;
use etcd_proto::raftpb::{ConfState, Entry, HardState};
use etcd_proto::walpb::{Record, Snapshot as WalSnapshot};
use prost::Message as _;

/// `(seq, index)` of a segment file name (the same naming as etcd-rs's own WAL).
use crate::wal::parse_segment_name;

/// Size etcd preallocates for each segment (`wal.SegmentSizeBytes`, 64 * 1000 * 1000).
pub const SEGMENT_SIZE_BYTES: u64 = 64 * 1000 * 1000;
/// etcd's limit on one frame's record + padding (`maxWALEntrySizeLimit`, 10 MiB); larger
/// lengths are corruption, never an allocation.
pub const MAX_RECORD_BYTES: u64 = 10 * 1024 * 1024;
/// Disk sector size etcd assumes when telling a torn write from damage.
const SECTOR_BYTES: u64 = 512;

/// etcd's WAL record types (`wal.metadataType` and following).
pub mod record_type {
    pub const METADATA: i64 = 1;
    pub const ENTRY: i64 = 2;
    pub const STATE: i64 = 3;
    pub const CRC: i64 = 4;
    pub const SNAPSHOT: i64 = 5;
}

/// Errors reading or writing an etcd WAL.
#[derive(Debug, thiserror::Error)]
pub enum EtcdWalError {
    #[error("etcd WAL I/O failed on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("etcd WAL directory {0} holds no segment covering the snapshot, or its segment sequence has a gap")]
    FileNotFound(PathBuf),
    #[error("etcd WAL file {file}: record at offset {offset} is damaged: {reason}")]
    Corrupt {
        file: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("etcd WAL file {file}: record at offset {offset} fails its CRC")]
    CrcMismatch { file: PathBuf, offset: u64 },
    #[error("etcd WAL file {file}: record at offset {offset} claims {len} bytes, over the {MAX_RECORD_BYTES}-byte limit")]
    MaxEntrySizeExceeded {
        file: PathBuf,
        offset: u64,
        len: u64,
    },
    #[error(
        "etcd WAL file {file} is cut short at offset {offset}, and it is not the last segment"
    )]
    TornMidLog { file: PathBuf, offset: u64 },
    #[error("etcd WAL in {0}: conflicting metadata records")]
    MetadataConflict(PathBuf),
    #[error("etcd WAL in {0} has no metadata record")]
    MissingMetadata(PathBuf),
    #[error(
        "etcd WAL in {dir}: snapshot record at index {index} has term {found}, expected {expected}"
    )]
    SnapshotMismatch {
        dir: PathBuf,
        index: u64,
        expected: u64,
        found: u64,
    },
    #[error("etcd WAL in {dir} has no snapshot record for index {index} term {term}")]
    SnapshotNotFound { dir: PathBuf, index: u64, term: u64 },
    #[error("etcd WAL in {dir}: entry {index} leaves a gap after the {have} entries read")]
    SliceOutOfRange {
        dir: PathBuf,
        index: u64,
        have: usize,
    },
    #[error("etcd WAL directory {0} already exists; refusing to write a WAL over it")]
    AlreadyExists(PathBuf),
    #[error("etcd WAL record of {0} bytes is over the {MAX_RECORD_BYTES}-byte limit")]
    RecordTooLarge(usize),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> EtcdWalError + '_ {
    move |source| EtcdWalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `{seq:016x}-{index:016x}.wal`.
pub fn segment_name(seq: u64, index: u64) -> String {
    format!("{seq:016x}-{index:016x}.wal")
}

/// The segment names in `dir`, sorted; files that are not segments are ignored, as etcd does.
pub fn segment_names(dir: &Path) -> Result<Vec<String>, EtcdWalError> {
    let mut names = Vec::new();
    for e in fs::read_dir(dir).map_err(io_err(dir))? {
        let e = e.map_err(io_err(dir))?;
        if let Some(name) = e.file_name().to_str() {
            if parse_segment_name(name).is_some() {
                names.push(name.to_string());
            }
        }
    }
    names.sort();
    Ok(names)
}

/// The length word of a frame for `len` record bytes, and the padding after the record.
pub fn encode_frame_len(len: usize) -> (u64, usize) {
    let pad = (8 - len % 8) % 8;
    let mut word = len as u64;
    if pad != 0 {
        word |= (0x80 | pad as u64) << 56;
    }
    (word, pad)
}

/// `(record bytes, padding bytes)` of a length word.
pub fn decode_frame_len(word: u64) -> (u64, u64) {
    let len = word & !(0xffu64 << 56);
    let pad = if word >> 63 == 1 {
        (word >> 56) & 0x7
    } else {
        0
    };
    (len, pad)
}

/// One frame read from a segment, its offset and payload checked against the CRC chain.
#[derive(Debug, Clone, PartialEq)]
pub struct RawRecord {
    pub offset: u64,
    pub rec_type: i64,
    pub crc: u32,
    /// `None` when the record has no data field (crc records).
    pub data: Option<Vec<u8>>,
}

/// Why a segment's records ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SegmentEnd {
    /// End of file, or a zero length word (preallocated space) at `offset`.
    Clean { offset: u64 },
    /// A record cut short by a crash starts at `offset` (etcd's `io.ErrUnexpectedEOF`).
    Torn { offset: u64 },
}

/// True when some sector-sized piece of `frame` (the bytes after the length word, at file
/// offset `start`) is all zero: etcd's sign of a write torn by a crash rather than damage.
fn has_zero_sector(frame: &[u8], start: u64) -> bool {
    let mut off = start;
    let mut rest = frame;
    while !rest.is_empty() {
        let n = ((SECTOR_BYTES - off % SECTOR_BYTES) as usize).min(rest.len());
        if rest[..n].iter().all(|b| *b == 0) {
            return true;
        }
        off += n as u64;
        rest = &rest[n..];
    }
    false
}

/// The end of a segment at a record cut short: torn in the last segment, an error before it.
fn torn_end(
    file: &Path,
    records: Vec<RawRecord>,
    offset: usize,
    last: bool,
) -> Result<(Vec<RawRecord>, SegmentEnd), EtcdWalError> {
    if last {
        Ok((
            records,
            SegmentEnd::Torn {
                offset: offset as u64,
            },
        ))
    } else {
        Err(EtcdWalError::TornMidLog {
            file: file.to_path_buf(),
            offset: offset as u64,
        })
    }
}

/// Decodes the frames of one segment's bytes, continuing the CRC chain `crc`. `last` says
/// whether this is the last segment (only there can a record be torn). A crc record must carry the
/// chain's value unless the chain is fresh (0, the segments before were not read); it restarts it.
pub fn decode_segment(
    file: &Path,
    buf: &[u8],
    crc: &mut u32,
    last: bool,
) -> Result<(Vec<RawRecord>, SegmentEnd), EtcdWalError> {
    let mut out = Vec::new();
    let mut off: usize = 0;
    loop {
        if off == buf.len() {
            return Ok((out, SegmentEnd::Clean { offset: off as u64 }));
        }
        if buf.len() - off < 8 {
            return torn_end(file, out, off, last);
        }
        let mut word = [0u8; 8];
        word.copy_from_slice(&buf[off..off + 8]);
        let word = u64::from_le_bytes(word);
        if word == 0 {
            return Ok((out, SegmentEnd::Clean { offset: off as u64 }));
        }
        let (len, pad) = decode_frame_len(word);
        if len >= MAX_RECORD_BYTES - pad {
            return Err(EtcdWalError::MaxEntrySizeExceeded {
                file: file.to_path_buf(),
                offset: off as u64,
                len,
            });
        }
        let start = off + 8;
        let frame_len = (len + pad) as usize;
        if buf.len() - start < frame_len {
            return torn_end(file, out, off, last);
        }
        let frame = &buf[start..start + frame_len];
        let is_torn = || last && has_zero_sector(frame, start as u64);
        let rec = match Record::decode(&frame[..len as usize]) {
            Ok(r) => r,
            Err(e) if !is_torn() => {
                return Err(EtcdWalError::Corrupt {
                    file: file.to_path_buf(),
                    offset: off as u64,
                    reason: e.to_string(),
                })
            }
            Err(_) => return torn_end(file, out, off, last),
        };
        let rec_type = rec.r#type();
        if rec_type != record_type::CRC {
            let next = crc32c::crc32c_append(*crc, rec.data.as_deref().unwrap_or_default());
            if rec.crc() != next {
                if is_torn() {
                    return torn_end(file, out, off, last);
                }
                return Err(EtcdWalError::CrcMismatch {
                    file: file.to_path_buf(),
                    offset: off as u64,
                });
            }
            *crc = next;
        } else {
            // A fresh chain (0) accepts any value: the segment before was not read.
            if *crc != 0 && rec.crc() != *crc {
                return Err(EtcdWalError::CrcMismatch {
                    file: file.to_path_buf(),
                    offset: off as u64,
                });
            }
            *crc = rec.crc();
        }
        out.push(RawRecord {
            offset: off as u64,
            rec_type,
            crc: rec.crc(),
            data: rec.data,
        });
        off = start + frame_len;
    }
}

/// Encodes one frame (length word, record, padding) onto `out`, advancing the CRC chain.
/// A crc record carries `*crc` itself (the chain value of the segment before).
pub fn encode_record(
    out: &mut Vec<u8>,
    crc: &mut u32,
    rec_type: i64,
    data: Option<&[u8]>,
) -> Result<(), EtcdWalError> {
    if let Some(d) = data {
        *crc = crc32c::crc32c_append(*crc, d);
    }
    let rec = Record {
        r#type: Some(rec_type),
        crc: Some(*crc),
        data: data.map(<[u8]>::to_vec),
    };
    let bytes = rec.encode_to_vec();
    if bytes.len() as u64 >= MAX_RECORD_BYTES - 8 {
        return Err(EtcdWalError::RecordTooLarge(bytes.len()));
    }
    let (word, pad) = encode_frame_len(bytes.len());
    out.extend_from_slice(&word.to_le_bytes());
    out.extend_from_slice(&bytes);
    out.extend(std::iter::repeat_n(0u8, pad));
    Ok(())
}

/// What [`EtcdWal::read_all`] found.
#[derive(Debug, Clone, PartialEq)]
pub struct EtcdWalContents {
    pub metadata: Metadata,
    /// The metadata record's bytes as etcd wrote them.
    pub metadata_raw: Vec<u8>,
    /// The last state record (default when there is none).
    pub hard_state: HardState,
    /// Entries after the snapshot, in index order, later writes of an index replacing earlier.
    pub entries: Vec<Entry>,
    /// The snapshot record that matched the requested snapshot.
    pub snapshot: WalSnapshot,
    /// Where a torn last record starts, when the last segment ends in one (etcd's repair
    /// truncates the segment there).
    pub torn_tail: Option<(PathBuf, u64)>,
}

/// Reader for an etcd WAL directory.
pub struct EtcdWal;

impl EtcdWal {
    /// Reads the WAL in `dir` from the snapshot `(index, term)` on, as etcd does when it starts
    /// (open at the snapshot, ReadAll, repair a torn tail): the segments from the last one whose
    /// first index is at most `index`, which must have consecutive sequence numbers.
    pub fn read_all(
        dir: &Path,
        from_snapshot: (u64, u64),
    ) -> Result<EtcdWalContents, EtcdWalError> {
        let (snap_index, snap_term) = from_snapshot;
        let names = segment_names(dir)?;
        let first = names
            .iter()
            .rposition(|n| parse_segment_name(n).is_some_and(|(_, i)| i <= snap_index))
            .ok_or_else(|| EtcdWalError::FileNotFound(dir.to_path_buf()))?;
        let names = &names[first..];
        let seqs: Vec<u64> = names
            .iter()
            .filter_map(|n| parse_segment_name(n))
            .map(|s| s.0)
            .collect();
        if seqs.windows(2).any(|w| w[0].checked_add(1) != Some(w[1])) {
            return Err(EtcdWalError::FileNotFound(dir.to_path_buf()));
        }
        let mut crc = 0u32;
        let mut metadata_raw: Option<Vec<u8>> = None;
        let mut hard_state = HardState::default();
        let mut entries: Vec<Entry> = Vec::new();
        let mut snapshot = None;
        let mut torn_tail = None;
        for (i, name) in names.iter().enumerate() {
            let path = dir.join(name);
            let buf = fs::read(&path).map_err(io_err(&path))?;
            let last = i + 1 == names.len();
            let mut chain = crc;
            let (records, end) = decode_segment(&path, &buf, &mut chain, last)?;
            let corrupt = |offset: u64, what: &str, e: prost::DecodeError| EtcdWalError::Corrupt {
                file: path.clone(),
                offset,
                reason: format!("{what}: {e}"),
            };
            for r in records {
                let data = r.data.as_deref().unwrap_or_default();
                match r.rec_type {
                    record_type::ENTRY => {
                        let e = Entry::decode(data).map_err(|e| corrupt(r.offset, "entry", e))?;
                        if e.index() > snap_index {
                            let up = e.index() - snap_index - 1;
                            if up > entries.len() as u64 {
                                return Err(EtcdWalError::SliceOutOfRange {
                                    dir: dir.to_path_buf(),
                                    index: e.index(),
                                    have: entries.len(),
                                });
                            }
                            entries.truncate(up as usize);
                            entries.push(e);
                        }
                    }
                    record_type::STATE => {
                        hard_state = HardState::decode(data)
                            .map_err(|e| corrupt(r.offset, "hard state", e))?;
                    }
                    record_type::METADATA => {
                        if metadata_raw.as_deref().is_some_and(|m| m != data) {
                            return Err(EtcdWalError::MetadataConflict(dir.to_path_buf()));
                        }
                        metadata_raw = Some(data.to_vec());
                    }
                    record_type::CRC => {}
                    record_type::SNAPSHOT => {
                        let s = WalSnapshot::decode(data)
                            .map_err(|e| corrupt(r.offset, "snapshot", e))?;
                        if s.index() == snap_index {
                            if s.term() != snap_term {
                                return Err(EtcdWalError::SnapshotMismatch {
                                    dir: dir.to_path_buf(),
                                    index: snap_index,
                                    expected: snap_term,
                                    found: s.term(),
                                });
                            }
                            snapshot = Some(s);
                        }
                    }
                    other => {
                        return Err(EtcdWalError::Corrupt {
                            file: path.clone(),
                            offset: r.offset,
                            reason: format!("unexpected block type {other}"),
                        })
                    }
                }
            }
            crc = chain;
            if let SegmentEnd::Torn { offset } = end {
                torn_tail = Some((path.clone(), offset));
            }
        }
        let metadata_raw =
            metadata_raw.ok_or_else(|| EtcdWalError::MissingMetadata(dir.to_path_buf()))?;
        let metadata =
            Metadata::decode(metadata_raw.as_slice()).map_err(|e| EtcdWalError::Corrupt {
                file: dir.to_path_buf(),
                offset: 0,
                reason: format!("metadata: {e}"),
            })?;
        let snapshot = snapshot.ok_or_else(|| EtcdWalError::SnapshotNotFound {
            dir: dir.to_path_buf(),
            index: snap_index,
            term: snap_term,
        })?;
        Ok(EtcdWalContents {
            metadata,
            metadata_raw,
            hard_state,
            entries,
            snapshot,
            torn_tail,
        })
    }

    /// The snapshot records of the WAL in `dir` at or below the last committed index (etcd's
    /// `wal.ValidSnapshotEntries`): the snapshots a `.snap` file may be chosen from.
    pub fn valid_snapshot_entries(dir: &Path) -> Result<Vec<WalSnapshot>, EtcdWalError> {
        let names = segment_names(dir)?;
        if names.is_empty() {
            return Err(EtcdWalError::FileNotFound(dir.to_path_buf()));
        }
        let mut snaps = Vec::new();
        let mut commit = 0;
        let mut crc = 0u32;
        for (i, name) in names.iter().enumerate() {
            let path = dir.join(name);
            let buf = fs::read(&path).map_err(io_err(&path))?;
            let (records, _) = decode_segment(&path, &buf, &mut crc, i + 1 == names.len())?;
            for r in records {
                let data = r.data.as_deref().unwrap_or_default();
                let bad = |e: prost::DecodeError| EtcdWalError::Corrupt {
                    file: path.clone(),
                    offset: r.offset,
                    reason: e.to_string(),
                };
                match r.rec_type {
                    record_type::SNAPSHOT => snaps.push(WalSnapshot::decode(data).map_err(bad)?),
                    record_type::STATE => commit = HardState::decode(data).map_err(bad)?.commit(),
                    _ => {}
                }
            }
        }
        snaps.retain(|s| s.index() <= commit);
        Ok(snaps)
    }
}

/// Writes a fresh etcd WAL as etcd's `wal.Create` followed by `SaveSnapshot` / `Save` calls would,
/// into `<dir>.tmp`, renamed to `<dir>` by [`EtcdWalWriter::finish`].
pub struct EtcdWalWriter {
    dir: PathBuf,
    tmp: PathBuf,
    file: File,
    file_path: PathBuf,
    seq: u64,
    /// Bytes of records in the current segment.
    offset: u64,
    crc: u32,
    /// Index of the last entry written (or of the snapshot, when later).
    last_index: u64,
    metadata: Vec<u8>,
    state: HardState,
    /// Size at which a segment is cut ([`SEGMENT_SIZE_BYTES`]; smaller in tests).
    segment_bytes: u64,
}

fn is_empty_hard_state(hs: &HardState) -> bool {
    hs.term() == 0 && hs.vote() == 0 && hs.commit() == 0
}

fn fsync_dir(dir: &Path) -> Result<(), EtcdWalError> {
    crate::durable_fs::fsync_dir(dir).map_err(io_err(dir))
}

impl EtcdWalWriter {
    /// Starts a WAL for `dir` (which must not exist) with the member's `metadata`: segment
    /// `0000000000000000-0000000000000000.wal` holding a crc record (0), the metadata and an
    /// empty snapshot record, as etcd's `wal.Create` writes.
    pub fn create(dir: &Path, metadata: &Metadata) -> Result<EtcdWalWriter, EtcdWalError> {
        if dir.exists() {
            return Err(EtcdWalError::AlreadyExists(dir.to_path_buf()));
        }
        let mut tmp = dir.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
        }
        fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
        let meta = Metadata {
            node_id: Some(metadata.node_id()),
            cluster_id: Some(metadata.cluster_id()),
        };
        let file_path = tmp.join(segment_name(0, 0));
        let file = Self::new_segment(&file_path)?;
        let mut w = EtcdWalWriter {
            dir: dir.to_path_buf(),
            tmp,
            file,
            file_path,
            seq: 0,
            offset: 0,
            crc: 0,
            last_index: 0,
            metadata: meta.encode_to_vec(),
            state: HardState::default(),
            segment_bytes: SEGMENT_SIZE_BYTES,
        };
        let mut buf = Vec::new();
        encode_record(&mut buf, &mut w.crc, record_type::CRC, None)?;
        let md = w.metadata.clone();
        encode_record(&mut buf, &mut w.crc, record_type::METADATA, Some(&md))?;
        let empty = WalSnapshot {
            index: Some(0),
            term: Some(0),
            conf_state: None,
        };
        encode_record(
            &mut buf,
            &mut w.crc,
            record_type::SNAPSHOT,
            Some(&empty.encode_to_vec()),
        )?;
        w.write(&buf)?;
        Ok(w)
    }

    /// Cuts segments at `bytes` instead of [`SEGMENT_SIZE_BYTES`] (etcd's tests do the same by
    /// setting `wal.SegmentSizeBytes`).
    pub fn set_segment_bytes(&mut self, bytes: u64) {
        self.segment_bytes = bytes;
    }

    fn new_segment(path: &Path) -> Result<File, EtcdWalError> {
        let f = File::create(path).map_err(io_err(path))?;
        f.set_len(SEGMENT_SIZE_BYTES).map_err(io_err(path))?;
        Ok(f)
    }

    fn write(&mut self, buf: &[u8]) -> Result<(), EtcdWalError> {
        self.file.write_all(buf).map_err(io_err(&self.file_path))?;
        self.offset += buf.len() as u64;
        Ok(())
    }

    /// A snapshot record: the log continues after `index`/`term` (`conf_state` as etcd 3.5
    /// writes it; `None` as 3.4 does).
    pub fn save_snapshot(
        &mut self,
        index: u64,
        term: u64,
        mut conf_state: Option<ConfState>,
    ) -> Result<(), EtcdWalError> {
        if let Some(cs) = conf_state.as_mut() {
            cs.auto_leave = Some(cs.auto_leave());
        }
        let s = WalSnapshot {
            index: Some(index),
            term: Some(term),
            conf_state,
        };
        let mut buf = Vec::new();
        encode_record(
            &mut buf,
            &mut self.crc,
            record_type::SNAPSHOT,
            Some(&s.encode_to_vec()),
        )?;
        self.write(&buf)?;
        self.last_index = self.last_index.max(index);
        Ok(())
    }

    /// Entries then the hard state (skipped when empty), as etcd's `WAL.Save`; starts a new
    /// segment once the current one reaches [`SEGMENT_SIZE_BYTES`].
    pub fn save(&mut self, hard_state: &HardState, entries: &[Entry]) -> Result<(), EtcdWalError> {
        let mut buf = Vec::new();
        for e in entries {
            // etcd writes type, term and index even when zero.
            let e = Entry {
                r#type: Some(e.r#type.unwrap_or(0)),
                term: Some(e.term()),
                index: Some(e.index()),
                data: e.data.clone(),
            };
            encode_record(
                &mut buf,
                &mut self.crc,
                record_type::ENTRY,
                Some(&e.encode_to_vec()),
            )?;
            self.last_index = e.index();
        }
        if !is_empty_hard_state(hard_state) {
            self.state = *hard_state;
            encode_record(
                &mut buf,
                &mut self.crc,
                record_type::STATE,
                Some(&Self::full_state(hard_state).encode_to_vec()),
            )?;
        }
        self.write(&buf)?;
        if self.offset >= self.segment_bytes {
            self.cut()?;
        }
        Ok(())
    }

    /// All three fields present, as etcd writes a HardState.
    fn full_state(hs: &HardState) -> HardState {
        HardState {
            term: Some(hs.term()),
            vote: Some(hs.vote()),
            commit: Some(hs.commit()),
        }
    }

    /// Ends the current segment at its records and opens the next, which starts with the crc
    /// chain value, the metadata and the current hard state (etcd's `WAL.cut`).
    fn cut(&mut self) -> Result<(), EtcdWalError> {
        self.file
            .set_len(self.offset)
            .map_err(io_err(&self.file_path))?;
        self.file.sync_all().map_err(io_err(&self.file_path))?;
        self.seq += 1;
        self.file_path = self.tmp.join(segment_name(self.seq, self.last_index + 1));
        self.file = Self::new_segment(&self.file_path)?;
        self.offset = 0;
        let mut buf = Vec::new();
        encode_record(&mut buf, &mut self.crc, record_type::CRC, None)?;
        let md = self.metadata.clone();
        encode_record(&mut buf, &mut self.crc, record_type::METADATA, Some(&md))?;
        if !is_empty_hard_state(&self.state) {
            encode_record(
                &mut buf,
                &mut self.crc,
                record_type::STATE,
                Some(&Self::full_state(&self.state).encode_to_vec()),
            )?;
        }
        self.write(&buf)
    }

    /// Fsyncs everything and renames `<dir>.tmp` to `<dir>`: the WAL appears whole or not at all.
    pub fn finish(self) -> Result<PathBuf, EtcdWalError> {
        self.file.sync_all().map_err(io_err(&self.file_path))?;
        fsync_dir(&self.tmp)?;
        fs::rename(&self.tmp, &self.dir).map_err(io_err(&self.dir))?;
        fsync_dir(crate::durable_fs::parent_dir(&self.dir))?;
        Ok(self.dir)
    }
}

/// Conversions between etcd's `raftpb` messages and raft-rs's `eraftpb`. Entry, HardState,
/// ConfState and SnapshotMetadata have the same field numbers and types in both, so they go
/// through their wire bytes (each side decodes the other's packed or unpacked repeated fields);
/// fields etcd writes even when zero are made explicit on the way to `raftpb`. ConfChange
/// payloads differ (ConfChangeType numbering) and are not converted here.
pub mod eraftpb_conv {
    use etcd_proto::raftpb;
    use prost::Message as _;
    use protobuf::Message as _;
    use raft::eraftpb;

    /// Why a message did not convert (its bytes did not decode on the other side).
    #[derive(Debug, thiserror::Error)]
    #[error("{what} does not convert between raftpb and eraftpb: {reason}")]
    pub struct ConvError {
        pub what: &'static str,
        pub reason: String,
    }

    fn err(what: &'static str) -> impl FnOnce(String) -> ConvError {
        move |reason| ConvError { what, reason }
    }

    pub fn entry_to_eraftpb(e: &raftpb::Entry) -> Result<eraftpb::Entry, ConvError> {
        eraftpb::Entry::parse_from_bytes(&e.encode_to_vec())
            .map_err(|x| err("entry")(x.to_string()))
    }

    pub fn entry_from_eraftpb(e: &eraftpb::Entry) -> Result<raftpb::Entry, ConvError> {
        let b = e
            .write_to_bytes()
            .map_err(|x| err("entry")(x.to_string()))?;
        let e = raftpb::Entry::decode(b.as_slice()).map_err(|x| err("entry")(x.to_string()))?;
        Ok(raftpb::Entry {
            r#type: Some(e.r#type.unwrap_or(0)),
            term: Some(e.term()),
            index: Some(e.index()),
            data: e.data,
        })
    }

    pub fn hard_state_to_eraftpb(h: &raftpb::HardState) -> eraftpb::HardState {
        eraftpb::HardState {
            term: h.term(),
            vote: h.vote(),
            commit: h.commit(),
            ..Default::default()
        }
    }

    pub fn hard_state_from_eraftpb(h: &eraftpb::HardState) -> raftpb::HardState {
        raftpb::HardState {
            term: Some(h.term),
            vote: Some(h.vote),
            commit: Some(h.commit),
        }
    }

    pub fn conf_state_to_eraftpb(c: &raftpb::ConfState) -> Result<eraftpb::ConfState, ConvError> {
        eraftpb::ConfState::parse_from_bytes(&c.encode_to_vec())
            .map_err(|x| err("conf state")(x.to_string()))
    }

    pub fn conf_state_from_eraftpb(c: &eraftpb::ConfState) -> Result<raftpb::ConfState, ConvError> {
        let b = c
            .write_to_bytes()
            .map_err(|x| err("conf state")(x.to_string()))?;
        let mut c = raftpb::ConfState::decode(b.as_slice())
            .map_err(|x| err("conf state")(x.to_string()))?;
        c.auto_leave = Some(c.auto_leave());
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
        Entry {
            r#type: Some(0),
            term: Some(term),
            index: Some(index),
            data: Some(data.to_vec()),
        }
    }

    fn hs(term: u64, vote: u64, commit: u64) -> HardState {
        HardState {
            term: Some(term),
            vote: Some(vote),
            commit: Some(commit),
        }
    }

    /// A WAL after snapshot (5, 2) with entries 6..=20 and commit 20, in `<tmp>/wal`.
    fn sample_wal(tmp: &Path) -> PathBuf {
        let dir = tmp.join("wal");
        let md = Metadata {
            node_id: Some(0x8e9e05c52164694d),
            cluster_id: Some(0xcdf818194e3a8c32),
        };
        let mut w = EtcdWalWriter::create(&dir, &md).unwrap();
        let cs = ConfState {
            voters: vec![0x8e9e05c52164694d],
            ..Default::default()
        };
        w.save_snapshot(5, 2, Some(cs)).unwrap();
        let ents: Vec<Entry> = (6..=20)
            .map(|i| entry(i, 2, format!("payload {i}").as_bytes()))
            .collect();
        w.save(&hs(2, 0x8e9e05c52164694d, 20), &ents).unwrap();
        w.finish().unwrap()
    }

    /// `n` entries of `payload` bytes, each saved with its own hard state, in segments cut at
    /// `segment_bytes`.
    fn small_segment_wal(dir: &Path, segment_bytes: u64, n: u64, payload: usize) {
        let md = Metadata {
            node_id: Some(1),
            cluster_id: Some(2),
        };
        let mut w = EtcdWalWriter::create(dir, &md).unwrap();
        w.set_segment_bytes(segment_bytes);
        for i in 1..=n {
            w.save(&hs(1, 1, i), &[entry(i, 1, &vec![i as u8; payload])])
                .unwrap();
        }
        w.finish().unwrap();
    }

    /// The records of the single segment in `dir`, with the file's path.
    fn records(dir: &Path) -> (PathBuf, Vec<RawRecord>) {
        let names = segment_names(dir).unwrap();
        let path = dir.join(&names[0]);
        let buf = fs::read(&path).unwrap();
        let (recs, _) = decode_segment(&path, &buf, &mut 0, true).unwrap();
        (path, recs)
    }

    fn patch(path: &Path, at: u64, bytes: &[u8]) {
        let mut b = fs::read(path).unwrap();
        b[at as usize..at as usize + bytes.len()].copy_from_slice(bytes);
        fs::write(path, b).unwrap();
    }

    #[test]
    fn entries_hard_states_and_conf_states_convert_to_eraftpb_and_back_unchanged() {
        use eraftpb_conv::*;
        for (ty, data) in [(0, Some(b"put".to_vec())), (1, Some(vec![8, 1])), (0, None)] {
            let e = Entry {
                r#type: Some(ty),
                term: Some(7),
                index: Some(42),
                data,
            };
            let r = entry_to_eraftpb(&e).unwrap();
            assert_eq!((r.get_entry_type() as i32, r.term, r.index), (ty, 7, 42));
            assert_eq!(r.data.as_ref(), e.data.as_deref().unwrap_or_default());
            // Data absent or empty both come back absent (etcd never writes an empty Data).
            let back = entry_from_eraftpb(&r).unwrap();
            assert_eq!(back.r#type, Some(ty));
            assert_eq!(
                back.data.unwrap_or_default(),
                e.data.clone().unwrap_or_default()
            );
        }
        let h = hs(3, 9, 100);
        assert_eq!(hard_state_from_eraftpb(&hard_state_to_eraftpb(&h)), h);
        let c = ConfState {
            voters: vec![1, 2],
            learners: vec![3],
            voters_outgoing: vec![4],
            learners_next: vec![5],
            auto_leave: Some(true),
        };
        let r = conf_state_to_eraftpb(&c).unwrap();
        assert_eq!(
            (r.voters.clone(), r.learners.clone(), r.auto_leave),
            (vec![1, 2], vec![3], true)
        );
        // eraftpb (proto3) packs repeated fields; raftpb reads them and writes them unpacked.
        assert_eq!(conf_state_from_eraftpb(&r).unwrap(), c);
    }

    #[test]
    fn frame_length_word_carries_padding_in_its_top_byte() {
        for len in 0..40usize {
            let (word, pad) = encode_frame_len(len);
            assert_eq!((len + pad) % 8, 0);
            assert_eq!(decode_frame_len(word), (len as u64, pad as u64));
            assert_eq!(word >> 63 == 1, pad != 0);
        }
        // etcd's example: 13 bytes of record, 3 of padding.
        assert_eq!(encode_frame_len(13).0, 0x8300_0000_0000_000d);
    }

    #[test]
    fn written_wal_reads_back_from_its_snapshot() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = sample_wal(tmp.path());
        assert!(!tmp.path().join("wal.tmp").exists());
        let names = segment_names(&dir).unwrap();
        assert_eq!(names, vec!["0000000000000000-0000000000000000.wal"]);
        assert_eq!(
            fs::metadata(dir.join(&names[0])).unwrap().len(),
            SEGMENT_SIZE_BYTES
        );
        let c = EtcdWal::read_all(&dir, (5, 2)).unwrap();
        assert_eq!(c.metadata.node_id(), 0x8e9e05c52164694d);
        assert_eq!(c.metadata.cluster_id(), 0xcdf818194e3a8c32);
        assert_eq!(c.hard_state, hs(2, 0x8e9e05c52164694d, 20));
        assert_eq!(c.entries.len(), 15);
        assert_eq!(c.entries[0], entry(6, 2, b"payload 6"));
        assert_eq!(c.entries[14].index(), 20);
        assert_eq!(
            c.snapshot.conf_state.unwrap().voters,
            vec![0x8e9e05c52164694d]
        );
        assert_eq!(c.torn_tail, None);
        // The empty snapshot record etcd's Create writes is there too.
        let c0 = EtcdWal::read_all(&dir, (0, 0));
        assert!(
            matches!(c0, Err(EtcdWalError::SliceOutOfRange { index: 6, .. })),
            "{c0:?}"
        );
        assert!(matches!(
            EtcdWal::read_all(&dir, (5, 3)),
            Err(EtcdWalError::SnapshotMismatch { found: 2, .. })
        ));
        assert!(matches!(
            EtcdWal::read_all(&dir, (7, 2)),
            Err(EtcdWalError::SnapshotNotFound { .. })
        ));
        let snaps = EtcdWal::valid_snapshot_entries(&dir).unwrap();
        assert_eq!(
            snaps
                .iter()
                .map(|s| (s.index(), s.term()))
                .collect::<Vec<_>>(),
            vec![(0, 0), (5, 2)]
        );
        assert!(matches!(
            EtcdWalWriter::create(&dir, &Metadata::default()),
            Err(EtcdWalError::AlreadyExists(_))
        ));
    }

    #[test]
    fn first_records_are_crc_metadata_snapshot_as_etcd_creates_them() {
        let tmp = tempfile::tempdir().unwrap();
        let (_, recs) = records(&sample_wal(tmp.path()));
        let types: Vec<i64> = recs.iter().take(4).map(|r| r.rec_type).collect();
        use record_type::*;
        assert_eq!(types, vec![CRC, METADATA, SNAPSHOT, SNAPSHOT]);
        assert_eq!(recs[0].crc, 0);
        assert_eq!(recs[0].data, None);
        // walpb.Snapshot{} with both zero fields written: 08 00 10 00.
        assert_eq!(recs[2].data.as_deref(), Some(&[0x08, 0, 0x10, 0][..]));
        assert_eq!(recs.last().unwrap().rec_type, STATE);
    }

    #[test]
    fn later_entries_replace_earlier_ones_at_the_same_index() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("wal");
        let mut w = EtcdWalWriter::create(&dir, &Metadata::default()).unwrap();
        w.save(
            &hs(1, 1, 0),
            &[entry(1, 1, b"a"), entry(2, 1, b"b"), entry(3, 1, b"c")],
        )
        .unwrap();
        w.save(&hs(2, 1, 2), &[entry(2, 2, b"B")]).unwrap();
        w.finish().unwrap();
        let c = EtcdWal::read_all(&dir, (0, 0)).unwrap();
        assert_eq!(c.entries, vec![entry(1, 1, b"a"), entry(2, 2, b"B")]);
        assert_eq!(c.hard_state, hs(2, 1, 2));
    }

    #[test]
    fn segments_are_cut_with_crc_metadata_and_state_and_read_back_across_the_chain() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("wal");
        small_segment_wal(&dir, 4096, 200, 100);
        let names = segment_names(&dir).unwrap();
        assert!(names.len() > 3, "{names:?}");
        // Each later segment is named after the first index it may hold.
        for (seq, n) in names.iter().enumerate() {
            let (s, first) = parse_segment_name(n).unwrap();
            assert_eq!(s, seq as u64);
            if seq > 0 {
                let p = dir.join(n);
                let (recs, _) = decode_segment(&p, &fs::read(&p).unwrap(), &mut 0, true).unwrap();
                let e = recs
                    .iter()
                    .find(|r| r.rec_type == record_type::ENTRY)
                    .unwrap();
                assert_eq!(
                    Entry::decode(e.data.as_deref().unwrap()).unwrap().index(),
                    first
                );
                assert_eq!(recs[0].rec_type, record_type::CRC);
                assert_eq!(recs[1].rec_type, record_type::METADATA);
                assert_eq!(recs[2].rec_type, record_type::STATE);
            }
        }
        let c = EtcdWal::read_all(&dir, (0, 0)).unwrap();
        assert_eq!(c.entries.len(), 200);
        assert_eq!(c.hard_state.commit(), 200);
        // A gap in the sequence numbers is refused.
        fs::remove_file(dir.join(&names[1])).unwrap();
        assert!(matches!(
            EtcdWal::read_all(&dir, (0, 0)),
            Err(EtcdWalError::FileNotFound(_))
        ));
    }

    #[test]
    fn torn_last_record_ends_the_log_where_etcd_repair_would_truncate() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = sample_wal(tmp.path());
        let (path, recs) = records(&dir);
        let last = recs.last().unwrap().offset;
        // Cut inside the last record (the hard state).
        let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(last + 11).unwrap();
        let c = EtcdWal::read_all(&dir, (5, 2)).unwrap();
        assert_eq!(c.torn_tail, Some((path.clone(), last)));
        assert_eq!(c.entries.len(), 15);
        assert_eq!(c.hard_state, HardState::default());
        // Cut inside the length word.
        f.set_len(last + 3).unwrap();
        assert_eq!(
            EtcdWal::read_all(&dir, (5, 2)).unwrap().torn_tail,
            Some((path, last))
        );
    }

    #[test]
    fn record_with_a_zero_sector_is_torn_but_a_flipped_byte_is_a_crc_error() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = sample_wal(tmp.path());
        let (path, recs) = records(&dir);
        let mid = &recs[8];
        let data_len = mid.data.as_ref().unwrap().len();
        // Flip one payload byte in a middle entry: damage, not a torn write.
        let at = mid.offset + 8 + 12;
        let orig = fs::read(&path).unwrap()[at as usize];
        patch(&path, at, &[orig ^ 0x40]);
        let err = EtcdWal::read_all(&dir, (5, 2)).unwrap_err();
        assert!(
            matches!(err, EtcdWalError::CrcMismatch { offset, .. } if offset == mid.offset),
            "{err:?}"
        );
        patch(&path, at, &[orig]);
        // Zero the last record's bytes after its length word: a torn sector.
        let last = recs.last().unwrap();
        let b = fs::read(&path).unwrap();
        let word = u64::from_le_bytes(
            b[last.offset as usize..last.offset as usize + 8]
                .try_into()
                .unwrap(),
        );
        let (len, pad) = decode_frame_len(word);
        patch(&path, last.offset + 8, &vec![0u8; (len + pad) as usize]);
        let c = EtcdWal::read_all(&dir, (5, 2)).unwrap();
        assert_eq!(c.torn_tail, Some((path, last.offset)));
        assert!(data_len > 0);
    }

    #[test]
    fn oversize_and_absurd_lengths_are_errors_not_allocations() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = sample_wal(tmp.path());
        let (path, recs) = records(&dir);
        let orig = fs::read(&path).unwrap();
        for word in [
            MAX_RECORD_BYTES,
            u64::MAX >> 8,
            u64::MAX,
            0x8700_ffff_ffff_ffff,
        ] {
            patch(&path, recs[5].offset, &word.to_le_bytes());
            let err = EtcdWal::read_all(&dir, (5, 2)).unwrap_err();
            assert!(
                matches!(err, EtcdWalError::MaxEntrySizeExceeded { .. }),
                "{word:x}: {err:?}"
            );
        }
        fs::write(&path, &orig).unwrap();
        // A length just past the end of the file is a torn record.
        let end = recs.last().unwrap().offset;
        let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(end + 64).unwrap();
        patch(&path, end, &1000u64.to_le_bytes());
        assert_eq!(
            EtcdWal::read_all(&dir, (5, 2)).unwrap().torn_tail,
            Some((path, end))
        );
    }

    #[test]
    fn corruption_before_the_last_segment_is_never_a_torn_tail() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("wal");
        small_segment_wal(&dir, 1024, 40, 64);
        let names = segment_names(&dir).unwrap();
        let first = dir.join(&names[0]);
        let len = fs::metadata(&first).unwrap().len();
        fs::OpenOptions::new()
            .write(true)
            .open(&first)
            .unwrap()
            .set_len(len - 5)
            .unwrap();
        let err = EtcdWal::read_all(&dir, (0, 0)).unwrap_err();
        assert!(matches!(err, EtcdWalError::TornMidLog { .. }), "{err:?}");
    }

    #[test]
    fn any_single_byte_damage_is_an_error_or_a_shorter_log_never_a_panic() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = sample_wal(tmp.path());
        let (path, recs) = records(&dir);
        let end = recs.last().unwrap().offset
            + 8
            + recs.last().unwrap().data.as_ref().unwrap().len() as u64
            + 8;
        fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(end)
            .unwrap();
        let good = fs::read(&path).unwrap();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for at in 0..good.len() {
            for _ in 0..3 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let mut b = good.clone();
                b[at] = b[at].wrapping_add(1 + (seed % 255) as u8);
                fs::write(&path, &b).unwrap();
                if let Ok(c) = EtcdWal::read_all(&dir, (5, 2)) {
                    // Whatever reads must be a prefix of what was written (or the same log).
                    assert!(c.entries.len() <= 15);
                    for (i, e) in c.entries.iter().enumerate() {
                        assert_eq!(e.index(), 6 + i as u64, "byte {at}");
                    }
                }
            }
        }
        fs::write(&path, &good).unwrap();
        assert_eq!(EtcdWal::read_all(&dir, (5, 2)).unwrap().entries.len(), 15);
    }
}
