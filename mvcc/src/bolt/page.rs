//! bbolt's on-disk layouts: the page header, leaf and branch elements, the meta page and its
//! checksum, the freelist page. Everything is little-endian (bbolt writes its structs as the
//! machine lays them out; etcd runs on little-endian machines, and bbolt files are not portable
//! to big-endian ones either).
//!
//! A page (`page_size` bytes, 4096 for etcd; a page with `overflow = n` spans `n + 1` pages):
//!
//! ```text
//! header   id u64 | flags u16 | count u16 | overflow u32          (16 bytes)
//! leaf     count x { flags u32 | pos u32 | ksize u32 | vsize u32 } (16 bytes each), then data
//! branch   count x { pos u32 | ksize u32 | pgid u64 }              (16 bytes each), then data
//! ```
//!
//! `pos` is the distance from the element itself to its key; a leaf's value follows its key.
//! Branch keys are the first key of the child page. A leaf element with flag `BUCKET_LEAF` is a
//! bucket: its value is a 16-byte bucket header `{root u64, sequence u64}`, followed, when
//! `root == 0` (an inline bucket), by a whole leaf page (header + elements) of that bucket.
//!
//! The meta page (pages 0 and 1) holds after the header:
//! `magic u32 | version u32 | page_size u32 | flags u32 | root {pgid u64, sequence u64} |
//! freelist u64 | pgid u64 (high water mark: pages in use) | txid u64 | checksum u64`;
//! the checksum is FNV-1a 64 over the 56 bytes before it. A reader takes the valid meta with
//! the larger txid.
//!
//! The freelist page: `count` page ids (u64 each); when there are 0xFFFF or more, `count` is
//! 0xFFFF and the first u64 holds the real count.

/// Size of a page header.
pub const PAGE_HEADER_SIZE: usize = 16;
/// Size of a leaf or branch element.
pub const ELEMENT_SIZE: usize = 16;
/// Size of a bucket header (root pgid, sequence).
pub const BUCKET_HEADER_SIZE: usize = 16;
/// Size of the meta struct inside a meta page.
pub const META_SIZE: usize = 64;

pub const BRANCH_PAGE: u16 = 0x01;
pub const LEAF_PAGE: u16 = 0x02;
pub const META_PAGE: u16 = 0x04;
pub const FREELIST_PAGE: u16 = 0x10;

/// Leaf element flag: the value is a bucket.
pub const BUCKET_LEAF: u32 = 0x01;

/// bbolt's magic number and file format version.
pub const MAGIC: u32 = 0xED0C_DAED;
pub const VERSION: u32 = 2;
/// A meta's `freelist` when the freelist is not stored (bbolt's NoFreelistSync).
pub const NO_FREELIST: u64 = u64::MAX;

/// The page size etcd's files use (the OS page size on the machines etcd runs on).
pub const DEFAULT_PAGE_SIZE: usize = 4096;

/// Largest key bbolt accepts.
pub const MAX_KEY_SIZE: usize = 32768;
/// Largest value bbolt accepts.
pub const MAX_VALUE_SIZE: usize = (1 << 31) - 2;

pub(crate) fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

pub(crate) fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

pub(crate) fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

/// A page header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PageHeader {
    pub id: u64,
    pub flags: u16,
    pub count: u16,
    pub overflow: u32,
}

impl PageHeader {
    /// Decodes the header at the start of `b` (at least [`PAGE_HEADER_SIZE`] bytes).
    pub fn decode(b: &[u8]) -> PageHeader {
        PageHeader { id: u64_at(b, 0), flags: u16_at(b, 8), count: u16_at(b, 10), overflow: u32_at(b, 12) }
    }

    /// Writes the header at the start of `b`.
    pub fn encode(&self, b: &mut [u8]) {
        b[0..8].copy_from_slice(&self.id.to_le_bytes());
        b[8..10].copy_from_slice(&self.flags.to_le_bytes());
        b[10..12].copy_from_slice(&self.count.to_le_bytes());
        b[12..16].copy_from_slice(&self.overflow.to_le_bytes());
    }

    /// A readable name of the page's type, as bbolt prints it.
    pub fn type_name(&self) -> String {
        if self.flags & BRANCH_PAGE != 0 {
            "branch".into()
        } else if self.flags & LEAF_PAGE != 0 {
            "leaf".into()
        } else if self.flags & META_PAGE != 0 {
            "meta".into()
        } else if self.flags & FREELIST_PAGE != 0 {
            "freelist".into()
        } else {
            format!("unknown<{:02x}>", self.flags)
        }
    }
}

/// FNV-1a, 64 bits (Go's `hash/fnv.New64a`).
pub fn fnv1a64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The meta struct of a meta page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub magic: u32,
    pub version: u32,
    pub page_size: u32,
    pub flags: u32,
    /// The root bucket's root page.
    pub root: u64,
    pub root_sequence: u64,
    pub freelist: u64,
    /// The high water mark: pages `0..pgid` are in the file.
    pub pgid: u64,
    pub txid: u64,
    pub checksum: u64,
}

impl Meta {
    /// Encodes the meta (without page header) into 64 bytes, computing the checksum.
    pub fn encode(&self) -> [u8; META_SIZE] {
        let mut b = [0u8; META_SIZE];
        b[0..4].copy_from_slice(&self.magic.to_le_bytes());
        b[4..8].copy_from_slice(&self.version.to_le_bytes());
        b[8..12].copy_from_slice(&self.page_size.to_le_bytes());
        b[12..16].copy_from_slice(&self.flags.to_le_bytes());
        b[16..24].copy_from_slice(&self.root.to_le_bytes());
        b[24..32].copy_from_slice(&self.root_sequence.to_le_bytes());
        b[32..40].copy_from_slice(&self.freelist.to_le_bytes());
        b[40..48].copy_from_slice(&self.pgid.to_le_bytes());
        b[48..56].copy_from_slice(&self.txid.to_le_bytes());
        let sum = fnv1a64(&b[0..56]);
        b[56..64].copy_from_slice(&sum.to_le_bytes());
        b
    }

    /// Decodes 64 bytes of meta; [`Meta::validate`] says whether it can be trusted.
    pub fn decode(b: &[u8]) -> Meta {
        Meta {
            magic: u32_at(b, 0),
            version: u32_at(b, 4),
            page_size: u32_at(b, 8),
            flags: u32_at(b, 12),
            root: u64_at(b, 16),
            root_sequence: u64_at(b, 24),
            freelist: u64_at(b, 32),
            pgid: u64_at(b, 40),
            txid: u64_at(b, 48),
            checksum: u64_at(b, 56),
        }
    }

    /// The checksum the meta's fields call for.
    pub fn sum(&self) -> u64 {
        let b = self.encode();
        fnv1a64(&b[0..56])
    }

    /// bbolt's checks (magic, version, checksum; a zero checksum is accepted as bbolt does),
    /// plus the bounds a reader relies on.
    pub fn validate(&self) -> Result<(), &'static str> {
        if self.magic != MAGIC {
            return Err("invalid database");
        }
        if self.version != VERSION {
            return Err("version mismatch");
        }
        if self.checksum != 0 && self.checksum != self.sum() {
            return Err("checksum error");
        }
        if !(512..=1 << 20).contains(&self.page_size) || !self.page_size.is_power_of_two() {
            return Err("invalid page size");
        }
        if self.pgid < 3 || self.root < 2 || self.root >= self.pgid {
            return Err("root page out of bounds");
        }
        if self.freelist != NO_FREELIST && (self.freelist < 2 || self.freelist >= self.pgid) {
            return Err("freelist page out of bounds");
        }
        Ok(())
    }
}

/// Bytes a leaf or branch node of these elements takes when written: header, elements, data.
pub fn node_size(elements: usize, data: usize) -> usize {
    PAGE_HEADER_SIZE + elements * ELEMENT_SIZE + data
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_matches_the_published_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn meta_round_trips_and_a_changed_byte_fails_the_checksum() {
        let m = Meta {
            magic: MAGIC,
            version: VERSION,
            page_size: 4096,
            flags: 0,
            root: 3,
            root_sequence: 0,
            freelist: 2,
            pgid: 4,
            txid: 1,
            checksum: 0,
        };
        let mut b = m.encode();
        let d = Meta::decode(&b);
        assert_eq!(d.checksum, m.sum());
        assert_eq!(d.validate(), Ok(()));
        b[16] ^= 1;
        assert_eq!(Meta::decode(&b).validate(), Err("checksum error"));
    }
}
