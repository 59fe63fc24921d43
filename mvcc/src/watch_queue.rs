//! The outbound queue of one watch stream: what the hub has for the client, in order.
//!
//! Invariant: event responses are admitted only while the queue is under its bounds (a count
//! and a byte budget; an empty queue always takes one response), so a client that stops reading
//! costs at most one queue's worth of memory; the hub then parks the watcher aside (a victim)
//! instead of blocking. Control responses (created, canceled, stream-wide progress) are always
//! admitted; the gRPC layer stops reading client requests while the queue is over
//! [`CONTROL_SLACK`] above its count bound, so they are bounded too.

use std::collections::VecDeque;
use std::sync::Arc;

use etcd_proto::mvccpb::Event;
use parking_lot::{Condvar, Mutex};

/// Control responses a full queue still takes before the reader of client requests waits.
pub const CONTROL_SLACK: usize = 16;

/// One response for the client, before the server adds its header.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchMessage {
    /// The answer to a create request; `cancel_reason` set when the watcher was refused (then
    /// `watch_id` is -1, as etcd answers).
    Created {
        watch_id: i64,
        revision: i64,
        cancel_reason: Option<String>,
    },
    /// The answer to a cancel request.
    Canceled { watch_id: i64, revision: i64 },
    /// Events of whole revisions, in revision order; `revision` is what the watcher has now
    /// seen up to. `prev_kv` / `fragment` are the watcher's options.
    Events {
        watch_id: i64,
        revision: i64,
        events: Vec<Arc<Event>>,
        prev_kv: bool,
        fragment: bool,
    },
    /// The watcher's start revision was compacted: it is cancelled.
    Compacted { watch_id: i64, compact_revision: i64 },
    /// Every event up to `revision` has been sent (`watch_id` -1: for the whole stream).
    Progress { watch_id: i64, revision: i64 },
}

impl WatchMessage {
    fn size(&self) -> usize {
        use prost::Message;
        match self {
            WatchMessage::Events { events, .. } => {
                64 + events.iter().map(|e| e.encoded_len() + 8).sum::<usize>()
            }
            _ => 64,
        }
    }
}

/// Wakes the hub's sync thread.
#[derive(Default)]
pub(crate) struct Kick {
    flag: Mutex<bool>,
    cv: Condvar,
}

impl Kick {
    pub fn kick(&self) {
        *self.flag.lock() = true;
        self.cv.notify_one();
    }

    /// Waits for a kick or the timeout; clears the kick.
    pub fn wait(&self, timeout: std::time::Duration) {
        let mut f = self.flag.lock();
        if !*f {
            self.cv.wait_for(&mut f, timeout);
        }
        *f = false;
    }
}

struct Inner {
    items: VecDeque<WatchMessage>,
    bytes: usize,
    /// An event response was refused since the last drain: the hub holds victims for us.
    blocked: bool,
    closed: bool,
}

/// The bounded queue between the hub and one stream's sender.
pub struct StreamQueue {
    inner: Mutex<Inner>,
    ready: tokio::sync::Notify,
    room: tokio::sync::Notify,
    max_items: usize,
    max_bytes: usize,
    kick: Arc<Kick>,
}

impl StreamQueue {
    pub(crate) fn new(max_items: usize, max_bytes: usize, kick: Arc<Kick>) -> StreamQueue {
        StreamQueue {
            inner: Mutex::new(Inner {
                items: VecDeque::new(),
                bytes: 0,
                blocked: false,
                closed: false,
            }),
            ready: tokio::sync::Notify::new(),
            room: tokio::sync::Notify::new(),
            max_items: max_items.max(1),
            max_bytes,
            kick,
        }
    }

    /// Admits an event (or per-watcher progress) response if under the bounds; gives it back
    /// otherwise.
    pub(crate) fn try_push(&self, msg: WatchMessage) -> Result<(), WatchMessage> {
        let size = msg.size();
        let mut q = self.inner.lock();
        if q.closed {
            return Ok(()); // nobody reads any more: drop it
        }
        if !q.items.is_empty() && (q.items.len() >= self.max_items || q.bytes + size > self.max_bytes) {
            q.blocked = true;
            return Err(msg);
        }
        q.bytes += size;
        q.items.push_back(msg);
        drop(q);
        self.ready.notify_one();
        Ok(())
    }

    /// Whether an event response of no size would be admitted now.
    pub(crate) fn has_room(&self) -> bool {
        let q = self.inner.lock();
        q.items.len() < self.max_items && q.bytes < self.max_bytes
    }

    /// Appends a control response regardless of the bounds.
    pub(crate) fn push_control(&self, msg: WatchMessage) {
        let size = msg.size();
        let mut q = self.inner.lock();
        if q.closed {
            return;
        }
        q.bytes += size;
        q.items.push_back(msg);
        drop(q);
        self.ready.notify_one();
    }

    pub(crate) fn close(&self) {
        self.inner.lock().closed = true;
        self.ready.notify_one();
        self.room.notify_one();
    }

    /// The next response; `None` once the stream is closed. One reader at a time.
    pub async fn recv(&self) -> Option<WatchMessage> {
        loop {
            {
                let mut q = self.inner.lock();
                if let Some(m) = q.items.pop_front() {
                    q.bytes -= m.size();
                    let len = q.items.len();
                    if q.blocked && len <= self.max_items / 2 {
                        q.blocked = false;
                        self.kick.kick();
                    }
                    drop(q);
                    self.room.notify_one();
                    return Some(m);
                }
                if q.closed {
                    return None;
                }
            }
            self.ready.notified().await;
        }
    }

    /// Waits until the queue may take more control responses (the reader of client requests
    /// calls it before handling each request).
    pub async fn control_room(&self) {
        loop {
            {
                let q = self.inner.lock();
                if q.closed || q.items.len() < self.max_items + CONTROL_SLACK {
                    return;
                }
            }
            self.room.notified().await;
        }
    }

    /// Responses waiting to be sent.
    pub fn len(&self) -> usize {
        self.inner.lock().items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
