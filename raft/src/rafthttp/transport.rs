//! [`HttpTransport`]: raft messages to and from peers over etcd's rafthttp.
//!
//! Per peer: two stream readers (tasks that GET the peer's `msgapp` and `message` streams and
//! hand what they read to [`RaftHost::process`]), up to two stream writers (attached by the
//! handler when the peer GETs our streams), and a pipeline (4 workers POSTing one message each
//! to `/raft`). A message goes, as in etcd's `peer.pick`: MsgApp to the msgapp writer, anything
//! else (or a MsgApp when that writer is down) to the message writer, and to the pipeline when
//! no writer is attached. MsgSnap goes to the snapshot sink: the server pairs it with its
//! database and calls [`HttpTransport::send_snapshot`].
//!
//! Invariant: [`Transport::send`] never waits. Every queue is bounded; a full queue drops the
//! message and reports the peer unreachable (raft retransmits). A stream writer replaced by a
//! newer GET, or whose connection closed, detaches itself, so a message is never queued to a
//! connection nobody reads.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use parking_lot::{Mutex, RwLock};
use raft::eraftpb::{Message, MessageType};
use tokio::sync::mpsc;

use super::client::{Connection, Identity, RequestBody, RequestError};
use super::codec::{self, MessageDecoder, MsgAppV2Decoder, MsgAppV2Encoder, StreamDecoder};
use super::headers::format_id;
use super::host::RaftHost;
use super::{StreamType, CONN_READ_TIMEOUT};
use crate::metrics::PeerMetrics;
use crate::peer_dial::PeerDialer;
use crate::transport::Transport;

/// etcd's `streamBufSize`: messages queued per stream writer.
const STREAM_QUEUE: usize = 4096;
/// etcd's pipeline: 4 connections, 64 queued messages.
const PIPELINE_WORKERS: usize = 4;
const PIPELINE_QUEUE: usize = 64;
/// etcd waits this long between stream dials.
const REDIAL_WAIT: Duration = Duration::from_millis(100);
const DIAL_TIMEOUT: Duration = Duration::from_secs(1);
/// Encoded bytes of one stream chunk before it is handed to the connection.
const MAX_CHUNK_BYTES: usize = 1 << 20;

/// How the transport is set up.
pub struct TransportConfig {
    pub identity: Identity,
    pub dialer: PeerDialer,
    pub timeouts: StreamTimeouts,
}

/// etcd's `--raft-read-timeout` / `--raft-write-timeout` (ConnReadTimeout / ConnWriteTimeout) for
/// the streams: a stream silent for `read` is redialled (writers send a link heartbeat every
/// third of it); a chunk its connection has not taken within `write` ends the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamTimeouts {
    pub read: Duration,
    pub write: Duration,
}

impl Default for StreamTimeouts {
    fn default() -> Self {
        StreamTimeouts { read: CONN_READ_TIMEOUT, write: CONN_READ_TIMEOUT }
    }
}

/// A writer attached to a peer's GET of one of our streams.
struct Writer {
    tx: mpsc::Sender<Message>,
    /// Which attachment this is: a writer detaches only its own.
    generation: u64,
}

struct Peer {
    id: u64,
    urls: Vec<String>,
    /// Indexed by [`writer_slot`].
    writers: Mutex<[Option<Writer>; 2]>,
    pipeline: mpsc::Sender<Message>,
    /// Which URL readers and the pipeline dial next (moves on after a failure).
    url_pick: AtomicUsize,
    /// True while a stream reader of that slot reads an accepted stream from the peer.
    /// (An Arc each: the reader holds its flag, not the peer, while it reads.)
    reading: [Arc<std::sync::atomic::AtomicBool>; 2],
    /// Bytes sent, send failures, the active-peer gauge and the round-trip times.
    metrics: Arc<PeerMetrics>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Peer {
    fn url(&self) -> &str {
        &self.urls[self.url_pick.load(Ordering::Relaxed) % self.urls.len()]
    }
    fn url_failed(&self) {
        self.url_pick.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.tasks.iter().for_each(|t| t.abort());
    }
}

fn writer_slot(t: StreamType) -> usize {
    match t {
        StreamType::MsgApp => 0,
        StreamType::Message => 1,
    }
}

pub struct HttpTransport {
    me: RwLock<Identity>,
    dialer: PeerDialer,
    host: Arc<dyn RaftHost>,
    peers: RwLock<HashMap<u64, Arc<Peer>>>,
    /// Members we only answer (etcd's "remotes": known from a request's X-PeerURLs, not yet
    /// in our membership): pipeline only, no streams.
    remotes: RwLock<HashMap<u64, Arc<Peer>>>,
    snapshot_sink: Mutex<Option<std::sync::mpsc::SyncSender<Message>>>,
    generation: AtomicU64,
    runtime: tokio::runtime::Handle,
    timeouts: StreamTimeouts,
}

impl HttpTransport {
    pub fn new(runtime: tokio::runtime::Handle, config: TransportConfig, host: Arc<dyn RaftHost>) -> Arc<HttpTransport> {
        Arc::new(HttpTransport {
            me: RwLock::new(config.identity),
            dialer: config.dialer,
            host,
            peers: RwLock::default(),
            remotes: RwLock::default(),
            snapshot_sink: Mutex::new(None),
            generation: AtomicU64::new(0),
            runtime,
            timeouts: config.timeouts,
        })
    }

    pub fn identity(&self) -> Identity {
        self.me.read().clone()
    }

    /// The cluster ID once known (a joining member learns it from the cluster).
    pub fn set_cluster_id(&self, cluster_id: u64) {
        self.me.write().cluster_id = cluster_id;
    }

    /// Who this member is, once known (a restarting member learns it from its WAL); before
    /// any peer is added.
    pub fn set_identity(&self, identity: Identity) {
        *self.me.write() = identity;
    }

    /// Dials peers as the streams do (for the server's own peer requests).
    pub fn dialer(&self) -> &PeerDialer {
        &self.dialer
    }

    /// The URLs of peer (or remote) `id`.
    pub fn peer_urls(&self, id: u64) -> Option<Vec<String>> {
        let peers = self.peers.read();
        peers.get(&id).or(self.remotes.read().get(&id)).map(|p| p.urls.clone())
    }

    pub fn host(&self) -> &Arc<dyn RaftHost> {
        &self.host
    }

    /// Adds a peer (or changes its URLs): starts its stream readers and pipeline.
    pub fn add_peer(self: &Arc<Self>, id: u64, urls: Vec<String>) {
        if id == self.me.read().id || urls.is_empty() {
            return;
        }
        if self.peers.read().get(&id).is_some_and(|p| p.urls == urls) {
            return;
        }
        let peer = self.start_peer(id, urls, true);
        self.remotes.write().remove(&id);
        tracing::info!(peer = %format_id(id), urls = ?peer.urls, "added rafthttp peer");
        self.peers.write().insert(id, peer);
    }

    /// etcd's `AddRemote`: a member we may answer before it is in our membership.
    pub fn add_remote(self: &Arc<Self>, id: u64, urls: Vec<String>) {
        if id == self.me.read().id || urls.is_empty() || self.peers.read().contains_key(&id) || self.remotes.read().contains_key(&id) {
            return;
        }
        let remote = self.start_peer(id, urls, false);
        self.remotes.write().insert(id, remote);
    }

    pub fn remove_peer(&self, id: u64) {
        let removed = self.peers.write().remove(&id);
        if let Some(peer) = removed {
            // End the streams it reads from us (their writer tasks hold the peer, so dropping it
            // would not): a removed member that missed the entry removing it dials them again
            // and is refused as removed, which stops it, as etcd's removed members stop.
            *peer.writers.lock() = [None, None];
            tracing::info!(peer = %format_id(id), "removed rafthttp peer");
        }
        self.remotes.write().remove(&id);
    }

    pub fn is_peer(&self, id: u64) -> bool {
        self.peers.read().contains_key(&id)
    }

    pub fn peer_ids(&self) -> Vec<u64> {
        self.peers.read().keys().copied().collect()
    }

    /// True while `id` has read our stream of type `t` (an attached writer).
    pub fn writer_attached(&self, id: u64, t: StreamType) -> bool {
        self.peers.read().get(&id).is_some_and(|p| p.writers.lock()[writer_slot(t)].is_some())
    }

    /// True while we read `id`'s stream of type `t` (the peer accepted our GET).
    pub fn reader_active(&self, id: u64, t: StreamType) -> bool {
        self.peers.read().get(&id).is_some_and(|p| p.reading[writer_slot(t)].load(Ordering::Relaxed))
    }

    /// Routes raft's MsgSnap to `sink` (the server pairs it with the database).
    pub fn set_snapshot_sink(&self, sink: std::sync::mpsc::SyncSender<Message>) {
        *self.snapshot_sink.lock() = Some(sink);
    }

    fn start_peer(self: &Arc<Self>, id: u64, urls: Vec<String>, streams: bool) -> Arc<Peer> {
        let (tx, rx) = mpsc::channel(PIPELINE_QUEUE);
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        let metrics = Arc::new(PeerMetrics::new(self.me.read().id, id));
        let mut peer = Peer {
            id,
            urls,
            writers: Mutex::default(),
            pipeline: tx,
            url_pick: AtomicUsize::new(0),
            reading: Default::default(),
            metrics: metrics.clone(),
            tasks: Vec::new(),
        };
        // the tasks get a handle to the peer through a cell filled below (they need its URLs)
        let cell: Arc<std::sync::OnceLock<std::sync::Weak<Peer>>> = Arc::default();
        for _ in 0..PIPELINE_WORKERS {
            let (t, cell, rx) = (Arc::downgrade(self), cell.clone(), rx.clone());
            peer.tasks.push(self.runtime.spawn(async move { pipeline_worker(t, cell, rx).await }));
        }
        if streams {
            for typ in [StreamType::MsgApp, StreamType::Message] {
                let (t, cell) = (Arc::downgrade(self), cell.clone());
                peer.tasks.push(self.runtime.spawn(async move { stream_reader(t, cell, typ).await }));
            }
            let (t, cell) = (Arc::downgrade(self), cell.clone());
            peer.tasks.push(self.runtime.spawn(crate::peer_probe::run(move || probe_once(t.clone(), cell.clone()), metrics)));
        }
        let peer = Arc::new(peer);
        let _ = cell.set(Arc::downgrade(&peer));
        peer
    }

    /// Attaches a writer for `from`'s GET of our stream `typ`; the chunks to send in the
    /// response body come out of the returned receiver. `None` when `from` is not a peer.
    pub(crate) fn attach_writer(&self, from: u64, typ: StreamType) -> Option<mpsc::Receiver<Bytes>> {
        let peer = self.peers.read().get(&from).cloned()?;
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let (chunks_tx, chunks_rx) = mpsc::channel(16);
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        // a newer GET replaces the older connection, as in etcd
        peer.writers.lock()[writer_slot(typ)] = Some(Writer { tx, generation });
        tracing::info!(peer = %format_id(from), stream = typ.name(), "peer opened a stream to read from us");
        self.runtime.spawn(stream_writer(peer, typ, generation, rx, chunks_tx, self.timeouts));
        Some(chunks_rx)
    }

    /// `POST /raft/snapshot` of `m` (a MsgSnap) and `db` to its peer; reports the outcome to
    /// raft ([`RaftHost::report_snapshot`]).
    pub async fn send_snapshot(&self, m: Message, db: RequestBody) -> Result<(), RequestError> {
        let to = m.to;
        let peer = self.peers.read().get(&to).cloned();
        let result = match peer {
            None => Err(RequestError::Io(format!("unknown peer {}", format_id(to)))),
            Some(peer) => {
                let me = self.identity();
                match Connection::open(&self.dialer, peer.url(), DIAL_TIMEOUT).await {
                    Ok(mut c) => c.post_snapshot(&m, db, &me).await,
                    Err(e) => Err(e),
                }
            }
        };
        if let Err(e) = &result {
            tracing::warn!(peer = %format_id(to), error = %e, "failed to send database snapshot");
            if *e == RequestError::Removed {
                self.host.removed_from_cluster();
            }
            self.host.report_unreachable(to);
        }
        self.host.report_snapshot(to, result.is_ok());
        result
    }
}

impl Transport for HttpTransport {
    fn send(&self, msgs: Vec<Message>) {
        let peers = self.peers.read();
        for m in msgs {
            let to = m.to;
            if m.get_msg_type() == MessageType::MsgSnapshot {
                let routed = self.snapshot_sink.lock().as_ref().is_some_and(|s| s.try_send(m).is_ok());
                if !routed {
                    tracing::warn!(peer = %format_id(to), "cannot send a snapshot now; raft will retry");
                    self.host.report_snapshot(to, false);
                }
                continue;
            }
            let peer = match peers.get(&to) {
                Some(p) => p.clone(),
                None => match self.remotes.read().get(&to) {
                    Some(r) => r.clone(),
                    None => {
                        tracing::debug!(peer = %format_id(to), "raft message for an unknown peer");
                        continue;
                    }
                },
            };
            let kind = m.get_msg_type();
            if !queue(&peer, m) {
                crate::metrics::sent_failure(to);
                tracing::debug!(peer = %format_id(to), ?kind, "peer queue full; dropping a raft message");
                self.host.report_unreachable(to);
            }
        }
    }
}

/// etcd's `peer.pick`, then a non-blocking queue; false when it is full (the message dropped).
fn queue(peer: &Peer, m: Message) -> bool {
    let writers = peer.writers.lock();
    let writer = if m.get_msg_type() == MessageType::MsgAppend {
        writers[0].as_ref().or(writers[1].as_ref())
    } else {
        writers[1].as_ref()
    };
    match writer {
        Some(w) => w.tx.try_send(m).is_ok(),
        None => peer.pipeline.try_send(m).is_ok(),
    }
}

/// Encodes queued messages (and a link heartbeat when idle) into chunks of a stream response.
async fn stream_writer(
    peer: Arc<Peer>,
    typ: StreamType,
    generation: u64,
    mut rx: mpsc::Receiver<Message>,
    chunks: mpsc::Sender<Bytes>,
    timeouts: StreamTimeouts,
) {
    let active = peer.metrics.activate();
    let mut msgapp = MsgAppV2Encoder::default();
    let mut tick = tokio::time::interval(timeouts.read / 3);
    tick.tick().await;
    loop {
        let first = tokio::select! {
            m = rx.recv() => m,
            _ = tick.tick() => Some(codec::link_heartbeat()),
            _ = chunks.closed() => None,
        };
        let Some(first) = first else { break };
        let mut buf = Vec::new();
        let mut next = Some(first);
        while let Some(m) = next.take() {
            match typ {
                StreamType::MsgApp => msgapp.encode(&m, &mut buf),
                StreamType::Message => codec::encode_message_frame(&m, &mut buf),
            }
            if buf.len() < MAX_CHUNK_BYTES {
                next = rx.try_recv().ok();
            }
        }
        let len = buf.len();
        if !matches!(tokio::time::timeout(timeouts.write, chunks.send(Bytes::from(buf))).await, Ok(Ok(()))) {
            peer.metrics.failed();
            break;
        }
        peer.metrics.sent(len);
    }
    let mut writers = peer.writers.lock();
    let slot = &mut writers[writer_slot(typ)];
    if slot.as_ref().is_some_and(|w| w.generation == generation) {
        *slot = None;
        tracing::info!(peer = %format_id(peer.id), stream = typ.name(), "peer stream writer closed");
    }
    drop(writers);
    drop(active);
}

/// One `GET /raft/probing` on a connection of its own; true when it was answered.
async fn probe_once(t: std::sync::Weak<HttpTransport>, cell: Arc<std::sync::OnceLock<std::sync::Weak<Peer>>>) -> bool {
    let (Some(tr), Some(peer)) = (t.upgrade(), cell.get().and_then(|p| p.upgrade())) else { return false };
    let me = tr.identity();
    let url = peer.url().to_string();
    let dialer = tr.dialer.clone();
    drop((tr, peer));
    match Connection::open(&dialer, &url, DIAL_TIMEOUT).await {
        Ok(mut c) => c.call("GET", super::PROBING_PATH, None, Bytes::new(), &me).await.is_ok_and(|a| a.status.is_success()),
        Err(_) => false,
    }
}

/// Dials `typ` on the peer and hands what it writes to raft, redialling until the peer goes.
async fn stream_reader(t: std::sync::Weak<HttpTransport>, cell: Arc<std::sync::OnceLock<std::sync::Weak<Peer>>>, typ: StreamType) {
    loop {
        tokio::time::sleep(REDIAL_WAIT).await;
        let (Some(tr), Some(peer)) = (t.upgrade(), cell.get().and_then(|p| p.upgrade())) else { return };
        let me = tr.identity();
        let url = peer.url().to_string();
        let opened = match Connection::open(&tr.dialer, &url, DIAL_TIMEOUT).await {
            Ok(mut c) => c.open_stream(typ, &me, peer.id).await.map(|b| (c, b)),
            Err(e) => Err(e),
        };
        let (_conn, body) = match opened {
            Ok(ok) => ok,
            Err(RequestError::Removed) => {
                tracing::warn!(peer = %format_id(peer.id), "peer says this member was removed from the cluster");
                tr.host.removed_from_cluster();
                return;
            }
            Err(e) => {
                tracing::debug!(peer = %format_id(peer.id), url = %url, stream = typ.name(), error = %e, "cannot open stream");
                peer.url_failed();
                continue;
            }
        };
        tracing::info!(peer = %format_id(peer.id), stream = typ.name(), "established a stream to read from the peer");
        let decoder = match typ {
            StreamType::MsgApp => StreamDecoder::MsgAppV2(MsgAppV2Decoder::new(me.id, peer.id)),
            StreamType::Message => StreamDecoder::Message(MessageDecoder::default()),
        };
        let host = tr.host.clone();
        let received = crate::metrics::peer_received(peer.id);
        let reading = peer.reading[writer_slot(typ)].clone();
        let read_timeout = tr.timeouts.read;
        // a removed peer must be droppable (aborting this task) while its stream is read
        drop((tr, peer));
        reading.store(true, Ordering::Relaxed);
        let end = read_stream(body, decoder, &*host, &received, read_timeout).await;
        reading.store(false, Ordering::Relaxed);
        tracing::info!(stream = typ.name(), reason = %end, "stream from peer ended");
    }
}

/// Reads a stream body to its end (or until it is silent for `read_timeout`).
async fn read_stream(
    mut body: hyper::body::Incoming,
    mut dec: StreamDecoder,
    host: &dyn RaftHost,
    received: &prometheus::IntCounter,
    read_timeout: Duration,
) -> String {
    let mut buf = Vec::new();
    loop {
        let frame = match tokio::time::timeout(read_timeout, body.frame()).await {
            Err(_) => return format!("no data (not even a link heartbeat) for {read_timeout:?}"),
            Ok(None) => return "closed by the peer".into(),
            Ok(Some(Err(e))) => return e.to_string(),
            Ok(Some(Ok(f))) => f,
        };
        let Ok(data) = frame.into_data() else { continue };
        received.inc_by(data.len() as u64);
        buf.extend_from_slice(&data);
        let msgs = match dec.drain(&mut buf) {
            Ok(m) => m,
            Err(e) => return e.to_string(),
        };
        for m in msgs {
            if codec::is_link_heartbeat(&m) {
                continue;
            }
            if let Err(e) = host.process(m) {
                tracing::debug!(error = %e, "raft message from a stream not processed");
            }
        }
    }
}

/// POSTs queued messages one by one on a keep-alive connection.
async fn pipeline_worker(
    t: std::sync::Weak<HttpTransport>,
    cell: Arc<std::sync::OnceLock<std::sync::Weak<Peer>>>,
    rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Message>>>,
) {
    let mut conn: Option<Connection> = None;
    loop {
        let Some(m) = rx.lock().await.recv().await else { return };
        let (Some(tr), Some(peer)) = (t.upgrade(), cell.get().and_then(|p| p.upgrade())) else { return };
        let me = tr.identity();
        if !conn.as_ref().is_some_and(Connection::is_usable) {
            conn = Connection::open(&tr.dialer, peer.url(), DIAL_TIMEOUT).await.ok();
        }
        let result = match conn.as_mut() {
            Some(c) => c.post_message(&m, &me).await,
            None => Err(RequestError::Io("cannot connect".into())),
        };
        match &result {
            Ok(()) => peer.metrics.sent(protobuf::Message::compute_size(&m) as usize),
            Err(_) => peer.metrics.failed(),
        }
        if let Err(e) = result {
            tracing::debug!(peer = %format_id(peer.id), error = %e, "pipeline POST failed");
            conn = None;
            peer.url_failed();
            if e == RequestError::Removed {
                tr.host.removed_from_cluster();
            }
            tr.host.report_unreachable(m.to);
            if m.get_msg_type() == MessageType::MsgSnapshot {
                tr.host.report_snapshot(m.to, false);
            }
        }
    }
}
