//! Store-level tests: revision numbering, Range options, Txn semantics, atomicity of failed
//! requests, compaction and its crash recovery, reopen, hashes, readers vs the writer.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use etcd_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use etcd_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use etcd_proto::etcdserverpb::request_op::Request;
use etcd_proto::etcdserverpb::response_op::Response;
use etcd_proto::etcdserverpb::{
    Compare, DeleteRangeRequest, PutRequest, RangeRequest, RangeResponse, RequestOp, TxnRequest,
    TxnResponse,
};
use etcd_proto::mvccpb::event::EventType;
use etcd_proto::mvccpb::{Event, KeyValue};
use redb::{ReadableDatabase, ReadableTableMetadata};

use crate::backend::KEY_TABLE;
use crate::{ApplyTxn, CompactionStep, KeyValueHash, KvStore, MvccError};

mod range_stream;

fn no_lease(_: i64) -> bool {
    false
}

struct Fixture {
    _dir: tempfile::TempDir,
    path: PathBuf,
    store: KvStore,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("member/snap/db");
        let store = KvStore::open(&path).unwrap();
        Fixture {
            _dir: dir,
            path,
            store,
        }
    }

    fn reopen(&mut self) {
        // drop the old store first: redb allows one open per file
        let path = self.path.clone();
        let placeholder = tempfile::tempdir().unwrap();
        let old = std::mem::replace(
            &mut self.store,
            KvStore::open(&placeholder.path().join("db")).unwrap(),
        );
        drop(old);
        self.store = KvStore::open(&path).unwrap();
    }

    fn apply<T>(&self, f: impl FnOnce(&mut ApplyTxn<'_>) -> T) -> (T, Vec<Event>) {
        let mut t = self.store.begin_apply().unwrap();
        let out = f(&mut t);
        let events = t.commit(false).unwrap();
        self.store.finish_compaction().unwrap();
        (out, events)
    }

    fn put(&self, key: &str, value: &str) -> i64 {
        let (resp, _) = self.apply(|t| t.put(&put_req(key, value), &no_lease).unwrap());
        resp.header.unwrap().revision
    }

    fn del(&self, key: &str, end: &str) -> i64 {
        let req = DeleteRangeRequest {
            key: key.into(),
            range_end: end.into(),
            prev_kv: false,
        };
        self.apply(|t| t.delete_range(&req).unwrap()).0.deleted
    }

    fn txn(&self, req: TxnRequest) -> Result<TxnResponse, MvccError> {
        self.apply(|t| t.txn(&req, &no_lease)).0
    }

    fn range(&self, req: RangeRequest) -> Result<RangeResponse, MvccError> {
        self.store.range(&req)
    }

    fn get(&self, key: &str) -> Option<KeyValue> {
        self.range(RangeRequest {
            key: key.into(),
            ..Default::default()
        })
        .unwrap()
        .kvs
        .pop()
    }

    fn all(&self) -> Vec<KeyValue> {
        self.range(RangeRequest {
            key: vec![0],
            range_end: vec![0],
            ..Default::default()
        })
        .unwrap()
        .kvs
    }

    fn rev(&self) -> i64 {
        self.store.current_revision()
    }

    fn key_table_rows(&self) -> u64 {
        let txn = self.store.read_all().unwrap();
        txn.open_table(KEY_TABLE).unwrap().len().unwrap()
    }
}

fn put_req(key: &str, value: &str) -> PutRequest {
    PutRequest {
        key: key.into(),
        value: value.into(),
        ..Default::default()
    }
}

fn put_op(key: &str, value: &str) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestPut(put_req(key, value))),
    }
}

fn get_op(key: &str) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestRange(RangeRequest {
            key: key.into(),
            ..Default::default()
        })),
    }
}

fn del_op(key: &str) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
            key: key.into(),
            ..Default::default()
        })),
    }
}

fn cmp(key: &str, target: CompareTarget, result: CompareResult, value: TargetUnion) -> Compare {
    Compare {
        result: result as i32,
        target: target as i32,
        key: key.into(),
        range_end: vec![],
        target_union: Some(value),
    }
}

fn keys(kvs: &[KeyValue]) -> Vec<String> {
    kvs.iter()
        .map(|kv| String::from_utf8(kv.key.clone()).unwrap())
        .collect()
}

fn range_all(f: impl FnOnce(&mut RangeRequest)) -> RangeRequest {
    let mut r = RangeRequest {
        key: b"a".to_vec(),
        range_end: b"z".to_vec(),
        ..Default::default()
    };
    f(&mut r);
    r
}

// ---------------------------------------------------------------- revisions

#[test]
fn empty_store_is_at_revision_one_and_each_change_adds_one() {
    let f = Fixture::new();
    assert_eq!(f.rev(), 1);
    assert_eq!(f.store.compact_revision(), 0);
    assert_eq!(f.put("a", "1"), 2);
    assert_eq!(f.rev(), 2);
    let kv = f.get("a").unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 2, 1));
    f.put("a", "2");
    let kv = f.get("a").unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));
}

#[test]
fn txn_with_three_puts_takes_one_revision_with_increasing_sub() {
    let f = Fixture::new();
    let (resp, events) = f.apply(|t| {
        let req = TxnRequest {
            success: vec![put_op("a", "1"), put_op("b", "2"), put_op("c", "3")],
            ..Default::default()
        };
        t.txn(&req, &no_lease).unwrap()
    });
    assert!(resp.succeeded);
    assert_eq!(resp.header.unwrap().revision, 2);
    assert_eq!(f.rev(), 2);
    assert!(f
        .all()
        .iter()
        .all(|kv| kv.mod_revision == 2 && kv.create_revision == 2));
    assert_eq!(events.len(), 3);
    // sub revisions 0, 1, 2 in the key table
    let txn = f.store.read_all().unwrap();
    let table = txn.open_table(KEY_TABLE).unwrap();
    let revs: Vec<crate::Revision> = redb::ReadableTable::iter(&table)
        .unwrap()
        .map(|r| {
            crate::Revision::from_key_bytes(r.unwrap().0.value())
                .unwrap()
                .0
        })
        .collect();
    assert_eq!(
        revs,
        vec![
            crate::Revision::new(2, 0),
            crate::Revision::new(2, 1),
            crate::Revision::new(2, 2)
        ]
    );
}

#[test]
fn requests_that_change_nothing_take_no_revision() {
    let f = Fixture::new();
    f.put("a", "1");
    assert_eq!(f.del("zzz", ""), 0);
    assert_eq!(f.rev(), 2);
    let ro = TxnRequest {
        compare: vec![],
        success: vec![get_op("a")],
        failure: vec![],
    };
    let resp = f.txn(ro).unwrap();
    assert_eq!(resp.header.unwrap().revision, 2);
    assert_eq!(f.rev(), 2);
    let failed = f.apply(|t| {
        t.put(
            &PutRequest {
                key: b"nope".to_vec(),
                ignore_value: true,
                ..Default::default()
            },
            &no_lease,
        )
    });
    assert_eq!(failed.0, Err(MvccError::KeyNotFound));
    assert_eq!(f.rev(), 2);
    assert_eq!(f.put("b", "1"), 3);
}

#[test]
fn each_request_of_a_batch_takes_its_own_revision_and_readers_see_none_until_commit() {
    let f = Fixture::new();
    let mut t = f.store.begin_apply().unwrap();
    assert_eq!(
        t.put(&put_req("a", "1"), &no_lease)
            .unwrap()
            .header
            .unwrap()
            .revision,
        2
    );
    assert_eq!(
        t.put(&put_req("b", "1"), &no_lease)
            .unwrap()
            .header
            .unwrap()
            .revision,
        3
    );
    let del = DeleteRangeRequest {
        key: b"a".to_vec(),
        ..Default::default()
    };
    assert_eq!(t.delete_range(&del).unwrap().header.unwrap().revision, 4);
    // the batch sees its writes, readers do not
    let inside = t.range(&range_all(|_| {})).unwrap();
    assert_eq!(keys(&inside.kvs), vec!["b"]);
    assert_eq!(inside.header.unwrap().revision, 4);
    assert_eq!(f.rev(), 1);
    assert!(f.all().is_empty());
    let events = t.commit(false).unwrap();
    assert_eq!(f.rev(), 4);
    let kinds: Vec<(i32, i64)> = events
        .iter()
        .map(|e| (e.r#type, e.kv.as_ref().unwrap().mod_revision))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (EventType::Put as i32, 2),
            (EventType::Put as i32, 3),
            (EventType::Delete as i32, 4)
        ]
    );
    let delete = &events[2];
    assert_eq!(delete.kv.as_ref().unwrap().key, b"a");
    assert_eq!(delete.prev_kv.as_ref().unwrap().value, b"1");
    assert!(events[0].prev_kv.is_none());
}

#[test]
fn put_events_carry_the_previous_value() {
    let f = Fixture::new();
    f.put("a", "old");
    let (_, events) = f.apply(|t| t.put(&put_req("a", "new"), &no_lease).unwrap());
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].prev_kv.as_ref().unwrap().value, b"old");
    assert_eq!(events[0].kv.as_ref().unwrap().version, 2);
}

#[test]
fn a_second_batch_waits_for_the_first() {
    let f = Fixture::new();
    let store = &f.store;
    let t = store.begin_apply().unwrap();
    std::thread::scope(|s| {
        let other = s.spawn(|| {
            let mut t2 = store.begin_apply().unwrap();
            let rev = t2
                .put(&put_req("b", "1"), &no_lease)
                .unwrap()
                .header
                .unwrap()
                .revision;
            t2.commit(false).unwrap();
            rev
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        let mut t = t;
        assert_eq!(
            t.put(&put_req("a", "1"), &no_lease)
                .unwrap()
                .header
                .unwrap()
                .revision,
            2
        );
        t.commit(false).unwrap();
        assert_eq!(
            other.join().unwrap(),
            3,
            "the second batch starts from the first's revision"
        );
    });
    assert_eq!(f.rev(), 3);
}

#[test]
fn a_dropped_batch_leaves_no_trace() {
    let f = Fixture::new();
    f.put("a", "1");
    {
        let mut t = f.store.begin_apply().unwrap();
        t.put(&put_req("a", "2"), &no_lease).unwrap();
        t.put(&put_req("new", "x"), &no_lease).unwrap();
        t.delete_range(&DeleteRangeRequest {
            key: b"a".to_vec(),
            ..Default::default()
        })
        .unwrap();
        // dropped, not committed
    }
    assert_eq!(f.rev(), 2);
    assert_eq!(keys(&f.all()), vec!["a"]);
    assert_eq!(f.store.index.len(), 1);
    // the same revisions are used again
    assert_eq!(f.put("a", "3"), 3);
    let kv = f.get("a").unwrap();
    assert_eq!(
        (kv.version, kv.mod_revision, kv.value.as_slice()),
        (2, 3, &b"3"[..])
    );
}

#[test]
fn put_with_an_unknown_lease_fails_without_change() {
    let f = Fixture::new();
    let r = f
        .apply(|t| {
            t.put(
                &PutRequest {
                    key: b"a".to_vec(),
                    lease: 7,
                    ..Default::default()
                },
                &no_lease,
            )
        })
        .0;
    assert_eq!(r, Err(MvccError::LeaseNotFound));
    assert_eq!(f.rev(), 1);
    let ok = f
        .apply(|t| {
            t.put(
                &PutRequest {
                    key: b"a".to_vec(),
                    lease: 7,
                    ..Default::default()
                },
                &|id| id == 7,
            )
        })
        .0;
    assert_eq!(ok.unwrap().header.unwrap().revision, 2);
    assert_eq!(f.get("a").unwrap().lease, 7);
}

#[test]
fn put_options_prev_kv_ignore_value_ignore_lease() {
    let f = Fixture::new();
    f.apply(|t| {
        t.put(
            &PutRequest {
                key: b"a".to_vec(),
                value: b"v1".to_vec(),
                lease: 5,
                ..Default::default()
            },
            &|_| true,
        )
        .unwrap()
    });
    let resp = f
        .apply(|t| {
            let req = PutRequest {
                key: b"a".to_vec(),
                ignore_value: true,
                ignore_lease: true,
                prev_kv: true,
                ..Default::default()
            };
            t.put(&req, &no_lease).unwrap()
        })
        .0;
    assert_eq!(resp.prev_kv.unwrap().value, b"v1");
    let kv = f.get("a").unwrap();
    assert_eq!(
        (kv.value.as_slice(), kv.lease, kv.version),
        (&b"v1"[..], 5, 2)
    );
    let resp = f
        .apply(|t| {
            t.put(
                &PutRequest {
                    key: b"b".to_vec(),
                    prev_kv: true,
                    ..Default::default()
                },
                &no_lease,
            )
            .unwrap()
        })
        .0;
    assert!(resp.prev_kv.is_none());
    let err = f
        .apply(|t| {
            t.put(
                &PutRequest {
                    key: b"c".to_vec(),
                    ignore_lease: true,
                    ..Default::default()
                },
                &no_lease,
            )
        })
        .0;
    assert_eq!(err, Err(MvccError::KeyNotFound));
}

#[test]
fn delete_range_returns_prev_kvs_and_recreation_starts_a_new_generation() {
    let f = Fixture::new();
    f.put("a", "1");
    f.put("a", "2");
    f.put("b", "1");
    f.put("c", "1");
    let (resp, events) = f.apply(|t| {
        t.delete_range(&DeleteRangeRequest {
            key: b"a".to_vec(),
            range_end: b"c".to_vec(),
            prev_kv: true,
        })
        .unwrap()
    });
    assert_eq!(resp.deleted, 2);
    assert_eq!(keys(&resp.prev_kvs), vec!["a", "b"]);
    assert_eq!(resp.header.unwrap().revision, 6);
    assert_eq!(events.len(), 2);
    assert!(events
        .iter()
        .all(|e| e.r#type == EventType::Delete as i32 && e.kv.as_ref().unwrap().mod_revision == 6));
    assert_eq!(keys(&f.all()), vec!["c"]);
    f.put("a", "again");
    let kv = f.get("a").unwrap();
    assert_eq!((kv.create_revision, kv.version), (7, 1));
    // reads in the past still see the old generation
    let old = f
        .range(RangeRequest {
            key: b"a".to_vec(),
            revision: 5,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(old.kvs[0].value, b"2");
    assert_eq!(old.kvs[0].version, 2);
    // deleting everything from a key on
    assert_eq!(f.del("\0", "\0"), 2);
    assert!(f.all().is_empty());
}

// ---------------------------------------------------------------- range

/// a@2 (v1), b@3 "zz", c@4 "y", a@5 "x" (v2), d@6 "w", b@7 "v" (v2), e@8 "u"
fn range_fixture() -> Fixture {
    let f = Fixture::new();
    for (k, v) in [
        ("a", "a1"),
        ("b", "zz"),
        ("c", "y"),
        ("a", "x"),
        ("d", "w"),
        ("b", "v"),
        ("e", "u"),
    ] {
        f.put(k, v);
    }
    f
}

#[test]
fn range_single_key_prefix_from_key_and_all() {
    let f = range_fixture();
    assert_eq!(
        keys(
            &f.range(RangeRequest {
                key: b"c".to_vec(),
                ..Default::default()
            })
            .unwrap()
            .kvs
        ),
        vec!["c"]
    );
    assert!(f
        .range(RangeRequest {
            key: b"cc".to_vec(),
            ..Default::default()
        })
        .unwrap()
        .kvs
        .is_empty());
    assert_eq!(
        keys(
            &f.range(RangeRequest {
                key: b"b".to_vec(),
                range_end: b"d".to_vec(),
                ..Default::default()
            })
            .unwrap()
            .kvs
        ),
        vec!["b", "c"]
    );
    assert_eq!(
        keys(
            &f.range(RangeRequest {
                key: b"c".to_vec(),
                range_end: vec![0],
                ..Default::default()
            })
            .unwrap()
            .kvs
        ),
        vec!["c", "d", "e"]
    );
    assert_eq!(keys(&f.all()), vec!["a", "b", "c", "d", "e"]);
    assert!(f
        .range(RangeRequest {
            key: b"d".to_vec(),
            range_end: b"b".to_vec(),
            ..Default::default()
        })
        .unwrap()
        .kvs
        .is_empty());
    // prefix "b": range_end = "c"
    f.put("ba", "1");
    f.put("bz", "1");
    let prefix = f
        .range(RangeRequest {
            key: b"b".to_vec(),
            range_end: b"c".to_vec(),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(keys(&prefix.kvs), vec!["b", "ba", "bz"]);
    assert_eq!(prefix.header.unwrap().revision, 10);
}

#[test]
fn range_limit_more_and_count() {
    let f = range_fixture();
    let r = f.range(range_all(|r| r.limit = 2)).unwrap();
    assert_eq!(keys(&r.kvs), vec!["a", "b"]);
    assert!(r.more);
    assert_eq!(r.count, 5);
    let r = f.range(range_all(|r| r.limit = 5)).unwrap();
    assert_eq!(r.kvs.len(), 5);
    assert!(!r.more);
    let r = f.range(range_all(|r| r.limit = 10)).unwrap();
    assert!(!r.more);
    assert_eq!(r.count, 5);
    let r = f.range(range_all(|r| r.limit = 4)).unwrap();
    assert!(r.more);
    let r = f.range(range_all(|r| r.limit = 0)).unwrap();
    assert_eq!((r.kvs.len(), r.more), (5, false));
}

#[test]
fn range_count_only_and_keys_only() {
    let f = range_fixture();
    let r = f
        .range(range_all(|r| {
            r.count_only = true;
            r.limit = 1;
        }))
        .unwrap();
    assert!(r.kvs.is_empty());
    assert_eq!((r.count, r.more), (5, false));
    let r = f.range(range_all(|r| r.keys_only = true)).unwrap();
    assert_eq!(r.kvs.len(), 5);
    assert!(r
        .kvs
        .iter()
        .all(|kv| kv.value.is_empty() && kv.mod_revision > 0 && kv.version > 0));
}

#[test]
fn range_sort_every_target_and_order() {
    let f = range_fixture();
    let sorted = |target: SortTarget, order: SortOrder| {
        keys(
            &f.range(range_all(|r| {
                r.sort_target = target as i32;
                r.sort_order = order as i32;
            }))
            .unwrap()
            .kvs,
        )
    };
    use SortOrder::*;
    use SortTarget::*;
    assert_eq!(sorted(Key, None), vec!["a", "b", "c", "d", "e"]);
    assert_eq!(sorted(Key, Ascend), vec!["a", "b", "c", "d", "e"]);
    assert_eq!(sorted(Key, Descend), vec!["e", "d", "c", "b", "a"]);
    // versions: a2 b2 c1 d1 e1; ties keep key order
    assert_eq!(sorted(Version, Ascend), vec!["c", "d", "e", "a", "b"]);
    assert_eq!(
        sorted(Version, None),
        vec!["c", "d", "e", "a", "b"],
        "NONE with a non-key target sorts ascending"
    );
    assert_eq!(sorted(Version, Descend), vec!["a", "b", "c", "d", "e"]);
    // create: a2 b3 c4 d6 e8
    assert_eq!(sorted(Create, Ascend), vec!["a", "b", "c", "d", "e"]);
    assert_eq!(sorted(Create, Descend), vec!["e", "d", "c", "b", "a"]);
    // mod: a5 b7 c4 d6 e8
    assert_eq!(sorted(Mod, Ascend), vec!["c", "a", "d", "b", "e"]);
    assert_eq!(sorted(Mod, None), vec!["c", "a", "d", "b", "e"]);
    assert_eq!(sorted(Mod, Descend), vec!["e", "b", "d", "a", "c"]);
    // value: a "x" b "v" c "y" d "w" e "u"
    assert_eq!(sorted(Value, Ascend), vec!["e", "b", "d", "a", "c"]);
    assert_eq!(sorted(Value, Descend), vec!["c", "a", "d", "b", "e"]);
    // sort happens before the limit
    let r = f
        .range(range_all(|r| {
            r.sort_target = Mod as i32;
            r.sort_order = Descend as i32;
            r.limit = 2;
        }))
        .unwrap();
    assert_eq!(keys(&r.kvs), vec!["e", "b"]);
    assert!(r.more);
    assert_eq!(r.count, 5);
}

#[test]
fn range_min_max_filters_apply_after_count() {
    let f = range_fixture();
    let r = f.range(range_all(|r| r.min_mod_revision = 6)).unwrap();
    assert_eq!(keys(&r.kvs), vec!["b", "d", "e"]);
    assert_eq!(r.count, 5, "count is taken before the filters, as etcd");
    let r = f.range(range_all(|r| r.max_mod_revision = 5)).unwrap();
    assert_eq!(keys(&r.kvs), vec!["a", "c"]);
    let r = f.range(range_all(|r| r.min_create_revision = 4)).unwrap();
    assert_eq!(keys(&r.kvs), vec!["c", "d", "e"]);
    let r = f.range(range_all(|r| r.max_create_revision = 3)).unwrap();
    assert_eq!(keys(&r.kvs), vec!["a", "b"]);
    let r = f
        .range(range_all(|r| {
            r.min_create_revision = 3;
            r.max_create_revision = 6;
            r.limit = 2;
        }))
        .unwrap();
    assert_eq!(keys(&r.kvs), vec!["b", "c"]);
    assert!(r.more);
    let r = f
        .range(range_all(|r| {
            r.min_mod_revision = 8;
            r.limit = 1;
        }))
        .unwrap();
    assert_eq!((keys(&r.kvs), r.more), (vec!["e".to_string()], false));
}

#[test]
fn range_at_past_future_and_compacted_revisions() {
    let f = range_fixture();
    let r = f.range(range_all(|r| r.revision = 4)).unwrap();
    assert_eq!(keys(&r.kvs), vec!["a", "b", "c"]);
    assert_eq!(r.kvs[0].value, b"a1");
    assert_eq!(
        r.header.unwrap().revision,
        8,
        "the header carries the current revision"
    );
    assert_eq!(f.range(range_all(|r| r.revision = 1)).unwrap().kvs.len(), 0);
    assert_eq!(
        f.range(range_all(|r| r.revision = 9)),
        Err(MvccError::FutureRev)
    );
    assert_eq!(
        f.range(range_all(|r| r.revision = -1)).unwrap().kvs.len(),
        5
    );
    f.apply(|t| t.compact(5).unwrap());
    assert_eq!(
        f.range(range_all(|r| r.revision = 4)),
        Err(MvccError::Compacted)
    );
    let at5 = f.range(range_all(|r| r.revision = 5)).unwrap();
    assert_eq!(keys(&at5.kvs), vec!["a", "b", "c"]);
    assert_eq!(at5.kvs[1].value, b"zz");
}

// ---------------------------------------------------------------- txn

fn txn_fixture() -> Fixture {
    let f = Fixture::new();
    f.apply(|t| {
        t.put(
            &PutRequest {
                key: b"k".to_vec(),
                value: b"m".to_vec(),
                lease: 9,
                ..Default::default()
            },
            &|_| true,
        )
        .unwrap()
    }); // rev 2
    f.put("k", "m"); // rev 3, version 2, lease 0
    f
}

#[test]
fn txn_compares_every_target_and_result() {
    let f = txn_fixture();
    use CompareResult::*;
    use CompareTarget as T;
    // k: version 2, create 2, mod 3, value "m", lease 0
    let cases: Vec<(CompareTarget, TargetUnion, [bool; 4])> = vec![
        // [EQUAL, GREATER, LESS, NOT_EQUAL]
        (
            T::Version,
            TargetUnion::Version(2),
            [true, false, false, false],
        ),
        (
            T::Version,
            TargetUnion::Version(1),
            [false, true, false, true],
        ),
        (
            T::Version,
            TargetUnion::Version(3),
            [false, false, true, true],
        ),
        (
            T::Create,
            TargetUnion::CreateRevision(2),
            [true, false, false, false],
        ),
        (
            T::Create,
            TargetUnion::CreateRevision(5),
            [false, false, true, true],
        ),
        (
            T::Mod,
            TargetUnion::ModRevision(3),
            [true, false, false, false],
        ),
        (
            T::Mod,
            TargetUnion::ModRevision(2),
            [false, true, false, true],
        ),
        (
            T::Value,
            TargetUnion::Value(b"m".to_vec()),
            [true, false, false, false],
        ),
        (
            T::Value,
            TargetUnion::Value(b"a".to_vec()),
            [false, true, false, true],
        ),
        (
            T::Value,
            TargetUnion::Value(b"z".to_vec()),
            [false, false, true, true],
        ),
        (
            T::Value,
            TargetUnion::Value(b"mm".to_vec()),
            [false, false, true, true],
        ),
        (T::Lease, TargetUnion::Lease(0), [true, false, false, false]),
        (T::Lease, TargetUnion::Lease(9), [false, false, true, true]),
    ];
    for (target, value, want) in cases {
        for (result, want) in [Equal, Greater, Less, NotEqual].into_iter().zip(want) {
            let c = cmp("k", target, result, value.clone());
            let resp = f
                .txn(TxnRequest {
                    compare: vec![c.clone()],
                    success: vec![get_op("k")],
                    failure: vec![],
                })
                .unwrap();
            assert_eq!(resp.succeeded, want, "{c:?}");
        }
    }
    assert_eq!(f.rev(), 3, "compares change nothing");
}

#[test]
fn txn_compare_on_missing_key_and_on_ranges() {
    let f = txn_fixture();
    f.put("k2", "a"); // 4
    f.put("k3", "b"); // 5
    use CompareResult::*;
    use CompareTarget as T;
    let ok = |c: Compare| {
        f.txn(TxnRequest {
            compare: vec![c],
            ..Default::default()
        })
        .unwrap()
        .succeeded
    };
    // a missing key is version 0 / create 0 / mod 0 / lease 0, and fails every value compare
    assert!(ok(cmp("nope", T::Version, Equal, TargetUnion::Version(0))));
    assert!(ok(cmp(
        "nope",
        T::Create,
        Equal,
        TargetUnion::CreateRevision(0)
    )));
    assert!(ok(cmp("nope", T::Mod, Less, TargetUnion::ModRevision(1))));
    assert!(!ok(cmp(
        "nope",
        T::Value,
        Equal,
        TargetUnion::Value(vec![])
    )));
    assert!(!ok(cmp(
        "nope",
        T::Value,
        NotEqual,
        TargetUnion::Value(b"x".to_vec())
    )));
    // every key of the range must pass
    let mut c = cmp("k", T::Mod, Greater, TargetUnion::ModRevision(2));
    c.range_end = b"l".to_vec();
    assert!(ok(c.clone()));
    c.target_union = Some(TargetUnion::ModRevision(3));
    assert!(!ok(c.clone()), "k has mod 3, not > 3");
    c.key = b"k2".to_vec();
    assert!(ok(c.clone()));
    // an empty range compares as a missing key
    let mut c = cmp("x", T::Version, Equal, TargetUnion::Version(0));
    c.range_end = b"y".to_vec();
    assert!(ok(c));
    // all compares must hold
    let both = TxnRequest {
        compare: vec![
            cmp("k", T::Version, Equal, TargetUnion::Version(2)),
            cmp("k2", T::Value, Equal, TargetUnion::Value(b"no".to_vec())),
        ],
        ..Default::default()
    };
    assert!(!f.txn(both).unwrap().succeeded);
}

#[test]
fn txn_runs_the_failure_branch_and_answers_each_op_in_order() {
    let f = txn_fixture();
    let req = TxnRequest {
        compare: vec![cmp(
            "k",
            CompareTarget::Value,
            CompareResult::Equal,
            TargetUnion::Value(b"other".to_vec()),
        )],
        success: vec![put_op("s", "1")],
        failure: vec![
            put_op("f1", "1"),
            get_op("f1"),
            del_op("k"),
            get_op("k"),
            RequestOp { request: None },
        ],
    };
    let resp = f.txn(req).unwrap();
    assert!(!resp.succeeded);
    assert_eq!(resp.header.unwrap().revision, 4);
    assert_eq!(resp.responses.len(), 5);
    let Some(Response::ResponsePut(p)) = &resp.responses[0].response else {
        panic!()
    };
    assert_eq!(p.header.unwrap().revision, 4);
    let Some(Response::ResponseRange(r)) = &resp.responses[1].response else {
        panic!()
    };
    assert_eq!(
        keys(&r.kvs),
        vec!["f1"],
        "ops see earlier ops of the same txn"
    );
    assert_eq!(r.header.unwrap().revision, 4);
    let Some(Response::ResponseDeleteRange(d)) = &resp.responses[2].response else {
        panic!()
    };
    assert_eq!(d.deleted, 1);
    let Some(Response::ResponseRange(r)) = &resp.responses[3].response else {
        panic!()
    };
    assert!(r.kvs.is_empty());
    assert!(resp.responses[4].response.is_none());
    assert!(f.get("s").is_none());
    assert_eq!(f.get("f1").unwrap().mod_revision, 4);
    assert!(f.get("k").is_none());
    // the delete is sub 1 of revision 4
    assert_eq!(f.rev(), 4);
}

#[test]
fn nested_txns_compare_against_the_state_before_the_outer_txn() {
    let f = txn_fixture();
    let inner = TxnRequest {
        // "n" is put by the outer txn before this nested one runs, but compares see the
        // state before the outer txn: n does not exist
        compare: vec![cmp(
            "n",
            CompareTarget::Version,
            CompareResult::Equal,
            TargetUnion::Version(0),
        )],
        success: vec![put_op("inner-success", "1")],
        failure: vec![put_op("inner-failure", "1")],
    };
    let outer = TxnRequest {
        compare: vec![cmp(
            "k",
            CompareTarget::Version,
            CompareResult::Equal,
            TargetUnion::Version(2),
        )],
        success: vec![
            put_op("n", "1"),
            RequestOp {
                request: Some(Request::RequestTxn(inner)),
            },
            get_op("inner-success"),
        ],
        failure: vec![],
    };
    let resp = f.txn(outer).unwrap();
    assert!(resp.succeeded);
    let Some(Response::ResponseTxn(nested)) = &resp.responses[1].response else {
        panic!()
    };
    assert!(nested.succeeded);
    assert_eq!(
        nested.header.unwrap().revision,
        0,
        "nested txn headers are empty, as etcd's"
    );
    let Some(Response::ResponseRange(r)) = &resp.responses[2].response else {
        panic!()
    };
    assert_eq!(keys(&r.kvs), vec!["inner-success"]);
    assert_eq!(f.rev(), 4);
    assert!(f
        .all()
        .iter()
        .filter(|kv| kv.key != b"k")
        .all(|kv| kv.mod_revision == 4));
}

#[test]
fn failing_txn_checks_leave_no_partial_change() {
    let f = txn_fixture();
    let missing = PutRequest {
        key: b"missing".to_vec(),
        ignore_value: true,
        ..Default::default()
    };
    let req = TxnRequest {
        success: vec![
            put_op("a", "1"),
            RequestOp {
                request: Some(Request::RequestPut(missing)),
            },
        ],
        ..Default::default()
    };
    assert_eq!(f.txn(req), Err(MvccError::KeyNotFound));
    let lease = PutRequest {
        key: b"b".to_vec(),
        lease: 42,
        ..Default::default()
    };
    let nested = TxnRequest {
        success: vec![RequestOp {
            request: Some(Request::RequestPut(lease)),
        }],
        ..Default::default()
    };
    let req = TxnRequest {
        success: vec![
            put_op("a", "1"),
            RequestOp {
                request: Some(Request::RequestTxn(nested)),
            },
        ],
        ..Default::default()
    };
    assert_eq!(f.txn(req), Err(MvccError::LeaseNotFound));
    let future = RangeRequest {
        key: b"k".to_vec(),
        revision: 99,
        ..Default::default()
    };
    let req = TxnRequest {
        success: vec![
            del_op("k"),
            RequestOp {
                request: Some(Request::RequestRange(future)),
            },
        ],
        ..Default::default()
    };
    assert_eq!(f.txn(req), Err(MvccError::FutureRev));
    // an unchosen branch is not checked
    let missing = PutRequest {
        key: b"missing".to_vec(),
        ignore_lease: true,
        ..Default::default()
    };
    let req = TxnRequest {
        compare: vec![cmp(
            "k",
            CompareTarget::Version,
            CompareResult::Equal,
            TargetUnion::Version(2),
        )],
        success: vec![put_op("ok", "1")],
        failure: vec![RequestOp {
            request: Some(Request::RequestPut(missing)),
        }],
    };
    assert!(f.txn(req).unwrap().succeeded);
    assert_eq!(f.rev(), 4);
    assert_eq!(keys(&f.all()), vec!["k", "ok"]);
    assert_eq!(f.get("k").unwrap().mod_revision, 3);
}

#[test]
fn failed_request_in_a_batch_keeps_the_batch_s_other_changes() {
    let f = Fixture::new();
    let ((a, b, c), events) = f.apply(|t| {
        let a = t
            .put(&put_req("a", "1"), &no_lease)
            .map(|r| r.header.unwrap().revision);
        let bad = TxnRequest {
            success: vec![
                put_op("x", "1"),
                RequestOp {
                    request: Some(Request::RequestPut(PutRequest {
                        key: b"y".to_vec(),
                        ignore_value: true,
                        ..Default::default()
                    })),
                },
            ],
            ..Default::default()
        };
        let b = t.txn(&bad, &no_lease).map(|_| ());
        let c = t
            .put(&put_req("c", "1"), &no_lease)
            .map(|r| r.header.unwrap().revision);
        (a, b, c)
    });
    assert_eq!((a, b, c), (Ok(2), Err(MvccError::KeyNotFound), Ok(3)));
    assert_eq!(keys(&f.all()), vec!["a", "c"]);
    assert_eq!(events.len(), 2);
}

#[test]
fn txn_range_below_compaction_is_refused_before_any_write() {
    let f = txn_fixture();
    f.put("k", "again"); // 4
    f.apply(|t| t.compact(4).unwrap());
    let old = RangeRequest {
        key: b"k".to_vec(),
        revision: 3,
        ..Default::default()
    };
    let req = TxnRequest {
        success: vec![
            put_op("z", "1"),
            RequestOp {
                request: Some(Request::RequestRange(old)),
            },
        ],
        ..Default::default()
    };
    assert_eq!(f.txn(req), Err(MvccError::Compacted));
    assert!(f.get("z").is_none());
    let at = RangeRequest {
        key: b"k".to_vec(),
        revision: 4,
        ..Default::default()
    };
    let req = TxnRequest {
        success: vec![RequestOp {
            request: Some(Request::RequestRange(at)),
        }],
        ..Default::default()
    };
    assert!(f.txn(req).is_ok());
}

// ---------------------------------------------------------------- compaction

#[test]
fn compaction_keeps_latest_revisions_and_drops_deleted_keys() {
    let f = Fixture::new();
    f.put("a", "1"); // 2
    f.put("a", "2"); // 3
    f.put("b", "1"); // 4
    f.del("b", ""); // 5
    f.put("c", "1"); // 6
    f.put("a", "3"); // 7
    assert_eq!(f.key_table_rows(), 6);
    f.apply(|t| t.compact(6).unwrap());
    assert_eq!(f.store.compact_revision(), 6);
    // kept: a@3, c@6, a@7; gone: a@2, b@4, b@5 (tombstone)
    assert_eq!(f.key_table_rows(), 3);
    assert_eq!(
        f.range(range_all(|r| r.revision = 5)),
        Err(MvccError::Compacted)
    );
    let at6 = f.range(range_all(|r| r.revision = 6)).unwrap();
    assert_eq!(keys(&at6.kvs), vec!["a", "c"]);
    assert_eq!(at6.kvs[0].value, b"2");
    assert_eq!(at6.kvs[0].version, 2);
    let now = f.all();
    assert_eq!((now[0].version, now[0].create_revision), (3, 2));
    let meta = |name| f.store.backend().read_meta(name).unwrap();
    assert_eq!(meta(crate::backend::META_SCHEDULED_COMPACT), 6);
    assert_eq!(meta(crate::backend::META_FINISHED_COMPACT), 6);
}

#[test]
fn compaction_revision_errors() {
    let f = range_fixture();
    let err = |rev| {
        let mut t = f.store.begin_apply().unwrap();
        t.compact(rev).err()
    };
    assert_eq!(err(9), Some(MvccError::FutureRev));
    assert_eq!(err(8), None);
    // etcd: never compacted sits below 0, so compacting to 0 first succeeds (and changes nothing)
    assert_eq!(err(0), None);
    f.apply(|t| t.compact(5).unwrap());
    assert_eq!(err(0), Some(MvccError::Compacted));
    assert_eq!(err(5), Some(MvccError::Compacted));
    assert_eq!(err(4), Some(MvccError::Compacted));
    assert_eq!(err(6), None);
    // a compaction in the batch applies to the batch's later reads
    let mut t = f.store.begin_apply().unwrap();
    t.compact(7).unwrap();
    assert_eq!(
        t.range(&range_all(|r| r.revision = 6)),
        Err(MvccError::Compacted)
    );
    assert_eq!(t.compact(7), Err(MvccError::Compacted));
    drop(t);
    assert_eq!(
        f.store.compact_revision(),
        5,
        "an uncommitted compaction is forgotten"
    );
}

#[test]
fn compaction_of_the_whole_history_keeps_the_current_revision_after_reopen() {
    let mut f = Fixture::new();
    f.put("a", "1");
    f.del("a", "");
    f.apply(|t| t.compact(3).unwrap());
    assert_eq!(f.key_table_rows(), 1, "only the tombstone at the compact revision is left");
    f.reopen();
    assert_eq!(f.rev(), 3);
    assert_eq!(f.store.compact_revision(), 3);
    assert_eq!(f.put("b", "1"), 4);
}

#[test]
fn interrupted_compaction_resumes_on_open() {
    let mut f = Fixture::new();
    for i in 0..20 {
        f.put(&format!("k{}", i % 4), &i.to_string());
    }
    let before = f.all();
    let rows = f.key_table_rows();
    f.store
        .skip_physical_compaction
        .store(true, Ordering::Relaxed);
    f.apply(|t| t.compact(15).unwrap());
    // "crash" between scheduled and finished: rows still there, nothing finished
    assert_eq!(f.key_table_rows(), rows);
    assert_eq!(
        f.store
            .backend()
            .read_meta(crate::backend::META_FINISHED_COMPACT)
            .unwrap(),
        0
    );
    let hash_unfinished = f.store.hash_kv(0).unwrap();
    f.reopen();
    assert_eq!(f.store.compact_revision(), 15);
    assert_eq!(
        f.store
            .backend()
            .read_meta(crate::backend::META_FINISHED_COMPACT)
            .unwrap(),
        15
    );
    // keys k0..k3 each keep their latest revision <= 15, plus the 6 later revisions
    assert_eq!(f.key_table_rows(), 4 + 6);
    assert_eq!(f.all(), before);
    assert_eq!(
        f.range(range_all(|r| r.revision = 14)),
        Err(MvccError::Compacted)
    );
    assert_eq!(
        f.store.hash_kv(0).unwrap(),
        hash_unfinished,
        "hash does not depend on physical compaction progress"
    );
}

#[test]
fn compaction_deletes_in_batches() {
    let f = Fixture::new();
    let n = crate::kv_store::COMPACTION_BATCH + 50;
    let mut t = f.store.begin_apply().unwrap();
    for i in 0..n {
        t.put(&put_req("same", &i.to_string()), &no_lease).unwrap();
    }
    t.commit(false).unwrap();
    f.apply(|t| t.compact(n as i64 + 1).unwrap());
    assert_eq!(f.key_table_rows(), 1);
    assert_eq!(f.get("same").unwrap().version, n as i64);
}

// ---------------------------------------------------------------- reopen, durability, hashes

#[test]
fn reopen_rebuilds_an_identical_index_and_keeps_the_consistent_index() {
    let mut f = range_fixture();
    f.del("c", "");
    f.apply(|t| t.compact(6).unwrap());
    f.put("a", "later");
    let mut t = f.store.begin_apply().unwrap();
    t.put(&put_req("z", "1"), &no_lease).unwrap();
    t.set_consistent_index(42, 7);
    t.commit(false).unwrap();
    assert_eq!(f.store.consistent_index(), (42, 7));
    let requests: Vec<RangeRequest> = (6..=f.rev())
        .flat_map(|rev| {
            [
                RangeRequest {
                    key: vec![0],
                    range_end: vec![0],
                    revision: rev,
                    ..Default::default()
                },
                RangeRequest {
                    key: b"b".to_vec(),
                    range_end: b"e".to_vec(),
                    revision: rev,
                    sort_target: SortTarget::Version as i32,
                    ..Default::default()
                },
            ]
        })
        .collect();
    let before: Vec<_> = requests.iter().map(|r| f.range(r.clone())).collect();
    let (rev, hash) = (f.rev(), f.store.hash_kv(0).unwrap());
    f.reopen();
    assert_eq!(f.rev(), rev);
    assert_eq!(f.store.consistent_index(), (42, 7));
    assert_eq!(f.store.compact_revision(), 6);
    let after: Vec<_> = requests.iter().map(|r| f.range(r.clone())).collect();
    assert_eq!(before, after);
    assert_eq!(f.store.hash_kv(0).unwrap(), hash);
    // versions continue from the restored state
    f.put("a", "more");
    assert_eq!(f.get("a").unwrap().version, 4);
    assert_eq!(f.get("a").unwrap().create_revision, 2);
}

#[test]
fn consistent_index_is_stored_only_with_a_commit() {
    let mut f = Fixture::new();
    {
        let mut t = f.store.begin_apply().unwrap();
        t.put(&put_req("a", "1"), &no_lease).unwrap();
        t.set_consistent_index(5, 1);
    }
    assert_eq!(f.store.consistent_index(), (0, 0));
    let mut t = f.store.begin_apply().unwrap();
    t.set_consistent_index(6, 2);
    t.commit(true).unwrap();
    f.store.sync().unwrap();
    f.reopen();
    assert_eq!(f.store.consistent_index(), (6, 2));
    assert!(f.all().is_empty());
}

#[test]
fn batches_carried_uncommitted_are_read_from_memory_and_survive_a_dropped_batch() {
    const LEASES: redb::TableDefinition<u64, u64> = redb::TableDefinition::new("lease");
    let f = Fixture::new();
    f.put("a", "1");
    f.put("b", "1");
    // not committed to the backend yet, yet readers see both
    let committed = f.store.backend().database().begin_read().unwrap();
    assert!(committed.open_table(KEY_TABLE).map_or(true, |t| t.len().unwrap() == 0));
    drop(committed);
    assert_eq!(f.all().len(), 2);
    assert_eq!(f.store.watch_events(1, 3, |_| (true, true), 100, 1 << 20).unwrap().0.len(), 2);
    // a dropped KV batch goes; the carried ones stay
    {
        let mut t = f.store.begin_apply().unwrap();
        t.put(&put_req("c", "1"), &no_lease).unwrap();
        t.range(&RangeRequest { key: b"c".to_vec(), ..Default::default() }).unwrap();
    }
    assert_eq!(f.put("d", "1"), 4);
    assert_eq!(f.all().iter().map(|kv| kv.key.clone()).collect::<Vec<_>>(), [b"a".to_vec(), b"b".to_vec(), b"d".to_vec()]);
    f.store.sync().unwrap();
    assert_eq!(f.key_table_rows(), 3);
    // a dropped batch in which another store wrote cannot be taken back: the carried batches
    // are lost with it, and the store takes no more batches
    f.put("e", "1");
    {
        let t = f.store.begin_apply().unwrap();
        t.write_txn().open_table(LEASES).unwrap().insert(1, 60).unwrap();
    }
    assert!(matches!(f.store.begin_apply().err(), Some(MvccError::Backend(_))));
}

#[test]
fn other_stores_write_their_tables_in_the_same_commit() {
    const LEASES: redb::TableDefinition<u64, u64> = redb::TableDefinition::new("lease");
    let mut f = Fixture::new();
    let mut t = f.store.begin_apply().unwrap();
    t.put(&put_req("a", "1"), &no_lease).unwrap();
    t.write_txn()
        .open_table(LEASES)
        .unwrap()
        .insert(1, 60)
        .unwrap();
    t.commit(true).unwrap();
    {
        let t = f.store.begin_apply().unwrap();
        t.write_txn()
            .open_table(LEASES)
            .unwrap()
            .insert(2, 60)
            .unwrap();
        // dropped
    }
    f.reopen();
    let txn = f.store.backend().database().begin_read().unwrap();
    let leases = txn.open_table(LEASES).unwrap();
    assert_eq!(
        redb::ReadableTable::get(&leases, 1)
            .unwrap()
            .unwrap()
            .value(),
        60
    );
    assert!(redb::ReadableTable::get(&leases, 2).unwrap().is_none());
}

#[test]
fn reads_hashes_and_watch_events_agree_whether_batches_are_committed_or_pending() {
    let feed = |f: &Fixture, commit_each: bool| {
        for i in 0..40 {
            f.put(&format!("key{}", i % 7), &format!("v{i}"));
            if i % 5 == 0 {
                f.del(&format!("key{}", i % 3), "");
            }
            // one store commits some batches to the backend, the other keeps all of them pending
            if commit_each && i % 3 == 0 {
                f.store.sync().unwrap();
            }
        }
    };
    let (a, b) = (Fixture::new(), Fixture::new());
    feed(&a, true);
    feed(&b, false);
    assert_eq!(a.rev(), b.rev());
    for rev in [0, 5, 17, a.rev()] {
        assert_eq!(a.store.hash_kv(rev).unwrap(), b.store.hash_kv(rev).unwrap(), "hash_kv at {rev}");
        let all = RangeRequest { key: vec![0], range_end: vec![0], revision: rev, ..Default::default() };
        assert_eq!(a.range(all.clone()), b.range(all), "range at {rev}");
    }
    assert_eq!(a.store.hash().unwrap(), b.store.hash().unwrap());
    let events = |f: &Fixture, from, to| f.store.watch_events(from, to, |_| (true, true), 1000, 1 << 20).unwrap();
    for (from, to) in [(1, a.rev()), (3, 9), (10, 30), (20, a.rev())] {
        assert_eq!(events(&a, from, to), events(&b, from, to), "events {from}..={to}");
    }
    // the batched store's rows all reach the backend at its next sync
    b.store.sync().unwrap();
    assert_eq!(a.key_table_rows(), b.key_table_rows());
}

#[test]
fn hash_kv_is_equal_for_stores_fed_the_same_ops() {
    let feed = |f: &Fixture| {
        for i in 0..30 {
            f.put(&format!("key{}", i % 7), &format!("v{i}"));
            if i % 5 == 0 {
                f.del(&format!("key{}", i % 3), "");
            }
        }
        f.txn(TxnRequest {
            success: vec![put_op("t1", "1"), del_op("key1")],
            ..Default::default()
        })
        .unwrap();
    };
    let a = Fixture::new();
    let b = Fixture::new();
    feed(&a);
    feed(&b);
    assert_eq!(a.rev(), b.rev());
    assert_eq!(a.store.hash_kv(0).unwrap(), b.store.hash_kv(0).unwrap());
    assert_eq!(a.store.hash().unwrap(), b.store.hash().unwrap());
    for rev in [2, 10, 20] {
        assert_eq!(a.store.hash_kv(rev).unwrap(), b.store.hash_kv(rev).unwrap());
    }
    // hashes depend on the data
    b.put("extra", "1");
    assert_ne!(a.store.hash_kv(0).unwrap().0, b.store.hash_kv(0).unwrap().0);
    assert_eq!(
        a.store.hash_kv(10).unwrap(),
        b.store.hash_kv(10).unwrap(),
        "older revisions still agree"
    );
    // one compacted, the other physically not yet: hashes at and after the compaction agree
    a.put("extra", "1");
    b.store
        .skip_physical_compaction
        .store(true, Ordering::Relaxed);
    a.apply(|t| t.compact(20).unwrap());
    b.apply(|t| t.compact(20).unwrap());
    assert!(a.key_table_rows() < b.key_table_rows());
    assert_eq!(a.store.hash_kv(0).unwrap(), b.store.hash_kv(0).unwrap());
    let (_, compact, rev) = a.store.hash_kv(25).unwrap();
    assert_eq!(b.store.hash_kv(25).unwrap(), a.store.hash_kv(25).unwrap());
    assert_eq!((compact, rev), (20, 25));
    assert_eq!(a.store.hash_kv(20), Err(MvccError::Compacted));
    assert_eq!(a.store.hash_kv(a.rev() + 1), Err(MvccError::FutureRev));
}

#[test]
fn hash_kv_matches_etcd_3_4() {
    // values read from etcd 3.4.23 (`etcdctl endpoint hashkv`) after the same requests
    let f = Fixture::new();
    assert_eq!(f.store.hash_kv(0).unwrap(), (1084519789, -1, 1));
    let f = range_fixture();
    assert_eq!(f.store.hash_kv(0).unwrap(), (1030339150, -1, 8));
    assert_eq!(f.store.hash_kv(5).unwrap(), (2886510297, -1, 5));
    let req = TxnRequest {
        success: vec![put_op("n", "1"), del_op("zz"), get_op("n")],
        ..Default::default()
    };
    let resp = f.txn(req).unwrap();
    let Some(Response::ResponseDeleteRange(d)) = &resp.responses[1].response else {
        panic!()
    };
    assert_eq!(d.header.unwrap().revision, 9);
    f.apply(|t| t.compact(5).unwrap());
    assert_eq!(f.store.hash_kv(0).unwrap(), (992607186, 5, 9));
    assert_eq!(f.store.hash_kv(6).unwrap(), (1893615920, 5, 6));
    assert_eq!(f.store.hash_kv(5), Err(MvccError::Compacted));
}

#[test]
fn a_compaction_stores_the_hash_kv_its_revision_had_before_it() {
    // etcd 3.5.6+: the hash taken in the compaction's scan is HashKV(rev) as it was just
    // before the compaction (from the previous compact revision), whatever the step size
    let f = range_fixture();
    let before = f.store.hash_kv(5).unwrap();
    f.apply(|t| t.compact(5).unwrap());
    let stored = KeyValueHash { hash: before.0, compact_revision: -1, revision: 5 };
    assert_eq!(f.store.compaction_hashes(), [stored]);
    assert_eq!(f.store.hash_by_rev(5).unwrap(), stored, "a compacted revision answers with its stored hash");
    for i in 0..6 {
        f.put(&format!("k{}", i % 2), &format!("{i}"));
    }
    let before = f.store.hash_kv(12).unwrap();
    assert_eq!(before.1, 5);
    // one row per step: the hash is carried across the steps
    let mut t = f.store.begin_apply().unwrap();
    t.compact(12).unwrap();
    t.commit(false).unwrap();
    while f.store.compaction_step(1).unwrap() != CompactionStep::Idle {}
    let second = KeyValueHash { hash: before.0, compact_revision: 5, revision: 12 };
    assert_eq!(f.store.compaction_hashes(), [stored, second]);
    // a revision without a stored hash is hashed now
    assert_eq!(f.store.hash_by_rev(0).unwrap().compact_revision, 12);
    assert_eq!(f.store.hash_by_rev(11), Err(MvccError::Compacted));
}

#[test]
fn a_compaction_resumed_after_a_crash_stores_no_hash() {
    let mut f = range_fixture();
    f.store.skip_physical_compaction.store(true, Ordering::Relaxed);
    f.apply(|t| t.compact(5).unwrap());
    f.reopen();
    assert!(f.store.compaction_hashes().is_empty());
    f.apply(|t| t.compact(6).unwrap());
    assert_eq!(f.store.compaction_hashes().len(), 1);
}

#[test]
fn txn_negative_range_revision_reads_current_until_the_first_compaction() {
    // etcd 3.4: a never-compacted store has compact revision -1, so revision -1 passes the
    // txn check; after a compaction it is refused as compacted
    let f = range_fixture();
    let neg = || TxnRequest {
        success: vec![RequestOp {
            request: Some(Request::RequestRange(RangeRequest {
                key: b"a".to_vec(),
                revision: -1,
                ..Default::default()
            })),
        }],
        ..Default::default()
    };
    let resp = f.txn(neg()).unwrap();
    let Some(Response::ResponseRange(r)) = &resp.responses[0].response else {
        panic!()
    };
    assert_eq!(r.kvs[0].value, b"x");
    f.apply(|t| t.compact(5).unwrap());
    assert_eq!(f.txn(neg()), Err(MvccError::Compacted));
}

#[test]
fn readers_never_see_part_of_a_batch() {
    let f = Fixture::new();
    let store = &f.store;
    std::thread::scope(|s| {
        let writer = s.spawn(|| {
            for i in 0..200 {
                let mut t = store.begin_apply().unwrap();
                let v = i.to_string();
                t.put(&put_req("a", &v), &no_lease).unwrap();
                t.put(&put_req("b", &v), &no_lease).unwrap();
                t.commit(false).unwrap();
            }
        });
        let mut reads = 0;
        while !writer.is_finished() || reads == 0 {
            let r = store
                .range(&RangeRequest {
                    key: b"a".to_vec(),
                    range_end: b"c".to_vec(),
                    ..Default::default()
                })
                .unwrap();
            let rev = r.header.unwrap().revision;
            match r.kvs.as_slice() {
                [] => assert_eq!(rev, 1),
                [a, b] => {
                    assert_eq!(a.value, b.value, "a batch is seen whole");
                    assert_eq!(b.mod_revision, rev);
                }
                other => panic!("partial batch: {other:?}"),
            }
            reads += 1;
        }
    });
    assert_eq!(f.rev(), 401);
}

// ---------------------------------------------------------------- size figures

const PAGE: i64 = 4096;

impl Fixture {
    /// (size, in use) once everything applied is committed and the tables walked.
    fn measured_size(&self) -> (i64, i64) {
        self.store.sync().unwrap();
        self.store.measure_db_size().unwrap();
        self.store.db_size()
    }

    fn put_revisions(&self, key: &str, value: &str, n: usize) {
        for _ in 0..n {
            self.put(key, value);
        }
    }
}

#[test]
fn db_size_follows_the_tables_not_the_preallocated_file() {
    let f = Fixture::new();
    f.store.sync().unwrap();
    let file = std::fs::metadata(Path::new(&f.path)).unwrap().len() as i64;
    let (size, in_use) = f.store.db_size();
    // redb preallocates 1 MiB; its header is a page, empty tables hold none, the meta table one
    assert!(file >= 1 << 20, "file {file}");
    assert!((PAGE..=2 * PAGE).contains(&in_use), "empty store uses {in_use} bytes");
    assert_eq!(size, in_use);

    // a 4 KiB value needs more than a page: each revision of it grows the tables by 8 KiB
    f.put_revisions("2nd_test", &"b".repeat(4096), 12);
    let (size, grown) = f.measured_size();
    assert!(grown - in_use >= 12 * 4096 && grown - in_use <= 12 * 3 * PAGE, "{in_use} -> {grown}");
    assert_eq!(size, grown);
}

#[test]
fn committed_rows_count_before_the_next_walk() {
    let f = Fixture::new();
    let (_, before) = f.measured_size();
    f.put("k", &"v".repeat(10_000));
    // applied, not committed: the figures are those of the last commit (as etcd's)
    assert_eq!(f.store.db_size().1, before);
    assert!(f.store.uncommitted_bytes() >= 10_000);
    f.store.sync().unwrap();
    let (size, in_use) = f.store.db_size();
    assert!(in_use >= before + 10_000, "{before} -> {in_use} without a walk");
    assert_eq!(f.store.uncommitted_bytes(), 0);
    assert!(size >= in_use);
}

#[test]
fn the_measurer_thread_walks_the_tables_after_commits() {
    let f = Fixture::new();
    f.put_revisions("k", &"x".repeat(4096), 5);
    f.store.sync().unwrap();
    // the rows' bytes count at once; the 8 KiB leaf each takes only once the measurer walked
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while f.store.db_size().1 < 5 * 2 * PAGE {
        assert!(std::time::Instant::now() < deadline, "never walked: {:?}", f.store.db_size());
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

#[test]
fn compaction_lowers_in_use_and_only_defragment_lowers_size() {
    let f = Fixture::new();
    let value = "x".repeat(4096);
    f.put_revisions("k", &value, 50);
    let (full, full_in_use) = f.measured_size();
    assert_eq!(full, full_in_use);
    assert!(full >= 50 * 4096);

    let rev = f.rev();
    f.apply(|t| t.compact(rev).unwrap());
    let (size, in_use) = f.measured_size();
    // as bbolt's: freed pages leave the high-water mark where it was
    assert_eq!(size, full);
    assert!(in_use < full / 4, "in use {full} -> {in_use} after compaction");

    f.store.defragment(std::time::Duration::from_secs(5)).unwrap();
    let (size, after) = f.store.db_size();
    assert_eq!(size, after);
    assert!(size < full / 4, "size {full} -> {size} after defragment");
    assert_eq!(f.get("k").unwrap().value, value.as_bytes());

    // a reopened store starts from what is in use
    let mut f = f;
    f.reopen();
    assert_eq!(f.store.db_size(), (after, after));
}

#[test]
fn revisions_since_for_watch_catch_up() {
    let f = range_fixture();
    let revs: Vec<i64> = f
        .store
        .revisions_since(b"a", b"c", 3)
        .into_iter()
        .map(|r| r.main)
        .collect();
    assert_eq!(revs, vec![3, 5, 7]);
}

#[test]
fn store_is_shareable_and_a_batch_can_move_between_threads() {
    fn shareable<T: Send + Sync>() {}
    fn movable<T: Send>() {}
    shareable::<KvStore>();
    movable::<ApplyTxn<'static>>();
}

// ---------------------------------------------------------------- defragment

#[test]
fn defragment_shrinks_the_file_and_keeps_every_row() {
    let f = Fixture::new();
    let big = "x".repeat(4096);
    for i in 0..2000 {
        f.put(&format!("k{i:04}"), &big);
    }
    f.del("k0000", "k1990");
    let rev = f.rev();
    f.apply(|t| t.compact(rev).unwrap());
    f.store.sync().unwrap();
    let before_rows = f.all();
    let hash = f.store.hash_kv(0).unwrap();
    let (size_before, _) = f.store.db_size();

    // a reader open at the start only delays it
    let reader = f.store.backend().begin_read().unwrap();
    let store = &f.store;
    std::thread::scope(|s| {
        let h = s.spawn(|| store.defragment(std::time::Duration::from_secs(5)));
        std::thread::sleep(std::time::Duration::from_millis(20));
        drop(reader);
        h.join().unwrap().unwrap();
    });
    let (size_after, in_use) = f.store.db_size();
    assert!(size_after < size_before / 2, "file {size_before} -> {size_after} bytes");
    assert!(in_use <= size_after);
    assert_eq!(f.all(), before_rows);
    assert_eq!(f.store.hash_kv(0).unwrap(), hash);
    // writes go on afterwards
    f.put("after", "1");
    assert_eq!(f.get("after").unwrap().mod_revision, rev + 1);
}

#[test]
fn defragment_gives_up_while_a_reader_stays() {
    let f = Fixture::new();
    f.put("a", "1");
    let _reader = f.store.backend().begin_read().unwrap();
    let e = f.store.defragment(std::time::Duration::from_millis(50)).unwrap_err();
    assert!(e.to_string().contains("busy"), "{e}");
    f.put("b", "2"); // the writer gate was released
}

#[test]
fn physical_compaction_runs_in_bounded_steps_and_a_newer_one_supersedes() {
    let f = Fixture::new();
    for i in 0..50 {
        f.put("k", &format!("v{i}"));
    }
    let rev = f.rev();
    // compact without the fixture's finishing, as the applier does
    let mut t = f.store.begin_apply().unwrap();
    t.compact(rev - 20).unwrap();
    t.commit(false).unwrap();
    assert!(f.store.compaction_pending());
    // reads below the compaction fail at once, before any row is gone
    let old = RangeRequest { key: b"k".to_vec(), revision: rev - 30, ..Default::default() };
    assert!(matches!(f.range(old), Err(MvccError::Compacted)));
    assert_eq!(f.key_table_rows(), 50);
    assert_eq!(f.store.compaction_step(10).unwrap(), CompactionStep::More);
    assert_eq!(f.key_table_rows(), 40);

    // a newer compaction before the first finished replaces it
    let mut t = f.store.begin_apply().unwrap();
    t.compact(rev - 5).unwrap();
    t.commit(false).unwrap();
    let mut steps = 0;
    loop {
        steps += 1;
        match f.store.compaction_step(10).unwrap() {
            CompactionStep::More => continue,
            CompactionStep::Finished(r) => {
                assert_eq!(r, rev - 5);
                break;
            }
            CompactionStep::Idle => panic!("the job vanished"),
        }
    }
    assert!(steps >= 4, "{steps} steps for 45 rows of 10");
    assert_eq!(f.key_table_rows(), 6);
    assert_eq!(f.store.compaction_step(10).unwrap(), CompactionStep::Idle);
    assert_eq!(f.get("k").unwrap().value, b"v49");
}

/// The applier skips reading a put's previous value when no watcher asks for prev_kv; a
/// prev_kv watcher that arrives before the batch reaches the hub still gets it, read by the hub.
#[test]
fn put_events_applied_without_prev_kv_get_it_from_the_hub() {
    use crate::watch_hub::{WatchCreate, WatchHub, WatchHubOptions};
    use crate::watch_queue::WatchMessage;
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(KvStore::open(&dir.path().join("db")).unwrap());
    let mut t = store.begin_apply().unwrap();
    t.put(&put_req("a", "1"), &no_lease).unwrap();
    t.commit(false).unwrap();

    let hub = WatchHub::new(store.clone(), WatchHubOptions::default());
    assert!(!hub.wants_prev_kv());
    let mut t = store.begin_apply().unwrap();
    t.read_prev_kv(hub.wants_prev_kv());
    t.put(&put_req("a", "2"), &no_lease).unwrap();
    t.put(&put_req("b", "1"), &no_lease).unwrap();
    assert!(!t.prev_kv_complete());
    assert!(t.pending_events().iter().all(|e| e.prev_kv.is_none()));
    let events = t.commit(false).unwrap();

    // the watcher comes in after the batch was applied, before the hub is told of it
    let stream = hub.open_stream();
    stream.watch(WatchCreate {
        key: b"a".to_vec(),
        range_end: b"\0".to_vec(),
        prev_kv: true,
        start_revision: 3,
        ..Default::default()
    });
    assert!(hub.wants_prev_kv());
    hub.notify(events, false);

    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let mut got = Vec::new();
    while stream.queued() > 0 {
        if let Some(WatchMessage::Events { events, .. }) = rt.block_on(stream.recv()) {
            got.extend(events);
        }
    }
    assert_eq!(got.len(), 2);
    let prev = got[0].prev_kv.as_ref().expect("prev_kv of the overwrite");
    assert_eq!((prev.value.as_slice(), prev.mod_revision), (&b"1"[..], 2));
    assert_eq!(got[1].prev_kv, None, "b was created");

    // with a prev_kv watcher the applier reads it itself
    let mut t = store.begin_apply().unwrap();
    t.read_prev_kv(hub.wants_prev_kv());
    t.put(&put_req("b", "2"), &no_lease).unwrap();
    assert!(t.prev_kv_complete());
    assert_eq!(t.pending_events()[0].prev_kv.as_ref().unwrap().value, b"1");
    t.commit(false).unwrap();
    drop(stream); // cancels its watchers
    assert!(!hub.wants_prev_kv());
}

#[test]
fn a_read_only_txn_read_outside_the_applier_answers_as_applied() {
    // revisions 2..8: a a1, b zz, c y, a x, d w, b v, e u
    let f = range_fixture();
    let ranges = |ops: &[(&str, i64)]| -> Vec<RequestOp> {
        ops.iter()
            .map(|(k, rev)| RequestOp {
                request: Some(Request::RequestRange(RangeRequest {
                    key: k.as_bytes().to_vec(),
                    revision: *rev,
                    ..Default::default()
                })),
            })
            .collect()
    };
    let value_is = |k: &str, v: &str| Compare {
        key: k.as_bytes().to_vec(),
        target: CompareTarget::Value as i32,
        result: CompareResult::Equal as i32,
        target_union: Some(TargetUnion::Value(v.as_bytes().to_vec())),
        ..Default::default()
    };
    let txns = || {
        vec![
            TxnRequest { compare: vec![value_is("a", "x")], success: ranges(&[("a", 0), ("a", 2)]), failure: ranges(&[("b", 0)]) },
            TxnRequest { compare: vec![value_is("a", "a1")], success: ranges(&[("a", 0)]), failure: ranges(&[("b", 0), ("b", 3)]) },
            TxnRequest { success: ranges(&[("a", -1)]), ..Default::default() },
            TxnRequest { success: ranges(&[("a", 99)]), ..Default::default() },
            TxnRequest { compare: vec![value_is("a", "?")], success: vec![], failure: ranges(&[("c", 3)]) },
        ]
    };
    let compare_both = |f: &Fixture| {
        for req in txns() {
            let read = f.store.read_only_txn(&req);
            assert_eq!(read, f.txn(req.clone()), "{req:?}");
        }
    };
    compare_both(&f);
    assert_eq!(f.store.read_only_txn(&txns()[0]).unwrap().header.unwrap().revision, 8);
    f.apply(|t| t.compact(3).unwrap());
    // now -1 and 2 are compacted, 3 is still readable
    compare_both(&f);
    assert_eq!(f.store.read_only_txn(&txns()[2]), Err(MvccError::Compacted));
    // a write is refused, never applied
    let put = TxnRequest {
        success: vec![RequestOp { request: Some(Request::RequestPut(PutRequest { key: b"z".to_vec(), ..Default::default() })) }],
        ..Default::default()
    };
    assert_eq!(f.store.read_only_txn(&put), Err(MvccError::NotReadOnly));
    assert_eq!(f.store.current_revision(), 8);
    assert!(f.get("z").is_none());
}
