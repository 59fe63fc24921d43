//! `EtcdServer`'s RangeStream (etcd 3.7): the answer of Range, in chunks, read one at a time.
//!
//! The checks are Range's: a linearizable barrier unless serializable, the range permission
//! before the first read, and after every chunk's read the auth revision the permission was
//! checked at (a stale check ends the stream with "revision of auth store is old" instead of
//! sending the chunk). Chunks aim at `--max-request-bytes` each, as etcd's.
//!
//! Flow control: a chunk is read from the store only when the response stream is polled for it,
//! and the gRPC transport polls again only once the client's HTTP/2 window has taken the previous
//! one; so a slow client holds one chunk in memory, not the range.

use std::sync::Arc;

use etcd_auth::AuthInfo;
use etcd_mvcc::RangeStream;
use etcd_proto::etcdserverpb::{RangeRequest, RangeStreamResponse};
use futures::Stream;

use super::EtcdServer;
use crate::errors::ServerError;

/// A stream in progress: the server (for headers and the auth revision) and the store cursor.
struct Streaming {
    server: Arc<EtcdServer>,
    auth: Option<AuthInfo>,
    /// None once the stream ended (after the final chunk or an error).
    cursor: Option<RangeStream>,
}

impl EtcdServer {
    /// Checks `req` as Range does, then answers it chunk by chunk. `auth`: the client's identity
    /// (None: this member's own read, unchecked). The request's shape is the caller's to check.
    pub async fn range_stream(
        self: &Arc<Self>,
        req: RangeRequest,
        auth: Option<AuthInfo>,
    ) -> Result<impl Stream<Item = Result<RangeStreamResponse, ServerError>> + Send + 'static, ServerError> {
        if !req.serializable {
            self.linearizable_barrier().await?;
        }
        if let Some(ai) = &auth {
            self.auth.is_range_permitted(ai, &req.key, &req.range_end)?;
        }
        let cursor = RangeStream::new(req, self.cfg.max_request_bytes);
        let state = Streaming { server: self.clone(), auth, cursor: Some(cursor) };
        Ok(futures::stream::unfold(state, |mut st| async move {
            let cursor = st.cursor.take()?;
            match st.next(cursor).await {
                Ok((cursor, Some(resp))) => {
                    st.cursor = Some(cursor);
                    Some((Ok(resp), st))
                }
                Ok((_, None)) => None,
                Err(e) => Some((Err(e), st)),
            }
        }))
    }
}

impl Streaming {
    /// Reads the next chunk and gives the cursor back with it; None after the final chunk.
    ///
    /// Read on the task's own thread, as Range reads (a chunk is bounded, ~`--max-request-bytes`):
    /// the thread that encodes and frees a chunk is the one that allocated it, so the allocator
    /// reuses the same memory chunk after chunk. Reading on `spawn_blocking` threads left each
    /// pool thread holding the chunks it had allocated (mimalloc keeps per-thread pages, and a
    /// pool thread that goes idle never returns what other threads freed into them): +40-50 MiB
    /// of RSS per new pool thread over a 1M-key list.
    async fn next(&self, mut cursor: RangeStream) -> Result<(RangeStream, Option<RangeStreamResponse>), ServerError> {
        let chunk = cursor.next_chunk(&self.server.kv);
        let Some(mut resp) = chunk? else {
            return Ok((cursor, None));
        };
        self.server.check_auth_unchanged(self.auth.as_ref())?;
        if let Some(h) = &resp.header {
            resp.header = Some(self.server.header(h.revision));
        }
        Ok((cursor, Some(RangeStreamResponse { range_response: Some(resp) })))
    }
}
