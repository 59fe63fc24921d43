//! `etcdutl-rs snapshot restore`: a new etcd-rs data dir from a snapshot file in etcd's format
//! (taken from etcd-rs or from etcd), as `etcdutl snapshot restore` builds an etcd data dir.
//!
//! Steps, as etcd's: check the sha256 etcd appends to a snapshot (`--skip-hash-check` for a db
//! file copied out of a data dir, which has none); load keys, leases, alarms, auth, the
//! cluster version and the compaction marks into a new backend (`member/snap/db`), dropping the
//! old membership; write a raft log whose first entries add the members of `--initial-cluster`
//! (IDs computed from the peer URLs and the token, as etcd computes them). The dir then starts
//! like any restarted member: identity from the WAL, the membership from applying those
//! entries. The consistent index starts at 0 because the raft log is new.
//!
//! Invariant: nothing is left behind on failure except what was created under the new data
//! dir, and an existing data dir is never touched.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use etcd_mvcc::bolt::BoltReader;
use etcd_mvcc::Backend;
use etcd_raft::RaftNodeConfig;
use sha2::Digest;

use crate::backup::{load_snapshot, Loaded};
use crate::config::{parse_initial_cluster, parse_urls, url_string};
use crate::errors::ServerError;
use crate::ids::{cluster_id, member_id};
use crate::membership::new_member;

/// What a restore needs (the flags of `etcdutl snapshot restore`).
#[derive(Debug, Clone)]
pub struct RestoreConfig {
    pub snapshot: PathBuf,
    pub name: String,
    /// Empty: `<name>.etcd`, as etcd.
    pub data_dir: PathBuf,
    /// `--wal-dir`: the raft log outside the data dir (None: `<data-dir>/member/wal`).
    pub wal_dir: Option<PathBuf>,
    pub initial_cluster: String,
    pub initial_cluster_token: String,
    pub initial_advertise_peer_urls: String,
    pub skip_hash_check: bool,
}

/// What a restore did.
#[derive(Debug, Clone)]
pub struct Restored {
    pub data_dir: PathBuf,
    pub member_id: u64,
    pub cluster_id: u64,
    pub loaded: Loaded,
}

fn fail(msg: impl Into<String>) -> ServerError {
    ServerError::Internal(msg.into())
}

/// Size of the sha256 etcd appends to a snapshot.
const SHA_LEN: u64 = 32;

/// Whether a file of this size ends with etcd's sha256: bbolt files are whole pages (a multiple
/// of 512), so 32 bytes more is the appended hash (etcd's `hasChecksum`).
fn has_checksum(size: u64) -> bool {
    size % 512 == SHA_LEN
}

/// Go's `%v` of a byte slice: `[1 2 3]`.
fn go_bytes(b: &[u8]) -> String {
    format!("[{}]", b.iter().map(u8::to_string).collect::<Vec<_>>().join(" "))
}

/// Checks the appended sha256 as etcd does.
fn check_hash(path: &Path, skip: bool) -> Result<(), ServerError> {
    let io = |e: std::io::Error| fail(format!("open {}: {e}", path.display()));
    let mut f = fs::File::open(path).map_err(io)?;
    let size = f.metadata().map_err(io)?.len();
    let hashed = has_checksum(size);
    if !hashed && !skip {
        return Err(fail("snapshot missing hash but --skip-hash-check=false"));
    }
    if !hashed || skip {
        return Ok(());
    }
    let mut sha = sha2::Sha256::new();
    let mut left = size - SHA_LEN;
    let mut buf = vec![0u8; 1 << 16];
    while left > 0 {
        let n = (buf.len() as u64).min(left) as usize;
        f.read_exact(&mut buf[..n]).map_err(io)?;
        sha.update(&buf[..n]);
        left -= n as u64;
    }
    let mut want = [0u8; SHA_LEN as usize];
    f.read_exact(&mut want).map_err(io)?;
    let got = sha.finalize();
    if got.as_slice() != want {
        return Err(fail(format!("expected sha256 {}, got {}", go_bytes(&want), go_bytes(&got))));
    }
    Ok(())
}

/// Restores `cfg.snapshot` into a new data dir (see the module docs).
pub fn restore(cfg: &RestoreConfig) -> Result<Restored, ServerError> {
    let cfg_err = |e: crate::config::ConfigError| fail(e.0);
    let mut advertise: Vec<String> =
        parse_urls("initial-advertise-peer-urls", &cfg.initial_advertise_peer_urls).map_err(cfg_err)?.iter().map(url_string).collect();
    advertise.sort();
    let cluster = parse_initial_cluster(&cfg.initial_cluster).map_err(cfg_err)?;
    let Some(me) = cluster.iter().find(|m| m.name == cfg.name) else {
        return Err(fail(format!("couldn't find local name {:?} in the initial cluster configuration", cfg.name)));
    };
    let mut mine = me.peer_urls.clone();
    mine.sort();
    if mine != advertise {
        return Err(fail(format!(
            "--initial-cluster has {}={} but missing from --initial-advertise-peer-urls={} ",
            me.name,
            mine.join(","),
            advertise.join(",")
        )));
    }
    let data_dir = if cfg.data_dir.as_os_str().is_empty() { PathBuf::from(format!("{}.etcd", cfg.name)) } else { cfg.data_dir.clone() };
    // etcdutl 3.5's checks and texts: an empty data dir may be reused, a WAL dir may not exist
    if fs::read_dir(&data_dir).is_ok_and(|mut d| d.next().is_some()) || (data_dir.exists() && !data_dir.is_dir()) {
        return Err(fail(format!("data-dir {:?} not empty or could not be read", data_dir.display().to_string())));
    }
    let wal_dir = cfg.wal_dir.clone().unwrap_or_else(|| data_dir.join("member").join("wal"));
    if cfg.wal_dir.is_some() && wal_dir.exists() {
        return Err(fail(format!("wal-dir {:?} exists", wal_dir.display().to_string())));
    }
    let data_dir_was_there = data_dir.exists();

    check_hash(&cfg.snapshot, cfg.skip_hash_check)?;
    let reader = BoltReader::open(&cfg.snapshot).map_err(|e| fail(e.to_string()))?;

    let result = build(cfg, &data_dir, &wal_dir, &reader, &cluster);
    if result.is_err() {
        // only what this restore created
        if data_dir_was_there {
            let _ = fs::remove_dir_all(data_dir.join("member"));
        } else {
            let _ = fs::remove_dir_all(&data_dir);
        }
        if cfg.wal_dir.is_some() {
            let _ = fs::remove_dir_all(&wal_dir);
        }
    }
    result
}

fn build(
    cfg: &RestoreConfig,
    data_dir: &Path,
    wal_dir: &Path,
    reader: &BoltReader,
    cluster: &[crate::config::InitialMember],
) -> Result<Restored, ServerError> {
    let member_dir = data_dir.join("member");
    let io = |what: &str, e: std::io::Error| fail(format!("{what}: {e}"));
    fs::create_dir_all(member_dir.join("snap")).map_err(|e| io("create data dir", e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for d in [data_dir.to_path_buf(), member_dir.clone(), member_dir.join("snap")] {
            fs::set_permissions(&d, fs::Permissions::from_mode(0o700)).map_err(|e| io("chmod", e))?;
        }
    }

    let backend = Backend::open(&member_dir.join("snap").join("db"))?;
    let wtx = backend.begin_write(true)?;
    let loaded = load_snapshot(reader, &wtx)?;
    wtx.open_table(etcd_lease::LEASE_TABLE).map_err(|e| fail(e.to_string()))?;
    wtx.commit().map_err(|e| fail(e.to_string()))?;
    drop(backend);

    let mut peers = Vec::new();
    let mut my_id = 0;
    for m in cluster {
        let id = member_id(&m.peer_urls, &cfg.initial_cluster_token, None);
        if m.name == cfg.name {
            my_id = id;
        }
        peers.push((id, crate::entry_format::bootstrap_context(&new_member(id, &m.name, m.peer_urls.clone(), false))));
    }
    let cid = cluster_id(&peers.iter().map(|(id, _)| *id).collect::<Vec<_>>());
    let mut raft_cfg = RaftNodeConfig::new(my_id, cid, member_dir.clone());
    raft_cfg.initial_peers = peers;
    raft_cfg.wal_dir = wal_dir.to_path_buf();
    etcd_raft::recovery::bootstrap_wal(&raft_cfg, wal_dir).map_err(|e| fail(e.to_string()))?;
    Ok(Restored { data_dir: data_dir.to_path_buf(), member_id: my_id, cluster_id: cid, loaded })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../mvcc/tests/fixtures/etcd-3.4.23-snapshot.db")
    }

    fn cfg(dir: &Path) -> RestoreConfig {
        RestoreConfig {
            snapshot: fixture(),
            name: "m1".into(),
            data_dir: dir.join("restored"),
            wal_dir: None,
            initial_cluster: "m1=http://127.0.0.1:2380".into(),
            initial_cluster_token: "etcd-cluster".into(),
            initial_advertise_peer_urls: "http://127.0.0.1:2380".into(),
            skip_hash_check: false,
        }
    }

    #[test]
    fn an_etcd_snapshot_restores_keys_leases_and_compaction() {
        let tmp = tempfile::tempdir().unwrap();
        let c = cfg(tmp.path());
        let r = restore(&c).unwrap();
        assert_eq!(r.loaded.revisions, 5);
        assert_eq!(r.loaded.leases, 1);
        assert!(r.loaded.skipped_buckets.is_empty());
        assert_eq!(r.member_id, member_id(&["http://127.0.0.1:2380".to_string()], "etcd-cluster", None));
        assert!(c.data_dir.join("member/wal").is_dir());
        let kv = etcd_mvcc::KvStore::open(&c.data_dir.join("member/snap/db")).unwrap();
        assert_eq!(kv.current_revision(), 6);
        assert_eq!(kv.consistent_index(), (0, 0));
        assert_eq!(kv.backend().read_meta(etcd_mvcc::backend::META_FINISHED_COMPACT).unwrap(), 2);

        let again = restore(&c).unwrap_err().to_string();
        assert!(again.contains("not empty or could not be read"), "{again}");
    }

    #[test]
    fn a_damaged_snapshot_is_refused_and_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let mut bytes = fs::read(fixture()).unwrap();
        bytes[3 * 4096 + 100] ^= 1;
        let bad = tmp.path().join("bad.db");
        fs::write(&bad, &bytes).unwrap();
        let mut c = cfg(tmp.path());
        c.snapshot = bad;
        let e = restore(&c).unwrap_err().to_string();
        assert!(e.starts_with("expected sha256 ["), "{e}");
        assert!(!c.data_dir.exists());

        // without the hash it must be asked for
        let plain = tmp.path().join("plain.db");
        fs::write(&plain, &fs::read(fixture()).unwrap()[..36864]).unwrap();
        c.snapshot = plain;
        let e = restore(&c).unwrap_err().to_string();
        assert_eq!(e, "snapshot missing hash but --skip-hash-check=false");
        c.skip_hash_check = true;
        restore(&c).unwrap();
    }

    #[test]
    fn the_local_member_must_be_in_the_initial_cluster() {
        let tmp = tempfile::tempdir().unwrap();
        let mut c = cfg(tmp.path());
        c.name = "other".into();
        let e = restore(&c).unwrap_err().to_string();
        assert!(e.contains("couldn't find local name \"other\""), "{e}");
        assert!(!c.data_dir.exists());
    }
}
