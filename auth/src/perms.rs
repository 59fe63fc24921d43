//! A user's merged key permissions: the union of every granted role's ranges, one list for
//! read and one for write, as etcd's range permission cache.
//!
//! Invariant: each list is sorted by start and its intervals are disjoint and non-adjacent
//! (touching intervals are merged), so "is [key, end) covered" is one lookup: a request is
//! permitted only when a single merged interval covers all of it.

use etcd_proto::authpb::{permission::Type as PermType, Permission};

/// The end of an interval: a key (exclusive) or "no end" (etcd's range_end "\0": every key
/// from the start on).
#[derive(Clone, Debug, PartialEq, Eq)]
enum End {
    Key(Vec<u8>),
    Inf,
}

impl End {
    fn cmp_key(&self, k: &[u8]) -> std::cmp::Ordering {
        match self {
            End::Key(e) => e.as_slice().cmp(k),
            End::Inf => std::cmp::Ordering::Greater,
        }
    }

    fn ge(&self, other: &End) -> bool {
        match (self, other) {
            (End::Inf, _) => true,
            (End::Key(_), End::Inf) => false,
            (End::Key(a), End::Key(b)) => a >= b,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Interval {
    start: Vec<u8>,
    end: End,
}

impl Interval {
    /// A permission's or request's range: an empty `range_end` is the single key, "\0" is
    /// every key from `key` on, anything else is [key, range_end).
    fn of(key: &[u8], range_end: &[u8]) -> Interval {
        let end = if range_end.is_empty() {
            let mut e = key.to_vec();
            e.push(0);
            End::Key(e)
        } else if range_end == [0] {
            End::Inf
        } else {
            End::Key(range_end.to_vec())
        };
        Interval { start: key.to_vec(), end }
    }

    fn is_empty(&self) -> bool {
        !self.end.cmp_key(&self.start).is_gt()
    }
}

/// Sorted, merged intervals.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct IntervalSet(Vec<Interval>);

impl IntervalSet {
    fn from_unsorted(mut v: Vec<Interval>) -> IntervalSet {
        v.retain(|i| !i.is_empty());
        v.sort_by(|a, b| a.start.cmp(&b.start));
        let mut out: Vec<Interval> = Vec::with_capacity(v.len());
        for i in v {
            match out.last_mut() {
                // overlapping or touching: extend the previous one
                Some(last) if !last.end.cmp_key(&i.start).is_lt() => {
                    if !last.end.ge(&i.end) {
                        last.end = i.end;
                    }
                }
                _ => out.push(i),
            }
        }
        IntervalSet(out)
    }

    /// True when one merged interval covers all of `q`. A request range that is empty or
    /// inverted (end <= start) is covered only by an interval it overlaps as etcd's interval
    /// tree sees it: one starting before the request's end.
    fn covers(&self, q: &Interval) -> bool {
        // the last interval starting at or before q.start
        let idx = self.0.partition_point(|i| i.start.as_slice() <= q.start.as_slice());
        if idx == 0 {
            return false;
        }
        let i = &self.0[idx - 1];
        let overlaps = i.end.cmp_key(&q.start).is_gt() && q.end.cmp_key(&i.start).is_gt();
        overlaps && i.end.ge(&q.end)
    }

    /// True when some interval contains `key`.
    fn contains_key(&self, key: &[u8]) -> bool {
        let idx = self.0.partition_point(|i| i.start.as_slice() <= key);
        idx > 0 && self.0[idx - 1].end.cmp_key(key).is_gt()
    }
}

/// What a request asks to do with a range of keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// One user's merged permissions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangePerms {
    read: IntervalSet,
    write: IntervalSet,
}

impl RangePerms {
    /// Merges the key permissions of all of a user's roles.
    pub fn merge<'a>(perms: impl IntoIterator<Item = &'a Permission>) -> RangePerms {
        let (mut read, mut write) = (Vec::new(), Vec::new());
        for p in perms {
            let ivl = Interval::of(&p.key, &p.range_end);
            match PermType::try_from(p.perm_type) {
                Ok(PermType::Read) => read.push(ivl),
                Ok(PermType::Write) => write.push(ivl),
                Ok(PermType::Readwrite) => {
                    read.push(ivl.clone());
                    write.push(ivl);
                }
                Err(_) => {} // an unknown type grants nothing
            }
        }
        RangePerms { read: IntervalSet::from_unsorted(read), write: IntervalSet::from_unsorted(write) }
    }

    /// Whether the permissions allow `access` on `key` (empty `range_end`) or on the range
    /// [key, range_end) ("\0": every key from `key` on).
    pub fn allows(&self, access: Access, key: &[u8], range_end: &[u8]) -> bool {
        let set = match access {
            Access::Read => &self.read,
            Access::Write => &self.write,
        };
        if range_end.is_empty() {
            return set.contains_key(key);
        }
        set.covers(&Interval::of(key, range_end))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perm(t: PermType, key: &str, end: &[u8]) -> Permission {
        Permission { perm_type: t as i32, key: key.as_bytes().to_vec(), range_end: end.to_vec() }
    }

    #[test]
    fn single_key_permission_covers_only_that_key() {
        let p = RangePerms::merge(&[perm(PermType::Read, "a", b"")]);
        assert!(p.allows(Access::Read, b"a", b""));
        assert!(!p.allows(Access::Read, b"a\0", b""));
        assert!(!p.allows(Access::Read, b"b", b""));
        assert!(!p.allows(Access::Write, b"a", b""));
        // the range [a, a\0) is the key itself
        assert!(p.allows(Access::Read, b"a", b"a\0"));
        assert!(!p.allows(Access::Read, b"a", b"b"));
    }

    #[test]
    fn prefix_permission_covers_sub_ranges_but_not_wider_ones() {
        let p = RangePerms::merge(&[perm(PermType::Readwrite, "/data/", b"/data0")]);
        assert!(p.allows(Access::Read, b"/data/x", b""));
        assert!(p.allows(Access::Write, b"/data/x", b""));
        assert!(p.allows(Access::Read, b"/data/", b"/data0"));
        assert!(p.allows(Access::Read, b"/data/a", b"/data/b"));
        assert!(!p.allows(Access::Read, b"/data/", b"/data1"));
        assert!(!p.allows(Access::Read, b"/dat", b"/data0"));
        assert!(!p.allows(Access::Read, b"/data/", &[0]));
    }

    #[test]
    fn adjacent_and_overlapping_grants_merge() {
        let p = RangePerms::merge(&[
            perm(PermType::Read, "c", b"e"),
            perm(PermType::Read, "a", b"c"),
            perm(PermType::Read, "d", b"g"),
        ]);
        assert!(p.allows(Access::Read, b"a", b"g"));
        assert!(!p.allows(Access::Read, b"a", b"h"));
        // a gap is never bridged
        let gap = RangePerms::merge(&[perm(PermType::Read, "a", b"c"), perm(PermType::Read, "d", b"g")]);
        assert!(!gap.allows(Access::Read, b"a", b"e"));
        assert!(gap.allows(Access::Read, b"d", b"e"));
        assert!(!gap.allows(Access::Read, b"c", b""));
    }

    #[test]
    fn from_key_permission_is_unbounded() {
        let p = RangePerms::merge(&[perm(PermType::Write, "m", &[0])]);
        assert!(p.allows(Access::Write, b"m", &[0]));
        assert!(p.allows(Access::Write, b"zzzz", b""));
        assert!(p.allows(Access::Write, b"n", &[0]));
        assert!(!p.allows(Access::Write, b"l", &[0]));
        assert!(!p.allows(Access::Read, b"m", b""));
        // a bounded grant never covers an unbounded request
        let q = RangePerms::merge(&[perm(PermType::Read, "m", b"zzz")]);
        assert!(!q.allows(Access::Read, b"m", &[0]));
    }

    #[test]
    fn read_and_write_are_separate_and_readwrite_grants_both() {
        let p = RangePerms::merge(&[
            perm(PermType::Read, "a", b"c"),
            perm(PermType::Write, "b", b"d"),
            perm(PermType::Readwrite, "x", b""),
        ]);
        assert!(p.allows(Access::Read, b"a", b"c"));
        assert!(!p.allows(Access::Read, b"a", b"d"));
        assert!(p.allows(Access::Write, b"b", b"d"));
        assert!(!p.allows(Access::Write, b"a", b""));
        assert!(p.allows(Access::Read, b"x", b""));
        assert!(p.allows(Access::Write, b"x", b""));
    }

    #[test]
    fn no_permissions_allow_nothing() {
        let p = RangePerms::merge(&[]);
        assert!(!p.allows(Access::Read, b"a", b""));
        assert!(!p.allows(Access::Write, b"a", &[0]));
        // an inverted grant is empty
        let inv = RangePerms::merge(&[perm(PermType::Read, "z", b"a")]);
        assert!(!inv.allows(Access::Read, b"z", b""));
    }
}
