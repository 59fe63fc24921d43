//! Raft clusters of real processes: leader failure, partitions through fault-injecting peer
//! proxies, and identical state on every member after a mixed workload.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{status, TestCluster};
use common::{dump, put};
use etcd_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use etcd_proto::etcdserverpb::lease_client::LeaseClient;
use etcd_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use etcd_proto::etcdserverpb::request_op::Request as Op;
use etcd_proto::etcdserverpb::watch_client::WatchClient;
use etcd_proto::etcdserverpb::watch_request::RequestUnion;
use etcd_proto::etcdserverpb::{
    CompactionRequest, Compare, DeleteRangeRequest, HashKvRequest, LeaseGrantRequest, LeaseLeasesRequest, PutRequest,
    RangeRequest, RequestOp, TxnRequest, WatchCreateRequest, WatchRequest,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// Short raft timings keep the tests quick: elections after 500 ms of silence.
const FAST: &[&str] = &["--heartbeat-interval", "50", "--election-timeout", "500"];
const ELECTION: Duration = Duration::from_millis(500);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_leader_of_3_elects_a_new_one_and_loses_no_acknowledged_write() {
    leader_kill(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_leader_of_5_elects_a_new_one_and_loses_no_acknowledged_write() {
    leader_kill(5).await;
}

async fn leader_kill(n: usize) {
    let dir = tempfile::tempdir().unwrap();
    let mut c = TestCluster::start(dir.path(), n, FAST).await;
    let all: Vec<usize> = (0..n).collect();
    let leader = c.wait_leader(&all).await;
    let mut acked = Vec::new();
    let mut kv = c.members[(leader + 1) % n].ready_client().await;
    for i in 0..100 {
        acked.push((format!("k{i:03}"), put(&mut kv, &format!("k{i:03}"), "v").await.unwrap()));
    }

    c.members[leader].kill9();
    let killed_at = Instant::now();
    let survivors: Vec<usize> = all.iter().copied().filter(|i| *i != leader).collect();
    let new_leader = c.wait_leader(&survivors).await;
    let took = killed_at.elapsed();
    assert_ne!(new_leader, leader);
    // Raft bounds this by about two election timeouts (randomized [ET, 2ET) plus a vote round);
    // measured here 0.65-1.5 s with ET = 500 ms. The bound leaves room for a loaded CI machine.
    eprintln!("new leader elected {took:?} after the kill");
    assert!(took < 4 * ELECTION, "new leader after {took:?}");

    let mut kv = c.members[survivors[0]].ready_client().await;
    let stored = dump(&mut kv).await;
    for (k, rev) in &acked {
        assert!(stored.iter().any(|(sk, _, sr)| sk == k && sr == rev), "acknowledged {k}@{rev} lost");
    }
    // The old leader rejoins as a follower and catches up.
    c.members[leader].start();
    put(&mut kv, "after", "x").await.unwrap();
    let mut old = c.members[leader].ready_client().await;
    let seen = dump(&mut old).await;
    assert!(seen.iter().any(|(k, _, _)| k == "after"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partitioned_minority_of_5_cannot_write_or_read_stale_data_and_catches_up_when_healed() {
    minority_partition(5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partitioned_minority_of_3_cannot_write_or_read_stale_data_and_catches_up_when_healed() {
    minority_partition(3).await;
}

async fn minority_partition(n: usize) {
    let dir = tempfile::tempdir().unwrap();
    let c = TestCluster::start(dir.path(), n, FAST).await;
    let all: Vec<usize> = (0..n).collect();
    let leader = c.wait_leader(&all).await;
    // The minority: followers short of a quorum.
    let minority: Vec<usize> = all.iter().copied().filter(|i| *i != leader).take((n - 1) / 2).collect();
    let majority: Vec<usize> = all.iter().copied().filter(|i| !minority.contains(i)).collect();
    let mut kv_major = c.members[majority[0]].ready_client().await;
    put(&mut kv_major, "k", "before").await.unwrap();
    let mut kv_minor = c.members[minority[0]].ready_client().await;

    c.partition(&minority);
    // The majority keeps serving.
    let rev = put(&mut kv_major, "k", "after").await.unwrap();

    // The minority cannot write...
    let w = tokio::time::timeout(
        Duration::from_secs(12),
        kv_minor.put(PutRequest { key: b"k".to_vec(), value: b"minority".to_vec(), ..Default::default() }),
    )
    .await;
    assert!(!matches!(w, Ok(Ok(_))), "a write on the cut-off minority succeeded");
    // ...and its linearizable reads fail or time out rather than answer "before".
    let r = tokio::time::timeout(
        Duration::from_secs(12),
        kv_minor.range(RangeRequest { key: b"k".to_vec(), ..Default::default() }),
    )
    .await;
    if let Ok(Ok(resp)) = r {
        let v = resp.into_inner().kvs.first().map(|kv| kv.value.clone()).unwrap_or_default();
        assert_eq!(v, b"after", "the minority answered a linearizable read with stale data");
    }

    c.heal(&minority);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = kv_minor.range(RangeRequest { key: b"k".to_vec(), ..Default::default() }).await;
        if let Ok(resp) = r {
            let resp = resp.into_inner();
            if resp.kvs.first().is_some_and(|kv| kv.value == b"after" && kv.mod_revision == rev) {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the healed minority did not catch up; its log:\n{}\nleader log:\n{}",
            c.members[minority[0]].log(),
            c.members[leader].log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(status(&c.members[minority[0]]).await.is_some_and(|(l, _)| l != 0));
}

fn put_op(k: &str, v: &str) -> RequestOp {
    RequestOp { request: Some(Op::RequestPut(PutRequest { key: k.into(), value: v.into(), ..Default::default() })) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_member_has_the_same_hashkv_after_a_mixed_workload() {
    let dir = tempfile::tempdir().unwrap();
    let c = TestCluster::start(dir.path(), 3, FAST).await;
    c.wait_leader(&[0, 1, 2]).await;
    let mut clients = Vec::new();
    for m in &c.members {
        clients.push(m.ready_client().await);
    }
    for i in 0..60 {
        let kv = &mut clients[i % 3];
        put(kv, &format!("key{}", i % 17), &format!("v{i}")).await.unwrap();
        if i % 7 == 0 {
            kv.delete_range(DeleteRangeRequest { key: format!("key{}", i % 5).into(), ..Default::default() })
                .await
                .unwrap();
        }
        if i % 11 == 0 {
            let txn = TxnRequest {
                compare: vec![Compare {
                    key: b"key1".to_vec(),
                    target: CompareTarget::Version as i32,
                    result: CompareResult::Greater as i32,
                    target_union: Some(TargetUnion::Version(0)),
                    ..Default::default()
                }],
                success: vec![put_op("t1", "a"), put_op("t2", "b")],
                failure: vec![put_op("t3", "c")],
            };
            kv.txn(txn).await.unwrap();
        }
        if i == 40 {
            kv.compact(CompactionRequest { revision: 30, physical: true }).await.unwrap();
        }
    }
    // A linearizable read on each member makes sure it applied everything.
    let mut rev = 0;
    for kv in clients.iter_mut() {
        let r = kv.range(RangeRequest { key: b"key1".to_vec(), ..Default::default() }).await.unwrap();
        rev = r.into_inner().header.unwrap().revision;
    }
    let mut hashes = Vec::new();
    for m in &c.members {
        let ch = Channel::from_shared(m.endpoint()).unwrap().connect().await.unwrap();
        let r = MaintenanceClient::new(ch).hash_kv(HashKvRequest { revision: rev }).await.unwrap().into_inner();
        hashes.push((r.hash, r.compact_revision));
    }
    assert!(hashes.iter().all(|h| *h == hashes[0]), "members differ: {hashes:?}");
    assert_eq!(hashes[0].1, 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn followers_forward_lease_keep_alives_and_time_to_live_to_the_leader() {
    use etcd_proto::etcdserverpb::lease_client::LeaseClient;
    use etcd_proto::etcdserverpb::{LeaseGrantRequest, LeaseKeepAliveRequest, LeaseTimeToLiveRequest};

    let dir = tempfile::tempdir().unwrap();
    let c = TestCluster::start(dir.path(), 3, FAST).await;
    let leader = c.wait_leader(&[0, 1, 2]).await;
    let follower = (leader + 1) % 3;
    let mut kv = c.members[follower].ready_client().await;
    let ch = Channel::from_shared(c.members[follower].endpoint()).unwrap().connect().await.unwrap();
    let mut lease = LeaseClient::new(ch);

    let id = lease.lease_grant(LeaseGrantRequest { ttl: 3, id: 0 }).await.unwrap().into_inner().id;
    kv.put(PutRequest { key: b"svc".to_vec(), value: b"up".to_vec(), lease: id, ..Default::default() })
        .await
        .unwrap();

    // Keep-alives through the follower hold the key past its TTL.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut responses = lease.lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    for _ in 0..5 {
        tx.send(LeaseKeepAliveRequest { id }).await.unwrap();
        let r = responses.message().await.unwrap().unwrap();
        assert_eq!((r.id, r.ttl), (id, 3), "keep-alive answered through the follower");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let ttl = lease.lease_time_to_live(LeaseTimeToLiveRequest { id, keys: true }).await.unwrap().into_inner();
    assert_eq!(ttl.granted_ttl, 3);
    assert!(ttl.ttl > 0 && ttl.ttl <= 3, "remaining TTL {}", ttl.ttl);
    assert_eq!(ttl.keys, vec![b"svc".to_vec()]);
    assert_eq!(dump(&mut kv).await.len(), 1, "the kept-alive key is still there after 5 s");

    // Without keep-alives the leader expires it, and every member deletes the key.
    drop(tx);
    tokio::time::sleep(Duration::from_secs(5)).await;
    for m in &c.members {
        let mut kv = m.ready_client().await;
        assert!(dump(&mut kv).await.is_empty(), "the lease's key outlived it on {}", m.name);
    }
    let gone = lease.lease_time_to_live(LeaseTimeToLiveRequest { id, keys: false }).await.unwrap().into_inner();
    assert_eq!(gone.ttl, -1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_refuses_raft_messages_from_another_cluster_and_answers_unknown_peer_paths_404() {
    use etcd_raft::rafthttp::client::{Connection, Identity, RequestError};
    use etcd_raft::rafthttp::peer_api;

    let dir = tempfile::tempdir().unwrap();
    let c = TestCluster::start(dir.path(), 1, FAST).await;
    c.members[0].ready_client().await;
    let peer = format!("http://127.0.0.1:{}", c.proxies[0].port);
    let dialer = etcd_raft::PeerDialer::default();
    let mut conn = Connection::open(&dialer, &peer, Duration::from_secs(2)).await.unwrap();
    let (ours, members) = peer_api::call::members(&mut conn, &Identity::default()).await.unwrap();
    assert_eq!(members.len(), 1);
    // a heartbeat from member 42 of another cluster: refused with etcd's 412 and text
    let stranger = Identity { id: 42, cluster_id: ours ^ 1, ..Default::default() };
    let mut m = raft::eraftpb::Message::default();
    m.set_msg_type(raft::eraftpb::MessageType::MsgHeartbeat);
    (m.from, m.to) = (42, members[0].id);
    let err = conn.post_message(&m, &stranger).await.unwrap_err();
    assert_eq!(err, RequestError::ClusterIdMismatch);
    // a path the peer listener does not serve: etcd's mux 404
    let mut conn = Connection::open(&dialer, &peer, Duration::from_secs(2)).await.unwrap();
    let nothing = conn.call("GET", "/v2/keys/x", None, Default::default(), &Identity::default()).await.unwrap();
    assert_eq!((nothing.status.as_u16(), nothing.text().as_str()), (404, "404 page not found"));
    // The member keeps serving its own cluster.
    let mut kv = c.members[0].ready_client().await;
    put(&mut kv, "still", "here").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_behind_the_compacted_log_catches_up_by_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    // The leader snapshots every 50 entries and keeps 10 after it: a follower that misses
    // a few hundred entries can only catch up by snapshot.
    let flags = [FAST, &["--snapshot-count", "50", "--experimental-snapshot-catchup-entries", "10"]].concat();
    let mut c = TestCluster::start(dir.path(), 3, &flags).await;
    let leader = c.wait_leader(&[0, 1, 2]).await;
    let behind = (leader + 1) % 3;
    let mut kv = c.members[leader].ready_client().await;
    let first = put(&mut kv, "before", "1").await.unwrap();
    let mut lagging = c.members[behind].ready_client().await;
    assert_eq!(dump(&mut lagging).await.len(), 1);

    // A watcher on the follower stays connected while the follower is cut off and catches up.
    let ch = Channel::from_shared(c.members[behind].endpoint()).unwrap().connect().await.unwrap();
    let (watch_tx, watch_rx) = tokio::sync::mpsc::channel(4);
    let create = WatchCreateRequest { key: b"w/".to_vec(), range_end: b"w0".to_vec(), ..Default::default() };
    watch_tx.send(WatchRequest { request_union: Some(RequestUnion::CreateRequest(create)) }).await.unwrap();
    let mut events = WatchClient::new(ch).watch(ReceiverStream::new(watch_rx)).await.unwrap().into_inner();
    assert!(events.message().await.unwrap().unwrap().created);

    c.partition(&[behind]);
    let mut lease = LeaseClient::new(Channel::from_shared(c.members[leader].endpoint()).unwrap().connect().await.unwrap());
    let granted = lease.lease_grant(LeaseGrantRequest { ttl: 600, id: 0 }).await.unwrap().into_inner();
    kv.put(PutRequest { key: b"leased".to_vec(), value: b"x".to_vec(), lease: granted.id, ..Default::default() })
        .await
        .unwrap();
    for i in 0..300 {
        put(&mut kv, &format!("k{:03}", i % 120), &format!("v{i}")).await.unwrap();
    }
    let gap_rev = put(&mut kv, "w/after-gap", "1").await.unwrap();
    // history the watcher does not need is compacted away on the leader
    kv.compact(CompactionRequest { revision: first, physical: true }).await.unwrap();
    kv.delete_range(DeleteRangeRequest { key: b"k000".to_vec(), ..Default::default() }).await.unwrap();
    c.heal(&[behind]);

    let mut lagging = c.members[behind].ready_client().await;
    assert_eq!(dump(&mut lagging).await, dump(&mut kv).await, "the follower's keys differ from the leader's");
    let log = c.members[behind].log();
    assert!(log.contains("installed a snapshot"), "the follower did not catch up by snapshot; log:\n{log}");
    let got = tokio::time::timeout(Duration::from_secs(10), events.message())
        .await
        .expect("the watcher hears of the key written while its member was cut off")
        .unwrap()
        .unwrap();
    assert_eq!(got.events.len(), 1, "{got:?}");
    assert_eq!(got.events[0].kv.as_ref().unwrap().key, b"w/after-gap");
    assert_eq!(got.events[0].kv.as_ref().unwrap().mod_revision, gap_rev);

    // Everything derived from the backend came with it: leases, and the same hash.
    let mut follower_lease =
        LeaseClient::new(Channel::from_shared(c.members[behind].endpoint()).unwrap().connect().await.unwrap());
    let leases = follower_lease.lease_leases(LeaseLeasesRequest {}).await.unwrap().into_inner();
    assert!(leases.leases.iter().any(|l| l.id == granted.id), "lease missing on the follower: {leases:?}");
    let now = put(&mut kv, "sync", "1").await.unwrap();
    let mut hashes = Vec::new();
    for m in &c.members {
        // a linearizable read first: the put is answered once the leader applied it, a follower
        // may not have heard of its commit yet (HashKV at a revision it lacks is refused)
        let _ = dump(&mut m.ready_client().await).await;
        let ch = Channel::from_shared(m.endpoint()).unwrap().connect().await.unwrap();
        let r = MaintenanceClient::new(ch).hash_kv(HashKvRequest { revision: now }).await.unwrap().into_inner();
        hashes.push((r.hash, r.compact_revision));
    }
    assert!(hashes.iter().all(|h| *h == hashes[0]), "members differ: {hashes:?}");

    // It keeps applying after the snapshot; stopped (SIGKILL) while the others write on, it
    // restarts from the installed state and catches up by a second snapshot.
    put(&mut kv, "after", "1").await.unwrap();
    c.members[behind].kill9();
    for i in 0..200 {
        put(&mut kv, &format!("s{:03}", i % 50), &format!("v{i}")).await.unwrap();
    }
    c.members[behind].start();
    let mut lagging = c.members[behind].ready_client().await;
    assert_eq!(dump(&mut lagging).await, dump(&mut kv).await);
    let installs = c.members[behind].log().matches("installed a snapshot").count();
    assert_eq!(installs, 2, "expected a second snapshot after the restart");
}

/// A raft message POSTed to a member's pipeline but addressed to another member ID (what a member
/// replaced on the same peer URL can still be sent) is refused before raft steps it: here a
/// heartbeat whose commit index is far beyond the log, which would stop raft-rs if stepped.
#[tokio::test]
async fn a_raft_message_addressed_to_another_member_is_refused_not_stepped() {
    use protobuf::Message as _;
    use raft::eraftpb::{Message, MessageType};
    use std::io::{Read, Write};

    use etcd_proto::etcdserverpb::StatusRequest;

    let (_dir, m, mut kv) = common::single_member(&[]).await;
    put(&mut kv, "before", "1").await.unwrap();
    let before = MaintenanceClient::connect(m.endpoint()).await.unwrap().status(StatusRequest {}).await.unwrap().into_inner();
    let header = before.header.clone().unwrap();
    let mut msg = Message::default();
    msg.set_msg_type(MessageType::MsgHeartbeat);
    msg.to = header.member_id ^ 0x5a5a;
    msg.from = 0x1234;
    msg.term = 1000;
    msg.commit = 1_000_000;
    let body = msg.write_to_bytes().unwrap();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", m.peer_port)).unwrap();
    let head = format!(
        "POST /raft HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/protobuf\r\nX-Etcd-Cluster-ID: {:x}\r\nX-Server-From: 1234\r\nX-Server-Version: 3.5.1\r\nX-Min-Cluster-Version: 3.0.0\r\nContent-Length: {}\r\n\r\n",
        header.cluster_id,
        body.len()
    );
    s.write_all(head.as_bytes()).and_then(|_| s.write_all(&body)).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 500"), "answer: {out}");
    // raft went on: still the leader of its own term, still writing
    put(&mut kv, "after", "2").await.unwrap();
    let after = MaintenanceClient::connect(m.endpoint()).await.unwrap().status(StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(after.raft_term, before.raft_term, "the foreign message's term reached raft");
    assert!(m.log_shows("ignoring a raft message addressed to another member"));
}

/// A member that misses the entry removing it (a learner never campaigns, and the leader sends a
/// removed member nothing more) learns it only by dialling its peers again and being refused. So
/// removing a member ends the streams it reads from us, here one opened by hand as the learner
/// would: it closes once the removal is applied, and dialling again is refused with 410.
#[tokio::test]
async fn removing_a_member_ends_the_streams_it_reads_and_refuses_new_ones() {
    use etcd_proto::etcdserverpb::cluster_client::ClusterClient;
    use etcd_proto::etcdserverpb::{MemberAddRequest, MemberRemoveRequest, StatusRequest};
    use std::io::{Read, Write};

    let (_dir, m, _kv) = common::single_member(&[]).await;
    let header = MaintenanceClient::connect(m.endpoint()).await.unwrap().status(StatusRequest {}).await.unwrap().into_inner().header.unwrap();
    let mut cluster = ClusterClient::connect(m.endpoint()).await.unwrap();
    let add = MemberAddRequest { peer_ur_ls: vec!["http://127.0.0.1:1".into()], is_learner: true };
    let learner = cluster.member_add(add).await.unwrap().into_inner().member.unwrap().id;
    let open_stream = || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", m.peer_port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let head = format!(
            "GET /raft/stream/message/{learner:x} HTTP/1.1\r\nHost: x\r\nX-Etcd-Cluster-ID: {:x}\r\nX-Server-From: {learner:x}\r\nX-Raft-To: {:x}\r\nX-Server-Version: 3.5.1\r\nX-Min-Cluster-Version: 3.0.0\r\nX-PeerURLs: http://127.0.0.1:1\r\n\r\n",
            header.cluster_id, header.member_id
        );
        s.write_all(head.as_bytes()).unwrap();
        let mut first = [0u8; 12];
        s.read_exact(&mut first).unwrap();
        (s, String::from_utf8_lossy(&first).into_owned())
    };
    let (mut stream, status_line) = open_stream();
    assert_eq!(status_line, "HTTP/1.1 200");

    cluster.member_remove(MemberRemoveRequest { id: learner }).await.unwrap();
    // the member writes link heartbeats on it until it lets it go; then the body ends
    let ended = tokio::task::spawn_blocking(move || {
        let (mut buf, mut seen) = ([0u8; 4096], Vec::new());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            match stream.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => seen.extend_from_slice(&buf[..n]),
                Err(e) => return Err(e.to_string()),
            }
            // the chunked body's last chunk (the connection itself may be kept alive)
            if seen.ends_with(b"\r\n0\r\n\r\n") {
                return Ok(());
            }
        }
        Err("still open".to_string())
    });
    let read = ended.await.unwrap();
    assert!(read.is_ok(), "the removed member's stream stayed open 5 s after its removal: {read:?}");
    let (_, status_line) = open_stream();
    assert_eq!(status_line, "HTTP/1.1 410");
}
