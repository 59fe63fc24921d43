//! Live migration between etcd and etcd-rs, member by member, under load (issue 14).
//!
//! [`fleet::Fleet`] runs a cluster whose members may be etcd 3.5.1, etcd 3.4.23 or etcd-rs and
//! changes it as an operator would (member add --learner, start with `--initial-cluster-state
//! existing`, promote, move-leader, remove; kill -9, restart, SIGSTOP). [`load::Load`] writes and
//! watches the whole time. [`checks::Checker`] runs after every step and fails on any lost
//! acknowledged write, any watch revision missed, repeated or out of order, or members whose
//! HashKV differ at the same revision. [`plan`] holds the sequences the tests run.
//!
//! Invariant: every step is followed by the full check, so a failure names the first step after
//! which the cluster was wrong.

pub mod checks;
pub mod fleet;
pub mod load;
pub mod plan;
