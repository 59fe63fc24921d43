//! Linearizability of a recorded history: a Wing-Gong-Lowe search with porcupine's memoization.
//!
//! Invariant: `Verdict::Linearizable` means an order of all definite operations (and of any
//! subset of the unknown ones) exists that respects real time (`a.ret < b.call` puts `a` first)
//! and in which `model::step` reproduces every observed answer; `Verdict::Violation` means none
//! exists. When the step budget runs out the verdict is `Unknown`, never a guess.
//!
//! Partitioning: every answer carries the store revision, one counter shared by all keys, so the
//! keys of an etcd history are not independent objects; splitting per key with exact revisions
//! would reject good histories, and splitting while ignoring revisions loses the cross-key order
//! revisions reveal. The main check therefore runs on the whole history, state = all keys plus
//! the revision, memoized on (set of linearized operations, state). Per-key checks ignore
//! revisions (`RevisionMode::Blind`, a relaxation: every projection of a linearizable history
//! passes it), so they are used only where a rejection is what we want: to narrow a violation to
//! one key, and to still find value-level violations when the whole-history search is too big.
//!
//! Ties: operations whose call and return times are equal are taken as overlapping.
//!
//! Lease expiries are not in the recorded history: `lease_checks::expiries` adds them as
//! unknown operations before the search (see there for when one may happen).
//!
//! Before searching, `quick_checks::impossible_read` rejects reads no write can explain, since
//! proving those by search means exhausting every order.

use crate::history::{Nanos, Operation, Outcome, Request};
use crate::lease_checks::expiries;
use crate::model::{step, RevisionMode, State};
use crate::quick_checks::impossible_read;
use std::collections::{BTreeSet, HashSet};
use std::fmt::Write as _;

#[derive(Clone, Copy, Debug)]
pub struct CheckOptions {
    /// Search steps allowed per search (the shortest-window search runs several).
    pub step_budget: u64,
    /// The store revision before the first operation (`History::initial_revision`).
    pub initial_revision: i64,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            step_budget: 5_000_000,
            initial_revision: 0,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    Violation(Violation),
    /// The search ran out of budget without a proof either way.
    Unknown(String),
}

/// The smallest failing window found: the shortest prefix of the history (operations still
/// running at its end count as unknown) that has no linearization, narrowed to one key when the
/// key's own operations already show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Indices into the checked operations, in call order.
    pub window: Vec<usize>,
    /// The key the window was narrowed to, if any.
    pub key: Option<String>,
    /// The end of the failing prefix: the return time of `closing`.
    pub cut: Nanos,
    /// The operation whose answer made the prefix impossible.
    pub closing: usize,
    /// A text naming the operations of the window.
    pub report: String,
}

/// Checks the operations of a history.
pub fn check_operations(ops: &[Operation], options: CheckOptions) -> Verdict {
    // The server's own lease expiries, appended so the recorded operations keep their indices.
    let with_expiries: Vec<Operation>;
    let ops = match expiries(ops) {
        e if e.is_empty() => ops,
        e => {
            with_expiries = ops.iter().cloned().chain(e).collect();
            &with_expiries
        }
    };
    if let Some((read, key, why)) = impossible_read(ops) {
        return Verdict::Violation(impossible_read_violation(ops, read, key, &why));
    }
    match search(&candidates(ops, None, None), RevisionMode::Exact, options) {
        Search::Linearizable => Verdict::Linearizable,
        Search::Illegal => Verdict::Violation(explain(ops, None, RevisionMode::Exact, options)),
        Search::BudgetExceeded => {
            let mut unsettled = Vec::new();
            for key in keys(ops) {
                let per_key = candidates(ops, None, Some(&key));
                match search(&per_key, RevisionMode::Blind, options) {
                    Search::Illegal => {
                        let v = explain(ops, Some(&key), RevisionMode::Blind, options);
                        return Verdict::Violation(v);
                    }
                    Search::BudgetExceeded => unsettled.push(key),
                    Search::Linearizable => {}
                }
            }
            Verdict::Unknown(format!(
                "the search over {} operations exceeded {} steps; per key (revisions ignored) \
                 no violation, undecided on {:?}",
                ops.len(),
                options.step_budget,
                unsettled
            ))
        }
    }
}

/// An operation as the search sees it (its outcome possibly turned unknown by a prefix cut).
struct Candidate<'a> {
    index: usize,
    request: &'a Request,
    outcome: &'a Outcome,
    call: Nanos,
    /// `None`: returns at infinity.
    ret: Option<Nanos>,
}

const UNKNOWN: Outcome = Outcome::Unknown;

/// The operations the search must place: failed ones never happened, unknown reads change
/// nothing; with `cut`, only operations called by then, those still running becoming unknown;
/// with `key`, only that key's single-key operations and the lease operations of its leases.
fn candidates<'a>(
    ops: &'a [Operation],
    cut: Option<Nanos>,
    key: Option<&str>,
) -> Vec<Candidate<'a>> {
    let leases = key.map(|k| leases_of(ops, k));
    let in_partition = |op: &Operation| match (key, &leases) {
        (Some(k), Some(leases)) => {
            op.request.key() == Some(k)
                || op.request.lease_id().is_some_and(|l| leases.contains(&l))
        }
        _ => true,
    };
    let mut out = Vec::new();
    for (index, op) in ops.iter().enumerate() {
        if op.outcome == Outcome::Failed || !in_partition(op) {
            continue;
        }
        if cut.is_some_and(|t| op.call > t) {
            continue;
        }
        let pending = match (cut, op.return_time()) {
            (_, None) => true,
            (Some(t), Some(r)) => r > t,
            (None, Some(_)) => false,
        };
        let (outcome, ret) = if pending {
            (&UNKNOWN, None)
        } else {
            (&op.outcome, Some(op.ret))
        };
        if pending && !op.request.may_write() {
            continue;
        }
        out.push(Candidate {
            index,
            request: &op.request,
            outcome,
            call: op.call,
            ret,
        });
    }
    out
}

/// The leases some operation attaches `key` to: their grants, revokes, keep-alives and expiries
/// belong to the key's partition (leases make keys dependent).
fn leases_of(ops: &[Operation], key: &str) -> BTreeSet<i64> {
    ops.iter()
        .filter(|op| op.request.key() == Some(key))
        .filter_map(|op| op.request.attaches_lease())
        .collect()
}

fn keys(ops: &[Operation]) -> BTreeSet<String> {
    ops.iter()
        .filter_map(|op| op.request.key().map(str::to_string))
        .collect()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Search {
    Linearizable,
    Illegal,
    BudgetExceeded,
}

const NIL: usize = usize::MAX;

/// The call and return events in time order, as a doubly linked list operations are lifted out
/// of when linearized and put back when the search backtracks.
struct Events {
    op: Vec<usize>,
    is_call: Vec<bool>,
    /// For a call event, its return event.
    partner: Vec<usize>,
    next: Vec<usize>,
    prev: Vec<usize>,
    head: usize,
}

impl Events {
    fn new(cands: &[Candidate]) -> Events {
        let mut order: Vec<(Nanos, u8, usize)> = Vec::with_capacity(cands.len() * 2);
        for (j, c) in cands.iter().enumerate() {
            order.push((c.call, 0, j));
            order.push((c.ret.unwrap_or(Nanos::MAX), 1, j));
        }
        order.sort_unstable();
        let n = order.len();
        let mut events = Events {
            op: order.iter().map(|e| e.2).collect(),
            is_call: order.iter().map(|e| e.1 == 0).collect(),
            partner: vec![NIL; n],
            next: (1..=n).map(|i| if i == n { NIL } else { i }).collect(),
            prev: (0..n).map(|i| if i == 0 { n } else { i - 1 }).collect(),
            head: n,
        };
        events.next.push(if n == 0 { NIL } else { 0 });
        events.prev.push(NIL);
        let mut call_of = vec![NIL; cands.len()];
        for e in 0..n {
            if events.is_call[e] {
                call_of[events.op[e]] = e;
            } else {
                events.partner[call_of[events.op[e]]] = e;
            }
        }
        events
    }

    fn unlink(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = n;
        if n != NIL {
            self.prev[n] = p;
        }
    }

    fn relink(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = e;
        if n != NIL {
            self.prev[n] = e;
        }
    }

    fn lift(&mut self, call: usize) {
        self.unlink(call);
        self.unlink(self.partner[call]);
    }

    fn unlift(&mut self, call: usize) {
        self.relink(self.partner[call]);
        self.relink(call);
    }
}

fn search(cands: &[Candidate], mode: RevisionMode, options: CheckOptions) -> Search {
    let budget = options.step_budget;
    let mut events = Events::new(cands);
    let mut linearized = vec![0u64; cands.len().div_ceil(64)];
    let mut seen: HashSet<(Vec<u64>, State)> = HashSet::new();
    let mut stack: Vec<(usize, State)> = Vec::new();
    let mut state = State::at_revision(options.initial_revision);
    let definite = |j: usize| cands[j].ret.is_some();
    let mut remaining = cands.iter().filter(|c| c.ret.is_some()).count();
    let mut entry = events.next[events.head];
    let mut steps = 0u64;
    loop {
        // Unknown operations left over simply never happened.
        if remaining == 0 {
            return Search::Linearizable;
        }
        steps += 1;
        if steps > budget {
            return Search::BudgetExceeded;
        }
        if entry != NIL && events.is_call[entry] {
            let j = events.op[entry];
            let c = &cands[j];
            if let Some(next_state) = step(&state, c.request, c.outcome, mode) {
                linearized[j / 64] |= 1 << (j % 64);
                if seen.insert((linearized.clone(), next_state.clone())) {
                    stack.push((entry, std::mem::replace(&mut state, next_state)));
                    events.lift(entry);
                    remaining -= usize::from(definite(j));
                    entry = events.next[events.head];
                    continue;
                }
                linearized[j / 64] &= !(1 << (j % 64));
            }
            entry = events.next[entry];
        } else {
            // A return (or the end): the operation had to be placed by now; undo the last choice.
            let Some((call, previous)) = stack.pop() else {
                return Search::Illegal;
            };
            let j = events.op[call];
            state = previous;
            linearized[j / 64] &= !(1 << (j % 64));
            remaining += usize::from(definite(j));
            events.unlift(call);
            entry = events.next[call];
        }
    }
}

/// Finds the shortest failing prefix (of `key`'s operations when given) and describes it.
/// The caller has established that the whole selection fails.
fn explain(
    ops: &[Operation],
    key: Option<&str>,
    mode: RevisionMode,
    options: CheckOptions,
) -> Violation {
    let (mut cut, mut key, mut mode) = (
        shortest_failing_cut(ops, key, mode, options),
        key.map(str::to_string),
        mode,
    );
    if key.is_none() {
        // Narrow to one key when its operations alone already cannot be ordered.
        let in_prefix: BTreeSet<String> = candidates(ops, Some(cut), None)
            .iter()
            .filter_map(|c| c.request.key().map(str::to_string))
            .collect();
        for k in in_prefix {
            if search(
                &candidates(ops, Some(cut), Some(&k)),
                RevisionMode::Blind,
                options,
            ) == Search::Illegal
            {
                cut = shortest_failing_cut(ops, Some(&k), RevisionMode::Blind, options);
                key = Some(k);
                mode = RevisionMode::Blind;
                break;
            }
        }
    }
    let window: Vec<usize> = candidates(ops, Some(cut), key.as_deref())
        .iter()
        .map(|c| c.index)
        .collect();
    let closing = window
        .iter()
        .copied()
        .find(|&i| ops[i].return_time() == Some(cut))
        .unwrap_or(0);
    let mut report = format!(
        "not linearizable: the {} operations called until {} (when `{}` returned) have no valid order",
        window.len(),
        cut,
        ops[closing]
    );
    if let Some(k) = &key {
        let how = if mode == RevisionMode::Blind {
            ", even ignoring revisions"
        } else {
            ""
        };
        let _ = write!(report, "; the operations on key `{k}` alone show it{how}");
    }
    report.push_str(":\n");
    for &i in &window {
        let _ = writeln!(report, "  #{i} {}", ops[i]);
    }
    Violation {
        window,
        key,
        cut,
        closing,
        report,
    }
}

/// A read no order can explain: the window is its key's operations called before it returned.
fn impossible_read_violation(ops: &[Operation], read: usize, key: String, why: &str) -> Violation {
    let cut = ops[read].ret;
    let mut window: Vec<usize> = candidates(ops, Some(cut), Some(&key))
        .iter()
        .map(|c| c.index)
        .collect();
    if !window.contains(&read) {
        window.push(read);
    }
    let mut report = format!(
        "not linearizable: #{read} `{}` is impossible: {why}:\n",
        ops[read]
    );
    for &i in &window {
        let _ = writeln!(report, "  #{i} {}", ops[i]);
    }
    Violation {
        window,
        key: Some(key),
        cut,
        closing: read,
        report,
    }
}

/// Binary search over the return times for the earliest end of a prefix without a linearization
/// (a prefix of a linearizable history is linearizable, so failure is monotone in the cut).
fn shortest_failing_cut(
    ops: &[Operation],
    key: Option<&str>,
    mode: RevisionMode,
    options: CheckOptions,
) -> Nanos {
    let mut cuts: Vec<Nanos> = candidates(ops, None, key)
        .iter()
        .filter_map(|c| c.ret)
        .collect();
    cuts.sort_unstable();
    cuts.dedup();
    let fails =
        |cut: Nanos| search(&candidates(ops, Some(cut), key), mode, options) == Search::Illegal;
    let (mut lo, mut hi) = (0, cuts.len().saturating_sub(1));
    while lo < hi {
        let mid = (lo + hi) / 2;
        if fails(cuts[mid]) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    cuts.get(hi).copied().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Compare, Response, TxnWrite, ValueAt};

    fn op(client: u32, call: Nanos, ret: Nanos, request: Request, outcome: Outcome) -> Operation {
        Operation {
            client,
            call,
            ret,
            request,
            outcome,
        }
    }
    fn put(key: &str, value: &str) -> Request {
        Request::Put {
            key: key.into(),
            value: value.into(),
        }
    }
    fn get(key: &str) -> Request {
        Request::Get { key: key.into() }
    }
    fn put_ok(revision: i64) -> Outcome {
        Outcome::Ok(Response::Put { revision })
    }
    fn got(revision: i64, value: Option<(&str, i64)>) -> Outcome {
        let kv = value.map(|(v, m)| ValueAt {
            value: v.into(),
            mod_revision: m,
        });
        Outcome::Ok(Response::Get { revision, kv })
    }
    fn check(ops: &[Operation]) -> Verdict {
        check_operations(ops, CheckOptions::default())
    }
    fn violation(ops: &[Operation]) -> Violation {
        match check(ops) {
            Verdict::Violation(v) => v,
            other => panic!("expected a violation, got {other:?}"),
        }
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let ops = [
            op(1, 0, 10, put("a", "1"), put_ok(1)),
            op(2, 20, 30, get("a"), got(1, Some(("1", 1)))),
            op(1, 40, 50, put("b", "2"), put_ok(2)),
            op(
                2,
                60,
                70,
                Request::Range {
                    prefix: "".into(),
                    limit: 1,
                },
                Outcome::Ok(Response::Range {
                    revision: 2,
                    kvs: vec![crate::history::KeyValue {
                        key: "a".into(),
                        value: "1".into(),
                        mod_revision: 1,
                    }],
                    count: 2,
                }),
            ),
        ];
        assert_eq!(check(&ops), Verdict::Linearizable);
    }

    #[test]
    fn stale_read_after_completed_write_is_rejected() {
        let ops = [
            op(1, 0, 10, put("a", "1"), put_ok(1)),
            op(1, 20, 30, put("a", "2"), put_ok(2)),
            op(2, 40, 50, get("a"), got(1, Some(("1", 1)))),
        ];
        let v = violation(&ops);
        assert_eq!(v.key.as_deref(), Some("a"));
        assert_eq!(v.closing, 2);
        assert!(v.report.contains("get(a)"), "{}", v.report);
    }

    #[test]
    fn concurrent_read_may_see_old_or_new_value() {
        for seen in [None, Some(("1", 1))] {
            let rev = if seen.is_some() { 1 } else { 0 };
            let ops = [
                op(1, 0, 100, put("a", "1"), put_ok(1)),
                op(2, 10, 20, get("a"), got(rev, seen)),
            ];
            assert_eq!(check(&ops), Verdict::Linearizable, "read saw {seen:?}");
        }
    }

    #[test]
    fn overlapping_writes_in_the_order_their_revisions_show_are_accepted() {
        // client 1's put was called first yet got the later revision: they overlap, so that order is legal.
        let ops = [
            op(1, 0, 100, put("a", "x"), put_ok(2)),
            op(2, 5, 90, put("b", "y"), put_ok(1)),
            op(3, 110, 120, get("a"), got(2, Some(("x", 2)))),
        ];
        assert_eq!(check(&ops), Verdict::Linearizable);
    }

    #[test]
    fn revisions_order_keys_even_when_values_look_fine() {
        // b's put returned before a's put was called, yet claims the later revision.
        let ops = [
            op(1, 0, 10, put("b", "y"), put_ok(2)),
            op(2, 20, 30, put("a", "x"), put_ok(1)),
        ];
        let v = violation(&ops);
        assert_eq!(v.key, None, "only the revisions show it: {}", v.report);
    }

    #[test]
    fn read_of_a_value_never_written_is_rejected() {
        let ops = [
            op(1, 0, 10, put("a", "1"), put_ok(1)),
            op(2, 5, 15, get("a"), got(1, Some(("9", 1)))),
        ];
        assert!(matches!(check(&ops), Verdict::Violation(_)));
    }

    #[test]
    fn read_of_a_failed_write_is_rejected() {
        let ops = [
            op(1, 0, 10, put("a", "1"), Outcome::Failed),
            op(2, 20, 30, get("a"), got(1, Some(("1", 1)))),
        ];
        assert!(matches!(check(&ops), Verdict::Violation(_)));
    }

    #[test]
    fn unknown_write_may_take_effect_late_or_never() {
        let took_effect = [
            op(1, 0, 10, put("a", "1"), Outcome::Unknown),
            op(2, 20, 30, get("a"), got(0, None)),
            op(2, 40, 50, get("a"), got(1, Some(("1", 1)))),
        ];
        assert_eq!(check(&took_effect), Verdict::Linearizable);
        let never = [
            op(1, 0, 10, put("a", "1"), Outcome::Unknown),
            op(2, 20, 30, get("a"), got(0, None)),
        ];
        assert_eq!(check(&never), Verdict::Linearizable);
    }

    #[test]
    fn unknown_write_cannot_take_effect_before_its_call() {
        let ops = [
            op(2, 0, 10, get("a"), got(1, Some(("1", 1)))),
            op(1, 20, 30, put("a", "1"), Outcome::Unknown),
        ];
        assert!(matches!(check(&ops), Verdict::Violation(_)));
    }

    #[test]
    fn value_that_disappears_and_comes_back_is_rejected() {
        let ops = [
            op(1, 0, 10, put("a", "1"), put_ok(1)),
            op(2, 20, 30, get("a"), got(1, Some(("1", 1)))),
            op(2, 40, 50, get("a"), got(1, None)),
        ];
        assert!(matches!(check(&ops), Verdict::Violation(_)));
    }

    #[test]
    fn compare_and_set_on_value_and_mod_revision() {
        // (client, call, compare, new value, answered revision, succeeded)
        let cas = |client, call, compare, value: &str, revision, succeeded| {
            let then = TxnWrite::Put(value.into());
            let request = Request::Txn {
                key: "a".into(),
                compare,
                then,
            };
            let answer = Response::Txn {
                revision,
                succeeded,
                deleted: 0,
            };
            op(client, call, call + 10, request, Outcome::Ok(answer))
        };
        let by_value = || Compare::ValueEquals("1".into());
        let ops = [
            op(1, 0, 10, put("a", "1"), put_ok(1)),
            cas(1, 20, by_value(), "2", 2, true),
            cas(2, 40, Compare::ModRevisionEquals(1), "3", 2, false),
            cas(2, 60, Compare::ModRevisionEquals(2), "3", 3, true),
        ];
        assert_eq!(check(&ops), Verdict::Linearizable);
        // Two compare-and-sets on the same old value cannot both succeed.
        let double = [
            op(1, 0, 10, put("a", "1"), put_ok(1)),
            cas(1, 20, by_value(), "2", 2, true),
            cas(2, 20, by_value(), "3", 3, true),
        ];
        let v = violation(&double);
        assert_eq!(v.key.as_deref(), Some("a"));
    }

    #[test]
    fn window_is_the_shortest_failing_prefix() {
        let mut ops = vec![
            op(1, 0, 10, put("a", "1"), put_ok(1)),
            op(1, 20, 30, put("a", "2"), put_ok(2)),
            op(2, 40, 50, get("a"), got(2, Some(("1", 1)))),
        ];
        for i in 0..20 {
            ops.push(op(
                3,
                100 + i * 10,
                105 + i * 10,
                put("b", &i.to_string()),
                put_ok(3 + i as i64),
            ));
        }
        let v = violation(&ops);
        assert_eq!(v.cut, 50);
        assert_eq!(v.window, vec![0, 1, 2]);
    }

    #[test]
    fn budget_exhaustion_is_reported_as_unknown() {
        let ops: Vec<Operation> = (0..12)
            .map(|i| op(i, 0, 1000, put("a", &i.to_string()), Outcome::Unknown))
            .chain(std::iter::once(op(
                99,
                2000,
                2010,
                get("a"),
                got(1, Some(("5", 1))),
            )))
            .collect();
        let verdict = check_operations(
            &ops,
            CheckOptions {
                step_budget: 5,
                ..CheckOptions::default()
            },
        );
        assert!(matches!(verdict, Verdict::Unknown(_)), "{verdict:?}");
    }
}
