//! Batching of linearizable ReadIndex requests.
//!
//! Invariant: at most one ReadIndex round is in flight. Callers that arrive
//! while it is in flight wait for the next round, so any number of concurrent
//! readers costs one round (one heartbeat broadcast on a leader). A round whose
//! answer has not come after [`RETRY_TICKS`] ticks is asked again with the same
//! context (a leader drops ReadIndex until it has committed an entry in its
//! term, and a follower drops it while there is no leader); raft-rs ignores a
//! duplicate context that is already pending, so retries are harmless. Callers
//! give up with their own deadline; a round whose callers have all gone is
//! abandoned.

use raft::{RawNode, ReadState, Storage};
use tokio::sync::oneshot;

use crate::error::RaftError;

/// Ticks to wait for a round's answer before asking again.
pub const RETRY_TICKS: u32 = 2;

type Waiter = oneshot::Sender<Result<u64, RaftError>>;

struct Round {
    ctx: Vec<u8>,
    waiters: Vec<Waiter>,
    ticks: u32,
}

/// A round's context: this member's ID, then the round's number. The leader keys pending
/// ReadIndex requests by context and ignores one whose context is already pending, so rounds of
/// different members must never share one (a round counter alone did when two members' counters
/// met: the follower's round then waited for its retry).
fn round_ctx(member_id: u64, round: u64) -> Vec<u8> {
    let mut ctx = Vec::with_capacity(16);
    ctx.extend_from_slice(&member_id.to_be_bytes());
    ctx.extend_from_slice(&round.to_be_bytes());
    ctx
}

/// Read requests waiting for a read index, owned by the raft loop.
#[derive(Default)]
pub struct ReadIndexQueue {
    next_ctx: u64,
    waiting: Vec<Waiter>,
    inflight: Option<Round>,
}

impl ReadIndexQueue {
    /// Queues a caller for the next round.
    pub fn push(&mut self, waiter: Waiter) {
        self.waiting.push(waiter);
    }

    /// Starts a round for the queued callers if none is in flight.
    pub fn start_round<S: Storage>(&mut self, raw: &mut RawNode<S>) {
        if self.inflight.is_some() {
            return;
        }
        self.waiting.retain(|w| !w.is_closed());
        if self.waiting.is_empty() {
            return;
        }
        self.next_ctx += 1;
        let ctx = round_ctx(raw.raft.id, self.next_ctx);
        raw.read_index(ctx.clone());
        self.inflight = Some(Round {
            ctx,
            waiters: std::mem::take(&mut self.waiting),
            ticks: 0,
        });
    }

    /// Answers the in-flight round if one of `states` is its answer.
    pub fn on_read_states(&mut self, states: Vec<ReadState>) {
        for rs in states {
            let answered = matches!(&self.inflight, Some(r) if r.ctx == rs.request_ctx);
            if answered {
                if let Some(round) = self.inflight.take() {
                    for w in round.waiters {
                        let _ = w.send(Ok(rs.index));
                    }
                }
            }
        }
    }

    /// Counts a tick; asks again for a round that has waited too long.
    pub fn on_tick<S: Storage>(&mut self, raw: &mut RawNode<S>) {
        let Some(round) = self.inflight.as_mut() else {
            return;
        };
        round.waiters.retain(|w| !w.is_closed());
        if round.waiters.is_empty() {
            self.inflight = None;
            return;
        }
        round.ticks += 1;
        if round.ticks >= RETRY_TICKS {
            crate::metrics::SLOW_READ_INDEXES.inc();
            round.ticks = 0;
            raw.read_index(round.ctx.clone());
        }
    }

    /// Fails every caller (the loop is stopping).
    pub fn fail_all(&mut self) {
        let round = self.inflight.take().map(|r| r.waiters).unwrap_or_default();
        for w in round.into_iter().chain(self.waiting.drain(..)) {
            let _ = w.send(Err(RaftError::Stopped));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_of_different_members_never_share_a_context() {
        assert_ne!(round_ctx(1, 7), round_ctx(2, 7));
        assert_ne!(round_ctx(1, 7), round_ctx(1, 8));
        assert_eq!(round_ctx(0x0102, 3)[..8], 0x0102u64.to_be_bytes());
    }
}
