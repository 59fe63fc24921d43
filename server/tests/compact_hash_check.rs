//! The compaction hash check (`--experimental-compact-hash-check-enabled`, etcd 3.5.6+; 3.6's
//! `--feature-gates=CompactHashCheck=true`): every member hashes its key table at each
//! compaction, and the leader compares those hashes and raises CORRUPT for the member whose
//! hash the others do not share.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{status, TestCluster};
use common::tamper::tamper_value;
use common::{put, wait_revision, Member};
use etcd_proto::etcdserverpb::alarm_request::AlarmAction;
use etcd_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use etcd_proto::etcdserverpb::{
    AlarmMember, AlarmRequest, AlarmType, CompactionRequest, DeleteRangeRequest, HashKvRequest,
};
use tonic::transport::Channel;

async fn alarms(m: &Member) -> Vec<AlarmMember> {
    let ch = Channel::from_shared(m.endpoint()).unwrap().connect().await.unwrap();
    let get = AlarmRequest { action: AlarmAction::Get as i32, ..Default::default() };
    MaintenanceClient::new(ch).alarm(get).await.unwrap().into_inner().alarms
}

/// Waits (at most 30 s) until the member's log has shown `needle` `times` times.
fn wait_log(m: &Member, needle: &str, times: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while m.log().matches(needle).count() < times {
        assert!(Instant::now() < deadline, "no {times}x {needle:?} in the log:\n{}", m.log());
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_hash_at_a_compaction_differs_gets_the_corrupt_alarm_and_a_healthy_cluster_none() {
    let dir = tempfile::tempdir().unwrap();
    let flags = ["--experimental-compact-hash-check-enabled", "--experimental-compact-hash-check-time", "1s"];
    let mut c = TestCluster::start(dir.path(), 3, &flags).await;
    let leader = c.wait_leader(&[0, 1, 2]).await;
    let f = (leader + 1) % 3;
    let mut kv = c.members[leader].ready_client().await;
    let mut rev = 0;
    for i in 0..10 {
        rev = put(&mut kv, &format!("k{}", i % 5), &format!("v{i}")).await.unwrap();
    }
    for m in &c.members {
        wait_revision(m, rev).await;
    }

    // healthy: every member stores the same hash at the compaction, and the leader says so
    kv.compact(CompactionRequest { revision: rev, physical: true }).await.unwrap();
    wait_log(&c.members[leader], "successfully checked hash on whole cluster", 1);
    for m in &c.members {
        assert!(m.log_shows("storing new hash"), "{}", m.log());
    }
    assert!(alarms(&c.members[leader]).await.is_empty());

    // one follower's k1 changed behind raft's back: its hash at the next compaction differs
    c.members[f].stop();
    tamper_value(&c.members[f].data_dir, b"k1", b"tampered");
    c.members[f].start();
    c.members[f].ready_client().await;
    for i in 0..5 {
        // k1 is not written again: its tampered row stays in the next compaction's hash
        rev = put(&mut kv, &format!("n{i}"), "v").await.unwrap();
    }
    for m in &c.members {
        wait_revision(m, rev).await;
    }
    let (_, f_id) = status(&c.members[f]).await.unwrap();
    kv.compact(CompactionRequest { revision: rev, physical: true }).await.unwrap();
    let want = [AlarmMember { member_id: f_id, alarm: AlarmType::Corrupt as i32 }];
    let deadline = Instant::now() + Duration::from_secs(30);
    while alarms(&c.members[leader]).await != want {
        assert!(Instant::now() < deadline, "no CORRUPT alarm for {f_id:x}; leader log:\n{}", c.members[leader].log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(c.members[leader].log_shows("Detected compaction hash mismatch"), "{}", c.members[leader].log());
    // etcd's corrupt applier refuses writes
    let e = put(&mut kv, "after", "v").await.unwrap_err();
    assert_eq!((e.code(), e.message()), (tonic::Code::DataLoss, "etcdserver: corrupt cluster"));
}

/// `GET /members/hashkv` on the member's peer port with `{"revision": rev}`: the JSON answer.
fn peer_hash_kv(m: &Member, rev: i64) -> serde_json::Value {
    use std::io::{Read, Write};
    let body = format!("{{\"revision\":{rev}}}");
    let mut s = std::net::TcpStream::connect(("127.0.0.1", m.peer_port)).unwrap();
    let req = format!("GET /members/hashkv HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, json) = out.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{out}");
    serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hash_stored_at_a_compaction_is_etcds_hash_kv_at_that_revision_just_before_it() {
    let etcd = std::env::var("ETCD_BIN").unwrap_or_else(|_| "/usr/bin/etcd".into());
    if !std::path::Path::new(&etcd).exists() {
        eprintln!("skipped: no etcd binary at {etcd} (set ETCD_BIN)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut rs = Member::new(&dir.path().join("rs.etcd"), &[]);
    let mut go = Member::new(&dir.path().join("go.etcd"), &[]);
    go.bin = etcd.into();
    rs.start();
    go.start();
    let mut kvs = [rs.ready_client().await, go.ready_client().await];
    let go_ch = Channel::from_shared(go.endpoint()).unwrap().connect().await.unwrap();
    let mut go_mt = MaintenanceClient::new(go_ch);
    let mut expected = Vec::new();
    for round in 0..2 {
        // the same history on both: overwrites, a delete, then a put (no tombstone at the compaction)
        let mut rev = 0;
        for kv in kvs.iter_mut() {
            for i in 0..9 {
                rev = put(kv, &format!("k{}", i % 4), &format!("v{round}-{i}")).await.unwrap();
            }
            kv.delete_range(DeleteRangeRequest { key: b"k1".to_vec(), ..Default::default() }).await.unwrap();
            let last = put(kv, "last", &format!("{round}")).await.unwrap();
            assert_eq!(last, rev + 2);
            rev = last;
        }
        let before = go_mt.hash_kv(HashKvRequest { revision: rev }).await.unwrap().into_inner();
        expected.push((rev, before.hash, before.compact_revision));
        for kv in kvs.iter_mut() {
            kv.compact(CompactionRequest { revision: rev, physical: true }).await.unwrap();
        }
    }
    assert_eq!(expected[0].2, -1, "etcd's never-compacted store answers -1");
    assert_eq!(expected[1].2, expected[0].0);
    for (rev, hash, compact) in expected {
        let deadline = Instant::now() + Duration::from_secs(10);
        let got = loop {
            let got = peer_hash_kv(&rs, rev);
            // the physical compaction may still be under way: a stored hash carries hash_revision
            if got["hash_revision"] == rev || Instant::now() > deadline {
                break got;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(got["hash"], hash, "{got}");
        assert_eq!(got["compact_revision"], compact, "{got}");
        assert_eq!(got["hash_revision"], rev, "{got}");
    }
}
