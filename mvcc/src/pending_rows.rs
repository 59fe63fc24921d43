//! Key-table rows of batches that are applied and published but not yet committed to the
//! backend.
//!
//! The applier keeps one backend write transaction open across batches and commits it only when
//! the batch interval or limit says the backend should be made durable (as etcd's batch tx
//! does). A published batch's rows are therefore in that open transaction, which readers cannot
//! see; they find them here instead. Each batch adds one immutable chunk; a backend commit
//! clears them all.
//!
//! Reader rule: load the published revision, then [`PendingRows`], then open the backend read
//! transaction. Rows leave this list only after the commit that holds them, so every row at or
//! below the published revision is in the list taken or in the read transaction opened after it.
//! The list and the read transaction may hold the same row; the list's copy wins.

use std::ops::ControlFlow;
use std::sync::Arc;

use redb::ReadOnlyTable;

use crate::MvccError;

/// One row: the key-table key (encoded revision, with the tombstone mark) and value.
pub(crate) type Row = (Vec<u8>, Vec<u8>);

/// The uncommitted batches' rows, in key (revision) order: each chunk is sorted and every key
/// of a chunk is above every key of the chunk before it.
#[derive(Default, Clone)]
pub(crate) struct PendingRows {
    chunks: Vec<Arc<[Row]>>,
}

impl PendingRows {
    /// Adds a published batch's rows (all above the rows already here).
    pub(crate) fn push(&mut self, rows: Vec<Row>) {
        if !rows.is_empty() {
            self.chunks.push(rows.into());
        }
    }

    /// The smallest key held, if any.
    fn first_key(&self) -> Option<&[u8]> {
        self.chunks.first().map(|c| c[0].0.as_slice())
    }

    /// The value stored under `key`.
    pub(crate) fn get(&self, key: &[u8]) -> Option<&[u8]> {
        if self.first_key().is_none_or(|first| key < first) {
            return None;
        }
        // the first chunk whose last key is >= key
        let at = self
            .chunks
            .partition_point(|c| c[c.len() - 1].0.as_slice() < key);
        let chunk = self.chunks.get(at)?;
        chunk
            .binary_search_by(|(k, _)| k.as_slice().cmp(key))
            .ok()
            .map(|i| chunk[i].1.as_slice())
    }

    /// Visits the rows with keys in `[lo, hi)` in key order: the committed ones from `table`,
    /// then those held here (which are above every committed row a reader may need).
    pub(crate) fn scan(
        &self,
        table: &ReadOnlyTable<&'static [u8], &'static [u8]>,
        lo: &[u8],
        hi: &[u8],
        mut f: impl FnMut(&[u8], &[u8]) -> Result<ControlFlow<()>, MvccError>,
    ) -> Result<(), MvccError> {
        let split = self.first_key().unwrap_or(hi).min(hi);
        if lo < split {
            for row in table.range::<&[u8]>(lo..split)? {
                let (k, v) = row?;
                if f(k.value(), v.value())?.is_break() {
                    return Ok(());
                }
            }
        }
        let lo = lo.max(split);
        for chunk in &self.chunks {
            for (k, v) in chunk.iter() {
                if k.as_slice() < lo {
                    continue;
                }
                if k.as_slice() >= hi {
                    return Ok(());
                }
                if f(k, v)?.is_break() {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::ReadableDatabase;

    fn rows(keys: &[&str]) -> Vec<Row> {
        keys.iter().map(|k| (k.as_bytes().to_vec(), format!("v{k}").into_bytes())).collect()
    }

    #[test]
    fn get_finds_rows_across_chunks_and_nothing_else() {
        let mut p = PendingRows::default();
        assert_eq!(p.get(b"b"), None);
        p.push(rows(&["b", "c"]));
        p.push(Vec::new());
        p.push(rows(&["e"]));
        p.push(rows(&["f", "g", "h"]));
        for k in ["b", "c", "e", "f", "g", "h"] {
            assert_eq!(p.get(k.as_bytes()), Some(format!("v{k}").as_bytes()), "{k}");
        }
        for k in ["a", "bb", "d", "ff", "i"] {
            assert_eq!(p.get(k.as_bytes()), None, "{k}");
        }
    }

    #[test]
    fn scan_merges_committed_rows_below_the_pending_ones() {
        const T: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("t");
        let dir = tempfile::tempdir().unwrap();
        let db = redb::Database::create(dir.path().join("db")).unwrap();
        let w = db.begin_write().unwrap();
        {
            let mut t = w.open_table(T).unwrap();
            // "d" is committed and pending both (a commit not yet cleared): pending wins
            for k in ["a", "b", "d"] {
                t.insert(k.as_bytes(), b"committed".as_slice()).unwrap();
            }
        }
        w.commit().unwrap();
        let r = db.begin_read().unwrap();
        let table = r.open_table(T).unwrap();
        let mut p = PendingRows::default();
        p.push(rows(&["d", "e"]));
        p.push(rows(&["f"]));
        let collect = |lo: &str, hi: &str, stop_at: Option<&str>| {
            let mut seen = Vec::new();
            p.scan(&table, lo.as_bytes(), hi.as_bytes(), |k, v| {
                let k = String::from_utf8(k.to_vec()).unwrap();
                let v = String::from_utf8(v.to_vec()).unwrap();
                let stop = Some(k.as_str()) == stop_at;
                seen.push(format!("{k}={v}"));
                Ok(if stop { ControlFlow::Break(()) } else { ControlFlow::Continue(()) })
            })
            .unwrap();
            seen
        };
        assert_eq!(collect("a", "z", None), ["a=committed", "b=committed", "d=vd", "e=ve", "f=vf"]);
        assert_eq!(collect("b", "f", None), ["b=committed", "d=vd", "e=ve"]);
        assert_eq!(collect("e", "z", None), ["e=ve", "f=vf"]);
        assert_eq!(collect("a", "c", None), ["a=committed", "b=committed"]);
        assert_eq!(collect("a", "z", Some("d")), ["a=committed", "b=committed", "d=vd"]);
        assert_eq!(collect("a", "z", Some("a")), ["a=committed"]);
    }
}
