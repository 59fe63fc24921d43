//! A slog `Drain` that forwards raft-rs log records to `tracing`.
//!
//! raft-rs logs through slog; etcd-rs logs through tracing. Every record keeps
//! its level and message, and its key/value pairs are appended to the message
//! as `key=value` text so nothing raft-rs says is lost.

use std::fmt::{self, Write as _};

use slog::{Drain, Level, OwnedKVList, Record, Serializer, KV};

/// Forwards every slog record to the `tracing` event of the same level, under
/// the target `raft`.
#[derive(Debug, Default, Clone, Copy)]
pub struct TracingDrain;

/// Builds the slog `Logger` handed to raft-rs, tagged with this member's id.
pub fn raft_logger(member_id: u64) -> slog::Logger {
    slog::Logger::root(
        TracingDrain,
        slog::o!("raft_id" => format!("{member_id:x}")),
    )
}

struct KvText(String);

impl Serializer for KvText {
    fn emit_arguments(&mut self, key: slog::Key, val: &fmt::Arguments) -> slog::Result {
        // Writing into a String cannot fail.
        let _ = write!(self.0, " {key}={val}");
        Ok(())
    }
}

impl Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record, values: &OwnedKVList) -> Result<(), slog::Never> {
        let mut kv = KvText(String::new());
        let _ = record.kv().serialize(record, &mut kv);
        let _ = values.serialize(record, &mut kv);
        let msg = record.msg();
        let kv = kv.0;
        match record.level() {
            Level::Critical | Level::Error => tracing::error!(target: "raft", "{msg}{kv}"),
            Level::Warning => tracing::warn!(target: "raft", "{msg}{kv}"),
            Level::Info => tracing::info!(target: "raft", "{msg}{kv}"),
            Level::Debug => tracing::debug!(target: "raft", "{msg}{kv}"),
            Level::Trace => tracing::trace!(target: "raft", "{msg}{kv}"),
        }
        Ok(())
    }
}
