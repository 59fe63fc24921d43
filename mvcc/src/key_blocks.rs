//! An ordered map from byte keys to values, packed in blocks: the key index's storage.
//!
//! A `BTreeMap<Box<[u8]>, V>` costs, per key, its entry (16 bytes of key pointer plus the value)
//! divided by the fill of its nodes (~55% under sequential inserts, which is how a large
//! keyspace is usually written), plus one heap allocation for the key. Here keys live in
//! blocks of up to [`MAX_KEYS`] sorted entries: the key bytes of a block in one buffer, their end
//! offsets (4 bytes each) and the values in two vectors, grown in small steps and trimmed when a
//! block splits, so a key costs its bytes + 4 + the value and little slack.
//!
//! Blocks are found by lower bound in two levels of [`Bounds`] (segments of up to
//! [`MAX_BLOCKS`] blocks, then the segments): the bounds of a level in one buffer, and beside
//! them, per bound, 16 of its bytes past the prefix the level's bounds share, as one number.
//! A lookup binary-searches those numbers and reads a bound's bytes only on a tie, so it does
//! not chase a pointer per comparison (a `BTreeMap<Box<[u8]>, _>` of bounds did, a cache miss
//! each), and keys with long shared prefixes (`/registry/pods/<ns>/...`) still differ in it.
//! This costs ~30 bytes and a bound's bytes per block of ~90 keys: ~0.3 bytes a key.
//!
//! Invariants:
//! - a block's keys are strictly ascending; every key of a block is `>=` its lower bound and
//!   `<` the next block's lower bound, so blocks in order hold the keys in order;
//! - the first block's lower bound is the empty key (it exists once anything was inserted and is
//!   never removed, though it may be empty); every other block holds at least one key;
//! - a segment's lower bound is its first block's, and no segment is empty;
//! - in a [`Bounds`], bounds `1..` share their first `skip` bytes and `heads` matches them;
//! - `len` is the number of keys in all blocks.

use std::cmp::Ordering;

/// Keys per block at most: a lookup binary-searches one block, an insert moves at most this
/// many values.
pub const MAX_KEYS: usize = 128;
/// Key bytes per block beyond which a block of two keys or more splits (large keys).
pub const MAX_BYTES: usize = 32 * 1024;
/// Blocks per segment at most: a block split moves at most this many blocks of its segment.
pub const MAX_BLOCKS: usize = 128;

/// The map. See the module docs.
pub struct KeyMap<V> {
    /// The segments by lower bound; each holds its blocks by lower bound.
    segments: Dir<Dir<Block<V>>>,
    len: usize,
}

/// Children by lower bound. `bounds.get(i)` is the lower bound of `children[i]`.
struct Dir<T> {
    bounds: Bounds,
    children: Vec<T>,
}

/// Sorted lower bounds, searched without chasing a pointer per comparison: the bytes in one
/// buffer, and for each bound 16 bytes of it, past the prefix all bounds share, in one array.
struct Bounds {
    /// The bounds' bytes, one after the other.
    bytes: Vec<u8>,
    /// `ends[i]`: the end offset of bound `i` in `bytes`.
    ends: Vec<u32>,
    /// `heads[i]`: bytes `skip..skip + 16` of bound `i`, zero-padded, big-endian (ordered like
    /// the bounds, ties broken by the whole bound). `heads[0]` is not used: bound 0 is only the
    /// answer when no other bound is `<=` the key.
    heads: Vec<u128>,
    /// The length of a prefix bounds `1..` share (not always the longest one: removing a bound
    /// keeps it).
    skip: usize,
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
        KeyMap { segments: Dir::new(), len: 0 }
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
        let (s, b) = self.locate(key)?;
        let block = &self.segments.children[s].children[b];
        let i = block.search(key).ok()?;
        Some((block.key(i), &block.values[i]))
    }

    /// The value of `key`, to change in place.
    pub fn get_mut(&mut self, key: &[u8]) -> Option<&mut V> {
        let (s, b) = self.locate(key)?;
        let block = &mut self.segments.children[s].children[b];
        let i = block.search(key).ok()?;
        Some(&mut block.values[i])
    }

    /// Sets `key` to `value`; returns the value it replaces.
    pub fn insert(&mut self, key: &[u8], value: V) -> Option<V> {
        if self.segments.children.is_empty() {
            let mut first = Dir::new();
            first.push(b"", Block::new());
            self.segments.push(b"", first);
        }
        let (s, b) = self.locate(key).expect("the first block's lower bound is the empty key");
        let segment = &mut self.segments.children[s];
        let block = &mut segment.children[b];
        let at = match block.search(key) {
            Ok(i) => return Some(std::mem::replace(&mut block.values[i], value)),
            Err(i) => i,
        };
        block.insert_at(at, key, value);
        self.len += 1;
        if block.values.len() > MAX_KEYS || (block.bytes.len() > MAX_BYTES && block.values.len() > 1) {
            let split = split_point(at, block.values.len());
            let upper = block.split_off(split);
            let bound = upper.key(0).to_vec();
            segment.insert(b + 1, &bound, upper);
            if segment.children.len() > MAX_BLOCKS {
                let upper = segment.split_off(split_point(b + 1, segment.children.len()));
                let bound = upper.bounds.get(0).to_vec();
                self.segments.insert(s + 1, &bound, upper);
            }
        }
        None
    }

    /// Removes `key`; returns its value.
    pub fn remove(&mut self, key: &[u8]) -> Option<V> {
        let (s, b) = self.locate(key)?;
        let segment = &mut self.segments.children[s];
        let block = &mut segment.children[b];
        let i = block.search(key).ok()?;
        let value = block.remove_at(i);
        self.len -= 1;
        if block.values.is_empty() && (s, b) != (0, 0) {
            if segment.children.len() > 1 {
                segment.remove(b);
            } else {
                self.segments.remove(s);
            }
        }
        Some(value)
    }

    /// The entries with keys `>= key`, in key order.
    pub fn range_from<'a>(&'a self, key: &[u8]) -> Iter<'a, V> {
        let Some((s, b)) = self.locate(key) else {
            return Iter { segments: &[], segment: 0, block: 0, at: 0 };
        };
        let at = self.segments.children[s].children[b].search(key).unwrap_or_else(|i| i);
        Iter { segments: &self.segments.children, segment: s, block: b, at }
    }

    /// Every value, in key order.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.blocks().flat_map(|b| b.values.iter())
    }

    /// Keeps the entries for which `keep` is true, then merges neighbouring blocks that fit in
    /// one (a compaction leaves blocks thinned out).
    pub fn retain(&mut self, mut keep: impl FnMut(&mut V) -> bool) {
        let mut removed = false;
        for segment in &mut self.segments.children {
            for block in &mut segment.children {
                let before = block.values.len();
                block.retain(&mut keep);
                removed |= block.values.len() != before;
                self.len -= before - block.values.len();
            }
        }
        if removed {
            self.merge_thin_blocks();
        }
    }

    /// The segment and the block whose range holds `key`; None when nothing was ever inserted.
    fn locate(&self, key: &[u8]) -> Option<(usize, usize)> {
        if self.segments.children.is_empty() {
            return None;
        }
        let s = self.segments.bounds.find(key);
        Some((s, self.segments.children[s].bounds.find(key)))
    }

    fn blocks(&self) -> impl Iterator<Item = &Block<V>> {
        self.segments.children.iter().flat_map(|s| s.children.iter())
    }

    /// Rebuilds the blocks, merging neighbours that fit in one, and the segments, filled to 3/4
    /// (room for the splits that follow).
    fn merge_thin_blocks(&mut self) {
        let mut merged: Vec<(Vec<u8>, Block<V>)> = Vec::new();
        for segment in std::mem::replace(&mut self.segments, Dir::new()).children {
            let Dir { bounds, children } = segment;
            for (i, block) in children.into_iter().enumerate() {
                match merged.last_mut() {
                    Some((_, prev))
                        if prev.values.len() + block.values.len() <= MAX_KEYS
                            && prev.bytes.len() + block.bytes.len() <= MAX_BYTES =>
                    {
                        prev.append(block);
                    }
                    _ => merged.push((bounds.get(i).to_vec(), block)),
                }
            }
        }
        let mut segment = Dir::new();
        for (bound, mut block) in merged {
            block.trim();
            if segment.children.len() == MAX_BLOCKS * 3 / 4 {
                let full = std::mem::replace(&mut segment, Dir::new());
                let first = full.bounds.get(0).to_vec();
                self.segments.push(&first, full);
            }
            segment.push(&bound, block);
        }
        if !segment.children.is_empty() {
            let first = segment.bounds.get(0).to_vec();
            self.segments.push(&first, segment);
        }
        self.segments.reindex();
        for segment in &mut self.segments.children {
            segment.reindex();
        }
    }
}

/// Where a node that went one over its limit splits, `at` being where the newest entry went:
/// keys written in order (ascending or descending) leave full nodes behind them.
fn split_point(at: usize, len: usize) -> usize {
    match at {
        0 => 1,
        i if i == len - 1 => len - 1,
        _ => len / 2,
    }
}

impl<T> Dir<T> {
    fn new() -> Dir<T> {
        Dir { bounds: Bounds::new(), children: Vec::new() }
    }

    /// Appends a child above every other (then [`Dir::reindex`] before searching).
    fn push(&mut self, bound: &[u8], child: T) {
        self.bounds.push(bound);
        self.children.push(child);
    }

    fn reindex(&mut self) {
        self.bounds.reindex();
        self.children.shrink_to_fit();
    }

    /// Inserts a child at `i >= 1`.
    fn insert(&mut self, i: usize, bound: &[u8], child: T) {
        self.bounds.insert(i, bound);
        self.children.insert(i, child);
    }

    /// Removes child `i` of two or more. Child 0's bound stays (it is the parent's bound for
    /// this directory): removing child 0 gives its bound to child 1, lowering it, which keeps
    /// every key `>=` its bound.
    fn remove(&mut self, i: usize) {
        self.bounds.remove(i.max(1));
        self.children.remove(i);
    }

    fn split_off(&mut self, at: usize) -> Dir<T> {
        let bounds = self.bounds.split_off(at);
        let children = self.children.split_off(at);
        self.children.shrink_to_fit();
        Dir { bounds, children }
    }
}

/// Length of the common prefix of `a` and `b`.
fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}


/// Bytes `skip..skip + 16` of `key`, zero-padded, as a big-endian number: for keys sharing
/// their first `skip` bytes, `head(a) < head(b)` implies `a < b` (a key padded with zeros is a
/// prefix of, or equal to, the keys it ties with).
fn head(key: &[u8], skip: usize) -> u128 {
    let rest = key.get(skip..).unwrap_or_default();
    if let Some(h) = rest.first_chunk::<16>() {
        return u128::from_be_bytes(*h);
    }
    // shorter: 8 bytes at once when there are, the rest byte by byte (no call to memcpy)
    let (mut h, tail, shift) = match rest.split_first_chunk::<8>() {
        Some((hi, tail)) => (u128::from(u64::from_be_bytes(*hi)) << 64, tail, 56),
        None => (0, rest, 120),
    };
    for (i, b) in tail.iter().enumerate() {
        h |= u128::from(*b) << (shift - 8 * i);
    }
    h
}

impl Bounds {
    fn new() -> Bounds {
        Bounds { bytes: Vec::new(), ends: Vec::new(), heads: Vec::new(), skip: 0 }
    }

    fn len(&self) -> usize {
        self.ends.len()
    }

    fn start(&self, i: usize) -> usize {
        packed_start(&self.ends, i)
    }

    fn get(&self, i: usize) -> &[u8] {
        packed(&self.bytes, &self.ends, i)
    }

    /// The last bound `<= key`, or 0 when there is none (the caller knows `key` is at or
    /// above bound 0).
    fn find(&self, key: &[u8]) -> usize {
        let n = self.len();
        if n <= 1 {
            return 0;
        }
        let skip = self.skip;
        if skip > 0 {
            // bounds 1.. all start with this prefix: a key without it is below or above them all
            let prefix = &self.get(1)[..skip];
            match key[..skip.min(key.len())].cmp(&prefix[..skip.min(key.len())]) {
                Ordering::Less => return 0,
                Ordering::Greater => return n - 1,
                Ordering::Equal if key.len() < skip => return 0,
                Ordering::Equal => {}
            }
        }
        let h = head(key, skip);
        // bounds[1..lo] are <= key, bounds[hi..] are > key
        let (mut lo, mut hi) = (1, n);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let at_or_below = match self.heads[mid].cmp(&h) {
                Ordering::Less => true,
                Ordering::Greater => false,
                Ordering::Equal => self.get(mid)[skip..] <= key[skip..],
            };
            if at_or_below {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo - 1
    }

    /// Appends a bound above every other; [`Bounds::reindex`] must follow before a search
    /// among two or more.
    fn push(&mut self, bound: &[u8]) {
        self.bytes.extend_from_slice(bound);
        self.ends.push(self.bytes.len() as u32);
        self.heads.push(0);
    }

    /// Sets `skip` to the longest prefix bounds `1..` share, and the heads to match; trims.
    fn reindex(&mut self) {
        self.skip = match self.len() {
            0 | 1 => 0,
            n => {
                // in sorted order, the first and last share what all share
                common_prefix(self.get(1), self.get(n - 1))
            }
        };
        self.heads = (0..self.len())
            .map(|i| if i == 0 { 0 } else { head(self.get(i), self.skip) })
            .collect();
        self.bytes.shrink_to_fit();
        self.ends.shrink_to_fit();
    }

    /// Inserts a bound at `i >= 1`.
    fn insert(&mut self, i: usize, bound: &[u8]) {
        debug_assert!(i >= 1);
        let start = self.start(i);
        self.bytes.splice(start..start, bound.iter().copied());
        let n = bound.len() as u32;
        for end in &mut self.ends[i..] {
            *end += n;
        }
        self.ends.insert(i, start as u32 + n);
        let skip = match self.len() {
            2 => bound.len(),
            _ => self.skip.min(common_prefix(bound, self.get(if i == 1 { 2 } else { 1 }))),
        };
        if skip == self.skip && self.len() > 2 {
            self.heads.insert(i, head(bound, skip));
        } else {
            // a bound outside the shared prefix: every head moves (rare, the prefix only shrinks)
            self.reindex();
        }
    }

    /// Removes bound `i >= 1`; the shared prefix stays a shared prefix.
    fn remove(&mut self, i: usize) {
        debug_assert!(i >= 1);
        let (start, end) = (self.start(i), self.ends[i] as usize);
        self.bytes.drain(start..end);
        self.ends.remove(i);
        let n = (end - start) as u32;
        for e in &mut self.ends[i..] {
            *e -= n;
        }
        self.heads.remove(i);
    }

    /// Moves the bounds from `at` on into new bounds; both are reindexed.
    fn split_off(&mut self, at: usize) -> Bounds {
        let offset = self.start(at);
        let bytes = self.bytes.split_off(offset);
        let ends = self.ends.split_off(at).into_iter().map(|e| e - offset as u32).collect();
        self.heads.truncate(at);
        self.reindex();
        let mut upper = Bounds { bytes, ends, heads: Vec::new(), skip: 0 };
        upper.reindex();
        upper
    }
}

/// Entries in key order from a starting key (see [`KeyMap::range_from`]).
pub struct Iter<'a, V> {
    segments: &'a [Dir<Block<V>>],
    segment: usize,
    block: usize,
    /// The next entry of the block.
    at: usize,
}

impl<'a, V> Iterator for Iter<'a, V> {
    type Item = (&'a [u8], &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let segment = self.segments.get(self.segment)?;
            let Some(block) = segment.children.get(self.block) else {
                self.segment += 1;
                self.block = 0;
                continue;
            };
            if self.at < block.values.len() {
                let i = self.at;
                self.at += 1;
                return Some((block.key(i), &block.values[i]));
            }
            self.block += 1;
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

/// Where string `i` of strings packed one after the other in a buffer starts, given their end
/// offsets (the layout of a block's keys and of a level's bounds).
fn packed_start(ends: &[u32], i: usize) -> usize {
    if i == 0 {
        0
    } else {
        ends[i - 1] as usize
    }
}

/// String `i` of the packed strings (see [`packed_start`]).
fn packed<'a>(bytes: &'a [u8], ends: &[u32], i: usize) -> &'a [u8] {
    &bytes[packed_start(ends, i)..ends[i] as usize]
}

impl<V> Block<V> {
    fn new() -> Block<V> {
        Block { bytes: Vec::new(), ends: Vec::new(), values: Vec::new() }
    }

    fn start(&self, i: usize) -> usize {
        packed_start(&self.ends, i)
    }

    fn key(&self, i: usize) -> &[u8] {
        packed(&self.bytes, &self.ends, i)
    }

    /// Where `key` is (Ok) or would go (Err).
    fn search(&self, key: &[u8]) -> Result<usize, usize> {
        let (mut lo, mut hi) = (0, self.values.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.key(mid).cmp(key) {
                Ordering::Less => lo = mid + 1,
                Ordering::Greater => hi = mid,
                Ordering::Equal => return Ok(mid),
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

    use std::collections::BTreeMap;

    /// Checks that `bounds` are sorted, share their first `skip` bytes past bound 0, and that
    /// the heads match.
    fn check_bounds(bounds: &Bounds) {
        for i in 1..bounds.len() {
            assert!(bounds.get(i - 1) < bounds.get(i), "bounds ascend");
            assert_eq!(bounds.get(i)[..bounds.skip], bounds.get(1)[..bounds.skip], "shared prefix");
            assert_eq!(bounds.heads[i], head(bounds.get(i), bounds.skip));
        }
        assert_eq!(bounds.heads.len(), bounds.len());
    }

    /// Checks every invariant of the module docs against a plain BTreeMap.
    fn check(map: &KeyMap<u32>, model: &BTreeMap<Vec<u8>, u32>) {
        assert_eq!(map.len(), model.len());
        let got: Vec<(Vec<u8>, u32)> = map.range_from(b"").map(|(k, v)| (k.to_vec(), *v)).collect();
        let want: Vec<(Vec<u8>, u32)> = model.iter().map(|(k, v)| (k.clone(), *v)).collect();
        assert_eq!(got, want);
        let segments = &map.segments;
        check_bounds(&segments.bounds);
        assert_eq!(segments.bounds.len(), segments.children.len());
        let mut first = true;
        for (s, segment) in segments.children.iter().enumerate() {
            check_bounds(&segment.bounds);
            assert_eq!(segment.bounds.len(), segment.children.len());
            assert!(!segment.children.is_empty(), "no segment is empty");
            assert!(segment.children.len() <= MAX_BLOCKS);
            assert_eq!(segment.bounds.get(0), segments.bounds.get(s), "a segment's bound is its first block's");
            for (b, block) in segment.children.iter().enumerate() {
                let bound = segment.bounds.get(b);
                assert_eq!(first, bound.is_empty(), "only the first block is bounded by the empty key");
                assert!(first || !block.values.is_empty(), "only the first block may be empty");
                assert!(block.values.len() <= MAX_KEYS);
                if let Some(k) = (0..block.values.len()).map(|i| block.key(i)).next() {
                    assert!(k >= bound);
                }
                // every key and bound is found where it is
                for i in 0..block.values.len() {
                    assert_eq!(map.locate(block.key(i)), Some((s, b)));
                }
                if !first {
                    assert_eq!(map.locate(bound), Some((s, b)));
                }
                first = false;
            }
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
                assert!(map.blocks().count() <= 2000 / MAX_KEYS + 2, "{order}: blocks left full");
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
        let blocks_before = map.blocks().count();
        map.retain(|v| *v % 5 == 0);
        model.retain(|_, v| *v % 5 == 0);
        check(&map, &model);
        assert!(map.blocks().count() < blocks_before / 3, "thinned blocks are merged");
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
        assert!(map.blocks().all(|b| b.bytes.len() <= MAX_BYTES + 10_004));
    }

    /// A key of one of several shapes that stress the bounds' heads: the empty key, runs of
    /// 0xff, keys ending in zero bytes (they tie with their prefix in a zero-padded head),
    /// Kubernetes-like keys with long shared prefixes, and keys differing only past 100 bytes.
    fn odd_key(seed: &mut u64) -> Vec<u8> {
        let n = lcg(seed);
        let mut key = match n % 6 {
            0 => Vec::new(),
            1 => vec![0xff; (n / 8 % 40) as usize],
            2 => format!("/registry/pods/ns-{}/pod-{}", n / 8 % 7, n / 64 % 3000).into_bytes(),
            3 => {
                let mut k = vec![b'x'; 100];
                k.extend_from_slice(&(n / 8 % 5000).to_be_bytes()[6..]);
                k
            }
            4 => format!("/registry/events/ns-{}/{}", n / 8 % 3, n / 32 % 2000).into_bytes(),
            _ => (0..n / 8 % 4).map(|i| [0u8, 1, 0xfe, 0xff][(n >> (8 + 2 * i)) as usize % 4]).collect(),
        };
        key.extend(std::iter::repeat_n(0u8, lcg(seed) as usize % 3));
        key
    }

    #[test]
    fn odd_keys_through_splits_removes_and_merges_match_a_btreemap() {
        let mut map = KeyMap::default();
        let mut model = BTreeMap::new();
        let mut seed = 3;
        for round in 0..4u32 {
            for i in 0..40_000u32 {
                let key = odd_key(&mut seed);
                if lcg(&mut seed).is_multiple_of(4) {
                    assert_eq!(map.remove(&key), model.remove(&key));
                } else {
                    assert_eq!(map.insert(&key, i), model.insert(key, i));
                }
                if i % 10_000 == 0 {
                    check(&map, &model);
                }
            }
            assert!(map.segments.children.len() > 1, "segments split: {} keys", map.len());
            check(&map, &model);
            for key in [&b""[..], &[0xff; 39], &[0xff; 50], b"/registry/pods/ns-3/pod-", &[0; 3], b"x"] {
                let got: Vec<&[u8]> = map.range_from(key).map(|(k, _)| k).take(3).collect();
                let want: Vec<&[u8]> = model.range(key.to_vec()..).map(|(k, _)| &k[..]).take(3).collect();
                assert_eq!(got, want, "range from {key:?}");
                assert_eq!(map.get(key), model.get(key));
            }
            map.retain(|v| (*v + round) % 3 == 0);
            model.retain(|_, v| (*v + round) % 3 == 0);
            check(&map, &model);
        }
    }

    #[test]
    fn removing_the_first_block_of_a_segment_keeps_its_range() {
        let mut map = KeyMap::default();
        let mut model = BTreeMap::new();
        for i in 0..40_000u32 {
            let key = format!("/registry/pods/default/pod-{i:06}").into_bytes();
            map.insert(&key, i);
            model.insert(key, i);
        }
        assert!(map.segments.children.len() > 2);
        // empty the first block of the second segment, then write below its old first key
        let bound = map.segments.bounds.get(1).to_vec();
        let first: Vec<Vec<u8>> = (0..map.segments.children[1].children[0].values.len())
            .map(|i| map.segments.children[1].children[0].key(i).to_vec())
            .collect();
        for key in &first {
            assert_eq!(map.remove(key), model.remove(key));
        }
        check(&map, &model);
        assert_eq!(map.segments.bounds.get(1), &bound[..], "the segment keeps its bound");
        for key in &first {
            map.insert(key, 7);
            model.insert(key.clone(), 7);
        }
        check(&map, &model);
        // empty whole segments, then refill
        let keys: Vec<Vec<u8>> = model.keys().cloned().collect();
        for key in &keys[1000..30_000] {
            assert_eq!(map.remove(key), model.remove(key));
        }
        check(&map, &model);
        for key in keys.iter().rev() {
            map.insert(key, 1);
            model.insert(key.clone(), 1);
        }
        check(&map, &model);
    }

    #[test]
    fn heads_order_like_the_bytes() {
        let keys: Vec<Vec<u8>> = vec![
            vec![],
            vec![0],
            vec![0, 0],
            vec![1],
            vec![0xff],
            vec![0xff; 7],
            vec![0xff; 8],
            vec![0xff; 9],
            vec![0xff; 16],
            vec![0xff; 17],
            b"/registry/pods/a".to_vec(),
            b"/registry/pods/a\0".to_vec(),
            b"/registry/pods/a\0\0\0\0\0\0\0\0\x01".to_vec(),
            b"/registry/pods/b".to_vec(),
            b"12345678".to_vec(),
            b"12345678\0".to_vec(),
            b"123456789".to_vec(),
        ];
        for a in &keys {
            for b in &keys {
                for skip in [0, 1, 3, 8, 15] {
                    if a.len() >= skip && b.len() >= skip && a[..skip] == b[..skip] && a < b {
                        assert!(head(a, skip) <= head(b, skip), "{a:?} {b:?} at {skip}");
                    }
                }
            }
        }
    }

    #[test]
    fn bounds_find_the_last_bound_at_or_below_any_key() {
        let sets: Vec<Vec<Vec<u8>>> = vec![
            vec![b"a".to_vec()],
            vec![b"/registry/pods/a".to_vec(), b"/registry/pods/a\0".to_vec(), b"/registry/pods/b".to_vec()],
            vec![vec![0xff; 3], vec![0xff; 17], vec![0xff; 18], vec![0xff; 40]],
            (0..50).map(|i| format!("/registry/pods/ns-1/pod-{i:040}").into_bytes()).collect(),
        ];
        let probes: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"\0".to_vec(),
            b"/registry/pods/".to_vec(),
            b"/registry/pods/a".to_vec(),
            b"/registry/pods/a\0".to_vec(),
            b"/registry/pods/a\0\0".to_vec(),
            b"/registry/pods/ns-1/pod-".to_vec(),
            format!("/registry/pods/ns-1/pod-{:040}", 7).into_bytes(),
            format!("/registry/pods/ns-1/pod-{:040}!", 7).into_bytes(),
            b"/registry/pods/z".to_vec(),
            vec![0xff; 2],
            vec![0xff; 17],
            vec![0xff; 30],
            vec![0xff; 41],
            b"zzz".to_vec(),
        ];
        for set in sets {
            let mut bounds = Bounds::new();
            bounds.push(b"");
            let mut inserted = Bounds::new();
            inserted.push(b"");
            inserted.reindex();
            for (i, b) in set.iter().enumerate() {
                bounds.push(b);
                inserted.insert(i + 1, b);
            }
            bounds.reindex();
            check_bounds(&bounds);
            check_bounds(&inserted);
            assert_eq!(bounds.skip, inserted.skip);
            for probe in &probes {
                let want = set.iter().rposition(|b| b <= probe).map_or(0, |i| i + 1);
                assert_eq!(bounds.find(probe), want, "{probe:?} in {set:?}");
                assert_eq!(inserted.find(probe), want, "{probe:?} in {set:?}");
            }
        }
    }
}
