//! The sequential specification: an etcd key-value store with leases and compaction as a pure
//! state machine.
//!
//! Invariant: `State::apply` is deterministic and follows etcd's revision rules: every request
//! that changes a key raises the store revision by exactly one (a lease revoke or expiry deleting
//! several keys raises it once; a delete or txn that removes nothing, a failed compare, a lease
//! grant, a compaction and every read leave it unchanged), and a written key's mod_revision is
//! the new store revision. A history is linearizable iff some order of its operations, each
//! applied with `step`, reproduces every observed answer.
//!
//! Reads at a past revision (a list's continuation page) are answered from `Past`, the undo log
//! of every change above the compact revision; a read below the compact revision fails with
//! etcd's "mvcc: required revision has been compacted".
//!
//! Leases: the model knows which leases are alive and which key is attached to which, not time.
//! When a lease may expire is the checker's business (`lease_checks::expiries` adds a
//! `LeaseExpiry` operation that the search may place only after the earliest expiry instant).
//! A keep-alive checks only that the lease is alive; a TimeToLive answer above 0 needs it alive
//! (etcd may answer 0 or -1 for a lease that expired but whose revoke is not yet applied).

use crate::history::{Compare, KeyValue, Outcome, Request, Response, TxnWrite, ValueAt};
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

/// etcd's answers to requests on a missing lease (gRPC NotFound).
pub const LEASE_NOT_FOUND: &str = "etcdserver: requested lease not found";
/// etcd's answer to a grant of an id in use (gRPC FailedPrecondition).
pub const LEASE_EXISTS: &str = "etcdserver: lease already exists";
/// etcd's answer to a read or compaction at or below a compacted revision (gRPC OutOfRange).
pub const COMPACTED: &str = "mvcc: required revision has been compacted";
/// etcd's answer to a read or compaction above the current revision (gRPC OutOfRange).
pub const FUTURE_REVISION: &str = "mvcc: required revision is a future revision";

/// How answers are compared with the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RevisionMode {
    /// Revisions are part of the answer: the whole store is one object (exact check).
    Exact,
    /// Revisions are ignored: only values, presence and compare results are checked. Used on the
    /// operations of a single key, where the global revision counter cannot be reproduced; it
    /// accepts every history the exact check accepts (a relaxation), so a rejection is real.
    Blind,
}

/// The store: every live key with its value and mod_revision, the store revision, the live
/// leases and the keys attached to them, the compact revision and the undo log above it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct State {
    pub revision: i64,
    pub kvs: BTreeMap<String, ValueAt>,
    pub leases: BTreeSet<i64>,
    /// The lease each attached key belongs to.
    pub key_leases: BTreeMap<String, i64>,
    /// Reads below this revision fail; 0 before any compaction.
    pub compacted: i64,
    past: Past,
}

/// The changes above the compact revision, newest first, each with the key's previous value, as
/// a shared persistent list: a search step clones it in O(1). Equal states have equal lists;
/// the fingerprint (a hash of the entries) makes hashing O(1) and most inequalities cheap.
#[derive(Clone, Debug, Default)]
struct Past {
    newest: Option<Arc<Undo>>,
    fingerprint: u64,
}

#[derive(Debug)]
struct Undo {
    revision: i64,
    key: String,
    before: Option<ValueAt>,
    older: Option<Arc<Undo>>,
}

impl Drop for Undo {
    /// Unlinks the tail iteratively: a long log dropped recursively would overflow the stack.
    fn drop(&mut self) {
        let mut next = self.older.take();
        while let Some(node) = next {
            next = match Arc::try_unwrap(node) {
                Ok(mut owned) => owned.older.take(),
                Err(_) => None,
            };
        }
    }
}

impl Past {
    fn iter(&self) -> impl Iterator<Item = &Undo> {
        std::iter::successors(self.newest.as_deref(), |u| u.older.as_deref())
    }

    fn record(&mut self, revision: i64, key: &str, before: Option<ValueAt>) {
        let mut h = DefaultHasher::new();
        (revision, key, &before, self.fingerprint).hash(&mut h);
        self.fingerprint = h.finish();
        self.newest = Some(Arc::new(Undo {
            revision,
            key: key.to_string(),
            before,
            older: self.newest.take(),
        }));
    }

    /// Keeps only the changes above `revision`.
    fn forget_up_to(&mut self, revision: i64) {
        let kept: Vec<(i64, String, Option<ValueAt>)> = self
            .iter()
            .take_while(|u| u.revision > revision)
            .map(|u| (u.revision, u.key.clone(), u.before.clone()))
            .collect();
        *self = Past::default();
        for (rev, key, before) in kept.into_iter().rev() {
            self.record(rev, &key, before);
        }
    }
}

impl PartialEq for Past {
    /// Walks both lists to the first node they share: states the search reaches along different
    /// paths share the log below the point where the paths split, so equal states compare in
    /// the length of what differs, not of the whole log.
    fn eq(&self, other: &Past) -> bool {
        if self.fingerprint != other.fingerprint {
            return false;
        }
        let (mut a, mut b) = (self.newest.as_ref(), other.newest.as_ref());
        loop {
            match (a, b) {
                (None, None) => return true,
                (Some(x), Some(y)) if Arc::ptr_eq(x, y) => return true,
                (Some(x), Some(y)) => {
                    if x.revision != y.revision || x.key != y.key || x.before != y.before {
                        return false;
                    }
                    (a, b) = (x.older.as_ref(), y.older.as_ref());
                }
                _ => return false,
            }
        }
    }
}
impl Eq for Past {}
impl Hash for Past {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.fingerprint.hash(state);
    }
}

fn error(message: &str) -> Response {
    Response::Error(message.to_string())
}

impl State {
    /// An empty store at `revision` (a fresh etcd store is at revision 1).
    pub fn at_revision(revision: i64) -> State {
        State {
            revision,
            ..State::default()
        }
    }

    /// Executes `request` against this state: the next state and the answer etcd would give.
    pub fn apply(&self, request: &Request) -> (State, Response) {
        let mut next = self.clone();
        let response = next.execute(request);
        (next, response)
    }

    fn execute(&mut self, request: &Request) -> Response {
        match request {
            Request::Put { key, value } => {
                self.write(key, value, None);
                Response::Put {
                    revision: self.revision,
                }
            }
            Request::PutWithLease { key, value, lease } => {
                if !self.leases.contains(lease) {
                    return error(LEASE_NOT_FOUND);
                }
                self.write(key, value, Some(*lease));
                Response::Put {
                    revision: self.revision,
                }
            }
            Request::Get { key } => Response::Get {
                revision: self.revision,
                kv: self.kvs.get(key).cloned(),
            },
            Request::Delete { key } => {
                let deleted = self.remove_keys(std::slice::from_ref(key));
                Response::Delete {
                    revision: self.revision,
                    deleted,
                }
            }
            Request::Txn { key, compare, then } => {
                let current = self.kvs.get(key);
                let succeeded = match compare {
                    Compare::ValueEquals(v) => current.is_some_and(|kv| &kv.value == v),
                    Compare::ModRevisionEquals(r) => current.map_or(0, |kv| kv.mod_revision) == *r,
                };
                if let (true, TxnWrite::PutWithLease(_, lease)) = (succeeded, then) {
                    // etcd checks the leases of the branch taken before applying anything.
                    if !self.leases.contains(lease) {
                        return error(LEASE_NOT_FOUND);
                    }
                }
                let deleted = self.txn_write(key, succeeded, then);
                Response::Txn {
                    revision: self.revision,
                    succeeded,
                    deleted,
                }
            }
            Request::Range { prefix, limit } => {
                let matching = self
                    .kvs
                    .range(prefix.clone()..)
                    .take_while(|(k, _)| k.starts_with(prefix.as_str()));
                range_answer(self.revision, matching, *limit, false)
            }
            Request::List {
                start,
                end,
                limit,
                revision,
                count_only,
            } => {
                if *revision > self.revision {
                    return error(FUTURE_REVISION);
                }
                if *revision > 0 && *revision < self.compacted {
                    return error(COMPACTED);
                }
                let at = if *revision > 0 && *revision < self.revision {
                    self.kvs_at(*revision)
                } else {
                    self.kvs.clone()
                };
                let matching = at
                    .range(start.clone()..)
                    .take_while(|(k, _)| end.is_empty() || k.as_str() < end.as_str());
                range_answer(self.revision, matching, *limit, *count_only)
            }
            Request::Compact { revision } => {
                if *revision <= self.compacted {
                    return error(COMPACTED);
                }
                if *revision > self.revision {
                    return error(FUTURE_REVISION);
                }
                self.compacted = *revision;
                self.past.forget_up_to(*revision);
                Response::Compact {
                    revision: self.revision,
                }
            }
            Request::LeaseGrant { id, ttl } => {
                if !self.leases.insert(*id) {
                    return error(LEASE_EXISTS);
                }
                Response::LeaseGrant {
                    revision: self.revision,
                    id: *id,
                    ttl: *ttl,
                }
            }
            Request::LeaseRevoke { id } | Request::LeaseExpiry { id } => {
                if !self.leases.remove(id) {
                    return error(LEASE_NOT_FOUND);
                }
                let keys: Vec<String> = self
                    .key_leases
                    .iter()
                    .filter(|(_, l)| *l == id)
                    .map(|(k, _)| k.clone())
                    .collect();
                self.remove_keys(&keys);
                Response::LeaseRevoke {
                    revision: self.revision,
                }
            }
            Request::LeaseKeepAlive { id } => match self.leases.contains(id) {
                true => Response::LeaseKeepAlive { ttl: 1 },
                false => error(LEASE_NOT_FOUND),
            },
            Request::LeaseTimeToLive { id } => Response::LeaseTimeToLive {
                ttl: if self.leases.contains(id) { 1 } else { -1 },
                raft_term: 0,
            },
        }
    }

    /// The live keys at a past `revision` (at or above the compact revision).
    fn kvs_at(&self, revision: i64) -> BTreeMap<String, ValueAt> {
        let mut kvs = self.kvs.clone();
        for undo in self.past.iter().take_while(|u| u.revision > revision) {
            match &undo.before {
                Some(kv) => kvs.insert(undo.key.clone(), kv.clone()),
                None => kvs.remove(&undo.key),
            };
        }
        kvs
    }

    fn write(&mut self, key: &str, value: &str, lease: Option<i64>) {
        self.revision += 1;
        let kv = ValueAt {
            value: value.to_string(),
            mod_revision: self.revision,
        };
        let before = self.kvs.insert(key.to_string(), kv);
        self.past.record(self.revision, key, before);
        match lease {
            Some(lease) => self.key_leases.insert(key.to_string(), lease),
            None => self.key_leases.remove(key),
        };
    }

    /// Performs a transaction's write when its compare succeeded; returns the keys deleted.
    fn txn_write(&mut self, key: &str, succeeded: bool, then: &TxnWrite) -> i64 {
        match (succeeded, then) {
            (false, _) => 0,
            (true, TxnWrite::Put(value)) => {
                self.write(key, value, None);
                0
            }
            (true, TxnWrite::PutWithLease(value, lease)) => {
                self.write(key, value, Some(*lease));
                0
            }
            (true, TxnWrite::Delete) => self.remove_keys(std::slice::from_ref(&key.to_string())),
        }
    }

    /// Removes `keys` in one revision, raised only when something was removed. Returns the count.
    fn remove_keys(&mut self, keys: &[String]) -> i64 {
        let present: Vec<&String> = keys.iter().filter(|k| self.kvs.contains_key(*k)).collect();
        if present.is_empty() {
            return 0;
        }
        self.revision += 1;
        for key in &present {
            let before = self.kvs.remove(*key);
            self.key_leases.remove(*key);
            self.past.record(self.revision, key, before);
        }
        present.len() as i64
    }

    /// Forgets revisions (for `RevisionMode::Blind`), so states differing only there are equal.
    fn blinded(mut self) -> State {
        self.revision = 0;
        self.compacted = 0;
        self.past = Past::default();
        for kv in self.kvs.values_mut() {
            kv.mod_revision = 0;
        }
        self
    }
}

/// A range answer: the matching keys in order, at most `limit` (0: all), none when `count_only`.
fn range_answer<'a>(
    revision: i64,
    matching: impl Iterator<Item = (&'a String, &'a ValueAt)>,
    limit: i64,
    count_only: bool,
) -> Response {
    let all: Vec<KeyValue> = matching
        .map(|(k, v)| KeyValue {
            key: k.clone(),
            value: v.value.clone(),
            mod_revision: v.mod_revision,
        })
        .collect();
    let count = all.len() as i64;
    let kvs = match (count_only, limit) {
        (true, _) => Vec::new(),
        (false, l) if l > 0 => all.into_iter().take(l as usize).collect(),
        _ => all,
    };
    Response::Range {
        revision,
        kvs,
        count,
    }
}

/// Linearizes one operation at this point: the next state, or `None` when the observed answer
/// cannot be produced here. An unknown outcome accepts whatever the model answers.
pub fn step(
    state: &State,
    request: &Request,
    outcome: &Outcome,
    mode: RevisionMode,
) -> Option<State> {
    match mode {
        RevisionMode::Exact => {
            let (next, expected) = state.apply(request);
            match outcome {
                Outcome::Ok(observed) if !same_answer(observed, &expected) => None,
                _ => Some(next),
            }
        }
        RevisionMode::Blind => step_blind(state, request, outcome),
    }
}

/// Exact comparison, except where the model knows less than the server: a grant may raise the
/// TTL (etcd's minimum TTL), a keep-alive's TTL is not modelled, and a remaining TTL only says
/// whether the lease must be alive.
fn same_answer(observed: &Response, expected: &Response) -> bool {
    match (observed, expected) {
        (
            Response::LeaseGrant { revision, id, ttl },
            Response::LeaseGrant {
                revision: r,
                id: i,
                ttl: asked,
            },
        ) => revision == r && id == i && ttl >= asked,
        (Response::LeaseKeepAlive { ttl }, Response::LeaseKeepAlive { .. }) => *ttl > 0,
        (Response::LeaseTimeToLive { ttl, .. }, Response::LeaseTimeToLive { ttl: alive, .. }) => {
            *ttl <= 0 || *alive > 0
        }
        _ => observed == expected,
    }
}

fn step_blind(state: &State, request: &Request, outcome: &Outcome) -> Option<State> {
    // Without revisions a mod_revision compare cannot be evaluated: take the branch the client
    // was told (an unknown outcome is taken as succeeded; "failed" equals "never happened").
    if let Request::Txn {
        key,
        compare: Compare::ModRevisionEquals(_),
        then,
    } = request
    {
        let succeeded = match outcome {
            Outcome::Ok(Response::Txn { succeeded, .. }) => *succeeded,
            Outcome::Ok(Response::Error(_)) => return Some(state.clone()),
            Outcome::Ok(_) => return None,
            _ => true,
        };
        let mut next = state.clone();
        if let (true, TxnWrite::PutWithLease(_, lease)) = (succeeded, then) {
            if !next.leases.contains(lease) {
                return (!outcome_is_ok_txn(outcome)).then_some(next);
            }
        }
        let deleted = next.txn_write(key, succeeded, then);
        if let Outcome::Ok(Response::Txn {
            deleted: observed, ..
        }) = outcome
        {
            if *observed != deleted {
                return None;
            }
        }
        return Some(next.blinded());
    }
    // A read at a past revision cannot be answered without revisions: any answer goes.
    if matches!(request, Request::List { revision, .. } if *revision > 0) {
        return Some(state.clone());
    }
    let (next, expected) = state.apply(request);
    match outcome {
        Outcome::Ok(observed) if !same_ignoring_revisions(observed, &expected) => None,
        _ => Some(next.blinded()),
    }
}

fn outcome_is_ok_txn(outcome: &Outcome) -> bool {
    matches!(outcome, Outcome::Ok(Response::Txn { .. }))
}

fn same_ignoring_revisions(observed: &Response, expected: &Response) -> bool {
    match (observed, expected) {
        (Response::Put { .. }, Response::Put { .. }) => true,
        (Response::Get { kv: a, .. }, Response::Get { kv: b, .. }) => {
            a.as_ref().map(|kv| &kv.value) == b.as_ref().map(|kv| &kv.value)
        }
        (Response::Delete { deleted: a, .. }, Response::Delete { deleted: b, .. }) => a == b,
        (
            Response::Txn {
                succeeded: a,
                deleted: da,
                ..
            },
            Response::Txn {
                succeeded: b,
                deleted: db,
                ..
            },
        ) => a == b && da == db,
        (
            Response::Range {
                kvs: a, count: ca, ..
            },
            Response::Range {
                kvs: b, count: cb, ..
            },
        ) => {
            ca == cb
                && a.len() == b.len()
                && a.iter()
                    .zip(b)
                    .all(|(x, y)| x.key == y.key && x.value == y.value)
        }
        (Response::LeaseGrant { id, ttl, .. }, Response::LeaseGrant { id: i, ttl: t, .. }) => {
            id == i && ttl >= t
        }
        (Response::LeaseRevoke { .. }, Response::LeaseRevoke { .. })
        | (Response::Compact { .. }, Response::Compact { .. }) => true,
        // Compaction errors depend on revisions.
        (Response::Error(m), _) if m == COMPACTED || m == FUTURE_REVISION => true,
        _ => same_answer(observed, expected),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value: &str) -> Request {
        Request::Put {
            key: key.into(),
            value: value.into(),
        }
    }

    #[test]
    fn puts_raise_the_revision_and_set_mod_revision() {
        let (s, r) = State::default().apply(&put("a", "1"));
        assert_eq!(r, Response::Put { revision: 1 });
        let (s, r) = s.apply(&put("b", "2"));
        assert_eq!(r, Response::Put { revision: 2 });
        let (_, r) = s.apply(&Request::Get { key: "a".into() });
        assert_eq!(
            r,
            Response::Get {
                revision: 2,
                kv: Some(ValueAt {
                    value: "1".into(),
                    mod_revision: 1
                })
            }
        );
    }

    #[test]
    fn delete_of_absent_key_and_failed_txn_leave_revision_unchanged() {
        let (s, _) = State::default().apply(&put("a", "1"));
        let (s, r) = s.apply(&Request::Delete { key: "x".into() });
        assert_eq!(
            r,
            Response::Delete {
                revision: 1,
                deleted: 0
            }
        );
        let txn = Request::Txn {
            key: "a".into(),
            compare: Compare::ValueEquals("9".into()),
            then: TxnWrite::Delete,
        };
        let (s, r) = s.apply(&txn);
        assert_eq!(
            r,
            Response::Txn {
                revision: 1,
                succeeded: false,
                deleted: 0
            }
        );
        assert_eq!(s.revision, 1);
    }

    #[test]
    fn mod_revision_compare_sees_absent_key_as_zero_and_value_compare_fails_on_it() {
        let create = Request::Txn {
            key: "a".into(),
            compare: Compare::ModRevisionEquals(0),
            then: TxnWrite::Put("v".into()),
        };
        let (s, r) = State::default().apply(&create);
        assert_eq!(
            r,
            Response::Txn {
                revision: 1,
                succeeded: true,
                deleted: 0
            }
        );
        let by_value = Request::Txn {
            key: "b".into(),
            compare: Compare::ValueEquals("".into()),
            then: TxnWrite::Delete,
        };
        let (_, r) = s.apply(&by_value);
        assert_eq!(
            r,
            Response::Txn {
                revision: 1,
                succeeded: false,
                deleted: 0
            }
        );
    }

    #[test]
    fn range_returns_limit_keys_in_order_and_counts_all() {
        let mut s = State::default();
        for k in ["p/c", "p/a", "q", "p/b"] {
            s = s.apply(&put(k, k)).0;
        }
        let (_, r) = s.apply(&Request::Range {
            prefix: "p/".into(),
            limit: 2,
        });
        let Response::Range {
            kvs,
            count,
            revision,
        } = r
        else {
            panic!("not a range answer")
        };
        assert_eq!((count, revision), (3, 4));
        let keys: Vec<_> = kvs.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(keys, ["p/a", "p/b"]);
    }

    #[test]
    fn blind_mode_ignores_revisions_but_not_values() {
        let s = State::default().apply(&put("a", "1")).0.blinded();
        let wrong_rev = Outcome::Ok(Response::Get {
            revision: 77,
            kv: Some(ValueAt {
                value: "1".into(),
                mod_revision: 5,
            }),
        });
        assert!(step(
            &s,
            &Request::Get { key: "a".into() },
            &wrong_rev,
            RevisionMode::Blind
        )
        .is_some());
        assert!(step(
            &s,
            &Request::Get { key: "a".into() },
            &wrong_rev,
            RevisionMode::Exact
        )
        .is_none());
        let wrong_value = Outcome::Ok(Response::Get {
            revision: 0,
            kv: Some(ValueAt {
                value: "2".into(),
                mod_revision: 0,
            }),
        });
        assert!(step(
            &s,
            &Request::Get { key: "a".into() },
            &wrong_value,
            RevisionMode::Blind
        )
        .is_none());
    }
}
