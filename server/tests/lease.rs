//! Leases against a real etcd-rs process: expiry deletes a lease's keys at one revision,
//! keep-alive extends, revoke deletes, unknown leases answer as etcd, leases and their
//! remaining TTL survive SIGKILL, and a mass expiry does not stall writes.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Member;
use etcd_proto::etcdserverpb::kv_client::KvClient;
use etcd_proto::etcdserverpb::lease_client::LeaseClient;
use etcd_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseLeasesRequest, LeaseRevokeRequest, LeaseTimeToLiveRequest,
    PutRequest, RangeRequest,
};
use tonic::transport::Channel;
use tonic::Code;

async fn clients(m: &Member) -> (KvClient<Channel>, LeaseClient<Channel>) {
    let kv = m.ready_client().await;
    let ch = Channel::from_shared(m.endpoint()).unwrap().connect().await.unwrap();
    (kv, LeaseClient::new(ch))
}

async fn grant(l: &mut LeaseClient<Channel>, id: i64, ttl: i64) -> Result<(i64, i64), tonic::Status> {
    let r = l.lease_grant(LeaseGrantRequest { id, ttl }).await?.into_inner();
    Ok((r.id, r.ttl))
}

async fn put_lease(kv: &mut KvClient<Channel>, k: &str, lease: i64) -> i64 {
    let r = kv
        .put(PutRequest { key: k.into(), value: b"v".to_vec(), lease, ..Default::default() })
        .await
        .expect("put")
        .into_inner();
    r.header.unwrap().revision
}

/// Keys (sorted) present at `rev` (0 = now) and the header revision.
async fn keys_at(kv: &mut KvClient<Channel>, rev: i64) -> (Vec<String>, i64) {
    let r = kv
        .range(RangeRequest { key: vec![0], range_end: vec![0], revision: rev, keys_only: true, ..Default::default() })
        .await
        .expect("range")
        .into_inner();
    (r.kvs.iter().map(|kv| String::from_utf8_lossy(&kv.key).into_owned()).collect(), r.header.unwrap().revision)
}

async fn time_to_live(l: &mut LeaseClient<Channel>, id: i64, keys: bool) -> (i64, i64, Vec<Vec<u8>>) {
    let r = l.lease_time_to_live(LeaseTimeToLiveRequest { id, keys }).await.expect("ttl").into_inner();
    (r.ttl, r.granted_ttl, r.keys)
}

/// One keep-alive on a fresh stream; returns the answered TTL.
async fn keep_alive_once(l: &mut LeaseClient<Channel>, id: i64) -> i64 {
    let req = tokio_stream::iter(vec![LeaseKeepAliveRequest { id }]);
    let mut resp = l.lease_keep_alive(req).await.expect("keep-alive").into_inner();
    let r = resp.message().await.expect("keep-alive answer").expect("one answer");
    assert_eq!(r.id, id);
    r.ttl
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_lease_deletes_all_its_keys_at_one_revision_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = Member::new(&dir.path().join("m0.etcd"), &[]);
    m.start();
    let (mut kv, mut l) = clients(&m).await;
    let (id, ttl) = grant(&mut l, 0, 2).await.unwrap();
    let granted = Instant::now();
    assert!(id > 0);
    assert_eq!(ttl, 2);
    for k in ["a", "b", "c"] {
        put_lease(&mut kv, k, id).await;
    }
    let before = put_lease(&mut kv, "unleased", 0).await;
    let (_, got_keys) = {
        let (ttl, granted_ttl, keys) = time_to_live(&mut l, id, true).await;
        assert_eq!(granted_ttl, 2);
        assert!((0..=2).contains(&ttl), "remaining {ttl}");
        (ttl, keys)
    };
    assert_eq!(got_keys, vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);

    let (gone_at, rev) = loop {
        let (keys, rev) = keys_at(&mut kv, 0).await;
        if keys == ["unleased"] {
            break (granted.elapsed(), rev);
        }
        assert!(granted.elapsed() < Duration::from_secs(10), "keys still there: {keys:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!("lease of TTL 2 s: keys gone {gone_at:?} after the grant");
    assert!(gone_at >= Duration::from_secs(2), "expired early: {gone_at:?}");
    assert!(gone_at <= Duration::from_millis(3000), "expired late: {gone_at:?}");
    // one revision for all three deletes: all present just before it, none at it
    assert_eq!(rev, before + 1);
    assert_eq!(keys_at(&mut kv, before).await.0, ["a", "b", "c", "unleased"]);
    assert_eq!(keys_at(&mut kv, rev).await.0, ["unleased"]);
    assert_eq!(time_to_live(&mut l, id, false).await.0, -1);
    assert_eq!(keep_alive_once(&mut l, id).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_extends_and_revoke_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = Member::new(&dir.path().join("m0.etcd"), &[]);
    m.start();
    let (mut kv, mut l) = clients(&m).await;
    let (id, _) = grant(&mut l, 0, 2).await.unwrap();
    put_lease(&mut kv, "alive", id).await;

    // one stream, a keep-alive every 500 ms for 4 s: twice the TTL
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut answers = l.lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    for _ in 0..8 {
        tx.send(LeaseKeepAliveRequest { id }).await.unwrap();
        let a = answers.message().await.unwrap().unwrap();
        assert_eq!((a.id, a.ttl), (id, 2));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(tx);
    assert_eq!(keys_at(&mut kv, 0).await.0, ["alive"], "a kept-alive lease expired");

    let (id2, _) = grant(&mut l, 0, 100).await.unwrap();
    put_lease(&mut kv, "x", id2).await;
    let rev = put_lease(&mut kv, "y", id2).await;
    let r = l.lease_revoke(LeaseRevokeRequest { id: id2 }).await.unwrap().into_inner();
    assert_eq!(r.header.unwrap().revision, rev + 1);
    assert_eq!(keys_at(&mut kv, 0).await.0, ["alive"]);
    let e = l.lease_revoke(LeaseRevokeRequest { id: id2 }).await.unwrap_err();
    assert_eq!((e.code(), e.message()), (Code::NotFound, "etcdserver: requested lease not found"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grant_and_unknown_leases_answer_as_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = Member::new(&dir.path().join("m0.etcd"), &[]);
    m.start();
    let (mut kv, mut l) = clients(&m).await;
    // explicit ID kept; a TTL below the minimum (ceil(1.5 x 1 s election timeout)) is raised
    assert_eq!(grant(&mut l, 42, 1).await.unwrap(), (42, 2));
    let e = grant(&mut l, 42, 10).await.unwrap_err();
    assert_eq!((e.code(), e.message()), (Code::FailedPrecondition, "etcdserver: lease already exists"));
    let e = grant(&mut l, 43, 9_000_000_001).await.unwrap_err();
    assert_eq!((e.code(), e.message()), (Code::OutOfRange, "etcdserver: too large lease TTL"));
    assert_eq!(time_to_live(&mut l, 4242, true).await, (-1, 0, vec![]));
    assert_eq!(keep_alive_once(&mut l, 4242).await, 0);
    let e = kv
        .put(PutRequest { key: b"k".to_vec(), lease: 4242, ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!((e.code(), e.message()), (Code::NotFound, "etcdserver: requested lease not found"));
    let ids: Vec<i64> = l.lease_leases(LeaseLeasesRequest {}).await.unwrap().into_inner().leases.iter().map(|s| s.id).collect();
    assert_eq!(ids, [42]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_keeps_leases_keys_and_checkpointed_remaining_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = Member::new(&dir.path().join("m0.etcd"), &["--experimental-lease-checkpoint-interval", "1s"]);
    m.start();
    let (mut kv, mut l) = clients(&m).await;
    let (id, _) = grant(&mut l, 0, 30).await.unwrap();
    put_lease(&mut kv, "held", id).await;
    let (short, _) = grant(&mut l, 0, 3).await.unwrap();
    put_lease(&mut kv, "brief", short).await;
    tokio::time::sleep(Duration::from_millis(4500)).await;
    assert_eq!(keys_at(&mut kv, 0).await.0, ["held"]);
    m.kill9();
    m.start();
    let (mut kv, mut l) = clients(&m).await;
    let (ttl, granted_ttl, keys) = time_to_live(&mut l, id, true).await;
    assert_eq!(granted_ttl, 30);
    assert_eq!(keys, vec![b"held".to_vec()]);
    // about 30 - 4.5 s before the kill, plus the election timeout (1 s) a new leader adds;
    // without checkpoints it would be back at 30 + 1. The bounds leave room for a loaded
    // machine (checkpoints proposed late, a slow restart).
    assert!((15..=29).contains(&ttl), "remaining TTL after restart: {ttl}");
    assert_eq!(time_to_live(&mut l, short, false).await.0, -1);
    assert_eq!(keys_at(&mut kv, 0).await.0, ["held"]);
    // a keep-alive restores the full TTL, and a restart after it does not bring back the checkpoint
    assert_eq!(keep_alive_once(&mut l, id).await, 30);
    tokio::time::sleep(Duration::from_millis(300)).await;
    m.kill9();
    m.start();
    let (_, mut l) = clients(&m).await;
    let (ttl, _, _) = time_to_live(&mut l, id, false).await;
    assert!((26..=31).contains(&ttl), "remaining TTL after keep-alive and restart: {ttl}");
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Many leases expire at the same moment: they are granted, then the member is killed and
/// restarted, so its new primary lessor gives them all the same deadline (restart + election
/// timeout + TTL). The leader must revoke them at the bounded rate (etcd spreads a pile-up to
/// 3/4 of 1,000 a second) while writes keep being served. The default count keeps the debug
/// test short (granting runs at the server's write rate); `LEASE_MASS_EXPIRY_COUNT=100000
/// LEASE_MASS_EXPIRY_TTL=300` runs the full-size case.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mass_expiry_is_rate_limited_and_does_not_stall_writes() {
    let leases = env_or("LEASE_MASS_EXPIRY_COUNT", 10_000) as i64;
    let ttl = env_or("LEASE_MASS_EXPIRY_TTL", 40) as i64;
    let dir = tempfile::tempdir().unwrap();
    let mut m = Member::new(&dir.path().join("m0.etcd"), &["--experimental-enable-lease-checkpoint=false"]);
    m.start();
    let (_, l) = clients(&m).await;
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(1));
    let mut granters = Vec::new();
    for _ in 0..64 {
        let mut l = l.clone();
        let next = next.clone();
        granters.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed) as i64;
                if n > leases {
                    return;
                }
                grant(&mut l, n, ttl).await.expect("grant");
            }
        }));
    }
    for g in granters {
        g.await.unwrap();
    }
    let granting = started.elapsed();
    eprintln!("granted {leases} leases in {granting:?}");
    assert!(granting < Duration::from_secs(ttl as u64), "granting took longer than the TTL; raise LEASE_MASS_EXPIRY_TTL");
    m.kill9();
    m.start();
    let restarted = Instant::now();
    let (kv, l) = clients(&m).await;
    let mut l2 = l.clone();
    assert_eq!(l2.lease_leases(LeaseLeasesRequest {}).await.unwrap().into_inner().leases.len(), leases as usize);

    // Writes while the leases expire: they keep being served, and revokes stay at the bounded rate.
    let mut kv2 = kv.clone();
    let mut slowest = Duration::ZERO;
    let mut samples: Vec<(Instant, usize)> = Vec::new();
    let deadline = restarted + Duration::from_secs(ttl as u64 + 60 + leases as u64 / 500);
    let mut n = 0;
    loop {
        let t = Instant::now();
        kv2.put(PutRequest { key: format!("w{n}").into_bytes(), value: b"v".to_vec(), ..Default::default() })
            .await
            .expect("put during mass expiry");
        slowest = slowest.max(t.elapsed());
        n += 1;
        if n % 10 == 0 {
            let left = l2.lease_leases(LeaseLeasesRequest {}).await.unwrap().into_inner().leases.len();
            samples.push((Instant::now(), left));
            if left == 0 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "leases not all revoked in time: {:?}", samples.last().map(|s| s.1));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let first_drop = samples.iter().position(|(_, left)| *left < leases as usize).unwrap_or(0);
    let (t0, n0) = samples[first_drop.saturating_sub(1)];
    let (t1, _) = *samples.last().unwrap();
    let secs = (t1 - t0).as_secs_f64();
    let rate = n0 as f64 / secs;
    eprintln!(
        "first revoke {:?} after restart; {n} writes during the expiry, slowest {slowest:?}; revoked {n0} leases in {secs:.1}s ({rate:.0}/s)",
        t0 - restarted
    );
    assert!(t0 - restarted >= Duration::from_secs(ttl as u64), "leases expired early after the restart");
    // Writes kept being served while the leases were being revoked instead of waiting behind all
    // the revokes: the samples (one per 10 writes) saw the count between "all" and "none" many
    // times. (Behaviour, not latency: a latency bound flaked on a loaded machine.)
    let while_revoking = samples.iter().filter(|(_, left)| *left > 0 && *left < leases as usize).count();
    assert!(while_revoking >= 5, "writes stalled during the mass expiry: {while_revoking} samples while revoking");
    // 1,000 a second at most (etcd spreads a pile-up to 750 a second)
    assert!(rate <= 1000.0, "revoke rate {rate:.0}/s is above the bound");
}
