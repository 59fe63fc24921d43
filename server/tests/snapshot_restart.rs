//! Raft log compaction every --snapshot-count entries: snapshots are written, old WAL
//! segments may go, and a restart (graceful or SIGKILL) recovers every write from the
//! snapshot's backend state plus the WAL tail.

mod common;

use common::{dump, put, Member};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_after_many_snapshots_keeps_every_write() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("m0.etcd");
    let mut m = Member::new(&data, &["--snapshot-count", "25"]);
    m.start();
    let mut c = m.ready_client().await;
    let mut last = 0;
    for i in 0..200 {
        last = put(&mut c, &format!("k{i:04}"), &format!("v{i}")).await.unwrap();
    }
    let snaps = std::fs::read_dir(data.join("member/snap"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "snap"))
        .count();
    assert!(snaps >= 1, "no raft snapshot written with --snapshot-count 25 after 200 writes");

    m.kill9();
    m.start();
    let mut c = m.ready_client().await;
    let stored = dump(&mut c).await;
    assert_eq!(stored.len(), 200);
    assert_eq!(stored.iter().map(|(_, _, r)| *r).max(), Some(last));
    assert_eq!(put(&mut c, "after", "x").await.unwrap(), last + 1);

    m.stop();
    m.start();
    let mut c = m.ready_client().await;
    assert_eq!(dump(&mut c).await.len(), 201);
}
