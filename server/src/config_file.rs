//! `--config-file`: etcd's YAML configuration file, read into the same [`Flags`] the command line
//! fills.
//!
//! As etcd (3.4/3.5 `embed.ConfigFromFile` + etcdmain's proxy keys): the keys are the flag names,
//! matched case-insensitively (etcd decodes YAML through Go's encoding/json); values must have the
//! type etcd's `configYAML` field has (a string for strings and URL lists, a number for counts, a
//! boolean for switches, an integer number of NANOSECONDS for durations, a list of strings for
//! `log-outputs` and `cipher-suites`); a null value leaves the default; unknown keys are ignored.
//! etcd 3.6's keys too: `feature-gates` (a string), the names 3.6 gave the `experimental-*`
//! settings (both names present is refused, as on the command line) and `discovery-config`.
//! TLS settings sit in `client-transport-security` / `peer-transport-security` maps. When a config
//! file is given every other flag and `ETCD_*` variable is ignored: the result starts from the
//! flag defaults, never from the environment.

use std::path::Path;

use clap::{CommandFactory, FromArgMatches};
use serde::Deserialize;
use serde_yaml::{Mapping, Value};

use crate::config::{ConfigError, Flags};

/// etcd's `securityConfig`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct SecurityYaml {
    cert_file: Option<String>,
    key_file: Option<String>,
    client_cert_auth: Option<bool>,
    trusted_ca_file: Option<String>,
    auto_tls: Option<bool>,
    // 3.5: the pair etcd shows when it is itself a client (dialling peers)
    client_cert_file: Option<String>,
    client_key_file: Option<String>,
    /// 3.6: `peer-transport-security.skip-client-san-verification`.
    skip_client_san_verification: Option<bool>,
}

/// etcd 3.6's `discovery-config` (v3discovery.DiscoveryConfig: clientv3's ConfigSpec under
/// `client`, durations in nanoseconds).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct DiscoveryYaml {
    token: Option<String>,
    client: Option<DiscoveryClientYaml>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct DiscoveryClientYaml {
    endpoints: Option<Vec<String>>,
    request_timeout: Option<i64>,
    dial_timeout: Option<i64>,
    keepalive_time: Option<i64>,
    keepalive_timeout: Option<i64>,
    secure: Option<DiscoverySecureYaml>,
    auth: Option<DiscoveryAuthYaml>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct DiscoverySecureYaml {
    cert: Option<String>,
    key: Option<String>,
    cacert: Option<String>,
    insecure_transport: Option<bool>,
    insecure_skip_tls_verify: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct DiscoveryAuthYaml {
    username: Option<String>,
    password: Option<String>,
}

/// The keys of etcd 3.4's, 3.5.1's and 3.6's `configYAML` that etcd-rs has a flag for, typed as etcd's.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct ConfigYaml {
    name: Option<String>,
    data_dir: Option<String>,
    wal_dir: Option<String>,
    snapshot_count: Option<u64>,
    max_snapshots: Option<u32>,
    max_wals: Option<u32>,
    heartbeat_interval: Option<u64>,
    election_timeout: Option<u64>,
    initial_election_tick_advance: Option<bool>,
    backend_batch_interval: Option<i64>,
    backend_batch_limit: Option<u64>,
    quota_backend_bytes: Option<i64>,
    max_txn_ops: Option<usize>,
    max_request_bytes: Option<usize>,
    max_concurrent_streams: Option<u32>,
    listen_peer_urls: Option<String>,
    listen_client_urls: Option<String>,
    initial_advertise_peer_urls: Option<String>,
    advertise_client_urls: Option<String>,
    listen_metrics_urls: Option<String>,
    listen_client_http_urls: Option<String>,
    enable_grpc_gateway: Option<bool>,
    log_format: Option<String>,
    log_rotation_config_json: Option<String>,
    cipher_suites: Option<Vec<String>>,
    tls_min_version: Option<String>,
    tls_max_version: Option<String>,
    initial_cluster_state: Option<String>,
    discovery_srv: Option<String>,
    discovery_srv_name: Option<String>,
    discovery_proxy: Option<String>,
    discovery: Option<String>,
    discovery_fallback: Option<String>,
    proxy: Option<String>,
    initial_cluster: Option<String>,
    initial_cluster_token: Option<String>,
    strict_reconfig_check: Option<bool>,
    enable_v2: Option<bool>,
    v2_deprecation: Option<String>,
    auto_compaction_mode: Option<String>,
    auto_compaction_retention: Option<String>,
    grpc_keepalive_min_time: Option<i64>,
    grpc_keepalive_interval: Option<i64>,
    grpc_keepalive_timeout: Option<i64>,
    pre_vote: Option<bool>,
    cors: Option<String>,
    host_whitelist: Option<String>,
    auth_token: Option<String>,
    bcrypt_cost: Option<u32>,
    auth_token_ttl: Option<u64>,
    /// 3.4's name; 3.5 calls it `backend-bbolt-freelist-type`.
    experimental_backend_bbolt_freelist_type: Option<String>,
    backend_bbolt_freelist_type: Option<String>,
    // 3.6: `feature-gates` and the experimental switches it replaces
    feature_gates: Option<String>,
    experimental_initial_corrupt_check: Option<bool>,
    experimental_enable_lease_checkpoint: Option<bool>,
    experimental_enable_lease_checkpoint_persist: Option<bool>,
    experimental_compact_hash_check_enabled: Option<bool>,
    experimental_txn_mode_write_with_shared_buffer: Option<bool>,
    experimental_stop_grpc_service_on_defrag: Option<bool>,
    // 3.6's new names (durations in nanoseconds) and the 3.5 names they replace
    snapshot_catchup_entries: Option<u64>,
    experimental_snapshot_catchup_entries: Option<u64>,
    /// etcd 3.5's misspelt key, which 3.6 still maps onto experimental-snapshot-catchup-entries.
    experimental_snapshot_catch_up_entries: Option<u64>,
    watch_progress_notify_interval: Option<i64>,
    experimental_watch_progress_notify_interval: Option<i64>,
    corrupt_check_time: Option<i64>,
    experimental_corrupt_check_time: Option<i64>,
    compaction_batch_limit: Option<usize>,
    experimental_compaction_batch_limit: Option<usize>,
    compaction_sleep_interval: Option<i64>,
    experimental_compaction_sleep_interval: Option<i64>,
    warning_apply_duration: Option<i64>,
    experimental_warning_apply_duration: Option<i64>,
    warning_unary_request_duration: Option<i64>,
    experimental_warning_unary_request_duration: Option<i64>,
    compact_hash_check_time: Option<i64>,
    experimental_compact_hash_check_time: Option<i64>,
    downgrade_check_time: Option<i64>,
    experimental_downgrade_check_time: Option<i64>,
    bootstrap_defrag_threshold_megabytes: Option<u64>,
    experimental_bootstrap_defrag_threshold_megabytes: Option<u64>,
    memory_mlock: Option<bool>,
    experimental_memory_mlock: Option<bool>,
    experimental_peer_skip_client_san_verification: Option<bool>,
    enable_distributed_tracing: Option<bool>,
    experimental_enable_distributed_tracing: Option<bool>,
    max_learners: Option<usize>,
    experimental_max_learners: Option<usize>,
    discovery_config: Option<DiscoveryYaml>,
    force_new_cluster: Option<bool>,
    enable_pprof: Option<bool>,
    metrics: Option<String>,
    logger: Option<String>,
    log_level: Option<String>,
    log_outputs: Option<Vec<String>>,
    enable_log_rotation: Option<bool>,
    self_signed_cert_validity: Option<u32>,
    unsafe_no_fsync: Option<bool>,
    client_transport_security: Option<SecurityYaml>,
    peer_transport_security: Option<SecurityYaml>,
}

/// The flag defaults, with every `ETCD_*` variable ignored.
fn default_flags() -> Result<Flags, ConfigError> {
    let cmd = Flags::command().mut_args(|a| a.env(None::<&'static str>));
    let matches = cmd
        .try_get_matches_from(["etcd-rs"])
        .map_err(|e| ConfigError(format!("cannot build the default configuration: {e}")))?;
    Flags::from_arg_matches(&matches).map_err(|e| ConfigError(format!("cannot build the default configuration: {e}")))
}

/// Lower-cases the string keys of every mapping (Go's encoding/json matches field names
/// case-insensitively); keys that are not strings name no field and are dropped.
fn fold_keys(v: Value) -> Value {
    match v {
        Value::Mapping(m) => {
            let mut out = Mapping::new();
            for (k, v) in m {
                if let Value::String(k) = k {
                    out.insert(Value::String(k.to_ascii_lowercase()), fold_keys(v));
                }
            }
            Value::Mapping(out)
        }
        other => other,
    }
}

/// A time.Duration from the file (integer nanoseconds) in the Go form the flag takes.
fn duration(ns: i64) -> String {
    format!("{ns}ns")
}

/// Decodes the folded mapping; an error names the key whose value has the wrong type.
fn decode(value: Value) -> Result<ConfigYaml, ConfigError> {
    serde_yaml::from_value::<ConfigYaml>(value.clone()).map_err(|e| {
        let culprit = value.as_mapping().into_iter().flatten().find_map(|(k, v)| {
            let mut one = Mapping::new();
            one.insert(k.clone(), v.clone());
            let err = serde_yaml::from_value::<ConfigYaml>(Value::Mapping(one)).err()?;
            Some(format!("{}: {err}", k.as_str().unwrap_or_default()))
        });
        ConfigError(format!("error unmarshaling YAML: {}", culprit.unwrap_or_else(|| e.to_string())))
    })
}

/// Parses the YAML text of a config file into flags (see the module docs).
pub fn flags_from_yaml(text: &str) -> Result<Flags, ConfigError> {
    let value: Value = serde_yaml::from_str(text).map_err(|e| ConfigError(format!("error converting YAML: {e}")))?;
    let value = match value {
        Value::Null => Value::Mapping(Mapping::new()),
        v => fold_keys(v),
    };
    let y = decode(value)?;
    let mut f = default_flags()?;
    macro_rules! set {
        ($($field:ident => $flag:ident),* $(,)?) => {$(
            if let Some(v) = y.$field { f.$flag = v.into(); }
        )*};
    }
    set!(
        name => name,
        wal_dir => wal_dir,
        snapshot_count => snapshot_count,
        max_snapshots => max_snapshots,
        max_wals => max_wals,
        heartbeat_interval => heartbeat_interval,
        election_timeout => election_timeout,
        initial_election_tick_advance => initial_election_tick_advance,
        backend_batch_limit => backend_batch_limit,
        quota_backend_bytes => quota_backend_bytes,
        max_txn_ops => max_txn_ops,
        max_request_bytes => max_request_bytes,
        max_concurrent_streams => max_concurrent_streams,
        listen_peer_urls => listen_peer_urls,
        listen_client_urls => listen_client_urls,
        initial_advertise_peer_urls => initial_advertise_peer_urls,
        advertise_client_urls => advertise_client_urls,
        listen_metrics_urls => listen_metrics_urls,
        listen_client_http_urls => listen_client_http_urls,
        enable_grpc_gateway => enable_grpc_gateway,
        log_format => log_format,
        log_rotation_config_json => log_rotation_config_json,
        tls_min_version => tls_min_version,
        tls_max_version => tls_max_version,
        initial_cluster_state => initial_cluster_state,
        discovery_srv => discovery_srv,
        discovery_srv_name => discovery_srv_name,
        discovery_proxy => discovery_proxy,
        discovery => discovery,
        discovery_fallback => discovery_fallback,
        proxy => proxy,
        initial_cluster_token => initial_cluster_token,
        strict_reconfig_check => strict_reconfig_check,
        enable_v2 => enable_v2,
        v2_deprecation => v2_deprecation,
        auto_compaction_mode => auto_compaction_mode,
        auto_compaction_retention => auto_compaction_retention,
        pre_vote => pre_vote,
        cors => cors,
        host_whitelist => host_whitelist,
        auth_token => auth_token,
        bcrypt_cost => bcrypt_cost,
        auth_token_ttl => auth_token_ttl,
        experimental_backend_bbolt_freelist_type => backend_bbolt_freelist_type,
        backend_bbolt_freelist_type => backend_bbolt_freelist_type,
        force_new_cluster => force_new_cluster,
        enable_pprof => enable_pprof,
        metrics => metrics,
        logger => logger,
        log_level => log_level,
        enable_log_rotation => enable_log_rotation,
        self_signed_cert_validity => self_signed_cert_validity,
        unsafe_no_fsync => unsafe_no_fsync,
    );
    // Option-typed flags: a key present is "given", so both names given is refused as etcd's
    macro_rules! given {
        ($($field:ident => $flag:ident),* $(,)?) => {$(
            if y.$field.is_some() { f.$flag = y.$field.map(Into::into); }
        )*};
    }
    given!(
        experimental_initial_corrupt_check => experimental_initial_corrupt_check,
        experimental_enable_lease_checkpoint => experimental_enable_lease_checkpoint,
        experimental_enable_lease_checkpoint_persist => experimental_enable_lease_checkpoint_persist,
        experimental_compact_hash_check_enabled => experimental_compact_hash_check_enabled,
        experimental_txn_mode_write_with_shared_buffer => experimental_txn_mode_write_with_shared_buffer,
        experimental_stop_grpc_service_on_defrag => experimental_stop_grpc_service_on_defrag,
        snapshot_catchup_entries => snapshot_catchup_entries,
        experimental_snapshot_catch_up_entries => experimental_snapshot_catchup_entries,
        experimental_snapshot_catchup_entries => experimental_snapshot_catchup_entries,
        compaction_batch_limit => compaction_batch_limit,
        experimental_compaction_batch_limit => experimental_compaction_batch_limit,
        bootstrap_defrag_threshold_megabytes => bootstrap_defrag_threshold_megabytes,
        experimental_bootstrap_defrag_threshold_megabytes => experimental_bootstrap_defrag_threshold_megabytes,
        memory_mlock => memory_mlock,
        experimental_memory_mlock => experimental_memory_mlock,
        experimental_peer_skip_client_san_verification => experimental_peer_skip_client_san_verification,
        enable_distributed_tracing => enable_distributed_tracing,
        experimental_enable_distributed_tracing => experimental_enable_distributed_tracing,
    );
    let optional_durations = [
        (y.watch_progress_notify_interval, &mut f.watch_progress_notify_interval),
        (y.experimental_watch_progress_notify_interval, &mut f.experimental_watch_progress_notify_interval),
        (y.corrupt_check_time, &mut f.corrupt_check_time),
        (y.experimental_corrupt_check_time, &mut f.experimental_corrupt_check_time),
        (y.compaction_sleep_interval, &mut f.compaction_sleep_interval),
        (y.experimental_compaction_sleep_interval, &mut f.experimental_compaction_sleep_interval),
        (y.warning_apply_duration, &mut f.warning_apply_duration),
        (y.experimental_warning_apply_duration, &mut f.experimental_warning_apply_duration),
        (y.warning_unary_request_duration, &mut f.warning_unary_request_duration),
        (y.experimental_warning_unary_request_duration, &mut f.experimental_warning_unary_request_duration),
        (y.compact_hash_check_time, &mut f.compact_hash_check_time),
        (y.experimental_compact_hash_check_time, &mut f.experimental_compact_hash_check_time),
        (y.downgrade_check_time, &mut f.downgrade_check_time),
        (y.experimental_downgrade_check_time, &mut f.experimental_downgrade_check_time),
    ];
    for (ns, flag) in optional_durations {
        if let Some(ns) = ns {
            *flag = Some(duration(ns));
        }
    }
    if let Some(v) = y.feature_gates {
        f.feature_gates = vec![v];
    }
    // 3.5's key first, 3.6's name wins (both are the same setting; etcd 3.6 reads max-learners)
    if let Some(n) = y.max_learners.or(y.experimental_max_learners) {
        f.max_learners = n;
    }
    if let Some(d) = y.discovery_config {
        f.discovery_token = d.token.unwrap_or_default();
        let c = d.client.unwrap_or_default();
        f.discovery_endpoints = c.endpoints.unwrap_or_default().join(",");
        for (ns, flag) in [
            (c.request_timeout, &mut f.discovery_request_timeout),
            (c.dial_timeout, &mut f.discovery_dial_timeout),
            (c.keepalive_time, &mut f.discovery_keepalive_time),
            (c.keepalive_timeout, &mut f.discovery_keepalive_timeout),
        ] {
            if let Some(ns) = ns.filter(|ns| *ns != 0) {
                *flag = duration(ns);
            }
        }
        let sec = c.secure.unwrap_or_default();
        f.discovery_cert = sec.cert.unwrap_or_default();
        f.discovery_key = sec.key.unwrap_or_default();
        f.discovery_cacert = sec.cacert.unwrap_or_default();
        f.discovery_insecure_transport = sec.insecure_transport.unwrap_or(true);
        f.discovery_insecure_skip_tls_verify = sec.insecure_skip_tls_verify.unwrap_or_default();
        let auth = c.auth.unwrap_or_default();
        f.discovery_user = auth.username.unwrap_or_default();
        f.discovery_password = auth.password.unwrap_or_default();
    }
    if let Some(d) = y.data_dir {
        f.data_dir = Some(d.into());
    }
    if let Some(c) = y.initial_cluster {
        f.initial_cluster = Some(c);
    }
    let durations = [
        (y.backend_batch_interval, &mut f.backend_batch_interval),
        (y.grpc_keepalive_min_time, &mut f.grpc_keepalive_min_time),
        (y.grpc_keepalive_interval, &mut f.grpc_keepalive_interval),
        (y.grpc_keepalive_timeout, &mut f.grpc_keepalive_timeout),
    ];
    for (ns, flag) in durations {
        if let Some(ns) = ns {
            *flag = duration(ns);
        }
    }
    if let Some(v) = y.log_outputs {
        f.log_outputs = v.join(",");
    }
    if let Some(v) = y.cipher_suites {
        f.cipher_suites = v.join(",");
    }
    // etcd copies the whole security map: a missing field is empty/false, not the flag default
    if let Some(s) = y.client_transport_security {
        f.cert_file = s.cert_file.unwrap_or_default();
        f.key_file = s.key_file.unwrap_or_default();
        f.client_cert_auth = s.client_cert_auth.unwrap_or_default();
        f.trusted_ca_file = s.trusted_ca_file.unwrap_or_default();
        f.auto_tls = s.auto_tls.unwrap_or_default();
        f.client_cert_file = s.client_cert_file.unwrap_or_default();
        f.client_key_file = s.client_key_file.unwrap_or_default();
    }
    if let Some(s) = y.peer_transport_security {
        f.peer_cert_file = s.cert_file.unwrap_or_default();
        f.peer_key_file = s.key_file.unwrap_or_default();
        f.peer_client_cert_auth = s.client_cert_auth.unwrap_or_default();
        f.peer_trusted_ca_file = s.trusted_ca_file.unwrap_or_default();
        f.peer_auto_tls = s.auto_tls.unwrap_or_default();
        f.peer_client_cert_file = s.client_cert_file.unwrap_or_default();
        f.peer_client_key_file = s.client_key_file.unwrap_or_default();
        // etcd marks `peer-<key>` given for each key of the map
        f.peer_skip_client_san_verification = s.skip_client_san_verification;
    }
    Ok(f)
}

/// Reads `path` and parses it with [`flags_from_yaml`]; the flags remember the path.
pub fn flags_from_file(path: &str) -> Result<Flags, ConfigError> {
    let text = std::fs::read_to_string(Path::new(path)).map_err(|e| ConfigError(format!("open {path}: {e}")))?;
    let mut f = flags_from_yaml(&text).map_err(|e| ConfigError(format!("config file {path}: {}", e.0)))?;
    f.config_file = path.to_string();
    Ok(f)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use super::*;
    use crate::config::InitialMember;

    #[test]
    fn keys_are_flag_names_typed_as_etcds_config_yaml() {
        let f = flags_from_yaml(
            "name: n1\n\
             data-dir: /var/lib/n1\n\
             wal-dir: /wal/n1\n\
             snapshot-count: 777\n\
             heartbeat-interval: 50\n\
             election-timeout: 500\n\
             listen-client-urls: http://127.0.0.1:45001,http://127.0.0.1:45011\n\
             advertise-client-urls: http://127.0.0.1:45001\n\
             listen-peer-urls: http://127.0.0.1:45002\n\
             initial-advertise-peer-urls: http://127.0.0.1:45002\n\
             initial-cluster: n1=http://127.0.0.1:45002\n\
             initial-cluster-state: new\n\
             quota-backend-bytes: 1048576\n\
             auto-compaction-mode: revision\n\
             auto-compaction-retention: \"10\"\n\
             grpc-keepalive-min-time: 5000000000\n\
             experimental-watch-progress-notify-interval: 250000000\n\
             pre-vote: false\n\
             log-outputs: [stdout]\n\
             force-new-cluster: true\n",
        )
        .unwrap();
        let c = f.clone().into_config().unwrap();
        assert_eq!(c.name, "n1");
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/n1"));
        assert_eq!(c.wal_dir, PathBuf::from("/wal/n1"));
        assert_eq!(c.snapshot_count, 777);
        assert_eq!(c.heartbeat, Duration::from_millis(50));
        assert_eq!(c.election_ticks, 10);
        assert_eq!(c.listen_client_urls.len(), 2);
        assert_eq!(c.initial_cluster, vec![InitialMember { name: "n1".into(), peer_urls: vec!["http://127.0.0.1:45002".into()] }]);
        assert_eq!(c.quota_backend_bytes, 1 << 20);
        assert_eq!(c.auto_compaction, crate::config::AutoCompaction::Revision(10));
        assert_eq!(c.watch_progress_notify_interval, Duration::from_millis(250));
        assert!(c.force_new_cluster);
        assert!(!f.pre_vote);
        assert_eq!(f.log_outputs, "stdout");
        assert_eq!(f.grpc_keepalive_min_time, "5000000000ns");
    }

    #[test]
    fn missing_keys_take_the_flag_defaults() {
        let f = flags_from_yaml("").unwrap();
        assert_eq!(f.name, "default");
        assert_eq!(f.data_dir, None);
        assert_eq!(f.snapshot_count, 100_000);
        assert_eq!(f.listen_client_urls, "http://localhost:2379");
        let c = f.into_config().unwrap();
        assert_eq!(c.data_dir, PathBuf::from("default.etcd"));
        assert_eq!(c.wal_dir, PathBuf::from("default.etcd/member/wal"));
        let f = flags_from_yaml("name: ~\nsnapshot-count:\n").unwrap();
        assert_eq!((f.name.as_str(), f.snapshot_count), ("default", 100_000));
    }

    #[test]
    fn unknown_keys_are_ignored_and_keys_match_case_insensitively() {
        let f = flags_from_yaml("bogus-key: 12\nName: x\nDATA-DIR: /d\nnested: {a: 1}\n").unwrap();
        assert_eq!(f.name, "x");
        assert_eq!(f.data_dir, Some(PathBuf::from("/d")));
    }

    #[test]
    fn values_of_the_wrong_type_are_errors_as_in_etcd() {
        // etcd: "json: cannot unmarshal number into Go struct field configYAML.auto-compaction-retention of type string"
        let e = flags_from_yaml("auto-compaction-retention: 1\n").unwrap_err().0;
        assert!(e.contains("auto-compaction-retention"), "{e}");
        // durations are integer nanoseconds (time.Duration), not "5s"
        let e = flags_from_yaml("grpc-keepalive-min-time: 5s\n").unwrap_err().0;
        assert!(e.contains("grpc-keepalive-min-time"), "{e}");
        assert!(flags_from_yaml("snapshot-count: \"100\"\n").is_err());
        assert!(flags_from_yaml("snapshot-count: -1\n").is_err());
        assert!(flags_from_yaml("pre-vote: \"true\"\n").is_err());
        assert!(flags_from_yaml("name: 5\n").is_err());
        assert!(flags_from_yaml("client-transport-security:\n  cert-file: 5\n").is_err());
        assert!(flags_from_yaml("- a\n- b\n").is_err());
        assert!(flags_from_yaml("name: [\n").is_err());
    }

    #[test]
    fn transport_security_maps_set_the_tls_flags() {
        let f = flags_from_yaml(
            "client-transport-security:\n  cert-file: /c.pem\n  key-file: /k.pem\n  client-cert-auth: true\n  trusted-ca-file: /ca.pem\n\
             peer-transport-security:\n  auto-tls: true\n",
        )
        .unwrap();
        assert_eq!((f.cert_file.as_str(), f.key_file.as_str(), f.trusted_ca_file.as_str()), ("/c.pem", "/k.pem", "/ca.pem"));
        assert!(f.client_cert_auth && !f.auto_tls);
        assert!(f.peer_auto_tls && f.peer_cert_file.is_empty() && !f.peer_client_cert_auth);
        let f = flags_from_yaml("peer-transport-security:\n  client-cert-file: /x.pem\n  client-key-file: /x-key.pem\n").unwrap();
        assert_eq!((f.peer_client_cert_file.as_str(), f.peer_client_key_file.as_str()), ("/x.pem", "/x-key.pem"));
        let f = flags_from_yaml("listen-client-http-urls: http://127.0.0.1:1\nenable-grpc-gateway: false\nlog-format: console\n").unwrap();
        assert_eq!((f.listen_client_http_urls.as_str(), f.enable_grpc_gateway, f.log_format.as_str()), ("http://127.0.0.1:1", false, "console"));
    }

    /// The keys and values of etcd's `etcd.conf.yml.sample` (3.4/3.5), comments left out.
    const ETCD_SAMPLE: &str = "name: 'default'\ndata-dir:\nwal-dir:\nsnapshot-count: 10000\n\
        heartbeat-interval: 100\nelection-timeout: 1000\nquota-backend-bytes: 0\n\
        listen-peer-urls: http://localhost:2380\nlisten-client-urls: http://localhost:2379\n\
        max-snapshots: 5\nmax-wals: 5\ncors:\ninitial-advertise-peer-urls: http://localhost:2380\n\
        advertise-client-urls: http://localhost:2379\ndiscovery:\ndiscovery-fallback: 'proxy'\n\
        discovery-proxy:\ndiscovery-srv:\ninitial-cluster:\ninitial-cluster-token: 'etcd-cluster'\n\
        initial-cluster-state: 'new'\nstrict-reconfig-check: false\nenable-v2: true\nenable-pprof: true\n\
        proxy: 'off'\nproxy-failure-wait: 5000\nproxy-refresh-interval: 30000\nproxy-dial-timeout: 1000\n\
        proxy-write-timeout: 5000\nproxy-read-timeout: 0\n\
        client-transport-security:\n  cert-file:\n  key-file:\n  client-cert-auth: false\n  trusted-ca-file:\n  auto-tls: false\n\
        peer-transport-security:\n  cert-file:\n  key-file:\n  client-cert-auth: false\n  trusted-ca-file:\n  auto-tls: false\n\
        debug: false\nlogger: zap\nlog-outputs: [stderr]\nforce-new-cluster: false\n\
        auto-compaction-mode: periodic\nauto-compaction-retention: \"1\"\n";

    #[test]
    fn etcds_sample_config_file_is_accepted_with_enable_v2_as_a_warning() {
        let f = flags_from_yaml(ETCD_SAMPLE).unwrap();
        assert!(f.enable_v2 && f.enable_pprof && !f.strict_reconfig_check);
        assert_eq!(f.warnings().len(), 1, "{:?}", f.warnings());
        let c = f.into_config().unwrap();
        assert_eq!(c.data_dir, PathBuf::from("default.etcd"));
        assert_eq!(c.snapshot_count, 10_000);
        assert_eq!(c.auto_compaction, crate::config::AutoCompaction::Periodic(Duration::from_secs(3600)));
        let c = flags_from_yaml("max-concurrent-streams: 3\n").unwrap().into_config().unwrap();
        assert_eq!(c.max_concurrent_streams, 3);
    }

    #[test]
    fn etcd_3_6_keys_feature_gates_and_renamed_settings_are_read() {
        let f = flags_from_yaml(
            "feature-gates: InitialCorruptCheck=true,LeaseCheckpoint=false\n\
             snapshot-catchup-entries: 42\n\
             watch-progress-notify-interval: 5000000000\n\
             corrupt-check-time: 60000000000\n\
             max-learners: 3\n\
             peer-transport-security:\n  skip-client-san-verification: true\n",
        )
        .unwrap();
        let c = f.into_config().unwrap();
        assert!(c.initial_corrupt_check && !c.enable_lease_checkpoint && c.peer_skip_client_san_verification);
        assert_eq!(c.snapshot_catchup_entries, 42);
        assert_eq!(c.watch_progress_notify_interval, Duration::from_secs(5));
        assert_eq!(c.corrupt_check_time, Duration::from_secs(60));
        assert_eq!(c.max_learners, 3);
        // 3.5's names, the misspelt one included, still work
        let c = flags_from_yaml("experimental-snapshot-catch-up-entries: 9\nexperimental-initial-corrupt-check: true\n")
            .unwrap()
            .into_config()
            .unwrap();
        assert_eq!((c.snapshot_catchup_entries, c.initial_corrupt_check), (9, true));
    }

    #[test]
    fn the_file_refuses_what_the_flags_refuse() {
        let e = flags_from_yaml("snapshot-catchup-entries: 1\nexperimental-snapshot-catchup-entries: 2\n").unwrap().into_config().unwrap_err();
        assert_eq!(e.0, "cannot set --experimental-snapshot-catchup-entries and --snapshot-catchup-entries at the same time, please use --snapshot-catchup-entries only");
        let e = flags_from_yaml("feature-gates: InitialCorruptCheck=true\nexperimental-initial-corrupt-check: true\n").unwrap().into_config().unwrap_err();
        assert!(e.0.starts_with("cannot specify both flags: --experimental-initial-corrupt-check=true"), "{}", e.0);
        let mut f = flags_from_yaml("feature-gates: Nope=true\n").unwrap();
        f.config_file = "x.yml".into();
        let e = f.feature_gates().unwrap_err();
        assert_eq!((e.message.as_str(), e.exit_code), ("unrecognized feature gate: Nope", 1));
    }

    #[test]
    fn discovery_config_sets_the_v3_discovery_flags() {
        let f = flags_from_yaml(
            "discovery-config:\n  token: tok\n  client:\n    endpoints: [127.0.0.1:2379, 127.0.0.1:2479]\n    dial-timeout: 3000000000\n    auth:\n      username: u\n      password: p\n",
        )
        .unwrap();
        assert_eq!(f.discovery_endpoints, "127.0.0.1:2379,127.0.0.1:2479");
        assert_eq!((f.discovery_token.as_str(), f.discovery_user.as_str(), f.discovery_password.as_str()), ("tok", "u", "p"));
        let c = f.into_config().unwrap();
        let Some(crate::discovery::Discovery::V3(v3)) = c.discovery else { panic!("no v3 discovery") };
        assert_eq!(v3.dial_timeout, Duration::from_secs(3));
    }

    #[test]
    fn a_missing_file_is_an_error_naming_it() {
        let e = flags_from_file("/nonexistent/etcd.conf.yml").unwrap_err().0;
        assert!(e.contains("/nonexistent/etcd.conf.yml"), "{e}");
    }
}
