//! `etcd-rs`: a drop-in etcd v3 server. Run with no flags it is a single member serving
//! clients on 127.0.0.1:2379 with its data in ./default.etcd, as `etcd` is.

use std::io::Write;

use clap::Parser;
use etcd_server::config::{normalize_args, split_ignored_flags, url_string, Flags, ETCD_RS_VERSION};
use etcd_server::grpc::ClientTraffic;
use etcd_server::serve::{GatewayStreamLimit, Listener};
use etcd_server::peer_host::PeerRoutes;
use etcd_server::tls::{self, TlsSetup};
use etcd_server::{compact_hash_check, compactor, config_file, corrupt, grpc, health, logging, metrics, serve, EtcdServer};
use tokio::sync::watch;

/// mimalloc instead of glibc malloc: see server/Cargo.toml and README "Benchmarks".
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Keeps transparent huge pages out of this process. mimalloc asks for them (`madvise`) on the
/// memory it takes from the OS, so each 2 MiB region it touches is faulted in whole and zeroed,
/// and again after each purge, however little of it is used: one member after 300k puts from 256
/// clients peaked at 123-139 MiB with them and 101-109 without, at the same puts per second; on 3
/// members at 256 clients the zeroing was ~3% of the CPU samples, and CPU per put summed over the
/// members fell from 58-65 to 52-61 us (kernel time 21-25 -> 19-21 us). Best effort: an old
/// kernel without PR_SET_THP_DISABLE keeps them.
fn disable_transparent_huge_pages() {
    // SAFETY: prctl with integer arguments only, changing a flag of this process.
    let _ = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
}

/// Worker threads of the client runtime (gRPC, HTTP, leases, watches): one per core but one,
/// which the raft thread (with the WAL's writes and fsyncs) and the applier share (they run
/// outside the runtime and are busy whenever writes are). With as many workers as cores they competed for the
/// cores, and the workers parked and woke each other more often: on 2 vCPUs a second worker cost
/// ~27% more CPU per put on a 3-member cluster (~33% on one member) for fewer puts per second,
/// and fewer serializable reads per second on 3 members (the same on one). Measured on 2 vCPUs
/// only (README, Benchmarks). `TOKIO_WORKER_THREADS` overrides it.
fn client_worker_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1))
}

fn main() {
    disable_transparent_huge_pages();
    let (args, ignored_flags) = split_ignored_flags(normalize_args(std::env::args()));
    let flags = match Flags::try_parse_from(args) {
        Ok(f) => f,
        Err(e) => {
            let _ = e.print();
            std::process::exit(if e.use_stderr() { 2 } else { 0 });
        }
    };
    // As etcd: a config file replaces every other flag and ETCD_* variable.
    let flags = if flags.config_file.is_empty() || flags.version {
        flags
    } else {
        match config_file::flags_from_file(&flags.config_file) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("etcd-rs: {e}");
                std::process::exit(2);
            }
        }
    };
    if flags.version {
        // written, not println!: a closed stdout (`etcd-rs --version | head -1`) is no panic
        let version = format!(
            "etcd Version: {}\netcd-rs Version: {ETCD_RS_VERSION}\nOS/Arch: {}/{}\n",
            flags.etcd_api_version,
            std::env::consts::OS,
            std::env::consts::ARCH
        );
        let _ = std::io::stdout().lock().write_all(version.as_bytes());
        return;
    }
    let log_config = logging::LogConfig::from_flags(
        &flags.logger,
        &flags.log_outputs,
        &flags.log_level,
        &flags.log_format,
        flags.enable_log_rotation,
        &flags.log_rotation_config_json,
    );
    // as etcd: a logging setting it cannot use fails its config validation (exit 1)
    if let Err(e) = log_config.and_then(|c| logging::init(&c)) {
        eprintln!("etcd-rs: {e}");
        std::process::exit(1);
    }
    for name in ignored_flags {
        tracing::warn!("flag-name" = %name, "flag is no longer supported - ignoring");
    }
    if !flags.config_file.is_empty() {
        tracing::info!(
            path = %flags.config_file,
            "loaded server configuration, other configuration command line flags and environment variables will be ignored if provided"
        );
    }
    for w in flags.warnings() {
        tracing::warn!("{w}");
    }
    // as etcd: a bad --feature-gates value ends with 2 (Go's flag package), a conflict between
    // an old and a new flag name or a gate and its experimental flag with 1 (its Validate)
    if let Err(e) = flags.renamed() {
        eprintln!("etcd-rs: {e}");
        std::process::exit(1);
    }
    if let Err(e) = flags.feature_gates() {
        eprintln!("etcd-rs: {e}");
        std::process::exit(e.exit_code);
    }
    let cfg = match flags.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("etcd-rs: {e}");
            std::process::exit(2);
        }
    };
    // most requests and answers are well under 1 KiB (see etcd_proto::codec)
    etcd_proto::codec::set_buffer_size(1024);
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        rt.worker_threads(client_worker_threads());
    }
    let rt = rt.enable_all().thread_name("etcd-rs").build();
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("etcd-rs: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    match rt.block_on(run(cfg)) {
        Ok(Some(signal)) => {
            drop(rt);
            die_by(signal)
        }
        Ok(None) => {}
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("etcd-rs: {e}");
            std::process::exit(1);
        }
    }
}

/// As etcd after a signal-initiated stop: the signal is raised again with its default action, so
/// the process ends "killed by SIGTERM" (what service managers and shells expect), except as pid 1,
/// where the kernel would ignore it.
fn die_by(signal: StopSignal) {
    if std::process::id() == 1 {
        std::process::exit(0);
    }
    // SAFETY: plain libc calls on this process with a valid signal number; no memory is shared.
    unsafe {
        libc::signal(signal.number, libc::SIG_DFL);
        libc::raise(signal.number);
    }
}

/// Runs the member until a signal (returned, to be raised again on exit) or its removal (None).
async fn run(mut cfg: etcd_server::config::ServerConfig) -> Result<Option<StopSignal>, String> {
    tracing::info!(
        etcd_version = %cfg.etcd_api_version,
        etcd_rs_version = ETCD_RS_VERSION,
        name = %cfg.name,
        data_dir = %cfg.data_dir.display(),
        "starting etcd-rs"
    );
    // Bind first, so a busy port fails fast before any data dir is touched.
    let client_listeners = bind_all("listen-client-urls", &cfg.listen_client_urls, "client requests").await?;
    let http_listeners = bind_all("listen-client-http-urls", &cfg.listen_client_http_urls, "client HTTP requests").await?;
    let peer_listeners = bind_all("listen-peer-urls", &cfg.listen_peer_urls, "peers").await?;
    let metrics_listeners = bind_all("listen-metrics-urls", &cfg.listen_metrics_urls, "metrics").await?;
    let tls = TlsSetup::load(&cfg).map_err(|e| e.to_string())?;
    cfg.peer_dial_tls = tls.peer_dial.clone();
    if cfg.extensive_metrics {
        metrics::enable_extensive();
    }
    metrics::set_warning_apply_duration(cfg.warning_apply_duration);
    // a takeover of etcd's files (or one a crash interrupted, whose WAL may be mid-rename)
    // completes first, so the WAL found below is the member's
    etcd_server::takeover::take_over_etcd_data_dir(&cfg.data_dir, &cfg.wal_dir).map_err(|e| e.to_string())?;
    // as etcd: only a member that has run before checks its data against its peers'
    let member_initialized = etcd_raft::Wal::exists(&cfg.wal_dir);
    if !member_initialized {
        etcd_server::discovery::bootstrap(&mut cfg).await?;
    }
    let server = EtcdServer::start(cfg.clone()).await.map_err(|e| e.to_string())?;
    if cfg.initial_corrupt_check && member_initialized {
        if let Err(e) = corrupt::initial_check(&server).await {
            server.stop().await;
            return Err(e);
        }
    }
    let mut corrupt_checks = vec![tokio::spawn(corrupt::run_periodic(server.clone(), cfg.corrupt_check_time))];
    if cfg.compact_hash_check {
        corrupt_checks.push(tokio::spawn(compact_hash_check::run(server.clone(), cfg.compact_hash_check_time)));
    }

    // Peers first: electing a leader (and so publishing) needs them. Peers stop last (see
    // `stop_gracefully`), so they have their own stop signal.
    let (client_stop_tx, client_stop) = watch::channel(false);
    let (peer_stop_tx, peer_stop) = watch::channel(false);
    let mut client_serving = Vec::new();
    let mut peer_serving = Vec::new();
    // Metrics and health from the start, as etcd: a probe sees "no leader" rather than nothing.
    for (l, https) in metrics_listeners {
        let routes = health::metrics_listener_routes(server.clone());
        client_serving.push(serve_url(l, https.then(|| tls.client.clone()), routes, &client_stop, "metrics", None, false, serve::HttpVersions::Both)?);
    }
    for (l, https) in peer_listeners {
        let check_san = !cfg.peer_skip_client_san_verification;
        // on the raft loop's thread, with the peer streams (see etcd_raft::raft_runtime)
        let _on_raft_thread = server.peer_runtime().enter();
        peer_serving.push(serve_url(l, https.then(|| tls.peer.clone()), PeerRoutes::new(server.clone()), &peer_stop, "peer", None, check_san, serve::HttpVersions::Both)?);
    }
    let stopping = Stopping { server: server.clone(), client_stop_tx, client_serving, peer_stop_tx, peer_serving };

    // As etcd, serve clients only once this member is published to the cluster through raft.
    tokio::select! {
        _ = server.publish() => {}
        signal = wait_for_signal() => {
            tracing::info!(signal = signal.name, "received signal before ready; shutting down");
            corrupt_checks.iter().for_each(|t| t.abort());
            stopping.stop_gracefully(true).await;
            return Ok(Some(signal));
        }
    }

    let mut stopping = stopping;
    // as etcd's splitHTTP: with HTTP URLs of their own, the client URLs serve gRPC alone
    let client_traffic = if http_listeners.is_empty() { ClientTraffic::GrpcAndHttp } else { ClientTraffic::Grpc };
    let listeners = client_listeners.into_iter().map(|l| (l, client_traffic));
    for ((l, https), traffic) in listeners.chain(http_listeners.into_iter().map(|l| (l, ClientTraffic::Http))) {
        let routes = GatewayStreamLimit::new(grpc::routes(server.clone(), traffic), cfg.max_concurrent_streams);
        let max_streams = Some(cfg.max_concurrent_streams);
        let address = l.address();
        let tls_config = https.then(|| tls.client.as_ref().map(|c| tls::with_alpn(c, traffic.versions())));
        stopping.client_serving.push(serve_url(l, tls_config, routes, &client_stop, "client", max_streams, false, traffic.versions())?);
        if https {
            tracing::info!(traffic = traffic.name(), address = %address, "serving client traffic securely");
        } else {
            tracing::info!(traffic = traffic.name(), address = %address, "serving client traffic insecurely; this is strongly discouraged!");
        }
    }
    let compaction = tokio::spawn(compactor::run(server.clone(), cfg.auto_compaction));

    // A removed member has no one to hand over to (its peers refuse its messages), as in etcd
    // where only Stop, not the removal, transfers leadership.
    let signal = tokio::select! {
        signal = wait_for_signal() => {
            tracing::info!(signal = signal.name, "received signal; shutting down");
            Some(signal)
        }
        _ = server.removed() => {
            tracing::warn!("this member was removed from the cluster; shutting down");
            None
        }
    };
    let still_member = signal.is_some();
    compaction.abort();
    corrupt_checks.iter().for_each(|t| t.abort());
    stopping.stop_gracefully(still_member).await;
    tracing::info!("stopped serving; data synced");
    Ok(signal)
}

/// What a stop takes apart, in the order etcd's (embed.Etcd).Close does it.
struct Stopping {
    server: std::sync::Arc<EtcdServer>,
    client_stop_tx: watch::Sender<bool>,
    /// Client and metrics listeners.
    client_serving: Vec<tokio::task::JoinHandle<()>>,
    peer_stop_tx: watch::Sender<bool>,
    peer_serving: Vec<tokio::task::JoinHandle<()>>,
}

impl Stopping {
    /// 1. Client listeners stop: open streams end with Unavailable (clients resume them on other
    ///    members), calls in progress get up to a request timeout to finish, then their
    ///    connections are closed (etcd: grpc GracefulStop, then Stop after ReqTimeout).
    /// 2. A leader still a member hands leadership to a caught-up follower, so the cluster has
    ///    a leader again within a round trip instead of an election timeout after it goes.
    /// 3. Raft and the applier stop (the backend is synced), then the peer listeners close:
    ///    peers are needed up to here, by the hand-over.
    ///
    /// `still_member` false (this member was removed): its raft can no longer answer reads or
    /// writes, so raft stops first and calls waiting on it end with `etcdserver: server stopped`
    /// (clients retry them on other members) instead of holding the drain to their deadlines.
    async fn stop_gracefully(self, still_member: bool) {
        if !still_member {
            self.server.stop().await;
        }
        let _ = self.client_stop_tx.send(true);
        let drain = self.server.request_timeout();
        let aborts: Vec<_> = self.client_serving.iter().map(|h| h.abort_handle()).collect();
        if tokio::time::timeout(drain, futures::future::join_all(self.client_serving)).await.is_err() {
            tracing::warn!(timeout = ?drain, "closing client connections whose requests did not finish in time");
            aborts.iter().for_each(|a| a.abort());
        }
        let handed_over = if still_member { self.server.transfer_leadership().await } else { Ok(()) };
        if let Err(e) = handed_over {
            tracing::warn!(
                "local-member-id" = %format!("{:x}", self.server.member_id()),
                error = %e,
                "leadership transfer failed"
            );
        }
        if still_member {
            self.server.stop().await;
        }
        // Nothing a peer could still send matters once raft has stopped.
        let _ = self.peer_stop_tx.send(true);
        self.peer_serving.iter().for_each(|h| h.abort());
        // they run on the raft thread, which the process's exit does not wait for: a listener
        // is closed (a unix socket's file removed) only once its task is gone
        for h in self.peer_serving {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), h).await;
        }
    }
}

/// Serves an http or unix listener in plain text, an https one (`tls` is Some) over TLS; an
/// https listener without a TLS configuration is an error, never served in plain text. Every
/// listener answers HTTP/1.1 and HTTP/2: client and metrics listeners gRPC and `/health`,
/// `/metrics`...; peer listeners etcd's peer protocol (HTTP/1.1), their TLS handshakes with the
/// peer certificate checks. `max_streams`: HTTP/2 streams per connection
/// (`--max-concurrent-streams`). `check_san`: the peer listener's client-certificate SAN check
/// (off with `--peer-skip-client-san-verification`). `versions`: the HTTP versions it speaks.
#[allow(clippy::too_many_arguments)]
fn serve_url<S, B>(
    listener: Listener,
    tls: Option<Option<std::sync::Arc<rustls::ServerConfig>>>,
    service: S,
    stop: &watch::Receiver<bool>,
    what: &'static str,
    max_streams: Option<u32>,
    check_san: bool,
    versions: serve::HttpVersions,
) -> Result<tokio::task::JoinHandle<()>, String>
where
    S: tower::Service<
            axum::http::Request<serve::RequestBody>,
            Response = axum::http::Response<B>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match (listener, tls) {
        (Listener::Tcp(listener), None) => {
            // TCP_NODELAY on accepted sockets, as Go sets by default (without it Nagle and delayed
            // ACKs held answers for ~40 ms: txn-put at 64 clients had p50 44 ms).
            let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            Ok(tokio::spawn(serve::serve(incoming, service, versions, max_streams, stop.clone())))
        }
        (Listener::Tcp(listener), Some(Some(config))) => {
            let incoming = tls::incoming(listener, config, check_san);
            Ok(tokio::spawn(serve::serve(incoming, service, versions, max_streams, stop.clone())))
        }
        (Listener::Unix(incoming), None) => Ok(tokio::spawn(serve::serve(incoming, service, versions, max_streams, stop.clone()))),
        (Listener::Unix(incoming), Some(Some(config))) => {
            let incoming = tls::incoming_unix(incoming, config, check_san);
            Ok(tokio::spawn(serve::serve(incoming, service, versions, max_streams, stop.clone())))
        }
        (_, Some(None)) => Err(format!("no TLS configuration for the https {what} listener")),
    }
}

/// Binds every URL; each listener comes with whether its URL is https or unixs (TLS).
async fn bind_all(flag: &str, urls: &[url::Url], what: &str) -> Result<Vec<(Listener, bool)>, String> {
    let mut out = Vec::new();
    for u in urls {
        let l = serve::bind(u).await.map_err(|e| format!("--{flag}: {e}"))?;
        tracing::info!(address = %url_string(u), scheme = u.scheme(), "listening for {what}");
        out.push((l, tls::is_tls(u)));
    }
    Ok(out)
}

/// A stop signal: its name as Go prints it (etcd logs it so) and its number.
#[derive(Clone, Copy)]
struct StopSignal {
    name: &'static str,
    number: i32,
}

/// Waits for SIGTERM or SIGINT.
async fn wait_for_signal() -> StopSignal {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => StopSignal { name: "terminated", number: libc::SIGTERM },
        _ = tokio::signal::ctrl_c() => StopSignal { name: "interrupt", number: libc::SIGINT },
    }
}
