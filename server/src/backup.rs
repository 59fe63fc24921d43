//! etcd's snapshot file (its bbolt backend) from etcd-rs's tables, and etcd-rs's tables from
//! one: what `Maintenance.Snapshot` streams and what `etcdutl-rs snapshot restore` loads.
//!
//! Bucket contents are exactly etcd 3.4/3.5's (read etcd's mvcc/kvstore.go, lease/lessor.go,
//! etcdserver/api/membership/store.go, v3alarm, auth/store.go); the table-by-table mapping:
//!
//! | etcd-rs table | etcd bucket | conversion |
//! | --- | --- | --- |
//! | `key` | `key` | none: the same 17/18-byte revision keys and mvccpb.KeyValue values |
//! | `meta` (name -> u64) | `meta` | `consistent_index`, `term` -> 8 bytes big-endian; `scheduled_compact_rev` / `finished_compact_rev` -> `scheduledCompactRev` / `finishedCompactRev` as 17-byte revisions {rev, 0}, present only once set |
//! | `lease` (i64 -> leasepb.Lease) | `lease` | key -> 8 bytes big-endian; value unchanged |
//! | `members` (u64 -> membershippb.Member) | `members` | key -> lowercase hex ID; value -> etcd's JSON `{"id","peerURLs","isLearner"?,"name"?,"clientURLs"?}` |
//! | `members_removed` (u64 -> ()) | `members_removed` | key -> hex ID; value `removed` |
//! | `cluster` | `cluster` | none (`clusterVersion` -> version string) |
//! | `alarm` ((member, type) -> ()) | `alarm` | key -> encoded etcdserverpb.AlarmMember; empty value |
//! | `auth` | `auth` | none (`authEnabled` -> [0|1], `authRevision` -> 8 bytes big-endian) |
//! | `auth_users` / `auth_roles` | `authUsers` / `authRoles` | bucket name only (authpb.User / authpb.Role values) |
//!
//! Every bucket is written even when empty, as etcd creates them all at start. The key table,
//! the only one that grows large, is streamed; the others are sorted in memory.

use std::io::{Seek, Write};

use etcd_mvcc::backend::{
    KEY_TABLE, META_CONSISTENT_INDEX, META_FINISHED_COMPACT, META_SCHEDULED_COMPACT, META_TABLE, META_TERM,
};
use etcd_mvcc::bolt::{BoltError, BoltReader, BoltWriter, BucketRef};
use etcd_mvcc::Revision;
use etcd_proto::etcdserverpb::AlarmMember;
use etcd_proto::membershippb::Member;
use prost::Message;
use redb::{ReadTransaction, ReadableTable, TableDefinition, WriteTransaction};

use crate::alarms::ALARMS;
use crate::errors::ServerError;
use crate::membership::{CLUSTER, MEMBERS, MEMBERS_REMOVED};

fn err(what: &str, e: impl std::fmt::Display) -> ServerError {
    ServerError::Internal(format!("snapshot file: {what}: {e}"))
}

pub(crate) fn bolt_err(e: BoltError) -> ServerError {
    ServerError::Internal(format!("snapshot file: {e}"))
}

/// etcd's meta keys.
pub const ETCD_CONSISTENT_INDEX: &[u8] = b"consistent_index";
pub const ETCD_TERM: &[u8] = b"term";
pub const ETCD_SCHEDULED_COMPACT: &[u8] = b"scheduledCompactRev";
pub const ETCD_FINISHED_COMPACT: &[u8] = b"finishedCompactRev";

/// Rows of a table, or none when the table does not exist (a data dir that never wrote it).
fn rows<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &ReadTransaction,
    def: TableDefinition<K, V>,
    mut each: impl FnMut(K::SelfType<'_>, V::SelfType<'_>) -> Result<(), ServerError>,
) -> Result<(), ServerError> {
    let table = match txn.open_table(def) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
        Err(e) => return Err(err("open table", e)),
    };
    for row in table.iter().map_err(|e| err("read", e))? {
        let (k, v) = row.map_err(|e| err("read", e))?;
        each(k.value(), v.value())?;
    }
    Ok(())
}

/// Writes the rows of `table` that `map` turns into etcd's (key, value) into `bucket`, sorted
/// by etcd's key (which need not sort as the table's key does).
fn copy_table<W: Write + Seek, K: redb::Key + 'static, V: redb::Value + 'static>(
    w: &mut BoltWriter<W>,
    txn: &ReadTransaction,
    table: TableDefinition<K, V>,
    bucket: &[u8],
    map: impl FnMut(K::SelfType<'_>, V::SelfType<'_>) -> Result<Option<(Vec<u8>, Vec<u8>)>, ServerError>,
) -> Result<(), ServerError> {
    write_bucket(w, bucket, table_rows(txn, table, map)?)
}

/// The rows of `table` that `map` turns into etcd's (key, value), in table order.
fn table_rows<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &ReadTransaction,
    table: TableDefinition<K, V>,
    mut map: impl FnMut(K::SelfType<'_>, V::SelfType<'_>) -> Result<Option<(Vec<u8>, Vec<u8>)>, ServerError>,
) -> Result<Vec<(Vec<u8>, Vec<u8>)>, ServerError> {
    let mut all = Vec::new();
    rows(txn, table, |k, v| {
        all.extend(map(k, v)?);
        Ok(())
    })?;
    Ok(all)
}

/// Writes `all` as bucket `bucket`, sorted by key.
fn write_bucket<W: Write + Seek>(w: &mut BoltWriter<W>, bucket: &[u8], mut all: Vec<(Vec<u8>, Vec<u8>)>) -> Result<(), ServerError> {
    all.sort_by(|a, b| a.0.cmp(&b.0));
    let mut b = w.bucket(bucket).map_err(bolt_err)?;
    for (k, v) in all {
        b.put(&k, &v).map_err(bolt_err)?;
    }
    b.finish().map_err(bolt_err)
}

/// etcd's JSON of a member (Go's encoding of membership.Member: field order as declared,
/// `isLearner`, `name` and `clientURLs` omitted when empty).
pub fn member_json(m: &Member) -> Vec<u8> {
    let mut o = serde_json::Map::new();
    o.insert("id".into(), m.id.into());
    let raft = m.raft_attrs.clone().unwrap_or_default();
    o.insert("peerURLs".into(), raft.peer_urls.into());
    if raft.is_learner {
        o.insert("isLearner".into(), true.into());
    }
    let attrs = m.member_attrs.clone().unwrap_or_default();
    if !attrs.name.is_empty() {
        o.insert("name".into(), attrs.name.into());
    }
    if !attrs.client_urls.is_empty() {
        o.insert("clientURLs".into(), attrs.client_urls.into());
    }
    serde_json::Value::Object(o).to_string().into_bytes()
}

/// Writes every table seen by `txn` as etcd's bbolt file; returns the writer and the file's
/// size (what etcd's `snapshot status` calls the total size).
pub fn write_snapshot<W: Write + Seek>(txn: &ReadTransaction, out: W) -> Result<(W, u64), ServerError> {
    write_snapshot_with_meta(txn, out, Vec::new())
}

/// [`write_snapshot`] with `extra_meta` rows added to the meta bucket (rows etcd keeps that
/// etcd-rs derives from elsewhere, such as 3.5's `confState`; see etcd_backend.rs).
pub fn write_snapshot_with_meta<W: Write + Seek>(
    txn: &ReadTransaction,
    out: W,
    extra_meta: Vec<(Vec<u8>, Vec<u8>)>,
) -> Result<(W, u64), ServerError> {
    let mut w = BoltWriter::new(out).map_err(bolt_err)?;

    let mut b = w.bucket(b"key").map_err(bolt_err)?;
    rows(txn, KEY_TABLE, |k, v| b.put(k, v).map_err(bolt_err))?;
    b.finish().map_err(bolt_err)?;

    let mut meta = table_rows(txn, META_TABLE, |name, v| {
        Ok(match name {
            META_CONSISTENT_INDEX => Some((ETCD_CONSISTENT_INDEX.to_vec(), v.to_be_bytes().to_vec())),
            META_TERM => Some((ETCD_TERM.to_vec(), v.to_be_bytes().to_vec())),
            META_SCHEDULED_COMPACT if v > 0 => {
                Some((ETCD_SCHEDULED_COMPACT.to_vec(), Revision::new(v as i64, 0).to_bytes()))
            }
            META_FINISHED_COMPACT if v > 0 => {
                Some((ETCD_FINISHED_COMPACT.to_vec(), Revision::new(v as i64, 0).to_bytes()))
            }
            _ => None,
        })
    })?;
    meta.extend(extra_meta);
    write_bucket(&mut w, b"meta", meta)?;
    copy_table(&mut w, txn, etcd_lease::LEASE_TABLE, b"lease", |id, v| Ok(Some((id.to_be_bytes().to_vec(), v.to_vec()))))?;
    copy_table(&mut w, txn, MEMBERS, b"members", |id, v| {
        let m = Member::decode(v).map_err(|e| err("member", e))?;
        Ok(Some((format!("{id:x}").into_bytes(), member_json(&m))))
    })?;
    copy_table(&mut w, txn, MEMBERS_REMOVED, b"members_removed", |id, ()| {
        Ok(Some((format!("{id:x}").into_bytes(), b"removed".to_vec())))
    })?;
    copy_table(&mut w, txn, CLUSTER, b"cluster", |k, v| Ok(Some((k.as_bytes().to_vec(), v.to_vec()))))?;
    copy_table(&mut w, txn, ALARMS, b"alarm", |(member_id, alarm), ()| {
        Ok(Some((AlarmMember { member_id, alarm }.encode_to_vec(), Vec::new())))
    })?;
    copy_table(&mut w, txn, etcd_auth::AUTH, b"auth", |k, v| Ok(Some((k.as_bytes().to_vec(), v.to_vec()))))?;
    for (table, bucket) in [(etcd_auth::AUTH_USERS, &b"authUsers"[..]), (etcd_auth::AUTH_ROLES, b"authRoles")] {
        copy_table(&mut w, txn, table, bucket, |k, v| Ok(Some((k.to_vec(), v.to_vec()))))?;
    }
    w.finish().map_err(bolt_err)
}

/// What [`load_snapshot`] loaded.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// Rows of the key bucket.
    pub revisions: u64,
    pub leases: u64,
    pub auth_users: u64,
    pub auth_roles: u64,
    /// Buckets etcd-rs has no table for, skipped.
    pub skipped_buckets: Vec<String>,
}

pub(crate) fn for_each(r: &BoltReader, b: &BucketRef, mut f: impl FnMut(&[u8], &[u8]) -> Result<(), ServerError>) -> Result<(), ServerError> {
    let mut failed = None;
    r.for_each(b, &mut |e| {
        if let Err(x) = f(e.key, e.value) {
            failed = Some(x);
            return Err(BoltError::Invalid("stopped".into()));
        }
        Ok(())
    })
    .map_err(|e| failed.take().unwrap_or_else(|| bolt_err(e)))
}

pub(crate) fn be_u64(what: &str, v: &[u8]) -> Result<u64, ServerError> {
    let a: [u8; 8] = v.try_into().map_err(|_| err(what, format!("{} bytes, want 8", v.len())))?;
    Ok(u64::from_be_bytes(a))
}

/// Loads etcd's buckets from `r` into etcd-rs's tables in `wtx` (which the caller made empty).
/// Membership (`members`, `members_removed`) is not loaded: a restore replaces it, as etcd's
/// does; the consistent index and term are not loaded either (a restored member starts a new
/// raft log). Compaction marks, keys, leases, alarms, auth and the cluster version are.
pub fn load_snapshot(r: &BoltReader, wtx: &WriteTransaction) -> Result<Loaded, ServerError> {
    let mut loaded = Loaded::default();
    let e = |what: &'static str| move |x: redb::Error| err(what, x);
    for (name, bucket) in r.buckets().map_err(bolt_err)? {
        match name.as_slice() {
            b"key" => {
                let mut t = wtx.open_table(KEY_TABLE).map_err(|x| e("key")(x.into()))?;
                for_each(r, &bucket, |k, v| {
                    Revision::from_key_bytes(k).map_err(|x| err("key bucket", x))?;
                    t.insert(k, v).map_err(|x| e("key")(x.into()))?;
                    loaded.revisions += 1;
                    Ok(())
                })?;
            }
            b"meta" => {
                let mut t = wtx.open_table(META_TABLE).map_err(|x| e("meta")(x.into()))?;
                for_each(r, &bucket, |k, v| {
                    let name = match k {
                        ETCD_SCHEDULED_COMPACT => META_SCHEDULED_COMPACT,
                        ETCD_FINISHED_COMPACT => META_FINISHED_COMPACT,
                        _ => return Ok(()),
                    };
                    let (rev, _) = Revision::from_key_bytes(v).map_err(|x| err("meta bucket", x))?;
                    t.insert(name, rev.main as u64).map_err(|x| e("meta")(x.into()))?;
                    Ok(())
                })?;
            }
            b"lease" => {
                let mut t = wtx.open_table(etcd_lease::LEASE_TABLE).map_err(|x| e("lease")(x.into()))?;
                for_each(r, &bucket, |k, v| {
                    let id = be_u64("lease ID", k)? as i64;
                    etcd_proto::leasepb::Lease::decode(v).map_err(|x| err("lease", x))?;
                    t.insert(id, v).map_err(|x| e("lease")(x.into()))?;
                    loaded.leases += 1;
                    Ok(())
                })?;
            }
            b"members" | b"members_removed" => {}
            b"cluster" => {
                let mut t = wtx.open_table(CLUSTER).map_err(|x| e("cluster")(x.into()))?;
                for_each(r, &bucket, |k, v| {
                    let k = std::str::from_utf8(k).map_err(|x| err("cluster bucket", x))?;
                    t.insert(k, v).map_err(|x| e("cluster")(x.into()))?;
                    Ok(())
                })?;
            }
            b"alarm" => {
                let mut t = wtx.open_table(ALARMS).map_err(|x| e("alarm")(x.into()))?;
                for_each(r, &bucket, |k, _| {
                    let a = AlarmMember::decode(k).map_err(|x| err("alarm", x))?;
                    t.insert((a.member_id, a.alarm), ()).map_err(|x| e("alarm")(x.into()))?;
                    Ok(())
                })?;
            }
            b"auth" => {
                let mut t = wtx.open_table(etcd_auth::AUTH).map_err(|x| e("auth")(x.into()))?;
                for_each(r, &bucket, |k, v| {
                    let k = std::str::from_utf8(k).map_err(|x| err("auth bucket", x))?;
                    t.insert(k, v).map_err(|x| e("auth")(x.into()))?;
                    Ok(())
                })?;
            }
            b"authUsers" | b"authRoles" => {
                let users = name.as_slice() == b"authUsers";
                let def = if users { etcd_auth::AUTH_USERS } else { etcd_auth::AUTH_ROLES };
                let mut t = wtx.open_table(def).map_err(|x| e("auth")(x.into()))?;
                for_each(r, &bucket, |k, v| {
                    t.insert(k, v).map_err(|x| e("auth")(x.into()))?;
                    if users {
                        loaded.auth_users += 1;
                    } else {
                        loaded.auth_roles += 1;
                    }
                    Ok(())
                })?;
            }
            other => loaded.skipped_buckets.push(String::from_utf8_lossy(other).into_owned()),
        }
    }
    Ok(loaded)
}

/// etcd's `snapshot status` of a file: the CRC-32C of every bucket name, key and value in
/// order, the revision of the last key-bucket row, the number of rows, the database size.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SnapshotStatus {
    pub hash: u32,
    pub revision: i64,
    #[serde(rename = "totalKey")]
    pub total_key: u64,
    #[serde(rename = "totalSize")]
    pub total_size: u64,
}

/// Reads a snapshot file's status as etcdutl does, including bbolt's integrity check.
pub fn snapshot_status(path: &std::path::Path) -> Result<SnapshotStatus, ServerError> {
    let r = BoltReader::open(path).map_err(|e| ServerError::Internal(e.to_string()))?;
    let problems = r.check().map_err(|e| ServerError::Internal(e.to_string()))?;
    if !problems.is_empty() {
        return Err(ServerError::Internal(format!(
            "snapshot file integrity check failed. {} errors found.\n{}",
            problems.len(),
            problems.join("\n")
        )));
    }
    let mut hash = 0u32;
    let mut status = SnapshotStatus { hash: 0, revision: 0, total_key: 0, total_size: r.size() };
    for (name, bucket) in r.buckets().map_err(bolt_err)? {
        hash = crc32c::crc32c_append(hash, &name);
        let is_key = name == b"key";
        for_each(&r, &bucket, |k, v| {
            hash = crc32c::crc32c_append(hash, k);
            hash = crc32c::crc32c_append(hash, v);
            if is_key {
                // etcd's bytesToRev: the first 8 bytes, big-endian
                if let Some(main) = k.get(..8) {
                    status.revision = be_u64("revision", main)? as i64;
                }
            }
            status.total_key += 1;
            Ok(())
        })?;
    }
    status.hash = hash;
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_json_is_etcds() {
        let m = crate::membership::new_member(0x8e9e05c52164694d, "default", vec!["http://localhost:2380".into()], false);
        let mut m = m;
        m.member_attrs = Some(etcd_proto::membershippb::Attributes {
            name: "default".into(),
            client_urls: vec!["http://localhost:2379".into()],
        });
        assert_eq!(
            String::from_utf8(member_json(&m)).unwrap(),
            r#"{"id":10276657743932975437,"peerURLs":["http://localhost:2380"],"name":"default","clientURLs":["http://localhost:2379"]}"#
        );
    }

    #[test]
    fn status_of_etcds_own_snapshot_matches_etcdutl() {
        // etcdutl 3.5.1 snapshot status on this file: bfbf105a, 6, 12, 37 kB (36864 bytes)
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../mvcc/tests/fixtures/etcd-3.4.23-snapshot.db");
        let s = snapshot_status(&path).unwrap();
        assert_eq!(s, SnapshotStatus { hash: 0xbfbf105a, revision: 6, total_key: 12, total_size: 36864 });
    }
}
