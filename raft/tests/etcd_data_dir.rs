//! etcd's own data dirs, written by real etcd 3.4.23 (/usr/bin/etcd) and 3.5.1
//! (/opt/etcd-3.5/bin/etcd), read by `etcd_wal` / `etcd_snap`, re-encoded byte for byte, and
//! rewritten by `EtcdWalWriter` / `write_snap` into a data dir etcd starts on and serves from.
//! A test prints why and passes when the etcd binary it needs is missing.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use etcd_proto::etcdserverpb::{
    kv_client::KvClient, maintenance_client::MaintenanceClient, InternalRaftRequest, Metadata,
    PutRequest, RangeRequest, StatusRequest,
};
use etcd_proto::raftpb::{ConfChange, Entry, EntryType, HardState};
use etcd_proto::walpb::Snapshot as WalSnapshot;
use etcd_raft::etcd_snap::{read_snap, read_snap_file, write_snap};
use etcd_raft::etcd_wal::{
    decode_segment, encode_record, record_type, segment_names, EtcdWal, EtcdWalError,
    EtcdWalWriter, SegmentEnd,
};
use prost::Message as _;

const ETCD_34: &str = "/usr/bin/etcd";
const ETCDCTL_34: &str = "/usr/bin/etcdctl";
const ETCD_35: &str = "/opt/etcd-3.5/bin/etcd";
/// With `--snapshot-count 100`: snapshots at about 100, 200 and 300, about 50 entries after.
const PUTS: usize = 350;

/// A port free now, below the kernel's ephemeral range (so no outgoing connection takes it
/// before etcd binds it), in turn from a per-process start.
fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7919) % 20000,
        Ordering::AcqRel,
        Ordering::Acquire,
    );
    for _ in 0..20000 {
        let port = (12000 + NEXT.fetch_add(1, Ordering::AcqRel) % 20000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port");
}

fn missing(bin: &str) -> bool {
    if Path::new(bin).exists() {
        return false;
    }
    eprintln!("SKIPPED: {bin} is not installed");
    true
}

/// A running etcd, killed on drop.
struct Etcd {
    child: Child,
    client_port: u16,
}

impl Etcd {
    fn start(bin: &str, name: &str, data_dir: &Path, extra: &[&str]) -> Etcd {
        let client_port = free_port();
        let peer_port = free_port();
        let client = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let log = std::fs::File::create(data_dir.with_extension("log")).unwrap();
        let child = Command::new(bin)
            .args(["--name", name, "--data-dir"])
            .arg(data_dir)
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("{name}={peer}")])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Etcd { child, client_port }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// SIGTERM (etcd stops cleanly), bounded wait, then SIGKILL.
    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn kv(etcd: &Etcd) -> KvClient<tonic::transport::Channel> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(mut c) = KvClient::connect(etcd.endpoint()).await {
            let probe = RangeRequest {
                key: b"probe".to_vec(),
                ..Default::default()
            };
            if c.range(probe).await.is_ok() {
                return c;
            }
        }
        assert!(
            Instant::now() < deadline,
            "etcd at {} did not serve",
            etcd.endpoint()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// (raft_index, member_id, cluster_id) as `etcdctl endpoint status` reports them.
async fn status(etcd: &Etcd) -> (u64, u64, u64) {
    let mut m = MaintenanceClient::connect(etcd.endpoint()).await.unwrap();
    let s = m.status(StatusRequest {}).await.unwrap().into_inner();
    let h = s.header.unwrap();
    (s.raft_index, h.member_id, h.cluster_id)
}

fn key(i: usize) -> Vec<u8> {
    format!("k{i:04}").into_bytes()
}

fn value(i: usize) -> Vec<u8> {
    format!("value {i}").into_bytes()
}

/// Writes PUTS keys into a fresh single-member etcd in `dir` with `--snapshot-count 100`, stops
/// it, and returns what it reported: (raft_index, member_id, cluster_id).
fn etcd_with_puts(bin: &str, dir: &Path, after_puts: impl FnOnce(&Etcd)) -> (u64, u64, u64) {
    let etcd = Etcd::start(bin, "m1", dir, &["--snapshot-count", "100"]);
    let rt = runtime();
    let reported = rt.block_on(async {
        let mut c = kv(&etcd).await;
        for i in 0..PUTS {
            let put = PutRequest {
                key: key(i),
                value: value(i),
                ..Default::default()
            };
            c.put(put).await.unwrap();
        }
        status(&etcd).await
    });
    after_puts(&etcd);
    etcd.stop();
    reported
}

/// The newest snap etcd itself would load, and the WAL read from it.
fn read_data_dir(
    member: &Path,
) -> (
    etcd_proto::raftpb::Snapshot,
    etcd_raft::etcd_wal::EtcdWalContents,
) {
    let ws = EtcdWal::valid_snapshot_entries(&member.join("wal")).unwrap();
    let (snap, _) = read_snap(&member.join("snap"), Some(&ws)).unwrap();
    let m = snap.metadata.clone().unwrap();
    let wal = EtcdWal::read_all(&member.join("wal"), (m.index(), m.term())).unwrap();
    (snap, wal)
}

/// Each record's payload decodes and re-encodes to the same bytes, and the records framed again
/// with the CRC chain give the segment's bytes exactly: the writer produces what etcd produces.
fn assert_reencodes_byte_for_byte(wal_dir: &Path) -> usize {
    let mut crc = 0u32;
    let mut checked = 0;
    let names = segment_names(wal_dir).unwrap();
    for (i, name) in names.iter().enumerate() {
        let path = wal_dir.join(name);
        let buf = std::fs::read(&path).unwrap();
        let mut chain = crc;
        let (records, end) = decode_segment(&path, &buf, &mut chain, i + 1 == names.len()).unwrap();
        let SegmentEnd::Clean { offset: end } = end else {
            panic!("{name}: torn tail after a clean stop: {end:?}");
        };
        let mut again = Vec::new();
        for r in &records {
            let data = r.data.as_deref();
            let d = data.unwrap_or_default();
            let typed = match r.rec_type {
                record_type::ENTRY => Some(Entry::decode(d).unwrap().encode_to_vec()),
                record_type::STATE => Some(HardState::decode(d).unwrap().encode_to_vec()),
                record_type::METADATA => Some(Metadata::decode(d).unwrap().encode_to_vec()),
                record_type::SNAPSHOT => Some(WalSnapshot::decode(d).unwrap().encode_to_vec()),
                record_type::CRC => {
                    assert_eq!(data, None, "{name}: crc record with data");
                    None
                }
                other => panic!("{name}: record type {other}"),
            };
            assert_eq!(typed.as_deref(), data, "{name} at {}", r.offset);
            if r.rec_type == record_type::CRC {
                crc = r.crc;
            }
            encode_record(&mut again, &mut crc, r.rec_type, data).unwrap();
            checked += 1;
        }
        assert_eq!(again.len() as u64, end);
        assert!(
            again == buf[..end as usize],
            "{name}: re-framed records differ from etcd's bytes"
        );
        assert!(
            buf[end as usize..].iter().all(|b| *b == 0),
            "{name}: tail is not zero"
        );
        assert_eq!(crc, chain);
    }
    checked
}

/// What an etcd version wrote reads back whole: every entry up to the raft index etcd reported,
/// the 300 puts among them, the snap etcd would load, all re-encoded byte for byte.
fn check_etcd_written_data_dir(bin: &str, tmp: &Path, conf_state_in_wal: bool) -> PathBuf {
    let dir = tmp.join("etcd");
    let (raft_index, member_id, cluster_id) = etcd_with_puts(bin, &dir, |_| {});
    let member = dir.join("member");
    let (snap, wal) = read_data_dir(&member);
    let m = snap.metadata.clone().unwrap();
    eprintln!(
        "{bin}: raft_index {raft_index}, snap at {}/{}, {} entries after it, segments {:?}",
        m.index(),
        m.term(),
        wal.entries.len(),
        segment_names(&member.join("wal")).unwrap()
    );
    assert!(
        m.index() >= 100,
        "--snapshot-count 100 left no snapshot past 100: {}",
        m.index()
    );
    assert_eq!(m.conf_state.clone().unwrap().voters, vec![member_id]);
    assert_eq!(wal.metadata.node_id(), member_id);
    assert_eq!(wal.metadata.cluster_id(), cluster_id);
    assert_eq!(wal.entries.len() as u64, raft_index - m.index());
    assert_eq!(wal.entries.last().unwrap().index(), raft_index);
    assert_eq!(wal.entries[0].index(), m.index() + 1);
    assert_eq!(wal.hard_state.commit(), raft_index);
    assert_eq!(wal.torn_tail, None);
    // etcd 3.5 writes the ConfState into the WAL's snapshot record, 3.4 does not.
    let wal_cs = wal.snapshot.conf_state.clone().map(|c| c.voters);
    assert_eq!(wal_cs, conf_state_in_wal.then(|| vec![member_id]));

    // From the start of the log: every entry, every put in order.
    let all = EtcdWal::read_all(&member.join("wal"), (0, 0)).unwrap();
    let indexes: Vec<u64> = all.entries.iter().map(|e| e.index()).collect();
    assert_eq!(indexes, (1..=raft_index).collect::<Vec<_>>());
    let puts: Vec<(Vec<u8>, Vec<u8>)> = all
        .entries
        .iter()
        .filter(|e| e.r#type() == EntryType::EntryNormal)
        .filter_map(|e| InternalRaftRequest::decode(e.data()).ok())
        .filter_map(|r| r.put)
        .map(|p| (p.key, p.value))
        .collect();
    let expected: Vec<_> = (0..PUTS).map(|i| (key(i), value(i))).collect();
    assert_eq!(puts, expected);
    // Member bootstrap: the first entry is etcd's ConfChange (AddNode = 0 in etcd's numbering).
    let first = &all.entries[0];
    assert_eq!(first.r#type(), EntryType::EntryConfChange);
    let cc = ConfChange::decode(first.data()).unwrap();
    assert_eq!((cc.r#type.unwrap(), cc.node_id()), (0, member_id));

    let records = assert_reencodes_byte_for_byte(&member.join("wal"));
    assert!(records as u64 > raft_index);

    // The snap file re-written is etcd's file byte for byte.
    let (_, snap_path) = read_snap(&member.join("snap"), None).unwrap();
    let again = tmp.join("snap-again");
    std::fs::create_dir(&again).unwrap();
    let written = write_snap(&again, &read_snap_file(&snap_path).unwrap()).unwrap();
    assert_eq!(written.file_name(), snap_path.file_name());
    assert!(std::fs::read(&written).unwrap() == std::fs::read(&snap_path).unwrap());
    dir
}

/// Waits until `etcd` serves, checks it holds exactly the PUTS keys, returns the client.
async fn serves_every_key(etcd: &Etcd) -> KvClient<tonic::transport::Channel> {
    let mut c = kv(etcd).await;
    let all = RangeRequest {
        key: b"k".to_vec(),
        range_end: b"l".to_vec(),
        ..Default::default()
    };
    let r = c.range(all).await.unwrap().into_inner();
    let got: Vec<_> = r
        .kvs
        .iter()
        .map(|kv| (kv.key.clone(), kv.value.clone()))
        .collect();
    assert_eq!(
        got,
        (0..PUTS).map(|i| (key(i), value(i))).collect::<Vec<_>>()
    );
    c
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// After the last record of `src`'s WAL (in a copy), one more entry record of 1000 bytes with
/// either a zeroed disk sector (`torn`) or one flipped byte. The reader must call the first a
/// torn tail and the second a CRC error, and `bin` must agree: start (repairing the tail) on
/// the first, refuse to start on the second.
fn check_tail_rules_match_etcd(bin: &str, src: &Path, tmp: &Path, torn: bool) {
    let dst = tmp.join(if torn { "torn" } else { "flipped" });
    copy_dir(src, &dst);
    let wal_dir = dst.join("member/wal");
    let (snap, before) = read_data_dir(&dst.join("member"));
    let names = segment_names(&wal_dir).unwrap();
    let path = wal_dir.join(names.last().unwrap());
    let mut buf = std::fs::read(&path).unwrap();
    let mut crc = 0;
    let (_, end) = decode_segment(&path, &buf, &mut crc, true).unwrap();
    let SegmentEnd::Clean { offset: end } = end else {
        panic!("{end:?}")
    };
    let last = before.entries.last().unwrap();
    let extra = Entry {
        r#type: Some(0),
        term: Some(last.term()),
        index: Some(last.index() + 1),
        data: Some(vec![0xab; 1000]),
    };
    let mut frame = Vec::new();
    encode_record(
        &mut frame,
        &mut crc,
        record_type::ENTRY,
        Some(&extra.encode_to_vec()),
    )
    .unwrap();
    let at = end as usize;
    buf[at..at + frame.len()].copy_from_slice(&frame);
    if torn {
        let sector = (at + 8).div_ceil(512) * 512;
        buf[sector..(sector + 512).min(at + frame.len())].fill(0);
    } else {
        buf[at + 100] ^= 0x10;
    }
    std::fs::write(&path, &buf).unwrap();
    let m = snap.metadata.unwrap();
    let read = EtcdWal::read_all(&wal_dir, (m.index(), m.term()));
    let etcd = Etcd::start(bin, "m1", &dst, &[]);
    if torn {
        let c = read.unwrap();
        assert_eq!(c.torn_tail, Some((path.clone(), end)));
        assert_eq!(c.entries, before.entries);
        runtime().block_on(serves_every_key(&etcd));
        etcd.stop();
        // etcd truncated the torn record; the log reads clean and carries on after `before`.
        let (_, repaired) = read_data_dir(&dst.join("member"));
        assert_eq!(repaired.torn_tail, None);
        // etcd's repair ran (it keeps the segment as it was in `<segment>.broken`).
        let mut broken = path.into_os_string();
        broken.push(".broken");
        assert!(Path::new(&broken).exists());
        assert_eq!(repaired.entries[..before.entries.len()], before.entries[..]);
    } else {
        assert!(
            matches!(read, Err(EtcdWalError::CrcMismatch { offset, .. }) if offset == end),
            "{read:?}"
        );
        let mut etcd = etcd;
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(st) = etcd.child.try_wait().unwrap() {
                break st;
            }
            assert!(
                Instant::now() < deadline,
                "{bin} kept running on a flipped WAL byte"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(!status.success());
        let log = std::fs::read_to_string(dst.with_extension("log")).unwrap();
        assert!(log.contains("crc mismatch"), "{log}");
    }
}

/// Rewrites `src`'s WAL (in segments of 4 kB) and snap with the writers into a copy that keeps etcd's `db`, starts
/// `bin` on the copy, and checks it serves every key and takes a new write.
fn check_rewritten_data_dir_starts(bin: &str, src: &Path, tmp: &Path, conf_state_in_wal: bool) {
    let (snap, wal) = read_data_dir(&src.join("member"));
    let dst = tmp.join("rewritten");
    let member = dst.join("member");
    std::fs::create_dir_all(member.join("snap")).unwrap();
    std::fs::copy(src.join("member/snap/db"), member.join("snap/db")).unwrap();
    let m = snap.metadata.clone().unwrap();
    // The whole log as etcd lays it out: entries up to the snapshot, its record, the rest; in
    // small segments so etcd follows the CRC chain across the writer's cuts.
    let all = EtcdWal::read_all(&src.join("member/wal"), (0, 0)).unwrap();
    let (before, after) = all.entries.split_at(m.index() as usize);
    let mut w = EtcdWalWriter::create(&member.join("wal"), &wal.metadata).unwrap();
    w.set_segment_bytes(4096);
    // One entry per save, as etcd saves each Ready, so segments are cut between entries.
    let save_each = |w: &mut EtcdWalWriter, entries: &[Entry]| {
        for e in entries {
            let hs = HardState {
                commit: Some(e.index()),
                ..wal.hard_state
            };
            w.save(&hs, std::slice::from_ref(e)).unwrap();
        }
    };
    save_each(&mut w, before);
    let cs = conf_state_in_wal.then(|| m.conf_state.clone().unwrap());
    w.save_snapshot(m.index(), m.term(), cs).unwrap();
    save_each(&mut w, after);
    w.save(&wal.hard_state, &[]).unwrap();
    w.finish().unwrap();
    write_snap(&member.join("snap"), &snap).unwrap();
    let segments = segment_names(&member.join("wal")).unwrap();
    assert!(segments.len() > 3, "{segments:?}");
    let reread = EtcdWal::read_all(&member.join("wal"), (m.index(), m.term())).unwrap();
    assert_eq!(reread.entries, wal.entries);

    let etcd = Etcd::start(bin, "m1", &dst, &[]);
    runtime().block_on(async {
        let mut c = serves_every_key(&etcd).await;
        let put = PutRequest {
            key: b"after".to_vec(),
            value: b"rewrite".to_vec(),
            ..Default::default()
        };
        c.put(put).await.unwrap();
        let (raft_index, _, _) = status(&etcd).await;
        assert!(raft_index > wal.entries.last().unwrap().index());
    });
    etcd.stop();
    // etcd appended to the rewritten WAL; it still reads.
    let (_, appended) = read_data_dir(&member);
    assert!(appended.entries.len() > wal.entries.len());
    assert_eq!(appended.entries[..wal.entries.len()], wal.entries[..]);
}

#[test]
fn etcd_3_4_data_dir_reads_whole_rewritten_starts_and_tail_rules_match_etcd_3_4() {
    if missing(ETCD_34) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = check_etcd_written_data_dir(ETCD_34, tmp.path(), false);
    check_rewritten_data_dir_starts(ETCD_34, &src, tmp.path(), false);
    check_tail_rules_match_etcd(ETCD_34, &src, tmp.path(), true);
    check_tail_rules_match_etcd(ETCD_34, &src, tmp.path(), false);
}

#[test]
fn etcd_3_5_data_dir_reads_whole_rewritten_starts_and_tail_rules_match_etcd_3_5() {
    if missing(ETCD_35) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = check_etcd_written_data_dir(ETCD_35, tmp.path(), true);
    check_rewritten_data_dir_starts(ETCD_35, &src, tmp.path(), true);
    check_tail_rules_match_etcd(ETCD_35, &src, tmp.path(), true);
    check_tail_rules_match_etcd(ETCD_35, &src, tmp.path(), false);
}

/// `etcdctl snapshot restore` (3.4.23) output: a WAL of the bootstrap ConfChange entries, a
/// snapshot record at their commit and a .snap at the same index.
#[test]
fn etcdctl_3_4_snapshot_restore_output_reads() {
    if missing(ETCD_34) || missing(ETCDCTL_34) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("backup.db");
    etcd_with_puts(ETCD_34, &tmp.path().join("etcd"), |etcd| {
        let ok = Command::new(ETCDCTL_34)
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &etcd.endpoint(), "snapshot", "save"])
            .arg(&db)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(ok.success());
    });
    let restored = tmp.path().join("restored");
    let peers = "r1=http://127.0.0.1:2380,r2=http://127.0.0.1:2381,r3=http://127.0.0.1:2382";
    let ok = Command::new(ETCDCTL_34)
        .env("ETCDCTL_API", "3")
        .args(["snapshot", "restore"])
        .arg(&db)
        .arg("--data-dir")
        .arg(&restored)
        .args(["--name", "r2", "--initial-cluster", peers])
        .args(["--initial-advertise-peer-urls", "http://127.0.0.1:2381"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(ok.success());
    let member = restored.join("member");
    let (snap, wal) = read_data_dir(&member);
    let m = snap.metadata.clone().unwrap();
    assert_eq!((m.index(), m.term()), (3, 1));
    assert_eq!(m.conf_state.unwrap().voters.len(), 3);
    assert_eq!(wal.hard_state.commit(), 3);
    assert!(wal.entries.is_empty());
    let all = EtcdWal::read_all(&member.join("wal"), (0, 0)).unwrap();
    let added: Vec<u64> = all
        .entries
        .iter()
        .map(|e| {
            assert_eq!(e.r#type(), EntryType::EntryConfChange);
            let cc = ConfChange::decode(e.data()).unwrap();
            assert_eq!(cc.r#type, Some(0), "AddNode");
            cc.node_id()
        })
        .collect();
    assert_eq!(added.len(), 3);
    assert!(added.contains(&wal.metadata.node_id()));
    assert_reencodes_byte_for_byte(&member.join("wal"));
}

/// etcd 3.5.1 cuts its WAL at 64 MB: the reader follows the CRC chain into the next segment,
/// whose name carries the first index it holds, and every record re-encodes byte for byte.
#[test]
fn etcd_3_5_wal_cut_at_64_mb_reads_across_its_segments() {
    if missing(ETCD_35) {
        return;
    }
    const BIG: usize = 70;
    let big_value = |i: usize| vec![b'a' + (i % 26) as u8; 1000 * 1000];
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("etcd");
    let etcd = Etcd::start(ETCD_35, "m1", &dir, &[]);
    let (raft_index, member_id, _) = runtime().block_on(async {
        let mut c = kv(&etcd).await;
        for i in 0..BIG {
            let put = PutRequest {
                key: key(i),
                value: big_value(i),
                ..Default::default()
            };
            c.put(put).await.unwrap();
        }
        status(&etcd).await
    });
    etcd.stop();
    let wal_dir = dir.join("member/wal");
    let names = segment_names(&wal_dir).unwrap();
    assert_eq!(names.len(), 2, "{names:?}");
    let all = EtcdWal::read_all(&wal_dir, (0, 0)).unwrap();
    assert_eq!(all.metadata.node_id(), member_id);
    let indexes: Vec<u64> = all.entries.iter().map(|e| e.index()).collect();
    assert_eq!(indexes, (1..=raft_index).collect::<Vec<_>>());
    let puts: Vec<(Vec<u8>, Vec<u8>)> = all
        .entries
        .iter()
        .filter_map(|e| InternalRaftRequest::decode(e.data()).ok())
        .filter_map(|r| r.put)
        .map(|p| (p.key, p.value))
        .collect();
    assert!(puts == (0..BIG).map(|i| (key(i), big_value(i))).collect::<Vec<_>>());
    // The second segment is named after the first entry it holds.
    let second = wal_dir.join(&names[1]);
    let mut crc = 0;
    let (records, _) =
        decode_segment(&second, &std::fs::read(&second).unwrap(), &mut crc, true).unwrap();
    let first = records
        .iter()
        .find(|r| r.rec_type == record_type::ENTRY)
        .map(|r| Entry::decode(r.data.as_deref().unwrap()).unwrap().index())
        .unwrap();
    assert_eq!(names[1], format!("{:016x}-{first:016x}.wal", 1));
    assert_reencodes_byte_for_byte(&wal_dir);
}
