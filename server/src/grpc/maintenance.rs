//! Maintenance service: status, alarms, hashes, defragment, snapshot. RPCs not built yet answer
//! `Unimplemented` naming themselves.
//!
//! Snapshot sends etcd's own file format (bbolt, see `backup.rs`) so `etcdctl snapshot save`,
//! `etcdutl snapshot status|restore` and etcd itself can use it. The file is built from one redb
//! read transaction into an unlinked temporary file in the member's snap dir (memory stays
//! small; writes go on meanwhile), then streamed in 32 KiB chunks with the remaining byte count,
//! and a last message whose blob is the sha256 of everything sent, as etcd's v3rpc does.

use std::pin::Pin;
use std::sync::Arc;

use etcd_proto::etcdserverpb::maintenance_server::Maintenance;
use etcd_proto::etcdserverpb::{
    AlarmRequest, AlarmResponse, DefragmentRequest, DefragmentResponse,
    DowngradeRequest, DowngradeResponse, HashKvRequest, HashKvResponse, HashRequest, HashResponse,
    MoveLeaderRequest, MoveLeaderResponse, SnapshotRequest, SnapshotResponse, StatusRequest, StatusResponse,
};
use tonic::{Request, Response, Status};

use crate::errors::ServerError;
use crate::etcd_server::EtcdServer;

pub struct MaintenanceService {
    pub server: Arc<EtcdServer>,
}

impl MaintenanceService {
    /// etcd's maintenance auth check (Defragment, Hash, HashKV, Snapshot): the sender must hold
    /// the root role; its errors, a bad token included, come back unmapped (code Unknown,
    /// `auth: ...`), as etcd's authMaintenanceServer returns them.
    async fn require_admin(&self, md: &tonic::metadata::MetadataMap, ext: &tonic::Extensions) -> Result<(), ServerError> {
        let ai = match self.server.auth_info(md, ext).await {
            Ok(ai) => ai,
            Err(ServerError::InvalidAuthToken) => {
                return Err(ServerError::AuthUnmapped(etcd_auth::AuthError::InvalidAuthToken.to_string()))
            }
            Err(e) => return Err(e),
        };
        self.server.check_admin(&ai)
    }
}

/// etcd's `snapshotSendBufferSize`.
const SNAPSHOT_CHUNK: usize = 32 * 1024;

/// Builds the snapshot file seen by `read` and streams it to `tx` (see the module docs). A
/// closed stream (the client went away) ends it quietly.
fn send_snapshot(
    read: redb::ReadTransaction,
    dir: &std::path::Path,
    tx: &tokio::sync::mpsc::Sender<Result<SnapshotResponse, Status>>,
) -> Result<(), ServerError> {
    use sha2::Digest;
    use std::io::{Read, Seek};
    let io = |what: &str, e: std::io::Error| ServerError::Internal(format!("snapshot: {what}: {e}"));
    let file = tempfile::tempfile_in(dir).map_err(|e| io("temporary file", e))?;
    let (out, total) = crate::backup::write_snapshot(&read, std::io::BufWriter::new(file))?;
    drop(read);
    let mut file = out.into_inner().map_err(|e| io("write", e.into_error()))?;
    file.rewind().map_err(|e| io("rewind", e))?;
    tracing::info!(total_bytes = total, "sending database snapshot to client");
    let mut sha = sha2::Sha256::new();
    let mut sent = 0u64;
    let mut buf = vec![0u8; SNAPSHOT_CHUNK];
    while sent < total {
        let want = SNAPSHOT_CHUNK.min((total - sent) as usize);
        file.read_exact(&mut buf[..want]).map_err(|e| io("read", e))?;
        sent += want as u64;
        sha.update(&buf[..want]);
        let msg = SnapshotResponse { header: None, remaining_bytes: total - sent, blob: buf[..want].to_vec() };
        if tx.blocking_send(Ok(msg)).is_err() {
            return Ok(());
        }
    }
    let digest = sha.finalize().to_vec();
    let _ = tx.blocking_send(Ok(SnapshotResponse { remaining_bytes: 0, blob: digest, ..Default::default() }));
    tracing::info!(total_bytes = total, "sent database snapshot to client");
    Ok(())
}

type SnapshotStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<SnapshotResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(&self, request: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        self.server.refuse_if_learner()?;
        Ok(Response::new(self.server.alarm(request.into_inner()).await?))
    }

    async fn status(&self, _request: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        Ok(Response::new(self.server.status()))
    }

    async fn defragment(&self, request: Request<DefragmentRequest>) -> Result<Response<DefragmentResponse>, Status> {
        self.server.refuse_if_learner()?;
        self.require_admin(request.metadata(), request.extensions()).await?;
        self.server.defragment().await?;
        // etcd answers Defragment and MoveLeader without a header; clients assert it is unset
        Ok(Response::new(DefragmentResponse { header: None }))
    }

    async fn hash(&self, request: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        self.require_admin(request.metadata(), request.extensions()).await?;
        let (hash, revision) = self.server.hash()?;
        Ok(Response::new(HashResponse { header: Some(self.server.header(revision)), hash }))
    }

    async fn hash_kv(&self, request: Request<HashKvRequest>) -> Result<Response<HashKvResponse>, Status> {
        self.server.refuse_if_learner()?;
        self.require_admin(request.metadata(), request.extensions()).await?;
        let req = request.into_inner();
        let (hash, compact_revision, hash_revision, revision) = self.server.hash_kv(req.revision)?;
        Ok(Response::new(HashKvResponse {
            header: Some(self.server.header(revision)),
            hash,
            compact_revision,
            hash_revision,
        }))
    }

    type SnapshotStream = SnapshotStream;

    async fn snapshot(&self, request: Request<SnapshotRequest>) -> Result<Response<Self::SnapshotStream>, Status> {
        self.require_admin(request.metadata(), request.extensions()).await?;
        let read = self.server.backend_snapshot()?;
        let dir = self.server.snap_dir();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            let _timer = etcd_mvcc::metrics::SNAPSHOT_SECONDS.start_timer();
            if let Err(e) = send_snapshot(read, &dir, &tx) {
                tracing::warn!(error = %e, "sending a database snapshot failed");
                let _ = tx.blocking_send(Err(e.into()));
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    /// As etcd 3.5.1: no permission is checked (its auth layer passes Downgrade through).
    async fn downgrade(&self, request: Request<DowngradeRequest>) -> Result<Response<DowngradeResponse>, Status> {
        Ok(Response::new(self.server.downgrade(request.into_inner()).await?))
    }

    async fn move_leader(&self, request: Request<MoveLeaderRequest>) -> Result<Response<MoveLeaderResponse>, Status> {
        self.server.refuse_if_learner()?;
        self.server.move_leader(request.into_inner().target_id).await?;
        Ok(Response::new(MoveLeaderResponse { header: None }))
    }
}
