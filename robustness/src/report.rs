//! All checks of one history, and the files a person reads afterwards.
//!
//! Invariant: `Report::passed` is true only when every check ran to a conclusion and found
//! nothing: a linearizability search that ran out of budget fails the report (it proves nothing).

use crate::history::History;
use crate::lease_checks::{ttl_rises, TtlRise};
use crate::linearizability::{check_operations, CheckOptions, Verdict};
use crate::lost_writes::{check_no_lost_writes, LostWrite};
use crate::patch::resolve_unknown_writes;
use crate::visualize::{timeline_html, violation_html};
use crate::watch_checks::{check_watches, WatchViolation};
use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};

/// At most this many watch or lost-write findings get a picture of their own.
const MAX_PICTURES: usize = 10;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub operations: usize,
    pub watches: usize,
    /// Unknown writes a complete watch resolved before the search (see `patch`).
    pub resolved_unknowns: usize,
    pub linearizability: Verdict,
    pub watch_violations: Vec<WatchViolation>,
    /// `None` when the history has no final read.
    pub lost_writes: Option<Vec<LostWrite>>,
    /// Remaining lease TTLs that rose within one raft term without a keep-alive.
    pub ttl_rises: Vec<TtlRise>,
}

pub fn check_history(history: &History, options: CheckOptions) -> Report {
    let (patched, resolved_unknowns) = resolve_unknown_writes(history);
    Report {
        operations: history.operations.len(),
        watches: history.watches.len(),
        resolved_unknowns,
        linearizability: match history.malformed() {
            Some(why) => Verdict::Unknown(format!("malformed history: {why}")),
            None => check_operations(
                &patched,
                CheckOptions {
                    initial_revision: history.initial_revision,
                    ..options
                },
            ),
        },
        watch_violations: check_watches(history),
        lost_writes: history
            .final_read
            .as_ref()
            .map(|f| check_no_lost_writes(&history.operations, f)),
        ttl_rises: ttl_rises(&history.operations),
    }
}

impl Report {
    pub fn passed(&self) -> bool {
        self.linearizability == Verdict::Linearizable
            && self.watch_violations.is_empty()
            && self.lost_writes.as_ref().is_none_or(Vec::is_empty)
            && self.ttl_rises.is_empty()
    }

    pub fn summary(&self) -> String {
        let mut out = format!(
            "{}: {} operations, {} watch streams, {} unknown writes resolved by a complete watch\n",
            if self.passed() { "PASS" } else { "FAIL" },
            self.operations,
            self.watches,
            self.resolved_unknowns
        );
        match &self.linearizability {
            Verdict::Linearizable => out.push_str("linearizable: yes\n"),
            Verdict::Violation(v) => {
                let _ = write!(out, "linearizable: NO\n{}", v.report);
            }
            Verdict::Unknown(why) => {
                let _ = writeln!(out, "linearizable: unknown ({why})");
            }
        }
        let _ = writeln!(out, "watch violations: {}", self.watch_violations.len());
        for v in &self.watch_violations {
            let _ = writeln!(out, "  {v}");
        }
        match &self.lost_writes {
            None => out.push_str("lost writes: not checked (no final read)\n"),
            Some(lost) => {
                let _ = writeln!(out, "lost writes: {}", lost.len());
                for l in lost {
                    let _ = writeln!(out, "  {}", l.message);
                }
            }
        }
        let _ = writeln!(out, "lease TTL rises: {}", self.ttl_rises.len());
        for r in &self.ttl_rises {
            let _ = writeln!(out, "  {r}");
        }
        out
    }

    /// Writes `summary.txt`, `history.json` and one HTML timeline per finding into `dir`
    /// (created if missing); returns the files written.
    pub fn write_to(&self, dir: &Path, history: &History) -> io::Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir)?;
        let mut written = Vec::new();
        let mut put = |name: String, text: &str| -> io::Result<()> {
            let path = dir.join(name);
            std::fs::write(&path, text)?;
            written.push(path);
            Ok(())
        };
        put("summary.txt".into(), &self.summary())?;
        put(
            "history.json".into(),
            &history.to_json().map_err(io::Error::other)?,
        )?;
        let ops = &history.operations;
        if let Verdict::Violation(v) = &self.linearizability {
            put("linearizability.html".into(), &violation_html(ops, v))?;
        }
        for (n, v) in self.watch_violations.iter().take(MAX_PICTURES).enumerate() {
            let on_key: Vec<usize> = (0..ops.len())
                .filter(|&i| ops[i].request.touches(&v.key))
                .collect();
            let title = format!(
                "watch #{} {:?} on {} at revision {}",
                v.watch, v.kind, v.key, v.revision
            );
            put(
                format!("watch-{n}.html"),
                &timeline_html(ops, &on_key, &[], &title),
            )?;
        }
        for (n, l) in self
            .lost_writes
            .iter()
            .flatten()
            .take(MAX_PICTURES)
            .enumerate()
        {
            let key = ops[l.op].request.key().unwrap_or_default();
            let on_key: Vec<usize> = (0..ops.len())
                .filter(|&i| ops[i].request.touches(key))
                .collect();
            put(
                format!("lost-write-{n}.html"),
                &timeline_html(ops, &on_key, &[l.op], &l.message),
            )?;
        }
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{FinalRead, KeyValue, Operation, Outcome, Request, Response, ValueAt};

    fn stale_read_history() -> History {
        let put = |call, value: &str, revision| Operation {
            client: 1,
            call,
            ret: call + 10,
            request: Request::Put {
                key: "a".into(),
                value: value.into(),
            },
            outcome: Outcome::Ok(Response::Put { revision }),
        };
        let stale = Operation {
            client: 2,
            call: 40,
            ret: 50,
            request: Request::Get { key: "a".into() },
            outcome: Outcome::Ok(Response::Get {
                revision: 2,
                kv: Some(ValueAt {
                    value: "1".into(),
                    mod_revision: 1,
                }),
            }),
        };
        History {
            operations: vec![put(0, "1", 1), put(20, "2", 2), stale],
            watches: vec![],
            // rolled back to a=1: the acknowledged a=2 is lost
            final_read: Some(FinalRead {
                revision: 2,
                kvs: vec![KeyValue {
                    key: "a".into(),
                    value: "1".into(),
                    mod_revision: 1,
                }],
            }),
            initial_revision: 0,
        }
    }

    #[test]
    fn report_fails_and_names_every_finding() {
        let history = stale_read_history();
        let report = check_history(&history, CheckOptions::default());
        assert!(!report.passed());
        let summary = report.summary();
        assert!(summary.starts_with("FAIL"), "{summary}");
        assert!(summary.contains("#2 client 2 get(a)"), "{summary}");
        assert!(
            summary.contains("lost writes: 1\n  #1 client 1 put(a, 2)"),
            "the final read lost a=2: {summary}"
        );
    }

    #[test]
    fn malformed_history_is_not_checked_and_does_not_pass() {
        let mut history = stale_read_history();
        history.operations[2].ret = 30;
        let report = check_history(&history, CheckOptions::default());
        let Verdict::Unknown(why) = &report.linearizability else {
            panic!("{report:?}")
        };
        assert!(
            why.contains("#2") && why.contains("returned before it was called"),
            "{why}"
        );
        assert!(!report.passed());
    }

    #[test]
    fn unknown_verdict_does_not_pass() {
        let mut report = check_history(&History::default(), CheckOptions::default());
        assert!(report.passed());
        report.linearizability = Verdict::Unknown("budget".into());
        assert!(!report.passed());
    }

    #[test]
    fn files_are_written_and_history_reads_back() {
        let history = stale_read_history();
        let report = check_history(&history, CheckOptions::default());
        let dir =
            std::env::temp_dir().join(format!("etcd-robustness-report-{}", std::process::id()));
        let files = report.write_to(&dir, &history).expect("write report");
        let names: Vec<String> = files
            .iter()
            .filter_map(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "summary.txt",
                "history.json",
                "linearizability.html",
                "lost-write-0.html"
            ]
        );
        let json = std::fs::read_to_string(dir.join("history.json")).expect("read history");
        assert_eq!(History::from_json(&json).expect("parse history"), history);
        let html = std::fs::read_to_string(dir.join("linearizability.html")).expect("read picture");
        assert!(
            html.contains("op ok highlight"),
            "the stale read is outlined"
        );
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
