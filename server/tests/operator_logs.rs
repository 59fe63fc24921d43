//! The log lines operators' dashboards and runbooks grep for, in etcd's zap JSON (`msg` texts and
//! field names as etcd 3.5.1 writes them, checked against its logs): a 3-member cluster logging
//! to files (`--log-outputs`) is elected, publishes, applies slowly (`--warning-apply-duration`),
//! compacts, takes in a learner that catches up by snapshot, promotes and removes it, and loses
//! its leader.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::cluster::{status, TestCluster};
use common::{put, Member};
use etcd_proto::etcdserverpb::cluster_client::ClusterClient;
use etcd_proto::etcdserverpb::kv_client::KvClient;
use etcd_proto::etcdserverpb::{CompactionRequest, MemberAddRequest, MemberPromoteRequest, MemberRemoveRequest};
use serde_json::Value;
use tonic::transport::Channel;

/// The JSON lines of a log file (other lines, if any, are left out).
fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap_or_default().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// The first line of `path` whose msg satisfies `pred` and that `also` accepts, waiting up to 20 s.
fn wait_line(path: &Path, what: &str, pred: impl Fn(&str) -> bool, also: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(l) = lines(path).into_iter().find(|l| l["msg"].as_str().is_some_and(&pred) && also(l)) {
            return l;
        }
        assert!(Instant::now() < deadline, "no {what:?} line in {}:\n{}", path.display(), std::fs::read_to_string(path).unwrap_or_default());
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn msg_is(want: &'static str) -> impl Fn(&str) -> bool {
    move |m| m == want
}

fn any(_: &Value) -> bool {
    true
}

/// zap's keys come first, in zap's order, with etcd's formats.
fn check_zap_keys(l: &Value) {
    let keys: Vec<&String> = l.as_object().unwrap().keys().collect();
    assert_eq!(keys[0..2], ["level", "ts"], "{l}");
    let ts = l["ts"].as_str().unwrap();
    // 2026-12-06T16:55:20.798Z
    assert!(ts.len() == 24 && ts.ends_with('Z') && ts.as_bytes()[19] == b'.', "{l}");
    assert!(l["caller"].as_str().unwrap().contains(".rs:"), "{l}");
}

/// A Go duration string ("21.592µs", "8.4ms", "1.2s").
fn is_go_duration(v: &Value) -> bool {
    v.as_str().is_some_and(|s| ["ns", "µs", "ms", "s"].iter().any(|u| s.ends_with(u)) && s.starts_with(|c: char| c.is_ascii_digit()))
}

fn hex(id: u64) -> String {
    format!("{id:x}")
}

async fn kv(m: &Member) -> KvClient<Channel> {
    m.ready_client().await
}

async fn cluster_client(m: &Member) -> ClusterClient<Channel> {
    ClusterClient::new(Channel::from_shared(m.endpoint()).unwrap().connect().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_events_are_logged_with_etcds_messages_and_fields() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let log_files: Vec<PathBuf> = (0..4).map(|i| dir.join(format!("m{i}.json.log"))).collect();
    let log_arg = |i: usize| log_files[i].to_str().unwrap().to_string();
    let common_flags = ["--warning-apply-duration", "1ns", "--snapshot-count", "10", "--snapshot-catchup-entries", "5"];
    let extras: Vec<Vec<String>> = (0..3)
        .map(|i| common_flags.iter().map(|s| s.to_string()).chain(["--log-outputs".into(), log_arg(i)]).collect())
        .collect();
    let extra_refs: Vec<Vec<&str>> = extras.iter().map(|e| e.iter().map(String::as_str).collect()).collect();
    let extra_slices: Vec<&[&str]> = extra_refs.iter().map(|e| e.as_slice()).collect();
    let mut c = TestCluster::start_each(dir, &extra_slices, "http").await;
    let leader = c.wait_leader(&[0, 1, 2]).await;
    let mut ids = Vec::new();
    for m in &c.members {
        ids.push(status(m).await.unwrap().1);
    }
    let leader_id = ids[leader];

    // elected, published, ready
    for (i, f) in log_files[..3].iter().enumerate() {
        let want = format!("raft.node: {} elected leader {} at term", hex(ids[i]), hex(leader_id));
        let l = wait_line(f, "elected leader", |m| m.starts_with(&want), any);
        check_zap_keys(&l);
        assert_eq!(l["logger"], "raft", "{l}");
        assert_eq!(l.as_object().unwrap().keys().nth(2).map(String::as_str), Some("logger"), "{l}");
        let l = wait_line(f, "published", msg_is("published local member to cluster through raft"), any);
        assert_eq!(l["local-member-id"], hex(ids[i]), "{l}");
        assert_eq!(l["request-path"], format!("/0/members/{}/attributes", hex(ids[i])), "{l}");
        assert_eq!(l["local-member-attributes"], format!("{{Name:m{i} ClientURLs:[{}]}}", c.members[i].endpoint()), "{l}");
        assert!(l["cluster-id"].as_str().is_some_and(|s| !s.is_empty()), "{l}");
        assert_eq!(l["publish-timeout"], "7s", "{l}");
        wait_line(f, "ready", msg_is("ready to serve client requests"), any);
        let l = wait_line(f, "serving", msg_is("serving client traffic insecurely; this is strongly discouraged!"), any);
        assert_eq!(l["traffic"], "grpc+http", "{l}");
    }

    // slow applies (every apply is slower than 1ns) and a compaction
    let mut client = kv(&c.members[leader]).await;
    let mut rev = 0;
    for i in 0..30 {
        rev = put(&mut client, &format!("k{i}"), "v").await.unwrap();
    }
    client.compact(CompactionRequest { revision: rev - 5, physical: true }).await.unwrap();
    for f in &log_files[..3] {
        let l = wait_line(f, "apply took too long", msg_is("apply request took too long"), |l| l["request"].as_str().is_some_and(|r| r.ends_with("put")));
        assert_eq!(l["level"], "warn", "{l}");
        assert!(is_go_duration(&l["took"]), "{l}");
        assert_eq!(l["expected-duration"], "1ns", "{l}");
        assert_eq!(l["prefix"], "", "{l}");
        assert!(l["request"].as_str().unwrap().starts_with("header:<ID:"), "{l}");
        assert!(l.get("response").is_some(), "{l}");
        let l = wait_line(f, "compaction", msg_is("finished scheduled compaction"), any);
        assert_eq!(l["compact-revision"], rev - 5, "{l}");
        assert!(is_go_duration(&l["took"]), "{l}");
    }

    // a learner joins (by snapshot: the log was compacted past its start), is promoted, removed
    let mut cluster = cluster_client(&c.members[leader]).await;
    let mut learner = Member::new(&dir.join("m3.etcd"), &[]);
    learner.name = "m3".into();
    let learner_peer = format!("http://127.0.0.1:{}", learner.peer_port);
    let added = cluster.member_add(MemberAddRequest { peer_ur_ls: vec![learner_peer.clone()], is_learner: true }).await.unwrap().into_inner();
    let learner_id = added.member.unwrap().id;
    let initial: Vec<String> = (0..3).map(|i| format!("m{i}=http://127.0.0.1:{}", c.proxies[i].port)).chain([format!("m3={learner_peer}")]).collect();
    learner.initial_cluster = Some(initial.join(","));
    learner.extra = ["--initial-cluster-state", "existing", "--log-outputs", &log_arg(3)].iter().map(|s| s.to_string()).collect();
    learner.start();
    for f in &log_files[..3] {
        let l = wait_line(f, "added member", msg_is("added member"), |l| l["added-peer-id"] == hex(learner_id));
        assert_eq!(l["added-peer-peer-urls"], serde_json::json!([learner_peer]), "{l}");
        assert!(l["cluster-id"].is_string() && l["local-member-id"].is_string(), "{l}");
    }
    let sent = wait_line(&log_files[leader], "sent snapshot", msg_is("sent database snapshot"), any);
    assert_eq!(sent["remote-peer-id"], hex(learner_id), "{sent}");
    assert!(sent["snapshot-index"].is_u64() && sent["bytes"].is_u64() && sent["size"].as_str().is_some_and(|s| s.ends_with('B')), "{sent}");
    wait_line(&log_files[leader], "sending snapshot", msg_is("sending database snapshot"), |l| l["remote-peer-id"] == hex(learner_id));
    let l = wait_line(&log_files[3], "receiving snapshot", msg_is("receiving database snapshot"), any);
    assert_eq!((&l["local-member-id"], &l["remote-snapshot-sender-id"]), (&Value::from(hex(learner_id)), &Value::from(hex(leader_id))), "{l}");
    assert_eq!(l["incoming-snapshot-index"], sent["snapshot-index"], "{l}");
    let l = wait_line(&log_files[3], "received snapshot", msg_is("received and saved database snapshot"), any);
    assert_eq!(l["incoming-snapshot-index"], sent["snapshot-index"], "{l}");
    assert!(l["incoming-snapshot-size-bytes"].is_u64() && is_go_duration(&l["download-took"]), "{l}");

    let deadline = Instant::now() + Duration::from_secs(20);
    while let Err(e) = cluster.member_promote(MemberPromoteRequest { id: learner_id }).await {
        assert!(Instant::now() < deadline, "learner not promoted: {e}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for f in &log_files[..3] {
        let l = wait_line(f, "promote member", msg_is("promote member"), any);
        assert!(l["cluster-id"].is_string() && l["local-member-id"].is_string(), "{l}");
    }
    cluster.member_remove(MemberRemoveRequest { id: learner_id }).await.unwrap();
    for f in &log_files[..3] {
        let l = wait_line(f, "removed member", msg_is("removed member"), |l| l["removed-remote-peer-id"] == hex(learner_id));
        assert_eq!(l["removed-remote-peer-urls"], serde_json::json!([learner_peer]), "{l}");
    }
    drop(learner);

    // the leader dies: the others lose it, then elect one of themselves
    c.members[leader].kill9();
    let rest: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let new_leader = c.wait_leader(&rest).await;
    for &i in &rest {
        // lost, or (when no Ready came between losing it and electing the next) changed
        let lost = format!("raft.node: {} lost leader {} at term", hex(ids[i]), hex(leader_id));
        let changed = format!("raft.node: {} changed leader from {} to ", hex(ids[i]), hex(leader_id));
        let l = wait_line(&log_files[i], "lost leader", |m| m.starts_with(&lost) || m.starts_with(&changed), any);
        assert_eq!(l["logger"], "raft", "{l}");
        let elected = format!("raft.node: {} elected leader {} at term", hex(ids[i]), hex(ids[new_leader]));
        wait_line(&log_files[i], "new leader", |m| m.starts_with(&elected), any);
    }
}
