//! The `etcd-rs-robustness check` command on history files: exit status, summary, report files.

use etcd_robustness::history::{History, Operation, Outcome, Request, Response, ValueAt};
use std::path::PathBuf;
use std::process::Command;

fn put(call: u64, value: &str, revision: i64) -> Operation {
    let request = Request::Put {
        key: "a".into(),
        value: value.into(),
    };
    Operation {
        client: 1,
        call,
        ret: call + 10,
        request,
        outcome: Outcome::Ok(Response::Put { revision }),
    }
}

fn read(call: u64, value: &str, mod_revision: i64, revision: i64) -> Operation {
    let kv = Some(ValueAt {
        value: value.into(),
        mod_revision,
    });
    let outcome = Outcome::Ok(Response::Get { revision, kv });
    Operation {
        client: 2,
        call,
        ret: call + 10,
        request: Request::Get { key: "a".into() },
        outcome,
    }
}

/// A fresh directory holding `history` as history.json.
fn history_file(name: &str, history: &History) -> (PathBuf, PathBuf) {
    let dir =
        std::env::temp_dir().join(format!("etcd-rs-robustness-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("input.json");
    std::fs::write(&file, history.to_json().expect("serialize")).expect("write history");
    (dir, file)
}

fn check(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_etcd-rs-robustness"))
        .args(args)
        .output()
        .expect("run binary");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn linearizable_history_passes_with_status_zero() {
    let history = History {
        operations: vec![put(0, "1", 1), read(20, "1", 1, 1)],
        ..History::default()
    };
    let (dir, file) = history_file("pass", &history);
    let (status, text) = check(&["check", file.to_str().expect("utf-8 path")]);
    assert_eq!(status, 0, "{text}");
    assert!(text.starts_with("PASS: 2 operations"), "{text}");
    std::fs::remove_dir_all(dir).expect("clean up");
}

#[test]
fn stale_read_fails_with_status_one_and_writes_the_picture() {
    let history = History {
        operations: vec![put(0, "1", 1), put(20, "2", 2), read(40, "1", 1, 2)],
        ..History::default()
    };
    let (dir, file) = history_file("fail", &history);
    let out = dir.join("report");
    let (status, text) = check(&[
        "check",
        file.to_str().expect("utf-8 path"),
        "--out",
        out.to_str().expect("utf-8"),
    ]);
    assert_eq!(status, 1, "{text}");
    assert!(
        text.contains("linearizable: NO") && text.contains("#2 client 2 get(a)"),
        "{text}"
    );
    let html = std::fs::read_to_string(out.join("linearizability.html")).expect("picture written");
    assert!(html.contains("key a"), "{html}");
    std::fs::remove_dir_all(dir).expect("clean up");
}

#[test]
fn bad_input_is_a_usage_error() {
    assert_eq!(check(&[]).0, 2);
    assert_eq!(check(&["check", "/nonexistent/history.json"]).0, 2);
    let mut backwards = put(50, "1", 1);
    backwards.ret = 40;
    let history = History {
        operations: vec![backwards],
        ..History::default()
    };
    let (dir, file) = history_file("backwards", &history);
    let (status, text) = check(&["check", file.to_str().expect("utf-8 path")]);
    assert_eq!(status, 2, "{text}");
    assert!(text.contains("returned before it was called"), "{text}");
    std::fs::remove_dir_all(dir).expect("clean up");
    let (dir, file) = history_file("flag", &History::default());
    let (status, text) = check(&[
        "check",
        file.to_str().expect("utf-8 path"),
        "--step-budget",
        "many",
    ]);
    assert_eq!(status, 2);
    assert!(text.contains("not a number"), "{text}");
    std::fs::remove_dir_all(dir).expect("clean up");
}
