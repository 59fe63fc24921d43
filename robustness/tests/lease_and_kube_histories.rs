//! Hand-made histories with leases, lists at a revision, compaction and prev_kv watches: each bad
//! one is rejected by the check that owns its rule, and its valid counterpart is accepted.

use etcd_robustness::history::{
    Compare, Event, EventKind, History, KeyValue, Nanos, Operation, Outcome, Request, Response,
    TxnWrite, ValueAt, WatchResponse, WatchStream,
};
use etcd_robustness::linearizability::{check_operations, CheckOptions, Verdict};
use etcd_robustness::model::{COMPACTED, LEASE_NOT_FOUND};
use etcd_robustness::report::check_history;
use etcd_robustness::watch_checks::{check_watches, WatchViolationKind};

const SEC: Nanos = 1_000_000_000;

fn op(client: u32, call: Nanos, request: Request, outcome: Outcome) -> Operation {
    Operation {
        client,
        call,
        ret: call + 1_000_000,
        request,
        outcome,
    }
}
fn grant(call: Nanos, id: i64, ttl: i64, revision: i64) -> Operation {
    let answer = Response::LeaseGrant { revision, id, ttl };
    op(
        1,
        call,
        Request::LeaseGrant { id, ttl },
        Outcome::Ok(answer),
    )
}
fn leased_put(call: Nanos, key: &str, value: &str, lease: i64, revision: i64) -> Operation {
    let request = Request::PutWithLease {
        key: key.into(),
        value: value.into(),
        lease,
    };
    op(1, call, request, Outcome::Ok(Response::Put { revision }))
}
fn put(call: Nanos, key: &str, value: &str, revision: i64) -> Operation {
    let request = Request::Put {
        key: key.into(),
        value: value.into(),
    };
    op(1, call, request, Outcome::Ok(Response::Put { revision }))
}
fn get(call: Nanos, key: &str, revision: i64, kv: Option<(&str, i64)>) -> Operation {
    let kv = kv.map(|(value, mod_revision)| ValueAt {
        value: value.into(),
        mod_revision,
    });
    let request = Request::Get { key: key.into() };
    op(
        2,
        call,
        request,
        Outcome::Ok(Response::Get { revision, kv }),
    )
}
fn revoke(call: Nanos, id: i64, revision: i64) -> Operation {
    let outcome = Outcome::Ok(Response::LeaseRevoke { revision });
    op(1, call, Request::LeaseRevoke { id }, outcome)
}
fn keep_alive(call: Nanos, id: i64, answer: Response) -> Operation {
    op(3, call, Request::LeaseKeepAlive { id }, Outcome::Ok(answer))
}
fn time_to_live(call: Nanos, id: i64, ttl: i64, raft_term: u64) -> Operation {
    let answer = Response::LeaseTimeToLive { ttl, raft_term };
    op(
        3,
        call,
        Request::LeaseTimeToLive { id },
        Outcome::Ok(answer),
    )
}
fn check(ops: &[Operation]) -> Verdict {
    check_operations(ops, CheckOptions::default())
}
fn rejected(ops: &[Operation]) -> bool {
    matches!(check(ops), Verdict::Violation(_))
}

#[test]
fn key_of_a_revoked_lease_read_after_the_revoke_returned_is_rejected() {
    let base = vec![
        grant(0, 7, 10, 0),
        leased_put(SEC / 10, "a", "1", 7, 1),
        revoke(SEC / 5, 7, 2),
    ];
    let mut bad = base.clone();
    bad.push(get(SEC / 2, "a", 2, Some(("1", 1))));
    assert!(rejected(&bad), "{:?}", check(&bad));
    let mut good = base.clone();
    good.push(get(SEC / 2, "a", 2, None));
    assert_eq!(check(&good), Verdict::Linearizable);
    // Read while the revoke is still running: either answer is fine.
    let mut overlapping = base;
    overlapping.push(get(SEC / 5 + 10, "a", 1, Some(("1", 1))));
    assert_eq!(check(&overlapping), Verdict::Linearizable);
}

#[test]
fn key_of_an_unexpired_lease_gone_without_a_delete_is_rejected() {
    let base = vec![grant(0, 7, 10, 0), leased_put(SEC / 10, "a", "1", 7, 1)];
    // Gone one second after a grant with TTL 10: etcd never expires a lease early.
    let mut early = base.clone();
    early.push(get(SEC, "a", 2, None));
    assert!(rejected(&early), "{:?}", check(&early));
    // Gone after the TTL: the lease expired (the server's revoke is revision 2).
    let mut expired = base.clone();
    expired.push(get(11 * SEC, "a", 2, None));
    assert_eq!(check(&expired), Verdict::Linearizable);
    // A keep-alive at 5 s keeps it until 15 s at least.
    let mut kept = base.clone();
    kept.push(keep_alive(5 * SEC, 7, Response::LeaseKeepAlive { ttl: 10 }));
    kept.push(get(12 * SEC, "a", 2, None));
    assert!(rejected(&kept), "{:?}", check(&kept));
    // An expired lease answers keep-alives with "not found", and its keys are gone with it.
    let mut not_found = base;
    not_found.push(keep_alive(
        12 * SEC,
        7,
        Response::Error(LEASE_NOT_FOUND.into()),
    ));
    not_found.push(get(13 * SEC, "a", 2, Some(("1", 1))));
    assert!(rejected(&not_found), "{:?}", check(&not_found));
}

#[test]
fn put_on_a_missing_lease_must_fail_and_on_a_live_one_must_not() {
    let refused = || {
        let request = Request::PutWithLease {
            key: "a".into(),
            value: "1".into(),
            lease: 7,
        };
        op(
            1,
            SEC,
            request,
            Outcome::Ok(Response::Error(LEASE_NOT_FOUND.into())),
        )
    };
    assert_eq!(check(&[refused()]), Verdict::Linearizable);
    assert!(rejected(&[grant(0, 7, 10, 0), refused()]));
    // Created by a Kubernetes-style txn with the lease, removed by the revoke.
    let create = Request::Txn {
        key: "a".into(),
        compare: Compare::ModRevisionEquals(0),
        then: TxnWrite::PutWithLease("1".into(), 7),
    };
    let ok = Outcome::Ok(Response::Txn {
        revision: 1,
        succeeded: true,
        deleted: 0,
    });
    let ops = [
        grant(0, 7, 10, 0),
        op(1, SEC / 10, create, ok),
        revoke(SEC / 5, 7, 2),
        get(SEC / 2, "a", 2, None),
    ];
    assert_eq!(check(&ops), Verdict::Linearizable);
}

#[test]
fn lease_outlives_a_leader_change_but_its_ttl_does_not_rise_within_one_term() {
    let base = vec![grant(0, 7, 10, 0), leased_put(SEC / 10, "a", "1", 7, 1)];
    // The new leader (term 3) extends every lease to a full TTL: a rise across terms is fine,
    // and the key is still there after the old TTL would have run out.
    let mut across = base.clone();
    across.push(time_to_live(4 * SEC, 7, 6, 2));
    across.push(time_to_live(5 * SEC, 7, 9, 3));
    across.push(keep_alive(8 * SEC, 7, Response::LeaseKeepAlive { ttl: 10 }));
    across.push(get(12 * SEC, "a", 1, Some(("1", 1))));
    let h = History {
        operations: across,
        ..History::default()
    };
    let report = check_history(&h, CheckOptions::default());
    assert!(report.passed(), "{}", report.summary());
    // The same rise within term 2 and without a keep-alive is flagged.
    let mut within = base;
    within.push(time_to_live(4 * SEC, 7, 6, 2));
    within.push(time_to_live(5 * SEC, 7, 9, 2));
    let h = History {
        operations: within,
        ..History::default()
    };
    let report = check_history(&h, CheckOptions::default());
    assert_eq!(report.ttl_rises.len(), 1, "{}", report.summary());
    assert!(!report.passed());
}

fn list(call: Nanos, start: &str, limit: i64, revision: i64, answer: Response) -> Operation {
    let request = Request::List {
        start: start.into(),
        end: "p0".into(),
        limit,
        revision,
        count_only: false,
    };
    op(2, call, request, Outcome::Ok(answer))
}
fn kvs(items: &[(&str, &str, i64)]) -> Vec<KeyValue> {
    items
        .iter()
        .map(|(k, v, m)| KeyValue {
            key: (*k).into(),
            value: (*v).into(),
            mod_revision: *m,
        })
        .collect()
}

/// p/a, p/b, p/c written at 1..3; page 1 (limit 2) at revision 3; then p/d at 4 and p/c at 5.
fn paged(second_page: Response) -> Vec<Operation> {
    vec![
        put(0, "p/a", "a1", 1),
        put(10 * 1_000_000, "p/b", "b1", 2),
        put(20 * 1_000_000, "p/c", "c1", 3),
        list(
            30 * 1_000_000,
            "p/",
            2,
            0,
            Response::Range {
                revision: 3,
                kvs: kvs(&[("p/a", "a1", 1), ("p/b", "b1", 2)]),
                count: 3,
            },
        ),
        put(40 * 1_000_000, "p/d", "d1", 4),
        put(50 * 1_000_000, "p/c", "c2", 5),
        list(60 * 1_000_000, "p/b\0", 2, 3, second_page),
    ]
}

#[test]
fn list_continuation_page_from_a_different_revision_is_rejected() {
    assert_eq!(check(&paged(at_first_revision())), Verdict::Linearizable);
    let at_current_revision = Response::Range {
        revision: 5,
        kvs: kvs(&[("p/c", "c2", 5), ("p/d", "d1", 4)]),
        count: 2,
    };
    assert!(rejected(&paged(at_current_revision)));
    let count_only = Request::List {
        start: "p/".into(),
        end: "p0".into(),
        limit: 0,
        revision: 0,
        count_only: true,
    };
    let counted = |count| {
        let answer = Response::Range {
            revision: 3,
            kvs: vec![],
            count,
        };
        op(2, SEC, count_only.clone(), Outcome::Ok(answer))
    };
    let mut ops = paged(at_first_revision());
    ops.truncate(3);
    ops.push(counted(3));
    assert_eq!(check(&ops), Verdict::Linearizable);
    ops.pop();
    ops.push(counted(2));
    assert!(rejected(&ops));
}

/// The continuation page of `paged` as it was at revision 3.
fn at_first_revision() -> Response {
    Response::Range {
        revision: 5,
        kvs: kvs(&[("p/c", "c1", 3)]),
        count: 1,
    }
}

fn compact(call: Nanos, revision: i64, header: i64) -> Operation {
    let outcome = Outcome::Ok(Response::Compact { revision: header });
    op(1, call, Request::Compact { revision }, outcome)
}

#[test]
fn read_below_the_compact_revision_succeeding_is_rejected() {
    let mut ops = paged(at_first_revision());
    // Compacted at 4 before the continuation page (at revision 3) was asked for.
    ops.insert(6, compact(55 * 1_000_000, 4, 5));
    assert!(rejected(&ops), "{:?}", check(&ops));
    let last = ops.len() - 1;
    ops[last].outcome = Outcome::Ok(Response::Error(COMPACTED.into()));
    assert_eq!(check(&ops), Verdict::Linearizable);
    // Compacting at the compact revision again fails with the same error.
    let again = op(
        1,
        SEC,
        Request::Compact { revision: 4 },
        Outcome::Ok(Response::Compact { revision: 5 }),
    );
    ops.push(again);
    assert!(rejected(&ops));
}

fn event(key: &str, rev: i64, kind: EventKind, prev: Option<(&str, i64)>) -> Event {
    Event {
        key: key.into(),
        mod_revision: rev,
        kind,
        prev: prev.map(|(value, mod_revision)| ValueAt {
            value: value.into(),
            mod_revision,
        }),
    }
}
fn put_event(key: &str, value: &str, rev: i64, prev: Option<(&str, i64)>) -> Event {
    let kind = EventKind::Put {
        value: value.into(),
    };
    event(key, rev, kind, prev)
}
fn stream(start_revision: i64, events: Vec<Event>) -> WatchStream {
    let header_revision = events.iter().map(|e| e.mod_revision).max().unwrap_or(0);
    WatchStream {
        client: 9,
        key: "".into(),
        prefix: true,
        start_revision,
        responses: vec![WatchResponse {
            time: SEC,
            header_revision,
            progress_notify: false,
            events,
        }],
        prev_kv: true,
        compact_revision: None,
    }
}
fn delete(call: Nanos, key: &str, revision: i64) -> Operation {
    let outcome = Outcome::Ok(Response::Delete {
        revision,
        deleted: 1,
    });
    op(1, call, Request::Delete { key: key.into() }, outcome)
}
/// a=1@1, a=2@2, b=3@3, a deleted at 4, a=5@5.
fn writes() -> Vec<Operation> {
    vec![
        put(0, "a", "1", 1),
        put(10, "a", "2", 2),
        put(20, "b", "3", 3),
        delete(30, "a", 4),
        put(40, "a", "5", 5),
    ]
}
fn kinds(h: &History) -> Vec<WatchViolationKind> {
    check_watches(h).into_iter().map(|v| v.kind).collect()
}

#[test]
fn wrong_prev_kv_is_rejected() {
    let good = vec![
        put_event("a", "2", 2, Some(("1", 1))),
        put_event("b", "3", 3, None),
        event("a", 4, EventKind::Delete, Some(("2", 2))),
        put_event("a", "5", 5, None),
    ];
    let history = |events| History {
        operations: writes(),
        watches: vec![stream(2, events)],
        final_read: None,
        initial_revision: 0,
    };
    assert_eq!(kinds(&history(good.clone())), vec![]);
    // The first event's prev_kv names an older value than the key held.
    let mut stale = good.clone();
    stale[0].prev = Some(ValueAt {
        value: "0".into(),
        mod_revision: 0,
    });
    assert_eq!(
        kinds(&history(stale)),
        vec![WatchViolationKind::WrongPrevKv]
    );
    // The delete's prev_kv is not the stream's previous event of the key.
    let mut wrong = good.clone();
    wrong[2].prev = Some(ValueAt {
        value: "1".into(),
        mod_revision: 1,
    });
    assert_eq!(
        kinds(&history(wrong)),
        vec![WatchViolationKind::WrongPrevKv]
    );
    // A put after a delete has no previous value.
    let mut resurrected = good;
    resurrected[3].prev = Some(ValueAt {
        value: "2".into(),
        mod_revision: 2,
    });
    assert_eq!(
        kinds(&history(resurrected)),
        vec![WatchViolationKind::WrongPrevKv]
    );
}

#[test]
fn watch_at_the_compact_revision_delivers_its_delete_and_is_not_cancelled() {
    // etcd #18089: compact at 4 (a delete), watch from 4: the delete at 4 must come first.
    let mut ops = writes();
    ops.push(compact(50, 4, 5));
    let delivered = vec![
        event("a", 4, EventKind::Delete, Some(("2", 2))),
        put_event("a", "5", 5, None),
    ];
    let history = |watch| History {
        operations: ops.clone(),
        watches: vec![watch],
        final_read: None,
        initial_revision: 0,
    };
    assert_eq!(kinds(&history(stream(4, delivered.clone()))), vec![]);
    // etcd reads prev_kv at revision 3, compacted: it may leave it out.
    let mut without_prev = delivered.clone();
    without_prev[0].prev = None;
    assert_eq!(kinds(&history(stream(4, without_prev))), vec![]);
    let mut missing = delivered;
    missing.remove(0);
    assert_eq!(
        kinds(&history(stream(4, missing))),
        vec![WatchViolationKind::Gap]
    );
    // Cancelled as compacted: fine from 3 (below 4), wrong from 4 itself.
    let cancelled = |start| WatchStream {
        compact_revision: Some(4),
        responses: vec![],
        ..stream(start, vec![])
    };
    assert_eq!(kinds(&history(cancelled(3))), vec![]);
    assert_eq!(
        kinds(&history(cancelled(4))),
        vec![WatchViolationKind::WrongCompaction]
    );
    // A compaction nobody asked for.
    let mut unasked = cancelled(3);
    unasked.compact_revision = Some(5);
    assert_eq!(
        kinds(&history(unasked)),
        vec![WatchViolationKind::WrongCompaction]
    );
}

#[test]
fn delete_events_of_a_revoked_lease_are_real_and_its_keys_not_lost() {
    let ops = vec![
        grant(0, 7, 10, 0),
        leased_put(10, "a", "1", 7, 1),
        leased_put(20, "b", "2", 7, 2),
        revoke(30, 7, 3),
    ];
    // One revision deletes both keys.
    let events = vec![
        put_event("a", "1", 1, None),
        put_event("b", "2", 2, None),
        event("a", 3, EventKind::Delete, Some(("1", 1))),
        event("b", 3, EventKind::Delete, Some(("2", 2))),
    ];
    let h = History {
        operations: ops,
        watches: vec![stream(1, events)],
        final_read: Some(etcd_robustness::history::FinalRead {
            revision: 3,
            kvs: vec![],
        }),
        initial_revision: 0,
    };
    let report = check_history(&h, CheckOptions::default());
    assert!(report.passed(), "{}", report.summary());
}
