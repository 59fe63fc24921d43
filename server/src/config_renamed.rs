//! The settings etcd 3.6 renamed from `--experimental-<name>` to `--<name>`, and the
//! experimental flags it maps onto feature gates.
//!
//! As etcd 3.6 (etcdmain/config.go, embed.Config.Validate): either name sets the value; both
//! given is refused ("cannot set --old and --new at the same time"); the old name works with
//! etcd's deprecation warning. The same holds for the `--config-file` keys, which fill the same
//! [`Flags`] fields. 3.7 dropped most old names; etcd-rs keeps them because 3.6 manifests must
//! start unchanged.

use crate::config::{ConfigError, Flags};
use crate::feature_gates::{FeatureGates, GateError};

/// etcd 3.6's `deprecatedFlags` warnings for the names etcd-rs accepts.
const DEPRECATION_WARNINGS: &[(&str, &str)] = &[
    ("experimental-compact-hash-check-enabled", "--experimental-compact-hash-check-enabled is deprecated in 3.6 and will be decommissioned in 3.7. Use '--feature-gates=CompactHashCheck=true' instead."),
    ("experimental-compact-hash-check-time", "--experimental-compact-hash-check-time is deprecated in 3.6 and will be decommissioned in 3.7. Use '--compact-hash-check-time' instead."),
    ("experimental-txn-mode-write-with-shared-buffer", "--experimental-txn-mode-write-with-shared-buffer is deprecated in v3.6 and will be decommissioned in v3.7. Use '--feature-gates=TxnModeWriteWithSharedBuffer=true' instead."),
    ("experimental-corrupt-check-time", "--experimental-corrupt-check-time is deprecated in v3.6 and will be decommissioned in v3.7. Use '--corrupt-check-time' instead."),
    ("experimental-compaction-batch-limit", "--experimental-compaction-batch-limit is deprecated in v3.6 and will be decommissioned in v3.7. Use '--compaction-batch-limit' instead."),
    ("experimental-watch-progress-notify-interval", "--experimental-watch-progress-notify-interval is deprecated in v3.6 and will be decommissioned in v3.7. Use '--watch-progress-notify-interval' instead."),
    ("experimental-warning-apply-duration", "--experimental-warning-apply-duration is deprecated in v3.6 and will be decommissioned in v3.7. Use '--warning-apply-duration' instead."),
    ("experimental-bootstrap-defrag-threshold-megabytes", "--experimental-bootstrap-defrag-threshold-megabytes is deprecated in v3.6 and will be decommissioned in v3.7. Use '--bootstrap-defrag-threshold-megabytes' instead."),
    ("experimental-memory-mlock", "--experimental-memory-mlock is deprecated in v3.6 and will be decommissioned in v3.7. Use '--memory-mlock' instead."),
    ("experimental-snapshot-catchup-entries", "--experimental-snapshot-catchup-entries is deprecated in v3.6 and will be decommissioned in v3.7. Use '--snapshot-catchup-entries' instead."),
    ("experimental-compaction-sleep-interval", "--experimental-compaction-sleep-interval is deprecated in v3.6 and will be decommissioned in v3.7. Use 'compaction-sleep-interval' instead."),
    ("experimental-downgrade-check-time", "--experimental-downgrade-check-time is deprecated in v3.6 and will be decommissioned in v3.7. Use '--downgrade-check-time' instead."),
    ("experimental-enable-distributed-tracing", "--experimental-enable-distributed-tracing is deprecated in 3.6 and will be decommissioned in 3.7. Use --enable-distributed-tracing instead."),
    ("experimental-distributed-tracing-address", "--experimental-distributed-tracing-address is deprecated in 3.6 and will be decommissioned in 3.7. Use --distributed-tracing-address instead."),
    ("experimental-distributed-tracing-service-name", "--experimental-distributed-tracing-service-name is deprecated in 3.6 and will be decommissioned in 3.7. Use --distributed-tracing-service-name instead."),
    ("experimental-distributed-tracing-instance-id", "--experimental-distributed-tracing-instance-id is deprecated in 3.6 and will be decommissioned in 3.7. Use --distributed-tracing-instance-id instead."),
    ("experimental-distributed-tracing-sampling-rate", "--experimental-distributed-tracing-sampling-rate is deprecated in 3.6 and will be decommissioned in 3.7. Use --distributed-tracing-sampling-rate instead."),
    ("experimental-warning-unary-request-duration", "--experimental-warning-unary-request-duration is deprecated, and will be decommissioned in v3.7. Use --warning-unary-request-duration instead."),
];

/// The renamed settings, resolved: the value given under either name, or None (the default).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Renamed {
    pub snapshot_catchup_entries: Option<u64>,
    pub watch_progress_notify_interval: Option<String>,
    pub corrupt_check_time: Option<String>,
    pub compaction_batch_limit: Option<usize>,
    pub compaction_sleep_interval: Option<String>,
    pub warning_apply_duration: Option<String>,
    pub compact_hash_check_time: Option<String>,
    pub downgrade_check_time: Option<String>,
    pub bootstrap_defrag_threshold_megabytes: Option<u64>,
    pub memory_mlock: Option<bool>,
    pub peer_skip_client_san_verification: Option<bool>,
    pub enable_distributed_tracing: Option<bool>,
}

/// The value under the new name or the old one; both given is etcd's error.
fn either<T: Clone>(old: &str, old_v: &Option<T>, new: &str, new_v: &Option<T>) -> Result<Option<T>, ConfigError> {
    if old_v.is_some() && new_v.is_some() {
        return Err(ConfigError(format!("cannot set --{old} and --{new} at the same time, please use --{new} only")));
    }
    Ok(new_v.clone().or_else(|| old_v.clone()))
}

impl Flags {
    /// The old names given (flags, `ETCD_*` variables or config-file keys).
    fn old_names_given(&self) -> Vec<&'static str> {
        let given: [(&'static str, bool); 19] = [
            ("experimental-compact-hash-check-enabled", self.experimental_compact_hash_check_enabled.is_some()),
            ("experimental-compact-hash-check-time", self.experimental_compact_hash_check_time.is_some()),
            ("experimental-txn-mode-write-with-shared-buffer", self.experimental_txn_mode_write_with_shared_buffer.is_some()),
            ("experimental-corrupt-check-time", self.experimental_corrupt_check_time.is_some()),
            ("experimental-compaction-batch-limit", self.experimental_compaction_batch_limit.is_some()),
            ("experimental-watch-progress-notify-interval", self.experimental_watch_progress_notify_interval.is_some()),
            ("experimental-warning-apply-duration", self.experimental_warning_apply_duration.is_some()),
            ("experimental-bootstrap-defrag-threshold-megabytes", self.experimental_bootstrap_defrag_threshold_megabytes.is_some()),
            ("experimental-memory-mlock", self.experimental_memory_mlock.is_some()),
            ("experimental-snapshot-catchup-entries", self.experimental_snapshot_catchup_entries.is_some()),
            ("experimental-compaction-sleep-interval", self.experimental_compaction_sleep_interval.is_some()),
            ("experimental-downgrade-check-time", self.experimental_downgrade_check_time.is_some()),
            ("experimental-peer-skip-client-san-verification", self.experimental_peer_skip_client_san_verification.is_some()),
            ("experimental-enable-distributed-tracing", self.experimental_enable_distributed_tracing.is_some()),
            ("experimental-distributed-tracing-address", self.experimental_distributed_tracing_address.is_some()),
            ("experimental-distributed-tracing-service-name", self.experimental_distributed_tracing_service_name.is_some()),
            ("experimental-distributed-tracing-instance-id", self.experimental_distributed_tracing_instance_id.is_some()),
            ("experimental-distributed-tracing-sampling-rate", self.experimental_distributed_tracing_sampling_rate.is_some()),
            ("experimental-warning-unary-request-duration", self.experimental_warning_unary_request_duration.is_some()),
        ];
        given.iter().filter(|(_, g)| *g).map(|(n, _)| *n).collect()
    }

    /// etcd's deprecation warnings for the old names given, in etcd's words.
    pub fn deprecation_warnings(&self) -> Vec<String> {
        let given = self.old_names_given();
        DEPRECATION_WARNINGS.iter().filter(|(n, _)| given.contains(n)).map(|(_, w)| w.to_string()).collect()
    }

    /// Resolves each renamed setting from its two names (see the module docs).
    pub fn renamed(&self) -> Result<Renamed, ConfigError> {
        // the tracing settings have no effect in etcd-rs, but both names given is still etcd's error
        either(
            "experimental-distributed-tracing-address",
            &self.experimental_distributed_tracing_address,
            "distributed-tracing-address",
            &self.distributed_tracing_address,
        )?;
        either(
            "experimental-distributed-tracing-service-name",
            &self.experimental_distributed_tracing_service_name,
            "distributed-tracing-service-name",
            &self.distributed_tracing_service_name,
        )?;
        either(
            "experimental-distributed-tracing-instance-id",
            &self.experimental_distributed_tracing_instance_id,
            "distributed-tracing-instance-id",
            &self.distributed_tracing_instance_id,
        )?;
        either(
            "experimental-distributed-tracing-sampling-rate",
            &self.experimental_distributed_tracing_sampling_rate,
            "distributed-tracing-sampling-rate",
            &self.distributed_tracing_sampling_rate,
        )?;
        // not in etcd's migration map: its own check and message
        if self.experimental_warning_unary_request_duration.is_some() && self.warning_unary_request_duration.is_some() {
            return Err(ConfigError(
                "both --experimental-warning-unary-request-duration and --warning-unary-request-duration flags are set. \
                 Use only --warning-unary-request-duration"
                    .into(),
            ));
        }
        Ok(Renamed {
            snapshot_catchup_entries: either(
                "experimental-snapshot-catchup-entries",
                &self.experimental_snapshot_catchup_entries,
                "snapshot-catchup-entries",
                &self.snapshot_catchup_entries,
            )?,
            watch_progress_notify_interval: either(
                "experimental-watch-progress-notify-interval",
                &self.experimental_watch_progress_notify_interval,
                "watch-progress-notify-interval",
                &self.watch_progress_notify_interval,
            )?,
            corrupt_check_time: either(
                "experimental-corrupt-check-time",
                &self.experimental_corrupt_check_time,
                "corrupt-check-time",
                &self.corrupt_check_time,
            )?,
            compaction_batch_limit: either(
                "experimental-compaction-batch-limit",
                &self.experimental_compaction_batch_limit,
                "compaction-batch-limit",
                &self.compaction_batch_limit,
            )?,
            compaction_sleep_interval: either(
                "experimental-compaction-sleep-interval",
                &self.experimental_compaction_sleep_interval,
                "compaction-sleep-interval",
                &self.compaction_sleep_interval,
            )?,
            warning_apply_duration: either(
                "experimental-warning-apply-duration",
                &self.experimental_warning_apply_duration,
                "warning-apply-duration",
                &self.warning_apply_duration,
            )?,
            compact_hash_check_time: either(
                "experimental-compact-hash-check-time",
                &self.experimental_compact_hash_check_time,
                "compact-hash-check-time",
                &self.compact_hash_check_time,
            )?,
            downgrade_check_time: either(
                "experimental-downgrade-check-time",
                &self.experimental_downgrade_check_time,
                "downgrade-check-time",
                &self.downgrade_check_time,
            )?,
            bootstrap_defrag_threshold_megabytes: either(
                "experimental-bootstrap-defrag-threshold-megabytes",
                &self.experimental_bootstrap_defrag_threshold_megabytes,
                "bootstrap-defrag-threshold-megabytes",
                &self.bootstrap_defrag_threshold_megabytes,
            )?,
            memory_mlock: either("experimental-memory-mlock", &self.experimental_memory_mlock, "memory-mlock", &self.memory_mlock)?,
            peer_skip_client_san_verification: either(
                "experimental-peer-skip-client-san-verification",
                &self.experimental_peer_skip_client_san_verification,
                "peer-skip-client-san-verification",
                &self.peer_skip_client_san_verification,
            )?,
            enable_distributed_tracing: either(
                "experimental-enable-distributed-tracing",
                &self.experimental_enable_distributed_tracing,
                "enable-distributed-tracing",
                &self.enable_distributed_tracing,
            )?,
        })
    }

    /// The feature gates from `--feature-gates` and the experimental flags mapped onto them.
    pub fn feature_gates(&self) -> Result<FeatureGates, GateError> {
        let experimental = |flag: &str| match flag {
            "experimental-initial-corrupt-check" => self.experimental_initial_corrupt_check,
            "experimental-enable-lease-checkpoint" => self.experimental_enable_lease_checkpoint,
            "experimental-enable-lease-checkpoint-persist" => self.experimental_enable_lease_checkpoint_persist,
            "experimental-compact-hash-check-enabled" => self.experimental_compact_hash_check_enabled,
            "experimental-txn-mode-write-with-shared-buffer" => self.experimental_txn_mode_write_with_shared_buffer,
            "experimental-stop-grpc-service-on-defrag" => self.experimental_stop_grpc_service_on_defrag,
            _ => None,
        };
        FeatureGates::resolve(&self.feature_gates, experimental, !self.config_file.is_empty())
    }
}
