//! The watch guarantees etcd documents, checked on recorded streams against the history.
//!
//! Invariants checked for every stream (`start_revision` is the first revision the watch
//! asked for; the recorder resolves "from now" to the creation header revision + 1):
//! - in range: every event is on a watched key and at or after the start revision;
//! - ordered: event revisions never decrease along the stream;
//! - unique: no (key, revision) event is delivered twice;
//! - atomic: all events of one revision arrive in one response;
//! - progress: after a progress notification at revision P, no event at or below P arrives;
//! - real: each event is the change acknowledged at its revision, agrees with what other
//!   streams and reads saw there, or else could have been made by an operation whose outcome is
//!   unknown;
//! - prev_kv (when asked for): the key's previous value at the event's revision (or none when
//!   a compaction reached the event's revision: etcd reads prev_kv at revision - 1);
//! - compaction: a watch cancelled as compacted started below a compaction a client asked for;
//! - reliable: every change known to be committed (acknowledged, read back, or seen on any
//!   stream) on a watched key between the start revision and the last revision the stream
//!   vouched for (its last event or progress notification) was delivered.

use crate::history::{
    EventKind, History, Operation, Outcome, Request, Response, ValueAt, WatchStream,
};
use crate::writes::{acknowledged_writes, observed_values, unknown_write_could_make};
use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WatchViolationKind {
    OutOfRange,
    Unordered,
    Duplicate,
    NotAtomic,
    ProgressAhead,
    /// The event contradicts the history or another stream.
    Inconsistent,
    /// The event shows a change no operation could have made.
    UnmadeWrite,
    Gap,
    /// The event's prev_kv is not the key's previous value at that revision.
    WrongPrevKv,
    /// Cancelled as compacted though no compaction covers its start revision.
    WrongCompaction,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchViolation {
    /// Index of the stream in `History::watches`.
    pub watch: usize,
    pub kind: WatchViolationKind,
    pub key: String,
    pub revision: i64,
    pub message: String,
}

impl fmt::Display for WatchViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "watch #{} {:?} at {}@{}: {}",
            self.watch, self.kind, self.key, self.revision, self.message
        )
    }
}

/// What is known to have happened at each (revision, key), and where that knowledge came from.
type Truth = BTreeMap<(i64, String), (EventKind, String)>;

pub fn check_watches(history: &History) -> Vec<WatchViolation> {
    let mut violations = Vec::new();
    let mut truth: Truth = BTreeMap::new();
    let mut key_at_revision: HashMap<i64, String> = HashMap::new();
    for w in acknowledged_writes(&history.operations) {
        key_at_revision.insert(w.revision, w.key.clone());
        let source = format!("acknowledged to operation #{}", w.op);
        truth.insert((w.revision, w.key), (w.kind, source));
    }
    for w in observed_values(&history.operations) {
        let source = format!("read by operation #{}", w.op);
        truth.entry((w.revision, w.key)).or_insert((w.kind, source));
    }
    for (index, stream) in history.watches.iter().enumerate() {
        check_stream(
            index,
            stream,
            history,
            &mut truth,
            &key_at_revision,
            &mut violations,
        );
    }
    for (index, stream) in history.watches.iter().enumerate() {
        check_reliable(index, stream, &truth, &mut violations);
        if stream.prev_kv {
            check_prev_kv(index, stream, &history.operations, &truth, &mut violations);
        }
        check_compaction(index, stream, &history.operations, &mut violations);
    }
    violations
}

/// prev_kv of each event: the stream's own previous event of the key when it had one (the
/// stream is reliable, or a gap is reported); otherwise it must agree with what is known: a
/// prev_kv `v@m` needs m below the event, no known change of the key between m and the event,
/// and the known change at m (if any) to be the put of v; an absent prev_kv after a known put
/// needs some delete (unknown, or by a lease) that could have come in between.
fn check_prev_kv(
    index: usize,
    stream: &WatchStream,
    ops: &[Operation],
    truth: &Truth,
    out: &mut Vec<WatchViolation>,
) {
    let mut last_seen: HashMap<&str, Option<ValueAt>> = HashMap::new();
    for event in stream.responses.iter().flat_map(|r| &r.events) {
        let (rev, key) = (event.mod_revision, event.key.as_str());
        let wrong = match last_seen.get(key) {
            Some(expected)
                if *expected != event.prev
                    && !(event.prev.is_none() && compacted_at_or_above(ops, rev)) =>
            {
                Some(format!(
                    "prev_kv {:?} but the stream's previous event of the key left {expected:?}",
                    event.prev
                ))
            }
            Some(_) => None,
            None => prev_contradiction(ops, truth, key, rev, &event.prev),
        };
        if let Some(message) = wrong {
            out.push(WatchViolation {
                watch: index,
                kind: WatchViolationKind::WrongPrevKv,
                key: key.to_string(),
                revision: rev,
                message,
            });
        }
        let after = match &event.kind {
            EventKind::Put { value } => Some(ValueAt {
                value: value.clone(),
                mod_revision: rev,
            }),
            EventKind::Delete => None,
        };
        last_seen.insert(key, after);
    }
}

fn prev_contradiction(
    ops: &[Operation],
    truth: &Truth,
    key: &str,
    rev: i64,
    prev: &Option<ValueAt>,
) -> Option<String> {
    let known_before = |from: i64| {
        truth
            .range((from, String::new())..(rev, String::new()))
            .rfind(|((_, k), _)| k == key)
    };
    match prev {
        Some(p) if p.mod_revision >= rev => Some(format!(
            "prev_kv at revision {} is not before the event",
            p.mod_revision
        )),
        Some(p) => match (
            truth.get(&(p.mod_revision, key.to_string())),
            known_before(p.mod_revision + 1),
        ) {
            (Some((kind, source)), _)
                if *kind
                    != (EventKind::Put {
                        value: p.value.clone(),
                    }) =>
            {
                Some(format!(
                    "prev_kv {}@{} but {kind:?} was {source}",
                    p.value, p.mod_revision
                ))
            }
            (_, Some(((r, _), (kind, source)))) => Some(format!(
                "prev_kv {}@{} but the key changed at {r} ({kind:?} {source})",
                p.value, p.mod_revision
            )),
            _ => None,
        },
        None => match known_before(0) {
            Some(((r, _), (EventKind::Put { value }, source)))
                if !unknown_write_could_make(ops, key, &EventKind::Delete)
                    && !compacted_at_or_above(ops, rev) =>
            {
                Some(format!(
                    "no prev_kv but the key held {value} from revision {r} ({source}) and no \
                     delete could have removed it"
                ))
            }
            _ => None,
        },
    }
}

/// Whether a compaction at `revision` or above may have happened: etcd reads prev_kv at the
/// event's revision - 1 and leaves it out when that revision is compacted.
fn compacted_at_or_above(ops: &[Operation], revision: i64) -> bool {
    ops.iter().any(|op| {
        matches!(op.request, Request::Compact { revision: c } if c >= revision)
            && matches!(
                op.outcome,
                Outcome::Unknown | Outcome::Ok(Response::Compact { .. })
            )
    })
}

/// A watch cancelled as compacted at C must have started below C, and C must be a compaction
/// some client asked for that did not fail. (A watch starting AT the compact revision is not
/// cancelled and delivers every change from there, a delete at C included: etcd #18089, fixed
/// in etcd 3.4.34 / 3.5.16; the reliability check reports the missing delete as a gap.)
fn check_compaction(
    index: usize,
    stream: &WatchStream,
    ops: &[Operation],
    out: &mut Vec<WatchViolation>,
) {
    let Some(compacted) = stream.compact_revision else {
        return;
    };
    let requested = ops.iter().any(|op| {
        matches!(op.request, Request::Compact { revision } if revision == compacted)
            && matches!(
                op.outcome,
                Outcome::Unknown | Outcome::Ok(Response::Compact { .. })
            )
    });
    let why = if stream.start_revision >= compacted {
        Some(format!(
            "cancelled as compacted at {compacted} though it started at {}",
            stream.start_revision
        ))
    } else if !requested {
        Some(format!(
            "cancelled as compacted at {compacted}, a compaction nobody asked for"
        ))
    } else {
        None
    };
    if let Some(message) = why {
        out.push(WatchViolation {
            watch: index,
            kind: WatchViolationKind::WrongCompaction,
            key: stream.key.clone(),
            revision: compacted,
            message,
        });
    }
}

/// Everything but reliability; adds the stream's real events to `truth`.
fn check_stream(
    index: usize,
    stream: &WatchStream,
    history: &History,
    truth: &mut Truth,
    key_at_revision: &HashMap<i64, String>,
    out: &mut Vec<WatchViolation>,
) {
    let mut report = |kind, key: &str, revision, message: String| {
        out.push(WatchViolation {
            watch: index,
            kind,
            key: key.to_string(),
            revision,
            message,
        });
    };
    let mut delivered: HashSet<(i64, &str)> = HashSet::new();
    let mut last: Option<(i64, usize)> = None;
    let mut progress: Option<i64> = None;
    for (r, response) in stream.responses.iter().enumerate() {
        if response.progress_notify {
            progress = progress.max(Some(response.header_revision));
        }
        for event in &response.events {
            let (rev, key) = (event.mod_revision, event.key.as_str());
            if !stream.covers(key) || rev < stream.start_revision {
                let why = format!(
                    "outside the watch on {} from revision {}",
                    stream.key, stream.start_revision
                );
                report(WatchViolationKind::OutOfRange, key, rev, why);
            }
            if !delivered.insert((rev, key)) {
                report(
                    WatchViolationKind::Duplicate,
                    key,
                    rev,
                    "delivered twice".into(),
                );
                continue;
            }
            match last {
                Some((prev, _)) if rev < prev => report(
                    WatchViolationKind::Unordered,
                    key,
                    rev,
                    format!("arrived after an event at revision {prev}"),
                ),
                Some((prev, prev_response)) if rev == prev && prev_response != r => report(
                    WatchViolationKind::NotAtomic,
                    key,
                    rev,
                    format!("revision {rev} split over responses {prev_response} and {r}"),
                ),
                _ => {}
            }
            if let Some(p) = progress.filter(|p| rev <= *p) {
                report(
                    WatchViolationKind::ProgressAhead,
                    key,
                    rev,
                    format!("arrived after a progress notification at revision {p}"),
                );
            }
            last = last.max(Some((rev, r)));
            if let Some(wrong) = contradiction(event, index, truth, key_at_revision) {
                report(WatchViolationKind::Inconsistent, key, rev, wrong);
            } else if let Entry::Vacant(unexplained) = truth.entry((rev, key.to_string())) {
                if unknown_write_could_make(&history.operations, key, &event.kind) {
                    unexplained.insert((event.kind.clone(), format!("seen on watch #{index}")));
                } else {
                    report(
                        WatchViolationKind::UnmadeWrite,
                        key,
                        rev,
                        format!("{:?} was never written", event.kind),
                    );
                }
            }
        }
    }
}

fn contradiction(
    event: &crate::history::Event,
    index: usize,
    truth: &Truth,
    key_at_revision: &HashMap<i64, String>,
) -> Option<String> {
    let rev = event.mod_revision;
    if let Some(other) = key_at_revision.get(&rev).filter(|k| **k != event.key) {
        return Some(format!(
            "revision {rev} was acknowledged as a write of {other}"
        ));
    }
    match truth.get(&(rev, event.key.clone())) {
        Some((kind, source)) if *kind != event.kind => Some(format!(
            "watch #{index} got {:?} but {kind:?} was {source}",
            event.kind
        )),
        _ => None,
    }
}

fn check_reliable(
    index: usize,
    stream: &WatchStream,
    truth: &Truth,
    out: &mut Vec<WatchViolation>,
) {
    let events = stream.responses.iter().flat_map(|r| &r.events);
    let delivered: HashSet<(i64, &str)> = events
        .clone()
        .map(|e| (e.mod_revision, e.key.as_str()))
        .collect();
    let last_event = events.map(|e| e.mod_revision).max();
    let last_progress = stream
        .responses
        .iter()
        .filter(|r| r.progress_notify)
        .map(|r| r.header_revision)
        .max();
    let Some(vouched) = last_event.max(last_progress) else {
        return;
    };
    let from = (stream.start_revision, String::new());
    for ((rev, key), (kind, source)) in truth.range(from..) {
        if *rev > vouched {
            break;
        }
        if stream.covers(key) && !delivered.contains(&(*rev, key.as_str())) {
            out.push(WatchViolation {
                watch: index,
                kind: WatchViolationKind::Gap,
                key: key.clone(),
                revision: *rev,
                message: format!(
                    "missing {kind:?} ({source}) though the stream reached revision {vouched}"
                ),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Event, Operation, Outcome, Request, Response, WatchResponse};

    fn put_op(call: u64, key: &str, value: &str, revision: i64) -> Operation {
        Operation {
            client: 1,
            call,
            ret: call + 5,
            request: Request::Put {
                key: key.into(),
                value: value.into(),
            },
            outcome: Outcome::Ok(Response::Put { revision }),
        }
    }
    fn ev(key: &str, value: &str, rev: i64) -> Event {
        Event {
            key: key.into(),
            mod_revision: rev,
            kind: EventKind::Put {
                value: value.into(),
            },
            prev: None,
        }
    }
    fn resp(events: Vec<Event>) -> WatchResponse {
        let header_revision = events.iter().map(|e| e.mod_revision).max().unwrap_or(0);
        WatchResponse {
            time: 0,
            header_revision,
            progress_notify: false,
            events,
        }
    }
    fn progress(revision: i64) -> WatchResponse {
        WatchResponse {
            time: 0,
            header_revision: revision,
            progress_notify: true,
            events: vec![],
        }
    }
    /// Three acknowledged puts: a=1@1, b=2@2, a=3@3.
    fn history(responses: Vec<WatchResponse>) -> History {
        History {
            operations: vec![
                put_op(0, "a", "1", 1),
                put_op(10, "b", "2", 2),
                put_op(20, "a", "3", 3),
            ],
            watches: vec![WatchStream {
                client: 9,
                key: "".into(),
                prefix: true,
                start_revision: 1,
                responses,
                prev_kv: false,
                compact_revision: None,
            }],
            final_read: None,
            initial_revision: 0,
        }
    }
    fn kinds(h: &History) -> Vec<WatchViolationKind> {
        check_watches(h).into_iter().map(|v| v.kind).collect()
    }

    #[test]
    fn complete_stream_passes() {
        let h = history(vec![
            resp(vec![ev("a", "1", 1), ev("b", "2", 2)]),
            resp(vec![ev("a", "3", 3)]),
        ]);
        assert_eq!(kinds(&h), vec![]);
    }

    #[test]
    fn stream_may_end_early_at_its_last_progress_notification() {
        let h = history(vec![
            resp(vec![ev("a", "1", 1)]),
            resp(vec![ev("b", "2", 2)]),
            progress(2),
        ]);
        assert_eq!(kinds(&h), vec![]);
    }

    #[test]
    fn progress_notification_vouches_for_every_earlier_event() {
        let h = history(vec![
            resp(vec![ev("a", "1", 1)]),
            resp(vec![ev("b", "2", 2)]),
            progress(3),
        ]);
        assert_eq!(kinds(&h), vec![WatchViolationKind::Gap]);
    }

    #[test]
    fn reordered_events_are_rejected() {
        let h = history(vec![
            resp(vec![ev("b", "2", 2)]),
            resp(vec![ev("a", "1", 1)]),
            resp(vec![ev("a", "3", 3)]),
        ]);
        assert_eq!(kinds(&h), vec![WatchViolationKind::Unordered]);
    }

    #[test]
    fn gap_is_rejected() {
        let h = history(vec![
            resp(vec![ev("a", "1", 1)]),
            resp(vec![ev("a", "3", 3)]),
        ]);
        let v = check_watches(&h);
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(
            (v[0].kind, v[0].revision, v[0].key.as_str()),
            (WatchViolationKind::Gap, 2, "b")
        );
    }

    #[test]
    fn duplicate_event_is_rejected() {
        let h = history(vec![
            resp(vec![ev("a", "1", 1)]),
            resp(vec![ev("a", "1", 1), ev("b", "2", 2)]),
        ]);
        assert_eq!(kinds(&h), vec![WatchViolationKind::Duplicate]);
    }

    #[test]
    fn progress_notify_ahead_of_an_event_is_rejected() {
        let h = history(vec![
            resp(vec![ev("a", "1", 1)]),
            progress(2),
            resp(vec![ev("b", "2", 2)]),
        ]);
        assert_eq!(kinds(&h), vec![WatchViolationKind::ProgressAhead]);
    }

    #[test]
    fn revision_split_over_responses_is_rejected() {
        let mut h = history(vec![
            resp(vec![ev("a", "1", 1)]),
            resp(vec![ev("x", "1", 1)]),
        ]);
        h.operations.truncate(1);
        let found = kinds(&h);
        assert!(found.contains(&WatchViolationKind::NotAtomic), "{found:?}");
    }

    #[test]
    fn event_of_a_value_never_written_is_rejected() {
        let h = history(vec![
            resp(vec![ev("a", "1", 1), ev("b", "2", 2)]),
            resp(vec![ev("a", "3", 3)]),
            resp(vec![ev("c", "7", 4)]),
        ]);
        assert_eq!(kinds(&h), vec![WatchViolationKind::UnmadeWrite]);
    }

    #[test]
    fn event_contradicting_an_acknowledged_write_is_rejected() {
        let h = history(vec![
            resp(vec![ev("a", "1", 1), ev("b", "9", 2)]),
            resp(vec![ev("a", "3", 3)]),
        ]);
        assert_eq!(kinds(&h), vec![WatchViolationKind::Inconsistent]);
    }

    #[test]
    fn event_outside_the_watched_range_is_rejected() {
        let mut h = history(vec![resp(vec![ev("a", "1", 1), ev("b", "2", 2)])]);
        h.watches[0].key = "a".into();
        h.watches[0].prefix = false;
        assert_eq!(kinds(&h), vec![WatchViolationKind::OutOfRange]);
    }

    #[test]
    fn unknown_write_seen_on_one_stream_must_be_on_the_others() {
        let unknown = Operation {
            client: 2,
            call: 30,
            ret: 0,
            request: Request::Put {
                key: "b".into(),
                value: "u".into(),
            },
            outcome: Outcome::Unknown,
        };
        let mut h = history(vec![
            resp(vec![ev("a", "1", 1), ev("b", "2", 2)]),
            resp(vec![ev("a", "3", 3)]),
            resp(vec![ev("b", "u", 4)]),
        ]);
        h.operations.push(unknown);
        assert_eq!(kinds(&h), vec![]);
        let mut other = h.watches[0].clone();
        other.responses.remove(2);
        other.responses.push(progress(4));
        h.watches.push(other);
        let v = check_watches(&h);
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(
            (v[0].watch, v[0].kind, v[0].revision),
            (1, WatchViolationKind::Gap, 4)
        );
    }

    #[test]
    fn delete_events_match_acknowledged_deletes() {
        let mut h = history(vec![]);
        h.operations.push(Operation {
            client: 1,
            call: 40,
            ret: 45,
            request: Request::Delete { key: "a".into() },
            outcome: Outcome::Ok(Response::Delete {
                revision: 4,
                deleted: 1,
            }),
        });
        h.watches[0].start_revision = 3;
        h.watches[0].responses = vec![
            resp(vec![ev("a", "3", 3)]),
            resp(vec![Event {
                key: "a".into(),
                mod_revision: 4,
                kind: EventKind::Delete,
                prev: None,
            }]),
        ];
        assert_eq!(kinds(&h), vec![]);
        h.watches[0].responses.pop();
        h.watches[0].responses.push(progress(4));
        assert_eq!(kinds(&h), vec![WatchViolationKind::Gap]);
    }
}
