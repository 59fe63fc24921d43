//! One robustness run per seed: start a cluster, drive traffic, inject faults, stop, check.
//!
//! Invariant: a seed's result lists every violation found: the history checks
//! ([`report::check_history`]), HashKV disagreement, a member that crashed, a fault the cluster
//! did not recover from. A run passes only when that list is empty. Everything a person needs
//! afterwards is under `<out>/<seed>/`: summary.txt, history.json, the pictures, run.txt (faults
//! and results) and the members' logs.

use crate::client::EtcdClient;
use crate::cluster::{Cluster, ClusterConfig};
use crate::faults::{Fault, Injector};
use crate::hashkv::check_hashkv;
use crate::linearizability::CheckOptions;
use crate::recorder::{final_read, watch_all, Recorder};
use crate::report::{check_history, Report};
use crate::traffic::{self, stop_signal, ClientContext};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

#[derive(Clone, Debug)]
pub struct RunConfig {
    pub binary: PathBuf,
    pub members: usize,
    pub duration: Duration,
    pub faults: Vec<Fault>,
    pub traffics: Vec<String>,
    pub clients_per_traffic: u32,
    /// Least time between two requests of one client.
    pub pace: Duration,
    pub snapshot_count: u64,
    /// Pause between the end of one fault's recovery and the next fault (random in this range).
    pub fault_gap: (Duration, Duration),
    pub out: PathBuf,
    pub check: CheckOptions,
}

impl RunConfig {
    pub fn new(binary: PathBuf, out: PathBuf) -> RunConfig {
        RunConfig {
            binary,
            members: 3,
            duration: Duration::from_secs(20),
            faults: crate::faults::ALL_FAULTS.to_vec(),
            traffics: vec!["kv".into()],
            clients_per_traffic: 4,
            pace: Duration::from_millis(20),
            snapshot_count: 1000,
            fault_gap: (Duration::from_millis(500), Duration::from_millis(2500)),
            out,
            check: CheckOptions::default(),
        }
    }
}

/// The seeds of the CI short mode.
pub const SHORT_SEEDS: &[u64] = &[1, 2, 3];

/// The CI short mode: 3 members, every fault kind, a few seeds (~2 minutes in all).
pub fn short_mode(mut config: RunConfig) -> RunConfig {
    config.members = 3;
    config.duration = Duration::from_secs(20);
    config.faults = crate::faults::ALL_FAULTS.to_vec();
    config
}

/// The named regression scenarios, for bugs etcd itself had.
pub const SCENARIOS: &[&str] = &[
    "lost-writes-single-member-crash",
    "stale-read-after-partition-heal",
    "revoked-lease-keys-after-revoke",
    "lease-outlives-leader-change",
    "watch-at-compact-revision",
];

/// `config` shaped into the scenario `name`.
pub fn scenario_config(name: &str, mut config: RunConfig) -> Result<RunConfig, String> {
    match name {
        // etcd #14370: a single member lost acknowledged writes when killed (-9) and restarted.
        // Every kill here hits the only member; the final read must hold every acknowledged write.
        "lost-writes-single-member-crash" => {
            config.members = 1;
            config.faults = vec![Fault::Kill];
            config.traffics = vec!["kv".into()];
            config.clients_per_traffic = 6;
            config.pace = Duration::from_millis(5);
        }
        // A leader isolated from the majority must not answer linearizable reads with what the
        // majority has overwritten meanwhile, before or after the heal: each partition fault
        // ends with a linearizable get of every key on every member.
        "stale-read-after-partition-heal" => {
            config.members = 3;
            config.faults = vec![Fault::Partition];
            config.traffics = vec!["kv".into()];
        }
        // Leases revoked while members are killed and paused; every key of a lease is read
        // right after its revoke returned: none may still be there.
        "revoked-lease-keys-after-revoke" => {
            config.faults = vec![Fault::Kill, Fault::Stop];
            config.traffics = vec!["lease-revoke".into()];
        }
        // Leases of 10 s kept alive about every second while the leader is killed or
        // terminated (Term and Kill hit the leader at least half the time): a new leader extends
        // every lease, so no key of a kept-alive lease may vanish before its TTL.
        "lease-outlives-leader-change" => {
            config.faults = vec![Fault::Term, Fault::Kill];
            config.traffics = vec!["lease-keepalive".into(), "kv".into()];
        }
        // etcd #18089: put, delete at r, put, compact at r, watch from r: the delete at r must
        // be delivered (fixed in etcd 3.4.34 / 3.5.16; 3.4.23 and 3.5.1 are expected to fail).
        "watch-at-compact-revision" => {
            config.faults = vec![Fault::Defrag];
            config.traffics = vec!["kube-compact-watch".into()];
            config.clients_per_traffic = 2;
            config.pace = Duration::from_millis(50);
        }
        _ => {
            return Err(format!(
                "unknown scenario {name:?} (known: {})",
                SCENARIOS.join(", ")
            ))
        }
    }
    Ok(config)
}

/// What one seed produced.
pub struct SeedResult {
    pub seed: u64,
    pub operations: usize,
    /// Each distinct client error and how often it came.
    pub errors: Vec<(String, u64)>,
    pub faults: Vec<String>,
    pub violations: Vec<String>,
    pub elapsed: Duration,
    pub dir: PathBuf,
}

impl SeedResult {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    pub fn line(&self) -> String {
        format!(
            "seed {}: {} operations, {} faults, {} in {:.1}s ({})",
            self.seed,
            self.operations,
            self.faults.len(),
            if self.passed() {
                "PASS".to_string()
            } else {
                format!("FAIL ({} violations)", self.violations.len())
            },
            self.elapsed.as_secs_f64(),
            self.dir.display()
        )
    }
}

/// Client id of the run's all-keys watch; traffic clients count from 1.
const WATCH_CLIENT: u32 = 0;

pub async fn run_seed(config: &RunConfig, seed: u64) -> SeedResult {
    let started = Instant::now();
    let dir = config.out.join(seed.to_string());
    let mut result = SeedResult {
        seed,
        operations: 0,
        errors: Vec::new(),
        faults: Vec::new(),
        violations: Vec::new(),
        elapsed: Duration::ZERO,
        dir: dir.clone(),
    };
    if let Err(e) = drive(config, seed, &mut result).await {
        result.violations.push(e);
    }
    result.elapsed = started.elapsed();
    let mut text = format!("{}\nfaults:\n", result.line());
    for f in &result.faults {
        let _ = writeln!(text, "  {f}");
    }
    let _ = writeln!(text, "client errors (recorded outcome, code, message):");
    for (e, n) in &result.errors {
        let _ = writeln!(text, "  {n:6} {e}");
    }
    let _ = writeln!(text, "violations:");
    for v in &result.violations {
        let _ = writeln!(text, "  {v}");
    }
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(dir.join("run.txt"), text);
    result
}

/// The run itself; Err only for a failure that ends the run early (the cluster did not start).
async fn drive(config: &RunConfig, seed: u64, result: &mut SeedResult) -> Result<(), String> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let cluster_dir = result.dir.join("cluster");
    // A previous run of the same seed leaves its data behind.
    let _ = std::fs::remove_dir_all(&cluster_dir);
    let mut cluster = Cluster::new(ClusterConfig {
        binary: config.binary.clone(),
        members: config.members,
        dir: cluster_dir,
        snapshot_count: config.snapshot_count,
        heartbeat_ms: 100,
        election_ms: 1000,
    })?;
    cluster.attach_network().await?;
    cluster.start_all().await?;
    let leader = cluster.wait_leader(Duration::from_secs(30)).await?;
    let initial_revision = cluster.revision(leader).await?;
    let urls = Arc::new(cluster.client_urls());
    let cluster = Arc::new(Mutex::new(cluster));
    let recorder = Recorder::new();

    let (watch_stop_tx, watch_stop) = tokio::sync::watch::channel(None);
    let watch = tokio::spawn(watch_all(
        recorder.clone(),
        WATCH_CLIENT,
        urls.clone(),
        watch_stop,
    ));

    let (stop_handle, stop) = stop_signal();
    let mut clients = Vec::new();
    let mut id = WATCH_CLIENT;
    for name in &config.traffics {
        let traffic = traffic::by_name(name).ok_or_else(|| format!("unknown traffic {name:?}"))?;
        for _ in 0..config.clients_per_traffic {
            id += 1;
            let ctx = ClientContext {
                id,
                client: EtcdClient::new(urls.clone(), id as usize)?,
                recorder: recorder.clone(),
                rng: fastrand::Rng::with_seed(seed.wrapping_mul(1_000_003) + id as u64),
                stop: stop.clone(),
                pace: config.pace,
            };
            clients.push(tokio::spawn(traffic.run(ctx)));
        }
    }

    let mut injector = Injector {
        cluster: cluster.clone(),
        recorder: recorder.clone(),
        rng: fastrand::Rng::with_seed(rng.u64(..)),
        snapshot_count: config.snapshot_count,
    };
    let end = Instant::now() + config.duration;
    while Instant::now() < end {
        let (lo, hi) = config.fault_gap;
        let gap = Duration::from_millis(rng.u64(lo.as_millis() as u64..=hi.as_millis() as u64));
        tokio::time::sleep(gap.min(end.saturating_duration_since(Instant::now()))).await;
        let crashed = cluster.lock().await.crashed();
        if !crashed.is_empty() {
            result.violations.extend(crashed);
            break;
        }
        if config.faults.is_empty() || Instant::now() >= end {
            continue;
        }
        let fault = config.faults[rng.usize(0..config.faults.len())];
        let at = recorder.now() / 1_000_000;
        match injector.inject(fault).await {
            Ok(what) => result
                .faults
                .push(format!("{at}ms {}: {what}", fault.name())),
            Err(e) => {
                result
                    .faults
                    .push(format!("{at}ms {}: FAILED: {e}", fault.name()));
                result.violations.push(format!(
                    "cluster did not recover from {}: {e}",
                    fault.name()
                ));
                break;
            }
        }
    }

    stop_handle.stop();
    for c in clients {
        let _ = c.await;
    }
    result.violations.extend(cluster.lock().await.crashed());

    // After a failed recovery, bring every member back so the final checks can run.
    {
        let mut cluster = cluster.lock().await;
        let down = cluster.down();
        if !down.is_empty() {
            if let Err(e) = cluster.restart_all(&down).await {
                result
                    .violations
                    .push(format!("restart after the run: {e}"));
            }
        }
        for i in 0..cluster.len() {
            cluster.resume(i);
        }
    }

    let mut reader = EtcdClient::new(urls.clone(), 0)?;
    let final_read = match final_read(&mut reader, 50).await {
        Ok(f) => Some(f),
        Err(e) => {
            result.violations.push(e);
            None
        }
    };
    let final_revision = final_read.as_ref().map_or(0, |f| f.revision);
    let _ = watch_stop_tx.send(Some(final_revision));
    let mut watch = watch;
    if tokio::time::timeout(Duration::from_secs(30), &mut watch)
        .await
        .is_err()
    {
        // The watch never caught up: end it with what it received (the checks see the gap).
        let _ = watch_stop_tx.send(Some(0));
        let _ = watch.await;
    }

    if final_revision > 0 {
        if let Err(e) = check_hashkv(&urls, final_revision, Duration::from_secs(30)).await {
            result.violations.push(e);
        }
    }
    result.violations.extend(cluster.lock().await.crashed());

    let history = recorder.history(final_read, initial_revision);
    result.operations = history.operations.len();
    result.errors = recorder.errors();
    let options = config.check;
    let (report, history) = tokio::task::spawn_blocking(move || {
        let report = check_history(&history, options);
        (report, history)
    })
    .await
    .map_err(|e| format!("checker panicked: {e}"))?;
    write_report(&report, &history, result)?;
    let mut cluster = cluster.lock().await;
    cluster.kill_all();
    if result.violations.is_empty() {
        cluster.remove_data();
    }
    Ok(())
}

fn write_report(
    report: &Report,
    history: &crate::history::History,
    result: &mut SeedResult,
) -> Result<(), String> {
    if !report.passed() {
        let first = report
            .summary()
            .lines()
            .take(8)
            .collect::<Vec<_>>()
            .join("; ");
        result.violations.push(format!("history check: {first}"));
    }
    report
        .write_to(&result.dir, history)
        .map_err(|e| format!("cannot write {}: {e}", result.dir.display()))?;
    Ok(())
}
