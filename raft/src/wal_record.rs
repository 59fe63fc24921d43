//! WAL record encoding: the only code that turns WAL bytes into values.
//!
//! Every record is `[u32 LE payload_len][u32 LE crc32c(type byte + payload)][u8 type][payload]`.
//! Payloads by type:
//!
//! | type | name | payload |
//! | --- | --- | --- |
//! | 1 | Metadata | node id u64 LE, cluster id u64 LE (first record of every segment) |
//! | 2 | HardState | term, vote, commit: u64 LE each |
//! | 3 | Entry | a protobuf-encoded raft `Entry` |
//! | 4 | SnapshotMarker | index u64 LE, term u64 LE: the snapshot the log starts after |
//!
//! Zeros: a segment's file may be longer than its records, the rest zero-filled ahead of the
//! writes (see `crate::wal_zero`). A record header of nine zero bytes cannot be a record (no
//! type 0, and a zero checksum does not match a zero-length payload), so zeros where the next
//! record would start end the records, provided everything from there to the end of the buffer
//! is zero; zeros followed by anything else are corruption (a torn write, or damage).
//!
//! Decoding never trusts a length: a length above [`MAX_RECORD_LEN`] is corruption,
//! not an allocation, and any failure is reported with the offset of the record
//! that failed so the caller can decide between truncating a torn tail and
//! refusing to start.

use protobuf::Message as _;
use raft::eraftpb::{Entry, HardState};

/// Bytes before the payload: length, checksum, type.
pub const HEADER_LEN: usize = 9;
/// The largest payload a record may claim (one segment of 64 MiB plus slack).
pub const MAX_RECORD_LEN: u32 = 80 * 1024 * 1024;

const TYPE_METADATA: u8 = 1;
const TYPE_HARD_STATE: u8 = 2;
const TYPE_ENTRY: u8 = 3;
const TYPE_SNAPSHOT_MARKER: u8 = 4;

/// Identity of the member that owns a WAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WalMetadata {
    pub node_id: u64,
    pub cluster_id: u64,
}

/// One decoded WAL record.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Metadata(WalMetadata),
    HardState(HardState),
    Entry(Entry),
    SnapshotMarker { index: u64, term: u64 },
}

/// Why decoding stopped before the end of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeFailure {
    /// The buffer ends inside a record (a write torn by a crash).
    Torn,
    /// The bytes are not a valid record (bad length, checksum, type or payload).
    Corrupt,
}

/// The result of decoding a whole segment's bytes.
#[derive(Debug)]
pub struct Decoded {
    pub records: Vec<Record>,
    /// Bytes from the start that hold only good records.
    pub valid_len: usize,
    /// Set when decoding stopped at `valid_len` before the end of the buffer.
    pub failure: Option<DecodeFailure>,
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Appends the encoding of `record` to `out`.
pub fn encode_record(record: &Record, out: &mut Vec<u8>) -> Result<(), String> {
    let (ty, payload): (u8, Vec<u8>) = match record {
        Record::Metadata(m) => {
            let mut p = Vec::with_capacity(16);
            p.extend_from_slice(&m.node_id.to_le_bytes());
            p.extend_from_slice(&m.cluster_id.to_le_bytes());
            (TYPE_METADATA, p)
        }
        Record::HardState(hs) => {
            let mut p = Vec::with_capacity(24);
            p.extend_from_slice(&hs.term.to_le_bytes());
            p.extend_from_slice(&hs.vote.to_le_bytes());
            p.extend_from_slice(&hs.commit.to_le_bytes());
            (TYPE_HARD_STATE, p)
        }
        Record::Entry(e) => (TYPE_ENTRY, e.write_to_bytes().map_err(|e| e.to_string())?),
        Record::SnapshotMarker { index, term } => {
            let mut p = Vec::with_capacity(16);
            p.extend_from_slice(&index.to_le_bytes());
            p.extend_from_slice(&term.to_le_bytes());
            (TYPE_SNAPSHOT_MARKER, p)
        }
    };
    if payload.len() > MAX_RECORD_LEN as usize {
        return Err(format!(
            "record of {} bytes exceeds the WAL record limit of {MAX_RECORD_LEN} bytes",
            payload.len()
        ));
    }
    let mut crc = crc32c::crc32c(&[ty]);
    crc = crc32c::crc32c_append(crc, &payload);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    out.push(ty);
    out.extend_from_slice(&payload);
    Ok(())
}

fn decode_payload(ty: u8, p: &[u8]) -> Option<Record> {
    match ty {
        TYPE_METADATA if p.len() == 16 => Some(Record::Metadata(WalMetadata {
            node_id: u64_at(p, 0),
            cluster_id: u64_at(p, 8),
        })),
        TYPE_HARD_STATE if p.len() == 24 => Some(Record::HardState(HardState {
            term: u64_at(p, 0),
            vote: u64_at(p, 8),
            commit: u64_at(p, 16),
            ..Default::default()
        })),
        TYPE_ENTRY => Entry::parse_from_bytes(p).ok().map(Record::Entry),
        TYPE_SNAPSHOT_MARKER if p.len() == 16 => Some(Record::SnapshotMarker {
            index: u64_at(p, 0),
            term: u64_at(p, 8),
        }),
        _ => None,
    }
}

/// Decodes one record at the start of `buf`: the record and the bytes it used.
pub fn decode_record(buf: &[u8]) -> Result<(Record, usize), DecodeFailure> {
    if buf.len() < HEADER_LEN {
        return Err(DecodeFailure::Torn);
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if len > MAX_RECORD_LEN {
        return Err(DecodeFailure::Corrupt);
    }
    let crc = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    let total = HEADER_LEN + len as usize;
    if buf.len() < total {
        return Err(DecodeFailure::Torn);
    }
    let ty = buf[8];
    let payload = &buf[HEADER_LEN..total];
    let actual = crc32c::crc32c_append(crc32c::crc32c(&[ty]), payload);
    if actual != crc {
        return Err(DecodeFailure::Corrupt);
    }
    decode_payload(ty, payload)
        .map(|r| (r, total))
        .ok_or(DecodeFailure::Corrupt)
}

/// True if every byte of `b` is zero (word at a time: fast enough for a 64 MiB segment).
pub fn all_zero(b: &[u8]) -> bool {
    let words = b.chunks_exact(8);
    let tail = words.remainder();
    words
        .map(|c| u64::from_ne_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .all(|w| w == 0)
        && tail.iter().all(|&x| x == 0)
}

/// Decodes records from the start of `buf` until its end, a zero-filled rest (the normal end
/// of a segment written into pre-zeroed space) or the first bad record.
pub fn decode_records(buf: &[u8]) -> Decoded {
    let mut records = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        let rest = &buf[at..];
        if all_zero(&rest[..rest.len().min(HEADER_LEN)]) {
            let failure = (!all_zero(rest)).then_some(DecodeFailure::Corrupt);
            return Decoded {
                records,
                valid_len: at,
                failure,
            };
        }
        match decode_record(rest) {
            Ok((r, used)) => {
                records.push(r);
                at += used;
            }
            Err(f) => {
                return Decoded {
                    records,
                    valid_len: at,
                    failure: Some(f),
                }
            }
        }
    }
    Decoded {
        records,
        valid_len: at,
        failure: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
        Entry {
            index,
            term,
            data: data.to_vec().into(),
            ..Default::default()
        }
    }

    #[test]
    fn every_record_type_round_trips() {
        let hs = HardState {
            term: 3,
            vote: 2,
            commit: 9,
            ..Default::default()
        };
        let records = vec![
            Record::Metadata(WalMetadata {
                node_id: 7,
                cluster_id: 8,
            }),
            Record::HardState(hs),
            Record::Entry(entry(5, 3, b"hello")),
            Record::SnapshotMarker { index: 4, term: 2 },
        ];
        let mut buf = Vec::new();
        for r in &records {
            encode_record(r, &mut buf).unwrap();
        }
        let d = decode_records(&buf);
        assert_eq!(d.records, records);
        assert_eq!(d.valid_len, buf.len());
        assert_eq!(d.failure, None);
    }

    #[test]
    fn huge_length_is_corruption_not_allocation() {
        let mut buf = vec![0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 3];
        buf.extend_from_slice(&[0; 16]);
        assert_eq!(decode_record(&buf).unwrap_err(), DecodeFailure::Corrupt);
    }

    #[test]
    fn short_buffer_is_torn_and_flipped_byte_is_corrupt() {
        let mut buf = Vec::new();
        encode_record(&Record::Entry(entry(1, 1, b"abcdef")), &mut buf).unwrap();
        assert_eq!(
            decode_record(&buf[..buf.len() - 1]).unwrap_err(),
            DecodeFailure::Torn
        );
        assert_eq!(decode_record(&buf[..4]).unwrap_err(), DecodeFailure::Torn);
        let last = buf.len() - 1;
        buf[last] ^= 0x01;
        assert_eq!(decode_record(&buf).unwrap_err(), DecodeFailure::Corrupt);
    }

    #[test]
    fn unknown_type_with_good_checksum_is_corrupt() {
        let payload = [1u8, 2, 3];
        let ty = 99u8;
        let crc = crc32c::crc32c_append(crc32c::crc32c(&[ty]), &payload);
        let mut buf = Vec::new();
        buf.extend_from_slice(&3u32.to_le_bytes());
        buf.extend_from_slice(&crc.to_le_bytes());
        buf.push(ty);
        buf.extend_from_slice(&payload);
        assert_eq!(decode_record(&buf).unwrap_err(), DecodeFailure::Corrupt);
    }

    #[test]
    fn zeros_after_the_records_end_them_and_zeros_then_data_are_corrupt() {
        let mut buf = Vec::new();
        encode_record(&Record::Entry(entry(1, 1, b"abcdef")), &mut buf).unwrap();
        let records = buf.len();
        buf.resize(records + 100, 0);
        let d = decode_records(&buf);
        assert_eq!((d.records.len(), d.valid_len, d.failure), (1, records, None));
        // Fewer zeros than a header are an end too.
        let d = decode_records(&buf[..records + 3]);
        assert_eq!((d.valid_len, d.failure), (records, None));
        buf[records + 50] = 1;
        let d = decode_records(&buf);
        assert_eq!((d.records.len(), d.valid_len), (1, records));
        assert_eq!(d.failure, Some(DecodeFailure::Corrupt));
    }
}
