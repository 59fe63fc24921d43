//! etcd's compaction hash check (`--experimental-compact-hash-check-enabled` 3.5.6+,
//! `--feature-gates=CompactHashCheck=true` 3.6, every `--compact-hash-check-time`).
//!
//! Compactions go through raft, so every member compacts at the same revisions and stores the
//! hash of its key table at each (mvcc's `HashStorage`, the last 10). The leader walks its
//! stored hashes newest first, not yet checked, and asks every peer for its hash at that
//! revision (`GET /members/hashkv`, which answers with the stored hash). A peer that does not
//! answer, or answers from another compact revision (it has not finished that compaction, or
//! restarted since), is skipped, and the next older hash is tried. With every peer checked
//! and one hash, the revision is done. With different hashes, etcd 3.6's rule: the members
//! whose hash a quorum of the members does not share get the CORRUPT alarm, each under its own
//! ID; without such a quorum the alarm goes to member 0 (which member is corrupt is unknown).
//!
//! Invariant: an alarm is raised only for two members that hashed the same compaction from the
//! same compact revision and found different hashes, so a member's timing never raises one.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use etcd_mvcc::KeyValueHash;
use etcd_proto::etcdserverpb::alarm_request::AlarmAction;
use etcd_proto::etcdserverpb::{AlarmRequest, AlarmType};

use crate::corrupt::{hex, peer_hash_kvs};
use crate::etcd_server::EtcdServer;

/// One peer's answer at a compaction revision: (compact revision, hash), None when it gave none.
type PeerAnswer = (u64, Option<(i64, u32)>);

/// What the leader concludes from one of its compaction hashes and the peers' answers.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Every peer answered from the same compact revision with the leader's hash.
    Consistent { checked: usize },
    /// Some peers were skipped and the rest agree: an older hash may check them.
    Incomplete { checked: usize },
    /// Hashes differ: the members to raise CORRUPT for (0: unknown which).
    Mismatch { alarms: Vec<u64> },
}

/// etcd 3.6's checkPeerHashes: groups the members by hash and finds the minority.
fn judge(leader_id: u64, leader: KeyValueHash, peers: &[PeerAnswer]) -> Verdict {
    let mut by_hash: BTreeMap<u32, Vec<u64>> = BTreeMap::from([(leader.hash, vec![leader_id])]);
    let mut checked = 0;
    for (id, answer) in peers {
        let reason = match answer {
            None => "no response".to_string(),
            Some((compact, _)) if *compact != leader.compact_revision => format!(
                "the peer's CompactRevision {compact} doesn't match leader's CompactRevision {}",
                leader.compact_revision
            ),
            Some((_, hash)) => {
                checked += 1;
                by_hash.entry(*hash).or_default().push(*id);
                continue;
            }
        };
        tracing::warn!(
            number_of_peers = peers.len(), leader_id = %hex(leader_id), peer_id = %hex(*id), reason = %reason,
            "Skipped peer's hash"
        );
    }
    if by_hash.len() == 1 {
        return if checked == peers.len() { Verdict::Consistent { checked } } else { Verdict::Incomplete { checked } };
    }
    let quorum = (peers.len() + 1) / 2 + 1;
    let majority = by_hash.iter().find(|(_, ids)| ids.len() >= quorum).map(|(h, _)| *h);
    let mut alarms = Vec::new();
    match majority {
        Some(h) => {
            by_hash.remove(&h);
        }
        None => {
            tracing::error!(
                leader_id = %hex(leader_id), leader_revision = leader.revision,
                leader_compact_revision = leader.compact_revision, leader_hash = leader.hash,
                "Detected compaction hash mismatch but cannot identify the corrupted members, so intentionally set the memberID as 0"
            );
            alarms.push(0);
        }
    }
    for (hash, ids) in &by_hash {
        if majority.is_some() {
            alarms.extend(ids);
        }
        let peer_ids: Vec<String> = ids.iter().map(|id| hex(*id)).collect();
        tracing::error!(
            leader_id = %hex(leader_id), leader_revision = leader.revision,
            leader_compact_revision = leader.compact_revision, leader_hash = leader.hash, peer_hash = hash,
            peer_ids = %peer_ids.join(","), quorum_exist = majority.is_some(),
            "Detected compaction hash mismatch"
        );
    }
    Verdict::Mismatch { alarms }
}

/// The leader's state between checks: the newest compaction revision checked on every member.
#[derive(Default)]
struct Checker {
    latest_checked: i64,
}

impl Checker {
    /// The stored hashes newer than the last one checked, newest first.
    fn unchecked(&self, mut hashes: Vec<KeyValueHash>) -> Vec<KeyValueHash> {
        hashes.retain(|h| h.revision > self.latest_checked);
        hashes.sort_by(|a, b| b.revision.cmp(&a.revision));
        hashes
    }

    /// One pass (etcd's CompactHashCheck).
    async fn check(&mut self, server: &Arc<EtcdServer>) {
        let me = server.member_id();
        tracing::info!(local_member_id = %hex(me), timeout = ?server.request_timeout(), "starting compact hash check");
        let hashes = self.unchecked(server.compaction_hashes());
        for (i, h) in hashes.iter().enumerate() {
            let peers = peer_hash_kvs(server, h.revision).await;
            if peers.is_empty() {
                continue;
            }
            let answers: Vec<PeerAnswer> =
                peers.iter().map(|p| (p.id, p.result.as_ref().ok().map(|r| (r.compact_revision, r.hash)))).collect();
            match judge(me, *h, &answers) {
                Verdict::Incomplete { checked } => {
                    tracing::warn!(
                        number_of_peers_checked = checked, number_of_peers = answers.len(), revision = h.revision,
                        compact_revision = h.compact_revision,
                        "skipped revision in compaction hash check; was not able to check all peers"
                    );
                    continue;
                }
                Verdict::Consistent { checked } => {
                    tracing::info!(
                        number_of_peers_checked = checked, revision = h.revision, compact_revision = h.compact_revision,
                        "successfully checked hash on whole cluster"
                    );
                    self.latest_checked = self.latest_checked.max(h.revision);
                }
                Verdict::Mismatch { alarms } => {
                    for id in alarms {
                        let raise = AlarmRequest { action: AlarmAction::Activate as i32, member_id: id, alarm: AlarmType::Corrupt as i32 };
                        if let Err(e) = server.alarm(raise).await {
                            tracing::warn!(member_id = %hex(id), error = %e, "cannot raise the CORRUPT alarm");
                        }
                    }
                }
            }
            tracing::info!(number_of_hashes_checked = i + 1, "finished compaction hash check");
            return;
        }
        tracing::info!(number_of_hashes_checked = hashes.len(), "finished compaction hash check");
    }
}

/// Runs the check every `interval` while this member leads, until the task is aborted.
pub async fn run(server: Arc<EtcdServer>, interval: Duration) {
    let mut checker = Checker::default();
    loop {
        tokio::time::sleep(interval).await;
        if server.is_leader() {
            checker.check(&server).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEADER: u64 = 1;

    fn leader_hash() -> KeyValueHash {
        KeyValueHash { hash: 100, compact_revision: 5, revision: 10 }
    }

    #[test]
    fn the_members_outside_the_majority_hash_get_the_alarm() {
        // (peer answers, verdict)
        let cases: Vec<(Vec<PeerAnswer>, Verdict)> = vec![
            (vec![(2, Some((5, 100))), (3, Some((5, 100)))], Verdict::Consistent { checked: 2 }),
            // a peer not answering, or answering from another compact revision, is skipped
            (vec![(2, Some((5, 100))), (3, None)], Verdict::Incomplete { checked: 1 }),
            (vec![(2, Some((5, 100))), (3, Some((7, 999)))], Verdict::Incomplete { checked: 1 }),
            // one follower differs: it is the corrupt one
            (vec![(2, Some((5, 100))), (3, Some((5, 999)))], Verdict::Mismatch { alarms: vec![3] }),
            // the leader alone differs: the leader is
            (vec![(2, Some((5, 999))), (3, Some((5, 999)))], Verdict::Mismatch { alarms: vec![LEADER] }),
            // no quorum shares a hash: member 0, unknown which
            (vec![(2, Some((5, 999))), (3, Some((5, 998)))], Verdict::Mismatch { alarms: vec![0] }),
            (vec![(2, Some((5, 999))), (3, None)], Verdict::Mismatch { alarms: vec![0] }),
            // 5 members, 2 differ alike: both alarmed
            (
                vec![(2, Some((5, 100))), (3, Some((5, 100))), (4, Some((5, 7))), (5, Some((5, 7)))],
                Verdict::Mismatch { alarms: vec![4, 5] },
            ),
        ];
        for (peers, want) in cases {
            assert_eq!(judge(LEADER, leader_hash(), &peers), want, "{peers:?}");
        }
    }

    #[test]
    fn hashes_are_checked_newest_first_and_once() {
        let h = |revision| KeyValueHash { hash: 1, compact_revision: 0, revision };
        let mut c = Checker::default();
        assert_eq!(c.unchecked(vec![h(3), h(9), h(6)]), [h(9), h(6), h(3)]);
        c.latest_checked = 6;
        assert_eq!(c.unchecked(vec![h(3), h(9), h(6)]), [h(9)]);
    }
}
