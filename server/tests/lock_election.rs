//! The v3lock and v3election services, as etcd's concurrency recipes behave.

mod common;

use std::time::Duration;

use common::Member;
use etcd_proto::etcdserverpb::lease_client::LeaseClient;
use etcd_proto::etcdserverpb::LeaseGrantRequest;
use etcd_proto::v3electionpb::election_client::ElectionClient;
use etcd_proto::v3electionpb::{CampaignRequest, LeaderRequest, ProclaimRequest, ResignRequest};
use etcd_proto::v3lockpb::lock_client::LockClient;
use etcd_proto::v3lockpb::{LockRequest, UnlockRequest};
use tonic::transport::Channel;

async fn lease(ch: &Channel) -> i64 {
    let mut l = LeaseClient::new(ch.clone());
    l.lease_grant(LeaseGrantRequest { ttl: 60, id: 0 }).await.unwrap().into_inner().id
}

/// A running member, a channel to it and two leases of 60 s.
async fn member_with_two_leases(dir: &tempfile::TempDir) -> (Member, Channel, i64, i64) {
    let mut m = Member::new(&dir.path().join("m.etcd"), &[]);
    m.start();
    m.ready_client().await;
    let ch = Channel::from_shared(m.endpoint()).unwrap().connect().await.unwrap();
    let (l1, l2) = (lease(&ch).await, lease(&ch).await);
    (m, ch, l1, l2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_is_held_by_one_lease_at_a_time_in_arrival_order() {
    let dir = tempfile::tempdir().unwrap();
    let (_m, ch, l1, l2) = member_with_two_leases(&dir).await;
    let mut lock = LockClient::new(ch.clone());
    let first = lock.lock(LockRequest { name: b"m".to_vec(), lease: l1 }).await.unwrap().into_inner();
    assert_eq!(first.key, format!("m/{l1:x}").into_bytes());

    let mut other = LockClient::new(ch.clone());
    let waiter = tokio::spawn(async move { other.lock(LockRequest { name: b"m".to_vec(), lease: l2 }).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "a second lease got the lock while the first held it");
    lock.unlock(UnlockRequest { key: first.key }).await.unwrap();
    let second = tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap().unwrap().into_inner();
    assert_eq!(second.key, format!("m/{l2:x}").into_bytes());
    let e = lock.lock(LockRequest { name: b"m".to_vec(), lease: 999 }).await.unwrap_err();
    assert_eq!(e.message(), "etcdserver: requested lease not found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_election_has_one_leader_whose_value_observers_follow() {
    let dir = tempfile::tempdir().unwrap();
    let (_m, ch, l1, l2) = member_with_two_leases(&dir).await;
    let mut e = ElectionClient::new(ch.clone());
    let name = b"e".to_vec();
    let no_leader = e.leader(LeaderRequest { name: name.clone() }).await.unwrap_err();
    assert_eq!(no_leader.message(), "election: no leader");

    let c1 = CampaignRequest { name: name.clone(), lease: l1, value: b"a".to_vec() };
    let leader1 = e.campaign(c1).await.unwrap().into_inner().leader.unwrap();
    let mut observe = e.observe(LeaderRequest { name: name.clone() }).await.unwrap().into_inner();
    let seen = |r: Option<etcd_proto::v3electionpb::LeaderResponse>| r.unwrap().kv.unwrap().value;
    assert_eq!(seen(observe.message().await.unwrap()), b"a");

    let mut e2 = ElectionClient::new(ch.clone());
    let c2 = CampaignRequest { name: name.clone(), lease: l2, value: b"b".to_vec() };
    let campaign2 = tokio::spawn(async move { e2.campaign(c2).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!campaign2.is_finished(), "two leaders at once");

    e.proclaim(ProclaimRequest { leader: Some(leader1.clone()), value: b"a2".to_vec() }).await.unwrap();
    assert_eq!(seen(observe.message().await.unwrap()), b"a2");
    e.resign(ResignRequest { leader: Some(leader1.clone()) }).await.unwrap();
    let leader2 = tokio::time::timeout(Duration::from_secs(5), campaign2).await.unwrap().unwrap().unwrap().into_inner();
    assert_eq!(leader2.leader.unwrap().key, format!("e/{l2:x}").into_bytes());
    assert_eq!(seen(observe.message().await.unwrap()), b"b");
    let now = e.leader(LeaderRequest { name: name.clone() }).await.unwrap().into_inner();
    assert_eq!(now.kv.unwrap().value, b"b");

    let stale = e.proclaim(ProclaimRequest { leader: Some(leader1), value: b"x".to_vec() }).await.unwrap_err();
    assert_eq!(stale.message(), "election: not leader");
    let missing = e.resign(ResignRequest { leader: None }).await.unwrap_err();
    assert_eq!(missing.message(), "\"leader\" field must be provided");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_a_lease_run_on_a_new_60s_lease_and_errors_are_code_unknown() {
    use etcd_proto::etcdserverpb::LeaseTimeToLiveRequest;
    let dir = tempfile::tempdir().unwrap();
    let (_m, ch, _, _) = member_with_two_leases(&dir).await;
    let ttl = |id: i64| {
        let mut l = LeaseClient::new(ch.clone());
        async move { l.lease_time_to_live(LeaseTimeToLiveRequest { id, keys: false }).await.unwrap().into_inner().granted_ttl }
    };
    let mut lock = LockClient::new(ch.clone());
    let held = lock.lock(LockRequest { name: b"m".to_vec(), lease: 0 }).await.unwrap().into_inner();
    let lease_hex = std::str::from_utf8(&held.key).unwrap().strip_prefix("m/").unwrap().to_string();
    assert_eq!(ttl(i64::from_str_radix(&lease_hex, 16).unwrap()).await, 60);

    let mut e = ElectionClient::new(ch.clone());
    let c = CampaignRequest { name: b"e".to_vec(), lease: 0, value: b"v".to_vec() };
    let leader = e.campaign(c).await.unwrap().into_inner().leader.unwrap();
    assert_ne!(leader.lease, 0);
    assert_eq!(leader.key, format!("e/{:x}", leader.lease).into_bytes());
    assert_eq!(ttl(leader.lease).await, 60);

    // etcd's services reach the server through an in-process client: its errors are plain
    let unknown_lease = lock.lock(LockRequest { name: b"m".to_vec(), lease: 999 }).await.unwrap_err();
    assert_eq!((unknown_lease.code(), unknown_lease.message()), (tonic::Code::Unknown, "etcdserver: requested lease not found"));
    let no_key = lock.unlock(UnlockRequest { key: vec![] }).await.unwrap_err();
    assert_eq!((no_key.code(), no_key.message()), (tonic::Code::Unknown, "etcdserver: key is not provided"));
    let no_leader = e.leader(LeaderRequest { name: b"none".to_vec() }).await.unwrap_err();
    assert_eq!(no_leader.code(), tonic::Code::Unknown);
}
