//! Crash recovery: acknowledged writes survive SIGKILL under concurrent load, and a torn WAL
//! tail plus a backend that lost its last commits recover to the last acknowledged state.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::{dump, put, Member};
use parking_lot::Mutex;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_under_concurrent_load_keeps_every_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = Member::new(&dir.path().join("m0.etcd"), &[]);
    m.start();
    let client = m.ready_client().await;

    // key -> (value, revision) of every write the server acknowledged.
    let acked: Arc<Mutex<BTreeMap<String, (String, i64)>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..8 {
        let mut c = client.clone();
        let acked = acked.clone();
        writers.push(tokio::spawn(async move {
            for n in 0.. {
                let key = format!("w{w}/{n:06}");
                let val = format!("v{n}");
                match tokio::time::timeout(Duration::from_secs(5), put(&mut c, &key, &val)).await {
                    Ok(Ok(rev)) => {
                        acked.lock().insert(key, (val, rev));
                    }
                    _ => return, // the server is gone
                }
            }
        }));
    }
    // Let the load run, then pull the plug in the middle of it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    m.kill9();
    for w in writers {
        let _ = w.await;
    }
    let acked = acked.lock().clone();
    assert!(acked.len() > 50, "too few writes acknowledged before the kill: {}", acked.len());

    m.start();
    let mut c = m.ready_client().await;
    let stored = dump(&mut c).await;
    let by_key: BTreeMap<&str, (&str, i64)> = stored.iter().map(|(k, v, r)| (k.as_str(), (v.as_str(), *r))).collect();
    for (k, (v, rev)) in &acked {
        assert_eq!(by_key.get(k.as_str()), Some(&(v.as_str(), *rev)), "acknowledged write {k} lost or changed");
    }
    // Every key is written once, so the revisions 2..=max must all be present: a hole is a lost write.
    let mut revs: Vec<i64> = stored.iter().map(|(_, _, r)| *r).collect();
    revs.sort_unstable();
    let expected: Vec<i64> = (2..2 + revs.len() as i64).collect();
    assert_eq!(revs, expected, "revision sequence has gaps");
    m.kill9();
}

fn newest_wal(dir: &std::path::Path) -> std::path::PathBuf {
    let mut wals: Vec<_> = std::fs::read_dir(dir.join("member/wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    wals.sort();
    wals.pop().expect("a wal file")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_wal_tail_and_lost_backend_commits_recover_to_last_acknowledged_state() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("m0.etcd");
    let mut m = Member::new(&data, &[]);
    m.start();
    let mut c = m.ready_client().await;
    let mut acked = Vec::new();
    for i in 0..50 {
        acked.push((format!("a{i:03}"), put(&mut c, &format!("a{i:03}"), "first").await.unwrap()));
    }
    m.stop();
    // An old but consistent copy of the backend: as if its later commits never reached the disk.
    let db = data.join("member/snap/db");
    let old_db = dir.path().join("db.old");
    std::fs::copy(&db, &old_db).unwrap();

    m.start();
    let mut c = m.ready_client().await;
    for i in 0..50 {
        acked.push((format!("b{i:03}"), put(&mut c, &format!("b{i:03}"), "second").await.unwrap()));
    }
    m.kill9();

    // Torn tail: half a record after the last good one (an append cut short by the crash).
    let wal = newest_wal(&data);
    let mut bytes = std::fs::read(&wal).unwrap();
    bytes.extend_from_slice(&[0x40, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef, 3, 1, 2, 3]);
    std::fs::write(&wal, bytes).unwrap();
    std::fs::copy(&old_db, &db).unwrap();

    m.start();
    let mut c = m.ready_client().await;
    let stored = dump(&mut c).await;
    let by_key: BTreeMap<String, i64> = stored.iter().map(|(k, _, r)| (k.clone(), *r)).collect();
    for (k, rev) in &acked {
        assert_eq!(by_key.get(k), Some(rev), "acknowledged write {k} lost after recovery");
    }
    assert_eq!(stored.len(), acked.len());
    // The member keeps working after recovery.
    let next = put(&mut c, "after", "x").await.unwrap();
    assert_eq!(next, acked.last().unwrap().1 + 1);
    m.kill9();
}
