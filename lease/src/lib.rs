//! etcd's lessor: the lease table, key attachment, and the leader's expiry and checkpoint
//! schedule.
//!
//! The one invariant that matters most: the replicated part (which leases exist, their TTLs,
//! checkpointed remaining TTLs, which keys they hold) changes only through the applier, from
//! committed raft entries, and never depends on the clock. Expiry is a local decision of the
//! leader's (primary) lessor, carried out by proposing a revoke through raft, so every member
//! deletes the same keys at the same revision.
//!
//! - [`lessor`]: [`Lessor`], the lease table and the primary's deadline heaps.

mod errors;
pub mod lessor;
pub mod metrics;

pub use errors::LeaseError;
pub use lessor::{
    LeaseStatus, Lessor, LessorConfig, FOREVER_SECS, LEASE_REVOKE_RATE, LEASE_TABLE, MAX_CHECKPOINT_BATCH, MAX_LEASE_TTL,
};

#[cfg(test)]
mod tests;
