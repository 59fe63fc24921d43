//! etcd 3.7's RangeStream read: the answer of one Range, in chunks.
//!
//! Invariants:
//! - every chunk reads at the same revision: the request's, or the published revision the first
//!   chunk saw (etcd pins it the same way), and the final chunk's header carries that first
//!   chunk's current revision, the one Range's header would carry;
//! - merged in order (protobuf merge), the chunks equal the RangeResponse Range gives for the same
//!   request at that revision: disjoint `kvs` in key order, then `more`, `count` and the header on
//!   the final chunk only;
//! - a chunk takes from the index only the revisions it returns, plus one to know whether there
//!   is more, and reads their rows in a read transaction of its own: memory is bounded by the
//!   chunk, not the range, and no read transaction stays open while the client is slow
//!   (defragmentation and physical compaction go on). Consistency comes from the pinned revision:
//!   a compaction past it fails the next chunk with `Compacted`, as etcd's per-chunk Range does.
//!
//! Requests RangeStream refuses (custom sort orders, revision filters) are the server's to refuse.
//! A sort target other than the key with no sort order, which Range answers sorted ascending by
//! that target, is read whole and then cut into chunks: the one shape whose memory is the
//! range's (etcd sorts each chunk alone there, which loses keys once a range needs two chunks).

use std::collections::VecDeque;

use etcd_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use etcd_proto::etcdserverpb::{RangeRequest, RangeResponse};
use etcd_proto::mvccpb::KeyValue;
use prost::Message;

use crate::index::range_end;
use crate::kv_view::{header, Rows, View};
use crate::{KvStore, MvccError};

/// The first chunk's limit (etcd's initialStreamChunkLimit); later ones adapt to their size.
pub const INITIAL_CHUNK_LIMIT: usize = 10;

/// One RangeStream in progress: what is left to read, and what the final chunk will say.
pub struct RangeStream {
    req: RangeRequest,
    /// Bytes a chunk aims at (etcd: `--max-request-bytes`).
    target_bytes: usize,
    /// Keys the next chunk may return.
    chunk_limit: usize,
    /// Keys the request allows in all (its limit; unlimited when <= 0).
    total_limit: Option<usize>,
    /// Keys sent so far.
    sent: usize,
    /// The current revision the first chunk saw (0 before it).
    header_rev: i64,
    source: Source,
}

enum Source {
    /// Read from the index chunk by chunk, from `req.key` on.
    Index,
    /// Sorted by a target other than the key: Range's whole answer, handed out in chunks.
    Whole { kvs: VecDeque<KeyValue>, more: bool, count: i64 },
    /// The final chunk was given.
    Done,
}

/// What one chunk read found.
struct Chunk {
    kvs: Vec<KeyValue>,
    /// Keys beyond this chunk at the pinned revision (ignoring the request's limit).
    more: bool,
}

impl RangeStream {
    /// A stream answering `req`; chunks aim at `target_bytes` each.
    pub fn new(req: RangeRequest, target_bytes: usize) -> RangeStream {
        let total_limit = usize::try_from(req.limit).ok().filter(|l| *l > 0);
        RangeStream {
            chunk_limit: total_limit.map_or(INITIAL_CHUNK_LIMIT, |l| l.min(INITIAL_CHUNK_LIMIT)),
            total_limit,
            req,
            target_bytes: target_bytes.max(1),
            sent: 0,
            header_rev: 0,
            source: Source::Index,
        }
    }

    /// The next chunk, or None after the final one. An error ends the stream.
    pub fn next_chunk(&mut self, store: &KvStore) -> Result<Option<RangeResponse>, MvccError> {
        let result = self.read_next(store);
        if !matches!(result, Ok(Some(_))) {
            self.source = Source::Done;
        }
        result
    }

    fn read_next(&mut self, store: &KvStore) -> Result<Option<RangeResponse>, MvccError> {
        if matches!(self.source, Source::Done) {
            return Ok(None);
        }
        if self.header_rev == 0 {
            return self.first_chunk(store).map(Some);
        }
        self.following_chunk(store).map(Some)
    }

    /// Pins the revision; answers count-only requests and whole-sorted ones here.
    fn first_chunk(&mut self, store: &KvStore) -> Result<RangeResponse, MvccError> {
        if self.req.count_only || sorted_by_other_target(&self.req) {
            // Range's own answer: a count, or every key sorted (then cut into chunks)
            let whole = store.range(&self.req)?;
            self.header_rev = whole.header.as_ref().map_or(0, |h| h.revision);
            if self.req.count_only {
                self.source = Source::Done;
                return Ok(RangeResponse { header: header(self.header_rev), count: whole.count, ..Default::default() });
            }
            self.source = Source::Whole { kvs: whole.kvs.into(), more: whole.more, count: whole.count };
            return Ok(self.whole_chunk());
        }
        let current = store.current_revision();
        let chunk = store.read_chunk(&self.req, current, self.chunk_limit)?;
        self.header_rev = current;
        if self.req.revision <= 0 {
            self.req.revision = current;
        }
        self.index_chunk(store, chunk)
    }

    fn following_chunk(&mut self, store: &KvStore) -> Result<RangeResponse, MvccError> {
        if matches!(self.source, Source::Whole { .. }) {
            return Ok(self.whole_chunk());
        }
        let chunk = store.read_chunk(&self.req, store.current_revision(), self.chunk_limit)?;
        self.index_chunk(store, chunk)
    }

    /// Turns a chunk read from the index into its response, and sets up the next one.
    fn index_chunk(&mut self, store: &KvStore, chunk: Chunk) -> Result<RangeResponse, MvccError> {
        self.sent += chunk.kvs.len();
        let done = !chunk.more || Some(self.sent) == self.total_limit;
        let mut next_key = Vec::new();
        if let Some(last) = chunk.kvs.last() {
            next_key.reserve_exact(last.key.len() + 1);
            next_key.extend_from_slice(&last.key);
            next_key.push(0);
        }
        let mut out = RangeResponse { kvs: chunk.kvs, ..Default::default() };
        if done {
            self.source = Source::Done;
            let rest = if chunk.more { store.count_at(&next_key, &self.req.range_end, self.req.revision)? } else { 0 };
            out.header = header(self.header_rev);
            out.more = chunk.more;
            out.count = (self.sent + rest) as i64;
            return Ok(out);
        }
        self.req.key = next_key;
        self.chunk_limit = adjust_chunk_limit(self.chunk_limit, out.encoded_len(), self.target_bytes);
        if let Some(total) = self.total_limit {
            self.chunk_limit = self.chunk_limit.min(total - self.sent);
        }
        Ok(out)
    }

    /// The next chunk of a whole answer: as many keys as the chunk limit allows.
    fn whole_chunk(&mut self) -> RangeResponse {
        let Source::Whole { kvs, more, count } = &mut self.source else {
            return RangeResponse::default();
        };
        let take = self.chunk_limit.min(kvs.len());
        let mut out = RangeResponse { kvs: kvs.drain(..take).collect(), ..Default::default() };
        if kvs.is_empty() {
            out.header = header(self.header_rev);
            out.more = *more;
            out.count = *count;
            self.source = Source::Done;
        } else {
            self.chunk_limit = adjust_chunk_limit(self.chunk_limit, out.encoded_len(), self.target_bytes);
        }
        out
    }
}

/// Range sorts by a target other than the key when no order is given (ascending).
fn sorted_by_other_target(req: &RangeRequest) -> bool {
    req.sort_order == SortOrder::None as i32 && req.sort_target != SortTarget::Key as i32
}

/// The next chunk's limit: doubled when the last chunk was under half the target size, halved
/// when over twice it (etcd's adjustChunkLimit; the band avoids thrashing); at least 1.
pub fn adjust_chunk_limit(last_limit: usize, last_size: usize, target: usize) -> usize {
    let next = if last_size < target / 2 {
        last_limit.saturating_mul(2)
    } else if last_size > target.saturating_mul(2) {
        last_limit / 2
    } else {
        last_limit
    };
    next.max(1)
}

impl KvStore {
    /// Up to `limit` keys of `req`'s range from `req.key` on, at `req.revision` (0: `current`),
    /// read in one read transaction; `keys_only` clears values as Range does.
    fn read_chunk(&self, req: &RangeRequest, current: i64, limit: usize) -> Result<Chunk, MvccError> {
        crate::metrics::range_read();
        let (rows, _txn) = self.read_rows()?;
        let view = View { index: &self.index, rows: &rows, current, compact_floor: 0 };
        let rev = view.read_rev(req.revision)?;
        let mut revs = self.index.first_revisions_checked(&req.key, range_end(&req.range_end), rev, limit.saturating_add(1))?;
        let more = revs.len() > limit;
        revs.truncate(limit);
        // exact capacity: collecting a Result gives no size hint, and a doubled Vec of up to
        // ~5,000 rows would leave a chunk's worth of slack in a bigger size class each chunk
        let mut kvs = Vec::with_capacity(revs.len());
        for r in &revs {
            kvs.push(rows.kv(*r)?);
        }
        if req.keys_only {
            for kv in &mut kvs {
                kv.value.clear();
            }
        }
        Ok(Chunk { kvs, more })
    }

    /// Number of keys of `[key, range_end)` live at `revision` (a pinned, published revision).
    fn count_at(&self, key: &[u8], end: &[u8], revision: i64) -> Result<usize, MvccError> {
        self.index.count_checked(key, range_end(end), revision)
    }
}
