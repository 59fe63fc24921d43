//! etcd-rs-robustness: checks a recorded history and writes the report (issue 13).
//!
//! Driving a cluster under faults and recording the history is the next step; this binary
//! already checks a history file written by any recorder in the `History` JSON format:
//!
//!     etcd-rs-robustness check HISTORY.json [--out DIR] [--step-budget N]
//!
//! It prints the summary and, with `--out`, writes summary.txt, history.json and the HTML
//! timelines there. Exit status: 0 when every check passed, 1 on a violation or an undecided
//! search, 2 on a usage or file error.

use etcd_robustness::history::History;
use etcd_robustness::linearizability::CheckOptions;
use etcd_robustness::report::check_history;
use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage: etcd-rs-robustness check HISTORY.json [--out DIR] [--step-budget N]";

struct CheckArgs {
    history: PathBuf,
    out: Option<PathBuf>,
    options: CheckOptions,
}

fn parse(args: &[String]) -> Result<CheckArgs, String> {
    let [command, history, rest @ ..] = args else {
        return Err(USAGE.into());
    };
    if command != "check" {
        return Err(format!("unknown command {command:?}\n{USAGE}"));
    }
    let mut parsed = CheckArgs {
        history: history.into(),
        out: None,
        options: CheckOptions::default(),
    };
    let mut rest = rest.iter();
    while let Some(flag) = rest.next() {
        let value = rest
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--out" => parsed.out = Some(value.into()),
            "--step-budget" => {
                parsed.options.step_budget = value
                    .parse()
                    .map_err(|_| format!("--step-budget: not a number: {value:?}"))?
            }
            _ => return Err(format!("unknown flag {flag:?}\n{USAGE}")),
        }
    }
    Ok(parsed)
}

fn run(args: &CheckArgs) -> Result<bool, String> {
    let text = std::fs::read_to_string(&args.history)
        .map_err(|e| format!("cannot read {}: {e}", args.history.display()))?;
    let history = History::from_json(&text)
        .map_err(|e| format!("{} is not a history: {e}", args.history.display()))?;
    if let Some(why) = history.malformed() {
        return Err(format!("{}: {why}", args.history.display()));
    }
    let report = check_history(&history, args.options);
    print!("{}", report.summary());
    if let Some(dir) = &args.out {
        let files = report
            .write_to(dir, &history)
            .map_err(|e| format!("cannot write to {}: {e}", dir.display()))?;
        for file in files {
            println!("wrote {}", file.display());
        }
    }
    Ok(report.passed())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match parse(&args).and_then(|a| run(&a)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(message) => {
            eprintln!("{message}");
            ExitCode::from(2)
        }
    }
}
