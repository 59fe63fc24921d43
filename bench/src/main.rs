//! etcd-rs-bench: a gRPC load generator for etcd v3 servers (etcd or etcd-rs), in the spirit of
//! etcd's tools/benchmark: same subcommand and flag names where they exist.

mod fsync_probe;
mod histogram;
mod keygen;
mod list_rss;
mod report;
mod runner;
mod workloads;

use clap::{Args, Parser, Subcommand};
use std::process::ExitCode;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// mimalloc instead of glibc malloc: less of the shared CPU goes to the load generator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(name = "etcd-rs-bench", about = "A low-level benchmark tool for etcd v3 servers", version)]
struct Cli {
    /// gRPC endpoints (host:port or URL), comma separated; connections are spread over them.
    #[arg(long, global = true, value_delimiter = ',', default_value = "127.0.0.1:2379")]
    endpoints: Vec<String>,
    /// Total number of gRPC connections.
    #[arg(long, global = true, default_value_t = 1)]
    conns: usize,
    /// Total number of concurrent clients (requests in flight).
    #[arg(long, global = true, default_value_t = 1)]
    clients: usize,
    /// Total number of requests (default 10000 unless --duration is given).
    #[arg(long, global = true)]
    total: Option<u64>,
    /// Run for this long instead of a fixed total (e.g. 30s, 2m, 500ms).
    #[arg(long, global = true, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Maximum requests per second overall (0 is no limit).
    #[arg(long, global = true, default_value_t = 0.0)]
    rate: f64,
    /// Use full floating point precision in the text summary.
    #[arg(long, global = true)]
    precise: bool,
    /// Print one machine-readable JSON line instead of the text summary.
    #[arg(long, global = true)]
    json: bool,
    /// Dial timeout.
    #[arg(long, global = true, default_value = "5s", value_parser = parse_duration)]
    dial_timeout: Duration,
    /// Threads running the clients: 0 is one per core; 1 runs everything on one thread, which
    /// costs less CPU per request and leaves more of a small machine to the server under test.
    #[arg(long, global = true, default_value_t = 0)]
    threads: usize,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Benchmark put.
    Put(workloads::PutArgs),
    /// Benchmark range: range KEY [END].
    Range(workloads::RangeArgs),
    /// Benchmark compare-and-swap updates (Txn if mod_revision == cached then put else get), as
    /// Kubernetes' GuaranteedUpdate does.
    TxnPut(workloads::TxnPutArgs),
    /// Benchmark a mix of ranges and txn puts: txn-mixed KEY [END].
    TxnMixed(workloads::TxnMixedArgs),
    /// Benchmark put-to-watch-event latency.
    WatchLatency(workloads::WatchLatencyArgs),
    /// Open idle watchers on distinct keys and hold them (for measuring a server's memory per
    /// watcher).
    WatchHold(workloads::WatchHoldArgs),
    /// Benchmark lease keep-alive round trips.
    LeaseKeepalive(workloads::LeaseKeepaliveArgs),
    /// A Kubernetes-like mix under /registry/: creates, CAS updates, gets, paged lists, and
    /// informers that list then watch from the list revision.
    Kube(workloads::KubeArgs),
    /// Measure fdatasync latency in a directory (the floor of one client's write latency).
    FsyncProbe(FsyncArgs),
    /// List a range once, with Range or RangeStream (--stream), and report how much the
    /// server's resident memory grew meanwhile: list-rss KEY [END] --server-pid PID.
    ListRss(list_rss::ListRssArgs),
}

#[derive(Args, Debug)]
struct FsyncArgs {
    /// Directory to probe (a temporary file is created and removed there).
    #[arg(long, default_value = ".")]
    dir: std::path::PathBuf,
    /// Bytes written before each fdatasync (about one WAL entry of a 256-byte put).
    #[arg(long, default_value_t = 512)]
    write_size: usize,
    /// Number of write+fdatasync rounds.
    #[arg(long, default_value_t = 1000)]
    count: usize,
    /// Overwrite a preallocated file instead of appending (data-only fdatasync).
    #[arg(long)]
    preallocate: bool,
}

pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.find(|c: char| c.is_ascii_alphabetic()).map(|i| s.split_at(i)).unwrap_or((s, "s"));
    let n: f64 = num.parse().map_err(|_| format!("invalid duration {s:?}"))?;
    let secs = match unit {
        "ms" => n / 1e3,
        "s" | "" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("invalid duration unit in {s:?} (use ms, s, m, h)")),
    };
    if !(secs.is_finite() && secs >= 0.0) {
        return Err(format!("invalid duration {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Global options the workloads need.
pub struct Global {
    pub channels: Vec<Channel>,
    pub clients: usize,
    pub cfg: runner::RunConfig,
    pub json: bool,
    pub precise: bool,
}

impl Global {
    /// The connection client `c` uses.
    pub fn channel(&self, c: usize) -> Channel {
        self.channels[c % self.channels.len()].clone()
    }
}

async fn connect(endpoints: &[String], conns: usize, timeout: Duration) -> Result<Vec<Channel>, String> {
    let mut out = Vec::new();
    for i in 0..conns.max(1) {
        let ep = &endpoints[i % endpoints.len()];
        let url = if ep.contains("://") { ep.clone() } else { format!("http://{ep}") };
        let e = Endpoint::from_shared(url.clone())
            .map_err(|e| format!("bad endpoint {ep}: {e}"))?
            .connect_timeout(timeout)
            .tcp_nodelay(true);
        // Each Endpoint::connect is its own HTTP/2 connection.
        out.push(e.connect().await.map_err(|e| format!("cannot connect to {url}: {e}"))?);
    }
    Ok(out)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Cmd::FsyncProbe(a) = &cli.cmd {
        return match fsync_probe::probe(&a.dir, a.write_size, a.count, a.preallocate) {
            Ok(h) => {
                fsync_probe::print(&a.dir, &h, cli.json, a.preallocate);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("fsync-probe: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let mut builder = match cli.threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            if n > 1 {
                b.worker_threads(n);
            }
            b
        }
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async_main(cli))
}

async fn async_main(cli: Cli) -> ExitCode {
    if cli.clients == 0 || cli.conns == 0 {
        eprintln!("--clients and --conns must be at least 1");
        return ExitCode::FAILURE;
    }
    let channels = match connect(&cli.endpoints, cli.conns, cli.dial_timeout).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let total = match (cli.total, cli.duration) {
        (None, None) => Some(10_000),
        (t, _) => t,
    };
    let g = Global {
        channels,
        clients: cli.clients,
        cfg: runner::RunConfig { total, duration: cli.duration, rate: cli.rate, progress: runner::want_progress(cli.json) },
        json: cli.json,
        precise: cli.precise,
    };
    let res = match cli.cmd {
        Cmd::Put(a) => workloads::put(&g, a).await,
        Cmd::Range(a) => workloads::range(&g, a).await,
        Cmd::TxnPut(a) => workloads::txn_put(&g, a).await,
        Cmd::TxnMixed(a) => workloads::txn_mixed(&g, a).await,
        Cmd::WatchLatency(a) => workloads::watch_latency(&g, a).await,
        Cmd::WatchHold(a) => workloads::watch_hold(&g, a).await,
        Cmd::LeaseKeepalive(a) => workloads::lease_keepalive(&g, a).await,
        Cmd::Kube(a) => workloads::kube(&g, a).await,
        Cmd::ListRss(a) => list_rss::list_rss(&g, a).await,
        Cmd::FsyncProbe(_) => unreachable!("handled before the runtime starts"),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(workloads::BenchError::NotSupported(what, status)) => {
            eprintln!("{what}: not supported by the server yet ({:?}: {})", status.code(), status.message());
            ExitCode::from(3)
        }
        Err(workloads::BenchError::Setup(msg)) => {
            eprintln!("{msg}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_as_go_style_units() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn cli_accepts_etcd_benchmark_flags() {
        let cli = Cli::try_parse_from([
            "etcd-rs-bench", "--endpoints=127.0.0.1:2379,127.0.0.1:22379", "--conns=16", "--clients=256",
            "put", "--key-size=8", "--val-size=256", "--key-space-size=100000", "--sequential-keys", "--total=1000",
        ])
        .expect("parses");
        assert_eq!(cli.endpoints.len(), 2);
        assert_eq!((cli.conns, cli.clients, cli.total), (16, 256, Some(1000)));
        let Cmd::Put(p) = cli.cmd else { panic!("put expected") };
        assert!(p.sequential_keys);
        assert_eq!((p.key_size, p.val_size, p.key_space_size), (8, 256, 100_000));
        let cli = Cli::try_parse_from(["etcd-rs-bench", "range", "foo", "fop", "--consistency=s", "--limit=10", "--count-only"]).expect("parses");
        let Cmd::Range(r) = cli.cmd else { panic!("range expected") };
        assert_eq!((r.key.as_str(), r.end.as_deref(), r.consistency.as_str(), r.limit, r.count_only), ("foo", Some("fop"), "s", 10, true));
    }
}
