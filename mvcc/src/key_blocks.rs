//! An ordered map from byte keys to values, packed in blocks: the key index's storage.
//!
//! A `BTreeMap<Box<[u8]>, V>` costs, per key, its entry (16 bytes of key pointer plus the value)
//! divided by the fill of its nodes (~55% under sequential inserts, which is how a large
//! keyspace is usually written), plus one heap allocation for the key. Here keys live in
//! blocks of up to [`MAX_KEYS`] sorted entries: the key bytes of a block in one buffer, their end
//! offsets (4 bytes each) and the values in two vectors, grown in small steps and trimmed when a
//! block splits, so a key costs its bytes + 4 + the value and little slack. The blocks sit in a
//! `BTreeMap` by lower bound.
//!
//! Invariants:
//! - a block's keys are strictly ascending; every key of a block is `>=` its lower bound and
//!   `<` the next block's lower bound, so blocks in map order hold the keys in order;
//! - the first block's lower bound is the empty key (it exists once anything was inserted and is
//!   never removed, though it may be empty); every other block holds at least one key;
//! - `len` is the number of keys in all blocks.

use std::collections::btree_map;
use std::collections::BTreeMap;
use std::ops::Bound;

/// Keys per block at most: a lookup binary-searches one block, an insert moves at most this
/// many values.
pub const MAX_KEYS: usize = 128;
/// Key bytes per block beyond which a block of two keys or more splits (large keys).
pub const MAX_BYTES: usize = 32 * 1024;

/// The map. See the module docs.
pub struct KeyMap<V> {
    blocks: BTreeMap<Box<[u8]>, Block<V>>,
    len: usize,
}

/// Sorted keys and their values.
struct Block<V> {
    /// The keys' bytes, one after the other.
    bytes: Vec<u8>,
    /// `ends[i]`: the end offset of key `i` in `bytes`.
    ends: Vec<u32>,
    values: Vec<V>,
}

impl<V> Default for KeyMap<V> {
    fn default() -> Self {
        KeyMap { blocks: BTreeMap::new(), len: 0 }
    }
}

impl<V> KeyMap<V> {
    /// Number of keys.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no key is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The value of `key`.
    pub fn get(&self, key: &[u8]) -> Option<&V> {
        self.get_key_value(key).map(|(_, v)| v)
    }

    /// `key` as stored, with its value.
    pub fn get_key_value(&self, key: &[u8]) -> Option<(&[u8], &V)> {
        let block = self.block_of(key)?;
        let i = block.search(key).ok()?;
        Some((block.key(i), &block.values[i]))
    }

    /// The value of `key`, to change in place.
    pub fn get_mut(&mut self, key: &[u8]) -> Option<&mut V> {
        let (_, block) = self.blocks.range_mut::<[u8], _>((Bound::Unbounded, Bound::Included(key))).next_back()?;
        let i = block.search(key).ok()?;
        Some(&mut block.values[i])
    }

    /// Sets `key` to `value`; returns the value it replaces.
    pub fn insert(&mut self, key: &[u8], value: V) -> Option<V> {
        if self.blocks.is_empty() {
            self.blocks.insert(Box::default(), Block::new());
        }
        let (_, block) = self
            .blocks
            .range_mut::<[u8], _>((Bound::Unbounded, Bound::Included(key)))
            .next_back()
            .expect("the first block's lower bound is the empty key");
        let at = match block.search(key) {
            Ok(i) => return Some(std::mem::replace(&mut block.values[i], value)),
            Err(i) => i,
        };
        block.insert_at(at, key, value);
        self.len += 1;
        if block.values.len() > MAX_KEYS || (block.bytes.len() > MAX_BYTES && block.values.len() > 1) {
            // Keys written in order (ascending or descending) leave full blocks behind them.
            let last = block.values.len() - 1;
            let split = match at {
                0 => 1,
                i if i == last => last,
                _ => block.values.len() / 2,
            };
            let upper = block.split_off(split);
            self.blocks.insert(Box::from(upper.key(0)), upper);
        }
        None
    }

    /// Removes `key`; returns its value.
    pub fn remove(&mut self, key: &[u8]) -> Option<V> {
        let (bound, block) = self.blocks.range_mut::<[u8], _>((Bound::Unbounded, Bound::Included(key))).next_back()?;
        let i = block.search(key).ok()?;
        let value = block.remove_at(i);
        self.len -= 1;
        if block.values.is_empty() && !bound.is_empty() {
            let bound = bound.clone();
            self.blocks.remove(&bound);
        }
        Some(value)
    }

    /// The entries with keys `>= key`, in key order.
    pub fn range_from<'a>(&'a self, key: &[u8]) -> Iter<'a, V> {
        let Some((bound, _)) = self.blocks.range::<[u8], _>((Bound::Unbounded, Bound::Included(key))).next_back() else {
            return Iter { blocks: None, block: None, at: 0 };
        };
        let mut blocks = self.blocks.range::<[u8], _>((Bound::Included(&bound[..]), Bound::Unbounded));
        let first = blocks.next().map(|(_, b)| b);
        let at = first.map_or(0, |b| b.search(key).unwrap_or_else(|i| i));
        Iter { blocks: Some(blocks), block: first, at }
    }

    /// Every value, in key order.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.blocks.values().flat_map(|b| b.values.iter())
    }

    /// Keeps the entries for which `keep` is true, then merges neighbouring blocks that fit in
    /// one (a compaction leaves blocks thinned out).
    pub fn retain(&mut self, mut keep: impl FnMut(&mut V) -> bool) {
        let mut removed = false;
        for block in self.blocks.values_mut() {
            let before = block.values.len();
            block.retain(&mut keep);
            removed |= block.values.len() != before;
            self.len -= before - block.values.len();
        }
        if removed {
            self.merge_thin_blocks();
        }
    }

    /// The block whose range holds `key`.
    fn block_of(&self, key: &[u8]) -> Option<&Block<V>> {
        self.blocks.range::<[u8], _>((Bound::Unbounded, Bound::Included(key))).next_back().map(|(_, b)| b)
    }

    fn merge_thin_blocks(&mut self) {
        let mut merged: BTreeMap<Box<[u8]>, Block<V>> = BTreeMap::new();
        let mut open: Option<(Box<[u8]>, Block<V>)> = None;
        for (bound, block) in std::mem::take(&mut self.blocks) {
            match &mut open {
                Some((_, prev))
                    if prev.values.len() + block.values.len() <= MAX_KEYS
                        && prev.bytes.len() + block.bytes.len() <= MAX_BYTES =>
                {
                    prev.append(block);
                }
                _ => {
                    if let Some((b, mut prev)) = open.replace((bound, block)) {
                        prev.trim();
                        merged.insert(b, prev);
                    }
                }
            }
        }
        if let Some((b, mut prev)) = open {
            prev.trim();
            merged.insert(b, prev);
        }
        self.blocks = merged;
    }
}

/// Entries in key order from a starting key (see [`KeyMap::range_from`]).
pub struct Iter<'a, V> {
    blocks: Option<btree_map::Range<'a, Box<[u8]>, Block<V>>>,
    block: Option<&'a Block<V>>,
    /// The next entry of `block`.
    at: usize,
}

impl<'a, V> Iterator for Iter<'a, V> {
    type Item = (&'a [u8], &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let block = self.block?;
            if self.at < block.values.len() {
                let i = self.at;
                self.at += 1;
                return Some((block.key(i), &block.values[i]));
            }
            self.block = self.blocks.as_mut()?.next().map(|(_, b)| b);
            self.at = 0;
        }
    }
}

/// Grows `v` to hold one more element by about a quarter of its size (not double: a block's
/// spare capacity is memory every block keeps), never past `max` elements when it can be
/// avoided.
fn reserve_one<T>(v: &mut Vec<T>, max: usize) {
    if v.len() == v.capacity() {
        let step = (v.capacity() / 4).max(4);
        let target = (v.capacity() + step).min(max.max(v.len() + 1));
        v.reserve_exact(target - v.len());
    }
}

impl<V> Block<V> {
    fn new() -> Block<V> {
        Block { bytes: Vec::new(), ends: Vec::new(), values: Vec::new() }
    }

    fn start(&self, i: usize) -> usize {
        if i == 0 {
            0
        } else {
            self.ends[i - 1] as usize
        }
    }

    fn key(&self, i: usize) -> &[u8] {
        &self.bytes[self.start(i)..self.ends[i] as usize]
    }

    /// Where `key` is (Ok) or would go (Err).
    fn search(&self, key: &[u8]) -> Result<usize, usize> {
        let (mut lo, mut hi) = (0, self.values.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.key(mid).cmp(key) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Ok(mid),
            }
        }
        Err(lo)
    }

    fn insert_at(&mut self, i: usize, key: &[u8], value: V) {
        let start = self.start(i);
        reserve_one(&mut self.values, MAX_KEYS + 1);
        reserve_one(&mut self.ends, MAX_KEYS + 1);
        self.bytes.splice(start..start, key.iter().copied());
        let n = key.len() as u32;
        for end in &mut self.ends[i..] {
            *end += n;
        }
        self.ends.insert(i, start as u32 + n);
        self.values.insert(i, value);
    }

    fn remove_at(&mut self, i: usize) -> V {
        let (start, end) = (self.start(i), self.ends[i] as usize);
        self.bytes.drain(start..end);
        self.ends.remove(i);
        let n = (end - start) as u32;
        for e in &mut self.ends[i..] {
            *e -= n;
        }
        self.values.remove(i)
    }

    /// Moves the keys from `at` on into a new block; both are trimmed to their size.
    fn split_off(&mut self, at: usize) -> Block<V> {
        let offset = self.start(at);
        let bytes = self.bytes.split_off(offset);
        let ends = self.ends.split_off(at).into_iter().map(|e| e - offset as u32).collect();
        let values = self.values.split_off(at);
        self.trim();
        let mut upper = Block { bytes, ends, values };
        upper.trim();
        upper
    }

    /// Appends `other`, whose keys are all greater.
    fn append(&mut self, mut other: Block<V>) {
        let offset = self.bytes.len() as u32;
        self.bytes.append(&mut other.bytes);
        self.ends.extend(other.ends.iter().map(|e| e + offset));
        self.values.append(&mut other.values);
    }

    fn retain(&mut self, keep: &mut impl FnMut(&mut V) -> bool) {
        let mut write = 0; // entries kept so far, moved to the front
        let mut byte_write = 0;
        let mut start = 0;
        let n = self.values.len();
        let mut kept = vec![false; n];
        for (i, flag) in kept.iter_mut().enumerate() {
            let end = self.ends[i] as usize;
            if keep(&mut self.values[i]) {
                *flag = true;
                self.bytes.copy_within(start..end, byte_write);
                byte_write += end - start;
                self.ends[write] = byte_write as u32;
                write += 1;
            }
            start = end;
        }
        if write == n {
            return;
        }
        self.bytes.truncate(byte_write);
        self.ends.truncate(write);
        let mut flags = kept.into_iter();
        self.values.retain(|_| flags.next().unwrap_or(false));
    }

    /// Drops spare capacity.
    fn trim(&mut self) {
        self.bytes.shrink_to_fit();
        self.ends.shrink_to_fit();
        self.values.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks every invariant of the module docs against a plain BTreeMap.
    fn check(map: &KeyMap<u32>, model: &BTreeMap<Vec<u8>, u32>) {
        assert_eq!(map.len(), model.len());
        let got: Vec<(Vec<u8>, u32)> = map.range_from(b"").map(|(k, v)| (k.to_vec(), *v)).collect();
        let want: Vec<(Vec<u8>, u32)> = model.iter().map(|(k, v)| (k.clone(), *v)).collect();
        assert_eq!(got, want);
        let mut first = true;
        for (bound, block) in &map.blocks {
            assert_eq!(first, bound.is_empty(), "only the first block is bounded by the empty key");
            assert!(first || !block.values.is_empty(), "only the first block may be empty");
            assert!(block.values.len() <= MAX_KEYS);
            if let Some(k) = (0..block.values.len()).map(|i| block.key(i)).next() {
                assert!(k >= &bound[..]);
            }
            first = false;
        }
        for (k, v) in model {
            assert_eq!(map.get(k), Some(v));
        }
    }

    /// A deterministic pseudo-random sequence (no dependency, same on every run).
    fn lcg(seed: &mut u64) -> u64 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        *seed >> 33
    }

    #[test]
    fn ascending_descending_and_random_inserts_match_a_btreemap() {
        for order in ["asc", "desc", "random"] {
            let mut map = KeyMap::default();
            let mut model = BTreeMap::new();
            let mut seed = 7;
            for i in 0..2000u32 {
                let n = match order {
                    "asc" => i,
                    "desc" => 2000 - i,
                    _ => lcg(&mut seed) as u32 % 5000,
                };
                let key = format!("k{n:06}").into_bytes();
                assert_eq!(map.insert(&key, i), model.insert(key, i), "{order} {i}");
            }
            check(&map, &model);
            if order != "random" {
                assert!(map.blocks.len() <= 2000 / MAX_KEYS + 2, "{order}: blocks left full");
            }
        }
    }

    #[test]
    fn removes_and_retain_keep_order_and_merge_blocks() {
        let mut map = KeyMap::default();
        let mut model = BTreeMap::new();
        let mut seed = 11;
        for i in 0..3000u32 {
            let key = (lcg(&mut seed) % 4000).to_be_bytes().to_vec();
            map.insert(&key, i);
            model.insert(key, i);
        }
        for i in 0..4000u64 {
            if i % 3 == 0 {
                let key = i.to_be_bytes();
                assert_eq!(map.remove(&key), model.remove(&key[..]));
            }
        }
        check(&map, &model);
        let blocks_before = map.blocks.len();
        map.retain(|v| *v % 5 == 0);
        model.retain(|_, v| *v % 5 == 0);
        check(&map, &model);
        assert!(map.blocks.len() < blocks_before / 3, "thinned blocks are merged");
        map.retain(|_| false);
        model.clear();
        check(&map, &model);
        assert!(map.is_empty());
        map.insert(b"again", 1);
        model.insert(b"again".to_vec(), 1);
        check(&map, &model);
    }

    #[test]
    fn range_from_starts_at_the_first_key_not_below() {
        let mut map = KeyMap::default();
        for i in 0..1000u32 {
            map.insert(format!("{:04}", i * 2).as_bytes(), i);
        }
        let first = |k: &str| map.range_from(k.as_bytes()).next().map(|(k, v)| (String::from_utf8(k.to_vec()).unwrap(), *v));
        assert_eq!(first(""), Some(("0000".into(), 0)));
        assert_eq!(first("0001"), Some(("0002".into(), 1)));
        assert_eq!(first("1001"), Some(("1002".into(), 501)));
        assert_eq!(first("1998"), Some(("1998".into(), 999)));
        assert_eq!(first("1999"), None);
        assert_eq!(map.range_from(b"1000").count(), 500);
        assert_eq!(KeyMap::<u32>::default().range_from(b"a").next(), None);
    }

    #[test]
    fn large_keys_split_blocks_by_bytes() {
        let mut map = KeyMap::default();
        let mut model = BTreeMap::new();
        for i in 0..40u32 {
            let mut key = vec![b'x'; 10_000];
            key.extend_from_slice(&i.to_be_bytes());
            map.insert(&key, i);
            model.insert(key, i);
        }
        check(&map, &model);
        assert!(map.blocks.values().all(|b| b.bytes.len() <= MAX_BYTES + 10_004));
    }
}
