//! A revision and its on-disk encoding, the key of the key table.
//!
//! Invariant: the encoding sorts exactly like the revision (main, then sub), so a scan of the key
//! table visits revisions in order. Encoding (as etcd's `revision.go`): `main` as 8 bytes
//! big-endian, `b'_'`, `sub` as 8 bytes big-endian (17 bytes), plus a trailing `b't'` when the
//! row is a tombstone (18 bytes). Revisions are never negative.

use crate::MvccError;

/// Length of an encoded revision without the tombstone mark.
pub const REV_BYTES_LEN: usize = 17;
/// Length of an encoded tombstone revision.
pub const TOMBSTONE_REV_BYTES_LEN: usize = 18;
const TOMBSTONE_MARK: u8 = b't';

/// `main` increments once per write transaction that changes something; `sub` counts the
/// changes inside it, from 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Revision {
    /// The store revision of the write transaction.
    pub main: i64,
    /// The index of the change inside that transaction.
    pub sub: i64,
}

impl Revision {
    /// A revision from its two parts.
    pub const fn new(main: i64, sub: i64) -> Revision {
        Revision { main, sub }
    }

    /// The 17-byte key-table key of this revision.
    pub fn to_bytes(self) -> Vec<u8> {
        let mut b = Vec::with_capacity(TOMBSTONE_REV_BYTES_LEN);
        b.extend_from_slice(&(self.main as u64).to_be_bytes());
        b.push(b'_');
        b.extend_from_slice(&(self.sub as u64).to_be_bytes());
        b
    }

    /// The key-table key of this revision, with the tombstone mark when `tombstone`.
    pub fn to_key_bytes(self, tombstone: bool) -> Vec<u8> {
        let mut b = self.to_bytes();
        if tombstone {
            b.push(TOMBSTONE_MARK);
        }
        b
    }

    /// Decodes a key-table key: the revision and whether the row is a tombstone.
    pub fn from_key_bytes(b: &[u8]) -> Result<(Revision, bool), MvccError> {
        let tombstone = match b.len() {
            REV_BYTES_LEN => false,
            TOMBSTONE_REV_BYTES_LEN if b[17] == TOMBSTONE_MARK => true,
            _ => return Err(MvccError::Corrupt(format!("bad revision key {b:?}"))),
        };
        if b[8] != b'_' {
            return Err(MvccError::Corrupt(format!("bad revision key {b:?}")));
        }
        let main = u64::from_be_bytes(b[0..8].try_into().expect("8 bytes")) as i64;
        let sub = u64::from_be_bytes(b[9..17].try_into().expect("8 bytes")) as i64;
        Ok((Revision { main, sub }, tombstone))
    }
}

/// The smallest key-table key whose main revision is `main` (used as a scan bound: every row
/// with a smaller main revision sorts before it).
pub fn main_rev_bound(main: i64) -> Vec<u8> {
    (main as u64).to_be_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_round_trips_and_marks_tombstones() {
        for (rev, tomb) in [
            (Revision::new(1, 0), false),
            (Revision::new(5, 3), true),
            (Revision::new(i64::MAX, i64::MAX), false),
        ] {
            let b = rev.to_key_bytes(tomb);
            assert_eq!(b.len(), if tomb { 18 } else { 17 });
            assert_eq!(b[8], b'_');
            assert_eq!(Revision::from_key_bytes(&b).unwrap(), (rev, tomb));
        }
        assert_eq!(
            Revision::new(0x0102, 3).to_bytes(),
            vec![0, 0, 0, 0, 0, 0, 1, 2, b'_', 0, 0, 0, 0, 0, 0, 0, 3]
        );
    }

    #[test]
    fn encoding_sorts_like_revisions() {
        let revs = [
            Revision::new(1, 0),
            Revision::new(1, 1),
            Revision::new(1, 256),
            Revision::new(2, 0),
            Revision::new(256, 0),
        ];
        for w in revs.windows(2) {
            assert!(w[0] < w[1]);
            assert!(w[0].to_bytes() < w[1].to_bytes());
            assert!(w[0].to_key_bytes(true) < w[1].to_bytes());
        }
        assert!(main_rev_bound(2) > Revision::new(1, i64::MAX).to_key_bytes(true));
        assert!(main_rev_bound(2) < Revision::new(2, 0).to_bytes());
    }

    #[test]
    fn malformed_keys_are_corrupt_not_panics() {
        assert!(Revision::from_key_bytes(b"short").is_err());
        let mut b = Revision::new(1, 1).to_bytes();
        b.push(b'x');
        assert!(Revision::from_key_bytes(&b).is_err());
        let mut b = Revision::new(1, 1).to_bytes();
        b[8] = b'-';
        assert!(Revision::from_key_bytes(&b).is_err());
    }
}
