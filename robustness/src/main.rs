//! etcd-rs-robustness: drives an etcd-compatible cluster under faults and checks the recorded
//! history (issue 13), or checks a history file written earlier.
//!
//!     etcd-rs-robustness run --binary PATH [--members 3] [--seed N | --seeds A..B]
//!         [--duration 20s] [--faults kill,term,...|all|none] [--traffic kv,...]
//!         [--clients N] [--out DIR] [--scenario NAME] [--short]
//!     etcd-rs-robustness check HISTORY.json [--out DIR] [--step-budget N]
//!
//! `run` prints one line per seed (operations, faults, result, time) and writes history.json,
//! summary.txt, run.txt and the pictures into DIR/<seed>/. `check` prints the summary of a
//! history file and, with `--out`, writes the same files. Exit status: 0 when every check
//! passed, 1 on a violation or an undecided search, 2 on a usage or file error.

use etcd_robustness::faults::Fault;
use etcd_robustness::history::History;
use etcd_robustness::linearizability::CheckOptions;
use etcd_robustness::report::check_history;
use etcd_robustness::run::{run_seed, scenario_config, short_mode, RunConfig, SHORT_SEEDS};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str = "usage: etcd-rs-robustness check HISTORY.json [--out DIR] [--step-budget N]
       etcd-rs-robustness run --binary PATH [--members N] [--seed N | --seeds A..B] [--duration 20s]
           [--faults LIST|all|none] [--traffic LIST] [--clients N] [--out DIR] [--scenario NAME] [--short]";

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
    if args.first().map(String::as_str) == Some("run") {
        return match parse_run(&args[1..]) {
            Ok(plan) => execute_run(plan),
            Err(message) => {
                eprintln!("{message}\n{USAGE}");
                ExitCode::from(2)
            }
        };
    }
    match parse(&args).and_then(|a| run(&a)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(message) => {
            eprintln!("{message}");
            ExitCode::from(2)
        }
    }
}

/// What `run` was asked to do.
struct RunPlan {
    config: RunConfig,
    seeds: Vec<u64>,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = number
        .parse()
        .map_err(|_| format!("not a duration: {text:?}"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("not a duration: {text:?} (use ms, s or m)")),
    }
}

fn parse_seeds(text: &str) -> Result<Vec<u64>, String> {
    let bad = || format!("--seeds wants A..B, not {text:?}");
    let (a, b) = text.split_once("..").ok_or_else(bad)?;
    let (a, b): (u64, u64) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
    if a > b {
        return Err(bad());
    }
    Ok((a..=b).collect())
}

fn parse_run(args: &[String]) -> Result<RunPlan, String> {
    let mut binary = None;
    let mut out = std::env::temp_dir().join("etcd-rs-robustness");
    let mut seeds = vec![1];
    let mut overrides: Vec<(String, String)> = Vec::new();
    let mut scenario = None;
    let mut short = false;
    let mut rest = args.iter();
    while let Some(flag) = rest.next() {
        if flag == "--short" {
            short = true;
            continue;
        }
        let value = rest.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--binary" => binary = Some(PathBuf::from(value)),
            "--out" => out = value.into(),
            "--seed" => {
                seeds = vec![value
                    .parse()
                    .map_err(|_| format!("--seed: not a number: {value:?}"))?]
            }
            "--seeds" => seeds = parse_seeds(value)?,
            "--scenario" => scenario = Some(value.clone()),
            "--members" | "--duration" | "--faults" | "--traffic" | "--clients"
            | "--step-budget" => overrides.push((flag.clone(), value.clone())),
            _ => return Err(format!("unknown flag {flag:?}")),
        }
    }
    let binary = binary.ok_or("--binary is required")?;
    let mut config = RunConfig::new(binary, out);
    if short {
        seeds = SHORT_SEEDS.to_vec();
        config = short_mode(config);
    }
    if let Some(name) = scenario {
        config = scenario_config(&name, config)?;
    }
    for (flag, value) in overrides {
        let number = || {
            value
                .parse::<u64>()
                .map_err(|_| format!("{flag}: not a number: {value:?}"))
        };
        match flag.as_str() {
            "--members" => config.members = number()?.clamp(1, 9) as usize,
            "--duration" => config.duration = parse_duration(&value)?,
            "--faults" => config.faults = Fault::parse_list(&value)?,
            "--traffic" => config.traffics = value.split(',').map(String::from).collect(),
            "--clients" => config.clients_per_traffic = number()?.max(1) as u32,
            _ => config.check.step_budget = number()?,
        }
    }
    Ok(RunPlan { config, seeds })
}

fn execute_run(plan: RunPlan) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let c = &plan.config;
    println!(
        "{} on {} members, {:?} per seed, faults [{}], traffic [{}], seeds {:?}, out {}",
        c.binary.display(),
        c.members,
        c.duration,
        c.faults
            .iter()
            .map(|f| f.name())
            .collect::<Vec<_>>()
            .join(","),
        c.traffics.join(","),
        plan.seeds,
        c.out.display()
    );
    let started = std::time::Instant::now();
    let (mut failed, mut operations, mut faults) = (0, 0, 0);
    for &seed in &plan.seeds {
        let result = runtime.block_on(run_seed(&plan.config, seed));
        println!("{}", result.line());
        for v in &result.violations {
            println!("  violation: {v}");
        }
        operations += result.operations;
        faults += result.faults.len();
        failed += usize::from(!result.passed());
    }
    println!(
        "{} seeds, {operations} operations, {faults} faults, {failed} failed, {:.1}s",
        plan.seeds.len(),
        started.elapsed().as_secs_f64()
    );
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
