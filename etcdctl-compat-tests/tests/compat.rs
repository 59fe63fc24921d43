//! One test per scenario file: etcdctl must see etcd-rs exactly as it sees etcd.
//!
//! Needs the reference etcd and etcdctl (`apt-get install -y etcd-server etcd-client`) and a
//! release build of etcd-rs (`cargo build --release -p etcd-server`); see the crate docs for
//! the environment variables. A missing binary fails every test with that advice.

use etcdctl_compat_tests::{check_scenario, scenario_names};

macro_rules! scenarios {
    ($($test:ident => $file:literal,)*) => {
        $(
            #[test]
            fn $test() {
                if let Err(report) = check_scenario($file) {
                    panic!("{report}");
                }
            }
        )*

        const COVERED: &[&str] = &[$($file),*];
    };
}

scenarios! {
    kv_put_get_matches_etcd => "kv-put-get",
    kv_revisions_and_compaction_match_etcd => "kv-revisions-compaction",
    txn_matches_etcd => "txn",
    kv_errors_match_etcd => "errors",
    data_survives_restart_and_crash_as_in_etcd => "durability",
    endpoint_and_member_status_match_etcd => "status",
    watch_interactive_mode_matches_etcd => "watch-interactive",
    watch_exec_matches_etcd => "watch-exec",
    watch_progress_notify_matches_etcd => "watch-progress-notify",
    watch_from_compacted_negative_and_future_revisions_matches_etcd => "watch-compaction",
    lease_keys_attach_detach_and_revoke_as_in_etcd => "lease-keys",
    lease_expiry_deletes_keys_as_in_etcd => "lease-expiry",
    leases_survive_restart_and_crash_as_in_etcd => "lease-restart",
    cluster_membership_changes_match_etcd => "cluster-members",
    cluster_survives_member_crash_and_restart_as_in_etcd => "cluster-restart",
    defragment_keeps_data_as_in_etcd => "defrag",
    nospace_alarm_caps_writes_as_in_etcd => "alarm-nospace",
    auth_users_roles_and_permissions_match_etcd => "auth",
    etcdctl_over_tls_with_client_certificates_matches_etcd => "tls",
}

#[test]
fn every_scenario_file_has_a_test() {
    let names = scenario_names().unwrap_or_else(|e| panic!("{e}"));
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| !COVERED.contains(&n.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "scenario files without a test in tests/compat.rs: {missing:?}"
    );
    let stale: Vec<&&str> = COVERED
        .iter()
        .filter(|c| !names.iter().any(|n| n == *c))
        .collect();
    assert!(
        stale.is_empty(),
        "tests naming missing scenario files: {stale:?}"
    );
}

#[test]
fn every_scenario_file_parses() {
    for name in scenario_names().unwrap_or_else(|e| panic!("{e}")) {
        let path = etcdctl_compat_tests::scenarios_dir().join(format!("{name}.txt"));
        if let Err(e) = etcdctl_compat_tests::scenario::load(&path) {
            panic!("{e}");
        }
    }
}
