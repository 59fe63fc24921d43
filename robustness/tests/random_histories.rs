//! Randomized self-tests of the checkers.
//!
//! Histories are generated from a sequential run of the model: operation i takes effect at time
//! 100·i and its call and return are spread around that point, so neighbours overlap. Such
//! histories are linearizable by construction and must be accepted. Small histories are then
//! mutated at random and the checker's verdict is compared with a brute-force oracle that tries
//! every order; larger ones get mutations that are always illegal and must be rejected.

use etcd_robustness::history::{
    Compare, Event, EventKind, FinalRead, History, KeyValue, Operation, Outcome, Request, Response,
    TxnWrite, ValueAt, WatchResponse, WatchStream,
};
use etcd_robustness::linearizability::{check_operations, CheckOptions, Verdict};
use etcd_robustness::lost_writes::check_no_lost_writes;
use etcd_robustness::model::{step, RevisionMode, State};
use etcd_robustness::report::check_history;
use etcd_robustness::watch_checks::{check_watches, WatchViolationKind};
use etcd_robustness::writes::{acknowledged_writes, change_of};

/// Proving a large history illegal means exhausting the search, whose cost grows steeply with
/// the unknown writes a complete watch cannot resolve (competing deletes): at 3% of 3000 writes
/// it takes seconds per history, at 10% it exceeds the default budget.
const UNKNOWN_PERCENT_AT_SCALE: u8 = 1;
const KEYS: [&str; 3] = ["k/a", "k/b", "x"];

/// A generated run: the history, the committed changes in order (with whether their operation
/// was acknowledged, and when they took effect) and the final store.
struct Run {
    ops: Vec<Operation>,
    changes: Vec<(Event, bool, u64)>,
    state: State,
}

fn random_request(rng: &mut fastrand::Rng, state: &State, i: usize) -> Request {
    let key = KEYS[rng.usize(..KEYS.len())].to_string();
    let current = state.kvs.get(&key);
    let then = if rng.bool() {
        TxnWrite::Put(format!("v{i}"))
    } else {
        TxnWrite::Delete
    };
    match rng.u8(..6) {
        0 => Request::Put {
            key,
            value: format!("v{i}"),
        },
        1 => Request::Get { key },
        2 => Request::Delete { key },
        3 => {
            let expected = match current {
                Some(kv) if rng.bool() => kv.value.clone(),
                _ => format!("v{}", rng.usize(..i + 1)),
            };
            Request::Txn {
                key,
                compare: Compare::ValueEquals(expected),
                then,
            }
        }
        4 => {
            let expected = match current {
                Some(kv) if rng.bool() => kv.mod_revision,
                _ => rng.i64(0..3),
            };
            Request::Txn {
                key,
                compare: Compare::ModRevisionEquals(expected),
                then,
            }
        }
        _ => Request::Range {
            prefix: "k/".into(),
            limit: rng.i64(0..3),
        },
    }
}

/// `unknown_percent` of the writes get no answer (half of those take effect); 5% fail.
fn generate(rng: &mut fastrand::Rng, n: usize, spread: u64, unknown_percent: u8) -> Run {
    let mut state = State::default();
    let mut ops = Vec::with_capacity(n);
    let mut changes = Vec::new();
    for i in 0..n {
        let at = 1000 + 100 * i as u64;
        let (call, ret) = (at - rng.u64(0..=spread), at + rng.u64(0..=spread));
        let request = random_request(rng, &state, i);
        let roll = rng.u8(..100);
        let (takes_effect, outcome) = if request.may_write() && roll < unknown_percent {
            (rng.bool(), Outcome::Unknown)
        } else if request.may_write() && roll < unknown_percent + 5 {
            (false, Outcome::Failed)
        } else {
            (true, Outcome::Ok(state.apply(&request).1))
        };
        if takes_effect {
            let next = state.apply(&request).0;
            if next.revision != state.revision {
                let key = request.key().unwrap_or_default().to_string();
                let kind = match next.kvs.get(&key) {
                    Some(kv) => EventKind::Put {
                        value: kv.value.clone(),
                    },
                    None => EventKind::Delete,
                };
                let event = Event {
                    key,
                    mod_revision: next.revision,
                    kind,
                    prev: None,
                };
                changes.push((event, outcome != Outcome::Unknown, at));
            }
            state = next;
        }
        ops.push(Operation {
            client: (i % 4) as u32,
            call,
            ret,
            request,
            outcome,
        });
    }
    rng.shuffle(&mut ops);
    Run {
        ops,
        changes,
        state,
    }
}

/// Brute force: some order of all definite operations and some of the unknown writes respects
/// real time and reproduces every answer.
fn oracle(ops: &[Operation]) -> bool {
    let ops: Vec<&Operation> = ops
        .iter()
        .filter(|op| op.outcome != Outcome::Failed)
        .filter(|op| op.outcome != Outcome::Unknown || op.request.may_write())
        .collect();
    let mut placed = vec![false; ops.len()];
    orders_exist(&ops, &State::default(), &mut placed)
}

fn orders_exist(ops: &[&Operation], state: &State, placed: &mut [bool]) -> bool {
    let pending_definite = |placed: &[bool], j: usize| {
        (0..ops.len())
            .any(|k| k != j && !placed[k] && ops[k].return_time().is_some_and(|r| r < ops[j].call))
    };
    if (0..ops.len()).all(|k| placed[k] || ops[k].return_time().is_none()) {
        return true;
    }
    for j in 0..ops.len() {
        if placed[j] || pending_definite(placed, j) {
            continue;
        }
        if let Some(next) = step(state, &ops[j].request, &ops[j].outcome, RevisionMode::Exact) {
            placed[j] = true;
            let found = orders_exist(ops, &next, placed);
            placed[j] = false;
            if found {
                return true;
            }
        }
    }
    false
}

fn revision_of(response: &mut Response) -> &mut i64 {
    match response {
        Response::Put { revision }
        | Response::Get { revision, .. }
        | Response::Delete { revision, .. }
        | Response::Txn { revision, .. }
        | Response::Range { revision, .. }
        | Response::LeaseGrant { revision, .. }
        | Response::LeaseRevoke { revision }
        | Response::Compact { revision } => revision,
        Response::LeaseKeepAlive { ttl } | Response::LeaseTimeToLive { ttl, .. } => ttl,
        Response::Error(_) => unreachable!("the generator makes no error answers"),
    }
}

/// A random change that may or may not make the history illegal.
fn mutate(rng: &mut fastrand::Rng, ops: &mut [Operation]) {
    let i = rng.usize(..ops.len());
    let other = rng.usize(..ops.len());
    let n = ops.len();
    match rng.u8(..6) {
        0 => {
            if let Outcome::Ok(Response::Get { kv, .. }) = &mut ops[i].outcome {
                *kv = match kv.take() {
                    Some(_) if rng.bool() => None,
                    _ => Some(ValueAt {
                        value: format!("v{}", rng.usize(..n)),
                        mod_revision: rng.i64(1..4),
                    }),
                };
            }
        }
        1 => {
            if let Outcome::Ok(response) = &mut ops[i].outcome {
                *revision_of(response) += if rng.bool() { 1 } else { -1 };
            }
        }
        2 => {
            if ops[i].is_ok() && ops[i].request.may_write() {
                ops[i].outcome = Outcome::Failed;
            }
        }
        3 => {
            if ops[i].request.may_write() {
                ops[i].outcome = Outcome::Unknown;
            }
        }
        4 => {
            // Start later: after another operation returned.
            let later = ops[other].ret + 1;
            if later <= ops[i].ret {
                ops[i].call = later;
            }
        }
        _ => {
            if std::mem::discriminant(&ops[i].request)
                == std::mem::discriminant(&ops[other].request)
            {
                let swapped = ops[other].outcome.clone();
                ops[other].outcome = std::mem::replace(&mut ops[i].outcome, swapped);
            }
        }
    }
}

fn is_linearizable(ops: &[Operation]) -> bool {
    match check_operations(ops, CheckOptions::default()) {
        Verdict::Linearizable => true,
        Verdict::Violation(_) => false,
        Verdict::Unknown(why) => panic!("search did not finish on a small history: {why}"),
    }
}

#[test]
fn generated_histories_are_accepted() {
    for seed in 0..150 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let run = generate(&mut rng, 60, 150, 10);
        let verdict = check_operations(&run.ops, CheckOptions::default());
        assert_eq!(verdict, Verdict::Linearizable, "seed {seed}");
    }
}

#[test]
fn checker_agrees_with_brute_force_on_mutated_small_histories() {
    let (mut legal, mut illegal) = (0, 0);
    for seed in 0..3000 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut run = generate(&mut rng, 6, 150, 10);
        assert!(
            oracle(&run.ops),
            "seed {seed}: the generator made an illegal history"
        );
        for _ in 0..rng.usize(1..3) {
            mutate(&mut rng, &mut run.ops);
        }
        let expected = oracle(&run.ops);
        assert_eq!(
            is_linearizable(&run.ops),
            expected,
            "seed {seed}: {:#?}",
            run.ops
        );
        if expected {
            legal += 1;
        } else {
            illegal += 1;
        }
    }
    assert!(
        legal > 300 && illegal > 300,
        "mutations too one-sided: {legal} legal, {illegal} illegal"
    );
}

#[test]
fn read_of_a_never_written_value_is_rejected_and_named_in_the_window() {
    let mut rejected = 0;
    for seed in 0..100 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut run = generate(&mut rng, 60, 150, 10);
        let Some(i) = run
            .ops
            .iter()
            .position(|op| matches!(op.outcome, Outcome::Ok(Response::Get { .. })))
        else {
            continue;
        };
        if let Outcome::Ok(Response::Get { kv, .. }) = &mut run.ops[i].outcome {
            *kv = Some(ValueAt {
                value: "never-written".into(),
                mod_revision: 1,
            });
        }
        match check_operations(&run.ops, CheckOptions::default()) {
            Verdict::Violation(v) => {
                assert!(
                    v.window.contains(&i),
                    "seed {seed}: window {:?} misses #{i}",
                    v.window
                );
                assert_eq!(v.key.as_deref(), run.ops[i].request.key(), "seed {seed}");
                assert!(
                    v.report.contains("never-written"),
                    "seed {seed}: {}",
                    v.report
                );
                rejected += 1;
            }
            other => panic!("seed {seed}: {other:?}"),
        }
    }
    assert!(rejected > 80);
}

#[test]
fn two_writes_claiming_one_revision_are_rejected() {
    for seed in 0..100 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut run = generate(&mut rng, 60, 150, 10);
        let puts: Vec<usize> = (0..run.ops.len())
            .filter(|&i| matches!(run.ops[i].outcome, Outcome::Ok(Response::Put { .. })))
            .collect();
        let (a, b) = (puts[0], puts[puts.len() - 1]);
        let Outcome::Ok(Response::Put { revision }) = run.ops[a].outcome else {
            unreachable!()
        };
        run.ops[b].outcome = Outcome::Ok(Response::Put { revision });
        assert!(
            matches!(
                check_operations(&run.ops, CheckOptions::default()),
                Verdict::Violation(_)
            ),
            "seed {seed}"
        );
    }
}

/// The committed changes on `k/` from `start`, cut into responses at random with progress
/// notifications in between.
fn watch_of(rng: &mut fastrand::Rng, run: &Run, start: i64) -> WatchStream {
    let mut responses = Vec::new();
    for (event, ..) in run
        .changes
        .iter()
        .filter(|(e, ..)| e.key.starts_with("k/") && e.mod_revision >= start)
    {
        let after_progress = responses
            .last()
            .is_some_and(|r: &WatchResponse| r.progress_notify);
        if responses.is_empty() || after_progress || rng.u8(..3) == 0 {
            responses.push(WatchResponse {
                time: 0,
                header_revision: 0,
                progress_notify: false,
                events: vec![],
            });
        }
        let last = responses.len() - 1;
        responses[last].events.push(event.clone());
        responses[last].header_revision = event.mod_revision;
        if rng.u8(..5) == 0 {
            let header_revision = event.mod_revision;
            responses.push(WatchResponse {
                time: 0,
                header_revision,
                progress_notify: true,
                events: vec![],
            });
        }
    }
    WatchStream {
        client: 99,
        key: "k/".into(),
        prefix: true,
        start_revision: start,
        responses,
        prev_kv: false,
        compact_revision: None,
    }
}

#[test]
fn generated_watch_streams_pass_and_their_mutations_fail() {
    for seed in 0..200 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let run = generate(&mut rng, 60, 150, 10);
        let start = rng.i64(1..run.state.revision.max(2));
        let stream = watch_of(&mut rng, &run, start);
        let mut history = History {
            operations: run.ops.clone(),
            watches: vec![stream.clone()],
            final_read: None,
            initial_revision: 0,
        };
        assert_eq!(check_watches(&history), vec![], "seed {seed}");

        let mut events: Vec<Event> = stream
            .responses
            .iter()
            .flat_map(|r| r.events.clone())
            .collect();
        if events.len() < 3 {
            continue;
        }
        let one_response = |events: Vec<Event>| WatchResponse {
            time: 0,
            header_revision: 0,
            progress_notify: false,
            events,
        };
        let kinds = |history: &History| {
            check_watches(history)
                .into_iter()
                .map(|v| v.kind)
                .collect::<Vec<_>>()
        };

        // Duplicate one event.
        let d = rng.usize(..events.len());
        let mut twice = events.clone();
        twice.insert(d + 1, events[d].clone());
        history.watches[0].responses = twice.into_iter().map(|e| one_response(vec![e])).collect();
        assert!(
            kinds(&history).contains(&WatchViolationKind::Duplicate),
            "seed {seed}"
        );

        // Swap two neighbours.
        let s = rng.usize(..events.len() - 1);
        let mut swapped = events.clone();
        swapped.swap(s, s + 1);
        history.watches[0].responses = swapped.into_iter().map(|e| one_response(vec![e])).collect();
        assert!(
            kinds(&history).contains(&WatchViolationKind::Unordered),
            "seed {seed}"
        );

        // Drop an acknowledged change that is not the last one.
        let acknowledged: Vec<i64> = run
            .changes
            .iter()
            .filter(|(_, ack, _)| *ack)
            .map(|(e, ..)| e.mod_revision)
            .collect();
        let droppable: Vec<usize> = (0..events.len() - 1)
            .filter(|&i| acknowledged.contains(&events[i].mod_revision))
            .collect();
        if let Some(&g) = droppable.first() {
            let gone = events.remove(g);
            history.watches[0].responses = vec![one_response(events)];
            let found = check_watches(&history);
            assert!(
                found
                    .iter()
                    .any(|v| v.kind == WatchViolationKind::Gap && v.revision == gone.mod_revision),
                "seed {seed}: {found:?}"
            );
        }
    }
}

#[test]
fn final_state_keeps_every_acknowledged_write_and_tampering_is_found() {
    for seed in 0..200 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let run = generate(&mut rng, 60, 150, 10);
        let mut final_read = final_read_of(&run.state);
        assert_eq!(
            check_no_lost_writes(&run.ops, &final_read),
            vec![],
            "seed {seed}"
        );

        let acknowledged = acknowledged_writes(&run.ops);
        let Some(k) = final_read.kvs.iter().position(|kv| {
            acknowledged
                .iter()
                .any(|w| w.key == kv.key && w.revision == kv.mod_revision)
        }) else {
            continue;
        };
        final_read.kvs[k].value = "tampered".into();
        let lost = check_no_lost_writes(&run.ops, &final_read);
        assert_eq!(lost.len(), 1, "seed {seed}: {lost:?}");
    }
}

/// A watch on every key from revision 1, each event received just after it took effect, ending
/// with a progress notification at the last revision.
fn complete_watch(run: &Run) -> WatchStream {
    let mut responses: Vec<WatchResponse> = run
        .changes
        .iter()
        .map(|(event, _, at)| WatchResponse {
            time: at + 1,
            header_revision: event.mod_revision,
            progress_notify: false,
            events: vec![event.clone()],
        })
        .collect();
    let end = run.changes.last().map_or(0, |(_, _, at)| at + 2);
    responses.push(WatchResponse {
        time: end,
        header_revision: run.state.revision,
        progress_notify: true,
        events: vec![],
    });
    WatchStream {
        client: 98,
        key: "".into(),
        prefix: true,
        start_revision: 1,
        responses,
        prev_kv: false,
        compact_revision: None,
    }
}

fn final_read_of(state: &State) -> FinalRead {
    let kvs = state
        .kvs
        .iter()
        .map(|(k, v)| KeyValue {
            key: k.clone(),
            value: v.value.clone(),
            mod_revision: v.mod_revision,
        })
        .collect();
    FinalRead {
        revision: state.revision,
        kvs,
    }
}

fn recorded(run: Run) -> History {
    History {
        watches: vec![complete_watch(&run)],
        final_read: Some(final_read_of(&run.state)),
        operations: run.ops,
        initial_revision: 0,
    }
}

#[test]
fn complete_watch_resolves_unknown_writes_and_large_histories_pass() {
    for seed in 0..5 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let history = recorded(generate(&mut rng, 3000, 300, 10));
        // Values are unique, so every unknown put resolves; deletes of one key may stay ambiguous.
        let unknown_puts = history
            .operations
            .iter()
            .filter(|op| op.outcome == Outcome::Unknown)
            .filter(|op| matches!(change_of(&op.request), Some((_, EventKind::Put { .. }))))
            .count();
        let report = check_history(&history, CheckOptions::default());
        assert!(report.passed(), "seed {seed}: {}", report.summary());
        assert!(
            unknown_puts > 0 && report.resolved_unknowns >= unknown_puts,
            "seed {seed}: {unknown_puts} unknown puts: {}",
            report.summary()
        );
    }
}

fn assert_found_and_narrowed(seed: u64, history: &History, read: usize) {
    match check_history(history, CheckOptions::default()).linearizability {
        Verdict::Violation(v) => {
            assert!(
                v.window.contains(&read) && v.key.is_some(),
                "seed {seed}: {}",
                v.report
            )
        }
        other => panic!("seed {seed}: {other:?}"),
    }
}

#[test]
fn read_of_a_never_written_value_in_a_large_history_is_found_and_narrowed() {
    for seed in 0..5 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut bad = recorded(generate(&mut rng, 3000, 300, 10));
        let i = bad
            .operations
            .iter()
            .rposition(|op| matches!(op.outcome, Outcome::Ok(Response::Get { .. })))
            .expect("a get");
        let kv = Some(ValueAt {
            value: "never-written".into(),
            mod_revision: 1,
        });
        bad.operations[i].outcome = Outcome::Ok(Response::Get { revision: 1, kv });
        assert_found_and_narrowed(seed, &bad, i);
    }
}

#[test]
fn stale_read_in_a_large_history_is_found_by_the_search_and_narrowed() {
    let mut found = 0;
    for seed in 0..5 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut bad = recorded(generate(&mut rng, 3000, 300, UNKNOWN_PERCENT_AT_SCALE));
        let ops = &bad.operations;
        let acked = acknowledged_writes(ops);
        // A read whose value was written by a put that returned before the read was called,
        // made to return the previous acknowledged value of the key instead: a stale read.
        let stale = (0..ops.len()).rev().find_map(|i| {
            let Outcome::Ok(Response::Get {
                kv: Some(kv),
                revision,
            }) = &ops[i].outcome
            else {
                return None;
            };
            let newer = acked.iter().find(|w| w.revision == kv.mod_revision)?;
            if ops[newer.op].ret >= ops[i].call {
                return None;
            }
            let older = acked
                .iter()
                .rfind(|w| w.key == newer.key && w.revision < newer.revision)?;
            let EventKind::Put { value } = &older.kind else {
                return None;
            };
            let kv = Some(ValueAt {
                value: value.clone(),
                mod_revision: older.revision,
            });
            Some((
                i,
                Response::Get {
                    revision: *revision,
                    kv,
                },
            ))
        });
        let Some((i, response)) = stale else { continue };
        bad.operations[i].outcome = Outcome::Ok(response);
        assert!(
            etcd_robustness::quick_checks::impossible_read(&bad.operations).is_none(),
            "seed {seed}"
        );
        assert_found_and_narrowed(seed, &bad, i);
        found += 1;
    }
    assert!(found >= 3, "only {found} seeds had a read to make stale");
}

#[test]
fn resolving_unknowns_from_a_complete_watch_never_rejects_a_generated_history() {
    for seed in 0..3000 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let history = recorded(generate(&mut rng, 8, 150, 40));
        let report = check_history(&history, CheckOptions::default());
        assert!(report.passed(), "seed {seed}: {}", report.summary());
    }
}
