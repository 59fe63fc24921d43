//! Requests that ride out elections, on 3-member clusters of real processes: a member without a
//! leader holds writes, reads, lease and member requests until one is elected (refusing at once
//! only calls that carry clientv3's `hasleader` metadata), and forwards keep-alives and
//! TimeToLive to whichever member leads once the old leader dies.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{status, TestCluster};
use common::put;
use etcd_proto::etcdserverpb::kv_client::KvClient;
use etcd_proto::etcdserverpb::lease_client::LeaseClient;
use etcd_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseTimeToLiveRequest, PutRequest, RangeRequest,
};
use tonic::transport::Channel;
use tonic::{Code, Request};

/// Short raft timings: elections after 500 ms of silence, so the request timeout is 6 s.
const FAST: &[&str] = &["--heartbeat-interval", "50", "--election-timeout", "500"];

async fn channel(c: &TestCluster, i: usize) -> Channel {
    Channel::from_shared(c.members[i].endpoint()).unwrap().connect().await.unwrap()
}

/// `msg` with clientv3's WithRequireLeader metadata.
fn requiring_leader<T>(msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut().insert("hasleader", "true".parse().unwrap());
    r
}

fn put_req(k: &str, v: &str) -> PutRequest {
    PutRequest { key: k.into(), value: v.into(), ..Default::default() }
}

/// Waits (at most 20 s) until member `i` reports that it knows no leader.
async fn wait_no_leader(c: &TestCluster, i: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while status(&c.members[i]).await.map(|(leader, _)| leader) != Some(0) {
        assert!(Instant::now() < deadline, "member {i} still has a leader after 20 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_to_a_member_without_a_leader_wait_for_the_election_and_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = TestCluster::start(dir.path(), 3, FAST).await;
    let leader = c.wait_leader(&[0, 1, 2]).await;
    let (f, g) = ((leader + 1) % 3, (leader + 2) % 3);
    let mut kv = c.members[f].ready_client().await;
    put(&mut kv, "k", "before").await.unwrap();
    let mut kv_g = c.members[g].ready_client().await;

    // The leader dies and the two survivors cannot reach each other: no election can succeed.
    c.members[leader].kill9();
    c.partition(&[f]);
    wait_no_leader(&c, f).await;

    let ch = channel(&c, f).await;
    let (mut kv, mut lease) = (KvClient::new(ch.clone()), LeaseClient::new(ch));
    let write = tokio::spawn({
        let mut kv = kv.clone();
        async move { kv.put(put_req("k", "during")).await }
    });
    let grant = tokio::spawn({
        let mut lease = lease.clone();
        async move { lease.lease_grant(LeaseGrantRequest { ttl: 30, id: 0 }).await }
    });

    // Calls that require a leader are refused at once (one that waited could not end with
    // "no leader": it would be served after the heal below, or time out).
    let refused = kv.put(requiring_leader(put_req("k", "required"))).await.unwrap_err();
    assert_eq!((refused.code(), refused.message()), (Code::Unavailable, "etcdserver: no leader"));
    let refused = kv.range(requiring_leader(RangeRequest { key: b"k".to_vec(), ..Default::default() })).await.unwrap_err();
    assert_eq!((refused.code(), refused.message()), (Code::Unavailable, "etcdserver: no leader"));
    let (_tx, rx) = tokio::sync::mpsc::channel::<LeaseKeepAliveRequest>(1);
    let refused = lease.lease_keep_alive(requiring_leader(tokio_stream::wrappers::ReceiverStream::new(rx))).await.unwrap_err();
    assert_eq!((refused.code(), refused.message()), (Code::Unavailable, "etcdserver: no leader"));
    assert!(!write.is_finished(), "the write did not wait for a leader: {:?}", write.await);

    // A new election: the waiting requests are served.
    c.heal(&[f]);
    let rev = write.await.unwrap().expect("the write held during the election succeeds").into_inner().header.unwrap().revision;
    let granted = grant.await.unwrap().expect("the lease grant held during the election succeeds").into_inner();
    assert!(granted.id != 0 && granted.ttl == 30, "{granted:?}");
    let got = kv_g.range(RangeRequest { key: b"k".to_vec(), ..Default::default() }).await.unwrap().into_inner();
    assert_eq!((got.kvs[0].value.as_slice(), got.kvs[0].mod_revision), (&b"during"[..], rev));
    assert_eq!(got.kvs[0].version, 2, "the write was applied exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_that_finds_no_leader_within_the_request_timeout_fails_as_etcd_answers() {
    let dir = tempfile::tempdir().unwrap();
    let c = TestCluster::start(dir.path(), 3, FAST).await;
    let leader = c.wait_leader(&[0, 1, 2]).await;
    let f = (leader + 1) % 3;
    let mut kv = c.members[f].ready_client().await;
    c.partition(&[f]);
    wait_no_leader(&c, f).await;
    let mut kv2 = kv.clone();
    let linearizable = kv.range(RangeRequest { key: b"k".to_vec(), ..Default::default() });
    let (write, read) = tokio::join!(kv2.put(put_req("k", "cut-off")), linearizable);
    // etcd 3.4.23 and 3.5.1 answer exactly these after their request timeout (measured)
    let write = write.unwrap_err();
    assert_eq!((write.code(), write.message()), (Code::Unknown, "context deadline exceeded"));
    let read = read.unwrap_err();
    assert_eq!((read.code(), read.message()), (Code::Unavailable, "etcdserver: request timed out"));

    c.heal(&[f]);
    let mut kv_leader = c.members[leader].ready_client().await;
    let got = kv_leader.range(RangeRequest { key: b"k".to_vec(), ..Default::default() }).await.unwrap().into_inner();
    assert!(got.kvs.is_empty(), "a write answered as failed was applied later: {:?}", got.kvs);
}

/// A 3-member cluster and a lease of 10 s granted through a follower: (cluster, leader index,
/// follower index, a lease client of the follower, the lease ID).
async fn lease_through_a_follower(dir: &std::path::Path) -> (TestCluster, usize, usize, LeaseClient<Channel>, i64) {
    let c = TestCluster::start(dir, 3, FAST).await;
    let leader = c.wait_leader(&[0, 1, 2]).await;
    let f = (leader + 1) % 3;
    c.members[f].ready_client().await;
    let mut lease = LeaseClient::new(channel(&c, f).await);
    let id = lease.lease_grant(LeaseGrantRequest { ttl: 10, id: 0 }).await.unwrap().into_inner().id;
    (c, leader, f, lease, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_keep_alive_sent_to_a_follower_as_the_leader_dies_renews_on_the_new_leader() {
    let dir = tempfile::tempdir().unwrap();
    let (mut c, leader, f, mut lease, id) = lease_through_a_follower(dir.path()).await;

    // a keep-alive stream as clientv3 opens it (requiring a leader)
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut responses = lease
        .lease_keep_alive(requiring_leader(tokio_stream::wrappers::ReceiverStream::new(rx)))
        .await
        .unwrap()
        .into_inner();
    tx.send(LeaseKeepAliveRequest { id }).await.unwrap();
    assert_eq!(responses.message().await.unwrap().unwrap().ttl, 10);

    c.members[leader].kill9();
    tx.send(LeaseKeepAliveRequest { id }).await.unwrap();
    let renewed = responses.message().await.expect("the keep-alive is answered, not failed").unwrap();
    assert_eq!((renewed.id, renewed.ttl), (id, 10), "renewed with the full TTL on the new leader");
    let new_leader = c.wait_leader(&[f, (leader + 2) % 3]).await;
    assert_ne!(new_leader, leader);

    let ttl = lease.lease_time_to_live(LeaseTimeToLiveRequest { id, keys: false }).await.unwrap().into_inner();
    assert_eq!(ttl.granted_ttl, 10);
    assert!(ttl.ttl > 0, "the lease survived the leader change: {ttl:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn time_to_live_sent_to_a_follower_as_the_leader_dies_is_answered_by_the_new_leader() {
    let dir = tempfile::tempdir().unwrap();
    let (mut c, leader, _, mut lease, id) = lease_through_a_follower(dir.path()).await;
    // the follower's channel to the leader exists (and goes stale with the kill)
    lease.lease_time_to_live(LeaseTimeToLiveRequest { id, keys: false }).await.unwrap();

    c.members[leader].kill9();
    let ttl = lease
        .lease_time_to_live(LeaseTimeToLiveRequest { id, keys: false })
        .await
        .expect("TimeToLive through a follower rides out the leader's death")
        .into_inner();
    assert_eq!((ttl.id, ttl.granted_ttl), (id, 10));
    assert!(ttl.ttl > 0, "{ttl:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_sent_to_the_leader_while_it_hands_over_leadership_all_succeed() {
    use etcd_proto::etcdserverpb::maintenance_client::MaintenanceClient;
    use etcd_proto::etcdserverpb::MoveLeaderRequest;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let c = TestCluster::start(dir.path(), 3, FAST).await;
    let leader = c.wait_leader(&[0, 1, 2]).await;
    let target = (leader + 1) % 3;
    c.members[leader].ready_client().await;
    let target_id = status(&c.members[target]).await.unwrap().1;
    let ch = channel(&c, leader).await;
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let (mut kv, stop) = (KvClient::new(ch.clone()), stop.clone());
            tokio::spawn(async move {
                let mut n = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    // a proposal reaching the leader during the transfer is held, not dropped
                    kv.put(put_req(&format!("w{w}"), &n.to_string())).await?;
                    n += 1;
                }
                Ok::<u32, tonic::Status>(n)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    MaintenanceClient::new(ch.clone()).move_leader(MoveLeaderRequest { target_id }).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        let n = w.await.unwrap().expect("no write fails while leadership moves");
        assert!(n > 0);
    }
    assert_eq!(status(&c.members[leader]).await.unwrap().0, target_id);
}

/// etcd's monitorLeader: a stream opened with the require-leader metadata ends with
/// `etcdserver: no leader` once its member has known no leader for three election timeouts,
/// so that clientv3 moves it to a member with a leader; a stream without it stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_keep_alive_stream_requiring_a_leader_ends_when_its_member_stays_leaderless() {
    let dir = tempfile::tempdir().unwrap();
    let (c, _leader, f, mut lease, id) = lease_through_a_follower(dir.path()).await;
    let open = |lease: &mut LeaseClient<Channel>, require: bool| {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        let req = if require { requiring_leader(stream) } else { Request::new(stream) };
        let mut lease = lease.clone();
        async move { (tx, lease.lease_keep_alive(req).await.unwrap().into_inner()) }
    };
    let (tx, mut required) = open(&mut lease, true).await;
    let (tx_plain, mut plain) = open(&mut lease, false).await;
    tx.send(LeaseKeepAliveRequest { id }).await.unwrap();
    assert_eq!(required.message().await.unwrap().unwrap().ttl, 10);

    c.partition(&[f]);
    wait_no_leader(&c, f).await;
    let ended = tokio::time::timeout(Duration::from_secs(10), required.message())
        .await
        .expect("the stream ends within a few election timeouts")
        .unwrap_err();
    assert_eq!((ended.code(), ended.message()), (Code::Unavailable, "etcdserver: no leader"));
    // the stream without the metadata is still open: its keep-alive waits for a leader
    tx_plain.send(LeaseKeepAliveRequest { id }).await.unwrap();
    c.heal(&[f]);
    let renewed = tokio::time::timeout(Duration::from_secs(20), plain.message()).await.expect("answered after the heal");
    assert_eq!(renewed.unwrap().unwrap().ttl, 10);
}
