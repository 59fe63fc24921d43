//! One key's history: its generations of revisions (etcd's `keyIndex`).
//!
//! A generation runs from the put that created the key to the tombstone that deleted it; the
//! tombstone is the generation's last revision and is followed by a new, empty generation.
//! Invariants:
//! - there is always at least one generation, and only the last one may be empty;
//! - revisions only grow: across generations, in order, they are strictly increasing;
//! - every generation but the last ends with a tombstone;
//! - `version` of a generation counts its puts, including those compacted away (so the version
//!   of a key read after compaction is still the number of puts since its creation).
//!
//! Representation: most keys of a large keyspace are live with one indexed revision (written
//! once, or compacted down to their latest put). Those are held inline ([`Repr::Single`]: no
//! heap allocation); a key never written or fully compacted holds nothing ([`Repr::Empty`]);
//! everything else keeps the general generations list ([`Repr::Full`]). Every change goes
//! through the general algorithm and is then normalized back to the smallest form, so the
//! forms are canonical and behave exactly as the general one.

use std::collections::HashSet;

use crate::revision::Revision;

/// The revisions of one life of a key, from creation to deletion.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Generation {
    /// Number of changes (puts, plus the tombstone once deleted) in this generation.
    pub version: i64,
    /// The revision that created the key in this generation.
    pub created: Revision,
    /// The revisions still indexed, ascending; the last one is the tombstone when the generation
    /// is not the key's last.
    pub revs: Vec<Revision>,
}

impl Generation {
    fn is_empty(&self) -> bool {
        self.revs.is_empty()
    }

    /// Index of the last revision whose main revision is `<= at`, if any.
    fn last_at_or_before(&self, at: i64) -> Option<usize> {
        self.revs.iter().rposition(|r| r.main <= at)
    }
}

/// What a key looked like at a revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyAt {
    /// The revision of the key's latest change at or before the asked revision.
    pub modified: Revision,
    /// The revision that created the key's current generation.
    pub created: Revision,
    /// The key's version at that revision (1 for the creating put).
    pub version: i64,
}

/// All generations of one key.
#[derive(Debug, Clone)]
pub struct KeyIndex {
    repr: Repr,
}

/// The forms of a key's generations; see the module docs. Only [`Repr::Full`] states that fit
/// no smaller form are ever stored as `Full`.
#[derive(Debug, Clone)]
enum Repr {
    /// Generations `[Generation::default()]`: nothing indexed.
    Empty { modified: Revision },
    /// Generations `[Generation { version, created, revs: [modified] }]`: one live generation
    /// whose only indexed revision is the latest change.
    Single(Single),
    /// Any other state (boxed: keeps the map's entries at 40 bytes).
    Full(Box<Full>),
}

/// [`Repr::Single`]'s fields, packed: sub revisions (changes inside one transaction) fit 32 bits
/// in practice; a state whose do not is kept as [`Repr::Full`].
#[derive(Debug, Clone, Copy)]
struct Single {
    created_main: i64,
    modified_main: i64,
    created_sub: u32,
    modified_sub: u32,
    version: i64,
}

impl Single {
    fn new(created: Revision, modified: Revision, version: i64) -> Option<Single> {
        Some(Single {
            created_main: created.main,
            modified_main: modified.main,
            created_sub: u32::try_from(created.sub).ok()?,
            modified_sub: u32::try_from(modified.sub).ok()?,
            version,
        })
    }

    fn created(&self) -> Revision {
        Revision::new(self.created_main, i64::from(self.created_sub))
    }

    fn modified(&self) -> Revision {
        Revision::new(self.modified_main, i64::from(self.modified_sub))
    }
}

/// The general form: every generation in full.
#[derive(Debug, Clone)]
struct Full {
    modified: Revision,
    generations: Vec<Generation>,
}

impl Default for KeyIndex {
    fn default() -> Self {
        KeyIndex::new()
    }
}

impl PartialEq for KeyIndex {
    fn eq(&self, other: &Self) -> bool {
        self.modified() == other.modified() && self.generations() == other.generations()
    }
}

impl Eq for KeyIndex {}

impl KeyIndex {
    /// A key that has never been written.
    pub fn new() -> KeyIndex {
        KeyIndex {
            repr: Repr::Empty {
                modified: Revision::default(),
            },
        }
    }

    /// A key known only by its latest row, as found when rebuilding the index from a key table
    /// whose older rows compaction removed.
    pub fn restored(created: Revision, modified: Revision, version: i64) -> KeyIndex {
        let full = Full {
            modified,
            generations: vec![Generation {
                version,
                created,
                revs: vec![modified],
            }],
        };
        KeyIndex {
            repr: full.into_repr(),
        }
    }

    /// The revision of the key's latest change (put or tombstone).
    pub fn modified(&self) -> Revision {
        match &self.repr {
            Repr::Empty { modified } => *modified,
            Repr::Single(s) => s.modified(),
            Repr::Full(f) => f.modified,
        }
    }

    /// The generations, oldest first (for tests and diagnostics; built on each call).
    pub fn generations(&self) -> Vec<Generation> {
        self.repr.clone().into_full().generations
    }

    /// True when nothing is indexed for the key (never written, or fully compacted away).
    pub fn is_empty(&self) -> bool {
        matches!(self.repr, Repr::Empty { .. })
    }

    /// Records a put at `rev`, which must be newer than every indexed revision.
    pub fn put(&mut self, rev: Revision) {
        debug_assert!(
            rev > self.modified(),
            "put {rev:?} not after {:?}",
            self.modified()
        );
        match (&self.repr, Single::new(rev, rev, 1)) {
            // the common case, a new key, stays inline
            (Repr::Empty { .. }, Some(single)) => self.repr = Repr::Single(single),
            _ => self.change(|f| f.put(rev)),
        }
    }

    /// Records a deletion at `rev`, ending the current generation. Returns false (and changes
    /// nothing) when the key is not live.
    pub fn tombstone(&mut self, rev: Revision) -> bool {
        match self.repr {
            Repr::Empty { .. } => false,
            _ => self.change(|f| f.tombstone(rev)),
        }
    }

    /// Reverts the latest change, which must be the put (or tombstone) at `rev`. Used to roll
    /// back changes of a batch that is never committed.
    pub fn undo(&mut self, rev: Revision, tombstone: bool) {
        self.change(|f| f.undo(rev, tombstone))
    }

    /// The key's state at revision `at`, or None when it did not exist then.
    pub fn get(&self, at: i64) -> Option<KeyAt> {
        match &self.repr {
            Repr::Empty { .. } => None,
            Repr::Single(s) => (s.modified_main <= at).then(|| KeyAt {
                modified: s.modified(),
                created: s.created(),
                version: s.version,
            }),
            Repr::Full(f) => f.get(at),
        }
    }

    /// The key's state now: what [`KeyIndex::get`] answers at any revision at or after
    /// [`KeyIndex::modified`]'s, i.e. the last generation's state, read without its revisions.
    pub fn latest(&self) -> Option<KeyAt> {
        match &self.repr {
            Repr::Empty { .. } => None,
            Repr::Single(s) => Some(KeyAt {
                modified: s.modified(),
                created: s.created(),
                version: s.version,
            }),
            // a non-empty last generation's last revision is the latest change
            Repr::Full(f) => f.generations.last().filter(|g| !g.is_empty()).map(|g| KeyAt {
                modified: f.modified,
                created: g.created,
                version: g.version,
            }),
        }
    }

    /// Every indexed revision with main revision `>= rev`, ascending, keeping only the last
    /// change of each main revision (what a watcher from `rev` must see).
    pub fn since(&self, rev: i64) -> Vec<Revision> {
        match &self.repr {
            Repr::Empty { .. } => Vec::new(),
            Repr::Single(s) => {
                if s.modified() >= Revision::new(rev, 0) {
                    vec![s.modified()]
                } else {
                    Vec::new()
                }
            }
            Repr::Full(f) => f.since(rev),
        }
    }

    /// Removes every revision that no read at or after `at` can need: all but the latest
    /// revision `<= at`, and that one too when it is a tombstone. The surviving revision
    /// `<= at` is added to `keep`. Afterwards the key may be empty.
    ///
    /// A tombstone at exactly `at` leaves the index but is added to `keep`, so its key-table
    /// row stays until the next compaction: a watcher starting at the compact revision (which
    /// is not compacted for it) must still see that delete (etcd issue 17780).
    pub fn compact(&mut self, at: i64, keep: &mut HashSet<Revision>) {
        match &self.repr {
            Repr::Empty { .. } => {}
            // a live key's only revision is its latest: it stays, and nothing changes
            Repr::Single(s) => {
                if s.modified_main <= at {
                    keep.insert(s.modified());
                }
            }
            Repr::Full(_) => self.change(|f| f.compact(at, keep)),
        }
    }

    /// Adds to `keep` the revision `compact(at)` would keep, without changing anything, except
    /// a tombstone at exactly `at` (kept only for watchers; hashes skip it as etcd 3.4 does).
    pub fn keep(&self, at: i64, keep: &mut HashSet<Revision>) {
        match &self.repr {
            Repr::Empty { .. } => {}
            Repr::Single(s) => {
                if s.modified_main <= at {
                    keep.insert(s.modified());
                }
            }
            Repr::Full(f) => f.keep(at, keep),
        }
    }

    /// Applies `op` to the general form, then stores the result in its smallest form.
    fn change<T>(&mut self, op: impl FnOnce(&mut Full) -> T) -> T {
        // a key changed before keeps its boxed Full, changed in place, unless it may shrink
        if let Repr::Full(f) = &mut self.repr {
            let out = op(f);
            if matches!(f.generations.as_slice(), [g] if g.revs.len() <= 1) {
                self.repr = self.take().into_full().into_repr();
            }
            return out;
        }
        let mut full = self.take().into_full();
        let out = op(&mut full);
        self.repr = full.into_repr();
        out
    }

    /// Takes the state out, leaving an empty one.
    fn take(&mut self) -> Repr {
        std::mem::replace(&mut self.repr, Repr::Empty { modified: Revision::default() })
    }
}

impl Repr {
    /// The general form of this state.
    fn into_full(self) -> Full {
        match self {
            Repr::Empty { modified } => Full {
                modified,
                generations: vec![Generation::default()],
            },
            Repr::Single(s) => Full {
                modified: s.modified(),
                generations: vec![Generation {
                    version: s.version,
                    created: s.created(),
                    revs: vec![s.modified()],
                }],
            },
            Repr::Full(f) => *f,
        }
    }
}

impl Full {
    /// The smallest form holding exactly this state.
    fn into_repr(self) -> Repr {
        if let [g] = self.generations.as_slice() {
            match g.revs.as_slice() {
                [] => {
                    return Repr::Empty {
                        modified: self.modified,
                    }
                }
                [only] if *only == self.modified => {
                    if let Some(single) = Single::new(g.created, *only, g.version) {
                        return Repr::Single(single);
                    }
                }
                _ => {}
            }
        }
        Repr::Full(Box::new(self))
    }

    fn put(&mut self, rev: Revision) {
        let g = self
            .generations
            .last_mut()
            .expect("at least one generation");
        if g.is_empty() {
            g.created = rev;
        }
        g.revs.push(rev);
        g.version += 1;
        self.modified = rev;
    }

    fn tombstone(&mut self, rev: Revision) -> bool {
        if self.generations.last().is_none_or(Generation::is_empty) {
            return false;
        }
        self.put(rev);
        self.generations.push(Generation::default());
        true
    }

    fn undo(&mut self, rev: Revision, tombstone: bool) {
        if tombstone {
            debug_assert!(self.generations.last().is_some_and(Generation::is_empty));
            self.generations.pop();
        }
        let g = self
            .generations
            .last_mut()
            .expect("at least one generation");
        debug_assert_eq!(g.revs.last(), Some(&rev));
        g.revs.pop();
        g.version -= 1;
        if g.revs.is_empty() {
            *g = Generation::default();
        }
        self.modified = self
            .generations
            .iter()
            .rev()
            .find_map(|g| g.revs.last().copied())
            .unwrap_or_default();
    }

    fn is_empty(&self) -> bool {
        self.generations.len() == 1 && self.generations[0].is_empty()
    }

    /// The generation holding the key's state at `at`, if the key was live then.
    fn find_generation(&self, at: i64) -> Option<usize> {
        let last = self.generations.len() - 1;
        for (i, g) in self.generations.iter().enumerate().rev() {
            let Some(first) = g.revs.first() else {
                continue;
            };
            if i != last {
                let tomb = g.revs.last().expect("non-empty");
                if tomb.main <= at {
                    // deleted at or before `at`, and no later generation started by then
                    return None;
                }
            }
            if first.main <= at {
                return Some(i);
            }
        }
        None
    }

    fn get(&self, at: i64) -> Option<KeyAt> {
        let gi = self.find_generation(at)?;
        let g = &self.generations[gi];
        let n = g.last_at_or_before(at)?;
        Some(KeyAt {
            modified: g.revs[n],
            created: g.created,
            version: g.version - (g.revs.len() - n - 1) as i64,
        })
    }

    fn since(&self, rev: i64) -> Vec<Revision> {
        let since = Revision::new(rev, 0);
        let mut out: Vec<Revision> = Vec::new();
        for r in self.generations.iter().flat_map(|g| g.revs.iter()) {
            if *r < since {
                continue;
            }
            match out.last_mut() {
                Some(last) if last.main == r.main => *last = *r,
                _ => out.push(*r),
            }
        }
        out
    }

    /// Finds where compaction at `at` starts: the first generation not deleted at or before `at`
    /// (or the last one), and in it the index of the latest revision `<= at`, which is added
    /// to `keep`.
    fn compaction_point(
        &self,
        at: i64,
        keep: &mut HashSet<Revision>,
        keep_tombstone_at: bool,
    ) -> (usize, Option<usize>) {
        let mut gi = 0;
        while gi < self.generations.len() - 1 {
            let tomb = self.generations[gi]
                .revs
                .last()
                .expect("ended generation has a tombstone");
            if tomb.main > at {
                break;
            }
            if keep_tombstone_at && tomb.main == at {
                keep.insert(*tomb);
            }
            gi += 1;
        }
        let ri = self.generations[gi].last_at_or_before(at);
        if let Some(ri) = ri {
            keep.insert(self.generations[gi].revs[ri]);
        }
        (gi, ri)
    }

    fn compact(&mut self, at: i64, keep: &mut HashSet<Revision>) {
        if self.is_empty() {
            return;
        }
        let (mut gi, ri) = self.compaction_point(at, keep, true);
        let last = self.generations.len() - 1;
        let g = &mut self.generations[gi];
        if !g.is_empty() {
            if let Some(ri) = ri {
                g.revs.drain(..ri);
            }
            if g.revs.len() == 1 && gi != last {
                // only the tombstone is left: the generation is gone
                keep.remove(&g.revs[0]);
                gi += 1;
            }
        }
        self.generations.drain(..gi);
        if self.generations.len() == 1 {
            // what a long-lived key is compacted down to: let it stop holding spare capacity
            self.generations[0].revs.shrink_to_fit();
        }
    }

    fn keep(&self, at: i64, keep: &mut HashSet<Revision>) {
        if self.is_empty() {
            return;
        }
        let (gi, ri) = self.compaction_point(at, keep, false);
        let g = &self.generations[gi];
        if let Some(ri) = ri {
            if ri == g.revs.len() - 1 && gi != self.generations.len() - 1 {
                keep.remove(&g.revs[ri]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(main: i64) -> Revision {
        Revision::new(main, 0)
    }

    fn gen(version: i64, created: Revision, revs: &[Revision]) -> Generation {
        Generation {
            version,
            created,
            revs: revs.to_vec(),
        }
    }

    /// put 2, put 4, del 6, put 8, put 10, del 12, put 14.0, put 14.1, del 16.
    fn three_generations() -> KeyIndex {
        let mut ki = KeyIndex::new();
        ki.put(r(2));
        ki.put(r(4));
        assert!(ki.tombstone(r(6)));
        ki.put(r(8));
        ki.put(r(10));
        assert!(ki.tombstone(r(12)));
        ki.put(Revision::new(14, 0));
        ki.put(Revision::new(14, 1));
        assert!(ki.tombstone(r(16)));
        ki
    }

    #[test]
    fn puts_and_tombstones_build_generations() {
        let ki = three_generations();
        assert_eq!(
            ki.generations(),
            &[
                gen(3, r(2), &[r(2), r(4), r(6)]),
                gen(3, r(8), &[r(8), r(10), r(12)]),
                gen(3, r(14), &[r(14), Revision::new(14, 1), r(16)]),
                Generation::default(),
            ]
        );
        assert_eq!(ki.modified(), r(16));
    }

    #[test]
    fn latest_is_the_state_after_the_last_change() {
        let mut ki = KeyIndex::new();
        assert_eq!(ki.latest(), None, "never written");
        ki.put(r(2));
        assert_eq!(ki.latest().map(|s| (s.modified, s.created, s.version)), Some((r(2), r(2), 1)));
        ki.put(Revision::new(2, 1));
        assert_eq!(
            ki.latest().map(|s| (s.modified, s.created, s.version)),
            Some((Revision::new(2, 1), r(2), 2)),
            "a second change in one transaction"
        );
        assert!(ki.tombstone(r(3)));
        assert_eq!(ki.latest(), None, "deleted");
        ki.put(r(5));
        assert_eq!(ki.latest().map(|s| (s.modified, s.created, s.version)), Some((r(5), r(5), 1)));
        assert_eq!(three_generations().latest(), None);
        let restored = KeyIndex::restored(r(3), r(9), 4);
        assert_eq!(restored.latest(), restored.get(9));
    }

    #[test]
    fn tombstone_of_a_deleted_or_new_key_is_refused() {
        let mut ki = KeyIndex::new();
        assert!(!ki.tombstone(r(1)));
        assert!(ki.is_empty());
        ki.put(r(2));
        assert!(ki.tombstone(r(3)));
        assert!(!ki.tombstone(r(4)));
        assert_eq!(ki.generations().len(), 2);
    }

    #[test]
    fn get_at_every_revision() {
        let ki = three_generations();
        let live = |m: Revision, c: i64, v: i64| {
            Some(KeyAt {
                modified: m,
                created: r(c),
                version: v,
            })
        };
        let cases: Vec<(i64, Option<KeyAt>)> = vec![
            (0, None),
            (1, None),
            (2, live(r(2), 2, 1)),
            (3, live(r(2), 2, 1)),
            (4, live(r(4), 2, 2)),
            (5, live(r(4), 2, 2)),
            (6, None),
            (7, None),
            (8, live(r(8), 8, 1)),
            (9, live(r(8), 8, 1)),
            (10, live(r(10), 8, 2)),
            (11, live(r(10), 8, 2)),
            (12, None),
            (13, None),
            (14, live(Revision::new(14, 1), 14, 2)),
            (15, live(Revision::new(14, 1), 14, 2)),
            (16, None),
            (17, None),
        ];
        for (at, want) in cases {
            assert_eq!(ki.get(at), want, "get at {at}");
        }
    }

    #[test]
    fn since_lists_last_change_per_main_revision() {
        let ki = three_generations();
        let all = vec![
            r(2),
            r(4),
            r(6),
            r(8),
            r(10),
            r(12),
            Revision::new(14, 1),
            r(16),
        ];
        assert_eq!(ki.since(0), all);
        assert_eq!(ki.since(1), all);
        assert_eq!(ki.since(7), all[3..].to_vec());
        assert_eq!(ki.since(14), vec![Revision::new(14, 1), r(16)]);
        assert_eq!(ki.since(15), vec![r(16)]);
        assert_eq!(ki.since(17), Vec::<Revision>::new());
    }

    #[test]
    fn compact_at_every_revision() {
        let g0 = |revs: &[Revision]| gen(3, r(2), revs);
        let g1 = |revs: &[Revision]| gen(3, r(8), revs);
        let g2 = |revs: &[Revision]| gen(3, r(14), revs);
        let e = Generation::default;
        let r141 = Revision::new(14, 1);
        // (compact at, generations after, kept revisions)
        let cases: Vec<(i64, Vec<Generation>, Vec<Revision>)> = vec![
            (
                1,
                vec![
                    g0(&[r(2), r(4), r(6)]),
                    g1(&[r(8), r(10), r(12)]),
                    g2(&[r(14), r141, r(16)]),
                    e(),
                ],
                vec![],
            ),
            (
                2,
                vec![
                    g0(&[r(2), r(4), r(6)]),
                    g1(&[r(8), r(10), r(12)]),
                    g2(&[r(14), r141, r(16)]),
                    e(),
                ],
                vec![r(2)],
            ),
            (
                3,
                vec![
                    g0(&[r(2), r(4), r(6)]),
                    g1(&[r(8), r(10), r(12)]),
                    g2(&[r(14), r141, r(16)]),
                    e(),
                ],
                vec![r(2)],
            ),
            (
                4,
                vec![
                    g0(&[r(4), r(6)]),
                    g1(&[r(8), r(10), r(12)]),
                    g2(&[r(14), r141, r(16)]),
                    e(),
                ],
                vec![r(4)],
            ),
            (
                5,
                vec![
                    g0(&[r(4), r(6)]),
                    g1(&[r(8), r(10), r(12)]),
                    g2(&[r(14), r141, r(16)]),
                    e(),
                ],
                vec![r(4)],
            ),
            (
                6,
                vec![g1(&[r(8), r(10), r(12)]), g2(&[r(14), r141, r(16)]), e()],
                vec![],
            ),
            (
                7,
                vec![g1(&[r(8), r(10), r(12)]), g2(&[r(14), r141, r(16)]), e()],
                vec![],
            ),
            (
                8,
                vec![g1(&[r(8), r(10), r(12)]), g2(&[r(14), r141, r(16)]), e()],
                vec![r(8)],
            ),
            (
                9,
                vec![g1(&[r(8), r(10), r(12)]), g2(&[r(14), r141, r(16)]), e()],
                vec![r(8)],
            ),
            (
                10,
                vec![g1(&[r(10), r(12)]), g2(&[r(14), r141, r(16)]), e()],
                vec![r(10)],
            ),
            (
                11,
                vec![g1(&[r(10), r(12)]), g2(&[r(14), r141, r(16)]), e()],
                vec![r(10)],
            ),
            (12, vec![g2(&[r(14), r141, r(16)]), e()], vec![]),
            (13, vec![g2(&[r(14), r141, r(16)]), e()], vec![]),
            (14, vec![g2(&[r141, r(16)]), e()], vec![r141]),
            (15, vec![g2(&[r141, r(16)]), e()], vec![r141]),
            (16, vec![e()], vec![]),
            (17, vec![e()], vec![]),
        ];
        for (at, want_gens, want_keep) in cases {
            let mut ki = three_generations();
            let mut keep = HashSet::new();
            let mut peek = HashSet::new();
            ki.keep(at, &mut peek);
            ki.compact(at, &mut keep);
            assert_eq!(
                ki.generations(),
                &want_gens[..],
                "generations after compact({at})"
            );
            let want_keep: HashSet<Revision> = want_keep.into_iter().collect();
            assert_eq!(peek, want_keep, "keep({at}) predicts compact({at})");
            // compact also keeps the row of a tombstone at exactly `at`, for watchers
            let mut want_rows = want_keep.clone();
            if [6, 12, 16].contains(&at) {
                want_rows.insert(r(at));
            }
            assert_eq!(keep, want_rows, "kept by compact({at})");
            assert_eq!(ki.is_empty(), at >= 16);
        }
    }

    #[test]
    fn compaction_keeps_reads_at_and_after_the_compact_revision() {
        for at in 1..=17 {
            let full = three_generations();
            let mut ki = three_generations();
            ki.compact(at, &mut HashSet::new());
            for read in at..=18 {
                assert_eq!(
                    ki.get(read),
                    full.get(read),
                    "read at {read} after compact({at})"
                );
            }
        }
    }

    #[test]
    fn repeated_compaction_is_stable() {
        let mut ki = three_generations();
        ki.compact(4, &mut HashSet::new());
        let mut keep = HashSet::new();
        ki.compact(4, &mut keep);
        assert_eq!(keep, HashSet::from([r(4)]));
        ki.compact(10, &mut HashSet::new());
        assert_eq!(ki.get(10).unwrap().version, 2);
        assert_eq!(ki.get(10).unwrap().created, r(8));
    }

    #[test]
    fn restored_key_keeps_version_and_creation() {
        let mut ki = KeyIndex::restored(r(3), r(9), 4);
        assert_eq!(
            ki.get(9),
            Some(KeyAt {
                modified: r(9),
                created: r(3),
                version: 4
            })
        );
        assert_eq!(ki.get(8), None);
        ki.put(r(11));
        assert_eq!(ki.get(11).unwrap().version, 5);
        assert!(ki.tombstone(r(12)));
        assert_eq!(ki.get(12), None);
    }

    #[test]
    fn undo_reverts_puts_and_tombstones_in_reverse_order() {
        let mut ki = KeyIndex::new();
        ki.put(r(2));
        let before = ki.clone();
        ki.put(r(3));
        assert!(ki.tombstone(r(4)));
        ki.put(r(5));
        ki.undo(r(5), false);
        ki.undo(r(4), true);
        ki.undo(r(3), false);
        assert_eq!(ki, before);
        ki.undo(r(2), false);
        assert!(ki.is_empty());
        assert_eq!(ki, KeyIndex::new());
    }

    fn form(ki: &KeyIndex) -> &'static str {
        match ki.repr {
            Repr::Empty { .. } => "empty",
            Repr::Single(_) => "single",
            Repr::Full(_) => "full",
        }
    }

    #[test]
    fn common_states_are_held_inline() {
        let mut ki = KeyIndex::new();
        assert_eq!(form(&ki), "empty");
        ki.put(r(2));
        assert_eq!(form(&ki), "single", "a key written once");
        assert_eq!(ki.generations(), vec![gen(1, r(2), &[r(2)])]);
        ki.put(r(4));
        assert_eq!(form(&ki), "full");
        ki.compact(4, &mut HashSet::new());
        assert_eq!(form(&ki), "single", "compacted to its latest put");
        assert_eq!(ki.generations(), vec![gen(2, r(2), &[r(4)])]);
        assert_eq!(ki.get(4).unwrap().version, 2);
        assert!(ki.tombstone(r(6)));
        assert_eq!(form(&ki), "full");
        ki.compact(5, &mut HashSet::new());
        assert_eq!(
            form(&ki),
            "full",
            "the tombstone is newer than the compaction"
        );
        ki.compact(6, &mut HashSet::new());
        assert_eq!(form(&ki), "empty");
        assert!(ki.is_empty());
        assert_eq!(form(&KeyIndex::restored(r(3), r(9), 4)), "single");
        let mut ki = KeyIndex::new();
        ki.put(r(2));
        ki.put(r(3));
        ki.undo(r(3), false);
        assert_eq!(form(&ki), "single", "undo back to one put");
        ki.undo(r(2), false);
        assert_eq!(form(&ki), "empty");
    }

    #[test]
    fn a_key_index_takes_40_bytes() {
        assert_eq!(std::mem::size_of::<KeyIndex>(), 40);
    }

    #[test]
    fn sub_revisions_beyond_32_bits_stay_in_the_general_form() {
        let big = Revision::new(5, i64::from(u32::MAX) + 1);
        let mut ki = KeyIndex::new();
        ki.put(big);
        assert_eq!(form(&ki), "full");
        assert_eq!(ki.generations(), vec![gen(1, big, &[big])]);
        assert_eq!(ki.get(5).unwrap().modified, big);
        assert_eq!(ki.since(5), vec![big]);
        let restored = KeyIndex::restored(r(2), big, 3);
        assert_eq!(form(&restored), "full");
        assert_eq!(restored.get(5).unwrap().created, r(2));
        // its creation revision keeps even the compacted key in the general form
        ki.put(r(6));
        ki.compact(6, &mut HashSet::new());
        assert_eq!(form(&ki), "full");
        assert_eq!(ki.get(6).unwrap().created, big);
        assert_eq!(ki.get(6).unwrap().version, 2);
        // the largest sub revision that fits is held inline
        let max = Revision::new(8, i64::from(u32::MAX));
        let mut ki = KeyIndex::new();
        ki.put(r(7));
        ki.put(max);
        ki.compact(8, &mut HashSet::new());
        assert_eq!(form(&ki), "single");
        let at = ki.get(8).unwrap();
        assert_eq!((at.modified, at.created, at.version), (max, r(7), 2));
    }

    /// A small deterministic generator for the model test (no dependency needed).
    struct Lcg(u64);

    impl Lcg {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) % n
        }
    }

    /// Drives a `KeyIndex` and the general form (never normalized) with the same random puts,
    /// tombstones, undos, compactions and restores, and checks after every step that every
    /// observable answer is the same: the compact forms behave exactly like the general one.
    #[test]
    fn compact_forms_behave_like_the_general_form() {
        let mut rng = Lcg(7);
        for _ in 0..300 {
            let (mut ki, mut model) = if rng.below(4) == 0 {
                let c = r(1 + rng.below(3) as i64);
                let v = 1 + rng.below(5) as i64;
                let m = r(4);
                (
                    KeyIndex::restored(c, m, v),
                    Full {
                        modified: m,
                        generations: vec![gen(v, c, &[m])],
                    },
                )
            } else {
                (KeyIndex::new(), Repr::Empty { modified: r(0) }.into_full())
            };
            let mut main = 4;
            // the last change, while it may still be undone
            let mut undoable: Option<(Revision, bool)> = None;
            for _ in 0..40 {
                match rng.below(10) {
                    0..=3 => {
                        // a put, sometimes a second change in the same main revision
                        let rev = if rng.below(4) == 0 && model.modified.main == main {
                            Revision::new(main, model.modified.sub + 1)
                        } else {
                            main += 1 + rng.below(2) as i64;
                            r(main)
                        };
                        ki.put(rev);
                        model.put(rev);
                        undoable = Some((rev, false));
                    }
                    4..=5 => {
                        main += 1;
                        let done = ki.tombstone(r(main));
                        assert_eq!(done, model.tombstone(r(main)));
                        undoable = done.then_some((r(main), true));
                    }
                    6 => {
                        if let Some((rev, tomb)) = undoable.take() {
                            ki.undo(rev, tomb);
                            model.undo(rev, tomb);
                        }
                    }
                    _ => {
                        let at = rng.below(main as u64 + 2) as i64;
                        let (mut a, mut b) = (HashSet::new(), HashSet::new());
                        ki.compact(at, &mut a);
                        model.compact(at, &mut b);
                        assert_eq!(a, b, "kept by compact({at})");
                        undoable = None;
                    }
                }
                assert_eq!(ki.generations(), model.generations);
                assert_eq!(ki.modified(), model.modified);
                assert_eq!(ki.is_empty(), model.is_empty());
                assert_eq!(ki.latest(), model.get(i64::MAX), "latest");
                assert_eq!(ki.latest(), ki.get(ki.modified().main), "latest is get at modified");
                for at in 0..=main + 1 {
                    assert_eq!(ki.get(at), model.get(at), "get({at})");
                    assert_eq!(ki.since(at), model.since(at), "since({at})");
                    let (mut a, mut b) = (HashSet::new(), HashSet::new());
                    ki.keep(at, &mut a);
                    model.keep(at, &mut b);
                    assert_eq!(a, b, "keep({at})");
                }
                let canonical = model.clone().into_repr();
                assert_eq!(form(&ki), form(&KeyIndex { repr: canonical }));
            }
        }
    }
}
