//! The CI short mode of `etcd-rs-robustness run` against the server in $ETCD_RS_BIN: a few seeds
//! on 3 members with every fault kind; every seed's history must pass every check, and each seed
//! must have recorded operations and injected faults (a run that did nothing proves nothing).

use std::path::PathBuf;
use std::process::Command;

#[test]
fn short_mode_finds_no_violation_and_records_traffic_under_faults() {
    let Some(server) = std::env::var_os("ETCD_RS_BIN") else {
        println!("skipped: ETCD_RS_BIN is not set (the etcd-rs binary to drive)");
        return;
    };
    let out = std::env::temp_dir().join(format!("etcd-rs-robustness-short-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let output = Command::new(env!("CARGO_BIN_EXE_etcd-rs-robustness"))
        .arg("run")
        .arg("--short")
        .arg("--binary")
        .arg(PathBuf::from(server))
        .arg("--out")
        .arg(&out)
        .output()
        .expect("run etcd-rs-robustness");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}{stderr}");
    assert!(
        output.status.success(),
        "short mode failed (histories under {}):\n{stdout}{stderr}",
        out.display()
    );
    let seeds: Vec<&str> = stdout.lines().filter(|l| l.starts_with("seed ")).collect();
    assert!(!seeds.is_empty(), "no seed ran:\n{stdout}");
    for line in seeds {
        assert!(line.contains("PASS"), "{line}");
        let count = |word: &str| -> u64 {
            let before = line.split(&format!(" {word}")).next().unwrap_or("");
            before
                .rsplit(' ')
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        assert!(count("operations,") > 100, "too little traffic: {line}");
        assert!(count("faults,") > 0, "no fault injected: {line}");
    }
    let _ = std::fs::remove_dir_all(&out);
}
