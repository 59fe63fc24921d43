//! etcd's key-table hashes: [`KvHasher`], the one rule HashKV and the compaction hash share, and
//! [`HashStorage`], the hashes a member took at its last compactions (etcd 3.5.6+'s
//! `HashStorage`), which the leader's compaction hash check compares across members.
//!
//! Invariant: a hash depends only on the key-table rows up to its revision, the compact revision
//! it starts from and the revisions a compaction at its revision keeps, never on how far a
//! physical compaction got. So every member that applied the same compactions of the same
//! history stores the same hash for each, whatever its timing; a different one means different
//! data.

use std::collections::HashSet;

use parking_lot::Mutex;

use crate::revision::Revision;

/// The name etcd hashes first, before the rows of its key bucket.
pub(crate) const KEY_BUCKET_NAME: &[u8] = b"key";

/// Compaction hashes a member keeps (etcd's hashStorageMaxSize): older ones are dropped.
pub const HASH_STORAGE_MAX: usize = 10;

/// etcd's KeyValueHash: a hash of the key table up to `revision`, starting from
/// `compact_revision` (-1: never compacted, as etcd's HashKV answers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyValueHash {
    pub hash: u32,
    pub compact_revision: i64,
    pub revision: i64,
}

/// crc32c (Castagnoli) of the key-table rows fed in revision order, skipping those at or below
/// the compact revision that a compaction at the hashed revision removes. The caller feeds only
/// rows at or below the hashed revision.
#[derive(Debug, Clone)]
pub(crate) struct KvHasher {
    crc: u32,
    /// The compact revision the hash starts from (0: never compacted).
    compact: i64,
}

impl KvHasher {
    pub(crate) fn new(compact: i64) -> KvHasher {
        KvHasher { crc: crc32c::crc32c(KEY_BUCKET_NAME), compact }
    }

    /// Feeds one row; `keep` is what a compaction at the hashed revision keeps (when empty,
    /// every row counts, as in etcd).
    pub(crate) fn write(&mut self, rev: Revision, key: &[u8], value: &[u8], keep: &HashSet<Revision>) {
        if rev.main <= self.compact && !keep.is_empty() && !keep.contains(&rev) {
            return;
        }
        self.crc = crc32c::crc32c_append(self.crc, key);
        self.crc = crc32c::crc32c_append(self.crc, value);
    }

    pub(crate) fn finish(&self, revision: i64) -> KeyValueHash {
        KeyValueHash { hash: self.crc, compact_revision: if self.compact == 0 { -1 } else { self.compact }, revision }
    }
}

/// The hashes taken at the last [`HASH_STORAGE_MAX`] compactions, oldest first. In memory only,
/// as etcd's: a restarted member has none until its next compaction.
#[derive(Debug, Default)]
pub struct HashStorage {
    hashes: Mutex<Vec<KeyValueHash>>,
}

impl HashStorage {
    pub fn store(&self, h: KeyValueHash) {
        tracing::info!(hash = h.hash, revision = h.revision, compact_revision = h.compact_revision, "storing new hash");
        let mut hashes = self.hashes.lock();
        hashes.retain(|old| old.revision != h.revision);
        hashes.push(h);
        hashes.sort_by_key(|h| h.revision);
        let excess = hashes.len().saturating_sub(HASH_STORAGE_MAX);
        hashes.drain(..excess);
    }

    /// The stored hash taken at a compaction to `revision`, if any.
    pub fn at(&self, revision: i64) -> Option<KeyValueHash> {
        self.hashes.lock().iter().find(|h| h.revision == revision).copied()
    }

    /// Every stored hash, oldest first.
    pub fn hashes(&self) -> Vec<KeyValueHash> {
        self.hashes.lock().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(revision: i64) -> KeyValueHash {
        KeyValueHash { hash: revision as u32 * 7, compact_revision: revision - 1, revision }
    }

    #[test]
    fn hash_storage_keeps_the_newest_ten_by_revision() {
        let s = HashStorage::default();
        for rev in (1..=12).rev() {
            s.store(h(rev));
        }
        let revs: Vec<i64> = s.hashes().iter().map(|h| h.revision).collect();
        assert_eq!(revs, (3..=12).collect::<Vec<_>>());
        assert_eq!(s.at(5), Some(h(5)));
        assert_eq!(s.at(2), None);
    }

    #[test]
    fn rows_below_the_compact_revision_count_only_when_kept() {
        let kept = Revision { main: 2, sub: 0 };
        let dropped = Revision { main: 1, sub: 0 };
        let above = Revision { main: 4, sub: 0 };
        let keep: HashSet<Revision> = [kept].into();
        let mut with_dropped = KvHasher::new(3);
        let mut without = KvHasher::new(3);
        for (rev, v) in [(dropped, b"a"), (kept, b"b"), (above, b"c")] {
            with_dropped.write(rev, &rev.main.to_be_bytes(), v, &keep);
            if rev != dropped {
                without.write(rev, &rev.main.to_be_bytes(), v, &keep);
            }
        }
        assert_eq!(with_dropped.finish(4), without.finish(4));
        // never compacted: every row counts, and the compact revision reads -1
        let mut fresh = KvHasher::new(0);
        fresh.write(dropped, b"k", b"v", &keep);
        let h = fresh.finish(1);
        assert_eq!(h.compact_revision, -1);
        assert_ne!(h.hash, KvHasher::new(0).finish(1).hash);
    }
}
