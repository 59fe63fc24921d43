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
//!
//! Threads: every chunk of one stream is read on the same long-lived reader thread (see
//! [`ChunkReaders`]), so the allocator's per-thread memory that a list churns through (redb's
//! page cache turning over, each chunk's keys and values) stays in one thread's heap and is
//! reused chunk after chunk and list after list, instead of piling up in every thread that
//! happened to read a chunk.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};

use etcd_auth::AuthInfo;
use etcd_mvcc::RangeStream;
use etcd_mvcc::MvccError;
use etcd_proto::etcdserverpb::{RangeRequest, RangeResponse, RangeStreamResponse};
use futures::Stream;

use super::EtcdServer;
use crate::errors::ServerError;

/// A stream in progress: the server (for headers and the auth revision) and the store cursor.
struct Streaming {
    server: Arc<EtcdServer>,
    auth: Option<AuthInfo>,
    /// None once the stream ended (after the final chunk or an error).
    cursor: Option<RangeStream>,
    /// The thread reading this stream's chunks (None: read on the task, no reader could start).
    reader: Option<ReaderSlot>,
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
        let reader = ChunkReaders::get().and_then(ChunkReaders::assign);
        let state = Streaming { server: self.clone(), auth, cursor: Some(cursor), reader };
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
    async fn next(&self, cursor: RangeStream) -> Result<(RangeStream, Option<RangeStreamResponse>), ServerError> {
        let (cursor, chunk) = match &self.reader {
            Some(slot) => slot.read(&self.server, cursor).await?,
            None => read_chunk(&self.server, cursor),
        };
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

/// What one chunk read gives back: the cursor, and the chunk (None after the final one).
type ChunkRead = (RangeStream, Result<Option<RangeResponse>, MvccError>);

fn read_chunk(server: &EtcdServer, mut cursor: RangeStream) -> ChunkRead {
    let chunk = cursor.next_chunk(&server.kv);
    (cursor, chunk)
}

/// A read for a reader thread to run.
type Job = Box<dyn FnOnce() + Send>;

/// The threads RangeStream chunks are read on: a few long-lived threads (up to the CPU count,
/// at most [`MAX_READERS`]), each stream bound to one of them for its whole life.
///
/// Why not the runtime's worker threads: a task hops between workers, and a chunk read on each
/// of them left mimalloc's pages of every worker holding what a list churns through (redb's page
/// cache turning over, a chunk's keys and values): a 1M-key list on a fresh server grew RSS by
/// 60-68 MiB with two workers, 34-36 MiB with all reads on one thread. Why not `spawn_blocking`:
/// pool threads come and go, and a pool thread that goes idle keeps what it allocated (the list
/// grew 56-102 MiB). Streams go to the reader with the fewest streams, the first one on a tie,
/// so lists one after another reuse one thread's memory while concurrent lists still read in
/// parallel.
struct ChunkReaders {
    readers: Vec<Reader>,
}

/// One reader thread: its queue of reads and the number of streams bound to it.
struct Reader {
    jobs: mpsc::Sender<Job>,
    streams: Arc<AtomicUsize>,
}

/// Reader threads at most: concurrent lists beyond this share readers.
const MAX_READERS: usize = 4;

impl ChunkReaders {
    /// The process's readers, started at the first RangeStream; None when no thread could start.
    fn get() -> Option<&'static ChunkReaders> {
        static READERS: OnceLock<Option<ChunkReaders>> = OnceLock::new();
        READERS.get_or_init(ChunkReaders::start).as_ref()
    }

    fn start() -> Option<ChunkReaders> {
        let wanted = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, MAX_READERS);
        let mut readers = Vec::with_capacity(wanted);
        for i in 0..wanted {
            let (jobs, queue) = mpsc::channel::<Job>();
            let spawned = std::thread::Builder::new().name(format!("range-reader-{i}")).spawn(move || {
                while let Ok(job) = queue.recv() {
                    // a read that panics ends its own stream (its answer channel is dropped), not
                    // the reader and the other streams bound to it
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                }
            });
            match spawned {
                Ok(_) => readers.push(Reader { jobs, streams: Arc::new(AtomicUsize::new(0)) }),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start a RangeStream reader thread");
                    break;
                }
            }
        }
        (!readers.is_empty()).then_some(ChunkReaders { readers })
    }

    /// Binds a new stream to the reader with the fewest streams (the first on a tie).
    fn assign(&'static self) -> Option<ReaderSlot> {
        let reader = self.readers.iter().min_by_key(|r| r.streams.load(Ordering::Relaxed))?;
        reader.streams.fetch_add(1, Ordering::Relaxed);
        Some(ReaderSlot { jobs: reader.jobs.clone(), streams: reader.streams.clone() })
    }
}

/// A stream's binding to its reader; dropping it (the stream ended or was cancelled) frees it.
struct ReaderSlot {
    jobs: mpsc::Sender<Job>,
    streams: Arc<AtomicUsize>,
}

impl ReaderSlot {
    /// Reads the next chunk on the reader thread and waits for it without blocking the task.
    async fn read(&self, server: &Arc<EtcdServer>, cursor: RangeStream) -> Result<ChunkRead, ServerError> {
        let (done, result) = tokio::sync::oneshot::channel();
        let server = server.clone();
        let job: Job = Box::new(move || {
            // the stream may be gone by now (client cancelled): then the chunk is just dropped
            let _ = done.send(read_chunk(&server, cursor));
        });
        self.jobs.send(job).map_err(|_| reader_gone())?;
        result.await.map_err(|_| reader_gone())
    }
}

impl Drop for ReaderSlot {
    fn drop(&mut self) {
        self.streams.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A read panicked (or its reader thread is gone): the stream ends with an error, not a hang.
fn reader_gone() -> ServerError {
    ServerError::Internal("RangeStream reader thread stopped".to_string())
}
