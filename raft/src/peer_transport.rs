//! `GrpcTransport`: raft messages to other members over their peer gRPC service.
//!
//! One task per peer owns a bounded queue and one client stream (`Peer.Raft`) to that peer;
//! messages queued while the stream is up go out in batches. The raft loop never waits on the
//! network: a full queue drops the message (raft retransmits) and a broken connection is
//! reported as unreachable, then retried with backoff. A slow peer therefore never blocks the
//! leader, and its memory is bounded by its queue.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use etcd_proto::etcdrspb::peer_client::PeerClient;
use etcd_proto::etcdrspb::RaftBatch;
use parking_lot::RwLock;
use protobuf::Message as _;
use raft::eraftpb::Message;
use tokio::sync::mpsc;

use crate::node::RaftNode;
use crate::peer_dial::PeerDialer;
use crate::transport::Transport;

/// Messages queued per peer before new ones are dropped.
const PEER_QUEUE: usize = 4096;
/// At most this many messages (or bytes) go in one batch on the stream.
const MAX_BATCH_MSGS: usize = 512;
const MAX_BATCH_BYTES: usize = 4 << 20;
const DIAL_TIMEOUT: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

struct PeerLink {
    urls: Vec<String>,
    tx: mpsc::Sender<Message>,
    task: tokio::task::JoinHandle<()>,
}

pub struct GrpcTransport {
    /// Outgoing peer connections: from the member's own peer IP, TLS for https peer URLs.
    dialer: PeerDialer,
    local_id: AtomicU64,
    cluster_id: AtomicU64,
    peers: RwLock<HashMap<u64, PeerLink>>,
    node: OnceLock<RaftNode>,
    /// Where MsgSnapshot goes: the applier, which alone can pair it with backend contents.
    snapshot_sink: OnceLock<std::sync::mpsc::SyncSender<Message>>,
    runtime: tokio::runtime::Handle,
    /// Turns true when a peer refuses our messages because we were removed from the cluster
    /// (a removed member that missed the entry removing it learns it this way, as in etcd).
    removed: Arc<tokio::sync::watch::Sender<bool>>,
}

impl GrpcTransport {
    pub fn new(runtime: tokio::runtime::Handle, dialer: PeerDialer) -> Arc<GrpcTransport> {
        Arc::new(GrpcTransport {
            dialer,
            local_id: AtomicU64::new(0),
            cluster_id: AtomicU64::new(0),
            peers: RwLock::new(HashMap::new()),
            node: OnceLock::new(),
            snapshot_sink: OnceLock::new(),
            runtime,
            removed: Arc::new(tokio::sync::watch::channel(false).0),
        })
    }

    /// Turns true once a peer said this member was removed from the cluster.
    pub fn removed_by_peers(&self) -> tokio::sync::watch::Receiver<bool> {
        self.removed.subscribe()
    }

    /// Who we are (known once the WAL is open) and the node to report unreachable peers to.
    pub fn bind(&self, local_id: u64, cluster_id: u64, node: RaftNode) {
        self.local_id.store(local_id, Ordering::Relaxed);
        self.cluster_id.store(cluster_id, Ordering::Relaxed);
        let _ = self.node.set(node);
    }

    /// Adds a peer or changes its URLs; our own ID is ignored.
    pub fn set_peer(&self, id: u64, urls: Vec<String>) {
        if id == self.local_id.load(Ordering::Relaxed) || urls.is_empty() {
            return;
        }
        let mut peers = self.peers.write();
        if peers.get(&id).is_some_and(|p| p.urls == urls) {
            return;
        }
        if let Some(old) = peers.remove(&id) {
            old.task.abort();
        }
        let (tx, rx) = mpsc::channel(PEER_QUEUE);
        let metrics = Arc::new(crate::metrics::PeerMetrics::new(self.local_id.load(Ordering::Relaxed), id));
        let probe = crate::peer_probe::probe(self.dialer.clone(), urls.clone(), metrics.clone());
        let link = PeerLinkTask {
            metrics,
            peer_id: id,
            urls: urls.clone(),
            from: self.local_id.load(Ordering::Relaxed),
            cluster_id: self.cluster_id.load(Ordering::Relaxed),
            node: self.node.get().cloned(),
            dialer: self.dialer.clone(),
            removed: self.removed.clone(),
        };
        // the prober runs as long as the link (it never ends by itself)
        let task = self.runtime.spawn(async move {
            tokio::select! { _ = link.run(rx) => {}, _ = probe => {} }
        });
        tracing::info!(peer = %format!("{id:x}"), urls = ?urls, "added peer");
        peers.insert(id, PeerLink { urls, tx, task });
    }

    pub fn remove_peer(&self, id: u64) {
        if let Some(old) = self.peers.write().remove(&id) {
            old.task.abort();
            tracing::info!(peer = %format!("{id:x}"), "removed peer");
        }
    }

    pub fn peer_urls(&self, id: u64) -> Option<Vec<String>> {
        self.peers.read().get(&id).map(|p| p.urls.clone())
    }

    /// IDs of the peers messages can be sent to.
    pub fn peer_ids(&self) -> Vec<u64> {
        self.peers.read().keys().copied().collect()
    }

    /// Routes raft's MsgSnapshot messages to `sink` instead of the peer streams.
    pub fn set_snapshot_sink(&self, sink: std::sync::mpsc::SyncSender<Message>) {
        let _ = self.snapshot_sink.set(sink);
    }

    pub fn local_id(&self) -> u64 {
        self.local_id.load(Ordering::Relaxed)
    }

    pub fn cluster_id(&self) -> u64 {
        self.cluster_id.load(Ordering::Relaxed)
    }

    /// The raft node, once bound.
    pub fn node(&self) -> Option<&RaftNode> {
        self.node.get()
    }

    /// A peer-service client for one peer, dialled as the raft streams are (from this member's
    /// peer IP), trying each of its URLs.
    pub async fn dial(&self, id: u64) -> Result<PeerClient<tonic::transport::Channel>, String> {
        let urls = self.peer_urls(id).ok_or_else(|| format!("unknown peer {id:x}"))?;
        let mut last = String::from("no peer URLs");
        for url in urls {
            match self.dialer.connect(&url, DIAL_TIMEOUT).await {
                Ok(c) => return Ok(PeerClient::new(c).max_encoding_message_size(64 << 20)),
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

impl Drop for GrpcTransport {
    fn drop(&mut self) {
        for (_, p) in self.peers.write().drain() {
            p.task.abort();
        }
    }
}

impl Transport for GrpcTransport {
    fn send(&self, msgs: Vec<Message>) {
        let peers = self.peers.read();
        for m in msgs {
            let to = m.to;
            if m.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot {
                // The raft snapshot carries only metadata; the applier pairs it with the
                // backend's contents at its applied index and streams both (Peer.Snapshot).
                let routed = self.snapshot_sink.get().is_some_and(|sink| sink.try_send(m).is_ok());
                if !routed {
                    tracing::warn!(peer = %format!("{to:x}"), "cannot send a snapshot now; raft will retry");
                    if let Some(n) = self.node.get() {
                        n.report_snapshot(to, false);
                    }
                }
                continue;
            }
            match peers.get(&to) {
                Some(p) => {
                    if p.tx.try_send(m).is_err() {
                        crate::metrics::sent_failure(to);
                        tracing::debug!(peer = %format!("{to:x}"), "peer queue full; dropping a raft message");
                        if let Some(n) = self.node.get() {
                            n.report_unreachable(to);
                        }
                    }
                }
                None => tracing::debug!(peer = %format!("{to:x}"), "raft message for an unknown peer"),
            }
        }
    }
}

struct PeerLinkTask {
    metrics: Arc<crate::metrics::PeerMetrics>,
    peer_id: u64,
    urls: Vec<String>,
    from: u64,
    cluster_id: u64,
    node: Option<RaftNode>,
    dialer: PeerDialer,
    removed: Arc<tokio::sync::watch::Sender<bool>>,
}

impl PeerLinkTask {
    async fn run(self, mut rx: mpsc::Receiver<Message>) {
        let mut backoff = Duration::from_millis(50);
        let mut attempt = 0usize;
        loop {
            // Whatever queued while the link was down is stale: raft regenerates appends,
            // heartbeats and votes, and a proposal forwarded that long ago has timed out for
            // its client — sending it now would apply a write nobody waits for any more.
            while rx.try_recv().is_ok() {
                self.metrics.failed();
            }
            let url = &self.urls[attempt % self.urls.len()];
            attempt += 1;
            match self.stream_to(url, &mut rx).await {
                StreamEnd::QueueClosed => return,
                StreamEnd::Removed(why) => {
                    tracing::warn!(peer = %format!("{:x}", self.peer_id), error = %why, "a peer says this member was removed from the cluster");
                    self.removed.send_replace(true);
                    return;
                }
                StreamEnd::Broken(why) => {
                    tracing::debug!(peer = %format!("{:x}", self.peer_id), url = %url, error = %why, "peer stream broken");
                    if let Some(n) = &self.node {
                        n.report_unreachable(self.peer_id);
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                StreamEnd::Healthy => backoff = Duration::from_millis(50),
            }
        }
    }

    async fn stream_to(&self, url: &str, rx: &mut mpsc::Receiver<Message>) -> StreamEnd {
        let channel = match self.dialer.connect(url, DIAL_TIMEOUT).await {
            Ok(c) => c,
            Err(e) => return StreamEnd::Broken(e),
        };
        let mut client = PeerClient::new(channel).max_encoding_message_size(64 << 20);
        let _active = self.metrics.activate();
        let (batch_tx, batch_rx) = mpsc::channel::<RaftBatch>(16);
        let mut call = tokio::spawn(async move {
            client.raft(tokio_stream::wrappers::ReceiverStream::new(batch_rx)).await
        });
        let mut sent_any = false;
        loop {
            let first = tokio::select! {
                m = rx.recv() => m,
                r = &mut call => {
                    let why = match r {
                        Ok(Ok(_)) => "peer closed the stream".to_string(),
                        // the peer service refuses a removed member's messages with this code only
                        Ok(Err(status)) if status.code() == tonic::Code::PermissionDenied => {
                            return StreamEnd::Removed(status.message().to_string());
                        }
                        Ok(Err(status)) => status.to_string(),
                        Err(e) => e.to_string(),
                    };
                    return if sent_any { StreamEnd::Healthy } else { StreamEnd::Broken(why) };
                }
            };
            let Some(first) = first else {
                call.abort();
                return StreamEnd::QueueClosed;
            };
            let mut batch = RaftBatch { cluster_id: self.cluster_id, from: self.from, messages: Vec::new() };
            let mut bytes = 0usize;
            let mut next = Some(first);
            while let Some(m) = next.take() {
                match m.write_to_bytes() {
                    Ok(b) => {
                        bytes += b.len();
                        batch.messages.push(b);
                    }
                    Err(e) => tracing::error!(error = %e, "cannot encode a raft message"),
                }
                if batch.messages.len() >= MAX_BATCH_MSGS || bytes >= MAX_BATCH_BYTES {
                    break;
                }
                next = rx.try_recv().ok();
            }
            let sent = batch.messages.len();
            if batch_tx.send(batch).await.is_err() {
                (0..sent).for_each(|_| self.metrics.failed());
                call.abort();
                return StreamEnd::Broken("stream closed".into());
            }
            self.metrics.sent(bytes);
            sent_any = true;
        }
    }
}

enum StreamEnd {
    /// The transport dropped this peer.
    QueueClosed,
    /// The peer refused us as a member removed from the cluster.
    Removed(String),
    /// The stream failed before anything went through: count as unreachable and back off.
    Broken(String),
    /// The stream carried messages and then ended: reconnect at once.
    Healthy,
}
