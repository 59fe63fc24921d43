//! Maintenance.Downgrade (validate / enable / cancel) as etcd 3.5.1 answers it, the replicated
//! downgrade state, and what the leader does while a downgrade is enabled: the cluster version
//! goes one minor down once a member runs the target, the members still on the newer version
//! stop (etcd 3.5.1's mustDetectDowngrade), and the downgrade is cancelled once every member
//! reports the target. The comparison with etcd 3.5.1 is skipped, saying so, when
//! /opt/etcd-3.5/bin/etcd is absent.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::cluster::TestCluster;
use common::{http_get, Member};
use etcd_proto::etcdserverpb::downgrade_request::DowngradeAction;
use etcd_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use etcd_proto::etcdserverpb::{DowngradeInfo, DowngradeRequest, StatusRequest};
use tonic::transport::Channel;

const ETCD_35: &str = "/opt/etcd-3.5/bin/etcd";

/// What a Downgrade call answered: the version, or the gRPC code and message.
type Answer = Result<String, (tonic::Code, String)>;

async fn downgrade(m: &Member, action: i32, version: &str) -> Answer {
    let ch = Channel::from_shared(m.endpoint()).unwrap().connect().await.unwrap();
    match MaintenanceClient::new(ch).downgrade(DowngradeRequest { action, version: version.into() }).await {
        Ok(r) => Ok(r.into_inner().version),
        Err(s) => Err((s.code(), s.message().to_string())),
    }
}

async fn downgrade_info(m: &Member) -> Option<DowngradeInfo> {
    let ch = Channel::from_shared(m.endpoint()).unwrap().connect().await.unwrap();
    MaintenanceClient::new(ch).status(StatusRequest {}).await.unwrap().into_inner().downgrade_info
}

/// Waits (at most 30 s) until the member's `/version` shows cluster version `want`.
fn wait_cluster_version(m: &Member, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v: serde_json::Value = serde_json::from_str(&http_get(m, "/version").1).unwrap_or_default();
        if v["etcdcluster"] == want {
            return;
        }
        assert!(Instant::now() < deadline, "cluster version {}, want {want}; log:\n{}", v["etcdcluster"], m.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

const VALIDATE: i32 = DowngradeAction::Validate as i32;
const ENABLE: i32 = DowngradeAction::Enable as i32;
const CANCEL: i32 = DowngradeAction::Cancel as i32;

fn invalid_target() -> Answer {
    Err((tonic::Code::InvalidArgument, "etcdserver: invalid downgrade target version".into()))
}
fn wrong_format() -> Answer {
    Err((tonic::Code::InvalidArgument, "etcdserver: wrong downgrade target version format".into()))
}
fn in_progress() -> Answer {
    Err((tonic::Code::FailedPrecondition, "etcdserver: cluster has a downgrade job in progress".into()))
}
fn none_inflight() -> Answer {
    Err((tonic::Code::FailedPrecondition, "etcdserver: no inflight downgrade job".into()))
}

/// etcd 3.5.1's (and 3.5.17's) answer to an enable or cancel it applied: its applier returns
/// no result for DowngradeInfoSet, so the waiting call times out although the change is made.
/// etcd-rs answers the change (as 3.6 does).
fn timed_out() -> Answer {
    Err((tonic::Code::Unavailable, "etcdserver: request timed out".into()))
}

/// Calls in order on a fresh single member at cluster version 3.5, with etcd 3.5.1's answers.
fn script() -> Vec<(i32, &'static str, Answer)> {
    etcd_rs_script().into_iter().map(|(a, v, rs, etcd)| (a, v, etcd.unwrap_or(rs))).collect()
}

/// The same calls with etcd-rs's answers, and etcd 3.5.1's where it differs.
fn etcd_rs_script() -> Vec<(i32, &'static str, Answer, Option<Answer>)> {
    let same = |a: i32, v: &'static str, ans: Answer| (a, v, ans, None);
    vec![
        same(VALIDATE, "3.4", Ok("3.5.0".into())),
        same(VALIDATE, "3.4.9", Ok("3.5.0".into())),
        same(VALIDATE, "3.3", invalid_target()),
        same(VALIDATE, "3.5", invalid_target()),
        same(VALIDATE, "3.6", invalid_target()),
        same(VALIDATE, "three", wrong_format()),
        same(VALIDATE, "", wrong_format()),
        same(CANCEL, "", none_inflight()),
        same(ENABLE, "3.6", invalid_target()),
        (ENABLE, "3.4", Ok("3.5.0".into()), Some(timed_out())),
        same(VALIDATE, "3.4", in_progress()),
        same(ENABLE, "3.4", in_progress()),
        (CANCEL, "", Ok("3.5.0".into()), Some(timed_out())),
        same(CANCEL, "", none_inflight()),
        same(7, "3.4", Err((tonic::Code::Unknown, "etcdserver: unknown method".into()))),
    ]
}

/// Runs the calls on `m`; the answers that differ from `want`'s, with the call.
async fn run_script(m: &Member, want: Vec<(i32, &'static str, Answer)>) -> Vec<String> {
    let mut diffs = Vec::new();
    for (action, version, want) in want {
        let got = downgrade(m, action, version).await;
        if got != want {
            diffs.push(format!("action {action} {version:?}: got {got:?}, want {want:?}"));
        }
    }
    diffs
}

fn single(data_dir: &Path, bin: Option<&str>) -> Member {
    let mut m = Member::new(data_dir, &[]);
    if let Some(b) = bin {
        m.bin = PathBuf::from(b);
    }
    m.start();
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downgrade_validate_enable_and_cancel_answer_as_etcd_3_5_1() {
    let dir = tempfile::tempdir().unwrap();
    let rs = single(&dir.path().join("rs.etcd"), None);
    rs.ready_client().await;
    wait_cluster_version(&rs, "3.5.0");
    let diffs = run_script(&rs, etcd_rs_script().into_iter().map(|(a, v, rs, _)| (a, v, rs)).collect()).await;
    assert!(diffs.is_empty(), "etcd-rs differs from etcd 3.5.1's answers:\n{}", diffs.join("\n"));

    if !Path::new(ETCD_35).exists() {
        println!("skipping the run against etcd 3.5.1: {ETCD_35} is absent");
        return;
    }
    let etcd = single(&dir.path().join("etcd.etcd"), Some(ETCD_35));
    etcd.ready_client().await;
    wait_cluster_version(&etcd, "3.5.0");
    let diffs = run_script(&etcd, script()).await;
    assert!(diffs.is_empty(), "the table is not what etcd 3.5.1 answers:\n{}", diffs.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enabled_downgrade_is_replicated_and_kept_and_only_its_target_may_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = TestCluster::start(dir.path(), 3, &[]).await;
    for m in &c.members {
        m.ready_client().await;
    }
    wait_cluster_version(&c.members[0], "3.5.0");
    assert_eq!(downgrade_info(&c.members[1]).await, Some(DowngradeInfo { enabled: false, target_version: String::new() }));
    assert_eq!(downgrade(&c.members[0], ENABLE, "3.4").await, Ok("3.5.0".into()));
    // another member refuses a second one: it reads the state the cluster agreed on
    assert_eq!(downgrade(&c.members[2], VALIDATE, "3.4").await, in_progress());
    assert_eq!(downgrade_info(&c.members[2]).await, Some(DowngradeInfo { enabled: true, target_version: "3.4.0".into() }));
    // as etcd 3.5.1's Recover: a restarted member of the old version is refused while enabled
    c.members[1].stop();
    c.members[1].start();
    let exit = c.members[1].wait_exit(Duration::from_secs(20));
    assert!(exit.is_some_and(|s| !s.success()), "a 3.5 member restarted during a downgrade: {exit:?}");
    assert!(c.members[1].log_shows("server version is not allowed to join when downgrade is enabled"), "{}", c.members[1].log());
    // cancelled, a member that applied the cancel may restart at 3.5 (m1 may not: its own
    // backend still says enabled, and 3.5.1 checks it before catching up)
    assert_eq!(downgrade(&c.members[2], CANCEL, "").await, Ok("3.5.0".into()));
    assert_eq!(downgrade_info(&c.members[0]).await.map(|d| d.enabled), Some(false));
    c.members[2].stop();
    c.members[2].start();
    c.members[2].ready_client().await;
    assert_eq!(downgrade(&c.members[2], CANCEL, "").await, none_inflight());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_downgrade_lowers_the_cluster_version_and_is_cancelled_once_every_member_runs_the_target() {
    // No periodic backend commit: the 3.5 members stop with every entry since their start
    // applied undurably, and must still restart at 3.4 (what preceded the refused entry is
    // made durable as they stop; replaying "cluster version 3.5" would stop a 3.4 member).
    let undurable = ["--backend-batch-interval", "1h"];
    let old: Vec<String> = undurable.iter().chain(&["--etcd-api-version", "3.4.23"]).map(|s| s.to_string()).collect();
    let dir = tempfile::tempdir().unwrap();
    let mut c = TestCluster::start(dir.path(), 3, &undurable).await;
    for m in &c.members {
        m.ready_client().await;
    }
    wait_cluster_version(&c.members[0], "3.5.0");
    assert_eq!(downgrade(&c.members[0], ENABLE, "3.4").await, Ok("3.5.0".into()));

    // m0 is replaced by the target version: allowed while the downgrade is enabled
    c.members[0].stop();
    c.members[0].extra = old.clone();
    c.members[0].start();
    // the leader lowers the cluster version to the lowest member's; the 3.5 members stop
    // as etcd 3.5.1's do when they learn it ("not allowed to join when downgrade is enabled")
    for i in [1, 2] {
        let exit = c.members[i].wait_exit(Duration::from_secs(30));
        assert!(exit.is_some_and(|s| !s.success()), "m{i} went on at 3.5 in a 3.4 cluster: {exit:?}\n{}", c.members[i].log());
        assert!(c.members[i].log_shows("server version is not allowed to join when downgrade is enabled"), "{}", c.members[i].log());
    }
    // replaced too, they catch up at 3.4; every member then reports 3.4 and the leader ends
    // the downgrade
    for i in [1, 2] {
        c.members[i].extra = old.clone();
        c.members[i].start();
    }
    for m in &c.members {
        m.ready_client().await;
        wait_cluster_version(m, "3.4.0");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while downgrade_info(&c.members[1]).await.is_none_or(|d| d.enabled) {
        assert!(Instant::now() < deadline, "the downgrade was not cancelled; log of m0:\n{}", c.members[0].log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(downgrade(&c.members[2], CANCEL, "").await, none_inflight());
}
