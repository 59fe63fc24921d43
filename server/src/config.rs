//! The `etcd-rs` command line: etcd's flag names, defaults and `ETCD_*` variables.
//!
//! A flag given on the command line wins over its `ETCD_*` variable, as in etcd. etcd's Go
//! flag parser also accepts single-dash long flags (`-name x`); `normalize_args` rewrites them.
//! Flags for features etcd-rs has not built yet are accepted only at their default value:
//! anything else is a startup error naming the flag, never a silently ignored setting.

use std::path::PathBuf;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::Parser;

use crate::config_renamed::Renamed;

/// The etcd semver whose API etcd-rs implements (reported by Status and `/version`).
pub const ETCD_API_VERSION: &str = "3.5.17";
/// etcd-rs's own version.
pub const ETCD_RS_VERSION: &str = env!("CARGO_PKG_VERSION");

// args_override_self: as with Go's flag package, a flag given twice takes its last value (etcd's e2e
// tests pass `--client-cert-auth` twice) instead of refusing the start.
#[derive(Parser, Debug, Clone)]
#[command(name = "etcd-rs", about = "A drop-in etcd v3 server", disable_version_flag = true, args_override_self = true)]
pub struct Flags {
    /// Print the version and exit.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value = "false", value_parser = BoolishValueParser::new())]
    pub version: bool,

    // ---- member ----
    /// Human-readable name for this member.
    #[arg(long, env = "ETCD_NAME", default_value = "default")]
    pub name: String,
    /// Path to the data directory (default: ${name}.etcd).
    #[arg(long, env = "ETCD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Path to the dedicated wal directory.
    #[arg(long, env = "ETCD_WAL_DIR", default_value = "")]
    pub wal_dir: String,
    /// Number of committed transactions to trigger a snapshot to disk.
    #[arg(long, env = "ETCD_SNAPSHOT_COUNT", default_value_t = 100_000)]
    pub snapshot_count: u64,
    /// Time (in milliseconds) of a heartbeat interval.
    #[arg(long, env = "ETCD_HEARTBEAT_INTERVAL", default_value_t = 100)]
    pub heartbeat_interval: u64,
    /// Time (in milliseconds) for an election to timeout.
    #[arg(long, env = "ETCD_ELECTION_TIMEOUT", default_value_t = 1000)]
    pub election_timeout: u64,
    /// Whether to fast-forward initial election ticks on boot for faster election.
    #[arg(long, env = "ETCD_INITIAL_ELECTION_TICK_ADVANCE", default_value = "true", num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub initial_election_tick_advance: bool,
    /// List of URLs to listen on for peer traffic.
    #[arg(long, env = "ETCD_LISTEN_PEER_URLS", default_value = "http://localhost:2380")]
    pub listen_peer_urls: String,
    /// List of URLs to listen on for client traffic.
    #[arg(long, env = "ETCD_LISTEN_CLIENT_URLS", default_value = "http://localhost:2379")]
    pub listen_client_urls: String,
    /// List of URLs to listen on for HTTP traffic (`/health`, `/metrics`, `/version`, the gateway):
    /// with it, the `--listen-client-urls` listeners serve gRPC only (etcd 3.5+).
    #[arg(long, env = "ETCD_LISTEN_CLIENT_HTTP_URLS", default_value = "")]
    pub listen_client_http_urls: String,
    /// List of URLs to listen on for the metrics and health endpoints.
    #[arg(long, env = "ETCD_LISTEN_METRICS_URLS", default_value = "")]
    pub listen_metrics_urls: String,
    /// Maximum number of snapshot files to retain (0 is unlimited).
    #[arg(long, env = "ETCD_MAX_SNAPSHOTS", default_value_t = 5)]
    pub max_snapshots: u32,
    /// Maximum number of wal files to retain (0 is unlimited).
    #[arg(long, env = "ETCD_MAX_WALS", default_value_t = 5)]
    pub max_wals: u32,
    /// Raise alarms when backend size exceeds the given quota (0 defaults to low space quota).
    #[arg(long, env = "ETCD_QUOTA_BACKEND_BYTES", default_value_t = 0)]
    pub quota_backend_bytes: i64,
    /// BackendBatchInterval is the maximum time before commit the backend transaction.
    #[arg(long, env = "ETCD_BACKEND_BATCH_INTERVAL", default_value = "")]
    pub backend_batch_interval: String,
    /// BackendBatchLimit is the maximum operations before commit the backend transaction.
    #[arg(long, env = "ETCD_BACKEND_BATCH_LIMIT", default_value_t = 0)]
    pub backend_batch_limit: u64,
    /// The freelist type (bbolt only; accepted for compatibility, redb has none).
    #[arg(long, env = "ETCD_BACKEND_BBOLT_FREELIST_TYPE", default_value = "map")]
    pub backend_bbolt_freelist_type: String,
    /// Maximum number of operations permitted in a transaction.
    #[arg(long, env = "ETCD_MAX_TXN_OPS", default_value_t = 128)]
    pub max_txn_ops: usize,
    /// Maximum client request size in bytes the server will accept.
    #[arg(long, env = "ETCD_MAX_REQUEST_BYTES", default_value_t = 1_572_864)]
    pub max_request_bytes: usize,
    /// Minimum duration interval that a client should wait before pinging server.
    #[arg(long, env = "ETCD_GRPC_KEEPALIVE_MIN_TIME", default_value = "5s")]
    pub grpc_keepalive_min_time: String,
    /// Frequency duration of server-to-client ping to check if a connection is alive (0 to disable).
    #[arg(long, env = "ETCD_GRPC_KEEPALIVE_INTERVAL", default_value = "2h")]
    pub grpc_keepalive_interval: String,
    /// Additional duration of wait before closing a non-responsive connection (0 to disable).
    #[arg(long, env = "ETCD_GRPC_KEEPALIVE_TIMEOUT", default_value = "20s")]
    pub grpc_keepalive_timeout: String,
    /// Maximum concurrent streams that each client can open at a time (HTTP/2 streams of one
    /// connection; the gateway's requests of one listener share one connection, as in etcd).
    #[arg(long, env = "ETCD_MAX_CONCURRENT_STREAMS", default_value_t = u32::MAX)]
    pub max_concurrent_streams: u32,
    /// Enable to set socket option SO_REUSEPORT on listeners.
    #[arg(long, env = "ETCD_SOCKET_REUSE_PORT", default_value = "false", num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub socket_reuse_port: bool,
    /// Enable to set socket option SO_REUSEADDR on listeners.
    #[arg(long, env = "ETCD_SOCKET_REUSE_ADDRESS", default_value = "false", num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub socket_reuse_address: bool,

    // ---- clustering ----
    /// List of this member's peer URLs to advertise to the rest of the cluster.
    #[arg(long, env = "ETCD_INITIAL_ADVERTISE_PEER_URLS", default_value = "http://localhost:2380")]
    pub initial_advertise_peer_urls: String,
    /// Initial cluster configuration for bootstrapping.
    #[arg(long, env = "ETCD_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,
    /// Initial cluster state ('new' or 'existing').
    #[arg(long, env = "ETCD_INITIAL_CLUSTER_STATE", default_value = "new")]
    pub initial_cluster_state: String,
    /// Initial cluster token for the etcd cluster during bootstrap.
    #[arg(long, env = "ETCD_INITIAL_CLUSTER_TOKEN", default_value = "etcd-cluster")]
    pub initial_cluster_token: String,
    /// List of this member's client URLs to advertise to the public.
    #[arg(long, env = "ETCD_ADVERTISE_CLIENT_URLS", default_value = "http://localhost:2379")]
    pub advertise_client_urls: String,
    /// v2 discovery URL (not supported: etcd-rs has no v2 API; use --discovery-endpoints).
    #[arg(long, env = "ETCD_DISCOVERY", default_value = "")]
    pub discovery: String,
    #[arg(long, env = "ETCD_DISCOVERY_FALLBACK", default_value = "proxy")]
    pub discovery_fallback: String,
    #[arg(long, env = "ETCD_DISCOVERY_PROXY", default_value = "")]
    pub discovery_proxy: String,
    /// DNS domain used to bootstrap initial cluster (SRV records, see discovery/srv.rs).
    #[arg(long, env = "ETCD_DISCOVERY_SRV", default_value = "")]
    pub discovery_srv: String,
    /// Service name to query when using DNS discovery.
    #[arg(long, env = "ETCD_DISCOVERY_SRV_NAME", default_value = "")]
    pub discovery_srv_name: String,
    /// V3 discovery: comma-separated gRPC endpoints of the discovery service.
    #[arg(long, env = "ETCD_DISCOVERY_ENDPOINTS", default_value = "")]
    pub discovery_endpoints: String,
    /// V3 discovery: discovery token for the etcd cluster to be bootstrapped.
    #[arg(long, env = "ETCD_DISCOVERY_TOKEN", default_value = "")]
    pub discovery_token: String,
    /// V3 discovery: dial timeout for client connections.
    #[arg(long, env = "ETCD_DISCOVERY_DIAL_TIMEOUT", default_value = "2s")]
    pub discovery_dial_timeout: String,
    /// V3 discovery: timeout for discovery requests (excluding dial timeout).
    #[arg(long, env = "ETCD_DISCOVERY_REQUEST_TIMEOUT", default_value = "5s")]
    pub discovery_request_timeout: String,
    /// V3 discovery: keepalive time for client connections.
    #[arg(long, env = "ETCD_DISCOVERY_KEEPALIVE_TIME", default_value = "2s")]
    pub discovery_keepalive_time: String,
    /// V3 discovery: keepalive timeout for client connections.
    #[arg(long, env = "ETCD_DISCOVERY_KEEPALIVE_TIMEOUT", default_value = "6s")]
    pub discovery_keepalive_timeout: String,
    /// V3 discovery: disable transport security for client connections.
    #[arg(long, env = "ETCD_DISCOVERY_INSECURE_TRANSPORT", default_value = "true", num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub discovery_insecure_transport: bool,
    /// V3 discovery: skip server certificate verification (testing only).
    #[arg(long, env = "ETCD_DISCOVERY_INSECURE_SKIP_TLS_VERIFY", default_value = "false", num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub discovery_insecure_skip_tls_verify: bool,
    /// V3 discovery: identify secure client using this TLS certificate file.
    #[arg(long, env = "ETCD_DISCOVERY_CERT", default_value = "")]
    pub discovery_cert: String,
    /// V3 discovery: identify secure client using this TLS key file.
    #[arg(long, env = "ETCD_DISCOVERY_KEY", default_value = "")]
    pub discovery_key: String,
    /// V3 discovery: verify certificates of TLS-enabled secure servers using this CA bundle.
    #[arg(long, env = "ETCD_DISCOVERY_CACERT", default_value = "")]
    pub discovery_cacert: String,
    /// V3 discovery: username[:password] for authentication.
    #[arg(long, env = "ETCD_DISCOVERY_USER", default_value = "")]
    pub discovery_user: String,
    /// V3 discovery: password for authentication.
    #[arg(long, env = "ETCD_DISCOVERY_PASSWORD", default_value = "")]
    pub discovery_password: String,
    /// Reject reconfiguration requests that would cause quorum loss.
    #[arg(long, env = "ETCD_STRICT_RECONFIG_CHECK", default_value = "true", num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub strict_reconfig_check: bool,
    /// Enable to run an additional Raft election phase.
    #[arg(long, env = "ETCD_PRE_VOTE", default_value = "true", num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub pre_vote: bool,
    /// Auto compaction retention length. 0 means disable auto compaction.
    #[arg(long, env = "ETCD_AUTO_COMPACTION_RETENTION", default_value = "0")]
    pub auto_compaction_retention: String,
    /// Interpret 'auto-compaction-retention' one of: periodic|revision.
    #[arg(long, env = "ETCD_AUTO_COMPACTION_MODE", default_value = "periodic")]
    pub auto_compaction_mode: String,
    /// Maximum number of learners in the cluster.
    #[arg(long = "max-learners", alias = "experimental-max-learners", env = "ETCD_MAX_LEARNERS", default_value_t = 1)]
    pub max_learners: usize,
    /// Force to create a new one member cluster (a restarting member only: the others are removed).
    #[arg(long, env = "ETCD_FORCE_NEW_CLUSTER", default_value = "false", num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub force_new_cluster: bool,
    /// Accept etcd V2 client requests. etcd-rs serves v3 only: true is accepted (etcd's sample
    /// config sets it) with a warning at start that the v2 API is not served.
    #[arg(long, env = "ETCD_ENABLE_V2", default_value = "false", num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub enable_v2: bool,
    #[arg(long, env = "ETCD_V2_DEPRECATION", default_value = "not-yet")]
    pub v2_deprecation: String,

    // ---- security (TLS: see tls.rs) ----
    #[arg(long, env = "ETCD_CERT_FILE", default_value = "")]
    pub cert_file: String,
    #[arg(long, env = "ETCD_KEY_FILE", default_value = "")]
    pub key_file: String,
    /// The certificate this member shows when it is itself a client of its client URLs
    /// (default: --cert-file); with --client-key-file (etcd 3.5+).
    #[arg(long, env = "ETCD_CLIENT_CERT_FILE", default_value = "")]
    pub client_cert_file: String,
    #[arg(long, env = "ETCD_CLIENT_KEY_FILE", default_value = "")]
    pub client_key_file: String,
    #[arg(long, env = "ETCD_CLIENT_CERT_AUTH", default_value = "false", num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub client_cert_auth: bool,
    #[arg(long, env = "ETCD_CLIENT_CRL_FILE", default_value = "")]
    pub client_crl_file: String,
    #[arg(long, env = "ETCD_CLIENT_CERT_ALLOWED_HOSTNAME", default_value = "")]
    pub client_cert_allowed_hostname: String,
    #[arg(long, env = "ETCD_TRUSTED_CA_FILE", default_value = "")]
    pub trusted_ca_file: String,
    #[arg(long, env = "ETCD_AUTO_TLS", default_value = "false", num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub auto_tls: bool,
    #[arg(long, env = "ETCD_PEER_CERT_FILE", default_value = "")]
    pub peer_cert_file: String,
    #[arg(long, env = "ETCD_PEER_KEY_FILE", default_value = "")]
    pub peer_key_file: String,
    /// The certificate this member shows when it dials peers (default: --peer-cert-file); with
    /// --peer-client-key-file (etcd 3.5+).
    #[arg(long, env = "ETCD_PEER_CLIENT_CERT_FILE", default_value = "")]
    pub peer_client_cert_file: String,
    #[arg(long, env = "ETCD_PEER_CLIENT_KEY_FILE", default_value = "")]
    pub peer_client_key_file: String,
    #[arg(long, env = "ETCD_PEER_CLIENT_CERT_AUTH", default_value = "false", num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub peer_client_cert_auth: bool,
    #[arg(long, env = "ETCD_PEER_TRUSTED_CA_FILE", default_value = "")]
    pub peer_trusted_ca_file: String,
    #[arg(long, env = "ETCD_PEER_CERT_ALLOWED_CN", default_value = "")]
    pub peer_cert_allowed_cn: String,
    #[arg(long, env = "ETCD_PEER_CERT_ALLOWED_HOSTNAME", default_value = "")]
    pub peer_cert_allowed_hostname: String,
    #[arg(long, env = "ETCD_PEER_AUTO_TLS", default_value = "false", num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub peer_auto_tls: bool,
    #[arg(long, env = "ETCD_SELF_SIGNED_CERT_VALIDITY", default_value_t = 1)]
    pub self_signed_cert_validity: u32,
    #[arg(long, env = "ETCD_PEER_CRL_FILE", default_value = "")]
    pub peer_crl_file: String,
    #[arg(long, env = "ETCD_CIPHER_SUITES", default_value = "")]
    pub cipher_suites: String,
    /// etcd 3.5.7+: TLS1.2 or TLS1.3, for client and peer listeners and the peer dialer.
    #[arg(long, env = "ETCD_TLS_MIN_VERSION", default_value = "TLS1.2")]
    pub tls_min_version: String,
    /// etcd 3.5.7+: TLS1.2, TLS1.3 or "" (the newest).
    #[arg(long, env = "ETCD_TLS_MAX_VERSION", default_value = "")]
    pub tls_max_version: String,
    #[arg(long, env = "ETCD_CORS", default_value = "*")]
    pub cors: String,
    #[arg(long, env = "ETCD_HOST_WHITELIST", default_value = "*")]
    pub host_whitelist: String,

    // ---- auth (simple or JWT tokens) ----
    #[arg(long, env = "ETCD_AUTH_TOKEN", default_value = "simple")]
    pub auth_token: String,
    #[arg(long, env = "ETCD_BCRYPT_COST", default_value_t = 10)]
    pub bcrypt_cost: u32,
    #[arg(long, env = "ETCD_AUTH_TOKEN_TTL", default_value_t = 300)]
    pub auth_token_ttl: u64,

    // ---- profiling, metrics and logging ----
    #[arg(long, env = "ETCD_ENABLE_PPROF", default_value = "false", num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub enable_pprof: bool,
    /// Level of detail for exported metrics: 'basic', or 'extensive' to include gRPC handling-time histograms.
    #[arg(long, env = "ETCD_METRICS", default_value = "basic")]
    pub metrics: String,
    /// Currently only supports 'zap' for structured logging ('capnslog' prints plain text).
    #[arg(long, env = "ETCD_LOGGER", default_value = "zap")]
    pub logger: String,
    /// Specify 'stdout' or 'stderr' to skip journald logging even when running under systemd, or list of comma separated output targets.
    #[arg(long, env = "ETCD_LOG_OUTPUTS", default_value = "default")]
    pub log_outputs: String,
    /// Configures log level. Only supports debug, info, warn, error, panic, or fatal.
    #[arg(long, env = "ETCD_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// Configures log format. Only supports json, console (etcd 3.6).
    #[arg(long, env = "ETCD_LOG_FORMAT", default_value = "json")]
    pub log_format: String,
    /// Enable log rotation of a single log-outputs file target.
    #[arg(long, env = "ETCD_ENABLE_LOG_ROTATION", default_value = "false", num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub enable_log_rotation: bool,
    /// Configures log rotation if enabled with a JSON logger config (lumberjack's maxsize in MB,
    /// maxage in days, maxbackups).
    #[arg(long, env = "ETCD_LOG_ROTATION_CONFIG_JSON", default_value = crate::logging::DEFAULT_LOG_ROTATION_CONFIG)]
    pub log_rotation_config_json: String,
    /// Enable GRPC gateway (the `/v3/...` JSON API on the HTTP listeners).
    #[arg(long, env = "ETCD_ENABLE_GRPC_GATEWAY", default_value = "true", num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub enable_grpc_gateway: bool,
    /// Read timeout set on each rafthttp connection (a peer stream silent this long is redialled).
    #[arg(long, env = "ETCD_RAFT_READ_TIMEOUT", default_value = "5s")]
    pub raft_read_timeout: String,
    /// Write timeout set on each rafthttp connection.
    #[arg(long, env = "ETCD_RAFT_WRITE_TIMEOUT", default_value = "5s")]
    pub raft_write_timeout: String,

    // ---- settings etcd 3.6 renamed from --experimental-* (see `renamed`): each name is a flag
    // with its ETCD_* variable; None = not given, so both given can be refused as etcd does ----
    /// Number of entries for a slow follower to catch up after compacting the raft storage entries (default 5000).
    #[arg(long, env = "ETCD_SNAPSHOT_CATCHUP_ENTRIES")]
    pub snapshot_catchup_entries: Option<u64>,
    #[arg(long, env = "ETCD_EXPERIMENTAL_SNAPSHOT_CATCHUP_ENTRIES", hide = true)]
    pub experimental_snapshot_catchup_entries: Option<u64>,
    /// Duration of periodic watch progress notifications (default 10m).
    #[arg(long, env = "ETCD_WATCH_PROGRESS_NOTIFY_INTERVAL")]
    pub watch_progress_notify_interval: Option<String>,
    #[arg(long, env = "ETCD_EXPERIMENTAL_WATCH_PROGRESS_NOTIFY_INTERVAL", hide = true)]
    pub experimental_watch_progress_notify_interval: Option<String>,
    /// How often the leader compares the members' HashKV (default 0s: never).
    #[arg(long, env = "ETCD_CORRUPT_CHECK_TIME")]
    pub corrupt_check_time: Option<String>,
    #[arg(long, env = "ETCD_EXPERIMENTAL_CORRUPT_CHECK_TIME", hide = true)]
    pub experimental_corrupt_check_time: Option<String>,
    /// Sets the maximum revisions deleted in each compaction batch (default 1000; no effect in etcd-rs).
    #[arg(long, env = "ETCD_COMPACTION_BATCH_LIMIT")]
    pub compaction_batch_limit: Option<usize>,
    #[arg(long, env = "ETCD_EXPERIMENTAL_COMPACTION_BATCH_LIMIT", hide = true)]
    pub experimental_compaction_batch_limit: Option<usize>,
    /// Sleep between compaction batches (default 10ms; no effect in etcd-rs).
    #[arg(long, env = "ETCD_COMPACTION_SLEEP_INTERVAL")]
    pub compaction_sleep_interval: Option<String>,
    #[arg(long, env = "ETCD_EXPERIMENTAL_COMPACTION_SLEEP_INTERVAL", hide = true)]
    pub experimental_compaction_sleep_interval: Option<String>,
    /// Time after which a warning is logged for a slow apply (default 100ms).
    #[arg(long, env = "ETCD_WARNING_APPLY_DURATION")]
    pub warning_apply_duration: Option<String>,
    #[arg(long, env = "ETCD_EXPERIMENTAL_WARNING_APPLY_DURATION", hide = true)]
    pub experimental_warning_apply_duration: Option<String>,
    /// Time after which a warning is logged for a slow unary request (no effect in etcd-rs).
    #[arg(long, env = "ETCD_WARNING_UNARY_REQUEST_DURATION")]
    pub warning_unary_request_duration: Option<String>,
    #[arg(long, env = "ETCD_EXPERIMENTAL_WARNING_UNARY_REQUEST_DURATION", hide = true)]
    pub experimental_warning_unary_request_duration: Option<String>,
    /// Period of the leader's follower compaction-hash checks (default 1m; the check needs
    /// `--feature-gates=CompactHashCheck=true`).
    #[arg(long, env = "ETCD_COMPACT_HASH_CHECK_TIME")]
    pub compact_hash_check_time: Option<String>,
    #[arg(long, env = "ETCD_EXPERIMENTAL_COMPACT_HASH_CHECK_TIME", hide = true)]
    pub experimental_compact_hash_check_time: Option<String>,
    /// Period of downgrade status checks (default 5s; downgrades are not built).
    #[arg(long, env = "ETCD_DOWNGRADE_CHECK_TIME")]
    pub downgrade_check_time: Option<String>,
    #[arg(long, env = "ETCD_EXPERIMENTAL_DOWNGRADE_CHECK_TIME", hide = true)]
    pub experimental_downgrade_check_time: Option<String>,
    /// Defragment at start when it frees this many MB (not built: only 0).
    #[arg(long, env = "ETCD_BOOTSTRAP_DEFRAG_THRESHOLD_MEGABYTES")]
    pub bootstrap_defrag_threshold_megabytes: Option<u64>,
    #[arg(long, env = "ETCD_EXPERIMENTAL_BOOTSTRAP_DEFRAG_THRESHOLD_MEGABYTES", hide = true)]
    pub experimental_bootstrap_defrag_threshold_megabytes: Option<u64>,
    /// Keep the backend's pages in RAM (not built: only false).
    #[arg(long, env = "ETCD_MEMORY_MLOCK", num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub memory_mlock: Option<bool>,
    #[arg(long, env = "ETCD_EXPERIMENTAL_MEMORY_MLOCK", num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new(), hide = true)]
    pub experimental_memory_mlock: Option<bool>,
    /// Skip the SAN check of peers' client certificates (default false).
    #[arg(long, env = "ETCD_PEER_SKIP_CLIENT_SAN_VERIFICATION", num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub peer_skip_client_san_verification: Option<bool>,
    #[arg(long, env = "ETCD_EXPERIMENTAL_PEER_SKIP_CLIENT_SAN_VERIFICATION", num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new(), hide = true)]
    pub experimental_peer_skip_client_san_verification: Option<bool>,
    /// OpenTelemetry tracing (not built: only false).
    #[arg(long, env = "ETCD_ENABLE_DISTRIBUTED_TRACING", num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub enable_distributed_tracing: Option<bool>,
    #[arg(long, env = "ETCD_EXPERIMENTAL_ENABLE_DISTRIBUTED_TRACING", num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new(), hide = true)]
    pub experimental_enable_distributed_tracing: Option<bool>,
    /// Tracing settings: no effect while tracing is off (as in etcd).
    #[arg(long, env = "ETCD_DISTRIBUTED_TRACING_ADDRESS")]
    pub distributed_tracing_address: Option<String>,
    #[arg(long, env = "ETCD_EXPERIMENTAL_DISTRIBUTED_TRACING_ADDRESS", hide = true)]
    pub experimental_distributed_tracing_address: Option<String>,
    #[arg(long, env = "ETCD_DISTRIBUTED_TRACING_SERVICE_NAME")]
    pub distributed_tracing_service_name: Option<String>,
    #[arg(long, env = "ETCD_EXPERIMENTAL_DISTRIBUTED_TRACING_SERVICE_NAME", hide = true)]
    pub experimental_distributed_tracing_service_name: Option<String>,
    #[arg(long, env = "ETCD_DISTRIBUTED_TRACING_INSTANCE_ID")]
    pub distributed_tracing_instance_id: Option<String>,
    #[arg(long, env = "ETCD_EXPERIMENTAL_DISTRIBUTED_TRACING_INSTANCE_ID", hide = true)]
    pub experimental_distributed_tracing_instance_id: Option<String>,
    #[arg(long, env = "ETCD_DISTRIBUTED_TRACING_SAMPLING_RATE")]
    pub distributed_tracing_sampling_rate: Option<i64>,
    #[arg(long, env = "ETCD_EXPERIMENTAL_DISTRIBUTED_TRACING_SAMPLING_RATE", hide = true)]
    pub experimental_distributed_tracing_sampling_rate: Option<i64>,

    // ---- feature gates (feature_gates.rs) and the experimental flags 3.6 maps onto them ----
    /// Comma-separated list of feature gates (`Name=true|false`); may be given more than once.
    #[arg(long, env = "ETCD_FEATURE_GATES", action = clap::ArgAction::Append)]
    pub feature_gates: Vec<String>,
    /// Check every peer's HashKV before serving clients (a restarting member only, as etcd).
    /// Gate InitialCorruptCheck.
    #[arg(long, env = "ETCD_EXPERIMENTAL_INITIAL_CORRUPT_CHECK", num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub experimental_initial_corrupt_check: Option<bool>,
    /// Enable leader to send regular checkpoints to other members to prevent reset of remaining
    /// TTL on leader change (etcd-rs default: true). Gate LeaseCheckpoint.
    #[arg(long, env = "ETCD_EXPERIMENTAL_ENABLE_LEASE_CHECKPOINT", num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub experimental_enable_lease_checkpoint: Option<bool>,
    /// Gate LeaseCheckpointPersist (always on in etcd-rs).
    #[arg(long, env = "ETCD_EXPERIMENTAL_ENABLE_LEASE_CHECKPOINT_PERSIST", num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub experimental_enable_lease_checkpoint_persist: Option<bool>,
    /// Gate CompactHashCheck: the leader compares the hashes members take at compactions.
    #[arg(long, env = "ETCD_EXPERIMENTAL_COMPACT_HASH_CHECK_ENABLED", num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub experimental_compact_hash_check_enabled: Option<bool>,
    /// Gate TxnModeWriteWithSharedBuffer (no-op in etcd-rs).
    #[arg(long, env = "ETCD_EXPERIMENTAL_TXN_MODE_WRITE_WITH_SHARED_BUFFER", num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub experimental_txn_mode_write_with_shared_buffer: Option<bool>,
    /// Gate StopGRPCServiceOnDefrag (not built).
    #[arg(long, env = "ETCD_EXPERIMENTAL_STOP_GRPC_SERVICE_ON_DEFRAG", num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub experimental_stop_grpc_service_on_defrag: Option<bool>,
    /// Interval of lease checkpoints (remaining TTLs recorded through raft).
    #[arg(long = "experimental-lease-checkpoint-interval", env = "ETCD_EXPERIMENTAL_LEASE_CHECKPOINT_INTERVAL", default_value = "5m")]
    pub lease_checkpoint_interval: String,
    /// Disables fsync, unsafe, will cause data loss.
    #[arg(long, env = "ETCD_UNSAFE_NO_FSYNC", default_value = "false", num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub unsafe_no_fsync: bool,
    /// The etcd version etcd-rs reports in Status and /version.
    #[arg(long = "etcd-api-version", env = "ETCD_RS_ETCD_API_VERSION", default_value = ETCD_API_VERSION)]
    pub etcd_api_version: String,

    /// Path to the server configuration file (YAML, see config_file.rs). When given, the other
    /// flags and `ETCD_*` variables are ignored, as in etcd.
    #[arg(long, env = "ETCD_CONFIG_FILE", default_value = "")]
    pub config_file: String,
    /// Proxy mode (etcd-rs has no v2 proxy).
    #[arg(long, env = "ETCD_PROXY", default_value = "off")]
    pub proxy: String,
}

/// Rewrites Go-style single-dash long flags (`-name`, `-data-dir=x`) into `--name`.
pub fn normalize_args<I: IntoIterator<Item = String>>(args: I) -> Vec<String> {
    args.into_iter()
        .enumerate()
        .map(|(i, a)| {
            let is_single_dash_long = i > 0
                && a.starts_with('-')
                && !a.starts_with("--")
                && a.len() > 2
                && a.as_bytes()[1].is_ascii_alphabetic();
            if is_single_dash_long {
                format!("-{a}")
            } else {
                a
            }
        })
        .collect()
}

/// Flags of etcd's v2 days that etcd still accepts and ignores (etcdmain's `ignored` list, as
/// boolean-style flags: `--force` or `--force=x`).
pub const IGNORED_FLAGS: &[&str] = &[
    "cluster-active-size",
    "cluster-remove-delay",
    "cluster-sync-interval",
    "config",
    "force",
    "max-result-buffer",
    "max-retry-attempts",
    "peer-heartbeat-interval",
    "peer-election-timeout",
    "retry-interval",
    "snapshot",
    "v",
    "vv",
];

/// Takes etcd's ignored flags out of normalized arguments: (the rest, the names taken out).
pub fn split_ignored_flags(args: Vec<String>) -> (Vec<String>, Vec<String>) {
    let mut rest = Vec::with_capacity(args.len());
    let mut ignored = Vec::new();
    for (i, a) in args.into_iter().enumerate() {
        let name = a.strip_prefix("--").or_else(|| a.strip_prefix('-')).map(|n| n.split_once('=').map_or(n, |(n, _)| n));
        match name {
            Some(n) if i > 0 && IGNORED_FLAGS.contains(&n) => ignored.push(n.to_string()),
            _ => rest.push(a),
        }
    }
    (rest, ignored)
}

/// A member of `--initial-cluster`: name and its peer URLs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitialMember {
    pub name: String,
    pub peer_urls: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoCompaction {
    Off,
    /// Keep history for this long.
    Periodic(Duration),
    /// Keep this many revisions.
    Revision(i64),
}

/// Validated server configuration derived from `Flags`.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub name: String,
    pub data_dir: PathBuf,
    /// `--wal-dir`, or `<data-dir>/member/wal` when it is not given.
    pub wal_dir: PathBuf,
    /// `--force-new-cluster`: a restarting member comes up as the only member of its cluster.
    pub force_new_cluster: bool,
    pub listen_client_urls: Vec<url::Url>,
    pub advertise_client_urls: Vec<String>,
    /// `--cors` and `--host-whitelist`, as given (grpc/access.rs reads them).
    pub cors: String,
    pub host_whitelist: String,
    pub listen_peer_urls: Vec<url::Url>,
    /// `--listen-client-http-urls`: listeners for the HTTP side of the client API; when any is
    /// given the `listen_client_urls` serve gRPC only.
    pub listen_client_http_urls: Vec<url::Url>,
    /// `--enable-grpc-gateway`: the `/v3/...` JSON gateway on the HTTP listeners.
    pub enable_grpc_gateway: bool,
    /// `--warning-apply-duration`: an apply slower than this logs "apply request took too long".
    pub warning_apply_duration: Duration,
    /// `--raft-read-timeout` / `--raft-write-timeout`: rafthttp stream timeouts.
    pub raft_read_timeout: Duration,
    pub raft_write_timeout: Duration,
    /// Extra listeners serving only `/metrics` and the health endpoints (`--listen-metrics-urls`).
    pub listen_metrics_urls: Vec<url::Url>,
    /// `--metrics extensive`: gRPC handling-time histograms too.
    pub extensive_metrics: bool,
    /// Gate InitialCorruptCheck (`--experimental-initial-corrupt-check`): compare HashKV with every peer before serving.
    pub initial_corrupt_check: bool,
    /// `--corrupt-check-time` (`--experimental-...`): the leader's periodic HashKV comparison (0: off).
    pub corrupt_check_time: Duration,
    /// Gate CompactHashCheck (`--experimental-compact-hash-check-enabled`): the leader compares
    /// the hashes members took at compactions, every `compact_hash_check_time`.
    pub compact_hash_check: bool,
    /// `--compact-hash-check-time` (`--experimental-...`, default 1m, > 0).
    pub compact_hash_check_time: Duration,
    pub advertise_peer_urls: Vec<String>,
    pub initial_cluster: Vec<InitialMember>,
    pub initial_cluster_new: bool,
    pub initial_cluster_token: String,
    pub snapshot_count: u64,
    pub snapshot_catchup_entries: u64,
    pub heartbeat: Duration,
    pub election_ticks: usize,
    pub quota_backend_bytes: i64,
    pub max_txn_ops: usize,
    pub max_request_bytes: usize,
    /// `--max-concurrent-streams`: HTTP/2 streams per client connection (0: no limit, as grpc-go).
    pub max_concurrent_streams: u32,
    pub auto_compaction: AutoCompaction,
    pub backend_batch_interval: Duration,
    pub backend_batch_limit: u64,
    pub max_learners: usize,
    pub strict_reconfig_check: bool,
    pub etcd_api_version: String,
    pub unsafe_no_fsync: bool,
    /// Period of progress notifications to watchers that asked for them (etcd: at least 100ms).
    pub watch_progress_notify_interval: Duration,
    pub enable_lease_checkpoint: bool,
    pub lease_checkpoint_interval: Duration,
    /// `--peer-skip-client-san-verification`: the peer listener skips its client-certificate SAN check.
    pub peer_skip_client_san_verification: bool,
    /// `--discovery-srv` / `--discovery-endpoints`: where a new member learns its initial cluster.
    pub discovery: Option<crate::discovery::Discovery>,
    /// Client and peer TLS flags (tls.rs builds the rustls configurations from them).
    pub client_tls: crate::tls::TlsFlags,
    pub peer_tls: crate::tls::TlsFlags,
    pub self_signed_cert_validity: u32,
    /// How this member dials https peers: set at start from `tls::TlsSetup::load` (None:
    /// no peer certificate, so dialling an https peer fails).
    pub peer_dial_tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// bcrypt cost of password hashes (etcd's `--bcrypt-cost`; out of range: 10).
    pub bcrypt_cost: u32,
    /// How long an unused simple token lives (`--auth-token-ttl`, seconds).
    pub auth_token_ttl: Duration,
    /// `--auth-token`: "simple", "jwt,key=value,..." or "" (read at start: JWT key files).
    pub auth_token: String,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(msg.into()))
}

/// Parses a Go duration ("100ms", "1h30m", "5s"); a bare number is rejected unless `bare_unit` is given.
pub fn parse_go_duration(s: &str, bare_unit: Option<Duration>) -> Result<Duration, ConfigError> {
    let s = s.trim();
    if let (Ok(n), Some(unit)) = (s.parse::<f64>(), bare_unit) {
        if n < 0.0 {
            return err(format!("negative duration {s:?}"));
        }
        return Ok(unit.mul_f64(n));
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    if rest.is_empty() {
        return err("empty duration");
    }
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if num_len == 0 {
            return err(format!("invalid duration {s:?}"));
        }
        let n: f64 = rest[..num_len].parse().map_err(|_| ConfigError(format!("invalid duration {s:?}")))?;
        rest = &rest[num_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ns" => Duration::from_nanos(1),
            "us" | "µs" => Duration::from_micros(1),
            "ms" => Duration::from_millis(1),
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return err(format!("invalid duration {s:?}: missing or unknown unit")),
        };
        total += unit.mul_f64(n);
        rest = &rest[unit_len..];
    }
    Ok(total)
}

/// Parses a comma-separated URL flag as etcd's types.NewURLs.
pub fn parse_urls(flag: &str, s: &str) -> Result<Vec<url::Url>, ConfigError> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let u = url::Url::parse(part).map_err(|e| ConfigError(format!("--{flag}: invalid URL {part:?}: {e}")))?;
        if !matches!(u.scheme(), "http" | "https" | "unix" | "unixs") {
            return err(format!("--{flag}: URL scheme must be http, https, unix, or unixs: {part}"));
        }
        if !has_explicit_port(part) || u.host_str().is_none() {
            return err(format!("--{flag}: URL address does not have the form \"host:port\": {part}"));
        }
        if u.path() != "/" && !u.path().is_empty() {
            return err(format!("--{flag}: URL must not contain a path: {part}"));
        }
        out.push(u);
    }
    if out.is_empty() {
        return err(format!("--{flag}: no valid URLs given"));
    }
    Ok(out)
}

/// Whether a URL's authority ends with `:port` (url::Url forgets a scheme's default port, Go's
/// SplitHostPort sees it).
fn has_explicit_port(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let after_host = authority.rsplit_once(']').map_or(authority, |(_, r)| r);
    after_host.rsplit_once(':').is_some_and(|(_, port)| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()))
}

/// Peer URLs of a membership request, validated as etcd's types.NewURLs and printed as etcd does.
pub fn parse_peer_urls(urls: &[String]) -> Result<Vec<String>, ConfigError> {
    parse_urls("peer-urls", &urls.join(",")).map(|us| {
        let mut out: Vec<String> = us.iter().map(url_string).collect();
        out.sort();
        out
    })
}

/// The URL as etcd prints it (Go's url.String(): no trailing slash for an empty path).
pub fn url_string(u: &url::Url) -> String {
    let mut s = u.to_string();
    if s.ends_with('/') && u.path() == "/" {
        s.pop();
    }
    s
}

/// Parses `--initial-cluster` (name=url,...): members in flag order, URLs as etcd prints them.
pub fn parse_initial_cluster(s: &str) -> Result<Vec<InitialMember>, ConfigError> {
    let mut members: Vec<InitialMember> = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((name, url)) = part.split_once('=') else {
            return err(format!("--initial-cluster: {part:?} is not of the form name=url"));
        };
        let url = parse_urls("initial-cluster", url)?.remove(0);
        match members.iter_mut().find(|m| m.name == name) {
            Some(m) => m.peer_urls.push(url_string(&url)),
            None => members.push(InitialMember { name: name.to_string(), peer_urls: vec![url_string(&url)] }),
        }
    }
    if members.is_empty() {
        return err("--initial-cluster is empty");
    }
    Ok(members)
}

/// etcd's check that a new member is in its initial cluster with its advertised peer URLs
/// (`advertise_peer_urls` sorted).
pub fn check_local_member(name: &str, initial_cluster: &[InitialMember], advertise_peer_urls: &[String]) -> Result<(), ConfigError> {
    let Some(me) = initial_cluster.iter().find(|m| m.name == name) else {
        return err(format!("couldn't find local name {name:?} in the initial cluster configuration"));
    };
    let mut mine = me.peer_urls.clone();
    mine.sort();
    if mine != advertise_peer_urls {
        return err(format!(
            "--initial-cluster has {}={} but missing from --initial-advertise-peer-urls={} ",
            me.name,
            mine.join(","),
            advertise_peer_urls.join(",")
        ));
    }
    Ok(())
}

impl Flags {
    /// Settings accepted but without their effect in etcd-rs, and etcd's deprecation warnings
    /// for old flag names: each is logged as a warning at start.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.enable_v2 {
            out.push("--enable-v2 is set, but etcd-rs serves only the v3 API: the v2 API is not served".to_string());
        }
        out.extend(self.deprecation_warnings());
        out
    }

    /// Refuses flags whose feature is not built, so nobody runs with a setting that does nothing.
    fn refuse_unbuilt(&self, renamed: &Renamed) -> Result<(), ConfigError> {
        let unbuilt: &[(&str, bool)] = &[
            ("discovery", !self.discovery.is_empty()),
            ("memory-mlock", renamed.memory_mlock == Some(true)),
            ("bootstrap-defrag-threshold-megabytes", renamed.bootstrap_defrag_threshold_megabytes.is_some_and(|mb| mb > 0)),
            ("enable-distributed-tracing", renamed.enable_distributed_tracing == Some(true)),
        ];
        for (flag, set) in unbuilt {
            if *set {
                return err(format!("--{flag} is not supported by etcd-rs yet"));
            }
        }
        if self.proxy != "off" {
            return err("--proxy is not supported by etcd-rs (v2 proxy mode)");
        }
        Ok(())
    }

    pub fn into_config(self) -> Result<ServerConfig, ConfigError> {
        let renamed = self.renamed()?;
        self.refuse_unbuilt(&renamed)?;
        let gates = self.feature_gates().map_err(|e| ConfigError(e.message))?;
        // etcd-rs's default for lease checkpoints stays on (etcd's gate default is off)
        let enable_lease_checkpoint = gates.explicitly("LeaseCheckpoint").unwrap_or(true);
        gates.check_lease_checkpoint(enable_lease_checkpoint).map_err(|e| ConfigError(e.message))?;
        if self.heartbeat_interval == 0 {
            return err("--heartbeat-interval must be > 0");
        }
        if self.election_timeout < 5 * self.heartbeat_interval {
            return err(format!(
                "--election-timeout[{}ms] should be at least as 5 times as --heartbeat-interval[{}ms]",
                self.election_timeout, self.heartbeat_interval
            ));
        }
        if self.election_timeout > 50_000 {
            return err(format!("--election-timeout[{}ms] is too long, and should be set less than 50000ms", self.election_timeout));
        }
        let initial_cluster_new = match self.initial_cluster_state.as_str() {
            "new" => true,
            "existing" => false,
            other => return err(format!("--initial-cluster-state: invalid value {other:?} (new or existing)")),
        };
        let listen_client_urls = parse_urls("listen-client-urls", &self.listen_client_urls)?;
        // etcd's --cors holds origin URLs, or exactly "*"
        if !matches!(self.cors.trim(), "*" | "") {
            parse_urls("cors", &self.cors)?;
        }
        let listen_peer_urls = parse_urls("listen-peer-urls", &self.listen_peer_urls)?;
        let advertise_client_urls =
            parse_urls("advertise-client-urls", &self.advertise_client_urls)?.iter().map(url_string).collect();
        let mut advertise_peer_urls: Vec<String> =
            parse_urls("initial-advertise-peer-urls", &self.initial_advertise_peer_urls)?.iter().map(url_string).collect();
        advertise_peer_urls.sort();
        let discovery = crate::discovery::Discovery::from_flags(&self)?;
        let initial_cluster = match &self.initial_cluster {
            Some(s) => parse_initial_cluster(s)?,
            // also the temporary one-member cluster discovery starts from, as etcd's
            None => vec![InitialMember { name: self.name.clone(), peer_urls: advertise_peer_urls.clone() }],
        };
        if initial_cluster_new {
            check_local_member(&self.name, &initial_cluster, &advertise_peer_urls)?;
        }
        let auto_compaction = match self.auto_compaction_mode.as_str() {
            "periodic" => {
                let d = parse_go_duration(&self.auto_compaction_retention, Some(Duration::from_secs(3600)))
                    .map_err(|e| ConfigError(format!("--auto-compaction-retention: {}", e.0)))?;
                if d.is_zero() { AutoCompaction::Off } else { AutoCompaction::Periodic(d) }
            }
            "revision" => {
                let n: i64 = self.auto_compaction_retention.trim().parse().map_err(|_| {
                    ConfigError(format!("--auto-compaction-retention: invalid revision count {:?}", self.auto_compaction_retention))
                })?;
                if n < 0 {
                    return err("--auto-compaction-retention must not be negative");
                }
                if n == 0 { AutoCompaction::Off } else { AutoCompaction::Revision(n) }
            }
            other => return err(format!("unknown auto-compaction-mode {other:?}")),
        };
        let backend_batch_interval = if self.backend_batch_interval.is_empty() {
            Duration::from_millis(100)
        } else {
            parse_go_duration(&self.backend_batch_interval, None)
                .map_err(|e| ConfigError(format!("--backend-batch-interval: {}", e.0)))?
        };
        let watch_progress_notify_interval =
            parse_go_duration(renamed.watch_progress_notify_interval.as_deref().unwrap_or("10m"), None)
                .map_err(|e| ConfigError(format!("--watch-progress-notify-interval: {}", e.0)))?;
        for (flag, value) in [
            ("compaction-sleep-interval", &renamed.compaction_sleep_interval),
            ("downgrade-check-time", &renamed.downgrade_check_time),
            ("warning-unary-request-duration", &self.warning_unary_request_duration),
            ("experimental-warning-unary-request-duration", &self.experimental_warning_unary_request_duration),
        ] {
            if let Some(v) = value {
                parse_go_duration(v, None).map_err(|e| ConfigError(format!("--{flag}: {}", e.0)))?;
            }
        }
        let warning_apply_duration = parse_go_duration(renamed.warning_apply_duration.as_deref().unwrap_or("100ms"), None)
            .map_err(|e| ConfigError(format!("--warning-apply-duration: {}", e.0)))?;
        let compact_hash_check_time = match &renamed.compact_hash_check_time {
            None => Duration::from_secs(60),
            Some(v) => {
                let d = parse_go_duration(v, None).map_err(|e| ConfigError(format!("--compact-hash-check-time: {}", e.0)))?;
                if d.is_zero() {
                    return err(format!("--compact-hash-check-time must be >0 (set to {v})"));
                }
                d
            }
        };
        let lease_checkpoint_interval = parse_go_duration(&self.lease_checkpoint_interval, None)
            .map_err(|e| ConfigError(format!("--experimental-lease-checkpoint-interval: {}", e.0)))?;
        if lease_checkpoint_interval.is_zero() {
            return err("--experimental-lease-checkpoint-interval must be > 0");
        }
        let listen_metrics_urls = if self.listen_metrics_urls.trim().is_empty() {
            Vec::new()
        } else {
            parse_urls("listen-metrics-urls", &self.listen_metrics_urls)?
        };
        let listen_client_http_urls = if self.listen_client_http_urls.trim().is_empty() {
            Vec::new()
        } else {
            parse_urls("listen-client-http-urls", &self.listen_client_http_urls)?
        };
        let mut raft_timeouts = [Duration::ZERO; 2];
        for (slot, (flag, value)) in raft_timeouts
            .iter_mut()
            .zip([("raft-read-timeout", &self.raft_read_timeout), ("raft-write-timeout", &self.raft_write_timeout)])
        {
            *slot = parse_go_duration(value, None).map_err(|e| ConfigError(format!("--{flag}: {}", e.0)))?;
            // etcd panics on 0 (its stream heartbeat ticker runs every read timeout / 3)
            if slot.is_zero() {
                return err(format!("--{flag} must be > 0"));
            }
        }
        let [raft_read_timeout, raft_write_timeout] = raft_timeouts;
        for (cert, key) in [(&self.client_cert_file, &self.client_key_file), (&self.peer_client_cert_file, &self.peer_client_key_file)] {
            if cert.is_empty() != key.is_empty() {
                return err(format!("ClientKeyFile and ClientCertFile must both be present or both absent: key: {key}, cert: {cert}]"));
            }
        }
        let extensive_metrics = match self.metrics.as_str() {
            "basic" => false,
            "extensive" => true,
            other => return err(format!("--metrics: invalid value {other:?} (basic or extensive)")),
        };
        let corrupt_check_time = parse_go_duration(renamed.corrupt_check_time.as_deref().unwrap_or("0s"), None)
            .map_err(|e| ConfigError(format!("--corrupt-check-time: {}", e.0)))?;
        // etcd's StringsValue: split on commas, nothing trimmed
        let cipher_suites: Vec<String> = if self.cipher_suites.is_empty() {
            Vec::new()
        } else {
            self.cipher_suites.split(',').map(str::to_string).collect()
        };
        let versions = crate::tls::TlsVersions::from_flags(&self.tls_min_version, &self.tls_max_version, !cipher_suites.is_empty())
            .map_err(|e| ConfigError(e.0))?;
        let client_tls = crate::tls::TlsFlags {
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
            trusted_ca_file: self.trusted_ca_file.clone(),
            client_cert_auth: self.client_cert_auth,
            auto_tls: self.auto_tls,
            client_cert_file: self.client_cert_file.clone(),
            client_key_file: self.client_key_file.clone(),
            allowed_cn: String::new(),
            allowed_hostname: self.client_cert_allowed_hostname.clone(),
            crl_file: self.client_crl_file.clone(),
            cipher_suites: cipher_suites.clone(),
            versions,
        };
        let peer_tls = crate::tls::TlsFlags {
            cert_file: self.peer_cert_file.clone(),
            key_file: self.peer_key_file.clone(),
            trusted_ca_file: self.peer_trusted_ca_file.clone(),
            client_cert_auth: self.peer_client_cert_auth,
            auto_tls: self.peer_auto_tls,
            client_cert_file: self.peer_client_cert_file.clone(),
            client_key_file: self.peer_client_key_file.clone(),
            allowed_cn: self.peer_cert_allowed_cn.clone(),
            allowed_hostname: self.peer_cert_allowed_hostname.clone(),
            crl_file: self.peer_crl_file.clone(),
            cipher_suites,
            versions,
        };
        // https metrics URLs serve with the client certificate, as etcd's
        let client_and_metrics_urls: Vec<url::Url> =
            listen_client_urls.iter().chain(&listen_client_http_urls).chain(&listen_metrics_urls).cloned().collect();
        crate::tls::check_flags(&client_tls, &peer_tls, &client_and_metrics_urls, &listen_peer_urls)
            .map_err(|e| ConfigError(e.0))?;
        let data_dir = self.data_dir.clone().unwrap_or_else(|| PathBuf::from(format!("{}.etcd", self.name)));
        let wal_dir = if self.wal_dir.is_empty() {
            data_dir.join("member").join("wal")
        } else {
            PathBuf::from(&self.wal_dir)
        };
        Ok(ServerConfig {
            name: self.name,
            data_dir,
            wal_dir,
            force_new_cluster: self.force_new_cluster,
            listen_client_urls,
            advertise_client_urls,
            cors: self.cors.clone(),
            host_whitelist: self.host_whitelist.clone(),
            listen_peer_urls,
            listen_client_http_urls,
            enable_grpc_gateway: self.enable_grpc_gateway,
            raft_read_timeout,
            raft_write_timeout,
            warning_apply_duration,
            listen_metrics_urls,
            extensive_metrics,
            initial_corrupt_check: gates.enabled("InitialCorruptCheck"),
            corrupt_check_time,
            compact_hash_check: gates.enabled("CompactHashCheck"),
            compact_hash_check_time,
            advertise_peer_urls,
            initial_cluster,
            initial_cluster_new,
            initial_cluster_token: self.initial_cluster_token,
            snapshot_count: self.snapshot_count.max(1),
            snapshot_catchup_entries: renamed.snapshot_catchup_entries.unwrap_or(5000),
            heartbeat: Duration::from_millis(self.heartbeat_interval),
            election_ticks: (self.election_timeout / self.heartbeat_interval) as usize,
            quota_backend_bytes: self.quota_backend_bytes,
            max_txn_ops: self.max_txn_ops,
            max_request_bytes: self.max_request_bytes,
            max_concurrent_streams: if self.max_concurrent_streams == 0 { u32::MAX } else { self.max_concurrent_streams },
            auto_compaction,
            backend_batch_interval,
            backend_batch_limit: if self.backend_batch_limit == 0 { 10_000 } else { self.backend_batch_limit },
            max_learners: self.max_learners,
            strict_reconfig_check: self.strict_reconfig_check,
            etcd_api_version: self.etcd_api_version,
            unsafe_no_fsync: self.unsafe_no_fsync,
            watch_progress_notify_interval,
            enable_lease_checkpoint,
            peer_skip_client_san_verification: renamed.peer_skip_client_san_verification.unwrap_or(false),
            discovery,
            lease_checkpoint_interval,
            client_tls,
            peer_tls,
            self_signed_cert_validity: self.self_signed_cert_validity,
            peer_dial_tls: None,
            bcrypt_cost: self.bcrypt_cost,
            auth_token_ttl: Duration::from_secs(self.auth_token_ttl),
            auth_token: self.auth_token,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<ServerConfig, String> {
        let argv = normalize_args(std::iter::once("etcd-rs").chain(args.iter().copied()).map(String::from));
        let flags = Flags::try_parse_from(argv).map_err(|e| e.to_string())?;
        flags.into_config().map_err(|e| e.0)
    }

    #[test]
    fn defaults_match_etcd() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.name, "default");
        assert_eq!(c.data_dir, PathBuf::from("default.etcd"));
        assert_eq!(c.initial_cluster, vec![InitialMember { name: "default".into(), peer_urls: vec!["http://localhost:2380".into()] }]);
        assert_eq!(c.initial_cluster_token, "etcd-cluster");
        assert_eq!(c.election_ticks, 10);
        assert_eq!(c.max_request_bytes, 1_572_864);
        assert_eq!(c.max_txn_ops, 128);
        assert_eq!(c.max_concurrent_streams, u32::MAX);
        assert_eq!(c.snapshot_count, 100_000);
        assert_eq!(c.auto_compaction, AutoCompaction::Off);
    }

    #[test]
    fn single_dash_long_flags_are_accepted() {
        let c = parse(&["-name", "x", "-data-dir=/tmp/d", "--initial-cluster", "x=http://localhost:2380"]).unwrap();
        assert_eq!(c.name, "x");
        assert_eq!(c.data_dir, PathBuf::from("/tmp/d"));
    }

    #[test]
    fn enable_v2_is_accepted_with_a_warning() {
        let argv = normalize_args(["etcd-rs", "--enable-v2"].map(String::from));
        let flags = Flags::try_parse_from(argv).unwrap();
        assert!(flags.warnings().iter().any(|w| w.contains("v2 API is not served")), "{:?}", flags.warnings());
        flags.into_config().unwrap();
        let flags = Flags::try_parse_from(["etcd-rs"]).unwrap();
        assert!(flags.warnings().is_empty());
    }

    #[test]
    fn unknown_flag_is_an_error() {
        assert!(parse(&["--no-such-flag"]).is_err());
    }

    #[test]
    fn crl_allowed_hostname_and_cipher_suite_flags_reach_both_tls_sides() {
        let c = parse(&[
            "--client-crl-file", "/c.crl", "--peer-crl-file", "/p.crl",
            "--client-cert-allowed-hostname", "client.example", "--peer-cert-allowed-hostname", "peer.example",
            "--cipher-suites", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,TLS_AES_128_GCM_SHA256",
        ])
        .unwrap();
        assert_eq!((c.client_tls.crl_file.as_str(), c.peer_tls.crl_file.as_str()), ("/c.crl", "/p.crl"));
        assert_eq!(c.client_tls.allowed_hostname, "client.example");
        assert_eq!(c.peer_tls.allowed_hostname, "peer.example");
        let suites = ["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "TLS_AES_128_GCM_SHA256"];
        assert_eq!(c.client_tls.cipher_suites, suites);
        assert_eq!(c.peer_tls.cipher_suites, suites);
    }

    #[test]
    fn tls_version_flags_reach_both_sides_and_bad_ones_fail_with_etcds_words() {
        use crate::tls::{TlsVersion, TlsVersions};
        let c = parse(&[]).unwrap();
        assert_eq!(c.client_tls.versions, TlsVersions { min: TlsVersion::Tls12, max: None });
        let c = parse(&["--tls-min-version", "TLS1.3", "--tls-max-version=TLS1.3"]).unwrap();
        let only13 = TlsVersions { min: TlsVersion::Tls13, max: Some(TlsVersion::Tls13) };
        assert_eq!((c.client_tls.versions, c.peer_tls.versions), (only13, only13));
        assert_eq!(parse(&["--tls-max-version", "TLS1.2"]).unwrap().peer_tls.versions.max, Some(TlsVersion::Tls12));
        for (args, want) in [
            (&["--tls-min-version", "TLS1.1"][..], r#"unexpected TLS version "TLS1.1" (must be one of: TLS1.2, TLS1.3)"#),
            (&["--tls-max-version", "tls1.3"][..], r#"unexpected TLS version "tls1.3" (must be one of: TLS1.2, TLS1.3)"#),
            (&["--tls-min-version", "TLS1.3", "--tls-max-version", "TLS1.2"][..], "min version (TLS1.3) is greater than max version (TLS1.2)"),
            (
                &["--tls-min-version", "TLS1.3", "--cipher-suites", "TLS_AES_128_GCM_SHA256"][..],
                "cipher suites cannot be configured when only TLS1.3 is enabled",
            ),
        ] {
            assert_eq!(parse(args).unwrap_err(), want, "{args:?}");
        }
        // "" is etcd's default for both (TLS1.2 up to the newest)
        assert_eq!(parse(&["--tls-min-version="]).unwrap().client_tls.versions, TlsVersions::default());
    }

    #[test]
    fn an_unknown_cipher_suite_fails_with_etcds_words_even_without_tls() {
        // etcd splits on commas without trimming: " X" and "" are names too
        for (list, bad) in [("TLS_BOGUS", "TLS_BOGUS"), ("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,", ""), (" TLS_AES_128_GCM_SHA256", " TLS_AES_128_GCM_SHA256")] {
            let e = parse(&["--cipher-suites", list]).unwrap_err();
            assert_eq!(e, format!("unexpected TLS cipher suite {bad:?}"));
        }
    }

    #[test]
    fn metrics_urls_and_corruption_checks_are_parsed() {
        let c = parse(&[]).unwrap();
        assert!(c.listen_metrics_urls.is_empty());
        assert!(!c.extensive_metrics && !c.initial_corrupt_check);
        assert_eq!(c.corrupt_check_time, Duration::ZERO);
        let c = parse(&[
            "--listen-metrics-urls",
            "http://127.0.0.1:2381,http://127.0.0.1:2382",
            "--metrics",
            "extensive",
            "--experimental-initial-corrupt-check=true",
            "--experimental-corrupt-check-time",
            "5m",
        ])
        .unwrap();
        assert_eq!(c.listen_metrics_urls.len(), 2);
        assert!(c.extensive_metrics && c.initial_corrupt_check);
        assert_eq!(c.corrupt_check_time, Duration::from_secs(300));
        assert!(parse(&["--metrics", "verbose"]).unwrap_err().contains("--metrics"));
        let e = parse(&["--listen-metrics-urls", "https://127.0.0.1:2381"]).unwrap_err();
        assert!(e.contains("--cert-file"), "{e}");
        assert!(parse(&["--listen-metrics-urls", "127.0.0.1:2381"]).is_err());
    }

    #[test]
    fn auto_compaction_modes() {
        let c = parse(&["--auto-compaction-retention", "1"]).unwrap();
        assert_eq!(c.auto_compaction, AutoCompaction::Periodic(Duration::from_secs(3600)));
        let c = parse(&["--auto-compaction-retention", "30m"]).unwrap();
        assert_eq!(c.auto_compaction, AutoCompaction::Periodic(Duration::from_secs(1800)));
        let c = parse(&["--auto-compaction-mode", "revision", "--auto-compaction-retention", "1000"]).unwrap();
        assert_eq!(c.auto_compaction, AutoCompaction::Revision(1000));
        assert!(parse(&["--auto-compaction-mode", "bogus"]).is_err());
    }

    #[test]
    fn auth_token_options_are_passed_to_the_token_provider() {
        assert_eq!(parse(&[]).unwrap().auth_token, "simple");
        let jwt = "jwt,pub-key=/k.pub,priv-key=/k,sign-method=RS256,ttl=10m";
        assert_eq!(parse(&["--auth-token", jwt]).unwrap().auth_token, jwt);
        let from_file = crate::config_file::flags_from_yaml(&format!("auth-token: {jwt}\n")).unwrap();
        assert_eq!(from_file.into_config().unwrap().auth_token, jwt);
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("1h30m", None).unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_go_duration("100ms", None).unwrap(), Duration::from_millis(100));
        assert!(parse_go_duration("10", None).is_err());
        assert!(parse_go_duration("5x", None).is_err());
    }

    #[test]
    fn election_timeout_must_cover_heartbeats() {
        assert!(parse(&["--heartbeat-interval", "100", "--election-timeout", "200"]).is_err());
    }

    #[test]
    fn settings_renamed_in_3_6_take_either_name_and_refuse_both() {
        let c = parse(&[]).unwrap();
        assert_eq!((c.snapshot_catchup_entries, c.watch_progress_notify_interval), (5000, Duration::from_secs(600)));
        for args in [
            &["--snapshot-catchup-entries", "7", "--watch-progress-notify-interval=5s", "--corrupt-check-time", "1m"][..],
            &["--experimental-snapshot-catchup-entries", "7", "--experimental-watch-progress-notify-interval=5s", "--experimental-corrupt-check-time", "1m"][..],
        ] {
            let c = parse(args).unwrap();
            assert_eq!(c.snapshot_catchup_entries, 7, "{args:?}");
            assert_eq!(c.watch_progress_notify_interval, Duration::from_secs(5), "{args:?}");
            assert_eq!(c.corrupt_check_time, Duration::from_secs(60), "{args:?}");
        }
        for (old, new, v) in [
            ("experimental-snapshot-catchup-entries", "snapshot-catchup-entries", "1"),
            ("experimental-compaction-batch-limit", "compaction-batch-limit", "1"),
            ("experimental-warning-apply-duration", "warning-apply-duration", "1s"),
            ("experimental-compact-hash-check-time", "compact-hash-check-time", "1s"),
            ("experimental-peer-skip-client-san-verification", "peer-skip-client-san-verification", "true"),
            ("experimental-distributed-tracing-address", "distributed-tracing-address", "x:1"),
        ] {
            let e = parse(&[&format!("--{old}={v}"), &format!("--{new}={v}")]).unwrap_err();
            assert_eq!(e, format!("cannot set --{old} and --{new} at the same time, please use --{new} only"));
        }
        let e = parse(&["--warning-unary-request-duration=1s", "--experimental-warning-unary-request-duration=2s"]).unwrap_err();
        assert_eq!(
            e,
            "both --experimental-warning-unary-request-duration and --warning-unary-request-duration flags are set. Use only --warning-unary-request-duration"
        );
        assert!(parse(&["--compact-hash-check-time=0s"]).unwrap_err().contains("--compact-hash-check-time must be >0"));
        assert!(parse(&["--peer-skip-client-san-verification"]).unwrap().peer_skip_client_san_verification);
        assert!(parse(&["--experimental-peer-skip-client-san-verification=true"]).unwrap().peer_skip_client_san_verification);
        assert_eq!(parse(&["--cors", "https://ui.example:443,http://b:80"]).unwrap().cors, "https://ui.example:443,http://b:80");
        let e = parse(&["--cors", "https://ui.example"]).unwrap_err().to_string();
        assert_eq!(e, "--cors: URL address does not have the form \"host:port\": https://ui.example");
        assert!(parse_urls("x", "https://127.0.0.1:443,http://[::1]:80").is_ok(), "a scheme's default port written out is a port");
        assert!(parse_urls("x", "http://[::1]").is_err());
    }

    #[test]
    fn old_names_warn_with_etcds_deprecation_message() {
        let flags = |args: &[&str]| Flags::try_parse_from(std::iter::once("etcd-rs").chain(args.iter().copied())).unwrap();
        let w = flags(&["--experimental-watch-progress-notify-interval=5s", "--experimental-compact-hash-check-enabled=false"]).warnings();
        assert!(w.contains(&"--experimental-watch-progress-notify-interval is deprecated in v3.6 and will be decommissioned in v3.7. Use '--watch-progress-notify-interval' instead.".to_string()), "{w:?}");
        assert!(w.contains(&"--experimental-compact-hash-check-enabled is deprecated in 3.6 and will be decommissioned in 3.7. Use '--feature-gates=CompactHashCheck=true' instead.".to_string()), "{w:?}");
        assert!(flags(&["--watch-progress-notify-interval=5s", "--feature-gates=InitialCorruptCheck=true"]).warnings().is_empty());
    }

    #[test]
    fn feature_gates_drive_etcd_rs_settings() {
        assert!(parse(&["--feature-gates=InitialCorruptCheck=true"]).unwrap().initial_corrupt_check);
        assert!(parse(&["--experimental-initial-corrupt-check"]).unwrap().initial_corrupt_check);
        let off = parse(&[]).unwrap();
        assert_eq!((off.compact_hash_check, off.compact_hash_check_time), (false, Duration::from_secs(60)));
        for args in [&["--feature-gates=CompactHashCheck=true", "--compact-hash-check-time=2s"][..], &["--experimental-compact-hash-check-enabled", "--experimental-compact-hash-check-time", "2s"][..]] {
            let c = parse(args).unwrap();
            assert_eq!((c.compact_hash_check, c.compact_hash_check_time), (true, Duration::from_secs(2)), "{args:?}");
        }
        // lease checkpoints stay on by default in etcd-rs; either way of turning them off works
        assert!(parse(&[]).unwrap().enable_lease_checkpoint);
        assert!(!parse(&["--feature-gates", "LeaseCheckpoint=false"]).unwrap().enable_lease_checkpoint);
        assert!(!parse(&["--experimental-enable-lease-checkpoint=false"]).unwrap().enable_lease_checkpoint);
        let e = parse(&["--feature-gates=LeaseCheckpoint=false,LeaseCheckpointPersist=true"]).unwrap_err();
        assert_eq!(e, "enabling feature gate LeaseCheckpointPersist requires enabling feature gate LeaseCheckpoint");
        parse(&["--feature-gates=TxnModeWriteWithSharedBuffer=false", "--feature-gates=LeaseCheckpointPersist=true"]).unwrap();
        assert_eq!(parse(&["--feature-gates=StopGRPCServiceOnDefrag=true"]).unwrap_err(), "feature gate StopGRPCServiceOnDefrag=true is not supported by etcd-rs yet");
        for (flag, name) in [("--memory-mlock", "memory-mlock"), ("--experimental-bootstrap-defrag-threshold-megabytes=10", "bootstrap-defrag-threshold-megabytes"), ("--enable-distributed-tracing", "enable-distributed-tracing")] {
            assert_eq!(parse(&[flag]).unwrap_err(), format!("--{name} is not supported by etcd-rs yet"));
        }
        parse(&["--memory-mlock=false", "--bootstrap-defrag-threshold-megabytes=0", "--compaction-sleep-interval=10ms", "--downgrade-check-time=5s"]).unwrap();
    }

    #[test]
    fn discovery_flags_are_checked_as_etcds_validate() {
        let conflict = "multiple discovery or bootstrap flags are set. Choose one of \"initial-cluster\", \"discovery\", \"discovery-endpoints\" or \"discovery-srv\"";
        assert_eq!(parse(&["--discovery-srv", "example.com", "--initial-cluster", "default=http://localhost:2380"]).unwrap_err(), conflict);
        assert_eq!(parse(&["--discovery-srv", "example.com", "--discovery-endpoints", "127.0.0.1:2379", "--discovery-token", "t"]).unwrap_err(), conflict);
        assert_eq!(parse(&["--discovery-endpoints", "127.0.0.1:2379"]).unwrap_err(), "both --discovery-token and --discovery-endpoints must be set");
        assert_eq!(parse(&["--discovery-token", "t"]).unwrap_err(), "both --discovery-token and --discovery-endpoints must be set");
        assert_eq!(
            parse(&["--discovery-token", "t", "--discovery-endpoints", "127.0.0.1:2379,"]).unwrap_err(),
            "--discovery-endpoints must not contain empty endpoints"
        );
        assert!(parse(&["--discovery-token", "t", "--discovery-endpoints", "a:1", "--discovery-proxy", "http://p:1"]).unwrap_err().starts_with("both v2 discovery settings"));
        assert!(parse(&["--discovery", "http://d/x"]).unwrap_err().contains("--discovery is not supported"));
        let c = parse(&["--discovery-srv", "example.com", "--discovery-srv-name", "prod"]).unwrap();
        assert!(matches!(c.discovery, Some(crate::discovery::Discovery::Srv { ref domain, ref service_name }) if domain == "example.com" && service_name == "prod"));
        let c = parse(&["--discovery-token", "tok", "--discovery-endpoints", "127.0.0.1:2379,http://127.0.0.1:2479", "--discovery-user", "u:p"]).unwrap();
        let Some(crate::discovery::Discovery::V3(v3)) = c.discovery else { panic!("no v3 discovery") };
        assert_eq!(v3.endpoints, ["127.0.0.1:2379", "http://127.0.0.1:2479"]);
        assert_eq!((v3.token.as_str(), v3.dial_timeout, v3.request_timeout), ("tok", Duration::from_secs(2), Duration::from_secs(5)));
        assert_eq!(v3.auth, Some(("u".into(), "p".into())));
        assert!(v3.tls.is_none(), "plain endpoints without TLS flags are dialled in plain text");
        // a CA file that cannot be read stops the start; skip-verify alone turns TLS on
        assert!(parse(&["--discovery-token", "t", "--discovery-endpoints", "a:1", "--discovery-cacert", "/nonexistent/ca.pem"]).unwrap_err().contains("/nonexistent/ca.pem"));
        let c = parse(&["--discovery-token", "t", "--discovery-endpoints", "a:1", "--discovery-insecure-skip-tls-verify"]).unwrap();
        assert!(matches!(c.discovery, Some(crate::discovery::Discovery::V3(ref v3)) if v3.tls.is_some()));
    }

    #[test]
    fn etcds_ignored_flags_are_taken_out_before_parsing() {
        let args = ["etcd-rs", "--force", "--name", "x", "--snapshot=1", "-v", "--vv", "--max-retry-attempts"].map(String::from).to_vec();
        let (rest, ignored) = split_ignored_flags(args);
        assert_eq!(rest, ["etcd-rs", "--name", "x"]);
        assert_eq!(ignored, ["force", "snapshot", "v", "vv", "max-retry-attempts"]);
        // a value after an ignored flag is not its value (a bool-style flag, as in Go): refused
        let (rest, _) = split_ignored_flags(["etcd-rs", "--force", "yes"].map(String::from).to_vec());
        assert!(Flags::try_parse_from(rest).is_err());
    }

    #[test]
    fn flags_of_3_5_and_3_6_reach_the_config() {
        let c = parse(&[]).unwrap();
        assert!(c.listen_client_http_urls.is_empty() && c.enable_grpc_gateway);
        assert_eq!((c.raft_read_timeout, c.raft_write_timeout), (Duration::from_secs(5), Duration::from_secs(5)));
        assert_eq!(c.warning_apply_duration, Duration::from_millis(100));
        let c = parse(&[
            "--listen-client-http-urls", "http://127.0.0.1:1", "--enable-grpc-gateway=false", "--raft-read-timeout", "2s",
            "--raft-write-timeout=300ms", "--warning-apply-duration=1ns", "--peer-client-cert-file", "/c.pem",
            "--peer-client-key-file", "/k.pem",
        ])
        .unwrap();
        assert_eq!(c.listen_client_http_urls.len(), 1);
        assert!(!c.enable_grpc_gateway);
        assert_eq!((c.raft_read_timeout, c.raft_write_timeout), (Duration::from_secs(2), Duration::from_millis(300)));
        assert_eq!(c.warning_apply_duration, Duration::from_nanos(1));
        assert_eq!((c.peer_tls.client_cert_file.as_str(), c.peer_tls.client_key_file.as_str()), ("/c.pem", "/k.pem"));
        let e = parse(&["--client-cert-file", "/c.pem"]).unwrap_err();
        assert_eq!(e, "ClientKeyFile and ClientCertFile must both be present or both absent: key: , cert: /c.pem]");
        assert_eq!(parse(&["--raft-write-timeout", "0"]).unwrap_err(), "--raft-write-timeout must be > 0");
        assert!(parse(&["--listen-client-http-urls", "https://127.0.0.1:1"]).unwrap_err().contains("--cert-file"));
    }

    #[test]
    fn initial_cluster_must_name_this_member() {
        assert!(parse(&["--name", "a", "--initial-cluster", "b=http://localhost:2380"]).is_err());
    }
}
