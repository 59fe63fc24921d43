//! Necessary conditions on single reads, checked in linear time before the search.
//!
//! Invariant: a read flagged here is impossible in every linearization, so the history is not
//! linearizable and the search (which would have to exhaust every order to say so) is skipped.
//! A read of key k returning value v at mod_revision m needs a write of v to k that did not
//! definitely fail, was called before the read returned, and, if acknowledged, got revision m;
//! and m cannot exceed the read's own header revision.

use crate::history::{EventKind, Operation, Outcome, Response};
use crate::writes::change_of;

/// The first impossible read: its index, the key, and why.
pub fn impossible_read(ops: &[Operation]) -> Option<(usize, String, String)> {
    for (i, op) in ops.iter().enumerate() {
        let seen: Vec<(&str, &str, i64, i64)> = match &op.outcome {
            Outcome::Ok(Response::Get {
                revision,
                kv: Some(kv),
            }) => match op.request.key() {
                Some(key) => vec![(key, kv.value.as_str(), kv.mod_revision, *revision)],
                None => continue,
            },
            Outcome::Ok(Response::Range { revision, kvs, .. }) => kvs
                .iter()
                .map(|kv| {
                    (
                        kv.key.as_str(),
                        kv.value.as_str(),
                        kv.mod_revision,
                        *revision,
                    )
                })
                .collect(),
            _ => continue,
        };
        for (key, value, mod_revision, revision) in seen {
            if mod_revision > revision {
                return Some((
                    i,
                    key.into(),
                    format!("mod_revision {mod_revision} is above its revision {revision}"),
                ));
            }
            if !could_have_written(ops, i, key, value, mod_revision) {
                let why = format!("{key}={value}@{mod_revision} was not written by any operation called before it returned");
                return Some((i, key.into(), why));
            }
        }
    }
    None
}

fn could_have_written(
    ops: &[Operation],
    read: usize,
    key: &str,
    value: &str,
    mod_revision: i64,
) -> bool {
    ops.iter().any(|w| {
        let writes_it = change_of(&w.request).is_some_and(|(k, c)| {
            k == key && matches!(c, EventKind::Put { value: v } if v == value)
        });
        let revision_fits = match &w.outcome {
            Outcome::Failed => false,
            Outcome::Unknown => true,
            Outcome::Ok(Response::Put { revision }) => *revision == mod_revision,
            Outcome::Ok(Response::Txn {
                revision,
                succeeded,
                ..
            }) => *succeeded && *revision == mod_revision,
            Outcome::Ok(_) => false,
        };
        writes_it && revision_fits && w.call <= ops[read].ret
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{op, put_a as put};
    use crate::history::{Request, ValueAt};

    fn get(call: u64, value: &str, mod_revision: i64, revision: i64) -> Operation {
        let kv = Some(ValueAt {
            value: value.into(),
            mod_revision,
        });
        op(
            call,
            Request::Get { key: "a".into() },
            Outcome::Ok(Response::Get { revision, kv }),
        )
    }

    #[test]
    fn reads_of_possible_writes_pass() {
        let ops = [
            put(0, "1", Outcome::Ok(Response::Put { revision: 1 })),
            put(5, "2", Outcome::Unknown),
            get(8, "2", 2, 2),
        ];
        assert_eq!(impossible_read(&ops), None);
    }

    #[test]
    fn impossible_reads_are_flagged() {
        let acked = || put(0, "1", Outcome::Ok(Response::Put { revision: 1 }));
        let cases = [
            vec![acked(), get(20, "9", 1, 1)], // never written
            vec![put(0, "1", Outcome::Failed), get(20, "1", 1, 1)], // its write failed
            vec![acked(), get(20, "1", 4, 4)], // wrong mod_revision
            vec![get(0, "1", 1, 1), put(50, "1", Outcome::Unknown)], // written only later
            vec![acked(), get(20, "1", 1, 0)], // mod_revision above revision
        ];
        for (n, ops) in cases.iter().enumerate() {
            assert!(impossible_read(ops).is_some(), "case {n}");
        }
    }
}
