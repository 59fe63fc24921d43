//! Generated histories with leases, lists at past revisions and compaction, linearizable by
//! construction (each operation takes effect at 100·i in a sequential run of the model, its call
//! and return spread around that point so neighbours overlap): they must be accepted, quickly;
//! and one changed answer must make them rejected.

use etcd_robustness::history::{Compare, Operation, Outcome, Request, Response, TxnWrite};
use etcd_robustness::linearizability::{check_operations, CheckOptions, Verdict};
use etcd_robustness::model::State;
use std::time::Instant;

const KEYS: [&str; 4] = ["p/a", "p/b", "p/c", "q"];
/// TTLs far beyond the run's span: no lease of these histories may expire.
const LONG_TTL: i64 = 1_000;

fn random_request(
    rng: &mut fastrand::Rng,
    state: &State,
    i: usize,
    leases: &mut Vec<i64>,
) -> Request {
    let key = KEYS[rng.usize(..KEYS.len())].to_string();
    let lease = (!leases.is_empty()).then(|| leases[rng.usize(..leases.len())]);
    match (rng.u8(..12), lease) {
        (0, _) | (1, None) => {
            leases.push(i as i64 + 1);
            Request::LeaseGrant {
                id: i as i64 + 1,
                ttl: LONG_TTL,
            }
        }
        (1, Some(lease)) => Request::PutWithLease {
            key,
            value: format!("v{i}"),
            lease,
        },
        (2, Some(id)) => Request::LeaseRevoke { id },
        (3, Some(id)) => Request::LeaseKeepAlive { id },
        (4, _) => Request::Txn {
            key: key.clone(),
            compare: Compare::ModRevisionEquals(
                state.kvs.get(&key).map_or(0, |kv| kv.mod_revision),
            ),
            then: match lease {
                Some(l) if rng.bool() => TxnWrite::PutWithLease(format!("v{i}"), l),
                _ => TxnWrite::Put(format!("v{i}")),
            },
        },
        (5, _) => Request::Delete { key },
        (6 | 7, _) => Request::List {
            start: "p/".into(),
            end: "p0".into(),
            limit: rng.i64(0..3),
            revision: if rng.bool() {
                0
            } else {
                state.revision - rng.i64(0..4)
            },
            count_only: rng.u8(..4) == 0,
        },
        (8, _) if rng.u8(..6) == 0 && state.revision > 3 => Request::Compact {
            revision: state.revision - 2,
        },
        (9 | 10, _) => Request::Get { key },
        _ => Request::Put {
            key,
            value: format!("v{i}"),
        },
    }
}

fn generate(seed: u64, n: usize) -> Vec<Operation> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut state = State::default();
    let mut leases = Vec::new();
    let mut ops = Vec::with_capacity(n);
    for i in 0..n {
        let request = random_request(&mut rng, &state, i, &mut leases);
        let (next, answer) = state.apply(&request);
        let at = 100 * i as u64 + 1_000;
        // Five clients: one client's operations are 500 apart, so they never overlap.
        ops.push(Operation {
            client: (i % 5) as u32,
            call: at - rng.u64(0..150),
            ret: at + rng.u64(0..150),
            request,
            outcome: Outcome::Ok(answer),
        });
        state = next;
    }
    ops
}

#[test]
fn generated_lease_and_list_histories_are_accepted_quickly() {
    for seed in 0..5 {
        let ops = generate(seed, 2_000);
        let started = Instant::now();
        let verdict = check_operations(&ops, CheckOptions::default());
        assert_eq!(verdict, Verdict::Linearizable, "seed {seed}");
        let took = started.elapsed();
        eprintln!("seed {seed}: 2000 operations accepted in {took:?}");
        assert!(took.as_secs() < 20, "seed {seed} took {took:?}");
    }
}

#[test]
fn a_past_page_or_lease_answer_changed_is_rejected() {
    for seed in 0..5 {
        let ops = generate(seed, 300);
        // The last page read at a past revision, answered as the current one would be.
        let Some(i) = ops.iter().rposition(|op| {
            matches!(op.request, Request::List { revision, count_only: false, .. } if revision > 0)
                && matches!(&op.outcome, Outcome::Ok(Response::Range { count, .. }) if *count > 0)
        }) else {
            continue;
        };
        let mut bad = ops.clone();
        if let Outcome::Ok(Response::Range { kvs, count, .. }) = &mut bad[i].outcome {
            kvs.clear();
            *count = 0;
        }
        let verdict = check_operations(&bad, CheckOptions::default());
        assert!(
            matches!(verdict, Verdict::Violation(_)),
            "seed {seed}: {verdict:?}"
        );
    }
    // A keep-alive of a live lease answered "not found".
    let ops = generate(7, 300);
    let i = ops
        .iter()
        .position(|op| {
            matches!(op.request, Request::LeaseKeepAlive { .. })
                && matches!(op.outcome, Outcome::Ok(Response::LeaseKeepAlive { .. }))
        })
        .expect("a keep-alive of a live lease");
    let mut bad = ops;
    bad[i].outcome = Outcome::Ok(Response::Error(
        etcd_robustness::model::LEASE_NOT_FOUND.into(),
    ));
    let verdict = check_operations(&bad, CheckOptions::default());
    assert!(matches!(verdict, Verdict::Violation(_)), "{verdict:?}");
}
