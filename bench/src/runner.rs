//! The load driver: `--clients` tasks share `--conns` connections and issue requests until
//! `--total` requests were issued or `--duration` passed, optionally paced to `--rate` requests per
//! second overall. Each client records latencies in its own histogram; they merge at the end.

use crate::histogram::Histogram;
use futures::future::BoxFuture;
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What one request turned out to be: `kind` names the operation (a workload may mix several),
/// `conflict` marks a compare-and-swap that lost (answered, but not applied).
#[derive(Clone, Copy, Debug)]
pub struct Outcome {
    pub kind: &'static str,
    pub conflict: bool,
}

impl Outcome {
    pub fn ok(kind: &'static str) -> Self {
        Outcome { kind, conflict: false }
    }
}

/// One client's request loop body: request number `i` (0-based, global across clients).
pub trait ClientOp: Send {
    fn call(&mut self, i: u64) -> BoxFuture<'_, Result<Outcome, tonic::Status>>;
}

#[derive(Clone, Debug)]
pub struct RunConfig {
    pub total: Option<u64>,
    pub duration: Option<Duration>,
    pub rate: f64,
    pub progress: bool,
}

#[derive(Default)]
pub struct RunResult {
    pub elapsed: Duration,
    /// CPU time (user + system) this process spent during the run: the load generator's own
    /// cost, which it takes from the machine the server under test runs on.
    pub cpu: Duration,
    pub latency: Histogram,
    pub by_kind: BTreeMap<&'static str, Histogram>,
    pub errors: BTreeMap<String, u64>,
    pub conflicts: u64,
}

impl RunResult {
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    fn merge(&mut self, o: RunResult) {
        self.latency.merge(&o.latency);
        for (k, h) in o.by_kind {
            self.by_kind.entry(k).or_default().merge(&h);
        }
        for (k, n) in o.errors {
            *self.errors.entry(k).or_default() += n;
        }
        self.conflicts += o.conflicts;
    }
}

/// User + system CPU time of this process so far (zero if the OS does not say).
fn process_cpu_time() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// A short, stable label for an error (code and the first line of the message).
pub fn error_label(s: &tonic::Status) -> String {
    let msg: String = s.message().lines().next().unwrap_or("").chars().take(120).collect();
    format!("{:?}: {}", s.code(), msg)
}

pub async fn run(cfg: RunConfig, ops: Vec<Box<dyn ClientOp>>) -> RunResult {
    let issued = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let cpu_start = process_cpu_time();
    let deadline = cfg.duration.map(|d| start + d);
    let progress = cfg.progress.then(|| {
        let (done, stop, total, duration) = (done.clone(), stop.clone(), cfg.total, cfg.duration);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            let show = |final_line: bool| {
                let n = done.load(Ordering::Relaxed);
                let secs = start.elapsed().as_secs_f64();
                let frac = match (total, duration) {
                    (Some(t), _) if t > 0 => n as f64 / t as f64,
                    (_, Some(d)) => secs / d.as_secs_f64(),
                    _ => 0.0,
                }
                .min(1.0);
                let width = 40;
                let filled = (frac * width as f64) as usize;
                let bar: String = "=".repeat(filled) + &" ".repeat(width - filled);
                let mut e = std::io::stderr();
                let _ = write!(e, "\r[{bar}] {:5.1}% {n} req {:.0} req/s ", frac * 100.0, n as f64 / secs.max(1e-9));
                if final_line {
                    let _ = writeln!(e);
                }
            };
            loop {
                tick.tick().await;
                if stop.load(Ordering::Relaxed) {
                    show(true);
                    return;
                }
                show(false);
            }
        })
    });
    let mut tasks = Vec::new();
    for mut op in ops {
        let (issued, done, cfg) = (issued.clone(), done.clone(), cfg.clone());
        tasks.push(tokio::spawn(async move {
            let mut r = RunResult::default();
            loop {
                let i = issued.fetch_add(1, Ordering::Relaxed);
                if cfg.total.is_some_and(|t| i >= t) {
                    break;
                }
                if cfg.rate > 0.0 {
                    tokio::time::sleep_until((start + Duration::from_secs_f64(i as f64 / cfg.rate)).into()).await;
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                let t = Instant::now();
                match op.call(i).await {
                    Ok(o) => {
                        let ns = t.elapsed().as_nanos() as u64;
                        r.latency.record(ns);
                        r.by_kind.entry(o.kind).or_default().record(ns);
                        if o.conflict {
                            r.conflicts += 1;
                        }
                    }
                    Err(s) => *r.errors.entry(error_label(&s)).or_default() += 1,
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            r
        }));
    }
    let mut all = RunResult::default();
    for t in tasks {
        match t.await {
            Ok(r) => all.merge(r),
            Err(e) => *all.errors.entry(format!("client task failed: {e}")).or_default() += 1,
        }
    }
    all.elapsed = start.elapsed();
    all.cpu = process_cpu_time().saturating_sub(cpu_start);
    stop.store(true, Ordering::Relaxed);
    if let Some(p) = progress {
        let _ = p.await;
    }
    all
}

/// Whether to draw a progress bar: stderr is a terminal and no machine-readable output was asked.
pub fn want_progress(json: bool) -> bool {
    !json && std::io::stderr().is_terminal()
}
