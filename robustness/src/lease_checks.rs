//! What the model cannot see about leases: time.
//!
//! Invariant (etcd never expires a lease early): the leader sets a lease's expiry to its apply
//! time + TTL at the grant and at every keep-alive, and a new leader extends every lease to its
//! promotion time + TTL; each of these instants is after the client called the request. So a
//! lease cannot expire before max(grant call, last acknowledged keep-alive call) + TTL.
//! [`expiries`] turns that into one `LeaseExpiry` operation per lease, called at that instant
//! with an unknown outcome: the search may place the expiry (a revoke deleting the lease's keys)
//! anywhere after it, or never. A key of an unexpired lease gone without a delete, or a revoked
//! lease's key read after the revoke returned, then has no linearization.
//!
//! [`ttl_rises`]: within one raft term (one leader) a lease's remaining TTL only decreases until
//! a keep-alive; a rise with no keep-alive in between is flagged. A rise across a term change is
//! fine: etcd's new leader extends every lease to a full TTL (`Promote`), which is also why a
//! lease outlives a leader change. Answers without a recorded term are not compared.

use crate::history::{Nanos, Operation, Outcome, Request, Response};
use std::collections::BTreeMap;
use std::fmt;

/// The client id of the checker-made `LeaseExpiry` operations.
pub const SERVER_CLIENT: u32 = u32::MAX;
const NANOS_PER_SECOND: u64 = 1_000_000_000;

/// One `LeaseExpiry` operation per granted lease that may have expired: not for a grant that
/// definitely failed or answered an error, nor for a lease a client revoke removed (an
/// acknowledged revoke proves it alive until then, and an expiry afterwards changes nothing),
/// nor for one whose expiry no operation could observe.
pub fn expiries(ops: &[Operation]) -> Vec<Operation> {
    let mut earliest: BTreeMap<i64, Nanos> = BTreeMap::new();
    for op in ops {
        if let Request::LeaseGrant { id, ttl } = &op.request {
            let ttl = match &op.outcome {
                Outcome::Ok(Response::LeaseGrant { ttl, .. }) => *ttl,
                Outcome::Unknown => *ttl,
                _ => continue,
            };
            let at = op.call + (ttl.max(0) as u64).saturating_mul(NANOS_PER_SECOND);
            earliest.insert(*id, at);
        }
    }
    for op in ops {
        match (&op.request, &op.outcome) {
            (Request::LeaseRevoke { id }, Outcome::Ok(Response::LeaseRevoke { .. })) => {
                earliest.remove(id);
            }
            (Request::LeaseKeepAlive { id }, Outcome::Ok(Response::LeaseKeepAlive { ttl }))
                if *ttl > 0 =>
            {
                let renewed = op.call + (*ttl as u64).saturating_mul(NANOS_PER_SECOND);
                if let Some(at) = earliest.get_mut(id) {
                    *at = (*at).max(renewed);
                }
            }
            _ => {}
        }
    }
    earliest
        .into_iter()
        .filter(|&(id, at)| observable_after(ops, id, at))
        .map(|(id, call)| Operation {
            client: SERVER_CLIENT,
            call,
            ret: call,
            request: Request::LeaseExpiry { id },
            outcome: Outcome::Unknown,
        })
        .collect()
}

/// Whether an expiry of `lease` at `at` or later could change an answer: some operation on the
/// lease, or touching a key ever attached to it, had not returned by then; or the lease may
/// still hold a key then and some operation had not returned (an expiry deleting a key takes a
/// revision, which every later answer reports). An expiry nothing could observe is left out:
/// every unknown operation multiplies the search.
fn observable_after(ops: &[Operation], lease: i64, at: Nanos) -> bool {
    let attaching: Vec<&Operation> = ops
        .iter()
        .filter(|op| op.request.attaches_lease() == Some(lease) && may_have_written(op))
        .collect();
    let open_at = |op: &Operation| op.return_time().is_none_or(|r| r >= at);
    let touched = ops.iter().any(|op| {
        let relevant = op.request.lease_id() == Some(lease)
            || op.request.attaches_lease() == Some(lease)
            || attaching
                .iter()
                .filter_map(|a| a.request.key())
                .any(|k| op.request.touches(k));
        relevant && open_at(op)
    });
    touched || (may_hold_a_key(ops, lease, &attaching, at) && ops.iter().any(open_at))
}

/// An operation that may have written its key: not failed, not refused, not a txn whose
/// compare failed.
fn may_have_written(op: &Operation) -> bool {
    match &op.outcome {
        Outcome::Failed | Outcome::Ok(Response::Error(_)) => false,
        Outcome::Ok(Response::Txn { succeeded, .. }) => *succeeded,
        _ => true,
    }
}

/// Whether some key may still be attached to `lease` at `at`: an attaching write with no
/// acknowledged write of the same key (one that does not attach it to `lease`) called after it
/// returned and returned before `at`.
fn may_hold_a_key(ops: &[Operation], lease: i64, attaching: &[&Operation], at: Nanos) -> bool {
    attaching.iter().any(|a| {
        let Some(attached) = a.return_time() else {
            return true;
        };
        !ops.iter().any(|d| {
            d.request.may_write()
                && d.request.key() == a.request.key()
                && d.request.attaches_lease() != Some(lease)
                && matches!(d.outcome, Outcome::Ok(_))
                && may_have_written(d)
                && d.call > attached
                && d.ret < at
        })
    })
}

/// A remaining TTL that went up within one raft term without a keep-alive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TtlRise {
    pub lease: i64,
    /// The earlier and the later TimeToLive operation.
    pub before: usize,
    pub after: usize,
    pub message: String,
}

impl fmt::Display for TtlRise {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "lease {}: {}", self.lease, self.message)
    }
}

/// Pairs of TimeToLive answers of one lease, the first returned before the second was called,
/// in the same raft term, where the remaining TTL rose and no keep-alive (or grant) of the lease
/// that did not definitely fail overlaps the interval between them.
pub fn ttl_rises(ops: &[Operation]) -> Vec<TtlRise> {
    let answers: Vec<(usize, i64, i64, u64)> = ops
        .iter()
        .enumerate()
        .filter_map(|(i, op)| match (&op.request, &op.outcome) {
            (
                Request::LeaseTimeToLive { id },
                Outcome::Ok(Response::LeaseTimeToLive { ttl, raft_term }),
            ) if *ttl > 0 && *raft_term > 0 => Some((i, *id, *ttl, *raft_term)),
            _ => None,
        })
        .collect();
    let renewed_between = |lease: i64, from: Nanos, to: Nanos| {
        ops.iter().any(|op| {
            matches!(op.request, Request::LeaseKeepAlive { id } | Request::LeaseGrant { id, .. } if id == lease)
                && op.outcome != Outcome::Failed
                && op.call <= to
                && op.return_time().is_none_or(|r| r >= from)
        })
    };
    let mut found = Vec::new();
    for &(a, lease, ttl_a, term_a) in &answers {
        for &(b, lease_b, ttl_b, term_b) in &answers {
            let (first, second) = (&ops[a], &ops[b]);
            if lease_b != lease || term_b != term_a || ttl_b <= ttl_a || first.ret >= second.call {
                continue;
            }
            if renewed_between(lease, first.call, second.ret) {
                continue;
            }
            found.push(TtlRise {
                lease,
                before: a,
                after: b,
                message: format!(
                    "remaining TTL rose from {ttl_a} (#{a}) to {ttl_b} (#{b}) in raft term \
                     {term_a} with no keep-alive in between"
                ),
            });
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::op;

    fn grant(call: Nanos, id: i64, ttl: i64) -> Operation {
        let outcome = Outcome::Ok(Response::LeaseGrant {
            revision: 0,
            id,
            ttl,
        });
        op(call, Request::LeaseGrant { id, ttl }, outcome)
    }

    /// A put of "a" attached to lease 7 at 100 ns, answered with `revision`.
    fn attach_a(revision: i64) -> Operation {
        op(
            100,
            Request::PutWithLease {
                key: "a".into(),
                value: "1".into(),
                lease: 7,
            },
            Outcome::Ok(Response::Put { revision }),
        )
    }

    #[test]
    fn expiry_is_called_a_ttl_after_the_grant_or_the_last_keep_alive() {
        let keep_alive = op(
            3 * NANOS_PER_SECOND,
            Request::LeaseKeepAlive { id: 7 },
            Outcome::Ok(Response::LeaseKeepAlive { ttl: 5 }),
        );
        let later = |id| {
            op(
                20 * NANOS_PER_SECOND,
                Request::LeaseTimeToLive { id },
                Outcome::Unknown,
            )
        };
        let e = expiries(&[
            grant(100, 7, 5),
            grant(200, 8, 2),
            keep_alive,
            later(7),
            later(8),
        ]);
        let calls: Vec<(i64, Nanos)> = e
            .iter()
            .map(|o| (o.request.lease_id().unwrap_or(0), o.call))
            .collect();
        assert_eq!(
            calls,
            vec![(7, 8 * NANOS_PER_SECOND), (8, 200 + 2 * NANOS_PER_SECOND)]
        );
        assert!(e.iter().all(|o| o.outcome == Outcome::Unknown));
    }

    #[test]
    fn expiry_nothing_could_observe_is_left_out() {
        let answer = Outcome::Ok(Response::Get {
            revision: 2,
            kv: None,
        });
        let read_of = |call, key: &str| op(call, Request::Get { key: key.into() }, answer.clone());
        let attach = attach_a(2);
        let ops = [
            grant(0, 7, 5),
            attach.clone(),
            read_of(NANOS_PER_SECOND, "a"),
        ];
        assert_eq!(expiries(&ops), vec![]);
        let ops = [grant(0, 7, 5), attach, read_of(6 * NANOS_PER_SECOND, "a")];
        assert_eq!(expiries(&ops).len(), 1);
    }

    #[test]
    fn expiry_of_a_lease_holding_a_key_is_seen_in_later_revisions() {
        // "a" is attached to lease 7 (1 s) and never touched again, but the expiry deleting it
        // takes revision 2: the put of "b" at 5 s answers revision 3.
        let attach = attach_a(1);
        let put_b = |revision| {
            op(
                5 * NANOS_PER_SECOND,
                Request::Put {
                    key: "b".into(),
                    value: "1".into(),
                },
                Outcome::Ok(Response::Put { revision }),
            )
        };
        let ops = [grant(0, 7, 1), attach.clone(), put_b(3)];
        assert_eq!(expiries(&ops).len(), 1);
        let verdict = crate::linearizability::check_operations(&ops, Default::default());
        assert_eq!(verdict, crate::linearizability::Verdict::Linearizable);
        // Overwritten without the lease before the expiry: nothing left to delete.
        let overwrite = op(
            500,
            Request::Put {
                key: "a".into(),
                value: "2".into(),
            },
            Outcome::Ok(Response::Put { revision: 2 }),
        );
        assert_eq!(
            expiries(&[grant(0, 7, 1), attach, overwrite, put_b(3)]),
            vec![]
        );
    }

    #[test]
    fn revoked_or_never_granted_leases_do_not_expire() {
        let revoke = op(
            50,
            Request::LeaseRevoke { id: 7 },
            Outcome::Ok(Response::LeaseRevoke { revision: 0 }),
        );
        let refused = op(
            0,
            Request::LeaseGrant { id: 9, ttl: 5 },
            Outcome::Ok(Response::Error(crate::model::LEASE_EXISTS.into())),
        );
        assert_eq!(expiries(&[grant(0, 7, 5), revoke, refused]), vec![]);
    }

    fn ttl(call: Nanos, ttl: i64, raft_term: u64) -> Operation {
        let outcome = Outcome::Ok(Response::LeaseTimeToLive { ttl, raft_term });
        op(call, Request::LeaseTimeToLive { id: 7 }, outcome)
    }

    #[test]
    fn remaining_ttl_rising_without_keep_alive_in_one_term_is_flagged() {
        let rises = ttl_rises(&[grant(0, 7, 10), ttl(100, 5, 2), ttl(200, 9, 2)]);
        assert_eq!(rises.len(), 1, "{rises:?}");
        assert_eq!((rises[0].before, rises[0].after), (1, 2));
    }

    #[test]
    fn remaining_ttl_may_rise_after_a_keep_alive_or_a_leader_change() {
        let keep_alive = op(
            150,
            Request::LeaseKeepAlive { id: 7 },
            Outcome::Ok(Response::LeaseKeepAlive { ttl: 10 }),
        );
        let with_keep_alive = [grant(0, 7, 10), ttl(100, 5, 2), keep_alive, ttl(200, 9, 2)];
        assert_eq!(ttl_rises(&with_keep_alive), vec![]);
        let new_leader = [grant(0, 7, 10), ttl(100, 5, 2), ttl(200, 9, 3)];
        assert_eq!(ttl_rises(&new_leader), vec![]);
        let falling = [grant(0, 7, 10), ttl(100, 9, 2), ttl(200, 5, 2)];
        assert_eq!(ttl_rises(&falling), vec![]);
    }
}
