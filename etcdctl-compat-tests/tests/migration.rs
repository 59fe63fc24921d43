//! Issue 14, "done when" points 1 and 2: live migration between etcd and etcd-rs member by member,
//! and mixed clusters under faults, with a writer and a watcher running throughout and the full
//! check (no lost acknowledged write, every revision watched once in order, equal HashKV) after
//! every step. See `src/migration/`.
//!
//! The etcd 3.5.1 cases skip, saying so, when /opt/etcd-3.5 is missing (CI installs Debian's
//! 3.4.23 only). Harness self-check: point `ETCD_RS_BIN` at an etcd binary, e.g.
//! `ETCD_RS_BIN=/opt/etcd-3.5/bin/etcd cargo test --release -p etcdctl-compat-tests --test migration`
//! runs every sequence on etcd alone, which must pass. `MIGTEST_KEEP=1` keeps data dirs and logs.

use etcdctl_compat_tests::migration::checks::Checker;
use etcdctl_compat_tests::migration::fleet::{Fleet, Kind, Tuning};
use etcdctl_compat_tests::migration::load::{Endpoints, Load};
use etcdctl_compat_tests::migration::plan;

/// Small enough that a fault test compacts the log past a paused follower in seconds.
const FAULT_SNAPSHOT_COUNT: u64 = 1000;

/// Whether every binary of `kinds` is installed; prints why the test skips when not.
fn installed(test: &str, kinds: &[Kind]) -> bool {
    let missing: Vec<String> = kinds.iter().filter_map(|k| k.missing()).collect();
    if !missing.is_empty() {
        eprintln!("{test}: skipped: {}", missing.join("; "));
    }
    missing.is_empty()
}

fn run(test: impl std::future::Future<Output = Result<(), String>>) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    if let Err(e) = rt.block_on(test) {
        panic!("{e}");
    }
}

/// A cluster of `kinds` with the writer and the watcher running and a first check done.
async fn loaded_cluster(kinds: &[Kind], tuning: Tuning) -> Result<(Fleet, Load, Checker), String> {
    let mut fleet = Fleet::bootstrap(kinds, tuning).await?;
    eprintln!("cluster in {}", fleet.dir().display());
    let load = Load::start(Endpoints::default());
    let mut checker = Checker::default();
    checker.step("bootstrap", &mut fleet, &load).await?;
    Ok((fleet, load, checker))
}

async fn migrate_and_back(from: Kind) -> Result<(), String> {
    let (mut fleet, load, mut checker) = loaded_cluster(&[from; 3], Tuning::default()).await?;
    plan::migrate(&mut fleet, &load, &mut checker, Kind::EtcdRs).await?;
    if from == Kind::Etcd35 {
        plan::migrate(&mut fleet, &load, &mut checker, from).await?;
    }
    load.stop_writing();
    checker.step("writer stopped", &mut fleet, &load).await
}

#[test]
fn etcd35_cluster_migrates_to_etcd_rs_and_back_member_by_member_under_load() {
    if installed(
        "etcd 3.5.1 -> etcd-rs -> etcd 3.5.1",
        &[Kind::Etcd35, Kind::EtcdRs],
    ) {
        run(migrate_and_back(Kind::Etcd35));
    }
}

#[test]
fn etcd34_cluster_migrates_to_etcd_rs_member_by_member_under_load() {
    if installed("etcd 3.4.23 -> etcd-rs", &[Kind::Etcd34, Kind::EtcdRs]) {
        run(migrate_and_back(Kind::Etcd34));
    }
}

/// Point 2 on a mixed cluster: kill -9 and restart a leader of the `follower` binary (the one
/// in the minority), then cut off a `follower` member until it needs a snapshot from a `leader`
/// member.
async fn faults(kinds: &[Kind], leader: Kind, follower: Kind) -> Result<(), String> {
    let tuning = Tuning {
        snapshot_count: FAULT_SNAPSHOT_COUNT,
        ..Tuning::default()
    };
    let (mut fleet, load, mut checker) = loaded_cluster(kinds, tuning).await?;
    plan::kill_and_restart_leader(&mut fleet, &load, &mut checker, follower).await?;
    plan::snapshot_catch_up(
        &mut fleet,
        &load,
        &mut checker,
        leader,
        follower,
        FAULT_SNAPSHOT_COUNT,
    )
    .await?;
    load.stop_writing();
    checker.step("writer stopped", &mut fleet, &load).await
}

#[test]
fn two_etcd34_and_one_etcd_rs_survive_a_killed_etcd_rs_leader_and_catch_up_from_an_etcd_snapshot() {
    let (e, rs) = (Kind::Etcd34, Kind::EtcdRs);
    if installed("2 etcd 3.4.23 + 1 etcd-rs faults", &[e, rs]) {
        run(faults(&[e, e, rs], e, rs));
    }
}

#[test]
fn one_etcd34_and_two_etcd_rs_survive_a_killed_etcd_leader_and_catch_up_from_an_etcd_rs_snapshot() {
    let (e, rs) = (Kind::Etcd34, Kind::EtcdRs);
    if installed("1 etcd 3.4.23 + 2 etcd-rs faults", &[e, rs]) {
        run(faults(&[e, rs, rs], rs, e));
    }
}

#[test]
fn two_etcd35_and_one_etcd_rs_survive_a_killed_etcd_rs_leader_and_catch_up_from_an_etcd_snapshot() {
    let (e, rs) = (Kind::Etcd35, Kind::EtcdRs);
    if installed("2 etcd 3.5.1 + 1 etcd-rs faults", &[e, rs]) {
        run(faults(&[e, e, rs], e, rs));
    }
}

#[test]
fn one_etcd35_and_two_etcd_rs_survive_a_killed_etcd_leader_and_catch_up_from_an_etcd_rs_snapshot() {
    let (e, rs) = (Kind::Etcd35, Kind::EtcdRs);
    if installed("1 etcd 3.5.1 + 2 etcd-rs faults", &[e, rs]) {
        run(faults(&[e, rs, rs], rs, e));
    }
}
