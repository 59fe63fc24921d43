//! Builds a bbolt file from buckets of sorted keys, streaming: leaf pages are written as keys
//! arrive, only the first key and page id of each page (for the branch levels) stay in memory.
//!
//! Layout of a written file: pages 0 and 1 are the metas (written last, both naming the same
//! tree, txids 2 and 1); then each bucket's leaf pages followed by its branch pages, bottom up;
//! then the root bucket's pages; then an empty freelist page. Every page below the high water
//! mark is reachable, so bbolt's `tx.Check()` finds nothing, and bbolt (and etcd) can open the
//! file and write to it. Leaves are filled up to a page (bbolt's compaction does the same with
//! FillPercent 1.0); a bucket that fits in a quarter page is stored inline in its parent, as
//! bbolt does.

use std::io::{Seek, SeekFrom, Write};

use super::page::*;
use super::BoltError;

/// A bucket's root as its parent stores it.
enum BucketRoot {
    Page(u64),
    Inline(Vec<u8>),
}

/// Writes a bbolt file to `out` (any seekable writer: a file, a cursor).
pub struct BoltWriter<W: Write + Seek> {
    out: W,
    page_size: usize,
    next_pgid: u64,
    /// Bucket name -> the bucket's value in the root bucket.
    root_entries: Vec<(Vec<u8>, Vec<u8>)>,
}

impl<W: Write + Seek> BoltWriter<W> {
    /// A writer with etcd's page size (4096).
    pub fn new(out: W) -> Result<Self, BoltError> {
        Self::with_page_size(out, DEFAULT_PAGE_SIZE)
    }

    /// A writer with the given page size (a power of two, 1024 or more).
    pub fn with_page_size(mut out: W, page_size: usize) -> Result<Self, BoltError> {
        if page_size < 1024 || !page_size.is_power_of_two() {
            return Err(BoltError::Invalid(format!("page size {page_size} is not a power of two >= 1024")));
        }
        // room for the two metas, written by finish()
        out.seek(SeekFrom::Start(0))?;
        out.write_all(&vec![0u8; 2 * page_size])?;
        Ok(BoltWriter { out, page_size, next_pgid: 2, root_entries: Vec::new() })
    }

    /// Starts a top-level bucket; put its keys in ascending order, then `finish` it. A bucket
    /// dropped unfinished is not in the file.
    pub fn bucket(&mut self, name: &[u8]) -> Result<BucketWriter<'_, W>, BoltError> {
        check_key(name)?;
        if self.root_entries.iter().any(|(n, _)| n == name) {
            return Err(BoltError::Invalid(format!("bucket {:?} written twice", String::from_utf8_lossy(name))));
        }
        Ok(BucketWriter { name: name.to_vec(), tree: TreeBuilder::new(0), writer: self })
    }

    /// Writes the root bucket, the freelist and the metas; returns the writer and the size of
    /// the database in bytes (pages in use x page size, as bbolt's `tx.Size()`).
    pub fn finish(mut self) -> Result<(W, u64), BoltError> {
        let mut entries = std::mem::take(&mut self.root_entries);
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let mut root = TreeBuilder::new(BUCKET_LEAF);
        for (name, value) in entries {
            root.put(&mut self, name, value)?;
        }
        let root_pgid = match root.finish(&mut self, false)? {
            BucketRoot::Page(p) => p,
            BucketRoot::Inline(_) => return Err(BoltError::Invalid("root bucket written inline".into())),
        };
        // an empty freelist
        let freelist = self.next_pgid;
        let mut page = vec![0u8; self.page_size];
        PageHeader { id: freelist, flags: FREELIST_PAGE, count: 0, overflow: 0 }.encode(&mut page);
        self.out.write_all(&page)?;
        self.next_pgid += 1;

        let pgid = self.next_pgid;
        for (id, txid) in [(0u64, 2u64), (1, 1)] {
            let meta = Meta {
                magic: MAGIC,
                version: VERSION,
                page_size: self.page_size as u32,
                flags: 0,
                root: root_pgid,
                root_sequence: 0,
                freelist,
                pgid,
                txid,
                checksum: 0,
            };
            let mut page = vec![0u8; self.page_size];
            PageHeader { id, flags: META_PAGE, count: 0, overflow: 0 }.encode(&mut page);
            page[PAGE_HEADER_SIZE..PAGE_HEADER_SIZE + META_SIZE].copy_from_slice(&meta.encode());
            self.out.seek(SeekFrom::Start(id * self.page_size as u64))?;
            self.out.write_all(&page)?;
        }
        self.out.seek(SeekFrom::Start(pgid * self.page_size as u64))?;
        self.out.flush()?;
        Ok((self.out, pgid * self.page_size as u64))
    }

    /// Writes a leaf or branch page (with overflow pages if it needs them) at the next page id.
    fn write_node(&mut self, flags: u16, elements: &[(u32, &[u8], &[u8], u64)]) -> Result<u64, BoltError> {
        let id = self.next_pgid;
        let bytes = encode_node(id, flags, elements, self.page_size)?;
        self.out.write_all(&bytes)?;
        self.next_pgid += (bytes.len() / self.page_size) as u64;
        Ok(id)
    }
}

fn check_key(key: &[u8]) -> Result<(), BoltError> {
    if key.is_empty() {
        return Err(BoltError::Invalid("key required".into()));
    }
    if key.len() > MAX_KEY_SIZE {
        return Err(BoltError::Invalid("key too large".into()));
    }
    Ok(())
}

/// Encodes a node: leaf elements are (flags, key, value, _), branch elements (_, key, _, pgid).
/// With `page_size` 0 the bytes are exactly the node (an inline bucket's page); otherwise they
/// are padded to whole pages and the header counts the overflow.
fn encode_node(id: u64, flags: u16, elements: &[(u32, &[u8], &[u8], u64)], page_size: usize) -> Result<Vec<u8>, BoltError> {
    if elements.len() >= 0xFFFF {
        return Err(BoltError::Invalid("too many elements in one page".into()));
    }
    let leaf = flags == LEAF_PAGE;
    let data: usize = elements.iter().map(|(_, k, v, _)| k.len() + if leaf { v.len() } else { 0 }).sum();
    let size = node_size(elements.len(), data);
    let (len, overflow) = if page_size == 0 {
        (size, 0)
    } else {
        let pages = size.div_ceil(page_size);
        let overflow = u32::try_from(pages - 1).map_err(|_| BoltError::Invalid("value too large".into()))?;
        (pages * page_size, overflow)
    };
    let mut b = vec![0u8; len];
    PageHeader { id, flags, count: elements.len() as u16, overflow }.encode(&mut b);
    let mut off = node_size(elements.len(), 0);
    for (i, (eflags, k, v, pgid)) in elements.iter().enumerate() {
        let e = PAGE_HEADER_SIZE + i * ELEMENT_SIZE;
        let pos = (off - e) as u32;
        if leaf {
            b[e..e + 4].copy_from_slice(&eflags.to_le_bytes());
            b[e + 4..e + 8].copy_from_slice(&pos.to_le_bytes());
            b[e + 8..e + 12].copy_from_slice(&(k.len() as u32).to_le_bytes());
            b[e + 12..e + 16].copy_from_slice(&(v.len() as u32).to_le_bytes());
            b[off..off + k.len()].copy_from_slice(k);
            b[off + k.len()..off + k.len() + v.len()].copy_from_slice(v);
            off += k.len() + v.len();
        } else {
            b[e..e + 4].copy_from_slice(&pos.to_le_bytes());
            b[e + 4..e + 8].copy_from_slice(&(k.len() as u32).to_le_bytes());
            b[e + 8..e + 16].copy_from_slice(&pgid.to_le_bytes());
            b[off..off + k.len()].copy_from_slice(k);
            off += k.len();
        }
    }
    Ok(b)
}

/// One B+tree being built bottom up: the leaf being filled and the written leaves.
struct TreeBuilder {
    element_flags: u32,
    leaf: Vec<(Vec<u8>, Vec<u8>)>,
    leaf_data: usize,
    /// First key and page id of every written leaf.
    leaves: Vec<(Vec<u8>, u64)>,
    /// The last key put (the order check spans pages).
    last_key: Option<Vec<u8>>,
}

impl TreeBuilder {
    fn new(element_flags: u32) -> TreeBuilder {
        TreeBuilder { element_flags, leaf: Vec::new(), leaf_data: 0, leaves: Vec::new(), last_key: None }
    }

    fn put<W: Write + Seek>(&mut self, w: &mut BoltWriter<W>, key: Vec<u8>, value: Vec<u8>) -> Result<(), BoltError> {
        check_key(&key)?;
        if value.len() > MAX_VALUE_SIZE {
            return Err(BoltError::Invalid("value too large".into()));
        }
        if self.last_key.as_ref().is_some_and(|last| key <= *last) {
            return Err(BoltError::Invalid("keys must be put in ascending order".into()));
        }
        let data = self.leaf_data + key.len() + value.len();
        if !self.leaf.is_empty() && node_size(self.leaf.len() + 1, data) > w.page_size {
            self.flush_leaf(w)?;
        }
        self.leaf_data += key.len() + value.len();
        self.last_key = Some(key.clone());
        self.leaf.push((key, value));
        Ok(())
    }

    fn flush_leaf<W: Write + Seek>(&mut self, w: &mut BoltWriter<W>) -> Result<(), BoltError> {
        let elements: Vec<(u32, &[u8], &[u8], u64)> =
            self.leaf.iter().map(|(k, v)| (self.element_flags, k.as_slice(), v.as_slice(), 0)).collect();
        let id = w.write_node(LEAF_PAGE, &elements)?;
        let first = self.leaf.first().map(|(k, _)| k.clone()).unwrap_or_default();
        self.leaves.push((first, id));
        self.leaf.clear();
        self.leaf_data = 0;
        Ok(())
    }

    fn finish<W: Write + Seek>(mut self, w: &mut BoltWriter<W>, inline_ok: bool) -> Result<BucketRoot, BoltError> {
        if self.leaves.is_empty() {
            let size = node_size(self.leaf.len(), self.leaf_data);
            if inline_ok && size <= w.page_size / 4 {
                let elements: Vec<(u32, &[u8], &[u8], u64)> =
                    self.leaf.iter().map(|(k, v)| (self.element_flags, k.as_slice(), v.as_slice(), 0)).collect();
                let mut value = vec![0u8; BUCKET_HEADER_SIZE]; // root 0 (inline), sequence 0
                value.extend(encode_node(0, LEAF_PAGE, &elements, 0)?);
                return Ok(BucketRoot::Inline(value));
            }
        }
        if !self.leaf.is_empty() || self.leaves.is_empty() {
            self.flush_leaf(w)?;
        }
        let mut level = std::mem::take(&mut self.leaves);
        while level.len() > 1 {
            let mut next = Vec::new();
            let mut start = 0;
            while start < level.len() {
                // as many children as fit in one page (at least one)
                let mut end = start;
                let mut data = 0;
                while end < level.len() && (end == start || node_size(end - start + 1, data + level[end].0.len()) <= w.page_size) {
                    data += level[end].0.len();
                    end += 1;
                }
                let elements: Vec<(u32, &[u8], &[u8], u64)> =
                    level[start..end].iter().map(|(k, id)| (0, k.as_slice(), &[][..], *id)).collect();
                let id = w.write_node(BRANCH_PAGE, &elements)?;
                next.push((level[start].0.clone(), id));
                start = end;
            }
            level = next;
        }
        Ok(BucketRoot::Page(level[0].1))
    }
}

/// Writes one bucket's keys; see [`BoltWriter::bucket`].
pub struct BucketWriter<'a, W: Write + Seek> {
    writer: &'a mut BoltWriter<W>,
    name: Vec<u8>,
    tree: TreeBuilder,
}

impl<W: Write + Seek> BucketWriter<'_, W> {
    /// Adds a key; keys must come in strictly ascending byte order.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), BoltError> {
        self.tree.put(self.writer, key.to_vec(), value.to_vec())
    }

    /// Writes the rest of the bucket and records it in the root bucket.
    pub fn finish(self) -> Result<(), BoltError> {
        let value = match self.tree.finish(self.writer, true)? {
            BucketRoot::Inline(v) => v,
            BucketRoot::Page(root) => {
                let mut v = vec![0u8; BUCKET_HEADER_SIZE];
                v[0..8].copy_from_slice(&root.to_le_bytes());
                v
            }
        };
        self.writer.root_entries.push((self.name, value));
        Ok(())
    }
}
