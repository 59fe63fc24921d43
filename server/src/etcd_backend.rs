//! etcd's backend file (`member/snap/db`, bbolt) <-> etcd-rs's backend (redb), whole, both
//! directions: the backend half of taking over an etcd data dir and of going back to etcd.
//!
//! A snapshot restore (backup.rs) keeps only what a new cluster inherits; a member taking over
//! an etcd member's data dir keeps everything, so on top of backup.rs's mapping this carries:
//!
//! | etcd bucket / key | etcd-rs | note |
//! | --- | --- | --- |
//! | meta `consistent_index`, `term` (8 bytes big-endian) | meta table `consistent_index`, `term` | `term` is written by 3.5 only; a 3.4 file imports with term 0 |
//! | meta `confState` (3.5, JSON of raftpb.ConfState) | none: etcd-rs keeps the conf state in raft's snapshot | imported: reported, not stored; exported when the cluster version is 3.5 or later, derived from the members table (voters, learners) |
//! | `members` (hex ID -> member JSON) | `members` (u64 -> membershippb.Member) | JSON fields `id`, `peerURLs`, `isLearner`, `name`, `clientURLs` |
//! | `members_removed` (hex ID -> `removed`) | `members_removed` | |
//!
//! Any other meta key (e.g. 3.6's `storageVersion`) is reported as skipped. `cluster`
//! (`clusterVersion`, 3.5's `downgrade`) is copied key for key by backup.rs.
//!
//! Invariant (crash safety): the destination appears whole or not at all. Each conversion writes
//! a temp file beside the destination, fsyncs it, renames it over the destination name and
//! fsyncs the directory; the source is only read. A destination that exists is refused.

use std::fs::{self, File};
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use etcd_mvcc::backend::{META_CONSISTENT_INDEX, META_TABLE, META_TERM};
use etcd_mvcc::bolt::BoltReader;
use etcd_mvcc::Backend;
use etcd_proto::membershippb::{Attributes, Member, RaftAttributes};
use prost::Message;
use redb::{ReadableDatabase, ReadableTable, WriteTransaction};

use crate::backup::{
    be_u64, bolt_err, for_each, load_snapshot, write_snapshot_with_meta, Loaded, ETCD_CONSISTENT_INDEX, ETCD_TERM,
};
use crate::errors::ServerError;
use crate::membership::{CLUSTER, CLUSTER_VERSION_KEY, MEMBERS, MEMBERS_REMOVED};

/// etcd 3.5's meta key for the last applied raft conf state.
pub const ETCD_CONF_STATE: &[u8] = b"confState";

/// redb's page cache while exporting: one pass in key order gains nothing from caching, and
/// redb's default (1 GiB) kept every page read resident (a 1M-key export peaked at the file's
/// size in RSS).
const EXPORT_CACHE_BYTES: usize = 16 * 1024 * 1024;

/// What a conversion carried over.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Converted {
    /// Keys, leases, auth, alarms, cluster, compaction marks (see backup.rs).
    pub loaded: Loaded,
    pub consistent_index: u64,
    pub term: u64,
    pub members: u64,
    pub members_removed: u64,
    /// etcd 3.5's `confState` as read (import) or written (export), JSON.
    pub conf_state: Option<String>,
    /// Meta keys with no place in the destination.
    pub skipped_meta: Vec<String>,
}

fn fail(what: &str, e: impl std::fmt::Display) -> ServerError {
    ServerError::Internal(format!("etcd backend conversion: {what}: {e}"))
}

/// `path` with `suffix` added to its file name: the temp name a conversion writes first.
fn temp_path(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(suffix);
    path.with_file_name(name)
}

/// Makes `tmp` durable and gives it the name `dest`: fsync file, rename, fsync directory.
fn publish(tmp: &Path, dest: &Path) -> Result<(), ServerError> {
    File::open(tmp).and_then(|f| f.sync_all()).map_err(|e| fail("fsync", e))?;
    fs::rename(tmp, dest).map_err(|e| fail("rename", e))?;
    let dir = dest.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| fail("fsync dir", e))
}

/// Refuses an existing destination and clears a temp file a crashed conversion left.
fn prepare(dest: &Path, tmp: &Path) -> Result<(), ServerError> {
    if dest.exists() {
        return Err(fail("destination", format!("{} exists", dest.display())));
    }
    match fs::remove_file(tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(fail("remove stale temp file", e)),
        _ => Ok(()),
    }
}

/// Decodes etcd's JSON of a member (membership.Member as Go's encoding/json writes it).
pub fn member_from_json(json: &[u8]) -> Result<Member, ServerError> {
    #[derive(serde::Deserialize)]
    struct Json {
        id: u64,
        #[serde(rename = "peerURLs", default)]
        peer_urls: Option<Vec<String>>,
        #[serde(rename = "isLearner", default)]
        is_learner: bool,
        #[serde(default)]
        name: String,
        #[serde(rename = "clientURLs", default)]
        client_urls: Option<Vec<String>>,
    }
    let j: Json = serde_json::from_slice(json).map_err(|e| fail("member JSON", e))?;
    Ok(Member {
        id: j.id,
        raft_attrs: Some(RaftAttributes { peer_urls: j.peer_urls.unwrap_or_default(), is_learner: j.is_learner }),
        member_attrs: Some(Attributes { name: j.name, client_urls: j.client_urls.unwrap_or_default() }),
    })
}

/// etcd 3.5's `confState` for these members: Go's JSON of raftpb.ConfState (`voters` and
/// `learners` omitted when empty, `auto_leave` always written).
pub fn conf_state_json(members: &[Member]) -> String {
    let ids = |learner: bool| -> Vec<u64> {
        let mut v: Vec<u64> = members
            .iter()
            .filter(|m| m.raft_attrs.as_ref().is_some_and(|r| r.is_learner) == learner)
            .map(|m| m.id)
            .collect();
        v.sort_unstable();
        v
    };
    let mut o = serde_json::Map::new();
    for (name, v) in [("voters", ids(false)), ("learners", ids(true))] {
        if !v.is_empty() {
            o.insert(name.into(), v.into());
        }
    }
    o.insert("auto_leave".into(), false.into());
    serde_json::Value::Object(o).to_string()
}

/// Whether etcd members of this cluster version keep `confState` in meta: 3.5 and later
/// (a 3.4 cluster's file has none, and an export for it should not either).
fn writes_conf_state(cluster_version: Option<&str>) -> bool {
    let Some(v) = cluster_version else { return false };
    let mut parts = v.split('.').map(|p| p.parse::<u64>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (3, 5)
}

fn hex_id(k: &[u8]) -> Result<u64, ServerError> {
    std::str::from_utf8(k)
        .ok()
        .and_then(|s| u64::from_str_radix(s, 16).ok())
        .ok_or_else(|| fail("member ID", format!("{:?} is not a hex ID", String::from_utf8_lossy(k))))
}

/// Converts etcd's backend file at `bolt` into a new etcd-rs backend at `redb`: every bucket
/// (see the module doc), checked with bbolt's consistency check first.
pub fn import_etcd_db(bolt: &Path, redb: &Path) -> Result<Converted, ServerError> {
    let c = convert_to(redb, ".import.tmp", |tmp| {
        let r = open_checked(bolt)?;
        import_into(&r, tmp)
    })?;
    log_converted("imported etcd's backend", bolt.display(), redb.display(), &c);
    Ok(c)
}

/// Runs `write` on a temp file beside `dest` and publishes it under `dest` only when it
/// succeeded; a failure removes the temp file.
fn convert_to(
    dest: &Path,
    suffix: &str,
    write: impl FnOnce(&Path) -> Result<Converted, ServerError>,
) -> Result<Converted, ServerError> {
    let tmp = temp_path(dest, suffix);
    prepare(dest, &tmp)?;
    match write(&tmp) {
        Ok(c) => {
            publish(&tmp, dest)?;
            Ok(c)
        }
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

fn log_converted(msg: &str, from: impl std::fmt::Display, to: impl std::fmt::Display, c: &Converted) {
    tracing::info!(
        from = %from,
        to = %to,
        revisions = c.loaded.revisions,
        leases = c.loaded.leases,
        auth_users = c.loaded.auth_users,
        auth_roles = c.loaded.auth_roles,
        members = c.members,
        members_removed = c.members_removed,
        consistent_index = c.consistent_index,
        term = c.term,
        conf_state = c.conf_state.as_deref().unwrap_or(""),
        skipped_buckets = ?c.loaded.skipped_buckets,
        skipped_meta = ?c.skipped_meta,
        "{msg}"
    );
}

fn import_into(r: &BoltReader, tmp: &Path) -> Result<Converted, ServerError> {
    let backend = Backend::open(tmp).map_err(|e| fail("create", e))?;
    let wtx = backend.begin_write(true).map_err(|e| fail("begin", e))?;
    let c = load_backend(r, &wtx)?;
    wtx.commit().map_err(|e| fail("commit", e))?;
    drop(backend);
    Ok(c)
}

/// Opens etcd's backend file and runs bbolt's consistency check on it: a damaged file is
/// refused before anything is written.
fn open_checked(bolt: &Path) -> Result<BoltReader, ServerError> {
    let r = BoltReader::open(bolt).map_err(bolt_err)?;
    let problems = r.check().map_err(bolt_err)?;
    if !problems.is_empty() {
        return Err(fail("bbolt consistency check", problems.join("; ")));
    }
    Ok(r)
}

/// Writes every bucket of `r` into `wtx`'s tables (which the caller made empty): what
/// backup.rs loads, plus the consistent index, term and membership (see the module doc).
fn load_backend(r: &BoltReader, wtx: &WriteTransaction) -> Result<Converted, ServerError> {
    let mut c = Converted { loaded: load_snapshot(r, wtx)?, ..Default::default() };
    let st = |e: redb::Error| fail("write", e);
    for (name, bucket) in r.buckets().map_err(bolt_err)? {
        match name.as_slice() {
            b"meta" => {
                let mut t = wtx.open_table(META_TABLE).map_err(|e| st(e.into()))?;
                for_each(r, &bucket, |k, v| {
                    match k {
                        ETCD_CONSISTENT_INDEX => {
                            c.consistent_index = be_u64("consistent_index", v)?;
                            t.insert(META_CONSISTENT_INDEX, c.consistent_index).map_err(|e| st(e.into()))?;
                        }
                        ETCD_TERM => {
                            c.term = be_u64("term", v)?;
                            t.insert(META_TERM, c.term).map_err(|e| st(e.into()))?;
                        }
                        ETCD_CONF_STATE => c.conf_state = Some(String::from_utf8_lossy(v).into_owned()),
                        // backup.rs loaded these
                        crate::backup::ETCD_SCHEDULED_COMPACT | crate::backup::ETCD_FINISHED_COMPACT => {}
                        other => c.skipped_meta.push(String::from_utf8_lossy(other).into_owned()),
                    }
                    Ok(())
                })?;
            }
            b"members" => {
                let mut t = wtx.open_table(MEMBERS).map_err(|e| st(e.into()))?;
                for_each(r, &bucket, |k, v| {
                    let id = hex_id(k)?;
                    let m = member_from_json(v)?;
                    if m.id != id {
                        return Err(fail("members bucket", format!("key {id:x} holds member {:x}", m.id)));
                    }
                    t.insert(id, m.encode_to_vec().as_slice()).map_err(|e| st(e.into()))?;
                    c.members += 1;
                    Ok(())
                })?;
            }
            b"members_removed" => {
                let mut t = wtx.open_table(MEMBERS_REMOVED).map_err(|e| st(e.into()))?;
                for_each(r, &bucket, |k, _| {
                    t.insert(hex_id(k)?, ()).map_err(|e| st(e.into()))?;
                    c.members_removed += 1;
                    Ok(())
                })?;
            }
            _ => {}
        }
    }
    Ok(c)
}

/// Replaces the live backend's contents with etcd's backend file at `bolt` (a snapshot a
/// leader sent): the file is checked first, then one durable write transaction drops every
/// table and writes what [`import_etcd_db`] would, so a crash before its commit leaves the old
/// state and after it the new. The store's index and consistent index are rebuilt by
/// `KvStore::install`; the caller rebuilds the lessor, membership, alarms, auth and watchers.
/// Takes the store's writer gate: never call it while holding an apply transaction.
pub fn install_etcd_db(kv: &etcd_mvcc::KvStore, bolt: &Path) -> Result<Converted, ServerError> {
    let r = open_checked(bolt)?;
    let mut converted = None;
    kv.install(|wtx| -> Result<(), ServerError> {
        clear_every_table(wtx)?;
        converted = Some(load_backend(&r, wtx)?);
        // the lessor expects its table to exist, even when the file had no lease bucket
        wtx.open_table(etcd_lease::LEASE_TABLE).map_err(|e| fail("open table", e))?;
        Ok(())
    })?;
    let c = converted.ok_or_else(|| fail("install", "nothing was loaded"))?;
    log_converted("installed etcd's backend", bolt.display(), kv.backend().path().display(), &c);
    Ok(c)
}

/// Drops every table of the backend: after an install nothing of the old state may remain,
/// including tables of a kind this module does not know.
fn clear_every_table(wtx: &WriteTransaction) -> Result<(), ServerError> {
    let tables: Vec<_> = wtx.list_tables().map_err(|e| fail("list tables", e))?.collect();
    for t in tables {
        wtx.delete_table(t).map_err(|e| fail("clear table", e))?;
    }
    let multimaps: Vec<_> = wtx.list_multimap_tables().map_err(|e| fail("list tables", e))?.collect();
    for t in multimaps {
        wtx.delete_multimap_table(t).map_err(|e| fail("clear table", e))?;
    }
    Ok(())
}

/// Writes etcd's backend file at `bolt` from the etcd-rs backend at `redb` (which is only
/// read): every table, plus etcd 3.5's `confState` derived from the members.
pub fn export_etcd_db(redb: &Path, bolt: &Path) -> Result<Converted, ServerError> {
    if !redb.is_file() {
        return Err(fail("source", format!("{} is not a file", redb.display())));
    }
    let db = redb::Database::builder().set_cache_size(EXPORT_CACHE_BYTES).open(redb).map_err(|e| fail("open", e))?;
    let txn = db.begin_read().map_err(|e| fail("read", e))?;
    let c = convert_to(bolt, ".export.tmp", |tmp| export_into(&txn, tmp))?;
    log_converted("exported etcd's backend", redb.display(), bolt.display(), &c);
    Ok(c)
}

/// [`export_etcd_db`] from a read transaction of a live backend: the file holds exactly what
/// `read` sees (its keys, and its consistent index and term in meta), whatever is committed
/// after it. Rows are streamed, so memory does not grow with the key table.
pub fn export_etcd_db_from(read: &redb::ReadTransaction, bolt: &Path) -> Result<Converted, ServerError> {
    let c = convert_to(bolt, ".export.tmp", |tmp| export_into(read, tmp))?;
    log_converted("exported etcd's backend", "a read of the live backend", bolt.display(), &c);
    Ok(c)
}

fn export_into(txn: &redb::ReadTransaction, tmp: &Path) -> Result<Converted, ServerError> {
    let mut members = Vec::new();
    match txn.open_table(MEMBERS) {
        Ok(t) => {
            for row in t.iter().map_err(|e| fail("members", e))? {
                let (_, v) = row.map_err(|e| fail("members", e))?;
                members.push(Member::decode(v.value()).map_err(|e| fail("member", e))?);
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(fail("members", e)),
    }
    let version = match txn.open_table(CLUSTER) {
        Ok(t) => t.get(CLUSTER_VERSION_KEY).map_err(|e| fail("cluster", e))?.map(|v| String::from_utf8_lossy(v.value()).into_owned()),
        Err(redb::TableError::TableDoesNotExist(_)) => None,
        Err(e) => return Err(fail("cluster", e)),
    };
    let conf_state = (!members.is_empty() && writes_conf_state(version.as_deref())).then(|| conf_state_json(&members));
    let extra = conf_state.iter().map(|cs| (ETCD_CONF_STATE.to_vec(), cs.as_bytes().to_vec())).collect();
    let file = File::create(tmp).map_err(|e| fail("create", e))?;
    let (out, _size) = write_snapshot_with_meta(txn, BufWriter::new(file), extra)?;
    out.into_inner().map_err(|e| fail("write", e.error()))?;
    // what was written, counted from the file itself
    let r = BoltReader::open(tmp).map_err(bolt_err)?;
    let mut c = Converted { conf_state, members: members.len() as u64, ..Default::default() };
    for (name, bucket) in r.buckets().map_err(bolt_err)? {
        let count = |c: &mut u64| for_each(&r, &bucket, |_, _| {
            *c += 1;
            Ok(())
        });
        match name.as_slice() {
            b"key" => count(&mut c.loaded.revisions)?,
            b"lease" => count(&mut c.loaded.leases)?,
            b"authUsers" => count(&mut c.loaded.auth_users)?,
            b"authRoles" => count(&mut c.loaded.auth_roles)?,
            b"members_removed" => count(&mut c.members_removed)?,
            b"meta" => {
                let get = |k: &[u8]| -> Result<u64, ServerError> {
                    r.get(&bucket, k).map_err(bolt_err)?.map_or(Ok(0), |v| be_u64("meta", &v))
                };
                c.consistent_index = get(ETCD_CONSISTENT_INDEX)?;
                c.term = get(ETCD_TERM)?;
            }
            _ => {}
        }
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::member_json;

    #[test]
    fn member_json_round_trips_learners_and_members_without_attributes() {
        let mut m = crate::membership::new_member(0x8e9e05c52164694d, "n1", vec!["http://a:2380".into()], true);
        m.member_attrs.as_mut().unwrap().client_urls = vec!["http://a:2379".into()];
        assert_eq!(member_from_json(&member_json(&m)).unwrap(), m);
        // a member added but not yet started: etcd writes no name and no client URLs
        let bare = br#"{"id":12345,"peerURLs":["http://b:2380"]}"#;
        let m = member_from_json(bare).unwrap();
        assert_eq!(member_json(&m), bare.to_vec());
        assert!(member_from_json(b"{\"peerURLs\":[]}").is_err(), "no id");
        assert!(member_from_json(b"not json").is_err());
    }

    #[test]
    fn conf_state_is_written_as_etcd_3_5_writes_it_and_only_for_3_5_clusters() {
        // as read from an etcd 3.5.1 db (meta bucket, key confState)
        let voter = crate::membership::new_member(4831587547414905416, "e0", vec![], false);
        assert_eq!(conf_state_json(std::slice::from_ref(&voter)), r#"{"voters":[4831587547414905416],"auto_leave":false}"#);
        let learner = crate::membership::new_member(7, "l", vec![], true);
        assert_eq!(conf_state_json(&[voter, learner]), r#"{"voters":[4831587547414905416],"learners":[7],"auto_leave":false}"#);
        assert!(writes_conf_state(Some("3.5.0")) && writes_conf_state(Some("3.6.0")) && writes_conf_state(Some("4.0.0")));
        assert!(!writes_conf_state(Some("3.4.0")) && !writes_conf_state(None) && !writes_conf_state(Some("x")));
    }

    use etcd_mvcc::KvStore;
    use etcd_proto::etcdserverpb::{DeleteRangeRequest, PutRequest};

    /// Applies one batch: `keys` puts of `prefix<i>`, members `member_ids` (learners when
    /// odd), the removed IDs, a cluster version, and the consistent index `(index, term)`.
    fn apply(kv: &KvStore, prefix: &str, keys: usize, member_ids: &[u64], removed: &[u64], index: u64, term: u64) {
        let mut txn = kv.begin_apply().unwrap();
        for i in 0..keys {
            let put = PutRequest { key: format!("{prefix}{i}").into_bytes(), value: vec![b'v'; 50], ..Default::default() };
            txn.put(&put, &|_| false).unwrap();
        }
        {
            let w = txn.write_txn();
            let mut t = w.open_table(MEMBERS).unwrap();
            for &id in member_ids {
                let m = crate::membership::new_member(id, &format!("m{id}"), vec![format!("http://127.0.0.1:{id}")], id % 2 == 1);
                t.insert(id, m.encode_to_vec().as_slice()).unwrap();
            }
            let mut t = w.open_table(MEMBERS_REMOVED).unwrap();
            for &id in removed {
                t.insert(id, ()).unwrap();
            }
            w.open_table(CLUSTER).unwrap().insert(CLUSTER_VERSION_KEY, b"3.5.0".as_slice()).unwrap();
        }
        txn.set_consistent_index(index, term);
        txn.commit(true).unwrap();
    }

    /// etcd's `snapshot status` hash of the etcd file written from every table `read` sees:
    /// equal hashes mean equal tables.
    fn tables_hash(read: &redb::ReadTransaction, dir: &Path, name: &str) -> u32 {
        let f = dir.join(name);
        export_etcd_db_from(read, &f).unwrap();
        crate::backup::snapshot_status(&f).unwrap().hash
    }

    #[test]
    fn an_export_from_a_live_read_holds_the_reads_state_while_writes_continue_after_it() {
        let tmp = tempfile::tempdir().unwrap();
        let kv = KvStore::open(&tmp.path().join("db")).unwrap();
        apply(&kv, "a", 2_000, &[1, 2], &[9], 7, 2);
        let at_read = kv.hash_kv(0).unwrap();
        let read = kv.read_all().unwrap();
        // the applier goes on after the read was taken
        apply(&kv, "b", 500, &[3], &[], 12, 3);
        let mut txn = kv.begin_apply().unwrap();
        txn.delete_range(&DeleteRangeRequest { key: b"a1".to_vec(), ..Default::default() }).unwrap();
        txn.commit(true).unwrap();

        let bolt = tmp.path().join("out.db");
        let c = export_etcd_db_from(&read, &bolt).unwrap();
        drop(read);
        assert_eq!((c.consistent_index, c.term, c.members, c.members_removed), (7, 2, 2, 1));
        assert_eq!(c.loaded.revisions, 2_000);
        assert_eq!(c.conf_state.as_deref(), Some(r#"{"voters":[2],"learners":[1],"auto_leave":false}"#));

        let back = tmp.path().join("back.redb");
        import_etcd_db(&bolt, &back).unwrap();
        let imported = KvStore::open(&back).unwrap();
        assert_eq!(imported.consistent_index(), (7, 2));
        assert_eq!(imported.hash_kv(0).unwrap(), at_read);
        assert_ne!(kv.hash_kv(0).unwrap(), at_read, "the live store moved on");
        assert!(export_etcd_db_from(&kv.read_all().unwrap(), &bolt).unwrap_err().to_string().contains("exists"));
    }

    #[test]
    fn an_installed_file_replaces_a_non_empty_store_with_exactly_what_an_import_gives() {
        let tmp = tempfile::tempdir().unwrap();
        let source = KvStore::open(&tmp.path().join("source.redb")).unwrap();
        apply(&source, "k", 3_000, &[10, 11], &[4, 5], 40, 6);
        let bolt = tmp.path().join("snap.db");
        export_etcd_db_from(&source.read_all().unwrap(), &bolt).unwrap();

        // a member with other keys, members, alarms and a later revision
        let target = KvStore::open(&tmp.path().join("target.redb")).unwrap();
        apply(&target, "other", 5_000, &[1, 2, 3], &[], 8, 1);
        {
            let txn = target.begin_apply().unwrap();
            txn.write_txn().open_table(crate::alarms::ALARMS).unwrap().insert((1, 1), ()).unwrap();
            txn.commit(true).unwrap();
        }
        let c = install_etcd_db(&target, &bolt).unwrap();
        assert_eq!((c.consistent_index, c.term, c.members, c.members_removed), (40, 6, 2, 2));
        assert_eq!(target.consistent_index(), (40, 6));
        assert_eq!(target.current_revision(), source.current_revision());
        assert_eq!(target.hash_kv(0).unwrap(), source.hash_kv(0).unwrap());

        let imported = tmp.path().join("imported.redb");
        import_etcd_db(&bolt, &imported).unwrap();
        let imported = KvStore::open(&imported).unwrap();
        let want = tables_hash(&imported.read_all().unwrap(), tmp.path(), "imported.db");
        assert_eq!(tables_hash(&target.read_all().unwrap(), tmp.path(), "installed.db"), want, "every table as imported");
        // and it is what a restart finds
        drop(target);
        let reopened = KvStore::open(&tmp.path().join("target.redb")).unwrap();
        assert_eq!(reopened.consistent_index(), (40, 6));
        assert_eq!(tables_hash(&reopened.read_all().unwrap(), tmp.path(), "reopened.db"), want);
    }

    #[test]
    fn a_damaged_file_is_not_installed_and_the_store_keeps_its_state() {
        let tmp = tempfile::tempdir().unwrap();
        let kv = KvStore::open(&tmp.path().join("db")).unwrap();
        apply(&kv, "k", 10, &[1], &[], 5, 1);
        let before = kv.hash_kv(0).unwrap();
        let mut bytes = fs::read(fixture()).unwrap();
        bytes.truncate(bytes.len() - 32);
        for page in [2, 3, 4] {
            bytes[page * 4096 + 16 + 4] = 0xff;
            bytes[page * 4096 + 16 + 7] = 0x7f;
        }
        let bad = tmp.path().join("bad.db");
        fs::write(&bad, &bytes).unwrap();
        assert!(install_etcd_db(&kv, &bad).is_err());
        fs::write(&bad, b"garbage").unwrap();
        assert!(install_etcd_db(&kv, &bad).is_err());
        assert!(install_etcd_db(&kv, &tmp.path().join("missing.db")).is_err());
        assert_eq!(kv.hash_kv(0).unwrap(), before);
        assert_eq!(kv.consistent_index(), (5, 1));
    }

    fn fixture() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../mvcc/tests/fixtures/etcd-3.4.23-snapshot.db")
    }

    #[test]
    fn a_damaged_file_is_refused_and_leaves_neither_the_destination_nor_a_temp_file() {
        let tmp = tempfile::tempdir().unwrap();
        let mut bytes = fs::read(fixture()).unwrap();
        bytes.truncate(bytes.len() - 32); // the sha256 etcd appends to a snapshot
        // on every data page in turn, the first element made to point outside its page
        let bad = tmp.path().join("bad.db");
        let dest = tmp.path().join("out.redb");
        let mut refused = 0;
        for page in 2..(bytes.len() / 4096) {
            let mut b = bytes.clone();
            b[page * 4096 + 16 + 4] = 0xff; // first element's pos (leaf) or ksize (branch)
            b[page * 4096 + 16 + 7] = 0x7f;
            fs::write(&bad, &b).unwrap();
            if import_etcd_db(&bad, &dest).is_ok() {
                fs::remove_file(&dest).unwrap();
                continue; // a freelist page or an empty one: nothing points through it
            }
            refused += 1;
            assert!(!dest.exists(), "page {page}");
            assert!(!temp_path(&dest, ".import.tmp").exists(), "page {page}");
        }
        assert!(refused >= 3, "damage to the root, key and lease pages is found: {refused} refused");
        fs::write(&bad, b"garbage").unwrap();
        assert!(import_etcd_db(&bad, &dest).is_err());
        assert!(!dest.exists());
    }

    #[test]
    fn a_temp_file_left_by_a_crash_is_replaced_and_an_existing_destination_is_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let mut bytes = fs::read(fixture()).unwrap();
        bytes.truncate(bytes.len() - 32);
        let src = tmp.path().join("db");
        fs::write(&src, &bytes).unwrap();
        let dest = tmp.path().join("out.redb");
        // a conversion killed before its rename leaves only the temp file
        fs::write(temp_path(&dest, ".import.tmp"), b"half a file").unwrap();
        let c = import_etcd_db(&src, &dest).unwrap();
        assert_eq!((c.loaded.revisions, c.loaded.leases), (5, 1));
        assert!(!temp_path(&dest, ".import.tmp").exists());
        let before = fs::read(&dest).unwrap();
        let e = import_etcd_db(&src, &dest).unwrap_err().to_string();
        assert!(e.contains("exists"), "{e}");
        assert_eq!(fs::read(&dest).unwrap(), before, "untouched");

        let back = tmp.path().join("back.db");
        fs::write(temp_path(&back, ".export.tmp"), b"half a file").unwrap();
        let x = export_etcd_db(&dest, &back).unwrap();
        assert_eq!(x.loaded.revisions, 5);
        assert!(!temp_path(&back, ".export.tmp").exists());
        assert!(export_etcd_db(&tmp.path().join("missing.redb"), &tmp.path().join("x.db")).is_err());
        assert!(!tmp.path().join("x.db").exists());
    }
}
