//! No acknowledged write lost: a final read of the store accounts for every acknowledged change.
//!
//! Invariant: for a write acknowledged at revision r on key k, a linearizable final read at
//! revision F >= r shows k with mod_revision > r (overwritten), or exactly the written value at
//! r, or k absent (the write was a delete, or some delete of k could have come after it: it did
//! not return before the write was called, and if acknowledged, at a revision above r; a put
//! attaching k to a lease counts as such a delete, since the lease may be revoked or expire).

use crate::history::{EventKind, FinalRead, KeyValue, Operation, Outcome, Response};
use crate::writes::{acknowledged_writes, change_of, Write};
use std::collections::HashMap;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LostWrite {
    /// The operation whose acknowledged write is missing.
    pub op: usize,
    pub message: String,
}

pub fn check_no_lost_writes(ops: &[Operation], final_read: &FinalRead) -> Vec<LostWrite> {
    let now: HashMap<&str, &KeyValue> = final_read
        .kvs
        .iter()
        .map(|kv| (kv.key.as_str(), kv))
        .collect();
    let mut lost = Vec::new();
    for w in acknowledged_writes(ops) {
        let problem = if w.revision > final_read.revision {
            Some(format!(
                "the final read is at revision {}, before it",
                final_read.revision
            ))
        } else {
            match (now.get(w.key.as_str()), &w.kind) {
                (Some(kv), _) if kv.mod_revision > w.revision => None,
                (Some(kv), EventKind::Put { value })
                    if kv.mod_revision == w.revision && kv.value == *value =>
                {
                    None
                }
                (Some(kv), _) => Some(format!(
                    "the final read shows {}={}@{}",
                    kv.key, kv.value, kv.mod_revision
                )),
                (None, EventKind::Delete) => None,
                (None, EventKind::Put { .. }) if later_delete_possible(ops, &w) => None,
                (None, EventKind::Put { .. }) => {
                    Some("the key is gone and no delete could have removed it".into())
                }
            }
        };
        if let Some(why) = problem {
            let message = format!(
                "#{} {} acknowledged at revision {}: {why}",
                w.op, ops[w.op], w.revision
            );
            lost.push(LostWrite { op: w.op, message });
        }
    }
    lost
}

fn later_delete_possible(ops: &[Operation], put: &Write) -> bool {
    let put_call = ops[put.op].call;
    // A key attached to a lease (by this put or a later one) may go with the lease's revoke or
    // expiry, which the history does not pin to a revision.
    if ops[put.op].request.attaches_lease().is_some() {
        return true;
    }
    ops.iter().enumerate().any(|(i, op)| {
        let deletes_key = change_of(&op.request).is_some_and(|(k, c)| {
            k == put.key && (c == EventKind::Delete || op.request.attaches_lease().is_some())
        });
        let not_before = op.return_time().is_none_or(|r| r >= put_call);
        let revision_after = match &op.outcome {
            Outcome::Failed => false,
            Outcome::Unknown => true,
            Outcome::Ok(Response::Delete { revision, deleted }) => {
                *deleted > 0 && *revision > put.revision
            }
            Outcome::Ok(Response::Txn {
                revision,
                deleted,
                succeeded,
            }) => {
                let attached = *succeeded && op.request.attaches_lease().is_some();
                (*deleted > 0 || attached) && *revision > put.revision
            }
            Outcome::Ok(Response::Put { revision }) => *revision > put.revision,
            Outcome::Ok(_) => false,
        };
        i != put.op && deletes_key && not_before && revision_after
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::op;
    use crate::history::Request;

    fn put(call: u64, key: &str, value: &str, revision: i64) -> Operation {
        let request = Request::Put {
            key: key.into(),
            value: value.into(),
        };
        op(call, request, Outcome::Ok(Response::Put { revision }))
    }
    fn kv(key: &str, value: &str, mod_revision: i64) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: value.into(),
            mod_revision,
        }
    }
    fn lost_ops(ops: &[Operation], revision: i64, kvs: Vec<KeyValue>) -> Vec<usize> {
        check_no_lost_writes(ops, &FinalRead { revision, kvs })
            .into_iter()
            .map(|l| l.op)
            .collect()
    }

    #[test]
    fn overwritten_and_surviving_writes_are_not_lost() {
        let ops = [
            put(0, "a", "1", 1),
            put(10, "a", "2", 2),
            put(20, "b", "3", 3),
        ];
        assert_eq!(
            lost_ops(&ops, 3, vec![kv("a", "2", 2), kv("b", "3", 3)]),
            Vec::<usize>::new()
        );
    }

    #[test]
    fn acknowledged_write_missing_from_the_final_state_is_lost() {
        let ops = [put(0, "a", "1", 1), put(10, "b", "2", 2)];
        assert_eq!(lost_ops(&ops, 2, vec![kv("a", "1", 1)]), vec![1]);
        // Rolled back to an older value of the key.
        let ops = [put(0, "a", "1", 1), put(10, "a", "2", 2)];
        assert_eq!(lost_ops(&ops, 2, vec![kv("a", "1", 1)]), vec![1]);
    }

    #[test]
    fn final_read_behind_an_acknowledged_revision_is_reported() {
        let ops = [put(0, "a", "1", 1), put(10, "a", "2", 2)];
        assert_eq!(lost_ops(&ops, 1, vec![kv("a", "1", 1)]), vec![1]);
    }

    #[test]
    fn a_delete_that_may_follow_explains_a_missing_key() {
        let del = |call, outcome| op(call, Request::Delete { key: "a".into() }, outcome);
        let ops = [put(0, "a", "1", 1), del(10, Outcome::Unknown)];
        assert_eq!(lost_ops(&ops, 2, vec![]), Vec::<usize>::new());
        let ops = [
            put(0, "a", "1", 1),
            del(
                10,
                Outcome::Ok(Response::Delete {
                    revision: 2,
                    deleted: 1,
                }),
            ),
        ];
        assert_eq!(lost_ops(&ops, 2, vec![]), Vec::<usize>::new());
        // A delete that finished before the put was even called cannot have removed it.
        let ops = [
            put(0, "a", "0", 1),
            del(
                10,
                Outcome::Ok(Response::Delete {
                    revision: 2,
                    deleted: 1,
                }),
            ),
            put(100, "a", "1", 3),
        ];
        assert_eq!(lost_ops(&ops, 3, vec![]), vec![2]);
        let ops = [put(0, "a", "1", 1), del(10, Outcome::Failed)];
        assert_eq!(lost_ops(&ops, 1, vec![]), vec![0]);
    }
}
