//! The recorded history: what each client asked, when, and what it was told.
//!
//! Invariant: an operation's times are the client's own monotonic clock readings taken just before
//! the request was sent (`call`) and just after the answer arrived (`ret`), on one clock shared by
//! all clients of a run, so `a.ret < b.call` means `a` really finished before `b` started. An
//! operation whose answer never came (timeout, connection lost) is `Outcome::Unknown`: it may have
//! taken effect at any time after its call, or never; its `ret` is ignored.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Who issued an operation; one client issues one operation at a time.
pub type ClientId = u32;
/// Monotonic nanoseconds since the recorder started.
pub type Nanos = u64;

/// A request on the key-value store.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Request {
    Put {
        key: String,
        value: String,
    },
    /// A linearizable get (serializable gets are not linearizable and are not recorded here).
    Get {
        key: String,
    },
    Delete {
        key: String,
    },
    /// `if compare(key) then write(key)`; the else branch is empty.
    Txn {
        key: String,
        compare: Compare,
        then: TxnWrite,
    },
    /// A linearizable range over every key starting with `prefix`, at most `limit` keys (0: all).
    Range {
        prefix: String,
        limit: i64,
    },
    /// A put that attaches the key to a lease (a put without one detaches it).
    PutWithLease {
        key: String,
        value: String,
        lease: i64,
    },
    /// A linearizable range over `[start, end)` (an empty `end`: every key from `start`), at
    /// most `limit` keys (0: all), at store revision `revision` (0: the current one), keys
    /// omitted when `count_only`: a page of a Kubernetes-style list.
    List {
        start: String,
        end: String,
        limit: i64,
        revision: i64,
        count_only: bool,
    },
    /// KV.Compact: reads below `revision` fail from then on.
    Compact {
        revision: i64,
    },
    /// A lease with the id chosen by the client (ids are unique in a run).
    LeaseGrant {
        id: i64,
        ttl: i64,
    },
    /// Revokes the lease and deletes its keys (one revision for all of them).
    LeaseRevoke {
        id: i64,
    },
    /// One keep-alive of the lease.
    LeaseKeepAlive {
        id: i64,
    },
    /// LeaseTimeToLive: the remaining TTL of the lease.
    LeaseTimeToLive {
        id: i64,
    },
    /// Not sent by a client: the server revoking an expired lease on its own. The checker adds
    /// one per lease (`lease_checks::expiries`), called at the earliest instant the lease may
    /// expire, with an unknown outcome (it may happen at any later point, or never).
    LeaseExpiry {
        id: i64,
    },
}

/// The condition of a compare-and-set transaction, on etcd's terms: a value compare fails on an
/// absent key, a mod_revision compare sees an absent key as mod_revision 0.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Compare {
    ValueEquals(String),
    ModRevisionEquals(i64),
}

/// The write a transaction performs when its compare succeeds.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TxnWrite {
    Put(String),
    Delete,
    /// A put attaching the key to the lease.
    PutWithLease(String, i64),
}

/// A key's value and the revision that last wrote it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ValueAt {
    pub value: String,
    pub mod_revision: i64,
}

/// One key of a range answer.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
    pub mod_revision: i64,
}

/// A successful answer; `revision` is the header revision (the store's revision after the request).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Response {
    Put {
        revision: i64,
    },
    Get {
        revision: i64,
        kv: Option<ValueAt>,
    },
    Delete {
        revision: i64,
        deleted: i64,
    },
    /// `deleted`: keys removed by a `TxnWrite::Delete` (0 for a put or a failed compare).
    Txn {
        revision: i64,
        succeeded: bool,
        deleted: i64,
    },
    /// `kvs` in key order, at most `limit`; `count`: all keys matching the prefix.
    Range {
        revision: i64,
        kvs: Vec<KeyValue>,
        count: i64,
    },
    /// `ttl`: the TTL the server granted (at least the requested one).
    LeaseGrant {
        revision: i64,
        id: i64,
        ttl: i64,
    },
    LeaseRevoke {
        revision: i64,
    },
    /// The lease's granted TTL (a keep-alive of a missing lease answers `Error`).
    LeaseKeepAlive {
        ttl: i64,
    },
    /// `ttl`: the remaining seconds, -1 when the lease does not exist (etcd answers so, no
    /// error); `raft_term`: the header's raft term (0: not recorded), which tells a leader change.
    LeaseTimeToLive {
        ttl: i64,
        #[serde(default)]
        raft_term: u64,
    },
    Compact {
        revision: i64,
    },
    /// An error answer proving the request changed nothing, with etcd's message (e.g.
    /// "etcdserver: requested lease not found", "mvcc: required revision has been compacted").
    Error(String),
}

/// What the client learned.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Outcome {
    Ok(Response),
    /// The request definitely did not take effect (e.g. rejected before it was proposed).
    Failed,
    /// No answer: the request may or may not have taken effect.
    Unknown,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    pub client: ClientId,
    pub call: Nanos,
    /// Ignored (taken as infinity) when the outcome is `Unknown`.
    pub ret: Nanos,
    pub request: Request,
    pub outcome: Outcome,
}

impl Request {
    /// The single key this request touches, or `None` for a range.
    pub fn key(&self) -> Option<&str> {
        match self {
            Request::Put { key, .. }
            | Request::PutWithLease { key, .. }
            | Request::Get { key }
            | Request::Delete { key }
            | Request::Txn { key, .. } => Some(key),
            _ => None,
        }
    }

    /// The lease this request attaches its key to, if any.
    pub fn attaches_lease(&self) -> Option<i64> {
        match self {
            Request::PutWithLease { lease, .. }
            | Request::Txn {
                then: TxnWrite::PutWithLease(_, lease),
                ..
            } => Some(*lease),
            _ => None,
        }
    }

    /// The lease a lease request is about.
    pub fn lease_id(&self) -> Option<i64> {
        match self {
            Request::LeaseGrant { id, .. }
            | Request::LeaseRevoke { id }
            | Request::LeaseKeepAlive { id }
            | Request::LeaseTimeToLive { id }
            | Request::LeaseExpiry { id } => Some(*id),
            _ => None,
        }
    }

    /// Whether the request can change the store (so an unknown outcome matters).
    pub fn may_write(&self) -> bool {
        matches!(
            self,
            Request::Put { .. }
                | Request::PutWithLease { .. }
                | Request::Delete { .. }
                | Request::Txn { .. }
                | Request::Compact { .. }
                | Request::LeaseGrant { .. }
                | Request::LeaseRevoke { .. }
                | Request::LeaseExpiry { .. }
        )
    }

    /// Whether this request may touch `key`.
    pub fn touches(&self, key: &str) -> bool {
        match self {
            Request::Range { prefix, .. } => key.starts_with(prefix.as_str()),
            Request::List { start, end, .. } => {
                key >= start.as_str() && (end.is_empty() || key < end.as_str())
            }
            _ => self.key() == Some(key),
        }
    }
}

impl Operation {
    /// The return time, `None` (infinity) for an operation whose outcome is unknown.
    pub fn return_time(&self) -> Option<Nanos> {
        match self.outcome {
            Outcome::Unknown => None,
            _ => Some(self.ret),
        }
    }

    pub fn is_ok(&self) -> bool {
        matches!(self.outcome, Outcome::Ok(_))
    }
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Request::Put { key, value } => write!(f, "put({key}, {value})"),
            Request::Get { key } => write!(f, "get({key})"),
            Request::Delete { key } => write!(f, "delete({key})"),
            Request::Txn { key, compare, then } => {
                match compare {
                    Compare::ValueEquals(v) => write!(f, "txn(if value({key})=={v}")?,
                    Compare::ModRevisionEquals(r) => write!(f, "txn(if mod_rev({key})=={r}")?,
                }
                match then {
                    TxnWrite::Put(v) => write!(f, " then put({key}, {v}))"),
                    TxnWrite::Delete => write!(f, " then delete({key}))"),
                    TxnWrite::PutWithLease(v, l) => write!(f, " then put({key}, {v}, lease {l}))"),
                }
            }
            Request::Range { prefix, limit } => write!(f, "range({prefix}*, limit {limit})"),
            Request::PutWithLease { key, value, lease } => {
                write!(f, "put({key}, {value}, lease {lease})")
            }
            Request::List {
                start,
                end,
                limit,
                revision,
                count_only,
            } => {
                let what = if *count_only { "count" } else { "list" };
                write!(
                    f,
                    "{what}([{start}, {end}), limit {limit}, at rev {revision})"
                )
            }
            Request::Compact { revision } => write!(f, "compact({revision})"),
            Request::LeaseGrant { id, ttl } => write!(f, "lease_grant({id}, ttl {ttl})"),
            Request::LeaseRevoke { id } => write!(f, "lease_revoke({id})"),
            Request::LeaseKeepAlive { id } => write!(f, "lease_keep_alive({id})"),
            Request::LeaseTimeToLive { id } => write!(f, "lease_time_to_live({id})"),
            Request::LeaseExpiry { id } => write!(f, "lease_expiry({id})"),
        }
    }
}

impl fmt::Display for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Response::Put { revision } => write!(f, "rev {revision}"),
            Response::Get {
                revision,
                kv: Some(kv),
            } => {
                write!(f, "{}@{} (rev {revision})", kv.value, kv.mod_revision)
            }
            Response::Get { revision, kv: None } => write!(f, "absent (rev {revision})"),
            Response::Delete { revision, deleted } => {
                write!(f, "deleted {deleted} (rev {revision})")
            }
            Response::Txn {
                revision,
                succeeded,
                ..
            } => {
                let branch = if *succeeded { "succeeded" } else { "failed" };
                write!(f, "{branch} (rev {revision})")
            }
            Response::Range {
                revision,
                kvs,
                count,
            } => {
                write!(f, "[")?;
                for (i, kv) in kvs.iter().enumerate() {
                    let sep = if i == 0 { "" } else { ", " };
                    write!(f, "{sep}{}={}@{}", kv.key, kv.value, kv.mod_revision)?;
                }
                write!(f, "] count {count} (rev {revision})")
            }
            Response::LeaseGrant { revision, id, ttl } => {
                write!(f, "lease {id} ttl {ttl} (rev {revision})")
            }
            Response::LeaseRevoke { revision } | Response::Compact { revision } => {
                write!(f, "ok (rev {revision})")
            }
            Response::LeaseKeepAlive { ttl } => write!(f, "ttl {ttl}"),
            Response::LeaseTimeToLive { ttl, raft_term } => {
                write!(f, "remaining {ttl} (term {raft_term})")
            }
            Response::Error(message) => write!(f, "error {message:?}"),
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "client {} {} ", self.client, self.request)?;
        match &self.outcome {
            Outcome::Ok(resp) => write!(f, "-> {resp} [{}..{}]", self.call, self.ret),
            Outcome::Failed => write!(f, "-> failed [{}..{}]", self.call, self.ret),
            Outcome::Unknown => write!(f, "-> unknown [{}..]", self.call),
        }
    }
}

/// One event of a watch stream.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Event {
    pub key: String,
    pub mod_revision: i64,
    pub kind: EventKind,
    /// The key before this change, when the watch asked for prev_kv (`None`: it did not exist).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev: Option<ValueAt>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventKind {
    Put { value: String },
    Delete,
}

/// One message received on a watch stream, in arrival order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchResponse {
    pub time: Nanos,
    pub header_revision: i64,
    /// A progress notification: no events, and every event up to `header_revision` was sent.
    pub progress_notify: bool,
    pub events: Vec<Event>,
}

/// Everything one watch received, from its creation at `start_revision` until it was closed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchStream {
    pub client: ClientId,
    /// The watched key, or the prefix when `prefix` is set.
    pub key: String,
    pub prefix: bool,
    pub start_revision: i64,
    pub responses: Vec<WatchResponse>,
    /// Whether the watch asked for prev_kv (then every event's `prev` is what the server sent).
    #[serde(default)]
    pub prev_kv: bool,
    /// Set when the server cancelled the watch as compacted: the compact_revision it sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compact_revision: Option<i64>,
}

impl WatchStream {
    pub fn covers(&self, key: &str) -> bool {
        if self.prefix {
            key.starts_with(self.key.as_str())
        } else {
            key == self.key
        }
    }
}

/// A linearizable read of every key the traffic used, taken after the traffic stopped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinalRead {
    pub revision: i64,
    pub kvs: Vec<KeyValue>,
}

/// A whole run: the operations of every client, every watch stream, and the final read.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    pub operations: Vec<Operation>,
    pub watches: Vec<WatchStream>,
    #[serde(default)]
    pub final_read: Option<FinalRead>,
    /// The store revision before the first operation, as the recorder saw it (an empty etcd
    /// store is at revision 1); 0 in hand-made histories.
    #[serde(default)]
    pub initial_revision: i64,
}

impl History {
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string_pretty(self)
    }

    pub fn from_json(text: &str) -> Result<History, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// Why the history cannot be checked, if it cannot: an answered operation that returned
    /// before it was called (the recorder's clock or bookkeeping is broken).
    pub fn malformed(&self) -> Option<String> {
        let (i, op) = self
            .operations
            .iter()
            .enumerate()
            .find(|(_, op)| op.return_time().is_some_and(|ret| ret < op.call))?;
        Some(format!(
            "operation #{i} returned before it was called: {op}"
        ))
    }
}
