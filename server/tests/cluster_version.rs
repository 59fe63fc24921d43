//! Version negotiation between etcd-rs members that report different etcd server versions
//! (`--etcd-api-version`, as ETCD_RS_ETCD_API_VERSION): the cluster version is the lowest
//! member's major.minor, moves up when that member upgrades, and a member older than the
//! cluster version refuses to run, as etcd does.

mod common;

use std::time::{Duration, Instant};

use common::cluster::TestCluster;
use common::http_get;
use etcd_proto::etcdserverpb::auth_client::AuthClient;
use etcd_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use etcd_proto::etcdserverpb::{AuthStatusRequest, StatusRequest};
use tonic::transport::Channel;

const OLD: [&str; 2] = ["--etcd-api-version", "3.4.23"];

/// The member's `/version` answer.
fn versions(m: &common::Member) -> serde_json::Value {
    serde_json::from_str(&http_get(m, "/version").1).unwrap_or_default()
}

/// Waits (at most 30 s) until every running member in `among` reports `want` as the cluster
/// version on `/version`.
fn wait_cluster_version(c: &TestCluster, among: &[usize], want: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let seen: Vec<serde_json::Value> = among.iter().map(|&i| versions(&c.members[i])["etcdcluster"].clone()).collect();
        if seen.iter().all(|v| v == want) {
            return;
        }
        assert!(Instant::now() < deadline, "cluster version {seen:?}, want {want} on {among:?}; log of m0:\n{}", c.members[0].log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

async fn channel(m: &common::Member) -> Channel {
    Channel::from_shared(m.endpoint()).unwrap().connect().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_version_is_the_lowest_members_and_an_older_member_is_refused_once_it_moved_up() {
    let dir = tempfile::tempdir().unwrap();
    // m2 runs as etcd 3.4.23
    let mut c = TestCluster::start_each(dir.path(), &[&[], &[], &OLD], "http").await;
    for m in &c.members {
        m.ready_client().await;
    }
    wait_cluster_version(&c, &[0, 1, 2], "3.4.0");
    assert_eq!(versions(&c.members[2])["etcdserver"], "3.4.23");
    assert_eq!(versions(&c.members[0])["etcdserver"], "3.5.17");
    let metrics = http_get(&c.members[0], "/metrics").1;
    assert!(metrics.contains("etcd_cluster_version{cluster_version=\"3.4\"} 1"), "{metrics}");

    // AuthStatus is new in 3.5's raft log: in a 3.4 cluster it is answered without an entry
    let ch = channel(&c.members[0]).await;
    let index = |s: etcd_proto::etcdserverpb::StatusResponse| s.raft_index;
    let before = index(MaintenanceClient::new(ch.clone()).status(StatusRequest {}).await.unwrap().into_inner());
    let st = AuthClient::new(ch.clone()).auth_status(AuthStatusRequest {}).await.unwrap().into_inner();
    assert!(!st.enabled);
    let after = index(MaintenanceClient::new(ch.clone()).status(StatusRequest {}).await.unwrap().into_inner());
    assert_eq!(before, after, "AuthStatus went through the log of a 3.4 cluster");

    // m2 upgrades: the leader moves the cluster version up
    c.members[2].stop();
    c.members[2].extra.clear();
    c.members[2].start();
    c.members[2].ready_client().await;
    wait_cluster_version(&c, &[0, 1, 2], "3.5.0");
    let metrics = http_get(&c.members[1], "/metrics").1;
    assert!(metrics.contains("etcd_cluster_version{cluster_version=\"3.5\"} 1"), "{metrics}");

    // ... and may no longer go back: a 3.4 member refuses the 3.5 cluster it knows of
    c.members[2].stop();
    c.members[2].extra = OLD.iter().map(|s| s.to_string()).collect();
    c.members[2].start();
    let exit = c.members[2].wait_exit(Duration::from_secs(20));
    assert!(exit.is_some_and(|s| !s.success()), "a 3.4 member kept running in a 3.5 cluster: {exit:?}");
    assert!(
        c.members[2].log_shows("invalid downgrade; server version is lower than determined cluster version"),
        "{}",
        c.members[2].log()
    );
    // the others go on at 3.5
    wait_cluster_version(&c, &[0, 1], "3.5.0");
}
