//! Checkers for histories recorded from an etcd-compatible cluster (issue 13).
//!
//! A recorder (a later step) fills a [`history::History`]: every client operation with its call
//! and return times on one monotonic clock and its outcome (ok with the answer, definitely
//! failed, or unknown), and every watch stream as received. The checkers then decide:
//!
//! - [`linearizability`]: some total order of the operations respects real time and reproduces
//!   every answer of the sequential etcd model in [`model`] (values, mod_revisions, the header
//!   revision, compare results, range pages); unknown operations take effect at any point after
//!   their call, or never. A violation is reported as the shortest failing prefix of the history,
//!   narrowed to one key when that key's operations alone show it.
//! - [`watch_checks`]: each watch stream is ordered, unique, atomic per revision, reliable (no
//!   committed change in its range after its start revision is missing, up to the last revision
//!   it vouched for), never sends a progress notification ahead of a later event, and every
//!   event is a write that was really made (agreeing with acknowledged writes and other streams).
//! - [`lost_writes`]: every acknowledged write is in a final read of the store or was overwritten
//!   or deleted by an operation that could have come after it.
//!
//! [`patch`] first resolves unknown writes from a complete watch (every committed change is on
//! it), which keeps the search small. [`report::check_history`] runs them all; its report writes a summary, the history file and
//! the pictures. [`visualize`] draws operations as an HTML timeline per key, one row per client, so a person
//! sees a violation rather than reads it.
//!
//! Not covered yet: leases (grant, keep-alive, revoke, expiry and keys attached to them),
//! serializable reads, compaction, multi-key transactions.

pub mod history;
pub mod linearizability;
pub mod lost_writes;
pub mod model;
pub mod patch;
pub mod report;
pub mod visualize;
pub mod watch_checks;
pub mod writes;
