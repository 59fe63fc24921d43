//! Differential etcdctl tests: the official `etcdctl` is run through the same scenario against
//! the real etcd and against etcd-rs, and the two normalized transcripts must be equal.
//!
//! Invariant: both sides see the same world. They get the same flags, the same loopback ports
//! (the reference runs first and is stopped before etcd-rs starts), the same cluster token and
//! fresh data dirs, so every difference left after [`normalize`] is a difference etcdctl users
//! would see. The reference side failing is an environment error, never a pass.
//!
//! A scenario run ([`check_scenario`]):
//! 1. parse `scenarios/NAME.txt` ([`scenario`]);
//! 2. pick free ports; start the reference, wait for `endpoint health`, run each step, recording
//!    command, stdout, stderr and exit status ([`transcript`]); stop it;
//! 3. the same with etcd-rs;
//! 4. normalize both transcripts ([`normalize`]) and compare; on a difference, fail with a
//!    unified diff ([`diff`]) and the tail of etcd-rs's log.
//!
//! Environment:
//! - `ETCD_REF_BIN`: reference etcd (default `/usr/bin/etcd`);
//! - `ETCDCTL_BIN`: etcdctl (default `/usr/bin/etcdctl`);
//! - `ETCD_RS_BIN`: server under test (default `<workspace>/target/release/etcd-rs`);
//! - `COMPAT_EXACT_IDS=1`: compare member, cluster and lease IDs as printed;
//! - `COMPAT_KEEP_DIR=DIR`: write both transcripts and server logs of every scenario to DIR.

pub mod diff;
pub mod listing;
pub mod member;
pub mod migration;
pub mod normalize;
pub mod scenario;
pub mod tls;
pub mod transcript;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use normalize::Options;

/// Scenarios run one at a time: a side's ports are free between its stop and the other side's
/// start, and a concurrent scenario (or its etcdctl's outgoing connections) must not take them.
static ONE_SCENARIO_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Which binaries to compare and how.
#[derive(Debug, Clone)]
pub struct Config {
    pub reference: PathBuf,
    pub etcdctl: PathBuf,
    pub server: PathBuf,
    pub options: Options,
    pub keep_dir: Option<PathBuf>,
}

impl Config {
    /// Reads the configuration from the environment (see the crate docs) and checks that every
    /// binary exists, explaining how to get it if not.
    pub fn from_env() -> Result<Config, String> {
        let env_path = |key: &str| {
            std::env::var_os(key)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let reference = env_path("ETCD_REF_BIN").unwrap_or_else(|| "/usr/bin/etcd".into());
        let etcdctl = env_path("ETCDCTL_BIN").unwrap_or_else(|| "/usr/bin/etcdctl".into());
        let server = env_path("ETCD_RS_BIN").unwrap_or_else(|| {
            workspace_dir()
                .join("target")
                .join("release")
                .join("etcd-rs")
        });
        let install = "install the reference with `apt-get install -y etcd-server etcd-client` \
                       (Debian/Ubuntu), or point ETCD_REF_BIN and ETCDCTL_BIN at etcd and etcdctl";
        require_executable(&reference, "reference etcd (ETCD_REF_BIN)", install)?;
        require_executable(&etcdctl, "etcdctl (ETCDCTL_BIN)", install)?;
        require_executable(
            &server,
            "etcd-rs (ETCD_RS_BIN)",
            "run `cargo build --release -p etcd-server` first, or set ETCD_RS_BIN",
        )?;
        let exact_ids = std::env::var("COMPAT_EXACT_IDS").is_ok_and(|v| v == "1" || v == "true");
        Ok(Config {
            reference,
            etcdctl,
            server,
            options: Options { exact_ids },
            keep_dir: env_path("COMPAT_KEEP_DIR"),
        })
    }
}

fn require_executable(path: &Path, what: &str, how: &str) -> Result<(), String> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => Ok(()),
        Ok(_) => Err(format!(
            "{what}: {} is not an executable file; {how}",
            path.display()
        )),
        Err(e) => Err(format!("{what}: {} not found ({e}); {how}", path.display())),
    }
}

/// The workspace root (this crate's parent directory).
pub fn workspace_dir() -> PathBuf {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    crate_dir.parent().unwrap_or(crate_dir).to_path_buf()
}

/// This crate's `scenarios/` directory.
pub fn scenarios_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios")
}

/// Names (file stems) of all scenario files, sorted.
pub fn scenario_names() -> Result<Vec<String>, String> {
    let dir = scenarios_dir();
    let entries =
        std::fs::read_dir(&dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .collect();
    names.sort();
    Ok(names)
}

/// The two normalized transcripts of one scenario.
pub struct Comparison {
    pub reference: String,
    pub server: String,
}

/// How many times the reference runs a scenario at most; see [`reference_stalled`].
const REFERENCE_ATTEMPTS: usize = 3;

/// Runs a scenario on both sides and returns the normalized transcripts.
pub fn compare_scenario(path: &Path, config: &Config) -> Result<Comparison, String> {
    let _serial = ONE_SCENARIO_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let scenario = scenario::load(path)?;
    let ports = member::pick_ports(scenario.members + scenario.spare)
        .map_err(|e| format!("cannot pick free loopback ports: {e}"))?;

    // One set of certificates for both sides (same files, same paths).
    let pki_dir = tempfile::Builder::new()
        .prefix("etcdctl-compat-pki-")
        .tempdir()
        .map_err(|e| format!("cannot create a certificate dir: {e}"))?;
    let tls = if scenario.tls {
        Some(
            tls::TlsFiles::generate(pki_dir.path())
                .map_err(|e| format!("scenario {}: {e}", scenario.name))?,
        )
    } else {
        None
    };
    let tls = tls.as_ref();
    let mut reference_text = run_reference(&scenario, config, &ports, tls)?;
    let server = transcript::run(&scenario, &config.server, &config.etcdctl, &ports, tls)?;
    let server_text = normalize::normalize(&server.transcript, config.options);
    keep(
        config,
        &scenario.name,
        "etcd-rs",
        &server_text,
        &server.cluster,
    );
    let mut attempt = 1;
    while attempt < REFERENCE_ATTEMPTS && reference_stalled(&reference_text, &server_text) {
        eprintln!(
            "scenario {}: the reference timed out where etcd-rs did not; running the reference again",
            scenario.name
        );
        reference_text = run_reference(&scenario, config, &ports, tls)?;
        attempt += 1;
    }
    if reference_text != server_text {
        let log = server
            .cluster
            .members
            .iter()
            .map(|m| member::log_tail(&m.log_path, 20))
            .collect::<Vec<_>>()
            .join("\n");
        return Err(format!(
            "scenario {}: etcdctl sees etcd-rs differently from etcd\n{}\n{log}",
            scenario.name,
            diff::diff(&reference_text, &server_text, "etcd (reference)", "etcd-rs"),
        ));
    }
    Ok(Comparison {
        reference: reference_text,
        server: server_text,
    })
}
/// Runs `scenario` on the reference etcd; `Err` when the reference itself failed.
fn run_reference(
    scenario: &scenario::Scenario,
    config: &Config,
    ports: &[member::MemberPorts],
    tls: Option<&tls::TlsFiles>,
) -> Result<String, String> {
    let reference = transcript::run(scenario, &config.reference, &config.etcdctl, ports, tls)?;
    let text = normalize::normalize(&reference.transcript, config.options);
    keep(config, &scenario.name, "etcd", &text, &reference.cluster);
    if let Some(line) = text.lines().find(|l| l.starts_with("!! ")) {
        return Err(format!(
            "scenario {}: the reference etcd ({}) failed, so nothing was compared: {}",
            scenario.name,
            config.reference.display(),
            line.trim_start_matches("!! ")
        ));
    }
    Ok(text)
}

/// The reference's own timing is outside the test's control: on a loaded machine it has
/// stalled past etcdctl's command timeout (a 3.4.23 run once answered three commands in a
/// row with "context deadline exceeded"). Such a run says nothing about etcd-rs, so it is
/// repeated when the reference timed out more often than etcd-rs did.
fn reference_stalled(reference: &str, server: &str) -> bool {
    let timeouts = |text: &str| text.matches("context deadline exceeded").count();
    timeouts(reference) > timeouts(server)
}

/// Runs the scenario `scenarios/NAME.txt`; `Err` holds a readable failure report.
pub fn check_scenario(name: &str) -> Result<(), String> {
    let config = Config::from_env()?;
    compare_scenario(&scenarios_dir().join(format!("{name}.txt")), &config).map(|_| ())
}

/// With `COMPAT_KEEP_DIR`, saves a side's transcript and member logs for inspection.
fn keep(config: &Config, scenario: &str, side: &str, transcript: &str, cluster: &member::Cluster) {
    let Some(dir) = &config.keep_dir else { return };
    let _ = std::fs::create_dir_all(dir);
    let _ = std::fs::write(dir.join(format!("{scenario}.{side}.txt")), transcript);
    for m in &cluster.members {
        let _ = std::fs::copy(
            &m.log_path,
            dir.join(format!("{scenario}.{side}.{}.log", m.name)),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::reference_stalled;

    const TIMEOUT: &str = "stderr| Error: context deadline exceeded\n[exit 2]\n";

    #[test]
    fn a_reference_timeout_that_etcd_rs_did_not_have_is_a_stall() {
        assert!(reference_stalled(&format!("$ put a\n{TIMEOUT}"), "$ put a\nOK\n"));
    }

    #[test]
    fn timeouts_on_both_sides_or_only_on_etcd_rs_are_compared_as_they_are() {
        let both = format!("$ put a\n{TIMEOUT}");
        assert!(!reference_stalled(&both, &both));
        assert!(!reference_stalled("$ put a\nOK\n", &both));
        assert!(!reference_stalled("$ put a\nOK\n", "$ put a\nOK\n"));
    }
}
