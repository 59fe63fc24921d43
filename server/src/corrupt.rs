//! Corruption checks (etcd's `--experimental-initial-corrupt-check` and
//! `--experimental-corrupt-check-time`): members compare HashKV, the crc32c of the key table up
//! to a revision, which every member holding the same history computes alike.
//!
//! Peers are asked on their peer URLs (`GET /members/hashkv`), as etcd asks them. The rules are etcd's:
//! - initial check (a restarting member, before it serves peers or clients): every peer hashes at
//!   this member's revision; same compact revision and a different hash is a mismatch, and the
//!   member refuses to start ("<id> found data inconsistency with peers"). A peer that cannot
//!   be reached, is behind (future revision) or compacted past it is skipped with a warning.
//! - periodic check (leader only, every `--experimental-corrupt-check-time`): the leader hashes,
//!   asks every follower at its revision, confirms with a linearizable barrier and hashes again;
//!   a follower ahead of the leader (revision or compact revision), or a follower at the same
//!   compact revision with another hash, raises the CORRUPT alarm through raft with member ID 0
//!   (etcd 3.4.22+/3.5.7+: which member is corrupt is not known).
//!
//! The compaction hash check (3.5.6+) is in `compact_hash_check.rs`.
//!
//! While CORRUPT is raised the applier refuses writes, compactions and lease grants/revokes with
//! "etcdserver: corrupt cluster" (apply.rs), as etcd's corrupt applier does.

use std::sync::Arc;
use std::time::Duration;

use etcd_proto::etcdserverpb::alarm_request::AlarmAction;
use etcd_proto::etcdserverpb::{AlarmRequest, AlarmType, HashKvResponse, ResponseHeader};
use etcd_raft::rafthttp::client::Connection;
use etcd_raft::rafthttp::peer_api;

use crate::etcd_server::EtcdServer;

/// One peer's answer: its HashKV, or why there is none.
pub(crate) struct PeerHash {
    pub(crate) id: u64,
    urls: Vec<String>,
    pub(crate) result: Result<HashKvResponse, PeerHashError>,
}

#[derive(Debug)]
pub(crate) enum PeerHashError {
    /// The peer has not reached the revision yet.
    FutureRev,
    /// The peer compacted past the revision.
    Compacted,
    Other(String),
}

impl std::fmt::Display for PeerHashError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerHashError::FutureRev => f.write_str("mvcc: required revision is a future revision"),
            PeerHashError::Compacted => f.write_str("mvcc: required revision has been compacted"),
            PeerHashError::Other(e) => f.write_str(e),
        }
    }
}

pub(crate) fn hex(id: u64) -> String {
    format!("{id:x}")
}

/// Asks one peer URL for its HashKV at `rev` (etcd's `GET /members/hashkv`).
async fn peer_hash_kv(server: &EtcdServer, url: &str, rev: i64) -> Result<HashKvResponse, PeerHashError> {
    let timeout = server.request_timeout();
    let transport = server.transport();
    let asked = async {
        let mut conn = Connection::open(transport.dialer(), url, timeout).await.map_err(|e| e.to_string())?;
        peer_api::call::hash_kv(&mut conn, &transport.identity(), rev).await
    };
    let (cluster, resp) = match tokio::time::timeout(timeout, asked).await {
        Err(_) => return Err(PeerHashError::Other("request timed out".into())),
        Ok(Err(msg)) => {
            return Err(if msg.contains("required revision has been compacted") {
                PeerHashError::Compacted
            } else if msg.contains("required revision is a future revision") {
                PeerHashError::FutureRev
            } else {
                PeerHashError::Other(msg)
            });
        }
        Ok(Ok(r)) => r,
    };
    if cluster != server.cluster_id() {
        return Err(PeerHashError::Other(format!(
            "cluster ID mismatch (got {} want {})",
            hex(cluster),
            hex(server.cluster_id())
        )));
    }
    Ok(HashKvResponse {
        header: Some(ResponseHeader { cluster_id: cluster, revision: resp.header.revision, ..Default::default() }),
        hash: resp.hash,
        compact_revision: resp.compact_revision,
        hash_revision: resp.hash_revision,
    })
}

/// Every other member's HashKV at `rev`, trying each of its peer URLs in turn.
pub(crate) async fn peer_hash_kvs(server: &EtcdServer, rev: i64) -> Vec<PeerHash> {
    let mut out = Vec::new();
    for m in server.members().members().into_iter().filter(|m| m.id != server.member_id()) {
        let urls = m.raft_attrs.map(|r| r.peer_urls).unwrap_or_default();
        if urls.is_empty() {
            continue;
        }
        let mut last = PeerHashError::Other("no peer URL answered".into());
        let mut answer = None;
        for url in &urls {
            match peer_hash_kv(server, url, rev).await {
                Ok(r) => {
                    answer = Some(r);
                    break;
                }
                Err(e) => {
                    tracing::warn!(
                        local_member_id = %hex(server.member_id()),
                        requested_revision = rev,
                        remote_peer_endpoint = %url,
                        error = %e,
                        "failed hash kv request"
                    );
                    last = e;
                }
            }
        }
        out.push(PeerHash { id: m.id, urls, result: answer.ok_or(last) });
    }
    out
}

/// (hash, revision it was taken at, compact revision) of this member now (a scan of the whole
/// key table, so off the async workers).
async fn local_hash(server: &Arc<EtcdServer>) -> Result<(u32, i64, i64), String> {
    let s = server.clone();
    let (hash, compact, hash_rev, _) = tokio::task::spawn_blocking(move || s.hash_kv(0))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    Ok((hash, hash_rev, compact))
}

/// etcd's CheckInitialHashKV: Err (the member must not start) when a peer at the same compact
/// revision has another hash at this member's revision.
pub async fn initial_check(server: &Arc<EtcdServer>) -> Result<(), String> {
    let me = hex(server.member_id());
    tracing::info!(local_member_id = %me, timeout = ?server.request_timeout(), "starting initial corruption check");
    let (h, rev, crev) = local_hash(server).await.map_err(|e| format!("{me} failed to fetch hash ({e})"))?;
    let mut mismatch = 0;
    for p in peer_hash_kvs(server, rev).await {
        match &p.result {
            Ok(resp) => {
                let peer_rev = resp.header.as_ref().map(|h| h.revision).unwrap_or(0);
                if h == resp.hash {
                    continue;
                }
                let fields = format!(
                    "local-member-revision={rev} local-member-compact-revision={crev} local-member-hash={h} \
                     remote-peer-id={} remote-peer-endpoints={:?} remote-peer-revision={peer_rev} \
                     remote-peer-compact-revision={} remote-peer-hash={}",
                    hex(p.id),
                    p.urls,
                    resp.compact_revision,
                    resp.hash
                );
                if crev == resp.compact_revision {
                    tracing::warn!(local_member_id = %me, "found different hash values from remote peer: {fields}");
                    mismatch += 1;
                } else {
                    tracing::warn!(local_member_id = %me, "found different compact revision values from remote peer: {fields}");
                }
            }
            Err(PeerHashError::FutureRev) => tracing::warn!(
                local_member_id = %me, local_member_revision = rev, remote_peer_id = %hex(p.id),
                remote_peer_endpoints = ?p.urls, "cannot fetch hash from slow remote peer"
            ),
            Err(PeerHashError::Compacted) => tracing::warn!(
                local_member_id = %me, local_member_revision = rev, remote_peer_id = %hex(p.id),
                remote_peer_endpoints = ?p.urls, "cannot fetch hash from remote peer; local member is behind"
            ),
            // already logged as a failed hash kv request; the peer is skipped
            Err(PeerHashError::Other(_)) => {}
        }
    }
    if mismatch > 0 {
        return Err(format!("{me} found data inconsistency with peers"));
    }
    tracing::info!(local_member_id = %me, "initial corruption checking passed; no corruption");
    Ok(())
}

/// Runs etcd's periodic check every `interval` while this member leads, until the server stops.
pub async fn run_periodic(server: Arc<EtcdServer>, interval: Duration) {
    if interval.is_zero() {
        return;
    }
    tracing::info!(local_member_id = %hex(server.member_id()), interval = ?interval, "enabled corruption checking");
    loop {
        tokio::time::sleep(interval).await;
        if !server.is_leader() {
            continue;
        }
        if let Err(e) = check_hash_kv(&server).await {
            tracing::warn!(error = %e, "failed to check hash KV");
        }
    }
}

/// One periodic check (etcd's checkHashKV); raises CORRUPT on a mismatch.
async fn check_hash_kv(server: &Arc<EtcdServer>) -> Result<(), String> {
    let (h, rev, crev) = local_hash(server).await?;
    let peers = peer_hash_kvs(server, rev).await;
    server.linearizable_barrier().await.map_err(|e| e.to_string())?;
    let (h2, rev2, crev2) = local_hash(server).await?;

    let mut corrupt = false;
    if h2 != h && rev2 == rev && crev == crev2 {
        tracing::warn!(
            revision_1 = rev, compact_revision_1 = crev, hash_1 = h,
            revision_2 = rev2, compact_revision_2 = crev2, hash_2 = h2,
            "found hash mismatch"
        );
        corrupt = true;
    }
    let mut checked = 0;
    for p in &peers {
        let Ok(resp) = &p.result else { continue };
        checked += 1;
        let follower = hex(p.id);
        let follower_rev = resp.header.as_ref().map(|h| h.revision).unwrap_or(0);
        if follower_rev > rev2 {
            tracing::warn!(
                leader_revision = rev2, follower_revision = follower_rev, follower_peer_id = %follower,
                "revision from follower must be less than or equal to leader's"
            );
            corrupt = true;
        }
        if resp.compact_revision > crev2 {
            tracing::warn!(
                leader_compact_revision = crev2, follower_compact_revision = resp.compact_revision,
                follower_peer_id = %follower, "compact revision from follower must be less than or equal to leader's"
            );
            corrupt = true;
        }
        if resp.compact_revision == crev && resp.hash != h {
            tracing::warn!(
                leader_compact_revision = crev2, leader_hash = h, follower_compact_revision = resp.compact_revision,
                follower_hash = resp.hash, follower_peer_id = %follower, "same compact revision then hashes must match"
            );
            corrupt = true;
        }
    }
    tracing::info!(number_of_peers_checked = checked, "finished peer corruption check");
    if corrupt {
        // member ID 0: which member's data is corrupt is not known (etcd 3.4.22+, 3.5.7+)
        let raise = AlarmRequest { action: AlarmAction::Activate as i32, member_id: 0, alarm: AlarmType::Corrupt as i32 };
        server.alarm(raise).await.map_err(|e| format!("cannot raise the CORRUPT alarm: {e}"))?;
    }
    Ok(())
}

/// etcd serves a read-only txn without its applier, so the corrupt applier never refuses it.
pub(crate) use etcd_mvcc::kv_store_txn::txn_is_read_only;
