//! The writes a history proves were made, and which operations could have made a given change.
//!
//! Invariant: every client write but a lease revoke touches one key, so an acknowledged write is
//! known exactly (key, change, revision). A lease revoke or expiry deletes all of its keys at one
//! revision; those deletes are known only from watches, never attributed to a single-key write.

use crate::history::{EventKind, Operation, Outcome, Request, Response, TxnWrite};

/// A change to one key at one revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Write {
    /// The operation that made (or revealed) it.
    pub op: usize,
    pub revision: i64,
    pub key: String,
    pub kind: EventKind,
}

/// The change an operation makes when it writes, if it can write at all.
pub fn change_of(request: &Request) -> Option<(&str, EventKind)> {
    match request {
        Request::Put { key, value } | Request::PutWithLease { key, value, .. } => Some((
            key,
            EventKind::Put {
                value: value.clone(),
            },
        )),
        Request::Delete { key } => Some((key, EventKind::Delete)),
        Request::Txn {
            key,
            then: TxnWrite::Put(value) | TxnWrite::PutWithLease(value, _),
            ..
        } => Some((
            key,
            EventKind::Put {
                value: value.clone(),
            },
        )),
        Request::Txn {
            key,
            then: TxnWrite::Delete,
            ..
        } => Some((key, EventKind::Delete)),
        // Reads change nothing; lease revokes and expiries delete whichever keys are attached.
        _ => None,
    }
}

/// Writes the server acknowledged, with the revision it gave them.
pub fn acknowledged_writes(ops: &[Operation]) -> Vec<Write> {
    let mut out = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let Outcome::Ok(response) = &op.outcome else {
            continue;
        };
        let revision = match response {
            Response::Put { revision } => *revision,
            Response::Delete { revision, deleted } if *deleted > 0 => *revision,
            Response::Txn {
                revision,
                succeeded: true,
                deleted,
            } => match &op.request {
                Request::Txn {
                    then: TxnWrite::Delete,
                    ..
                } if *deleted == 0 => continue,
                _ => *revision,
            },
            _ => continue,
        };
        if let Some((key, kind)) = change_of(&op.request) {
            out.push(Write {
                op: i,
                revision,
                key: key.to_string(),
                kind,
            });
        }
    }
    out
}

/// Values that successful reads returned: each proves a put at its mod_revision.
pub fn observed_values(ops: &[Operation]) -> Vec<Write> {
    let mut out = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let mut seen = |key: &str, value: &str, revision: i64| {
            let kind = EventKind::Put {
                value: value.to_string(),
            };
            out.push(Write {
                op: i,
                revision,
                key: key.to_string(),
                kind,
            });
        };
        match &op.outcome {
            Outcome::Ok(Response::Get { kv: Some(kv), .. }) => {
                if let Some(key) = op.request.key() {
                    seen(key, &kv.value, kv.mod_revision);
                }
            }
            Outcome::Ok(Response::Range { kvs, .. }) => {
                for kv in kvs {
                    seen(&kv.key, &kv.value, kv.mod_revision);
                }
            }
            _ => {}
        }
    }
    out
}

/// Whether an operation whose outcome is unknown could have made this change (an acknowledged
/// one is pinned to its own revision, a failed one made nothing), or, for a delete, a lease
/// revoke or expiry could have (the key was attached to a lease by some write).
pub fn unknown_write_could_make(ops: &[Operation], key: &str, kind: &EventKind) -> bool {
    let by_unknown = ops.iter().any(|op| {
        op.outcome == Outcome::Unknown
            && change_of(&op.request).is_some_and(|(k, c)| k == key && &c == kind)
    });
    by_unknown || (*kind == EventKind::Delete && ever_leased(ops, key))
}

/// Whether some write that did not definitely fail attached `key` to a lease: then the key may
/// vanish without a delete of its own (its lease revoked or expired).
pub fn ever_leased(ops: &[Operation], key: &str) -> bool {
    ops.iter().any(|op| {
        op.request.attaches_lease().is_some()
            && op.request.key() == Some(key)
            && op.outcome != Outcome::Failed
            && !matches!(op.outcome, Outcome::Ok(Response::Error(_)))
    })
}
