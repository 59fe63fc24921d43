//! `etcdutl-rs` as an operator uses `etcdutl`: offline `defrag` and `hashkv` on a stopped
//! member's data dir (refused while the member runs), `snapshot restore --wal-dir`, `version`,
//! and etcdutl's exit codes and error texts, compared with etcdutl 3.5.1 where it is installed.

mod common;

use std::path::Path;
use std::process::Command;

use common::{dump, put, single_member, Member};
use etcd_proto::etcdserverpb::kv_client::KvClient;
use etcd_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use etcd_proto::etcdserverpb::{CompactionRequest, DeleteRangeRequest, HashKvRequest};
use tonic::transport::Channel;

const ETCDUTL_35: &str = "/opt/etcd-3.5/bin/etcdutl";

/// (exit code, stdout, stderr) of a run of `bin`.
fn run(bin: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn etcdutl_rs(args: &[&str]) -> (i32, String, String) {
    run(env!("CARGO_BIN_EXE_etcdutl-rs"), args)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// (hash, revision, compact revision) as the member's HashKV answers at `rev`.
async fn hash_kv_rpc(m: &Member, rev: i64) -> (u32, i64, i64) {
    let ch = Channel::from_shared(m.endpoint()).unwrap().connect().await.unwrap();
    let r = MaintenanceClient::new(ch).hash_kv(HashKvRequest { revision: rev }).await.unwrap().into_inner();
    (r.hash, r.header.unwrap().revision, r.compact_revision)
}

/// Keys written, most deleted (free pages for defrag to drop), a compaction. Returns the
/// revision compacted at and a later, uncompacted revision.
async fn fill(kv: &mut KvClient<Channel>) -> (i64, i64) {
    for i in 0..400 {
        put(kv, &format!("k{i:04}"), &"v".repeat(200)).await.unwrap();
    }
    let del = DeleteRangeRequest { key: b"k0".to_vec(), range_end: b"k03".to_vec(), ..Default::default() };
    kv.delete_range(del).await.unwrap();
    let compacted = put(kv, "marker", "1").await.unwrap();
    kv.compact(CompactionRequest { revision: compacted, physical: true }).await.unwrap();
    let later = put(kv, "after", "1").await.unwrap();
    put(kv, "after", "2").await.unwrap();
    (compacted, later)
}

#[tokio::test]
async fn defrag_and_hashkv_work_offline_and_wait_out_a_running_member() {
    let (dir, mut m, mut kv) = single_member(&[]).await;
    let (compacted, later) = fill(&mut kv).await;
    let latest = hash_kv_rpc(&m, 0).await;
    let at_later = hash_kv_rpc(&m, later).await;
    let before = dump(&mut kv).await;
    let data_dir = m.data_dir.clone();
    let db = data_dir.join("member/snap/db");

    // the running member holds the db: defrag waits for it, as etcdutl 3.5, then gives up
    let (code, out, err) = etcdutl_rs(&["defrag", "--data-dir", s(&data_dir), "--timeout", "1500ms"]);
    assert_eq!(code, 1, "{err}");
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains(&format!("waiting for etcd to close and release its lock on {:?}. To defrag a running etcd instance, omit --data-dir.", s(&db))),
        "{err}"
    );
    assert!(err.contains(&format!("Error: Failed to defragment etcd data[{}] (timeout", s(&data_dir))), "{err}");
    let (code, _, err) = etcdutl_rs(&["hashkv", s(&db), "--timeout", "500ms"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.starts_with("Error: timeout"), "{err}");
    assert_eq!(dump(&mut kv).await, before, "the refused tools changed nothing");

    m.stop();
    // hashkv: the same figures the member answered, in each output format
    let (code, out, err) = etcdutl_rs(&["hashkv", s(&db)]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, format!("{}, {}, {}\n", latest.0, latest.1, latest.2));
    assert_eq!(latest.2, compacted);
    let (_, out, _) = etcdutl_rs(&["hashkv", s(&db), "--rev", &later.to_string(), "-w", "json"]);
    assert_eq!(out, format!("{{\"hash\":{},\"hashRevision\":{},\"compactRevision\":{}}}\n", at_later.0, later, compacted));
    let (_, out, _) = etcdutl_rs(&["-w", "fields", "hashkv", s(&db)]);
    assert_eq!(out, format!("\"Hash\" : {}\n\"Hash revision\" : {}\n\"Compact revision\" : {}\n", latest.0, latest.1, latest.2));
    let (code, _, err) = etcdutl_rs(&["hashkv", s(&db), "--rev", &(compacted - 1).to_string()]);
    assert_eq!((code, err.as_str()), (1, "Error: mvcc: required revision has been compacted\n"));
    let (code, _, err) = etcdutl_rs(&["hashkv", s(&db), "--rev", &(latest.1 + 5).to_string()]);
    assert_eq!((code, err.as_str()), (1, "Error: mvcc: required revision is a future revision\n"));

    // defrag: nothing on stdout, a file no larger, the same history
    let size = std::fs::metadata(&db).unwrap().len();
    let (code, out, err) = etcdutl_rs(&["defrag", "--data-dir", s(&data_dir)]);
    assert_eq!((code, out.as_str()), (0, ""), "{err}");
    assert!(std::fs::metadata(&db).unwrap().len() <= size);
    assert_eq!(etcdutl_rs(&["hashkv", s(&db)]).1, format!("{}, {}, {}\n", latest.0, latest.1, latest.2));

    // and the member starts on it with every key
    m.start();
    let mut kv = m.ready_client().await;
    assert_eq!(dump(&mut kv).await, before);
    assert_eq!(hash_kv_rpc(&m, 0).await, latest);
    drop(m);
    drop(dir);
}

#[test]
fn missing_inputs_bad_formats_and_unknown_verbs_fail_as_etcdutl_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let nowhere = tmp.path().join("nowhere");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../mvcc/tests/fixtures/etcd-3.4.23-snapshot.db");

    let (code, _, err) = etcdutl_rs(&["defrag", "--data-dir", s(&nowhere)]);
    assert_eq!(code, 1);
    assert_eq!(
        err,
        format!(
            "Error: Failed to defragment etcd data[{0}] (stat {0}/member/snap/db: no such file or directory)\n",
            s(&nowhere)
        )
    );
    let (code, _, err) = etcdutl_rs(&["hashkv", s(&nowhere)]);
    assert_eq!((code, err), (1, format!("Error: stat {}: no such file or directory\n", s(&nowhere))));

    // hashkv reads etcd's own format too (a snapshot file): 5 revisions, compacted at 2
    let (code, out, err) = etcdutl_rs(&["hashkv", s(&fixture), "-w", "json"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"hashRevision\":6,\"compactRevision\":2}"), "{out}");

    // the invocations etcdutl 3.5.1 also has: same exit code, same first error line
    let file = s(&fixture);
    let cases: Vec<Vec<&str>> = vec![
        vec!["snapshot", "status", file, "-w", "xml"],
        vec!["snapshot", "status", file, "-w", "protobuf"],
        vec!["snapshot", "status", s(&nowhere)],
        vec!["defrag"],
        vec!["nosuchverb"],
        vec!["snapshot", "restore", file],
    ];
    let expected = [
        (4, "Error: unsupported output format"),
        (4, "Error: protobuf not supported as output format"),
        (1, ""),
        (1, ""),
        (1, ""),
        (1, ""),
    ];
    for (args, (code, first)) in cases.iter().zip(expected) {
        let (c, _, err) = etcdutl_rs(args);
        assert_eq!(c, code, "{args:?}: {err}");
        assert!(err.starts_with(first), "{args:?}: {err}");
        if Path::new(ETCDUTL_35).exists() {
            let (theirs, _, their_err) = run(ETCDUTL_35, args);
            assert_eq!(c, theirs, "{args:?}: exit code differs from etcdutl 3.5.1 ({their_err})");
            if !first.is_empty() {
                assert_eq!(err.lines().next(), their_err.lines().next(), "{args:?}");
            }
        }
    }
    if !Path::new(ETCDUTL_35).exists() {
        println!("skipping the comparison with etcdutl 3.5.1: {ETCDUTL_35} is absent");
    }

    let (code, out, _) = etcdutl_rs(&["version", "-w", "json"]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("etcdutl version: 3.5.") && lines[1] == "API version: 3.5", "{out}");

    // the verbs that do not apply to an etcd-rs data dir say so, and what to use instead
    let (code, _, err) = etcdutl_rs(&["backup", "--data-dir", "x", "--backup-dir", "y"]);
    assert_eq!(code, 1);
    assert!(err.contains("etcdctl snapshot save") && err.contains("export-etcd-data-dir"), "{err}");
    let (code, _, err) = etcdutl_rs(&["migrate", "--data-dir", "x", "--target-version", "3.6"]);
    assert_eq!(code, 1);
    assert!(err.contains("storage version") && err.contains("export-etcd-data-dir"), "{err}");
}

#[tokio::test]
async fn snapshot_restore_puts_the_wal_in_wal_dir_and_the_member_starts_from_both() {
    let tmp = tempfile::tempdir().unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../mvcc/tests/fixtures/etcd-3.4.23-snapshot.db");
    let data_dir = tmp.path().join("r.etcd");
    let wal_dir = tmp.path().join("wal-elsewhere");
    let mut m = Member::new(&data_dir, &["--wal-dir", s(&wal_dir)]);
    let peer = format!("http://127.0.0.1:{}", m.peer_port);
    let restore = [
        "snapshot",
        "restore",
        s(&fixture),
        "--data-dir",
        s(&data_dir),
        "--wal-dir",
        s(&wal_dir),
        "--name",
        "m0",
        "--initial-cluster",
        &format!("m0={peer}"),
        "--initial-cluster-token",
        "test-token",
        "--initial-advertise-peer-urls",
        &peer,
    ];
    let (code, _, err) = etcdutl_rs(&restore);
    assert_eq!(code, 0, "{err}");
    assert!(std::fs::read_dir(&wal_dir).unwrap().any(|e| e.unwrap().file_name().to_string_lossy().ends_with(".wal")));
    assert!(!data_dir.join("member/wal").exists(), "the WAL went to --wal-dir only, as etcdutl puts it");
    assert!(data_dir.join("member/snap/db").is_file());

    // a second restore is refused with etcdutl 3.5.1's texts, and changes nothing
    let (code, _, err) = etcdutl_rs(&restore);
    assert_eq!((code, err.lines().next()), (1, Some(format!("Error: data-dir {:?} not empty or could not be read", s(&data_dir)).as_str())));
    let mut other = restore.to_vec();
    let fresh = tmp.path().join("fresh.etcd");
    other[4] = s(&fresh);
    let (code, _, err) = etcdutl_rs(&other);
    assert_eq!((code, err.lines().next()), (1, Some(format!("Error: wal-dir {:?} exists", s(&wal_dir)).as_str())));
    assert!(!fresh.exists());

    m.start();
    let mut kv = m.ready_client().await;
    let keys = dump(&mut kv).await;
    assert!(!keys.is_empty(), "the snapshot's keys are served");
    assert_eq!(put(&mut kv, "new", "v").await.unwrap(), 7, "revisions continue after the snapshot's 6");
}
