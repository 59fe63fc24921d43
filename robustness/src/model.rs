//! The sequential specification: an etcd key-value store as a pure state machine.
//!
//! Invariant: `State::apply` is deterministic and follows etcd's revision rules: every request
//! that changes a key raises the store revision by exactly one (a delete or txn that removes
//! nothing, a failed compare and every read leave it unchanged), and a written key's mod_revision
//! is the new store revision. A history is linearizable iff some order of its operations, each
//! applied with `step`, reproduces every observed answer.

use crate::history::{Compare, KeyValue, Outcome, Request, Response, TxnWrite, ValueAt};
use std::collections::BTreeMap;

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

/// The store: every live key with its value and mod_revision, and the store revision.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct State {
    pub revision: i64,
    pub kvs: BTreeMap<String, ValueAt>,
}

impl State {
    /// Executes `request` against this state: the next state and the answer etcd would give.
    pub fn apply(&self, request: &Request) -> (State, Response) {
        let mut next = self.clone();
        let response = match request {
            Request::Put { key, value } => {
                next.write(key, value);
                Response::Put {
                    revision: next.revision,
                }
            }
            Request::Get { key } => Response::Get {
                revision: next.revision,
                kv: next.kvs.get(key).cloned(),
            },
            Request::Delete { key } => {
                let deleted = next.remove(key);
                Response::Delete {
                    revision: next.revision,
                    deleted,
                }
            }
            Request::Txn { key, compare, then } => {
                let current = next.kvs.get(key);
                let succeeded = match compare {
                    Compare::ValueEquals(v) => current.is_some_and(|kv| &kv.value == v),
                    Compare::ModRevisionEquals(r) => current.map_or(0, |kv| kv.mod_revision) == *r,
                };
                let deleted = next.txn_write(key, succeeded, then);
                Response::Txn {
                    revision: next.revision,
                    succeeded,
                    deleted,
                }
            }
            Request::Range { prefix, limit } => {
                let matching = next
                    .kvs
                    .range(prefix.clone()..)
                    .take_while(|(k, _)| k.starts_with(prefix.as_str()));
                let all: Vec<KeyValue> = matching
                    .map(|(k, v)| KeyValue {
                        key: k.clone(),
                        value: v.value.clone(),
                        mod_revision: v.mod_revision,
                    })
                    .collect();
                let count = all.len() as i64;
                let kvs = if *limit > 0 {
                    all.into_iter().take(*limit as usize).collect()
                } else {
                    all
                };
                Response::Range {
                    revision: next.revision,
                    kvs,
                    count,
                }
            }
        };
        (next, response)
    }

    fn write(&mut self, key: &str, value: &str) {
        self.revision += 1;
        let kv = ValueAt {
            value: value.to_string(),
            mod_revision: self.revision,
        };
        self.kvs.insert(key.to_string(), kv);
    }

    /// Performs a transaction's write when its compare succeeded; returns the keys deleted.
    fn txn_write(&mut self, key: &str, succeeded: bool, then: &TxnWrite) -> i64 {
        match (succeeded, then) {
            (false, _) => 0,
            (true, TxnWrite::Put(value)) => {
                self.write(key, value);
                0
            }
            (true, TxnWrite::Delete) => self.remove(key),
        }
    }

    /// Removes `key`; the revision moves only when something was removed. Returns the count.
    fn remove(&mut self, key: &str) -> i64 {
        if self.kvs.remove(key).is_some() {
            self.revision += 1;
            1
        } else {
            0
        }
    }

    /// Forgets revisions (for `RevisionMode::Blind`), so states differing only there are equal.
    fn blinded(mut self) -> State {
        self.revision = 0;
        for kv in self.kvs.values_mut() {
            kv.mod_revision = 0;
        }
        self
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
                Outcome::Ok(observed) if *observed != expected => None,
                _ => Some(next),
            }
        }
        RevisionMode::Blind => step_blind(state, request, outcome),
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
            Outcome::Ok(_) => return None,
            _ => true,
        };
        let mut next = state.clone();
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
    let (next, expected) = state.apply(request);
    match outcome {
        Outcome::Ok(observed) if !same_ignoring_revisions(observed, &expected) => None,
        _ => Some(next.blinded()),
    }
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
        _ => false,
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
