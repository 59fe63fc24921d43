//! Resolving unknown outcomes from a complete watch before the linearizability search.
//!
//! Operations with unknown outcomes are what makes the search expensive: each one may be placed
//! anywhere after its call, or nowhere. A watch on every key from revision 1 that reached the
//! last revision of the run sees every committed change, so with it (as etcd's robustness tests
//! do) an unknown write resolves: if an event is its change and it is the only unknown operation
//! that could have made it (called before the event arrived; or the earliest called of several
//! identical requests, which are interchangeable), it happened at that revision, before the event
//! was received (a delete of a key ever attached to a lease stays unknown: the event may be the
//! lease's revoke or expiry); if no event is left for it, it changed nothing, which is the same as never
//! having happened (a failed compare or a delete of an absent key raises no revision). Unknown
//! writes competing with different requests for one event stay unknown.
//!
//! Invariant: patching keeps the operations' indices and only turns `Unknown` outcomes into
//! `Ok` (with the revision the watch showed) or `Failed`. It trusts the complete watch; the watch
//! checks verify that stream against the history and report it separately if it is wrong.

use crate::history::{
    EventKind, History, Nanos, Operation, Outcome, Request, Response, WatchStream,
};
use crate::writes::{acknowledged_writes, change_of, ever_leased};
use std::collections::HashSet;

/// The operations of `history` with unknown writes resolved where a complete watch allows it,
/// and how many were resolved.
pub fn resolve_unknown_writes(history: &History) -> (Vec<Operation>, usize) {
    let mut ops = history.operations.clone();
    let Some(mut events) = complete_watch_events(history) else {
        return (ops, 0);
    };
    let acknowledged: HashSet<i64> = acknowledged_writes(&ops)
        .iter()
        .map(|w| w.revision)
        .collect();
    events.retain(|(revision, ..)| !acknowledged.contains(revision));
    events.sort_by_key(|e| e.0);
    // Who made each event no acknowledged write explains. Operations with identical requests
    // are interchangeable: giving the earliest event to the earliest call is as good as any other
    // assignment. Where different requests compete, none of them is resolved.
    let mut made: Vec<Option<(i64, Nanos)>> = vec![None; ops.len()];
    let mut blocked = vec![false; ops.len()];
    for event in &events {
        let makers: Vec<usize> = unknown_makers(&ops, event)
            .into_iter()
            .filter(|&i| made[i].is_none())
            .collect();
        // A leased key's delete may be its lease's revoke or expiry rather than a client delete.
        let lease_may_have_made = event.3 == EventKind::Delete && ever_leased(&ops, &event.2);
        let interchangeable = !lease_may_have_made
            && makers
                .iter()
                .all(|&i| !blocked[i] && ops[i].request == ops[makers[0]].request);
        match makers.iter().min_by_key(|&&i| ops[i].call) {
            Some(&first) if interchangeable => made[first] = Some((event.0, event.1)),
            _ => makers.iter().for_each(|&i| blocked[i] = true),
        }
    }
    let mut resolved = 0;
    for (i, op) in ops.iter_mut().enumerate() {
        if op.outcome != Outcome::Unknown || change_of(&op.request).is_none() || blocked[i] {
            continue;
        }
        (op.outcome, op.ret) = match made[i] {
            Some((revision, time)) => (Outcome::Ok(answer(&op.request, revision)), time),
            None => (Outcome::Failed, op.call),
        };
        resolved += 1;
    }
    (ops, resolved)
}

/// The answer a write that made a change at `revision` would have received.
fn answer(request: &Request, revision: i64) -> Response {
    match request {
        Request::Put { .. } => Response::Put { revision },
        Request::Delete { .. } => Response::Delete {
            revision,
            deleted: 1,
        },
        Request::Txn { then, .. } => {
            let deleted = i64::from(matches!(then, crate::history::TxnWrite::Delete));
            Response::Txn {
                revision,
                succeeded: true,
                deleted,
            }
        }
        // A put with or without a lease: only writes `change_of` knows are resolved.
        _ => Response::Put { revision },
    }
}

/// The unknown operations that could have made an event: same change, called before it arrived.
fn unknown_makers(ops: &[Operation], event: &(i64, Nanos, String, EventKind)) -> Vec<usize> {
    let (_, time, key, kind) = event;
    (0..ops.len())
        .filter(|&i| {
            ops[i].outcome == Outcome::Unknown
                && ops[i].call <= *time
                && change_of(&ops[i].request).is_some_and(|(k, c)| k == key && c == *kind)
        })
        .collect()
}

/// (revision, receive time, key, change) of every event of a watch on all keys from revision 1
/// (one stream, or streams each resuming where the earlier left off) that vouched for the last
/// revision the history knows, if there is such a watch.
fn complete_watch_events(history: &History) -> Option<Vec<(i64, Nanos, String, EventKind)>> {
    let last_known = acknowledged_writes(&history.operations)
        .iter()
        .map(|w| w.revision)
        .chain(history.final_read.as_ref().map(|f| f.revision))
        .max()
        .unwrap_or(0);
    let vouched = |w: &WatchStream| {
        w.responses
            .iter()
            .flat_map(|r| {
                r.events
                    .iter()
                    .map(|e| e.mod_revision)
                    .chain(r.progress_notify.then_some(r.header_revision))
            })
            .max()
            .unwrap_or(0)
    };
    // Streams on all keys, each resuming at or before the revision after the last one the
    // earlier ones vouched for (a watch re-created after its member failed), chained from 1.
    let mut all_keys: Vec<&WatchStream> = history
        .watches
        .iter()
        .filter(|w| w.prefix && w.key.is_empty() && w.compact_revision.is_none())
        .collect();
    all_keys.sort_by_key(|w| w.start_revision);
    let mut reach = 0;
    let mut events = Vec::new();
    for stream in all_keys {
        if stream.start_revision > reach + 1 {
            break;
        }
        for r in &stream.responses {
            for e in r.events.iter().filter(|e| e.mod_revision > reach) {
                events.push((e.mod_revision, r.time, e.key.clone(), e.kind.clone()));
            }
        }
        reach = reach.max(vouched(stream));
    }
    (reach >= last_known).then_some(events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::put_a as put;
    use crate::history::{Event, FinalRead, WatchResponse, WatchStream};

    fn watch(events: Vec<(i64, &str, Nanos)>, last: i64) -> WatchStream {
        let mut responses: Vec<WatchResponse> = events
            .into_iter()
            .map(|(rev, value, time)| WatchResponse {
                time,
                header_revision: rev,
                progress_notify: false,
                events: vec![Event {
                    key: "a".into(),
                    mod_revision: rev,
                    kind: EventKind::Put {
                        value: value.into(),
                    },
                    prev: None,
                }],
            })
            .collect();
        responses.push(WatchResponse {
            time: 999,
            header_revision: last,
            progress_notify: true,
            events: vec![],
        });
        WatchStream {
            client: 9,
            key: "".into(),
            prefix: true,
            start_revision: 1,
            responses,
            prev_kv: false,
            compact_revision: None,
        }
    }
    fn history(ops: Vec<Operation>, stream: WatchStream) -> History {
        History {
            operations: ops,
            watches: vec![stream],
            final_read: Some(FinalRead {
                revision: 2,
                kvs: vec![],
            }),
            initial_revision: 0,
        }
    }

    #[test]
    fn unknown_put_seen_on_the_watch_happened_before_the_event_arrived() {
        let h = history(
            vec![
                put(0, "1", Outcome::Ok(Response::Put { revision: 1 })),
                put(20, "2", Outcome::Unknown),
            ],
            watch(vec![(1, "1", 15), (2, "2", 40)], 2),
        );
        let (ops, resolved) = resolve_unknown_writes(&h);
        assert_eq!(resolved, 1);
        assert_eq!(
            (ops[1].outcome.clone(), ops[1].ret),
            (Outcome::Ok(Response::Put { revision: 2 }), 40)
        );
        assert_eq!(ops[0], h.operations[0]);
    }

    #[test]
    fn unknown_put_missing_from_the_watch_never_happened() {
        let h = history(
            vec![
                put(0, "1", Outcome::Ok(Response::Put { revision: 1 })),
                put(20, "2", Outcome::Unknown),
            ],
            watch(vec![(1, "1", 15)], 2),
        );
        let (ops, resolved) = resolve_unknown_writes(&h);
        assert_eq!((resolved, ops[1].outcome.clone()), (1, Outcome::Failed));
    }

    #[test]
    fn ambiguous_or_incomplete_watches_leave_unknowns_alone() {
        // A put and a transaction writing the same value: the event cannot say which made it.
        let txn = Request::Txn {
            key: "a".into(),
            compare: crate::history::Compare::ModRevisionEquals(0),
            then: crate::history::TxnWrite::Put("1".into()),
        };
        let rivals = vec![
            put(0, "1", Outcome::Unknown),
            Operation {
                request: txn,
                ..put(5, "1", Outcome::Unknown)
            },
        ];
        let (_, resolved) = resolve_unknown_writes(&history(rivals, watch(vec![(1, "1", 30)], 2)));
        assert_eq!(resolved, 0);
        // A watch that stopped before the last known revision proves nothing about absence.
        let ops = vec![
            put(0, "1", Outcome::Unknown),
            put(50, "2", Outcome::Ok(Response::Put { revision: 2 })),
        ];
        let (_, resolved) = resolve_unknown_writes(&history(ops.clone(), watch(vec![], 1)));
        assert_eq!(resolved, 0);
        let mut late_start = watch(vec![], 2);
        late_start.start_revision = 2;
        assert_eq!(resolve_unknown_writes(&history(ops, late_start)).1, 0);
    }

    #[test]
    fn watch_resumed_where_it_broke_counts_as_complete() {
        let ops = vec![
            put(0, "1", Outcome::Ok(Response::Put { revision: 1 })),
            put(20, "2", Outcome::Unknown),
        ];
        let mut first = watch(vec![(1, "1", 15)], 1);
        first.responses.pop();
        let mut resumed = watch(vec![(2, "2", 40)], 2);
        resumed.start_revision = 2;
        let mut h = history(ops, first);
        h.watches.push(resumed.clone());
        let (patched, resolved) = resolve_unknown_writes(&h);
        assert_eq!(resolved, 1);
        assert_eq!(
            patched[1].outcome,
            Outcome::Ok(Response::Put { revision: 2 })
        );
        // Resumed past a revision nobody vouched for: not complete.
        h.watches[1].start_revision = 3;
        assert_eq!(resolve_unknown_writes(&h).1, 0);
    }

    #[test]
    fn identical_unknown_requests_are_interchangeable_and_the_earliest_made_the_change() {
        let twins = vec![put(0, "1", Outcome::Unknown), put(5, "1", Outcome::Unknown)];
        let (ops, resolved) = resolve_unknown_writes(&history(twins, watch(vec![(1, "1", 30)], 2)));
        assert_eq!(resolved, 2);
        assert_eq!(ops[0].outcome, Outcome::Ok(Response::Put { revision: 1 }));
        assert_eq!(ops[1].outcome, Outcome::Failed);
    }
}
