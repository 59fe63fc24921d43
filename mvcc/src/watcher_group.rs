//! A set of watchers found by key: exact-key watchers in a hash map, range watchers in a list
//! (etcd's `watcherGroup`, whose interval tree serves the same purpose).
//!
//! Invariant: a watcher is in the group at most once, under the key or range it watches.

use std::collections::{BTreeMap, BTreeSet, HashMap};

/// What a watcher watches: one key, `[key, end)`, or every key `>= key` (`end` empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyRange {
    pub key: Vec<u8>,
    /// `None`: the single key; `Some(empty)`: every key from `key` on.
    pub end: Option<Vec<u8>>,
}

impl KeyRange {
    pub fn contains(&self, k: &[u8]) -> bool {
        match &self.end {
            None => k == self.key.as_slice(),
            Some(end) => k >= self.key.as_slice() && (end.is_empty() || k < end.as_slice()),
        }
    }
}

/// Watchers (by hub key) indexed by what they watch.
#[derive(Default)]
pub(crate) struct WatcherGroup {
    keys: HashMap<Vec<u8>, BTreeSet<u64>>,
    ranges: BTreeMap<u64, KeyRange>,
}

impl WatcherGroup {
    pub fn add(&mut self, w: u64, range: &KeyRange) {
        match range.end {
            None => {
                self.keys.entry(range.key.clone()).or_default().insert(w);
            }
            Some(_) => {
                self.ranges.insert(w, range.clone());
            }
        }
    }

    pub fn remove(&mut self, w: u64, range: &KeyRange) {
        match range.end {
            None => {
                if let Some(set) = self.keys.get_mut(&range.key) {
                    set.remove(&w);
                    if set.is_empty() {
                        self.keys.remove(&range.key);
                    }
                }
            }
            Some(_) => {
                self.ranges.remove(&w);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.ranges.is_empty()
    }

    /// Every watcher whose key or range holds `key`.
    pub fn matching<'a>(&'a self, key: &'a [u8]) -> impl Iterator<Item = u64> + 'a {
        self.keys
            .get(key)
            .into_iter()
            .flat_map(|s| s.iter().copied())
            .chain(
                self.ranges
                    .iter()
                    .filter(move |(_, r)| r.contains(key))
                    .map(|(w, _)| *w),
            )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(key: &str, end: Option<&str>) -> KeyRange {
        KeyRange {
            key: key.as_bytes().to_vec(),
            end: end.map(|e| e.as_bytes().to_vec()),
        }
    }

    #[test]
    fn matching_covers_single_keys_ranges_and_from_key() {
        let mut g = WatcherGroup::default();
        g.add(1, &range("a", None));
        g.add(2, &range("a", Some("c")));
        g.add(3, &range("b", Some("")));
        fn m(g: &WatcherGroup, k: &str) -> Vec<u64> {
            let mut v: Vec<u64> = g.matching(k.as_bytes()).collect();
            v.sort();
            v
        }
        assert_eq!(m(&g, "a"), vec![1, 2]);
        assert_eq!(m(&g, "b"), vec![2, 3]);
        assert_eq!(m(&g, "c"), vec![3]);
        assert_eq!(m(&g, "0"), Vec::<u64>::new());
        g.remove(2, &range("a", Some("c")));
        g.remove(1, &range("a", None));
        assert_eq!(m(&g, "a"), Vec::<u64>::new());
        g.remove(3, &range("b", Some("")));
        assert!(g.is_empty());
    }
}
