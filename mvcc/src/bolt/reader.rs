//! Reads a bbolt file without mmap: pages are read with `pread` as a walk needs them, so
//! memory stays at one branch path plus the page being read. Everything read from the file is
//! bounds-checked; a damaged file yields [`BoltError::Corrupt`], never a panic.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::page::*;
use super::BoltError;

/// Deepest B+tree (or bucket nesting) a walk follows; deeper means a cycle in a damaged file.
const MAX_DEPTH: usize = 64;

fn corrupt(msg: impl Into<String>) -> BoltError {
    BoltError::Corrupt(msg.into())
}

/// Where a bucket's keys are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BucketRef {
    /// A bucket with its own pages, rooted here.
    Page(u64),
    /// An inline bucket: its leaf page (header and elements) stored in its parent's value.
    Inline(Vec<u8>),
}

impl BucketRef {
    /// Decodes a bucket value (bucket header, then the inline page when root is 0): a
    /// top-level bucket's, or a nested bucket's element value (flag [`BUCKET_LEAF`]).
    pub fn decode(value: &[u8]) -> Result<BucketRef, BoltError> {
        if value.len() < BUCKET_HEADER_SIZE {
            return Err(corrupt("bucket value shorter than its header"));
        }
        let root = u64_at(value, 0);
        if root != 0 {
            return Ok(BucketRef::Page(root));
        }
        let page = &value[BUCKET_HEADER_SIZE..];
        if page.len() < PAGE_HEADER_SIZE {
            return Err(corrupt("inline bucket without a page"));
        }
        Ok(BucketRef::Inline(page.to_vec()))
    }
}

/// One leaf element as a walk sees it.
pub struct Element<'a> {
    pub flags: u32,
    pub key: &'a [u8],
    pub value: &'a [u8],
}

/// The elements of a leaf page in `b` (header at 0), bounds-checked.
fn leaf_elements(b: &[u8]) -> Result<Vec<Element<'_>>, BoltError> {
    let h = PageHeader::decode(b);
    let count = h.count as usize;
    if node_size(count, 0) > b.len() {
        return Err(corrupt(format!("page {}: {count} elements do not fit", h.id)));
    }
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let e = PAGE_HEADER_SIZE + i * ELEMENT_SIZE;
        let flags = u32_at(b, e);
        let start = e + u32_at(b, e + 4) as usize;
        let ksize = u32_at(b, e + 8) as usize;
        let vsize = u32_at(b, e + 12) as usize;
        let end = start.checked_add(ksize).and_then(|x| x.checked_add(vsize)).filter(|&x| x <= b.len());
        let Some(end) = end else {
            return Err(corrupt(format!("page {}: element {i} points outside the page", h.id)));
        };
        out.push(Element { flags, key: &b[start..start + ksize], value: &b[start + ksize..end] });
    }
    Ok(out)
}

/// The (first key, child page) pairs of a branch page in `b`, bounds-checked.
fn branch_elements(b: &[u8]) -> Result<Vec<(&[u8], u64)>, BoltError> {
    let h = PageHeader::decode(b);
    let count = h.count as usize;
    if node_size(count, 0) > b.len() {
        return Err(corrupt(format!("page {}: {count} elements do not fit", h.id)));
    }
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let e = PAGE_HEADER_SIZE + i * ELEMENT_SIZE;
        let start = e + u32_at(b, e) as usize;
        let ksize = u32_at(b, e + 4) as usize;
        let Some(end) = start.checked_add(ksize).filter(|&x| x <= b.len()) else {
            return Err(corrupt(format!("page {}: element {i} points outside the page", h.id)));
        };
        out.push((&b[start..end], u64_at(b, e + 8)));
    }
    Ok(out)
}

/// An open bbolt file.
pub struct BoltReader {
    file: File,
    page_size: usize,
    meta: Meta,
}

impl BoltReader {
    /// Opens `path`: reads both metas and uses the valid one with the larger txid.
    pub fn open(path: &Path) -> Result<BoltReader, BoltError> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        let read_meta = |offset: u64| -> Result<Option<Meta>, BoltError> {
            let mut b = [0u8; PAGE_HEADER_SIZE + META_SIZE];
            if offset + b.len() as u64 > len {
                return Ok(None);
            }
            file.read_exact_at(&mut b, offset)?;
            let h = PageHeader::decode(&b);
            let m = Meta::decode(&b[PAGE_HEADER_SIZE..]);
            Ok((h.flags & META_PAGE != 0 && m.validate().is_ok()).then_some(m))
        };
        let meta0 = read_meta(0)?;
        // meta 1 sits one page in: take the page size from meta 0, or etcd's when it is damaged
        let page_size = meta0.map_or(DEFAULT_PAGE_SIZE as u64, |m| u64::from(m.page_size));
        let meta1 = read_meta(page_size)?.filter(|m| u64::from(m.page_size) == page_size);
        let meta = match (meta0, meta1) {
            (Some(a), Some(b)) => if b.txid > a.txid { b } else { a },
            (Some(a), None) => a,
            (None, Some(b)) => b,
            (None, None) => {
                let why = {
                    let mut b = [0u8; PAGE_HEADER_SIZE + META_SIZE];
                    if len < b.len() as u64 {
                        "file size too small".to_string()
                    } else {
                        file.read_exact_at(&mut b, 0)?;
                        Meta::decode(&b[PAGE_HEADER_SIZE..]).validate().err().unwrap_or("invalid meta page").to_string()
                    }
                };
                return Err(corrupt(format!("no valid meta page: {why}")));
            }
        };
        let page_size = meta.page_size as usize;
        let need = meta.pgid.checked_mul(page_size as u64).ok_or_else(|| corrupt("page count overflows"))?;
        if len < need {
            return Err(corrupt(format!("file is {len} bytes, its meta says {need}")));
        }
        Ok(BoltReader { file, page_size, meta })
    }

    /// The meta in use.
    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    pub fn page_size(&self) -> usize {
        self.page_size
    }

    /// Bytes of the database: pages in use x page size (bbolt's `tx.Size()`).
    pub fn size(&self) -> u64 {
        self.meta.pgid * self.page_size as u64
    }

    /// Reads page `id` with its overflow pages.
    fn read_page(&self, id: u64) -> Result<Vec<u8>, BoltError> {
        if id < 2 || id >= self.meta.pgid {
            return Err(corrupt(format!("page {id} is out of bounds (high water mark {})", self.meta.pgid)));
        }
        let offset = id * self.page_size as u64;
        let mut head = [0u8; PAGE_HEADER_SIZE];
        self.file.read_exact_at(&mut head, offset)?;
        let h = PageHeader::decode(&head);
        if h.id != id {
            return Err(corrupt(format!("page {id} says it is page {}", h.id)));
        }
        let pages = u64::from(h.overflow) + 1;
        if id + pages > self.meta.pgid {
            return Err(corrupt(format!("page {id}: {} overflow pages run past the end", h.overflow)));
        }
        let mut b = vec![0u8; (pages as usize) * self.page_size];
        self.file.read_exact_at(&mut b, offset)?;
        Ok(b)
    }

    /// The top-level buckets, in key order.
    pub fn buckets(&self) -> Result<Vec<(Vec<u8>, BucketRef)>, BoltError> {
        let mut out = Vec::new();
        self.for_each(&BucketRef::Page(self.meta.root), &mut |e| {
            if e.flags & BUCKET_LEAF == 0 {
                return Err(corrupt(format!("root bucket holds a plain key {:?}", String::from_utf8_lossy(e.key))));
            }
            out.push((e.key.to_vec(), BucketRef::decode(e.value)?));
            Ok(())
        })?;
        Ok(out)
    }

    /// The top-level bucket `name`, if there is one.
    pub fn bucket(&self, name: &[u8]) -> Result<Option<BucketRef>, BoltError> {
        Ok(self.buckets()?.into_iter().find(|(n, _)| n == name).map(|(_, b)| b))
    }

    /// Calls `f` on every element of the bucket, in key order (a nested bucket's element has
    /// flag [`BUCKET_LEAF`] and its bucket header as value). Keys out of order are corruption.
    pub fn for_each(&self, bucket: &BucketRef, f: &mut dyn FnMut(&Element<'_>) -> Result<(), BoltError>) -> Result<(), BoltError> {
        let mut last: Option<Vec<u8>> = None;
        let mut visit = |e: &Element<'_>| {
            if last.as_deref().is_some_and(|l| e.key <= l) {
                return Err(corrupt(format!("keys out of order at {:?}", String::from_utf8_lossy(e.key))));
            }
            last = Some(e.key.to_vec());
            f(e)
        };
        match bucket {
            BucketRef::Inline(page) => {
                if PageHeader::decode(page).flags & LEAF_PAGE == 0 {
                    return Err(corrupt("inline bucket page is not a leaf"));
                }
                for e in leaf_elements(page)? {
                    visit(&e)?;
                }
                Ok(())
            }
            BucketRef::Page(root) => self.walk(*root, 0, &mut |_, _| Ok(()), &mut visit),
        }
    }

    /// Walks the tree under `id` in key order: `on_page` sees every page (id, header),
    /// `on_leaf` every leaf element.
    fn walk(
        &self,
        id: u64,
        depth: usize,
        on_page: &mut dyn FnMut(u64, &PageHeader) -> Result<(), BoltError>,
        on_leaf: &mut dyn FnMut(&Element<'_>) -> Result<(), BoltError>,
    ) -> Result<(), BoltError> {
        if depth > MAX_DEPTH {
            return Err(corrupt(format!("page {id}: tree deeper than {MAX_DEPTH} levels (a cycle?)")));
        }
        let b = self.read_page(id)?;
        let h = PageHeader::decode(&b);
        on_page(id, &h)?;
        if h.flags & LEAF_PAGE != 0 {
            for e in leaf_elements(&b)? {
                on_leaf(&e)?;
            }
            Ok(())
        } else if h.flags & BRANCH_PAGE != 0 {
            for (_, child) in branch_elements(&b)? {
                self.walk(child, depth + 1, on_page, on_leaf)?;
            }
            Ok(())
        } else {
            Err(corrupt(format!("page {id}: invalid type: {}", h.type_name())))
        }
    }

    /// The value of `key` in the bucket (a nested bucket's value is its bucket header: see
    /// [`BucketRef::decode`]). Descends from the root as bbolt's cursor seek does: in a branch,
    /// the last child whose first key is <= `key`.
    pub fn get(&self, bucket: &BucketRef, key: &[u8]) -> Result<Option<Vec<u8>>, BoltError> {
        let find = |b: &[u8]| -> Result<Option<Vec<u8>>, BoltError> {
            Ok(leaf_elements(b)?.into_iter().find(|e| e.key == key).map(|e| e.value.to_vec()))
        };
        let mut id = match bucket {
            BucketRef::Inline(page) => return find(page),
            BucketRef::Page(root) => *root,
        };
        for _ in 0..=MAX_DEPTH {
            let b = self.read_page(id)?;
            let h = PageHeader::decode(&b);
            if h.flags & LEAF_PAGE != 0 {
                return find(&b);
            }
            if h.flags & BRANCH_PAGE == 0 {
                return Err(corrupt(format!("page {id}: invalid type: {}", h.type_name())));
            }
            let children = branch_elements(&b)?;
            let at = children.partition_point(|(first, _)| *first <= key);
            let Some(&(_, child)) = children.get(at.saturating_sub(1)) else {
                return Err(corrupt(format!("page {id}: empty branch")));
            };
            id = child;
        }
        Err(corrupt(format!("tree deeper than {MAX_DEPTH} levels (a cycle?)")))
    }

    /// The page ids on the freelist (empty when the file keeps no freelist).
    pub fn free_pages(&self) -> Result<Vec<u64>, BoltError> {
        if self.meta.freelist == NO_FREELIST {
            return Ok(Vec::new());
        }
        let b = self.read_page(self.meta.freelist)?;
        let h = PageHeader::decode(&b);
        if h.flags & FREELIST_PAGE == 0 {
            return Err(corrupt(format!("invalid freelist page: {}, page type is {}", h.id, h.type_name())));
        }
        let (start, count) = if h.count == 0xFFFF {
            (1usize, usize::try_from(u64_at(&b, PAGE_HEADER_SIZE)).unwrap_or(usize::MAX))
        } else {
            (0, h.count as usize)
        };
        let end = start.checked_add(count).filter(|&n| n.checked_mul(8).is_some_and(|bytes| PAGE_HEADER_SIZE + bytes <= b.len()));
        let Some(end) = end else {
            return Err(corrupt("freelist runs past its page"));
        };
        Ok((start..end).map(|i| u64_at(&b, PAGE_HEADER_SIZE + i * 8)).collect())
    }

    /// bbolt's consistency check (`tx.Check()`): every page below the high water mark is
    /// referenced exactly once or free, and tree pages are leaves or branches. Returns the
    /// problems found, in bbolt's words; an unreadable structure is an error.
    pub fn check(&self) -> Result<Vec<String>, BoltError> {
        let mut problems = Vec::new();
        let mut freed: HashMap<u64, ()> = HashMap::new();
        for id in self.free_pages()? {
            if freed.insert(id, ()).is_some() {
                problems.push(format!("page {id}: already freed"));
            }
        }
        let mut reachable: HashMap<u64, ()> = HashMap::new();
        reachable.insert(0, ());
        reachable.insert(1, ());
        if self.meta.freelist != NO_FREELIST {
            let b = self.read_page(self.meta.freelist)?;
            for i in 0..=u64::from(PageHeader::decode(&b).overflow) {
                reachable.insert(self.meta.freelist + i, ());
            }
        }
        self.check_bucket(self.meta.root, 0, &mut reachable, &freed, &mut problems)?;
        if self.meta.freelist != NO_FREELIST {
            for id in 0..self.meta.pgid {
                if !reachable.contains_key(&id) && !freed.contains_key(&id) {
                    problems.push(format!("page {id}: unreachable unfreed"));
                }
            }
        }
        Ok(problems)
    }

    fn check_bucket(
        &self,
        root: u64,
        depth: usize,
        reachable: &mut HashMap<u64, ()>,
        freed: &HashMap<u64, ()>,
        problems: &mut Vec<String>,
    ) -> Result<(), BoltError> {
        if depth > MAX_DEPTH {
            return Err(corrupt("buckets nested too deep (a cycle?)"));
        }
        let mut children = Vec::new();
        let mut on_page = |id: u64, h: &PageHeader| {
            for i in 0..=u64::from(h.overflow) {
                if reachable.insert(id + i, ()).is_some() {
                    problems.push(format!("page {}: multiple references", id + i));
                }
            }
            if freed.contains_key(&id) {
                problems.push(format!("page {id}: reachable freed"));
            }
            Ok(())
        };
        let mut on_leaf = |e: &Element<'_>| {
            if e.flags & BUCKET_LEAF != 0 {
                if let BucketRef::Page(p) = BucketRef::decode(e.value)? {
                    children.push(p);
                }
            }
            Ok(())
        };
        self.walk(root, 0, &mut on_page, &mut on_leaf)?;
        for child in children {
            self.check_bucket(child, depth + 1, reachable, freed, problems)?;
        }
        Ok(())
    }
}

#[cfg(test)]
impl BoltReader {
    /// Levels of the tree under `id` along its first path.
    pub(crate) fn tree_depth(&self, id: u64) -> Result<usize, BoltError> {
        let b = self.read_page(id)?;
        if PageHeader::decode(&b).flags & BRANCH_PAGE != 0 {
            let first = branch_elements(&b)?.first().map(|e| e.1).ok_or_else(|| corrupt("empty branch"))?;
            Ok(1 + self.tree_depth(first)?)
        } else {
            Ok(1)
        }
    }
}
