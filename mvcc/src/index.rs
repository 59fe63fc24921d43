//! All keys: the in-memory index from key to its generations (etcd's `treeIndex`).
//!
//! Invariants:
//! - the index holds every revision of the key table that a read at or after the compact
//!   revision can need, and may hold revisions newer than the published revision (written by
//!   the applier's open batch); readers never see those because they ask at a revision no
//!   newer than the published one;
//! - `compact_rev` is changed under the same lock as the keys it compacts, so a reader that
//!   checks it and then collects revisions sees either the index before a compaction or after,
//!   never a compacted index with an old compact revision.
//!
//! Key ranges follow etcd: `end == None` is the single key `key`; `end == Some(b"")` is every
//! key `>= key`; otherwise the half-open range `[key, end)`.

use std::collections::HashSet;

use parking_lot::RwLock;

use crate::key_blocks::KeyMap;
use crate::key_index::{KeyAt, KeyIndex};
use crate::revision::Revision;
use crate::MvccError;

/// Turns a request's `range_end` into the index's range end: empty means the single key, `"\0"`
/// means every key from `key` on.
pub fn range_end(range_end: &[u8]) -> Option<&[u8]> {
    match range_end {
        [] => None,
        [0] => Some(&[]),
        end => Some(end),
    }
}

#[derive(Default)]
struct Keys {
    /// Keys packed in blocks (see `key_blocks`): ~52 bytes a key of 8 bytes, against ~110 in a
    /// `BTreeMap<Box<[u8]>, KeyIndex>`.
    keys: KeyMap<KeyIndex>,
    compact_rev: i64,
    /// Keys live now (not deleted), for etcd_debugging_mvcc_keys_total.
    live: i64,
}

/// 1 when the key is live now.
fn live(ki: &KeyIndex) -> i64 {
    i64::from(ki.get(i64::MAX).is_some())
}

impl Keys {
    /// Visits, in key order, the keys of the range.
    fn visit<'a>(
        &'a self,
        key: &'a [u8],
        end: Option<&'a [u8]>,
    ) -> Box<dyn Iterator<Item = (&'a [u8], &'a KeyIndex)> + 'a> {
        match end {
            None => Box::new(self.keys.get_key_value(key).into_iter()),
            Some(end) => Box::new(
                self.keys
                    .range_from(key)
                    .take_while(move |(k, _)| end.is_empty() || *k < end),
            ),
        }
    }

    fn check(&self, at: i64) -> Result<(), MvccError> {
        if at < self.compact_rev {
            Err(MvccError::Compacted)
        } else {
            Ok(())
        }
    }
}

/// The index of all keys, shared between the applier (writes) and readers.
#[derive(Default)]
pub struct Index {
    inner: RwLock<Keys>,
}

impl Index {
    /// An empty index.
    pub fn new() -> Index {
        Index::default()
    }

    /// Number of keys indexed (live or not yet compacted away).
    /// Replaces every entry with `other`'s (a store installing a snapshot).
    pub fn replace(&self, other: Index) {
        *self.inner.write() = other.inner.into_inner();
    }

    pub fn len(&self) -> usize {
        self.inner.read().keys.len()
    }

    /// True when no key is indexed.
    pub fn is_empty(&self) -> bool {
        self.inner.read().keys.is_empty()
    }

    /// Number of keys live now (etcd's keys gauge: deleted keys not compacted yet are not
    /// counted).
    pub fn live_len(&self) -> usize {
        self.inner.read().live.max(0) as usize
    }

    /// The revision of the last index compaction (0 when never compacted).
    pub fn compact_rev(&self) -> i64 {
        self.inner.read().compact_rev
    }

    /// Records a put of `key` at `rev`.
    ///
    /// Returns the key's state at `rev.main` before this put (what [`Index::get`] answered), so
    /// a writer learns the creation revision and version with the same lookup.
    pub fn put(&self, key: &[u8], rev: Revision) -> Option<KeyAt> {
        let mut guard = self.inner.write();
        let inner = &mut *guard;
        match inner.keys.get_mut(key) {
            Some(ki) => {
                // `rev` is newer than every revision indexed, so the state at it is the latest
                // one: the key was live before iff `before` is Some, and a put leaves it live
                let before = ki.latest();
                ki.put(rev);
                inner.live += i64::from(before.is_none());
                before
            }
            None => {
                let mut ki = KeyIndex::new();
                ki.put(rev);
                inner.live += live(&ki);
                inner.keys.insert(key, ki);
                None
            }
        }
    }

    /// Records the deletion of `key` at `rev`; false when the key is not live.
    pub fn tombstone(&self, key: &[u8], rev: Revision) -> bool {
        let mut inner = self.inner.write();
        let deleted = inner.keys.get_mut(key).is_some_and(|ki| ki.tombstone(rev));
        inner.live -= i64::from(deleted);
        deleted
    }

    /// Reverts the latest change of `key` (the put or tombstone at `rev`).
    pub fn undo(&self, key: &[u8], rev: Revision, tombstone: bool) {
        let mut guard = self.inner.write();
        let inner = &mut *guard;
        if let Some(ki) = inner.keys.get_mut(key) {
            let was = live(ki);
            ki.undo(rev, tombstone);
            inner.live += live(ki) - was;
            if ki.is_empty() {
                inner.keys.remove(key);
            }
        }
    }

    /// Adds one key-table row while rebuilding the index; rows must come in revision order.
    /// A key first seen through a put row starts as restored from that row (its older rows may
    /// have been compacted away); a tombstone of an unknown key is ignored.
    pub fn restore_row(
        &self,
        key: &[u8],
        rev: Revision,
        tombstone: bool,
        created: i64,
        version: i64,
    ) {
        let mut guard = self.inner.write();
        let inner = &mut *guard;
        match inner.keys.get_mut(key) {
            Some(ki) => {
                let was = live(ki);
                if tombstone {
                    ki.tombstone(rev);
                } else {
                    ki.put(rev);
                }
                inner.live += live(ki) - was;
            }
            None if tombstone => {}
            None => {
                let ki = KeyIndex::restored(Revision::new(created, 0), rev, version);
                inner.live += live(&ki);
                inner.keys.insert(key, ki);
            }
        }
    }

    /// The state of `key` at `at`.
    pub fn get(&self, key: &[u8], at: i64) -> Option<KeyAt> {
        self.inner.read().keys.get(key).and_then(|ki| ki.get(at))
    }

    /// The latest revision at or before `at` of every key of the range that was live at `at`,
    /// in key order.
    pub fn revisions(&self, key: &[u8], end: Option<&[u8]>, at: i64) -> Vec<Revision> {
        let inner = self.inner.read();
        inner
            .visit(key, end)
            .filter_map(|(_, ki)| ki.get(at))
            .map(|k| k.modified)
            .collect()
    }

    /// Like [`Index::revisions`], but fails with `Compacted` when `at` is older than the
    /// compact revision, checked under the same lock.
    pub fn revisions_checked(
        &self,
        key: &[u8],
        end: Option<&[u8]>,
        at: i64,
    ) -> Result<Vec<Revision>, MvccError> {
        self.first_revisions_checked(key, end, at, usize::MAX)
    }

    /// The first `limit` revisions [`Index::revisions_checked`] would give, collecting no
    /// more than that: a chunk of a streamed range costs its own size, not the range's.
    pub fn first_revisions_checked(
        &self,
        key: &[u8],
        end: Option<&[u8]>,
        at: i64,
        limit: usize,
    ) -> Result<Vec<Revision>, MvccError> {
        let inner = self.inner.read();
        inner.check(at)?;
        Ok(inner
            .visit(key, end)
            .filter_map(|(_, ki)| ki.get(at))
            .map(|k| k.modified)
            .take(limit)
            .collect())
    }

    /// Like [`Index::count`], but fails with `Compacted` when `at` is older than the compact
    /// revision, checked under the same lock.
    pub fn count_checked(&self, key: &[u8], end: Option<&[u8]>, at: i64) -> Result<usize, MvccError> {
        let inner = self.inner.read();
        inner.check(at)?;
        Ok(inner.visit(key, end).filter(|(_, ki)| ki.get(at).is_some()).count())
    }

    /// The keys of the range live at `at` with their latest revisions, in key order.
    pub fn range(&self, key: &[u8], end: Option<&[u8]>, at: i64) -> Vec<(Vec<u8>, Revision)> {
        let inner = self.inner.read();
        inner
            .visit(key, end)
            .filter_map(|(k, ki)| ki.get(at).map(|s| (k.to_vec(), s.modified)))
            .collect()
    }

    /// Number of keys of the range live at `at`.
    pub fn count(&self, key: &[u8], end: Option<&[u8]>, at: i64) -> usize {
        let inner = self.inner.read();
        inner
            .visit(key, end)
            .filter(|(_, ki)| ki.get(at).is_some())
            .count()
    }

    /// Every change to keys of the range with main revision `>= rev` (the last change per key
    /// and main revision), sorted by revision: what a watcher starting at `rev` must replay.
    pub fn revisions_since(&self, key: &[u8], end: Option<&[u8]>, rev: i64) -> Vec<Revision> {
        let inner = self.inner.read();
        let mut revs: Vec<Revision> = inner
            .visit(key, end)
            .flat_map(|(_, ki)| ki.since(rev))
            .collect();
        revs.sort_unstable();
        revs
    }

    /// Compacts every key at `rev`, drops keys left empty, records `rev` as the compact
    /// revision, and returns the revisions `<= rev` that must stay in the key table.
    pub fn compact(&self, rev: i64) -> HashSet<Revision> {
        let mut keep = HashSet::new();
        let mut inner = self.inner.write();
        inner.keys.retain(|ki| {
            ki.compact(rev, &mut keep);
            !ki.is_empty()
        });
        inner.compact_rev = inner.compact_rev.max(rev);
        keep
    }

    /// The revisions `<= rev` a compaction at `rev` would keep, without compacting.
    pub fn keep(&self, rev: i64) -> HashSet<Revision> {
        let mut keep = HashSet::new();
        for ki in self.inner.read().keys.values() {
            ki.keep(rev, &mut keep);
        }
        keep
    }

    /// For a hash at `rev` (0 = `current`): the revision to hash, the compact revision and the
    /// revisions `<= rev` a compaction at `rev` would keep, all under one lock. Fails like
    /// etcd's HashByRev: `rev <= compact revision` is Compacted, `rev > current` FutureRev.
    pub fn keep_for_hash(
        &self,
        rev: i64,
        current: i64,
    ) -> Result<(i64, i64, HashSet<Revision>), MvccError> {
        let inner = self.inner.read();
        if rev > 0 && rev <= inner.compact_rev {
            return Err(MvccError::Compacted);
        }
        if rev > current {
            return Err(MvccError::FutureRev);
        }
        let rev = if rev <= 0 { current } else { rev };
        let mut keep = HashSet::new();
        for ki in inner.keys.values() {
            ki.keep(rev, &mut keep);
        }
        Ok((rev, inner.compact_rev, keep))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(main: i64) -> Revision {
        Revision::new(main, 0)
    }

    #[test]
    fn put_answers_the_state_get_gave_before_it() {
        let idx = Index::new();
        assert_eq!(idx.put(b"k", r(2)), None, "a new key");
        let second = idx.put(b"k", r(3)).expect("live");
        assert_eq!((second.created, second.modified, second.version), (r(2), r(2), 1));
        assert!(idx.tombstone(b"k", r(4)));
        assert_eq!(idx.put(b"k", r(5)), None, "a deleted key starts a new generation");
        assert_eq!(idx.get(b"k", 5).map(|s| (s.created, s.version)), Some((r(5), 1)));
    }

    /// a@2, b@3, c@4, b@5, del a@6, d@7
    fn sample() -> Index {
        let idx = Index::new();
        idx.put(b"a", r(2));
        idx.put(b"b", r(3));
        idx.put(b"c", r(4));
        idx.put(b"b", r(5));
        assert!(idx.tombstone(b"a", r(6)));
        idx.put(b"d", r(7));
        idx
    }

    #[test]
    fn live_len_counts_keys_not_deleted_through_puts_deletes_undo_and_compaction() {
        let idx = sample();
        assert_eq!((idx.len(), idx.live_len()), (4, 3), "a was deleted");
        idx.put(b"a", r(8));
        assert_eq!(idx.live_len(), 4, "a lives again");
        idx.undo(b"a", r(8), false);
        assert_eq!(idx.live_len(), 3);
        assert!(!idx.tombstone(b"a", r(9)), "a is not live");
        assert_eq!(idx.live_len(), 3);
        idx.compact(7);
        assert_eq!((idx.len(), idx.live_len()), (3, 3), "compaction removes only the dead");
        idx.put(b"e", r(10));
        idx.undo(b"e", r(10), false);
        assert_eq!((idx.len(), idx.live_len()), (3, 3));
    }

    #[test]
    fn range_end_follows_etcd() {
        assert_eq!(range_end(b""), None);
        assert_eq!(range_end(b"\0"), Some(&b""[..]));
        assert_eq!(range_end(b"z"), Some(&b"z"[..]));
    }

    #[test]
    fn ranges_at_revisions() {
        let idx = sample();
        assert_eq!(idx.revisions(b"a", None, 5), vec![r(2)]);
        assert_eq!(idx.revisions(b"a", None, 6), vec![]);
        assert_eq!(idx.revisions(b"a", Some(b"c"), 5), vec![r(2), r(5)]);
        assert_eq!(idx.revisions(b"a", Some(b"c"), 3), vec![r(2), r(3)]);
        assert_eq!(idx.revisions(b"a", Some(b""), 7), vec![r(5), r(4), r(7)]);
        assert_eq!(idx.revisions(b"\0", Some(b""), 7), vec![r(5), r(4), r(7)]);
        assert_eq!(idx.revisions(b"c", Some(b"a"), 7), vec![]);
        assert_eq!(idx.revisions(b"b", Some(b"b"), 7), vec![]);
        assert_eq!(idx.count(b"a", Some(b""), 5), 3);
        assert_eq!(idx.count(b"a", Some(b""), 1), 0);
        let keys: Vec<Vec<u8>> = idx
            .range(b"a", Some(b"d"), 7)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, vec![b"b".to_vec(), b"c".to_vec()]);
    }

    #[test]
    fn first_revisions_stop_at_the_limit_skip_dead_keys_and_refuse_compacted_revisions() {
        let idx = sample();
        // a is dead at 7: the first two live keys are b and c
        assert_eq!(idx.first_revisions_checked(b"a", Some(b""), 7, 2), Ok(vec![r(5), r(4)]));
        assert_eq!(idx.first_revisions_checked(b"a", Some(b""), 5, 1), Ok(vec![r(2)]));
        assert_eq!(idx.first_revisions_checked(b"c\0", Some(b""), 7, 10), Ok(vec![r(7)]));
        assert_eq!(idx.first_revisions_checked(b"a", Some(b""), 7, 0), Ok(vec![]));
        assert_eq!(idx.count_checked(b"a", Some(b""), 7), Ok(3));
        assert_eq!(idx.count_checked(b"b\0", Some(b"d"), 7), Ok(1));
        idx.compact(6);
        assert_eq!(idx.first_revisions_checked(b"a", Some(b""), 5, 2), Err(MvccError::Compacted));
        assert_eq!(idx.count_checked(b"a", Some(b""), 5), Err(MvccError::Compacted));
        assert_eq!(idx.count_checked(b"a", Some(b""), 6), Ok(2));
    }

    #[test]
    fn revisions_since_are_sorted_across_keys() {
        let idx = sample();
        assert_eq!(
            idx.revisions_since(b"a", Some(b""), 3),
            vec![r(3), r(4), r(5), r(6), r(7)]
        );
        assert_eq!(idx.revisions_since(b"b", None, 0), vec![r(3), r(5)]);
    }

    #[test]
    fn compaction_drops_deleted_keys_and_keeps_latest() {
        let idx = sample();
        let keep = idx.compact(6);
        // a's tombstone at 6 leaves the index but its row stays for watchers starting at 6
        assert_eq!(keep, HashSet::from([r(5), r(4), r(6)]));
        assert_eq!(idx.len(), 3, "a was deleted at 6 and is gone");
        assert_eq!(idx.compact_rev(), 6);
        assert_eq!(
            idx.revisions_checked(b"a", Some(b""), 5),
            Err(MvccError::Compacted)
        );
        assert_eq!(
            idx.revisions_checked(b"a", Some(b""), 6).unwrap(),
            vec![r(5), r(4)]
        );
    }

    #[test]
    fn keep_predicts_compact() {
        for at in 1..=8 {
            let idx = sample();
            let mut peek = idx.keep(at);
            if at == 6 {
                peek.insert(r(6)); // a's tombstone at the compact revision keeps its row
            }
            assert_eq!(idx.compact(at), peek, "at {at}");
        }
    }

    #[test]
    fn restore_rows_rebuilds_generations() {
        let idx = Index::new();
        // rows of a key table compacted at 4: b@3 was superseded by b@5 and removed
        idx.restore_row(b"a", r(2), false, 2, 1);
        idx.restore_row(b"c", r(4), false, 4, 1);
        idx.restore_row(b"b", r(5), false, 3, 2);
        idx.restore_row(b"a", r(6), true, 0, 0);
        idx.restore_row(b"zz", r(6), true, 0, 0);
        idx.restore_row(b"d", r(7), false, 7, 1);
        assert_eq!(idx.revisions(b"a", Some(b""), 7), vec![r(5), r(4), r(7)]);
        assert_eq!(idx.get(b"b", 7).unwrap().version, 2);
        assert_eq!(idx.get(b"b", 7).unwrap().created, r(3));
        assert_eq!(idx.len(), 4);
    }

    #[test]
    fn undo_removes_new_keys() {
        let idx = sample();
        idx.put(b"e", r(8));
        idx.undo(b"e", r(8), false);
        assert_eq!(idx.len(), 4);
        assert!(idx.tombstone(b"b", r(8)));
        idx.undo(b"b", r(8), true);
        assert_eq!(idx.revisions(b"b", None, 9), vec![r(5)]);
    }
}
